//! Alerts that ask for an answer: each member picks one of the alert's answers, may change
//! it, and every device shows the same roll-call grouped by answer.

use muster_e2e::{dir_contains, Org};
use serde_json::{json, Value};

/// The roll-call of `id` on a device, as (answer, who) pairs and who has not answered.
fn grouped(rollcall: &Value) -> (Vec<(String, Vec<String>)>, Vec<String>) {
    let answers = rollcall["answers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let users = a["users"]
                .as_array()
                .unwrap()
                .iter()
                .map(|u| u.as_str().unwrap().to_string())
                .collect();
            (a["answer"].as_str().unwrap().to_string(), users)
        })
        .collect();
    let silent = serde_json::from_value(rollcall["not_answered"].clone()).unwrap();
    (answers, silent)
}

#[test]
fn members_answer_change_their_answer_and_answer_late_and_every_device_agrees() {
    let org = Org::new("answers");
    let alice = &org.admin;
    let bob = org.enrol("bob");
    let carol = org.enrol("carol");
    let erin = org.enrol("erin");
    let dave = org.enrol("dave");
    alice.ok(&[
        "group",
        "create",
        "site",
        "--members",
        "bob,carol,erin,dave",
    ]);
    for d in [&bob, &carol, &erin, &dave] {
        d.ok(&["sync"]);
    }

    // Dave is offline (he does not sync) while the alert goes out and the others answer.
    let out = alice.ok(&[
        "alert",
        "site",
        "FLOOD-MARK water in basement B",
        "--options",
        "safe,need help!,on my way",
    ]);
    let id = out.trim().strip_prefix("alert sent ").unwrap().to_string();
    for d in [&bob, &carol, &erin] {
        d.ok(&["sync"]);
    }
    let shown = bob.ok(&["read", "site"]);
    assert!(
        shown.contains("safe | need help! | on my way"),
        "the answers are shown with the alert: {shown}"
    );
    let refused = bob.fails(&["ack", &id]);
    assert!(refused.contains("safe, need help, on my way"), "{refused}");
    let refused = bob.fails(&["answer", &id, "maybe"]);
    assert!(
        refused.contains("not one of this alert's answers"),
        "{refused}"
    );
    let refused = alice.fails(&["answer", &id, "safe"]);
    assert!(refused.contains("you sent this alert"), "{refused}");

    bob.ok(&["answer", &id, "safe"]);
    carol.ok(&["answer", &id, "Safe"]);
    erin.ok(&["answer", &id, "on my way"]);
    // Bob changes his answer; "need help" is urgent, so it raises an alert in the group.
    bob.ok(&["answer", &id, "need help"]);

    // Back online, dave sees the alert and answers.
    dave.ok(&["sync"]);
    dave.ok(&["answer", &id, "safe"]);

    let expected = (
        vec![
            (
                "safe".to_string(),
                vec!["carol".to_string(), "dave".to_string()],
            ),
            ("need help".to_string(), vec!["bob".to_string()]),
            ("on my way".to_string(), vec!["erin".to_string()]),
        ],
        Vec::<String>::new(),
    );
    for d in [alice, &bob, &carol, &erin, &dave] {
        d.ok(&["sync"]);
        let rollcall = &d.json(&["rollcall", &id])[0];
        assert_eq!(grouped(rollcall), expected, "on {}'s device", d.name);
        assert_eq!(rollcall["acknowledged"], json!(4));
    }
    let human = alice.ok(&["rollcall", &id]);
    assert!(human.contains("need help (urgent): 1 — bob"), "{human}");
    assert!(human.contains("safe: 2 — carol, dave"), "{human}");
    assert!(human.contains("not answered: 0 — nobody"), "{human}");

    // Bob's urgent answer reached alice as an alert of its own.
    let raised: Vec<Value> = alice
        .json(&["read", "site"])
        .into_iter()
        .filter(|m| m["kind"] == "alert" && m["sender"] == "bob")
        .collect();
    assert_eq!(raised.len(), 1, "{raised:?}");
    let text = raised[0]["text"].as_str().unwrap();
    assert!(
        text.starts_with("bob answered \"need help\" to alice's alert: FLOOD-MARK"),
        "{text}"
    );

    // The relay holds none of the alert, its answers or the raised alert.
    for needle in ["FLOOD-MARK", "on my way", "need help"] {
        assert!(
            !dir_contains(&org.relay.data, needle.as_bytes()),
            "{needle} on the relay"
        );
    }
}
