//! The relay's delivery service as plain types and functions, with no sockets: who may
//! enrol and post, per-group epoch ordering of commits, store-and-forward fan-out with
//! per-device cursors, and the KeyPackage directory. The server binary feeds it decoded
//! requests and sends back its answers and wake-ups.
//!
//! Handshake messages are tracked with openmls [`PublicGroup`](openmls::prelude::PublicGroup),
//! so the relay validates commits and knows whom to route to without seeing content.

mod admission;
mod blobs;
mod cluster;
mod connection;
pub mod db;
mod error;
mod limits;
pub mod migrate;
mod mls;
mod push;
mod relay;
mod schema;

pub use admission::{Admission, AnonymousLimits};
pub use blobs::BLOB_RETENTION_SECS;
pub use cluster::{Announcement, AnnouncementKey, Announcements, LISTENER_NAME};
pub use connection::{ConnectionState, Precheck};
pub use db::DbError;
pub use error::StoreError;
pub use limits::RateLimits;
pub use push::{PushRoute, Routed, StoredMessage, StreamChange};
pub use relay::{challenge_nonce, verify_challenge, Outcome, Relay, RelayStats, Session};

#[cfg(test)]
mod tests;
