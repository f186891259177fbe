//! `mls`: what MLS operations cost at a given group size, with the ciphersuite and wire
//! format the client uses.

use crate::report::{ms, put, Report, Row};
use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use std::time::{Duration, Instant};

const SUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;
/// Messages encrypted and decrypted for the per-message figures.
const MESSAGES: u32 = 200;

#[derive(Debug, thiserror::Error)]
#[error("mls scenario, group of {size}: {step}: {reason}")]
pub struct MlsError {
    size: usize,
    step: &'static str,
    reason: String,
}

/// One MLS client: its crypto provider (with key storage), signer and credential.
struct Client {
    provider: OpenMlsRustCrypto,
    signer: SignatureKeyPair,
    credential: CredentialWithKey,
}

impl Client {
    fn new(name: &str) -> Self {
        let signer = SignatureKeyPair::new(SUITE.signature_algorithm()).expect("Ed25519 key");
        let credential = CredentialWithKey {
            credential: BasicCredential::new(name.as_bytes().to_vec()).into(),
            signature_key: signer.public().into(),
        };
        Self {
            provider: OpenMlsRustCrypto::default(),
            signer,
            credential,
        }
    }

    fn key_package(&self) -> KeyPackage {
        KeyPackage::builder()
            .build(SUITE, &self.provider, &self.signer, self.credential.clone())
            .expect("key package")
            .key_package()
            .clone()
    }
}

fn create_config() -> MlsGroupCreateConfig {
    MlsGroupCreateConfig::builder()
        .ciphersuite(SUITE)
        .use_ratchet_tree_extension(true)
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .build()
}

fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .use_ratchet_tree_extension(true)
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .build()
}

fn wire(message: &MlsMessageOut) -> Vec<u8> {
    message.tls_serialize_detached().expect("serialise")
}

/// Measures one group size; returns a row of figures.
pub fn measure(size: usize) -> Result<Row, MlsError> {
    let fail = |step: &'static str| {
        move |e: String| MlsError {
            size,
            step,
            reason: e,
        }
    };
    let creator = Client::new("creator");
    let watcher = Client::new("member-1");
    // The other members' KeyPackages; their keys stay in one provider we never measure.
    let crowd = Client::new("crowd");
    let mut key_packages = vec![watcher.key_package()];
    for i in 2..size {
        let signer = SignatureKeyPair::new(SUITE.signature_algorithm()).expect("Ed25519 key");
        let credential = CredentialWithKey {
            credential: BasicCredential::new(format!("member-{i}").into_bytes()).into(),
            signature_key: signer.public().into(),
        };
        key_packages.push(
            KeyPackage::builder()
                .build(SUITE, &crowd.provider, &signer, credential)
                .expect("key package")
                .key_package()
                .clone(),
        );
    }
    let mut row = Row::new();
    put(&mut row, "size", size);

    // Create the whole group in one commit.
    let started = Instant::now();
    let mut group = MlsGroup::new(
        &creator.provider,
        &creator.signer,
        &create_config(),
        creator.credential.clone(),
    )
    .map_err(|e| fail("create")(e.to_string()))?;
    let (commit, welcome, _) = group
        .add_members(&creator.provider, &creator.signer, &key_packages)
        .map_err(|e| fail("create")(e.to_string()))?;
    group
        .merge_pending_commit(&creator.provider)
        .map_err(|e| fail("create")(e.to_string()))?;
    put(&mut row, "create_ms", ms(started.elapsed()));
    put(&mut row, "create_commit_bytes", wire(&commit).len());
    let welcome_bytes = wire(&welcome);
    put(&mut row, "welcome_bytes", welcome_bytes.len());

    // A member joins from the Welcome (with the ratchet tree inside).
    let started = Instant::now();
    let MlsMessageBodyIn::Welcome(welcome) = MlsMessageIn::tls_deserialize_exact(&welcome_bytes)
        .map_err(|e| fail("join")(e.to_string()))?
        .extract()
    else {
        return Err(fail("join")("not a Welcome".into()));
    };
    let mut member =
        StagedWelcome::new_from_welcome(&watcher.provider, &join_config(), welcome, None)
            .map(|staged| staged.into_group(&watcher.provider))
            .map_err(|e| fail("join")(e.to_string()))?
            .map_err(|e| fail("join")(e.to_string()))?;
    put(&mut row, "join_welcome_ms", ms(started.elapsed()));

    // Add one member; the existing member processes the commit.
    let newcomer = Client::new("newcomer");
    let started = Instant::now();
    let (commit, _, _) = group
        .add_members(
            &creator.provider,
            &creator.signer,
            &[newcomer.key_package()],
        )
        .map_err(|e| fail("add one")(e.to_string()))?;
    group
        .merge_pending_commit(&creator.provider)
        .map_err(|e| fail("add one")(e.to_string()))?;
    put(&mut row, "add_one_ms", ms(started.elapsed()));
    let bytes = wire(&commit);
    put(&mut row, "add_commit_bytes", bytes.len());
    let took = process(&mut member, &watcher, &bytes).map_err(fail("process add"))?;
    put(&mut row, "process_add_ms", ms(took));

    // Remove that member again.
    let leaf = group
        .members()
        .find(|m| m.credential == newcomer.credential.credential)
        .map(|m| m.index)
        .ok_or_else(|| fail("remove one")("newcomer not in the group".into()))?;
    let started = Instant::now();
    let (commit, _, _) = group
        .remove_members(&creator.provider, &creator.signer, &[leaf])
        .map_err(|e| fail("remove one")(e.to_string()))?;
    group
        .merge_pending_commit(&creator.provider)
        .map_err(|e| fail("remove one")(e.to_string()))?;
    put(&mut row, "remove_one_ms", ms(started.elapsed()));
    let bytes = wire(&commit);
    put(&mut row, "remove_commit_bytes", bytes.len());
    let took = process(&mut member, &watcher, &bytes).map_err(fail("process remove"))?;
    put(&mut row, "process_remove_ms", ms(took));

    // 1 KiB application messages.
    let payload = vec![b'x'; 1024];
    let mut encrypted = Vec::new();
    let started = Instant::now();
    for _ in 0..MESSAGES {
        let message = group
            .create_message(&creator.provider, &creator.signer, &payload)
            .map_err(|e| fail("encrypt")(e.to_string()))?;
        encrypted.push(wire(&message));
    }
    let encrypt = started.elapsed() / MESSAGES;
    put(&mut row, "message_bytes", encrypted[0].len());
    let started = Instant::now();
    for bytes in &encrypted {
        let protocol = MlsMessageIn::tls_deserialize_exact(bytes)
            .map_err(|e| fail("decrypt")(e.to_string()))?
            .try_into_protocol_message()
            .map_err(|e| fail("decrypt")(e.to_string()))?;
        let processed = member
            .process_message(&watcher.provider, protocol)
            .map_err(|e| fail("decrypt")(e.to_string()))?;
        let ProcessedMessageContent::ApplicationMessage(app) = processed.into_content() else {
            return Err(fail("decrypt")("not an application message".into()));
        };
        if app.into_bytes() != payload {
            return Err(fail("decrypt")("payload differs".into()));
        }
    }
    let decrypt = started.elapsed() / MESSAGES;
    put(&mut row, "encrypt_1k_us", micros(encrypt));
    put(&mut row, "decrypt_1k_us", micros(decrypt));
    if member.epoch_authenticator().as_slice() != group.epoch_authenticator().as_slice() {
        return Err(fail("check")(
            "member and creator disagree on the epoch".into(),
        ));
    }
    Ok(row)
}

fn micros(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e7).round() / 10.0
}

/// A member processes and merges a commit; returns how long that took.
fn process(group: &mut MlsGroup, client: &Client, bytes: &[u8]) -> Result<Duration, String> {
    let started = Instant::now();
    let protocol = MlsMessageIn::tls_deserialize_exact(bytes)
        .map_err(|e| e.to_string())?
        .try_into_protocol_message()
        .map_err(|e| e.to_string())?;
    let processed = group
        .process_message(&client.provider, protocol)
        .map_err(|e| e.to_string())?;
    let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else {
        return Err("not a commit".into());
    };
    group
        .merge_staged_commit(&client.provider, *staged)
        .map_err(|e| e.to_string())?;
    Ok(started.elapsed())
}

pub fn run(sizes: &[usize]) -> Result<Report, MlsError> {
    let mut report = Report::new("mls");
    report.rows_name = "sizes";
    report.set(
        "ciphersuite",
        "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519",
    );
    for &size in sizes {
        report.rows.push(measure(size.max(2))?);
    }
    Ok(report)
}
