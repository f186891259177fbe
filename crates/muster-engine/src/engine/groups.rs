//! Groups: names, creation, members added and removed, policy, renaming and leaving.

use super::*;

impl Engine {
    /// Finds a group by its whole hex id, by name, or by a prefix of its id.
    pub(super) fn resolve_group(&self, name_or_id: &str) -> Result<KnownGroup, EngineError> {
        let mut stmt = self
            .db
            .prepare("SELECT group_id, name, state FROM groups ORDER BY created_at")?;
        let all = stmt
            .query_map([], |r| {
                Ok(KnownGroup {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    state: r.get(2)?,
                })
            })?
            .collect::<Result<Vec<KnownGroup>, _>>()?;
        // A whole id names its group whatever others are called: a member may rename a
        // group to another group's id.
        if let Some(g) = all.iter().find(|g| group_hex(&g.id) == name_or_id) {
            return Ok(g.clone());
        }
        let by_name: Vec<_> = all.iter().filter(|g| g.name == name_or_id).collect();
        let active: Vec<_> = by_name
            .iter()
            .filter(|g| g.state == GroupState::Active)
            .collect();
        let chosen = match (active.len(), by_name.len()) {
            (1, _) => Some((*active[0]).clone()),
            (0, 1) => Some(by_name[0].clone()),
            (0, 0) => None,
            _ => return Err(EngineError::AmbiguousGroup(name_or_id.to_string())),
        };
        if let Some(g) = chosen {
            return Ok(g);
        }
        if name_or_id.len() >= 6 {
            let by_id: Vec<_> = all
                .iter()
                .filter(|g| group_hex(&g.id).starts_with(&name_or_id.to_ascii_lowercase()))
                .collect();
            match by_id.len() {
                1 => return Ok(by_id[0].clone()),
                n if n > 1 => return Err(EngineError::AmbiguousGroup(name_or_id.to_string())),
                _ => {}
            }
        }
        Err(EngineError::UnknownGroup(name_or_id.to_string()))
    }

    pub(super) fn active_group(&self, name_or_id: &str) -> Result<(Vec<u8>, String), EngineError> {
        let KnownGroup { id, name, state } = self.resolve_group(name_or_id)?;
        if state != GroupState::Active {
            return Err(EngineError::NotActive(name));
        }
        Ok((id, name))
    }

    /// Refuses a membership change or rename of a managed group unless this device is an admin's.
    pub(super) fn check_may_manage(&self, group_id: &[u8], what: &str) -> Result<(), EngineError> {
        let provider = Provider::new(&self.crypto, &self.db);
        self.check_may_manage_group(&load_group(&provider, group_id)?, what)
    }

    /// [`Self::check_may_manage`] for a group already loaded.
    fn check_may_manage_group(&self, group: &MlsGroup, what: &str) -> Result<(), EngineError> {
        let device = self.device()?;
        if device.certificate.as_ref().is_some_and(|c| c.is_bot()) {
            return Err(EngineError::Invalid(format!(
                "this device is a bot, and a bot may not {what}: it only posts to the groups it is in"
            )));
        }
        if !policy_of(group).managed {
            return Ok(());
        }
        if device.certificate.as_ref().is_some_and(|c| c.is_admin()) {
            Ok(())
        } else {
            Err(EngineError::Managed(what.to_string()))
        }
    }

    /// Claims and checks KeyPackages for every enrolled device of each user.
    pub(super) async fn claim_key_packages(
        &self,
        conn: &impl Link,
        users: &[String],
    ) -> Result<Vec<(String, KeyPackage)>, EngineError> {
        let mut out = Vec::new();
        for user in users {
            out.extend(self.claim_for(conn, user, &[]).await?);
        }
        Ok(out)
    }

    /// Claims and checks KeyPackages for `user`'s devices (only those in `only`, if any).
    pub(super) async fn claim_for(
        &self,
        conn: &impl Link,
        user: &str,
        only: &[String],
    ) -> Result<Vec<(String, KeyPackage)>, EngineError> {
        let device = self.device()?;
        validate_handle(user)?;
        let claimed = ask!(conn, Request::ClaimKeyPackages {
                user: user.to_string(),
                only: only.to_vec(),
            }, Response::KeyPackages(k) => k);
        let mut out = Vec::new();
        for c in claimed {
            let kp = KeyPackageIn::tls_deserialize_exact(&c.key_package)
                .map_err(EngineError::mls)?
                .validate(&self.crypto, ProtocolVersion::Mls10)
                .map_err(|e| EngineError::Invalid(format!("KeyPackage of {user}: {e}")))?;
            let cert = verify_member(
                &device.org,
                kp.leaf_node().credential(),
                kp.leaf_node().signature_key().as_slice(),
            )
            .map_err(|e| {
                EngineError::Invalid(format!("refusing KeyPackage offered for {user}: {e}"))
            })?;
            if cert.body.user != user || cert.body.device_id != c.device_id {
                return Err(EngineError::Invalid(format!(
                    "relay offered a KeyPackage of {} for {user}: refused",
                    cert.body.user
                )));
            }
            if !only.is_empty() && !only.contains(&cert.body.device_id) {
                return Err(EngineError::Invalid(format!(
                    "relay offered a KeyPackage for an unrequested device of {user}: refused"
                )));
            }
            if certificate_revoked(&self.db, &cert)? {
                return Err(EngineError::Invalid(format!(
                    "relay offered a KeyPackage of revoked device {} of {user}: refused",
                    cert.body.device_id
                )));
            }
            out.push((cert.body.device_id, kp));
        }
        Ok(out)
    }

    /// Creates a group named `name` and adds every enrolled device of `members`.
    pub async fn create_group(
        &mut self,
        conn: &impl Link,
        name: &str,
        members: &[String],
        managed: bool,
    ) -> Result<GroupView, EngineError> {
        self.create_group_waiting_for(conn, name, members, managed, &[])
            .await
    }

    /// [`Self::create_group`], also listing `not_enrolled` (people not enrolled yet) as
    /// waiting to join.
    pub async fn create_group_waiting_for(
        &mut self,
        conn: &impl Link,
        name: &str,
        members: &[String],
        managed: bool,
        not_enrolled: &[String],
    ) -> Result<GroupView, EngineError> {
        let policy = GroupPolicy {
            managed,
            archived: false,
        };
        let me = self.device()?;
        if me.certificate.as_ref().is_some_and(|c| c.is_bot()) {
            return Err(EngineError::Invalid(
                "a bot cannot create groups: a person creates the group and adds the bot".into(),
            ));
        }
        if managed {
            Self::require_admin(&me)?;
        }
        let name = name.trim();
        if name.is_empty() || name.len() > 64 {
            return Err(EngineError::Invalid(
                "group name must be 1-64 characters".into(),
            ));
        }
        if self
            .resolve_group(name)
            .is_ok_and(|g| g.state == GroupState::Active && g.name == name)
        {
            return Err(EngineError::GroupNameTaken(name.to_string()));
        }
        let device = self.device()?;
        let signer = self.signer(&device)?;
        let credential = Self::credential(&device)?;
        let others: Vec<String> = members
            .iter()
            .map(|m| m.trim().to_string())
            .filter(|m| !m.is_empty() && *m != device.user)
            .collect();
        // Check every member exists before creating anything; someone whose device has
        // not been online yet is added once it has.
        let (mut key_packages, mut waiting) = self.claim_or_wait(conn, &others).await?;
        for user in not_enrolled {
            validate_handle(user)?;
            waiting.push(user.clone());
        }
        let mine = self.my_other_devices(conn).await?;
        if !mine.is_empty() {
            key_packages.extend(self.claim_for(conn, &device.user, &mine).await?);
        }
        let (group_id, group_info, tree) = {
            let provider = Provider::new(&self.crypto, &self.db);
            let group = MlsGroup::new(
                &provider,
                &signer,
                &create_config(policy, &waiting)?,
                credential,
            )
            .map_err(EngineError::mls)?;
            let info = group
                .export_group_info(provider.crypto(), &signer, true)
                .map_err(EngineError::mls)?;
            (
                group.group_id().as_slice().to_vec(),
                mls_bytes(&info)?,
                group
                    .export_ratchet_tree()
                    .tls_serialize_detached()
                    .map_err(EngineError::mls)?,
            )
        };
        conn.request(&Request::CreateGroup {
            group_info,
            ratchet_tree: tree,
        })
        .await
        .map_err(from_link)?;
        self.db.execute(
            "INSERT INTO groups (group_id, name, state, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![group_id, name, GroupState::Active, now_ms()],
        )?;
        for user in &waiting {
            self.wait_for(&group_id, user)?;
        }
        if !key_packages.is_empty() {
            self.add_key_packages(conn, &group_id, key_packages).await?;
        }
        self.group_view(&group_id)
    }

    /// Claims KeyPackages for each user; users known to the relay whose devices have none
    /// yet (never online since their approval) are returned to wait instead.
    async fn claim_or_wait(
        &self,
        conn: &impl Link,
        users: &[String],
    ) -> Result<(Vec<(String, KeyPackage)>, Vec<String>), EngineError> {
        let mut claimed = Vec::new();
        let mut waiting = Vec::new();
        let mut refreshed = false;
        for user in users {
            match self.claim_for(conn, user, &[]).await {
                Ok(kps) => claimed.extend(kps),
                Err(e) if e.relay_code() == Some(&ErrorCode::NoKeyPackages) => {
                    // Only someone this device knows to be enrolled waits; the relay's
                    // word alone does not make a handle a person.
                    if !refreshed {
                        self.certificates(conn).await?;
                        refreshed = true;
                    }
                    if !self.holds_valid_certificate_of(user)? {
                        return Err(e);
                    }
                    waiting.push(user.clone())
                }
                Err(e) => return Err(e),
            }
        }
        Ok((claimed, waiting))
    }

    /// Whether this device verified an unrevoked, unexpired certificate of `user`.
    fn holds_valid_certificate_of(&self, user: &str) -> Result<bool, EngineError> {
        let now = now_unix();
        Ok(self
            .known_devices_of(user)?
            .iter()
            .any(|c| c.body.not_before <= now && now < c.body.not_after))
    }

    /// Whether any device of `user` is in the group.
    fn has_member(&self, group_id: &[u8], user: &str) -> Result<bool, EngineError> {
        Ok(self.member_users(group_id)?.contains(user))
    }

    /// The users with a device in the group.
    fn member_users(&self, group_id: &[u8]) -> Result<HashSet<String>, EngineError> {
        let provider = Provider::new(&self.crypto, &self.db);
        Ok(load_group(&provider, group_id)?
            .members()
            .filter_map(|m| certificate_in(&m.credential))
            .map(|c| c.body.user)
            .collect())
    }

    /// Records that `user` joins the group once their device is online.
    pub(super) fn wait_for(&self, group_id: &[u8], user: &str) -> Result<(), EngineError> {
        let new = self.db.execute(
            "INSERT OR IGNORE INTO pending_members (group_id, user, since) VALUES (?1, ?2, ?3)",
            params![group_id, user, now_ms()],
        )?;
        if new > 0 {
            insert_system(
                &self.db,
                group_id,
                &format!(
                    "{user} has not been online yet: they are added as soon as their device is"
                ),
                None,
            )?;
        }
        Ok(())
    }

    /// Adds the people waiting to join groups this device may add them to, once their
    /// devices have published KeyPackages.
    pub(super) async fn seat_pending_members(
        &mut self,
        conn: &impl Link,
    ) -> Result<(), EngineError> {
        let pending: Vec<(Vec<u8>, String)> = self
            .db
            .prepare("SELECT group_id, user FROM pending_members ORDER BY since")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        for (group_id, user) in pending {
            let forget = |db: &Connection| {
                db.execute(
                    "DELETE FROM pending_members WHERE group_id = ?1 AND user = ?2",
                    params![group_id, user],
                )
            };
            let active = self
                .resolve_group(&group_hex(&group_id))
                .is_ok_and(|g| g.state == GroupState::Active);
            // Someone struck them off the group's list (their decision stands), or this
            // device may no longer add them.
            let still_listed = active && {
                let provider = Provider::new(&self.crypto, &self.db);
                waiting_in(&load_group(&provider, &group_id)?).contains(&user)
            };
            if !still_listed
                || self
                    .check_may_manage(&group_id, "add people to it")
                    .is_err()
            {
                forget(&self.db)?;
                continue;
            }
            if self.has_member(&group_id, &user)? {
                forget(&self.db)?;
                self.set_waiting(conn, &group_id, &[], std::slice::from_ref(&user))
                    .await?;
                continue;
            }
            if !self.holds_valid_certificate_of(&user)? {
                forget(&self.db)?;
                insert_system(
                    &self.db,
                    &group_id,
                    &format!("no longer waiting to add {user}: they are not enrolled (revoked, or their certificate ran out)"),
                    None,
                )?;
                continue;
            }
            match self.claim_for(conn, &user, &[]).await {
                Ok(kps) => match self.add_key_packages(conn, &group_id, kps).await {
                    Ok(()) => {
                        forget(&self.db)?;
                        self.set_waiting(conn, &group_id, &[], std::slice::from_ref(&user))
                            .await?;
                    }
                    Err(e) => self.activity.problems.push(format!(
                        "could not add {user} to {}: {e}",
                        self.group_label(&group_id)
                    )),
                },
                Err(e) if e.relay_code() == Some(&ErrorCode::NoKeyPackages) => {}
                Err(e) => self.activity.problems.push(format!(
                    "could not add {user} to {}: {e}",
                    self.group_label(&group_id)
                )),
            }
        }
        Ok(())
    }

    /// Adds every enrolled device of `user` to the group.
    pub async fn add_member(
        &mut self,
        conn: &impl Link,
        group: &str,
        user: &str,
    ) -> Result<GroupView, EngineError> {
        self.add_members(conn, group, &[user.to_string()]).await
    }

    /// Adds every enrolled device of each of `users` to the group, in one commit.
    pub async fn add_members(
        &mut self,
        conn: &impl Link,
        group: &str,
        users: &[String],
    ) -> Result<GroupView, EngineError> {
        let (group_id, _) = self.active_group(group)?;
        self.check_may_manage(&group_id, "add people to it")?;
        // Someone already in the group (their other devices are added) never waits.
        let present = self.member_users(&group_id)?;
        let me = self.device()?.user;
        let (in_group, others): (Vec<String>, Vec<String>) = users
            .iter()
            .cloned()
            .partition(|u| present.contains(u) || *u == me);
        let mut key_packages = if in_group.is_empty() {
            Vec::new()
        } else {
            self.claim_key_packages(conn, &in_group).await?
        };
        let (claimed, waiting) = self.claim_or_wait(conn, &others).await?;
        key_packages.extend(claimed);
        for user in &waiting {
            self.wait_for(&group_id, user)?;
        }
        if !waiting.is_empty() {
            self.set_waiting(conn, &group_id, &waiting, &[]).await?;
        }
        if !key_packages.is_empty() {
            self.add_key_packages(conn, &group_id, key_packages).await?;
        }
        self.group_view(&group_id)
    }

    pub(super) async fn add_key_packages(
        &mut self,
        conn: &impl Link,
        group_id: &[u8],
        key_packages: Vec<(String, KeyPackage)>,
    ) -> Result<(), EngineError> {
        let large_past = self.large_group_past;
        let added = self
            .run_commit(conn, group_id, |group, provider, signer| {
                let present: HashSet<String> = group
                    .members()
                    .filter_map(|m| certificate_in(&m.credential))
                    .map(|c| c.body.device_id)
                    .collect();
                let fresh: Vec<KeyPackage> = key_packages
                    .iter()
                    .filter(|(device, _)| !present.contains(device))
                    .map(|(_, kp)| kp.clone())
                    .collect();
                if fresh.is_empty() {
                    return Ok(None);
                }
                // In a large group a path would be encrypted to nearly every member.
                let (commit, welcome, info) = if present.len() > large_past {
                    group.add_members_without_update(provider, signer, &fresh)
                } else {
                    group.add_members(provider, signer, &fresh)
                }
                .map_err(EngineError::mls)?;
                Ok(Some(CommitParts::new(commit, Some(welcome), info)))
            })
            .await?;
        if added {
            // run_commit queued the group's name for the new members.
            self.flush_outbox(conn).await?;
        }
        Ok(())
    }

    /// Removes every device of `user` from the group.
    pub async fn remove_member(
        &mut self,
        conn: &impl Link,
        group: &str,
        user: &str,
    ) -> Result<GroupView, EngineError> {
        let (group_id, name) = self.active_group(group)?;
        let me = self.device()?;
        // One look at the group (a large one takes long to decode) for every check.
        let (member, archive, waiting) = {
            let provider = Provider::new(&self.crypto, &self.db);
            let group = load_group(&provider, &group_id)?;
            self.check_may_manage_group(&group, "remove people from it")?;
            let member = group
                .members()
                .any(|m| certificate_in(&m.credential).is_some_and(|c| c.body.user == user));
            let archive = member
                && policy_of(&group).archived
                && archive_members(&group, &me.org, &self.db)?
                    .iter()
                    .any(|m| m == user);
            (
                member,
                archive,
                waiting_in(&group).iter().any(|u| u == user),
            )
        };
        let cancelled = self.db.execute(
            "DELETE FROM pending_members WHERE group_id = ?1 AND user = ?2",
            params![group_id, user],
        )?;
        let listed = waiting
            && self
                .set_waiting(conn, &group_id, &[], &[user.to_string()])
                .await?;
        if (cancelled > 0 || listed) && !self.has_member(&group_id, user)? {
            insert_system(
                &self.db,
                &group_id,
                &format!("no longer waiting to add {user}"),
                None,
            )?;
            return self.group_view(&group_id);
        }
        if user == me.user {
            return Err(EngineError::Invalid(
                "to remove yourself, use `muster group leave`".into(),
            ));
        }
        if !member {
            return Err(EngineError::Invalid(format!(
                "{user} is not a member of {name}"
            )));
        }
        if archive {
            return Err(EngineError::Invalid(format!(
                "{user} is {name}'s compliance archive; turn archiving off first (`muster group policy {name} --no-archived`)"
            )));
        }
        self.remove_members_where(conn, &group_id, |c| c.body.user == user)
            .await?;
        self.group_view(&group_id)
    }

    /// Commits the removal of every member whose certificate matches `leaving`; commits
    /// nothing when none does. Returns whether a commit went out.
    pub(super) async fn remove_members_where(
        &mut self,
        conn: &impl Link,
        group_id: &[u8],
        leaving: impl Fn(&Certificate) -> bool,
    ) -> Result<bool, EngineError> {
        self.run_commit(conn, group_id, |group, provider, signer| {
            let leaves = leaves_where(group, &leaving);
            if leaves.is_empty() {
                return Ok(None);
            }
            let (commit, welcome, info) = group
                .remove_members(provider, signer, &leaves)
                .map_err(EngineError::mls)?;
            Ok(Some(CommitParts::new(commit, welcome, info)))
        })
        .await
    }

    /// (admin) Turns the compliance archive on or off for a group. On: the organisation's
    /// archive devices are added first, then the signed policy says `archived`, so no
    /// member ever sees an archived group without its archive. Off: the policy changes
    /// first, then the archive devices are removed.
    pub async fn set_group_policy(
        &mut self,
        conn: &impl Link,
        group: &str,
        archived: bool,
    ) -> Result<GroupView, EngineError> {
        let me = self.device()?;
        Self::require_admin(&me)?;
        let (group_id, name) = self.active_group(group)?;
        let archive_users: Vec<String> = {
            let mut users: Vec<String> = self
                .certificates(conn)
                .await?
                .into_iter()
                .filter(|c| c.is_archive())
                .map(|c| c.body.user)
                .collect();
            users.sort();
            users.dedup();
            users
        };
        if archived {
            if archive_users.is_empty() {
                return Err(EngineError::Invalid(
                    "no archive device is enrolled: enrol one (`muster join` on the archive host) and approve it with `muster approve USER --archive`".into(),
                ));
            }
            let key_packages = self.claim_key_packages(conn, &archive_users).await?;
            self.add_key_packages(conn, &group_id, key_packages).await?;
        }
        let current = {
            let provider = Provider::new(&self.crypto, &self.db);
            policy_of(&load_group(&provider, &group_id)?)
        };
        if current.archived != archived {
            let policy = GroupPolicy {
                archived,
                ..current
            };
            self.run_commit(conn, &group_id, |group, provider, signer| {
                let extensions = policy_extensions(policy, &waiting_in(group))?;
                let (commit, welcome, info) = group
                    .update_group_context_extensions(provider, extensions, signer)
                    .map_err(EngineError::mls)?;
                Ok(Some(CommitParts::new(commit, welcome, info)))
            })
            .await?;
        }
        if !archived {
            self.remove_members_where(conn, &group_id, |c| {
                c.is_archive() && archive_users.contains(&c.body.user)
            })
            .await?;
        }
        let view = self.group_view(&group_id)?;
        if archived && view.archive_members.is_empty() {
            return Err(EngineError::Invalid(format!(
                "{name} is archived, but no archive device could be added (has the archive device connected once, to publish its keys?)"
            )));
        }
        Ok(view)
    }

    /// Renames the group for every member.
    pub async fn rename_group(
        &mut self,
        conn: &impl Link,
        group: &str,
        new_name: &str,
    ) -> Result<GroupView, EngineError> {
        let (group_id, _) = self.active_group(group)?;
        self.check_may_manage(&group_id, "rename it")?;
        let new_name = new_name.trim();
        if new_name.is_empty() || new_name.len() > 64 {
            return Err(EngineError::Invalid(
                "group name must be 1-64 characters".into(),
            ));
        }
        if self
            .resolve_group(new_name)
            .is_ok_and(|g| g.state == GroupState::Active && g.name == new_name && g.id != group_id)
        {
            return Err(EngineError::GroupNameTaken(new_name.to_string()));
        }
        self.db.execute(
            "UPDATE groups SET name = ?2 WHERE group_id = ?1",
            params![group_id, new_name],
        )?;
        self.enqueue(
            &group_id,
            Body::GroupMeta {
                name: new_name.to_string(),
            },
        )?;
        self.flush_outbox(conn).await?;
        self.group_view(&group_id)
    }

    /// Leaves the group: proposes this device's removal, which the next member commits.
    pub async fn leave_group(&mut self, conn: &impl Link, group: &str) -> Result<(), EngineError> {
        let (group_id, _) = self.active_group(group)?;
        {
            let provider = Provider::new(&self.crypto, &self.db);
            if policy_of(&load_group(&provider, &group_id)?).managed {
                return Err(EngineError::Invalid(
                    "this is a managed group: members cannot leave it; an admin removes people"
                        .into(),
                ));
            }
        }
        let device = self.device()?;
        let signer = self.signer(&device)?;
        for attempt in 1..=MAX_COMMIT_ATTEMPTS {
            self.fetch_and_process(conn).await?;
            let KnownGroup { state, .. } = self.resolve_group(&group_hex(&group_id))?;
            if state != GroupState::Active {
                return Ok(());
            }
            let proposal = {
                let tx = self
                    .db
                    .transaction_with_behavior(TransactionBehavior::Immediate)?;
                let provider = Provider::new(&self.crypto, &tx);
                let mut group = load_group(&provider, &group_id)?;
                if group.members().count() == 1 {
                    tx.execute(
                        "UPDATE groups SET state = ?2 WHERE group_id = ?1",
                        params![group_id, GroupState::Left],
                    )?;
                    tx.commit()?;
                    return Ok(());
                }
                let message = group
                    .leave_group(&provider, &signer)
                    .map_err(EngineError::mls)?;
                tx.commit()?;
                mls_bytes(&message)?
            };
            let request = Request::Propose {
                group_id: group_id.clone(),
                proposal,
            };
            let next = post(conn, &request, attempt).await;
            if !matches!(next, Ok(Next::Done { .. })) {
                self.clear_pending_proposals(&group_id)?;
            }
            match next? {
                Next::Done { seq } => {
                    self.db.execute(
                        "INSERT OR IGNORE INTO own_handshakes (group_id, seq) VALUES (?1, ?2)",
                        params![group_id, seq as i64],
                    )?;
                    self.db.execute(
                        "UPDATE groups SET state = ?2 WHERE group_id = ?1",
                        params![group_id, GroupState::Left],
                    )?;
                    insert_system(
                        &self.db,
                        &group_id,
                        "you left the group",
                        Some(order_key(seq, 0)),
                    )?;
                    return Ok(());
                }
                // The fetch at the top of the loop catches up.
                Next::FetchThenRetry { .. } => {}
                Next::Wait(pause) => conn.pause(pause).await,
                Next::Stop(e) => return Err(gave_up(e)),
            }
        }
        Err(EngineError::TooManyRetries(MAX_COMMIT_ATTEMPTS))
    }

    pub(super) fn clear_pending_proposals(&mut self, group_id: &[u8]) -> Result<(), EngineError> {
        let provider = Provider::new(&self.crypto, &self.db);
        let mut group = load_group(&provider, group_id)?;
        group
            .clear_pending_proposals(provider.storage())
            .map_err(EngineError::mls)?;
        Ok(())
    }
}
