//! How typed content changes the device's store: messages, replies, edits, deletes,
//! reactions, receipts and group names. Plain functions over a connection or transaction,
//! used for this device's own sends and for received messages alike.

use crate::content::{describe_duration, targets_by, Body, Envelope, ReceiptKind};
use crate::error::EngineError;
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::BTreeMap;

/// Who sent a message, from their verified certificate.
pub(crate) struct Author<'a> {
    pub user: &'a str,
    pub device: &'a str,
    pub admin: bool,
    /// A bot changes nothing about a group (its name, its retention).
    pub bot: bool,
}

impl Author<'_> {
    /// Why this author may not change the group's name or retention, if they may not.
    fn may_not_change(&self, managed: bool) -> Option<&'static str> {
        if self.bot {
            Some("a bot changes no group's settings")
        } else if managed && !self.admin {
            Some("only an admin changes a managed group")
        } else {
            None
        }
    }
}

/// Whether the envelope is this device's own send or came from the relay at `seq`.
#[derive(Clone, Copy)]
pub(crate) enum Origin {
    Own,
    Received { seq: u64, at_ms: i64 },
}

/// Messages sort by the relay's per-group sequence, so every device shows one order;
/// notices caused by a message follow it. Not yet stored messages sort last.
pub(crate) fn order_key(relay_seq: u64, within: usize) -> i64 {
    (relay_seq as i64).saturating_mul(1000) + within.min(999) as i64
}

/// The name a group shows until a member tells this device its real name.
pub(crate) fn placeholder_name(group_id: &[u8]) -> String {
    format!(
        "group-{}",
        &hex::encode(group_id)[..8.min(group_id.len() * 2)]
    )
}

pub(crate) fn insert_system(
    db: &Connection,
    group_id: &[u8],
    text: &str,
    order: Option<i64>,
) -> Result<(), EngineError> {
    insert_notice(db, group_id, &crate::engine::random_hex(16), text, order)
}

/// A notice with a chosen id, so what caused it can remove it again.
pub(crate) fn insert_notice(
    db: &Connection,
    group_id: &[u8],
    id: &str,
    text: &str,
    order: Option<i64>,
) -> Result<(), EngineError> {
    let now = crate::engine::now_ms();
    cached_execute(db,
        "INSERT OR IGNORE INTO messages (id, group_id, kind, sender, sender_device, body, sent_at, received_at, status, sort_key)
         VALUES (?1, ?2, 'system', '', '', ?3, ?4, ?4, 'received', ?5)",
        params![id, group_id, text, now, order],
    )?;
    Ok(())
}

/// Once a board entry is cleared (by the update `clear_id`, sequenced by the relay), the
/// values it held before are forgotten: their log rows and the notices that showed them.
pub(crate) fn forget_cleared_board_values(
    db: &Connection,
    group_id: &[u8],
    clear_id: &str,
) -> Result<(), EngineError> {
    let cleared: Option<(String, i64)> = db
        .prepare_cached(
            "SELECT key, seq FROM board_log WHERE group_id = ?1 AND message_id = ?2
               AND value = '' AND seq IS NOT NULL",
        )?
        .query_row(params![group_id, clear_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((key, seq)) = cleared else {
        return Ok(());
    };
    cached_execute(
        db,
        "DELETE FROM messages WHERE group_id = ?1 AND kind = 'system' AND id IN (
             SELECT message_id FROM board_log WHERE group_id = ?1 AND key = ?2 AND seq < ?3)",
        params![group_id, key, seq],
    )?;
    cached_execute(
        db,
        "DELETE FROM board_log WHERE group_id = ?1 AND key = ?2 AND seq < ?3",
        params![group_id, key, seq],
    )?;
    Ok(())
}

/// Paths of deleted attachments' saved copies, handed to the caller to remove once the
/// deletion is stored.
pub(crate) fn take_doomed_files(db: &Connection) -> Result<Vec<String>, EngineError> {
    let paths = db
        .prepare_cached("SELECT path FROM doomed_files")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<Vec<String>, _>>()?;
    cached_execute(db, "DELETE FROM doomed_files", [])?;
    Ok(paths)
}

/// The longest reaction kept: one emoji, with its modifiers and joiners (a family with
/// skin tones runs to 11).
pub const MAX_REACTION_CHARS: usize = 16;

/// How many different reactions one member may put on one message.
pub const MAX_REACTIONS_PER_MEMBER: i64 = 10;

/// Whether `emoji` can be a reaction: short, with no letters, spaces, control characters
/// or invisible formatting (direction marks, zero-width spaces) other than the joiner
/// emoji sequences use. Senders and receivers apply the same rule.
pub fn usable_reaction(emoji: &str) -> bool {
    let invisible = |c: char| {
        matches!(
            c,
            '\u{061c}' | '\u{200b}' | '\u{200c}' | '\u{200e}' | '\u{200f}' | '\u{feff}'
        ) || ('\u{202a}'..='\u{202e}').contains(&c)
            || ('\u{2060}'..='\u{2069}').contains(&c)
    };
    !emoji.is_empty()
        && emoji.chars().count() <= MAX_REACTION_CHARS
        && !emoji
            .chars()
            .any(|c| c.is_alphabetic() || c.is_control() || c.is_whitespace() || invisible(c))
}

/// Runs a statement kept in the connection's statement cache: these run for every
/// message received, and preparing them anew each time is a large share of the work.
pub(crate) fn cached_execute(
    db: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<usize> {
    db.prepare_cached(sql)?.execute(params)
}

/// The author of a message in this group, if it exists and still has content.
fn author_of(db: &Connection, group_id: &[u8], id: &str) -> Result<Option<String>, EngineError> {
    let row: Option<(String, String, bool)> = db
        .prepare_cached(
            "SELECT sender, kind, deleted FROM messages WHERE group_id = ?1 AND id = ?2",
        )?
        .query_row(params![group_id, id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    Ok(row.and_then(|(sender, kind, deleted)| {
        (!deleted && matches!(kind.as_str(), "text" | "alert" | "attachment")).then_some(sender)
    }))
}

/// Where a stored message sits: its status, relay sequence and display order.
pub(crate) struct Placement {
    pub status: &'static str,
    relay_seq: Option<i64>,
    pub sort_key: Option<i64>,
    received_at: i64,
    /// Receipts this device owes the sender (1 for received messages).
    pub receipts_due: i64,
    received: bool,
}

impl Placement {
    pub(crate) fn of(envelope: &Envelope, origin: Origin) -> Self {
        match origin {
            Origin::Own => Self {
                status: "sending",
                relay_seq: None,
                sort_key: None,
                received_at: envelope.sent_at,
                receipts_due: 0,
                received: false,
            },
            Origin::Received { seq, at_ms } => Self {
                status: "received",
                relay_seq: Some(seq as i64),
                sort_key: Some(order_key(seq, 0)),
                received_at: at_ms,
                receipts_due: 1,
                received: true,
            },
        }
    }
}

/// What only some kinds of message carry.
#[derive(Default)]
pub(crate) struct Extras<'a> {
    pub reply_to: Option<&'a str>,
    pub mentions: &'a [String],
    pub ack_required: bool,
    pub attachment: Option<String>,
    /// An alert's answers, as JSON.
    pub options: Option<String>,
    pub drill: bool,
    /// An alert's escalation, as JSON.
    pub escalation: Option<String>,
    /// The alert a raised alert raises ([`crate::content::Raised::key`]).
    pub raises: Option<String>,
}

/// Stores a message the user reads (text, alert or attachment). Returns whether it was received.
#[allow(clippy::too_many_arguments)]
pub(crate) fn insert_message(
    db: &Connection,
    group_id: &[u8],
    envelope: &Envelope,
    author: &Author,
    placement: &Placement,
    kind: &str,
    body: &str,
    extras: Extras,
) -> Result<bool, EngineError> {
    let inserted = cached_execute(db,
        "INSERT OR IGNORE INTO messages (id, group_id, kind, sender, sender_device, body, sent_at, received_at,
             relay_seq, status, sort_key, reply_to, mentions, ack_required, attachment,
             delivered_receipt_due, read_receipt_due, options, drill, escalation, raises)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?16, ?17, ?18, ?19, ?20)",
        params![
            envelope.id,
            group_id,
            kind,
            author.user,
            author.device,
            body,
            envelope.sent_at,
            placement.received_at,
            placement.relay_seq,
            placement.status,
            placement.sort_key,
            extras.reply_to,
            serde_json::to_string(extras.mentions).expect("serialises"),
            extras.ack_required,
            extras.attachment,
            placement.receipts_due,
            extras.options,
            extras.drill,
            extras.escalation,
            extras.raises
        ],
    )?;
    // A message reusing an id already here is not a new message (and notifies nobody).
    Ok(inserted == 1 && placement.received)
}

/// An alert's answers as stored (none when it offers none).
pub(crate) fn alert_options(stored: Option<&str>) -> Vec<crate::content::AnswerOption> {
    stored
        .and_then(|json| serde_json::from_str(json).ok())
        .unwrap_or_default()
}

/// Applies one envelope to the store, on the device of `local_user`. Returns whether it
/// was a message the user reads.
pub(crate) fn apply(
    db: &Connection,
    local_user: &str,
    group_id: &[u8],
    envelope: &Envelope,
    author: &Author,
    origin: Origin,
    managed: bool,
) -> Result<bool, EngineError> {
    let placement = Placement::of(envelope, origin);
    let relay_seq = placement.relay_seq;
    match &envelope.body {
        Body::Text {
            text,
            reply_to,
            mentions,
        } => insert_message(
            db,
            group_id,
            envelope,
            author,
            &placement,
            "text",
            text,
            Extras {
                reply_to: reply_to.as_deref(),
                mentions,
                ..Extras::default()
            },
        ),
        Body::Edit { target, text } => {
            if author_of(db, group_id, target)?.as_deref() == Some(author.user) {
                cached_execute(
                    db,
                    "UPDATE messages SET body = ?3, edited_at = ?4 WHERE group_id = ?1 AND id = ?2",
                    params![group_id, target, text, envelope.sent_at],
                )?;
            } else {
                tracing::warn!(%target, user = author.user, "ignored an edit of a message that is not theirs");
            }
            Ok(false)
        }
        Body::Delete { target } => {
            if author_of(db, group_id, target)?.as_deref() == Some(author.user) {
                cached_execute(
                    db,
                    "INSERT OR IGNORE INTO doomed_files (path)
                     SELECT saved_to FROM messages WHERE group_id = ?1 AND id = ?2 AND saved_to IS NOT NULL",
                    params![group_id, target],
                )?;
                cached_execute(
                    db,
                    "UPDATE messages SET body = '', deleted = 1, reply_to = NULL, mentions = '[]',
                         attachment = NULL, saved_to = NULL, ack_required = 0,
                         delivered_receipt_due = 0, read_receipt_due = 0
                     WHERE group_id = ?1 AND id = ?2",
                    params![group_id, target],
                )?;
                for table in ["reactions", "receipts", "acks", "answer_log"] {
                    cached_execute(
                        db,
                        &format!("DELETE FROM {table} WHERE group_id = ?1 AND message_id = ?2"),
                        params![group_id, target],
                    )?;
                }
            } else {
                tracing::warn!(%target, user = author.user, "ignored a delete of a message that is not theirs");
            }
            Ok(false)
        }
        Body::Reaction {
            target,
            emoji,
            remove,
        } => {
            let usable = usable_reaction(emoji);
            let held: i64 = db
                .prepare_cached(
                    "SELECT COUNT(*) FROM reactions WHERE group_id = ?1 AND message_id = ?2 AND user = ?3",
                )?
                .query_row(params![group_id, target, author.user], |r| r.get(0))?;
            if !*remove && (!usable || held >= MAX_REACTIONS_PER_MEMBER) {
                tracing::warn!(%target, user = author.user, "ignored a reaction that is not one short emoji, or one too many");
            } else if author_of(db, group_id, target)?.is_some() {
                if *remove {
                    cached_execute(db,
                        "DELETE FROM reactions WHERE group_id = ?1 AND message_id = ?2 AND user = ?3 AND emoji = ?4",
                        params![group_id, target, author.user, emoji],
                    )?;
                } else {
                    cached_execute(db,
                        "INSERT OR IGNORE INTO reactions (group_id, message_id, user, emoji) VALUES (?1, ?2, ?3, ?4)",
                        params![group_id, target, author.user, emoji],
                    )?;
                }
            }
            Ok(false)
        }
        Body::Receipt {
            kind,
            targets,
            authors,
        } => {
            // Receipts reach the whole group, but only the author of a message learns who
            // got and read it, as in other workplace messengers; other members skip them.
            if author.user == local_user {
                return Ok(false);
            }
            for target in targets_by(targets, authors, local_user)
                .into_iter()
                .take(10_000)
            {
                let mine = author_of(db, group_id, target)?.is_some_and(|a| a == local_user);
                if mine {
                    db.prepare_cached(
                        "INSERT OR IGNORE INTO receipts (group_id, message_id, user, kind, at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    )?
                    .execute(params![group_id, target, author.user, kind.as_str(), envelope.sent_at])?;
                    if *kind == ReceiptKind::Read {
                        db.prepare_cached(
                            "INSERT OR IGNORE INTO receipts (group_id, message_id, user, kind, at) VALUES (?1, ?2, ?3, 'delivered', ?4)",
                        )?
                        .execute(params![group_id, target, author.user, envelope.sent_at])?;
                    }
                }
            }
            Ok(false)
        }
        Body::GroupMeta { name } => {
            apply_group_name(db, group_id, name, author, origin, managed)?;
            Ok(false)
        }
        Body::Alert {
            text,
            ack_required,
            options,
            escalation,
            drill,
            raises,
        } => {
            let raises = raises.as_ref().map(crate::content::Raised::key);
            // The first raise of an alert in the relay's order is the one shown.
            if let Some(key) = &raises {
                let raised_already = db
                    .prepare_cached("SELECT 1 FROM messages WHERE group_id = ?1 AND raises = ?2")?
                    .exists(params![group_id, key])?;
                if raised_already {
                    return Ok(false);
                }
            }
            insert_message(
                db,
                group_id,
                envelope,
                author,
                &placement,
                "alert",
                text,
                Extras {
                    ack_required: *ack_required,
                    // Answers that break the limits are not offered (the alert stays).
                    options: (!options.is_empty()
                        && crate::content::check_options(options).is_ok())
                    .then(|| serde_json::to_string(options).expect("serialises")),
                    drill: *drill,
                    escalation: escalation
                        .as_ref()
                        .map(|e| serde_json::to_string(e).expect("serialises")),
                    raises,
                    ..Extras::default()
                },
            )
        }
        Body::Task {
            title,
            assignee,
            due_at,
            drill,
        } => crate::crisis::apply_task(
            db,
            group_id,
            envelope,
            author,
            origin,
            crate::crisis::NewTask {
                title,
                assignee,
                due_at: *due_at,
                drill: *drill,
            },
        ),
        Body::TaskUpdate { task, state } => {
            crate::crisis::apply_task_update(db, group_id, envelope, author, origin, task, *state)?;
            Ok(false)
        }
        Body::IncidentOpen { title, drill } => {
            crate::crisis::apply_incident_open(
                db, group_id, envelope, author, origin, title, *drill,
            )?;
            Ok(false)
        }
        Body::IncidentClose { incident } => {
            crate::crisis::apply_incident_close(db, group_id, envelope, author, origin, incident)?;
            Ok(false)
        }
        Body::Duty {
            subject,
            duty,
            silent,
        } => crate::crisis::apply_duty(
            db, group_id, envelope, author, origin, subject, *duty, silent,
        ),
        Body::Attachment {
            attachment,
            caption,
        } => insert_message(
            db,
            group_id,
            envelope,
            author,
            &placement,
            "attachment",
            caption.as_deref().unwrap_or(&attachment.name),
            Extras {
                attachment: Some(serde_json::to_string(attachment).expect("serialises")),
                ..Extras::default()
            },
        ),
        Body::Ack { target, answer } => {
            let alert: Option<(String, Option<String>)> = db
                .query_row(
                    "SELECT sender, options FROM messages WHERE group_id = ?1 AND id = ?2 AND kind = 'alert'",
                    params![group_id, target],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let Some((_, options)) = alert.filter(|(by, _)| by != author.user) else {
                return Ok(false);
            };
            let options = alert_options(options.as_deref());
            // An answer the alert does not offer counts for nothing; a plain
            // acknowledgement (an older client's) keeps any answer given before.
            let answer = match answer {
                None => None,
                Some(given) => match options.iter().find(|o| o.label == *given) {
                    Some(o) => Some(o.label.clone()),
                    None => return Ok(false),
                },
            };
            cached_execute(
                db,
                "INSERT OR IGNORE INTO answer_log (group_id, message_id, ack_id, user, answer, at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    group_id,
                    target,
                    envelope.id,
                    author.user,
                    answer,
                    envelope.sent_at
                ],
            )?;
            cached_execute(
                db,
                "INSERT INTO acks (group_id, message_id, user, at, answer) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (group_id, message_id, user)
                 DO UPDATE SET answer = COALESCE(excluded.answer, acks.answer)",
                params![group_id, target, author.user, envelope.sent_at, answer],
            )?;
            Ok(false)
        }
        Body::Retention {
            retain_secs,
            disappear_secs,
        } => {
            if let Some(why) = author.may_not_change(managed) {
                if let Origin::Received { seq, .. } = origin {
                    insert_system(
                        db,
                        group_id,
                        &format!("ignored {}'s retention change: {why}", author.user),
                        Some(order_key(seq, 0)),
                    )?;
                }
                return Ok(false);
            }
            cached_execute(
                db,
                "UPDATE groups SET retain_secs = ?2, disappear_secs = ?3 WHERE group_id = ?1",
                params![
                    group_id,
                    retain_secs.map(|v| v as i64),
                    disappear_secs.map(|v| v as i64)
                ],
            )?;
            let order = match origin {
                Origin::Received { seq, .. } => Some(order_key(seq, 0)),
                Origin::Own => None,
            };
            let who = if matches!(origin, Origin::Own) {
                "you"
            } else {
                author.user
            };
            let what = match (retain_secs, disappear_secs) {
                (_, Some(d)) => format!(
                    "messages disappear {} after they are sent",
                    describe_duration(*d)
                ),
                (Some(r), None) => format!("devices keep messages for {}", describe_duration(*r)),
                (None, None) => "devices keep messages with no time limit".to_string(),
            };
            insert_system(
                db,
                group_id,
                &format!("{who} changed the policy: {what}"),
                order,
            )?;
            Ok(false)
        }
        Body::BoardSet { key, value } => {
            let key: String = key.chars().take(64).collect();
            let value: String = value.chars().take(1000).collect();
            cached_execute(db,
                "INSERT OR IGNORE INTO board_log (group_id, message_id, key, value, author, at, seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![group_id, envelope.id, key, value, author.user, envelope.sent_at, relay_seq],
            )?;
            if let Origin::Received { seq, .. } = origin {
                let shown = if value.is_empty() {
                    format!("{} cleared board entry {key}", author.user)
                } else {
                    format!("{} set board {key}: {value}", author.user)
                };
                insert_notice(db, group_id, &envelope.id, &shown, Some(order_key(seq, 1)))?;
                forget_cleared_board_values(db, group_id, &envelope.id)?;
            }
            Ok(false)
        }
    }
}

/// One entry of a group's situation board.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BoardEntry {
    pub key: String,
    pub value: String,
    pub author: String,
    /// Milliseconds since the Unix epoch, by the author's clock.
    pub at_ms: i64,
    /// This device's own update, not yet sequenced by the relay.
    pub pending: bool,
}

/// The board: per key, the update the relay sequenced last; this device's own unsent
/// update shows (as pending) until it is sequenced. Cleared entries are left out.
pub(crate) fn board(db: &Connection, group_id: &[u8]) -> Result<Vec<BoardEntry>, EngineError> {
    let mut stmt = db.prepare(
        "SELECT key, value, author, at, seq FROM board_log WHERE group_id = ?1
         ORDER BY key, seq IS NULL, seq, at",
    )?;
    let mut latest: BTreeMap<String, BoardEntry> = BTreeMap::new();
    for row in stmt.query_map([group_id], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, Option<i64>>(4)?,
        ))
    })? {
        let (key, value, author, at_ms, seq) = row?;
        latest.insert(
            key.clone(),
            BoardEntry {
                key,
                value,
                author,
                at_ms,
                pending: seq.is_none(),
            },
        );
    }
    Ok(latest
        .into_values()
        .filter(|e| !e.value.is_empty())
        .collect())
}

fn apply_group_name(
    db: &Connection,
    group_id: &[u8],
    name: &str,
    author: &Author,
    origin: Origin,
    managed: bool,
) -> Result<(), EngineError> {
    let Origin::Received { seq, .. } = origin else {
        return Ok(());
    };
    let name: String = name.chars().take(64).collect();
    let current: String = db.query_row(
        "SELECT name FROM groups WHERE group_id = ?1",
        [group_id],
        |r| r.get(0),
    )?;
    let still_placeholder = current == placeholder_name(group_id);
    if name.trim().is_empty() || name == current {
        return Ok(());
    }
    let refused = author
        .may_not_change(managed)
        .filter(|_| !still_placeholder || author.bot);
    if let Some(why) = refused {
        return insert_system(
            db,
            group_id,
            &format!("ignored {}'s rename of this group: {why}", author.user),
            Some(order_key(seq, 0)),
        );
    }
    cached_execute(
        db,
        "UPDATE groups SET name = ?2 WHERE group_id = ?1",
        params![group_id, name],
    )?;
    if !still_placeholder {
        insert_system(
            db,
            group_id,
            &format!("{} renamed the group to {name}", author.user),
            Some(order_key(seq, 0)),
        )?;
    }
    Ok(())
}

/// Reactions and receipts of one message, for display.
pub(crate) struct Decorations {
    pub acked_by: Vec<String>,
    /// Who gave which answer (their latest), for an alert that offers answers.
    pub answers: BTreeMap<String, String>,
    pub reactions: BTreeMap<String, Vec<String>>,
    pub read_by: Vec<String>,
    pub delivered_to: Vec<String>,
}

pub(crate) fn decorations(
    db: &Connection,
    group_id: &[u8],
    id: &str,
) -> Result<Decorations, EngineError> {
    let mut reactions: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut stmt = db.prepare_cached(
        "SELECT emoji, user FROM reactions WHERE group_id = ?1 AND message_id = ?2 ORDER BY emoji, user",
    )?;
    for row in stmt.query_map(params![group_id, id], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })? {
        let (emoji, user) = row?;
        reactions.entry(emoji).or_default().push(user);
    }
    let receipts = |kind: &str| -> Result<Vec<String>, EngineError> {
        let mut stmt = db.prepare_cached(
            "SELECT user FROM receipts WHERE group_id = ?1 AND message_id = ?2 AND kind = ?3 ORDER BY user",
        )?;
        let users = stmt
            .query_map(params![group_id, id, kind], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(users)
    };
    let mut stmt = db.prepare_cached(
        "SELECT user, answer FROM acks WHERE group_id = ?1 AND message_id = ?2 ORDER BY user",
    )?;
    let acks = stmt
        .query_map(params![group_id, id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<Vec<(String, Option<String>)>, _>>()?;
    Ok(Decorations {
        answers: acks
            .iter()
            .filter_map(|(user, answer)| Some((user.clone(), answer.clone()?)))
            .collect(),
        acked_by: acks.into_iter().map(|(user, _)| user).collect(),
        reactions,
        read_by: receipts("read")?,
        delivered_to: receipts("delivered")?,
    })
}

/// Deletes messages older than their group's retention or disappearing time (by the
/// sender's clock) from this device, with their reactions, receipts and acknowledgements.
/// Returns how many messages were deleted.
pub(crate) fn enforce_retention(db: &Connection, now_ms: i64) -> Result<usize, EngineError> {
    let deleted = cached_execute(
        db,
        "DELETE FROM messages WHERE kind != 'system' AND group_id IN (
             SELECT group_id FROM groups WHERE COALESCE(disappear_secs, retain_secs) IS NOT NULL)
           AND sent_at < ?1 - 1000 * (SELECT MIN(COALESCE(g.disappear_secs, g.retain_secs),
                                                 COALESCE(g.retain_secs, g.disappear_secs))
                                      FROM groups g WHERE g.group_id = messages.group_id)",
        [now_ms],
    )?;
    if deleted > 0 {
        crate::crisis::forget_expired(db, now_ms)?;
        for table in ["reactions", "receipts", "acks", "answer_log"] {
            cached_execute(
                db,
                &format!(
                    "DELETE FROM {table} WHERE NOT EXISTS (SELECT 1 FROM messages m
                       WHERE m.group_id = {table}.group_id AND m.id = {table}.message_id)"
                ),
                [],
            )?;
        }
    }
    Ok(deleted)
}

#[cfg(test)]
#[path = "conversation_tests.rs"]
mod tests;
