//! A storage provider for openmls that can hold a group's message secrets in memory while
//! a device processes a batch of messages.
//!
//! openmls rewrites a group's message secrets (its secret tree) after every message it
//! decrypts: one encoding and one SQL statement, prepared anew, per message. Processing
//! a fetched batch inside one transaction, a device only needs the last of them, so
//! [`BatchedSecrets`] keeps each group's newest encoding and [`BatchedSecrets::flush`]
//! writes it once, in the same transaction, before it commits. Everything else goes
//! straight to [`SqliteStorageProvider`].

use crate::{StoreCodec, StoreCodecError};
use openmls_sqlite_storage::{Codec, SqliteStorageProvider};
use openmls_traits::storage::{traits, StorageProvider, CURRENT_VERSION};
use rusqlite::Connection;
use std::cell::RefCell;
use std::collections::HashMap;

/// Message secrets written during a batch and not yet stored, by the group's key as the
/// SQLite provider encodes it. Flush them into the batch's transaction before it commits;
/// dropped unflushed (the batch failed), they vanish with the transaction they belong to.
#[derive(Default)]
pub struct BatchedSecrets {
    newest: RefCell<HashMap<Vec<u8>, Vec<u8>>>,
}

impl BatchedSecrets {
    /// Writes every group's newest message secrets through `connection` (the batch's
    /// transaction) and forgets them.
    pub fn flush(&self, connection: &Connection) -> rusqlite::Result<()> {
        let newest = std::mem::take(&mut *self.newest.borrow_mut());
        if newest.is_empty() {
            return Ok(());
        }
        // The row openmls_sqlite_storage 0.3 writes for a group's message secrets.
        let mut write = connection.prepare_cached(
            "INSERT OR REPLACE INTO openmls_group_data (group_id, data_type, group_data, provider_version)
             VALUES (?1, 'message_secrets', ?2, ?3)",
        )?;
        for (group_key, secrets) in newest {
            write.execute(rusqlite::params![group_key, secrets, CURRENT_VERSION])?;
        }
        Ok(())
    }
}

fn conversion(e: StoreCodecError) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(Box::new(e))
}

fn group_key<GroupId: traits::GroupId<CURRENT_VERSION>>(
    group_id: &GroupId,
) -> rusqlite::Result<Vec<u8>> {
    StoreCodec::to_vec(group_id).map_err(conversion)
}

/// openmls's storage on a device's SQLite connection (or open transaction), with message
/// secrets held in a [`BatchedSecrets`] when one is given.
pub struct Storage<'a> {
    sqlite: SqliteStorageProvider<StoreCodec, &'a Connection>,
    batched: Option<&'a BatchedSecrets>,
}

impl<'a> Storage<'a> {
    /// Reads and writes everything through `connection`.
    pub fn new(connection: &'a Connection) -> Self {
        Self {
            sqlite: SqliteStorageProvider::new(connection),
            batched: None,
        }
    }

    /// Like [`Storage::new`], with message secrets held in `batched` until it is flushed.
    pub fn batched(connection: &'a Connection, batched: &'a BatchedSecrets) -> Self {
        Self {
            sqlite: SqliteStorageProvider::new(connection),
            batched: Some(batched),
        }
    }
}

impl StorageProvider<CURRENT_VERSION> for Storage<'_> {
    type Error = rusqlite::Error;

    fn write_message_secrets<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        MessageSecrets: traits::MessageSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        message_secrets: &MessageSecrets,
    ) -> Result<(), rusqlite::Error> {
        let Some(batched) = self.batched else {
            return self.sqlite.write_message_secrets(group_id, message_secrets);
        };
        // Never a lookup key, so always the compact encoding (which the codec reads back).
        let encoded = crate::compact(message_secrets).map_err(conversion)?;
        batched
            .newest
            .borrow_mut()
            .insert(group_key(group_id)?, encoded);
        Ok(())
    }

    fn message_secrets<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        MessageSecrets: traits::MessageSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<MessageSecrets>, rusqlite::Error> {
        if let Some(batched) = self.batched {
            if let Some(encoded) = batched.newest.borrow().get(&group_key(group_id)?) {
                return StoreCodec::from_slice(encoded).map(Some).map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(
                        0,
                        rusqlite::types::Type::Blob,
                        Box::new(e),
                    )
                });
            }
        }
        self.sqlite.message_secrets(group_id)
    }

    fn delete_message_secrets<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), rusqlite::Error> {
        if let Some(batched) = self.batched {
            batched.newest.borrow_mut().remove(&group_key(group_id)?);
        }
        self.sqlite.delete_message_secrets(group_id)
    }

    fn write_mls_join_config<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        MlsGroupJoinConfig: traits::MlsGroupJoinConfig<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        config: &MlsGroupJoinConfig,
    ) -> Result<(), rusqlite::Error> {
        self.sqlite.write_mls_join_config(group_id, config)
    }

    fn append_own_leaf_node<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        LeafNode: traits::LeafNode<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        leaf_node: &LeafNode,
    ) -> Result<(), rusqlite::Error> {
        self.sqlite.append_own_leaf_node(group_id, leaf_node)
    }

    fn queue_proposal<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
        QueuedProposal: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        proposal_ref: &ProposalRef,
        proposal: &QueuedProposal,
    ) -> Result<(), rusqlite::Error> {
        self.sqlite.queue_proposal(group_id, proposal_ref, proposal)
    }

    fn write_tree<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        TreeSync: traits::TreeSync<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        tree: &TreeSync,
    ) -> Result<(), rusqlite::Error> {
        self.sqlite.write_tree(group_id, tree)
    }

    fn write_interim_transcript_hash<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        InterimTranscriptHash: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        interim_transcript_hash: &InterimTranscriptHash,
    ) -> Result<(), rusqlite::Error> {
        self.sqlite
            .write_interim_transcript_hash(group_id, interim_transcript_hash)
    }

    fn write_context<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        GroupContext: traits::GroupContext<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        group_context: &GroupContext,
    ) -> Result<(), rusqlite::Error> {
        self.sqlite.write_context(group_id, group_context)
    }

    fn write_confirmation_tag<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ConfirmationTag: traits::ConfirmationTag<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        confirmation_tag: &ConfirmationTag,
    ) -> Result<(), rusqlite::Error> {
        self.sqlite
            .write_confirmation_tag(group_id, confirmation_tag)
    }

    fn write_group_state<
        GroupState: traits::GroupState<CURRENT_VERSION>,
        GroupId: traits::GroupId<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        group_state: &GroupState,
    ) -> Result<(), rusqlite::Error> {
        self.sqlite.write_group_state(group_id, group_state)
    }

    fn write_resumption_psk_store<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ResumptionPskStore: traits::ResumptionPskStore<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        resumption_psk_store: &ResumptionPskStore,
    ) -> Result<(), rusqlite::Error> {
        self.sqlite
            .write_resumption_psk_store(group_id, resumption_psk_store)
    }

    fn write_own_leaf_index<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        LeafNodeIndex: traits::LeafNodeIndex<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        own_leaf_index: &LeafNodeIndex,
    ) -> Result<(), rusqlite::Error> {
        self.sqlite.write_own_leaf_index(group_id, own_leaf_index)
    }

    fn write_group_epoch_secrets<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        GroupEpochSecrets: traits::GroupEpochSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        group_epoch_secrets: &GroupEpochSecrets,
    ) -> Result<(), rusqlite::Error> {
        self.sqlite
            .write_group_epoch_secrets(group_id, group_epoch_secrets)
    }

    fn write_signature_key_pair<
        SignaturePublicKey: traits::SignaturePublicKey<CURRENT_VERSION>,
        SignatureKeyPair: traits::SignatureKeyPair<CURRENT_VERSION>,
    >(
        &self,
        public_key: &SignaturePublicKey,
        signature_key_pair: &SignatureKeyPair,
    ) -> Result<(), rusqlite::Error> {
        self.sqlite
            .write_signature_key_pair(public_key, signature_key_pair)
    }

    fn write_encryption_key_pair<
        EncryptionKey: traits::EncryptionKey<CURRENT_VERSION>,
        HpkeKeyPair: traits::HpkeKeyPair<CURRENT_VERSION>,
    >(
        &self,
        public_key: &EncryptionKey,
        key_pair: &HpkeKeyPair,
    ) -> Result<(), rusqlite::Error> {
        self.sqlite.write_encryption_key_pair(public_key, key_pair)
    }

    fn write_encryption_epoch_key_pairs<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        EpochKey: traits::EpochKey<CURRENT_VERSION>,
        HpkeKeyPair: traits::HpkeKeyPair<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        epoch: &EpochKey,
        leaf_index: u32,
        key_pairs: &[HpkeKeyPair],
    ) -> Result<(), rusqlite::Error> {
        self.sqlite
            .write_encryption_epoch_key_pairs(group_id, epoch, leaf_index, key_pairs)
    }

    fn write_key_package<
        HashReference: traits::HashReference<CURRENT_VERSION>,
        KeyPackage: traits::KeyPackage<CURRENT_VERSION>,
    >(
        &self,
        hash_ref: &HashReference,
        key_package: &KeyPackage,
    ) -> Result<(), rusqlite::Error> {
        self.sqlite.write_key_package(hash_ref, key_package)
    }

    fn write_psk<
        PskId: traits::PskId<CURRENT_VERSION>,
        PskBundle: traits::PskBundle<CURRENT_VERSION>,
    >(
        &self,
        psk_id: &PskId,
        psk: &PskBundle,
    ) -> Result<(), rusqlite::Error> {
        self.sqlite.write_psk(psk_id, psk)
    }

    fn mls_group_join_config<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        MlsGroupJoinConfig: traits::MlsGroupJoinConfig<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<MlsGroupJoinConfig>, rusqlite::Error> {
        self.sqlite.mls_group_join_config(group_id)
    }

    fn own_leaf_nodes<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        LeafNode: traits::LeafNode<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Vec<LeafNode>, rusqlite::Error> {
        self.sqlite.own_leaf_nodes(group_id)
    }

    fn queued_proposal_refs<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Vec<ProposalRef>, rusqlite::Error> {
        self.sqlite.queued_proposal_refs(group_id)
    }

    fn queued_proposals<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
        QueuedProposal: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Vec<(ProposalRef, QueuedProposal)>, rusqlite::Error> {
        self.sqlite.queued_proposals(group_id)
    }

    fn tree<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        TreeSync: traits::TreeSync<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<TreeSync>, rusqlite::Error> {
        self.sqlite.tree(group_id)
    }

    fn group_context<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        GroupContext: traits::GroupContext<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<GroupContext>, rusqlite::Error> {
        self.sqlite.group_context(group_id)
    }

    fn interim_transcript_hash<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        InterimTranscriptHash: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<InterimTranscriptHash>, rusqlite::Error> {
        self.sqlite.interim_transcript_hash(group_id)
    }

    fn confirmation_tag<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ConfirmationTag: traits::ConfirmationTag<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<ConfirmationTag>, rusqlite::Error> {
        self.sqlite.confirmation_tag(group_id)
    }

    fn group_state<
        GroupState: traits::GroupState<CURRENT_VERSION>,
        GroupId: traits::GroupId<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<GroupState>, rusqlite::Error> {
        self.sqlite.group_state(group_id)
    }

    fn resumption_psk_store<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ResumptionPskStore: traits::ResumptionPskStore<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<ResumptionPskStore>, rusqlite::Error> {
        self.sqlite.resumption_psk_store(group_id)
    }

    fn own_leaf_index<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        LeafNodeIndex: traits::LeafNodeIndex<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<LeafNodeIndex>, rusqlite::Error> {
        self.sqlite.own_leaf_index(group_id)
    }

    fn group_epoch_secrets<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        GroupEpochSecrets: traits::GroupEpochSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<GroupEpochSecrets>, rusqlite::Error> {
        self.sqlite.group_epoch_secrets(group_id)
    }

    fn signature_key_pair<
        SignaturePublicKey: traits::SignaturePublicKey<CURRENT_VERSION>,
        SignatureKeyPair: traits::SignatureKeyPair<CURRENT_VERSION>,
    >(
        &self,
        public_key: &SignaturePublicKey,
    ) -> Result<Option<SignatureKeyPair>, rusqlite::Error> {
        self.sqlite.signature_key_pair(public_key)
    }

    fn encryption_key_pair<
        HpkeKeyPair: traits::HpkeKeyPair<CURRENT_VERSION>,
        EncryptionKey: traits::EncryptionKey<CURRENT_VERSION>,
    >(
        &self,
        public_key: &EncryptionKey,
    ) -> Result<Option<HpkeKeyPair>, rusqlite::Error> {
        self.sqlite.encryption_key_pair(public_key)
    }

    fn encryption_epoch_key_pairs<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        EpochKey: traits::EpochKey<CURRENT_VERSION>,
        HpkeKeyPair: traits::HpkeKeyPair<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        epoch: &EpochKey,
        leaf_index: u32,
    ) -> Result<Vec<HpkeKeyPair>, rusqlite::Error> {
        self.sqlite
            .encryption_epoch_key_pairs(group_id, epoch, leaf_index)
    }

    fn key_package<
        KeyPackageRef: traits::HashReference<CURRENT_VERSION>,
        KeyPackage: traits::KeyPackage<CURRENT_VERSION>,
    >(
        &self,
        hash_ref: &KeyPackageRef,
    ) -> Result<Option<KeyPackage>, rusqlite::Error> {
        self.sqlite.key_package(hash_ref)
    }

    fn psk<PskBundle: traits::PskBundle<CURRENT_VERSION>, PskId: traits::PskId<CURRENT_VERSION>>(
        &self,
        psk_id: &PskId,
    ) -> Result<Option<PskBundle>, rusqlite::Error> {
        self.sqlite.psk(psk_id)
    }

    fn remove_proposal<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        proposal_ref: &ProposalRef,
    ) -> Result<(), rusqlite::Error> {
        self.sqlite.remove_proposal(group_id, proposal_ref)
    }

    fn delete_own_leaf_nodes<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), rusqlite::Error> {
        self.sqlite.delete_own_leaf_nodes(group_id)
    }

    fn delete_group_config<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), rusqlite::Error> {
        self.sqlite.delete_group_config(group_id)
    }

    fn delete_tree<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), rusqlite::Error> {
        self.sqlite.delete_tree(group_id)
    }

    fn delete_confirmation_tag<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), rusqlite::Error> {
        self.sqlite.delete_confirmation_tag(group_id)
    }

    fn delete_group_state<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), rusqlite::Error> {
        self.sqlite.delete_group_state(group_id)
    }

    fn delete_context<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), rusqlite::Error> {
        self.sqlite.delete_context(group_id)
    }

    fn delete_interim_transcript_hash<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), rusqlite::Error> {
        self.sqlite.delete_interim_transcript_hash(group_id)
    }

    fn delete_all_resumption_psk_secrets<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), rusqlite::Error> {
        self.sqlite.delete_all_resumption_psk_secrets(group_id)
    }

    fn delete_own_leaf_index<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), rusqlite::Error> {
        self.sqlite.delete_own_leaf_index(group_id)
    }

    fn delete_group_epoch_secrets<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), rusqlite::Error> {
        self.sqlite.delete_group_epoch_secrets(group_id)
    }

    fn clear_proposal_queue<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<(), rusqlite::Error> {
        self.sqlite
            .clear_proposal_queue::<GroupId, ProposalRef>(group_id)
    }

    fn delete_signature_key_pair<
        SignaturePublicKey: traits::SignaturePublicKey<CURRENT_VERSION>,
    >(
        &self,
        public_key: &SignaturePublicKey,
    ) -> Result<(), rusqlite::Error> {
        self.sqlite.delete_signature_key_pair(public_key)
    }

    fn delete_encryption_key_pair<EncryptionKey: traits::EncryptionKey<CURRENT_VERSION>>(
        &self,
        public_key: &EncryptionKey,
    ) -> Result<(), rusqlite::Error> {
        self.sqlite.delete_encryption_key_pair(public_key)
    }

    fn delete_encryption_epoch_key_pairs<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        EpochKey: traits::EpochKey<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        epoch: &EpochKey,
        leaf_index: u32,
    ) -> Result<(), rusqlite::Error> {
        self.sqlite
            .delete_encryption_epoch_key_pairs(group_id, epoch, leaf_index)
    }

    fn delete_key_package<KeyPackageRef: traits::HashReference<CURRENT_VERSION>>(
        &self,
        hash_ref: &KeyPackageRef,
    ) -> Result<(), rusqlite::Error> {
        self.sqlite.delete_key_package(hash_ref)
    }

    fn delete_psk<PskKey: traits::PskId<CURRENT_VERSION>>(
        &self,
        psk_id: &PskKey,
    ) -> Result<(), rusqlite::Error> {
        self.sqlite.delete_psk(psk_id)
    }
}
