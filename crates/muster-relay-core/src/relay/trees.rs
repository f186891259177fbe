//! What lets a group grow past the size of one MLS message: each added device's Welcome
//! cut down to its own secrets, and the group's ratchet tree kept for the epochs a Welcome
//! or a tree-less GroupInfo leads to, served in chunks. The relay cannot make a joiner
//! accept a tree of its own: the joiner checks it against the tree hash in the GroupInfo
//! its adder signed.

use super::*;
use muster_proto::RATCHET_TREE_CHUNK;
use std::collections::HashMap;
use tls_codec::Serialize as _;

/// The Welcome each added device gets: only its own encrypted secrets, found by the
/// reference of the KeyPackage that added it. A Welcome for many new members is
/// otherwise stored once per member with everyone's secrets.
pub(super) struct WelcomeCutter<'a> {
    bytes: &'a [u8],
    /// Bytes before the list of secrets: the MLS message header and the ciphersuite.
    head: usize,
    /// Where the encrypted GroupInfo starts.
    tail: usize,
    secrets: Vec<EncryptedGroupSecrets>,
    /// The device each KeyPackage reference in the commit's Adds belongs to.
    devices: HashMap<String, KeyPackageRef>,
}

/// The MLS message header (version, wire format) and the Welcome's ciphersuite.
const WELCOME_HEAD: usize = 6;

impl<'a> WelcomeCutter<'a> {
    /// `bytes` must be a Welcome that already decoded; `adds` are the commit's Adds.
    pub(super) fn new(
        crypto: &RustCrypto,
        bytes: &'a [u8],
        adds: impl Iterator<Item = KeyPackage>,
    ) -> Option<Self> {
        let MlsMessageBodyIn::Welcome(welcome) =
            MlsMessageIn::tls_deserialize_exact(bytes).ok()?.extract()
        else {
            return None;
        };
        let secrets = welcome.secrets().to_vec();
        let tail = WELCOME_HEAD + secrets.tls_serialized_len();
        if tail > bytes.len() {
            return None;
        }
        let mut devices = HashMap::new();
        for key_package in adds {
            let Some(cert) = certificate_of(key_package.leaf_node().credential()) else {
                continue;
            };
            if let Ok(reference) = key_package.hash_ref(crypto) {
                devices.insert(cert.body.device_id, reference);
            }
        }
        Some(Self {
            bytes,
            head: WELCOME_HEAD,
            tail,
            secrets,
            devices,
        })
    }

    /// The Welcome for `device`: its own secrets and the encrypted GroupInfo, or the whole
    /// Welcome when it cannot be cut (it then still works).
    pub(super) fn for_device(&self, device: &str) -> Vec<u8> {
        self.cut(device).unwrap_or_else(|| self.bytes.to_vec())
    }

    fn cut(&self, device: &str) -> Option<Vec<u8>> {
        let reference = self.devices.get(device)?;
        let own: Vec<EncryptedGroupSecrets> = self
            .secrets
            .iter()
            .filter(|s| &s.new_member() == reference)
            .cloned()
            .collect();
        if own.len() != 1 || self.secrets.len() == 1 {
            return None;
        }
        let mut out = self.bytes[..self.head].to_vec();
        out.extend(own.tls_serialize_detached().ok()?);
        out.extend_from_slice(&self.bytes[self.tail..]);
        // Only what still decodes as a Welcome with just these secrets is handed out.
        match MlsMessageIn::tls_deserialize_exact(&out).ok()?.extract() {
            MlsMessageBodyIn::Welcome(w) if w.secrets().len() == 1 => Some(out),
            _ => None,
        }
    }
}

impl Relay {
    /// Keeps the group's ratchet tree of its current epoch, for the Welcomes of the
    /// commit just merged or for a GroupInfo that leaves the tree out.
    pub(super) fn keep_tree(
        tx: &Transaction,
        group_id: &[u8],
        group: &PublicGroup,
    ) -> Result<(), Failure> {
        let tree = group
            .export_ratchet_tree()
            .tls_serialize_detached()
            .map_err(|e| Failure::Store(StoreError::Corrupt(format!("ratchet tree: {e}"))))?;
        exec(
            tx,
            "INSERT INTO group_trees (group_id, epoch, data) VALUES (?1, ?2, ?3)
             ON CONFLICT (group_id, epoch) DO UPDATE SET data = excluded.data",
            params![
                group_id,
                group.group_context().epoch().as_u64() as i64,
                tree
            ],
        )?;
        Ok(())
    }

    /// Drops the trees that no Welcome waits on, except each group's current one: of
    /// `group` alone, or of every group (`None`) once Welcomes expired or were dropped.
    pub(super) fn prune_trees(tx: &Db, group: Option<&[u8]>) -> Result<(), DbError> {
        tx.execute(
            "DELETE FROM group_trees
             WHERE (group_id = ?1 OR ?1 IS NULL)
               AND epoch < COALESCE((SELECT epoch FROM groups g WHERE g.group_id = group_trees.group_id), epoch + 1)
               AND NOT EXISTS (SELECT 1 FROM welcomes w
                               WHERE w.group_id = group_trees.group_id AND w.epoch = group_trees.epoch)",
            params![group],
        )?;
        Ok(())
    }

    /// Part of a group's ratchet tree at `epoch`: for a device holding a Welcome to that
    /// epoch, or for the current epoch to a member or someone waiting to join.
    pub(super) fn ratchet_tree(
        &self,
        session: &Session,
        group_id: &[u8],
        epoch: u64,
        offset: u64,
    ) -> Result<Outcome, Failure> {
        let epoch = i64::try_from(epoch)
            .map_err(|_| refuse(ErrorCode::BadRequest, "epoch out of range"))?;
        let welcomed = row(
            &self.db,
            "SELECT 1 FROM welcomes WHERE device_id = ?1 AND group_id = ?2 AND epoch = ?3",
            params![session.device_id, group_id, epoch],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
        if !welcomed {
            let current: Option<i64> = row(
                &self.db,
                "SELECT epoch FROM groups WHERE group_id = ?1",
                [group_id],
                |r| r.get(0),
            )
            .optional()?;
            if current != Some(epoch) {
                return Err(refuse(
                    ErrorCode::Forbidden,
                    "only the group's current tree, or the tree of a Welcome this device holds, is served",
                ));
            }
            self.require_member_or_waiting(session, group_id)?;
        }
        let offset = i64::try_from(offset)
            .map_err(|_| refuse(ErrorCode::BadRequest, "offset out of range"))?;
        let total: Option<i64> = row(
            &self.db,
            "SELECT length(data) FROM group_trees WHERE group_id = ?1 AND epoch = ?2",
            params![group_id, epoch],
            |r| r.get(0),
        )
        .optional()?;
        let total = total.ok_or_else(|| {
            refuse(
                ErrorCode::UnknownGroup,
                format!("no ratchet tree of this group at epoch {epoch} is on the relay"),
            )
        })?;
        if offset > total {
            return Err(refuse(ErrorCode::BadRequest, "offset past the tree's end"));
        }
        let length = (total - offset).min(RATCHET_TREE_CHUNK as i64);
        let chunk = self.tree_chunk(group_id, epoch, offset, length)?;
        Ok(Outcome::reply(Response::RatchetTree {
            total: total as u64,
            chunk,
        }))
    }
}

impl Relay {
    /// `length` bytes of a kept tree from `offset`: on SQLite only those bytes are read;
    /// on PostgreSQL the server cuts them out (it reads the stored value to do so).
    fn tree_chunk(
        &self,
        group_id: &[u8],
        epoch: i64,
        offset: i64,
        length: i64,
    ) -> Result<Vec<u8>, Failure> {
        let incremental = self
            .db
            .with_sqlite(|connection| -> Result<Vec<u8>, Failure> {
                let row_id: i64 = connection.query_row(
                    "SELECT rowid FROM group_trees WHERE group_id = ?1 AND epoch = ?2",
                    rusqlite::params![group_id, epoch],
                    |r| r.get(0),
                )?;
                let mut chunk = vec![0; length as usize];
                connection
                    .blob_open(rusqlite::MAIN_DB, "group_trees", "data", row_id, true)?
                    .read_at_exact(&mut chunk, offset as usize)
                    .map_err(|e| Failure::Store(StoreError::Corrupt(format!("kept tree: {e}"))))?;
                Ok(chunk)
            });
        match incremental {
            Some(chunk) => chunk,
            None => Ok(row(
                &self.db,
                "SELECT substr(data, ?3, ?4) FROM group_trees WHERE group_id = ?1 AND epoch = ?2",
                params![group_id, epoch, offset + 1, length],
                |r| r.get(0),
            )?),
        }
    }
}

/// Whether a GroupInfo (already checked) carries the ratchet tree in an extension.
pub(super) fn group_info_has_tree(bytes: &[u8]) -> bool {
    match MlsMessageIn::tls_deserialize_exact(bytes).map(|m| m.extract()) {
        Ok(MlsMessageBodyIn::GroupInfo(info)) => info.extensions().ratchet_tree().is_some(),
        _ => false,
    }
}
