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
