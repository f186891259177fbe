//! `report`: runs every scenario across group sizes and writes BENCHMARKS.md, the plots
//! (SVG) and the raw figures (JSON), so the published figures always come from one run.

use crate::harness::HarnessError;
use crate::plot::{line_chart, Series};
use crate::report::{lookup, Report};
use crate::{connections, fanout, mls, relay, store};
use std::fmt::Write as _;
use std::path::Path;

/// Group sizes of the relay sweep.
const MEMBERS: [usize; 3] = [10, 50, 100];
/// Group sizes of the fan-out sweep: full clients for every member, all on this machine.
const FANOUT_MEMBERS: [usize; 4] = [10, 25, 50, 100];
/// Hand-written analysis appended to the generated figures.
const NOTES: &str = include_str!("../NOTES.md");

/// Everything one `report` run measured.
struct Run {
    mls: Report,
    relay: Vec<Report>,
    fanout: Vec<Report>,
    connections: Report,
    store: Report,
}

fn harness(e: impl std::fmt::Display) -> HarnessError {
    HarnessError::Setup(e.to_string())
}

async fn measure() -> Result<Run, HarnessError> {
    eprintln!("muster-bench report: mls");
    let mls = mls::run(&[10, 100, 1000, 10000]).map_err(harness)?;
    let mut relay_runs = Vec::new();
    let mut fanout_runs = Vec::new();
    for members in MEMBERS {
        eprintln!("muster-bench report: relay, {members} members");
        relay_runs.push(
            relay::run(
                relay::Load {
                    members,
                    senders: 4,
                    messages: 2000,
                    size: 1024,
                    window: 16,
                },
                true,
            )
            .await?,
        );
    }
    for members in FANOUT_MEMBERS {
        eprintln!("muster-bench report: fanout, {members} members");
        fanout_runs.push(
            fanout::run(fanout::Load {
                members,
                senders: 10,
                messages: 400,
                size: 1024,
                rate: 200.0,
                all_real: true,
            })
            .await?,
        );
    }
    eprintln!("muster-bench report: connections");
    let connections = connections::run(10_000).await?;
    eprintln!("muster-bench report: store");
    let store = tokio::task::spawn_blocking(|| store::run(1_000_000))
        .await
        .map_err(harness)??;
    Ok(Run {
        mls,
        relay: relay_runs,
        fanout: fanout_runs,
        connections,
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
                "fanout, real clients",
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
                "fanout p50 (200 msg/s)",
                &run.fanout,
                "members",
                "latency_p50_ms",
            ),
            series(
                "fanout p99 (200 msg/s)",
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

fn target(out: &mut String, what: &str, goal: &str, measured: String, met: bool) {
    let verdict = if met { "met" } else { "**missed**" };
    let _ = writeln!(out, "| {what} | {goal} | {measured} | {verdict} |");
}

fn markdown(run: &Run) -> String {
    let mut out = String::new();
    out.push_str(
        "# Muster benchmarks\n\n\
         Generated by `cargo run --release -p muster-bench -- report` (about ten minutes); \
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
    let p99 = at(&run.fanout, 100, "latency_p99_ms");
    target(
        &mut out,
        "`fanout --members 100` at 200 messages/s",
        "p99 < 10 ms",
        match p99 {
            Some(p99) => format!("p99 {p99:.0} ms"),
            None => "not run".into(),
        },
        p99.is_some_and(|p99| p99 < 10.0),
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
    let kib = run
        .connections
        .number("kib_per_connection")
        .unwrap_or(f64::MAX);
    target(
        &mut out,
        "`connections --devices 10000`",
        "< 100 KiB per idle connection",
        format!("{kib:.1} KiB"),
        kib < 100.0,
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
        "4 senders post 2,000 pre-encrypted MLS messages (1 KiB of text each) with 16 \
         requests in flight each; every receiving device is connected, fetches on each \
         wake-up and acknowledges. Our relay commits each message to SQLite (WAL, \
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

    out.push_str("## Fan-out with real clients\n\n");
    out.push_str(
        "A group of real client engines (each its own SQLite store with `synchronous=FULL`, \
         real MLS) on one relay; 10 senders post 400 texts of 1 KiB at 200 messages/s in \
         total; every member runs on its own thread and syncs on each wake-up as `muster \
         chat` does (with delivery receipts). Latency runs from the send call to the sync \
         that wrote the message into the recipient's store.\n\n",
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
        "fanout": run.fanout.iter().map(Report::to_json).collect::<Vec<_>>(),
        "connections": run.connections.to_json(),
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
