//! The rules every commit and proposal in a Muster group must follow, as pure functions
//! that members' clients and the relay both run. One implementation on both sides means
//! the relay never sequences a change that members will refuse (which would leave them
//! behind for good), and members still refuse whatever a hostile relay slips in.
//!
//! The rules, for every proposal a commit carries and every standalone proposal:
//! - its proposer is a member whose certificate verifies (organisation root, dates, the
//!   leaf's own key, not revoked, nor issued by a revoked admin device);
//! - an added member's certificate verifies the same way;
//! - an update keeps the leaf's user and device (a member cannot put on someone else's
//!   certificate), and so does the committer's own new leaf;
//! - only admins change the group context (its policy), except the list of people
//!   waiting to join, which whoever may add (or remove) a person may change for them;
//! - in a managed group only admins add or remove people; a member may add their own
//!   other devices and remove revoked devices, or devices whose certificate ran out;
//! - a bot (a service account) administers nothing: it adds only its own devices,
//!   removes only its own devices and revoked or lapsed ones, and changes no group context;
//! - while a group is archived, nobody removes an unrevoked archive device;
//! - an external join comes from a device already in the group replacing its own leaf,
//!   or from a device of someone the group lists as waiting to join, and does nothing
//!   else;
//! - nothing else (pre-shared keys, re-initialisation, custom proposals).

use muster_proto::{
    validate_handle, Certificate, GroupPolicy, OrgDescriptor, GROUP_POLICY_EXTENSION,
    MAX_PENDING_SEATS,
};
use openmls::prelude::*;

/// What the checking device knows besides the group itself.
pub struct Context<'a> {
    pub org: &'a OrgDescriptor,
    /// Seconds since the Unix epoch.
    pub now: u64,
    /// Whether a certificate may no longer be used, as far as the checking device knows:
    /// its device is revoked, or the admin device that issued it was revoked without
    /// vouching for it ([`muster_proto::RevocationList::covers`]).
    pub revoked: &'a dyn Fn(&Certificate) -> bool,
    /// Whether the checker holds a currently valid certificate for a device (by id):
    /// a device renewed but not yet updated is then not lapsed. Only the relay, which
    /// decides what every member sees, answers anything but `false`: members must all
    /// judge a commit alike.
    pub renewed: &'a dyn Fn(&str) -> bool,
}

/// The longest a device stays a member after its certificate ran out before any member
/// may remove it: clocks differ, and a renewal takes a sync to reach the device.
pub const LAPSE_GRACE_SECS: u64 = 600;

/// How long after `cert` ran out its device may be removed by any member: a tenth of the
/// certificate's lifetime, at most [`LAPSE_GRACE_SECS`]. Everyone reads it from the
/// certificate itself, so all judge a removal alike.
pub fn lapse_grace(cert: &Certificate) -> u64 {
    (cert.body.not_after.saturating_sub(cert.body.not_before) / 10).min(LAPSE_GRACE_SECS)
}

/// Whether a certificate ran out long enough ago that any member may remove its device.
pub fn lapsed(cert: &Certificate, now: u64) -> bool {
    cert.body.not_after.saturating_add(lapse_grace(cert)) < now
}

/// Why a commit or proposal is refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("{who} has no valid identity: {why}")]
    Identity { who: String, why: String },
    #[error("it comes from device {device} of {user}, which is revoked")]
    Revoked { user: String, device: String },
    #[error("it does not come from a member of the group")]
    NotFromMember,
    #[error("{by} may not {what} in this managed group: only an admin may")]
    Managed { by: String, what: &'static str },
    #[error("{by} is a bot, and a bot may not {what}")]
    Bot { by: String, what: &'static str },
    #[error("{by} may not change this group's policy: only an admin may")]
    Policy { by: String },
    #[error("{by}'s change removes the compliance archive from an archived group; archiving must be turned off first")]
    ArchiveRemoval { by: String },
    #[error("{by} tried to take over another identity: the leaf of {old} would carry the certificate of {new}")]
    IdentityChange {
        by: String,
        old: String,
        new: String,
    },
    #[error("it removes a member that is not in the group")]
    NoSuchMember,
    #[error("{by}'s update goes back to an older certificate of the same device")]
    OlderCertificate { by: String },
    #[error("{0}: Muster groups do not use this kind of proposal")]
    Unsupported(&'static str),
}

/// The identity certificate a credential carries, if it decodes (not yet verified).
pub fn certificate_in(credential: &Credential) -> Option<Certificate> {
    let basic = BasicCredential::try_from(credential.clone()).ok()?;
    Certificate::from_bytes(basic.identity()).ok()
}

fn who(cert: &Certificate) -> String {
    format!("{} ({})", cert.body.user, cert.body.device_id)
}

/// The certificate of a leaf, verified: signed by the organisation root, valid now,
/// naming the leaf's own signature key, of a device that is not revoked.
pub fn verified_certificate(
    ctx: &Context<'_>,
    credential: &Credential,
    signature_key: &[u8],
) -> Result<Certificate, Refusal> {
    let cert = certificate_in(credential).ok_or_else(|| Refusal::Identity {
        who: "a member".into(),
        why: "its credential carries no identity certificate".into(),
    })?;
    cert.verify(ctx.org, ctx.now)
        .map_err(|e| Refusal::Identity {
            who: who(&cert),
            why: e.to_string(),
        })?;
    if cert.body.device_key != signature_key {
        return Err(Refusal::Identity {
            who: who(&cert),
            why: "the leaf's signature key is not the certificate's key".into(),
        });
    }
    if (ctx.revoked)(&cert) {
        return Err(Refusal::Revoked {
            user: cert.body.user,
            device: cert.body.device_id,
        });
    }
    Ok(cert)
}

/// The verified certificate of the member who sent a message, proposal or commit.
pub fn sender_certificate(
    ctx: &Context<'_>,
    members: &[Member],
    sender: &Sender,
) -> Result<Certificate, Refusal> {
    let Sender::Member(index) = sender else {
        return Err(Refusal::NotFromMember);
    };
    let member = members
        .iter()
        .find(|m| m.index == *index)
        .ok_or(Refusal::NotFromMember)?;
    verified_certificate(ctx, &member.credential, &member.signature_key)
}

/// The group policy a set of group-context extensions sets.
pub fn policy_in(extensions: &Extensions<GroupContext>) -> GroupPolicy {
    GroupPolicy::from_extension(
        extensions
            .unknown(GROUP_POLICY_EXTENSION)
            .map(|e| e.0.as_slice()),
    )
}

/// The people a set of group-context extensions lists as waiting to join.
pub fn pending_in(extensions: &Extensions<GroupContext>) -> Vec<String> {
    GroupPolicy::pending_in(
        extensions
            .unknown(GROUP_POLICY_EXTENSION)
            .map(|e| e.0.as_slice()),
    )
}

/// Checks a change of the group context by `proposer`. An admin may change anything. A
/// member may change only the list of people waiting to join, and only as they may add
/// and remove people: in a managed group, only strike off people already in the group.
fn check_context_change(
    members: &[Member],
    before: &Extensions<GroupContext>,
    after: &Extensions<GroupContext>,
    proposer: &Certificate,
) -> Result<(), Refusal> {
    let pending = pending_in(after);
    if pending.len() > MAX_PENDING_SEATS || pending.iter().any(|u| validate_handle(u).is_err()) {
        return Err(Refusal::Unsupported(
            "a list of people waiting to join that is too long or names an invalid handle",
        ));
    }
    let by = &proposer.body.user;
    let others = |e: &Extensions<GroupContext>| -> Vec<Extension> {
        e.iter()
            .filter(|x| x.extension_type() != ExtensionType::Unknown(GROUP_POLICY_EXTENSION))
            .cloned()
            .collect()
    };
    let policy = policy_in(before);
    let was = pending_in(before);
    if proposer.is_bot() {
        // A bot added before it was ever online strikes itself off the list, and does
        // nothing else.
        let only_itself = was.iter().filter(|u| *u != by).eq(pending.iter());
        if policy_in(after) != policy || others(before) != others(after) || !only_itself {
            return Err(Refusal::Bot {
                by: by.clone(),
                what: "change the group's settings or who waits to join",
            });
        }
        return Ok(());
    }
    if proposer.is_admin() {
        return Ok(());
    }
    if policy_in(after) != policy || others(before) != others(after) {
        return Err(Refusal::Policy { by: by.clone() });
    }
    if policy.managed {
        let in_group = |user: &String| {
            members
                .iter()
                .filter_map(|m| certificate_in(&m.credential))
                .any(|c| c.body.user == *user)
        };
        if pending.iter().any(|u| !was.contains(u)) {
            return Err(Refusal::Managed {
                by: by.clone(),
                what: "add people",
            });
        }
        if was.iter().any(|u| !pending.contains(u) && !in_group(u)) {
            return Err(Refusal::Managed {
                by: by.clone(),
                what: "remove people",
            });
        }
    }
    Ok(())
}

/// Checks that a leaf that replaces `old`'s keeps its user and device and verifies.
fn check_same_identity(
    ctx: &Context<'_>,
    old: &Certificate,
    leaf: &LeafNode,
) -> Result<(), Refusal> {
    let new = verified_certificate(ctx, leaf.credential(), leaf.signature_key().as_slice())?;
    if new.body.user != old.body.user || new.body.device_id != old.body.device_id {
        return Err(Refusal::IdentityChange {
            by: old.body.user.clone(),
            old: who(old),
            new: who(&new),
        });
    }
    // An update may renew a certificate, never go back to an older one (which might
    // carry roles an admin has since taken away).
    if new.body.not_before < old.body.not_before {
        return Err(Refusal::OlderCertificate {
            by: old.body.user.clone(),
        });
    }
    Ok(())
}

/// Checks one proposal, made by the member whose verified certificate is `proposer`.
fn check_one(
    ctx: &Context<'_>,
    members: &[Member],
    context: &Extensions<GroupContext>,
    proposer: &Certificate,
    proposer_index: LeafNodeIndex,
    proposal: &Proposal,
) -> Result<(), Refusal> {
    let by = &proposer.body.user;
    let policy = policy_in(context);
    let removal = |removed: LeafNodeIndex| -> Result<(), Refusal> {
        let member = members
            .iter()
            .find(|m| m.index == removed)
            .ok_or(Refusal::NoSuchMember)?;
        let cert = certificate_in(&member.credential);
        // A revoked device, or one whose certificate ran out (admins renew every device
        // they have not revoked), is every member's to remove.
        let revoked = cert.as_ref().is_some_and(|c| {
            (ctx.revoked)(c) || (lapsed(c, ctx.now) && !(ctx.renewed)(&c.body.device_id))
        });
        let own_device = cert.as_ref().is_some_and(|c| c.body.user == *by);
        if proposer.is_bot() && !revoked && !own_device {
            return Err(Refusal::Bot {
                by: by.clone(),
                what: "remove people",
            });
        }
        if policy.managed && !proposer.is_admin() && !revoked {
            return Err(Refusal::Managed {
                by: by.clone(),
                what: if removed == proposer_index {
                    "leave"
                } else {
                    "remove people"
                },
            });
        }
        if policy.archived && cert.as_ref().is_some_and(|c| c.is_archive()) && !revoked {
            return Err(Refusal::ArchiveRemoval { by: by.clone() });
        }
        Ok(())
    };
    match proposal {
        Proposal::Add(add) => {
            let leaf = add.key_package().leaf_node();
            let added =
                verified_certificate(ctx, leaf.credential(), leaf.signature_key().as_slice())?;
            if proposer.is_bot() && added.body.user != *by {
                return Err(Refusal::Bot {
                    by: by.clone(),
                    what: "add people",
                });
            }
            if policy.managed && !proposer.is_admin() && added.body.user != *by {
                return Err(Refusal::Managed {
                    by: by.clone(),
                    what: "add people",
                });
            }
            Ok(())
        }
        Proposal::Remove(remove) => removal(remove.removed()),
        Proposal::SelfRemove => removal(proposer_index),
        Proposal::Update(update) => check_same_identity(ctx, proposer, update.leaf_node()),
        Proposal::GroupContextExtensions(change) => {
            check_context_change(members, context, change.extensions(), proposer)
        }
        Proposal::PreSharedKey(_) => Err(Refusal::Unsupported("a pre-shared key")),
        Proposal::ReInit(_) => Err(Refusal::Unsupported("re-initialisation")),
        Proposal::ExternalInit(_) => Err(Refusal::Unsupported("an external join")),
        _ => Err(Refusal::Unsupported("a custom or extension proposal")),
    }
}

/// Checks a standalone proposal sent by `sender` into a group with `members` (before any
/// change) and group-context extensions `context` (its policy and who waits to join).
pub fn check_proposal(
    ctx: &Context<'_>,
    members: &[Member],
    context: &Extensions<GroupContext>,
    sender: &Sender,
    proposal: &Proposal,
) -> Result<(), Refusal> {
    let proposer = sender_certificate(ctx, members, sender)?;
    let Sender::Member(index) = sender else {
        return Err(Refusal::NotFromMember);
    };
    check_one(ctx, members, context, &proposer, *index, proposal)
}

/// Checks a commit by `committer` to a group with `members` and group-context
/// extensions `context` (both before the commit): every proposal it carries, by value
/// or by reference, against the member who proposed it, and the committer's own new leaf.
pub fn check_commit(
    ctx: &Context<'_>,
    members: &[Member],
    context: &Extensions<GroupContext>,
    committer: &Sender,
    staged: &StagedCommit,
) -> Result<(), Refusal> {
    if *committer == Sender::NewMemberCommit {
        return check_external_join(ctx, members, &pending_in(context), staged);
    }
    let committer_cert = match sender_certificate(ctx, members, committer) {
        Ok(cert) => cert,
        // A member whose certificate ran out (it was offline while it was renewed) may
        // still commit the renewal itself: its own leaf, with a valid certificate of the
        // same device, and nothing it proposes.
        Err(Refusal::Identity { who, why }) => renewing_committer(ctx, members, committer, staged)
            .ok_or(Refusal::Identity { who, why })?,
        Err(other) => return Err(other),
    };
    for queued in staged.queued_proposals() {
        check_proposal(ctx, members, context, queued.sender(), queued.proposal())?;
    }
    if let Some(leaf) = staged.update_path_leaf_node() {
        check_same_identity(ctx, &committer_cert, leaf)?;
    }
    Ok(())
}

/// An external commit may bring back a device that is in the group already (one that
/// fell behind and rejoins from the group's newest GroupInfo), removing that same
/// device's old leaf, or bring in a device of someone the group lists as waiting to
/// join. Its new leaf must verify, and it does nothing else.
fn check_external_join(
    ctx: &Context<'_>,
    members: &[Member],
    pending: &[String],
    staged: &StagedCommit,
) -> Result<(), Refusal> {
    let leaf = staged
        .update_path_leaf_node()
        .ok_or(Refusal::Unsupported("an external join without a leaf"))?;
    let new = verified_certificate(ctx, leaf.credential(), leaf.signature_key().as_slice())?;
    let mut replaced_own_leaf = false;
    for queued in staged.queued_proposals() {
        match queued.proposal() {
            Proposal::ExternalInit(_) => {}
            Proposal::Remove(remove) => {
                let old = members
                    .iter()
                    .find(|m| m.index == remove.removed())
                    .and_then(|m| certificate_in(&m.credential))
                    .ok_or(Refusal::NoSuchMember)?;
                if old.body.device_id != new.body.device_id {
                    return Err(Refusal::Unsupported(
                        "an external join that removes someone else",
                    ));
                }
                replaced_own_leaf = true;
            }
            _ => {
                return Err(Refusal::Unsupported(
                    "an external join that proposes changes",
                ))
            }
        }
    }
    let already_in = members
        .iter()
        .filter_map(|m| certificate_in(&m.credential))
        .any(|c| c.body.device_id == new.body.device_id);
    if !replaced_own_leaf && (already_in || !pending.contains(&new.body.user)) {
        return Err(Refusal::Unsupported(
            "an external join of a device that is not in the group and not waiting to join",
        ));
    }
    Ok(())
}

/// The committer's certificate, when only its dates fail and the commit renews its leaf.
fn renewing_committer(
    ctx: &Context<'_>,
    members: &[Member],
    committer: &Sender,
    staged: &StagedCommit,
) -> Option<Certificate> {
    let Sender::Member(index) = committer else {
        return None;
    };
    let member = members.iter().find(|m| m.index == *index)?;
    let cert = certificate_in(&member.credential)?;
    cert.verify_issuer(ctx.org).ok()?;
    if cert.body.device_key != member.signature_key.as_slice() || (ctx.revoked)(&cert) {
        return None;
    }
    let own_proposals = staged
        .queued_proposals()
        .any(|q| matches!(q.sender(), Sender::Member(i) if i == index));
    let renewed = staged
        .update_path_leaf_node()
        .is_some_and(|leaf| check_same_identity(ctx, &cert, leaf).is_ok());
    (renewed && !own_proposals).then_some(cert)
}

/// What a commit changes in the group's policy, for the notice every member sees.
pub fn policy_change(before: GroupPolicy, staged: &StagedCommit) -> Option<GroupPolicy> {
    staged.queued_proposals().find_map(|q| match q.proposal() {
        Proposal::GroupContextExtensions(gce) => {
            Some(policy_in(gce.extensions())).filter(|after| *after != before)
        }
        _ => None,
    })
}
