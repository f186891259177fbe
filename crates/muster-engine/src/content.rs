//! Versioned, typed application content carried inside MLS application messages.

use serde::{Deserialize, Serialize};

/// Current content version.
pub const CONTENT_VERSION: u16 = 1;

/// What one application message carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u16,
    /// Sender-chosen message id, unique within the group.
    pub id: String,
    /// Sender's clock, milliseconds since the Unix epoch.
    pub sent_at: i64,
    pub body: Body,
}

/// The typed payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Body {
    Text {
        text: String,
    },
    /// The group's display name, sent after adding members so they learn it.
    GroupMeta {
        name: String,
    },
}

impl Envelope {
    pub fn new(id: String, sent_at: i64, body: Body) -> Self {
        Self {
            v: CONTENT_VERSION,
            id,
            sent_at,
            body,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("envelope serialises")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let envelope: Envelope =
            serde_json::from_slice(bytes).map_err(|e| format!("content does not decode: {e}"))?;
        if envelope.v != CONTENT_VERSION {
            return Err(format!("unsupported content version {}", envelope.v));
        }
        Ok(envelope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips_and_rejects_unknown_versions() {
        let e = Envelope::new("a".into(), 5, Body::Text { text: "hi".into() });
        assert_eq!(Envelope::from_bytes(&e.to_bytes()).unwrap(), e);
        let mut future = e.clone();
        future.v = 99;
        assert!(Envelope::from_bytes(&future.to_bytes()).is_err());
        assert!(Envelope::from_bytes(b"{\"v\":1}").is_err());
    }
}
