//! Commits: the one commit-and-retry path, proposals committed for others, and catching up
//! with a group this device fell behind in.

use super::*;

impl Engine {
    /// Builds a commit with `build`, posts it, and retries after syncing when the
    /// group's epoch moved. Returns whether a commit was made.
    pub(super) async fn run_commit<F>(
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
        for attempt in 1..=MAX_COMMIT_ATTEMPTS {
            self.fetch_and_process(conn).await?;
            // Anything still pending after a full fetch was never stored by the relay.
            self.drop_unsent_commit(group_id)?;
            let KnownGroup { name, state, .. } = self.resolve_group(&group_hex(group_id))?;
            if state != GroupState::Active {
                return Err(EngineError::NotActive(name));
            }
            // The group as the commit left it, merged once the relay stores the commit
            // (not read from the store again: a large group takes long to decode).
            let (commit, welcome, group_info, built, built_at) = {
                let tx = self
                    .db
                    .transaction_with_behavior(TransactionBehavior::Immediate)?;
                let provider = Provider::new(&self.crypto, &tx);
                let mut group = load_group(&provider, group_id)?;
                // A large group's tree travels apart from its Welcome; a commit whose
                // Welcome or GroupInfo would still be too large is built again without it.
                let mut inline = group.members().count() <= self.large_group_past;
                let parts = loop {
                    let config = join_config_with_tree(inline);
                    if group.configuration() != &config {
                        group
                            .set_configuration(provider.storage(), &config)
                            .map_err(EngineError::mls)?;
                    }
                    let Some(parts) = build(&mut group, &provider, &signer)? else {
                        return Ok(false);
                    };
                    if inline && parts.too_large() {
                        group
                            .clear_pending_commit(provider.storage())
                            .map_err(EngineError::mls)?;
                        inline = false;
                        continue;
                    }
                    break parts;
                };
                let commit = mls_bytes(&parts.commit)?;
                let welcome = parts.welcome.as_ref().map(mls_bytes).transpose()?;
                let group_info = parts.group_info.as_ref().map(mls_bytes).transpose()?;
                tx.execute(
                    "INSERT OR REPLACE INTO pending_commits (group_id, commit_hash) VALUES (?1, ?2)",
                    params![group_id, sha256(&commit)],
                )?;
                tx.commit()?;
                (commit, welcome, group_info, group, store_version(&self.db)?)
            };
            let request = Request::Commit {
                group_id: group_id.to_vec(),
                commit,
                welcome,
                group_info,
            };
            // Anything but a refusal may or may not have been stored: the next sync tells.
            match post(conn, &request, attempt).await? {
                Next::Done { seq } => {
                    let tx = self
                        .db
                        .transaction_with_behavior(TransactionBehavior::Immediate)?;
                    let provider = Provider::new(&self.crypto, &tx);
                    // Another process on this store (the UI beside a command) may have
                    // written since: then the group is read again.
                    let mut group = if store_version(&tx)? == built_at {
                        built
                    } else {
                        load_group(&provider, group_id)?
                    };
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
                Next::FetchThenRetry { epoch } => {
                    self.drop_unsent_commit(group_id)?;
                    self.fetch_and_process(conn).await?;
                    self.catch_up(conn, group_id, epoch).await?;
                }
                Next::Wait(pause) => {
                    self.drop_unsent_commit(group_id)?;
                    conn.pause(pause).await;
                }
                Next::Stop(e) => {
                    self.drop_unsent_commit(group_id)?;
                    return Err(gave_up(e));
                }
            }
        }
        Err(EngineError::TooManyRetries(MAX_COMMIT_ATTEMPTS))
    }

    pub(super) fn drop_unsent_commit(&mut self, group_id: &[u8]) -> Result<(), EngineError> {
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
    pub(super) async fn catch_up(
        &mut self,
        conn: &impl Link,
        group_id: &[u8],
        relay_epoch: u64,
    ) -> Result<(), EngineError> {
        let held = {
            let provider = Provider::new(&self.crypto, &self.db);
            load_group(&provider, group_id)?.epoch().as_u64()
        };
        if held < relay_epoch {
            self.rejoin(conn, group_id).await?;
        }
        Ok(())
    }

    /// Rejoins the groups this device found itself behind in (see [`Self::rejoin`]).
    pub(super) async fn catch_up_groups(&mut self, conn: &impl Link) -> Result<(), EngineError> {
        let behind: Vec<Vec<u8>> = self
            .db
            .prepare("SELECT group_id FROM behind_groups")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for group_id in behind {
            let active = self
                .resolve_group(&group_hex(&group_id))
                .is_ok_and(|g| g.state == GroupState::Active);
            let result = match active {
                true => self.rejoin(conn, &group_id).await,
                false => Ok(false),
            };
            match result {
                Ok(_) => {
                    self.db
                        .execute("DELETE FROM behind_groups WHERE group_id = ?1", [&group_id])?;
                }
                Err(e) => self.activity.problems.push(format!(
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
    ) -> Result<bool, EngineError> {
        let device = self.device()?;
        let signer = self.signer(&device)?;
        let credential = Self::credential(&device)?;
        let (bytes, relay_epoch) = ask!(conn, Request::GroupInfo { group_id: group_id.to_vec() },
            Response::GroupInfo { group_info, epoch } => (group_info, epoch));
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
        let revoked = revocation_list(&self.db)?;
        // Who signed it: it must be someone in the group as this device knew it.
        let held_group = {
            let provider = Provider::new(&self.crypto, &self.db);
            load_group(&provider, group_id)?
        };
        let signer_cert = group_info_signer(&self.crypto, &info, held_group.members())
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
        let (group, bundle) = external_commit(&provider, info, credential, &signer)?;
        let changes =
            catch_up_changes(&tx, &device, &held_group, &group, &signer_cert, &revoked)
                .map_err(|why| EngineError::Invalid(format!("not rejoining the group: {why}")))?;
        let seq = post_external_commit(conn, &tx, group_id, bundle, "rejoining").await?;
        // How much history it missed: everything after the last message it has.
        let last_heard: Option<i64> = tx.query_row(
            "SELECT MAX(sent_at) FROM messages WHERE group_id = ?1 AND kind != 'system'",
            [group_id],
            |r| r.get(0),
        )?;
        let missed = match last_heard {
            Some(at) => format!(
                "whatever was sent after the last message it holds, of {} ({} ago), is lost to it",
                rfc3339_ms(at),
                crate::content::describe_duration(
                    (now_ms().saturating_sub(at) / 1000).max(0) as u64
                )
            ),
            None => "whatever was sent meanwhile is lost to it".to_string(),
        };
        insert_system(
            &tx,
            group_id,
            &format!(
                "this device had fallen behind the group (it refused or missed a change) and rejoined it; {missed}"
            ),
            Some(order_key(seq, 0)),
        )?;
        for (i, change) in changes.iter().enumerate() {
            insert_system(&tx, group_id, change, Some(order_key(seq, i + 1)))?;
        }
        tx.commit()?;
        self.member_counts.remove(group_id);
        self.activity.problems.push(format!(
            "rejoined group {} after falling behind",
            group_hex(group_id)
        ));
        Ok(true)
    }

    pub(super) async fn commit_pending_proposals(
        &mut self,
        conn: &impl Link,
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
                self.activity
                    .problems
                    .push(format!("could not commit pending proposals: {e}"));
            }
        }
        Ok(())
    }
}

/// Joins (or rejoins) a group from its GroupInfo by an external commit with this
/// device's credential; the returned group has the commit merged.
pub(super) fn external_commit(
    provider: &Provider,
    info: openmls::messages::group_info::VerifiableGroupInfo,
    credential: CredentialWithKey,
    signer: &SignatureKeyPair,
) -> Result<(MlsGroup, CommitMessageBundle), EngineError> {
    MlsGroup::external_commit_builder()
        .with_config(join_config())
        .build_group(provider, info, credential)
        .map_err(EngineError::mls)?
        .leaf_node_parameters(
            LeafNodeParameters::builder()
                .with_capabilities(leaf_capabilities())
                .build(),
        )
        .load_psks(provider.storage())
        .map_err(EngineError::mls)?
        .build(provider.rand(), provider.crypto(), signer, |_| true)
        .map_err(EngineError::mls)?
        .finalize(provider)
        .map_err(EngineError::mls)
}

/// Posts an external commit (joining or rejoining; `what` names it) and records it as
/// this device's own, in `tx`; returns its place in the group's log. It is not retried
/// after the group moved on: the next sync tries again.
pub(super) async fn post_external_commit(
    conn: &impl Link,
    tx: &Connection,
    group_id: &[u8],
    bundle: CommitMessageBundle,
    what: &str,
) -> Result<u64, EngineError> {
    let (commit, _, group_info) = bundle.into_messages();
    let request = Request::Commit {
        group_id: group_id.to_vec(),
        commit: mls_bytes(&commit)?,
        welcome: None,
        group_info: group_info.as_ref().map(mls_bytes).transpose()?,
    };
    match post(conn, &request, MAX_COMMIT_ATTEMPTS).await? {
        Next::Done { seq } => {
            tx.execute(
                "INSERT OR IGNORE INTO own_handshakes (group_id, seq) VALUES (?1, ?2)",
                params![group_id, seq as i64],
            )?;
            Ok(seq)
        }
        Next::Stop(e) => Err(EngineError::Relay(e)),
        Next::FetchThenRetry { .. } | Next::Wait(_) => Err(EngineError::Invalid(format!(
            "the relay did not take the {what} commit; the next sync tries again"
        ))),
    }
}

/// The member among `members` whose key signed `info`.
pub(super) fn group_info_signer(
    crypto: &RustCrypto,
    info: &openmls::messages::group_info::VerifiableGroupInfo,
    mut members: impl Iterator<Item = Member>,
) -> Option<Member> {
    use openmls::ciphersuite::signable::Verifiable as _;
    use openmls::ciphersuite::signature::OpenMlsSignaturePublicKey;
    members.find(|m| {
        OpenMlsSignaturePublicKey::new(m.signature_key.clone().into(), SignatureScheme::ED25519)
            .is_ok_and(|key| info.clone().verify(crypto, &key).is_ok())
    })
}

/// Checks that a member's credential carries a certificate signed by our org root for this key.
pub(super) fn verify_member(
    org: &OrgDescriptor,
    credential: &Credential,
    signature_key: &[u8],
) -> Result<Certificate, String> {
    leaf_certificate(credential, signature_key, |cert| {
        cert.verify(org, now_unix())
    })
}

/// The certificate in a leaf's credential, checked by `check` and bound to the leaf's
/// signature key.
fn leaf_certificate(
    credential: &Credential,
    signature_key: &[u8],
    check: impl FnOnce(&Certificate) -> Result<(), muster_proto::CertError>,
) -> Result<Certificate, String> {
    let cert = certificate_in(credential)
        .ok_or_else(|| "credential carries no identity certificate".to_string())?;
    check(&cert).map_err(|e| format!("{} ({}): {e}", cert.body.user, cert.body.device_id))?;
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
pub(super) fn catch_up_changes(
    db: &Connection,
    device: &DeviceRow,
    held: &MlsGroup,
    new: &MlsGroup,
    signer: &Certificate,
    revoked: &RevocationList,
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
    .filter(|c| {
        c.body.device_key == signer.body.device_key
            && c.verify_issuer(&device.org).is_ok()
            && !revoked.covers(c)
    })
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
    if revoked.covers(signer) {
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
        if revoked.covers(cert) {
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
    for (_, cert) in before.iter().filter(|(id, _)| !after.contains_key(*id)) {
        // Like the shared rules: a lapsed device is every member's to remove.
        let was_revoked = revoked.covers(cert) || muster_rules::lapsed(cert, now);
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
    if policy_after.archived && !after.values().any(|c| c.is_archive() && !revoked.covers(c)) {
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
pub(super) fn roster_member(
    org: &OrgDescriptor,
    credential: &Credential,
    signature_key: &[u8],
) -> Result<Certificate, String> {
    leaf_certificate(credential, signature_key, |cert| cert.verify_issuer(org))
}

/// Merges this device's own commit once the relay has sequenced it, and tells members it
/// added the group's name. Returns what the commit did, for the notice.
pub(super) fn merge_own_commit(
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

/// "added bob" / "removed carol" for the pending commit, for the user's own timeline.
pub(super) fn describe_pending_commit(group: &MlsGroup) -> Option<String> {
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

/// The notices a policy change shows every member.
pub(super) fn describe_policy_change(
    actor: &str,
    before: GroupPolicy,
    after: GroupPolicy,
) -> Vec<String> {
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

/// SQLite's count of changes other connections committed to the store: unchanged means
/// nothing but this connection wrote since it was read.
fn store_version(db: &Connection) -> Result<i64, EngineError> {
    Ok(db.query_row("PRAGMA data_version", [], |r| r.get(0))?)
}
