//! An openmls provider over the device's SQLite connection (or an open transaction).

use crate::signatures::{BatchCrypto, DeferredSignatures};
pub(crate) use muster_mls_store::{BatchedSecrets, Storage};
use openmls_rust_crypto::RustCrypto;
use openmls_traits::OpenMlsProvider;
use rusqlite::Connection;

pub(crate) use muster_mls_store::StoreCodec;

/// What a batch of fetched messages shares while it is processed in one transaction:
/// message secrets written once at its end, and (for a long batch) signatures checked on
/// a second thread. Both must be settled before the transaction commits.
pub(crate) struct Batch {
    pub(crate) secrets: BatchedSecrets,
    pub(crate) signatures: Option<DeferredSignatures>,
}

pub(crate) struct Provider<'a> {
    crypto: BatchCrypto<'a>,
    rand: &'a RustCrypto,
    storage: Storage<'a>,
    connection: &'a Connection,
}

impl<'a> Provider<'a> {
    pub(crate) fn new(crypto: &'a RustCrypto, connection: &'a Connection) -> Self {
        Self {
            crypto: BatchCrypto::new(crypto, None),
            rand: crypto,
            storage: Storage::new(connection),
            connection,
        }
    }

    /// A provider for one message of `batch`.
    pub(crate) fn batched(
        crypto: &'a RustCrypto,
        connection: &'a Connection,
        batch: &'a Batch,
    ) -> Self {
        Self {
            crypto: BatchCrypto::new(crypto, batch.signatures.as_ref()),
            rand: crypto,
            storage: Storage::batched(connection, &batch.secrets),
            connection,
        }
    }

    /// The connection (or open transaction) the provider writes through.
    pub(crate) fn storage_connection(&self) -> &'a Connection {
        self.connection
    }
}

impl<'a> OpenMlsProvider for Provider<'a> {
    type CryptoProvider = BatchCrypto<'a>;
    type RandProvider = RustCrypto;
    type StorageProvider = Storage<'a>;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }

    fn crypto(&self) -> &Self::CryptoProvider {
        &self.crypto
    }

    fn rand(&self) -> &Self::RandProvider {
        self.rand
    }
}
