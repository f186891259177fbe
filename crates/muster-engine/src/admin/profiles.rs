//! Profile changes: signed requests, their check, approval and rejection.

use super::*;

impl Engine {
    /// This device's approved profile, from its certificate.
    pub fn profile(&self) -> Result<Profile, EngineError> {
        Ok(self
            .device()?
            .certificate
            .ok_or(EngineError::AwaitingApproval)?
            .body
            .profile)
    }

    /// Asks an admin to approve a new profile, signed by this device; colleagues see it
    /// only after approval. Leave `title` or `department` out to stop revealing it.
    pub async fn request_profile(
        &self,
        conn: &impl Link,
        profile: Profile,
    ) -> Result<(), EngineError> {
        let me = self.device()?;
        let requester = me
            .certificate
            .clone()
            .ok_or(EngineError::AwaitingApproval)?;
        let body = ProfileRequestBody {
            org_id: me.org.org_id.clone(),
            user: me.user.clone(),
            profile,
            requested_at: now_unix(),
        };
        let request = ProfileRequest {
            signature: self.sign_as_device(&me, &body.to_be_signed())?,
            body,
            requester,
        };
        conn.request(&Request::RequestProfileChange { request })
            .await
            .map_err(from_link)?;
        Ok(())
    }

    /// Why a profile request may not be approved, if it may not; else who signed it.
    pub(super) fn check_profile_request(
        &self,
        user: &str,
        request: Option<&ProfileRequest>,
    ) -> Result<String, String> {
        let org = self.device().map_err(|e| e.to_string())?.org;
        let request = request.ok_or("it is not signed by any device of the user")?;
        request
            .verify(&org, now_unix())
            .map_err(|e| format!("its signature does not check out: {e}"))?;
        if request.body.user != user {
            return Err(format!("it was signed for {}", request.body.user));
        }
        if crate::engine::certificate_revoked(&self.db, &request.requester)
            .map_err(|e| e.to_string())?
        {
            return Err("it was signed by a revoked device".into());
        }
        let approved: Option<i64> = self
            .db
            .query_row(
                "SELECT requested_at FROM profile_approvals WHERE user = ?1",
                [user],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| e.to_string())?;
        if approved.is_some_and(|at| request.body.requested_at as i64 <= at) {
            return Err(
                "it is not newer than the last profile this device approved for them (a replay)"
                    .into(),
            );
        }
        Ok(request.requester.body.device_id.clone())
    }

    /// (admin) Profile changes waiting for approval, each with the check of its signature.
    pub async fn profile_changes(
        &self,
        conn: &impl Link,
    ) -> Result<Vec<ProfileChangeView>, EngineError> {
        Self::require_admin(&self.device()?)?;
        let changes =
            ask!(conn, Request::ListProfileChanges, Response::ProfileChanges(changes) => changes);
        Ok(changes
            .into_iter()
            .map(|c| {
                let check = self.check_profile_request(&c.user, c.request.as_ref());
                ProfileChangeView {
                    requested: c
                        .request
                        .as_ref()
                        .map(|r| r.body.profile.clone())
                        .unwrap_or(c.requested),
                    user: c.user,
                    current: c.current,
                    requested_at: rfc3339_ms(c.requested_at as i64 * 1000),
                    signed_by: check.as_ref().ok().cloned(),
                    problem: check.err(),
                }
            })
            .collect())
    }

    /// (admin) Approves `user`'s requested profile, as their device signed it: new
    /// certificates for each of their devices, with the roles of this device's record.
    pub async fn approve_profile(
        &self,
        conn: &impl Link,
        user: &str,
    ) -> Result<Profile, EngineError> {
        let me = self.device()?;
        let signing = self.signing(&me)?;
        let changes =
            ask!(conn, Request::ListProfileChanges, Response::ProfileChanges(changes) => changes);
        let change = changes
            .into_iter()
            .find(|c| c.user == user)
            .ok_or_else(|| EngineError::Invalid(format!("{user} has no pending profile change")))?;
        self.check_profile_request(user, change.request.as_ref())
            .map_err(|why| {
                EngineError::Invalid(format!("refusing {user}'s profile change: {why}"))
            })?;
        let request = change.request.expect("checked above");
        self.certificates(conn).await?;
        let (_, roles) = self.record_of(user)?.ok_or_else(|| {
            EngineError::Invalid(format!("this device has no verified record of {user}"))
        })?;
        let certificates = self.reissue(&signing, user, &request.body.profile, &roles)?;
        conn.request(&Request::ApproveProfileChange {
            certificates: certificates.clone(),
        })
        .await
        .map_err(from_link)?;
        self.record_issued(&certificates)?;
        self.db.execute(
            "INSERT INTO profile_approvals (user, requested_at) VALUES (?1, ?2)
             ON CONFLICT (user) DO UPDATE SET requested_at = excluded.requested_at",
            params![user, request.body.requested_at as i64],
        )?;
        Ok(request.body.profile)
    }

    /// (admin) Refuses `user`'s requested profile change.
    pub async fn reject_profile(&self, conn: &impl Link, user: &str) -> Result<(), EngineError> {
        Self::require_admin(&self.device()?)?;
        conn.request(&Request::RejectProfileChange {
            user: user.to_string(),
        })
        .await
        .map_err(from_link)?;
        Ok(())
    }

    // ---- the compliance archive's published checkpoints ----------------------------------
}

/// A profile change as an admin sees it, with the check of its signature.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileChangeView {
    pub user: String,
    pub current: Profile,
    pub requested: Profile,
    pub requested_at: String,
    /// The device of the user that signed the request, when its signature verifies.
    pub signed_by: Option<String>,
    /// Why the request cannot be approved, if it cannot.
    pub problem: Option<String>,
}
