//! Which key opens this device's store. Every store is encrypted; its key comes from, in
//! this order: a passphrase in `MUSTER_PASSPHRASE` (through Argon2id), a key file named by
//! `--key-file` (or `MUSTER_KEY_FILE`), the operating system's keyring (a new store's key is
//! kept there when one answers), or a passphrase typed at a prompt on the terminal.
//! A store an earlier version kept in plaintext is encrypted in place the first time it is
//! opened with one of them. Programs that run for a while (`chat`, `ui`, `archive serve`)
//! ask once and hold the store open.

use muster_engine::store_crypt::{self, StoreState};
use muster_engine::EngineError;
use muster_keystore::{
    check_new_passphrase, KeyFile, KeyParams, Protection, StoreKey, PASSPHRASE_VARIABLE,
};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// The store's file in a home directory.
const STORE_FILE: &str = "muster.db";
/// The environment variable with the new passphrase for `muster store rekey`.
pub(crate) const NEW_PASSPHRASE_VARIABLE: &str = "MUSTER_NEW_PASSPHRASE";

/// What the user gave to open the store with.
enum Secret<'a> {
    Passphrase(Zeroizing<String>),
    KeyFile(&'a Path),
    /// Nothing given: the key is in the OS keyring.
    Keyring,
}

impl Secret<'_> {
    fn protection(&self) -> Protection {
        match self {
            Secret::Passphrase(_) => Protection::Passphrase,
            Secret::KeyFile(_) => Protection::KeyFile,
            Secret::Keyring => Protection::Keyring,
        }
    }

    /// The key this secret gives under `params`.
    fn key_under(&self, params: &KeyParams, home: &Path) -> Result<StoreKey, EngineError> {
        match (self, params.protection) {
            (Secret::Passphrase(p), Protection::Passphrase) => Ok(params.derive(p)?),
            (Secret::KeyFile(path), Protection::KeyFile) => Ok(KeyFile::load(path, home)?),
            (Secret::Keyring, Protection::Keyring) => Ok(crate::os_keyring::key_of(params)?),
            (_, Protection::Keyring) => Err(EngineError::Invalid(format!(
                "this device's store keeps its key in the operating system's keyring: unset \
                 {PASSPHRASE_VARIABLE} and give no key file"
            ))),
            (Secret::Keyring, needs) => Err(muster_keystore::KeyError::NoKey { needs }.into()),
            (Secret::KeyFile(_), Protection::Passphrase) => Err(EngineError::Invalid(format!(
                "this device's store is protected by a passphrase: give it in \
                 {PASSPHRASE_VARIABLE} (or on the terminal), not a key file"
            ))),
            (Secret::Passphrase(_), Protection::KeyFile) => Err(EngineError::Invalid(format!(
                "this device's store is protected by a key file, not a passphrase: unset \
                 {PASSPHRASE_VARIABLE} and give --key-file (or MUSTER_KEY_FILE)"
            ))),
        }
    }
}

fn on_terminal() -> bool {
    use std::io::IsTerminal as _;
    std::io::stdin().is_terminal()
}

/// Asks for a new passphrase twice on the terminal.
fn prompt_new_passphrase(what: &str) -> Result<Zeroizing<String>, EngineError> {
    loop {
        let first = Zeroizing::new(rpassword::prompt_password(format!(
            "choose a passphrase for {what} (at least {} characters): ",
            muster_keystore::MIN_PASSPHRASE_CHARS
        ))?);
        if let Err(e) = check_new_passphrase(&first) {
            eprintln!("{e}");
            continue;
        }
        let again = Zeroizing::new(rpassword::prompt_password("the same passphrase again: ")?);
        if *first == *again {
            return Ok(first);
        }
        eprintln!("the two passphrases differ; again");
    }
}

fn prepare_home(home: &Path) -> Result<(), EngineError> {
    std::fs::create_dir_all(home)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let _ = std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o700));
    }
    Ok(())
}

fn missing_params() -> EngineError {
    EngineError::Invalid(format!(
        "this device's store is encrypted but {} (how its key is made) is missing",
        muster_keystore::PARAMS_FILE
    ))
}

/// The key for the store in `home`. A new store, or one an earlier version kept in
/// plaintext, gets its protection here: the passphrase or key file given, or a passphrase
/// chosen on the terminal; without any of them it is refused rather than kept readable.
pub(crate) fn resolve(
    home: &Path,
    key_file: Option<&Path>,
    passphrase: Option<&str>,
) -> Result<StoreKey, EngineError> {
    prepare_home(home)?;
    let params = KeyParams::load(home)?;
    let path = home.join(STORE_FILE);
    let state = store_crypt::state(&path)?;
    if params.as_ref().is_some_and(|p| p.encrypted) && state != StoreState::Encrypted {
        return Err(EngineError::Invalid(format!(
            "this device's store was encrypted ({} says so), but the store now in {} is {}: \
             refusing to use it (someone replaced it; remove {} only to start afresh)",
            muster_keystore::PARAMS_FILE,
            home.display(),
            if state == StoreState::Absent {
                "missing"
            } else {
                "not encrypted"
            },
            muster_keystore::PARAMS_FILE,
        )));
    }
    let Some(params) = params else {
        if state == StoreState::Encrypted {
            return Err(missing_params());
        }
        return protect_new(home, key_file, passphrase, state);
    };
    let secret = match (passphrase, key_file, params.protection) {
        (Some(p), _, _) => Secret::Passphrase(Zeroizing::new(p.to_string())),
        (None, Some(file), _) => Secret::KeyFile(file),
        (None, None, Protection::Keyring) => Secret::Keyring,
        (None, None, Protection::Passphrase) if on_terminal() => Secret::Passphrase(
            Zeroizing::new(rpassword::prompt_password("store passphrase: ")?),
        ),
        (None, None, needs) => return Err(muster_keystore::KeyError::NoKey { needs }.into()),
    };
    let Some(pending) = params.pending.as_deref() else {
        return secret.key_under(&params, home);
    };
    // A change of key was under way: the store is under the old key or the new one.
    if state == StoreState::Encrypted {
        if let Ok(key) = secret.key_under(&params, home) {
            if store_crypt::key_opens(&path, &key)? {
                let mut settled = params.clone();
                settled.pending = None;
                settled.save(home)?;
                return Ok(key);
            }
        }
        if secret.protection() == pending.protection {
            let key = secret.key_under(pending, home)?;
            if store_crypt::key_opens(&path, &key)? {
                let mut settled = pending.clone();
                settled.encrypted = true;
                settled.pending = None;
                settled.save(home)?;
                return Ok(key);
            }
        }
        return Err(EngineError::WrongStoreKey);
    }
    secret.key_under(&params, home)
}

/// Protection for a store with no parameters yet: new, or plaintext from an earlier version.
fn protect_new(
    home: &Path,
    key_file: Option<&Path>,
    passphrase: Option<&str>,
    state: StoreState,
) -> Result<StoreKey, EngineError> {
    if let Some(passphrase) = passphrase {
        check_new_passphrase(passphrase)?;
        let params = KeyParams::new_passphrase();
        let key = params.derive(passphrase)?;
        params.save(home)?;
        return Ok(key);
    }
    if let Some(key_file) = key_file {
        let key = if key_file.exists() {
            KeyFile::load(key_file, home)?
        } else {
            KeyFile::create(key_file)?
        };
        KeyParams::key_file().save(home)?;
        return Ok(key);
    }
    // The OS keyring, where there is one that answers.
    let keyring = crate::os_keyring::new_params();
    if let Ok((params, key)) = keyring {
        params.save(home)?;
        return Ok(key);
    }
    if on_terminal() {
        let what = if state == StoreState::Plaintext {
            "this device's store (kept unencrypted by an earlier version; it is encrypted now)"
        } else {
            "this device's store"
        };
        let passphrase = prompt_new_passphrase(what)?;
        let params = KeyParams::new_passphrase();
        let key = params.derive(&passphrase)?;
        params.save(home)?;
        return Ok(key);
    }
    let no_keyring = keyring.err().map(|e| e.to_string()).unwrap_or_default();
    Err(EngineError::Invalid(format!(
        "this device's store is kept encrypted, and no key was given: set {PASSPHRASE_VARIABLE}, \
         give --key-file FILE (or MUSTER_KEY_FILE; a new file is made, readable by you only), \
         run on a terminal to choose a passphrase, or in a session with a keyring ({no_keyring})"
    )))
}

/// Where `muster store rekey` moves the store's key.
pub(crate) enum NewProtection<'a> {
    /// A passphrase: from [`NEW_PASSPHRASE_VARIABLE`], else asked on the terminal.
    Passphrase(Option<&'a str>),
    /// A new key file at this path (which must not exist yet).
    KeyFile(PathBuf),
    /// A new key kept in the OS keyring.
    Keyring,
}

/// Changes the key of the encrypted store in `home` (`muster store rekey`). The new
/// parameters are recorded as pending first, so a crash at any point leaves a store that
/// one of the two keys opens, and the next open settles which.
pub(crate) fn rekey(
    home: &Path,
    key_file: Option<&Path>,
    passphrase: Option<&str>,
    to: NewProtection<'_>,
) -> Result<(), EngineError> {
    let path = home.join(STORE_FILE);
    if store_crypt::state(&path)? != StoreState::Encrypted {
        return Err(EngineError::Invalid(format!(
            "there is no encrypted store in {} to change the key of",
            home.display()
        )));
    }
    let old = resolve(home, key_file, passphrase)?;
    if !store_crypt::key_opens(&path, &old)? {
        return Err(EngineError::WrongStoreKey);
    }
    let (mut next, new) = match to {
        NewProtection::Passphrase(given) => {
            let passphrase = match given {
                Some(p) => Zeroizing::new(p.to_string()),
                None if on_terminal() => prompt_new_passphrase("this device's store")?,
                None => {
                    return Err(EngineError::Invalid(format!(
                        "give the new passphrase in {NEW_PASSPHRASE_VARIABLE} or run on a terminal"
                    )))
                }
            };
            check_new_passphrase(&passphrase)?;
            let params = KeyParams::new_passphrase();
            let key = params.derive(&passphrase)?;
            (params, key)
        }
        NewProtection::KeyFile(file) => {
            if file.exists() {
                return Err(EngineError::Invalid(format!(
                    "{} already exists: name a new file for the new key",
                    file.display()
                )));
            }
            (KeyParams::key_file(), KeyFile::create(&file)?)
        }
        NewProtection::Keyring => crate::os_keyring::new_params()?,
    };
    next.encrypted = true;
    let mut current = KeyParams::load(home)?.ok_or_else(missing_params)?;
    current.pending = Some(Box::new(next.clone()));
    current.save(home)?;
    store_crypt::rekey(&path, &old, &new)?;
    next.save(home)?;
    // The old key in the keyring opens nothing now.
    if let Some(entry) = current.keyring_entry.as_deref() {
        if next.keyring_entry.as_deref() != Some(entry) {
            if let Err(e) = crate::os_keyring::remove(entry) {
                eprintln!("warning: the old key is still in the keyring: {e}");
            }
        }
    }
    Ok(())
}

/// What `muster store status` says.
pub(crate) fn status(home: &Path) -> Result<String, EngineError> {
    let state = store_crypt::state(&home.join(STORE_FILE))?;
    let params = KeyParams::load(home)?;
    let store = home.join(STORE_FILE);
    Ok(match (state, params) {
        (StoreState::Absent, _) => format!("no store in {} yet", home.display()),
        (StoreState::Plaintext, _) => format!(
            "{}: not encrypted yet (an earlier version kept it so: anyone who can read the \
             home directory reads everything); the next command encrypts it with \
             {PASSPHRASE_VARIABLE}, --key-file or a passphrase chosen on the terminal",
            store.display()
        ),
        (StoreState::Encrypted, Some(params)) => {
            let guards = match params.protection {
                Protection::Passphrase => {
                    "a copy of the home directory is useless without the passphrase"
                }
                Protection::KeyFile => {
                    "a copy of the store is useless without the key file; whoever reads the \
                     key file reads the store"
                }
                Protection::Keyring => {
                    "a copy of the home directory is useless without your keyring; programs \
                     running as you while it is unlocked can read the key"
                }
            };
            format!(
                "{}: encrypted (SQLCipher, AES-256), key from {}: {guards}{}",
                store.display(),
                params.protection,
                if params.pending.is_some() {
                    " (a change of key was interrupted; the next open settles it)"
                } else {
                    ""
                }
            )
        }
        (StoreState::Encrypted, None) => format!(
            "{}: encrypted, but how its key is made ({}) is missing",
            store.display(),
            muster_keystore::PARAMS_FILE
        ),
    })
}

/// Records that the store in `home` is encrypted, once it has been opened with its key.
pub(crate) fn mark_encrypted(home: &Path) -> Result<(), EngineError> {
    if let Some(mut params) = KeyParams::load(home)? {
        if !params.encrypted {
            params.encrypted = true;
            params.save(home)?;
        }
    }
    Ok(())
}

/// The passphrase in `variable`, taken out of the environment (before any thread starts)
/// so no program this one starts inherits it.
pub(crate) fn take_passphrase(variable: &str) -> Option<Zeroizing<String>> {
    let passphrase = std::env::var(variable)
        .ok()
        .filter(|p| !p.is_empty())
        .map(Zeroizing::new);
    // Called first thing in `main`, while the process has one thread.
    std::env::remove_var(variable);
    passphrase
}
