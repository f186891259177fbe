//! Versioned, typed application content carried inside MLS application messages.

use serde::{Deserialize, Serialize};

/// The longest retention or disappearing period a group may set: 100 years.
pub const MAX_RETENTION_SECS: u64 = 100 * 365 * 86_400;

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
    /// The sending device's count of its application messages to this group (1, 2, ...),
    /// inside the encryption: a receiver that sees a number skipped knows the relay
    /// withheld messages. Absent from older clients' messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u64>,
}

/// One answer an alert offers. An urgent one (such as "need help") raises an alert in
/// the group when someone gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnswerOption {
    pub label: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub urgent: bool,
}

/// The most answers an alert offers.
pub const MAX_ANSWER_OPTIONS: usize = 8;
/// The longest answer, in characters.
pub const MAX_ANSWER_CHARS: usize = 40;

impl AnswerOption {
    /// The answers an alert asking for acknowledgement offers unless it names its own.
    pub fn default_pair() -> Vec<AnswerOption> {
        vec![
            AnswerOption {
                label: "acknowledged".into(),
                urgent: false,
            },
            AnswerOption {
                label: "need help".into(),
                urgent: true,
            },
        ]
    }

    /// `safe, need help!, on my way`: answers separated by commas, `!` marking urgent ones.
    pub fn parse_list(list: &str) -> Result<Vec<AnswerOption>, String> {
        let options: Vec<AnswerOption> = list
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(|o| match o.strip_suffix('!') {
                Some(label) => AnswerOption {
                    label: label.trim().to_string(),
                    urgent: true,
                },
                None => AnswerOption {
                    label: o.to_string(),
                    urgent: false,
                },
            })
            .collect();
        check_options(&options)?;
        Ok(options)
    }
}

/// Checks an alert's answers: at most [`MAX_ANSWER_OPTIONS`], each 1 to
/// [`MAX_ANSWER_CHARS`] characters without control or direction characters, all different.
pub fn check_options(options: &[AnswerOption]) -> Result<(), String> {
    if options.len() > MAX_ANSWER_OPTIONS {
        return Err(format!(
            "an alert offers at most {MAX_ANSWER_OPTIONS} answers"
        ));
    }
    for (i, o) in options.iter().enumerate() {
        let chars = o.label.chars().count();
        let bad_char = o.label.chars().any(|c| {
            c.is_control() || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        });
        if chars == 0 || chars > MAX_ANSWER_CHARS || bad_char || o.label.trim() != o.label {
            return Err(format!(
                "an answer is 1 to {MAX_ANSWER_CHARS} characters of plain text: {:?} is not",
                o.label
            ));
        }
        if options[..i]
            .iter()
            .any(|p| p.label.eq_ignore_ascii_case(&o.label))
        {
            return Err(format!("the answer {:?} is offered twice", o.label));
        }
    }
    Ok(())
}

/// The typed payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Body {
    Text {
        text: String,
        /// The id of the message this one replies to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<String>,
        /// User handles mentioned with @handle.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        mentions: Vec<String>,
    },
    /// The group's display name, sent after adding members so they learn it.
    GroupMeta {
        name: String,
    },
    /// The author replaces the text of one of their messages.
    Edit {
        target: String,
        text: String,
    },
    /// The author withdraws one of their messages; every device deletes its content.
    Delete {
        target: String,
    },
    Reaction {
        target: String,
        emoji: String,
        #[serde(default)]
        remove: bool,
    },
    /// Delivery or read receipts for messages of others.
    Receipt {
        kind: ReceiptKind,
        targets: Vec<String>,
        /// Who wrote the targets, in order: the first `count` targets are by `user`, and
        /// so on. Only the author records receipts, so other members skip the rest
        /// without looking anything up. Absent from older clients' receipts.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        authors: Vec<AuthorSpan>,
    },
    /// An urgent message, optionally asking every member to acknowledge it, or to answer
    /// with one of `options`.
    Alert {
        text: String,
        #[serde(default)]
        ack_required: bool,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        options: Vec<AnswerOption>,
        /// Who is reminded, and where silence is reported, when members do not answer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        escalation: Option<Escalation>,
        /// An exercise, shown as one everywhere.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        drill: bool,
        /// This alert raises another group's alert whose members did not answer; the
        /// group shows the first raise of each alert only.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        raises: Option<Raised>,
    },
    /// Acknowledges an alert, with one of its options when it offers some; a later
    /// answer replaces an earlier one.
    Ack {
        target: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        answer: Option<String>,
    },
    /// Sets (or, with an empty value, clears) an entry of the group's situation board.
    BoardSet {
        key: String,
        value: String,
    },
    /// A file, encrypted on the sender's device and stored as a blob on the relay.
    Attachment {
        attachment: crate::attachments::AttachmentRef,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        caption: Option<String>,
    },
    /// How long members' devices keep the group's messages (`None`: no limit).
    Retention {
        retain_secs: Option<u64>,
        disappear_secs: Option<u64>,
    },
    /// A task for one member; its id is this message's.
    Task {
        title: String,
        assignee: String,
        /// When it is due, milliseconds since the Unix epoch.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        due_at: Option<i64>,
        /// Part of a drill.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        drill: bool,
    },
    /// The assignee accepts, declines or finishes a task (the one who set it may also
    /// mark it done).
    TaskUpdate {
        task: String,
        state: TaskState,
    },
    /// Opens an incident in the group; its id is this message's.
    IncidentOpen {
        title: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        drill: bool,
    },
    IncidentClose {
        incident: String,
    },
    /// A device takes on a timed duty about `subject` (an alert or a task). Several
    /// devices may; the one the relay sequenced first is the one that counts.
    Duty {
        subject: String,
        duty: DutyKind,
        /// The members who had not answered, when the claim was made.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        silent: Vec<String>,
    },
}

/// When an alert's silent members are reminded, and where their silence is raised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Escalation {
    /// Seconds after the alert until members who have not answered are reminded.
    pub remind_after: u64,
    /// Seconds after the alert until the alert is raised in `to_group`.
    pub raise_after: u64,
    /// The group (hex id) the alert is raised in.
    pub to_group: String,
    /// Its name when the alert was sent, to show.
    pub to_name: String,
}

/// The alert a raised alert escalates: its group (hex id) and id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Raised {
    pub group: String,
    pub alert: String,
}

impl Raised {
    /// How raises of one alert are told apart from others.
    pub fn key(&self) -> String {
        format!("{}:{}", self.group, self.alert)
    }
}

/// The latest time a task may be due: 1 January 2100.
pub const LATEST_DUE_MS: i64 = 4_102_444_800_000;

/// The longest wait an escalation or a task's due time may name: 30 days.
pub const MAX_WAIT_SECS: u64 = 30 * 86_400;

/// Where a task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Open,
    Accepted,
    Declined,
    Done,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Open => "open",
            TaskState::Accepted => "accepted",
            TaskState::Declined => "declined",
            TaskState::Done => "done",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Open, Self::Accepted, Self::Declined, Self::Done]
            .into_iter()
            .find(|t| t.as_str() == s)
    }
}

/// A timed duty one device carries out for the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DutyKind {
    /// Re-sends an alert to those who have not answered it.
    Remind,
    /// Raises an alert in its escalation group, naming who is silent.
    Raise,
    /// Flags a task past its due time.
    Overdue,
}

impl DutyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DutyKind::Remind => "remind",
            DutyKind::Raise => "raise",
            DutyKind::Overdue => "overdue",
        }
    }
}

/// A run of consecutive receipt targets written by one user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorSpan {
    pub user: String,
    pub count: usize,
}

/// The receipt targets written by `user`: all of them when the spans do not account for
/// every target (an older client's receipt, or a malformed one).
pub fn targets_by<'a>(targets: &'a [String], authors: &[AuthorSpan], user: &str) -> Vec<&'a str> {
    if authors.iter().map(|a| a.count).sum::<usize>() != targets.len() {
        return targets.iter().map(String::as_str).collect();
    }
    let mut start = 0;
    let mut mine = Vec::new();
    for span in authors {
        if span.user == user {
            mine.extend(
                targets[start..start + span.count]
                    .iter()
                    .map(String::as_str),
            );
        }
        start += span.count;
    }
    mine
}

/// "90s", "15m", "1h", "30d": the largest whole unit.
pub fn describe_duration(secs: u64) -> String {
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if secs >= size && secs.is_multiple_of(size) {
            return format!("{}{unit}", secs / size);
        }
    }
    format!("{secs}s")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptKind {
    Delivered,
    Read,
}

impl ReceiptKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiptKind::Delivered => "delivered",
            ReceiptKind::Read => "read",
        }
    }
}

/// The handles mentioned as `@handle` in a text.
pub fn mentions_in(text: &str) -> Vec<String> {
    let mut found: Vec<String> = text
        .split(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | ':' | '!' | '?' | '(' | ')'))
        .filter_map(|word| word.strip_prefix('@'))
        .map(|h| h.trim_end_matches('.').to_string())
        .filter(|h| muster_proto::validate_handle(h).is_ok())
        .collect();
    found.sort();
    found.dedup();
    found
}

impl Envelope {
    pub fn new(id: String, sent_at: i64, body: Body) -> Self {
        Self {
            v: CONTENT_VERSION,
            id,
            sent_at,
            body,
            n: None,
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
        envelope.check_ids()?;
        envelope.check_numbers()?;
        Ok(envelope)
    }

    /// Refuses numbers a sender chose to overflow a receiver's arithmetic: retention
    /// periods beyond [`MAX_RETENTION_SECS`] and message numbers beyond `i64::MAX`.
    fn check_numbers(&self) -> Result<(), String> {
        if self.n.is_some_and(|n| n > i64::MAX as u64) {
            return Err("message number out of range".into());
        }
        if let Body::Alert {
            escalation: Some(e),
            ..
        } = &self.body
        {
            if e.remind_after > MAX_WAIT_SECS || e.raise_after > MAX_WAIT_SECS {
                return Err("an escalation waits at most 30 days".into());
            }
        }
        if let Body::Task {
            due_at: Some(due), ..
        } = &self.body
        {
            if !(0..=LATEST_DUE_MS).contains(due) {
                return Err("a task's due time is out of range".into());
            }
        }
        if let Body::Alert {
            raises: Some(r), ..
        } = &self.body
        {
            if !is_message_id(&r.alert)
                || hex::decode(&r.group).map_or(true, |g| g.is_empty() || g.len() > 64)
            {
                return Err("a raised alert names its alert by group and message id".into());
            }
        }
        if let Body::Retention {
            retain_secs,
            disappear_secs,
        } = &self.body
        {
            if [retain_secs, disappear_secs]
                .into_iter()
                .flatten()
                .any(|s| *s == 0 || *s > MAX_RETENTION_SECS)
            {
                return Err(format!(
                    "a retention period must be 1 second to {} days",
                    MAX_RETENTION_SECS / 86_400
                ));
            }
        }
        Ok(())
    }

    /// Refuses ids a sender made up to reach beyond a lookup: every message id this
    /// envelope names must look like one an honest client makes (see [`is_message_id`]),
    /// and an attachment's blob id must be plain letters and digits.
    fn check_ids(&self) -> Result<(), String> {
        let bad = |what: &str, id: &str| {
            Err(format!(
                "{what} {:?} is not a message id (8-64 lowercase hex digits)",
                id.chars().take(80).collect::<String>()
            ))
        };
        if !is_message_id(&self.id) {
            return bad("message id", &self.id);
        }
        let targets: Vec<&String> = match &self.body {
            Body::Text { reply_to, .. } => reply_to.iter().collect(),
            Body::Edit { target, .. }
            | Body::Delete { target }
            | Body::Reaction { target, .. }
            | Body::Ack { target, .. } => vec![target],
            Body::Receipt { targets, .. } => targets.iter().collect(),
            Body::Attachment { attachment, .. } => {
                let blob = &attachment.blob_id;
                if blob.is_empty()
                    || blob.len() > 64
                    || !blob.bytes().all(|b| b.is_ascii_alphanumeric())
                {
                    return Err("attachment blob id must be 1-64 letters and digits".into());
                }
                vec![]
            }
            Body::TaskUpdate { task, .. } => vec![task],
            Body::IncidentClose { incident } => vec![incident],
            Body::Duty { subject, .. } => vec![subject],
            Body::Alert {
                escalation: Some(e),
                ..
            } if hex::decode(&e.to_group).map_or(true, |g| g.is_empty() || g.len() > 64) => {
                return Err("an escalation names its group by hex id".into())
            }
            Body::GroupMeta { .. }
            | Body::Alert { .. }
            | Body::BoardSet { .. }
            | Body::Retention { .. }
            | Body::Task { .. }
            | Body::IncidentOpen { .. } => vec![],
        };
        match targets.into_iter().find(|t| !is_message_id(t)) {
            Some(t) => bad("referenced message id", t),
            None => Ok(()),
        }
    }
}

/// Whether `id` has the shape of a message id: 8 to 64 lowercase hexadecimal digits.
/// Honest clients make 32; anything else is refused where content is decoded, so ids are
/// safe to show, shorten and use in file names.
pub fn is_message_id(id: &str) -> bool {
    (8..=64).contains(&id.len()) && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipt_targets_are_split_by_author_and_older_receipts_count_for_everyone() {
        let targets: Vec<String> = ["a1", "a2", "b1", "a3"].map(String::from).to_vec();
        let span = |user: &str, count| AuthorSpan {
            user: user.into(),
            count,
        };
        let authors = [span("alice", 2), span("bob", 1), span("alice", 1)];
        assert_eq!(targets_by(&targets, &authors, "alice"), ["a1", "a2", "a3"]);
        assert_eq!(targets_by(&targets, &authors, "bob"), ["b1"]);
        assert!(targets_by(&targets, &authors, "carol").is_empty());
        assert_eq!(targets_by(&targets, &[], "carol").len(), 4);
        // Spans that do not add up are ignored rather than trusted.
        assert_eq!(targets_by(&targets, &[span("bob", 9)], "alice").len(), 4);
    }

    #[test]
    fn envelope_round_trips_and_rejects_unknown_versions() {
        let e = Envelope::new(
            "0123abcd".into(),
            5,
            Body::Text {
                text: "hi".into(),
                reply_to: None,
                mentions: vec![],
            },
        );
        assert_eq!(Envelope::from_bytes(&e.to_bytes()).unwrap(), e);
        let mut future = e.clone();
        future.v = 99;
        assert!(Envelope::from_bytes(&future.to_bytes()).is_err());
        assert!(Envelope::from_bytes(b"{\"v\":1}").is_err());
    }

    #[test]
    fn retention_periods_and_message_numbers_that_would_overflow_are_refused() {
        let retention = |secs: u64| {
            Envelope::new(
                "00112233".into(),
                5,
                Body::Retention {
                    retain_secs: Some(secs),
                    disappear_secs: None,
                },
            )
            .to_bytes()
        };
        assert!(Envelope::from_bytes(&retention(30 * 86_400)).is_ok());
        assert!(Envelope::from_bytes(&retention(9_223_372_036_854_806_400)).is_err());
        assert!(Envelope::from_bytes(&retention(0)).is_err());
        let mut numbered =
            Envelope::new("00112233".into(), 5, Body::GroupMeta { name: "x".into() });
        numbered.n = Some(u64::MAX);
        assert!(Envelope::from_bytes(&numbered.to_bytes()).is_err());
    }

    #[test]
    fn ids_that_are_not_hex_are_refused_where_content_is_decoded() {
        let text = |id: &str, reply_to: Option<&str>| {
            Envelope::new(
                id.into(),
                5,
                Body::Text {
                    text: "hi".into(),
                    reply_to: reply_to.map(Into::into),
                    mentions: vec![],
                },
            )
            .to_bytes()
        };
        assert!(Envelope::from_bytes(&text("00112233aabbccdd", None)).is_ok());
        for bad in [
            "../../escaped",
            "abcdef0\u{e9}",
            "ABCDEF01",
            "abc",
            &"a".repeat(65),
        ] {
            let err = Envelope::from_bytes(&text(bad, None)).unwrap_err();
            assert!(err.contains("not a message id"), "{bad}: {err}");
        }
        let err = Envelope::from_bytes(&text("00112233", Some("../x"))).unwrap_err();
        assert!(err.contains("referenced message id"), "{err}");
    }

    #[test]
    fn mentions_are_found_and_deduplicated() {
        assert_eq!(
            mentions_in("@bob and @carol, see @bob. mail x@y.z (@Dave)"),
            vec!["bob".to_string(), "carol".to_string()]
        );
    }

    proptest::proptest! {
        #[test]
        fn any_decrypted_payload_is_an_envelope_or_an_error(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)
        ) {
            let _ = Envelope::from_bytes(&bytes);
        }

        #[test]
        fn json_shaped_payloads_never_panic(text in "\\{\"v\":1,\"id\":\"[a-f0-9]{0,8}\",\"sent_at\":-?[0-9]{1,20},\"body\":\\{\"type\":\"[a-z_]{1,12}\".{0,80}\\}\\}") {
            let _ = Envelope::from_bytes(text.as_bytes());
        }

        #[test]
        fn mentions_never_panic(text in ".{0,300}") {
            let _ = mentions_in(&text);
        }
    }
}
