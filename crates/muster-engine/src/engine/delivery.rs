//! When delivery receipts go out. In a small group each one goes at the next sync. In a
//! large group a device holds them until the oldest message it owes one for is
//! [`RECEIPT_HOLD_MS`] old, then covers everything owed in one receipt: a message read
//! meanwhile is covered by its read receipt alone, so a text everyone reads at once costs
//! one receipt per reader instead of two. A device going offline sends what it held
//! ([`Engine::send_held_receipts`]); a device staying online wakes when they fall due
//! ([`Engine::delivery_receipts_due_in`]).

use super::*;

/// Groups with more members than this hold their delivery receipts.
const RECEIPT_HOLD_MEMBERS: usize = 20;
/// How long a delivery receipt is held in a large group.
pub(super) const RECEIPT_HOLD_MS: i64 = 5_000;

impl Engine {
    fn member_count(&mut self, group_id: &[u8]) -> Result<usize, EngineError> {
        if let Some(&n) = self.member_counts.get(group_id) {
            return Ok(n);
        }
        let provider = Provider::new(&self.crypto, &self.db);
        let n = load_group(&provider, group_id)?.members().count();
        self.member_counts.insert(group_id.to_vec(), n);
        Ok(n)
    }

    /// When the oldest message of this group still owed a delivery receipt arrived (ms).
    fn oldest_owed_delivery(&self, group_id: &[u8]) -> Result<Option<i64>, EngineError> {
        Ok(self
            .db
            .prepare_cached(
                "SELECT MIN(received_at) FROM messages WHERE group_id = ?1 AND delivered_receipt_due = 1",
            )?
            .query_row([group_id], |r| r.get(0))?)
    }

    /// Whether this group's delivery receipts must wait (a large group whose oldest owed
    /// one is younger than the hold) at `now`.
    pub(super) fn delivery_receipts_held(
        &mut self,
        group_id: &[u8],
        now: i64,
    ) -> Result<bool, EngineError> {
        if self.flushing_held_receipts || self.member_count(group_id)? <= RECEIPT_HOLD_MEMBERS {
            return Ok(false);
        }
        // A clock stepped back leaves nothing held for longer than the hold.
        Ok(self
            .oldest_owed_delivery(group_id)?
            .is_some_and(|oldest| (0..RECEIPT_HOLD_MS).contains(&now.saturating_sub(oldest))))
    }

    /// Queues the delivery receipts every active group owes now (those held back stay
    /// owed); the time of this pass bounds [`Engine::delivery_receipts_due_in`].
    pub(super) fn queue_delivery_receipts(&mut self) -> Result<(), EngineError> {
        self.receipts_checked_at = now_ms();
        for group_id in self.active_group_ids()? {
            self.queue_receipts(&group_id, ReceiptKind::Delivered, None)?;
        }
        Ok(())
    }

    /// How long until held delivery receipts fall due, if some will after the last pass
    /// that queued them: a live device syncs then. Receipts that were already due at that
    /// pass and still wait (the group's archive is missing, say) are left to the next
    /// sync, so a device never spins on them.
    pub fn delivery_receipts_due_in(&mut self) -> Result<Option<std::time::Duration>, EngineError> {
        let owed: Vec<(Vec<u8>, i64)> = self
            .db
            .prepare_cached(
                "SELECT m.group_id, MIN(m.received_at) FROM messages m
                   JOIN groups g ON g.group_id = m.group_id AND g.state = ?1
                 WHERE m.delivered_receipt_due = 1 GROUP BY m.group_id",
            )?
            .query_map([GroupState::Active], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let now = now_ms();
        let mut soonest: Option<i64> = None;
        for (group_id, oldest) in owed {
            // After the clock stepped back, owed receipts are not held (see above).
            let due = if oldest > now {
                now
            } else {
                oldest.saturating_add(RECEIPT_HOLD_MS)
            };
            if due <= self.receipts_checked_at
                || self.member_count(&group_id)? <= RECEIPT_HOLD_MEMBERS
            {
                continue;
            }
            soonest = Some(soonest.map_or(due, |s| s.min(due)));
        }
        Ok(soonest
            .map(|due| std::time::Duration::from_millis(due.saturating_sub(now).max(0) as u64)))
    }

    /// Sends every delivery receipt owed, held ones included: the device is about to go
    /// offline (a one-shot command ends).
    pub async fn send_held_receipts(&mut self, conn: &impl Link) -> Result<(), EngineError> {
        let owed: bool = self
            .db
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM messages WHERE delivered_receipt_due = 1)",
            )?
            .query_row([], |r| r.get(0))?;
        if !owed {
            return Ok(());
        }
        self.flushing_held_receipts = true;
        let queued = self.queue_delivery_receipts();
        self.flushing_held_receipts = false;
        queued?;
        self.flush_outbox(conn).await
    }
}
