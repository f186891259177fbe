//! Groups and conversations: sending, reading, searching, alerts, the board and sync.

use crate::cli::*;
use crate::print::*;
use crate::{live, online};
use muster_engine::{Engine, EngineError};
use std::io::Read;

/// Runs `command` if it is one of this module's; hands it back otherwise.
pub(crate) async fn run(
    engine: &mut Engine,
    command: Command,
) -> Result<Option<Command>, EngineError> {
    match command {
        Command::Group(cmd) => {
            online(engine, async |engine, conn| match cmd {
                GroupCommand::Create {
                    name,
                    members,
                    managed,
                } => {
                    let g = engine.create_group(conn, &name, &members, managed).await?;
                    print_group(&g);
                    Ok(())
                }
                GroupCommand::Add { group, user } => {
                    let g = engine.add_member(conn, &group, &user).await?;
                    print_group(&g);
                    Ok(())
                }
                GroupCommand::Remove { group, user } => {
                    let g = engine.remove_member(conn, &group, &user).await?;
                    print_group(&g);
                    Ok(())
                }
                GroupCommand::Policy {
                    group,
                    retain,
                    disappear,
                    keep_forever,
                    archived,
                    no_archived,
                } => {
                    if archived || no_archived {
                        engine.set_group_policy(conn, &group, archived).await?;
                    }
                    if retain.is_some() || disappear.is_some() || keep_forever {
                        let queued = engine.queue_retention(&group, retain, disappear)?;
                        engine.deliver(conn, &queued).await?;
                    }
                    let g = engine
                        .groups()?
                        .into_iter()
                        .find(|g| g.name == group || g.id.starts_with(&group))
                        .ok_or_else(|| EngineError::UnknownGroup(group.clone()))?;
                    match (g.disappear_secs, g.retain_secs) {
                        (Some(d), _) => println!(
                            "{}: messages disappear {} after they are sent",
                            g.name,
                            muster_engine::describe_duration(d)
                        ),
                        (None, Some(r)) => println!(
                            "{}: messages are kept for {}",
                            g.name,
                            muster_engine::describe_duration(r)
                        ),
                        (None, None) => {
                            println!("{}: messages are kept with no time limit", g.name)
                        }
                    }
                    if g.archived {
                        println!(
                            "{}: archived by the organisation's compliance archive ({}), {}",
                            g.name,
                            g.archive_members.join(", "),
                            g.archive_readable_by
                        );
                    }
                    Ok(())
                }
                GroupCommand::Rename { group, new_name } => {
                    let g = engine.rename_group(conn, &group, &new_name).await?;
                    print_group(&g);
                    Ok(())
                }
                GroupCommand::Leave { group } => {
                    engine.leave_group(conn, &group).await?;
                    println!("left {group}");
                    Ok(())
                }
            })
            .await?;
        }
        Command::Groups(flag) => {
            print_listing(engine.groups()?, flag.json, |g| {
                print_group(g);
            });
        }
        Command::Send {
            group,
            text,
            file: Some(path),
            reply_to,
        } => {
            if reply_to.is_some() {
                return Err(EngineError::Invalid(
                    "a reply cannot carry a file yet: send the file, then reply".into(),
                ));
            }
            let queued = online(engine, async |engine, conn| {
                let queued = engine
                    .send_file(conn, &group, &path, text.as_deref())
                    .await?;
                engine.deliver(conn, &queued).await?;
                Ok(queued)
            })
            .await?;
            println!("sent {}", queued.id);
        }
        Command::Send {
            group,
            text,
            file: None,
            reply_to,
        } => {
            let text = text.ok_or_else(|| {
                EngineError::Invalid("give the message text (or --file PATH)".into())
            })?;
            let text = if text == "-" {
                let mut buf = String::new();
                std::io::stdin().read_to_string(&mut buf)?;
                buf.trim_end_matches('\n').to_string()
            } else {
                text
            };
            let queued = engine.queue_reply(&group, &text, reply_to.as_deref())?;
            deliver_queued(engine, &queued).await?;
            println!("sent {}", queued.id);
        }
        Command::Ack { id } => {
            let queued = engine.queue_ack(&id)?;
            deliver_queued(engine, &queued).await?;
            println!("acknowledged {id}");
        }
        Command::Answer { id, answer } => {
            let queued = engine.queue_answer(&id, Some(&answer))?;
            deliver_queued(engine, &queued).await?;
            println!("answered {id}: {}", answer.trim());
        }
        Command::Rollcall { id, watch, json } => live::rollcall(engine, &id, watch, json).await?,
        Command::Search {
            query,
            group,
            limit,
            json,
        } => {
            let found = engine.search(&query, group.as_deref(), limit)?;
            print_listing(&found, json, |m| {
                print!("{}: ", m.group);
                print_message(m);
            });
            if found.is_empty() && !json {
                println!("no messages match {query:?}");
            }
        }
        Command::Alerts(flag) => {
            print_listing(engine.unacknowledged_alerts()?, flag.json, |m| {
                print_message(m);
            });
        }
        Command::Board {
            group,
            action,
            json,
        } => {
            let queued = match &action {
                Some(BoardAction::Set { key, value }) => {
                    Some(engine.queue_board_set(&group, key, value)?)
                }
                Some(BoardAction::Clear { key }) => Some(engine.queue_board_set(&group, key, "")?),
                None => None,
            };
            if let Some(queued) = queued {
                deliver_queued(engine, &queued).await?;
            }
            print_listing(engine.board(&group)?, json, |e| {
                println!(
                    "{:<16} {}  ({}{})",
                    e.key,
                    e.value,
                    e.author,
                    if e.pending { ", not yet sent" } else { "" }
                );
            });
            // Tasks show on the board with their owner and state.
            let tasks = engine.tasks(Some(&group))?;
            if !tasks.is_empty() {
                if json {
                    print_json(&serde_json::json!({ "tasks": tasks }));
                } else {
                    println!("tasks:");
                    for t in &tasks {
                        print!("  ");
                        crate::incident::print_task(t);
                    }
                }
            }
        }
        Command::Mute { target, user } => set_mute(engine, &target, user, true)?,
        Command::Unmute { target, user } => set_mute(engine, &target, user, false)?,
        Command::Pin { group } => {
            print_group(&engine.set_group_view(&group, None, Some(true), None)?);
        }
        Command::Unpin { group } => {
            print_group(&engine.set_group_view(&group, None, Some(false), None)?);
        }
        Command::NotifyLevel { group, level } => {
            print_group(&engine.set_group_view(&group, None, None, Some(&level))?);
        }
        Command::Config(ConfigCommand::NotifyCommand { command }) => match command {
            Some(c) if c.trim().is_empty() => {
                engine.set_setting(NOTIFY_COMMAND, None)?;
                println!("notify command removed");
            }
            Some(c) => {
                engine.set_setting(NOTIFY_COMMAND, Some(&c))?;
                println!("notify command set");
            }
            None => println!(
                "{}",
                engine
                    .setting(NOTIFY_COMMAND)?
                    .unwrap_or_else(|| "(none)".into())
            ),
        },
        Command::Fetch { id, out } => {
            let saved = online(engine, async |engine, conn| {
                engine.fetch_attachment(conn, &id, out.as_deref()).await
            })
            .await;
            println!("saved {}", saved?.display());
        }
        Command::Edit { id, text } => {
            let queued = engine.queue_edit(&id, &text)?;
            deliver_queued(engine, &queued).await?;
            println!("edited {id}");
        }
        Command::Delete { id } => {
            let queued = engine.queue_delete(&id)?;
            deliver_queued(engine, &queued).await?;
            println!("deleted {id}");
        }
        Command::React { id, emoji, remove } => {
            let queued = engine.queue_reaction(&id, &emoji, remove)?;
            deliver_queued(engine, &queued).await?;
            println!(
                "{} {emoji} on {id}",
                if remove { "removed" } else { "reacted" }
            );
        }
        Command::Sync(flag) => {
            let report = online(engine, async |engine, conn| engine.sync(conn).await).await;
            let report = report?;
            notify(engine, &report.notifications);
            if flag.json {
                print_json(&report);
            } else {
                println!(
                    "received {} message(s), joined {} group(s), sent {}",
                    report.received,
                    report.joined_groups.len(),
                    report.sent
                );
                for d in &report.approved_devices {
                    println!("approved the new device of {d}, as its user asked");
                }
                for p in &report.problems {
                    println!("warning: {p}");
                }
            }
        }
        Command::Read { group, limit, json } => {
            let shown = engine.read(&group, limit)?;
            print_listing(&shown, json, |m| {
                print_message(m);
            });
            // Read receipts go out with the next sync or send.
            if let Err(e) = engine.mark_read(&shown) {
                eprintln!("note: read receipts not queued: {e}");
            }
        }
        Command::Chat { group } => live::chat(engine, &group).await?,
        Command::Ui { listen, open } => live::ui(engine, listen, open).await?,
        other => return Ok(Some(other)),
    }
    Ok(None)
}

pub(crate) fn set_mute(
    engine: &Engine,
    target: &str,
    user: bool,
    muted: bool,
) -> Result<(), EngineError> {
    let verb = if muted { "muted" } else { "unmuted" };
    if user {
        engine.set_user_muted(target, muted)?;
        println!("{verb} {target}");
    } else {
        let g = engine.set_group_view(target, Some(muted), None, None)?;
        println!("{verb} {}", g.name);
    }
    Ok(())
}

/// Sends what was just queued; when the relay cannot be reached it stays in the outbox.
pub(crate) async fn deliver_queued(
    engine: &mut Engine,
    queued: &muster_engine::QueuedMessage,
) -> Result<(), EngineError> {
    let result = online(engine, async |engine, conn| {
        engine.deliver(conn, queued).await
    })
    .await;
    match result {
        Err(e @ (EngineError::Link(_) | EngineError::AwaitingApproval)) => {
            Err(EngineError::Invalid(format!(
                "not sent yet ({e}); message {} stays in the outbox and goes out with the next `muster sync`",
                queued.id
            )))
        }
        other => other,
    }
}
