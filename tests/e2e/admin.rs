//! Running an organisation: directory, audit log, revocation, health, multi-device and profile approval.

use muster_e2e::{Device, Org};

#[test]
fn directory_lists_colleagues_from_signed_certificates() {
    let org = Org::new("directory");
    let code = org.admin.ok(&["invite", "bob"]).trim().to_string();
    let bob = Device::new(&org.dir, "bob");
    bob.ok(&[
        "join",
        &code,
        "--display-name",
        "Bob Builder",
        "--title",
        "Site lead",
        "--department",
        "Works",
    ]);
    org.admin.ok(&["approve", "bob"]);
    let entries = bob.json(&["directory"]);
    assert_eq!(entries.len(), 2);
    let alice = entries.iter().find(|e| e["user"] == "alice").unwrap();
    assert!(alice["roles"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r == "admin"));
    let b = entries.iter().find(|e| e["user"] == "bob").unwrap();
    assert_eq!(b["display_name"], "Bob Builder");
    assert_eq!(b["title"], "Site lead");
    assert_eq!(b["department"], "Works");
    assert_eq!(b["roles"], serde_json::json!(["member"]));
}

#[test]
fn audit_log_records_metadata_and_never_content() {
    let org = Org::new("audit");
    let bob = org.enrol("bob");
    org.admin
        .ok(&["group", "create", "ops", "--members", "bob"]);
    org.admin.ok(&["send", "ops", "the launch code is 0000"]);
    let events = org.admin.json(&["admin", "audit"]);
    let has = |event: &str, subject_contains: &str| {
        events.iter().any(|e| {
            e["event"] == event
                && e["subject"]
                    .as_str()
                    .unwrap_or_default()
                    .contains(subject_contains)
        })
    };
    assert!(has("org_registered", "Acme"));
    assert!(has("invite_created", "bob"));
    assert!(has("enrolment_requested", "bob"));
    assert!(has("enrolment_approved", "bob"));
    assert!(has("login", ""));
    assert!(events
        .iter()
        .any(|e| e["event"] == "group_created" && e["group"] == "ops"));
    assert!(events
        .iter()
        .any(|e| e["event"] == "member_added" && e["actor"] == "alice"));

    // Members cannot read it.
    let err = bob.fails(&["admin", "audit"]);
    assert!(err.contains("admin"), "{err}");

    // The operator's view has the same events and no content.
    let out = org.relay.admin(&["audit", "--json", "--limit", "1000"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("enrolment_approved") && text.contains("member_added"));
    assert!(!text.contains("launch code"));
}

#[test]
fn revoked_user_is_cut_off_at_once_and_removed_from_every_group_exactly_once() {
    use std::time::{Duration, Instant};

    let org = Org::new("revoke");
    let alice = &org.admin;
    let bob = org.enrol("bob");
    let carol = org.enrol("carol");
    let dave = org.enrol("dave");
    let bob_device = bob.json(&["whoami"])[0]["device_id"]
        .as_str()
        .unwrap()
        .to_string();
    alice.ok(&["group", "create", "g1", "--members", "bob,carol"]);
    // g2 has no admin in it: its members must act on the revocation themselves.
    carol.ok(&["sync"]);
    carol.ok(&["group", "create", "g2", "--members", "bob,dave"]);
    for d in [&bob, &carol, &dave] {
        d.ok(&["sync"]);
    }
    let g1 = alice.group("g1")["id"].as_str().unwrap().to_string();
    let g2 = carol.group("g2")["id"].as_str().unwrap().to_string();

    // Bob is connected, chatting.
    let mut chat = bob.chat("g1", &[]);
    chat.wait_for("--- chatting in g1");

    // Timed from the start of the admin's command, which also commits bob's removal.
    let revoked_at = Instant::now();
    alice.ok(&["admin", "revoke", "bob"]);
    let status = loop {
        if let Some(status) = chat.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(5),
            "bob's open chat was not cut off"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    eprintln!(
        "bob's connected chat ended {:?} after the admin started the revocation",
        revoked_at.elapsed()
    );
    assert!(!status.success());
    let stderr = chat.stderr();
    assert!(stderr.contains("revoked"), "{stderr}");

    // New connections are refused too.
    let err = bob.fails(&["sync"]);
    assert!(err.contains("revoked"), "{err}");

    // Carol and dave act on the revocation at the same moment; one commit wins in g2.
    std::thread::scope(|s| {
        let c = s.spawn(|| carol.command().arg("sync").output().unwrap());
        let d = s.spawn(|| dave.command().arg("sync").output().unwrap());
        assert!(c.join().unwrap().status.success());
        assert!(d.join().unwrap().status.success());
    });
    for d in [alice, &carol, &dave] {
        d.ok(&["sync"]);
    }
    assert_eq!(alice.members("g1"), ["alice", "carol"]);
    assert_eq!(carol.members("g1"), ["alice", "carol"]);
    assert_eq!(carol.members("g2"), ["carol", "dave"]);
    assert_eq!(dave.members("g2"), ["carol", "dave"]);

    // Exactly one removal commit per group, per the relay's audit log.
    let out = org.relay.admin(&["audit", "--json", "--limit", "10000"]);
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for g in [&g1, &g2] {
        let removals = events
            .iter()
            .filter(|e| {
                e["event"] == "member_removed" && e["subject"] == bob_device && e["group"] == *g
            })
            .count();
        assert_eq!(removals, 1, "removal commits for bob in group {g}");
    }
    assert!(events.iter().any(|e| e["event"] == "device_revoked"));

    // Conversation goes on without bob.
    alice.ok(&["send", "g1", "after the revocation"]);
    carol.ok(&["sync"]);
    assert_eq!(carol.texts("g1"), ["after the revocation"]);

    // Bad input: unknown users, and members trying to revoke.
    let err = alice.fails(&["admin", "revoke", "nobody"]);
    assert!(err.contains("no enrolled device"), "{err}");
    let err = carol.fails(&["admin", "revoke", "dave"]);
    assert!(err.contains("admin"), "{err}");
}

#[test]
fn operator_health_check_and_stats() {
    let mut org = Org::new("health");
    let bob = org.enrol("bob");
    org.admin
        .ok(&["group", "create", "ops", "--members", "bob"]);
    org.admin.ok(&["send", "ops", "hi"]);
    let out = org.relay.admin(&["health"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("healthy"));
    let out = org.relay.admin(&["stats"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("devices: 2"), "{text}");
    assert!(text.contains("groups: 1"), "{text}");
    // Queued: bob's Welcome, the group's name and alice's message for bob, and alice's own
    // commit echoed back to her (she has not synced since).
    assert!(text.contains("queued deliveries: 4"), "{text}");
    assert!(text.contains("database bytes:"), "{text}");
    drop(bob);
    org.relay.kill();
    let out = org.relay.admin(&["health"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unhealthy"));
}

#[test]
fn a_user_with_two_devices_sees_the_same_conversation_on_both() {
    let org = Org::new("twodevices");
    let alice = &org.admin;
    let laptop = org.enrol("bob");
    alice.ok(&["group", "create", "ops", "--members", "bob"]);
    laptop.ok(&["sync"]);
    alice.ok(&["send", "ops", "before the phone"]);

    let code = laptop.ok(&["device", "link"]).trim().to_string();
    let phone = Device::new(&org.dir, "bob-phone");
    let err = phone.fails(&["join", &code, "--display-name", "x"]);
    assert!(err.contains("join-device"), "{err}");
    phone.ok(&["join-device", &code]);
    let pending = alice.json(&["pending"]);
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0]["user"], "bob");
    assert_eq!(pending[0]["linked"], true);
    alice.ok(&["approve", "bob"]);
    phone.ok(&["sync"]);
    // The laptop adds its new sibling to every group it is in.
    laptop.ok(&["sync"]);
    phone.ok(&["sync"]);
    assert_eq!(phone.members("ops"), ["alice", "bob"]);
    let devices = phone.json(&["devices"]);
    assert_eq!(devices.len(), 2);
    assert_eq!(
        devices.iter().filter(|d| d["this_device"] == true).count(),
        1
    );
    // The phone carries bob's approved profile, not one it made up.
    let dir = alice.json(&["directory"]);
    let bob = dir.iter().find(|e| e["user"] == "bob").unwrap();
    assert_eq!(bob["display_name"], "bob display");
    assert_eq!(bob["devices"], 2);

    alice.ok(&["send", "ops", "to both devices"]);
    phone.ok(&["send", "ops", "from the phone"]);
    for d in [&laptop, &phone] {
        d.ok(&["sync"]);
    }
    alice.ok(&["sync"]);
    assert_eq!(
        laptop.texts("ops"),
        ["before the phone", "to both devices", "from the phone"]
    );
    assert_eq!(phone.texts("ops"), ["to both devices", "from the phone"]);
    let seen = alice.json(&["read", "ops"]);
    let from_phone = seen.iter().find(|m| m["text"] == "from the phone").unwrap();
    assert_eq!(from_phone["sender"], "bob");
    let phone_id = devices.iter().find(|d| d["this_device"] == true).unwrap()["device_id"].clone();
    assert_eq!(from_phone["sender_device"], phone_id);

    // New groups include every device of each member.
    alice.ok(&["group", "create", "g2", "--members", "bob"]);
    laptop.ok(&["sync"]);
    phone.ok(&["sync"]);
    alice.ok(&["send", "g2", "hello g2"]);
    laptop.ok(&["sync"]);
    phone.ok(&["sync"]);
    assert_eq!(laptop.texts("g2"), ["hello g2"]);
    assert_eq!(phone.texts("g2"), ["hello g2"]);

    // A link code is single use.
    let tablet = Device::new(&org.dir, "bob-tablet");
    let err = tablet.fails(&["join-device", &code]);
    assert!(err.contains("already used"), "{err}");
}

#[test]
fn profile_changes_are_invisible_until_an_admin_approves_them() {
    let org = Org::new("profile");
    let alice = &org.admin;
    let bob = org.enrol("bob");
    let carol = org.enrol("carol");
    let bob_in = |d: &Device| d.directory_entry("bob");
    bob.ok(&[
        "profile",
        "set",
        "--display-name",
        "Robert B",
        "--title",
        "Shift lead",
    ]);
    assert_eq!(bob_in(&carol)["display_name"], "bob display");
    assert_eq!(
        bob.json(&["profile", "show"])[0]["display_name"],
        "bob display"
    );
    let changes = alice.json(&["admin", "profiles"]);
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0]["requested"]["display_name"], "Robert B");
    let err = bob.fails(&["admin", "approve-profile", "bob"]);
    assert!(err.contains("no admin role"), "{err}");

    alice.ok(&["admin", "approve-profile", "bob"]);
    let seen = bob_in(&carol);
    assert_eq!(seen["display_name"], "Robert B");
    assert_eq!(seen["title"], "Shift lead");
    bob.ok(&["sync"]);
    assert_eq!(bob.json(&["profile", "show"])[0]["title"], "Shift lead");
    assert!(alice.json(&["admin", "profiles"]).is_empty());

    // Rejected changes never show; hiding an attribute is a change like any other.
    bob.ok(&["profile", "set", "--display-name", "Bobby"]);
    alice.ok(&["admin", "reject-profile", "bob"]);
    assert_eq!(bob_in(&carol)["display_name"], "Robert B");
    bob.ok(&["profile", "set", "--display-name", "Robert B"]);
    alice.ok(&["admin", "approve-profile", "bob"]);
    assert!(bob_in(&carol)["title"].is_null());
    let err = alice.fails(&["admin", "approve-profile", "carol"]);
    assert!(err.contains("no pending profile change"), "{err}");
    // Groups keep working for bob after his certificate changed.
    alice.ok(&["group", "create", "ops", "--members", "bob"]);
    bob.ok(&["sync"]);
    bob.ok(&["send", "ops", "new name, same me"]);
    alice.ok(&["sync"]);
    assert_eq!(alice.texts("ops"), ["new name, same me"]);
}

#[test]
fn users_approve_their_own_new_devices_only_when_the_policy_allows() {
    let org = Org::new("selfapprove");
    let alice = &org.admin;
    let laptop = org.enrol("bob");
    alice.ok(&["group", "create", "ops", "--members", "bob"]);
    laptop.ok(&["sync"]);

    let code = laptop.ok(&["device", "link"]).trim().to_string();
    let phone = Device::new(&org.dir, "bob-phone");
    let out = phone.ok(&["join-device", &code]);
    let phone_id = out
        .split("(device ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .unwrap()
        .to_string();

    // By default only admins approve devices.
    assert_eq!(
        alice.json(&["admin", "policy"])[0]["device_self_approval"],
        false
    );
    let err = laptop.fails(&["device", "approve", &phone_id]);
    assert!(err.contains("requires an admin"), "{err}");
    let err = laptop.fails(&["admin", "policy", "--device-self-approval", "on"]);
    assert!(err.contains("no admin role"), "{err}");

    alice.ok(&["admin", "policy", "--device-self-approval", "on"]);
    // Carol cannot approve bob's device; bob's laptop can.
    let carol = org.enrol("carol");
    let err = carol.fails(&["device", "approve", &phone_id]);
    assert!(err.contains("no pending new device"), "{err}");
    laptop.ok(&["device", "approve", &phone_id]);
    // An admin device issues the certificate on its next sync.
    let out = alice.ok(&["sync"]);
    assert!(out.contains("approved the new device of bob"), "{out}");
    phone.ok(&["sync"]);
    laptop.ok(&["sync"]);
    phone.ok(&["sync"]);
    assert_eq!(phone.members("ops"), ["alice", "bob"]);
    alice.ok(&["send", "ops", "for both of bob's devices"]);
    phone.ok(&["sync"]);
    assert_eq!(phone.texts("ops"), ["for both of bob's devices"]);
}

#[test]
fn an_approved_profile_change_reaches_every_group_on_every_device() {
    let org = Org::new("profile-groups");
    let alice = &org.admin;
    let bob = org.enrol("bob");
    let carol = org.enrol("carol");
    alice.ok(&["group", "create", "ops", "--members", "bob,carol"]);
    alice.ok(&["group", "create", "lunch", "--members", "bob"]);
    bob.ok(&["sync"]);
    carol.ok(&["sync"]);
    let name_in = |d: &Device, group: &str| {
        d.group(group)["member_names"]["bob"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(name_in(&carol, "ops"), "bob display");

    bob.ok(&[
        "profile",
        "set",
        "--display-name",
        "Robert B",
        "--title",
        "Foreman",
    ]);
    alice.ok(&["admin", "approve-profile", "bob"]);
    // Bob's device picks up its new certificate and updates its leaf in each group.
    bob.ok(&["sync"]);
    alice.ok(&["sync"]);
    carol.ok(&["sync"]);
    for (device, group) in [
        (alice, "ops"),
        (alice, "lunch"),
        (&carol, "ops"),
        (&bob, "ops"),
        (&bob, "lunch"),
    ] {
        assert_eq!(
            name_in(device, group),
            "Robert B",
            "{group} as {} sees it: {}",
            device.home.display(),
            device.group(group)
        );
    }
}
