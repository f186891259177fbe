//! `ingest`: one real client engine coming back to a backlog. A group of `members` on a
//! real relay; while the device is away, senders post `messages` (encrypted beforehand by
//! real engines); then the device connects and syncs until every message is in its
//! store. The figure is messages per second into the store, relay and fetching included.

use crate::harness::{HarnessError, Org, Scratch};
use crate::relay::{hex_decode, join, outbox, send_all, text_of};
use crate::report::{ms, Report};
use muster_engine::Engine;
use std::time::{Duration, Instant};

/// The shape of one run.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub members: usize,
    pub messages: usize,
    pub size: usize,
    /// Devices whose messages make up the backlog.
    pub senders: usize,
}

pub async fn run(load: Load) -> Result<Report, HarnessError> {
    let members = load.members.max(3);
    let senders = load.senders.clamp(1, members - 2);
    let mut org = Org::create("ingest").await?;
    // The senders' stores only prepare the backlog: they live in memory (tmpfs, where
    // there is one), so that preparing it does not wait on the disk. The reader's store,
    // and the relay's, are on disk.
    let memory = Scratch::new_in(std::path::Path::new("/dev/shm"), "ingest-senders")
        .or_else(|_| Scratch::new("ingest-senders"))?;
    let mut real: Vec<Engine> = Vec::new();
    for i in 0..senders {
        real.push(org.enrol_in(memory.path(), &format!("sender{i}")).await?);
    }
    real.push(org.enrol("reader").await?);
    let quiet: Vec<String> = (0..members - senders - 2)
        .map(|i| format!("member{i}"))
        .collect();
    // Enrolled (with KeyPackages) and then away for the whole run.
    org.enrol_many(&quiet).await?;
    let group = org.group_with_others("ingest", &mut real, &quiet).await?;
    let mut reader = real.pop().expect("the reader was enrolled");
    let group_id = hex_decode(&group)?;

    eprintln!("muster-bench ingest: encrypting {} messages", load.messages);
    let prepared = Instant::now();
    let queues = std::thread::scope(|scope| {
        let workers: Vec<_> = real
            .iter_mut()
            .enumerate()
            .map(|(sender, engine)| {
                let group = &group;
                scope.spawn(move || -> Result<_, HarnessError> {
                    for index in (sender..load.messages).step_by(senders) {
                        engine.queue_text(group, &text_of(load.size, index))?;
                    }
                    outbox(engine.home())
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .map_err(|_| HarnessError::Setup("an encrypting thread panicked".into()))?
            })
            .collect::<Result<Vec<_>, HarnessError>>()
    })?;
    let prepare_ms = ms(prepared.elapsed());

    eprintln!("muster-bench ingest: storing them on the relay");
    let mut conns = Vec::new();
    for engine in real.iter_mut() {
        conns.push(std::sync::Arc::new(muster_driver::connect(engine).await?));
    }
    let mut tasks = Vec::new();
    for (conn, queue) in conns.iter().zip(queues) {
        // One at a time per sender, as a client sends: the relay numbers messages in the
        // order they arrive, and each sender's must stay in the order it encrypted them.
        tasks.push(tokio::spawn(send_all(
            conn.clone(),
            group_id.clone(),
            queue,
            1,
        )));
    }
    for task in tasks {
        join(task).await??;
    }
    drop(conns);

    eprintln!("muster-bench ingest: the reader catches up");
    let started = Instant::now();
    let reader_thread = std::thread::spawn(move || -> Result<(usize, Duration), HarnessError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let mut session = muster_driver::Session::start(&mut reader).await?;
            let mut received = 0;
            while received < load.messages {
                let report = session.sync(&mut reader).await?;
                if let Some(problem) = report.problems.first() {
                    return Err(HarnessError::Setup(format!(
                        "the reader met {} problems, the first: {problem}",
                        report.problems.len()
                    )));
                }
                if report.received == 0 && report.fetched == 0 {
                    return Err(HarnessError::Setup(format!(
                        "the reader stopped at {received} of {} messages: {}",
                        load.messages,
                        report.problems.join("; ")
                    )));
                }
                received += report.received;
            }
            session.close().await;
            Ok((received, started.elapsed()))
        })
    });
    let (received, elapsed) = tokio::task::spawn_blocking(move || reader_thread.join())
        .await
        .map_err(|e| HarnessError::Setup(format!("the reader thread failed: {e}")))?
        .map_err(|_| HarnessError::Setup("the reader thread panicked".into()))??;

    let mut report = Report::new("ingest");
    report.set("members", members);
    report.set("messages", load.messages);
    report.set("size", load.size);
    report.set("received", received);
    report.set("prepare_ms", prepare_ms);
    report.set("elapsed_ms", ms(elapsed));
    report.set(
        "messages_per_s",
        (received as f64 / elapsed.as_secs_f64().max(1e-9)).round(),
    );
    drop(org);
    drop(memory);
    Ok(report)
}
