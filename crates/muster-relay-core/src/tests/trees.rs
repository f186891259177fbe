//! Welcomes cut down to each new member's secrets, and ratchet trees kept for the joiners of
//! groups whose Welcomes leave the tree out.

use super::*;

fn welcome_of(deliveries: &[Delivery]) -> Vec<u8> {
    match deliveries.first() {
        Some(Delivery::Welcome { welcome, .. }) => welcome.clone(),
        other => panic!("expected a Welcome, got {other:?}"),
    }
}

fn secrets_in(welcome: &[u8]) -> usize {
    match MlsMessageIn::tls_deserialize_exact(welcome)
        .unwrap()
        .extract()
    {
        MlsMessageBodyIn::Welcome(w) => w.secrets().len(),
        _ => panic!("not a Welcome"),
    }
}

/// Alice adds `members` in one commit carrying their Welcome; returns its size.
fn add(w: &mut World, group: &mut MlsGroup, members: &[&Device]) -> usize {
    let kps = w.claim(members);
    let a = &w.admin;
    let (commit, welcome, _) = group.add_members(&a.provider, &a.signer, &kps).unwrap();
    let welcome = bytes(&welcome);
    ok(w.relay.handle(
        &a.session,
        Request::Commit {
            group_id: group.group_id().as_slice().to_vec(),
            commit: bytes(&commit),
            welcome: Some(welcome.clone()),
            group_info: None,
        },
    ));
    group.merge_pending_commit(&a.provider).unwrap();
    welcome.len()
}

#[test]
fn each_added_device_gets_a_welcome_with_only_its_own_secrets() {
    let mut w = World::new();
    let (bob, carol) = (w.enrol("bob"), w.enrol("carol"));
    let mut group = w.new_group(&config_with(GroupPolicy::default()));
    let whole = add(&mut w, &mut group, &[&bob, &carol]);
    let mut seen = Vec::new();
    for m in [&bob, &carol] {
        let deliveries = fetch(&mut w.relay, &m.session);
        let welcome = welcome_of(&deliveries);
        assert_eq!(secrets_in(&welcome), 1, "{}", m.cert.body.user);
        assert!(welcome.len() < whole, "{} < {whole}", welcome.len());
        let joined = join_from(m, &welcome, None).unwrap();
        assert_eq!(joined.epoch(), group.epoch());
        seen.push(welcome);
    }
    assert_ne!(seen[0], seen[1]);
}

/// A group whose Welcomes leave the tree out: alice adds `first`, then `second` before
/// `first` fetches its Welcome. Returns the group, its id and the epoch `first` joins.
fn moved_on_before_first_joined(
    w: &mut World,
    first: &Device,
    second: &Device,
) -> (MlsGroup, Vec<u8>, u64) {
    let mut group = w.new_group(&config_with_tree(GroupPolicy::default(), false));
    let gid = group.group_id().as_slice().to_vec();
    add(w, &mut group, &[first]);
    let first_epoch = group.epoch().as_u64();
    add(w, &mut group, &[second]);
    (group, gid, first_epoch)
}

#[test]
fn a_welcome_without_the_tree_is_joined_with_the_tree_the_relay_kept_for_its_epoch() {
    let mut w = World::new();
    let (bob, carol, dave) = (w.enrol("bob"), w.enrol("carol"), w.enrol("dave"));
    // The group moves on before bob fetches his Welcome: his epoch's tree is still kept.
    let (group, gid, bob_epoch) = moved_on_before_first_joined(&mut w, &bob, &carol);
    let carol_epoch = group.epoch().as_u64();
    let bob_welcome = welcome_of(&fetch(&mut w.relay, &bob.session));

    // A relay handing out another epoch's tree (or any tree but the signed one) is caught
    // by the joiner: the tree hash does not match the GroupInfo its adder signed.
    let later = ratchet_tree(&mut w.relay, &carol.session, &gid, carol_epoch).unwrap();
    let err = join_from(&bob, &bob_welcome, Some(&later)).unwrap_err();
    assert!(!err.is_empty());
    let bob_welcome_again = welcome_of(&fetch(&mut w.relay, &bob.session));
    assert_eq!(bob_welcome, bob_welcome_again);
    // (openmls took bob's KeyPackage while trying; a fresh device state would retry.)

    // Only a device holding a Welcome to that epoch, or a member asking for the current
    // epoch, gets a tree.
    assert_eq!(
        ratchet_tree(&mut w.relay, &dave.session, &gid, carol_epoch).unwrap_err(),
        ErrorCode::NotMember
    );
    assert_eq!(
        ratchet_tree(&mut w.relay, &dave.session, &gid, bob_epoch).unwrap_err(),
        ErrorCode::Forbidden
    );
    assert_eq!(
        ratchet_tree(&mut w.relay, &carol.session, &gid, bob_epoch).unwrap_err(),
        ErrorCode::Forbidden
    );
    let tree = ratchet_tree(&mut w.relay, &bob.session, &gid, bob_epoch).unwrap();
    assert_ne!(tree, later);

    let carol_deliveries = fetch(&mut w.relay, &carol.session);
    let carol_group = join_from(&carol, &welcome_of(&carol_deliveries), Some(&later)).unwrap();
    assert_eq!(carol_group.epoch(), group.epoch());
    ack_all(&mut w.relay, &carol.session, &carol_deliveries);

    // Once bob has taken his Welcome and the group moved on, his epoch's tree is gone.
    let bob_deliveries = fetch(&mut w.relay, &bob.session);
    ack_all(&mut w.relay, &bob.session, &bob_deliveries);
    assert_eq!(
        ratchet_tree(&mut w.relay, &bob.session, &gid, bob_epoch).unwrap_err(),
        ErrorCode::Forbidden
    );
}

#[test]
fn a_joiner_with_the_right_tree_joins_a_group_that_moved_on() {
    let mut w = World::new();
    let (bob, carol, dave) = (w.enrol("bob"), w.enrol("carol"), w.enrol("dave"));
    let (mut group, gid, bob_epoch) = moved_on_before_first_joined(&mut w, &bob, &carol);
    let deliveries = fetch(&mut w.relay, &bob.session);
    let tree = ratchet_tree(&mut w.relay, &bob.session, &gid, bob_epoch).unwrap();
    let joined = join_from(&bob, &welcome_of(&deliveries), Some(&tree)).unwrap();
    assert_eq!(joined.epoch().as_u64(), bob_epoch);
    let joined = w.add_and_join(&mut group, &[&dave], true);
    assert_eq!(joined[0].epoch(), group.epoch());
}

#[test]
fn a_group_id_longer_than_any_client_makes_is_refused() {
    let mut w = World::new();
    let a = &w.admin;
    let group = MlsGroup::new_with_group_id(
        &a.provider,
        &a.signer,
        &config(),
        GroupId::from_slice(&[7; muster_proto::MAX_GROUP_ID + 1]),
        a.credential(),
    )
    .unwrap();
    let outcome = w.relay.handle(&a.session, a.create_group_request(&group));
    assert_eq!(refused(outcome), ErrorCode::InvalidMessage);
}

/// How many ratchet trees the relay keeps.
fn kept_trees(w: &World) -> i64 {
    w.relay
        .db()
        .query_row("SELECT COUNT(*) FROM group_trees", (), |r| r.get(0))
        .unwrap()
}

#[test]
fn a_welcome_never_taken_expires_with_its_tree_and_a_revoked_devices_go_at_once() {
    let mut w = World::new();
    let (bob, carol, dave) = (w.enrol("bob"), w.enrol("carol"), w.enrol("dave"));
    let mut group = w.new_group(&config_with_tree(GroupPolicy::default(), false));
    add(&mut w, &mut group, &[&bob]);
    add(&mut w, &mut group, &[&carol]);
    add(&mut w, &mut group, &[&dave]);
    // Bob's and carol's epochs are behind: their trees are kept for their Welcomes alone.
    assert_eq!(kept_trees(&w), 3);

    // Carol is revoked: her Welcome and the tree only it kept go with her.
    let revocation = w.root.sign_revocation(revoking(&w, "carol", &carol));
    ok(w.relay
        .handle(&w.admin.session, Request::Revoke { revocation }));
    assert_eq!(kept_trees(&w), 2);

    // Bob never comes: past the retention his Welcome and its tree go too; the current
    // epoch's tree (dave's) stays.
    w.relay
        .db()
        .execute(
            "UPDATE welcomes SET stored_at = stored_at - ?1 WHERE device_id = ?2",
            crate::db::params![
                muster_proto::MESSAGE_RETENTION_SECS as i64 + 1,
                bob.session.device_id
            ],
        )
        .unwrap();
    w.relay.collect_expired().unwrap();
    assert_eq!(kept_trees(&w), 1);
    assert!(!fetch(&mut w.relay, &bob.session)
        .iter()
        .any(|d| matches!(d, Delivery::Welcome { .. })));
    assert!(!welcome_of(&fetch(&mut w.relay, &dave.session)).is_empty());
}

#[test]
fn a_tree_larger_than_one_answer_comes_whole_in_chunks() {
    let mut w = World::new();
    let bob = w.enrol("bob");
    let mut group = w.new_group(&config_with_tree(GroupPolicy::default(), false));
    let gid = group.group_id().as_slice().to_vec();
    add(&mut w, &mut group, &[&bob]);
    let epoch = group.epoch().as_u64();
    let big: Vec<u8> = (0..muster_proto::RATCHET_TREE_CHUNK * 5 / 2)
        .map(|i| (i % 251) as u8)
        .collect();
    w.relay
        .db()
        .execute(
            "UPDATE group_trees SET data = ?2 WHERE group_id = ?1",
            crate::db::params![gid, big],
        )
        .unwrap();
    assert_eq!(
        ratchet_tree(&mut w.relay, &bob.session, &gid, epoch).unwrap(),
        big
    );
}
