//! The openmls pieces the relay uses: its storage of public group state over either
//! database, and helpers that read identity certificates out of MLS credentials.

use crate::db::{params, Db, DbError, OptionalExtension};
use muster_mls_store::StoreCodec;
use muster_proto::Certificate;
use openmls::prelude::*;
use openmls_sqlite_storage::Codec as _;
use openmls_traits::public_storage::PublicStorageProvider;
use openmls_traits::storage::{traits, Entity, Key, CURRENT_VERSION};

/// The relay's public group state, in the tables and encoding openmls' SQLite storage
/// provider uses (so databases written by earlier relays read on): compact binary for
/// large values such as a big group's tree, JSON written by earlier versions still reads.
pub(crate) struct Storage<'a> {
    db: &'a Db,
}

impl<'a> Storage<'a> {
    pub(crate) fn new(db: &'a Db) -> Self {
        Self { db }
    }

    fn key(key: &impl Key<CURRENT_VERSION>) -> Result<Vec<u8>, DbError> {
        encode(key)
    }

    fn write(
        &self,
        group_id: &impl Key<CURRENT_VERSION>,
        data_type: &str,
        value: &impl Entity<CURRENT_VERSION>,
    ) -> Result<(), DbError> {
        let data = encode(value)?;
        self.db.execute(
            "INSERT INTO openmls_group_data (group_id, data_type, group_data, provider_version)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (group_id, data_type) DO UPDATE
             SET group_data = excluded.group_data, provider_version = excluded.provider_version",
            params![Self::key(group_id)?, data_type, data, CURRENT_VERSION],
        )?;
        Ok(())
    }

    fn read<T: Entity<CURRENT_VERSION>>(
        &self,
        group_id: &impl Key<CURRENT_VERSION>,
        data_type: &str,
    ) -> Result<Option<T>, DbError> {
        let data: Option<Vec<u8>> = self
            .db
            .query_row(
                "SELECT group_data FROM openmls_group_data
                 WHERE group_id = ?1 AND data_type = ?2 AND provider_version = ?3",
                params![Self::key(group_id)?, data_type, CURRENT_VERSION],
                |r| r.get(0),
            )
            .optional()?;
        data.map(|d| decode(&d)).transpose()
    }

    fn delete(&self, group_id: &impl Key<CURRENT_VERSION>, data_type: &str) -> Result<(), DbError> {
        self.db.execute(
            "DELETE FROM openmls_group_data WHERE group_id = ?1 AND data_type = ?2",
            params![Self::key(group_id)?, data_type],
        )?;
        Ok(())
    }
}

impl PublicStorageProvider<CURRENT_VERSION> for Storage<'_> {
    type PublicError = DbError;

    fn write_tree<G: traits::GroupId<CURRENT_VERSION>, T: traits::TreeSync<CURRENT_VERSION>>(
        &self,
        group_id: &G,
        tree: &T,
    ) -> Result<(), DbError> {
        self.write(group_id, "tree", tree)
    }

    fn write_interim_transcript_hash<
        G: traits::GroupId<CURRENT_VERSION>,
        H: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
        hash: &H,
    ) -> Result<(), DbError> {
        self.write(group_id, "interim_transcript_hash", hash)
    }

    fn write_context<
        G: traits::GroupId<CURRENT_VERSION>,
        C: traits::GroupContext<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
        context: &C,
    ) -> Result<(), DbError> {
        self.write(group_id, "context", context)
    }

    fn write_confirmation_tag<
        G: traits::GroupId<CURRENT_VERSION>,
        T: traits::ConfirmationTag<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
        tag: &T,
    ) -> Result<(), DbError> {
        self.write(group_id, "confirmation_tag", tag)
    }

    fn queue_proposal<
        G: traits::GroupId<CURRENT_VERSION>,
        R: traits::ProposalRef<CURRENT_VERSION>,
        P: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
        proposal_ref: &R,
        proposal: &P,
    ) -> Result<(), DbError> {
        self.db.execute(
            "INSERT INTO openmls_proposals (group_id, proposal_ref, proposal, provider_version)
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
            params![
                Self::key(group_id)?,
                encode(proposal_ref)?,
                encode(proposal)?,
                CURRENT_VERSION
            ],
        )?;
        Ok(())
    }

    fn queued_proposals<
        G: traits::GroupId<CURRENT_VERSION>,
        R: traits::ProposalRef<CURRENT_VERSION>,
        P: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
    ) -> Result<Vec<(R, P)>, DbError> {
        self.db
            .query_map(
                "SELECT proposal_ref, proposal FROM openmls_proposals
                 WHERE group_id = ?1 AND provider_version = ?2",
                params![Self::key(group_id)?, CURRENT_VERSION],
                |r| {
                    Ok((
                        decode(&r.get::<_, Vec<u8>>(0)?)?,
                        decode(&r.get::<_, Vec<u8>>(1)?)?,
                    ))
                },
            )?
            .collect()
    }

    fn tree<G: traits::GroupId<CURRENT_VERSION>, T: traits::TreeSync<CURRENT_VERSION>>(
        &self,
        group_id: &G,
    ) -> Result<Option<T>, DbError> {
        self.read(group_id, "tree")
    }

    fn group_context<
        G: traits::GroupId<CURRENT_VERSION>,
        C: traits::GroupContext<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
    ) -> Result<Option<C>, DbError> {
        self.read(group_id, "context")
    }

    fn interim_transcript_hash<
        G: traits::GroupId<CURRENT_VERSION>,
        H: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
    ) -> Result<Option<H>, DbError> {
        self.read(group_id, "interim_transcript_hash")
    }

    fn confirmation_tag<
        G: traits::GroupId<CURRENT_VERSION>,
        T: traits::ConfirmationTag<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
    ) -> Result<Option<T>, DbError> {
        self.read(group_id, "confirmation_tag")
    }

    fn delete_tree<G: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &G,
    ) -> Result<(), DbError> {
        self.delete(group_id, "tree")
    }

    fn delete_confirmation_tag<G: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &G,
    ) -> Result<(), DbError> {
        self.delete(group_id, "confirmation_tag")
    }

    fn delete_context<G: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &G,
    ) -> Result<(), DbError> {
        self.delete(group_id, "context")
    }

    fn delete_interim_transcript_hash<G: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &G,
    ) -> Result<(), DbError> {
        self.delete(group_id, "interim_transcript_hash")
    }

    fn remove_proposal<
        G: traits::GroupId<CURRENT_VERSION>,
        R: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
        proposal_ref: &R,
    ) -> Result<(), DbError> {
        self.db.execute(
            "DELETE FROM openmls_proposals WHERE group_id = ?1 AND proposal_ref = ?2",
            params![Self::key(group_id)?, Self::key(proposal_ref)?],
        )?;
        Ok(())
    }

    fn clear_proposal_queue<
        G: traits::GroupId<CURRENT_VERSION>,
        R: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
    ) -> Result<(), DbError> {
        self.db.execute(
            "DELETE FROM openmls_proposals WHERE group_id = ?1",
            params![Self::key(group_id)?],
        )?;
        Ok(())
    }
}

fn encode(value: &impl serde::Serialize) -> Result<Vec<u8>, DbError> {
    StoreCodec::to_vec(value).map_err(|e| DbError::Codec(e.to_string()))
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, DbError> {
    StoreCodec::from_slice(bytes).map_err(|e| DbError::Codec(e.to_string()))
}

/// The identity certificate carried in a basic credential, if it decodes.
pub(crate) fn certificate_of(credential: &Credential) -> Option<Certificate> {
    let basic = BasicCredential::try_from(credential.clone()).ok()?;
    Certificate::from_bytes(basic.identity()).ok()
}
