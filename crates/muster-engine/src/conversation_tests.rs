//! Tests of the conversation model: how received envelopes change a device's store.

use super::*;
use crate::engine::GroupState;

/// An empty device store that knows one active group.
fn store_with_group(group_id: &[u8], name: &str) -> Connection {
    let db = Connection::open_in_memory().unwrap();
    db.execute_batch(crate::store::SCHEMA).unwrap();
    db.execute(
        "INSERT INTO groups (group_id, name, state, created_at) VALUES (?1, ?2, ?3, 0)",
        rusqlite::params![group_id, name, GroupState::Active],
    )
    .unwrap();
    db
}

/// Applies `body`, sent by `from` (a user, and whether an admin) at `sent_at`, as the
/// relay's message `seq` (its id too) reaching `me`'s device; whether it is one to read.
fn receive(
    db: &Connection,
    me: &str,
    group_id: &[u8],
    seq: u64,
    sent_at: i64,
    from: (&str, bool),
    body: Body,
) -> bool {
    let (user, admin) = from;
    let author = Author {
        user,
        device: user,
        admin,
        bot: false,
    };
    let envelope = Envelope::new(format!("{seq:08x}"), sent_at, body);
    let origin = Origin::Received { seq, at_ms: 1_000 };
    apply(db, me, group_id, &envelope, &author, origin, false).unwrap()
}

#[test]
fn an_answer_counts_only_if_the_alert_offers_it_and_the_latest_one_stands() {
    const GROUP: &[u8] = b"site-group";
    let db = store_with_group(GROUP, "site");
    let mut seq = 0;
    let mut apply_as = |user: &'static str, body: Body| {
        seq += 1;
        receive(
            &db,
            "carol",
            GROUP,
            seq,
            1_000 + seq as i64,
            (user, false),
            body,
        );
    };
    apply_as(
        "alice",
        Body::Alert {
            text: "flooding".into(),
            ack_required: true,
            options: crate::content::AnswerOption::parse_list("safe,need help!").unwrap(),
            escalation: None,
            drill: false,
            raises: None,
        },
    );
    let answer = |given: Option<&str>| Body::Ack {
        target: "00000001".into(),
        answer: given.map(str::to_string),
    };
    apply_as("bob", answer(Some("on a boat")));
    apply_as("alice", answer(Some("safe")));
    apply_as("dave", answer(Some("need help")));
    apply_as("dave", answer(Some("safe")));
    apply_as("dave", answer(None));
    let answers: Vec<(String, Option<String>)> = db
        .prepare("SELECT user, answer FROM acks ORDER BY user")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    // Bob's answer is not offered, alice sent the alert; dave's latest answer stands.
    assert_eq!(answers, [("dave".to_string(), Some("safe".to_string()))]);
}

#[test]
fn of_two_claims_of_one_duty_only_the_first_the_relay_sequenced_counts() {
    use crate::content::{DutyKind, Escalation};
    const GROUP: &[u8] = b"pier-group";
    let db = store_with_group(GROUP, "pier");
    // Messages 100 seconds apart.
    let apply_at = |seq: u64, user: &'static str, body: Body| {
        receive(
            &db,
            "erin",
            GROUP,
            seq,
            seq as i64 * 100_000,
            (user, false),
            body,
        )
    };
    let alert = |escalation: Option<Escalation>| Body::Alert {
        text: "fire".into(),
        ack_required: true,
        options: crate::content::AnswerOption::default_pair(),
        escalation,
        drill: false,
        raises: None,
    };
    apply_at(
        1,
        "alice",
        alert(Some(Escalation {
            remind_after: 60,
            raise_after: 120,
            to_group: "abcd".into(),
            to_name: "leads".into(),
        })),
    );
    apply_at(2, "alice", alert(None));
    let claim = |subject: &str| Body::Duty {
        subject: subject.into(),
        duty: DutyKind::Remind,
        silent: vec!["erin".into()],
    };
    // Bob's claim came first in the relay's order; carol's, a moment later, is kept unshown.
    assert!(apply_at(3, "bob", claim("00000001")));
    assert!(!apply_at(4, "carol", claim("00000001")));
    // A claim about an alert without an escalation is about nothing.
    assert!(!apply_at(5, "carol", claim("00000002")));
    // One made before the reminder was due counts for nothing either.
    apply_at(
        6,
        "alice",
        alert(Some(Escalation {
            remind_after: 3600,
            raise_after: 7200,
            to_group: "abcd".into(),
            to_name: "leads".into(),
        })),
    );
    assert!(!apply_at(7, "carol", claim("00000006")));
    let shown: Vec<(String, String)> = db
        .prepare("SELECT sender, body FROM messages WHERE body LIKE 'REMINDER%'")
        .unwrap()
        .query_map([], |r| Ok((r.get(0).unwrap(), r.get(1).unwrap())))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        shown,
        [(
            "bob".to_string(),
            "REMINDER of alice's alert, no answer within 1m from erin: fire".to_string()
        )]
    );
    let won: Vec<(String, bool)> = db
        .prepare("SELECT by_user, won FROM duty_claims ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0).unwrap(), r.get(1).unwrap())))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        won,
        [("bob".to_string(), true), ("carol".to_string(), false)]
    );
}

#[test]
fn a_group_shows_one_raise_per_alert_and_only_the_opener_closes_an_incident() {
    use crate::content::Raised;
    const GROUP: &[u8] = b"leads-group";
    let db = store_with_group(GROUP, "leads");
    let apply_at = |seq: u64, user: &'static str, admin: bool, body: Body| {
        receive(
            &db,
            "dave",
            GROUP,
            seq,
            seq as i64 * 1000,
            (user, admin),
            body,
        )
    };
    let raise = || Body::Alert {
        text: "ESCALATED".into(),
        ack_required: true,
        options: crate::content::AnswerOption::default_pair(),
        escalation: None,
        drill: false,
        raises: Some(Raised {
            group: "abcd".into(),
            alert: "0123456789abcdef".into(),
        }),
    };
    assert!(apply_at(1, "bob", false, raise()));
    assert!(
        !apply_at(2, "carol", false, raise()),
        "a second raise of the alert is not shown"
    );
    let count = |sql: &str| -> i64 { db.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(
        count("SELECT COUNT(*) FROM messages WHERE kind = 'alert'"),
        1
    );

    apply_at(
        3,
        "alice",
        false,
        Body::IncidentOpen {
            title: "Flooding".into(),
            drill: true,
        },
    );
    // A second incident while one is open is ignored.
    apply_at(
        4,
        "carol",
        false,
        Body::IncidentOpen {
            title: "Other".into(),
            drill: false,
        },
    );
    assert_eq!(count("SELECT COUNT(*) FROM incidents"), 1);
    let close = || Body::IncidentClose {
        incident: "00000003".into(),
    };
    apply_at(5, "carol", false, close());
    assert_eq!(
        count("SELECT COUNT(*) FROM incidents WHERE closed_at IS NULL"),
        1
    );
    // An alert during the drill is a drill only when it says so.
    apply_at(
        6,
        "carol",
        false,
        Body::Alert {
            text: "real fire".into(),
            ack_required: false,
            options: vec![],
            escalation: None,
            drill: false,
            raises: None,
        },
    );
    assert_eq!(count("SELECT drill FROM messages WHERE id = '00000006'"), 0);
    apply_at(7, "erin", true, close());
    assert_eq!(
        count("SELECT COUNT(*) FROM incidents WHERE closed_at IS NULL"),
        0
    );
}

#[test]
fn a_bots_rename_or_retention_change_is_ignored_by_every_member() {
    const GROUP: &[u8] = b"ops-group";
    let db = store_with_group(GROUP, "ops");
    let pager = Author {
        user: "pager",
        device: "p1",
        admin: false,
        bot: true,
    };
    for (seq, body) in [
        (
            1,
            Body::GroupMeta {
                name: "taken over".into(),
            },
        ),
        (
            2,
            Body::Retention {
                retain_secs: None,
                disappear_secs: Some(60),
            },
        ),
    ] {
        let envelope = Envelope::new(format!("{seq:08x}"), 1_000, body);
        let origin = Origin::Received { seq, at_ms: 1_000 };
        apply(&db, "bob", GROUP, &envelope, &pager, origin, false).unwrap();
    }
    let (name, disappear): (String, Option<i64>) = db
        .query_row(
            "SELECT name, disappear_secs FROM groups WHERE group_id = ?1",
            [GROUP],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((name.as_str(), disappear), ("ops", None));
    let notes: Vec<String> = db
        .prepare("SELECT body FROM messages WHERE kind = 'system' ORDER BY sort_key")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        notes,
        [
            "ignored pager's rename of this group: a bot changes no group's settings",
            "ignored pager's retention change: a bot changes no group's settings"
        ]
    );
}

#[test]
fn a_reaction_is_an_emoji_not_words_or_invisible_marks() {
    for ok in ["👍", "❤️", "👨‍👩‍👧‍👦", "👍🏽", "1️⃣", "🇩🇪", "✅"]
    {
        assert!(usable_reaction(ok), "{ok:?}");
    }
    for bad in [
        "",
        "ok",
        "fired",
        "👍 👍",
        "\u{202e}👍",
        "👍\u{200b}",
        "a\nb",
        "👍👍👍👍👍👍👍👍👍👍👍👍👍👍👍👍👍",
    ] {
        assert!(!usable_reaction(bad), "{bad:?}");
    }
}
