//! A modified client: a real member's keys and MLS state, driven directly to produce what
//! an honest client never would, and sent to the relay over its own authenticated QUIC
//! connection (or slipped into the relay's database, as a hostile operator would).

use muster_e2e::{relay_db, Device, Org};
use muster_proto::{auth_transcript, Request, Response};
use openmls::prelude::tls_codec::Serialize as _;
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::RustCrypto;
use openmls_traits::signatures::Signer as _;
use openmls_traits::OpenMlsProvider;
use rusqlite::Connection;

/// The device store's codec, as the engine writes it.
pub use muster_mls_store::StoreCodec;

pub struct Provider<'a> {
    crypto: RustCrypto,
    storage: openmls_sqlite_storage::SqliteStorageProvider<StoreCodec, &'a Connection>,
}

impl<'a> OpenMlsProvider for Provider<'a> {
    type CryptoProvider = RustCrypto;
    type RandProvider = RustCrypto;
    type StorageProvider =
        openmls_sqlite_storage::SqliteStorageProvider<StoreCodec, &'a Connection>;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }
    fn crypto(&self) -> &Self::CryptoProvider {
        &self.crypto
    }
    fn rand(&self) -> &Self::RandProvider {
        &self.crypto
    }
}

/// A member's device store opened by a modified client. The real `muster` must not run
/// on the same home while it is open.
pub struct Rogue {
    db: Connection,
    device_key: Vec<u8>,
    relay: String,
    fingerprint: String,
}

impl Rogue {
    /// Takes over the store of `device` itself (its state moves on as the rogue acts).
    pub fn open(device: &Device) -> Self {
        Self::open_store(&device.home.join("muster.db"), &device.store_key())
    }

    /// Works on a copy of `device`'s store, leaving the device itself untouched.
    pub fn copy_of(device: &Device, dir: &std::path::Path) -> Self {
        let copy = dir.join(format!("{}-rogue.db", device.name));
        std::fs::copy(device.home.join("muster.db"), &copy).unwrap();
        for suffix in ["-wal", "-shm"] {
            let wal = device.home.join(format!("muster.db{suffix}"));
            if wal.exists() {
                std::fs::copy(&wal, dir.join(format!("{}-rogue.db{suffix}", device.name))).unwrap();
            }
        }
        Self::open_store(&copy, &device.store_key())
    }

    fn open_store(path: &std::path::Path, key: &muster_keystore::StoreKey) -> Self {
        let db = muster_e2e::open_encrypted(path, key);
        let (device_key, relay, fingerprint): (Vec<u8>, String, String) = db
            .query_row(
                "SELECT device_key, relay, fingerprint FROM device WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        Self {
            db,
            device_key,
            relay,
            fingerprint,
        }
    }

    pub fn provider(&self) -> Provider<'_> {
        Provider {
            crypto: RustCrypto::default(),
            storage: openmls_sqlite_storage::SqliteStorageProvider::new(&self.db),
        }
    }

    pub fn signer(&self) -> SignatureKeyPair {
        SignatureKeyPair::read(
            self.provider().storage(),
            &self.device_key,
            SignatureScheme::ED25519,
        )
        .expect("the device's signing key")
    }

    pub fn group(&self, group_id: &[u8]) -> MlsGroup {
        MlsGroup::load(self.provider().storage(), &GroupId::from_slice(group_id))
            .unwrap()
            .expect("the device's group state")
    }

    /// Encrypts `envelope` (any JSON, valid or not) as an application message of the group.
    /// An object without a message number gets the device's next one, as a client's would.
    pub fn app_message(&self, group_id: &[u8], envelope: &serde_json::Value) -> Vec<u8> {
        self.app_message_with_aad(group_id, envelope, Vec::new())
    }

    /// [`Rogue::app_message`] with `aad` as the message's authenticated data.
    pub fn app_message_with_aad(
        &self,
        group_id: &[u8],
        envelope: &serde_json::Value,
        aad: Vec<u8>,
    ) -> Vec<u8> {
        self.app_message_signed_by(group_id, envelope, aad, &self.signer())
    }

    /// [`Rogue::app_message_with_aad`] signed by `signer`, which need not be the key in
    /// the device's leaf.
    pub fn app_message_signed_by(
        &self,
        group_id: &[u8],
        envelope: &serde_json::Value,
        aad: Vec<u8>,
        signer: &SignatureKeyPair,
    ) -> Vec<u8> {
        let mut envelope = envelope.clone();
        if let Some(fields) = envelope.as_object_mut().filter(|f| !f.contains_key("n")) {
            let key = format!(
                "sent_n:{}",
                group_id
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            );
            let n: i64 = self
                .db
                .query_row(
                    "INSERT INTO sync_state (key, value) VALUES (?1, 1)
                     ON CONFLICT (key) DO UPDATE SET value = value + 1 RETURNING value",
                    [key],
                    |r| r.get(0),
                )
                .unwrap();
            fields.insert("n".into(), n.into());
        }
        let provider = self.provider();
        let mut group = self.group(group_id);
        group.set_aad(aad);
        let bytes = serde_json::to_vec(&envelope).unwrap();
        group
            .create_message(&provider, signer, &bytes)
            .unwrap()
            .tls_serialize_detached()
            .unwrap()
    }

    /// Builds a commit with `build` on the group's current state, leaving the pending
    /// commit unmerged; returns it with the epoch it was made for.
    pub fn commit(
        &self,
        group_id: &[u8],
        build: impl FnOnce(&mut MlsGroup, &Provider<'_>, &SignatureKeyPair) -> MlsMessageOut,
    ) -> (Vec<u8>, u64) {
        let provider = self.provider();
        let mut group = self.group(group_id);
        let epoch = group.epoch().as_u64();
        let message = build(&mut group, &provider, &self.signer());
        (message.tls_serialize_detached().unwrap(), epoch)
    }

    /// Sends requests to the relay as this device, over one authenticated connection.
    pub fn requests(&self, requests: Vec<Request>) -> Vec<Response> {
        let session = self.session();
        let answers = session.runtime.block_on(async {
            let mut answers = Vec::new();
            for request in requests {
                answers.push(match session.conn.request(&request).await {
                    Ok(response) => response,
                    Err(muster_net::NetError::Refused(e)) => Response::Error(e),
                    Err(e) => panic!("request failed: {e}"),
                });
            }
            answers
        });
        session.runtime.block_on(session.conn.close());
        answers
    }

    /// Sends one request; returns the relay's answer (refusals as `Response::Error`).
    pub fn request(&self, request: Request) -> Response {
        self.requests(vec![request]).remove(0)
    }

    /// Posts an application message through the relay, as any member may.
    pub fn send(&self, group_id: &[u8], message: Vec<u8>) -> Response {
        let mut client_id = vec![0u8; 16];
        client_id[..8].copy_from_slice(&(message.len() as u64).to_be_bytes());
        client_id[8..].copy_from_slice(&message[message.len() - 8..]);
        self.request(Request::Send {
            group_id: group_id.to_vec(),
            message,
            client_id,
        })
    }
}

/// Appends `data` to the group's log in the relay's database, as a hostile operator would.
pub fn inject(org: &Org, group_id: &[u8], kind: &str, sender: &Device, data: &[u8], epoch: u64) {
    let relay = relay_db(org);
    let last: i64 = relay
        .query_row(
            "SELECT last_seq FROM groups WHERE group_id = ?1",
            [group_id],
            |r| r.get(0),
        )
        .unwrap();
    relay
        .execute(
            "INSERT INTO messages (group_id, seq, epoch, kind, sender_device, client_id, data, stored_at)
             VALUES (?1, ?2, ?3, ?4, ?5, NULL, ?6, 0)",
            rusqlite::params![
                group_id,
                last + 1,
                epoch as i64,
                kind,
                muster_e2e::device_id(sender),
                data
            ],
        )
        .unwrap();
    relay
        .execute(
            "UPDATE groups SET last_seq = ?2 WHERE group_id = ?1",
            rusqlite::params![group_id, last + 1],
        )
        .unwrap();
}

/// Whether a member's credential carries a certificate naming `user`.
pub fn names(credential: &Credential, user: &str) -> bool {
    BasicCredential::try_from(credential.clone())
        .ok()
        .and_then(|c| muster_proto::Certificate::from_bytes(c.identity()).ok())
        .is_some_and(|c| c.body.user == user)
}

/// An authenticated connection of a rogue device, kept open across calls.
pub struct Session<'a> {
    rogue: &'a Rogue,
    runtime: tokio::runtime::Runtime,
    conn: muster_net::RelayConnection,
    sent: usize,
}

impl Rogue {
    /// Connects and authenticates as this device.
    pub fn session(&self) -> Session<'_> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let conn = runtime.block_on(async {
            let conn = muster_net::RelayConnection::connect(&self.relay, &self.fingerprint)
                .await
                .unwrap();
            let Response::Challenge { nonce } = conn
                .request(&Request::Hello {
                    device_key: self.device_key.clone(),
                })
                .await
                .unwrap()
            else {
                panic!("no challenge")
            };
            let signature = self
                .signer()
                .sign(&auth_transcript(&self.fingerprint, &nonce))
                .unwrap();
            conn.request(&Request::Prove { signature }).await.unwrap();
            conn
        });
        Session {
            rogue: self,
            runtime,
            conn,
            sent: 0,
        }
    }
}

impl Session<'_> {
    /// The authenticated connection, for a test that speaks the protocol by hand.
    pub fn connection(&self) -> &muster_net::RelayConnection {
        &self.conn
    }

    /// Runs `work` on this session's runtime.
    pub fn run<T>(&self, work: impl std::future::Future<Output = T>) -> T {
        self.runtime.block_on(work)
    }

    /// Encrypts `count` text messages for the group, then sends them one by one and
    /// returns how long the relay took to answer each.
    pub fn timed_sends(&mut self, group_id: &[u8], count: usize) -> Vec<std::time::Duration> {
        let first = self.sent;
        self.sent += count;
        let messages: Vec<Vec<u8>> = (first..first + count)
            .map(|i| {
                let envelope = serde_json::json!({"v": 1, "id": format!("{:032x}", i + 1),
                    "sent_at": 0, "body": {"type": "text", "text": format!("timed {i}")}});
                self.rogue.app_message(group_id, &envelope)
            })
            .collect();
        let conn = &self.conn;
        self.runtime.block_on(async {
            let mut times = Vec::new();
            for (i, message) in messages.into_iter().enumerate() {
                let started = std::time::Instant::now();
                let answer = conn
                    .request(&Request::Send {
                        group_id: group_id.to_vec(),
                        message,
                        client_id: format!("timed-{}", first + i).into_bytes(),
                    })
                    .await;
                assert!(
                    matches!(answer, Ok(Response::Stored { .. })),
                    "send failed: {answer:?}"
                );
                times.push(started.elapsed());
            }
            times
        })
    }
}

impl Rogue {
    /// The organisation root key, on the admin device that holds it.
    pub fn root_key(&self) -> muster_proto::OrgRootKey {
        let pkcs8: Vec<u8> = self
            .db
            .query_row("SELECT root_key FROM device WHERE id = 1", [], |r| r.get(0))
            .unwrap();
        muster_proto::OrgRootKey::from_pkcs8(&pkcs8).unwrap()
    }

    /// This device's own certificate, as it holds it.
    pub fn certificate(&self) -> muster_proto::Certificate {
        let bytes: Vec<u8> = self
            .db
            .query_row("SELECT certificate FROM device WHERE id = 1", [], |r| {
                r.get(0)
            })
            .unwrap();
        muster_proto::Certificate::from_bytes(&bytes).unwrap()
    }

    /// Signs `message` with this device's own key.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.signer().sign(message).unwrap()
    }

    /// The organisation this device pinned.
    pub fn org(&self) -> muster_proto::OrgDescriptor {
        let org: Vec<u8> = self
            .db
            .query_row("SELECT org FROM device WHERE id = 1", [], |r| r.get(0))
            .unwrap();
        serde_json::from_slice(&org).unwrap()
    }
}
