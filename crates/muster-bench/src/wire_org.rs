//! An organisation run by the bench itself at the wire-protocol level: it registers the
//! organisation with a root key of its own, and enrols and approves devices (each with
//! its own Ed25519 key and certificate) without a client engine, so that thousands of
//! members cost seconds to set up.

use crate::harness::{HarnessError, RelayProcess};
use muster_net::RelayConnection;
use muster_proto::{
    auth_transcript, device_id_for, now_unix, Certificate, CertificateBody, CodeSecret,
    EnrolmentGrant, EnrolmentRequest, GrantBody, InviteCode, InvitePurpose, OrgDescriptor,
    OrgRootKey, Profile, Request, RequestBody, Response, Role,
};
use ring::signature::{Ed25519KeyPair, KeyPair};

/// Enrolments sent on one anonymous connection: what the relay answers before login.
const ENROLMENTS_PER_CONNECTION: usize = 8;

/// Devices enrolled or connected at once.
pub const CONCURRENCY: usize = 64;

/// A device key of the bench's own.
pub struct DeviceKey(Ed25519KeyPair);

impl DeviceKey {
    pub fn generate() -> Self {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("Ed25519 key generation");
        Self(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("fresh key parses"))
    }

    pub fn public(&self) -> Vec<u8> {
        self.0.public_key().as_ref().to_vec()
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.0.sign(message).as_ref().to_vec()
    }
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

pub fn unexpected(what: &str, answer: Response) -> HarnessError {
    HarnessError::Setup(format!("unexpected answer to {what}: {answer:?}"))
}

/// Proves possession of `key` on `conn`, as every device does after connecting.
pub async fn authenticate(
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
pub struct Admin {
    pub root: OrgRootKey,
    pub org: OrgDescriptor,
    pub key: DeviceKey,
    pub cert: Certificate,
    pub conn: RelayConnection,
}

pub fn certificate_body(
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

pub async fn bootstrap(relay: &RelayProcess) -> Result<Admin, HarnessError> {
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

impl Admin {
    /// Files an invite for `user`; returns the code's secret.
    async fn invite(&self, user: &str) -> Result<CodeSecret, HarnessError> {
        let secret = CodeSecret::generate();
        let now = now_unix();
        let grant = GrantBody {
            org_id: self.org.org_id.clone(),
            purpose: InvitePurpose::NewUser,
            user: user.to_string(),
            code_key: secret.public_key(),
            issued_at: now,
            expires_at: now + 3600,
        };
        let grant = EnrolmentGrant {
            signature: self.key.sign(&grant.to_be_signed()),
            body: grant,
            issuer: self.cert.clone(),
        };
        self.conn.request(&Request::CreateInvite { grant }).await?;
        Ok(secret)
    }

    /// An invite code for `user` that a client engine joins with.
    pub async fn invite_code(
        &self,
        relay: &RelayProcess,
        user: &str,
    ) -> Result<String, HarnessError> {
        let secret = self.invite(user).await?;
        Ok(InviteCode {
            purpose: InvitePurpose::NewUser,
            relay: relay.addr.clone(),
            fingerprint: relay.fingerprint.clone(),
            org: self.org.clone(),
            user: user.to_string(),
            secret: secret.to_hex(),
            expires_at: now_unix() + 3600,
        }
        .encode())
    }

    /// Approves the enrolment waiting for `user` (a client engine's).
    pub async fn approve(&self, user: &str) -> Result<(), HarnessError> {
        let pending = match self.conn.request(&Request::ListPending).await? {
            Response::Pending(list) => list,
            other => return Err(unexpected("ListPending", other)),
        };
        let waiting = pending
            .into_iter()
            .find(|p| p.user == user)
            .ok_or_else(|| HarnessError::Setup(format!("no enrolment of {user} is waiting")))?;
        let mut body = certificate_body(&self.org, user, &waiting.device_key, vec![Role::Member]);
        body.profile = waiting.profile;
        let certificate = self.root.sign(body);
        self.conn.request(&Request::Approve { certificate }).await?;
        Ok(())
    }
}

/// Invites, enrols and approves one device; returns its key and certificate.
async fn enrol(
    admin: &Admin,
    anonymous: &RelayConnection,
    user: String,
) -> Result<(DeviceKey, Certificate), HarnessError> {
    let secret = admin.invite(&user).await?;
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
        requested_at: now_unix(),
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
        .request(&Request::Approve {
            certificate: certificate.clone(),
        })
        .await?;
    Ok((key, certificate))
}

/// A device the bench enrolled and approved.
pub struct Enrolled {
    pub user: String,
    pub key: DeviceKey,
    pub cert: Certificate,
}

/// Enrols and approves `count` devices of users `{prefix}0`, `{prefix}1`, ... The relay
/// answers only a few requests on a connection that has not logged in, so each anonymous
/// connection enrols that many, one after another, and several connections go at once.
pub async fn enrol_many(
    admin: &Admin,
    relay: &RelayProcess,
    prefix: &str,
    count: usize,
) -> Result<Vec<Enrolled>, HarnessError> {
    let batches: Vec<Vec<usize>> = (0..count)
        .collect::<Vec<_>>()
        .chunks(ENROLMENTS_PER_CONNECTION)
        .map(<[usize]>::to_vec)
        .collect();
    let enrolled = crate::harness::bounded(
        CONCURRENCY,
        batches
            .into_iter()
            .map(|batch| async move {
                let anonymous = RelayConnection::connect(&relay.addr, &relay.fingerprint).await?;
                let mut devices = Vec::with_capacity(batch.len());
                for i in batch {
                    let user = format!("{prefix}{i}");
                    let (key, cert) = enrol(admin, &anonymous, user.clone()).await?;
                    devices.push(Enrolled { user, key, cert });
                }
                anonymous.close().await;
                Ok(devices)
            })
            .collect(),
    )
    .await?;
    Ok(enrolled.into_iter().flatten().collect())
}
