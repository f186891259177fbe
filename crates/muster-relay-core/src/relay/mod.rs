//! The relay: its store, and each request dispatched to the module of its concern (auth,
//! enrolment, administration, directory, groups, handshakes, queue; blobs live in
//! ../blobs.rs).

use crate::db::sqlite::SqliteBackend;
use crate::db::{params, Db, DbError, OptionalExtension, Params, Transaction};
use crate::error::{refuse, Failure, StoreError};
use crate::mls::{certificate_of, Storage};
use crate::schema::SCHEMA;
use muster_proto::{
    auth_transcript, directed_users, now_unix, validate_handle, AckItem, AuditEvent, Certificate,
    ClaimedKeyPackage, Delivery, DeviceConfirmation, EnrolmentGrant, EnrolmentRequest, ErrorCode,
    GroupPolicy, InvitePurpose, IssuerCertificate, OpenInvite, OrgDescriptor, OrgPolicy,
    PendingEnrolment, Profile, ProfileChange, ProfileRequest, PublishedCheckpoint, RelayError,
    Request, Response, Revocation, RevocationList, GROUP_POLICY_EXTENSION, MAX_MLS_MESSAGE,
};
use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::*;
use openmls_rust_crypto::RustCrypto;
use ring::signature::{UnparsedPublicKey, ED25519};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

mod administration;
mod auth;
mod directory;
mod enrolment;
mod groups;
mod handshakes;
mod queue;
mod recent;
mod store;
mod trees;

pub use auth::{challenge_nonce, verify_challenge};
use enrolment::*;
use handshakes::*;
pub(crate) use store::require_member;
use store::*;

/// An authenticated device on a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub device_id: String,
    pub user: String,
}

/// The result of one request: the answer for the requester, the devices to wake for new
/// deliveries, the devices to tell that something else changed, and the devices whose
/// open connections must be closed now; for pushes, the application message stored and
/// what the request did to its own connection's pushes.
#[derive(Debug)]
pub struct Outcome {
    pub response: Response,
    pub wake: BTreeSet<String>,
    pub changed: BTreeSet<String>,
    pub disconnect: BTreeSet<String>,
    /// The application message stored, which the devices in `wake` receive.
    pub stored: Option<crate::push::StoredMessage>,
    pub stream: Option<crate::push::StreamChange>,
}

impl Outcome {
    pub(crate) fn reply(response: Response) -> Self {
        Self {
            response,
            wake: BTreeSet::new(),
            changed: BTreeSet::new(),
            disconnect: BTreeSet::new(),
            stored: None,
            stream: None,
        }
    }

    fn with_wake(response: Response, wake: BTreeSet<String>) -> Self {
        Self {
            wake,
            ..Self::reply(response)
        }
    }

    fn with_changed(response: Response, changed: BTreeSet<String>) -> Self {
        Self {
            changed,
            ..Self::reply(response)
        }
    }
}

/// Makes the tables of a shared database, or adds what this version needs to them, and
/// checks that the relays' role owns every one (a table someone else made first could
/// carry their triggers, or be locked or emptied by them); then recounts the queues
/// under the writers' lock. Relays starting together may race to create a table; the
/// loser tries again.
fn prepare_postgres(db: &Db) -> Result<(), StoreError> {
    refuse_tables_of_others(db)?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        // Once the lock's table exists, the relays take turns (a lock no other role can
        // take, unlike an advisory lock).
        let tx = if has_writer_lock(db)? {
            Some(db.transaction()?)
        } else {
            db.execute_batch("BEGIN")?;
            None
        };
        let made = db.execute_batch(&crate::schema::postgres_schema());
        let made = match (made, tx) {
            (Ok(()), Some(tx)) => tx.commit(),
            (Ok(()), None) => db.execute_batch("COMMIT"),
            (Err(e), tx) => {
                if tx.is_none() {
                    let _ = db.execute_batch("ROLLBACK");
                }
                Err(e)
            }
        };
        match made {
            Ok(()) => break,
            Err(e) if attempt < 5 && crate::db::is_creation_race(&e) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    refuse_tables_of_others(db)?;
    let tx = db.transaction()?;
    tx.execute_batch(crate::schema::RECOUNT)?;
    tx.commit()?;
    Ok(())
}

/// Whether a relay has made the tables of this shared database (`writer_lock` among them).
fn has_writer_lock(db: &Db) -> Result<bool, StoreError> {
    Ok(
        db.query_row("SELECT to_regclass('writer_lock') IS NOT NULL", (), |r| {
            r.get::<_, bool>(0)
        })?,
    )
}

/// Refuses a relay table, if it exists, that the relays' role does not own.
fn refuse_tables_of_others(db: &Db) -> Result<(), StoreError> {
    let tables = crate::schema::postgres_tables();
    let mut foreign = Vec::new();
    for table in &tables {
        let owner: Option<String> = db
            .query_row(
                "SELECT pg_get_userbyid(relowner)::TEXT FROM pg_class \
                 WHERE oid = to_regclass(?1) AND pg_get_userbyid(relowner) <> current_user",
                [table.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(owner) = owner {
            foreign.push(format!("{table} (owned by {owner})"));
        }
    }
    if !foreign.is_empty() {
        return Err(StoreError::Corrupt(format!(
            "tables of the relays are owned by another role, which could read or block what \
             the relays store: {}; give the relays a schema of their own that only their role \
             may create in",
            foreign.join(", ")
        )));
    }
    Ok(())
}

/// Counts for operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayStats {
    pub devices: u64,
    pub pending_enrolments: u64,
    pub groups: u64,
    pub stored_messages: u64,
    /// Deliveries (message or Welcome to one device) not yet acknowledged.
    pub queued_deliveries: u64,
}

const STATUS_PENDING: &str = "pending";
const STATUS_APPROVED: &str = "approved";
const STATUS_REJECTED: &str = "rejected";
const STATUS_REVOKED: &str = "revoked";
const KIND_APPLICATION: &str = "application";
const KIND_COMMIT: &str = "commit";
const KIND_PROPOSAL: &str = "proposal";
const MAX_FETCH: u32 = 500;
/// Message bytes in one fetch answer; a single message (at most 1 MiB) always fits a frame.
const FETCH_BYTES: usize = 1024 * 1024;
const MAX_KEY_PACKAGES_PER_UPLOAD: usize = 100;

/// The relay's state: one database (SQLite, or PostgreSQL shared by several relays) holding organisation, devices, groups and queues.
pub struct Relay {
    db: Db,
    crypto: RustCrypto,
    fingerprint: String,
    /// This relay among those sharing its database, for their announcements.
    origin: String,
    announcement_key: Option<crate::cluster::AnnouncementKey>,
    blob_dir: PathBuf,
    blob_quota: u64,
    queue_quota: u64,
    /// How long a stored message waits for devices that have not fetched it.
    message_retention_secs: u64,
    limiter: crate::limits::Limiter,
    /// When each device last had its user's other devices woken by a first upload of
    /// KeyPackages: at most once a minute, so a device cannot keep them busy.
    sibling_wakes: std::collections::HashMap<String, std::time::Instant>,
    /// Each group's delivered-up-to mark as last computed: an acknowledgement from a
    /// device ahead of it cannot move it, so only the device holding it back prunes.
    /// Forgotten whenever membership or devices may have changed.
    delivered_marks: std::collections::HashMap<Vec<u8>, i64>,
    /// What each group's next pruning may wait for ([`queue::PruneDebt`]).
    prune_debts: std::collections::HashMap<Vec<u8>, queue::PruneDebt>,
    /// Each group's latest messages, for fetches that need not read SQLite.
    recent: recent::RecentLogs,
    /// Member credentials whose certificate signatures verified, so that a commit to a
    /// large group checks only the leaves it brings.
    verified_credentials: groups::VerifiedCredentials,
    /// Inside a group commit: transactions commit without an fsync until
    /// [`Relay::end_group_commit`] makes all of them durable at once.
    grouped: Option<u64>,
    /// A group commit's sync failed: the next one syncs whatever it holds.
    unsynced: bool,
}

impl Relay {
    /// Opens (creating if needed) the relay's SQLite database at `path`; attachments are
    /// kept in `blobs` beside it.
    pub fn open(path: &Path, fingerprint: String) -> Result<Self, StoreError> {
        let mut backend = SqliteBackend::open(path)?;
        let connection = backend.connection_mut();
        connection.execute_batch(SCHEMA)?;
        crate::schema::migrate(connection)?;
        openmls_sqlite_storage::SqliteStorageProvider::<muster_mls_store::StoreCodec, _>::new(
            connection,
        )
        .run_migrations()
        .map_err(|e| StoreError::Migration(e.to_string()))?;
        let db = Db::new(Box::new(backend));
        // A relay stopped in the middle of a group commit left transactions that may not
        // be on disk yet; they are made durable before anything is answered from them.
        db.end_grouped(true)?;
        let blob_dir = path
            .parent()
            .map(|p| p.join("blobs"))
            .unwrap_or_else(|| PathBuf::from("blobs"));
        Ok(Self::with_db(db, fingerprint, blob_dir))
    }

    /// Opens the relay's state in the PostgreSQL database at `url` (creating its tables
    /// if needed), shared with any other relay of the organisation; attachments are kept
    /// in `blob_dir`, which every relay must reach.
    /// The relay state in a shared database some relay has already set up, for a command
    /// that serves nothing (stats, audit, a bootstrap token): no table is made or changed.
    pub fn attach_postgres(url: &str, blob_dir: PathBuf) -> Result<Self, StoreError> {
        let db = Db::new(Box::new(crate::db::postgres::PostgresBackend::connect(
            url,
        )?));
        if !has_writer_lock(&db)? {
            return Err(StoreError::Corrupt(
                "no relay has set up this database yet: start a relay on it first".into(),
            ));
        }
        Ok(Self::with_db(db, String::new(), blob_dir))
    }

    pub fn open_postgres(
        url: &str,
        fingerprint: String,
        blob_dir: PathBuf,
    ) -> Result<Self, StoreError> {
        let db = Db::new(Box::new(crate::db::postgres::PostgresBackend::connect(
            url,
        )?));
        prepare_postgres(&db)?;
        Ok(Self::with_db(db, fingerprint, blob_dir))
    }

    fn with_db(db: Db, fingerprint: String, blob_dir: PathBuf) -> Self {
        Self {
            db,
            crypto: RustCrypto::default(),
            fingerprint,
            origin: random_token(),
            announcement_key: None,
            blob_dir,
            blob_quota: muster_proto::BLOB_QUOTA_PER_DEVICE,
            queue_quota: muster_proto::QUEUE_QUOTA_PER_DEVICE,
            message_retention_secs: muster_proto::MESSAGE_RETENTION_SECS,
            limiter: Default::default(),
            sibling_wakes: Default::default(),
            delivered_marks: Default::default(),
            prune_debts: Default::default(),
            recent: Default::default(),
            verified_credentials: Default::default(),
            grouped: None,
            unsynced: false,
        }
    }

    /// Whether the relay's state is in PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        self.db.is_postgres()
    }

    /// Forgets what is kept in memory beside the database (recent messages, delivered
    /// marks): after a request failed halfway, they are rebuilt from SQLite.
    pub fn forget_memory(&mut self) {
        self.recent.clear();
        self.delivered_marks.clear();
    }

    /// Starts a group commit: the requests handled until [`Relay::end_group_commit`]
    /// commit without waiting for the disk. Their answers must not leave before that.
    pub fn begin_group_commit(&mut self) -> Result<(), StoreError> {
        self.db.begin_grouped()?;
        self.grouped = Some(self.db.total_changes());
        Ok(())
    }

    /// Makes everything committed since [`Relay::begin_group_commit`] durable with one
    /// fsync of the write-ahead log (a last small transaction with `synchronous=FULL`
    /// syncs every frame before it). Only then may the answers go out.
    pub fn end_group_commit(&mut self) -> Result<(), StoreError> {
        let started = self.grouped.take();
        // On a shared database every answer waits for a flush, even one that wrote
        // nothing: it may hand out what another relay committed and has not flushed yet
        // (a fetch of a new epoch's commit), which a crash of the database would undo.
        let sync = self.unsynced
            || (started.is_some() && self.is_postgres())
            || started.is_some_and(|changes| self.db.total_changes() != changes);
        // Until one succeeds, every group commit syncs: what an earlier one committed
        // is visible (a resend is answered from it) but maybe not yet on disk.
        self.unsynced |= sync;
        self.db.end_grouped(sync)?;
        self.unsynced = false;
        Ok(())
    }

    /// Sets the certificate fingerprint clients pin (a relay of a shared database learns
    /// it from the database after opening it).
    pub fn set_fingerprint(&mut self, fingerprint: String) {
        self.fingerprint = fingerprint;
    }

    /// This relay's name among those sharing its database.
    /// Sets the key announcements to the other relays of a shared database are sealed
    /// with (see [`crate::AnnouncementKey`]).
    pub fn set_announcement_key(&mut self, key: crate::cluster::AnnouncementKey) {
        self.announcement_key = Some(key);
    }

    pub(crate) fn announcement_key(&self) -> Option<&crate::cluster::AnnouncementKey> {
        self.announcement_key.as_ref()
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub(crate) fn db(&self) -> &Db {
        &self.db
    }

    pub(crate) fn db_mut(&mut self) -> &mut Db {
        &mut self.db
    }

    /// Sets how fast one device may send requests and store messages.
    pub fn set_rate_limits(&mut self, limits: crate::limits::RateLimits) {
        self.limiter.limits = limits;
    }

    /// Sets how many encrypted attachment bytes one device may keep on the relay at once.
    pub fn set_blob_quota(&mut self, bytes: u64) {
        self.blob_quota = bytes;
    }

    /// Sets how many message bytes one device may have waiting on the relay for
    /// recipients who have not fetched them yet.
    pub fn set_queue_quota(&mut self, bytes: u64) {
        self.queue_quota = bytes;
    }

    /// Sets how long a stored message waits for devices that have not fetched it.
    pub fn set_message_retention(&mut self, secs: u64) {
        self.message_retention_secs = secs;
    }

    pub(crate) fn blob_quota(&self) -> u64 {
        self.blob_quota
    }

    /// Where encrypted attachment blobs are kept.
    pub fn blob_dir(&self) -> &Path {
        &self.blob_dir
    }

    /// Creates and stores a fresh single-use bootstrap token; valid until an organisation exists.
    pub fn new_bootstrap_token(&self) -> Result<String, StoreError> {
        let token = random_token();
        exec(
            &self.db,
            "INSERT INTO bootstrap_tokens (token_hash, created_at) VALUES (?1, ?2)",
            params![sha256(token.as_bytes()), now_unix() as i64],
        )?;
        Ok(token)
    }

    /// The registered organisation, if any.
    pub fn org(&self) -> Result<Option<OrgDescriptor>, StoreError> {
        load_org(&self.db)
    }

    pub fn stats(&self) -> Result<RelayStats, StoreError> {
        let count = |sql: &str| -> Result<u64, StoreError> {
            Ok(row(&self.db, sql, (), |r| r.get::<_, i64>(0))? as u64)
        };
        Ok(RelayStats {
            devices: count("SELECT COUNT(*) FROM devices WHERE status = 'approved'")?,
            groups: count("SELECT COUNT(*) FROM groups")?,
            pending_enrolments: count("SELECT COUNT(*) FROM devices WHERE status = 'pending'")?,
            stored_messages: count("SELECT COUNT(*) FROM messages")?,
            queued_deliveries: count(
                "SELECT (SELECT COUNT(*) FROM welcomes) + (SELECT COUNT(*) FROM messages m
                   JOIN memberships ms ON ms.group_id = m.group_id
                   JOIN devices d ON d.device_id = ms.device_id AND d.status = 'approved'
                   LEFT JOIN cursors c ON c.device_id = ms.device_id AND c.group_id = m.group_id
                   WHERE m.seq >= ms.from_seq AND (ms.to_seq IS NULL OR m.seq <= ms.to_seq)
                     AND m.seq > COALESCE(c.acked_seq, 0)
                     AND NOT (m.sender_device = ms.device_id AND m.kind = 'application')
                     AND (m.audience IS NULL OR instr(m.audience, char(10) || d.user || char(10)) > 0))",
            )?,
        })
    }

    fn health(&self) -> Outcome {
        let org = self.org();
        Outcome::reply(Response::Health {
            org_registered: matches!(org, Ok(Some(_))),
            storage_ok: org.is_ok(),
        })
    }

    /// Handles a request that needs no authenticated session.
    pub fn handle_anonymous(&mut self, request: Request) -> Outcome {
        let result = match request {
            Request::Bootstrap { token, org, admin } => self.bootstrap(&token, org, admin),
            Request::Enrol { request } => request
                .verify_signatures()
                .map_err(|e| {
                    refuse(
                        ErrorCode::Unauthenticated,
                        format!("enrolment proof refused: {e}"),
                    )
                })
                .and_then(|()| self.enrol(request)),
            Request::Health => Ok(self.health()),
            _ => Err(refuse(
                ErrorCode::Unauthenticated,
                "authenticate the device before this request",
            )),
        };
        finish(result)
    }

    /// Handles a request from an authenticated device.
    pub fn handle(&mut self, session: &Session, request: Request) -> Outcome {
        self.handle_at(session, request, std::time::Instant::now())
    }

    /// Handles a request as of `now` (for the rate limits).
    pub fn handle_at(
        &mut self,
        session: &Session,
        request: Request,
        now: std::time::Instant,
    ) -> Outcome {
        if let Err(e) = self.session_active(session) {
            return Outcome::reply(Response::Error(e));
        }
        let posts = matches!(
            request,
            Request::Send { .. }
                | Request::SendTo { .. }
                | Request::Commit { .. }
                | Request::Propose { .. }
                | Request::RatchetTree { .. }
                | Request::BlobPut { .. }
        );
        if let Err(limited) = self.limiter.admit(&session.device_id, posts, now) {
            let limits = self.limiter.limits;
            let message = match limited {
                crate::limits::Limited::Posts => format!(
                    "rate limit: at most {} messages per second per device (bursts of {}); wait and retry",
                    limits.posts_per_sec, limits.post_burst
                ),
                crate::limits::Limited::Requests => format!(
                    "rate limit: at most {} requests per second per device (bursts of {}); wait and retry",
                    limits.requests_per_sec, limits.request_burst
                ),
            };
            return Outcome::reply(Response::Error(RelayError::new(
                ErrorCode::RateLimited,
                message,
            )));
        }
        match self.db.changed_elsewhere() {
            Ok(false) => {}
            Ok(true) => {
                // Someone else changed the database: memory must not answer for it.
                self.recent.clear();
                self.delivered_marks.clear();
            }
            Err(e) => return finish(Err(e.into())),
        }
        if !matches!(
            request,
            Request::Send { .. }
                | Request::SendTo { .. }
                | Request::Fetch { .. }
                | Request::Ack { .. }
                | Request::Subscribe
        ) {
            // Anything else may change who is in a group or which devices count.
            self.delivered_marks.clear();
        }
        let result = match request {
            Request::MyCertificate => self.my_certificate(session),
            Request::CreateInvite { grant } => self.create_invite(session, grant),
            Request::ListPending => self.list_pending(session),
            Request::Approve { certificate } => self.approve(session, certificate),
            Request::Reject { device_id } => self.reject(session, &device_id),
            Request::Directory => self.directory(),
            Request::UploadKeyPackages {
                key_packages,
                last_resort,
                replace,
            } => self.upload_key_packages(session, key_packages, last_resort, replace),
            Request::KeyPackageCount => self.key_package_count(session),
            Request::ClaimKeyPackages { user, only } => self.claim_key_packages(&user, &only),
            Request::CreateLink { grant } => self.create_link(session, grant),
            Request::MyDevices => self.my_devices(session),
            Request::CreateGroup {
                group_info,
                ratchet_tree,
            } => self.create_group(session, &group_info, &ratchet_tree),
            Request::Commit {
                group_id,
                commit,
                welcome,
                group_info,
            } => self.commit(
                session,
                &group_id,
                &commit,
                welcome.as_deref(),
                group_info.as_deref(),
            ),
            Request::GroupInfo { group_id } => self.group_info(session, &group_id),
            Request::PendingSeats => self.pending_seats(session),
            Request::RatchetTree {
                group_id,
                epoch,
                offset,
            } => self.ratchet_tree(session, &group_id, epoch, offset),
            Request::Propose { group_id, proposal } => self.propose(session, &group_id, &proposal),
            Request::Send {
                group_id,
                message,
                client_id,
            } => self.send(session, &group_id, &message, &client_id, None),
            Request::SendTo {
                group_id,
                message,
                client_id,
                to,
            } => self.send(session, &group_id, &message, &client_id, Some(&to)),
            Request::Fetch { limit } => self.fetch(session, limit),
            Request::Ack { items } => self.ack(session, &items),
            Request::Subscribe => Ok(Outcome {
                stream: Some(crate::push::StreamChange::Subscribe),
                ..Outcome::reply(Response::Ok)
            }),
            Request::Revoke { revocation } => self.revoke(session, revocation),
            Request::Revocations { since } => self.revocations(since),
            Request::Health => Ok(self.health()),
            Request::RequestProfileChange { request } => {
                self.request_profile_change(session, request)
            }
            Request::ListProfileChanges => self.list_profile_changes(session),
            Request::ApproveProfileChange { certificates } => {
                self.approve_profile_change(session, certificates)
            }
            Request::RejectProfileChange { user } => self.reject_profile_change(session, &user),
            Request::ListInvites => self.list_invites(session),
            Request::SetOrgPolicy { policy } => self.set_org_policy(session, policy),
            Request::GetOrgPolicy => {
                load_org_policy(&self.db).map(|p| Outcome::reply(Response::OrgPolicy(p)))
            }
            Request::ConfirmDevice { confirmation } => self.confirm_device(session, confirmation),
            Request::BlobPut {
                blob_id,
                group_id,
                total_size,
                offset,
                data,
            } => self.blob_put(session, &blob_id, &group_id, total_size, offset, &data),
            Request::BlobComplete { blob_id, sha256 } => {
                self.blob_complete(session, &blob_id, &sha256)
            }
            Request::BlobGet {
                blob_id,
                offset,
                max_len,
            } => self.blob_get(session, &blob_id, offset, max_len),
            Request::BlobFetched { blob_id } => self.blob_fetched(session, &blob_id),
            Request::PublishCheckpoint { checkpoint } => {
                self.publish_checkpoint(session, checkpoint)
            }
            Request::ArchiveCheckpoints { since } => self.archive_checkpoints(session, since),
            Request::ReissueCertificates { certificates } => {
                self.reissue_certificates(session, certificates)
            }
            Request::Audit { limit } => self
                .require_admin(session)
                .and_then(|()| Ok(self.audit_events(limit as usize)?))
                .map(|events| Outcome::reply(Response::Audit(events))),
            Request::Bootstrap { .. } | Request::Enrol { .. } => Err(refuse(
                ErrorCode::BadRequest,
                "this connection is already authenticated",
            )),
            Request::Hello { .. } | Request::Prove { .. } => Err(refuse(
                ErrorCode::BadRequest,
                "this connection is already authenticated",
            )),
            Request::MyRevocation => {
                Err(refuse(ErrorCode::BadRequest, "this device is not revoked"))
            }
        };
        finish(result)
    }

    fn require_admin(&self, session: &Session) -> Result<(), Failure> {
        let cert = self.certificate_of_device(&session.device_id)?;
        if cert.is_some_and(|c| c.is_admin()) {
            Ok(())
        } else {
            Err(refuse(
                ErrorCode::Forbidden,
                "only an organisation admin may do this",
            ))
        }
    }

    fn certificate_of_device(&self, device_id: &str) -> Result<Option<Certificate>, Failure> {
        device_certificate(&self.db, device_id)
    }

    fn require_org(&self) -> Result<OrgDescriptor, Failure> {
        load_org(&self.db)?.ok_or_else(|| {
            refuse(
                ErrorCode::NoOrg,
                "no organisation is registered on this relay yet",
            )
        })
    }
}

fn internal(e: StoreError) -> RelayError {
    tracing::error!(error = %e, "relay storage failure");
    #[cfg(test)]
    eprintln!("relay storage failure: {e}");
    RelayError::new(ErrorCode::Internal, "relay storage failure")
}

fn finish(result: Result<Outcome, Failure>) -> Outcome {
    match result {
        Ok(outcome) => outcome,
        Err(Failure::Refuse(e)) => Outcome::reply(Response::Error(e)),
        Err(Failure::Store(e)) => Outcome::reply(Response::Error(internal(e))),
    }
}
