//! `muster bot serve`: a bot account's device kept online, with an HTTP intake on
//! loopback or a private network that turns other systems' posts (a generic JSON route,
//! Prometheus Alertmanager's webhook) into end-to-end encrypted texts and alerts. The
//! relay sees only ciphertext; each route needs a bearer token made for one group.

pub mod alertmanager;
mod intake;
mod service;

use axum::http::StatusCode;
pub use intake::MAX_BODY;
use muster_engine::{BotRefusal, Engine, EngineError};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Why the intake refused a request; each is answered with its HTTP status and a JSON
/// `{"error": ...}` that says what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("{0}")]
    Refused(#[from] BotRefusal),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("the request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    Unavailable(String),
    #[error("the bot failed: {0}")]
    Failed(String),
}

impl IntakeError {
    fn status(&self) -> StatusCode {
        match self {
            IntakeError::Refused(r) => match r {
                BotRefusal::BadToken | BotRefusal::Revoked(_) => StatusCode::UNAUTHORIZED,
                BotRefusal::OtherGroup { .. } | BotRefusal::NotMember(_) => StatusCode::FORBIDDEN,
                BotRefusal::UnknownGroup(_) | BotRefusal::UnknownAlert(_) => StatusCode::NOT_FOUND,
                BotRefusal::Invalid(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            IntakeError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            IntakeError::BadRequest(_) => StatusCode::BAD_REQUEST,
            IntakeError::NotFound(_) => StatusCode::NOT_FOUND,
            IntakeError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            IntakeError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            IntakeError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// How the bot serves.
#[derive(Debug, Clone)]
pub struct Options {
    /// The longest a request waits for the relay; then it is answered "queued" (202)
    /// and the post waits in the outbox.
    pub relay_timeout: Duration,
    /// Severities (lower case) whose alerts ask every member to acknowledge them.
    pub ack_severities: Vec<String>,
}

/// Whether the intake may listen on `addr`: loopback or a private network (RFC 1918,
/// IPv6 unique-local), never an address reachable from the internet.
pub fn private_address(addr: &SocketAddr) -> bool {
    match addr.ip() {
        IpAddr::V4(ip) => ip.is_loopback() || ip.is_private(),
        IpAddr::V6(ip) => ip.is_loopback() || (ip.segments()[0] & 0xfe00) == 0xfc00,
    }
}

/// Serves the intake on `listener` until `stop` resolves, with the bot's device online
/// meanwhile.
pub async fn serve(
    engine: &mut Engine,
    listener: TcpListener,
    options: Options,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), EngineError> {
    let (commands, inbox) = mpsc::channel(64);
    let ack_severities: Vec<String> = options
        .ack_severities
        .iter()
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    let app = intake::router(intake::Intake {
        commands,
        relay_timeout: options.relay_timeout,
        ack_severities: Arc::new(ack_severities.clone()),
    });
    let server = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the bot's intake stopped");
        }
    });
    let settings = service::Settings {
        ack_severities,
        relay_timeout: options.relay_timeout,
    };
    let result = service::run(engine, settings, inbox, stop).await;
    server.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_intake_listens_only_on_loopback_or_private_networks() {
        for ok in [
            "127.0.0.1:1",
            "10.1.2.3:1",
            "192.168.0.9:1",
            "172.16.0.1:1",
            "[::1]:1",
            "[fd00::1]:1",
        ] {
            assert!(private_address(&ok.parse().unwrap()), "{ok}");
        }
        for no in ["0.0.0.0:1", "8.8.8.8:1", "[::]:1", "[2001:db8::1]:1"] {
            assert!(!private_address(&no.parse().unwrap()), "{no}");
        }
    }
}
