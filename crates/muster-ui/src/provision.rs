//! Provisioning from the admin screen: the plan for a file, and carrying it out one step
//! at a time with each step announced to the pages, as `muster admin apply` does.

use crate::actor::Event;
use muster_driver::Connection;
use muster_engine::provision::{plan, Action, OrgSpec};
use muster_engine::{Engine, EngineError};
use serde_json::{json, Value};
use tokio::sync::broadcast;

/// How long invite codes made while provisioning stay valid, as `muster admin apply`.
const INVITE_SECS: u64 = 7 * 24 * 3600;

/// One step as the page shows it.
fn step(action: &Action) -> Value {
    let mut v = serde_json::to_value(action).unwrap_or_default();
    v["text"] = action.to_string().into();
    v
}

/// Plans `spec`; when `apply`, and the plan has no problems, carries it out. Returns the
/// plan (`steps`, `problems`) and, when applied, each step's outcome and the invite codes
/// made.
pub async fn run(
    engine: &mut Engine,
    conn: &Connection,
    spec: &OrgSpec,
    apply: bool,
    events: &broadcast::Sender<Event>,
) -> Result<Value, EngineError> {
    let state = engine.provision_state(conn).await?;
    let (actions, problems) = plan(spec, &state);
    let steps: Vec<Value> = actions.iter().map(step).collect();
    if !apply {
        return Ok(json!({ "steps": steps, "problems": problems }));
    }
    if !problems.is_empty() {
        return Err(EngineError::Invalid(format!(
            "the plan has {} problem(s): correct the file first",
            problems.len()
        )));
    }
    let mut outcomes = Vec::with_capacity(actions.len());
    let mut invites = Vec::new();
    for (done, action) in actions.iter().enumerate() {
        let mut outcome = step(action);
        match engine.apply_action(conn, spec, action, INVITE_SECS).await {
            Ok(code) => {
                outcome["status"] = "done".into();
                if let (Some(code), Action::Invite { user }) = (code, action) {
                    invites.push(json!({ "user": user, "code": code }));
                }
            }
            Err(e) => {
                outcome["status"] = "failed".into();
                outcome["error"] = e.to_string().into();
            }
        }
        let _ = events.send(Event {
            kind: "progress",
            data: json!({ "done": done + 1, "total": actions.len(), "step": outcome }),
        });
        outcomes.push(outcome);
    }
    Ok(json!({ "steps": outcomes, "problems": problems, "invites": invites }))
}
