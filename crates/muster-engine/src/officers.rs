//! Legal officers on devices: an admin appoints them (making the officers' key), each
//! officer keeps a share on their own device and approves the archive's requests there.

use crate::engine::{revocation_list, Engine};
use crate::error::EngineError;
use crate::legal::{self, Approval, ApprovalRequest, Ceremony, OpenedShare, ShareFile};
use crate::link::Link;
use muster_proto::LegalOfficers;
use openmls_traits::signatures::Signer as _;
use rusqlite::OptionalExtension as _;

impl Engine {
    /// The organisation's legal officers, by the newest verified policy this device holds.
    pub fn legal_officers(&self) -> Result<Option<LegalOfficers>, EngineError> {
        legal::stored_officers(&self.db)
    }

    /// (admin) Appoints `officers`, `threshold` of whom must approve every read of the
    /// archive: makes the officers' key, publishes its public half in the signed
    /// organisation policy, and returns each officer's sealed share and code to hand over
    /// (the private key itself is not kept anywhere).
    pub async fn appoint_legal_officers(
        &mut self,
        conn: &impl Link,
        threshold: u8,
        officers: &[String],
    ) -> Result<Ceremony, EngineError> {
        let me = self.device()?;
        for officer in officers {
            muster_proto::validate_handle(officer)
                .map_err(|e| EngineError::Invalid(format!("officer {officer:?}: {e}")))?;
        }
        let ceremony = legal::new_officers_key(&me.org.org_id, threshold, officers)?;
        self.set_org_policy(conn, None, None, None, Some(ceremony.officers.clone()))
            .await?;
        Ok(ceremony)
    }

    /// (officer) Keeps this officer's share, opened with its code, in the device's store.
    pub fn import_officer_share(
        &mut self,
        file: &ShareFile,
        code: &str,
    ) -> Result<(), EngineError> {
        let me = self.device()?;
        let opened = legal::open_share(file, code, &me.org.org_id, &me.user)?;
        self.db.execute(
            "INSERT OR REPLACE INTO officer_shares (key_id, idx, share) VALUES (?1, ?2, ?3)",
            rusqlite::params![opened.key_id, opened.index, opened.share.as_slice()],
        )?;
        Ok(())
    }

    /// (officer) Checks a request from the archive against the newest policy and the
    /// organisation's revocations, and approves it with this officer's share.
    pub async fn approve_archive_request(
        &mut self,
        conn: &impl Link,
        request: &ApprovalRequest,
    ) -> Result<Approval, EngineError> {
        let (policy, problems) = self.org_policy(conn).await?;
        self.activity.problems.extend(problems);
        let officers = policy
            .legal_officers
            .ok_or_else(|| EngineError::Invalid("the organisation has no legal officers".into()))?;
        let me = self.device()?;
        if !officers.officers.contains(&me.user) {
            return Err(EngineError::Invalid(format!(
                "{} is not one of the organisation's legal officers",
                me.user
            )));
        }
        request.check(
            &me.org,
            &revocation_list(&self.db)?,
            &officers,
            muster_proto::now_unix(),
        )?;
        let share: Option<(u8, Vec<u8>)> = self
            .db
            .query_row(
                "SELECT idx, share FROM officer_shares WHERE key_id = ?1",
                [&officers.key_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let (index, share) = share.ok_or_else(|| {
            EngineError::Invalid(format!(
                "this device holds no share of the officers' key {}: import yours with \
                 `muster archive officer import FILE`",
                officers.key_id
            ))
        })?;
        let share = OpenedShare {
            key_id: officers.key_id.clone(),
            index,
            share: zeroize::Zeroizing::new(share),
        };
        let certificate = me
            .certificate
            .clone()
            .ok_or_else(|| EngineError::Invalid("this device has no certificate yet".into()))?;
        let signer = self.signer(&me)?;
        legal::approve(request, &certificate, &share, |p| {
            signer
                .sign(p)
                .map_err(|e| EngineError::Mls(format!("{e:?}")))
        })
    }
}
