//! Every scenario runs at tiny sizes and prints the figures it promises (correctness
//! only: no figure is held to a speed here).

use serde_json::Value;
use std::process::Command;

fn bench(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_muster-bench"))
        .args(args)
        .arg("--json")
        .output()
        .expect("run muster-bench");
    assert!(
        out.status.success(),
        "muster-bench {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "--json prints one object: {stdout}");
    serde_json::from_str(lines[0]).expect("output is JSON")
}

fn number(v: &Value, name: &str) -> f64 {
    v[name]
        .as_f64()
        .unwrap_or_else(|| panic!("figure {name} is missing or not a number in {v}"))
}

fn mosquitto_installed() -> bool {
    ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .iter()
        .any(|p| std::path::Path::new(p).exists())
}

#[test]
fn relay_scenario_delivers_every_message_to_every_device_in_both_systems() {
    let mut args = vec![
        "relay",
        "--members",
        "3",
        "--senders",
        "2",
        "--messages",
        "7",
        "--size",
        "100",
    ];
    if mosquitto_installed() {
        args.extend(["--against", "mosquitto"]);
    } else {
        eprintln!("SKIPPED the Mosquitto half: mosquitto is not installed");
    }
    let v = bench(&args);
    assert_eq!(v["scenario"], "relay");
    assert_eq!(number(&v, "deliveries"), 21.0, "7 messages x 3 devices");
    assert!(number(&v, "deliveries_per_s") > 0.0);
    assert!(number(&v, "latency_p99_ms") >= number(&v, "latency_p50_ms"));
    assert!(
        number(&v, "payload_bytes") > 100.0,
        "encrypted is larger than the text"
    );
    assert_eq!(v["durable_before_ack"], true);
    if mosquitto_installed() {
        assert_eq!(number(&v, "mosquitto_deliveries"), 21.0);
        assert!(number(&v, "mosquitto_deliveries_per_s") > 0.0);
        let ratio = number(&v, "ratio");
        let expected = number(&v, "deliveries_per_s") / number(&v, "mosquitto_deliveries_per_s");
        assert!((ratio - expected).abs() < 0.01 + expected * 0.01);
    }
}

#[test]
fn fanout_scenario_writes_every_message_into_the_real_members_store() {
    let v = bench(&[
        "fanout",
        "--members",
        "5",
        "--senders",
        "2",
        "--messages",
        "6",
        "--size",
        "64",
        "--rate",
        "50",
    ]);
    assert_eq!(v["scenario"], "fanout");
    assert_eq!(
        number(&v, "received"),
        6.0,
        "every message in the one real store"
    );
    // The two protocol-level members fetch every message too.
    assert_eq!(number(&v, "others_fetched"), 12.0);
    for name in ["latency_p50_ms", "latency_p99_ms"] {
        assert!(number(&v, name) > 0.0, "{name}");
    }
}

#[test]
fn fanout_all_real_writes_every_message_into_every_other_members_store() {
    let v = bench(&[
        "fanout",
        "--all-real",
        "--members",
        "3",
        "--senders",
        "2",
        "--messages",
        "6",
        "--size",
        "64",
        "--rate",
        "50",
    ]);
    assert_eq!(v["scenario"], "fanout");
    // Each message reaches the two members who did not send it.
    assert_eq!(number(&v, "deliveries"), 12.0);
    for name in ["deliveries_per_s", "latency_p50_ms", "latency_p99_ms"] {
        assert!(number(&v, name) > 0.0, "{name}");
    }
}

#[test]
fn ingest_scenario_brings_the_whole_backlog_into_the_store() {
    let v = bench(&[
        "ingest",
        "--members",
        "5",
        "--messages",
        "40",
        "--senders",
        "2",
    ]);
    assert_eq!(number(&v, "received"), 40.0);
    assert!(number(&v, "messages_per_s") > 0.0);
}

#[test]
fn receipts_scenario_counts_text_and_receipt_deliveries() {
    let v = bench(&["receipts", "--members", "3", "--texts", "2"]);
    assert_eq!(number(&v, "text_deliveries_per_text"), 2.0, "two readers");
    // Each reader's receipts go to the author alone.
    assert_eq!(
        number(&v, "receipt_deliveries_per_text"),
        number(&v, "receipts_sent_per_text")
    );
    assert!(
        number(&v, "receipts_sent_per_text") >= 2.0,
        "each reader reads"
    );
}

#[test]
fn mls_scenario_reports_every_operation_for_each_size() {
    let v = bench(&["mls", "--sizes", "2,5"]);
    let sizes = v["sizes"].as_array().expect("a row per size");
    assert_eq!(sizes.len(), 2);
    for (row, size) in sizes.iter().zip([2.0, 5.0]) {
        assert_eq!(number(row, "size"), size);
        for name in [
            "create_ms",
            "add_one_ms",
            "remove_one_ms",
            "process_add_ms",
            "process_remove_ms",
            "join_welcome_ms",
            "encrypt_1k_us",
            "decrypt_1k_us",
            "welcome_bytes",
            "add_commit_bytes",
        ] {
            assert!(number(row, name) > 0.0, "{name} for size {size}");
        }
    }
}

#[test]
fn connections_scenario_keeps_every_device_connected() {
    let v = bench(&["connections", "--devices", "6"]);
    assert_eq!(number(&v, "connected"), 6.0);
    assert!(number(&v, "relay_rss_after_bytes") > 0.0);
    number(&v, "kib_per_connection");
}

#[test]
fn store_scenario_reads_and_searches_a_filled_store() {
    let v = bench(&["store", "--messages", "600"]);
    assert_eq!(number(&v, "messages"), 600.0);
    let matches = number(&v, "search_common_prefix_matches");
    assert!(matches > 0.0, "the common word occurs");
    assert_eq!(number(&v, "search_common_results"), matches.min(50.0));
    for name in ["open_ms", "latest50_ms", "search_ms", "search_rare_ms"] {
        assert!(number(&v, name) > 0.0, "{name}");
    }
}

#[test]
fn store_scenario_runs_on_an_encrypted_store_too() {
    let v = bench(&["store", "--messages", "600", "--encrypted"]);
    assert_eq!(v["encrypted"], serde_json::Value::Bool(true));
    assert!(number(&v, "search_common_prefix_matches") > 0.0);
    assert!(number(&v, "open_ms") > 0.0);
}

#[test]
fn biggroup_scenario_grows_the_group_and_the_joiner_fetches_the_tree_the_welcome_leaves_out() {
    // Handled as large past 5 members: Welcomes without the tree, adds without a path.
    let v = bench(&[
        "biggroup",
        "--members",
        "30",
        "--batch",
        "10",
        "--large-group-past",
        "5",
    ]);
    assert_eq!(number(&v, "members"), 30.0);
    // Added one, removed one: the joiner sees the whole group.
    assert_eq!(number(&v, "joiner_sees_members"), 30.0);
    let tree = number(&v, "tree_bytes");
    assert!(tree > 0.0);
    assert!(number(&v, "add_welcome_bytes") < tree, "{v}");
    assert!(number(&v, "batch_welcome_bytes") < tree, "{v}");
    assert!(
        number(&v, "add_commit_bytes") < number(&v, "remove_commit_bytes"),
        "an add renews no path, a remove does: {v}"
    );
    for name in [
        "add_one_ms",
        "join_ms",
        "remove_one_ms",
        "message_to_joiner_ms",
    ] {
        assert!(number(&v, name) > 0.0, "{name}");
    }

    // A small group's Welcome carries the tree.
    let v = bench(&["biggroup", "--members", "8", "--batch", "4"]);
    assert_eq!(number(&v, "joiner_sees_members"), 8.0);
    assert!(
        number(&v, "add_welcome_bytes") > number(&v, "tree_bytes"),
        "{v}"
    );
}
