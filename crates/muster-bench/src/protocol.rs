//! Devices at the protocol level: authenticated connections that fetch what the relay
//! holds for them and acknowledge it, without MLS or a store. They stand for the members
//! of a group who are elsewhere, so that one machine can run a large group around one real
//! client engine.

use crate::harness::HarnessError;
use muster_driver::Connection;
use muster_proto::{AckItem, Delivery, Request, Response};
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
    let mut seqs = Vec::new();
    let items = deliveries
        .into_iter()
        .map(|d| match d {
            Delivery::Welcome { id, .. } => {
                seqs.push(0);
                AckItem::Welcome { id }
            }
            Delivery::Group { group_id, seq, .. } => {
                seqs.push(seq);
                AckItem::Group { group_id, seq }
            }
        })
        .collect();
    conn.request(&Request::Ack { items }).await?;
    Ok(seqs)
}

/// A device that fetches on every wake-up until it holds `expected` group messages;
/// returns each one's sequence number and when it had it.
pub async fn receive(
    conn: Connection,
    expected: usize,
) -> Result<Vec<(u64, Instant)>, HarnessError> {
    let wakeups = conn.wakeups();
    let mut got = Vec::with_capacity(expected);
    while got.len() < expected {
        let seqs = fetch_and_ack(&conn).await?;
        let now = Instant::now();
        got.extend(seqs.into_iter().filter(|&s| s > 0).map(|s| (s, now)));
        if got.len() < expected {
            // A wake-up, or a periodic look in case one was missed.
            wakeups.next(Some(Duration::from_millis(200))).await;
        }
    }
    conn.close().await;
    Ok(got)
}

/// A device that fetches on every wake-up until `stop` is set; returns how many group
/// messages it fetched.
pub async fn follow(conn: Arc<Connection>, stop: Arc<AtomicBool>) -> Result<usize, HarnessError> {
    let wakeups = conn.wakeups();
    let mut fetched = 0;
    loop {
        let seqs = fetch_and_ack(&conn).await?;
        fetched += seqs.iter().filter(|&&s| s > 0).count();
        if stop.load(Ordering::Relaxed) {
            return Ok(fetched);
        }
        if seqs.is_empty() {
            wakeups.next(Some(Duration::from_millis(100))).await;
        }
    }
}
