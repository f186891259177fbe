//! How Muster keeps openmls state in SQLite: the codec shared by devices and the relay.

/// Serialises openmls state in a Muster SQLite database (a device's or the relay's).
/// Values up to [`PACKED_ABOVE`] bytes, every lookup key among them, are JSON as they
/// always were, so keys written by earlier versions still match. Larger values (ratchet and secret trees, rewritten for every
/// message) are postcard behind [`COMPACT_MARK`], a byte no JSON text starts with: about
/// as small as the bytes themselves, and read many times quicker than JSON's arrays of
/// numbers (a 10,000-member group loaded in a third of MessagePack's time). MessagePack
/// (behind [`PACKED_MARK`], written by earlier device versions) and JSON still read.
#[derive(Default)]
pub struct StoreCodec;

const PACKED_MARK: u8 = 0xFF;
const COMPACT_MARK: u8 = 0xFE;
const PACKED_ABOVE: usize = 512;

/// Why openmls state could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum StoreCodecError {
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("postcard: {0}")]
    Compact(#[from] postcard::Error),
    #[error("MessagePack decoding: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
}

impl openmls_sqlite_storage::Codec for StoreCodec {
    type Error = StoreCodecError;

    fn to_vec<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, Self::Error> {
        let compact = postcard::to_extend(value, vec![COMPACT_MARK])?;
        if compact.len() - 1 <= PACKED_ABOVE {
            return Ok(serde_json::to_vec(value)?);
        }
        Ok(compact)
    }

    fn from_slice<T: serde::de::DeserializeOwned>(slice: &[u8]) -> Result<T, Self::Error> {
        match slice.split_first() {
            Some((&COMPACT_MARK, compact)) => Ok(postcard::from_bytes(compact)?),
            Some((&PACKED_MARK, packed)) => Ok(rmp_serde::from_slice(packed)?),
            _ => Ok(serde_json::from_slice(slice)?),
        }
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
        assert_eq!(bytes[0], COMPACT_MARK);
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
        let mut packed = vec![PACKED_MARK];
        rmp_serde::encode::write_named(&mut packed, &tree).unwrap();
        assert_eq!(StoreCodec::from_slice::<Tree>(&packed).unwrap(), tree);
    }

    #[test]
    fn damaged_state_is_an_error_not_a_panic() {
        assert!(StoreCodec::from_slice::<Tree>(&[PACKED_MARK, 0xC1]).is_err());
        assert!(StoreCodec::from_slice::<Tree>(&[COMPACT_MARK, 0xFF, 0xFF]).is_err());
        assert!(StoreCodec::from_slice::<Tree>(b"{not json").is_err());
    }
}
