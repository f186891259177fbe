//! Messages for some members only: receipts go to the authors of what they cover.

use super::*;

/// How many messages in a row this device may send to some members only before one goes
/// to all. Each such message uses up a step of this device's MLS sender ratchet that the
/// other members never see, and openmls lets a receiver skip at most 1,000 steps at once
/// (`SenderRatchetConfiguration::maximum_forward_distance`); a message to everyone lets
/// them all catch up. Kept well below, so that several of those lost on the way (failed,
/// or withheld by the relay) still leave the others able to read this device.
pub(crate) const MAX_DIRECTED_RUN: i64 = 100;

/// The users of the group's archives when it is archived (else none).
pub(super) fn group_archivists(
    group: &MlsGroup,
    org: &OrgDescriptor,
    db: &Connection,
) -> Result<Vec<String>, EngineError> {
    if policy_of(group).archived {
        archive_members(group, org, db)
    } else {
        Ok(Vec::new())
    }
}

/// How an outbox row keeps a message's audience: one user per line.
pub(super) fn audience_column(users: &[String]) -> String {
    users.join("\n")
}

/// The users an outbox row's audience names.
pub(super) fn audience_users(column: &str) -> Vec<String> {
    column.split('\n').map(str::to_string).collect()
}

/// Who a receipt is for: the authors of the messages it covers (only they use it) and the
/// group's archives, never the sender's own user. Empty for anything else.
pub(super) fn receipt_audience(
    envelope: &Envelope,
    own_user: &str,
    archivists: Vec<String>,
) -> Vec<String> {
    let Body::Receipt { authors, .. } = &envelope.body else {
        return Vec::new();
    };
    let mut users: Vec<String> = authors
        .iter()
        .map(|span| span.user.clone())
        .chain(archivists)
        .filter(|user| user != own_user)
        .collect();
    users.sort();
    users.dedup();
    users
}

/// The users a message goes to when not the whole group ([`receipt_audience`]), unless
/// this device's run of such messages is at [`MAX_DIRECTED_RUN`]. Such a message carries
/// no number ([`Envelope::n`]), since most members never see it; anything else does.
pub(super) fn directed_audience(
    db: &Connection,
    group_id: &[u8],
    envelope: &Envelope,
    own_user: &str,
    archivists: Vec<String>,
) -> Result<Option<Vec<String>>, EngineError> {
    let key = format!("directed_run:{}", group_hex(group_id));
    let users = receipt_audience(envelope, own_user, archivists);
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

/// What members accept of a message's routing: one to the whole group carries its
/// sender's number; one bound to some users only is a receipt without a number, and in
/// an archived group names its archives. Anything else may have been kept from some
/// members, or from the archive.
pub(super) fn check_routing(
    aad: &[u8],
    envelope: &Envelope,
    archivists: impl FnOnce() -> Result<Vec<String>, String>,
) -> Result<(), String> {
    match muster_proto::directed_users(aad)? {
        None if envelope.n.is_none() => Err("it came without its number".into()),
        None => Ok(()),
        Some(_) if !matches!(envelope.body, Body::Receipt { .. }) || envelope.n.is_some() => {
            Err("it went to some members only, as only receipts may".into())
        }
        Some(users) => match archivists()?.iter().find(|a| !users.contains(a)) {
            Some(archive) => Err(format!("it was kept from the archive {archive}")),
            None => Ok(()),
        },
    }
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

    fn text() -> Envelope {
        Envelope::new(
            random_hex(16),
            now_ms(),
            Body::Text {
                text: "hi".into(),
                reply_to: None,
                mentions: Vec::new(),
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
        let text = text();
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

    #[test]
    fn only_unnumbered_receipts_that_name_the_archives_go_to_some_members() {
        let to = |users: &[&str]| {
            muster_proto::directed_aad(&users.iter().map(|u| u.to_string()).collect::<Vec<_>>())
        };
        let none = || Ok(Vec::new());
        let vault = || Ok(vec!["vault".to_string()]);
        let mut numbered = receipt(&["alice"]);
        numbered.n = Some(3);
        let mut text = text();
        let unnumbered_text = text.clone();
        text.n = Some(4);
        assert!(check_routing(b"", &text, none).is_ok());
        assert!(check_routing(b"", &numbered, none).is_ok());
        assert!(check_routing(&to(&["alice"]), &receipt(&["alice"]), none).is_ok());
        assert!(check_routing(&to(&["alice", "vault"]), &receipt(&["alice"]), vault).is_ok());
        for (aad, envelope, why) in [
            (to(&["alice"]), &text, "a numbered text bound to alice"),
            (
                to(&["alice"]),
                &unnumbered_text,
                "an unnumbered text bound to alice",
            ),
            (
                to(&["alice"]),
                &numbered,
                "a numbered receipt bound to alice",
            ),
            (
                Vec::new(),
                &unnumbered_text,
                "an unnumbered text to everyone",
            ),
            (
                Vec::new(),
                &receipt(&["alice"]),
                "an unnumbered receipt to everyone",
            ),
            (
                b"junk".to_vec(),
                &text,
                "authenticated data Muster does not use",
            ),
        ] {
            assert!(check_routing(&aad, envelope, none).is_err(), "{why}");
        }
        let kept = check_routing(&to(&["alice"]), &receipt(&["alice"]), vault).unwrap_err();
        assert!(kept.contains("vault"), "{kept}");
    }
}
