//! Queries and views: groups, message listings, search, per-group and per-user settings,
//! roll-calls and the board.

use super::*;

impl Engine {
    /// Ids of the groups this device is an active member of.
    /// The certificates in the leaves of every group this device is in.
    pub(crate) fn certificates_in_groups(&self) -> Result<Vec<Certificate>, EngineError> {
        let mut certs = Vec::new();
        for group_id in self.active_group_ids()? {
            let provider = Provider::new(&self.crypto, &self.db);
            certs.extend(
                load_group(&provider, &group_id)?
                    .members()
                    .filter_map(|m| certificate_in(&m.credential)),
            );
        }
        Ok(certs)
    }

    pub(super) fn active_group_ids(&self) -> Result<Vec<Vec<u8>>, EngineError> {
        let mut stmt = self
            .db
            .prepare("SELECT group_id FROM groups WHERE state = ?1")?;
        let ids = stmt
            .query_map([GroupState::Active], |r| r.get(0))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ids)
    }

    pub(super) fn group_view(&self, group_id: &[u8]) -> Result<GroupView, EngineError> {
        let (name, state, retain_secs, disappear_secs): (
            String,
            GroupState,
            Option<i64>,
            Option<i64>,
        ) = self.db.query_row(
            "SELECT name, state, retain_secs, disappear_secs FROM groups WHERE group_id = ?1",
            [group_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?;
        let view = view_of(&self.db, "group", &group_hex(group_id))?;
        let provider = Provider::new(&self.crypto, &self.db);
        let group = MlsGroup::load(provider.storage(), &GroupId::from_slice(group_id))
            .map_err(EngineError::mls)?;
        let mut member_names = std::collections::BTreeMap::new();
        let mut bot_members = Vec::new();
        let (members, epoch) = match &group {
            Some(g) if state == GroupState::Active => {
                let mut certs: Vec<Certificate> = g
                    .members()
                    .filter_map(|m| certificate_in(&m.credential))
                    .collect();
                certs.sort_by_key(|c| c.body.not_before);
                for c in &certs {
                    member_names.insert(c.body.user.clone(), c.body.profile.display_name.clone());
                    if c.is_bot() && !bot_members.contains(&c.body.user) {
                        bot_members.push(c.body.user.clone());
                    }
                }
                bot_members.sort();
                let mut users: Vec<String> = certs.into_iter().map(|c| c.body.user).collect();
                users.sort();
                users.dedup();
                (users, g.epoch().as_u64())
            }
            Some(g) => (Vec::new(), g.epoch().as_u64()),
            None => (Vec::new(), 0),
        };
        let archive_members = match &group {
            Some(g) if state == GroupState::Active => {
                archive_members(g, &self.device()?.org, &self.db)?
            }
            _ => Vec::new(),
        };
        let waiting = {
            let mut waiting: Vec<String> = self
                .db
                .prepare("SELECT user FROM pending_members WHERE group_id = ?1")?
                .query_map([group_id], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            waiting.extend(group.as_ref().map(waiting_in).unwrap_or_default());
            waiting.retain(|u| !members.contains(u));
            waiting.sort();
            waiting.dedup();
            waiting
        };
        Ok(GroupView {
            name,
            id: group_hex(group_id),
            members,
            member_names,
            waiting,
            epoch,
            state,
            managed: group.as_ref().is_some_and(|g| policy_of(g).managed),
            archived: group.as_ref().is_some_and(|g| policy_of(g).archived),
            archive_readable_by: crate::legal::stored_officers(&self.db)?
                .map(|o| o.describe())
                .unwrap_or_else(|| "readable by the archive's host".into()),
            archive_members,
            bot_members,
            disappear_secs: disappear_secs.map(|v| v as u64),
            retain_secs: retain_secs.map(|v| v as u64),
            muted: view.muted,
            pinned: view.pinned,
            notify_level: view.level,
            unread: self.db.query_row(
                "SELECT COUNT(*) FROM messages WHERE group_id = ?1 AND read_receipt_due = 1",
                [group_id],
                |r| r.get::<_, i64>(0),
            )? as usize,
        })
    }

    /// Every group this device knows: pinned first, then oldest first.
    pub fn groups(&self) -> Result<Vec<GroupView>, EngineError> {
        let mut stmt = self
            .db
            .prepare("SELECT group_id FROM groups ORDER BY created_at, name")?;
        let ids = stmt
            .query_map([], |r| r.get::<_, Vec<u8>>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        let mut views = ids
            .iter()
            .map(|id| self.group_view(id))
            .collect::<Result<Vec<_>, _>>()?;
        views.sort_by_key(|g| !g.pinned);
        Ok(views)
    }

    /// Changes this user's view of a group: mute, pin, notification level.
    pub fn set_group_view(
        &self,
        group: &str,
        muted: Option<bool>,
        pinned: Option<bool>,
        level: Option<&str>,
    ) -> Result<GroupView, EngineError> {
        if let Some(level) = level {
            if !matches!(level, "all" | "mentions" | "alerts") {
                return Err(EngineError::Invalid(format!(
                    "notification level {level:?}: use all, mentions or alerts"
                )));
            }
        }
        let KnownGroup { id: group_id, .. } = self.resolve_group(group)?;
        let target = group_hex(&group_id);
        self.db.execute(
            "INSERT OR IGNORE INTO view_settings (scope, target) VALUES ('group', ?1)",
            [&target],
        )?;
        self.db.execute(
            "UPDATE view_settings SET muted = COALESCE(?2, muted), pinned = COALESCE(?3, pinned),
                 level = COALESCE(?4, level) WHERE scope = 'group' AND target = ?1",
            params![target, muted, pinned, level],
        )?;
        self.group_view(&group_id)
    }

    /// Mutes (or unmutes) a person: their messages no longer notify; their alerts still do.
    pub fn set_user_muted(&self, user: &str, muted: bool) -> Result<(), EngineError> {
        validate_handle(user)?;
        self.db.execute(
            "INSERT INTO view_settings (scope, target, muted) VALUES ('user', ?1, ?2)
             ON CONFLICT (scope, target) DO UPDATE SET muted = excluded.muted",
            params![user, muted],
        )?;
        Ok(())
    }

    /// People this user muted.
    pub fn muted_users(&self) -> Result<Vec<String>, EngineError> {
        let mut stmt = self.db.prepare(
            "SELECT target FROM view_settings WHERE scope = 'user' AND muted = 1 ORDER BY target",
        )?;
        let users = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(users)
    }

    // ---- messages -----------------------------------------------------------------

    /// Who has and has not acknowledged an alert, and who gave which answer.
    pub fn rollcall(&self, id: &str) -> Result<Rollcall, EngineError> {
        let (group_id, target) = self.find_message(id)?;
        let alert = self.message_by_id(&group_id, &target)?;
        if alert.kind != "alert" {
            return Err(EngineError::Invalid(format!(
                "message {target} is not an alert"
            )));
        }
        let acks: Vec<(String, i64, Option<String>)> = {
            let mut stmt = self.db.prepare(
                "SELECT user, at, answer FROM acks WHERE group_id = ?1 AND message_id = ?2",
            )?;
            let rows = stmt
                .query_map(params![group_id, target], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows
        };
        let mut entries: Vec<RollcallEntry> = self
            .asked_members(&group_id, &alert.sender)?
            .into_iter()
            .map(|user| {
                let ack = acks.iter().find(|(u, _, _)| *u == user);
                RollcallEntry {
                    user,
                    acked_at: ack.map(|(_, at, _)| rfc3339_ms(*at)),
                    answer: ack.and_then(|(_, _, answer)| answer.clone()),
                }
            })
            .collect();
        entries
            .sort_by(|a, b| (a.acked_at.is_none(), &a.user).cmp(&(b.acked_at.is_none(), &b.user)));
        let answers = alert
            .options
            .iter()
            .map(|o| AnswerTally {
                answer: o.label.clone(),
                urgent: o.urgent,
                users: entries
                    .iter()
                    .filter(|e| e.answer.as_deref() == Some(o.label.as_str()))
                    .map(|e| e.user.clone())
                    .collect(),
            })
            .collect();
        Ok(Rollcall {
            acknowledged: entries.iter().filter(|e| e.acked_at.is_some()).count(),
            not_answered: entries
                .iter()
                .filter(|e| e.acked_at.is_none())
                .map(|e| e.user.clone())
                .collect(),
            answers,
            members: entries,
            alert,
        })
    }

    /// Alerts asking this user for an acknowledgement they have not given yet.
    pub fn unacknowledged_alerts(&self) -> Result<Vec<MessageView>, EngineError> {
        let me = self.device()?;
        self.query_messages(
            "WHERE m.kind = 'alert' AND m.ack_required = 1 AND m.deleted = 0 AND m.sender != ?1
               AND g.state = ?2
               AND NOT EXISTS (SELECT 1 FROM acks a WHERE a.group_id = m.group_id AND a.message_id = m.id AND a.user = ?1)
             ORDER BY m.seq",
            params![me.user, GroupState::Active],
        )
    }

    /// A local setting of this device (such as `notify-command`).
    pub fn setting(&self, key: &str) -> Result<Option<String>, EngineError> {
        Ok(self
            .db
            .query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Sets (or, with `None`, removes) a local setting.
    pub fn set_setting(&self, key: &str, value: Option<&str>) -> Result<(), EngineError> {
        match value {
            Some(v) => self.db.execute(
                "INSERT INTO settings (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, v],
            )?,
            None => self
                .db
                .execute("DELETE FROM settings WHERE key = ?1", [key])?,
        };
        Ok(())
    }

    /// The group's situation board.
    pub fn board(&self, group: &str) -> Result<Vec<BoardEntry>, EngineError> {
        let KnownGroup { id: group_id, .. } = self.resolve_group(group)?;
        conversation::board(&self.db, &group_id)
    }

    pub(super) fn message_by_id(
        &self,
        group_id: &[u8],
        id: &str,
    ) -> Result<MessageView, EngineError> {
        let rows =
            self.query_messages("WHERE m.group_id = ?1 AND m.id = ?2", params![group_id, id])?;
        rows.into_iter()
            .next()
            .ok_or_else(|| EngineError::Invalid(format!("no message {id}")))
    }

    pub(super) fn query_messages(
        &self,
        filter: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<MessageView>, EngineError> {
        let sql = format!(
            "SELECT m.seq, m.id, g.name, m.group_id, m.kind, m.sender, m.sender_device, m.body, m.sent_at, m.received_at, m.status,
                    m.reply_to, m.mentions, m.edited_at IS NOT NULL, m.deleted, m.ack_required,
                    m.attachment, m.saved_to, m.read_receipt_due, m.options, m.drill
             FROM messages m JOIN groups g ON g.group_id = m.group_id {filter}"
        );
        let mut stmt = self.db.prepare(&sql)?;
        let rows = stmt
            .query_map(params, |r| {
                Ok(MessageView {
                    local_seq: r.get(0)?,
                    id: r.get(1)?,
                    group: r.get(2)?,
                    group_id: group_hex(&r.get::<_, Vec<u8>>(3)?),
                    kind: r.get(4)?,
                    sender: r.get(5)?,
                    sender_device: r.get(6)?,
                    text: r.get(7)?,
                    sent_at: rfc3339_ms(r.get(8)?),
                    received_at: rfc3339_ms(r.get(9)?),
                    status: r.get(10)?,
                    reply_to: r.get(11)?,
                    mentions: serde_json::from_str(&r.get::<_, String>(12)?).unwrap_or_default(),
                    edited: r.get(13)?,
                    deleted: r.get(14)?,
                    reactions: Default::default(),
                    read_by: Vec::new(),
                    delivered_to: Vec::new(),
                    audience: 0,
                    ack_required: r.get(15)?,
                    acked_by: Vec::new(),
                    answers: Default::default(),
                    options: conversation::alert_options(
                        r.get::<_, Option<String>>(19)?.as_deref(),
                    ),
                    unread: r.get(18)?,
                    drill: r.get(20)?,
                    attachment: r
                        .get::<_, Option<String>>(16)?
                        .and_then(|a| serde_json::from_str::<AttachmentRef>(&a).ok())
                        .map(|a| AttachmentView {
                            name: a.name,
                            mime: a.mime,
                            size: a.size,
                            sha256: a.sha256,
                            saved_to: None,
                        }),
                })
                .map(|mut view| {
                    if let Some(a) = view.attachment.as_mut() {
                        a.saved_to = r.get(17).ok().flatten();
                    }
                    view
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut rows = rows;
        let mut audiences: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for m in rows.iter_mut().filter(|m| m.kind != "system") {
            let group_id = hex::decode(&m.group_id).unwrap_or_default();
            let d = conversation::decorations(&self.db, &group_id, &m.id)?;
            m.reactions = d.reactions;
            m.read_by = d.read_by;
            m.delivered_to = d.delivered_to;
            m.acked_by = d.acked_by;
            m.answers = d.answers;
            if !audiences.contains_key(&m.group_id) {
                let members = self
                    .group_view(&group_id)
                    .map(|g| g.members)
                    .unwrap_or_default();
                audiences.insert(m.group_id.clone(), members);
            }
            m.audience = audiences[&m.group_id]
                .iter()
                .filter(|u| **u != m.sender)
                .count();
        }
        Ok(rows)
    }

    /// The latest `limit` messages of a group, oldest first.
    pub fn read(&self, group: &str, limit: usize) -> Result<Vec<MessageView>, EngineError> {
        let KnownGroup { id: group_id, .. } = self.resolve_group(group)?;
        // Messages still on their way to the relay (no sort key yet) come last; each half
        // is read newest first along an index, so the cost does not grow with history.
        let mut rows = self.query_messages(
            "WHERE m.group_id = ?1 AND m.sort_key IS NULL ORDER BY m.seq DESC LIMIT ?2",
            params![group_id, limit as i64],
        )?;
        if rows.len() < limit {
            rows.extend(self.query_messages(
                "WHERE m.group_id = ?1 AND m.sort_key IS NOT NULL
                 ORDER BY m.sort_key DESC, m.seq DESC LIMIT ?2",
                params![group_id, (limit - rows.len()) as i64],
            )?);
        }
        rows.reverse();
        Ok(rows)
    }

    /// Full-text search over this device's own messages, newest first.
    pub fn search(
        &self,
        query: &str,
        group: Option<&str>,
        limit: usize,
    ) -> Result<Vec<MessageView>, EngineError> {
        // Every word is matched literally (as a prefix), so user input is never FTS syntax.
        let terms: Vec<String> = query
            .split_whitespace()
            .map(|w| format!("\"{}\"*", w.replace('"', "\"\"")))
            .collect();
        if terms.is_empty() {
            return Err(EngineError::Invalid("search for at least one word".into()));
        }
        let fts_query = terms.join(" ");
        let group_id = group
            .map(|g| self.resolve_group(g).map(|g| g.id))
            .transpose()?;
        self.query_messages(
            "JOIN messages_fts ON messages_fts.rowid = m.seq
             WHERE messages_fts MATCH ?1 AND m.deleted = 0 AND (?2 IS NULL OR m.group_id = ?2)
             ORDER BY messages_fts.rowid DESC LIMIT ?3",
            params![fts_query, group_id, limit as i64],
        )
    }

    /// Messages of a group stored after local position `after`, oldest first.
    pub fn messages_after(&self, group: &str, after: i64) -> Result<Vec<MessageView>, EngineError> {
        let KnownGroup { id: group_id, .. } = self.resolve_group(group)?;
        self.query_messages(
            "WHERE m.group_id = ?1 AND m.seq > ?2 ORDER BY m.sort_key IS NULL, m.sort_key, m.seq",
            params![group_id, after],
        )
    }

    // ---- sync ---------------------------------------------------------------------
}

/// This user's view settings for a group or person.
pub(super) struct ViewSettings {
    pub(super) muted: bool,
    pub(super) pinned: bool,
    pub(super) level: String,
}

pub(super) fn view_of(
    db: &Connection,
    scope: &str,
    target: &str,
) -> Result<ViewSettings, EngineError> {
    Ok(db
        .prepare_cached(
            "SELECT muted, pinned, level FROM view_settings WHERE scope = ?1 AND target = ?2",
        )?
        .query_row(params![scope, target], |r| {
            Ok(ViewSettings {
                muted: r.get(0)?,
                pinned: r.get(1)?,
                level: r.get(2)?,
            })
        })
        .optional()?
        .unwrap_or(ViewSettings {
            muted: false,
            pinned: false,
            level: "all".into(),
        }))
}
