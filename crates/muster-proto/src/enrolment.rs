//! Proofs that tie every enrolment, device confirmation and profile request to someone
//! the organisation trusts, so that an admin device never signs a key merely because the
//! relay lists it.
//!
//! An invite or device-link code carries a fresh Ed25519 secret that never reaches the
//! relay. The device that made the code signs an [`EnrolmentGrant`] naming the secret's
//! public half (an admin's device for an invite, one of the user's own devices for a
//! link). The joining device signs its [`EnrolmentRequest`] (key, user, device, profile)
//! with the code's secret and with its own key. An approving admin device checks the
//! grant against the issuer's certificate and the request against the grant: the relay
//! can neither make up a request nor move a real one onto a key of its own.

use crate::identity::{device_id_for, CertError, Certificate, OrgDescriptor, Profile};
use crate::invite::InvitePurpose;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};

const GRANT_CONTEXT: &[u8] = b"muster-enrolment-grant-v1\0";
const CODE_PROOF_CONTEXT: &[u8] = b"muster-enrolment-code-proof-v1\0";
const DEVICE_PROOF_CONTEXT: &[u8] = b"muster-enrolment-device-proof-v1\0";
const CONFIRMATION_CONTEXT: &[u8] = b"muster-device-confirmation-v1\0";
const PROFILE_REQUEST_CONTEXT: &[u8] = b"muster-profile-request-v1\0";

/// Why an enrolment, confirmation or profile request does not prove what it claims.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProofError {
    #[error("the certificate of {who} that signed it is not valid: {error}")]
    Signer { who: String, error: CertError },
    #[error("it was signed by {0}, who is not an organisation admin")]
    NotAdmin(String),
    #[error("it was signed by a device of {signer}, not of {user}")]
    OtherUser { signer: String, user: String },
    #[error("the {0} signature does not verify")]
    BadSignature(&'static str),
    #[error("it does not match the code it claims: {0}")]
    Mismatch(&'static str),
    #[error("the code had expired when it was used")]
    Expired,
    #[error("the secret in a code must be 32 bytes of hex")]
    BadSecret,
}

fn signed(context: &[u8], body: &impl Serialize) -> Vec<u8> {
    let mut out = context.to_vec();
    out.extend(postcard::to_stdvec(body).expect("proof body serialises"));
    out
}

fn check_signature(
    key: &[u8],
    message: &[u8],
    signature: &[u8],
    what: &'static str,
) -> Result<(), ProofError> {
    UnparsedPublicKey::new(&ED25519, key)
        .verify(message, signature)
        .map_err(|_| ProofError::BadSignature(what))
}

/// Checks that `cert` is a valid certificate of the organisation at `now`.
fn check_signer(cert: &Certificate, org: &OrgDescriptor, now: u64) -> Result<(), ProofError> {
    cert.verify(org, now).map_err(|error| ProofError::Signer {
        who: format!("{} ({})", cert.body.user, cert.body.device_id),
        error,
    })
}

/// The secret an invite or device-link code carries: an Ed25519 seed the relay never sees.
pub struct CodeSecret {
    seed: [u8; 32],
    pair: Ed25519KeyPair,
}

impl CodeSecret {
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
            .expect("system randomness available");
        Self::from_seed(seed)
    }

    fn from_seed(seed: [u8; 32]) -> Self {
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed).expect("any 32 bytes are a seed");
        Self { seed, pair }
    }

    pub fn from_hex(text: &str) -> Result<Self, ProofError> {
        let bytes = hex::decode(text).map_err(|_| ProofError::BadSecret)?;
        let seed: [u8; 32] = bytes.try_into().map_err(|_| ProofError::BadSecret)?;
        Ok(Self::from_seed(seed))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.seed)
    }

    /// The public half, which the grant names and the relay files the invite under.
    pub fn public_key(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }

    fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.pair.sign(message).as_ref().to_vec()
    }
}

impl std::fmt::Debug for CodeSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CodeSecret(***)")
    }
}

/// What the maker of a code allows: one device may ask to join as `user`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantBody {
    pub org_id: String,
    pub purpose: InvitePurpose,
    pub user: String,
    /// The public half of the code's secret.
    #[serde(with = "serde_bytes")]
    pub code_key: Vec<u8>,
    pub issued_at: u64,
    pub expires_at: u64,
}

/// A [`GrantBody`] signed by the device that made the code, with that device's certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrolmentGrant {
    pub body: GrantBody,
    pub issuer: Certificate,
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

impl GrantBody {
    /// The bytes the issuing device signs.
    pub fn to_be_signed(&self) -> Vec<u8> {
        signed(GRANT_CONTEXT, self)
    }
}

impl EnrolmentGrant {
    /// Checks the issuer's certificate (at `now`), its signature, and that the issuer may
    /// make this kind of code: an admin for a new user, the user's own device for a link.
    pub fn verify(&self, org: &OrgDescriptor, now: u64) -> Result<(), ProofError> {
        check_signer(&self.issuer, org, now)?;
        if self.body.org_id != org.org_id {
            return Err(ProofError::Mismatch("organisation"));
        }
        match self.body.purpose {
            InvitePurpose::NewUser if !self.issuer.is_admin() => {
                return Err(ProofError::NotAdmin(self.issuer.body.user.clone()))
            }
            InvitePurpose::LinkDevice if self.issuer.body.user != self.body.user => {
                return Err(ProofError::OtherUser {
                    signer: self.issuer.body.user.clone(),
                    user: self.body.user.clone(),
                })
            }
            _ => {}
        }
        check_signature(
            &self.issuer.body.device_key,
            &self.body.to_be_signed(),
            &self.signature,
            "grant",
        )
    }
}

/// What a joining device asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestBody {
    pub org_id: String,
    pub purpose: InvitePurpose,
    pub user: String,
    #[serde(with = "serde_bytes")]
    pub device_key: Vec<u8>,
    pub profile: Profile,
    /// The public half of the code's secret, naming the grant.
    #[serde(with = "serde_bytes")]
    pub code_key: Vec<u8>,
    /// The joining device's clock, seconds since the Unix epoch.
    pub requested_at: u64,
}

/// A [`RequestBody`] signed with the code's secret and with the joining device's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrolmentRequest {
    pub body: RequestBody,
    #[serde(with = "serde_bytes")]
    pub code_proof: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub device_proof: Vec<u8>,
}

impl RequestBody {
    fn code_signed(&self) -> Vec<u8> {
        signed(CODE_PROOF_CONTEXT, self)
    }

    /// The bytes the joining device signs with its own key.
    pub fn device_signed(&self) -> Vec<u8> {
        signed(DEVICE_PROOF_CONTEXT, self)
    }
}

impl EnrolmentRequest {
    /// Signs `body` with the code's secret; `sign_with_device` signs
    /// [`RequestBody::device_signed`] with the joining device's key.
    pub fn new(
        body: RequestBody,
        secret: &CodeSecret,
        sign_with_device: impl FnOnce(&[u8]) -> Vec<u8>,
    ) -> Self {
        let code_proof = secret.sign(&body.code_signed());
        let device_proof = sign_with_device(&body.device_signed());
        Self {
            body,
            code_proof,
            device_proof,
        }
    }

    pub fn device_id(&self) -> String {
        device_id_for(&self.body.device_key)
    }

    /// Checks that this request was made with the secret of `grant`'s code, by the holder
    /// of the device key it names, for what the grant allows, before the grant expired.
    pub fn verify_against(&self, grant: &EnrolmentGrant) -> Result<(), ProofError> {
        self.matches(grant)?;
        self.verify_signatures()
    }

    /// Checks that the request names what `grant` allows (not its signatures).
    pub fn matches(&self, grant: &EnrolmentGrant) -> Result<(), ProofError> {
        let (body, allowed) = (&self.body, &grant.body);
        if body.code_key != allowed.code_key {
            return Err(ProofError::Mismatch("code"));
        }
        if body.org_id != allowed.org_id {
            return Err(ProofError::Mismatch("organisation"));
        }
        if body.user != allowed.user {
            return Err(ProofError::Mismatch("user"));
        }
        if body.purpose != allowed.purpose {
            return Err(ProofError::Mismatch("kind of code"));
        }
        if body.requested_at > allowed.expires_at {
            return Err(ProofError::Expired);
        }
        Ok(())
    }

    /// Checks both signatures against the keys the request itself names: needs nothing
    /// but the request, so a relay checks it before it touches its database.
    pub fn verify_signatures(&self) -> Result<(), ProofError> {
        let body = &self.body;
        check_signature(
            &body.code_key,
            &body.code_signed(),
            &self.code_proof,
            "code",
        )?;
        check_signature(
            &body.device_key,
            &body.device_signed(),
            &self.device_proof,
            "device",
        )
    }
}

/// Both halves of an enrolment, checked: the grant against the organisation and the
/// request against the grant. Returns the enrolling device's id.
pub fn verify_enrolment(
    org: &OrgDescriptor,
    grant: &EnrolmentGrant,
    request: &EnrolmentRequest,
    now: u64,
) -> Result<String, ProofError> {
    grant.verify(org, now)?;
    request.verify_against(grant)?;
    Ok(request.device_id())
}

/// A user's enrolled device approves that user's new device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfirmationBody {
    pub org_id: String,
    pub user: String,
    /// The new device (its id is a hash of its key, so it names the key).
    pub device_id: String,
    pub confirmed_at: u64,
}

/// A [`ConfirmationBody`] signed by the confirming device, with its certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceConfirmation {
    pub body: ConfirmationBody,
    pub confirmer: Certificate,
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

impl ConfirmationBody {
    pub fn to_be_signed(&self) -> Vec<u8> {
        signed(CONFIRMATION_CONTEXT, self)
    }
}

impl DeviceConfirmation {
    /// Checks the confirmer's certificate, that it is another device of the same user,
    /// and its signature.
    pub fn verify(&self, org: &OrgDescriptor, now: u64) -> Result<(), ProofError> {
        check_signer(&self.confirmer, org, now)?;
        if self.body.org_id != org.org_id {
            return Err(ProofError::Mismatch("organisation"));
        }
        if self.confirmer.body.user != self.body.user {
            return Err(ProofError::OtherUser {
                signer: self.confirmer.body.user.clone(),
                user: self.body.user.clone(),
            });
        }
        if self.confirmer.body.device_id == self.body.device_id {
            return Err(ProofError::Mismatch("a device cannot confirm itself"));
        }
        check_signature(
            &self.confirmer.body.device_key,
            &self.body.to_be_signed(),
            &self.signature,
            "confirmation",
        )
    }
}

/// A user asks for a new profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileRequestBody {
    pub org_id: String,
    pub user: String,
    pub profile: Profile,
    pub requested_at: u64,
}

/// A [`ProfileRequestBody`] signed by one of the user's devices, with its certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileRequest {
    pub body: ProfileRequestBody,
    pub requester: Certificate,
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

impl ProfileRequestBody {
    pub fn to_be_signed(&self) -> Vec<u8> {
        signed(PROFILE_REQUEST_CONTEXT, self)
    }
}

impl ProfileRequest {
    /// Checks that one of the user's own devices signed it.
    pub fn verify(&self, org: &OrgDescriptor, now: u64) -> Result<(), ProofError> {
        check_signer(&self.requester, org, now)?;
        if self.body.org_id != org.org_id {
            return Err(ProofError::Mismatch("organisation"));
        }
        if self.requester.body.user != self.body.user {
            return Err(ProofError::OtherUser {
                signer: self.requester.body.user.clone(),
                user: self.body.user.clone(),
            });
        }
        check_signature(
            &self.requester.body.device_key,
            &self.body.to_be_signed(),
            &self.signature,
            "profile request",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{CertificateBody, OrgRootKey, Role};

    struct Device {
        pair: Ed25519KeyPair,
        cert: Certificate,
    }

    fn device(root: &OrgRootKey, org: &OrgDescriptor, user: &str, roles: Vec<Role>) -> Device {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let key = pair.public_key().as_ref().to_vec();
        let cert = root.sign(CertificateBody {
            org_id: org.org_id.clone(),
            user: user.into(),
            device_id: device_id_for(&key),
            device_key: key,
            profile: Profile::default(),
            roles,
            not_before: 0,
            not_after: 1000,
        });
        Device { pair, cert }
    }

    fn grant(
        by: &Device,
        org: &OrgDescriptor,
        purpose: InvitePurpose,
        user: &str,
        secret: &CodeSecret,
    ) -> EnrolmentGrant {
        let body = GrantBody {
            org_id: org.org_id.clone(),
            purpose,
            user: user.into(),
            code_key: secret.public_key(),
            issued_at: 10,
            expires_at: 100,
        };
        EnrolmentGrant {
            signature: by.pair.sign(&body.to_be_signed()).as_ref().to_vec(),
            body,
            issuer: by.cert.clone(),
        }
    }

    fn request(
        joiner: &Device,
        org: &OrgDescriptor,
        purpose: InvitePurpose,
        user: &str,
        secret: &CodeSecret,
    ) -> EnrolmentRequest {
        let body = RequestBody {
            org_id: org.org_id.clone(),
            purpose,
            user: user.into(),
            device_key: joiner.cert.body.device_key.clone(),
            profile: Profile {
                display_name: "Bob".into(),
                ..Default::default()
            },
            code_key: secret.public_key(),
            requested_at: 50,
        };
        EnrolmentRequest::new(body, secret, |m| joiner.pair.sign(m).as_ref().to_vec())
    }

    fn org(root: &OrgRootKey) -> OrgDescriptor {
        OrgDescriptor {
            org_id: "o1".into(),
            name: "Acme".into(),
            root_public_key: root.public_key(),
        }
    }

    #[test]
    fn an_enrolment_made_with_the_code_verifies_and_nothing_else_does() {
        let root = OrgRootKey::generate();
        let org = org(&root);
        let admin = device(&root, &org, "alice", vec![Role::Admin]);
        let joiner = device(&root, &org, "bob", vec![]);
        let secret = CodeSecret::generate();
        let grant = grant(&admin, &org, InvitePurpose::NewUser, "bob", &secret);
        let req = request(&joiner, &org, InvitePurpose::NewUser, "bob", &secret);
        assert_eq!(
            verify_enrolment(&org, &grant, &req, 50),
            Ok(req.device_id())
        );

        // The relay swaps in a key of its own: the code proof no longer verifies.
        let relay_key = device(&root, &org, "bob", vec![]);
        let mut swapped = req.clone();
        swapped.body.device_key = relay_key.cert.body.device_key.clone();
        assert_eq!(
            verify_enrolment(&org, &grant, &swapped, 50),
            Err(ProofError::BadSignature("code"))
        );
        // A request made without the code's secret, with a secret of its own.
        let forged = request(
            &relay_key,
            &org,
            InvitePurpose::NewUser,
            "bob",
            &CodeSecret::generate(),
        );
        assert_eq!(
            verify_enrolment(&org, &grant, &forged, 50),
            Err(ProofError::Mismatch("code"))
        );
        // A grant from a member who is not an admin, or from outside the organisation.
        let member = device(&root, &org, "carol", vec![Role::Member]);
        let by_member = super::tests::grant(&member, &org, InvitePurpose::NewUser, "bob", &secret);
        assert_eq!(
            verify_enrolment(&org, &by_member, &req, 50),
            Err(ProofError::NotAdmin("carol".into()))
        );
        let outsider = device(&OrgRootKey::generate(), &org, "alice", vec![Role::Admin]);
        let by_outsider =
            super::tests::grant(&outsider, &org, InvitePurpose::NewUser, "bob", &secret);
        assert!(matches!(
            verify_enrolment(&org, &by_outsider, &req, 50),
            Err(ProofError::Signer { .. })
        ));
        // A profile changed on the way.
        let mut edited = req.clone();
        edited.body.profile.display_name = "Mallory".into();
        assert!(verify_enrolment(&org, &grant, &edited, 50).is_err());
    }

    #[test]
    fn link_codes_come_from_the_users_own_device_and_confirmations_from_a_sibling() {
        let root = OrgRootKey::generate();
        let org = org(&root);
        let laptop = device(&root, &org, "bob", vec![Role::Member]);
        let carol = device(&root, &org, "carol", vec![Role::Member]);
        let phone = device(&root, &org, "bob", vec![]);
        let secret = CodeSecret::generate();
        let req = request(&phone, &org, InvitePurpose::LinkDevice, "bob", &secret);
        let from_laptop = grant(&laptop, &org, InvitePurpose::LinkDevice, "bob", &secret);
        assert!(verify_enrolment(&org, &from_laptop, &req, 50).is_ok());
        let from_carol = grant(&carol, &org, InvitePurpose::LinkDevice, "bob", &secret);
        assert!(matches!(
            verify_enrolment(&org, &from_carol, &req, 50),
            Err(ProofError::OtherUser { .. })
        ));

        let confirm = |by: &Device, device_id: &str| {
            let body = ConfirmationBody {
                org_id: org.org_id.clone(),
                user: "bob".into(),
                device_id: device_id.into(),
                confirmed_at: 60,
            };
            DeviceConfirmation {
                signature: by.pair.sign(&body.to_be_signed()).as_ref().to_vec(),
                body,
                confirmer: by.cert.clone(),
            }
        };
        assert!(confirm(&laptop, &req.device_id()).verify(&org, 60).is_ok());
        assert!(confirm(&carol, &req.device_id()).verify(&org, 60).is_err());
        let mut moved = confirm(&laptop, &req.device_id());
        moved.body.device_id = "someone-else".into();
        assert_eq!(
            moved.verify(&org, 60),
            Err(ProofError::BadSignature("confirmation"))
        );
    }

    #[test]
    fn secrets_round_trip_through_hex_only() {
        let secret = CodeSecret::generate();
        let again = CodeSecret::from_hex(&secret.to_hex()).unwrap();
        assert_eq!(again.public_key(), secret.public_key());
        assert_eq!(
            CodeSecret::from_hex("abcd").unwrap_err(),
            ProofError::BadSecret
        );
        assert_eq!(format!("{secret:?}"), "CodeSecret(***)");
    }
}
