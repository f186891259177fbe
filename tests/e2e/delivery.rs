//! Delivery: store-and-forward across restarts, stale senders, live chat, the outbox and KeyPackages.

use muster_e2e::{wait_until, Org};
use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

#[test]
fn offline_member_gets_everything_once_in_order_across_relay_restart() {
    let mut org = Org::new("offline");
    let bob = org.enrol("bob");
    org.admin
        .ok(&["group", "create", "ops", "--members", "bob"]);
    // Bob stays offline while alice sends.
    let sent: Vec<String> = (1..=5).map(|i| format!("update {i}")).collect();
    for text in &sent[..3] {
        org.admin.ok(&["send", "ops", text]);
    }
    // The relay crashes and comes back: nothing acknowledged is lost.
    org.relay.restart();
    for text in &sent[3..] {
        org.admin.ok(&["send", "ops", text]);
    }
    org.relay.restart();
    bob.ok(&["sync"]);
    assert_eq!(bob.texts("ops"), sent);
    // Syncing again (and a fresh client process) adds no duplicates.
    bob.ok(&["sync"]);
    assert_eq!(bob.texts("ops"), sent);
    // The relay's database never holds message text.
    let db = std::fs::read(org.relay.data.join("relay.db")).unwrap();
    let wal = std::fs::read(org.relay.data.join("relay.db-wal")).unwrap_or_default();
    for text in &sent {
        let needle = text.as_bytes();
        assert!(
            !db.windows(needle.len()).any(|w| w == needle),
            "plaintext in relay db"
        );
        assert!(
            !wal.windows(needle.len()).any(|w| w == needle),
            "plaintext in relay wal"
        );
    }
}

#[test]
fn stale_sender_resyncs_and_retries() {
    let org = Org::new("stale");
    let bob = org.enrol("bob");
    let carol = org.enrol("carol");
    org.admin
        .ok(&["group", "create", "ops", "--members", "bob"]);
    bob.ok(&["sync"]);
    // The group moves on while bob is not looking.
    org.admin.ok(&["group", "add", "ops", "carol"]);
    // Bob's send is for an old epoch; his client catches up and re-encrypts.
    bob.ok(&["send", "ops", "sent from an old epoch"]);
    org.admin.ok(&["sync"]);
    carol.ok(&["sync"]);
    assert_eq!(org.admin.texts("ops"), ["sent from an old epoch"]);
    assert_eq!(carol.texts("ops"), ["sent from an old epoch"]);
}

#[test]
fn chat_shows_pushed_messages_live() {
    let org = Org::new("chat");
    let bob = org.enrol("bob");
    org.admin
        .ok(&["group", "create", "ops", "--members", "bob"]);
    bob.ok(&["sync"]);
    let mut chat = bob.chat("ops", &[]);
    chat.wait_for("--- chatting in ops");
    // A message from alice appears without bob doing anything.
    let started = std::time::Instant::now();
    org.admin.ok(&["send", "ops", "live from alice"]);
    chat.wait_for("alice: live from alice");
    eprintln!(
        "push latency including alice's send: {:?}",
        started.elapsed()
    );
    // A line bob types is sent.
    chat.type_line("typed by bob");
    wait_until(
        Duration::from_secs(10),
        "alice to receive bob's line",
        || {
            org.admin.ok(&["sync"]);
            org.admin.texts("ops").contains(&"typed by bob".to_string())
        },
    );
    chat.type_line("/quit");
    let status = chat.child.wait().unwrap();
    assert!(status.success());
}

#[test]
fn message_sent_while_relay_is_down_goes_out_from_the_outbox_once() {
    let mut org = Org::new("outbox");
    let bob = org.enrol("bob");
    org.admin
        .ok(&["group", "create", "ops", "--members", "bob"]);
    org.relay.kill();
    let err = org.admin.fails(&["send", "ops", "written offline"]);
    assert!(err.contains("outbox"), "{err}");
    let mine = org.admin.json(&["read", "ops"]);
    let queued = mine
        .iter()
        .find(|m| m["text"] == "written offline")
        .unwrap();
    assert_eq!(queued["status"], "sending");
    org.relay.revive();
    org.admin.ok(&["sync"]);
    org.admin.ok(&["sync"]);
    let mine = org.admin.json(&["read", "ops"]);
    let sent = mine
        .iter()
        .find(|m| m["text"] == "written offline")
        .unwrap();
    assert_eq!(sent["status"], "sent");
    bob.ok(&["sync"]);
    assert_eq!(bob.texts("ops"), ["written offline"]);
}

#[test]
fn adding_a_device_whose_key_packages_ran_out_uses_its_last_resort() {
    let org = Org::new("keypackages");
    let bob = org.enrol("bob");
    // Bob stays offline, so he cannot top up his supply of 10 KeyPackages.
    let groups: Vec<String> = (0..12).map(|i| format!("team{i}")).collect();
    for g in &groups {
        org.admin.ok(&["group", "create", g, "--members", "bob"]);
    }
    bob.ok(&["sync"]);
    for g in &groups {
        assert_eq!(bob.members(g), ["alice", "bob"], "{g}");
        org.admin.ok(&["send", g, &format!("hello {g}")]);
    }
    bob.ok(&["sync"]);
    for g in &groups {
        assert_eq!(bob.texts(g), [format!("hello {g}")]);
    }
}

#[test]
fn ctrl_c_stops_the_relay_cleanly_and_a_restart_keeps_everything() {
    let mut org = Org::new("ctrlc");
    let bob = org.enrol("bob");
    org.admin
        .ok(&["group", "create", "ops", "--members", "bob"]);
    org.admin.ok(&["send", "ops", "before the restart"]);
    assert!(
        org.relay.interrupt(),
        "relay did not exit cleanly on SIGINT"
    );
    org.relay.revive();
    assert!(
        org.relay.bootstrap_token.is_none(),
        "org survives the restart"
    );
    bob.ok(&["sync"]);
    assert_eq!(bob.texts("ops"), ["before the restart"]);
    bob.ok(&["send", "ops", "after the restart"]);
    org.admin.ok(&["sync"]);
    assert_eq!(
        org.admin.texts("ops"),
        ["before the restart", "after the restart"]
    );
}

#[test]
fn send_reads_text_from_standard_input() {
    let org = Org::new("stdin");
    org.admin.ok(&["group", "create", "ops"]);
    let mut child = org
        .admin
        .command()
        .args(["send", "ops", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all("line one\nline two\n".as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(org.admin.texts("ops"), ["line one\nline two"]);
}

#[test]
fn a_device_away_longer_than_the_relay_keeps_messages_rejoins_on_its_own() {
    let mut org = Org::new("away");
    let alice = muster_e2e::Device::new(&org.dir, "alice");
    let bob = org.enrol("bob");
    let dan = org.enrol("dan");
    let carol = org.enrol("carol");
    alice.ok(&["group", "create", "ops", "--members", "bob,dan"]);
    bob.ok(&["sync"]);
    dan.ok(&["sync"]);
    alice.ok(&["send", "ops", "before dan left"]);
    dan.ok(&["sync"]);

    // Dan is away: the group changes and talks on without him.
    alice.ok(&["group", "add", "ops", "carol"]);
    alice.ok(&["send", "ops", "while dan was away"]);
    bob.ok(&["sync"]);
    carol.ok(&["sync"]);
    // The relay keeps messages one second; it drops what waited longer when it starts.
    wait_until(
        Duration::from_secs(30),
        "the relay drops what dan missed",
        || {
            org.relay.restart_with(&["--message-retention-secs", "1"]);
            muster_e2e::relay_db(&org)
                .query_row("SELECT COUNT(*) FROM messages", [], |r| r.get::<_, i64>(0))
                .unwrap()
                == 0
        },
    );

    alice.ok(&["send", "ops", "after the gap"]);
    dan.ok(&["sync"]);
    alice.ok(&["sync"]);
    alice.ok(&["send", "ops", "welcome back"]);
    wait_until(Duration::from_secs(30), "dan reads new messages", || {
        dan.ok(&["sync"]);
        dan.texts("ops").iter().any(|t| t == "welcome back")
    });
    let texts = dan.texts("ops");
    assert!(texts.contains(&"before dan left".to_string()), "{texts:?}");
    assert!(
        !texts.contains(&"while dan was away".to_string()),
        "what expired is gone: {texts:?}"
    );
    let notices: Vec<String> = dan
        .json(&["read", "ops", "--limit", "100"])
        .into_iter()
        .filter(|m| m["kind"] == "system")
        .map(|m| m["text"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        notices
            .iter()
            .any(|n| n.contains("fallen behind") && n.contains("ago), is lost to it")),
        "dan is told how much history was missed: {notices:?}"
    );
    assert!(dan.members("ops").contains(&"carol".to_string()));
}
