//! The report as Markdown.

use crate::sections::{self, Table};
use crate::Incident;
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

/// A table in Markdown, or `empty` when it has no rows.
fn table(out: &mut String, table: &Table, empty: &str) {
    if table.rows.is_empty() {
        let _ = writeln!(out, "{empty}");
        return;
    }
    let _ = writeln!(out, "| {} |", table.headers.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(table.headers.len()));
    for row in &table.rows {
        let cells: Vec<String> = row
            .iter()
            .map(|c| format!("{}{}", c.lead, cell(&c.text)))
            .collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
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
    for line in sections::overview(i, tz) {
        let _ = writeln!(out, "- {}{}", line.lead, cell(&line.text));
    }
    let _ = writeln!(out, "\n## Timeline\n");
    table(&mut out, &sections::timeline(i, tz), "Nothing happened.");
    let _ = writeln!(out, "\n## Roll-call\n");
    table(&mut out, &sections::rollcall(i), "No alerts.");
    let _ = writeln!(out, "\n## Escalations\n");
    if i.escalations.is_empty() {
        let _ = writeln!(out, "None.");
    }
    for e in &i.escalations {
        let _ = writeln!(out, "- {}", cell(&sections::escalation(e)));
    }
    let _ = writeln!(out, "\n## Tasks\n");
    table(&mut out, &sections::tasks(i), "No tasks.");
    let _ = writeln!(out, "\n## Board\n");
    if i.board.is_empty() {
        let _ = writeln!(out, "No board changes.");
    }
    for b in &i.board {
        let _ = writeln!(out, "### {}\n", cell(&sections::board_change(b)));
        table(&mut out, &sections::board(b), "(the board is empty)");
        let _ = writeln!(out);
    }
    if i.drill {
        let _ = writeln!(out, "\n## Compared with earlier drills\n");
        if i.earlier_drills.is_empty() {
            let _ = writeln!(out, "This is the group's first drill.");
        } else {
            table(&mut out, &sections::drills(i), "");
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
