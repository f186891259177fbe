//! Commits and proposals: opened against the relay's public group state and checked by the
//! shared rules.

use super::trees::{group_info_has_tree, WelcomeCutter};
use super::*;

impl Relay {
    /// A committer's GroupInfo, when it describes exactly the epoch the relay just merged
    /// (same group context: epoch, tree hash, transcript) and the committing device, a
    /// member of it, signed it with `signer_key`.
    pub(super) fn checked_group_info(
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

    /// Checks a handshake message (commit or proposal) against the group's current state:
    /// right group, PublicMessage of the expected content type, current epoch, valid
    /// signature and membership, sent by a leaf of this device.
    pub(super) fn open_handshake(
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
            .map_err(|e| Failure::Store(StoreError::Db(e)))?
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

    pub(super) fn commit(
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
        let tx = self.db.transaction()?;
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
        under_the_rules(&tx, &org, |rules| {
            muster_rules::check_commit(
                rules,
                &members,
                group.group_context().extensions(),
                &sender,
                &staged,
            )
        })?
        .map_err(|e| refuse(refusal_code(&e), format!("commit refused: {e}")))?;
        let cutter = welcome.and_then(|w| {
            WelcomeCutter::new(
                &self.crypto,
                w,
                staged
                    .add_proposals()
                    .map(|add| add.add_proposal().key_package().clone()),
            )
        });
        group
            .merge_commit(&Storage::new(&tx), *staged)
            .map_err(|e| Failure::Store(StoreError::Corrupt(format!("merge commit: {e}"))))?;
        let after = Self::roster_devices(&tx, &org, &group, &mut self.verified_credentials)?;
        let before = Self::current_members(&tx, group_id)?;
        let added: Vec<&String> = after.difference(&before).collect();
        let removed: Vec<&String> = before.difference(&after).collect();
        // Someone waiting to join brings only their own device, by external commit.
        let joined_on_their_own =
            sender == Sender::NewMemberCommit && added == [&session.device_id];
        if !added.is_empty() && welcome.is_none() && !joined_on_their_own {
            return Err(refuse(
                ErrorCode::BadRequest,
                "a commit that adds members must come with their Welcome",
            ));
        }
        let seq = last_seq + 1;
        // Handshakes are not kept in the recent log: the group's log starts again after.
        self.recent.forget(group_id);
        Self::append(
            &tx,
            group_id,
            seq,
            epoch,
            KIND_COMMIT,
            &session.device_id,
            None,
            commit,
            None,
        )?;
        exec(
            &tx,
            "UPDATE groups SET epoch = ?2 WHERE group_id = ?1",
            params![group_id, group.group_context().epoch().as_u64() as i64],
        )?;
        // Kept only when it is the very epoch just merged, so a member that fell behind
        // can rejoin from it; anything else is dropped (it would only mislead them).
        let committer_key = Self::device_key(&tx, &session.device_id)?;
        let new_epoch = group.group_context().epoch().as_u64() as i64;
        let group_info = group_info
            .filter(|i| Self::checked_group_info(&self.crypto, &group, i, &committer_key));
        // Joiners of a large group find the tree here, not in the Welcome or GroupInfo.
        if welcome.is_some() || group_info.is_some_and(|i| !group_info_has_tree(i)) {
            Self::keep_tree(&tx, group_id, &group)?;
        }
        if let Some(info) = group_info {
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
            if let Some(welcome) = welcome {
                let own = match &cutter {
                    Some(cutter) => cutter.for_device(device),
                    None => welcome.to_vec(),
                };
                exec(&tx,
                    "INSERT INTO welcomes (device_id, group_id, data, stored_at, epoch) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![device, group_id, own, now_unix() as i64, new_epoch],
                )?;
            }
        }
        Self::prune_trees(&tx, Some(group_id))?;
        Self::record_pending_seats(&tx, group_id, &group)?;
        tx.commit()?;
        let mut wake: BTreeSet<String> = after.into_iter().chain(before).collect();
        wake.remove(&session.device_id);
        Ok(Outcome::with_wake(Response::Stored { seq }, wake))
    }

    pub(super) fn propose(
        &mut self,
        session: &Session,
        group_id: &[u8],
        proposal: &[u8],
    ) -> Result<Outcome, Failure> {
        let message = parse_protocol_message(proposal)?;
        let tx = self.db.transaction()?;
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
        under_the_rules(&tx, &org, |rules| {
            muster_rules::check_proposal(
                rules,
                &members,
                group.group_context().extensions(),
                &sender,
                queued.proposal(),
            )
        })?
        .map_err(|e| refuse(refusal_code(&e), format!("proposal refused: {e}")))?;
        group
            .add_proposal(&Storage::new(&tx), *queued)
            .map_err(|e| Failure::Store(StoreError::Db(e)))?;
        let seq = last_seq + 1;
        // Handshakes are not kept in the recent log: the group's log starts again after.
        self.recent.forget(group_id);
        Self::append(
            &tx,
            group_id,
            seq,
            epoch,
            KIND_PROPOSAL,
            &session.device_id,
            None,
            proposal,
            None,
        )?;
        let mut wake = Self::current_members(&tx, group_id)?;
        tx.commit()?;
        wake.remove(&session.device_id);
        Ok(Outcome::with_wake(Response::Stored { seq }, wake))
    }
}

/// How the relay answers a change the group rules refuse: a bad identity is an invalid
/// certificate, anything else is forbidden.
pub(super) fn refusal_code(refusal: &muster_rules::Refusal) -> ErrorCode {
    match refusal {
        muster_rules::Refusal::Identity { .. } | muster_rules::Refusal::Revoked { .. } => {
            ErrorCode::InvalidCertificate
        }
        _ => ErrorCode::Forbidden,
    }
}

/// Every device the organisation revoked.
/// Runs `check` with the shared group rules (muster-rules) as this relay knows the
/// organisation now: its revocations and the certificates it holds.
fn under_the_rules<T>(
    db: &Db,
    org: &OrgDescriptor,
    check: impl FnOnce(&muster_rules::Context) -> T,
) -> Result<T, Failure> {
    let revoked = revocation_list(db)?;
    let rules = muster_rules::Context {
        org,
        now: now_unix(),
        revoked: &|c: &Certificate| revoked.covers(c),
        renewed: &|d: &str| holds_valid_certificate(db, d),
    };
    Ok(check(&rules))
}

/// The organisation's revocations as this relay holds them: the revoked devices and the
/// certificates of revoked admin devices their revocations vouched for.
pub(super) fn revocation_list(db: &Db) -> Result<RevocationList, Failure> {
    let mut list = RevocationList::default();
    let mut devices =
        db.prepare_cached("SELECT device_id FROM devices WHERE status = 'revoked'")?;
    for id in devices.query_map((), |r| r.get(0))? {
        list.add_device(id?);
    }
    let mut stored = db.prepare_cached("SELECT data FROM revocations")?;
    for data in stored.query_map((), |r| r.get::<_, Vec<u8>>(0))? {
        if let Ok(revocation) = serde_json::from_slice::<Revocation>(&data?) {
            for device in &revocation.body.device_ids {
                for digest in &revocation.body.vouched {
                    list.add_vouched(device.clone(), digest.clone());
                }
            }
        }
    }
    Ok(list)
}

/// Refuses a certificate, revocation or policy signed by an admin device that is revoked.
pub(super) fn refuse_revoked_issuer(
    db: &Db,
    issuer: Option<&IssuerCertificate>,
) -> Result<(), Failure> {
    if revocation_list(db)?.issuer_revoked(issuer) {
        return Err(refuse(
            ErrorCode::InvalidCertificate,
            "it was signed by an admin device that is revoked",
        ));
    }
    Ok(())
}

/// Whether the relay holds a certificate for the device valid now (an admin renewed it):
/// the device's expiry is then no ground for a member to remove it.
pub(super) fn holds_valid_certificate(db: &Db, device_id: &str) -> bool {
    matches!(
        device_certificate(db, device_id),
        Ok(Some(cert)) if cert.check_validity(now_unix()).is_ok()
    )
}

/// The policy in a group's context.
pub(super) fn policy_of(group: &PublicGroup) -> GroupPolicy {
    GroupPolicy::from_extension(
        group
            .group_context()
            .extensions()
            .unknown(GROUP_POLICY_EXTENSION)
            .map(|e| e.0.as_slice()),
    )
}
