//! The network edge of a Muster client. The engine (muster-engine) never opens a
//! connection: it asks the relay through a [`Link`]. This crate is the one place that
//! connects to the relay over QUIC, proves the device's key, carries the engine's
//! requests, waits for the relay's wake-ups and reconnects with one backoff policy.

pub mod live;

use muster_engine::{Engine, EngineError, Link, LinkError, NewOrg, SyncReport};
use muster_net::client::PushHandle;
use muster_net::{NetError, RelayConnection};
use muster_proto::{Delivery, Profile, Push, Request, Response};
use std::time::Duration;

/// A QUIC connection to the relay, as the engine's [`Link`].
pub struct Connection {
    inner: RelayConnection,
    answer_within: Duration,
}

impl Connection {
    /// How long an answer may take: a relay that holds a request open (its keep-alives
    /// keep the connection up) is treated as unreachable, so no caller waits forever.
    pub const ANSWER_WITHIN: Duration = Duration::from_secs(45);

    /// Connects to the relay at `addr` whose certificate has `fingerprint`, without
    /// authenticating (enrolment and bootstrap happen before a device has an identity).
    pub async fn open(addr: &str, fingerprint: &str) -> Result<Self, EngineError> {
        let inner = RelayConnection::connect(addr, fingerprint)
            .await
            .map_err(|e| EngineError::Link(link_error(e)))?;
        Ok(Self {
            inner,
            answer_within: Self::ANSWER_WITHIN,
        })
    }

    /// Counts the relay as unreachable when it leaves a request unanswered for `limit`
    /// (instead of [`Connection::ANSWER_WITHIN`]): for a device that promises its own
    /// callers an answer within a time.
    pub fn set_answer_within(&mut self, limit: Duration) {
        self.answer_within = limit;
    }

    /// Sends one request and waits for the relay's answer (the [`Link`] method, callable
    /// from spawned tasks).
    pub async fn request(&self, request: &Request) -> Result<Response, LinkError> {
        match tokio::time::timeout(self.answer_within, self.inner.request(request)).await {
            Ok(answer) => answer.map_err(link_error),
            Err(_) => Err(LinkError::Unavailable(format!(
                "the relay did not answer within {} s",
                self.answer_within.as_secs()
            ))),
        }
    }

    /// A handle that waits for the relay's wake-ups while requests go on.
    pub fn wakeups(&self) -> Wakeups {
        Wakeups {
            push: self.inner.push_handle(),
            changed: Default::default(),
            pushed: Default::default(),
        }
    }

    /// Closes the connection, telling the relay.
    pub async fn close(self) {
        self.inner.close().await
    }
}

impl Link for Connection {
    async fn request(&self, request: &Request) -> Result<Response, LinkError> {
        Connection::request(self, request).await
    }

    async fn pause(&self, duration: Duration) {
        tokio::time::sleep(duration).await
    }
}

fn link_error(e: NetError) -> LinkError {
    match e {
        NetError::Refused(r) => LinkError::Refused(r),
        other => LinkError::Unavailable(other.to_string()),
    }
}

/// Waits for the relay to say something new is waiting.
#[derive(Clone)]
pub struct Wakeups {
    push: PushHandle,
    /// The relay said something other than deliveries changed since the last look.
    changed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Group messages the relay pushed, not yet taken.
    pushed: std::sync::Arc<std::sync::Mutex<Pushed>>,
}

/// Group messages the relay pushed ([`Push::Deliveries`]), in the order they came, and
/// the newest revocation position they were stamped with; and whether it also woke the
/// device to fetch (something it did not push: a Welcome, a commit).
#[derive(Debug, Default)]
pub struct Pushed {
    pub deliveries: Vec<Delivery>,
    pub revocations: u64,
    pub fetch: bool,
}

/// What waiting for a wake-up ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The relay has something new for this device.
    Pushed,
    /// Nothing came within the time given.
    TimedOut,
    /// The connection is gone: reconnect.
    Lost,
}

impl Wakeups {
    /// Pushes taken together at most by one wake-up.
    const PUSHES_PER_WAKE: usize = 64;

    /// Waits for the next wake-up, at most `limit` if given.
    pub async fn next(&self, limit: Option<Duration>) -> Wake {
        let push = self.push.next_push();
        let pushed = match limit {
            Some(limit) => match tokio::time::timeout(limit, push).await {
                Ok(pushed) => pushed,
                Err(_) => return Wake::TimedOut,
            },
            None => push.await,
        };
        let Some(first) = pushed else {
            return Wake::Lost;
        };
        // Whatever else has arrived is taken too (up to a bound), so that one sync handles
        // it all.
        self.note(first);
        for _ in 1..Self::PUSHES_PER_WAKE {
            match self.push.try_next_push() {
                Some(push) => self.note(push),
                None => break,
            }
        }
        Wake::Pushed
    }

    fn note(&self, push: Push) {
        match push {
            Push::Changed => {
                self.changed
                    .store(true, std::sync::atomic::Ordering::Release);
            }
            Push::Wake => {
                self.pushed.lock().unwrap_or_else(|e| e.into_inner()).fetch = true;
            }
            Push::Deliveries {
                deliveries,
                revocations,
            } => {
                let mut pushed = self.pushed.lock().unwrap_or_else(|e| e.into_inner());
                pushed.deliveries.extend(deliveries);
                pushed.revocations = pushed.revocations.max(revocations);
            }
        }
    }

    /// The group messages pushed since the last call.
    pub fn take_pushed(&self) -> Pushed {
        std::mem::take(&mut *self.pushed.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Whether the relay said since the last call that something other than deliveries
    /// changed (so a whole sync is due).
    pub fn take_changed(&self) -> bool {
        self.changed
            .swap(false, std::sync::atomic::Ordering::AcqRel)
    }

    /// Keeps a change for the next look (the sync it called for failed).
    pub fn keep_changed(&self) {
        self.changed
            .store(true, std::sync::atomic::Ordering::Release);
    }
}

/// Connects this device to its relay and authenticates it.
pub async fn connect(engine: &mut Engine) -> Result<Connection, EngineError> {
    let (addr, fingerprint) = engine.relay()?;
    let conn = Connection::open(&addr, &fingerprint).await?;
    match engine.authenticate(&conn).await {
        Ok(()) => Ok(conn),
        Err(e) => {
            conn.close().await;
            Err(e)
        }
    }
}

/// Connects, runs `work` with the connection and closes it, whatever `work` returned: the
/// way a one-shot command talks to the relay.
pub async fn online<T>(
    engine: &mut Engine,
    work: impl AsyncFnOnce(&mut Engine, &Connection) -> Result<T, EngineError>,
) -> Result<T, EngineError> {
    let conn = connect(engine).await?;
    let result = work(engine, &conn).await;
    if !matches!(result, Err(EngineError::Link(_))) {
        send_held_receipts(engine, &conn).await;
    }
    conn.close().await;
    result
}

/// When the delivery receipts ([`Engine::delivery_receipts_due_in`]), acknowledgements
/// ([`Engine::held_acks_due_in`]) or duties ([`Engine::duties_due_in`]) a live device
/// holds fall due; a store that cannot say
/// leaves the receipts to the next wake-up rather than ending the session.
pub fn receipts_due_in(engine: &mut Engine) -> Option<Duration> {
    let receipts = engine.delivery_receipts_due_in().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot tell when held delivery receipts fall due");
        None
    });
    // Held acknowledgements of pushed messages fall due the same way, and so do the
    // timed duties of incident command (reminders, escalations, overdue tasks).
    let duties = engine.duties_due_in().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot tell when duties fall due");
        None
    });
    [receipts, engine.held_acks_due_in(), duties]
        .into_iter()
        .flatten()
        .min()
}

/// Sends the delivery receipts a device held back, before it goes offline; one that
/// cannot go now stays owed for the next time.
pub async fn send_held_receipts(engine: &mut Engine, conn: &Connection) {
    if let Err(e) = engine.send_held_receipts(conn).await {
        tracing::debug!(error = %e, "held delivery receipts stay queued");
    }
    if let Err(e) = engine.send_held_acks(conn).await {
        tracing::debug!(error = %e, "held acknowledgements not sent; the relay delivers those messages again");
    }
}

/// A device kept online while it runs: one connection, re-established with [`Backoff`]
/// when lost. `chat`, `rollcall --watch`, `archive serve` and the bench's devices run on it.
///
/// A session that [`subscribed`](Session::subscribe) has the relay push its group messages
/// as they are stored (see [`Engine::sync_pushed`]).
pub struct Session {
    conn: Connection,
    wakeups: Wakeups,
    backoff: Backoff,
    subscribed: bool,
}

impl Session {
    /// Attempts at reaching the relay again before giving up: about half a minute.
    pub const RECONNECT_ATTEMPTS: u32 = 11;

    /// Connects and authenticates; a relay that cannot be reached is reported at once.
    pub async fn start(engine: &mut Engine) -> Result<Self, EngineError> {
        let conn = connect(engine).await?;
        Ok(Self::resume(conn))
    }

    /// A session on a connection already authenticated (see [`connect`]).
    pub fn resume(conn: Connection) -> Self {
        Self {
            wakeups: conn.wakeups(),
            conn,
            backoff: Backoff::default(),
            subscribed: false,
        }
    }

    /// Asks the relay to push this device's group messages rather than wake it to fetch
    /// them ([`Request::Subscribe`]), now and after every reconnection; false when the
    /// relay does not offer it (the session goes on with wake-ups) or cannot be reached.
    pub async fn subscribe(&mut self) -> bool {
        self.subscribed = matches!(
            self.conn.request(&Request::Subscribe).await,
            Ok(Response::Ok)
        );
        self.subscribed
    }

    /// The connection, for the engine's requests.
    pub fn link(&self) -> &Connection {
        &self.conn
    }

    /// Waits for the relay's next wake-up, at most `limit` if given. After
    /// [`Wake::Lost`], [`Session::reconnect`] (or [`Session::sync`], which reconnects).
    pub async fn wake(&self, limit: Option<Duration>) -> Wake {
        self.wakeups.next(limit).await
    }

    /// Connects afresh, trying with the backoff for about half a minute.
    pub async fn reconnect(&mut self, engine: &mut Engine) -> Result<(), EngineError> {
        self.conn = reconnect(engine, &mut self.backoff, Self::RECONNECT_ATTEMPTS).await?;
        self.wakeups = self.conn.wakeups();
        if self.subscribed {
            self.subscribe().await;
        }
        Ok(())
    }

    /// Fetches and processes what waits for this device and sends what it queued; when
    /// the connection turns out to be gone, reconnects and does it again.
    pub async fn sync(&mut self, engine: &mut Engine) -> Result<SyncReport, EngineError> {
        match self.step(engine, false).await {
            Err(EngineError::Link(LinkError::Unavailable(e))) => {
                tracing::info!("connection lost ({e}); reconnecting");
                self.reconnect(engine).await?;
                self.step(engine, false).await
            }
            other => other,
        }
    }

    /// One sync without reconnecting: whole, or as a wake-up needs when `woken`
    /// ([`Engine::sync_on_wake`]), then what the relay pushed meanwhile, in order; or, when
    /// only pushed messages came, those alone ([`Engine::sync_pushed`]).
    pub async fn step(
        &mut self,
        engine: &mut Engine,
        woken: bool,
    ) -> Result<SyncReport, EngineError> {
        let changed = woken && self.take_changed();
        let pushed = self.wakeups.take_pushed();
        let result = if woken && !pushed.fetch && !pushed.deliveries.is_empty() {
            engine
                .sync_pushed(&self.conn, pushed.deliveries, pushed.revocations, changed)
                .await
        } else {
            let synced = if woken {
                engine.sync_on_wake(&self.conn, changed).await
            } else {
                engine.sync(&self.conn).await
            };
            match synced {
                // What was pushed meanwhile either came in that fetch too or follows it.
                Ok(mut report) if !pushed.deliveries.is_empty() => engine
                    .sync_pushed(&self.conn, pushed.deliveries, pushed.revocations, false)
                    .await
                    .map(|rest| {
                        report.merge(rest);
                        report
                    }),
                other => other,
            }
        };
        if result.is_err() && changed {
            self.wakeups.keep_changed();
        }
        result
    }

    /// Whether the relay said something other than deliveries changed since the last
    /// call ([`Session::on_wake`] asks for itself).
    pub fn take_changed(&self) -> bool {
        self.wakeups.take_changed()
    }

    /// Keeps a change for the next wake-up (the sync it called for failed).
    pub fn keep_changed(&self) {
        self.wakeups.keep_changed()
    }

    /// What to run at each wake-up ([`Engine::sync_on_wake`]: the messages at once, the
    /// rest of a sync when the relay says something else changed, and now and then);
    /// reconnects like [`Session::sync`].
    pub async fn on_wake(&mut self, engine: &mut Engine) -> Result<SyncReport, EngineError> {
        match self.step(engine, true).await {
            Err(EngineError::Link(LinkError::Unavailable(e))) => {
                tracing::info!("connection lost ({e}); reconnecting");
                self.reconnect(engine).await?;
                self.step(engine, false).await
            }
            other => other,
        }
    }

    /// Closes the connection, telling the relay.
    pub async fn close(self) {
        self.conn.close().await
    }

    /// Sends the delivery receipts held back (the device goes offline), then closes.
    pub async fn finish(self, engine: &mut Engine) {
        send_held_receipts(engine, &self.conn).await;
        self.close().await
    }
}

/// How long to wait between attempts to reach the relay: doubling from 200 ms up to
/// 5 s. Every client loop that reconnects uses it.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: Self::FIRST }
    }
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(200);
    const MOST: Duration = Duration::from_secs(5);

    /// The wait before the next attempt; each call doubles the one after.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MOST);
        delay
    }

    /// Starts again from the shortest wait, after a success.
    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// Connects, and while the relay cannot be reached tries again with `backoff`, at most
/// `attempts` times; any other error (a refusal, a device not yet approved) is returned
/// at once.
pub async fn reconnect(
    engine: &mut Engine,
    backoff: &mut Backoff,
    attempts: u32,
) -> Result<Connection, EngineError> {
    let mut tried = 0;
    loop {
        tried += 1;
        match connect(engine).await {
            Ok(conn) => {
                backoff.reset();
                return Ok(conn);
            }
            Err(EngineError::Link(LinkError::Unavailable(_))) if tried < attempts => {
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Creates the organisation on the relay `setup` names (see [`Engine::create_org`]).
pub async fn create_org(engine: &mut Engine, setup: &NewOrg<'_>) -> Result<(), EngineError> {
    engine.ensure_fresh_home()?;
    let conn = Connection::open(setup.relay, setup.fingerprint).await?;
    let result = engine.create_org(&conn, setup).await;
    conn.close().await;
    result
}

/// Enrols a new user's device with an invite code (see [`Engine::join`]).
pub async fn join(
    engine: &mut Engine,
    code: &str,
    profile: Profile,
) -> Result<String, EngineError> {
    let invite = engine.new_user_invite(code)?;
    let conn = Connection::open(&invite.relay, &invite.fingerprint).await?;
    let result = engine.join(&conn, invite, profile).await;
    conn.close().await;
    result
}

/// Enrols another device of a user with a link code (see [`Engine::join_device`]).
pub async fn join_device(engine: &mut Engine, code: &str) -> Result<String, EngineError> {
    let invite = engine.link_invite(code)?;
    let conn = Connection::open(&invite.relay, &invite.fingerprint).await?;
    let result = engine.join_device(&conn, invite).await;
    conn.close().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A "relay" that completes the QUIC handshake and takes requests but never answers.
    async fn silent_relay() -> (quinn::Endpoint, String, String) {
        let dir = std::env::temp_dir().join(format!(
            "muster-driver-silent-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let identity = muster_net::tls::RelayIdentity::load_or_create(&dir).unwrap();
        let endpoint = quinn::Endpoint::server(
            identity.server_config().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .unwrap();
        let addr = endpoint.local_addr().unwrap().to_string();
        let server = endpoint.clone();
        tokio::spawn(async move {
            while let Some(incoming) = server.accept().await {
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    let mut held = Vec::new();
                    // Takes every request stream and keeps it open, unanswered.
                    while let Ok(stream) = conn.accept_bi().await {
                        held.push(stream);
                    }
                });
            }
        });
        let _ = std::fs::remove_dir_all(&dir);
        (endpoint, addr, identity.fingerprint())
    }

    #[tokio::test]
    async fn a_relay_that_never_answers_counts_as_unreachable() {
        let (_relay, addr, fingerprint) = silent_relay().await;
        let mut conn = Connection::open(&addr, &fingerprint).await.unwrap();
        conn.answer_within = Duration::from_millis(500);
        let started = std::time::Instant::now();
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            conn.request(&Request::MyCertificate),
        )
        .await
        .expect("the request ends on its own");
        assert!(
            matches!(answer, Err(LinkError::Unavailable(ref why)) if why.contains("did not answer")),
            "{answer:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn the_backoff_doubles_up_to_its_ceiling_and_starts_over_after_a_success() {
        let mut b = Backoff::default();
        let waits: Vec<u64> = (0..7).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(waits, [200, 400, 800, 1600, 3200, 5000, 5000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(200));
    }
}
