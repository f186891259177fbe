//! Attachments: encrypting a file into relay blobs, and fetching and decrypting one.

use super::*;

impl Engine {
    /// Encrypts a file with a fresh key, uploads the ciphertext to the relay in chunks, and
    /// queues the message that carries its key, hash, name, type and size to the group.
    pub async fn send_file(
        &mut self,
        conn: &impl Link,
        group: &str,
        path: &Path,
        caption: Option<&str>,
    ) -> Result<QueuedMessage, EngineError> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| EngineError::Invalid(format!("{} is not a file", path.display())))?;
        let mut file = std::fs::File::open(path)
            .map_err(|e| EngineError::Invalid(format!("cannot read {}: {e}", path.display())))?;
        let size = file.metadata()?.len();
        self.send_attachment(conn, group, &name, size, &mut file, caption)
            .await
    }

    /// [`Self::send_file`] for `size` bytes read from `content`, sent under `name` (its
    /// last path component only).
    pub async fn send_attachment(
        &mut self,
        conn: &impl Link,
        group: &str,
        name: &str,
        size: u64,
        content: &mut impl std::io::Read,
        caption: Option<&str>,
    ) -> Result<QueuedMessage, EngineError> {
        let (group_id, _) = self.active_group(group)?;
        let name = Path::new(name)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| !n.trim().is_empty())
            .ok_or_else(|| EngineError::Invalid("the file has no name".into()))?;
        if size > MAX_ATTACHMENT {
            return Err(EngineError::Invalid(format!(
                "{name} is {:.1} MiB; attachments are limited to {} MiB",
                size as f64 / (1024.0 * 1024.0),
                MAX_ATTACHMENT / (1024 * 1024)
            )));
        }
        let mut key = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
            .expect("system randomness available");
        let blob_id = random_hex(16);
        let cipher = ChunkCipher::new(&key, &blob_id, size)?;
        let total_size = encrypted_size(size);
        let mut plain_hash = ring::digest::Context::new(&ring::digest::SHA256);
        let mut blob_hash = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; ATTACHMENT_CHUNK];
        let mut offset = 0u64;
        for index in 0..crate::attachments::chunk_count(size) {
            let mut filled = 0;
            while filled < buf.len() {
                let n = content.read(&mut buf[filled..])?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            plain_hash.update(&buf[..filled]);
            let sealed = cipher.seal(index, &buf[..filled]);
            blob_hash.update(&sealed);
            conn.request(&Request::BlobPut {
                blob_id: blob_id.clone(),
                group_id: group_id.clone(),
                total_size,
                offset,
                data: sealed.clone(),
            })
            .await
            .map_err(from_link)?;
            offset += sealed.len() as u64;
        }
        if offset != total_size {
            return Err(EngineError::Invalid(format!(
                "{name} changed while it was being sent; try again"
            )));
        }
        let blob_sha256 = blob_hash.finish();
        conn.request(&Request::BlobComplete {
            blob_id: blob_id.clone(),
            sha256: blob_sha256.as_ref().to_vec(),
        })
        .await
        .map_err(from_link)?;
        let attachment = AttachmentRef {
            blob_id,
            key: hex::encode(key),
            blob_sha256: hex::encode(blob_sha256.as_ref()),
            sha256: hex::encode(plain_hash.finish().as_ref()),
            mime: mime_for(&name).to_string(),
            name,
            size,
        };
        let id = self.enqueue(
            &group_id,
            Body::Attachment {
                attachment,
                caption: caption.map(str::to_string),
            },
        )?;
        Ok(QueuedMessage { group_id, id })
    }

    /// Downloads an attachment, checks it against the hashes its message carries, decrypts
    /// it and writes it to `out` (default: its name in the current directory). Returns the path.
    pub async fn fetch_attachment(
        &mut self,
        conn: &impl Link,
        id: &str,
        out: Option<&Path>,
    ) -> Result<PathBuf, EngineError> {
        let (group_id, id, attachment) = self.attachment_of(id)?;
        // Never let a sender's file name pick a path outside the current directory.
        let safe_name = Path::new(&attachment.name)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| !n.is_empty() && n != "." && n != "..")
            .unwrap_or_else(|| format!("attachment-{}", id.get(..8).unwrap_or("file")));
        let target = out
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(&safe_name));
        if target.exists() {
            return Err(EngineError::Invalid(format!(
                "{} already exists; choose another --out",
                target.display()
            )));
        }
        let partial = target.with_extension("muster-partial");
        let result = async {
            let mut file = std::fs::File::create(&partial)?;
            receive_attachment(conn, &attachment, &mut file).await?;
            file.sync_all()?;
            Ok::<_, EngineError>(())
        }
        .await;
        if let Err(e) = result {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
        std::fs::rename(&partial, &target)?;
        let saved = std::fs::canonicalize(&target).unwrap_or(target.clone());
        self.db.execute(
            "UPDATE messages SET saved_to = ?3 WHERE group_id = ?1 AND id = ?2",
            params![group_id, id, saved.display().to_string()],
        )?;
        blob_fetched(conn, &attachment.blob_id).await?;
        Ok(saved)
    }

    /// Downloads, checks and decrypts the attachment of message `id` into memory, for a
    /// caller that hands it on (the browser): only a whole, untampered file is returned.
    pub async fn download_attachment(
        &mut self,
        conn: &impl Link,
        id: &str,
    ) -> Result<(AttachmentView, Vec<u8>), EngineError> {
        let (_, _, attachment) = self.attachment_of(id)?;
        // The size comes from the sender: never hold more than any attachment may be.
        if attachment.size > MAX_ATTACHMENT {
            return Err(crate::attachments::AttachmentError::Tampered.into());
        }
        let mut content = Vec::with_capacity(attachment.size as usize);
        receive_attachment(conn, &attachment, &mut content).await?;
        blob_fetched(conn, &attachment.blob_id).await?;
        let view = AttachmentView {
            name: attachment.name,
            mime: attachment.mime,
            size: attachment.size,
            sha256: attachment.sha256,
            saved_to: None,
        };
        Ok((view, content))
    }

    /// The attachment message `id` carries, with the message's group and full id.
    fn attachment_of(&self, id: &str) -> Result<(Vec<u8>, String, AttachmentRef), EngineError> {
        let (group_id, id) = self.find_message(id)?;
        let json: Option<String> = self.db.query_row(
            "SELECT attachment FROM messages WHERE group_id = ?1 AND id = ?2",
            params![group_id, id],
            |r| r.get(0),
        )?;
        let attachment: AttachmentRef = json
            .and_then(|j| serde_json::from_str(&j).ok())
            .ok_or_else(|| EngineError::Invalid(format!("message {id} has no attachment")))?;
        Ok((group_id, id, attachment))
    }
}

/// Downloads the blob of `attachment`, decrypting each chunk into `sink`, and checks the
/// whole against the hashes its message carries.
async fn receive_attachment(
    conn: &impl Link,
    attachment: &AttachmentRef,
    sink: &mut impl std::io::Write,
) -> Result<(), EngineError> {
    let key =
        hex::decode(&attachment.key).map_err(|_| crate::attachments::AttachmentError::BadKey)?;
    let cipher = ChunkCipher::new(&key, &attachment.blob_id, attachment.size)?;
    let mut plain_hash = ring::digest::Context::new(&ring::digest::SHA256);
    let mut blob_hash = ring::digest::Context::new(&ring::digest::SHA256);
    download_blob(conn, &attachment.blob_id, attachment.size, |index, data| {
        blob_hash.update(data);
        let plain = cipher.open(index, data)?;
        plain_hash.update(&plain);
        sink.write_all(&plain)?;
        Ok(())
    })
    .await?;
    if hex::encode(blob_hash.finish().as_ref()) != attachment.blob_sha256
        || hex::encode(plain_hash.finish().as_ref()) != attachment.sha256
    {
        return Err(crate::attachments::AttachmentError::Tampered.into());
    }
    Ok(())
}

/// Downloads the blob `blob_id` of an attachment of `size` bytes, one encrypted chunk per
/// request, handing each chunk to `each` with its index: the one download loop, for
/// members and the archive alike. A chunk of the wrong length, or a blob of the wrong
/// total size, is refused as tampered before `each` sees it.
pub(crate) async fn download_blob(
    conn: &impl Link,
    blob_id: &str,
    size: u64,
    mut each: impl FnMut(u64, &[u8]) -> Result<(), EngineError>,
) -> Result<(), EngineError> {
    let mut offset = 0u64;
    for (index, want) in crate::attachments::encrypted_chunk_lengths(size).enumerate() {
        let request = Request::BlobGet {
            blob_id: blob_id.to_string(),
            offset,
            max_len: want as u32,
        };
        let (data, total_size) = ask!(conn, request,
            Response::BlobData { data, total_size } => (data, total_size));
        if total_size != encrypted_size(size) || data.len() != want {
            return Err(crate::attachments::AttachmentError::Tampered.into());
        }
        each(index as u64, &data)?;
        offset += want as u64;
    }
    Ok(())
}

/// Tells the relay this device holds the blob; once every recipient does, it is deleted.
pub(crate) async fn blob_fetched(conn: &impl Link, blob_id: &str) -> Result<(), EngineError> {
    ask!(conn, Request::BlobFetched { blob_id: blob_id.to_string() }, Response::Ok => ());
    Ok(())
}
