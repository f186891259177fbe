//! The organisation's policy, signed by the root or an admin device, versioned so a
//! relay cannot replay a replaced one.

use crate::identity::{
    check_admin_issuer, check_ed25519, signed_by_admin, CertError, Certificate, IssuerCertificate,
    OrgDescriptor, OrgRootKey,
};
use serde::{Deserialize, Serialize};

/// Version 2 binds the policy's own version number (version 1 policies no longer verify).
const POLICY_CONTEXT: &[u8] = b"muster-org-policy-v2\0";
/// Version 3 binds `wipe_on_revoke` too.
const WIPING_POLICY_CONTEXT: &[u8] = b"muster-org-policy-v3\0";
/// Version 4 binds the legal officers who alone can read the archive.
const OFFICERS_POLICY_CONTEXT: &[u8] = b"muster-org-policy-v4\0";

/// A policy body as signed before legal officers existed.
#[derive(Serialize)]
struct PolicyBodyV3<'a> {
    org_id: &'a str,
    device_self_approval: bool,
    issued_at: u64,
    version: u64,
    certificate_lifetime_secs: u64,
    wipe_on_revoke: bool,
}

impl<'a> PolicyBodyV3<'a> {
    fn of(body: &'a OrgPolicyBody) -> Self {
        Self {
            org_id: &body.org_id,
            device_self_approval: body.device_self_approval,
            issued_at: body.issued_at,
            version: body.version,
            certificate_lifetime_secs: body.certificate_lifetime_secs,
            wipe_on_revoke: body.wipe_on_revoke,
        }
    }
}

/// The organisation's legal officers: archive entries are sealed (HPKE) to `public_key`,
/// whose private half exists only as `threshold`-of-`officers.len()` Shamir shares held by
/// the named officers, so the archive's own host cannot read what it keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegalOfficers {
    /// X25519 public key (HPKE: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305).
    pub public_key: Vec<u8>,
    pub threshold: u8,
    /// The officers' handles, in share order (share i belongs to officers[i-1]).
    pub officers: Vec<String>,
    /// Identifies this key among those the organisation has had.
    pub key_id: String,
}

impl LegalOfficers {
    /// Checks what any signer could get wrong: a threshold outside 1..=n, a name twice, a
    /// key that is not an X25519 public key, or an id that is not the key's.
    pub fn check(&self) -> Result<(), CertError> {
        let count = self.officers.len();
        if count == 0 || count > 255 || self.threshold == 0 || usize::from(self.threshold) > count {
            return Err(CertError::PolicyOutOfBounds(
                "legal officers' threshold out of range",
            ));
        }
        let mut names: Vec<&String> = self.officers.iter().collect();
        names.sort();
        names.dedup();
        if names.len() != count {
            return Err(CertError::PolicyOutOfBounds("a legal officer named twice"));
        }
        if self.public_key.len() != 32 || self.key_id != Self::key_id_of(&self.public_key) {
            return Err(CertError::PolicyOutOfBounds(
                "legal officers' key malformed",
            ));
        }
        Ok(())
    }

    /// The id of an officers' public key: the first 8 bytes of its SHA-256, hex.
    pub fn key_id_of(public_key: &[u8]) -> String {
        hex::encode(&ring::digest::digest(&ring::digest::SHA256, public_key).as_ref()[..8])
    }

    /// "readable only by 2 of 3 legal officers (ann, carl, dora)".
    pub fn describe(&self) -> String {
        format!(
            "readable only by {} of {} legal officers ({})",
            self.threshold,
            self.officers.len(),
            self.officers.join(", ")
        )
    }
}

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
        let mut signed = OFFICERS_POLICY_CONTEXT.to_vec();
        signed.extend(postcard::to_stdvec(self).expect("policy serialises"));
        signed
    }

    fn to_be_signed_v3(&self) -> Vec<u8> {
        let mut signed = WIPING_POLICY_CONTEXT.to_vec();
        signed.extend(postcard::to_stdvec(&PolicyBodyV3::of(self)).expect("policy serialises"));
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
    /// Who alone can read the compliance archive; `None`: its host can.
    #[serde(default)]
    pub legal_officers: Option<LegalOfficers>,
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
        if let Some(officers) = &self.legal_officers {
            officers.check()?;
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
const ADMIN_OFFICERS_POLICY_CONTEXT: &[u8] = b"muster-org-policy-by-admin-v2\0";

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
        let signature = sign(&signed_by_admin(
            ADMIN_OFFICERS_POLICY_CONTEXT,
            &issuer,
            &body,
        ));
        OrgPolicy {
            body,
            signature,
            issuer: Some(issuer),
        }
    }

    /// Checks the signature: the organisation root's, or that of an admin device whose
    /// root-signed certificate was valid when the policy was issued. Whether that device
    /// was itself revoked is for the caller's [`crate::RevocationList`].
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
            let key = &issuer.body.device_key;
            return check_ed25519(
                key,
                &signed_by_admin(ADMIN_OFFICERS_POLICY_CONTEXT, issuer, &self.body),
                &self.signature,
            )
            .or_else(|e| {
                // Signed before legal officers existed: only a policy without them.
                if self.body.legal_officers.is_some() {
                    return Err(e);
                }
                check_ed25519(
                    key,
                    &signed_by_admin(ADMIN_POLICY_CONTEXT, issuer, &PolicyBodyV3::of(&self.body)),
                    &self.signature,
                )
            });
        }
        let root = &org.root_public_key;
        check_ed25519(root, &self.body.to_be_signed(), &self.signature)
            .or_else(|e| {
                if self.body.legal_officers.is_some() {
                    Err(e)
                } else {
                    check_ed25519(root, &self.body.to_be_signed_v3(), &self.signature)
                }
            })
            .or_else(|e| {
                if self.body.wipe_on_revoke || self.body.legal_officers.is_some() {
                    Err(e)
                } else {
                    check_ed25519(root, &self.body.to_be_signed_v2(), &self.signature)
                }
            })
    }
}

impl OrgRootKey {
    pub fn sign_policy(&self, body: OrgPolicyBody) -> OrgPolicy {
        let signature = self.pair.sign(&body.to_be_signed()).as_ref().to_vec();
        OrgPolicy {
            body,
            signature,
            issuer: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::tests::{admin, org, sign_with};
    use crate::identity::{CertificateBody, Role};
    use crate::revocation::{Revocation, RevocationBody};

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
}
