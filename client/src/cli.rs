//! The command line: every command and flag, as clap parses them.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "muster",
    version,
    about = "Muster: end-to-end encrypted workplace messenger (command-line client)",
    long_about = "Muster: end-to-end encrypted workplace messenger.\n\n\
        Each device keeps its conversations in its own encrypted-group store under --home.\n\
        Start with `muster org create` (first admin) or `muster join CODE` (everyone else)."
)]
pub(crate) struct Cli {
    /// Device data directory [default: $XDG_DATA_HOME/muster or ~/.local/share/muster].
    #[arg(long, global = true, env = "MUSTER_HOME", value_name = "DIR")]
    pub(crate) home: Option<PathBuf>,
    /// A file holding the key that encrypts this device's store (made, readable by its
    /// owner only, when it does not exist yet); for servers such as the archive host.
    /// MUSTER_PASSPHRASE, when set, is used instead.
    #[arg(long, global = true, env = "MUSTER_KEY_FILE", value_name = "FILE")]
    pub(crate) key_file: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The device store's encryption.
#[derive(Subcommand)]
pub(crate) enum StoreCommand {
    /// How this device's store is protected.
    Status,
    /// Encrypt a plaintext store from an earlier version now (any command does it too).
    Encrypt,
    /// Change the store's key: to a new passphrase (MUSTER_NEW_PASSPHRASE, or asked on the
    /// terminal), with --new-key-file to a new key file, or with --to-keyring to the OS keyring.
    Rekey {
        /// Move the key to this new file (made readable by its owner only).
        #[arg(long, value_name = "FILE", conflicts_with = "to_keyring")]
        new_key_file: Option<PathBuf>,
        /// Move the key to the operating system's keyring (Secret Service, Keychain).
        #[arg(long)]
        to_keyring: bool,
    },
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// The device store's encryption: `status`, `encrypt`, `rekey`.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Organisation set-up.
    #[command(subcommand)]
    Org(OrgCommand),
    /// (admin) Create a single-use invite code for a new user.
    Invite {
        /// The new user's handle (lowercase letters, digits, . _ -).
        user: String,
        /// How long the code stays valid, e.g. 30m, 12h, 7d.
        #[arg(long, default_value = "7d", value_parser = parse_duration)]
        ttl: u64,
    },
    /// Enrol this device with an invite code; an admin then approves it.
    Join {
        /// The invite code from your admin.
        code: String,
        /// Your name as colleagues will see it.
        #[arg(long)]
        display_name: String,
        #[arg(long)]
        title: Option<String>,
        #[arg(long)]
        department: Option<String>,
    },
    /// Enrol this device as another device of an existing user, with a link code.
    JoinDevice {
        /// The link code from `muster device link` on one of your devices.
        code: String,
    },
    /// Devices of this user.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// List this user's enrolled devices.
    Devices(JsonFlag),
    /// (admin) List enrolment requests waiting for approval.
    Pending(JsonFlag),
    /// (admin) Approve a user's enrolment request and sign their identity certificate.
    Approve {
        user: String,
        /// Which device, when the user has several pending (device id or prefix).
        #[arg(long)]
        device: Option<String>,
        /// Make this device the organisation's compliance archive (archive role only).
        #[arg(long, conflicts_with = "bot")]
        archive: bool,
        /// Make this a bot: a service account that posts texts and alerts to the groups it
        /// is in (`muster bot serve`) and administers nothing (bot role only).
        #[arg(long)]
        bot: bool,
    },
    /// (admin) Reject a user's enrolment request.
    Reject {
        user: String,
        #[arg(long)]
        device: Option<String>,
    },
    /// Group management.
    #[command(subcommand)]
    Group(GroupCommand),
    /// List your groups with their members.
    Groups(JsonFlag),
    /// Send a message to a group (TEXT `-` reads it from standard input).
    Send {
        group: String,
        /// The text, or `-` to read it from standard input. @handle mentions a member.
        /// With --file it is the caption (optional).
        text: Option<String>,
        /// Attach a file (encrypted on this device; at most 100 MiB).
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
        /// Quote and answer this message (its id, or an id prefix of 6+ characters).
        #[arg(long, value_name = "ID")]
        reply_to: Option<String>,
    },
    /// Send an urgent alert to a group.
    Alert {
        group: String,
        text: String,
        /// Ask every member to acknowledge it (`muster ack ID`); see `muster rollcall ID`.
        /// It offers the answers "acknowledged" and "need help" (urgent).
        #[arg(long)]
        ack_required: bool,
        /// Ask every member to answer with one of these, comma-separated; a trailing `!`
        /// marks an urgent answer, which raises an alert in the group when given
        /// (e.g. "safe,need help!,on my way").
        #[arg(long, value_name = "LIST")]
        options: Option<String>,
        /// Remind members who have not answered after WAIT and, after the second WAIT
        /// (twice the first unless given), raise the alert in --escalate-to naming them:
        /// "5m" or "5m,15m".
        #[arg(long, value_name = "WAIT[,WAIT]", requires = "escalate_to")]
        escalate_after: Option<String>,
        /// Where the alert is raised: a group, or a user (the smallest group you share).
        #[arg(long, value_name = "GROUP_OR_USER", requires = "escalate_after")]
        escalate_to: Option<String>,
        /// An exercise: shown as a drill everywhere.
        #[arg(long)]
        drill: bool,
    },
    /// Assign a task to a member of a group, e.g. `task ops "Secure pier 4" --assign bob --due 30m`.
    Task {
        group: String,
        title: String,
        #[arg(long, value_name = "USER")]
        assign: String,
        /// Due after this long (e.g. 30m); an overdue task is flagged to the group.
        #[arg(long, value_name = "WAIT", value_parser = parse_duration)]
        due: Option<u64>,
    },
    /// Tasks of a group (or of every group), open ones first.
    Tasks {
        group: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Accept a task assigned to you.
    Accept {
        task: String,
    },
    /// Decline a task assigned to you.
    Decline {
        task: String,
    },
    /// Mark a task done (its assignee, or whoever set it).
    Done {
        task: String,
    },
    /// Incidents: open, close, list, and the after-action report.
    #[command(subcommand)]
    Incident(IncidentCommand),
    /// Acknowledge an alert.
    Ack {
        id: String,
    },
    /// Answer an alert with one of its answers (again, to change it).
    Answer {
        id: String,
        answer: String,
    },
    /// Who has acknowledged an alert, and who has not.
    Rollcall {
        id: String,
        /// Keep watching: reprint as acknowledgements arrive, until everyone has answered.
        #[arg(long)]
        watch: bool,
        #[arg(long)]
        json: bool,
    },
    /// Search this device's messages (full text; every word must match, as a prefix).
    Search {
        query: String,
        /// Only in this group.
        #[arg(long)]
        group: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Alerts still waiting for your acknowledgement.
    Alerts(JsonFlag),
    /// A group's situation board: shared status entries any member updates.
    Board {
        group: String,
        #[command(subcommand)]
        action: Option<BoardAction>,
        #[arg(long)]
        json: bool,
    },
    /// Mute a group (only urgent alerts notify) or, with --user, a person.
    Mute {
        target: String,
        #[arg(long)]
        user: bool,
    },
    /// Undo `mute`.
    Unmute {
        target: String,
        #[arg(long)]
        user: bool,
    },
    /// Keep a group at the top of `groups`.
    Pin {
        group: String,
    },
    Unpin {
        group: String,
    },
    /// Which messages of a group notify you: all, mentions (and alerts), or alerts only.
    NotifyLevel {
        group: String,
        level: String,
    },
    /// Local settings of this device.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Download, verify and decrypt a message's attachment.
    Fetch {
        id: String,
        /// Where to write it [default: its name, in the current directory].
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
    },
    /// Change the text of one of your messages, for everyone.
    Edit {
        id: String,
        text: String,
    },
    /// Delete one of your messages from every member's device.
    Delete {
        id: String,
    },
    /// React to a message with an emoji.
    React {
        id: String,
        emoji: String,
        /// Take the reaction back.
        #[arg(long)]
        remove: bool,
    },
    /// Fetch and process everything waiting on the relay, and send queued messages.
    Sync(JsonFlag),
    /// Show a group's messages, oldest first.
    Read {
        group: String,
        /// How many of the latest messages to show.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Interactive chat: shows incoming messages live and sends each line you type.
    Chat {
        group: String,
    },
    /// The graphical client: serves this device to your browser on this machine only,
    /// and prints the link to open (good once).
    Ui {
        /// Loopback address to listen on (port 0: any free port).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
        /// Open the link in the default browser.
        #[arg(long)]
        open: bool,
    },
    /// Show who this device is.
    Whoami(JsonFlag),
    /// Show the relays this device talks to, or set them (when the organisation adds a
    /// relay on the same database): HOST:PORT,HOST:PORT, tried in turn.
    Relays {
        #[arg(long, value_name = "LIST")]
        set: Option<String>,
    },
    /// List enrolled colleagues with their approved attributes and roles.
    Directory(JsonFlag),
    /// Administration.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Your profile as colleagues see it.
    #[command(subcommand)]
    Profile(ProfileCommand),
    /// A bot account: its intake tokens and `bot serve` (run on the bot's device).
    #[command(subcommand)]
    Bot(crate::bot::BotCommand),
    /// The organisation's compliance archive (run on the archive device).
    #[command(subcommand)]
    Archive(crate::archive::ArchiveCommand),
}

#[derive(Subcommand)]
pub(crate) enum ProfileCommand {
    /// Show your approved profile.
    Show(JsonFlag),
    /// Ask an admin to approve a new profile. Leave out --title or --department to stop revealing it.
    Set {
        #[arg(long)]
        display_name: String,
        #[arg(long)]
        title: Option<String>,
        #[arg(long)]
        department: Option<String>,
    },
}

#[derive(Subcommand)]
pub(crate) enum BoardAction {
    /// Set an entry, e.g. `board ops set location "Pier 4"`.
    Set { key: String, value: String },
    /// Remove an entry.
    Clear { key: String },
}

#[derive(Subcommand)]
pub(crate) enum ConfigCommand {
    /// Show or set the command run for each notification (empty string to remove).
    ///
    /// It runs through `sh -c` with MUSTER_KIND (text or alert), MUSTER_GROUP,
    /// MUSTER_SENDER, MUSTER_ID and MUSTER_TEXT in its environment.
    NotifyCommand { command: Option<String> },
}

#[derive(Subcommand)]
pub(crate) enum DeviceCommand {
    /// Approve your own new device (when the organisation's policy allows it).
    Approve {
        /// The new device's id, as `muster join-device` printed it there.
        device_id: String,
    },
    /// Print a single-use code that enrols another device of yours (an admin approves it).
    Link {
        /// How long the code stays valid, e.g. 10m, 1h.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        ttl: u64,
    },
}

#[derive(Subcommand)]
pub(crate) enum RootCommand {
    /// Write the organisation root key, sealed under a passphrase (Argon2id, then
    /// ChaCha20-Poly1305), to a new file. The passphrase is asked for on the terminal, or
    /// read as the first line of standard input.
    Backup {
        /// The file to create (it must not exist yet).
        #[arg(long)]
        out: PathBuf,
    },
    /// Split the organisation root key among named admins: any THRESHOLD of their shares
    /// restore it, fewer reveal nothing. Each share is sealed under its holder's
    /// passphrase, asked for on the terminal (or one line each on standard input, in the
    /// order the holders are named).
    Split {
        /// Shares needed to restore the root (at least 2).
        #[arg(long)]
        threshold: u8,
        /// The admins who each get a share, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        holders: Vec<String>,
        /// The folder to write `root-share-HOLDER.json` files into (created if missing).
        #[arg(long)]
        out_dir: PathBuf,
    },
    /// Install the organisation root key on this admin device, from a whole backup or from
    /// enough shares of a split (each asks for its holder's passphrase).
    Restore {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
pub(crate) enum AdminCommand {
    /// Show or change the organisation policy (signed by this admin device).
    Policy {
        /// Let users approve their own new devices (on, off).
        #[arg(long, value_parser = parse_switch)]
        device_self_approval: Option<bool>,
        /// How long identity certificates stay valid (e.g. 30d); admin devices renew them
        /// a third of the way in, and never renew a revoked device's.
        #[arg(long, value_parser = parse_duration)]
        certificate_lifetime: Option<u64>,
        /// A revoked device deletes its store once it learns, from the signed revocation,
        /// that it was revoked (on, off).
        #[arg(long, value_parser = parse_switch)]
        wipe_on_revoke: Option<bool>,
        #[arg(long)]
        json: bool,
    },
    /// Make the organisation match a TOML file of users and groups (idempotent).
    ///
    /// Invites users who are not enrolled, approves their pending enrolments with the
    /// file's profile and roles, corrects the profile and roles of enrolled users, creates
    /// groups and adds or removes members. Users and groups not in the file are left alone.
    Apply {
        /// The provisioning file ([[users]] with handle, display_name, title, department,
        /// roles; [[groups]] with name, members, managed).
        file: PathBuf,
        /// Print the plan without changing anything.
        #[arg(long)]
        dry_run: bool,
        /// Append new invite codes to this file (one "USER CODE" line each) instead of printing them.
        #[arg(long, value_name = "FILE")]
        invites_out: Option<PathBuf>,
        /// How long new invite codes stay valid.
        #[arg(long, default_value = "7d", value_parser = parse_duration)]
        ttl: u64,
        /// Print one JSON object per planned or applied step.
        #[arg(long)]
        json: bool,
    },
    /// List profile changes waiting for approval.
    Profiles(JsonFlag),
    /// Approve a user's requested profile (new certificates for their devices).
    ApproveProfile { user: String },
    /// Refuse a user's requested profile.
    RejectProfile { user: String },
    /// Revoke a user (all devices, or one): cut off at once and removed from every group.
    Revoke {
        user: String,
        /// Only this device (device id or prefix).
        #[arg(long)]
        device: Option<String>,
    },
    /// Check the compliance archive independently of its host: a chain it exported
    /// (`muster archive export-chain`) against the checkpoints this device collected.
    ArchiveCheck {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Back up or restore the organisation root key (sealed under a passphrase).
    #[command(subcommand)]
    Root(RootCommand),
    /// Show the relay's audit log: metadata events only, never content.
    Audit {
        /// How many of the latest events to show.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub(crate) struct JsonFlag {
    /// Print one JSON object per line.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Subcommand)]
pub(crate) enum OrgCommand {
    /// Create the organisation: its root key, and this device as its first admin.
    Create {
        /// Relay address, HOST:PORT; several relays sharing one database as a list,
        /// HOST:PORT,HOST:PORT (devices fail over to the next when one does not answer).
        #[arg(long)]
        relay: String,
        /// The relay certificate's SHA-256 fingerprint, as printed by `muster-relay serve`.
        #[arg(long)]
        fingerprint: String,
        /// The relay's bootstrap token.
        #[arg(long)]
        token: String,
        /// Organisation name.
        #[arg(long)]
        name: String,
        /// Your user handle.
        #[arg(long)]
        user: String,
        /// Your display name [default: the handle].
        #[arg(long)]
        display_name: Option<String>,
    },
}

#[derive(Subcommand)]
pub(crate) enum GroupCommand {
    /// Create a group and add every enrolled device of the given users.
    Create {
        name: String,
        /// Comma-separated user handles.
        #[arg(long, value_delimiter = ',')]
        members: Vec<String>,
        /// (admin) Managed group: only admins add or remove people; members cannot leave or rename it.
        #[arg(long)]
        managed: bool,
    },
    /// Show or set how long every member's device keeps the group's messages.
    Policy {
        group: String,
        /// Keep messages this long (e.g. 30d), then delete them.
        #[arg(long, value_parser = parse_duration, conflicts_with = "keep_forever")]
        retain: Option<u64>,
        /// Delete each message this long after it was sent (e.g. 1h).
        #[arg(long, value_parser = parse_duration, conflicts_with = "keep_forever")]
        disappear: Option<u64>,
        /// Remove any limit.
        #[arg(long)]
        keep_forever: bool,
        /// (admin) Archive the group: the organisation's compliance archive joins it and
        /// keeps everything said there, visibly to every member.
        #[arg(long, conflicts_with = "no_archived")]
        archived: bool,
        /// (admin) Stop archiving the group and remove the archive from it.
        #[arg(long)]
        no_archived: bool,
    },
    /// Rename a group for every member.
    Rename { group: String, new_name: String },
    /// Add a user (all their devices) to a group.
    Add { group: String, user: String },
    /// Remove a user (all their devices) from a group.
    Remove { group: String, user: String },
    /// Leave a group.
    Leave { group: String },
}

#[derive(Subcommand)]
pub(crate) enum IncidentCommand {
    /// Mark the start of an incident in a group (one open at a time).
    Open {
        group: String,
        title: String,
        /// An exercise: the incident and every alert and task in it show as a drill.
        #[arg(long)]
        drill: bool,
    },
    /// Mark its end: an incident id, or a group's open incident by the group's name.
    Close { incident: String },
    /// Incidents of a group (or of every group), newest first.
    List {
        group: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// The after-action report, built on this device from its own store.
    Report {
        /// An incident id, or a group's latest incident by the group's name.
        incident: String,
        #[arg(long, value_enum, default_value_t = ReportFormat::Md)]
        format: ReportFormat,
        /// Write it to this new file instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ReportFormat {
    Md,
    Html,
    Json,
}

pub(crate) fn parse_duration(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: use e.g. 30m, 12h, 7d"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" | "" => 86400,
        "w" => 7 * 86400,
        "y" => 365 * 86400,
        _ => {
            return Err(format!(
                "invalid duration unit in {s:?}: use s, m, h, d, w or y"
            ))
        }
    };
    if n == 0 {
        return Err("duration must be positive".into());
    }
    n.checked_mul(mult)
        .ok_or_else(|| format!("duration {s:?} is too long"))
}

pub(crate) fn parse_switch(s: &str) -> Result<bool, String> {
    match s {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!("expected on or off, not {s:?}")),
    }
}

pub(crate) fn default_home() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("muster");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/muster"),
        None => PathBuf::from(".muster"),
    }
}
