//! Moving a relay's data from its SQLite file into a PostgreSQL database, so that an
//! organisation can put several relays in front of it without losing a message.

use crate::db::{params, Db, DbError, Value};
use crate::error::StoreError;
use crate::relay::Relay;
use std::path::{Path, PathBuf};

/// What a migration copied: each table with its row count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    pub tables: Vec<(String, u64)>,
}

/// Copies every table of the stopped relay whose database is `sqlite` into the (empty)
/// PostgreSQL database at `url`, in one transaction, with `cert`/`key` as the identity
/// every relay of the database presents (the old relay's, so devices keep their pin).
/// Refuses a database that already holds an organisation or devices.
pub fn sqlite_to_postgres(
    sqlite: &Path,
    url: &str,
    blob_dir: PathBuf,
    cert: &[u8],
    key: &[u8],
) -> Result<Migrated, StoreError> {
    if !sqlite.exists() {
        return Err(StoreError::Migration(format!(
            "no relay database at {}",
            sqlite.display()
        )));
    }
    // Opening brings an older relay's file up to the current schema first.
    let source = Relay::open(sqlite, String::new())?;
    let target = Relay::open_postgres(url, String::new(), blob_dir)?;
    let target = target.db();
    let held: i64 = target.query_row(
        "SELECT (SELECT COUNT(*) FROM meta) + (SELECT COUNT(*) FROM devices)",
        (),
        |r| r.get(0),
    )?;
    if held > 0 {
        return Err(StoreError::Migration(
            "the PostgreSQL database already holds a relay's data; migrate into an empty one"
                .into(),
        ));
    }
    let tables = source
        .db()
        .with_sqlite(|db| -> Result<Vec<String>, DbError> {
            let mut query = db.prepare(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
            )?;
            let names = query.query_map([], |r| r.get(0))?;
            Ok(names.collect::<Result<_, _>>()?)
        })
        .expect("Relay::open is SQLite")?;
    let tx = target.transaction()?;
    let mut migrated = Migrated { tables: Vec::new() };
    for table in tables {
        let columns = postgres_columns(&tx, &table)?;
        if columns.is_empty() {
            // Kept by SQLite only (openmls' own migration history, device-side tables).
            continue;
        }
        let copied = source
            .db()
            .with_sqlite(|db| copy_table(db, &tx, &table, &columns))
            .expect("Relay::open is SQLite")?;
        if columns.iter().any(|c| c == "id") && table != "durability_barrier" {
            tx.query_row(
                &format!(
                    "SELECT setval(pg_get_serial_sequence('{table}', 'id'), COALESCE(MAX(id), 0) + 1, false) FROM {table}"
                ),
                (),
                |_| Ok(()),
            )?;
        }
        migrated.tables.push((table, copied));
    }
    tx.execute(
        "INSERT INTO relay_identity (id, certificate, private_key) VALUES (1, ?1, ?2)
         ON CONFLICT (id) DO UPDATE SET certificate = excluded.certificate, private_key = excluded.private_key",
        params![cert, key],
    )?;
    tx.commit()?;
    Ok(migrated)
}

/// The columns `table` has in the PostgreSQL schema (none if it has no such table).
fn postgres_columns(db: &Db, table: &str) -> Result<Vec<String>, DbError> {
    db.query_map(
        "SELECT CAST(column_name AS TEXT) FROM information_schema.columns
         WHERE table_schema = current_schema() AND CAST(table_name AS TEXT) = ?1 ORDER BY ordinal_position",
        [table],
        |r| r.get(0),
    )?
    .collect()
}

/// Copies the rows of `table` (the columns both sides have) from SQLite into `target`.
fn copy_table(
    source: &rusqlite::Connection,
    target: &Db,
    table: &str,
    columns: &[String],
) -> Result<u64, DbError> {
    let present: Vec<String> = {
        let mut query = source.prepare("SELECT name FROM pragma_table_info(?1)")?;
        let names = query.query_map([table], |r| r.get::<_, String>(0))?;
        names
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|c| columns.contains(c))
            .collect()
    };
    let quoted: Vec<String> = present.iter().map(|c| format!("\"{c}\"")).collect();
    let select = format!("SELECT {} FROM \"{table}\"", quoted.join(", "));
    let placeholders: Vec<String> = (1..=present.len()).map(|i| format!("?{i}")).collect();
    let insert = format!(
        "INSERT INTO {table} ({}) VALUES ({})",
        quoted.join(", "),
        placeholders.join(", ")
    );
    let mut query = source.prepare(&select)?;
    let mut rows = query.query([])?;
    let mut copied = 0;
    while let Some(row) = rows.next()? {
        let mut values = Vec::with_capacity(present.len());
        for i in 0..present.len() {
            values.push(match row.get_ref(i)? {
                rusqlite::types::ValueRef::Null => Value::Null,
                rusqlite::types::ValueRef::Integer(v) => Value::Integer(v),
                rusqlite::types::ValueRef::Real(v) => Value::Integer(v as i64),
                rusqlite::types::ValueRef::Text(t) => {
                    Value::Text(String::from_utf8_lossy(t).into_owned().into())
                }
                rusqlite::types::ValueRef::Blob(b) => Value::Blob(b.to_vec().into()),
            });
        }
        // SQLite's own durability counter is an integer in a blob column; PostgreSQL
        // keeps its own (durability_barrier).
        if table == "meta" && values.first() == Some(&Value::Text("durability_barrier".into())) {
            continue;
        }
        let refs: Vec<&dyn crate::db::ToValue> = values
            .iter()
            .map(|v| v as &dyn crate::db::ToValue)
            .collect();
        target.execute(&insert, refs.as_slice())?;
        copied += 1;
    }
    Ok(copied)
}
