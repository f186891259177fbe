//! A hostile relay operator edits the relay's database between syncs. Every client must
//! reject or detect each attack, and tell its user.

use muster_e2e::{device_id, group_id, relay_db, Org};
use rusqlite::params;

#[test]
fn a_substituted_key_package_is_refused() {
    let org = Org::new("hostile-kp");
    let bob = org.enrol("bob");
    let carol = org.enrol("carol");
    let (bob_id, carol_id) = (device_id(&bob), device_id(&carol));
    // The operator hands out carol's KeyPackage when someone asks for bob's.
    relay_db(&org)
        .execute(
            "UPDATE key_packages SET data = (SELECT data FROM key_packages WHERE device_id = ?2 LIMIT 1)
             WHERE device_id = ?1",
            params![bob_id, carol_id],
        )
        .unwrap();
    let err = org
        .admin
        .fails(&["group", "create", "ops", "--members", "bob"]);
    assert!(
        err.contains("KeyPackage of carol for bob: refused"),
        "{err}"
    );
}

#[test]
fn a_replayed_message_is_detected_and_not_stored_twice() {
    let org = Org::new("hostile-replay");
    let bob = org.enrol("bob");
    org.admin
        .ok(&["group", "create", "ops", "--members", "bob"]);
    bob.ok(&["sync"]);
    org.admin.ok(&["send", "ops", "transfer approved"]);
    bob.ok(&["sync"]);
    let gid = group_id(&org.admin, "ops");
    let db = relay_db(&org);
    let last: i64 = db
        .query_row(
            "SELECT last_seq FROM groups WHERE group_id = ?1",
            [&gid],
            |r| r.get(0),
        )
        .unwrap();
    db.execute(
        "INSERT INTO messages (group_id, seq, epoch, kind, sender_device, client_id, data, stored_at)
         SELECT group_id, ?2, epoch, kind, sender_device, NULL, data, stored_at FROM messages
         WHERE group_id = ?1 AND kind = 'application' AND sender_device = ?3 ORDER BY seq DESC LIMIT 1",
        params![gid, last + 1, device_id(&org.admin)],
    )
    .unwrap();
    db.execute(
        "UPDATE groups SET last_seq = ?2 WHERE group_id = ?1",
        params![gid, last + 1],
    )
    .unwrap();
    let out = bob.ok(&["sync"]);
    assert!(
        out.contains("warning: message cannot be processed"),
        "{out}"
    );
    assert_eq!(bob.texts("ops"), ["transfer approved"]);
    let notices = bob.json(&["read", "ops"]);
    assert!(notices.iter().any(|m| m["kind"] == "system"
        && m["text"]
            .as_str()
            .unwrap()
            .contains("could not be processed")));
}

#[test]
fn a_dropped_commit_is_detected() {
    let org = Org::new("hostile-drop");
    let bob = org.enrol("bob");
    let _carol = org.enrol("carol");
    org.admin
        .ok(&["group", "create", "ops", "--members", "bob"]);
    bob.ok(&["sync"]);
    org.admin.ok(&["group", "add", "ops", "carol"]);
    // The operator withholds the commit from bob.
    let gid = group_id(&org.admin, "ops");
    relay_db(&org)
        .execute(
            "DELETE FROM messages WHERE group_id = ?1 AND kind = 'commit'
             AND seq = (SELECT MAX(seq) FROM messages WHERE group_id = ?1 AND kind = 'commit')",
            [&gid],
        )
        .unwrap();
    org.admin.ok(&["send", "ops", "after the add"]);
    let out = bob.ok(&["sync"]);
    assert!(
        out.contains("warning: message cannot be processed"),
        "{out}"
    );
    assert!(!bob.texts("ops").contains(&"after the add".to_string()));
}

#[test]
fn a_welcome_to_a_group_never_joined_is_rejected() {
    let org = Org::new("hostile-welcome");
    let bob = org.enrol("bob");
    let carol = org.enrol("carol");
    let (bob_id, carol_id) = (device_id(&bob), device_id(&carol));
    org.admin
        .ok(&["group", "create", "secret", "--members", "carol"]);
    // The operator copies carol's Welcome to bob, who was never invited.
    relay_db(&org)
        .execute(
            "INSERT INTO welcomes (device_id, group_id, data, stored_at)
             SELECT ?1, group_id, data, stored_at FROM welcomes WHERE device_id = ?2",
            params![bob_id, carol_id],
        )
        .unwrap();
    let out = bob.ok(&["sync"]);
    assert!(
        out.contains("warning: rejected an invitation to a group"),
        "{out}"
    );
    assert!(bob.json(&["groups"]).is_empty());
    carol.ok(&["sync"]);
    assert_eq!(carol.members("secret"), ["alice", "carol"]);
}

/// The operator makes up an identity ("alice", admin, certified by a root key of its own
/// that claims to be the organisation's), creates a group with it from a KeyPackage of
/// bob's that the relay holds, and queues the Welcome for bob.
#[test]
fn a_forged_welcome_from_a_self_certified_member_is_rejected() {
    use muster_proto::{
        device_id_for, now_unix, CertificateBody, OrgDescriptor, OrgRootKey, Profile, Role,
    };
    use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
    use openmls::prelude::*;
    use openmls_basic_credential::SignatureKeyPair;
    use openmls_rust_crypto::OpenMlsRustCrypto;

    let org = Org::new("hostile-forged");
    let bob = org.enrol("bob");
    let bob_id = device_id(&bob);
    let db = relay_db(&org);
    let real_org: OrgDescriptor = serde_json::from_slice(
        &db.query_row("SELECT value FROM meta WHERE key = 'org'", [], |r| {
            r.get::<_, Vec<u8>>(0)
        })
        .unwrap(),
    )
    .unwrap();
    let bobs_key_package: Vec<u8> = db
        .query_row(
            "SELECT data FROM key_packages WHERE device_id = ?1 LIMIT 1",
            [&bob_id],
            |r| r.get(0),
        )
        .unwrap();

    let fake_root = OrgRootKey::generate();
    let fake_org = OrgDescriptor {
        root_public_key: fake_root.public_key(),
        ..real_org
    };
    let suite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;
    let provider = OpenMlsRustCrypto::default();
    let signer = SignatureKeyPair::new(suite.signature_algorithm()).unwrap();
    let now = now_unix();
    let forged = fake_root.sign(CertificateBody {
        org_id: fake_org.org_id.clone(),
        user: "alice".into(),
        device_id: device_id_for(signer.public()),
        device_key: signer.public().to_vec(),
        profile: Profile {
            display_name: "alice display".into(),
            ..Default::default()
        },
        roles: vec![Role::Admin, Role::Member],
        not_before: now - 10,
        not_after: now + 3600,
    });
    let credential = CredentialWithKey {
        credential: BasicCredential::new(forged.to_bytes()).into(),
        signature_key: signer.public().into(),
    };
    let config = MlsGroupCreateConfig::builder()
        .ciphersuite(suite)
        .use_ratchet_tree_extension(true)
        .build();
    let mut group = MlsGroup::new(&provider, &signer, &config, credential).unwrap();
    let key_package = KeyPackageIn::tls_deserialize_exact(&bobs_key_package)
        .unwrap()
        .validate(provider.crypto(), ProtocolVersion::Mls10)
        .unwrap();
    let (_, welcome, _) = group
        .add_members(&provider, &signer, &[key_package])
        .unwrap();
    db.execute(
        "INSERT INTO welcomes (device_id, group_id, data, stored_at) VALUES (?1, ?2, ?3, ?4)",
        params![
            bob_id,
            group.group_id().as_slice(),
            welcome.tls_serialize_detached().unwrap(),
            now as i64
        ],
    )
    .unwrap();

    let out = bob.ok(&["sync"]);
    assert!(
        out.contains("warning: rejected an invitation to a group")
            && out.contains("signature does not verify against the organisation root key"),
        "{out}"
    );
    assert!(bob.json(&["groups"]).is_empty());
    // Bob still works with the real organisation.
    org.admin
        .ok(&["group", "create", "real", "--members", "bob"]);
    bob.ok(&["sync"]);
    assert_eq!(bob.members("real"), ["alice", "bob"]);
}

#[test]
fn a_replayed_welcome_cannot_roll_a_device_back() {
    let org = Org::new("hostile-rewelcome");
    let bob = org.enrol("bob");
    let _carol = org.enrol("carol");
    let bob_id = device_id(&bob);
    // The operator hands out bob's last-resort KeyPackage, which bob keeps after use.
    relay_db(&org)
        .execute(
            "DELETE FROM key_packages WHERE device_id = ?1 AND last_resort = 0",
            [&bob_id],
        )
        .unwrap();
    org.admin
        .ok(&["group", "create", "ops", "--members", "bob"]);
    let old_welcome: Vec<u8> = relay_db(&org)
        .query_row(
            "SELECT data FROM welcomes WHERE device_id = ?1",
            [&bob_id],
            |r| r.get(0),
        )
        .unwrap();
    bob.ok(&["sync"]);
    org.admin.ok(&["group", "add", "ops", "carol"]);
    org.admin.ok(&["send", "ops", "before the replay"]);
    bob.ok(&["sync"]);
    // The operator hands bob his first Welcome again.
    let gid = group_id(&org.admin, "ops");
    relay_db(&org)
        .execute(
            "INSERT INTO welcomes (device_id, group_id, data, stored_at) VALUES (?1, ?2, ?3, 0)",
            params![bob_id, gid, old_welcome],
        )
        .unwrap();
    let out = bob.ok(&["sync"]);
    assert!(out.contains("rejected an invitation"), "{out}");
    org.admin.ok(&["send", "ops", "after the replay"]);
    bob.ok(&["sync"]);
    assert_eq!(bob.texts("ops"), ["before the replay", "after the replay"]);
    assert_eq!(bob.members("ops"), ["alice", "bob", "carol"]);
}

#[test]
fn withheld_and_reordered_messages_are_reported() {
    let org = Org::new("hostile-withhold");
    let bob = org.enrol("bob");
    org.admin
        .ok(&["group", "create", "ops", "--members", "bob"]);
    bob.ok(&["sync"]);
    for text in ["one", "two", "three"] {
        org.admin.ok(&["send", "ops", text]);
    }
    // The operator drops "two" before bob fetches it.
    let gid = group_id(&org.admin, "ops");
    let alice_id = device_id(&org.admin);
    let db = relay_db(&org);
    let seqs: Vec<i64> = db
        .prepare(
            "SELECT seq FROM messages WHERE group_id = ?1 AND kind = 'application'
             AND sender_device = ?2 ORDER BY seq",
        )
        .unwrap()
        .query_map(params![gid, alice_id], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let two = seqs[seqs.len() - 2];
    db.execute(
        "DELETE FROM messages WHERE group_id = ?1 AND seq = ?2",
        params![gid, two],
    )
    .unwrap();
    drop(db);
    let out = bob.ok(&["sync"]);
    assert!(
        out.contains("1 message from alice") && out.contains("withheld"),
        "{out}"
    );
    assert_eq!(bob.texts("ops"), ["one", "three"]);
    let shown = bob.ok(&["read", "ops"]);
    assert!(shown.contains("never arrived"), "{shown}");
}

/// The operator, helped by mallory (an enrolled colleague outside the group), builds a
/// group of its own under the real group's id, at a later epoch, and tries to make bob's
/// device "rejoin" it: bob's device refuses a GroupInfo that nobody in the group signed.
#[test]
fn a_forged_group_info_cannot_pull_a_member_into_a_copy_of_the_group() {
    use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
    use openmls::prelude::*;

    let org = Org::new("hostile-groupinfo");
    let bob = org.enrol("bob");
    let mallory = org.enrol("mallory");
    org.admin
        .ok(&["group", "create", "ops", "--members", "bob"]);
    bob.ok(&["sync"]);
    let gid = group_id(&org.admin, "ops");
    let rogue = crate::rogue::Rogue::copy_of(&mallory, org.dir.path());
    let provider = rogue.provider();
    let signer = rogue.signer();
    let cert: Vec<u8> = relay_db(&org)
        .query_row(
            "SELECT certificate FROM devices WHERE user = 'mallory'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let credential = CredentialWithKey {
        credential: BasicCredential::new(cert).into(),
        signature_key: signer.public().into(),
    };
    let policy_ext = Extension::Unknown(
        muster_proto::GROUP_POLICY_EXTENSION,
        UnknownExtension(muster_proto::GroupPolicy::default().to_bytes()),
    );
    let config = MlsGroupCreateConfig::builder()
        .ciphersuite(Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519)
        .use_ratchet_tree_extension(true)
        .capabilities(
            Capabilities::builder()
                .extensions(vec![
                    ExtensionType::LastResort,
                    ExtensionType::Unknown(muster_proto::GROUP_POLICY_EXTENSION),
                ])
                .build(),
        )
        .with_group_context_extensions(Extensions::single(policy_ext).unwrap())
        .build();
    let mut forged = MlsGroup::new_with_group_id(
        &provider,
        &signer,
        &config,
        GroupId::from_slice(&gid),
        credential,
    )
    .unwrap();
    let bobs_kp: Vec<u8> = relay_db(&org)
        .query_row(
            "SELECT data FROM key_packages WHERE device_id = ?1 LIMIT 1",
            [device_id(&bob)],
            |r| r.get(0),
        )
        .unwrap();
    let kp = KeyPackageIn::tls_deserialize_exact(&bobs_kp)
        .unwrap()
        .validate(provider.crypto(), ProtocolVersion::Mls10)
        .unwrap();
    forged.add_members(&provider, &signer, &[kp]).unwrap();
    forged.merge_pending_commit(&provider).unwrap();
    for _ in 0..3 {
        forged
            .self_update(&provider, &signer, LeafNodeParameters::default())
            .unwrap();
        forged.merge_pending_commit(&provider).unwrap();
    }
    let info = forged
        .export_group_info(provider.crypto(), &signer, true)
        .unwrap()
        .tls_serialize_detached()
        .unwrap();
    let lure = forged
        .create_message(&provider, &signer, b"{}")
        .unwrap()
        .tls_serialize_detached()
        .unwrap();
    let epoch = forged.epoch().as_u64();
    let db = relay_db(&org);
    db.execute(
        "INSERT OR REPLACE INTO group_infos (group_id, epoch, data) VALUES (?1, ?2, ?3)",
        params![gid, epoch as i64, info],
    )
    .unwrap();
    drop(db);
    // A message of the copy's later epoch makes bob's device think it fell behind.
    crate::rogue::inject(&org, &gid, "application", &mallory, &lure, epoch);
    let out = bob.ok(&["sync"]);
    assert!(out.contains("not signed by anyone in the group"), "{out}");
    org.admin.ok(&["send", "ops", "still the real group"]);
    bob.ok(&["sync"]);
    assert_eq!(bob.texts("ops"), ["still the real group"]);
    assert_eq!(bob.members("ops"), ["alice", "bob"]);
}

#[test]
fn the_relay_cannot_seat_someone_a_group_never_listed_as_waiting() {
    let org = Org::new("hostile-waiting");
    let alice = &org.admin;
    let bob = org.enrol("bob");
    let mallory = org.enrol("mallory");
    alice.ok(&["group", "create", "secret", "--members", "bob"]);
    // The operator tells mallory's device that "secret" waits for her.
    relay_db(&org)
        .execute(
            "INSERT INTO pending_seats (group_id, user) VALUES (?1, 'mallory')",
            params![group_id(alice, "secret")],
        )
        .unwrap();
    let out = mallory.run(&["sync"]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("does not list mallory as waiting"), "{said}");
    assert!(mallory.json(&["groups"]).is_empty());
    bob.ok(&["sync"]);
    assert_eq!(bob.members("secret"), ["alice", "bob"]);
}
