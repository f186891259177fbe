//! Ratchet trees a large group's Welcomes leave out, fetched from the relay. The relay
//! cannot slip in a tree of its own: openmls checks it against the tree hash in the
//! GroupInfo the adder signed, and refuses the Welcome otherwise.

use super::*;

/// The largest ratchet tree this device fetches (about 80,000 members).
const MAX_RATCHET_TREE: u64 = 32 * 1024 * 1024;

impl Engine {
    /// The trees the batch's Welcomes leave out, by Welcome id. A tree the relay does not
    /// have is left missing: the Welcome is then refused with the reason.
    pub(super) async fn welcome_trees(
        &mut self,
        conn: &impl Link,
        deliveries: &[Delivery],
    ) -> Result<HashMap<u64, Vec<u8>>, EngineError> {
        let mut trees = HashMap::new();
        for delivery in deliveries {
            let Delivery::Welcome {
                id,
                group_id,
                welcome,
            } = delivery
            else {
                continue;
            };
            let Some(epoch) = self.epoch_of_treeless_welcome(welcome)? else {
                continue;
            };
            match fetch_ratchet_tree(conn, group_id, epoch).await {
                Ok(tree) => {
                    trees.insert(*id, tree);
                }
                Err(EngineError::Relay(_)) | Err(EngineError::Invalid(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(trees)
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
pub(crate) async fn fetch_ratchet_tree(
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
        if chunk.is_empty() || tree.len() as u64 + chunk.len() as u64 > total {
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
