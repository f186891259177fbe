//! Encrypted attachment blobs: chunked upload, member-only download, and deletion once
//! every recipient device has fetched them or the retention period ends. The relay never
//! holds a key: blobs are ciphertext made on the sending device.

use crate::db::{params, OptionalExtension};
use crate::error::{refuse, Failure, StoreError};
use crate::relay::{Outcome, Relay, Session};
use muster_proto::{
    encrypted_size, now_unix, ErrorCode, Response, ATTACHMENT_CHUNK, ATTACHMENT_CHUNK_OVERHEAD,
    MAX_ATTACHMENT,
};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

/// How long a sealed blob waits for its recipients before the relay deletes it.
pub const BLOB_RETENTION_SECS: u64 = 30 * 24 * 3600;
/// How long an unfinished upload may sit before the relay deletes it.
const UNFINISHED_UPLOAD_SECS: u64 = 24 * 3600;
const MAX_CHUNK: usize = ATTACHMENT_CHUNK + ATTACHMENT_CHUNK_OVERHEAD;

fn check_blob_id(blob_id: &str) -> Result<(), Failure> {
    if blob_id.len() == 32
        && blob_id
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    {
        Ok(())
    } else {
        Err(refuse(
            ErrorCode::BadRequest,
            "blob ids are 32 lowercase hex characters",
        ))
    }
}

fn io(e: std::io::Error) -> Failure {
    Failure::Store(StoreError::Corrupt(format!("blob store: {e}")))
}

struct BlobRow {
    uploader: String,
    group_id: Vec<u8>,
    total_size: u64,
    received: u64,
    complete: bool,
}

impl Relay {
    fn blob_path(&self, blob_id: &str) -> PathBuf {
        self.blob_dir().join(blob_id)
    }

    fn blob_row(&self, blob_id: &str) -> Result<Option<BlobRow>, Failure> {
        Ok(self
            .db()
            .query_row(
                "SELECT uploader, group_id, total_size, received, complete FROM blobs WHERE blob_id = ?1",
                [blob_id],
                |r| {
                    Ok(BlobRow {
                        uploader: r.get(0)?,
                        group_id: r.get(1)?,
                        total_size: r.get::<_, i64>(2)? as u64,
                        received: r.get::<_, i64>(3)? as u64,
                        complete: r.get(4)?,
                    })
                },
            )
            .optional()?)
    }

    pub(crate) fn blob_put(
        &mut self,
        session: &Session,
        blob_id: &str,
        group_id: &[u8],
        total_size: u64,
        offset: u64,
        data: &[u8],
    ) -> Result<Outcome, Failure> {
        check_blob_id(blob_id)?;
        if data.len() > MAX_CHUNK {
            return Err(refuse(
                ErrorCode::TooLarge,
                format!("blob chunks are at most {MAX_CHUNK} bytes"),
            ));
        }
        let limit = encrypted_size(MAX_ATTACHMENT);
        if total_size > limit {
            return Err(refuse(
                ErrorCode::TooLarge,
                format!(
                    "attachment of {total_size} encrypted bytes exceeds the limit of {} MiB",
                    MAX_ATTACHMENT / (1024 * 1024)
                ),
            ));
        }
        let row = match self.blob_row(blob_id)? {
            Some(row) => row,
            None => {
                if offset != 0 {
                    return Err(refuse(
                        ErrorCode::UnknownBlob,
                        "no upload of this blob in progress",
                    ));
                }
                self.start_blob(session, blob_id, group_id, total_size)?
            }
        };
        if row.uploader != session.device_id
            || row.group_id != group_id
            || row.total_size != total_size
        {
            return Err(refuse(
                ErrorCode::Forbidden,
                "this blob belongs to another upload",
            ));
        }
        if row.complete {
            return Ok(Outcome::reply(Response::Ok));
        }
        let end = offset + data.len() as u64;
        if end <= row.received {
            // A chunk sent again after a lost answer.
            return Ok(Outcome::reply(Response::Ok));
        }
        if offset != row.received {
            return Err(refuse(
                ErrorCode::BadRequest,
                format!("expected the chunk at offset {}", row.received),
            ));
        }
        if end > total_size {
            return Err(refuse(
                ErrorCode::TooLarge,
                "chunk runs past the announced size",
            ));
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(self.blob_path(blob_id))
            .map_err(io)?;
        file.seek(SeekFrom::Start(offset)).map_err(io)?;
        file.write_all(data).map_err(io)?;
        file.sync_data().map_err(io)?;
        self.db().execute(
            "UPDATE blobs SET received = ?2 WHERE blob_id = ?1",
            params![blob_id, end as i64],
        )?;
        Ok(Outcome::reply(Response::Ok))
    }

    fn start_blob(
        &mut self,
        session: &Session,
        blob_id: &str,
        group_id: &[u8],
        total_size: u64,
    ) -> Result<BlobRow, Failure> {
        self.collect_expired_blobs()?;
        crate::relay::require_member(self.db(), group_id, &session.device_id)?;
        // Counted and claimed under the writer's lock: uploads through two relays of one
        // database cannot both fit in what is left.
        let tx = self.db().transaction()?;
        let used: i64 = tx.query_row(
            "SELECT CAST(COALESCE(SUM(total_size), 0) AS BIGINT) FROM blobs WHERE uploader = ?1",
            [&session.device_id],
            |r| r.get(0),
        )?;
        if used as u64 + total_size > self.blob_quota() {
            return Err(refuse(
                ErrorCode::QuotaExceeded,
                format!(
                    "attachment storage quota of {} bytes per device reached: {} bytes are still waiting for recipients",
                    self.blob_quota(),
                    used
                ),
            ));
        }
        // Another relay of the database may have started this blob meanwhile: its row
        // stands, and its file is never truncated.
        let started_elsewhere = tx
            .prepare_cached("SELECT 1 FROM blobs WHERE blob_id = ?1")?
            .exists([blob_id])?;
        if started_elsewhere {
            drop(tx);
            return self.blob_row(blob_id)?.ok_or_else(|| {
                refuse(ErrorCode::UnknownBlob, "no upload of this blob in progress")
            });
        }
        tx.execute(
            "INSERT INTO blobs (blob_id, uploader, group_id, total_size, received, complete, created_at)
             VALUES (?1, ?2, ?3, ?4, 0, 0, ?5)",
            params![blob_id, session.device_id, group_id, total_size as i64, now_unix() as i64],
        )?;
        std::fs::create_dir_all(self.blob_dir()).map_err(io)?;
        // A file left by an upload whose row is gone (expired) is replaced.
        std::fs::File::create(self.blob_path(blob_id)).map_err(io)?;
        tx.commit()?;
        Ok(BlobRow {
            uploader: session.device_id.clone(),
            group_id: group_id.to_vec(),
            total_size,
            received: 0,
            complete: false,
        })
    }

    pub(crate) fn blob_complete(
        &mut self,
        session: &Session,
        blob_id: &str,
        sha256: &[u8],
    ) -> Result<Outcome, Failure> {
        check_blob_id(blob_id)?;
        let row = self
            .blob_row(blob_id)?
            .ok_or_else(|| refuse(ErrorCode::UnknownBlob, "no such blob"))?;
        if row.uploader != session.device_id {
            return Err(refuse(
                ErrorCode::Forbidden,
                "this blob belongs to another upload",
            ));
        }
        if row.complete {
            return Ok(Outcome::reply(Response::Ok));
        }
        if row.received != row.total_size {
            return Err(refuse(
                ErrorCode::BadRequest,
                format!("only {} of {} bytes arrived", row.received, row.total_size),
            ));
        }
        let mut file = std::fs::File::open(self.blob_path(blob_id)).map_err(io)?;
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = file.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            digest.update(&buf[..n]);
        }
        if digest.finish().as_ref() != sha256 {
            return Err(refuse(
                ErrorCode::InvalidMessage,
                "blob does not match its SHA-256",
            ));
        }
        let tx = self.db_mut().transaction()?;
        tx.execute(
            "UPDATE blobs SET complete = 1, sha256 = ?2 WHERE blob_id = ?1",
            params![blob_id, sha256],
        )?;
        tx.execute(
            "INSERT INTO blob_recipients (blob_id, device_id, fetched)
             SELECT ?1, device_id, 0 FROM memberships
             WHERE group_id = ?2 AND to_seq IS NULL AND device_id != ?3",
            params![blob_id, row.group_id, session.device_id],
        )?;
        tx.commit()?;
        Ok(Outcome::reply(Response::Ok))
    }

    pub(crate) fn blob_get(
        &self,
        session: &Session,
        blob_id: &str,
        offset: u64,
        max_len: u32,
    ) -> Result<Outcome, Failure> {
        check_blob_id(blob_id)?;
        let row = self
            .blob_row(blob_id)?
            .filter(|r| r.complete)
            .ok_or_else(|| {
                refuse(
                    ErrorCode::UnknownBlob,
                    "no such attachment on the relay (it may have expired)",
                )
            })?;
        let allowed = row.uploader == session.device_id
            || self
                .db()
                .query_row(
                    "SELECT 1 FROM blob_recipients WHERE blob_id = ?1 AND device_id = ?2",
                    params![blob_id, session.device_id],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
        if !allowed {
            return Err(refuse(
                ErrorCode::Forbidden,
                "this attachment was not sent to this device",
            ));
        }
        if offset > row.total_size {
            return Err(refuse(
                ErrorCode::BadRequest,
                "offset past the end of the blob",
            ));
        }
        let len = (max_len as usize)
            .min(MAX_CHUNK)
            .min((row.total_size - offset) as usize);
        let mut file = std::fs::File::open(self.blob_path(blob_id)).map_err(io)?;
        file.seek(SeekFrom::Start(offset)).map_err(io)?;
        let mut data = vec![0u8; len];
        file.read_exact(&mut data).map_err(io)?;
        Ok(Outcome::reply(Response::BlobData {
            data,
            total_size: row.total_size,
        }))
    }

    pub(crate) fn blob_fetched(
        &mut self,
        session: &Session,
        blob_id: &str,
    ) -> Result<Outcome, Failure> {
        check_blob_id(blob_id)?;
        self.db().execute(
            "UPDATE blob_recipients SET fetched = 1 WHERE blob_id = ?1 AND device_id = ?2",
            params![blob_id, session.device_id],
        )?;
        let waiting: i64 = self.db().query_row(
            "SELECT COUNT(*) FROM blob_recipients WHERE blob_id = ?1 AND fetched = 0",
            [blob_id],
            |r| r.get(0),
        )?;
        if waiting == 0 {
            self.delete_blob(blob_id)?;
        }
        Ok(Outcome::reply(Response::Ok))
    }

    fn delete_blob(&mut self, blob_id: &str) -> Result<(), Failure> {
        self.db()
            .execute("DELETE FROM blob_recipients WHERE blob_id = ?1", [blob_id])?;
        self.db()
            .execute("DELETE FROM blobs WHERE blob_id = ?1", [blob_id])?;
        match std::fs::remove_file(self.blob_path(blob_id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(e)),
        }
    }

    /// Deletes blobs past their retention and uploads abandoned half way.
    pub(crate) fn collect_expired_blobs(&mut self) -> Result<usize, Failure> {
        let now = now_unix() as i64;
        let expired: Vec<String> = {
            let mut stmt = self.db().prepare(
                "SELECT blob_id FROM blobs WHERE (complete = 1 AND created_at < ?1)
                                            OR (complete = 0 AND created_at < ?2)",
            )?;
            stmt.query_map(
                params![
                    now - BLOB_RETENTION_SECS as i64,
                    now - UNFINISHED_UPLOAD_SECS as i64
                ],
                |r| r.get(0),
            )?
            .collect::<Result<Vec<String>, _>>()?
        };
        for blob in &expired {
            self.delete_blob(blob)?;
        }
        Ok(expired.len())
    }

    /// Encrypted bytes this relay holds in blobs.
    pub fn blob_bytes(&self) -> Result<u64, StoreError> {
        Ok(self.db().query_row(
            "SELECT CAST(COALESCE(SUM(received), 0) AS BIGINT) FROM blobs",
            (),
            |r| r.get::<_, i64>(0),
        )? as u64)
    }
}
