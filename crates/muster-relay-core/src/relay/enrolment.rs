//! Enrolment: the first admin's bootstrap, invites and links, requests, approval and
//! rejection, self-approval.

use super::*;

impl Relay {
    /// Handles an enrolment whose signatures were already checked (see
    /// [`muster_proto::EnrolmentRequest::verify_signatures`]).
    pub fn enrol_prechecked(&mut self, request: EnrolmentRequest) -> Outcome {
        finish(self.enrol(request))
    }

    pub(super) fn bootstrap(
        &mut self,
        token: &str,
        org: OrgDescriptor,
        admin: Certificate,
    ) -> Result<Outcome, Failure> {
        let tx = self.db.transaction()?;
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
        exec(&tx, "DELETE FROM bootstrap_tokens", ())?;
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

    pub(super) fn enrol(&mut self, request: EnrolmentRequest) -> Result<Outcome, Failure> {
        let org = self.require_org()?;
        check_profile(&request.body.profile)?;
        if request.body.device_key.len() != 32 {
            return Err(refuse(
                ErrorCode::BadRequest,
                "device key must be an Ed25519 public key",
            ));
        }
        let token_hash = sha256(&request.body.code_key);
        let tx = self.db.transaction()?;
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
    pub(super) fn file_grant(
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
        let tx = self.db.transaction()?;
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

    pub(super) fn my_certificate(&self, session: &Session) -> Result<Outcome, Failure> {
        let cert = self
            .certificate_of_device(&session.device_id)?
            .ok_or_else(|| refuse(ErrorCode::EnrolmentPending, "no certificate issued yet"))?;
        Ok(Outcome::reply(Response::Certificate(cert)))
    }

    pub(super) fn create_invite(
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

    pub(super) fn list_pending(&self, session: &Session) -> Result<Outcome, Failure> {
        self.require_admin(session)?;
        let mut stmt = self.db.prepare_cached(
            "SELECT d.user, d.device_id, d.device_key, d.profile, d.requested_at,
                    EXISTS (SELECT 1 FROM devices o WHERE o.user = d.user AND o.status = 'approved'),
                    p.grant_data, p.request, p.confirmation
             FROM devices d LEFT JOIN enrolment_proofs p ON p.device_id = d.device_id
             WHERE d.status = 'pending' ORDER BY d.requested_at, d.device_id",
        )?;
        let rows = stmt
            .query_map((), |r| {
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

    pub(super) fn approve(
        &mut self,
        session: &Session,
        cert: Certificate,
    ) -> Result<Outcome, Failure> {
        self.require_admin(session)?;
        let org = self.require_org()?;
        cert.verify(&org, now_unix())
            .map_err(|e| refuse(ErrorCode::InvalidCertificate, e.to_string()))?;
        refuse_revoked_issuer(&self.db, cert.issuer.as_ref())?;
        let tx = self.db.transaction()?;
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

    pub(super) fn reject(
        &mut self,
        session: &Session,
        device_id: &str,
    ) -> Result<Outcome, Failure> {
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

    pub(super) fn confirm_device(
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
        for row in stmt.query_map((), |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
        })? {
            let (device, cert) = row?;
            if Certificate::from_bytes(&cert).is_ok_and(|c| c.is_admin()) {
                wake.insert(device);
            }
        }
        Ok(Outcome::with_changed(Response::Ok, wake))
    }

    pub(super) fn list_invites(&self, session: &Session) -> Result<Outcome, Failure> {
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

    pub(super) fn create_link(
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
}

pub(super) fn check_profile(profile: &Profile) -> Result<(), Failure> {
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

pub(super) fn insert_device(
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
