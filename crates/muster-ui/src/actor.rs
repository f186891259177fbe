//! The device's engine, kept online: one task owns it and its relay session, syncs on
//! every wake-up, and serves the web server's requests one at a time, so the browser's
//! actions and the relay's deliveries never touch the store at once. Every change is
//! announced on the event channel for the pages to refetch.

use muster_driver::{Session, Wake};
use muster_engine::{
    DeviceView, DirectoryEntry, Engine, EngineError, GroupView, Identity, MessageView, PendingView,
};
use muster_proto::Profile;

/// How long a device-link code made in the page stays valid, as `muster device link`.
const LINK_CODE_SECS: u64 = 3600;
/// How long an invite made in the page stays valid, as `muster invite`.
const INVITE_SECS: u64 = 7 * 24 * 3600;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, oneshot};

/// How many messages of a conversation a page shows.
const PAGE: usize = 200;

/// The answer to a request, or why it failed (for the user).
pub type Reply<T> = oneshot::Sender<Result<T, String>>;

/// Something a page has the engine do, answered as JSON.
pub type Look = Box<dyn FnOnce(&mut Engine) -> Result<Value, EngineError> + Send>;

/// What a page asks of the engine.
pub enum Command {
    Overview(Reply<Overview>),
    Messages {
        group: String,
        reply: Reply<Vec<MessageView>>,
    },
    /// Colleagues, from certificates the engine verified (asks the relay).
    Directory(Reply<Vec<DirectoryEntry>>),
    /// This user's enrolled devices (asks the relay).
    Devices(Reply<Vec<DeviceView>>),
    /// A one-hour code that enrols another device of this user.
    LinkDevice(Reply<String>),
    /// (admin) Enrolment requests waiting, with the check of their proofs.
    Pending(Reply<Vec<PendingView>>),
    /// (admin) Approves or rejects a waiting device.
    Decide {
        user: String,
        device: String,
        approve: bool,
        reply: Reply<String>,
    },
    /// (admin) A single-use invite code for a new colleague (seven days).
    Invite {
        user: String,
        reply: Reply<String>,
    },
    /// (admin) Revokes all of a user's devices.
    Revoke {
        user: String,
        reply: Reply<Vec<String>>,
    },
    /// Asks an admin to approve a new profile.
    RequestProfile {
        profile: Profile,
        reply: Reply<()>,
    },
    /// Reads something.
    View {
        look: Look,
        reply: Reply<Value>,
    },
    /// Queues something to send (a message, an alert, an acknowledgement), then sends
    /// the outbox.
    Queue {
        act: Look,
        reply: Reply<Value>,
    },
}

/// Who this device is and its groups.
#[derive(Serialize)]
pub struct Overview {
    pub me: Identity,
    pub groups: Vec<GroupView>,
}

/// An event for the pages: something changed (refetch), or something arrived that the
/// user's notification settings let through (show it).
#[derive(Clone, Serialize)]
pub struct Event {
    pub kind: &'static str,
    /// For `notify`: the [`muster_engine::Notification`].
    pub data: Value,
}

impl Event {
    fn changed() -> Self {
        Self {
            kind: "changed",
            data: Value::Null,
        }
    }
}

/// Runs the engine online until `commands` closes or `stop` resolves.
pub async fn run(
    engine: &mut Engine,
    mut commands: mpsc::Receiver<Command>,
    events: broadcast::Sender<Event>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), EngineError> {
    let mut session = Session::start(engine).await?;
    sync(&mut session, engine, &events).await?;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            command = commands.recv() => {
                let Some(command) = command else { break };
                handle(engine, &session, command, &events).await;
            }
            wake = session.wake(None) => {
                if wake == Wake::Lost {
                    session.reconnect(engine).await?;
                }
                sync(&mut session, engine, &events).await?;
            }
            _ = &mut stop => break,
        }
    }
    session.close().await;
    Ok(())
}

async fn sync(
    session: &mut Session,
    engine: &mut Engine,
    events: &broadcast::Sender<Event>,
) -> Result<(), EngineError> {
    let report = session.sync(engine).await?;
    if !report.problems.is_empty() {
        tracing::debug!(problems = report.problems.len(), "sync met problems");
    }
    let _ = events.send(Event::changed());
    for notification in report.notifications {
        let _ = events.send(Event {
            kind: "notify",
            data: serde_json::to_value(notification).unwrap_or_default(),
        });
    }
    Ok(())
}

async fn handle(
    engine: &mut Engine,
    session: &Session,
    command: Command,
    events: &broadcast::Sender<Event>,
) {
    let text = |e: EngineError| e.to_string();
    match command {
        Command::Overview(reply) => {
            let overview = engine.whoami().and_then(|me| {
                Ok(Overview {
                    me,
                    groups: engine.groups()?,
                })
            });
            let _ = reply.send(overview.map_err(text));
        }
        Command::Messages { group, reply } => {
            let messages = engine.read(&group, PAGE);
            if let Ok(shown) = &messages {
                // What a page shows counts as read, as it does for `muster read`.
                if engine.mark_read(shown).is_ok() {
                    let _ = engine.flush(session.link()).await;
                }
            }
            let _ = reply.send(messages.map_err(text));
        }
        Command::Directory(reply) => {
            let _ = reply.send(engine.directory(session.link()).await.map_err(text));
        }
        Command::Devices(reply) => {
            let _ = reply.send(engine.devices(session.link()).await.map_err(text));
        }
        Command::LinkDevice(reply) => {
            let code = engine
                .create_device_link(session.link(), LINK_CODE_SECS)
                .await;
            let _ = reply.send(code.map_err(text));
        }
        Command::Pending(reply) => {
            let _ = reply.send(engine.pending(session.link()).await.map_err(text));
        }
        Command::Decide {
            user,
            device,
            approve,
            reply,
        } => {
            let link = session.link();
            let decided = if approve {
                engine.approve(link, &user, Some(&device), false).await
            } else {
                engine.reject(link, &user, Some(&device)).await
            };
            let _ = reply.send(decided.map_err(text));
            let _ = events.send(Event::changed());
        }
        Command::Invite { user, reply } => {
            let code = engine
                .create_invite(session.link(), &user, INVITE_SECS)
                .await;
            let _ = reply.send(code.map_err(text));
        }
        Command::Revoke { user, reply } => {
            let revoked = engine.revoke(session.link(), &user, None).await;
            let _ = reply.send(revoked.map_err(text));
            let _ = events.send(Event::changed());
        }
        Command::RequestProfile { profile, reply } => {
            let sent = engine.request_profile(session.link(), profile).await;
            let _ = reply.send(sent.map_err(text));
        }
        Command::View { look, reply } => {
            let _ = reply.send(look(engine).map_err(text));
        }
        Command::Queue { act, reply } => {
            let queued = act(engine);
            if queued.is_ok() {
                // What the relay does not take now stays queued for the next sync.
                if let Err(e) = engine.flush(session.link()).await {
                    tracing::debug!(error = %e, "outbox not sent yet");
                }
            }
            let _ = reply.send(queued.map_err(text));
            let _ = events.send(Event::changed());
        }
    }
}
