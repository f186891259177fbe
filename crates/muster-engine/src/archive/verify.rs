//! Checkpoints and checks: signing the chain's head, exporting the chain, and verifying it
//! and every cleared entry against the published checkpoints.

use super::*;

/// Signs the newest entry, if no checkpoint covers it yet. `sign` signs with the archive
/// device's key.
pub(crate) fn checkpoint(
    db: &Connection,
    now_ms: i64,
    sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, EngineError>,
) -> Result<(), EngineError> {
    let last: Option<(i64, Vec<u8>)> = db
        .query_row(
            "SELECT seq, hash FROM archive_entries ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((seq, hash)) = last else {
        return Ok(());
    };
    let signed: bool = db.query_row(
        "SELECT EXISTS (SELECT 1 FROM archive_checkpoints WHERE entry_seq = ?1)",
        [seq],
        |r| r.get(0),
    )?;
    if signed {
        return Ok(());
    }
    let signature = sign(&checkpoint_payload(seq, &hash))?;
    db.execute(
        "INSERT INTO archive_checkpoints (entry_seq, hash, signed_at, signature) VALUES (?1, ?2, ?3, ?4)",
        params![seq, hash, now_ms, signature],
    )?;
    Ok(())
}

/// What `verify` found.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct VerifyReport {
    pub entries: u64,
    pub pruned: u64,
    /// Message entries sealed to legal officers, and those its host can read (kept
    /// before the organisation had officers, or while the archive did not know of them).
    #[serde(default)]
    pub sealed: u64,
    #[serde(default)]
    pub readable_by_host: u64,
    pub checkpoints: u64,
    /// Checkpoints published outside the archive host that were compared.
    pub published: u64,
    /// Every problem, naming the entry; empty when the archive is intact.
    pub problems: Vec<String>,
}

/// One entry of the chain as exported for an independent check: everything its hashes
/// cover, and the hashes.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct ChainEntry {
    pub seq: i64,
    pub recorded_at: i64,
    pub kind: String,
    /// The entry's JSON; `None` once retention cleared it.
    pub record: Option<String>,
    pub record_hash: String,
    /// The record's own hash, kept when it is cleared (absent in entries from before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_hash: Option<String>,
    pub prev_hash: String,
    pub hash: String,
}

/// The chain as `muster archive export-chain` writes it, for an admin's check.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct ExportedChain {
    /// The archive device whose key signed the checkpoints.
    pub device_id: String,
    pub entries: Vec<ChainEntry>,
    pub checkpoints: Vec<Checkpoint>,
}

/// A checkpoint: the archive device's signature over the hash of entry `entry_seq`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Checkpoint {
    pub entry_seq: i64,
    pub hash: String,
    pub signed_at: i64,
    pub signature: String,
}

/// The whole chain, oldest first, and every checkpoint, for `archive export-chain`.
pub(crate) fn chain(db: &Connection) -> Result<(Vec<ChainEntry>, Vec<Checkpoint>), EngineError> {
    let mut stmt = db.prepare(
        "SELECT seq, recorded_at, kind, record, record_hash, prev_hash, hash, content_hash FROM archive_entries ORDER BY seq",
    )?;
    let entries = stmt
        .query_map([], |r| {
            Ok(ChainEntry {
                seq: r.get(0)?,
                recorded_at: r.get(1)?,
                kind: r.get(2)?,
                record: r.get(3)?,
                record_hash: hex::encode(r.get::<_, Vec<u8>>(4)?),
                content_hash: r.get::<_, Option<Vec<u8>>>(7)?.map(hex::encode),
                prev_hash: hex::encode(r.get::<_, Vec<u8>>(5)?),
                hash: hex::encode(r.get::<_, Vec<u8>>(6)?),
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok((entries, checkpoints(db)?))
}

/// Every checkpoint the archive signed, oldest first.
pub(crate) fn checkpoints(db: &Connection) -> Result<Vec<Checkpoint>, EngineError> {
    let mut stmt = db.prepare(
        "SELECT entry_seq, hash, signed_at, signature FROM archive_checkpoints ORDER BY entry_seq",
    )?;
    let rows = stmt
        .query_map([], |r| {
            Ok(Checkpoint {
                entry_seq: r.get(0)?,
                hash: hex::encode(r.get::<_, Vec<u8>>(1)?),
                signed_at: r.get(2)?,
                signature: hex::encode(r.get::<_, Vec<u8>>(3)?),
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Checkpoints not yet published outside the archive host.
pub(crate) fn unpublished(db: &Connection) -> Result<Vec<Checkpoint>, EngineError> {
    Ok(checkpoints(db)?
        .into_iter()
        .filter(|c| {
            !db.query_row(
                "SELECT EXISTS (SELECT 1 FROM archive_published WHERE entry_seq = ?1)",
                [c.entry_seq],
                |r| r.get::<_, bool>(0),
            )
            .unwrap_or(false)
        })
        .collect())
}

pub(crate) fn mark_published(db: &Connection, entry_seq: i64) -> Result<(), EngineError> {
    db.execute(
        "INSERT OR IGNORE INTO archive_published (entry_seq) VALUES (?1)",
        [entry_seq],
    )?;
    Ok(())
}

/// Checks the whole chain and every checkpoint signature against `public_key` (the archive
/// device's Ed25519 key), and that every cleared entry was eligible to be cleared.
#[cfg(test)]
pub(crate) fn verify(db: &Connection, public_key: &[u8]) -> Result<VerifyReport, EngineError> {
    let (entries, checkpoints) = chain(db)?;
    Ok(verify_chain(&entries, &checkpoints, public_key))
}

pub(super) fn unhex(text: &str) -> Vec<u8> {
    hex::decode(text).unwrap_or_default()
}

/// Checks a chain (from this archive's database or an exported copy): links, hashes,
/// signed checkpoints, and that each cleared entry was cleared by a recorded prune that
/// was allowed to clear it (past retention or, where honoured, its disappearing time, and
/// its author not under legal hold then).
pub fn verify_chain(
    entries: &[ChainEntry],
    checkpoints: &[Checkpoint],
    public_key: &[u8],
) -> VerifyReport {
    let mut report = VerifyReport {
        entries: 0,
        pruned: 0,
        sealed: 0,
        readable_by_host: 0,
        checkpoints: 0,
        published: 0,
        problems: Vec::new(),
    };
    let mut expected_prev = GENESIS.to_vec();
    let mut expected_seq = 1i64;
    let mut hashes = std::collections::HashMap::new();
    let mut held: std::collections::BTreeSet<String> = Default::default();
    // Entries cleared by a prune: who the prune said wrote them, why, and who was held.
    let mut cleared_by: std::collections::HashMap<i64, (Cleared, PruneRecord, bool)> =
        Default::default();
    let mut recorded: std::collections::HashMap<i64, i64> = Default::default();
    // Entries may lack a content hash only before the entry that recorded the upgrade
    // (a chain without one was written with content hashes from the start).
    let hashed_from = entries
        .iter()
        .find(|e| e.kind == FORMAT_KIND)
        .map_or(i64::MIN, |e| e.seq);
    for entry in entries {
        let (seq, rh, prev, hash) = (
            entry.seq,
            unhex(&entry.record_hash),
            unhex(&entry.prev_hash),
            unhex(&entry.hash),
        );
        report.entries += 1;
        if seq != expected_seq {
            report.problems.push(format!(
                "entry {expected_seq}: missing (the next entry present is {seq})"
            ));
        }
        if prev != expected_prev {
            report.problems.push(format!(
                "entry {seq}: does not follow the entry before it (removed, reordered or altered)"
            ));
        }
        let content = entry.content_hash.as_deref().map(unhex);
        match &content {
            Some(content) if record_hash(&entry.kind, entry.recorded_at, content) != rh => {
                report
                    .problems
                    .push(format!("entry {seq}: its kind or time was altered"));
            }
            Some(_) => {}
            None if seq >= hashed_from => report.problems.push(format!(
                "entry {seq}: has no content hash, which every entry of this chain from entry {} on has (altered)",
                hashed_from.max(1)
            )),
            None => {}
        }
        match &entry.record {
            Some(record) => {
                let altered = match &content {
                    Some(content) => content_hash(record) != *content,
                    None => legacy_record_hash(&entry.kind, entry.recorded_at, record) != rh,
                };
                if altered {
                    report
                        .problems
                        .push(format!("entry {seq}: content was altered"));
                }
                if entry.kind == "message" {
                    if crate::legal::SealedRecord::parse(record).is_some() {
                        report.sealed += 1;
                    } else {
                        report.readable_by_host += 1;
                    }
                }
                match entry.kind.as_str() {
                    "access" => {
                        if let Ok(access) = serde_json::from_str::<AccessRecord>(record) {
                            match access.action.as_str() {
                                "hold" => {
                                    held.insert(access.what);
                                }
                                "release" => {
                                    held.remove(&access.what);
                                }
                                _ => {}
                            }
                        }
                    }
                    "prune" => {
                        if let Ok(prune) = serde_json::from_str::<PruneRecord>(record) {
                            for c in &prune.cleared {
                                let was_held = c.user.as_ref().is_some_and(|u| held.contains(u));
                                cleared_by.insert(c.seq, (c.clone(), prune.clone(), was_held));
                            }
                        }
                    }
                    _ => {}
                }
            }
            None => report.pruned += 1,
        }
        if chain_hash(&prev, seq, &rh) != hash {
            report
                .problems
                .push(format!("entry {seq}: its hash does not match its content"));
        }
        recorded.insert(seq, entry.recorded_at);
        hashes.insert(seq, hash.clone());
        expected_prev = hash;
        expected_seq = seq + 1;
    }
    for entry in entries.iter().filter(|e| e.record.is_none()) {
        let seq = entry.seq;
        if entry.kind != "message" {
            report.problems.push(format!(
                "entry {seq}: a {} record was cleared; only messages ever are",
                entry.kind
            ));
            continue;
        }
        let Some((cleared, prune, was_held)) = cleared_by.get(&seq) else {
            report.problems.push(format!(
                "entry {seq}: its content was removed, but no recorded prune cleared it"
            ));
            continue;
        };
        let eligible = match cleared.reason.as_str() {
            "retention" => prune
                .cutoff_ms
                .is_some_and(|cutoff| entry.recorded_at < cutoff),
            "disappearing" => {
                prune.honour_disappearing && cleared.expires_at.is_some_and(|t| t <= prune.at)
            }
            _ => false,
        };
        if !eligible {
            report.problems.push(format!(
                "entry {seq}: cleared at {} although neither retention nor a disappearing time allowed it",
                crate::engine::rfc3339_ms(prune.at)
            ));
        }
        if *was_held {
            report.problems.push(format!(
                "entry {seq}: cleared at {} although its author was under legal hold",
                crate::engine::rfc3339_ms(prune.at)
            ));
        }
    }
    let key = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public_key);
    let mut last_checkpoint = 0i64;
    for checkpoint in checkpoints {
        let (seq, hash) = (checkpoint.entry_seq, unhex(&checkpoint.hash));
        report.checkpoints += 1;
        last_checkpoint = last_checkpoint.max(seq);
        if key
            .verify(
                &checkpoint_payload(seq, &hash),
                &unhex(&checkpoint.signature),
            )
            .is_err()
        {
            report.problems.push(format!(
                "checkpoint at entry {seq}: signature does not verify"
            ));
        }
        match hashes.get(&seq) {
            Some(h) if *h == hash => {}
            Some(_) => report.problems.push(format!(
                "entry {seq}: differs from what checkpoint {seq} signed"
            )),
            None => report.problems.push(format!(
                "entry {seq}: signed by a checkpoint but missing from the archive"
            )),
        }
    }
    if expected_seq - 1 > last_checkpoint && report.entries > 0 {
        report.problems.push(format!(
            "entries {}..{}: not covered by any signed checkpoint",
            last_checkpoint + 1,
            expected_seq - 1
        ));
    }
    report
}

/// Compares a chain with checkpoints published outside the archive host (on the relay,
/// and kept by admin devices): each must match the chain's entry, and the chain must
/// reach the newest. Only checkpoints whose signature verifies with `public_key` count.
pub fn compare_published(
    report: &mut VerifyReport,
    entries: &[ChainEntry],
    published: &[Checkpoint],
    public_key: &[u8],
) {
    let key = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public_key);
    let hashes: std::collections::HashMap<i64, &str> =
        entries.iter().map(|e| (e.seq, e.hash.as_str())).collect();
    let last = entries.last().map_or(0, |e| e.seq);
    for checkpoint in published {
        let seq = checkpoint.entry_seq;
        let signed = key.verify(
            &checkpoint_payload(seq, &unhex(&checkpoint.hash)),
            &unhex(&checkpoint.signature),
        );
        if signed.is_err() {
            continue;
        }
        report.published += 1;
        let when = crate::engine::rfc3339_ms(checkpoint.signed_at);
        match hashes.get(&seq) {
            Some(hash) if *hash == checkpoint.hash => {}
            Some(_) => report.problems.push(format!(
                "entry {seq}: differs from the checkpoint the archive published at {when}: its history was rewritten"
            )),
            None if seq > last => report.problems.push(format!(
                "entry {seq}: signed in a checkpoint published at {when}, but the archive ends at entry {last}: entries were removed from its end"
            )),
            None => report.problems.push(format!(
                "entry {seq}: signed in a checkpoint published at {when}, but missing from the archive"
            )),
        }
    }
}
