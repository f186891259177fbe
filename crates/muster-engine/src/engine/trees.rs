//! Ratchet trees a large group's Welcomes leave out, fetched from the relay. The relay
//! cannot slip in a tree of its own: openmls checks it against the tree hash in the
//! GroupInfo the adder signed, and refuses the Welcome otherwise.

use super::*;
use muster_proto::RATCHET_TREE_CHUNK;

/// The largest ratchet tree this device fetches (about 80,000 members).
const MAX_RATCHET_TREE: u64 = 32 * 1024 * 1024;

/// The trees a fetched batch's Welcomes need, and the groups whose deliveries wait.
#[derive(Default)]
pub(super) struct WelcomeTrees {
    /// Trees fetched from the relay, by Welcome id.
    pub(super) trees: HashMap<u64, Vec<u8>>,
    /// Groups whose Welcome waits for its tree: neither it nor the group's messages in
    /// the batch are processed or acknowledged, so they come again.
    pub(super) waiting: HashSet<Vec<u8>>,
    /// Whether a fetch failed (the next sync tries again) rather than only being left for
    /// the next batch.
    pub(super) failed: bool,
}

impl WelcomeTrees {
    /// Whether a delivery waits for a later batch or sync.
    pub(super) fn holds(&self, delivery: &Delivery) -> bool {
        match delivery {
            Delivery::Welcome { group_id, .. } | Delivery::Group { group_id, .. } => {
                self.waiting.contains(group_id)
            }
        }
    }
}

impl Engine {
    /// Fetches the tree of the batch's first Welcome that leaves it out; later ones wait
    /// for the next batch, so at most one tree is held at a time. A Welcome whose tree
    /// could not be had waits too (with its group's messages), unacknowledged: it is
    /// tried again rather than lost.
    pub(super) async fn welcome_trees(
        &mut self,
        conn: &impl Link,
        deliveries: &[Delivery],
    ) -> Result<WelcomeTrees, EngineError> {
        let mut out = WelcomeTrees::default();
        for delivery in deliveries {
            let Delivery::Welcome {
                id,
                group_id,
                welcome,
            } = delivery
            else {
                continue;
            };
            if out.waiting.contains(group_id) {
                continue;
            }
            let Some(epoch) = self.epoch_of_treeless_welcome(welcome)? else {
                continue;
            };
            if !out.trees.is_empty() || out.failed {
                out.waiting.insert(group_id.clone());
                continue;
            }
            match fetch_ratchet_tree(conn, group_id, epoch).await {
                Ok(tree) => {
                    out.trees.insert(*id, tree);
                }
                Err(e @ (EngineError::Relay(_) | EngineError::Invalid(_))) => {
                    self.activity.problems.push(format!(
                        "a Welcome to {} waits for the group's ratchet tree: {e}",
                        self.group_label(group_id)
                    ));
                    out.waiting.insert(group_id.clone());
                    out.failed = true;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// The epoch a Welcome joins, when it leaves the ratchet tree out. Opening it takes the
    /// KeyPackage it was made for, so it is opened in a transaction that is rolled back.
    fn epoch_of_treeless_welcome(&mut self, bytes: &[u8]) -> Result<Option<u64>, EngineError> {
        let Ok(message) = MlsMessageIn::tls_deserialize_exact(bytes) else {
            return Ok(None);
        };
        let MlsMessageBodyIn::Welcome(welcome) = message.extract() else {
            return Ok(None);
        };
        let tx = self.db.transaction()?;
        let provider = Provider::new(&self.crypto, &tx);
        let epoch = ProcessedWelcome::new_from_welcome(&provider, &join_config(), welcome)
            .ok()
            .map(|opened| opened.unverified_group_info().clone())
            .filter(|info| info.extensions().ratchet_tree().is_none())
            .map(|info| info.group_context().epoch().as_u64());
        tx.rollback()?;
        Ok(epoch)
    }
}

/// A group's ratchet tree at `epoch` (TLS encoded), in chunks from the relay.
async fn fetch_ratchet_tree(
    conn: &impl Link,
    group_id: &[u8],
    epoch: u64,
) -> Result<Vec<u8>, EngineError> {
    let mut tree = Vec::new();
    loop {
        let (total, chunk) = ask!(conn, Request::RatchetTree {
            group_id: group_id.to_vec(),
            epoch,
            offset: tree.len() as u64,
        }, Response::RatchetTree { total, chunk } => (total, chunk));
        if total > MAX_RATCHET_TREE {
            return Err(EngineError::Invalid(format!(
                "the relay offered a ratchet tree of {total} bytes, over the {MAX_RATCHET_TREE}-byte limit"
            )));
        }
        // Every chunk but the last is whole: a relay cannot drag a fetch out byte by byte.
        let expected = total
            .checked_sub(tree.len() as u64)
            .map(|left| left.min(RATCHET_TREE_CHUNK as u64));
        if total == 0 || expected != Some(chunk.len() as u64) {
            return Err(EngineError::Invalid(
                "the relay's ratchet tree chunks do not add up to its length".into(),
            ));
        }
        tree.extend_from_slice(&chunk);
        if tree.len() as u64 == total {
            return Ok(tree);
        }
    }
}
