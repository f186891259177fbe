//! Posting into a group: the one reading of the relay's answer to a commit, a proposal or
//! a message, shared by every loop that posts and retries.

use super::*;

/// What to do after the relay answered a commit, proposal or message posted into a group.
#[derive(Debug, PartialEq)]
pub(super) enum Next {
    /// Stored, at this place in the group's order.
    Done { seq: u64 },
    /// The group moved on to `epoch`: fetch, catch up, prepare afresh and post again.
    FetchThenRetry { epoch: u64 },
    /// The relay asked this device to slow down: post again after the pause.
    Wait(std::time::Duration),
    /// Refused for good, or the group kept moving through every attempt: undo what was
    /// prepared.
    Stop(RelayError),
}

/// How long to wait when the relay says this device is sending too fast.
const RATE_LIMIT_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// The one reading of the relay's answer to something posted into a group, at `attempt`
/// (from 1) of [`MAX_COMMIT_ATTEMPTS`]. A lost link or an answer that fits no post is an
/// error: the relay may or may not have stored it, and the next sync tells.
pub(super) fn on_response(
    request: &Request,
    answer: Result<Response, LinkError>,
    attempt: u32,
) -> Result<Next, EngineError> {
    let retry = attempt < MAX_COMMIT_ATTEMPTS;
    match answer {
        Ok(Response::Stored { seq }) => Ok(Next::Done { seq }),
        Ok(_) => Err(crate::error::unexpected_answer(request)),
        Err(LinkError::Refused(e)) => Ok(match e.code {
            ErrorCode::EpochMoved { current } if retry => Next::FetchThenRetry { epoch: current },
            ErrorCode::RateLimited if retry => Next::Wait(RATE_LIMIT_PAUSE),
            _ => Next::Stop(e),
        }),
        Err(e) => Err(EngineError::Link(e)),
    }
}

/// Posts `request` into its group and reads the answer with [`on_response`].
pub(super) async fn post(
    conn: &impl Link,
    request: &Request,
    attempt: u32,
) -> Result<Next, EngineError> {
    on_response(request, conn.request(request).await, attempt)
}

/// The error for a post that was stopped: a group still moving after the last attempt is
/// told apart from a refusal.
pub(super) fn gave_up(refusal: RelayError) -> EngineError {
    match refusal.code {
        ErrorCode::EpochMoved { .. } => EngineError::TooManyRetries(MAX_COMMIT_ATTEMPTS),
        _ => EngineError::Relay(refusal),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(code: ErrorCode) -> Result<Response, LinkError> {
        Err(LinkError::Refused(RelayError {
            code,
            message: "refused".into(),
        }))
    }

    #[test]
    fn every_answer_to_a_post_has_one_reading() {
        let request = Request::Fetch { limit: 1 };
        assert_eq!(
            on_response(&request, Ok(Response::Stored { seq: 7 }), 1).unwrap(),
            Next::Done { seq: 7 }
        );
        assert_eq!(
            on_response(&request, refused(ErrorCode::EpochMoved { current: 4 }), 1).unwrap(),
            Next::FetchThenRetry { epoch: 4 }
        );
        assert_eq!(
            on_response(&request, refused(ErrorCode::RateLimited), 2).unwrap(),
            Next::Wait(RATE_LIMIT_PAUSE)
        );
        let last = MAX_COMMIT_ATTEMPTS;
        let Next::Stop(e) = on_response(
            &request,
            refused(ErrorCode::EpochMoved { current: 4 }),
            last,
        )
        .unwrap() else {
            panic!("the last attempt is not retried");
        };
        assert!(matches!(gave_up(e), EngineError::TooManyRetries(_)));
        let Next::Stop(e) = on_response(&request, refused(ErrorCode::Forbidden), 1).unwrap() else {
            panic!("a refusal stops");
        };
        assert!(matches!(gave_up(e), EngineError::Relay(_)));
        assert!(matches!(
            on_response(&request, Ok(Response::Ok), 1),
            Err(EngineError::UnexpectedAnswer(kind)) if kind == "Fetch"
        ));
        assert!(matches!(
            on_response(&request, Err(LinkError::Unavailable("gone".into())), 1),
            Err(EngineError::Link(_))
        ));
    }
}
