//! Muster's shared vocabulary: the organisation descriptor, identity certificates
//! signed by the organisation root, invite codes, and the request/response frames the
//! client and relay exchange. Pure data and pure functions: no I/O.

pub mod enrolment;
pub mod identity;
pub mod invite;
pub mod org_policy;
pub mod policy;
pub mod revocation;
pub mod wire;

pub use enrolment::{
    verify_enrolment, CodeSecret, ConfirmationBody, DeviceConfirmation, EnrolmentGrant,
    EnrolmentRequest, GrantBody, ProfileRequest, ProfileRequestBody, ProofError, RequestBody,
};
pub use identity::{
    device_id_for, now_unix, signed_by_admin, validate_handle, verify_device_signature, CertError,
    Certificate, CertificateBody, IssuerCertificate, OrgDescriptor, OrgRootKey, Profile, Role,
};
pub use invite::{InviteCode, InviteError, InvitePurpose};
pub use org_policy::{
    LegalOfficers, OrgPolicy, OrgPolicyBody, DEFAULT_CERTIFICATE_LIFETIME_SECS,
    MIN_CERTIFICATE_LIFETIME_SECS,
};
pub use policy::{GroupPolicy, GROUP_POLICY_EXTENSION, MAX_PENDING_SEATS};
pub use revocation::{Revocation, RevocationBody, RevocationList};
pub use wire::{
    archive_checkpoint_payload, auth_transcript, decode, directed_aad, directed_users, encode,
    encrypted_size, AckItem, AuditEvent, ClaimedKeyPackage, Delivery, ErrorCode, OpenInvite,
    PendingEnrolment, ProfileChange, PublishedCheckpoint, Push, RelayError, Request, Response,
    WireError, ATTACHMENT_CHUNK, ATTACHMENT_CHUNK_OVERHEAD, BLOB_QUOTA_PER_DEVICE, MAX_ATTACHMENT,
    MAX_FRAME, MAX_GROUP_ID, MAX_MLS_MESSAGE, MAX_RECIPIENT_USERS, MESSAGE_RETENTION_SECS,
    QUEUE_QUOTA_PER_DEVICE, RATCHET_TREE_CHUNK, TREE_IN_WELCOME_MAX_MEMBERS,
};
