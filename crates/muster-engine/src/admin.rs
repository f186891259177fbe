//! Enrolment, approval, profiles, organisation policy and revocation: what admin devices
//! sign, and the proofs they check before signing anything the relay hands them.
//!
//! An admin device never trusts the relay's word for who is enrolled, what a user's roles
//! are, or which key a request belongs to. It keeps its own record: every certificate it
//! has verified (newest per device), the profile and roles it last signed for each user,
//! the codes it has already used, and the newest organisation policy it has seen.

use crate::engine::{
    now_ms, rfc3339_ms, AuditView, DeviceRow, DeviceView, DirectoryEntry, Engine, PendingView,
    SyncReport,
};
use crate::error::{from_link, EngineError};
use crate::link::Link;
use crate::provision::{Action, OrgSpec, OrgState};
use muster_proto::{
    now_unix, validate_handle, verify_enrolment, Certificate, CertificateBody, CodeSecret,
    ConfirmationBody, DeviceConfirmation, EnrolmentGrant, GrantBody, InviteCode, InvitePurpose,
    OrgPolicy, OrgPolicyBody, OrgRootKey, PendingEnrolment, Profile, ProfileRequest,
    ProfileRequestBody, PublishedCheckpoint, Request, Response, RevocationBody, Role,
    DEFAULT_CERTIFICATE_LIFETIME_SECS,
};
use openmls_traits::signatures::Signer as _;
use rusqlite::{params, OptionalExtension};
use serde::Serialize;

/// An enrolment request whose proofs this device checked.
pub(crate) struct ProvenEnrolment {
    pub user: String,
    pub device_id: String,
    pub device_key: Vec<u8>,
    /// The profile the joining device signed.
    pub profile: Profile,
    pub purpose: InvitePurpose,
    pub code_key: Vec<u8>,
    /// Who made the code.
    pub issued_by: String,
}

/// A profile change as an admin sees it, with the check of its signature.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileChangeView {
    pub user: String,
    pub current: Profile,
    pub requested: Profile,
    pub requested_at: String,
    /// The device of the user that signed the request, when its signature verifies.
    pub signed_by: Option<String>,
    /// Why the request cannot be approved, if it cannot.
    pub problem: Option<String>,
}

/// The shortest certificate lifetime an organisation may choose.
const MIN_CERTIFICATE_LIFETIME_SECS: u64 = 10;
/// How many archive checkpoints that cannot be checked yet an admin device keeps.
const MAX_PENDING_CHECKPOINTS: usize = 10_000;

fn to_json(value: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(value).expect("record serialises")
}

impl Engine {
    /// Refuses locally, from this device's own signed certificate, what only admins may do.
    pub(crate) fn require_admin(device: &DeviceRow) -> Result<(), EngineError> {
        match &device.certificate {
            Some(cert) if cert.is_admin() => Ok(()),
            _ => Err(EngineError::NotAdmin),
        }
    }

    pub(crate) fn root_key(device: &DeviceRow) -> Result<OrgRootKey, EngineError> {
        Self::require_admin(device)?;
        let pkcs8 = device.root_key.as_ref().ok_or(EngineError::NoRootKey)?;
        Ok(OrgRootKey::from_pkcs8(pkcs8)?)
    }

    /// Signs `message` with this device's own key.
    pub(crate) fn sign_as_device(
        &self,
        device: &DeviceRow,
        message: &[u8],
    ) -> Result<Vec<u8>, EngineError> {
        self.signer(device)?
            .sign(message)
            .map_err(|e| EngineError::Mls(format!("signing failed: {e:?}")))
    }

    // ---- what this device knows for itself ---------------------------------------

    /// Keeps the newest certificate of each device among `certs` (already verified).
    pub(crate) fn remember_certificates(&self, certs: &[Certificate]) -> Result<(), EngineError> {
        for cert in certs {
            self.db
                .prepare_cached(
                    "INSERT INTO known_certificates (device_id, user, certificate, not_before)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (device_id) DO UPDATE SET certificate = excluded.certificate,
                         not_before = excluded.not_before
                     WHERE excluded.not_before > known_certificates.not_before",
                )?
                .execute(params![
                    cert.body.device_id,
                    cert.body.user,
                    cert.to_bytes(),
                    cert.body.not_before as i64
                ])?;
        }
        Ok(())
    }

    /// The newest certificates this device has verified of `user`'s unrevoked devices.
    pub(crate) fn known_devices_of(&self, user: &str) -> Result<Vec<Certificate>, EngineError> {
        let mut stmt = self.db.prepare_cached(
            "SELECT certificate FROM known_certificates WHERE user = ?1
               AND device_id NOT IN (SELECT device_id FROM revoked_devices) ORDER BY device_id",
        )?;
        let certs = stmt
            .query_map([user], |r| r.get::<_, Vec<u8>>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(certs
            .iter()
            .filter_map(|c| Certificate::from_bytes(c).ok())
            .collect())
    }

    /// Users with an unrevoked device this device knows of, or a record it signed.
    fn known_users(&self) -> Result<Vec<String>, EngineError> {
        let mut stmt = self.db.prepare(
            "SELECT user FROM known_certificates
               WHERE device_id NOT IN (SELECT device_id FROM revoked_devices)
             UNION SELECT user FROM org_records ORDER BY 1",
        )?;
        let users = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(users)
    }

    /// `user`'s approved profile and roles by this device's own record: what it last
    /// signed for them, else their newest certificate it has verified. Never what the
    /// relay lists now, which may be an old certificate of a demoted admin.
    pub(crate) fn record_of(
        &self,
        user: &str,
    ) -> Result<Option<(Profile, Vec<Role>)>, EngineError> {
        let signed: Option<(Vec<u8>, Vec<u8>)> = self
            .db
            .query_row(
                "SELECT profile, roles FROM org_records WHERE user = ?1",
                [user],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some((profile, roles)) = signed {
            let damaged =
                || EngineError::Invalid(format!("this device's record of {user} is damaged"));
            return Ok(Some((
                serde_json::from_slice(&profile).map_err(|_| damaged())?,
                serde_json::from_slice(&roles).map_err(|_| damaged())?,
            )));
        }
        Ok(self
            .known_devices_of(user)?
            .into_iter()
            .max_by_key(|c| c.body.not_before)
            .map(|c| (c.body.profile, c.body.roles)))
    }

    fn set_record(&self, user: &str, profile: &Profile, roles: &[Role]) -> Result<(), EngineError> {
        self.db.execute(
            "INSERT INTO org_records (user, profile, roles, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (user) DO UPDATE SET profile = excluded.profile, roles = excluded.roles,
                 updated_at = excluded.updated_at",
            params![user, to_json(profile), to_json(&roles), now_ms()],
        )?;
        Ok(())
    }

    /// Records what this device signed: the user's profile and roles and the certificates.
    pub(crate) fn record_issued(&self, certs: &[Certificate]) -> Result<(), EngineError> {
        if let Some(cert) = certs.first() {
            self.set_record(&cert.body.user, &cert.body.profile, &cert.body.roles)?;
        }
        self.remember_certificates(certs)
    }

    /// Every enrolled device's certificate that verifies against the pinned organisation
    /// root, as the relay lists them; each is remembered (see [`Self::remember_certificates`]).
    pub(crate) async fn certificates(
        &self,
        conn: &impl Link,
    ) -> Result<Vec<Certificate>, EngineError> {
        let org = self.device()?.org;
        let Response::Directory(certs) =
            conn.request(&Request::Directory).await.map_err(from_link)?
        else {
            return Err(EngineError::Invalid(
                "unexpected answer to Directory".into(),
            ));
        };
        let certs: Vec<Certificate> = certs
            .into_iter()
            .filter(|c| match c.verify(&org, now_unix()) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(user = %c.body.user, error = %e, "skipping unverifiable certificate");
                    false
                }
            })
            .collect();
        self.remember_certificates(&certs)?;
        Ok(certs)
    }

    // ---- codes and enrolment -------------------------------------------------------

    /// Signs a grant for a fresh code secret and files it with the relay.
    async fn make_code(
        &self,
        conn: &impl Link,
        purpose: InvitePurpose,
        user: &str,
        ttl_secs: u64,
    ) -> Result<String, EngineError> {
        let me = self.device()?;
        let issuer = me
            .certificate
            .clone()
            .ok_or(EngineError::AwaitingApproval)?;
        let secret = CodeSecret::generate();
        let now = now_unix();
        let body = GrantBody {
            org_id: me.org.org_id.clone(),
            purpose,
            user: user.to_string(),
            code_key: secret.public_key(),
            issued_at: now,
            expires_at: now + ttl_secs,
        };
        let grant = EnrolmentGrant {
            signature: self.sign_as_device(&me, &body.to_be_signed())?,
            body,
            issuer,
        };
        let expires_at = grant.body.expires_at;
        let request = match purpose {
            InvitePurpose::NewUser => Request::CreateInvite { grant },
            InvitePurpose::LinkDevice => Request::CreateLink { grant },
        };
        conn.request(&request).await.map_err(from_link)?;
        Ok(InviteCode {
            purpose,
            relay: me.relay,
            fingerprint: me.fingerprint,
            org: me.org,
            user: user.to_string(),
            secret: secret.to_hex(),
            expires_at,
        }
        .encode())
    }

    /// Creates a single-use invite code for `user`, valid for `ttl_secs`.
    pub async fn create_invite(
        &mut self,
        conn: &impl Link,
        user: &str,
        ttl_secs: u64,
    ) -> Result<String, EngineError> {
        validate_handle(user)?;
        Self::root_key(&self.device()?)?;
        self.make_code(conn, InvitePurpose::NewUser, user, ttl_secs)
            .await
    }

    /// Creates a single-use code that enrols another device of this user.
    pub async fn create_device_link(
        &mut self,
        conn: &impl Link,
        ttl_secs: u64,
    ) -> Result<String, EngineError> {
        let user = self.device()?.user;
        self.make_code(conn, InvitePurpose::LinkDevice, &user, ttl_secs)
            .await
    }

    /// Checks an enrolment request's proofs: the code's grant against the organisation
    /// and this device's revocations, and the request against the grant and the relay's
    /// listing of it.
    pub(crate) fn prove_enrolment(
        &self,
        pending: &PendingEnrolment,
    ) -> Result<ProvenEnrolment, String> {
        let org = self.device().map_err(|e| e.to_string())?.org;
        let (Some(grant), Some(request)) = (&pending.grant, &pending.request) else {
            return Err("it carries no proof that it was made with a code".into());
        };
        let device_id =
            verify_enrolment(&org, grant, request, now_unix()).map_err(|e| e.to_string())?;
        if device_id != pending.device_id
            || request.body.user != pending.user
            || request.body.device_key != pending.device_key
        {
            return Err("the relay lists it differently from what the device signed".into());
        }
        if crate::engine::revoked_device(&self.db, &grant.issuer.body.device_id)
            .map_err(|e| e.to_string())?
        {
            return Err(format!(
                "its code was made by a revoked device of {}",
                grant.issuer.body.user
            ));
        }
        // An invite counts only from someone who is an admin by this device's own record
        // (not merely by a certificate they still hold from before a demotion).
        if grant.body.purpose == InvitePurpose::NewUser {
            let admin = self
                .record_of(&grant.issuer.body.user)
                .map_err(|e| e.to_string())?
                .is_some_and(|(_, roles)| roles.contains(&Role::Admin));
            if !admin {
                return Err(format!(
                    "its invite was made by {}, who is not an admin by this device's record",
                    grant.issuer.body.user
                ));
            }
        }
        Ok(ProvenEnrolment {
            user: request.body.user.clone(),
            device_id,
            device_key: request.body.device_key.clone(),
            profile: request.body.profile.clone(),
            purpose: grant.body.purpose,
            code_key: grant.body.code_key.clone(),
            issued_by: grant.issuer.body.user.clone(),
        })
    }

    pub(crate) async fn pending_raw(
        &self,
        conn: &impl Link,
    ) -> Result<Vec<PendingEnrolment>, EngineError> {
        match conn
            .request(&Request::ListPending)
            .await
            .map_err(from_link)?
        {
            Response::Pending(p) => Ok(p),
            _ => Err(EngineError::Invalid(
                "unexpected answer to ListPending".into(),
            )),
        }
    }

    /// Enrolment requests waiting for an admin, each with the check of its proofs.
    pub async fn pending(&self, conn: &impl Link) -> Result<Vec<PendingView>, EngineError> {
        Self::require_admin(&self.device()?)?;
        Ok(self
            .pending_raw(conn)
            .await?
            .into_iter()
            .map(|p| {
                let proof = self.prove_enrolment(&p);
                let profile = match &proof {
                    Ok(proven) => proven.profile.clone(),
                    Err(_) => p.profile.clone(),
                };
                PendingView {
                    user: p.user,
                    linked: p.linked,
                    device_id: p.device_id,
                    display_name: profile.display_name,
                    title: profile.title,
                    department: profile.department,
                    requested_at: rfc3339_ms(p.requested_at as i64 * 1000),
                    code_from: proof.as_ref().ok().map(|proven| proven.issued_by.clone()),
                    problem: proof.err(),
                }
            })
            .collect())
    }

    async fn pending_for(
        &self,
        conn: &impl Link,
        user: &str,
        device: Option<&str>,
    ) -> Result<PendingEnrolment, EngineError> {
        let mut matching: Vec<PendingEnrolment> = self
            .pending_raw(conn)
            .await?
            .into_iter()
            .filter(|p| p.user == user && device.is_none_or(|d| p.device_id.starts_with(d)))
            .collect();
        match matching.len() {
            0 => Err(EngineError::Invalid(format!(
                "no pending enrolment request from {user:?}"
            ))),
            1 => Ok(matching.remove(0)),
            _ => Err(EngineError::Invalid(format!(
                "{user:?} has several pending devices ({}); name one with --device",
                matching
                    .iter()
                    .map(|p| p.device_id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// `pending`'s proofs, checked, or an error naming why this device will not sign it.
    fn proven(&self, pending: &PendingEnrolment) -> Result<ProvenEnrolment, EngineError> {
        self.prove_enrolment(pending).map_err(|why| {
            EngineError::Invalid(format!(
                "refusing {}'s enrolment request (device {}): {why}",
                pending.user, pending.device_id
            ))
        })
    }

    /// Signs the identity certificate of `user`'s pending device, after checking that it
    /// was made with a code this organisation issued. A new user gets the profile their
    /// device signed; another device of a known user gets that user's profile and roles
    /// from this device's own record. With `archive`, a new account becomes the
    /// organisation's compliance archive (archive role only).
    pub async fn approve(
        &mut self,
        conn: &impl Link,
        user: &str,
        device: Option<&str>,
        archive: bool,
    ) -> Result<String, EngineError> {
        let me = self.device()?;
        let root = Self::root_key(&me)?;
        let pending = self.pending_for(conn, user, device).await?;
        let proven = self.proven(&pending)?;
        // Refresh what this device knows, so a user enrolled elsewhere is recognised.
        self.certificates(conn).await?;
        let (profile, roles) = match self.record_of(user)? {
            Some((_, roles)) if archive && !roles.contains(&Role::Archive) => {
                return Err(EngineError::Invalid(format!(
                    "{user} is an enrolled person; an archive needs an account of its own"
                )))
            }
            Some(record) => record,
            None if proven.purpose == InvitePurpose::LinkDevice => {
                return Err(EngineError::Invalid(format!(
                    "this device has no verified record of {user}, so it cannot tell which roles a new device of theirs should carry"
                )))
            }
            None if archive => (proven.profile.clone(), vec![Role::Archive]),
            None => (proven.profile.clone(), vec![Role::Member]),
        };
        self.issue(conn, &me, &root, &proven, profile, roles)
            .await?;
        Ok(proven.device_id)
    }

    /// Signs and hands over the certificate of a proven enrolment. Each code enrols one
    /// device: a second device with the same code is refused.
    async fn issue(
        &self,
        conn: &impl Link,
        me: &DeviceRow,
        root: &OrgRootKey,
        proven: &ProvenEnrolment,
        profile: Profile,
        roles: Vec<Role>,
    ) -> Result<(), EngineError> {
        let used_by: Option<String> = self
            .db
            .query_row(
                "SELECT device_id FROM used_codes WHERE code_key = ?1",
                [&proven.code_key],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(other) = used_by.filter(|d| *d != proven.device_id) {
            return Err(EngineError::Invalid(format!(
                "the code {}'s device {} used was already used to enrol device {other}",
                proven.user, proven.device_id
            )));
        }
        self.db.execute(
            "INSERT OR IGNORE INTO used_codes (code_key, device_id) VALUES (?1, ?2)",
            params![proven.code_key, proven.device_id],
        )?;
        let now = now_unix();
        let cert = root.sign(CertificateBody {
            org_id: me.org.org_id.clone(),
            user: proven.user.clone(),
            device_id: proven.device_id.clone(),
            device_key: proven.device_key.clone(),
            profile,
            roles,
            not_before: now.saturating_sub(300),
            not_after: now + self.certificate_lifetime()?,
        });
        conn.request(&Request::Approve {
            certificate: cert.clone(),
        })
        .await
        .map_err(from_link)?;
        self.record_issued(&[cert])
    }

    /// Refuses `user`'s pending device.
    pub async fn reject(
        &mut self,
        conn: &impl Link,
        user: &str,
        device: Option<&str>,
    ) -> Result<String, EngineError> {
        Self::require_admin(&self.device()?)?;
        let request = self.pending_for(conn, user, device).await?;
        conn.request(&Request::Reject {
            device_id: request.device_id.clone(),
        })
        .await
        .map_err(from_link)?;
        Ok(request.device_id)
    }

    // ---- organisation policy and device self-approval ------------------------------

    fn stored_policy(&self) -> Result<Option<OrgPolicy>, EngineError> {
        let bytes: Option<Vec<u8>> = self
            .db
            .query_row("SELECT policy FROM org_policy WHERE id = 1", [], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(bytes.and_then(|b| serde_json::from_slice(&b).ok()))
    }

    fn store_policy(&self, policy: &OrgPolicy) -> Result<(), EngineError> {
        self.db.execute(
            "INSERT INTO org_policy (id, policy, version) VALUES (1, ?1, ?2)
             ON CONFLICT (id) DO UPDATE SET policy = excluded.policy, version = excluded.version
             WHERE excluded.version > org_policy.version",
            params![to_json(policy), policy.body.version as i64],
        )?;
        Ok(())
    }

    /// The organisation policy in force: the newest signed version this device has seen.
    /// A relay that serves an older one than this device knows is reported in `problems`.
    async fn newest_policy(
        &self,
        conn: &impl Link,
        problems: &mut Vec<String>,
    ) -> Result<OrgPolicyBody, EngineError> {
        let org = self.device()?.org;
        let served = match conn
            .request(&Request::GetOrgPolicy)
            .await
            .map_err(from_link)?
        {
            Response::OrgPolicy(p) => p,
            _ => {
                return Err(EngineError::Invalid(
                    "unexpected answer to GetOrgPolicy".into(),
                ))
            }
        };
        if let Some(policy) = &served {
            match policy.verify(&org) {
                Ok(()) => self.store_policy(policy)?,
                Err(e) => problems.push(format!(
                    "ignored an organisation policy that does not verify: {e}"
                )),
            }
        }
        let newest = self.stored_policy()?;
        let served_version = served
            .filter(|p| p.verify(&org).is_ok())
            .map(|p| p.body.version);
        match &newest {
            Some(known) if served_version.is_none_or(|v| v < known.body.version) => {
                problems.push(format!(
                    "the relay withholds or replays the organisation policy: it serves {}, this device has seen version {}",
                    served_version.map_or("none".to_string(), |v| format!("version {v}")),
                    known.body.version
                ));
            }
            _ => {}
        }
        Ok(newest.map(|p| p.body).unwrap_or(OrgPolicyBody {
            org_id: org.org_id,
            ..Default::default()
        }))
    }

    /// The organisation policy in force, verified against the pinned root and never
    /// older than the newest this device has seen; also why the relay's copy was not used.
    pub async fn org_policy(
        &self,
        conn: &impl Link,
    ) -> Result<(OrgPolicyBody, Vec<String>), EngineError> {
        let mut problems = Vec::new();
        let policy = self.newest_policy(conn, &mut problems).await?;
        Ok((policy, problems))
    }

    /// (admin) Publishes a new organisation policy, signed by the root key, with a version
    /// above every one seen.
    pub async fn set_org_policy(
        &self,
        conn: &impl Link,
        device_self_approval: Option<bool>,
        certificate_lifetime_secs: Option<u64>,
    ) -> Result<OrgPolicyBody, EngineError> {
        let me = self.device()?;
        let root = Self::root_key(&me)?;
        let current = self.newest_policy(conn, &mut Vec::new()).await?;
        if certificate_lifetime_secs.is_some_and(|l| l < MIN_CERTIFICATE_LIFETIME_SECS) {
            return Err(EngineError::Invalid(format!(
                "certificates must stay valid at least {MIN_CERTIFICATE_LIFETIME_SECS} seconds"
            )));
        }
        let policy = root.sign_policy(OrgPolicyBody {
            org_id: me.org.org_id.clone(),
            device_self_approval: device_self_approval.unwrap_or(current.device_self_approval),
            issued_at: now_unix(),
            version: current.version + 1,
            certificate_lifetime_secs: certificate_lifetime_secs
                .unwrap_or(current.certificate_lifetime_secs),
        });
        conn.request(&Request::SetOrgPolicy {
            policy: policy.clone(),
        })
        .await
        .map_err(from_link)?;
        self.store_policy(&policy)?;
        Ok(policy.body)
    }

    /// How long the certificates this device issues stay valid, by the newest policy it
    /// has seen.
    pub(crate) fn certificate_lifetime(&self) -> Result<u64, EngineError> {
        Ok(self
            .stored_policy()?
            .map(|p| p.body.certificate_lifetime())
            .unwrap_or(DEFAULT_CERTIFICATE_LIFETIME_SECS))
    }

    /// On a device holding the root key: renews, before they run out, the certificates
    /// of every unrevoked device this device knows (a third of their lifetime into it),
    /// with each user's profile and roles from its own record. A revoked device's
    /// certificate is never renewed, so it stops being accepted within one lifetime
    /// even by members from whom the relay hides the revocation.
    pub(crate) async fn renew_certificates(
        &mut self,
        conn: &impl Link,
        report: &mut SyncReport,
    ) -> Result<(), EngineError> {
        let me = self.device()?;
        if me.root_key.is_none() || Self::require_admin(&me).is_err() {
            return Ok(());
        }
        let lifetime = self.certificate_lifetime()?;
        let due_by = now_unix() + lifetime * 2 / 3;
        let mut due = Vec::new();
        for user in self.known_users()? {
            if self
                .known_devices_of(&user)?
                .iter()
                .any(|c| c.body.not_after < due_by)
            {
                due.push(user);
            }
        }
        if due.is_empty() {
            return Ok(());
        }
        let root = Self::root_key(&me)?;
        self.certificates(conn).await?;
        for user in due {
            let Some((profile, roles)) = self.record_of(&user)? else {
                continue;
            };
            let result = async {
                let certificates = self.reissue(&root, &user, &profile, &roles)?;
                conn.request(&Request::ReissueCertificates {
                    certificates: certificates.clone(),
                })
                .await
                .map_err(from_link)?;
                self.record_issued(&certificates)
            }
            .await;
            if let Err(e) = result {
                report
                    .problems
                    .push(format!("could not renew the certificates of {user}: {e}"));
            }
        }
        Ok(())
    }

    /// Approves a pending new device of this user, where the organisation's policy allows
    /// it: this device signs the confirmation, and an admin device then issues the
    /// certificate after checking that signature.
    pub async fn confirm_device(
        &self,
        conn: &impl Link,
        device_id: &str,
    ) -> Result<(), EngineError> {
        let me = self.device()?;
        let confirmer = me
            .certificate
            .clone()
            .ok_or(EngineError::AwaitingApproval)?;
        let body = ConfirmationBody {
            org_id: me.org.org_id.clone(),
            user: me.user.clone(),
            device_id: device_id.to_string(),
            confirmed_at: now_unix(),
        };
        let confirmation = DeviceConfirmation {
            signature: self.sign_as_device(&me, &body.to_be_signed())?,
            body,
            confirmer,
        };
        conn.request(&Request::ConfirmDevice { confirmation })
            .await
            .map_err(from_link)?;
        Ok(())
    }

    /// Why a self-approved enrolment may not be certified, if it may not.
    fn check_confirmation(
        &self,
        pending: &PendingEnrolment,
        proven: &ProvenEnrolment,
    ) -> Result<(), String> {
        let org = self.device().map_err(|e| e.to_string())?.org;
        let Some(confirmation) = &pending.confirmation else {
            return Err("no device of the user confirmed it".into());
        };
        if proven.purpose != InvitePurpose::LinkDevice {
            return Err("only a device-link code can be confirmed by the user's own device".into());
        }
        confirmation
            .verify(&org, now_unix())
            .map_err(|e| format!("its confirmation does not verify: {e}"))?;
        if confirmation.body.device_id != proven.device_id || confirmation.body.user != proven.user
        {
            return Err("its confirmation names another device".into());
        }
        if crate::engine::revoked_device(&self.db, &confirmation.confirmer.body.device_id)
            .map_err(|e| e.to_string())?
        {
            return Err("it was confirmed by a revoked device".into());
        }
        Ok(())
    }

    /// On a device holding the root key: issues certificates for new devices that their
    /// user's own enrolled device confirmed, when the newest signed policy allows it.
    pub(crate) async fn approve_confirmed_devices(
        &mut self,
        conn: &impl Link,
        report: &mut SyncReport,
    ) -> Result<(), EngineError> {
        let me = self.device()?;
        if me.root_key.is_none() || Self::require_admin(&me).is_err() {
            return Ok(());
        }
        let confirmed: Vec<PendingEnrolment> = self
            .pending_raw(conn)
            .await?
            .into_iter()
            .filter(|p| p.confirmation.is_some())
            .collect();
        if confirmed.is_empty() {
            return Ok(());
        }
        let policy = self.newest_policy(conn, &mut report.problems).await?;
        if !policy.device_self_approval {
            return Ok(());
        }
        let root = Self::root_key(&me)?;
        self.certificates(conn).await?;
        for pending in confirmed {
            let proven = match self.prove_enrolment(&pending) {
                Ok(proven) => proven,
                Err(why) => {
                    report.problems.push(format!(
                        "not approving {}'s new device {}: {why}",
                        pending.user, pending.device_id
                    ));
                    continue;
                }
            };
            if let Err(why) = self.check_confirmation(&pending, &proven) {
                report.problems.push(format!(
                    "not approving {}'s new device {}: {why}",
                    pending.user, pending.device_id
                ));
                continue;
            }
            let Some((profile, roles)) = self.record_of(&proven.user)? else {
                report.problems.push(format!(
                    "not approving {}'s new device: this device has no verified record of them",
                    proven.user
                ));
                continue;
            };
            match self.issue(conn, &me, &root, &proven, profile, roles).await {
                Ok(()) => report
                    .approved_devices
                    .push(format!("{} ({})", proven.user, proven.device_id)),
                Err(e) => report.problems.push(format!(
                    "could not approve {}'s new device: {e}",
                    proven.user
                )),
            }
        }
        Ok(())
    }

    // ---- provisioning ------------------------------------------------------------------

    /// (admin) What the organisation looks like now, for provisioning. Who is enrolled
    /// comes from certificates this device verified (the relay's listing can hide a
    /// user, not make this device forget one), and only enrolment requests whose proofs
    /// check out are offered for approval.
    pub async fn provision_state(&mut self, conn: &impl Link) -> Result<OrgState, EngineError> {
        let me = self.device()?;
        Self::require_admin(&me)?;
        self.sync(conn).await?;
        let mut state = OrgState {
            me: me.user.clone(),
            ..Default::default()
        };
        self.certificates(conn).await?;
        for user in self.known_users()? {
            if let Some(record) = self.record_of(&user)? {
                state.enrolled.insert(user, record);
            }
        }
        for pending in self.pending_raw(conn).await? {
            match self.prove_enrolment(&pending) {
                Ok(_) => state.pending.push(pending),
                Err(why) => state.unproven.push(format!(
                    "{}'s enrolment request (device {}): {why}",
                    pending.user, pending.device_id
                )),
            }
        }
        let Response::Invites(invites) = conn
            .request(&Request::ListInvites)
            .await
            .map_err(from_link)?
        else {
            return Err(EngineError::Invalid(
                "unexpected answer to ListInvites".into(),
            ));
        };
        state.invited = invites
            .into_iter()
            .filter(|i| !i.link)
            .map(|i| i.user)
            .collect();
        for g in self.groups()? {
            if g.state == crate::engine::STATE_ACTIVE {
                state
                    .groups
                    .insert(g.name, (g.members.into_iter().collect(), g.managed));
            }
        }
        Ok(state)
    }

    /// (admin) Carries out one provisioning step; an invite returns its code.
    pub async fn apply_action(
        &mut self,
        conn: &impl Link,
        spec: &OrgSpec,
        action: &Action,
        invite_ttl_secs: u64,
    ) -> Result<Option<String>, EngineError> {
        let user_spec = |user: &str| {
            spec.users
                .iter()
                .find(|u| u.handle == user)
                .ok_or_else(|| EngineError::Invalid(format!("{user} is not in the file")))
        };
        match action {
            Action::Invite { user } => {
                Ok(Some(self.create_invite(conn, user, invite_ttl_secs).await?))
            }
            Action::Approve { user, device_id } => {
                let wanted = user_spec(user)?;
                let me = self.device()?;
                let root = Self::root_key(&me)?;
                let pending = self.pending_for(conn, user, Some(device_id)).await?;
                let proven = self.proven(&pending)?;
                if proven.purpose != InvitePurpose::NewUser {
                    return Err(EngineError::Invalid(format!(
                        "{user}'s device {device_id} was made with a device-link code; approve it with `muster approve`"
                    )));
                }
                self.issue(conn, &me, &root, &proven, wanted.profile(), wanted.roles())
                    .await?;
                Ok(None)
            }
            Action::UpdateCertificates { user } => {
                let wanted = user_spec(user)?;
                let me = self.device()?;
                let root = Self::root_key(&me)?;
                let certificates = self.reissue(&root, user, &wanted.profile(), &wanted.roles())?;
                conn.request(&Request::ReissueCertificates {
                    certificates: certificates.clone(),
                })
                .await
                .map_err(from_link)?;
                self.record_issued(&certificates)?;
                Ok(None)
            }
            Action::CreateGroup {
                group,
                members,
                managed,
            } => {
                self.create_group(conn, group, members, *managed).await?;
                Ok(None)
            }
            Action::AddMember { group, user } => {
                self.add_member(conn, group, user).await?;
                Ok(None)
            }
            Action::RemoveMember { group, user } => {
                self.remove_member(conn, group, user).await?;
                Ok(None)
            }
        }
    }

    /// New certificates for each of `user`'s unrevoked devices this device knows, with
    /// the given profile and roles and a fresh validity.
    fn reissue(
        &self,
        root: &OrgRootKey,
        user: &str,
        profile: &Profile,
        roles: &[Role],
    ) -> Result<Vec<Certificate>, EngineError> {
        let now = now_unix();
        let lifetime = self.certificate_lifetime()?;
        let certificates: Vec<Certificate> = self
            .known_devices_of(user)?
            .into_iter()
            .map(|c| {
                root.sign(CertificateBody {
                    profile: profile.clone(),
                    roles: roles.to_vec(),
                    // Strictly later than the certificate it replaces, so devices take it.
                    not_before: now.saturating_sub(300).max(c.body.not_before + 1),
                    not_after: now + lifetime,
                    ..c.body
                })
            })
            .collect();
        if certificates.is_empty() {
            return Err(EngineError::Invalid(format!(
                "this device knows no enrolled device of {user}"
            )));
        }
        Ok(certificates)
    }

    // ---- profiles ---------------------------------------------------------------------

    /// This device's approved profile, from its certificate.
    pub fn profile(&self) -> Result<Profile, EngineError> {
        Ok(self
            .device()?
            .certificate
            .ok_or(EngineError::AwaitingApproval)?
            .body
            .profile)
    }

    /// Asks an admin to approve a new profile, signed by this device; colleagues see it
    /// only after approval. Leave `title` or `department` out to stop revealing it.
    pub async fn request_profile(
        &self,
        conn: &impl Link,
        profile: Profile,
    ) -> Result<(), EngineError> {
        let me = self.device()?;
        let requester = me
            .certificate
            .clone()
            .ok_or(EngineError::AwaitingApproval)?;
        let body = ProfileRequestBody {
            org_id: me.org.org_id.clone(),
            user: me.user.clone(),
            profile,
            requested_at: now_unix(),
        };
        let request = ProfileRequest {
            signature: self.sign_as_device(&me, &body.to_be_signed())?,
            body,
            requester,
        };
        conn.request(&Request::RequestProfileChange { request })
            .await
            .map_err(from_link)?;
        Ok(())
    }

    /// Why a profile request may not be approved, if it may not; else who signed it.
    fn check_profile_request(
        &self,
        user: &str,
        request: Option<&ProfileRequest>,
    ) -> Result<String, String> {
        let org = self.device().map_err(|e| e.to_string())?.org;
        let request = request.ok_or("it is not signed by any device of the user")?;
        request
            .verify(&org, now_unix())
            .map_err(|e| format!("its signature does not check out: {e}"))?;
        if request.body.user != user {
            return Err(format!("it was signed for {}", request.body.user));
        }
        let signer = &request.requester.body.device_id;
        if crate::engine::revoked_device(&self.db, signer).map_err(|e| e.to_string())? {
            return Err("it was signed by a revoked device".into());
        }
        let approved: Option<i64> = self
            .db
            .query_row(
                "SELECT requested_at FROM profile_approvals WHERE user = ?1",
                [user],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| e.to_string())?;
        if approved.is_some_and(|at| request.body.requested_at as i64 <= at) {
            return Err(
                "it is not newer than the last profile this device approved for them (a replay)"
                    .into(),
            );
        }
        Ok(signer.clone())
    }

    /// (admin) Profile changes waiting for approval, each with the check of its signature.
    pub async fn profile_changes(
        &self,
        conn: &impl Link,
    ) -> Result<Vec<ProfileChangeView>, EngineError> {
        Self::require_admin(&self.device()?)?;
        let Response::ProfileChanges(changes) = conn
            .request(&Request::ListProfileChanges)
            .await
            .map_err(from_link)?
        else {
            return Err(EngineError::Invalid(
                "unexpected answer to ListProfileChanges".into(),
            ));
        };
        Ok(changes
            .into_iter()
            .map(|c| {
                let check = self.check_profile_request(&c.user, c.request.as_ref());
                ProfileChangeView {
                    requested: c
                        .request
                        .as_ref()
                        .map(|r| r.body.profile.clone())
                        .unwrap_or(c.requested),
                    user: c.user,
                    current: c.current,
                    requested_at: rfc3339_ms(c.requested_at as i64 * 1000),
                    signed_by: check.as_ref().ok().cloned(),
                    problem: check.err(),
                }
            })
            .collect())
    }

    /// (admin) Approves `user`'s requested profile, as their device signed it: new
    /// certificates for each of their devices, with the roles of this device's record.
    pub async fn approve_profile(
        &self,
        conn: &impl Link,
        user: &str,
    ) -> Result<Profile, EngineError> {
        let me = self.device()?;
        let root = Self::root_key(&me)?;
        let Response::ProfileChanges(changes) = conn
            .request(&Request::ListProfileChanges)
            .await
            .map_err(from_link)?
        else {
            return Err(EngineError::Invalid(
                "unexpected answer to ListProfileChanges".into(),
            ));
        };
        let change = changes
            .into_iter()
            .find(|c| c.user == user)
            .ok_or_else(|| EngineError::Invalid(format!("{user} has no pending profile change")))?;
        self.check_profile_request(user, change.request.as_ref())
            .map_err(|why| {
                EngineError::Invalid(format!("refusing {user}'s profile change: {why}"))
            })?;
        let request = change.request.expect("checked above");
        self.certificates(conn).await?;
        let (_, roles) = self.record_of(user)?.ok_or_else(|| {
            EngineError::Invalid(format!("this device has no verified record of {user}"))
        })?;
        let certificates = self.reissue(&root, user, &request.body.profile, &roles)?;
        conn.request(&Request::ApproveProfileChange {
            certificates: certificates.clone(),
        })
        .await
        .map_err(from_link)?;
        self.record_issued(&certificates)?;
        self.db.execute(
            "INSERT INTO profile_approvals (user, requested_at) VALUES (?1, ?2)
             ON CONFLICT (user) DO UPDATE SET requested_at = excluded.requested_at",
            params![user, request.body.requested_at as i64],
        )?;
        Ok(request.body.profile)
    }

    /// (admin) Refuses `user`'s requested profile change.
    pub async fn reject_profile(&self, conn: &impl Link, user: &str) -> Result<(), EngineError> {
        Self::require_admin(&self.device()?)?;
        conn.request(&Request::RejectProfileChange {
            user: user.to_string(),
        })
        .await
        .map_err(from_link)?;
        Ok(())
    }

    // ---- the compliance archive's published checkpoints ----------------------------------

    /// On an admin device: keeps a copy of every checkpoint an archive published on the
    /// relay whose signature verifies with that archive's certificate. An archive that
    /// signs two different histories for one entry is reported.
    pub(crate) async fn collect_archive_checkpoints(
        &mut self,
        conn: &impl Link,
        report: &mut SyncReport,
    ) -> Result<(), EngineError> {
        if Self::require_admin(&self.device()?).is_err() {
            return Ok(());
        }
        let since: i64 = self
            .db
            .query_row(
                "SELECT value FROM sync_state WHERE key = 'archive_checkpoints'",
                [],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0);
        let Response::ArchiveCheckpoints(batch) = conn
            .request(&Request::ArchiveCheckpoints {
                since: since as u64,
            })
            .await
            .map_err(from_link)?
        else {
            return Err(EngineError::Invalid(
                "unexpected answer to ArchiveCheckpoints".into(),
            ));
        };
        let pending: Vec<PublishedCheckpoint> = self
            .db
            .prepare(
                "SELECT device_id, entry_seq, hash, signed_at, signature FROM archive_checkpoints_pending",
            )?
            .query_map([], |r| {
                Ok(PublishedCheckpoint {
                    device_id: r.get(0)?,
                    entry_seq: r.get::<_, i64>(1)? as u64,
                    hash: r.get(2)?,
                    signed_at: r.get(3)?,
                    signature: r.get(4)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        if batch.is_empty() && pending.is_empty() {
            return Ok(());
        }
        let collected = batch.last().map_or(since as u64, |(position, _)| *position);
        // The newest first: made-up checkpoints set aside earlier cannot crowd them out.
        let candidates: Vec<PublishedCheckpoint> = batch
            .into_iter()
            .map(|(_, checkpoint)| checkpoint)
            .chain(pending)
            .collect();
        // Every archive certificate this device has verified, including those of archives
        // revoked since: their checkpoints stay evidence.
        self.certificates(conn).await?;
        let tx = self.db.transaction()?;
        tx.execute("DELETE FROM archive_checkpoints_pending", [])?;
        // A checkpoint that cannot be checked yet (its archive's certificate not seen)
        // waits here, up to a bound, so a relay cannot stall collection with made-up ones.
        let (mut waiting, mut dropped) = (0usize, 0usize);
        for checkpoint in candidates {
            let archive = crate::engine::known_certificate(&tx, &checkpoint.device_id)?
                .filter(|c| c.is_archive());
            let Some(archive) = archive else {
                if waiting < MAX_PENDING_CHECKPOINTS {
                    tx.execute(
                        "INSERT OR IGNORE INTO archive_checkpoints_pending (device_id, entry_seq, hash, signed_at, signature)
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                        params![
                            checkpoint.device_id,
                            checkpoint.entry_seq as i64,
                            checkpoint.hash,
                            checkpoint.signed_at,
                            checkpoint.signature
                        ],
                    )?;
                    waiting += 1;
                } else {
                    dropped += 1;
                }
                continue;
            };
            let payload = muster_proto::archive_checkpoint_payload(
                checkpoint.entry_seq as i64,
                &checkpoint.hash,
            );
            let signed = ring::signature::UnparsedPublicKey::new(
                &ring::signature::ED25519,
                &archive.body.device_key,
            )
            .verify(&payload, &checkpoint.signature);
            if signed.is_err() {
                report.problems.push(format!(
                    "an archive checkpoint on the relay (entry {}) does not verify with the archive's key: ignored",
                    checkpoint.entry_seq
                ));
                continue;
            }
            let held: Option<Vec<u8>> = tx
                .query_row(
                    "SELECT hash FROM archive_checkpoints_seen WHERE device_id = ?1 AND entry_seq = ?2",
                    params![checkpoint.device_id, checkpoint.entry_seq as i64],
                    |r| r.get(0),
                )
                .optional()?;
            match held {
                Some(hash) if hash != checkpoint.hash => report.problems.push(format!(
                    "the archive {} signed two different histories at entry {}",
                    archive.body.user, checkpoint.entry_seq
                )),
                Some(_) => {}
                None => {
                    tx.execute(
                        "INSERT INTO archive_checkpoints_seen (device_id, entry_seq, hash, signed_at, signature)
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                        params![
                            checkpoint.device_id,
                            checkpoint.entry_seq as i64,
                            checkpoint.hash,
                            checkpoint.signed_at,
                            checkpoint.signature
                        ],
                    )?;
                }
            }
        }
        if waiting > 0 {
            report.problems.push(format!(
                "{waiting} archive checkpoint(s) on the relay come from devices whose archive certificate this device never saw: they are checked once it does"
            ));
        }
        if dropped > 0 {
            report.problems.push(format!(
                "{dropped} more such archive checkpoint(s) were dropped: the relay may be flooding this device with made-up ones"
            ));
        }
        tx.execute(
            "INSERT INTO sync_state (key, value) VALUES ('archive_checkpoints', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [collected as i64],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// (admin) Checks a chain the archive host exported (`muster archive export-chain`)
    /// independently of that host: its links and hashes, its signatures with the key of
    /// the archive's certificate, the lawfulness of every cleared entry, and every
    /// checkpoint this admin device collected from the relay.
    pub async fn archive_check(
        &mut self,
        conn: &impl Link,
        chain: &crate::archive::ExportedChain,
    ) -> Result<crate::archive::VerifyReport, EngineError> {
        Self::require_admin(&self.device()?)?;
        self.collect_archive_checkpoints(conn, &mut SyncReport::default())
            .await?;
        let archive = self
            .known_certificate(&chain.device_id)?
            .filter(|c| c.is_archive())
            .ok_or_else(|| {
                EngineError::Invalid(format!(
                    "device {} is not an archive this device knows",
                    chain.device_id
                ))
            })?;
        let key = archive.body.device_key;
        let mut report = crate::archive::verify_chain(&chain.entries, &chain.checkpoints, &key);
        let mut stmt = self.db.prepare(
            "SELECT entry_seq, hash, signed_at, signature FROM archive_checkpoints_seen
             WHERE device_id = ?1 ORDER BY entry_seq",
        )?;
        let held = stmt
            .query_map([&chain.device_id], |r| {
                Ok(crate::archive::Checkpoint {
                    entry_seq: r.get(0)?,
                    hash: hex::encode(r.get::<_, Vec<u8>>(1)?),
                    signed_at: r.get(2)?,
                    signature: hex::encode(r.get::<_, Vec<u8>>(3)?),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        crate::archive::compare_published(&mut report, &chain.entries, &held, &key);
        Ok(report)
    }

    /// The newest certificate this device verified for `device_id`, if any.
    fn known_certificate(&self, device_id: &str) -> Result<Option<Certificate>, EngineError> {
        crate::engine::known_certificate(&self.db, device_id)
    }

    // ---- directory, devices, audit, revocation ------------------------------------------

    /// This user's enrolled devices.
    pub async fn devices(&self, conn: &impl Link) -> Result<Vec<DeviceView>, EngineError> {
        let me = self.device()?;
        Ok(self
            .certificates(conn)
            .await?
            .into_iter()
            .filter(|c| c.body.user == me.user)
            .map(|c| DeviceView {
                this_device: c.body.device_id == me.device_id,
                device_id: c.body.device_id,
                user: c.body.user,
                enrolled_until: rfc3339_ms(c.body.not_after as i64 * 1000),
            })
            .collect())
    }

    /// Enrolled colleagues, from certificates verified against the pinned organisation root.
    pub async fn directory(&self, conn: &impl Link) -> Result<Vec<DirectoryEntry>, EngineError> {
        let mut entries: Vec<DirectoryEntry> = Vec::new();
        for cert in self.certificates(conn).await? {
            let body = cert.body;
            match entries.iter_mut().find(|e| e.user == body.user) {
                Some(entry) => entry.devices += 1,
                None => entries.push(DirectoryEntry {
                    user: body.user,
                    display_name: body.profile.display_name,
                    title: body.profile.title,
                    department: body.profile.department,
                    roles: body
                        .roles
                        .iter()
                        .map(|r| match r {
                            Role::Admin => "admin".to_string(),
                            Role::Member => "member".to_string(),
                            Role::Archive => "archive".to_string(),
                        })
                        .collect(),
                    devices: 1,
                }),
            }
        }
        entries.sort_by(|a, b| a.user.cmp(&b.user));
        Ok(entries)
    }

    /// (admin) The relay's latest audit events.
    pub async fn audit(&self, conn: &impl Link, limit: u32) -> Result<Vec<AuditView>, EngineError> {
        Self::require_admin(&self.device()?)?;
        let Response::Audit(events) = conn
            .request(&Request::Audit { limit })
            .await
            .map_err(from_link)?
        else {
            return Err(EngineError::Invalid("unexpected answer to Audit".into()));
        };
        Ok(events
            .into_iter()
            .map(|e| AuditView {
                at: rfc3339_ms(e.at as i64 * 1000),
                event: e.event,
                actor: e.actor,
                subject: e.subject,
                group: e.group.map(|g| {
                    self.db
                        .query_row("SELECT name FROM groups WHERE group_id = ?1", [&g], |r| {
                            r.get(0)
                        })
                        .unwrap_or_else(|_| hex::encode(&g))
                }),
            })
            .collect())
    }

    /// (admin) Revokes all of `user`'s devices, or the one named: the relay cuts them off
    /// at once, and this device removes them from its groups. The devices are the ones
    /// this device verified, not whatever the relay lists. Returns the revoked device ids.
    pub async fn revoke(
        &mut self,
        conn: &impl Link,
        user: &str,
        device: Option<&str>,
    ) -> Result<Vec<String>, EngineError> {
        let me = self.device()?;
        let root = Self::root_key(&me)?;
        self.certificates(conn).await?;
        let device_ids: Vec<String> = self
            .known_devices_of(user)?
            .into_iter()
            .map(|c| c.body.device_id)
            .filter(|d| device.is_none_or(|prefix| d.starts_with(prefix)))
            .collect();
        if device_ids.is_empty() {
            return Err(EngineError::Invalid(match device {
                Some(d) => format!("{user} has no enrolled device {d}"),
                None => format!("no enrolled device of user {user:?}"),
            }));
        }
        self.learn_revocations(conn, &mut SyncReport::default())
            .await?;
        let revocation = root.sign_revocation(RevocationBody {
            org_id: me.org.org_id.clone(),
            user: user.to_string(),
            device_ids: device_ids.clone(),
            issued_at: now_unix(),
            serial: self.last_revocation_serial()? + 1,
        });
        let serial = revocation.body.serial;
        conn.request(&Request::Revoke { revocation })
            .await
            .map_err(from_link)?;
        self.db.execute(
            "INSERT OR IGNORE INTO revocation_serials (serial) VALUES (?1)",
            [serial as i64],
        )?;
        for id in &device_ids {
            self.db.execute(
                "INSERT OR IGNORE INTO revoked_devices (device_id, user) VALUES (?1, ?2)",
                params![id, user],
            )?;
        }
        let report = self.sync(conn).await?;
        if let Some(problem) = report.problems.first() {
            return Err(EngineError::Invalid(format!(
                "revoked, but removing from groups is incomplete: {problem}"
            )));
        }
        Ok(device_ids)
    }
}
