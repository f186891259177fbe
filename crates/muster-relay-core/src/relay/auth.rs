//! Who a connection is: challenges, proofs of a device key, session checks.

use super::*;

impl Relay {
    /// Issues a fresh challenge nonce for a device that says hello.
    pub fn challenge(&self) -> Vec<u8> {
        challenge_nonce()
    }

    /// Checks a device's signature over the challenge and its enrolment status.
    pub fn authenticate(
        &self,
        device_key: &[u8],
        nonce: &[u8],
        signature: &[u8],
    ) -> Result<Session, RelayError> {
        verify_challenge(&self.fingerprint, device_key, nonce, signature)?;
        self.authenticate_proven(device_key)
    }

    /// The session of a device that has proved it holds `device_key` (see
    /// [`verify_challenge`]), if its enrolment allows one.
    pub fn authenticate_proven(&self, device_key: &[u8]) -> Result<Session, RelayError> {
        let device_id = muster_proto::device_id_for(device_key);
        let row: Option<(String, String)> = row(
            &self.db,
            "SELECT user, status FROM devices WHERE device_id = ?1",
            [&device_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(|e| internal(e.into()))?;
        let (user, status) = row.ok_or_else(|| {
            RelayError::new(
                ErrorCode::UnknownDevice,
                "this device is not enrolled with the relay",
            )
        })?;
        check_status(&status)?;
        record(&self.db, "login", &user, &device_id, None).map_err(|e| match e {
            Failure::Store(e) => internal(e),
            Failure::Refuse(e) => e,
        })?;
        Ok(Session { device_id, user })
    }

    /// Whether a device may still use its session (it may have been revoked since).
    pub fn session_active(&self, session: &Session) -> Result<(), RelayError> {
        let status: Option<String> = row(
            &self.db,
            "SELECT status FROM devices WHERE device_id = ?1",
            [&session.device_id],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| internal(e.into()))?;
        match status {
            Some(s) => check_status(&s),
            None => Err(RelayError::new(ErrorCode::UnknownDevice, "unknown device")),
        }
    }
}

/// A fresh 32-byte challenge for a device that says hello.
pub fn challenge_nonce() -> Vec<u8> {
    let mut nonce = vec![0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
        .expect("system randomness available");
    nonce
}

/// Checks a device's signature over the challenge of a relay with `fingerprint`: needs
/// no database, so it runs before a request takes the relay's lock.
pub fn verify_challenge(
    fingerprint: &str,
    device_key: &[u8],
    nonce: &[u8],
    signature: &[u8],
) -> Result<(), RelayError> {
    UnparsedPublicKey::new(&ED25519, device_key)
        .verify(&auth_transcript(fingerprint, nonce), signature)
        .map_err(|_| {
            RelayError::new(
                ErrorCode::Unauthenticated,
                "challenge signature does not verify for this device key",
            )
        })
}

pub(super) fn check_status(status: &str) -> Result<(), RelayError> {
    match status {
        STATUS_APPROVED => Ok(()),
        STATUS_PENDING => Err(RelayError::new(
            ErrorCode::EnrolmentPending,
            "enrolment is waiting for an admin's approval",
        )),
        STATUS_REJECTED => Err(RelayError::new(
            ErrorCode::EnrolmentRejected,
            "enrolment was rejected by an admin",
        )),
        STATUS_REVOKED => Err(RelayError::new(
            ErrorCode::DeviceRevoked,
            "this device has been revoked",
        )),
        other => Err(RelayError::new(
            ErrorCode::Internal,
            format!("unknown device status {other}"),
        )),
    }
}
