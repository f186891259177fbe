//! `fanout --all-real`: one group of real client engines (each with its own store, real
//! MLS encryption and decryption) on a real relay. Senders post text at a set rate; every
//! member syncs on each wake-up, as `muster chat` does, and the bench notes when each
//! message was written into each recipient's store. On one machine this measures its
//! capacity (every member's decryption and store writes share its cores); what one user
//! feels is `fanout` without `--all-real` ([`crate::fanout_one`]).

use crate::harness::{HarnessError, Org};
use crate::relay::text_of;
use crate::report::{ms, quantile, Report};
use muster_engine::Engine;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The shape of one run.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub members: usize,
    pub senders: usize,
    pub messages: usize,
    pub size: usize,
    /// Messages per second offered by all senders together; 0 sends as fast as possible.
    pub rate: f64,
    /// Every member a real client engine (capacity), instead of one.
    pub all_real: bool,
}

/// What a member saw: message id and when it was in the store.
type Arrivals = Vec<(String, Instant)>;
/// What a sender sent: message id and when the send call began.
type Sends = Vec<(String, Instant)>;

/// One member's run: sends its share (if a sender) on schedule, and syncs on every
/// wake-up until it holds every message the others sent.
pub async fn member(
    mut engine: Engine,
    group: String,
    schedule: Vec<(usize, Instant)>,
    size: usize,
    expected: usize,
) -> Result<(Sends, Arrivals), HarnessError> {
    let mut session = muster_driver::Session::start(&mut engine).await?;
    session.subscribe().await;
    let mut sends = Vec::with_capacity(schedule.len());
    let mut arrivals = Vec::with_capacity(expected);
    let mut schedule = schedule.into_iter().peekable();
    let deadline = Instant::now() + Duration::from_secs(600);
    while arrivals.len() < expected || schedule.peek().is_some() {
        if Instant::now() > deadline {
            return Err(HarnessError::Setup(format!(
                "a member received {} of {expected} messages within 10 minutes",
                arrivals.len()
            )));
        }
        if let Some(&(index, due)) = schedule.peek() {
            if Instant::now() >= due {
                schedule.next();
                let started = Instant::now();
                let sent = engine
                    .send_text(session.link(), &group, &text_of(size, index))
                    .await?;
                sends.push((sent.id, started));
                continue;
            }
        }
        let wait = schedule
            .peek()
            .map(|&(_, due)| due.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_millis(200))
            .min(Duration::from_millis(200));
        let woken = session.wake(Some(wait)).await != muster_driver::Wake::TimedOut;
        if woken || schedule.peek().is_none() {
            let report = session.on_wake(&mut engine).await?;
            let now = Instant::now();
            arrivals.extend(report.notifications.into_iter().map(|n| (n.id, now)));
        }
    }
    session.close().await;
    Ok((sends, arrivals))
}

/// Each arrival's time since its message was sent, in ms, and when the last one arrived
/// (`start` if none did).
pub fn latencies(
    arrivals: &[(String, Instant)],
    sent_at: &HashMap<String, Instant>,
    start: Instant,
) -> Result<(Vec<f64>, Instant), HarnessError> {
    let mut latencies = Vec::with_capacity(arrivals.len());
    let mut end = start;
    for (id, at) in arrivals {
        let sent = sent_at
            .get(id)
            .ok_or_else(|| HarnessError::Setup(format!("message {id} arrived but was not sent")))?;
        latencies.push(ms(at.saturating_duration_since(*sent)));
        end = end.max(*at);
    }
    Ok((latencies, end))
}

pub async fn run(load: Load) -> Result<Report, HarnessError> {
    if !load.all_real {
        return crate::fanout_one::run(load).await;
    }
    let members = load.members.max(2);
    let senders = load.senders.clamp(1, members);
    let mut org = Org::create("fanout").await?;
    let users: Vec<String> = (1..members).map(|i| format!("member{i}")).collect();
    let mut engines = org.enrol_many(&users).await?;
    let group = org.group("fanout", &mut engines).await?;
    let Org {
        scratch,
        relay,
        admin,
        admin_conn,
        ..
    } = org;
    admin_conn.close().await;
    engines.insert(0, admin);

    // Message i goes out from sender i % senders at start + i / rate.
    let start = Instant::now() + Duration::from_millis(200);
    let interval = if load.rate > 0.0 {
        Duration::from_secs_f64(1.0 / load.rate)
    } else {
        Duration::ZERO
    };
    let mut schedules = vec![Vec::new(); members];
    for i in 0..load.messages {
        schedules[i % senders].push((i, start + interval * i as u32));
    }
    // Each simulated device runs on a thread and runtime of its own, as each real device
    // has its own processor and disk: one device's blocking store write (SQLite with
    // synchronous=FULL) must not hold up the others. (An engine's futures are not Send
    // either, as its SQLite connection is not Sync.)
    let shares: Vec<Vec<_>> = engines
        .into_iter()
        .zip(schedules)
        .map(|(engine, schedule)| {
            let expected = load.messages - schedule.len();
            vec![(engine, schedule, expected)]
        })
        .collect();
    let threads: Vec<_> = shares
        .into_iter()
        .map(|share| {
            let group = group.clone();
            let size = load.size;
            std::thread::spawn(move || -> Result<Vec<(Sends, Arrivals)>, HarnessError> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, async move {
                    let tasks: Vec<_> = share
                        .into_iter()
                        .map(|(engine, schedule, expected)| {
                            tokio::task::spawn_local(member(
                                engine,
                                group.clone(),
                                schedule,
                                size,
                                expected,
                            ))
                        })
                        .collect();
                    let mut out = Vec::new();
                    for task in tasks {
                        out.push(task.await.map_err(|e| {
                            HarnessError::Setup(format!("a member task failed: {e}"))
                        })??);
                    }
                    Ok(out)
                })
            })
        })
        .collect();
    let mut sent_at = HashMap::new();
    let mut arrivals = Vec::new();
    for thread in threads {
        let results = tokio::task::spawn_blocking(move || thread.join())
            .await
            .map_err(|e| HarnessError::Setup(format!("a client thread failed: {e}")))?
            .map_err(|_| HarnessError::Setup("a client thread panicked".into()))??;
        for (sends, got) in results {
            sent_at.extend(sends);
            arrivals.extend(got);
        }
    }
    let (mut latencies, end) = latencies(&arrivals, &sent_at, start)?;
    let elapsed = end.saturating_duration_since(start);
    let mut report = Report::new("fanout");
    report.set("mode", "all-real");
    report.set("members", members);
    report.set("senders", senders);
    report.set("messages", load.messages);
    report.set("size", load.size);
    report.set("offered_rate_per_s", load.rate);
    report.set("deliveries", arrivals.len());
    report.set(
        "deliveries_per_s",
        (arrivals.len() as f64 / elapsed.as_secs_f64().max(1e-9)).round(),
    );
    report.set("elapsed_ms", ms(elapsed));
    report.set("latency_p50_ms", quantile(&mut latencies, 0.5));
    report.set("latency_p99_ms", quantile(&mut latencies, 0.99));
    drop(relay);
    drop(scratch);
    Ok(report)
}
