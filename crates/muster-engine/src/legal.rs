//! The compliance archive readable only by the organisation's legal officers.
//!
//! An admin makes the officers' key: an X25519 key pair whose public half goes into the
//! signed organisation policy and whose private half is split with Shamir's scheme into one
//! share per officer, `threshold` of which restore it. Each share leaves the admin's device
//! only sealed (ChaCha20-Poly1305 under a key derived from a one-time code), as a file the
//! officer imports into their own device's encrypted store; the code travels apart from
//! the file. The archive seals every entry's record with HPKE to the public key, so its
//! host keeps, chains, verifies and prunes entries it cannot read.
//!
//! To read, the archive writes a request signed by its device, naming what is asked and
//! a fresh HPKE key of its own. Each officer's device checks the request and answers with
//! an approval: its share sealed to that request's key and signed by the officer's
//! device. With `threshold` approvals from distinct officers the archive restores the
//! private key for that one request, uses it, and forgets it and the request's key.

use crate::error::EngineError;
use muster_proto::{Certificate, LegalOfficers, OrgDescriptor, RevocationList};
use openmls_rust_crypto::RustCrypto;
use openmls_traits::crypto::OpenMlsCrypto as _;
use openmls_traits::types::{HpkeAeadType, HpkeCiphertext, HpkeConfig, HpkeKdfType, HpkeKemType};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

const HPKE: HpkeConfig = HpkeConfig(
    HpkeKemType::DhKem25519,
    HpkeKdfType::HkdfSha256,
    HpkeAeadType::ChaCha20Poly1305,
);
const RECORD_INFO: &[u8] = b"muster archive record v1";
const APPROVAL_INFO: &[u8] = b"muster archive approval v1";
const SHARE_FORMAT: &str = "muster-officer-share";
/// How long a request may wait for its approvals; the archive forgets older ones.
pub const REQUEST_LIFETIME_MS: i64 = 7 * 24 * 3600 * 1000;
/// How far ahead of an officer's clock a request's time may be.
const CLOCK_SKEW_MS: i64 = 5 * 60 * 1000;
const REQUEST_FORMAT: &str = "muster-archive-request";
const APPROVAL_FORMAT: &str = "muster-archive-approval";

fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system's random source works");
    bytes
}

fn unhex(text: &str, what: &str) -> Result<Vec<u8>, EngineError> {
    hex::decode(text).map_err(|_| EngineError::Invalid(format!("{what} is not hex")))
}

/// The legal officers named by the newest organisation policy stored in `db` (stored
/// only once verified).
pub(crate) fn stored_officers(
    db: &rusqlite::Connection,
) -> Result<Option<LegalOfficers>, EngineError> {
    use rusqlite::OptionalExtension as _;
    let bytes: Option<Vec<u8>> = db
        .prepare_cached("SELECT policy FROM org_policy WHERE id = 1")?
        .query_row([], |r| r.get(0))
        .optional()?;
    Ok(bytes
        .and_then(|b| serde_json::from_slice::<muster_proto::OrgPolicy>(&b).ok())
        .and_then(|p| p.body.legal_officers))
}

/// An archive record sealed to the officers' key, as the archive stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedRecord {
    /// The officers' key it is sealed to.
    pub sealed_to: String,
    pub kem_output: String,
    pub ciphertext: String,
}

impl SealedRecord {
    /// Parses a stored record that was sealed; `None` for a plaintext one.
    pub fn parse(record: &str) -> Option<Self> {
        serde_json::from_str(record).ok()
    }
}

/// Seals an archive record (JSON) to the officers' public key.
pub fn seal_record(officers: &LegalOfficers, record: &str) -> Result<String, EngineError> {
    let sealed = RustCrypto::default()
        .hpke_seal(
            HPKE,
            &officers.public_key,
            RECORD_INFO,
            officers.key_id.as_bytes(),
            record.as_bytes(),
        )
        .map_err(|e| EngineError::Invalid(format!("sealing an archive record: {e:?}")))?;
    Ok(serde_json::to_string(&SealedRecord {
        sealed_to: officers.key_id.clone(),
        kem_output: hex::encode(sealed.kem_output.as_slice()),
        ciphertext: hex::encode(sealed.ciphertext.as_slice()),
    })
    .expect("sealed record serialises"))
}

/// The officers' private key, restored for one request; wiped when dropped.
pub struct OfficersKey {
    key_id: String,
    private: Zeroizing<Vec<u8>>,
    /// The officers whose approvals restored it.
    pub approved_by: Vec<String>,
}

impl OfficersKey {
    /// Opens a stored record: a sealed one with the key, a plaintext one (from before the
    /// organisation had officers) as it is.
    pub fn open(&self, record: &str) -> Result<String, EngineError> {
        let Some(sealed) = SealedRecord::parse(record) else {
            return Ok(record.to_string());
        };
        if sealed.sealed_to != self.key_id {
            return Err(EngineError::Invalid(format!(
                "an archive record is sealed to officers' key {}, not to {}",
                sealed.sealed_to, self.key_id
            )));
        }
        let input = HpkeCiphertext {
            kem_output: unhex(&sealed.kem_output, "a sealed record")?.into(),
            ciphertext: unhex(&sealed.ciphertext, "a sealed record")?.into(),
        };
        let plain = RustCrypto::default()
            .hpke_open(
                HPKE,
                &input,
                &self.private,
                RECORD_INFO,
                self.key_id.as_bytes(),
            )
            .map_err(|_| {
                EngineError::Invalid(
                    "an archive record does not open with the officers' key".into(),
                )
            })?;
        String::from_utf8(plain)
            .map_err(|_| EngineError::Invalid("an archive record is not text".into()))
    }
}

/// One officer's share, sealed for the hand-over, as written to the file given to them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareFile {
    pub format: String,
    pub version: u32,
    pub org_id: String,
    pub key_id: String,
    pub officer: String,
    /// The share's x coordinate (1..=n).
    pub index: u8,
    pub threshold: u8,
    pub nonce: String,
    pub sealed: String,
}

impl ShareFile {
    fn bound(&self) -> Vec<u8> {
        format!(
            "{}\n{}\n{}\n{}\n{}\n{}",
            self.format, self.org_id, self.key_id, self.officer, self.index, self.threshold
        )
        .into_bytes()
    }
}

fn share_sealing_key(code: &[u8], key_id: &str) -> LessSafeKey {
    let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"muster officer share v1");
    let info = [key_id.as_bytes()];
    let prk = salt.extract(code);
    let okm = prk
        .expand(&info, &CHACHA20_POLY1305)
        .expect("HKDF output of the AEAD's key length");
    LessSafeKey::new(UnboundKey::from(okm))
}

/// A one-time code: 128 random bits, in hex groups of four.
fn new_code() -> String {
    hex::encode(random::<16>())
        .as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).expect("hex"))
        .collect::<Vec<_>>()
        .join("-")
}

fn code_bytes(code: &str) -> Result<Zeroizing<Vec<u8>>, EngineError> {
    let digits: String = code
        .chars()
        .filter(|c| *c != '-' && !c.is_whitespace())
        .collect();
    let bytes = hex::decode(digits.to_ascii_lowercase())
        .map_err(|_| EngineError::Invalid("the share code is not the one printed".into()))?;
    if bytes.len() != 16 {
        return Err(EngineError::Invalid(
            "the share code is not the one printed".into(),
        ));
    }
    Ok(Zeroizing::new(bytes))
}

/// What making the officers' key gives the admin: the policy's part, and for each officer
/// the sealed share file and the code that opens it.
pub struct Ceremony {
    pub officers: LegalOfficers,
    pub shares: Vec<(ShareFile, String)>,
}

/// Makes a new officers' key for `officers`, `threshold` of whom are needed to read.
pub fn new_officers_key(
    org_id: &str,
    threshold: u8,
    officers: &[String],
) -> Result<Ceremony, EngineError> {
    let count = u8::try_from(officers.len())
        .map_err(|_| EngineError::Invalid("at most 255 legal officers".into()))?;
    if threshold < 1 || threshold > count {
        return Err(EngineError::Invalid(format!(
            "the threshold must be between 1 and the number of officers ({count})"
        )));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(twice) = officers.iter().find(|o| !seen.insert(o.as_str())) {
        return Err(EngineError::Invalid(format!("{twice} is named twice")));
    }
    let ikm = Zeroizing::new(random::<32>());
    let pair = RustCrypto::default()
        .derive_hpke_keypair(HPKE, ikm.as_slice())
        .map_err(|e| EngineError::Invalid(format!("making the officers' key: {e:?}")))?;
    let private = Zeroizing::new(pair.private.to_vec());
    let key_id = LegalOfficers::key_id_of(&pair.public);
    let parts = crate::admin::shamir_split(&private, threshold, count);
    let mut shares = Vec::new();
    for (i, (officer, part)) in officers.iter().zip(parts).enumerate() {
        let part = Zeroizing::new(part);
        let code = new_code();
        let nonce = random::<12>();
        let mut file = ShareFile {
            format: SHARE_FORMAT.into(),
            version: 1,
            org_id: org_id.to_string(),
            key_id: key_id.clone(),
            officer: officer.clone(),
            index: i as u8 + 1,
            threshold,
            nonce: hex::encode(nonce),
            sealed: String::new(),
        };
        let mut sealed = part.to_vec();
        share_sealing_key(&code_bytes(&code)?, &key_id)
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(file.bound()),
                &mut sealed,
            )
            .map_err(|_| EngineError::Invalid("sealing a share failed".into()))?;
        file.sealed = hex::encode(sealed);
        shares.push((file, code));
    }
    Ok(Ceremony {
        officers: LegalOfficers {
            public_key: pair.public,
            threshold,
            officers: officers.to_vec(),
            key_id,
        },
        shares,
    })
}

/// An officer's share, opened on their device.
pub struct OpenedShare {
    pub key_id: String,
    pub index: u8,
    pub share: Zeroizing<Vec<u8>>,
}

/// Opens a share file with its code, for the officer `me` of organisation `org_id`.
pub fn open_share(
    file: &ShareFile,
    code: &str,
    org_id: &str,
    me: &str,
) -> Result<OpenedShare, EngineError> {
    if file.format != SHARE_FORMAT || file.version != 1 {
        return Err(EngineError::Invalid(
            "this is not a legal officer's share file".into(),
        ));
    }
    if file.org_id != org_id {
        return Err(EngineError::Invalid(
            "this share belongs to another organisation".into(),
        ));
    }
    if file.officer != me {
        return Err(EngineError::Invalid(format!(
            "this share is {}'s, not yours ({me})",
            file.officer
        )));
    }
    let nonce: [u8; 12] = unhex(&file.nonce, "the share's nonce")?
        .try_into()
        .map_err(|_| EngineError::Invalid("the share's nonce is malformed".into()))?;
    let mut sealed = unhex(&file.sealed, "the share")?;
    let opened = share_sealing_key(&code_bytes(code)?, &file.key_id)
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(file.bound()),
            &mut sealed,
        )
        .map_err(|_| {
            EngineError::Invalid(
                "the share does not open with this code (wrong code, or the file was altered)"
                    .into(),
            )
        })?;
    Ok(OpenedShare {
        key_id: file.key_id.clone(),
        index: file.index,
        share: Zeroizing::new(opened.to_vec()),
    })
}

/// What a device signs: `context`, then `unsigned` (its signature field empty) as JSON.
fn signed_form(context: &[u8], unsigned: &impl Serialize) -> Vec<u8> {
    let mut out = context.to_vec();
    out.extend(serde_json::to_vec(unsigned).expect("a signed document serialises"));
    out
}

/// The archive's request to read, signed by the archive device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRequest {
    pub format: String,
    pub org_id: String,
    pub id: String,
    /// `export` or `sample`.
    pub action: String,
    /// What is asked for, in words (as the access log will record it).
    pub what: String,
    /// The officers' key whose shares are asked for.
    pub key_id: String,
    /// The request's own HPKE public key (hex): approvals are sealed to it.
    pub public_key: String,
    pub created_at: i64,
    pub archive: Certificate,
    #[serde(default)]
    pub signature: String,
}

impl ApprovalRequest {
    fn signed_bytes(&self) -> Vec<u8> {
        let mut unsigned = self.clone();
        unsigned.signature.clear();
        signed_form(b"muster archive request v1\0", &unsigned)
    }

    /// Checks the request on an officer's device: from this organisation's archive device
    /// (certificate valid and not revoked), signed by it, for the officers' key in force.
    pub fn check(
        &self,
        org: &OrgDescriptor,
        revoked: &RevocationList,
        officers: &LegalOfficers,
        now_secs: u64,
    ) -> Result<(), EngineError> {
        if self.format != REQUEST_FORMAT || self.org_id != org.org_id {
            return Err(EngineError::Invalid(
                "this is not a request from this organisation's archive".into(),
            ));
        }
        self.archive
            .verify(org, now_secs)
            .map_err(|e| EngineError::Invalid(format!("the request's archive certificate: {e}")))?;
        if !self.archive.is_archive() || revoked.covers(&self.archive) {
            return Err(EngineError::Invalid(
                "the request is not signed by an archive device of this organisation".into(),
            ));
        }
        let signature = unhex(&self.signature, "the request's signature")?;
        muster_proto::verify_device_signature(
            &self.archive.body.device_key,
            &self.signed_bytes(),
            &signature,
        )
        .map_err(|_| EngineError::Invalid("the request's signature does not verify".into()))?;
        let age_ms = (now_secs as i64).saturating_mul(1000) - self.created_at;
        if !(-CLOCK_SKEW_MS..=REQUEST_LIFETIME_MS).contains(&age_ms) {
            return Err(EngineError::Invalid(format!(
                "the request was made {} ago: requests are approved within {} days of being made",
                crate::describe_duration((age_ms.max(0) / 1000) as u64),
                REQUEST_LIFETIME_MS / 86_400_000
            )));
        }
        if self.key_id != officers.key_id {
            return Err(EngineError::Invalid(format!(
                "the request asks for officers' key {}, but the organisation's is {}",
                self.key_id, officers.key_id
            )));
        }
        Ok(())
    }
}

/// The archive's side of a request: the request, and its private key.
pub struct NewRequest {
    pub request: ApprovalRequest,
    pub private_key: Zeroizing<Vec<u8>>,
}

/// Makes a request for `action` on `what`, signed with `sign` (the archive device's key).
pub fn new_request(
    org_id: &str,
    archive: &Certificate,
    officers: &LegalOfficers,
    action: &str,
    what: &str,
    now_ms: i64,
    sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, EngineError>,
) -> Result<NewRequest, EngineError> {
    let ikm = Zeroizing::new(random::<32>());
    let pair = RustCrypto::default()
        .derive_hpke_keypair(HPKE, ikm.as_slice())
        .map_err(|e| EngineError::Invalid(format!("making a request key: {e:?}")))?;
    let mut request = ApprovalRequest {
        format: REQUEST_FORMAT.into(),
        org_id: org_id.into(),
        id: hex::encode(random::<8>()),
        action: action.into(),
        what: what.into(),
        key_id: officers.key_id.clone(),
        public_key: hex::encode(&pair.public),
        created_at: now_ms,
        archive: archive.clone(),
        signature: String::new(),
    };
    request.signature = hex::encode(sign(&request.signed_bytes())?);
    Ok(NewRequest {
        request,
        private_key: Zeroizing::new(pair.private.to_vec()),
    })
}

/// An officer's approval of one request: their share sealed to the request's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub format: String,
    pub request_id: String,
    pub officer: Certificate,
    pub index: u8,
    pub kem_output: String,
    pub sealed_share: String,
    #[serde(default)]
    pub signature: String,
}

impl Approval {
    fn signed_bytes(&self) -> Vec<u8> {
        let mut unsigned = self.clone();
        unsigned.signature.clear();
        signed_form(b"muster archive approval v1\0", &unsigned)
    }

    fn aad(request: &ApprovalRequest, officer: &str, index: u8) -> Vec<u8> {
        format!("{}\n{}\n{}\n{}", request.id, request.key_id, officer, index).into_bytes()
    }
}

/// Approves `request` with this officer's `share`, signing with `sign` (their device key).
pub fn approve(
    request: &ApprovalRequest,
    me: &Certificate,
    share: &OpenedShare,
    sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, EngineError>,
) -> Result<Approval, EngineError> {
    let public = unhex(&request.public_key, "the request's key")?;
    let sealed = RustCrypto::default()
        .hpke_seal(
            HPKE,
            &public,
            APPROVAL_INFO,
            &Approval::aad(request, &me.body.user, share.index),
            &share.share,
        )
        .map_err(|e| EngineError::Invalid(format!("sealing the approval: {e:?}")))?;
    let mut approval = Approval {
        format: APPROVAL_FORMAT.into(),
        request_id: request.id.clone(),
        officer: me.clone(),
        index: share.index,
        kem_output: hex::encode(sealed.kem_output.as_slice()),
        sealed_share: hex::encode(sealed.ciphertext.as_slice()),
        signature: String::new(),
    };
    approval.signature = hex::encode(sign(&approval.signed_bytes())?);
    Ok(approval)
}

/// Restores the officers' key from `approvals` of `request`: each from a distinct named
/// officer whose device certificate is valid and unrevoked, signed by that device, for
/// this request, with the share that officer holds; and the restored key must be the one
/// the policy names.
pub fn restore(
    request: &ApprovalRequest,
    request_private_key: &[u8],
    approvals: &[Approval],
    officers: &LegalOfficers,
    org: &OrgDescriptor,
    revoked: &RevocationList,
    now_secs: u64,
) -> Result<OfficersKey, EngineError> {
    let mut parts: Vec<(u8, Vec<u8>)> = Vec::new();
    let mut approved_by = Vec::new();
    let mut problems = Vec::new();
    for approval in approvals {
        let officer = approval.officer.body.user.clone();
        let check = || -> Result<Vec<u8>, String> {
            if approval.format != APPROVAL_FORMAT || approval.request_id != request.id {
                return Err("it approves another request".into());
            }
            approval
                .officer
                .verify(org, now_secs)
                .map_err(|e| format!("its device certificate: {e}"))?;
            if revoked.covers(&approval.officer) {
                return Err("its device is revoked".into());
            }
            let position = officers
                .officers
                .iter()
                .position(|o| *o == officer)
                .ok_or("they are not one of the organisation's legal officers")?;
            if usize::from(approval.index) != position + 1 {
                return Err("the share is not the one this officer holds".into());
            }
            let signature = hex::decode(&approval.signature).map_err(|_| "bad signature")?;
            muster_proto::verify_device_signature(
                &approval.officer.body.device_key,
                &approval.signed_bytes(),
                &signature,
            )
            .map_err(|_| "its signature does not verify")?;
            let input = HpkeCiphertext {
                kem_output: hex::decode(&approval.kem_output)
                    .map_err(|_| "malformed")?
                    .into(),
                ciphertext: hex::decode(&approval.sealed_share)
                    .map_err(|_| "malformed")?
                    .into(),
            };
            RustCrypto::default()
                .hpke_open(
                    HPKE,
                    &input,
                    request_private_key,
                    APPROVAL_INFO,
                    &Approval::aad(request, &officer, approval.index),
                )
                .map_err(|_| "its share does not open with this request's key".into())
        };
        match check() {
            Ok(_) if approved_by.contains(&officer) => {}
            Ok(share) => {
                approved_by.push(officer);
                parts.push((approval.index, share));
            }
            Err(why) => problems.push(format!("the approval from {officer} was refused: {why}")),
        }
    }
    if approved_by.len() < usize::from(officers.threshold) {
        let mut message = format!(
            "{} of {} legal officers' approvals are needed; {} valid ({})",
            officers.threshold,
            officers.officers.len(),
            approved_by.len(),
            if approved_by.is_empty() {
                "none".to_string()
            } else {
                approved_by.join(", ")
            }
        );
        for p in problems {
            message.push_str("; ");
            message.push_str(&p);
        }
        return Err(EngineError::Invalid(message));
    }
    let private =
        Zeroizing::new(crate::admin::shamir_combine(&parts).ok_or_else(|| {
            EngineError::Invalid("the officers' shares do not fit together".into())
        })?);
    // The restored key must be the policy's: derive its public half and compare.
    let check = seal_record(officers, "check")?;
    let key = OfficersKey {
        key_id: officers.key_id.clone(),
        private,
        approved_by,
    };
    if key.open(&check).ok().as_deref() != Some("check") {
        return Err(EngineError::Invalid(
            "the officers' shares restore another key than the organisation's".into(),
        ));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_proto::{OrgPolicyBody, OrgRootKey};

    #[test]
    fn a_newer_policy_that_drops_the_legal_officers_is_not_kept() {
        let home = std::env::temp_dir().join(format!("muster-legal-policy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&home);
        let engine = crate::Engine::open(&home).unwrap();
        let root = OrgRootKey::generate();
        let officers = new_officers_key("org1", 1, &["ann".to_string()])
            .unwrap()
            .officers;
        let policy = |version, legal_officers| {
            root.sign_policy(OrgPolicyBody {
                org_id: "org1".into(),
                version,
                legal_officers,
                ..Default::default()
            })
        };
        crate::admin::store_policy_in(&engine.db, &policy(1, Some(officers.clone()))).unwrap();
        crate::admin::store_policy_in(&engine.db, &policy(2, None)).unwrap();
        assert_eq!(stored_officers(&engine.db).unwrap(), Some(officers.clone()));
        let mut next = officers.clone();
        next.officers = vec!["bo".into()];
        crate::admin::store_policy_in(&engine.db, &policy(3, Some(next.clone()))).unwrap();
        assert_eq!(stored_officers(&engine.db).unwrap(), Some(next));
        drop(engine);
        let _ = std::fs::remove_dir_all(&home);
    }

    #[test]
    fn officers_with_a_bad_threshold_a_name_twice_or_a_foreign_key_id_are_refused() {
        let names = ["ann".to_string(), "bo".into()];
        let good = new_officers_key("org1", 2, &names).unwrap().officers;
        good.check().unwrap();
        let mut high = good.clone();
        high.threshold = 3;
        assert!(high.check().is_err());
        let mut twice = good.clone();
        twice.officers = vec!["ann".into(), "ann".into()];
        assert!(twice.check().is_err());
        let mut foreign = good.clone();
        foreign.key_id = "0011223344556677".into();
        assert!(foreign.check().is_err());
        assert!(new_officers_key("org1", 0, &names).is_err());
    }

    #[test]
    fn a_sealed_record_opens_only_with_the_restored_key_and_shares_open_only_with_their_code() {
        let officers = ["ann".to_string(), "carl".into(), "dora".into()];
        let ceremony = new_officers_key("org1", 2, &officers).unwrap();
        let record = r#"{"text":"the pier 4 access code is 7741"}"#;
        let sealed = seal_record(&ceremony.officers, record).unwrap();
        assert!(!sealed.contains("7741"));
        let (file, code) = &ceremony.shares[0];
        assert!(
            open_share(file, code, "org1", "carl").is_err(),
            "another officer's share"
        );
        assert!(
            open_share(file, code, "org2", "ann").is_err(),
            "another organisation"
        );
        let (_, other_code) = &ceremony.shares[1];
        assert!(
            open_share(file, other_code, "org1", "ann").is_err(),
            "wrong code"
        );
        let mut altered = file.clone();
        altered.index = 3;
        assert!(
            open_share(&altered, code, "org1", "ann").is_err(),
            "altered file"
        );
        let shares: Vec<OpenedShare> = ceremony
            .shares
            .iter()
            .zip(&officers)
            .map(|((f, c), o)| open_share(f, c, "org1", o).unwrap())
            .collect();
        let two = crate::admin::shamir_combine(&[
            (shares[0].index, shares[0].share.to_vec()),
            (shares[2].index, shares[2].share.to_vec()),
        ])
        .unwrap();
        let key = OfficersKey {
            key_id: ceremony.officers.key_id.clone(),
            private: Zeroizing::new(two),
            approved_by: vec![],
        };
        assert_eq!(key.open(&sealed).unwrap(), record);
        let one = OfficersKey {
            key_id: ceremony.officers.key_id.clone(),
            private: Zeroizing::new(shares[0].share.to_vec()),
            approved_by: vec![],
        };
        assert!(
            one.open(&sealed).is_err(),
            "one share alone opened a record"
        );
    }
}
