//! The device engine: the `Engine` type, what it shows (views, reports) and helpers shared
//! by the files alongside, each holding one concern: identity, groups, commits, posting,
//! messages, transfers, outbox, sync, inbound, views.

use crate::archive::{self, ArchivedMessage};
use crate::attachments::{mime_for, AttachmentRef, ChunkCipher};
use crate::content::{mentions_in, AnswerOption, AuthorSpan, Body, Envelope, ReceiptKind};
use crate::conversation::{
    self, insert_system, order_key, placeholder_name, Author, BoardEntry, Origin,
};
use crate::error::{from_link, EngineError};
use crate::link::{Link, LinkError};
use crate::provider::{Batch, BatchedSecrets, Provider, StoreCodec};
use crate::signatures::{DeferredSignatures, DEFER_FROM};
use crate::store::SCHEMA;
use muster_proto::{
    auth_transcript, device_id_for, encrypted_size, now_unix, validate_handle, AckItem,
    Certificate, CertificateBody, CodeSecret, Delivery, EnrolmentRequest, ErrorCode, GroupPolicy,
    InviteCode, InvitePurpose, OrgDescriptor, OrgRootKey, Profile, RelayError, Request,
    RequestBody, Response, Revocation, RevocationList, Role, ATTACHMENT_CHUNK,
    GROUP_POLICY_EXTENSION, MAX_ATTACHMENT,
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

mod bots;
mod commits;
mod delivery;
mod directed;
mod duties;
mod groups;
mod identity;
mod inbound;
mod incidents;
mod messages;
mod outbox;
mod posting;
mod report;
mod sync;
mod transfers;
mod trees;
mod views;
mod waiting;

pub use bots::{
    looks_like_bot_token, AlarmChange, BotPost, BotPostKind, BotPosted, BotRefusal, BotRollcall,
    BotScope, BotTokenView, OpenAlarm, MAX_IDEMPOTENCY_KEY,
};
use commits::*;
use inbound::*;
#[cfg(feature = "fuzzing")]
pub(crate) use inbound::{receive_for_fuzzing, welcome_for_fuzzing};
pub use incidents::{AlertRequest, IncidentView, TaskView};
use messages::*;
use outbox::*;
use posting::*;
pub(crate) use sync::*;
pub(crate) use transfers::{blob_fetched, download_blob};
use views::*;
use waiting::*;

/// The MLS ciphersuite of every Muster group.
pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;
/// Past epochs whose secrets are kept, so messages sent just before a commit still decrypt.
const MAX_PAST_EPOCHS: usize = 5;
const KEY_PACKAGE_LOW_WATER: u32 = 5;
const KEY_PACKAGE_BATCH: usize = 10;
const MAX_COMMIT_ATTEMPTS: u32 = 8;
const FETCH_BATCH: u32 = 200;
/// How often, at least, groups are looked through for members whose certificate ran out.
const LAPSE_CHECK_SECS: u64 = 600;
/// Longest text message accepted for sending, in bytes.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;
const DB_FILE: &str = "muster.db";

/// Deletes the store of the device in `home` (its database, with everything in it, and
/// the archive's blobs), leaving anything else in the directory alone: what a revoked
/// device does when the organisation's policy says so. The engine must be closed.
pub fn wipe_store(home: &Path) -> Result<(), EngineError> {
    let store_files =
        ["", "-wal", "-shm", "-journal"].map(|suffix| home.join(format!("{DB_FILE}{suffix}")));
    // How the store's key was made goes with it: the home may enrol afresh.
    for file in store_files
        .iter()
        .chain([&home.join(muster_keystore::PARAMS_FILE)])
    {
        match std::fs::remove_file(file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
    }
    match std::fs::remove_dir_all(home.join("archive-blobs")) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// Where this device stands in a group it knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupState {
    /// A member: it reads and sends.
    Active,
    /// It left; the conversation stays readable.
    Left,
    /// Someone removed it; the conversation stays readable.
    Removed,
}

impl GroupState {
    /// The word stored and shown for it.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupState::Active => "active",
            GroupState::Left => "left",
            GroupState::Removed => "removed",
        }
    }
}

impl std::fmt::Display for GroupState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl rusqlite::types::ToSql for GroupState {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(self.as_str().into())
    }
}

impl rusqlite::types::FromSql for GroupState {
    fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        match value.as_str()? {
            "active" => Ok(GroupState::Active),
            "left" => Ok(GroupState::Left),
            "removed" => Ok(GroupState::Removed),
            other => Err(rusqlite::types::FromSqlError::Other(
                format!("unknown group state {other:?}").into(),
            )),
        }
    }
}

/// Who a device belongs to.
#[derive(Debug, Clone, Serialize)]
pub struct Identity {
    /// The user's handle.
    pub user: String,
    pub device_id: String,
    /// The organisation's name.
    pub org: String,
    /// This device's certificate carries the admin role.
    pub admin: bool,
    /// An admin has approved this device (it holds its certificate).
    pub approved: bool,
}

/// A group this device knows, as found by name or id.
#[derive(Debug, Clone)]
pub(crate) struct KnownGroup {
    pub(crate) id: Vec<u8>,
    pub(crate) name: String,
    pub(crate) state: GroupState,
}

/// A message as the user sees it.
#[derive(Debug, Clone, Serialize)]
pub struct MessageView {
    pub id: String,
    pub group: String,
    pub group_id: String,
    /// `text`, `alert`, `attachment`, `task` or `system` (membership changes and notices).
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
    /// Each member's latest answer to this alert.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub answers: std::collections::BTreeMap<String, String>,
    /// The answers this alert offers.
    pub options: Vec<AnswerOption>,
    /// Someone else's message this user has not read yet (its read receipt is due).
    pub unread: bool,
    /// A file attached to this message (fetch it with `fetch ID`).
    pub attachment: Option<AttachmentView>,
    /// An exercise: an alert or task of a drill.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub drill: bool,
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
    /// Each member's display name, from the newest certificate in their leaves: an
    /// approved profile change shows here once their device updated its leaf.
    pub member_names: std::collections::BTreeMap<String, String>,
    /// People added before their device was ever online: added once it is.
    pub waiting: Vec<String>,
    pub epoch: u64,
    /// `active`, `left` or `removed`.
    pub state: GroupState,
    /// Only admins add or remove people; members cannot leave or rename it.
    pub managed: bool,
    /// The organisation's compliance archive keeps everything said in this group.
    pub archived: bool,
    /// Members whose certificate carries the archive role (valid ones only).
    pub archive_members: Vec<String>,
    /// Members that are bots (service accounts that post other systems' alarms).
    pub bot_members: Vec<String>,
    /// Who can read what the archive keeps: "readable only by 2 of 3 legal officers
    /// (...)", or its host where the organisation has none.
    pub archive_readable_by: String,
    /// Devices delete messages this long after they were sent.
    pub disappear_secs: Option<u64>,
    /// Devices keep messages this long.
    pub retain_secs: Option<u64>,
    /// This user muted the group: only urgent alerts notify.
    pub muted: bool,
    pub pinned: bool,
    /// Which messages notify: `all`, `mentions` (and alerts) or `alerts`.
    pub notify_level: String,
    /// Messages from others this user has not read yet.
    pub unread: usize,
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
    /// When they first answered.
    pub acked_at: Option<String>,
    /// Their latest answer, when the alert offers answers.
    pub answer: Option<String>,
}

/// Who gave one of an alert's answers.
#[derive(Debug, Clone, Serialize)]
pub struct AnswerTally {
    pub answer: String,
    pub urgent: bool,
    pub users: Vec<String>,
}

/// Who acknowledged an alert.
#[derive(Debug, Clone, Serialize)]
pub struct Rollcall {
    pub alert: MessageView,
    pub acknowledged: usize,
    pub members: Vec<RollcallEntry>,
    /// The alert's answers, in its order, with who gave each.
    pub answers: Vec<AnswerTally>,
    /// Members who have not answered.
    pub not_answered: Vec<String>,
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

/// What happened on the device since the caller last asked ([`Engine::take_activity`];
/// [`Engine::sync`] returns it too): every operation that talks to the relay may receive
/// messages, join groups, certify devices or meet problems on the way, and none of it is
/// dropped until the caller takes it.
#[derive(Debug, Default, Clone, Serialize)]
pub struct SyncReport {
    pub received: usize,
    /// Deliveries (group messages and Welcomes) fetched from the relay.
    pub fetched: usize,
    /// Messages and alerts that arrived, for notifications.
    pub notifications: Vec<Notification>,
    /// New devices approved by their own user and certified by this admin device.
    pub approved_devices: Vec<String>,
    pub joined_groups: Vec<String>,
    pub sent: usize,
    pub problems: Vec<String>,
}

impl SyncReport {
    /// Adds what `later` holds to this report.
    pub fn merge(&mut self, later: SyncReport) {
        self.received += later.received;
        self.fetched += later.fetched;
        self.notifications.extend(later.notifications);
        self.approved_devices.extend(later.approved_devices);
        self.joined_groups.extend(later.joined_groups);
        self.sent += later.sent;
        self.problems.extend(later.problems);
    }
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

    /// Whether the Welcome or GroupInfo is over what the relay stores.
    fn too_large(&self) -> bool {
        let over = |m: &Option<MlsMessageOut>| {
            m.as_ref()
                .is_some_and(|m| m.tls_serialized_len() > muster_proto::MAX_MLS_MESSAGE)
        };
        over(&self.welcome) || over(&self.group_info)
    }
}

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
    /// Held (shared) while the store is open, so it is never encrypted in place under a
    /// process using it.
    _store_lock: crate::store_crypt::StoreLock,
    crypto: RustCrypto,
    /// Members per group as last seen, for choosing how receipts go out; a stale count
    /// only changes how receipts are batched.
    member_counts: HashMap<Vec<u8>, usize>,
    /// Groups with more members than this are handled as large: their Welcomes and
    /// GroupInfos leave the ratchet tree out (joiners fetch it from the relay), and adding
    /// people does not also renew the adder's keys along its path.
    large_group_past: usize,
    /// When delivery receipts were last queued (ms), for [`Engine::delivery_receipts_due_in`].
    receipts_checked_at: i64,
    /// Delivery receipts go out now, held or not.
    flushing_held_receipts: bool,
    verified_certificates: VerifiedCertificates,
    /// What happened since the caller last took it.
    pub(crate) activity: SyncReport,
    /// When [`Engine::sync`] last ran whole, for [`Engine::sync_on_wake`].
    last_full_sync: Option<std::time::Instant>,
    /// After a duty could not be carried out, none is tried again before this.
    duties_paused_until: Option<std::time::Instant>,
    /// The relay handed this device messages it has not processed (a fetch or pushed
    /// messages failed part-way): pushed messages wait for a fetch that brings them.
    unprocessed_handover: bool,
    /// Acknowledgements of pushed messages, sent together.
    held_acks: crate::HeldAcks,
    /// Until when batches check every signature in place: a batch held a forged one
    /// (see [`crate::signatures`]), so the next ones may too.
    strict_signatures_until: Option<std::time::Instant>,
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
pub fn leaf_capabilities() -> Capabilities {
    Capabilities::builder()
        .extensions(vec![
            ExtensionType::LastResort,
            ExtensionType::Unknown(GROUP_POLICY_EXTENSION),
        ])
        .build()
}

/// The group-context extensions for `policy` with `waiting` listed as waiting to join.
/// openmls accepts a changed private extension only when the group requires every
/// member to support it (all Muster leaves do).
pub(crate) fn policy_extensions(
    policy: GroupPolicy,
    waiting: &[String],
) -> Result<Extensions<GroupContext>, EngineError> {
    // Entries no rule would accept (a bad handle, beyond the limit) are dropped, so a
    // list someone spoiled cannot block every later change of the group's context.
    let waiting: Vec<String> = waiting
        .iter()
        .filter(|u| validate_handle(u).is_ok())
        .take(muster_proto::MAX_PENDING_SEATS)
        .cloned()
        .collect();
    let waiting = &waiting;
    Extensions::from_vec(vec![
        Extension::RequiredCapabilities(RequiredCapabilitiesExtension::new(
            &[ExtensionType::Unknown(GROUP_POLICY_EXTENSION)],
            &[],
            &[],
        )),
        Extension::Unknown(
            GROUP_POLICY_EXTENSION,
            UnknownExtension(policy.payload_with(waiting)),
        ),
    ])
    .map_err(EngineError::mls)
}

/// A new group's configuration, with `waiting` listed as waiting to join.
pub(crate) fn create_config(
    policy: GroupPolicy,
    waiting: &[String],
) -> Result<MlsGroupCreateConfig, EngineError> {
    let policy = policy_extensions(policy, waiting)?;
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
    join_config_with_tree(true)
}

/// A group's configuration, carrying the ratchet tree in its Welcomes and GroupInfos or
/// (a large group) leaving it for joiners to fetch from the relay.
pub(crate) fn join_config_with_tree(inline: bool) -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .use_ratchet_tree_extension(inline)
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .build()
}

fn certificate_in(credential: &Credential) -> Option<Certificate> {
    let basic = BasicCredential::try_from(credential.clone()).ok()?;
    Certificate::from_bytes(basic.identity()).ok()
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
        if !certificate_revoked(db, &cert)? {
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
    /// Opens (creating if needed) the device store in `home`, unencrypted.
    pub fn open(home: &Path) -> Result<Self, EngineError> {
        Self::open_with_key(home, None)
    }

    /// Opens (creating if needed) the device store in `home`, encrypted with `key` when
    /// one is given. A store kept in plaintext by an earlier version is encrypted in place
    /// the first time a key is given (see [`crate::store_crypt`]).
    pub fn open_with_key(
        home: &Path,
        key: Option<&muster_keystore::StoreKey>,
    ) -> Result<Self, EngineError> {
        std::fs::create_dir_all(home)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o700));
        }
        let (mut db, store_lock) = crate::store_crypt::open(&home.join(DB_FILE), key)?;
        db.busy_timeout(std::time::Duration::from_secs(10))?;
        db.set_prepared_statement_cache_capacity(128);
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "FULL")?;
        // Deleted content is overwritten, not left in free pages.
        db.pragma_update(None, "secure_delete", "ON")?;
        // Statement journals (copies of the pages a statement changes, message text
        // among them) stay in memory instead of temporary files on disk.
        db.pragma_update(None, "temp_store", "MEMORY")?;
        // A long history's indexes stay in memory while a backlog comes in (SQLite's
        // default is 2 MiB; this is the most it takes, for a store that large).
        db.pragma_update(None, "cache_size", -32_768)?;
        db.execute_batch(SCHEMA)?;
        crate::store::migrate(&db)?;
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
            large_group_past: muster_proto::TREE_IN_WELCOME_MAX_MEMBERS,
            receipts_checked_at: 0,
            flushing_held_receipts: false,
            verified_certificates: VerifiedCertificates::default(),
            activity: SyncReport::default(),
            last_full_sync: None,
            duties_paused_until: None,
            unprocessed_handover: false,
            strict_signatures_until: None,
            held_acks: Default::default(),
            _store_lock: store_lock,
        };
        engine.enforce_retention()?;
        Ok(engine)
    }

    /// Sets the group size past which this device handles a group as large (see
    /// [`muster_proto::TREE_IN_WELCOME_MAX_MEMBERS`], the default): its commits leave the
    /// ratchet tree out of Welcomes and GroupInfos, and add people without renewing the
    /// adder's path, whose cost grows with the group. A lower figure exercises both with
    /// small groups.
    pub fn set_large_group_past(&mut self, members: usize) {
        self.large_group_past = members;
    }

    pub fn home(&self) -> &Path {
        &self.home
    }

    /// Takes what happened since the last call: messages that arrived, groups joined,
    /// devices certified and problems met, by any operation.
    pub fn take_activity(&mut self) -> SyncReport {
        std::mem::take(&mut self.activity)
    }
}

fn load_group(provider: &Provider, group_id: &[u8]) -> Result<MlsGroup, EngineError> {
    MlsGroup::load(provider.storage(), &GroupId::from_slice(group_id))
        .map_err(EngineError::mls)?
        .ok_or_else(|| EngineError::Mls("group state is missing from the local store".into()))
}
