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

/// An identity certificate: a body signed by the organisation root key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    pub body: CertificateBody,
    pub signature: Vec<u8>,
}

fn signed_bytes(body: &CertificateBody) -> Vec<u8> {
    let mut out = CERT_CONTEXT.to_vec();
    out.extend(postcard::to_stdvec(body).expect("certificate body serialises"));
    out
}

impl Certificate {
    /// Verifies the certificate against the pinned organisation at time `now`.
    pub fn verify(&self, org: &OrgDescriptor, now: u64) -> Result<(), CertError> {
        self.verify_issuer(org)?;
        self.check_validity(now)
    }

    /// Checks everything about the certificate except its dates: the organisation, the
    /// root signature, that the device id belongs to the key, and the handle.
    pub fn verify_issuer(&self, org: &OrgDescriptor) -> Result<(), CertError> {
        if self.body.org_id != org.org_id {
            return Err(CertError::WrongOrg {
                expected: org.org_id.clone(),
                found: self.body.org_id.clone(),
            });
        }
        UnparsedPublicKey::new(&ED25519, &org.root_public_key)
            .verify(&signed_bytes(&self.body), &self.signature)
            .map_err(|_| CertError::BadSignature)?;
        if device_id_for(&self.body.device_key) != self.body.device_id {
            return Err(CertError::DeviceIdMismatch);
        }
        validate_handle(&self.body.user)?;
        Ok(())
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

    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("certificate serialises")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CertError> {
        postcard::from_bytes(bytes).map_err(|_| CertError::Malformed)
    }
}

const REVOCATION_CONTEXT: &[u8] = b"muster-revocation-v1\0";
/// Version 2 binds the revocation's number in the organisation's sequence.
const NUMBERED_REVOCATION_CONTEXT: &[u8] = b"muster-revocation-v2\0";

/// The signed content of a revocation: these devices of this user are cut off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationBody {
    pub org_id: String,
    pub user: String,
    pub device_ids: Vec<String>,
    pub issued_at: u64,
    /// This revocation's place in the organisation's sequence (1, 2, ...), so a device
    /// that sees number 3 without 2 knows one was withheld. 0 for revocations issued
    /// before they were numbered.
    #[serde(default)]
    pub serial: u64,
}

/// A revocation body as signed before revocations were numbered.
#[derive(Serialize)]
struct UnnumberedRevocationBody<'a> {
    org_id: &'a str,
    user: &'a str,
    device_ids: &'a [String],
    issued_at: u64,
}

impl RevocationBody {
    fn to_be_signed(&self) -> Vec<u8> {
        let mut signed = NUMBERED_REVOCATION_CONTEXT.to_vec();
        signed.extend(postcard::to_stdvec(self).expect("revocation serialises"));
        signed
    }

    fn to_be_signed_unnumbered(&self) -> Vec<u8> {
        let mut signed = REVOCATION_CONTEXT.to_vec();
        signed.extend(
            postcard::to_stdvec(&UnnumberedRevocationBody {
                org_id: &self.org_id,
                user: &self.user,
                device_ids: &self.device_ids,
                issued_at: self.issued_at,
            })
            .expect("revocation serialises"),
        );
        signed
    }
}

/// An organisation-signed revocation of one or more devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub body: RevocationBody,
    pub signature: Vec<u8>,
}

impl Revocation {
    /// Checks the organisation root's signature.
    pub fn verify(&self, org: &OrgDescriptor) -> Result<(), CertError> {
        if self.body.org_id != org.org_id {
            return Err(CertError::WrongOrg {
                expected: org.org_id.clone(),
                found: self.body.org_id.clone(),
            });
        }
        let root = UnparsedPublicKey::new(&ED25519, &org.root_public_key);
        let signed = if self.body.serial == 0 {
            self.body.to_be_signed_unnumbered()
        } else {
            self.body.to_be_signed()
        };
        root.verify(&signed, &self.signature)
            .map_err(|_| CertError::BadSignature)
    }
}

/// Version 2 binds the policy's own version number (version 1 policies no longer verify).
const POLICY_CONTEXT: &[u8] = b"muster-org-policy-v2\0";

/// Organisation-wide rules, signed by the organisation root.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgPolicyBody {
    pub org_id: String,
    /// A user's enrolled device may approve that user's new device (an admin device then
    /// issues its certificate automatically).
    pub device_self_approval: bool,
    pub issued_at: u64,
    /// Increases with every policy published. Devices keep the highest they have seen
    /// and refuse older ones, so a relay cannot replay a policy that was replaced.
    #[serde(default)]
    pub version: u64,
    /// How long the identity certificates admin devices issue stay valid, in seconds (0:
    /// [`DEFAULT_CERTIFICATE_LIFETIME_SECS`]). Admin devices renew them before they run
    /// out; a revoked device's certificate is not renewed, so it stops being accepted
    /// within one lifetime even where the relay hides the revocation.
    #[serde(default)]
    pub certificate_lifetime_secs: u64,
}

/// How long identity certificates stay valid unless the organisation's policy says otherwise.
pub const DEFAULT_CERTIFICATE_LIFETIME_SECS: u64 = 30 * 24 * 3600;

impl OrgPolicyBody {
    /// The lifetime of certificates issued under this policy, in seconds.
    pub fn certificate_lifetime(&self) -> u64 {
        match self.certificate_lifetime_secs {
            0 => DEFAULT_CERTIFICATE_LIFETIME_SECS,
            secs => secs,
        }
    }
}

/// A signed [`OrgPolicyBody`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgPolicy {
    pub body: OrgPolicyBody,
    pub signature: Vec<u8>,
}

impl OrgPolicy {
    /// Checks the organisation root's signature.
    pub fn verify(&self, org: &OrgDescriptor) -> Result<(), CertError> {
        if self.body.org_id != org.org_id {
            return Err(CertError::WrongOrg {
                expected: org.org_id.clone(),
                found: self.body.org_id.clone(),
            });
        }
        let mut signed = POLICY_CONTEXT.to_vec();
        signed.extend(postcard::to_stdvec(&self.body).expect("policy serialises"));
        UnparsedPublicKey::new(&ED25519, &org.root_public_key)
            .verify(&signed, &self.signature)
            .map_err(|_| CertError::BadSignature)
    }
}

/// The organisation root signing key, held only by admin devices.
pub struct OrgRootKey {
    pkcs8: Vec<u8>,
    pair: Ed25519KeyPair,
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
        Certificate { body, signature }
    }

    pub fn sign_policy(&self, body: OrgPolicyBody) -> OrgPolicy {
        let mut signed = POLICY_CONTEXT.to_vec();
        signed.extend(postcard::to_stdvec(&body).expect("policy serialises"));
        let signature = self.pair.sign(&signed).as_ref().to_vec();
        OrgPolicy { body, signature }
    }

    /// Signs a revocation; a `serial` of 0 signs it in the old, unnumbered form.
    pub fn sign_revocation(&self, body: RevocationBody) -> Revocation {
        let signed = if body.serial == 0 {
            body.to_be_signed_unnumbered()
        } else {
            body.to_be_signed()
        };
        let signature = self.pair.sign(&signed).as_ref().to_vec();
        Revocation { body, signature }
    }
}

impl std::fmt::Debug for OrgRootKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OrgRootKey(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(org: &OrgDescriptor, key: &[u8]) -> CertificateBody {
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

    fn org(root: &OrgRootKey) -> OrgDescriptor {
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

    #[test]
    fn revocations_verify_only_under_the_org_root() {
        let root = OrgRootKey::generate();
        let org = org(&root);
        let body = RevocationBody {
            org_id: org.org_id.clone(),
            user: "bob".into(),
            device_ids: vec!["d1".into()],
            issued_at: 5,
            serial: 1,
        };
        assert_eq!(root.sign_revocation(body.clone()).verify(&org), Ok(()));
        // The number is signed: a relay cannot renumber a revocation.
        let mut renumbered = root.sign_revocation(body.clone());
        renumbered.body.serial = 2;
        assert_eq!(renumbered.verify(&org), Err(CertError::BadSignature));
        let unnumbered = RevocationBody {
            serial: 0,
            ..body.clone()
        };
        assert_eq!(root.sign_revocation(unnumbered).verify(&org), Ok(()));
        let forged = OrgRootKey::generate().sign_revocation(body);
        assert_eq!(forged.verify(&org), Err(CertError::BadSignature));
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
