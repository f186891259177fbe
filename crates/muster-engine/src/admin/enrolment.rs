//! Enrolment as admin devices see it: invite and link codes, proofs checked before signing,
//! approval, rejection and self-approval.

use super::*;

impl Engine {
    /// Signs a grant for a fresh code secret and files it with the relay.
    pub(super) async fn make_code(
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
        self.signing(&self.device()?)?;
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
        if crate::engine::certificate_revoked(&self.db, &grant.issuer).map_err(|e| e.to_string())? {
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
        Ok(ask!(conn, Request::ListPending, Response::Pending(p) => p))
    }

    /// Enrolment requests waiting for an admin, each with the check of its proofs.
    pub async fn pending(&self, conn: &impl Link) -> Result<Vec<PendingView>, EngineError> {
        Self::require_admin(&self.device()?)?;
        self.certificates(conn).await?;
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

    pub(super) async fn pending_for(
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
    pub(super) fn proven(
        &self,
        pending: &PendingEnrolment,
    ) -> Result<ProvenEnrolment, EngineError> {
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
    /// from this device's own record. A new account of `kind` archive becomes the
    /// organisation's compliance archive, and one of kind bot a service account (each with
    /// that role only).
    pub async fn approve(
        &mut self,
        conn: &impl Link,
        user: &str,
        device: Option<&str>,
        kind: AccountKind,
    ) -> Result<String, EngineError> {
        let me = self.device()?;
        let signing = self.signing(&me)?;
        // Refresh what this device knows, so a user enrolled elsewhere (or an admin whose
        // invite this is) is recognised.
        self.certificates(conn).await?;
        let pending = self.pending_for(conn, user, device).await?;
        let proven = self.proven(&pending)?;
        let (profile, roles) = match self.record_of(user)? {
            Some((_, roles)) if kind.role().is_some_and(|role| !roles.contains(&role)) => {
                return Err(EngineError::Invalid(format!(
                    "{user} is an enrolled account without the {} role; a {} needs an account of its own",
                    kind.name(),
                    kind.name()
                )))
            }
            Some(record) => record,
            None if proven.purpose == InvitePurpose::LinkDevice => {
                return Err(EngineError::Invalid(format!(
                    "this device has no verified record of {user}, so it cannot tell which roles a new device of theirs should carry"
                )))
            }
            None => (
                proven.profile.clone(),
                vec![kind.role().unwrap_or(Role::Member)],
            ),
        };
        self.issue(conn, &me, &signing, &proven, profile, roles)
            .await?;
        Ok(proven.device_id)
    }

    /// Signs and hands over the certificate of a proven enrolment. Each code enrols one
    /// device: a second device with the same code is refused.
    pub(super) async fn issue(
        &self,
        conn: &impl Link,
        me: &DeviceRow,
        signing: &Signing,
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
        let cert = signing.certificate(
            CertificateBody {
                org_id: me.org.org_id.clone(),
                user: proven.user.clone(),
                device_id: proven.device_id.clone(),
                device_key: proven.device_key.clone(),
                profile,
                roles,
                not_before: 0,
                not_after: 0,
            },
            self.certificate_lifetime()?,
            None,
        )?;
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
    pub(super) fn check_confirmation(
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
        if crate::engine::certificate_revoked(&self.db, &confirmation.confirmer)
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
        let mut problems = Vec::new();
        let policy = self.newest_policy(conn, &mut problems).await?;
        self.activity.problems.append(&mut problems);
        if !policy.device_self_approval {
            return Ok(());
        }
        let signing = self.signing(&me)?;
        self.certificates(conn).await?;
        for pending in confirmed {
            let proven = match self.prove_enrolment(&pending) {
                Ok(proven) => proven,
                Err(why) => {
                    self.activity.problems.push(format!(
                        "not approving {}'s new device {}: {why}",
                        pending.user, pending.device_id
                    ));
                    continue;
                }
            };
            if let Err(why) = self.check_confirmation(&pending, &proven) {
                self.activity.problems.push(format!(
                    "not approving {}'s new device {}: {why}",
                    pending.user, pending.device_id
                ));
                continue;
            }
            let Some((profile, roles)) = self.signed_record_of(&proven.user)? else {
                self.activity.problems.push(format!(
                    "not approving {}'s new device: this device has not signed a record of them (an admin approves it with `muster approve`)",
                    proven.user
                ));
                continue;
            };
            match self
                .issue(conn, &me, &signing, &proven, profile, roles)
                .await
            {
                Ok(()) => self
                    .activity
                    .approved_devices
                    .push(format!("{} ({})", proven.user, proven.device_id)),
                Err(e) => self.activity.problems.push(format!(
                    "could not approve {}'s new device: {e}",
                    proven.user
                )),
            }
        }
        Ok(())
    }

    // ---- provisioning ------------------------------------------------------------------
}

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

/// What a newly approved account is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccountKind {
    /// A person: the member role.
    #[default]
    Person,
    /// The organisation's compliance archive.
    Archive,
    /// A service account that turns other systems' alarms into messages.
    Bot,
}

impl AccountKind {
    /// The one role an account of this kind carries, when it is not a person.
    fn role(self) -> Option<Role> {
        match self {
            AccountKind::Person => None,
            AccountKind::Archive => Some(Role::Archive),
            AccountKind::Bot => Some(Role::Bot),
        }
    }

    fn name(self) -> &'static str {
        match self {
            AccountKind::Person => "member",
            AccountKind::Archive => "archive",
            AccountKind::Bot => "bot",
        }
    }
}
