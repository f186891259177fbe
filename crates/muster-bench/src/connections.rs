//! `connections`: many authenticated, idle devices connected to one relay at once, and
//! what each costs the relay in resident memory.
//!
//! The bench speaks the wire protocol itself: it registers an organisation with a root
//! key of its own, enrols and approves every device (each with its own Ed25519 key and
//! certificate), then connects and authenticates them all over one client UDP socket.

use crate::harness::{resident_bytes, HarnessError, RelayProcess, Scratch};
use crate::report::{ms, Report};
use crate::wire_org::{authenticate, bootstrap, enrol_many, unexpected, DeviceKey, CONCURRENCY};
use muster_net::RelayConnection;
use muster_proto::{Request, Response};
use std::sync::Arc;
use std::time::Instant;

async fn bounded<T, F>(jobs: Vec<F>) -> Result<Vec<T>, HarnessError>
where
    F: std::future::Future<Output = Result<T, HarnessError>>,
{
    crate::harness::bounded(CONCURRENCY, jobs).await
}

pub async fn run(devices: usize) -> Result<Report, HarnessError> {
    let scratch = Scratch::new("connections")?;
    let relay = RelayProcess::start(&scratch.path().join("relay"))?;
    let admin = bootstrap(&relay).await?;
    let enrol_started = Instant::now();
    let keys: Vec<DeviceKey> = enrol_many(&admin, &relay, "device", devices)
        .await?
        .into_iter()
        .map(|d| d.key)
        .collect();
    let enrol_time = enrol_started.elapsed();

    let before = resident_bytes(relay.pid())?;
    let endpoint =
        muster_net::endpoint_for_many("127.0.0.1:0".parse().expect("valid address"), None)?;
    let endpoint = Arc::new(endpoint);
    let connect_started = Instant::now();
    let connections = bounded(
        keys.iter()
            .map(|key| {
                let endpoint = endpoint.clone();
                let relay = &relay;
                async move {
                    let conn = RelayConnection::connect_via(
                        (*endpoint).clone(),
                        &relay.addr,
                        &relay.fingerprint,
                    )
                    .await?;
                    authenticate(&conn, key, &relay.fingerprint).await?;
                    Ok(conn)
                }
            })
            .collect(),
    )
    .await?;
    let connect_time = connect_started.elapsed();
    // Every device proves it is still served: one cheap request each.
    let served = bounded(
        connections
            .iter()
            .map(|conn| async move {
                match conn.request(&Request::KeyPackageCount).await? {
                    Response::KeyPackageCount { .. } => Ok(()),
                    other => Err(unexpected("KeyPackageCount", other)),
                }
            })
            .collect(),
    )
    .await?
    .len();
    let after = resident_bytes(relay.pid())?;
    let per_connection = after.saturating_sub(before) as f64 / devices.max(1) as f64;

    let mut report = Report::new("connections");
    report.set("devices", devices);
    report.set("connected", served);
    report.set("enrol_ms", ms(enrol_time));
    report.set("connect_ms", ms(connect_time));
    report.set("relay_rss_before_bytes", before);
    report.set("relay_rss_after_bytes", after);
    report.set("bytes_per_connection", per_connection.round());
    report.set(
        "kib_per_connection",
        (per_connection / 1024.0 * 10.0).round() / 10.0,
    );
    drop(connections);
    Ok(report)
}
