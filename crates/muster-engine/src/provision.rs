//! Bulk provisioning: a TOML description of users and groups, and the plan that makes the
//! organisation match it. Parsing and planning are pure; the engine carries the plan out.

use muster_proto::{validate_handle, PendingEnrolment, Profile, Role};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The desired organisation, as written by an admin.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrgSpec {
    #[serde(default)]
    pub users: Vec<UserSpec>,
    #[serde(default)]
    pub groups: Vec<GroupSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSpec {
    pub handle: String,
    pub display_name: String,
    pub title: Option<String>,
    pub department: Option<String>,
    #[serde(default = "default_roles")]
    pub roles: Vec<String>,
}

fn default_roles() -> Vec<String> {
    vec!["member".into()]
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    pub name: String,
    #[serde(default)]
    pub members: Vec<String>,
    #[serde(default)]
    pub managed: bool,
}

/// Why a provisioning file was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("{0}")]
    Syntax(String),
    #[error("line {line}: {message}")]
    Invalid { line: usize, message: String },
}

impl UserSpec {
    pub fn profile(&self) -> Profile {
        Profile {
            display_name: self.display_name.clone(),
            title: self.title.clone(),
            department: self.department.clone(),
        }
    }

    /// Roles in certificate order; admins are members too.
    pub fn roles(&self) -> Vec<Role> {
        if self.roles.iter().any(|r| r == "admin") {
            vec![Role::Admin, Role::Member]
        } else {
            vec![Role::Member]
        }
    }
}

/// The line (1-based) where `needle` occurs for the `nth` time (0-based), for error messages.
fn line_of(text: &str, needle: &str, nth: usize) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .nth(nth)
        .map(|(i, _)| i + 1)
        .unwrap_or(0)
}

/// Parses and checks a provisioning file.
pub fn parse_spec(text: &str) -> Result<OrgSpec, SpecError> {
    let spec: OrgSpec = toml::from_str(text).map_err(|e| SpecError::Syntax(e.to_string()))?;
    let mut seen = BTreeMap::<&str, usize>::new();
    for user in &spec.users {
        let needle = format!("\"{}\"", user.handle);
        let count = seen.entry(&user.handle).or_default();
        let line = line_of(text, &needle, *count);
        *count += 1;
        if *count > 1 {
            return Err(SpecError::Invalid {
                line,
                message: format!("duplicate user handle {:?}", user.handle),
            });
        }
        validate_handle(&user.handle).map_err(|e| SpecError::Invalid {
            line,
            message: e.to_string(),
        })?;
        if user.display_name.trim().is_empty() {
            return Err(SpecError::Invalid {
                line,
                message: format!("user {:?} needs a display_name", user.handle),
            });
        }
        if let Some(bad) = user.roles.iter().find(|r| *r != "admin" && *r != "member") {
            return Err(SpecError::Invalid {
                line,
                message: format!(
                    "user {:?}: unknown role {bad:?} (use admin or member)",
                    user.handle
                ),
            });
        }
    }
    let mut names = BTreeSet::new();
    for group in &spec.groups {
        let line = line_of(text, &format!("\"{}\"", group.name), 0);
        if group.name.trim().is_empty() || group.name.len() > 64 {
            return Err(SpecError::Invalid {
                line,
                message: "group names must be 1-64 characters".into(),
            });
        }
        if !names.insert(group.name.as_str()) {
            return Err(SpecError::Invalid {
                line: line_of(text, &format!("\"{}\"", group.name), 1),
                message: format!("duplicate group name {:?}", group.name),
            });
        }
    }
    Ok(spec)
}

/// What the organisation looks like now, from this admin device's point of view.
#[derive(Debug, Clone, Default)]
pub struct OrgState {
    /// The admin applying the plan; always kept in groups it manages.
    pub me: String,
    /// Enrolled users with their approved profile and roles.
    pub enrolled: BTreeMap<String, (Profile, Vec<Role>)>,
    /// Enrolment requests whose proofs this device checked.
    pub pending: Vec<PendingEnrolment>,
    /// Enrolment requests it will not approve, and why.
    pub unproven: Vec<String>,
    /// Users with an open invite.
    pub invited: BTreeSet<String>,
    /// This device's active groups by name: members and whether managed.
    pub groups: BTreeMap<String, (BTreeSet<String>, bool)>,
    /// Who each of those groups lists as waiting to join.
    pub waiting: BTreeMap<String, BTreeSet<String>>,
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    Invite {
        user: String,
    },
    Approve {
        user: String,
        device_id: String,
    },
    UpdateCertificates {
        user: String,
    },
    CreateGroup {
        group: String,
        members: Vec<String>,
        managed: bool,
        /// People in the file not enrolled yet: their devices join once they connect.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        waiting: Vec<String>,
    },
    AddMember {
        group: String,
        user: String,
    },
    /// Lists someone not enrolled yet as waiting to join: their device joins once it
    /// connects after their approval.
    ListWaiting {
        group: String,
        user: String,
    },
    RemoveMember {
        group: String,
        user: String,
    },
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Invite { user } => write!(f, "invite {user}"),
            Action::Approve { user, device_id } => {
                write!(f, "approve {user}'s enrolment (device {device_id})")
            }
            Action::UpdateCertificates { user } => {
                write!(f, "update {user}'s profile and roles")
            }
            Action::CreateGroup {
                group,
                members,
                managed,
                waiting,
            } => {
                write!(
                    f,
                    "create {}group {group} with {}",
                    if *managed { "managed " } else { "" },
                    if members.is_empty() {
                        "no one else yet".to_string()
                    } else {
                        members.join(", ")
                    }
                )?;
                if !waiting.is_empty() {
                    write!(f, " ({} to join once enrolled)", waiting.join(", "))?;
                }
                Ok(())
            }
            Action::AddMember { group, user } => write!(f, "add {user} to {group}"),
            Action::ListWaiting { group, user } => {
                write!(f, "have {user} join {group} once enrolled")
            }
            Action::RemoveMember { group, user } => write!(f, "remove {user} from {group}"),
        }
    }
}

/// The steps that make `state` match `spec`, and what cannot be done.
/// Users and groups not in the file are left alone; nobody is revoked.
pub fn plan(spec: &OrgSpec, state: &OrgState) -> (Vec<Action>, Vec<String>) {
    let mut actions = Vec::new();
    let mut problems: Vec<String> = state
        .unproven
        .iter()
        .map(|why| format!("not approving {why}"))
        .collect();
    let known: BTreeSet<&str> = spec.users.iter().map(|u| u.handle.as_str()).collect();
    for user in &spec.users {
        let handle = &user.handle;
        if let Some((profile, roles)) = state.enrolled.get(handle) {
            if roles.contains(&Role::Bot) || roles.contains(&Role::Archive) {
                problems.push(format!(
                    "not changing {handle}: it is a service account (bot or archive), which the file does not manage; take it out of [[users]]"
                ));
                continue;
            }
            if *profile != user.profile() || *roles != user.roles() {
                actions.push(Action::UpdateCertificates {
                    user: handle.clone(),
                });
            }
        } else if let Some(p) = state
            .pending
            .iter()
            .find(|p| p.user == *handle && !p.linked)
        {
            actions.push(Action::Approve {
                user: handle.clone(),
                device_id: p.device_id.clone(),
            });
        } else if !state.invited.contains(handle) {
            actions.push(Action::Invite {
                user: handle.clone(),
            });
        }
    }
    for group in &spec.groups {
        let mut wanted = BTreeSet::new();
        let mut to_wait = BTreeSet::new();
        for member in &group.members {
            if *member == state.me {
                continue;
            }
            if state.enrolled.contains_key(member) {
                wanted.insert(member.clone());
            } else if known.contains(member.as_str()) {
                to_wait.insert(member.clone());
            } else {
                problems.push(format!(
                    "group {}: unknown user {member:?} (not enrolled and not in the file)",
                    group.name
                ));
            }
        }
        match state.groups.get(&group.name) {
            None => actions.push(Action::CreateGroup {
                group: group.name.clone(),
                members: wanted.into_iter().collect(),
                managed: group.managed,
                waiting: to_wait.into_iter().collect(),
            }),
            Some((present, managed)) => {
                if *managed != group.managed {
                    problems.push(format!(
                        "group {}: exists as {}managed; changing that is not supported",
                        group.name,
                        if *managed { "" } else { "not " }
                    ));
                }
                for user in wanted.iter().filter(|u| !present.contains(*u)) {
                    actions.push(Action::AddMember {
                        group: group.name.clone(),
                        user: user.clone(),
                    });
                }
                let listed = state.waiting.get(&group.name);
                for user in to_wait
                    .iter()
                    .filter(|u| !present.contains(*u) && !listed.is_some_and(|l| l.contains(*u)))
                {
                    actions.push(Action::ListWaiting {
                        group: group.name.clone(),
                        user: user.clone(),
                    });
                }
                let listed_only = listed
                    .into_iter()
                    .flatten()
                    .filter(|u| !present.contains(*u));
                for user in present
                    .iter()
                    .chain(listed_only)
                    .filter(|u| **u != state.me && !group.members.contains(u))
                {
                    actions.push(Action::RemoveMember {
                        group: group.name.clone(),
                        user: user.clone(),
                    });
                }
            }
        }
    }
    (actions, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[[users]]
handle = "bob"
display_name = "Bob B"
title = "Engineer"

[[users]]
handle = "carol"
display_name = "Carol C"
roles = ["admin"]

[[groups]]
name = "ops"
members = ["alice", "bob", "carol"]
managed = true
"#;

    fn profile(name: &str, title: Option<&str>) -> Profile {
        Profile {
            display_name: name.into(),
            title: title.map(Into::into),
            department: None,
        }
    }

    #[test]
    fn a_fresh_org_gets_invites_and_groups() {
        let spec = parse_spec(FILE).unwrap();
        let state = OrgState {
            me: "alice".into(),
            ..Default::default()
        };
        let (actions, problems) = plan(&spec, &state);
        assert!(problems.is_empty());
        assert_eq!(
            actions,
            vec![
                Action::Invite { user: "bob".into() },
                Action::Invite {
                    user: "carol".into()
                },
                Action::CreateGroup {
                    group: "ops".into(),
                    members: vec![],
                    managed: true,
                    waiting: vec!["bob".into(), "carol".into()],
                },
            ]
        );
    }

    #[test]
    fn a_matching_org_needs_nothing_and_drift_is_corrected() {
        let spec = parse_spec(FILE).unwrap();
        let mut state = OrgState {
            me: "alice".into(),
            ..Default::default()
        };
        state.enrolled.insert(
            "bob".into(),
            (profile("Bob B", Some("Engineer")), vec![Role::Member]),
        );
        state.enrolled.insert(
            "carol".into(),
            (profile("Carol C", None), vec![Role::Admin, Role::Member]),
        );
        state.groups.insert(
            "ops".into(),
            (["alice", "bob", "carol"].map(String::from).into(), true),
        );
        assert_eq!(plan(&spec, &state), (vec![], vec![]));

        state.enrolled.get_mut("bob").unwrap().0.title = None;
        state.groups.get_mut("ops").unwrap().0.remove("carol");
        state
            .groups
            .get_mut("ops")
            .unwrap()
            .0
            .insert("mallory".into());
        let (actions, _) = plan(&spec, &state);
        assert_eq!(
            actions,
            vec![
                Action::UpdateCertificates { user: "bob".into() },
                Action::AddMember {
                    group: "ops".into(),
                    user: "carol".into()
                },
                Action::RemoveMember {
                    group: "ops".into(),
                    user: "mallory".into()
                },
            ]
        );
    }

    #[test]
    fn a_service_account_listed_as_a_user_keeps_its_role() {
        let spec = parse_spec("[[users]]\nhandle = \"pager\"\ndisplay_name = \"Pager\"\n").unwrap();
        let mut state = OrgState::default();
        state.enrolled.insert(
            "pager".into(),
            (
                Profile {
                    display_name: "Pager bot".into(),
                    ..Default::default()
                },
                vec![Role::Bot],
            ),
        );
        let (actions, problems) = plan(&spec, &state);
        assert!(actions.is_empty(), "{actions:?}");
        assert!(problems[0].contains("service account"), "{problems:?}");
    }

    #[test]
    fn pending_enrolments_are_approved_and_invited_users_wait() {
        let spec = parse_spec(FILE).unwrap();
        let state = OrgState {
            me: "alice".into(),
            invited: ["carol".to_string()].into(),
            pending: vec![PendingEnrolment {
                user: "bob".into(),
                linked: false,
                device_id: "d1".into(),
                device_key: vec![],
                profile: Profile::default(),
                requested_at: 0,
                grant: None,
                request: None,
                confirmation: None,
            }],
            ..Default::default()
        };
        let (actions, _) = plan(&spec, &state);
        assert_eq!(
            actions[0],
            Action::Approve {
                user: "bob".into(),
                device_id: "d1".into()
            }
        );
        assert!(!actions.iter().any(|a| matches!(a, Action::Invite { .. })));
        // An existing group lists whoever is not enrolled yet, once.
        let state = OrgState {
            groups: [("ops".to_string(), (["alice".to_string()].into(), true))].into(),
            waiting: [(
                "ops".to_string(),
                ["carol".to_string(), "mallory".to_string()].into(),
            )]
            .into(),
            ..state
        };
        let (actions, _) = plan(&spec, &state);
        let listed: Vec<&Action> = actions
            .iter()
            .filter(|a| matches!(a, Action::ListWaiting { .. }))
            .collect();
        assert_eq!(
            listed,
            [&Action::ListWaiting {
                group: "ops".into(),
                user: "bob".into()
            }]
        );
        // Someone listed who is no longer in the file's group is struck off.
        assert!(actions.contains(&Action::RemoveMember {
            group: "ops".into(),
            user: "mallory".into()
        }));
    }

    #[test]
    fn bad_files_name_the_line() {
        let dup = "[[users]]\nhandle = \"bob\"\ndisplay_name = \"B\"\n\n[[users]]\nhandle = \"bob\"\ndisplay_name = \"B2\"\n";
        assert_eq!(
            parse_spec(dup),
            Err(SpecError::Invalid {
                line: 6,
                message: "duplicate user handle \"bob\"".into()
            })
        );
        let bad_role = "[[users]]\nhandle = \"bob\"\ndisplay_name = \"B\"\nroles = [\"boss\"]\n";
        assert!(matches!(
            parse_spec(bad_role),
            Err(SpecError::Invalid { line: 2, .. })
        ));
        let syntax = "[[users]]\nhandle = \"bob\"\ndisplay_name = \n";
        let Err(SpecError::Syntax(msg)) = parse_spec(syntax) else {
            panic!()
        };
        assert!(msg.contains("line 3"), "{msg}");
        let unknown_field = "[[users]]\nhandle = \"bob\"\ndisplay_name = \"B\"\nfavourite = 1\n";
        assert!(parse_spec(unknown_field).is_err());
        let unknown_member = "[[groups]]\nname = \"g\"\nmembers = [\"zed\"]\n";
        let spec = parse_spec(unknown_member).unwrap();
        let (_, problems) = plan(
            &spec,
            &OrgState {
                me: "alice".into(),
                ..Default::default()
            },
        );
        assert!(problems[0].contains("unknown user \"zed\""));
    }
}
