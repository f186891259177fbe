//! `muster ui`: the device's engine kept online in one task, served to the user's own
//! browser on loopback. The browser never talks to the relay and sees nothing the device
//! would not show on its terminal; every trust check stays in the engine.

mod actor;
mod admin;
mod guard;
mod incidents;
mod provision;
mod server;

pub use guard::{Access, LINK_LIFETIME};
use muster_engine::{Engine, EngineError};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};

/// How many event streams (open tabs) may be open at once.
const MAX_EVENT_STREAMS: usize = 16;

/// Serves the UI on `listener` (which must be on loopback) until `stop` resolves; the
/// engine runs online meanwhile. `access` holds the link to print.
pub async fn serve(
    engine: &mut Engine,
    listener: TcpListener,
    access: Arc<Access>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), EngineError> {
    let (commands, inbox) = mpsc::channel(64);
    let (events, _) = broadcast::channel(256);
    let app = server::App {
        access,
        streams: Arc::new(tokio::sync::Semaphore::new(MAX_EVENT_STREAMS)),
        commands,
        events: events.clone(),
    };
    let server = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, server::router(app)).await {
            tracing::error!(error = %e, "the UI server stopped");
        }
    });
    let result = actor::run(engine, inbox, events.clone(), stop).await;
    if let Err(EngineError::DeviceRevoked { by, wipe }) = &result {
        // Open pages say so before the server goes (and, by policy, the store with it).
        let _ = events.send(actor::Event {
            kind: "revoked",
            data: serde_json::json!({ "by": by, "wipe": wipe }),
        });
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    // Open event streams never end on their own.
    server.abort();
    result
}
