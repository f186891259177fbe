use muster_e2e::{Device, Org};

#[test]
fn directory_lists_colleagues_from_signed_certificates() {
    let org = Org::new("directory");
    let code = org.admin.ok(&["invite", "bob"]).trim().to_string();
    let bob = Device::new(&org.dir, "bob");
    bob.ok(&[
        "join",
        &code,
        "--display-name",
        "Bob Builder",
        "--title",
        "Site lead",
        "--department",
        "Works",
    ]);
    org.admin.ok(&["approve", "bob"]);
    let entries = bob.json(&["directory"]);
    assert_eq!(entries.len(), 2);
    let alice = entries.iter().find(|e| e["user"] == "alice").unwrap();
    assert!(alice["roles"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r == "admin"));
    let b = entries.iter().find(|e| e["user"] == "bob").unwrap();
    assert_eq!(b["display_name"], "Bob Builder");
    assert_eq!(b["title"], "Site lead");
    assert_eq!(b["department"], "Works");
    assert_eq!(b["roles"], serde_json::json!(["member"]));
}

#[test]
fn audit_log_records_metadata_and_never_content() {
    let org = Org::new("audit");
    let bob = org.enrol("bob");
    org.admin
        .ok(&["group", "create", "ops", "--members", "bob"]);
    org.admin.ok(&["send", "ops", "the launch code is 0000"]);
    let events = org.admin.json(&["admin", "audit"]);
    let has = |event: &str, subject_contains: &str| {
        events.iter().any(|e| {
            e["event"] == event
                && e["subject"]
                    .as_str()
                    .unwrap_or_default()
                    .contains(subject_contains)
        })
    };
    assert!(has("org_registered", "Acme"));
    assert!(has("invite_created", "bob"));
    assert!(has("enrolment_requested", "bob"));
    assert!(has("enrolment_approved", "bob"));
    assert!(has("login", ""));
    assert!(events
        .iter()
        .any(|e| e["event"] == "group_created" && e["group"] == "ops"));
    assert!(events
        .iter()
        .any(|e| e["event"] == "member_added" && e["actor"] == "alice"));

    // Members cannot read it.
    let err = bob.fails(&["admin", "audit"]);
    assert!(err.contains("admin"), "{err}");

    // The operator's view has the same events and no content.
    let out = org.relay.admin(&["audit", "--json", "--limit", "1000"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("enrolment_approved") && text.contains("member_added"));
    assert!(!text.contains("launch code"));
}
