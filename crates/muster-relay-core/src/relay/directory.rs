//! The directory and KeyPackages: who is enrolled, uploads, counts and claims.

use super::*;

impl Relay {
    pub(super) fn directory(&self) -> Result<Outcome, Failure> {
        let mut stmt = self.db.prepare_cached(
            "SELECT certificate FROM devices WHERE status = 'approved' ORDER BY user, device_id",
        )?;
        let certs = stmt
            .query_map((), |r| r.get::<_, Vec<u8>>(0))?
            .collect::<Result<Vec<_>, _>>()?
            .iter()
            .filter_map(|b| Certificate::from_bytes(b).ok())
            .collect();
        Ok(Outcome::reply(Response::Directory(certs)))
    }

    pub(super) fn validate_key_package(
        &self,
        session: &Session,
        bytes: &[u8],
    ) -> Result<bool, Failure> {
        let bad = |why: String| refuse(ErrorCode::InvalidMessage, format!("KeyPackage: {why}"));
        let kp = KeyPackageIn::tls_deserialize_exact(bytes)
            .map_err(|e| bad(e.to_string()))?
            .validate(&self.crypto, ProtocolVersion::Mls10)
            .map_err(|e| bad(e.to_string()))?;
        let cert = certificate_of(kp.leaf_node().credential())
            .ok_or_else(|| bad("credential carries no certificate".into()))?;
        if cert.body.device_id != session.device_id
            || kp.leaf_node().signature_key().as_slice() != cert.body.device_key.as_slice()
        {
            return Err(bad("it does not belong to this device".into()));
        }
        Ok(kp.last_resort())
    }

    pub(super) fn upload_key_packages(
        &mut self,
        session: &Session,
        key_packages: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
        replace: bool,
    ) -> Result<Outcome, Failure> {
        if key_packages.len() > MAX_KEY_PACKAGES_PER_UPLOAD {
            return Err(refuse(
                ErrorCode::TooLarge,
                format!("at most {MAX_KEY_PACKAGES_PER_UPLOAD} KeyPackages per upload"),
            ));
        }
        for kp in &key_packages {
            self.validate_key_package(session, kp)?;
        }
        if let Some(kp) = &last_resort {
            if !self.validate_key_package(session, kp)? {
                return Err(refuse(
                    ErrorCode::InvalidMessage,
                    "last-resort KeyPackage is not marked as last resort",
                ));
            }
        }
        let held: i64 = row(
            &self.db,
            "SELECT COUNT(*) FROM key_packages WHERE device_id = ?1",
            [&session.device_id],
            |r| r.get(0),
        )?;
        // A device with no KeyPackages here is new (or was used up): the user's other
        // devices are woken to add it to their groups.
        let wake_siblings =
            held == 0 && !key_packages.is_empty() && self.may_wake_siblings(&session.device_id);
        let tx = self.db.transaction()?;
        let mut wake = BTreeSet::new();
        if wake_siblings {
            let mut stmt = tx.prepare_cached(
                "SELECT device_id FROM devices WHERE user = ?1 AND status = 'approved' AND device_id != ?2",
            )?;
            for device in stmt.query_map(params![session.user, session.device_id], |r| r.get(0))? {
                wake.insert(device?);
            }
        }
        if replace {
            exec(
                &tx,
                "DELETE FROM key_packages WHERE device_id = ?1",
                [&session.device_id],
            )?;
        }
        for kp in &key_packages {
            exec(
                &tx,
                "INSERT INTO key_packages (device_id, data, last_resort) VALUES (?1, ?2, 0)",
                params![session.device_id, kp],
            )?;
        }
        if let Some(kp) = &last_resort {
            exec(
                &tx,
                "DELETE FROM key_packages WHERE device_id = ?1 AND last_resort = 1",
                [&session.device_id],
            )?;
            exec(
                &tx,
                "INSERT INTO key_packages (device_id, data, last_resort) VALUES (?1, ?2, 1)",
                params![session.device_id, kp],
            )?;
        }
        tx.commit()?;
        Ok(Outcome::with_changed(Response::Ok, wake))
    }

    /// Whether `device`'s new KeyPackages may wake its user's other devices now.
    fn may_wake_siblings(&mut self, device: &str) -> bool {
        const EVERY: std::time::Duration = std::time::Duration::from_secs(60);
        let now = std::time::Instant::now();
        if self.sibling_wakes.len() > 10_000 {
            self.sibling_wakes
                .retain(|_, at| now.duration_since(*at) < EVERY);
        }
        match self.sibling_wakes.get(device) {
            Some(at) if now.duration_since(*at) < EVERY => false,
            _ => {
                self.sibling_wakes.insert(device.to_string(), now);
                true
            }
        }
    }

    pub(super) fn key_package_count(&self, session: &Session) -> Result<Outcome, Failure> {
        let (available, last): (i64, i64) = row(
            &self.db,
            "SELECT CAST(COALESCE(SUM(CASE WHEN last_resort = 0 THEN 1 ELSE 0 END), 0) AS BIGINT),
                    CAST(COALESCE(SUM(CASE WHEN last_resort = 1 THEN 1 ELSE 0 END), 0) AS BIGINT)
             FROM key_packages WHERE device_id = ?1",
            [&session.device_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(Outcome::reply(Response::KeyPackageCount {
            available: available as u32,
            has_last_resort: last > 0,
        }))
    }

    pub(super) fn my_devices(&self, session: &Session) -> Result<Outcome, Failure> {
        let mut stmt = self.db.prepare_cached(
            "SELECT device_id FROM devices WHERE user = ?1 AND status = 'approved' ORDER BY device_id",
        )?;
        let devices = stmt
            .query_map([&session.user], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(Outcome::reply(Response::Devices(devices)))
    }

    pub(super) fn claim_key_packages(
        &mut self,
        user: &str,
        only: &[String],
    ) -> Result<Outcome, Failure> {
        let tx = self.db.transaction()?;
        let devices: Vec<String> = {
            let mut stmt = tx.prepare_cached(
                "SELECT device_id FROM devices WHERE user = ?1 AND status = 'approved' ORDER BY device_id",
            )?;
            stmt.query_map([user], |r| r.get(0))?
                .collect::<Result<Vec<_>, _>>()?
        };
        if devices.is_empty() {
            return Err(refuse(
                ErrorCode::UnknownUser,
                format!("no enrolled device for user {user:?}"),
            ));
        }
        let mut claimed = Vec::new();
        for device_id in devices
            .into_iter()
            .filter(|d| only.is_empty() || only.contains(d))
        {
            let row: Option<(i64, Vec<u8>, bool)> = row(
                &tx,
                "SELECT id, data, last_resort FROM key_packages WHERE device_id = ?1
                     ORDER BY last_resort, id LIMIT 1",
                [&device_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
            if let Some((id, data, last_resort)) = row {
                if !last_resort {
                    exec(&tx, "DELETE FROM key_packages WHERE id = ?1", [id])?;
                }
                claimed.push(ClaimedKeyPackage {
                    device_id,
                    key_package: data,
                });
            }
        }
        tx.commit()?;
        if claimed.is_empty() {
            return Err(refuse(
                ErrorCode::NoKeyPackages,
                format!("no device of {user:?} has a KeyPackage available"),
            ));
        }
        Ok(Outcome::reply(Response::KeyPackages(claimed)))
    }
}
