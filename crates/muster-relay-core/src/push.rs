//! Which stored messages a connection may be pushed, and which need a wake-up instead.
//!
//! A subscribed connection is pushed a group's message only when it has been handed
//! everything for that device in the group before it: by a complete fetch, or by the
//! pushes since. The relay's worker decides for every stored message in the order it
//! stored them, and pushes travel on one stream per connection, so a device never sees a
//! group's message before one that precedes it. Anything else (no position yet, a gap,
//! a commit in between, a push queue that is full) falls back to a wake-up and a fetch,
//! which hands the connection everything and sets its positions again.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// An application message just stored, for the connections that may be pushed it.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub group_id: Vec<u8>,
    pub seq: u64,
    pub message: Arc<[u8]>,
    /// Every device in the group when it was stored, those it is not for included: each
    /// of them has had everything up to it once it had everything before.
    pub members: BTreeSet<String>,
}

/// What a connection's own request did to its pushes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamChange {
    /// It asked to be pushed its messages.
    Subscribe,
    /// A complete fetch handed it every message up to these, per group.
    Synced(Vec<(Vec<u8>, u64)>),
    /// A fetch left messages for later: nothing is pushed until a complete one.
    Unsynced,
}

/// What to do with a stored message for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed {
    /// Push it: it is the next for this connection in its group.
    Push,
    /// Nothing to send: it is not for this device (or the connection had it already),
    /// and no wake-up is needed for it.
    Nothing,
    /// The connection is not known to hold what precedes it: wake it to fetch.
    Wake,
}

/// One connection's standing for pushes: whether it subscribed, and per group the seq up
/// to which it has been handed everything meant for its device.
#[derive(Debug, Default)]
pub struct PushRoute {
    subscribed: bool,
    positions: HashMap<Vec<u8>, u64>,
}

impl PushRoute {
    /// Takes in what one of the connection's own requests did.
    pub fn apply(&mut self, change: StreamChange) {
        match change {
            StreamChange::Subscribe => self.subscribed = true,
            StreamChange::Synced(positions) if self.subscribed => {
                self.positions = positions.into_iter().collect();
            }
            StreamChange::Synced(_) | StreamChange::Unsynced => self.positions.clear(),
        }
    }

    /// Forgets every position: something this connection was handed may not have reached
    /// it (a push queue overflowed, a group commit failed), so it fetches before any push.
    pub fn lose(&mut self) {
        self.positions.clear();
    }

    /// Decides for message `seq` of `group_id`, which the connection's device `receives`
    /// (or, as a member it is not for, only passes).
    pub fn route(&mut self, group_id: &[u8], seq: u64, receives: bool) -> Routed {
        let position = self.positions.get_mut(group_id);
        match position {
            Some(position) if *position >= seq => Routed::Nothing,
            Some(position) if *position + 1 == seq => {
                *position = seq;
                if receives {
                    Routed::Push
                } else {
                    Routed::Nothing
                }
            }
            _ if receives => Routed::Wake,
            _ => Routed::Nothing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synced(route: &mut PushRoute, seq: u64) {
        route.apply(StreamChange::Subscribe);
        route.apply(StreamChange::Synced(vec![(b"g".to_vec(), seq)]));
    }

    #[test]
    fn the_next_message_is_pushed_and_a_gap_wakes() {
        let mut route = PushRoute::default();
        synced(&mut route, 5);
        assert_eq!(route.route(b"g", 6, true), Routed::Push);
        assert_eq!(route.route(b"g", 7, true), Routed::Push);
        // Seq 8 never passed here (a commit): 9 must be fetched.
        assert_eq!(route.route(b"g", 9, true), Routed::Wake);
        assert_eq!(route.route(b"g", 10, true), Routed::Wake);
    }

    #[test]
    fn messages_for_others_move_the_position_without_a_push() {
        let mut route = PushRoute::default();
        synced(&mut route, 5);
        assert_eq!(route.route(b"g", 6, false), Routed::Nothing);
        assert_eq!(route.route(b"g", 7, true), Routed::Push);
    }

    #[test]
    fn what_a_later_fetch_handed_over_is_neither_pushed_nor_woken_for() {
        let mut route = PushRoute::default();
        synced(&mut route, 9);
        assert_eq!(route.route(b"g", 8, true), Routed::Nothing);
        assert_eq!(route.route(b"g", 9, true), Routed::Nothing);
    }

    #[test]
    fn nothing_is_pushed_without_a_subscription_a_complete_fetch_or_after_a_loss() {
        let mut route = PushRoute::default();
        route.apply(StreamChange::Synced(vec![(b"g".to_vec(), 5)]));
        assert_eq!(route.route(b"g", 6, true), Routed::Wake, "not subscribed");
        route.apply(StreamChange::Subscribe);
        assert_eq!(route.route(b"g", 7, true), Routed::Wake, "no fetch yet");
        synced(&mut route, 7);
        route.apply(StreamChange::Unsynced);
        assert_eq!(route.route(b"g", 8, true), Routed::Wake, "partial fetch");
        synced(&mut route, 8);
        route.lose();
        assert_eq!(route.route(b"g", 9, true), Routed::Wake, "lost");
        assert_eq!(
            route.route(b"other", 1, true),
            Routed::Wake,
            "unknown group"
        );
    }
}
