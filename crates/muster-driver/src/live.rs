//! A long-running device's relay connection and where it stands: enrolling, waiting for
//! approval, rejected, offline or online. Connections are opened in the background, so
//! a slow or unreachable relay never holds up the requests the device serves (the UI's
//! page, a bot's intake); only a revocation or a failing store ends it.

use crate::{Backoff, Connection, Session, Wake};
use muster_engine::{Engine, EngineError, SyncReport};
use muster_proto::ErrorCode;
use serde::Serialize;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Where this device stands, for the page to pick its screen.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Status {
    /// No identity here yet: create the organisation, or join with an invite code or a
    /// device link code.
    Enrol,
    /// Enrolled, waiting for an admin (or, for a linked device, the user) to approve it.
    Waiting {
        user: String,
        device_id: String,
        org: String,
    },
    /// The enrolment was rejected: this home cannot be used again.
    Rejected { user: String, why: String },
    /// Approved, but not connected: what is stored can be read, what is sent waits in
    /// the outbox.
    Offline { why: String },
    /// Online, with live delivery.
    Online,
}

impl Status {
    fn waiting(me: muster_engine::Identity) -> Self {
        Status::Waiting {
            user: me.user,
            device_id: me.device_id,
            org: me.org,
        }
    }
}

/// How often a waiting device asks whether it has been approved: the relay cannot tell
/// a device it has never authenticated, so it asks.
const APPROVAL_POLL: Duration = Duration::from_secs(2);

/// How long a connection must have lasted for the next loss to start the backoff
/// afresh: a relay that accepts and drops at once is retried ever more slowly.
const STABLE: Duration = Duration::from_secs(30);

/// How often an online device syncs without being woken, in case a wake-up was missed
/// (renewals and catching up need no push).
const RESYNC: Duration = Duration::from_secs(300);

/// What woke the UI's loop.
pub enum Woke {
    /// The relay has something, or the connection is gone.
    Relay(Wake),
    /// Time to open a connection again.
    TimeToConnect,
    /// A connection opened in the background, or why not.
    Opened(Result<Connection, EngineError>),
}

/// Errors after which the UI cannot go on: the device was revoked (the caller wipes it
/// when the policy says so), or its store failed.
pub fn fatal(e: &EngineError) -> bool {
    matches!(e, EngineError::DeviceRevoked { .. } | EngineError::Store(_))
}

/// The relay connection and its status.
pub struct Link {
    pub session: Option<Session>,
    pub status: Status,
    backoff: Backoff,
    next_attempt: Option<Instant>,
    opening: Option<JoinHandle<Result<Connection, EngineError>>>,
    online_since: Option<Instant>,
    /// When an online device syncs next without being woken.
    resync_at: Instant,
    /// How long the relay may leave a request unanswered before it counts as unreachable
    /// (the driver's default when `None`).
    answer_within: Option<Duration>,
}

impl Link {
    /// The status of this device's home, with a first connection due at once.
    pub fn new(engine: &Engine) -> Result<Self, EngineError> {
        let mut link = Self {
            session: None,
            status: Status::Enrol,
            backoff: Backoff::default(),
            next_attempt: None,
            opening: None,
            online_since: None,
            resync_at: Instant::now() + RESYNC,
            answer_within: None,
        };
        match engine.whoami() {
            Err(EngineError::NotEnrolled) => {}
            Err(e) => return Err(e),
            Ok(me) if me.approved => {
                link.status = Status::Offline {
                    why: "connecting to the relay".into(),
                };
                link.connect_now();
            }
            Ok(me) => {
                link.status = Status::waiting(me);
                link.connect_now();
            }
        }
        Ok(link)
    }

    /// Counts the relay as unreachable (offline, what is sent waits in the outbox) when
    /// it leaves a request unanswered for `limit`.
    pub fn answering_within(mut self, limit: Duration) -> Self {
        self.answer_within = Some(limit);
        self
    }

    /// Tries to connect now (after enrolling, or at start).
    pub fn connect_now(&mut self) {
        self.next_attempt = Some(Instant::now());
    }

    /// Waits for whatever comes next: the relay, a connection opened, or the time to
    /// open one.
    pub async fn next(&mut self) -> Woke {
        if let Some(session) = &self.session {
            let left = self.resync_at.saturating_duration_since(Instant::now());
            return Woke::Relay(session.wake(Some(left)).await);
        }
        if let Some(opening) = self.opening.as_mut() {
            let opened = opening
                .await
                .unwrap_or_else(|e| Err(EngineError::Invalid(format!("connecting failed: {e}"))));
            self.opening = None;
            return Woke::Opened(opened);
        }
        match self.next_attempt {
            Some(at) => {
                tokio::time::sleep_until(at).await;
                self.next_attempt = None;
                Woke::TimeToConnect
            }
            None => std::future::pending().await,
        }
    }

    /// Opens a connection to this device's relay in the background.
    pub fn start_opening(&mut self, engine: &Engine) -> Result<(), EngineError> {
        let (addr, fingerprint) = match engine.relay() {
            Ok(relay) => relay,
            Err(EngineError::NotEnrolled) => {
                self.status = Status::Enrol;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        self.opening = Some(tokio::spawn(async move {
            Connection::open(&addr, &fingerprint).await
        }));
        Ok(())
    }

    /// Authenticates a connection opened in the background; on failure, decides the
    /// status and when to try again.
    pub async fn opened(
        &mut self,
        engine: &mut Engine,
        opened: Result<Connection, EngineError>,
    ) -> Result<(), EngineError> {
        let opened = opened.map(|mut conn| {
            if let Some(limit) = self.answer_within {
                conn.set_answer_within(limit);
            }
            conn
        });
        let authenticated = match opened {
            Ok(conn) => match engine.authenticate(&conn).await {
                Ok(()) => Ok(conn),
                Err(e) => {
                    // Closing must not hold up the page either.
                    tokio::spawn(conn.close());
                    Err(e)
                }
            },
            Err(e) => Err(e),
        };
        match authenticated {
            Ok(conn) => {
                let mut session = Session::resume(conn);
                session.subscribe().await;
                self.session = Some(session);
                self.status = Status::Online;
                self.online_since = Some(Instant::now());
                Ok(())
            }
            Err(e) => self.failed(engine, e),
        }
    }

    fn failed(&mut self, engine: &Engine, e: EngineError) -> Result<(), EngineError> {
        if fatal(&e) {
            return Err(e);
        }
        let me = match engine.whoami() {
            Err(EngineError::NotEnrolled) => {
                self.status = Status::Enrol;
                return Ok(());
            }
            other => other?,
        };
        if me.approved {
            // Whatever the relay says (a rejection included), an approved device keeps
            // what it stores and tries again.
            self.status = Status::Offline { why: e.to_string() };
            self.next_attempt = Some(Instant::now() + self.backoff.next_delay());
            return Ok(());
        }
        match e {
            EngineError::Relay(refusal) if refusal.code == ErrorCode::EnrolmentRejected => {
                self.status = Status::Rejected {
                    user: me.user,
                    why: refusal.message,
                };
            }
            _ => {
                self.status = Status::waiting(me);
                self.next_attempt = Some(Instant::now() + APPROVAL_POLL);
            }
        }
        Ok(())
    }

    /// A sync starts: the next unwoken one is due a while after it, whatever its outcome.
    pub fn syncing(&mut self) {
        self.resync_at = Instant::now() + RESYNC;
    }

    /// The next unwoken sync runs by `at` at the latest.
    pub fn sync_by(&mut self, at: Instant) {
        self.resync_at = self.resync_at.min(at);
    }

    /// A sync went through: the connection works.
    pub fn synced(&mut self) {
        if self
            .online_since
            .is_some_and(|since| since.elapsed() >= STABLE)
        {
            self.backoff.reset();
        }
    }

    /// Syncs with the relay, as a wake-up needs when `woken`, else whole; schedules the
    /// next sync for held delivery receipts. The report, unless the connection was lost
    /// (the device is then offline until a later one works) or the step failed (it is
    /// tried again at the next wake-up; the connection stays). Only a fatal error is an
    /// error.
    pub async fn sync(
        &mut self,
        engine: &mut Engine,
        woken: bool,
    ) -> Result<Option<SyncReport>, EngineError> {
        self.syncing();
        let Some(session) = self.session.as_mut() else {
            return Ok(None);
        };
        let synced = session.step(engine, woken).await;
        // Held delivery receipts go out when they fall due, even while nothing arrives.
        if let Some(due) = crate::receipts_due_in(engine) {
            self.sync_by(Instant::now() + due);
        }
        match synced {
            Ok(report) => {
                self.synced();
                Ok(Some(report))
            }
            Err(e) if fatal(&e) => Err(e),
            Err(EngineError::Link(e)) => {
                self.lost(e.to_string());
                Ok(None)
            }
            Err(e) => {
                tracing::warn!(error = %e, "sync failed; trying again at the next wake-up");
                Ok(None)
            }
        }
    }

    /// Sends the outbox now, when online; what the relay does not take stays queued for
    /// the next sync, and a lost connection leaves the device offline.
    pub async fn send_outbox(&mut self, engine: &mut Engine) {
        let Some(session) = &self.session else {
            return;
        };
        match engine.flush(session.link()).await {
            Err(EngineError::Link(e)) => self.lost(e.to_string()),
            Err(e) => tracing::debug!(error = %e, "outbox not sent yet"),
            Ok(()) => {}
        }
    }

    /// The connection is gone for now: offline until a later one works.
    pub fn lost(&mut self, why: String) {
        if let Some(session) = self.session.take() {
            // Closing tells the relay; it must not hold up the page.
            tokio::spawn(session.close());
        }
        if self
            .online_since
            .take()
            .is_some_and(|since| since.elapsed() >= STABLE)
        {
            self.backoff.reset();
        }
        self.status = Status::Offline { why };
        self.next_attempt = Some(Instant::now() + self.backoff.next_delay());
    }

    pub async fn close(self) {
        if let Some(opening) = self.opening {
            opening.abort();
        }
        if let Some(session) = self.session {
            session.close().await;
        }
    }
}
