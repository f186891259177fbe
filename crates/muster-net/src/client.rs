//! The client side of a relay connection: one request per bidirectional stream, and
//! wake-up pushes on unidirectional streams.

use crate::framing::{read_frame, write_frame, FrameError};
use crate::tls::client_config;
use muster_proto::{decode, encode, Push, RelayError, Request, Response};
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("invalid relay address {0:?}: expected HOST:PORT")]
    BadAddress(String),
    #[error("relay certificate fingerprint is {seen}, but this device pins {expected}: refusing to connect")]
    WrongFingerprint { expected: String, seen: String },
    #[error("cannot reach the relay at {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("connection to the relay failed: {0}")]
    Connection(String),
    #[error("relay sent a malformed answer: {0}")]
    Protocol(String),
    #[error("relay refused: {0}")]
    Refused(RelayError),
}

impl From<FrameError> for NetError {
    fn from(e: FrameError) -> Self {
        NetError::Connection(e.to_string())
    }
}

/// How long connecting may take in all before the relay counts as unreachable.
const CONNECT_WITHIN: Duration = Duration::from_secs(10);

fn no_answer(addr: &str) -> NetError {
    NetError::Unreachable {
        addr: addr.to_string(),
        reason: "no answer within 10 seconds".into(),
    }
}

/// How one handshake attempt ended.
enum Handshake {
    Done(quinn::Connection),
    /// The relay had not answered anything by the time given.
    Unanswered,
}

/// A QUIC connection to the relay.
pub struct RelayConnection {
    endpoint: quinn::Endpoint,
    connection: quinn::Connection,
    /// Where the relay's pushes arrive, once something asked for them.
    pushes: std::sync::OnceLock<PushHandle>,
}

async fn resolve(addr: &str) -> Result<SocketAddr, NetError> {
    tokio::net::lookup_host(addr)
        .await
        .map_err(|_| NetError::BadAddress(addr.to_string()))?
        .next()
        .ok_or_else(|| NetError::BadAddress(addr.to_string()))
}

/// How long one of several relays may take to complete a handshake before the next is tried.
const FAILOVER_AFTER: Duration = Duration::from_secs(3);

/// For each list of relay addresses, the one that last answered: later connections try
/// it first, so a relay that is down costs its [`FAILOVER_AFTER`] once, not every time.
static ANSWERED_LAST: std::sync::Mutex<Option<std::collections::HashMap<String, usize>>> =
    std::sync::Mutex::new(None);

/// The addresses in a relay list: `HOST:PORT` or `HOST:PORT,HOST:PORT,...`.
pub fn relay_addresses(list: &str) -> Vec<&str> {
    list.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .collect()
}

impl RelayConnection {
    /// Connects to `addr`, accepting only the certificate whose SHA-256 is `fingerprint`.
    /// `addr` may list several relays that share one database and one certificate
    /// (`a:4433,b:4433`): each is tried in turn, starting with the one that answered
    /// last, and one that has not completed its handshake within [`FAILOVER_AFTER`] is
    /// passed over.
    pub async fn connect(addr: &str, fingerprint: &str) -> Result<Self, NetError> {
        let candidates = relay_addresses(addr);
        if candidates.len() <= 1 {
            return Self::connect_one(candidates.first().copied().unwrap_or(addr), fingerprint)
                .await;
        }
        let remembered = || {
            ANSWERED_LAST
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .and_then(|m| m.get(addr).copied())
                .unwrap_or(0)
        };
        let first = remembered() % candidates.len();
        let mut failure = NetError::BadAddress(addr.to_string());
        let mut slow = None;
        for i in 0..candidates.len() {
            let index = (first + i) % candidates.len();
            let candidate = candidates[index];
            match tokio::time::timeout(FAILOVER_AFTER, Self::connect_one(candidate, fingerprint))
                .await
            {
                Ok(Ok(connection)) => {
                    if index != first {
                        tracing::info!(relay = candidate, "failed over to another relay");
                    }
                    ANSWERED_LAST
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_or_insert_with(Default::default)
                        .insert(addr.to_string(), index);
                    return Ok(connection);
                }
                Ok(Err(e)) => {
                    if matches!(e, NetError::WrongFingerprint { .. }) {
                        // Not a relay of this organisation: an attacker, or a mistake in
                        // the list.
                        tracing::warn!(relay = candidate, error = %e, "a listed relay presents another certificate");
                    }
                    failure = e
                }
                Err(_) => {
                    slow.get_or_insert(candidate);
                    failure = NetError::Unreachable {
                        addr: candidate.to_string(),
                        reason: format!("no answer within {} seconds", FAILOVER_AFTER.as_secs()),
                    }
                }
            }
            tracing::debug!(relay = candidate, error = %failure, "relay did not answer; trying the next");
        }
        // None completed a handshake in the short time: the first that was merely slow
        // (the one that answered last, if it was) is given the whole time, with its
        // retry of a handshake that went unanswered.
        if let Some(slow) = slow {
            if let Ok(connection) = Self::connect_one(slow, fingerprint).await {
                return Ok(connection);
            }
        }
        Err(failure)
    }

    async fn connect_one(addr: &str, fingerprint: &str) -> Result<Self, NetError> {
        let socket = resolve(addr).await?;
        let bind: SocketAddr = if socket.is_ipv6() {
            "[::]:0".parse().expect("valid")
        } else {
            "0.0.0.0:0".parse().expect("valid")
        };
        let endpoint = quinn::Endpoint::client(bind).map_err(|e| NetError::Unreachable {
            addr: addr.to_string(),
            reason: e.to_string(),
        })?;
        Self::connect_via(endpoint, addr, fingerprint).await
    }

    /// Like [`connect`](Self::connect), over an existing client endpoint (one UDP socket
    /// can carry many connections, as a load generator needs).
    pub async fn connect_via(
        endpoint: quinn::Endpoint,
        addr: &str,
        fingerprint: &str,
    ) -> Result<Self, NetError> {
        let socket = resolve(addr).await?;
        let deadline = tokio::time::Instant::now() + CONNECT_WITHIN;
        // A handshake the relay has not answered at all within half the time is tried once
        // more on a fresh connection. A relay on quinn's default connection IDs reuses a
        // live ID in its address check (a QUIC Retry) about once in a few hundred
        // handshakes when thousands of devices are connected, and never answers those (see
        // `socket.rs`); a new attempt gets a new ID. One that is answered, however slowly, is waited for.
        let unanswered_by = tokio::time::Instant::now() + CONNECT_WITHIN / 2;
        let first = Self::attempt(
            &endpoint,
            socket,
            addr,
            fingerprint,
            Some(unanswered_by),
            deadline,
        );
        let connection = match first.await? {
            Handshake::Done(connection) => connection,
            Handshake::Unanswered => {
                tracing::debug!(%addr, "no answer to the handshake yet; trying again");
                match Self::attempt(&endpoint, socket, addr, fingerprint, None, deadline).await? {
                    Handshake::Done(connection) => connection,
                    Handshake::Unanswered => return Err(no_answer(addr)),
                }
            }
        };
        Ok(Self {
            endpoint,
            connection,
            pushes: Default::default(),
        })
    }

    /// One QUIC and TLS handshake with the relay, given up at `deadline`, or at
    /// `unanswered_by` if the relay has not answered anything by then.
    async fn attempt(
        endpoint: &quinn::Endpoint,
        socket: SocketAddr,
        addr: &str,
        fingerprint: &str,
        unanswered_by: Option<tokio::time::Instant>,
        deadline: tokio::time::Instant,
    ) -> Result<Handshake, NetError> {
        let (config, verifier) =
            client_config(fingerprint).map_err(|e| NetError::Connection(e.to_string()))?;
        let mut connecting = endpoint
            .connect_with(config, socket, "muster-relay")
            .map_err(|e| NetError::Connection(e.to_string()))?;
        if let Some(by) = unanswered_by {
            // The relay's first flight of the handshake brings its handshake data.
            if tokio::time::timeout_at(by, connecting.handshake_data())
                .await
                .is_err()
            {
                return Ok(Handshake::Unanswered);
            }
        }
        let result = tokio::time::timeout_at(deadline, connecting).await;
        let mismatch = || {
            verifier
                .mismatch
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        };
        match result {
            Ok(Ok(connection)) => Ok(Handshake::Done(connection)),
            Ok(Err(e)) => Err(match mismatch() {
                Some(seen) => NetError::WrongFingerprint {
                    expected: fingerprint.to_string(),
                    seen,
                },
                None => NetError::Unreachable {
                    addr: addr.to_string(),
                    reason: e.to_string(),
                },
            }),
            Err(_) => Err(no_answer(addr)),
        }
    }

    /// Sends one request on a new stream and waits for its answer.
    /// A refusal comes back as `Err(NetError::Refused)`.
    pub async fn request(&self, request: &Request) -> Result<Response, NetError> {
        let (mut send, mut recv) = self
            .connection
            .open_bi()
            .await
            .map_err(|e| NetError::Connection(e.to_string()))?;
        let body = encode(request).map_err(|e| NetError::Protocol(e.to_string()))?;
        write_frame(&mut send, &body).await?;
        let _ = send.finish();
        let frame = read_frame(&mut recv).await?.ok_or_else(|| {
            NetError::Connection("relay closed the stream without answering".into())
        })?;
        match decode::<Response>(&frame).map_err(|e| NetError::Protocol(e.to_string()))? {
            Response::Error(e) => Err(NetError::Refused(e)),
            other => Ok(other),
        }
    }

    /// A cheap handle for waiting on pushes while requests go on elsewhere. The first
    /// call starts reading them: every stream the relay opens, each frame in order.
    pub fn push_handle(&self) -> PushHandle {
        self.pushes
            .get_or_init(|| PushHandle::start(self.connection.clone()))
            .clone()
    }

    /// Closes the connection and waits briefly for the close to reach the relay.
    pub async fn close(self) {
        self.connection.close(0u32.into(), b"bye");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

/// Pushes read ahead and not yet taken, at most: past them the relay's streams wait,
/// and a relay that cannot push falls back to wake-ups.
const PUSHES_AHEAD: usize = 16;

/// Receives pushes on a connection shared with a [`RelayConnection`].
#[derive(Clone)]
pub struct PushHandle {
    pushes: std::sync::Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Push>>>,
}

impl PushHandle {
    fn start(connection: quinn::Connection) -> Self {
        let (arrived, pushes) = tokio::sync::mpsc::channel(PUSHES_AHEAD);
        tokio::spawn(async move {
            while let Ok(mut recv) = connection.accept_uni().await {
                let arrived = arrived.clone();
                // Each stream is read whole, frame after frame: the relay's pushed
                // deliveries come on one stream, in order.
                tokio::spawn(async move {
                    while let Ok(Some(frame)) = read_frame(&mut recv).await {
                        // A frame that does not decode ends its stream: what follows it
                        // must not be taken without it.
                        let Ok(push) = decode::<Push>(&frame) else {
                            return;
                        };
                        if arrived.send(push).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self {
            pushes: std::sync::Arc::new(tokio::sync::Mutex::new(pushes)),
        }
    }

    /// Waits for the next push; `None` once the connection is gone.
    pub async fn next_push(&self) -> Option<Push> {
        self.pushes.lock().await.recv().await
    }

    /// The next push if one has arrived, without waiting.
    pub fn try_next_push(&self) -> Option<Push> {
        self.pushes.try_lock().ok()?.try_recv().ok()
    }
}

impl RelayConnection {
    /// The underlying QUIC connection, for tests that speak the protocol by hand.
    pub fn raw(&self) -> &quinn::Connection {
        &self.connection
    }
}
