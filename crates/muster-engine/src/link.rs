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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Engine, EngineError};
    use muster_proto::ErrorCode;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    /// A relay that gives one scripted answer to every request, at once.
    struct Scripted(Result<Response, LinkError>);

    impl Link for Scripted {
        async fn request(&self, _: &Request) -> Result<Response, LinkError> {
            self.0.clone()
        }

        async fn pause(&self, _: Duration) {}
    }

    /// Runs an engine operation against a scripted link: it never waits, so one poll ends it.
    fn run<T>(operation: impl Future<Output = T>) -> T {
        match pin!(operation).poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(value) => value,
            Poll::Pending => panic!("a scripted link never makes the engine wait"),
        }
    }

    #[test]
    fn the_engine_runs_without_a_network_and_tells_a_refusal_from_a_wrong_or_missing_answer() {
        let home = std::env::temp_dir().join(format!(
            "muster-link-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let engine = Engine::open(&home).expect("engine opens");
        let answer = |link: Scripted| run(engine.pending_raw(&link)).unwrap_err();
        assert!(matches!(
            answer(Scripted(Ok(Response::Ok))),
            EngineError::UnexpectedAnswer(kind) if kind == "ListPending"
        ));
        let refusal = RelayError {
            code: ErrorCode::Forbidden,
            message: "no".into(),
        };
        assert!(matches!(
            answer(Scripted(Err(LinkError::Refused(refusal)))),
            EngineError::Relay(RelayError {
                code: ErrorCode::Forbidden,
                ..
            })
        ));
        assert!(matches!(
            answer(Scripted(Err(LinkError::Unavailable("gone".into())))),
            EngineError::Link(LinkError::Unavailable(_))
        ));
        drop(engine);
        let _ = std::fs::remove_dir_all(&home);
    }
}
