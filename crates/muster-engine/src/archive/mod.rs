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

mod records;
mod verify;

pub use records::*;
pub use verify::*;

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
-- requests to read a sealed archive, waiting for legal officers' approvals; the private
-- key opens the approvals of that one request and is deleted with it
CREATE TABLE IF NOT EXISTS archive_requests (
    id TEXT PRIMARY KEY,
    request TEXT NOT NULL,
    private_key BLOB NOT NULL);
-- on a legal officer's device: its share of the officers' key
CREATE TABLE IF NOT EXISTS officer_shares (
    key_id TEXT PRIMARY KEY,
    idx INTEGER NOT NULL,
    share BLOB NOT NULL);
"#;

/// Creates the archive's tables, and adds what later versions need to older ones.
pub(crate) fn migrate(db: &Connection) -> Result<(), EngineError> {
    db.execute_batch(SCHEMA)?;
    // What fetching an attachment of a sealed entry needs, outside the seal: the blob's
    // size and the hash of its encrypted form (neither says anything of its content).
    crate::store::add_column(db, "archive_blobs", "size", "INTEGER")?;
    crate::store::add_column(db, "archive_blobs", "blob_sha256", "TEXT")?;
    if crate::store::add_column(db, "archive_entries", "content_hash", "BLOB")? {
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
    /// The legal officers whose approvals opened a sealed archive for it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approved_by: Vec<String>,
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
/// With `officers`, the record is sealed to their key before it is stored.
pub(crate) fn record_message(
    db: &Connection,
    group_id: &[u8],
    message: &ArchivedMessage,
    expires_at: Option<i64>,
    now_ms: i64,
    officers: Option<&muster_proto::LegalOfficers>,
) -> Result<(), EngineError> {
    let record = serde_json::to_string(message).expect("archive record serialises");
    let record = match officers {
        Some(officers) => crate::legal::seal_record(officers, &record)?,
        None => record,
    };
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
    let attachment = &message.body["attachment"];
    if let Some(blob_id) = attachment["blob_id"].as_str() {
        db.prepare_cached(
            "INSERT OR IGNORE INTO archive_blobs (blob_id, entry_seq, size, blob_sha256)
             VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![
            blob_id,
            seq,
            attachment["size"].as_u64().map(|s| s as i64),
            attachment["blob_sha256"].as_str()
        ])?;
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

#[cfg(test)]
mod tests;
