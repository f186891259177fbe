//! Small helpers over the relay's SQLite store and the MLS wire format.

use super::*;

pub(super) fn sha256(bytes: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

pub(super) fn random_token() -> String {
    let mut bytes = [0u8; 24];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("system randomness available");
    hex::encode(bytes)
}

/// Runs a statement through the connection's prepared-statement cache.
pub(super) fn exec(db: &Db, sql: &str, params: impl Params) -> Result<usize, DbError> {
    db.prepare_cached(sql)?.execute(params)
}

/// Reads one row through the connection's prepared-statement cache.
pub(super) fn row<T>(
    db: &Db,
    sql: &str,
    params: impl Params,
    f: impl FnOnce(&crate::db::Row) -> Result<T, DbError>,
) -> Result<T, DbError> {
    db.prepare_cached(sql)?.query_row(params, f)
}

pub(super) fn parse_protocol_message(bytes: &[u8]) -> Result<ProtocolMessage, Failure> {
    if bytes.len() > MAX_MLS_MESSAGE {
        return Err(refuse(
            ErrorCode::TooLarge,
            format!(
                "message of {} bytes exceeds the {MAX_MLS_MESSAGE}-byte limit",
                bytes.len()
            ),
        ));
    }
    let message = MlsMessageIn::tls_deserialize_exact(bytes).map_err(|e| {
        refuse(
            ErrorCode::InvalidMessage,
            format!("not an MLS message: {e}"),
        )
    })?;
    message.try_into_protocol_message().map_err(|_| {
        refuse(
            ErrorCode::InvalidMessage,
            "expected an MLS PublicMessage or PrivateMessage",
        )
    })
}

/// Appends a metadata event to the audit log.
pub(super) fn record(
    db: &Db,
    event: &str,
    actor: &str,
    subject: &str,
    group: Option<&[u8]>,
) -> Result<(), Failure> {
    db.execute(
        "INSERT INTO audit (at, event, actor, subject, group_id) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![now_unix() as i64, event, actor, subject, group],
    )?;
    Ok(())
}

pub(super) fn device_certificate(db: &Db, device_id: &str) -> Result<Option<Certificate>, Failure> {
    let bytes: Option<Option<Vec<u8>>> = db
        .query_row(
            "SELECT certificate FROM devices WHERE device_id = ?1",
            [device_id],
            |r| r.get(0),
        )
        .optional()?;
    match bytes.flatten() {
        Some(b) => Ok(Some(Certificate::from_bytes(&b).map_err(|_| {
            Failure::Store(StoreError::Corrupt("stored certificate".into()))
        })?)),
        None => Ok(None),
    }
}

/// Refuses a device that is not a current member of the group.
pub(crate) fn require_member(db: &Db, group_id: &[u8], device_id: &str) -> Result<(), Failure> {
    let member = db
        .prepare_cached(
            "SELECT 1 FROM memberships WHERE group_id = ?1 AND device_id = ?2 AND to_seq IS NULL",
        )?
        .query_row(params![group_id, device_id], |_| Ok(()))
        .optional()?
        .is_some();
    if member {
        Ok(())
    } else {
        Err(refuse(
            ErrorCode::NotMember,
            "this device is not a member of the group",
        ))
    }
}

pub(super) fn device_is_admin(db: &Db, device_id: &str) -> Result<bool, Failure> {
    Ok(device_certificate(db, device_id)?.is_some_and(|c| c.is_admin()))
}

pub(super) fn load_org_policy(db: &Db) -> Result<Option<OrgPolicy>, Failure> {
    let bytes: Option<Vec<u8>> = db
        .query_row("SELECT value FROM meta WHERE key = 'org_policy'", (), |r| {
            r.get(0)
        })
        .optional()?;
    bytes
        .map(|b| {
            serde_json::from_slice(&b)
                .map_err(|_| Failure::Store(StoreError::Corrupt("org policy".into())))
        })
        .transpose()
}

pub(super) fn load_org(db: &Db) -> Result<Option<OrgDescriptor>, StoreError> {
    let bytes: Option<Vec<u8>> = db
        .query_row("SELECT value FROM meta WHERE key = 'org'", (), |r| r.get(0))
        .optional()?;
    bytes
        .map(|b| {
            serde_json::from_slice(&b).map_err(|_| StoreError::Corrupt("org descriptor".into()))
        })
        .transpose()
}
