//! A hostile relay operator tries to obtain genuine certificates for keys it holds: by
//! moving a real enrolment onto its own key, making requests up, faking a user's
//! approval of their own device, replaying an old organisation policy, and handing admin
//! devices certificates and profile requests of its choosing.

use muster_e2e::{device_id, relay_db, Device, Org};
use muster_proto::{device_id_for, Certificate, Role};
use openmls::prelude::SignatureScheme;
use openmls_basic_credential::SignatureKeyPair;
use rusqlite::{params, OptionalExtension};

/// A key of the operator's own, and its device id.
fn operator_key() -> (Vec<u8>, String) {
    let key = SignatureKeyPair::new(SignatureScheme::ED25519)
        .unwrap()
        .public()
        .to_vec();
    let id = device_id_for(&key);
    (key, id)
}

/// The certificate the relay holds for a device, if one was issued.
fn certificate_of(org: &Org, device: &str) -> Option<Certificate> {
    relay_db(org)
        .query_row(
            "SELECT certificate FROM devices WHERE device_id = ?1",
            [device],
            |r| r.get::<_, Option<Vec<u8>>>(0),
        )
        .optional()
        .unwrap()
        .flatten()
        .map(|bytes| Certificate::from_bytes(&bytes).unwrap())
}

/// Files a pending enrolment for `user` with the operator's own key, as if it came in.
fn made_up_request(org: &Org, user: &str) -> String {
    let (key, id) = operator_key();
    relay_db(org)
        .execute(
            "INSERT INTO devices (device_id, user, device_key, status, profile, requested_at)
             VALUES (?1, ?2, ?3, 'pending', ?4, 0)",
            params![
                id,
                user,
                key,
                br#"{"display_name":"Trust me","title":null,"department":null}"#.to_vec()
            ],
        )
        .unwrap();
    id
}

fn write(org: &Org, name: &str, text: &str) -> String {
    let path = org.dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn the_relay_cannot_move_a_real_enrolment_onto_its_own_key() {
    let org = Org::new("enrol-swap");
    let code = org.admin.ok(&["invite", "bob"]).trim().to_string();
    let bob = Device::new(&org.dir, "bob");
    bob.ok(&["join", &code, "--display-name", "Bob"]);
    let (key, id) = operator_key();
    let db = relay_db(&org);
    let real: String = db
        .query_row(
            "SELECT device_id FROM devices WHERE user = 'bob'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    db.execute(
        "UPDATE devices SET device_id = ?2, device_key = ?3 WHERE device_id = ?1",
        params![real, id, key],
    )
    .unwrap();
    // Wherever the relay keeps what bob's device signed, the operator edits that too.
    let proof: Option<Vec<u8>> = db
        .query_row(
            "SELECT request FROM enrolment_proofs WHERE device_id = ?1",
            [&real],
            |r| r.get(0),
        )
        .optional()
        .unwrap_or(None);
    if let Some(proof) = proof {
        let mut request: serde_json::Value = serde_json::from_slice(&proof).unwrap();
        request["body"]["device_key"] = serde_json::json!(key);
        db.execute(
            "UPDATE enrolment_proofs SET device_id = ?2, request = ?3 WHERE device_id = ?1",
            params![real, id, serde_json::to_vec(&request).unwrap()],
        )
        .unwrap();
    }
    drop(db);
    let pending = org.admin.ok(&["pending"]);
    assert!(pending.contains("CANNOT BE APPROVED"), "{pending}");
    let err = org.admin.fails(&["approve", "bob"]);
    assert!(err.contains("refusing bob's enrolment request"), "{err}");
    assert!(
        certificate_of(&org, &id).is_none(),
        "the operator's key got a certificate"
    );
}

#[test]
fn admin_apply_approves_no_made_up_request_even_for_a_user_the_relay_hides() {
    let org = Org::new("enrol-apply");
    let bob = org.enrol("bob");
    org.admin.ok(&["directory"]);
    let bob_device = device_id(&bob);
    // The operator hides bob's real device and files requests of its own for bob and
    // for carol, whom the file makes an admin.
    relay_db(&org)
        .execute(
            "UPDATE devices SET status = 'rejected' WHERE device_id = ?1",
            [&bob_device],
        )
        .unwrap();
    let fake_bob = made_up_request(&org, "bob");
    let fake_carol = made_up_request(&org, "carol");
    let file = write(
        &org,
        "org.toml",
        "[[users]]\nhandle = \"bob\"\ndisplay_name = \"bob display\"\n\n\
         [[users]]\nhandle = \"carol\"\ndisplay_name = \"Carol\"\nroles = [\"admin\"]\n",
    );
    let out = org.admin.run(&["admin", "apply", &file]);
    let printed =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    for id in [&fake_bob, &fake_carol] {
        assert!(
            certificate_of(&org, id).is_none(),
            "apply certified the operator's key {id}: {printed}"
        );
    }
    assert!(!out.status.success(), "{printed}");
    assert!(printed.contains("carries no proof"), "{printed}");
    assert!(
        !printed.contains("approve bob"),
        "bob is enrolled: {printed}"
    );
}

#[test]
fn self_approval_needs_a_signature_of_the_users_own_device() {
    let org = Org::new("enrol-selfapprove");
    let laptop = org.enrol("bob");
    org.admin
        .ok(&["admin", "policy", "--device-self-approval", "on"]);
    // The operator files a request for bob with its own key, "confirmed" by bob's laptop.
    let fake = made_up_request(&org, "bob");
    relay_db(&org)
        .execute(
            "UPDATE devices SET confirmed_by = ?2 WHERE device_id = ?1",
            params![fake, device_id(&laptop)],
        )
        .unwrap();
    let out = org.admin.ok(&["sync"]);
    assert!(!out.contains("approved the new device"), "{out}");
    assert!(
        certificate_of(&org, &fake).is_none(),
        "the operator's key got a certificate"
    );
}

#[test]
fn a_replayed_policy_cannot_turn_self_approval_back_on() {
    let org = Org::new("enrol-policy");
    let laptop = org.enrol("bob");
    let alice = &org.admin;
    alice.ok(&["admin", "policy", "--device-self-approval", "on"]);
    let old: Vec<u8> = relay_db(&org)
        .query_row("SELECT value FROM meta WHERE key = 'org_policy'", [], |r| {
            r.get(0)
        })
        .unwrap();
    alice.ok(&["admin", "policy", "--device-self-approval", "off"]);
    relay_db(&org)
        .execute("UPDATE meta SET value = ?1 WHERE key = 'org_policy'", [old])
        .unwrap();

    let code = laptop.ok(&["device", "link"]).trim().to_string();
    let phone = Device::new(&org.dir, "bob-phone");
    phone.ok(&["join-device", &code]);
    let phone_id = relay_db(&org)
        .query_row(
            "SELECT device_id FROM devices WHERE user = 'bob' AND status = 'pending'",
            [],
            |r| r.get::<_, String>(0),
        )
        .unwrap();
    // The relay believes the replayed policy and takes bob's confirmation.
    laptop.ok(&["device", "approve", &phone_id]);
    let out = alice.ok(&["sync"]);
    assert!(!out.contains("approved the new device"), "{out}");
    assert!(
        certificate_of(&org, &phone_id).is_none(),
        "self-approved under a replayed policy"
    );
    let shown = alice.run(&["admin", "policy"]);
    let stdout = String::from_utf8_lossy(&shown.stdout);
    assert!(stdout.contains("device self-approval: off"), "{stdout}");
    assert!(
        String::from_utf8_lossy(&shown.stderr).contains("replays"),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
}

#[test]
fn a_demoted_admins_old_certificate_brings_no_role_back() {
    let org = Org::new("enrol-demoted");
    let alice = &org.admin;
    let as_admin = write(
        &org,
        "admin.toml",
        "[[users]]\nhandle = \"carol\"\ndisplay_name = \"Carol\"\nroles = [\"admin\"]\n",
    );
    let invites = org.dir.path().join("invites.txt");
    alice.ok(&[
        "admin",
        "apply",
        &as_admin,
        "--invites-out",
        invites.to_str().unwrap(),
    ]);
    let code = std::fs::read_to_string(&invites).unwrap();
    let code = code.split_whitespace().nth(1).unwrap().to_string();
    let carol = Device::new(&org.dir, "carol");
    carol.ok(&["join", &code, "--display-name", "Carol"]);
    alice.ok(&["admin", "apply", &as_admin]);
    carol.ok(&["sync"]);
    let carol_id = device_id(&carol);
    let admin_cert: Vec<u8> = relay_db(&org)
        .query_row(
            "SELECT certificate FROM devices WHERE device_id = ?1",
            [&carol_id],
            |r| r.get(0),
        )
        .unwrap();
    let as_member = write(
        &org,
        "member.toml",
        "[[users]]\nhandle = \"carol\"\ndisplay_name = \"Carol\"\n",
    );
    alice.ok(&["admin", "apply", &as_member]);
    assert!(!certificate_of(&org, &carol_id).unwrap().is_admin());
    // The operator serves carol's old admin certificate again.
    relay_db(&org)
        .execute(
            "UPDATE devices SET certificate = ?2 WHERE device_id = ?1",
            params![carol_id, admin_cert],
        )
        .unwrap();

    // A new device of carol's takes its roles from alice's record, not from the relay.
    let code = carol.ok(&["device", "link"]).trim().to_string();
    let phone = Device::new(&org.dir, "carol-phone");
    phone.ok(&["join-device", &code]);
    alice.ok(&["approve", "carol"]);
    let phone_cert = certificate_of(&org, &device_id_for_home(&phone)).unwrap();
    assert_eq!(
        phone_cert.body.roles,
        [Role::Member],
        "the phone became an admin"
    );

    // So does a profile change: alice signs carol's new profile with the member role
    // (which this relay, holding the admin certificate it replays, then refuses to file).
    carol.ok(&["profile", "set", "--display-name", "Carol C"]);
    let _ = alice.run(&["admin", "approve-profile", "carol"]);
    let renewed = certificate_of(&org, &carol_id).unwrap();
    assert!(
        !(renewed.body.profile.display_name == "Carol C" && renewed.is_admin()),
        "approving carol's profile made her an admin again"
    );
}

/// The device id of a device that is not approved yet (so `whoami` cannot ask the relay).
fn device_id_for_home(d: &Device) -> String {
    let db = d.open_store();
    db.query_row("SELECT device_id FROM device WHERE id = 1", [], |r| {
        r.get(0)
    })
    .unwrap()
}

#[test]
fn a_profile_request_is_approved_only_as_its_user_signed_it() {
    let org = Org::new("enrol-profile");
    let bob = org.enrol("bob");
    bob.ok(&["profile", "set", "--display-name", "Robert"]);
    // The operator rewrites the request on its way to the admin.
    let db = relay_db(&org);
    let stored: Vec<u8> = db
        .query_row(
            "SELECT profile FROM profile_requests WHERE user = 'bob'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let mut request: serde_json::Value = serde_json::from_slice(&stored).unwrap();
    if request.get("body").is_some() {
        request["body"]["profile"]["display_name"] = "Bob the Director of Payments".into();
    } else {
        request["display_name"] = "Bob the Director of Payments".into();
    }
    db.execute(
        "UPDATE profile_requests SET profile = ?1 WHERE user = 'bob'",
        [serde_json::to_vec(&request).unwrap()],
    )
    .unwrap();
    drop(db);
    let _ = org.admin.run(&["admin", "approve-profile", "bob"]);
    let shown = org.admin.json(&["directory"]);
    let entry = shown.iter().find(|e| e["user"] == "bob").unwrap();
    assert_ne!(entry["display_name"], "Bob the Director of Payments");
}

/// A demoted admin still holds a certificate with the admin role until it runs out; an
/// invite made with it (filed by a relay that plays along) is refused by alice's device,
/// which goes by its own record of who is an admin.
#[test]
fn an_invite_from_a_demoted_admin_is_refused() {
    use muster_proto::{CodeSecret, GrantBody, InviteCode, InvitePurpose};
    use openmls_traits::signatures::Signer as _;
    let org = Org::new("enrol-demoted-invite");
    let alice = &org.admin;
    let as_admin = write(
        &org,
        "admin.toml",
        "[[users]]\nhandle = \"carol\"\ndisplay_name = \"Carol\"\nroles = [\"admin\"]\n",
    );
    let invites = org.dir.path().join("invites.txt");
    alice.ok(&[
        "admin",
        "apply",
        &as_admin,
        "--invites-out",
        invites.to_str().unwrap(),
    ]);
    let code = std::fs::read_to_string(&invites).unwrap();
    let code = code.split_whitespace().nth(1).unwrap().to_string();
    let carol = Device::new(&org.dir, "carol");
    carol.ok(&["join", &code, "--display-name", "Carol"]);
    alice.ok(&["admin", "apply", &as_admin]);
    carol.ok(&["sync"]);
    let admin_cert = certificate_of(&org, &device_id(&carol)).unwrap();
    assert!(admin_cert.is_admin());
    let as_member = write(
        &org,
        "member.toml",
        "[[users]]\nhandle = \"carol\"\ndisplay_name = \"Carol\"\n",
    );
    alice.ok(&["admin", "apply", &as_member]);

    // Carol's modified client signs an invite for eve with her old admin certificate;
    // the relay files it.
    let rogue = crate::rogue::Rogue::copy_of(&carol, org.dir.path());
    let secret = CodeSecret::generate();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let body = GrantBody {
        org_id: rogue.org().org_id,
        purpose: InvitePurpose::NewUser,
        user: "eve".into(),
        code_key: secret.public_key(),
        issued_at: now,
        expires_at: now + 3600,
    };
    let grant = muster_proto::EnrolmentGrant {
        signature: rogue.signer().sign(&body.to_be_signed()).unwrap(),
        body,
        issuer: admin_cert,
    };
    let token_hash = ring::digest::digest(&ring::digest::SHA256, &grant.body.code_key)
        .as_ref()
        .to_vec();
    let db = relay_db(&org);
    db.execute(
        "INSERT INTO invites (token_hash, user, created_by, expires_at, kind) VALUES (?1, 'eve', 'carol', ?2, 'user')",
        params![token_hash, (now + 3600) as i64],
    )
    .unwrap();
    db.execute(
        "INSERT INTO invite_grants (token_hash, grant_data) VALUES (?1, ?2)",
        params![token_hash, serde_json::to_vec(&grant).unwrap()],
    )
    .unwrap();
    drop(db);
    let (relay, fingerprint): (String, String) = alice
        .open_store()
        .query_row(
            "SELECT relay, fingerprint FROM device WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let code = InviteCode {
        purpose: InvitePurpose::NewUser,
        relay,
        fingerprint,
        org: rogue.org(),
        user: "eve".into(),
        secret: secret.to_hex(),
        expires_at: now + 3600,
    }
    .encode();
    let eve = Device::new(&org.dir, "eve");
    eve.ok(&["join", &code, "--display-name", "Eve"]);
    let err = alice.fails(&["approve", "eve"]);
    assert!(
        err.contains("not an admin by this device's record"),
        "{err}"
    );
}
