//! The organisation's policy, certificate renewals and revocation, and provisioning from a
//! file.

use super::*;

impl Engine {
    pub(crate) fn stored_policy(&self) -> Result<Option<OrgPolicy>, EngineError> {
        let bytes: Option<Vec<u8>> = self
            .db
            .query_row("SELECT policy FROM org_policy WHERE id = 1", [], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(bytes.and_then(|b| serde_json::from_slice(&b).ok()))
    }

    pub(super) fn store_policy(&self, policy: &OrgPolicy) -> Result<(), EngineError> {
        store_policy_in(&self.db, policy)
    }

    /// The organisation policy in force: the newest signed version this device has seen.
    /// A relay that serves an older one than this device knows is reported in `problems`.
    pub(crate) async fn newest_policy(
        &self,
        conn: &impl Link,
        problems: &mut Vec<String>,
    ) -> Result<OrgPolicyBody, EngineError> {
        let org = self.device()?.org;
        let served = ask!(conn, Request::GetOrgPolicy, Response::OrgPolicy(p) => p);
        if let Some(policy) = &served {
            match policy.verify(&org) {
                Ok(())
                    if crate::engine::revocation_list(&self.db)?
                        .issuer_revoked(policy.issuer.as_ref()) =>
                {
                    problems.push(
                        "ignored an organisation policy signed by a revoked admin device".into(),
                    )
                }
                Ok(())
                    if policy.body.legal_officers.is_none()
                        && crate::legal::stored_officers(&self.db)?.is_some() =>
                {
                    problems.push(
                        "ignored an organisation policy that drops the legal officers the \
                         archive is sealed to"
                            .into(),
                    )
                }
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
        &mut self,
        conn: &impl Link,
        device_self_approval: Option<bool>,
        certificate_lifetime_secs: Option<u64>,
        wipe_on_revoke: Option<bool>,
        legal_officers: Option<muster_proto::LegalOfficers>,
    ) -> Result<OrgPolicyBody, EngineError> {
        let me = self.device()?;
        let signing = self.signing(&me)?;
        let mut problems = Vec::new();
        let current = self.newest_policy(conn, &mut problems).await?;
        self.activity.problems.append(&mut problems);
        if certificate_lifetime_secs.is_some_and(|l| l < MIN_CERTIFICATE_LIFETIME_SECS) {
            return Err(EngineError::Invalid(format!(
                "certificates must stay valid at least {MIN_CERTIFICATE_LIFETIME_SECS} seconds"
            )));
        }
        let policy = signing.policy(OrgPolicyBody {
            org_id: me.org.org_id.clone(),
            device_self_approval: device_self_approval.unwrap_or(current.device_self_approval),
            issued_at: now_unix(),
            version: current.version.checked_add(1).ok_or_else(|| {
                EngineError::Invalid("the organisation policy's version cannot go higher".into())
            })?,
            certificate_lifetime_secs: certificate_lifetime_secs
                .unwrap_or(current.certificate_lifetime_secs),
            wipe_on_revoke: wipe_on_revoke.unwrap_or(current.wipe_on_revoke),
            legal_officers: legal_officers.or(current.legal_officers),
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

    /// On an admin device: renews, before they run out, the certificates of every
    /// unrevoked device of the users this device has its own signed record of (a third of
    /// their lifetime into it), with that record's profile and roles. Admins' own
    /// certificates are renewed by a device holding the root. A revoked device's
    /// certificate is never renewed, so it stops being accepted within one lifetime even
    /// by members from whom the relay hides the revocation.
    pub(crate) async fn renew_certificates(&mut self, conn: &impl Link) -> Result<(), EngineError> {
        let me = self.device()?;
        if Self::require_admin(&me).is_err() {
            return Ok(());
        }
        let Ok(signing) = self.signing(&me) else {
            return Ok(());
        };
        let lifetime = self.certificate_lifetime()?;
        let due_by = now_unix() + lifetime * 2 / 3;
        if let Signing::Admin { certificate, .. } = &signing {
            // What it issues ends with its own certificate: that is renewed first.
            if certificate.body.not_after < due_by {
                return Ok(());
            }
        }
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
        self.certificates(conn).await?;
        for user in due {
            let Some((profile, roles)) = self.current_record_of(&user)? else {
                continue;
            };
            if roles.contains(&Role::Admin) && !signing.is_root() {
                continue;
            }
            let result = async {
                let certificates = self.reissue(&signing, &user, &profile, &roles)?;
                conn.request(&Request::ReissueCertificates {
                    certificates: certificates.clone(),
                })
                .await
                .map_err(from_link)?;
                self.record_issued(&certificates)
            }
            .await;
            if let Err(e) = result {
                self.activity
                    .problems
                    .push(format!("could not renew the certificates of {user}: {e}"));
            }
        }
        Ok(())
    }

    /// `user`'s profile and roles as this device signed them, unless another admin
    /// device (or the root, held elsewhere) signed a certificate of theirs since: then
    /// that newer one, which becomes this device's record. Renewals never undo a later
    /// decision of another admin.
    fn current_record_of(&self, user: &str) -> Result<Option<(Profile, Vec<Role>)>, EngineError> {
        let Some(record) = self.signed_record_of(user)? else {
            return Ok(None);
        };
        let recorded_at: i64 = self.db.query_row(
            "SELECT updated_at FROM org_records WHERE user = ?1",
            [user],
            |r| r.get(0),
        )?;
        let me = self.device()?;
        let signed_here = |c: &Certificate| match c.issuer_device() {
            Some(issuer) => issuer == me.device_id,
            None => me.root_key.is_some(),
        };
        let newest = self
            .known_devices_of(user)?
            .into_iter()
            .max_by_key(|c| c.body.not_before);
        match newest {
            Some(c)
                if !signed_here(&c)
                    && ((c.body.not_before + CLOCK_SKEW_SECS) as i64).saturating_mul(1000)
                        > recorded_at
                    && (&c.body.profile, &c.body.roles) != (&record.0, &record.1) =>
            {
                self.set_record(user, &c.body.profile, &c.body.roles)?;
                Ok(Some((c.body.profile, c.body.roles)))
            }
            _ => Ok(Some(record)),
        }
    }

    /// (admin) What the organisation looks like now, for provisioning. Who is enrolled
    /// comes from certificates this device verified (the relay's listing can hide a
    /// user, not make this device forget one), and only enrolment requests whose proofs
    /// check out are offered for approval.
    pub async fn provision_state(&mut self, conn: &impl Link) -> Result<OrgState, EngineError> {
        let me = self.device()?;
        Self::require_admin(&me)?;
        self.sync_steps(conn).await?;
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
        let invites = ask!(conn, Request::ListInvites, Response::Invites(invites) => invites);
        state.invited = invites
            .into_iter()
            .filter(|i| !i.link)
            .map(|i| i.user)
            .collect();
        for g in self.groups()? {
            if g.state == crate::engine::GroupState::Active {
                state
                    .waiting
                    .insert(g.name.clone(), g.waiting.into_iter().collect());
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
                let signing = self.signing(&me)?;
                let pending = self.pending_for(conn, user, Some(device_id)).await?;
                let proven = self.proven(&pending)?;
                if proven.purpose != InvitePurpose::NewUser {
                    return Err(EngineError::Invalid(format!(
                        "{user}'s device {device_id} was made with a device-link code; approve it with `muster approve`"
                    )));
                }
                self.issue(
                    conn,
                    &me,
                    &signing,
                    &proven,
                    wanted.profile(),
                    wanted.roles(),
                )
                .await?;
                Ok(None)
            }
            Action::UpdateCertificates { user } => {
                let wanted = user_spec(user)?;
                let me = self.device()?;
                let signing = self.signing(&me)?;
                let certificates =
                    self.reissue(&signing, user, &wanted.profile(), &wanted.roles())?;
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
                waiting,
            } => {
                self.create_group_waiting_for(conn, group, members, *managed, waiting)
                    .await?;
                Ok(None)
            }
            Action::ListWaiting { group, user } => {
                self.list_waiting(conn, group, user).await?;
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
    pub(super) fn reissue(
        &self,
        signing: &Signing,
        user: &str,
        profile: &Profile,
        roles: &[Role],
    ) -> Result<Vec<Certificate>, EngineError> {
        let lifetime = self.certificate_lifetime()?;
        let certificates: Vec<Certificate> = self
            .known_devices_of(user)?
            .into_iter()
            .map(|c| {
                let body = CertificateBody {
                    profile: profile.clone(),
                    roles: roles.to_vec(),
                    ..c.body.clone()
                };
                signing.certificate(body, lifetime, Some(&c))
            })
            .collect::<Result<_, _>>()?;
        if certificates.is_empty() {
            return Err(EngineError::Invalid(format!(
                "this device knows no enrolled device of {user}"
            )));
        }
        Ok(certificates)
    }

    // ---- profiles ---------------------------------------------------------------------
}

use muster_proto::MIN_CERTIFICATE_LIFETIME_SECS;

/// Keeps `policy` in `db` if it is newer than the one held (the caller verified it).
pub(crate) fn store_policy_in(
    db: &rusqlite::Connection,
    policy: &OrgPolicy,
) -> Result<(), EngineError> {
    // A policy signed by a revoked admin device is worthless, whatever its version.
    if crate::engine::revocation_list(db)?.issuer_revoked(policy.issuer.as_ref()) {
        return Ok(());
    }
    // Once the archive is sealed to legal officers, a policy without them is refused: a
    // relay could otherwise have an admin device that never saw them sign them away.
    let held_officers = crate::legal::stored_officers(db)?.is_some();
    if held_officers && policy.body.legal_officers.is_none() {
        tracing::warn!("ignored an organisation policy that drops the legal officers");
        return Ok(());
    }
    db.execute(
        "INSERT INTO org_policy (id, policy, version) VALUES (1, ?1, ?2)
         ON CONFLICT (id) DO UPDATE SET policy = excluded.policy, version = excluded.version
         WHERE excluded.version > org_policy.version",
        params![to_json(policy), policy.body.version as i64],
    )?;
    Ok(())
}
