//! The relay's worker: one thread that owns the database's writes. It takes every request
//! waiting at once, handles them in one group commit (each in its own transaction, none
//! waiting for the disk) and makes them durable together with one fsync; only then do
//! their answers leave, so a message is still on disk before its sender hears "stored".

use crate::server::Connected;
use muster_proto::{ErrorCode, RelayError, Request, Response};
use muster_relay_core::{Announcement, ConnectionState, Outcome, PushRoute, Relay};
use std::collections::HashSet;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// The most requests handled in one group commit.
const MAX_BATCH: usize = 256;

/// A request for the worker, with its connection's state and where its answer goes.
pub struct Job {
    pub state: Arc<Mutex<ConnectionState>>,
    /// The connection's standing for pushes.
    pub route: Arc<Mutex<PushRoute>>,
    pub request: Request,
    pub reply: oneshot::Sender<Answer>,
}

/// The outcome, the device the connection is now authenticated as, and the connections
/// that need no wake-up for the message it stored (it was pushed to them).
pub type Answer = (Outcome, Option<String>, HashSet<u64>);

/// Starts the worker on its own thread; it ends when every sender is gone. After each
/// group commit it routes the messages stored to the `connected` devices, in order.
pub fn start(relay: Arc<Mutex<Relay>>, connected: Arc<Connected>) -> mpsc::Sender<Job> {
    let (jobs, waiting) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("relay-worker".into())
        .spawn(move || run(&relay, &connected, &waiting))
        .expect("start the relay's worker thread");
    jobs
}

/// How often a relay of a shared database checks that no device connected to it has
/// been revoked (through another relay): the longest such a device stays connected when
/// the other relay's announcement is lost.
const REVOCATION_CHECK_EVERY: Duration = Duration::from_secs(1);

fn run(relay: &Mutex<Relay>, connected: &Connected, waiting: &mpsc::Receiver<Job>) {
    let mut next_check = Instant::now() + REVOCATION_CHECK_EVERY;
    let mut revocations = RevocationWatch::default();
    loop {
        let first = match waiting.recv_timeout(next_check.saturating_duration_since(Instant::now()))
        {
            Ok(job) => Some(job),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        if Instant::now() >= next_check {
            next_check = Instant::now() + REVOCATION_CHECK_EVERY;
            revocations.cut_off_revoked(relay, connected);
        }
        let Some(first) = first else {
            continue;
        };
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
                let _ = job.reply.send((
                    failed("the relay could not store this; try again"),
                    None,
                    HashSet::new(),
                ));
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
                let mut outcome = handled.unwrap_or_else(|_| {
                    tracing::error!("a request handler panicked");
                    relay.forget_memory();
                    failed("request handler failed")
                });
                if let Some(change) = outcome.stream.take() {
                    lock(&job.route).apply(change);
                }
                let device = state.session().map(|s| s.device_id.clone());
                (job.reply, job.route, outcome, device)
            })
            .collect();
        let durable = relay.end_group_commit();
        // Pushes carry where the revocations stood once the messages were stored.
        let revocations = match durable {
            Ok(()) if answered.iter().any(|a| a.2.stored.is_some()) => {
                relay.revocations_position().ok()
            }
            _ => None,
        };
        if durable.is_ok() && relay.is_postgres() {
            // Devices connected to the other relays of the database hear of it too.
            let mut announcement = Announcement::default();
            for (_, _, outcome, _) in &answered {
                announcement.wake.extend(outcome.wake.iter().cloned());
                announcement.changed.extend(outcome.changed.iter().cloned());
                announcement
                    .disconnect
                    .extend(outcome.disconnect.iter().cloned());
            }
            if let Err(e) = relay.announce(announcement) {
                tracing::warn!(error = %e, "could not tell the other relays");
            }
        }
        drop(relay);
        if let Err(e) = &durable {
            tracing::error!(error = %e, "could not make a group commit durable");
        }
        // Revoked devices are cut off before anything is routed, whether or not the group
        // commit reached the disk: their revocation may be in the database all the same.
        for answer in &answered {
            connected.disconnect(answer.2.disconnect.iter());
        }
        for (reply, route, mut outcome, device) in answered {
            let (outcome, handled) = match &durable {
                Ok(()) => {
                    let handled = match (outcome.stored.take(), revocations) {
                        (Some(stored), Some(revocations)) => {
                            connected.route(&stored, &outcome.wake, revocations)
                        }
                        _ => HashSet::new(),
                    };
                    (outcome, handled)
                }
                // Nothing may be called stored that is not known to be on disk, and a
                // fetch whose answer fails leaves nothing handed over.
                Err(_) => {
                    lock(&route).lose();
                    (
                        Outcome {
                            disconnect: outcome.disconnect,
                            ..failed("the relay could not store this; try again")
                        },
                        HashSet::new(),
                    )
                }
            };
            let _ = reply.send((outcome, device, handled));
        }
    }
}

/// Where the organisation's revocations stood at the last check, and how many checks of
/// the connected devices are still due for its last move.
#[derive(Default)]
struct RevocationWatch {
    position: Option<u64>,
    scans_due: u8,
}

impl RevocationWatch {
    /// On a shared database, closes the connections of devices revoked through another
    /// relay (on this relay's own connection to the database, the one pushes depend on).
    /// The connected devices are looked up only when the revocations moved, and once
    /// more a second later for a device that was registering meanwhile.
    fn cut_off_revoked(&mut self, relay: &Mutex<Relay>, connected: &Connected) {
        let relay = relay.lock().unwrap_or_else(|e| e.into_inner());
        if !relay.is_postgres() {
            return;
        }
        match relay.revocations_position() {
            Ok(position) if Some(position) != self.position => {
                self.position = Some(position);
                self.scans_due = 2;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot check for revoked devices");
                return;
            }
        }
        if self.scans_due == 0 {
            return;
        }
        match relay.revoked_among(&connected.devices()) {
            Ok(revoked) => {
                self.scans_due -= 1;
                drop(relay);
                if !revoked.is_empty() {
                    tracing::info!(
                        devices = revoked.len(),
                        "devices revoked through another relay cut off"
                    );
                    connected.disconnect(revoked.iter());
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot check for revoked devices"),
        }
    }
}

fn lock(route: &Mutex<PushRoute>) -> std::sync::MutexGuard<'_, PushRoute> {
    route.lock().unwrap_or_else(|e| e.into_inner())
}

fn failed(why: &str) -> Outcome {
    Outcome {
        response: Response::Error(RelayError::new(ErrorCode::Internal, why)),
        wake: Default::default(),
        changed: Default::default(),
        disconnect: Default::default(),
        stored: None,
        stream: None,
    }
}
