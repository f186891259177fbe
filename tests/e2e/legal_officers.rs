//! The compliance archive sealed to legal officers: its host keeps, chains and verifies
//! entries it cannot read; an export needs k of n officers' approvals, each given on the
//! officer's own device, and the access log names them.

use muster_e2e::*;
use std::path::{Path, PathBuf};
use std::process::Stdio;

const SECRET: &str = "the merger closes on the 14th at 9:00";
const SECOND: &str = "board pack v3 is in the finance share";

/// Runs `muster` for `device` in `cwd` (where a request file is written).
fn run_in(device: &Device, cwd: &Path, args: &[&str]) -> std::process::Output {
    device
        .command()
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .expect("run muster")
}

/// The request file an export without enough approvals wrote, named in its error.
fn request_file(cwd: &Path, stderr: &str) -> PathBuf {
    let name = stderr
        .split_whitespace()
        .find(|w| w.starts_with("archive-request-") && w.ends_with(".json;"))
        .unwrap_or_else(|| panic!("no request named: {stderr}"))
        .trim_end_matches(';');
    cwd.join(name)
}

#[test]
fn only_k_of_n_legal_officers_together_open_the_archive_and_its_host_reads_nothing() {
    let org = Org::new("legal-officers");
    let alice = &org.admin;
    let bob = org.enrol("bob");
    let carl = org.enrol("carl");
    let dora = org.enrol("dora");
    let code = alice.ok(&["invite", "archive"]).trim().to_string();
    let archive = Device::new(&org.dir, "archive");
    archive.ok(&["join", &code, "--display-name", "Compliance archive"]);
    alice.ok(&["approve", "archive", "--archive"]);
    archive.ok(&["sync"]);

    // The admin appoints alice, carl and dora; any two of them together can read.
    let shares_dir = org.dir.path().join("shares");
    let shares_arg = shares_dir.to_str().unwrap();
    let appointed = alice.ok(&[
        "archive",
        "appoint-officers",
        "--officers",
        "alice,carl,dora",
        "--threshold",
        "2",
        "--out",
        shares_arg,
    ]);
    assert!(
        appointed.contains("readable only by 2 of 3 legal officers (alice, carl, dora)"),
        "{appointed}"
    );
    let code_of = |officer: &str| -> String {
        appointed
            .lines()
            .find(|l| l.starts_with(&format!("{officer}: ")))
            .and_then(|l| l.rsplit("code ").next())
            .unwrap_or_else(|| panic!("no code for {officer}: {appointed}"))
            .trim()
            .to_string()
    };
    let share_of = |officer: &str| shares_dir.join(format!("officer-share-{officer}.json"));
    // A share opens only with its own code, on its own officer's device.
    let wrong = carl
        .clone()
        .with_env("MUSTER_SHARE_CODE", &code_of("dora"))
        .fails(&[
            "archive",
            "import-share",
            share_of("carl").to_str().unwrap(),
        ]);
    assert!(wrong.contains("does not open with this code"), "{wrong}");
    let not_hers = bob
        .clone()
        .with_env("MUSTER_SHARE_CODE", &code_of("carl"))
        .fails(&[
            "archive",
            "import-share",
            share_of("carl").to_str().unwrap(),
        ]);
    assert!(not_hers.contains("not yours"), "{not_hers}");
    for officer in [alice, &carl, &dora] {
        officer
            .clone()
            .with_env("MUSTER_SHARE_CODE", &code_of(&officer.name))
            .ok(&[
                "archive",
                "import-share",
                share_of(&officer.name).to_str().unwrap(),
            ]);
    }
    std::fs::remove_dir_all(&shares_dir).unwrap();

    // The archive runs, with its output kept to be searched.
    let serve_log = org.dir.path().join("archive-serve.log");
    let log_file = std::fs::File::create(&serve_log).unwrap();
    let mut server = archive
        .command()
        .args(["archive", "serve", "--retain", "7y"])
        .env("MUSTER_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .expect("start archive serve");

    alice.ok(&["group", "create", "deal-room", "--members", "bob"]);
    alice.ok(&["group", "policy", "deal-room", "--archived"]);
    bob.ok(&["sync"]);
    // Members see who alone can read what the archive keeps.
    let groups = bob.ok(&["groups"]);
    assert!(
        groups.contains("archived: readable only by 2 of 3 legal officers (alice, carl, dora)"),
        "{groups}"
    );
    bob.ok(&["send", "deal-room", SECRET]);
    bob.ok(&["send", "deal-room", SECOND]);
    // A file of bytes that are not text, over two chunks.
    let report: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let report_path = org.dir.path().join("term-sheet.bin");
    std::fs::write(&report_path, &report).unwrap();
    bob.ok(&[
        "send",
        "deal-room",
        "term sheet attached",
        "--file",
        report_path.to_str().unwrap(),
    ]);
    let mut chat = bob.chat("deal-room", &[]);
    chat.wait_for("readable only by 2 of 3 legal officers");
    let _ = chat.child.kill();
    let _ = chat.child.wait();
    wait_until(
        std::time::Duration::from_secs(60),
        "the archive keeps bob's messages",
        || {
            archive
                .open_store()
                .query_row(
                    "SELECT count(*) FROM archive_entries WHERE kind = 'message' AND user = 'bob'",
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .unwrap()
                >= 3
                && archive
                    .open_store()
                    .query_row(
                        "SELECT count(*) FROM archive_blobs WHERE stored_at IS NOT NULL",
                        [],
                        |r| r.get::<_, i64>(0),
                    )
                    .unwrap()
                    >= 1
        },
    );
    let _ = server.kill();
    let _ = server.wait();

    // The host cannot produce any message text: not in its files (its key file is beside
    // them here, so not even in its decrypted store), not in what it printed.
    let records: Vec<String> = archive
        .open_store()
        .prepare("SELECT record FROM archive_entries WHERE kind = 'message'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(records.len(), 3);
    // The attachment is kept as the relay held it: encrypted, its key inside a sealed entry.
    assert!(!dir_contains(&archive.home, &report[1000..1064]));
    let texts: Vec<String> = archive
        .open_store()
        .prepare("SELECT coalesce(body, '') FROM messages")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for needle in [SECRET, SECOND, "merger"] {
        assert!(
            !records.iter().any(|r| r.contains(needle)),
            "{needle} in a record"
        );
        assert!(
            !texts.iter().any(|t| t.contains(needle)),
            "{needle} in the archive's messages"
        );
        assert!(
            !dir_contains(&archive.home, needle.as_bytes()),
            "{needle} in the archive's files"
        );
        assert!(
            !dir_contains(&org.dir.path().join("keys"), needle.as_bytes()),
            "{needle} beside the keys"
        );
        let printed = std::fs::read_to_string(&serve_log).unwrap();
        assert!(
            !printed.contains(needle),
            "{needle} in the archive's output"
        );
    }
    // The chain still verifies over the sealed entries.
    let verified = archive.ok(&["archive", "verify"]);
    assert!(
        verified.contains("intact") || verified.contains("ok"),
        "{verified}"
    );

    // Without approvals, an export writes a request and nothing else.
    let work = org.dir.path().join("archive-work");
    std::fs::create_dir_all(&work).unwrap();
    let out = work.join("bob.jsonl");
    let out_arg = out.to_str().unwrap();
    let export = [
        "archive", "export", "--user", "bob", "--format", "jsonl", "--out", out_arg,
    ];
    let refused = run_in(&archive, &work, &export);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(stderr.contains("this archive is sealed"), "{stderr}");
    assert!(!out.exists(), "an export was written without approvals");
    let request = request_file(&work, &stderr);
    let request_arg = request.to_str().unwrap();

    // Bob is no officer; carl approves on his device; one approval is not enough.
    let bob_refused = bob.fails(&["archive", "approve", request_arg, "--out", "/dev/null"]);
    assert!(bob_refused.contains("not one of"), "{bob_refused}");
    let carl_approval = work.join("approval-carl.json");
    let approved = carl.ok(&[
        "archive",
        "approve",
        request_arg,
        "--out",
        carl_approval.to_str().unwrap(),
    ]);
    assert!(approved.contains("messages of bob"), "{approved}");
    let mut with_one = export.to_vec();
    with_one.extend(["--approval", carl_approval.to_str().unwrap()]);
    let one = run_in(&archive, &work, &with_one);
    assert!(!one.status.success());
    let stderr = String::from_utf8_lossy(&one.stderr);
    assert!(
        stderr.contains("2 of 3 legal officers' approvals are needed; 1 valid (carl)"),
        "{stderr}"
    );
    assert!(!out.exists());
    // The same approval twice still counts once.
    let mut twice = with_one.clone();
    twice.extend(["--approval", carl_approval.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&run_in(&archive, &work, &twice).stderr).into_owned();
    assert!(stderr.contains("1 valid (carl)"), "{stderr}");
    // An approval for another read does not open this one.
    let sample = run_in(
        &archive,
        &work,
        &["archive", "sample", "--count", "1", "--seed", "7"],
    );
    let sample_request = request_file(&work, &String::from_utf8_lossy(&sample.stderr));
    let dora_for_sample = work.join("approval-dora-sample.json");
    dora.ok(&[
        "archive",
        "approve",
        sample_request.to_str().unwrap(),
        "--out",
        dora_for_sample.to_str().unwrap(),
    ]);
    let mut mixed = with_one.clone();
    mixed.extend(["--approval", dora_for_sample.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&run_in(&archive, &work, &mixed).stderr).into_owned();
    assert!(stderr.contains("approves another request"), "{stderr}");

    // With a second officer's approval, the export opens, and the log names them.
    let dora_approval = work.join("approval-dora.json");
    dora.ok(&[
        "archive",
        "approve",
        request_arg,
        "--out",
        dora_approval.to_str().unwrap(),
    ]);
    let mut with_two = with_one.clone();
    with_two.extend(["--approval", dora_approval.to_str().unwrap()]);
    let done = run_in(&archive, &work, &with_two);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let exported = std::fs::read_to_string(&out).unwrap();
    assert!(
        exported.contains(SECRET) && exported.contains(SECOND),
        "{exported}"
    );
    let file = exported
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find_map(|e| e["file"].as_str().map(str::to_string))
        .expect("the attachment is exported");
    assert_eq!(
        std::fs::read(file).unwrap(),
        report,
        "the attachment as sent"
    );
    let log = archive.ok(&["archive", "access-log"]);
    assert!(
        log.contains("export  messages of bob  approved by carl, dora"),
        "{log}"
    );
    // The sample dora approved opens with carl's approval too.
    let carl_for_sample = work.join("approval-carl-sample.json");
    carl.ok(&[
        "archive",
        "approve",
        sample_request.to_str().unwrap(),
        "--out",
        carl_for_sample.to_str().unwrap(),
    ]);
    let sampled = run_in(
        &archive,
        &work,
        &[
            "archive",
            "sample",
            "--count",
            "1",
            "--seed",
            "7",
            "--approval",
            carl_for_sample.to_str().unwrap(),
            "--approval",
            dora_for_sample.to_str().unwrap(),
        ],
    );
    assert!(
        sampled.status.success(),
        "{}",
        String::from_utf8_lossy(&sampled.stderr)
    );
    let drawn = String::from_utf8_lossy(&sampled.stdout);
    assert_eq!(drawn.lines().count(), 1, "{drawn}");
    assert!(drawn.contains("\"sender\":\"bob\""), "{drawn}");
    let log = archive.ok(&["archive", "access-log"]);
    assert!(
        log.contains("approved by carl, dora") && log.contains("sample"),
        "{log}"
    );
    // The group's name is in no file of the archive host either (its store is encrypted).
    assert!(!dir_contains(&archive.home, b"deal-room"));
    // The request is used up: the same approvals do not open a second export.
    std::fs::remove_file(&out).unwrap();
    let again = run_in(&archive, &work, &with_two);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("no pending request"));
}
