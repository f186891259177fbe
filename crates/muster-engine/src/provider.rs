//! An openmls provider over the device's SQLite connection (or an open transaction).

use openmls_rust_crypto::RustCrypto;
use openmls_traits::OpenMlsProvider;
use rusqlite::Connection;

pub(crate) use muster_mls_store::StoreCodec;

pub(crate) type Storage<'a> =
    openmls_sqlite_storage::SqliteStorageProvider<StoreCodec, &'a Connection>;

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
