//! A rogue member: a real member of the organisation running a modified client that
//! sends what an honest client never would. Every other member must stay safe.

use crate::archive::{archive_device, export};
use crate::rogue::Rogue;
use muster_e2e::*;
use muster_proto::Response;
use serde_json::json;
use std::time::Duration;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// An envelope as the engine writes it, with whatever id and body the rogue chooses.
fn envelope(id: &str, sent_at: i64, body: serde_json::Value) -> serde_json::Value {
    json!({"v": 1, "id": id, "sent_at": sent_at, "body": body})
}

fn attachment(name: &str) -> serde_json::Value {
    json!({"type": "attachment", "attachment": {
        "blob_id": "00aa11bb", "key": "00".repeat(32), "blob_sha256": "00".repeat(32),
        "sha256": "00".repeat(32), "name": name, "mime": "text/plain", "size": 5}})
}

/// Alice's group `name` with `members`, synced everywhere.
fn group(org: &Org, name: &str, members: &[&Device]) -> Vec<u8> {
    let list: Vec<&str> = members.iter().map(|d| d.name.as_str()).collect();
    org.admin
        .ok(&["group", "create", name, "--members", &list.join(",")]);
    for m in members {
        m.ok(&["sync"]);
    }
    group_id(&org.admin, name)
}

#[test]
fn a_message_id_that_climbs_out_of_the_export_directory_never_reaches_a_path() {
    let org = Org::new("rogue-export");
    let bob = org.enrol("bob");
    let (archive, _server) = archive_device(&org);
    let gid = group(&org, "desk", &[&bob]);
    org.admin.ok(&["group", "policy", "desk", "--archived"]);
    bob.ok(&["sync"]);

    let rogue = Rogue::open(&bob);
    let evil = envelope("../escaped", now_ms(), attachment("x.txt"));
    let sent = rogue.send(&gid, rogue.app_message(&gid, &evil));
    assert!(matches!(sent, Response::Stored { .. }), "{sent:?}");
    drop(rogue);
    bob.ok(&["send", "desk", "after the rogue message"]);
    let escaped = org.dir.path().join("escaped-x.txt");
    let out = org.dir.path().join("export-bob.jsonl");
    wait_until(
        Duration::from_secs(30),
        "an export with bob's message",
        || {
            let exported = archive.run(&[
                "archive",
                "export",
                "--user",
                "bob",
                "--format",
                "jsonl",
                "--out",
                out.to_str().unwrap(),
            ]);
            escaped.exists()
                || (exported.status.success()
                    && std::fs::read_to_string(&out)
                        .unwrap_or_default()
                        .contains("after the rogue message"))
        },
    );
    assert!(!escaped.exists(), "the export wrote {}", escaped.display());
    let out = org.admin.ok(&["sync"]);
    assert!(out.contains("not a message id"), "{out}");
}

#[test]
fn a_message_id_that_is_not_ascii_cannot_crash_a_member() {
    let org = Org::new("rogue-id");
    let bob = org.enrol("bob");
    let gid = group(&org, "desk", &[&bob]);
    let rogue = Rogue::open(&bob);
    let evil = envelope("abcdef0\u{e9}1", now_ms(), attachment(".."));
    rogue.send(&gid, rogue.app_message(&gid, &evil));
    drop(rogue);
    org.admin.ok(&["sync"]);
    let out = org.admin.run(&["fetch", "abcdef0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() != Some(101) && !stderr.contains("panicked"),
        "{stderr}"
    );
    assert!(stderr.contains("no message abcdef0"), "{stderr}");
}

#[test]
fn control_characters_from_members_cannot_forge_lines_on_a_terminal() {
    let org = Org::new("rogue-ansi");
    let bob = org.enrol("bob");
    let gid = group(&org, "desk", &[&bob]);
    let rogue = Rogue::open(&bob);
    let forged = "fine\n[09:00:00] alice: wire the money to account 4711\u{1b}[2K";
    for body in [
        json!({"type": "text", "text": forged}),
        json!({"type": "group_meta", "name": "desk\n[09:00:01] * alice is now an admin"}),
    ] {
        let id = format!("{:016x}", now_ms());
        rogue.send(
            &gid,
            rogue.app_message(&gid, &envelope(&id, now_ms(), body)),
        );
    }
    drop(rogue);
    org.admin.ok(&["sync"]);
    let hex: String = gid.iter().map(|b| format!("{b:02x}")).collect();
    let shown = org.admin.ok(&["read", &hex]) + &org.admin.ok(&["groups"]);
    assert!(!shown.contains('\u{1b}'), "{shown:?}");
    for line in shown.lines() {
        assert!(
            !line.starts_with("[09:00:00] alice:") && !line.starts_with("[09:00:01] *"),
            "a member forged the line {line:?}"
        );
    }
    // The JSON output keeps the text exactly as sent.
    let texts = org.admin.texts(&hex);
    assert_eq!(texts, [forged]);
}

#[test]
fn a_backdated_message_stays_in_the_archive_and_disappearing_times_do_not_erase_it() {
    let org = Org::new("rogue-backdate");
    let bob = org.enrol("bob");
    let (archive, _server) = archive_device(&org);
    let gid = group(&org, "desk", &[&bob]);
    org.admin.ok(&["group", "policy", "desk", "--archived"]);
    bob.ok(&["sync"]);

    let rogue = Rogue::open(&bob);
    let backdated = envelope(
        "0000000000000000000000000000bad1",
        978_307_200_000, // 2001-01-01, far past any retention
        json!({"type": "text", "text": "I never said this"}),
    );
    rogue.send(&gid, rogue.app_message(&gid, &backdated));
    drop(rogue);
    org.admin
        .ok(&["group", "policy", "desk", "--disappear", "1s"]);
    org.admin
        .ok(&["send", "desk", "this one disappears from phones"]);
    let archived = |user: &str, text: &str| {
        export(&archive, &org.dir, user, &[])
            .iter()
            .any(|e| e["body"]["text"] == text)
    };
    wait_until(Duration::from_secs(30), "the archive has both", || {
        archived("bob", "I never said this") && archived("alice", "this one disappears from phones")
    });
    std::thread::sleep(Duration::from_millis(1100));
    archive.ok(&["archive", "prune", "--retain", "30d"]);
    assert!(
        archived("bob", "I never said this"),
        "a backdated message was pruned"
    );
    assert!(
        archived("alice", "this one disappears from phones"),
        "the group's disappearing time erased an archive entry"
    );
    // Exports select by when the archive received a message.
    let today = export(&archive, &org.dir, "bob", &["--from", "2020-01-01"]);
    assert!(today
        .iter()
        .any(|e| e["body"]["text"] == "I never said this"));
    archive.ok(&["archive", "verify"]);
}

/// Rows of `sql` (one count) in a device's store.
fn count(device: &Device, sql: &str) -> i64 {
    let db = device.open_store();
    db.query_row(sql, [], |r| r.get(0)).unwrap()
}

#[test]
fn deleting_a_message_leaves_no_trace_in_the_store_or_the_apps_folders() {
    let org = Org::new("delete-traces");
    let alice = &org.admin;
    let bob = org.enrol("bob");
    group(&org, "desk", &[&bob]);
    let file = org.dir.path().join("plan.txt");
    std::fs::write(&file, "SECRET-PLAN-FILE").unwrap();
    let out = bob.ok(&["send", "desk", "the plan", "--file", file.to_str().unwrap()]);
    let id = out.trim().strip_prefix("sent ").unwrap().to_string();
    alice.ok(&["sync"]);
    let saved = alice.home.join("files").join("plan.txt");
    std::fs::create_dir_all(saved.parent().unwrap()).unwrap();
    alice.ok(&["fetch", &id, "--out", saved.to_str().unwrap()]);
    alice.ok(&["read", "desk"]);
    bob.ok(&["sync"]);
    let receipts = |id: &str| format!("SELECT COUNT(*) FROM receipts WHERE message_id = '{id}'");
    assert!(count(&bob, &receipts(&id)) > 0, "bob has alice's receipts");

    bob.ok(&["delete", &id]);
    alice.ok(&["sync"]);
    assert!(
        !saved.exists(),
        "the saved copy in alice's data folder survived"
    );
    assert_eq!(
        count(&bob, &receipts(&id)),
        0,
        "receipts of the deleted message remain"
    );

    // An acknowledged alert leaves no acknowledgements behind either.
    let out = bob.ok(&["alert", "desk", "muster at gate 3", "--ack-required"]);
    let alert = out.trim().strip_prefix("alert sent ").unwrap().to_string();
    alice.ok(&["sync"]);
    alice.ok(&["ack", &alert]);
    alice.ok(&["read", "desk"]);
    bob.ok(&["sync"]);
    let acks = format!("SELECT COUNT(*) FROM acks WHERE message_id = '{alert}'");
    assert_eq!(count(&bob, &acks), 1);
    bob.ok(&["delete", &alert]);
    alice.ok(&["sync"]);
    for d in [alice, &bob] {
        assert_eq!(
            count(d, &acks) + count(d, &receipts(&alert)),
            0,
            "{}",
            d.name
        );
    }

    // Clearing a board entry clears the values it held.
    alice.ok(&["board", "desk", "set", "door-code", "SECRET-CODE-4711"]);
    bob.ok(&["sync"]);
    alice.ok(&["board", "desk", "clear", "door-code"]);
    bob.ok(&["sync"]);
    for d in [alice, &bob] {
        let left = count(
            d,
            "SELECT (SELECT COUNT(*) FROM board_log WHERE value LIKE '%SECRET-CODE%')
                  + (SELECT COUNT(*) FROM messages WHERE body LIKE '%SECRET-CODE%')",
        );
        assert_eq!(left, 0, "{} keeps the cleared board value", d.name);
    }
}

/// The certificate the relay holds for one of `user`'s devices.
fn certificate_bytes(org: &Org, user: &str) -> Vec<u8> {
    relay_db(org)
        .query_row(
            "SELECT certificate FROM devices WHERE user = ?1 AND status = 'approved' LIMIT 1",
            [user],
            |r| r.get(0),
        )
        .unwrap()
}

#[test]
fn an_update_that_puts_on_another_members_certificate_is_refused() {
    use openmls::prelude::*;
    let org = Org::new("rogue-update");
    let bob = org.enrol("bob");
    let carol = org.enrol("carol");
    let _dave = org.enrol("dave");
    let gid = group(&org, "ops", &[&bob, &carol]);
    // Bob's modified client proposes an Update whose leaf carries alice's (admin)
    // certificate with bob's own key.
    let alice_cert = certificate_bytes(&org, "alice");
    let rogue = Rogue::copy_of(&bob, org.dir.path());
    let bob_key = rogue.signer().public().to_vec();
    let (proposal, epoch) = rogue.commit(&gid, |group, provider, signer| {
        let params = LeafNodeParameters::builder()
            .with_credential_with_key(CredentialWithKey {
                credential: BasicCredential::new(alice_cert.clone()).into(),
                signature_key: bob_key.clone().into(),
            })
            .build();
        group
            .propose_self_update(provider, signer, params)
            .unwrap()
            .0
    });
    let answer = rogue.request(muster_proto::Request::Propose {
        group_id: gid.clone(),
        proposal: proposal.clone(),
    });
    assert!(
        matches!(&answer, Response::Error(e) if e.code == muster_proto::ErrorCode::InvalidCertificate),
        "the relay took it: {answer:?}"
    );
    // Slipped in by the operator instead, it is refused by every member.
    crate::rogue::inject(&org, &gid, "proposal", &bob, &proposal, epoch);
    let out = carol.ok(&["sync"]);
    assert!(out.contains("refused a proposal by bob"), "{out}");
    // It never wedges carol's own commits.
    carol.ok(&["group", "add", "ops", "dave"]);
    org.admin.ok(&["sync"]);
    assert_eq!(org.admin.members("ops"), ["alice", "bob", "carol", "dave"]);
}

/// Group-context extensions that set `policy`, as an admin's client makes them.
fn policy_extensions(
    policy: muster_proto::GroupPolicy,
) -> openmls::prelude::Extensions<openmls::prelude::GroupContext> {
    use openmls::prelude::*;
    Extensions::from_vec(vec![
        Extension::RequiredCapabilities(RequiredCapabilitiesExtension::new(
            &[ExtensionType::Unknown(muster_proto::GROUP_POLICY_EXTENSION)],
            &[],
            &[],
        )),
        Extension::Unknown(
            muster_proto::GROUP_POLICY_EXTENSION,
            UnknownExtension(policy.to_bytes()),
        ),
    ])
    .unwrap()
}

#[test]
fn an_admins_commit_cannot_launder_a_members_policy_proposal_and_every_change_is_shown() {
    let org = Org::new("rogue-launder");
    let alice = &org.admin;
    let bob = org.enrol("bob");
    let carol = org.enrol("carol");
    let (_archive, _server) = archive_device(&org);
    let gid = group(&org, "desk", &[&bob, &carol]);
    alice.ok(&["group", "policy", "desk", "--archived"]);
    for d in [&bob, &carol] {
        d.ok(&["sync"]);
        let shown = d.ok(&["read", "desk"]);
        assert!(
            shown.contains("alice turned on the compliance archive"),
            "{}: {shown}",
            d.name
        );
    }
    // Bob's modified client proposes to turn archiving off, hoping alice's client
    // commits it with her admin signature.
    let rogue = Rogue::copy_of(&bob, org.dir.path());
    let (proposal, epoch) = rogue.commit(&gid, |group, provider, signer| {
        let off = muster_proto::GroupPolicy {
            managed: false,
            archived: false,
        };
        group
            .propose_group_context_extensions(provider, policy_extensions(off), signer)
            .unwrap()
            .0
    });
    let answer = rogue.request(muster_proto::Request::Propose {
        group_id: gid.clone(),
        proposal: proposal.clone(),
    });
    assert!(
        matches!(&answer, Response::Error(e) if e.message.contains("policy")),
        "the relay took it: {answer:?}"
    );
    crate::rogue::inject(&org, &gid, "proposal", &bob, &proposal, epoch);
    let out = alice.ok(&["sync"]);
    assert!(out.contains("refused a proposal by bob"), "{out}");
    for d in [alice, &carol] {
        d.ok(&["sync"]);
        assert_eq!(d.group("desk")["archived"], true, "{}", d.name);
    }
}

#[test]
fn a_commit_members_would_refuse_is_refused_by_the_relay_and_the_group_goes_on() {
    let org = Org::new("rogue-commit");
    let alice = &org.admin;
    let bob = org.enrol("bob");
    let carol = org.enrol("carol");
    let (_archive, _server) = archive_device(&org);
    let gid = group(&org, "desk", &[&bob, &carol]);
    alice.ok(&["group", "policy", "desk", "--archived"]);
    bob.ok(&["sync"]);
    carol.ok(&["sync"]);
    // Bob's modified client commits the archive's removal and sends it to the relay
    // like any commit.
    let rogue = Rogue::copy_of(&bob, org.dir.path());
    let (commit, _) = rogue.commit(&gid, |group, provider, signer| {
        let leaves: Vec<_> = group
            .members()
            .filter(|m| crate::rogue::names(&m.credential, "archive"))
            .map(|m| m.index)
            .collect();
        group.remove_members(provider, signer, &leaves).unwrap().0
    });
    let answer = rogue.request(muster_proto::Request::Commit {
        group_id: gid.clone(),
        commit,
        welcome: None,
        group_info: None,
    });
    assert!(
        matches!(&answer, Response::Error(e) if e.message.contains("removes the compliance archive")),
        "the relay took it: {answer:?}"
    );
    alice.ok(&["send", "desk", "still archived"]);
    carol.ok(&["sync"]);
    bob.ok(&["sync"]);
    for d in [&bob, &carol] {
        assert!(
            d.texts("desk").contains(&"still archived".to_string()),
            "{}",
            d.name
        );
        assert_eq!(d.group("desk")["archive_members"], json!(["archive"]));
    }
}

#[test]
fn a_member_cannot_hang_words_or_a_wall_of_reactions_under_a_message() {
    let org = Org::new("rogue-reactions");
    let bob = org.enrol("bob");
    let gid = group(&org, "desk", &[&bob]);
    org.admin.ok(&["send", "desk", "contract signed?"]);
    bob.ok(&["sync"]);
    let text = |d: &Device| {
        d.json(&["read", "desk"])
            .into_iter()
            .find(|m| m["kind"] == "text")
            .expect("the question")
    };
    let target = text(&bob)["id"].as_str().unwrap().to_string();
    let rogue = Rogue::open(&bob);
    let mut sent = vec!["approved by legal".to_string(), "ok\nno".to_string()];
    sent.extend(
        [
            "👍", "❤️", "😂", "😮", "✅", "👀", "🔥", "🎉", "🙏", "💯", "🚀", "🤝",
        ]
        .map(str::to_string),
    );
    for (i, emoji) in sent.iter().enumerate() {
        let body = json!({"type": "reaction", "target": target, "emoji": emoji});
        let id = format!("{:015x}{i:x}", now_ms());
        rogue.send(
            &gid,
            rogue.app_message(&gid, &envelope(&id, now_ms(), body)),
        );
    }
    drop(rogue);
    org.admin.ok(&["sync"]);
    let message = text(&org.admin);
    let reactions = message["reactions"].as_object().unwrap();
    assert!(
        !reactions.contains_key("approved by legal") && !reactions.contains_key("ok\nno"),
        "{reactions:?}"
    );
    assert_eq!(
        reactions.len(),
        10,
        "one member, at most ten: {reactions:?}"
    );
}

#[test]
fn a_text_sent_to_some_members_alone_is_dropped_by_them() {
    let org = Org::new("rogue-directed");
    let bob = org.enrol("bob");
    let carol = org.enrol("carol");
    let gid = group(&org, "desk", &[&bob, &carol]);
    let rogue = Rogue::open(&bob);
    // Bob tells alice something carol never sees, routed as receipts are: bound to alice
    // alone (the relay routes nothing else that way). Numbered, so that carol would see no
    // gap when his next message comes; and, in a second try, without a number.
    let alice_only = muster_proto::directed_aad(&["alice".to_string()]);
    for (id, text, numbered) in [
        ("0123456789abcdef", "ONLY-FOR-ALICE-51", true),
        ("0123456789abcde0", "ONLY-FOR-ALICE-52", false),
    ] {
        let mut body = envelope(id, now_ms(), json!({"type": "text", "text": text}));
        if !numbered {
            body["n"] = serde_json::Value::Null;
        }
        let message = rogue.app_message_with_aad(&gid, &body, alice_only.clone());
        let answer = rogue.request(muster_proto::Request::SendTo {
            group_id: gid.clone(),
            message,
            client_id: id.as_bytes().to_vec(),
            to: vec!["alice".into()],
        });
        assert!(matches!(answer, Response::Stored { .. }), "{answer:?}");
    }
    // The relay routes a message to some members only as its sender bound it.
    let message = rogue.app_message(
        &gid,
        &envelope(
            "0123456789abcde1",
            now_ms(),
            json!({"type": "text", "text": "x"}),
        ),
    );
    let answer = rogue.request(muster_proto::Request::SendTo {
        group_id: gid.clone(),
        message,
        client_id: b"unbound".to_vec(),
        to: vec!["alice".into()],
    });
    assert!(matches!(answer, Response::Error(_)), "{answer:?}");
    drop(rogue);
    let out = org.admin.run(&["sync"]);
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("went to some members only"), "{said}");
    let hex: String = gid.iter().map(|b| format!("{b:02x}")).collect();
    assert!(
        !org.admin
            .texts(&hex)
            .iter()
            .any(|t| t.contains("ONLY-FOR-ALICE")),
        "alice shows a text carol never got"
    );
}

#[test]
fn a_forged_signature_in_a_long_backlog_is_refused_and_the_rest_is_stored() {
    let org = Org::new("rogue-backlog");
    let bob = org.enrol("bob");
    let carol = org.enrol("carol");
    let gid = group(&org, "desk", &[&bob, &carol]);
    let hex: String = gid.iter().map(|b| format!("{b:02x}")).collect();
    // While carol is away, bob's modified client sends 41 texts; the middle one is signed
    // by a key that is not the one in his leaf. Carol takes them in as one batch, long
    // enough that its signatures are checked on a second thread.
    let rogue = Rogue::open(&bob);
    let stranger =
        openmls_basic_credential::SignatureKeyPair::new(openmls::prelude::SignatureScheme::ED25519)
            .unwrap();
    for i in 0..41 {
        let text = if i == 20 {
            "FORGED-BACKLOG-TEXT".to_string()
        } else {
            format!("backlog text number {i}")
        };
        let body = envelope(
            &format!("{:016x}", 0xb0_0000 + i),
            now_ms(),
            json!({"type": "text", "text": text}),
        );
        let message = if i == 20 {
            rogue.app_message_signed_by(&gid, &body, Vec::new(), &stranger)
        } else {
            rogue.app_message(&gid, &body)
        };
        let answer = rogue.send(&gid, message);
        assert!(matches!(answer, Response::Stored { .. }), "{answer:?}");
    }
    drop(rogue);
    let out = carol.run(&["sync"]);
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("cannot be processed"), "{said}");
    let texts = carol.texts(&hex);
    assert!(
        !texts.iter().any(|t| t.contains("FORGED")),
        "carol stored a text whose signature does not verify: {texts:?}"
    );
    let backlog = texts
        .iter()
        .filter(|t| t.starts_with("backlog text"))
        .count();
    assert_eq!(backlog, 40, "{texts:?}");
    // Indexed for search at the batch's end, the forged one not.
    assert_eq!(carol.json(&["search", "backlog"]).len(), 40);
    assert!(carol.json(&["search", "forged"]).is_empty());
}
