//! Attachments: large files round-trip, and oversized or tampered ones are refused.

use muster_e2e::{dir_contains, Org};

fn pseudo_random_file(path: &std::path::Path, size: usize, marker: &[u8]) -> Vec<u8> {
    let mut data = Vec::with_capacity(size);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while data.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(size);
    data[1000..1000 + marker.len()].copy_from_slice(marker);
    std::fs::write(path, &data).unwrap();
    data
}

#[test]
fn a_20_mib_attachment_round_trips_bit_exactly_and_the_blob_is_deleted_after() {
    let org = Org::new("attach");
    let alice = &org.admin;
    let bob = org.enrol("bob");
    let carol = org.enrol("carol");
    alice.ok(&["group", "create", "ops", "--members", "bob,carol"]);
    bob.ok(&["sync"]);
    carol.ok(&["sync"]);
    let src = org.dir.path().join("site-plan.pdf");
    let marker = b"ATTACHMENT-PLAINTEXT-MARKER";
    let original = pseudo_random_file(&src, 20 * 1024 * 1024, marker);
    let out = alice.ok(&[
        "send",
        "ops",
        "today's plan",
        "--file",
        src.to_str().unwrap(),
    ]);
    let id = out.trim().strip_prefix("sent ").unwrap().to_string();
    // The relay holds only ciphertext.
    assert!(!dir_contains(&org.relay.data, marker));
    assert!(!dir_contains(&org.relay.data, b"site-plan"));

    bob.ok(&["sync"]);
    let msgs = bob.json(&["read", "ops"]);
    let m = msgs.iter().find(|m| m["id"] == id.as_str()).unwrap();
    assert_eq!(m["kind"], "attachment");
    assert_eq!(m["attachment"]["name"], "site-plan.pdf");
    assert_eq!(m["attachment"]["mime"], "application/pdf");
    assert_eq!(m["attachment"]["size"], 20 * 1024 * 1024);
    assert_eq!(m["text"], "today's plan");
    let saved = org.dir.path().join("bob-copy.pdf");
    bob.ok(&["fetch", &id[..10], "--out", saved.to_str().unwrap()]);
    assert!(std::fs::read(&saved).unwrap() == original, "bit-exact");
    let err = bob.fails(&["fetch", &id, "--out", saved.to_str().unwrap()]);
    assert!(err.contains("already exists"), "{err}");

    carol.ok(&["sync"]);
    let carol_copy = org.dir.path().join("carol-copy.pdf");
    carol.ok(&["fetch", &id, "--out", carol_copy.to_str().unwrap()]);
    assert!(std::fs::read(&carol_copy).unwrap() == original);
    // Everyone fetched it: the relay deleted the blob.
    let blobs = org.relay.data.join("blobs");
    assert_eq!(
        std::fs::read_dir(&blobs).unwrap().count(),
        0,
        "blob deleted"
    );
    let stats = String::from_utf8_lossy(&org.relay.admin(&["stats"]).stdout).to_string();
    assert!(stats.contains("attachment bytes: 0"), "{stats}");
}

#[test]
fn oversized_and_tampered_attachments_are_refused() {
    let org = Org::new("attachbad");
    let alice = &org.admin;
    let bob = org.enrol("bob");
    alice.ok(&["group", "create", "ops", "--members", "bob"]);
    bob.ok(&["sync"]);

    let big = org.dir.path().join("huge.bin");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(100 * 1024 * 1024 + 1)
        .unwrap();
    let err = alice.fails(&["send", "ops", "--file", big.to_str().unwrap()]);
    assert!(err.contains("limited to 100 MiB"), "{err}");

    let src = org.dir.path().join("report.txt");
    pseudo_random_file(&src, 3 * 1024 * 1024 + 5, b"REPORT");
    let out = alice.ok(&["send", "ops", "--file", src.to_str().unwrap()]);
    let id = out.trim().strip_prefix("sent ").unwrap().to_string();
    // Someone with access to the relay's disk flips a byte of the stored ciphertext.
    let blobs = org.relay.data.join("blobs");
    let blob = std::fs::read_dir(&blobs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&blob).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&blob, bytes).unwrap();
    bob.ok(&["sync"]);
    let target = org.dir.path().join("bob-report.txt");
    let err = bob.fails(&["fetch", &id, "--out", target.to_str().unwrap()]);
    assert!(err.contains("altered"), "{err}");
    assert!(!target.exists(), "nothing half-written is left");
    let err = bob.fails(&["fetch", "0123456789", "--out", "x"]);
    assert!(err.contains("no message"), "{err}");
}
