//! People added to a group before their device was ever online. The group's context
//! lists them as waiting to join (beside its policy, where every member and the relay
//! read it). A device of theirs joins on its own the next time it connects, by an
//! external commit the shared rules accept for exactly such a person, and then strikes
//! its user off the list. Until then, the device that added them also seats them on
//! its own syncs once their device has published KeyPackages.

use super::*;

/// The people a group's context lists as waiting to join.
pub(super) fn waiting_in(group: &MlsGroup) -> Vec<String> {
    muster_rules::pending_in(group.extensions())
}

impl Engine {
    /// Puts `add` on the group's list of people waiting to join and strikes `strike`
    /// off it, in one commit (none if nothing changes). Returns whether it committed.
    pub(super) async fn set_waiting(
        &mut self,
        conn: &impl Link,
        group_id: &[u8],
        add: &[String],
        strike: &[String],
    ) -> Result<bool, EngineError> {
        self.run_commit(conn, group_id, |group, provider, signer| {
            let before = waiting_in(group);
            let mut after: Vec<String> = before
                .iter()
                .filter(|u| !strike.contains(u))
                .chain(add.iter().filter(|u| !strike.contains(u)))
                .cloned()
                .collect();
            after.sort();
            after.dedup();
            if after == before {
                return Ok(None);
            }
            let extensions = policy_extensions(policy_of(group), &after)?;
            let (commit, welcome, info) = group
                .update_group_context_extensions(provider, extensions, signer)
                .map_err(EngineError::mls)?;
            Ok(Some(CommitParts::new(commit, welcome, info)))
        })
        .await
    }

    /// (admin apply) Lists `user`, not enrolled yet, as waiting to join the group.
    pub async fn list_waiting(
        &mut self,
        conn: &impl Link,
        group: &str,
        user: &str,
    ) -> Result<GroupView, EngineError> {
        validate_handle(user)?;
        let (group_id, _) = self.active_group(group)?;
        self.check_may_manage(&group_id, "add people to it")?;
        self.wait_for(&group_id, user)?;
        self.set_waiting(conn, &group_id, &[user.to_string()], &[])
            .await?;
        self.group_view(&group_id)
    }

    /// Joins every group that lists this device's user as waiting to join and that this
    /// device is not in, and strikes the user off the list of those it is in.
    pub(super) async fn join_waiting_groups(
        &mut self,
        conn: &impl Link,
    ) -> Result<(), EngineError> {
        let groups = ask!(conn, Request::PendingSeats, Response::PendingSeats(g) => g);
        let me = self.device()?.user;
        for group_id in groups {
            let held = self
                .resolve_group(&group_hex(&group_id))
                .is_ok_and(|g| g.state == GroupState::Active);
            let result = if held {
                self.set_waiting(conn, &group_id, &[], std::slice::from_ref(&me))
                    .await
                    .map(|_| ())
            } else {
                self.join_as_waiting(conn, &group_id).await
            };
            if let Err(e) = result {
                self.activity.problems.push(format!(
                    "could not join group {} that you were added to: {e}",
                    group_hex(&group_id)
                ));
            }
        }
        Ok(())
    }

    /// Joins a group that lists this device's user as waiting, from the group's newest
    /// GroupInfo: every member in it must be certified and unrevoked, and the list signed
    /// into its context must name this user. The relay cannot make up such a group: the
    /// GroupInfo is signed by a member, whose certificate is checked with the rest.
    async fn join_as_waiting(
        &mut self,
        conn: &impl Link,
        group_id: &[u8],
    ) -> Result<(), EngineError> {
        let device = self.device()?;
        let signer = self.signer(&device)?;
        let credential = Self::credential(&device)?;
        let (bytes, _) = ask!(conn, Request::GroupInfo { group_id: group_id.to_vec() },
            Response::GroupInfo { group_info, epoch } => (group_info, epoch));
        let MlsMessageBodyIn::GroupInfo(info) = MlsMessageIn::tls_deserialize_exact(&bytes)
            .map_err(EngineError::mls)?
            .extract()
        else {
            return Err(EngineError::Invalid(
                "the relay's GroupInfo is not one".into(),
            ));
        };
        if info.group_id().as_slice() != group_id {
            return Err(EngineError::Invalid(
                "the relay's GroupInfo is for another group".into(),
            ));
        }
        let revoked = revocation_list(&self.db)?;
        let signed_info = info.clone();
        let tx = self
            .db
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let provider = Provider::new(&self.crypto, &tx);
        let (group, bundle) = external_commit(&provider, info, credential, &signer)?;
        let mut people = Vec::new();
        for member in group.members() {
            let cert = roster_member(&device.org, &member.credential, &member.signature_key)
                .map_err(|e| {
                    EngineError::Invalid(format!("it lists a member with an invalid identity: {e}"))
                })?;
            if revoked.covers(&cert) {
                return Err(EngineError::Invalid(format!(
                    "it lists revoked device {} of {}",
                    cert.body.device_id, cert.body.user
                )));
            }
            if cert.body.device_id != device.device_id {
                people.push(cert.body.user);
            }
        }
        // Whoever signed the GroupInfo must be a member valid now, not someone removed
        // (or lapsed) who kept an old epoch the relay replays.
        let signer_cert = group_info_signer(&self.crypto, &signed_info, group.members())
            .ok_or_else(|| EngineError::Invalid("the GroupInfo is signed by no member".into()))
            .and_then(|m| {
                verify_member(&device.org, &m.credential, &m.signature_key)
                    .map_err(|e| EngineError::Invalid(format!("the GroupInfo's signer: {e}")))
            })?;
        if revoked.covers(&signer_cert) {
            return Err(EngineError::Invalid(format!(
                "the GroupInfo was signed by revoked device {} of {}",
                signer_cert.body.device_id, signer_cert.body.user
            )));
        }
        if !waiting_in(&group).contains(&device.user) {
            return Err(EngineError::Invalid(format!(
                "the group does not list {} as waiting to join",
                device.user
            )));
        }
        let seq = post_external_commit(conn, &tx, group_id, bundle, "joining").await?;
        tx.execute(
            "INSERT INTO groups (group_id, name, state, created_at) VALUES (?1, ?2, ?4, ?3)
             ON CONFLICT (group_id) DO UPDATE SET name = excluded.name, state = ?4",
            params![
                group_id,
                placeholder_name(group_id),
                now_ms(),
                GroupState::Active
            ],
        )?;
        people.sort();
        people.dedup();
        insert_system(
            &tx,
            group_id,
            &format!(
                "you joined: you were added while your device was offline (with {}; {} let you in); messages from before are not readable here",
                people.join(", "),
                signer_cert.body.user
            ),
            Some(order_key(seq, 0)),
        )?;
        lapse_check_due(&tx)?;
        tx.commit()?;
        self.member_counts.remove(group_id);
        self.activity.joined_groups.push(group_hex(group_id));
        // Struck off the list now that a device of this user is in; a failure here is
        // tidied up on a later sync.
        let me = device.user;
        if let Err(e) = self.set_waiting(conn, group_id, &[], &[me]).await {
            self.activity.problems.push(format!(
                "joined, but could not update the group's waiting list: {e}"
            ));
        }
        Ok(())
    }
}
