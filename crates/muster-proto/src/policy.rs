//! Group policy carried in the MLS group context as a private-use extension, so every
//! member and the relay read the same, confirmed rules.

use serde::{Deserialize, Serialize};

/// The MLS extension type (private-use range) holding a [`GroupPolicy`].
pub const GROUP_POLICY_EXTENSION: u16 = 0xff00;

/// Rules of a group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupPolicy {
    /// Only admins add or remove people; members cannot leave or rename the group.
    pub managed: bool,
    /// The organisation's compliance archive is a member and keeps everything said here.
    /// Members refuse to send while no valid archive device is in the group.
    pub archived: bool,
}

/// The policy as first published, before `archived` existed.
#[derive(Deserialize)]
struct FirstPolicy {
    managed: bool,
}

impl GroupPolicy {
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("policy serialises")
    }

    /// Reads the policy extension's payload; a group without one has the default policy.
    /// A payload that does not decode is treated as managed, the stricter reading.
    pub fn from_extension(payload: Option<&[u8]>) -> Self {
        match payload {
            None => Self::default(),
            Some(bytes) => postcard::from_bytes(bytes)
                .or_else(|_| {
                    postcard::from_bytes::<FirstPolicy>(bytes).map(|p| Self {
                        managed: p.managed,
                        archived: false,
                    })
                })
                .unwrap_or(Self {
                    managed: true,
                    archived: false,
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_round_trips_and_garbage_is_strict() {
        let managed = GroupPolicy {
            managed: true,
            archived: true,
        };
        assert_eq!(
            GroupPolicy::from_extension(Some(&managed.to_bytes())),
            managed
        );
        assert_eq!(GroupPolicy::from_extension(None), GroupPolicy::default());
        assert!(GroupPolicy::from_extension(Some(&[0xff, 0xff])).managed);
    }

    #[test]
    fn policies_published_before_archiving_still_read() {
        assert_eq!(
            GroupPolicy::from_extension(Some(&[1])),
            GroupPolicy {
                managed: true,
                archived: false
            }
        );
        assert_eq!(
            GroupPolicy::from_extension(Some(&[0])),
            GroupPolicy::default()
        );
    }
}
