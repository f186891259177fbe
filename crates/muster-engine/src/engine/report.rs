//! The after-action report's facts, gathered from this device's own store: what the
//! incident's group said, answered, escalated, assigned and put on its board between the
//! incident's opening and closing (by the senders' clocks, which every device shares).

// Rows are read from SQL straight into tuples, one per query.
#![allow(clippy::type_complexity)]

use super::*;
use muster_report::{
    AlertFigures, BoardSnapshot, DrillFigures, EscalationRecord, Event, Incident, Response,
    TaskRecord,
};

fn short(id: &str) -> &str {
    &id[..8.min(id.len())]
}

impl Engine {
    /// The report of an incident (an id or id prefix, or a group's latest incident by
    /// the group's name), built from this device's store alone.
    pub fn incident_report(&self, which: &str) -> Result<Incident, EngineError> {
        let (group_id, id, _) = self.find_incident(which)?;
        let (title, drill, opened_by, opened_at, closed_by, closed_at): (
            String,
            bool,
            String,
            i64,
            Option<String>,
            Option<i64>,
        ) = self.db.query_row(
            "SELECT title, drill, opened_by, opened_at, closed_by, closed_at FROM incidents
             WHERE group_id = ?1 AND id = ?2",
            params![group_id, id],
            |r| r.try_into(),
        )?;
        let until = closed_at.unwrap_or_else(now_ms);
        let mut report = Incident {
            id: id.clone(),
            group: self.group_label(&group_id),
            title: title.clone(),
            drill,
            opened_by: opened_by.clone(),
            opened_at_ms: opened_at,
            closed_by: closed_by.clone(),
            closed_at_ms: closed_at,
            ..Incident::default()
        };
        let mut timeline = vec![Event {
            at_ms: opened_at,
            who: opened_by,
            kind: "incident".into(),
            text: format!(
                "opened the incident{}: {title}",
                if drill { " (drill)" } else { "" }
            ),
        }];
        // What members said (claims of duties show as escalations below).
        let said: Vec<(String, String, String, String, i64, bool, bool)> = self
            .db
            .prepare(
                "SELECT m.id, m.kind, m.sender, m.body, m.sent_at, m.drill, m.ack_required FROM messages m
                 WHERE m.group_id = ?1 AND m.kind IN ('text', 'alert', 'attachment', 'task')
                   AND m.deleted = 0 AND m.sent_at BETWEEN ?2 AND ?3
                   AND NOT EXISTS (SELECT 1 FROM duty_claims c WHERE c.group_id = m.group_id AND c.message_id = m.id AND c.won = 1)
                 ORDER BY m.sent_at",
            )?
            .query_map(params![group_id, opened_at, until], |r| r.try_into())?
            .collect::<Result<_, _>>()?;
        for (mid, kind, sender, body, at, alert_drill, asks) in &said {
            timeline.push(Event {
                at_ms: *at,
                who: sender.clone(),
                kind: match kind.as_str() {
                    "alert" => "alert",
                    "task" => "task",
                    _ => "message",
                }
                .into(),
                text: match kind.as_str() {
                    "alert" => format!(
                        "{}alert {}: {body}",
                        if *alert_drill { "[DRILL] " } else { "" },
                        short(mid)
                    ),
                    _ => body.clone(),
                },
            });
            // Roll-call figures for the alerts that ask for answers.
            if kind == "alert" && *asks {
                report.alerts.push(self.alert_figures(
                    &group_id,
                    mid,
                    sender,
                    body,
                    *at,
                    *alert_drill,
                )?);
            }
        }
        // Answers.
        let answers: Vec<(String, String, Option<String>, i64, String)> = self
            .db
            .prepare(
                "SELECT a.message_id, a.user, a.answer, a.at, m.sender FROM answer_log a
                 JOIN messages m ON m.group_id = a.group_id AND m.id = a.message_id
                 WHERE a.group_id = ?1 AND a.at BETWEEN ?2 AND ?3 ORDER BY a.at",
            )?
            .query_map(params![group_id, opened_at, until], |r| r.try_into())?
            .collect::<Result<_, _>>()?;
        for (alert, user, answer, at, sender) in answers {
            timeline.push(Event {
                at_ms: at,
                who: user,
                kind: "answer".into(),
                text: format!(
                    "answered \"{}\" to {sender}'s alert {}",
                    answer.as_deref().unwrap_or("acknowledged"),
                    short(&alert)
                ),
            });
        }
        // Escalations and overdue flags: the claims that counted.
        let claims: Vec<(String, String, String, String, i64)> = self
            .db
            .prepare(
                "SELECT subject, duty, by_user, silent, at FROM duty_claims
                 WHERE group_id = ?1 AND won = 1 AND at BETWEEN ?2 AND ?3 ORDER BY seq",
            )?
            .query_map(params![group_id, opened_at, until], |r| r.try_into())?
            .collect::<Result<_, _>>()?;
        for (subject, duty, by, silent, at) in claims {
            let silent: Vec<String> = serde_json::from_str(&silent).unwrap_or_default();
            if duty == "overdue" {
                timeline.push(Event {
                    at_ms: at,
                    who: by,
                    kind: "task".into(),
                    text: format!("flagged task {} overdue", short(&subject)),
                });
                continue;
            }
            let to: Option<String> = (duty == "raise")
                .then(|| {
                    self.db
                        .query_row(
                            "SELECT escalation FROM messages WHERE group_id = ?1 AND id = ?2",
                            params![group_id, subject],
                            |r| r.get::<_, Option<String>>(0),
                        )
                        .ok()
                        .flatten()
                        .and_then(|e| serde_json::from_str::<crate::content::Escalation>(&e).ok())
                        .map(|e| e.to_name)
                })
                .flatten();
            let action = if duty == "raise" {
                "raised"
            } else {
                "reminded"
            };
            timeline.push(Event {
                at_ms: at,
                who: by.clone(),
                kind: "escalation".into(),
                text: format!(
                    "{action} alert {}{}: no answer from {}",
                    short(&subject),
                    to.as_ref().map(|t| format!(" in {t}")).unwrap_or_default(),
                    silent.join(", ")
                ),
            });
            report.escalations.push(EscalationRecord {
                at_ms: at,
                alert_id: subject,
                action: action.into(),
                by,
                silent,
                to,
            });
        }
        // Tasks and their changes.
        let changes: Vec<(String, String, String, i64, String, String)> = self
            .db
            .prepare(
                "SELECT l.task_id, l.state, l.by_user, l.at, t.title, t.assignee FROM task_log l
                 JOIN tasks t ON t.group_id = l.group_id AND t.id = l.task_id
                 WHERE l.group_id = ?1 AND l.at BETWEEN ?2 AND ?3 AND l.state != 'open' ORDER BY l.at",
            )?
            .query_map(params![group_id, opened_at, until], |r| r.try_into())?
            .collect::<Result<_, _>>()?;
        for (task, state, by, at, title, _) in &changes {
            timeline.push(Event {
                at_ms: *at,
                who: by.clone(),
                kind: "task".into(),
                text: format!("{state} task {}: {title}", short(task)),
            });
        }
        let tasks: Vec<(String, String, String, String, String, i64, Option<i64>)> = self
            .db
            .prepare(
                "SELECT id, title, creator, assignee, state, created_at, due_at FROM tasks
                 WHERE group_id = ?1 AND created_at BETWEEN ?2 AND ?3 ORDER BY created_at",
            )?
            .query_map(params![group_id, opened_at, until], |r| r.try_into())?
            .collect::<Result<_, _>>()?;
        for (tid, title, creator, assignee, state, created_at, due_at) in tasks {
            let first = |s: &str| {
                changes
                    .iter()
                    .filter(|c| c.0 == tid && c.1 == s)
                    .map(|c| c.3)
                    .min()
            };
            let overdue_at: Option<i64> = self
                .db
                .query_row(
                    "SELECT at FROM duty_claims WHERE group_id = ?1 AND subject = ?2 AND duty = 'overdue' AND won = 1",
                    params![group_id, tid],
                    |r| r.get(0),
                )
                .optional()?;
            report.tasks.push(TaskRecord {
                accepted_at_ms: first("accepted"),
                declined_at_ms: first("declined"),
                done_at_ms: first("done"),
                overdue_at_ms: overdue_at,
                id: tid,
                title,
                creator,
                assignee,
                state,
                created_at_ms: created_at,
                due_at_ms: due_at,
            });
        }
        // The board: replayed in the relay's order from its start, shown after each change.
        let board: Vec<(String, String, String, i64)> = self
            .db
            .prepare(
                "SELECT key, value, author, at FROM board_log WHERE group_id = ?1 AND at <= ?2
                 ORDER BY seq IS NULL, seq, at",
            )?
            .query_map(params![group_id, until], |r| r.try_into())?
            .collect::<Result<_, _>>()?;
        let mut state: std::collections::BTreeMap<String, String> = Default::default();
        for (key, value, who, at) in board {
            if value.is_empty() {
                state.remove(&key);
            } else {
                state.insert(key.clone(), value.clone());
            }
            if at >= opened_at {
                timeline.push(Event {
                    at_ms: at,
                    who: who.clone(),
                    kind: "board".into(),
                    text: if value.is_empty() {
                        format!("cleared {key}")
                    } else {
                        format!("set {key}: {value}")
                    },
                });
                report.board.push(BoardSnapshot {
                    at_ms: at,
                    who,
                    key,
                    value,
                    entries: state.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                });
            }
        }
        if let (Some(by), Some(at)) = (closed_by, closed_at) {
            timeline.push(Event {
                at_ms: at,
                who: by,
                kind: "incident".into(),
                text: "closed the incident".into(),
            });
        }
        timeline.sort_by_key(|e| e.at_ms);
        report.timeline = timeline;
        if drill {
            report.earlier_drills = self.earlier_drills(&group_id, opened_at)?;
        }
        Ok(report)
    }

    fn alert_figures(
        &self,
        group_id: &[u8],
        alert: &str,
        sender: &str,
        text: &str,
        sent_at: i64,
        drill: bool,
    ) -> Result<AlertFigures, EngineError> {
        let asked = self.asked_members(group_id, sender)?;
        let firsts: Vec<(String, i64, Option<String>)> = self
            .db
            .prepare(
                "SELECT a.user, MIN(a.at), k.answer FROM answer_log a
                 LEFT JOIN acks k ON k.group_id = a.group_id AND k.message_id = a.message_id AND k.user = a.user
                 WHERE a.group_id = ?1 AND a.message_id = ?2 GROUP BY a.user ORDER BY MIN(a.at)",
            )?
            .query_map(params![group_id, alert], |r| r.try_into())?
            .collect::<Result<_, _>>()?;
        let options: Option<String> = self.db.query_row(
            "SELECT options FROM messages WHERE group_id = ?1 AND id = ?2",
            params![group_id, alert],
            |r| r.get(0),
        )?;
        let options = conversation::alert_options(options.as_deref());
        let responses: Vec<Response> = firsts
            .iter()
            .filter(|(u, _, _)| u != sender)
            .map(|(user, at, answer)| Response {
                user: user.clone(),
                after_ms: at.saturating_sub(sent_at).max(0),
                answer: answer.clone().unwrap_or_else(|| "acknowledged".into()),
            })
            .collect();
        Ok(AlertFigures {
            id: alert.to_string(),
            sender: sender.to_string(),
            text: text.to_string(),
            sent_at_ms: sent_at,
            drill,
            asked: asked.len(),
            answers: options
                .iter()
                .map(|o| {
                    let n = responses.iter().filter(|r| r.answer == o.label).count();
                    (o.label.clone(), n)
                })
                .collect(),
            not_answered: asked
                .into_iter()
                .filter(|u| !responses.iter().any(|r| r.user == *u))
                .collect(),
            responses,
        })
    }

    fn earlier_drills(
        &self,
        group_id: &[u8],
        before: i64,
    ) -> Result<Vec<DrillFigures>, EngineError> {
        let drills: Vec<(String, String, i64, Option<i64>)> = self
            .db
            .prepare(
                "SELECT id, title, opened_at, closed_at FROM incidents
                 WHERE group_id = ?1 AND drill = 1 AND opened_at < ?2 ORDER BY opened_at DESC LIMIT 10",
            )?
            .query_map(params![group_id, before], |r| r.try_into())?
            .collect::<Result<_, _>>()?;
        let mut figures = Vec::new();
        for (id, title, from, to) in drills {
            let to = to.unwrap_or(before);
            let alerts: Vec<(String, String, String, i64)> = self
                .db
                .prepare(
                    "SELECT m.id, m.sender, m.body, m.sent_at FROM messages m
                     WHERE m.group_id = ?1 AND m.kind = 'alert' AND m.ack_required = 1 AND m.deleted = 0
                       AND m.sent_at BETWEEN ?2 AND ?3
                       AND NOT EXISTS (SELECT 1 FROM duty_claims c WHERE c.group_id = m.group_id AND c.message_id = m.id AND c.won = 1)",
                )?
                .query_map(params![group_id, from, to], |r| r.try_into())?
                .collect::<Result<_, _>>()?;
            let mut times = Vec::new();
            let (mut answered, mut asked) = (0, 0);
            for (alert, sender, text, at) in &alerts {
                let f = self.alert_figures(group_id, alert, sender, text, *at, true)?;
                answered += f.responses.len();
                asked += f.asked;
                times.extend(f.responses.iter().map(|r| r.after_ms));
            }
            times.sort();
            figures.push(DrillFigures {
                id,
                title,
                opened_at_ms: from,
                alerts: alerts.len(),
                answered,
                asked,
                median_ms: muster_report::median(&times),
                slowest_ms: times.last().copied(),
            });
        }
        Ok(figures)
    }
}
