//! Entry points for coverage-guided fuzzing (cargo feature `fuzzing`). They run what a
//! device does with bytes that arrive from the network: decoding them as MLS messages and
//! processing them against a real group, which is all a relay or outsider can reach, and
//! applying decrypted content to a store, which any member of the group controls fully.

use crate::content::{Body, Envelope};
use crate::conversation::{self, Author, Origin};
use crate::store::SCHEMA;
use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use rusqlite::{params, Connection};
use std::sync::{LazyLock, Mutex};

const GROUP: &[u8] = b"fuzz-group";

struct Member {
    provider: OpenMlsRustCrypto,
    group: MlsGroup,
}

static MEMBER: LazyLock<Mutex<Member>> = LazyLock::new(|| {
    let provider = OpenMlsRustCrypto::default();
    let suite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;
    let signer = SignatureKeyPair::new(suite.signature_algorithm()).expect("key pair");
    let credential = CredentialWithKey {
        credential: BasicCredential::new(b"fuzz".to_vec()).into(),
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
        GroupId::from_slice(GROUP),
        credential,
    )
    .expect("group");
    Mutex::new(Member { provider, group })
});

/// Everything a device does with `data` as an inbound message; must never panic.
pub fn inbound(data: &[u8]) {
    mls_message(data);
    content(data);
}

fn mls_message(data: &[u8]) {
    let Ok(message) = MlsMessageIn::tls_deserialize_exact(data) else {
        return;
    };
    if let Ok(protocol) = message.clone().try_into_protocol_message() {
        let mut member = MEMBER.lock().unwrap_or_else(|e| e.into_inner());
        let Member { provider, group } = &mut *member;
        if let Ok(processed) = group.process_message(provider, protocol) {
            if let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() {
                let _ = staged.add_proposals().count() + staged.remove_proposals().count();
            }
        }
    }
    if let MlsMessageBodyIn::Welcome(welcome) = message.extract() {
        let provider = OpenMlsRustCrypto::default();
        let config = MlsGroupJoinConfig::builder()
            .use_ratchet_tree_extension(true)
            .build();
        let _ = StagedWelcome::new_from_welcome(&provider, &config, welcome, None);
    }
}

fn content(data: &[u8]) {
    let Ok(envelope) = Envelope::from_bytes(data) else {
        return;
    };
    let db = Connection::open_in_memory().expect("in-memory database");
    db.execute_batch(SCHEMA).expect("schema");
    db.execute(
        "INSERT INTO groups (group_id, name, state, created_at) VALUES (?1, 'ops', 'active', 0)",
        params![GROUP],
    )
    .expect("group row");
    let alice = Author {
        user: "alice",
        device: "a1",
        admin: true,
    };
    let bob = Author {
        user: "bob",
        device: "b1",
        admin: false,
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
}
