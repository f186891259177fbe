//! The report as one self-contained HTML page (no scripts, no outside resources), with a
//! chart of answers over time.

use crate::{local, or_dash, span, utc, Incident};
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
    let (median, slowest) = i.response_figures();
    let _ = write!(
        out,
        "<ul><li>Group: {}</li><li>Incident: {}</li><li>Opened: {} ({}) by {}</li>",
        esc(&i.group),
        esc(&i.id),
        utc(i.opened_at_ms),
        local(i.opened_at_ms, tz),
        esc(&i.opened_by)
    );
    match (&i.closed_by, i.closed_at_ms) {
        (Some(by), Some(at)) => {
            let _ = write!(
                out,
                "<li>Closed: {} ({}) by {}</li><li>Duration: {}</li>",
                utc(at),
                local(at, tz),
                esc(by),
                span(at - i.opened_at_ms)
            );
        }
        _ => out.push_str("<li>Closed: not yet</li>"),
    }
    let _ = write!(
        out,
        "<li>Alerts: {}; median first answer {}, slowest {}</li></ul>",
        i.alerts.len(),
        or_dash(median),
        or_dash(slowest)
    );
    out.push_str("<h2>Answers over time</h2>");
    out.push_str(&chart(i));
    out.push_str("<h2>Timeline</h2><table><tr><th>Time (UTC)</th><th>Local time</th><th>Who</th><th>Event</th><th>What</th></tr>");
    for e in &i.timeline {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            utc(e.at_ms),
            local(e.at_ms, tz),
            esc(&e.who),
            esc(&e.kind),
            esc(&e.text)
        );
    }
    out.push_str("</table><h2>Roll-call</h2><table><tr><th>Alert</th><th>Sent (UTC)</th><th>Answered</th><th>Median</th><th>Slowest</th><th>Answers</th><th>Not answered</th></tr>");
    for a in &i.alerts {
        let answers = a
            .answers
            .iter()
            .map(|(label, n)| format!("{label}: {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = write!(
            out,
            "<tr><td>{}{}</td><td>{}</td><td>{} of {}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if a.drill { "[DRILL] " } else { "" },
            esc(&a.text),
            utc(a.sent_at_ms),
            a.responses.len(),
            a.asked,
            or_dash(a.median_ms()),
            or_dash(a.slowest_ms()),
            esc(&answers),
            esc(&a.not_answered.join(", "))
        );
    }
    out.push_str("</table><h2>Escalations</h2><ul>");
    for e in &i.escalations {
        let _ = write!(
            out,
            "<li>{}: {} {}{} (silent: {})</li>",
            utc(e.at_ms),
            esc(&e.by),
            esc(&e.action),
            e.to.as_ref()
                .map(|t| format!(" in {}", esc(t)))
                .unwrap_or_default(),
            esc(&e.silent.join(", "))
        );
    }
    out.push_str("</ul><h2>Tasks</h2><table><tr><th>Task</th><th>Assignee</th><th>Set</th><th>Due</th><th>Accepted</th><th>Done</th><th>Overdue</th><th>State</th></tr>");
    let time = |ms: Option<i64>| ms.map(utc).unwrap_or_else(|| "–".into());
    for t in &i.tasks {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&t.title),
            esc(&t.assignee),
            utc(t.created_at_ms),
            time(t.due_at_ms),
            time(t.accepted_at_ms),
            time(t.done_at_ms),
            time(t.overdue_at_ms),
            esc(&t.state)
        );
    }
    out.push_str("</table><h2>Board</h2>");
    for b in &i.board {
        let _ = write!(
            out,
            "<h3>{}: {} {} {}</h3><table>",
            utc(b.at_ms),
            esc(&b.who),
            if b.value.is_empty() { "cleared" } else { "set" },
            esc(&b.key)
        );
        for (k, v) in &b.entries {
            let _ = write!(out, "<tr><td>{}</td><td>{}</td></tr>", esc(k), esc(v));
        }
        out.push_str("</table>");
    }
    if i.drill && !i.earlier_drills.is_empty() {
        out.push_str("<h2>Compared with earlier drills</h2><table><tr><th>Drill</th><th>Opened (UTC)</th><th>Alerts</th><th>Median</th><th>Slowest</th></tr>");
        for d in &i.earlier_drills {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&d.title),
                utc(d.opened_at_ms),
                d.alerts,
                or_dash(d.median_ms),
                or_dash(d.slowest_ms)
            );
        }
        out.push_str("</table>");
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
