//! The HTTP intake: routes, bearer tokens, bodies and the answers callers get.

use crate::alertmanager::Notification;
use crate::service::{Answer, Command, Reply};
use crate::IntakeError;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use muster_driver::live::Status;
use muster_engine::{BotPost, BotPostKind, MAX_IDEMPOTENCY_KEY};
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// The largest request body taken (an Alertmanager notification of many alerts).
pub const MAX_BODY: usize = 256 * 1024;

/// What every handler shares.
#[derive(Clone)]
pub struct Intake {
    pub commands: mpsc::Sender<Command>,
    /// The longest a request waits for the relay before it is answered "queued".
    pub relay_timeout: Duration,
    /// Alerts of these severities ask every member to acknowledge them, unless the
    /// request says otherwise.
    pub ack_severities: std::sync::Arc<Vec<String>>,
}

/// The intake's routes.
pub fn router(intake: Intake) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/groups/{group}/messages", post(post_message))
        .route("/v1/groups/{group}/alerts", post(post_alert))
        .route("/v1/groups/{group}/alertmanager", post(post_alertmanager))
        .route("/v1/alerts/{id}/rollcall", get(rollcall))
        .fallback(|| async {
            IntakeError::NotFound("no such route (see the README's bot section)".into())
                .into_response()
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(intake)
}

impl IntoResponse for IntakeError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = (status, Json(json!({ "error": self.to_string() }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// A text for the group.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageBody {
    text: String,
    #[serde(default)]
    reply_to: Option<String>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

/// An alert for the group.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertBody {
    text: String,
    /// Absent: asked for when the severity is one the bot was told to ask for.
    #[serde(default)]
    ack_required: Option<bool>,
    #[serde(default)]
    severity: Option<String>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

fn bearer(headers: &HeaderMap) -> Result<String, IntakeError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| {
            IntakeError::Unauthorized("an Authorization: Bearer token is required".into())
        })?
        .to_str()
        .map_err(|_| IntakeError::Unauthorized("the Authorization header is not text".into()))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| {
            IntakeError::Unauthorized("the Authorization header must be `Bearer TOKEN`".into())
        })?;
    if !muster_engine::looks_like_bot_token(token) {
        return Err(IntakeError::Refused(muster_engine::BotRefusal::BadToken));
    }
    Ok(token.trim().to_string())
}

/// The body, or why it was not taken.
fn body_of(body: Result<Bytes, BytesRejection>) -> Result<Bytes, IntakeError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            IntakeError::TooLarge(MAX_BODY)
        } else {
            IntakeError::BadRequest(format!("the request body could not be read: {e}"))
        }
    })
}

fn json_of<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, IntakeError> {
    serde_json::from_slice(body)
        .map_err(|e| IntakeError::BadRequest(format!("malformed JSON: {e}")))
}

/// The one idempotency key of a request: the `Idempotency-Key` header or the body's field.
fn idempotency_key(
    headers: &HeaderMap,
    in_body: Option<String>,
) -> Result<Option<String>, IntakeError> {
    let header = match headers.get("idempotency-key") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| {
                    IntakeError::BadRequest("the Idempotency-Key header is not text".into())
                })?
                .to_string(),
        ),
        None => None,
    };
    let key = match (header, in_body) {
        (Some(h), Some(b)) if h != b => {
            return Err(IntakeError::BadRequest(
                "the Idempotency-Key header and the body's idempotency_key differ".into(),
            ))
        }
        (h, b) => h.or(b),
    };
    if let Some(k) = &key {
        if k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY {
            return Err(IntakeError::BadRequest(format!(
                "an idempotency key must be 1 to {MAX_IDEMPOTENCY_KEY} bytes"
            )));
        }
    }
    Ok(key)
}

impl Intake {
    /// Asks the bot's device, waiting at most until `deadline`.
    async fn ask<T>(
        &self,
        deadline: Instant,
        command: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T, IntakeError> {
        let (reply, answer) = oneshot::channel();
        let busy = || {
            IntakeError::Unavailable(format!(
                "the bot could not take the request within {} s; send it again (with the same idempotency key)",
                self.relay_timeout.as_secs()
            ))
        };
        tokio::time::timeout_at(deadline, self.commands.send(command(reply)))
            .await
            .map_err(|_| busy())?
            .map_err(|_| IntakeError::Unavailable("the bot is shutting down".into()))?;
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(IntakeError::Unavailable("the bot is shutting down".into())),
            Err(_) => Err(busy()),
        }
    }

    /// Posts `post` to `group` with `token` ([`Intake::post`]).
    async fn post_to(
        &self,
        token: String,
        group: String,
        post: BotPost,
    ) -> Result<Response, IntakeError> {
        self.post(|reply| Command::Post {
            token,
            group,
            post,
            reply,
        })
        .await
    }

    /// Posts, then waits (until the timeout) for the relay to store what was posted.
    async fn post(
        &self,
        command: impl FnOnce(Reply<Answer>) -> Command,
    ) -> Result<Response, IntakeError> {
        let deadline = Instant::now() + self.relay_timeout;
        let mut posted = match self.ask(deadline, command).await? {
            Answer::Posted(posted) => posted,
            Answer::Ignored(why) => {
                return Ok((
                    StatusCode::OK,
                    Json(json!({ "status": "ignored", "why": why })),
                )
                    .into_response())
            }
        };
        if !posted.stored {
            let (reply, stored) = oneshot::channel();
            let waiting = Command::WhenStored {
                group_id: posted.group_id.clone(),
                id: posted.id.clone(),
                reply,
            };
            let waited = tokio::time::timeout_at(deadline, self.commands.send(waiting)).await;
            if matches!(waited, Ok(Ok(()))) {
                posted.stored =
                    matches!(tokio::time::timeout_at(deadline, stored).await, Ok(Ok(())));
            }
        }
        let code = match (posted.duplicate, posted.stored) {
            (true, _) => StatusCode::OK,
            (false, true) => StatusCode::CREATED,
            (false, false) => StatusCode::ACCEPTED,
        };
        let body = json!({
            "id": posted.id,
            "group": posted.group,
            "status": if posted.stored { "stored" } else { "queued" },
            "duplicate": posted.duplicate,
        });
        Ok((code, Json(body)).into_response())
    }
}

async fn status(State(intake): State<Intake>) -> Response {
    let deadline = Instant::now() + intake.relay_timeout;
    let (reply, answer) = oneshot::channel();
    let sent =
        tokio::time::timeout_at(deadline, intake.commands.send(Command::Status(reply))).await;
    if !matches!(sent, Ok(Ok(()))) {
        return IntakeError::Unavailable("the bot did not answer in time".into()).into_response();
    }
    match tokio::time::timeout_at(deadline, answer).await {
        Ok(Ok(status)) => {
            let (relay, why) = match status {
                Status::Online => ("online", None),
                Status::Offline { why } => ("offline", Some(why)),
                Status::Rejected { why, .. } => ("rejected", Some(why)),
                Status::Waiting { .. } => ("waiting for approval", None),
                Status::Enrol => ("not enrolled", None),
            };
            Json(json!({ "relay": relay, "why": why })).into_response()
        }
        _ => IntakeError::Unavailable("the bot did not answer in time".into()).into_response(),
    }
}

async fn post_message(
    State(intake): State<Intake>,
    Path(group): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, IntakeError> {
    let token = bearer(&headers)?;
    let body: MessageBody = json_of(&body_of(body)?)?;
    let post = BotPost {
        kind: BotPostKind::Text {
            reply_to: body.reply_to,
            mentions: true,
        },
        text: body.text,
        idempotency_key: idempotency_key(&headers, body.idempotency_key)?,
        alarm: None,
    };
    intake.post_to(token, group, post).await
}

async fn post_alert(
    State(intake): State<Intake>,
    Path(group): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, IntakeError> {
    let token = bearer(&headers)?;
    let body: AlertBody = json_of(&body_of(body)?)?;
    let severity = body.severity.map(|s| s.trim().to_ascii_lowercase());
    if let Some(s) = &severity {
        if s.is_empty() || s.len() > 32 || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(IntakeError::BadRequest(
                "a severity is 1 to 32 letters, digits or dashes (such as critical, warning)"
                    .into(),
            ));
        }
    }
    let ack_required = body.ack_required.unwrap_or_else(|| {
        severity
            .as_ref()
            .is_some_and(|s| intake.ack_severities.contains(s))
    });
    let text = match &severity {
        Some(s) => format!("[{s}] {}", body.text),
        None => body.text,
    };
    let post = BotPost {
        kind: BotPostKind::Alert { ack_required },
        text,
        idempotency_key: idempotency_key(&headers, body.idempotency_key)?,
        alarm: None,
    };
    intake.post_to(token, group, post).await
}

async fn post_alertmanager(
    State(intake): State<Intake>,
    Path(group): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, IntakeError> {
    let token = bearer(&headers)?;
    let notification =
        Notification::parse(&body_of(body)?).map_err(|e| IntakeError::BadRequest(e.to_string()))?;
    intake
        .post(|reply| Command::Alarm {
            token,
            group,
            notification: Box::new(notification),
            reply,
        })
        .await
}

async fn rollcall(
    State(intake): State<Intake>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, IntakeError> {
    let token = bearer(&headers)?;
    let deadline = Instant::now() + intake.relay_timeout;
    let rollcall = intake
        .ask(deadline, |reply| Command::Rollcall { token, id, reply })
        .await?;
    Ok(Json(rollcall).into_response())
}
