//! Several relays on one PostgreSQL database behave as one relay: a message sent through
//! one reaches a chat on another live, commits for one epoch through two relays never
//! fork the group, a revocation through one cuts the device off on another, and devices
//! move to the surviving relay when one is killed, losing and repeating nothing.
//!
//! These tests need the throwaway PostgreSQL `tests/with-postgres` starts; without it
//! they print SKIPPED.

use muster_e2e::{wait_until, Device, Relay, TempDir};
use muster_relay_core::db::postgres::testing;
use std::collections::HashSet;
use std::thread;
use std::time::{Duration, Instant};

/// Two relays on one fresh database, and alice's organisation created through the first.
struct Cluster {
    dir: TempDir,
    /// The shared database (this test's schema).
    url: String,
    schema: String,
    a: Relay,
    b: Relay,
    alice: Device,
}

impl Cluster {
    fn start(name: &str) -> Option<Self> {
        let Some(url) = testing::fresh_schema(name) else {
            eprintln!("{}", testing::MISSING);
            return None;
        };
        let dir = TempDir::new(name);
        let blobs = dir.path().join("shared-blobs");
        let blobs = blobs.to_str().unwrap();
        let shared = ["--database", url.as_str(), "--blobs", blobs];
        let a = Relay::start_with(dir.path().join("relay-a"), &shared);
        let b = Relay::start_with(dir.path().join("relay-b"), &shared);
        assert_eq!(
            a.fingerprint, b.fingerprint,
            "every relay of a database presents one certificate"
        );
        let token = a
            .bootstrap_token
            .clone()
            .expect("a relay on an empty database prints a bootstrap token");
        let alice = Device::new(&dir, "alice");
        alice.ok(&[
            "org",
            "create",
            "--relay",
            &a.addr,
            "--fingerprint",
            &a.fingerprint,
            "--token",
            &token,
            "--name",
            "Acme",
            "--user",
            "alice",
        ]);
        Some(Self {
            dir,
            url,
            schema: name.to_string(),
            a,
            b,
            alice,
        })
    }

    /// Runs `sql` on the shared database, as anyone allowed to use it could.
    fn run_sql(&self, sql: &str) {
        let mut client = muster_relay_core::db::pg_connect::client(&self.url)
            .expect("connect to the test database");
        client
            .batch_execute(sql)
            .expect("run SQL on the test database");
    }

    /// Ends the connections on which the relays listen for each other's announcements
    /// (as a database restart or a network hiccup would).
    fn cut_the_listeners(&self) {
        self.run_sql(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = '{} ({})'",
            muster_relay_core::LISTENER_NAME,
            self.schema
        ));
    }

    /// Enrols `user`, whose device then talks to `relays` only.
    fn enrol(&self, user: &str, relays: &str) -> Device {
        let code = self.alice.ok(&["invite", user]).trim().to_string();
        let device = Device::new(&self.dir, user);
        device.ok(&["join", &code, "--display-name", user]);
        self.alice.ok(&["approve", user]);
        device.ok(&["relays", "--set", relays]);
        device.ok(&["sync"]);
        device
    }
}

/// Waits up to 15 s for `chat` to end; returns its exit status and how long it took.
fn chat_ends_within_15_s(
    chat: &mut muster_e2e::Chat,
    what: &str,
) -> (std::process::ExitStatus, Duration) {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(15);
    loop {
        if let Some(status) = chat.child.try_wait().unwrap() {
            return (status, started.elapsed());
        }
        assert!(Instant::now() < deadline, "{what}");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_message_sent_through_one_relay_appears_live_in_a_chat_on_the_other() {
    let Some(cluster) = Cluster::start("e2e_live") else {
        return;
    };
    let bob = cluster.enrol("bob", &cluster.b.addr);
    assert_eq!(
        bob.ok(&["relays"]).lines().next(),
        Some(cluster.b.addr.as_str())
    );
    cluster
        .alice
        .ok(&["group", "create", "ops", "--members", "bob"]);
    bob.ok(&["sync"]);
    let mut chat = bob.chat("ops", &[]);
    chat.wait_for("--- chatting in ops");
    for i in 0..3 {
        let started = Instant::now();
        cluster
            .alice
            .ok(&["send", "ops", &format!("through relay A, {i}")]);
        let sent = started.elapsed();
        chat.wait_for(&format!("alice: through relay A, {i}"));
        eprintln!(
            "relay A -> relay B -> bob's chat: {:?} after alice's send returned ({sent:?} to send)",
            started.elapsed() - sent
        );
    }
    chat.type_line("through relay B");
    wait_until(
        Duration::from_secs(10),
        "alice to receive bob's line",
        || {
            cluster.alice.ok(&["sync"]);
            cluster
                .alice
                .texts("ops")
                .contains(&"through relay B".to_string())
        },
    );
    // An operator reads the shared database's figures from a machine that runs no relay:
    // the URL from the environment, and nothing written where --data points.
    let elsewhere = cluster.dir.path().join("operator-laptop");
    let out = std::process::Command::new(muster_e2e::bin("muster-relay"))
        .args(["stats", "--data"])
        .arg(&elsewhere)
        .env("MUSTER_DATABASE", &cluster.url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("devices: 2"),
        "{text}"
    );
    assert!(!elsewhere.exists(), "stats wrote into its --data directory");
}

#[test]
fn commits_for_one_epoch_through_two_relays_never_fork_the_group() {
    let Some(cluster) = Cluster::start("e2e_commits") else {
        return;
    };
    let alice = &cluster.alice;
    let bob = cluster.enrol("bob", &cluster.b.addr);
    let joiners: Vec<Device> = (0..6)
        .map(|i| cluster.enrol(&format!("user{i}"), &cluster.a.addr))
        .collect();
    alice.ok(&["group", "create", "ops", "--members", "bob"]);
    bob.ok(&["sync"]);
    for round in 0..3 {
        // Alice (relay A) and bob (relay B) each add someone at the same epoch.
        let (mine, theirs) = (&joiners[2 * round].name, &joiners[2 * round + 1].name);
        let (a, b) = thread::scope(|s| {
            let b = s.spawn(|| bob.command().args(["group", "add", "ops", theirs]).output());
            let a = alice.command().args(["group", "add", "ops", mine]).output();
            (a.unwrap(), b.join().unwrap().unwrap())
        });
        assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
        assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
        alice.ok(&["sync"]);
        bob.ok(&["sync"]);
        assert_eq!(
            alice.group("ops")["epoch"],
            bob.group("ops")["epoch"],
            "round {round}"
        );
    }
    let everyone: Vec<&Device> = [alice, &bob].into_iter().chain(&joiners).collect();
    for d in &everyone {
        d.ok(&["sync"]);
    }
    let epoch = alice.group("ops")["epoch"].clone();
    let members = alice.members("ops");
    assert_eq!(members.len(), 8, "{members:?}");
    for d in &everyone {
        assert_eq!(d.group("ops")["epoch"], epoch, "{} epoch", d.name);
        assert_eq!(d.members("ops"), members, "{} members", d.name);
    }
    // One group, one key schedule: what anyone sends, everyone reads.
    bob.ok(&["send", "ops", "from bob on relay B"]);
    joiners[5].ok(&["send", "ops", "from the last joiner"]);
    for d in &everyone {
        d.ok(&["sync"]);
        let texts = d.texts("ops");
        assert!(
            texts.contains(&"from bob on relay B".to_string())
                && texts.contains(&"from the last joiner".to_string()),
            "{}: {texts:?}",
            d.name
        );
    }
}

#[test]
fn a_device_revoked_through_one_relay_is_cut_off_on_the_other_at_once() {
    let Some(cluster) = Cluster::start("e2e_revoke") else {
        return;
    };
    let bob = cluster.enrol("bob", &cluster.b.addr);
    cluster
        .alice
        .ok(&["group", "create", "ops", "--members", "bob"]);
    bob.ok(&["sync"]);
    let mut chat = bob.chat("ops", &[]);
    chat.wait_for("--- chatting in ops");
    let started = Instant::now();
    cluster.alice.ok(&["admin", "revoke", "bob"]);
    let (status, _) = chat_ends_within_15_s(
        &mut chat,
        "bob's chat on relay B kept running after his revocation through relay A",
    );
    eprintln!(
        "revoked through relay A, bob's chat on relay B ended {:?} later ({status})",
        started.elapsed()
    );
    bob.fails(&["sync"]);
}

#[test]
fn a_revocation_whose_announcement_was_lost_still_cuts_the_device_off_on_the_other_relay() {
    let Some(cluster) = Cluster::start("e2e_lost_announcement") else {
        return;
    };
    let bob = cluster.enrol("bob", &cluster.b.addr);
    cluster
        .alice
        .ok(&["group", "create", "ops", "--members", "bob"]);
    bob.ok(&["sync"]);
    let mut chat = bob.chat("ops", &[]);
    chat.wait_for("--- chatting in ops");
    // The listening connections are cut again and again while alice revokes bob through
    // relay A, so relay B cannot hear A's announcement of it.
    let cutting = std::sync::atomic::AtomicBool::new(true);
    thread::scope(|scope| {
        scope.spawn(|| {
            while cutting.load(std::sync::atomic::Ordering::SeqCst) {
                cluster.cut_the_listeners();
                thread::sleep(Duration::from_millis(20));
            }
        });
        cluster.alice.ok(&["admin", "revoke", "bob"]);
        // The announcement leaves relay A just before its answer to alice.
        thread::sleep(Duration::from_millis(200));
        cutting.store(false, std::sync::atomic::Ordering::SeqCst);
    });
    let (_, took) = chat_ends_within_15_s(
        &mut chat,
        "bob's chat on relay B kept running after a revocation whose announcement B missed",
    );
    eprintln!("bob's chat on relay B ended {took:?} after the listeners were let be");
    bob.fails(&["sync"]);
}

#[test]
fn the_relays_announcements_tell_a_database_user_nothing_and_a_forged_one_cuts_no_one_off() {
    use postgres::fallible_iterator::FallibleIterator as _;
    let Some(cluster) = Cluster::start("e2e_forged_notice") else {
        return;
    };
    let bob = cluster.enrol("bob", &cluster.b.addr);
    cluster
        .alice
        .ok(&["group", "create", "ops", "--members", "bob"]);
    bob.ok(&["sync"]);
    let bob_device = muster_e2e::device_id(&bob);
    // Someone allowed to use the database listens on the relays' channel.
    let mut listener = muster_relay_core::db::pg_connect::client(&cluster.url).unwrap();
    listener.batch_execute("LISTEN muster_relay").unwrap();
    let mut chat = bob.chat("ops", &[]);
    chat.wait_for("--- chatting in ops");
    cluster.alice.ok(&["send", "ops", "who is woken?"]);
    chat.wait_for("who is woken?");
    // What was announced by now (the relays go on announcing receipts and the like).
    let mut heard = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let mut notifications = listener.notifications();
        let next = notifications.timeout_iter(left).next().unwrap();
        match next {
            Some(n) => heard.push(n.payload().to_string()),
            None => break,
        }
    }
    assert!(!heard.is_empty(), "relay A announced nothing");
    for payload in &heard {
        assert!(
            !payload.contains(&bob_device) && !payload.contains('{'),
            "an announcement a database user can read: {payload}"
        );
    }
    // A second connection of bob's device to relay B, which only waits.
    let rogue = crate::rogue::Rogue::open(&bob);
    let waiting = rogue.session();
    let forged = serde_json::json!({
        "origin": "someone else",
        "wake": [],
        "changed": [],
        "disconnect": [bob_device],
    });
    cluster.run_sql(&format!("SELECT pg_notify('muster_relay', '{forged}')"));
    // A replayed sealed announcement is taken no further than a wake-up.
    for payload in &heard {
        cluster.run_sql(&format!("SELECT pg_notify('muster_relay', '{payload}')"));
    }
    // Relay B reads its notifications in order: once alice's next message reaches the
    // chat, the forged ones were handled.
    cluster.alice.ok(&["send", "ops", "still here?"]);
    chat.wait_for("still here?");
    let answer = waiting.run(
        waiting
            .connection()
            .request(&muster_proto::Request::MyRevocation),
    );
    // "This device is not revoked": an answer, on a connection still open.
    assert!(
        !matches!(answer, Err(muster_net::NetError::Connection(_))),
        "relay B closed bob's connection on a forged notification: {answer:?}"
    );
}

#[test]
fn when_a_relay_is_killed_its_devices_move_on_and_every_message_arrives_once_in_one_order() {
    let Some(mut cluster) = Cluster::start("e2e_failover") else {
        return;
    };
    let both = format!("{},{}", cluster.a.addr, cluster.b.addr);
    let senders: Vec<Device> = ["bob", "carol", "dave"]
        .iter()
        .map(|u| cluster.enrol(u, &both))
        .collect();
    cluster.alice.ok(&["relays", "--set", &both]);
    cluster
        .alice
        .ok(&["group", "create", "ops", "--members", "bob,carol,dave"]);
    for d in &senders {
        d.ok(&["sync"]);
    }
    // Each sender sends in turn; relay A is SIGKILLed in the middle. A send that failed
    // is not acknowledged, and the device's outbox sends it again later.
    let mut acknowledged = Vec::new();
    for i in 0..24 {
        if i == 8 {
            cluster.a.kill();
        }
        let sender = &senders[i % senders.len()];
        let text = format!("load {i} from {}", sender.name);
        let out = sender.run(&["send", "ops", &text]);
        if out.status.success() {
            acknowledged.push(text);
        }
    }
    assert!(
        acknowledged.len() >= 16,
        "devices did not move to relay B: {acknowledged:?}"
    );
    let everyone: Vec<&Device> = [&cluster.alice].into_iter().chain(&senders).collect();
    let mut orders = Vec::new();
    for d in &everyone {
        d.ok(&["sync"]);
        let texts: Vec<String> = d
            .texts("ops")
            .into_iter()
            .filter(|t| t.starts_with("load "))
            .collect();
        let unique: HashSet<&String> = texts.iter().collect();
        assert_eq!(
            unique.len(),
            texts.len(),
            "{} holds a duplicate: {texts:?}",
            d.name
        );
        for text in &acknowledged {
            assert!(texts.contains(text), "{} lacks {text:?}", d.name);
        }
        orders.push((d.name.clone(), texts));
    }
    // One order: every device shows the messages it holds in the same sequence.
    let reference = &orders[0].1;
    for (name, texts) in &orders {
        let common: Vec<&String> = reference.iter().filter(|t| texts.contains(t)).collect();
        let own: Vec<&String> = texts.iter().filter(|t| reference.contains(t)).collect();
        assert_eq!(common, own, "{name} orders the messages differently");
    }
}
