//! Enrolment, approval, profiles, organisation policy and revocation: what admin devices
//! sign, and the proofs they check before signing anything the relay hands them.
//!
//! An admin device never trusts the relay's word for who is enrolled, what a user's roles
//! are, or which key a request belongs to. It keeps its own record: every certificate it
//! has verified (newest per device), the profile and roles it last signed for each user,
//! the codes it has already used, and the newest organisation policy it has seen.

use crate::engine::{
    now_ms, rfc3339_ms, AuditView, DeviceRow, DeviceView, DirectoryEntry, Engine, PendingView,
};
use crate::error::{from_link, EngineError};
use crate::link::Link;
use crate::provision::{Action, OrgSpec, OrgState};
use muster_proto::{
    now_unix, validate_handle, verify_enrolment, Certificate, CertificateBody, CodeSecret,
    ConfirmationBody, DeviceConfirmation, EnrolmentGrant, GrantBody, InviteCode, InvitePurpose,
    OrgPolicy, OrgPolicyBody, OrgRootKey, PendingEnrolment, Profile, ProfileRequest,
    ProfileRequestBody, PublishedCheckpoint, Request, Response, Revocation, RevocationBody, Role,
    DEFAULT_CERTIFICATE_LIFETIME_SECS,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_traits::signatures::Signer as _;
use rusqlite::{params, OptionalExtension};
use serde::Serialize;
mod checkpoints;
mod enrolment;
mod organisation;
#[cfg(test)]
pub(crate) use organisation::store_policy_in;
mod profiles;
pub mod root_backup;
mod shamir;

/// Splits `secret` into `count` Shamir shares, `threshold` of which restore it.
pub(crate) fn shamir_split(secret: &[u8], threshold: u8, count: u8) -> Vec<Vec<u8>> {
    shamir::split(secret, threshold, count)
}

/// Restores a secret from Shamir shares `(x, bytes)`.
pub(crate) fn shamir_combine(shares: &[(u8, Vec<u8>)]) -> Option<Vec<u8>> {
    shamir::combine(shares)
}

pub use enrolment::AccountKind;
pub use profiles::ProfileChangeView;

/// How far back a new certificate's validity starts, for devices whose clocks run behind.
const CLOCK_SKEW_SECS: u64 = 300;

/// What an admin device signs with: the organisation root when it holds it, else its own
/// device key under its root-signed admin certificate. The root alone makes admins.
pub(crate) enum Signing {
    Root(OrgRootKey),
    Admin {
        certificate: Box<Certificate>,
        key: SignatureKeyPair,
    },
}

impl Signing {
    fn sign_with_device(key: &SignatureKeyPair) -> impl FnOnce(&[u8]) -> Vec<u8> + '_ {
        // Ed25519 over bytes in memory does not fail.
        |message| key.sign(message).expect("device key signs")
    }

    /// Signs `body`, valid from now (allowing for clock skew) for `lifetime` seconds, and
    /// never beyond the issuing admin's own certificate: the one place a certificate is
    /// issued. A certificate that `replaces` another starts strictly after it, so devices
    /// take the new one.
    pub(crate) fn certificate(
        &self,
        body: CertificateBody,
        lifetime: u64,
        replaces: Option<&Certificate>,
    ) -> Result<Certificate, EngineError> {
        let now = now_unix();
        let earliest = now.saturating_sub(CLOCK_SKEW_SECS);
        let not_before = replaces.map_or(earliest, |old| earliest.max(old.body.not_before + 1));
        let body = CertificateBody {
            not_before,
            not_after: now + lifetime,
            ..body
        };
        match self {
            Signing::Root(root) => Ok(root.sign(body)),
            Signing::Admin { certificate, key } => {
                if body.roles.contains(&Role::Admin) {
                    return Err(EngineError::AdminNeedsRoot(body.user));
                }
                let body = CertificateBody {
                    not_before: body.not_before.max(certificate.body.not_before),
                    not_after: body.not_after.min(certificate.body.not_after),
                    ..body
                };
                if body.not_after <= now {
                    return Err(EngineError::Invalid(
                        "this device's own admin certificate has run out: an admin holding the organisation root renews it".into(),
                    ));
                }
                Ok(Certificate::issue_as_admin(
                    body,
                    certificate,
                    Self::sign_with_device(key),
                ))
            }
        }
    }

    pub(crate) fn revocation(&self, body: RevocationBody) -> Revocation {
        match self {
            Signing::Root(root) => root.sign_revocation(body),
            Signing::Admin { certificate, key } => {
                Revocation::issue_as_admin(body, certificate, Self::sign_with_device(key))
            }
        }
    }

    pub(crate) fn policy(&self, body: OrgPolicyBody) -> OrgPolicy {
        match self {
            Signing::Root(root) => root.sign_policy(body),
            Signing::Admin { certificate, key } => {
                OrgPolicy::issue_as_admin(body, certificate, Self::sign_with_device(key))
            }
        }
    }

    /// Whether this is the organisation root (which alone makes and renews admins).
    pub(crate) fn is_root(&self) -> bool {
        matches!(self, Signing::Root(_))
    }
}

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

    /// What this admin device signs with: the root if it holds it, else its own key under
    /// its admin certificate, which must be root-signed, valid now and not revoked.
    pub(crate) fn signing(&self, device: &DeviceRow) -> Result<Signing, EngineError> {
        Self::require_admin(device)?;
        if device.root_key.is_some() {
            return Ok(Signing::Root(Self::root_key(device)?));
        }
        let certificate = device.certificate.clone().ok_or(EngineError::NotAdmin)?;
        certificate
            .verify(&device.org, now_unix())
            .map_err(|e| EngineError::Invalid(format!("this device's admin certificate: {e}")))?;
        if crate::engine::revocation_list(&self.db)?.covers(&certificate) {
            return Err(EngineError::Invalid(
                "this device's admin certificate was revoked".into(),
            ));
        }
        Ok(Signing::Admin {
            certificate: Box::new(certificate),
            key: self.signer(device)?,
        })
    }

    pub(crate) fn root_key(device: &DeviceRow) -> Result<OrgRootKey, EngineError> {
        Self::require_admin(device)?;
        let pkcs8 = device.root_key.as_ref().ok_or(EngineError::NoRootKey)?;
        Ok(OrgRootKey::from_pkcs8(pkcs8)?)
    }

    /// (admin, holding the root) The organisation root key sealed under `passphrase`, for
    /// `muster admin root restore` on another admin device.
    pub fn root_backup(&self, passphrase: &str) -> Result<root_backup::RootBackup, EngineError> {
        let me = self.device()?;
        let root = Self::root_key(&me)?;
        Ok(root_backup::seal(
            &root,
            &self.authority()?,
            &me.org,
            passphrase,
        )?)
    }

    /// (admin, holding the root) The root split into one sealed share per `(admin,
    /// passphrase)`, any `threshold` of which restore it. Every holder must be an admin by
    /// this device's record.
    pub fn root_split(
        &self,
        threshold: u8,
        holders: &[(String, String)],
    ) -> Result<Vec<root_backup::RootBackup>, EngineError> {
        let me = self.device()?;
        let root = Self::root_key(&me)?;
        let mut seen = std::collections::HashSet::new();
        for (holder, _) in holders {
            if !seen.insert(holder) {
                return Err(EngineError::Invalid(format!("{holder} is named twice")));
            }
            let admin = self
                .record_of(holder)?
                .is_some_and(|(_, roles)| roles.contains(&Role::Admin));
            if !admin {
                return Err(EngineError::Invalid(format!(
                    "{holder} is not an admin by this device's record: shares go to admins only"
                )));
            }
        }
        Ok(root_backup::split(
            &root,
            &self.authority()?,
            &me.org,
            threshold,
            holders,
        )?)
    }

    /// (admin) Installs the organisation root key restored from shares of one split, each
    /// with its holder's passphrase. Returns whether it was new to this device.
    pub fn root_restore_shares(
        &mut self,
        shares: &[(root_backup::RootBackup, String)],
    ) -> Result<bool, EngineError> {
        let me = self.device()?;
        Self::require_admin(&me)?;
        let (root, authority) = root_backup::combine(shares, &me.org)?;
        self.install_root(&me, &root, &authority)
    }

    /// What this device knows as the root's holder, for a backup.
    fn authority(&self) -> Result<root_backup::Authority, EngineError> {
        let records = self
            .db
            .prepare("SELECT user, profile, roles, updated_at FROM org_records")?
            .query_map([], |r| {
                Ok(root_backup::AuthorityRecord {
                    user: r.get(0)?,
                    profile: String::from_utf8_lossy(&r.get::<_, Vec<u8>>(1)?).into_owned(),
                    roles: String::from_utf8_lossy(&r.get::<_, Vec<u8>>(2)?).into_owned(),
                    updated_at: r.get(3)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        let revoked = self
            .db
            .prepare("SELECT device_id, user FROM revoked_devices")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let revocation_serials = self
            .db
            .prepare("SELECT serial FROM revocation_serials")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let used_codes = self
            .db
            .prepare("SELECT code_key, device_id FROM used_codes")?
            .query_map([], |r| {
                Ok((hex::encode(r.get::<_, Vec<u8>>(0)?), r.get(1)?))
            })?
            .collect::<Result<_, _>>()?;
        let vouched = self
            .db
            .prepare("SELECT issuer, digest FROM vouched_certificates")?
            .query_map([], |r| {
                Ok((r.get(0)?, hex::encode(r.get::<_, Vec<u8>>(1)?)))
            })?
            .collect::<Result<_, _>>()?;
        let policy = self.stored_policy()?;
        Ok(root_backup::Authority {
            records,
            revoked,
            revocation_serials,
            used_codes,
            policy: policy.map(|p| String::from_utf8_lossy(&to_json(&p)).into_owned()),
            vouched,
        })
    }

    /// Installs the root with what its holder knew: records this device has not signed
    /// itself are taken from the backup, and revocations and used codes are added.
    fn install_root(
        &mut self,
        me: &DeviceRow,
        root: &OrgRootKey,
        authority: &root_backup::Authority,
    ) -> Result<bool, EngineError> {
        let tx = self
            .db
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for r in &authority.records {
            tx.execute(
                "INSERT OR IGNORE INTO org_records (user, profile, roles, updated_at) VALUES (?1, ?2, ?3, ?4)",
                params![r.user, r.profile.as_bytes(), r.roles.as_bytes(), r.updated_at],
            )?;
        }
        for (device_id, user) in &authority.revoked {
            tx.execute(
                "INSERT OR IGNORE INTO revoked_devices (device_id, user) VALUES (?1, ?2)",
                params![device_id, user],
            )?;
        }
        for (issuer, digest) in &authority.vouched {
            if let Ok(digest) = hex::decode(digest) {
                tx.execute(
                    "INSERT OR IGNORE INTO vouched_certificates (issuer, digest) VALUES (?1, ?2)",
                    params![issuer, digest],
                )?;
            }
        }
        for serial in &authority.revocation_serials {
            tx.execute(
                "INSERT OR IGNORE INTO revocation_serials (serial) VALUES (?1)",
                [serial],
            )?;
        }
        for (code_key, device_id) in &authority.used_codes {
            if let Ok(key) = hex::decode(code_key) {
                tx.execute(
                    "INSERT OR IGNORE INTO used_codes (code_key, device_id) VALUES (?1, ?2)",
                    params![key, device_id],
                )?;
            }
        }
        if let Some(policy) = authority
            .policy
            .as_deref()
            .and_then(|p| serde_json::from_str::<muster_proto::OrgPolicy>(p).ok())
            .filter(|p| p.verify(&me.org).is_ok())
        {
            organisation::store_policy_in(&tx, &policy)?;
        }
        let new = me.root_key.is_none();
        if new {
            tx.execute(
                "UPDATE device SET root_key = ?1 WHERE id = 1",
                [root.pkcs8()],
            )?;
        }
        tx.commit()?;
        Ok(new)
    }

    /// (admin) Installs the organisation root key from a backup, so this admin device
    /// can do what only the root can. Returns whether it was new to this device.
    pub fn root_restore(
        &mut self,
        backup: &root_backup::RootBackup,
        passphrase: &str,
    ) -> Result<bool, EngineError> {
        let me = self.device()?;
        Self::require_admin(&me)?;
        let (root, authority) = root_backup::open(backup, &me.org, passphrase)?;
        self.install_root(&me, &root, &authority)
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

    /// Keeps the newest certificate of each device among `certs` (already verified). An
    /// admin's certificate is replaced only by one the root signed, as the relay does.
    pub(crate) fn remember_certificates(&self, certs: &[Certificate]) -> Result<(), EngineError> {
        for cert in certs {
            if cert.issuer.is_some()
                && self
                    .known_certificate(&cert.body.device_id)?
                    .is_some_and(|known| known.is_admin())
            {
                continue;
            }
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

    /// Every certificate this device has verified (the newest of each device).
    fn all_known_certificates(&self) -> Result<Vec<Certificate>, EngineError> {
        let mut stmt = self
            .db
            .prepare_cached("SELECT certificate FROM known_certificates")?;
        let certs = stmt
            .query_map([], |r| r.get::<_, Vec<u8>>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(certs
            .iter()
            .filter_map(|c| Certificate::from_bytes(c).ok())
            .collect())
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
        let revoked = crate::engine::revocation_list(&self.db)?;
        Ok(certs
            .iter()
            .filter_map(|c| Certificate::from_bytes(c).ok())
            .filter(|c| !revoked.covers(c))
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
        if let Some(record) = self.signed_record_of(user)? {
            return Ok(Some(record));
        }
        let now = now_unix();
        Ok(self
            .known_devices_of(user)?
            .into_iter()
            .filter(|c| c.body.not_after > now)
            .max_by_key(|c| c.body.not_before)
            .map(|c| (c.body.profile, c.body.roles)))
    }

    /// `user`'s profile and roles as this device (or the root holder whose backup it
    /// restored) last signed them. What this device signs on its own, unasked (renewals,
    /// devices users approved themselves), comes from here only, never from certificates
    /// the relay served.
    pub(crate) fn signed_record_of(
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
        Ok(None)
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
    /// root and is not revoked (nor issued by a revoked admin device without its
    /// revocation vouching for it), as the relay lists them; each is remembered (see
    /// [`Self::remember_certificates`]).
    pub(crate) async fn certificates(
        &self,
        conn: &impl Link,
    ) -> Result<Vec<Certificate>, EngineError> {
        let org = self.device()?.org;
        let certs = ask!(conn, Request::Directory, Response::Directory(certs) => certs);
        let revoked = crate::engine::revocation_list(&self.db)?;
        let certs: Vec<Certificate> = certs
            .into_iter()
            .filter(|c| match c.verify(&org, now_unix()) {
                Ok(()) => !revoked.covers(c),
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
                            Role::Bot => "bot".to_string(),
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
        let events = ask!(conn, Request::Audit { limit }, Response::Audit(events) => events);
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
        let signing = self.signing(&me)?;
        let listed = self.certificates(conn).await?;
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
        if !signing.is_root()
            && self
                .known_devices_of(user)?
                .iter()
                .any(|c| c.is_admin() && device_ids.contains(&c.body.device_id))
        {
            return Err(EngineError::RevokeAdminNeedsRoot(user.to_string()));
        }
        self.learn_revocations(conn).await?;
        // What a revoked admin device issued stays valid only where this revocation
        // vouches for it: every such certificate this device can see.
        let mut vouched: Vec<Vec<u8>> = listed
            .into_iter()
            .chain(self.certificates_in_groups()?)
            .chain(self.all_known_certificates()?)
            .filter(|c| {
                c.issuer_device()
                    .is_some_and(|i| device_ids.iter().any(|d| d == i))
                    && c.verify_issuer(&me.org).is_ok()
            })
            .map(|c| c.digest())
            .collect();
        vouched.sort();
        vouched.dedup();
        let revocation = signing.revocation(RevocationBody {
            org_id: me.org.org_id.clone(),
            user: user.to_string(),
            device_ids: device_ids.clone(),
            issued_at: now_unix(),
            serial: self.last_revocation_serial()? + 1,
            vouched,
        });
        conn.request(&Request::Revoke {
            revocation: revocation.clone(),
        })
        .await
        .map_err(from_link)?;
        crate::engine::store_revocation(&self.db, &revocation)?;
        let earlier_problems = self.activity.problems.len();
        self.sync_steps(conn).await?;
        // Other problems of the sync (say, a message the revoked device sent just before,
        // now dropped) are the user's to see, not a failure of the revocation.
        if let Some(problem) = self.activity.problems[earlier_problems..]
            .iter()
            .find(|p| p.starts_with(crate::engine::REMOVAL_INCOMPLETE))
        {
            return Err(EngineError::Invalid(format!(
                "revoked, but removing from groups is incomplete: {problem}"
            )));
        }
        Ok(device_ids)
    }
}
