//! The QUIC edge of the relay: accepts connections, decodes frames, runs requests on the
//! blocking relay core and pushes wake-ups to connected devices.

use crate::cluster::Place;
use muster_net::{read_frame, write_frame, RelayIdentity};
use muster_proto::{decode, encode, ErrorCode, Push, RelayError, Request, Response};
use muster_relay_core::{
    Admission, AnonymousLimits, ConnectionState, Precheck, PushRoute, Relay, Routed, StoreError,
    StoredMessage,
};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot use data directory: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("TLS configuration failed: {0}")]
    Tls(String),
    #[error("no relay data in {0}: run `muster-relay serve --data {0}` first")]
    NoData(String),
    #[error("unhealthy: {0}")]
    Unhealthy(String),
}

pub(crate) const DB_FILE: &str = "relay.db";
/// Open connections one device may hold at once.
const MAX_CONNECTIONS_PER_DEVICE: usize = 16;
/// Where `serve` records the address it listens on, for `health`.
const ADDR_FILE: &str = "listen-addr";
/// A connection must authenticate within this time, or it is closed (an enrolment's
/// connection is closed by its client right after).
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// A TLS handshake must finish within this time, or its slot is given back.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Anonymous requests one connection may make before it must authenticate.
const MAX_ANONYMOUS_REQUESTS_PER_CONNECTION: u32 = 8;

fn open_relay(place: &Place) -> Result<(Relay, RelayIdentity), ServeError> {
    if let Some(url) = &place.database {
        return crate::cluster::open_shared(&place.data, url, place.blobs.clone());
    }
    let data = &place.data;
    std::fs::create_dir_all(data)?;
    let identity = RelayIdentity::load_or_create(data)?;
    let relay = Relay::open(&data.join(DB_FILE), identity.fingerprint())?;
    Ok((relay, identity))
}

/// The relay's state for a command that serves nothing (stats, audit, a bootstrap token):
/// on a shared database neither the data directory nor the TLS identity is touched.
fn open_existing(place: &Place) -> Result<Relay, ServeError> {
    if let Some(url) = &place.database {
        let blobs = place
            .blobs
            .clone()
            .unwrap_or_else(|| place.data.join("blobs"));
        return Ok(Relay::attach_postgres(url, blobs)?);
    }
    if !place.data.join(DB_FILE).exists() {
        return Err(ServeError::NoData(place.data.display().to_string()));
    }
    Ok(open_relay(place)?.0)
}

pub fn bootstrap_token(place: &Place) -> Result<(), ServeError> {
    let relay = open_existing(place)?;
    if relay.org()?.is_some() {
        eprintln!("muster-relay: note: an organisation is already registered; this token can no longer be used to create one");
    }
    println!("{}", relay.new_bootstrap_token()?);
    Ok(())
}

pub async fn health(data: &Path, relay: Option<String>) -> Result<(), ServeError> {
    let identity = RelayIdentity::load_or_create(data)?;
    let addr = match relay {
        Some(a) => a,
        None => std::fs::read_to_string(data.join(ADDR_FILE))
            .map_err(|_| ServeError::NoData(data.display().to_string()))?
            .trim()
            .to_string(),
    };
    let fingerprint = identity.fingerprint();
    let connect = muster_net::RelayConnection::connect(&addr, &fingerprint);
    let conn = tokio::time::timeout(std::time::Duration::from_secs(3), connect)
        .await
        .map_err(|_| ServeError::Unhealthy(format!("no answer from {addr} within 3 seconds")))?
        .map_err(|e| ServeError::Unhealthy(e.to_string()))?;
    let answer = conn.request(&Request::Health).await;
    conn.close().await;
    match answer {
        Ok(Response::Health {
            org_registered,
            storage_ok: true,
        }) => {
            println!(
                "healthy: relay at {addr} answers; organisation {}",
                if org_registered {
                    "registered"
                } else {
                    "not yet registered"
                }
            );
            Ok(())
        }
        Ok(Response::Health { .. }) => Err(ServeError::Unhealthy("relay storage failing".into())),
        Ok(_) => Err(ServeError::Unhealthy("unexpected answer".into())),
        Err(e) => Err(ServeError::Unhealthy(e.to_string())),
    }
}

pub fn stats(place: &Place) -> Result<(), ServeError> {
    let relay = open_existing(place)?;
    let stats = relay.stats()?;
    println!("devices: {}", stats.devices);
    println!("pending enrolments: {}", stats.pending_enrolments);
    println!("groups: {}", stats.groups);
    println!("stored messages: {}", stats.stored_messages);
    println!("queued deliveries: {}", stats.queued_deliveries);
    println!("attachment bytes: {}", relay.blob_bytes()?);
    if place.database.is_some() {
        println!("database: PostgreSQL, shared by the organisation's relays");
    } else {
        let data = &place.data;
        let wal = data.join(format!("{DB_FILE}-wal"));
        let size = std::fs::metadata(data.join(DB_FILE))?.len()
            + std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0);
        println!("database bytes: {size}");
    }
    Ok(())
}

pub fn audit(place: &Place, limit: usize, json: bool) -> Result<(), ServeError> {
    let relay = open_existing(place)?;
    for e in relay.audit_events(limit)? {
        let at = rfc3339(e.at);
        let group = e.group.as_deref().map(hex::encode);
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "at": at, "event": e.event, "actor": e.actor,
                    "subject": e.subject, "group": group,
                })
            );
        } else {
            let group = group.map(|g| format!(" group {g}")).unwrap_or_default();
            println!("{at}  {:<20} {} -> {}{group}", e.event, e.actor, e.subject);
        }
    }
    Ok(())
}

fn rfc3339(secs: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

/// Open connections of each authenticated device, for pushes.
#[derive(Default)]
pub(crate) struct Connected {
    by_device: Mutex<HashMap<String, HashMap<u64, Pushable>>>,
}

/// A connection the relay can wake, and whether a wake-up is already on its way that the
/// device has not answered with a fetch yet: one is enough, however many messages arrive.
/// A subscribed one has its messages pushed when its route allows.
#[derive(Clone)]
struct Pushable {
    conn: quinn::Connection,
    woken: Arc<AtomicBool>,
    route: Arc<Mutex<PushRoute>>,
    pusher: Arc<OnceLock<crate::pushes::Pusher>>,
}

impl Connected {
    /// Registers a device's connection; refuses one past the per-device limit.
    fn add(&self, device: &str, id: u64, pushable: Pushable) -> bool {
        let mut map = self.by_device.lock().unwrap_or_else(|e| e.into_inner());
        let conns = map.entry(device.to_string()).or_default();
        if conns.len() >= MAX_CONNECTIONS_PER_DEVICE {
            return false;
        }
        conns.insert(id, pushable);
        true
    }

    /// Routes a stored message to every connection of the group's devices (see
    /// [`PushRoute::route`]): pushes it where it is the next message, and returns the
    /// connections that need no wake-up for it. `receivers` are the devices it is for.
    pub(crate) fn route(
        &self,
        stored: &StoredMessage,
        receivers: &BTreeSet<String>,
        revocations: u64,
    ) -> HashSet<u64> {
        let map = self.by_device.lock().unwrap_or_else(|e| e.into_inner());
        let mut handled = HashSet::new();
        let queued = crate::pushes::Queued::of(stored);
        for device in &stored.members {
            let receives = receivers.contains(device);
            for (id, pushable) in map.get(device).into_iter().flatten() {
                let mut route = pushable.route.lock().unwrap_or_else(|e| e.into_inner());
                match route.route(&stored.group_id, stored.seq, receives) {
                    Routed::Nothing => {
                        handled.insert(*id);
                    }
                    Routed::Push => {
                        let offered = pushable
                            .pusher
                            .get()
                            .is_some_and(|pusher| pusher.offer(&queued, revocations));
                        if offered {
                            handled.insert(*id);
                        } else {
                            route.lose();
                        }
                    }
                    Routed::Wake => {}
                }
            }
        }
        handled
    }

    fn remove(&self, device: &str, id: u64) {
        let mut map = self.by_device.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(conns) = map.get_mut(device) {
            conns.remove(&id);
            if conns.is_empty() {
                map.remove(device);
            }
        }
    }

    /// Closes every open connection of these devices at once.
    /// The devices connected now.
    pub(crate) fn devices(&self) -> Vec<String> {
        let map = self.by_device.lock().unwrap_or_else(|e| e.into_inner());
        map.keys().cloned().collect()
    }

    pub(crate) fn disconnect<'a>(&self, devices: impl IntoIterator<Item = &'a String>) {
        let mut map = self.by_device.lock().unwrap_or_else(|e| e.into_inner());
        for device in devices {
            for pushable in map.remove(device).into_iter().flat_map(|c| c.into_values()) {
                pushable.conn.close(2u32.into(), b"device revoked");
            }
        }
    }

    /// Tells these devices that deliveries wait (once until they fetch), except on the
    /// connections in `handled`.
    pub(crate) fn wake<'a>(
        &self,
        devices: impl IntoIterator<Item = &'a String>,
        handled: &HashSet<u64>,
    ) {
        self.push(devices, &Push::Wake, handled);
    }

    /// Tells these devices that something other than deliveries changed.
    pub(crate) fn changed<'a>(&self, devices: impl IntoIterator<Item = &'a String>) {
        self.push(devices, &Push::Changed, &HashSet::new());
    }

    fn push<'a>(
        &self,
        devices: impl IntoIterator<Item = &'a String>,
        push: &Push,
        handled: &HashSet<u64>,
    ) {
        let map = self.by_device.lock().unwrap_or_else(|e| e.into_inner());
        let frame = encode(push).expect("push encodes");
        for device in devices {
            for (id, pushable) in map.get(device).into_iter().flatten() {
                if handled.contains(id) {
                    continue;
                }
                if *push == Push::Wake && pushable.woken.swap(true, Ordering::AcqRel) {
                    continue;
                }
                let conn = pushable.conn.clone();
                let frame = frame.clone();
                tokio::spawn(async move {
                    if let Ok(mut send) = conn.open_uni().await {
                        let _ = write_frame(&mut send, &frame).await;
                        let _ = send.finish();
                    }
                });
            }
        }
    }
}

struct Shared {
    relay: Arc<Mutex<Relay>>,
    /// Requests for the worker thread, which handles them in group commits.
    jobs: std::sync::mpsc::Sender<crate::worker::Job>,
    connected: Arc<Connected>,
    next_connection: AtomicU64,
    /// Unauthenticated connections and anonymous requests, per source address.
    admission: Mutex<Admission>,
    fingerprint: String,
}

/// Per-device storage and rate limits, and what anonymous peers may do.
pub struct Quotas {
    /// Encrypted attachment bytes held at once.
    pub blob_bytes: u64,
    /// Message bytes waiting for recipients who have not fetched them yet.
    pub queue_bytes: u64,
    /// Per-device request and post rates.
    pub rates: muster_relay_core::RateLimits,
    /// Unauthenticated connections and anonymous request rates.
    pub anonymous: AnonymousLimits,
    /// How long a stored message waits for devices that have not fetched it.
    pub message_retention_secs: u64,
}

/// How often expired messages and blobs are collected.
const HOUSEKEEPING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(600);

pub async fn serve(place: Place, listen: SocketAddr, quotas: Quotas) -> Result<(), ServeError> {
    let data = place.data.clone();
    // The PostgreSQL client blocks on a runtime of its own, so database work started from
    // this runtime's threads runs outside it.
    let (mut relay, identity) = tokio::task::block_in_place(|| open_relay(&place))?;
    relay.set_blob_quota(quotas.blob_bytes);
    relay.set_queue_quota(quotas.queue_bytes);
    relay.set_rate_limits(quotas.rates);
    relay.set_message_retention(quotas.message_retention_secs);
    let server_config = identity
        .server_config()
        .map_err(|e| ServeError::Tls(e.to_string()))?;
    let endpoint = muster_net::endpoint_for_many(listen, Some(server_config))?;
    let local = endpoint.local_addr()?;
    std::fs::write(data.join(ADDR_FILE), local.to_string())?;
    println!("muster-relay listening on {local}");
    println!("data directory: {}", data.display());
    if place.database.is_some() {
        println!("database: PostgreSQL, shared with the organisation's other relays");
    }
    println!("certificate fingerprint: {}", identity.fingerprint());
    tokio::task::block_in_place(|| -> Result<(), ServeError> {
        match relay.org()? {
            None => println!("bootstrap token: {}", relay.new_bootstrap_token()?),
            Some(org) => println!("organisation: {} ({})", org.name, org.org_id),
        }
        Ok(())
    })?;
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let origin = relay.origin().to_string();
    let relay = Arc::new(Mutex::new(relay));
    let connected = Arc::new(Connected::default());
    if let Some(url) = &place.database {
        crate::cluster::follow_others(
            url.clone(),
            origin,
            muster_relay_core::AnnouncementKey::from_relay_key(identity.key_der()),
            connected.clone(),
            tokio::runtime::Handle::current(),
        );
    }
    let shared = Arc::new(Shared {
        jobs: crate::worker::start(relay.clone(), connected.clone()),
        relay,
        connected,
        next_connection: AtomicU64::new(1),
        admission: Mutex::new(Admission::new(quotas.anonymous, std::time::Instant::now())),
        fingerprint: identity.fingerprint(),
    });
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING_INTERVAL);
    loop {
        tokio::select! {
            _ = housekeeping.tick() => {
                let collected = tokio::task::block_in_place(|| {
                    shared.relay.lock().unwrap_or_else(|e| e.into_inner()).collect_expired()
                });
                match collected {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(messages = n, "deleted messages past their retention"),
                    Err(e) => tracing::warn!(error = %e, "collecting expired messages failed"),
                }
            }
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                // A peer first proves it receives at its address (a stateless QUIC Retry),
                // so the caps below cannot be filled with forged source addresses.
                if !incoming.remote_address_validated() {
                    tracing::trace!(peer = %incoming.remote_address(), "asked to prove its address");
                    let _ = incoming.retry();
                    continue;
                }
                let address = incoming.remote_address().ip();
                let admitted = shared
                    .admission
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .admit_connection(address, std::time::Instant::now());
                if !admitted {
                    // Refused before any TLS work is spent on it.
                    tracing::debug!(%address, "refused a connection: too many unauthenticated from this address");
                    incoming.refuse();
                    continue;
                }
                let shared = shared.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, incoming).await {
                        Ok(Ok(conn)) => handle_connection(shared, conn, address).await,
                        Ok(Err(e)) => {
                            release(&shared, address);
                            tracing::debug!(error = %e, "handshake failed");
                        }
                        Err(_) => {
                            release(&shared, address);
                            tracing::debug!("handshake timed out");
                        }
                    }
                });
            }
            _ = &mut shutdown => {
                tracing::info!("shutting down");
                break;
            }
        }
    }
    endpoint.close(0u32.into(), b"relay shutting down");
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), endpoint.wait_idle()).await;
    println!("muster-relay stopped");
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// An unauthenticated connection from `address` ended or authenticated.
fn release(shared: &Shared, address: IpAddr) {
    shared
        .admission
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .release(address);
}

async fn handle_connection(shared: Arc<Shared>, conn: quinn::Connection, address: IpAddr) {
    let id = shared.next_connection.fetch_add(1, Ordering::Relaxed);
    let state = Arc::new(Mutex::new(ConnectionState::default()));
    let registered: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let pushable = Pushable {
        conn: conn.clone(),
        woken: Arc::new(AtomicBool::new(false)),
        route: Default::default(),
        pusher: Default::default(),
    };
    let anonymous = Arc::new(Mutex::new(AnonymousConnection {
        address,
        counted: true,
        requests: 0,
    }));
    {
        // A connection that has not authenticated in time is closed.
        let (conn, registered) = (conn.clone(), registered.clone());
        tokio::spawn(async move {
            tokio::time::sleep(HANDSHAKE_TIMEOUT).await;
            if registered
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_none()
            {
                conn.close(4u32.into(), b"authenticate within 10 seconds");
            }
        });
    }
    while let Ok((send, recv)) = conn.accept_bi().await {
        let shared = shared.clone();
        let connection = ConnectionContext {
            id,
            state: state.clone(),
            registered: registered.clone(),
            pushable: pushable.clone(),
            anonymous: anonymous.clone(),
        };
        tokio::spawn(async move {
            if let Err(e) = handle_stream(&shared, &connection, send, recv).await {
                tracing::debug!(error = %e, "stream ended with an error");
            }
        });
    }
    let device = registered.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(device) = device {
        shared.connected.remove(&device, id);
    }
    let mut anonymous = anonymous.lock().unwrap_or_else(|e| e.into_inner());
    if anonymous.counted {
        anonymous.counted = false;
        release(&shared, address);
    }
}

/// A connection's standing before it authenticates.
struct AnonymousConnection {
    address: IpAddr,
    /// It still counts against the unauthenticated-connection caps.
    counted: bool,
    /// Anonymous requests it made.
    requests: u32,
}

/// What every request stream of one connection shares.
struct ConnectionContext {
    id: u64,
    state: Arc<Mutex<ConnectionState>>,
    /// The device, once it authenticated and was registered for pushes.
    registered: Arc<Mutex<Option<String>>>,
    /// The connection, as wake-ups and pushes reach it.
    pushable: Pushable,
    anonymous: Arc<Mutex<AnonymousConnection>>,
}

async fn handle_stream(
    shared: &Arc<Shared>,
    connection: &ConnectionContext,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Result<(), muster_net::FrameError> {
    let ConnectionContext {
        id,
        state,
        registered,
        pushable,
        anonymous,
    } = connection;
    let (id, conn, woken) = (*id, &pushable.conn, &pushable.woken);
    let response = match read_frame(&mut recv).await {
        Ok(Some(frame)) => match decode::<Request>(&frame) {
            Ok(request) => {
                if matches!(request, Request::Fetch { .. }) {
                    // Anything stored from here on is either in this fetch or wakes again.
                    woken.store(false, Ordering::Release);
                }
                if registered
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_none()
                    && !admit_anonymous(
                        shared,
                        anonymous,
                        matches!(request, Request::Hello { .. } | Request::Prove { .. }),
                    )
                {
                    let refusal = Response::Error(RelayError::new(
                        ErrorCode::RateLimited,
                        "too many requests before authentication from this address; try again later",
                    ));
                    write_frame(&mut send, &encode(&refusal).expect("error encodes")).await?;
                    let _ = send.finish();
                    conn.close(5u32.into(), b"too many anonymous requests");
                    return Ok(());
                }
                // What needs no database is answered here, outside the relay's lock.
                let precheck = state
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .answer_without_relay(request, &shared.fingerprint);
                let request = match precheck {
                    Precheck::Answered(outcome) => {
                        return respond(&mut send, outcome.response).await;
                    }
                    Precheck::NeedsRelay(request) => request,
                };
                let subscribing = matches!(request, Request::Subscribe);
                let (reply, answer) = tokio::sync::oneshot::channel();
                let job = crate::worker::Job {
                    state: state.clone(),
                    route: pushable.route.clone(),
                    request,
                    reply,
                };
                let outcome = match shared.jobs.send(job) {
                    Ok(()) => answer.await.map_err(|_| ()),
                    Err(_) => Err(()),
                };
                match outcome {
                    Ok((outcome, device, handled)) => {
                        if subscribing && outcome.response == Response::Ok {
                            // Until it exists, what would be pushed wakes the device instead.
                            pushable
                                .pusher
                                .get_or_init(|| crate::pushes::Pusher::start(conn.clone()));
                        }
                        if let Some(device) = device {
                            let mut reg = registered.lock().unwrap_or_else(|e| e.into_inner());
                            if reg.is_none() {
                                let mut anonymous =
                                    anonymous.lock().unwrap_or_else(|e| e.into_inner());
                                if anonymous.counted {
                                    anonymous.counted = false;
                                    release(shared, anonymous.address);
                                }
                                if !shared.connected.add(&device, id, pushable.clone()) {
                                    conn.close(
                                        3u32.into(),
                                        b"too many connections from this device",
                                    );
                                    return Ok(());
                                }
                                *reg = Some(device);
                            }
                        }
                        shared.connected.disconnect(outcome.disconnect.iter());
                        shared.connected.wake(outcome.wake.iter(), &handled);
                        shared.connected.changed(outcome.changed.iter());
                        // Older devices ignore `Changed`; a wake-up that finds nothing to
                        // fetch has them (and newer ones) sync whole all the same.
                        shared
                            .connected
                            .wake(outcome.changed.iter(), &HashSet::new());
                        outcome.response
                    }
                    Err(_) => Response::Error(RelayError::new(
                        ErrorCode::Internal,
                        "request handler failed",
                    )),
                }
            }
            Err(e) => Response::Error(RelayError::new(
                ErrorCode::BadRequest,
                format!("malformed request frame: {e}"),
            )),
        },
        Ok(None) => return Ok(()),
        Err(e @ muster_net::FrameError::TooLarge(_)) => {
            Response::Error(RelayError::new(ErrorCode::TooLarge, e.to_string()))
        }
        Err(e) => return Err(e),
    };
    respond(&mut send, response).await
}

/// Counts an anonymous request against its connection and its address (and, unless it
/// is a device logging in, against the total).
fn admit_anonymous(shared: &Shared, anonymous: &Mutex<AnonymousConnection>, logs_in: bool) -> bool {
    let mut anonymous = anonymous.lock().unwrap_or_else(|e| e.into_inner());
    anonymous.requests += 1;
    if anonymous.requests > MAX_ANONYMOUS_REQUESTS_PER_CONNECTION {
        return false;
    }
    shared
        .admission
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .admit_request(anonymous.address, logs_in, std::time::Instant::now())
}

async fn respond(
    send: &mut quinn::SendStream,
    response: Response,
) -> Result<(), muster_net::FrameError> {
    let body = encode(&response).unwrap_or_else(|_| {
        encode(&Response::Error(RelayError::new(
            ErrorCode::Internal,
            "response too large",
        )))
        .expect("error encodes")
    });
    write_frame(send, &body).await?;
    let _ = send.finish();
    Ok(())
}
