//! Network faults: devices in two sites reach the relay over veth links between network
//! namespaces that this test creates. Every datagram on the way suffers 10% loss and
//! 30–70 ms delay (with reordering), and one site is cut off by a partition that later
//! heals. Afterwards every device holds every message exactly once, in the same order.
//!
//! Loss and delay come from `tc netem` where the kernel has it (then from the start), and
//! otherwise from `muster-impair`, a seeded userspace forwarder at each site, switched on
//! once the organisation is set up. The partition is always a real link going down in the
//! kernel.

use muster_e2e::{bin, in_netns, wait_until, Device, Relay, TempDir};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const LOSS_PERCENT: u32 = 10;
const DELAY_MS: u32 = 30;
const JITTER_MS: u32 = 40;

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Three namespaces: the relay's, and sites A and B, each joined to the relay by a veth
/// pair. Removed on drop.
struct NetLab {
    relay_ns: String,
    site_ns: [String; 2],
    /// The veth end inside each site, the one a partition takes down.
    site_link: [String; 2],
    /// The relay's address as seen from each site.
    relay_ip: [String; 2],
    created: Vec<String>,
    netem: bool,
}

impl NetLab {
    fn create() -> Result<Self, String> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let tag = format!(
            "{}{}",
            std::process::id() % 100_000,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let mut lab = Self {
            relay_ns: format!("muster-r{tag}"),
            site_ns: [format!("muster-a{tag}"), format!("muster-b{tag}")],
            site_link: [format!("sa{tag}"), format!("sb{tag}")],
            relay_ip: ["10.201.1.1".into(), "10.201.2.1".into()],
            created: Vec::new(),
            netem: false,
        };
        ip(&["netns", "add", &lab.relay_ns])?;
        lab.created.push(lab.relay_ns.clone());
        ip(&["-n", &lab.relay_ns, "link", "set", "lo", "up"])?;
        for site in 0..2 {
            let ns = lab.site_ns[site].clone();
            ip(&["netns", "add", &ns])?;
            lab.created.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            let relay_end = format!("r{}{tag}", ["a", "b"][site]);
            let site_end = lab.site_link[site].clone();
            ip(&[
                "link", "add", &relay_end, "type", "veth", "peer", "name", &site_end,
            ])?;
            ip(&["link", "set", &relay_end, "netns", &lab.relay_ns])?;
            ip(&["link", "set", &site_end, "netns", &ns])?;
            let net = site + 1;
            ip(&[
                "-n",
                &lab.relay_ns,
                "addr",
                "add",
                &format!("10.201.{net}.1/24"),
                "dev",
                &relay_end,
            ])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("10.201.{net}.2/24"),
                "dev",
                &site_end,
            ])?;
            ip(&["-n", &lab.relay_ns, "link", "set", &relay_end, "up"])?;
            ip(&["-n", &ns, "link", "set", &site_end, "up"])?;
            // Both directions: the site's egress and the relay's egress towards the site.
            let spec = format!("loss {LOSS_PERCENT}% delay {DELAY_MS}ms {JITTER_MS}ms");
            let netem = |ns: &str, dev: &str| {
                let mut args = vec!["-n", ns, "qdisc", "add", "dev", dev, "root", "netem"];
                args.extend(spec.split(' '));
                Command::new("tc")
                    .args(&args)
                    .output()
                    .is_ok_and(|o| o.status.success())
            };
            lab.netem = netem(&ns, &site_end) && netem(&lab.relay_ns, &relay_end);
        }
        Ok(lab)
    }

    fn set_link(&self, site: usize, up: bool) {
        ip(&[
            "-n",
            &self.site_ns[site],
            "link",
            "set",
            &self.site_link[site],
            if up { "up" } else { "down" },
        ])
        .expect("change link state");
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        for ns in &self.created {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// A running `muster-impair` in one site; the last counters it printed.
struct Forwarder {
    child: Child,
    addr: String,
    control: std::path::PathBuf,
    counters: Arc<Mutex<String>>,
    impaired: Arc<Mutex<bool>>,
}

impl Forwarder {
    /// Starts with the impairment off; see [`Forwarder::impair`].
    fn start(
        dir: &TempDir,
        ns: &str,
        listen: &str,
        upstream: &str,
        impair: bool,
        seed: u64,
    ) -> Self {
        let control = dir.path().join(format!("impair-{ns}"));
        std::fs::write(&control, "pass").expect("write control file");
        let (loss, delay, jitter) = if impair {
            (
                format!("{}", f64::from(LOSS_PERCENT) / 100.0),
                DELAY_MS.to_string(),
                JITTER_MS.to_string(),
            )
        } else {
            ("0".into(), "0".into(), "0".into())
        };
        let mut child = in_netns(Some(ns), bin("muster-impair"))
            .args(["--listen", listen, "--upstream", upstream, "--loss", &loss])
            .args(["--delay-ms", &delay, "--jitter-ms", &jitter])
            .args(["--seed", &seed.to_string()])
            .arg("--control")
            .arg(&control)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start muster-impair");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        let Some(addr) = first.strip_prefix("muster-impair listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("muster-impair did not print its address but {first:?}");
        };
        let addr = addr.to_string();
        let counters = Arc::new(Mutex::new(String::new()));
        let impaired = Arc::new(Mutex::new(false));
        let (last, state) = (Arc::clone(&counters), Arc::clone(&impaired));
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                match line.as_str() {
                    "impairment on" => *state.lock().unwrap() = true,
                    "impairment off" => *state.lock().unwrap() = false,
                    _ => *last.lock().unwrap() = line,
                }
            }
        });
        Self {
            child,
            addr,
            control,
            counters,
            impaired,
        }
    }

    /// Turns loss and delay on or off, and waits until the forwarder has.
    fn impair(&self, on: bool) {
        std::fs::write(&self.control, if on { "impair" } else { "pass" })
            .expect("write control file");
        wait_until(Duration::from_secs(10), "the forwarder to switch", || {
            *self.impaired.lock().unwrap() == on
        });
    }

    /// (forwarded, dropped) datagrams so far.
    fn counters(&self) -> (u64, u64) {
        let line = self.counters.lock().unwrap().clone();
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["forwarded", f, "dropped", d] => (f.parse().unwrap_or(0), d.parse().unwrap_or(0)),
            _ => (0, 0),
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn devices_behind_loss_delay_and_a_healing_partition_converge() {
    let lab = match NetLab::create() {
        Ok(lab) => lab,
        Err(reason) => {
            eprintln!(
                "SKIPPED network fault test: this machine cannot create network namespaces \
                 with veth links ({reason})"
            );
            return;
        }
    };
    let seed = std::env::var("MUSTER_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock after 1970")
                .as_secs()
        });
    if lab.netem {
        eprintln!("network faults: tc netem on the veth links");
    } else {
        eprintln!(
            "network faults: this kernel has no tc netem (sch_netem); loss and delay come \
             from muster-impair, seed {seed}"
        );
    }
    let started = Instant::now();
    let dir = TempDir::new("netfaults");
    let relay = Relay::start_in_netns(&dir, &lab.relay_ns, "0.0.0.0:0");
    let port = relay.addr.rsplit(':').next().expect("port").to_string();
    // Both sites' forwarders listen on the same loopback port in their own namespace, so
    // the relay address in invites works from either site.
    let site_a = Forwarder::start(
        &dir,
        &lab.site_ns[0],
        "127.0.0.1:0",
        &format!("{}:{port}", lab.relay_ip[0]),
        !lab.netem,
        seed,
    );
    let site_b = Forwarder::start(
        &dir,
        &lab.site_ns[1],
        &site_a.addr,
        &format!("{}:{port}", lab.relay_ip[1]),
        !lab.netem,
        seed + 1,
    );
    let relay_addr = site_a.addr.clone();

    let alice = Device::in_netns(&dir, "alice", &lab.site_ns[0]);
    let token = relay.bootstrap_token.clone().expect("fresh relay token");
    alice.ok(&[
        "org",
        "create",
        "--relay",
        &relay_addr,
        "--fingerprint",
        &relay.fingerprint,
        "--token",
        &token,
        "--name",
        "Acme",
        "--user",
        "alice",
    ]);
    let lap = |what: &str| eprintln!("network faults: {what} done at {:.1?}", started.elapsed());
    lap("org create");
    let enrol = |user: &str, site: usize| {
        let code = alice.ok(&["invite", user]).trim().to_string();
        let device = Device::in_netns(&dir, user, &lab.site_ns[site]);
        device.ok(&["join", &code, "--display-name", user]);
        alice.ok(&["approve", user]);
        device.ok(&["sync"]);
        device
    };
    let (ann, amy, ada) = (enrol("ann", 0), enrol("amy", 0), enrol("ada", 0));
    let (bob, ben, bea) = (enrol("bob", 1), enrol("ben", 1), enrol("bea", 1));
    alice.ok(&["group", "create", "ops", "--members", "ann,amy,bob,ben,bea"]);
    let site_a_devices = [&alice, &ann, &amy];
    let site_b_devices = [&bob, &ben, &bea];
    let members: Vec<&Device> = site_a_devices
        .iter()
        .chain(site_b_devices.iter())
        .copied()
        .collect();
    for d in &members[1..] {
        d.ok(&["sync"]);
    }
    lap("enrolment and group");
    site_a.impair(true);
    site_b.impair(true);

    // Phase 1: everyone talks through the lossy, slow links.
    let attempted: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let talk = |devices: &[&Device], phase: &str, count: usize| {
        std::thread::scope(|s| {
            for d in devices {
                let attempted = &attempted;
                s.spawn(move || {
                    for k in 0..count {
                        let text = format!("{}-{phase}-{k}", d.name);
                        let out = d.run(&["send", "ops", &text]);
                        let stderr = String::from_utf8_lossy(&out.stderr);
                        assert!(
                            out.status.success() || stderr.contains("stays in the outbox"),
                            "{}: a failed send must say it stays in the outbox: {stderr}",
                            d.name
                        );
                        attempted.lock().unwrap().push(text);
                        let _ = d.run(&["sync"]);
                    }
                });
            }
        });
    };
    talk(&members, "lossy", 3);
    lap("lossy phase");

    // Phase 2: site B is cut off. Site A goes on talking and alice adds ada to the group;
    // site B's sends are kept in their outboxes and tell the user so.
    lab.set_link(1, false);
    let cut_off = bob.run(&["send", "ops", "bob-cut-off"]);
    let stderr = String::from_utf8_lossy(&cut_off.stderr);
    assert!(
        !cut_off.status.success() && stderr.contains("stays in the outbox"),
        "a send during the partition should say it stays in the outbox: {stderr}"
    );
    attempted.lock().unwrap().push("bob-cut-off".into());
    std::thread::scope(|s| {
        s.spawn(|| talk(&site_b_devices, "partitioned", 1));
        s.spawn(|| {
            talk(&site_a_devices[1..], "partitioned", 2);
            // Over a lossy link a connection can be lost under the command; alice does
            // what a person would: looks whether ada is in, and tries again if not.
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let out = alice.run(&["group", "add", "ops", "ada"]);
                if out.status.success() {
                    break;
                }
                let stderr = String::from_utf8_lossy(&out.stderr);
                assert!(
                    stderr.contains("connection") || stderr.contains("reach the relay"),
                    "alice could not add ada: {stderr}"
                );
                let _ = alice.run(&["sync"]);
                if alice.members("ops").iter().any(|m| m.starts_with("ada")) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "alice could not add ada within 120 s: {stderr}"
                );
            }
            talk(&site_a_devices[..1], "partitioned", 2);
        });
    });
    lab.set_link(1, true);
    lap("partition");

    // Phase 3: the partition heals; syncing converges without losing anything.
    let attempted = attempted.into_inner().unwrap();
    let mut histories: BTreeMap<String, Vec<String>> = BTreeMap::new();
    wait_until(Duration::from_secs(180), "all devices to converge", || {
        std::thread::scope(|s| {
            for d in &members {
                s.spawn(move || d.run(&["sync"]));
            }
        });
        histories = members
            .iter()
            .map(|d| (d.name.clone(), d.texts("ops")))
            .collect();
        histories.values().all(|h| h.len() >= attempted.len())
            && histories.values().all(|h| h == &histories["alice"])
    });
    lap("convergence");
    let history = &histories["alice"];
    for text in &attempted {
        let copies = history.iter().filter(|t| *t == text).count();
        assert_eq!(
            copies, 1,
            "{text:?} should be there exactly once: {history:?}"
        );
    }
    assert_eq!(history.len(), attempted.len(), "nothing extra: {history:?}");
    // Ada sits behind the lossy link too: a sync cut short is tried again.
    let mut late = Vec::new();
    wait_until(Duration::from_secs(60), "ada to sync", || {
        let synced = ada.run(&["sync"]).status.success();
        late = ada.texts("ops");
        synced
    });
    assert!(
        history.ends_with(&late),
        "ada joined late, so she sees the tail of the same history: {late:?}"
    );

    // The group works normally once the network is healthy.
    bea.ok(&["send", "ops", "all-clear"]);
    for d in members.iter().copied().chain([&ada]) {
        wait_until(Duration::from_secs(60), "all-clear everywhere", || {
            // A sync cut short (a connection lost while the machine is loaded) is tried
            // again within the deadline; what counts is that the message arrives.
            d.run(&["sync"]);
            d.texts("ops").last().map(String::as_str) == Some("all-clear")
        });
    }
    let (fa, da) = site_a.counters();
    let (fb, db) = site_b.counters();
    eprintln!(
        "network faults: {} messages from 6 devices converged in {:.0?}; datagrams \
         forwarded {} dropped {} (seed {seed})",
        attempted.len() + 1,
        started.elapsed(),
        fa + fb,
        da + db
    );
}
