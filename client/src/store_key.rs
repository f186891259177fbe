//! Which key opens this device's store: `MUSTER_PASSPHRASE` always wins (through
//! Argon2id); otherwise `--key-file`; otherwise, for a store protected by a passphrase, a
//! prompt on the terminal. A store with no protection yet stays as it is unless one of
//! them is given, and is then encrypted in place.

use muster_engine::store_crypt::{self, StoreState};
use muster_engine::EngineError;
use muster_keystore::{
    check_new_passphrase, KeyFile, KeyParams, Protection, StoreKey, PASSPHRASE_VARIABLE,
};
use std::path::Path;

/// The store's file in a home directory.
const STORE_FILE: &str = "muster.db";

/// The key for the store in `home`, or `None` for a store kept in plaintext.
pub(crate) fn resolve(
    home: &Path,
    key_file: Option<&Path>,
    passphrase: Option<&str>,
) -> Result<Option<StoreKey>, EngineError> {
    std::fs::create_dir_all(home)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let _ = std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o700));
    }
    let params = KeyParams::load(home)?;
    let state = store_crypt::state(&home.join(STORE_FILE))?;
    let missing_params = || {
        EngineError::Invalid(format!(
            "this device's store is encrypted but {} (how its key is made) is missing",
            muster_keystore::PARAMS_FILE
        ))
    };
    if params.as_ref().is_some_and(|p| p.encrypted) && state != StoreState::Encrypted {
        {
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
    }
    if let Some(passphrase) = passphrase {
        return match params {
            Some(p) if p.protection == Protection::Passphrase => Ok(Some(p.derive(passphrase)?)),
            Some(_) => Err(EngineError::Invalid(format!(
                "this device's store is protected by a key file, not a passphrase: unset {PASSPHRASE_VARIABLE} and give --key-file"
            ))),
            None if state == StoreState::Encrypted => Err(missing_params()),
            None => {
                check_new_passphrase(passphrase)?;
                let params = KeyParams::new_passphrase();
                let key = params.derive(passphrase)?;
                params.save(home)?;
                Ok(Some(key))
            }
        };
    }
    if let Some(key_file) = key_file {
        return match params {
            Some(p) if p.protection == Protection::Passphrase => Err(EngineError::Invalid(
                format!("this device's store is protected by a passphrase: give it in {PASSPHRASE_VARIABLE} (or on the terminal), not a key file"),
            )),
            Some(_) => Ok(Some(KeyFile::load(key_file, home)?)),
            None if state == StoreState::Encrypted => Err(missing_params()),
            None => {
                let key = if key_file.exists() {
                    KeyFile::load(key_file, home)?
                } else {
                    KeyFile::create(key_file)?
                };
                KeyParams::key_file().save(home)?;
                Ok(Some(key))
            }
        };
    }
    match params.map(|p| (p.protection, p)) {
        Some((Protection::Passphrase, params)) => {
            use std::io::IsTerminal as _;
            if !std::io::stdin().is_terminal() {
                return Err(EngineError::StoreLocked);
            }
            let passphrase =
                zeroize::Zeroizing::new(rpassword::prompt_password("store passphrase: ")?);
            Ok(Some(params.derive(&passphrase)?))
        }
        Some((Protection::KeyFile, _)) => Err(EngineError::Invalid(
            "this device's store is protected by a key file: give --key-file (or MUSTER_KEY_FILE)"
                .into(),
        )),
        None if state == StoreState::Encrypted => Err(missing_params()),
        None => Ok(None),
    }
}

/// What `muster store status` says.
pub(crate) fn status(home: &Path) -> Result<String, EngineError> {
    let state = store_crypt::state(&home.join(STORE_FILE))?;
    let params = KeyParams::load(home)?;
    Ok(match (state, params) {
        (StoreState::Absent, _) => format!("no store in {} yet", home.display()),
        (StoreState::Plaintext, _) => format!(
            "{}: not encrypted (anyone who can read the home directory reads everything); \
             encrypt it by giving {PASSPHRASE_VARIABLE} or --key-file",
            home.join(STORE_FILE).display()
        ),
        (StoreState::Encrypted, Some(params)) => format!(
            "{}: encrypted (SQLCipher, AES-256), key from {}",
            home.join(STORE_FILE).display(),
            params.protection
        ),
        (StoreState::Encrypted, None) => format!(
            "{}: encrypted, but how its key is made ({}) is missing",
            home.join(STORE_FILE).display(),
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

/// The passphrase in [`PASSPHRASE_VARIABLE`], taken out of the environment (before any
/// thread starts) so no program this one starts inherits it.
pub(crate) fn take_passphrase() -> Option<zeroize::Zeroizing<String>> {
    let passphrase = std::env::var(PASSPHRASE_VARIABLE)
        .ok()
        .filter(|p| !p.is_empty())
        .map(zeroize::Zeroizing::new);
    // Called first thing in `main`, while the process has one thread.
    std::env::remove_var(PASSPHRASE_VARIABLE);
    passphrase
}
