//! Every admin device administers without the organisation root key: what it signs
//! chains to the root through its own admin certificate, and a revoked admin's signature
//! is worth nothing to any client that knows of the revocation, whatever the relay does.

use muster_e2e::{apply_roles, device_id, relay_certificate, relay_db, roles_file, Device, Org};

/// Enrols `user` through `admin`'s invite and approval.
fn enrol_by(org: &Org, admin: &Device, user: &str) -> Device {
    let code = admin.ok(&["invite", user]).trim().to_string();
    let device = Device::new(&org.dir, user);
    device.ok(&["join", &code, "--display-name", &format!("{user} display")]);
    admin.ok(&["approve", user]);
    device.ok(&["sync"]);
    device
}

#[test]
fn an_admin_who_never_held_the_root_key_enrols_revokes_provisions_and_sets_policy() {
    let org = Org::new("delegation");
    let alice = &org.admin;
    let carol = org.enrol("carol");
    let bob = org.enrol("bob");
    let mallory = org.enrol("mallory");
    apply_roles(&org, alice, &[("carol", "carol display", "admin")]);
    carol.ok(&["sync"]);

    // Carol's device invites and approves dave: his certificate chains through hers.
    let dave = enrol_by(&org, &carol, "dave");
    let cert = relay_certificate(&org, "dave");
    assert_eq!(cert.issuer_device(), Some(device_id(&carol).as_str()));
    assert!(cert.body.not_after <= relay_certificate(&org, "carol").body.not_after);

    // Members take it: bob puts dave in a group and they talk.
    bob.ok(&["group", "create", "ops", "--members", "dave,mallory"]);
    dave.ok(&["sync"]);
    mallory.ok(&["sync"]);
    dave.ok(&["send", "ops", "dave here"]);
    bob.ok(&["sync"]);
    assert!(bob.texts("ops").contains(&"dave here".to_string()));

    // Carol revokes mallory; bob's device removes her from the group.
    carol.ok(&["admin", "revoke", "mallory"]);
    bob.ok(&["sync"]);
    assert!(!bob.members("ops").contains(&"mallory".to_string()));
    assert!(mallory.fails(&["sync"]).contains("revoked"));

    // Carol provisions from a file: invites erin, builds a group, then approves erin.
    let spec = org.dir.path().join("crew.toml");
    std::fs::write(
        &spec,
        "[[users]]\nhandle = \"erin\"\ndisplay_name = \"Erin E\"\n\n\
         [[groups]]\nname = \"crew\"\nmembers = [\"carol\", \"bob\", \"dave\", \"erin\"]\n",
    )
    .unwrap();
    let invites = org.dir.path().join("invites.txt");
    let spec_arg = spec.display().to_string();
    let invites_arg = invites.display().to_string();
    carol.ok(&["admin", "apply", &spec_arg, "--invites-out", &invites_arg]);
    let code = std::fs::read_to_string(&invites).unwrap();
    let code = code.trim().split_once(' ').unwrap().1.to_string();
    let erin = Device::new(&org.dir, "erin");
    erin.ok(&["join", &code, "--display-name", "erin typed this"]);
    carol.ok(&["admin", "apply", &spec_arg]);
    erin.ok(&["sync"]);
    let erin_entry = bob.directory_entry("erin");
    assert_eq!(erin_entry["display_name"], "Erin E", "{erin_entry}");
    // One run of apply was enough for erin's seat: her device joined on connecting.
    let erins = erin.json(&["groups"]);
    assert_eq!(erins.len(), 1, "{erins:?}");
    assert_eq!(
        erins[0]["members"],
        serde_json::json!(["bob", "carol", "dave", "erin"])
    );
    bob.ok(&["sync"]);
    assert_eq!(bob.members("crew"), ["bob", "carol", "dave", "erin"]);

    // Only the root makes admins.
    let refused = carol.fails(&[
        "admin",
        "apply",
        &roles_file(&org, &[("dave", "dave display", "admin")]),
    ]);
    assert!(refused.contains("organisation root key"), "{refused}");

    // Carol's policy is the organisation's, for the root holder too.
    carol.ok(&["admin", "policy", "--device-self-approval", "on"]);
    let policy = alice.ok(&["admin", "policy"]);
    assert!(policy.contains("on"), "{policy}");
}

#[test]
fn a_revoked_admins_later_approvals_are_refused_by_every_client() {
    let org = Org::new("revoked-admin");
    let alice = &org.admin;
    let carol = org.enrol("carol");
    let bob = org.enrol("bob");
    apply_roles(&org, alice, &[("carol", "carol display", "admin")]);
    carol.ok(&["sync"]);
    let dave = enrol_by(&org, &carol, "dave");
    bob.ok(&["group", "create", "ops", "--members", "dave"]);
    dave.ok(&["sync"]);

    alice.ok(&["admin", "revoke", "carol"]);
    bob.ok(&["sync"]);
    dave.ok(&["sync"]);
    // What carol issued before stands: her revocation vouches for dave's certificate.
    bob.ok(&["send", "ops", "still with us, dave?"]);
    dave.ok(&["sync"]);
    assert!(dave
        .texts("ops")
        .contains(&"still with us, dave?".to_string()));
    dave.ok(&["send", "ops", "yes"]);
    bob.ok(&["sync"]);
    assert!(bob.texts("ops").contains(&"yes".to_string()));
    assert!(carol.fails(&["invite", "mallory"]).contains("revoked"));

    // The operator brings carol back and hides her revocation; she enrols mallory.
    let db = relay_db(&org);
    db.execute(
        "UPDATE devices SET status = 'approved' WHERE device_id = ?1",
        [device_id(&carol)],
    )
    .unwrap();
    db.execute("DELETE FROM revocations", []).unwrap();
    drop(db);
    let mallory = enrol_by(&org, &carol, "mallory");
    assert_eq!(
        relay_certificate(&org, "mallory").issuer_device(),
        Some(device_id(&carol).as_str())
    );

    // Every client that learned of the revocation refuses her.
    for (name, device) in [("alice", alice), ("bob", &bob), ("dave", &dave)] {
        let err = device.fails(&[
            "group",
            "create",
            &format!("with-{name}"),
            "--members",
            "mallory",
        ]);
        assert!(err.contains("revoked"), "{name}: {err}");
        let directory = device.ok(&["directory"]);
        assert!(!directory.contains("mallory"), "{name}: {directory}");
    }
    mallory.ok(&["group", "create", "trap", "--members", "bob"]);
    bob.run(&["sync"]);
    assert!(
        bob.json(&["groups"]).iter().all(|g| g["name"] != "trap"),
        "bob refuses a Welcome from mallory"
    );
}

#[test]
fn only_the_root_demotes_or_revokes_an_admin_whatever_another_admin_signs() {
    let org = Org::new("admin-vs-admin");
    let alice = &org.admin;
    let carol = org.enrol("carol");
    let dave = org.enrol("dave");
    let bob = org.enrol("bob");
    apply_roles(
        &org,
        alice,
        &[
            ("carol", "carol display", "admin"),
            ("dave", "dave display", "admin"),
        ],
    );
    carol.ok(&["sync"]);
    dave.ok(&["sync"]);
    bob.ok(&["group", "create", "ops", "--members", "dave"]);
    dave.ok(&["sync"]);
    let refused = carol.fails(&["admin", "revoke", "dave"]);
    assert!(
        refused.contains("only the organisation root key revokes"),
        "{refused}"
    );

    // Carol signs a revocation of dave's device, and a member certificate for alice's,
    // by hand; the relay refuses both.
    let rogue = crate::rogue::Rogue::copy_of(&carol, org.dir.path());
    let issuer = rogue.certificate();
    let revocation = muster_proto::Revocation::issue_as_admin(
        muster_proto::RevocationBody {
            org_id: rogue.org().org_id,
            user: "dave".into(),
            device_ids: vec![device_id(&dave)],
            issued_at: now(),
            serial: 1,
            vouched: Vec::new(),
        },
        &issuer,
        |m| rogue.sign(m),
    );
    let answer = rogue.request(muster_proto::Request::Revoke {
        revocation: revocation.clone(),
    });
    assert!(
        format!("{answer:?}").contains("only the organisation root"),
        "{answer:?}"
    );
    let alice_now = relay_certificate(&org, "alice");
    let demoted = muster_proto::Certificate::issue_as_admin(
        muster_proto::CertificateBody {
            roles: vec![muster_proto::Role::Member],
            not_before: (alice_now.body.not_before + 1).max(issuer.body.not_before),
            not_after: issuer.body.not_after,
            ..alice_now.body.clone()
        },
        &issuer,
        |m| rogue.sign(m),
    );
    let answer = rogue.request(muster_proto::Request::ReissueCertificates {
        certificates: vec![demoted.clone()],
    });
    assert!(
        format!("{answer:?}").contains("only the organisation root"),
        "{answer:?}"
    );

    // The operator files them anyway: no client takes them.
    let db = relay_db(&org);
    db.execute(
        "INSERT INTO revocations (user, data, at) VALUES ('dave', ?1, 0)",
        [serde_json::to_vec(&revocation).unwrap()],
    )
    .unwrap();
    db.execute(
        "UPDATE devices SET certificate = ?1 WHERE user = 'alice'",
        [demoted.to_bytes()],
    )
    .unwrap();
    drop(db);
    let out = bob.ok(&["sync"]);
    assert!(out.contains("ignored a revocation of admin dave"), "{out}");
    dave.ok(&["send", "ops", "dave, still an admin"]);
    bob.ok(&["sync"]);
    assert!(bob
        .texts("ops")
        .contains(&"dave, still an admin".to_string()));
    assert_eq!(bob.members("ops"), ["bob", "dave"]);
    alice.run(&["sync"]);
    let held = crate::rogue::Rogue::copy_of(alice, org.dir.path()).certificate();
    assert!(
        held.is_admin() && held.issuer.is_none(),
        "alice's device keeps its root-signed admin certificate"
    );
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
