//! How things look on a terminal: messages, groups, profiles, JSON lines, escaped control
//! characters, and the user's notification command.

use muster_engine::{AnswerOption, Engine, GroupView, MessageView};
use muster_proto::Profile;

pub(crate) const NOTIFY_COMMAND: &str = "notify-command";

/// Prints each item: one JSON object per line with `--json`, else as `human` says.
pub(crate) fn print_listing<T: serde::Serialize>(
    items: impl IntoIterator<Item = T>,
    json: bool,
    human: impl Fn(&T),
) {
    for item in items {
        if json {
            print_json(&item);
        } else {
            human(&item);
        }
    }
}

/// One JSON object on a line of its own (serde escapes every control character).
pub(crate) fn print_json(value: &impl serde::Serialize) {
    std::println!(
        "{}",
        serde_json::to_string(value).expect("values serialise")
    );
}

/// Text for a terminal: control characters (newlines, escape sequences, bidirectional
/// overrides) that colleagues put into messages, names or profiles are shown escaped, so
/// nobody can forge lines or recolour the screen.
pub(crate) fn terminal_safe(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| {
        c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if unsafe_char(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

pub(crate) fn print_message(m: &MessageView) {
    let time = m.sent_at.get(11..19).unwrap_or(&m.sent_at);
    if m.kind == "system" {
        println!("[{time}] * {}", m.text);
        return;
    }
    let short = m.id.get(..8).unwrap_or(&m.id);
    if m.deleted {
        println!("[{time}] {}: (message deleted)  #{short}", m.sender);
        return;
    }
    let drill = if m.drill { "[DRILL] " } else { "" };
    let mut line = if m.kind == "alert" {
        format!("[{time}] 🚨 {drill}ALERT from {}: ", m.sender)
    } else if m.kind == "task" {
        format!("[{time}] 📋 {}: ", m.sender)
    } else {
        format!("[{time}] {}: ", m.sender)
    };
    if let Some(r) = &m.reply_to {
        line.push_str(&format!("(reply to #{}) ", r.get(..8).unwrap_or(r)));
    }
    match &m.attachment {
        Some(a) => {
            line.push_str(&format!("📎 {} ({}, {} bytes)", a.name, a.mime, a.size));
            if m.text != a.name {
                line.push_str(&format!(" {}", m.text));
            }
        }
        None => line.push_str(&m.text),
    }
    if m.edited {
        line.push_str(" (edited)");
    }
    match m.status.as_str() {
        "sending" => line.push_str(" (sending)"),
        "failed" => line.push_str(" (not sent)"),
        _ => {}
    }
    for (emoji, users) in &m.reactions {
        line.push_str(&format!("  {emoji} {}", users.len()));
    }
    if m.ack_required && (m.options.is_empty() || m.options == AnswerOption::default_pair()) {
        line.push_str(&format!(
            "  [acknowledged by {} of {}; `muster ack {short}`]",
            m.acked_by.len(),
            m.audience
        ));
    } else if !m.options.is_empty() {
        let answers: Vec<String> = m
            .options
            .iter()
            .map(|o| format!("{}{}", o.label, if o.urgent { "!" } else { "" }))
            .collect();
        line.push_str(&format!(
            "  [answered by {} of {}; `muster answer {short} ANSWER`: {}]",
            m.acked_by.len(),
            m.audience,
            answers.join(" | ")
        ));
    }
    if m.audience > 0 && (m.status == "sent" || m.status == "sending") {
        line.push_str(&format!("  read by {} of {}", m.read_by.len(), m.audience));
    }
    line.push_str(&format!("  #{short}"));
    println!("{line}");
}

/// " (Site lead, Works)" for whichever of the two a person reveals, or nothing.
pub(crate) fn title_and_department(title: Option<&str>, department: Option<&str>) -> String {
    let shown: Vec<&str> = [title, department].into_iter().flatten().collect();
    if shown.is_empty() {
        String::new()
    } else {
        format!(" ({})", shown.join(", "))
    }
}

pub(crate) fn describe_profile(p: &Profile) -> String {
    let mut parts = vec![format!("\"{}\"", p.display_name)];
    parts.extend(p.title.iter().map(|t| format!("title {t:?}")));
    parts.extend(p.department.iter().map(|d| format!("department {d:?}")));
    parts.join(", ")
}

pub(crate) fn print_group(g: &GroupView) {
    let mut state = if g.state == muster_engine::GroupState::Active {
        String::new()
    } else {
        format!(" [{}]", g.state)
    };
    if g.managed {
        state.push_str(" [managed]");
    }
    if g.archived {
        state.push_str(" [archived]");
    }
    if g.pinned {
        state.push_str(" [pinned]");
    }
    if g.muted {
        state.push_str(" [muted]");
    } else if g.notify_level != "all" {
        state.push_str(&format!(" [notify: {}]", g.notify_level));
    }
    let members: Vec<String> = g
        .members
        .iter()
        .map(|m| {
            if g.bot_members.contains(m) {
                format!("{m} (bot)")
            } else {
                m.clone()
            }
        })
        .collect();
    println!(
        "{}{state}  ({} members: {})  id {}  epoch {}",
        g.name,
        g.members.len(),
        members.join(", "),
        g.id,
        g.epoch
    );
    if !g.waiting.is_empty() {
        println!(
            "  waiting for {} (not online yet: added as soon as their device is)",
            g.waiting.join(", ")
        );
    }
    if g.archived {
        println!("  archived: {}", g.archive_readable_by);
    }
}

/// Runs the user's notification command for each notification, without waiting for it.
pub(crate) fn notify(engine: &Engine, notifications: &[muster_engine::Notification]) {
    let Ok(Some(command)) = engine.setting(NOTIFY_COMMAND) else {
        return;
    };
    for n in notifications {
        let spawned = std::process::Command::new("sh")
            .arg("-c")
            .arg(&command)
            .env("MUSTER_KIND", &n.kind)
            .env("MUSTER_GROUP", &n.group)
            .env("MUSTER_SENDER", &n.sender)
            .env("MUSTER_ID", &n.id)
            .env("MUSTER_TEXT", &n.text)
            .stdin(std::process::Stdio::null())
            .spawn();
        match spawned {
            // Reap it in the background so it never lingers as a zombie.
            Ok(mut child) => {
                std::thread::spawn(move || child.wait());
            }
            Err(e) => eprintln!("note: notify command failed to start: {e}"),
        }
    }
}
