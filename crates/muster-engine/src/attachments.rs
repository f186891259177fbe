//! Attachment encryption: a fresh AES-256-GCM key per file, the file sealed in chunks
//! (each chunk's nonce is its index; its associated data binds the blob id, the index and
//! whether it is the last chunk, so chunks cannot be reordered, dropped or truncated).

use muster_proto::{ATTACHMENT_CHUNK, ATTACHMENT_CHUNK_OVERHEAD};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use serde::{Deserialize, Serialize};

/// What travels inside the MLS message so recipients can fetch and open the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentRef {
    pub blob_id: String,
    /// AES-256-GCM key, hex. Only ever inside MLS and the device's own store.
    pub key: String,
    /// SHA-256 of the encrypted blob, hex.
    pub blob_sha256: String,
    /// SHA-256 of the original file, hex.
    pub sha256: String,
    pub name: String,
    pub mime: String,
    pub size: u64,
}

/// Why an attachment could not be opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AttachmentError {
    #[error("the attachment failed authentication: it was altered on the relay or in transit")]
    Tampered,
    #[error("the attachment's key is malformed")]
    BadKey,
}

/// The sizes of an attachment's encrypted chunks, in order.
pub(crate) fn encrypted_chunk_lengths(size: u64) -> impl Iterator<Item = usize> {
    let chunks = crate::attachments::chunk_count(size);
    (0..chunks).map(move |index| {
        let plain = if index + 1 == chunks {
            size - index * ATTACHMENT_CHUNK as u64
        } else {
            ATTACHMENT_CHUNK as u64
        };
        plain as usize + ATTACHMENT_CHUNK_OVERHEAD
    })
}

pub(crate) fn chunk_count(size: u64) -> u64 {
    size.div_ceil(ATTACHMENT_CHUNK as u64).max(1)
}

fn nonce(index: u64) -> Nonce {
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&index.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

fn aad(blob_id: &str, index: u64, last: bool) -> Vec<u8> {
    let mut out = blob_id.as_bytes().to_vec();
    out.extend_from_slice(&index.to_be_bytes());
    out.push(last as u8);
    out
}

/// Seals and opens the chunks of one attachment.
pub(crate) struct ChunkCipher {
    key: LessSafeKey,
    blob_id: String,
    chunks: u64,
}

impl ChunkCipher {
    pub(crate) fn new(key: &[u8], blob_id: &str, size: u64) -> Result<Self, AttachmentError> {
        let key = UnboundKey::new(&AES_256_GCM, key).map_err(|_| AttachmentError::BadKey)?;
        Ok(Self {
            key: LessSafeKey::new(key),
            blob_id: blob_id.to_string(),
            chunks: chunk_count(size),
        })
    }

    pub(crate) fn seal(&self, index: u64, plain: &[u8]) -> Vec<u8> {
        let mut data = plain.to_vec();
        let last = index + 1 == self.chunks;
        self.key
            .seal_in_place_append_tag(
                nonce(index),
                Aad::from(aad(&self.blob_id, index, last)),
                &mut data,
            )
            .expect("chunk sizes are far below the AEAD limit");
        data
    }

    pub(crate) fn open(&self, index: u64, sealed: &[u8]) -> Result<Vec<u8>, AttachmentError> {
        if index >= self.chunks || sealed.len() < ATTACHMENT_CHUNK_OVERHEAD {
            return Err(AttachmentError::Tampered);
        }
        let last = index + 1 == self.chunks;
        let mut data = sealed.to_vec();
        let plain = self
            .key
            .open_in_place(
                nonce(index),
                Aad::from(aad(&self.blob_id, index, last)),
                &mut data,
            )
            .map_err(|_| AttachmentError::Tampered)?;
        Ok(plain.to_vec())
    }
}

/// A reasonable MIME type from a file name.
pub(crate) fn mime_for(name: &str) -> &'static str {
    let ext = name
        .rsplit('.')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    match ext.as_str() {
        "txt" | "log" => "text/plain",
        "csv" => "text/csv",
        "pdf" => "application/pdf",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "mp4" => "video/mp4",
        "zip" => "application/zip",
        "json" => "application/json",
        "doc" | "docx" => "application/msword",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_round_trip_and_resist_tampering_reordering_and_truncation() {
        let key = [7u8; 32];
        let size = ATTACHMENT_CHUNK as u64 + 10;
        let c = ChunkCipher::new(&key, "b1", size).unwrap();
        let first = c.seal(0, &vec![1u8; ATTACHMENT_CHUNK]);
        let second = c.seal(1, &[2u8; 10]);
        assert_eq!(c.open(1, &second).unwrap(), vec![2u8; 10]);
        assert_eq!(c.open(0, &first).unwrap().len(), ATTACHMENT_CHUNK);
        let mut flipped = second.clone();
        flipped[3] ^= 1;
        assert_eq!(c.open(1, &flipped), Err(AttachmentError::Tampered));
        assert_eq!(
            c.open(0, &second),
            Err(AttachmentError::Tampered),
            "reordered"
        );
        // A blob cut after its first chunk: the first chunk was not sealed as the last.
        let short = ChunkCipher::new(&key, "b1", ATTACHMENT_CHUNK as u64).unwrap();
        assert_eq!(short.open(0, &first), Err(AttachmentError::Tampered));
        // Another blob's chunk does not open here.
        let other = ChunkCipher::new(&key, "b2", size).unwrap();
        assert_eq!(other.open(1, &second), Err(AttachmentError::Tampered));
    }

    #[test]
    fn empty_files_are_one_sealed_chunk() {
        let c = ChunkCipher::new(&[1u8; 32], "e", 0).unwrap();
        let sealed = c.seal(0, &[]);
        assert_eq!(sealed.len(), ATTACHMENT_CHUNK_OVERHEAD);
        assert_eq!(c.open(0, &sealed).unwrap(), Vec::<u8>::new());
    }
}
