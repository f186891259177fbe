//! `report`: runs every scenario across group sizes and writes BENCHMARKS.md, the plots
//! (SVG) and the raw figures (JSON), so the published figures always come from one run.

use crate::harness::HarnessError;
use crate::plot::{line_chart, Series};
use crate::report::{lookup, Report};
use crate::{biggroup, connections, fanout, ingest, mls, receipts, relay, store};
use std::fmt::Write as _;
use std::path::Path;

/// Group sizes of the relay sweep.
const MEMBERS: [usize; 4] = [10, 50, 100, 1000];
/// Group sizes of the capacity sweep: real clients for every member, all on this machine.
const FANOUT_MEMBERS: [usize; 3] = [10, 50, 100];
/// Hand-written analysis appended to the generated figures.
const NOTES: &str = include_str!("../NOTES.md");

/// Everything one `report` run measured.
struct Run {
    mls: Report,
    relay: Vec<Report>,
    /// One real engine, the rest of the group at the protocol level.
    felt: Report,
    /// The same in a group of 1,000.
    felt_1000: Report,
    /// Every member a real engine.
    fanout: Vec<Report>,
    ingest: Report,
    receipts: Report,
    connections: Report,
    /// A 10,000-member group grown through the relay.
    biggroup: Report,
    store: Report,
}

/// A scenario's report, or one that says why it failed (the rest of the run goes on).
fn attempt(scenario: &'static str, result: Result<Report, HarnessError>) -> Report {
    result.unwrap_or_else(|e| {
        eprintln!("muster-bench report: {scenario} failed: {e}");
        let mut report = Report::new(scenario);
        report.set("failed", e.to_string());
        report
    })
}

fn harness(e: impl std::fmt::Display) -> HarnessError {
    HarnessError::Setup(e.to_string())
}

/// `fanout` with one real engine: 10 senders post `messages` texts of 1 KiB at `rate`.
async fn one_real_engine(members: usize, messages: usize, rate: f64) -> Report {
    eprintln!("muster-bench report: fanout, one real engine in {members}");
    let load = fanout::Load {
        members,
        senders: 10,
        messages,
        size: 1024,
        rate,
        all_real: false,
    };
    attempt("fanout", fanout::run(load).await)
}

async fn measure() -> Result<Run, HarnessError> {
    eprintln!("muster-bench report: mls");
    let mls = mls::run(&[10, 100, 1000, 10000]).map_err(harness)?;
    let mut relay_runs = Vec::new();
    let mut fanout_runs = Vec::new();
    for members in MEMBERS {
        eprintln!("muster-bench report: relay, {members} members");
        let load = relay::Load {
            members,
            senders: 4,
            messages: if members == 100 { 20_000 } else { 2000 },
            size: 1024,
            window: 16,
        };
        // Mosquitto is the yardstick up to 100 members; at 1,000 the figure stands alone.
        let against_mosquitto = members <= 100;
        relay_runs.push(attempt(
            "relay",
            relay::run(load, against_mosquitto, relay::Backend::default()).await,
        ));
    }
    let felt = one_real_engine(100, 2000, 200.0).await;
    let felt_1000 = one_real_engine(1000, 1000, 50.0).await;
    for members in FANOUT_MEMBERS {
        eprintln!("muster-bench report: fanout --all-real, {members} members");
        let load = fanout::Load {
            members,
            senders: 10,
            messages: 200,
            size: 1024,
            rate: 20.0,
            all_real: true,
        };
        fanout_runs.push(attempt("fanout", fanout::run(load).await));
    }
    eprintln!("muster-bench report: ingest");
    let ingest = attempt(
        "ingest",
        ingest::run(ingest::Load {
            members: 100,
            messages: 100_000,
            size: 256,
            senders: 8,
        })
        .await,
    );
    eprintln!("muster-bench report: receipts");
    let receipts = attempt(
        "receipts",
        receipts::run(receipts::Load {
            members: 100,
            texts: 10,
        })
        .await,
    );
    eprintln!("muster-bench report: connections");
    let connections = attempt("connections", connections::run(10_000).await);
    eprintln!("muster-bench report: biggroup");
    let big = biggroup::Load {
        members: 10_000,
        batch: 500,
        large_group_past: None,
    };
    let biggroup = attempt("biggroup", biggroup::run(big).await);
    eprintln!("muster-bench report: store");
    let store = tokio::task::spawn_blocking(|| store::run(1_000_000, false))
        .await
        .map_err(harness)??;
    Ok(Run {
        mls,
        relay: relay_runs,
        felt,
        felt_1000,
        fanout: fanout_runs,
        ingest,
        receipts,
        connections,
        biggroup,
        store,
    })
}

fn series(name: &str, runs: &[Report], x: &str, y: &str) -> Series {
    Series {
        name: name.to_string(),
        points: runs
            .iter()
            .filter_map(|r| Some((r.number(x)?, r.number(y)?)))
            .collect(),
    }
}

fn row_series(name: &str, rows: &[crate::report::Row], x: &str, y: &str) -> Series {
    Series {
        name: name.to_string(),
        points: rows
            .iter()
            .filter_map(|r| Some((lookup(r, x)?, lookup(r, y)?)))
            .collect(),
    }
}

fn plots(run: &Run, dir: &Path) -> Result<(), HarnessError> {
    std::fs::create_dir_all(dir)?;
    line_chart(
        &dir.join("throughput.svg"),
        "Deliveries per second by group size",
        "receiving devices in the group",
        "deliveries per second",
        &[
            series("relay (Muster)", &run.relay, "members", "deliveries_per_s"),
            series(
                "relay (Mosquitto)",
                &run.relay,
                "members",
                "mosquitto_deliveries_per_s",
            ),
            series(
                "fanout, every member a real client (20 msg/s)",
                &run.fanout,
                "members",
                "deliveries_per_s",
            ),
        ],
        false,
    )
    .map_err(harness)?;
    line_chart(
        &dir.join("latency.svg"),
        "Send-to-recipient latency by group size",
        "devices in the group",
        "milliseconds",
        &[
            series("relay p50", &run.relay, "members", "latency_p50_ms"),
            series("relay p99", &run.relay, "members", "latency_p99_ms"),
            series(
                "Mosquitto p99",
                &run.relay,
                "members",
                "mosquitto_latency_p99_ms",
            ),
            series(
                "fanout p50, all real (20 msg/s)",
                &run.fanout,
                "members",
                "latency_p50_ms",
            ),
            series(
                "fanout p99, all real (20 msg/s)",
                &run.fanout,
                "members",
                "latency_p99_ms",
            ),
        ],
        false,
    )
    .map_err(harness)?;
    line_chart(
        &dir.join("mls.svg"),
        "MLS costs by group size (log-log)",
        "members",
        "milliseconds",
        &[
            row_series("create in one commit", &run.mls.rows, "size", "create_ms"),
            row_series("add one (committer)", &run.mls.rows, "size", "add_one_ms"),
            row_series("process an add", &run.mls.rows, "size", "process_add_ms"),
            row_series(
                "process a remove",
                &run.mls.rows,
                "size",
                "process_remove_ms",
            ),
            row_series(
                "join from Welcome",
                &run.mls.rows,
                "size",
                "join_welcome_ms",
            ),
        ],
        true,
    )
    .map_err(harness)?;
    Ok(())
}

/// A Markdown table: one row per report, the given columns.
fn table(out: &mut String, runs: &[Report], columns: &[&str]) {
    let _ = writeln!(out, "| {} |", columns.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(columns.len()));
    for run in runs {
        let cells: Vec<String> = columns
            .iter()
            .map(|c| run.number(c).map(number).unwrap_or_default())
            .collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
}

fn number(value: f64) -> String {
    if value.fract() == 0.0 || value.abs() >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or("unknown".into(), |kib| format!("{} GiB", kib / 1024 / 1024));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_string())
        .unwrap_or_default();
    let mosquitto = std::process::Command::new("/usr/sbin/mosquitto")
        .arg("-h")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "not installed".into());
    format!(
        "- CPU: {cpu}, {cores} cores available\n- Memory: {memory}\n- Linux {kernel}\n- {mosquitto}\n"
    )
}

/// What a report says of `name`: its figure, or why the scenario failed.
fn measured(report: &Report, name: &str) -> Result<f64, String> {
    if let Some((_, why)) = report.figures.iter().find(|(k, _)| k == "failed") {
        return Err(format!("failed: {}", why.as_str().unwrap_or_default()));
    }
    report
        .number(name)
        .ok_or_else(|| format!("no figure {name}"))
}

fn target(out: &mut String, what: &str, goal: &str, measured: String, met: bool) {
    let verdict = if met { "met" } else { "**missed**" };
    let _ = writeln!(out, "| {what} | {goal} | {measured} | {verdict} |");
}

fn markdown(run: &Run) -> String {
    let mut out = String::new();
    out.push_str(
        "# Muster benchmarks\n\n\
         Generated by `cargo run --release -p muster-bench -- report` (about half an hour); \
         do not edit the figures by hand. Everything below comes from one run of that \
         command; the raw figures are in [docs/bench/results.json](docs/bench/results.json). \
         Each scenario can also be run on its own, e.g. \
         `cargo run --release -p muster-bench -- relay --members 100 --against mosquitto --json`.\n\n",
    );
    out.push_str("## Machine\n\n");
    out.push_str(&machine());
    out.push_str(
        "\nThe relay, the simulated devices and Mosquitto all share this machine's cores, \
         so every figure includes the load generator's own cost.\n\n",
    );

    let at = |runs: &[Report], members: usize, name: &str| -> Option<f64> {
        runs.iter()
            .find(|r| r.number("members") == Some(members as f64))
            .and_then(|r| r.number(name))
    };
    out.push_str("## Targets\n\n| scenario | target | measured | |\n|---|---|---|---|\n");
    let ratio = at(&run.relay, 100, "ratio").unwrap_or(0.0);
    target(
        &mut out,
        "`relay --members 100 --size 1024 --against mosquitto`",
        "ratio ≥ 1.5, durable before ack",
        format!("ratio {ratio:.2}"),
        ratio >= 1.5,
    );
    let relay_1000 = at(&run.relay, 1000, "deliveries_per_s");
    target(
        &mut out,
        "`relay --members 1000`",
        "works; deliveries/s reported",
        relay_1000.map_or_else(
            || "failed: see the relay table".into(),
            |d| format!("{d:.0} deliveries/s"),
        ),
        relay_1000.is_some(),
    );
    let felt = measured(&run.felt, "latency_p99_ms");
    target(
        &mut out,
        "`fanout --members 100 --rate 200` (one real engine)",
        "p99 < 20 ms",
        felt.as_ref()
            .map_or_else(|e| e.clone(), |p99| format!("p99 {p99:.0} ms")),
        felt.is_ok_and(|p99| p99 < 20.0),
    );
    let felt_1000 = measured(&run.felt_1000, "latency_p99_ms");
    target(
        &mut out,
        "`fanout --members 1000 --rate 50` (one real engine)",
        "p99 < 50 ms",
        felt_1000
            .as_ref()
            .map_or_else(|e| e.clone(), |p99| format!("p99 {p99:.0} ms")),
        felt_1000.is_ok_and(|p99| p99 < 50.0),
    );
    let ingest = measured(&run.ingest, "messages_per_s");
    target(
        &mut out,
        "`ingest --messages 100000`",
        "≥ 10,000 messages/s into the store",
        ingest
            .as_ref()
            .map_or_else(|e| e.clone(), |rate| format!("{rate:.0} messages/s")),
        ingest.is_ok_and(|rate| rate >= 10_000.0),
    );
    let over = measured(&run.receipts, "deliveries_per_text_over_fanout");
    target(
        &mut out,
        "receipts in a 100-member group, every member reads",
        "relay deliveries ≤ 2x the texts' fan-out",
        over.as_ref()
            .map_or_else(|e| e.clone(), |x| format!("{x:.2}x")),
        over.is_ok_and(|x| x <= 2.0),
    );
    let capacity = at(&run.fanout, 100, "deliveries_per_s");
    target(
        &mut out,
        "`fanout --all-real --members 100 --rate 20`",
        "reported (capacity on 2 cores)",
        capacity.map_or("failed".into(), |c| {
            format!(
                "{c:.0} deliveries/s, p99 {:.0} ms",
                at(&run.fanout, 100, "latency_p99_ms").unwrap_or(f64::NAN)
            )
        }),
        capacity.is_some(),
    );
    let big = (|| -> Result<(f64, f64), String> {
        let (members, seen) = (
            measured(&run.biggroup, "members")?,
            measured(&run.biggroup, "joiner_sees_members")?,
        );
        if members != 10_000.0 || seen != members {
            return Err(format!("{members} members, the joiner saw {seen}"));
        }
        Ok((
            measured(&run.biggroup, "add_one_ms")?,
            measured(&run.biggroup, "remove_one_ms")?,
        ))
    })();
    target(
        &mut out,
        "`biggroup --members 10000` through the relay",
        "works; add/remove of one member < 1 s for the committer",
        big.as_ref().map_or_else(
            |e| e.clone(),
            |(add, remove)| format!("works; add {add:.0} ms, remove {remove:.0} ms"),
        ),
        big.is_ok_and(|(add, remove)| add < 1000.0 && remove < 1000.0),
    );
    let mls_row = |size: f64| {
        run.mls
            .rows
            .iter()
            .find(|r| lookup(r, "size") == Some(size))
    };
    let process_1000 = mls_row(1000.0)
        .map(|r| {
            lookup(r, "process_add_ms")
                .unwrap_or(f64::MAX)
                .max(lookup(r, "process_remove_ms").unwrap_or(f64::MAX))
        })
        .unwrap_or(f64::MAX);
    target(
        &mut out,
        "`mls`, 1,000 members",
        "processing an add or remove < 50 ms",
        format!("{process_1000:.1} ms"),
        process_1000 < 50.0,
    );
    let works_10000 = mls_row(10000.0)
        .and_then(|r| lookup(r, "join_welcome_ms"))
        .is_some();
    target(
        &mut out,
        "`mls`, 10,000 members",
        "works end to end",
        if works_10000 {
            "created, added, removed, joined, messaged".into()
        } else {
            "not run".into()
        },
        works_10000,
    );
    let kib = measured(&run.connections, "kib_per_connection");
    target(
        &mut out,
        "`connections --devices 10000`",
        "< 100 KiB per idle connection",
        kib.as_ref()
            .map_or_else(|e| e.clone(), |kib| format!("{kib:.1} KiB")),
        kib.is_ok_and(|kib| kib < 100.0),
    );
    let latest = run.store.number("latest50_ms").unwrap_or(f64::MAX);
    let search = run.store.number("search_ms").unwrap_or(f64::MAX);
    target(
        &mut out,
        "`store --messages 1000000`",
        "latest 50 < 5 ms, search < 50 ms",
        format!("latest 50 {latest:.2} ms, search {search:.2} ms"),
        latest < 5.0 && search < 50.0,
    );

    out.push_str("\n## Relay alone, against Mosquitto\n\n");
    out.push_str(
        "4 senders post 2,000 pre-encrypted MLS messages (20,000 for 100 members; 1 KiB of \
         text each) with 16 \
         requests in flight each; every receiving device is connected, takes the messages \
         the relay pushes (fetching when woken instead) and acknowledges them together. Our relay commits each message to SQLite (WAL, \
         `synchronous=FULL`) before it answers the sender. Mosquitto gets the same pattern \
         over MQTT: QoS 1, persistent sessions (`clean_session=false`), persistence on, the \
         same payload size and 16 messages in flight; note that Mosquitto acknowledges a \
         QoS 1 publish from memory and writes its persistence file only periodically.\n\n",
    );
    table(
        &mut out,
        &run.relay,
        &[
            "members",
            "payload_bytes",
            "deliveries_per_s",
            "latency_p50_ms",
            "latency_p99_ms",
            "mosquitto_deliveries_per_s",
            "mosquitto_latency_p50_ms",
            "mosquitto_latency_p99_ms",
            "ratio",
        ],
    );
    out.push_str("\n![throughput](docs/bench/throughput.svg)\n\n");

    out.push_str("## Fan-out as one member feels it\n\n");
    out.push_str(
        "One real client engine (its own SQLite store with `synchronous=FULL`, real MLS, \
         receipts) in a group whose other members are protocol-level devices on the same \
         relay (they authenticate, take pushed messages, fetch when woken and acknowledge \
         together, as the real client does); 10 senders post \
         texts of 1 KiB, encrypted beforehand by real engines, at the offered rate. Latency \
         runs from the send request to the message in that one device's store.\n\n",
    );
    table(
        &mut out,
        &[run.felt.clone(), run.felt_1000.clone()],
        &[
            "members",
            "messages",
            "offered_rate_per_s",
            "received",
            "latency_p50_ms",
            "latency_p99_ms",
            "others_fetched",
        ],
    );
    out.push_str("\n## A device catching up\n\n");
    out.push_str(
        "`ingest`: a 100-member group; while one device is away, 8 senders post 100,000 texts \
         of 256 bytes; then it connects and syncs until all are in its store.\n\n",
    );
    table(
        &mut out,
        std::slice::from_ref(&run.ingest),
        &[
            "members",
            "messages",
            "size",
            "received",
            "elapsed_ms",
            "messages_per_s",
        ],
    );
    out.push_str("\n## Receipts\n\n");
    out.push_str(
        "`receipts`: a group of 100 real engines; the admin posts 10 texts one after another; \
         every other member fetches each, reads it and syncs, then the author syncs. A \
         receipt goes to the authors of what it covers (and the group's archive), not to \
         the whole group.\n\n",
    );
    table(
        &mut out,
        std::slice::from_ref(&run.receipts),
        &[
            "members",
            "texts",
            "text_deliveries_per_text",
            "receipt_deliveries_per_text",
            "receipts_sent_per_text",
            "deliveries_per_text_over_fanout",
            "deliveries_per_text_if_receipts_reached_everyone",
        ],
    );
    out.push_str("\n## Capacity: every member a real client\n\n");
    out.push_str(
        "`fanout --all-real`: every member is a real client engine on its own thread; 10 \
         senders post 200 texts of 1 KiB at 20 messages/s in total. On one 2-core machine \
         this measures how many members' decryption and store writes the cores sustain, \
         not what one user feels.\n\n",
    );
    table(
        &mut out,
        &run.fanout,
        &[
            "members",
            "messages",
            "offered_rate_per_s",
            "deliveries",
            "deliveries_per_s",
            "latency_p50_ms",
            "latency_p99_ms",
        ],
    );
    out.push_str("\n![latency](docs/bench/latency.svg)\n\n");

    out.push_str("## MLS operations\n\n");
    out.push_str(
        "openmls with the client's ciphersuite (X25519, AES-128-GCM, SHA-256, Ed25519) and \
         wire format, in memory. `create` adds every member in one commit; `process` is what \
         every other member pays for an incoming commit; message figures are per 1 KiB \
         message over 200 messages.\n\n",
    );
    let columns = [
        "size",
        "create_ms",
        "welcome_bytes",
        "join_welcome_ms",
        "add_one_ms",
        "add_commit_bytes",
        "process_add_ms",
        "remove_one_ms",
        "process_remove_ms",
        "encrypt_1k_us",
        "decrypt_1k_us",
    ];
    let _ = writeln!(out, "| {} |", columns.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(columns.len()));
    for row in &run.mls.rows {
        let cells: Vec<String> = columns
            .iter()
            .map(|c| lookup(row, c).map(number).unwrap_or_default())
            .collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out.push_str("\n![mls](docs/bench/mls.svg)\n\n");

    out.push_str("## Idle connections\n\n");
    table(
        &mut out,
        std::slice::from_ref(&run.connections),
        &[
            "devices",
            "connected",
            "relay_rss_before_bytes",
            "relay_rss_after_bytes",
            "kib_per_connection",
        ],
    );
    out.push_str(
        "\nEvery device is enrolled and approved with its own key and certificate, connects \
         over QUIC, authenticates (challenge signed by its device key) and makes one request; \
         the figure is the relay's resident memory growth divided by the devices.\n\n",
    );

    out.push_str("## Groups of 10,000 through the relay\n\n");
    table(
        &mut out,
        std::slice::from_ref(&run.biggroup),
        &[
            "members",
            "batch",
            "grow_ms",
            "last_batch_ms",
            "batch_commit_bytes",
            "add_one_ms",
            "add_commit_bytes",
            "add_welcome_bytes",
            "tree_bytes",
            "join_ms",
            "remove_one_ms",
            "remove_commit_bytes",
            "message_send_ms",
            "message_to_joiner_ms",
        ],
    );
    out.push_str(
        "\nA real client engine creates the group and adds protocol-level devices (enrolled \
         and certified, one KeyPackage each) 500 per commit; then it adds a second real \
         engine, which fetches the ratchet tree from the relay, removes a member and sends \
         one message, which the new member receives. Times are the committer's, from the \
         call to the relay's answer and the merge; bytes are what the relay stored.\n\n",
    );

    out.push_str("## Client store\n\n");
    table(
        &mut out,
        std::slice::from_ref(&run.store),
        &[
            "messages",
            "store_bytes",
            "open_ms",
            "latest50_ms",
            "search_ms",
            "search_common_prefix_matches",
            "search_rare_ms",
            "search_two_words_ms",
            "search_in_conversation_ms",
        ],
    );
    out.push_str(
        "\nA real client store (the engine's schema and full-text index) filled with generated \
         text over 10 conversations (half of it in one); words follow a Zipf-like \
         distribution. Times are medians through the engine's API with a warm page cache.\n\n",
    );
    out.push_str(NOTES);
    out
}

fn json(run: &Run) -> serde_json::Value {
    serde_json::json!({
        "mls": run.mls.to_json(),
        "relay": run.relay.iter().map(Report::to_json).collect::<Vec<_>>(),
        "fanout": [run.felt.to_json(), run.felt_1000.to_json()],
        "fanout_all_real": run.fanout.iter().map(Report::to_json).collect::<Vec<_>>(),
        "ingest": run.ingest.to_json(),
        "receipts": run.receipts.to_json(),
        "connections": run.connections.to_json(),
        "biggroup": run.biggroup.to_json(),
        "store": run.store.to_json(),
    })
}

/// Runs everything and writes `out` (BENCHMARKS.md) with plots and raw figures beside it
/// under docs/bench/.
pub async fn run(out: &Path) -> Result<Report, HarnessError> {
    let run = measure().await?;
    let root = out.parent().unwrap_or(Path::new("."));
    let dir = root.join("docs").join("bench");
    plots(&run, &dir)?;
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&json(&run)).map_err(harness)?,
    )?;
    std::fs::write(out, markdown(&run))?;
    let mut report = Report::new("report");
    report.set("written", out.display().to_string());
    report.set("plots", dir.display().to_string());
    Ok(report)
}
