//! How Muster keeps openmls state in SQLite: the codec shared by devices and the relay,
//! and the storage provider devices use.

mod batched;

pub use batched::{BatchedSecrets, Storage};

/// Serialises openmls state in a Muster SQLite database (a device's or the relay's).
///
/// Lookup keys are found by their encoding, so a value is encoded exactly as earlier
/// versions did unless it is large: up to [`PACKED_ABOVE`] bytes of MessagePack it is
/// JSON, and below [`COMPACT_FROM`] bytes it is MessagePack behind [`PACKED_MARK`] (a byte
/// no JSON text starts with). Larger values (a group's ratchet tree, its secret tree,
/// rewritten for every message) are postcard behind [`COMPACT_MARK`]: about as small as
/// the bytes themselves, and read several times quicker than MessagePack's numbers (a
/// 10,000-member group loads in a third of the time). All three read back.
#[derive(Default)]
pub struct StoreCodec;

const PACKED_MARK: u8 = 0xFF;
const COMPACT_MARK: u8 = 0xFE;
const PACKED_ABOVE: usize = 512;
/// Values this large are never lookup keys (group ids are at most a few dozen bytes).
const COMPACT_FROM: usize = 4096;

/// Why openmls state could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum StoreCodecError {
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("postcard: {0}")]
    Compact(#[from] postcard::Error),
    #[error("MessagePack encoding: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("MessagePack decoding: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
}

/// The compact encoding ([`COMPACT_MARK`] and postcard), for values that are never lookup
/// keys.
fn compact<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreCodecError> {
    Ok(postcard::to_extend(value, vec![COMPACT_MARK])?)
}

impl openmls_sqlite_storage::Codec for StoreCodec {
    type Error = StoreCodecError;

    fn to_vec<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, Self::Error> {
        let compact = compact(value)?;
        if compact.len() > COMPACT_FROM {
            return Ok(compact);
        }
        let mut packed = vec![PACKED_MARK];
        rmp_serde::encode::write_named(&mut packed, value)?;
        if packed.len() - 1 <= PACKED_ABOVE {
            return Ok(serde_json::to_vec(value)?);
        }
        Ok(packed)
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
    fn middling_values_are_messagepack_as_before_so_long_keys_still_match() {
        let tree = Tree {
            leaves: (0..40u8).map(|i| vec![i; 64]).collect(),
            epoch: 9,
        };
        let bytes = StoreCodec::to_vec(&tree).unwrap();
        let mut before = vec![PACKED_MARK];
        rmp_serde::encode::write_named(&mut before, &tree).unwrap();
        assert_eq!(bytes, before);
        assert_eq!(StoreCodec::from_slice::<Tree>(&bytes).unwrap(), tree);
    }

    #[test]
    fn large_values_are_compact_and_read_back() {
        let tree = Tree {
            leaves: (0..100u8).map(|i| vec![i; 64]).collect(),
            epoch: 9,
        };
        let bytes = StoreCodec::to_vec(&tree).unwrap();
        assert_eq!(bytes[0], COMPACT_MARK);
        assert!(bytes.len() < 100 * 64 + 200);
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
