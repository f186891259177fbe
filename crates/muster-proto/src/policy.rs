//! Group policy carried in the MLS group context as a private-use extension, so every
//! member and the relay read the same, confirmed rules. The same extension lists the
//! people invited into the group whose devices had not been online yet: a device of
//! theirs joins on its own, by external commit, once it connects.

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

/// The most people a group may list as waiting to join.
pub const MAX_PENDING_SEATS: usize = 1000;

impl GroupPolicy {
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("policy serialises")
    }

    /// The extension's payload: the policy, then the handles waiting to join (sorted,
    /// each once), omitted when there are none so such payloads read as before.
    pub fn payload_with(&self, pending: &[String]) -> Vec<u8> {
        let mut bytes = self.to_bytes();
        let mut pending = pending.to_vec();
        pending.sort();
        pending.dedup();
        if !pending.is_empty() {
            bytes.extend(postcard::to_stdvec(&pending).expect("handles serialise"));
        }
        bytes
    }

    /// The handles an extension payload lists as waiting to join; none if it lists none
    /// or does not decode (nobody joins on a payload nobody can read).
    pub fn pending_in(payload: Option<&[u8]>) -> Vec<String> {
        let Some(bytes) = payload else {
            return Vec::new();
        };
        match postcard::take_from_bytes::<GroupPolicy>(bytes) {
            Ok((_, [])) | Err(_) => Vec::new(),
            Ok((_, rest)) => postcard::from_bytes(rest).unwrap_or_default(),
        }
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
    fn the_people_waiting_to_join_ride_after_the_policy_which_reads_as_before() {
        let policy = GroupPolicy {
            managed: true,
            archived: false,
        };
        let pending = vec!["erin".to_string(), "bob".to_string(), "bob".to_string()];
        let payload = policy.payload_with(&pending);
        assert_eq!(GroupPolicy::from_extension(Some(&payload)), policy);
        assert_eq!(GroupPolicy::pending_in(Some(&payload)), ["bob", "erin"]);
        assert_eq!(policy.payload_with(&[]), policy.to_bytes());
        assert!(GroupPolicy::pending_in(Some(&policy.to_bytes())).is_empty());
        assert!(GroupPolicy::pending_in(None).is_empty());
        let mut garbled = policy.to_bytes();
        garbled.extend([0xff, 0xff, 0xff]);
        assert!(GroupPolicy::pending_in(Some(&garbled)).is_empty());
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
