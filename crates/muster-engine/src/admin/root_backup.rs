//! The organisation root key sealed under a passphrase (Argon2id, then ChaCha20-Poly1305),
//! so that losing the admin laptop that holds it does not lose the organisation.

use super::shamir;
use muster_proto::{OrgDescriptor, OrgRootKey};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

/// What a backup file says it is.
const FORMAT: &str = "muster-root-backup";
const VERSION: u32 = 1;
/// The shortest passphrase accepted for sealing.
pub const MIN_PASSPHRASE_CHARS: usize = 12;
/// Argon2id cost for new backups: 64 MiB, 3 passes, one lane (OWASP's first choice).
const MEMORY_KIB: u32 = 64 * 1024;
const ITERATIONS: u32 = 3;
const PARALLELISM: u32 = 1;
/// Costs above these are refused when opening, so a crafted file cannot exhaust memory.
const MAX_MEMORY_KIB: u32 = 256 * 1024;
const MAX_ITERATIONS: u32 = 10;
const MAX_PARALLELISM: u32 = 4;

/// A sealed root key, as written to the backup file (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootBackup {
    pub format: String,
    pub version: u32,
    /// The organisation whose root this is; bound into the seal.
    pub org_id: String,
    pub org_name: String,
    /// The root's public key (hex); bound into the seal and checked on opening.
    pub root_public_key: String,
    /// Set when this file holds one share of a split root rather than the whole key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<ShareInfo>,
    pub kdf: KdfParams,
    /// ChaCha20-Poly1305 nonce (hex).
    pub nonce: String,
    /// The root key's PKCS#8 document, encrypted and authenticated (hex).
    pub sealed: String,
}

/// What the root's device knew when the backup was made, sealed with the key: without it,
/// a restored root would sign from whatever the relay shows (an old certificate of a
/// demoted admin, a device whose revocation it hides).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authority {
    /// Each user's profile and roles as last signed (JSON, as stored).
    pub records: Vec<AuthorityRecord>,
    /// Revoked devices, with their users.
    pub revoked: Vec<(String, String)>,
    /// Serial numbers of the revocations seen.
    pub revocation_serials: Vec<i64>,
    /// Codes already used, with the device each enrolled (hex key, device id).
    pub used_codes: Vec<(String, String)>,
    /// The newest signed organisation policy it held (JSON), checked again on restore.
    #[serde(default)]
    pub policy: Option<String>,
    /// Certificates revoked admin devices issued that their revocations vouched for:
    /// (revoked device id, hex digest).
    #[serde(default)]
    pub vouched: Vec<(String, String)>,
}

/// One user's record in an [`Authority`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorityRecord {
    pub user: String,
    pub profile: String,
    pub roles: String,
    pub updated_at: i64,
}

/// What is sealed: the secret (the root's PKCS#8 document, or one share of it) and the
/// authority.
#[derive(Serialize, Deserialize)]
struct Sealed {
    secret: String,
    authority: Authority,
}

impl Sealed {
    fn encode(secret: &[u8], authority: &Authority) -> Vec<u8> {
        serde_json::to_vec(&Sealed {
            secret: hex::encode(secret),
            authority: authority.clone(),
        })
        .expect("sealed payload serialises")
    }

    fn decode(bytes: &[u8]) -> Result<(Vec<u8>, Authority), RootBackupError> {
        let sealed: Sealed = serde_json::from_slice(bytes)
            .map_err(|_| RootBackupError::Damaged("the sealed contents do not decode".into()))?;
        Ok((decode(&sealed.secret, "secret")?, sealed.authority))
    }
}

/// Which share of a split root a file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareInfo {
    /// Random id of the split, so shares of different splits are never mixed.
    pub split_id: String,
    /// The admin this share was made for.
    pub holder: String,
    /// The share's x-coordinate, 1 to `count`.
    pub index: u8,
    /// Shares needed to restore the root.
    pub threshold: u8,
    /// Shares made.
    pub count: u8,
}

/// How the sealing key is derived from the passphrase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Always `argon2id`.
    pub algorithm: String,
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    /// Random salt (hex).
    pub salt: String,
}

/// Why a backup could not be made or opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RootBackupError {
    #[error("the passphrase must be at least {MIN_PASSPHRASE_CHARS} characters")]
    WeakPassphrase,
    #[error("this is not a Muster root key backup (or a newer version of one)")]
    NotABackup,
    #[error("the backup is damaged: {0}")]
    Damaged(String),
    #[error("the backup's key derivation asks for more than this device allows")]
    CostTooHigh,
    #[error("this backup belongs to organisation {0:?}, not to this device's organisation")]
    OtherOrganisation(String),
    #[error("wrong passphrase, or the backup was altered")]
    WrongPassphrase,
    #[error("the backup holds a key that is not this organisation's root")]
    NotThisRoot,
    #[error(
        "this file holds one share of a split root: restore it together with the other shares"
    )]
    IsAShare,
    #[error("{0}")]
    Shares(String),
}

/// Seals `root` for `org` under `passphrase`.
pub fn seal(
    root: &OrgRootKey,
    authority: &Authority,
    org: &OrgDescriptor,
    passphrase: &str,
) -> Result<RootBackup, RootBackupError> {
    seal_payload(
        &Sealed::encode(root.pkcs8(), authority),
        org,
        None,
        passphrase,
    )
}

/// Seals `payload` (the root's PKCS#8 document, or one share of it) for `org`.
fn seal_payload(
    payload: &[u8],
    org: &OrgDescriptor,
    share: Option<ShareInfo>,
    passphrase: &str,
) -> Result<RootBackup, RootBackupError> {
    if passphrase.chars().count() < MIN_PASSPHRASE_CHARS {
        return Err(RootBackupError::WeakPassphrase);
    }
    let rng = SystemRandom::new();
    let mut salt = [0u8; 16];
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill(&mut salt)
        .and_then(|()| rng.fill(&mut nonce))
        .expect("system randomness available");
    let kdf = KdfParams {
        algorithm: "argon2id".into(),
        memory_kib: MEMORY_KIB,
        iterations: ITERATIONS,
        parallelism: PARALLELISM,
        salt: hex::encode(salt),
    };
    let mut backup = RootBackup {
        format: FORMAT.into(),
        version: VERSION,
        org_id: org.org_id.clone(),
        org_name: org.name.clone(),
        root_public_key: hex::encode(&org.root_public_key),
        share,
        kdf,
        nonce: hex::encode(nonce),
        sealed: String::new(),
    };
    let key = sealing_key(&backup.kdf, passphrase)?;
    let mut sealed = payload.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(bound_data(&backup)),
        &mut sealed,
    )
    .map_err(|_| RootBackupError::Damaged("sealing failed".into()))?;
    backup.sealed = hex::encode(sealed);
    Ok(backup)
}

/// Opens `backup` for `org` with `passphrase`: the key inside must be `org`'s root.
pub fn open(
    backup: &RootBackup,
    org: &OrgDescriptor,
    passphrase: &str,
) -> Result<(OrgRootKey, Authority), RootBackupError> {
    if backup.share.is_some() {
        return Err(RootBackupError::IsAShare);
    }
    let (secret, authority) = Sealed::decode(&open_payload(backup, org, passphrase)?)?;
    Ok((root_from(&secret, org)?, authority))
}

/// Splits `root` into one share per holder, any `threshold` of which restore it and fewer
/// reveal nothing (Shamir's scheme over GF(256)); each share is sealed under its holder's
/// passphrase.
pub fn split(
    root: &OrgRootKey,
    authority: &Authority,
    org: &OrgDescriptor,
    threshold: u8,
    holders: &[(String, String)],
) -> Result<Vec<RootBackup>, RootBackupError> {
    let count = u8::try_from(holders.len())
        .map_err(|_| RootBackupError::Shares("at most 255 shares".into()))?;
    if threshold < 2 || threshold > count {
        return Err(RootBackupError::Shares(format!(
            "the threshold must be at least 2 and at most the {count} holders"
        )));
    }
    if holders
        .iter()
        .any(|(_, p)| p.chars().count() < MIN_PASSPHRASE_CHARS)
    {
        return Err(RootBackupError::WeakPassphrase);
    }
    let mut split_id = [0u8; 16];
    SystemRandom::new()
        .fill(&mut split_id)
        .expect("system randomness available");
    let split_id = hex::encode(split_id);
    let shares = shamir::split(root.pkcs8(), threshold, count);
    holders
        .iter()
        .zip(shares)
        .enumerate()
        .map(|(i, ((holder, passphrase), share))| {
            let info = ShareInfo {
                split_id: split_id.clone(),
                holder: holder.clone(),
                index: i as u8 + 1,
                threshold,
                count,
            };
            seal_payload(
                &Sealed::encode(&share, authority),
                org,
                Some(info),
                passphrase,
            )
        })
        .collect()
}

/// Restores the root from shares of one split, each with its holder's passphrase.
pub fn combine(
    shares: &[(RootBackup, String)],
    org: &OrgDescriptor,
) -> Result<(OrgRootKey, Authority), RootBackupError> {
    let infos: Vec<&ShareInfo> = shares
        .iter()
        .map(|(b, _)| {
            b.share.as_ref().ok_or(RootBackupError::Shares(
                "a whole backup is restored on its own, not with shares".into(),
            ))
        })
        .collect::<Result<_, _>>()?;
    let Some(first) = infos.first() else {
        return Err(RootBackupError::Shares("no shares given".into()));
    };
    if infos
        .iter()
        .any(|i| i.split_id != first.split_id || i.threshold != first.threshold)
    {
        return Err(RootBackupError::Shares(
            "these shares come from different splits".into(),
        ));
    }
    let mut indices: Vec<u8> = infos.iter().map(|i| i.index).collect();
    indices.sort_unstable();
    indices.dedup();
    if indices.len() != infos.len() || indices.contains(&0) {
        return Err(RootBackupError::Shares(
            "the same share was given twice".into(),
        ));
    }
    if infos.len() < first.threshold as usize {
        return Err(RootBackupError::Shares(format!(
            "{} of {} shares given: {} are needed",
            infos.len(),
            first.count,
            first.threshold
        )));
    }
    let mut points = Vec::with_capacity(shares.len());
    let mut authority = Authority::default();
    for ((backup, passphrase), info) in shares.iter().zip(&infos) {
        let payload = open_payload(backup, org, passphrase).map_err(|e| match e {
            RootBackupError::WrongPassphrase => RootBackupError::Shares(format!(
                "wrong passphrase for share {} of the split, or it was altered",
                info.index
            )),
            other => other,
        })?;
        let (y, sealed_authority) = Sealed::decode(&payload)?;
        authority = sealed_authority;
        points.push((info.index, y));
    }
    let secret = shamir::combine(&points)
        .ok_or_else(|| RootBackupError::Shares("the shares do not fit together".into()))?;
    Ok((root_from(&secret, org)?, authority))
}

/// Opens the sealed payload of `backup`, after checking it belongs to `org`.
fn open_payload(
    backup: &RootBackup,
    org: &OrgDescriptor,
    passphrase: &str,
) -> Result<Vec<u8>, RootBackupError> {
    if backup.format != FORMAT || backup.version != VERSION || backup.kdf.algorithm != "argon2id" {
        return Err(RootBackupError::NotABackup);
    }
    if backup.org_id != org.org_id || backup.root_public_key != hex::encode(&org.root_public_key) {
        return Err(RootBackupError::OtherOrganisation(backup.org_name.clone()));
    }
    if backup.kdf.memory_kib > MAX_MEMORY_KIB
        || backup.kdf.iterations > MAX_ITERATIONS
        || backup.kdf.parallelism > MAX_PARALLELISM
    {
        return Err(RootBackupError::CostTooHigh);
    }
    let nonce: [u8; NONCE_LEN] = decode(&backup.nonce, "nonce")?
        .try_into()
        .map_err(|_| RootBackupError::Damaged("the nonce has the wrong length".into()))?;
    let mut sealed = decode(&backup.sealed, "sealed key")?;
    let key = sealing_key(&backup.kdf, passphrase)?;
    let payload = key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(bound_data(backup)),
            &mut sealed,
        )
        .map_err(|_| RootBackupError::WrongPassphrase)?;
    Ok(payload.to_vec())
}

/// The root key in `pkcs8`, which must be `org`'s.
fn root_from(pkcs8: &[u8], org: &OrgDescriptor) -> Result<OrgRootKey, RootBackupError> {
    let root = OrgRootKey::from_pkcs8(pkcs8).map_err(|_| RootBackupError::NotThisRoot)?;
    if root.public_key() != org.root_public_key {
        return Err(RootBackupError::NotThisRoot);
    }
    Ok(root)
}

/// Everything the seal authenticates besides the key itself: the format, the
/// organisation, the root's public key and the derivation's parameters.
fn bound_data(backup: &RootBackup) -> Vec<u8> {
    let kdf = &backup.kdf;
    let share = backup.share.as_ref().map_or(String::from("whole"), |s| {
        format!(
            "share:{}:{}:{}:{}:{}",
            s.split_id, s.holder, s.index, s.threshold, s.count
        )
    });
    format!(
        "{}\n{}\n{}\n{}\n{}\n{}:{}:{}:{}\n{}",
        backup.format,
        backup.version,
        backup.org_id,
        backup.root_public_key,
        kdf.algorithm,
        kdf.memory_kib,
        kdf.iterations,
        kdf.parallelism,
        kdf.salt,
        share
    )
    .into_bytes()
}

fn sealing_key(kdf: &KdfParams, passphrase: &str) -> Result<LessSafeKey, RootBackupError> {
    let salt = decode(&kdf.salt, "salt")?;
    let params = argon2::Params::new(kdf.memory_kib, kdf.iterations, kdf.parallelism, Some(32))
        .map_err(|e| RootBackupError::Damaged(format!("key derivation parameters: {e}")))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut key = [0u8; 32];
    argon
        .hash_password_into(passphrase.as_bytes(), &salt, &mut key)
        .map_err(|e| RootBackupError::Damaged(format!("key derivation: {e}")))?;
    let unbound = UnboundKey::new(&CHACHA20_POLY1305, &key).expect("32-byte key");
    Ok(LessSafeKey::new(unbound))
}

fn decode(text: &str, what: &str) -> Result<Vec<u8>, RootBackupError> {
    hex::decode(text).map_err(|_| RootBackupError::Damaged(format!("the {what} is not hex")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org_of(root: &OrgRootKey) -> OrgDescriptor {
        OrgDescriptor {
            org_id: "org-1".into(),
            name: "Example".into(),
            root_public_key: root.public_key(),
        }
    }

    const PASSPHRASE: &str = "correct horse battery staple";

    #[test]
    fn a_sealed_root_opens_only_with_its_passphrase_for_its_organisation() {
        let root = OrgRootKey::generate();
        let org = org_of(&root);
        let backup = seal(&root, &Authority::default(), &org, PASSPHRASE).unwrap();
        assert!(!backup.sealed.contains(&hex::encode(root.pkcs8())));
        let (opened, _) = open(&backup, &org, PASSPHRASE).unwrap();
        assert_eq!(opened.public_key(), root.public_key());

        assert_eq!(
            open(&backup, &org, "correct horse battery stapler").unwrap_err(),
            RootBackupError::WrongPassphrase
        );
        let other_root = OrgRootKey::generate();
        let other = OrgDescriptor {
            org_id: "org-2".into(),
            ..org_of(&other_root)
        };
        assert!(matches!(
            open(&backup, &other, PASSPHRASE),
            Err(RootBackupError::OtherOrganisation(_))
        ));
        assert_eq!(
            seal(&root, &Authority::default(), &org, "short").unwrap_err(),
            RootBackupError::WeakPassphrase
        );
    }

    #[test]
    fn every_bound_field_and_the_key_itself_are_authenticated() {
        let root = OrgRootKey::generate();
        let org = org_of(&root);
        let backup = seal(&root, &Authority::default(), &org, PASSPHRASE).unwrap();
        let mut flipped = backup.clone();
        let last = flipped.sealed.pop().unwrap();
        flipped.sealed.push(if last == '0' { '1' } else { '0' });
        assert_eq!(
            open(&flipped, &org, PASSPHRASE).unwrap_err(),
            RootBackupError::WrongPassphrase
        );
        let mut cheaper = backup.clone();
        cheaper.kdf.iterations = 1;
        assert_eq!(
            open(&cheaper, &org, PASSPHRASE).unwrap_err(),
            RootBackupError::WrongPassphrase
        );
        let mut costly = backup.clone();
        costly.kdf.memory_kib = u32::MAX;
        assert_eq!(
            open(&costly, &org, PASSPHRASE).unwrap_err(),
            RootBackupError::CostTooHigh
        );
        let mut renamed = backup;
        renamed.format = "something-else".into();
        assert_eq!(
            open(&renamed, &org, PASSPHRASE).unwrap_err(),
            RootBackupError::NotABackup
        );
    }

    #[test]
    fn a_different_key_sealed_for_the_organisation_is_refused() {
        let root = OrgRootKey::generate();
        let impostor = OrgRootKey::generate();
        let org = org_of(&root);
        // A backup of another key, relabelled as this organisation's root.
        let backup = seal(&impostor, &Authority::default(), &org, PASSPHRASE).unwrap();
        assert_eq!(
            open(&backup, &org, PASSPHRASE).unwrap_err(),
            RootBackupError::NotThisRoot
        );
    }

    #[test]
    fn two_of_three_shares_restore_the_root_and_one_does_not() {
        let root = OrgRootKey::generate();
        let org = org_of(&root);
        let holders: Vec<(String, String)> = ["carol", "dave", "erin"]
            .iter()
            .map(|h| (h.to_string(), format!("{h}'s long passphrase")))
            .collect();
        let shares = split(&root, &Authority::default(), &org, 2, &holders).unwrap();
        assert_eq!(shares.len(), 3);
        let with = |i: usize| (shares[i].clone(), holders[i].1.clone());
        for (a, b) in [(0, 1), (0, 2), (1, 2)] {
            let (restored, _) = combine(&[with(a), with(b)], &org).unwrap();
            assert_eq!(restored.public_key(), root.public_key());
        }
        assert!(matches!(
            combine(&[with(1)], &org),
            Err(RootBackupError::Shares(why)) if why.contains("2 are needed")
        ));
        assert!(matches!(
            combine(&[with(0), with(0)], &org),
            Err(RootBackupError::Shares(_))
        ));
        assert!(matches!(
            combine(&[with(0), (shares[1].clone(), holders[0].1.clone())], &org),
            Err(RootBackupError::Shares(why)) if why.contains("share 2")
        ));
        assert_eq!(
            open(&shares[0], &org, &holders[0].1).unwrap_err(),
            RootBackupError::IsAShare
        );
        // A share relabelled with another index is refused by its seal.
        let mut moved = shares[2].clone();
        moved.share.as_mut().unwrap().index = 3 - 1;
        assert!(combine(&[with(0), (moved, holders[2].1.clone())], &org).is_err());
        // Shares of two different splits never mix.
        let other = split(&root, &Authority::default(), &org, 2, &holders).unwrap();
        assert!(matches!(
            combine(&[with(0), (other[1].clone(), holders[1].1.clone())], &org),
            Err(RootBackupError::Shares(why)) if why.contains("different splits")
        ));
    }

    #[test]
    fn what_the_root_holder_knew_travels_sealed_with_the_key() {
        let root = OrgRootKey::generate();
        let org = org_of(&root);
        let authority = Authority {
            records: vec![AuthorityRecord {
                user: "mallory".into(),
                profile: "{}".into(),
                roles: "[\"Member\"]".into(),
                updated_at: 7,
            }],
            revoked: vec![("dev-1".into(), "eve".into())],
            revocation_serials: vec![1, 2],
            used_codes: vec![("ab".into(), "dev-2".into())],
            policy: None,
            vouched: vec![("dev-1".into(), "cd".into())],
        };
        let backup = seal(&root, &authority, &org, PASSPHRASE).unwrap();
        assert!(
            !backup.sealed.is_empty()
                && !serde_json::to_string(&backup).unwrap().contains("mallory")
        );
        assert_eq!(open(&backup, &org, PASSPHRASE).unwrap().1, authority);
        let holders: Vec<(String, String)> = ["carol", "dave"]
            .iter()
            .map(|h| (h.to_string(), format!("{h}'s long passphrase")))
            .collect();
        let shares = split(&root, &authority, &org, 2, &holders).unwrap();
        let given: Vec<(RootBackup, String)> = shares
            .into_iter()
            .zip(holders)
            .map(|(s, (_, p))| (s, p))
            .collect();
        assert_eq!(combine(&given, &org).unwrap().1, authority);
    }
}
