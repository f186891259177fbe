//! The timed duties of incident command: which are due on this device (an alert's
//! reminder and raise, an overdue task's flag), claiming them, deciding this device's
//! claims once the relay sequenced them, and posting a raise it won or takes over. See
//! `incidents.rs` for which device acts when, and [`crate::crisis`] for how a claim counts.

// Rows are read from SQL straight into tuples, one per query.
#![allow(clippy::type_complexity)]

use super::*;
use crate::content::{describe_duration, DutyKind, Escalation, MAX_WAIT_SECS};
use crate::crisis::{self, takeover_after_ms};

/// What a device does when a duty falls due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// Claims it in the group; the first claim the relay sequences counts.
    Claim(DutyKind),
    /// Raises the alert at once: another device's claim won, and its raise never came.
    RaiseNow,
}

/// A duty that falls due on this device.
struct DueDuty {
    group_id: Vec<u8>,
    subject: String,
    action: Action,
    due_at: i64,
}

impl Engine {
    /// Members of the group asked to answer an alert by `sender`: everyone but the sender
    /// and service accounts (bots, the archive).
    pub(super) fn asked_members(
        &self,
        group_id: &[u8],
        sender: &str,
    ) -> Result<Vec<String>, EngineError> {
        let view = self.group_view(group_id)?;
        Ok(view
            .members
            .into_iter()
            .filter(|u| {
                u != sender && !view.bot_members.contains(u) && !view.archive_members.contains(u)
            })
            .collect())
    }

    fn silent_members(
        &self,
        group_id: &[u8],
        alert: &str,
        sender: &str,
    ) -> Result<Vec<String>, EngineError> {
        let answered: Vec<String> = self
            .db
            .prepare_cached("SELECT user FROM acks WHERE group_id = ?1 AND message_id = ?2")?
            .query_map(params![group_id, alert], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(self
            .asked_members(group_id, sender)?
            .into_iter()
            .filter(|u| !answered.contains(u))
            .collect())
    }

    /// The duties this device may carry out, with when each falls due for it.
    fn pending_duties(&self) -> Result<Vec<(DueDuty, Vec<String>)>, EngineError> {
        let me = self.device()?.user;
        let now = now_ms();
        let since = now.saturating_sub(2 * MAX_WAIT_SECS as i64 * 1000);
        let alerts: Vec<(Vec<u8>, String, String, i64, String)> = self
            .db
            .prepare_cached(
                "SELECT m.group_id, m.id, m.sender, m.sent_at, m.escalation
                 FROM messages m JOIN groups g ON g.group_id = m.group_id AND g.state = ?1
                 WHERE m.escalation IS NOT NULL AND m.kind = 'alert' AND m.deleted = 0 AND m.sent_at > ?2",
            )?
            .query_map(params![GroupState::Active, since], |r| r.try_into())?
            .collect::<Result<_, _>>()?;
        let mut due = Vec::new();
        for (group_id, id, sender, sent_at, escalation) in alerts {
            let Ok(e) = serde_json::from_str::<Escalation>(&escalation) else {
                continue;
            };
            let Some((action, wait, from)) = self.next_step(&group_id, &id, &sender, &e)? else {
                continue;
            };
            let silent = self.silent_members(&group_id, &id, &sender)?;
            if silent.is_empty() {
                continue;
            }
            let from = from.unwrap_or(sent_at.saturating_add(wait as i64 * 1000));
            let owner = sender == me && action != Action::RaiseNow;
            due.push((
                DueDuty {
                    group_id,
                    subject: id,
                    action,
                    due_at: due_for(owner, from, wait),
                },
                silent,
            ));
        }
        let tasks: Vec<(Vec<u8>, String, String, i64, i64)> = self
            .db
            .prepare_cached(
                "SELECT t.group_id, t.id, t.creator, t.created_at, t.due_at FROM tasks t
                 JOIN groups g ON g.group_id = t.group_id AND g.state = ?1
                 WHERE t.due_at IS NOT NULL AND t.state IN ('open', 'accepted') AND t.due_at > ?2
                   AND NOT EXISTS (SELECT 1 FROM duty_claims c WHERE c.group_id = t.group_id AND c.subject = t.id AND c.duty = 'overdue')",
            )?
            .query_map(params![GroupState::Active, since], |r| r.try_into())?
            .collect::<Result<_, _>>()?;
        for (group_id, id, creator, created_at, due_at) in tasks {
            let wait = (due_at.saturating_sub(created_at).max(0) / 1000) as u64;
            due.push((
                DueDuty {
                    group_id,
                    subject: id,
                    action: Action::Claim(DutyKind::Overdue),
                    due_at: due_for(creator == me, due_at, wait),
                },
                Vec::new(),
            ));
        }
        Ok(due)
    }

    /// An escalated alert's next step on this device, with its wait and, for taking over
    /// a raise that was claimed but never came, when the claim was seen.
    fn next_step(
        &self,
        group_id: &[u8],
        alert: &str,
        sender: &str,
        e: &Escalation,
    ) -> Result<Option<(Action, u64, Option<i64>)>, EngineError> {
        let claims: Vec<(String, bool, bool, bool, i64)> = self
            .db
            .prepare_cached(
                "SELECT duty, mine, settled, won, seen_at FROM duty_claims WHERE group_id = ?1 AND subject = ?2",
            )?
            .query_map(params![group_id, alert], |r| r.try_into())?
            .collect::<Result<_, _>>()?;
        let of = |duty: &'static str| claims.iter().filter(move |c| c.0 == duty);
        if of("remind").next().is_none() {
            return Ok(Some((
                Action::Claim(DutyKind::Remind),
                e.remind_after,
                None,
            )));
        }
        if !of("remind").any(|c| c.3) {
            return Ok(None);
        }
        // Raising needs this device in the escalation group, with the alert's sender in it.
        let Some(target) = self.escalation_target(e, sender)? else {
            return Ok(None);
        };
        let raised = self
            .db
            .prepare_cached("SELECT 1 FROM messages WHERE group_id = ?1 AND raises = ?2")?
            .exists(params![target, raise_key(group_id, alert)])?;
        if raised || of("raise").any(|c| c.1 && !c.2) {
            return Ok(None);
        }
        // Someone else's claim won, and their raise has not come: take it over.
        if let Some(seen_at) = of("raise").filter(|c| c.3 && !c.1).map(|c| c.4).next() {
            return Ok(Some((Action::RaiseNow, e.raise_after, Some(seen_at))));
        }
        if of("raise").next().is_none() {
            return Ok(Some((Action::Claim(DutyKind::Raise), e.raise_after, None)));
        }
        Ok(None)
    }

    /// The escalation group's id, when this device is in it and so is the alert's sender.
    fn escalation_target(
        &self,
        e: &Escalation,
        sender: &str,
    ) -> Result<Option<Vec<u8>>, EngineError> {
        let Ok(target) = hex::decode(&e.to_group) else {
            return Ok(None);
        };
        let known = self
            .db
            .prepare_cached("SELECT 1 FROM groups WHERE group_id = ?1 AND state = ?2")?
            .exists(params![target, GroupState::Active])?;
        if !known
            || !self
                .group_view(&target)?
                .members
                .iter()
                .any(|m| m == sender)
        {
            return Ok(None);
        }
        Ok(Some(target))
    }

    /// How long until this device has a duty to carry out (a reminder, a raise, an overdue
    /// flag), or a claim of its own to decide; a live device syncs then.
    pub fn duties_due_in(&self) -> Result<Option<std::time::Duration>, EngineError> {
        if let Some(until) = self.duties_paused_until {
            let left = until.saturating_duration_since(std::time::Instant::now());
            if !left.is_zero() {
                return Ok(Some(left));
            }
        }
        let unsettled = self
            .db
            .prepare_cached(
                "SELECT 1 FROM duty_claims WHERE mine = 1
                   AND ((settled = 0 AND seq IS NOT NULL) OR (won = 1 AND duty = 'raise' AND acted = 0))",
            )?
            .exists([])?;
        // Not at once: what cannot be decided now (the relay is away) is not retried in a
        // tight loop.
        if unsettled {
            return Ok(Some(std::time::Duration::from_secs(1)));
        }
        let now = now_ms();
        Ok(self
            .pending_duties()?
            .iter()
            .map(|(d, _)| d.due_at)
            .min()
            .map(|at| std::time::Duration::from_millis(at.saturating_sub(now).max(0) as u64)))
    }

    /// Carries out the duties that fell due ([`Engine::run_due_duties`]). One that fails
    /// for another reason than the connection pauses them all for a minute, with a
    /// problem reported, rather than failing every sync.
    pub(crate) async fn run_duties(&mut self, conn: &impl Link) -> Result<(), EngineError> {
        if self
            .duties_paused_until
            .is_some_and(|until| std::time::Instant::now() < until)
        {
            return Ok(());
        }
        match self.run_due_duties(conn).await {
            Err(e @ EngineError::Link(_)) => Err(e),
            Err(e) => {
                self.activity.problems.push(format!(
                    "reminders, escalations and overdue flags paused for a minute: {e}"
                ));
                self.duties_paused_until =
                    Some(std::time::Instant::now() + std::time::Duration::from_secs(60));
                Ok(())
            }
            Ok(()) => Ok(()),
        }
    }

    /// Claims the duties that fell due, then decides this device's claims once the relay
    /// sequenced them and everything before them was fetched; a raise this device won (or
    /// takes over) is posted in the escalation group, in the transaction that records it.
    async fn run_due_duties(&mut self, conn: &impl Link) -> Result<(), EngineError> {
        let now = now_ms();
        let due: Vec<(DueDuty, Vec<String>)> = self
            .pending_duties()?
            .into_iter()
            .filter(|(d, _)| d.due_at <= now)
            .collect();
        let mut claimed = false;
        let mut raised = false;
        for (duty, silent) in due {
            match duty.action {
                Action::Claim(kind) => {
                    self.enqueue(
                        &duty.group_id,
                        Body::Duty {
                            subject: duty.subject,
                            duty: kind,
                            silent,
                        },
                    )?;
                    claimed = true;
                }
                Action::RaiseNow => {
                    self.raise(&duty.group_id, None, &duty.subject, silent)?;
                    raised = true;
                }
            }
        }
        let to_settle = claimed
            || self
                .db
                .prepare_cached(
                    "SELECT 1 FROM duty_claims WHERE mine = 1 AND settled = 0 AND seq IS NOT NULL",
                )?
                .exists([])?;
        if to_settle {
            self.flush_outbox(conn).await?;
            // Fetched after our claims were sequenced: every claim before them is here now.
            self.fetch_and_process(conn).await?;
            crisis::settle_own_claims(&self.db)?;
        }
        let raises: Vec<(Vec<u8>, String, String, String)> = self
            .db
            .prepare_cached(
                "SELECT group_id, message_id, subject, silent FROM duty_claims
                 WHERE mine = 1 AND won = 1 AND duty = 'raise' AND acted = 0",
            )?
            .query_map([], |r| r.try_into())?
            .collect::<Result<_, _>>()?;
        for (group_id, claim, alert, silent) in raises {
            let silent = serde_json::from_str(&silent).unwrap_or_default();
            self.raise(&group_id, Some(&claim), &alert, silent)?;
            raised = true;
        }
        if raised {
            self.flush_outbox(conn).await?;
        }
        Ok(())
    }

    /// Posts the alert `alert` of `group_id` in its escalation group, naming the `silent`
    /// members; `claim`, the winning claim it acts on, is marked acted in the same
    /// transaction. One that cannot be raised any more is marked acted with a problem.
    fn raise(
        &mut self,
        group_id: &[u8],
        claim: Option<&str>,
        alert: &str,
        silent: Vec<String>,
    ) -> Result<(), EngineError> {
        let acted = |db: &Connection| -> Result<(), EngineError> {
            if let Some(claim) = claim {
                db.execute(
                    "UPDATE duty_claims SET acted = 1 WHERE group_id = ?1 AND message_id = ?2",
                    params![group_id, claim],
                )?;
            }
            Ok(())
        };
        let row: Option<(String, String, bool, Option<String>)> = self
            .db
            .query_row(
                "SELECT sender, body, drill, escalation FROM messages WHERE group_id = ?1 AND id = ?2 AND deleted = 0",
                params![group_id, alert],
                |r| r.try_into(),
            )
            .optional()?;
        let found = row.and_then(|(sender, text, drill, e)| {
            let e: Escalation = serde_json::from_str(&e?).ok()?;
            Some((sender, text, drill, e))
        });
        let Some((sender, text, drill, e)) = found else {
            return acted(&self.db);
        };
        let Some(target) = self.escalation_target(&e, &sender)? else {
            self.activity.problems.push(format!(
                "could not raise {sender}'s alert in {}: this device or {sender} is not in it",
                e.to_name
            ));
            return acted(&self.db);
        };
        let quoted: String = text.chars().take(500).collect();
        let body = Body::Alert {
            text: format!(
                "ESCALATED from {}: no answer within {} from {} to {sender}'s alert: {quoted}",
                self.group_label(group_id),
                describe_duration(e.raise_after),
                silent.join(", ")
            ),
            ack_required: true,
            options: AnswerOption::default_pair(),
            escalation: None,
            drill,
            raises: Some(crate::content::Raised {
                group: group_hex(group_id),
                alert: alert.to_string(),
            }),
        };
        self.enqueue_all(&target, vec![body], |tx, _, _| acted(tx))?;
        Ok(())
    }
}

/// When a duty falling due at `from` (after a wait of `wait` seconds) is due on this
/// device: at once for its owner (the alert's sender, the task's creator), later for the
/// others.
fn due_for(owner: bool, from: i64, wait: u64) -> i64 {
    if owner {
        from
    } else {
        from.saturating_add(takeover_after_ms(wait))
    }
}

fn raise_key(group_id: &[u8], alert: &str) -> String {
    crate::content::Raised {
        group: group_hex(group_id),
        alert: alert.to_string(),
    }
    .key()
}
