//! Requests, responses and pushes exchanged over QUIC streams, and their framing.
//!
//! Every stream carries length-prefixed frames: a 4-byte big-endian length followed by a
//! postcard-encoded message. A client opens one bidirectional stream per request; the
//! relay opens unidirectional streams to push wake-ups.

use crate::enrolment::{DeviceConfirmation, EnrolmentGrant, EnrolmentRequest, ProfileRequest};
use crate::identity::{Certificate, OrgDescriptor, Profile};
use crate::org_policy::OrgPolicy;
use crate::revocation::Revocation;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Largest frame either side accepts, in bytes.
pub const MAX_FRAME: usize = 2 * 1024 * 1024;
/// Largest MLS message (commit, welcome or application message) the relay stores, in bytes.
pub const MAX_MLS_MESSAGE: usize = 1024 * 1024;
/// Largest attachment, in bytes of the original file.
pub const MAX_ATTACHMENT: u64 = 100 * 1024 * 1024;
/// Attachments are encrypted and moved in chunks of this many plaintext bytes.
pub const ATTACHMENT_CHUNK: usize = 1024 * 1024;
/// Bytes an encrypted chunk adds (the AEAD tag).
pub const ATTACHMENT_CHUNK_OVERHEAD: usize = 16;
/// Encrypted blob bytes one device may keep on the relay at once.
pub const BLOB_QUOTA_PER_DEVICE: u64 = 1024 * 1024 * 1024;
/// Message bytes one device may have waiting on the relay for recipients who have not
/// fetched them yet.
pub const QUEUE_QUOTA_PER_DEVICE: u64 = 256 * 1024 * 1024;
/// How long the relay keeps a message some recipient never fetched.
pub const MESSAGE_RETENTION_SECS: u64 = 30 * 24 * 3600;

/// Encrypted size of an attachment of `plain` bytes.
pub fn encrypted_size(plain: u64) -> u64 {
    let chunks = plain.div_ceil(ATTACHMENT_CHUNK as u64).max(1);
    plain + chunks * ATTACHMENT_CHUNK_OVERHEAD as u64
}

/// A request from a device to the relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Registers the organisation with a fresh relay using its bootstrap token.
    Bootstrap {
        token: String,
        org: OrgDescriptor,
        admin: Certificate,
    },
    /// Submits an enrolment request made with an invite or device-link code.
    Enrol {
        request: EnrolmentRequest,
    },
    /// Starts device authentication; the relay answers with a challenge.
    Hello {
        #[serde(with = "serde_bytes")]
        device_key: Vec<u8>,
    },
    /// Device signature over [`auth_transcript`].
    Prove {
        #[serde(with = "serde_bytes")]
        signature: Vec<u8>,
    },
    MyCertificate,
    /// (admin) Files an invite for a new user, as its grant signed by this device.
    CreateInvite {
        grant: EnrolmentGrant,
    },
    ListPending,
    Approve {
        certificate: Certificate,
    },
    Reject {
        device_id: String,
    },
    Directory,
    UploadKeyPackages {
        key_packages: Vec<Vec<u8>>,
        #[serde(with = "serde_bytes")]
        last_resort: Option<Vec<u8>>,
        /// Drop this device's KeyPackages on the relay first (its certificate was renewed,
        /// so the old ones carry one that will run out).
        replace: bool,
    },
    KeyPackageCount,
    /// One KeyPackage for each enrolled device of `user` (only those listed in `only`, if any).
    ClaimKeyPackages {
        user: String,
        only: Vec<String>,
    },
    /// Files a single-use code that enrols another device of this device's user.
    CreateLink {
        grant: EnrolmentGrant,
    },
    /// The enrolled devices of this device's user.
    MyDevices,
    /// Registers a new group from its creator's GroupInfo and ratchet tree (TLS encoded).
    CreateGroup {
        #[serde(with = "serde_bytes")]
        group_info: Vec<u8>,
        #[serde(with = "serde_bytes")]
        ratchet_tree: Vec<u8>,
    },
    /// A commit (PublicMessage) for the group's current epoch, with its Welcome if it adds
    /// members, and the GroupInfo of the epoch it starts (signed by the committer), which
    /// a member that fell behind uses to rejoin.
    Commit {
        #[serde(with = "serde_bytes")]
        group_id: Vec<u8>,
        #[serde(with = "serde_bytes")]
        commit: Vec<u8>,
        #[serde(with = "serde_bytes")]
        welcome: Option<Vec<u8>>,
        #[serde(with = "serde_bytes")]
        group_info: Option<Vec<u8>>,
    },
    /// A standalone proposal (PublicMessage).
    Propose {
        #[serde(with = "serde_bytes")]
        group_id: Vec<u8>,
        #[serde(with = "serde_bytes")]
        proposal: Vec<u8>,
    },
    /// An application message (PrivateMessage). `client_id` makes a resend idempotent.
    Send {
        #[serde(with = "serde_bytes")]
        group_id: Vec<u8>,
        #[serde(with = "serde_bytes")]
        message: Vec<u8>,
        #[serde(with = "serde_bytes")]
        client_id: Vec<u8>,
    },
    Fetch {
        limit: u32,
    },
    Ack {
        items: Vec<AckItem>,
    },
    /// (admin) The latest metadata events of the relay's audit log.
    Audit {
        limit: u32,
    },
    /// (admin) Cuts devices off: the relay enforces it at once.
    Revoke {
        revocation: Revocation,
    },
    /// Revocations issued after position `since`, for members to act on.
    Revocations {
        since: u64,
    },
    /// Liveness and readiness probe; needs no authentication.
    Health,
    /// Asks an admin to approve a new profile for this device's user (signed by this device).
    RequestProfileChange {
        request: ProfileRequest,
    },
    /// (admin) Profile changes waiting for approval.
    ListProfileChanges,
    /// (admin) New certificates, one per enrolled device of the user, carrying the requested profile.
    ApproveProfileChange {
        certificates: Vec<Certificate>,
    },
    /// (admin) Refuses a user's requested profile change.
    RejectProfileChange {
        user: String,
    },
    /// (admin) Invites that are neither used nor expired.
    ListInvites,
    /// (admin) Replaces the certificates of all of a user's devices (new profile or roles).
    ReissueCertificates {
        certificates: Vec<Certificate>,
    },
    /// (admin) Publishes a new root-signed organisation policy.
    SetOrgPolicy {
        policy: OrgPolicy,
    },
    /// The current organisation policy, if an admin published one.
    GetOrgPolicy,
    /// Approves a pending new device of this device's own user (when the policy allows),
    /// signed by this device.
    ConfirmDevice {
        confirmation: DeviceConfirmation,
    },
    /// Writes one chunk of an encrypted attachment for the members of a group. The first
    /// chunk (offset 0) announces the blob's total size.
    BlobPut {
        blob_id: String,
        #[serde(with = "serde_bytes")]
        group_id: Vec<u8>,
        total_size: u64,
        offset: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Seals an uploaded blob after checking its size and SHA-256.
    BlobComplete {
        blob_id: String,
        #[serde(with = "serde_bytes")]
        sha256: Vec<u8>,
    },
    /// Reads part of a blob (members of its group only).
    BlobGet {
        blob_id: String,
        offset: u64,
        max_len: u32,
    },
    /// This device has the blob; once every recipient has it, the relay deletes it.
    BlobFetched {
        blob_id: String,
    },
    /// (archive) Publishes a checkpoint the archive signed over its chain, so its history
    /// is pinned outside its own host.
    PublishCheckpoint {
        checkpoint: PublishedCheckpoint,
    },
    /// (admin or archive) Published checkpoints after position `since`.
    ArchiveCheckpoints {
        since: u64,
    },
    /// (member, or someone the group lists as waiting to join) The newest GroupInfo of a
    /// group.
    GroupInfo {
        #[serde(with = "serde_bytes")]
        group_id: Vec<u8>,
    },
    /// The groups whose context lists this device's user as waiting to join.
    PendingSeats,
    /// (a device that proved its key and was refused as revoked) The signed revocation
    /// naming it, and the organisation policy, so it can tell what to do.
    MyRevocation,
    /// Like `Send`, for the devices of the users named in `to` only (a receipt, which
    /// only its messages' authors use). The message is still encrypted for the whole
    /// group; the others never fetch it.
    SendTo {
        #[serde(with = "serde_bytes")]
        group_id: Vec<u8>,
        #[serde(with = "serde_bytes")]
        message: Vec<u8>,
        #[serde(with = "serde_bytes")]
        client_id: Vec<u8>,
        to: Vec<String>,
    },
    /// (a device holding a Welcome to the group at `epoch`, or a member or someone waiting
    /// to join, for the current epoch) Part of the group's ratchet tree at `epoch`, TLS
    /// encoded, from byte `offset`. A large group's Welcomes and GroupInfos leave the tree
    /// out; the joiner checks the tree against the tree hash in the signed GroupInfo.
    RatchetTree {
        #[serde(with = "serde_bytes")]
        group_id: Vec<u8>,
        epoch: u64,
        offset: u64,
    },
    /// Asks the relay to push this connection's group messages as they are stored
    /// ([`Push::Deliveries`]) rather than wake it to fetch them. The relay pushes a group's
    /// messages only once a complete fetch has handed this connection everything before
    /// them; until then, and whenever it cannot keep up, it wakes as before. A relay that
    /// does not know this request refuses it, and the device goes on fetching.
    Subscribe,
}

/// The longest group id a relay registers or a device joins (clients make 16 bytes).
pub const MAX_GROUP_ID: usize = 64;

/// The most bytes of a ratchet tree one `RatchetTree` answer carries.
pub const RATCHET_TREE_CHUNK: usize = 1024 * 1024;

/// Groups with more members than this leave the ratchet tree out of their Welcomes and
/// GroupInfos (about 400 bytes a member): joiners fetch it from the relay instead.
pub const TREE_IN_WELCOME_MAX_MEMBERS: usize = 1000;

/// The most users one `SendTo` may name.
pub const MAX_RECIPIENT_USERS: usize = 256;

/// What starts the MLS authenticated data of a message for some members only.
const DIRECTED_MARK: &[u8] = b"muster-to\n";

/// The authenticated data (MLS AAD, readable by the relay, bound to the message by its
/// sender's signature) of a message for `users` only: the relay routes a `SendTo` only
/// when its `to` is exactly this list, and members treat the message accordingly.
pub fn directed_aad(users: &[String]) -> Vec<u8> {
    let mut aad = DIRECTED_MARK.to_vec();
    aad.extend_from_slice(users.join("\n").as_bytes());
    aad
}

/// The users a message's authenticated data directs it to: `Ok(None)` for a message to
/// the whole group (no authenticated data), an error for anything else.
pub fn directed_users(aad: &[u8]) -> Result<Option<Vec<String>>, String> {
    if aad.is_empty() {
        return Ok(None);
    }
    let list = aad
        .strip_prefix(DIRECTED_MARK)
        .and_then(|rest| std::str::from_utf8(rest).ok())
        .ok_or("the message carries authenticated data Muster does not use")?;
    let users: Vec<String> = list.split('\n').map(str::to_string).collect();
    if users.len() > MAX_RECIPIENT_USERS
        || users.iter().any(|u| crate::validate_handle(u).is_err())
        || users.windows(2).any(|pair| pair[0] >= pair[1])
    {
        return Err(format!(
            "a message's recipients must be 1-{MAX_RECIPIENT_USERS} user handles, sorted and distinct"
        ));
    }
    Ok(Some(users))
}

/// The relay's answer to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Ok,
    Challenge {
        #[serde(with = "serde_bytes")]
        nonce: Vec<u8>,
    },
    Authenticated {
        device_id: String,
        user: String,
    },
    Certificate(Certificate),
    EnrolmentSubmitted {
        device_id: String,
    },
    Pending(Vec<PendingEnrolment>),
    Directory(Vec<Certificate>),
    KeyPackageCount {
        available: u32,
        has_last_resort: bool,
    },
    KeyPackages(Vec<ClaimedKeyPackage>),
    /// The message is durably stored at this sequence number in its group.
    Stored {
        seq: u64,
    },
    Deliveries(Vec<Delivery>),
    Error(RelayError),
    Audit(Vec<AuditEvent>),
    /// Revocations with their positions, oldest first.
    Revocations(Vec<(u64, Revocation)>),
    Devices(Vec<String>),
    ProfileChanges(Vec<ProfileChange>),
    Invites(Vec<OpenInvite>),
    BlobData {
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        total_size: u64,
    },
    OrgPolicy(Option<OrgPolicy>),
    Health {
        /// Whether an organisation is registered.
        org_registered: bool,
        /// Whether the database answered a query.
        storage_ok: bool,
    },
    /// A group's newest GroupInfo (TLS encoded) and the epoch it is for.
    GroupInfo {
        #[serde(with = "serde_bytes")]
        group_info: Vec<u8>,
        epoch: u64,
    },
    /// Published archive checkpoints with their positions, oldest first.
    ArchiveCheckpoints(Vec<(u64, PublishedCheckpoint)>),
    /// Ids of the groups waiting for this device's user.
    PendingSeats(Vec<Vec<u8>>),
    /// The revocation naming the asking device, if the relay holds one, and the policy.
    MyRevocation {
        revocation: Option<Box<Revocation>>,
        policy: Option<Box<OrgPolicy>>,
    },
    /// Bytes of a ratchet tree from the asked offset, and the tree's whole length.
    RatchetTree {
        total: u64,
        #[serde(with = "serde_bytes")]
        chunk: Vec<u8>,
    },
}

/// One metadata event in the relay's audit log. Never content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Seconds since the Unix epoch.
    pub at: u64,
    /// `org_registered`, `invite_created`, `enrolment_requested`, `enrolment_approved`,
    /// `enrolment_rejected`, `login`, `group_created`, `member_added`, `member_removed`.
    pub event: String,
    /// The user handle that acted.
    pub actor: String,
    /// What it acted on: a user handle, a device id, or an organisation name.
    pub subject: String,
    /// The group concerned, if any.
    #[serde(with = "serde_bytes")]
    pub group: Option<Vec<u8>>,
}

/// An enrolment request waiting for an admin, as the relay holds it. Only the signed
/// parts count: an admin device checks `grant` and `request` before it signs anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingEnrolment {
    pub user: String,
    /// Another device of an already enrolled user (from a link code).
    pub linked: bool,
    pub device_id: String,
    #[serde(with = "serde_bytes")]
    pub device_key: Vec<u8>,
    pub profile: Profile,
    pub requested_at: u64,
    /// What the code's maker signed; absent for requests filed before proofs existed.
    pub grant: Option<EnrolmentGrant>,
    /// What the joining device signed with the code's secret and its own key.
    pub request: Option<EnrolmentRequest>,
    /// The user's enrolled device that approved this new device, if any.
    pub confirmation: Option<DeviceConfirmation>,
}

/// A user's requested profile next to the approved one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileChange {
    pub user: String,
    pub current: Profile,
    pub requested: Profile,
    pub requested_at: u64,
    /// The request as one of the user's devices signed it.
    pub request: Option<ProfileRequest>,
}

/// An invite not yet used and not expired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenInvite {
    pub user: String,
    pub expires_at: u64,
    /// Another device of an existing user (a link code) rather than a new user.
    pub link: bool,
}

/// A checkpoint of a compliance archive: its device's signature over the hash of one
/// entry of its chain (see [`archive_checkpoint_payload`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedCheckpoint {
    pub device_id: String,
    pub entry_seq: u64,
    #[serde(with = "serde_bytes")]
    pub hash: Vec<u8>,
    /// When the archive signed it, milliseconds since the Unix epoch.
    pub signed_at: i64,
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// The bytes an archive device signs for the checkpoint of entry `seq` with chain `hash`.
pub fn archive_checkpoint_payload(seq: i64, hash: &[u8]) -> Vec<u8> {
    let mut payload = b"muster-archive-checkpoint-v1\0".to_vec();
    payload.extend_from_slice(&seq.to_be_bytes());
    payload.extend_from_slice(hash);
    payload
}

/// A KeyPackage handed out for one device of a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimedKeyPackage {
    pub device_id: String,
    #[serde(with = "serde_bytes")]
    pub key_package: Vec<u8>,
}

/// Something waiting for a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Delivery {
    Welcome {
        id: u64,
        #[serde(with = "serde_bytes")]
        group_id: Vec<u8>,
        #[serde(with = "serde_bytes")]
        welcome: Vec<u8>,
    },
    Group {
        #[serde(with = "serde_bytes")]
        group_id: Vec<u8>,
        seq: u64,
        #[serde(with = "serde_bytes")]
        message: Vec<u8>,
    },
}

/// Acknowledges that a delivery is safely stored on the device.
impl Delivery {
    /// The acknowledgement that tells the relay this delivery is stored.
    pub fn ack(&self) -> AckItem {
        match self {
            Delivery::Welcome { id, .. } => AckItem::Welcome { id: *id },
            Delivery::Group { group_id, seq, .. } => AckItem::Group {
                group_id: group_id.clone(),
                seq: *seq,
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AckItem {
    Welcome {
        id: u64,
    },
    Group {
        #[serde(with = "serde_bytes")]
        group_id: Vec<u8>,
        seq: u64,
    },
}

/// Sent by the relay on a unidirectional stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Push {
    /// New deliveries are waiting: fetch.
    Wake,
    /// Something other than deliveries changed for this device (an enrolment to vet, a
    /// revocation, a device of its user): sync whole. Older clients ignore it.
    Changed,
    /// Group messages for a connection that subscribed ([`Request::Subscribe`]), in the
    /// order they were stored, each one the next for this device in its group after what
    /// the connection was already handed. They travel on one stream per connection, which
    /// keeps that order. `revocations` is the newest revocation number when they were
    /// sent: a device that has seen fewer learns them before judging these messages.
    Deliveries {
        deliveries: Vec<Delivery>,
        revocations: u64,
    },
}

/// Why the relay refused a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    BadRequest,
    Unauthenticated,
    UnknownDevice,
    EnrolmentPending,
    EnrolmentRejected,
    DeviceRevoked,
    Forbidden,
    InvalidToken,
    TokenUsed,
    TokenExpired,
    OrgExists,
    NoOrg,
    UnknownGroup,
    GroupExists,
    NotMember,
    /// The group has moved past the epoch the request was made for.
    EpochMoved {
        current: u64,
    },
    TooLarge,
    InvalidMessage,
    InvalidCertificate,
    UnknownUser,
    NoKeyPackages,
    Internal,
    QuotaExceeded,
    UnknownBlob,
    /// Too many requests from this device: wait and retry.
    RateLimited,
}

/// A refusal with a human-readable reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct RelayError {
    pub code: ErrorCode,
    pub message: String,
}

impl RelayError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Bytes a device signs to prove it holds its key on this connection.
pub fn auth_transcript(relay_fingerprint: &str, nonce: &[u8]) -> Vec<u8> {
    let mut out = b"muster-auth-v1\0".to_vec();
    out.extend_from_slice(relay_fingerprint.as_bytes());
    out.push(0);
    out.extend_from_slice(nonce);
    out
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("frame does not decode: {0}")]
    Malformed(String),
}

/// Encodes a message body (without the length prefix).
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, WireError> {
    let bytes = postcard::to_stdvec(value).map_err(|e| WireError::Malformed(e.to_string()))?;
    if bytes.len() > MAX_FRAME {
        return Err(WireError::TooLarge(bytes.len()));
    }
    Ok(bytes)
}

/// Decodes a message body, refusing trailing bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    if bytes.len() > MAX_FRAME {
        return Err(WireError::TooLarge(bytes.len()));
    }
    let (value, rest) =
        postcard::take_from_bytes(bytes).map_err(|e| WireError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(WireError::Malformed(format!(
            "{} trailing bytes",
            rest.len()
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directed_mark_names_sorted_distinct_handles_and_nothing_else_passes() {
        let users = vec!["alice".to_string(), "bob".to_string()];
        assert_eq!(directed_users(&directed_aad(&users)).unwrap(), Some(users));
        assert_eq!(directed_users(b"").unwrap(), None);
        for bad in [
            &b"something else"[..],
            b"muster-to\n",
            b"muster-to\nbob\nalice",
            b"muster-to\nalice\nalice",
            b"muster-to\nAlice",
        ] {
            assert!(directed_users(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn byte_fields_keep_the_wire_format_of_a_byte_sequence() {
        // serde_bytes must not change what peers see: a varint length, then the bytes,
        // exactly as postcard writes a sequence of u8.
        let req = Request::Send {
            group_id: vec![1, 2],
            message: vec![3],
            client_id: vec![4, 5, 6],
        };
        assert_eq!(encode(&req).unwrap(), [18, 2, 1, 2, 1, 3, 3, 4, 5, 6]);
        let seq_of_u8 =
            postcard::to_stdvec(&(18u8, vec![1u8, 2], vec![3u8], vec![4u8, 5, 6])).unwrap();
        assert_eq!(encode(&req).unwrap(), seq_of_u8);
    }

    #[test]
    fn requests_round_trip() {
        let req = Request::Send {
            group_id: vec![1, 2],
            message: vec![3; 100],
            client_id: vec![9; 16],
        };
        assert_eq!(decode::<Request>(&encode(&req).unwrap()).unwrap(), req);
    }

    #[test]
    fn garbage_and_trailing_bytes_are_refused() {
        assert!(decode::<Request>(&[0xff, 0xff, 0xff]).is_err());
        let mut bytes = encode(&Request::Directory).unwrap();
        bytes.push(0);
        assert!(matches!(
            decode::<Request>(&bytes),
            Err(WireError::Malformed(_))
        ));
        assert!(matches!(
            decode::<Request>(&vec![0; MAX_FRAME + 1]),
            Err(WireError::TooLarge(_))
        ));
    }

    #[test]
    fn transcripts_bind_their_inputs() {
        assert_ne!(auth_transcript("a", &[1]), auth_transcript("b", &[1]));
        assert_ne!(auth_transcript("a", &[1]), auth_transcript("a", &[2]));
    }
}
