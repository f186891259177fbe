//! Several relays on one PostgreSQL database: opening a relay there with the shared TLS
//! identity, and acting on what the other relays announce.

use crate::server::{Connected, ServeError};
use muster_net::RelayIdentity;
use muster_relay_core::{AnnouncementKey, Announcements, Relay};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a relay keeps its state.
#[derive(Debug, Clone)]
pub struct Place {
    /// The data directory: TLS identity, listen address, and (on SQLite) the database.
    pub data: PathBuf,
    /// A PostgreSQL URL shared with other relays, instead of the SQLite file.
    pub database: Option<String>,
    /// Where encrypted attachments are kept; every relay of a shared database must reach
    /// the same directory (a shared mount). Defaults to `DATA/blobs`.
    pub blobs: Option<PathBuf>,
}

impl Place {
    pub fn of(data: PathBuf, database: Option<String>) -> Self {
        Self {
            data,
            database,
            blobs: None,
        }
    }
}

/// `muster-relay migrate`: the relay in `from` (stopped) into the database at `url`.
pub fn migrate(from: &Path, url: &str, blobs: Option<PathBuf>) -> Result<(), ServeError> {
    let database = from.join(crate::server::DB_FILE);
    if !database.exists() {
        return Err(ServeError::NoData(from.display().to_string()));
    }
    let identity = RelayIdentity::load_or_create(from)?;
    let blob_dir = blobs.clone().unwrap_or_else(|| from.join("blobs"));
    let migrated = muster_relay_core::migrate::sqlite_to_postgres(
        &database,
        url,
        blob_dir.clone(),
        &identity.cert_der,
        identity.key_der(),
    )?;
    for (table, rows) in &migrated.tables {
        println!("{table}: {rows} rows");
    }
    let mut files = 0;
    if blob_dir != from.join("blobs") && from.join("blobs").is_dir() {
        std::fs::create_dir_all(&blob_dir)?;
        for entry in std::fs::read_dir(from.join("blobs"))? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                std::fs::copy(entry.path(), blob_dir.join(entry.file_name()))?;
                files += 1;
            }
        }
    }
    println!("attachment files copied: {files}");
    println!("certificate fingerprint: {}", identity.fingerprint());
    println!(
        "done: start each relay with `muster-relay serve --data DIR --database {}`",
        redact(url)
    );
    Ok(())
}

/// A database URL without its password, for printing.
pub fn redact(url: &str) -> String {
    let url = match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    };
    // `password=...` as a key=value setting or a URL parameter.
    let mut out = String::with_capacity(url.len());
    let mut rest = url.as_str();
    while let Some(found) = rest.to_ascii_lowercase().find("password") {
        let after = &rest[found + "password".len()..];
        let Some(value) = after.trim_start().strip_prefix('=') else {
            out.push_str(&rest[..found + "password".len()]);
            rest = after;
            continue;
        };
        let value = value.trim_start();
        let end = if let Some(quoted) = value.strip_prefix('\'') {
            // Up to the closing quote; `\'` and `\\` inside are escapes.
            let mut escaped = false;
            quoted
                .char_indices()
                .find(|&(_, c)| {
                    let closes = c == '\'' && !escaped;
                    escaped = c == '\\' && !escaped;
                    closes
                })
                .map_or(value.len(), |(i, _)| i + 2)
        } else {
            value.find([' ', '&']).unwrap_or(value.len())
        };
        out.push_str(&rest[..found]);
        out.push_str("password=***");
        rest = &value[end..];
    }
    out.push_str(rest);
    out
}

/// Opens the relay on the shared database at `url`: its tables are created by the first
/// relay, and so is the TLS identity every relay presents (kept in the database and
/// written into `data`, so `health` and clients pin one fingerprint).
pub fn open_shared(
    data: &Path,
    url: &str,
    blobs: Option<PathBuf>,
) -> Result<(Relay, RelayIdentity), ServeError> {
    std::fs::create_dir_all(data)?;
    let local = RelayIdentity::load_or_create(data)?;
    let blob_dir = blobs.unwrap_or_else(|| data.join("blobs"));
    let mut relay = Relay::open_postgres(url, String::new(), blob_dir)?;
    let (cert, key) = relay.shared_identity(&local.cert_der, local.key_der())?;
    let identity = RelayIdentity::from_parts(cert, key);
    if identity.cert_der != local.cert_der {
        identity.save(data)?;
    }
    relay.set_fingerprint(identity.fingerprint());
    relay.set_announcement_key(AnnouncementKey::from_relay_key(identity.key_der()));
    Ok((relay, identity))
}

/// Listens, on a thread of its own, for what the other relays of the database at `url`
/// announce, and wakes or tells the devices connected here; devices another relay says
/// it revoked are cut off once the database confirms it. A lost database connection is
/// listened again after a second (the worker's own check every second cuts off what an
/// announcement lost meanwhile would have).
pub fn follow_others(
    url: String,
    origin: String,
    key: AnnouncementKey,
    connected: Arc<Connected>,
    runtime: tokio::runtime::Handle,
) {
    let run = move || loop {
        match Announcements::listen(&url, &origin, key.clone()) {
            Ok(mut announcements) => loop {
                let announcement = match announcements.wait(std::time::Duration::from_secs(60)) {
                    Ok(Some(announcement)) => announcement,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "lost the other relays' announcements; listening again");
                        break;
                    }
                };
                let _inside = runtime.enter();
                if !announcement.disconnect.is_empty() {
                    match announcements.revoked_among(&announcement.disconnect) {
                        Ok(revoked) => connected.disconnect(revoked.iter()),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot check the revocations; listening again");
                            break;
                        }
                    }
                }
                connected.changed(announcement.changed.iter());
                connected.wake(announcement.wake.iter(), &HashSet::new());
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for the other relays' announcements")
            }
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    };
    std::thread::Builder::new()
        .name("relay-announcements".into())
        .spawn(run)
        .expect("start the announcements thread");
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_never_reach_the_log_in_any_form_of_url() {
        for (url, shown) in [
            (
                "postgres://muster:s3cret@db/muster",
                "postgres://muster:***@db/muster",
            ),
            (
                "postgres://muster@db/muster?password=s3cret&sslmode=require",
                "postgres://muster@db/muster?password=***&sslmode=require",
            ),
            (
                "host=db user=muster password=s3cret dbname=muster",
                "host=db user=muster password=*** dbname=muster",
            ),
            (
                "host=db password = 'two words' user=muster",
                "host=db password=*** user=muster",
            ),
            (
                r"host=db password='s3cret\' two words\\' user=muster",
                "host=db password=*** user=muster",
            ),
            ("postgres://muster@db/muster", "postgres://muster@db/muster"),
        ] {
            assert_eq!(redact(url), shown);
            assert!(!redact(url).contains("s3cret") && !redact(url).contains("two words"));
        }
    }
}
