//! The shared rules, checked against real MLS commits and proposals made by members of
//! in-memory groups and processed by another member, as clients and the relay do.

use muster_proto::{
    device_id_for, now_unix, Certificate, CertificateBody, GroupPolicy, OrgDescriptor, OrgRootKey,
    Profile, Role, GROUP_POLICY_EXTENSION,
};
use muster_rules::{check_commit, check_proposal, Context, Refusal, LAPSE_GRACE_SECS};
use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;

const SUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

struct Member {
    provider: OpenMlsRustCrypto,
    signer: SignatureKeyPair,
    cert: Certificate,
}

struct World {
    root: OrgRootKey,
    org: OrgDescriptor,
}

impl World {
    fn new() -> Self {
        let root = OrgRootKey::generate();
        let org = OrgDescriptor {
            org_id: "org".into(),
            name: "Acme".into(),
            root_public_key: root.public_key(),
        };
        Self { root, org }
    }

    fn member(&self, user: &str, roles: Vec<Role>) -> Member {
        self.member_until(user, roles, now_unix() + 100_000)
    }

    fn member_until(&self, user: &str, roles: Vec<Role>, not_after: u64) -> Member {
        let signer = SignatureKeyPair::new(SignatureScheme::ED25519).unwrap();
        let mut cert = self.cert(user, signer.public(), roles);
        cert = self.root.sign(CertificateBody {
            not_after,
            ..cert.body
        });
        Member {
            provider: OpenMlsRustCrypto::default(),
            signer,
            cert,
        }
    }

    fn cert(&self, user: &str, key: &[u8], roles: Vec<Role>) -> Certificate {
        let now = now_unix();
        self.root.sign(CertificateBody {
            org_id: self.org.org_id.clone(),
            user: user.into(),
            device_id: device_id_for(key),
            device_key: key.to_vec(),
            profile: Profile {
                display_name: user.into(),
                ..Default::default()
            },
            roles,
            not_before: now - 60,
            not_after: now + 3600,
        })
    }
}

impl Member {
    fn credential(&self) -> CredentialWithKey {
        with_cert(&self.cert, self.signer.public())
    }

    fn key_package(&self) -> KeyPackage {
        KeyPackage::builder()
            .leaf_node_capabilities(capabilities())
            .build(SUITE, &self.provider, &self.signer, self.credential())
            .unwrap()
            .key_package()
            .clone()
    }
}

fn with_cert(cert: &Certificate, key: &[u8]) -> CredentialWithKey {
    CredentialWithKey {
        credential: BasicCredential::new(cert.to_bytes()).into(),
        signature_key: key.to_vec().into(),
    }
}

fn capabilities() -> Capabilities {
    Capabilities::builder()
        .extensions(vec![ExtensionType::Unknown(GROUP_POLICY_EXTENSION)])
        .build()
}

fn policy_extensions(policy: GroupPolicy) -> Extensions<GroupContext> {
    waiting_extensions(policy, &[])
}

/// The extensions of a group with `policy` that lists `waiting` as waiting to join.
fn waiting_extensions(policy: GroupPolicy, waiting: &[&str]) -> Extensions<GroupContext> {
    let waiting: Vec<String> = waiting.iter().map(|u| u.to_string()).collect();
    Extensions::from_vec(vec![
        Extension::RequiredCapabilities(RequiredCapabilitiesExtension::new(
            &[ExtensionType::Unknown(GROUP_POLICY_EXTENSION)],
            &[],
            &[],
        )),
        Extension::Unknown(
            GROUP_POLICY_EXTENSION,
            UnknownExtension(policy.payload_with(&waiting)),
        ),
    ])
    .unwrap()
}

/// A group of `creator` with `others`, each holding their own state.
fn group(creator: &Member, others: &[&Member], policy: GroupPolicy) -> (MlsGroup, Vec<MlsGroup>) {
    group_with(creator, others, policy_extensions(policy))
}

/// A group of `creator` with `others` and the given context extensions.
fn group_with(
    creator: &Member,
    others: &[&Member],
    extensions: Extensions<GroupContext>,
) -> (MlsGroup, Vec<MlsGroup>) {
    let config = MlsGroupCreateConfig::builder()
        .ciphersuite(SUITE)
        .use_ratchet_tree_extension(true)
        .capabilities(capabilities())
        .with_group_context_extensions(extensions)
        .build();
    let mut group = MlsGroup::new(
        &creator.provider,
        &creator.signer,
        &config,
        creator.credential(),
    )
    .unwrap();
    let kps: Vec<KeyPackage> = others.iter().map(|m| m.key_package()).collect();
    let (_, welcome, _) = group
        .add_members(&creator.provider, &creator.signer, &kps)
        .unwrap();
    group.merge_pending_commit(&creator.provider).unwrap();
    let bytes = welcome.tls_serialize_detached().unwrap();
    let joined = others
        .iter()
        .map(|m| {
            let MlsMessageBodyIn::Welcome(welcome) = MlsMessageIn::tls_deserialize_exact(&bytes)
                .unwrap()
                .extract()
            else {
                panic!("welcome")
            };
            StagedWelcome::new_from_welcome(
                &m.provider,
                &MlsGroupJoinConfig::builder()
                    .use_ratchet_tree_extension(true)
                    .build(),
                welcome,
                None,
            )
            .unwrap()
            .into_group(&m.provider)
            .unwrap()
        })
        .collect();
    (group, joined)
}

/// An external commit by `joiner` into `group`, from a GroupInfo its member `by` signed.
fn external_join(by: &Member, group: &MlsGroup, joiner: &Member) -> Vec<u8> {
    let info = group
        .export_group_info(by.provider.crypto(), &by.signer, true)
        .unwrap();
    let MlsMessageBodyIn::GroupInfo(info) =
        MlsMessageIn::tls_deserialize_exact(info.tls_serialize_detached().unwrap())
            .unwrap()
            .extract()
    else {
        panic!("group info")
    };
    let (_, bundle) = MlsGroup::external_commit_builder()
        .build_group(&joiner.provider, info, joiner.credential())
        .unwrap()
        .leaf_node_parameters(
            LeafNodeParameters::builder()
                .with_capabilities(capabilities())
                .build(),
        )
        .load_psks(joiner.provider.storage())
        .unwrap()
        .build(
            joiner.provider.rand(),
            joiner.provider.crypto(),
            &joiner.signer,
            |_| true,
        )
        .unwrap()
        .finalize(&joiner.provider)
        .unwrap();
    bytes_of(&bundle.into_messages().0)
}

/// `message` as the member owning `group` receives it, checked by the shared rules.
fn judge(
    world: &World,
    receiver: &Member,
    group: &mut MlsGroup,
    bytes: Vec<u8>,
    revoked: &[String],
) -> Result<(), Refusal> {
    judge_at(world, receiver, group, bytes, revoked, now_unix(), &[])
}

/// `judge`, at time `now`, by a checker that holds valid certificates for `renewed`.
fn judge_at(
    world: &World,
    receiver: &Member,
    group: &mut MlsGroup,
    bytes: Vec<u8>,
    revoked: &[String],
    now: u64,
    renewed: &[String],
) -> Result<(), Refusal> {
    let message = MlsMessageIn::tls_deserialize_exact(&bytes)
        .unwrap()
        .try_into_protocol_message()
        .unwrap();
    let members: Vec<Member_> = group.members().collect();
    let context = group.extensions().clone();
    let processed = group.process_message(&receiver.provider, message).unwrap();
    let is_revoked = |c: &Certificate| revoked.contains(&c.body.device_id);
    let is_renewed = |d: &str| renewed.iter().any(|r| r == d);
    let ctx = Context {
        org: &world.org,
        now,
        revoked: &is_revoked,
        renewed: &is_renewed,
    };
    let sender = processed.sender().clone();
    match processed.into_content() {
        ProcessedMessageContent::StagedCommitMessage(staged) => {
            check_commit(&ctx, &members, &context, &sender, &staged)
        }
        ProcessedMessageContent::ProposalMessage(proposal) => {
            check_proposal(&ctx, &members, &context, &sender, proposal.proposal())
        }
        _ => panic!("expected a handshake"),
    }
}

type Member_ = openmls::prelude::Member;

fn bytes_of(message: &MlsMessageOut) -> Vec<u8> {
    message.tls_serialize_detached().unwrap()
}

fn leaf_of(group: &MlsGroup, cert: &Certificate) -> LeafNodeIndex {
    group
        .members()
        .find(|m| m.signature_key == cert.body.device_key)
        .unwrap()
        .index
}

#[test]
fn in_a_managed_group_only_admins_add_and_remove_people() {
    let w = World::new();
    let alice = w.member("alice", vec![Role::Admin, Role::Member]);
    let bob = w.member("bob", vec![Role::Member]);
    let carol = w.member("carol", vec![Role::Member]);
    let dave = w.member("dave", vec![Role::Member]);
    let managed = GroupPolicy {
        managed: true,
        archived: false,
    };
    let (mut alices, mut joined) = group(&alice, &[&bob, &carol], managed);
    let mut carols = joined.pop().unwrap();
    let mut bobs = joined.pop().unwrap();
    let (commit, _, _) = bobs
        .add_members(&bob.provider, &bob.signer, &[dave.key_package()])
        .unwrap();
    assert!(matches!(
        judge(&w, &carol, &mut carols, bytes_of(&commit), &[]),
        Err(Refusal::Managed {
            what: "add people",
            ..
        })
    ));
    bobs.clear_pending_commit(bob.provider.storage()).unwrap();
    let leaf = leaf_of(&bobs, &carol.cert);
    let (commit, _, _) = bobs
        .remove_members(&bob.provider, &bob.signer, &[leaf])
        .unwrap();
    assert!(matches!(
        judge(&w, &alice, &mut alices, bytes_of(&commit), &[]),
        Err(Refusal::Managed {
            what: "remove people",
            ..
        })
    ));
    bobs.clear_pending_commit(bob.provider.storage()).unwrap();
    // Removing a revoked device is every member's duty.
    let (commit, _, _) = bobs
        .remove_members(&bob.provider, &bob.signer, &[leaf])
        .unwrap();
    assert_eq!(
        judge(
            &w,
            &alice,
            &mut alices,
            bytes_of(&commit),
            std::slice::from_ref(&carol.cert.body.device_id)
        ),
        Ok(())
    );
}

#[test]
fn a_lapsed_device_is_every_members_to_remove_after_the_grace_unless_renewed() {
    let w = World::new();
    let alice = w.member("alice", vec![Role::Admin, Role::Member]);
    let bob = w.member("bob", vec![Role::Member]);
    // A lifetime long enough for the full grace.
    let expires = now_unix() + 10 * LAPSE_GRACE_SECS;
    let carol = w.member_until("carol", vec![Role::Member], expires);
    assert_eq!(muster_rules::lapse_grace(&carol.cert), LAPSE_GRACE_SECS);
    let managed = GroupPolicy {
        managed: true,
        archived: false,
    };
    let (mut alices, mut joined) = group(&alice, &[&bob, &carol], managed);
    let mut bobs = joined.remove(0);
    let leaf = leaf_of(&bobs, &carol.cert);
    let carols_device = std::slice::from_ref(&carol.cert.body.device_id);
    let mut at = |now: u64, renewed: &[String]| {
        let (commit, _, _) = bobs
            .remove_members(&bob.provider, &bob.signer, &[leaf])
            .unwrap();
        let verdict = judge_at(
            &w,
            &alice,
            &mut alices,
            bytes_of(&commit),
            &[],
            now,
            renewed,
        );
        bobs.clear_pending_commit(bob.provider.storage()).unwrap();
        verdict
    };
    // Within the grace after expiry, carol is still a member like any other.
    assert!(matches!(
        at(expires + LAPSE_GRACE_SECS - 5, &[]),
        Err(Refusal::Managed { .. })
    ));
    assert_eq!(at(expires + LAPSE_GRACE_SECS + 5, &[]), Ok(()));
    // A checker holding carol's renewed certificate refuses the removal.
    assert!(matches!(
        at(expires + LAPSE_GRACE_SECS + 5, carols_device),
        Err(Refusal::Managed { .. })
    ));
}

#[test]
fn an_admins_commit_cannot_launder_a_members_policy_proposal() {
    let w = World::new();
    let alice = w.member("alice", vec![Role::Admin, Role::Member]);
    let bob = w.member("bob", vec![Role::Member]);
    let carol = w.member("carol", vec![Role::Member]);
    let (mut alices, mut joined) = group(&alice, &[&bob, &carol], GroupPolicy::default());
    let mut carols = joined.pop().unwrap();
    let mut bobs = joined.pop().unwrap();
    let managed = policy_extensions(GroupPolicy {
        managed: true,
        archived: false,
    });
    let (proposal, _) = bobs
        .propose_group_context_extensions(&bob.provider, managed, &bob.signer)
        .unwrap();
    let bytes = proposal.tls_serialize_detached().unwrap();
    // Alice's and carol's clients store it unchecked (as older clients did) and alice
    // commits it: the commit is refused for bob's proposal, whoever commits it.
    let message = MlsMessageIn::tls_deserialize_exact(&bytes)
        .unwrap()
        .try_into_protocol_message()
        .unwrap();
    let ProcessedMessageContent::ProposalMessage(queued) = alices
        .process_message(&alice.provider, message)
        .unwrap()
        .into_content()
    else {
        panic!("proposal")
    };
    alices
        .store_pending_proposal(alice.provider.storage(), *queued)
        .unwrap();
    let (commit, _, _) = alices
        .commit_to_pending_proposals(&alice.provider, &alice.signer)
        .unwrap();
    let message = MlsMessageIn::tls_deserialize_exact(&bytes)
        .unwrap()
        .try_into_protocol_message()
        .unwrap();
    let ProcessedMessageContent::ProposalMessage(queued) = carols
        .process_message(&carol.provider, message)
        .unwrap()
        .into_content()
    else {
        panic!("proposal")
    };
    carols
        .store_pending_proposal(carol.provider.storage(), *queued)
        .unwrap();
    assert!(matches!(
        judge(&w, &carol, &mut carols, bytes_of(&commit), &[]),
        Err(Refusal::Policy { by }) if by == "bob"
    ));
}

#[test]
fn an_update_must_keep_its_leafs_identity_and_revoked_senders_are_refused() {
    let w = World::new();
    let alice = w.member("alice", vec![Role::Admin, Role::Member]);
    let bob = w.member("bob", vec![Role::Member]);
    let carol = w.member("carol", vec![Role::Member]);
    let (_alices, mut joined) = group(&alice, &[&bob, &carol], GroupPolicy::default());
    let mut carols = joined.pop().unwrap();
    let mut bobs = joined.pop().unwrap();
    // Alice's certificate on bob's key.
    let params = LeafNodeParameters::builder()
        .with_credential_with_key(with_cert(&alice.cert, bob.signer.public()))
        .build();
    let (proposal, _) = bobs
        .propose_self_update(&bob.provider, &bob.signer, params)
        .unwrap();
    assert!(matches!(
        judge(&w, &carol, &mut carols, bytes_of(&proposal), &[]),
        Err(Refusal::Identity { .. })
    ));
    bobs.clear_pending_proposals(bob.provider.storage())
        .unwrap();
    // A certificate for bob's key naming another user, signed by the real root.
    let other = w.cert("mallory", bob.signer.public(), vec![Role::Admin]);
    let params = LeafNodeParameters::builder()
        .with_credential_with_key(with_cert(&other, bob.signer.public()))
        .build();
    let (proposal, _) = bobs
        .propose_self_update(&bob.provider, &bob.signer, params)
        .unwrap();
    assert!(matches!(
        judge(&w, &carol, &mut carols, bytes_of(&proposal), &[]),
        Err(Refusal::IdentityChange { .. })
    ));
    bobs.clear_pending_proposals(bob.provider.storage())
        .unwrap();
    // Bob's own older certificate (with the admin role he has since lost).
    let mut older = w
        .cert("bob", bob.signer.public(), vec![Role::Admin, Role::Member])
        .body;
    older.not_before -= 1000;
    let older = w.root.sign(older);
    let params = LeafNodeParameters::builder()
        .with_credential_with_key(with_cert(&older, bob.signer.public()))
        .build();
    let (proposal, _) = bobs
        .propose_self_update(&bob.provider, &bob.signer, params)
        .unwrap();
    assert!(matches!(
        judge(&w, &carol, &mut carols, bytes_of(&proposal), &[]),
        Err(Refusal::OlderCertificate { .. })
    ));
    bobs.clear_pending_proposals(bob.provider.storage())
        .unwrap();
    // Anything from a revoked device is refused.
    let leaf = leaf_of(&bobs, &carol.cert);
    let (proposal, _) = bobs
        .propose_remove_member(&bob.provider, &bob.signer, leaf)
        .unwrap();
    assert!(matches!(
        judge(
            &w,
            &carol,
            &mut carols,
            bytes_of(&proposal),
            std::slice::from_ref(&bob.cert.body.device_id)
        ),
        Err(Refusal::Revoked { .. })
    ));
}

#[test]
fn the_archive_stays_while_archived_and_strangers_cannot_join_from_outside() {
    let w = World::new();
    let alice = w.member("alice", vec![Role::Admin, Role::Member]);
    let bob = w.member("bob", vec![Role::Member]);
    let archive = w.member("archive", vec![Role::Archive]);
    let dave = w.member("dave", vec![Role::Member]);
    let archived = GroupPolicy {
        managed: false,
        archived: true,
    };
    let (mut alices, mut joined) = group(&alice, &[&bob, &archive], archived);
    joined.pop();
    let mut bobs = joined.pop().unwrap();
    let leaf = leaf_of(&bobs, &archive.cert);
    let (commit, _, _) = bobs
        .remove_members(&bob.provider, &bob.signer, &[leaf])
        .unwrap();
    assert!(matches!(
        judge(&w, &alice, &mut alices, bytes_of(&commit), &[]),
        Err(Refusal::ArchiveRemoval { .. })
    ));
    // Dave, never a member, joins by external commit from a GroupInfo.
    let by_dave = external_join(&alice, &alices, &dave);
    assert!(matches!(
        judge(&w, &alice, &mut alices, by_dave, &[]),
        Err(Refusal::Unsupported(_))
    ));
}

#[test]
fn people_waiting_to_join_come_in_from_outside_and_only_those_who_may_add_them_list_them() {
    let w = World::new();
    let alice = w.member("alice", vec![Role::Admin, Role::Member]);
    let bob = w.member("bob", vec![Role::Member]);
    let dave = w.member("dave", vec![Role::Member]);
    let erin = w.member("erin", vec![Role::Member]);
    let managed = GroupPolicy {
        managed: true,
        archived: false,
    };
    let (mut alices, mut joined) =
        group_with(&alice, &[&bob], waiting_extensions(managed, &["dave"]));
    let mut bobs = joined.pop().unwrap();

    // Dave, waiting, joins on his own; erin, not waiting, cannot.
    let by_dave = external_join(&bob, &bobs, &dave);
    assert_eq!(judge(&w, &alice, &mut alices, by_dave, &[]), Ok(()));
    let by_erin = external_join(&bob, &bobs, &erin);
    assert!(matches!(
        judge(&w, &alice, &mut alices, by_erin, &[]),
        Err(Refusal::Unsupported(_))
    ));

    // In a managed group a member neither lists nor strikes off someone not yet in.
    for (waiting, what) in [
        (vec!["dave", "erin"], "add people"),
        (vec![], "remove people"),
    ] {
        let (commit, _, _) = bobs
            .update_group_context_extensions(
                &bob.provider,
                waiting_extensions(managed, &waiting),
                &bob.signer,
            )
            .unwrap();
        assert!(
            matches!(
                judge(&w, &alice, &mut alices, bytes_of(&commit), &[]),
                Err(Refusal::Managed { what: w, .. }) if w == what
            ),
            "{what}"
        );
        bobs.clear_pending_commit(bob.provider.storage()).unwrap();
    }
    // Nor does the list open a back door to the policy.
    let (commit, _, _) = bobs
        .update_group_context_extensions(
            &bob.provider,
            waiting_extensions(GroupPolicy::default(), &["dave"]),
            &bob.signer,
        )
        .unwrap();
    assert!(matches!(
        judge(&w, &alice, &mut alices, bytes_of(&commit), &[]),
        Err(Refusal::Policy { .. })
    ));
    bobs.clear_pending_commit(bob.provider.storage()).unwrap();
    // The admin may.
    let (commit, _, _) = alices
        .update_group_context_extensions(
            &alice.provider,
            waiting_extensions(managed, &["erin"]),
            &alice.signer,
        )
        .unwrap();
    assert_eq!(judge(&w, &bob, &mut bobs, bytes_of(&commit), &[]), Ok(()));

    // In an open group any member lists someone, as they could add them.
    let (mut open_alices, mut joined) = group(&alice, &[&bob], GroupPolicy::default());
    let mut open_bobs = joined.pop().unwrap();
    let (commit, _, _) = open_bobs
        .update_group_context_extensions(
            &bob.provider,
            waiting_extensions(GroupPolicy::default(), &["erin"]),
            &bob.signer,
        )
        .unwrap();
    assert_eq!(
        judge(&w, &alice, &mut open_alices, bytes_of(&commit), &[]),
        Ok(())
    );
}

#[test]
fn a_bot_in_an_open_group_adds_removes_and_changes_nothing_but_sends_and_updates() {
    let w = World::new();
    let alice = w.member("alice", vec![Role::Admin, Role::Member]);
    let bob = w.member("bob", vec![Role::Member]);
    let pager = w.member("pager", vec![Role::Bot]);
    let dave = w.member("dave", vec![Role::Member]);
    let (mut alices, mut joined) = group(&alice, &[&bob, &pager], GroupPolicy::default());
    let mut pagers = joined.pop().unwrap();
    let mut bobs = joined.pop().unwrap();
    // A member of an open group may add dave; the bot may not.
    let (commit, _, _) = bobs
        .add_members(&bob.provider, &bob.signer, &[dave.key_package()])
        .unwrap();
    assert_eq!(
        judge(&w, &alice, &mut alices, bytes_of(&commit), &[]),
        Ok(())
    );
    bobs.clear_pending_commit(bob.provider.storage()).unwrap();
    let (commit, _, _) = pagers
        .add_members(&pager.provider, &pager.signer, &[dave.key_package()])
        .unwrap();
    assert!(matches!(
        judge(&w, &alice, &mut alices, bytes_of(&commit), &[]),
        Err(Refusal::Bot {
            what: "add people",
            ..
        })
    ));
    pagers
        .clear_pending_commit(pager.provider.storage())
        .unwrap();
    let leaf = leaf_of(&pagers, &bob.cert);
    let (commit, _, _) = pagers
        .remove_members(&pager.provider, &pager.signer, &[leaf])
        .unwrap();
    assert!(matches!(
        judge(&w, &alice, &mut alices, bytes_of(&commit), &[]),
        Err(Refusal::Bot {
            what: "remove people",
            ..
        })
    ));
    pagers
        .clear_pending_commit(pager.provider.storage())
        .unwrap();
    let (commit, _, _) = pagers
        .update_group_context_extensions(
            &pager.provider,
            waiting_extensions(GroupPolicy::default(), &["dave"]),
            &pager.signer,
        )
        .unwrap();
    assert!(matches!(
        judge(&w, &alice, &mut alices, bytes_of(&commit), &[]),
        Err(Refusal::Bot { .. })
    ));
    pagers
        .clear_pending_commit(pager.provider.storage())
        .unwrap();
    // Listed as waiting (it was added before it was ever online), it strikes off itself
    // alone.
    let listed = waiting_extensions(GroupPolicy::default(), &["pager", "dave"]);
    let (mut alices, mut joined) = group_with(&alice, &[&pager], listed);
    let mut pagers = joined.pop().unwrap();
    for (waiting, allowed) in [
        (vec!["dave"], true),
        (vec![], false),
        (vec!["pager"], false),
    ] {
        let (commit, _, _) = pagers
            .update_group_context_extensions(
                &pager.provider,
                waiting_extensions(GroupPolicy::default(), &waiting),
                &pager.signer,
            )
            .unwrap();
        let judged = judge(&w, &alice, &mut alices, bytes_of(&commit), &[]);
        assert_eq!(judged.is_ok(), allowed, "{waiting:?}: {judged:?}");
        pagers
            .clear_pending_commit(pager.provider.storage())
            .unwrap();
    }
    // Its own key update is a member's ordinary housekeeping.
    let (commit, _, _) = pagers
        .self_update(
            &pager.provider,
            &pager.signer,
            LeafNodeParameters::default(),
        )
        .unwrap()
        .into_contents();
    assert_eq!(
        judge(&w, &alice, &mut alices, bytes_of(&commit), &[]),
        Ok(())
    );
}
