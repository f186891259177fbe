//! Administration: revocations, profile changes, organisation policy, certificate renewals
//! and archive checkpoints.

use super::*;

impl Relay {
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

    pub(super) fn revoke(
        &mut self,
        session: &Session,
        revocation: Revocation,
    ) -> Result<Outcome, Failure> {
        self.require_admin(session)?;
        let org = self.require_org()?;
        revocation
            .verify(&org)
            .map_err(|e| refuse(ErrorCode::InvalidCertificate, format!("revocation: {e}")))?;
        let body = &revocation.body;
        if body.device_ids.is_empty() {
            return Err(refuse(ErrorCode::BadRequest, "revocation names no device"));
        }
        // Checked under the writer's lock: two relays of one database cannot both take
        // the same number, nor accept a revocation signed by an admin revoked meanwhile.
        let tx = self.db.transaction()?;
        refuse_revoked_issuer(&tx, revocation.issuer.as_ref())?;
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
            if revocation.issuer.is_some()
                && device_certificate(&tx, device)?.is_some_and(|c| c.is_admin())
            {
                return Err(refuse(
                    ErrorCode::Forbidden,
                    "only the organisation root revokes an admin's device",
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
            // Welcomes it never took would only keep their trees.
            exec(&tx, "DELETE FROM welcomes WHERE device_id = ?1", [device])?;
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
        Self::prune_trees(&tx, None)?;
        tx.commit()?;
        let disconnect: BTreeSet<String> = body.device_ids.iter().cloned().collect();
        wake.retain(|d| !disconnect.contains(d));
        tracing::info!(user = %body.user, devices = disconnect.len(), "devices revoked");
        Ok(Outcome {
            changed: wake,
            disconnect,
            ..Outcome::reply(Response::Ok)
        })
    }

    /// The signed revocation naming `device_id`, and the organisation policy: what a
    /// revoked device that proved its key is told.
    pub fn revocation_of(&self, device_id: &str) -> Outcome {
        let answer = || -> Result<Response, Failure> {
            let mut stmt = self
                .db
                .prepare_cached("SELECT data FROM revocations ORDER BY id")?;
            let mut found = None;
            for data in stmt.query_map((), |r| r.get::<_, Vec<u8>>(0))? {
                if let Ok(r) = serde_json::from_slice::<Revocation>(&data?) {
                    if r.body.device_ids.iter().any(|d| d == device_id) {
                        found = Some(r);
                        break;
                    }
                }
            }
            Ok(Response::MyRevocation {
                revocation: found.map(Box::new),
                policy: load_org_policy(&self.db)?.map(Box::new),
            })
        };
        match answer() {
            Ok(response) => Outcome::reply(response),
            Err(Failure::Refuse(e)) => Outcome::reply(Response::Error(e)),
            Err(Failure::Store(e)) => Outcome::reply(Response::Error(RelayError::new(
                ErrorCode::Internal,
                format!("store: {e}"),
            ))),
        }
    }

    /// Where the relay's list of revocations ends: what [`Request::Revocations`] counts
    /// `since` from.
    pub fn revocations_position(&self) -> Result<u64, StoreError> {
        let last: i64 = self
            .db
            .prepare_cached("SELECT COALESCE(MAX(id), 0) FROM revocations")?
            .query_row((), |r| r.get(0))?;
        Ok(last.max(0) as u64)
    }

    /// Which of `devices` are revoked.
    pub fn revoked_among(&self, devices: &[String]) -> Result<Vec<String>, StoreError> {
        // A fixed number of parameters (padded with an id no device has), so one prepared
        // statement serves every chunk.
        const CHUNK: usize = 128;
        let sql = format!(
            "SELECT device_id FROM devices WHERE status = 'revoked' AND device_id IN ({})",
            (1..=CHUNK)
                .map(|i| format!("?{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut revoked = Vec::new();
        for chunk in devices.chunks(CHUNK) {
            let mut ids: Vec<&str> = chunk.iter().map(String::as_str).collect();
            ids.resize(CHUNK, "");
            let mut stmt = self.db.prepare_cached(&sql)?;
            for row in stmt.query_map(ids, |r| r.get::<_, String>(0))? {
                revoked.push(row?);
            }
        }
        Ok(revoked)
    }

    /// The highest number in the organisation's sequence of revocations (0 for none).
    pub(super) fn last_revocation_serial(&self) -> Result<u64, Failure> {
        let mut stmt = self.db.prepare_cached("SELECT data FROM revocations")?;
        let mut last = 0;
        for data in stmt.query_map((), |r| r.get::<_, Vec<u8>>(0))? {
            if let Ok(r) = serde_json::from_slice::<Revocation>(&data?) {
                last = last.max(r.body.serial);
            }
        }
        Ok(last)
    }

    /// Keeps a checkpoint an archive device signed, so its history is pinned outside its
    /// host; a second, different checkpoint for the same entry is refused (and audited).
    pub(super) fn publish_checkpoint(
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

    pub(super) fn archive_checkpoints(
        &self,
        session: &Session,
        since: u64,
    ) -> Result<Outcome, Failure> {
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

    pub(super) fn revocations(&self, since: u64) -> Result<Outcome, Failure> {
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

    pub(super) fn request_profile_change(
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

    pub(super) fn list_profile_changes(&self, session: &Session) -> Result<Outcome, Failure> {
        self.require_admin(session)?;
        let mut stmt = self.db.prepare_cached(
            "SELECT r.user, r.profile, r.requested_at,
                    (SELECT d.certificate FROM devices d WHERE d.user = r.user AND d.status = 'approved' LIMIT 1)
             FROM profile_requests r ORDER BY r.requested_at, r.user",
        )?;
        let rows = stmt
            .query_map((), |r| {
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

    pub(super) fn approve_profile_change(
        &mut self,
        session: &Session,
        certificates: Vec<Certificate>,
    ) -> Result<Outcome, Failure> {
        self.require_admin(session)?;
        let org = self.require_org()?;
        let tx = self.db.transaction()?;
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

    pub(super) fn reject_profile_change(
        &mut self,
        session: &Session,
        user: &str,
    ) -> Result<Outcome, Failure> {
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

    pub(super) fn set_org_policy(
        &mut self,
        session: &Session,
        policy: OrgPolicy,
    ) -> Result<Outcome, Failure> {
        self.require_admin(session)?;
        let org = self.require_org()?;
        policy
            .verify(&org)
            .map_err(|e| refuse(ErrorCode::InvalidCertificate, format!("policy: {e}")))?;
        refuse_revoked_issuer(&self.db, policy.issuer.as_ref())?;
        let revoked = revocation_list(&self.db)?;
        let in_force = load_org_policy(&self.db)?
            .filter(|p| p.verify(&org).is_ok() && !revoked.issuer_revoked(p.issuer.as_ref()));
        if let Some(current) = in_force {
            if policy.body.version != current.body.version + 1 {
                return Err(refuse(
                    ErrorCode::BadRequest,
                    format!(
                        "policy version {} does not follow version {} in force",
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

    pub(super) fn reissue_certificates(
        &mut self,
        session: &Session,
        certificates: Vec<Certificate>,
    ) -> Result<Outcome, Failure> {
        self.require_admin(session)?;
        let org = self.require_org()?;
        let tx = self.db.transaction()?;
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
}

/// Replaces the certificates of every approved device of one user, in `tx`. Each new
/// certificate must verify, keep its device's user and key, and pass `acceptable(new, old)`.
/// Any pending profile change of the user is settled by it. Returns the user.
pub(super) fn replace_user_certificates(
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
        stmt.query_map([&user], |r| r.get(0))?
            .collect::<Result<BTreeSet<String>, _>>()?
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
        refuse_revoked_issuer(tx, cert.issuer.as_ref())?;
        let old = device_certificate(tx, &cert.body.device_id)?
            .ok_or_else(|| refuse(ErrorCode::UnknownDevice, "device has no certificate"))?;
        if cert.issuer.is_some() && old.is_admin() {
            return Err(refuse(
                ErrorCode::Forbidden,
                "only the organisation root changes an admin's certificate",
            ));
        }
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
