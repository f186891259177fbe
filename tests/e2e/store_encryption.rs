//! Device stores encrypted at rest: nothing a conversation leaves in a home directory
//! reads in plaintext, a wrong passphrase changes nothing, the key can be changed, and a
//! plaintext store from an earlier version is encrypted in place with nothing lost.

use muster_e2e::{decrypted_copy, dir_contains, Device, Org};

const PASSPHRASE: &str = "correct horse battery staple";
const NEW_PASSPHRASE: &str = "tide tables for the night shift";

fn file_contains(path: &std::path::Path, needle: &[u8]) -> bool {
    std::fs::read(path)
        .unwrap()
        .windows(needle.len())
        .any(|w| w == needle)
}

#[test]
fn a_conversation_leaves_nothing_readable_in_an_encrypted_home_and_a_wrong_passphrase_changes_nothing(
) {
    let org = Org::new("store_encrypted");
    let code = org.admin.ok(&["invite", "bob"]).trim().to_string();
    // Nothing to encrypt with, and no terminal to ask on: refused, not kept readable.
    let keyless = Device::new(&org.dir, "bob").without_key_file();
    let refused = keyless.fails(&["join", &code, "--display-name", "Bob"]);
    assert!(refused.contains("no key was given"), "{refused}");
    let bob = keyless.with_env("MUSTER_PASSPHRASE", PASSPHRASE);
    bob.ok(&["join", &code, "--display-name", "Bob"]);
    org.admin.ok(&["approve", "bob"]);
    bob.ok(&["sync"]);
    org.admin
        .ok(&["group", "create", "pier-four-response", "--members", "bob"]);
    bob.ok(&["sync"]);
    org.admin
        .ok(&["send", "pier-four-response", "the gate code is 7741-alpha"]);
    bob.ok(&["sync"]);
    bob.ok(&[
        "send",
        "pier-four-response",
        "bob's reply in plaintext nowhere",
    ]);
    assert!(bob
        .texts("pier-four-response")
        .contains(&"the gate code is 7741-alpha".to_string()));
    let status = bob.ok(&["store", "status"]);
    assert!(
        status.contains("encrypted") && status.contains("passphrase"),
        "{status}"
    );
    let needles: [&[u8]; 3] = [
        b"the gate code is 7741-alpha",
        b"bob's reply in plaintext nowhere",
        b"pier-four-response",
    ];
    for home in [&bob.home, &org.admin.home] {
        for needle in needles {
            assert!(
                !dir_contains(home, needle),
                "{:?} readable in {}",
                String::from_utf8_lossy(needle),
                home.display()
            );
        }
    }
    org.admin.ok(&["sync"]);
    // The admin's device, keyed by a key file: its signing key and its store key appear
    // nowhere in its home either, while a decrypted copy holds all of them.
    let admin_key = org.admin.store_key();
    let signing_key: Vec<u8> = org
        .admin
        .open_store()
        .query_row("SELECT device_key FROM device WHERE id = 1", [], |r| {
            r.get(0)
        })
        .unwrap();
    let key_hex = hex::encode(admin_key.as_bytes());
    let plain = decrypted_copy(org.dir.path(), &org.admin, &admin_key);
    for needle in needles.iter().copied().chain([signing_key.as_slice()]) {
        assert!(
            file_contains(&plain, needle),
            "the decrypted copy lacks {:?}",
            String::from_utf8_lossy(needle)
        );
        assert!(
            !dir_contains(&org.admin.home, needle),
            "a needle in the admin's home"
        );
    }
    assert!(!dir_contains(&org.admin.home, admin_key.as_bytes()));
    assert!(!dir_contains(&org.admin.home, key_hex.as_bytes()));

    let store = std::fs::read(bob.home.join("muster.db")).unwrap();
    let wrong = bob
        .clone()
        .with_env("MUSTER_PASSPHRASE", "not the passphrase");
    let refused = wrong.fails(&["sync"]);
    assert!(refused.contains("wrong passphrase"), "{refused}");
    // Said once, in Muster's words: no SQLCipher log lines.
    assert_eq!(refused.trim().lines().count(), 1, "{refused}");
    let locked = Device::new(&org.dir, "bob")
        .without_key_file()
        .fails(&["groups"]);
    assert!(locked.contains("MUSTER_PASSPHRASE"), "{locked}");
    let wrong_rekey = wrong
        .with_env("MUSTER_NEW_PASSPHRASE", NEW_PASSPHRASE)
        .fails(&["store", "rekey"]);
    assert!(wrong_rekey.contains("wrong passphrase"), "{wrong_rekey}");
    assert_eq!(
        std::fs::read(bob.home.join("muster.db")).unwrap(),
        store,
        "a refused open changed the store"
    );
    assert!(bob
        .texts("pier-four-response")
        .contains(&"bob's reply in plaintext nowhere".to_string()));

    // A new passphrase: the old one no longer opens the store; everything is kept.
    let before = bob.texts("pier-four-response");
    let status = bob
        .clone()
        .with_env("MUSTER_NEW_PASSPHRASE", NEW_PASSPHRASE)
        .ok(&["store", "rekey"]);
    assert!(status.contains("passphrase"), "{status}");
    let refused = bob.fails(&["groups"]);
    assert!(refused.contains("wrong passphrase"), "{refused}");
    let bob = bob.with_env("MUSTER_PASSPHRASE", NEW_PASSPHRASE);
    assert_eq!(bob.texts("pier-four-response"), before);
    // Then to a key file, for a device that runs unattended.
    let key_file = org.dir.path().join("keys").join("bob-moved.key");
    let status = bob.ok(&[
        "store",
        "rekey",
        "--new-key-file",
        key_file.to_str().unwrap(),
    ]);
    assert!(status.contains("key file"), "{status}");
    let bob = bob
        .without_key_file()
        .with_env("MUSTER_PASSPHRASE", "")
        .with_env("MUSTER_KEY_FILE", key_file.to_str().unwrap());
    assert_eq!(bob.texts("pier-four-response"), before);
    for needle in needles {
        assert!(!dir_contains(&bob.home, needle));
    }

    // A plaintext store put in its place (keeping the key parameters) is refused, not
    // adopted and encrypted under bob's key.
    let planted = rusqlite::Connection::open(org.dir.path().join("planted.db")).unwrap();
    planted
        .execute_batch("CREATE TABLE device (id INTEGER PRIMARY KEY)")
        .unwrap();
    drop(planted);
    std::fs::rename(
        bob.home.join("muster.db"),
        org.dir.path().join("bob-real.db"),
    )
    .unwrap();
    std::fs::copy(
        org.dir.path().join("planted.db"),
        bob.home.join("muster.db"),
    )
    .unwrap();
    let refused = bob.fails(&["groups"]);
    assert!(refused.contains("refusing to use it"), "{refused}");
}

#[test]
fn a_plaintext_store_from_the_previous_version_is_encrypted_in_place_and_keeps_every_message() {
    let org = Org::new("store_migrated");
    let bob = org.enrol("bob");
    org.admin
        .ok(&["group", "create", "night-shift", "--members", "bob"]);
    bob.ok(&["sync"]);
    for i in 0..5 {
        org.admin
            .ok(&["send", "night-shift", &format!("handover note {i}")]);
    }
    bob.ok(&["sync"]);
    let before = bob.texts("night-shift");
    let groups_before = bob.ok(&["groups"]);

    // The previous version kept the same store in plaintext, with no key parameters.
    let plain = decrypted_copy(org.dir.path(), &bob, &bob.store_key());
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(bob.home.join(format!("muster.db{suffix}")));
    }
    std::fs::rename(&plain, bob.home.join("muster.db")).unwrap();
    std::fs::remove_file(bob.home.join("muster.key.json")).unwrap();
    let key_file = std::path::PathBuf::from(bob.env_var("MUSTER_KEY_FILE").unwrap());
    std::fs::remove_file(&key_file).unwrap();
    assert!(
        dir_contains(&bob.home, b"handover note 3"),
        "the old store was plaintext"
    );
    let status = bob.ok(&["store", "status"]);
    assert!(status.contains("not encrypted yet"), "{status}");

    // Not while another muster process has it open (it holds the lock file shared).
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(bob.home.join("muster.db.lock"))
        .unwrap();
    lock.lock_shared().unwrap();
    let refused = bob.fails(&["groups"]);
    assert!(refused.contains("another muster process"), "{refused}");
    assert!(
        dir_contains(&bob.home, b"handover note 3"),
        "changed while in use"
    );
    lock.unlock().unwrap();

    // The first command of the new version encrypts it, with everything kept.
    assert_eq!(bob.ok(&["groups"]), groups_before);
    assert_eq!(
        bob.texts("night-shift"),
        before,
        "messages lost in the move"
    );
    let status = bob.ok(&["store", "status"]);
    assert!(
        status.contains("encrypted") && status.contains("key file"),
        "{status}"
    );
    assert!(
        !dir_contains(&bob.home, b"handover note"),
        "plaintext left behind"
    );
    assert!(!dir_contains(&bob.home, b"night-shift"));
    org.admin.ok(&["send", "night-shift", "after the move"]);
    bob.ok(&["sync"]);
    assert!(bob
        .texts("night-shift")
        .contains(&"after the move".to_string()));

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "the key file was made readable by others"
        );
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let refused = bob.fails(&["sync"]);
        assert!(refused.contains("chmod 600"), "{refused}");
    }
}

/// A private D-Bus session with an unlocked GNOME keyring, stopped when dropped.
struct KeyringSession {
    address: String,
    bus_pid: u32,
    _dir: muster_e2e::TempDir,
}

impl KeyringSession {
    /// `None` where Debian's dbus-daemon or gnome-keyring is not installed.
    fn start() -> Option<Self> {
        use std::process::{Command, Stdio};
        for program in ["/usr/bin/dbus-daemon", "/usr/bin/gnome-keyring-daemon"] {
            if !std::path::Path::new(program).exists() {
                println!("SKIPPED: {program} is not installed");
                return None;
            }
        }
        let dir = muster_e2e::TempDir::new("keyring-session");
        let runtime = dir.path().join("run");
        std::fs::create_dir_all(&runtime).unwrap();
        let envs = [
            ("HOME", dir.path().to_path_buf()),
            ("XDG_RUNTIME_DIR", runtime),
            ("XDG_DATA_HOME", dir.path().join("data")),
        ];
        let bus = Command::new("/usr/bin/dbus-daemon")
            .args(["--session", "--fork", "--print-address=1", "--print-pid=1"])
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .stderr(Stdio::null())
            .output()
            .expect("start dbus-daemon");
        let printed = String::from_utf8_lossy(&bus.stdout).into_owned();
        let mut lines = printed.lines();
        let address = lines.next().expect("bus address").to_string();
        let bus_pid: u32 = lines.next().expect("bus pid").trim().parse().unwrap();
        let mut keyring = Command::new("/usr/bin/gnome-keyring-daemon")
            .args(["--components=secrets", "--daemonize", "--unlock"])
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .env("DBUS_SESSION_BUS_ADDRESS", &address)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start gnome-keyring-daemon");
        use std::io::Write as _;
        keyring
            .stdin
            .take()
            .unwrap()
            .write_all(b"login keyring password")
            .unwrap();
        keyring.wait().unwrap();
        Some(Self {
            address,
            bus_pid,
            _dir: dir,
        })
    }
}

impl Drop for KeyringSession {
    fn drop(&mut self) {
        // The keyring daemon leaves with its bus.
        let _ = std::process::Command::new("kill")
            .arg(self.bus_pid.to_string())
            .status();
    }
}

#[test]
fn a_new_store_keeps_its_key_in_the_os_keyring_where_one_answers() {
    let Some(session) = KeyringSession::start() else {
        return;
    };
    let org = Org::new("store_keyring");
    let code = org.admin.ok(&["invite", "bob"]).trim().to_string();
    let bob = Device::new(&org.dir, "bob")
        .without_key_file()
        .with_env("DBUS_SESSION_BUS_ADDRESS", &session.address);
    bob.ok(&["join", &code, "--display-name", "Bob"]);
    org.admin.ok(&["approve", "bob"]);
    bob.ok(&["sync"]);
    org.admin
        .ok(&["group", "create", "keyring-room", "--members", "bob"]);
    org.admin
        .ok(&["send", "keyring-room", "kept under the login keyring"]);
    bob.ok(&["sync"]);
    assert!(bob
        .texts("keyring-room")
        .contains(&"kept under the login keyring".to_string()));
    let status = bob.ok(&["store", "status"]);
    assert!(status.contains("keyring"), "{status}");
    for needle in [&b"kept under the login keyring"[..], b"keyring-room"] {
        assert!(!dir_contains(&bob.home, needle));
    }

    // Away from the session that holds the keyring, the store does not open.
    let store = std::fs::read(bob.home.join("muster.db")).unwrap();
    let elsewhere = bob
        .clone()
        .with_env("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent/bus");
    let refused = elsewhere.fails(&["groups"]);
    assert!(refused.contains("keyring"), "{refused}");
    assert_eq!(std::fs::read(bob.home.join("muster.db")).unwrap(), store);

    // The key moves to a key file and back into the keyring, with everything kept.
    let key_file = org.dir.path().join("keys").join("bob-from-keyring.key");
    let moved = bob.ok(&[
        "store",
        "rekey",
        "--new-key-file",
        key_file.to_str().unwrap(),
    ]);
    assert!(moved.contains("key file"), "{moved}");
    let by_file = bob
        .clone()
        .with_env("MUSTER_KEY_FILE", key_file.to_str().unwrap());
    let back = by_file.ok(&["store", "rekey", "--to-keyring"]);
    assert!(back.contains("keyring"), "{back}");
    assert!(bob
        .texts("keyring-room")
        .contains(&"kept under the login keyring".to_string()));
}
