//! Invite codes: everything a new device needs to reach and trust the relay.

use crate::identity::OrgDescriptor;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

const PREFIX: &str = "MUSTER2-";
/// Codes made before enrolments carried proofs; they no longer work.
const OLD_PREFIX: &str = "MUSTER1-";

/// A single-use invitation for one user handle. Its `secret` never reaches the relay: the
/// joining device proves it holds it (see [`crate::enrolment`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteCode {
    pub purpose: InvitePurpose,
    pub relay: String,
    pub fingerprint: String,
    pub org: OrgDescriptor,
    pub user: String,
    /// The code's secret (hex), see [`crate::enrolment::CodeSecret`].
    pub secret: String,
    pub expires_at: u64,
}

/// What a code enrols: a new user, or another device of an existing user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InvitePurpose {
    NewUser,
    LinkDevice,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InviteError {
    #[error("not a Muster invite code (it should start with {PREFIX})")]
    WrongPrefix,
    #[error("invite code is damaged: {0}")]
    Damaged(&'static str),
    #[error(
        "this code was made by an older version of Muster and no longer works: ask for a new one"
    )]
    Outdated,
}

impl InviteCode {
    pub fn encode(&self) -> String {
        let bytes = postcard::to_stdvec(self).expect("invite serialises");
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
    }

    pub fn decode(code: &str) -> Result<Self, InviteError> {
        if code.trim().starts_with(OLD_PREFIX) {
            return Err(InviteError::Outdated);
        }
        let body = code
            .trim()
            .strip_prefix(PREFIX)
            .ok_or(InviteError::WrongPrefix)?;
        let bytes = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| InviteError::Damaged("not base64"))?;
        postcard::from_bytes(&bytes).map_err(|_| InviteError::Damaged("contents do not decode"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invite_round_trips_and_rejects_garbage() {
        let invite = InviteCode {
            purpose: InvitePurpose::NewUser,
            relay: "127.0.0.1:4433".into(),
            fingerprint: "ab".repeat(32),
            org: OrgDescriptor {
                org_id: "o".into(),
                name: "Acme".into(),
                root_public_key: vec![1; 32],
            },
            user: "bob".into(),
            secret: "ab".repeat(32),
            expires_at: 5,
        };
        assert_eq!(InviteCode::decode(&invite.encode()), Ok(invite.clone()));
        assert_eq!(InviteCode::decode("hello"), Err(InviteError::WrongPrefix));
        let mut damaged = invite.encode();
        damaged.truncate(damaged.len() - 10);
        assert!(matches!(
            InviteCode::decode(&damaged),
            Err(InviteError::Damaged(_))
        ));
    }
}
