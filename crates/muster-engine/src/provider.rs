//! An openmls provider over the device's SQLite connection (or an open transaction).

use openmls_rust_crypto::RustCrypto;
use openmls_traits::OpenMlsProvider;
use rusqlite::Connection;

/// Serialises openmls state in the device database. Values up to [`PACKED_ABOVE`] bytes,
/// every lookup key among them, are JSON as they always were, so keys written by earlier
/// versions still match. Larger values (ratchet and secret trees, rewritten for every
/// message) are MessagePack behind [`PACKED_MARK`], a byte no JSON text starts with:
/// smaller, and several times quicker to write and read than JSON's arrays of numbers.
#[derive(Default)]
pub(crate) struct StoreCodec;

const PACKED_MARK: u8 = 0xFF;
const PACKED_ABOVE: usize = 512;

/// Why openmls state could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreCodecError {
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("MessagePack encoding: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("MessagePack decoding: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
}

impl openmls_sqlite_storage::Codec for StoreCodec {
    type Error = StoreCodecError;

    fn to_vec<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, Self::Error> {
        let mut packed = vec![PACKED_MARK];
        rmp_serde::encode::write_named(&mut packed, value)?;
        if packed.len() - 1 <= PACKED_ABOVE {
            return Ok(serde_json::to_vec(value)?);
        }
        Ok(packed)
    }

    fn from_slice<T: serde::de::DeserializeOwned>(slice: &[u8]) -> Result<T, Self::Error> {
        match slice.split_first() {
            Some((&PACKED_MARK, packed)) => Ok(rmp_serde::from_slice(packed)?),
            _ => Ok(serde_json::from_slice(slice)?),
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use openmls_sqlite_storage::Codec;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Tree {
        leaves: Vec<Vec<u8>>,
        epoch: u64,
    }

    #[test]
    fn small_values_stay_json_so_existing_keys_still_match() {
        let key = vec![7u8; 32];
        let bytes = StoreCodec::to_vec(&key).unwrap();
        assert_eq!(bytes, serde_json::to_vec(&key).unwrap());
        assert_eq!(StoreCodec::from_slice::<Vec<u8>>(&bytes).unwrap(), key);
    }

    #[test]
    fn large_values_are_packed_and_read_back() {
        let tree = Tree {
            leaves: (0..50u8).map(|i| vec![i; 64]).collect(),
            epoch: 9,
        };
        let bytes = StoreCodec::to_vec(&tree).unwrap();
        assert_eq!(bytes[0], PACKED_MARK);
        assert!(bytes.len() < serde_json::to_vec(&tree).unwrap().len() / 2);
        assert_eq!(StoreCodec::from_slice::<Tree>(&bytes).unwrap(), tree);
    }

    #[test]
    fn values_written_as_json_by_earlier_versions_still_read() {
        let tree = Tree {
            leaves: vec![vec![1; 600]],
            epoch: 3,
        };
        let old = serde_json::to_vec(&tree).unwrap();
        assert_eq!(StoreCodec::from_slice::<Tree>(&old).unwrap(), tree);
    }

    #[test]
    fn damaged_state_is_an_error_not_a_panic() {
        assert!(StoreCodec::from_slice::<Tree>(&[PACKED_MARK, 0xC1]).is_err());
        assert!(StoreCodec::from_slice::<Tree>(b"{not json").is_err());
    }
}
