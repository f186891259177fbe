//! `muster-bench SCENARIO [options] [--json]`: measures Muster and prints a table, or one
//! JSON object of figures.

mod biggroup;
mod connections;
mod fanout;
mod fanout_one;
mod harness;
mod ingest;
mod mls;
mod mosquitto;
mod plot;
mod protocol;
mod publish;
mod receipts;
mod relay;
mod report;
mod store;
mod wire_org;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "muster-bench", about = "Muster benchmarks")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    /// Print one JSON object instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum Scenario {
    /// Cost of MLS operations by group size: create in one commit, add, remove, process
    /// a commit, join from a Welcome, encrypt and decrypt 1 KiB.
    Mls {
        /// Group sizes, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
        sizes: Vec<usize>,
    },
    /// One group: senders post at a set rate and one real client engine syncs on each
    /// wake-up while the other members fetch at the protocol level; that device's
    /// send-to-store latency. With --all-real every member is a real engine (capacity).
    Fanout {
        #[arg(long, default_value_t = 100)]
        members: usize,
        #[arg(long, default_value_t = 10)]
        senders: usize,
        /// Messages sent in total.
        #[arg(long, default_value_t = 2000)]
        messages: usize,
        /// Bytes of text per message.
        #[arg(long, default_value_t = 1024)]
        size: usize,
        /// Messages per second from all senders together (0: as fast as they can).
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        /// Every member a real client engine with its own store (capacity on this machine).
        #[arg(long)]
        all_real: bool,
        /// The real clients' stores encrypted (SQLCipher), as every device's is.
        #[arg(long)]
        encrypted: bool,
    },
    /// The relay alone: pre-encrypted messages stored durably and forwarded to connected
    /// devices; optionally the same load through a local Mosquitto.
    Relay {
        /// Receiving devices in the group, all connected.
        #[arg(long, default_value_t = 100)]
        members: usize,
        /// Sending devices (group members too, not counted as receivers).
        #[arg(long, default_value_t = 4)]
        senders: usize,
        /// Messages sent in total.
        #[arg(long, default_value_t = 2000)]
        messages: usize,
        /// Bytes of text per message before encryption.
        #[arg(long, default_value_t = 1024)]
        size: usize,
        /// Requests each sender keeps in flight.
        #[arg(long, default_value_t = 16)]
        window: usize,
        /// Also run the load through a local Mosquitto broker: `mosquitto`.
        #[arg(long, value_name = "BROKER", value_parser = ["mosquitto"])]
        against: Option<String>,
        /// Where the relays keep their state: `sqlite` (one relay) or `postgres` (the
        /// database given with --database, shared by --relays relays).
        #[arg(long, default_value = "sqlite", value_parser = ["sqlite", "postgres"])]
        backend: String,
        /// The PostgreSQL server for --backend postgres (its schema muster_bench is
        /// emptied and used).
        #[arg(
            long,
            value_name = "URL",
            env = "MUSTER_DATABASE",
            hide_env_values = true
        )]
        database: Option<String>,
        /// Relays on the shared database; devices are spread over them.
        #[arg(long, default_value_t = 1)]
        relays: usize,
    },
    /// One real client engine catching up a backlog in a group: messages per second into
    /// its store.
    Ingest {
        #[arg(long, default_value_t = 100)]
        members: usize,
        #[arg(long, default_value_t = 100_000)]
        messages: usize,
        /// Bytes of text per message.
        #[arg(long, default_value_t = 256)]
        size: usize,
        /// Devices whose messages make up the backlog.
        #[arg(long, default_value_t = 8)]
        senders: usize,
    },
    /// Receipts in a group where every member reads every text: relay deliveries per text.
    Receipts {
        #[arg(long, default_value_t = 100)]
        members: usize,
        #[arg(long, default_value_t = 10)]
        texts: usize,
    },
    /// A client store with many messages: open, latest 50 of a conversation, search.
    Store {
        #[arg(long, default_value_t = 1_000_000)]
        messages: usize,
        /// The store encrypted with SQLCipher under a random key.
        #[arg(long)]
        encrypted: bool,
    },
    /// Runs every scenario across group sizes and writes BENCHMARKS.md with plots under
    /// docs/bench/ (about ten minutes).
    Report {
        /// Where to write the Markdown; plots and raw figures go to docs/bench/ beside it.
        #[arg(long, default_value = "BENCHMARKS.md")]
        out: std::path::PathBuf,
    },
    /// Authenticated idle devices connected at once: relay memory per connection.
    Connections {
        #[arg(long, default_value_t = 1000)]
        devices: usize,
    },
    /// A group grown to `members` through the relay, then one added, one removed and one
    /// message to all.
    Biggroup {
        #[arg(long, default_value_t = 10_000)]
        members: usize,
        #[arg(long, default_value_t = 500)]
        batch: usize,
        /// Group size past which the committer handles the group as large: Welcomes
        /// without the ratchet tree, adds without a path update (the client's default
        /// when not given).
        #[arg(long)]
        large_group_past: Option<usize>,
    },
}

fn block_on(
    scenario: impl std::future::Future<Output = Result<report::Report, harness::HarnessError>>,
) -> Result<report::Report, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?
        .block_on(scenario)
        .map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // MUSTER_BENCH_LOG (a tracing filter) shows the bench's own side, QUIC included.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("MUSTER_BENCH_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .init();
    }
    let result = match cli.scenario {
        Scenario::Mls { sizes } => mls::run(&sizes).map_err(|e| e.to_string()),
        Scenario::Relay {
            members,
            senders,
            messages,
            size,
            window,
            against,
            backend,
            database,
            relays,
        } => {
            let load = relay::Load {
                members,
                senders,
                messages,
                size,
                window,
            };
            let backend = match (backend.as_str(), database) {
                ("postgres", Some(url)) => relay::Backend::postgres(&url, relays),
                ("postgres", None) => Err(harness::HarnessError::Setup(
                    "--backend postgres needs --database URL (or MUSTER_DATABASE)".into(),
                )),
                (_, _) if relays > 1 => Err(harness::HarnessError::Setup(
                    "several relays share a PostgreSQL database: add --backend postgres".into(),
                )),
                _ => Ok(relay::Backend::default()),
            };
            match backend {
                Ok(backend) => block_on(relay::run(load, against.is_some(), backend)),
                Err(e) => Err(e.to_string()),
            }
        }
        Scenario::Fanout {
            members,
            senders,
            messages,
            size,
            rate,
            all_real,
            encrypted,
        } => {
            harness::ENCRYPTED_STORES.store(encrypted, std::sync::atomic::Ordering::Relaxed);
            block_on(fanout::run(fanout::Load {
                members,
                senders,
                messages,
                size,
                rate,
                all_real,
            }))
        }
        Scenario::Ingest {
            members,
            messages,
            size,
            senders,
        } => block_on(ingest::run(ingest::Load {
            members,
            messages,
            size,
            senders,
        })),
        Scenario::Receipts { members, texts } => {
            block_on(receipts::run(receipts::Load { members, texts }))
        }
        Scenario::Report { out } => block_on(publish::run(&out)),
        Scenario::Store {
            messages,
            encrypted,
        } => store::run(messages, encrypted).map_err(|e| e.to_string()),
        Scenario::Connections { devices } => block_on(connections::run(devices)),
        Scenario::Biggroup {
            members,
            batch,
            large_group_past,
        } => block_on(biggroup::run(biggroup::Load {
            members,
            batch,
            large_group_past,
        })),
    };
    match result {
        Ok(report) => {
            report.print(cli.json);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("muster-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
