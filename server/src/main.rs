//! `muster-relay`: the relay binary. Parses arguments, opens the data directory and
//! runs the QUIC server around [`muster_relay_core::Relay`].

mod cluster;
mod pushes;
mod server;
mod worker;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "muster-relay",
    version,
    about = "Muster relay: stores and forwards end-to-end encrypted group messages over QUIC",
    long_about = "Muster relay: stores and forwards MLS-encrypted group messages over QUIC.\n\
        It never sees message content; it validates handshakes, orders commits per group\n\
        and keeps messages until every recipient device has acknowledged them."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay. The first start creates DATA with its database and TLS certificate.
    Serve {
        /// Data directory (SQLite database, TLS certificate and key).
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// A PostgreSQL database shared by several relays (postgres://USER@HOST/DB)
        /// instead of the SQLite file in DATA; from MUSTER_DATABASE when not given, which
        /// keeps a password out of the process list. A database on another machine is
        /// reached only over TLS: add sslmode=require and set PGSSLROOTCERT to the PEM
        /// file of the CA that signed the server's certificate.
        #[arg(
            long,
            value_name = "URL",
            env = "MUSTER_DATABASE",
            hide_env_values = true
        )]
        database: Option<String>,
        /// Where encrypted attachments are kept [default: DATA/blobs]; relays sharing a
        /// database must all reach the same directory.
        #[arg(long, value_name = "DIR")]
        blobs: Option<PathBuf>,
        /// UDP address to listen on.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:4433")]
        listen: std::net::SocketAddr,
        /// Encrypted attachment storage one device may use at once, in MiB.
        #[arg(long, value_name = "MIB", default_value_t = 1024)]
        blob_quota_mib: u64,
        /// Message bytes one device may have waiting for recipients who have not fetched
        /// them yet, in MiB.
        #[arg(long, value_name = "MIB", default_value_t = 256)]
        queue_quota_mib: u64,
        /// Requests one device may make per second (bursts of ten times that).
        #[arg(long, value_name = "N", default_value_t = 200.0)]
        requests_per_sec: f64,
        /// Messages, commits and attachment chunks one device may store per second
        /// (bursts of ten times that).
        #[arg(long, value_name = "N", default_value_t = 50.0)]
        posts_per_sec: f64,
        /// How long, in seconds, a message waits for devices that have not fetched it
        /// (checked at start and every ten minutes); a device away longer rejoins its
        /// groups without what it missed.
        #[arg(long, value_name = "SECS", default_value_t = muster_proto::MESSAGE_RETENTION_SECS)]
        message_retention_secs: u64,
        /// Connections from one source address that may be authenticating at once.
        #[arg(long, value_name = "N", default_value_t = 32)]
        unauthenticated_per_address: usize,
        /// Requests before authentication (hello, proof, enrolment) one source address
        /// may make per second (bursts of twice that); ten times as many in all.
        #[arg(long, value_name = "N", default_value_t = 100.0)]
        anonymous_per_sec: f64,
    },
    /// Print a fresh single-use bootstrap token for the organisation's first admin.
    BootstrapToken {
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// A PostgreSQL database shared by several relays (postgres://USER@HOST/DB)
        /// instead of the SQLite file in DATA; from MUSTER_DATABASE when not given, which
        /// keeps a password out of the process list. A database on another machine is
        /// reached only over TLS: add sslmode=require and set PGSSLROOTCERT to the PEM
        /// file of the CA that signed the server's certificate.
        #[arg(
            long,
            value_name = "URL",
            env = "MUSTER_DATABASE",
            hide_env_values = true
        )]
        database: Option<String>,
    },
    /// Print the audit log: metadata events only (enrolments, logins, group changes), never content.
    Audit {
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// A PostgreSQL database shared by several relays (postgres://USER@HOST/DB)
        /// instead of the SQLite file in DATA; from MUSTER_DATABASE when not given, which
        /// keeps a password out of the process list. A database on another machine is
        /// reached only over TLS: add sslmode=require and set PGSSLROOTCERT to the PEM
        /// file of the CA that signed the server's certificate.
        #[arg(
            long,
            value_name = "URL",
            env = "MUSTER_DATABASE",
            hide_env_values = true
        )]
        database: Option<String>,

        /// How many of the latest events to show.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print one JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Check that the relay serving DATA answers over QUIC (exit status 0 when healthy), for monitoring.
    Health {
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// Address to probe [default: the address the relay last listened on].
        #[arg(long, value_name = "ADDR")]
        relay: Option<String>,
    },
    /// Print counts of devices, groups and stored messages.
    Stats {
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// A PostgreSQL database shared by several relays (postgres://USER@HOST/DB)
        /// instead of the SQLite file in DATA; from MUSTER_DATABASE when not given, which
        /// keeps a password out of the process list. A database on another machine is
        /// reached only over TLS: add sslmode=require and set PGSSLROOTCERT to the PEM
        /// file of the CA that signed the server's certificate.
        #[arg(
            long,
            value_name = "URL",
            env = "MUSTER_DATABASE",
            hide_env_values = true
        )]
        database: Option<String>,
    },
    /// Copy a stopped relay's SQLite data (and its TLS identity, so devices keep their
    /// pin) into an empty PostgreSQL database, for several relays to share.
    Migrate {
        /// The old relay's data directory.
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
        /// The PostgreSQL database (postgres://USER@HOST/DB); from MUSTER_DATABASE when
        /// not given.
        #[arg(
            long,
            value_name = "URL",
            env = "MUSTER_DATABASE",
            hide_env_values = true
        )]
        to: String,
        /// Where the relays on the database keep attachments [default: FROM/blobs, left
        /// in place]; the old relay's attachments are copied there.
        #[arg(long, value_name = "DIR")]
        blobs: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MUSTER_LOG").unwrap_or_else(|_| {
                "muster=info,muster_relay=info,muster_relay_core=info,warn".into()
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve {
            data,
            database,
            blobs,
            listen,
            blob_quota_mib,
            queue_quota_mib,
            requests_per_sec,
            posts_per_sec,
            unauthenticated_per_address,
            anonymous_per_sec,
            message_retention_secs,
        } => {
            let quotas = server::Quotas {
                blob_bytes: blob_quota_mib.saturating_mul(1024 * 1024),
                queue_bytes: queue_quota_mib.saturating_mul(1024 * 1024),
                rates: muster_relay_core::RateLimits {
                    requests_per_sec,
                    request_burst: requests_per_sec * 10.0,
                    posts_per_sec,
                    post_burst: posts_per_sec * 10.0,
                },
                anonymous: muster_relay_core::AnonymousLimits {
                    connections_per_address: unauthenticated_per_address,
                    connections_total: unauthenticated_per_address.saturating_mul(32),
                    requests_per_address: anonymous_per_sec,
                    requests_total: anonymous_per_sec * 10.0,
                },
                message_retention_secs,
            };
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(server::ServeError::from)
                .and_then(|rt| {
                    let place = cluster::Place {
                        data,
                        database,
                        blobs,
                    };
                    rt.block_on(server::serve(place, listen, quotas))
                })
        }
        Command::BootstrapToken { data, database } => {
            server::bootstrap_token(&cluster::Place::of(data, database))
        }
        Command::Stats { data, database } => server::stats(&cluster::Place::of(data, database)),
        Command::Migrate { from, to, blobs } => cluster::migrate(&from, &to, blobs),
        Command::Health { data, relay } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(server::ServeError::from)
            .and_then(|rt| rt.block_on(server::health(&data, relay))),
        Command::Audit {
            data,
            database,
            limit,
            json,
        } => server::audit(&cluster::Place::of(data, database), limit, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("muster-relay: {e}");
            ExitCode::FAILURE
        }
    }
}
