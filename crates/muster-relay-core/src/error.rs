//! Failures of the relay's own storage, kept apart from what a peer did wrong.

use crate::db::DbError;
use muster_proto::{ErrorCode, RelayError};

/// A failure of the relay's own storage (never the peer's fault).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] DbError),
    #[error("database error: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("database migration failed: {0}")]
    Migration(String),
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
}

/// Either a refusal for the peer or an internal failure.
#[derive(Debug)]
pub(crate) enum Failure {
    Refuse(RelayError),
    Store(StoreError),
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Store(e)
    }
}

impl From<DbError> for Failure {
    fn from(e: DbError) -> Self {
        Failure::Store(e.into())
    }
}

impl From<rusqlite::Error> for Failure {
    fn from(e: rusqlite::Error) -> Self {
        Failure::Store(e.into())
    }
}

impl From<RelayError> for Failure {
    fn from(e: RelayError) -> Self {
        Failure::Refuse(e)
    }
}

pub(crate) fn refuse(code: ErrorCode, message: impl Into<String>) -> Failure {
    Failure::Refuse(RelayError::new(code, message))
}
