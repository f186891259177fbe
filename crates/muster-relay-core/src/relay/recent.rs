//! Each group's latest application messages, kept in memory as they are stored, so that
//! connected devices (which fetch what just arrived) are served without reading SQLite.
//! SQLite stays the durable record: a log holds only what was committed, is contiguous up
//! to the group's newest message, and a fetch it cannot answer whole goes to SQLite.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// How many messages, and how many bytes of them, a group's log holds at most.
const MAX_ENTRIES: usize = 4096;
const MAX_BYTES: usize = 8 * 1024 * 1024;
/// How many bytes all logs together hold at most: beyond it they start again empty.
const MAX_TOTAL_BYTES: usize = 256 * 1024 * 1024;

/// One stored message.
pub(super) struct Entry {
    pub seq: u64,
    pub sender: Arc<str>,
    pub application: bool,
    pub data: Arc<[u8]>,
    /// The users it is for, as stored ([`crate::schema::audience_text`]); `None` for all.
    pub audience: Option<Arc<str>>,
}

/// What an entry costs besides its message and audience: its fields, the queue slot and
/// the allocations' headers.
const ENTRY_OVERHEAD: usize = 96;

impl Entry {
    /// The memory this entry holds, as counted against the limits.
    fn cost(&self) -> usize {
        self.data.len() + self.audience.as_deref().map_or(0, str::len) + ENTRY_OVERHEAD
    }

    /// Whether a fetch by `device` of `user` gets this message.
    pub fn is_for(&self, device: &str, needle: &str) -> bool {
        !(self.application && *self.sender == *device)
            && self.audience.as_deref().is_none_or(|a| a.contains(needle))
    }
}

/// A group's messages from `first_seq` to its newest, without a gap.
#[derive(Default)]
pub(super) struct GroupLog {
    entries: VecDeque<Entry>,
    bytes: usize,
}

impl GroupLog {
    /// The first message held, if any.
    fn first_seq(&self) -> Option<u64> {
        self.entries.front().map(|e| e.seq)
    }

    /// Whether every message after `after` (up to the newest) is here.
    pub fn covers_after(&self, after: u64) -> bool {
        match (self.first_seq(), self.entries.back()) {
            (Some(first), Some(_)) => first <= after.saturating_add(1),
            _ => false,
        }
    }

    /// The highest seq from `after` on up to which nothing is for `device` (of the user
    /// `needle` finds): a device that has everything up to `after` has everything up to
    /// it. `None` when this log does not hold what follows `after`.
    pub fn nothing_for_after(&self, after: u64, device: &str, needle: &str) -> Option<u64> {
        if !self.covers_after(after) {
            return None;
        }
        let mut upto = after;
        for entry in self.after(after) {
            if entry.is_for(device, needle) {
                break;
            }
            upto = entry.seq;
        }
        Some(upto)
    }

    /// The messages after `after`, oldest first.
    pub fn after(&self, after: u64) -> impl Iterator<Item = &Entry> {
        let start = match self.first_seq() {
            Some(first) if after.saturating_add(1) > first => {
                ((after.saturating_add(1) - first) as usize).min(self.entries.len())
            }
            _ => 0,
        };
        self.entries.range(start..)
    }
}

/// The logs of every group with recent traffic.
#[derive(Default)]
pub(super) struct RecentLogs {
    groups: HashMap<Vec<u8>, GroupLog>,
    /// The bytes of every log together.
    total: usize,
}

impl RecentLogs {
    /// Records a message just committed as `seq`, the group's newest. A gap (a message
    /// stored without passing here) starts the log afresh.
    pub fn push(&mut self, group_id: &[u8], entry: Entry) {
        let cost = entry.cost();
        if self.total + cost > MAX_TOTAL_BYTES {
            self.clear();
        }
        let log = self.groups.entry(group_id.to_vec()).or_default();
        if log
            .entries
            .back()
            .is_some_and(|last| last.seq + 1 != entry.seq)
        {
            self.total -= log.bytes;
            *log = GroupLog::default();
        }
        log.bytes += cost;
        self.total += cost;
        log.entries.push_back(entry);
        while log.entries.len() > MAX_ENTRIES || log.bytes > MAX_BYTES {
            if let Some(old) = log.entries.pop_front() {
                log.bytes -= old.cost();
                self.total -= old.cost();
            }
        }
    }

    /// Forgets a group's log (something was stored there that did not pass here).
    pub fn forget(&mut self, group_id: &[u8]) {
        if let Some(log) = self.groups.remove(group_id) {
            self.total -= log.bytes;
        }
    }

    /// Forgets every log (messages were deleted by age, or the logs grew too large).
    pub fn clear(&mut self) {
        self.groups.clear();
        self.total = 0;
    }

    /// Drops what every member has: messages up to `seq`.
    pub fn delivered(&mut self, group_id: &[u8], seq: u64) {
        if let Some(log) = self.groups.get_mut(group_id) {
            while log.entries.front().is_some_and(|e| e.seq <= seq) {
                if let Some(old) = log.entries.pop_front() {
                    log.bytes -= old.cost();
                    self.total -= old.cost();
                }
            }
            if log.entries.is_empty() {
                self.groups.remove(group_id);
            }
        }
    }

    pub fn get(&self, group_id: &[u8]) -> Option<&GroupLog> {
        self.groups.get(group_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64) -> Entry {
        Entry {
            seq,
            sender: Arc::from("d"),
            application: true,
            data: Arc::from(vec![seq as u8; 10]),
            audience: None,
        }
    }

    #[test]
    fn a_log_answers_only_what_it_holds_without_a_gap() {
        let mut logs = RecentLogs::default();
        let g = b"g".as_slice();
        for seq in 5..=9 {
            logs.push(g, entry(seq));
        }
        let log = logs.get(g).unwrap();
        assert!(log.covers_after(4) && log.covers_after(7) && log.covers_after(9));
        assert!(!log.covers_after(3), "seq 4 is not held");
        let after: Vec<u64> = log.after(6).map(|e| e.seq).collect();
        assert_eq!(after, [7, 8, 9]);
        assert_eq!(log.after(9).count(), 0);
        // A gap starts afresh.
        logs.push(g, entry(11));
        assert!(!logs.get(g).unwrap().covers_after(9));
        assert!(logs.get(g).unwrap().covers_after(10));
        logs.delivered(g, 11);
        assert!(logs.get(g).is_none());
        assert_eq!(logs.total, 0, "every byte is accounted for");
    }
}
