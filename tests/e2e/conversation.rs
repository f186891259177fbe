//! Conversation features: replies, edits, deletes, reactions, receipts, search and disappearing messages.

use muster_e2e::{dir_contains, Org};
use serde_json::Value;

fn message<'a>(list: &'a [Value], text_or_id: &str) -> &'a Value {
    list.iter()
        .find(|m| m["id"] == text_or_id || m["text"] == text_or_id)
        .unwrap_or_else(|| panic!("no message {text_or_id} in {list:?}"))
}

fn sent_id(out: &str) -> String {
    out.trim()
        .strip_prefix("sent ")
        .expect("send prints the id")
        .to_string()
}

#[test]
fn replies_edits_deletes_reactions_and_receipts_reach_an_offline_member_in_order() {
    let org = Org::new("conversation");
    let alice = &org.admin;
    let bob = org.enrol("bob");
    let carol = org.enrol("carol");
    alice.ok(&["group", "create", "team", "--members", "bob,carol"]);
    bob.ok(&["sync"]);
    carol.ok(&["sync"]);
    // Carol goes offline from here.

    let briefing = sent_id(&alice.ok(&["send", "team", "briefing at 10 @bob"]));
    let secret = sent_id(&alice.ok(&["send", "team", "WRONG-CHANNEL-MARKER-42"]));
    bob.ok(&["sync"]);
    bob.json(&["read", "team"]); // marks as read
    let reply = sent_id(&bob.ok(&["send", "team", "on my way", "--reply-to", &briefing[..8]]));
    bob.ok(&["react", &briefing, "👍"]);
    alice.ok(&["edit", &briefing, "briefing at 11 @bob"]);
    alice.ok(&["delete", &secret]);
    let err = bob.fails(&["edit", &briefing, "hijack"]);
    assert!(err.contains("not yours"), "{err}");
    let err = bob.fails(&["delete", &briefing]);
    assert!(err.contains("not yours"), "{err}");

    // Alice sees bob's receipts and reaction.
    alice.ok(&["sync"]);
    let mine = alice.json(&["read", "team"]);
    let b = message(&mine, &briefing);
    assert_eq!(b["read_by"], serde_json::json!(["bob"]));
    assert_eq!(b["reactions"]["👍"], serde_json::json!(["bob"]));
    assert_eq!(b["edited"], true);
    assert_eq!(b["mentions"], serde_json::json!(["bob"]));
    assert_eq!(message(&mine, &reply)["reply_to"], briefing);

    // Carol catches up: everything applies in order.
    carol.ok(&["sync"]);
    let seen = carol.json(&["read", "team"]);
    let texts: Vec<&str> = seen
        .iter()
        .filter(|m| m["kind"] == "text")
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["briefing at 11 @bob", "", "on my way"]);
    let b = message(&seen, &briefing);
    assert_eq!(b["edited"], true);
    assert_eq!(b["reactions"]["👍"], serde_json::json!(["bob"]));
    let gone = message(&seen, &secret);
    assert_eq!(gone["deleted"], true);
    assert_eq!(message(&seen, &reply)["reply_to"], briefing);
    carol.ok(&["sync"]); // sends the read receipts `read` queued

    alice.ok(&["sync"]);
    let mine = alice.json(&["read", "team"]);
    let b = message(&mine, &briefing);
    assert_eq!(b["read_by"], serde_json::json!(["bob", "carol"]));
    assert_eq!(b["audience"], 2);
    let human = alice.ok(&["read", "team"]);
    assert!(human.contains("read by 2 of 2"), "{human}");
    assert!(
        human.contains("(edited)") && human.contains("(message deleted)"),
        "{human}"
    );

    // The deleted text is gone from every store, and the relay never had any of it.
    bob.ok(&["sync"]);
    for d in [alice, &bob, &carol] {
        assert!(
            !dir_contains(&d.home, b"WRONG-CHANNEL-MARKER-42"),
            "{} still has it",
            d.name
        );
    }
    assert!(!dir_contains(&org.relay.data, b"briefing at"));
    assert!(!dir_contains(&org.relay.data, b"on my way"));
}

#[test]
fn search_finds_current_text_only() {
    let org = Org::new("search");
    let alice = &org.admin;
    let bob = org.enrol("bob");
    alice.ok(&["group", "create", "ops", "--members", "bob"]);
    alice.ok(&["group", "create", "other"]);
    let generator = sent_id(&alice.ok(&["send", "ops", "the generator at Pier 4 is down"]));
    alice.ok(&["send", "ops", "coffee is ready"]);
    alice.ok(&["send", "other", "generator inventory done"]);
    let typo = sent_id(&alice.ok(&["send", "ops", "evacuaton route north"]));
    alice.ok(&["edit", &typo, "evacuation route south"]);
    let gone = sent_id(&alice.ok(&["send", "ops", "classified generator codes"]));
    alice.ok(&["delete", &gone]);

    let hits = alice.json(&["search", "generator"]);
    let texts: Vec<&str> = hits.iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert!(texts.contains(&"the generator at Pier 4 is down"));
    let hits = alice.json(&["search", "gener", "--group", "ops"]);
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0]["id"], generator);
    assert!(alice.json(&["search", "evacuaton"]).is_empty());
    assert_eq!(alice.json(&["search", "route south"]).len(), 1);
    assert!(alice.json(&["search", "classified"]).is_empty());
    // Search syntax characters are just text.
    assert!(alice.json(&["search", "\"AND (NEAR*"]).is_empty());
    // Bob takes all of it in one batch, which indexes its texts at its end: as they stand
    // after the edit and the deletion it brought too.
    bob.ok(&["sync"]);
    assert_eq!(bob.json(&["search", "pier"]).len(), 1);
    assert_eq!(bob.json(&["search", "generator"]).len(), 1);
    assert!(bob.json(&["search", "evacuaton"]).is_empty());
    assert_eq!(bob.json(&["search", "route south"]).len(), 1);
    assert!(bob.json(&["search", "classified"]).is_empty());
    // And what comes in later batches is indexed too.
    alice.ok(&["send", "ops", "pier 5 flooded"]);
    bob.ok(&["sync"]);
    assert_eq!(bob.json(&["search", "pier"]).len(), 2);
}

#[test]
fn disappearing_messages_are_gone_from_every_store_after_their_time() {
    let org = Org::new("disappear");
    let alice = &org.admin;
    let bob = org.enrol("bob");
    let carol = org.enrol("carol");
    alice.ok(&["group", "create", "ops", "--members", "bob,carol"]);
    let out = alice.ok(&["group", "policy", "ops", "--disappear", "3s"]);
    assert!(out.contains("disappear 3s"), "{out}");
    bob.ok(&["sync"]);
    carol.ok(&["sync"]);
    assert_eq!(bob.group("ops")["disappear_secs"], 3);
    let notices: Vec<String> = bob
        .json(&["read", "ops"])
        .into_iter()
        .filter(|m| m["kind"] == "system")
        .map(|m| m["text"].as_str().unwrap().to_string())
        .collect();
    assert!(
        notices
            .iter()
            .any(|n| n.contains("alice changed the policy: messages disappear 3s")),
        "{notices:?}"
    );

    let sent = std::time::Instant::now();
    alice.ok(&["send", "ops", "VANISH-MARKER meet at gate 3"]);
    bob.ok(&["sync"]);
    if sent.elapsed() < std::time::Duration::from_secs(3) {
        assert_eq!(bob.texts("ops"), ["VANISH-MARKER meet at gate 3"]);
    }
    // Carol stays offline until after the message's time; it never lingers on her device.
    muster_e2e::wait_until(
        std::time::Duration::from_secs(20),
        "the message to disappear",
        || alice.texts("ops").is_empty() && bob.texts("ops").is_empty(),
    );
    carol.ok(&["sync"]);
    assert!(carol.texts("ops").is_empty());
    for d in [alice, &bob, &carol] {
        assert!(
            !dir_contains(&d.home, b"VANISH-MARKER"),
            "{} still stores it",
            d.name
        );
    }

    // Retention instead of disappearing; managed groups leave it to admins.
    alice.ok(&["group", "policy", "ops", "--retain", "30d"]);
    assert_eq!(alice.group("ops")["retain_secs"], 2_592_000);
    alice.ok(&["group", "create", "crisis", "--members", "bob", "--managed"]);
    bob.ok(&["sync"]);
    let err = bob.fails(&["group", "policy", "crisis", "--disappear", "1h"]);
    assert!(err.contains("managed group"), "{err}");
}
