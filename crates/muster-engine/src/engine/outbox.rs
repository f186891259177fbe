//! The outbox: sending what is queued in order, re-encrypting for the group's current
//! epoch, holding back groups that still hold a device to remove.

use super::*;

impl Engine {
    /// Sends everything in the outbox; what it met waits in [`Engine::take_activity`].
    pub async fn flush(&mut self, conn: &impl Link) -> Result<(), EngineError> {
        self.flush_outbox(conn).await
    }

    /// Removes the saved copies of deleted attachments that lie inside this device's own
    /// folder; a copy the user saved elsewhere is theirs to keep.
    pub(super) fn remove_doomed_files(&self) -> Result<(), EngineError> {
        let home = std::fs::canonicalize(&self.home).unwrap_or_else(|_| self.home.clone());
        for path in conversation::take_doomed_files(&self.db)? {
            let path = PathBuf::from(path);
            let inside = std::fs::canonicalize(&path).is_ok_and(|p| p.starts_with(&home));
            if inside {
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(error = %e, "could not remove a deleted attachment's copy");
                }
            }
        }
        Ok(())
    }

    /// Rewrites the database so deleted message content leaves no copy in the write-ahead log.
    pub(super) fn purge_deleted(&self) -> Result<(), EngineError> {
        self.db
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }

    /// Sends the outbox up to and including `queued`; succeeds once the relay has durably stored it.
    pub async fn deliver(
        &mut self,
        conn: &impl Link,
        queued: &QueuedMessage,
    ) -> Result<(), EngineError> {
        let earlier_problems = self.activity.problems.len();
        self.flush_outbox(conn).await?;
        let pending = self
            .db
            .query_row(
                "SELECT 1 FROM outbox WHERE message_id = ?1",
                [&queued.id],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        // Problems with other queued messages or groups are not this message's.
        let failed = self
            .db
            .query_row(
                "SELECT status = 'failed' FROM messages WHERE group_id = ?1 AND id = ?2",
                params![queued.group_id, queued.id],
                |r| r.get::<_, bool>(0),
            )
            .optional()?
            .unwrap_or(false);
        if pending || failed {
            return Err(EngineError::Invalid(format!(
                "message was not delivered: {}",
                self.activity.problems[earlier_problems..].join("; ")
            )));
        }
        Ok(())
    }

    /// Queues and delivers a text message.
    pub async fn send_text(
        &mut self,
        conn: &impl Link,
        group: &str,
        text: &str,
    ) -> Result<MessageView, EngineError> {
        let queued = self.queue_text(group, text)?;
        self.deliver(conn, &queued).await?;
        self.message_by_id(&queued.group_id, &queued.id)
    }

    /// Re-encrypts an outbox entry for the group's current epoch.
    pub(super) fn reencrypt(&mut self, client_id: &[u8]) -> Result<(), EngineError> {
        let device = self.device()?;
        let signer = self.signer(&device)?;
        let tx = self
            .db
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (group_id, envelope, audience): (Vec<u8>, Vec<u8>, Option<String>) = tx.query_row(
            "SELECT group_id, envelope, audience FROM outbox WHERE client_id = ?1",
            [client_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        let provider = Provider::new(&self.crypto, &tx);
        let mut group = load_group(&provider, &group_id)?;
        // A receipt goes to the group's archives as they are now (the group may have been
        // archived since it was queued).
        let audience = match audience {
            Some(queued) => {
                let parsed = Envelope::from_bytes(&envelope).map_err(EngineError::Invalid)?;
                let archivists = directed::group_archivists(&group, &device.org, &tx)?;
                let users = directed::receipt_audience(&parsed, &device.user, archivists);
                Some(if users.is_empty() {
                    directed::audience_users(&queued)
                } else {
                    users
                })
            }
            None => None,
        };
        if let Some(users) = &audience {
            group.set_aad(muster_proto::directed_aad(users));
        }
        let ciphertext = group
            .create_message(&provider, &signer, &envelope)
            .map_err(EngineError::mls)?;
        tx.execute(
            "UPDATE outbox SET ciphertext = ?2, audience = ?3 WHERE client_id = ?1",
            params![
                client_id,
                mls_bytes(&ciphertext)?,
                audience.as_deref().map(directed::audience_column)
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Sends everything queued in the outbox, oldest first.
    pub(super) async fn flush_outbox(&mut self, conn: &impl Link) -> Result<(), EngineError> {
        // Groups whose messages wait: they hold a device still to be removed, or this
        // device could not catch up with them. Other groups' messages go on.
        let mut held_back: HashSet<Vec<u8>> = HashSet::new();
        let mut groups: HashMap<Vec<u8>, OutboxGroup> = HashMap::new();
        // The message posted last that must go again, and how often it was tried.
        let mut retrying: Option<(Vec<u8>, u32)> = None;
        let own_device = self.device()?.device_id;
        loop {
            let next: Option<OutboxEntry> = {
                let mut stmt = self.db.prepare_cached(
                    "SELECT client_id, group_id, message_id, ciphertext, audience FROM outbox ORDER BY position",
                )?;
                let mut rows = stmt.query([])?;
                let mut found = None;
                while let Some(r) = rows.next()? {
                    let group_id: Vec<u8> = r.get(1)?;
                    if !held_back.contains(&group_id) {
                        found = Some(OutboxEntry {
                            client_id: r.get(0)?,
                            group_id,
                            message_id: r.get(2)?,
                            ciphertext: r.get(3)?,
                            audience: r.get(4)?,
                        });
                        break;
                    }
                }
                found
            };
            let Some(OutboxEntry {
                client_id,
                group_id,
                message_id,
                ciphertext,
                audience,
            }) = next
            else {
                return Ok(());
            };
            let group = match groups.get(&group_id) {
                Some(group) => group.clone(),
                None => {
                    let group = self.outbox_group(&group_id, &own_device)?;
                    groups.insert(group_id.clone(), group.clone());
                    group
                }
            };
            let mut ciphertext = ciphertext;
            match group {
                OutboxGroup::Gone => {
                    self.fail_outbox(
                        &client_id,
                        &group_id,
                        &message_id,
                        "you are no longer in the group",
                    )?;
                    continue;
                }
                OutboxGroup::HoldsUnremoved(user) => {
                    self.activity.problems.push(
                        EngineError::UnremovedDevice {
                            group: self.group_label(&group_id),
                            user,
                        }
                        .to_string(),
                    );
                    held_back.insert(group_id);
                    continue;
                }
                // Encrypted at an earlier epoch (queued before a removal, say): the bytes
                // never leave in that form, where a removed device could read them.
                OutboxGroup::Ready { epoch } if ciphertext_epoch(&ciphertext) != Some(epoch) => {
                    self.reencrypt(&client_id)?;
                    ciphertext = self.db.query_row(
                        "SELECT ciphertext FROM outbox WHERE client_id = ?1",
                        [&client_id],
                        |r| r.get(0),
                    )?;
                }
                OutboxGroup::Ready { .. } => {}
            }
            let mut attempt = match &retrying {
                Some((id, tried)) if *id == client_id => *tried,
                _ => 0,
            };
            loop {
                attempt += 1;
                let request = match &audience {
                    None => Request::Send {
                        group_id: group_id.clone(),
                        message: ciphertext.clone(),
                        client_id: client_id.clone(),
                    },
                    Some(users) => Request::SendTo {
                        group_id: group_id.clone(),
                        message: ciphertext.clone(),
                        client_id: client_id.clone(),
                        to: directed::audience_users(users),
                    },
                };
                match post(conn, &request, attempt).await? {
                    Next::Done { seq } => {
                        let tx = self
                            .db
                            .transaction_with_behavior(TransactionBehavior::Immediate)?;
                        tx.execute("DELETE FROM outbox WHERE client_id = ?1", [&client_id])?;
                        tx.execute(
                            "UPDATE board_log SET seq = ?3 WHERE group_id = ?1 AND message_id = ?2",
                            params![group_id, message_id, seq as i64],
                        )?;
                        conversation::forget_cleared_board_values(&tx, &group_id, &message_id)?;
                        crate::crisis::claim_sequenced(&tx, &group_id, &message_id, seq)?;
                        tx.execute(
                            "UPDATE messages SET status = 'sent', relay_seq = ?3, sort_key = ?4 WHERE group_id = ?1 AND id = ?2",
                            params![group_id, message_id, seq as i64, order_key(seq, 0)],
                        )?;
                        tx.commit()?;
                        self.activity.sent += 1;
                        break;
                    }
                    Next::FetchThenRetry { epoch } => {
                        self.fetch_and_process(conn).await?;
                        // Any group may have moved on (a removal, say): each is looked at
                        // afresh when its next message comes up, this one first.
                        groups.clear();
                        // A group this device cannot catch up with keeps its messages
                        // queued (the next sync tries again); the others still go.
                        if let Err(e) = self.catch_up(conn, &group_id, epoch).await {
                            self.activity.problems.push(format!(
                                "messages to {} stay queued: could not catch up with the group: {e}",
                                self.group_label(&group_id)
                            ));
                            self.db.execute(
                                "INSERT OR IGNORE INTO behind_groups (group_id) VALUES (?1)",
                                [&group_id],
                            )?;
                            held_back.insert(group_id.clone());
                        }
                        retrying = Some((client_id.clone(), attempt));
                        break;
                    }
                    // The message stays queued; the relay asked us to slow down.
                    Next::Wait(pause) => conn.pause(pause).await,
                    Next::Stop(e) if e.code == ErrorCode::QuotaExceeded => {
                        // Everything queued stays, in order, until recipients catch up.
                        let waiting: i64 =
                            self.db
                                .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))?;
                        self.activity.problems.push(format!(
                            "{waiting} message(s) stay in the outbox: {}",
                            e.message
                        ));
                        return Ok(());
                    }
                    Next::Stop(e) => {
                        self.fail_outbox(&client_id, &group_id, &message_id, &e.message)?;
                        break;
                    }
                }
            }
        }
    }

    /// Where messages queued for a group stand.
    pub(super) fn outbox_group(
        &self,
        group_id: &[u8],
        own_device: &str,
    ) -> Result<OutboxGroup, EngineError> {
        let active = self
            .resolve_group(&group_hex(group_id))
            .is_ok_and(|g| g.state == GroupState::Active);
        if !active {
            return Ok(OutboxGroup::Gone);
        }
        let provider = Provider::new(&self.crypto, &self.db);
        let group = load_group(&provider, group_id)?;
        Ok(match unremoved_device(&group, &self.db, own_device)? {
            Some(user) => OutboxGroup::HoldsUnremoved(user),
            None => OutboxGroup::Ready {
                epoch: group.epoch().as_u64(),
            },
        })
    }

    pub(super) fn group_label(&self, group_id: &[u8]) -> String {
        group_label(&self.db, group_id)
    }

    pub(super) fn fail_outbox(
        &mut self,
        client_id: &[u8],
        group_id: &[u8],
        message_id: &str,
        why: &str,
    ) -> Result<(), EngineError> {
        let tx = self
            .db
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("DELETE FROM outbox WHERE client_id = ?1", [client_id])?;
        tx.execute(
            "UPDATE messages SET status = 'failed' WHERE group_id = ?1 AND id = ?2",
            params![group_id, message_id],
        )?;
        tx.commit()?;
        self.activity
            .problems
            .push(format!("message not sent: {why}"));
        Ok(())
    }
}

/// A message waiting in the outbox.
pub(super) struct OutboxEntry {
    /// The id the relay deduplicates retries by.
    client_id: Vec<u8>,
    group_id: Vec<u8>,
    message_id: String,
    ciphertext: Vec<u8>,
    /// The users it is for, one per line; `None` for the whole group.
    audience: Option<String>,
}

/// Where messages queued for a group stand, as the outbox sees it.
#[derive(Debug, Clone)]
pub(super) enum OutboxGroup {
    /// This device is no longer in it.
    Gone,
    /// It holds a device of this user that is revoked or lapsed.
    HoldsUnremoved(String),
    /// Messages may go, encrypted at this epoch.
    Ready { epoch: u64 },
}

/// The epoch an encrypted group message was made at, if it decodes.
pub(super) fn ciphertext_epoch(bytes: &[u8]) -> Option<u64> {
    MlsMessageIn::tls_deserialize_exact(bytes)
        .ok()?
        .try_into_protocol_message()
        .ok()
        .map(|m| m.epoch().as_u64())
}

/// A group's name for the user, or its id where this device has no name for it.
pub(super) fn group_label(db: &Connection, group_id: &[u8]) -> String {
    db.query_row(
        "SELECT name FROM groups WHERE group_id = ?1",
        [group_id],
        |r| r.get(0),
    )
    .unwrap_or_else(|_| group_hex(group_id))
}
