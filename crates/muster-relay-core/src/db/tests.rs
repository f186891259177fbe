use super::postgres::{testing, PostgresBackend};
use super::sqlite::SqliteBackend;
use super::*;

const TABLE: &str = "CREATE TABLE t (id INTEGER PRIMARY KEY, user TEXT, data BLOB, n INTEGER)";
const PG_TABLE: &str =
    "CREATE TABLE t (id BIGINT PRIMARY KEY, \"user\" TEXT, data BYTEA, n BIGINT);
    CREATE TABLE durability_barrier (id BIGINT PRIMARY KEY, value BIGINT NOT NULL)";

fn sqlite() -> Db {
    let backend = SqliteBackend::with_connection(rusqlite::Connection::open_in_memory().unwrap());
    let db = Db::new(Box::new(backend));
    db.execute_batch(TABLE).unwrap();
    db
}

fn postgres(schema: &str) -> Option<Db> {
    let Some(url) = testing::fresh_schema(schema) else {
        eprintln!("{}", testing::MISSING);
        return None;
    };
    let db = Db::new(Box::new(PostgresBackend::connect(&url).unwrap()));
    db.execute_batch(PG_TABLE).unwrap();
    Some(db)
}

fn both(schema: &str, check: impl Fn(&Db)) {
    check(&sqlite());
    if let Some(db) = postgres(schema) {
        check(&db);
    }
}

#[test]
fn values_round_trip_on_both_backends() {
    both("db_round_trip", |db| {
        db.execute(
            "INSERT INTO t (id, user, data, n) VALUES (?1, ?2, ?3, ?4)",
            params![1i64, "alice", vec![0u8, 255, 7], Option::<i64>::None],
        )
        .unwrap();
        let (user, data, n): (String, Vec<u8>, Option<i64>) = db
            .query_row("SELECT user, data, n FROM t WHERE id = ?1", [1i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!((user.as_str(), data, n), ("alice", vec![0, 255, 7], None));
        let missing = db
            .query_row("SELECT n FROM t WHERE id = ?1", [2i64], |r| {
                r.get::<_, i64>(0)
            })
            .optional()
            .unwrap();
        assert_eq!(missing, None);
        let found = db
            .query_row(
                "SELECT instr(char(10) || user || char(10), ?1), MAX(id, 5) FROM t",
                ["\nalice\n"],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
            )
            .unwrap();
        assert_eq!(found, (1, 5));
    });
}

#[test]
fn a_dropped_transaction_rolls_back_and_a_committed_one_stays() {
    both("db_transactions", |db| {
        {
            let tx = db.transaction().unwrap();
            tx.execute("INSERT INTO t (id, n) VALUES (1, 1)", ())
                .unwrap();
        }
        assert!(!db.prepare("SELECT 1 FROM t").unwrap().exists(()).unwrap());
        let tx = db.transaction().unwrap();
        tx.execute("INSERT INTO t (id, n) VALUES (2, 2)", ())
            .unwrap();
        tx.commit().unwrap();
        assert_eq!(db.total_changes(), 2);
        let n: i64 = db.query_row("SELECT n FROM t", (), |r| r.get(0)).unwrap();
        assert_eq!(n, 2);
    });
}

#[test]
fn a_type_mismatch_names_the_column() {
    both("db_types", |db| {
        db.execute("INSERT INTO t (id, user) VALUES (1, 'bob')", ())
            .unwrap();
        let error = db
            .query_row("SELECT id, user FROM t", (), |r| r.get::<_, i64>(1))
            .unwrap_err();
        assert!(error.to_string().contains("column 1"), "{error}");
    });
}

/// Two relays' write transactions never interleave: the second waits for the first, so
/// a read-then-write rule (the next sequence number, the current epoch) holds.
#[test]
fn write_transactions_on_postgres_are_serialised_across_connections() {
    let Some(first) = postgres("db_writer_lock") else {
        return;
    };
    first
        .execute("INSERT INTO t (id, n) VALUES (1, 0)", ())
        .unwrap();
    let url = testing::same_schema(&testing::server().unwrap(), "db_writer_lock");
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let db = Db::new(Box::new(PostgresBackend::connect(&url).unwrap()));
                for _ in 0..25 {
                    let tx = db.transaction().unwrap();
                    let n: i64 = tx
                        .query_row("SELECT n FROM t WHERE id = 1", (), |r| r.get(0))
                        .unwrap();
                    std::thread::yield_now();
                    tx.execute("UPDATE t SET n = ?1 WHERE id = 1", [n + 1])
                        .unwrap();
                    tx.commit().unwrap();
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    let n: i64 = first
        .query_row("SELECT n FROM t WHERE id = 1", (), |r| r.get(0))
        .unwrap();
    assert_eq!(n, 100, "lost updates: write transactions interleaved");
}
