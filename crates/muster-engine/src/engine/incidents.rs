//! Incident command: alerts that escalate, tasks, incidents and drills. The timed duties
//! devices carry out for them are in `duties.rs`.
//!
//! Which device runs an escalation's timer: every member device that is online keeps it.
//! The alert's sender's devices act when it falls due; every other member device (for
//! raising: every one that is also in the escalation group) acts [`crisis::takeover_after_ms`]
//! later, so a sender who is offline is covered. Acting means posting a claim to the
//! group; the first claim the relay sequences is the one that counts on every device, so
//! a reminder and a raise each happen once however many devices acted. When no eligible
//! device is online, the first one to come online or sync acts.

// Rows are read from SQL straight into tuples, one per query.
#![allow(clippy::type_complexity)]

use super::*;
use crate::content::{describe_duration, Escalation, TaskState, MAX_WAIT_SECS};
use crate::crisis::{self, MAX_INCIDENT_TITLE_CHARS, MAX_TASK_TITLE_CHARS};

/// What an alert asks for beyond its text.
#[derive(Debug, Clone, Default)]
pub struct AlertRequest {
    pub ack_required: bool,
    pub options: Vec<AnswerOption>,
    /// Remind the silent after the first wait, raise in the group or with the user named
    /// after the second.
    pub escalate: Option<(std::time::Duration, std::time::Duration, String)>,
    pub drill: bool,
}

/// A task as this device knows it.
#[derive(Debug, Clone, Serialize)]
pub struct TaskView {
    pub id: String,
    pub group: String,
    pub title: String,
    pub creator: String,
    pub assignee: String,
    pub state: String,
    pub due_at: Option<String>,
    pub overdue: bool,
    pub drill: bool,
}

/// An incident as this device knows it.
#[derive(Debug, Clone, Serialize)]
pub struct IncidentView {
    pub id: String,
    pub group: String,
    pub title: String,
    pub drill: bool,
    pub opened_by: String,
    pub opened_at: String,
    pub closed_at: Option<String>,
}

impl Engine {
    /// Queues an alert with answers, an escalation or the drill mark. An escalation needs
    /// answers: without options it offers [`AnswerOption::default_pair`].
    pub fn queue_alert_request(
        &mut self,
        group: &str,
        text: &str,
        request: AlertRequest,
    ) -> Result<QueuedMessage, EngineError> {
        let AlertRequest {
            mut ack_required,
            mut options,
            escalate,
            drill,
        } = request;
        crate::content::check_options(&options).map_err(EngineError::Invalid)?;
        let (group_id, _) = self.active_group(group)?;
        let escalation = match escalate {
            None => None,
            Some((remind, raise, to)) => Some(self.escalation(&group_id, remind, raise, &to)?),
        };
        if (ack_required || escalation.is_some()) && options.is_empty() {
            options = AnswerOption::default_pair();
        }
        ack_required |= !options.is_empty();
        let drill = drill || crisis::in_drill(&self.db, &group_id)?;
        super::messages::check_alert_text(text)?;
        let id = self.enqueue(
            &group_id,
            Body::Alert {
                text: text.to_string(),
                ack_required,
                options,
                escalation,
                drill,
                raises: None,
            },
        )?;
        Ok(QueuedMessage { group_id, id })
    }

    /// Checks an escalation and finds the group it raises in: a group by name or id, or
    /// for a user the smallest group this user shares with them.
    fn escalation(
        &self,
        group_id: &[u8],
        remind: std::time::Duration,
        raise: std::time::Duration,
        to: &str,
    ) -> Result<Escalation, EngineError> {
        let (remind, raise) = (remind.as_secs(), raise.as_secs());
        if remind == 0 || raise <= remind || raise > MAX_WAIT_SECS {
            return Err(EngineError::Invalid(format!(
                "an escalation reminds after at least 1s and raises later, within {}",
                describe_duration(MAX_WAIT_SECS)
            )));
        }
        let target = match self.resolve_group(to) {
            Ok(g) if g.state == GroupState::Active => g.id,
            Ok(g) => return Err(EngineError::NotActive(g.name)),
            Err(_) => {
                let me = self.device()?.user;
                let mut shared: Vec<(usize, Vec<u8>)> = Vec::new();
                for id in self.active_group_ids()? {
                    let members = self.group_view(&id)?.members;
                    if members.iter().any(|m| m == to) && members.contains(&me) {
                        shared.push((members.len(), id));
                    }
                }
                shared.sort();
                shared.into_iter().next().map(|(_, id)| id).ok_or_else(|| {
                    EngineError::Invalid(format!(
                        "{to:?} is neither a group of yours nor someone you share a group with: create a group with them to escalate to them"
                    ))
                })?
            }
        };
        if target == group_id {
            return Err(EngineError::Invalid(
                "an alert escalates to another group than its own".into(),
            ));
        }
        Ok(Escalation {
            remind_after: remind,
            raise_after: raise,
            to_name: self.group_label(&target),
            to_group: group_hex(&target),
        })
    }

    /// Assigns a task to a member of the group, due after `due` if given.
    pub fn queue_task(
        &mut self,
        group: &str,
        title: &str,
        assignee: &str,
        due: Option<std::time::Duration>,
    ) -> Result<QueuedMessage, EngineError> {
        let title = title.trim();
        if title.is_empty() || title.chars().count() > MAX_TASK_TITLE_CHARS {
            return Err(EngineError::Invalid(format!(
                "a task title is 1 to {MAX_TASK_TITLE_CHARS} characters"
            )));
        }
        if due.is_some_and(|d| d.as_secs() == 0 || d.as_secs() > MAX_WAIT_SECS) {
            return Err(EngineError::Invalid(
                "a task is due within 1 second to 30 days".into(),
            ));
        }
        let (group_id, name) = self.active_group(group)?;
        if !self
            .group_view(&group_id)?
            .members
            .iter()
            .any(|m| m == assignee)
        {
            return Err(EngineError::Invalid(format!(
                "{assignee} is not a member of {name}"
            )));
        }
        let id = self.enqueue(
            &group_id,
            Body::Task {
                title: title.to_string(),
                assignee: assignee.to_string(),
                due_at: due.map(|d| now_ms() + d.as_millis() as i64),
                drill: crisis::in_drill(&self.db, &group_id)?,
            },
        )?;
        Ok(QueuedMessage { group_id, id })
    }

    /// Accepts, declines or finishes a task (an id or id prefix).
    pub fn queue_task_update(
        &mut self,
        task: &str,
        state: TaskState,
    ) -> Result<QueuedMessage, EngineError> {
        let (group_id, id, creator, assignee, current) = self.find_task(task)?;
        let me = self.device()?.user;
        let current = TaskState::parse(&current).unwrap_or(TaskState::Open);
        if let Some(why) = crisis::task_change_refused(&creator, &assignee, current, &me, state) {
            return Err(EngineError::Invalid(why));
        }
        self.active_group(&group_hex(&group_id))?;
        let id = self.enqueue(&group_id, Body::TaskUpdate { task: id, state })?;
        Ok(QueuedMessage { group_id, id })
    }

    fn find_task(
        &self,
        task: &str,
    ) -> Result<(Vec<u8>, String, String, String, String), EngineError> {
        self.one_by_prefix(
            "SELECT group_id, id, creator, assignee, state FROM tasks WHERE id LIKE ?1 || '%' LIMIT 2",
            task,
            "task",
            "at least 6 hex characters, as `muster tasks` shows",
        )
    }

    /// The tasks of a group (all groups when `None`), open ones first.
    pub fn tasks(&self, group: Option<&str>) -> Result<Vec<TaskView>, EngineError> {
        let only = match group {
            Some(g) => Some(self.resolve_group(g)?.id),
            None => None,
        };
        let now = now_ms();
        let rows: Vec<(
            Vec<u8>,
            String,
            String,
            String,
            String,
            String,
            Option<i64>,
            bool,
        )> = self
            .db
            .prepare(
                "SELECT group_id, id, title, creator, assignee, state, due_at, drill FROM tasks
                 WHERE ?1 IS NULL OR group_id = ?1
                 ORDER BY state IN ('done', 'declined'), COALESCE(due_at, created_at), created_at",
            )?
            .query_map([&only], |r| r.try_into())?
            .collect::<Result<_, _>>()?;
        Ok(rows
            .into_iter()
            .map(
                |(g, id, title, creator, assignee, state, due_at, drill)| TaskView {
                    group: self.group_label(&g),
                    overdue: due_at.is_some_and(|d| d <= now)
                        && matches!(state.as_str(), "open" | "accepted"),
                    due_at: due_at.map(rfc3339_ms),
                    id,
                    title,
                    creator,
                    assignee,
                    state,
                    drill,
                },
            )
            .collect())
    }

    /// Opens an incident in a group (one at a time); `drill` marks it and every alert and
    /// task in it as an exercise.
    pub fn open_incident(
        &mut self,
        group: &str,
        title: &str,
        drill: bool,
    ) -> Result<QueuedMessage, EngineError> {
        let title = title.trim();
        if title.is_empty() || title.chars().count() > MAX_INCIDENT_TITLE_CHARS {
            return Err(EngineError::Invalid(format!(
                "an incident title is 1 to {MAX_INCIDENT_TITLE_CHARS} characters"
            )));
        }
        let (group_id, name) = self.active_group(group)?;
        let open: Option<String> = self
            .db
            .query_row(
                "SELECT id FROM incidents WHERE group_id = ?1 AND closed_at IS NULL",
                [&group_id],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(open) = open {
            return Err(EngineError::Invalid(format!(
                "{name} has an open incident ({}): close it first",
                &open[..8]
            )));
        }
        let id = self.enqueue(
            &group_id,
            Body::IncidentOpen {
                title: title.to_string(),
                drill,
            },
        )?;
        Ok(QueuedMessage { group_id, id })
    }

    /// Closes an incident: by id, or a group's open one by the group's name.
    pub fn close_incident(&mut self, which: &str) -> Result<QueuedMessage, EngineError> {
        let (group_id, id, closed) = self.find_incident(which)?;
        if closed {
            return Err(EngineError::Invalid(format!(
                "incident {} is closed already",
                &id[..8]
            )));
        }
        let opened_by: String = self.db.query_row(
            "SELECT opened_by FROM incidents WHERE group_id = ?1 AND id = ?2",
            params![group_id, id],
            |r| r.get(0),
        )?;
        let me = self.device()?;
        let admin = me.certificate.as_ref().is_some_and(|c| c.is_admin());
        if opened_by != me.user && !admin {
            return Err(EngineError::Invalid(format!(
                "only {opened_by}, who opened it, or an admin closes this incident"
            )));
        }
        self.active_group(&group_hex(&group_id))?;
        let id = self.enqueue(&group_id, Body::IncidentClose { incident: id })?;
        Ok(QueuedMessage { group_id, id })
    }

    /// An incident by id prefix, or a group's latest incident by the group's name or id.
    pub(super) fn find_incident(
        &self,
        which: &str,
    ) -> Result<(Vec<u8>, String, bool), EngineError> {
        let which = which.trim();
        let by_id: Vec<(Vec<u8>, String, bool)> = if super::messages::is_id_prefix(which) {
            self.rows_by_prefix(
                "SELECT group_id, id, closed_at IS NOT NULL FROM incidents WHERE id LIKE ?1 || '%' LIMIT 2",
                &which.to_ascii_lowercase(),
            )?
        } else {
            Vec::new()
        };
        match by_id.len() {
            1 => return Ok(by_id.into_iter().next().expect("one")),
            2 => {
                return Err(EngineError::Invalid(format!(
                    "{which} matches several incidents; give more of the id"
                )))
            }
            _ => {}
        }
        let group = self.resolve_group(which).map_err(|_| {
            EngineError::Invalid(format!("no incident or group {which:?} on this device"))
        })?;
        self.db
            .query_row(
                "SELECT group_id, id, closed_at IS NOT NULL FROM incidents WHERE group_id = ?1
                 ORDER BY closed_at IS NULL DESC, opened_at DESC LIMIT 1",
                [&group.id],
                |r| r.try_into(),
            )
            .optional()?
            .ok_or_else(|| EngineError::Invalid(format!("{} has no incident", group.name)))
    }

    /// The incidents of a group (all groups when `None`), newest first.
    pub fn incidents(&self, group: Option<&str>) -> Result<Vec<IncidentView>, EngineError> {
        let only = match group {
            Some(g) => Some(self.resolve_group(g)?.id),
            None => None,
        };
        let rows: Vec<(Vec<u8>, String, String, bool, String, i64, Option<i64>)> = self
            .db
            .prepare(
                "SELECT group_id, id, title, drill, opened_by, opened_at, closed_at FROM incidents
                 WHERE ?1 IS NULL OR group_id = ?1 ORDER BY opened_at DESC",
            )?
            .query_map([&only], |r| r.try_into())?
            .collect::<Result<_, _>>()?;
        Ok(rows
            .into_iter()
            .map(
                |(g, id, title, drill, opened_by, opened_at, closed_at)| IncidentView {
                    group: self.group_label(&g),
                    id,
                    title,
                    drill,
                    opened_by,
                    opened_at: rfc3339_ms(opened_at),
                    closed_at: closed_at.map(rfc3339_ms),
                },
            )
            .collect())
    }
}
