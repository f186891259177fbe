//! The compliance archive's store: an append-only log in the archive device's database.
//!
//! Every entry is hash-chained to the one before: `hash = SHA-256(prev_hash ‖ seq ‖
//! record_hash)`, where `record_hash = SHA-256(kind ‖ recorded_at ‖ content_hash)` and
//! `content_hash` covers the entry's record. After each batch the archive signs a
//! checkpoint (its device key over the latest entry's hash), so an edit, a removal or a
//! reordering anywhere breaks the chain or a signature. Retention clears an entry's
//! record but keeps its `content_hash`, so a cleared entry's kind and time stay bound to
//! the chain. (Entries written before content hashes existed hash the record directly;
//! once cleared, only their place in the chain can be checked.)

use crate::error::EngineError;
use ring::digest::{digest, SHA256};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

pub(crate) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS archive_entries (
    seq INTEGER PRIMARY KEY,
    recorded_at INTEGER NOT NULL,
    -- 'message' for what members said, 'access' for exports, samples, holds and releases
    kind TEXT NOT NULL,
    -- NULL once retention removed the entry's content; record_hash still covers it
    record TEXT,
    user TEXT,
    group_id BLOB,
    sent_at INTEGER,
    -- when the group's disappearing-message time runs out for this entry
    expires_at INTEGER,
    record_hash BLOB NOT NULL,
    -- SHA-256 of the record, kept when retention clears it (NULL in entries from before)
    content_hash BLOB,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL,
    pruned_at INTEGER);
DROP INDEX IF EXISTS archive_entries_user;
CREATE INDEX IF NOT EXISTS archive_entries_user_received ON archive_entries(user, recorded_at);
CREATE INDEX IF NOT EXISTS archive_entries_expiry ON archive_entries(expires_at)
    WHERE expires_at IS NOT NULL AND record IS NOT NULL;
CREATE TABLE IF NOT EXISTS archive_checkpoints (
    entry_seq INTEGER PRIMARY KEY,
    hash BLOB NOT NULL,
    signed_at INTEGER NOT NULL,
    signature BLOB NOT NULL);
-- attachments of archived messages: the relay's encrypted blob, kept under archive-blobs/
CREATE TABLE IF NOT EXISTS archive_blobs (
    blob_id TEXT PRIMARY KEY,
    entry_seq INTEGER NOT NULL,
    stored_at INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0);
-- checkpoints published outside the archive host (to the relay, where admins fetch them)
CREATE TABLE IF NOT EXISTS archive_published (entry_seq INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS archive_holds (
    user TEXT PRIMARY KEY,
    since INTEGER NOT NULL);
"#;

/// Creates the archive's tables, and adds what later versions need to older ones.
pub(crate) fn migrate(db: &Connection) -> Result<(), EngineError> {
    db.execute_batch(SCHEMA)?;
    let has_content_hash = db
        .prepare("SELECT 1 FROM pragma_table_info('archive_entries') WHERE name = 'content_hash'")?
        .exists([])?;
    if !has_content_hash {
        db.execute_batch("ALTER TABLE archive_entries ADD COLUMN content_hash BLOB")?;
        // The chain itself says from where on every entry has a content hash, so that
        // stripping one cannot pass a newer entry off as an older one.
        let entries: i64 =
            db.query_row("SELECT COUNT(*) FROM archive_entries", [], |r| r.get(0))?;
        if entries > 0 {
            let record = serde_json::json!({ "content_hashes_from": entries + 1 }).to_string();
            append(
                db,
                NewEntry {
                    kind: FORMAT_KIND,
                    record: &record,
                    user: None,
                    group_id: None,
                    sent_at: None,
                    expires_at: None,
                },
                crate::engine::now_ms(),
            )?;
        }
    }
    Ok(())
}

/// The kind of the entry an archive from before content hashes gets when it upgrades.
const FORMAT_KIND: &str = "format";

const GENESIS: [u8; 32] = [0; 32];

/// One archived message, as its group's members received it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct ArchivedMessage {
    /// The group's id (hex) and name when it was recorded.
    pub group_id: String,
    pub group: String,
    /// The relay's sequence number in the group.
    pub relay_seq: u64,
    pub sender: String,
    pub sender_device: String,
    /// The sender's clock, milliseconds since the Unix epoch.
    pub sent_at: i64,
    /// When the archive received it, milliseconds since the Unix epoch.
    pub received_at: i64,
    /// The message id and its typed content (`text`, `edit`, `delete`, `alert`, `ack`,
    /// `attachment`, ...), exactly as sent.
    pub id: String,
    pub body: serde_json::Value,
}

/// A read of the archive, recorded in the archive itself.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct AccessRecord {
    /// Who ran it: the operating-system account on the archive host.
    pub who: String,
    /// `export`, `sample`, `hold` or `release`.
    pub action: String,
    /// What was asked for, e.g. the user, group and time range of an export.
    pub what: String,
}

/// An entry as stored, for `verify`, exports and the access log.
#[derive(Debug, Clone, Serialize)]
pub struct ArchiveEntry {
    pub seq: i64,
    pub recorded_at: i64,
    pub kind: String,
    /// The entry's JSON; `None` once retention removed it.
    pub record: Option<String>,
}

fn sha256(parts: &[&[u8]]) -> Vec<u8> {
    let mut all = Vec::new();
    for p in parts {
        all.extend_from_slice(&(p.len() as u64).to_be_bytes());
        all.extend_from_slice(p);
    }
    digest(&SHA256, &all).as_ref().to_vec()
}

/// How entries written before content hashes existed are hashed.
fn legacy_record_hash(kind: &str, recorded_at: i64, record: &str) -> Vec<u8> {
    sha256(&[
        kind.as_bytes(),
        &recorded_at.to_be_bytes(),
        record.as_bytes(),
    ])
}

fn content_hash(record: &str) -> Vec<u8> {
    sha256(&[b"muster archive record", record.as_bytes()])
}

fn record_hash(kind: &str, recorded_at: i64, content_hash: &[u8]) -> Vec<u8> {
    sha256(&[
        b"muster archive entry v2",
        kind.as_bytes(),
        &recorded_at.to_be_bytes(),
        content_hash,
    ])
}

fn chain_hash(prev: &[u8], seq: i64, record_hash: &[u8]) -> Vec<u8> {
    sha256(&[prev, &seq.to_be_bytes(), record_hash])
}

fn checkpoint_payload(seq: i64, hash: &[u8]) -> Vec<u8> {
    muster_proto::archive_checkpoint_payload(seq, hash)
}

/// An entry about to be appended; the columns besides `record` serve lookups.
struct NewEntry<'a> {
    kind: &'a str,
    record: &'a str,
    user: Option<&'a str>,
    group_id: Option<&'a [u8]>,
    sent_at: Option<i64>,
    expires_at: Option<i64>,
}

/// Appends one entry to the chain, inside the caller's transaction.
fn append(db: &Connection, entry: NewEntry<'_>, now_ms: i64) -> Result<i64, EngineError> {
    let NewEntry {
        kind,
        record,
        user,
        group_id,
        sent_at,
        expires_at,
    } = entry;
    let last: Option<(i64, Vec<u8>)> = db
        .prepare_cached("SELECT seq, hash FROM archive_entries ORDER BY seq DESC LIMIT 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let (seq, prev) = match last {
        Some((seq, hash)) => (seq + 1, hash),
        None => (1, GENESIS.to_vec()),
    };
    let ch = content_hash(record);
    let rh = record_hash(kind, now_ms, &ch);
    let hash = chain_hash(&prev, seq, &rh);
    db.prepare_cached(
        "INSERT INTO archive_entries (seq, recorded_at, kind, record, user, group_id, sent_at, expires_at, record_hash, content_hash, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute(params![seq, now_ms, kind, record, user, group_id, sent_at, expires_at, rh, ch, prev, hash])?;
    Ok(seq)
}

/// Records a message an archived group's member sent. `expires_at` is when the group's
/// disappearing-message time runs out for it, if the group has one.
pub(crate) fn record_message(
    db: &Connection,
    group_id: &[u8],
    message: &ArchivedMessage,
    expires_at: Option<i64>,
    now_ms: i64,
) -> Result<(), EngineError> {
    let record = serde_json::to_string(message).expect("archive record serialises");
    let seq = append(
        db,
        NewEntry {
            kind: "message",
            record: &record,
            user: Some(&message.sender),
            group_id: Some(group_id),
            sent_at: Some(message.sent_at),
            expires_at,
        },
        now_ms,
    )?;
    if let Some(blob_id) = message.body["attachment"]["blob_id"].as_str() {
        db.prepare_cached(
            "INSERT OR IGNORE INTO archive_blobs (blob_id, entry_seq) VALUES (?1, ?2)",
        )?
        .execute(params![blob_id, seq])?;
    }
    Ok(())
}

/// Records that messages of an archived group were withheld or reordered on their way
/// to the archive, so the gap itself is part of the signed record.
pub(crate) fn record_gap(
    db: &Connection,
    group_id: &[u8],
    what: &str,
    now_ms: i64,
) -> Result<(), EngineError> {
    let record = serde_json::json!({"group_id": hex::encode(group_id), "gap": what}).to_string();
    append(
        db,
        NewEntry {
            kind: "gap",
            record: &record,
            user: None,
            group_id: Some(group_id),
            sent_at: None,
            expires_at: None,
        },
        now_ms,
    )?;
    Ok(())
}

/// Attachments whose blob the archive has yet to download: blob id and entry.
pub(crate) fn wanted_blobs(db: &Connection) -> Result<Vec<(String, i64)>, EngineError> {
    let mut stmt = db.prepare(
        "SELECT b.blob_id, b.entry_seq FROM archive_blobs b JOIN archive_entries e ON e.seq = b.entry_seq
         WHERE b.stored_at IS NULL AND e.record IS NOT NULL AND b.attempts < 20 ORDER BY b.entry_seq",
    )?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Notes a blob as stored (or one more failed attempt).
pub(crate) fn blob_done(
    db: &Connection,
    blob_id: &str,
    stored: bool,
    now_ms: i64,
) -> Result<(), EngineError> {
    if stored {
        db.execute(
            "UPDATE archive_blobs SET stored_at = ?2 WHERE blob_id = ?1",
            params![blob_id, now_ms],
        )?;
    } else {
        db.execute(
            "UPDATE archive_blobs SET attempts = attempts + 1 WHERE blob_id = ?1",
            [blob_id],
        )?;
    }
    Ok(())
}

/// Blobs whose entries retention cleared: their files are deleted too.
pub(crate) fn orphaned_blobs(db: &Connection) -> Result<Vec<String>, EngineError> {
    let mut stmt = db.prepare(
        "SELECT b.blob_id FROM archive_blobs b JOIN archive_entries e ON e.seq = b.entry_seq
         WHERE e.record IS NULL",
    )?;
    let rows = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<Vec<String>, _>>()?;
    Ok(rows)
}

pub(crate) fn forget_blob(db: &Connection, blob_id: &str) -> Result<(), EngineError> {
    db.execute("DELETE FROM archive_blobs WHERE blob_id = ?1", [blob_id])?;
    Ok(())
}

/// Records a read of the archive (or a hold), inside the caller's transaction.
pub(crate) fn record_access(
    db: &Connection,
    access: &AccessRecord,
    now_ms: i64,
) -> Result<(), EngineError> {
    let record = serde_json::to_string(access).expect("access record serialises");
    let entry = NewEntry {
        kind: "access",
        record: &record,
        user: None,
        group_id: None,
        sent_at: None,
        expires_at: None,
    };
    append(db, entry, now_ms)?;
    Ok(())
}

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

fn unhex(text: &str) -> Vec<u8> {
    hex::decode(text).unwrap_or_default()
}

/// What a prune entry cleared, and why.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
struct Cleared {
    seq: i64,
    user: Option<String>,
    /// `retention` or `disappearing`.
    reason: String,
    expires_at: Option<i64>,
}

/// The record of one prune, chained like every entry.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
struct PruneRecord {
    /// Entries received before this time (ms) were past retention; `None`: no retention.
    cutoff_ms: Option<i64>,
    honour_disappearing: bool,
    at: i64,
    cleared: Vec<Cleared>,
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

/// Which entries an export asks for.
#[derive(Debug, Clone, Default)]
pub struct ExportFilter {
    pub user: String,
    /// Group id (hex) or name.
    pub group: Option<String>,
    /// Received by the archive at or after / before, milliseconds since the Unix epoch.
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
}

/// The archived messages `filter` selects, oldest first.
pub(crate) fn messages(
    db: &Connection,
    filter: &ExportFilter,
) -> Result<Vec<ArchivedMessage>, EngineError> {
    let mut stmt = db.prepare(
        "SELECT record FROM archive_entries
         WHERE kind = 'message' AND record IS NOT NULL AND user = ?1
           AND recorded_at >= ?2 AND recorded_at < ?3
         ORDER BY seq",
    )?;
    let rows = stmt.query_map(
        params![
            filter.user,
            filter.from_ms.unwrap_or(i64::MIN),
            filter.to_ms.unwrap_or(i64::MAX)
        ],
        |r| r.get::<_, String>(0),
    )?;
    let mut out = Vec::new();
    for row in rows {
        let message: ArchivedMessage = serde_json::from_str(&row?)
            .map_err(|e| EngineError::Invalid(format!("archive entry does not decode: {e}")))?;
        if filter
            .group
            .as_deref()
            .is_none_or(|g| g == message.group || g == message.group_id)
        {
            out.push(message);
        }
    }
    Ok(out)
}

/// Every live message entry, for sampling.
pub(crate) fn message_seqs(db: &Connection) -> Result<Vec<i64>, EngineError> {
    let mut stmt = db.prepare(
        "SELECT seq FROM archive_entries WHERE kind = 'message' AND record IS NOT NULL ORDER BY seq",
    )?;
    let seqs = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<Vec<i64>, _>>()?;
    Ok(seqs)
}

/// The archived message at `seq`.
pub(crate) fn message_at(db: &Connection, seq: i64) -> Result<ArchivedMessage, EngineError> {
    let record: String = db.query_row(
        "SELECT record FROM archive_entries WHERE seq = ?1 AND kind = 'message' AND record IS NOT NULL",
        [seq],
        |r| r.get(0),
    )?;
    serde_json::from_str(&record)
        .map_err(|e| EngineError::Invalid(format!("archive entry {seq} does not decode: {e}")))
}

/// The access log, oldest first.
pub(crate) fn access_log(db: &Connection) -> Result<Vec<(i64, AccessRecord)>, EngineError> {
    let mut stmt = db.prepare(
        "SELECT recorded_at, record FROM archive_entries WHERE kind = 'access' AND record IS NOT NULL ORDER BY seq",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
    let mut out = Vec::new();
    for row in rows {
        let (at, record) = row?;
        let access: AccessRecord = serde_json::from_str(&record)
            .map_err(|e| EngineError::Invalid(format!("access log entry does not decode: {e}")))?;
        out.push((at, access));
    }
    Ok(out)
}

/// Puts `user` under legal hold (or releases them).
pub(crate) fn set_hold(
    db: &Connection,
    user: &str,
    held: bool,
    now_ms: i64,
) -> Result<bool, EngineError> {
    let changed = if held {
        db.execute(
            "INSERT OR IGNORE INTO archive_holds (user, since) VALUES (?1, ?2)",
            params![user, now_ms],
        )?
    } else {
        db.execute("DELETE FROM archive_holds WHERE user = ?1", [user])?
    };
    Ok(changed > 0)
}

/// Users under legal hold, with the time the hold began.
pub(crate) fn holds(db: &Connection) -> Result<Vec<(String, i64)>, EngineError> {
    let mut stmt = db.prepare("SELECT user, since FROM archive_holds ORDER BY user")?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Clears the content of message entries the archive received before `cutoff_ms` (its
/// retention) or, with `honour_disappearing`, whose group's disappearing time has run
/// out, except those of users under legal hold. Only the archive's own receive time
/// counts, never the sender's clock. A prune entry, chained like every other, records
/// what was cleared and why, so `verify` can tell a lawful prune from a deletion; the
/// chain keeps each cleared entry's hashes. Returns how many were cleared.
pub(crate) fn prune(
    db: &Connection,
    cutoff_ms: Option<i64>,
    honour_disappearing: bool,
    now_ms: i64,
) -> Result<usize, EngineError> {
    let mut stmt = db.prepare(
        "SELECT seq, user, expires_at, recorded_at < ?1 FROM archive_entries
         WHERE kind = 'message' AND record IS NOT NULL
           AND (recorded_at < ?1 OR (?3 AND expires_at < ?2))
           AND (user IS NULL OR user NOT IN (SELECT user FROM archive_holds))
         ORDER BY seq",
    )?;
    let cleared = stmt
        .query_map(
            params![cutoff_ms.unwrap_or(i64::MIN), now_ms, honour_disappearing],
            |r| {
                Ok(Cleared {
                    seq: r.get(0)?,
                    user: r.get(1)?,
                    expires_at: r.get(2)?,
                    reason: if r.get::<_, bool>(3)? {
                        "retention".into()
                    } else {
                        "disappearing".into()
                    },
                })
            },
        )?
        .collect::<Result<Vec<_>, _>>()?;
    if cleared.is_empty() {
        return Ok(0);
    }
    for c in &cleared {
        db.execute(
            "UPDATE archive_entries SET record = NULL, user = NULL, group_id = NULL, pruned_at = ?2
             WHERE seq = ?1",
            params![c.seq, now_ms],
        )?;
    }
    let count = cleared.len();
    let record = serde_json::to_string(&PruneRecord {
        cutoff_ms,
        honour_disappearing,
        at: now_ms,
        cleared,
    })
    .expect("prune record serialises");
    append(
        db,
        NewEntry {
            kind: "prune",
            record: &record,
            user: None,
            group_id: None,
            sent_at: None,
            expires_at: None,
        },
        now_ms,
    )?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    fn store() -> Connection {
        let db = Connection::open_in_memory().unwrap();
        migrate(&db).unwrap();
        db
    }

    fn message(sender: &str, text: &str, sent_at: i64) -> ArchivedMessage {
        ArchivedMessage {
            group_id: "00aa".into(),
            group: "ops".into(),
            relay_seq: 1,
            sender: sender.into(),
            sender_device: "d1".into(),
            sent_at,
            received_at: sent_at + 5,
            id: format!("{sender}-{sent_at}"),
            body: serde_json::json!({"type": "text", "text": text}),
        }
    }

    fn key() -> Ed25519KeyPair {
        let rng = ring::rand::SystemRandom::new();
        Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&rng).unwrap().as_ref()).unwrap()
    }

    fn filled(key: &Ed25519KeyPair) -> Connection {
        let db = store();
        for (i, who) in ["alice", "bob", "alice", "carol"].iter().enumerate() {
            let expires = (*who == "carol").then_some(2500);
            // Each claims to be sent long ago; the archive received them at 1000 + i.
            record_message(
                &db,
                &[0, 0xaa],
                &message(who, "hello", i as i64),
                expires,
                1000 + i as i64,
            )
            .unwrap();
            checkpoint(&db, 2000, |p| Ok(key.sign(p).as_ref().to_vec())).unwrap();
        }
        db
    }

    #[test]
    fn an_untouched_archive_verifies() {
        let key = key();
        let db = filled(&key);
        let report = verify(&db, key.public_key().as_ref()).unwrap();
        assert_eq!(report.entries, 4);
        assert_eq!(report.checkpoints, 4);
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    }

    #[test]
    fn one_changed_byte_names_the_entry() {
        let key = key();
        let db = filled(&key);
        db.execute(
            "UPDATE archive_entries SET record = replace(record, 'hello', 'hellO') WHERE seq = 3",
            [],
        )
        .unwrap();
        let report = verify(&db, key.public_key().as_ref()).unwrap();
        assert!(
            report.problems.iter().any(|p| p.starts_with("entry 3:")),
            "{:?}",
            report.problems
        );
    }

    #[test]
    fn removed_and_reordered_entries_are_found() {
        let key = key();
        let db = filled(&key);
        db.execute("DELETE FROM archive_entries WHERE seq = 2", [])
            .unwrap();
        let report = verify(&db, key.public_key().as_ref()).unwrap();
        assert!(report.problems.iter().any(|p| p.contains("entry 2")));

        let db = filled(&key);
        db.execute_batch(
            "UPDATE archive_entries SET seq = 100 WHERE seq = 2;
             UPDATE archive_entries SET seq = 2 WHERE seq = 3;
             UPDATE archive_entries SET seq = 3 WHERE seq = 100;",
        )
        .unwrap();
        let report = verify(&db, key.public_key().as_ref()).unwrap();
        assert!(!report.problems.is_empty());
    }

    #[test]
    fn a_rewritten_chain_fails_the_signature() {
        let key = key();
        let db = filled(&key);
        rewrite_last_entry(&db);
        let report = verify(&db, key.public_key().as_ref()).unwrap();
        assert_eq!(
            report.problems,
            ["checkpoint at entry 4: signature does not verify"]
        );
    }

    /// Rewrites entry 4 and recomputes its hashes and checkpoint hash, as someone
    /// without the archive's key would.
    fn rewrite_last_entry(db: &Connection) {
        let (recorded_at, prev): (i64, Vec<u8>) = db
            .query_row(
                "SELECT recorded_at, prev_hash FROM archive_entries WHERE seq = 4",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        let record = serde_json::to_string(&message("carol", "forged", 1003)).unwrap();
        let ch = content_hash(&record);
        let rh = record_hash("message", recorded_at, &ch);
        let hash = chain_hash(&prev, 4, &rh);
        db.execute(
            "UPDATE archive_entries SET record = ?1, record_hash = ?2, content_hash = ?3, hash = ?4 WHERE seq = 4",
            params![record, rh, ch, hash],
        )
        .unwrap();
        db.execute(
            "UPDATE archive_checkpoints SET hash = ?1 WHERE entry_seq = 4",
            params![hash],
        )
        .unwrap();
    }

    #[test]
    fn an_archive_from_before_content_hashes_upgrades_and_cannot_be_downgraded() {
        let key = key();
        let db = store();
        db.execute_batch("ALTER TABLE archive_entries DROP COLUMN content_hash")
            .unwrap();
        let mut prev = GENESIS.to_vec();
        for seq in 1..=2i64 {
            let record = serde_json::to_string(&message("alice", "old", seq)).unwrap();
            let rh = legacy_record_hash("message", 1000 + seq, &record);
            let hash = chain_hash(&prev, seq, &rh);
            db.execute(
                "INSERT INTO archive_entries (seq, recorded_at, kind, record, record_hash, prev_hash, hash)
                 VALUES (?1, ?2, 'message', ?3, ?4, ?5, ?6)",
                params![seq, 1000 + seq, record, rh, prev, hash],
            )
            .unwrap();
            prev = hash;
        }
        migrate(&db).unwrap();
        record_message(&db, &[0, 0xaa], &message("bob", "new", 3), None, 1100).unwrap();
        checkpoint(&db, 2000, |p| Ok(key.sign(p).as_ref().to_vec())).unwrap();
        let report = verify(&db, key.public_key().as_ref()).unwrap();
        assert_eq!(report.entries, 4, "two old entries, the upgrade, one new");
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        // Stripping the new entry's content hash does not pass it off as an old one.
        db.execute(
            "UPDATE archive_entries SET content_hash = NULL WHERE seq = 4",
            [],
        )
        .unwrap();
        let report = verify(&db, key.public_key().as_ref()).unwrap();
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.contains("entry 4: has no content hash")),
            "{:?}",
            report.problems
        );
    }

    #[test]
    fn a_cleared_entrys_kind_and_time_stay_bound_to_the_chain() {
        let key = key();
        let db = filled(&key);
        prune(&db, Some(1003), false, 2400).unwrap();
        checkpoint(&db, 2600, |p| Ok(key.sign(p).as_ref().to_vec())).unwrap();
        let report = verify(&db, key.public_key().as_ref()).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        let cleared: i64 = db
            .query_row(
                "SELECT MIN(seq) FROM archive_entries WHERE record IS NULL",
                [],
                |r| r.get(0),
            )
            .unwrap();
        // The host backdates a cleared entry, or relabels it, hoping to pass it off.
        for tamper in [
            "UPDATE archive_entries SET recorded_at = recorded_at - 1 WHERE seq = ?1",
            "UPDATE archive_entries SET kind = 'access' WHERE seq = ?1",
        ] {
            let db = filled(&key);
            prune(&db, Some(1003), false, 2400).unwrap();
            checkpoint(&db, 2600, |p| Ok(key.sign(p).as_ref().to_vec())).unwrap();
            db.execute(tamper, [cleared]).unwrap();
            let report = verify(&db, key.public_key().as_ref()).unwrap();
            assert!(
                report
                    .problems
                    .iter()
                    .any(|p| p.contains(&format!("entry {cleared}: its kind or time was altered"))),
                "{tamper}: {:?}",
                report.problems
            );
        }
        // Stripping the content hash to pass the oldest (cleared) entries off as entries
        // from before content hashes is seen too.
        let db = filled(&key);
        db.execute(
            "UPDATE archive_entries SET content_hash = NULL WHERE seq IN (1, 2)",
            [],
        )
        .unwrap();
        let report = verify(&db, key.public_key().as_ref()).unwrap();
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.contains("entry 1: has no content hash")),
            "{:?}",
            report.problems
        );
    }

    #[test]
    fn retention_clears_old_entries_except_held_users_and_the_chain_still_verifies() {
        let key = key();
        let db = filled(&key);
        set_hold(&db, "bob", true, 2000).unwrap();
        let cleared = prune(&db, Some(1003), false, 2400).unwrap();
        assert_eq!(
            cleared, 2,
            "alice's two old entries; bob is held, carol is recent"
        );
        let filter = |user: &str| ExportFilter {
            user: user.into(),
            ..ExportFilter::default()
        };
        assert!(messages(&db, &filter("alice")).unwrap().is_empty());
        assert_eq!(messages(&db, &filter("bob")).unwrap().len(), 1);
        assert_eq!(messages(&db, &filter("carol")).unwrap().len(), 1);
        // Carol's group makes messages disappear at 2500: that erases her entry only
        // where the organisation's retention says disappearing times apply.
        assert_eq!(prune(&db, None, false, 2600).unwrap(), 0);
        assert_eq!(prune(&db, None, true, 2600).unwrap(), 1);
        assert!(messages(&db, &filter("carol")).unwrap().is_empty());
        checkpoint(&db, 2600, |p| Ok(key.sign(p).as_ref().to_vec())).unwrap();
        let report = verify(&db, key.public_key().as_ref()).unwrap();
        assert_eq!(report.pruned, 3);
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    }

    #[test]
    fn an_entry_cleared_without_a_lawful_prune_is_named() {
        let key = key();
        let db = filled(&key);
        // Someone with the database clears bob's entry by hand, and even signs anew.
        db.execute("UPDATE archive_entries SET record = NULL WHERE seq = 2", [])
            .unwrap();
        let report = verify(&db, key.public_key().as_ref()).unwrap();
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.starts_with("entry 2:") && p.contains("no recorded prune")),
            "{:?}",
            report.problems
        );
        // A prune during a legal hold is named too.
        let db = filled(&key);
        record_access(
            &db,
            &AccessRecord {
                who: "ops".into(),
                action: "hold".into(),
                what: "carol".into(),
            },
            2100,
        )
        .unwrap();
        // The hold table was emptied behind the archive's back before the prune.
        prune(&db, None, true, 2600).unwrap();
        checkpoint(&db, 2600, |p| Ok(key.sign(p).as_ref().to_vec())).unwrap();
        let report = verify(&db, key.public_key().as_ref()).unwrap();
        assert!(
            report.problems.iter().any(|p| p.contains("legal hold")),
            "{:?}",
            report.problems
        );
    }

    #[test]
    fn a_published_checkpoint_exposes_a_cut_off_end_and_a_rewritten_history() {
        let key = key();
        let db = filled(&key);
        let published = checkpoints(&db).unwrap();
        db.execute("DELETE FROM archive_entries WHERE seq = 4", [])
            .unwrap();
        db.execute("DELETE FROM archive_checkpoints WHERE entry_seq = 4", [])
            .unwrap();
        let (entries, own) = chain(&db).unwrap();
        let mut report = verify_chain(&entries, &own, key.public_key().as_ref());
        assert!(report.problems.is_empty(), "locally it looks intact");
        compare_published(&mut report, &entries, &published, key.public_key().as_ref());
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.starts_with("entry 4:") && p.contains("removed from its end")),
            "{:?}",
            report.problems
        );
        // Checkpoints that do not verify with the archive's key are not evidence.
        let other = self::key();
        let mut report = verify_chain(&entries, &own, key.public_key().as_ref());
        compare_published(
            &mut report,
            &entries,
            &published,
            other.public_key().as_ref(),
        );
        assert_eq!(report.published, 0);
    }
}
