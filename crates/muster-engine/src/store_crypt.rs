//! The device store encrypted at rest with SQLCipher (AES-256 pages, HMAC per page)
//! under a [`StoreKey`] given raw, so SQLCipher derives nothing more from it.
//!
//! A store an earlier version kept in plaintext is encrypted in place the first time it
//! is opened with a key: its contents are exported into an encrypted copy beside it, the
//! copy is synced and renamed over the original, and the original's write-ahead log and
//! shared-memory files are removed, so no plaintext file is left in the home directory
//! (the filesystem may still hold the freed blocks until it reuses them).

use crate::error::EngineError;
use muster_keystore::StoreKey;
use rusqlite::Connection;
use std::path::{Path, PathBuf};

/// The SQLite error code for "file is not a database", which SQLCipher gives for a wrong
/// key and plain SQLite for an encrypted file.
const NOT_A_DATABASE: i32 = 26;

/// How the store at `path` is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreState {
    /// No store yet.
    Absent,
    /// Readable without a key.
    Plaintext,
    /// Encrypted (or not a database at all).
    Encrypted,
}

/// Whether the store at `path` exists and is encrypted, judged without a key.
pub fn state(path: &Path) -> Result<StoreState, EngineError> {
    if !path.exists() {
        return Ok(StoreState::Absent);
    }
    // Read-write (never creating): a change of key cut short leaves a rollback journal
    // that only a writer can roll back.
    let db = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    match readable(&db) {
        Ok(()) => Ok(StoreState::Plaintext),
        Err(e) if not_a_database(&e) => Ok(StoreState::Encrypted),
        Err(e) => Err(e.into()),
    }
}

/// A shared lock on the store's lock file, held while the store is open: the store is
/// encrypted in place only under the exclusive lock, so never under a process using it.
#[derive(Debug)]
pub struct StoreLock(#[allow(dead_code)] std::fs::File);

/// Opens the store at `path`: with `key`, encrypted (creating it encrypted, or encrypting a
/// plaintext one first); without, plaintext only.
pub fn open(path: &Path, key: Option<&StoreKey>) -> Result<(Connection, StoreLock), EngineError> {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        // Encrypting in place would replace the link and leave the plaintext it names.
        return Err(EngineError::Invalid(format!(
            "{} is a symbolic link: a device store must be a file in its home directory",
            path.display()
        )));
    }
    let lock = lock_file(path)?;
    let state = state(path)?;
    let Some(key) = key else {
        if state == StoreState::Encrypted {
            return Err(EngineError::StoreLocked);
        }
        lock.lock_shared()?;
        // It may have been encrypted while this process waited for the lock.
        if self::state(path)? == StoreState::Encrypted {
            return Err(EngineError::StoreLocked);
        }
        return Ok((Connection::open(path)?, StoreLock(lock)));
    };
    if state == StoreState::Plaintext {
        match lock.try_lock() {
            Ok(()) => {
                // Another process may have encrypted it meanwhile.
                if self::state(path)? == StoreState::Plaintext {
                    encrypt_in_place(path, key)?;
                }
                lock.unlock()?;
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                // In use: wait for whoever is encrypting it, then look again.
                lock.lock_shared()?;
                if self::state(path)? == StoreState::Plaintext {
                    return Err(in_use("encrypt the store"));
                }
                lock.unlock()?;
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
        }
    }
    lock.lock_shared()?;
    let db = Connection::open(path)?;
    if !unlocks(&db, key)? {
        return Err(EngineError::WrongStoreKey);
    }
    Ok((db, StoreLock(lock)))
}

/// Whether `key` opens the encrypted store at `path` (nothing is changed either way).
pub fn key_opens(path: &Path, key: &StoreKey) -> Result<bool, EngineError> {
    let db = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    unlocks(&db, key)
}

/// Gives `db` the key, and says whether the store reads with it.
fn unlocks(db: &Connection, key: &StoreKey) -> Result<bool, EngineError> {
    apply_key(db, key)?;
    match readable(db) {
        Ok(()) => Ok(true),
        Err(e) if not_a_database(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The lock file beside the store at `path` (see [`StoreLock`]).
fn lock_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(sidecar(path, ".lock"))
}

/// Why the store cannot be rewritten now: another process has it open.
fn in_use(then: &str) -> EngineError {
    EngineError::Invalid(format!(
        "another muster process has this device's store open: stop it (chat, ui, archive \
         serve), then {then}"
    ))
}

/// Moves everything in the store's write-ahead log into the file and empties the log.
fn empty_log(db: &Connection) -> Result<(), EngineError> {
    let busy: i64 = db.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
    if busy != 0 {
        return Err(EngineError::Invalid(
            "the store's log could not be emptied (another process is using it)".into(),
        ));
    }
    Ok(())
}

/// Re-encrypts the store at `path` from `old` to `new`, while no other process has it
/// open. SQLCipher rewrites every page in one transaction under a rollback journal, so a
/// crash leaves the store whole under one key or the other.
pub fn rekey(path: &Path, old: &StoreKey, new: &StoreKey) -> Result<(), EngineError> {
    let lock = lock_file(path)?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Err(in_use("change the key")),
        Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
    }
    let db = Connection::open(path)?;
    if !unlocks(&db, old)? {
        return Err(EngineError::WrongStoreKey);
    }
    empty_log(&db)?;
    let mode: String = db.query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("delete") {
        return Err(EngineError::Invalid(format!(
            "the store's journal could not be switched for the change of key (it stayed {mode})"
        )));
    }
    db.pragma_update(None, "rekey", new.sqlcipher_pragma().as_str())?;
    readable(&db)?;
    db.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))?;
    drop(db);
    if !key_opens(path, new)? {
        return Err(EngineError::Invalid(
            "the store did not take its new key; it is still under the old one".into(),
        ));
    }
    lock.unlock()?;
    tracing::info!("the device store's key was changed");
    Ok(())
}

fn apply_key(db: &Connection, key: &StoreKey) -> Result<(), EngineError> {
    db.pragma_update(None, "key", key.sqlcipher_pragma().as_str())?;
    // A wrong key is reported as an error here; SQLCipher's own log would print it to
    // stderr as well. Set after the key: SQLCipher turns its log on (at WARN, to stderr)
    // when its first key is given in the process, unless a level was set since.
    db.pragma_update(None, "cipher_log_level", "NONE")?;
    db.pragma_update(None, "cipher_log", "off")?;
    // Not `cipher_memory_security`: wiping all freed memory is process-wide and made
    // the store 10-200x slower (muster-bench store, BENCHMARKS.md), against an attacker
    // who can read this process's memory and so holds the key anyway.
    Ok(())
}

fn readable(db: &Connection) -> rusqlite::Result<()> {
    db.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))
}

fn not_a_database(error: &rusqlite::Error) -> bool {
    matches!(error, rusqlite::Error::SqliteFailure(e, _) if e.extended_code & 0xff == NOT_A_DATABASE)
}

fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

/// Replaces the plaintext store at `path` with an encrypted copy of it.
fn encrypt_in_place(path: &Path, key: &StoreKey) -> Result<(), EngineError> {
    let partial = sidecar(path, ".encrypting");
    for leftover in [
        partial.clone(),
        sidecar(&partial, "-wal"),
        sidecar(&partial, "-shm"),
    ] {
        let _ = std::fs::remove_file(leftover);
    }
    {
        let plain = Connection::open(path)?;
        // Everything in the log goes into the file first.
        empty_log(&plain)?;
        let version: i64 = plain.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        plain.execute(
            "ATTACH DATABASE ?1 AS encrypted KEY ?2",
            rusqlite::params![partial.to_string_lossy(), key.sqlcipher_pragma().as_str()],
        )?;
        plain.query_row("SELECT sqlcipher_export('encrypted')", [], |_| Ok(()))?;
        plain.execute_batch(&format!("PRAGMA encrypted.user_version = {version}"))?;
        plain.execute_batch("DETACH DATABASE encrypted")?;
    }
    std::fs::File::open(&partial)?.sync_all()?;
    std::fs::rename(&partial, path)?;
    for old in [sidecar(path, "-wal"), sidecar(path, "-shm")] {
        match std::fs::remove_file(&old) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    tracing::info!("the device store was encrypted in place");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("muster-store-crypt-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Whether any file in `dir` holds `needle`.
    fn found_in(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && std::fs::read(p)
                        .unwrap()
                        .windows(needle.len())
                        .any(|w| w == needle)
            })
            .collect()
    }

    const SECRET: &str = "the pier 4 access code is 7741";

    fn fill(db: &Connection) {
        db.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE IF NOT EXISTS notes (text TEXT)")
            .unwrap();
        for _ in 0..50 {
            db.execute("INSERT INTO notes (text) VALUES (?1)", [SECRET])
                .unwrap();
        }
    }

    fn count(db: &Connection) -> i64 {
        db.query_row("SELECT count(*) FROM notes", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn an_encrypted_store_holds_no_plaintext_and_opens_only_with_its_key() {
        let dir = scratch("new");
        let path = dir.join("muster.db");
        let key = StoreKey::generate();
        {
            let (db, _lock) = open(&path, Some(&key)).unwrap();
            fill(&db);
        }
        assert_eq!(state(&path).unwrap(), StoreState::Encrypted);
        assert!(
            found_in(&dir, SECRET.as_bytes()).is_empty(),
            "plaintext on disk"
        );
        let before = std::fs::read(&path).unwrap();
        assert!(matches!(
            open(&path, Some(&StoreKey::generate())),
            Err(EngineError::WrongStoreKey)
        ));
        assert!(matches!(open(&path, None), Err(EngineError::StoreLocked)));
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "a failed open changed the store"
        );
        assert_eq!(count(&open(&path, Some(&key)).unwrap().0), 50);
    }

    #[test]
    fn a_plaintext_store_is_encrypted_in_place_with_everything_kept_and_no_plaintext_left() {
        let dir = scratch("migrate");
        let path = dir.join("muster.db");
        {
            let (db, _lock) = open(&path, None).unwrap();
            fill(&db);
            db.execute_batch("PRAGMA user_version = 7").unwrap();
            assert!(!found_in(&dir, SECRET.as_bytes()).is_empty());
        }
        let key = StoreKey::generate();
        let (db, _lock) = open(&path, Some(&key)).unwrap();
        assert_eq!(count(&db), 50);
        let version: i64 = db
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 7);
        drop(db);
        assert_eq!(
            found_in(&dir, SECRET.as_bytes()),
            Vec::<PathBuf>::new(),
            "plaintext left in the home directory"
        );
        assert!(!sidecar(&path, ".encrypting").exists());
    }

    #[test]
    fn a_rekeyed_store_opens_only_with_its_new_key_and_keeps_everything() {
        let dir = scratch("rekey");
        let path = dir.join("muster.db");
        let old = StoreKey::generate();
        {
            let (db, _lock) = open(&path, Some(&old)).unwrap();
            fill(&db);
        }
        let new = StoreKey::generate();
        let before = std::fs::read(&path).unwrap();
        assert!(matches!(
            rekey(&path, &StoreKey::generate(), &new),
            Err(EngineError::WrongStoreKey)
        ));
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "a refused rekey changed the store"
        );
        {
            let (_db, _lock) = open(&path, Some(&old)).unwrap();
            let refused = rekey(&path, &old, &new).unwrap_err();
            assert!(refused.to_string().contains("open"), "{refused}");
        }
        rekey(&path, &old, &new).unwrap();
        assert!(!key_opens(&path, &old).unwrap());
        assert!(key_opens(&path, &new).unwrap());
        assert!(matches!(
            open(&path, Some(&old)),
            Err(EngineError::WrongStoreKey)
        ));
        let (db, _lock) = open(&path, Some(&new)).unwrap();
        assert_eq!(count(&db), 50);
        let mode: String = db
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        drop(db);
        assert!(found_in(&dir, SECRET.as_bytes()).is_empty());
    }
}
