//! Groups: creation, rosters, GroupInfos, epochs, and application messages sent into them.

use super::*;
use crate::schema::audience_text;

impl Relay {
    /// Every leaf of a group must carry a valid certificate of an approved device.
    pub(super) fn roster_devices(
        tx: &Transaction,
        org: &OrgDescriptor,
        group: &PublicGroup,
        verified: &mut VerifiedCredentials,
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
            verified
                .check(org, &member.credential, &cert)
                .map_err(|e| {
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

    pub(super) fn create_group(
        &mut self,
        session: &Session,
        group_info: &[u8],
        ratchet_tree: &[u8],
    ) -> Result<Outcome, Failure> {
        let org = self.require_org()?;
        if self
            .certificate_of_device(&session.device_id)?
            .is_some_and(|c| c.is_bot())
        {
            return Err(refuse(
                ErrorCode::Forbidden,
                "a bot cannot create groups: a person creates the group and adds the bot",
            ));
        }
        let bad = |why: String| refuse(ErrorCode::InvalidMessage, why);
        let info = MlsMessageIn::tls_deserialize_exact(group_info)
            .map_err(|e| bad(format!("GroupInfo: {e}")))?;
        let MlsMessageBodyIn::GroupInfo(info) = info.extract() else {
            return Err(bad("expected a GroupInfo message".into()));
        };
        let tree = RatchetTreeIn::tls_deserialize_exact(ratchet_tree)
            .map_err(|e| bad(format!("ratchet tree: {e}")))?;
        let group_id = info.group_id().as_slice().to_vec();
        if group_id.len() > muster_proto::MAX_GROUP_ID {
            return Err(bad(format!(
                "a group id may be at most {} bytes",
                muster_proto::MAX_GROUP_ID
            )));
        }
        let tx = self.db.transaction()?;
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
        let devices = Self::roster_devices(&tx, &org, &group, &mut self.verified_credentials)?;
        if policy_of(&group).managed && !device_is_admin(&tx, &session.device_id)? {
            return Err(refuse(
                ErrorCode::Forbidden,
                "only an organisation admin may create a managed group",
            ));
        }
        let waiting = muster_rules::pending_in(group.group_context().extensions());
        if waiting.len() > muster_proto::MAX_PENDING_SEATS
            || waiting.iter().any(|u| validate_handle(u).is_err())
        {
            return Err(bad(
                "the list of people waiting to join is too long or names an invalid handle".into(),
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
        Self::record_pending_seats(&tx, &group_id, &group)?;
        let creator_key = Self::device_key(&tx, &session.device_id)?;
        if Self::checked_group_info(&self.crypto, &group, group_info, &creator_key) {
            exec(
                &tx,
                "INSERT INTO group_infos (group_id, epoch, data) VALUES (?1, ?2, ?3)
                 ON CONFLICT (group_id) DO UPDATE SET epoch = excluded.epoch, data = excluded.data",
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

    /// The signature key of a device the relay knows.
    pub(super) fn device_key(tx: &Db, device_id: &str) -> Result<Vec<u8>, Failure> {
        Ok(row(
            tx,
            "SELECT device_key FROM devices WHERE device_id = ?1",
            [device_id],
            |r| r.get(0),
        )?)
    }

    /// Keeps who the group's context lists as waiting to join, for [`Self::pending_seats`].
    pub(super) fn record_pending_seats(
        tx: &Db,
        group_id: &[u8],
        group: &PublicGroup,
    ) -> Result<(), Failure> {
        exec(
            tx,
            "DELETE FROM pending_seats WHERE group_id = ?1",
            params![group_id],
        )?;
        for user in muster_rules::pending_in(group.group_context().extensions()) {
            exec(
                tx,
                "INSERT INTO pending_seats (group_id, user) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                params![group_id, user],
            )?;
        }
        Ok(())
    }

    /// The groups waiting for the session's user to join.
    pub(super) fn pending_seats(&self, session: &Session) -> Result<Outcome, Failure> {
        let groups = self
            .db
            .prepare_cached("SELECT group_id FROM pending_seats WHERE user = ?1 ORDER BY group_id")?
            .query_map([&session.user], |r| r.get(0))?
            .collect::<Result<Vec<Vec<u8>>, _>>()?;
        Ok(Outcome::reply(Response::PendingSeats(groups)))
    }

    /// Refuses a device that is neither a member of the group nor someone it lists as
    /// waiting to join.
    pub(super) fn require_member_or_waiting(
        &self,
        session: &Session,
        group_id: &[u8],
    ) -> Result<(), Failure> {
        let waiting = row(
            &self.db,
            "SELECT 1 FROM pending_seats WHERE group_id = ?1 AND user = ?2",
            params![group_id, session.user],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
        if !waiting {
            require_member(&self.db, group_id, &session.device_id)?;
        }
        Ok(())
    }

    pub(super) fn group_info(
        &self,
        session: &Session,
        group_id: &[u8],
    ) -> Result<Outcome, Failure> {
        self.require_member_or_waiting(session, group_id)?;
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

    pub(super) fn group_state(tx: &Transaction, group_id: &[u8]) -> Result<(u64, u64), Failure> {
        row(
            tx,
            "SELECT epoch, last_seq FROM groups WHERE group_id = ?1",
            [group_id],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
        )
        .optional()?
        .ok_or_else(|| refuse(ErrorCode::UnknownGroup, "no such group on this relay"))
    }

    pub(super) fn current_members(
        tx: &Transaction,
        group_id: &[u8],
    ) -> Result<BTreeSet<String>, Failure> {
        let mut stmt = tx.prepare_cached(
            "SELECT device_id FROM memberships WHERE group_id = ?1 AND to_seq IS NULL",
        )?;
        let rows = stmt
            .query_map([group_id], |r| r.get(0))?
            .collect::<Result<BTreeSet<String>, _>>()?;
        Ok(rows)
    }

    /// The devices among `members` whose users are named in `users`.
    fn devices_of_users(
        tx: &Transaction,
        members: &BTreeSet<String>,
        users: &[String],
    ) -> Result<BTreeSet<String>, Failure> {
        let mut stmt = tx.prepare_cached("SELECT device_id FROM devices WHERE user = ?1")?;
        let mut devices = BTreeSet::new();
        for user in users {
            for device in stmt.query_map([user], |r| r.get::<_, String>(0))? {
                let device = device?;
                if members.contains(&device) {
                    devices.insert(device);
                }
            }
        }
        Ok(devices)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn append(
        tx: &Transaction,
        group_id: &[u8],
        seq: u64,
        epoch: u64,
        kind: &str,
        sender: &str,
        client_id: Option<&[u8]>,
        data: &[u8],
        audience: Option<&str>,
    ) -> Result<(), Failure> {
        exec(tx,
            "INSERT INTO messages (group_id, seq, epoch, kind, sender_device, client_id, data, stored_at, audience)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![group_id, seq as i64, epoch as i64, kind, sender, client_id, data, now_unix() as i64, audience],
        )?;
        exec(
            tx,
            "UPDATE groups SET last_seq = ?2 WHERE group_id = ?1",
            params![group_id, seq as i64],
        )?;
        exec(
            tx,
            "INSERT INTO queued_bytes (device_id, bytes) VALUES (?1, ?2)
             ON CONFLICT (device_id) DO UPDATE SET bytes = queued_bytes.bytes + excluded.bytes",
            params![sender, (data.len() + audience.map_or(0, str::len)) as i64],
        )?;
        if let Some(client_id) = client_id {
            exec(tx,
                "INSERT INTO sent_ids (sender_device, client_id, seq, stored_at) VALUES (?1, ?2, ?3, ?4)",
                params![sender, client_id, seq as i64, now_unix() as i64],
            )?;
        }
        Ok(())
    }

    pub(super) fn check_epoch(message_epoch: u64, current: u64) -> Result<(), Failure> {
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

    pub(super) fn sender_device(group: &PublicGroup, sender: &Sender) -> Option<String> {
        match sender {
            Sender::Member(index) => group
                .leaf(*index)
                .and_then(|leaf| certificate_of(leaf.credential()))
                .map(|c| c.body.device_id),
            _ => None,
        }
    }

    pub(super) fn send(
        &mut self,
        session: &Session,
        group_id: &[u8],
        data: &[u8],
        client_id: &[u8],
        to: Option<&[String]>,
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
        // Only a message its sender bound to these recipients goes to them alone, so a
        // member cannot quietly keep from the others what it says.
        if let ProtocolMessage::PrivateMessage(private) = &message {
            let bound =
                directed_users(private.aad()).map_err(|e| refuse(ErrorCode::BadRequest, e))?;
            if bound.as_deref() != to {
                return Err(refuse(
                    ErrorCode::BadRequest,
                    "a message goes to the recipients its sender bound into it, and only then",
                ));
            }
        }
        if message.group_id().as_slice() != group_id {
            return Err(refuse(
                ErrorCode::BadRequest,
                "message is for another group",
            ));
        }
        let tx = self.db.transaction()?;
        let existing: Option<i64> = row(
            &tx,
            "SELECT seq FROM sent_ids WHERE sender_device = ?1 AND client_id = ?2",
            params![session.device_id, client_id],
            |r| r.get(0),
        )
        .optional()?;
        if let Some(seq) = existing {
            // What it was stored by may not be flushed yet (another relay's group commit,
            // or this one's that failed to sync): this answer waits for a sync.
            self.unsynced = true;
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
        let audience = to.map(audience_text);
        Self::append(
            &tx,
            group_id,
            seq,
            epoch,
            KIND_APPLICATION,
            &session.device_id,
            Some(client_id),
            data,
            audience.as_deref(),
        )?;
        let mut wake = match to {
            None => members.clone(),
            Some(to) => Self::devices_of_users(&tx, &members, to)?,
        };
        // A sender never receives its own application message, so a sender that had
        // fetched everything before it is also done with it. If it was the one holding
        // the group's mark back, the mark is worked out again at the next acknowledgement.
        let before = Self::acked_up_to(&tx, &session.device_id, group_id)?;
        let holding_back = match (before, self.delivered_marks.get(group_id)) {
            (Some(before), Some(mark)) => before <= *mark,
            _ => true,
        };
        exec(&tx,
            "INSERT INTO cursors (device_id, group_id, acked_seq)
               SELECT ?1, ?2, ?3 FROM memberships ms
               LEFT JOIN cursors c ON c.device_id = ms.device_id AND c.group_id = ms.group_id
               WHERE ms.device_id = ?1 AND ms.group_id = ?2 AND ms.to_seq IS NULL
                 AND COALESCE(c.acked_seq, ms.from_seq - 1) >= ?4
             ON CONFLICT (device_id, group_id) DO UPDATE SET acked_seq = MAX(cursors.acked_seq, excluded.acked_seq)",
            params![session.device_id, group_id, seq as i64, last_seq as i64],
        )?;
        // A sender that was holding the group back may have been the last one waiting
        // (alone in the group, or the others gone): it prunes as an acknowledgement would.
        let mark = if holding_back {
            Some(Self::prune_delivered(&tx, group_id)?.0)
        } else {
            None
        };
        tx.commit()?;
        let data: std::sync::Arc<[u8]> = data.into();
        self.recent.push(
            group_id,
            recent::Entry {
                seq,
                sender: session.device_id.as_str().into(),
                application: true,
                data: data.clone(),
                audience: audience.map(Into::into),
            },
        );
        if let Some(mark) = mark {
            self.recent.delivered(group_id, mark.max(0) as u64);
            self.delivered_marks.insert(group_id.to_vec(), mark);
        }
        wake.remove(&session.device_id);
        Ok(Outcome {
            stored: Some(crate::push::StoredMessage {
                group_id: group_id.to_vec(),
                seq,
                message: data,
                members,
            }),
            ..Outcome::with_wake(Response::Stored { seq }, wake)
        })
    }
}

/// Credentials whose certificate was issued by the organisation, as verified before: the
/// signature check is the same every time, so a large group's roster costs a lookup per
/// member. Dates and revocation are not part of it; they are checked every time.
#[derive(Default)]
pub(super) struct VerifiedCredentials(std::collections::HashSet<Vec<u8>>);

/// Credentials remembered at most; the set starts again past this.
const MAX_VERIFIED_CREDENTIALS: usize = 200_000;

impl VerifiedCredentials {
    pub(super) fn check(
        &mut self,
        org: &OrgDescriptor,
        credential: &Credential,
        cert: &muster_proto::Certificate,
    ) -> Result<(), muster_proto::CertError> {
        let key = credential.serialized_content().to_vec();
        if self.0.contains(&key) {
            return Ok(());
        }
        cert.verify_issuer(org)?;
        if self.0.len() >= MAX_VERIFIED_CREDENTIALS {
            self.0.clear();
        }
        self.0.insert(key);
        Ok(())
    }
}
