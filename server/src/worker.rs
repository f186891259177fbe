//! The relay's worker: one thread that owns the database's writes. It takes every request
//! waiting at once, handles them in one group commit (each in its own transaction, none
//! waiting for the disk) and makes them durable together with one fsync; only then do
//! their answers leave, so a message is still on disk before its sender hears "stored".

use muster_proto::{ErrorCode, RelayError, Request, Response};
use muster_relay_core::{ConnectionState, Outcome, Relay};
use std::sync::{mpsc, Arc, Mutex};
use tokio::sync::oneshot;

/// The most requests handled in one group commit.
const MAX_BATCH: usize = 256;

/// A request for the worker, with its connection's state and where its answer goes.
pub struct Job {
    pub state: Arc<Mutex<ConnectionState>>,
    pub request: Request,
    /// The outcome, and the device the connection is now authenticated as.
    pub reply: oneshot::Sender<(Outcome, Option<String>)>,
}

/// Starts the worker on its own thread; it ends when every sender is gone.
pub fn start(relay: Arc<Mutex<Relay>>) -> mpsc::Sender<Job> {
    let (jobs, waiting) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("relay-worker".into())
        .spawn(move || run(&relay, &waiting))
        .expect("start the relay's worker thread");
    jobs
}

fn run(relay: &Mutex<Relay>, waiting: &mpsc::Receiver<Job>) {
    while let Ok(first) = waiting.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match waiting.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut relay = relay.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = relay.begin_group_commit() {
            // Nothing is run that could not be answered truthfully.
            drop(relay);
            tracing::error!(error = %e, "could not start a group commit");
            for job in batch {
                let _ = job
                    .reply
                    .send((failed("the relay could not store this; try again"), None));
            }
            continue;
        }
        let answered: Vec<_> = batch
            .into_iter()
            .map(|job| {
                let mut state = job.state.lock().unwrap_or_else(|e| e.into_inner());
                // A request that panics fails alone; the worker and the batch go on.
                let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    state.on_prechecked(&mut relay, job.request)
                }));
                let outcome = handled.unwrap_or_else(|_| {
                    tracing::error!("a request handler panicked");
                    relay.forget_memory();
                    failed("request handler failed")
                });
                let device = state.session().map(|s| s.device_id.clone());
                (job.reply, outcome, device)
            })
            .collect();
        let durable = relay.end_group_commit();
        drop(relay);
        if let Err(e) = &durable {
            tracing::error!(error = %e, "could not make a group commit durable");
        }
        for (reply, outcome, device) in answered {
            let outcome = match &durable {
                Ok(()) => outcome,
                // Nothing may be called stored that is not known to be on disk.
                Err(_) => failed("the relay could not store this; try again"),
            };
            let _ = reply.send((outcome, device));
        }
    }
}

fn failed(why: &str) -> Outcome {
    Outcome {
        response: Response::Error(RelayError::new(ErrorCode::Internal, why)),
        wake: Default::default(),
        changed: Default::default(),
        disconnect: Default::default(),
    }
}
