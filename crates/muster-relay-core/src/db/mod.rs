//! The relay's storage behind one small interface, with two backends: embedded SQLite (the
//! zero-configuration default) and PostgreSQL (several relays in front of one database).
//!
//! Statements are written once, in the SQL both understand; the PostgreSQL backend
//! rewrites the few spellings that differ ([`dialect`]). Values cross as [`Value`]s, so
//! neither backend's types leak into the relay.

pub(crate) mod dialect;
pub mod pg_connect;
pub mod postgres;
pub(crate) mod sqlite;
mod value;

#[cfg(test)]
mod tests;

pub use value::{FromValue, Params, Row, ToValue, Value};

use std::cell::{Cell, RefCell};

/// A failure of the database or of converting its values.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("PostgreSQL: {}", postgres_detail(.0))]
    Postgres(#[from] ::postgres::Error),
    #[error("column {column} holds {found}, expected {expected}")]
    Type {
        column: usize,
        found: &'static str,
        expected: &'static str,
    },
    #[error("column {column}: {value} does not fit {target}")]
    Range {
        column: usize,
        value: i64,
        target: &'static str,
    },
    #[error("PostgreSQL cannot run {sql:?}: {detail}")]
    Prepare { sql: String, detail: String },
    #[error("the query returned no row")]
    NoRow,
    #[error("the query has no column {0}")]
    NoColumn(usize),
    #[error("not supported by this database: {0}")]
    Unsupported(&'static str),
    #[error("stored MLS state does not decode: {0}")]
    Codec(String),
    #[error("database connection: {0}")]
    Link(String),
}

/// The server's own words for a failed statement, which `postgres::Error` keeps inside.
pub(crate) fn postgres_detail(error: &::postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            // The cause (a certificate refused, a connection reset) is in the source chain.
            let mut detail = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                detail.push_str(": ");
                detail.push_str(&cause.to_string());
                source = cause.source();
            }
            detail
        }
    }
}

/// Whether `error` is PostgreSQL refusing a table, index or row that another relay
/// creating the same tables at the same moment made first (or a deadlock between them).
pub(crate) fn is_creation_race(error: &DbError) -> bool {
    let DbError::Postgres(e) = error else {
        return false;
    };
    e.as_db_error()
        .is_some_and(|db| matches!(db.code().code(), "42P07" | "23505" | "40P01" | "42710"))
}

/// What a database must do for the relay.
pub trait Backend: Send {
    /// The number of rows changed.
    fn execute(&mut self, sql: &str, params: &[Value<'_>]) -> Result<u64, DbError>;
    fn query(&mut self, sql: &str, params: &[Value<'_>]) -> Result<Vec<Row>, DbError>;
    /// Runs statements separated by semicolons, without parameters.
    fn execute_batch(&mut self, sql: &str) -> Result<(), DbError>;
    /// Starts a transaction that will write: writers never interleave, on this relay nor
    /// (for a shared database) on any other.
    fn begin_write(&mut self) -> Result<(), DbError>;
    fn commit(&mut self) -> Result<(), DbError>;
    fn rollback(&mut self) -> Result<(), DbError>;
    /// Transactions from now on commit without waiting for the disk.
    fn begin_grouped(&mut self) -> Result<(), DbError>;
    /// Transactions commit durably again; with `sync`, everything committed before is
    /// made durable first.
    fn end_grouped(&mut self, sync: bool) -> Result<(), DbError>;
    /// Whether anything but this connection may have written since last asked, so that
    /// what the relay keeps in memory must be read again.
    fn changed_elsewhere(&mut self) -> Result<bool, DbError>;
    /// The SQLite connection, for what only SQLite has (incremental blob reads, tests).
    fn sqlite(&self) -> Option<&rusqlite::Connection> {
        None
    }
    fn is_postgres(&self) -> bool {
        false
    }
}

/// A database connection of either backend, used through `&self` as rusqlite's is.
pub struct Db {
    backend: RefCell<Box<dyn Backend>>,
    changes: Cell<u64>,
    in_transaction: Cell<bool>,
}

impl Db {
    pub fn new(backend: Box<dyn Backend>) -> Self {
        Self {
            backend: RefCell::new(backend),
            changes: Cell::new(0),
            in_transaction: Cell::new(false),
        }
    }

    /// Rows changed through this connection so far.
    pub fn total_changes(&self) -> u64 {
        self.changes.get()
    }

    pub fn is_postgres(&self) -> bool {
        self.backend.borrow().is_postgres()
    }

    pub fn execute(&self, sql: &str, params: impl Params) -> Result<usize, DbError> {
        let values = params.values();
        let changed = self.backend.borrow_mut().execute(sql, &values)?;
        self.changes.set(self.changes.get() + changed);
        Ok(changed as usize)
    }

    pub fn execute_batch(&self, sql: &str) -> Result<(), DbError> {
        self.backend.borrow_mut().execute_batch(sql)
    }

    pub fn query_rows(&self, sql: &str, params: impl Params) -> Result<Vec<Row>, DbError> {
        let values = params.values();
        self.backend.borrow_mut().query(sql, &values)
    }

    /// The first row's value as `f` reads it; [`DbError::NoRow`] when there is none.
    pub fn query_row<T>(
        &self,
        sql: &str,
        params: impl Params,
        f: impl FnOnce(&Row) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        let rows = self.query_rows(sql, params)?;
        f(rows.first().ok_or(DbError::NoRow)?)
    }

    pub fn query_map<T>(
        &self,
        sql: &str,
        params: impl Params,
        f: impl FnMut(&Row) -> Result<T, DbError>,
    ) -> Result<std::vec::IntoIter<Result<T, DbError>>, DbError> {
        let rows = self.query_rows(sql, params)?;
        Ok(rows.iter().map(f).collect::<Vec<_>>().into_iter())
    }

    /// A statement to run, as rusqlite's `prepare_cached` gives (both backends cache
    /// prepared statements by their text).
    pub fn prepare_cached<'a>(&'a self, sql: &'a str) -> Result<Statement<'a>, DbError> {
        Ok(Statement { db: self, sql })
    }

    pub fn prepare<'a>(&'a self, sql: &'a str) -> Result<Statement<'a>, DbError> {
        self.prepare_cached(sql)
    }

    /// Starts a write transaction, rolled back unless committed.
    pub fn transaction(&self) -> Result<Transaction<'_>, DbError> {
        if self.in_transaction.get() {
            return Err(DbError::Unsupported("nested transactions"));
        }
        self.backend.borrow_mut().begin_write()?;
        self.in_transaction.set(true);
        Ok(Transaction {
            db: self,
            done: false,
        })
    }

    pub fn begin_grouped(&self) -> Result<(), DbError> {
        self.backend.borrow_mut().begin_grouped()
    }

    pub fn end_grouped(&self, sync: bool) -> Result<(), DbError> {
        self.backend.borrow_mut().end_grouped(sync)
    }

    pub fn changed_elsewhere(&self) -> Result<bool, DbError> {
        self.backend.borrow_mut().changed_elsewhere()
    }

    /// Runs `f` on the SQLite connection, if this is one.
    pub fn with_sqlite<T>(&self, f: impl FnOnce(&rusqlite::Connection) -> T) -> Option<T> {
        self.backend.borrow().sqlite().map(f)
    }
}

/// A statement bound to its connection.
pub struct Statement<'a> {
    db: &'a Db,
    sql: &'a str,
}

impl Statement<'_> {
    pub fn execute(&mut self, params: impl Params) -> Result<usize, DbError> {
        self.db.execute(self.sql, params)
    }

    pub fn query_row<T>(
        &mut self,
        params: impl Params,
        f: impl FnOnce(&Row) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        self.db.query_row(self.sql, params, f)
    }

    pub fn query_map<T>(
        &mut self,
        params: impl Params,
        f: impl FnMut(&Row) -> Result<T, DbError>,
    ) -> Result<std::vec::IntoIter<Result<T, DbError>>, DbError> {
        self.db.query_map(self.sql, params, f)
    }

    pub fn exists(&mut self, params: impl Params) -> Result<bool, DbError> {
        Ok(!self.db.query_rows(self.sql, params)?.is_empty())
    }
}

/// A write transaction; dropping it without [`Transaction::commit`] rolls it back.
pub struct Transaction<'a> {
    db: &'a Db,
    done: bool,
}

impl Transaction<'_> {
    /// Commits; when that fails the transaction is rolled back as it is dropped, so the
    /// connection is ready for the next one.
    pub fn commit(mut self) -> Result<(), DbError> {
        self.db.backend.borrow_mut().commit()?;
        self.done = true;
        self.db.in_transaction.set(false);
        Ok(())
    }
}

impl std::ops::Deref for Transaction<'_> {
    type Target = Db;
    fn deref(&self) -> &Db {
        self.db
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.db.in_transaction.set(false);
            if let Err(e) = self.db.backend.borrow_mut().rollback() {
                tracing::error!(error = %e, "rolling back a relay transaction failed");
            }
        }
    }
}

/// `.optional()` on a single-row answer, as in rusqlite.
pub trait OptionalExtension<T> {
    fn optional(self) -> Result<Option<T>, DbError>;
}

impl<T> OptionalExtension<T> for Result<T, DbError> {
    fn optional(self) -> Result<Option<T>, DbError> {
        match self {
            Ok(value) => Ok(Some(value)),
            Err(DbError::NoRow) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Parameters for a statement, as rusqlite's `params!`.
macro_rules! params {
    () => { &[] as &[&dyn $crate::db::ToValue] };
    ($($param:expr),+ $(,)?) => {
        &[$(&$param as &dyn $crate::db::ToValue),+] as &[&dyn $crate::db::ToValue]
    };
}
pub(crate) use params;
