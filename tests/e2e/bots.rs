//! Bot accounts: `muster bot serve` turns other systems' posts (Alertmanager's webhook, a
//! generic JSON route) into encrypted alerts, refusing whatever it must.

use muster_e2e::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A running `muster bot serve`, stopped when dropped.
struct BotServer {
    child: Child,
    addr: String,
}

impl Drop for BotServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl BotServer {
    fn start(bot: &Device, extra: &[&str]) -> Self {
        let mut child = bot
            .command()
            .args(["bot", "serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start bot serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("muster bot: listening on http://")
            .unwrap_or_else(|| panic!("bot serve printed {line:?}"))
            .to_string();
        let server = Self { child, addr };
        wait_until(Duration::from_secs(30), "the bot to be online", || {
            server.get("/v1/status", None).1.contains("\"online\"")
        });
        server
    }

    fn get(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        http_request(&self.addr, "GET", path, &headers, b"")
    }

    fn post(&self, path: &str, token: &str, extra: &[(&str, &str)], body: &[u8]) -> (u16, Value) {
        let auth = format!("Bearer {token}");
        let mut headers = vec![
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ];
        headers.extend_from_slice(extra);
        let (status, body) = http_request(&self.addr, "POST", path, &headers, body);
        let json = serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body:?}"));
        (status, json)
    }
}

/// Enrols `pager` as a bot account and adds it to each of `groups` (made by alice).
fn bot_account(org: &Org) -> Device {
    let code = org.admin.ok(&["invite", "pager"]).trim().to_string();
    let pager = Device::new(&org.dir, "pager");
    pager.ok(&["join", &code, "--display-name", "Pager bot"]);
    let approved = org.admin.ok(&["approve", "pager", "--bot"]);
    assert!(approved.contains("as a bot"), "{approved}");
    pager.ok(&["sync"]);
    pager
}

fn token_for(bot: &Device, group: &str) -> String {
    bot.ok(&["bot", "token", "create", "--group", group])
        .trim()
        .to_string()
}

/// The messages of `group` on `device`, after a sync.
fn messages(device: &Device, group: &str) -> Vec<Value> {
    device.ok(&["sync"]);
    device.json(&["read", group])
}

#[test]
fn the_intake_refuses_what_it_must_and_stores_each_post_once() {
    let mut org = Org::new("bot-refusals");
    let alice = &org.admin;
    let bob = org.enrol("bob");
    let pager = bot_account(&org);
    alice.ok(&["group", "create", "ops", "--members", "bob,pager"]);
    alice.ok(&["group", "create", "drills", "--members", "bob,pager"]);
    alice.ok(&["group", "create", "private", "--members", "bob"]);
    alice.ok(&["group", "create", "night", "--members", "pager"]);
    pager.ok(&["sync"]);
    bob.ok(&["sync"]);

    // Everyone sees the bot for what it is; it administers nothing.
    assert_eq!(
        org.admin.directory_entry("pager")["roles"],
        serde_json::json!(["bot"])
    );
    let listed = bob.ok(&["groups"]);
    assert!(listed.contains("pager (bot)"), "{listed}");
    assert_eq!(
        bob.group("ops")["bot_members"],
        serde_json::json!(["pager"])
    );
    let refused = pager.fails(&["group", "create", "bots-own", "--members", "bob"]);
    assert!(refused.contains("a bot cannot create groups"), "{refused}");
    let refused = pager.fails(&["group", "remove", "ops", "bob"]);
    assert!(refused.contains("bot"), "{refused}");
    for args in [
        &["group", "rename", "ops", "bots-rule"][..],
        &["group", "policy", "ops", "--disappear", "1m"],
    ] {
        let refused = pager.fails(args);
        assert!(refused.contains("a bot may not"), "{refused}");
    }
    let refused = pager.fails(&["invite", "mallory"]);
    assert!(refused.contains("admin"), "{refused}");

    let ops = token_for(&pager, "ops");
    let drills = token_for(&pager, "drills");
    let spare = token_for(&pager, "ops");
    let night = token_for(&pager, "night");
    let listed = pager.ok(&["bot", "token", "list"]);
    assert_eq!(listed.lines().count(), 4, "{listed}");
    // Only digests are kept on the bot's device, even were its store read.
    let plain = decrypted_copy(org.dir.path(), &pager, &pager.store_key());
    let store = std::fs::read(&plain).unwrap();
    let holds = |needle: &[u8]| store.windows(needle.len()).any(|w| w == needle);
    for token in [&ops, &drills, &spare] {
        let (id, secret) = token[4..].split_once('_').unwrap();
        assert!(holds(id.as_bytes()), "the copy is readable");
        assert!(
            !holds(secret.as_bytes()),
            "a token's secret is in the bot's store"
        );
    }
    let server = BotServer::start(&pager, &["--relay-timeout", "3s"]);
    let post = |path: &str, token: &str, body: &str| server.post(path, token, &[], body.as_bytes());

    // A text, stored by the relay before the answer.
    let (status, answer) = post(
        "/v1/groups/ops/messages",
        &ops,
        r#"{"text":"BOT-TEXT-MARK deploy finished"}"#,
    );
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["status"], "stored");
    let first_id = answer["id"].as_str().unwrap().to_string();

    // Wrong tokens.
    let wrong = format!("mbt_{}_{}", "0".repeat(12), "0".repeat(64));
    for token in [wrong.as_str(), "not-a-token", &ops[..ops.len() - 1]] {
        let (status, answer) = post("/v1/groups/ops/messages", token, r#"{"text":"x"}"#);
        assert_eq!(status, 401, "{token}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains("not valid"),
            "{answer}"
        );
    }
    let (status, _) = http_request(
        &server.addr,
        "POST",
        "/v1/groups/ops/messages",
        &[],
        br#"{"text":"x"}"#,
    );
    assert_eq!(status, 401);

    // A token revoked while the bot runs is refused from the next request.
    let spare_id = spare[4..16].to_string();
    pager.ok(&["bot", "token", "revoke", &spare_id]);
    let (status, answer) = post("/v1/groups/ops/messages", &spare, r#"{"text":"x"}"#);
    assert_eq!(status, 401, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("revoked"),
        "{answer}"
    );

    // Groups: unknown, another group's token, one the bot is not in.
    let (status, answer) = post("/v1/groups/nosuch/messages", &ops, r#"{"text":"x"}"#);
    assert_eq!(status, 404, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("no group named \"nosuch\""),
        "{answer}"
    );
    let (status, answer) = post("/v1/groups/private/messages", &ops, r#"{"text":"x"}"#);
    assert_eq!(
        status, 404,
        "the bot does not even know the group: {answer}"
    );
    let (status, answer) = post("/v1/groups/drills/messages", &ops, r#"{"text":"x"}"#);
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("only to group \"ops\""),
        "{answer}"
    );
    alice.ok(&["group", "remove", "drills", "pager"]);
    wait_until(
        Duration::from_secs(30),
        "the bot to be removed from drills",
        || post("/v1/groups/drills/messages", &drills, r#"{"text":"x"}"#).0 == 403,
    );
    let (_, answer) = post("/v1/groups/drills/messages", &drills, r#"{"text":"x"}"#);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("not a member of group \"drills\""),
        "{answer}"
    );

    // A member cannot steer the token to another group by naming one after the token's
    // group's id.
    let ops_id = hex::encode(group_id(&bob, "ops"));
    bob.ok(&["group", "create", "decoy", "--members", "pager"]);
    bob.ok(&["group", "rename", "decoy", &ops_id]);
    let (status, answer) = post(
        &format!("/v1/groups/{ops_id}/messages"),
        &ops,
        r#"{"text":"BOT-STEER-MARK"}"#,
    );
    assert_eq!(status, 201, "{answer}");
    let (status, answer) = post(
        "/v1/groups/ops/messages",
        &ops,
        r#"{"text":"BOT-STEER-MARK again"}"#,
    );
    assert_eq!(status, 201, "{answer}");
    wait_until(Duration::from_secs(30), "both posts in ops", || {
        messages(&bob, &ops_id)
            .iter()
            .filter(|m| {
                m["text"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("BOT-STEER-MARK"))
            })
            .count()
            == 2
    });
    let elsewhere: Vec<Value> = bob
        .json(&["groups"])
        .into_iter()
        .filter(|g| g["id"] != ops_id.as_str())
        .flat_map(|g| bob.json(&["read", g["id"].as_str().unwrap()]))
        .filter(|m| {
            m["text"]
                .as_str()
                .is_some_and(|t| t.contains("BOT-STEER-MARK"))
        })
        .collect();
    assert!(elsewhere.is_empty(), "{elsewhere:?}");

    // Bodies: oversized, malformed, unknown fields, empty text.
    let big = format!(r#"{{"text":"{}"}}"#, "a".repeat(300 * 1024));
    let (status, answer) = post("/v1/groups/ops/messages", &ops, &big);
    assert_eq!(status, 413, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("larger than"),
        "{answer}"
    );
    let (status, answer) = post("/v1/groups/ops/messages", &ops, r#"{"text": "unterminated"#);
    assert_eq!(status, 400);
    assert!(
        answer["error"].as_str().unwrap().contains("malformed JSON"),
        "{answer}"
    );
    let (status, answer) = post("/v1/groups/ops/messages", &ops, r#"{"txt":"typo"}"#);
    assert_eq!(status, 400);
    assert!(
        answer["error"].as_str().unwrap().contains("txt"),
        "{answer}"
    );
    let (status, answer) = post("/v1/groups/ops/alertmanager", &ops, r#"{"version":"3"}"#);
    assert_eq!(status, 400, "{answer}");
    let (status, answer) = post("/v1/groups/ops/messages", &ops, r#"{"text":"  "}"#);
    assert_eq!(status, 400);
    assert!(
        answer["error"].as_str().unwrap().contains("empty"),
        "{answer}"
    );

    // The same key twice is stored once, whichever way it comes.
    let keyed =
        r#"{"text":"BOT-ONCE-MARK disk full on db-2","ack_required":true,"severity":"critical"}"#;
    let (status, first) = server.post(
        "/v1/groups/ops/alerts",
        &ops,
        &[("Idempotency-Key", "disk-42")],
        keyed.as_bytes(),
    );
    assert_eq!(status, 201, "{first}");
    let (status, again) = server.post(
        "/v1/groups/ops/alerts",
        &ops,
        &[("Idempotency-Key", "disk-42")],
        keyed.as_bytes(),
    );
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["id"], first["id"]);
    let alert_id = first["id"].as_str().unwrap().to_string();

    // Bob sees the text and one alert, urgent, with its severity.
    let seen = messages(&bob, "ops");
    let once: Vec<&Value> = seen
        .iter()
        .filter(|m| {
            m["text"]
                .as_str()
                .is_some_and(|t| t.contains("BOT-ONCE-MARK"))
        })
        .collect();
    assert_eq!(once.len(), 1, "{seen:?}");
    assert_eq!(once[0]["kind"], "alert");
    assert_eq!(once[0]["sender"], "pager");
    assert_eq!(once[0]["ack_required"], true);
    assert!(once[0]["text"].as_str().unwrap().starts_with("[critical] "));
    assert!(seen.iter().any(|m| m["id"] == first_id.as_str()));

    // The roll-call: only with a token of the alert's group.
    let (status, _) = server.get(&format!("/v1/alerts/{alert_id}/rollcall"), Some(&night));
    assert_eq!(status, 404);
    let (status, _) = server.get(&format!("/v1/alerts/{alert_id}/rollcall"), None);
    assert_eq!(status, 401);
    bob.ok(&["ack", &alert_id]);
    wait_until(
        Duration::from_secs(30),
        "bob's acknowledgement at the bot",
        || {
            let (status, body) = server.get(&format!("/v1/alerts/{alert_id}/rollcall"), Some(&ops));
            status == 200 && body.contains("\"user\":\"bob\"")
        },
    );

    // Alertmanager's episodes: the same alarm firing again after a resolution that never
    // came is a new alert; a late resolution of the first episode closes nothing.
    let notification = |status: &str, starts: &str| {
        format!(
            r#"{{"version":"4","groupKey":"{{}}:{{alertname=\"EPISODE-MARK\"}}","status":"{status}",
               "commonLabels":{{"alertname":"EPISODE-MARK"}},
               "alerts":[{{"status":"{status}","labels":{{"alertname":"EPISODE-MARK","severity":"warning"}},
                 "annotations":{{}},"startsAt":"{starts}","endsAt":"2026-12-02T10:00:00Z","fingerprint":"ep1"}}]}}"#
        )
    };
    let am = |status: &str, starts: &str| {
        post(
            "/v1/groups/ops/alertmanager",
            &ops,
            &notification(status, starts),
        )
    };
    let (status, first) = am("firing", "2026-12-02T08:00:00Z");
    assert_eq!(status, 201, "{first}");
    let (status, second) = am("firing", "2026-12-02T09:00:00Z");
    assert_eq!(status, 201, "{second}");
    assert_ne!(first["id"], second["id"]);
    let (status, late) = am("resolved", "2026-12-02T08:00:00Z");
    assert_eq!(
        (status, late["status"].as_str()),
        (200, Some("ignored")),
        "{late}"
    );
    let (status, resolved) = am("resolved", "2026-12-02T09:00:00Z");
    assert_eq!(status, 201, "{resolved}");
    let seen = messages(&bob, "ops");
    let episode: Vec<&Value> = seen
        .iter()
        .filter(|m| {
            m["text"]
                .as_str()
                .is_some_and(|t| t.contains("EPISODE-MARK"))
        })
        .collect();
    let kinds: Vec<(&str, &str)> = episode
        .iter()
        .map(|m| {
            (
                m["kind"].as_str().unwrap(),
                &m["text"].as_str().unwrap()[..6],
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [("alert", "FIRING"), ("alert", "FIRING"), ("text", "RESOLV")],
        "{episode:?}"
    );
    assert_eq!(episode[2]["reply_to"], second["id"]);
    assert_eq!(
        episode[1]["ack_required"], false,
        "a warning asks for no acknowledgement"
    );

    // With the relay down the intake answers within its timeout, and the post waits in
    // the outbox until the relay is back.
    org.relay.kill();
    let started = Instant::now();
    let (status, answer) = post(
        "/v1/groups/ops/messages",
        &ops,
        r#"{"text":"BOT-QUEUED-MARK while the relay is down"}"#,
    );
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["status"], "queued");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    org.relay.restart();
    wait_until(
        Duration::from_secs(60),
        "the queued post to reach bob",
        || {
            bob.run(&["sync"]);
            bob.json(&["read", "ops"]).iter().any(|m| {
                m["text"]
                    .as_str()
                    .is_some_and(|t| t.contains("BOT-QUEUED-MARK"))
            })
        },
    );

    // The relay holds none of what the bot posted.
    for needle in [
        "BOT-TEXT-MARK",
        "BOT-ONCE-MARK",
        "BOT-QUEUED-MARK",
        "disk full",
    ] {
        assert!(
            !dir_contains(&org.relay.data, needle.as_bytes()),
            "{needle} on the relay"
        );
    }
}

/// Alertmanager's configuration: everything to the bot, quickly, resolved ones too.
fn alertmanager_config(bot: &str, token_file: &std::path::Path) -> String {
    format!(
        "route:
  receiver: muster
  group_by: [alertname]
  group_wait: 1s
  group_interval: 2s
  repeat_interval: 1h
receivers:
  - name: muster
    webhook_configs:
      - url: http://{bot}/v1/groups/ops/alertmanager
        send_resolved: true
        http_config:
          authorization:
            credentials_file: {}
",
        token_file.display()
    )
}

/// A running Alertmanager, stopped when dropped.
struct Alertmanager {
    child: Child,
    addr: String,
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn post_alert(am: &Alertmanager, starts: &str, ends: Option<&str>) {
    let ends = ends
        .map(|e| format!(r#","endsAt":"{e}""#))
        .unwrap_or_default();
    let alert = format!(
        r#"[{{"labels":{{"alertname":"HighTemperature","severity":"critical","room":"server-b-MARK"}},
            "annotations":{{"summary":"SUMMARY-MARK Server room B is at 41 C"}},
            "startsAt":"{starts}"{ends}}}]"#
    );
    let (status, body) = http_request(
        &am.addr,
        "POST",
        "/api/v2/alerts",
        &[("Content-Type", "application/json")],
        alert.as_bytes(),
    );
    assert_eq!(status, 200, "{body}");
}

/// Seconds since the epoch as RFC 3339 UTC.
fn rfc3339(unix: u64) -> String {
    let days = unix / 86400;
    let secs = unix % 86400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[test]
fn alertmanager_alarms_reach_members_as_alerts_and_their_resolution_as_a_reply() {
    let binary = std::path::Path::new("/usr/bin/prometheus-alertmanager");
    if !binary.exists() {
        eprintln!(
            "SKIPPED: Debian's prometheus-alertmanager is not installed (.ci/run installs it)"
        );
        return;
    }
    let org = Org::new("bot-alertmanager");
    let alice = &org.admin;
    let bob = org.enrol("bob");
    let carol = org.enrol("carol");
    let pager = bot_account(&org);
    alice.ok(&["group", "create", "ops", "--members", "bob,carol,pager"]);
    pager.ok(&["sync"]);
    let token = token_for(&pager, "ops");
    let server = BotServer::start(&pager, &[]);

    let token_file = org.dir.path().join("alertmanager-token");
    std::fs::write(&token_file, &token).unwrap();
    let config = org.dir.path().join("alertmanager.yml");
    std::fs::write(&config, alertmanager_config(&server.addr, &token_file)).unwrap();
    let storage = org.dir.path().join("alertmanager-data");
    let addr = format!("127.0.0.1:{}", free_port());
    let child = std::process::Command::new(binary)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.path={}", storage.display()))
        .arg(format!("--web.listen-address={addr}"))
        .arg("--cluster.listen-address=")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start alertmanager");
    let am = Alertmanager { child, addr };
    wait_until(Duration::from_secs(30), "Alertmanager to be ready", || {
        std::net::TcpStream::connect(&am.addr).is_ok()
            && http_request(&am.addr, "GET", "/-/ready", &[], b"").0 == 200
    });

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let starts = rfc3339(now - 5);
    post_alert(&am, &starts, None);

    // Members' devices receive an urgent alert, asking for an acknowledgement, with the labels.
    let mut alert = Value::Null;
    wait_until(Duration::from_secs(60), "the alarm to reach bob", || {
        bob.run(&["sync"]);
        if let Some(a) = bob.json(&["alerts"]).into_iter().find(|a| {
            a["text"]
                .as_str()
                .is_some_and(|t| t.contains("HighTemperature"))
        }) {
            alert = a;
            true
        } else {
            false
        }
    });
    let text = alert["text"].as_str().unwrap();
    assert!(
        text.starts_with("FIRING [critical]: HighTemperature"),
        "{text}"
    );
    assert!(text.contains("room=server-b-MARK"), "{text}");
    assert!(
        text.contains("Summary: SUMMARY-MARK Server room B is at 41 C"),
        "{text}"
    );
    assert_eq!(alert["sender"], "pager");
    assert_eq!(alert["ack_required"], true);
    let id = alert["id"].as_str().unwrap().to_string();

    // Bob acknowledges; the roll-call route shows it to the source.
    bob.ok(&["ack", &id]);
    let mut rollcall = Value::Null;
    wait_until(
        Duration::from_secs(30),
        "bob's acknowledgement in the roll-call",
        || {
            let (status, body) = server.get(&format!("/v1/alerts/{id}/rollcall"), Some(&token));
            rollcall = serde_json::from_str(&body).unwrap_or_default();
            status == 200
                && rollcall["acknowledged"]
                    .as_array()
                    .is_some_and(|a| a.len() == 1)
        },
    );
    assert_eq!(rollcall["acknowledged"][0]["user"], "bob");
    assert_eq!(rollcall["waiting"], serde_json::json!(["alice", "carol"]));

    // Resolved in Alertmanager: a "resolved" reply to the alert.
    post_alert(&am, &starts, Some(&rfc3339(now - 1)));
    let mut resolved = Value::Null;
    wait_until(
        Duration::from_secs(60),
        "the resolution to reach carol",
        || {
            let found = messages(&carol, "ops").into_iter().find(|m| {
                m["text"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("RESOLVED"))
            });
            found.map(|m| resolved = m).is_some()
        },
    );
    assert_eq!(resolved["reply_to"], id.as_str(), "{resolved}");
    assert!(resolved["text"]
        .as_str()
        .unwrap()
        .contains("room=server-b-MARK"));

    // Each notification was stored once, however often Alertmanager sent it.
    let seen = messages(&carol, "ops");
    let firing = seen
        .iter()
        .filter(|m| m["text"].as_str().is_some_and(|t| t.starts_with("FIRING")))
        .count();
    assert_eq!(firing, 1, "{seen:?}");

    // The relay's data holds none of the alarm's text.
    for needle in ["server-b-MARK", "SUMMARY-MARK", "HighTemperature"] {
        assert!(
            !dir_contains(&org.relay.data, needle.as_bytes()),
            "{needle} on the relay"
        );
    }
}
