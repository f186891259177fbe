//! Device stores encrypted at rest: nothing a conversation leaves in a home directory
//! reads in plaintext, a wrong passphrase changes nothing, and a plaintext store from an
//! earlier version is encrypted in place with nothing lost.

use muster_e2e::{dir_contains, Device, Org};

const PASSPHRASE: &str = "correct horse battery staple";

#[test]
fn a_conversation_leaves_nothing_readable_in_an_encrypted_home_and_a_wrong_passphrase_changes_nothing(
) {
    let org = Org::new("store_encrypted");
    let code = org.admin.ok(&["invite", "bob"]).trim().to_string();
    let bob = Device::new(&org.dir, "bob").with_env("MUSTER_PASSPHRASE", PASSPHRASE);
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
    for needle in [
        "the gate code is 7741-alpha",
        "bob's reply in plaintext nowhere",
        "pier-four-response",
    ] {
        assert!(
            !dir_contains(&bob.home, needle.as_bytes()),
            "{needle:?} readable in bob's home directory"
        );
    }
    // The admin's store, given no key, is readable: the test would see the same text.
    assert!(dir_contains(&org.admin.home, b"pier-four-response"));

    let store = std::fs::read(bob.home.join("muster.db")).unwrap();
    let wrong = Device::new(&org.dir, "bob").with_env("MUSTER_PASSPHRASE", "not the passphrase");
    let refused = wrong.fails(&["sync"]);
    assert!(refused.contains("wrong passphrase"), "{refused}");
    let locked = Device::new(&org.dir, "bob").fails(&["groups"]);
    assert!(locked.contains("MUSTER_PASSPHRASE"), "{locked}");
    assert_eq!(
        std::fs::read(bob.home.join("muster.db")).unwrap(),
        store,
        "a refused open changed the store"
    );
    assert!(bob
        .texts("pier-four-response")
        .contains(&"bob's reply in plaintext nowhere".to_string()));

    // A plaintext store put in its place (keeping the key parameters) is refused, not
    // adopted and encrypted under bob's passphrase.
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
fn a_plaintext_store_is_encrypted_with_a_key_file_and_keeps_every_message() {
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
    assert!(
        dir_contains(&bob.home, b"handover note 3"),
        "the old store was plaintext"
    );
    let before = bob.texts("night-shift");

    let key_file = org.dir.path().join("bob-store.key");
    // Not under a process that has the store open.
    let mut chat = bob.chat("night-shift", &[]);
    chat.wait_for("--- chatting in night-shift");
    let bob = bob.with_env("MUSTER_KEY_FILE", key_file.to_str().unwrap());
    let refused = bob.fails(&["store", "encrypt"]);
    assert!(refused.contains("another muster process"), "{refused}");
    let _ = chat.child.kill();
    let _ = chat.child.wait();
    let status = bob.ok(&["store", "encrypt"]);
    assert!(status.contains("key file"), "{status}");
    assert_eq!(
        bob.texts("night-shift"),
        before,
        "messages lost in the move"
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
