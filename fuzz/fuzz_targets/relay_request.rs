//! The relay's request handler: any bytes a peer can send, decoded as a request and
//! handled both for an authenticated admin device (with a group to post into) and for an
//! anonymous connection.
#![no_main]

use libfuzzer_sys::fuzz_target;
use muster_proto::{
    auth_transcript, decode, device_id_for, now_unix, CertificateBody, OrgDescriptor, OrgRootKey,
    Profile, Request, Role,
};
use muster_relay_core::{RateLimits, Relay, Session};
use openmls::prelude::tls_codec::Serialize as _;
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use openmls_traits::signatures::Signer as _;
use std::sync::{LazyLock, Mutex};

struct Harness {
    relay: Relay,
    session: Session,
}

static HARNESS: LazyLock<Mutex<Harness>> = LazyLock::new(|| {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        std::path::PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("muster-fuzz-relay-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("fuzz data dir");
    let mut relay = Relay::open(&dir.join("relay.db"), "f".repeat(64)).expect("relay");
    relay.set_rate_limits(RateLimits {
        requests_per_sec: 1e9,
        request_burst: 1e9,
        posts_per_sec: 1e9,
        post_burst: 1e9,
    });
    let root = OrgRootKey::generate();
    let org = OrgDescriptor {
        org_id: "fuzz-org".into(),
        name: "Fuzz".into(),
        root_public_key: root.public_key(),
    };
    let suite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;
    let signer = SignatureKeyPair::new(suite.signature_algorithm()).expect("key pair");
    let now = now_unix();
    let cert = root.sign(CertificateBody {
        org_id: org.org_id.clone(),
        user: "alice".into(),
        device_id: device_id_for(signer.public()),
        device_key: signer.public().to_vec(),
        profile: Profile {
            display_name: "Alice".into(),
            ..Default::default()
        },
        roles: vec![Role::Admin, Role::Member],
        not_before: now - 10,
        not_after: now + 365 * 24 * 3600,
    });
    let token = relay.new_bootstrap_token().expect("token");
    relay.handle_anonymous(Request::Bootstrap {
        token,
        org,
        admin: cert.clone(),
    });
    let nonce = relay.challenge();
    let signature = signer
        .sign(&auth_transcript(relay.fingerprint(), &nonce))
        .expect("sign");
    let session = relay
        .authenticate(signer.public(), &nonce, &signature)
        .expect("admin logs in");
    // A group with the id "fuzz-group" for Send and Commit requests to aim at.
    let provider = OpenMlsRustCrypto::default();
    let credential = CredentialWithKey {
        credential: BasicCredential::new(cert.to_bytes()).into(),
        signature_key: signer.public().into(),
    };
    let config = MlsGroupCreateConfig::builder()
        .ciphersuite(suite)
        .use_ratchet_tree_extension(true)
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .build();
    let group = MlsGroup::new_with_group_id(
        &provider,
        &signer,
        &config,
        GroupId::from_slice(b"fuzz-group"),
        credential,
    )
    .expect("group");
    let info = group
        .export_group_info(provider.crypto(), &signer, false)
        .expect("group info");
    relay.handle(
        &session,
        Request::CreateGroup {
            group_info: info.tls_serialize_detached().expect("encode"),
            ratchet_tree: group
                .export_ratchet_tree()
                .tls_serialize_detached()
                .expect("encode"),
        },
    );
    Mutex::new(Harness { relay, session })
});

fuzz_target!(|data: &[u8]| {
    let Ok(request) = decode::<Request>(data) else {
        return;
    };
    let mut harness = HARNESS.lock().unwrap_or_else(|e| e.into_inner());
    let Harness { relay, session } = &mut *harness;
    let session = session.clone();
    relay.handle(&session, request.clone());
    relay.handle_anonymous(request);
});
