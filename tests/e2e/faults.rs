//! Crash safety: the relay is killed with SIGKILL again and again while ten devices send
//! and sync, and clients are killed mid-send and mid-sync. Afterwards every message whose
//! send succeeded is on every device exactly once, in the same order everywhere, and the
//! group still works.

use muster_e2e::{Device, Org};
use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A small deterministic generator, seeded per run and printed so a failure can be replayed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

fn seed() -> u64 {
    std::env::var("MUSTER_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

#[test]
fn relay_and_client_crashes_lose_and_duplicate_nothing() {
    let seed = seed();
    eprintln!("fault seed {seed} (set MUSTER_FAULT_SEED to replay)");
    let mut rng = Lcg(seed);
    let mut org = Org::new("crash");
    let mut devices: Vec<Device> = (1..10).map(|i| org.enrol(&format!("user{i}"))).collect();
    let members: Vec<String> = (1..10).map(|i| format!("user{i}")).collect();
    org.admin
        .ok(&["group", "create", "all", "--members", &members.join(",")]);
    for d in &devices {
        d.ok(&["sync"]);
    }
    devices.insert(0, Device::new(&org.dir, "alice"));

    const ROUNDS: usize = 4;
    let succeeded: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let attempted: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let running = AtomicBool::new(true);
    let started = Instant::now();
    let mut kills = 0;
    std::thread::scope(|s| {
        for (i, d) in devices.iter().enumerate() {
            let (succeeded, attempted, running) = (&succeeded, &attempted, &running);
            s.spawn(move || {
                let mut k = 0;
                while running.load(Ordering::Relaxed) || k < ROUNDS {
                    let text = format!("d{i}-m{k}");
                    attempted.lock().unwrap().push(text.clone());
                    let out = d.run(&["send", "all", &text]);
                    if out.status.success() {
                        succeeded.lock().unwrap().push(text);
                    }
                    let _ = d.run(&["sync"]);
                    k += 1;
                    if k >= 12 {
                        break;
                    }
                }
            });
        }
        // Meanwhile: kill the relay at random moments, at least ten times.
        while kills < 10 {
            std::thread::sleep(Duration::from_millis(150 + rng.next(600)));
            org.relay.kill();
            kills += 1;
            std::thread::sleep(Duration::from_millis(rng.next(300)));
            org.relay.revive();
        }
        running.store(false, Ordering::Relaxed);
    });
    eprintln!(
        "relay killed {kills} times in {:?}; {} of {} sends succeeded at once",
        started.elapsed(),
        succeeded.lock().unwrap().len(),
        attempted.lock().unwrap().len()
    );

    // Clients killed mid-send and mid-sync.
    for round in 0..6 {
        let d = &devices[round % devices.len()];
        let text = format!("killed-send-{round}");
        attempted.lock().unwrap().push(text.clone());
        let verb: &[&str] = if round % 2 == 0 {
            &["send", "all", &text]
        } else {
            &["sync"]
        };
        let mut child = d
            .command()
            .args(verb)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(20 + rng.next(150)));
        let _ = child.kill();
        let _ = child.wait();
    }

    // Everyone catches up (queued messages go out), twice to settle receipts.
    for _ in 0..2 {
        for d in &devices {
            d.ok(&["sync"]);
        }
    }
    let views: Vec<Vec<String>> = devices.iter().map(|d| d.texts("all")).collect();
    for (d, view) in devices.iter().zip(&views) {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for t in view {
            *counts.entry(t.as_str()).or_default() += 1;
        }
        for (text, n) in &counts {
            assert_eq!(*n, 1, "{} has {text:?} {n} times", d.name);
            assert!(
                attempted.lock().unwrap().iter().any(|a| a == text),
                "{text:?} was never sent"
            );
        }
        for text in succeeded.lock().unwrap().iter() {
            assert!(
                counts.contains_key(text.as_str()),
                "{} lost {text:?}",
                d.name
            );
        }
    }
    for (d, view) in devices.iter().zip(&views).skip(1) {
        assert_eq!(
            view, &views[0],
            "{} orders the group differently from alice",
            d.name
        );
    }
    // MLS state is consistent: the group still works for everyone.
    devices[3].ok(&["send", "all", "after the storm"]);
    for d in &devices {
        d.ok(&["sync"]);
        assert_eq!(
            d.texts("all").last().map(String::as_str),
            Some("after the storm"),
            "{}",
            d.name
        );
    }
    eprintln!(
        "{} messages on every device, none lost, none duplicated",
        views[0].len()
    );
}

#[test]
fn an_admin_killed_mid_commit_recovers_and_the_group_stays_consistent() {
    let seed = seed();
    eprintln!("fault seed {seed}");
    let mut rng = Lcg(seed);
    let org = Org::new("crash-commit");
    let alice = &org.admin;
    let bob = org.enrol("bob");
    let others: Vec<Device> = (0..4).map(|i| org.enrol(&format!("extra{i}"))).collect();
    alice.ok(&["group", "create", "g", "--members", "bob"]);
    bob.ok(&["sync"]);
    for (i, d) in others.iter().enumerate() {
        // Kill alice's `group add` at a random moment: before, during or after the relay
        // stored the commit.
        let mut child = alice
            .command()
            .args(["group", "add", "g", &d.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(10 + rng.next(250)));
        let _ = child.kill();
        let _ = child.wait();
        alice.ok(&["sync"]);
        if !alice.members("g").contains(&d.name) {
            alice.ok(&["group", "add", "g", &d.name]);
        }
        bob.ok(&["sync"]);
        d.ok(&["sync"]);
        let expected = alice.members("g");
        assert_eq!(
            bob.members("g"),
            expected,
            "round {i}: bob disagrees with alice"
        );
        assert_eq!(d.members("g"), expected, "round {i}: {} disagrees", d.name);
        assert_eq!(
            bob.group("g")["epoch"],
            alice.group("g")["epoch"],
            "round {i}: epochs differ"
        );
    }
    alice.ok(&["send", "g", "all aboard"]);
    for d in others.iter().chain(std::iter::once(&bob)) {
        d.ok(&["sync"]);
        assert_eq!(
            d.texts("g").last().map(String::as_str),
            Some("all aboard"),
            "{}",
            d.name
        );
    }
}
