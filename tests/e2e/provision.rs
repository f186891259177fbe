//! Bulk provisioning with `muster admin apply`.

use muster_e2e::{Device, Org};
use std::fmt::Write as _;

fn write(org: &Org, name: &str, text: &str) -> String {
    let path = org.dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn codes(path: &std::path::Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let (u, c) = l.split_once(' ').unwrap();
            (u.to_string(), c.to_string())
        })
        .collect()
}

const FILE: &str = r#"
[[users]]
handle = "bob"
display_name = "Bob Builder"
title = "Site lead"

[[users]]
handle = "carol"
display_name = "Carol C"
roles = ["admin"]

[[groups]]
name = "ops"
members = ["alice", "bob", "carol"]
managed = true

[[groups]]
name = "lunch"
members = ["bob"]
"#;

#[test]
fn apply_invites_approves_and_builds_groups_idempotently() {
    let org = Org::new("apply");
    let alice = &org.admin;
    let file = write(&org, "org.toml", FILE);
    let invites = org.dir.path().join("invites.txt");
    let invites_arg = invites.display().to_string();

    let plan = alice.ok(&["admin", "apply", &file, "--dry-run"]);
    assert!(
        plan.contains("would invite bob") && plan.contains("would create managed group ops"),
        "{plan}"
    );
    assert!(
        alice.json(&["groups"]).is_empty(),
        "dry run changed nothing"
    );

    alice.ok(&["admin", "apply", &file, "--invites-out", &invites_arg]);
    let issued = codes(&invites);
    assert_eq!(
        issued.iter().map(|(u, _)| u.as_str()).collect::<Vec<_>>(),
        ["bob", "carol"]
    );
    assert_eq!(alice.group("ops")["managed"], true);
    let again = alice.ok(&["admin", "apply", &file, "--invites-out", &invites_arg]);
    assert!(again.contains("nothing to do"), "{again}");
    assert_eq!(codes(&invites).len(), 2, "no second invites");

    // The invited people join with whatever profile they typed.
    let bob = Device::new(&org.dir, "bob");
    let carol = Device::new(&org.dir, "carol");
    bob.ok(&["join", &issued[0].1, "--display-name", "bobby"]);
    carol.ok(&["join", &issued[1].1, "--display-name", "cc"]);
    // The next apply approves them with the file's profile and roles. The groups have
    // listed them as waiting since the first run: each device joins them on its next
    // connection, and no further apply has anything to do.
    let out = alice.ok(&["admin", "apply", &file, "--json"]);
    assert!(out.contains("\"approve\""), "{out}");
    bob.ok(&["sync"]);
    carol.ok(&["sync"]);
    let again = alice.ok(&["admin", "apply", &file]);
    assert!(again.contains("nothing to do"), "{again}");
    bob.ok(&["sync"]);
    carol.ok(&["sync"]);
    assert_eq!(bob.members("ops"), ["alice", "bob", "carol"]);
    assert_eq!(bob.members("lunch"), ["alice", "bob"]);
    let dir = carol.json(&["directory"]);
    let b = dir.iter().find(|e| e["user"] == "bob").unwrap();
    assert_eq!(b["display_name"], "Bob Builder");
    assert_eq!(b["title"], "Site lead");
    let c = dir.iter().find(|e| e["user"] == "carol").unwrap();
    assert!(c["roles"].as_array().unwrap().iter().any(|r| r == "admin"));

    // Edit the file: bob changes title and leaves lunch.
    let edited = FILE
        .replace("title = \"Site lead\"", "title = \"Works manager\"")
        .replace("members = [\"bob\"]", "members = []");
    let file = write(&org, "org2.toml", &edited);
    let plan = alice.ok(&["admin", "apply", &file, "--dry-run"]);
    assert!(
        plan.contains("would update bob's profile") && plan.contains("would remove bob from lunch"),
        "{plan}"
    );
    alice.ok(&["admin", "apply", &file]);
    bob.ok(&["sync"]);
    assert_eq!(bob.json(&["profile", "show"])[0]["title"], "Works manager");
    assert_eq!(bob.group("lunch")["state"], "removed");
    assert!(alice
        .ok(&["admin", "apply", &file])
        .contains("nothing to do"));

    // Members cannot provision.
    let err = bob.fails(&["admin", "apply", &file]);
    assert!(err.contains("no admin role"), "{err}");
}

#[test]
fn apply_of_200_users_and_20_groups_then_a_no_op() {
    let org = Org::new("apply200");
    let mut text = String::new();
    for i in 0..200 {
        writeln!(
            text,
            "[[users]]\nhandle = \"user{i:03}\"\ndisplay_name = \"User {i}\"\ndepartment = \"Dept {}\"\n",
            i % 7
        )
        .unwrap();
    }
    for g in 0..20 {
        let members: Vec<String> = (0..10)
            .map(|k| format!("\"user{:03}\"", g * 10 + k))
            .collect();
        writeln!(
            text,
            "[[groups]]\nname = \"team{g:02}\"\nmembers = [\"alice\", {}]\nmanaged = {}\n",
            members.join(", "),
            g % 2 == 0
        )
        .unwrap();
    }
    let file = write(&org, "big.toml", &text);
    let invites = org.dir.path().join("big-invites.txt").display().to_string();
    let started = std::time::Instant::now();
    let out = org
        .admin
        .ok(&["admin", "apply", &file, "--invites-out", &invites]);
    eprintln!(
        "first apply of 200 users / 20 groups took {:?}",
        started.elapsed()
    );
    assert!(
        out.contains("applied 220 of 220 change(s); 0 failed"),
        "{out}"
    );
    assert_eq!(org.admin.json(&["groups"]).len(), 20);
    let again = org
        .admin
        .ok(&["admin", "apply", &file, "--invites-out", &invites]);
    assert!(again.contains("nothing to do"), "{again}");
    assert_eq!(
        std::fs::read_to_string(&invites).unwrap().lines().count(),
        200
    );
}

#[test]
fn bad_provisioning_files_are_refused_with_the_line() {
    let org = Org::new("applybad");
    let dup = write(
        &org,
        "dup.toml",
        "[[users]]\nhandle = \"bob\"\ndisplay_name = \"B\"\n\n[[users]]\nhandle = \"bob\"\ndisplay_name = \"B2\"\n",
    );
    let err = org.admin.fails(&["admin", "apply", &dup]);
    assert!(
        err.contains("line 6") && err.contains("duplicate user handle"),
        "{err}"
    );
    let broken = write(
        &org,
        "broken.toml",
        "[[users]]\nhandle = \"bob\"\ndisplay_name =\n",
    );
    let err = org.admin.fails(&["admin", "apply", &broken]);
    assert!(err.contains("line 3"), "{err}");
    let unknown = write(
        &org,
        "unknown.toml",
        "[[groups]]\nname = \"g\"\nmembers = [\"zed\"]\n",
    );
    let err = org.admin.fails(&["admin", "apply", &unknown]);
    assert!(err.contains("unknown user \"zed\""), "{err}");
    // The rest of that plan still happened: the group exists.
    assert_eq!(
        org.admin.group("g")["members"],
        serde_json::json!(["alice"])
    );
}
