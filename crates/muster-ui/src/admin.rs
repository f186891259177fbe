//! The admin screen's API: enrolments waiting, invites, profile changes, revocation,
//! provisioning, groups, the organisation policy and the audit log. The relay and this
//! device's own checks decide who may do what; the page only hides the screen.

use crate::actor::{Command, Work};
use crate::server::{ask, json, App};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use muster_engine::provision::parse_spec;
use serde::Deserialize;

/// The admin routes.
pub fn routes() -> Router<App> {
    Router::new()
        .route("/api/admin/pending", get(pending))
        .route("/api/admin/pending/{user}/{device}/approve", post(approve))
        .route("/api/admin/pending/{user}/{device}/reject", post(reject))
        .route("/api/admin/invites", post(invite))
        .route("/api/admin/revoke/{user}", post(revoke))
        .route("/api/admin/profiles", get(profiles))
        .route("/api/admin/profiles/{user}/approve", post(approve_profile))
        .route("/api/admin/profiles/{user}/reject", post(reject_profile))
        .route("/api/admin/policy", get(policy).post(set_policy))
        .route("/api/admin/audit", get(audit))
        .route("/api/admin/groups", post(create_group))
        .route("/api/groups/{group}/members", post(add_member))
        .route(
            "/api/groups/{group}/members/{user}/remove",
            post(remove_member),
        )
        .route("/api/admin/provision/plan", post(plan))
        .route("/api/admin/provision/apply", post(apply))
        .route("/api/devices/{device}/approve", post(approve_my_device))
}

/// Runs `work` with the relay and answers with what it returns.
async fn online(app: &App, work: Work) -> Response {
    ask(app, |reply| Command::Online { work, reply }).await
}

async fn pending(State(app): State<App>) -> Response {
    ask(&app, Command::Pending).await
}

async fn decide(app: &App, user: String, device: String, approve: bool) -> Response {
    ask(app, |reply| Command::Decide {
        user,
        device,
        approve,
        reply,
    })
    .await
}

async fn approve(State(app): State<App>, Path((user, device)): Path<(String, String)>) -> Response {
    decide(&app, user, device, true).await
}

async fn reject(State(app): State<App>, Path((user, device)): Path<(String, String)>) -> Response {
    decide(&app, user, device, false).await
}

#[derive(Deserialize)]
struct NewInvite {
    user: String,
}

async fn invite(State(app): State<App>, Json(invite): Json<NewInvite>) -> Response {
    ask(&app, |reply| Command::Invite {
        user: invite.user,
        reply,
    })
    .await
}

#[derive(Deserialize)]
struct RevokeWhat {
    /// Only this device; all of the user's devices when absent.
    #[serde(default)]
    device: Option<String>,
}

async fn revoke(
    State(app): State<App>,
    Path(user): Path<String>,
    Query(what): Query<RevokeWhat>,
) -> Response {
    let work: Work = Box::new(move |engine, conn| {
        Box::pin(async move {
            engine
                .revoke(conn, &user, what.device.as_deref())
                .await
                .map(json)
        })
    });
    online(&app, work).await
}

/// Profile changes waiting, each with the check of the user's signature.
async fn profiles(State(app): State<App>) -> Response {
    let work: Work = Box::new(|engine, conn| {
        Box::pin(async move { engine.profile_changes(conn).await.map(json) })
    });
    online(&app, work).await
}

async fn approve_profile(State(app): State<App>, Path(user): Path<String>) -> Response {
    let work: Work = Box::new(move |engine, conn| {
        Box::pin(async move { engine.approve_profile(conn, &user).await.map(json) })
    });
    online(&app, work).await
}

async fn reject_profile(State(app): State<App>, Path(user): Path<String>) -> Response {
    let work: Work = Box::new(move |engine, conn| {
        Box::pin(async move { engine.reject_profile(conn, &user).await.map(json) })
    });
    online(&app, work).await
}

/// The organisation policy in force (as this device verified it), and why the relay's
/// copy was not used, if it was not.
async fn policy(State(app): State<App>) -> Response {
    let work: Work = Box::new(|engine, conn| {
        Box::pin(async move {
            let (policy, problems) = engine.org_policy(conn).await?;
            Ok(serde_json::json!({ "policy": policy, "problems": problems }))
        })
    });
    online(&app, work).await
}

#[derive(Deserialize)]
struct PolicyChange {
    device_self_approval: Option<bool>,
    certificate_lifetime_secs: Option<u64>,
    wipe_on_revoke: Option<bool>,
}

async fn set_policy(State(app): State<App>, Json(change): Json<PolicyChange>) -> Response {
    let work: Work = Box::new(move |engine, conn| {
        Box::pin(async move {
            let policy = engine
                .set_org_policy(
                    conn,
                    change.device_self_approval,
                    change.certificate_lifetime_secs,
                    change.wipe_on_revoke,
                    None,
                )
                .await?;
            Ok(serde_json::json!({ "policy": policy, "problems": [] }))
        })
    });
    online(&app, work).await
}

#[derive(Deserialize)]
struct AuditQuery {
    #[serde(default = "default_audit_limit")]
    limit: u32,
}

fn default_audit_limit() -> u32 {
    200
}

/// The relay's audit log: metadata only, never content.
async fn audit(State(app): State<App>, Query(query): Query<AuditQuery>) -> Response {
    let limit = query.limit.min(10_000);
    let work: Work = Box::new(move |engine, conn| {
        Box::pin(async move { engine.audit(conn, limit).await.map(json) })
    });
    online(&app, work).await
}

#[derive(Deserialize)]
struct NewGroup {
    name: String,
    #[serde(default)]
    members: Vec<String>,
    #[serde(default)]
    managed: bool,
}

async fn create_group(State(app): State<App>, Json(group): Json<NewGroup>) -> Response {
    let work: Work = Box::new(move |engine, conn| {
        Box::pin(async move {
            let members: Vec<String> = group
                .members
                .iter()
                .map(|m| m.trim().to_string())
                .filter(|m| !m.is_empty())
                .collect();
            engine
                .create_group(conn, group.name.trim(), &members, group.managed)
                .await
                .map(json)
        })
    });
    online(&app, work).await
}

#[derive(Deserialize)]
struct NewMember {
    user: String,
}

async fn add_member(
    State(app): State<App>,
    Path(group): Path<String>,
    Json(member): Json<NewMember>,
) -> Response {
    let work: Work = Box::new(move |engine, conn| {
        Box::pin(async move {
            engine
                .add_member(conn, &group, member.user.trim())
                .await
                .map(json)
        })
    });
    online(&app, work).await
}

async fn remove_member(
    State(app): State<App>,
    Path((group, user)): Path<(String, String)>,
) -> Response {
    let work: Work = Box::new(move |engine, conn| {
        Box::pin(async move { engine.remove_member(conn, &group, &user).await.map(json) })
    });
    online(&app, work).await
}

/// Approves a new device of this user (where the organisation's policy lets people
/// approve their own): this device signs the confirmation, an admin device issues the
/// certificate. Not an admin action, but a relay one like them.
async fn approve_my_device(State(app): State<App>, Path(device): Path<String>) -> Response {
    let work: Work = Box::new(move |engine, conn| {
        Box::pin(async move {
            engine
                .confirm_device(conn, device.trim())
                .await
                .map(|()| serde_json::Value::Null)
        })
    });
    online(&app, work).await
}

/// A provisioning file (TOML, the body) as a plan, changing nothing.
async fn plan(State(app): State<App>, file: String) -> Response {
    provision(&app, &file, false).await
}

/// Carries out a provisioning file's plan; each step is announced as a `progress` event.
async fn apply(State(app): State<App>, file: String) -> Response {
    provision(&app, &file, true).await
}

async fn provision(app: &App, file: &str, apply: bool) -> Response {
    match parse_spec(file) {
        Ok(spec) => ask(app, |reply| Command::Provision { spec, apply, reply }).await,
        Err(e) => crate::server::unprocessable(format!("the provisioning file: {e}")),
    }
}
