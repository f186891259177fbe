//! Syncing: fetching and processing what the relay holds, revocations and lapsed devices,
//! and retention.

use super::*;

/// How long batches check every signature in place after one held a forgery.
const STRICT_AFTER_FORGERY: std::time::Duration = std::time::Duration::from_secs(600);

/// How often a live device runs the whole [`Engine::sync`] at least, however busy.
pub const FULL_SYNC_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

impl Engine {
    /// Deletes messages whose group's retention or disappearing time has passed.
    pub fn enforce_retention(&self) -> Result<usize, EngineError> {
        let deleted = conversation::enforce_retention(&self.db, now_ms())?;
        if deleted > 0 {
            self.purge_deleted()?;
        }
        Ok(deleted)
    }

    /// Fetches and processes everything waiting, sends the outbox, and commits
    /// proposals other members made (such as someone leaving).
    /// Returns what happened since the activity was last taken, this sync included.
    pub async fn sync(&mut self, conn: &impl Link) -> Result<SyncReport, EngineError> {
        self.sync_steps(conn).await?;
        self.last_full_sync = Some(std::time::Instant::now());
        self.run_duties(conn).await?;
        Ok(self.take_activity())
    }

    /// What a wake-up needs while messages come: fetches and processes what waits,
    /// queues delivery receipts and sends the outbox. The rest of [`Engine::sync`]
    /// (revocations, renewals, rejoining, own devices) is left to it.
    pub async fn receive(&mut self, conn: &impl Link) -> Result<SyncReport, EngineError> {
        self.fetch_and_process(conn).await?;
        self.queue_delivery_receipts()?;
        self.flush_outbox(conn).await?;
        self.run_duties(conn).await?;
        Ok(self.take_activity())
    }

    /// What a live device runs at each wake-up of the relay: [`Engine::receive`] while
    /// wake-ups bring deliveries, and the whole [`Engine::sync`] when the relay said
    /// something else `changed` (a revocation, a device to approve), when one brings none,
    /// or when the last whole one is [`FULL_SYNC_EVERY`] old.
    pub async fn sync_on_wake(
        &mut self,
        conn: &impl Link,
        changed: bool,
    ) -> Result<SyncReport, EngineError> {
        if self.full_sync_due(changed) {
            return self.sync(conn).await;
        }
        let mut report = self.receive(conn).await?;
        if report.fetched == 0 {
            report.merge(self.sync(conn).await?);
        }
        Ok(report)
    }

    /// What a live device runs with group messages the relay pushed
    /// ([`muster_proto::Push::Deliveries`]), in the order they came: [`Engine::receive`]
    /// with the pushed messages in place of a fetch, after the whole [`Engine::sync`] when
    /// the relay said something else `changed` or the last whole one is
    /// [`FULL_SYNC_EVERY`] old. `revocations` is where the relay's revocations stood: the
    /// device learns the ones it has not seen before judging the messages. The relay
    /// pushes what follows what it handed over before; when some of that was not
    /// processed (a fetch or an earlier push failed part-way), it is fetched again first.
    pub async fn sync_pushed(
        &mut self,
        conn: &impl Link,
        pushed: Vec<Delivery>,
        revocations: u64,
        changed: bool,
    ) -> Result<SyncReport, EngineError> {
        // From here until they are processed (or a fetch brought them), these messages are
        // handed over but not stored: whatever the relay pushes after them must wait, also
        // if this call fails before it gets to them.
        let behind = std::mem::replace(&mut self.unprocessed_handover, true);
        let mut fetched = false;
        if self.full_sync_due(changed) {
            self.sync_steps(conn).await?;
            self.last_full_sync = Some(std::time::Instant::now());
            fetched = true;
        }
        if revocations > self.revocations_seen()? {
            self.learn_revocations(conn).await?;
        }
        if behind && !fetched {
            // Something the relay handed over before these was not processed: they may
            // follow it, so it is fetched again first.
            self.fetch_and_process(conn).await?;
        }
        // A message for a group this device has not joined yet (its Welcome is held until
        // its tree can be fetched) is left for a fetch, which brings the Welcome first.
        let mut known = Vec::with_capacity(pushed.len());
        let mut unknown = false;
        for delivery in pushed {
            let joined = match &delivery {
                Delivery::Group { group_id, .. } => self
                    .db
                    .prepare_cached("SELECT 1 FROM groups WHERE group_id = ?1")?
                    .exists([group_id])?,
                Delivery::Welcome { .. } => false,
            };
            if joined {
                known.push(delivery);
            } else {
                unknown = true;
            }
        }
        self.unprocessed_handover = true;
        if !known.is_empty() {
            self.activity.fetched += known.len();
            let acks = self.process_batch(known, &HashMap::new())?;
            self.held_acks.hold(acks, std::time::Instant::now());
        }
        if unknown {
            self.fetch_and_process(conn).await?;
        }
        self.unprocessed_handover = false;
        if self.held_acks.due(std::time::Instant::now()) {
            self.send_held_acks(conn).await?;
        }
        self.queue_delivery_receipts()?;
        self.flush_outbox(conn).await?;
        self.run_duties(conn).await?;
        Ok(self.take_activity())
    }

    /// Whether a wake-up runs the whole [`Engine::sync`]: when the relay said something
    /// else `changed`, or the last whole one is [`FULL_SYNC_EVERY`] old.
    fn full_sync_due(&self, changed: bool) -> bool {
        changed
            || self
                .last_full_sync
                .is_none_or(|at| at.elapsed() >= FULL_SYNC_EVERY)
    }

    /// When the acknowledgements of pushed messages held back fall due, if any: a live
    /// device wakes then to send them ([`Engine::send_held_acks`], or any sync).
    pub fn held_acks_due_in(&self) -> Option<std::time::Duration> {
        self.held_acks.due_in(std::time::Instant::now())
    }

    /// Sends the acknowledgements of pushed messages held back (see [`crate::HeldAcks`]):
    /// when they fall due, with the next fetch, and before the device goes offline.
    pub async fn send_held_acks(&mut self, conn: &impl Link) -> Result<(), EngineError> {
        let items = self.held_acks.take();
        if !items.is_empty() {
            conn.request(&Request::Ack { items })
                .await
                .map_err(from_link)?;
        }
        Ok(())
    }

    /// Everything [`Engine::sync`] does, leaving what happened in the activity.
    pub(crate) async fn sync_steps(&mut self, conn: &impl Link) -> Result<(), EngineError> {
        // The newest signed policy first: an archive seals to the legal officers it names
        // from this sync on, and members see who can read the archive.
        let mut problems = Vec::new();
        self.newest_policy(conn, &mut problems).await?;
        self.activity.problems.append(&mut problems);
        self.fetch_and_process(conn).await?;
        // Rejoining judges what changed meanwhile by the revocations known now.
        self.learn_revocations(conn).await?;
        self.catch_up_groups(conn).await?;
        self.join_waiting_groups(conn).await?;
        self.seat_pending_members(conn).await?;
        self.enforce_retention()?;
        self.apply_revocations(conn).await?;
        self.renew_certificates(conn).await?;
        self.update_own_leaves(conn).await?;
        self.approve_confirmed_devices(conn).await?;
        self.collect_archive_checkpoints(conn).await?;
        self.add_own_devices(conn).await?;
        self.queue_delivery_receipts()?;
        self.flush_outbox(conn).await?;
        self.commit_pending_proposals(conn).await?;
        if self.is_archive()? {
            self.archive_publish(conn).await?;
        }
        Ok(())
    }

    /// Learns new revocations from the relay and removes revoked devices from every
    /// group this device is in. The relay's epoch ordering keeps it to one commit per group.
    pub(super) async fn apply_revocations(&mut self, conn: &impl Link) -> Result<(), EngineError> {
        self.learn_revocations(conn).await?;
        if let Some(gap) = self.withheld_revocations()? {
            self.activity.problems.push(gap);
        }
        self.remove_revoked_devices(conn).await
    }

    /// The organisation's revocations are numbered 1, 2, ...: a number this device never
    /// received although a later one arrived was withheld by the relay.
    pub(super) fn withheld_revocations(&self) -> Result<Option<String>, EngineError> {
        let seen: Vec<i64> = self
            .db
            .prepare_cached("SELECT serial FROM revocation_serials ORDER BY serial")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let Some(&last) = seen.last() else {
            return Ok(None);
        };
        let missing: Vec<String> = (1..last)
            .filter(|n| seen.binary_search(n).is_err())
            .take(10)
            .map(|n| n.to_string())
            .collect();
        Ok((!missing.is_empty()).then(|| {
            format!(
                "the relay withholds revocation number {} of the organisation's {last}: devices it cuts off may still be trusted here",
                missing.join(", ")
            )
        }))
    }

    /// The highest revocation number this device has seen.
    pub(crate) fn last_revocation_serial(&self) -> Result<u64, EngineError> {
        let last: Option<i64> =
            self.db
                .query_row("SELECT MAX(serial) FROM revocation_serials", [], |r| {
                    r.get(0)
                })?;
        Ok(last.unwrap_or(0) as u64)
    }

    /// Fetches and stores revocations this device has not seen yet.
    /// The position of the last revocation this device learned.
    fn revocations_seen(&self) -> Result<u64, EngineError> {
        let since: i64 = self
            .db
            .prepare_cached("SELECT value FROM sync_state WHERE key = 'revocations'")?
            .query_row([], |r| r.get(0))
            .optional()?
            .unwrap_or(0);
        Ok(since.max(0) as u64)
    }

    pub(crate) async fn learn_revocations(&mut self, conn: &impl Link) -> Result<(), EngineError> {
        let me = self.device()?;
        let org = me.org.clone();
        loop {
            let since = self.revocations_seen()?;
            let list = ask!(conn, Request::Revocations {
                    since,
                }, Response::Revocations(list) => list);
            if list.is_empty() {
                break;
            }
            // Who is an admin, for revocations another admin signed: the certificates
            // in this device's groups and the directory, as far as it knows them.
            let mut admins = HashSet::new();
            if list.iter().any(|(_, r)| r.issuer.is_some()) {
                self.certificates(conn).await?;
                admins.extend(
                    self.certificates_in_groups()?
                        .into_iter()
                        .filter(|c| c.is_admin() && c.verify_issuer(&org).is_ok())
                        .map(|c| c.body.device_id),
                );
            }
            let tx = self
                .db
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            // Read once, and kept up to date as this batch's revocations are stored.
            let mut known = revocation_list(&tx)?;
            for (position, revocation) in &list {
                match revocation.verify(&org) {
                    // Signed by an admin device already revoked: worthless.
                    Ok(()) if known.issuer_revoked(revocation.issuer.as_ref()) =>
                    {
                        self.activity.problems.push(format!(
                            "ignored a revocation signed by a revoked admin device of {}",
                            revocation
                                .issuer
                                .as_ref()
                                .map_or("?", |i| i.body.user.as_str())
                        ))
                    }
                    // Only the root revokes an admin's device.
                    Ok(())
                        if revocation.issuer.is_some()
                            && names_an_admin(&tx, &me, &admins, revocation)? =>
                    {
                        self.activity.problems.push(format!(
                            "ignored a revocation of admin {} signed by another admin's device, not the organisation root",
                            revocation.body.user
                        ))
                    }
                    Ok(()) => {
                        store_revocation(&tx, revocation)?;
                        known.add(revocation);
                    }
                    Err(e) => self
                        .activity
                        .problems
                        .push(format!("ignored a revocation that does not verify: {e}")),
                }
                tx.execute(
                    "INSERT INTO sync_state (key, value) VALUES ('revocations', ?1)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    [*position as i64],
                )?;
            }
            tx.commit()?;
        }
        Ok(())
    }

    /// Why this device, refused by the relay as revoked, is: the signed revocation naming
    /// it, checked like any other, and whether the organisation's policy (the newest this
    /// device knows) has it wipe its store. The relay's refusal alone proves nothing, so
    /// without such a revocation nothing is to be deleted.
    pub(super) async fn own_revocation(&mut self, conn: &impl Link, me: &DeviceRow) -> EngineError {
        let unproven = || {
            EngineError::Invalid(
                "the relay refuses this device as revoked but shows no revocation signed by the organisation; nothing was deleted".into(),
            )
        };
        let Ok(Response::MyRevocation { revocation, policy }) =
            conn.request(&Request::MyRevocation).await
        else {
            return unproven();
        };
        let known = match revocation_list(&self.db) {
            Ok(list) => list,
            Err(e) => return e,
        };
        // What an admin device signed counts here only while its admin certificate is
        // valid now: a revoked admin could otherwise backdate a revocation and a policy
        // that a relay hiding its own revocation serves to make devices wipe themselves.
        let now = now_unix();
        let issuer_good = |issuer: Option<&muster_proto::IssuerCertificate>| {
            issuer.is_none_or(|i| {
                !known.issuer_revoked(Some(i)) && i.certificate().check_validity(now).is_ok()
            })
        };
        let Some(revocation) = revocation.filter(|r| {
            r.verify(&me.org).is_ok()
                && r.body.device_ids.contains(&me.device_id)
                && issuer_good(r.issuer.as_ref())
                && !(r.issuer.is_some() && me.certificate.as_ref().is_some_and(|c| c.is_admin()))
        }) else {
            return unproven();
        };
        let served = policy
            .map(|p| *p)
            .filter(|p| p.verify(&me.org).is_ok() && issuer_good(p.issuer.as_ref()));
        let stored = match self.stored_policy() {
            Ok(p) => p,
            Err(e) => return e,
        };
        let newest = [served, stored]
            .into_iter()
            .flatten()
            .max_by_key(|p| p.body.version);
        // The compliance archive keeps what it holds: no single admin erases it.
        let archive = me.certificate.as_ref().is_some_and(|c| c.is_archive());
        EngineError::DeviceRevoked {
            by: revocation
                .issuer
                .as_ref()
                .map_or("the organisation root".to_string(), |i| i.body.user.clone()),
            wipe: newest.is_some_and(|p| p.body.wipe_on_revoke) && !archive,
        }
    }

    /// Removes every revoked device from each group this device is in.
    pub(super) async fn remove_revoked_devices(
        &mut self,
        conn: &impl Link,
    ) -> Result<(), EngineError> {
        let revoked = revocation_list(&self.db)?;
        self.lapse_check(conn).await?;
        let lapsed = lapsed_devices(&self.db)?;
        if revoked.is_empty() && lapsed.is_empty() {
            return Ok(());
        }
        let groups = self.active_group_ids()?;
        let now = now_unix();
        let is_revoked = |c: &Certificate| {
            revoked.covers(c)
                || (lapsed.contains(&c.body.device_id) && muster_rules::lapsed(c, now))
        };
        for group_id in groups {
            let affected = {
                let provider = Provider::new(&self.crypto, &self.db);
                !leaves_where(&load_group(&provider, &group_id)?, is_revoked).is_empty()
            };
            if !affected {
                continue;
            }
            let result = self.remove_members_where(conn, &group_id, is_revoked).await;
            if let Err(e) = result {
                self.activity
                    .problems
                    .push(format!("{REMOVAL_INCOMPLETE}: {e}"));
                // A lapsed device may have been renewed meanwhile: look again next time.
                lapse_check_due(&self.db)?;
            }
        }
        Ok(())
    }

    /// Records the devices in this device's groups whose certificate ran out and that
    /// hold no valid certificate any more (admin devices renew every device they have not
    /// revoked, so these were revoked, or given up): they are removed like revoked ones,
    /// even where the relay hides their revocation. The groups are looked at when the
    /// earliest certificate among their members has run out, and at least every ten
    /// minutes.
    pub(super) async fn lapse_check(&mut self, conn: &impl Link) -> Result<(), EngineError> {
        let now = now_unix();
        let next: i64 = self
            .db
            .query_row(
                "SELECT value FROM sync_state WHERE key = 'next_lapse_check'",
                [],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0);
        if (now as i64) < next {
            return Ok(());
        }
        let mut lapsed = HashSet::new();
        let mut earliest = now + LAPSE_CHECK_SECS;
        for group_id in self.active_group_ids()? {
            let provider = Provider::new(&self.crypto, &self.db);
            for member in load_group(&provider, &group_id)?.members() {
                if let Some(cert) = certificate_in(&member.credential) {
                    if muster_rules::lapsed(&cert, now) {
                        lapsed.insert(cert.body.device_id);
                    } else {
                        earliest = earliest
                            .min(cert.body.not_after + muster_rules::lapse_grace(&cert) + 1);
                    }
                }
            }
        }
        if !lapsed.is_empty() {
            // A device whose renewed certificate is waiting for it is not lapsed.
            let renewed: HashSet<String> = self
                .certificates(conn)
                .await?
                .into_iter()
                .filter(|c| c.check_validity(now).is_ok())
                .map(|c| c.body.device_id)
                .collect();
            let me = self.device()?.device_id;
            lapsed.retain(|d| !renewed.contains(d) && *d != me);
        }
        let tx = self.db.transaction()?;
        tx.execute("DELETE FROM lapsed_devices", [])?;
        for device_id in &lapsed {
            tx.execute(
                "INSERT INTO lapsed_devices (device_id) VALUES (?1)",
                [device_id],
            )?;
        }
        tx.commit()?;
        self.db.execute(
            "INSERT INTO sync_state (key, value) VALUES ('next_lapse_check', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [earliest as i64],
        )?;
        Ok(())
    }

    /// Fetches and processes until nothing waits. Until it succeeds, the relay has handed
    /// over messages this device has not processed ([`Engine::sync_pushed`] waits on it).
    pub(super) async fn fetch_and_process(&mut self, conn: &impl Link) -> Result<(), EngineError> {
        self.unprocessed_handover = true;
        self.fetch_batches(conn).await?;
        self.unprocessed_handover = false;
        Ok(())
    }

    async fn fetch_batches(&mut self, conn: &impl Link) -> Result<(), EngineError> {
        loop {
            // Senders revoked since the last look (directly, or through the admin device
            // that certified them) must be known before their messages are judged. The
            // relay is asked for new revocations together with the batch, so the answer
            // costs no extra round trip; only when there are some does the device stop to
            // learn them.
            let since = self.revocations_seen()?;
            let fetch = Request::Fetch { limit: FETCH_BATCH };
            let revocations = Request::Revocations { since };
            let (fetched, news) = both(conn.request(&fetch), conn.request(&revocations)).await;
            let deliveries = match fetched.map_err(from_link)? {
                Response::Deliveries(d) => d,
                _ => return Err(crate::error::unexpected_answer(&fetch)),
            };
            let any_news = match news.map_err(from_link)? {
                Response::Revocations(list) => !list.is_empty(),
                _ => return Err(crate::error::unexpected_answer(&revocations)),
            };
            if deliveries.is_empty() {
                return self.send_held_acks(conn).await;
            }
            let full_batch = deliveries.len() >= FETCH_BATCH as usize;
            self.activity.fetched += deliveries.len();
            if any_news {
                self.learn_revocations(conn).await?;
            }
            let trees = self.welcome_trees(conn, &deliveries).await?;
            let deliveries: Vec<Delivery> =
                deliveries.into_iter().filter(|d| !trees.holds(d)).collect();
            let mut acks = self.process_batch(deliveries, &trees.trees)?;
            acks.extend(self.held_acks.take());
            conn.request(&Request::Ack { items: acks })
                .await
                .map_err(from_link)?;
            // A shorter batch was everything waiting; whatever arrives later wakes us again.
            // Welcomes left for the next batch come at once; one whose tree could not be
            // had waits for the next sync.
            if trees.failed || (!full_batch && trees.waiting.is_empty()) {
                return Ok(());
            }
        }
    }

    /// Processes one fetched batch in a single store transaction (one disk flush), reading
    /// each group's MLS state once and writing its message secrets once. Returns the
    /// acknowledgements to send once it is stored.
    ///
    /// A long batch checks its senders' signatures on a second thread while it goes on
    /// (see [`crate::signatures`]). Should one of them not hold, nothing of that pass is
    /// stored and the batch is processed again checking each signature in place, so the
    /// forged message is refused as any other would be.
    pub(super) fn process_batch(
        &mut self,
        deliveries: Vec<Delivery>,
        trees: &HashMap<u64, Vec<u8>>,
    ) -> Result<Vec<AckItem>, EngineError> {
        let now = std::time::Instant::now();
        let strict = self
            .strict_signatures_until
            .is_some_and(|until| now < until);
        if deliveries.len() >= DEFER_FROM && !strict {
            if let Ok(signatures) = DeferredSignatures::start() {
                let batch = Batch {
                    secrets: BatchedSecrets::default(),
                    signatures: Some(signatures),
                };
                // Whatever went wrong in that pass (also an error a forged message might
                // have caused), the batch is processed again checking in place.
                if let Ok(Some(acks)) = self.process_batch_with(deliveries.clone(), trees, batch) {
                    return Ok(acks);
                }
                tracing::warn!(
                    "a fetched batch did not go through with its signatures checked on the side: processing it again"
                );
                // A forged message makes a batch cost two passes: not again and again.
                self.strict_signatures_until = Some(now + STRICT_AFTER_FORGERY);
            }
        }
        let batch = Batch {
            secrets: BatchedSecrets::default(),
            signatures: None,
        };
        Ok(self
            .process_batch_with(deliveries, trees, batch)?
            .unwrap_or_default())
    }

    /// [`Engine::process_batch`] in one pass: `None` (and nothing stored) when a
    /// signature the batch deferred did not hold.
    fn process_batch_with(
        &mut self,
        deliveries: Vec<Delivery>,
        trees: &HashMap<u64, Vec<u8>>,
        batch: Batch,
    ) -> Result<Option<Vec<AckItem>>, EngineError> {
        let device = self.device()?;
        let signer = self.signer(&device)?;
        let mut acks = Vec::with_capacity(deliveries.len());
        let mut loaded = LoadedGroups::new();
        let revoked = revocation_list(&self.db)?;
        let mut purge = false;
        // What the batch did counts only once it is stored: a batch rolled back is
        // delivered again.
        let mut report = SyncReport::default();
        let mut tx = self
            .db
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let indexed_up_to = crate::store::defer_indexing(&tx)?;
        for delivery in deliveries {
            match delivery {
                Delivery::Welcome {
                    id,
                    group_id,
                    welcome,
                } => {
                    loaded.remove(&group_id);
                    // The Welcome's group state is written as it is opened.
                    batch.secrets.flush(&tx)?;
                    process_welcome(
                        &self.crypto,
                        &mut tx,
                        &device,
                        &group_id,
                        &welcome,
                        trees.get(&id).map(Vec::as_slice),
                        &mut report,
                    )?;
                    acks.push(AckItem::Welcome { id });
                }
                Delivery::Group {
                    group_id,
                    seq,
                    message,
                } => {
                    let context = BatchContext {
                        crypto: &self.crypto,
                        tx: &tx,
                        device: &device,
                        signer: &signer,
                        revoked: &revoked,
                        batch: &batch,
                    };
                    purge |= process_group_message(
                        &context,
                        &mut loaded,
                        &mut self.verified_certificates,
                        &group_id,
                        seq,
                        &message,
                        &mut report,
                    )?;
                    acks.push(AckItem::Group { group_id, seq });
                }
            }
        }
        if device.certificate.as_ref().is_some_and(|c| c.is_archive()) {
            archive::checkpoint(&tx, now_ms(), |payload| {
                signer
                    .sign(payload)
                    .map_err(|e| EngineError::Mls(format!("{e:?}")))
            })?;
        }
        crate::store::index_deferred(&tx, indexed_up_to)?;
        batch.secrets.flush(&tx)?;
        if let Some(signatures) = batch.signatures {
            if !signatures.all_valid() {
                return Ok(None);
            }
        }
        tx.commit()?;
        self.activity.merge(report);
        for (group_id, group) in &loaded {
            self.member_counts
                .insert(group_id.clone(), group.members().count());
        }
        if purge {
            self.remove_doomed_files()?;
            self.purge_deleted()?;
        }
        Ok(Some(acks))
    }
}

/// A group's members changed: look for lapsed certificates at the next sync.
pub(super) fn lapse_check_due(db: &Connection) -> Result<(), EngineError> {
    db.prepare_cached("DELETE FROM sync_state WHERE key = 'next_lapse_check'")?
        .execute([])?;
    Ok(())
}

/// The newest certificate this device verified for a device, if any.
pub(crate) fn known_certificate(
    db: &Connection,
    device_id: &str,
) -> Result<Option<Certificate>, EngineError> {
    let bytes: Option<Vec<u8>> = db
        .prepare_cached("SELECT certificate FROM known_certificates WHERE device_id = ?1")?
        .query_row([device_id], |r| r.get(0))
        .optional()?;
    Ok(bytes.and_then(|b| Certificate::from_bytes(&b).ok()))
}

/// Whether `revocation` names a device this device knows as an admin's.
fn names_an_admin(
    db: &Connection,
    me: &DeviceRow,
    admins_in_groups: &HashSet<String>,
    revocation: &Revocation,
) -> Result<bool, EngineError> {
    for device in &revocation.body.device_ids {
        if admins_in_groups.contains(device) {
            return Ok(true);
        }
        let cert = if *device == me.device_id {
            me.certificate.clone()
        } else {
            known_certificate(db, device)?
        };
        if cert.is_some_and(|c| c.is_admin()) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// How a problem removing revoked devices from a group begins.
pub(crate) const REMOVAL_INCOMPLETE: &str = "could not remove revoked devices from a group";

/// The organisation's revocations as this device knows them.
pub(crate) fn revocation_list(db: &Connection) -> Result<RevocationList, EngineError> {
    let mut list = RevocationList::default();
    let mut devices = db.prepare_cached("SELECT device_id FROM revoked_devices")?;
    for id in devices.query_map([], |r| r.get(0))? {
        list.add_device(id?);
    }
    let mut vouched = db.prepare_cached("SELECT issuer, digest FROM vouched_certificates")?;
    for row in vouched.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))? {
        let (issuer, digest) = row?;
        list.add_vouched(issuer, digest);
    }
    Ok(list)
}

/// Stores a verified revocation inside `tx`.
pub(crate) fn store_revocation(
    tx: &Connection,
    revocation: &Revocation,
) -> Result<(), EngineError> {
    for device in &revocation.body.device_ids {
        tx.execute(
            "INSERT OR IGNORE INTO revoked_devices (device_id, user) VALUES (?1, ?2)",
            params![device, revocation.body.user],
        )?;
        for digest in &revocation.body.vouched {
            tx.execute(
                "INSERT OR IGNORE INTO vouched_certificates (issuer, digest) VALUES (?1, ?2)",
                params![device, digest],
            )?;
        }
    }
    if revocation.body.serial > 0 {
        tx.execute(
            "INSERT OR IGNORE INTO revocation_serials (serial) VALUES (?1)",
            [revocation.body.serial as i64],
        )?;
    }
    Ok(())
}

/// Devices found lapsed at the last lapse check: removed from groups while the
/// certificate in their leaf stays run out.
pub(super) fn lapsed_devices(db: &Connection) -> Result<HashSet<String>, EngineError> {
    let ids = db
        .prepare_cached("SELECT device_id FROM lapsed_devices")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<HashSet<String>, _>>()?;
    Ok(ids)
}

/// Whether `cert` may no longer be used, by what this device knows of revocations
/// ([`RevocationList::covers`]).
pub(crate) fn certificate_revoked(
    db: &Connection,
    cert: &Certificate,
) -> Result<bool, EngineError> {
    Ok(revocation_list(db)?.covers(cert))
}

/// Runs two requests at once and waits for both (no runtime needed: the link's futures
/// are polled in turn).
async fn both<A: std::future::Future, B: std::future::Future>(
    a: A,
    b: B,
) -> (A::Output, B::Output) {
    let (mut a, mut b) = (std::pin::pin!(a), std::pin::pin!(b));
    let (mut first, mut second) = (None, None);
    std::future::poll_fn(|cx| {
        if first.is_none() {
            if let std::task::Poll::Ready(out) = a.as_mut().poll(cx) {
                first = Some(out);
            }
        }
        if second.is_none() {
            if let std::task::Poll::Ready(out) = b.as_mut().poll(cx) {
                second = Some(out);
            }
        }
        match (first.take(), second.take()) {
            (Some(x), Some(y)) => std::task::Poll::Ready((x, y)),
            (x, y) => {
                (first, second) = (x, y);
                std::task::Poll::Pending
            }
        }
    })
    .await
}
