//! Incident command in the browser: answering alerts, tasks, incidents and their
//! after-action report (built by this device's engine, handed to the page to save).

use crate::server::{json, queue, queued, view, App};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use muster_engine::{Engine, EngineError, TaskState};
use serde::Deserialize;
use std::time::Duration;

/// The incident-command routes.
pub fn routes() -> Router<App> {
    Router::new()
        .route("/api/alerts/{id}/answer", post(answer))
        .route("/api/groups/{group}/tasks", get(tasks).post(new_task))
        .route("/api/tasks/{id}/{state}", post(update_task))
        .route(
            "/api/groups/{group}/incidents",
            get(incidents).post(open_incident),
        )
        .route("/api/incidents/{id}/close", post(close_incident))
        .route("/api/incidents/{id}/report", get(report))
}

#[derive(Deserialize)]
struct Answer {
    answer: String,
}

async fn answer(
    State(app): State<App>,
    Path(id): Path<String>,
    Json(given): Json<Answer>,
) -> Response {
    let act = move |engine: &mut Engine| engine.queue_answer(&id, Some(&given.answer)).map(queued);
    queue(&app, Box::new(act)).await
}

async fn tasks(State(app): State<App>, Path(group): Path<String>) -> Response {
    let look = move |engine: &mut Engine| engine.tasks(Some(&group)).map(json);
    view(&app, Box::new(look)).await
}

#[derive(Deserialize)]
struct NewTask {
    title: String,
    assignee: String,
    /// Due this many minutes from now.
    #[serde(default)]
    due_minutes: Option<u64>,
}

async fn new_task(
    State(app): State<App>,
    Path(group): Path<String>,
    Json(task): Json<NewTask>,
) -> Response {
    let act = move |engine: &mut Engine| {
        let due = task
            .due_minutes
            .map(|m| Duration::from_secs(m.saturating_mul(60)));
        engine
            .queue_task(&group, &task.title, &task.assignee, due)
            .map(queued)
    };
    queue(&app, Box::new(act)).await
}

async fn update_task(
    State(app): State<App>,
    Path((id, state)): Path<(String, String)>,
) -> Response {
    let act = move |engine: &mut Engine| {
        let state = match state.as_str() {
            "accept" => TaskState::Accepted,
            "decline" => TaskState::Declined,
            "done" => TaskState::Done,
            other => {
                return Err(EngineError::Invalid(format!(
                    "{other:?} is not accept, decline or done"
                )))
            }
        };
        engine.queue_task_update(&id, state).map(queued)
    };
    queue(&app, Box::new(act)).await
}

async fn incidents(State(app): State<App>, Path(group): Path<String>) -> Response {
    let look = move |engine: &mut Engine| engine.incidents(Some(&group)).map(json);
    view(&app, Box::new(look)).await
}

#[derive(Deserialize)]
struct NewIncident {
    title: String,
    #[serde(default)]
    drill: bool,
}

async fn open_incident(
    State(app): State<App>,
    Path(group): Path<String>,
    Json(incident): Json<NewIncident>,
) -> Response {
    let act = move |engine: &mut Engine| {
        engine
            .open_incident(&group, &incident.title, incident.drill)
            .map(queued)
    };
    queue(&app, Box::new(act)).await
}

async fn close_incident(State(app): State<App>, Path(id): Path<String>) -> Response {
    let act = move |engine: &mut Engine| engine.close_incident(&id).map(queued);
    queue(&app, Box::new(act)).await
}

#[derive(Deserialize)]
struct ReportFormat {
    #[serde(default)]
    format: Option<String>,
}

/// The report as text the page saves as a file: `{ "name", "type", "text" }`.
async fn report(
    State(app): State<App>,
    Path(id): Path<String>,
    Query(format): Query<ReportFormat>,
) -> Response {
    let look = move |engine: &mut Engine| {
        let report = engine.incident_report(&id)?;
        let name = format!("incident-{}", id.get(..8).unwrap_or(&id));
        Ok(match format.format.as_deref() {
            Some("md") => serde_json::json!({
                "name": format!("{name}.md"),
                "type": "text/markdown",
                "text": muster_engine::report::render_markdown(&report, &chrono::Local),
            }),
            _ => serde_json::json!({
                "name": format!("{name}.html"),
                "type": "text/html",
                "text": muster_engine::report::render_html(&report, &chrono::Local),
            }),
        })
    };
    view(&app, Box::new(look)).await
}
