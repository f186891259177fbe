//! The compliance archive: a visible, verifiable member of archived groups.

use muster_e2e::*;
use serde_json::Value;
use std::process::{Child, Stdio};
use std::time::Duration;

/// A running `muster archive serve`, stopped when dropped.
pub(crate) struct ArchiveServer(Child);

impl Drop for ArchiveServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Enrols `archive` as the organisation's archive device and starts serving it.
pub(crate) fn archive_device(org: &Org) -> (Device, ArchiveServer) {
    let code = org.admin.ok(&["invite", "archive"]).trim().to_string();
    let archive = Device::new(&org.dir, "archive");
    archive.ok(&["join", &code, "--display-name", "Compliance archive"]);
    let approved = org.admin.ok(&["approve", "archive", "--archive"]);
    assert!(approved.contains("compliance archive"), "{approved}");
    archive.ok(&["sync"]);
    let child = archive
        .command()
        .args(["archive", "serve", "--retain", "7y"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start archive serve");
    (archive, ArchiveServer(child))
}

fn sent_id(out: &str) -> String {
    out.trim()
        .strip_prefix("sent ")
        .expect("send prints the id")
        .to_string()
}

/// The archive's export for `user`, as JSON lines.
pub(crate) fn export(archive: &Device, dir: &TempDir, user: &str, extra: &[&str]) -> Vec<Value> {
    let out = dir.path().join(format!("export-{user}.jsonl"));
    let out_arg = out.to_str().expect("utf-8 path");
    let mut args = vec![
        "archive", "export", "--user", user, "--format", "jsonl", "--out", out_arg,
    ];
    args.extend_from_slice(extra);
    archive.ok(&args);
    std::fs::read_to_string(&out)
        .expect("export file")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

fn bodies_of_type<'a>(entries: &'a [Value], kind: &str) -> Vec<&'a Value> {
    entries
        .iter()
        .filter(|e| e["body"]["type"] == kind)
        .map(|e| &e["body"])
        .collect()
}

#[test]
fn an_archived_groups_history_reaches_the_archive_and_nothing_else_does() {
    let org = Org::new("archive-history");
    let bob = org.enrol("bob");
    let (archive, _server) = archive_device(&org);
    let alice = &org.admin;

    alice.ok(&["group", "create", "finance", "--members", "bob"]);
    let policy = alice.ok(&["group", "policy", "finance", "--archived"]);
    assert!(policy.contains("archived by"), "{policy}");
    alice.ok(&["group", "create", "lunch", "--members", "bob"]);

    // Every member sees the archive: the flag and the member.
    bob.ok(&["sync"]);
    let seen = bob.group("finance");
    assert_eq!(seen["archived"], true, "{seen}");
    assert_eq!(seen["archive_members"], serde_json::json!(["archive"]));
    assert!(bob.members("finance").contains(&"archive".to_string()));
    assert_eq!(bob.group("lunch")["archived"], false);
    assert!(bob.ok(&["groups"]).contains("[archived]"));

    let first = sent_id(&alice.ok(&["send", "finance", "Q3 numbers are final"]));
    let doomed = sent_id(&alice.ok(&["send", "finance", "wrong spreadsheet attached"]));
    alice.ok(&["edit", &first, "Q3 numbers are final (revised)"]);
    alice.ok(&["delete", &doomed]);
    let alert = alice.ok(&["alert", "finance", "auditors arrive at 9", "--ack-required"]);
    let alert = alert
        .trim()
        .strip_prefix("alert sent ")
        .unwrap()
        .to_string();
    bob.ok(&["sync"]);
    bob.ok(&["ack", &alert]);
    bob.ok(&["send", "finance", "noted"]);
    let report = org.dir.path().join("q3-report.bin");
    let report_bytes: Vec<u8> = (0..1_500_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&report, &report_bytes).unwrap();
    bob.ok(&[
        "send",
        "finance",
        "the full report",
        "--file",
        report.to_str().unwrap(),
    ]);
    alice.ok(&["send", "lunch", "LUNCH-MARKER-77"]);

    // The archive keeps each of alice's messages as sent, edits and deletes included.
    let mut alices = Vec::new();
    wait_until(
        Duration::from_secs(30),
        "the archive holds alice's history",
        || {
            alices = export(&archive, &org.dir, "alice", &[]);
            alices.len() >= 5
        },
    );
    let texts: Vec<&str> = bodies_of_type(&alices, "text")
        .iter()
        .map(|b| b["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        texts,
        ["Q3 numbers are final", "wrong spreadsheet attached"]
    );
    assert_eq!(
        bodies_of_type(&alices, "edit")[0]["text"],
        "Q3 numbers are final (revised)"
    );
    assert_eq!(
        bodies_of_type(&alices, "delete")[0]["target"],
        doomed.as_str()
    );
    assert_eq!(
        bodies_of_type(&alices, "alert")[0]["text"],
        "auditors arrive at 9"
    );
    assert!(alices.iter().all(|e| e["group"] == "finance"));
    assert!(alices.iter().all(|e| e["sender"] == "alice"));

    let mut bobs = Vec::new();
    wait_until(
        Duration::from_secs(30),
        "the archive holds bob's ack",
        || {
            bobs = export(&archive, &org.dir, "bob", &["--group", "finance"]);
            !bodies_of_type(&bobs, "ack").is_empty() && !bodies_of_type(&bobs, "text").is_empty()
        },
    );
    assert_eq!(bodies_of_type(&bobs, "ack")[0]["target"], alert.as_str());
    // The attachment is in the archive, encrypted at rest, and exports as sent.
    let exported = bobs.iter().find(|e| e["file"].is_string()).unwrap();
    assert_eq!(exported["body"]["caption"], "the full report");
    assert_eq!(
        std::fs::read(exported["file"].as_str().unwrap()).unwrap(),
        report_bytes
    );
    assert!(!dir_contains(
        &archive.home.join("archive-blobs"),
        &report_bytes[..64]
    ));

    // A group that is not archived never reaches the archive.
    assert!(!dir_contains(&archive.home, b"LUNCH-MARKER-77"));
    // The relay only ever held ciphertext.
    assert!(!dir_contains(&org.relay.data, b"Q3 numbers are final"));
    assert!(!dir_contains(&org.relay.data, b"auditors arrive"));

    // The chain verifies, and every export is in the access log.
    let verified = archive.ok(&["archive", "verify"]);
    assert!(verified.contains("intact"), "{verified}");
    let log = archive.json(&["archive", "access-log"]);
    assert!(log
        .iter()
        .any(|e| e["action"] == "export"
            && e["what"].as_str().unwrap().contains("messages of alice")));

    // eml export of the same account.
    let eml = org.dir.path().join("alice.mbox");
    archive.ok(&[
        "archive",
        "export",
        "--user",
        "alice",
        "--format",
        "eml",
        "--out",
        eml.to_str().unwrap(),
    ]);
    let mbox = std::fs::read_to_string(&eml).unwrap();
    assert!(mbox.contains("Subject: [finance] text"), "{mbox}");
    assert!(mbox.contains("Q3 numbers are final"));

    // A spot-check sample is reproducible from its seed, and logged.
    let first_draw = archive.ok(&["archive", "sample", "--count", "3", "--seed", "42"]);
    let second_draw = archive.ok(&["archive", "sample", "--count", "3", "--seed", "42"]);
    assert_eq!(first_draw, second_draw);
    assert_eq!(first_draw.lines().count(), 3);
    let log = archive.ok(&["archive", "access-log"]);
    assert!(log.contains("sample") && log.contains("seed 42"), "{log}");
}

#[test]
fn members_refuse_to_send_once_the_archive_is_gone_and_cannot_remove_it() {
    let org = Org::new("archive-missing");
    let bob = org.enrol("bob");
    let (_archive, _server) = archive_device(&org);
    let alice = &org.admin;
    alice.ok(&["group", "create", "desk", "--members", "bob"]);
    alice.ok(&["group", "policy", "desk", "--archived"]);
    bob.ok(&["sync"]);
    bob.ok(&["send", "desk", "before"]);

    // Removing the archive while the group is archived is refused.
    let err = bob.fails(&["group", "remove", "desk", "archive"]);
    assert!(err.contains("compliance archive"), "{err}");

    // The archive device is revoked: it leaves every group, and nobody may send.
    alice.ok(&["admin", "revoke", "archive"]);
    alice.ok(&["sync"]);
    bob.ok(&["sync"]);
    let seen = bob.group("desk");
    assert_eq!(seen["archived"], true);
    assert_eq!(seen["archive_members"], serde_json::json!([]));
    let err = bob.fails(&["send", "desk", "after"]);
    assert!(err.contains("no valid archive member"), "{err}");
    let err = alice.fails(&["send", "desk", "after"]);
    assert!(err.contains("no valid archive member"), "{err}");

    // Once an admin turns archiving off, the group is usable again.
    alice.ok(&["group", "policy", "desk", "--no-archived"]);
    bob.ok(&["sync"]);
    assert_eq!(bob.group("desk")["archived"], false);
    bob.ok(&["send", "desk", "after"]);
}

#[test]
fn one_edited_byte_fails_verify_and_retention_spares_held_users() {
    let org = Org::new("archive-tamper");
    let bob = org.enrol("bob");
    let (archive, server) = archive_device(&org);
    let alice = &org.admin;
    alice.ok(&["group", "create", "ops", "--members", "bob"]);
    alice.ok(&["group", "policy", "ops", "--archived"]);
    bob.ok(&["sync"]);
    alice.ok(&["send", "ops", "alice-one"]);
    bob.ok(&["send", "ops", "bob-one"]);
    alice.ok(&["send", "ops", "alice-two"]);
    wait_until(
        Duration::from_secs(30),
        "the archive holds all three",
        || {
            export(&archive, &org.dir, "alice", &[]).len() == 2
                && export(&archive, &org.dir, "bob", &[]).len() == 1
        },
    );
    drop(server);

    // Retention: everything is older than 1 s, but bob is under legal hold.
    archive.ok(&["archive", "hold", "bob"]);
    let t0 = std::time::Instant::now();
    wait_until(Duration::from_secs(5), "a second has passed", || {
        t0.elapsed() > Duration::from_millis(1100)
    });
    let pruned = archive.ok(&["archive", "prune", "--retain", "1s"]);
    assert!(pruned.contains("deleted 2 entries"), "{pruned}");
    assert!(export(&archive, &org.dir, "alice", &[]).is_empty());
    assert_eq!(export(&archive, &org.dir, "bob", &[]).len(), 1);
    assert!(archive.ok(&["archive", "verify"]).contains("intact"));
    let log = archive.ok(&["archive", "access-log"]);
    assert!(log.contains("hold  bob"), "{log}");

    // One byte of one entry changed on disk: verify fails and names the entry.
    let db = archive.open_store();
    let seq: i64 = db
        .query_row(
            "SELECT seq FROM archive_entries WHERE record LIKE '%bob-one%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    db.execute(
        "UPDATE archive_entries SET record = replace(record, 'bob-one', 'bob-One') WHERE seq = ?1",
        [seq],
    )
    .unwrap();
    drop(db);
    let err = archive.fails(&["archive", "verify"]);
    assert!(err.contains(&format!("entry {seq}")), "{err}");
}

#[test]
fn a_modified_client_that_removes_the_archive_is_refused_by_everyone_else() {
    let org = Org::new("archive-hostile");
    let bob = org.enrol("bob");
    let carol = org.enrol("carol");
    let (_archive, _server) = archive_device(&org);
    let alice = &org.admin;
    alice.ok(&["group", "create", "desk", "--members", "bob,carol"]);
    alice.ok(&["group", "policy", "desk", "--archived"]);
    bob.ok(&["sync"]);
    carol.ok(&["sync"]);

    // Bob's modified client signs a commit removing the archive, from a copy of his
    // state; the operator slips it into the group.
    let gid = group_id(alice, "desk");
    let rogue = crate::rogue::Rogue::copy_of(&bob, org.dir.path());
    let (commit, epoch) = rogue.commit(&gid, |group, provider, signer| {
        let leaves: Vec<_> = group
            .members()
            .filter(|m| crate::rogue::names(&m.credential, "archive"))
            .map(|m| m.index)
            .collect();
        group.remove_members(provider, signer, &leaves).unwrap().0
    });
    crate::rogue::inject(&org, &gid, "commit", &bob, &commit, epoch);

    for member in [alice, &carol] {
        let out = member.ok(&["sync"]);
        assert!(
            out.contains("removes the compliance archive"),
            "{}: {out}",
            member.name
        );
        let seen = member.group("desk");
        assert_eq!(seen["archive_members"], serde_json::json!(["archive"]));
    }
    // The group goes on, with its archive.
    alice.ok(&["send", "desk", "still archived"]);
    carol.ok(&["sync"]);
    assert!(carol.texts("desk").contains(&"still archived".to_string()));
}

/// The archive host's own database, as whoever runs that host could edit it.
fn archive_db(archive: &Device) -> rusqlite::Connection {
    let db = archive.open_store();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    db
}

/// An archived group with three of alice's messages archived and every checkpoint
/// published on the relay; the archive server is stopped afterwards.
fn archived_history(org: &Org) -> (Device, i64) {
    let bob = org.enrol("bob");
    let (archive, server) = archive_device(org);
    org.admin
        .ok(&["group", "create", "desk", "--members", "bob"]);
    org.admin.ok(&["group", "policy", "desk", "--archived"]);
    bob.ok(&["sync"]);
    for text in ["first", "second", "third"] {
        org.admin.ok(&["send", "desk", text]);
    }
    let last = || -> i64 {
        archive_db(&archive)
            .query_row(
                "SELECT COALESCE(MAX(seq), 0) FROM archive_entries",
                [],
                |r| r.get(0),
            )
            .unwrap()
    };
    wait_until(
        Duration::from_secs(30),
        "the archive to publish its history",
        || {
            let texts = archive_db(&archive)
            .query_row(
                "SELECT COUNT(*) FROM archive_entries WHERE kind = 'message' AND record LIKE '%third%'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .unwrap();
            let published: i64 = relay_db(org)
                .query_row(
                    "SELECT COALESCE(MAX(entry_seq), 0) FROM archive_checkpoints",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            texts == 1 && published == last()
        },
    );
    drop(server);
    // Admin devices keep their own copy of what the archive published.
    org.admin.ok(&["sync"]);
    let last = last();
    (archive, last)
}

#[test]
fn entries_cut_off_the_archives_end_are_found_by_the_checkpoints_it_published() {
    let org = Org::new("archive-tail");
    let (archive, last) = archived_history(&org);
    archive.ok(&["archive", "verify"]);
    // Whoever runs the archive host deletes the newest entries and their checkpoints:
    // what is left is a consistent, fully signed chain.
    let db = archive_db(&archive);
    db.execute("DELETE FROM archive_entries WHERE seq > ?1", [last - 2])
        .unwrap();
    db.execute(
        "DELETE FROM archive_checkpoints WHERE entry_seq > ?1",
        [last - 2],
    )
    .unwrap();
    drop(db);
    archive.ok(&["archive", "verify", "--offline"]);
    let err = archive.fails(&["archive", "verify"]);
    assert!(err.contains("removed from its end"), "{err}");
}

#[test]
fn an_admin_checks_the_archive_against_the_checkpoints_it_collected() {
    let org = Org::new("archive-check");
    let (archive, _) = archived_history(&org);
    let file = org.dir.path().join("chain.json");
    archive.ok(&["archive", "export-chain", "--out", file.to_str().unwrap()]);
    org.admin
        .ok(&["admin", "archive-check", file.to_str().unwrap()]);
    // The host hands over a chain with its end cut off (and the tail's checkpoints).
    let mut chain: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let entries = chain["entries"].as_array_mut().unwrap();
    let keep = entries.len() - 3;
    entries.truncate(keep);
    let kept_seq = entries.last().unwrap()["seq"].as_i64().unwrap();
    chain["checkpoints"]
        .as_array_mut()
        .unwrap()
        .retain(|c| c["entry_seq"].as_i64().unwrap() <= kept_seq);
    std::fs::write(&file, serde_json::to_vec(&chain).unwrap()).unwrap();
    let err = org
        .admin
        .fails(&["admin", "archive-check", file.to_str().unwrap()]);
    assert!(err.contains("removed from its end"), "{err}");
}

#[test]
fn an_entry_cleared_outside_retention_fails_verify() {
    let org = Org::new("archive-cleared");
    let (archive, _) = archived_history(&org);
    // The host clears a fresh message as if retention had: no prune allowed it.
    let seq: i64 = archive_db(&archive)
        .query_row(
            "SELECT seq FROM archive_entries WHERE kind = 'message' AND record LIKE '%second%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    archive_db(&archive)
        .execute(
            "UPDATE archive_entries SET record = NULL, user = NULL, pruned_at = 1 WHERE seq = ?1",
            [seq],
        )
        .unwrap();
    let err = archive.fails(&["archive", "verify", "--offline"]);
    assert!(
        err.contains(&format!("entry {seq}")) && err.contains("no recorded prune"),
        "{err}"
    );
    // A lawful prune (here: everything received over a second ago) still verifies.
    std::thread::sleep(Duration::from_millis(1100));
    let lawful = Org::new("archive-lawful");
    let (archive, _) = archived_history(&lawful);
    archive.ok(&["archive", "prune", "--retain", "1s"]);
    archive.ok(&["archive", "verify", "--offline"]);
}

#[test]
fn made_up_checkpoints_on_the_relay_do_not_stop_an_admin_collecting_real_ones() {
    let org = Org::new("archive-bogus-checkpoints");
    let (archive, _) = archived_history(&org);
    org.admin.ok(&["sync"]);
    // The operator puts two made-up checkpoints next in line, before the archive's next
    // real ones: one from a device nobody knows, one badly signed as the archive.
    relay_db(&org)
        .execute(
            "INSERT INTO archive_checkpoints (device_id, entry_seq, hash, signed_at, signature)
             VALUES ('feedfeedfeedfeedfeedfeedfeedfeed', 1, x'00', 0, x'00'),
                    (?1, 999999, x'00', 0, x'00')",
            [device_id(&archive)],
        )
        .unwrap();
    for text in ["fourth", "fifth"] {
        org.admin.ok(&["send", "desk", text]);
    }
    archive.ok(&["sync"]);
    let out = org.admin.ok(&["sync"]);
    assert!(
        out.contains("never saw") && out.contains("does not verify with the archive's key"),
        "{out}"
    );
    // The real checkpoints were still collected: a chain with its end cut off is caught.
    let file = org.dir.path().join("chain.json");
    archive.ok(&["archive", "export-chain", "--out", file.to_str().unwrap()]);
    let mut chain: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    // Cut back to the checkpoint before the newest: locally the chain looks whole.
    let mut signed: Vec<i64> = chain["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["entry_seq"].as_i64().unwrap())
        .collect();
    signed.sort();
    let kept_seq = signed[signed.len() - 2];
    chain["entries"]
        .as_array_mut()
        .unwrap()
        .retain(|e| e["seq"].as_i64().unwrap() <= kept_seq);
    chain["checkpoints"]
        .as_array_mut()
        .unwrap()
        .retain(|c| c["entry_seq"].as_i64().unwrap() <= kept_seq);
    std::fs::write(&file, serde_json::to_vec(&chain).unwrap()).unwrap();
    let err = org
        .admin
        .fails(&["admin", "archive-check", file.to_str().unwrap()]);
    assert!(err.contains("removed from its end"), "{err}");
}
