//! Messages for some members only: receipts go to the authors of what they cover.

use super::*;

/// How many messages in a row this device may send to some members only before one goes
/// to all. Each such message uses up a step of this device's MLS sender ratchet that the
/// other members never see, and openmls lets a receiver skip at most 1,000 steps at once
/// (`SenderRatchetConfiguration::maximum_forward_distance`); a message to everyone lets
/// them all catch up.
pub(crate) const MAX_DIRECTED_RUN: i64 = 500;

/// The users a message goes to when not the whole group: a receipt goes to the authors of
/// the messages it covers (only they use it) and to the group's archives, unless this
/// device's run of such messages is at [`MAX_DIRECTED_RUN`]. Such a message carries no
/// number ([`Envelope::n`]), since most members never see it; anything else does.
pub(super) fn directed_audience(
    db: &Connection,
    group_id: &[u8],
    envelope: &Envelope,
    own_user: &str,
    archivists: Vec<String>,
) -> Result<Option<Vec<String>>, EngineError> {
    let key = format!("directed_run:{}", group_hex(group_id));
    let mut users = match &envelope.body {
        Body::Receipt { authors, .. } => authors
            .iter()
            .map(|span| span.user.clone())
            .chain(archivists)
            .filter(|user| user != own_user)
            .collect::<Vec<_>>(),
        _ => Vec::new(),
    };
    users.sort();
    users.dedup();
    let run: i64 = db
        .prepare_cached("SELECT value FROM sync_state WHERE key = ?1")?
        .query_row([&key], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    if users.is_empty()
        || users.len() > muster_proto::MAX_RECIPIENT_USERS
        || run >= MAX_DIRECTED_RUN
    {
        if run > 0 {
            db.prepare_cached("DELETE FROM sync_state WHERE key = ?1")?
                .execute([&key])?;
        }
        return Ok(None);
    }
    db.prepare_cached(
        "INSERT INTO sync_state (key, value) VALUES (?1, 1)
         ON CONFLICT (key) DO UPDATE SET value = value + 1",
    )?
    .execute([&key])?;
    Ok(Some(users))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::{AuthorSpan, ReceiptKind};

    fn receipt(authors: &[&str]) -> Envelope {
        Envelope::new(
            random_hex(16),
            now_ms(),
            Body::Receipt {
                kind: ReceiptKind::Read,
                targets: authors.iter().map(|_| random_hex(16)).collect(),
                authors: authors
                    .iter()
                    .map(|user| AuthorSpan {
                        user: user.to_string(),
                        count: 1,
                    })
                    .collect(),
            },
        )
    }

    #[test]
    fn receipts_go_to_their_authors_until_a_run_must_end_for_everyone() {
        // The run must end while every receiver can still skip it.
        assert!(
            MAX_DIRECTED_RUN
                < openmls::prelude::SenderRatchetConfiguration::default().maximum_forward_distance()
                    as i64
        );
        let db = Connection::open_in_memory().unwrap();
        db.execute_batch(crate::store::SCHEMA).unwrap();
        let group = b"g".as_slice();
        let audience = |envelope: &Envelope, archivists: Vec<String>| {
            directed_audience(&db, group, envelope, "bob", archivists).unwrap()
        };
        assert_eq!(
            audience(
                &receipt(&["carol", "alice", "bob", "alice"]),
                vec!["vault".into()]
            ),
            Some(vec!["alice".into(), "carol".into(), "vault".into()]),
            "each author once, the archive too, never the sender"
        );
        let text = Envelope::new(
            random_hex(16),
            now_ms(),
            Body::Text {
                text: "hi".into(),
                reply_to: None,
                mentions: Vec::new(),
            },
        );
        assert_eq!(audience(&text, Vec::new()), None);
        assert_eq!(
            audience(&receipt(&["bob"]), Vec::new()),
            None,
            "nobody else"
        );
        for i in 0..MAX_DIRECTED_RUN {
            assert!(
                audience(&receipt(&["alice"]), Vec::new()).is_some(),
                "receipt {i}"
            );
        }
        assert_eq!(
            audience(&receipt(&["alice"]), Vec::new()),
            None,
            "the run ends"
        );
        assert!(
            audience(&receipt(&["alice"]), Vec::new()).is_some(),
            "a new run"
        );
    }
}
