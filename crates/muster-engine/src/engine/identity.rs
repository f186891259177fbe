//! This device's identity: enrolment, authentication, its certificate, KeyPackages and its
//! user's other devices.

use super::*;

impl Engine {
    pub(super) fn device_opt(&self) -> Result<Option<DeviceRow>, EngineError> {
        let row = self
            .db
            .query_row(
                "SELECT relay, fingerprint, org, user, device_id, device_key, certificate, root_key FROM device WHERE id = 1",
                [],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, Vec<u8>>(5)?,
                        r.get::<_, Option<Vec<u8>>>(6)?,
                        r.get::<_, Option<Vec<u8>>>(7)?,
                    ))
                },
            )
            .optional()?;
        let Some((relay, fingerprint, org, user, device_id, device_key, cert, root_key)) = row
        else {
            return Ok(None);
        };
        let org: OrgDescriptor = serde_json::from_slice(&org).map_err(|_| {
            EngineError::Invalid("stored organisation descriptor is damaged".into())
        })?;
        let certificate = cert.map(|c| Certificate::from_bytes(&c)).transpose()?;
        Ok(Some(DeviceRow {
            relay,
            fingerprint,
            org,
            user,
            device_id,
            device_key,
            certificate,
            root_key,
        }))
    }

    pub(crate) fn device(&self) -> Result<DeviceRow, EngineError> {
        self.device_opt()?.ok_or(EngineError::NotEnrolled)
    }

    pub(crate) fn signer(&self, device: &DeviceRow) -> Result<SignatureKeyPair, EngineError> {
        let storage = crate::provider::Storage::new(&self.db);
        SignatureKeyPair::read(&storage, &device.device_key, SignatureScheme::ED25519)
            .ok_or_else(|| EngineError::Mls("device signing key is missing from the store".into()))
    }

    pub(super) fn credential(device: &DeviceRow) -> Result<CredentialWithKey, EngineError> {
        let cert = device
            .certificate
            .as_ref()
            .ok_or(EngineError::AwaitingApproval)?;
        Ok(CredentialWithKey {
            credential: BasicCredential::new(cert.to_bytes()).into(),
            signature_key: device.device_key.clone().into(),
        })
    }

    pub(super) fn new_signer(&self) -> Result<SignatureKeyPair, EngineError> {
        let signer = SignatureKeyPair::new(SignatureScheme::ED25519).map_err(EngineError::mls)?;
        signer
            .store(&crate::provider::Storage::new(&self.db))
            .map_err(EngineError::mls)?;
        Ok(signer)
    }

    /// Fails if this home already holds a device.
    pub fn ensure_fresh_home(&self) -> Result<(), EngineError> {
        if let Some(d) = self.device_opt()? {
            return Err(EngineError::AlreadyEnrolled(format!(
                "{} in {}",
                d.user, d.org.name
            )));
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn insert_device(
        &self,
        relay: &str,
        fingerprint: &str,
        org: &OrgDescriptor,
        user: &str,
        device_key: &[u8],
        profile: &Profile,
        cert: Option<&Certificate>,
        root_key: Option<&[u8]>,
    ) -> Result<(), EngineError> {
        self.db.execute(
            "INSERT INTO device (id, relay, fingerprint, org, user, device_id, device_key, profile, certificate, root_key, created_at)
             VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                relay,
                fingerprint.to_ascii_lowercase(),
                serde_json::to_vec(org).expect("org serialises"),
                user,
                device_id_for(device_key),
                device_key,
                serde_json::to_vec(profile).expect("profile serialises"),
                cert.map(|c| c.to_bytes()),
                root_key,
                now_unix() as i64
            ],
        )?;
        Ok(())
    }

    /// Creates the organisation: root key, this device as its first admin, registered with
    /// the relay `conn` reaches (the one `setup` names).
    pub async fn create_org(
        &mut self,
        conn: &impl Link,
        setup: &NewOrg<'_>,
    ) -> Result<(), EngineError> {
        let NewOrg {
            relay,
            fingerprint,
            token,
            org_name,
            user,
            profile,
        } = setup;
        let profile = profile.clone();
        self.ensure_fresh_home()?;
        validate_handle(user)?;
        if org_name.trim().is_empty() {
            return Err(EngineError::Invalid(
                "organisation name must not be empty".into(),
            ));
        }
        let root = OrgRootKey::generate();
        let org = OrgDescriptor {
            org_id: random_hex(16),
            name: org_name.trim().to_string(),
            root_public_key: root.public_key(),
        };
        let signer = self.new_signer()?;
        let cert = crate::admin::Signing::Root(OrgRootKey::from_pkcs8(root.pkcs8())?).certificate(
            CertificateBody {
                org_id: org.org_id.clone(),
                user: user.to_string(),
                device_id: device_id_for(signer.public()),
                device_key: signer.public().to_vec(),
                profile: profile.clone(),
                roles: vec![Role::Admin, Role::Member],
                not_before: 0,
                not_after: 0,
            },
            muster_proto::DEFAULT_CERTIFICATE_LIFETIME_SECS,
            None,
        )?;
        Link::request(
            conn,
            &Request::Bootstrap {
                token: token.trim().to_string(),
                org: org.clone(),
                admin: cert.clone(),
            },
        )
        .await
        .map_err(from_link)?;
        self.insert_device(
            relay,
            fingerprint,
            &org,
            user,
            signer.public(),
            &profile,
            Some(&cert),
            Some(root.pkcs8()),
        )?;
        self.record_issued(&[cert])?;
        self.authenticate(conn).await
    }

    /// Checks an invite code for a new user before anything is sent: the caller connects
    /// to the relay it names and passes it to [`Self::join`].
    pub fn new_user_invite(&self, code: &str) -> Result<InviteCode, EngineError> {
        let invite = self.usable_invite(code)?;
        if invite.purpose != InvitePurpose::NewUser {
            return Err(EngineError::Invalid(
                "this is a device link code: use `muster join-device CODE`".into(),
            ));
        }
        Ok(invite)
    }

    /// Checks a device link code, like [`Self::new_user_invite`], for [`Self::join_device`].
    pub fn link_invite(&self, code: &str) -> Result<InviteCode, EngineError> {
        let invite = self.usable_invite(code)?;
        if invite.purpose != InvitePurpose::LinkDevice {
            return Err(EngineError::Invalid(
                "this is an invite for a new user: use `muster join CODE`".into(),
            ));
        }
        Ok(invite)
    }

    pub(super) fn usable_invite(&self, code: &str) -> Result<InviteCode, EngineError> {
        let invite = InviteCode::decode(code)?;
        self.ensure_fresh_home()?;
        if invite.expires_at < now_unix() {
            return Err(EngineError::Invalid("this invite code has expired".into()));
        }
        Ok(invite)
    }

    /// Submits an enrolment request with an invite code (from [`Self::new_user_invite`])
    /// to the relay it names; an admin must approve it.
    pub async fn join(
        &mut self,
        conn: &impl Link,
        invite: InviteCode,
        profile: Profile,
    ) -> Result<String, EngineError> {
        self.enrol(conn, invite, profile).await
    }

    /// Enrols this device as another device of an existing user, with a link code made on
    /// one of their devices (from [`Self::link_invite`]); an admin then approves it.
    pub async fn join_device(
        &mut self,
        conn: &impl Link,
        invite: InviteCode,
    ) -> Result<String, EngineError> {
        let profile = Profile {
            display_name: invite.user.clone(),
            ..Default::default()
        };
        self.enrol(conn, invite, profile).await
    }

    pub(super) async fn enrol(
        &mut self,
        conn: &impl Link,
        invite: InviteCode,
        profile: Profile,
    ) -> Result<String, EngineError> {
        self.ensure_fresh_home()?;
        if profile.display_name.trim().is_empty() {
            return Err(EngineError::Invalid(
                "display name must not be empty".into(),
            ));
        }
        let secret = CodeSecret::from_hex(&invite.secret)
            .map_err(|e| EngineError::Invalid(format!("invite code: {e}")))?;
        let signer = self.new_signer()?;
        let body = RequestBody {
            org_id: invite.org.org_id.clone(),
            purpose: invite.purpose,
            user: invite.user.clone(),
            device_key: signer.public().to_vec(),
            profile: profile.clone(),
            code_key: secret.public_key(),
            requested_at: now_unix(),
        };
        let device_proof = signer
            .sign(&body.device_signed())
            .map_err(|e| EngineError::Mls(format!("signing failed: {e:?}")))?;
        let request = EnrolmentRequest::new(body, &secret, |_| device_proof);
        let device_id = ask!(conn, Request::Enrol { request },
            Response::EnrolmentSubmitted { device_id } => device_id);
        self.insert_device(
            &invite.relay,
            &invite.fingerprint,
            &invite.org,
            &invite.user,
            signer.public(),
            &profile,
            None,
            None,
        )?;
        Ok(device_id)
    }

    /// Who this device belongs to, if set up.
    pub fn whoami(&self) -> Result<Identity, EngineError> {
        let d = self.device()?;
        Ok(Identity {
            admin: d.certificate.as_ref().is_some_and(|c| c.is_admin()),
            approved: d.certificate.is_some(),
            user: d.user,
            device_id: d.device_id,
            org: d.org.name,
        })
    }

    /// Where this device's relay is: its address and pinned certificate fingerprint.
    pub fn relay(&self) -> Result<(String, String), EngineError> {
        let device = self.device()?;
        Ok((device.relay, device.fingerprint))
    }

    /// Replaces the relays this device talks to with `list` (`HOST:PORT,HOST:PORT`): they
    /// must share one database and so present the pinned certificate, which stays.
    pub fn set_relays(&mut self, list: &str) -> Result<(), EngineError> {
        self.device()?;
        let addresses: Vec<&str> = list
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .collect();
        if addresses.is_empty() {
            return Err(EngineError::Invalid("no relay address given".into()));
        }
        for address in &addresses {
            let port = address.rsplit_once(':').map(|(_, p)| p);
            if port.is_none_or(|p| p.parse::<u16>().is_err()) {
                return Err(EngineError::Invalid(format!(
                    "relay address {address:?} is not HOST:PORT"
                )));
            }
        }
        self.db.execute(
            "UPDATE device SET relay = ?1 WHERE id = 1",
            [addresses.join(",")],
        )?;
        Ok(())
    }

    /// Proves this device's key on a fresh connection to its relay; picks up its
    /// certificate after approval and keeps its KeyPackage supply topped up.
    pub async fn authenticate(&mut self, conn: &impl Link) -> Result<(), EngineError> {
        let device = self.device()?;
        let signer = self.signer(&device)?;
        let nonce = match conn
            .request(&Request::Hello {
                device_key: device.device_key.clone(),
            })
            .await
            .map_err(from_link)?
        {
            Response::Challenge { nonce } => nonce,
            _ => {
                return Err(EngineError::Invalid(
                    "relay did not send a challenge".into(),
                ))
            }
        };
        let signature = signer
            .sign(&auth_transcript(&device.fingerprint, &nonce))
            .map_err(|e| EngineError::Mls(format!("signing failed: {e:?}")))?;
        match conn.request(&Request::Prove { signature }).await {
            Ok(_) => {}
            Err(LinkError::Refused(e)) if e.code == ErrorCode::EnrolmentPending => {
                return Err(EngineError::AwaitingApproval)
            }
            Err(LinkError::Refused(e)) if e.code == ErrorCode::DeviceRevoked => {
                return Err(self.own_revocation(conn, &device).await)
            }
            Err(e) => return Err(from_link(e)),
        }
        // Pick up the certificate after approval, or a newer one after a profile change.
        {
            let Response::Certificate(cert) = conn
                .request(&Request::MyCertificate)
                .await
                .map_err(from_link)?
            else {
                return Err(EngineError::Invalid(
                    "relay did not send a certificate".into(),
                ));
            };
            // A certificate that ran out still lets this device read: members refuse what
            // it sends until an admin device renews it (see `check_own_certificate`).
            cert.verify_issuer(&device.org)?;
            if cert.body.device_key != device.device_key || cert.body.user != device.user {
                return Err(EngineError::Invalid(
                    "relay returned a certificate for another device".into(),
                ));
            }
            // Only a later certificate replaces the one held: a relay cannot hand back an
            // older one (say, from before a role was taken away). It must not come from a
            // revoked admin device, and an admin's certificate is replaced by the root
            // only: another admin cannot take away the power to revoke it.
            let revoked = revocation_list(&self.db)?;
            let newer = !revoked.covers(&cert)
                && device.certificate.as_ref().is_none_or(|old| {
                    *old != cert
                        && cert.body.not_before > old.body.not_before
                        && !(old.is_admin() && cert.issuer.is_some())
                });
            let renewed = newer && device.certificate.is_some();
            if newer {
                self.db.execute(
                    "UPDATE device SET certificate = ?1 WHERE id = 1",
                    [cert.to_bytes()],
                )?;
            }
            if renewed {
                // This device's leaves and KeyPackages still carry the old certificate.
                self.db.execute(
                    "INSERT INTO sync_state (key, value) VALUES ('leaf_update_due', 1)
                     ON CONFLICT (key) DO UPDATE SET value = 1",
                    [],
                )?;
            }
            self.ensure_key_packages(conn, renewed).await?;
        }
        Ok(())
    }

    /// Keeps KeyPackages on the relay; `replace` swaps them all for ones carrying this
    /// device's current certificate.
    pub(super) async fn ensure_key_packages(
        &mut self,
        conn: &impl Link,
        replace: bool,
    ) -> Result<(), EngineError> {
        let (mut available, mut has_last_resort) = ask!(conn, Request::KeyPackageCount, Response::KeyPackageCount {
            available,
            has_last_resort,
        } => (available, has_last_resort));
        if replace {
            (available, has_last_resort) = (0, false);
        }
        if available >= KEY_PACKAGE_LOW_WATER && has_last_resort {
            return Ok(());
        }
        let device = self.device()?;
        let signer = self.signer(&device)?;
        let credential = Self::credential(&device)?;
        let provider = Provider::new(&self.crypto, &self.db);
        let make = |last_resort: bool| -> Result<Vec<u8>, EngineError> {
            let mut builder = KeyPackage::builder().leaf_node_capabilities(leaf_capabilities());
            if last_resort {
                builder = builder.mark_as_last_resort();
            }
            let bundle = builder
                .build(CIPHERSUITE, &provider, &signer, credential.clone())
                .map_err(EngineError::mls)?;
            bundle
                .key_package()
                .tls_serialize_detached()
                .map_err(EngineError::mls)
        };
        let mut key_packages = Vec::new();
        if available < KEY_PACKAGE_LOW_WATER {
            for _ in 0..KEY_PACKAGE_BATCH {
                key_packages.push(make(false)?);
            }
        }
        let last_resort = if has_last_resort {
            None
        } else {
            Some(make(true)?)
        };
        conn.request(&Request::UploadKeyPackages {
            key_packages,
            last_resort,
            replace,
        })
        .await
        .map_err(from_link)?;
        Ok(())
    }

    /// After this device's certificate was renewed: commits an update of its own leaf, with
    /// the new certificate, in every group it is in, so members keep accepting it.
    pub(super) async fn update_own_leaves(&mut self, conn: &impl Link) -> Result<(), EngineError> {
        let due: Option<i64> = self
            .db
            .query_row(
                "SELECT value FROM sync_state WHERE key = 'leaf_update_due'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        if due != Some(1) {
            return Ok(());
        }
        let device = self.device()?;
        let credential = Self::credential(&device)?;
        let mut complete = true;
        for group_id in self.active_group_ids()? {
            let stale = {
                let provider = Provider::new(&self.crypto, &self.db);
                load_group(&provider, &group_id)?
                    .own_leaf_node()
                    .is_some_and(|leaf| *leaf.credential() != credential.credential)
            };
            if !stale {
                continue;
            }
            let result = self
                .run_commit(conn, &group_id, |group, provider, signer| {
                    let still_stale = group
                        .own_leaf_node()
                        .is_some_and(|leaf| *leaf.credential() != credential.credential);
                    if !still_stale {
                        return Ok(None);
                    }
                    let params = LeafNodeParameters::builder()
                        .with_credential_with_key(credential.clone())
                        .build();
                    let (commit, welcome, info) = group
                        .self_update(provider, signer, params)
                        .map_err(EngineError::mls)?
                        .into_messages();
                    Ok(Some(CommitParts {
                        commit,
                        welcome,
                        group_info: info,
                    }))
                })
                .await;
            if let Err(e) = result {
                complete = false;
                self.activity.problems.push(format!(
                    "could not bring this device's renewed certificate into a group: {e}"
                ));
            }
        }
        if complete {
            self.db.execute(
                "UPDATE sync_state SET value = 0 WHERE key = 'leaf_update_due'",
                [],
            )?;
        }
        Ok(())
    }

    /// This user's other enrolled devices.
    pub(super) async fn my_other_devices(
        &self,
        conn: &impl Link,
    ) -> Result<Vec<String>, EngineError> {
        let me = self.device()?;
        let mine = ask!(conn, Request::MyDevices, Response::Devices(mine) => mine);
        Ok(mine.into_iter().filter(|d| *d != me.device_id).collect())
    }

    /// Adds this user's other devices to every group this device is in where they are missing.
    pub(super) async fn add_own_devices(&mut self, conn: &impl Link) -> Result<(), EngineError> {
        let revoked = revocation_list(&self.db)?;
        let others: Vec<String> = self
            .my_other_devices(conn)
            .await?
            .into_iter()
            .filter(|d| !revoked.device_revoked(d))
            .collect();
        if others.is_empty() {
            return Ok(());
        }
        let user = self.device()?.user;
        let groups = self.active_group_ids()?;
        for group_id in groups {
            let missing: Vec<String> = {
                let provider = Provider::new(&self.crypto, &self.db);
                let present = device_ids_in(&load_group(&provider, &group_id)?);
                others
                    .iter()
                    .filter(|d| !present.contains(d))
                    .cloned()
                    .collect()
            };
            if missing.is_empty() {
                continue;
            }
            let result = match self.claim_for(conn, &user, &missing).await {
                Ok(kps) => self.add_key_packages(conn, &group_id, kps).await,
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                self.activity
                    .problems
                    .push(format!("could not add your other device to a group: {e}"));
            }
        }
        Ok(())
    }

    // ---- groups -------------------------------------------------------------------
}
