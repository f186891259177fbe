//! Request handling against the relay's SQLite store.

use crate::error::{refuse, Failure, StoreError};
use crate::mls::{certificate_of, JsonCodec, Storage};
use crate::schema::SCHEMA;
use muster_proto::{
    auth_transcript, now_unix, validate_handle, AckItem, AuditEvent, Certificate,
    ClaimedKeyPackage, Delivery, DeviceConfirmation, EnrolmentGrant, EnrolmentRequest, ErrorCode,
    GroupPolicy, InvitePurpose, OpenInvite, OrgDescriptor, OrgPolicy, PendingEnrolment, Profile,
    ProfileChange, ProfileRequest, PublishedCheckpoint, RelayError, Request, Response, Revocation,
    GROUP_POLICY_EXTENSION, MAX_MLS_MESSAGE,
};
use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::*;
use openmls_rust_crypto::RustCrypto;
use ring::signature::{UnparsedPublicKey, ED25519};
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// An authenticated device on a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub device_id: String,
    pub user: String,
}

/// The result of one request: the answer for the requester, the devices to wake, and
/// the devices whose open connections must be closed now.
#[derive(Debug)]
pub struct Outcome {
    pub response: Response,
    pub wake: BTreeSet<String>,
    pub disconnect: BTreeSet<String>,
}

impl Outcome {
    pub(crate) fn reply(response: Response) -> Self {
        Self {
            response,
            wake: BTreeSet::new(),
            disconnect: BTreeSet::new(),
        }
    }

    fn with_wake(response: Response, wake: BTreeSet<String>) -> Self {
        Self {
            response,
            wake,
            disconnect: BTreeSet::new(),
        }
    }
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

/// The relay's state: one SQLite database holding organisation, devices, groups and queues.
pub struct Relay {
    db: Connection,
    crypto: RustCrypto,
    fingerprint: String,
    blob_dir: PathBuf,
    blob_quota: u64,
    queue_quota: u64,
    limiter: crate::limits::Limiter,
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

fn random_token() -> String {
    let mut bytes = [0u8; 24];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("system randomness available");
    hex::encode(bytes)
}

/// Runs a statement through the connection's prepared-statement cache.
fn exec(db: &Connection, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
    db.prepare_cached(sql)?.execute(params)
}

/// Reads one row through the connection's prepared-statement cache.
fn row<T>(
    db: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    db.prepare_cached(sql)?.query_row(params, f)
}

fn parse_protocol_message(bytes: &[u8]) -> Result<ProtocolMessage, Failure> {
    if bytes.len() > MAX_MLS_MESSAGE {
        return Err(refuse(
            ErrorCode::TooLarge,
            format!(
                "message of {} bytes exceeds the {MAX_MLS_MESSAGE}-byte limit",
                bytes.len()
            ),
        ));
    }
    let message = MlsMessageIn::tls_deserialize_exact(bytes).map_err(|e| {
        refuse(
            ErrorCode::InvalidMessage,
            format!("not an MLS message: {e}"),
        )
    })?;
    message.try_into_protocol_message().map_err(|_| {
        refuse(
            ErrorCode::InvalidMessage,
            "expected an MLS PublicMessage or PrivateMessage",
        )
    })
}

impl Relay {
    /// Opens (creating if needed) the relay database at `path`.
    pub fn open(path: &Path, fingerprint: String) -> Result<Self, StoreError> {
        let db = Connection::open(path)?;
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        // WAL with synchronous=FULL: a transaction acknowledged to a client survives power loss.
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "FULL")?;
        db.pragma_update(None, "foreign_keys", "ON")?;
        // Hot pages stay in memory: 64 MiB of page cache, reads through a memory map.
        db.pragma_update(None, "cache_size", -65536)?;
        db.pragma_update(None, "mmap_size", 256 * 1024 * 1024)?;
        db.set_prepared_statement_cache_capacity(128);
        db.execute_batch(SCHEMA)?;
        let mut db = db;
        let mut storage =
            openmls_sqlite_storage::SqliteStorageProvider::<JsonCodec, _>::new(&mut db);
        storage
            .run_migrations()
            .map_err(|e| StoreError::Migration(e.to_string()))?;
        let blob_dir = path
            .parent()
            .map(|p| p.join("blobs"))
            .unwrap_or_else(|| PathBuf::from("blobs"));
        Ok(Self {
            db,
            crypto: RustCrypto::default(),
            fingerprint,
            blob_dir,
            blob_quota: muster_proto::BLOB_QUOTA_PER_DEVICE,
            queue_quota: muster_proto::QUEUE_QUOTA_PER_DEVICE,
            limiter: Default::default(),
        })
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub(crate) fn db(&self) -> &Connection {
        &self.db
    }

    pub(crate) fn db_mut(&mut self) -> &mut Connection {
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

    /// Deletes what waited past its retention: messages some recipient never fetched
    /// (after [`muster_proto::MESSAGE_RETENTION_SECS`]), their resend records, and
    /// expired or abandoned attachment blobs. Returns how many messages went.
    pub fn collect_expired(&mut self) -> Result<usize, StoreError> {
        self.collect_expired_blobs().map_err(|e| match e {
            Failure::Store(e) => e,
            Failure::Refuse(e) => StoreError::Corrupt(e.to_string()),
        })?;
        let cutoff = now_unix().saturating_sub(muster_proto::MESSAGE_RETENTION_SECS) as i64;
        let tx = self
            .db
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        Self::release_queued(
            &tx,
            "SELECT sender_device, SUM(length(data)) FROM messages WHERE stored_at < ?1
             GROUP BY sender_device",
            params![cutoff],
        )?;
        let deleted = exec(
            &tx,
            "DELETE FROM messages WHERE stored_at < ?1",
            params![cutoff],
        )?;
        exec(
            &tx,
            "DELETE FROM sent_ids WHERE stored_at < ?1",
            params![cutoff],
        )?;
        tx.commit()?;
        Ok(deleted)
    }

    /// Subtracts from each sender's queued bytes the sums that `select` returns.
    fn release_queued(
        tx: &Transaction,
        select: &str,
        params: impl rusqlite::Params,
    ) -> Result<(), rusqlite::Error> {
        let sums: Vec<(String, i64)> = tx
            .prepare_cached(select)?
            .query_map(params, |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        for (device, bytes) in sums {
            exec(
                tx,
                "UPDATE queued_bytes SET bytes = MAX(0, bytes - ?2) WHERE device_id = ?1",
                params![device, bytes],
            )?;
        }
        Ok(())
    }

    /// Deletes a group's messages that every device still in it (and every removed device
    /// still owed messages) has acknowledged.
    fn prune_delivered(tx: &Transaction, group_id: &[u8]) -> Result<(), Failure> {
        let waiting: Option<i64> = row(
            tx,
            "SELECT MIN(COALESCE(c.acked_seq, ms.from_seq - 1)) FROM memberships ms
               JOIN devices d ON d.device_id = ms.device_id AND d.status = 'approved'
               LEFT JOIN cursors c ON c.device_id = ms.device_id AND c.group_id = ms.group_id
             WHERE ms.group_id = ?1
               AND (ms.to_seq IS NULL OR COALESCE(c.acked_seq, ms.from_seq - 1) < ms.to_seq)",
            params![group_id],
            |r| r.get(0),
        )?;
        let delivered_up_to = match waiting {
            Some(seq) => seq,
            None => Self::group_state(tx, group_id)?.1 as i64,
        };
        Self::release_queued(
            tx,
            "SELECT sender_device, SUM(length(data)) FROM messages WHERE group_id = ?1 AND seq <= ?2
             GROUP BY sender_device",
            params![group_id, delivered_up_to],
        )?;
        exec(
            tx,
            "DELETE FROM messages WHERE group_id = ?1 AND seq <= ?2",
            params![group_id, delivered_up_to],
        )?;
        Ok(())
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
            Ok(row(&self.db, sql, [], |r| r.get::<_, i64>(0))? as u64)
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
                     AND NOT (m.sender_device = ms.device_id AND m.kind = 'application'))",
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

    /// The latest `limit` audit events, oldest first.
    pub fn audit_events(&self, limit: usize) -> Result<Vec<AuditEvent>, StoreError> {
        let mut stmt = self.db.prepare_cached(
            "SELECT at, event, actor, subject, group_id FROM
               (SELECT * FROM audit ORDER BY id DESC LIMIT ?1) ORDER BY id",
        )?;
        let events = stmt
            .query_map([limit.min(100_000) as i64], |r| {
                Ok(AuditEvent {
                    at: r.get::<_, i64>(0)? as u64,
                    event: r.get(1)?,
                    actor: r.get(2)?,
                    subject: r.get(3)?,
                    group: r.get(4)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(events)
    }

    /// Issues a fresh challenge nonce for a device that says hello.
    pub fn challenge(&self) -> Vec<u8> {
        challenge_nonce()
    }

    /// Checks a device's signature over the challenge and its enrolment status.
    pub fn authenticate(
        &self,
        device_key: &[u8],
        nonce: &[u8],
        signature: &[u8],
    ) -> Result<Session, RelayError> {
        verify_challenge(&self.fingerprint, device_key, nonce, signature)?;
        self.authenticate_proven(device_key)
    }

    /// The session of a device that has proved it holds `device_key` (see
    /// [`verify_challenge`]), if its enrolment allows one.
    pub fn authenticate_proven(&self, device_key: &[u8]) -> Result<Session, RelayError> {
        let device_id = muster_proto::device_id_for(device_key);
        let row: Option<(String, String)> = row(
            &self.db,
            "SELECT user, status FROM devices WHERE device_id = ?1",
            [&device_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(|e| internal(e.into()))?;
        let (user, status) = row.ok_or_else(|| {
            RelayError::new(
                ErrorCode::UnknownDevice,
                "this device is not enrolled with the relay",
            )
        })?;
        check_status(&status)?;
        record(&self.db, "login", &user, &device_id, None).map_err(|e| match e {
            Failure::Store(e) => internal(e),
            Failure::Refuse(e) => e,
        })?;
        Ok(Session { device_id, user })
    }

    /// Whether a device may still use its session (it may have been revoked since).
    pub fn session_active(&self, session: &Session) -> Result<(), RelayError> {
        let status: Option<String> = row(
            &self.db,
            "SELECT status FROM devices WHERE device_id = ?1",
            [&session.device_id],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| internal(e.into()))?;
        match status {
            Some(s) => check_status(&s),
            None => Err(RelayError::new(ErrorCode::UnknownDevice, "unknown device")),
        }
    }

    /// Handles an enrolment whose signatures were already checked (see
    /// [`muster_proto::EnrolmentRequest::verify_signatures`]).
    pub fn enrol_prechecked(&mut self, request: EnrolmentRequest) -> Outcome {
        finish(self.enrol(request))
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
                | Request::Commit { .. }
                | Request::Propose { .. }
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
            Request::Propose { group_id, proposal } => self.propose(session, &group_id, &proposal),
            Request::Send {
                group_id,
                message,
                client_id,
            } => self.send(session, &group_id, &message, &client_id),
            Request::Fetch { limit } => self.fetch(session, limit),
            Request::Ack { items } => self.ack(session, &items),
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

    fn bootstrap(
        &mut self,
        token: &str,
        org: OrgDescriptor,
        admin: Certificate,
    ) -> Result<Outcome, Failure> {
        let tx = self
            .db
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        if load_org(&tx)?.is_some() {
            return Err(refuse(
                ErrorCode::OrgExists,
                "an organisation is already registered on this relay",
            ));
        }
        let found = exec(
            &tx,
            "DELETE FROM bootstrap_tokens WHERE token_hash = ?1",
            [sha256(token.as_bytes())],
        )?;
        if found == 0 {
            return Err(refuse(
                ErrorCode::InvalidToken,
                "bootstrap token is not valid (already used, or never issued by this relay)",
            ));
        }
        if org.root_public_key.len() != 32 || org.name.trim().is_empty() {
            return Err(refuse(
                ErrorCode::BadRequest,
                "organisation needs a name and an Ed25519 root key",
            ));
        }
        admin
            .verify(&org, now_unix())
            .map_err(|e| refuse(ErrorCode::InvalidCertificate, e.to_string()))?;
        if !admin.is_admin() {
            return Err(refuse(
                ErrorCode::InvalidCertificate,
                "the first device must hold the admin role",
            ));
        }
        let org_bytes = serde_json::to_vec(&org).expect("descriptor serialises");
        exec(&tx, "DELETE FROM bootstrap_tokens", [])?;
        exec(
            &tx,
            "INSERT INTO meta (key, value) VALUES ('org', ?1)",
            [org_bytes],
        )?;
        insert_device(
            &tx,
            &admin.body.user,
            &admin.body.device_key,
            &admin.body.profile,
            STATUS_APPROVED,
            Some(&admin),
        )?;
        record(&tx, "org_registered", &admin.body.user, &org.name, None)?;
        tx.commit()?;
        tracing::info!(org = %org.org_id, admin = %admin.body.user, "organisation registered");
        Ok(Outcome::reply(Response::Ok))
    }

    fn enrol(&mut self, request: EnrolmentRequest) -> Result<Outcome, Failure> {
        let org = self.require_org()?;
        check_profile(&request.body.profile)?;
        if request.body.device_key.len() != 32 {
            return Err(refuse(
                ErrorCode::BadRequest,
                "device key must be an Ed25519 public key",
            ));
        }
        let token_hash = sha256(&request.body.code_key);
        let tx = self
            .db
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let invite: Option<(String, i64, Option<i64>, Vec<u8>)> = row(
            &tx,
            "SELECT i.user, i.expires_at, i.used_at, g.grant_data FROM invites i
             JOIN invite_grants g ON g.token_hash = i.token_hash WHERE i.token_hash = ?1",
            [&token_hash],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
        let Some((user, expires_at, used_at, grant)) = invite else {
            return Err(refuse(
                ErrorCode::InvalidToken,
                "invite code is not known to this relay",
            ));
        };
        if used_at.is_some() {
            return Err(refuse(ErrorCode::TokenUsed, "invite code was already used"));
        }
        if (expires_at as u64) < now_unix() {
            return Err(refuse(ErrorCode::TokenExpired, "invite code has expired"));
        }
        let grant: EnrolmentGrant = serde_json::from_slice(&grant)
            .map_err(|_| Failure::Store(StoreError::Corrupt("stored invite grant".into())))?;
        // Admins check this again before they sign; checking here keeps junk out. The
        // signatures were checked before the request reached the relay's lock.
        request.matches(&grant).map_err(|e| {
            refuse(
                ErrorCode::Unauthenticated,
                format!("enrolment proof refused: {e}"),
            )
        })?;
        if request.body.user != user || request.body.org_id != org.org_id {
            return Err(refuse(
                ErrorCode::BadRequest,
                "enrolment does not match its invite",
            ));
        }
        let device_id = request.device_id();
        let exists: bool = row(
            &tx,
            "SELECT 1 FROM devices WHERE device_id = ?1",
            [&device_id],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
        if exists {
            return Err(refuse(
                ErrorCode::BadRequest,
                "this device key is already enrolled",
            ));
        }
        exec(
            &tx,
            "UPDATE invites SET used_at = ?2 WHERE token_hash = ?1",
            params![token_hash, now_unix() as i64],
        )?;
        insert_device(
            &tx,
            &user,
            &request.body.device_key,
            &request.body.profile,
            STATUS_PENDING,
            None,
        )?;
        exec(
            &tx,
            "INSERT INTO enrolment_proofs (device_id, grant_data, request) VALUES (?1, ?2, ?3)",
            params![
                device_id,
                serde_json::to_vec(&grant).expect("grant serialises"),
                serde_json::to_vec(&request).expect("request serialises")
            ],
        )?;
        record(
            &tx,
            "enrolment_requested",
            &user,
            &format!("{user} ({device_id})"),
            None,
        )?;
        tx.commit()?;
        tracing::info!(%user, %device_id, "enrolment requested");
        Ok(Outcome::reply(Response::EnrolmentSubmitted { device_id }))
    }

    /// Files a code's grant after checking that this device made it, as it may.
    fn file_grant(
        &mut self,
        session: &Session,
        grant: &EnrolmentGrant,
        purpose: InvitePurpose,
    ) -> Result<(), Failure> {
        let org = self.require_org()?;
        grant
            .verify(&org, now_unix())
            .map_err(|e| refuse(ErrorCode::InvalidCertificate, format!("code: {e}")))?;
        let body = &grant.body;
        if grant.issuer.body.device_id != session.device_id || body.purpose != purpose {
            return Err(refuse(
                ErrorCode::BadRequest,
                "a code must be signed by the device that files it",
            ));
        }
        validate_handle(&body.user).map_err(|e| refuse(ErrorCode::BadRequest, e.to_string()))?;
        if body.code_key.len() != 32 {
            return Err(refuse(
                ErrorCode::BadRequest,
                "code key must be an Ed25519 public key",
            ));
        }
        if body.expires_at <= now_unix() {
            return Err(refuse(
                ErrorCode::BadRequest,
                "code would already be expired",
            ));
        }
        let token_hash = sha256(&body.code_key);
        let tx = self
            .db
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        exec(&tx,
            "INSERT INTO invites (token_hash, user, created_by, expires_at, kind) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                token_hash,
                body.user,
                session.user,
                body.expires_at as i64,
                if purpose == InvitePurpose::LinkDevice { "link" } else { "user" }
            ],
        )?;
        exec(
            &tx,
            "INSERT INTO invite_grants (token_hash, grant_data) VALUES (?1, ?2)",
            params![
                token_hash,
                serde_json::to_vec(grant).expect("grant serialises")
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn my_certificate(&self, session: &Session) -> Result<Outcome, Failure> {
        let cert = self
            .certificate_of_device(&session.device_id)?
            .ok_or_else(|| refuse(ErrorCode::EnrolmentPending, "no certificate issued yet"))?;
        Ok(Outcome::reply(Response::Certificate(cert)))
    }

    fn create_invite(
        &mut self,
        session: &Session,
        grant: EnrolmentGrant,
    ) -> Result<Outcome, Failure> {
        self.require_admin(session)?;
        self.file_grant(session, &grant, InvitePurpose::NewUser)?;
        record(
            &self.db,
            "invite_created",
            &session.user,
            &grant.body.user,
            None,
        )?;
        Ok(Outcome::reply(Response::Ok))
    }

    fn list_pending(&self, session: &Session) -> Result<Outcome, Failure> {
        self.require_admin(session)?;
        let mut stmt = self.db.prepare_cached(
            "SELECT d.user, d.device_id, d.device_key, d.profile, d.requested_at,
                    EXISTS (SELECT 1 FROM devices o WHERE o.user = d.user AND o.status = 'approved'),
                    p.grant_data, p.request, p.confirmation
             FROM devices d LEFT JOIN enrolment_proofs p ON p.device_id = d.device_id
             WHERE d.status = 'pending' ORDER BY d.requested_at, d.device_id",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    (
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                        r.get::<_, Vec<u8>>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, bool>(5)?,
                    ),
                    (
                        r.get::<_, Option<Vec<u8>>>(6)?,
                        r.get::<_, Option<Vec<u8>>>(7)?,
                        r.get::<_, Option<Vec<u8>>>(8)?,
                    ),
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        fn decode<T: serde::de::DeserializeOwned>(bytes: Option<Vec<u8>>) -> Option<T> {
            bytes.and_then(|b| serde_json::from_slice(&b).ok())
        }
        let pending = rows
            .into_iter()
            .map(
                |(
                    (user, device_id, device_key, profile, requested_at, linked),
                    (grant, request, confirmation),
                )| PendingEnrolment {
                    user,
                    linked,
                    device_id,
                    device_key,
                    profile: serde_json::from_slice(&profile).unwrap_or_default(),
                    requested_at: requested_at as u64,
                    grant: decode(grant),
                    request: decode(request),
                    confirmation: decode(confirmation),
                },
            )
            .collect();
        Ok(Outcome::reply(Response::Pending(pending)))
    }

    fn approve(&mut self, session: &Session, cert: Certificate) -> Result<Outcome, Failure> {
        self.require_admin(session)?;
        let org = self.require_org()?;
        cert.verify(&org, now_unix())
            .map_err(|e| refuse(ErrorCode::InvalidCertificate, e.to_string()))?;
        let tx = self
            .db
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let row: Option<(String, Vec<u8>, String)> = row(
            &tx,
            "SELECT user, device_key, status FROM devices WHERE device_id = ?1",
            [&cert.body.device_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
        let Some((user, key, status)) = row else {
            return Err(refuse(
                ErrorCode::UnknownDevice,
                "no enrolment request for this device",
            ));
        };
        if status != STATUS_PENDING {
            return Err(refuse(
                ErrorCode::BadRequest,
                format!("enrolment is not pending (it is {status})"),
            ));
        }
        if user != cert.body.user || key != cert.body.device_key {
            return Err(refuse(
                ErrorCode::InvalidCertificate,
                "certificate does not match the enrolment request",
            ));
        }
        exec(&tx,
            "UPDATE devices SET status = 'approved', certificate = ?2, decided_at = ?3 WHERE device_id = ?1",
            params![cert.body.device_id, cert.to_bytes(), now_unix() as i64],
        )?;
        record(
            &tx,
            "enrolment_approved",
            &session.user,
            &format!("{} ({})", cert.body.user, cert.body.device_id),
            None,
        )?;
        tx.commit()?;
        tracing::info!(user = %cert.body.user, device = %cert.body.device_id, "enrolment approved");
        Ok(Outcome::reply(Response::Ok))
    }

    fn reject(&mut self, session: &Session, device_id: &str) -> Result<Outcome, Failure> {
        self.require_admin(session)?;
        let changed = exec(&self.db,
            "UPDATE devices SET status = 'rejected', decided_at = ?2 WHERE device_id = ?1 AND status = 'pending'",
            params![device_id, now_unix() as i64],
        )?;
        if changed == 0 {
            return Err(refuse(
                ErrorCode::UnknownDevice,
                "no pending enrolment request for this device",
            ));
        }
        record(
            &self.db,
            "enrolment_rejected",
            &session.user,
            device_id,
            None,
        )?;
        Ok(Outcome::reply(Response::Ok))
    }

    fn revoke(&mut self, session: &Session, revocation: Revocation) -> Result<Outcome, Failure> {
        self.require_admin(session)?;
        let org = self.require_org()?;
        revocation
            .verify(&org)
            .map_err(|e| refuse(ErrorCode::InvalidCertificate, format!("revocation: {e}")))?;
        let body = &revocation.body;
        if body.device_ids.is_empty() {
            return Err(refuse(ErrorCode::BadRequest, "revocation names no device"));
        }
        let expected = self.last_revocation_serial()? + 1;
        if body.serial != expected {
            return Err(refuse(
                ErrorCode::BadRequest,
                format!(
                    "revocation number {} does not follow the organisation's sequence: the next is {expected}",
                    body.serial
                ),
            ));
        }
        if body.device_ids.contains(&session.device_id) {
            return Err(refuse(
                ErrorCode::BadRequest,
                "an admin cannot revoke the device it is using",
            ));
        }
        let tx = self
            .db
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut wake = BTreeSet::new();
        for device in &body.device_ids {
            let owner: Option<String> = row(
                &tx,
                "SELECT user FROM devices WHERE device_id = ?1",
                [device],
                |r| r.get(0),
            )
            .optional()?;
            if owner.as_deref() != Some(body.user.as_str()) {
                return Err(refuse(
                    ErrorCode::UnknownDevice,
                    format!("{} has no device {device}", body.user),
                ));
            }
            exec(
                &tx,
                "UPDATE devices SET status = 'revoked', decided_at = ?2 WHERE device_id = ?1",
                params![device, now_unix() as i64],
            )?;
            exec(
                &tx,
                "DELETE FROM key_packages WHERE device_id = ?1",
                [device],
            )?;
            record(
                &tx,
                "device_revoked",
                &session.user,
                &format!("{} ({device})", body.user),
                None,
            )?;
            let mut stmt = tx.prepare_cached(
                "SELECT DISTINCT other.device_id FROM memberships mine
                 JOIN memberships other ON other.group_id = mine.group_id AND other.to_seq IS NULL
                 WHERE mine.device_id = ?1 AND mine.to_seq IS NULL",
            )?;
            for row in stmt.query_map([device], |r| r.get::<_, String>(0))? {
                wake.insert(row?);
            }
        }
        exec(
            &tx,
            "INSERT INTO revocations (user, data, at) VALUES (?1, ?2, ?3)",
            params![
                body.user,
                serde_json::to_vec(&revocation).expect("serialises"),
                now_unix() as i64
            ],
        )?;
        tx.commit()?;
        let disconnect: BTreeSet<String> = body.device_ids.iter().cloned().collect();
        wake.retain(|d| !disconnect.contains(d));
        tracing::info!(user = %body.user, devices = disconnect.len(), "devices revoked");
        Ok(Outcome {
            response: Response::Ok,
            wake,
            disconnect,
        })
    }

    /// The highest number in the organisation's sequence of revocations (0 for none).
    fn last_revocation_serial(&self) -> Result<u64, Failure> {
        let mut stmt = self.db.prepare_cached("SELECT data FROM revocations")?;
        let mut last = 0;
        for data in stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))? {
            if let Ok(r) = serde_json::from_slice::<Revocation>(&data?) {
                last = last.max(r.body.serial);
            }
        }
        Ok(last)
    }

    /// Keeps a checkpoint an archive device signed, so its history is pinned outside its
    /// host; a second, different checkpoint for the same entry is refused (and audited).
    fn publish_checkpoint(
        &mut self,
        session: &Session,
        checkpoint: PublishedCheckpoint,
    ) -> Result<Outcome, Failure> {
        let cert = self
            .certificate_of_device(&session.device_id)?
            .filter(|c| c.is_archive())
            .ok_or_else(|| {
                refuse(
                    ErrorCode::Forbidden,
                    "only an archive device publishes checkpoints",
                )
            })?;
        if checkpoint.device_id != session.device_id {
            return Err(refuse(
                ErrorCode::BadRequest,
                "a checkpoint must be published by the archive that signed it",
            ));
        }
        let seq = i64::try_from(checkpoint.entry_seq)
            .map_err(|_| refuse(ErrorCode::BadRequest, "checkpoint entry out of range"))?;
        UnparsedPublicKey::new(&ED25519, &cert.body.device_key)
            .verify(
                &muster_proto::archive_checkpoint_payload(seq, &checkpoint.hash),
                &checkpoint.signature,
            )
            .map_err(|_| {
                refuse(
                    ErrorCode::InvalidCertificate,
                    "checkpoint signature does not verify for this archive device",
                )
            })?;
        let existing: Option<Vec<u8>> = row(
            &self.db,
            "SELECT hash FROM archive_checkpoints WHERE device_id = ?1 AND entry_seq = ?2",
            params![session.device_id, seq],
            |r| r.get(0),
        )
        .optional()?;
        match existing {
            Some(hash) if hash == checkpoint.hash => {}
            Some(_) => {
                record(
                    &self.db,
                    "archive_checkpoint_conflict",
                    &session.user,
                    &format!("entry {seq}"),
                    None,
                )?;
                return Err(refuse(
                    ErrorCode::Forbidden,
                    format!("the archive already published a different checkpoint for entry {seq}"),
                ));
            }
            None => {
                exec(
                    &self.db,
                    "INSERT INTO archive_checkpoints (device_id, entry_seq, hash, signed_at, signature)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![
                        session.device_id,
                        seq,
                        checkpoint.hash,
                        checkpoint.signed_at,
                        checkpoint.signature
                    ],
                )?;
            }
        }
        Ok(Outcome::reply(Response::Ok))
    }

    fn archive_checkpoints(&self, session: &Session, since: u64) -> Result<Outcome, Failure> {
        let allowed = self
            .certificate_of_device(&session.device_id)?
            .is_some_and(|c| c.is_admin() || c.is_archive());
        if !allowed {
            return Err(refuse(
                ErrorCode::Forbidden,
                "only admins and archive devices read archive checkpoints",
            ));
        }
        let mut stmt = self.db.prepare_cached(
            "SELECT id, device_id, entry_seq, hash, signed_at, signature FROM archive_checkpoints
             WHERE id > ?1 ORDER BY id LIMIT 1000",
        )?;
        let rows = stmt
            .query_map([since.min(i64::MAX as u64) as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    PublishedCheckpoint {
                        device_id: r.get(1)?,
                        entry_seq: r.get::<_, i64>(2)? as u64,
                        hash: r.get(3)?,
                        signed_at: r.get(4)?,
                        signature: r.get(5)?,
                    },
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Outcome::reply(Response::ArchiveCheckpoints(rows)))
    }

    fn revocations(&self, since: u64) -> Result<Outcome, Failure> {
        let mut stmt = self.db.prepare_cached(
            "SELECT id, data FROM revocations WHERE id > ?1 ORDER BY id LIMIT 500",
        )?;
        let rows = stmt
            .query_map([since.min(i64::MAX as u64) as i64], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut out = Vec::with_capacity(rows.len());
        for (id, data) in rows {
            let revocation: Revocation = serde_json::from_slice(&data)
                .map_err(|_| Failure::Store(StoreError::Corrupt("stored revocation".into())))?;
            out.push((id, revocation));
        }
        Ok(Outcome::reply(Response::Revocations(out)))
    }

    fn request_profile_change(
        &mut self,
        session: &Session,
        request: ProfileRequest,
    ) -> Result<Outcome, Failure> {
        let org = self.require_org()?;
        check_profile(&request.body.profile)?;
        request.verify(&org, now_unix()).map_err(|e| {
            refuse(
                ErrorCode::InvalidCertificate,
                format!("profile request: {e}"),
            )
        })?;
        if request.requester.body.device_id != session.device_id {
            return Err(refuse(
                ErrorCode::BadRequest,
                "a profile request must be signed by the device that sends it",
            ));
        }
        exec(&self.db,
            "INSERT INTO profile_requests (user, profile, requested_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (user) DO UPDATE SET profile = excluded.profile, requested_at = excluded.requested_at",
            params![
                session.user,
                serde_json::to_vec(&request).expect("request serialises"),
                now_unix() as i64
            ],
        )?;
        record(
            &self.db,
            "profile_change_requested",
            &session.user,
            &session.user,
            None,
        )?;
        Ok(Outcome::reply(Response::Ok))
    }

    fn list_profile_changes(&self, session: &Session) -> Result<Outcome, Failure> {
        self.require_admin(session)?;
        let mut stmt = self.db.prepare_cached(
            "SELECT r.user, r.profile, r.requested_at,
                    (SELECT d.certificate FROM devices d WHERE d.user = r.user AND d.status = 'approved' LIMIT 1)
             FROM profile_requests r ORDER BY r.requested_at, r.user",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Option<Vec<u8>>>(3)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let changes = rows
            .into_iter()
            .filter_map(|(user, requested, at, cert)| {
                let request: ProfileRequest = serde_json::from_slice(&requested).ok()?;
                Some(ProfileChange {
                    user,
                    current: cert
                        .and_then(|c| Certificate::from_bytes(&c).ok())
                        .map(|c| c.body.profile)
                        .unwrap_or_default(),
                    requested: request.body.profile.clone(),
                    requested_at: at as u64,
                    request: Some(request),
                })
            })
            .collect();
        Ok(Outcome::reply(Response::ProfileChanges(changes)))
    }

    fn approve_profile_change(
        &mut self,
        session: &Session,
        certificates: Vec<Certificate>,
    ) -> Result<Outcome, Failure> {
        self.require_admin(session)?;
        let org = self.require_org()?;
        let tx = self
            .db
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let user = certificates
            .first()
            .map(|c| c.body.user.clone())
            .unwrap_or_default();
        let requested: Profile = row(
            &tx,
            "SELECT profile FROM profile_requests WHERE user = ?1",
            [&user],
            |r| r.get::<_, Vec<u8>>(0),
        )
        .optional()?
        .and_then(|p| serde_json::from_slice::<ProfileRequest>(&p).ok())
        .map(|r| r.body.profile)
        .ok_or_else(|| {
            refuse(
                ErrorCode::BadRequest,
                format!("{user:?} has no pending profile change"),
            )
        })?;
        replace_user_certificates(&tx, &org, &certificates, |new, old| {
            new.body.profile == requested && new.body.roles == old.body.roles
        })?;
        exec(&tx, "DELETE FROM profile_requests WHERE user = ?1", [&user])?;
        record(&tx, "profile_change_approved", &session.user, &user, None)?;
        tx.commit()?;
        Ok(Outcome::reply(Response::Ok))
    }

    fn reject_profile_change(&mut self, session: &Session, user: &str) -> Result<Outcome, Failure> {
        self.require_admin(session)?;
        let changed = exec(
            &self.db,
            "DELETE FROM profile_requests WHERE user = ?1",
            [user],
        )?;
        if changed == 0 {
            return Err(refuse(
                ErrorCode::BadRequest,
                format!("{user} has no pending profile change"),
            ));
        }
        record(
            &self.db,
            "profile_change_rejected",
            &session.user,
            user,
            None,
        )?;
        Ok(Outcome::reply(Response::Ok))
    }

    fn set_org_policy(&mut self, session: &Session, policy: OrgPolicy) -> Result<Outcome, Failure> {
        self.require_admin(session)?;
        let org = self.require_org()?;
        policy
            .verify(&org)
            .map_err(|e| refuse(ErrorCode::InvalidCertificate, format!("policy: {e}")))?;
        if let Some(current) = load_org_policy(&self.db)?.filter(|p| p.verify(&org).is_ok()) {
            if policy.body.version <= current.body.version {
                return Err(refuse(
                    ErrorCode::BadRequest,
                    format!(
                        "policy version {} is not newer than version {} in force",
                        policy.body.version, current.body.version
                    ),
                ));
            }
        }
        exec(
            &self.db,
            "INSERT INTO meta (key, value) VALUES ('org_policy', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [serde_json::to_vec(&policy).expect("policy serialises")],
        )?;
        record(
            &self.db,
            "org_policy_changed",
            &session.user,
            &org.name,
            None,
        )?;
        Ok(Outcome::reply(Response::Ok))
    }

    fn confirm_device(
        &mut self,
        session: &Session,
        confirmation: DeviceConfirmation,
    ) -> Result<Outcome, Failure> {
        let org = self.require_org()?;
        let allowed = load_org_policy(&self.db)?
            .filter(|p| p.verify(&org).is_ok())
            .is_some_and(|p| p.body.device_self_approval);
        if !allowed {
            return Err(refuse(
                ErrorCode::Forbidden,
                "the organisation's policy requires an admin to approve new devices",
            ));
        }
        let device_id = confirmation.body.device_id.clone();
        if confirmation.confirmer.body.device_id != session.device_id
            || confirmation.body.user != session.user
        {
            return Err(refuse(
                ErrorCode::UnknownDevice,
                format!("{} has no pending new device {device_id}", session.user),
            ));
        }
        confirmation
            .verify(&org, now_unix())
            .map_err(|e| refuse(ErrorCode::InvalidCertificate, format!("confirmation: {e}")))?;
        let changed = exec(
            &self.db,
            "UPDATE enrolment_proofs SET confirmation = ?3
             WHERE device_id = ?1 AND device_id IN
               (SELECT device_id FROM devices WHERE user = ?2 AND status = 'pending')",
            params![
                device_id,
                session.user,
                serde_json::to_vec(&confirmation).expect("confirmation serialises")
            ],
        )?;
        if changed == 0 {
            return Err(refuse(
                ErrorCode::UnknownDevice,
                format!("{} has no pending new device {device_id}", session.user),
            ));
        }
        record(
            &self.db,
            "device_confirmed",
            &session.user,
            &format!("{} ({device_id})", session.user),
            None,
        )?;
        // Wake admin devices so one issues the certificate promptly.
        let mut wake = BTreeSet::new();
        let mut stmt = self.db.prepare_cached(
            "SELECT device_id, certificate FROM devices WHERE status = 'approved' AND certificate IS NOT NULL",
        )?;
        for row in stmt.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
        })? {
            let (device, cert) = row?;
            if Certificate::from_bytes(&cert).is_ok_and(|c| c.is_admin()) {
                wake.insert(device);
            }
        }
        Ok(Outcome::with_wake(Response::Ok, wake))
    }

    fn list_invites(&self, session: &Session) -> Result<Outcome, Failure> {
        self.require_admin(session)?;
        let mut stmt = self.db.prepare_cached(
            "SELECT user, expires_at, kind FROM invites
             WHERE used_at IS NULL AND expires_at >= ?1 ORDER BY user, expires_at",
        )?;
        let invites = stmt
            .query_map([now_unix() as i64], |r| {
                Ok(OpenInvite {
                    user: r.get(0)?,
                    expires_at: r.get::<_, i64>(1)? as u64,
                    link: r.get::<_, String>(2)? == "link",
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Outcome::reply(Response::Invites(invites)))
    }

    fn reissue_certificates(
        &mut self,
        session: &Session,
        certificates: Vec<Certificate>,
    ) -> Result<Outcome, Failure> {
        self.require_admin(session)?;
        let org = self.require_org()?;
        let tx = self
            .db
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let before = match certificates.first() {
            Some(c) => device_certificate(&tx, &c.body.device_id)?,
            None => None,
        };
        let user = replace_user_certificates(&tx, &org, &certificates, |_, _| true)?;
        // A new profile settles the user's pending request; a renewal keeps it waiting.
        let renewal = before.is_some_and(|old| {
            certificates
                .iter()
                .all(|c| c.body.profile == old.body.profile)
        });
        if !renewal {
            exec(&tx, "DELETE FROM profile_requests WHERE user = ?1", [&user])?;
        }
        record(&tx, "certificates_reissued", &session.user, &user, None)?;
        tx.commit()?;
        Ok(Outcome::reply(Response::Ok))
    }

    fn directory(&self) -> Result<Outcome, Failure> {
        let mut stmt = self.db.prepare_cached(
            "SELECT certificate FROM devices WHERE status = 'approved' ORDER BY user, device_id",
        )?;
        let certs = stmt
            .query_map([], |r| r.get::<_, Vec<u8>>(0))?
            .collect::<Result<Vec<_>, _>>()?
            .iter()
            .filter_map(|b| Certificate::from_bytes(b).ok())
            .collect();
        Ok(Outcome::reply(Response::Directory(certs)))
    }

    fn validate_key_package(&self, session: &Session, bytes: &[u8]) -> Result<bool, Failure> {
        let bad = |why: String| refuse(ErrorCode::InvalidMessage, format!("KeyPackage: {why}"));
        let kp = KeyPackageIn::tls_deserialize_exact(bytes)
            .map_err(|e| bad(e.to_string()))?
            .validate(&self.crypto, ProtocolVersion::Mls10)
            .map_err(|e| bad(e.to_string()))?;
        let cert = certificate_of(kp.leaf_node().credential())
            .ok_or_else(|| bad("credential carries no certificate".into()))?;
        if cert.body.device_id != session.device_id
            || kp.leaf_node().signature_key().as_slice() != cert.body.device_key.as_slice()
        {
            return Err(bad("it does not belong to this device".into()));
        }
        Ok(kp.last_resort())
    }

    fn upload_key_packages(
        &mut self,
        session: &Session,
        key_packages: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
        replace: bool,
    ) -> Result<Outcome, Failure> {
        if key_packages.len() > MAX_KEY_PACKAGES_PER_UPLOAD {
            return Err(refuse(
                ErrorCode::TooLarge,
                format!("at most {MAX_KEY_PACKAGES_PER_UPLOAD} KeyPackages per upload"),
            ));
        }
        for kp in &key_packages {
            self.validate_key_package(session, kp)?;
        }
        if let Some(kp) = &last_resort {
            if !self.validate_key_package(session, kp)? {
                return Err(refuse(
                    ErrorCode::InvalidMessage,
                    "last-resort KeyPackage is not marked as last resort",
                ));
            }
        }
        let tx = self
            .db
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        if replace {
            exec(
                &tx,
                "DELETE FROM key_packages WHERE device_id = ?1",
                [&session.device_id],
            )?;
        }
        for kp in &key_packages {
            exec(
                &tx,
                "INSERT INTO key_packages (device_id, data, last_resort) VALUES (?1, ?2, 0)",
                params![session.device_id, kp],
            )?;
        }
        if let Some(kp) = &last_resort {
            exec(
                &tx,
                "DELETE FROM key_packages WHERE device_id = ?1 AND last_resort = 1",
                [&session.device_id],
            )?;
            exec(
                &tx,
                "INSERT INTO key_packages (device_id, data, last_resort) VALUES (?1, ?2, 1)",
                params![session.device_id, kp],
            )?;
        }
        tx.commit()?;
        Ok(Outcome::reply(Response::Ok))
    }

    fn key_package_count(&self, session: &Session) -> Result<Outcome, Failure> {
        let (available, last): (i64, i64) = row(
            &self.db,
            "SELECT COALESCE(SUM(last_resort = 0), 0), COALESCE(SUM(last_resort = 1), 0)
             FROM key_packages WHERE device_id = ?1",
            [&session.device_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(Outcome::reply(Response::KeyPackageCount {
            available: available as u32,
            has_last_resort: last > 0,
        }))
    }

    fn create_link(
        &mut self,
        session: &Session,
        grant: EnrolmentGrant,
    ) -> Result<Outcome, Failure> {
        if grant.body.user != session.user {
            return Err(refuse(
                ErrorCode::Forbidden,
                "a link code enrols another device of your own user only",
            ));
        }
        self.file_grant(session, &grant, InvitePurpose::LinkDevice)?;
        record(
            &self.db,
            "device_link_created",
            &session.user,
            &session.device_id,
            None,
        )?;
        Ok(Outcome::reply(Response::Ok))
    }

    fn my_devices(&self, session: &Session) -> Result<Outcome, Failure> {
        let mut stmt = self.db.prepare_cached(
            "SELECT device_id FROM devices WHERE user = ?1 AND status = 'approved' ORDER BY device_id",
        )?;
        let devices = stmt
            .query_map([&session.user], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(Outcome::reply(Response::Devices(devices)))
    }

    fn claim_key_packages(&mut self, user: &str, only: &[String]) -> Result<Outcome, Failure> {
        let tx = self
            .db
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let devices: Vec<String> = {
            let mut stmt = tx.prepare_cached(
                "SELECT device_id FROM devices WHERE user = ?1 AND status = 'approved' ORDER BY device_id",
            )?;
            let rows = stmt
                .query_map([user], |r| r.get(0))?
                .collect::<Result<Vec<_>, _>>()?;
            rows
        };
        if devices.is_empty() {
            return Err(refuse(
                ErrorCode::UnknownUser,
                format!("no enrolled device for user {user:?}"),
            ));
        }
        let mut claimed = Vec::new();
        for device_id in devices
            .into_iter()
            .filter(|d| only.is_empty() || only.contains(d))
        {
            let row: Option<(i64, Vec<u8>, bool)> = row(
                &tx,
                "SELECT id, data, last_resort FROM key_packages WHERE device_id = ?1
                     ORDER BY last_resort, id LIMIT 1",
                [&device_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
            if let Some((id, data, last_resort)) = row {
                if !last_resort {
                    exec(&tx, "DELETE FROM key_packages WHERE id = ?1", [id])?;
                }
                claimed.push(ClaimedKeyPackage {
                    device_id,
                    key_package: data,
                });
            }
        }
        tx.commit()?;
        if claimed.is_empty() {
            return Err(refuse(
                ErrorCode::NoKeyPackages,
                format!("no device of {user:?} has a KeyPackage available"),
            ));
        }
        Ok(Outcome::reply(Response::KeyPackages(claimed)))
    }

    /// Every leaf of a group must carry a valid certificate of an approved device.
    fn roster_devices(
        tx: &Transaction,
        org: &OrgDescriptor,
        group: &PublicGroup,
    ) -> Result<BTreeSet<String>, Failure> {
        let mut devices = BTreeSet::new();
        for member in group.members() {
            let cert = certificate_of(&member.credential).ok_or_else(|| {
                refuse(
                    ErrorCode::InvalidCertificate,
                    "a member's credential carries no identity certificate",
                )
            })?;
            // Dates are checked for the leaves a commit brings in (the shared rules do
            // that); a member whose certificate ran out meanwhile must not block the
            // commits that renew or remove it.
            cert.verify_issuer(org).map_err(|e| {
                refuse(
                    ErrorCode::InvalidCertificate,
                    format!("member {}: {e}", cert.body.user),
                )
            })?;
            if member.signature_key != cert.body.device_key {
                return Err(refuse(
                    ErrorCode::InvalidCertificate,
                    format!(
                        "member {}: leaf key differs from certificate",
                        cert.body.user
                    ),
                ));
            }
            let status: Option<String> = row(
                tx,
                "SELECT status FROM devices WHERE device_id = ?1",
                [&cert.body.device_id],
                |r| r.get(0),
            )
            .optional()?;
            if status.as_deref() != Some(STATUS_APPROVED) {
                return Err(refuse(
                    ErrorCode::InvalidCertificate,
                    format!(
                        "member {} device {} is not an enrolled device",
                        cert.body.user, cert.body.device_id
                    ),
                ));
            }
            devices.insert(cert.body.device_id);
        }
        Ok(devices)
    }

    fn create_group(
        &mut self,
        session: &Session,
        group_info: &[u8],
        ratchet_tree: &[u8],
    ) -> Result<Outcome, Failure> {
        let org = self.require_org()?;
        let bad = |why: String| refuse(ErrorCode::InvalidMessage, why);
        let info = MlsMessageIn::tls_deserialize_exact(group_info)
            .map_err(|e| bad(format!("GroupInfo: {e}")))?;
        let MlsMessageBodyIn::GroupInfo(info) = info.extract() else {
            return Err(bad("expected a GroupInfo message".into()));
        };
        let tree = RatchetTreeIn::tls_deserialize_exact(ratchet_tree)
            .map_err(|e| bad(format!("ratchet tree: {e}")))?;
        let group_id = info.group_id().as_slice().to_vec();
        let tx = self
            .db
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let exists = row(
            &tx,
            "SELECT 1 FROM groups WHERE group_id = ?1",
            [&group_id],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
        if exists {
            return Err(refuse(
                ErrorCode::GroupExists,
                "group id already registered",
            ));
        }
        let storage: Storage = Storage::new(&tx);
        let (group, _) =
            PublicGroup::from_external(&self.crypto, &storage, tree, info, ProposalStore::new())
                .map_err(|e| bad(format!("group state does not validate: {e}")))?;
        let devices = Self::roster_devices(&tx, &org, &group)?;
        if policy_of(&group).managed && !device_is_admin(&tx, &session.device_id)? {
            return Err(refuse(
                ErrorCode::Forbidden,
                "only an organisation admin may create a managed group",
            ));
        }
        if devices.len() != 1 || !devices.contains(&session.device_id) {
            return Err(refuse(
                ErrorCode::BadRequest,
                "a new group must contain only its creator; add members with a commit",
            ));
        }
        exec(&tx,
            "INSERT INTO groups (group_id, epoch, last_seq, created_by, created_at) VALUES (?1, ?2, 0, ?3, ?4)",
            params![group_id, group.group_context().epoch().as_u64() as i64, session.device_id, now_unix() as i64],
        )?;
        let creator_key = Self::device_key(&tx, &session.device_id)?;
        if Self::checked_group_info(&self.crypto, &group, group_info, &creator_key) {
            exec(
                &tx,
                "INSERT OR REPLACE INTO group_infos (group_id, epoch, data) VALUES (?1, ?2, ?3)",
                params![
                    group_id,
                    group.group_context().epoch().as_u64() as i64,
                    group_info
                ],
            )?;
        }
        exec(
            &tx,
            "INSERT INTO memberships (group_id, device_id, from_seq) VALUES (?1, ?2, 1)",
            params![group_id, session.device_id],
        )?;
        record(
            &tx,
            "group_created",
            &session.user,
            &session.device_id,
            Some(&group_id),
        )?;
        tx.commit()?;
        Ok(Outcome::reply(Response::Ok))
    }

    /// A committer's GroupInfo, when it describes exactly the epoch the relay just merged
    /// (same group context: epoch, tree hash, transcript) and the committing device, a
    /// member of it, signed it with `signer_key`.
    fn checked_group_info(
        crypto: &RustCrypto,
        group: &PublicGroup,
        bytes: &[u8],
        signer_key: &[u8],
    ) -> bool {
        use openmls::ciphersuite::signable::Verifiable as _;
        use openmls::ciphersuite::signature::OpenMlsSignaturePublicKey;
        if bytes.len() > MAX_MLS_MESSAGE {
            return false;
        }
        let Ok(message) = MlsMessageIn::tls_deserialize_exact(bytes) else {
            return false;
        };
        let MlsMessageBodyIn::GroupInfo(info) = message.extract() else {
            return false;
        };
        if info.group_context() != group.group_context() {
            return false;
        }
        group.members().any(|m| m.signature_key == signer_key)
            && OpenMlsSignaturePublicKey::new(signer_key.to_vec().into(), SignatureScheme::ED25519)
                .is_ok_and(|key| info.verify(crypto, &key).is_ok())
    }

    /// The signature key of a device the relay knows.
    fn device_key(tx: &Connection, device_id: &str) -> Result<Vec<u8>, Failure> {
        Ok(row(
            tx,
            "SELECT device_key FROM devices WHERE device_id = ?1",
            [device_id],
            |r| r.get(0),
        )?)
    }

    fn group_info(&self, session: &Session, group_id: &[u8]) -> Result<Outcome, Failure> {
        let member = row(
            &self.db,
            "SELECT 1 FROM memberships WHERE group_id = ?1 AND device_id = ?2 AND to_seq IS NULL",
            params![group_id, session.device_id],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
        if !member {
            return Err(refuse(
                ErrorCode::NotMember,
                "this device is not a member of the group",
            ));
        }
        let info: Option<(i64, Vec<u8>)> = row(
            &self.db,
            "SELECT epoch, data FROM group_infos WHERE group_id = ?1",
            [group_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
        let (epoch, group_info) = info.ok_or_else(|| {
            refuse(
                ErrorCode::UnknownGroup,
                "no GroupInfo of this group's current epoch is on the relay",
            )
        })?;
        Ok(Outcome::reply(Response::GroupInfo {
            group_info,
            epoch: epoch as u64,
        }))
    }

    fn group_state(tx: &Transaction, group_id: &[u8]) -> Result<(u64, u64), Failure> {
        row(
            tx,
            "SELECT epoch, last_seq FROM groups WHERE group_id = ?1",
            [group_id],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
        )
        .optional()?
        .ok_or_else(|| refuse(ErrorCode::UnknownGroup, "no such group on this relay"))
    }

    fn current_members(tx: &Transaction, group_id: &[u8]) -> Result<BTreeSet<String>, Failure> {
        let mut stmt = tx.prepare_cached(
            "SELECT device_id FROM memberships WHERE group_id = ?1 AND to_seq IS NULL",
        )?;
        let rows = stmt
            .query_map([group_id], |r| r.get(0))?
            .collect::<Result<BTreeSet<String>, _>>()?;
        Ok(rows)
    }

    #[allow(clippy::too_many_arguments)]
    fn append(
        tx: &Transaction,
        group_id: &[u8],
        seq: u64,
        epoch: u64,
        kind: &str,
        sender: &str,
        client_id: Option<&[u8]>,
        data: &[u8],
    ) -> Result<(), Failure> {
        exec(tx,
            "INSERT INTO messages (group_id, seq, epoch, kind, sender_device, client_id, data, stored_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![group_id, seq as i64, epoch as i64, kind, sender, client_id, data, now_unix() as i64],
        )?;
        exec(
            tx,
            "UPDATE groups SET last_seq = ?2 WHERE group_id = ?1",
            params![group_id, seq as i64],
        )?;
        exec(
            tx,
            "INSERT INTO queued_bytes (device_id, bytes) VALUES (?1, ?2)
             ON CONFLICT (device_id) DO UPDATE SET bytes = bytes + excluded.bytes",
            params![sender, data.len() as i64],
        )?;
        if let Some(client_id) = client_id {
            exec(tx,
                "INSERT INTO sent_ids (sender_device, client_id, seq, stored_at) VALUES (?1, ?2, ?3, ?4)",
                params![sender, client_id, seq as i64, now_unix() as i64],
            )?;
        }
        Ok(())
    }

    fn check_epoch(message_epoch: u64, current: u64) -> Result<(), Failure> {
        if message_epoch != current {
            return Err(refuse(
                ErrorCode::EpochMoved { current },
                format!(
                    "group is at epoch {current}, message was made for epoch {message_epoch}: sync and retry"
                ),
            ));
        }
        Ok(())
    }

    fn sender_device(group: &PublicGroup, sender: &Sender) -> Option<String> {
        match sender {
            Sender::Member(index) => group
                .leaf(*index)
                .and_then(|leaf| certificate_of(leaf.credential()))
                .map(|c| c.body.device_id),
            _ => None,
        }
    }

    /// Checks a handshake message (commit or proposal) against the group's current state:
    /// right group, PublicMessage of the expected content type, current epoch, valid
    /// signature and membership, sent by a leaf of this device.
    fn open_handshake(
        tx: &Transaction,
        crypto: &RustCrypto,
        session: &Session,
        group_id: &[u8],
        message: ProtocolMessage,
        expected: ContentType,
    ) -> Result<(PublicGroup, ProcessedMessage, u64, u64), Failure> {
        let kind = if expected == ContentType::Commit {
            "commit"
        } else {
            "proposal"
        };
        if message.group_id().as_slice() != group_id {
            return Err(refuse(
                ErrorCode::BadRequest,
                format!("{kind} is for another group"),
            ));
        }
        if !matches!(message, ProtocolMessage::PublicMessage(_))
            || message.content_type() != expected
        {
            return Err(refuse(
                ErrorCode::InvalidMessage,
                format!("a {kind} must be an MLS PublicMessage of content type {kind}"),
            ));
        }
        let (epoch, last_seq) = Self::group_state(tx, group_id)?;
        Self::check_epoch(message.epoch().as_u64(), epoch)?;
        let group = PublicGroup::load(&Storage::new(tx), &GroupId::from_slice(group_id))
            .map_err(|e| Failure::Store(StoreError::Sql(e)))?
            .ok_or_else(|| Failure::Store(StoreError::Corrupt("group state missing".into())))?;
        let processed = group
            .process_message(crypto, message)
            .map_err(|e| refuse(ErrorCode::InvalidMessage, format!("{kind} rejected: {e}")))?;
        // A member rejoining by external commit is named by the leaf it brings.
        let sender = match (processed.sender(), processed.content()) {
            (Sender::NewMemberCommit, ProcessedMessageContent::StagedCommitMessage(staged)) => {
                staged
                    .update_path_leaf_node()
                    .and_then(|leaf| certificate_of(leaf.credential()))
                    .map(|c| c.body.device_id)
            }
            (sender, _) => Self::sender_device(&group, sender),
        };
        if sender.as_deref() != Some(&session.device_id) {
            return Err(refuse(
                ErrorCode::NotMember,
                format!("{kind} must be sent by a member leaf belonging to this device"),
            ));
        }
        Ok((group, processed, epoch, last_seq))
    }

    fn commit(
        &mut self,
        session: &Session,
        group_id: &[u8],
        commit: &[u8],
        welcome: Option<&[u8]>,
        group_info: Option<&[u8]>,
    ) -> Result<Outcome, Failure> {
        let org = self.require_org()?;
        let message = parse_protocol_message(commit)?;
        if let Some(w) = welcome {
            if w.len() > MAX_MLS_MESSAGE {
                return Err(refuse(
                    ErrorCode::TooLarge,
                    "Welcome exceeds the size limit",
                ));
            }
            let parsed = MlsMessageIn::tls_deserialize_exact(w)
                .map_err(|e| refuse(ErrorCode::InvalidMessage, format!("Welcome: {e}")))?;
            if !matches!(parsed.extract(), MlsMessageBodyIn::Welcome(_)) {
                return Err(refuse(
                    ErrorCode::InvalidMessage,
                    "expected a Welcome message",
                ));
            }
        }
        let tx = self
            .db
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (mut group, processed, epoch, last_seq) = Self::open_handshake(
            &tx,
            &self.crypto,
            session,
            group_id,
            message,
            ContentType::Commit,
        )?;
        let sender = processed.sender().clone();
        let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else {
            return Err(refuse(ErrorCode::InvalidMessage, "not a commit"));
        };
        // The same rules every member applies: a commit they would refuse is never
        // sequenced, so it cannot leave them behind.
        let members: Vec<Member> = group.members().collect();
        let revoked = revoked_devices(&tx)?;
        let rules = muster_rules::Context {
            org: &org,
            now: now_unix(),
            revoked: &|d: &str| revoked.contains(d),
            renewed: &|d: &str| holds_valid_certificate(&tx, d),
        };
        muster_rules::check_commit(&rules, &members, policy_of(&group), &sender, &staged)
            .map_err(|e| refuse(refusal_code(&e), format!("commit refused: {e}")))?;
        group
            .merge_commit(&Storage::new(&tx), *staged)
            .map_err(|e| Failure::Store(StoreError::Corrupt(format!("merge commit: {e}"))))?;
        let after = Self::roster_devices(&tx, &org, &group)?;
        let before = Self::current_members(&tx, group_id)?;
        let added: Vec<&String> = after.difference(&before).collect();
        let removed: Vec<&String> = before.difference(&after).collect();
        if !added.is_empty() && welcome.is_none() {
            return Err(refuse(
                ErrorCode::BadRequest,
                "a commit that adds members must come with their Welcome",
            ));
        }
        let seq = last_seq + 1;
        Self::append(
            &tx,
            group_id,
            seq,
            epoch,
            KIND_COMMIT,
            &session.device_id,
            None,
            commit,
        )?;
        exec(
            &tx,
            "UPDATE groups SET epoch = ?2 WHERE group_id = ?1",
            params![group_id, group.group_context().epoch().as_u64() as i64],
        )?;
        // Kept only when it is the very epoch just merged, so a member that fell behind
        // can rejoin from it; anything else is dropped (it would only mislead them).
        let committer_key = Self::device_key(&tx, &session.device_id)?;
        if let Some(info) =
            group_info.filter(|i| Self::checked_group_info(&self.crypto, &group, i, &committer_key))
        {
            exec(
                &tx,
                "INSERT INTO group_infos (group_id, epoch, data) VALUES (?1, ?2, ?3)
                 ON CONFLICT (group_id) DO UPDATE SET epoch = excluded.epoch, data = excluded.data",
                params![
                    group_id,
                    group.group_context().epoch().as_u64() as i64,
                    info
                ],
            )?;
        } else {
            exec(
                &tx,
                "DELETE FROM group_infos WHERE group_id = ?1",
                params![group_id],
            )?;
        }
        for device in &removed {
            record(&tx, "member_removed", &session.user, device, Some(group_id))?;
            exec(&tx,
                "UPDATE memberships SET to_seq = ?3 WHERE group_id = ?1 AND device_id = ?2 AND to_seq IS NULL",
                params![group_id, device, seq as i64],
            )?;
        }
        for device in &added {
            record(&tx, "member_added", &session.user, device, Some(group_id))?;
            exec(
                &tx,
                "INSERT INTO memberships (group_id, device_id, from_seq) VALUES (?1, ?2, ?3)",
                params![group_id, device, (seq + 1) as i64],
            )?;
            exec(&tx,
                "INSERT INTO welcomes (device_id, group_id, data, stored_at) VALUES (?1, ?2, ?3, ?4)",
                params![device, group_id, welcome.unwrap_or_default(), now_unix() as i64],
            )?;
        }
        tx.commit()?;
        let mut wake: BTreeSet<String> = after.into_iter().chain(before).collect();
        wake.remove(&session.device_id);
        Ok(Outcome::with_wake(Response::Stored { seq }, wake))
    }

    fn propose(
        &mut self,
        session: &Session,
        group_id: &[u8],
        proposal: &[u8],
    ) -> Result<Outcome, Failure> {
        let message = parse_protocol_message(proposal)?;
        let tx = self
            .db
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (mut group, processed, epoch, last_seq) = Self::open_handshake(
            &tx,
            &self.crypto,
            session,
            group_id,
            message,
            ContentType::Proposal,
        )?;
        let sender = processed.sender().clone();
        let ProcessedMessageContent::ProposalMessage(queued) = processed.into_content() else {
            return Err(refuse(ErrorCode::InvalidMessage, "not a proposal"));
        };
        let org = load_org(&tx)?.ok_or_else(|| {
            refuse(
                ErrorCode::NoOrg,
                "no organisation is registered on this relay yet",
            )
        })?;
        let members: Vec<Member> = group.members().collect();
        let revoked = revoked_devices(&tx)?;
        let rules = muster_rules::Context {
            org: &org,
            now: now_unix(),
            revoked: &|d: &str| revoked.contains(d),
            renewed: &|d: &str| holds_valid_certificate(&tx, d),
        };
        muster_rules::check_proposal(
            &rules,
            &members,
            policy_of(&group),
            &sender,
            queued.proposal(),
        )
        .map_err(|e| refuse(refusal_code(&e), format!("proposal refused: {e}")))?;
        group
            .add_proposal(&Storage::new(&tx), *queued)
            .map_err(|e| Failure::Store(StoreError::Sql(e)))?;
        let seq = last_seq + 1;
        Self::append(
            &tx,
            group_id,
            seq,
            epoch,
            KIND_PROPOSAL,
            &session.device_id,
            None,
            proposal,
        )?;
        let mut wake = Self::current_members(&tx, group_id)?;
        tx.commit()?;
        wake.remove(&session.device_id);
        Ok(Outcome::with_wake(Response::Stored { seq }, wake))
    }

    fn send(
        &mut self,
        session: &Session,
        group_id: &[u8],
        data: &[u8],
        client_id: &[u8],
    ) -> Result<Outcome, Failure> {
        if client_id.is_empty() || client_id.len() > 64 {
            return Err(refuse(
                ErrorCode::BadRequest,
                "client id must be 1-64 bytes",
            ));
        }
        let message = parse_protocol_message(data)?;
        if !matches!(message, ProtocolMessage::PrivateMessage(_))
            || message.content_type() != ContentType::Application
        {
            return Err(refuse(
                ErrorCode::InvalidMessage,
                "application messages must be MLS PrivateMessages",
            ));
        }
        if message.group_id().as_slice() != group_id {
            return Err(refuse(
                ErrorCode::BadRequest,
                "message is for another group",
            ));
        }
        let tx = self
            .db
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let existing: Option<i64> = row(
            &tx,
            "SELECT seq FROM sent_ids WHERE sender_device = ?1 AND client_id = ?2",
            params![session.device_id, client_id],
            |r| r.get(0),
        )
        .optional()?;
        if let Some(seq) = existing {
            return Ok(Outcome::reply(Response::Stored { seq: seq as u64 }));
        }
        let (epoch, last_seq) = Self::group_state(&tx, group_id)?;
        let members = Self::current_members(&tx, group_id)?;
        if !members.contains(&session.device_id) {
            return Err(refuse(
                ErrorCode::NotMember,
                "this device is not a member of the group",
            ));
        }
        Self::check_epoch(message.epoch().as_u64(), epoch)?;
        let queued: i64 = row(
            &tx,
            "SELECT bytes FROM queued_bytes WHERE device_id = ?1",
            params![session.device_id],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0);
        if queued as u64 + data.len() as u64 > self.queue_quota {
            return Err(refuse(
                ErrorCode::QuotaExceeded,
                format!(
                    "{queued} bytes of this device's messages are still waiting on the relay for \
                     recipients to fetch them (limit {}); they are released as recipients catch up",
                    self.queue_quota
                ),
            ));
        }
        let seq = last_seq + 1;
        Self::append(
            &tx,
            group_id,
            seq,
            epoch,
            KIND_APPLICATION,
            &session.device_id,
            Some(client_id),
            data,
        )?;
        // A sender never receives its own application message, so a sender that had
        // fetched everything before it is also done with it.
        exec(&tx,
            "INSERT INTO cursors (device_id, group_id, acked_seq)
               SELECT ?1, ?2, ?3 FROM memberships ms
               LEFT JOIN cursors c ON c.device_id = ms.device_id AND c.group_id = ms.group_id
               WHERE ms.device_id = ?1 AND ms.group_id = ?2 AND ms.to_seq IS NULL
                 AND COALESCE(c.acked_seq, ms.from_seq - 1) >= ?4
             ON CONFLICT (device_id, group_id) DO UPDATE SET acked_seq = MAX(acked_seq, excluded.acked_seq)",
            params![session.device_id, group_id, seq as i64, last_seq as i64],
        )?;
        Self::prune_delivered(&tx, group_id)?;
        tx.commit()?;
        let mut wake = members;
        wake.remove(&session.device_id);
        Ok(Outcome::with_wake(Response::Stored { seq }, wake))
    }

    fn fetch(&self, session: &Session, limit: u32) -> Result<Outcome, Failure> {
        let limit = limit.clamp(1, MAX_FETCH) as i64;
        let mut deliveries = Vec::new();
        let mut budget = FetchBudget::default();
        let mut stmt = self.db.prepare_cached(
            "SELECT id, group_id, data FROM welcomes WHERE device_id = ?1 ORDER BY id LIMIT ?2",
        )?;
        for row in stmt.query_map(params![session.device_id, limit], |r| {
            Ok(Delivery::Welcome {
                id: r.get::<_, i64>(0)? as u64,
                group_id: r.get(1)?,
                welcome: r.get(2)?,
            })
        })? {
            let delivery = row?;
            if !budget.admit(&delivery) {
                return Ok(Outcome::reply(Response::Deliveries(deliveries)));
            }
            deliveries.push(delivery);
        }
        let remaining = limit - deliveries.len() as i64;
        if remaining > 0 {
            let mut stmt = self.db.prepare_cached(
                // Messages are read from past the device's cursor along the primary key
                // (CROSS JOIN keeps that order), not from its membership start: the
                // messages other members still hold back are never scanned.
                "SELECT m.group_id, m.seq, m.data FROM memberships ms
                 LEFT JOIN cursors c ON c.device_id = ms.device_id AND c.group_id = ms.group_id
                 CROSS JOIN messages m ON m.group_id = ms.group_id
                   AND m.seq > MAX(ms.from_seq - 1, COALESCE(c.acked_seq, 0))
                 WHERE ms.device_id = ?1 AND (ms.to_seq IS NULL OR m.seq <= ms.to_seq)
                   AND NOT (m.sender_device = ?1 AND m.kind = 'application')
                 ORDER BY m.group_id, m.seq LIMIT ?2",
            )?;
            for row in stmt.query_map(params![session.device_id, remaining], |r| {
                Ok(Delivery::Group {
                    group_id: r.get(0)?,
                    seq: r.get::<_, i64>(1)? as u64,
                    message: r.get(2)?,
                })
            })? {
                let delivery = row?;
                if !budget.admit(&delivery) {
                    break;
                }
                deliveries.push(delivery);
            }
        }
        Ok(Outcome::reply(Response::Deliveries(deliveries)))
    }

    fn ack(&mut self, session: &Session, items: &[AckItem]) -> Result<Outcome, Failure> {
        if items.len() > MAX_FETCH as usize {
            return Err(refuse(
                ErrorCode::TooLarge,
                "too many acknowledgements at once",
            ));
        }
        let tx = self
            .db
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // A cursor is a high-water mark: only the highest acknowledged seq per group counts.
        let mut acked_groups: std::collections::BTreeMap<&[u8], u64> = Default::default();
        for item in items {
            match item {
                AckItem::Welcome { id } => {
                    exec(
                        &tx,
                        "DELETE FROM welcomes WHERE id = ?1 AND device_id = ?2",
                        params![*id as i64, session.device_id],
                    )?;
                }
                AckItem::Group { group_id, seq } => {
                    let highest = acked_groups.entry(group_id.as_slice()).or_default();
                    *highest = (*highest).max(*seq);
                }
            }
        }
        for (group_id, seq) in &acked_groups {
            exec(
                &tx,
                "INSERT INTO cursors (device_id, group_id, acked_seq) VALUES (?1, ?2, ?3)
                 ON CONFLICT (device_id, group_id) DO UPDATE SET acked_seq = MAX(acked_seq, excluded.acked_seq)",
                params![session.device_id, group_id, (*seq).min(i64::MAX as u64) as i64],
            )?;
        }
        for group_id in acked_groups.keys() {
            Self::prune_delivered(&tx, group_id)?;
        }
        tx.commit()?;
        Ok(Outcome::reply(Response::Ok))
    }
}

/// Keeps one fetch answer within a frame: at least one delivery, then up to
/// [`FETCH_BYTES`] of message bytes.
#[derive(Default)]
struct FetchBudget {
    used: usize,
}

impl FetchBudget {
    fn admit(&mut self, delivery: &Delivery) -> bool {
        let size = match delivery {
            Delivery::Welcome { welcome, .. } => welcome.len(),
            Delivery::Group { message, .. } => message.len(),
        };
        if self.used > 0 && self.used + size > FETCH_BYTES {
            return false;
        }
        self.used += size.max(1);
        true
    }
}

/// A fresh 32-byte challenge for a device that says hello.
pub fn challenge_nonce() -> Vec<u8> {
    let mut nonce = vec![0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
        .expect("system randomness available");
    nonce
}

/// Checks a device's signature over the challenge of a relay with `fingerprint`: needs
/// no database, so it runs before a request takes the relay's lock.
pub fn verify_challenge(
    fingerprint: &str,
    device_key: &[u8],
    nonce: &[u8],
    signature: &[u8],
) -> Result<(), RelayError> {
    UnparsedPublicKey::new(&ED25519, device_key)
        .verify(&auth_transcript(fingerprint, nonce), signature)
        .map_err(|_| {
            RelayError::new(
                ErrorCode::Unauthenticated,
                "challenge signature does not verify for this device key",
            )
        })
}

fn check_status(status: &str) -> Result<(), RelayError> {
    match status {
        STATUS_APPROVED => Ok(()),
        STATUS_PENDING => Err(RelayError::new(
            ErrorCode::EnrolmentPending,
            "enrolment is waiting for an admin's approval",
        )),
        STATUS_REJECTED => Err(RelayError::new(
            ErrorCode::EnrolmentRejected,
            "enrolment was rejected by an admin",
        )),
        STATUS_REVOKED => Err(RelayError::new(
            ErrorCode::DeviceRevoked,
            "this device has been revoked",
        )),
        other => Err(RelayError::new(
            ErrorCode::Internal,
            format!("unknown device status {other}"),
        )),
    }
}

/// Appends a metadata event to the audit log.
fn record(
    db: &Connection,
    event: &str,
    actor: &str,
    subject: &str,
    group: Option<&[u8]>,
) -> Result<(), Failure> {
    db.execute(
        "INSERT INTO audit (at, event, actor, subject, group_id) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![now_unix() as i64, event, actor, subject, group],
    )?;
    Ok(())
}

fn check_profile(profile: &Profile) -> Result<(), Failure> {
    let too_long = |v: &Option<String>| v.as_ref().is_some_and(|s| s.len() > 100);
    if profile.display_name.trim().is_empty() || profile.display_name.len() > 100 {
        return Err(refuse(
            ErrorCode::BadRequest,
            "display name must be 1-100 characters",
        ));
    }
    if too_long(&profile.title) || too_long(&profile.department) {
        return Err(refuse(
            ErrorCode::BadRequest,
            "title and department must be at most 100 characters",
        ));
    }
    Ok(())
}

/// Replaces the certificates of every approved device of one user, in `tx`. Each new
/// certificate must verify, keep its device's user and key, and pass `acceptable(new, old)`.
/// Any pending profile change of the user is settled by it. Returns the user.
fn replace_user_certificates(
    tx: &Transaction,
    org: &OrgDescriptor,
    certificates: &[Certificate],
    acceptable: impl Fn(&Certificate, &Certificate) -> bool,
) -> Result<String, Failure> {
    let Some(user) = certificates.first().map(|c| c.body.user.clone()) else {
        return Err(refuse(ErrorCode::BadRequest, "no certificates given"));
    };
    let devices: BTreeSet<String> = {
        let mut stmt = tx.prepare_cached(
            "SELECT device_id FROM devices WHERE user = ?1 AND status = 'approved'",
        )?;
        let rows = stmt
            .query_map([&user], |r| r.get(0))?
            .collect::<Result<BTreeSet<String>, _>>()?;
        rows
    };
    let covered: BTreeSet<String> = certificates
        .iter()
        .map(|c| c.body.device_id.clone())
        .collect();
    if devices.is_empty() || covered != devices || covered.len() != certificates.len() {
        return Err(refuse(
            ErrorCode::InvalidCertificate,
            format!(
                "expected one new certificate for each of {user}'s {} devices",
                devices.len()
            ),
        ));
    }
    for cert in certificates {
        cert.verify(org, now_unix())
            .map_err(|e| refuse(ErrorCode::InvalidCertificate, e.to_string()))?;
        let old = device_certificate(tx, &cert.body.device_id)?
            .ok_or_else(|| refuse(ErrorCode::UnknownDevice, "device has no certificate"))?;
        if cert.body.user != user || cert.body.device_key != old.body.device_key {
            return Err(refuse(
                ErrorCode::InvalidCertificate,
                "a new certificate must keep the device's user and key",
            ));
        }
        if !acceptable(cert, &old) {
            return Err(refuse(
                ErrorCode::InvalidCertificate,
                "certificate does not match the requested change",
            ));
        }
        exec(
            tx,
            "UPDATE devices SET certificate = ?2, profile = ?3 WHERE device_id = ?1",
            params![
                cert.body.device_id,
                cert.to_bytes(),
                serde_json::to_vec(&cert.body.profile).expect("profile serialises")
            ],
        )?;
    }
    Ok(user)
}

fn device_certificate(db: &Connection, device_id: &str) -> Result<Option<Certificate>, Failure> {
    let bytes: Option<Option<Vec<u8>>> = db
        .query_row(
            "SELECT certificate FROM devices WHERE device_id = ?1",
            [device_id],
            |r| r.get(0),
        )
        .optional()?;
    match bytes.flatten() {
        Some(b) => Ok(Some(Certificate::from_bytes(&b).map_err(|_| {
            Failure::Store(StoreError::Corrupt("stored certificate".into()))
        })?)),
        None => Ok(None),
    }
}

/// How the relay answers a change the group rules refuse: a bad identity is an invalid
/// certificate, anything else is forbidden.
fn refusal_code(refusal: &muster_rules::Refusal) -> ErrorCode {
    match refusal {
        muster_rules::Refusal::Identity { .. } | muster_rules::Refusal::Revoked { .. } => {
            ErrorCode::InvalidCertificate
        }
        _ => ErrorCode::Forbidden,
    }
}

/// Every device the organisation revoked.
fn revoked_devices(db: &Connection) -> Result<std::collections::HashSet<String>, Failure> {
    let ids = db
        .prepare_cached("SELECT device_id FROM devices WHERE status = 'revoked'")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<std::collections::HashSet<String>, _>>()?;
    Ok(ids)
}

/// Whether the relay holds a certificate for the device valid now (an admin renewed it):
/// the device's expiry is then no ground for a member to remove it.
fn holds_valid_certificate(db: &Connection, device_id: &str) -> bool {
    matches!(
        device_certificate(db, device_id),
        Ok(Some(cert)) if cert.check_validity(now_unix()).is_ok()
    )
}

fn device_is_admin(db: &Connection, device_id: &str) -> Result<bool, Failure> {
    Ok(device_certificate(db, device_id)?.is_some_and(|c| c.is_admin()))
}

/// The policy in a group's context.
fn policy_of(group: &PublicGroup) -> GroupPolicy {
    GroupPolicy::from_extension(
        group
            .group_context()
            .extensions()
            .unknown(GROUP_POLICY_EXTENSION)
            .map(|e| e.0.as_slice()),
    )
}

fn load_org_policy(db: &Connection) -> Result<Option<OrgPolicy>, Failure> {
    let bytes: Option<Vec<u8>> = db
        .query_row("SELECT value FROM meta WHERE key = 'org_policy'", [], |r| {
            r.get(0)
        })
        .optional()?;
    bytes
        .map(|b| {
            serde_json::from_slice(&b)
                .map_err(|_| Failure::Store(StoreError::Corrupt("org policy".into())))
        })
        .transpose()
}

fn load_org(db: &Connection) -> Result<Option<OrgDescriptor>, StoreError> {
    let bytes: Option<Vec<u8>> = db
        .query_row("SELECT value FROM meta WHERE key = 'org'", [], |r| r.get(0))
        .optional()?;
    bytes
        .map(|b| {
            serde_json::from_slice(&b).map_err(|_| StoreError::Corrupt("org descriptor".into()))
        })
        .transpose()
}

fn insert_device(
    tx: &Transaction,
    user: &str,
    device_key: &[u8],
    profile: &Profile,
    status: &str,
    cert: Option<&Certificate>,
) -> Result<(), Failure> {
    exec(tx,
        "INSERT INTO devices (device_id, user, device_key, status, profile, certificate, requested_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            muster_proto::device_id_for(device_key),
            user,
            device_key,
            status,
            serde_json::to_vec(profile).expect("profile serialises"),
            cert.map(|c| c.to_bytes()),
            now_unix() as i64
        ],
    )?;
    Ok(())
}

fn internal(e: StoreError) -> RelayError {
    tracing::error!(error = %e, "relay storage failure");
    RelayError::new(ErrorCode::Internal, "relay storage failure")
}

fn finish(result: Result<Outcome, Failure>) -> Outcome {
    match result {
        Ok(outcome) => outcome,
        Err(Failure::Refuse(e)) => Outcome::reply(Response::Error(e)),
        Err(Failure::Store(e)) => Outcome::reply(Response::Error(internal(e))),
    }
}
