//! The compliance archive's checkpoints, collected by admin devices and used to check an
//! exported chain.

use super::*;

impl Engine {
    /// On an admin device: keeps a copy of every checkpoint an archive published on the
    /// relay whose signature verifies with that archive's certificate. An archive that
    /// signs two different histories for one entry is reported.
    pub(crate) async fn collect_archive_checkpoints(
        &mut self,
        conn: &impl Link,
    ) -> Result<(), EngineError> {
        if Self::require_admin(&self.device()?).is_err() {
            return Ok(());
        }
        let since: i64 = self
            .db
            .query_row(
                "SELECT value FROM sync_state WHERE key = 'archive_checkpoints'",
                [],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0);
        let batch = ask!(conn, Request::ArchiveCheckpoints {
                since: since as u64,
            }, Response::ArchiveCheckpoints(batch) => batch);
        let pending: Vec<PublishedCheckpoint> = self
            .db
            .prepare(
                "SELECT device_id, entry_seq, hash, signed_at, signature FROM archive_checkpoints_pending",
            )?
            .query_map([], |r| {
                Ok(PublishedCheckpoint {
                    device_id: r.get(0)?,
                    entry_seq: r.get::<_, i64>(1)? as u64,
                    hash: r.get(2)?,
                    signed_at: r.get(3)?,
                    signature: r.get(4)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        if batch.is_empty() && pending.is_empty() {
            return Ok(());
        }
        let collected = batch.last().map_or(since as u64, |(position, _)| *position);
        // The newest first: made-up checkpoints set aside earlier cannot crowd them out.
        let candidates: Vec<PublishedCheckpoint> = batch
            .into_iter()
            .map(|(_, checkpoint)| checkpoint)
            .chain(pending)
            .collect();
        // Every archive certificate this device has verified, including those of archives
        // revoked since: their checkpoints stay evidence.
        self.certificates(conn).await?;
        let tx = self.db.transaction()?;
        tx.execute("DELETE FROM archive_checkpoints_pending", [])?;
        // A checkpoint that cannot be checked yet (its archive's certificate not seen)
        // waits here, up to a bound, so a relay cannot stall collection with made-up ones.
        let (mut waiting, mut dropped) = (0usize, 0usize);
        for checkpoint in candidates {
            let archive = crate::engine::known_certificate(&tx, &checkpoint.device_id)?
                .filter(|c| c.is_archive());
            let Some(archive) = archive else {
                if waiting < MAX_PENDING_CHECKPOINTS {
                    tx.execute(
                        "INSERT OR IGNORE INTO archive_checkpoints_pending (device_id, entry_seq, hash, signed_at, signature)
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                        params![
                            checkpoint.device_id,
                            checkpoint.entry_seq as i64,
                            checkpoint.hash,
                            checkpoint.signed_at,
                            checkpoint.signature
                        ],
                    )?;
                    waiting += 1;
                } else {
                    dropped += 1;
                }
                continue;
            };
            let payload = muster_proto::archive_checkpoint_payload(
                checkpoint.entry_seq as i64,
                &checkpoint.hash,
            );
            let signed = ring::signature::UnparsedPublicKey::new(
                &ring::signature::ED25519,
                &archive.body.device_key,
            )
            .verify(&payload, &checkpoint.signature);
            if signed.is_err() {
                self.activity.problems.push(format!(
                    "an archive checkpoint on the relay (entry {}) does not verify with the archive's key: ignored",
                    checkpoint.entry_seq
                ));
                continue;
            }
            let held: Option<Vec<u8>> = tx
                .query_row(
                    "SELECT hash FROM archive_checkpoints_seen WHERE device_id = ?1 AND entry_seq = ?2",
                    params![checkpoint.device_id, checkpoint.entry_seq as i64],
                    |r| r.get(0),
                )
                .optional()?;
            match held {
                Some(hash) if hash != checkpoint.hash => self.activity.problems.push(format!(
                    "the archive {} signed two different histories at entry {}",
                    archive.body.user, checkpoint.entry_seq
                )),
                Some(_) => {}
                None => {
                    tx.execute(
                        "INSERT INTO archive_checkpoints_seen (device_id, entry_seq, hash, signed_at, signature)
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                        params![
                            checkpoint.device_id,
                            checkpoint.entry_seq as i64,
                            checkpoint.hash,
                            checkpoint.signed_at,
                            checkpoint.signature
                        ],
                    )?;
                }
            }
        }
        if waiting > 0 {
            self.activity.problems.push(format!(
                "{waiting} archive checkpoint(s) on the relay come from devices whose archive certificate this device never saw: they are checked once it does"
            ));
        }
        if dropped > 0 {
            self.activity.problems.push(format!(
                "{dropped} more such archive checkpoint(s) were dropped: the relay may be flooding this device with made-up ones"
            ));
        }
        tx.execute(
            "INSERT INTO sync_state (key, value) VALUES ('archive_checkpoints', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [collected as i64],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// (admin) Checks a chain the archive host exported (`muster archive export-chain`)
    /// independently of that host: its links and hashes, its signatures with the key of
    /// the archive's certificate, the lawfulness of every cleared entry, and every
    /// checkpoint this admin device collected from the relay.
    pub async fn archive_check(
        &mut self,
        conn: &impl Link,
        chain: &crate::archive::ExportedChain,
    ) -> Result<crate::archive::VerifyReport, EngineError> {
        Self::require_admin(&self.device()?)?;
        self.collect_archive_checkpoints(conn).await?;
        let archive = self
            .known_certificate(&chain.device_id)?
            .filter(|c| c.is_archive())
            .ok_or_else(|| {
                EngineError::Invalid(format!(
                    "device {} is not an archive this device knows",
                    chain.device_id
                ))
            })?;
        let key = archive.body.device_key;
        let mut report = crate::archive::verify_chain(&chain.entries, &chain.checkpoints, &key);
        let mut stmt = self.db.prepare(
            "SELECT entry_seq, hash, signed_at, signature FROM archive_checkpoints_seen
             WHERE device_id = ?1 ORDER BY entry_seq",
        )?;
        let held = stmt
            .query_map([&chain.device_id], |r| {
                Ok(crate::archive::Checkpoint {
                    entry_seq: r.get(0)?,
                    hash: hex::encode(r.get::<_, Vec<u8>>(1)?),
                    signed_at: r.get(2)?,
                    signature: hex::encode(r.get::<_, Vec<u8>>(3)?),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        crate::archive::compare_published(&mut report, &chain.entries, &held, &key);
        Ok(report)
    }
}

/// How many archive checkpoints that cannot be checked yet an admin device keeps.
pub(super) const MAX_PENDING_CHECKPOINTS: usize = 10_000;
