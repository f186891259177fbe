//! Messages for some members only (receipts): who fetches them, who is woken, and how
//! they leave the relay.

use super::*;

/// Sends a message bound (in its authenticated data) to `bound`, asking the relay to
/// route it to `to` (`None`: a plain `Send`).
fn send_bound(
    relay: &mut Relay,
    dev: &Device,
    group: &mut MlsGroup,
    client_id: &[u8],
    bound: &[&str],
    to: Option<&[&str]>,
) -> crate::Outcome {
    let owned = |users: &[&str]| users.iter().map(|u| u.to_string()).collect::<Vec<_>>();
    if !bound.is_empty() {
        group.set_aad(muster_proto::directed_aad(&owned(bound)));
    }
    let msg = group
        .create_message(&dev.provider, &dev.signer, b"receipt")
        .unwrap();
    let group_id = group.group_id().as_slice().to_vec();
    let (message, client_id) = (bytes(&msg), client_id.to_vec());
    let request = match to {
        Some(to) => Request::SendTo {
            group_id,
            message,
            client_id,
            to: owned(to),
        },
        None => Request::Send {
            group_id,
            message,
            client_id,
        },
    };
    relay.handle(&dev.session, request)
}

fn send_to(
    relay: &mut Relay,
    dev: &Device,
    group: &mut MlsGroup,
    client_id: &[u8],
    to: &[&str],
) -> crate::Outcome {
    send_bound(relay, dev, group, client_id, to, Some(to))
}

#[test]
fn a_message_for_some_users_reaches_only_their_devices_and_still_leaves_the_relay() {
    let mut w = World::new();
    let bob = w.enrol("bob");
    let carol = w.enrol("carol");
    let (mut alice_group, mut joined) = w.group_with(&[&bob, &carol]);
    for device in [&w.admin, &bob, &carol] {
        fetch_and_ack(&mut w.relay, device);
    }
    let stored = |w: &World| w.relay.stats().unwrap().stored_messages;
    let alice = w.admin.session.user.clone();

    send(&mut w.relay, &w.admin, &mut alice_group, b"one", b"a1");
    assert_eq!(fetch_and_ack(&mut w.relay, &bob), 1);
    assert_eq!(fetch_and_ack(&mut w.relay, &carol), 1);

    // Bob's receipt is for alice: only her device is woken, and carol never fetches it,
    // from memory or from SQLite.
    let outcome = send_to(&mut w.relay, &bob, &mut joined[0], b"r1", &[&alice]);
    assert!(matches!(outcome.response, Response::Stored { .. }));
    assert_eq!(
        outcome.wake.into_iter().collect::<Vec<_>>(),
        [w.admin.session.device_id.clone()]
    );
    assert_eq!(fetch(&mut w.relay, &carol.session).len(), 0);
    w.relay.forget_memory();
    assert_eq!(fetch(&mut w.relay, &carol.session).len(), 0);
    assert_eq!(fetch_and_ack(&mut w.relay, &w.admin), 1);

    // Carol acknowledging what she got after it takes her past it, so it goes.
    send(&mut w.relay, &w.admin, &mut alice_group, b"two", b"a2");
    assert_eq!(fetch_and_ack(&mut w.relay, &bob), 1);
    assert_eq!(fetch_and_ack(&mut w.relay, &carol), 1);
    assert_eq!(stored(&w), 0);

    // A receipt right after the newest message carol has: her acknowledgement of that
    // message takes her past the receipt as well, so nothing waits on her, whether the
    // relay still holds the group's latest messages in memory or not.
    for round in 0..2u8 {
        send(
            &mut w.relay,
            &w.admin,
            &mut alice_group,
            b"three",
            &[b'a', round],
        );
        send_to(
            &mut w.relay,
            &bob,
            &mut joined[0],
            &[b'r', round],
            &[&alice],
        );
        if round == 1 {
            w.relay.forget_memory();
        }
        assert_eq!(fetch_and_ack(&mut w.relay, &carol), 1);
        assert_eq!(fetch_and_ack(&mut w.relay, &bob), 1);
        assert_eq!(fetch_and_ack(&mut w.relay, &w.admin), 1);
        assert_eq!(stored(&w), 0, "round {round}: the receipt waited for carol");
        assert_eq!(queued_bytes(&w.relay, &bob), 0);
    }
}

#[test]
fn a_message_goes_to_some_members_only_as_its_sender_bound_it() {
    let mut w = World::new();
    let bob = w.enrol("bob");
    let carol = w.enrol("carol");
    let (_, mut joined) = w.group_with(&[&bob, &carol]);
    fetch_and_ack(&mut w.relay, &bob);
    let before = w.relay.stats().unwrap().stored_messages;
    let alice = w.admin.session.user.clone();
    let g = &mut joined[0];
    let refusals = [
        // Bound to everyone (nothing bound), routed to alice alone.
        send_bound(&mut w.relay, &bob, g, b"x1", &[], Some(&[&alice])),
        // Bound to alice, routed to everyone.
        send_bound(&mut w.relay, &bob, g, b"x2", &[&alice], None),
        // Bound to alice and carol, routed to alice alone.
        send_bound(
            &mut w.relay,
            &bob,
            g,
            b"x3",
            &[&alice, "carol"],
            Some(&[&alice]),
        ),
    ];
    for outcome in refusals {
        assert_eq!(refused(outcome), ErrorCode::BadRequest);
    }
    assert_eq!(w.relay.stats().unwrap().stored_messages, before);
}

#[test]
fn recipients_must_be_user_handles_and_a_few_hundred_at_most() {
    let mut w = World::new();
    let bob = w.enrol("bob");
    let (_, mut joined) = w.group_with(&[&bob]);
    fetch_and_ack(&mut w.relay, &bob);
    let before = w.relay.stats().unwrap().stored_messages;
    let none: [&str; 0] = [];
    let refusals = [
        send_to(&mut w.relay, &bob, &mut joined[0], b"x1", &none),
        send_to(&mut w.relay, &bob, &mut joined[0], b"x2", &["Not A Handle"]),
        send_to(
            &mut w.relay,
            &bob,
            &mut joined[0],
            b"x3",
            &vec!["alice"; muster_proto::MAX_RECIPIENT_USERS + 1],
        ),
    ];
    for outcome in refusals {
        assert_eq!(refused(outcome), ErrorCode::BadRequest);
    }
    assert_eq!(w.relay.stats().unwrap().stored_messages, before);
}
