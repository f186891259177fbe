//! Pushed delivery: the relay pushes a subscribed connection its group messages, never
//! one before a message the connection was not handed; a device never takes a pushed
//! message past one it failed to store.

use crate::rogue::Rogue;
use muster_e2e::{group_id, Org};
use muster_net::RelayConnection;
use muster_proto::{Delivery, Push, Request, Response};
use std::time::Duration;

async fn next_push(conn: &RelayConnection) -> Push {
    tokio::time::timeout(Duration::from_secs(10), conn.push_handle().next_push())
        .await
        .expect("a push within 10 seconds")
        .expect("the connection stays up")
}

async fn fetch(conn: &RelayConnection) -> Vec<Delivery> {
    match conn.request(&Request::Fetch { limit: 500 }).await.unwrap() {
        Response::Deliveries(d) => d,
        other => panic!("unexpected answer to a fetch: {other:?}"),
    }
}

async fn ack(conn: &RelayConnection, deliveries: &[Delivery]) {
    let items = deliveries.iter().map(Delivery::ack).collect();
    assert_eq!(
        conn.request(&Request::Ack { items }).await.unwrap(),
        Response::Ok
    );
}

fn seqs(deliveries: &[Delivery]) -> Vec<u64> {
    deliveries
        .iter()
        .filter_map(|d| match d {
            Delivery::Group { seq, .. } => Some(*seq),
            Delivery::Welcome { .. } => None,
        })
        .collect()
}

/// Takes pushes until `count` group messages came; a wake-up meanwhile fails the test.
async fn pushed(conn: &RelayConnection, count: usize) -> Vec<Delivery> {
    let mut got = Vec::new();
    while seqs(&got).len() < count {
        match next_push(conn).await {
            Push::Deliveries { deliveries, .. } => got.extend(deliveries),
            other => panic!("expected pushed messages, got {other:?}"),
        }
    }
    got
}

#[test]
fn a_subscribed_device_is_pushed_what_a_fetch_would_bring_and_woken_across_a_commit() {
    let org = Org::new("push-order");
    let bob = org.enrol("bob");
    org.enrol("carol");
    org.admin
        .ok(&["group", "create", "ops", "--members", "bob"]);
    let ops = group_id(&org.admin, "ops");
    let rogue = Rogue::open(&bob);
    let session = rogue.session();
    let conn = session.connection();
    assert_eq!(
        session.run(conn.request(&Request::Subscribe)).unwrap(),
        Response::Ok
    );

    // Before a fetch has handed bob anything, a message wakes him: it is not pushed.
    org.admin.ok(&["send", "ops", "one"]);
    assert_eq!(session.run(next_push(conn)), Push::Wake);
    let first = session.run(fetch(conn));
    session.run(ack(conn, &first));
    let handed = *seqs(&first).last().expect("the fetch brought `one`");

    // After a complete fetch, each new message is pushed: exactly what a fetch brings.
    org.admin.ok(&["send", "ops", "two"]);
    org.admin.ok(&["send", "ops", "three"]);
    let pushes = session.run(pushed(conn, 2));
    assert!(seqs(&pushes).iter().all(|&s| s > handed), "{pushes:?}");
    let fetched = session.run(fetch(conn));
    assert_eq!(
        pushes, fetched,
        "the pushed messages are what a fetch returns"
    );
    session.run(ack(conn, &fetched));
    assert!(pushes
        .iter()
        .all(|d| matches!(d, Delivery::Group { group_id, .. } if *group_id == ops)));

    // A commit is not pushed, so the message after it is not either: bob is woken and
    // fetches both, in order.
    org.admin.ok(&["group", "add", "ops", "carol"]);
    org.admin.ok(&["send", "ops", "four"]);
    let before = *seqs(&fetched).last().unwrap();
    let mut caught_up = Vec::new();
    session.run(async {
        while seqs(&caught_up).len() < 2 {
            match next_push(conn).await {
                Push::Wake => caught_up.extend(fetch(conn).await),
                Push::Deliveries { deliveries, .. } => {
                    panic!("pushed across a commit bob was never handed: {deliveries:?}")
                }
                Push::Changed => {}
            }
        }
    });
    assert!(
        seqs(&caught_up).len() >= 2,
        "the commit and `four`: {caught_up:?}"
    );
    assert!(seqs(&caught_up).windows(2).all(|w| w[0] < w[1]));
    assert!(seqs(&caught_up)[0] > before);
    session.run(ack(conn, &caught_up));

    // That fetch was complete: pushing resumes after it.
    let last = *seqs(&caught_up).last().unwrap();
    org.admin.ok(&["send", "ops", "five"]);
    let resumed = session.run(pushed(conn, 1));
    assert!(seqs(&resumed)[0] > last);
}

#[test]
fn a_device_never_takes_a_pushed_message_past_one_it_failed_to_store() {
    let org = Org::new("push-gap");
    let bob = org.enrol("bob");
    org.admin
        .ok(&["group", "create", "ops", "--members", "bob"]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut engine =
        muster_engine::Engine::open_with_key(&bob.home, Some(&bob.store_key())).unwrap();
    let mut session = runtime
        .block_on(muster_driver::Session::start(&mut engine))
        .unwrap();
    assert!(runtime.block_on(session.subscribe()));
    runtime.block_on(session.sync(&mut engine)).unwrap();

    // Bob's store refuses one message, as a full disk would.
    let store = bob.open_store();
    store
        .execute_batch(
            "CREATE TRIGGER refuse_poison BEFORE INSERT ON messages WHEN NEW.body LIKE '%poison%'
             BEGIN SELECT RAISE(ABORT, 'disk full'); END;",
        )
        .unwrap();
    let wait_and_take = |session: &mut muster_driver::Session,
                         engine: &mut muster_engine::Engine| {
        runtime.block_on(async {
            let woke = session.wake(Some(Duration::from_secs(10))).await;
            assert_eq!(woke, muster_driver::Wake::Pushed);
            session.on_wake(engine).await
        })
    };
    org.admin.ok(&["send", "ops", "poison"]);
    assert!(wait_and_take(&mut session, &mut engine).is_err());
    // The next message is pushed too; taking it would skip `poison` for good.
    org.admin.ok(&["send", "ops", "after"]);
    let taken = wait_and_take(&mut session, &mut engine);
    assert!(
        taken.is_err(),
        "a pushed message was taken past one the device failed to store"
    );

    store.execute_batch("DROP TRIGGER refuse_poison").unwrap();
    runtime.block_on(session.sync(&mut engine)).unwrap();
    runtime.block_on(session.close());
    let texts: Vec<String> = engine
        .read("ops", 10)
        .unwrap()
        .into_iter()
        .filter(|m| m.kind == "text")
        .map(|m| m.text)
        .collect();
    assert_eq!(texts, ["poison", "after"]);
}
