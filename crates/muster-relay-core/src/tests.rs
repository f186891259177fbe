//! The relay core driven directly, with real MLS clients in memory: no sockets.

use crate::{Relay, Session};
use muster_proto::{
    auth_transcript, device_id_for, now_unix, AckItem, Certificate, CertificateBody, CodeSecret,
    Delivery, EnrolmentGrant, EnrolmentRequest, ErrorCode, GrantBody, GroupPolicy, InvitePurpose,
    OrgDescriptor, OrgRootKey, Profile, Request, RequestBody, Response, Role,
    GROUP_POLICY_EXTENSION,
};
use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use openmls_traits::signatures::Signer as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

const SUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// Set to `postgres` (by [`the_suite_passes_on_postgres`]) to run the suite on PostgreSQL.
const BACKEND_VARIABLE: &str = "MUSTER_RELAY_TEST_BACKEND";

/// The whole suite again, each relay on its own schema of the test PostgreSQL.
#[test]
fn the_suite_passes_on_postgres() {
    if std::env::var(BACKEND_VARIABLE).is_ok() {
        return;
    }
    if crate::db::postgres::testing::server().is_none() {
        eprintln!("{}", crate::db::postgres::testing::MISSING);
        return;
    }
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--skip", "db::", "--skip", "the_suite_passes_on_postgres"])
        .env(BACKEND_VARIABLE, "postgres")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary = stdout.lines().rfind(|l| l.starts_with("test result:"));
    eprintln!(
        "relay-core suite on PostgreSQL: {}",
        summary.unwrap_or("no summary")
    );
    assert!(
        output.status.success(),
        "the relay-core suite failed on PostgreSQL:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

struct TestDir(PathBuf);

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Device {
    provider: OpenMlsRustCrypto,
    signer: SignatureKeyPair,
    cert: Certificate,
    session: Session,
}

impl Device {
    fn credential(&self) -> CredentialWithKey {
        CredentialWithKey {
            credential: BasicCredential::new(self.cert.to_bytes()).into(),
            signature_key: self.signer.public().into(),
        }
    }

    /// The request that registers `group`, made by this device, with the relay.
    fn create_group_request(&self, group: &MlsGroup) -> Request {
        let info = group
            .export_group_info(self.provider.crypto(), &self.signer, false)
            .unwrap();
        Request::CreateGroup {
            group_info: bytes(&info),
            ratchet_tree: group
                .export_ratchet_tree()
                .tls_serialize_detached()
                .unwrap(),
        }
    }

    fn key_package(&self) -> Vec<u8> {
        KeyPackage::builder()
            .leaf_node_capabilities(capabilities())
            .build(SUITE, &self.provider, &self.signer, self.credential())
            .unwrap()
            .key_package()
            .tls_serialize_detached()
            .unwrap()
    }
}

struct World {
    _dir: TestDir,
    relay: Relay,
    root: OrgRootKey,
    org: OrgDescriptor,
    admin: Device,
}

fn capabilities() -> Capabilities {
    Capabilities::builder()
        .extensions(vec![ExtensionType::Unknown(GROUP_POLICY_EXTENSION)])
        .build()
}

fn config() -> MlsGroupCreateConfig {
    config_with(GroupPolicy::default())
}

fn config_with(policy: GroupPolicy) -> MlsGroupCreateConfig {
    config_with_tree(policy, true)
}

/// A group's configuration, with or without the ratchet tree in its Welcomes.
fn config_with_tree(policy: GroupPolicy, inline: bool) -> MlsGroupCreateConfig {
    MlsGroupCreateConfig::builder()
        .ciphersuite(SUITE)
        .use_ratchet_tree_extension(inline)
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .capabilities(capabilities())
        .with_group_context_extensions(
            Extensions::single(Extension::Unknown(
                GROUP_POLICY_EXTENSION,
                UnknownExtension(policy.to_bytes()),
            ))
            .unwrap(),
        )
        .build()
}

fn bytes(m: &MlsMessageOut) -> Vec<u8> {
    m.tls_serialize_detached().unwrap()
}

fn cert_for(
    root: &OrgRootKey,
    org: &OrgDescriptor,
    user: &str,
    key: &[u8],
    admin: bool,
) -> Certificate {
    let roles = if admin {
        vec![Role::Admin, Role::Member]
    } else {
        vec![Role::Member]
    };
    cert_with_roles(root, org, user, key, roles)
}

fn cert_with_roles(
    root: &OrgRootKey,
    org: &OrgDescriptor,
    user: &str,
    key: &[u8],
    roles: Vec<Role>,
) -> Certificate {
    let now = now_unix();
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
        not_before: now - 10,
        not_after: now + 3600,
    })
}

/// A code for `user`, its grant signed by `issuer`.
fn grant_by(
    issuer: &Device,
    org: &OrgDescriptor,
    purpose: InvitePurpose,
    user: &str,
) -> (CodeSecret, EnrolmentGrant) {
    let secret = CodeSecret::generate();
    let now = now_unix();
    let body = GrantBody {
        org_id: org.org_id.clone(),
        purpose,
        user: user.into(),
        code_key: secret.public_key(),
        issued_at: now,
        expires_at: now + 60,
    };
    let grant = EnrolmentGrant {
        signature: issuer.signer.sign(&body.to_be_signed()).unwrap(),
        body,
        issuer: issuer.cert.clone(),
    };
    (secret, grant)
}

/// An enrolment request for `user` made with the code `secret` by the holder of `signer`.
fn request_with(
    secret: &CodeSecret,
    org: &OrgDescriptor,
    purpose: InvitePurpose,
    user: &str,
    signer: &SignatureKeyPair,
) -> EnrolmentRequest {
    let body = RequestBody {
        org_id: org.org_id.clone(),
        purpose,
        user: user.into(),
        device_key: signer.public().to_vec(),
        profile: Profile {
            display_name: user.into(),
            ..Default::default()
        },
        code_key: secret.public_key(),
        requested_at: now_unix(),
    };
    EnrolmentRequest::new(body, secret, |m| signer.sign(m).unwrap())
}

fn login(relay: &Relay, signer: &SignatureKeyPair) -> Result<Session, muster_proto::RelayError> {
    let nonce = relay.challenge();
    let sig = signer
        .sign(&auth_transcript(relay.fingerprint(), &nonce))
        .unwrap();
    relay.authenticate(signer.public(), &nonce, &sig)
}

/// The first revocation of `device`, `user`'s, in `w`'s organisation (to be signed).
fn revoking(w: &World, user: &str, device: &Device) -> muster_proto::RevocationBody {
    muster_proto::RevocationBody {
        org_id: w.org.org_id.clone(),
        user: user.into(),
        device_ids: vec![device.session.device_id.clone()],
        issued_at: now_unix(),
        serial: 1,
        vouched: Vec::new(),
    }
}

fn ok(outcome: crate::Outcome) -> Response {
    match outcome.response {
        Response::Error(e) => panic!("refused: {e:?}"),
        r => r,
    }
}

fn refused(outcome: crate::Outcome) -> ErrorCode {
    match outcome.response {
        Response::Error(e) => e.code,
        r => panic!("expected a refusal, got {r:?}"),
    }
}

impl World {
    fn new() -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "muster-relay-core-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut relay = if std::env::var(BACKEND_VARIABLE).as_deref() == Ok("postgres") {
            let schema = format!(
                "suite_{}_{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            );
            let url = crate::db::postgres::testing::fresh_schema(&schema)
                .expect("MUSTER_TEST_POSTGRES names the server");
            Relay::open_postgres(&url, "f".repeat(64), dir.join("blobs")).unwrap()
        } else {
            Relay::open(&dir.join("relay.db"), "f".repeat(64)).unwrap()
        };
        let root = OrgRootKey::generate();
        let org = OrgDescriptor {
            org_id: "org1".into(),
            name: "Acme".into(),
            root_public_key: root.public_key(),
        };
        let signer = SignatureKeyPair::new(SignatureScheme::ED25519).unwrap();
        let cert = cert_for(&root, &org, "alice", signer.public(), true);
        let token = relay.new_bootstrap_token().unwrap();
        ok(relay.handle_anonymous(Request::Bootstrap {
            token,
            org: org.clone(),
            admin: cert.clone(),
        }));
        let session = login(&relay, &signer).unwrap();
        let admin = Device {
            provider: OpenMlsRustCrypto::default(),
            signer,
            cert,
            session,
        };
        Self {
            _dir: TestDir(dir),
            relay,
            root,
            org,
            admin,
        }
    }

    /// Invites, enrols and approves a device for `user`, with KeyPackages uploaded.
    fn enrol(&mut self, user: &str) -> Device {
        self.enrol_as(user, vec![Role::Member])
    }

    /// [`World::enrol`], with a certificate carrying `roles`.
    fn enrol_as(&mut self, user: &str, roles: Vec<Role>) -> Device {
        let (secret, grant) = grant_by(&self.admin, &self.org, InvitePurpose::NewUser, user);
        ok(self
            .relay
            .handle(&self.admin.session, Request::CreateInvite { grant }));
        let signer = SignatureKeyPair::new(SignatureScheme::ED25519).unwrap();
        let request = request_with(&secret, &self.org, InvitePurpose::NewUser, user, &signer);
        ok(self.relay.handle_anonymous(Request::Enrol { request }));
        assert_eq!(
            login(&self.relay, &signer).unwrap_err().code,
            ErrorCode::EnrolmentPending
        );
        let cert = cert_with_roles(&self.root, &self.org, user, signer.public(), roles);
        ok(self.relay.handle(
            &self.admin.session,
            Request::Approve {
                certificate: cert.clone(),
            },
        ));
        let session = login(&self.relay, &signer).unwrap();
        let device = Device {
            provider: OpenMlsRustCrypto::default(),
            signer,
            cert,
            session,
        };
        let kps = vec![device.key_package(), device.key_package()];
        ok(self.relay.handle(
            &device.session,
            Request::UploadKeyPackages {
                key_packages: kps,
                last_resort: None,
                replace: false,
            },
        ));
        device
    }

    /// Alice creates a group on the relay and adds `members`; they join from their Welcomes.
    fn group_with(&mut self, members: &[&Device]) -> (MlsGroup, Vec<MlsGroup>) {
        self.group_with_policy(members, GroupPolicy::default())
    }

    fn group_with_policy(
        &mut self,
        members: &[&Device],
        policy: GroupPolicy,
    ) -> (MlsGroup, Vec<MlsGroup>) {
        let mut group = self.new_group(&config_with(policy));
        let joined = self.add_and_join(&mut group, members, false);
        (group, joined)
    }

    /// Alice creates a group on the relay.
    fn new_group(&mut self, config: &MlsGroupCreateConfig) -> MlsGroup {
        let a = &self.admin;
        let group = MlsGroup::new(&a.provider, &a.signer, config, a.credential()).unwrap();
        ok(self
            .relay
            .handle(&a.session, a.create_group_request(&group)));
        group
    }

    /// KeyPackages of every device of `members`, claimed by alice.
    fn claim(&mut self, members: &[&Device]) -> Vec<KeyPackage> {
        let mut kps = Vec::new();
        for m in members {
            let Response::KeyPackages(claimed) = ok(self.relay.handle(
                &self.admin.session,
                Request::ClaimKeyPackages {
                    user: m.cert.body.user.clone(),
                    only: vec![],
                },
            )) else {
                panic!()
            };
            for c in claimed {
                kps.push(
                    KeyPackageIn::tls_deserialize_exact(&c.key_package)
                        .unwrap()
                        .validate(self.admin.provider.crypto(), ProtocolVersion::Mls10)
                        .unwrap(),
                );
            }
        }
        kps
    }

    /// Alice adds `members` in one commit; they join from their Welcomes (with the tree
    /// from the relay when `tree_from_relay`: the group leaves it out of Welcomes).
    fn add_and_join(
        &mut self,
        group: &mut MlsGroup,
        members: &[&Device],
        tree_from_relay: bool,
    ) -> Vec<MlsGroup> {
        let kps = self.claim(members);
        let mut joined = Vec::new();
        if kps.is_empty() {
            return joined;
        }
        let a = &self.admin;
        let (commit, welcome, _) = group.add_members(&a.provider, &a.signer, &kps).unwrap();
        ok(self.relay.handle(
            &a.session,
            Request::Commit {
                group_id: group.group_id().as_slice().to_vec(),
                commit: bytes(&commit),
                welcome: Some(bytes(&welcome)),
                group_info: None,
            },
        ));
        group.merge_pending_commit(&a.provider).unwrap();
        for m in members {
            let deliveries = fetch(&mut self.relay, &m.session);
            let Some(Delivery::Welcome { welcome, .. }) = deliveries.first() else {
                panic!("{} got no Welcome: {deliveries:?}", m.cert.body.user)
            };
            let tree = tree_from_relay.then(|| {
                ratchet_tree(
                    &mut self.relay,
                    &m.session,
                    group.group_id().as_slice(),
                    group.epoch().as_u64(),
                )
                .unwrap()
            });
            joined.push(join_from(m, welcome, tree.as_deref()).unwrap());
            ack_all(&mut self.relay, &m.session, &deliveries);
        }
        joined
    }
}

/// `m` joins from a Welcome, with `tree` when it leaves the tree out.
fn join_from(m: &Device, welcome: &[u8], tree: Option<&[u8]>) -> Result<MlsGroup, String> {
    let MlsMessageBodyIn::Welcome(w) = MlsMessageIn::tls_deserialize_exact(welcome)
        .unwrap()
        .extract()
    else {
        panic!()
    };
    let tree = tree.map(|t| RatchetTreeIn::tls_deserialize_exact(t).unwrap());
    StagedWelcome::new_from_welcome(
        &m.provider,
        &MlsGroupJoinConfig::builder()
            .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
            .build(),
        w,
        tree,
    )
    .map_err(|e| e.to_string())?
    .into_group(&m.provider)
    .map_err(|e| e.to_string())
}

/// The group's ratchet tree at `epoch`, as the relay serves it to `session`.
fn ratchet_tree(
    relay: &mut Relay,
    session: &Session,
    group_id: &[u8],
    epoch: u64,
) -> Result<Vec<u8>, ErrorCode> {
    let mut tree = Vec::new();
    loop {
        let outcome = relay.handle(
            session,
            Request::RatchetTree {
                group_id: group_id.to_vec(),
                epoch,
                offset: tree.len() as u64,
            },
        );
        match outcome.response {
            Response::RatchetTree { total, chunk } => {
                tree.extend(chunk);
                if tree.len() as u64 >= total {
                    return Ok(tree);
                }
            }
            Response::Error(e) => return Err(e.code),
            r => panic!("{r:?}"),
        }
    }
}

fn fetch(relay: &mut Relay, session: &Session) -> Vec<Delivery> {
    match ok(relay.handle(session, Request::Fetch { limit: 100 })) {
        Response::Deliveries(d) => d,
        r => panic!("{r:?}"),
    }
}

fn ack_all(relay: &mut Relay, session: &Session, deliveries: &[Delivery]) {
    let items = deliveries.iter().map(Delivery::ack).collect();
    ok(relay.handle(session, Request::Ack { items }));
}

fn send(
    relay: &mut Relay,
    dev: &Device,
    group: &mut MlsGroup,
    text: &[u8],
    client_id: &[u8],
) -> crate::Outcome {
    let msg = group
        .create_message(&dev.provider, &dev.signer, text)
        .unwrap();
    relay.handle(
        &dev.session,
        Request::Send {
            group_id: group.group_id().as_slice().to_vec(),
            message: bytes(&msg),
            client_id: client_id.to_vec(),
        },
    )
}

#[test]
fn a_second_commit_for_the_same_epoch_is_refused_and_the_loser_catches_up() {
    let mut w = World::new();
    let bob = w.enrol("bob");
    let (mut alice_group, mut joined) = w.group_with(&[&bob]);
    let mut bob_group = joined.remove(0);
    assert_eq!(alice_group.epoch(), bob_group.epoch());
    let gid = alice_group.group_id().as_slice().to_vec();

    let a_commit = alice_group
        .self_update(
            &w.admin.provider,
            &w.admin.signer,
            LeafNodeParameters::default(),
        )
        .unwrap();
    let b_commit = bob_group
        .self_update(&bob.provider, &bob.signer, LeafNodeParameters::default())
        .unwrap();
    let first = w.relay.handle(
        &w.admin.session,
        Request::Commit {
            group_id: gid.clone(),
            commit: bytes(a_commit.commit()),
            welcome: None,
            group_info: None,
        },
    );
    let wake = first.wake.clone();
    assert!(matches!(ok(first), Response::Stored { .. }));
    assert!(wake.contains(&bob.session.device_id), "bob is woken");
    let second = w.relay.handle(
        &bob.session,
        Request::Commit {
            group_id: gid.clone(),
            commit: bytes(b_commit.commit()),
            welcome: None,
            group_info: None,
        },
    );
    let current = alice_group.epoch().as_u64() + 1;
    assert_eq!(refused(second), ErrorCode::EpochMoved { current });
    alice_group.merge_pending_commit(&w.admin.provider).unwrap();

    // Bob drops his commit, processes the winner's, and both agree.
    bob_group
        .clear_pending_commit(bob.provider.storage())
        .unwrap();
    let deliveries = fetch(&mut w.relay, &bob.session);
    assert_eq!(deliveries.len(), 1);
    let Delivery::Group { message, .. } = &deliveries[0] else {
        panic!()
    };
    let processed = bob_group
        .process_message(
            &bob.provider,
            MlsMessageIn::tls_deserialize_exact(message)
                .unwrap()
                .try_into_protocol_message()
                .unwrap(),
        )
        .unwrap();
    let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else {
        panic!()
    };
    bob_group
        .merge_staged_commit(&bob.provider, *staged)
        .unwrap();
    ack_all(&mut w.relay, &bob.session, &deliveries);
    assert_eq!(bob_group.epoch(), alice_group.epoch());
    assert_eq!(
        bob_group.epoch_authenticator().as_slice(),
        alice_group.epoch_authenticator().as_slice()
    );
    // Bob can talk at the new epoch.
    assert!(matches!(
        ok(send(&mut w.relay, &bob, &mut bob_group, b"hi", b"m1")),
        Response::Stored { .. }
    ));
}

#[test]
fn stale_application_messages_unknown_groups_and_garbage_are_refused() {
    let mut w = World::new();
    let bob = w.enrol("bob");
    let (mut alice_group, mut joined) = w.group_with(&[&bob]);
    let mut bob_group = joined.remove(0);
    let gid = alice_group.group_id().as_slice().to_vec();
    // Bob encrypts at the current epoch, then alice's commit moves the group on.
    let stale = bob_group
        .create_message(&bob.provider, &bob.signer, b"late")
        .unwrap();
    let c = alice_group
        .self_update(
            &w.admin.provider,
            &w.admin.signer,
            LeafNodeParameters::default(),
        )
        .unwrap();
    ok(w.relay.handle(
        &w.admin.session,
        Request::Commit {
            group_id: gid.clone(),
            commit: bytes(c.commit()),
            welcome: None,
            group_info: None,
        },
    ));
    let out = w.relay.handle(
        &bob.session,
        Request::Send {
            group_id: gid.clone(),
            message: bytes(&stale),
            client_id: b"x".to_vec(),
        },
    );
    assert!(matches!(refused(out), ErrorCode::EpochMoved { .. }));

    let garbage = w.relay.handle(
        &bob.session,
        Request::Send {
            group_id: gid.clone(),
            message: vec![1, 2, 3],
            client_id: b"y".to_vec(),
        },
    );
    assert_eq!(refused(garbage), ErrorCode::InvalidMessage);
    let huge = w.relay.handle(
        &bob.session,
        Request::Send {
            group_id: gid.clone(),
            message: vec![0; muster_proto::MAX_MLS_MESSAGE + 1],
            client_id: b"z".to_vec(),
        },
    );
    assert_eq!(refused(huge), ErrorCode::TooLarge);

    // A group the relay never heard of.
    let a = &w.admin;
    let mut unknown = MlsGroup::new(&a.provider, &a.signer, &config(), a.credential()).unwrap();
    let c = unknown
        .self_update(&a.provider, &a.signer, LeafNodeParameters::default())
        .unwrap();
    let out = w.relay.handle(
        &a.session,
        Request::Commit {
            group_id: unknown.group_id().as_slice().to_vec(),
            commit: bytes(c.commit()),
            welcome: None,
            group_info: None,
        },
    );
    assert_eq!(refused(out), ErrorCode::UnknownGroup);
}

fn queued_bytes(relay: &Relay, device: &Device) -> i64 {
    relay
        .db()
        .query_row(
            "SELECT COALESCE((SELECT bytes FROM queued_bytes WHERE device_id = ?1), 0)",
            [&device.session.device_id],
            |r| r.get(0),
        )
        .unwrap()
}

fn fetch_and_ack(relay: &mut Relay, device: &Device) -> usize {
    let deliveries = fetch(relay, &device.session);
    ack_all(relay, &device.session, &deliveries);
    deliveries.len()
}

#[test]
fn delivered_messages_are_pruned_and_each_device_has_a_queue_quota() {
    let mut w = World::new();
    let bob = w.enrol("bob");
    let carol = w.enrol("carol");
    let (mut alice_group, mut joined) = w.group_with(&[&bob, &carol]);
    for device in [&w.admin, &bob, &carol] {
        fetch_and_ack(&mut w.relay, device);
    }
    assert_eq!(w.relay.stats().unwrap().stored_messages, 0);

    // Once every member has fetched a message, the relay no longer holds it; a late resend
    // of it is still recognised and not stored twice.
    let msg = alice_group
        .create_message(&w.admin.provider, &w.admin.signer, b"one")
        .unwrap();
    let resend = |relay: &mut Relay| {
        ok(relay.handle(
            &w.admin.session,
            Request::Send {
                group_id: alice_group.group_id().as_slice().to_vec(),
                message: bytes(&msg),
                client_id: b"one".to_vec(),
            },
        ))
    };
    let first = resend(&mut w.relay);
    assert!(queued_bytes(&w.relay, &w.admin) > 0);
    assert_eq!(fetch_and_ack(&mut w.relay, &bob), 1);
    assert_eq!(
        w.relay.stats().unwrap().stored_messages,
        1,
        "carol has not fetched it"
    );
    assert_eq!(fetch_and_ack(&mut w.relay, &carol), 1);
    assert_eq!(w.relay.stats().unwrap().stored_messages, 0);
    assert_eq!(queued_bytes(&w.relay, &w.admin), 0);
    assert_eq!(resend(&mut w.relay), first);
    assert_eq!(w.relay.stats().unwrap().stored_messages, 0);

    // Carol goes offline. Alice may queue only so much for her before being told to wait;
    // bob is unaffected, and alice may send again once carol catches up.
    let size = bytes(&msg).len() as u64;
    w.relay.set_queue_quota(size * 5 / 2);
    let mut stored = 0;
    let refusal = loop {
        let outcome = send(
            &mut w.relay,
            &w.admin,
            &mut alice_group,
            b"while carol is away",
            format!("q{stored}").as_bytes(),
        );
        match outcome.response {
            Response::Stored { .. } => stored += 1,
            Response::Error(e) => break e,
            r => panic!("{r:?}"),
        }
        assert!(stored < 10, "the queue quota never applied");
    };
    assert_eq!(refusal.code, ErrorCode::QuotaExceeded);
    assert!(
        refusal.message.contains("waiting on the relay"),
        "{refusal:?}"
    );
    assert_eq!(stored, 2);
    assert_eq!(fetch_and_ack(&mut w.relay, &bob), 2);
    let bobs = send(&mut w.relay, &bob, &mut joined[0], b"bob here", b"b1");
    assert!(matches!(bobs.response, Response::Stored { .. }));
    assert_eq!(fetch_and_ack(&mut w.relay, &carol), 3);
    assert_eq!(queued_bytes(&w.relay, &w.admin), 0);
    let again = send(
        &mut w.relay,
        &w.admin,
        &mut alice_group,
        b"back",
        b"q-again",
    );
    assert!(matches!(again.response, Response::Stored { .. }));

    // A message nobody fetches for the whole retention period is deleted, and its bytes
    // no longer count against the sender.
    w.relay
        .db()
        .execute(
            "UPDATE messages SET stored_at = stored_at - ?1",
            [muster_proto::MESSAGE_RETENTION_SECS as i64 + 1],
        )
        .unwrap();
    assert!(w.relay.stats().unwrap().stored_messages > 0);
    assert!(w.relay.collect_expired().unwrap() > 0);
    assert_eq!(w.relay.stats().unwrap().stored_messages, 0);
    assert_eq!(queued_bytes(&w.relay, &w.admin), 0);
}

#[test]
fn non_members_cannot_post_and_resends_are_stored_once() {
    let mut w = World::new();
    let bob = w.enrol("bob");
    let carol = w.enrol("carol");
    let (mut alice_group, _) = w.group_with(&[&bob]);
    let gid = alice_group.group_id().as_slice().to_vec();
    let msg = alice_group
        .create_message(&w.admin.provider, &w.admin.signer, b"secret")
        .unwrap();
    // Carol (enrolled, not a member) replays alice's ciphertext into the group.
    let out = w.relay.handle(
        &carol.session,
        Request::Send {
            group_id: gid.clone(),
            message: bytes(&msg),
            client_id: b"c1".to_vec(),
        },
    );
    assert_eq!(refused(out), ErrorCode::NotMember);
    // Alice's resend after a lost answer is stored once.
    let send_once = |relay: &mut Relay| match ok(relay.handle(
        &w.admin.session,
        Request::Send {
            group_id: gid.clone(),
            message: bytes(&msg),
            client_id: b"a1".to_vec(),
        },
    )) {
        Response::Stored { seq } => seq,
        r => panic!("{r:?}"),
    };
    let first = send_once(&mut w.relay);
    let again = send_once(&mut w.relay);
    assert_eq!(first, again);
    // Bob receives it until he acknowledges it, then never again.
    let d1 = fetch(&mut w.relay, &bob.session);
    assert_eq!(d1.len(), 1);
    assert_eq!(fetch(&mut w.relay, &bob.session), d1);
    ack_all(&mut w.relay, &bob.session, &d1);
    assert!(fetch(&mut w.relay, &bob.session).is_empty());
    // Carol never sees the group's traffic.
    assert!(fetch(&mut w.relay, &carol.session).is_empty());
}

#[test]
fn a_member_with_a_certificate_from_another_root_cannot_be_added() {
    let mut w = World::new();
    let (mut group, _) = w.group_with(&[]);
    // Mallory's certificate is signed by a root of her own making.
    let other_root = OrgRootKey::generate();
    let signer = SignatureKeyPair::new(SignatureScheme::ED25519).unwrap();
    let mallory = Device {
        provider: OpenMlsRustCrypto::default(),
        cert: cert_for(&other_root, &w.org, "mallory", signer.public(), false),
        signer,
        session: w.admin.session.clone(),
    };
    let kp = KeyPackageIn::tls_deserialize_exact(mallory.key_package())
        .unwrap()
        .validate(w.admin.provider.crypto(), ProtocolVersion::Mls10)
        .unwrap();
    let epoch = group.epoch();
    let (commit, welcome, _) = group
        .add_members(&w.admin.provider, &w.admin.signer, &[kp])
        .unwrap();
    let out = w.relay.handle(
        &w.admin.session,
        Request::Commit {
            group_id: group.group_id().as_slice().to_vec(),
            commit: bytes(&commit),
            welcome: Some(bytes(&welcome)),
            group_info: None,
        },
    );
    assert_eq!(refused(out), ErrorCode::InvalidCertificate);
    // The group did not move: a valid commit for the same epoch is still accepted.
    group
        .clear_pending_commit(w.admin.provider.storage())
        .unwrap();
    assert_eq!(group.epoch(), epoch);
    let c = group
        .self_update(
            &w.admin.provider,
            &w.admin.signer,
            LeafNodeParameters::default(),
        )
        .unwrap();
    assert!(matches!(
        ok(w.relay.handle(
            &w.admin.session,
            Request::Commit {
                group_id: group.group_id().as_slice().to_vec(),
                commit: bytes(c.commit()),
                welcome: None,
                group_info: None,
            },
        )),
        Response::Stored { .. }
    ));
}

#[test]
fn only_admins_invite_and_approve_and_devices_cannot_upload_foreign_key_packages() {
    let mut w = World::new();
    let bob = w.enrol("bob");
    let carol = w.enrol("carol");
    let (_, grant) = grant_by(&bob, &w.org, InvitePurpose::NewUser, "eve");
    let out = w
        .relay
        .handle(&bob.session, Request::CreateInvite { grant });
    assert_eq!(refused(out), ErrorCode::Forbidden);
    // A member's own link code names only their own user.
    let (_, grant) = grant_by(&bob, &w.org, InvitePurpose::LinkDevice, "carol");
    let out = w.relay.handle(&bob.session, Request::CreateLink { grant });
    assert_eq!(refused(out), ErrorCode::Forbidden);
    assert_eq!(
        refused(w.relay.handle(&bob.session, Request::ListPending)),
        ErrorCode::Forbidden
    );
    let approve = w.relay.handle(
        &bob.session,
        Request::Approve {
            certificate: carol.cert.clone(),
        },
    );
    assert_eq!(refused(approve), ErrorCode::Forbidden);
    let reject = w.relay.handle(
        &bob.session,
        Request::Reject {
            device_id: carol.session.device_id.clone(),
        },
    );
    assert_eq!(refused(reject), ErrorCode::Forbidden);
    // Even a genuine root-signed revocation is refused when a member relays it.
    let revocation = w.root.sign_revocation(revoking(&w, "carol", &carol));
    let revoke = w.relay.handle(&bob.session, Request::Revoke { revocation });
    assert_eq!(refused(revoke), ErrorCode::Forbidden);
    assert_eq!(
        refused(w.relay.handle(&bob.session, Request::Audit { limit: 10 })),
        ErrorCode::Forbidden
    );
    // A revocation not signed by the org root is refused even from an admin.
    let forged = OrgRootKey::generate().sign_revocation(revoking(&w, "carol", &carol));
    let out = w
        .relay
        .handle(&w.admin.session, Request::Revoke { revocation: forged });
    assert_eq!(refused(out), ErrorCode::InvalidCertificate);
    assert!(
        login(&w.relay, &carol.signer).is_ok(),
        "carol is still enrolled"
    );
    // Bob uploads a KeyPackage that belongs to carol.
    let out = w.relay.handle(
        &bob.session,
        Request::UploadKeyPackages {
            key_packages: vec![carol.key_package()],
            last_resort: None,
            replace: false,
        },
    );
    assert_eq!(refused(out), ErrorCode::InvalidMessage);
    // A challenge signed for another relay does not authenticate here.
    let nonce = w.relay.challenge();
    let sig = bob
        .signer
        .sign(&auth_transcript("other-relay", &nonce))
        .unwrap();
    assert_eq!(
        w.relay
            .authenticate(bob.signer.public(), &nonce, &sig)
            .unwrap_err()
            .code,
        ErrorCode::Unauthenticated
    );
}

#[test]
fn large_backlogs_are_fetched_in_frames_that_fit() {
    let mut w = World::new();
    let bob = w.enrol("bob");
    let (mut group, _) = w.group_with(&[&bob]);
    let big = vec![b'x'; 300 * 1024];
    for i in 0..8u8 {
        let dev = &w.admin;
        let msg = group
            .create_message(&dev.provider, &dev.signer, &big)
            .unwrap();
        ok(w.relay.handle(
            &dev.session,
            Request::Send {
                group_id: group.group_id().as_slice().to_vec(),
                message: bytes(&msg),
                client_id: vec![i + 1],
            },
        ));
    }
    let mut total = 0;
    loop {
        let outcome = w.relay.handle(&bob.session, Request::Fetch { limit: 500 });
        let encoded = muster_proto::encode(&outcome.response).expect("answer fits a frame");
        assert!(encoded.len() <= muster_proto::MAX_FRAME);
        let Response::Deliveries(d) = outcome.response else {
            panic!()
        };
        if d.is_empty() {
            break;
        }
        assert!(d.len() < 8, "backlog is split");
        total += d.len();
        ack_all(&mut w.relay, &bob.session, &d);
    }
    assert_eq!(total, 8);
}

fn validated(dev: &Device, bytes: Vec<u8>) -> KeyPackage {
    KeyPackageIn::tls_deserialize_exact(bytes)
        .unwrap()
        .validate(dev.provider.crypto(), ProtocolVersion::Mls10)
        .unwrap()
}

#[test]
fn in_a_managed_group_only_admins_change_membership() {
    let mut w = World::new();
    let bob = w.enrol("bob");
    let carol = w.enrol("carol");
    let (mut alice_group, mut joined) = w.group_with_policy(
        &[&bob],
        GroupPolicy {
            managed: true,
            archived: false,
        },
    );
    let mut bob_group = joined.remove(0);
    let gid = alice_group.group_id().as_slice().to_vec();

    // Bob (a member) tries to add carol.
    let kp = validated(&bob, carol.key_package());
    let (commit, welcome, _) = bob_group
        .add_members(&bob.provider, &bob.signer, &[kp])
        .unwrap();
    let out = w.relay.handle(
        &bob.session,
        Request::Commit {
            group_id: gid.clone(),
            commit: bytes(&commit),
            welcome: Some(bytes(&welcome)),
            group_info: None,
        },
    );
    assert_eq!(refused(out), ErrorCode::Forbidden);
    bob_group
        .clear_pending_commit(bob.provider.storage())
        .unwrap();

    // Bob tries to remove alice, and to leave.
    let (commit, _, _) = bob_group
        .remove_members(&bob.provider, &bob.signer, &[alice_group.own_leaf_index()])
        .unwrap();
    let out = w.relay.handle(
        &bob.session,
        Request::Commit {
            group_id: gid.clone(),
            commit: bytes(&commit),
            welcome: None,
            group_info: None,
        },
    );
    assert_eq!(refused(out), ErrorCode::Forbidden);
    bob_group
        .clear_pending_commit(bob.provider.storage())
        .unwrap();
    let leave = bob_group.leave_group(&bob.provider, &bob.signer).unwrap();
    let out = w.relay.handle(
        &bob.session,
        Request::Propose {
            group_id: gid.clone(),
            proposal: bytes(&leave),
        },
    );
    assert_eq!(refused(out), ErrorCode::Forbidden);

    // A member may not create a managed group at all.
    let mut own = MlsGroup::new(
        &bob.provider,
        &bob.signer,
        &config_with(GroupPolicy {
            managed: true,
            archived: false,
        }),
        bob.credential(),
    )
    .unwrap();
    let out = w.relay.handle(&bob.session, bob.create_group_request(&own));
    assert_eq!(refused(out), ErrorCode::Forbidden);
    let _ = &mut own;

    // The admin may.
    let kp = validated(&w.admin, carol.key_package());
    let (commit, welcome, _) = alice_group
        .add_members(&w.admin.provider, &w.admin.signer, &[kp])
        .unwrap();
    assert!(matches!(
        ok(w.relay.handle(
            &w.admin.session,
            Request::Commit {
                group_id: gid,
                commit: bytes(&commit),
                welcome: Some(bytes(&welcome)),
                group_info: None,
            },
        )),
        Response::Stored { .. }
    ));
}

#[test]
fn blobs_are_for_group_members_within_the_size_limit() {
    let mut w = World::new();
    let bob = w.enrol("bob");
    let carol = w.enrol("carol");
    let (group, _) = w.group_with(&[&bob]);
    let gid = group.group_id().as_slice().to_vec();
    let put = |relay: &mut Relay, who: &Device, id: &str, total: u64, offset: u64, data: &[u8]| {
        relay.handle(
            &who.session,
            Request::BlobPut {
                blob_id: id.into(),
                group_id: gid.clone(),
                total_size: total,
                offset,
                data: data.to_vec(),
            },
        )
    };
    let id = "0123456789abcdef0123456789abcdef";
    let too_big = muster_proto::encrypted_size(muster_proto::MAX_ATTACHMENT) + 1;
    assert_eq!(
        refused(put(&mut w.relay, &w.admin, id, too_big, 0, b"x")),
        ErrorCode::TooLarge
    );
    assert_eq!(
        refused(put(&mut w.relay, &carol, id, 10, 0, b"x")),
        ErrorCode::NotMember
    );
    assert_eq!(
        refused(put(&mut w.relay, &w.admin, "../etc", 10, 0, b"x")),
        ErrorCode::BadRequest
    );
    ok(put(&mut w.relay, &w.admin, id, 10, 0, b"01234"));
    assert_eq!(
        refused(put(&mut w.relay, &w.admin, id, 10, 7, b"789")),
        ErrorCode::BadRequest
    );
    ok(put(&mut w.relay, &w.admin, id, 10, 0, b"01234")); // a resent chunk is harmless
    ok(put(&mut w.relay, &w.admin, id, 10, 5, b"56789"));
    let wrong = w.relay.handle(
        &w.admin.session,
        Request::BlobComplete {
            blob_id: id.into(),
            sha256: vec![0; 32],
        },
    );
    assert_eq!(refused(wrong), ErrorCode::InvalidMessage);
    let digest = ring::digest::digest(&ring::digest::SHA256, b"0123456789");
    ok(w.relay.handle(
        &w.admin.session,
        Request::BlobComplete {
            blob_id: id.into(),
            sha256: digest.as_ref().to_vec(),
        },
    ));
    let get = |relay: &mut Relay, who: &Device| {
        relay.handle(
            &who.session,
            Request::BlobGet {
                blob_id: id.into(),
                offset: 2,
                max_len: 100,
            },
        )
    };
    assert_eq!(refused(get(&mut w.relay, &carol)), ErrorCode::Forbidden);
    match ok(get(&mut w.relay, &bob)) {
        Response::BlobData { data, total_size } => {
            assert_eq!(data, b"23456789");
            assert_eq!(total_size, 10);
        }
        r => panic!("{r:?}"),
    }
    ok(w.relay
        .handle(&bob.session, Request::BlobFetched { blob_id: id.into() }));
    assert_eq!(
        refused(get(&mut w.relay, &bob)),
        ErrorCode::UnknownBlob,
        "deleted once fetched"
    );

    // The per-device quota counts blobs still waiting for recipients.
    w.relay.set_blob_quota(15);
    let first = "11111111111111111111111111111111";
    let second = "22222222222222222222222222222222";
    ok(put(&mut w.relay, &w.admin, first, 10, 0, b"x"));
    assert_eq!(
        refused(put(&mut w.relay, &w.admin, second, 10, 0, b"x")),
        ErrorCode::QuotaExceeded
    );
}

mod hostile_input {
    use super::*;
    use proptest::prelude::*;

    fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..max)
    }

    /// Requests whose payloads are attacker-chosen bytes the relay must parse.
    fn hostile_request(group_id: Vec<u8>) -> impl Strategy<Value = Request> {
        prop_oneof![
            (bytes(2048), bytes(32)).prop_map({
                let g = group_id.clone();
                move |(message, client_id)| Request::Send {
                    group_id: g.clone(),
                    message,
                    client_id,
                }
            }),
            (bytes(2048), proptest::option::of(bytes(512))).prop_map({
                let g = group_id.clone();
                move |(commit, welcome)| Request::Commit {
                    group_id: g.clone(),
                    commit,
                    welcome,
                    group_info: None,
                }
            }),
            bytes(2048).prop_map({
                let g = group_id.clone();
                move |proposal| Request::Propose {
                    group_id: g.clone(),
                    proposal,
                }
            }),
            (bytes(2048), bytes(2048)).prop_map(|(group_info, ratchet_tree)| {
                Request::CreateGroup {
                    group_info,
                    ratchet_tree,
                }
            }),
            proptest::collection::vec(bytes(1024), 0..4).prop_map(|key_packages| {
                Request::UploadKeyPackages {
                    key_packages,
                    last_resort: None,
                    replace: false,
                }
            }),
            (bytes(64), any::<u64>(), any::<u32>()).prop_map(|(id, offset, max_len)| {
                Request::BlobGet {
                    blob_id: String::from_utf8_lossy(&id).into_owned(),
                    offset,
                    max_len,
                }
            }),
            (bytes(64), bytes(64), bytes(128)).prop_map(|(user, code_key, signature)| {
                Request::CreateInvite {
                    grant: junk_grant(&user, code_key, signature),
                }
            }),
            (bytes(64), bytes(64), bytes(128)).prop_map(|(user, device_key, proof)| {
                Request::Enrol {
                    request: EnrolmentRequest {
                        body: RequestBody {
                            org_id: "org1".into(),
                            purpose: InvitePurpose::NewUser,
                            user: String::from_utf8_lossy(&user).into_owned(),
                            device_key: device_key.clone(),
                            profile: Profile::default(),
                            code_key: device_key,
                            requested_at: 0,
                        },
                        code_proof: proof.clone(),
                        device_proof: proof,
                    },
                }
            }),
            bytes(128).prop_map(|signature| Request::Prove { signature }),
            (bytes(40), any::<u64>(), any::<u64>()).prop_map(|(group_id, seq, id)| Request::Ack {
                items: vec![AckItem::Group { group_id, seq }, AckItem::Welcome { id },],
            }),
            any::<u32>().prop_map(|limit| Request::Fetch { limit }),
        ]
    }

    /// A grant made of arbitrary bytes, signed by nobody the organisation knows.
    fn junk_grant(user: &[u8], code_key: Vec<u8>, signature: Vec<u8>) -> EnrolmentGrant {
        let user = String::from_utf8_lossy(user).into_owned();
        EnrolmentGrant {
            body: GrantBody {
                org_id: "org1".into(),
                purpose: InvitePurpose::NewUser,
                user: user.clone(),
                code_key: code_key.clone(),
                issued_at: 0,
                expires_at: u64::MAX,
            },
            issuer: Certificate {
                body: CertificateBody {
                    org_id: "org1".into(),
                    user,
                    device_id: String::new(),
                    device_key: code_key,
                    profile: Profile::default(),
                    roles: vec![Role::Admin],
                    not_before: 0,
                    not_after: u64::MAX,
                },
                signature: signature.clone(),
                issuer: None,
            },
            signature,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// No input makes the relay panic, and members keep working afterwards.
        #[test]
        fn garbage_never_panics_the_relay_or_breaks_the_group(
            inputs in proptest::collection::vec(hostile_request(vec![]), 1..6)
        ) {
            let mut w = World::new();
            let bob = w.enrol("bob");
            let (mut group, _) = w.group_with(&[&bob]);
            let gid = group.group_id().as_slice().to_vec();
            for request in inputs {
                let request = match request {
                    Request::Send { message, client_id, .. } => Request::Send { group_id: gid.clone(), message, client_id },
                    Request::Commit { commit, welcome, group_info, .. } => Request::Commit { group_id: gid.clone(), commit, welcome, group_info },
                    Request::Propose { proposal, .. } => Request::Propose { group_id: gid.clone(), proposal },
                    other => other,
                };
                let _ = w.relay.handle(&bob.session, request.clone());
                let _ = w.relay.handle_anonymous(request);
            }
            let id = crate::tests::tag();
            let after = ok(send(&mut w.relay, &w.admin, &mut group, b"still here", &id));
            let stored = matches!(after, Response::Stored { .. });
            prop_assert!(stored, "the group stopped working");
        }
    }
}

/// A fresh client id for a test send.
fn tag() -> Vec<u8> {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("t{}", N.fetch_add(1, Ordering::Relaxed)).into_bytes()
}

#[test]
fn a_flooding_device_is_slowed_down_and_others_are_unaffected() {
    let mut w = World::new();
    let bob = w.enrol("bob");
    let (mut alice_group, mut joined) = w.group_with(&[&bob]);
    let mut bob_group = joined.remove(0);
    w.relay.set_rate_limits(crate::RateLimits {
        requests_per_sec: 1000.0,
        request_burst: 1000.0,
        posts_per_sec: 5.0,
        post_burst: 10.0,
    });
    let gid = bob_group.group_id().as_slice().to_vec();
    let now = std::time::Instant::now();
    let mut stored = 0;
    let mut limited = 0;
    for i in 0..30u32 {
        let msg = bob_group
            .create_message(&bob.provider, &bob.signer, b"spam")
            .unwrap();
        let out = w.relay.handle_at(
            &bob.session,
            Request::Send {
                group_id: gid.clone(),
                message: bytes(&msg),
                client_id: format!("flood{i}").into_bytes(),
            },
            now,
        );
        match out.response {
            Response::Stored { .. } => stored += 1,
            Response::Error(e) => {
                assert_eq!(e.code, ErrorCode::RateLimited);
                assert!(e.message.contains("5 messages per second"), "{}", e.message);
                limited += 1;
            }
            r => panic!("{r:?}"),
        }
    }
    assert_eq!((stored, limited), (10, 20));
    // Alice is not affected, and bob may go on a second later.
    let msg = alice_group
        .create_message(&w.admin.provider, &w.admin.signer, b"hello")
        .unwrap();
    assert!(matches!(
        ok(w.relay.handle_at(
            &w.admin.session,
            Request::Send {
                group_id: gid.clone(),
                message: bytes(&msg),
                client_id: b"a".to_vec(),
            },
            now,
        )),
        Response::Stored { .. }
    ));
    let msg = bob_group
        .create_message(&bob.provider, &bob.signer, b"later")
        .unwrap();
    assert!(matches!(
        ok(w.relay.handle_at(
            &bob.session,
            Request::Send {
                group_id: gid,
                message: bytes(&msg),
                client_id: b"later".to_vec(),
            },
            now + std::time::Duration::from_secs(1),
        )),
        Response::Stored { .. }
    ));
}

#[test]
fn a_message_is_pruned_once_everyone_has_it_whoever_held_the_group_back() {
    let mut w = World::new();
    let bob = w.enrol("bob");
    let carol = w.enrol("carol");
    let (mut alice_group, mut joined) = w.group_with(&[&bob, &carol]);
    for device in [&w.admin, &bob, &carol] {
        fetch_and_ack(&mut w.relay, device);
    }
    let stored = |w: &World| w.relay.stats().unwrap().stored_messages;
    // Bob holds the group back; alice acknowledging moves nothing.
    send(&mut w.relay, &w.admin, &mut alice_group, b"one", b"a1");
    assert_eq!(fetch_and_ack(&mut w.relay, &carol), 1);
    assert_eq!(stored(&w), 1);
    assert_eq!(fetch_and_ack(&mut w.relay, &bob), 1);
    assert_eq!(stored(&w), 0);
    // Carol, caught up, sends: she is done with her own message at once, and it goes
    // when the last of the others has it, in either order.
    send(&mut w.relay, &carol, &mut joined[1], b"two", b"c1");
    assert_eq!(fetch_and_ack(&mut w.relay, &w.admin), 1);
    assert_eq!(stored(&w), 1, "bob has not fetched it");
    assert_eq!(fetch_and_ack(&mut w.relay, &bob), 1);
    assert_eq!(stored(&w), 0);
    send(&mut w.relay, &carol, &mut joined[1], b"three", b"c2");
    assert_eq!(fetch_and_ack(&mut w.relay, &bob), 1);
    assert_eq!(stored(&w), 1, "alice has not fetched it");
    assert_eq!(fetch_and_ack(&mut w.relay, &w.admin), 1);
    assert_eq!(stored(&w), 0);
}

#[test]
fn a_group_commit_syncs_once_for_what_it_stored_and_not_for_acknowledgements() {
    let mut w = World::new();
    let bob = w.enrol("bob");
    let (mut alice_group, _) = w.group_with(&[&bob]);
    fetch_and_ack(&mut w.relay, &bob);
    let barriers = |relay: &Relay| -> i64 {
        let sql = if relay.is_postgres() {
            "SELECT COALESCE((SELECT value FROM durability_barrier WHERE id = 1), 0)"
        } else {
            "SELECT COALESCE((SELECT value FROM meta WHERE key = 'durability_barrier'), 0)"
        };
        relay.db().query_row(sql, (), |r| r.get(0)).unwrap()
    };
    // 2 when every commit waits for the disk, 1 when it does not.
    let synchronous = |relay: &Relay| -> i64 {
        if relay.is_postgres() {
            // Set for each write transaction, so read inside one.
            let tx = relay.db().transaction().unwrap();
            let setting: String = tx
                .query_row("SELECT current_setting('synchronous_commit')", (), |r| {
                    r.get(0)
                })
                .unwrap();
            drop(tx);
            if setting == "on" {
                2
            } else {
                1
            }
        } else {
            relay
                .db()
                .query_row("PRAGMA synchronous", (), |r| r.get(0))
                .unwrap()
        }
    };
    assert_eq!(synchronous(&w.relay), 2, "FULL outside group commits");
    let before = barriers(&w.relay);
    w.relay.begin_group_commit().unwrap();
    assert_eq!(
        synchronous(&w.relay),
        1,
        "NORMAL inside: no fsync per transaction"
    );
    for i in 0..3 {
        let outcome = send(
            &mut w.relay,
            &w.admin,
            &mut alice_group,
            b"grouped",
            format!("g{i}").as_bytes(),
        );
        assert!(matches!(outcome.response, Response::Stored { .. }));
    }
    w.relay.end_group_commit().unwrap();
    assert_eq!(synchronous(&w.relay), 2);
    assert_eq!(
        barriers(&w.relay),
        before + 1,
        "one sync for three messages"
    );
    // Acknowledgements alone need no sync on SQLite. On a shared database every group
    // commit syncs: its fetches may hand out what another relay has not flushed yet.
    w.relay.begin_group_commit().unwrap();
    assert_eq!(fetch_and_ack(&mut w.relay, &bob), 3);
    w.relay.end_group_commit().unwrap();
    let expected = if w.relay.is_postgres() { 2 } else { 1 };
    assert_eq!(barriers(&w.relay), before + expected);
    assert_eq!(synchronous(&w.relay), 2);
}

#[test]
fn a_message_nobody_else_waits_for_is_not_kept() {
    let mut w = World::new();
    let (mut alone, _) = w.group_with(&[]);
    fetch_and_ack(&mut w.relay, &w.admin);
    for i in 0..3 {
        let outcome = send(
            &mut w.relay,
            &w.admin,
            &mut alone,
            b"note to self",
            format!("n{i}").as_bytes(),
        );
        assert!(matches!(outcome.response, Response::Stored { .. }));
        assert_eq!(w.relay.stats().unwrap().stored_messages, 0, "send {i}");
    }
    assert_eq!(queued_bytes(&w.relay, &w.admin), 0);
}

mod audience;
mod changes;
mod migrate;
mod trees;

#[test]
fn a_bot_cannot_create_groups() {
    let mut w = World::new();
    let pager = w.enrol_as("pager", vec![Role::Bot]);
    let group = MlsGroup::new(
        &pager.provider,
        &pager.signer,
        &config(),
        pager.credential(),
    )
    .unwrap();
    let out = w
        .relay
        .handle(&pager.session, pager.create_group_request(&group));
    assert_eq!(refused(out), ErrorCode::Forbidden);
    // A person may.
    let bob = w.enrol("bob");
    let own = MlsGroup::new(&bob.provider, &bob.signer, &config(), bob.credential()).unwrap();
    ok(w.relay.handle(&bob.session, bob.create_group_request(&own)));
}
