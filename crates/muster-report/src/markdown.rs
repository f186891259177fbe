//! The report as Markdown.

use crate::{local, or_dash, span, utc, Incident};
use chrono::TimeZone;
use std::fmt::{Display, Write};

/// Text safe inside a Markdown table cell or heading: one line, with what Markdown
/// would read as markup (table cells, links, emphasis, code, raw HTML) escaped.
fn cell(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            c if c.is_control() => out.push(' '),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\\' | '|' | '[' | ']' | '*' | '_' | '`' | '#' | '!' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

fn at_or_dash<Tz: TimeZone>(ms: Option<i64>, tz: &Tz) -> String
where
    Tz::Offset: Display,
{
    ms.map(|ms| format!("{} ({})", utc(ms), local(ms, tz)))
        .unwrap_or_else(|| "–".into())
}

/// The report in Markdown, times in UTC and in `tz`.
pub fn render_markdown<Tz: TimeZone>(incident: &Incident, tz: &Tz) -> String
where
    Tz::Offset: Display,
{
    let mut out = String::new();
    let i = incident;
    let drill = if i.drill { "DRILL: " } else { "" };
    let _ = writeln!(out, "# After-action report: {drill}{}\n", cell(&i.title));
    if i.drill {
        let _ = writeln!(
            out,
            "> **DRILL**: this incident was an exercise, not a real emergency.\n"
        );
    }
    let _ = writeln!(out, "- Group: {}", cell(&i.group));
    let _ = writeln!(out, "- Incident: {}", i.id);
    let _ = writeln!(
        out,
        "- Opened: {} by {}",
        at_or_dash(Some(i.opened_at_ms), tz),
        i.opened_by
    );
    match (&i.closed_by, i.closed_at_ms) {
        (Some(by), Some(at)) => {
            let _ = writeln!(out, "- Closed: {} by {by}", at_or_dash(Some(at), tz));
            let _ = writeln!(out, "- Duration: {}", span(at - i.opened_at_ms));
        }
        _ => {
            let _ = writeln!(out, "- Closed: not yet (the report runs to now)");
        }
    }
    let (median, slowest) = i.response_figures();
    let _ = writeln!(
        out,
        "- Alerts: {}; median first answer {}, slowest {}",
        i.alerts.len(),
        or_dash(median),
        or_dash(slowest)
    );

    let _ = writeln!(out, "\n## Timeline\n");
    let _ = writeln!(out, "| Time (UTC) | Local time | Who | What | Event |");
    let _ = writeln!(out, "|---|---|---|---|---|");
    for e in &i.timeline {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            utc(e.at_ms),
            local(e.at_ms, tz),
            cell(&e.who),
            e.kind,
            cell(&e.text)
        );
    }

    let _ = writeln!(out, "\n## Roll-call\n");
    if i.alerts.is_empty() {
        let _ = writeln!(out, "No alerts.");
    } else {
        let _ = writeln!(
            out,
            "| Alert | Sent (UTC) | Answered | Median | Slowest | Answers | Not answered |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|");
        for a in &i.alerts {
            let answers = a
                .answers
                .iter()
                .map(|(label, n)| format!("{label}: {n}"))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(
                out,
                "| {}{} | {} | {} of {} | {} | {} | {} | {} |",
                if a.drill { "[DRILL] " } else { "" },
                cell(&a.text),
                utc(a.sent_at_ms),
                a.responses.len(),
                a.asked,
                or_dash(a.median_ms()),
                or_dash(a.slowest_ms()),
                cell(&answers),
                if a.not_answered.is_empty() {
                    "nobody".into()
                } else {
                    a.not_answered.join(", ")
                }
            );
        }
    }

    let _ = writeln!(out, "\n## Escalations\n");
    if i.escalations.is_empty() {
        let _ = writeln!(out, "None.");
    }
    for e in &i.escalations {
        let to =
            e.to.as_ref()
                .map(|t| format!(" in {}", cell(t)))
                .unwrap_or_default();
        let _ = writeln!(
            out,
            "- {}: {} {}{to} alert {}, silent: {}",
            utc(e.at_ms),
            e.by,
            e.action,
            &e.alert_id[..8.min(e.alert_id.len())],
            e.silent.join(", ")
        );
    }

    let _ = writeln!(out, "\n## Tasks\n");
    if i.tasks.is_empty() {
        let _ = writeln!(out, "No tasks.");
    } else {
        let _ = writeln!(
            out,
            "| Task | Assignee | Set by | Set (UTC) | Due | Accepted | Declined | Done | Overdue | State |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
        for t in &i.tasks {
            let time = |ms: Option<i64>| ms.map(utc).unwrap_or_else(|| "–".into());
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                cell(&t.title),
                t.assignee,
                t.creator,
                utc(t.created_at_ms),
                time(t.due_at_ms),
                time(t.accepted_at_ms),
                time(t.declined_at_ms),
                time(t.done_at_ms),
                time(t.overdue_at_ms),
                t.state
            );
        }
    }

    let _ = writeln!(out, "\n## Board\n");
    if i.board.is_empty() {
        let _ = writeln!(out, "No board changes.");
    }
    for b in &i.board {
        let change = if b.value.is_empty() {
            format!("{} cleared {}", b.who, cell(&b.key))
        } else {
            format!("{} set {} to {}", b.who, cell(&b.key), cell(&b.value))
        };
        let _ = writeln!(out, "### {}: {change}\n", utc(b.at_ms));
        if b.entries.is_empty() {
            let _ = writeln!(out, "(the board is empty)\n");
            continue;
        }
        let _ = writeln!(out, "| Entry | Value |\n|---|---|");
        for (k, v) in &b.entries {
            let _ = writeln!(out, "| {} | {} |", cell(k), cell(v));
        }
        let _ = writeln!(out);
    }

    if i.drill {
        let _ = writeln!(out, "\n## Compared with earlier drills\n");
        if i.earlier_drills.is_empty() {
            let _ = writeln!(out, "This is the group's first drill.");
        } else {
            let _ = writeln!(
                out,
                "| Drill | Opened (UTC) | Alerts | Answered | Median | Slowest |"
            );
            let _ = writeln!(out, "|---|---|---|---|---|---|");
            let _ = writeln!(
                out,
                "| this drill: {} | {} | {} | {} of {} | {} | {} |",
                cell(&i.title),
                utc(i.opened_at_ms),
                i.alerts.len(),
                i.alerts.iter().map(|a| a.responses.len()).sum::<usize>(),
                i.alerts.iter().map(|a| a.asked).sum::<usize>(),
                or_dash(median),
                or_dash(slowest)
            );
            for d in &i.earlier_drills {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} of {} | {} | {} |",
                    cell(&d.title),
                    utc(d.opened_at_ms),
                    d.alerts,
                    d.answered,
                    d.asked,
                    or_dash(d.median_ms),
                    or_dash(d.slowest_ms)
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::tests::sample;
    use chrono::FixedOffset;

    #[test]
    fn a_drill_report_says_so_and_gives_times_in_utc_and_local_time() {
        let md = super::render_markdown(&sample(), &FixedOffset::east_opt(3600).unwrap());
        assert!(
            md.starts_with("# After-action report: DRILL: Flooding, site B"),
            "{md}"
        );
        assert!(md.contains("this incident was an exercise"));
        assert!(
            md.contains(
                "| 2025-12-02 10:00:00 UTC | 2025-12-02 11:00:00 +01:00 | alice | incident |"
            ),
            "{md}"
        );
        // The timeline's text cannot break the table or bring markup.
        assert!(
            md.contains("opened &lt;b&gt;incident&lt;/b&gt; \\| pipes"),
            "{md}"
        );
        assert!(md.contains("| [DRILL] Evacuate | 2025-12-02 10:00:10 UTC | 2 of 3 | 7s | 10s | safe: 1, need help: 1 | dave |"), "{md}");
        assert!(
            md.contains("| Fire drill | 2025-12-01 10:00:00 UTC | 1 | 2 of 3 | 20s | 30s |"),
            "{md}"
        );
        assert!(md.contains("- Duration: 10m 00s"));
    }
}
