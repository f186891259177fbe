//! The openmls pieces the relay uses: a JSON codec for the SQLite storage provider and
//! helpers that read identity certificates out of MLS credentials.

use muster_proto::Certificate;
use openmls::prelude::*;

/// Serialises openmls state as JSON in the relay database.
#[derive(Default)]
pub(crate) struct JsonCodec;

impl openmls_sqlite_storage::Codec for JsonCodec {
    type Error = serde_json::Error;

    fn to_vec<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, Self::Error> {
        serde_json::to_vec(value)
    }

    fn from_slice<T: serde::de::DeserializeOwned>(slice: &[u8]) -> Result<T, Self::Error> {
        serde_json::from_slice(slice)
    }
}

pub(crate) type Storage<'a> =
    openmls_sqlite_storage::SqliteStorageProvider<JsonCodec, &'a rusqlite::Connection>;

/// The identity certificate carried in a basic credential, if it decodes.
pub(crate) fn certificate_of(credential: &Credential) -> Option<Certificate> {
    let basic = BasicCredential::try_from(credential.clone()).ok()?;
    Certificate::from_bytes(basic.identity()).ok()
}
