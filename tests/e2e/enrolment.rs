//! Enrolment: invites, approval and rejection, expiry, the bootstrap token and the pinned fingerprint.

use muster_e2e::{Device, Org, Relay, TempDir};
use std::time::Duration;

#[test]
fn invite_approve_and_reject() {
    let org = Org::new("enrol");
    let code = org.admin.ok(&["invite", "bob"]).trim().to_string();
    let bob = Device::new(&org.dir, "bob");
    bob.ok(&[
        "join",
        &code,
        "--display-name",
        "Bob B",
        "--title",
        "Engineer",
        "--department",
        "Ops",
    ]);

    // Until approved, bob can do nothing.
    let err = bob.fails(&["sync"]);
    assert!(err.contains("waiting for an admin"), "{err}");
    let pending = org.admin.json(&["pending"]);
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0]["user"], "bob");
    assert_eq!(pending[0]["display_name"], "Bob B");
    assert_eq!(pending[0]["title"], "Engineer");

    org.admin.ok(&["approve", "bob"]);
    bob.ok(&["sync"]);
    assert!(org.admin.json(&["pending"]).is_empty());

    // The same invite cannot be used twice.
    let mallory = Device::new(&org.dir, "mallory");
    let err = mallory.fails(&["join", &code, "--display-name", "M"]);
    assert!(err.contains("already used"), "{err}");

    // A rejected device stays locked out.
    let code = org.admin.ok(&["invite", "carol"]).trim().to_string();
    let carol = Device::new(&org.dir, "carol");
    carol.ok(&["join", &code, "--display-name", "Carol"]);
    org.admin.ok(&["reject", "carol"]);
    let err = carol.fails(&["sync"]);
    assert!(err.contains("rejected"), "{err}");

    // Only admins invite, list, approve or reject; the client refuses from bob's own certificate.
    for args in [
        &["invite", "eve"][..],
        &["pending"][..],
        &["approve", "carol"][..],
        &["reject", "carol"][..],
        &["admin", "revoke", "alice"][..],
        &["admin", "audit"][..],
    ] {
        let err = bob.fails(args);
        assert!(err.contains("no admin role"), "{args:?}: {err}");
    }
}

#[test]
fn expired_invite_is_refused() {
    let org = Org::new("expire");
    let code = org
        .admin
        .ok(&["invite", "bob", "--ttl", "1s"])
        .trim()
        .to_string();
    let bob = Device::new(&org.dir, "bob");
    let start = std::time::Instant::now();
    // Wait for the invite's expiry time to pass, then try it.
    while start.elapsed() < Duration::from_millis(2100) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let err = bob.fails(&["join", &code, "--display-name", "Bob"]);
    assert!(err.contains("expired"), "{err}");
}

#[test]
fn bootstrap_token_is_single_use_and_fingerprint_is_pinned() {
    let org = Org::new("bootstrap");
    // The token that created the org cannot create another.
    let other = Device::new(&org.dir, "other");
    let token = org.relay.bootstrap_token.clone().unwrap();
    let err = other.fails(&[
        "org",
        "create",
        "--relay",
        &org.relay.addr,
        "--fingerprint",
        &org.relay.fingerprint,
        "--token",
        &token,
        "--name",
        "Evil",
        "--user",
        "eve",
    ]);
    assert!(
        err.contains("already registered") || err.contains("not valid"),
        "{err}"
    );

    // A fresh token from the operator command is refused too, once an org exists.
    let out = org.relay.admin(&["bootstrap-token"]);
    let fresh = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let err = other.fails(&[
        "org",
        "create",
        "--relay",
        &org.relay.addr,
        "--fingerprint",
        &org.relay.fingerprint,
        "--token",
        &fresh,
        "--name",
        "Evil",
        "--user",
        "eve",
    ]);
    assert!(err.contains("already registered"), "{err}");

    // A wrong fingerprint is refused before anything is sent.
    let dir = TempDir::new("wrongfp");
    let relay = Relay::start(&dir);
    let dev = Device::new(&dir, "x");
    let err = dev.fails(&[
        "org",
        "create",
        "--relay",
        &relay.addr,
        "--fingerprint",
        &"00".repeat(32),
        "--token",
        relay.bootstrap_token.as_deref().unwrap(),
        "--name",
        "A",
        "--user",
        "a",
    ]);
    assert!(err.contains("fingerprint"), "{err}");
    // The token was not spent: the right fingerprint still works.
    dev.ok(&[
        "org",
        "create",
        "--relay",
        &relay.addr,
        "--fingerprint",
        &relay.fingerprint,
        "--token",
        relay.bootstrap_token.as_deref().unwrap(),
        "--name",
        "A",
        "--user",
        "a",
    ]);
}
