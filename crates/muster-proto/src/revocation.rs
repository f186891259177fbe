//! Revocations: devices the organisation cut off, signed by the root or an admin device,
//! and what a device knows of them when it judges a certificate.

use crate::identity::{
    check_admin_issuer, check_ed25519, signed_by_admin, CertError, Certificate, IssuerCertificate,
    OrgDescriptor, OrgRootKey,
};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

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

impl OrgRootKey {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::tests::{admin, body, org, sign_with};
    use crate::identity::CertificateBody;

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
}
