use super::postgres::{testing, PostgresBackend};
use super::sqlite::SqliteBackend;
use super::*;

const TABLE: &str = "CREATE TABLE t (id INTEGER PRIMARY KEY, user TEXT, data BLOB, n INTEGER)";
const PG_TABLE: &str =
    "CREATE TABLE t (id BIGINT PRIMARY KEY, \"user\" TEXT, data BYTEA, n BIGINT);
    CREATE TABLE durability_barrier (id BIGINT PRIMARY KEY, value BIGINT NOT NULL);
    CREATE TABLE writer_lock (id BIGINT PRIMARY KEY); INSERT INTO writer_lock VALUES (1)";

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

#[test]
fn text_is_never_bound_where_postgres_expects_a_number() {
    let Some(db) = postgres("db_text_as_number") else {
        return;
    };
    let refused = db
        .execute("INSERT INTO t (id, n) VALUES (?1, ?2)", params![1i64, "12"])
        .unwrap_err();
    assert!(
        refused.to_string().contains("text cannot be bound"),
        "{refused}"
    );
}

#[test]
fn a_commit_that_fails_is_rolled_back_and_the_next_transaction_starts() {
    let sqlite = sqlite();
    sqlite
        .execute_batch(
            "PRAGMA foreign_keys = ON;
             CREATE TABLE parent (id INTEGER PRIMARY KEY);
             CREATE TABLE child (id INTEGER PRIMARY KEY,
                 parent INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)",
        )
        .unwrap();
    let postgres = postgres("db_failed_commit");
    if let Some(db) = &postgres {
        db.execute_batch(
            "CREATE TABLE parent (id BIGINT PRIMARY KEY);
             CREATE TABLE child (id BIGINT PRIMARY KEY,
                 parent BIGINT REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)",
        )
        .unwrap();
    }
    for db in std::iter::once(&sqlite).chain(&postgres) {
        let tx = db.transaction().unwrap();
        tx.execute("INSERT INTO child (id, parent) VALUES (1, 99)", ())
            .unwrap();
        assert!(tx.commit().is_err(), "a dangling reference was committed");
        let tx = db
            .transaction()
            .expect("a new transaction after a failed commit");
        tx.execute("INSERT INTO parent (id) VALUES (99)", ())
            .unwrap();
        tx.execute("INSERT INTO child (id, parent) VALUES (2, 99)", ())
            .unwrap();
        tx.commit().unwrap();
        let children: i64 = db
            .query_row("SELECT COUNT(*) FROM child", (), |r| r.get(0))
            .unwrap();
        assert_eq!(children, 1, "only the second transaction's child is kept");
    }
}

/// Has the server end `db`'s connection, and runs one statement that finds it gone (the
/// next runs on a new connection); returns the ended connection's process id.
fn end_connection_from_the_server(db: &Db) -> i64 {
    let pid: i64 = db
        .query_row("SELECT pg_backend_pid()::BIGINT", (), |r| r.get(0))
        .unwrap();
    let mut other = super::pg_connect::client(&testing::server().unwrap()).unwrap();
    other
        .execute("SELECT pg_terminate_backend($1::BIGINT::INT)", &[&pid])
        .unwrap();
    let _: Result<i64, _> = db.query_row("SELECT 1::BIGINT", (), |r| r.get(0));
    pid
}

#[test]
fn a_postgres_connection_the_server_ended_is_opened_again() {
    let Some(db) = postgres("db_reconnect") else {
        return;
    };
    let pid = end_connection_from_the_server(&db);
    let pid_now: i64 = db
        .query_row("SELECT pg_backend_pid()::BIGINT", (), |r| r.get(0))
        .expect("a new connection");
    assert_ne!(pid_now, pid);
    db.execute("INSERT INTO t (id, n) VALUES (?1, ?2)", params![1i64, 2i64])
        .expect("the schema is the same on the new connection");
}

#[test]
fn a_group_commit_whose_connection_was_replaced_before_its_flush_fails() {
    let Some(db) = postgres("db_lost_group") else {
        return;
    };
    db.begin_grouped().unwrap();
    let tx = db.transaction().unwrap();
    tx.execute("INSERT INTO t (id, n) VALUES (1, 1)", ())
        .unwrap();
    tx.commit().unwrap();
    end_connection_from_the_server(&db);
    // The next request of the group runs on a new connection, which cannot flush what
    // the old one committed.
    let tx = db.transaction().expect("a transaction on a new connection");
    tx.execute("INSERT INTO t (id, n) VALUES (2, 2)", ())
        .unwrap();
    tx.commit().unwrap();
    let failed = db.end_grouped(true).unwrap_err();
    assert!(failed.to_string().contains("lost"), "{failed}");
    db.begin_grouped().unwrap();
    db.end_grouped(true).expect("the next group commit goes on");
}

#[test]
fn a_role_without_rights_to_the_tables_cannot_hold_the_writers_back() {
    let Some(db) = postgres("db_intruder") else {
        return;
    };
    let server = testing::server().unwrap();
    let mut admin = super::pg_connect::client(&server).unwrap();
    admin
        .batch_execute(
            "DO $$ BEGIN CREATE ROLE intruder LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
             GRANT USAGE ON SCHEMA db_intruder TO intruder",
        )
        .unwrap();
    let (scheme, rest) = server.split_once("://").unwrap();
    let host = rest.split_once('@').map_or(rest, |(_, host)| host);
    let as_intruder = format!("{scheme}://intruder@{host}");
    let mut intruder =
        super::pg_connect::client(&testing::same_schema(&as_intruder, "db_intruder")).unwrap();
    let who: String = intruder
        .query_one("SELECT current_user::TEXT", &[])
        .unwrap()
        .get(0);
    assert_eq!(who, "intruder");
    // The advisory lock relays once took, and the row they take now.
    intruder
        .batch_execute("SELECT pg_advisory_lock(7887400049205215233)")
        .unwrap();
    intruder.batch_execute("BEGIN").unwrap();
    let refused = intruder
        .batch_execute("SELECT id FROM writer_lock WHERE id = 1 FOR UPDATE")
        .unwrap_err();
    assert!(
        refused.to_string().contains("permission denied")
            || format!("{refused:?}").contains("42501"),
        "{refused:?}"
    );
    let (done, finished) = std::sync::mpsc::channel();
    let url = testing::same_schema(&server, "db_intruder");
    std::thread::spawn(move || {
        let db = Db::new(Box::new(PostgresBackend::connect(&url).unwrap()));
        let tx = db.transaction().unwrap();
        tx.execute("INSERT INTO t (id, n) VALUES (1, 1)", ())
            .unwrap();
        let _ = done.send(tx.commit().is_ok());
    });
    let committed = finished
        .recv_timeout(std::time::Duration::from_secs(15))
        .expect("a relay's write waited on a lock another role held");
    assert!(committed);
    drop(db);
}

#[test]
fn relays_refuse_tables_another_role_made_and_start_whatever_advisory_locks_are_held() {
    let Some(url) = testing::fresh_schema("db_squatted") else {
        eprintln!("{}", testing::MISSING);
        return;
    };
    let blobs = std::env::temp_dir().join("muster-squatted-blobs");
    let server = testing::server().unwrap();
    let mut admin = super::pg_connect::client(&server).unwrap();
    admin
        .batch_execute(
            "DO $$ BEGIN CREATE ROLE squatter; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
             CREATE TABLE db_squatted.writer_lock (id BIGINT PRIMARY KEY);
             ALTER TABLE db_squatted.writer_lock OWNER TO squatter",
        )
        .unwrap();
    let refused = crate::Relay::open_postgres(&url, String::new(), blobs.clone())
        .err()
        .expect("a relay took a table another role made");
    assert!(
        refused
            .to_string()
            .contains("writer_lock (owned by squatter)"),
        "{refused}"
    );
    admin
        .batch_execute("DROP TABLE db_squatted.writer_lock")
        .unwrap();
    crate::Relay::open_postgres(&url, String::new(), blobs.clone()).unwrap();
    // Every advisory lock a relay ever used, held by someone else.
    admin
        .batch_execute(
            "SELECT pg_advisory_lock(7887400049205215233), pg_advisory_lock(7887400049205215234)",
        )
        .unwrap();
    let (done, opened) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(crate::Relay::open_postgres(&url, String::new(), blobs).is_ok());
    });
    assert!(opened
        .recv_timeout(std::time::Duration::from_secs(15))
        .expect("a relay's start waited on an advisory lock"));
}
