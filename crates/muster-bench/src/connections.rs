//! `connections`: many authenticated, idle devices connected to one relay at once, and
//! what each costs the relay in resident memory.
//!
//! The bench speaks the wire protocol itself: it registers an organisation with a root
//! key of its own, enrols and approves every device (each with its own Ed25519 key and
//! certificate), then connects and authenticates them all over one client UDP socket.

use crate::harness::{resident_bytes, HarnessError, RelayProcess, Scratch};
use crate::report::{ms, Report};
use muster_net::RelayConnection;
use muster_proto::{
    auth_transcript, device_id_for, now_unix, Certificate, CertificateBody, CodeSecret,
    EnrolmentGrant, EnrolmentRequest, GrantBody, InvitePurpose, OrgDescriptor, OrgRootKey, Profile,
    Request, RequestBody, Response, Role,
};
use ring::signature::{Ed25519KeyPair, KeyPair};
use std::sync::Arc;
use std::time::Instant;

/// Devices enrolled or connected at once.
const CONCURRENCY: usize = 64;

async fn bounded<T, F>(jobs: Vec<F>) -> Result<Vec<T>, HarnessError>
where
    F: std::future::Future<Output = Result<T, HarnessError>>,
{
    crate::harness::bounded(CONCURRENCY, jobs).await
}

/// Enrolments sent on one anonymous connection: what the relay answers before login.
const ENROLMENTS_PER_CONNECTION: usize = 8;

/// A device key of the bench's own.
struct DeviceKey(Ed25519KeyPair);

impl DeviceKey {
    fn generate() -> Self {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("Ed25519 key generation");
        Self(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("fresh key parses"))
    }

    fn public(&self) -> Vec<u8> {
        self.0.public_key().as_ref().to_vec()
    }

    fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.0.sign(message).as_ref().to_vec()
    }
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

fn unexpected(what: &str, answer: Response) -> HarnessError {
    HarnessError::Setup(format!("unexpected answer to {what}: {answer:?}"))
}

/// Proves possession of `key` on `conn`, as every device does after connecting.
async fn authenticate(
    conn: &RelayConnection,
    key: &DeviceKey,
    fingerprint: &str,
) -> Result<(), HarnessError> {
    let nonce = match conn
        .request(&Request::Hello {
            device_key: key.public(),
        })
        .await?
    {
        Response::Challenge { nonce } => nonce,
        other => return Err(unexpected("Hello", other)),
    };
    conn.request(&Request::Prove {
        signature: key.sign(&auth_transcript(fingerprint, &nonce)),
    })
    .await?;
    Ok(())
}

/// The organisation as its admin: the root key, the descriptor, the admin device's key
/// and certificate (it signs invites), and an admin session.
struct Admin {
    root: OrgRootKey,
    org: OrgDescriptor,
    key: DeviceKey,
    cert: Certificate,
    conn: RelayConnection,
}

fn certificate_body(
    org: &OrgDescriptor,
    user: &str,
    key: &[u8],
    roles: Vec<Role>,
) -> CertificateBody {
    let now = now_unix();
    CertificateBody {
        org_id: org.org_id.clone(),
        user: user.to_string(),
        device_id: device_id_for(key),
        device_key: key.to_vec(),
        profile: Profile {
            display_name: user.to_string(),
            ..Default::default()
        },
        roles,
        not_before: now.saturating_sub(300),
        not_after: now + 86_400,
    }
}

async fn bootstrap(relay: &RelayProcess) -> Result<Admin, HarnessError> {
    let root = OrgRootKey::generate();
    let org = OrgDescriptor {
        org_id: hex::encode(&sha256(&root.public_key())[..16]),
        name: "Bench Org".into(),
        root_public_key: root.public_key(),
    };
    let key = DeviceKey::generate();
    let admin = root.sign(certificate_body(
        &org,
        "admin",
        &key.public(),
        vec![Role::Admin, Role::Member],
    ));
    let conn = RelayConnection::connect(&relay.addr, &relay.fingerprint).await?;
    conn.request(&Request::Bootstrap {
        token: relay.bootstrap_token.clone(),
        org: org.clone(),
        admin: admin.clone(),
    })
    .await?;
    authenticate(&conn, &key, &relay.fingerprint).await?;
    Ok(Admin {
        root,
        org,
        key,
        cert: admin,
        conn,
    })
}

/// Invites, enrols and approves one device; returns its key.
async fn enrol(
    admin: &Admin,
    anonymous: &RelayConnection,
    user: String,
) -> Result<DeviceKey, HarnessError> {
    let secret = CodeSecret::generate();
    let now = now_unix();
    let grant = GrantBody {
        org_id: admin.org.org_id.clone(),
        purpose: InvitePurpose::NewUser,
        user: user.clone(),
        code_key: secret.public_key(),
        issued_at: now,
        expires_at: now + 3600,
    };
    let grant = EnrolmentGrant {
        signature: admin.key.sign(&grant.to_be_signed()),
        body: grant,
        issuer: admin.cert.clone(),
    };
    admin.conn.request(&Request::CreateInvite { grant }).await?;
    let key = DeviceKey::generate();
    let body = RequestBody {
        org_id: admin.org.org_id.clone(),
        purpose: InvitePurpose::NewUser,
        user: user.clone(),
        device_key: key.public(),
        profile: Profile {
            display_name: user.clone(),
            ..Default::default()
        },
        code_key: secret.public_key(),
        requested_at: now,
    };
    let request = EnrolmentRequest::new(body, &secret, |m| key.sign(m));
    match anonymous.request(&Request::Enrol { request }).await? {
        Response::EnrolmentSubmitted { .. } => {}
        other => return Err(unexpected("Enrol", other)),
    }
    let certificate = admin.root.sign(certificate_body(
        &admin.org,
        &user,
        &key.public(),
        vec![Role::Member],
    ));
    admin
        .conn
        .request(&Request::Approve { certificate })
        .await?;
    Ok(key)
}

pub async fn run(devices: usize) -> Result<Report, HarnessError> {
    let scratch = Scratch::new("connections")?;
    let relay = RelayProcess::start(&scratch.path().join("relay"))?;
    let admin = bootstrap(&relay).await?;
    let enrol_started = Instant::now();
    // The relay answers only a few requests on a connection that has not logged in
    // (eight): each anonymous connection enrols that many devices, one after another.
    let batches: Vec<Vec<usize>> = (0..devices)
        .collect::<Vec<_>>()
        .chunks(ENROLMENTS_PER_CONNECTION)
        .map(<[usize]>::to_vec)
        .collect();
    let keys: Vec<DeviceKey> = bounded(
        batches
            .into_iter()
            .map(|batch| {
                let (admin, relay) = (&admin, &relay);
                async move {
                    let anonymous =
                        RelayConnection::connect(&relay.addr, &relay.fingerprint).await?;
                    let mut keys = Vec::with_capacity(batch.len());
                    for i in batch {
                        keys.push(enrol(admin, &anonymous, format!("device{i}")).await?);
                    }
                    anonymous.close().await;
                    Ok(keys)
                }
            })
            .collect(),
    )
    .await?
    .into_iter()
    .flatten()
    .collect();
    let enrol_time = enrol_started.elapsed();

    let before = resident_bytes(relay.pid())?;
    let endpoint =
        muster_net::endpoint_for_many("127.0.0.1:0".parse().expect("valid address"), None)?;
    let endpoint = Arc::new(endpoint);
    let connect_started = Instant::now();
    let connections = bounded(
        keys.iter()
            .map(|key| {
                let endpoint = endpoint.clone();
                let relay = &relay;
                async move {
                    let conn = RelayConnection::connect_via(
                        (*endpoint).clone(),
                        &relay.addr,
                        &relay.fingerprint,
                    )
                    .await?;
                    authenticate(&conn, key, &relay.fingerprint).await?;
                    Ok(conn)
                }
            })
            .collect(),
    )
    .await?;
    let connect_time = connect_started.elapsed();
    // Every device proves it is still served: one cheap request each.
    let served = bounded(
        connections
            .iter()
            .map(|conn| async move {
                match conn.request(&Request::KeyPackageCount).await? {
                    Response::KeyPackageCount { .. } => Ok(()),
                    other => Err(unexpected("KeyPackageCount", other)),
                }
            })
            .collect(),
    )
    .await?
    .len();
    let after = resident_bytes(relay.pid())?;
    let per_connection = after.saturating_sub(before) as f64 / devices.max(1) as f64;

    let mut report = Report::new("connections");
    report.set("devices", devices);
    report.set("connected", served);
    report.set("enrol_ms", ms(enrol_time));
    report.set("connect_ms", ms(connect_time));
    report.set("relay_rss_before_bytes", before);
    report.set("relay_rss_after_bytes", after);
    report.set("bytes_per_connection", per_connection.round());
    report.set(
        "kib_per_connection",
        (per_connection / 1024.0 * 10.0).round() / 10.0,
    );
    drop(connections);
    Ok(report)
}
