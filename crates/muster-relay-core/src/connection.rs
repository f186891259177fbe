//! The per-connection state machine: anonymous requests, the challenge-response
//! handshake, then authenticated requests.

use crate::relay::{Outcome, Relay, Session};
use muster_proto::{ErrorCode, RelayError, Request, Response};

/// Where one connection stands in authentication.
#[derive(Debug, Default)]
pub enum ConnectionState {
    #[default]
    Anonymous,
    Challenged {
        device_key: Vec<u8>,
        nonce: Vec<u8>,
    },
    Authenticated(Session),
}

impl ConnectionState {
    pub fn session(&self) -> Option<&Session> {
        match self {
            ConnectionState::Authenticated(s) => Some(s),
            _ => None,
        }
    }

    /// Handles one request on this connection, moving through the handshake as needed.
    pub fn on_request(&mut self, relay: &mut Relay, request: Request) -> Outcome {
        let reply = Outcome::reply;
        match (&*self, request) {
            (ConnectionState::Authenticated(session), request) => {
                let session = session.clone();
                relay.handle(&session, request)
            }
            (_, Request::Hello { device_key }) => {
                if device_key.len() != 32 {
                    return reply(Response::Error(RelayError::new(
                        ErrorCode::BadRequest,
                        "device key must be an Ed25519 public key",
                    )));
                }
                let nonce = relay.challenge();
                *self = ConnectionState::Challenged {
                    device_key,
                    nonce: nonce.clone(),
                };
                reply(Response::Challenge { nonce })
            }
            (ConnectionState::Challenged { device_key, nonce }, Request::Prove { signature }) => {
                // A challenge is good for one answer only.
                let result = relay.authenticate(device_key, nonce, &signature);
                match result {
                    Ok(session) => {
                        let response = Response::Authenticated {
                            device_id: session.device_id.clone(),
                            user: session.user.clone(),
                        };
                        *self = ConnectionState::Authenticated(session);
                        reply(response)
                    }
                    Err(e) => {
                        *self = ConnectionState::Anonymous;
                        reply(Response::Error(e))
                    }
                }
            }
            (_, Request::Prove { .. }) => reply(Response::Error(RelayError::new(
                ErrorCode::BadRequest,
                "no challenge outstanding: send Hello first",
            ))),
            (_, request) => relay.handle_anonymous(request),
        }
    }
}
