//! The relay's SQLite schema. Message rows hold only MLS ciphertext or handshake messages.

pub(crate) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS bootstrap_tokens (token_hash BLOB PRIMARY KEY, created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS invites (
    token_hash BLOB PRIMARY KEY, user TEXT NOT NULL, created_by TEXT NOT NULL,
    expires_at INTEGER NOT NULL, used_at INTEGER, kind TEXT NOT NULL DEFAULT 'user');
-- what the maker of each code signed, and what each enrolling device signed
CREATE TABLE IF NOT EXISTS invite_grants (token_hash BLOB PRIMARY KEY, grant_data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS enrolment_proofs (
    device_id TEXT PRIMARY KEY, grant_data BLOB NOT NULL, request BLOB NOT NULL, confirmation BLOB);
-- checkpoints compliance archives signed over their chains, kept outside their hosts
CREATE TABLE IF NOT EXISTS archive_checkpoints (
    id INTEGER PRIMARY KEY, device_id TEXT NOT NULL, entry_seq INTEGER NOT NULL,
    hash BLOB NOT NULL, signed_at INTEGER NOT NULL, signature BLOB NOT NULL,
    UNIQUE (device_id, entry_seq));
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY, user TEXT NOT NULL, device_key BLOB NOT NULL,
    status TEXT NOT NULL, profile BLOB NOT NULL, certificate BLOB,
    requested_at INTEGER NOT NULL, decided_at INTEGER, confirmed_by TEXT);
CREATE INDEX IF NOT EXISTS devices_user ON devices(user);
CREATE TABLE IF NOT EXISTS key_packages (
    id INTEGER PRIMARY KEY, device_id TEXT NOT NULL, data BLOB NOT NULL, last_resort INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS key_packages_device ON key_packages(device_id, last_resort);
CREATE TABLE IF NOT EXISTS groups (
    group_id BLOB PRIMARY KEY, epoch INTEGER NOT NULL, last_seq INTEGER NOT NULL,
    created_by TEXT NOT NULL, created_at INTEGER NOT NULL);
-- each group's newest GroupInfo, signed by the member who made its epoch
CREATE TABLE IF NOT EXISTS group_infos (
    group_id BLOB PRIMARY KEY, epoch INTEGER NOT NULL, data BLOB NOT NULL);
-- who each group's context lists as waiting to join (kept from the newest epoch)
CREATE TABLE IF NOT EXISTS pending_seats (
    group_id BLOB NOT NULL, user TEXT NOT NULL, PRIMARY KEY (group_id, user));
CREATE INDEX IF NOT EXISTS pending_seats_user ON pending_seats(user);
CREATE TABLE IF NOT EXISTS memberships (
    group_id BLOB NOT NULL, device_id TEXT NOT NULL, from_seq INTEGER NOT NULL, to_seq INTEGER);
CREATE INDEX IF NOT EXISTS memberships_device ON memberships(device_id);
CREATE INDEX IF NOT EXISTS memberships_group ON memberships(group_id);
CREATE TABLE IF NOT EXISTS messages (
    group_id BLOB NOT NULL, seq INTEGER NOT NULL, epoch INTEGER NOT NULL, kind TEXT NOT NULL,
    sender_device TEXT NOT NULL, client_id BLOB, data BLOB NOT NULL, stored_at INTEGER NOT NULL,
    -- the users it is for, as "\nalice\nbob\n"; NULL for every member
    audience TEXT,
    PRIMARY KEY (group_id, seq));
CREATE UNIQUE INDEX IF NOT EXISTS messages_client_id ON messages(sender_device, client_id)
    WHERE client_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS welcomes (
    id INTEGER PRIMARY KEY, device_id TEXT NOT NULL, group_id BLOB NOT NULL,
    data BLOB NOT NULL, stored_at INTEGER NOT NULL,
    -- the epoch it joins; NULL in Welcomes stored before trees were kept
    epoch INTEGER);
CREATE INDEX IF NOT EXISTS welcomes_device ON welcomes(device_id);
-- a group's ratchet tree (TLS encoded) at an epoch a Welcome or GroupInfo leads to
CREATE TABLE IF NOT EXISTS group_trees (
    group_id BLOB NOT NULL, epoch INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (group_id, epoch));
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY, at INTEGER NOT NULL, event TEXT NOT NULL, actor TEXT NOT NULL,
    subject TEXT NOT NULL, group_id BLOB);
CREATE TABLE IF NOT EXISTS revocations (
    id INTEGER PRIMARY KEY, user TEXT NOT NULL, data BLOB NOT NULL, at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS profile_requests (
    user TEXT PRIMARY KEY, profile BLOB NOT NULL, requested_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS blobs (
    blob_id TEXT PRIMARY KEY, uploader TEXT NOT NULL, group_id BLOB NOT NULL,
    total_size INTEGER NOT NULL, received INTEGER NOT NULL, sha256 BLOB,
    complete INTEGER NOT NULL, created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS blob_recipients (
    blob_id TEXT NOT NULL, device_id TEXT NOT NULL, fetched INTEGER NOT NULL,
    PRIMARY KEY (blob_id, device_id));
CREATE TABLE IF NOT EXISTS cursors (
    device_id TEXT NOT NULL, group_id BLOB NOT NULL, acked_seq INTEGER NOT NULL,
    PRIMARY KEY (device_id, group_id));
CREATE TABLE IF NOT EXISTS sent_ids (
    sender_device TEXT NOT NULL, client_id BLOB NOT NULL, seq INTEGER NOT NULL,
    stored_at INTEGER NOT NULL, PRIMARY KEY (sender_device, client_id));
CREATE TABLE IF NOT EXISTS queued_bytes (device_id TEXT PRIMARY KEY, bytes INTEGER NOT NULL);
"#;

/// Run at every start after [`migrate`], so the counters can never drift from the messages
/// held. A message counts with its audience, which its sender chose too.
pub(crate) const RECOUNT: &str = r#"
DELETE FROM queued_bytes;
INSERT INTO queued_bytes (device_id, bytes)
    SELECT sender_device, CAST(SUM(length(data) + COALESCE(length(audience), 0)) AS BIGINT)
    FROM messages GROUP BY sender_device;
INSERT INTO sent_ids (sender_device, client_id, seq, stored_at)
    SELECT sender_device, client_id, seq, stored_at FROM messages WHERE client_id IS NOT NULL
    ON CONFLICT DO NOTHING;
"#;

/// The same tables in PostgreSQL: 64-bit integers, `bytea` for blobs, identity columns
/// for the rows SQLite numbers itself; the public group state openmls' SQLite provider
/// keeps; and a row whose durable update makes earlier asynchronous commits durable.
pub(crate) fn postgres_schema() -> String {
    let tables = SCHEMA
        .replace(
            "id INTEGER PRIMARY KEY",
            "id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
        )
        .replace("INTEGER", "BIGINT")
        .replace("BLOB", "BYTEA");
    format!(
        "{tables}
CREATE INDEX IF NOT EXISTS welcomes_group_epoch ON welcomes(group_id, epoch);
CREATE TABLE IF NOT EXISTS openmls_group_data (
    provider_version BIGINT NOT NULL, group_id BYTEA NOT NULL, data_type TEXT NOT NULL,
    group_data BYTEA NOT NULL, PRIMARY KEY (group_id, data_type));
CREATE TABLE IF NOT EXISTS openmls_proposals (
    provider_version BIGINT NOT NULL, group_id BYTEA NOT NULL, proposal_ref BYTEA NOT NULL,
    proposal BYTEA NOT NULL, PRIMARY KEY (group_id, proposal_ref));
CREATE TABLE IF NOT EXISTS durability_barrier (id BIGINT PRIMARY KEY, value BIGINT NOT NULL);
-- one row, locked by every write transaction: the writers' lock across relays
CREATE TABLE IF NOT EXISTS writer_lock (id BIGINT PRIMARY KEY);
INSERT INTO writer_lock (id) VALUES (1) ON CONFLICT (id) DO NOTHING;
-- the TLS certificate and key every relay of this database presents
CREATE TABLE IF NOT EXISTS relay_identity (
    id BIGINT PRIMARY KEY, certificate BYTEA NOT NULL, private_key BYTEA NOT NULL);"
    )
}

/// The tables [`postgres_schema`] makes, each of which the relays' role must own.
pub(crate) fn postgres_tables() -> Vec<String> {
    postgres_schema()
        .split("CREATE TABLE IF NOT EXISTS ")
        .skip(1)
        .filter_map(|rest| rest.split([' ', '(']).next().map(str::to_owned))
        .collect()
}

/// Adds what later versions need to a database made by an older relay.
pub(crate) fn migrate(db: &rusqlite::Connection) -> rusqlite::Result<()> {
    add_column(db, "messages", "audience", "TEXT")?;
    add_column(db, "welcomes", "epoch", "INTEGER")?;
    db.execute_batch(
        "CREATE INDEX IF NOT EXISTS welcomes_group_epoch ON welcomes(group_id, epoch)",
    )?;
    db.execute_batch(RECOUNT)
}

/// Adds `column` to `table` unless the table has it already.
fn add_column(
    db: &rusqlite::Connection,
    table: &str,
    column: &str,
    kind: &str,
) -> rusqlite::Result<()> {
    let has = db
        .prepare("SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2")?
        .exists([table, column])?;
    if !has {
        db.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind}"))?;
    }
    Ok(())
}

/// How a message's audience is stored: each user between newlines, so that one user is
/// found with `instr(audience, "\n" || user || "\n")` (handles hold no newline).
pub(crate) fn audience_text(users: &[String]) -> String {
    let mut text = String::from("\n");
    for user in users {
        text.push_str(user);
        text.push('\n');
    }
    text
}

/// What `instr` looks for in an audience to find `user`.
pub(crate) fn audience_needle(user: &str) -> String {
    format!("\n{user}\n")
}
