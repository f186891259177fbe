//! Inbound: Welcomes and group messages processed inside one transaction, judged by the
//! shared commit rules.

use super::*;

/// Certificates whose organisation signature this device has already checked, so that
/// each is verified once instead of on every message; dates are checked every time.
#[derive(Default)]
pub(super) struct VerifiedCertificates(HashSet<Vec<u8>>);

impl VerifiedCertificates {
    /// Checks the certificate's issuer (once) and, given a time, its dates.
    fn verify(
        &mut self,
        cert: &Certificate,
        org: &OrgDescriptor,
        now: Option<u64>,
    ) -> Result<(), muster_proto::identity::CertError> {
        let key = sha256(&cert.to_bytes());
        if !self.0.contains(&key) {
            cert.verify_issuer(org)?;
            self.0.insert(key);
        }
        match now {
            Some(now) => cert.check_validity(now),
            None => Ok(()),
        }
    }
}

/// Processes one group message as the device `device` would receive it, inside `tx`,
/// for the fuzz targets; returns what the device would report.
#[cfg(feature = "fuzzing")]
pub(crate) fn receive_for_fuzzing(
    crypto: &RustCrypto,
    tx: &Connection,
    device: &DeviceRow,
    signer: &SignatureKeyPair,
    group_id: &[u8],
    seq: u64,
    bytes: &[u8],
) -> SyncReport {
    let revoked = revocation_list(tx).unwrap_or_default();
    let batch = Batch {
        secrets: Default::default(),
        signatures: None,
    };
    let context = BatchContext {
        crypto,
        tx,
        device,
        signer,
        revoked: &revoked,
        batch: &batch,
    };
    let mut report = SyncReport::default();
    let processed = process_group_message(
        &context,
        &mut LoadedGroups::new(),
        &mut VerifiedCertificates::default(),
        group_id,
        seq,
        bytes,
        &mut report,
    );
    if processed.is_ok() {
        let _ = batch.secrets.flush(tx);
    }
    report
}

/// Opens a Welcome as the device `device` would, inside `tx`, for the fuzz targets.
#[cfg(feature = "fuzzing")]
pub(crate) fn welcome_for_fuzzing(
    crypto: &RustCrypto,
    tx: &mut rusqlite::Transaction<'_>,
    device: &DeviceRow,
    group_id: &[u8],
    bytes: &[u8],
) -> SyncReport {
    let mut report = SyncReport::default();
    let _ = process_welcome(crypto, tx, device, group_id, bytes, None, &mut report);
    report
}

/// MLS groups read while processing one fetched batch, so that each is decoded from the
/// store once per batch instead of once per message. Dropped when the batch ends.
pub(super) type LoadedGroups = HashMap<Vec<u8>, MlsGroup>;

/// What processing one fetched batch shares: the open transaction and this device.
pub(super) struct BatchContext<'a> {
    pub(super) crypto: &'a RustCrypto,
    pub(super) tx: &'a Connection,
    pub(super) device: &'a DeviceRow,
    pub(super) signer: &'a SignatureKeyPair,
    /// Devices this device knows to be revoked.
    pub(super) revoked: &'a RevocationList,
    /// Message secrets and signature checks the batch settles before it commits.
    pub(super) batch: &'a Batch,
}

/// Joins the group a Welcome invites this device to, inside the batch's transaction; a
/// rejected Welcome leaves nothing behind.
pub(super) fn process_welcome(
    crypto: &RustCrypto,
    batch: &mut rusqlite::Transaction<'_>,
    device: &DeviceRow,
    group_id: &[u8],
    bytes: &[u8],
    tree: Option<&[u8]>,
    report: &mut SyncReport,
) -> Result<(), EngineError> {
    let tx = batch.savepoint()?;
    let provider = Provider::new(crypto, &tx);
    let result = (|| -> Result<(MlsGroup, String, Vec<String>), String> {
        let message = MlsMessageIn::tls_deserialize_exact(bytes)
            .map_err(|e| format!("Welcome does not decode: {e}"))?;
        let MlsMessageBodyIn::Welcome(welcome) = message.extract() else {
            return Err("expected a Welcome".into());
        };
        if group_id.len() > muster_proto::MAX_GROUP_ID {
            return Err(format!(
                "a Welcome to a group id over {} bytes",
                muster_proto::MAX_GROUP_ID
            ));
        }
        // A large group's tree comes from the relay; openmls checks it against the tree
        // hash in the GroupInfo the adder signed.
        let tree = tree
            .map(RatchetTreeIn::tls_deserialize_exact)
            .transpose()
            .map_err(|e| format!("the relay's ratchet tree does not decode: {e}"))?;
        let staged = StagedWelcome::new_from_welcome(&provider, &join_config(), welcome, tree)
            .map_err(|e| format!("Welcome cannot be opened: {e}"))?;
        // A group this device is in, or was in until it left or was removed, is kept at
        // the epoch it last reached: only a Welcome to a later epoch (being added back)
        // may replace it.
        let mut held = MlsGroup::load(provider.storage(), &GroupId::from_slice(group_id))
            .map_err(|e| e.to_string())?;
        if let Some(old) = held.as_mut() {
            let (held, offered) = (
                old.epoch().as_u64(),
                staged.group_context().epoch().as_u64(),
            );
            if offered <= held {
                return Err(format!(
                    "a replayed Welcome: this device holds the group at epoch {held}, the Welcome is for epoch {offered}"
                ));
            }
            old.delete(provider.storage()).map_err(|e| e.to_string())?;
        }
        // Every member must be certified by the organisation (a certificate that ran out
        // since, of someone offline, is no reason to refuse the group).
        for member in staged.members() {
            roster_member(&device.org, &member.credential, &member.signature_key)
                .map_err(|e| format!("Welcome lists a member with an invalid identity: {e}"))?;
        }
        let sender = staged
            .welcome_sender()
            .map_err(|e| format!("Welcome has no sender: {e}"))?;
        let adder = verify_member(
            &device.org,
            sender.credential(),
            sender.signature_key().as_slice(),
        )
        .map_err(|e| format!("Welcome was sent by a member with an invalid identity: {e}"))?;
        if certificate_revoked(&tx, &adder).map_err(|e| e.to_string())? {
            return Err(format!(
                "Welcome was sent by revoked device {} of {}",
                adder.body.device_id, adder.body.user
            ));
        }
        let group = staged
            .into_group(&provider)
            .map_err(|e| format!("Welcome cannot be joined: {e}"))?;
        // Replacing a group this device is still in (it missed being removed and added
        // again): what changed since must be a change its adder, a member then, was
        // allowed to make. A device that had left or been removed simply joins anew.
        let active: bool = tx
            .query_row(
                "SELECT state = ?2 FROM groups WHERE group_id = ?1",
                params![group_id, GroupState::Active],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| e.to_string())?
            .unwrap_or(false);
        let changes = match held.as_ref().filter(|_| active) {
            Some(held) => {
                let revoked = revocation_list(&tx).map_err(|e| e.to_string())?;
                catch_up_changes(&tx, device, held, &group, &adder, &revoked)?
            }
            None => Vec::new(),
        };
        Ok((group, adder.body.user, changes))
    })();
    match result {
        Ok((group, adder, changes)) => {
            let gid = group.group_id().as_slice().to_vec();
            if gid != group_id {
                report
                    .problems
                    .push("rejected a Welcome whose group id differs from its envelope".into());
                return Ok(());
            }
            let placeholder = placeholder_name(&gid);
            // A group joined anew goes by a placeholder until a member tells its name, so
            // an old name cannot vouch for a group that is not the one it named.
            tx.execute(
                    "INSERT INTO groups (group_id, name, state, created_at) VALUES (?1, ?2, ?4, ?3)
                     ON CONFLICT (group_id) DO UPDATE SET name = CASE WHEN state = ?4 THEN name ELSE excluded.name END,
                         state = ?4",
                    params![gid, placeholder, now_ms(), GroupState::Active],
                )?;
            insert_system(&tx, &gid, &format!("{adder} added you"), Some(0))?;
            lapse_check_due(&tx)?;
            for change in &changes {
                insert_system(&tx, &gid, change, Some(0))?;
            }
            tx.commit()?;
            report.joined_groups.push(group_hex(&gid));
        }
        Err(why) => {
            tracing::warn!(%why, "rejected Welcome");
            report
                .problems
                .push(format!("rejected an invitation to a group: {why}"));
        }
    }
    Ok(())
}

/// Processes one group message inside the batch's transaction. Returns whether it deleted
/// content, so the batch ends with a checkpoint that scrubs it from the write-ahead log.
pub(super) fn process_group_message(
    context: &BatchContext<'_>,
    loaded: &mut LoadedGroups,
    verified: &mut VerifiedCertificates,
    group_id: &[u8],
    seq: u64,
    bytes: &[u8],
    report: &mut SyncReport,
) -> Result<bool, EngineError> {
    let BatchContext {
        crypto,
        tx,
        device,
        signer,
        revoked,
        batch,
    } = *context;
    let last: i64 = tx
        .prepare_cached("SELECT last_seq FROM cursors WHERE group_id = ?1")?
        .query_row([group_id], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    if seq as i64 <= last {
        return Ok(false);
    }
    tx.prepare_cached(
        "INSERT INTO cursors (group_id, last_seq) VALUES (?1, ?2)
             ON CONFLICT (group_id) DO UPDATE SET last_seq = excluded.last_seq",
    )?
    .execute(params![group_id, seq as i64])?;
    let own = tx
        .prepare_cached("DELETE FROM own_handshakes WHERE group_id = ?1 AND seq = ?2")?
        .execute(params![group_id, seq as i64])?;
    let state: Option<GroupState> = tx
        .prepare_cached("SELECT state FROM groups WHERE group_id = ?1")?
        .query_row([group_id], |r| r.get(0))
        .optional()?;
    if own > 0 || state != Some(GroupState::Active) {
        return Ok(false);
    }
    let pending_hash: Option<Vec<u8>> = tx
        .prepare_cached("SELECT commit_hash FROM pending_commits WHERE group_id = ?1")?
        .query_row([group_id], |r| r.get(0))
        .optional()?;
    let provider = Provider::batched(crypto, tx, batch);
    let mut group = match loaded.remove(group_id) {
        Some(group) => group,
        None => load_group(&provider, group_id)?,
    };
    let policy = policy_of(&group);
    let managed = policy.managed;
    let mut notices: Vec<String> = Vec::new();
    let mut new_state: Option<GroupState> = None;
    let mut received: Option<(Envelope, Certificate)> = None;
    let mut gap: Option<String> = None;
    let mut purge = false;
    if let Some(hash) = pending_hash {
        if hash == sha256(bytes) {
            // Our own commit, whose acceptance we did not hear about.
            if let Some(text) = merge_own_commit(&provider, &mut group, signer, device)? {
                notices.push(format!("you {text}"));
            }
        } else {
            group
                .clear_pending_commit(provider.storage())
                .map_err(EngineError::mls)?;
        }
        tx.prepare_cached("DELETE FROM pending_commits WHERE group_id = ?1")?
            .execute([group_id])?;
        if hash == sha256(bytes) {
            for (i, n) in notices.iter().enumerate() {
                insert_system(tx, group_id, n, Some(order_key(seq, i + 1)))?;
            }
            loaded.insert(group_id.to_vec(), group);
            return Ok(false);
        }
    }
    // A commit this device refuses at its own epoch, or anything from a later epoch, means
    // it may be behind the group: the next sync checks, and rejoins if so.
    let mut behind = false;
    let outcome = (|| -> Result<(), String> {
        let message = MlsMessageIn::tls_deserialize_exact(bytes)
            .map_err(|e| format!("message does not decode: {e}"))?
            .try_into_protocol_message()
            .map_err(|e| format!("not a group message: {e}"))?;
        // Commits and proposals travel as public messages, where the relay checks them
        // and where they wait for this device's look at the revocations.
        if matches!(message, ProtocolMessage::PrivateMessage(_))
            && message.content_type() != ContentType::Application
        {
            return Err("dropped a commit or proposal sent encrypted".into());
        }
        let (epoch, held) = (message.epoch().as_u64(), group.epoch().as_u64());
        behind = epoch > held || (epoch == held && message.content_type() == ContentType::Commit);
        let processed = group
            .process_message(&provider, message)
            .map_err(|e| format!("message cannot be processed: {e}"))?;
        let sender_cert = certificate_in(processed.credential())
            .ok_or_else(|| "sender has no identity certificate".to_string())?;
        // A commit's sender is judged by the shared rules, which let a member whose
        // certificate ran out commit its own renewal (as the relay does); everything
        // else needs a certificate valid now.
        let is_commit = matches!(
            processed.content(),
            ProcessedMessageContent::StagedCommitMessage(_)
        );
        let now = if is_commit { None } else { Some(now_unix()) };
        verified
            .verify(&sender_cert, &device.org, now)
            .map_err(|e| format!("sender {}: {e}", sender_cert.body.user))?;
        // The certificate must name the key that signed: the sending leaf's own.
        let sender_key = match (processed.sender(), processed.content()) {
            (Sender::Member(index), _) => group.member_at(*index).map(|m| m.signature_key),
            // A member rejoining signs with the leaf it brings.
            (Sender::NewMemberCommit, ProcessedMessageContent::StagedCommitMessage(staged)) => {
                staged
                    .update_path_leaf_node()
                    .map(|leaf| leaf.signature_key().as_slice().to_vec())
            }
            _ => None,
        };
        if sender_key.as_deref() != Some(sender_cert.body.device_key.as_slice()) {
            return Err(format!(
                "dropped a message whose sender's certificate ({}) is not for the key that signed it",
                sender_cert.body.user
            ));
        }
        if revoked.covers(&sender_cert) {
            return Err(format!(
                "dropped a message from revoked device {} of {}",
                sender_cert.body.device_id, sender_cert.body.user
            ));
        }
        let rules = muster_rules::Context {
            org: &device.org,
            now: now_unix(),
            revoked: &|c: &Certificate| revoked.covers(c),
            // Members judge every commit alike, whatever renewals each has seen.
            renewed: &|_: &str| false,
        };
        let by = sender_cert.body.user.clone();
        let sender = processed.sender().clone();
        let aad = processed.aad().to_vec();
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => {
                let envelope = Envelope::from_bytes(&app.into_bytes())
                    .map_err(|e| format!("from {}: {e}", sender_cert.body.user))?;
                directed::check_routing(&aad, &envelope, || {
                    directed::group_archivists(&group, &device.org, tx).map_err(|e| e.to_string())
                })
                .map_err(|why| format!("dropped a message from {by}: {why}"))?;
                gap = check_send_number(tx, group_id, &sender_cert, envelope.n)
                    .map_err(|e| e.to_string())?;
                received = Some((envelope, sender_cert));
            }
            ProcessedMessageContent::ProposalMessage(proposal) => {
                let members: Vec<Member> = group.members().collect();
                // A proposal that breaks the rules is never stored, so no commit of
                // this device carries it and it cannot wedge later commits.
                muster_rules::check_proposal(
                    &rules,
                    &members,
                    group.extensions(),
                    &sender,
                    proposal.proposal(),
                )
                .map_err(|e| format!("refused a proposal by {by}: {e}"))?;
                if let Proposal::Remove(remove) = proposal.proposal() {
                    let who = group
                        .member_at(remove.removed())
                        .and_then(|m| certificate_in(&m.credential))
                        .map(|c| c.body.user);
                    if who.as_deref() == Some(sender_cert.body.user.as_str()) {
                        notices.push(format!("{} is leaving the group", sender_cert.body.user));
                    }
                }
                group
                    .store_pending_proposal(provider.storage(), *proposal)
                    .map_err(|e| e.to_string())?;
            }
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                let members: Vec<Member> = group.members().collect();
                muster_rules::check_commit(&rules, &members, group.extensions(), &sender, &staged)
                    .map_err(|e| format!("refused a commit by {by}: {e}"))?;
                let changed_policy = muster_rules::policy_change(policy, &staged);
                let added: Vec<String> = staged
                    .add_proposals()
                    .filter_map(|a| {
                        certificate_in(a.add_proposal().key_package().leaf_node().credential())
                    })
                    .map(|c| c.body.user)
                    .collect();
                let removed: Vec<String> = staged
                    .remove_proposals()
                    .filter_map(|r| group.member_at(r.remove_proposal().removed()))
                    .filter_map(|m| certificate_in(&m.credential))
                    .map(|c| c.body.user)
                    .collect();
                let self_removed = staged.self_removed();
                group
                    .merge_staged_commit(&provider, *staged)
                    .map_err(|e| e.to_string())?;
                lapse_check_due(tx).map_err(|e| e.to_string())?;
                let actor = &sender_cert.body.user;
                let was_in = members.iter().any(|m| {
                    certificate_in(&m.credential)
                        .is_some_and(|c| c.body.device_id == sender_cert.body.device_id)
                });
                if sender == Sender::NewMemberCommit && was_in {
                    notices.push(format!(
                        "a device of {actor} had fallen behind and rejoined the group"
                    ));
                } else if sender == Sender::NewMemberCommit {
                    notices.push(format!(
                        "{actor} joined (added while their device was offline)"
                    ));
                    // The one who added them tells them the group's name; failing that,
                    // the member at the first leaf.
                    let added_here = tx
                        .prepare_cached(
                            "DELETE FROM pending_members WHERE group_id = ?1 AND user = ?2",
                        )
                        .and_then(|mut s| s.execute(params![group_id, actor]))
                        .map_err(|e| e.to_string())?
                        > 0;
                    let first = group
                        .members()
                        .filter(|m| {
                            certificate_in(&m.credential).is_some_and(|c| c.body.user != *actor)
                        })
                        .map(|m| m.index)
                        .min();
                    if added_here || first == Some(group.own_leaf_index()) {
                        queue_name_for_new_members(&provider, &mut group, signer, device)
                            .map_err(|e| e.to_string())?;
                    }
                } else {
                    // Someone else added or removed a person this device was waiting to
                    // add: their decision stands, so this device stops waiting.
                    for user in added.iter().chain(removed.iter()) {
                        tx.prepare_cached(
                            "DELETE FROM pending_members WHERE group_id = ?1 AND user = ?2",
                        )
                        .and_then(|mut s| s.execute(params![group_id, user]))
                        .map_err(|e| e.to_string())?;
                    }
                    for user in dedup(added) {
                        notices.push(format!("{actor} added {user}"));
                    }
                    for user in dedup(removed) {
                        if user == *actor {
                            notices.push(format!("{user} left"));
                        } else {
                            notices.push(format!("{actor} removed {user}"));
                        }
                    }
                }
                if let Some(after) = changed_policy {
                    notices.extend(describe_policy_change(actor, policy, after));
                }
                if self_removed || !group.is_active() {
                    new_state = Some(GroupState::Removed);
                    notices.push("you are no longer a member of this group".into());
                }
            }
            _ => return Err("unsupported message type".into()),
        }
        Ok(())
    })();
    if let Err(why) = &outcome {
        tracing::warn!(%why, "could not process a group message");
        report.problems.push(why.clone());
        notices.push(format!("a message could not be processed: {why}"));
        if behind {
            tx.prepare_cached("INSERT OR IGNORE INTO behind_groups (group_id) VALUES (?1)")?
                .execute([group_id])?;
        }
    }
    if let Some(gap) = gap {
        tracing::warn!(%gap, "messages withheld or reordered");
        report.problems.push(gap.clone());
        if device.certificate.as_ref().is_some_and(|c| c.is_archive()) {
            archive::record_gap(tx, group_id, &gap, now_ms())?;
        }
        notices.push(gap);
    }
    if let Some((envelope, cert)) = received {
        // An archive sealing to legal officers keeps nothing it could read itself, in
        // archived groups or not (a group it was just added to is archived one commit later).
        let is_archive = device.certificate.as_ref().is_some_and(|c| c.is_archive());
        let officers = if is_archive {
            crate::legal::stored_officers(tx)?
        } else {
            None
        };
        let sealed_archive = officers.is_some();
        if policy.archived && is_archive {
            let (name, disappear_secs): (String, Option<i64>) = tx
                .prepare_cached("SELECT name, disappear_secs FROM groups WHERE group_id = ?1")?
                .query_row([group_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
            let message = ArchivedMessage {
                group_id: group_hex(group_id),
                group: name,
                relay_seq: seq,
                sender: cert.body.user.clone(),
                sender_device: cert.body.device_id.clone(),
                sent_at: envelope.sent_at,
                received_at: now_ms(),
                id: envelope.id.clone(),
                body: serde_json::to_value(&envelope.body)
                    .map_err(|e| EngineError::Invalid(e.to_string()))?,
            };
            // Measured from when the archive received it: a sender's clock, which any
            // member sets at will, decides nothing about how long the archive keeps it.
            let received_at = message.received_at;
            let expires_at =
                disappear_secs.map(|secs| received_at.saturating_add(secs.saturating_mul(1000)));
            archive::record_message(
                tx,
                group_id,
                &message,
                expires_at,
                received_at,
                officers.as_ref(),
            )?;
        }
        let author = Author {
            user: &cert.body.user,
            device: &cert.body.device_id,
            admin: cert.is_admin(),
            bot: cert.is_bot(),
        };
        let origin = Origin::Received {
            seq,
            at_ms: now_ms(),
        };
        if !sealed_archive
            && conversation::apply(
                tx,
                &device.user,
                group_id,
                &envelope,
                &author,
                origin,
                managed,
            )?
        {
            report.received += 1;
            let group: String = tx
                .prepare_cached("SELECT name FROM groups WHERE group_id = ?1")?
                .query_row([group_id], |r| r.get(0))?;
            // As stored: a claim of a duty, say, shows as the reminder it became.
            let (kind, text, mentions, ack_required, drill): (String, String, String, bool, bool) = tx
                .prepare_cached(
                    "SELECT kind, body, mentions, ack_required, drill FROM messages WHERE group_id = ?1 AND id = ?2",
                )?
                .query_row(params![group_id, envelope.id], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })?;
            let mentions: Vec<String> = serde_json::from_str(&mentions).unwrap_or_default();
            let notification = Notification {
                id: envelope.id.clone(),
                group,
                sender: cert.body.user.clone(),
                kind: if kind == "alert" { kind } else { "text".into() },
                text: if drill && !text.starts_with("[DRILL]") {
                    format!("[DRILL] {text}")
                } else {
                    text
                },
                mentions_me: mentions.contains(&device.user),
                ack_required,
            };
            if should_notify(tx, group_id, &notification)? {
                report.notifications.push(notification);
            }
        }
        purge = match &envelope.body {
            Body::Delete { .. } => true,
            Body::BoardSet { value, .. } => value.is_empty(),
            _ => false,
        };
    }
    if let Some(state) = new_state {
        tx.execute(
            "UPDATE groups SET state = ?2 WHERE group_id = ?1",
            params![group_id, state],
        )?;
    }
    for (i, n) in notices.iter().enumerate() {
        insert_system(tx, group_id, n, Some(order_key(seq, i + 1)))?;
    }
    // A message that failed may have left the group object half-changed; the next one
    // reads the group afresh from the store.
    if outcome.is_ok() && new_state.is_none() {
        loaded.insert(group_id.to_vec(), group);
    }
    Ok(purge)
}

/// Where the time of a group's last delivery receipts is kept.
pub(super) fn dedup(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v.dedup();
    v
}

/// Urgent alerts always notify; other messages follow the group's level and mutes.
pub(super) fn should_notify(
    db: &Connection,
    group_id: &[u8],
    n: &Notification,
) -> Result<bool, EngineError> {
    if n.kind == "alert" {
        return Ok(true);
    }
    let group = view_of(db, "group", &group_hex(group_id))?;
    if group.muted || view_of(db, "user", &n.sender)?.muted {
        return Ok(false);
    }
    Ok(match group.level.as_str() {
        "alerts" => false,
        "mentions" => n.mentions_me,
        _ => true,
    })
}

/// Checks a sender's message number against the last one seen from that device in the
/// group: a number skipped means the relay withheld messages, an old one that it
/// reordered or replayed them. Returns what to tell the user, if anything.
pub(super) fn check_send_number(
    db: &Connection,
    group_id: &[u8],
    sender: &Certificate,
    n: Option<u64>,
) -> Result<Option<String>, EngineError> {
    let Some(n) = n else {
        return Ok(None);
    };
    let last: Option<i64> = db
        .prepare_cached("SELECT last_n FROM sender_numbers WHERE group_id = ?1 AND device_id = ?2")?
        .query_row(params![group_id, sender.body.device_id], |r| r.get(0))
        .optional()?;
    db.prepare_cached(
        "INSERT INTO sender_numbers (group_id, device_id, last_n) VALUES (?1, ?2, ?3)
         ON CONFLICT (group_id, device_id) DO UPDATE SET last_n = MAX(last_n, excluded.last_n)",
    )?
    .execute(params![group_id, sender.body.device_id, n as i64])?;
    let user = &sender.body.user;
    Ok(match last.map(|l| l.max(0) as u64) {
        Some(last) if n > last.saturating_add(1) => {
            let missing = n - last - 1;
            Some(format!(
                "{missing} message{} from {user} (device {}) never arrived: the relay withheld {}",
                if missing == 1 { "" } else { "s" },
                sender.body.device_id,
                if missing == 1 { "it" } else { "them" }
            ))
        }
        Some(last) if n <= last => Some(format!(
            "a message from {user} arrived out of order (number {n} after {last}): the relay reordered or replayed it"
        )),
        _ => None,
    })
}

pub(super) fn device_ids_in(group: &MlsGroup) -> Vec<String> {
    group
        .members()
        .filter_map(|m| certificate_in(&m.credential))
        .map(|c| c.body.device_id)
        .collect()
}
