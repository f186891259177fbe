//! Entry points for coverage-guided fuzzing (cargo feature `fuzzing`).
//!
//! A world of real members is built once: an organisation root, certificates, and an
//! open, a managed and an archived group of alice (admin), bob and carol. Each input
//! either drives bob's or alice's client, as a rogue member would, to build a commit, a
//! proposal or an application message from parts it picks (members added with valid,
//! foreign, revoked or expired certificates, removals, policy changes, leaf updates that
//! put on someone else's certificate), or is taken as raw bytes; either way it goes
//! through carol's real inbound path (MLS processing, the shared commit rules, content
//! applied to her store) inside transactions that are rolled back, so every input meets
//! the same world.

use crate::content::{Body, Envelope};
use crate::conversation::{self, Author, Origin};
use crate::engine::GroupState;
use crate::engine::{
    create_config, join_config, leaf_capabilities, receive_for_fuzzing, welcome_for_fuzzing,
    DeviceRow, SyncReport, CIPHERSUITE,
};
use crate::provider::Provider;
use crate::store::SCHEMA;
use muster_proto::{
    device_id_for, now_unix, Certificate, CertificateBody, GroupPolicy, OrgDescriptor, OrgRootKey,
    Profile, Role, GROUP_POLICY_EXTENSION,
};
use openmls::prelude::tls_codec::Serialize as _;
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::RustCrypto;
use openmls_traits::OpenMlsProvider;
use rusqlite::{params, Connection};
use std::sync::{LazyLock, Mutex};

/// One member's device: its store, key and certificate.
struct Party {
    db: Connection,
    signer: SignatureKeyPair,
    cert: Certificate,
}

impl Party {
    fn new(root: &OrgRootKey, org: &OrgDescriptor, user: &str, roles: Vec<Role>) -> Self {
        let mut db = Connection::open_in_memory().expect("in-memory store");
        db.execute_batch(SCHEMA).expect("schema");
        openmls_sqlite_storage::SqliteStorageProvider::<crate::provider::StoreCodec, _>::new(
            &mut db,
        )
        .run_migrations()
        .expect("openmls tables");
        let signer = SignatureKeyPair::new(SignatureScheme::ED25519).expect("key pair");
        signer
            .store(&crate::provider::Storage::new(&db))
            .expect("store key");
        let cert = certificate(root, org, user, signer.public(), roles, 3650 * 86_400);
        Self { db, signer, cert }
    }

    fn credential(&self) -> CredentialWithKey {
        credential_with(&self.cert, self.signer.public())
    }

    fn device(&self, org: &OrgDescriptor) -> DeviceRow {
        DeviceRow {
            relay: "127.0.0.1:1".into(),
            fingerprint: "00".repeat(32),
            org: org.clone(),
            user: self.cert.body.user.clone(),
            device_id: self.cert.body.device_id.clone(),
            device_key: self.cert.body.device_key.clone(),
            certificate: Some(self.cert.clone()),
            root_key: None,
        }
    }
}

fn certificate(
    root: &OrgRootKey,
    org: &OrgDescriptor,
    user: &str,
    key: &[u8],
    roles: Vec<Role>,
    lifetime: i64,
) -> Certificate {
    let now = now_unix() as i64;
    root.sign(CertificateBody {
        org_id: org.org_id.clone(),
        user: user.into(),
        device_id: device_id_for(key),
        device_key: key.to_vec(),
        profile: Profile {
            display_name: user.into(),
            ..Default::default()
        },
        roles,
        not_before: (now - 600).max(0) as u64,
        not_after: (now + lifetime).max(0) as u64,
    })
}

fn credential_with(cert: &Certificate, key: &[u8]) -> CredentialWithKey {
    CredentialWithKey {
        credential: BasicCredential::new(cert.to_bytes()).into(),
        signature_key: key.to_vec().into(),
    }
}

/// A KeyPackage of a throwaway device carrying `cert` (made for that device's key).
fn key_package(crypto: &RustCrypto, cert_for: impl FnOnce(&[u8]) -> Certificate) -> KeyPackage {
    let db = Connection::open_in_memory().expect("store");
    let mut db = db;
    openmls_sqlite_storage::SqliteStorageProvider::<crate::provider::StoreCodec, _>::new(&mut db)
        .run_migrations()
        .expect("openmls tables");
    let provider = Provider::new(crypto, &db);
    let signer = SignatureKeyPair::new(SignatureScheme::ED25519).expect("key pair");
    let cert = cert_for(signer.public());
    KeyPackage::builder()
        .leaf_node_capabilities(leaf_capabilities())
        .build(
            CIPHERSUITE,
            &provider,
            &signer,
            credential_with(&cert, signer.public()),
        )
        .expect("key package")
        .key_package()
        .clone()
}

struct World {
    crypto: RustCrypto,
    org: OrgDescriptor,
    admin: Party,
    rogue: Party,
    victim: Party,
    /// The open, managed and archived groups.
    groups: Vec<Vec<u8>>,
    /// KeyPackages to add: a valid member, one certified by another root, a revoked
    /// device's, and one whose certificate ran out.
    candidates: Vec<KeyPackage>,
    /// A certificate that ran out, of bob's own key.
    expired_rogue: Certificate,
}

static WORLD: LazyLock<Mutex<World>> = LazyLock::new(|| Mutex::new(World::new()));

impl World {
    fn new() -> Self {
        let crypto = RustCrypto::default();
        let root = OrgRootKey::generate();
        let org = OrgDescriptor {
            org_id: "fuzz-org".into(),
            name: "Fuzz".into(),
            root_public_key: root.public_key(),
        };
        let admin = Party::new(&root, &org, "alice", vec![Role::Admin, Role::Member]);
        let rogue = Party::new(&root, &org, "bob", vec![Role::Member]);
        let victim = Party::new(&root, &org, "carol", vec![Role::Member]);
        let archive_kp = key_package(&crypto, |k| {
            certificate(&root, &org, "archive", k, vec![Role::Archive], 86_400)
        });
        let mut groups = Vec::new();
        let policies = [
            GroupPolicy::default(),
            GroupPolicy {
                managed: true,
                archived: false,
            },
            GroupPolicy {
                managed: false,
                archived: true,
            },
        ];
        for (i, policy) in policies.into_iter().enumerate() {
            let gid = format!("fuzz-group-{i}").into_bytes();
            let mut members = vec![
                own_key_package(&crypto, &rogue),
                own_key_package(&crypto, &victim),
            ];
            if policy.archived {
                members.push(archive_kp.clone());
            }
            let provider = Provider::new(&crypto, &admin.db);
            let mut group = MlsGroup::new_with_group_id(
                &provider,
                &admin.signer,
                &create_config(policy, &[]).expect("config"),
                GroupId::from_slice(&gid),
                admin.credential(),
            )
            .expect("group");
            let (_, welcome, _) = group
                .add_members(&provider, &admin.signer, &members)
                .expect("add members");
            group.merge_pending_commit(&provider).expect("merge");
            let welcome = welcome.tls_serialize_detached().expect("welcome bytes");
            for party in [&rogue, &victim] {
                join(&crypto, party, &welcome);
                party
                    .db
                    .execute(
                        "INSERT INTO groups (group_id, name, state, created_at) VALUES (?1, ?2, ?3, 0)",
                        params![gid, format!("g{i}"), GroupState::Active],
                    )
                    .expect("group row");
            }
            groups.push(gid);
        }
        let revoked = key_package(&crypto, |k| {
            certificate(&root, &org, "eve", k, vec![Role::Member], 86_400)
        });
        let revoked_id = revoked_device_id(&revoked);
        victim
            .db
            .execute(
                "INSERT INTO revoked_devices (device_id, user) VALUES (?1, 'eve')",
                [&revoked_id],
            )
            .expect("revocation");
        let candidates = vec![
            key_package(&crypto, |k| {
                certificate(&root, &org, "dave", k, vec![Role::Member], 86_400)
            }),
            key_package(&crypto, |k| {
                certificate(
                    &OrgRootKey::generate(),
                    &org,
                    "alice",
                    k,
                    vec![Role::Admin],
                    86_400,
                )
            }),
            revoked,
            key_package(&crypto, |k| {
                certificate(&root, &org, "frank", k, vec![Role::Member], -60)
            }),
        ];
        let expired_rogue = certificate(
            &root,
            &org,
            "bob",
            rogue.signer.public(),
            vec![Role::Member],
            -60,
        );
        Self {
            crypto,
            org,
            admin,
            rogue,
            victim,
            groups,
            candidates,
            expired_rogue,
        }
    }
}

fn own_key_package(crypto: &RustCrypto, party: &Party) -> KeyPackage {
    let provider = Provider::new(crypto, &party.db);
    KeyPackage::builder()
        .leaf_node_capabilities(leaf_capabilities())
        .build(CIPHERSUITE, &provider, &party.signer, party.credential())
        .expect("key package")
        .key_package()
        .clone()
}

fn join(crypto: &RustCrypto, party: &Party, welcome: &[u8]) {
    use openmls::prelude::tls_codec::Deserialize as _;
    let provider = Provider::new(crypto, &party.db);
    let message = MlsMessageIn::tls_deserialize_exact(welcome).expect("welcome");
    let MlsMessageBodyIn::Welcome(welcome) = message.extract() else {
        panic!("not a welcome")
    };
    StagedWelcome::new_from_welcome(&provider, &join_config(), welcome, None)
        .expect("staged welcome")
        .into_group(&provider)
        .expect("joined");
}

fn revoked_device_id(kp: &KeyPackage) -> String {
    let credential = BasicCredential::try_from(kp.leaf_node().credential().clone()).expect("basic");
    Certificate::from_bytes(credential.identity())
        .expect("certificate")
        .body
        .device_id
}

/// Reads the fuzzer's bytes as choices.
struct Choices<'a>(&'a [u8]);

impl Choices<'_> {
    fn next(&mut self) -> u8 {
        match self.0.split_first() {
            Some((first, rest)) => {
                self.0 = rest;
                *first
            }
            None => 0,
        }
    }

    fn rest(&self) -> &[u8] {
        self.0
    }
}

fn policy_extensions(policy: GroupPolicy) -> Option<Extensions<GroupContext>> {
    Extensions::from_vec(vec![
        Extension::RequiredCapabilities(RequiredCapabilitiesExtension::new(
            &[ExtensionType::Unknown(GROUP_POLICY_EXTENSION)],
            &[],
            &[],
        )),
        Extension::Unknown(GROUP_POLICY_EXTENSION, UnknownExtension(policy.to_bytes())),
    ])
    .ok()
}

/// Everything a device does with `data` as an inbound message; must never panic.
pub fn inbound(data: &[u8]) {
    let _ = inbound_report(data);
    content(data);
}

/// Like [`inbound`], returning what carol's device reported.
pub fn inbound_report(data: &[u8]) -> SyncReport {
    let mut world = WORLD.lock().unwrap_or_else(|e| e.into_inner());
    let world = &mut *world;
    let mut choices = Choices(data);
    let group_id = world.groups[choices.next() as usize % world.groups.len()].clone();
    let by_admin = choices.next().is_multiple_of(4);
    let kind = choices.next() % 5;
    let (sender, other) = if by_admin {
        (&mut world.admin, &world.rogue)
    } else {
        (&mut world.rogue, &world.admin)
    };
    let message = {
        let tx = sender.db.transaction().expect("sender transaction");
        let provider = Provider::new(&world.crypto, &tx);
        let made = MlsGroup::load(provider.storage(), &GroupId::from_slice(&group_id))
            .ok()
            .flatten()
            .and_then(|mut group| {
                let signer = &sender.signer;
                let message = match kind {
                    0 => commit(
                        &mut group,
                        &provider,
                        signer,
                        &mut choices,
                        &world.candidates,
                        &sender.cert,
                        &other.cert,
                        &world.expired_rogue,
                    ),
                    1 => proposal(
                        &mut group,
                        &provider,
                        signer,
                        &mut choices,
                        &world.candidates,
                        &sender.cert,
                        &other.cert,
                    ),
                    2 => group.create_message(&provider, signer, choices.rest()).ok(),
                    _ => None,
                };
                message.and_then(|m| m.tls_serialize_detached().ok())
            });
        // The sender's state is rolled back with its transaction.
        drop(tx);
        made
    };
    let bytes = message.unwrap_or_else(|| choices.rest().to_vec());
    let device = world.victim.device(&world.org);
    let mut tx = world.victim.db.transaction().expect("victim transaction");
    let report = if kind == 4 {
        welcome_for_fuzzing(&world.crypto, &mut tx, &device, &group_id, &bytes)
    } else {
        receive_for_fuzzing(
            &world.crypto,
            &tx,
            &device,
            &world.victim.signer,
            &group_id,
            1_000_000,
            &bytes,
        )
    };
    drop(tx);
    report
}

/// A commit made of parts the input picks.
#[allow(clippy::too_many_arguments)]
fn commit(
    group: &mut MlsGroup,
    provider: &Provider,
    signer: &SignatureKeyPair,
    choices: &mut Choices,
    candidates: &[KeyPackage],
    own: &Certificate,
    other: &Certificate,
    expired: &Certificate,
) -> Option<MlsMessageOut> {
    let mut adds = Vec::new();
    let mut removals = Vec::new();
    let mut policy = None;
    let mut leaf = None;
    let members: Vec<LeafNodeIndex> = group.members().map(|m| m.index).collect();
    for _ in 0..(choices.next() % 4 + 1) {
        match choices.next() % 7 {
            n @ 0..=3 => adds.push(candidates[n as usize].clone()),
            4 => removals.push(members[choices.next() as usize % members.len()]),
            5 => {
                let bits = choices.next();
                policy = Some(GroupPolicy {
                    managed: bits & 1 == 1,
                    archived: bits & 2 == 2,
                });
            }
            _ => {
                let cert = match choices.next() % 3 {
                    0 => own,
                    1 => other,
                    _ => expired,
                };
                leaf = Some(credential_with(cert, signer.public()));
            }
        }
    }
    let mut builder = group
        .commit_builder()
        .propose_adds(adds)
        .propose_removals(removals)
        .force_self_update(leaf.is_some());
    if let Some(extensions) = policy.and_then(policy_extensions) {
        builder = builder.propose_group_context_extensions(extensions).ok()?;
    }
    if let Some(credential) = leaf {
        builder = builder.leaf_node_parameters(
            LeafNodeParameters::builder()
                .with_credential_with_key(credential)
                .build(),
        );
    }
    let bundle = builder
        .load_psks(provider.storage())
        .ok()?
        .build(provider.rand(), provider.crypto(), signer, |_| true)
        .ok()?
        .stage_commit(provider)
        .ok()?;
    Some(bundle.into_messages().0)
}

/// A standalone proposal the input picks.
#[allow(clippy::too_many_arguments)]
fn proposal(
    group: &mut MlsGroup,
    provider: &Provider,
    signer: &SignatureKeyPair,
    choices: &mut Choices,
    candidates: &[KeyPackage],
    own: &Certificate,
    other: &Certificate,
) -> Option<MlsMessageOut> {
    let members: Vec<LeafNodeIndex> = group.members().map(|m| m.index).collect();
    match choices.next() % 4 {
        0 => {
            let kp = &candidates[choices.next() as usize % candidates.len()];
            group
                .propose_add_member(provider, signer, kp)
                .ok()
                .map(|(m, _)| m)
        }
        1 => group
            .propose_remove_member(
                provider,
                signer,
                members[choices.next() as usize % members.len()],
            )
            .ok()
            .map(|(m, _)| m),
        2 => {
            let bits = choices.next();
            let extensions = policy_extensions(GroupPolicy {
                managed: bits & 1 == 1,
                archived: bits & 2 == 2,
            })?;
            group
                .propose_group_context_extensions(provider, extensions, signer)
                .ok()
                .map(|(m, _)| m)
        }
        _ => {
            let cert = if choices.next().is_multiple_of(2) {
                own
            } else {
                other
            };
            group
                .propose_self_update(
                    provider,
                    signer,
                    LeafNodeParameters::builder()
                        .with_credential_with_key(credential_with(cert, signer.public()))
                        .build(),
                )
                .ok()
                .map(|(m, _)| m)
        }
    }
}

fn content(data: &[u8]) {
    let Ok(envelope) = Envelope::from_bytes(data) else {
        return;
    };
    const GROUP: &[u8] = b"fuzz-content";
    let db = Connection::open_in_memory().expect("in-memory database");
    db.execute_batch(SCHEMA).expect("schema");
    db.execute(
        "INSERT INTO groups (group_id, name, state, created_at) VALUES (?1, 'ops', ?2, 0)",
        params![GROUP, GroupState::Active],
    )
    .expect("group row");
    let alice = Author {
        user: "alice",
        device: "a1",
        admin: true,
        bot: false,
    };
    let bob = Author {
        user: "bob",
        device: "b1",
        admin: false,
        bot: false,
    };
    // Messages for the fuzzed envelope to refer to: "aaaa0001" by alice, "bbbb0002" by bob.
    for (seq, id, author) in [(1, "aaaa0001", &alice), (2, "bbbb0002", &bob)] {
        let text = Envelope::new(
            id.into(),
            1_000,
            Body::Text {
                text: format!("hello from {}", author.user),
                reply_to: None,
                mentions: vec![],
            },
        );
        let origin = Origin::Received { seq, at_ms: 1_000 };
        conversation::apply(&db, "alice", GROUP, &text, author, origin, false)
            .expect("seed message");
    }
    for (seq, author, managed) in [(3, &bob, false), (4, &alice, true)] {
        let origin = Origin::Received { seq, at_ms: 2_000 };
        let _ = conversation::apply(&db, "alice", GROUP, &envelope, author, origin, managed);
    }
    let _ = conversation::board(&db, GROUP);
    for id in ["aaaa0001", "bbbb0002", envelope.id.as_str()] {
        let _ = conversation::decorations(&db, GROUP, id);
    }
    let _ = conversation::enforce_retention(&db, 10_000_000);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbound_takes_garbage_and_every_kind_of_content() {
        inbound(b"");
        inbound(&[0xff; 64]);
        for body in [
            r#"{"type":"edit","target":"bbbb0002","text":"changed"}"#,
            r#"{"type":"delete","target":"aaaa0001"}"#,
            r#"{"type":"reaction","target":"aaaa0001","emoji":"+1"}"#,
            r#"{"type":"board_set","key":"status","value":"green"}"#,
            r#"{"type":"alert","text":"evacuate","ack_required":true}"#,
        ] {
            let json = format!(r#"{{"v":1,"id":"cccc0003","sent_at":5,"body":{body}}}"#);
            assert!(Envelope::from_bytes(json.as_bytes()).is_ok(), "{json}");
            inbound(json.as_bytes());
        }
    }

    /// The fuzz target reaches the shared commit rules through the real inbound path.
    #[test]
    fn rogue_commits_and_proposals_meet_the_commit_rules() {
        // Open group, bob, a commit adding alice's look-alike from another root.
        let report = inbound_report(&[0, 1, 0, 0, 1]);
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.contains("refused a commit by bob") && p.contains("no valid identity")),
            "{:?}",
            report.problems
        );
        // Managed group, bob proposes to remove someone.
        let report = inbound_report(&[1, 1, 1, 1, 0]);
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.contains("refused a proposal by bob") && p.contains("managed")),
            "{:?}",
            report.problems
        );
        // Open group, bob's update puts on alice's certificate.
        let report = inbound_report(&[0, 1, 1, 3, 1]);
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.contains("refused a proposal by bob")),
            "{:?}",
            report.problems
        );
        // Open group, alice (admin) commits adding dave: accepted.
        let report = inbound_report(&[0, 0, 0, 0, 0]);
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    }
}
