//! After-action reports. A device builds an [`Incident`] from its own store (nothing
//! leaves it); this crate turns it into Markdown or HTML. Pure functions: the time zone
//! for local times is handed in.

use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;
use std::fmt::Display;

mod html;
mod markdown;
mod sections;

pub use html::render_html;
pub use markdown::render_markdown;

/// One incident, as this device saw it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Incident {
    pub id: String,
    pub group: String,
    pub title: String,
    pub drill: bool,
    pub opened_by: String,
    pub opened_at_ms: i64,
    pub closed_by: Option<String>,
    pub closed_at_ms: Option<i64>,
    /// Everything that happened, oldest first.
    pub timeline: Vec<Event>,
    pub alerts: Vec<AlertFigures>,
    pub escalations: Vec<EscalationRecord>,
    pub tasks: Vec<TaskRecord>,
    /// The board after each change, oldest first.
    pub board: Vec<BoardSnapshot>,
    /// Earlier drills in the same group, for comparison (drills only).
    pub earlier_drills: Vec<DrillFigures>,
}

/// One line of the timeline.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub at_ms: i64,
    pub who: String,
    /// `incident`, `message`, `alert`, `answer`, `escalation`, `task` or `board`.
    pub kind: String,
    pub text: String,
}

/// How members answered one alert.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AlertFigures {
    pub id: String,
    pub sender: String,
    pub text: String,
    pub sent_at_ms: i64,
    pub drill: bool,
    /// Members asked (everyone but the sender and service accounts).
    pub asked: usize,
    /// Per answer, in the alert's order: how many gave it last.
    pub answers: Vec<(String, usize)>,
    /// Each member's first answer: who, how long after the alert, and what.
    pub responses: Vec<Response>,
    pub not_answered: Vec<String>,
}

/// A member's first answer to an alert.
#[derive(Debug, Clone, Serialize)]
pub struct Response {
    pub user: String,
    pub after_ms: i64,
    pub answer: String,
}

impl AlertFigures {
    /// The median time to a first answer, in milliseconds.
    pub fn median_ms(&self) -> Option<i64> {
        let times = self.sorted_times();
        median(&times)
    }

    /// The slowest first answer, in milliseconds.
    pub fn slowest_ms(&self) -> Option<i64> {
        self.sorted_times().last().copied()
    }

    fn sorted_times(&self) -> Vec<i64> {
        let mut times: Vec<i64> = self.responses.iter().map(|r| r.after_ms).collect();
        times.sort();
        times
    }
}

/// The median of sorted values (the mean of the middle two for an even count).
pub fn median(sorted: &[i64]) -> Option<i64> {
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[n / 2]),
        n => {
            let (a, b) = (sorted[n / 2 - 1], sorted[n / 2]);
            Some(a + (b - a) / 2)
        }
    }
}

/// A reminder or a raise of an alert's silent members.
#[derive(Debug, Clone, Serialize)]
pub struct EscalationRecord {
    pub at_ms: i64,
    pub alert_id: String,
    /// `reminded` or `raised`.
    pub action: String,
    pub by: String,
    pub silent: Vec<String>,
    /// Where it was raised.
    pub to: Option<String>,
}

/// A task and when it changed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TaskRecord {
    pub id: String,
    pub title: String,
    pub creator: String,
    pub assignee: String,
    pub state: String,
    pub created_at_ms: i64,
    pub due_at_ms: Option<i64>,
    pub accepted_at_ms: Option<i64>,
    pub declined_at_ms: Option<i64>,
    pub done_at_ms: Option<i64>,
    pub overdue_at_ms: Option<i64>,
}

/// The board right after one change.
#[derive(Debug, Clone, Serialize)]
pub struct BoardSnapshot {
    pub at_ms: i64,
    pub who: String,
    pub key: String,
    /// Empty: the entry was cleared.
    pub value: String,
    pub entries: Vec<(String, String)>,
}

/// An earlier drill's response figures.
#[derive(Debug, Clone, Serialize)]
pub struct DrillFigures {
    pub id: String,
    pub title: String,
    pub opened_at_ms: i64,
    pub alerts: usize,
    pub answered: usize,
    pub asked: usize,
    pub median_ms: Option<i64>,
    pub slowest_ms: Option<i64>,
}

impl Incident {
    /// The median and slowest first answer over all of this incident's alerts.
    pub fn response_figures(&self) -> (Option<i64>, Option<i64>) {
        let mut all: Vec<i64> = self
            .alerts
            .iter()
            .flat_map(|a| a.responses.iter().map(|r| r.after_ms))
            .collect();
        all.sort();
        (median(&all), all.last().copied())
    }
}

/// "2026-12-02 10:00:05 UTC".
pub(crate) fn utc(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| "?".into())
}

/// "11:00:05 +01:00" in the reader's time zone.
pub(crate) fn local<Tz: TimeZone>(ms: i64, tz: &Tz) -> String
where
    Tz::Offset: Display,
{
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| {
            t.with_timezone(tz)
                .format("%Y-%m-%d %H:%M:%S %:z")
                .to_string()
        })
        .unwrap_or_else(|| "?".into())
}

/// "45s", "2m 05s", "1h 02m".
pub fn span(ms: i64) -> String {
    let secs = ms.max(0) / 1000;
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {:02}s", s / 60, s % 60),
        s => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
    }
}

pub(crate) fn or_dash(ms: Option<i64>) -> String {
    ms.map(span).unwrap_or_else(|| "–".into())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sample() -> Incident {
        let t0 = 1_764_669_600_000; // 2025-12-02 10:00:00 UTC
        Incident {
            id: "aa11bb22cc33dd44".into(),
            group: "crisis".into(),
            title: "Flooding, site B".into(),
            drill: true,
            opened_by: "alice".into(),
            opened_at_ms: t0,
            closed_by: Some("alice".into()),
            closed_at_ms: Some(t0 + 600_000),
            timeline: vec![Event {
                at_ms: t0,
                who: "alice".into(),
                kind: "incident".into(),
                text: "opened <b>incident</b> | pipes".into(),
            }],
            alerts: vec![AlertFigures {
                id: "ee55ff66".into(),
                sender: "alice".into(),
                text: "Evacuate".into(),
                sent_at_ms: t0 + 10_000,
                drill: true,
                asked: 3,
                answers: vec![("safe".into(), 1), ("need help".into(), 1)],
                responses: vec![
                    Response {
                        user: "bob".into(),
                        after_ms: 4_000,
                        answer: "safe".into(),
                    },
                    Response {
                        user: "carol".into(),
                        after_ms: 10_000,
                        answer: "need help".into(),
                    },
                ],
                not_answered: vec!["dave".into()],
            }],
            escalations: vec![],
            tasks: vec![],
            board: vec![],
            earlier_drills: vec![DrillFigures {
                id: "0123456789abcdef".into(),
                title: "Fire drill".into(),
                opened_at_ms: t0 - 86_400_000,
                alerts: 1,
                answered: 2,
                asked: 3,
                median_ms: Some(20_000),
                slowest_ms: Some(30_000),
            }],
        }
    }

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[5]), Some(5));
        assert_eq!(median(&[4_000, 10_000]), Some(7_000));
        assert_eq!(median(&[1, 2, 9]), Some(2));
        assert_eq!(sample().alerts[0].median_ms(), Some(7_000));
        assert_eq!(sample().alerts[0].slowest_ms(), Some(10_000));
    }

    #[test]
    fn spans_read_as_people_say_them() {
        assert_eq!(span(4_000), "4s");
        assert_eq!(span(125_000), "2m 05s");
        assert_eq!(span(3_720_000), "1h 02m");
    }
}
