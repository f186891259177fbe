//! `relay`: the relay alone. Senders post pre-encrypted MLS messages to one group; every
//! receiving device is connected, takes what the relay pushes (fetching when woken) and
//! acknowledges. With
//! `--against mosquitto` the same pattern runs through a local Mosquitto broker with QoS 1
//! and persistent sessions.

use crate::harness::{HarnessError, Org};
use crate::protocol::{drain, receive};
use crate::report::{ms, quantile, Report};
use muster_driver::Connection;
use muster_proto::{Request, Response};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The shape of one run.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Receiving devices, all connected.
    pub members: usize,
    /// Sending devices (also group members, not counted as receivers).
    pub senders: usize,
    /// Messages sent in total.
    pub messages: usize,
    /// Bytes of text in each message before encryption.
    pub size: usize,
    /// Requests each sender keeps in flight.
    pub window: usize,
}

/// Where the relays keep their state: each its own SQLite file (one relay), or one
/// PostgreSQL database shared by `relays` relays.
#[derive(Debug, Clone, Default)]
pub struct Backend {
    /// A PostgreSQL URL whose schema `muster_bench` is emptied and used; `None`: SQLite.
    pub database: Option<String>,
    /// Relays started on the shared database; devices are spread over them.
    pub relays: usize,
}

/// The schema a PostgreSQL run uses, emptied first.
const BENCH_SCHEMA: &str = "muster_bench";

impl Backend {
    /// A PostgreSQL backend on `server` with `relays` relays, its schema emptied now.
    pub fn postgres(server: &str, relays: usize) -> Result<Self, HarnessError> {
        let mut client = muster_relay_core::db::pg_connect::client(server)
            .map_err(|e| HarnessError::Setup(format!("PostgreSQL at {server}: {e}")))?;
        client
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {BENCH_SCHEMA} CASCADE; CREATE SCHEMA {BENCH_SCHEMA}"
            ))
            .map_err(|e| HarnessError::Setup(format!("cannot make a schema for the run: {e}")))?;
        let separator = if server.contains('?') { '&' } else { '?' };
        Ok(Self {
            database: Some(format!(
                "{server}{separator}options=-csearch_path%3D{BENCH_SCHEMA}"
            )),
            relays: relays.max(1),
        })
    }

    fn name(&self) -> &'static str {
        if self.database.is_some() {
            "postgres"
        } else {
            "sqlite"
        }
    }

    fn serve_options(&self) -> Vec<&str> {
        match &self.database {
            Some(url) => vec!["--database", url],
            None => Vec::new(),
        }
    }
}

/// How long a run may take before it is called stuck.
const RUN_DEADLINE: Duration = Duration::from_secs(600);

/// What one system did with the load.
pub struct Outcome {
    pub deliveries: usize,
    pub elapsed: Duration,
    /// Send call to the recipient holding the message, per delivery, in ms.
    pub latencies_ms: Vec<f64>,
}

impl Outcome {
    pub fn deliveries_per_s(&self) -> f64 {
        self.deliveries as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn put(&mut self, report: &mut Report, prefix: &str) {
        report.set(&format!("{prefix}deliveries"), self.deliveries);
        report.set(
            &format!("{prefix}deliveries_per_s"),
            self.deliveries_per_s().round(),
        );
        report.set(&format!("{prefix}elapsed_ms"), ms(self.elapsed));
        report.set(
            &format!("{prefix}latency_p50_ms"),
            quantile(&mut self.latencies_ms, 0.5),
        );
        report.set(
            &format!("{prefix}latency_p99_ms"),
            quantile(&mut self.latencies_ms, 0.99),
        );
    }
}

pub async fn run(
    load: Load,
    against_mosquitto: bool,
    backend: Backend,
) -> Result<Report, HarnessError> {
    let mut report = Report::new("relay");
    report.set("backend", backend.name());
    report.set("relays", backend.relays.max(1));
    report.set("members", load.members);
    report.set("senders", load.senders);
    report.set("messages", load.messages);
    report.set("size", load.size);
    report.set("window", load.window);
    let (mut ours, payload_bytes) = muster(load, &backend).await?;
    report.set("payload_bytes", payload_bytes);
    report.set("durable_before_ack", true);
    ours.put(&mut report, "");
    if against_mosquitto {
        let mut theirs = crate::mosquitto::run(load, payload_bytes).await?;
        theirs.put(&mut report, "mosquitto_");
        report.set(
            "ratio",
            (ours.deliveries_per_s() / theirs.deliveries_per_s().max(1e-9) * 1000.0).round()
                / 1000.0,
        );
    }
    Ok(report)
}

/// Text of `size` bytes that differs between messages.
pub fn text_of(size: usize, index: usize) -> String {
    let head = format!("m{index} ");
    let mut text = head.clone();
    let filler = "the quick brown fox jumps over the lazy dog ";
    while text.len() < size.max(head.len()) {
        text.push_str(filler);
    }
    text.truncate(size.max(head.len()));
    text
}

/// One pre-encrypted message: its client id and MLS bytes.
pub type Payload = (Vec<u8>, Vec<u8>);

/// Runs the load through a real relay; returns what it did and the mean payload size.
async fn muster(load: Load, backend: &Backend) -> Result<(Outcome, usize), HarnessError> {
    let mut org = Org::create_on("relay", &backend.serve_options(), backend.relays).await?;
    let senders = load.senders.max(1);
    let mut engines = Vec::new();
    for i in 1..senders {
        let mut engine = org.enrol(&format!("sender{i}")).await?;
        // Senders and receivers alike are spread over the relays.
        engine.set_relays(org.relay_addr(i))?;
        engines.push(engine);
    }
    // Receivers only fetch and acknowledge: they never process the Welcome.
    let receiver_users: Vec<String> = (0..load.members).map(|i| format!("member{i}")).collect();
    let mut receivers = org.enrol_many(&receiver_users).await?;
    for (i, engine) in receivers.iter_mut().enumerate() {
        engine.set_relays(org.relay_addr(senders + i))?;
    }
    let group = org
        .group_with_others("bench", &mut engines, &receiver_users)
        .await?;
    engines.extend(receivers);
    let group_id = hex_decode(&group)?;

    // Encrypt everything up front, through the real client (the admin is sender 0).
    let mut payloads: Vec<Vec<Payload>> = vec![Vec::new(); senders];
    for index in 0..load.messages {
        let sender = index % senders;
        let engine = if sender == 0 {
            &mut org.admin
        } else {
            &mut engines[sender - 1]
        };
        engine.queue_text(&group, &text_of(load.size, index))?;
    }
    let mut total_bytes = 0;
    for (sender, list) in payloads.iter_mut().enumerate() {
        let home = if sender == 0 {
            org.admin.home()
        } else {
            engines[sender - 1].home()
        };
        *list = outbox(home)?;
        total_bytes += list.iter().map(|p| p.1.len()).sum::<usize>();
    }
    let payload_bytes = total_bytes / load.messages.max(1);

    let mut sender_conns = vec![Arc::new(muster_driver::connect(&mut org.admin).await?)];
    for engine in engines.iter_mut().take(senders - 1) {
        sender_conns.push(Arc::new(muster_driver::connect(engine).await?));
    }
    let mut receivers = Vec::new();
    for engine in engines.iter_mut().skip(senders - 1) {
        let conn = muster_driver::connect(engine).await?;
        drain(&conn).await?;
        receivers.push(conn);
    }

    if std::env::var_os("MUSTER_BENCH_TRACE").is_some() {
        eprintln!("muster-bench: relay {} under load", org.relay.pid());
    }
    let start = Instant::now();
    let receiving: Vec<_> = receivers
        .into_iter()
        .map(|conn| tokio::spawn(receive(conn, load.messages)))
        .collect();
    let sending: Vec<_> = sender_conns
        .into_iter()
        .zip(payloads)
        .map(|(conn, list)| tokio::spawn(send_all(conn, group_id.clone(), list, load.window)))
        .collect();
    let mut sent_at = HashMap::new();
    for task in sending {
        sent_at.extend(join(task).await??);
    }
    let mut latencies_ms = Vec::new();
    let mut end = start;
    let mut deliveries = 0;
    for task in receiving {
        for (seq, at) in join(task).await?? {
            let sent = sent_at.get(&seq).ok_or_else(|| {
                HarnessError::Setup(format!("delivery of seq {seq}, which no sender sent"))
            })?;
            latencies_ms.push(ms(at.saturating_duration_since(*sent)));
            end = end.max(at);
            deliveries += 1;
        }
    }
    Ok((
        Outcome {
            deliveries,
            elapsed: end - start,
            latencies_ms,
        },
        payload_bytes,
    ))
}

pub async fn join<T>(task: tokio::task::JoinHandle<T>) -> Result<T, HarnessError> {
    tokio::time::timeout(RUN_DEADLINE, task)
        .await
        .map_err(|_| HarnessError::Setup("the run did not finish within 10 minutes".into()))?
        .map_err(|e| HarnessError::Setup(format!("a load task failed: {e}")))
}

pub fn hex_decode(hex: &str) -> Result<Vec<u8>, HarnessError> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16))
        .collect::<Result<_, _>>()
        .map_err(|_| HarnessError::Setup(format!("group id {hex:?} is not hex")))
}

/// One message waiting in a device's outbox: its id, client id and MLS bytes.
pub struct Queued {
    pub id: String,
    pub client_id: Vec<u8>,
    pub message: Vec<u8>,
}

/// The messages waiting in a device's outbox, in order.
pub fn queued(home: &std::path::Path) -> Result<Vec<Queued>, HarnessError> {
    let failed = |e: rusqlite::Error| HarnessError::Setup(format!("cannot read an outbox: {e}"));
    let db = rusqlite::Connection::open(home.join("muster.db")).map_err(failed)?;
    if let Some(key) = crate::harness::store_key() {
        db.pragma_update(None, "key", key.sqlcipher_pragma().as_str())
            .map_err(failed)?;
    }
    let mut stmt = db
        .prepare("SELECT message_id, client_id, ciphertext FROM outbox ORDER BY position")
        .map_err(failed)?;
    let rows = stmt
        .query_map([], |r| {
            Ok(Queued {
                id: r.get(0)?,
                client_id: r.get(1)?,
                message: r.get(2)?,
            })
        })
        .map_err(failed)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(failed)?;
    Ok(rows)
}

/// [`queued`] as the payloads [`send_all`] posts.
pub fn outbox(home: &std::path::Path) -> Result<Vec<Payload>, HarnessError> {
    Ok(queued(home)?
        .into_iter()
        .map(|q| (q.client_id, q.message))
        .collect())
}

/// A sending device: posts its payloads with `window` requests in flight; returns the
/// relay sequence number and send time of each.
pub async fn send_all(
    conn: Arc<Connection>,
    group_id: Vec<u8>,
    payloads: Vec<Payload>,
    window: usize,
) -> Result<Vec<(u64, Instant)>, HarnessError> {
    let slots = Arc::new(tokio::sync::Semaphore::new(window.max(1)));
    let mut tasks = Vec::with_capacity(payloads.len());
    for (client_id, message) in payloads {
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| HarnessError::Setup("send window closed".into()))?;
        let conn = conn.clone();
        let group_id = group_id.clone();
        tasks.push(tokio::spawn(async move {
            let at = Instant::now();
            let answer = conn
                .request(&Request::Send {
                    group_id,
                    message,
                    client_id,
                })
                .await;
            drop(permit);
            match answer {
                Ok(Response::Stored { seq }) => Ok((seq, at)),
                Ok(_) => Err(HarnessError::Setup("unexpected answer to Send".into())),
                Err(e) => Err(HarnessError::Link(e)),
            }
        }));
    }
    let mut sent = Vec::with_capacity(tasks.len());
    for task in tasks {
        sent.push(join(task).await??);
    }
    Ok(sent)
}
