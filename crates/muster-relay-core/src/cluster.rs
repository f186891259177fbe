//! Several relays in front of one PostgreSQL database: one TLS identity for all of them,
//! and what one relay's requests did, told to the others through PostgreSQL's
//! LISTEN/NOTIFY (no other broker), so that a device connected anywhere is woken, told of
//! changes or cut off at once. Announcements are sealed with a key derived from the TLS
//! private key the relays share: a role that may LISTEN on the database learns nothing
//! of who is woken, and one that may NOTIFY cannot make one.

use crate::db::{params, DbError, OptionalExtension};
use crate::error::StoreError;
use crate::relay::Relay;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// The notification channel the relays of one database share.
const CHANNEL: &str = "muster_relay";
/// The application name of each relay's listening connection, followed by its schema.
pub const LISTENER_NAME: &str = "muster-relay announcements";
/// PostgreSQL refuses payloads of 8,000 bytes or more; announcements are split so that
/// each part, sealed and in hex, stays below it.
const MAX_PAYLOAD: usize = 3_400;
/// An announcement older than this is dropped; within it, one heard before is (a replay
/// by someone who listens and notifies). Relays' clocks must agree within it.
const MAX_AGE_MS: u64 = 300_000;

/// The key that seals announcements, derived from the TLS private key every relay of a
/// database shares: only the relays can read or make one.
#[derive(Clone)]
pub struct AnnouncementKey(std::sync::Arc<ring::aead::LessSafeKey>);

impl AnnouncementKey {
    pub fn from_relay_key(private_key_der: &[u8]) -> Self {
        let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"muster relay announcements v1");
        let prk = salt.extract(private_key_der);
        let okm = prk
            .expand(&[b"seal"], &ring::aead::AES_256_GCM)
            .expect("32 bytes fit HKDF-SHA256");
        Self(std::sync::Arc::new(ring::aead::LessSafeKey::new(
            ring::aead::UnboundKey::from(okm),
        )))
    }

    /// `plaintext` sealed under a fresh nonce, in hex.
    fn seal(&self, plaintext: &[u8]) -> String {
        use ring::rand::SecureRandom as _;
        let mut nonce = [0u8; ring::aead::NONCE_LEN];
        ring::rand::SystemRandom::new()
            .fill(&mut nonce)
            .expect("the system's random source works");
        let mut sealed = plaintext.to_vec();
        self.0
            .seal_in_place_append_tag(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::from(CHANNEL.as_bytes()),
                &mut sealed,
            )
            .expect("an announcement fits AES-GCM");
        let mut out = nonce.to_vec();
        out.extend(sealed);
        hex::encode(out)
    }

    /// What `payload` says and its nonce, if a holder of this key sealed it.
    fn open(&self, payload: &str) -> Option<(Vec<u8>, [u8; ring::aead::NONCE_LEN])> {
        let bytes = hex::decode(payload).ok()?;
        if bytes.len() < ring::aead::NONCE_LEN {
            return None;
        }
        let (nonce_bytes, sealed) = bytes.split_at(ring::aead::NONCE_LEN);
        let nonce_bytes: [u8; ring::aead::NONCE_LEN] = nonce_bytes.try_into().ok()?;
        let nonce = ring::aead::Nonce::assume_unique_for_key(nonce_bytes);
        let mut sealed = sealed.to_vec();
        let plain = self
            .0
            .open_in_place(
                nonce,
                ring::aead::Aad::from(CHANNEL.as_bytes()),
                &mut sealed,
            )
            .ok()?;
        Some((plain.to_vec(), nonce_bytes))
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What one relay's group commit did that devices connected to other relays must feel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// The relay that announced it (which ignores its own).
    pub origin: String,
    /// Devices with new deliveries waiting.
    pub wake: BTreeSet<String>,
    /// Devices that must run a whole sync (a revocation, a membership change).
    pub changed: BTreeSet<String>,
    /// Devices whose connections must be closed now (revoked).
    pub disconnect: BTreeSet<String>,
    /// When it was sent (Unix milliseconds): an old one is a replay.
    #[serde(default)]
    pub sent_at_ms: u64,
}

impl Announcement {
    pub fn is_empty(&self) -> bool {
        self.wake.is_empty() && self.changed.is_empty() && self.disconnect.is_empty()
    }

    /// The announcement as plaintexts that each fit one notification once sealed.
    fn payloads(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut part = Announcement {
            origin: self.origin.clone(),
            sent_at_ms: self.sent_at_ms,
            ..Default::default()
        };
        let mut size = 0;
        let kinds = [(0, &self.disconnect), (1, &self.changed), (2, &self.wake)];
        for (kind, devices) in kinds {
            for device in devices {
                if size + device.len() + 4 > MAX_PAYLOAD - self.origin.len() - 64 {
                    out.push(serde_json::to_string(&part).expect("announcement encodes"));
                    part = Announcement {
                        origin: self.origin.clone(),
                        sent_at_ms: self.sent_at_ms,
                        ..Default::default()
                    };
                    size = 0;
                }
                size += device.len() + 4;
                match kind {
                    0 => part.disconnect.insert(device.clone()),
                    1 => part.changed.insert(device.clone()),
                    _ => part.wake.insert(device.clone()),
                };
            }
        }
        if !part.is_empty() {
            out.push(serde_json::to_string(&part).expect("announcement encodes"));
        }
        out
    }
}

impl Relay {
    /// The TLS certificate and key every relay of a shared database presents: the one
    /// stored there, or `local` (this relay's own) when it is the first.
    pub fn shared_identity(
        &mut self,
        local_cert: &[u8],
        local_key: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
        if !self.is_postgres() {
            return Ok((local_cert.to_vec(), local_key.to_vec()));
        }
        let tx = self.db().transaction()?;
        let stored: Option<(Vec<u8>, Vec<u8>)> = tx
            .query_row(
                "SELECT certificate, private_key FROM relay_identity WHERE id = 1",
                (),
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let identity = match stored {
            Some(identity) => identity,
            None => {
                tx.execute(
                    "INSERT INTO relay_identity (id, certificate, private_key) VALUES (1, ?1, ?2)",
                    params![local_cert, local_key],
                )?;
                (local_cert.to_vec(), local_key.to_vec())
            }
        };
        tx.commit()?;
        Ok(identity)
    }

    /// Tells the other relays of a shared database what a group commit did (nothing to
    /// do on SQLite, where this relay is the only one). Call it only once the commit is
    /// durable: a device woken elsewhere must find what woke it.
    pub fn announce(&self, mut announcement: Announcement) -> Result<(), StoreError> {
        if !self.is_postgres() || announcement.is_empty() {
            return Ok(());
        }
        let Some(key) = self.announcement_key() else {
            return Err(StoreError::Corrupt(
                "no key to seal announcements to the other relays".into(),
            ));
        };
        announcement.origin = self.origin().to_string();
        announcement.sent_at_ms = now_ms();
        for payload in announcement.payloads() {
            let payload = key.seal(payload.as_bytes());
            // pg_notify returns void, which no row reader takes: run, not read.
            self.db()
                .execute("SELECT pg_notify(?1, ?2)", params![CHANNEL, payload])?;
        }
        Ok(())
    }
}

/// Announcements from the other relays of a shared database, on a connection of its own.
pub struct Announcements {
    client: postgres::Client,
    origin: String,
    key: AnnouncementKey,
    /// Nonces of the announcements taken, with when they were sent: each is taken once.
    heard: std::collections::HashMap<[u8; ring::aead::NONCE_LEN], u64>,
    /// When an announcement was last dropped for its age (warned about once a minute).
    warned_of_age: Option<Instant>,
}

impl Announcements {
    /// Listens on the database at `url`, skipping what the relay named `origin` announced.
    pub fn listen(url: &str, origin: &str, key: AnnouncementKey) -> Result<Self, StoreError> {
        let mut client = crate::db::pg_connect::client(url)?;
        // Named, so an operator (or a test) tells it apart in pg_stat_activity.
        client
            .batch_execute(&format!(
                "LISTEN {CHANNEL}; SELECT set_config('application_name', \
                 '{LISTENER_NAME} (' || current_schema() || ')', false)"
            ))
            .map_err(DbError::from)?;
        Ok(Self {
            client,
            origin: origin.to_string(),
            key,
            heard: Default::default(),
            warned_of_age: None,
        })
    }

    /// Waits up to `timeout` for the next announcement from another relay. An error
    /// means the database connection is gone: the caller listens again (and devices may
    /// have missed wake-ups, which their periodic sync makes up for).
    pub fn wait(&mut self, timeout: Duration) -> Result<Option<Announcement>, StoreError> {
        use postgres::fallible_iterator::FallibleIterator as _;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let next = self
                .client
                .notifications()
                .timeout_iter(left)
                .next()
                .map_err(DbError::from)?;
            let Some(notification) = next else {
                if self.client.is_closed() {
                    return Err(StoreError::Corrupt(
                        "the database closed the notification connection".into(),
                    ));
                }
                return Ok(None);
            };
            // Notifications not sealed by a relay are dropped without a word each (anyone
            // allowed to use the database can send them, as many as they like).
            let Some((plain, nonce)) = self.key.open(notification.payload()) else {
                tracing::debug!("a notification no relay sealed");
                continue;
            };
            let announcement = match serde_json::from_slice::<Announcement>(&plain) {
                Ok(announcement) => announcement,
                Err(e) => {
                    tracing::warn!(error = %e, "an announcement that does not decode");
                    continue;
                }
            };
            let now = now_ms();
            if now.abs_diff(announcement.sent_at_ms) > MAX_AGE_MS {
                if self
                    .warned_of_age
                    .is_none_or(|at| at.elapsed() > Duration::from_secs(60))
                {
                    self.warned_of_age = Some(Instant::now());
                    tracing::warn!(
                        skew_ms = now as i64 - announcement.sent_at_ms as i64,
                        "an announcement from another relay dated too far from this clock: \
                         the relays' clocks disagree, or it is a replay"
                    );
                }
                continue;
            }
            self.heard
                .retain(|_, sent| now.abs_diff(*sent) <= MAX_AGE_MS);
            if self.heard.insert(nonce, announcement.sent_at_ms).is_some() {
                tracing::debug!("an announcement heard before (a replay)");
                continue;
            }
            if announcement.origin != self.origin {
                return Ok(Some(announcement));
            }
        }
    }

    /// Which of `devices` the database holds as revoked. Devices are cut off on what the
    /// database holds, never on an announcement's word: anyone who may use the database
    /// can send a notification.
    pub fn revoked_among(
        &mut self,
        devices: &BTreeSet<String>,
    ) -> Result<BTreeSet<String>, StoreError> {
        let devices: Vec<&str> = devices.iter().map(String::as_str).collect();
        let rows = self
            .client
            .query(
                "SELECT device_id FROM devices WHERE status = 'revoked' AND device_id = ANY($1)",
                &[&devices],
            )
            .map_err(DbError::from)?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_announcement_is_split_into_payloads_that_fit_and_lose_nothing() {
        let devices: BTreeSet<String> = (0..1000).map(|i| format!("{i:064x}")).collect();
        let announcement = Announcement {
            origin: "relay-a".into(),
            wake: devices.clone(),
            changed: devices.iter().take(10).cloned().collect(),
            disconnect: devices.iter().take(1).cloned().collect(),
            sent_at_ms: 1,
        };
        let key = AnnouncementKey::from_relay_key(b"a relay's private key");
        let payloads = announcement.payloads();
        assert!(payloads.len() > 1);
        let mut joined = Announcement {
            origin: "relay-a".into(),
            sent_at_ms: 1,
            ..Default::default()
        };
        for payload in &payloads {
            let sealed = key.seal(payload.as_bytes());
            assert!(sealed.len() < 8000, "{}", sealed.len());
            let part: Announcement = serde_json::from_slice(&key.open(&sealed).unwrap().0).unwrap();
            joined.wake.extend(part.wake);
            joined.changed.extend(part.changed);
            joined.disconnect.extend(part.disconnect);
        }
        assert_eq!(joined, announcement);
    }

    #[test]
    fn an_announcement_is_taken_once_and_a_replay_is_dropped() {
        use postgres::fallible_iterator::FallibleIterator as _;
        let Some(url) = crate::db::postgres::testing::fresh_schema("cluster_replay") else {
            eprintln!("{}", crate::db::postgres::testing::MISSING);
            return;
        };
        let key = AnnouncementKey::from_relay_key(b"the relays' private key");
        let mut relay =
            Relay::open_postgres(&url, "f".repeat(64), std::env::temp_dir().join("blobs")).unwrap();
        relay.set_announcement_key(key.clone());
        let mut other = Announcements::listen(&url, "another relay", key).unwrap();
        let mut eavesdropper = crate::db::pg_connect::client(&url).unwrap();
        eavesdropper.batch_execute("LISTEN muster_relay").unwrap();
        let wake = |device: &str| Announcement {
            wake: [device.to_string()].into(),
            ..Default::default()
        };
        relay.announce(wake("bob")).unwrap();
        let heard = other.wait(Duration::from_secs(5)).unwrap().unwrap();
        assert!(heard.wake.contains("bob"));
        let mut notifications = eavesdropper.notifications();
        let captured = notifications
            .timeout_iter(Duration::from_secs(5))
            .next()
            .unwrap()
            .unwrap()
            .payload()
            .to_string();
        let mut sender = crate::db::pg_connect::client(&url).unwrap();
        sender
            .execute("SELECT pg_notify('muster_relay', $1)", &[&captured])
            .unwrap();
        relay.announce(wake("carol")).unwrap();
        let next = other.wait(Duration::from_secs(5)).unwrap().unwrap();
        assert!(
            next.wake.contains("carol"),
            "the replay was taken: {next:?}"
        );
    }

    #[test]
    fn only_a_holder_of_the_relays_key_reads_or_makes_an_announcement() {
        let key = AnnouncementKey::from_relay_key(b"the relays' private key");
        let sealed = key.seal(br#"{"origin":"a","wake":["bob"]}"#);
        assert!(
            !sealed.contains("bob")
                && !hex::decode(&sealed)
                    .unwrap()
                    .windows(3)
                    .any(|w| w == b"bob")
        );
        assert!(key.open(&sealed).is_some());
        let other = AnnouncementKey::from_relay_key(b"another key");
        assert!(other.open(&sealed).is_none(), "opened under another key");
        let mut tampered = hex::decode(&sealed).unwrap();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(
            key.open(&hex::encode(tampered)).is_none(),
            "a changed payload opened"
        );
        assert!(key.open(r#"{"origin":"x","disconnect":["bob"]}"#).is_none());
    }
}
