//! `muster-relay migrate`: a SQLite relay's data moved into PostgreSQL serves on as before.

use super::*;

#[test]
fn a_sqlite_relay_moved_into_postgres_serves_the_same_queues_groups_and_identity() {
    let Some(url) = crate::db::postgres::testing::fresh_schema("migrate_suite") else {
        eprintln!("{}", crate::db::postgres::testing::MISSING);
        return;
    };
    let mut w = World::new();
    if w.relay.is_postgres() {
        return;
    }
    let bob = w.enrol("bob");
    let (mut alice_group, _) = w.group_with(&[&bob]);
    fetch_and_ack(&mut w.relay, &bob);
    for i in 0..3 {
        let outcome = send(
            &mut w.relay,
            &w.admin,
            &mut alice_group,
            format!("before the move {i}").as_bytes(),
            format!("m{i}").as_bytes(),
        );
        assert!(matches!(outcome.response, Response::Stored { .. }));
    }
    let waiting = fetch(&mut w.relay, &bob.session);
    assert_eq!(waiting.len(), 3);
    let stats = w.relay.stats().unwrap();

    let migrated = crate::migrate::sqlite_to_postgres(
        &w._dir.0.join("relay.db"),
        &url,
        w._dir.0.join("blobs"),
        b"certificate",
        b"key",
    )
    .unwrap();
    let rows = |table: &str| {
        migrated
            .tables
            .iter()
            .find(|(t, _)| t == table)
            .map(|(_, n)| *n)
    };
    assert!(rows("messages") >= Some(3), "{migrated:?}");
    assert_eq!(rows("devices"), Some(2), "{migrated:?}");
    assert!(rows("openmls_group_data") > Some(0), "{migrated:?}");
    let again = crate::migrate::sqlite_to_postgres(
        &w._dir.0.join("relay.db"),
        &url,
        w._dir.0.join("blobs"),
        b"certificate",
        b"key",
    );
    assert!(
        again.is_err(),
        "a database holding a relay's data is not migrated into twice"
    );

    let mut moved = Relay::open_postgres(&url, "f".repeat(64), w._dir.0.join("blobs")).unwrap();
    assert_eq!(moved.stats().unwrap(), stats);
    assert_eq!(fetch(&mut moved, &bob.session), waiting);
    assert_eq!(
        moved.shared_identity(b"other", b"other").unwrap(),
        (b"certificate".to_vec(), b"key".to_vec()),
        "the old relay's certificate stays, so devices keep their pin"
    );
    // Sequence numbers and row ids go on after the moved ones.
    let outcome = send(
        &mut moved,
        &w.admin,
        &mut alice_group,
        b"after the move",
        b"m3",
    );
    assert!(
        matches!(outcome.response, Response::Stored { seq, .. } if seq > 3),
        "{outcome:?}"
    );
    assert_eq!(fetch(&mut moved, &bob.session).len(), 4);
    let token = moved.new_bootstrap_token();
    assert!(token.is_ok());
}
