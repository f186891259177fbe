//! An openmls provider over the device's SQLite connection (or an open transaction).

use openmls_rust_crypto::RustCrypto;
use openmls_traits::OpenMlsProvider;
use rusqlite::Connection;

/// Serialises openmls state as JSON in the device database.
#[derive(Default)]
pub(crate) struct JsonCodec;

impl openmls_sqlite_storage::Codec for JsonCodec {
    type Error = serde_json::Error;

    fn to_vec<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, Self::Error> {
        serde_json::to_vec(value)
    }

    fn from_slice<T: serde::de::DeserializeOwned>(slice: &[u8]) -> Result<T, Self::Error> {
        serde_json::from_slice(slice)
    }
}

pub(crate) type Storage<'a> =
    openmls_sqlite_storage::SqliteStorageProvider<JsonCodec, &'a Connection>;

pub(crate) struct Provider<'a> {
    crypto: &'a RustCrypto,
    storage: Storage<'a>,
    connection: &'a Connection,
}

impl<'a> Provider<'a> {
    pub(crate) fn new(crypto: &'a RustCrypto, connection: &'a Connection) -> Self {
        Self {
            crypto,
            storage: Storage::new(connection),
            connection,
        }
    }

    /// The connection (or open transaction) the provider writes through.
    pub(crate) fn storage_connection(&self) -> &'a Connection {
        self.connection
    }
}

impl<'a> OpenMlsProvider for Provider<'a> {
    type CryptoProvider = RustCrypto;
    type RandProvider = RustCrypto;
    type StorageProvider = Storage<'a>;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }

    fn crypto(&self) -> &Self::CryptoProvider {
        self.crypto
    }

    fn rand(&self) -> &Self::RandProvider {
        self.crypto
    }
}
