//! How incident-command content changes the device's store: tasks and their states,
//! incidents, and claims of timed duties (an alert's reminder and escalation, an overdue
//! task's flag). Plain functions over a transaction, for this device's own sends and for
//! received messages alike; [`crate::conversation::apply`] hands these bodies here.
//!
//! A duty is claimed by a message in the group. Several devices may claim the same one
//! at about the same time; the claim the relay sequenced first is the one that counts, on
//! every device, because every device processes a group's messages in the relay's order.

use crate::content::{describe_duration, DutyKind, Envelope, TaskState};
use crate::conversation::{
    cached_execute, insert_message, insert_notice, Author, Extras, Origin, Placement,
};
use crate::error::EngineError;
use rusqlite::{params, Connection, OptionalExtension};

/// The longest task title, in characters.
pub const MAX_TASK_TITLE_CHARS: usize = 200;
/// The longest incident title, in characters.
pub const MAX_INCIDENT_TITLE_CHARS: usize = 200;

/// How long after a duty falls due devices other than the one it belongs to (the alert's
/// sender, the task's creator) take it on: half the wait, from 2 seconds to a minute.
pub fn takeover_after_ms(wait_secs: u64) -> i64 {
    (wait_secs / 2).clamp(2, 60) as i64 * 1000
}

/// Whether the group has an open drill incident: alerts and tasks in it are exercises.
pub(crate) fn in_drill(db: &Connection, group_id: &[u8]) -> Result<bool, EngineError> {
    Ok(db
        .prepare_cached(
            "SELECT 1 FROM incidents WHERE group_id = ?1 AND drill = 1 AND closed_at IS NULL",
        )?
        .exists([group_id])?)
}

/// "12:30 UTC": how due times show in the group's messages.
pub(crate) fn clock_utc(ms: i64) -> String {
    let at = crate::engine::rfc3339_ms(ms);
    format!("{} UTC", at.get(11..16).unwrap_or(&at))
}

fn drill_tag(drill: bool) -> &'static str {
    if drill {
        "[DRILL] "
    } else {
        ""
    }
}

fn order(origin: Origin) -> Option<i64> {
    match origin {
        Origin::Received { seq, .. } => Some(crate::conversation::order_key(seq, 0)),
        Origin::Own => None,
    }
}

/// What a task message says.
pub(crate) struct NewTask<'a> {
    pub title: &'a str,
    pub assignee: &'a str,
    pub due_at: Option<i64>,
    pub drill: bool,
}

/// A new task: stored, and shown as a message that mentions its assignee.
pub(crate) fn apply_task(
    db: &Connection,
    group_id: &[u8],
    envelope: &Envelope,
    author: &Author,
    origin: Origin,
    task: NewTask,
) -> Result<bool, EngineError> {
    let NewTask {
        title,
        assignee,
        due_at,
        drill,
    } = task;
    let title: String = title.chars().take(MAX_TASK_TITLE_CHARS).collect();
    if title.trim().is_empty() || muster_proto::validate_handle(assignee).is_err() {
        tracing::warn!(
            user = author.user,
            "ignored a task without a title or assignee"
        );
        return Ok(false);
    }
    let inserted = cached_execute(
        db,
        "INSERT OR IGNORE INTO tasks (group_id, id, title, creator, assignee, due_at, state,
             created_at, updated_at, drill)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'open', ?7, ?7, ?8)",
        params![
            group_id,
            envelope.id,
            title,
            author.user,
            assignee,
            due_at,
            envelope.sent_at,
            drill
        ],
    )?;
    if inserted == 0 {
        return Ok(false);
    }
    log_task(
        db,
        group_id,
        &envelope.id,
        &envelope.id,
        TaskState::Open,
        author.user,
        envelope.sent_at,
    )?;
    let due = due_at
        .map(|at| format!(" (due {})", clock_utc(at)))
        .unwrap_or_default();
    let text = format!("{}task for @{assignee}: {title}{due}", drill_tag(drill));
    insert_message(
        db,
        group_id,
        envelope,
        author,
        &Placement::of(envelope, origin),
        "task",
        &text,
        Extras {
            mentions: &[assignee.to_string()],
            drill,
            ..Extras::default()
        },
    )
}

fn log_task(
    db: &Connection,
    group_id: &[u8],
    message_id: &str,
    task: &str,
    state: TaskState,
    by: &str,
    at: i64,
) -> Result<(), EngineError> {
    cached_execute(
        db,
        "INSERT OR IGNORE INTO task_log (group_id, message_id, task_id, state, by_user, at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![group_id, message_id, task, state.as_str(), by, at],
    )?;
    Ok(())
}

/// Why `user` may not move the task to `state`, if they may not: its assignee accepts,
/// declines or finishes it; the one who set it may also mark it done; a done task stays
/// done.
pub(crate) fn task_change_refused(
    creator: &str,
    assignee: &str,
    current: TaskState,
    user: &str,
    state: TaskState,
) -> Option<String> {
    if current == TaskState::Done {
        return Some("the task is done already".into());
    }
    match state {
        TaskState::Open => Some("a task cannot be reopened".into()),
        TaskState::Done if user == assignee || user == creator => None,
        TaskState::Done => Some(format!(
            "only {assignee} (its assignee) or {creator} (who set it) marks it done"
        )),
        _ if user == assignee => None,
        _ => Some(format!(
            "only {assignee}, its assignee, accepts or declines it"
        )),
    }
}

/// A task's assignee (or creator) changes its state; anyone else's change is ignored.
pub(crate) fn apply_task_update(
    db: &Connection,
    group_id: &[u8],
    envelope: &Envelope,
    author: &Author,
    origin: Origin,
    task: &str,
    state: TaskState,
) -> Result<(), EngineError> {
    let row: Option<(String, String, String, String, bool)> = db
        .prepare_cached(
            "SELECT title, creator, assignee, state, drill FROM tasks WHERE group_id = ?1 AND id = ?2",
        )?
        .query_row(params![group_id, task], |r| r.try_into())
        .optional()?;
    let Some((title, creator, assignee, current, drill)) = row else {
        return Ok(());
    };
    let current = TaskState::parse(&current).unwrap_or(TaskState::Open);
    if let Some(why) = task_change_refused(&creator, &assignee, current, author.user, state) {
        tracing::warn!(user = author.user, %why, "ignored a task change");
        return Ok(());
    }
    cached_execute(
        db,
        "UPDATE tasks SET state = ?3, updated_at = ?4 WHERE group_id = ?1 AND id = ?2",
        params![group_id, task, state.as_str(), envelope.sent_at],
    )?;
    log_task(
        db,
        group_id,
        &envelope.id,
        task,
        state,
        author.user,
        envelope.sent_at,
    )?;
    let text = format!(
        "{}{} {} task: {title}",
        drill_tag(drill),
        author.user,
        match state {
            TaskState::Accepted => "accepted",
            TaskState::Declined => "declined",
            TaskState::Done => "finished",
            TaskState::Open => "reopened",
        }
    );
    insert_notice(db, group_id, &envelope.id, &text, order(origin))?;
    Ok(())
}

/// An incident opens; alerts and tasks while a drill incident is open are drills.
pub(crate) fn apply_incident_open(
    db: &Connection,
    group_id: &[u8],
    envelope: &Envelope,
    author: &Author,
    origin: Origin,
    title: &str,
    drill: bool,
) -> Result<(), EngineError> {
    let title: String = title.chars().take(MAX_INCIDENT_TITLE_CHARS).collect();
    // One incident at a time: a second one opened before the first closed is ignored.
    let open = db
        .prepare_cached("SELECT 1 FROM incidents WHERE group_id = ?1 AND closed_at IS NULL")?
        .exists([group_id])?;
    if open {
        tracing::warn!(
            user = author.user,
            "ignored an incident opened while another is open"
        );
        return Ok(());
    }
    cached_execute(
        db,
        "INSERT OR IGNORE INTO incidents (group_id, id, title, drill, opened_by, opened_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            group_id,
            envelope.id,
            title,
            drill,
            author.user,
            envelope.sent_at
        ],
    )?;
    let text = format!(
        "{}{} opened incident {}: {title}",
        drill_tag(drill),
        author.user,
        &envelope.id[..8.min(envelope.id.len())]
    );
    insert_notice(db, group_id, &envelope.id, &text, order(origin))?;
    Ok(())
}

/// An incident closes (once; a second close changes nothing).
pub(crate) fn apply_incident_close(
    db: &Connection,
    group_id: &[u8],
    envelope: &Envelope,
    author: &Author,
    origin: Origin,
    incident: &str,
) -> Result<(), EngineError> {
    let closed = cached_execute(
        db,
        "UPDATE incidents SET closed_by = ?3, closed_at = MAX(?4, opened_at)
         WHERE group_id = ?1 AND id = ?2 AND closed_at IS NULL AND (opened_by = ?3 OR ?5)",
        params![
            group_id,
            incident,
            author.user,
            envelope.sent_at,
            author.admin
        ],
    )?;
    if closed == 1 {
        let (title, drill): (String, bool) = db.query_row(
            "SELECT title, drill FROM incidents WHERE group_id = ?1 AND id = ?2",
            params![group_id, incident],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let text = format!(
            "{}{} closed incident {}: {title}",
            drill_tag(drill),
            author.user,
            &incident[..8.min(incident.len())]
        );
        insert_notice(db, group_id, &envelope.id, &text, order(origin))?;
    }
    Ok(())
}

/// What a duty is about, as stored: an alert with an escalation, or a task with a due time.
struct Subject {
    sender: String,
    /// The alert's or task's own time (sent, by its sender's clock).
    sent_at: i64,
    text: String,
    drill: bool,
    /// Remind and raise: the escalation; overdue: the assignee and due time.
    escalation: Option<crate::content::Escalation>,
    task_due: Option<(String, i64)>,
}

fn subject(
    db: &Connection,
    group_id: &[u8],
    id: &str,
    duty: DutyKind,
) -> Result<Option<Subject>, EngineError> {
    Ok(match duty {
        DutyKind::Remind | DutyKind::Raise => db
            .prepare_cached(
                "SELECT sender, body, drill, escalation, sent_at FROM messages
                 WHERE group_id = ?1 AND id = ?2 AND kind = 'alert' AND deleted = 0",
            )?
            .query_row(params![group_id, id], |r| {
                Ok(Subject {
                    sender: r.get(0)?,
                    sent_at: r.get(4)?,
                    text: r.get(1)?,
                    drill: r.get(2)?,
                    escalation: r
                        .get::<_, Option<String>>(3)?
                        .and_then(|e| serde_json::from_str(&e).ok()),
                    task_due: None,
                })
            })
            .optional()?
            .filter(|s| s.escalation.is_some()),
        DutyKind::Overdue => db
            .prepare_cached(
                "SELECT creator, title, drill, assignee, due_at, created_at FROM tasks
                 WHERE group_id = ?1 AND id = ?2 AND due_at IS NOT NULL",
            )?
            .query_row(params![group_id, id], |r| {
                Ok(Subject {
                    sender: r.get(0)?,
                    sent_at: r.get(5)?,
                    text: r.get(1)?,
                    drill: r.get(2)?,
                    escalation: None,
                    task_due: Some((r.get(3)?, r.get(4)?)),
                })
            })
            .optional()?,
    })
}

/// A claim of a duty. This device's own is recorded until the relay sequences it and
/// [`settle_own_claims`] decides it; a received one is decided at once: it counts when no
/// claim of the same duty came before it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn apply_duty(
    db: &Connection,
    group_id: &[u8],
    envelope: &Envelope,
    author: &Author,
    origin: Origin,
    subject_id: &str,
    duty: DutyKind,
    silent: &[String],
) -> Result<bool, EngineError> {
    let Some(about) = subject(db, group_id, subject_id, duty)? else {
        tracing::warn!(
            user = author.user,
            "ignored a claim of a duty about nothing it could be"
        );
        return Ok(false);
    };
    if let Some(why) = claim_refused(db, group_id, envelope, subject_id, duty, &about)? {
        tracing::warn!(user = author.user, why, "ignored a claim of a duty");
        return Ok(false);
    }
    // Only those this device also knows to be silent are named.
    let answered: Vec<String> = db
        .prepare_cached("SELECT user FROM acks WHERE group_id = ?1 AND message_id = ?2")?
        .query_map(params![group_id, subject_id], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let silent: Vec<&String> = silent
        .iter()
        .filter(|u| {
            muster_proto::validate_handle(u).is_ok() && !answered.contains(u) && **u != about.sender
        })
        .take(1000)
        .collect();
    let (mine, seq) = match origin {
        Origin::Own => (true, None),
        Origin::Received { seq, .. } => (false, Some(seq as i64)),
    };
    cached_execute(
        db,
        "INSERT OR IGNORE INTO duty_claims (group_id, message_id, subject, duty, by_user, mine,
             silent, at, seq, seen_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            group_id,
            envelope.id,
            subject_id,
            duty.as_str(),
            author.user,
            mine,
            serde_json::to_string(&silent).expect("serialises"),
            envelope.sent_at,
            seq,
            crate::engine::now_ms()
        ],
    )?;
    match origin {
        Origin::Own => Ok(false),
        Origin::Received { at_ms, .. } => settle(db, group_id, &envelope.id, at_ms, false),
    }
}

/// Why a claim does not count, if it does not: it names a message id in use, came
/// before the duty was due by its own and the subject's times, raises an alert nobody
/// was reminded of, or flags a task that is finished.
fn claim_refused(
    db: &Connection,
    group_id: &[u8],
    envelope: &Envelope,
    subject_id: &str,
    duty: DutyKind,
    about: &Subject,
) -> Result<Option<&'static str>, EngineError> {
    let id_in_use = db
        .prepare_cached("SELECT 1 FROM messages WHERE group_id = ?1 AND id = ?2")?
        .exists(params![group_id, envelope.id])?;
    if id_in_use {
        return Ok(Some("its id is another message's"));
    }
    let due_at = match (duty, &about.escalation, &about.task_due) {
        (DutyKind::Remind, Some(e), _) => {
            about.sent_at.saturating_add(e.remind_after as i64 * 1000)
        }
        (DutyKind::Raise, Some(e), _) => about.sent_at.saturating_add(e.raise_after as i64 * 1000),
        (DutyKind::Overdue, _, Some((_, due))) => *due,
        _ => return Ok(Some("it is not about what it claims")),
    };
    if envelope.sent_at < due_at {
        return Ok(Some("it came before the duty was due"));
    }
    if duty == DutyKind::Raise {
        let reminded = db
            .prepare_cached(
                "SELECT 1 FROM duty_claims WHERE group_id = ?1 AND subject = ?2 AND duty = 'remind' AND won = 1",
            )?
            .exists(params![group_id, subject_id])?;
        if !reminded {
            return Ok(Some("nobody was reminded yet"));
        }
    }
    if duty == DutyKind::Overdue {
        let finished = db
            .prepare_cached(
                "SELECT 1 FROM tasks WHERE group_id = ?1 AND id = ?2 AND state IN ('done', 'declined')",
            )?
            .exists(params![group_id, subject_id])?;
        if finished {
            return Ok(Some("the task is finished"));
        }
    }
    Ok(None)
}

/// Drops what retention removed the messages of: tasks, their changes, claims about
/// subjects gone, and closed incidents older than their group keeps messages.
pub(crate) fn forget_expired(db: &Connection, now_ms: i64) -> Result<(), EngineError> {
    db.execute_batch(
        "DELETE FROM tasks WHERE NOT EXISTS (SELECT 1 FROM messages m
             WHERE m.group_id = tasks.group_id AND m.id = tasks.id);
         DELETE FROM task_log WHERE NOT EXISTS (SELECT 1 FROM tasks t
             WHERE t.group_id = task_log.group_id AND t.id = task_log.task_id);
         DELETE FROM duty_claims WHERE NOT EXISTS (SELECT 1 FROM messages m
                 WHERE m.group_id = duty_claims.group_id AND m.id = duty_claims.subject)
             AND NOT EXISTS (SELECT 1 FROM tasks t
                 WHERE t.group_id = duty_claims.group_id AND t.id = duty_claims.subject);",
    )?;
    cached_execute(
        db,
        "DELETE FROM incidents WHERE closed_at IS NOT NULL
           AND closed_at < ?1 - 1000 * (SELECT MIN(COALESCE(g.disappear_secs, g.retain_secs),
                                                  COALESCE(g.retain_secs, g.disappear_secs))
                                       FROM groups g WHERE g.group_id = incidents.group_id)",
        [now_ms],
    )?;
    Ok(())
}

/// Decides a sequenced claim: the first of its duty wins and shows; the others are kept,
/// unshown. Returns whether it won.
fn settle(
    db: &Connection,
    group_id: &[u8],
    claim: &str,
    at_ms: i64,
    mine: bool,
) -> Result<bool, EngineError> {
    let (subject_id, duty, by, silent, at, seq): (String, String, String, String, i64, i64) = db
        .prepare_cached(
            "SELECT subject, duty, by_user, silent, at, seq FROM duty_claims
             WHERE group_id = ?1 AND message_id = ?2 AND seq IS NOT NULL",
        )?
        .query_row(params![group_id, claim], |r| r.try_into())?;
    let earlier = db
        .prepare_cached(
            "SELECT 1 FROM duty_claims WHERE group_id = ?1 AND subject = ?2 AND duty = ?3
               AND seq IS NOT NULL AND seq < ?4",
        )?
        .exists(params![group_id, subject_id, duty, seq])?;
    let won = !earlier;
    cached_execute(
        db,
        "UPDATE duty_claims SET settled = 1, won = ?3 WHERE group_id = ?1 AND message_id = ?2",
        params![group_id, claim, won],
    )?;
    if !won {
        return Ok(false);
    }
    let duty = match duty.as_str() {
        "remind" => DutyKind::Remind,
        "raise" => DutyKind::Raise,
        _ => DutyKind::Overdue,
    };
    let Some(subject) = subject(db, group_id, &subject_id, duty)? else {
        return Ok(false);
    };
    let silent: Vec<String> = serde_json::from_str(&silent).unwrap_or_default();
    let named = if silent.is_empty() {
        "nobody".to_string()
    } else {
        silent.join(", ")
    };
    let tag = drill_tag(subject.drill);
    let envelope = Envelope::new(
        claim.to_string(),
        at,
        crate::content::Body::GroupMeta {
            name: String::new(),
        },
    );
    let author = Author {
        user: &by,
        device: "",
        admin: false,
        bot: false,
    };
    let mut placement = Placement::of(
        &envelope,
        Origin::Received {
            seq: seq as u64,
            at_ms,
        },
    );
    if mine {
        placement.status = "sent";
        placement.receipts_due = 0;
    }
    // A reminder and an overdue flag show as alerts naming who they are about; a raise,
    // posted in another group, as a notice here.
    let (text, mentions) = match (duty, subject.escalation, subject.task_due) {
        (DutyKind::Remind, Some(e), _) => (
            format!(
                "{tag}REMINDER of {}'s alert, no answer within {} from {named}: {}",
                subject.sender,
                describe_duration(e.remind_after),
                subject.text
            ),
            silent,
        ),
        (DutyKind::Raise, Some(e), _) => {
            // The group's name as this device knows it, when it is in it.
            let to_name: String = hex::decode(&e.to_group)
                .ok()
                .and_then(|g| {
                    db.query_row("SELECT name FROM groups WHERE group_id = ?1", [g], |r| {
                        r.get(0)
                    })
                    .optional()
                    .ok()
                    .flatten()
                })
                .unwrap_or(e.to_name);
            let text = format!(
                "{tag}{by} raised {}'s alert in {}: no answer within {} from {named}",
                subject.sender,
                to_name,
                describe_duration(e.raise_after)
            );
            insert_notice(db, group_id, claim, &text, placement.sort_key)?;
            return Ok(false);
        }
        (DutyKind::Overdue, _, Some((assignee, due_at))) => (
            format!(
                "{tag}OVERDUE task for @{assignee} (due {}): {}",
                clock_utc(due_at),
                subject.text
            ),
            vec![assignee],
        ),
        _ => return Ok(false),
    };
    insert_message(
        db,
        group_id,
        &envelope,
        &author,
        &placement,
        "alert",
        &text,
        Extras {
            mentions: &mentions,
            drill: subject.drill,
            ..Extras::default()
        },
    )
}

/// This device's own claim that the relay sequenced at `seq`.
pub(crate) fn claim_sequenced(
    db: &Connection,
    group_id: &[u8],
    message_id: &str,
    seq: u64,
) -> Result<(), EngineError> {
    cached_execute(
        db,
        "UPDATE duty_claims SET seq = ?3 WHERE group_id = ?1 AND message_id = ?2 AND mine = 1",
        params![group_id, message_id, seq as i64],
    )?;
    Ok(())
}

/// Decides this device's own sequenced claims. Only sound after a fetch that began once
/// they were sequenced: every claim the relay put before them has been processed then.
pub(crate) fn settle_own_claims(db: &Connection) -> Result<(), EngineError> {
    let own: Vec<(Vec<u8>, String)> = db
        .prepare(
            "SELECT group_id, message_id FROM duty_claims
             WHERE mine = 1 AND settled = 0 AND seq IS NOT NULL ORDER BY seq",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (group_id, claim) in own {
        settle(db, &group_id, &claim, crate::engine::now_ms(), true)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_assignee_answers_a_task_and_a_done_task_stays_done() {
        use TaskState::*;
        let refused = |user, current, state| {
            task_change_refused("alice", "bob", current, user, state).is_some()
        };
        assert!(!refused("bob", Open, Accepted));
        assert!(!refused("bob", Accepted, Declined));
        assert!(!refused("bob", Accepted, Done));
        assert!(!refused("alice", Accepted, Done));
        assert!(refused("alice", Open, Accepted));
        assert!(refused("carol", Open, Accepted));
        assert!(refused("carol", Accepted, Done));
        assert!(refused("bob", Done, Accepted));
        assert!(refused("bob", Accepted, Open));
    }

    #[test]
    fn other_devices_take_over_after_half_the_wait_within_bounds() {
        assert_eq!(takeover_after_ms(1), 2000);
        assert_eq!(takeover_after_ms(10), 5000);
        assert_eq!(takeover_after_ms(3600), 60_000);
    }
}
