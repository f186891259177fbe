//! Pushing group messages to subscribed connections: one ordered stream per connection,
//! fed by the worker in the order it stored the messages, written in batches.

use muster_net::write_frame;
use muster_proto::{encode, Delivery, Push};
use muster_relay_core::StoredMessage;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Message bytes queued for one connection at most: past it the connection is woken to
/// fetch instead, so a device that does not keep up cannot make the relay hold its
/// messages, and under load deliveries go in large fetches rather than a queue that grows.
const MAX_QUEUED_BYTES: usize = 256 * 1024;
/// Message bytes gathered into one push frame, besides its first message (at most 1 MiB):
/// the frame stays under the frame limit.
const FRAME_BYTES: usize = 512 * 1024;
/// What a queued delivery costs besides its message.
const DELIVERY_OVERHEAD: usize = 64;

/// A message as it waits in push queues: one copy shared by every connection's queue,
/// without the group's member list.
pub struct Queued {
    group_id: Vec<u8>,
    seq: u64,
    message: Arc<[u8]>,
}

impl Queued {
    pub fn of(stored: &StoredMessage) -> Arc<Self> {
        Arc::new(Self {
            group_id: stored.group_id.clone(),
            seq: stored.seq,
            message: stored.message.clone(),
        })
    }
}

/// The queue of one connection's pushes.
pub struct Pusher {
    queue: mpsc::UnboundedSender<(Arc<Queued>, u64)>,
    queued_bytes: Arc<AtomicUsize>,
}

impl Pusher {
    /// Starts the writer of `conn`'s push stream (on the current Tokio runtime).
    pub fn start(conn: quinn::Connection) -> Self {
        let (queue, waiting) = mpsc::unbounded_channel();
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        tokio::spawn(write_pushes(conn, waiting, queued_bytes.clone()));
        Self {
            queue,
            queued_bytes,
        }
    }

    /// Queues a stored message, stamped with the relay's revocation position; false when
    /// the connection is gone or too far behind, and it must be woken to fetch instead.
    pub fn offer(&self, message: &Arc<Queued>, revocations: u64) -> bool {
        let cost = cost(message);
        let queued = self.queued_bytes.fetch_add(cost, Ordering::AcqRel);
        if queued + cost > MAX_QUEUED_BYTES
            || self.queue.send((message.clone(), revocations)).is_err()
        {
            self.queued_bytes.fetch_sub(cost, Ordering::AcqRel);
            return false;
        }
        true
    }
}

fn cost(queued: &Queued) -> usize {
    DELIVERY_OVERHEAD + queued.group_id.len() + queued.message.len()
}

fn delivery(queued: &Queued) -> Delivery {
    Delivery::Group {
        group_id: queued.group_id.clone(),
        seq: queued.seq,
        message: queued.message.to_vec(),
    }
}

/// Writes what is queued, as many deliveries per frame as are waiting, on one stream.
/// A write that fails closes the connection: the device must not go on being pushed
/// messages that follow ones it never got.
async fn write_pushes(
    conn: quinn::Connection,
    mut waiting: mpsc::UnboundedReceiver<(Arc<Queued>, u64)>,
    queued_bytes: Arc<AtomicUsize>,
) {
    let mut stream = None;
    while let Some((first, mut revocations)) = waiting.recv().await {
        let mut bytes = cost(&first);
        let mut deliveries = vec![delivery(&first)];
        while bytes < FRAME_BYTES {
            let Ok((next, stamp)) = waiting.try_recv() else {
                break;
            };
            bytes += cost(&next);
            revocations = revocations.max(stamp);
            deliveries.push(delivery(&next));
        }
        let frame = encode(&Push::Deliveries {
            deliveries,
            revocations,
        });
        if stream.is_none() {
            stream = conn.open_uni().await.ok();
        }
        let written = match (&mut stream, frame) {
            (Some(stream), Ok(frame)) => write_frame(stream, &frame).await.is_ok(),
            _ => false,
        };
        queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
        if !written {
            conn.close(6u32.into(), b"pushed deliveries could not be written");
            return;
        }
    }
}
