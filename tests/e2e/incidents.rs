//! Incident command: escalation of unanswered alerts, tasks, incidents with their
//! after-action report, and drills.

use muster_e2e::{dir_contains, wait_until, Device, Org};
use serde_json::Value;
use std::time::Duration;

fn alerts_starting(device: &Device, group: &str, prefix: &str) -> Vec<Value> {
    device
        .json(&["read", group])
        .into_iter()
        .filter(|m| m["kind"] == "alert" && m["text"].as_str().unwrap().starts_with(prefix))
        .collect()
}

fn sent_id(out: &str, prefix: &str) -> String {
    out.trim()
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("{prefix:?} not in {out}"))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn an_unanswered_alert_is_re_sent_then_raised_once_though_two_devices_run_the_timer() {
    let org = Org::new("escalation");
    let alice = &org.admin;
    let bob = org.enrol("bob");
    let carol = org.enrol("carol");
    let dave = org.enrol("dave");
    let erin = org.enrol("erin");
    alice.ok(&["group", "create", "pier", "--members", "bob,carol,erin"]);
    alice.ok(&["group", "create", "leads", "--members", "bob,carol,dave"]);
    for d in [&bob, &carol, &dave, &erin] {
        d.ok(&["sync"]);
    }
    let refused = alice.fails(&[
        "alert",
        "pier",
        "x",
        "--escalate-after",
        "2s",
        "--escalate-to",
        "pier",
    ]);
    assert!(refused.contains("another group"), "{refused}");
    let refused = alice.fails(&[
        "alert",
        "pier",
        "x",
        "--escalate-after",
        "2s",
        "--escalate-to",
        "zed",
    ]);
    assert!(
        refused.contains("nor someone you share a group with"),
        "{refused}"
    );

    // Bob and carol are online (chatting) and both in the escalation group: either device
    // could run the timer. Alice sends and goes offline; erin is offline throughout.
    let mut bob_chat = bob.chat("pier", &[]);
    let mut carol_chat = carol.chat("pier", &[]);
    bob_chat.wait_for("--- chatting in pier");
    carol_chat.wait_for("--- chatting in pier");
    let out = alice.ok(&[
        "alert",
        "pier",
        "PIER-FIRE smoke at berth 3",
        "--options",
        "safe,need help!",
        "--escalate-after",
        "2s,5s",
        "--escalate-to",
        "leads",
    ]);
    let id = sent_id(&out, "alert sent ");
    bob_chat.wait_for("PIER-FIRE smoke at berth 3");
    // Nobody answers: the alert comes again, naming who is silent...
    bob_chat.wait_for("REMINDER of alice's alert, no answer within 2s from bob, carol, erin");
    carol_chat.wait_for("REMINDER of alice's alert");
    // ...and is then raised in the escalation group.
    wait_until(Duration::from_secs(60), "the raised alert", || {
        dave.ok(&["sync"]);
        !alerts_starting(&dave, "leads", "ESCALATED").is_empty()
    });
    // Both devices stop; each one's own sync decides any claim it still has pending.
    drop(bob_chat);
    drop(carol_chat);
    for d in [&bob, &carol, &dave, alice, &erin] {
        d.ok(&["sync"]);
    }
    let raised = alerts_starting(&dave, "leads", "ESCALATED");
    assert_eq!(raised.len(), 1, "raised exactly once: {raised:?}");
    let text = raised[0]["text"].as_str().unwrap();
    assert!(
        text.starts_with(
            "ESCALATED from pier: no answer within 5s from bob, carol, erin to alice's alert: PIER-FIRE"
        ),
        "{text}"
    );
    for d in [alice, &bob, &carol, &erin] {
        let reminders = alerts_starting(d, "pier", "REMINDER");
        assert_eq!(reminders.len(), 1, "one reminder on {}'s device", d.name);
        let shown = d.ok(&["read", "pier"]);
        assert!(
            shown.contains(
                "raised alice's alert in leads: no answer within 5s from bob, carol, erin"
            ),
            "{}: {shown}",
            d.name
        );
    }
    let claims: usize = [&bob, &carol]
        .iter()
        .map(|d| {
            d.open_store()
                .query_row("SELECT COUNT(*) FROM duty_claims WHERE mine = 1", [], |r| {
                    r.get::<_, i64>(0)
                })
                .unwrap() as usize
        })
        .sum();
    eprintln!("bob's and carol's devices made {claims} claims for 2 duties");
    // Answering after the fact is still counted.
    erin.ok(&["answer", &id, "safe"]);
    for needle in ["PIER-FIRE", "berth 3", "need help"] {
        assert!(
            !dir_contains(&org.relay.data, needle.as_bytes()),
            "{needle} on the relay"
        );
    }
}

/// An organisation whose admin alice made `group` with bob, carol and erin, all synced.
fn team(label: &str, group: &str) -> (Org, Device, Device, Device) {
    let org = Org::new(label);
    let (bob, carol, erin) = (org.enrol("bob"), org.enrol("carol"), org.enrol("erin"));
    org.admin
        .ok(&["group", "create", group, "--members", "bob,carol,erin"]);
    for d in [&bob, &carol, &erin] {
        d.ok(&["sync"]);
    }
    (org, bob, carol, erin)
}

#[test]
fn a_task_is_accepted_and_done_and_an_overdue_one_is_flagged_to_the_group() {
    let (org, bob, carol, erin) = team("tasks", "pier");
    let alice = &org.admin;
    let refused = alice.fails(&["task", "pier", "Secure pier 4", "--assign", "zed"]);
    assert!(refused.contains("not a member of pier"), "{refused}");
    let out = alice.ok(&[
        "task",
        "pier",
        "Secure pier 4",
        "--assign",
        "bob",
        "--due",
        "1h",
    ]);
    let task = sent_id(&out, "task set ");
    bob.ok(&["sync"]);
    carol.ok(&["sync"]);
    let shown = bob.ok(&["read", "pier"]);
    assert!(
        shown.contains("task for @bob: Secure pier 4 (due "),
        "{shown}"
    );
    let refused = carol.fails(&["accept", &task]);
    assert!(refused.contains("only bob, its assignee"), "{refused}");
    bob.ok(&["accept", &task]);
    alice.ok(&["sync"]);
    let board = alice.ok(&["board", "pier"]);
    assert!(
        board.contains("Secure pier 4  [accepted] for bob (set by alice)"),
        "{board}"
    );
    bob.ok(&["done", &task]);
    let refused = bob.fails(&["decline", &task]);
    assert!(refused.contains("done already"), "{refused}");
    for d in [alice, &carol, &erin] {
        d.ok(&["sync"]);
        let tasks = d.json(&["tasks", "pier"]);
        assert_eq!(tasks[0]["state"], "done", "on {}'s device", d.name);
    }

    // A task due in 2 seconds that carol never takes up: alice is offline, so another
    // member's device flags it.
    let out = alice.ok(&[
        "task",
        "pier",
        "Close gate 7",
        "--assign",
        "carol",
        "--due",
        "2s",
    ]);
    let late = sent_id(&out, "task set ");
    wait_until(Duration::from_secs(60), "the overdue flag", || {
        erin.ok(&["sync"]);
        !alerts_starting(&erin, "pier", "OVERDUE").is_empty()
    });
    for d in [alice, &bob, &carol, &erin] {
        d.ok(&["sync"]);
        let flagged = alerts_starting(d, "pier", "OVERDUE task for @carol");
        assert_eq!(flagged.len(), 1, "flagged once on {}'s device", d.name);
        let task = d
            .json(&["tasks", "pier"])
            .into_iter()
            .find(|t| t["id"] == late.as_str())
            .unwrap();
        assert_eq!(task["overdue"], true);
    }
    let board = carol.ok(&["board", "pier"]);
    assert!(
        board.contains("Close gate 7  [open] for carol (set by alice)  due "),
        "{board}"
    );
    assert!(board.contains("OVERDUE"), "{board}");
    for needle in ["Secure pier 4", "Close gate 7"] {
        assert!(
            !dir_contains(&org.relay.data, needle.as_bytes()),
            "{needle} on the relay"
        );
    }
}

/// Milliseconds since the epoch of an RFC 3339 time as the CLI prints it.
fn ms(rfc3339: &str) -> i64 {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .unwrap();
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

fn span(ms: i64) -> String {
    let secs = ms / 1000;
    if secs < 60 {
        format!("{secs}s")
    } else {
        format!("{}m {:02}s", secs / 60, secs % 60)
    }
}

#[test]
fn a_drill_incident_is_labelled_everywhere_and_its_report_matches_what_happened() {
    let (org, bob, carol, erin) = team("incident", "site");
    let alice = &org.admin;
    // An earlier drill, for comparison.
    alice.ok(&["incident", "open", "site", "Fire drill", "--drill"]);
    let out = alice.ok(&["alert", "site", "ASSEMBLE-POINT now", "--ack-required"]);
    let first = sent_id(&out, "alert sent ");
    bob.ok(&["sync"]);
    bob.ok(&["ack", &first]);
    alice.ok(&["incident", "close", "site"]);

    let out = alice.ok(&["incident", "open", "site", "Flooding, site B", "--drill"]);
    assert!(out.contains("[DRILL] incident opened"), "{out}");
    let refused = alice.fails(&["incident", "open", "site", "Another"]);
    assert!(refused.contains("open incident"), "{refused}");
    let out = alice.ok(&[
        "alert",
        "site",
        "LEVEE-CHECK report in",
        "--options",
        "safe,need help!",
    ]);
    let alert = sent_id(&out, "alert sent ");
    for d in [&bob, &carol, &erin] {
        d.ok(&["sync"]);
        let shown = d.ok(&["read", "site"]);
        assert!(
            shown.contains("🚨 [DRILL] ALERT from alice: LEVEE-CHECK"),
            "{}: {shown}",
            d.name
        );
        assert!(shown.contains("[DRILL] alice opened incident"), "{shown}");
    }
    bob.ok(&["answer", &alert, "safe"]);
    erin.ok(&["answer", &alert, "need help"]);
    let out = alice.ok(&["task", "site", "Sandbags to gate 2", "--assign", "bob"]);
    let task = sent_id(&out, "task set ");
    bob.ok(&["sync"]);
    bob.ok(&["accept", &task]);
    alice.ok(&["board", "site", "set", "level", "2.1m"]);
    bob.ok(&["sync"]);
    bob.ok(&["board", "site", "set", "level", "2.4m"]);
    bob.ok(&["done", &task]);
    alice.ok(&["sync"]);
    alice.ok(&["send", "site", "pumps running"]);
    alice.ok(&["incident", "close", "site"]);
    for d in [&bob, &carol, &erin] {
        d.ok(&["sync"]);
        let listed = d.ok(&["incident", "list", "site"]);
        assert!(listed.contains("[DRILL] #"), "{listed}");
        assert!(listed.contains("Flooding, site B"), "{listed}");
    }

    // The figures the report must give, from what the devices recorded.
    let sent = alice
        .json(&["read", "site"])
        .into_iter()
        .find(|m| m["id"] == alert.as_str())
        .unwrap();
    let sent_at = ms(sent["sent_at"].as_str().unwrap());
    let roll = &alice.json(&["rollcall", &alert])[0];
    let mut after: Vec<i64> = roll["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["acked_at"].as_str())
        .map(|at| ms(at) - sent_at)
        .collect();
    after.sort();
    let median = (after[0] + after[1]) / 2;
    let slowest = after[1];

    let report = alice.ok(&["incident", "report", "site", "--format", "md"]);
    assert!(
        report.starts_with("# After-action report: DRILL: Flooding, site B"),
        "{report}"
    );
    assert!(report.contains("this incident was an exercise"), "{report}");
    let row = report
        .lines()
        .find(|l| l.starts_with("| [DRILL] LEVEE-CHECK report in | "))
        .unwrap_or_else(|| panic!("no roll-call row in {report}"));
    assert!(
        row.ends_with(&format!(
            "| 2 of 3 | {} | {} | safe: 1, need help: 1 | carol |",
            span(median),
            span(slowest)
        )),
        "{row}"
    );
    for line in [
        "opened the incident (drill): Flooding, site B",
        "answered \\\"safe\\\" to alice's alert",
        "answered \\\"need help\\\" to alice's alert",
        "accepted task",
        "done task",
        "set level: 2.1m",
        "set level: 2.4m",
        "pumps running",
        "closed the incident",
        "| Sandbags to gate 2 | bob | alice |",
        "alice set level to 2.1m",
        "bob set level to 2.4m",
        "| level | 2.4m |",
        "## Compared with earlier drills",
        "| Fire drill |",
    ] {
        let line = line.replace("\\\"", "\"");
        assert!(report.contains(&line), "{line:?} missing from {report}");
    }
    assert!(report.contains(" UTC | "), "times in UTC: {report}");
    // The earlier drill's alert is not part of this incident.
    assert!(!report.contains("ASSEMBLE-POINT"), "{report}");
    // The same report on another device that saw the same messages.
    let bobs = bob.ok(&["incident", "report", "site", "--format", "md"]);
    assert!(bobs.contains("2 of 3"), "{bobs}");

    let html_file = org.dir.path().join("report.html");
    alice.ok(&[
        "incident",
        "report",
        "site",
        "--format",
        "html",
        "--out",
        html_file.to_str().unwrap(),
    ]);
    let html = std::fs::read_to_string(&html_file).unwrap();
    assert!(
        html.contains("<svg") && html.contains("<polyline"),
        "{html}"
    );
    assert!(html.contains("DRILL: this incident was an exercise"));

    for needle in [
        "LEVEE-CHECK",
        "Flooding, site B",
        "Sandbags",
        "Fire drill",
        "need help",
    ] {
        assert!(
            !dir_contains(&org.relay.data, needle.as_bytes()),
            "{needle} on the relay"
        );
    }
}
