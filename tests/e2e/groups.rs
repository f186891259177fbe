//! Groups: membership changes, concurrent commits without forks and managed groups.

use muster_e2e::Org;
use std::thread;

#[test]
fn create_add_remove_leave() {
    let org = Org::new("groups");
    let alice = &org.admin;
    let bob = org.enrol("bob");
    let carol = org.enrol("carol");
    let dave = org.enrol("dave");

    alice.ok(&["group", "create", "ops", "--members", "bob,carol"]);
    bob.ok(&["sync"]);
    carol.ok(&["sync"]);
    for d in [alice, &bob, &carol] {
        assert_eq!(d.members("ops"), ["alice", "bob", "carol"], "{}", d.name);
    }
    let g = alice.group("ops");
    assert!(g["id"].as_str().unwrap().len() == 32);
    assert!(g["epoch"].as_u64().unwrap() >= 1);

    // Messages in both directions.
    alice.ok(&["send", "ops", "hello team"]);
    bob.ok(&["sync"]);
    bob.ok(&["send", "ops", "hi alice"]);
    alice.ok(&["sync"]);
    carol.ok(&["sync"]);
    assert_eq!(carol.texts("ops"), ["hello team", "hi alice"]);
    let read = alice.json(&["read", "ops"]);
    let from_bob = read.iter().find(|m| m["text"] == "hi alice").unwrap();
    assert_eq!(from_bob["sender"], "bob");
    assert_eq!(from_bob["group"], "ops");
    for field in ["id", "sender_device", "sent_at", "received_at"] {
        assert!(
            from_bob[field].as_str().is_some_and(|s| !s.is_empty()),
            "{field}"
        );
    }

    // Add dave: he sees later messages and the group's name.
    alice.ok(&["group", "add", "ops", "dave"]);
    dave.ok(&["sync"]);
    assert_eq!(dave.members("ops"), ["alice", "bob", "carol", "dave"]);
    alice.ok(&["send", "ops", "welcome dave"]);
    dave.ok(&["sync"]);
    assert_eq!(dave.texts("ops"), ["welcome dave"]);

    // Remove carol: she learns it and cannot read what follows.
    alice.ok(&["group", "remove", "ops", "carol"]);
    carol.ok(&["sync"]);
    assert_eq!(carol.group("ops")["state"], "removed");
    alice.ok(&["send", "ops", "carol cannot see this"]);
    carol.ok(&["sync"]);
    assert!(!carol.texts("ops").iter().any(|t| t.contains("cannot see")));
    let err = carol.fails(&["send", "ops", "still here?"]);
    assert!(err.contains("no longer a member"), "{err}");
    bob.ok(&["sync"]);
    assert_eq!(bob.members("ops"), ["alice", "bob", "dave"]);

    // Bob leaves; the next member to sync commits his removal.
    bob.ok(&["group", "leave", "ops"]);
    assert_eq!(bob.group("ops")["state"], "left");
    alice.ok(&["sync"]);
    assert_eq!(alice.members("ops"), ["alice", "dave"]);
    dave.ok(&["sync"]);
    assert_eq!(dave.members("ops"), ["alice", "dave"]);
    alice.ok(&["send", "ops", "after bob left"]);
    dave.ok(&["sync"]);
    assert_eq!(dave.texts("ops").last().unwrap(), "after bob left");
    bob.ok(&["sync"]);
    assert!(!bob.texts("ops").iter().any(|t| t == "after bob left"));
}

#[test]
fn concurrent_commits_do_not_fork() {
    let org = Org::new("race");
    let alice = &org.admin;
    let bob = org.enrol("bob");
    let carol = org.enrol("carol");
    let dave = org.enrol("dave");
    alice.ok(&["group", "create", "ops", "--members", "bob"]);
    bob.ok(&["sync"]);

    // Alice adds carol while bob adds dave, at the same moment, both at the same epoch.
    let a = alice
        .command()
        .args(["group", "add", "ops", "carol"])
        .output();
    let (a, b) = thread::scope(|s| {
        let b = s.spawn(|| bob.command().args(["group", "add", "ops", "dave"]).output());
        (a, b.join().unwrap())
    });
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));

    for d in [alice, &bob, &carol, &dave] {
        d.ok(&["sync"]);
    }
    let epoch = alice.group("ops")["epoch"].clone();
    for d in [alice, &bob, &carol, &dave] {
        assert_eq!(
            d.members("ops"),
            ["alice", "bob", "carol", "dave"],
            "{}",
            d.name
        );
        assert_eq!(d.group("ops")["epoch"], epoch, "{} epoch", d.name);
    }
    // Everyone can still talk to everyone.
    carol.ok(&["send", "ops", "from carol"]);
    dave.ok(&["send", "ops", "from dave"]);
    for d in [alice, &bob, &carol, &dave] {
        d.ok(&["sync"]);
        let texts = d.texts("ops");
        assert!(
            texts.contains(&"from carol".to_string()) && texts.contains(&"from dave".to_string()),
            "{}: {texts:?}",
            d.name
        );
    }
}

#[test]
fn managed_groups_are_run_by_admins() {
    let org = Org::new("managed");
    let alice = &org.admin;
    let bob = org.enrol("bob");
    let carol = org.enrol("carol");
    let dave = org.enrol("dave");
    alice.ok(&[
        "group",
        "create",
        "crisis",
        "--members",
        "bob,carol",
        "--managed",
    ]);
    bob.ok(&["sync"]);
    carol.ok(&["sync"]);
    assert_eq!(bob.group("crisis")["managed"], true);

    // Members are refused by their own client.
    let err = bob.fails(&["group", "add", "crisis", "dave"]);
    assert!(err.contains("managed group"), "{err}");
    let err = bob.fails(&["group", "remove", "crisis", "carol"]);
    assert!(err.contains("managed group"), "{err}");
    let err = bob.fails(&["group", "leave", "crisis"]);
    assert!(err.contains("cannot leave"), "{err}");
    let err = bob.fails(&["group", "rename", "crisis", "mine"]);
    assert!(err.contains("managed group"), "{err}");
    let err = bob.fails(&["group", "create", "own", "--managed"]);
    assert!(err.contains("no admin role"), "{err}");

    // The admin adds, renames and removes; everyone follows.
    alice.ok(&["group", "add", "crisis", "dave"]);
    alice.ok(&["group", "rename", "crisis", "incident-42"]);
    alice.ok(&["group", "remove", "incident-42", "carol"]);
    for d in [&bob, &dave] {
        d.ok(&["sync"]);
        assert_eq!(
            d.members("incident-42"),
            ["alice", "bob", "dave"],
            "{}",
            d.name
        );
    }
    carol.ok(&["sync"]);
    assert_eq!(carol.group("incident-42")["state"], "removed");
    bob.ok(&["send", "incident-42", "on site"]);
    dave.ok(&["sync"]);
    assert_eq!(dave.texts("incident-42"), ["on site"]);

    // Ordinary groups stay open to members.
    bob.ok(&["group", "create", "coffee", "--members", "carol"]);
    bob.ok(&["group", "rename", "coffee", "tea"]);
    carol.ok(&["sync"]);
    assert_eq!(carol.group("tea")["managed"], false);
    assert!(carol.texts("tea").is_empty());
}

#[test]
fn people_added_before_they_were_ever_online_join_on_their_own_when_they_first_connect() {
    let org = Org::new("pending-members");
    let alice = &org.admin;
    let carol = org.enrol("carol");
    // Bob is approved but his device has not been online since.
    let code = alice.ok(&["invite", "bob"]).trim().to_string();
    let bob = muster_e2e::Device::new(&org.dir, "bob");
    bob.ok(&["join", &code, "--display-name", "Bob B"]);
    alice.ok(&["approve", "bob"]);

    let created = alice.ok(&["group", "create", "ops", "--members", "bob,carol"]);
    assert!(created.contains("waiting for bob"), "{created}");
    alice.ok(&["group", "create", "lunch"]);
    alice.ok(&["group", "add", "lunch", "bob"]);
    let ops = alice.group("ops");
    assert_eq!(ops["members"], serde_json::json!(["alice", "carol"]));
    assert_eq!(ops["waiting"], serde_json::json!(["bob"]));
    alice.ok(&["group", "create", "changed-mind", "--members", "bob"]);
    alice.ok(&["group", "remove", "changed-mind", "bob"]);
    assert_eq!(
        alice.group("changed-mind")["waiting"],
        serde_json::json!([]),
        "a waiting add is cancelled by removing them"
    );
    // Carol, not the one who added him, strikes bob off another group: that stands for
    // alice's device too.
    alice.ok(&["group", "create", "other-mind", "--members", "bob,carol"]);
    carol.ok(&["sync"]);
    carol.ok(&["group", "remove", "other-mind", "bob"]);
    let typo = alice.fails(&["group", "add", "lunch", "bobb"]);
    assert!(
        typo.contains("bobb"),
        "an unknown user is still an error: {typo}"
    );

    // Every member sees who is waiting.
    carol.ok(&["sync"]);
    assert_eq!(carol.group("ops")["waiting"], serde_json::json!(["bob"]));

    // Bob's device comes online once and joins both groups on its own: nobody else
    // runs anything.
    let joined = bob.ok(&["sync"]);
    let groups = bob.json(&["groups"]);
    assert_eq!(groups.len(), 2, "{joined}\n{groups:?}");
    let mut rosters: Vec<serde_json::Value> = groups.iter().map(|g| g["members"].clone()).collect();
    rosters.sort_by_key(|r| r.as_array().map_or(0, |a| a.len()));
    assert_eq!(
        rosters,
        [
            serde_json::json!(["alice", "bob"]),
            serde_json::json!(["alice", "bob", "carol"])
        ]
    );
    for group in &groups {
        assert_eq!(group["waiting"], serde_json::json!([]), "{group}");
    }
    // Others see him join when they next look; alice's device tells him the names.
    carol.ok(&["sync"]);
    assert!(carol.members("ops").contains(&"bob".to_string()));
    assert_eq!(carol.group("ops")["waiting"], serde_json::json!([]));
    alice.ok(&["sync"]);
    alice.ok(&["send", "ops", "welcome bob"]);
    bob.ok(&["sync"]);
    for group in ["ops", "lunch"] {
        assert!(bob.members(group).contains(&"bob".to_string()), "{group}");
        assert_eq!(
            alice.group(group)["waiting"],
            serde_json::json!([]),
            "{group}"
        );
    }
    assert!(bob.texts("ops").contains(&"welcome bob".to_string()));
    let names: Vec<serde_json::Value> = bob
        .json(&["groups"])
        .iter()
        .map(|g| g["name"].clone())
        .collect();
    assert!(
        !names.contains(&"changed-mind".into()) && !names.contains(&"other-mind".into()),
        "bob is not added where the add was cancelled: {names:?}"
    );
}
