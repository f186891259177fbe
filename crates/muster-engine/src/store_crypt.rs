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
    let db = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    match readable(&db) {
        Ok(()) => Ok(StoreState::Plaintext),
        Err(e) if not_a_database(&e) => Ok(StoreState::Encrypted),
        Err(e) => Err(e.into()),
    }
}

/// Opens the store at `path`: with `key`, encrypted (creating it encrypted, or encrypting a
/// plaintext one first); without, plaintext only.
pub fn open(path: &Path, key: Option<&StoreKey>) -> Result<Connection, EngineError> {
    let state = state(path)?;
    let Some(key) = key else {
        if state == StoreState::Encrypted {
            return Err(EngineError::StoreLocked);
        }
        return Ok(Connection::open(path)?);
    };
    if state == StoreState::Plaintext {
        encrypt_in_place(path, key)?;
    }
    let db = Connection::open(path)?;
    apply_key(&db, key)?;
    match readable(&db) {
        Ok(()) => Ok(db),
        Err(e) if not_a_database(&e) => Err(EngineError::WrongStoreKey),
        Err(e) => Err(e.into()),
    }
}

/// Re-encrypts the open store under `new` (`PRAGMA rekey`).
pub fn rekey(db: &Connection, new: &StoreKey) -> Result<(), EngineError> {
    db.pragma_update(None, "rekey", new.sqlcipher_pragma().as_str())?;
    Ok(())
}

fn apply_key(db: &Connection, key: &StoreKey) -> Result<(), EngineError> {
    // A wrong key is reported as an error here; SQLCipher's own log would print it to
    // stderr as well.
    db.pragma_update(None, "cipher_log_level", "NONE")?;
    db.pragma_update(None, "key", key.sqlcipher_pragma().as_str())?;
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
        plain.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
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
            let db = open(&path, Some(&key)).unwrap();
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
        assert_eq!(count(&open(&path, Some(&key)).unwrap()), 50);
    }

    #[test]
    fn a_plaintext_store_is_encrypted_in_place_with_everything_kept_and_no_plaintext_left() {
        let dir = scratch("migrate");
        let path = dir.join("muster.db");
        {
            let db = open(&path, None).unwrap();
            fill(&db);
            db.execute_batch("PRAGMA user_version = 7").unwrap();
            assert!(!found_in(&dir, SECRET.as_bytes()).is_empty());
        }
        let key = StoreKey::generate();
        let db = open(&path, Some(&key)).unwrap();
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
    fn rekeying_moves_the_store_to_the_new_key() {
        let dir = scratch("rekey");
        let path = dir.join("muster.db");
        let (old, new) = (StoreKey::generate(), StoreKey::generate());
        {
            let db = open(&path, Some(&old)).unwrap();
            fill(&db);
            rekey(&db, &new).unwrap();
        }
        assert!(matches!(
            open(&path, Some(&old)),
            Err(EngineError::WrongStoreKey)
        ));
        assert_eq!(count(&open(&path, Some(&new)).unwrap()), 50);
    }
}
