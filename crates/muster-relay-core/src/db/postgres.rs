//! The PostgreSQL backend: several relays in front of one database.
//!
//! Writers are serialised across every relay by a lock on the one row of `writer_lock`,
//! taken by each write transaction before it reads anything: the relay's rules (a commit
//! must name the group's current epoch, a sequence number is the last one plus one) read
//! state and then write it, and the lock gives them the same single-writer world
//! SQLite's `BEGIN IMMEDIATE` gives one relay. Of two commits for the same epoch arriving
//! at two relays at once, the second to get the lock sees the first one's new epoch and
//! is refused. A per-group lock would let unrelated groups write in parallel, but
//! requests touch several groups and devices at once (a revocation, a membership
//! change), so one lock is the simple rule that cannot deadlock. It is a row lock in a
//! table of the relays' own, not an advisory lock, because locking a row takes the right
//! to update the table and any role may take any advisory lock; and every wait for it is
//! bounded ([`SESSION_SETTINGS`]).

use super::{dialect, Backend, DbError, Row, Value};
use bytes::BytesMut;
use postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use std::collections::HashMap;

/// Takes the writers' lock; it returns the row, or nothing if the table lost it.
const TAKE_WRITER_LOCK: &str = "SELECT id FROM writer_lock WHERE id = 1 FOR UPDATE";

/// Set on every connection: a writer waits for the lock 20 seconds at most (the request
/// fails and is tried again), and a transaction left idle (its relay stuck or cut off)
/// is ended by the server after 60, which frees the lock.
const SESSION_SETTINGS: &str =
    "SET lock_timeout = '20s'; SET idle_in_transaction_session_timeout = '60s'";

/// One connection to the shared database.
pub struct PostgresBackend {
    url: String,
    client: postgres::Client,
    statements: HashMap<String, postgres::Statement>,
    /// Inside a group commit: transactions commit without waiting for their WAL flush.
    grouped: bool,
    in_transaction: bool,
    /// The connection failed and did not answer a check: replaced between transactions.
    broken: bool,
    /// A transaction was committed in this group commit and not flushed yet.
    unflushed: bool,
    /// The connection was replaced with commits of this group commit unflushed: they may
    /// be lost, so the group commit fails.
    lost_unflushed: bool,
}

impl PostgresBackend {
    /// Connects to `url` (`postgres://user@host:port/db` or key=value settings).
    pub fn connect(url: &str) -> Result<Self, DbError> {
        let client = Self::open(url)?;
        Ok(Self {
            url: url.to_owned(),
            client,
            statements: HashMap::new(),
            grouped: false,
            in_transaction: false,
            broken: false,
            unflushed: false,
            lost_unflushed: false,
        })
    }

    fn open(url: &str) -> Result<postgres::Client, DbError> {
        let mut client = super::pg_connect::client(url)?;
        client.batch_execute(SESSION_SETTINGS)?;
        Ok(client)
    }

    /// After the server restarted or the link broke, a new connection, between
    /// transactions (one that broke inside a transaction fails it, and the next starts
    /// afresh).
    fn reconnect_if_lost(&mut self) -> Result<(), DbError> {
        if (self.broken || self.client.is_closed()) && !self.in_transaction {
            tracing::warn!("the database connection was lost; connecting again");
            self.client = Self::open(&self.url)?;
            self.statements.clear();
            self.broken = false;
            // Inside a group commit even a request that wrote nothing may have read
            // another relay's unflushed commit, which the server's restart may have undone.
            self.lost_unflushed |= std::mem::take(&mut self.unflushed) || self.grouped;
        }
        Ok(())
    }

    /// `result`, noting a connection that no longer answers.
    fn checked<T>(&mut self, result: Result<T, postgres::Error>) -> Result<T, DbError> {
        result.map_err(|e| {
            let severe = e.as_db_error().is_none_or(|db| {
                matches!(
                    db.parsed_severity(),
                    Some(postgres::error::Severity::Fatal | postgres::error::Severity::Panic)
                )
            });
            if e.is_closed()
                || (severe
                    && self
                        .client
                        .is_valid(std::time::Duration::from_secs(2))
                        .is_err())
            {
                self.broken = true;
            }
            e.into()
        })
    }

    fn statement(&mut self, sql: &str) -> Result<postgres::Statement, DbError> {
        self.reconnect_if_lost()?;
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let translated = dialect::to_postgres(sql);
        let prepared = self.client.prepare(&translated);
        let statement = match self.checked(prepared) {
            Ok(statement) => statement,
            Err(DbError::Postgres(e)) => {
                return Err(DbError::Prepare {
                    sql: translated,
                    detail: super::postgres_detail(&e),
                })
            }
            Err(e) => return Err(e),
        };
        if self.statements.len() >= 512 {
            self.statements.clear();
        }
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    fn durability_barrier(&mut self) -> Result<(), DbError> {
        // `on` whatever the role, the database or the URL set: this is the flush.
        let done = self.client.batch_execute(
            "BEGIN; SET LOCAL synchronous_commit = on; SET LOCAL statement_timeout = '30s';
             INSERT INTO durability_barrier (id, value) VALUES (1, 1)
             ON CONFLICT (id) DO UPDATE SET value = durability_barrier.value + 1;
             COMMIT",
        );
        if let Err(e) = self.checked(done) {
            if !self.broken {
                let _ = self.client.batch_execute("ROLLBACK");
            }
            return Err(e);
        }
        Ok(())
    }
}

/// A value bound as the type PostgreSQL inferred for its parameter.
#[derive(Debug)]
struct Bind<'a>(&'a Value<'a>);

impl ToSql for Bind<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self.0 {
            Value::Null => Ok(IsNull::Yes),
            Value::Integer(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                Type::BOOL => (*i != 0).to_sql(ty, out),
                Type::TEXT | Type::VARCHAR => i.to_string().as_str().to_sql(ty, out),
                _ => Err(format!("an integer cannot be bound as {ty}").into()),
            },
            Value::Text(t) => match *ty {
                Type::BYTEA => t.as_bytes().to_sql(ty, out),
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                    t.as_ref().to_sql(ty, out)
                }
                _ => Err(format!("text cannot be bound as {ty}").into()),
            },
            Value::Blob(b) => match *ty {
                Type::BYTEA => b.as_ref().to_sql(ty, out),
                _ => Err(format!("a blob cannot be bound as {ty}").into()),
            },
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

fn read(row: &postgres::Row, i: usize) -> Result<Value<'static>, DbError> {
    let ty = row.columns()[i].type_().clone();
    let value = match ty {
        Type::INT8 => row.try_get::<_, Option<i64>>(i)?.map(Value::Integer),
        Type::INT4 => row
            .try_get::<_, Option<i32>>(i)?
            .map(|v| Value::Integer(v.into())),
        Type::INT2 => row
            .try_get::<_, Option<i16>>(i)?
            .map(|v| Value::Integer(v.into())),
        Type::BOOL => row
            .try_get::<_, Option<bool>>(i)?
            .map(|v| Value::Integer(v.into())),
        Type::BYTEA => row
            .try_get::<_, Option<Vec<u8>>>(i)?
            .map(|v| Value::Blob(v.into())),
        Type::TEXT | Type::VARCHAR | Type::NAME | Type::BPCHAR => row
            .try_get::<_, Option<String>>(i)?
            .map(|v| Value::Text(v.into())),
        _ => {
            return Err(DbError::Unsupported(
                "a column type other than integer, boolean, text or bytea",
            ))
        }
    };
    Ok(value.unwrap_or(Value::Null))
}

impl Backend for PostgresBackend {
    fn execute(&mut self, sql: &str, params: &[Value<'_>]) -> Result<u64, DbError> {
        let statement = self.statement(sql)?;
        let binds: Vec<Bind<'_>> = params.iter().map(Bind).collect();
        let refs: Vec<&(dyn ToSql + Sync)> = binds.iter().map(|b| b as _).collect();
        let done = self.client.execute(&statement, &refs);
        self.checked(done)
    }

    fn query(&mut self, sql: &str, params: &[Value<'_>]) -> Result<Vec<Row>, DbError> {
        let statement = self.statement(sql)?;
        let binds: Vec<Bind<'_>> = params.iter().map(Bind).collect();
        let refs: Vec<&(dyn ToSql + Sync)> = binds.iter().map(|b| b as _).collect();
        let rows = self.client.query(&statement, &refs);
        self.checked(rows)?
            .iter()
            .map(|row| {
                (0..row.len())
                    .map(|i| read(row, i))
                    .collect::<Result<_, _>>()
                    .map(Row::new)
            })
            .collect()
    }

    fn execute_batch(&mut self, sql: &str) -> Result<(), DbError> {
        self.reconnect_if_lost()?;
        let done = self.client.batch_execute(&dialect::to_postgres(sql));
        self.checked(done)
    }

    fn begin_write(&mut self) -> Result<(), DbError> {
        self.reconnect_if_lost()?;
        // Inside a group commit the flush is left to the barrier that ends it; `LOCAL`
        // keeps that from outliving the transaction.
        let begin = if self.grouped {
            "BEGIN; SET LOCAL synchronous_commit = off"
        } else {
            "BEGIN"
        };
        self.in_transaction = true;
        let locked = match self.client.batch_execute(begin) {
            Ok(()) => self.client.query(TAKE_WRITER_LOCK, &[]),
            Err(e) => Err(e),
        };
        let locked = self.checked(locked).and_then(|rows| match rows.len() {
            1 => Ok(()),
            _ => Err(DbError::Link(
                "the database has no writer_lock row: the relays' tables were altered".into(),
            )),
        });
        if let Err(e) = locked {
            self.rollback()?;
            return Err(e);
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<(), DbError> {
        let committed = self.client.batch_execute("COMMIT");
        self.checked(committed)?;
        self.in_transaction = false;
        self.unflushed |= self.grouped;
        Ok(())
    }

    fn rollback(&mut self) -> Result<(), DbError> {
        self.in_transaction = false;
        if self.broken || self.client.is_closed() {
            // The server rolled it back as the connection ended.
            return Ok(());
        }
        let done = self.client.batch_execute("ROLLBACK");
        self.checked(done)
    }

    fn begin_grouped(&mut self) -> Result<(), DbError> {
        self.grouped = true;
        Ok(())
    }

    fn end_grouped(&mut self, sync: bool) -> Result<(), DbError> {
        self.grouped = false;
        if std::mem::take(&mut self.lost_unflushed) {
            self.unflushed = false;
            return Err(DbError::Link(
                "the connection to the database was lost before this group commit was \
                 flushed; what it stored may be lost"
                    .into(),
            ));
        }
        if sync || self.unflushed {
            self.unflushed = false;
            // A commit that waits for its WAL flush makes every earlier commit durable.
            self.durability_barrier()?;
        }
        Ok(())
    }

    fn changed_elsewhere(&mut self) -> Result<bool, DbError> {
        // Other relays write all the time; what is kept in memory is read again.
        Ok(true)
    }

    fn is_postgres(&self) -> bool {
        true
    }
}

/// A throwaway database for tests: `MUSTER_TEST_POSTGRES` names a server (set by
/// `tests/with-postgres`); each test gets its own schema in it.
#[cfg(any(test, feature = "testing"))]
pub mod testing {
    /// Why a PostgreSQL test did not run.
    pub const MISSING: &str =
        "SKIPPED: MUSTER_TEST_POSTGRES is not set (run the tests through tests/with-postgres)";

    /// The server's URL, if tests may use one.
    pub fn server() -> Option<String> {
        std::env::var("MUSTER_TEST_POSTGRES")
            .ok()
            .filter(|s| !s.is_empty())
    }

    /// A URL whose connections use schema `name`, emptied first.
    pub fn fresh_schema(name: &str) -> Option<String> {
        let server = server()?;
        let mut client = crate::db::pg_connect::client(&server)
            .unwrap_or_else(|e| panic!("cannot reach the test PostgreSQL at {server}: {e}"));
        client
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}"
            ))
            .expect("create a test schema");
        Some(same_schema(&server, name))
    }

    /// A URL whose connections use schema `name` as it is.
    pub fn same_schema(server: &str, name: &str) -> String {
        let separator = if server.contains('?') { '&' } else { '?' };
        format!("{server}{separator}options=-csearch_path%3D{name}")
    }
}
