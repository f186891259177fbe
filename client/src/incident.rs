//! Incident command: alerts that escalate, tasks, incidents and their after-action reports.

use crate::cli::*;
use crate::conversation::deliver_queued;
use crate::print::*;
use muster_engine::{AlertRequest, Engine, EngineError, TaskState, TaskView};
use std::time::Duration;

/// "5m" or "5m,15m": when to remind and when to raise (twice the first by default).
fn escalation_waits(spec: &str) -> Result<(Duration, Duration), EngineError> {
    let mut waits = spec
        .split(',')
        .map(|w| parse_duration(w).map_err(EngineError::Invalid));
    let remind = waits
        .next()
        .ok_or_else(|| EngineError::Invalid("--escalate-after needs a wait".into()))??;
    let raise = waits
        .next()
        .transpose()?
        .unwrap_or(remind.saturating_mul(2));
    if waits.next().is_some() {
        return Err(EngineError::Invalid(
            "--escalate-after takes one or two waits: 5m or 5m,15m".into(),
        ));
    }
    Ok((Duration::from_secs(remind), Duration::from_secs(raise)))
}

pub(crate) fn print_task(t: &TaskView) {
    let due = match (&t.due_at, t.overdue) {
        (Some(at), true) => format!("  due {at} OVERDUE"),
        (Some(at), false) => format!("  due {at}"),
        (None, _) => String::new(),
    };
    println!(
        "{}#{} {}  [{}] for {} (set by {}){due}",
        if t.drill { "[DRILL] " } else { "" },
        t.id.get(..8).unwrap_or(&t.id),
        t.title,
        t.state,
        t.assignee,
        t.creator
    );
}

/// Runs `command` if it is one of this module's; hands it back otherwise.
pub(crate) async fn run(
    engine: &mut Engine,
    command: Command,
) -> Result<Option<Command>, EngineError> {
    match command {
        Command::Alert {
            group,
            text,
            ack_required,
            options,
            escalate_after,
            escalate_to,
            drill,
        } => {
            let options = match options {
                Some(list) => {
                    muster_engine::AnswerOption::parse_list(&list).map_err(EngineError::Invalid)?
                }
                None => Vec::new(),
            };
            let escalate = match (escalate_after, escalate_to) {
                (Some(after), Some(to)) => {
                    let (remind, raise) = escalation_waits(&after)?;
                    Some((remind, raise, to))
                }
                _ => None,
            };
            let queued = engine.queue_alert_request(
                &group,
                &text,
                AlertRequest {
                    ack_required,
                    options,
                    escalate,
                    drill,
                },
            )?;
            deliver_queued(engine, &queued).await?;
            println!("alert sent {}", queued.id);
        }
        Command::Task {
            group,
            title,
            assign,
            due,
        } => {
            let queued =
                engine.queue_task(&group, &title, &assign, due.map(Duration::from_secs))?;
            deliver_queued(engine, &queued).await?;
            println!("task set {} for {assign}", queued.id);
        }
        Command::Tasks { group, json } => {
            let tasks = engine.tasks(group.as_deref())?;
            if tasks.is_empty() && !json {
                println!("no tasks");
            }
            print_listing(&tasks, json, |t| print_task(t));
        }
        Command::Accept { task } => update(engine, &task, TaskState::Accepted, "accepted").await?,
        Command::Decline { task } => update(engine, &task, TaskState::Declined, "declined").await?,
        Command::Done { task } => update(engine, &task, TaskState::Done, "done").await?,
        Command::Incident(command) => incident(engine, command).await?,
        command => return Ok(Some(command)),
    }
    Ok(None)
}

async fn update(
    engine: &mut Engine,
    task: &str,
    state: TaskState,
    said: &str,
) -> Result<(), EngineError> {
    let queued = engine.queue_task_update(task, state)?;
    deliver_queued(engine, &queued).await?;
    println!("task {task} {said}");
    Ok(())
}

async fn incident(engine: &mut Engine, command: IncidentCommand) -> Result<(), EngineError> {
    match command {
        IncidentCommand::Open {
            group,
            title,
            drill,
        } => {
            let queued = engine.open_incident(&group, &title, drill)?;
            deliver_queued(engine, &queued).await?;
            println!(
                "{}incident opened {}",
                if drill { "[DRILL] " } else { "" },
                queued.id
            );
        }
        IncidentCommand::Close { incident } => {
            let queued = engine.close_incident(&incident)?;
            deliver_queued(engine, &queued).await?;
            println!("incident closed");
        }
        IncidentCommand::List { group, json } => {
            let incidents = engine.incidents(group.as_deref())?;
            if incidents.is_empty() && !json {
                println!("no incidents");
            }
            print_listing(&incidents, json, |i| {
                println!(
                    "{}#{} {}  in {}, opened {} by {}{}",
                    if i.drill { "[DRILL] " } else { "" },
                    i.id.get(..8).unwrap_or(&i.id),
                    i.title,
                    i.group,
                    i.opened_at,
                    i.opened_by,
                    match &i.closed_at {
                        Some(at) => format!(", closed {at}"),
                        None => ", open".into(),
                    }
                );
            });
        }
        IncidentCommand::Report {
            incident,
            format,
            out,
        } => {
            let report = engine.incident_report(&incident)?;
            let text = match format {
                ReportFormat::Md => muster_engine::report::render_markdown(&report, &chrono::Local),
                ReportFormat::Html => muster_engine::report::render_html(&report, &chrono::Local),
                ReportFormat::Json => serde_json::to_string_pretty(&report)
                    .map_err(|e| EngineError::Invalid(e.to_string()))?,
            };
            match out {
                Some(path) => {
                    let mut options = std::fs::OpenOptions::new();
                    options.write(true).create_new(true);
                    #[cfg(unix)]
                    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                    let mut file = options.open(&path).map_err(|e| {
                        EngineError::Invalid(format!("cannot create {}: {e}", path.display()))
                    })?;
                    std::io::Write::write_all(&mut file, text.as_bytes())?;
                    println!("report written to {}", path.display());
                }
                // What members wrote cannot reach the terminal as escape sequences.
                None => {
                    for line in text.lines() {
                        std::println!("{}", crate::print::terminal_safe(line));
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escalation_waits_default_the_raise_to_twice_the_reminder() {
        let (a, b) = escalation_waits("5m").unwrap();
        assert_eq!((a.as_secs(), b.as_secs()), (300, 600));
        let (a, b) = escalation_waits("30s,2m").unwrap();
        assert_eq!((a.as_secs(), b.as_secs()), (30, 120));
        assert!(escalation_waits("5m,6m,7m").is_err());
        assert!(escalation_waits("soon").is_err());
    }
}
