//! A bot device's intake: bearer tokens (kept as digests, each for one group, revocable),
//! posts that are stored once per client-given key, and the link between a monitoring
//! system's alarm and the alert it became, so that its resolution replies to it.

use super::*;

/// How a token starts, so that a leaked one is easy to recognise.
const TOKEN_PREFIX: &str = "mbt_";
/// The longest client-given idempotency key.
pub const MAX_IDEMPOTENCY_KEY: usize = 200;
/// How long a post's idempotency key is remembered.
const IDEMPOTENCY_SECS: i64 = 30 * 24 * 3600;

/// A token as listed: never the secret itself.
#[derive(Debug, Clone, Serialize)]
pub struct BotTokenView {
    pub id: String,
    pub group: String,
    pub label: Option<String>,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

/// What a token lets its holder do: post to one group.
#[derive(Debug, Clone)]
pub struct BotScope {
    pub token_id: String,
    pub group_id: Vec<u8>,
    pub group: String,
}

/// Why a bot refuses a request, each with what the caller can do about it.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BotRefusal {
    #[error("the bearer token is missing or not valid")]
    BadToken,
    #[error("this token ({0}) was revoked")]
    Revoked(String),
    #[error("this bot knows no group named {0:?}")]
    UnknownGroup(String),
    #[error("this token may post only to group {allowed:?}, not {asked:?}")]
    OtherGroup { allowed: String, asked: String },
    #[error(
        "the bot is not a member of group {0:?} (it was removed or left); an admin adds it back"
    )]
    NotMember(String),
    #[error("no alert {0} from this bot in the token's group")]
    UnknownAlert(String),
    #[error("{0}")]
    Invalid(String),
}

/// What a bot posts: a text, or an alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BotPostKind {
    /// A text; `mentions` lets `@handle` in it mention members (not in text that came
    /// from a monitoring system's labels).
    Text {
        reply_to: Option<String>,
        mentions: bool,
    },
    Alert {
        ack_required: bool,
    },
}

/// What a post does to the record of a monitoring system's open alarms, in the same
/// transaction as the post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlarmChange {
    /// The post opens alarm `alarm` (its group key), of which `episode` fires.
    Open { alarm: String, episode: String },
    /// The post resolves alarm `alarm`.
    Close { alarm: String },
}

/// An alarm the bot has posted and that has not been resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenAlarm {
    /// The alert it became.
    pub message_id: String,
    /// What fired, as the intake described it when it opened.
    pub episode: String,
}

/// A post through a bot's intake.
#[derive(Debug, Clone)]
pub struct BotPost {
    pub kind: BotPostKind,
    pub text: String,
    /// The same key (per group) is stored once: a repeat answers with the first message.
    pub idempotency_key: Option<String>,
    pub alarm: Option<AlarmChange>,
}

/// What a post became.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BotPosted {
    pub id: String,
    pub group_id: Vec<u8>,
    /// An earlier post had the same key: nothing new was queued.
    pub duplicate: bool,
}

/// Who has answered a bot's alert.
#[derive(Debug, Clone, Serialize)]
pub struct BotRollcall {
    pub alert: String,
    pub group: String,
    pub sent_at: String,
    pub ack_required: bool,
    /// Whether the relay has stored the alert (it may still wait in the outbox).
    pub delivered: bool,
    pub acknowledged: Vec<RollcallEntry>,
    pub waiting: Vec<String>,
}

fn token_digest(secret: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, secret.as_bytes())
        .as_ref()
        .to_vec()
}

fn same_digest(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A token's id and secret, when it has the shape of one.
fn split_token(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.strip_prefix(TOKEN_PREFIX)?.split_once('_')?;
    let hex = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_hexdigit());
    (hex(id) && id.len() == 12 && hex(secret) && secret.len() == 64).then_some((id, secret))
}

/// Whether `token` has the shape of a bot token (checked before anything is looked up).
pub fn looks_like_bot_token(token: &str) -> bool {
    split_token(token.trim()).is_some()
}

impl Engine {
    /// Whether this device's certificate makes it a bot.
    pub fn is_bot(&self) -> Result<bool, EngineError> {
        Ok(self
            .device()?
            .certificate
            .as_ref()
            .is_some_and(|c| c.is_bot()))
    }

    fn require_bot(&self) -> Result<(), EngineError> {
        if !self.is_bot()? {
            return Err(EngineError::Invalid(
                "this device is not a bot: an admin approves a bot account with `muster approve USER --bot`".into(),
            ));
        }
        Ok(())
    }

    /// (bot) Makes a bearer token for posting to `group`; the token is shown once, and
    /// only its digest is kept.
    pub fn create_bot_token(
        &self,
        group: &str,
        label: Option<&str>,
    ) -> Result<(BotTokenView, String), EngineError> {
        self.require_bot()?;
        let (group_id, name) = self.active_group(group)?;
        let id = random_hex(6);
        let secret = random_hex(32);
        let now = now_ms();
        self.db.execute(
            "INSERT INTO bot_tokens (id, group_id, digest, label, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, group_id, token_digest(&secret), label, now],
        )?;
        let view = BotTokenView {
            id: id.clone(),
            group: name,
            label: label.map(str::to_string),
            created_at: rfc3339_ms(now),
            revoked_at: None,
        };
        Ok((view, format!("{TOKEN_PREFIX}{id}_{secret}")))
    }

    /// (bot) The tokens made on this device, revoked ones included.
    pub fn bot_tokens(&self) -> Result<Vec<BotTokenView>, EngineError> {
        let mut stmt = self.db.prepare(
            "SELECT t.id, COALESCE(g.name, ''), t.label, t.created_at, t.revoked_at
               FROM bot_tokens t LEFT JOIN groups g ON g.group_id = t.group_id
              ORDER BY t.created_at",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok(BotTokenView {
                    id: r.get(0)?,
                    group: r.get(1)?,
                    label: r.get(2)?,
                    created_at: rfc3339_ms(r.get(3)?),
                    revoked_at: r.get::<_, Option<i64>>(4)?.map(rfc3339_ms),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// (bot) Revokes a token at once: a running intake refuses it from its next request.
    pub fn revoke_bot_token(&self, id: &str) -> Result<(), EngineError> {
        let id = id.trim();
        let changed = self.db.execute(
            "UPDATE bot_tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
            params![id, now_ms()],
        )?;
        if changed == 0 {
            let known = self
                .db
                .query_row("SELECT 1 FROM bot_tokens WHERE id = ?1", [id], |_| Ok(()))
                .optional()?
                .is_some();
            return Err(EngineError::Invalid(if known {
                format!("token {id} is revoked already")
            } else {
                format!("no token {id} on this device (see `muster bot token list`)")
            }));
        }
        Ok(())
    }

    /// Checks `token` for posting to `group` (a name or id; the token's own group when
    /// `None`): valid, not revoked, for that group, and the bot still a member of it.
    pub fn bot_authorize(&self, token: &str, group: Option<&str>) -> Result<BotScope, BotRefusal> {
        let (id, secret) = split_token(token.trim()).ok_or(BotRefusal::BadToken)?;
        let stored: Option<(Vec<u8>, Vec<u8>, Option<i64>)> = self
            .db
            .query_row(
                "SELECT group_id, digest, revoked_at FROM bot_tokens WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(|e| BotRefusal::Invalid(format!("the bot's store failed: {e}")))?;
        let Some((group_id, digest, revoked_at)) = stored else {
            return Err(BotRefusal::BadToken);
        };
        if !same_digest(&digest, &token_digest(secret)) {
            return Err(BotRefusal::BadToken);
        }
        if revoked_at.is_some() {
            return Err(BotRefusal::Revoked(id.to_string()));
        }
        let own = self
            .resolve_group(&group_hex(&group_id))
            .map_err(|_| BotRefusal::NotMember("(a group this device no longer knows)".into()))?;
        // The path names the token's group by its name or id; anything else is refused
        // (another group, or one this bot does not know).
        if let Some(asked) = group.filter(|a| *a != own.name && *a != group_hex(&group_id)) {
            return match self.resolve_group(asked) {
                Err(EngineError::UnknownGroup(_)) => {
                    Err(BotRefusal::UnknownGroup(asked.to_string()))
                }
                _ => Err(BotRefusal::OtherGroup {
                    allowed: own.name,
                    asked: asked.to_string(),
                }),
            };
        }
        if own.state != GroupState::Active {
            return Err(BotRefusal::NotMember(own.name));
        }
        Ok(BotScope {
            token_id: id.to_string(),
            group_id,
            group: own.name,
        })
    }

    /// The message an earlier post to the group under `key` became, if any.
    fn posted_under(&self, group_id: &[u8], key: &str) -> Result<Option<String>, EngineError> {
        Ok(self
            .db
            .query_row(
                "SELECT message_id FROM bot_requests WHERE group_id = ?1 AND key = ?2",
                params![group_id, key],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// (bot) Queues a post to the scope's group, or, when its key was seen before, answers
    /// with the message it became then. The key is stored in the same transaction as the
    /// outbox entry, so a crash cannot post it twice.
    pub fn bot_post(&mut self, scope: &BotScope, post: BotPost) -> Result<BotPosted, EngineError> {
        if let Some(key) = &post.idempotency_key {
            if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
                return Err(EngineError::Invalid(format!(
                    "an idempotency key must be 1 to {MAX_IDEMPOTENCY_KEY} bytes"
                )));
            }
            if let Some(id) = self.posted_under(&scope.group_id, key)? {
                return Ok(BotPosted {
                    id,
                    group_id: scope.group_id.clone(),
                    duplicate: true,
                });
            }
        }
        let group = group_hex(&scope.group_id);
        let body = match post.kind {
            BotPostKind::Text { reply_to, mentions } => {
                let mut body = self.text_body(&group, &post.text, reply_to.as_deref())?;
                if let Body::Text {
                    mentions: found, ..
                } = &mut body
                {
                    if !mentions {
                        found.clear();
                    }
                }
                body
            }
            BotPostKind::Alert { ack_required } => {
                let options = if ack_required {
                    AnswerOption::default_pair()
                } else {
                    Vec::new()
                };
                alert_body(&post.text, ack_required, options)?
            }
        };
        let (group_id, _) = self.active_group(&group)?;
        let key = post.idempotency_key;
        let alarm = post.alarm;
        let now = now_ms();
        let mut ids = self.enqueue_all(&group_id, vec![body], |tx, _, id| {
            if let Some(key) = &key {
                tx.execute(
                    "INSERT INTO bot_requests (group_id, key, message_id, at) VALUES (?1, ?2, ?3, ?4)",
                    params![group_id, key, id, now],
                )?;
            }
            match &alarm {
                Some(AlarmChange::Open { alarm, episode }) => tx.execute(
                    "INSERT OR REPLACE INTO bot_alarms (group_id, alarm, message_id, episode)
                     VALUES (?1, ?2, ?3, ?4)",
                    params![group_id, alarm, id, episode],
                )?,
                Some(AlarmChange::Close { alarm }) => tx.execute(
                    "DELETE FROM bot_alarms WHERE group_id = ?1 AND alarm = ?2",
                    params![group_id, alarm],
                )?,
                None => 0,
            };
            Ok(())
        })?;
        let id = ids.pop().unwrap_or_default();
        self.db.execute(
            "DELETE FROM bot_requests WHERE at < ?1",
            [now - IDEMPOTENCY_SECS * 1000],
        )?;
        Ok(BotPosted {
            id,
            group_id,
            duplicate: false,
        })
    }

    /// Whether the relay has stored message `id` (it is no longer waiting in the outbox).
    pub fn relay_stored(&self, group_id: &[u8], id: &str) -> Result<bool, EngineError> {
        let waiting = self
            .db
            .query_row("SELECT 1 FROM outbox WHERE message_id = ?1", [id], |_| {
                Ok(())
            })
            .optional()?
            .is_some();
        let status: Option<String> = self
            .db
            .query_row(
                "SELECT status FROM messages WHERE group_id = ?1 AND id = ?2",
                params![group_id, id],
                |r| r.get(0),
            )
            .optional()?;
        Ok(!waiting && status.is_some_and(|s| s != "failed"))
    }

    /// (bot) The alert a monitoring system's alarm group became, while it is unresolved.
    pub fn bot_alarm(
        &self,
        scope: &BotScope,
        alarm: &str,
    ) -> Result<Option<OpenAlarm>, EngineError> {
        Ok(self
            .db
            .query_row(
                "SELECT message_id, episode FROM bot_alarms WHERE group_id = ?1 AND alarm = ?2",
                params![scope.group_id, alarm],
                |r| {
                    Ok(OpenAlarm {
                        message_id: r.get(0)?,
                        episode: r.get(1)?,
                    })
                },
            )
            .optional()?)
    }

    /// (bot) Who has acknowledged one of this bot's alerts in the scope's group.
    pub fn bot_rollcall(&self, scope: &BotScope, id: &str) -> Result<BotRollcall, BotRefusal> {
        let unknown = || BotRefusal::UnknownAlert(id.to_string());
        let (group_id, target) = self.find_message(id).map_err(|_| unknown())?;
        let me = self
            .device()
            .map_err(|e| BotRefusal::Invalid(e.to_string()))?;
        if group_id != scope.group_id {
            return Err(unknown());
        }
        let rollcall = self.rollcall(&target).map_err(|_| unknown())?;
        if rollcall.alert.sender != me.user {
            return Err(unknown());
        }
        let delivered = self.relay_stored(&group_id, &target).unwrap_or(false);
        let (acknowledged, waiting): (Vec<RollcallEntry>, Vec<RollcallEntry>) = rollcall
            .members
            .into_iter()
            .partition(|e| e.acked_at.is_some());
        Ok(BotRollcall {
            alert: target,
            group: scope.group.clone(),
            sent_at: rollcall.alert.sent_at.clone(),
            ack_required: rollcall.alert.ack_required,
            delivered,
            acknowledged,
            waiting: waiting.into_iter().map(|e| e.user).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_one_shape_and_digests_compare_whole() {
        let secret = "ab".repeat(32);
        let token = format!("{TOKEN_PREFIX}0123456789ab_{secret}");
        assert_eq!(split_token(&token), Some(("0123456789ab", secret.as_str())));
        assert_eq!(split_token("mbt_0123456789ab"), None);
        assert_eq!(split_token(&format!("mbt_0123_{secret}")), None);
        assert_eq!(split_token(&format!("xyz_0123456789ab_{secret}")), None);
        assert_eq!(split_token(&format!("mbt_0123456789ab_{secret}zz")), None);
        let d = token_digest(&secret);
        assert!(same_digest(&d, &token_digest(&secret)));
        assert!(!same_digest(&d, &token_digest(&"cd".repeat(32))));
        assert!(!same_digest(&d, &d[..31]));
    }
}
