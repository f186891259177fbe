//! Reading and keeping the archive: exports, the access log, legal holds, retention, and
//! the attachments of archived messages.

use super::*;

/// An attachment whose blob the archive has yet to download.
pub(crate) struct WantedBlob {
    pub(crate) blob_id: String,
    pub(crate) entry_seq: i64,
    /// Size and hash of the encrypted blob, kept outside the entry's seal (absent for
    /// entries from before).
    pub(crate) size: Option<u64>,
    pub(crate) blob_sha256: Option<String>,
}

/// Attachments whose blob the archive has yet to download.
pub(crate) fn wanted_blobs(db: &Connection) -> Result<Vec<WantedBlob>, EngineError> {
    let mut stmt = db.prepare(
        "SELECT b.blob_id, b.entry_seq, b.size, b.blob_sha256 FROM archive_blobs b
         JOIN archive_entries e ON e.seq = b.entry_seq
         WHERE b.stored_at IS NULL AND e.record IS NOT NULL AND b.attempts < 20 ORDER BY b.entry_seq",
    )?;
    let rows = stmt
        .query_map([], |r| {
            Ok(WantedBlob {
                blob_id: r.get(0)?,
                entry_seq: r.get(1)?,
                size: r.get::<_, Option<i64>>(2)?.map(|s| s as u64),
                blob_sha256: r.get(3)?,
            })
        })?
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

/// Opens a stored record: unseals it, or fails where the archive cannot.
pub(crate) type Opener<'a> = &'a dyn Fn(&str) -> Result<String, EngineError>;

/// The archived messages `filter` selects, oldest first.
pub(crate) fn messages(
    db: &Connection,
    filter: &ExportFilter,
    open: Opener<'_>,
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
        let message: ArchivedMessage = serde_json::from_str(&open(&row?)?)
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
pub(crate) fn message_at(
    db: &Connection,
    seq: i64,
    open: Opener<'_>,
) -> Result<ArchivedMessage, EngineError> {
    let record: String = db.query_row(
        "SELECT record FROM archive_entries WHERE seq = ?1 AND kind = 'message' AND record IS NOT NULL",
        [seq],
        |r| r.get(0),
    )?;
    serde_json::from_str(&open(&record)?)
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
