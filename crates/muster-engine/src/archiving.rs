//! The compliance archive device's operations: keeping what archived groups say,
//! fetching their attachments, exports and samples recorded in its access log, retention
//! and legal hold, and publishing its signed checkpoints outside its host.

use crate::archive::{self, ArchivedMessage};
use crate::attachments::{AttachmentRef, ChunkCipher};
use crate::engine::{now_ms, rfc3339_ms, DeviceRow, Engine};
use crate::error::{from_link, EngineError};
use crate::legal;
use crate::link::Link;
use muster_proto::{encrypted_size, validate_handle, PublishedCheckpoint, Request, Response};
use openmls_traits::signatures::Signer as _;
use rusqlite::OptionalExtension as _;
use rusqlite::TransactionBehavior;
use std::path::{Path, PathBuf};

/// Every checkpoint published on the relay, with its position, oldest first.
pub(crate) async fn published_checkpoints(
    conn: &impl Link,
) -> Result<Vec<(u64, PublishedCheckpoint)>, EngineError> {
    let mut all = Vec::new();
    let mut since = 0;
    loop {
        let batch = ask!(conn, Request::ArchiveCheckpoints { since }, Response::ArchiveCheckpoints(batch) => batch);
        let Some(&(last, _)) = batch.last() else {
            return Ok(all);
        };
        since = last;
        all.extend(batch);
    }
}

/// A published checkpoint in the archive's own form.
pub(crate) fn as_checkpoint(c: &PublishedCheckpoint) -> archive::Checkpoint {
    archive::Checkpoint {
        entry_seq: c.entry_seq as i64,
        hash: hex::encode(&c.hash),
        signed_at: c.signed_at,
        signature: hex::encode(&c.signature),
    }
}

/// The attachment an archived message carries.
fn archived_attachment(message: &ArchivedMessage) -> Result<AttachmentRef, EngineError> {
    serde_json::from_value(message.body["attachment"].clone()).map_err(|e| {
        EngineError::Invalid(format!(
            "archived message {} has no attachment: {e}",
            message.id
        ))
    })
}

/// Decrypts a stored blob into `out`, failing unless every chunk authenticates and both
/// the blob's and the file's SHA-256 match what the sender put in the message.
fn open_archived_blob(
    path: &Path,
    attachment: &AttachmentRef,
    out: &mut impl std::io::Write,
) -> Result<(), EngineError> {
    use std::io::Read as _;
    let tampered = || EngineError::Attachment(crate::attachments::AttachmentError::Tampered);
    let key =
        hex::decode(&attachment.key).map_err(|_| crate::attachments::AttachmentError::BadKey)?;
    let cipher = ChunkCipher::new(&key, &attachment.blob_id, attachment.size)?;
    let mut file = std::fs::File::open(path)?;
    if file.metadata()?.len() != encrypted_size(attachment.size) {
        return Err(tampered());
    }
    let mut plain_hash = ring::digest::Context::new(&ring::digest::SHA256);
    let mut blob_hash = ring::digest::Context::new(&ring::digest::SHA256);
    for (index, len) in crate::attachments::encrypted_chunk_lengths(attachment.size).enumerate() {
        let mut data = vec![0u8; len];
        file.read_exact(&mut data)?;
        blob_hash.update(&data);
        let plain = cipher.open(index as u64, &data)?;
        plain_hash.update(&plain);
        out.write_all(&plain)?;
    }
    if hex::encode(blob_hash.finish().as_ref()) != attachment.blob_sha256
        || hex::encode(plain_hash.finish().as_ref()) != attachment.sha256
    {
        return Err(tampered());
    }
    Ok(())
}

/// What a read of the archive gives: the result, or the request its legal officers must
/// approve first.
pub enum ArchiveRead<T> {
    Done(T),
    NeedsApproval(Box<legal::ApprovalRequest>),
}

enum Unsealed {
    NeedsApproval(Box<legal::ApprovalRequest>),
    /// The officers' key for a sealed archive; `None` where nothing is sealed.
    Open(Option<legal::OfficersKey>),
}

/// Opens stored records with `key`; without one, a sealed record is refused.
fn opener(key: Option<&legal::OfficersKey>) -> impl Fn(&str) -> Result<String, EngineError> + '_ {
    move |record: &str| match key {
        Some(key) => key.open(record),
        None if legal::SealedRecord::parse(record).is_some() => Err(EngineError::Invalid(
            "this archive entry is sealed to the legal officers: their approvals are needed".into(),
        )),
        None => Ok(record.to_string()),
    }
}

impl Engine {
    pub(crate) fn require_archive(&self) -> Result<DeviceRow, EngineError> {
        let device = self.device()?;
        if !device.certificate.as_ref().is_some_and(|c| c.is_archive()) {
            return Err(EngineError::Invalid(
                "this device is not the organisation's archive: its certificate has no archive role".into(),
            ));
        }
        Ok(device)
    }

    /// Whether this device is the organisation's compliance archive.
    pub fn is_archive(&self) -> Result<bool, EngineError> {
        Ok(self.require_archive().is_ok())
    }

    /// (archive) Checks the archive's hash chain, its signed checkpoints, and that every
    /// cleared entry was lawfully cleared, on this host alone.
    pub fn archive_verify_offline(&self) -> Result<archive::VerifyReport, EngineError> {
        let device = self.require_archive()?;
        let (entries, checkpoints) = archive::chain(&self.db)?;
        Ok(archive::verify_chain(
            &entries,
            &checkpoints,
            &device.device_key,
        ))
    }

    /// (archive) [`Self::archive_verify_offline`], and every checkpoint the archive
    /// published on the relay: an archive host cannot cut entries off its end or rewrite
    /// its history without the published checkpoints showing it.
    pub async fn archive_verify(
        &self,
        conn: &impl Link,
    ) -> Result<archive::VerifyReport, EngineError> {
        let device = self.require_archive()?;
        let (entries, checkpoints) = archive::chain(&self.db)?;
        let mut report = archive::verify_chain(&entries, &checkpoints, &device.device_key);
        let published: Vec<archive::Checkpoint> = published_checkpoints(conn)
            .await?
            .into_iter()
            .filter(|(_, c)| c.device_id == device.device_id)
            .map(|(_, c)| as_checkpoint(&c))
            .collect();
        archive::compare_published(&mut report, &entries, &published, &device.device_key);
        Ok(report)
    }

    /// (archive) Publishes every checkpoint not yet published to the relay, where admin
    /// devices collect them. Returns how many went out.
    pub async fn archive_publish(&mut self, conn: &impl Link) -> Result<usize, EngineError> {
        let device = self.require_archive()?;
        let mut published = 0;
        for c in archive::unpublished(&self.db)? {
            conn.request(&Request::PublishCheckpoint {
                checkpoint: PublishedCheckpoint {
                    device_id: device.device_id.clone(),
                    entry_seq: c.entry_seq as u64,
                    hash: hex::decode(&c.hash).unwrap_or_default(),
                    signed_at: c.signed_at,
                    signature: hex::decode(&c.signature).unwrap_or_default(),
                },
            })
            .await
            .map_err(from_link)?;
            archive::mark_published(&self.db, c.entry_seq)?;
            published += 1;
        }
        Ok(published)
    }

    /// (archive) The whole chain and its checkpoints, for an admin's independent check
    /// (`muster admin archive-check`). It holds every archived text, so it is recorded
    /// in the access log, and the record published, before anything is returned.
    pub async fn archive_chain(
        &mut self,
        conn: &impl Link,
    ) -> Result<archive::ExportedChain, EngineError> {
        let device = self.require_archive()?;
        self.record_access("export-chain", "the whole chain".into())?;
        self.archive_publish(conn).await?;
        let (entries, checkpoints) = archive::chain(&self.db)?;
        Ok(archive::ExportedChain {
            device_id: device.device_id,
            entries,
            checkpoints,
        })
    }

    /// Appends a read of the archive to its access log, signed like every entry.
    fn record_access(&mut self, action: &str, what: String) -> Result<(), EngineError> {
        self.record_approved_access(action, what, Vec::new())
    }

    fn record_approved_access(
        &mut self,
        action: &str,
        what: String,
        approved_by: Vec<String>,
    ) -> Result<(), EngineError> {
        let device = self.require_archive()?;
        let signer = self.signer(&device)?;
        let who = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| "unknown".into());
        let tx = self
            .db
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let access = archive::AccessRecord {
            who,
            action: action.into(),
            what,
            approved_by,
        };
        archive::record_access(&tx, &access, now_ms())?;
        archive::checkpoint(&tx, now_ms(), |p| {
            signer
                .sign(p)
                .map_err(|e| EngineError::Mls(format!("{e:?}")))
        })?;
        tx.commit()?;
        Ok(())
    }

    /// (archive) Unseals for one read: with no approvals, the pending request for
    /// `action` on `what` (made and kept if there is none yet); with approvals, the
    /// officers' key restored from them, once they are for this very read (the request is
    /// then used up). An archive whose organisation has no legal officers reads as before.
    fn unseal_for(
        &mut self,
        action: &str,
        what: &str,
        approvals: &[legal::Approval],
    ) -> Result<Unsealed, EngineError> {
        let device = self.require_archive()?;
        let Some(officers) = legal::stored_officers(&self.db)? else {
            return Ok(Unsealed::Open(None));
        };
        if approvals.is_empty() {
            // One pass: forget requests past their time, and reuse a pending one for this read.
            let stored: Vec<(String, String)> = self
                .db
                .prepare("SELECT id, request FROM archive_requests")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            let mut pending = None;
            for (id, text) in stored {
                match serde_json::from_str::<legal::ApprovalRequest>(&text) {
                    Ok(r) if now_ms() - r.created_at <= legal::REQUEST_LIFETIME_MS => {
                        let this_read =
                            r.action == action && r.what == what && r.key_id == officers.key_id;
                        if this_read && pending.is_none() {
                            pending = Some(r);
                        }
                    }
                    _ => {
                        self.db
                            .execute("DELETE FROM archive_requests WHERE id = ?1", [id])?;
                    }
                }
            }
            if let Some(request) = pending {
                return Ok(Unsealed::NeedsApproval(Box::new(request)));
            }
            let certificate = device
                .certificate
                .clone()
                .ok_or_else(|| EngineError::Invalid("this device has no certificate yet".into()))?;
            let signer = self.signer(&device)?;
            let made = legal::new_request(
                &device.org.org_id,
                &certificate,
                &officers,
                action,
                what,
                now_ms(),
                |p| {
                    signer
                        .sign(p)
                        .map_err(|e| EngineError::Mls(format!("{e:?}")))
                },
            )?;
            self.db.execute(
                "INSERT INTO archive_requests (id, request, private_key) VALUES (?1, ?2, ?3)",
                rusqlite::params![
                    made.request.id,
                    serde_json::to_string(&made.request).expect("request serialises"),
                    made.private_key.as_slice()
                ],
            )?;
            return Ok(Unsealed::NeedsApproval(Box::new(made.request)));
        }
        let request_id = &approvals[0].request_id;
        let stored: Option<(String, zeroize::Zeroizing<Vec<u8>>)> = self
            .db
            .query_row(
                "SELECT request, private_key FROM archive_requests WHERE id = ?1",
                [request_id],
                |r| Ok((r.get(0)?, zeroize::Zeroizing::new(r.get::<_, Vec<u8>>(1)?))),
            )
            .optional()?;
        let Some((text, private_key)) = stored else {
            return Err(EngineError::Invalid(format!(
                "no pending request {request_id}: it was used or never made here; run the \
                 command without approvals for a new one"
            )));
        };
        let request: legal::ApprovalRequest = serde_json::from_str(&text)
            .map_err(|e| EngineError::Invalid(format!("stored request {request_id}: {e}")))?;
        if request.action != action || request.what != what {
            return Err(EngineError::Invalid(format!(
                "the approvals are for another read ({} {}), not this one ({action} {what})",
                request.action, request.what
            )));
        }
        let key = legal::restore(
            &request,
            &private_key,
            approvals,
            &officers,
            &device.org,
            &crate::engine::revocation_list(&self.db)?,
            muster_proto::now_unix(),
        )?;
        self.db
            .execute("DELETE FROM archive_requests WHERE id = ?1", [request_id])?;
        Ok(Unsealed::Open(Some(key)))
    }

    /// Starts a read of the archive: unseals it for `asked` (see [`Self::unseal_for`]),
    /// then, once it may go ahead, records `logged` in the access log with the approving
    /// officers and publishes that record, before anything is read.
    async fn begin_read(
        &mut self,
        conn: &impl Link,
        action: &str,
        asked: &str,
        logged: String,
        approvals: &[legal::Approval],
    ) -> Result<Unsealed, EngineError> {
        let unsealed = self.unseal_for(action, asked, approvals)?;
        if let Unsealed::Open(key) = &unsealed {
            let approved_by = key
                .as_ref()
                .map(|k| k.approved_by.clone())
                .unwrap_or_default();
            self.record_approved_access(action, logged, approved_by)?;
            self.archive_publish(conn).await?;
        }
        Ok(unsealed)
    }

    /// (archive) The archived messages of one account, oldest first. The export is
    /// recorded in the access log, and the record published to the relay, before
    /// anything is returned. A sealed archive needs its legal officers' approvals.
    pub async fn archive_export(
        &mut self,
        conn: &impl Link,
        filter: &archive::ExportFilter,
        approvals: &[legal::Approval],
    ) -> Result<ArchiveRead<Vec<ArchivedMessage>>, EngineError> {
        self.require_archive()?;
        let mut what = format!("messages of {}", filter.user);
        if let Some(g) = &filter.group {
            what.push_str(&format!(" in {g}"));
        }
        if let Some(from) = filter.from_ms {
            what.push_str(&format!(" from {}", rfc3339_ms(from)));
        }
        if let Some(to) = filter.to_ms {
            what.push_str(&format!(" to {}", rfc3339_ms(to)));
        }
        let key = match self
            .begin_read(conn, "export", &what, what.clone(), approvals)
            .await?
        {
            Unsealed::NeedsApproval(request) => return Ok(ArchiveRead::NeedsApproval(request)),
            Unsealed::Open(key) => key,
        };
        let open = opener(key.as_ref());
        Ok(ArchiveRead::Done(archive::messages(
            &self.db, filter, &open,
        )?))
    }

    /// (archive) Draws `count` archived messages at random for a reviewer's spot check;
    /// the same `seed` draws the same sample from the same archive. Recorded in the
    /// access log. A sealed archive needs its legal officers' approvals, and then the seed
    /// is part of what they approve.
    pub async fn archive_sample(
        &mut self,
        conn: &impl Link,
        count: usize,
        seed: Option<u64>,
        approvals: &[legal::Approval],
    ) -> Result<ArchiveRead<(u64, Vec<ArchivedMessage>)>, EngineError> {
        self.require_archive()?;
        if seed.is_none() && legal::stored_officers(&self.db)?.is_some() {
            return Err(EngineError::Invalid(
                "a sample of a sealed archive needs --seed: the legal officers approve that draw"
                    .into(),
            ));
        }
        let seed = match seed {
            Some(s) => s,
            None => {
                let mut bytes = [0u8; 8];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
                    .map_err(|_| EngineError::Invalid("no randomness available".into()))?;
                u64::from_le_bytes(bytes)
            }
        };
        let mut seqs = archive::message_seqs(&self.db)?;
        let total = seqs.len();
        // Partial Fisher-Yates with splitmix64: reproducible from the seed alone.
        let mut state = seed;
        let mut next = || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        let count = count.min(total);
        for i in 0..count {
            let j = i + (next() % (total - i) as u64) as usize;
            seqs.swap(i, j);
        }
        let mut chosen = seqs[..count].to_vec();
        chosen.sort_unstable();
        let asked = format!("{count} messages drawn with seed {seed}");
        let what = format!("{count} of {total} messages, seed {seed}");
        let key = match self
            .begin_read(conn, "sample", &asked, what, approvals)
            .await?
        {
            Unsealed::NeedsApproval(request) => return Ok(ArchiveRead::NeedsApproval(request)),
            Unsealed::Open(key) => key,
        };
        let open = opener(key.as_ref());
        let sample = chosen
            .into_iter()
            .map(|seq| archive::message_at(&self.db, seq, &open))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ArchiveRead::Done((seed, sample)))
    }

    fn archive_blob_path(&self, blob_id: &str) -> Result<PathBuf, EngineError> {
        if blob_id.is_empty() || !blob_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(EngineError::Invalid(format!(
                "archived attachment has a malformed blob id {blob_id:?}"
            )));
        }
        Ok(self.home().join("archive-blobs").join(blob_id))
    }

    /// (archive) Downloads the blobs of archived attachments, checks them against the
    /// hashes their senders signed into the message, and keeps them encrypted as the
    /// relay held them (their keys live only in the hash-chained entries). Blobs of
    /// entries retention cleared are deleted. Returns how many were stored; problems go
    /// into `report`.
    pub async fn archive_fetch_attachments(
        &mut self,
        conn: &impl Link,
    ) -> Result<usize, EngineError> {
        self.require_archive()?;
        for blob_id in archive::orphaned_blobs(&self.db)? {
            let path = self.archive_blob_path(&blob_id)?;
            if path.exists() {
                std::fs::remove_file(&path)?;
            }
            archive::forget_blob(&self.db, &blob_id)?;
        }
        let mut stored = 0;
        let plaintext_only = opener(None);
        for wanted in archive::wanted_blobs(&self.db)? {
            let blob_id = wanted.blob_id.clone();
            // Size and blob hash from outside the seal; entries from before carry them only
            // inside their (plaintext) record.
            let (size, blob_sha256, attachment) = match (wanted.size, wanted.blob_sha256.clone()) {
                (Some(size), Some(hash)) => (size, hash, None),
                _ => {
                    let attachment = archived_attachment(&archive::message_at(
                        &self.db,
                        wanted.entry_seq,
                        &plaintext_only,
                    )?)?;
                    (
                        attachment.size,
                        attachment.blob_sha256.clone(),
                        Some(attachment),
                    )
                }
            };
            let target = self.archive_blob_path(&blob_id)?;
            std::fs::create_dir_all(target.parent().expect("blob dir"))?;
            let partial = target.with_extension("partial");
            let result = async {
                let mut file = std::fs::File::create(&partial)?;
                let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
                crate::engine::download_blob(conn, &blob_id, size, |_, data| {
                    hash.update(data);
                    Ok(std::io::Write::write_all(&mut file, data)?)
                })
                .await?;
                file.sync_all()?;
                drop(file);
                // The encrypted blob is the one its sender hashed; where the record is
                // readable, decrypting checks every chunk and the file's hash too.
                if hex::encode(hash.finish().as_ref()) != blob_sha256 {
                    return Err(EngineError::Attachment(
                        crate::attachments::AttachmentError::Tampered,
                    ));
                }
                match &attachment {
                    Some(attachment) => {
                        open_archived_blob(&partial, attachment, &mut std::io::sink())
                    }
                    None => Ok(()),
                }
            }
            .await;
            match result {
                Ok(()) => {
                    std::fs::rename(&partial, &target)?;
                    archive::blob_done(&self.db, &blob_id, true, now_ms())?;
                    crate::engine::blob_fetched(conn, &blob_id).await?;
                    stored += 1;
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&partial);
                    archive::blob_done(&self.db, &blob_id, false, now_ms())?;
                    self.activity
                        .problems
                        .push(format!("could not archive attachment {blob_id}: {e}"));
                }
            }
        }
        Ok(stored)
    }

    /// (archive) Decrypts an archived attachment into `out`, checking it on the way.
    pub fn archive_open_attachment(
        &self,
        message: &ArchivedMessage,
        out: &mut impl std::io::Write,
    ) -> Result<(), EngineError> {
        self.require_archive()?;
        let attachment = archived_attachment(message)?;
        let path = self.archive_blob_path(&attachment.blob_id)?;
        if !path.exists() {
            return Err(EngineError::Invalid(format!(
                "attachment {} of message {} is not in the archive (yet)",
                attachment.name, message.id
            )));
        }
        open_archived_blob(&path, &attachment, out)
    }

    /// (archive) Every export, sample, hold and release, oldest first, with its time.
    pub fn archive_access_log(&self) -> Result<Vec<(i64, archive::AccessRecord)>, EngineError> {
        self.require_archive()?;
        archive::access_log(&self.db)
    }

    /// (archive) Puts `user` under legal hold, or releases them: held users' messages are
    /// kept past the retention period. Recorded in the access log. Returns whether
    /// anything changed.
    pub async fn archive_hold(
        &mut self,
        conn: &impl Link,
        user: &str,
        held: bool,
    ) -> Result<bool, EngineError> {
        self.require_archive()?;
        validate_handle(user)?;
        let changed = archive::set_hold(&self.db, user, held, now_ms())?;
        if changed {
            self.record_access(if held { "hold" } else { "release" }, user.to_string())?;
            self.archive_publish(conn).await?;
        }
        Ok(changed)
    }

    /// (archive) Users under legal hold, with when the hold began (ms since the epoch).
    pub fn archive_holds(&self) -> Result<Vec<(String, i64)>, EngineError> {
        self.require_archive()?;
        archive::holds(&self.db)
    }

    /// (archive) Clears messages the archive received more than `retain_secs` ago and,
    /// when the organisation's retention says groups' disappearing times apply to the
    /// archive too (`honour_disappearing`), those whose time has run out; never those of
    /// users under legal hold. Returns how many entries were cleared.
    pub fn archive_prune(
        &mut self,
        retain_secs: Option<u64>,
        honour_disappearing: bool,
    ) -> Result<usize, EngineError> {
        let device = self.require_archive()?;
        let signer = self.signer(&device)?;
        let now = now_ms();
        let cutoff = retain_secs.map(|r| now.saturating_sub((r as i64).saturating_mul(1000)));
        let tx = self
            .db
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let cleared = archive::prune(&tx, cutoff, honour_disappearing, now)?;
        archive::checkpoint(&tx, now, |p| {
            signer
                .sign(p)
                .map_err(|e| EngineError::Mls(format!("{e:?}")))
        })?;
        tx.commit()?;
        Ok(cleared)
    }
}
