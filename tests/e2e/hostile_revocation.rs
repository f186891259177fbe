//! Revocation that does not depend on the relay: numbered revocations expose a withheld
//! one, short-lived certificates that only admin devices renew cut a revoked device off
//! even where the relay hides its revocation, and no revoked device enters a group.

use muster_e2e::{device_id, relay_db, wait_until, Device, Org};
use rusqlite::params;
use std::time::Duration;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn a_withheld_revocation_is_noticed() {
    let org = Org::new("revoke-gap");
    let carol = org.enrol("carol");
    let _dave = org.enrol("dave");
    let _erin = org.enrol("erin");
    org.admin.ok(&["admin", "revoke", "dave"]);
    org.admin.ok(&["admin", "revoke", "erin"]);
    // The operator keeps the first revocation from carol.
    relay_db(&org)
        .execute(
            "DELETE FROM revocations WHERE id = (SELECT MIN(id) FROM revocations)",
            [],
        )
        .unwrap();
    let out = carol.ok(&["sync"]);
    assert!(out.contains("withholds revocation number 1"), "{out}");
}

#[test]
fn a_revoked_device_cannot_be_added_again_whatever_the_relay_says() {
    let org = Org::new("revoke-readd");
    let carol = org.enrol("carol");
    let dave = org.enrol("dave");
    let dave_id = device_id(&dave);
    let db = relay_db(&org);
    let key_package: Vec<u8> = db
        .query_row(
            "SELECT data FROM key_packages WHERE device_id = ?1 LIMIT 1",
            [&dave_id],
            |r| r.get(0),
        )
        .unwrap();
    drop(db);
    org.admin.ok(&["admin", "revoke", "dave"]);
    carol.ok(&["sync"]);
    // The operator brings dave back as if nothing happened.
    let db = relay_db(&org);
    db.execute(
        "UPDATE devices SET status = 'approved' WHERE device_id = ?1",
        [&dave_id],
    )
    .unwrap();
    db.execute(
        "INSERT INTO key_packages (device_id, data, last_resort) VALUES (?1, ?2, 0)",
        params![dave_id, key_package],
    )
    .unwrap();
    drop(db);
    let err = carol.fails(&["group", "create", "side", "--members", "dave"]);
    assert!(err.contains("revoked device"), "{err}");
}

#[test]
fn certificates_are_short_lived_so_a_hidden_revocation_still_cuts_the_device_off() {
    let org = Org::new("revoke-expiry");
    let alice = &org.admin;
    alice.ok(&["admin", "policy", "--certificate-lifetime", "15s"]);
    let bob = org.enrol("bob");
    let carol = org.enrol("carol");
    let mallory = org.enrol("mallory");
    carol.ok(&["group", "create", "side", "--members", "bob,mallory"]);
    bob.ok(&["sync"]);
    mallory.ok(&["sync"]);
    mallory.ok(&["send", "side", "mallory before"]);
    carol.ok(&["sync"]);
    assert_eq!(carol.texts("side"), ["mallory before"]);

    // Alice revokes mallory; the operator hides it from everyone else and lets mallory in.
    alice.ok(&["admin", "revoke", "mallory"]);
    let mallory_id = device_id_of(&mallory);
    let db = relay_db(&org);
    db.execute("DELETE FROM revocations", []).unwrap();
    db.execute(
        "UPDATE devices SET status = 'approved' WHERE device_id = ?1",
        [&mallory_id],
    )
    .unwrap();
    let (expires, grace) = {
        let cert: Vec<u8> = db
            .query_row(
                "SELECT certificate FROM devices WHERE device_id = ?1",
                [&mallory_id],
                |r| r.get(0),
            )
            .unwrap();
        let cert = muster_proto::Certificate::from_bytes(&cert).unwrap();
        (cert.body.not_after, muster_rules::lapse_grace(&cert))
    };
    drop(db);

    // Alice's device renews everyone else's certificates a third of the way in; bob and
    // carol bring the renewed ones into their groups.
    wait_until(Duration::from_secs(30), "renewed certificates", || {
        alice.ok(&["sync"]);
        ["bob", "carol"].iter().all(|u| {
            relay_db(&org)
                .query_row(
                    "SELECT certificate FROM devices WHERE user = ?1",
                    [u],
                    |r| r.get::<_, Vec<u8>>(0),
                )
                .map(|c| {
                    muster_proto::Certificate::from_bytes(&c)
                        .unwrap()
                        .body
                        .not_after
                        > expires
                })
                .unwrap_or(false)
        })
    });
    bob.ok(&["sync"]);
    carol.ok(&["sync"]);
    bob.ok(&["sync"]);
    mallory.ok(&["sync"]);
    wait_until(
        Duration::from_secs(30),
        "mallory's certificate to run out",
        || now() > expires + 1,
    );
    // Mallory's own client will not send with a certificate that ran out; a modified one does.
    let err = mallory.fails(&["send", "side", "mallory after"]);
    assert!(err.contains("ran out"), "{err}");
    let gid = muster_e2e::group_id(&carol, "side");
    let rogue = crate::rogue::Rogue::open(&mallory);
    let envelope = serde_json::json!({"v": 1, "id": "00000000000000000000000000000a11",
        "sent_at": now() * 1000, "body": {"type": "text", "text": "mallory after"}});
    rogue.send(&gid, rogue.app_message(&gid, &envelope));
    drop(rogue);
    bob.ok(&["send", "side", "bob after"]);
    let out = carol.ok(&["sync"]);
    assert!(out.contains("not valid now"), "{out}");
    assert_eq!(carol.texts("side"), ["mallory before", "bob after"]);
    // Nobody renews mallory's certificate, so once the grace members give a certificate
    // that ran out has passed, her leaf is removed: what is said next is not encrypted
    // for her. (Alice's device keeps renewing everyone else's.)
    wait_until(Duration::from_secs(60), "mallory's leaf removed", || {
        alice.ok(&["sync"]);
        bob.ok(&["sync"]);
        carol.ok(&["sync"]);
        now() > expires + grace + 1 && carol.members("side") == ["bob", "carol"]
    });
    carol.ok(&["send", "side", "carol after"]);
    bob.ok(&["sync"]);
    assert!(bob.texts("side").contains(&"carol after".to_string()));
    assert_eq!(bob.members("side"), ["bob", "carol"]);
}

/// A device's id from its own store.
fn device_id_of(d: &Device) -> String {
    let db = d.open_store();
    db.query_row("SELECT device_id FROM device WHERE id = 1", [], |r| {
        r.get(0)
    })
    .unwrap()
}

#[test]
fn a_member_who_refused_a_change_the_relay_accepted_rejoins_and_the_group_goes_on() {
    let org = Org::new("revoke-rejoin");
    let alice = &org.admin;
    let bob = org.enrol("bob");
    let carol = org.enrol("carol");
    let xavier = org.enrol("xavier");
    alice.ok(&[
        "group",
        "create",
        "crisis",
        "--members",
        "bob,carol,xavier",
        "--managed",
    ]);
    for d in [&bob, &carol, &xavier] {
        d.ok(&["sync"]);
    }
    // Xavier is revoked (signed with alice's root, filed without her device acting on it),
    // so bob, a member, may remove him from the managed group, and does.
    let rogue_alice = crate::rogue::Rogue::copy_of(alice, org.dir.path());
    let revocation = rogue_alice
        .root_key()
        .sign_revocation(muster_proto::RevocationBody {
            org_id: rogue_alice.org().org_id,
            user: "xavier".into(),
            device_ids: vec![device_id(&xavier)],
            issued_at: now(),
            serial: 1,
            vouched: Vec::new(),
        });
    let answer = rogue_alice.request(muster_proto::Request::Revoke { revocation });
    assert!(matches!(answer, muster_proto::Response::Ok), "{answer:?}");
    bob.ok(&["sync"]);
    alice.ok(&["sync"]);
    assert_eq!(alice.members("crisis"), ["alice", "bob", "carol"]);
    // The operator keeps the revocation from carol for a while: her client refuses bob's
    // removal, and will not rejoin a group where, as far as she knows, a member removed
    // someone from a managed group.
    let hidden: Vec<(i64, String, Vec<u8>, i64)> = relay_db(&org)
        .prepare("SELECT id, user, data, at FROM revocations")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    relay_db(&org)
        .execute("DELETE FROM revocations", [])
        .unwrap();
    let out = carol.ok(&["sync"]);
    assert!(out.contains("refused a commit by bob"), "{out}");
    assert!(out.contains("not rejoining"), "{out}");
    // Once she learns of the revocation, her device rejoins; the group goes on.
    for (id, user, data, at) in hidden {
        relay_db(&org)
            .execute(
                "INSERT INTO revocations (id, user, data, at) VALUES (?1, ?2, ?3, ?4)",
                params![id, user, data, at],
            )
            .unwrap();
    }
    let out = carol.ok(&["sync"]);
    assert!(out.contains("rejoined"), "{out}");
    carol.ok(&["send", "crisis", "carol is back"]);
    alice.ok(&["sync"]);
    assert!(alice.texts("crisis").contains(&"carol is back".to_string()));
    alice.ok(&["send", "crisis", "welcome back"]);
    carol.ok(&["sync"]);
    assert!(carol.texts("crisis").contains(&"welcome back".to_string()));
    assert_eq!(carol.members("crisis"), ["alice", "bob", "carol"]);
    bob.ok(&["sync"]);
    assert!(bob.texts("crisis").contains(&"carol is back".to_string()));
}

#[test]
fn nothing_is_said_into_a_group_the_relay_keeps_a_revoked_device_in() {
    let org = Org::new("revoke-stuck");
    let bob = org.enrol("bob");
    let carol = org.enrol("carol");
    let mallory = org.enrol("mallory");
    carol.ok(&["group", "create", "side", "--members", "bob,mallory"]);
    bob.ok(&["sync"]);
    mallory.ok(&["sync"]);
    carol.ok(&["send", "side", "before"]);
    mallory.ok(&["sync"]);
    assert_eq!(mallory.texts("side"), ["before"]);

    // Alice revokes mallory. The operator lets mallory keep reading and refuses every
    // commit, so nobody can remove her leaf.
    org.admin.ok(&["admin", "revoke", "mallory"]);
    let mallory_id = device_id_of(&mallory);
    let db = relay_db(&org);
    db.execute(
        "UPDATE devices SET status = 'approved' WHERE device_id = ?1",
        [&mallory_id],
    )
    .unwrap();
    db.execute_batch(
        "CREATE TRIGGER refuse_commits BEFORE INSERT ON messages WHEN NEW.kind = 'commit'
         BEGIN SELECT RAISE(ABORT, 'refused'); END;",
    )
    .unwrap();
    drop(db);
    let out = carol.ok(&["sync"]);
    assert!(out.contains("could not remove revoked devices"), "{out}");
    let err = carol.fails(&["send", "side", "after the revocation"]);
    assert!(err.contains("still holds a device of mallory"), "{err}");
    bob.ok(&["sync"]);
    let err = bob.fails(&["send", "side", "bob after the revocation"]);
    assert!(err.contains("still holds a device of mallory"), "{err}");
    mallory.ok(&["sync"]);
    assert_eq!(mallory.texts("side"), ["before"]);

    // Once the relay lets the removal through, the group speaks again, without mallory.
    relay_db(&org)
        .execute_batch("DROP TRIGGER refuse_commits")
        .unwrap();
    carol.ok(&["sync"]);
    assert_eq!(carol.members("side"), ["bob", "carol"]);
    carol.ok(&["send", "side", "after the removal"]);
    bob.ok(&["sync"]);
    assert_eq!(bob.texts("side"), ["before", "after the removal"]);
    let _ = mallory.run(&["sync"]);
    assert_eq!(mallory.texts("side"), ["before"]);
}

#[test]
fn a_message_queued_before_a_revocation_never_leaves_in_a_form_the_revoked_device_reads() {
    let mut org = Org::new("revoke-queued");
    let bob = org.enrol("bob");
    let carol = org.enrol("carol");
    let mallory = org.enrol("mallory");
    carol.ok(&["group", "create", "side", "--members", "bob,mallory"]);
    bob.ok(&["sync"]);
    mallory.ok(&["sync"]);
    // Carol writes while the relay is unreachable: the message is encrypted for the
    // group as it is, mallory included, and waits in her outbox.
    org.relay.kill();
    let err = carol.fails(&["send", "side", "queued before the revocation"]);
    assert!(err.contains("stays in the outbox"), "{err}");
    org.relay.revive();
    org.admin.ok(&["admin", "revoke", "mallory"]);

    // The operator wants mallory to read it: it keeps her membership open, lets her in,
    // and keeps the group's recorded epoch from moving, so a message made for the old
    // epoch would be stored; it then hides the removal commit from her.
    let mallory_id = device_id_of(&mallory);
    let db = relay_db(&org);
    db.execute(
        "UPDATE devices SET status = 'approved' WHERE device_id = ?1",
        [&mallory_id],
    )
    .unwrap();
    db.execute_batch(
        "CREATE TRIGGER keep_epoch AFTER UPDATE OF epoch ON groups
         BEGIN UPDATE groups SET epoch = OLD.epoch WHERE group_id = NEW.group_id; END;
         CREATE TRIGGER keep_members BEFORE UPDATE OF to_seq ON memberships
         WHEN NEW.to_seq IS NOT NULL BEGIN SELECT RAISE(IGNORE); END;",
    )
    .unwrap();
    drop(db);
    // Carol learns of the revocation, removes mallory, then her outbox goes out.
    carol.ok(&["sync"]);
    assert_eq!(carol.members("side"), ["bob", "carol"]);
    relay_db(&org)
        .execute("DELETE FROM messages WHERE kind = 'commit'", [])
        .unwrap();
    let _ = mallory.run(&["sync"]);
    assert!(
        !mallory
            .texts("side")
            .contains(&"queued before the revocation".to_string()),
        "the revoked device read a message queued before its revocation"
    );
}

#[test]
fn a_revoked_device_wipes_its_store_only_on_a_signed_revocation_and_when_the_policy_says_so() {
    let org = Org::new("revoke-wipe");
    let alice = &org.admin;
    let bob = org.enrol("bob");
    let carol = org.enrol("carol");
    let dave = org.enrol("dave");
    alice.ok(&["group", "create", "ops", "--members", "bob,carol"]);
    alice.ok(&["send", "ops", "wipe-marker-briefing"]);
    for d in [&bob, &carol] {
        d.ok(&["sync"]);
        assert!(d.texts("ops").contains(&"wipe-marker-briefing".to_string()));
    }
    let store = |d: &muster_e2e::Device| d.home.join("muster.db");

    // The policy is off: revoked carol is cut off but keeps her store.
    alice.ok(&["admin", "revoke", "carol"]);
    let err = carol.fails(&["sync"]);
    assert!(err.contains("this device was revoked by"), "{err}");
    assert!(!err.contains("deleted"), "{err}");
    assert!(store(&carol).exists());

    // The relay's word is not enough: a device it merely calls revoked deletes nothing.
    let on = alice.ok(&["admin", "policy", "--wipe-on-revoke", "on"]);
    assert!(on.contains("wipe their store: on"), "{on}");
    bob.ok(&["sync"]);
    relay_db(&org)
        .execute(
            "UPDATE devices SET status = 'revoked' WHERE device_id = ?1",
            [device_id(&dave)],
        )
        .unwrap();
    let err = dave.fails(&["sync"]);
    assert!(err.contains("no revocation signed"), "{err}");
    assert!(store(&dave).exists());

    // With the policy on, a signed revocation has the device delete its store.
    alice.ok(&["admin", "revoke", "bob"]);
    let err = bob.fails(&["sync"]);
    assert!(err.contains("its store was deleted"), "{err}");
    assert!(!store(&bob).exists());
    assert!(!muster_e2e::dir_contains(
        &bob.home,
        b"wipe-marker-briefing"
    ));
}
