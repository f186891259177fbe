//! Devices at the protocol level: authenticated connections that take what the relay
//! pushes or holds for them and acknowledge it, without MLS or a store. They stand for the members
//! of a group who are elsewhere, so that one machine can run a large group around one real
//! client engine.

use crate::harness::HarnessError;
use muster_driver::{Connection, Wake};
use muster_engine::HeldAcks;
use muster_proto::{AckItem, Delivery, Request, Response};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Fetches and acknowledges until nothing is waiting.
pub async fn drain(conn: &Connection) -> Result<(), HarnessError> {
    while !fetch_and_ack(conn).await?.is_empty() {}
    Ok(())
}

/// One fetch, acknowledged at once; returns the group sequence numbers it brought (a 0
/// stands for a Welcome, so that an empty list means nothing was waiting).
pub async fn fetch_and_ack(conn: &Connection) -> Result<Vec<u64>, HarnessError> {
    let Response::Deliveries(deliveries) = conn.request(&Request::Fetch { limit: 500 }).await?
    else {
        return Err(HarnessError::Setup("unexpected answer to Fetch".into()));
    };
    if deliveries.is_empty() {
        return Ok(Vec::new());
    }
    let items = deliveries.iter().map(Delivery::ack).collect();
    let seqs = deliveries
        .iter()
        .map(|d| match d {
            Delivery::Welcome { .. } => 0,
            Delivery::Group { seq, .. } => *seq,
        })
        .collect();
    conn.request(&Request::Ack { items }).await?;
    Ok(seqs)
}

/// The acknowledgements of messages the relay pushed, and their sequence numbers.
fn acks_for(deliveries: Vec<Delivery>) -> (Vec<AckItem>, Vec<u64>) {
    deliveries
        .into_iter()
        .filter_map(|d| match d {
            Delivery::Group { group_id, seq, .. } => Some((AckItem::Group { group_id, seq }, seq)),
            Delivery::Welcome { .. } => None,
        })
        .unzip()
}

/// A connected device as a real client runs one: it asks the relay to push its messages,
/// fetches whenever woken (and at first, which lets the pushes start), and acknowledges
/// everything it gets (pushed messages together, as [`HeldAcks`] holds them). Each call of `took` gets the group sequence numbers that came,
/// duplicates included; it returns true to stop.
async fn run_device(
    conn: &Connection,
    idle_look: Duration,
    mut took: impl FnMut(Vec<u64>) -> bool,
) -> Result<(), HarnessError> {
    let wakeups = conn.wakeups();
    match conn.request(&Request::Subscribe).await? {
        Response::Ok => {}
        other => {
            return Err(HarnessError::Setup(format!(
                "unexpected answer to Subscribe: {other:?}"
            )))
        }
    }
    let mut fetch = true;
    let mut held = HeldAcks::default();
    loop {
        if fetch {
            let items = held.take();
            if !items.is_empty() {
                conn.request(&Request::Ack { items }).await?;
            }
            let seqs = fetch_and_ack(conn).await?;
            if took(seqs.into_iter().filter(|&s| s > 0).collect()) {
                return Ok(());
            }
        }
        // A wake-up or pushed messages, or a periodic look in case a wake-up was missed.
        fetch = match wakeups.next(Some(idle_look)).await {
            Wake::Pushed => {
                let pushed = wakeups.take_pushed();
                let (items, seqs) = acks_for(pushed.deliveries);
                let now = Instant::now();
                held.hold(items, now);
                if held.due(now) {
                    conn.request(&Request::Ack { items: held.take() }).await?;
                }
                if !seqs.is_empty() && took(seqs) {
                    return Ok(());
                }
                pushed.fetch
            }
            Wake::TimedOut => true,
            Wake::Lost => return Err(HarnessError::Setup("a device lost its connection".into())),
        };
    }
}

/// A device that takes its messages as a connected client does until it holds `expected`
/// group messages; returns each one's sequence number and when it first had it.
pub async fn receive(
    conn: Connection,
    expected: usize,
) -> Result<Vec<(u64, Instant)>, HarnessError> {
    let mut got = HashMap::with_capacity(expected);
    run_device(&conn, Duration::from_millis(200), |seqs| {
        let now = Instant::now();
        for seq in seqs {
            got.entry(seq).or_insert(now);
        }
        got.len() >= expected
    })
    .await?;
    conn.close().await;
    Ok(got.into_iter().collect())
}

/// A device that takes its messages as a connected client does until `stop` is set;
/// returns how many group messages it had.
pub async fn follow(conn: Arc<Connection>, stop: Arc<AtomicBool>) -> Result<usize, HarnessError> {
    let mut got = HashSet::new();
    run_device(&conn, Duration::from_millis(100), |seqs| {
        got.extend(seqs);
        stop.load(Ordering::Relaxed)
    })
    .await?;
    Ok(got.len())
}
