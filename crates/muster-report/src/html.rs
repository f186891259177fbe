//! The report as one self-contained HTML page (no scripts, no outside resources), with a
//! chart of answers over time.

use crate::sections::{self, Table};
use crate::{span, Incident};
use chrono::TimeZone;
use std::fmt::{Display, Write};

fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

const COLOURS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf",
];

/// Answers over time: per alert, how many members had answered, by minutes after it.
fn chart(incident: &Incident) -> String {
    let (w, h, pad) = (640.0_f64, 240.0_f64, 40.0_f64);
    let longest = incident
        .alerts
        .iter()
        .flat_map(|a| a.responses.iter().map(|r| r.after_ms))
        .max()
        .unwrap_or(0)
        .max(60_000) as f64;
    let most = incident
        .alerts
        .iter()
        .map(|a| a.asked)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let x = |ms: f64| pad + ms / longest * (w - 2.0 * pad);
    let y = |n: f64| h - pad - n / most * (h - 2.0 * pad);
    let mut svg = format!(
        "<svg role=\"img\" aria-label=\"answers over time\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">\
         <line x1=\"{pad}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#444\"/>\
         <line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{b}\" stroke=\"#444\"/>\
         <text x=\"{pad}\" y=\"{lb}\" font-size=\"11\">0</text>\
         <text x=\"{r}\" y=\"{lb}\" font-size=\"11\" text-anchor=\"end\">{end} after the alert</text>\
         <text x=\"4\" y=\"{top}\" font-size=\"11\">{most}</text>",
        b = h - pad,
        r = w - pad,
        lb = h - pad + 16.0,
        end = span(longest as i64),
        top = pad + 4.0,
    );
    for (n, alert) in incident.alerts.iter().enumerate() {
        let colour = COLOURS[n % COLOURS.len()];
        let mut times: Vec<i64> = alert.responses.iter().map(|r| r.after_ms).collect();
        times.sort();
        let mut points = format!("{:.1},{:.1}", x(0.0), y(0.0));
        for (count, t) in times.iter().enumerate() {
            let _ = write!(
                points,
                " {:.1},{:.1} {:.1},{:.1}",
                x(*t as f64),
                y(count as f64),
                x(*t as f64),
                y(count as f64 + 1.0)
            );
        }
        let _ = write!(points, " {:.1},{:.1}", x(longest), y(times.len() as f64));
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{points}\"/>\
             <text x=\"{lx}\" y=\"{ly}\" font-size=\"11\" fill=\"{colour}\">{label}</text>",
            lx = pad + 8.0,
            ly = pad + 14.0 * (n as f64 + 1.0),
            label = esc(&alert.text.chars().take(60).collect::<String>()),
        );
    }
    svg.push_str("</svg>");
    svg
}

/// A table in HTML, or `empty` when it has no rows.
fn table(out: &mut String, table: &Table, empty: &str) {
    if table.rows.is_empty() {
        let _ = write!(out, "<p>{empty}</p>");
        return;
    }
    out.push_str("<table><tr>");
    for h in table.headers {
        let _ = write!(out, "<th>{h}</th>");
    }
    out.push_str("</tr>");
    for row in &table.rows {
        out.push_str("<tr>");
        for c in row {
            let _ = write!(out, "<td>{}{}</td>", c.lead, esc(&c.text));
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>");
}

/// The report as an HTML page, times in UTC and in `tz`.
pub fn render_html<Tz: TimeZone>(incident: &Incident, tz: &Tz) -> String
where
    Tz::Offset: Display,
{
    let i = incident;
    let mut out = String::new();
    let drill = if i.drill { "DRILL: " } else { "" };
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\
         <title>After-action report: {drill}{title}</title>\
         <style>body{{font-family:sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}}\
         table{{border-collapse:collapse;margin:.5rem 0}}td,th{{border:1px solid #bbb;padding:.2rem .5rem;text-align:left}}\
         .drill{{background:#ffe08a;border:2px solid #b8860b;padding:.5rem;font-weight:bold}}</style>\
         <h1>After-action report: {drill}{title}</h1>",
        title = esc(&i.title)
    );
    if i.drill {
        out.push_str(
            "<p class=\"drill\">DRILL: this incident was an exercise, not a real emergency.</p>",
        );
    }
    out.push_str("<ul>");
    for line in sections::overview(i, tz) {
        let _ = write!(out, "<li>{}{}</li>", line.lead, esc(&line.text));
    }
    out.push_str("</ul><h2>Answers over time</h2>");
    out.push_str(&chart(i));
    out.push_str("<h2>Timeline</h2>");
    table(&mut out, &sections::timeline(i, tz), "Nothing happened.");
    out.push_str("<h2>Roll-call</h2>");
    table(&mut out, &sections::rollcall(i), "No alerts.");
    out.push_str("<h2>Escalations</h2>");
    if i.escalations.is_empty() {
        out.push_str("<p>None.</p>");
    } else {
        out.push_str("<ul>");
        for e in &i.escalations {
            let _ = write!(out, "<li>{}</li>", esc(&sections::escalation(e)));
        }
        out.push_str("</ul>");
    }
    out.push_str("<h2>Tasks</h2>");
    table(&mut out, &sections::tasks(i), "No tasks.");
    out.push_str("<h2>Board</h2>");
    if i.board.is_empty() {
        out.push_str("<p>No board changes.</p>");
    }
    for b in &i.board {
        let _ = write!(out, "<h3>{}</h3>", esc(&sections::board_change(b)));
        table(&mut out, &sections::board(b), "(the board is empty)");
    }
    if i.drill {
        out.push_str("<h2>Compared with earlier drills</h2>");
        if i.earlier_drills.is_empty() {
            out.push_str("<p>This is the group's first drill.</p>");
        } else {
            table(&mut out, &sections::drills(i), "");
        }
    }
    out.push_str("</html>\n");
    out
}

#[cfg(test)]
mod tests {
    use crate::tests::sample;
    use chrono::FixedOffset;

    #[test]
    fn the_page_escapes_what_members_wrote_and_draws_one_line_per_alert() {
        let html = super::render_html(&sample(), &FixedOffset::east_opt(0).unwrap());
        assert!(html.contains("opened &lt;b&gt;incident&lt;/b&gt; | pipes"));
        assert!(!html.contains("<b>incident"));
        assert_eq!(html.matches("<polyline").count(), 1);
        assert!(html.contains("class=\"drill\""));
        assert!(html.contains("Compared with earlier drills"));
    }
}
