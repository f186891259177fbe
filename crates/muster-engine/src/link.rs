//! The engine's one view of the relay: something that answers requests. The driver
//! implements it over a QUIC connection; the engine never opens one itself.

use muster_proto::{RelayError, Request, Response};
use std::future::Future;
use std::time::Duration;

/// A way to ask the relay something and wait for its answer.
pub trait Link {
    /// Sends `request` and waits for the relay's answer.
    fn request(&self, request: &Request) -> impl Future<Output = Result<Response, LinkError>>;

    /// Waits before trying again, when the relay asked this device to slow down.
    fn pause(&self, duration: Duration) -> impl Future<Output = ()>;
}

/// Why a request got no answer, or a refusal.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkError {
    /// The relay answered, refusing.
    #[error("relay refused: {0}")]
    Refused(RelayError),
    /// No answer: the relay is unreachable, the connection failed, or its answer made no
    /// sense. Whatever was being sent stays queued.
    #[error("{0}")]
    Unavailable(String),
}

/// Asks the relay through `link` and takes the answer apart with `pattern`: a refusal or a
/// lost link becomes the engine's error, and any other answer is an
/// `EngineError::UnexpectedAnswer` naming the request (built in one place,
/// [`crate::error::unexpected_answer`]). Returns from the enclosing function on error.
macro_rules! ask {
    ($link:expr, $request:expr, $pattern:pat => $value:expr) => {{
        let request = $request;
        match $crate::link::Link::request($link, &request)
            .await
            .map_err($crate::error::from_link)?
        {
            $pattern => $value,
            #[allow(unreachable_patterns)]
            _ => return Err($crate::error::unexpected_answer(&request)),
        }
    }};
}
