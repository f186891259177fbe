//! The openmls pieces the relay uses: its SQLite storage provider and helpers that read
//! identity certificates out of MLS credentials.

use muster_proto::Certificate;
use openmls::prelude::*;

/// The relay's public group state, stored as devices store theirs (compact binary for
/// large values such as a big group's tree; JSON written by earlier versions still reads).
pub(crate) type Storage<'a> = openmls_sqlite_storage::SqliteStorageProvider<
    muster_mls_store::StoreCodec,
    &'a rusqlite::Connection,
>;

/// The identity certificate carried in a basic credential, if it decodes.
pub(crate) fn certificate_of(credential: &Credential) -> Option<Certificate> {
    let basic = BasicCredential::try_from(credential.clone()).ok()?;
    Certificate::from_bytes(basic.identity()).ok()
}
