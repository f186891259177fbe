//! Organisation descriptor, root key and identity certificates.

use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
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
fn check_admin_issuer(
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

fn check_ed25519(key: &[u8], message: &[u8], signature: &[u8]) -> Result<(), CertError> {
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
    /// device was revoked is for [`RevocationList::covers`].
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

const REVOCATION_CONTEXT: &[u8] = b"muster-revocation-v1\0";
/// Version 2 binds the revocation's number in the organisation's sequence.
const NUMBERED_REVOCATION_CONTEXT: &[u8] = b"muster-revocation-v2\0";
/// Version 3 binds the certificates the revocation vouches for.
const VOUCHING_REVOCATION_CONTEXT: &[u8] = b"muster-revocation-v3\0";
const ADMIN_REVOCATION_CONTEXT: &[u8] = b"muster-revocation-by-admin-v1\0";

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
    /// When an admin device is revoked: the digests ([`Certificate::digest`]) of the
    /// certificates it issued that the revoking admin knew of. They stay valid; anything
    /// else signed by the revoked device is refused (see [`RevocationList::covers`]).
    #[serde(default)]
    pub vouched: Vec<Vec<u8>>,
}

/// A revocation body as signed before revocations were numbered.
#[derive(Serialize)]
struct UnnumberedRevocationBody<'a> {
    org_id: &'a str,
    user: &'a str,
    device_ids: &'a [String],
    issued_at: u64,
}

/// A revocation body as signed before revocations vouched for certificates.
#[derive(Serialize)]
struct NumberedRevocationBody<'a> {
    org_id: &'a str,
    user: &'a str,
    device_ids: &'a [String],
    issued_at: u64,
    serial: u64,
}

impl RevocationBody {
    fn to_be_signed(&self) -> Vec<u8> {
        let mut signed = VOUCHING_REVOCATION_CONTEXT.to_vec();
        signed.extend(postcard::to_stdvec(self).expect("revocation serialises"));
        signed
    }

    fn to_be_signed_without_vouching(&self) -> Vec<u8> {
        let mut signed = NUMBERED_REVOCATION_CONTEXT.to_vec();
        signed.extend(
            postcard::to_stdvec(&NumberedRevocationBody {
                org_id: &self.org_id,
                user: &self.user,
                device_ids: &self.device_ids,
                issued_at: self.issued_at,
                serial: self.serial,
            })
            .expect("revocation serialises"),
        );
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

/// A revocation of one or more devices, signed by the organisation root or by an admin
/// device whose certificate the root signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub body: RevocationBody,
    pub signature: Vec<u8>,
    /// The certificate of the admin device that signed it; `None` for the root.
    #[serde(default)]
    pub issuer: Option<IssuerCertificate>,
}

impl Revocation {
    /// Signs `body` as the admin device holding `issuer`, with `sign` (its device key).
    pub fn issue_as_admin(
        body: RevocationBody,
        issuer: &Certificate,
        sign: impl FnOnce(&[u8]) -> Vec<u8>,
    ) -> Revocation {
        let issuer = IssuerCertificate::of(issuer);
        let signature = sign(&signed_by_admin(ADMIN_REVOCATION_CONTEXT, &issuer, &body));
        Revocation {
            body,
            signature,
            issuer: Some(issuer),
        }
    }

    /// Checks the signature: the organisation root's, or that of an admin device whose
    /// root-signed certificate was valid when the revocation was issued. Whether that
    /// device was itself revoked is for the caller's [`RevocationList`].
    pub fn verify(&self, org: &OrgDescriptor) -> Result<(), CertError> {
        if self.body.org_id != org.org_id {
            return Err(CertError::WrongOrg {
                expected: org.org_id.clone(),
                found: self.body.org_id.clone(),
            });
        }
        if let Some(issuer) = &self.issuer {
            if self.body.serial == 0 {
                return Err(CertError::Malformed);
            }
            check_admin_issuer(issuer, org, self.body.issued_at)?;
            return check_ed25519(
                &issuer.body.device_key,
                &signed_by_admin(ADMIN_REVOCATION_CONTEXT, issuer, &self.body),
                &self.signature,
            );
        }
        let root = &org.root_public_key;
        if self.body.serial == 0 {
            return check_ed25519(root, &self.body.to_be_signed_unnumbered(), &self.signature);
        }
        check_ed25519(root, &self.body.to_be_signed(), &self.signature).or_else(|e| {
            if self.body.vouched.is_empty() {
                check_ed25519(
                    root,
                    &self.body.to_be_signed_without_vouching(),
                    &self.signature,
                )
            } else {
                Err(e)
            }
        })
    }
}

/// What a device knows of the organisation's revocations, for judging certificates:
/// the revoked devices, and the certificates revoked admin devices issued that their
/// revocation vouched for.
#[derive(Debug, Clone, Default)]
pub struct RevocationList {
    devices: HashSet<String>,
    /// For each revoked device, the digests its revocations vouched for.
    vouched: HashMap<String, HashSet<Vec<u8>>>,
}

impl RevocationList {
    /// Adds a revocation (already verified): what it vouches for stands only for
    /// certificates issued by the devices it names.
    pub fn add(&mut self, revocation: &Revocation) {
        for device in &revocation.body.device_ids {
            self.devices.insert(device.clone());
            for digest in &revocation.body.vouched {
                self.add_vouched(device.clone(), digest.clone());
            }
        }
    }

    /// Adds a revoked device by id.
    pub fn add_device(&mut self, device_id: String) {
        self.devices.insert(device_id);
    }

    /// Adds a certificate digest that the revocation of `issuer` vouched for.
    pub fn add_vouched(&mut self, issuer: String, digest: Vec<u8>) {
        self.vouched.entry(issuer).or_default().insert(digest);
    }

    /// Whether the device with this id is revoked.
    pub fn device_revoked(&self, device_id: &str) -> bool {
        self.devices.contains(device_id)
    }

    /// Whether `cert` may no longer be used: its device is revoked, or it was issued by
    /// an admin device that is revoked and its revocation does not vouch for it. A
    /// revoked admin's signature is worthless from the moment its revocation is known,
    /// whatever date it puts on what it signs.
    pub fn covers(&self, cert: &Certificate) -> bool {
        self.devices.contains(&cert.body.device_id)
            || cert.issuer_device().is_some_and(|issuer| {
                self.devices.contains(issuer)
                    && !self
                        .vouched
                        .get(issuer)
                        .is_some_and(|v| v.contains(&cert.digest()))
            })
    }

    /// Whether something signed by `issuer` (`None`: the root) may no longer be used:
    /// the issuing admin device is revoked.
    pub fn issuer_revoked(&self, issuer: Option<&IssuerCertificate>) -> bool {
        issuer.is_some_and(|i| self.devices.contains(&i.body.device_id))
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// The revoked devices' ids.
    pub fn devices(&self) -> impl Iterator<Item = &String> {
        self.devices.iter()
    }
}

/// Version 2 binds the policy's own version number (version 1 policies no longer verify).
const POLICY_CONTEXT: &[u8] = b"muster-org-policy-v2\0";
/// Version 3 binds `wipe_on_revoke` too.
const WIPING_POLICY_CONTEXT: &[u8] = b"muster-org-policy-v3\0";

/// A policy body as signed before `wipe_on_revoke` existed.
#[derive(Serialize)]
struct PolicyBodyV2<'a> {
    org_id: &'a str,
    device_self_approval: bool,
    issued_at: u64,
    version: u64,
    certificate_lifetime_secs: u64,
}

impl OrgPolicyBody {
    fn to_be_signed(&self) -> Vec<u8> {
        let mut signed = WIPING_POLICY_CONTEXT.to_vec();
        signed.extend(postcard::to_stdvec(self).expect("policy serialises"));
        signed
    }

    fn to_be_signed_v2(&self) -> Vec<u8> {
        let mut signed = POLICY_CONTEXT.to_vec();
        signed.extend(
            postcard::to_stdvec(&PolicyBodyV2 {
                org_id: &self.org_id,
                device_self_approval: self.device_self_approval,
                issued_at: self.issued_at,
                version: self.version,
                certificate_lifetime_secs: self.certificate_lifetime_secs,
            })
            .expect("policy serialises"),
        );
        signed
    }
}

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
    /// A device that learns of its own revocation (from the signed revocation, never from
    /// the relay's word) deletes its store.
    #[serde(default)]
    pub wipe_on_revoke: bool,
}

/// The shortest certificate lifetime a policy may set, in seconds.
pub const MIN_CERTIFICATE_LIFETIME_SECS: u64 = 10;

/// How long identity certificates stay valid unless the organisation's policy says otherwise.
pub const DEFAULT_CERTIFICATE_LIFETIME_SECS: u64 = 30 * 24 * 3600;

impl OrgPolicyBody {
    /// Checks what any signer could get wrong: a lifetime too short for devices to renew,
    /// or a version so high that no policy could follow it.
    pub fn check_bounds(&self) -> Result<(), CertError> {
        if self.certificate_lifetime_secs != 0
            && self.certificate_lifetime_secs < MIN_CERTIFICATE_LIFETIME_SECS
        {
            return Err(CertError::PolicyOutOfBounds(
                "certificate lifetime too short",
            ));
        }
        if self.version >= i64::MAX as u64 {
            return Err(CertError::PolicyOutOfBounds("version too high"));
        }
        Ok(())
    }

    /// The lifetime of certificates issued under this policy, in seconds.
    pub fn certificate_lifetime(&self) -> u64 {
        match self.certificate_lifetime_secs {
            0 => DEFAULT_CERTIFICATE_LIFETIME_SECS,
            secs => secs,
        }
    }
}

const ADMIN_POLICY_CONTEXT: &[u8] = b"muster-org-policy-by-admin-v1\0";

/// A signed [`OrgPolicyBody`]: by the organisation root, or by an admin device whose
/// certificate the root signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgPolicy {
    pub body: OrgPolicyBody,
    pub signature: Vec<u8>,
    /// The certificate of the admin device that signed it; `None` for the root.
    #[serde(default)]
    pub issuer: Option<IssuerCertificate>,
}

impl OrgPolicy {
    /// Signs `body` as the admin device holding `issuer`, with `sign` (its device key).
    pub fn issue_as_admin(
        body: OrgPolicyBody,
        issuer: &Certificate,
        sign: impl FnOnce(&[u8]) -> Vec<u8>,
    ) -> OrgPolicy {
        let issuer = IssuerCertificate::of(issuer);
        let signature = sign(&signed_by_admin(ADMIN_POLICY_CONTEXT, &issuer, &body));
        OrgPolicy {
            body,
            signature,
            issuer: Some(issuer),
        }
    }

    /// Checks the signature: the organisation root's, or that of an admin device whose
    /// root-signed certificate was valid when the policy was issued. Whether that device
    /// was itself revoked is for the caller's [`RevocationList`].
    pub fn verify(&self, org: &OrgDescriptor) -> Result<(), CertError> {
        if self.body.org_id != org.org_id {
            return Err(CertError::WrongOrg {
                expected: org.org_id.clone(),
                found: self.body.org_id.clone(),
            });
        }
        self.body.check_bounds()?;
        if let Some(issuer) = &self.issuer {
            check_admin_issuer(issuer, org, self.body.issued_at)?;
            return check_ed25519(
                &issuer.body.device_key,
                &signed_by_admin(ADMIN_POLICY_CONTEXT, issuer, &self.body),
                &self.signature,
            );
        }
        let root = &org.root_public_key;
        check_ed25519(root, &self.body.to_be_signed(), &self.signature).or_else(|e| {
            if self.body.wipe_on_revoke {
                Err(e)
            } else {
                check_ed25519(root, &self.body.to_be_signed_v2(), &self.signature)
            }
        })
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
        Certificate {
            body,
            signature,
            issuer: None,
        }
    }

    pub fn sign_policy(&self, body: OrgPolicyBody) -> OrgPolicy {
        let signature = self.pair.sign(&body.to_be_signed()).as_ref().to_vec();
        OrgPolicy {
            body,
            signature,
            issuer: None,
        }
    }

    /// Signs a revocation; a `serial` of 0 signs it in the old, unnumbered form.
    pub fn sign_revocation(&self, body: RevocationBody) -> Revocation {
        let signed = if body.serial == 0 {
            body.to_be_signed_unnumbered()
        } else {
            body.to_be_signed()
        };
        let signature = self.pair.sign(&signed).as_ref().to_vec();
        Revocation {
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
            vouched: Vec::new(),
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

    /// A device key pair and a root-signed admin certificate for it.
    fn admin(root: &OrgRootKey, org: &OrgDescriptor, seed: u8) -> (Ed25519KeyPair, Certificate) {
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

    fn sign_with(pair: &Ed25519KeyPair) -> impl FnOnce(&[u8]) -> Vec<u8> + '_ {
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
    fn a_revoked_admins_certificates_stand_only_where_its_revocation_vouches_for_them() {
        let root = OrgRootKey::generate();
        let org = org(&root);
        let (pair, carol) = admin(&root, &org, 3);
        let bob = Certificate::issue_as_admin(body(&org, &[7; 32]), &carol, sign_with(&pair));
        let mallory = Certificate::issue_as_admin(
            CertificateBody {
                user: "mallory".into(),
                ..body(&org, &[8; 32])
            },
            &carol,
            sign_with(&pair),
        );
        let rooted = root.sign(body(&org, &[9; 32]));
        let mut list = RevocationList::default();
        assert!(!list.covers(&bob) && !list.covers(&mallory));
        list.add(&root.sign_revocation(RevocationBody {
            org_id: org.org_id.clone(),
            user: carol.body.user.clone(),
            device_ids: vec![carol.body.device_id.clone()],
            issued_at: 160,
            serial: 1,
            vouched: vec![bob.digest()],
        }));
        assert!(list.covers(&carol));
        assert!(!list.covers(&bob), "vouched for by the revocation");
        // Vouching counts only for what the revoked devices issued: a revocation of some
        // other device cannot pre-vouch for certificates its issuer minted.
        let mut other = RevocationList::default();
        other.add(&root.sign_revocation(RevocationBody {
            org_id: org.org_id.clone(),
            user: "throwaway".into(),
            device_ids: vec!["d9".into()],
            issued_at: 150,
            serial: 1,
            vouched: vec![mallory.digest()],
        }));
        other.add_device(carol.body.device_id.clone());
        assert!(other.covers(&mallory));
        assert!(list.covers(&mallory), "not vouched for: refused");
        assert!(!list.covers(&rooted));
        assert!(
            list.issuer_revoked(Some(&IssuerCertificate::of(&carol))) && !list.issuer_revoked(None)
        );
    }

    #[test]
    fn admin_devices_sign_revocations_and_policies_that_verify_only_with_an_admin_issuer() {
        let root = OrgRootKey::generate();
        let org = org(&root);
        let (pair, carol) = admin(&root, &org, 3);
        let revocation = RevocationBody {
            org_id: org.org_id.clone(),
            user: "bob".into(),
            device_ids: vec!["d1".into()],
            issued_at: 150,
            serial: 2,
            vouched: vec![vec![1; 32]],
        };
        let signed = Revocation::issue_as_admin(revocation.clone(), &carol, sign_with(&pair));
        assert_eq!(signed.verify(&org), Ok(()));
        let mut widened = signed.clone();
        widened.body.vouched.push(vec![2; 32]);
        assert_eq!(widened.verify(&org), Err(CertError::BadSignature));
        let late = Revocation::issue_as_admin(
            RevocationBody {
                issued_at: 400,
                ..revocation.clone()
            },
            &carol,
            sign_with(&pair),
        );
        assert!(matches!(late.verify(&org), Err(CertError::Issuer(_))));
        let member_cert = root.sign(CertificateBody {
            roles: vec![Role::Member],
            ..carol.body.clone()
        });
        let by_member = Revocation::issue_as_admin(revocation, &member_cert, sign_with(&pair));
        assert!(by_member.verify(&org).is_err());

        let policy = OrgPolicyBody {
            org_id: org.org_id.clone(),
            issued_at: 150,
            version: 3,
            ..Default::default()
        };
        let signed = OrgPolicy::issue_as_admin(policy.clone(), &carol, sign_with(&pair));
        assert_eq!(signed.verify(&org), Ok(()));
        let mut bumped = signed;
        bumped.body.version = 9;
        assert_eq!(bumped.verify(&org), Err(CertError::BadSignature));
        assert!(
            OrgPolicy::issue_as_admin(policy.clone(), &member_cert, sign_with(&pair))
                .verify(&org)
                .is_err()
        );
        // No signer can freeze the organisation with a version nothing can follow, or
        // certificates too short-lived to renew.
        for bad in [
            OrgPolicyBody {
                version: u64::MAX,
                ..policy.clone()
            },
            OrgPolicyBody {
                certificate_lifetime_secs: 1,
                ..policy.clone()
            },
        ] {
            assert!(matches!(
                OrgPolicy::issue_as_admin(bad.clone(), &carol, sign_with(&pair)).verify(&org),
                Err(CertError::PolicyOutOfBounds(_))
            ));
            assert!(matches!(
                root.sign_policy(bad).verify(&org),
                Err(CertError::PolicyOutOfBounds(_))
            ));
        }
    }

    #[test]
    fn policies_signed_before_wipe_on_revoke_still_verify_and_the_flag_is_signed() {
        let root = OrgRootKey::generate();
        let org = org(&root);
        let body = OrgPolicyBody {
            org_id: org.org_id.clone(),
            issued_at: 5,
            version: 2,
            ..Default::default()
        };
        let old = OrgPolicy {
            signature: root.pair.sign(&body.to_be_signed_v2()).as_ref().to_vec(),
            body: body.clone(),
            issuer: None,
        };
        assert_eq!(old.verify(&org), Ok(()));
        let mut wiping = old;
        wiping.body.wipe_on_revoke = true;
        assert_eq!(wiping.verify(&org), Err(CertError::BadSignature));
        let signed = root.sign_policy(OrgPolicyBody {
            wipe_on_revoke: true,
            ..body
        });
        assert_eq!(signed.verify(&org), Ok(()));
        let mut unwiped = signed;
        unwiped.body.wipe_on_revoke = false;
        assert_eq!(unwiped.verify(&org), Err(CertError::BadSignature));
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
