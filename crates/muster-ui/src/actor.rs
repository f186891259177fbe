//! The device's engine, kept online: one task owns it and its relay session, syncs on
//! every wake-up, and serves the web server's requests one at a time, so the browser's
//! actions and the relay's deliveries never touch the store at once. Every change is
//! announced on the event channel for the pages to refetch.

use muster_driver::live::{Link, Status, Woke};
use muster_driver::{Connection, Wake};
use muster_engine::provision::OrgSpec;
use muster_engine::{
    AttachmentView, DeviceView, DirectoryEntry, Engine, EngineError, GroupView, Identity,
    MessageView, PendingView,
};
use muster_proto::Profile;
use std::future::Future;
use std::pin::Pin;

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

/// Something a page has the engine do with the relay, answered as JSON.
pub type Work = Box<
    dyn for<'a> FnOnce(
            &'a mut Engine,
            &'a Connection,
        ) -> Pin<Box<dyn Future<Output = Result<Value, EngineError>> + 'a>>
        + Send,
>;

/// What a page asks of the engine.
pub enum Command {
    /// Does something with the relay; a change is announced to the pages afterwards.
    Online {
        work: Work,
        reply: Reply<Value>,
    },
    /// (admin) Plans a provisioning file against the organisation and, when `apply`,
    /// carries the plan out step by step, announcing each as a `progress` event.
    Provision {
        spec: OrgSpec,
        apply: bool,
        reply: Reply<Value>,
    },
    /// Where this device stands (enrolling, waiting, online, offline).
    Status(Reply<Status>),
    /// Enrols this device: with an invite code and the profile to vet, or with a
    /// device link code (no profile).
    Join {
        code: String,
        profile: Option<Profile>,
        reply: Reply<String>,
    },
    /// Creates the organisation on a fresh relay, with this device as its first admin
    /// (holding the root key).
    CreateOrg {
        setup: OrgSetup,
        reply: Reply<Value>,
    },
    Overview(Reply<Overview>),
    Messages {
        group: String,
        reply: Reply<Vec<MessageView>>,
    },
    /// The user has seen these messages of a group (read receipts go to their senders).
    MarkRead {
        group: String,
        ids: Vec<String>,
        reply: Reply<Value>,
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
    /// Encrypts a file, uploads it to the relay and sends its message to a group.
    Upload {
        group: String,
        name: String,
        caption: Option<String>,
        content: axum::body::Bytes,
        reply: Reply<Value>,
    },
    /// Downloads, checks and decrypts a message's attachment.
    Download {
        id: String,
        reply: Reply<(AttachmentView, Vec<u8>)>,
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

/// What creating an organisation takes, as `muster org create`.
pub struct OrgSetup {
    pub relay: String,
    pub fingerprint: String,
    pub token: String,
    pub org_name: String,
    pub user: String,
    pub profile: Profile,
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

/// Runs the engine until `commands` closes or `stop` resolves: online when it can be,
/// and meanwhile enrolling, waiting for approval or offline, as the page is told.
pub async fn run(
    engine: &mut Engine,
    mut commands: mpsc::Receiver<Command>,
    events: broadcast::Sender<Event>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), EngineError> {
    let mut link = Link::new(engine)?;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            command = commands.recv() => {
                let Some(command) = command else { break };
                let was = link.status.clone();
                handle(engine, &mut link, command, &events).await?;
                if link.status != was {
                    let _ = events.send(Event::changed());
                }
            }
            woke = link.next() => {
                let was = link.status.clone();
                match woke {
                    Woke::Relay(Wake::Lost) => link.lost("the connection to the relay was lost".into()),
                    Woke::Relay(Wake::Pushed) => sync(&mut link, engine, &events, true).await?,
                    Woke::Relay(_) => sync(&mut link, engine, &events, false).await?,
                    Woke::TimeToConnect => link.start_opening(engine)?,
                    Woke::Opened(opened) => {
                        link.opened(engine, opened).await?;
                        if link.session.is_some() {
                            sync(&mut link, engine, &events, false).await?;
                        }
                    }
                }
                if link.status != was {
                    let _ = events.send(Event::changed());
                }
            }
            _ = &mut stop => break,
        }
    }
    if let Some(session) = &link.session {
        muster_driver::send_held_receipts(engine, session.link()).await;
    }
    link.close().await;
    Ok(())
}

/// Syncs with the relay: as a wake-up needs ([`Engine::sync_on_wake`]) when `woken`,
/// else whole.
async fn sync(
    link: &mut Link,
    engine: &mut Engine,
    events: &broadcast::Sender<Event>,
    woken: bool,
) -> Result<(), EngineError> {
    let Some(report) = link.sync(engine, woken).await? else {
        return Ok(());
    };
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

/// The relay connection for a command that needs one, or why there is none.
fn connected(link: &Link) -> Result<&Connection, String> {
    match (&link.session, &link.status) {
        (Some(session), _) => Ok(session.link()),
        (None, Status::Offline { why }) => Err(format!("the relay cannot be reached now ({why})")),
        (None, _) => Err("this device is not enrolled yet".into()),
    }
}

async fn handle(
    engine: &mut Engine,
    link: &mut Link,
    command: Command,
    events: &broadcast::Sender<Event>,
) -> Result<(), EngineError> {
    let text = |e: EngineError| e.to_string();
    let enrolled = matches!(link.status, Status::Online | Status::Offline { .. });
    match command {
        Command::Status(reply) => {
            let _ = reply.send(Ok(link.status.clone()));
        }
        Command::Join {
            code,
            profile,
            reply,
        } => {
            if link.status != Status::Enrol {
                let _ = reply.send(Err("this device is enrolled already".into()));
                return Ok(());
            }
            let joined = match profile {
                Some(profile) => muster_driver::join(engine, &code, profile).await,
                None => muster_driver::join_device(engine, &code).await,
            };
            let _ = reply.send(joined.map_err(text));
            link.connect_now();
        }
        Command::CreateOrg { setup, reply } => {
            if link.status != Status::Enrol {
                let _ = reply.send(Err("this device is enrolled already".into()));
                return Ok(());
            }
            let created = muster_driver::create_org(
                engine,
                &muster_engine::NewOrg {
                    relay: &setup.relay,
                    fingerprint: &setup.fingerprint,
                    token: &setup.token,
                    org_name: &setup.org_name,
                    user: &setup.user,
                    profile: setup.profile,
                },
            )
            .await;
            let _ = reply.send(created.map(|()| Value::Null).map_err(text));
            link.connect_now();
        }
        command if !enrolled => command.refuse(match &link.status {
            Status::Rejected { why, .. } => format!("this device's enrolment was rejected: {why}"),
            _ => "this device is not enrolled yet".into(),
        }),
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
            let _ = reply.send(engine.read(&group, PAGE).map_err(text));
        }
        Command::MarkRead { group, ids, reply } => {
            // Only messages the page showed: one that arrived since stays unread.
            let marked = engine.read(&group, PAGE).and_then(|messages| {
                let seen: Vec<MessageView> = messages
                    .into_iter()
                    .filter(|m| ids.contains(&m.id))
                    .collect();
                engine.mark_read(&seen)
            });
            if marked.is_ok() {
                // The receipts go now, or with the next sync.
                if let Ok(conn) = connected(link) {
                    if let Err(e) = engine.flush(conn).await {
                        tracing::debug!(error = %e, "receipts not sent yet");
                    }
                }
            }
            let _ = reply.send(marked.map(|_| Value::Null).map_err(text));
        }
        Command::View { look, reply } => {
            let _ = reply.send(look(engine).map_err(text));
        }
        Command::Queue { act, reply } => {
            let queued = act(engine);
            if queued.is_ok() {
                link.send_outbox(engine).await;
            }
            let _ = reply.send(queued.map_err(text));
            let _ = events.send(Event::changed());
        }
        command => {
            let conn = match connected(link) {
                Ok(conn) => conn,
                Err(why) => {
                    command.refuse(why);
                    return Ok(());
                }
            };
            online(engine, conn, command, events).await;
        }
    }
    Ok(())
}

/// The commands that ask the relay.
async fn online(
    engine: &mut Engine,
    conn: &Connection,
    command: Command,
    events: &broadcast::Sender<Event>,
) {
    let text = |e: EngineError| e.to_string();
    match command {
        Command::Directory(reply) => {
            let _ = reply.send(engine.directory(conn).await.map_err(text));
        }
        Command::Devices(reply) => {
            let _ = reply.send(engine.devices(conn).await.map_err(text));
        }
        Command::LinkDevice(reply) => {
            let code = engine.create_device_link(conn, LINK_CODE_SECS).await;
            let _ = reply.send(code.map_err(text));
        }
        Command::Pending(reply) => {
            let _ = reply.send(engine.pending(conn).await.map_err(text));
        }
        Command::Decide {
            user,
            device,
            approve,
            reply,
        } => {
            let decided = if approve {
                engine
                    .approve(
                        conn,
                        &user,
                        Some(&device),
                        muster_engine::AccountKind::Person,
                    )
                    .await
            } else {
                engine.reject(conn, &user, Some(&device)).await
            };
            let _ = reply.send(decided.map_err(text));
            let _ = events.send(Event::changed());
        }
        Command::Invite { user, reply } => {
            let code = engine.create_invite(conn, &user, INVITE_SECS).await;
            let _ = reply.send(code.map_err(text));
        }
        Command::RequestProfile { profile, reply } => {
            let sent = engine.request_profile(conn, profile).await;
            let _ = reply.send(sent.map_err(text));
        }
        Command::Upload {
            group,
            name,
            caption,
            content,
            reply,
        } => {
            let size = content.len() as u64;
            let sent = engine
                .send_attachment(
                    conn,
                    &group,
                    &name,
                    size,
                    &mut content.as_ref(),
                    caption.as_deref(),
                )
                .await;
            if sent.is_ok() {
                if let Err(e) = engine.flush(conn).await {
                    tracing::debug!(error = %e, "outbox not sent yet");
                }
            }
            let _ = reply.send(
                sent.map(|m| serde_json::json!({ "id": m.id }))
                    .map_err(text),
            );
            let _ = events.send(Event::changed());
        }
        Command::Download { id, reply } => {
            let _ = reply.send(engine.download_attachment(conn, &id).await.map_err(text));
        }
        Command::Online { work, reply } => {
            let _ = reply.send(work(engine, conn).await.map_err(text));
            let _ = events.send(Event::changed());
        }
        Command::Provision { spec, apply, reply } => {
            let outcome = crate::provision::run(engine, conn, &spec, apply, events).await;
            let _ = reply.send(outcome.map_err(text));
            let _ = events.send(Event::changed());
        }
        command => command.refuse("not a relay request".into()),
    }
}

impl Command {
    /// Answers the page that this command cannot be done now, and why.
    fn refuse(self, why: String) {
        match self {
            Command::Status(reply) => drop(reply.send(Err(why))),
            Command::Join { reply, .. }
            | Command::LinkDevice(reply)
            | Command::Decide { reply, .. }
            | Command::Invite { reply, .. } => drop(reply.send(Err(why))),
            Command::Overview(reply) => drop(reply.send(Err(why))),
            Command::Upload { reply, .. } => drop(reply.send(Err(why))),
            Command::Online { reply, .. }
            | Command::CreateOrg { reply, .. }
            | Command::Provision { reply, .. }
            | Command::MarkRead { reply, .. } => drop(reply.send(Err(why))),
            Command::Download { reply, .. } => drop(reply.send(Err(why))),
            Command::Messages { reply, .. } => drop(reply.send(Err(why))),
            Command::Directory(reply) => drop(reply.send(Err(why))),
            Command::Devices(reply) => drop(reply.send(Err(why))),
            Command::Pending(reply) => drop(reply.send(Err(why))),
            Command::RequestProfile { reply, .. } => drop(reply.send(Err(why))),
            Command::View { reply, .. } | Command::Queue { reply, .. } => {
                drop(reply.send(Err(why)))
            }
        }
    }
}
