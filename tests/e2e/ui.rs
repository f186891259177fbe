//! `muster ui` as the browser and an attacker's page see it, over real HTTP: only the tab
//! that traded the printed link's token for a session gets anything, nothing crosses
//! origins (other loopback ports included), and a colleague's message reaches an open
//! page live.

use muster_e2e::{wait_until, Device, Org};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A running `muster ui` and the link it printed.
struct Ui {
    child: Child,
    port: u16,
    token: String,
}

impl Ui {
    fn start(device: &Device) -> Self {
        let mut child = device
            .command()
            .args(["ui", "--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start muster ui");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let link = loop {
            let line = lines.next().expect("muster ui prints its link").unwrap();
            if let Some(link) = line.strip_prefix("muster ui: open ") {
                break link.to_string();
            }
        };
        // Keep reading, so the UI never writes into a closed pipe.
        std::thread::spawn(move || lines.for_each(drop));
        let rest = link.strip_prefix("http://127.0.0.1:").unwrap();
        let (port, token) = rest.split_once("/#token=").unwrap();
        Self {
            child,
            port: port.parse().unwrap(),
            token: token.to_string(),
        }
    }

    /// The link `muster ui` printed, as the browser opens it.
    fn link(&self) -> String {
        format!("http://127.0.0.1:{}/#token={}", self.port, self.token)
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn origin(&self) -> String {
        format!("http://{}", self.host())
    }

    /// One HTTP/1.1 request; returns the status, the headers (lowercased names) and the body.
    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut head = format!("{method} {path} HTTP/1.1\r\nconnection: close\r\n");
        if !headers.iter().any(|(n, _)| *n == "host") {
            head.push_str(&format!("host: {}\r\n", self.host()));
        }
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if !body.is_empty() {
            head.push_str(&format!(
                "content-type: application/json\r\ncontent-length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body.as_bytes()).unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).unwrap();
        Reply::parse(&String::from_utf8_lossy(&raw))
    }
}

impl Drop for Ui {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn parse(raw: &str) -> Self {
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
        let mut lines = head.lines();
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(": "))
            .map(|(n, v)| (n.to_ascii_lowercase(), v.to_string()))
            .collect();
        Self {
            status,
            headers,
            body: body.to_string(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[test]
fn only_the_tab_holding_the_link_gets_in_and_a_colleagues_message_arrives_live() {
    let org = Org::new("ui-guard");
    let alice = &org.admin;
    let bob = org.enrol("bob");
    alice.ok(&["group", "create", "ops", "--members", "bob"]);
    bob.ok(&["sync"]);
    let ui = Ui::start(alice);

    // The page (which holds nothing), with a policy that loads nothing from elsewhere.
    let page = ui.request("GET", "/", &[], "");
    assert_eq!(page.status, 200);
    let csp = page.header("content-security-policy").unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    // Nothing else without the session, nothing for a rebinding name or from another
    // origin (another loopback port included), and a link works once.
    assert_eq!(ui.request("GET", "/api/overview", &[], "").status, 401);
    let evil_host = format!("evil.example:{}", ui.port);
    assert_eq!(
        ui.request("GET", "/", &[("host", &evil_host)], "").status,
        421
    );
    let origin = ui.origin();
    let other_port = format!("http://127.0.0.1:{}", ui.port + 1);
    let token = format!(r#"{{"token":"{}"}}"#, ui.token);
    let stolen = ui.request("POST", "/api/session", &[("origin", &other_port)], &token);
    assert_eq!(
        stolen.status, 403,
        "another local port's page cannot trade the token"
    );
    let opened = ui.request("POST", "/api/session", &[("origin", &origin)], &token);
    assert_eq!(opened.status, 200, "{}", opened.body);
    assert!(
        opened.header("set-cookie").is_none(),
        "no cookie: ports share cookies"
    );
    let session: serde_json::Value = serde_json::from_str(&opened.body).unwrap();
    let bearer = format!("Bearer {}", session["session"].as_str().unwrap());
    let again = ui.request("POST", "/api/session", &[("origin", &origin)], &token);
    assert_eq!(again.status, 401, "the link works once");
    let overview = ui.request("GET", "/api/overview", &[("authorization", &bearer)], "");
    assert_eq!(overview.status, 200);
    assert!(overview.body.contains("\"ops\""), "{}", overview.body);
    let guessed = ui.request(
        "GET",
        "/api/overview",
        &[("authorization", "Bearer 00")],
        "",
    );
    assert_eq!(guessed.status, 401);

    // Sending needs this origin too, whatever else the request carries.
    let body = r#"{"text":"hello from the browser"}"#;
    let path = "/api/groups/ops/messages";
    for bad in [
        None,
        Some("http://evil.example"),
        Some("null"),
        Some(other_port.as_str()),
    ] {
        let mut headers = vec![("authorization", bearer.as_str())];
        if let Some(o) = bad {
            headers.push(("origin", o));
        }
        assert_eq!(
            ui.request("POST", path, &headers, body).status,
            403,
            "{bad:?}"
        );
    }
    let sent = ui.request(
        "POST",
        path,
        &[("authorization", &bearer), ("origin", &origin)],
        body,
    );
    assert_eq!(sent.status, 200, "{}", sent.body);
    // Queued in the UI's outbox; its device sends it on its own time.
    wait_until(
        Duration::from_secs(30),
        "bob to receive the text sent from the browser",
        || {
            bob.ok(&["sync"]);
            bob.texts("ops")
                .contains(&"hello from the browser".to_string())
        },
    );

    // An open page hears of bob's reply as it arrives, and then reads it.
    let mut stream = TcpStream::connect(("127.0.0.1", ui.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET /api/events HTTP/1.1\r\nhost: {}\r\nauthorization: {bearer}\r\naccept: text/event-stream\r\n\r\n",
        ui.host()
    )
    .unwrap();
    let mut events = BufReader::new(stream);
    let mut line = String::new();
    while line != "\r\n" {
        line.clear();
        events.read_line(&mut line).unwrap();
    }
    bob.ok(&["send", "ops", "bob answers"]);
    let sent_at = Instant::now();
    loop {
        line.clear();
        assert!(
            events.read_line(&mut line).unwrap() > 0,
            "event stream ended"
        );
        if line.starts_with("event: changed") {
            break;
        }
    }
    let mut delay = sent_at.elapsed();
    wait_until(
        Duration::from_secs(20),
        "the page reads bob's answer",
        || {
            let messages = ui.request("GET", path, &[("authorization", &bearer)], "");
            delay = sent_at.elapsed();
            messages.body.contains("bob answers")
        },
    );
    println!(
        "bob's message reached alice's page {} ms after his send returned",
        delay.as_millis()
    );
}

#[test]
fn the_ui_outlives_its_relay_shows_what_it_stores_and_sends_what_waited() {
    let mut org = Org::new("ui-offline");
    let alice = &org.admin;
    let bob = org.enrol("bob");
    alice.ok(&["group", "create", "ops", "--members", "bob"]);
    alice.ok(&["send", "ops", "before the outage"]);
    bob.ok(&["sync"]);
    let ui = Ui::start(alice);
    let origin = ui.origin();
    let token = format!(r#"{{"token":"{}"}}"#, ui.token);
    let opened = ui.request("POST", "/api/session", &[("origin", &origin)], &token);
    let session: serde_json::Value = serde_json::from_str(&opened.body).unwrap();
    let bearer = format!("Bearer {}", session["session"].as_str().unwrap());
    let phase = |ui: &Ui| {
        let status = ui.request("GET", "/api/status", &[("authorization", &bearer)], "");
        serde_json::from_str::<serde_json::Value>(&status.body).unwrap()["phase"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    wait_until(Duration::from_secs(20), "the UI is online", || {
        phase(&ui) == "online"
    });

    // The relay goes away: the UI stays up, says it is offline, still shows what the
    // device stores and takes a message to send later.
    assert!(org.relay.interrupt(), "the relay stops cleanly");
    wait_until(Duration::from_secs(60), "the UI says it is offline", || {
        phase(&ui) == "offline"
    });
    let path = "/api/groups/ops/messages";
    let stored = ui.request("GET", path, &[("authorization", &bearer)], "");
    assert_eq!(stored.status, 200, "{}", stored.body);
    assert!(stored.body.contains("before the outage"), "{}", stored.body);
    let queued = ui.request(
        "POST",
        path,
        &[("authorization", &bearer), ("origin", &origin)],
        r#"{"text":"written while the relay was down"}"#,
    );
    assert_eq!(queued.status, 200, "{}", queued.body);
    let directory = ui.request("GET", "/api/directory", &[("authorization", &bearer)], "");
    assert_eq!(
        directory.status, 422,
        "what needs the relay says why it cannot"
    );
    assert!(
        directory.body.contains("cannot be reached"),
        "{}",
        directory.body
    );

    // Back, the UI reconnects on its own and what waited goes out.
    org.relay.revive();
    wait_until(Duration::from_secs(60), "the UI is back online", || {
        phase(&ui) == "online"
    });
    wait_until(Duration::from_secs(30), "bob gets what waited", || {
        bob.ok(&["sync"]);
        bob.texts("ops")
            .contains(&"written while the relay was down".to_string())
    });
}

/// Where the browser tests put their screenshots: kept after the test, to look at what
/// users see; with MUSTER_SCREENSHOTS=docs, the ones docs/ and the README show.
fn screenshots() -> String {
    let dir = if std::env::var("MUSTER_SCREENSHOTS").as_deref() == Ok("docs") {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/screenshots")
    } else {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../target/ui-screenshots")
    };
    std::fs::create_dir_all(dir).unwrap();
    dir.to_string()
}

/// Why the browser tests cannot run here, if they cannot.
pub(crate) fn browser_missing() -> Option<&'static str> {
    if !std::path::Path::new("/usr/bin/chromium").exists() {
        return Some("Debian's chromium is not installed (.ci/run installs it)");
    }
    let playwright = std::process::Command::new("python3")
        .args(["-c", "import playwright"])
        .output();
    if !playwright.is_ok_and(|o| o.status.success()) {
        return Some("Playwright for Python is not installed (.ci/run installs it)");
    }
    None
}

#[test]
fn two_people_chat_in_their_browsers() {
    if let Some(why) = browser_missing() {
        println!("SKIPPED: {why}");
        return;
    }
    let org = Org::new("ui-browser");
    let alice = &org.admin;
    let bob = org.enrol("bob");
    alice.ok(&["group", "create", "ops", "--members", "bob"]);
    alice.ok(&["group", "create", "lunch", "--members", "bob"]);
    bob.ok(&["sync"]);
    let (alice_ui, bob_ui) = (Ui::start(alice), Ui::start(&bob));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/browser/chat.py");
    let shots = screenshots();
    let out = std::process::Command::new("python3")
        .arg(script)
        .args([&alice_ui.link(), &bob_ui.link(), "ops", &shots])
        .arg(muster_e2e::bin("muster"))
        .arg(org.dir.path().join("carol"))
        .env(
            "MUSTER_KEY_FILE",
            Device::new(&org.dir, "carol")
                .env_var("MUSTER_KEY_FILE")
                .unwrap(),
        )
        .output()
        .expect("run the browser test");
    println!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success(),
        "browser test failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(bob
        .texts("ops")
        .contains(&"hello bob, from the browser".to_string()));
    // The profile change bob asked for in his browser waits for an admin, signed by his
    // device.
    let waiting = alice.ok(&["admin", "profiles"]);
    assert!(
        waiting.contains("bob") && waiting.contains("Site lead"),
        "{waiting}"
    );
}

#[test]
fn incident_command_works_in_the_browser() {
    if let Some(why) = browser_missing() {
        println!("SKIPPED: {why}");
        return;
    }
    let org = Org::new("ui-incident");
    let alice = &org.admin;
    let bob = org.enrol("bob");
    alice.ok(&["group", "create", "levee", "--members", "bob"]);
    bob.ok(&["sync"]);
    let (alice_ui, bob_ui) = (Ui::start(alice), Ui::start(&bob));
    let report = org.dir.path().join("report.md");
    let out = std::process::Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/browser/incident.py"))
        .args([&alice_ui.link(), &bob_ui.link(), "levee", &screenshots()])
        .arg(&report)
        .output()
        .expect("run the browser test");
    println!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success(),
        "browser test failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = std::fs::read_to_string(&report).unwrap();
    assert!(
        report.starts_with("# After-action report: DRILL: Levee drill"),
        "{report}"
    );
    assert!(report.contains("| [DRILL] LEVEE-UI check in |"), "{report}");
    assert!(report.contains("| 1 of 1 |"), "{report}");
    assert!(
        report.contains("| Sandbags to gate 2 | bob | alice |"),
        "{report}"
    );
    // The CLI on bob's device agrees with what his browser did.
    bob.ok(&["sync"]);
    let tasks = bob.json(&["tasks", "levee"]);
    assert_eq!(tasks[0]["state"], "done");
}

#[test]
fn a_newcomer_joins_in_her_browser_is_let_in_live_and_files_travel() {
    if let Some(why) = browser_missing() {
        println!("SKIPPED: {why}");
        return;
    }
    let org = Org::new("ui-newcomer");
    let alice = &org.admin;
    alice.ok(&["group", "create", "ops"]);
    // Carol's device has never been set up: her UI starts on an empty home.
    let carol = Device::new(&org.dir, "carol");
    let (alice_ui, carol_ui) = (Ui::start(alice), Ui::start(&carol));
    // Her second device, set up later in the test with a link code from her first.
    let carol_phone = Device::new(&org.dir, "carol-phone");
    let second_ui = Ui::start(&carol_phone);
    // A file of several chunks and an odd length, of bytes that are not text.
    let file = org.dir.path().join("site-plan.bin");
    let mut seed = 0x2545_f491_u32;
    let content: Vec<u8> = (0..(3 * 1024 * 1024 + 12_345))
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed as u8
        })
        .collect();
    std::fs::write(&file, &content).unwrap();
    let shots = screenshots();
    let out = std::process::Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/browser/newcomer.py"))
        .args([&alice_ui.link(), &carol_ui.link(), "ops", &shots])
        .arg(muster_e2e::bin("muster"))
        .arg(&alice.home)
        .env("MUSTER_KEY_FILE", alice.env_var("MUSTER_KEY_FILE").unwrap())
        .arg(&file)
        .arg(second_ui.link())
        .output()
        .expect("run the browser test");
    println!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success(),
        "browser test failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_cli_and_the_ui_share_a_home_without_losing_or_repeating_anything() {
    let org = Org::new("ui-and-cli");
    let alice = &org.admin;
    let bob = org.enrol("bob");
    alice.ok(&["group", "create", "ops", "--members", "bob"]);
    bob.ok(&["sync"]);
    let ui = Ui::start(alice);
    let token = format!(r#"{{"token":"{}"}}"#, ui.token);
    let origin = ui.origin();
    let opened = ui.request("POST", "/api/session", &[("origin", &origin)], &token);
    let session: serde_json::Value = serde_json::from_str(&opened.body).unwrap();
    let bearer = format!("Bearer {}", session["session"].as_str().unwrap());
    let path = "/api/groups/ops/messages";

    // While the UI holds the device online, the CLI syncs and sends on the same home,
    // and the UI sends too.
    let mut expected = Vec::new();
    for i in 0..4 {
        bob.ok(&["send", "ops", &format!("from bob {i}")]);
        alice.ok(&["sync"]);
        alice.ok(&["send", "ops", &format!("from the cli {i}")]);
        let body = format!(r#"{{"text":"from the ui {i}"}}"#);
        let sent = ui.request(
            "POST",
            path,
            &[("authorization", &bearer), ("origin", &origin)],
            &body,
        );
        assert_eq!(sent.status, 200, "{}", sent.body);
        expected.extend([
            format!("from bob {i}"),
            format!("from the cli {i}"),
            format!("from the ui {i}"),
        ]);
    }
    let count = |texts: &[String], wanted: &str| texts.iter().filter(|t| *t == wanted).count();
    wait_until(Duration::from_secs(30), "bob has everything", || {
        bob.ok(&["sync"]);
        let texts = bob.texts("ops");
        expected.iter().all(|e| count(&texts, e) == 1)
    });
    let texts = bob.texts("ops");
    for e in &expected {
        assert_eq!(count(&texts, e), 1, "bob: {e} in {texts:?}");
    }
    wait_until(Duration::from_secs(30), "the UI shows everything", || {
        let listed = ui.request("GET", path, &[("authorization", &bearer)], "");
        let messages: Vec<serde_json::Value> =
            serde_json::from_str(&listed.body).unwrap_or_default();
        let texts: Vec<String> = messages
            .iter()
            .map(|m| m["text"].as_str().unwrap_or_default().to_string())
            .collect();
        expected.iter().all(|e| count(&texts, e) == 1)
    });
    let texts = alice.texts("ops");
    for e in &expected {
        assert_eq!(count(&texts, e), 1, "alice's store: {e} in {texts:?}");
    }
}
