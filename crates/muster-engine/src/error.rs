//! What can go wrong on a device, as one enum whose variants callers match on (a lost link,
//! a refusal, a wrong answer, an unknown group, ...), and the one place an answer that
//! fits no request becomes an error.

use muster_proto::{CertError, ErrorCode, InviteError, RelayError};

/// Everything that can go wrong on the device.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(
        "this device's store is encrypted: give its passphrase (MUSTER_PASSPHRASE) or key file"
    )]
    StoreLocked,
    #[error("wrong passphrase or key for this device's store (nothing was changed)")]
    WrongStoreKey,
    #[error("store key: {0}")]
    StoreKey(#[from] muster_keystore::KeyError),
    #[error("this device is not set up yet: run `muster org create` or `muster join CODE` first")]
    NotEnrolled,
    #[error("this home directory already holds a device ({0}); use another --home")]
    AlreadyEnrolled(String),
    #[error("enrolment is waiting for an admin's approval")]
    AwaitingApproval,
    #[error("{0}")]
    Link(#[from] crate::link::LinkError),
    #[error("relay refused: {0}")]
    Relay(RelayError),
    #[error("invalid certificate: {0}")]
    Certificate(#[from] CertError),
    #[error("root key backup: {0}")]
    RootBackup(#[from] crate::admin::root_backup::RootBackupError),
    #[error("{0}")]
    Attachment(#[from] crate::attachments::AttachmentError),
    #[error("invite code: {0}")]
    Invite(#[from] InviteError),
    #[error("no group named {0:?} on this device (see `muster groups`)")]
    UnknownGroup(String),
    #[error("{0:?} names more than one group; use the group id instead")]
    AmbiguousGroup(String),
    #[error("you already have a group named {0:?}")]
    GroupNameTaken(String),
    #[error("you are no longer a member of group {0:?}")]
    NotActive(String),
    #[error("{0}")]
    Invalid(String),
    #[error("only an organisation admin can do this: your certificate has no admin role")]
    NotAdmin,
    #[error("this device does not hold the organisation root key: use the admin device that created the organisation")]
    NoRootKey,
    #[error("{0} would be an admin: admin certificates are signed by the organisation root key, which this device does not hold (restore it with `muster admin root restore`)")]
    AdminNeedsRoot(String),
    #[error("{0} is an admin: only the organisation root key revokes an admin's device, and this device does not hold it (restore it with `muster admin root restore`)")]
    RevokeAdminNeedsRoot(String),
    #[error("this device was revoked by {by}{}", if *.wipe { "; as the organisation's policy says, its store was deleted" } else { "" })]
    DeviceRevoked { by: String, wipe: bool },
    #[error("this is a managed group: only an admin can {0}")]
    Managed(String),
    #[error("group {0} is archived but has no valid archive member, so nothing can be sent to it until an admin restores the archive (`muster group policy NAME --archived`)")]
    ArchiveMissing(String),
    #[error("group {group} still holds a device of {user} that was revoked or whose certificate lapsed: nothing is sent to it until that device is removed (the next sync removes it; if this persists, the relay is refusing the removal)")]
    UnremovedDevice { group: String, user: String },
    #[error("the relay gave an answer that does not fit a {0} request")]
    UnexpectedAnswer(String),
    #[error("the group kept moving; gave up after {0} attempts")]
    TooManyRetries(u32),
    #[error("MLS error: {0}")]
    Mls(String),
    #[error("local database error: {0}")]
    Store(#[from] rusqlite::Error),
    #[error("local storage error: {0}")]
    Io(#[from] std::io::Error),
}

impl EngineError {
    pub(crate) fn mls(e: impl std::fmt::Display) -> Self {
        EngineError::Mls(e.to_string())
    }

    /// The relay's refusal code, when the relay refused.
    pub fn relay_code(&self) -> Option<&ErrorCode> {
        match self {
            EngineError::Relay(e) => Some(&e.code),
            EngineError::Link(crate::link::LinkError::Refused(e)) => Some(&e.code),
            _ => None,
        }
    }
}

pub(crate) fn from_link(e: crate::link::LinkError) -> EngineError {
    match e {
        crate::link::LinkError::Refused(r) => EngineError::Relay(r),
        other => EngineError::Link(other),
    }
}

/// The error for an answer from the relay that does not fit `request`, naming only the
/// request's kind (never its contents, which may hold secrets).
pub(crate) fn unexpected_answer(request: &muster_proto::Request) -> EngineError {
    /// Keeps the leading name of what is written and stops the formatting after it, so
    /// no field (a token, a key, a blob) is ever formatted.
    struct LeadingName(String);
    impl std::fmt::Write for LeadingName {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            let name: String = s.chars().take_while(|c| c.is_alphanumeric()).collect();
            let complete = name.len() < s.len();
            self.0.push_str(&name);
            if complete {
                Err(std::fmt::Error)
            } else {
                Ok(())
            }
        }
    }
    let mut kind = LeadingName(String::new());
    let _ = std::fmt::write(&mut kind, format_args!("{request:?}"));
    EngineError::UnexpectedAnswer(kind.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_proto::Request;

    #[test]
    fn an_unexpected_answer_names_the_request_and_nothing_in_it() {
        let named = |request: &Request| match unexpected_answer(request) {
            EngineError::UnexpectedAnswer(kind) => kind,
            other => panic!("not an unexpected answer: {other:?}"),
        };
        assert_eq!(named(&Request::ListPending), "ListPending");
        let get = Request::BlobGet {
            blob_id: "secret-blob".into(),
            offset: 7,
            max_len: 9,
        };
        assert_eq!(named(&get), "BlobGet");
        assert!(!unexpected_answer(&get).to_string().contains("secret"));
    }
}
