//! The web server: the page and its assets (embedded), a JSON API over the engine task,
//! and a Server-Sent Events stream of changes. Every request passes [`guard`] first.

use crate::actor::{Command, Event, Look, Reply};
use crate::guard::{Access, SECURITY_HEADERS};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use muster_engine::Engine;
use serde::Deserialize;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::StreamExt as _;

/// The largest upload taken: the largest attachment.
const UPLOAD_LIMIT: usize = muster_proto::MAX_ATTACHMENT as usize;

const INDEX: &str = include_str!("../assets/index.html");
const SCRIPT: &str = include_str!("../assets/app.js");
const ENROL_SCRIPT: &str = include_str!("../assets/enrol.js");
const FILES_SCRIPT: &str = include_str!("../assets/files.js");
const ADMIN_SCRIPT: &str = include_str!("../assets/admin.js");
const CRISIS_SCRIPT: &str = include_str!("../assets/crisis.js");
const STYLE: &str = include_str!("../assets/app.css");

/// What every handler shares.
#[derive(Clone)]
pub struct App {
    pub access: Arc<Access>,
    /// Open event streams: a page that leaks them cannot hold the server's tasks forever.
    pub streams: Arc<tokio::sync::Semaphore>,
    pub commands: mpsc::Sender<Command>,
    pub events: broadcast::Sender<Event>,
}

/// What is served without a session: the page, its assets and the token exchange.
const PUBLIC_PATHS: [&str; 9] = [
    "/",
    "/api/session",
    "/assets/app.css",
    "/assets/app.js",
    "/assets/enrol.js",
    "/assets/files.js",
    "/assets/admin.js",
    "/assets/crisis.js",
    "/favicon.ico",
];

/// The routes, behind the guard.
pub fn router(app: App) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/api/session", post(session))
        .route("/assets/app.js", get(|| script(SCRIPT)))
        .route("/assets/enrol.js", get(|| script(ENROL_SCRIPT)))
        .route("/assets/files.js", get(|| script(FILES_SCRIPT)))
        .route("/assets/admin.js", get(|| script(ADMIN_SCRIPT)))
        .route("/assets/crisis.js", get(|| script(CRISIS_SCRIPT)))
        .route("/assets/app.css", get(style))
        .route("/api/status", get(status))
        .route("/api/join", post(join))
        .route("/api/org", post(create_org))
        .route("/api/overview", get(overview))
        .route("/api/groups/{group}/messages", get(messages).post(send))
        .route("/api/groups/{group}/read", post(mark_read))
        .route("/api/groups/{group}/alerts", post(alert))
        .route("/api/groups/{group}/board", get(board).post(set_board))
        .route("/api/groups/{group}/view", post(set_view))
        .route(
            "/api/groups/{group}/attachments",
            post(upload).layer(DefaultBodyLimit::max(UPLOAD_LIMIT)),
        )
        .route("/api/messages/{id}/attachment", get(download))
        .route("/api/messages/{id}/edit", post(edit_message))
        .route("/api/messages/{id}/delete", post(delete_message))
        .route("/api/messages/{id}/react", post(react))
        .route("/api/alerts", get(alerts))
        .route("/api/directory", get(directory))
        .route("/api/me", get(me))
        .route("/api/profile", post(request_profile))
        .route("/api/devices", get(devices))
        .route("/api/devices/link", post(link_device))
        .route("/api/search", get(search))
        .route("/api/alerts/{id}/ack", post(acknowledge))
        .route("/api/rollcall/{id}", get(rollcall))
        .route("/api/events", get(events))
        .merge(crate::admin::routes())
        .merge(crate::incidents::routes())
        .layer(middleware::from_fn_with_state(app.clone(), guard))
        .with_state(app)
}

fn refuse(status: StatusCode, why: &'static str) -> Response {
    (status, why).into_response()
}

/// Checks the Host and the Origin of every request and the session of every API call
/// (the page, its assets and the token exchange are all that is served without one),
/// and adds the security headers.
async fn guard(State(app): State<App>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let path = request.uri().path();
    let public = PUBLIC_PATHS.contains(&path);
    let mut response = if !app.access.host_allowed(text(header::HOST)) {
        refuse(StatusCode::MISDIRECTED_REQUEST, "unknown host")
    } else if !app.access.origin_allowed(
        text(header::ORIGIN),
        !matches!(*request.method(), Method::GET | Method::HEAD),
    ) {
        refuse(StatusCode::FORBIDDEN, "cross-origin request refused")
    } else if public || app.access.authorized(text(header::AUTHORIZATION)) {
        next.run(request).await
    } else {
        refuse(
            StatusCode::UNAUTHORIZED,
            "open the link `muster ui` printed to start a session",
        )
    };
    for (name, value) in SECURITY_HEADERS {
        response
            .headers_mut()
            .insert(name, HeaderValue::from_static(value));
    }
    response
}

async fn index() -> Html<&'static str> {
    Html(INDEX)
}

#[derive(Deserialize)]
struct Exchange {
    token: String,
}

/// Trades the link's one-time token for the tab's session.
async fn session(State(app): State<App>, Json(exchange): Json<Exchange>) -> Response {
    match app.access.exchange(&exchange.token) {
        Some(session) => Json(serde_json::json!({ "session": session })).into_response(),
        None => refuse(
            StatusCode::UNAUTHORIZED,
            "this link was used already: restart `muster ui` for a new one",
        ),
    }
}

async fn script(source: &'static str) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        source,
    )
}

async fn style() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE)
}

/// Sends `command` to the engine task and answers with its result as JSON.
pub(crate) async fn ask<T: serde::Serialize>(
    app: &App,
    command: impl FnOnce(Reply<T>) -> Command,
) -> Response {
    answer(app, command, |value| Json(value).into_response()).await
}

/// Sends `command` to the engine task and answers with `respond` of its result, or with
/// why there is none.
async fn answer<T>(
    app: &App,
    command: impl FnOnce(Reply<T>) -> Command,
    respond: impl FnOnce(T) -> Response,
) -> Response {
    let (reply, answer) = oneshot::channel();
    if app.commands.send(command(reply)).await.is_err() {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "the device is shutting down",
        );
    }
    match answer.await {
        Ok(Ok(value)) => respond(value),
        Ok(Err(why)) => unprocessable(why),
        Err(_) => refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "the device is shutting down",
        ),
    }
}

/// Where this device stands: the page picks the enrolment, waiting or main screen.
async fn status(State(app): State<App>) -> Response {
    ask(&app, Command::Status).await
}

#[derive(Deserialize)]
struct JoinRequest {
    code: String,
    /// For a new user; absent when the code links another device of an existing user.
    #[serde(default)]
    profile: Option<ProfileRequest>,
}

/// Enrols this device with the code an admin (or the user's other device) handed over.
async fn join(State(app): State<App>, Json(request): Json<JoinRequest>) -> Response {
    let profile = request.profile.map(ProfileRequest::into_profile);
    ask(&app, |reply| Command::Join {
        code: request.code.trim().to_string(),
        profile,
        reply,
    })
    .await
}

/// What the page is told when the engine could not do what it asked, and why.
pub(crate) fn unprocessable(why: String) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(serde_json::json!({ "error": why })),
    )
        .into_response()
}

#[derive(Deserialize)]
struct Seen {
    /// The ids of the messages the page showed.
    ids: Vec<String>,
}

/// The page showed these messages to the user: they are read.
async fn mark_read(
    State(app): State<App>,
    Path(group): Path<String>,
    Json(seen): Json<Seen>,
) -> Response {
    ask(&app, |reply| Command::MarkRead {
        group,
        ids: seen.ids,
        reply,
    })
    .await
}

#[derive(Deserialize)]
struct NewOrganisation {
    relay: String,
    fingerprint: String,
    token: String,
    name: String,
    user: String,
    #[serde(default)]
    display_name: String,
}

/// Creates the organisation on a fresh relay, this device its first admin.
async fn create_org(State(app): State<App>, Json(org): Json<NewOrganisation>) -> Response {
    let user = org.user.trim().to_string();
    let display_name = match org.display_name.trim() {
        "" => user.clone(),
        name => name.to_string(),
    };
    let setup = crate::actor::OrgSetup {
        relay: org.relay.trim().to_string(),
        fingerprint: org.fingerprint.trim().to_string(),
        token: org.token.trim().to_string(),
        org_name: org.name.trim().to_string(),
        user,
        profile: muster_proto::Profile {
            display_name,
            ..Default::default()
        },
    };
    ask(&app, |reply| Command::CreateOrg { setup, reply }).await
}

async fn overview(State(app): State<App>) -> Response {
    ask(&app, Command::Overview).await
}

async fn messages(State(app): State<App>, Path(group): Path<String>) -> Response {
    ask(&app, |reply| Command::Messages { group, reply }).await
}

pub(crate) fn json<T: serde::Serialize>(value: T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or_default()
}

/// A queued message as the page sees it: its id.
pub(crate) fn queued(message: muster_engine::QueuedMessage) -> serde_json::Value {
    serde_json::json!({ "id": message.id })
}

pub(crate) async fn view(app: &App, look: Look) -> Response {
    ask(app, |reply| Command::View { look, reply }).await
}

pub(crate) async fn queue(app: &App, act: Look) -> Response {
    ask(app, |reply| Command::Queue { act, reply }).await
}

#[derive(Deserialize)]
struct NewMessage {
    text: String,
    /// The id of the message this one replies to.
    #[serde(default)]
    reply_to: Option<String>,
}

async fn send(
    State(app): State<App>,
    Path(group): Path<String>,
    Json(message): Json<NewMessage>,
) -> Response {
    let act = move |engine: &mut Engine| {
        engine
            .queue_reply(&group, &message.text, message.reply_to.as_deref())
            .map(queued)
    };
    queue(&app, Box::new(act)).await
}

#[derive(Deserialize)]
struct NewAttachment {
    name: String,
    #[serde(default)]
    caption: Option<String>,
}

/// A file from the page (its bytes are the body; name and caption in the query).
async fn upload(
    State(app): State<App>,
    Path(group): Path<String>,
    Query(file): Query<NewAttachment>,
    content: axum::body::Bytes,
) -> Response {
    let caption = file.caption.filter(|c| !c.trim().is_empty());
    ask(&app, |reply| Command::Upload {
        group,
        name: file.name,
        caption,
        content,
        reply,
    })
    .await
}

/// A message's attachment, checked and decrypted by this device, as a download: always
/// as plain bytes, so a colleague's file is never rendered in the page's origin.
async fn download(State(app): State<App>, Path(id): Path<String>) -> Response {
    let command = |reply| Command::Download { id, reply };
    answer(&app, command, |(_, content)| {
        (
            [
                (header::CONTENT_TYPE, "application/octet-stream"),
                (header::CONTENT_DISPOSITION, "attachment"),
            ],
            content,
        )
            .into_response()
    })
    .await
}

#[derive(Deserialize)]
struct NewText {
    text: String,
}

async fn edit_message(
    State(app): State<App>,
    Path(id): Path<String>,
    Json(edit): Json<NewText>,
) -> Response {
    let act = move |engine: &mut Engine| engine.queue_edit(&id, &edit.text).map(queued);
    queue(&app, Box::new(act)).await
}

async fn delete_message(State(app): State<App>, Path(id): Path<String>) -> Response {
    queue(
        &app,
        Box::new(move |engine: &mut Engine| engine.queue_delete(&id).map(queued)),
    )
    .await
}

#[derive(Deserialize)]
struct Reaction {
    emoji: String,
    #[serde(default)]
    remove: bool,
}

async fn react(
    State(app): State<App>,
    Path(id): Path<String>,
    Json(reaction): Json<Reaction>,
) -> Response {
    let act = move |engine: &mut Engine| {
        engine
            .queue_reaction(&id, &reaction.emoji, reaction.remove)
            .map(queued)
    };
    queue(&app, Box::new(act)).await
}

async fn board(State(app): State<App>, Path(group): Path<String>) -> Response {
    view(
        &app,
        Box::new(move |engine: &mut Engine| engine.board(&group).map(json)),
    )
    .await
}

#[derive(Deserialize)]
struct BoardSet {
    key: String,
    value: String,
}

async fn set_board(
    State(app): State<App>,
    Path(group): Path<String>,
    Json(entry): Json<BoardSet>,
) -> Response {
    let act = move |engine: &mut Engine| {
        engine
            .queue_board_set(&group, &entry.key, &entry.value)
            .map(queued)
    };
    queue(&app, Box::new(act)).await
}

#[derive(Deserialize)]
struct NewAlert {
    text: String,
    #[serde(default)]
    ack_required: bool,
    /// Answers, comma-separated, `!` marking urgent ones.
    #[serde(default)]
    options: Option<String>,
    #[serde(default)]
    drill: bool,
}

async fn alert(
    State(app): State<App>,
    Path(group): Path<String>,
    Json(alert): Json<NewAlert>,
) -> Response {
    let act = move |engine: &mut Engine| {
        let options = match alert.options.as_deref().map(str::trim) {
            Some(list) if !list.is_empty() => muster_engine::AnswerOption::parse_list(list)
                .map_err(muster_engine::EngineError::Invalid)?,
            _ => Vec::new(),
        };
        engine
            .queue_alert_request(
                &group,
                &alert.text,
                muster_engine::AlertRequest {
                    ack_required: alert.ack_required,
                    options,
                    escalate: None,
                    drill: alert.drill,
                },
            )
            .map(queued)
    };
    queue(&app, Box::new(act)).await
}

/// This user's own view of a group: muted, pinned, which messages notify.
#[derive(Deserialize)]
struct GroupViewChange {
    muted: Option<bool>,
    pinned: Option<bool>,
    notify_level: Option<String>,
}

async fn set_view(
    State(app): State<App>,
    Path(group): Path<String>,
    Json(change): Json<GroupViewChange>,
) -> Response {
    let act = move |engine: &mut Engine| {
        engine
            .set_group_view(
                &group,
                change.muted,
                change.pinned,
                change.notify_level.as_deref(),
            )
            .map(json)
    };
    view(&app, Box::new(act)).await
}

/// This user's approved profile.
async fn me(State(app): State<App>) -> Response {
    view(
        &app,
        Box::new(|engine: &mut Engine| engine.profile().map(json)),
    )
    .await
}

#[derive(Deserialize)]
struct ProfileRequest {
    display_name: String,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    department: Option<String>,
}

impl ProfileRequest {
    fn into_profile(self) -> muster_proto::Profile {
        let blank_is_none = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
        muster_proto::Profile {
            display_name: self.display_name.trim().to_string(),
            title: blank_is_none(self.title),
            department: blank_is_none(self.department),
        }
    }
}

async fn request_profile(State(app): State<App>, Json(request): Json<ProfileRequest>) -> Response {
    let profile = request.into_profile();
    ask(&app, |reply| Command::RequestProfile { profile, reply }).await
}

async fn devices(State(app): State<App>) -> Response {
    ask(&app, Command::Devices).await
}

async fn link_device(State(app): State<App>) -> Response {
    ask(&app, Command::LinkDevice).await
}

async fn directory(State(app): State<App>) -> Response {
    ask(&app, Command::Directory).await
}

#[derive(Deserialize)]
struct SearchQuery {
    q: String,
}

/// Full-text search across every group, in this device's store only.
async fn search(State(app): State<App>, Query(query): Query<SearchQuery>) -> Response {
    let act = move |engine: &mut Engine| engine.search(&query.q, None, 100).map(json);
    view(&app, Box::new(act)).await
}

async fn alerts(State(app): State<App>) -> Response {
    view(
        &app,
        Box::new(|engine: &mut Engine| engine.unacknowledged_alerts().map(json)),
    )
    .await
}

async fn acknowledge(State(app): State<App>, Path(id): Path<String>) -> Response {
    queue(
        &app,
        Box::new(move |engine: &mut Engine| engine.queue_ack(&id).map(queued)),
    )
    .await
}

async fn rollcall(State(app): State<App>, Path(id): Path<String>) -> Response {
    view(
        &app,
        Box::new(move |engine: &mut Engine| engine.rollcall(&id).map(json)),
    )
    .await
}

/// Every change, as it happens; a page that fell behind is told once to refetch.
async fn events(State(app): State<App>) -> Response {
    let Ok(permit) = app.streams.clone().try_acquire_owned() else {
        return refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "too many pages are open on this device's UI",
        );
    };
    let stream = BroadcastStream::new(app.events.subscribe()).map(move |event| {
        let _held = &permit;
        let (kind, data) = match event {
            Ok(e) => (e.kind, e.data.to_string()),
            Err(_) => ("changed", "null".to_string()),
        };
        Ok::<_, Infallible>(SseEvent::default().event(kind).data(data))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}
