//! The per-connection state machine: anonymous requests, the challenge-response
//! handshake, then authenticated requests. What needs no database (a challenge, checking
//! signatures) is answered by [`ConnectionState::answer_without_relay`], outside the
//! relay's lock, so anonymous peers cannot make members wait for it.

use crate::relay::{challenge_nonce, verify_challenge, Outcome, Relay, Session};
use muster_proto::{ErrorCode, RelayError, Request, Response};

/// Where one connection stands in authentication.
#[derive(Debug, Default)]
pub enum ConnectionState {
    #[default]
    Anonymous,
    Challenged {
        device_key: Vec<u8>,
        nonce: Vec<u8>,
        /// The answer's signature verified; only the enrolment status is left to check.
        proved: bool,
    },
    Authenticated(Session),
    /// The device proved its key but is revoked: it may only ask for its revocation.
    Revoked {
        device_id: String,
    },
}

/// What an anonymous request needs next, after the checks made without the relay.
#[derive(Debug)]
pub enum Precheck {
    /// Answered already.
    Answered(Outcome),
    /// Signatures check out; the relay's database decides.
    NeedsRelay(Request),
}

impl ConnectionState {
    pub fn session(&self) -> Option<&Session> {
        match self {
            ConnectionState::Authenticated(s) => Some(s),
            _ => None,
        }
    }

    /// Answers what needs no database (a challenge, a bad signature) and checks the
    /// signatures of the rest; authenticated requests pass straight through.
    pub fn answer_without_relay(&mut self, request: Request, fingerprint: &str) -> Precheck {
        let refuse = |code, message: &str| {
            Precheck::Answered(Outcome::reply(Response::Error(RelayError::new(
                code, message,
            ))))
        };
        match (&*self, request) {
            (ConnectionState::Authenticated(_), request) => Precheck::NeedsRelay(request),
            (_, Request::Hello { device_key }) => {
                if device_key.len() != 32 {
                    return refuse(
                        ErrorCode::BadRequest,
                        "device key must be an Ed25519 public key",
                    );
                }
                let nonce = challenge_nonce();
                *self = ConnectionState::Challenged {
                    device_key,
                    nonce: nonce.clone(),
                    proved: false,
                };
                Precheck::Answered(Outcome::reply(Response::Challenge { nonce }))
            }
            (
                ConnectionState::Challenged {
                    device_key, nonce, ..
                },
                Request::Prove { signature },
            ) => match verify_challenge(fingerprint, device_key, nonce, &signature) {
                Ok(()) => {
                    *self = ConnectionState::Challenged {
                        device_key: device_key.clone(),
                        nonce: nonce.clone(),
                        proved: true,
                    };
                    Precheck::NeedsRelay(Request::Prove { signature })
                }
                Err(e) => {
                    *self = ConnectionState::Anonymous;
                    Precheck::Answered(Outcome::reply(Response::Error(e)))
                }
            },
            (_, Request::Prove { .. }) => refuse(
                ErrorCode::BadRequest,
                "no challenge outstanding: send Hello first",
            ),
            (_, Request::Enrol { request }) => match request.verify_signatures() {
                Ok(()) => Precheck::NeedsRelay(Request::Enrol { request }),
                Err(e) => refuse(
                    ErrorCode::Unauthenticated,
                    &format!("enrolment proof refused: {e}"),
                ),
            },
            (_, request) => Precheck::NeedsRelay(request),
        }
    }

    /// Handles one request on this connection, moving through the handshake as needed.
    /// A request that went through [`Self::answer_without_relay`] is not checked twice.
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
                    proved: false,
                };
                reply(Response::Challenge { nonce })
            }
            (
                ConnectionState::Challenged {
                    device_key,
                    nonce,
                    proved,
                },
                Request::Prove { signature },
            ) => {
                // A challenge is good for one answer only.
                let result = if *proved {
                    relay.authenticate_proven(device_key)
                } else {
                    relay.authenticate(device_key, nonce, &signature)
                };
                match result {
                    Ok(session) => {
                        let response = Response::Authenticated {
                            device_id: session.device_id.clone(),
                            user: session.user.clone(),
                        };
                        *self = ConnectionState::Authenticated(session);
                        reply(response)
                    }
                    Err(e) if e.code == ErrorCode::DeviceRevoked => {
                        *self = ConnectionState::Revoked {
                            device_id: muster_proto::device_id_for(device_key),
                        };
                        reply(Response::Error(e))
                    }
                    Err(e) => {
                        *self = ConnectionState::Anonymous;
                        reply(Response::Error(e))
                    }
                }
            }
            (ConnectionState::Revoked { device_id }, Request::MyRevocation) => {
                relay.revocation_of(device_id)
            }
            (_, Request::Prove { .. }) => reply(Response::Error(RelayError::new(
                ErrorCode::BadRequest,
                "no challenge outstanding: send Hello first",
            ))),
            (_, request) => relay.handle_anonymous(request),
        }
    }

    /// Like [`Self::on_request`], for a request whose signatures
    /// [`Self::answer_without_relay`] already checked.
    pub fn on_prechecked(&mut self, relay: &mut Relay, request: Request) -> Outcome {
        match (&*self, request) {
            (ConnectionState::Authenticated(_), request) => self.on_request(relay, request),
            (_, Request::Enrol { request }) => relay.enrol_prechecked(request),
            (_, request) => self.on_request(relay, request),
        }
    }
}
