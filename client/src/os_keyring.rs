//! The operating system's keyring (Secret Service on Linux, Keychain on macOS) as the
//! home of a store's key: a random key kept there, under the entry named in
//! `muster.key.json`, and unlocked with the user's login. A copy of the home
//! directory is useless without it; a program running as the user while the keyring is
//! unlocked can read it, as it can read the user's other secrets.
//!
//! Every call runs on a thread of its own with a deadline: the Secret Service client
//! must not run on an async runtime's thread, and a session bus with no keyring behind
//! it can leave a call waiting for D-Bus's own timeout.

use muster_keystore::{KeyError, KeyParams, StoreKey};
use std::time::Duration;

/// The keyring's service name for Muster's entries.
const SERVICE: &str = "muster-store";
/// How long a keyring may take to answer before it is taken as unavailable.
const DEADLINE: Duration = Duration::from_secs(5);

fn on_own_thread<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, keyring::Error> + Send + 'static,
) -> Result<T, KeyError> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("os-keyring".into())
        .spawn(move || {
            let _ = tx.send(work());
        })
        .map_err(|e| KeyError::Keyring(format!("cannot start: {e}")))?;
    match rx.recv_timeout(DEADLINE) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(keyring::Error::NoEntry)) => Err(KeyError::Keyring(
            "the keyring has no key for this store (was it made under another login?)".into(),
        )),
        Ok(Err(e)) => Err(KeyError::Keyring(e.to_string())),
        Err(_) => Err(KeyError::Keyring(format!(
            "the keyring did not answer within {} s",
            DEADLINE.as_secs()
        ))),
    }
}

/// Keeps a new random key in the keyring under `entry`; returns it.
pub(crate) fn create(entry: &str) -> Result<StoreKey, KeyError> {
    let key = StoreKey::generate();
    let secret = zeroize::Zeroizing::new(hex::encode(key.as_bytes()));
    let entry = entry.to_string();
    on_own_thread(move || {
        let item = keyring::Entry::new(SERVICE, &entry)?;
        item.set_password(&secret)?;
        // Read back: some keyrings accept a write they do not keep (a locked or
        // missing default collection).
        let kept = zeroize::Zeroizing::new(item.get_password()?);
        if *kept != *secret {
            return Err(keyring::Error::Invalid(
                "key".into(),
                "the keyring did not keep it".into(),
            ));
        }
        Ok(())
    })?;
    Ok(key)
}

/// The key kept in the keyring under `entry`.
pub(crate) fn load(entry: &str) -> Result<StoreKey, KeyError> {
    let entry = entry.to_string();
    let text = zeroize::Zeroizing::new(on_own_thread(move || {
        keyring::Entry::new(SERVICE, &entry)?.get_password()
    })?);
    let bytes = zeroize::Zeroizing::new(
        hex::decode(text.trim())
            .map_err(|_| KeyError::Keyring("the keyring's entry is not a store key".into()))?,
    );
    let key: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| KeyError::Keyring("the keyring's entry is not a store key".into()))?;
    Ok(StoreKey::from_bytes(key))
}

/// Removes the entry (after the store moved to another key).
pub(crate) fn remove(entry: &str) -> Result<(), KeyError> {
    let entry = entry.to_string();
    on_own_thread(move || keyring::Entry::new(SERVICE, &entry)?.delete_credential())
}

/// Parameters for a new store key kept in the keyring under a new entry; returns them and
/// the key, already stored there.
pub(crate) fn new_params() -> Result<(KeyParams, StoreKey), KeyError> {
    let id = StoreKey::generate();
    let entry = format!("store-{}", hex::encode(&id.as_bytes()[..16]));
    let key = create(&entry)?;
    Ok((KeyParams::keyring(entry), key))
}

/// The key `params` keep in the keyring.
pub(crate) fn key_of(params: &KeyParams) -> Result<StoreKey, KeyError> {
    let entry = params
        .keyring_entry
        .as_deref()
        .ok_or_else(|| KeyError::Keyring("muster.key.json names no keyring entry".into()))?;
    load(entry)
}
