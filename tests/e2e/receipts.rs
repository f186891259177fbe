//! Receipts reach the authors of what they cover (and the group's archive), not every member.

use muster_e2e::Org;

fn queued_deliveries(org: &Org) -> u64 {
    let out = org.relay.admin(&["stats"]);
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("queued deliveries: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no queued deliveries in {text}"))
}

#[test]
fn a_receipt_reaches_its_author_and_no_other_member() {
    let org = Org::new("receipts");
    let alice = &org.admin;
    let bob = org.enrol("bob");
    let carol = org.enrol("carol");
    alice.ok(&["group", "create", "team", "--members", "bob,carol"]);
    bob.ok(&["sync"]);
    carol.ok(&["sync"]);
    alice.ok(&["sync"]);
    let out = alice.ok(&["send", "team", "status at noon"]);
    let id = out.trim().strip_prefix("sent ").unwrap().to_string();
    carol.ok(&["sync"]);
    bob.ok(&["sync"]);
    bob.json(&["read", "team"]);
    bob.ok(&["sync"]); // the read receipt goes out

    alice.ok(&["sync"]);
    let mine = alice.json(&["read", "team"]);
    let sent = mine.iter().find(|m| m["id"] == id.as_str()).unwrap();
    assert_eq!(sent["read_by"], serde_json::json!(["bob"]));
    assert_eq!(sent["delivered_to"], serde_json::json!(["bob", "carol"]));

    // Carol, who synced before bob's receipts, has nothing waiting for her: they were
    // never hers to fetch. Everyone else fetched everything.
    assert_eq!(queued_deliveries(&org), 0);
    let relay = muster_e2e::relay_db(&org);
    let directed: i64 = relay
        .query_row(
            "SELECT COUNT(*) FROM messages WHERE audience = char(10) || 'alice' || char(10)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(directed > 0, "bob's receipts were sent to alice alone");
}

/// Messages sent to `author` alone, as the relay stored them.
fn directed_to(org: &Org, author: &str) -> i64 {
    muster_e2e::relay_db(org)
        .query_row(
            "SELECT COUNT(*) FROM messages WHERE audience = char(10) || ?1 || char(10)",
            [author],
            |r| r.get(0),
        )
        .unwrap()
}

/// Whether `author`'s message `text` in `group` lists `user` under `field`, after a sync.
fn receipt_shown(
    author: &muster_e2e::Device,
    group: &str,
    text: &str,
    field: &str,
    user: &str,
) -> bool {
    author.ok(&["sync"]);
    author
        .json(&["read", group])
        .iter()
        .find(|m| m["text"] == text)
        .is_some_and(|m| {
            m[field]
                .as_array()
                .is_some_and(|a| a.iter().any(|u| u == user))
        })
}

#[test]
fn in_a_large_group_a_text_read_at_once_costs_one_receipt_and_an_unread_one_is_acknowledged_after_a_hold(
) {
    // More than 20 members: delivery receipts are held there. The other members never
    // run, so only bob sends receipts.
    let org = Org::new("receipt-hold");
    let alice = &org.admin;
    let bob = org.enrol("bob");
    let others: Vec<String> = (1..20).map(|i| format!("member{i}")).collect();
    for user in &others {
        org.enrol(user);
    }
    let members = format!("bob,{}", others.join(","));
    alice.ok(&["group", "create", "all", "--members", &members]);
    alice.ok(&["group", "create", "other", "--members", &members]);

    // A one-shot sync is a device going offline again: it sends what it would have held.
    alice.ok(&["send", "all", "first"]);
    bob.ok(&["sync"]);
    assert!(receipt_shown(alice, "all", "first", "delivered_to", "bob"));

    // In chat, a text shown (and so read) at once is covered by its read receipt alone.
    let mut chat = bob.chat("all", &[]);
    chat.wait_for("chatting in all");
    let before = directed_to(&org, "alice");
    alice.ok(&["send", "all", "second"]);
    chat.wait_for("second");
    muster_e2e::wait_until(
        std::time::Duration::from_secs(20),
        "bob's read receipt",
        || receipt_shown(alice, "all", "second", "read_by", "bob"),
    );

    // A text in a group the chat does not show is not read: its delivery receipt goes out
    // once it has been held, while the chat waits for nothing else.
    alice.ok(&["send", "other", "elsewhere"]);
    muster_e2e::wait_until(
        std::time::Duration::from_secs(20),
        "bob's delivery receipt for the unread text",
        || receipt_shown(alice, "other", "elsewhere", "delivered_to", "bob"),
    );
    assert_eq!(
        directed_to(&org, "alice") - before,
        2,
        "one read receipt for the text read at once, one delivery receipt for the other"
    );
    chat.type_line("/quit");
}
