//! Commands that stay connected: `chat` and `rollcall --watch`, reconnecting through the
//! driver, and the shutdown signal the archive service waits on.

use crate::print::*;
use muster_driver::{Session, Wake};
use muster_engine::{Engine, EngineError};
use std::io::Write;

pub(crate) async fn rollcall(
    engine: &mut Engine,
    id: &str,
    watch: bool,
    json: bool,
) -> Result<(), EngineError> {
    let mut session = Session::start(engine).await?;
    let mut last_shown = None;
    loop {
        let report = session.sync(engine).await?;
        notify(engine, &report.notifications);
        for p in &report.problems {
            eprintln!("warning: {p}");
        }
        let r = engine.rollcall(id)?;
        let summary = serde_json::to_string(&r.members).unwrap_or_default();
        if last_shown.as_ref() != Some(&summary) {
            if json {
                print_json(&r);
            } else {
                let asks_only_ack = r.alert.options.is_empty()
                    || r.alert.options == muster_engine::AnswerOption::default_pair();
                println!(
                    "{} of {} {}: {}",
                    r.acknowledged,
                    r.members.len(),
                    if asks_only_ack {
                        "acknowledged"
                    } else {
                        "answered"
                    },
                    r.alert.text
                );
                for a in &r.answers {
                    let urgent = if a.urgent { " (urgent)" } else { "" };
                    println!(
                        "  {}{urgent}: {} — {}",
                        a.answer,
                        a.users.len(),
                        if a.users.is_empty() {
                            "nobody".to_string()
                        } else {
                            a.users.join(", ")
                        }
                    );
                }
                if !r.answers.is_empty() {
                    println!(
                        "  not answered: {} — {}",
                        r.not_answered.len(),
                        if r.not_answered.is_empty() {
                            "nobody".to_string()
                        } else {
                            r.not_answered.join(", ")
                        }
                    );
                }
                for m in &r.members {
                    match (&m.acked_at, &m.answer) {
                        (Some(at), Some(answer)) => println!("  ✓ {:<16} {at}  {answer}", m.user),
                        (Some(at), None) => println!("  ✓ {:<16} {at}", m.user),
                        (None, _) => println!("  … {:<16} waiting", m.user),
                    }
                }
            }
            let _ = std::io::stdout().flush();
            last_shown = Some(summary);
        }
        if !watch || r.acknowledged == r.members.len() {
            break;
        }
        let receipts_due = muster_driver::receipts_due_in(engine);
        let limit = std::time::Duration::from_secs(30)
            .min(receipts_due.unwrap_or(std::time::Duration::MAX));
        session.wake(Some(limit)).await;
    }
    session.finish(engine).await;
    Ok(())
}

/// Serves the graphical client on `listen` (loopback only) until Ctrl-C or SIGTERM.
pub(crate) async fn ui(
    engine: &mut Engine,
    listen: std::net::SocketAddr,
    open: bool,
) -> Result<(), EngineError> {
    if !listen.ip().is_loopback() {
        return Err(EngineError::Invalid(format!(
            "{listen} is not a loopback address: the UI is served to this machine only"
        )));
    }
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let access = std::sync::Arc::new(muster_ui::Access::new(listener.local_addr()?));
    let link = access.link();
    println!("muster ui: open {link}");
    let relink_on_enter = in_the_foreground();
    println!(
        "(the link works once, within {} minutes;{} Ctrl-C stops the UI)",
        muster_ui::LINK_LIFETIME.as_secs() / 60,
        if relink_on_enter {
            " press Enter for a new one;"
        } else {
            ""
        }
    );
    let _ = std::io::stdout().flush();
    // Enter prints a fresh link, for another tab or after the tab was closed. Only when
    // started in the foreground of a terminal: a background job that read it would be
    // stopped.
    let relink = relink_on_enter.then(|| {
        let access = access.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
            while let Ok(Some(_)) = lines.next_line().await {
                println!("muster ui: open {}", access.link());
                let _ = std::io::stdout().flush();
            }
        })
    });
    // The browser is handed a file only this user can read, which sends it on to the
    // link: a link on a command line would show in the process list to every local user.
    let opener = if open {
        match open_in_browser(&link) {
            Ok(file) => Some(file),
            Err(e) => {
                eprintln!("could not open a browser ({e}): open the link yourself");
                None
            }
        }
    } else {
        None
    };
    let result = muster_ui::serve(engine, listener, access, shutdown_signal()).await;
    if let Some(relink) = relink {
        relink.abort();
    }
    if let Some(file) = opener {
        let _ = std::fs::remove_file(file);
    }
    result
}

/// Whether standard input is a terminal of which this process is in the foreground
/// (Linux: from /proc; elsewhere never).
fn in_the_foreground() -> bool {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        return false;
    }
    // Fields 5 and 8 of /proc/self/stat: the process group and the terminal's
    // foreground process group (after the name, which may hold spaces, in parentheses).
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return false;
    };
    let Some((_, after_name)) = stat.rsplit_once(')') else {
        return false;
    };
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    matches!((fields.get(2), fields.get(5)), (Some(group), Some(foreground)) if group == foreground)
}

/// Writes a page readable by this user only that redirects to `link`, and opens it.
fn open_in_browser(link: &str) -> std::io::Result<std::path::PathBuf> {
    let mut name = [0u8; 8];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut name)?;
    let path = std::env::temp_dir().join(format!(
        "muster-ui-{}.html",
        name.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path)?;
    write!(
        file,
        "<!doctype html><meta http-equiv=\"refresh\" content=\"0;url={link}\"><title>Muster</title>"
    )?;
    std::process::Command::new("xdg-open").arg(&path).spawn()?;
    Ok(path)
}

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

pub(crate) async fn chat(engine: &mut Engine, group: &str) -> Result<(), EngineError> {
    use tokio::io::AsyncBufReadExt;
    let mut session = Session::start(engine).await?;
    session.subscribe().await;
    let report = session.sync(engine).await?;
    for p in &report.problems {
        eprintln!("warning: {p}");
    }
    let mut last = 0;
    for m in engine.read(group, 20)? {
        print_message(&m);
        last = last.max(m.local_seq);
    }
    if let Some(g) = engine
        .groups()?
        .into_iter()
        .find(|g| g.name == group || g.id.starts_with(group))
    {
        if g.archived {
            if g.archive_members.is_empty() {
                println!("*** ARCHIVED GROUP WITHOUT ITS ARCHIVE: sending is blocked until an admin restores it ***");
            } else {
                println!(
                    "*** ARCHIVED: everything said here is kept by the organisation's compliance archive ({}), {} ***",
                    g.archive_members.join(", "),
                    g.archive_readable_by
                );
            }
        }
    }
    println!(
        "--- chatting in {group}: type a message and press Enter; /ack ID acknowledges an alert, /answer ID ANSWER answers one; /quit or Ctrl-D to leave ---"
    );
    remind_unacknowledged(engine)?;
    let _ = std::io::stdout().flush();
    let reminder_every = std::env::var("MUSTER_REMINDER_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60u64)
        .max(1);
    let mut reminder = tokio::time::interval(std::time::Duration::from_secs(reminder_every));
    reminder.tick().await;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        // Held delivery receipts go out when they fall due, even while nothing arrives.
        let receipts_due = muster_driver::receipts_due_in(engine);
        tokio::select! {
            wake = session.wake(receipts_due) => {
                // After a reconnection, whatever was said meanwhile is unknown: a whole sync.
                let report = if wake == Wake::Lost {
                    eprintln!("connection to the relay lost; reconnecting");
                    session.reconnect(engine).await?;
                    session.sync(engine).await?
                } else {
                    session.on_wake(engine).await?
                };
                notify(engine, &report.notifications);
                for p in &report.problems {
                    eprintln!("warning: {p}");
                }
                // Urgent alerts from other groups come through here too.
                for n in report.notifications.iter().filter(|n| n.kind == "alert" && n.group != group) {
                    println!("🚨 ALERT in {} from {}: {}  #{}", n.group, n.sender, n.text, n.id.get(..8).unwrap_or(&n.id));
                }
            }
            _ = reminder.tick() => {
                remind_unacknowledged(engine)?;
            }
            line = lines.next_line() => {
                let Some(line) = line? else { break };
                let line = line.trim();
                if line == "/quit" {
                    break;
                }
                if let Some(id) = line.strip_prefix("/ack ") {
                    match engine.queue_ack(id.trim()) {
                        Ok(_) => {
                            engine.flush(session.link()).await?;
                            println!("acknowledged {}", id.trim());
                        }
                        Err(e) => eprintln!("not acknowledged: {e}"),
                    }
                } else if let Some(rest) = line.strip_prefix("/answer ") {
                    let (id, answer) = rest.trim().split_once(' ').unwrap_or((rest.trim(), ""));
                    match engine.queue_answer(id, Some(answer)) {
                        Ok(_) => {
                            engine.flush(session.link()).await?;
                            println!("answered {id}: {}", answer.trim());
                        }
                        Err(e) => eprintln!("not answered: {e}"),
                    }
                } else if !line.is_empty() {
                    if let Err(e) = engine.send_text(session.link(), group, line).await {
                        eprintln!("not sent: {e}");
                    }
                }
            }
        }
        let fresh = engine.messages_after(group, last)?;
        for m in &fresh {
            print_message(m);
            last = last.max(m.local_seq);
        }
        if fresh
            .iter()
            .any(|m| m.kind != "system" && m.status == "received")
        {
            match engine.mark_read(&fresh) {
                Ok(()) => {
                    engine.flush(session.link()).await?;
                }
                Err(e) => eprintln!("note: read receipts not queued: {e}"),
            }
        }
        let _ = std::io::stdout().flush();
    }
    session.finish(engine).await;
    Ok(())
}

/// Repeats every alert still waiting for this user's acknowledgement.
pub(crate) fn remind_unacknowledged(engine: &Engine) -> Result<(), EngineError> {
    for m in engine.unacknowledged_alerts()? {
        println!(
            "reminder: 🚨 {} in {} asks for your acknowledgement: {}  (/ack {})",
            m.sender,
            m.group,
            m.text,
            m.id.get(..8).unwrap_or(&m.id)
        );
    }
    let _ = std::io::stdout().flush();
    Ok(())
}
