//! Device operations: enrolment, groups, sending, and sync.

use crate::archive::{self, ArchivedMessage};
use crate::attachments::{mime_for, AttachmentRef, ChunkCipher};
use crate::content::{mentions_in, AuthorSpan, Body, Envelope, ReceiptKind};
use crate::conversation::{
    self, insert_system, order_key, placeholder_name, Author, BoardEntry, Origin,
};
use crate::error::{from_link, EngineError};
use crate::link::{Link, LinkError};
use crate::provider::{Provider, StoreCodec};
use crate::store::SCHEMA;
use muster_proto::{
    auth_transcript, device_id_for, encrypted_size, now_unix, validate_handle, AckItem,
    Certificate, CertificateBody, CodeSecret, Delivery, EnrolmentRequest, ErrorCode, GroupPolicy,
    InviteCode, InvitePurpose, OrgDescriptor, OrgRootKey, Profile, Request, RequestBody, Response,
    Role, ATTACHMENT_CHUNK, ATTACHMENT_CHUNK_OVERHEAD, GROUP_POLICY_EXTENSION, MAX_ATTACHMENT,
};
use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::RustCrypto;
use openmls_traits::signatures::Signer as _;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

pub(crate) const CIPHERSUITE: Ciphersuite =
    Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;
/// Past epochs whose secrets are kept, so messages sent just before a commit still decrypt.
const MAX_PAST_EPOCHS: usize = 5;
const KEY_PACKAGE_LOW_WATER: u32 = 5;
const KEY_PACKAGE_BATCH: usize = 10;
const MAX_COMMIT_ATTEMPTS: u32 = 8;
const FETCH_BATCH: u32 = 200;
/// How often, at least, groups are looked through for members whose certificate ran out.
const LAPSE_CHECK_SECS: u64 = 600;
/// Groups with more members than this batch their delivery receipts.
const RECEIPT_BATCH_MEMBERS: usize = 20;
/// How often a device sends delivery receipts into a large group.
const RECEIPT_BATCH_INTERVAL_MS: i64 = 5_000;
/// Longest text message accepted for sending, in bytes.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;
const DB_FILE: &str = "muster.db";

pub(crate) const STATE_ACTIVE: &str = "active";
const STATE_LEFT: &str = "left";
const STATE_REMOVED: &str = "removed";

/// A message as the user sees it.
#[derive(Debug, Clone, Serialize)]
pub struct MessageView {
    pub id: String,
    pub group: String,
    pub group_id: String,
    /// `text` or `system` (membership changes and notices).
    pub kind: String,
    pub sender: String,
    pub sender_device: String,
    pub text: String,
    pub sent_at: String,
    pub received_at: String,
    /// `sending`, `sent`, `received`, or `failed`.
    pub status: String,
    /// The id of the message this one replies to.
    pub reply_to: Option<String>,
    pub mentions: Vec<String>,
    /// The author changed the text after sending.
    pub edited: bool,
    /// The author deleted it; its content is gone from this device.
    pub deleted: bool,
    /// Emoji to the users who reacted with it.
    pub reactions: std::collections::BTreeMap<String, Vec<String>>,
    /// Members (other than the sender) who read it.
    pub read_by: Vec<String>,
    /// Members (other than the sender) whose device stored it.
    pub delivered_to: Vec<String>,
    /// Members other than the sender, for "read by N of M".
    pub audience: usize,
    /// An alert that asks every member to acknowledge it.
    pub ack_required: bool,
    /// Members who acknowledged this alert.
    pub acked_by: Vec<String>,
    /// A file attached to this message (fetch it with `fetch ID`).
    pub attachment: Option<AttachmentView>,
    #[serde(skip)]
    pub local_seq: i64,
}

/// An attachment as the user sees it (never its key).
#[derive(Debug, Clone, Serialize)]
pub struct AttachmentView {
    pub name: String,
    pub mime: String,
    pub size: u64,
    pub sha256: String,
    /// Where this device saved it, once fetched.
    pub saved_to: Option<String>,
}

/// A group as the user sees it.
#[derive(Debug, Clone, Serialize)]
pub struct GroupView {
    pub name: String,
    pub id: String,
    pub members: Vec<String>,
    pub epoch: u64,
    /// `active`, `left` or `removed`.
    pub state: String,
    /// Only admins add or remove people; members cannot leave or rename it.
    pub managed: bool,
    /// The organisation's compliance archive keeps everything said in this group.
    pub archived: bool,
    /// Members whose certificate carries the archive role (valid ones only).
    pub archive_members: Vec<String>,
    /// Devices delete messages this long after they were sent.
    pub disappear_secs: Option<u64>,
    /// Devices keep messages this long.
    pub retain_secs: Option<u64>,
    /// This user muted the group: only urgent alerts notify.
    pub muted: bool,
    pub pinned: bool,
    /// Which messages notify: `all`, `mentions` (and alerts) or `alerts`.
    pub notify_level: String,
}

/// An enrolment request as an admin sees it.
#[derive(Debug, Clone, Serialize)]
pub struct PendingView {
    pub user: String,
    /// Another device of an already enrolled user.
    pub linked: bool,
    pub device_id: String,
    pub display_name: String,
    pub title: Option<String>,
    pub department: Option<String>,
    pub requested_at: String,
    /// Who made the code it was made with, when its proofs check out.
    pub code_from: Option<String>,
    /// Why it cannot be approved: its proofs do not check out.
    pub problem: Option<String>,
}

/// A message written to the outbox, not yet confirmed by the relay.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    group_id: Vec<u8>,
    pub id: String,
}

/// What creating an organisation needs: the relay, its bootstrap token, the
/// organisation's name, and its first admin.
#[derive(Debug, Clone)]
pub struct NewOrg<'a> {
    /// The relay's address (HOST:PORT) and certificate fingerprint.
    pub relay: &'a str,
    pub fingerprint: &'a str,
    /// The one-time token the relay printed when it started.
    pub token: &'a str,
    pub org_name: &'a str,
    /// The first admin's handle and profile.
    pub user: &'a str,
    pub profile: Profile,
}

/// One audit log event as an admin sees it.
#[derive(Debug, Clone, Serialize)]
pub struct AuditView {
    pub at: String,
    pub event: String,
    pub actor: String,
    pub subject: String,
    /// The group's local name when this device knows it, else its hex id.
    pub group: Option<String>,
}

/// A colleague in the organisation directory, from their signed certificates.
#[derive(Debug, Clone, Serialize)]
pub struct DirectoryEntry {
    pub user: String,
    pub display_name: String,
    pub title: Option<String>,
    pub department: Option<String>,
    pub roles: Vec<String>,
    pub devices: usize,
}

/// One of the user's enrolled devices.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceView {
    pub device_id: String,
    pub user: String,
    pub this_device: bool,
    pub enrolled_until: String,
}

/// One member's answer to an alert.
#[derive(Debug, Clone, Serialize)]
pub struct RollcallEntry {
    pub user: String,
    pub acked_at: Option<String>,
}

/// Who acknowledged an alert.
#[derive(Debug, Clone, Serialize)]
pub struct Rollcall {
    pub alert: MessageView,
    pub acknowledged: usize,
    pub members: Vec<RollcallEntry>,
}

/// Something that arrived and may deserve the user's attention.
#[derive(Debug, Clone, Serialize)]
pub struct Notification {
    pub id: String,
    pub group: String,
    pub sender: String,
    /// `text` or `alert`.
    pub kind: String,
    pub text: String,
    pub mentions_me: bool,
    pub ack_required: bool,
}

/// What a sync did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct SyncReport {
    pub received: usize,
    /// Messages and alerts that arrived, for notifications.
    pub notifications: Vec<Notification>,
    /// New devices approved by their own user and certified by this admin device.
    pub approved_devices: Vec<String>,
    pub joined_groups: Vec<String>,
    pub sent: usize,
    pub problems: Vec<String>,
}

/// A commit built for the relay: the commit, the Welcome for members it adds, and the
/// GroupInfo of the epoch it starts (what a member that fell behind rejoins from).
pub(crate) struct CommitParts {
    pub(crate) commit: MlsMessageOut,
    pub(crate) welcome: Option<MlsMessageOut>,
    pub(crate) group_info: Option<MlsMessageOut>,
}

impl CommitParts {
    fn new(
        commit: MlsMessageOut,
        welcome: Option<MlsMessageOut>,
        info: Option<openmls::messages::group_info::GroupInfo>,
    ) -> Self {
        Self {
            commit,
            welcome,
            group_info: info.map(MlsMessageOut::from),
        }
    }
}

/// client id, group id, message id, ciphertext
type OutboxEntry = (Vec<u8>, Vec<u8>, String, Vec<u8>);

/// This device as its store records it.
pub(crate) struct DeviceRow {
    pub(crate) relay: String,
    pub(crate) fingerprint: String,
    pub(crate) org: OrgDescriptor,
    pub(crate) user: String,
    pub(crate) device_id: String,
    pub(crate) device_key: Vec<u8>,
    pub(crate) certificate: Option<Certificate>,
    pub(crate) root_key: Option<Vec<u8>>,
}

/// One device's engine over its home directory.
pub struct Engine {
    home: PathBuf,
    pub(crate) db: Connection,
    crypto: RustCrypto,
    /// Members per group as last seen, for choosing how receipts go out; a stale count
    /// only changes how receipts are batched.
    member_counts: HashMap<Vec<u8>, usize>,
    verified_certificates: VerifiedCertificates,
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch as RFC 3339 (UTC), or the number if out of range.
pub fn rfc3339_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

pub(crate) fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut buf)
        .expect("system randomness available");
    hex::encode(buf)
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

/// What every Muster leaf supports beyond the defaults.
pub(crate) fn leaf_capabilities() -> Capabilities {
    Capabilities::builder()
        .extensions(vec![
            ExtensionType::LastResort,
            ExtensionType::Unknown(GROUP_POLICY_EXTENSION),
        ])
        .build()
}

pub(crate) fn create_config(policy: GroupPolicy) -> Result<MlsGroupCreateConfig, EngineError> {
    let policy = Extensions::single(Extension::Unknown(
        GROUP_POLICY_EXTENSION,
        UnknownExtension(policy.to_bytes()),
    ))
    .map_err(EngineError::mls)?;
    Ok(MlsGroupCreateConfig::builder()
        .ciphersuite(CIPHERSUITE)
        .use_ratchet_tree_extension(true)
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .capabilities(leaf_capabilities())
        .with_group_context_extensions(policy)
        .build())
}

fn policy_of(group: &MlsGroup) -> GroupPolicy {
    GroupPolicy::from_extension(
        group
            .extensions()
            .unknown(GROUP_POLICY_EXTENSION)
            .map(|e| e.0.as_slice()),
    )
}

pub(crate) fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .use_ratchet_tree_extension(true)
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .build()
}

fn certificate_in(credential: &Credential) -> Option<Certificate> {
    let basic = BasicCredential::try_from(credential.clone()).ok()?;
    Certificate::from_bytes(basic.identity()).ok()
}

/// Checks that a member's credential carries a certificate signed by our org root for this key.
fn verify_member(
    org: &OrgDescriptor,
    credential: &Credential,
    signature_key: &[u8],
) -> Result<Certificate, String> {
    let cert = certificate_in(credential)
        .ok_or_else(|| "credential carries no identity certificate".to_string())?;
    cert.verify(org, now_unix())
        .map_err(|e| format!("{} ({}): {e}", cert.body.user, cert.body.device_id))?;
    if cert.body.device_key != signature_key {
        return Err(format!(
            "{}: leaf signature key differs from the certificate",
            cert.body.user
        ));
    }
    Ok(cert)
}

/// What changed in a group between the state this device held and the one it catches up
/// to (by rejoining, or by a Welcome that replaces a group it held), judged as one change
/// made by `signer`, who must have been a member of the state held: the shared rules
/// apply to the differences (who may add and remove people in a managed group, who may
/// change the policy, the archive staying in an archived group), every member must be
/// certified and unrevoked, and added members valid now. Returns a notice for each
/// difference, for the user to see.
fn catch_up_changes(
    db: &Connection,
    device: &DeviceRow,
    held: &MlsGroup,
    new: &MlsGroup,
    signer: &Certificate,
    revoked: &HashSet<String>,
) -> Result<Vec<String>, String> {
    let devices = |group: &MlsGroup| -> Result<HashMap<String, Certificate>, String> {
        let mut out = HashMap::new();
        for m in group.members() {
            let cert = roster_member(&device.org, &m.credential, &m.signature_key)?;
            if cert.body.device_id != device.device_id {
                out.insert(cert.body.device_id.clone(), cert);
            }
        }
        Ok(out)
    };
    let (before, after) = (devices(held)?, devices(new)?);
    if !before.contains_key(&signer.body.device_id) {
        return Err(format!(
            "it was signed by {}, who was not in the group as this device knew it",
            signer.body.user
        ));
    }
    // The signer may have been renewed since this device last saw it: its roles and
    // dates are those of the newest certificate for its key that this device has.
    let known = known_certificate(db, &signer.body.device_id).map_err(|e| e.to_string())?;
    let newest = [
        Some(signer),
        before.get(&signer.body.device_id),
        after.get(&signer.body.device_id),
        known.as_ref(),
    ]
    .into_iter()
    .flatten()
    .filter(|c| c.body.device_key == signer.body.device_key && c.verify_issuer(&device.org).is_ok())
    .max_by_key(|c| c.body.not_before)
    .unwrap_or(signer);
    newest.check_validity(now_unix()).map_err(|e| {
        format!(
            "it was signed by {}, whose certificate is not valid now: {e}",
            signer.body.user
        )
    })?;
    let signer = newest;
    let now = now_unix();
    if revoked.contains(&signer.body.device_id) {
        return Err(format!(
            "it was signed by a revoked device of {}",
            signer.body.user
        ));
    }
    let (policy_before, policy_after) = (policy_of(held), policy_of(new));
    let admin = signer.is_admin();
    if policy_before != policy_after && !admin {
        return Err(format!(
            "{} changed the group's policy without being an admin",
            signer.body.user
        ));
    }
    let mut notices = Vec::new();
    for (id, cert) in after.iter().filter(|(id, _)| !before.contains_key(*id)) {
        cert.check_validity(now_unix())
            .map_err(|e| format!("it adds {} ({id}): {e}", cert.body.user))?;
        if revoked.contains(id) {
            return Err(format!("it adds revoked device {id} of {}", cert.body.user));
        }
        if policy_before.managed && !admin && cert.body.user != signer.body.user {
            return Err(format!(
                "{} added {} to a managed group without being an admin",
                signer.body.user, cert.body.user
            ));
        }
        notices.push(format!(
            "while this device was behind, {} joined",
            cert.body.user
        ));
    }
    for (id, cert) in before.iter().filter(|(id, _)| !after.contains_key(*id)) {
        // Like the shared rules: a lapsed device is every member's to remove.
        let was_revoked = revoked.contains(id) || muster_rules::lapsed(cert, now);
        if policy_before.managed && !admin && !was_revoked {
            return Err(format!(
                "{} removed {} from a managed group without being an admin",
                signer.body.user, cert.body.user
            ));
        }
        if cert.is_archive() && policy_after.archived && !was_revoked {
            return Err("it removes the compliance archive from an archived group".into());
        }
        notices.push(format!(
            "while this device was behind, {} left",
            cert.body.user
        ));
    }
    if policy_after.archived
        && !after
            .values()
            .any(|c| c.is_archive() && !revoked.contains(&c.body.device_id))
    {
        return Err("it is an archived group without its archive".into());
    }
    if policy_before != policy_after {
        notices.extend(describe_policy_change(
            &signer.body.user,
            policy_before,
            policy_after,
        ));
    }
    Ok(notices)
}

/// Checks that a member's credential carries a certificate the organisation root signed
/// for this key, whatever its dates.
fn roster_member(
    org: &OrgDescriptor,
    credential: &Credential,
    signature_key: &[u8],
) -> Result<Certificate, String> {
    let cert = certificate_in(credential)
        .ok_or_else(|| "credential carries no identity certificate".to_string())?;
    cert.verify_issuer(org)
        .map_err(|e| format!("{} ({}): {e}", cert.body.user, cert.body.device_id))?;
    if cert.body.device_key != signature_key {
        return Err(format!(
            "{}: leaf signature key differs from the certificate",
            cert.body.user
        ));
    }
    Ok(cert)
}

/// Users in the group whose device holds a valid, unrevoked archive certificate.
/// The leaves of the members whose certificate matches.
fn leaves_where(group: &MlsGroup, matches: impl Fn(&Certificate) -> bool) -> Vec<LeafNodeIndex> {
    group
        .members()
        .filter(|m| certificate_in(&m.credential).is_some_and(|c| matches(&c)))
        .map(|m| m.index)
        .collect()
}

fn archive_members(
    group: &MlsGroup,
    org: &OrgDescriptor,
    db: &Connection,
) -> Result<Vec<String>, EngineError> {
    let mut users = Vec::new();
    // Only archive members' certificates are worth a signature check: this runs on every send.
    for member in group
        .members()
        .filter(|m| certificate_in(&m.credential).is_some_and(|c| c.is_archive()))
    {
        let Ok(cert) = verify_member(org, &member.credential, &member.signature_key) else {
            continue;
        };
        if !revoked_device(db, &cert.body.device_id)? {
            users.push(cert.body.user);
        }
    }
    users.sort();
    users.dedup();
    Ok(users)
}

fn mls_bytes(message: &MlsMessageOut) -> Result<Vec<u8>, EngineError> {
    message.tls_serialize_detached().map_err(EngineError::mls)
}

fn group_hex(group_id: &[u8]) -> String {
    hex::encode(group_id)
}

impl Engine {
    /// Opens (creating if needed) the device store in `home`.
    pub fn open(home: &Path) -> Result<Self, EngineError> {
        std::fs::create_dir_all(home)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o700));
        }
        let mut db = Connection::open(home.join(DB_FILE))?;
        db.busy_timeout(std::time::Duration::from_secs(10))?;
        db.set_prepared_statement_cache_capacity(128);
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "FULL")?;
        // Deleted content is overwritten, not left in free pages.
        db.pragma_update(None, "secure_delete", "ON")?;
        db.execute_batch(SCHEMA)?;
        crate::archive::migrate(&db)?;
        // Deleted rows leave no trace in the full-text index either.
        db.execute(
            "INSERT INTO messages_fts (messages_fts, rank) VALUES ('secure-delete', 1)",
            [],
        )?;
        openmls_sqlite_storage::SqliteStorageProvider::<StoreCodec, _>::new(&mut db)
            .run_migrations()
            .map_err(|e| EngineError::Mls(format!("storage migration: {e}")))?;
        let engine = Self {
            home: home.to_path_buf(),
            db,
            crypto: RustCrypto::default(),
            member_counts: HashMap::new(),
            verified_certificates: VerifiedCertificates::default(),
        };
        engine.enforce_retention()?;
        Ok(engine)
    }

    pub fn home(&self) -> &Path {
        &self.home
    }

    fn device_opt(&self) -> Result<Option<DeviceRow>, EngineError> {
        let row = self
            .db
            .query_row(
                "SELECT relay, fingerprint, org, user, device_id, device_key, certificate, root_key FROM device WHERE id = 1",
                [],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, Vec<u8>>(5)?,
                        r.get::<_, Option<Vec<u8>>>(6)?,
                        r.get::<_, Option<Vec<u8>>>(7)?,
                    ))
                },
            )
            .optional()?;
        let Some((relay, fingerprint, org, user, device_id, device_key, cert, root_key)) = row
        else {
            return Ok(None);
        };
        let org: OrgDescriptor = serde_json::from_slice(&org).map_err(|_| {
            EngineError::Invalid("stored organisation descriptor is damaged".into())
        })?;
        let certificate = cert.map(|c| Certificate::from_bytes(&c)).transpose()?;
        Ok(Some(DeviceRow {
            relay,
            fingerprint,
            org,
            user,
            device_id,
            device_key,
            certificate,
            root_key,
        }))
    }

    pub(crate) fn device(&self) -> Result<DeviceRow, EngineError> {
        self.device_opt()?.ok_or(EngineError::NotEnrolled)
    }

    pub(crate) fn signer(&self, device: &DeviceRow) -> Result<SignatureKeyPair, EngineError> {
        let storage = crate::provider::Storage::new(&self.db);
        SignatureKeyPair::read(&storage, &device.device_key, SignatureScheme::ED25519)
            .ok_or_else(|| EngineError::Mls("device signing key is missing from the store".into()))
    }

    fn credential(device: &DeviceRow) -> Result<CredentialWithKey, EngineError> {
        let cert = device
            .certificate
            .as_ref()
            .ok_or(EngineError::AwaitingApproval)?;
        Ok(CredentialWithKey {
            credential: BasicCredential::new(cert.to_bytes()).into(),
            signature_key: device.device_key.clone().into(),
        })
    }

    fn new_signer(&self) -> Result<SignatureKeyPair, EngineError> {
        let signer = SignatureKeyPair::new(SignatureScheme::ED25519).map_err(EngineError::mls)?;
        signer
            .store(&crate::provider::Storage::new(&self.db))
            .map_err(EngineError::mls)?;
        Ok(signer)
    }

    /// Fails if this home already holds a device.
    pub fn ensure_fresh_home(&self) -> Result<(), EngineError> {
        if let Some(d) = self.device_opt()? {
            return Err(EngineError::AlreadyEnrolled(format!(
                "{} in {}",
                d.user, d.org.name
            )));
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn insert_device(
        &self,
        relay: &str,
        fingerprint: &str,
        org: &OrgDescriptor,
        user: &str,
        device_key: &[u8],
        profile: &Profile,
        cert: Option<&Certificate>,
        root_key: Option<&[u8]>,
    ) -> Result<(), EngineError> {
        self.db.execute(
            "INSERT INTO device (id, relay, fingerprint, org, user, device_id, device_key, profile, certificate, root_key, created_at)
             VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                relay,
                fingerprint.to_ascii_lowercase(),
                serde_json::to_vec(org).expect("org serialises"),
                user,
                device_id_for(device_key),
                device_key,
                serde_json::to_vec(profile).expect("profile serialises"),
                cert.map(|c| c.to_bytes()),
                root_key,
                now_unix() as i64
            ],
        )?;
        Ok(())
    }

    /// Creates the organisation: root key, this device as its first admin, registered with
    /// the relay `conn` reaches (the one `setup` names).
    pub async fn create_org(
        &mut self,
        conn: &impl Link,
        setup: &NewOrg<'_>,
    ) -> Result<(), EngineError> {
        let NewOrg {
            relay,
            fingerprint,
            token,
            org_name,
            user,
            profile,
        } = setup;
        let profile = profile.clone();
        self.ensure_fresh_home()?;
        validate_handle(user)?;
        if org_name.trim().is_empty() {
            return Err(EngineError::Invalid(
                "organisation name must not be empty".into(),
            ));
        }
        let root = OrgRootKey::generate();
        let org = OrgDescriptor {
            org_id: random_hex(16),
            name: org_name.trim().to_string(),
            root_public_key: root.public_key(),
        };
        let signer = self.new_signer()?;
        let now = now_unix();
        let cert = root.sign(CertificateBody {
            org_id: org.org_id.clone(),
            user: user.to_string(),
            device_id: device_id_for(signer.public()),
            device_key: signer.public().to_vec(),
            profile: profile.clone(),
            roles: vec![Role::Admin, Role::Member],
            not_before: now.saturating_sub(300),
            not_after: now + muster_proto::DEFAULT_CERTIFICATE_LIFETIME_SECS,
        });
        Link::request(
            conn,
            &Request::Bootstrap {
                token: token.trim().to_string(),
                org: org.clone(),
                admin: cert.clone(),
            },
        )
        .await
        .map_err(from_link)?;
        self.insert_device(
            relay,
            fingerprint,
            &org,
            user,
            signer.public(),
            &profile,
            Some(&cert),
            Some(root.pkcs8()),
        )?;
        self.record_issued(&[cert])?;
        self.authenticate(conn).await
    }

    /// Checks an invite code for a new user before anything is sent: the caller connects
    /// to the relay it names and passes it to [`Self::join`].
    pub fn new_user_invite(&self, code: &str) -> Result<InviteCode, EngineError> {
        let invite = self.usable_invite(code)?;
        if invite.purpose != InvitePurpose::NewUser {
            return Err(EngineError::Invalid(
                "this is a device link code: use `muster join-device CODE`".into(),
            ));
        }
        Ok(invite)
    }

    /// Checks a device link code, like [`Self::new_user_invite`], for [`Self::join_device`].
    pub fn link_invite(&self, code: &str) -> Result<InviteCode, EngineError> {
        let invite = self.usable_invite(code)?;
        if invite.purpose != InvitePurpose::LinkDevice {
            return Err(EngineError::Invalid(
                "this is an invite for a new user: use `muster join CODE`".into(),
            ));
        }
        Ok(invite)
    }

    fn usable_invite(&self, code: &str) -> Result<InviteCode, EngineError> {
        let invite = InviteCode::decode(code)?;
        self.ensure_fresh_home()?;
        if invite.expires_at < now_unix() {
            return Err(EngineError::Invalid("this invite code has expired".into()));
        }
        Ok(invite)
    }

    /// Submits an enrolment request with an invite code (from [`Self::new_user_invite`])
    /// to the relay it names; an admin must approve it.
    pub async fn join(
        &mut self,
        conn: &impl Link,
        invite: InviteCode,
        profile: Profile,
    ) -> Result<String, EngineError> {
        self.enrol(conn, invite, profile).await
    }

    /// Enrols this device as another device of an existing user, with a link code made on
    /// one of their devices (from [`Self::link_invite`]); an admin then approves it.
    pub async fn join_device(
        &mut self,
        conn: &impl Link,
        invite: InviteCode,
    ) -> Result<String, EngineError> {
        let profile = Profile {
            display_name: invite.user.clone(),
            ..Default::default()
        };
        self.enrol(conn, invite, profile).await
    }

    async fn enrol(
        &mut self,
        conn: &impl Link,
        invite: InviteCode,
        profile: Profile,
    ) -> Result<String, EngineError> {
        self.ensure_fresh_home()?;
        if profile.display_name.trim().is_empty() {
            return Err(EngineError::Invalid(
                "display name must not be empty".into(),
            ));
        }
        let secret = CodeSecret::from_hex(&invite.secret)
            .map_err(|e| EngineError::Invalid(format!("invite code: {e}")))?;
        let signer = self.new_signer()?;
        let body = RequestBody {
            org_id: invite.org.org_id.clone(),
            purpose: invite.purpose,
            user: invite.user.clone(),
            device_key: signer.public().to_vec(),
            profile: profile.clone(),
            code_key: secret.public_key(),
            requested_at: now_unix(),
        };
        let device_proof = signer
            .sign(&body.device_signed())
            .map_err(|e| EngineError::Mls(format!("signing failed: {e:?}")))?;
        let request = EnrolmentRequest::new(body, &secret, |_| device_proof);
        let response = conn
            .request(&Request::Enrol { request })
            .await
            .map_err(from_link)?;
        let Response::EnrolmentSubmitted { device_id } = response else {
            return Err(EngineError::Invalid(
                "unexpected answer to enrolment".into(),
            ));
        };
        self.insert_device(
            &invite.relay,
            &invite.fingerprint,
            &invite.org,
            &invite.user,
            signer.public(),
            &profile,
            None,
            None,
        )?;
        Ok(device_id)
    }

    /// The user handle and organisation name of this device, if set up.
    pub fn whoami(&self) -> Result<(String, String, String), EngineError> {
        let d = self.device()?;
        Ok((d.user, d.device_id, d.org.name))
    }

    /// Where this device's relay is: its address and pinned certificate fingerprint.
    pub fn relay(&self) -> Result<(String, String), EngineError> {
        let device = self.device()?;
        Ok((device.relay, device.fingerprint))
    }

    /// Proves this device's key on a fresh connection to its relay; picks up its
    /// certificate after approval and keeps its KeyPackage supply topped up.
    pub async fn authenticate(&mut self, conn: &impl Link) -> Result<(), EngineError> {
        let device = self.device()?;
        let signer = self.signer(&device)?;
        let nonce = match conn
            .request(&Request::Hello {
                device_key: device.device_key.clone(),
            })
            .await
            .map_err(from_link)?
        {
            Response::Challenge { nonce } => nonce,
            _ => {
                return Err(EngineError::Invalid(
                    "relay did not send a challenge".into(),
                ))
            }
        };
        let signature = signer
            .sign(&auth_transcript(&device.fingerprint, &nonce))
            .map_err(|e| EngineError::Mls(format!("signing failed: {e:?}")))?;
        match conn.request(&Request::Prove { signature }).await {
            Ok(_) => {}
            Err(LinkError::Refused(e)) if e.code == ErrorCode::EnrolmentPending => {
                return Err(EngineError::AwaitingApproval)
            }
            Err(e) => return Err(from_link(e)),
        }
        // Pick up the certificate after approval, or a newer one after a profile change.
        {
            let Response::Certificate(cert) = conn
                .request(&Request::MyCertificate)
                .await
                .map_err(from_link)?
            else {
                return Err(EngineError::Invalid(
                    "relay did not send a certificate".into(),
                ));
            };
            // A certificate that ran out still lets this device read: members refuse what
            // it sends until an admin device renews it (see `check_own_certificate`).
            cert.verify_issuer(&device.org)?;
            if cert.body.device_key != device.device_key || cert.body.user != device.user {
                return Err(EngineError::Invalid(
                    "relay returned a certificate for another device".into(),
                ));
            }
            // Only a later certificate replaces the one held: a relay cannot hand back an
            // older one (say, from before a role was taken away).
            let newer = device
                .certificate
                .as_ref()
                .is_none_or(|old| *old != cert && cert.body.not_before > old.body.not_before);
            let renewed = newer && device.certificate.is_some();
            if newer {
                self.db.execute(
                    "UPDATE device SET certificate = ?1 WHERE id = 1",
                    [cert.to_bytes()],
                )?;
            }
            if renewed {
                // This device's leaves and KeyPackages still carry the old certificate.
                self.db.execute(
                    "INSERT INTO sync_state (key, value) VALUES ('leaf_update_due', 1)
                     ON CONFLICT (key) DO UPDATE SET value = 1",
                    [],
                )?;
            }
            self.ensure_key_packages(conn, renewed).await?;
        }
        Ok(())
    }

    /// Keeps KeyPackages on the relay; `replace` swaps them all for ones carrying this
    /// device's current certificate.
    async fn ensure_key_packages(
        &mut self,
        conn: &impl Link,
        replace: bool,
    ) -> Result<(), EngineError> {
        let Response::KeyPackageCount {
            mut available,
            mut has_last_resort,
        } = conn
            .request(&Request::KeyPackageCount)
            .await
            .map_err(from_link)?
        else {
            return Err(EngineError::Invalid(
                "unexpected answer to KeyPackageCount".into(),
            ));
        };
        if replace {
            (available, has_last_resort) = (0, false);
        }
        if available >= KEY_PACKAGE_LOW_WATER && has_last_resort {
            return Ok(());
        }
        let device = self.device()?;
        let signer = self.signer(&device)?;
        let credential = Self::credential(&device)?;
        let provider = Provider::new(&self.crypto, &self.db);
        let make = |last_resort: bool| -> Result<Vec<u8>, EngineError> {
            let mut builder = KeyPackage::builder().leaf_node_capabilities(leaf_capabilities());
            if last_resort {
                builder = builder.mark_as_last_resort();
            }
            let bundle = builder
                .build(CIPHERSUITE, &provider, &signer, credential.clone())
                .map_err(EngineError::mls)?;
            bundle
                .key_package()
                .tls_serialize_detached()
                .map_err(EngineError::mls)
        };
        let mut key_packages = Vec::new();
        if available < KEY_PACKAGE_LOW_WATER {
            for _ in 0..KEY_PACKAGE_BATCH {
                key_packages.push(make(false)?);
            }
        }
        let last_resort = if has_last_resort {
            None
        } else {
            Some(make(true)?)
        };
        conn.request(&Request::UploadKeyPackages {
            key_packages,
            last_resort,
            replace,
        })
        .await
        .map_err(from_link)?;
        Ok(())
    }

    /// After this device's certificate was renewed: commits an update of its own leaf, with
    /// the new certificate, in every group it is in, so members keep accepting it.
    async fn update_own_leaves(
        &mut self,
        conn: &impl Link,
        report: &mut SyncReport,
    ) -> Result<(), EngineError> {
        let due: Option<i64> = self
            .db
            .query_row(
                "SELECT value FROM sync_state WHERE key = 'leaf_update_due'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        if due != Some(1) {
            return Ok(());
        }
        let device = self.device()?;
        let credential = Self::credential(&device)?;
        let mut complete = true;
        for group_id in self.active_group_ids()? {
            let stale = {
                let provider = Provider::new(&self.crypto, &self.db);
                load_group(&provider, &group_id)?
                    .own_leaf_node()
                    .is_some_and(|leaf| *leaf.credential() != credential.credential)
            };
            if !stale {
                continue;
            }
            let result = self
                .run_commit(conn, &group_id, |group, provider, signer| {
                    let still_stale = group
                        .own_leaf_node()
                        .is_some_and(|leaf| *leaf.credential() != credential.credential);
                    if !still_stale {
                        return Ok(None);
                    }
                    let params = LeafNodeParameters::builder()
                        .with_credential_with_key(credential.clone())
                        .build();
                    let (commit, welcome, info) = group
                        .self_update(provider, signer, params)
                        .map_err(EngineError::mls)?
                        .into_messages();
                    Ok(Some(CommitParts {
                        commit,
                        welcome,
                        group_info: info,
                    }))
                })
                .await;
            if let Err(e) = result {
                complete = false;
                report.problems.push(format!(
                    "could not bring this device's renewed certificate into a group: {e}"
                ));
            }
        }
        if complete {
            self.db.execute(
                "UPDATE sync_state SET value = 0 WHERE key = 'leaf_update_due'",
                [],
            )?;
        }
        Ok(())
    }

    /// This user's other enrolled devices.
    async fn my_other_devices(&self, conn: &impl Link) -> Result<Vec<String>, EngineError> {
        let me = self.device()?;
        let Response::Devices(mine) = conn.request(&Request::MyDevices).await.map_err(from_link)?
        else {
            return Err(EngineError::Invalid(
                "unexpected answer to MyDevices".into(),
            ));
        };
        Ok(mine.into_iter().filter(|d| *d != me.device_id).collect())
    }

    /// Adds this user's other devices to every group this device is in where they are missing.
    async fn add_own_devices(
        &mut self,
        conn: &impl Link,
        report: &mut SyncReport,
    ) -> Result<(), EngineError> {
        let revoked = revoked_devices(&self.db)?;
        let others: Vec<String> = self
            .my_other_devices(conn)
            .await?
            .into_iter()
            .filter(|d| !revoked.contains(d))
            .collect();
        if others.is_empty() {
            return Ok(());
        }
        let user = self.device()?.user;
        let groups = self.active_group_ids()?;
        for group_id in groups {
            let missing: Vec<String> = {
                let provider = Provider::new(&self.crypto, &self.db);
                let present = device_ids_in(&load_group(&provider, &group_id)?);
                others
                    .iter()
                    .filter(|d| !present.contains(d))
                    .cloned()
                    .collect()
            };
            if missing.is_empty() {
                continue;
            }
            let result = match self.claim_for(conn, &user, &missing).await {
                Ok(kps) => self.add_key_packages(conn, &group_id, kps).await,
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                report
                    .problems
                    .push(format!("could not add your other device to a group: {e}"));
            }
        }
        Ok(())
    }

    // ---- groups -------------------------------------------------------------------

    /// Finds a group by name, or by (a prefix of) its hex id.
    fn resolve_group(&self, name_or_id: &str) -> Result<(Vec<u8>, String, String), EngineError> {
        let mut stmt = self
            .db
            .prepare("SELECT group_id, name, state FROM groups ORDER BY created_at")?;
        let all = stmt
            .query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<Vec<(Vec<u8>, String, String)>, _>>()?;
        let by_name: Vec<_> = all.iter().filter(|g| g.1 == name_or_id).collect();
        let active: Vec<_> = by_name.iter().filter(|g| g.2 == STATE_ACTIVE).collect();
        let chosen = match (active.len(), by_name.len()) {
            (1, _) => Some((*active[0]).clone()),
            (0, 1) => Some(by_name[0].clone()),
            (0, 0) => None,
            _ => return Err(EngineError::AmbiguousGroup(name_or_id.to_string())),
        };
        if let Some(g) = chosen {
            return Ok(g);
        }
        if name_or_id.len() >= 6 {
            let by_id: Vec<_> = all
                .iter()
                .filter(|g| group_hex(&g.0).starts_with(&name_or_id.to_ascii_lowercase()))
                .collect();
            match by_id.len() {
                1 => return Ok(by_id[0].clone()),
                n if n > 1 => return Err(EngineError::AmbiguousGroup(name_or_id.to_string())),
                _ => {}
            }
        }
        Err(EngineError::UnknownGroup(name_or_id.to_string()))
    }

    fn active_group(&self, name_or_id: &str) -> Result<(Vec<u8>, String), EngineError> {
        let (id, name, state) = self.resolve_group(name_or_id)?;
        if state != STATE_ACTIVE {
            return Err(EngineError::NotActive(name));
        }
        Ok((id, name))
    }

    /// Refuses a membership change or rename of a managed group unless this device is an admin's.
    fn check_may_manage(&self, group_id: &[u8], what: &str) -> Result<(), EngineError> {
        let provider = Provider::new(&self.crypto, &self.db);
        if !policy_of(&load_group(&provider, group_id)?).managed {
            return Ok(());
        }
        let device = self.device()?;
        if device.certificate.as_ref().is_some_and(|c| c.is_admin()) {
            Ok(())
        } else {
            Err(EngineError::Managed(what.to_string()))
        }
    }

    /// Claims and checks KeyPackages for every enrolled device of each user.
    async fn claim_key_packages(
        &self,
        conn: &impl Link,
        users: &[String],
    ) -> Result<Vec<(String, KeyPackage)>, EngineError> {
        let mut out = Vec::new();
        for user in users {
            out.extend(self.claim_for(conn, user, &[]).await?);
        }
        Ok(out)
    }

    /// Claims and checks KeyPackages for `user`'s devices (only those in `only`, if any).
    async fn claim_for(
        &self,
        conn: &impl Link,
        user: &str,
        only: &[String],
    ) -> Result<Vec<(String, KeyPackage)>, EngineError> {
        let device = self.device()?;
        validate_handle(user)?;
        let claimed = match conn
            .request(&Request::ClaimKeyPackages {
                user: user.to_string(),
                only: only.to_vec(),
            })
            .await
            .map_err(from_link)?
        {
            Response::KeyPackages(k) => k,
            _ => {
                return Err(EngineError::Invalid(
                    "unexpected answer to ClaimKeyPackages".into(),
                ))
            }
        };
        let mut out = Vec::new();
        for c in claimed {
            let kp = KeyPackageIn::tls_deserialize_exact(&c.key_package)
                .map_err(EngineError::mls)?
                .validate(&self.crypto, ProtocolVersion::Mls10)
                .map_err(|e| EngineError::Invalid(format!("KeyPackage of {user}: {e}")))?;
            let cert = verify_member(
                &device.org,
                kp.leaf_node().credential(),
                kp.leaf_node().signature_key().as_slice(),
            )
            .map_err(|e| {
                EngineError::Invalid(format!("refusing KeyPackage offered for {user}: {e}"))
            })?;
            if cert.body.user != user || cert.body.device_id != c.device_id {
                return Err(EngineError::Invalid(format!(
                    "relay offered a KeyPackage of {} for {user}: refused",
                    cert.body.user
                )));
            }
            if !only.is_empty() && !only.contains(&cert.body.device_id) {
                return Err(EngineError::Invalid(format!(
                    "relay offered a KeyPackage for an unrequested device of {user}: refused"
                )));
            }
            if revoked_device(&self.db, &cert.body.device_id)? {
                return Err(EngineError::Invalid(format!(
                    "relay offered a KeyPackage of revoked device {} of {user}: refused",
                    cert.body.device_id
                )));
            }
            out.push((cert.body.device_id, kp));
        }
        Ok(out)
    }

    /// Creates a group named `name` and adds every enrolled device of `members`.
    pub async fn create_group(
        &mut self,
        conn: &impl Link,
        name: &str,
        members: &[String],
        managed: bool,
    ) -> Result<GroupView, EngineError> {
        let policy = GroupPolicy {
            managed,
            archived: false,
        };
        if managed {
            Self::require_admin(&self.device()?)?;
        }
        let name = name.trim();
        if name.is_empty() || name.len() > 64 {
            return Err(EngineError::Invalid(
                "group name must be 1-64 characters".into(),
            ));
        }
        if self
            .resolve_group(name)
            .is_ok_and(|g| g.2 == STATE_ACTIVE && g.1 == name)
        {
            return Err(EngineError::GroupNameTaken(name.to_string()));
        }
        let device = self.device()?;
        let signer = self.signer(&device)?;
        let credential = Self::credential(&device)?;
        let others: Vec<String> = members
            .iter()
            .map(|m| m.trim().to_string())
            .filter(|m| !m.is_empty() && *m != device.user)
            .collect();
        // Check every member exists before creating anything.
        let mut key_packages = self.claim_key_packages(conn, &others).await?;
        let mine = self.my_other_devices(conn).await?;
        if !mine.is_empty() {
            key_packages.extend(self.claim_for(conn, &device.user, &mine).await?);
        }
        let (group_id, group_info, tree) = {
            let provider = Provider::new(&self.crypto, &self.db);
            let group = MlsGroup::new(&provider, &signer, &create_config(policy)?, credential)
                .map_err(EngineError::mls)?;
            let info = group
                .export_group_info(provider.crypto(), &signer, true)
                .map_err(EngineError::mls)?;
            (
                group.group_id().as_slice().to_vec(),
                mls_bytes(&info)?,
                group
                    .export_ratchet_tree()
                    .tls_serialize_detached()
                    .map_err(EngineError::mls)?,
            )
        };
        conn.request(&Request::CreateGroup {
            group_info,
            ratchet_tree: tree,
        })
        .await
        .map_err(from_link)?;
        self.db.execute(
            "INSERT INTO groups (group_id, name, state, created_at) VALUES (?1, ?2, 'active', ?3)",
            params![group_id, name, now_ms()],
        )?;
        if !key_packages.is_empty() {
            self.add_key_packages(conn, &group_id, key_packages).await?;
        }
        self.group_view(&group_id)
    }

    /// Adds every enrolled device of `user` to the group.
    pub async fn add_member(
        &mut self,
        conn: &impl Link,
        group: &str,
        user: &str,
    ) -> Result<GroupView, EngineError> {
        let (group_id, _) = self.active_group(group)?;
        self.check_may_manage(&group_id, "add people to it")?;
        let key_packages = self.claim_key_packages(conn, &[user.to_string()]).await?;
        self.add_key_packages(conn, &group_id, key_packages).await?;
        self.group_view(&group_id)
    }

    async fn add_key_packages(
        &mut self,
        conn: &impl Link,
        group_id: &[u8],
        key_packages: Vec<(String, KeyPackage)>,
    ) -> Result<(), EngineError> {
        let added = self
            .run_commit(conn, group_id, |group, provider, signer| {
                let present: Vec<String> = group
                    .members()
                    .filter_map(|m| certificate_in(&m.credential))
                    .map(|c| c.body.device_id)
                    .collect();
                let fresh: Vec<KeyPackage> = key_packages
                    .iter()
                    .filter(|(device, _)| !present.contains(device))
                    .map(|(_, kp)| kp.clone())
                    .collect();
                if fresh.is_empty() {
                    return Ok(None);
                }
                let (commit, welcome, info) = group
                    .add_members(provider, signer, &fresh)
                    .map_err(EngineError::mls)?;
                Ok(Some(CommitParts::new(commit, Some(welcome), info)))
            })
            .await?;
        if added {
            // run_commit queued the group's name for the new members.
            self.flush_outbox(conn, &mut SyncReport::default()).await?;
        }
        Ok(())
    }

    /// Removes every device of `user` from the group.
    pub async fn remove_member(
        &mut self,
        conn: &impl Link,
        group: &str,
        user: &str,
    ) -> Result<GroupView, EngineError> {
        let (group_id, name) = self.active_group(group)?;
        self.check_may_manage(&group_id, "remove people from it")?;
        let me = self.device()?;
        if user == me.user {
            return Err(EngineError::Invalid(
                "to remove yourself, use `muster group leave`".into(),
            ));
        }
        let view = self.group_view(&group_id)?;
        if !view.members.iter().any(|m| m == user) {
            return Err(EngineError::Invalid(format!(
                "{user} is not a member of {name}"
            )));
        }
        if view.archived && view.archive_members.iter().any(|m| m == user) {
            return Err(EngineError::Invalid(format!(
                "{user} is {name}'s compliance archive; turn archiving off first (`muster group policy {name} --no-archived`)"
            )));
        }
        self.remove_members_where(conn, &group_id, |c| c.body.user == user)
            .await?;
        self.group_view(&group_id)
    }

    /// Commits the removal of every member whose certificate matches `leaving`; commits
    /// nothing when none does. Returns whether a commit went out.
    async fn remove_members_where(
        &mut self,
        conn: &impl Link,
        group_id: &[u8],
        leaving: impl Fn(&Certificate) -> bool,
    ) -> Result<bool, EngineError> {
        self.run_commit(conn, group_id, |group, provider, signer| {
            let leaves = leaves_where(group, &leaving);
            if leaves.is_empty() {
                return Ok(None);
            }
            let (commit, welcome, info) = group
                .remove_members(provider, signer, &leaves)
                .map_err(EngineError::mls)?;
            Ok(Some(CommitParts::new(commit, welcome, info)))
        })
        .await
    }

    /// (admin) Turns the compliance archive on or off for a group. On: the organisation's
    /// archive devices are added first, then the signed policy says `archived`, so no
    /// member ever sees an archived group without its archive. Off: the policy changes
    /// first, then the archive devices are removed.
    pub async fn set_group_policy(
        &mut self,
        conn: &impl Link,
        group: &str,
        archived: bool,
    ) -> Result<GroupView, EngineError> {
        let me = self.device()?;
        Self::require_admin(&me)?;
        let (group_id, name) = self.active_group(group)?;
        let archive_users: Vec<String> = {
            let mut users: Vec<String> = self
                .certificates(conn)
                .await?
                .into_iter()
                .filter(|c| c.is_archive())
                .map(|c| c.body.user)
                .collect();
            users.sort();
            users.dedup();
            users
        };
        if archived {
            if archive_users.is_empty() {
                return Err(EngineError::Invalid(
                    "no archive device is enrolled: enrol one (`muster join` on the archive host) and approve it with `muster approve USER --archive`".into(),
                ));
            }
            let key_packages = self.claim_key_packages(conn, &archive_users).await?;
            self.add_key_packages(conn, &group_id, key_packages).await?;
        }
        let current = {
            let provider = Provider::new(&self.crypto, &self.db);
            policy_of(&load_group(&provider, &group_id)?)
        };
        if current.archived != archived {
            let policy = GroupPolicy {
                archived,
                ..current
            };
            self.run_commit(conn, &group_id, |group, provider, signer| {
                // openmls accepts a changed private extension only when the group
                // requires every member to support it (all Muster leaves do).
                let extensions = Extensions::from_vec(vec![
                    Extension::RequiredCapabilities(RequiredCapabilitiesExtension::new(
                        &[ExtensionType::Unknown(GROUP_POLICY_EXTENSION)],
                        &[],
                        &[],
                    )),
                    Extension::Unknown(GROUP_POLICY_EXTENSION, UnknownExtension(policy.to_bytes())),
                ])
                .map_err(EngineError::mls)?;
                let (commit, welcome, info) = group
                    .update_group_context_extensions(provider, extensions, signer)
                    .map_err(EngineError::mls)?;
                Ok(Some(CommitParts::new(commit, welcome, info)))
            })
            .await?;
        }
        if !archived {
            self.remove_members_where(conn, &group_id, |c| {
                c.is_archive() && archive_users.contains(&c.body.user)
            })
            .await?;
        }
        let view = self.group_view(&group_id)?;
        if archived && view.archive_members.is_empty() {
            return Err(EngineError::Invalid(format!(
                "{name} is archived, but no archive device could be added (has the archive device connected once, to publish its keys?)"
            )));
        }
        Ok(view)
    }

    /// Renames the group for every member.
    pub async fn rename_group(
        &mut self,
        conn: &impl Link,
        group: &str,
        new_name: &str,
    ) -> Result<GroupView, EngineError> {
        let (group_id, _) = self.active_group(group)?;
        self.check_may_manage(&group_id, "rename it")?;
        let new_name = new_name.trim();
        if new_name.is_empty() || new_name.len() > 64 {
            return Err(EngineError::Invalid(
                "group name must be 1-64 characters".into(),
            ));
        }
        if self
            .resolve_group(new_name)
            .is_ok_and(|g| g.2 == STATE_ACTIVE && g.1 == new_name && g.0 != group_id)
        {
            return Err(EngineError::GroupNameTaken(new_name.to_string()));
        }
        self.db.execute(
            "UPDATE groups SET name = ?2 WHERE group_id = ?1",
            params![group_id, new_name],
        )?;
        self.enqueue(
            &group_id,
            Body::GroupMeta {
                name: new_name.to_string(),
            },
        )?;
        self.flush_outbox(conn, &mut SyncReport::default()).await?;
        self.group_view(&group_id)
    }

    /// Leaves the group: proposes this device's removal, which the next member commits.
    pub async fn leave_group(&mut self, conn: &impl Link, group: &str) -> Result<(), EngineError> {
        let (group_id, _) = self.active_group(group)?;
        {
            let provider = Provider::new(&self.crypto, &self.db);
            if policy_of(&load_group(&provider, &group_id)?).managed {
                return Err(EngineError::Invalid(
                    "this is a managed group: members cannot leave it; an admin removes people"
                        .into(),
                ));
            }
        }
        let device = self.device()?;
        let signer = self.signer(&device)?;
        for _ in 0..MAX_COMMIT_ATTEMPTS {
            self.fetch_and_process(conn, &mut SyncReport::default())
                .await?;
            let (_, _, state) = self.resolve_group(&group_hex(&group_id))?;
            if state != STATE_ACTIVE {
                return Ok(());
            }
            let proposal = {
                let tx = self
                    .db
                    .transaction_with_behavior(TransactionBehavior::Immediate)?;
                let provider = Provider::new(&self.crypto, &tx);
                let mut group = load_group(&provider, &group_id)?;
                if group.members().count() == 1 {
                    tx.execute(
                        "UPDATE groups SET state = ?2 WHERE group_id = ?1",
                        params![group_id, STATE_LEFT],
                    )?;
                    tx.commit()?;
                    return Ok(());
                }
                let message = group
                    .leave_group(&provider, &signer)
                    .map_err(EngineError::mls)?;
                tx.commit()?;
                mls_bytes(&message)?
            };
            match conn
                .request(&Request::Propose {
                    group_id: group_id.clone(),
                    proposal,
                })
                .await
            {
                Ok(Response::Stored { seq }) => {
                    self.db.execute(
                        "INSERT OR IGNORE INTO own_handshakes (group_id, seq) VALUES (?1, ?2)",
                        params![group_id, seq as i64],
                    )?;
                    self.db.execute(
                        "UPDATE groups SET state = ?2 WHERE group_id = ?1",
                        params![group_id, STATE_LEFT],
                    )?;
                    insert_system(
                        &self.db,
                        &group_id,
                        "you left the group",
                        Some(order_key(seq, 0)),
                    )?;
                    return Ok(());
                }
                Ok(_) => return Err(EngineError::Invalid("unexpected answer to Propose".into())),
                Err(LinkError::Refused(e)) if matches!(e.code, ErrorCode::EpochMoved { .. }) => {
                    self.clear_pending_proposals(&group_id)?;
                    continue;
                }
                Err(e) => {
                    self.clear_pending_proposals(&group_id)?;
                    return Err(from_link(e));
                }
            }
        }
        Err(EngineError::TooManyRetries(MAX_COMMIT_ATTEMPTS))
    }

    fn clear_pending_proposals(&mut self, group_id: &[u8]) -> Result<(), EngineError> {
        let provider = Provider::new(&self.crypto, &self.db);
        let mut group = load_group(&provider, group_id)?;
        group
            .clear_pending_proposals(provider.storage())
            .map_err(EngineError::mls)?;
        Ok(())
    }

    /// Builds a commit with `build`, posts it, and retries after syncing when the
    /// group's epoch moved. Returns whether a commit was made.
    async fn run_commit<F>(
        &mut self,
        conn: &impl Link,
        group_id: &[u8],
        mut build: F,
    ) -> Result<bool, EngineError>
    where
        F: FnMut(
            &mut MlsGroup,
            &Provider,
            &SignatureKeyPair,
        ) -> Result<Option<CommitParts>, EngineError>,
    {
        self.member_counts.remove(group_id);
        let device = self.device()?;
        let signer = self.signer(&device)?;
        for _ in 0..MAX_COMMIT_ATTEMPTS {
            self.fetch_and_process(conn, &mut SyncReport::default())
                .await?;
            // Anything still pending after a full fetch was never stored by the relay.
            self.drop_unsent_commit(group_id)?;
            let (_, name, state) = self.resolve_group(&group_hex(group_id))?;
            if state != STATE_ACTIVE {
                return Err(EngineError::NotActive(name));
            }
            let (commit, welcome, group_info) = {
                let tx = self
                    .db
                    .transaction_with_behavior(TransactionBehavior::Immediate)?;
                let provider = Provider::new(&self.crypto, &tx);
                let mut group = load_group(&provider, group_id)?;
                let Some(parts) = build(&mut group, &provider, &signer)? else {
                    return Ok(false);
                };
                let commit = mls_bytes(&parts.commit)?;
                let welcome = parts.welcome.as_ref().map(mls_bytes).transpose()?;
                let group_info = parts.group_info.as_ref().map(mls_bytes).transpose()?;
                tx.execute(
                    "INSERT OR REPLACE INTO pending_commits (group_id, commit_hash) VALUES (?1, ?2)",
                    params![group_id, sha256(&commit)],
                )?;
                tx.commit()?;
                (commit, welcome, group_info)
            };
            let result = conn
                .request(&Request::Commit {
                    group_id: group_id.to_vec(),
                    commit,
                    welcome,
                    group_info,
                })
                .await;
            match result {
                Ok(Response::Stored { seq }) => {
                    let tx = self
                        .db
                        .transaction_with_behavior(TransactionBehavior::Immediate)?;
                    let provider = Provider::new(&self.crypto, &tx);
                    let mut group = load_group(&provider, group_id)?;
                    let notice = merge_own_commit(&provider, &mut group, &signer, &device)?;
                    tx.execute(
                        "DELETE FROM pending_commits WHERE group_id = ?1",
                        [group_id],
                    )?;
                    tx.execute(
                        "INSERT OR IGNORE INTO own_handshakes (group_id, seq) VALUES (?1, ?2)",
                        params![group_id, seq as i64],
                    )?;
                    lapse_check_due(&tx)?;
                    if let Some(text) = notice {
                        insert_system(
                            &tx,
                            group_id,
                            &format!("you {text}"),
                            Some(order_key(seq, 0)),
                        )?;
                    }
                    tx.commit()?;
                    return Ok(true);
                }
                Ok(_) => return Err(EngineError::Invalid("unexpected answer to Commit".into())),
                Err(LinkError::Refused(e)) if matches!(e.code, ErrorCode::EpochMoved { .. }) => {
                    self.drop_unsent_commit(group_id)?;
                    if let ErrorCode::EpochMoved { current } = e.code {
                        self.fetch_and_process(conn, &mut SyncReport::default())
                            .await?;
                        self.catch_up(conn, group_id, current, &mut SyncReport::default())
                            .await?;
                    }
                    continue;
                }
                Err(LinkError::Refused(e)) => {
                    self.drop_unsent_commit(group_id)?;
                    return Err(EngineError::Relay(e));
                }
                // The relay may or may not have stored it: the next sync tells.
                Err(e) => return Err(EngineError::Link(e)),
            }
        }
        Err(EngineError::TooManyRetries(MAX_COMMIT_ATTEMPTS))
    }

    fn drop_unsent_commit(&mut self, group_id: &[u8]) -> Result<(), EngineError> {
        let tx = self
            .db
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let provider = Provider::new(&self.crypto, &tx);
        if let Some(mut group) = MlsGroup::load(provider.storage(), &GroupId::from_slice(group_id))
            .map_err(EngineError::mls)?
        {
            if group.pending_commit().is_some() {
                group
                    .clear_pending_commit(provider.storage())
                    .map_err(EngineError::mls)?;
            }
        }
        tx.execute(
            "DELETE FROM pending_commits WHERE group_id = ?1",
            [group_id],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// When the relay's group is at `relay_epoch` and this device, having fetched all it
    /// was sent, is still at an earlier one (it refused a commit the relay sequenced, or
    /// missed one), rejoins the group.
    async fn catch_up(
        &mut self,
        conn: &impl Link,
        group_id: &[u8],
        relay_epoch: u64,
        report: &mut SyncReport,
    ) -> Result<(), EngineError> {
        let held = {
            let provider = Provider::new(&self.crypto, &self.db);
            load_group(&provider, group_id)?.epoch().as_u64()
        };
        if held < relay_epoch {
            self.rejoin(conn, group_id, report).await?;
        }
        Ok(())
    }

    /// Rejoins the groups this device found itself behind in (see [`Self::rejoin`]).
    async fn catch_up_groups(
        &mut self,
        conn: &impl Link,
        report: &mut SyncReport,
    ) -> Result<(), EngineError> {
        let behind: Vec<Vec<u8>> = self
            .db
            .prepare("SELECT group_id FROM behind_groups")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for group_id in behind {
            let active = self
                .resolve_group(&group_hex(&group_id))
                .is_ok_and(|g| g.2 == STATE_ACTIVE);
            let result = match active {
                true => self.rejoin(conn, &group_id, report).await,
                false => Ok(false),
            };
            match result {
                Ok(_) => {
                    self.db
                        .execute("DELETE FROM behind_groups WHERE group_id = ?1", [&group_id])?;
                }
                Err(e) => report.problems.push(format!(
                    "could not rejoin a group this device fell behind in: {e}"
                )),
            }
        }
        Ok(())
    }

    /// Rejoins a group this device fell behind in, from the newest GroupInfo on the relay
    /// (signed by the member who made that epoch): an external commit that replaces this
    /// device's own old leaf, which members accept only for a device already in the group.
    /// The roster it joins is checked like a Welcome's, and never an epoch older than the
    /// one held. Returns whether it rejoined (false: it was not behind).
    pub(crate) async fn rejoin(
        &mut self,
        conn: &impl Link,
        group_id: &[u8],
        report: &mut SyncReport,
    ) -> Result<bool, EngineError> {
        let device = self.device()?;
        let signer = self.signer(&device)?;
        let credential = Self::credential(&device)?;
        let (bytes, relay_epoch) = match conn
            .request(&Request::GroupInfo {
                group_id: group_id.to_vec(),
            })
            .await
            .map_err(from_link)?
        {
            Response::GroupInfo { group_info, epoch } => (group_info, epoch),
            _ => {
                return Err(EngineError::Invalid(
                    "unexpected answer to GroupInfo".into(),
                ))
            }
        };
        let held = {
            let provider = Provider::new(&self.crypto, &self.db);
            load_group(&provider, group_id)?.epoch().as_u64()
        };
        if relay_epoch <= held {
            return Ok(false);
        }
        let MlsMessageBodyIn::GroupInfo(info) = MlsMessageIn::tls_deserialize_exact(&bytes)
            .map_err(EngineError::mls)?
            .extract()
        else {
            return Err(EngineError::Invalid(
                "the relay's GroupInfo is not one".into(),
            ));
        };
        if info.group_id().as_slice() != group_id || info.group_context().epoch().as_u64() <= held {
            return Err(EngineError::Invalid(
                "the relay's GroupInfo is for another group or an older epoch".into(),
            ));
        }
        let revoked = revoked_devices(&self.db)?;
        // Who signed it: it must be someone in the group as this device knew it.
        let held_group = {
            let provider = Provider::new(&self.crypto, &self.db);
            load_group(&provider, group_id)?
        };
        let signer_cert = held_group
            .members()
            .find(|m| {
                use openmls::ciphersuite::signable::Verifiable as _;
                use openmls::ciphersuite::signature::OpenMlsSignaturePublicKey;
                OpenMlsSignaturePublicKey::new(m.signature_key.clone().into(), SignatureScheme::ED25519)
                    .is_ok_and(|key| info.clone().verify(&self.crypto, &key).is_ok())
            })
            .ok_or_else(|| {
                EngineError::Invalid(
                    "the relay's GroupInfo is not signed by anyone in the group as this device knew it"
                        .into(),
                )
            })
            .and_then(|m| {
                // Its dates and roles are judged with its newest certificate, below.
                roster_member(&device.org, &m.credential, &m.signature_key)
                    .map_err(EngineError::Invalid)
            })?;
        let tx = self
            .db
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let provider = Provider::new(&self.crypto, &tx);
        let (group, bundle) = MlsGroup::external_commit_builder()
            .with_config(join_config())
            .build_group(&provider, info, credential)
            .map_err(EngineError::mls)?
            .leaf_node_parameters(
                LeafNodeParameters::builder()
                    .with_capabilities(leaf_capabilities())
                    .build(),
            )
            .load_psks(provider.storage())
            .map_err(EngineError::mls)?
            .build(provider.rand(), provider.crypto(), &signer, |_| true)
            .map_err(EngineError::mls)?
            .finalize(&provider)
            .map_err(EngineError::mls)?;
        let changes =
            catch_up_changes(&tx, &device, &held_group, &group, &signer_cert, &revoked)
                .map_err(|why| EngineError::Invalid(format!("not rejoining the group: {why}")))?;
        let (commit, _, group_info) = bundle.into_messages();
        let answer = conn
            .request(&Request::Commit {
                group_id: group_id.to_vec(),
                commit: mls_bytes(&commit)?,
                welcome: None,
                group_info: group_info.as_ref().map(mls_bytes).transpose()?,
            })
            .await;
        match answer {
            Ok(Response::Stored { seq }) => {
                tx.execute(
                    "INSERT OR IGNORE INTO own_handshakes (group_id, seq) VALUES (?1, ?2)",
                    params![group_id, seq as i64],
                )?;
                insert_system(
                    &tx,
                    group_id,
                    "this device had fallen behind the group (it refused or missed a change) and rejoined it; messages sent meanwhile are lost to it",
                    Some(order_key(seq, 0)),
                )?;
                for (i, change) in changes.iter().enumerate() {
                    insert_system(&tx, group_id, change, Some(order_key(seq, i + 1)))?;
                }
                tx.commit()?;
                self.member_counts.remove(group_id);
                report.problems.push(format!(
                    "rejoined group {} after falling behind",
                    group_hex(group_id)
                ));
                Ok(true)
            }
            Ok(_) => Err(EngineError::Invalid("unexpected answer to Commit".into())),
            Err(e) => Err(from_link(e)),
        }
    }

    /// Ids of the groups this device is an active member of.
    fn active_group_ids(&self) -> Result<Vec<Vec<u8>>, EngineError> {
        let mut stmt = self
            .db
            .prepare("SELECT group_id FROM groups WHERE state = 'active'")?;
        let ids = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ids)
    }

    fn group_view(&self, group_id: &[u8]) -> Result<GroupView, EngineError> {
        let (name, state, retain_secs, disappear_secs): (String, String, Option<i64>, Option<i64>) =
            self.db.query_row(
                "SELECT name, state, retain_secs, disappear_secs FROM groups WHERE group_id = ?1",
                [group_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )?;
        let view = view_of(&self.db, "group", &group_hex(group_id))?;
        let provider = Provider::new(&self.crypto, &self.db);
        let group = MlsGroup::load(provider.storage(), &GroupId::from_slice(group_id))
            .map_err(EngineError::mls)?;
        let (members, epoch) = match &group {
            Some(g) if state == STATE_ACTIVE => {
                let mut users: Vec<String> = g
                    .members()
                    .filter_map(|m| certificate_in(&m.credential))
                    .map(|c| c.body.user)
                    .collect();
                users.sort();
                users.dedup();
                (users, g.epoch().as_u64())
            }
            Some(g) => (Vec::new(), g.epoch().as_u64()),
            None => (Vec::new(), 0),
        };
        let archive_members = match &group {
            Some(g) if state == STATE_ACTIVE => archive_members(g, &self.device()?.org, &self.db)?,
            _ => Vec::new(),
        };
        Ok(GroupView {
            name,
            id: group_hex(group_id),
            members,
            epoch,
            state,
            managed: group.as_ref().is_some_and(|g| policy_of(g).managed),
            archived: group.as_ref().is_some_and(|g| policy_of(g).archived),
            archive_members,
            disappear_secs: disappear_secs.map(|v| v as u64),
            retain_secs: retain_secs.map(|v| v as u64),
            muted: view.muted,
            pinned: view.pinned,
            notify_level: view.level,
        })
    }

    /// Every group this device knows: pinned first, then oldest first.
    pub fn groups(&self) -> Result<Vec<GroupView>, EngineError> {
        let mut stmt = self
            .db
            .prepare("SELECT group_id FROM groups ORDER BY created_at, name")?;
        let ids = stmt
            .query_map([], |r| r.get::<_, Vec<u8>>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        let mut views = ids
            .iter()
            .map(|id| self.group_view(id))
            .collect::<Result<Vec<_>, _>>()?;
        views.sort_by_key(|g| !g.pinned);
        Ok(views)
    }

    /// Changes this user's view of a group: mute, pin, notification level.
    pub fn set_group_view(
        &self,
        group: &str,
        muted: Option<bool>,
        pinned: Option<bool>,
        level: Option<&str>,
    ) -> Result<GroupView, EngineError> {
        if let Some(level) = level {
            if !matches!(level, "all" | "mentions" | "alerts") {
                return Err(EngineError::Invalid(format!(
                    "notification level {level:?}: use all, mentions or alerts"
                )));
            }
        }
        let (group_id, _, _) = self.resolve_group(group)?;
        let target = group_hex(&group_id);
        self.db.execute(
            "INSERT OR IGNORE INTO view_settings (scope, target) VALUES ('group', ?1)",
            [&target],
        )?;
        self.db.execute(
            "UPDATE view_settings SET muted = COALESCE(?2, muted), pinned = COALESCE(?3, pinned),
                 level = COALESCE(?4, level) WHERE scope = 'group' AND target = ?1",
            params![target, muted, pinned, level],
        )?;
        self.group_view(&group_id)
    }

    /// Mutes (or unmutes) a person: their messages no longer notify; their alerts still do.
    pub fn set_user_muted(&self, user: &str, muted: bool) -> Result<(), EngineError> {
        validate_handle(user)?;
        self.db.execute(
            "INSERT INTO view_settings (scope, target, muted) VALUES ('user', ?1, ?2)
             ON CONFLICT (scope, target) DO UPDATE SET muted = excluded.muted",
            params![user, muted],
        )?;
        Ok(())
    }

    /// People this user muted.
    pub fn muted_users(&self) -> Result<Vec<String>, EngineError> {
        let mut stmt = self.db.prepare(
            "SELECT target FROM view_settings WHERE scope = 'user' AND muted = 1 ORDER BY target",
        )?;
        let users = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(users)
    }

    // ---- messages -----------------------------------------------------------------

    /// Encrypts `body` for the group and queues it in the outbox, in one transaction.
    fn enqueue(&mut self, group_id: &[u8], body: Body) -> Result<String, EngineError> {
        let device = self.device()?;
        if let Some(cert) = &device.certificate {
            cert.check_validity(now_unix()).map_err(|_| {
                EngineError::Invalid(format!(
                    "this device's certificate ran out at {}: members would refuse what it sends until an admin device renews it (it does when it next syncs)",
                    rfc3339_ms(cert.body.not_after as i64 * 1000)
                ))
            })?;
        }
        let signer = self.signer(&device)?;
        let envelope = Envelope::new(random_hex(16), now_ms(), body);
        let message_id = envelope.id.clone();
        let tx = self
            .db
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let provider = Provider::new(&self.crypto, &tx);
        let mut group = load_group(&provider, group_id)?;
        queue_in(&provider, &mut group, &signer, &device, envelope)?;
        tx.commit()?;
        Ok(message_id)
    }

    /// Encrypts a text message into the outbox, without touching the network. It is
    /// delivered by [`Engine::deliver`] or the next [`Engine::sync`], even after a crash.
    pub fn queue_text(&mut self, group: &str, text: &str) -> Result<QueuedMessage, EngineError> {
        self.queue_reply(group, text, None)
    }

    /// Like [`Engine::queue_text`], quoting message `reply_to` (an id or id prefix) of the same group.
    pub fn queue_reply(
        &mut self,
        group: &str,
        text: &str,
        reply_to: Option<&str>,
    ) -> Result<QueuedMessage, EngineError> {
        if text.trim().is_empty() {
            return Err(EngineError::Invalid("message is empty".into()));
        }
        if text.len() > MAX_TEXT_BYTES {
            return Err(EngineError::Invalid(format!(
                "message is {} bytes; the limit is {MAX_TEXT_BYTES}",
                text.len()
            )));
        }
        let (group_id, _) = self.active_group(group)?;
        let reply_to = match reply_to {
            Some(target) => {
                let (target_group, id) = self.find_message(target)?;
                if target_group != group_id {
                    return Err(EngineError::Invalid(format!(
                        "message {target} is in another group"
                    )));
                }
                Some(id)
            }
            None => None,
        };
        let id = self.enqueue(
            &group_id,
            Body::Text {
                text: text.to_string(),
                reply_to,
                mentions: mentions_in(text),
            },
        )?;
        Ok(QueuedMessage { group_id, id })
    }

    /// Finds a message by id or unique id prefix (at least 6 characters) in any group.
    fn find_message(&self, id: &str) -> Result<(Vec<u8>, String), EngineError> {
        let id = id.trim().to_ascii_lowercase();
        if id.len() < 6 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(EngineError::Invalid(format!(
                "{id:?} is not a message id (use at least 6 hex characters, as `read --json` shows)"
            )));
        }
        let mut stmt = self.db.prepare(
            "SELECT group_id, id FROM messages WHERE kind != 'system' AND id LIKE ?1 || '%' LIMIT 2",
        )?;
        let found = stmt
            .query_map([&id], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, String>(1)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        match found.len() {
            0 => Err(EngineError::Invalid(format!(
                "no message {id} on this device"
            ))),
            1 => Ok(found.into_iter().next().expect("one")),
            _ => Err(EngineError::Invalid(format!(
                "{id} matches several messages; give more of the id"
            ))),
        }
    }

    /// Finds one of this user's own messages of one of `kinds` that still has content.
    fn own_message(&self, id: &str, kinds: &[&str]) -> Result<(Vec<u8>, String), EngineError> {
        let (group_id, id) = self.find_message(id)?;
        let me = self.device()?;
        let (sender, kind, deleted): (String, String, bool) = self.db.query_row(
            "SELECT sender, kind, deleted FROM messages WHERE group_id = ?1 AND id = ?2",
            params![group_id, id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        if sender != me.user || !kinds.contains(&kind.as_str()) {
            return Err(EngineError::Invalid(format!(
                "message {id} is not yours: only its author can change it"
            )));
        }
        if deleted {
            return Err(EngineError::Invalid(format!("message {id} was deleted")));
        }
        let (_, name, state) = self.resolve_group(&group_hex(&group_id))?;
        if state != STATE_ACTIVE {
            return Err(EngineError::NotActive(name));
        }
        Ok((group_id, id))
    }

    /// Replaces the text of one of your messages for every member.
    pub fn queue_edit(&mut self, id: &str, text: &str) -> Result<QueuedMessage, EngineError> {
        if text.trim().is_empty() || text.len() > MAX_TEXT_BYTES {
            return Err(EngineError::Invalid(format!(
                "an edit must be 1 to {MAX_TEXT_BYTES} bytes"
            )));
        }
        let (group_id, target) = self.own_message(id, &["text"])?;
        let id = self.enqueue(
            &group_id,
            Body::Edit {
                target,
                text: text.to_string(),
            },
        )?;
        Ok(QueuedMessage { group_id, id })
    }

    /// Deletes one of your messages from every member's store.
    pub fn queue_delete(&mut self, id: &str) -> Result<QueuedMessage, EngineError> {
        let (group_id, target) = self.own_message(id, &["text", "alert", "attachment"])?;
        let id = self.enqueue(&group_id, Body::Delete { target })?;
        self.remove_doomed_files()?;
        self.purge_deleted()?;
        Ok(QueuedMessage { group_id, id })
    }

    /// Reacts to a message (or takes the reaction back).
    pub fn queue_reaction(
        &mut self,
        id: &str,
        emoji: &str,
        remove: bool,
    ) -> Result<QueuedMessage, EngineError> {
        let emoji = emoji.trim();
        if emoji.is_empty() || emoji.chars().count() > 8 {
            return Err(EngineError::Invalid(
                "a reaction is one emoji (at most 8 characters)".into(),
            ));
        }
        let (group_id, target) = self.find_message(id)?;
        let (_, name, state) = self.resolve_group(&group_hex(&group_id))?;
        if state != STATE_ACTIVE {
            return Err(EngineError::NotActive(name));
        }
        let id = self.enqueue(
            &group_id,
            Body::Reaction {
                target,
                emoji: emoji.to_string(),
                remove,
            },
        )?;
        Ok(QueuedMessage { group_id, id })
    }

    /// Encrypts a file with a fresh key, uploads the ciphertext to the relay in chunks, and
    /// queues the message that carries its key, hash, name, type and size to the group.
    pub async fn send_file(
        &mut self,
        conn: &impl Link,
        group: &str,
        path: &Path,
        caption: Option<&str>,
    ) -> Result<QueuedMessage, EngineError> {
        use std::io::Read as _;
        let (group_id, _) = self.active_group(group)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| EngineError::Invalid(format!("{} is not a file", path.display())))?;
        let mut file = std::fs::File::open(path)
            .map_err(|e| EngineError::Invalid(format!("cannot read {}: {e}", path.display())))?;
        let size = file.metadata()?.len();
        if size > MAX_ATTACHMENT {
            return Err(EngineError::Invalid(format!(
                "{name} is {:.1} MiB; attachments are limited to {} MiB",
                size as f64 / (1024.0 * 1024.0),
                MAX_ATTACHMENT / (1024 * 1024)
            )));
        }
        let mut key = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
            .expect("system randomness available");
        let blob_id = random_hex(16);
        let cipher = ChunkCipher::new(&key, &blob_id, size)
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        let total_size = encrypted_size(size);
        let mut plain_hash = ring::digest::Context::new(&ring::digest::SHA256);
        let mut blob_hash = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; ATTACHMENT_CHUNK];
        let mut offset = 0u64;
        for index in 0..crate::attachments::chunk_count(size) {
            let mut filled = 0;
            while filled < buf.len() {
                let n = file.read(&mut buf[filled..])?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            plain_hash.update(&buf[..filled]);
            let sealed = cipher.seal(index, &buf[..filled]);
            blob_hash.update(&sealed);
            conn.request(&Request::BlobPut {
                blob_id: blob_id.clone(),
                group_id: group_id.clone(),
                total_size,
                offset,
                data: sealed.clone(),
            })
            .await
            .map_err(from_link)?;
            offset += sealed.len() as u64;
        }
        if offset != total_size {
            return Err(EngineError::Invalid(format!(
                "{name} changed while it was being sent; try again"
            )));
        }
        let blob_sha256 = blob_hash.finish();
        conn.request(&Request::BlobComplete {
            blob_id: blob_id.clone(),
            sha256: blob_sha256.as_ref().to_vec(),
        })
        .await
        .map_err(from_link)?;
        let attachment = AttachmentRef {
            blob_id,
            key: hex::encode(key),
            blob_sha256: hex::encode(blob_sha256.as_ref()),
            sha256: hex::encode(plain_hash.finish().as_ref()),
            mime: mime_for(&name).to_string(),
            name,
            size,
        };
        let id = self.enqueue(
            &group_id,
            Body::Attachment {
                attachment,
                caption: caption.map(str::to_string),
            },
        )?;
        Ok(QueuedMessage { group_id, id })
    }

    /// Downloads an attachment, checks it against the hashes its message carries, decrypts
    /// it and writes it to `out` (default: its name in the current directory). Returns the path.
    pub async fn fetch_attachment(
        &mut self,
        conn: &impl Link,
        id: &str,
        out: Option<&Path>,
    ) -> Result<PathBuf, EngineError> {
        use std::io::Write as _;
        let (group_id, id) = self.find_message(id)?;
        let json: Option<String> = self.db.query_row(
            "SELECT attachment FROM messages WHERE group_id = ?1 AND id = ?2",
            params![group_id, id],
            |r| r.get(0),
        )?;
        let attachment: AttachmentRef = json
            .and_then(|j| serde_json::from_str(&j).ok())
            .ok_or_else(|| EngineError::Invalid(format!("message {id} has no attachment")))?;
        // Never let a sender's file name pick a path outside the current directory.
        let safe_name = Path::new(&attachment.name)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| !n.is_empty() && n != "." && n != "..")
            .unwrap_or_else(|| format!("attachment-{}", id.get(..8).unwrap_or("file")));
        let target = out
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(&safe_name));
        if target.exists() {
            return Err(EngineError::Invalid(format!(
                "{} already exists; choose another --out",
                target.display()
            )));
        }
        let key = hex::decode(&attachment.key)
            .map_err(|_| EngineError::Invalid("bad attachment key".into()))?;
        let cipher = ChunkCipher::new(&key, &attachment.blob_id, attachment.size)
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        let partial = target.with_extension("muster-partial");
        let result = async {
            let mut file = std::fs::File::create(&partial)?;
            let mut plain_hash = ring::digest::Context::new(&ring::digest::SHA256);
            let mut blob_hash = ring::digest::Context::new(&ring::digest::SHA256);
            let chunks = crate::attachments::chunk_count(attachment.size);
            let mut offset = 0u64;
            for index in 0..chunks {
                let plain_len = if index + 1 == chunks {
                    attachment.size - index * ATTACHMENT_CHUNK as u64
                } else {
                    ATTACHMENT_CHUNK as u64
                };
                let want = plain_len as usize + ATTACHMENT_CHUNK_OVERHEAD;
                let Response::BlobData { data, total_size } = conn
                    .request(&Request::BlobGet {
                        blob_id: attachment.blob_id.clone(),
                        offset,
                        max_len: want as u32,
                    })
                    .await
                    .map_err(from_link)?
                else {
                    return Err(EngineError::Invalid("unexpected answer to BlobGet".into()));
                };
                if total_size != encrypted_size(attachment.size) || data.len() != want {
                    return Err(EngineError::Invalid(
                        crate::attachments::AttachmentError::Tampered.to_string(),
                    ));
                }
                blob_hash.update(&data);
                let plain = cipher
                    .open(index, &data)
                    .map_err(|e| EngineError::Invalid(e.to_string()))?;
                plain_hash.update(&plain);
                file.write_all(&plain)?;
                offset += data.len() as u64;
            }
            if hex::encode(blob_hash.finish().as_ref()) != attachment.blob_sha256
                || hex::encode(plain_hash.finish().as_ref()) != attachment.sha256
            {
                return Err(EngineError::Invalid(
                    crate::attachments::AttachmentError::Tampered.to_string(),
                ));
            }
            file.sync_all()?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
        std::fs::rename(&partial, &target)?;
        let saved = std::fs::canonicalize(&target).unwrap_or(target.clone());
        self.db.execute(
            "UPDATE messages SET saved_to = ?3 WHERE group_id = ?1 AND id = ?2",
            params![group_id, id, saved.display().to_string()],
        )?;
        // Once every recipient has it, the relay deletes the blob.
        conn.request(&Request::BlobFetched {
            blob_id: attachment.blob_id.clone(),
        })
        .await
        .map_err(from_link)?;
        Ok(saved)
    }

    /// Queues an urgent alert for the group.
    pub fn queue_alert(
        &mut self,
        group: &str,
        text: &str,
        ack_required: bool,
    ) -> Result<QueuedMessage, EngineError> {
        if text.trim().is_empty() || text.len() > MAX_TEXT_BYTES {
            return Err(EngineError::Invalid(format!(
                "an alert must be 1 to {MAX_TEXT_BYTES} bytes"
            )));
        }
        let (group_id, _) = self.active_group(group)?;
        let id = self.enqueue(
            &group_id,
            Body::Alert {
                text: text.to_string(),
                ack_required,
            },
        )?;
        Ok(QueuedMessage { group_id, id })
    }

    /// Acknowledges an alert; the sender sees it in the roll-call.
    pub fn queue_ack(&mut self, id: &str) -> Result<QueuedMessage, EngineError> {
        let (group_id, target) = self.find_message(id)?;
        let me = self.device()?;
        let (kind, sender): (String, String) = self.db.query_row(
            "SELECT kind, sender FROM messages WHERE group_id = ?1 AND id = ?2",
            params![group_id, target],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        if kind != "alert" {
            return Err(EngineError::Invalid(format!(
                "message {target} is not an alert"
            )));
        }
        if sender == me.user {
            return Err(EngineError::Invalid("you sent this alert".into()));
        }
        let (_, name, state) = self.resolve_group(&group_hex(&group_id))?;
        if state != STATE_ACTIVE {
            return Err(EngineError::NotActive(name));
        }
        let id = self.enqueue(
            &group_id,
            Body::Ack {
                target: target.clone(),
            },
        )?;
        self.db.execute(
            "INSERT OR IGNORE INTO acks (group_id, message_id, user, at) VALUES (?1, ?2, ?3, ?4)",
            params![group_id, target, me.user, now_ms()],
        )?;
        Ok(QueuedMessage { group_id, id })
    }

    /// Who has and has not acknowledged an alert.
    pub fn rollcall(&self, id: &str) -> Result<Rollcall, EngineError> {
        let (group_id, target) = self.find_message(id)?;
        let alert = self.message_by_id(&group_id, &target)?;
        if alert.kind != "alert" {
            return Err(EngineError::Invalid(format!(
                "message {target} is not an alert"
            )));
        }
        let acks: Vec<(String, i64)> = {
            let mut stmt = self
                .db
                .prepare("SELECT user, at FROM acks WHERE group_id = ?1 AND message_id = ?2")?;
            let rows = stmt
                .query_map(params![group_id, target], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            rows
        };
        let members = self.group_view(&group_id)?.members;
        let mut entries: Vec<RollcallEntry> = members
            .into_iter()
            .filter(|u| *u != alert.sender)
            .map(|user| {
                let at = acks
                    .iter()
                    .find(|(u, _)| *u == user)
                    .map(|(_, at)| rfc3339_ms(*at));
                RollcallEntry { user, acked_at: at }
            })
            .collect();
        entries
            .sort_by(|a, b| (a.acked_at.is_none(), &a.user).cmp(&(b.acked_at.is_none(), &b.user)));
        Ok(Rollcall {
            acknowledged: entries.iter().filter(|e| e.acked_at.is_some()).count(),
            members: entries,
            alert,
        })
    }

    /// Alerts asking this user for an acknowledgement they have not given yet.
    pub fn unacknowledged_alerts(&self) -> Result<Vec<MessageView>, EngineError> {
        let me = self.device()?;
        self.query_messages(
            "WHERE m.kind = 'alert' AND m.ack_required = 1 AND m.deleted = 0 AND m.sender != ?1
               AND g.state = 'active'
               AND NOT EXISTS (SELECT 1 FROM acks a WHERE a.group_id = m.group_id AND a.message_id = m.id AND a.user = ?1)
             ORDER BY m.seq",
            params![me.user],
        )
    }

    /// Sets (or, with an empty value, clears) an entry of the group's situation board.
    pub fn queue_board_set(
        &mut self,
        group: &str,
        key: &str,
        value: &str,
    ) -> Result<QueuedMessage, EngineError> {
        let key = key.trim();
        if key.is_empty() || key.chars().count() > 64 {
            return Err(EngineError::Invalid(
                "a board key is 1-64 characters".into(),
            ));
        }
        if value.chars().count() > 1000 {
            return Err(EngineError::Invalid(
                "a board value is at most 1000 characters".into(),
            ));
        }
        let (group_id, _) = self.active_group(group)?;
        let id = self.enqueue(
            &group_id,
            Body::BoardSet {
                key: key.to_string(),
                value: value.to_string(),
            },
        )?;
        Ok(QueuedMessage { group_id, id })
    }

    /// A local setting of this device (such as `notify-command`).
    pub fn setting(&self, key: &str) -> Result<Option<String>, EngineError> {
        Ok(self
            .db
            .query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Sets (or, with `None`, removes) a local setting.
    pub fn set_setting(&self, key: &str, value: Option<&str>) -> Result<(), EngineError> {
        match value {
            Some(v) => self.db.execute(
                "INSERT INTO settings (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, v],
            )?,
            None => self
                .db
                .execute("DELETE FROM settings WHERE key = ?1", [key])?,
        };
        Ok(())
    }

    /// The group's situation board.
    pub fn board(&self, group: &str) -> Result<Vec<BoardEntry>, EngineError> {
        let (group_id, _, _) = self.resolve_group(group)?;
        conversation::board(&self.db, &group_id)
    }

    /// Queues read receipts for the given messages of others (and marks them read here).
    pub fn mark_read(&mut self, messages: &[MessageView]) -> Result<(), EngineError> {
        let mut by_group: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for m in messages {
            by_group
                .entry(m.group_id.clone())
                .or_default()
                .push(m.id.clone());
        }
        for (group_hex_id, ids) in by_group {
            let group_id = hex::decode(&group_hex_id)
                .map_err(|_| EngineError::Invalid("bad group id".into()))?;
            self.queue_receipts(&group_id, ReceiptKind::Read, Some(&ids))?;
        }
        Ok(())
    }

    /// Queues one receipt message for the group covering the due messages (only `only`, if given).
    fn queue_receipts(
        &mut self,
        group_id: &[u8],
        kind: ReceiptKind,
        only: Option<&[String]>,
    ) -> Result<(), EngineError> {
        let column = match kind {
            ReceiptKind::Delivered => "delivered_receipt_due",
            ReceiptKind::Read => "read_receipt_due",
        };
        if kind == ReceiptKind::Delivered && self.delivery_receipts_held(group_id)? {
            return Ok(());
        }
        // Grouped by author, so each author's share can be named in the receipt.
        let due: Vec<(String, String)> = {
            let mut stmt = self.db.prepare_cached(&format!(
                "SELECT id, sender FROM messages WHERE group_id = ?1 AND {column} = 1 ORDER BY sender, seq"
            ))?;
            let rows = stmt
                .query_map([group_id], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            rows
        };
        let targets: Vec<(String, String)> = due
            .into_iter()
            .filter(|(id, _)| only.is_none_or(|o| o.contains(id)))
            .collect();
        // The archive keeps what it receives but reads nothing: it sends no receipts.
        if targets.is_empty() || self.is_archive()? {
            return Ok(());
        }
        let (_, _, state) = self.resolve_group(&group_hex(group_id))?;
        if state != STATE_ACTIVE {
            return Ok(());
        }
        if kind == ReceiptKind::Delivered {
            self.db.execute(
                "INSERT INTO sync_state (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![delivery_receipts_key(group_id), now_ms()],
            )?;
        }
        for chunk in targets.chunks(500) {
            let mut authors: Vec<AuthorSpan> = Vec::new();
            for (_, sender) in chunk {
                match authors.last_mut() {
                    Some(span) if span.user == *sender => span.count += 1,
                    _ => authors.push(AuthorSpan {
                        user: sender.clone(),
                        count: 1,
                    }),
                }
            }
            let queued = self.enqueue(
                group_id,
                Body::Receipt {
                    kind,
                    targets: chunk.iter().map(|(id, _)| id.clone()).collect(),
                    authors,
                },
            );
            match queued {
                // Receipts wait, like everything else, until the archive is back.
                Err(EngineError::ArchiveMissing(_) | EngineError::UnremovedDevice { .. }) => {
                    return Ok(())
                }
                other => other?,
            };
            let tx = self
                .db
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            for (id, _) in chunk {
                tx.prepare_cached(&format!(
                    "UPDATE messages SET {column} = 0 WHERE group_id = ?1 AND id = ?2"
                ))?
                .execute(params![group_id, id])?;
                if kind == ReceiptKind::Read {
                    tx.prepare_cached(
                        "UPDATE messages SET delivered_receipt_due = 0 WHERE group_id = ?1 AND id = ?2",
                    )?
                    .execute(params![group_id, id])?;
                }
            }
            tx.commit()?;
        }
        Ok(())
    }

    /// Whether delivery receipts for this group must wait. Every receipt reaches every
    /// member, so in a large group one per message per member would grow with the square
    /// of its size: there each device sends them at most once per
    /// [`RECEIPT_BATCH_INTERVAL_MS`], covering everything that arrived meanwhile.
    fn delivery_receipts_held(&mut self, group_id: &[u8]) -> Result<bool, EngineError> {
        let members = match self.member_counts.get(group_id) {
            Some(&n) => n,
            None => {
                let provider = Provider::new(&self.crypto, &self.db);
                let n = load_group(&provider, group_id)?.members().count();
                self.member_counts.insert(group_id.to_vec(), n);
                n
            }
        };
        if members <= RECEIPT_BATCH_MEMBERS {
            return Ok(false);
        }
        let last: i64 = self
            .db
            .prepare_cached("SELECT value FROM sync_state WHERE key = ?1")?
            .query_row([delivery_receipts_key(group_id)], |r| r.get(0))
            .optional()?
            .unwrap_or(0);
        Ok(now_ms().saturating_sub(last) < RECEIPT_BATCH_INTERVAL_MS)
    }

    /// Deletes messages whose group's retention or disappearing time has passed.
    pub fn enforce_retention(&self) -> Result<usize, EngineError> {
        let deleted = conversation::enforce_retention(&self.db, now_ms())?;
        if deleted > 0 {
            self.purge_deleted()?;
        }
        Ok(deleted)
    }

    /// Sets how long every member's device keeps the group's messages: `disappear` after
    /// they are sent, or `retain` for a period; neither means no limit.
    pub fn queue_retention(
        &mut self,
        group: &str,
        retain_secs: Option<u64>,
        disappear_secs: Option<u64>,
    ) -> Result<QueuedMessage, EngineError> {
        if [retain_secs, disappear_secs]
            .into_iter()
            .flatten()
            .any(|s| s == 0 || s > crate::content::MAX_RETENTION_SECS)
        {
            return Err(EngineError::Invalid(format!(
                "a retention period must be 1 second to {} days",
                crate::content::MAX_RETENTION_SECS / 86_400
            )));
        }
        let (group_id, _) = self.active_group(group)?;
        self.check_may_manage(&group_id, "change how long messages are kept")?;
        let id = self.enqueue(
            &group_id,
            Body::Retention {
                retain_secs,
                disappear_secs,
            },
        )?;
        Ok(QueuedMessage { group_id, id })
    }

    /// Sends everything in the outbox.
    pub async fn flush(&mut self, conn: &impl Link) -> Result<SyncReport, EngineError> {
        let mut report = SyncReport::default();
        self.flush_outbox(conn, &mut report).await?;
        Ok(report)
    }

    /// Removes the saved copies of deleted attachments that lie inside this device's own
    /// folder; a copy the user saved elsewhere is theirs to keep.
    fn remove_doomed_files(&self) -> Result<(), EngineError> {
        let home = std::fs::canonicalize(&self.home).unwrap_or_else(|_| self.home.clone());
        for path in conversation::take_doomed_files(&self.db)? {
            let path = PathBuf::from(path);
            let inside = std::fs::canonicalize(&path).is_ok_and(|p| p.starts_with(&home));
            if inside {
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(error = %e, "could not remove a deleted attachment's copy");
                }
            }
        }
        Ok(())
    }

    /// Rewrites the database so deleted message content leaves no copy in the write-ahead log.
    fn purge_deleted(&self) -> Result<(), EngineError> {
        self.db
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }

    /// Sends the outbox up to and including `queued`; succeeds once the relay has durably stored it.
    pub async fn deliver(
        &mut self,
        conn: &impl Link,
        queued: &QueuedMessage,
    ) -> Result<(), EngineError> {
        let mut report = SyncReport::default();
        self.flush_outbox(conn, &mut report).await?;
        let pending = self
            .db
            .query_row(
                "SELECT 1 FROM outbox WHERE message_id = ?1",
                [&queued.id],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        // Problems with other queued messages or groups are not this message's.
        let failed = self
            .db
            .query_row(
                "SELECT status = 'failed' FROM messages WHERE group_id = ?1 AND id = ?2",
                params![queued.group_id, queued.id],
                |r| r.get::<_, bool>(0),
            )
            .optional()?
            .unwrap_or(false);
        if pending || failed {
            return Err(EngineError::Invalid(format!(
                "message was not delivered: {}",
                report.problems.join("; ")
            )));
        }
        Ok(())
    }

    /// Queues and delivers a text message.
    pub async fn send_text(
        &mut self,
        conn: &impl Link,
        group: &str,
        text: &str,
    ) -> Result<MessageView, EngineError> {
        let queued = self.queue_text(group, text)?;
        self.deliver(conn, &queued).await?;
        self.message_by_id(&queued.group_id, &queued.id)
    }

    /// Re-encrypts an outbox entry for the group's current epoch.
    fn reencrypt(&mut self, client_id: &[u8]) -> Result<(), EngineError> {
        let device = self.device()?;
        let signer = self.signer(&device)?;
        let tx = self
            .db
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (group_id, envelope): (Vec<u8>, Vec<u8>) = tx.query_row(
            "SELECT group_id, envelope FROM outbox WHERE client_id = ?1",
            [client_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let provider = Provider::new(&self.crypto, &tx);
        let mut group = load_group(&provider, &group_id)?;
        let ciphertext = group
            .create_message(&provider, &signer, &envelope)
            .map_err(EngineError::mls)?;
        tx.execute(
            "UPDATE outbox SET ciphertext = ?2 WHERE client_id = ?1",
            params![client_id, mls_bytes(&ciphertext)?],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Sends everything queued in the outbox, oldest first.
    async fn flush_outbox(
        &mut self,
        conn: &impl Link,
        report: &mut SyncReport,
    ) -> Result<(), EngineError> {
        // Groups whose messages wait: they hold a device still to be removed, or this
        // device could not catch up with them. Other groups' messages go on.
        let mut held_back: HashSet<Vec<u8>> = HashSet::new();
        let mut groups: HashMap<Vec<u8>, OutboxGroup> = HashMap::new();
        let own_device = self.device()?.device_id;
        loop {
            let next: Option<OutboxEntry> = {
                let mut stmt = self.db.prepare_cached(
                    "SELECT client_id, group_id, message_id, ciphertext FROM outbox ORDER BY position",
                )?;
                let mut rows = stmt.query([])?;
                let mut found = None;
                while let Some(r) = rows.next()? {
                    let group_id: Vec<u8> = r.get(1)?;
                    if !held_back.contains(&group_id) {
                        found = Some((r.get(0)?, group_id, r.get(2)?, r.get(3)?));
                        break;
                    }
                }
                found
            };
            let Some((client_id, group_id, message_id, ciphertext)) = next else {
                return Ok(());
            };
            let group = match groups.get(&group_id) {
                Some(group) => group.clone(),
                None => {
                    let group = self.outbox_group(&group_id, &own_device)?;
                    groups.insert(group_id.clone(), group.clone());
                    group
                }
            };
            let mut ciphertext = ciphertext;
            match group {
                OutboxGroup::Gone => {
                    self.fail_outbox(
                        &client_id,
                        &group_id,
                        &message_id,
                        "you are no longer in the group",
                        report,
                    )?;
                    continue;
                }
                OutboxGroup::HoldsUnremoved(user) => {
                    report.problems.push(
                        EngineError::UnremovedDevice {
                            group: self.group_label(&group_id),
                            user,
                        }
                        .to_string(),
                    );
                    held_back.insert(group_id);
                    continue;
                }
                // Encrypted at an earlier epoch (queued before a removal, say): the bytes
                // never leave in that form, where a removed device could read them.
                OutboxGroup::Ready { epoch } if ciphertext_epoch(&ciphertext) != Some(epoch) => {
                    self.reencrypt(&client_id)?;
                    ciphertext = self.db.query_row(
                        "SELECT ciphertext FROM outbox WHERE client_id = ?1",
                        [&client_id],
                        |r| r.get(0),
                    )?;
                }
                OutboxGroup::Ready { .. } => {}
            }
            let mut attempts = 0;
            loop {
                attempts += 1;
                let result = conn
                    .request(&Request::Send {
                        group_id: group_id.clone(),
                        message: ciphertext.clone(),
                        client_id: client_id.clone(),
                    })
                    .await;
                match result {
                    Ok(Response::Stored { seq }) => {
                        let tx = self
                            .db
                            .transaction_with_behavior(TransactionBehavior::Immediate)?;
                        tx.execute("DELETE FROM outbox WHERE client_id = ?1", [&client_id])?;
                        tx.execute(
                            "UPDATE board_log SET seq = ?3 WHERE group_id = ?1 AND message_id = ?2",
                            params![group_id, message_id, seq as i64],
                        )?;
                        conversation::forget_cleared_board_values(&tx, &group_id, &message_id)?;
                        tx.execute(
                            "UPDATE messages SET status = 'sent', relay_seq = ?3, sort_key = ?4 WHERE group_id = ?1 AND id = ?2",
                            params![group_id, message_id, seq as i64, order_key(seq, 0)],
                        )?;
                        tx.commit()?;
                        report.sent += 1;
                        break;
                    }
                    Err(LinkError::Refused(e))
                        if matches!(e.code, ErrorCode::EpochMoved { .. })
                            && attempts < MAX_COMMIT_ATTEMPTS =>
                    {
                        self.fetch_and_process(conn, report).await?;
                        // Any group may have moved on (a removal, say): look at each afresh.
                        groups.clear();
                        if let ErrorCode::EpochMoved { current } = e.code {
                            // A group this device cannot catch up with keeps its messages
                            // queued (the next sync tries again); the others still go.
                            if let Err(e) = self.catch_up(conn, &group_id, current, report).await {
                                report.problems.push(format!(
                                    "messages to {} stay queued: could not catch up with the group: {e}",
                                    self.group_label(&group_id)
                                ));
                                self.db.execute(
                                    "INSERT OR IGNORE INTO behind_groups (group_id) VALUES (?1)",
                                    [&group_id],
                                )?;
                                held_back.insert(group_id.clone());
                                break;
                            }
                        }
                        // The group moved on: look at it afresh.
                        let group = self.outbox_group(&group_id, &own_device)?;
                        groups.insert(group_id.clone(), group.clone());
                        match group {
                            OutboxGroup::Gone => {
                                self.fail_outbox(
                                    &client_id,
                                    &group_id,
                                    &message_id,
                                    "you are no longer in the group",
                                    report,
                                )?;
                                break;
                            }
                            // Held back at the top of the outer loop.
                            OutboxGroup::HoldsUnremoved(_) => break,
                            OutboxGroup::Ready { .. } => {}
                        }
                        self.reencrypt(&client_id)?;
                        ciphertext = self.db.query_row(
                            "SELECT ciphertext FROM outbox WHERE client_id = ?1",
                            [&client_id],
                            |r| r.get(0),
                        )?;
                    }
                    Err(LinkError::Refused(e))
                        if e.code == ErrorCode::RateLimited && attempts < MAX_COMMIT_ATTEMPTS =>
                    {
                        // The message stays queued; the relay asked us to slow down.
                        conn.pause(std::time::Duration::from_secs(1)).await;
                    }
                    Err(LinkError::Refused(e)) if e.code == ErrorCode::QuotaExceeded => {
                        // Everything queued stays, in order, until recipients catch up.
                        let waiting: i64 =
                            self.db
                                .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))?;
                        report.problems.push(format!(
                            "{waiting} message(s) stay in the outbox: {}",
                            e.message
                        ));
                        return Ok(());
                    }
                    Err(LinkError::Refused(e)) => {
                        self.fail_outbox(&client_id, &group_id, &message_id, &e.message, report)?;
                        break;
                    }
                    Ok(_) => return Err(EngineError::Invalid("unexpected answer to Send".into())),
                    Err(e) => return Err(EngineError::Link(e)),
                }
            }
        }
    }

    /// Where messages queued for a group stand.
    fn outbox_group(&self, group_id: &[u8], own_device: &str) -> Result<OutboxGroup, EngineError> {
        let active = self
            .resolve_group(&group_hex(group_id))
            .is_ok_and(|g| g.2 == STATE_ACTIVE);
        if !active {
            return Ok(OutboxGroup::Gone);
        }
        let provider = Provider::new(&self.crypto, &self.db);
        let group = load_group(&provider, group_id)?;
        Ok(match unremoved_device(&group, &self.db, own_device)? {
            Some(user) => OutboxGroup::HoldsUnremoved(user),
            None => OutboxGroup::Ready {
                epoch: group.epoch().as_u64(),
            },
        })
    }

    fn group_label(&self, group_id: &[u8]) -> String {
        group_label(&self.db, group_id)
    }

    fn fail_outbox(
        &mut self,
        client_id: &[u8],
        group_id: &[u8],
        message_id: &str,
        why: &str,
        report: &mut SyncReport,
    ) -> Result<(), EngineError> {
        let tx = self
            .db
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("DELETE FROM outbox WHERE client_id = ?1", [client_id])?;
        tx.execute(
            "UPDATE messages SET status = 'failed' WHERE group_id = ?1 AND id = ?2",
            params![group_id, message_id],
        )?;
        tx.commit()?;
        report.problems.push(format!("message not sent: {why}"));
        Ok(())
    }

    fn message_by_id(&self, group_id: &[u8], id: &str) -> Result<MessageView, EngineError> {
        let rows =
            self.query_messages("WHERE m.group_id = ?1 AND m.id = ?2", params![group_id, id])?;
        rows.into_iter()
            .next()
            .ok_or_else(|| EngineError::Invalid(format!("no message {id}")))
    }

    fn query_messages(
        &self,
        filter: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<MessageView>, EngineError> {
        let sql = format!(
            "SELECT m.seq, m.id, g.name, m.group_id, m.kind, m.sender, m.sender_device, m.body, m.sent_at, m.received_at, m.status,
                    m.reply_to, m.mentions, m.edited_at IS NOT NULL, m.deleted, m.ack_required,
                    m.attachment, m.saved_to
             FROM messages m JOIN groups g ON g.group_id = m.group_id {filter}"
        );
        let mut stmt = self.db.prepare(&sql)?;
        let rows = stmt
            .query_map(params, |r| {
                Ok(MessageView {
                    local_seq: r.get(0)?,
                    id: r.get(1)?,
                    group: r.get(2)?,
                    group_id: group_hex(&r.get::<_, Vec<u8>>(3)?),
                    kind: r.get(4)?,
                    sender: r.get(5)?,
                    sender_device: r.get(6)?,
                    text: r.get(7)?,
                    sent_at: rfc3339_ms(r.get(8)?),
                    received_at: rfc3339_ms(r.get(9)?),
                    status: r.get(10)?,
                    reply_to: r.get(11)?,
                    mentions: serde_json::from_str(&r.get::<_, String>(12)?).unwrap_or_default(),
                    edited: r.get(13)?,
                    deleted: r.get(14)?,
                    reactions: Default::default(),
                    read_by: Vec::new(),
                    delivered_to: Vec::new(),
                    audience: 0,
                    ack_required: r.get(15)?,
                    acked_by: Vec::new(),
                    attachment: r
                        .get::<_, Option<String>>(16)?
                        .and_then(|a| serde_json::from_str::<AttachmentRef>(&a).ok())
                        .map(|a| AttachmentView {
                            name: a.name,
                            mime: a.mime,
                            size: a.size,
                            sha256: a.sha256,
                            saved_to: None,
                        }),
                })
                .map(|mut view| {
                    if let Some(a) = view.attachment.as_mut() {
                        a.saved_to = r.get(17).ok().flatten();
                    }
                    view
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut rows = rows;
        let mut audiences: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for m in rows.iter_mut().filter(|m| m.kind != "system") {
            let group_id = hex::decode(&m.group_id).unwrap_or_default();
            let d = conversation::decorations(&self.db, &group_id, &m.id)?;
            m.reactions = d.reactions;
            m.read_by = d.read_by;
            m.delivered_to = d.delivered_to;
            m.acked_by = d.acked_by;
            if !audiences.contains_key(&m.group_id) {
                let members = self
                    .group_view(&group_id)
                    .map(|g| g.members)
                    .unwrap_or_default();
                audiences.insert(m.group_id.clone(), members);
            }
            m.audience = audiences[&m.group_id]
                .iter()
                .filter(|u| **u != m.sender)
                .count();
        }
        Ok(rows)
    }

    /// The latest `limit` messages of a group, oldest first.
    pub fn read(&self, group: &str, limit: usize) -> Result<Vec<MessageView>, EngineError> {
        let (group_id, _, _) = self.resolve_group(group)?;
        // Messages still on their way to the relay (no sort key yet) come last; each half
        // is read newest first along an index, so the cost does not grow with history.
        let mut rows = self.query_messages(
            "WHERE m.group_id = ?1 AND m.sort_key IS NULL ORDER BY m.seq DESC LIMIT ?2",
            params![group_id, limit as i64],
        )?;
        if rows.len() < limit {
            rows.extend(self.query_messages(
                "WHERE m.group_id = ?1 AND m.sort_key IS NOT NULL
                 ORDER BY m.sort_key DESC, m.seq DESC LIMIT ?2",
                params![group_id, (limit - rows.len()) as i64],
            )?);
        }
        rows.reverse();
        Ok(rows)
    }

    /// Full-text search over this device's own messages, newest first.
    pub fn search(
        &self,
        query: &str,
        group: Option<&str>,
        limit: usize,
    ) -> Result<Vec<MessageView>, EngineError> {
        // Every word is matched literally (as a prefix), so user input is never FTS syntax.
        let terms: Vec<String> = query
            .split_whitespace()
            .map(|w| format!("\"{}\"*", w.replace('"', "\"\"")))
            .collect();
        if terms.is_empty() {
            return Err(EngineError::Invalid("search for at least one word".into()));
        }
        let fts_query = terms.join(" ");
        let group_id = group
            .map(|g| self.resolve_group(g).map(|g| g.0))
            .transpose()?;
        self.query_messages(
            "JOIN messages_fts ON messages_fts.rowid = m.seq
             WHERE messages_fts MATCH ?1 AND m.deleted = 0 AND (?2 IS NULL OR m.group_id = ?2)
             ORDER BY messages_fts.rowid DESC LIMIT ?3",
            params![fts_query, group_id, limit as i64],
        )
    }

    /// Messages of a group stored after local position `after`, oldest first.
    pub fn messages_after(&self, group: &str, after: i64) -> Result<Vec<MessageView>, EngineError> {
        let (group_id, _, _) = self.resolve_group(group)?;
        self.query_messages(
            "WHERE m.group_id = ?1 AND m.seq > ?2 ORDER BY m.sort_key IS NULL, m.sort_key, m.seq",
            params![group_id, after],
        )
    }

    // ---- sync ---------------------------------------------------------------------

    /// Fetches and processes everything waiting, sends the outbox, and commits
    /// proposals other members made (such as someone leaving).
    pub async fn sync(&mut self, conn: &impl Link) -> Result<SyncReport, EngineError> {
        let mut report = SyncReport::default();
        self.fetch_and_process(conn, &mut report).await?;
        // Rejoining judges what changed meanwhile by the revocations known now.
        self.learn_revocations(conn, &mut report).await?;
        self.catch_up_groups(conn, &mut report).await?;
        self.enforce_retention()?;
        self.apply_revocations(conn, &mut report).await?;
        self.renew_certificates(conn, &mut report).await?;
        self.update_own_leaves(conn, &mut report).await?;
        self.approve_confirmed_devices(conn, &mut report).await?;
        self.collect_archive_checkpoints(conn, &mut report).await?;
        self.add_own_devices(conn, &mut report).await?;
        for group_id in self.active_group_ids()? {
            self.queue_receipts(&group_id, ReceiptKind::Delivered, None)?;
        }
        self.flush_outbox(conn, &mut report).await?;
        self.commit_pending_proposals(conn, &mut report).await?;
        if self.is_archive()? {
            self.archive_publish(conn).await?;
        }
        Ok(report)
    }

    /// Learns new revocations from the relay and removes revoked devices from every
    /// group this device is in. The relay's epoch ordering keeps it to one commit per group.
    async fn apply_revocations(
        &mut self,
        conn: &impl Link,
        report: &mut SyncReport,
    ) -> Result<(), EngineError> {
        self.learn_revocations(conn, report).await?;
        if let Some(gap) = self.withheld_revocations()? {
            report.problems.push(gap);
        }
        self.remove_revoked_devices(conn, report).await
    }

    /// The organisation's revocations are numbered 1, 2, ...: a number this device never
    /// received although a later one arrived was withheld by the relay.
    fn withheld_revocations(&self) -> Result<Option<String>, EngineError> {
        let seen: Vec<i64> = self
            .db
            .prepare_cached("SELECT serial FROM revocation_serials ORDER BY serial")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let Some(&last) = seen.last() else {
            return Ok(None);
        };
        let missing: Vec<String> = (1..last)
            .filter(|n| seen.binary_search(n).is_err())
            .take(10)
            .map(|n| n.to_string())
            .collect();
        Ok((!missing.is_empty()).then(|| {
            format!(
                "the relay withholds revocation number {} of the organisation's {last}: devices it cuts off may still be trusted here",
                missing.join(", ")
            )
        }))
    }

    /// The highest revocation number this device has seen.
    pub(crate) fn last_revocation_serial(&self) -> Result<u64, EngineError> {
        let last: Option<i64> =
            self.db
                .query_row("SELECT MAX(serial) FROM revocation_serials", [], |r| {
                    r.get(0)
                })?;
        Ok(last.unwrap_or(0) as u64)
    }

    /// Fetches and stores revocations this device has not seen yet.
    pub(crate) async fn learn_revocations(
        &mut self,
        conn: &impl Link,
        report: &mut SyncReport,
    ) -> Result<(), EngineError> {
        let org = self.device()?.org;
        loop {
            let since: i64 = self
                .db
                .query_row(
                    "SELECT value FROM sync_state WHERE key = 'revocations'",
                    [],
                    |r| r.get(0),
                )
                .optional()?
                .unwrap_or(0);
            let Response::Revocations(list) = conn
                .request(&Request::Revocations {
                    since: since as u64,
                })
                .await
                .map_err(from_link)?
            else {
                return Err(EngineError::Invalid(
                    "unexpected answer to Revocations".into(),
                ));
            };
            if list.is_empty() {
                break;
            }
            let tx = self
                .db
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            for (position, revocation) in &list {
                match revocation.verify(&org) {
                    Ok(()) => {
                        for device in &revocation.body.device_ids {
                            tx.execute(
                                "INSERT OR IGNORE INTO revoked_devices (device_id, user) VALUES (?1, ?2)",
                                params![device, revocation.body.user],
                            )?;
                        }
                        if revocation.body.serial > 0 {
                            tx.execute(
                                "INSERT OR IGNORE INTO revocation_serials (serial) VALUES (?1)",
                                [revocation.body.serial as i64],
                            )?;
                        }
                    }
                    Err(e) => report
                        .problems
                        .push(format!("ignored a revocation that does not verify: {e}")),
                }
                tx.execute(
                    "INSERT INTO sync_state (key, value) VALUES ('revocations', ?1)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    [*position as i64],
                )?;
            }
            tx.commit()?;
        }
        Ok(())
    }

    /// Removes every revoked device from each group this device is in.
    async fn remove_revoked_devices(
        &mut self,
        conn: &impl Link,
        report: &mut SyncReport,
    ) -> Result<(), EngineError> {
        let revoked: HashSet<String> = revoked_devices(&self.db)?;
        self.lapse_check(conn).await?;
        let lapsed = lapsed_devices(&self.db)?;
        if revoked.is_empty() && lapsed.is_empty() {
            return Ok(());
        }
        let groups = self.active_group_ids()?;
        let now = now_unix();
        let is_revoked = |c: &Certificate| {
            revoked.contains(&c.body.device_id)
                || (lapsed.contains(&c.body.device_id) && muster_rules::lapsed(c, now))
        };
        for group_id in groups {
            let affected = {
                let provider = Provider::new(&self.crypto, &self.db);
                !leaves_where(&load_group(&provider, &group_id)?, is_revoked).is_empty()
            };
            if !affected {
                continue;
            }
            let result = self.remove_members_where(conn, &group_id, is_revoked).await;
            if let Err(e) = result {
                report.problems.push(format!(
                    "could not remove revoked devices from a group: {e}"
                ));
                // A lapsed device may have been renewed meanwhile: look again next time.
                lapse_check_due(&self.db)?;
            }
        }
        Ok(())
    }

    /// Records the devices in this device's groups whose certificate ran out and that
    /// hold no valid certificate any more (admin devices renew every device they have not
    /// revoked, so these were revoked, or given up): they are removed like revoked ones,
    /// even where the relay hides their revocation. The groups are looked at when the
    /// earliest certificate among their members has run out, and at least every ten
    /// minutes.
    async fn lapse_check(&mut self, conn: &impl Link) -> Result<(), EngineError> {
        let now = now_unix();
        let next: i64 = self
            .db
            .query_row(
                "SELECT value FROM sync_state WHERE key = 'next_lapse_check'",
                [],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0);
        if (now as i64) < next {
            return Ok(());
        }
        let mut lapsed = HashSet::new();
        let mut earliest = now + LAPSE_CHECK_SECS;
        for group_id in self.active_group_ids()? {
            let provider = Provider::new(&self.crypto, &self.db);
            for member in load_group(&provider, &group_id)?.members() {
                if let Some(cert) = certificate_in(&member.credential) {
                    if muster_rules::lapsed(&cert, now) {
                        lapsed.insert(cert.body.device_id);
                    } else {
                        earliest = earliest
                            .min(cert.body.not_after + muster_rules::lapse_grace(&cert) + 1);
                    }
                }
            }
        }
        if !lapsed.is_empty() {
            // A device whose renewed certificate is waiting for it is not lapsed.
            let renewed: HashSet<String> = self
                .certificates(conn)
                .await?
                .into_iter()
                .filter(|c| c.check_validity(now).is_ok())
                .map(|c| c.body.device_id)
                .collect();
            let me = self.device()?.device_id;
            lapsed.retain(|d| !renewed.contains(d) && *d != me);
        }
        let tx = self.db.transaction()?;
        tx.execute("DELETE FROM lapsed_devices", [])?;
        for device_id in &lapsed {
            tx.execute(
                "INSERT INTO lapsed_devices (device_id) VALUES (?1)",
                [device_id],
            )?;
        }
        tx.commit()?;
        self.db.execute(
            "INSERT INTO sync_state (key, value) VALUES ('next_lapse_check', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [earliest as i64],
        )?;
        Ok(())
    }

    async fn commit_pending_proposals(
        &mut self,
        conn: &impl Link,
        report: &mut SyncReport,
    ) -> Result<(), EngineError> {
        // Usually no group has any: skip reading every group's state to find that out.
        // (openmls_sqlite_storage keeps queued proposals in this table.)
        let any_queued: bool =
            self.db
                .query_row("SELECT EXISTS (SELECT 1 FROM openmls_proposals)", [], |r| {
                    r.get(0)
                })?;
        if !any_queued {
            return Ok(());
        }
        let groups = self.active_group_ids()?;
        for group_id in groups {
            let has_pending = {
                let provider = Provider::new(&self.crypto, &self.db);
                load_group(&provider, &group_id)?.has_pending_proposals()
            };
            if !has_pending {
                continue;
            }
            let result = self
                .run_commit(conn, &group_id, |group, provider, signer| {
                    if !group.has_pending_proposals() {
                        return Ok(None);
                    }
                    let (commit, welcome, info) = group
                        .commit_to_pending_proposals(provider, signer)
                        .map_err(EngineError::mls)?;
                    Ok(Some(CommitParts::new(commit, welcome, info)))
                })
                .await;
            if let Err(e) = result {
                report
                    .problems
                    .push(format!("could not commit pending proposals: {e}"));
            }
        }
        Ok(())
    }

    async fn fetch_and_process(
        &mut self,
        conn: &impl Link,
        report: &mut SyncReport,
    ) -> Result<(), EngineError> {
        loop {
            let deliveries = match conn
                .request(&Request::Fetch { limit: FETCH_BATCH })
                .await
                .map_err(from_link)?
            {
                Response::Deliveries(d) => d,
                _ => return Err(EngineError::Invalid("unexpected answer to Fetch".into())),
            };
            if deliveries.is_empty() {
                return Ok(());
            }
            let full_batch = deliveries.len() >= FETCH_BATCH as usize;
            // Commits in this batch may remove devices revoked since the last look; learn
            // of those revocations before judging the commits.
            self.learn_revocations(conn, report).await?;
            let acks = self.process_batch(deliveries, report)?;
            conn.request(&Request::Ack { items: acks })
                .await
                .map_err(from_link)?;
            // A shorter batch was everything waiting; whatever arrives later wakes us again.
            if !full_batch {
                return Ok(());
            }
        }
    }

    /// Processes one fetched batch in a single store transaction (one disk flush), reading
    /// each group's MLS state once. Returns the acknowledgements to send once it is stored.
    fn process_batch(
        &mut self,
        deliveries: Vec<Delivery>,
        report: &mut SyncReport,
    ) -> Result<Vec<AckItem>, EngineError> {
        let device = self.device()?;
        let signer = self.signer(&device)?;
        let mut acks = Vec::with_capacity(deliveries.len());
        let mut loaded = LoadedGroups::new();
        let revoked = revoked_devices(&self.db)?;
        let mut purge = false;
        let mut tx = self
            .db
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        for delivery in deliveries {
            match delivery {
                Delivery::Welcome {
                    id,
                    group_id,
                    welcome,
                } => {
                    loaded.remove(&group_id);
                    process_welcome(&self.crypto, &mut tx, &device, &group_id, &welcome, report)?;
                    acks.push(AckItem::Welcome { id });
                }
                Delivery::Group {
                    group_id,
                    seq,
                    message,
                } => {
                    let context = BatchContext {
                        crypto: &self.crypto,
                        tx: &tx,
                        device: &device,
                        signer: &signer,
                        revoked: &revoked,
                    };
                    purge |= process_group_message(
                        &context,
                        &mut loaded,
                        &mut self.verified_certificates,
                        &group_id,
                        seq,
                        &message,
                        report,
                    )?;
                    acks.push(AckItem::Group { group_id, seq });
                }
            }
        }
        if device.certificate.as_ref().is_some_and(|c| c.is_archive()) {
            archive::checkpoint(&tx, now_ms(), |payload| {
                signer
                    .sign(payload)
                    .map_err(|e| EngineError::Mls(format!("{e:?}")))
            })?;
        }
        tx.commit()?;
        for (group_id, group) in &loaded {
            self.member_counts
                .insert(group_id.clone(), group.members().count());
        }
        if purge {
            self.remove_doomed_files()?;
            self.purge_deleted()?;
        }
        Ok(acks)
    }
}

/// Certificates whose organisation signature this device has already checked, so that
/// each is verified once instead of on every message; dates are checked every time.
#[derive(Default)]
struct VerifiedCertificates(HashSet<Vec<u8>>);

impl VerifiedCertificates {
    /// Checks the certificate's issuer (once) and, given a time, its dates.
    fn verify(
        &mut self,
        cert: &Certificate,
        org: &OrgDescriptor,
        now: Option<u64>,
    ) -> Result<(), muster_proto::identity::CertError> {
        let key = sha256(&cert.to_bytes());
        if !self.0.contains(&key) {
            cert.verify_issuer(org)?;
            self.0.insert(key);
        }
        match now {
            Some(now) => cert.check_validity(now),
            None => Ok(()),
        }
    }
}

/// Processes one group message as the device `device` would receive it, inside `tx`,
/// for the fuzz targets; returns what the device would report.
#[cfg(feature = "fuzzing")]
pub(crate) fn receive_for_fuzzing(
    crypto: &RustCrypto,
    tx: &Connection,
    device: &DeviceRow,
    signer: &SignatureKeyPair,
    group_id: &[u8],
    seq: u64,
    bytes: &[u8],
) -> SyncReport {
    let revoked = revoked_devices(tx).unwrap_or_default();
    let context = BatchContext {
        crypto,
        tx,
        device,
        signer,
        revoked: &revoked,
    };
    let mut report = SyncReport::default();
    let _ = process_group_message(
        &context,
        &mut LoadedGroups::new(),
        &mut VerifiedCertificates::default(),
        group_id,
        seq,
        bytes,
        &mut report,
    );
    report
}

/// Opens a Welcome as the device `device` would, inside `tx`, for the fuzz targets.
#[cfg(feature = "fuzzing")]
pub(crate) fn welcome_for_fuzzing(
    crypto: &RustCrypto,
    tx: &mut rusqlite::Transaction<'_>,
    device: &DeviceRow,
    group_id: &[u8],
    bytes: &[u8],
) -> SyncReport {
    let mut report = SyncReport::default();
    let _ = process_welcome(crypto, tx, device, group_id, bytes, &mut report);
    report
}

/// MLS groups read while processing one fetched batch, so that each is decoded from the
/// store once per batch instead of once per message. Dropped when the batch ends.
type LoadedGroups = HashMap<Vec<u8>, MlsGroup>;

/// What processing one fetched batch shares: the open transaction and this device.
struct BatchContext<'a> {
    crypto: &'a RustCrypto,
    tx: &'a Connection,
    device: &'a DeviceRow,
    signer: &'a SignatureKeyPair,
    /// Devices this device knows to be revoked.
    revoked: &'a HashSet<String>,
}

/// Joins the group a Welcome invites this device to, inside the batch's transaction; a
/// rejected Welcome leaves nothing behind.
fn process_welcome(
    crypto: &RustCrypto,
    batch: &mut rusqlite::Transaction<'_>,
    device: &DeviceRow,
    group_id: &[u8],
    bytes: &[u8],
    report: &mut SyncReport,
) -> Result<(), EngineError> {
    let tx = batch.savepoint()?;
    let provider = Provider::new(crypto, &tx);
    let result = (|| -> Result<(MlsGroup, String, Vec<String>), String> {
        let message = MlsMessageIn::tls_deserialize_exact(bytes)
            .map_err(|e| format!("Welcome does not decode: {e}"))?;
        let MlsMessageBodyIn::Welcome(welcome) = message.extract() else {
            return Err("expected a Welcome".into());
        };
        let staged = StagedWelcome::new_from_welcome(&provider, &join_config(), welcome, None)
            .map_err(|e| format!("Welcome cannot be opened: {e}"))?;
        // A group this device is in, or was in until it left or was removed, is kept at
        // the epoch it last reached: only a Welcome to a later epoch (being added back)
        // may replace it.
        let mut held = MlsGroup::load(provider.storage(), &GroupId::from_slice(group_id))
            .map_err(|e| e.to_string())?;
        if let Some(old) = held.as_mut() {
            let (held, offered) = (
                old.epoch().as_u64(),
                staged.group_context().epoch().as_u64(),
            );
            if offered <= held {
                return Err(format!(
                    "a replayed Welcome: this device holds the group at epoch {held}, the Welcome is for epoch {offered}"
                ));
            }
            old.delete(provider.storage()).map_err(|e| e.to_string())?;
        }
        // Every member must be certified by the organisation (a certificate that ran out
        // since, of someone offline, is no reason to refuse the group).
        for member in staged.members() {
            roster_member(&device.org, &member.credential, &member.signature_key)
                .map_err(|e| format!("Welcome lists a member with an invalid identity: {e}"))?;
        }
        let sender = staged
            .welcome_sender()
            .map_err(|e| format!("Welcome has no sender: {e}"))?;
        let adder = verify_member(
            &device.org,
            sender.credential(),
            sender.signature_key().as_slice(),
        )
        .map_err(|e| format!("Welcome was sent by a member with an invalid identity: {e}"))?;
        if revoked_device(&tx, &adder.body.device_id).map_err(|e| e.to_string())? {
            return Err(format!(
                "Welcome was sent by revoked device {} of {}",
                adder.body.device_id, adder.body.user
            ));
        }
        let group = staged
            .into_group(&provider)
            .map_err(|e| format!("Welcome cannot be joined: {e}"))?;
        // Replacing a group this device is still in (it missed being removed and added
        // again): what changed since must be a change its adder, a member then, was
        // allowed to make. A device that had left or been removed simply joins anew.
        let active: bool = tx
            .query_row(
                "SELECT state = 'active' FROM groups WHERE group_id = ?1",
                [group_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| e.to_string())?
            .unwrap_or(false);
        let changes = match held.as_ref().filter(|_| active) {
            Some(held) => {
                let revoked = revoked_devices(&tx).map_err(|e| e.to_string())?;
                catch_up_changes(&tx, device, held, &group, &adder, &revoked)?
            }
            None => Vec::new(),
        };
        Ok((group, adder.body.user, changes))
    })();
    match result {
        Ok((group, adder, changes)) => {
            let gid = group.group_id().as_slice().to_vec();
            if gid != group_id {
                report
                    .problems
                    .push("rejected a Welcome whose group id differs from its envelope".into());
                return Ok(());
            }
            let placeholder = placeholder_name(&gid);
            // A group joined anew goes by a placeholder until a member tells its name, so
            // an old name cannot vouch for a group that is not the one it named.
            tx.execute(
                    "INSERT INTO groups (group_id, name, state, created_at) VALUES (?1, ?2, 'active', ?3)
                     ON CONFLICT (group_id) DO UPDATE SET name = CASE WHEN state = 'active' THEN name ELSE excluded.name END,
                         state = 'active'",
                    params![gid, placeholder, now_ms()],
                )?;
            insert_system(&tx, &gid, &format!("{adder} added you"), Some(0))?;
            lapse_check_due(&tx)?;
            for change in &changes {
                insert_system(&tx, &gid, change, Some(0))?;
            }
            tx.commit()?;
            report.joined_groups.push(group_hex(&gid));
        }
        Err(why) => {
            tracing::warn!(%why, "rejected Welcome");
            report
                .problems
                .push(format!("rejected an invitation to a group: {why}"));
        }
    }
    Ok(())
}

/// Processes one group message inside the batch's transaction. Returns whether it deleted
/// content, so the batch ends with a checkpoint that scrubs it from the write-ahead log.
fn process_group_message(
    context: &BatchContext<'_>,
    loaded: &mut LoadedGroups,
    verified: &mut VerifiedCertificates,
    group_id: &[u8],
    seq: u64,
    bytes: &[u8],
    report: &mut SyncReport,
) -> Result<bool, EngineError> {
    let BatchContext {
        crypto,
        tx,
        device,
        signer,
        revoked,
    } = *context;
    let last: i64 = tx
        .prepare_cached("SELECT last_seq FROM cursors WHERE group_id = ?1")?
        .query_row([group_id], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    if seq as i64 <= last {
        return Ok(false);
    }
    tx.prepare_cached(
        "INSERT INTO cursors (group_id, last_seq) VALUES (?1, ?2)
             ON CONFLICT (group_id) DO UPDATE SET last_seq = excluded.last_seq",
    )?
    .execute(params![group_id, seq as i64])?;
    let own = tx
        .prepare_cached("DELETE FROM own_handshakes WHERE group_id = ?1 AND seq = ?2")?
        .execute(params![group_id, seq as i64])?;
    let state: Option<String> = tx
        .prepare_cached("SELECT state FROM groups WHERE group_id = ?1")?
        .query_row([group_id], |r| r.get(0))
        .optional()?;
    if own > 0 || state.as_deref() != Some(STATE_ACTIVE) {
        return Ok(false);
    }
    let pending_hash: Option<Vec<u8>> = tx
        .query_row(
            "SELECT commit_hash FROM pending_commits WHERE group_id = ?1",
            [group_id],
            |r| r.get(0),
        )
        .optional()?;
    let provider = Provider::new(crypto, tx);
    let mut group = match loaded.remove(group_id) {
        Some(group) => group,
        None => load_group(&provider, group_id)?,
    };
    let policy = policy_of(&group);
    let managed = policy.managed;
    let mut notices: Vec<String> = Vec::new();
    let mut new_state: Option<&str> = None;
    let mut received: Option<(Envelope, Certificate)> = None;
    let mut gap: Option<String> = None;
    let mut purge = false;
    if let Some(hash) = pending_hash {
        if hash == sha256(bytes) {
            // Our own commit, whose acceptance we did not hear about.
            if let Some(text) = merge_own_commit(&provider, &mut group, signer, device)? {
                notices.push(format!("you {text}"));
            }
        } else {
            group
                .clear_pending_commit(provider.storage())
                .map_err(EngineError::mls)?;
        }
        tx.execute(
            "DELETE FROM pending_commits WHERE group_id = ?1",
            [group_id],
        )?;
        if hash == sha256(bytes) {
            for (i, n) in notices.iter().enumerate() {
                insert_system(tx, group_id, n, Some(order_key(seq, i + 1)))?;
            }
            loaded.insert(group_id.to_vec(), group);
            return Ok(false);
        }
    }
    // A commit this device refuses at its own epoch, or anything from a later epoch, means
    // it may be behind the group: the next sync checks, and rejoins if so.
    let mut behind = false;
    let outcome = (|| -> Result<(), String> {
        let message = MlsMessageIn::tls_deserialize_exact(bytes)
            .map_err(|e| format!("message does not decode: {e}"))?
            .try_into_protocol_message()
            .map_err(|e| format!("not a group message: {e}"))?;
        let (epoch, held) = (message.epoch().as_u64(), group.epoch().as_u64());
        behind = epoch > held || (epoch == held && message.content_type() == ContentType::Commit);
        let processed = group
            .process_message(&provider, message)
            .map_err(|e| format!("message cannot be processed: {e}"))?;
        let sender_cert = certificate_in(processed.credential())
            .ok_or_else(|| "sender has no identity certificate".to_string())?;
        // A commit's sender is judged by the shared rules, which let a member whose
        // certificate ran out commit its own renewal (as the relay does); everything
        // else needs a certificate valid now.
        let is_commit = matches!(
            processed.content(),
            ProcessedMessageContent::StagedCommitMessage(_)
        );
        let now = if is_commit { None } else { Some(now_unix()) };
        verified
            .verify(&sender_cert, &device.org, now)
            .map_err(|e| format!("sender {}: {e}", sender_cert.body.user))?;
        // The certificate must name the key that signed: the sending leaf's own.
        let sender_key = match (processed.sender(), processed.content()) {
            (Sender::Member(index), _) => group.member_at(*index).map(|m| m.signature_key),
            // A member rejoining signs with the leaf it brings.
            (Sender::NewMemberCommit, ProcessedMessageContent::StagedCommitMessage(staged)) => {
                staged
                    .update_path_leaf_node()
                    .map(|leaf| leaf.signature_key().as_slice().to_vec())
            }
            _ => None,
        };
        if sender_key.as_deref() != Some(sender_cert.body.device_key.as_slice()) {
            return Err(format!(
                "dropped a message whose sender's certificate ({}) is not for the key that signed it",
                sender_cert.body.user
            ));
        }
        if revoked.contains(&sender_cert.body.device_id) {
            return Err(format!(
                "dropped a message from revoked device {} of {}",
                sender_cert.body.device_id, sender_cert.body.user
            ));
        }
        let rules = muster_rules::Context {
            org: &device.org,
            now: now_unix(),
            revoked: &|d: &str| revoked.contains(d),
            // Members judge every commit alike, whatever renewals each has seen.
            renewed: &|_: &str| false,
        };
        let by = sender_cert.body.user.clone();
        let sender = processed.sender().clone();
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => {
                let envelope = Envelope::from_bytes(&app.into_bytes())
                    .map_err(|e| format!("from {}: {e}", sender_cert.body.user))?;
                gap = check_send_number(tx, group_id, &sender_cert, envelope.n)
                    .map_err(|e| e.to_string())?;
                received = Some((envelope, sender_cert));
            }
            ProcessedMessageContent::ProposalMessage(proposal) => {
                let members: Vec<Member> = group.members().collect();
                // A proposal that breaks the rules is never stored, so no commit of
                // this device carries it and it cannot wedge later commits.
                muster_rules::check_proposal(
                    &rules,
                    &members,
                    policy,
                    &sender,
                    proposal.proposal(),
                )
                .map_err(|e| format!("refused a proposal by {by}: {e}"))?;
                if let Proposal::Remove(remove) = proposal.proposal() {
                    let who = group
                        .member_at(remove.removed())
                        .and_then(|m| certificate_in(&m.credential))
                        .map(|c| c.body.user);
                    if who.as_deref() == Some(sender_cert.body.user.as_str()) {
                        notices.push(format!("{} is leaving the group", sender_cert.body.user));
                    }
                }
                group
                    .store_pending_proposal(provider.storage(), *proposal)
                    .map_err(|e| e.to_string())?;
            }
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                let members: Vec<Member> = group.members().collect();
                muster_rules::check_commit(&rules, &members, policy, &sender, &staged)
                    .map_err(|e| format!("refused a commit by {by}: {e}"))?;
                let changed_policy = muster_rules::policy_change(policy, &staged);
                let added: Vec<String> = staged
                    .add_proposals()
                    .filter_map(|a| {
                        certificate_in(a.add_proposal().key_package().leaf_node().credential())
                    })
                    .map(|c| c.body.user)
                    .collect();
                let removed: Vec<String> = staged
                    .remove_proposals()
                    .filter_map(|r| group.member_at(r.remove_proposal().removed()))
                    .filter_map(|m| certificate_in(&m.credential))
                    .map(|c| c.body.user)
                    .collect();
                let self_removed = staged.self_removed();
                group
                    .merge_staged_commit(&provider, *staged)
                    .map_err(|e| e.to_string())?;
                lapse_check_due(tx).map_err(|e| e.to_string())?;
                let actor = &sender_cert.body.user;
                if sender == Sender::NewMemberCommit {
                    notices.push(format!(
                        "a device of {actor} had fallen behind and rejoined the group"
                    ));
                } else {
                    for user in dedup(added) {
                        notices.push(format!("{actor} added {user}"));
                    }
                    for user in dedup(removed) {
                        if user == *actor {
                            notices.push(format!("{user} left"));
                        } else {
                            notices.push(format!("{actor} removed {user}"));
                        }
                    }
                }
                if let Some(after) = changed_policy {
                    notices.extend(describe_policy_change(actor, policy, after));
                }
                if self_removed || !group.is_active() {
                    new_state = Some(STATE_REMOVED);
                    notices.push("you are no longer a member of this group".into());
                }
            }
            _ => return Err("unsupported message type".into()),
        }
        Ok(())
    })();
    if let Err(why) = &outcome {
        tracing::warn!(%why, "could not process a group message");
        report.problems.push(why.clone());
        notices.push(format!("a message could not be processed: {why}"));
        if behind {
            tx.prepare_cached("INSERT OR IGNORE INTO behind_groups (group_id) VALUES (?1)")?
                .execute([group_id])?;
        }
    }
    if let Some(gap) = gap {
        tracing::warn!(%gap, "messages withheld or reordered");
        report.problems.push(gap.clone());
        if device.certificate.as_ref().is_some_and(|c| c.is_archive()) {
            archive::record_gap(tx, group_id, &gap, now_ms())?;
        }
        notices.push(gap);
    }
    if let Some((envelope, cert)) = received {
        if policy.archived && device.certificate.as_ref().is_some_and(|c| c.is_archive()) {
            let (name, disappear_secs): (String, Option<i64>) = tx
                .prepare_cached("SELECT name, disappear_secs FROM groups WHERE group_id = ?1")?
                .query_row([group_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
            let message = ArchivedMessage {
                group_id: group_hex(group_id),
                group: name,
                relay_seq: seq,
                sender: cert.body.user.clone(),
                sender_device: cert.body.device_id.clone(),
                sent_at: envelope.sent_at,
                received_at: now_ms(),
                id: envelope.id.clone(),
                body: serde_json::to_value(&envelope.body)
                    .map_err(|e| EngineError::Invalid(e.to_string()))?,
            };
            // Measured from when the archive received it: a sender's clock, which any
            // member sets at will, decides nothing about how long the archive keeps it.
            let received_at = message.received_at;
            let expires_at =
                disappear_secs.map(|secs| received_at.saturating_add(secs.saturating_mul(1000)));
            archive::record_message(tx, group_id, &message, expires_at, received_at)?;
        }
        let author = Author {
            user: &cert.body.user,
            device: &cert.body.device_id,
            admin: cert.is_admin(),
        };
        let origin = Origin::Received {
            seq,
            at_ms: now_ms(),
        };
        if conversation::apply(
            tx,
            &device.user,
            group_id,
            &envelope,
            &author,
            origin,
            managed,
        )? {
            report.received += 1;
            let group: String = tx.query_row(
                "SELECT name FROM groups WHERE group_id = ?1",
                [group_id],
                |r| r.get(0),
            )?;
            let (kind, text, mentions_me, ack_required) = match &envelope.body {
                Body::Text { text, mentions, .. } => {
                    ("text", text.clone(), mentions.contains(&device.user), false)
                }
                Body::Alert { text, ack_required } => ("alert", text.clone(), false, *ack_required),
                _ => ("text", String::new(), false, false),
            };
            let notification = Notification {
                id: envelope.id.clone(),
                group,
                sender: cert.body.user.clone(),
                kind: kind.into(),
                text,
                mentions_me,
                ack_required,
            };
            if should_notify(tx, group_id, &notification)? {
                report.notifications.push(notification);
            }
        }
        purge = match &envelope.body {
            Body::Delete { .. } => true,
            Body::BoardSet { value, .. } => value.is_empty(),
            _ => false,
        };
    }
    if let Some(state) = new_state {
        tx.execute(
            "UPDATE groups SET state = ?2 WHERE group_id = ?1",
            params![group_id, state],
        )?;
    }
    for (i, n) in notices.iter().enumerate() {
        insert_system(tx, group_id, n, Some(order_key(seq, i + 1)))?;
    }
    // A message that failed may have left the group object half-changed; the next one
    // reads the group afresh from the store.
    if outcome.is_ok() && new_state.is_none() {
        loaded.insert(group_id.to_vec(), group);
    }
    Ok(purge)
}

/// Where the time of a group's last delivery receipts is kept.
fn delivery_receipts_key(group_id: &[u8]) -> String {
    format!("delivery_receipts_at:{}", group_hex(group_id))
}

/// Merges this device's own commit once the relay has sequenced it, and tells members it
/// added the group's name. Returns what the commit did, for the notice.
fn merge_own_commit(
    provider: &Provider,
    group: &mut MlsGroup,
    signer: &SignatureKeyPair,
    device: &DeviceRow,
) -> Result<Option<String>, EngineError> {
    let notice = describe_pending_commit(group);
    let adds = group
        .pending_commit()
        .is_some_and(|staged| staged.add_proposals().next().is_some());
    group
        .merge_pending_commit(provider)
        .map_err(EngineError::mls)?;
    if adds {
        queue_name_for_new_members(provider, group, signer, device)?;
    }
    Ok(notice)
}

fn dedup(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v.dedup();
    v
}

/// "added bob" / "removed carol" for the pending commit, for the user's own timeline.
fn describe_pending_commit(group: &MlsGroup) -> Option<String> {
    let staged = group.pending_commit()?;
    let added: Vec<String> = dedup(
        staged
            .add_proposals()
            .filter_map(|a| certificate_in(a.add_proposal().key_package().leaf_node().credential()))
            .map(|c| c.body.user)
            .collect(),
    );
    let removed: Vec<String> = dedup(
        staged
            .remove_proposals()
            .filter_map(|r| group.member_at(r.remove_proposal().removed()))
            .filter_map(|m| certificate_in(&m.credential))
            .map(|c| c.body.user)
            .collect(),
    );
    let mut parts = Vec::new();
    if !added.is_empty() {
        parts.push(format!("added {}", added.join(", ")));
    }
    if !removed.is_empty() {
        parts.push(format!("removed {}", removed.join(", ")));
    }
    let before = policy_of(group);
    if let Some(after) = muster_rules::policy_change(before, staged) {
        parts.extend(
            describe_policy_change("", before, after)
                .into_iter()
                .map(|n| n.trim_start().to_string()),
        );
    }
    (!parts.is_empty()).then(|| parts.join(" and "))
}

/// This user's view settings for a group or person.
struct ViewSettings {
    muted: bool,
    pinned: bool,
    level: String,
}

fn view_of(db: &Connection, scope: &str, target: &str) -> Result<ViewSettings, EngineError> {
    Ok(db
        .query_row(
            "SELECT muted, pinned, level FROM view_settings WHERE scope = ?1 AND target = ?2",
            params![scope, target],
            |r| {
                Ok(ViewSettings {
                    muted: r.get(0)?,
                    pinned: r.get(1)?,
                    level: r.get(2)?,
                })
            },
        )
        .optional()?
        .unwrap_or(ViewSettings {
            muted: false,
            pinned: false,
            level: "all".into(),
        }))
}

/// Urgent alerts always notify; other messages follow the group's level and mutes.
fn should_notify(db: &Connection, group_id: &[u8], n: &Notification) -> Result<bool, EngineError> {
    if n.kind == "alert" {
        return Ok(true);
    }
    let group = view_of(db, "group", &group_hex(group_id))?;
    if group.muted || view_of(db, "user", &n.sender)?.muted {
        return Ok(false);
    }
    Ok(match group.level.as_str() {
        "alerts" => false,
        "mentions" => n.mentions_me,
        _ => true,
    })
}

/// Encrypts `envelope` for the group and puts it in the outbox, with its effect on this
/// device's own store, all inside the caller's transaction.
fn queue_in(
    provider: &Provider,
    group: &mut MlsGroup,
    signer: &SignatureKeyPair,
    device: &DeviceRow,
    envelope: Envelope,
) -> Result<(), EngineError> {
    let db = provider.storage_connection();
    let group_id = group.group_id().as_slice().to_vec();
    if let Some(user) = unremoved_device(group, db, &device.device_id)? {
        return Err(EngineError::UnremovedDevice {
            group: group_label(db, &group_id),
            user,
        });
    }
    queue_unchecked(provider, group, signer, device, envelope)
}

/// Where messages queued for a group stand, as the outbox sees it.
#[derive(Debug, Clone)]
enum OutboxGroup {
    /// This device is no longer in it.
    Gone,
    /// It holds a device of this user that is revoked or lapsed.
    HoldsUnremoved(String),
    /// Messages may go, encrypted at this epoch.
    Ready { epoch: u64 },
}

/// The epoch an encrypted group message was made at, if it decodes.
fn ciphertext_epoch(bytes: &[u8]) -> Option<u64> {
    MlsMessageIn::tls_deserialize_exact(bytes)
        .ok()?
        .try_into_protocol_message()
        .ok()
        .map(|m| m.epoch().as_u64())
}

/// A group's name for the user, or its id where this device has no name for it.
fn group_label(db: &Connection, group_id: &[u8]) -> String {
    db.query_row(
        "SELECT name FROM groups WHERE group_id = ?1",
        [group_id],
        |r| r.get(0),
    )
    .unwrap_or_else(|_| group_hex(group_id))
}

/// `queue_in` without looking for devices still to be removed.
fn queue_unchecked(
    provider: &Provider,
    group: &mut MlsGroup,
    signer: &SignatureKeyPair,
    device: &DeviceRow,
    mut envelope: Envelope,
) -> Result<(), EngineError> {
    let db = provider.storage_connection();
    let group_id = group.group_id().as_slice().to_vec();
    if policy_of(group).archived && archive_members(group, &device.org, db)?.is_empty() {
        return Err(EngineError::ArchiveMissing(group_hex(&group_id)));
    }
    envelope.n = Some(next_send_number(db, &group_id)?);
    let ciphertext = group
        .create_message(provider, signer, &envelope.to_bytes())
        .map_err(EngineError::mls)?;
    let position: i64 = db.query_row(
        "SELECT COALESCE(MAX(position), 0) + 1 FROM outbox",
        [],
        |r| r.get(0),
    )?;
    db.execute(
        "INSERT INTO outbox (client_id, position, group_id, message_id, envelope, ciphertext) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![sha256(envelope.id.as_bytes())[..16].to_vec(), position, group_id, envelope.id, envelope.to_bytes(), mls_bytes(&ciphertext)?],
    )?;
    if !matches!(envelope.body, Body::Receipt { .. }) {
        let author = Author {
            user: &device.user,
            device: &device.device_id,
            admin: device.certificate.as_ref().is_some_and(|c| c.is_admin()),
        };
        conversation::apply(
            db,
            &device.user,
            &group_id,
            &envelope,
            &author,
            Origin::Own,
            false,
        )?;
    }
    Ok(())
}

/// The next number this device gives its application messages to the group, counted in
/// the same transaction that queues the message.
fn next_send_number(db: &Connection, group_id: &[u8]) -> Result<u64, EngineError> {
    let key = format!("sent_n:{}", group_hex(group_id));
    let n: i64 = db
        .prepare_cached(
            "INSERT INTO sync_state (key, value) VALUES (?1, 1)
             ON CONFLICT (key) DO UPDATE SET value = value + 1 RETURNING value",
        )?
        .query_row([key], |r| r.get(0))?;
    Ok(n as u64)
}

/// Checks a sender's message number against the last one seen from that device in the
/// group: a number skipped means the relay withheld messages, an old one that it
/// reordered or replayed them. Returns what to tell the user, if anything.
fn check_send_number(
    db: &Connection,
    group_id: &[u8],
    sender: &Certificate,
    n: Option<u64>,
) -> Result<Option<String>, EngineError> {
    let Some(n) = n else {
        return Ok(None);
    };
    let last: Option<i64> = db
        .prepare_cached("SELECT last_n FROM sender_numbers WHERE group_id = ?1 AND device_id = ?2")?
        .query_row(params![group_id, sender.body.device_id], |r| r.get(0))
        .optional()?;
    db.prepare_cached(
        "INSERT INTO sender_numbers (group_id, device_id, last_n) VALUES (?1, ?2, ?3)
         ON CONFLICT (group_id, device_id) DO UPDATE SET last_n = MAX(last_n, excluded.last_n)",
    )?
    .execute(params![group_id, sender.body.device_id, n as i64])?;
    let user = &sender.body.user;
    Ok(match last.map(|l| l.max(0) as u64) {
        Some(last) if n > last.saturating_add(1) => {
            let missing = n - last - 1;
            Some(format!(
                "{missing} message{} from {user} (device {}) never arrived: the relay withheld {}",
                if missing == 1 { "" } else { "s" },
                sender.body.device_id,
                if missing == 1 { "it" } else { "them" }
            ))
        }
        Some(last) if n <= last => Some(format!(
            "a message from {user} arrived out of order (number {n} after {last}): the relay reordered or replayed it"
        )),
        _ => None,
    })
}

/// After merging a commit that added members: tell them the group's name, in the same
/// transaction, so a crash cannot leave them without it.
fn queue_name_for_new_members(
    provider: &Provider,
    group: &mut MlsGroup,
    signer: &SignatureKeyPair,
    device: &DeviceRow,
) -> Result<(), EngineError> {
    let name: String = provider.storage_connection().query_row(
        "SELECT name FROM groups WHERE group_id = ?1",
        [group.group_id().as_slice()],
        |r| r.get(0),
    )?;
    let envelope = Envelope::new(random_hex(16), now_ms(), Body::GroupMeta { name });
    // Every member already knows the name, including one still to be removed.
    queue_unchecked(provider, group, signer, device, envelope)
}

/// The user owning a device in the group that this device knows to be revoked, or whose
/// certificate lapsed with no renewal in sight. Such a device can still read whatever is
/// sent to the group, so nothing is sent until it is removed: a relay that refuses the
/// removal gets silence, not the group's messages.
fn unremoved_device(
    group: &MlsGroup,
    db: &Connection,
    own_device: &str,
) -> Result<Option<String>, EngineError> {
    let revoked = revoked_devices(db)?;
    let lapsed = lapsed_devices(db)?;
    if revoked.is_empty() && lapsed.is_empty() {
        return Ok(None);
    }
    let now = now_unix();
    Ok(group
        .members()
        .filter_map(|m| certificate_in(&m.credential))
        .find(|c| {
            let id = &c.body.device_id;
            id != own_device
                && (revoked.contains(id) || (lapsed.contains(id) && muster_rules::lapsed(c, now)))
        })
        .map(|c| c.body.user))
}

fn device_ids_in(group: &MlsGroup) -> Vec<String> {
    group
        .members()
        .filter_map(|m| certificate_in(&m.credential))
        .map(|c| c.body.device_id)
        .collect()
}

/// A group's members changed: look for lapsed certificates at the next sync.
fn lapse_check_due(db: &Connection) -> Result<(), EngineError> {
    db.prepare_cached("DELETE FROM sync_state WHERE key = 'next_lapse_check'")?
        .execute([])?;
    Ok(())
}

/// The newest certificate this device verified for a device, if any.
pub(crate) fn known_certificate(
    db: &Connection,
    device_id: &str,
) -> Result<Option<Certificate>, EngineError> {
    let bytes: Option<Vec<u8>> = db
        .prepare_cached("SELECT certificate FROM known_certificates WHERE device_id = ?1")?
        .query_row([device_id], |r| r.get(0))
        .optional()?;
    Ok(bytes.and_then(|b| Certificate::from_bytes(&b).ok()))
}

/// Every device this device knows to be revoked.
pub(crate) fn revoked_devices(db: &Connection) -> Result<HashSet<String>, EngineError> {
    let ids = db
        .prepare_cached("SELECT device_id FROM revoked_devices")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<HashSet<String>, _>>()?;
    Ok(ids)
}

/// Devices found lapsed at the last lapse check: removed from groups while the
/// certificate in their leaf stays run out.
fn lapsed_devices(db: &Connection) -> Result<HashSet<String>, EngineError> {
    let ids = db
        .prepare_cached("SELECT device_id FROM lapsed_devices")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<HashSet<String>, _>>()?;
    Ok(ids)
}

/// The notices a policy change shows every member.
fn describe_policy_change(actor: &str, before: GroupPolicy, after: GroupPolicy) -> Vec<String> {
    let mut notices = Vec::new();
    if before.managed != after.managed {
        notices.push(if after.managed {
            format!("{actor} made this a managed group: only admins add or remove people")
        } else {
            format!("{actor} made this an open group: members add and remove people")
        });
    }
    if before.archived != after.archived {
        notices.push(if after.archived {
            format!("{actor} turned on the compliance archive: everything said here is kept")
        } else {
            format!("{actor} turned off the compliance archive")
        });
    }
    notices
}

pub(crate) fn revoked_device(db: &Connection, device_id: &str) -> Result<bool, EngineError> {
    Ok(db
        .query_row(
            "SELECT 1 FROM revoked_devices WHERE device_id = ?1",
            [device_id],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

fn load_group(provider: &Provider, group_id: &[u8]) -> Result<MlsGroup, EngineError> {
    MlsGroup::load(provider.storage(), &GroupId::from_slice(group_id))
        .map_err(EngineError::mls)?
        .ok_or_else(|| EngineError::Mls("group state is missing from the local store".into()))
}
