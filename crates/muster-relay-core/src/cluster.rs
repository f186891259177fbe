//! Several relays in front of one PostgreSQL database: one TLS identity for all of them,
//! and what one relay's requests did, told to the others through PostgreSQL's
//! LISTEN/NOTIFY (no other broker), so that a device connected anywhere is woken, told of
//! changes or cut off at once.

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
/// PostgreSQL refuses payloads of 8,000 bytes or more; announcements are split below it.
const MAX_PAYLOAD: usize = 7_000;

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
}

impl Announcement {
    pub fn is_empty(&self) -> bool {
        self.wake.is_empty() && self.changed.is_empty() && self.disconnect.is_empty()
    }

    /// The announcement as payloads that each fit one notification.
    fn payloads(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut part = Announcement {
            origin: self.origin.clone(),
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
        announcement.origin = self.origin().to_string();
        for payload in announcement.payloads() {
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
}

impl Announcements {
    /// Listens on the database at `url`, skipping what the relay named `origin` announced.
    pub fn listen(url: &str, origin: &str) -> Result<Self, StoreError> {
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
            match serde_json::from_str::<Announcement>(notification.payload()) {
                Ok(announcement) if announcement.origin != self.origin => {
                    return Ok(Some(announcement))
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "an announcement that does not decode"),
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
        };
        let payloads = announcement.payloads();
        assert!(payloads.len() > 1);
        let mut joined = Announcement {
            origin: "relay-a".into(),
            ..Default::default()
        };
        for payload in &payloads {
            assert!(payload.len() < 8000, "{}", payload.len());
            let part: Announcement = serde_json::from_str(payload).unwrap();
            joined.wake.extend(part.wake);
            joined.changed.extend(part.changed);
            joined.disconnect.extend(part.disconnect);
        }
        assert_eq!(joined, announcement);
    }
}
