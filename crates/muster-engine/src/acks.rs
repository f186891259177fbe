//! Acknowledgements of pushed messages, held briefly and sent together: a busy group's
//! members then cost the relay one acknowledgement per device every so often rather than
//! one per message. Nothing is lost by the wait: an acknowledgement only lets the relay
//! forget what was delivered, and a device skips a message it already holds.

use muster_proto::AckItem;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Acknowledgements waiting to be sent, at most one per group (the highest sequence
/// number: the relay's cursors are high-water marks) plus any Welcomes.
#[derive(Debug, Default)]
pub struct HeldAcks {
    groups: BTreeMap<Vec<u8>, u64>,
    welcomes: Vec<u64>,
    since: Option<Instant>,
}

impl HeldAcks {
    /// How long an acknowledgement waits for others at most.
    pub const HOLD: Duration = Duration::from_millis(1000);

    /// Holds these acknowledgements, as of `now`.
    pub fn hold(&mut self, items: impl IntoIterator<Item = AckItem>, now: Instant) {
        for item in items {
            match item {
                AckItem::Group { group_id, seq } => {
                    let highest = self.groups.entry(group_id).or_default();
                    *highest = (*highest).max(seq);
                }
                AckItem::Welcome { id } => self.welcomes.push(id),
            }
            self.since.get_or_insert(now);
        }
    }

    /// Whether the oldest held one has waited [`Self::HOLD`] by `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.since
            .is_some_and(|since| now.saturating_duration_since(since) >= Self::HOLD)
    }

    /// How long until the oldest held one falls due by `now`; `None` when none is held.
    pub fn due_in(&self, now: Instant) -> Option<Duration> {
        self.since
            .map(|since| (since + Self::HOLD).saturating_duration_since(now))
    }

    /// Takes everything held, to send now.
    pub fn take(&mut self) -> Vec<AckItem> {
        self.since = None;
        let welcomes = std::mem::take(&mut self.welcomes)
            .into_iter()
            .map(|id| AckItem::Welcome { id });
        let groups = std::mem::take(&mut self.groups)
            .into_iter()
            .map(|(group_id, seq)| AckItem::Group { group_id, seq });
        welcomes.chain(groups).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_acknowledgements_keep_the_highest_per_group_and_fall_due_together() {
        let start = Instant::now();
        let mut held = HeldAcks::default();
        assert!(!held.due(start + HeldAcks::HOLD));
        assert_eq!(held.due_in(start), None);
        let group = |g: u8, seq| AckItem::Group {
            group_id: vec![g],
            seq,
        };
        held.hold([group(1, 5), group(2, 3)], start);
        held.hold(
            [group(1, 4), group(1, 7), AckItem::Welcome { id: 9 }],
            start,
        );
        assert!(!held.due(start + HeldAcks::HOLD / 2));
        assert_eq!(
            held.due_in(start + HeldAcks::HOLD / 2),
            Some(HeldAcks::HOLD / 2)
        );
        assert!(held.due(start + HeldAcks::HOLD));
        assert_eq!(
            held.take(),
            [AckItem::Welcome { id: 9 }, group(1, 7), group(2, 3)]
        );
        assert!(held.take().is_empty());
        assert!(!held.due(start + HeldAcks::HOLD * 10));
    }
}
