//! Organisation descriptor, root key and identity certificates.

use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

const CERT_CONTEXT: &[u8] = b"muster-cert-v1\0";

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The stable identifier of a device: the first 16 bytes of SHA-256 of its signature key, hex.
pub fn device_id_for(device_key: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, device_key);
    hex::encode(&digest.as_ref()[..16])
}

/// Checks a user handle: 1 to 32 characters of `a-z`, `0-9`, `.`, `_`, `-`, starting with a letter or digit.
pub fn validate_handle(handle: &str) -> Result<(), CertError> {
    let ok = !handle.is_empty()
        && handle.len() <= 32
        && handle
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
        && handle
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(CertError::InvalidHandle(handle.to_string()))
    }
}

/// What went wrong with a certificate or key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CertError {
    #[error("certificate signature does not verify against the organisation root key")]
    BadSignature,
    #[error("certificate belongs to organisation {found}, expected {expected}")]
    WrongOrg { expected: String, found: String },
    #[error("certificate is not valid now (valid from {not_before} to {not_after}, now {now})")]
    Expired {
        not_before: u64,
        now: u64,
        not_after: u64,
    },
    #[error("certificate device id does not match its device key")]
    DeviceIdMismatch,
    #[error("certificate could not be decoded")]
    Malformed,
    #[error("invalid user handle {0:?}: use 1-32 of a-z 0-9 . _ -")]
    InvalidHandle(String),
    #[error("invalid organisation root key")]
    BadRootKey,
    #[error("an admin certificate must be signed by the organisation root, not by another admin")]
    AdminNotFromRoot,
    #[error("it was signed by {0}, whose certificate does not carry the admin role")]
    IssuerNotAdmin(String),
    #[error("the certificate of the admin device that signed it is not valid: {0}")]
    Issuer(Box<CertError>),
    #[error("it stays valid beyond the certificate of the admin device that signed it")]
    OutlivesIssuer,
    #[error("organisation policy out of bounds: {0}")]
    PolicyOutOfBounds(&'static str),
}

/// The pinned description of an organisation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgDescriptor {
    pub org_id: String,
    pub name: String,
    pub root_public_key: Vec<u8>,
}

/// A role granted in an identity certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Admin,
    Member,
    /// The organisation's compliance archive: a headless device that keeps a copy of every
    /// archived group's conversation. Members see it in the group.
    Archive,
    /// A service account (`muster bot serve`): it sends texts and alerts to the groups it
    /// is in and administers nothing. Members see it marked as a bot.
    Bot,
}

/// The attributes a user chose and an admin approves.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub display_name: String,
    pub title: Option<String>,
    pub department: Option<String>,
}

/// The signed content of an identity certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateBody {
    pub org_id: String,
    pub user: String,
    pub device_id: String,
    pub device_key: Vec<u8>,
    pub profile: Profile,
    pub roles: Vec<Role>,
    pub not_before: u64,
    pub not_after: u64,
}

/// An identity certificate: a body signed by the organisation root key, or by an admin
/// device whose own certificate the root signed (see [`Certificate::verify_issuer`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    pub body: CertificateBody,
    pub signature: Vec<u8>,
    /// The certificate of the admin device that signed this one; `None` when the
    /// organisation root signed it.
    #[serde(default)]
    pub issuer: Option<IssuerCertificate>,
}

/// The root-signed admin certificate carried by what an admin device signs. It has no
/// issuer of its own, so a chain is one link long and its encoding cannot nest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuerCertificate {
    pub body: CertificateBody,
    pub signature: Vec<u8>,
}

impl IssuerCertificate {
    /// The issuer's admin certificate as a root-signed [`Certificate`].
    pub fn certificate(&self) -> Certificate {
        Certificate {
            body: self.body.clone(),
            signature: self.signature.clone(),
            issuer: None,
        }
    }

    /// The certificate as carried: only a root-signed certificate can issue, so one with
    /// an issuer of its own is carried without it and fails to verify as an issuer.
    pub fn of(cert: &Certificate) -> Self {
        IssuerCertificate {
            body: cert.body.clone(),
            signature: cert.signature.clone(),
        }
    }
}

/// A certificate as encoded before admin devices could issue them.
#[derive(Deserialize)]
struct RootOnlyCertificate {
    body: CertificateBody,
    signature: Vec<u8>,
}

fn signed_bytes(body: &CertificateBody) -> Vec<u8> {
    let mut out = CERT_CONTEXT.to_vec();
    out.extend(postcard::to_stdvec(body).expect("certificate body serialises"));
    out
}

/// The bytes an admin device signs to issue `body` under its certificate `issuer`: the
/// context, the digest of the issuer's certificate (so a signature cannot be moved to
/// another certificate of the same key), then the body.
pub fn signed_by_admin(
    context: &[u8],
    issuer: &IssuerCertificate,
    body: &impl Serialize,
) -> Vec<u8> {
    let mut out = context.to_vec();
    out.extend(issuer.certificate().digest());
    out.extend(postcard::to_stdvec(body).expect("signed body serialises"));
    out
}

/// Checks that `issuer` may sign for the organisation at `at`: a root-signed admin
/// certificate valid then.
pub(crate) fn check_admin_issuer(
    issuer: &IssuerCertificate,
    org: &OrgDescriptor,
    at: u64,
) -> Result<(), CertError> {
    let issuer = issuer.certificate();
    if !issuer.is_admin() {
        return Err(CertError::IssuerNotAdmin(issuer.body.user.clone()));
    }
    issuer
        .verify(org, at)
        .map_err(|e| CertError::Issuer(Box::new(e)))
}

/// Checks a device's Ed25519 signature over `message`.
pub fn verify_device_signature(
    key: &[u8],
    message: &[u8],
    signature: &[u8],
) -> Result<(), CertError> {
    check_ed25519(key, message, signature)
}

pub(crate) fn check_ed25519(key: &[u8], message: &[u8], signature: &[u8]) -> Result<(), CertError> {
    UnparsedPublicKey::new(&ED25519, key)
        .verify(message, signature)
        .map_err(|_| CertError::BadSignature)
}

const ADMIN_CERT_CONTEXT: &[u8] = b"muster-cert-by-admin-v1\0";

impl Certificate {
    /// Verifies the certificate against the pinned organisation at time `now`.
    pub fn verify(&self, org: &OrgDescriptor, now: u64) -> Result<(), CertError> {
        self.verify_issuer(org)?;
        self.check_validity(now)
    }

    /// Checks everything about the certificate except its dates and revocations: the
    /// organisation, the signature, that the device id belongs to the key, and the
    /// handle. The signature is the root's, or that of an admin device whose certificate
    /// the root signed, that was valid when this one starts and stays valid at least as
    /// long; admin certificates themselves come from the root only. Whether the issuing
    /// device was revoked is for [`crate::RevocationList::covers`].
    pub fn verify_issuer(&self, org: &OrgDescriptor) -> Result<(), CertError> {
        if self.body.org_id != org.org_id {
            return Err(CertError::WrongOrg {
                expected: org.org_id.clone(),
                found: self.body.org_id.clone(),
            });
        }
        match &self.issuer {
            None => check_ed25519(
                &org.root_public_key,
                &signed_bytes(&self.body),
                &self.signature,
            )?,
            Some(issuer) => {
                if self.is_admin() {
                    return Err(CertError::AdminNotFromRoot);
                }
                check_admin_issuer(issuer, org, self.body.not_before)?;
                if self.body.not_after > issuer.body.not_after {
                    return Err(CertError::OutlivesIssuer);
                }
                check_ed25519(
                    &issuer.body.device_key,
                    &signed_by_admin(ADMIN_CERT_CONTEXT, issuer, &self.body),
                    &self.signature,
                )?;
            }
        }
        if device_id_for(&self.body.device_key) != self.body.device_id {
            return Err(CertError::DeviceIdMismatch);
        }
        validate_handle(&self.body.user)?;
        Ok(())
    }

    /// Signs `body` as the admin device holding `issuer`, with `sign` (its device key).
    /// The result verifies only if `issuer` is a root-signed admin certificate that
    /// covers `body`'s validity and `body` grants no admin role.
    pub fn issue_as_admin(
        body: CertificateBody,
        issuer: &Certificate,
        sign: impl FnOnce(&[u8]) -> Vec<u8>,
    ) -> Certificate {
        let issuer = IssuerCertificate::of(issuer);
        let signature = sign(&signed_by_admin(ADMIN_CERT_CONTEXT, &issuer, &body));
        Certificate {
            body,
            signature,
            issuer: Some(issuer),
        }
    }

    /// The device id of the admin device that issued this certificate (`None`: the root).
    pub fn issuer_device(&self) -> Option<&str> {
        self.issuer.as_ref().map(|i| i.body.device_id.as_str())
    }

    /// SHA-256 of the encoded certificate: what a revocation vouches for.
    pub fn digest(&self) -> Vec<u8> {
        ring::digest::digest(&ring::digest::SHA256, &self.to_bytes())
            .as_ref()
            .to_vec()
    }

    /// Checks that `now` lies within the certificate's validity period.
    pub fn check_validity(&self, now: u64) -> Result<(), CertError> {
        if now < self.body.not_before || now > self.body.not_after {
            return Err(CertError::Expired {
                not_before: self.body.not_before,
                now,
                not_after: self.body.not_after,
            });
        }
        Ok(())
    }

    pub fn is_admin(&self) -> bool {
        self.body.roles.contains(&Role::Admin)
    }

    pub fn is_archive(&self) -> bool {
        self.body.roles.contains(&Role::Archive)
    }

    pub fn is_bot(&self) -> bool {
        self.body.roles.contains(&Role::Bot)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("certificate serialises")
    }

    /// Decodes a certificate, including one stored before admin devices could issue them.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CertError> {
        if let Ok(cert) = postcard::from_bytes(bytes) {
            return Ok(cert);
        }
        let old: RootOnlyCertificate =
            postcard::from_bytes(bytes).map_err(|_| CertError::Malformed)?;
        Ok(Certificate {
            body: old.body,
            signature: old.signature,
            issuer: None,
        })
    }
}

/// The organisation root signing key, held only by admin devices.
pub struct OrgRootKey {
    pkcs8: Vec<u8>,
    pub(crate) pair: Ed25519KeyPair,
}

impl OrgRootKey {
    pub fn generate() -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .expect("system randomness available")
            .as_ref()
            .to_vec();
        Self::from_pkcs8(&pkcs8).expect("fresh key parses")
    }

    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, CertError> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|_| CertError::BadRootKey)?;
        Ok(Self {
            pkcs8: pkcs8.to_vec(),
            pair,
        })
    }

    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    pub fn public_key(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }

    pub fn sign(&self, body: CertificateBody) -> Certificate {
        let signature = self.pair.sign(&signed_bytes(&body)).as_ref().to_vec();
        Certificate {
            body,
            signature,
            issuer: None,
        }
    }
}

impl std::fmt::Debug for OrgRootKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OrgRootKey(***)")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn body(org: &OrgDescriptor, key: &[u8]) -> CertificateBody {
        CertificateBody {
            org_id: org.org_id.clone(),
            user: "bob".into(),
            device_id: device_id_for(key),
            device_key: key.to_vec(),
            profile: Profile {
                display_name: "Bob".into(),
                ..Default::default()
            },
            roles: vec![Role::Member],
            not_before: 100,
            not_after: 200,
        }
    }

    pub(crate) fn org(root: &OrgRootKey) -> OrgDescriptor {
        OrgDescriptor {
            org_id: "o1".into(),
            name: "Acme".into(),
            root_public_key: root.public_key(),
        }
    }

    #[test]
    fn signed_certificate_verifies_and_round_trips() {
        let root = OrgRootKey::generate();
        let org = org(&root);
        let cert = root.sign(body(&org, &[7; 32]));
        let cert = Certificate::from_bytes(&cert.to_bytes()).unwrap();
        assert_eq!(cert.verify(&org, 150), Ok(()));
    }

    #[test]
    fn certificate_from_another_root_is_rejected() {
        let root = OrgRootKey::generate();
        let org = org(&root);
        let forged = OrgRootKey::generate().sign(body(&org, &[7; 32]));
        assert_eq!(forged.verify(&org, 150), Err(CertError::BadSignature));
    }

    #[test]
    fn tampered_and_expired_certificates_are_rejected() {
        let root = OrgRootKey::generate();
        let org = org(&root);
        let mut cert = root.sign(body(&org, &[7; 32]));
        assert!(matches!(
            cert.verify(&org, 201),
            Err(CertError::Expired { .. })
        ));
        cert.body.roles.push(Role::Admin);
        assert_eq!(cert.verify(&org, 150), Err(CertError::BadSignature));
    }

    /// A device key pair and a root-signed admin certificate for it.
    pub(crate) fn admin(
        root: &OrgRootKey,
        org: &OrgDescriptor,
        seed: u8,
    ) -> (Ed25519KeyPair, Certificate) {
        let pair = Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).unwrap();
        let key = pair.public_key().as_ref().to_vec();
        let cert = root.sign(CertificateBody {
            user: format!("admin{seed}"),
            roles: vec![Role::Admin],
            not_before: 50,
            not_after: 300,
            ..body(org, &key)
        });
        (pair, cert)
    }

    pub(crate) fn sign_with(pair: &Ed25519KeyPair) -> impl FnOnce(&[u8]) -> Vec<u8> + '_ {
        |m| pair.sign(m).as_ref().to_vec()
    }

    #[test]
    fn an_admin_device_issues_member_certificates_that_chain_to_the_root() {
        let root = OrgRootKey::generate();
        let org = org(&root);
        let (pair, carol) = admin(&root, &org, 3);
        let bob = Certificate::issue_as_admin(body(&org, &[7; 32]), &carol, sign_with(&pair));
        let bob = Certificate::from_bytes(&bob.to_bytes()).unwrap();
        assert_eq!(bob.verify(&org, 150), Ok(()));
        assert_eq!(bob.issuer_device(), Some(carol.body.device_id.as_str()));

        let mut edited = bob.clone();
        edited.body.profile.display_name = "Mallory".into();
        assert_eq!(edited.verify(&org, 150), Err(CertError::BadSignature));

        // Admin power comes from the root only: an admin cannot mint another admin.
        let promoted = Certificate::issue_as_admin(
            CertificateBody {
                roles: vec![Role::Admin],
                ..body(&org, &[7; 32])
            },
            &carol,
            sign_with(&pair),
        );
        assert_eq!(promoted.verify(&org, 150), Err(CertError::AdminNotFromRoot));

        // A member cannot issue, and nobody issues beyond their own certificate.
        let member = root.sign(CertificateBody {
            roles: vec![Role::Member],
            ..carol.body.clone()
        });
        let by_member =
            Certificate::issue_as_admin(body(&org, &[7; 32]), &member, sign_with(&pair));
        assert!(matches!(
            by_member.verify(&org, 150),
            Err(CertError::IssuerNotAdmin(_))
        ));
        let long = Certificate::issue_as_admin(
            CertificateBody {
                not_after: 301,
                ..body(&org, &[7; 32])
            },
            &carol,
            sign_with(&pair),
        );
        assert_eq!(long.verify(&org, 150), Err(CertError::OutlivesIssuer));
        let before = Certificate::issue_as_admin(
            CertificateBody {
                not_before: 40,
                ..body(&org, &[7; 32])
            },
            &carol,
            sign_with(&pair),
        );
        assert!(matches!(
            before.verify(&org, 150),
            Err(CertError::Issuer(_))
        ));

        // An issuer certified by another root, or by an admin, does not count.
        let stranger_root = OrgRootKey::generate();
        let (stranger_pair, stranger) = admin(&stranger_root, &org, 4);
        let foreign =
            Certificate::issue_as_admin(body(&org, &[7; 32]), &stranger, sign_with(&stranger_pair));
        assert!(matches!(
            foreign.verify(&org, 150),
            Err(CertError::Issuer(_))
        ));
        let (dave_pair, dave) = admin(&root, &org, 5);
        let mut chained_dave =
            Certificate::issue_as_admin(dave.body.clone(), &carol, sign_with(&pair));
        chained_dave.body.roles = vec![Role::Admin];
        let chained =
            Certificate::issue_as_admin(body(&org, &[7; 32]), &chained_dave, sign_with(&dave_pair));
        assert!(matches!(
            chained.verify(&org, 150),
            Err(CertError::Issuer(_))
        ));
    }

    #[test]
    fn certificates_stored_before_delegation_still_decode_and_verify() {
        #[derive(Serialize)]
        struct Old<'a> {
            body: &'a CertificateBody,
            signature: &'a [u8],
        }
        let root = OrgRootKey::generate();
        let org = org(&root);
        let cert = root.sign(body(&org, &[7; 32]));
        let old = postcard::to_stdvec(&Old {
            body: &cert.body,
            signature: &cert.signature,
        })
        .unwrap();
        let decoded = Certificate::from_bytes(&old).unwrap();
        assert_eq!(decoded, cert);
        assert_eq!(decoded.verify(&org, 150), Ok(()));
    }

    #[test]
    fn handles_are_checked() {
        assert!(validate_handle("alice.b-2").is_ok());
        assert!(validate_handle("").is_err());
        assert!(validate_handle("Alice").is_err());
        assert!(validate_handle("-x").is_err());
        assert!(validate_handle(&"a".repeat(33)).is_err());
    }
}
