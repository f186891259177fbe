//! `biggroup`: a group grown to thousands of members through a real relay. A real client
//! engine (the committer) creates it and adds protocol-level devices in batches, one
//! commit per batch; then it adds one more real engine (the joiner, who fetches the
//! ratchet tree from the relay when the Welcome leaves it out), removes a member, and
//! sends one message to all. Each step's time and bytes are reported.
//!
//! The protocol-level members are enrolled by the bench's own organisation
//! ([`crate::wire_org`]) and each uploads one KeyPackage made with openmls and carrying
//! its certificate, as a client's would; they never process their Welcome.

use crate::harness::{bounded, resident_bytes, HarnessError, RelayProcess, Scratch};
use crate::report::{ms, Report};
use crate::wire_org::{
    authenticate, bootstrap, enrol_many, unexpected, Admin, DeviceKey, Enrolled, CONCURRENCY,
};
use muster_engine::Engine;
use muster_net::RelayConnection;
use muster_proto::{Certificate, Request, Response};
use openmls::prelude::tls_codec::Serialize as _;
use openmls::prelude::*;
use openmls_rust_crypto::OpenMlsRustCrypto;
use rusqlite::OptionalExtension as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Load {
    /// Members the group is grown to (the committer and protocol-level devices).
    pub members: usize,
    /// Members added per commit while growing.
    pub batch: usize,
    /// The group size past which the committer handles the group as large (the client's
    /// default when not given).
    pub large_group_past: Option<usize>,
}

impl openmls_traits::signatures::Signer for DeviceKey {
    fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, openmls_traits::signatures::SignerError> {
        Ok(DeviceKey::sign(self, payload))
    }

    fn signature_scheme(&self) -> SignatureScheme {
        SignatureScheme::ED25519
    }
}

/// A KeyPackage as a client makes it: its certificate in a basic credential, Muster's
/// ciphersuite and leaf capabilities.
fn key_package(
    provider: &OpenMlsRustCrypto,
    key: &DeviceKey,
    cert: &Certificate,
) -> Result<Vec<u8>, HarnessError> {
    let credential = CredentialWithKey {
        credential: BasicCredential::new(cert.to_bytes()).into(),
        signature_key: key.public().into(),
    };
    let bundle = KeyPackage::builder()
        .leaf_node_capabilities(muster_engine::leaf_capabilities())
        .build(muster_engine::CIPHERSUITE, provider, key, credential)
        .map_err(|e| HarnessError::Setup(format!("KeyPackage: {e}")))?;
    bundle
        .key_package()
        .tls_serialize_detached()
        .map_err(|e| HarnessError::Setup(format!("KeyPackage: {e}")))
}

/// Enrols `count` protocol-level devices, each with one KeyPackage on the relay.
async fn protocol_members(
    admin: &Admin,
    relay: &RelayProcess,
    count: usize,
) -> Result<Vec<String>, HarnessError> {
    let enrolled = enrol_many(admin, relay, "member", count).await?;
    let provider = Arc::new(OpenMlsRustCrypto::default());
    let endpoint =
        muster_net::endpoint_for_many("127.0.0.1:0".parse().expect("valid address"), None)?;
    let users = bounded(
        CONCURRENCY,
        enrolled
            .into_iter()
            .map(|Enrolled { user, key, cert }| {
                let (endpoint, provider) = (endpoint.clone(), provider.clone());
                async move {
                    let conn =
                        RelayConnection::connect_via(endpoint, &relay.addr, &relay.fingerprint)
                            .await?;
                    authenticate(&conn, &key, &relay.fingerprint).await?;
                    let answer = conn
                        .request(&Request::UploadKeyPackages {
                            key_packages: vec![key_package(&provider, &key, &cert)?],
                            last_resort: None,
                            replace: false,
                        })
                        .await?;
                    if !matches!(answer, Response::Ok) {
                        return Err(unexpected("UploadKeyPackages", answer));
                    }
                    conn.close().await;
                    Ok(user)
                }
            })
            .collect(),
    )
    .await?;
    Ok(users)
}

/// A real client engine enrolled in the bench's organisation, its certificate and
/// KeyPackages picked up.
async fn engine_member(
    admin: &Admin,
    relay: &RelayProcess,
    dir: &Path,
    user: &str,
) -> Result<Engine, HarnessError> {
    let code = admin.invite_code(relay, user).await?;
    let mut engine = Engine::open(&dir.join(user))?;
    let profile = muster_proto::Profile {
        display_name: user.to_string(),
        ..Default::default()
    };
    muster_driver::join(&mut engine, &code, profile).await?;
    admin.approve(user).await?;
    muster_driver::connect(&mut engine).await?.close().await;
    Ok(engine)
}

/// Sizes read from the relay's database (opened read-only beside the running relay).
struct RelayDb(PathBuf);

impl RelayDb {
    fn number(&self, sql: &str, group_id: &[u8]) -> Result<i64, HarnessError> {
        let failed = |e: rusqlite::Error| HarnessError::Setup(format!("relay database: {e}"));
        let db = rusqlite::Connection::open_with_flags(
            &self.0,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .map_err(failed)?;
        let value: Option<i64> = db
            .query_row(sql, [group_id], |r| r.get(0))
            .optional()
            .map_err(failed)?;
        Ok(value.unwrap_or(0))
    }

    /// Bytes of the group's latest commit.
    fn last_commit(&self, group_id: &[u8]) -> Result<i64, HarnessError> {
        self.number(
            "SELECT length(data) FROM messages WHERE group_id = ?1 AND kind = 'commit'
             ORDER BY seq DESC LIMIT 1",
            group_id,
        )
    }

    /// Bytes of the latest Welcome one added device holds.
    fn last_welcome(&self, group_id: &[u8]) -> Result<i64, HarnessError> {
        self.number(
            "SELECT length(data) FROM welcomes WHERE group_id = ?1 ORDER BY id DESC LIMIT 1",
            group_id,
        )
    }

    /// Bytes of the group's newest kept ratchet tree.
    fn tree(&self, group_id: &[u8]) -> Result<i64, HarnessError> {
        self.number(
            "SELECT length(data) FROM group_trees WHERE group_id = ?1 ORDER BY epoch DESC LIMIT 1",
            group_id,
        )
    }

    /// Bytes of the group's latest application message.
    fn last_message(&self, group_id: &[u8]) -> Result<i64, HarnessError> {
        self.number(
            "SELECT length(data) FROM messages WHERE group_id = ?1 AND kind = 'application'
             ORDER BY seq DESC LIMIT 1",
            group_id,
        )
    }
}

/// Syncs `engine` until `done` holds for what it reports, within `limit`; a problem the
/// sync reports (a Welcome it could not open) ends it at once.
async fn sync_until(
    engine: &mut Engine,
    conn: &muster_driver::Connection,
    limit: Duration,
    mut done: impl FnMut(&Engine, &muster_engine::SyncReport) -> bool,
) -> Result<(), HarnessError> {
    let deadline = Instant::now() + limit;
    loop {
        let report = engine.sync(conn).await?;
        if !report.problems.is_empty() {
            return Err(HarnessError::Setup(report.problems.join("; ")));
        }
        if done(engine, &report) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(HarnessError::Setup(format!(
                "not done within {} s",
                limit.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn run(load: Load) -> Result<Report, HarnessError> {
    let members = load.members.max(3);
    let batch = load.batch.max(1);
    let scratch = Scratch::new("biggroup")?;
    let relay = RelayProcess::start(&scratch.path().join("relay"))?;
    let relay_db = RelayDb(scratch.path().join("relay").join("relay.db"));
    let admin = bootstrap(&relay).await?;
    let mut committer = engine_member(&admin, &relay, scratch.path(), "committer").await?;
    let mut joiner = engine_member(&admin, &relay, scratch.path(), "joiner").await?;
    if let Some(max) = load.large_group_past {
        committer.set_large_group_past(max);
    }
    let enrol_started = Instant::now();
    let others = protocol_members(&admin, &relay, members - 1).await?;
    let enrol_time = enrol_started.elapsed();

    let conn = muster_driver::connect(&mut committer).await?;
    let group = committer.create_group(&conn, "big", &[], false).await?;
    let group_id =
        hex::decode(&group.id).map_err(|e| HarnessError::Setup(format!("group id: {e}")))?;
    let grow_started = Instant::now();
    let mut last_batch = Duration::ZERO;
    let mut grown = 1;
    for chunk in others.chunks(batch) {
        let started = Instant::now();
        grown = committer
            .add_members(&conn, &group.id, chunk)
            .await?
            .members
            .len();
        last_batch = started.elapsed();
    }
    let grow_time = grow_started.elapsed();
    let batch_commit = relay_db.last_commit(&group_id)?;
    let batch_welcome = relay_db.last_welcome(&group_id)?;

    let started = Instant::now();
    committer.add_member(&conn, &group.id, "joiner").await?;
    let add_time = started.elapsed();
    let add_commit = relay_db.last_commit(&group_id)?;
    let add_welcome = relay_db.last_welcome(&group_id)?;
    let tree = relay_db.tree(&group_id)?;

    let joiner_conn = muster_driver::connect(&mut joiner).await?;
    let started = Instant::now();
    let id = group.id.clone();
    sync_until(
        &mut joiner,
        &joiner_conn,
        Duration::from_secs(300),
        |_, r| r.joined_groups.contains(&id),
    )
    .await?;
    let join_time = started.elapsed();

    let started = Instant::now();
    committer
        .remove_member(&conn, &group.id, &others[0])
        .await?;
    let remove_time = started.elapsed();
    let remove_commit = relay_db.last_commit(&group_id)?;

    let started = Instant::now();
    committer
        .send_text(&conn, &group.id, "one message to everyone")
        .await?;
    let send_time = started.elapsed();
    let message_bytes = relay_db.last_message(&group_id)?;
    sync_until(
        &mut joiner,
        &joiner_conn,
        Duration::from_secs(120),
        |e, _| {
            e.messages_after(&id, 0)
                .is_ok_and(|list| list.iter().any(|m| m.text == "one message to everyone"))
        },
    )
    .await?;
    let received_time = started.elapsed();
    let members_after = joiner
        .groups()?
        .into_iter()
        .find(|g| g.id == group.id)
        .map_or(0, |g| g.members.len());
    let relay_rss = resident_bytes(relay.pid())?;
    joiner_conn.close().await;
    conn.close().await;

    let mut report = Report::new("biggroup");
    report.set("members", grown);
    report.set("batch", batch);
    report.set("enrol_ms", ms(enrol_time));
    report.set("grow_ms", ms(grow_time));
    report.set("last_batch_ms", ms(last_batch));
    report.set("batch_commit_bytes", batch_commit);
    report.set("batch_welcome_bytes", batch_welcome);
    report.set("add_one_ms", ms(add_time));
    report.set("add_commit_bytes", add_commit);
    report.set("add_welcome_bytes", add_welcome);
    report.set("tree_bytes", tree);
    report.set("join_ms", ms(join_time));
    report.set("remove_one_ms", ms(remove_time));
    report.set("remove_commit_bytes", remove_commit);
    report.set("message_send_ms", ms(send_time));
    report.set("message_bytes", message_bytes);
    report.set("message_to_joiner_ms", ms(received_time));
    report.set("joiner_sees_members", members_after);
    report.set("relay_rss_bytes", relay_rss);
    Ok(report)
}
