//! Each device's queue: fetching, acknowledging, and pruning what everyone has.

use super::*;
use crate::schema::audience_needle;

impl Relay {
    /// Deletes what waited past its retention: messages some recipient never fetched
    /// (after the message retention, [`muster_proto::MESSAGE_RETENTION_SECS`] unless set
    /// otherwise), their resend records, Welcomes never taken and the ratchet trees they
    /// kept, and expired or abandoned attachment blobs. Returns how many messages went.
    pub fn collect_expired(&mut self) -> Result<usize, StoreError> {
        self.collect_expired_blobs().map_err(|e| match e {
            Failure::Store(e) => e,
            Failure::Refuse(e) => StoreError::Corrupt(e.to_string()),
        })?;
        let cutoff = now_unix().saturating_sub(self.message_retention_secs) as i64;
        let tx = self.db.transaction()?;
        Self::release_queued(
            &tx,
            "SELECT sender_device, CAST(SUM(length(data) + COALESCE(length(audience), 0)) AS BIGINT) FROM messages WHERE stored_at < ?1
             GROUP BY sender_device",
            params![cutoff],
        )?;
        let deleted = exec(
            &tx,
            "DELETE FROM messages WHERE stored_at < ?1",
            params![cutoff],
        )?;
        exec(
            &tx,
            "DELETE FROM sent_ids WHERE stored_at < ?1",
            params![cutoff],
        )?;
        // A Welcome nobody took within the retention goes too, and the trees only it kept.
        exec(
            &tx,
            "DELETE FROM welcomes WHERE stored_at < ?1",
            params![cutoff],
        )?;
        Self::prune_trees(&tx, None)?;
        tx.commit()?;
        self.recent.clear();
        Ok(deleted)
    }

    /// Subtracts from each sender's queued bytes the sums that `select` returns.
    pub(super) fn release_queued(
        tx: &Transaction,
        select: &str,
        params: impl Params,
    ) -> Result<(), DbError> {
        let sums: Vec<(String, i64)> = tx
            .prepare_cached(select)?
            .query_map(params, |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        for (device, bytes) in sums {
            exec(
                tx,
                "UPDATE queued_bytes SET bytes = MAX(0, bytes - ?2) WHERE device_id = ?1",
                params![device, bytes],
            )?;
        }
        Ok(())
    }

    /// Deletes a group's messages that every device still in it (and every removed device
    /// still owed messages) has acknowledged. Returns the mark they were deleted up to,
    /// and how many memberships it looked at (what the next one will cost).
    pub(super) fn prune_delivered(
        tx: &Transaction,
        group_id: &[u8],
    ) -> Result<(i64, u64), Failure> {
        let (waiting, looked_at): (Option<i64>, i64) = row(
            tx,
            "SELECT MIN(COALESCE(c.acked_seq, ms.from_seq - 1)), COUNT(*) FROM memberships ms
               JOIN devices d ON d.device_id = ms.device_id AND d.status = 'approved'
               LEFT JOIN cursors c ON c.device_id = ms.device_id AND c.group_id = ms.group_id
             WHERE ms.group_id = ?1
               AND (ms.to_seq IS NULL OR COALESCE(c.acked_seq, ms.from_seq - 1) < ms.to_seq)",
            params![group_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let delivered_up_to = match waiting {
            Some(seq) => seq,
            None => Self::group_state(tx, group_id)?.1 as i64,
        };
        Self::release_queued(
            tx,
            "SELECT sender_device, CAST(SUM(length(data) + COALESCE(length(audience), 0)) AS BIGINT) FROM messages WHERE group_id = ?1 AND seq <= ?2
             GROUP BY sender_device",
            params![group_id, delivered_up_to],
        )?;
        exec(
            tx,
            "DELETE FROM messages WHERE group_id = ?1 AND seq <= ?2",
            params![group_id, delivered_up_to],
        )?;
        Ok((delivered_up_to, looked_at.max(0) as u64))
    }

    /// How far `device` had acknowledged `group_id` (the lowest over its memberships).
    pub(super) fn acked_up_to(
        tx: &Transaction,
        device: &str,
        group_id: &[u8],
    ) -> Result<Option<i64>, Failure> {
        Ok(row(
            tx,
            "SELECT MIN(COALESCE(c.acked_seq, ms.from_seq - 1)) FROM memberships ms
               LEFT JOIN cursors c ON c.device_id = ms.device_id AND c.group_id = ms.group_id
             WHERE ms.device_id = ?1 AND ms.group_id = ?2",
            params![device, group_id],
            |r| r.get(0),
        )?)
    }

    pub(super) fn fetch(&self, session: &Session, limit: u32) -> Result<Outcome, Failure> {
        let limit = limit.clamp(1, MAX_FETCH) as i64;
        let mut deliveries = Vec::new();
        let mut budget = FetchBudget::default();
        let mut stmt = self.db.prepare_cached(
            "SELECT id, group_id, data FROM welcomes WHERE device_id = ?1 ORDER BY id LIMIT ?2",
        )?;
        for row in stmt.query_map(params![session.device_id, limit], |r| {
            Ok(Delivery::Welcome {
                id: r.get::<_, i64>(0)? as u64,
                group_id: r.get(1)?,
                welcome: r.get(2)?,
            })
        })? {
            let delivery = row?;
            if !budget.admit(&delivery) {
                return Ok(fetched(deliveries, None));
            }
            deliveries.push(delivery);
        }
        let remaining = limit - deliveries.len() as i64;
        if remaining == 0 {
            return Ok(fetched(deliveries, None));
        }
        let memberships = self.memberships(&session.device_id)?;
        let (before, budget_before) = (deliveries.len(), budget.clone());
        if self.fetch_recent(
            session,
            &memberships,
            remaining as usize,
            &mut budget,
            &mut deliveries,
        ) {
            // Every test run checks the logs against the durable record.
            #[cfg(debug_assertions)]
            {
                let mut stored = deliveries[..before].to_vec();
                let mut budget = budget_before;
                self.fetch_stored(session, remaining, &mut budget, &mut stored)?;
                assert_eq!(stored, deliveries, "the recent log differs from SQLite");
            }
            #[cfg(not(debug_assertions))]
            let _ = (before, budget_before);
        } else {
            self.fetch_stored(session, remaining, &mut budget, &mut deliveries)?;
        }
        let complete = !budget.refused && (deliveries.len() as i64) < limit;
        let positions = complete.then(|| Membership::positions(&memberships));
        Ok(fetched(deliveries, positions))
    }

    /// The device's memberships, ordered by group, with how far each was acknowledged.
    fn memberships(&self, device_id: &str) -> Result<Vec<Membership>, Failure> {
        let mut stmt = self.db.prepare_cached(
            "SELECT ms.group_id, MAX(ms.from_seq - 1, COALESCE(c.acked_seq, 0)), ms.to_seq, g.last_seq
             FROM memberships ms
             JOIN groups g ON g.group_id = ms.group_id
             LEFT JOIN cursors c ON c.device_id = ms.device_id AND c.group_id = ms.group_id
             WHERE ms.device_id = ?1 ORDER BY ms.group_id",
        )?;
        let rows = stmt
            .query_map([device_id], |r| {
                Ok(Membership {
                    group_id: r.get(0)?,
                    after: r.get::<_, i64>(1)?.max(0) as u64,
                    to_seq: r.get::<_, Option<i64>>(2)?.map(|to| to.max(0) as u64),
                    last_seq: r.get::<_, i64>(3)?.max(0) as u64,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// A fetch's group messages, read from SQLite.
    fn fetch_stored(
        &self,
        session: &Session,
        remaining: i64,
        budget: &mut FetchBudget,
        deliveries: &mut Vec<Delivery>,
    ) -> Result<(), Failure> {
        {
            let mut stmt = self.db.prepare_cached(
                // Messages are read from past the device's cursor along the primary key
                // (CROSS JOIN keeps that order), not from its membership start: the
                // messages other members still hold back are never scanned.
                "SELECT m.group_id, m.seq, m.data FROM memberships ms
                 LEFT JOIN cursors c ON c.device_id = ms.device_id AND c.group_id = ms.group_id
                 CROSS JOIN messages m ON m.group_id = ms.group_id
                   AND m.seq > MAX(ms.from_seq - 1, COALESCE(c.acked_seq, 0))
                 WHERE ms.device_id = ?1 AND (ms.to_seq IS NULL OR m.seq <= ms.to_seq)
                   AND NOT (m.sender_device = ?1 AND m.kind = 'application')
                   AND (m.audience IS NULL OR instr(m.audience, ?3) > 0)
                 ORDER BY m.group_id, m.seq LIMIT ?2",
            )?;
            let needle = audience_needle(&session.user);
            for row in stmt.query_map(params![session.device_id, remaining, needle], |r| {
                Ok(Delivery::Group {
                    group_id: r.get(0)?,
                    seq: r.get::<_, i64>(1)? as u64,
                    message: r.get(2)?,
                })
            })? {
                let delivery = row?;
                if !budget.admit(&delivery) {
                    break;
                }
                deliveries.push(delivery);
            }
        }
        Ok(())
    }

    /// Serves a fetch's group messages from the recent logs, when they hold all of it:
    /// what the SQL query in [`Self::fetch`] would return, in its order. Returns false
    /// (having added nothing) when they do not.
    fn fetch_recent(
        &self,
        session: &Session,
        memberships: &[Membership],
        limit: usize,
        budget: &mut FetchBudget,
        deliveries: &mut Vec<Delivery>,
    ) -> bool {
        // Every group with something to fetch must be held whole, and each group must be
        // one membership (a device added again has two, which the SQL query handles).
        let mut wanted = Vec::new();
        for (i, membership) in memberships.iter().enumerate() {
            if i > 0 && memberships[i - 1].group_id == membership.group_id {
                return false;
            }
            let after = membership.after;
            let end = membership.end();
            if end <= after {
                continue;
            }
            match self.recent.get(&membership.group_id) {
                Some(log) if log.covers_after(after) => {
                    wanted.push((&membership.group_id, log, after, end))
                }
                _ => return false,
            }
        }
        let mut taken = 0;
        let needle = audience_needle(&session.user);
        'groups: for (group_id, log, after, end) in wanted {
            for entry in log.after(after) {
                if entry.seq > end || taken == limit {
                    break;
                }
                if !entry.is_for(&session.device_id, &needle) {
                    continue;
                }
                let delivery = Delivery::Group {
                    group_id: group_id.clone(),
                    seq: entry.seq,
                    message: entry.data.to_vec(),
                };
                if !budget.admit(&delivery) {
                    break 'groups;
                }
                deliveries.push(delivery);
                taken += 1;
            }
        }
        true
    }

    pub(super) fn ack(&mut self, session: &Session, items: &[AckItem]) -> Result<Outcome, Failure> {
        if items.len() > MAX_FETCH as usize {
            return Err(refuse(
                ErrorCode::TooLarge,
                "too many acknowledgements at once",
            ));
        }
        // An acknowledgement need not reach the disk before its answer: one lost in a
        // power cut only brings those messages again, and devices skip what they hold.
        // In WAL mode the database stays consistent, and the next message stored
        // (synchronous=FULL) makes the acknowledgement durable too.
        if self.grouped.is_some() {
            // A group commit is on: nothing waits for the disk until it ends, and an
            // acknowledgement alone does not make it sync.
            let before = self.db.total_changes();
            let outcome = self.move_cursors(session, items);
            let acked = self.db.total_changes() - before;
            self.grouped = self.grouped.map(|baseline| baseline + acked);
            return outcome;
        }
        self.db.begin_grouped()?;
        let outcome = self.move_cursors(session, items);
        self.db.end_grouped(false)?;
        outcome
    }

    fn move_cursors(&mut self, session: &Session, items: &[AckItem]) -> Result<Outcome, Failure> {
        let tx = self.db.transaction()?;
        // A cursor is a high-water mark: only the highest acknowledged seq per group counts.
        let mut acked_groups: std::collections::BTreeMap<&[u8], u64> = Default::default();
        let mut welcomed_groups = BTreeSet::new();
        for item in items {
            match item {
                AckItem::Welcome { id } => {
                    let group: Option<Vec<u8>> = row(
                        &tx,
                        "DELETE FROM welcomes WHERE id = ?1 AND device_id = ?2 RETURNING group_id",
                        params![*id as i64, session.device_id],
                        |r| r.get(0),
                    )
                    .optional()?;
                    welcomed_groups.extend(group);
                }
                AckItem::Group { group_id, seq } => {
                    let highest = acked_groups.entry(group_id.as_slice()).or_default();
                    *highest = (*highest).max(*seq);
                }
            }
        }
        for group_id in &welcomed_groups {
            Self::prune_trees(&tx, Some(group_id))?;
        }
        // Messages right after that are for other members only (receipts) count as
        // acknowledged too, or they would hold the group's mark back until this device
        // next gets something.
        let needle = audience_needle(&session.user);
        for (group_id, seq) in acked_groups.iter_mut() {
            *seq = (*seq).min(i64::MAX as u64);
            let from_memory = self
                .recent
                .get(group_id)
                .and_then(|log| log.nothing_for_after(*seq, &session.device_id, &needle));
            *seq = match from_memory {
                Some(upto) => upto,
                None => Self::nothing_stored_for_after(&tx, group_id, *seq, session, &needle)?,
            };
        }
        // Only a device that was holding a group's mark back can move it.
        let mut holders = Vec::new();
        for group_id in acked_groups.keys() {
            let before = Self::acked_up_to(&tx, &session.device_id, group_id)?;
            let mark = self.delivered_marks.get(*group_id);
            if mark.is_none_or(|mark| before.is_none_or(|before| before <= *mark)) {
                holders.push(group_id.to_vec());
            }
        }
        for (group_id, seq) in &acked_groups {
            exec(
                &tx,
                "INSERT INTO cursors (device_id, group_id, acked_seq) VALUES (?1, ?2, ?3)
                 ON CONFLICT (device_id, group_id) DO UPDATE SET acked_seq = MAX(cursors.acked_seq, excluded.acked_seq)",
                params![session.device_id, group_id, (*seq).min(i64::MAX as u64) as i64],
            )?;
        }
        // Pruning reads every membership of the group; in a large group where everyone
        // acknowledges, it runs once per so many acknowledgements (a sixteenth of its
        // members), so that an acknowledgement costs about sixteen rows however large the
        // group. What waits longer is only deleted later.
        let mut marks = Vec::with_capacity(holders.len());
        for group_id in holders {
            let debt = self.prune_debts.entry(group_id.clone()).or_default();
            debt.acks += 1;
            if debt.acks * PRUNE_ROWS_PER_ACK < debt.rows {
                continue;
            }
            let (mark, rows) = Self::prune_delivered(&tx, &group_id)?;
            marks.push((group_id, mark, rows));
        }
        tx.commit()?;
        for (group_id, mark, rows) in marks {
            self.recent.delivered(&group_id, mark.max(0) as u64);
            self.prune_debts
                .insert(group_id.clone(), PruneDebt { acks: 0, rows });
            self.delivered_marks.insert(group_id, mark);
        }
        Ok(Outcome::reply(Response::Ok))
    }
}

impl Relay {
    /// [`recent::GroupLog::nothing_for_after`], read from SQLite.
    fn nothing_stored_for_after(
        tx: &Transaction,
        group_id: &[u8],
        after: u64,
        session: &Session,
        needle: &str,
    ) -> Result<u64, Failure> {
        let next: Option<i64> = row(
            tx,
            "SELECT seq FROM messages WHERE group_id = ?1 AND seq > ?2
               AND NOT (sender_device = ?3 AND kind = 'application')
               AND (audience IS NULL OR instr(audience, ?4) > 0)
             ORDER BY seq LIMIT 1",
            params![group_id, after as i64, session.device_id, needle],
            |r| r.get(0),
        )
        .optional()?;
        Ok(match next {
            Some(next) => (next.max(1) as u64 - 1).max(after),
            None => {
                let last: Option<i64> = row(
                    tx,
                    "SELECT last_seq FROM groups WHERE group_id = ?1",
                    params![group_id],
                    |r| r.get(0),
                )
                .optional()?;
                last.map_or(after, |last| after.max(last.max(0) as u64))
            }
        })
    }
}

/// Membership rows a group's pruning may read per acknowledgement, amortised.
const PRUNE_ROWS_PER_ACK: u64 = 16;

/// Acknowledgements since a group was last pruned, and how many memberships that read.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct PruneDebt {
    acks: u64,
    rows: u64,
}

/// Keeps one fetch answer within a frame: at least one delivery, then up to
/// [`FETCH_BYTES`] of message bytes.
#[derive(Default, Clone)]
pub(super) struct FetchBudget {
    used: usize,
    /// A delivery was left for a later fetch.
    refused: bool,
}

impl FetchBudget {
    fn admit(&mut self, delivery: &Delivery) -> bool {
        let size = match delivery {
            Delivery::Welcome { welcome, .. } => welcome.len(),
            Delivery::Group { message, .. } => message.len(),
        };
        if self.used > 0 && self.used + size > FETCH_BYTES {
            self.refused = true;
            return false;
        }
        self.used += size.max(1);
        true
    }
}

/// One of a device's memberships of a group, as a fetch sees it.
struct Membership {
    group_id: Vec<u8>,
    /// What the device already has: acknowledged, or before it joined.
    after: u64,
    to_seq: Option<u64>,
    last_seq: u64,
}

impl Membership {
    /// The last message of the group this membership gets.
    fn end(&self) -> u64 {
        self.to_seq
            .map_or(self.last_seq, |to| to.min(self.last_seq))
    }

    /// After a complete fetch: each group the device is in now, once, with the seq up to
    /// which it was handed everything.
    fn positions(memberships: &[Membership]) -> Vec<(Vec<u8>, u64)> {
        // A device added to a group again has two memberships of it: it fetches that
        // group before any push.
        memberships
            .chunk_by(|a, b| a.group_id == b.group_id)
            .filter_map(|chunk| match chunk {
                [m] if m.to_seq.is_none() => Some((m.group_id.clone(), m.last_seq)),
                _ => None,
            })
            .collect()
    }
}

/// A fetch's answer, and what it did to the connection's pushes: positions when it
/// handed over everything waiting.
fn fetched(deliveries: Vec<Delivery>, positions: Option<Vec<(Vec<u8>, u64)>>) -> Outcome {
    Outcome {
        stream: Some(match positions {
            Some(positions) => crate::push::StreamChange::Synced(positions),
            None => crate::push::StreamChange::Unsynced,
        }),
        ..Outcome::reply(Response::Deliveries(deliveries))
    }
}
