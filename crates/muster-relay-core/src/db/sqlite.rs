//! The embedded SQLite backend: one file, write-ahead log, durable commits.

use super::{Backend, DbError, Row, Value};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::Connection;
use std::path::Path;

/// One SQLite connection holding the relay's whole state.
pub struct SqliteBackend {
    connection: Connection,
    /// SQLite's count of changes made by other connections, as last seen.
    data_version: i64,
}

impl SqliteBackend {
    /// Opens (creating if needed) the database at `path`, tuned for the relay.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        let connection = Connection::open(path)?;
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        // WAL with synchronous=FULL: a transaction acknowledged to a client survives power loss.
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.pragma_update(None, "foreign_keys", "ON")?;
        // Hot pages stay in memory: 64 MiB of page cache, reads through a memory map.
        connection.pragma_update(None, "cache_size", -65536)?;
        connection.pragma_update(None, "mmap_size", 256 * 1024 * 1024)?;
        connection.set_prepared_statement_cache_capacity(128);
        Ok(Self::with_connection(connection))
    }

    pub fn with_connection(connection: Connection) -> Self {
        Self {
            connection,
            data_version: 0,
        }
    }

    pub fn connection_mut(&mut self) -> &mut Connection {
        &mut self.connection
    }

    /// A small write committed with `synchronous=FULL`: its fsync of the write-ahead log
    /// makes every transaction committed before it durable.
    fn sync_barrier(&self) -> Result<(), DbError> {
        self.connection.execute(
            "INSERT INTO meta (key, value) VALUES ('durability_barrier', 1)
             ON CONFLICT (key) DO UPDATE SET value = meta.value + 1",
            [],
        )?;
        Ok(())
    }
}

struct Bind<'a>(&'a Value<'a>);

impl rusqlite::ToSql for Bind<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self.0 {
            Value::Null => ValueRef::Null,
            Value::Integer(i) => ValueRef::Integer(*i),
            Value::Text(t) => ValueRef::Text(t.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

fn read(value: ValueRef<'_>) -> Value<'static> {
    match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Integer(i),
        // The relay stores no floating-point values; one written by hand reads truncated.
        ValueRef::Real(f) => Value::Integer(f as i64),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned().into()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec().into()),
    }
}

impl Backend for SqliteBackend {
    fn execute(&mut self, sql: &str, params: &[Value<'_>]) -> Result<u64, DbError> {
        let binds: Vec<Bind<'_>> = params.iter().map(Bind).collect();
        let mut statement = self.connection.prepare_cached(sql)?;
        Ok(statement.execute(rusqlite::params_from_iter(binds.iter()))? as u64)
    }

    fn query(&mut self, sql: &str, params: &[Value<'_>]) -> Result<Vec<Row>, DbError> {
        let binds: Vec<Bind<'_>> = params.iter().map(Bind).collect();
        let mut statement = self.connection.prepare_cached(sql)?;
        let columns = statement.column_count();
        let mut rows = statement.query(rusqlite::params_from_iter(binds.iter()))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let mut values = Vec::with_capacity(columns);
            for i in 0..columns {
                values.push(read(row.get_ref(i)?));
            }
            out.push(Row::new(values));
        }
        Ok(out)
    }

    fn execute_batch(&mut self, sql: &str) -> Result<(), DbError> {
        Ok(self.connection.execute_batch(sql)?)
    }

    fn begin_write(&mut self) -> Result<(), DbError> {
        Ok(self.connection.execute_batch("BEGIN IMMEDIATE")?)
    }

    fn commit(&mut self) -> Result<(), DbError> {
        Ok(self.connection.execute_batch("COMMIT")?)
    }

    fn rollback(&mut self) -> Result<(), DbError> {
        if self.connection.is_autocommit() {
            // A failed COMMIT may have rolled back already.
            return Ok(());
        }
        Ok(self.connection.execute_batch("ROLLBACK")?)
    }

    fn begin_grouped(&mut self) -> Result<(), DbError> {
        Ok(self
            .connection
            .pragma_update(None, "synchronous", "NORMAL")?)
    }

    fn end_grouped(&mut self, sync: bool) -> Result<(), DbError> {
        self.connection.pragma_update(None, "synchronous", "FULL")?;
        if sync {
            self.sync_barrier()?;
        }
        Ok(())
    }

    fn changed_elsewhere(&mut self) -> Result<bool, DbError> {
        let version: i64 = self
            .connection
            .query_row("PRAGMA data_version", [], |r| r.get(0))?;
        let changed = version != self.data_version;
        self.data_version = version;
        Ok(changed)
    }

    fn sqlite(&self) -> Option<&Connection> {
        Some(&self.connection)
    }
}
