//! The Muster client engine: one device's identity, its local SQLite store (openmls
//! state next to conversations, messages, outbox and sync cursors) and every operation
//! the command-line client offers. The CLI only parses arguments and prints.
//!
//! It does no network I/O: everything it asks the relay goes through a [`Link`] the
//! caller passes in (muster-driver provides one over QUIC). Inbound processing is plain
//! functions over a database transaction.

mod acks;
#[macro_use]
mod link;
mod admin;
pub mod archive;
mod archiving;
mod attachments;
mod content;
pub mod conversation;
mod crisis;
mod engine;
mod error;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod legal;
mod officers;
mod provider;
pub mod provision;
mod signatures;
mod store;
pub mod store_crypt;

pub use acks::HeldAcks;
pub use admin::root_backup::{RootBackup, RootBackupError};
pub use admin::{AccountKind, ProfileChangeView};
pub use archiving::ArchiveRead;
pub use attachments::{AttachmentError, AttachmentRef};
pub use content::{describe_duration, AnswerOption, Body, DutyKind, Envelope, TaskState};
pub use conversation::BoardEntry;
pub use engine::{
    leaf_capabilities, looks_like_bot_token, rfc3339_ms, wipe_store, CIPHERSUITE,
    MAX_IDEMPOTENCY_KEY, MAX_TEXT_BYTES,
};
pub use engine::{
    AlarmChange, AlertRequest, AnswerTally, AttachmentView, AuditView, BotPost, BotPostKind,
    BotPosted, BotRefusal, BotRollcall, BotScope, BotTokenView, DeviceView, DirectoryEntry, Engine,
    GroupState, GroupView, Identity, IncidentView, MessageView, NewOrg, Notification, OpenAlarm,
    PendingView, QueuedMessage, Rollcall, RollcallEntry, SyncReport, TaskView,
};
pub use error::EngineError;
pub use link::{Link, LinkError};
pub use muster_report as report;
