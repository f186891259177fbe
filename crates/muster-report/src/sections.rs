//! What the report says, section by section, as cells of text: the Markdown and HTML
//! renderers lay the same cells out and escape them each in their own way.

use crate::{local, or_dash, span, utc, BoardSnapshot, EscalationRecord, Incident};
use chrono::TimeZone;
use std::fmt::Display;

/// One cell or line: `lead` is the report's own words, shown as they are; `text` may
/// hold what members wrote, and is escaped by each format.
pub(crate) struct Cell {
    pub lead: &'static str,
    pub text: String,
}

fn said(text: impl Into<String>) -> Cell {
    Cell {
        lead: "",
        text: text.into(),
    }
}

fn led(lead: &'static str, text: impl Into<String>) -> Cell {
    Cell {
        lead,
        text: text.into(),
    }
}

/// A table: its column headers and rows.
pub(crate) struct Table {
    pub headers: &'static [&'static str],
    pub rows: Vec<Vec<Cell>>,
}

fn at<Tz: TimeZone>(ms: i64, tz: &Tz) -> String
where
    Tz::Offset: Display,
{
    format!("{} ({})", utc(ms), local(ms, tz))
}

fn time_or_dash(ms: Option<i64>) -> String {
    ms.map(utc).unwrap_or_else(|| "–".into())
}

/// The incident at a glance: a list of lines.
pub(crate) fn overview<Tz: TimeZone>(i: &Incident, tz: &Tz) -> Vec<Cell>
where
    Tz::Offset: Display,
{
    let mut lines = vec![
        led("Group: ", i.group.clone()),
        led("Incident: ", i.id.clone()),
        led(
            "Opened: ",
            format!("{} by {}", at(i.opened_at_ms, tz), i.opened_by),
        ),
    ];
    match (&i.closed_by, i.closed_at_ms) {
        (Some(by), Some(closed)) => {
            lines.push(led("Closed: ", format!("{} by {by}", at(closed, tz))));
            lines.push(led("Duration: ", span(closed - i.opened_at_ms)));
        }
        _ => lines.push(led("Closed: not yet (the report runs to now)", "")),
    }
    let (median, slowest) = i.response_figures();
    lines.push(led(
        "Alerts: ",
        format!(
            "{}; median first answer {}, slowest {}",
            i.alerts.len(),
            or_dash(median),
            or_dash(slowest)
        ),
    ));
    lines
}

pub(crate) fn timeline<Tz: TimeZone>(i: &Incident, tz: &Tz) -> Table
where
    Tz::Offset: Display,
{
    Table {
        headers: &["Time (UTC)", "Local time", "Who", "Event", "What"],
        rows: i
            .timeline
            .iter()
            .map(|e| {
                vec![
                    said(utc(e.at_ms)),
                    said(local(e.at_ms, tz)),
                    said(e.who.clone()),
                    said(e.kind.clone()),
                    said(e.text.clone()),
                ]
            })
            .collect(),
    }
}

pub(crate) fn rollcall(i: &Incident) -> Table {
    Table {
        headers: &[
            "Alert",
            "Sent (UTC)",
            "Answered",
            "Median",
            "Slowest",
            "Answers",
            "Not answered",
        ],
        rows: i
            .alerts
            .iter()
            .map(|a| {
                let answers = a
                    .answers
                    .iter()
                    .map(|(label, n)| format!("{label}: {n}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                vec![
                    led(if a.drill { "[DRILL] " } else { "" }, a.text.clone()),
                    said(utc(a.sent_at_ms)),
                    said(format!("{} of {}", a.responses.len(), a.asked)),
                    said(or_dash(a.median_ms())),
                    said(or_dash(a.slowest_ms())),
                    said(answers),
                    said(if a.not_answered.is_empty() {
                        "nobody".into()
                    } else {
                        a.not_answered.join(", ")
                    }),
                ]
            })
            .collect(),
    }
}

/// One escalation, as a line.
pub(crate) fn escalation(e: &EscalationRecord) -> String {
    let to =
        e.to.as_ref()
            .map(|t| format!(" in {t}"))
            .unwrap_or_default();
    format!(
        "{}: {} {}{to} alert {}, silent: {}",
        utc(e.at_ms),
        e.by,
        e.action,
        &e.alert_id[..8.min(e.alert_id.len())],
        e.silent.join(", ")
    )
}

pub(crate) fn tasks(i: &Incident) -> Table {
    Table {
        headers: &[
            "Task",
            "Assignee",
            "Set by",
            "Set (UTC)",
            "Due",
            "Accepted",
            "Declined",
            "Done",
            "Overdue",
            "State",
        ],
        rows: i
            .tasks
            .iter()
            .map(|t| {
                vec![
                    said(t.title.clone()),
                    said(t.assignee.clone()),
                    said(t.creator.clone()),
                    said(utc(t.created_at_ms)),
                    said(time_or_dash(t.due_at_ms)),
                    said(time_or_dash(t.accepted_at_ms)),
                    said(time_or_dash(t.declined_at_ms)),
                    said(time_or_dash(t.done_at_ms)),
                    said(time_or_dash(t.overdue_at_ms)),
                    said(t.state.clone()),
                ]
            })
            .collect(),
    }
}

/// One board change, as a heading.
pub(crate) fn board_change(b: &BoardSnapshot) -> String {
    if b.value.is_empty() {
        format!("{}: {} cleared {}", utc(b.at_ms), b.who, b.key)
    } else {
        format!("{}: {} set {} to {}", utc(b.at_ms), b.who, b.key, b.value)
    }
}

/// The board right after one change.
pub(crate) fn board(b: &BoardSnapshot) -> Table {
    Table {
        headers: &["Entry", "Value"],
        rows: b
            .entries
            .iter()
            .map(|(k, v)| vec![said(k.clone()), said(v.clone())])
            .collect(),
    }
}

/// This drill and the group's earlier ones.
pub(crate) fn drills(i: &Incident) -> Table {
    let (median, slowest) = i.response_figures();
    let this = vec![
        led("this drill: ", i.title.clone()),
        said(utc(i.opened_at_ms)),
        said(i.alerts.len().to_string()),
        said(format!(
            "{} of {}",
            i.alerts.iter().map(|a| a.responses.len()).sum::<usize>(),
            i.alerts.iter().map(|a| a.asked).sum::<usize>()
        )),
        said(or_dash(median)),
        said(or_dash(slowest)),
    ];
    let earlier = i.earlier_drills.iter().map(|d| {
        vec![
            said(d.title.clone()),
            said(utc(d.opened_at_ms)),
            said(d.alerts.to_string()),
            said(format!("{} of {}", d.answered, d.asked)),
            said(or_dash(d.median_ms)),
            said(or_dash(d.slowest_ms)),
        ]
    });
    Table {
        headers: &[
            "Drill",
            "Opened (UTC)",
            "Alerts",
            "Answered",
            "Median",
            "Slowest",
        ],
        rows: std::iter::once(this).chain(earlier).collect(),
    }
}
