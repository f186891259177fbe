//! Where the key that encrypts a device's store comes from.
//!
//! A store is encrypted with a 256-bit [`StoreKey`]. The key is either derived from a
//! passphrase with Argon2id, under a salt and cost kept beside the store in
//! [`PARAMS_FILE`] (nothing secret: the salt only keeps one passphrase from giving the
//! same key on two devices), or read from a key file of its own that only its owner may
//! read. What each protects against:
//!
//! - a passphrase: a copy of the home directory (a stolen backup, a lost disk) is useless
//!   without it; the passphrase must be typed or given to every program that opens the
//!   store, and a weak one can be guessed offline, slowly (Argon2id, 64 MiB per guess);
//! - a key file: the store can be copied alone without giving anything away (a backup of
//!   the store without the key file), but anyone who can read the key file can read the
//!   store; for servers, kept on another volume or a secrets mount.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// The file beside the store that says how its key is made.
pub const PARAMS_FILE: &str = "muster.key.json";
/// The environment variable whose passphrase, when set, opens the store.
pub const PASSPHRASE_VARIABLE: &str = "MUSTER_PASSPHRASE";
/// The shortest passphrase accepted for a new store.
pub const MIN_PASSPHRASE_CHARS: usize = 12;

const KEY_BYTES: usize = 32;
const MEMORY_KIB: u32 = 64 * 1024;
const ITERATIONS: u32 = 3;
const PARALLELISM: u32 = 1;
/// The most a parameters file may ask of this device (a tampered file cannot make every
/// start take minutes or all memory).
const MAX_MEMORY_KIB: u32 = 1024 * 1024;
const MAX_ITERATIONS: u32 = 20;

/// The key a store is encrypted with; wiped from memory when dropped.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct StoreKey([u8; KEY_BYTES]);

impl std::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreKey(..)")
    }
}

impl StoreKey {
    /// A new random key.
    pub fn generate() -> Self {
        use ring::rand::SecureRandom as _;
        let mut key = [0u8; KEY_BYTES];
        ring::rand::SystemRandom::new()
            .fill(&mut key)
            .expect("the system's random source works");
        Self(key)
    }

    /// The value of SQLCipher's `PRAGMA key` for this raw key (no second derivation).
    pub fn sqlcipher_pragma(&self) -> zeroize::Zeroizing<String> {
        let hex = zeroize::Zeroizing::new(hex::encode(self.0));
        zeroize::Zeroizing::new(format!("x'{}'", hex.as_str()))
    }

    /// A key from its raw bytes (as kept in a keyring).
    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; KEY_BYTES] {
        &self.0
    }
}

/// How a store's key is protected, as [`PARAMS_FILE`] records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protection {
    /// Derived from a passphrase.
    Passphrase,
    /// Read from a key file.
    KeyFile,
    /// Kept in the operating system's keyring.
    Keyring,
}

impl std::fmt::Display for Protection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protection::Passphrase => "a passphrase (Argon2id)",
            Protection::KeyFile => "a key file",
            Protection::Keyring => "the operating system's keyring",
        })
    }
}

/// What [`PARAMS_FILE`] holds: how the key is made, never the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyParams {
    pub version: u32,
    pub protection: Protection,
    /// The store has been encrypted: a plaintext or missing store beside these parameters
    /// was put there by someone else and is refused.
    #[serde(default)]
    pub encrypted: bool,
    /// Argon2id's cost and salt (hex), for a passphrase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argon2id: Option<Argon2idParams>,
    /// The keyring entry that holds the key, for [`Protection::Keyring`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyring_entry: Option<String>,
    /// A change of key under way (`muster store rekey`): until it is recorded as done, the
    /// store is under either these parameters or the pending ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Box<KeyParams>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Argon2idParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    pub salt: String,
}

/// Why no key could be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the passphrase must be at least {MIN_PASSPHRASE_CHARS} characters")]
    WeakPassphrase,
    #[error(
        "the key file {0} may be read by other users: it must be readable by its owner only (chmod 600)"
    )]
    KeyFileOpen(PathBuf),
    #[error("the key file {path} is not a Muster store key: {reason}")]
    NotAKeyFile { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    BadParams { path: PathBuf, reason: String },
    #[error(
        "the store is protected by {needs}, and none was given (a passphrase in MUSTER_PASSPHRASE \
         or on a terminal; a key file with --key-file or MUSTER_KEY_FILE)"
    )]
    NoKey { needs: Protection },
    #[error("the operating system's keyring: {0}")]
    Keyring(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl KeyParams {
    /// Parameters for a new passphrase-protected store, with a fresh salt.
    pub fn new_passphrase() -> Self {
        use ring::rand::SecureRandom as _;
        let mut salt = [0u8; 16];
        ring::rand::SystemRandom::new()
            .fill(&mut salt)
            .expect("the system's random source works");
        Self {
            version: 1,
            protection: Protection::Passphrase,
            encrypted: false,
            argon2id: Some(Argon2idParams {
                memory_kib: MEMORY_KIB,
                iterations: ITERATIONS,
                parallelism: PARALLELISM,
                salt: hex::encode(salt),
            }),
            keyring_entry: None,
            pending: None,
        }
    }

    pub fn key_file() -> Self {
        Self {
            version: 1,
            protection: Protection::KeyFile,
            encrypted: false,
            argon2id: None,
            keyring_entry: None,
            pending: None,
        }
    }

    /// Parameters for a key kept in the OS keyring under the entry `entry`.
    pub fn keyring(entry: String) -> Self {
        Self {
            version: 1,
            protection: Protection::Keyring,
            encrypted: false,
            argon2id: None,
            keyring_entry: Some(entry),
            pending: None,
        }
    }

    /// The parameters beside the store in `home`, if it has any.
    pub fn load(home: &Path) -> Result<Option<Self>, KeyError> {
        let path = home.join(PARAMS_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path)(e)),
        };
        let bad = |reason: String| KeyError::BadParams {
            path: path.clone(),
            reason,
        };
        let params: Self = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if params.version != 1 {
            return Err(bad(format!(
                "version {} is newer than this program",
                params.version
            )));
        }
        if params.protection == Protection::Passphrase && params.argon2id.is_none() {
            return Err(bad("a passphrase store without Argon2id parameters".into()));
        }
        Ok(Some(params))
    }

    /// Writes the parameters beside the store in `home` (atomically).
    pub fn save(&self, home: &Path) -> Result<(), KeyError> {
        let path = home.join(PARAMS_FILE);
        let partial = home.join(format!("{PARAMS_FILE}.new"));
        let text = serde_json::to_string_pretty(self).expect("parameters encode");
        // Whatever stands at the temporary name (a planted link) is removed, not followed.
        match std::fs::remove_file(&partial) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&partial)(e)),
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&partial)
            .map_err(io(&partial))?;
        use std::io::Write as _;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io(&partial))?;
        std::fs::rename(&partial, &path).map_err(io(&path))?;
        sync_dir(home)
    }

    /// The key `passphrase` gives under these parameters.
    pub fn derive(&self, passphrase: &str) -> Result<StoreKey, KeyError> {
        let bad = |reason: String| KeyError::BadParams {
            path: PathBuf::from(PARAMS_FILE),
            reason,
        };
        let kdf = self
            .argon2id
            .as_ref()
            .ok_or_else(|| bad("no Argon2id parameters".into()))?;
        if kdf.memory_kib > MAX_MEMORY_KIB || kdf.iterations > MAX_ITERATIONS {
            return Err(bad(
                "the key derivation asks for more than this device allows".into(),
            ));
        }
        // Never less than a new store gets: a tampered file must not make the owner's
        // passphrase cheap to guess.
        if kdf.memory_kib < MEMORY_KIB || kdf.iterations < ITERATIONS || kdf.parallelism < 1 {
            return Err(bad("the key derivation is weaker than Muster allows".into()));
        }
        let salt = hex::decode(&kdf.salt).map_err(|_| bad("the salt is not hex".into()))?;
        if salt.len() < 16 {
            return Err(bad("the salt is shorter than 16 bytes".into()));
        }
        let params = argon2::Params::new(
            kdf.memory_kib,
            kdf.iterations,
            kdf.parallelism,
            Some(KEY_BYTES),
        )
        .map_err(|e| bad(format!("key derivation parameters: {e}")))?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut key = [0u8; KEY_BYTES];
        argon
            .hash_password_into(passphrase.as_bytes(), &salt, &mut key)
            .map_err(|e| bad(format!("key derivation: {e}")))?;
        let key = StoreKey(key);
        Ok(key)
    }
}

/// Linux's `O_NOFOLLOW`: opening a symbolic link fails.
#[cfg(unix)]
const O_NOFOLLOW: i32 = 0o400_000;

fn sync_dir(dir: &Path) -> Result<(), KeyError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// Refuses a passphrase too short for a new store.
pub fn check_new_passphrase(passphrase: &str) -> Result<(), KeyError> {
    if passphrase.chars().count() < MIN_PASSPHRASE_CHARS {
        return Err(KeyError::WeakPassphrase);
    }
    Ok(())
}

/// A key file: 64 hex digits and a newline, readable by its owner only.
pub struct KeyFile;

impl KeyFile {
    /// Reads the key in `path`, refusing a link, a file others may read, and a file that
    /// belongs to another user than `owner_of`'s (the home directory it protects).
    pub fn load(path: &Path, owner_of: &Path) -> Result<StoreKey, KeyError> {
        let mut options = std::fs::OpenOptions::new();
        options.read(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.custom_flags(O_NOFOLLOW);
        }
        let mut file = options.open(path).map_err(|e| {
            if path.is_symlink() {
                KeyError::NotAKeyFile {
                    path: path.to_path_buf(),
                    reason: "it is a symbolic link".into(),
                }
            } else {
                io(path)(e)
            }
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt as _;
            // The file as opened, not whatever the name points to by now.
            let opened = file.metadata().map_err(io(path))?;
            if opened.mode() & 0o077 != 0 {
                return Err(KeyError::KeyFileOpen(path.to_path_buf()));
            }
            let owner = std::fs::metadata(owner_of).map_err(io(owner_of))?.uid();
            if opened.uid() != owner {
                return Err(KeyError::NotAKeyFile {
                    path: path.to_path_buf(),
                    reason: format!(
                        "it belongs to another user than the one who owns {}",
                        owner_of.display()
                    ),
                });
            }
        }
        let mut text = zeroize::Zeroizing::new(String::new());
        use std::io::Read as _;
        file.read_to_string(&mut text).map_err(io(path))?;
        let not_a_key = |reason: &str| KeyError::NotAKeyFile {
            path: path.to_path_buf(),
            reason: reason.into(),
        };
        let mut bytes = zeroize::Zeroizing::new(
            hex::decode(text.trim()).map_err(|_| not_a_key("it is not hex"))?,
        );
        let key: [u8; KEY_BYTES] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| not_a_key("it does not hold 32 bytes"))?;
        bytes.zeroize();
        Ok(StoreKey(key))
    }

    /// Writes a new random key to `path` (which must not exist), readable by its owner
    /// only.
    pub fn create(path: &Path) -> Result<StoreKey, KeyError> {
        let key = StoreKey::generate();
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(io(path))?;
        let text = zeroize::Zeroizing::new(format!("{}\n", hex::encode(key.as_bytes())));
        use std::io::Write as _;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io(path))?;
        // The key's name is durable before anything is encrypted with it.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            sync_dir(dir)?;
        }
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("muster-keystore-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_passphrase_gives_the_same_key_under_the_saved_parameters_and_another_does_not() {
        let home = scratch("passphrase");
        let params = KeyParams::new_passphrase();
        params.save(&home).unwrap();
        let loaded = KeyParams::load(&home).unwrap().unwrap();
        assert_eq!(loaded, params);
        let key = loaded.derive("correct horse battery").unwrap();
        assert_eq!(key, params.derive("correct horse battery").unwrap());
        assert_ne!(key, params.derive("correct horse batterY").unwrap());
        // Another store's salt gives another key for the same passphrase.
        assert_ne!(
            key,
            KeyParams::new_passphrase()
                .derive("correct horse battery")
                .unwrap()
        );
        let text = std::fs::read_to_string(home.join(PARAMS_FILE)).unwrap();
        assert!(!text.contains(&hex::encode(key.as_bytes())));
    }

    #[test]
    fn a_short_passphrase_is_refused_for_a_new_store() {
        assert!(matches!(
            check_new_passphrase("short"),
            Err(KeyError::WeakPassphrase)
        ));
        check_new_passphrase("a long enough one").unwrap();
    }

    #[test]
    fn parameters_asking_too_much_or_from_a_newer_version_are_refused() {
        let home = scratch("costly");
        let mut params = KeyParams::new_passphrase();
        params.argon2id.as_mut().unwrap().memory_kib = 64 * 1024 * 1024;
        assert!(params
            .derive("correct horse battery")
            .unwrap_err()
            .to_string()
            .contains("more than"));
        let mut cheap = KeyParams::new_passphrase();
        cheap.argon2id.as_mut().unwrap().memory_kib = 8;
        let refused = cheap.derive("correct horse battery").unwrap_err();
        assert!(refused.to_string().contains("weaker"), "{refused}");
        let mut short_salt = KeyParams::new_passphrase();
        short_salt.argon2id.as_mut().unwrap().salt = "00".into();
        let refused = short_salt.derive("correct horse battery").unwrap_err();
        assert!(refused.to_string().contains("salt"), "{refused}");
        let mut newer = KeyParams::key_file();
        newer.version = 2;
        newer.save(&home).unwrap();
        assert!(KeyParams::load(&home)
            .unwrap_err()
            .to_string()
            .contains("newer"));
        std::fs::write(home.join(PARAMS_FILE), "{").unwrap();
        assert!(KeyParams::load(&home)
            .unwrap_err()
            .to_string()
            .contains(PARAMS_FILE));
    }

    #[test]
    fn a_key_file_is_made_for_its_owner_alone_and_refused_when_others_may_read_it() {
        let home = scratch("key-file");
        let path = home.join("store.key");
        let key = KeyFile::create(&path).unwrap();
        assert_eq!(KeyFile::load(&path, &home).unwrap(), key);
        assert!(
            KeyFile::create(&path).is_err(),
            "an existing key file was replaced"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(matches!(
                KeyFile::load(&path, &home),
                Err(KeyError::KeyFileOpen(_))
            ));
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            let link = home.join("link.key");
            std::os::unix::fs::symlink(&path, &link).unwrap();
            let refused = KeyFile::load(&link, &home).unwrap_err().to_string();
            assert!(refused.contains("symbolic link"), "{refused}");
        }
        std::fs::write(&path, "not a key\n").unwrap();
        assert!(KeyFile::load(&path, &home)
            .unwrap_err()
            .to_string()
            .contains("not hex"));
    }

    #[test]
    fn a_key_never_shows_in_debug_output() {
        let key = StoreKey::generate();
        assert_eq!(format!("{key:?}"), "StoreKey(..)");
        assert!(key.sqlcipher_pragma().starts_with("x'"));
    }
}
