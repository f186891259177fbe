//! The device's own tables, beside openmls's.

pub(crate) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS device (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    relay TEXT NOT NULL, fingerprint TEXT NOT NULL, org BLOB NOT NULL,
    user TEXT NOT NULL, device_id TEXT NOT NULL, device_key BLOB NOT NULL,
    profile BLOB NOT NULL, certificate BLOB, root_key BLOB, created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS groups (
    group_id BLOB PRIMARY KEY, name TEXT NOT NULL, state TEXT NOT NULL, created_at INTEGER NOT NULL,
    retain_secs INTEGER, disappear_secs INTEGER);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL, group_id BLOB NOT NULL, kind TEXT NOT NULL,
    sender TEXT NOT NULL, sender_device TEXT NOT NULL, body TEXT NOT NULL,
    sent_at INTEGER NOT NULL, received_at INTEGER NOT NULL,
    relay_seq INTEGER, status TEXT NOT NULL,
    -- display order: relay sequence x 1000 (+ n for notices); NULL until the relay stored it
    sort_key INTEGER,
    reply_to TEXT,
    ack_required INTEGER NOT NULL DEFAULT 0,
    -- an attachment's reference (JSON, with its key) and where this device saved it
    attachment TEXT,
    saved_to TEXT,
    mentions TEXT NOT NULL DEFAULT '[]',
    edited_at INTEGER,
    deleted INTEGER NOT NULL DEFAULT 0,
    -- receipts this device still owes the sender (received messages only)
    delivered_receipt_due INTEGER NOT NULL DEFAULT 0,
    read_receipt_due INTEGER NOT NULL DEFAULT 0,
    -- an alert's answers (JSON), when it offers some
    options TEXT,
    -- an exercise (an alert marked as a drill, or sent during a drill incident)
    drill INTEGER NOT NULL DEFAULT 0,
    -- an alert's escalation (JSON), when it has one
    escalation TEXT,
    -- a raised alert: the alert it raises, as 'group hex:alert id'
    raises TEXT,
    UNIQUE (group_id, id));
CREATE TABLE IF NOT EXISTS reactions (
    group_id BLOB NOT NULL, message_id TEXT NOT NULL, user TEXT NOT NULL, emoji TEXT NOT NULL,
    PRIMARY KEY (group_id, message_id, user, emoji));
-- full-text index of message bodies; deleted and expired content leaves it too
CREATE VIRTUAL TABLE IF NOT EXISTS messages_fts USING fts5(
    body, content='messages', content_rowid='seq', tokenize='unicode61 remove_diacritics 2');
-- who answered an alert, first when, and their latest answer (NULL: a plain acknowledgement)
CREATE TABLE IF NOT EXISTS acks (
    group_id BLOB NOT NULL, message_id TEXT NOT NULL, user TEXT NOT NULL, at INTEGER NOT NULL,
    answer TEXT,
    PRIMARY KEY (group_id, message_id, user));
-- every board update; the board shows, per key, the one the relay sequenced last
CREATE TABLE IF NOT EXISTS board_log (
    group_id BLOB NOT NULL, message_id TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    author TEXT NOT NULL, at INTEGER NOT NULL, seq INTEGER,
    PRIMARY KEY (group_id, message_id));
CREATE INDEX IF NOT EXISTS board_log_key ON board_log(group_id, key, seq);
-- this user's own view: muted or pinned groups, muted people, notification levels
CREATE TABLE IF NOT EXISTS view_settings (
    scope TEXT NOT NULL, target TEXT NOT NULL, muted INTEGER NOT NULL DEFAULT 0,
    pinned INTEGER NOT NULL DEFAULT 0, level TEXT NOT NULL DEFAULT 'all',
    PRIMARY KEY (scope, target));
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS receipts (
    group_id BLOB NOT NULL, message_id TEXT NOT NULL, user TEXT NOT NULL, kind TEXT NOT NULL,
    at INTEGER NOT NULL, PRIMARY KEY (group_id, message_id, user, kind));
CREATE INDEX IF NOT EXISTS messages_group ON messages(group_id, seq);
CREATE INDEX IF NOT EXISTS messages_order ON messages(group_id, sort_key);
-- receipts still owed are few; finding them must not scan a group's whole history
CREATE INDEX IF NOT EXISTS messages_delivered_due ON messages(group_id) WHERE delivered_receipt_due = 1;
CREATE INDEX IF NOT EXISTS messages_read_due ON messages(group_id) WHERE read_receipt_due = 1;
CREATE TABLE IF NOT EXISTS outbox (
    client_id BLOB PRIMARY KEY, position INTEGER NOT NULL, group_id BLOB NOT NULL,
    message_id TEXT NOT NULL, envelope BLOB NOT NULL, ciphertext BLOB NOT NULL,
    -- the users it goes to, one per line (receipts); NULL for the whole group
    audience TEXT);
CREATE TABLE IF NOT EXISTS cursors (group_id BLOB PRIMARY KEY, last_seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS own_handshakes (group_id BLOB NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (group_id, seq));
CREATE TABLE IF NOT EXISTS revoked_devices (device_id TEXT PRIMARY KEY, user TEXT NOT NULL);
-- certificates a revoked admin device (issuer) issued that its revocation vouched for
CREATE TABLE IF NOT EXISTS vouched_certificates (issuer TEXT NOT NULL, digest BLOB NOT NULL,
    PRIMARY KEY (issuer, digest));
CREATE TABLE IF NOT EXISTS sync_state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
-- devices whose certificate ran out with no renewal in sight, found at the last lapse check
CREATE TABLE IF NOT EXISTS lapsed_devices (device_id TEXT PRIMARY KEY);
-- saved copies of deleted attachments, removed once the deletion is stored
CREATE TABLE IF NOT EXISTS doomed_files (path TEXT PRIMARY KEY);
-- certificates this device verified, the newest per device: who is enrolled, by this
-- device's own knowledge (a relay listing can hide one, not make the device forget it)
CREATE TABLE IF NOT EXISTS known_certificates (
    device_id TEXT PRIMARY KEY, user TEXT NOT NULL, certificate BLOB NOT NULL,
    not_before INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS known_certificates_user ON known_certificates(user);
-- (admin) each user's profile and roles as this device last signed them
CREATE TABLE IF NOT EXISTS org_records (
    user TEXT PRIMARY KEY, profile BLOB NOT NULL, roles BLOB NOT NULL, updated_at INTEGER NOT NULL);
-- (admin) codes whose enrolment this device approved: each code enrols one device
CREATE TABLE IF NOT EXISTS used_codes (code_key BLOB PRIMARY KEY, device_id TEXT NOT NULL);
-- (admin) the newest profile request approved per user, so an older one cannot be replayed
CREATE TABLE IF NOT EXISTS profile_approvals (user TEXT PRIMARY KEY, requested_at INTEGER NOT NULL);
-- the newest signed organisation policy seen; older versions are refused
CREATE TABLE IF NOT EXISTS org_policy (
    id INTEGER PRIMARY KEY CHECK (id = 1), policy BLOB NOT NULL, version INTEGER NOT NULL);
-- the highest message number seen from each sending device per group (gaps are reported)
CREATE TABLE IF NOT EXISTS sender_numbers (
    group_id BLOB NOT NULL, device_id TEXT NOT NULL, last_n INTEGER NOT NULL,
    PRIMARY KEY (group_id, device_id));
-- the numbers of the organisation's revocations seen (a missing one was withheld)
CREATE TABLE IF NOT EXISTS revocation_serials (serial INTEGER PRIMARY KEY);
-- (admin) checkpoints the compliance archive published, kept outside its host
CREATE TABLE IF NOT EXISTS archive_checkpoints_seen (
    device_id TEXT NOT NULL, entry_seq INTEGER NOT NULL, hash BLOB NOT NULL,
    signed_at INTEGER NOT NULL, signature BLOB NOT NULL, PRIMARY KEY (device_id, entry_seq));
-- (admin) checkpoints from devices whose archive certificate this device has not seen yet
CREATE TABLE IF NOT EXISTS archive_checkpoints_pending (
    device_id TEXT NOT NULL, entry_seq INTEGER NOT NULL, hash BLOB NOT NULL,
    signed_at INTEGER NOT NULL, signature BLOB NOT NULL, PRIMARY KEY (device_id, entry_seq, hash));
-- groups this device may have fallen behind in (it refused or missed a commit)
CREATE TABLE IF NOT EXISTS behind_groups (group_id BLOB PRIMARY KEY);
-- people added to a group before their device was ever online: seated by this device's
-- next sync once their device has published KeyPackages
CREATE TABLE IF NOT EXISTS pending_members (
    group_id BLOB NOT NULL, user TEXT NOT NULL, since INTEGER NOT NULL,
    PRIMARY KEY (group_id, user));
CREATE TABLE IF NOT EXISTS pending_commits (group_id BLOB PRIMARY KEY, commit_hash BLOB NOT NULL);
-- a bot's intake: its bearer tokens (SHA-256 of the secret, never the secret), the posts
-- it stored by their client-given key, and the alert each unresolved alarm group became
-- every answer given to an alert, in the order given (acks keeps only the latest)
CREATE TABLE IF NOT EXISTS answer_log (
    group_id BLOB NOT NULL, message_id TEXT NOT NULL, ack_id TEXT NOT NULL, user TEXT NOT NULL,
    answer TEXT, at INTEGER NOT NULL, PRIMARY KEY (group_id, ack_id));
-- claims of timed duties (reminding, raising, flagging an overdue task) about a subject;
-- the first one the relay sequenced counts (seq is NULL while this device's own is unsent)
CREATE TABLE IF NOT EXISTS duty_claims (
    group_id BLOB NOT NULL, message_id TEXT NOT NULL, subject TEXT NOT NULL, duty TEXT NOT NULL,
    by_user TEXT NOT NULL, mine INTEGER NOT NULL, silent TEXT NOT NULL, at INTEGER NOT NULL,
    seq INTEGER, settled INTEGER NOT NULL DEFAULT 0, won INTEGER NOT NULL DEFAULT 0,
    acted INTEGER NOT NULL DEFAULT 0, seen_at INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (group_id, message_id));
CREATE INDEX IF NOT EXISTS duty_claims_subject ON duty_claims(group_id, subject, duty, seq);
CREATE TABLE IF NOT EXISTS tasks (
    group_id BLOB NOT NULL, id TEXT NOT NULL, title TEXT NOT NULL, creator TEXT NOT NULL,
    assignee TEXT NOT NULL, due_at INTEGER, state TEXT NOT NULL, created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL, drill INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (group_id, id));
CREATE TABLE IF NOT EXISTS task_log (
    group_id BLOB NOT NULL, message_id TEXT NOT NULL, task_id TEXT NOT NULL, state TEXT NOT NULL,
    by_user TEXT NOT NULL, at INTEGER NOT NULL, PRIMARY KEY (group_id, message_id));
CREATE TABLE IF NOT EXISTS incidents (
    group_id BLOB NOT NULL, id TEXT NOT NULL, title TEXT NOT NULL, drill INTEGER NOT NULL,
    opened_by TEXT NOT NULL, opened_at INTEGER NOT NULL, closed_by TEXT, closed_at INTEGER,
    PRIMARY KEY (group_id, id));
CREATE TABLE IF NOT EXISTS bot_tokens (
    id TEXT PRIMARY KEY, group_id BLOB NOT NULL, digest BLOB NOT NULL, label TEXT,
    created_at INTEGER NOT NULL, revoked_at INTEGER);
CREATE TABLE IF NOT EXISTS bot_requests (
    group_id BLOB NOT NULL, key TEXT NOT NULL, message_id TEXT NOT NULL, at INTEGER NOT NULL,
    PRIMARY KEY (group_id, key));
CREATE TABLE IF NOT EXISTS bot_alarms (
    group_id BLOB NOT NULL, alarm TEXT NOT NULL, message_id TEXT NOT NULL, episode TEXT NOT NULL,
    PRIMARY KEY (group_id, alarm));
"#;

use rusqlite::OptionalExtension;

/// The full-text index follows the messages table through these triggers.
const FTS_TRIGGERS: &str = r#"
-- A batch of fetched messages indexes the ones it stores at its end, in one statement:
-- FTS5 writes its pending entries out at every statement that opens a savepoint, which
-- each insert firing a trigger into it does. While 'fts_unindexed_above' is set in
-- sync_state (only inside that batch's transaction), rows above it are left alone.
CREATE TRIGGER IF NOT EXISTS messages_fts_insert AFTER INSERT ON messages
    WHEN new.kind IN ('text', 'alert', 'attachment') AND new.seq <= ifnull(
        (SELECT value FROM sync_state WHERE key = 'fts_unindexed_above'), new.seq) BEGIN
    INSERT INTO messages_fts (rowid, body) VALUES (new.seq, new.body);
END;
CREATE TRIGGER IF NOT EXISTS messages_fts_delete AFTER DELETE ON messages
    WHEN old.kind IN ('text', 'alert', 'attachment') AND old.seq <= ifnull(
        (SELECT value FROM sync_state WHERE key = 'fts_unindexed_above'), old.seq) BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, body) VALUES ('delete', old.seq, old.body);
END;
CREATE TRIGGER IF NOT EXISTS messages_fts_update AFTER UPDATE OF body ON messages
    WHEN old.kind IN ('text', 'alert', 'attachment') AND old.seq <= ifnull(
        (SELECT value FROM sync_state WHERE key = 'fts_unindexed_above'), old.seq) BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, body) VALUES ('delete', old.seq, old.body);
    INSERT INTO messages_fts (rowid, body) VALUES (new.seq, new.body);
END;
"#;

/// Adds what later versions need to a store made by an older version.
pub(crate) fn migrate(db: &rusqlite::Connection) -> rusqlite::Result<()> {
    add_column(db, "outbox", "audience", "TEXT")?;
    add_column(db, "messages", "options", "TEXT")?;
    add_column(db, "acks", "answer", "TEXT")?;
    add_column(db, "messages", "drill", "INTEGER NOT NULL DEFAULT 0")?;
    add_column(db, "messages", "escalation", "TEXT")?;
    add_column(db, "messages", "raises", "TEXT")?;
    db.execute_batch(
        "CREATE INDEX IF NOT EXISTS messages_escalating ON messages(group_id) WHERE escalation IS NOT NULL;
         CREATE INDEX IF NOT EXISTS messages_raises ON messages(group_id, raises) WHERE raises IS NOT NULL;",
    )?;
    // Triggers from before batches indexed their messages at their end are replaced.
    // They keep their names, so an older version opening the store finds them there and
    // does not add its own beside them.
    let current: bool = db
        .prepare("SELECT sql LIKE '%fts_unindexed_above%' FROM sqlite_master WHERE type = 'trigger' AND name = 'messages_fts_insert'")?
        .query_row([], |r| r.get(0))
        .optional()?
        .unwrap_or(false);
    if !current {
        db.execute_batch(
            "DROP TRIGGER IF EXISTS messages_fts_insert;
             DROP TRIGGER IF EXISTS messages_fts_delete;
             DROP TRIGGER IF EXISTS messages_fts_update;",
        )?;
        db.execute_batch(FTS_TRIGGERS)?;
    }
    Ok(())
}

/// Leaves the messages stored from now on in `tx` out of the full-text index until
/// [`index_deferred`]; returns the last message already indexed.
pub(crate) fn defer_indexing(tx: &rusqlite::Connection) -> rusqlite::Result<i64> {
    let above: i64 = tx
        .prepare_cached("SELECT ifnull(MAX(seq), 0) FROM messages")?
        .query_row([], |r| r.get(0))?;
    tx.prepare_cached(
        "INSERT INTO sync_state (key, value) VALUES ('fts_unindexed_above', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute([above])?;
    Ok(above)
}

/// Indexes, in one statement, the messages stored since [`defer_indexing`] returned
/// `above` (as they stand now: edited, or gone), and indexes each one as it comes again.
pub(crate) fn index_deferred(tx: &rusqlite::Connection, above: i64) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO messages_fts (rowid, body) SELECT seq, body FROM messages
         WHERE seq > ?1 AND kind IN ('text', 'alert', 'attachment')",
    )?
    .execute([above])?;
    tx.prepare_cached("DELETE FROM sync_state WHERE key = 'fts_unindexed_above'")?
        .execute([])?;
    Ok(())
}

/// Adds `column` to `table` unless it is there; says whether it was added.
pub(crate) fn add_column(
    db: &rusqlite::Connection,
    table: &str,
    column: &str,
    declaration: &str,
) -> rusqlite::Result<bool> {
    let present = db
        .prepare("SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2")?
        .exists([table, column])?;
    if !present {
        db.execute_batch(&format!(
            "ALTER TABLE {table} ADD COLUMN {column} {declaration}"
        ))?;
    }
    Ok(!present)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The index triggers of stores made before batches indexed their messages at the end.
    const OLD_TRIGGERS: &str = r#"
CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages
    WHEN new.kind IN ('text', 'alert', 'attachment') BEGIN
    INSERT INTO messages_fts (rowid, body) VALUES (new.seq, new.body);
END;
CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages
    WHEN old.kind IN ('text', 'alert', 'attachment') BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, body) VALUES ('delete', old.seq, old.body);
END;
"#;

    fn triggers(db: &rusqlite::Connection) -> Vec<(String, bool)> {
        db.prepare(
            "SELECT name, sql LIKE '%fts_unindexed_above%' FROM sqlite_master
             WHERE type = 'trigger' ORDER BY name",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0).unwrap(), r.get(1).unwrap())))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    fn search(db: &rusqlite::Connection, word: &str) -> i64 {
        db.query_row(
            "SELECT COUNT(*) FROM messages_fts WHERE messages_fts MATCH ?1",
            [word],
            |r| r.get(0),
        )
        .unwrap()
    }

    fn insert(db: &rusqlite::Connection, id: &str, body: &str) {
        db.execute(
            "INSERT INTO messages (id, group_id, kind, sender, sender_device, body, sent_at,
                 received_at, status) VALUES (?1, x'01', 'text', 'bob', 'd', ?2, 0, 0, 'received')",
            [id, body],
        )
        .unwrap();
    }

    #[test]
    fn old_index_triggers_are_replaced_under_their_names_and_batches_index_at_their_end() {
        let db = rusqlite::Connection::open_in_memory().unwrap();
        db.execute_batch(SCHEMA).unwrap();
        db.execute_batch(OLD_TRIGGERS).unwrap();
        insert(&db, "a", "flooding at the pier");
        migrate(&db).unwrap();
        let expected: Vec<(String, bool)> = ["delete", "insert", "update"]
            .iter()
            .map(|t| (format!("messages_fts_{t}"), true))
            .collect();
        assert_eq!(triggers(&db), expected);
        migrate(&db).unwrap();
        assert_eq!(triggers(&db), expected);
        assert_eq!(search(&db, "pier"), 1);

        // Inside a batch, rows are indexed at its end as they stand then.
        let above = defer_indexing(&db).unwrap();
        insert(&db, "b", "pier two is closed");
        insert(&db, "c", "pier three");
        assert_eq!(search(&db, "pier"), 1);
        db.execute(
            "UPDATE messages SET body = 'road closed' WHERE id = 'b'",
            [],
        )
        .unwrap();
        db.execute("UPDATE messages SET body = 'harbour' WHERE id = 'a'", [])
            .unwrap();
        index_deferred(&db, above).unwrap();
        assert_eq!(search(&db, "pier"), 1);
        assert_eq!(search(&db, "road"), 1);
        assert_eq!(search(&db, "harbour"), 1);
        db.execute(
            "INSERT INTO messages_fts (messages_fts) VALUES ('integrity-check')",
            [],
        )
        .unwrap();
        // And after it, as they come.
        insert(&db, "d", "pier four");
        assert_eq!(search(&db, "pier"), 2);
    }
}
