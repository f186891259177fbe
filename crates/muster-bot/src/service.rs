//! The bot's device, kept online: one task owns the engine and its relay connection
//! ([`muster_driver::live::Link`]), syncs on every wake-up (acknowledgements come in that
//! way), and takes the intake's requests one at a time. A post is queued in the outbox
//! and answered at once; sending it follows, and whoever waits for the relay to store it
//! is told when it has.

use crate::alertmanager::{self, Notification};
use crate::IntakeError;
use muster_driver::live::{Link, Status, Woke};
use muster_driver::Wake;
use muster_engine::{
    AlarmChange, BotPost, BotPostKind, BotPosted, BotRefusal, BotRollcall, BotScope, Engine,
    EngineError, MAX_TEXT_BYTES,
};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// The answer to a request.
pub type Reply<T> = oneshot::Sender<Result<T, IntakeError>>;

/// What a request came to: a post, or nothing to post (and why).
#[derive(Debug, Clone)]
pub enum Answer {
    Posted(Posted),
    Ignored(String),
}

/// What a post became, for the intake's answer.
#[derive(Debug, Clone)]
pub struct Posted {
    pub id: String,
    pub group_id: Vec<u8>,
    pub group: String,
    pub duplicate: bool,
    /// The relay has stored it already.
    pub stored: bool,
}

/// What the intake asks of the bot's device.
pub enum Command {
    /// Posts a text or an alert to `group` (a name or id) with `token`.
    Post {
        token: String,
        group: String,
        post: BotPost,
        reply: Reply<Answer>,
    },
    /// Turns an Alertmanager notification into an alert, an update or a resolution.
    Alarm {
        token: String,
        group: String,
        notification: Box<Notification>,
        reply: Reply<Answer>,
    },
    /// Who has acknowledged one of the bot's alerts.
    Rollcall {
        token: String,
        id: String,
        reply: Reply<BotRollcall>,
    },
    /// Answers once the relay has stored message `id` (never, if it is not).
    WhenStored {
        group_id: Vec<u8>,
        id: String,
        reply: oneshot::Sender<()>,
    },
    /// Whether the bot is online.
    Status(oneshot::Sender<Status>),
}

impl Command {
    /// Whoever asked has stopped waiting: nothing is to be done.
    fn abandoned(&self) -> bool {
        match self {
            Command::Post { reply, .. } | Command::Alarm { reply, .. } => reply.is_closed(),
            Command::Rollcall { reply, .. } => reply.is_closed(),
            Command::WhenStored { reply, .. } => reply.is_closed(),
            Command::Status(reply) => reply.is_closed(),
        }
    }
}

/// What the bot's owner chose.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Alarms of these severities (lower case) ask every member to acknowledge them.
    pub ack_severities: Vec<String>,
    /// The longest the intake waits for the bot's device to answer.
    pub relay_timeout: Duration,
}

struct Waiter {
    group_id: Vec<u8>,
    id: String,
    reply: oneshot::Sender<()>,
}

/// Runs the bot's device until `commands` closes or `stop` resolves.
pub async fn run(
    engine: &mut Engine,
    settings: Settings,
    mut commands: mpsc::Receiver<Command>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), EngineError> {
    // A relay that leaves a request unanswered for half the intake's timeout counts as
    // unreachable, so that a post is still queued and answered within the timeout.
    let mut link = Link::new(engine)?
        .answering_within((settings.relay_timeout / 2).max(Duration::from_millis(500)));
    let mut waiters: Vec<Waiter> = Vec::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            command = commands.recv() => {
                let Some(command) = command else { break };
                if command.abandoned() {
                    continue;
                }
                let queued = handle(engine, &link, &settings, command, &mut waiters);
                if queued {
                    link.send_outbox(engine).await;
                }
            }
            woke = link.next() => {
                match woke {
                    Woke::Relay(Wake::Lost) => link.lost("the connection to the relay was lost".into()),
                    Woke::Relay(Wake::Pushed) => drop(link.sync(engine, true).await?),
                    Woke::Relay(_) => drop(link.sync(engine, false).await?),
                    Woke::TimeToConnect => link.start_opening(engine)?,
                    Woke::Opened(opened) => {
                        link.opened(engine, opened).await?;
                        if link.session.is_some() {
                            tracing::info!("bot online");
                            link.sync(engine, false).await?;
                        }
                    }
                }
            }
            _ = &mut stop => break,
        }
        settle(engine, &mut waiters);
    }
    if let Some(session) = &link.session {
        muster_driver::send_held_receipts(engine, session.link()).await;
    }
    link.close().await;
    Ok(())
}

/// Tells those waiting which of their messages the relay has stored.
fn settle(engine: &Engine, waiters: &mut Vec<Waiter>) {
    waiters.retain(|w| !w.reply.is_closed());
    let mut still = Vec::with_capacity(waiters.len());
    for w in waiters.drain(..) {
        if engine.relay_stored(&w.group_id, &w.id).unwrap_or(false) {
            let _ = w.reply.send(());
        } else {
            still.push(w);
        }
    }
    *waiters = still;
}

/// Whether the bot may act at all: enrolled and approved.
fn enrolled(link: &Link) -> Result<(), IntakeError> {
    match &link.status {
        Status::Online | Status::Offline { .. } => Ok(()),
        Status::Rejected { why, .. } => Err(IntakeError::Unavailable(format!(
            "this bot's enrolment was rejected: {why}"
        ))),
        _ => Err(IntakeError::Unavailable(
            "this bot is not enrolled and approved yet".into(),
        )),
    }
}

/// Handles one command; true when it queued something to send.
fn handle(
    engine: &mut Engine,
    link: &Link,
    settings: &Settings,
    command: Command,
    waiters: &mut Vec<Waiter>,
) -> bool {
    match command {
        Command::Status(reply) => {
            let _ = reply.send(link.status.clone());
            false
        }
        Command::WhenStored {
            group_id,
            id,
            reply,
        } => {
            waiters.push(Waiter {
                group_id,
                id,
                reply,
            });
            false
        }
        Command::Rollcall { token, id, reply } => {
            let answer = enrolled(link).and_then(|()| {
                let scope = engine.bot_authorize(&token, None)?;
                Ok(engine.bot_rollcall(&scope, &id)?)
            });
            let _ = reply.send(answer);
            false
        }
        Command::Post {
            token,
            group,
            post,
            reply,
        } => {
            let answer = enrolled(link).and_then(|()| {
                let scope = engine.bot_authorize(&token, Some(&group))?;
                let posted = engine.bot_post(&scope, post).map_err(refused)?;
                Ok(Answer::Posted(answer_for(engine, &scope, posted)))
            });
            answered(reply, answer)
        }
        Command::Alarm {
            token,
            group,
            notification,
            reply,
        } => {
            let answer = enrolled(link).and_then(|()| {
                let scope = engine.bot_authorize(&token, Some(&group))?;
                Ok(
                    match alarm(engine, &scope, &notification, settings).map_err(refused)? {
                        Ok(posted) => Answer::Posted(answer_for(engine, &scope, posted)),
                        Err(why) => Answer::Ignored(why),
                    },
                )
            });
            answered(reply, answer)
        }
    }
}

/// Sends the answer; true when a new post was queued.
fn answered(reply: Reply<Answer>, answer: Result<Answer, IntakeError>) -> bool {
    let queued = matches!(&answer, Ok(Answer::Posted(p)) if !p.duplicate);
    match &answer {
        Ok(Answer::Posted(p)) => tracing::info!(id = %p.id, duplicate = p.duplicate, "post queued"),
        Ok(Answer::Ignored(why)) => tracing::info!(why = %why, "notification ignored"),
        Err(e) => tracing::info!(error = %e, "request refused"),
    }
    let _ = reply.send(answer);
    queued
}

fn answer_for(engine: &Engine, scope: &BotScope, posted: BotPosted) -> Posted {
    Posted {
        stored: engine
            .relay_stored(&posted.group_id, &posted.id)
            .unwrap_or(false),
        id: posted.id,
        group_id: posted.group_id,
        group: scope.group.clone(),
        duplicate: posted.duplicate,
    }
}

/// An engine error as the intake reports it: what the caller sent was wrong, or the bot
/// failed.
fn refused(e: EngineError) -> IntakeError {
    match e {
        EngineError::Invalid(why) => IntakeError::BadRequest(why),
        EngineError::NotActive(group) => IntakeError::Refused(BotRefusal::NotMember(group)),
        other => IntakeError::Failed(other.to_string()),
    }
}

/// A notification becomes a new alert when its group has none open, or when an alert
/// fires that the open one did not cover (a new alert, or the same one firing again); a
/// reply to the open alert when only some of its alerts ended; and a "resolved" reply
/// that closes it when every alert it covered has ended. A resolution of anything else (an
/// earlier episode, delivered late) is ignored. Each delivery of the same notification is
/// stored once, and the record of open alarms changes with the post, in one transaction.
fn alarm(
    engine: &mut Engine,
    scope: &BotScope,
    notification: &Notification,
    settings: &Settings,
) -> Result<Result<BotPosted, String>, EngineError> {
    let key = Some(notification.idempotency_key());
    let alarm = notification.group_key.clone();
    let open = engine.bot_alarm(scope, &alarm)?;
    let covered: Vec<&str> = open
        .as_ref()
        .map(|o| o.episode.split('\n').collect())
        .unwrap_or_default();
    let text = |headline: &str| notification.render(headline, MAX_TEXT_BYTES);
    let reply = |engine: &mut Engine, text: String, change: Option<AlarmChange>| {
        let post = |reply_to: Option<String>| BotPost {
            kind: BotPostKind::Text {
                reply_to,
                mentions: false,
            },
            text: text.clone(),
            idempotency_key: key.clone(),
            alarm: change.clone(),
        };
        let original = open.as_ref().map(|o| o.message_id.clone());
        match engine.bot_post(scope, post(original.clone())) {
            // The alert it answers is gone from this device (retention): post it alone.
            Err(EngineError::Invalid(_)) if original.is_some() => {
                engine.bot_post(scope, post(None))
            }
            other => other,
        }
    };
    if notification.firing() {
        let firing = notification.episode(alertmanager::Status::Firing);
        if open.is_some() && firing.iter().all(|a| covered.contains(&a.as_str())) {
            return reply(engine, text("UPDATE"), None).map(Ok);
        }
        let ack_required = notification
            .severity()
            .is_some_and(|s| settings.ack_severities.contains(&s));
        return engine
            .bot_post(
                scope,
                BotPost {
                    kind: BotPostKind::Alert { ack_required },
                    text: text("FIRING"),
                    idempotency_key: key,
                    alarm: Some(AlarmChange::Open {
                        alarm,
                        episode: firing.join("\n"),
                    }),
                },
            )
            .map(Ok);
    }
    let ended = notification.episode(alertmanager::Status::Resolved);
    if open.is_some() && !covered.iter().all(|a| ended.iter().any(|e| e == a)) {
        return Ok(Err(
            "this resolution is of an earlier episode: the alarm it would close fires on".into(),
        ));
    }
    reply(engine, text("RESOLVED"), Some(AlarmChange::Close { alarm })).map(Ok)
}
