//! Composing: every kind of message a user sends, encrypted into the outbox with its effect
//! on this device's own store.

use super::*;

impl Engine {
    /// Encrypts `body` for the group and queues it in the outbox, in one transaction.
    pub(super) fn enqueue(&mut self, group_id: &[u8], body: Body) -> Result<String, EngineError> {
        let mut ids = self.enqueue_all(group_id, vec![body], |_, _, _| Ok(()))?;
        Ok(ids.pop().unwrap_or_default())
    }

    /// Encrypts each of `bodies` into the outbox in one transaction, reading the group
    /// once; `with_each(tx, i, id)` stores what goes with the `i`th (message `id`) in the
    /// same transaction. Returns their message ids.
    pub(super) fn enqueue_all(
        &mut self,
        group_id: &[u8],
        bodies: Vec<Body>,
        mut with_each: impl FnMut(&Connection, usize, &str) -> Result<(), EngineError>,
    ) -> Result<Vec<String>, EngineError> {
        let device = self.device()?;
        if let Some(cert) = &device.certificate {
            cert.check_validity(now_unix()).map_err(|_| {
                EngineError::Invalid(format!(
                    "this device's certificate ran out at {}: members would refuse what it sends until an admin device renews it (it does when it next syncs)",
                    rfc3339_ms(cert.body.not_after as i64 * 1000)
                ))
            })?;
        }
        let signer = self.signer(&device)?;
        let tx = self
            .db
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let provider = Provider::new(&self.crypto, &tx);
        let mut group = load_group(&provider, group_id)?;
        let mut ids = Vec::with_capacity(bodies.len());
        for (i, body) in bodies.into_iter().enumerate() {
            let envelope = Envelope::new(random_hex(16), now_ms(), body);
            ids.push(envelope.id.clone());
            let id = envelope.id.clone();
            queue_in(&provider, &mut group, &signer, &device, envelope)?;
            with_each(&tx, i, &id)?;
        }
        tx.commit()?;
        Ok(ids)
    }

    /// Encrypts a text message into the outbox, without touching the network. It is
    /// delivered by [`Engine::deliver`] or the next [`Engine::sync`], even after a crash.
    pub fn queue_text(&mut self, group: &str, text: &str) -> Result<QueuedMessage, EngineError> {
        self.queue_reply(group, text, None)
    }

    /// Like [`Engine::queue_text`], quoting message `reply_to` (an id or id prefix) of the same group.
    pub fn queue_reply(
        &mut self,
        group: &str,
        text: &str,
        reply_to: Option<&str>,
    ) -> Result<QueuedMessage, EngineError> {
        let body = self.text_body(group, text, reply_to)?;
        let (group_id, _) = self.active_group(group)?;
        let id = self.enqueue(&group_id, body)?;
        Ok(QueuedMessage { group_id, id })
    }

    /// The body of a text to `group`, checked, quoting `reply_to` (an id or id prefix of
    /// a message of the same group).
    pub(super) fn text_body(
        &self,
        group: &str,
        text: &str,
        reply_to: Option<&str>,
    ) -> Result<Body, EngineError> {
        if text.trim().is_empty() {
            return Err(EngineError::Invalid("message is empty".into()));
        }
        if text.len() > MAX_TEXT_BYTES {
            return Err(EngineError::Invalid(format!(
                "message is {} bytes; the limit is {MAX_TEXT_BYTES}",
                text.len()
            )));
        }
        let (group_id, _) = self.active_group(group)?;
        let reply_to = match reply_to {
            Some(target) => {
                let (target_group, id) = self.find_message(target)?;
                if target_group != group_id {
                    return Err(EngineError::Invalid(format!(
                        "message {target} is in another group"
                    )));
                }
                Some(id)
            }
            None => None,
        };
        Ok(Body::Text {
            text: text.to_string(),
            reply_to,
            mentions: mentions_in(text),
        })
    }

    /// Finds a message by id or unique id prefix (at least 6 characters) in any group.
    pub(super) fn find_message(&self, id: &str) -> Result<(Vec<u8>, String), EngineError> {
        self.one_by_prefix(
            "SELECT group_id, id FROM messages WHERE kind != 'system' AND id LIKE ?1 || '%' LIMIT 2",
            id,
            "message",
            "use at least 6 hex characters, as `read --json` shows",
        )
    }

    /// The one row `select` finds for an id prefix of 6 or more hex characters (`select`
    /// takes the prefix as ?1 and finds at most 2 rows); `what` names the kind of thing,
    /// and `hint` where its ids are shown.
    pub(super) fn one_by_prefix<T>(
        &self,
        select: &str,
        prefix: &str,
        what: &str,
        hint: &str,
    ) -> Result<T, EngineError>
    where
        T: for<'r> TryFrom<&'r rusqlite::Row<'r>, Error = rusqlite::Error>,
    {
        let prefix = prefix.trim().to_ascii_lowercase();
        if !is_id_prefix(&prefix) {
            return Err(EngineError::Invalid(format!(
                "{prefix:?} is not a {what} id ({hint})"
            )));
        }
        let mut found: Vec<T> = self.rows_by_prefix(select, &prefix)?;
        match found.len() {
            0 => Err(EngineError::Invalid(format!(
                "no {what} {prefix} on this device"
            ))),
            1 => Ok(found.remove(0)),
            _ => Err(EngineError::Invalid(format!(
                "{prefix} matches several {what}s; give more of the id"
            ))),
        }
    }

    /// The rows `select` finds for `prefix` (see [`Engine::one_by_prefix`]).
    pub(super) fn rows_by_prefix<T>(
        &self,
        select: &str,
        prefix: &str,
    ) -> Result<Vec<T>, EngineError>
    where
        T: for<'r> TryFrom<&'r rusqlite::Row<'r>, Error = rusqlite::Error>,
    {
        Ok(self
            .db
            .prepare(select)?
            .query_map([prefix], |r| T::try_from(r))?
            .collect::<Result<_, _>>()?)
    }

    /// Finds one of this user's own messages of one of `kinds` that still has content.
    pub(super) fn own_message(
        &self,
        id: &str,
        kinds: &[&str],
    ) -> Result<(Vec<u8>, String), EngineError> {
        let (group_id, id) = self.find_message(id)?;
        let me = self.device()?;
        let (sender, kind, deleted): (String, String, bool) = self.db.query_row(
            "SELECT sender, kind, deleted FROM messages WHERE group_id = ?1 AND id = ?2",
            params![group_id, id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        if sender != me.user || !kinds.contains(&kind.as_str()) {
            return Err(EngineError::Invalid(format!(
                "message {id} is not yours: only its author can change it"
            )));
        }
        if deleted {
            return Err(EngineError::Invalid(format!("message {id} was deleted")));
        }
        let KnownGroup { name, state, .. } = self.resolve_group(&group_hex(&group_id))?;
        if state != GroupState::Active {
            return Err(EngineError::NotActive(name));
        }
        Ok((group_id, id))
    }

    /// Replaces the text of one of your messages for every member.
    pub fn queue_edit(&mut self, id: &str, text: &str) -> Result<QueuedMessage, EngineError> {
        if text.trim().is_empty() || text.len() > MAX_TEXT_BYTES {
            return Err(EngineError::Invalid(format!(
                "an edit must be 1 to {MAX_TEXT_BYTES} bytes"
            )));
        }
        let (group_id, target) = self.own_message(id, &["text"])?;
        let id = self.enqueue(
            &group_id,
            Body::Edit {
                target,
                text: text.to_string(),
            },
        )?;
        Ok(QueuedMessage { group_id, id })
    }

    /// Deletes one of your messages from every member's store.
    pub fn queue_delete(&mut self, id: &str) -> Result<QueuedMessage, EngineError> {
        let (group_id, target) = self.own_message(id, &["text", "alert", "attachment"])?;
        let id = self.enqueue(&group_id, Body::Delete { target })?;
        self.remove_doomed_files()?;
        self.purge_deleted()?;
        Ok(QueuedMessage { group_id, id })
    }

    /// Reacts to a message (or takes the reaction back).
    pub fn queue_reaction(
        &mut self,
        id: &str,
        emoji: &str,
        remove: bool,
    ) -> Result<QueuedMessage, EngineError> {
        let emoji = emoji.trim();
        if !crate::conversation::usable_reaction(emoji) {
            return Err(EngineError::Invalid(format!(
                "a reaction is one emoji (at most {} characters, no letters or spaces)",
                crate::conversation::MAX_REACTION_CHARS
            )));
        }
        let (group_id, target) = self.find_message(id)?;
        if !remove {
            let me = self.device()?.user;
            let (held, this_one): (i64, i64) = self.db.query_row(
                "SELECT COUNT(*), COALESCE(SUM(emoji = ?4), 0) FROM reactions
                 WHERE group_id = ?1 AND message_id = ?2 AND user = ?3",
                params![group_id, target, me, emoji],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            if this_one == 0 && held >= crate::conversation::MAX_REACTIONS_PER_MEMBER {
                return Err(EngineError::Invalid(format!(
                    "you have {held} reactions on this message already; take one back first"
                )));
            }
        }
        let KnownGroup { name, state, .. } = self.resolve_group(&group_hex(&group_id))?;
        if state != GroupState::Active {
            return Err(EngineError::NotActive(name));
        }
        let id = self.enqueue(
            &group_id,
            Body::Reaction {
                target,
                emoji: emoji.to_string(),
                remove,
            },
        )?;
        Ok(QueuedMessage { group_id, id })
    }

    /// Queues an urgent alert for the group. One asking for acknowledgement offers
    /// [`AnswerOption::default_pair`].
    pub fn queue_alert(
        &mut self,
        group: &str,
        text: &str,
        ack_required: bool,
    ) -> Result<QueuedMessage, EngineError> {
        let options = if ack_required {
            AnswerOption::default_pair()
        } else {
            Vec::new()
        };
        self.queue_alert_asking(group, text, ack_required, options)
    }

    /// Queues an alert that asks every member to answer with one of `options` (when
    /// there are some).
    pub fn queue_alert_asking(
        &mut self,
        group: &str,
        text: &str,
        ack_required: bool,
        options: Vec<AnswerOption>,
    ) -> Result<QueuedMessage, EngineError> {
        self.queue_alert_request(
            group,
            text,
            AlertRequest {
                ack_required,
                options,
                ..AlertRequest::default()
            },
        )
    }

    /// Acknowledges an alert; the sender sees it in the roll-call. An alert that offers
    /// its own answers needs one ([`Engine::queue_answer`]).
    pub fn queue_ack(&mut self, id: &str) -> Result<QueuedMessage, EngineError> {
        self.queue_answer(id, None)
    }

    /// Answers an alert with one of its options (`None`: acknowledges it, which for an
    /// alert offering the default pair is "acknowledged"). A later answer replaces an
    /// earlier one. An urgent answer also raises an alert in the group, naming who gave it.
    pub fn queue_answer(
        &mut self,
        id: &str,
        answer: Option<&str>,
    ) -> Result<QueuedMessage, EngineError> {
        let (group_id, target) = self.find_message(id)?;
        let me = self.device()?;
        let (kind, sender, text, stored): (String, String, String, Option<String>) =
            self.db.query_row(
                "SELECT kind, sender, body, options FROM messages WHERE group_id = ?1 AND id = ?2",
                params![group_id, target],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )?;
        if kind != "alert" {
            return Err(EngineError::Invalid(format!(
                "message {target} is not an alert"
            )));
        }
        if sender == me.user {
            return Err(EngineError::Invalid("you sent this alert".into()));
        }
        let KnownGroup { name, state, .. } = self.resolve_group(&group_hex(&group_id))?;
        if state != GroupState::Active {
            return Err(EngineError::NotActive(name));
        }
        let options = conversation::alert_options(stored.as_deref());
        let listed = || {
            options
                .iter()
                .map(|o| o.label.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let chosen = match answer {
            Some(given) => Some(
                options
                    .iter()
                    .find(|o| o.label.eq_ignore_ascii_case(given.trim()))
                    .cloned()
                    .ok_or_else(|| {
                        EngineError::Invalid(if options.is_empty() {
                            "this alert offers no answers: acknowledge it with `muster ack`".into()
                        } else {
                            format!("{given:?} is not one of this alert's answers: {}", listed())
                        })
                    })?,
            ),
            None if options.is_empty() => None,
            None if options == AnswerOption::default_pair() => options.first().cloned(),
            None => {
                return Err(EngineError::Invalid(format!(
                    "this alert asks for an answer: one of {} (`muster answer ID ANSWER`)",
                    listed()
                )))
            }
        };
        let mut bodies = vec![Body::Ack {
            target: target.clone(),
            answer: chosen.as_ref().map(|o| o.label.clone()),
        }];
        if let Some(urgent) = chosen.as_ref().filter(|o| o.urgent) {
            let quoted: String = text.chars().take(200).collect();
            bodies.push(alert_body(
                &format!(
                    "{} answered \"{}\" to {sender}'s alert: {quoted}",
                    me.user, urgent.label
                ),
                false,
                Vec::new(),
            )?);
        }
        let mut ids = self.enqueue_all(&group_id, bodies, |_, _, _| Ok(()))?;
        ids.truncate(1);
        Ok(QueuedMessage {
            group_id,
            id: ids.pop().unwrap_or_default(),
        })
    }

    /// Sets (or, with an empty value, clears) an entry of the group's situation board.
    pub fn queue_board_set(
        &mut self,
        group: &str,
        key: &str,
        value: &str,
    ) -> Result<QueuedMessage, EngineError> {
        let key = key.trim();
        if key.is_empty() || key.chars().count() > 64 {
            return Err(EngineError::Invalid(
                "a board key is 1-64 characters".into(),
            ));
        }
        if value.chars().count() > 1000 {
            return Err(EngineError::Invalid(
                "a board value is at most 1000 characters".into(),
            ));
        }
        let (group_id, _) = self.active_group(group)?;
        let id = self.enqueue(
            &group_id,
            Body::BoardSet {
                key: key.to_string(),
                value: value.to_string(),
            },
        )?;
        Ok(QueuedMessage { group_id, id })
    }

    /// Queues read receipts for the given messages of others (and marks them read here).
    pub fn mark_read(&mut self, messages: &[MessageView]) -> Result<(), EngineError> {
        let mut by_group: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for m in messages {
            by_group
                .entry(m.group_id.clone())
                .or_default()
                .push(m.id.clone());
        }
        for (group_hex_id, ids) in by_group {
            let group_id = hex::decode(&group_hex_id)
                .map_err(|_| EngineError::Invalid("bad group id".into()))?;
            self.queue_receipts(&group_id, ReceiptKind::Read, Some(&ids))?;
        }
        Ok(())
    }

    /// Queues one receipt message for the group covering the due messages (only `only`, if given).
    pub(super) fn queue_receipts(
        &mut self,
        group_id: &[u8],
        kind: ReceiptKind,
        only: Option<&[String]>,
    ) -> Result<(), EngineError> {
        let column = match kind {
            ReceiptKind::Delivered => "delivered_receipt_due",
            ReceiptKind::Read => "read_receipt_due",
        };
        if kind == ReceiptKind::Delivered && self.delivery_receipts_held(group_id, now_ms())? {
            return Ok(());
        }
        // Grouped by author, so each author's share can be named in the receipt.
        let due: Vec<Owed> = {
            let mut stmt = self.db.prepare_cached(&format!(
                "SELECT id, sender, seq FROM messages WHERE group_id = ?1 AND {column} = 1 ORDER BY sender, seq"
            ))?;
            let rows = stmt
                .query_map([group_id], |r| {
                    Ok(Owed {
                        id: r.get(0)?,
                        sender: r.get(1)?,
                        seq: r.get(2)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows
        };
        let targets: Vec<Owed> = due
            .into_iter()
            .filter(|owed| only.is_none_or(|o| o.contains(&owed.id)))
            .collect();
        // The archive keeps what it receives but reads nothing: it sends no receipts.
        if targets.is_empty() || self.is_archive()? {
            return Ok(());
        }
        let KnownGroup { state, .. } = self.resolve_group(&group_hex(group_id))?;
        if state != GroupState::Active {
            return Ok(());
        }
        let chunks: Vec<&[Owed]> = targets.chunks(500).collect();
        let receipts = chunks
            .iter()
            .map(|chunk| {
                let mut authors: Vec<AuthorSpan> = Vec::new();
                for owed in chunk.iter() {
                    match authors.last_mut() {
                        Some(span) if span.user == owed.sender => span.count += 1,
                        _ => authors.push(AuthorSpan {
                            user: owed.sender.clone(),
                            count: 1,
                        }),
                    }
                }
                Body::Receipt {
                    kind,
                    targets: chunk.iter().map(|owed| owed.id.clone()).collect(),
                    authors,
                }
            })
            .collect();
        // Each receipt and the messages it covers no longer owing one are stored together.
        let queued = self.enqueue_all(group_id, receipts, |tx, i, _| {
            let mut settle =
                tx.prepare_cached(&format!("UPDATE messages SET {column} = 0 WHERE seq = ?1"))?;
            let mut settle_delivered =
                tx.prepare_cached("UPDATE messages SET delivered_receipt_due = 0 WHERE seq = ?1")?;
            for owed in chunks[i] {
                settle.execute([owed.seq])?;
                if kind == ReceiptKind::Read {
                    settle_delivered.execute([owed.seq])?;
                }
            }
            Ok(())
        });
        match queued {
            // Receipts wait, like everything else, until the archive is back.
            Err(EngineError::ArchiveMissing(_) | EngineError::UnremovedDevice { .. }) => Ok(()),
            other => other.map(drop),
        }
    }

    /// Sets how long every member's device keeps the group's messages: `disappear` after
    /// they are sent, or `retain` for a period; neither means no limit.
    pub fn queue_retention(
        &mut self,
        group: &str,
        retain_secs: Option<u64>,
        disappear_secs: Option<u64>,
    ) -> Result<QueuedMessage, EngineError> {
        if [retain_secs, disappear_secs]
            .into_iter()
            .flatten()
            .any(|s| s == 0 || s > crate::content::MAX_RETENTION_SECS)
        {
            return Err(EngineError::Invalid(format!(
                "a retention period must be 1 second to {} days",
                crate::content::MAX_RETENTION_SECS / 86_400
            )));
        }
        let (group_id, _) = self.active_group(group)?;
        self.check_may_manage(&group_id, "change how long messages are kept")?;
        let id = self.enqueue(
            &group_id,
            Body::Retention {
                retain_secs,
                disappear_secs,
            },
        )?;
        Ok(QueuedMessage { group_id, id })
    }
}

/// Encrypts `envelope` for the group and puts it in the outbox, with its effect on this
/// device's own store, all inside the caller's transaction.
pub(super) fn queue_in(
    provider: &Provider,
    group: &mut MlsGroup,
    signer: &SignatureKeyPair,
    device: &DeviceRow,
    envelope: Envelope,
) -> Result<(), EngineError> {
    let db = provider.storage_connection();
    let group_id = group.group_id().as_slice().to_vec();
    if let Some(user) = unremoved_device(group, db, &device.device_id)? {
        return Err(EngineError::UnremovedDevice {
            group: group_label(db, &group_id),
            user,
        });
    }
    queue_unchecked(provider, group, signer, device, envelope)
}

/// `queue_in` without looking for devices still to be removed.
pub(super) fn queue_unchecked(
    provider: &Provider,
    group: &mut MlsGroup,
    signer: &SignatureKeyPair,
    device: &DeviceRow,
    mut envelope: Envelope,
) -> Result<(), EngineError> {
    let db = provider.storage_connection();
    let group_id = group.group_id().as_slice().to_vec();
    let archivists = directed::group_archivists(group, &device.org, db)?;
    if policy_of(group).archived && archivists.is_empty() {
        return Err(EngineError::ArchiveMissing(group_hex(&group_id)));
    }
    let audience = directed::directed_audience(db, &group_id, &envelope, &device.user, archivists)?;
    match &audience {
        Some(users) => group.set_aad(muster_proto::directed_aad(users)),
        None => envelope.n = Some(next_send_number(db, &group_id)?),
    }
    let ciphertext = group
        .create_message(provider, signer, &envelope.to_bytes())
        .map_err(EngineError::mls)?;
    let position: i64 = db.query_row(
        "SELECT COALESCE(MAX(position), 0) + 1 FROM outbox",
        [],
        |r| r.get(0),
    )?;
    db.execute(
        "INSERT INTO outbox (client_id, position, group_id, message_id, envelope, ciphertext, audience) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![sha256(envelope.id.as_bytes())[..16].to_vec(), position, group_id, envelope.id, envelope.to_bytes(), mls_bytes(&ciphertext)?, audience.as_deref().map(directed::audience_column)],
    )?;
    if !matches!(envelope.body, Body::Receipt { .. }) {
        let author = Author {
            user: &device.user,
            device: &device.device_id,
            admin: device.certificate.as_ref().is_some_and(|c| c.is_admin()),
            bot: device.certificate.as_ref().is_some_and(|c| c.is_bot()),
        };
        conversation::apply(
            db,
            &device.user,
            &group_id,
            &envelope,
            &author,
            Origin::Own,
            false,
        )?;
    }
    Ok(())
}

/// The next number this device gives its application messages to the group, counted in
/// the same transaction that queues the message.
pub(super) fn next_send_number(db: &Connection, group_id: &[u8]) -> Result<u64, EngineError> {
    let key = format!("sent_n:{}", group_hex(group_id));
    let n: i64 = db
        .prepare_cached(
            "INSERT INTO sync_state (key, value) VALUES (?1, 1)
             ON CONFLICT (key) DO UPDATE SET value = value + 1 RETURNING value",
        )?
        .query_row([key], |r| r.get(0))?;
    Ok(n as u64)
}

/// After merging a commit that added members: tell them the group's name, in the same
/// transaction, so a crash cannot leave them without it.
pub(super) fn queue_name_for_new_members(
    provider: &Provider,
    group: &mut MlsGroup,
    signer: &SignatureKeyPair,
    device: &DeviceRow,
) -> Result<(), EngineError> {
    let name: String = provider.storage_connection().query_row(
        "SELECT name FROM groups WHERE group_id = ?1",
        [group.group_id().as_slice()],
        |r| r.get(0),
    )?;
    let envelope = Envelope::new(random_hex(16), now_ms(), Body::GroupMeta { name });
    // Every member already knows the name, including one still to be removed.
    queue_unchecked(provider, group, signer, device, envelope)
}

/// The user owning a device in the group that this device knows to be revoked, or whose
/// certificate lapsed with no renewal in sight. Such a device can still read whatever is
/// sent to the group, so nothing is sent until it is removed: a relay that refuses the
/// removal gets silence, not the group's messages.
pub(super) fn unremoved_device(
    group: &MlsGroup,
    db: &Connection,
    own_device: &str,
) -> Result<Option<String>, EngineError> {
    let revoked = revocation_list(db)?;
    let lapsed = lapsed_devices(db)?;
    if revoked.is_empty() && lapsed.is_empty() {
        return Ok(None);
    }
    let now = now_unix();
    Ok(group
        .members()
        .filter_map(|m| certificate_in(&m.credential))
        .find(|c| {
            let id = &c.body.device_id;
            id != own_device
                && (revoked.covers(c) || (lapsed.contains(id) && muster_rules::lapsed(c, now)))
        })
        .map(|c| c.body.user))
}

/// A received message still owed a receipt.
struct Owed {
    id: String,
    sender: String,
    seq: i64,
}

/// The body of an alert, checked.
/// Whether `s` can be the start of an id: 6 or more hex characters.
pub(super) fn is_id_prefix(s: &str) -> bool {
    s.len() >= 6 && s.chars().all(|c| c.is_ascii_hexdigit())
}

pub(super) fn check_alert_text(text: &str) -> Result<(), EngineError> {
    if text.trim().is_empty() || text.len() > MAX_TEXT_BYTES {
        return Err(EngineError::Invalid(format!(
            "an alert must be 1 to {MAX_TEXT_BYTES} bytes"
        )));
    }
    Ok(())
}

pub(super) fn alert_body(
    text: &str,
    ack_required: bool,
    options: Vec<AnswerOption>,
) -> Result<Body, EngineError> {
    check_alert_text(text)?;
    Ok(Body::Alert {
        text: text.to_string(),
        ack_required,
        options,
        escalation: None,
        drill: false,
        raises: None,
    })
}
