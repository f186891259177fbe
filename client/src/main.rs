//! `muster`: the command-line client. It parses arguments, calls the engine and prints
//! (human text by default, one JSON object per line with `--json`).

/// `println!` for human output: the whole line passes through [`terminal_safe`].
macro_rules! println {
    () => { std::println!() };
    ($($arg:tt)*) => { std::println!("{}", $crate::terminal_safe(&format!($($arg)*))) };
}

/// `eprintln!` for warnings and errors, which quote what others sent, through [`terminal_safe`].
macro_rules! eprintln {
    ($($arg:tt)*) => { std::eprintln!("{}", $crate::terminal_safe(&format!($($arg)*))) };
}

/// `print!` for human output, through [`terminal_safe`].
macro_rules! print {
    ($($arg:tt)*) => { std::print!("{}", $crate::terminal_safe(&format!($($arg)*))) };
}

mod archive;

use clap::{Args, Parser, Subcommand};
use muster_driver::{Backoff, Connection, Wake};
use muster_engine::{Engine, EngineError, GroupView, MessageView};
use muster_proto::Profile;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "muster",
    version,
    about = "Muster: end-to-end encrypted workplace messenger (command-line client)",
    long_about = "Muster: end-to-end encrypted workplace messenger.\n\n\
        Each device keeps its conversations in its own encrypted-group store under --home.\n\
        Start with `muster org create` (first admin) or `muster join CODE` (everyone else)."
)]
struct Cli {
    /// Device data directory [default: $XDG_DATA_HOME/muster or ~/.local/share/muster].
    #[arg(long, global = true, env = "MUSTER_HOME", value_name = "DIR")]
    home: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
        #[arg(long)]
        archive: bool,
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
        #[arg(long)]
        ack_required: bool,
    },
    /// Acknowledge an alert.
    Ack {
        id: String,
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
    /// Show who this device is.
    Whoami(JsonFlag),
    /// List enrolled colleagues with their approved attributes and roles.
    Directory(JsonFlag),
    /// Administration.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Your profile as colleagues see it.
    #[command(subcommand)]
    Profile(ProfileCommand),
    /// The organisation's compliance archive (run on the archive device).
    #[command(subcommand)]
    Archive(archive::ArchiveCommand),
}

#[derive(Subcommand)]
enum ProfileCommand {
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
enum BoardAction {
    /// Set an entry, e.g. `board ops set location "Pier 4"`.
    Set { key: String, value: String },
    /// Remove an entry.
    Clear { key: String },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Show or set the command run for each notification (empty string to remove).
    ///
    /// It runs through `sh -c` with MUSTER_KIND (text or alert), MUSTER_GROUP,
    /// MUSTER_SENDER, MUSTER_ID and MUSTER_TEXT in its environment.
    NotifyCommand { command: Option<String> },
}

#[derive(Subcommand)]
enum DeviceCommand {
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
enum AdminCommand {
    /// Show or change the organisation policy (signed with the root key).
    Policy {
        /// Let users approve their own new devices (on, off).
        #[arg(long, value_parser = parse_switch)]
        device_self_approval: Option<bool>,
        /// How long identity certificates stay valid (e.g. 30d); admin devices renew them
        /// a third of the way in, and never renew a revoked device's.
        #[arg(long, value_parser = parse_duration)]
        certificate_lifetime: Option<u64>,
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
struct JsonFlag {
    /// Print one JSON object per line.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum OrgCommand {
    /// Create the organisation: its root key, and this device as its first admin.
    Create {
        /// Relay address, HOST:PORT.
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
enum GroupCommand {
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

fn parse_duration(s: &str) -> Result<u64, String> {
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

fn parse_switch(s: &str) -> Result<bool, String> {
    match s {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!("expected on or off, not {s:?}")),
    }
}

fn default_home() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("muster");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/muster"),
        None => PathBuf::from(".muster"),
    }
}

/// Prints each item: one JSON object per line with `--json`, else as `human` says.
fn print_listing<T: serde::Serialize>(
    items: impl IntoIterator<Item = T>,
    json: bool,
    human: impl Fn(&T),
) {
    for item in items {
        if json {
            print_json(&item);
        } else {
            human(&item);
        }
    }
}

/// One JSON object on a line of its own (serde escapes every control character).
pub(crate) fn print_json(value: &impl serde::Serialize) {
    std::println!(
        "{}",
        serde_json::to_string(value).expect("values serialise")
    );
}

/// Text for a terminal: control characters (newlines, escape sequences, bidirectional
/// overrides) that colleagues put into messages, names or profiles are shown escaped, so
/// nobody can forge lines or recolour the screen.
pub(crate) fn terminal_safe(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| {
        c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if unsafe_char(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

fn print_message(m: &MessageView) {
    let time = m.sent_at.get(11..19).unwrap_or(&m.sent_at);
    if m.kind == "system" {
        println!("[{time}] * {}", m.text);
        return;
    }
    let short = m.id.get(..8).unwrap_or(&m.id);
    if m.deleted {
        println!("[{time}] {}: (message deleted)  #{short}", m.sender);
        return;
    }
    let mut line = if m.kind == "alert" {
        format!("[{time}] 🚨 ALERT from {}: ", m.sender)
    } else {
        format!("[{time}] {}: ", m.sender)
    };
    if let Some(r) = &m.reply_to {
        line.push_str(&format!("(reply to #{}) ", r.get(..8).unwrap_or(r)));
    }
    match &m.attachment {
        Some(a) => {
            line.push_str(&format!("📎 {} ({}, {} bytes)", a.name, a.mime, a.size));
            if m.text != a.name {
                line.push_str(&format!(" {}", m.text));
            }
        }
        None => line.push_str(&m.text),
    }
    if m.edited {
        line.push_str(" (edited)");
    }
    match m.status.as_str() {
        "sending" => line.push_str(" (sending)"),
        "failed" => line.push_str(" (not sent)"),
        _ => {}
    }
    for (emoji, users) in &m.reactions {
        line.push_str(&format!("  {emoji} {}", users.len()));
    }
    if m.ack_required {
        line.push_str(&format!(
            "  [acknowledged by {} of {}; `muster ack {short}`]",
            m.acked_by.len(),
            m.audience
        ));
    }
    if m.audience > 0 && (m.status == "sent" || m.status == "sending") {
        line.push_str(&format!("  read by {} of {}", m.read_by.len(), m.audience));
    }
    line.push_str(&format!("  #{short}"));
    println!("{line}");
}

/// " (Site lead, Works)" for whichever of the two a person reveals, or nothing.
fn title_and_department(title: Option<&str>, department: Option<&str>) -> String {
    let shown: Vec<&str> = [title, department].into_iter().flatten().collect();
    if shown.is_empty() {
        String::new()
    } else {
        format!(" ({})", shown.join(", "))
    }
}

fn describe_profile(p: &Profile) -> String {
    let mut parts = vec![format!("\"{}\"", p.display_name)];
    parts.extend(p.title.iter().map(|t| format!("title {t:?}")));
    parts.extend(p.department.iter().map(|d| format!("department {d:?}")));
    parts.join(", ")
}

fn print_group(g: &GroupView) {
    let mut state = if g.state == "active" {
        String::new()
    } else {
        format!(" [{}]", g.state)
    };
    if g.managed {
        state.push_str(" [managed]");
    }
    if g.archived {
        state.push_str(" [archived]");
    }
    if g.pinned {
        state.push_str(" [pinned]");
    }
    if g.muted {
        state.push_str(" [muted]");
    } else if g.notify_level != "all" {
        state.push_str(&format!(" [notify: {}]", g.notify_level));
    }
    println!(
        "{}{state}  ({} members: {})  id {}  epoch {}",
        g.name,
        g.members.len(),
        g.members.join(", "),
        g.id,
        g.epoch
    );
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MUSTER_LOG")
                .unwrap_or_else(|_| "error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("muster: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // A pending read of standard input (in `chat`) must not hold the process open.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("muster: {e}");
            ExitCode::FAILURE
        }
    }
}

const NOTIFY_COMMAND: &str = "notify-command";

fn set_mute(engine: &Engine, target: &str, user: bool, muted: bool) -> Result<(), EngineError> {
    let verb = if muted { "muted" } else { "unmuted" };
    if user {
        engine.set_user_muted(target, muted)?;
        println!("{verb} {target}");
    } else {
        let g = engine.set_group_view(target, Some(muted), None, None)?;
        println!("{verb} {}", g.name);
    }
    Ok(())
}

/// Runs the user's notification command for each notification, without waiting for it.
fn notify(engine: &Engine, notifications: &[muster_engine::Notification]) {
    let Ok(Some(command)) = engine.setting(NOTIFY_COMMAND) else {
        return;
    };
    for n in notifications {
        let spawned = std::process::Command::new("sh")
            .arg("-c")
            .arg(&command)
            .env("MUSTER_KIND", &n.kind)
            .env("MUSTER_GROUP", &n.group)
            .env("MUSTER_SENDER", &n.sender)
            .env("MUSTER_ID", &n.id)
            .env("MUSTER_TEXT", &n.text)
            .stdin(std::process::Stdio::null())
            .spawn();
        match spawned {
            // Reap it in the background so it never lingers as a zombie.
            Ok(mut child) => {
                std::thread::spawn(move || child.wait());
            }
            Err(e) => eprintln!("note: notify command failed to start: {e}"),
        }
    }
}

async fn rollcall(
    engine: &mut Engine,
    id: &str,
    watch: bool,
    json: bool,
) -> Result<(), EngineError> {
    let conn = connected(engine).await?;
    let wakeups = conn.wakeups();
    let mut last_shown = None;
    loop {
        engine.sync(&conn).await?;
        let r = engine.rollcall(id)?;
        let summary = (r.acknowledged, r.members.len());
        if last_shown != Some(summary) {
            if json {
                print_json(&r);
            } else {
                println!(
                    "{} of {} acknowledged: {}",
                    r.acknowledged,
                    r.members.len(),
                    r.alert.text
                );
                for m in &r.members {
                    match &m.acked_at {
                        Some(at) => println!("  ✓ {:<16} {at}", m.user),
                        None => println!("  … {:<16} waiting", m.user),
                    }
                }
            }
            let _ = std::io::stdout().flush();
            last_shown = Some(summary);
        }
        if !watch || r.acknowledged == r.members.len() {
            break;
        }
        wakeups.next(Some(std::time::Duration::from_secs(30))).await;
    }
    conn.close().await;
    Ok(())
}

/// Sends what was just queued; when the relay cannot be reached it stays in the outbox.
async fn deliver_queued(
    engine: &mut Engine,
    queued: &muster_engine::QueuedMessage,
) -> Result<(), EngineError> {
    let result = match connected(engine).await {
        Ok(conn) => {
            let sent = engine.deliver(&conn, queued).await;
            conn.close().await;
            sent
        }
        Err(e) => Err(e),
    };
    match result {
        Err(e @ (EngineError::Link(_) | EngineError::AwaitingApproval)) => {
            Err(EngineError::Invalid(format!(
                "not sent yet ({e}); message {} stays in the outbox and goes out with the next `muster sync`",
                queued.id
            )))
        }
        other => other,
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

async fn connected(engine: &mut Engine) -> Result<Connection, EngineError> {
    muster_driver::connect(engine).await
}

async fn run(cli: Cli) -> Result<(), EngineError> {
    let home = cli.home.unwrap_or_else(default_home);
    let mut engine = Engine::open(&home)?;
    match cli.command {
        Command::Org(OrgCommand::Create {
            relay,
            fingerprint,
            token,
            name,
            user,
            display_name,
        }) => {
            let profile = Profile {
                display_name: display_name.unwrap_or_else(|| user.clone()),
                ..Default::default()
            };
            let setup = muster_engine::NewOrg {
                relay: &relay,
                fingerprint: &fingerprint,
                token: &token,
                org_name: &name,
                user: &user,
                profile,
            };
            muster_driver::create_org(&mut engine, &setup).await?;
            println!("organisation {name:?} created; you are admin {user}");
        }
        Command::Invite { user, ttl } => {
            let conn = connected(&mut engine).await?;
            let code = engine.create_invite(&conn, &user, ttl).await?;
            conn.close().await;
            println!("{code}");
        }
        Command::Join {
            code,
            display_name,
            title,
            department,
        } => {
            let device = muster_driver::join(
                &mut engine,
                &code,
                Profile {
                    display_name,
                    title,
                    department,
                },
            )
            .await?;
            println!("enrolment request sent (device {device}); an admin must approve it");
        }
        Command::JoinDevice { code } => {
            let device = muster_driver::join_device(&mut engine, &code).await?;
            println!(
                "device link request sent (device {device}); an admin must approve it, or, where the organisation allows it, you with `muster device approve {device}` on your other device"
            );
        }
        Command::Device(DeviceCommand::Link { ttl }) => {
            let conn = connected(&mut engine).await?;
            let code = engine.create_device_link(&conn, ttl).await;
            conn.close().await;
            println!("{}", code?);
        }
        Command::Device(DeviceCommand::Approve { device_id }) => {
            let conn = connected(&mut engine).await?;
            let result = engine.confirm_device(&conn, &device_id).await;
            conn.close().await;
            result?;
            println!("approved your new device {device_id}; it is enrolled once an admin device has issued its certificate");
        }
        Command::Devices(flag) => {
            let conn = connected(&mut engine).await?;
            let devices = engine.devices(&conn).await;
            conn.close().await;
            print_listing(devices?, flag.json, |d| {
                println!(
                    "{}{}  enrolled until {}",
                    d.device_id,
                    if d.this_device { " (this device)" } else { "" },
                    d.enrolled_until
                );
            });
        }
        Command::Pending(flag) => {
            let conn = connected(&mut engine).await?;
            let pending = engine.pending(&conn).await?;
            conn.close().await;
            print_listing(&pending, flag.json, |p| {
                let proof = match (&p.code_from, &p.problem) {
                    (Some(by), _) => format!("code from {by}"),
                    (None, Some(why)) => format!("CANNOT BE APPROVED: {why}"),
                    (None, None) => String::new(),
                };
                println!(
                    "{}{}  \"{}\"{}  device {}  requested {}  {proof}",
                    p.user,
                    if p.linked { " (new device)" } else { "" },
                    p.display_name,
                    title_and_department(p.title.as_deref(), p.department.as_deref()),
                    p.device_id,
                    p.requested_at
                );
            });
            if pending.is_empty() && !flag.json {
                println!("no pending enrolment requests");
            }
        }
        Command::Approve {
            user,
            device,
            archive,
        } => {
            let conn = connected(&mut engine).await?;
            let id = engine
                .approve(&conn, &user, device.as_deref(), archive)
                .await?;
            conn.close().await;
            if archive {
                println!("approved {user} (device {id}) as the organisation's compliance archive");
            } else {
                println!("approved {user} (device {id})");
            }
        }
        Command::Reject { user, device } => {
            let conn = connected(&mut engine).await?;
            let id = engine.reject(&conn, &user, device.as_deref()).await?;
            conn.close().await;
            println!("rejected {user} (device {id})");
        }
        Command::Group(cmd) => {
            let conn = connected(&mut engine).await?;
            let result = match cmd {
                GroupCommand::Create {
                    name,
                    members,
                    managed,
                } => {
                    let g = engine.create_group(&conn, &name, &members, managed).await?;
                    print_group(&g);
                    Ok(())
                }
                GroupCommand::Add { group, user } => {
                    let g = engine.add_member(&conn, &group, &user).await?;
                    print_group(&g);
                    Ok(())
                }
                GroupCommand::Remove { group, user } => {
                    let g = engine.remove_member(&conn, &group, &user).await?;
                    print_group(&g);
                    Ok(())
                }
                GroupCommand::Policy {
                    group,
                    retain,
                    disappear,
                    keep_forever,
                    archived,
                    no_archived,
                } => {
                    if archived || no_archived {
                        engine.set_group_policy(&conn, &group, archived).await?;
                    }
                    if retain.is_some() || disappear.is_some() || keep_forever {
                        let queued = engine.queue_retention(&group, retain, disappear)?;
                        engine.deliver(&conn, &queued).await?;
                    }
                    let g = engine
                        .groups()?
                        .into_iter()
                        .find(|g| g.name == group || g.id.starts_with(&group))
                        .ok_or_else(|| EngineError::UnknownGroup(group.clone()))?;
                    match (g.disappear_secs, g.retain_secs) {
                        (Some(d), _) => println!(
                            "{}: messages disappear {} after they are sent",
                            g.name,
                            muster_engine::describe_duration(d)
                        ),
                        (None, Some(r)) => println!(
                            "{}: messages are kept for {}",
                            g.name,
                            muster_engine::describe_duration(r)
                        ),
                        (None, None) => {
                            println!("{}: messages are kept with no time limit", g.name)
                        }
                    }
                    if g.archived {
                        println!(
                            "{}: archived by the organisation's compliance archive ({})",
                            g.name,
                            g.archive_members.join(", ")
                        );
                    }
                    Ok(())
                }
                GroupCommand::Rename { group, new_name } => {
                    let g = engine.rename_group(&conn, &group, &new_name).await?;
                    print_group(&g);
                    Ok(())
                }
                GroupCommand::Leave { group } => {
                    engine.leave_group(&conn, &group).await?;
                    println!("left {group}");
                    Ok(())
                }
            };
            conn.close().await;
            return result;
        }
        Command::Groups(flag) => {
            print_listing(engine.groups()?, flag.json, |g| {
                print_group(g);
            });
        }
        Command::Send {
            group,
            text,
            file: Some(path),
            reply_to,
        } => {
            if reply_to.is_some() {
                return Err(EngineError::Invalid(
                    "a reply cannot carry a file yet: send the file, then reply".into(),
                ));
            }
            let conn = connected(&mut engine).await?;
            let result = async {
                let queued = engine
                    .send_file(&conn, &group, &path, text.as_deref())
                    .await?;
                engine.deliver(&conn, &queued).await?;
                Ok::<_, EngineError>(queued)
            }
            .await;
            conn.close().await;
            println!("sent {}", result?.id);
        }
        Command::Send {
            group,
            text,
            file: None,
            reply_to,
        } => {
            let text = text.ok_or_else(|| {
                EngineError::Invalid("give the message text (or --file PATH)".into())
            })?;
            let text = if text == "-" {
                let mut buf = String::new();
                std::io::stdin().read_to_string(&mut buf)?;
                buf.trim_end_matches('\n').to_string()
            } else {
                text
            };
            let queued = engine.queue_reply(&group, &text, reply_to.as_deref())?;
            deliver_queued(&mut engine, &queued).await?;
            println!("sent {}", queued.id);
        }
        Command::Alert {
            group,
            text,
            ack_required,
        } => {
            let queued = engine.queue_alert(&group, &text, ack_required)?;
            deliver_queued(&mut engine, &queued).await?;
            println!("alert sent {}", queued.id);
        }
        Command::Ack { id } => {
            let queued = engine.queue_ack(&id)?;
            deliver_queued(&mut engine, &queued).await?;
            println!("acknowledged {id}");
        }
        Command::Rollcall { id, watch, json } => rollcall(&mut engine, &id, watch, json).await?,
        Command::Search {
            query,
            group,
            limit,
            json,
        } => {
            let found = engine.search(&query, group.as_deref(), limit)?;
            print_listing(&found, json, |m| {
                print!("{}: ", m.group);
                print_message(m);
            });
            if found.is_empty() && !json {
                println!("no messages match {query:?}");
            }
        }
        Command::Alerts(flag) => {
            print_listing(engine.unacknowledged_alerts()?, flag.json, |m| {
                print_message(m);
            });
        }
        Command::Board {
            group,
            action,
            json,
        } => {
            let queued = match &action {
                Some(BoardAction::Set { key, value }) => {
                    Some(engine.queue_board_set(&group, key, value)?)
                }
                Some(BoardAction::Clear { key }) => Some(engine.queue_board_set(&group, key, "")?),
                None => None,
            };
            if let Some(queued) = queued {
                deliver_queued(&mut engine, &queued).await?;
            }
            print_listing(engine.board(&group)?, json, |e| {
                println!(
                    "{:<16} {}  ({}{})",
                    e.key,
                    e.value,
                    e.author,
                    if e.pending { ", not yet sent" } else { "" }
                );
            });
        }
        Command::Mute { target, user } => set_mute(&engine, &target, user, true)?,
        Command::Unmute { target, user } => set_mute(&engine, &target, user, false)?,
        Command::Pin { group } => {
            print_group(&engine.set_group_view(&group, None, Some(true), None)?);
        }
        Command::Unpin { group } => {
            print_group(&engine.set_group_view(&group, None, Some(false), None)?);
        }
        Command::NotifyLevel { group, level } => {
            print_group(&engine.set_group_view(&group, None, None, Some(&level))?);
        }
        Command::Config(ConfigCommand::NotifyCommand { command }) => match command {
            Some(c) if c.trim().is_empty() => {
                engine.set_setting(NOTIFY_COMMAND, None)?;
                println!("notify command removed");
            }
            Some(c) => {
                engine.set_setting(NOTIFY_COMMAND, Some(&c))?;
                println!("notify command set");
            }
            None => println!(
                "{}",
                engine
                    .setting(NOTIFY_COMMAND)?
                    .unwrap_or_else(|| "(none)".into())
            ),
        },
        Command::Fetch { id, out } => {
            let conn = connected(&mut engine).await?;
            let saved = engine.fetch_attachment(&conn, &id, out.as_deref()).await;
            conn.close().await;
            println!("saved {}", saved?.display());
        }
        Command::Edit { id, text } => {
            let queued = engine.queue_edit(&id, &text)?;
            deliver_queued(&mut engine, &queued).await?;
            println!("edited {id}");
        }
        Command::Delete { id } => {
            let queued = engine.queue_delete(&id)?;
            deliver_queued(&mut engine, &queued).await?;
            println!("deleted {id}");
        }
        Command::React { id, emoji, remove } => {
            let queued = engine.queue_reaction(&id, &emoji, remove)?;
            deliver_queued(&mut engine, &queued).await?;
            println!(
                "{} {emoji} on {id}",
                if remove { "removed" } else { "reacted" }
            );
        }
        Command::Sync(flag) => {
            let conn = connected(&mut engine).await?;
            let report = engine.sync(&conn).await;
            conn.close().await;
            let report = report?;
            notify(&engine, &report.notifications);
            if flag.json {
                print_json(&report);
            } else {
                println!(
                    "received {} message(s), joined {} group(s), sent {}",
                    report.received,
                    report.joined_groups.len(),
                    report.sent
                );
                for d in &report.approved_devices {
                    println!("approved the new device of {d}, as its user asked");
                }
                for p in &report.problems {
                    println!("warning: {p}");
                }
            }
        }
        Command::Read { group, limit, json } => {
            let shown = engine.read(&group, limit)?;
            print_listing(&shown, json, |m| {
                print_message(m);
            });
            // Read receipts go out with the next sync or send.
            if let Err(e) = engine.mark_read(&shown) {
                eprintln!("note: read receipts not queued: {e}");
            }
        }
        Command::Chat { group } => chat(&mut engine, &group).await?,
        Command::Directory(flag) => {
            let conn = connected(&mut engine).await?;
            let entries = engine.directory(&conn).await;
            conn.close().await;
            print_listing(entries?, flag.json, |e| {
                println!(
                    "{:<16} {}{}  [{}]",
                    e.user,
                    e.display_name,
                    title_and_department(e.title.as_deref(), e.department.as_deref()),
                    e.roles.join(", ")
                );
            });
        }
        Command::Admin(AdminCommand::Revoke { user, device }) => {
            let conn = connected(&mut engine).await?;
            let revoked = engine.revoke(&conn, &user, device.as_deref()).await;
            conn.close().await;
            let revoked = revoked?;
            println!(
                "revoked {user}: {} device(s): {}",
                revoked.len(),
                revoked.join(", ")
            );
        }
        Command::Archive(command) => archive::run(&mut engine, command).await?,
        Command::Profile(ProfileCommand::Show(flag)) => {
            let p = engine.profile()?;
            if flag.json {
                print_json(&serde_json::json!({
                    "display_name": p.display_name, "title": p.title, "department": p.department,
                }));
            } else {
                println!("display name: {}", p.display_name);
                println!("title: {}", p.title.as_deref().unwrap_or("(not revealed)"));
                println!(
                    "department: {}",
                    p.department.as_deref().unwrap_or("(not revealed)")
                );
            }
        }
        Command::Profile(ProfileCommand::Set {
            display_name,
            title,
            department,
        }) => {
            let conn = connected(&mut engine).await?;
            let result = engine
                .request_profile(
                    &conn,
                    Profile {
                        display_name,
                        title,
                        department,
                    },
                )
                .await;
            conn.close().await;
            result?;
            println!("profile change sent; colleagues see it once an admin approves it");
        }
        Command::Admin(AdminCommand::Profiles(flag)) => {
            let conn = connected(&mut engine).await?;
            let changes = engine.profile_changes(&conn).await;
            conn.close().await;
            print_listing(changes?, flag.json, |c| {
                let check = match (&c.signed_by, &c.problem) {
                    (Some(device), _) => format!("signed by their device {device}"),
                    (None, Some(why)) => format!("CANNOT BE APPROVED: {why}"),
                    (None, None) => String::new(),
                };
                println!(
                    "{}: {} -> {}  ({check})",
                    c.user,
                    describe_profile(&c.current),
                    describe_profile(&c.requested)
                );
            });
        }
        Command::Admin(AdminCommand::ApproveProfile { user }) => {
            let conn = connected(&mut engine).await?;
            let result = engine.approve_profile(&conn, &user).await;
            conn.close().await;
            let p = result?;
            println!("approved the new profile of {user} ({})", p.display_name);
        }
        Command::Admin(AdminCommand::RejectProfile { user }) => {
            let conn = connected(&mut engine).await?;
            let result = engine.reject_profile(&conn, &user).await;
            conn.close().await;
            result?;
            println!("rejected the profile change of {user}");
        }
        Command::Admin(AdminCommand::Apply {
            file,
            dry_run,
            invites_out,
            ttl,
            json,
        }) => {
            admin_apply(
                &mut engine,
                &file,
                dry_run,
                invites_out.as_deref(),
                ttl,
                json,
            )
            .await?
        }
        Command::Admin(AdminCommand::Policy {
            device_self_approval,
            certificate_lifetime,
            json,
        }) => {
            let conn = connected(&mut engine).await?;
            let result = if device_self_approval.is_some() || certificate_lifetime.is_some() {
                engine
                    .set_org_policy(&conn, device_self_approval, certificate_lifetime)
                    .await
                    .map(|p| (p, vec![]))
            } else {
                engine.org_policy(&conn).await
            };
            conn.close().await;
            let (policy, problems) = result?;
            for p in &problems {
                eprintln!("warning: {p}");
            }
            if json {
                print_json(&serde_json::json!({
                    "device_self_approval": policy.device_self_approval,
                    "version": policy.version,
                    "certificate_lifetime_secs": policy.certificate_lifetime(),
                }));
            } else {
                println!(
                    "device self-approval: {} (policy version {})",
                    if policy.device_self_approval {
                        "on"
                    } else {
                        "off"
                    },
                    policy.version
                );
                println!(
                    "certificates valid for: {}",
                    muster_engine::describe_duration(policy.certificate_lifetime())
                );
            }
        }
        Command::Admin(AdminCommand::ArchiveCheck { file, json }) => {
            let text = std::fs::read(&file).map_err(|e| {
                EngineError::Invalid(format!("cannot read {}: {e}", file.display()))
            })?;
            let chain: muster_engine::archive::ExportedChain = serde_json::from_slice(&text)
                .map_err(|e| {
                    EngineError::Invalid(format!(
                        "{} is not a chain from `muster archive export-chain`: {e}",
                        file.display()
                    ))
                })?;
            let conn = connected(&mut engine).await?;
            let report = engine.archive_check(&conn, &chain).await;
            conn.close().await;
            archive::print_report(&report?, json)?;
        }
        Command::Admin(AdminCommand::Audit { limit, json }) => {
            let conn = connected(&mut engine).await?;
            let events = engine.audit(&conn, limit).await;
            conn.close().await;
            print_listing(events?, json, |e| {
                let group = e
                    .group
                    .as_ref()
                    .map(|g| format!(" in {g}"))
                    .unwrap_or_default();
                println!(
                    "{}  {:<20} {} -> {}{group}",
                    e.at, e.event, e.actor, e.subject
                );
            });
        }
        Command::Whoami(flag) => {
            let (user, device, org) = engine.whoami()?;
            if flag.json {
                print_json(&serde_json::json!({"user": user, "device_id": device, "org": org}));
            } else {
                println!("{user} (device {device}) in {org}");
            }
        }
    }
    Ok(())
}

async fn admin_apply(
    engine: &mut Engine,
    file: &std::path::Path,
    dry_run: bool,
    invites_out: Option<&std::path::Path>,
    ttl: u64,
    json: bool,
) -> Result<(), EngineError> {
    use muster_engine::provision::{parse_spec, plan};
    let text = std::fs::read_to_string(file)
        .map_err(|e| EngineError::Invalid(format!("cannot read {}: {e}", file.display())))?;
    let spec =
        parse_spec(&text).map_err(|e| EngineError::Invalid(format!("{}: {e}", file.display())))?;
    let conn = connected(engine).await?;
    let state = engine.provision_state(&conn).await?;
    let (actions, problems) = plan(&spec, &state);
    for p in &problems {
        if json {
            print_json(&serde_json::json!({"status": "problem", "error": p}));
        } else {
            eprintln!("cannot: {p}");
        }
    }
    if dry_run || actions.is_empty() {
        for a in &actions {
            if json {
                let mut v = serde_json::to_value(a).expect("action serialises");
                v["status"] = "planned".into();
                print_json(&v);
            } else {
                println!("would {a}");
            }
        }
        if !json {
            if actions.is_empty() {
                println!("nothing to do: the organisation matches {}", file.display());
            } else {
                println!(
                    "{} change(s) planned; run without --dry-run to apply",
                    actions.len()
                );
            }
        }
        conn.close().await;
        return if problems.is_empty() {
            Ok(())
        } else {
            Err(EngineError::Invalid(format!(
                "{} problem(s) in the plan",
                problems.len()
            )))
        };
    }
    let bar = indicatif::ProgressBar::new(actions.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {wide_msg}")
            .expect("valid template"),
    );
    let mut invites = Vec::new();
    let mut failures = Vec::new();
    for action in &actions {
        bar.set_message(action.to_string());
        let result = engine.apply_action(&conn, &spec, action, ttl).await;
        let mut record = serde_json::to_value(action).expect("action serialises");
        match result {
            Ok(code) => {
                record["status"] = "done".into();
                if let (Some(code), muster_engine::provision::Action::Invite { user }) =
                    (code, action)
                {
                    invites.push((user.clone(), code));
                }
            }
            Err(e) => {
                record["status"] = "failed".into();
                record["error"] = e.to_string().into();
                bar.suspend(|| eprintln!("failed: {action}: {e}"));
                failures.push(action.to_string());
            }
        }
        if json {
            bar.suspend(|| print_json(&record));
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    conn.close().await;
    match invites_out {
        Some(path) => {
            use std::io::Write as _;
            let mut options = std::fs::OpenOptions::new();
            options.create(true).append(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                // Invite codes are secrets until used.
                options.mode(0o600);
            }
            let mut out = options.open(path)?;
            for (user, code) in &invites {
                writeln!(out, "{user} {code}")?;
            }
            if !json && !invites.is_empty() {
                println!(
                    "{} invite code(s) written to {}",
                    invites.len(),
                    path.display()
                );
            }
        }
        None if !json => {
            for (user, code) in &invites {
                println!("invite {user}: {code}");
            }
        }
        None => {}
    }
    let approved = actions
        .iter()
        .filter(|a| matches!(a, muster_engine::provision::Action::Approve { .. }))
        .count();
    if !json && approved > 0 {
        println!(
            "approved users are seated in their groups by the next apply, once their device has connected"
        );
    }
    if !json {
        println!(
            "applied {} of {} change(s); {} failed",
            actions.len() - failures.len(),
            actions.len(),
            failures.len()
        );
    }
    if failures.is_empty() && problems.is_empty() {
        Ok(())
    } else {
        Err(EngineError::Invalid(format!(
            "{} step(s) failed and {} problem(s) in the plan",
            failures.len(),
            problems.len()
        )))
    }
}

async fn chat(engine: &mut Engine, group: &str) -> Result<(), EngineError> {
    use tokio::io::AsyncBufReadExt;
    let mut conn = connected(engine).await?;
    let report = engine.sync(&conn).await?;
    for p in &report.problems {
        eprintln!("warning: {p}");
    }
    let mut last = 0;
    for m in engine.read(group, 20)? {
        print_message(&m);
        last = last.max(m.local_seq);
    }
    if let Some(g) = engine
        .groups()?
        .into_iter()
        .find(|g| g.name == group || g.id.starts_with(group))
    {
        if g.archived {
            if g.archive_members.is_empty() {
                println!("*** ARCHIVED GROUP WITHOUT ITS ARCHIVE: sending is blocked until an admin restores it ***");
            } else {
                println!(
                    "*** ARCHIVED: everything said here is kept by the organisation's compliance archive ({}) ***",
                    g.archive_members.join(", ")
                );
            }
        }
    }
    println!(
        "--- chatting in {group}: type a message and press Enter; /ack ID acknowledges an alert; /quit or Ctrl-D to leave ---"
    );
    remind_unacknowledged(engine)?;
    let _ = std::io::stdout().flush();
    let reminder_every = std::env::var("MUSTER_REMINDER_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60u64)
        .max(1);
    let mut reminder = tokio::time::interval(std::time::Duration::from_secs(reminder_every));
    reminder.tick().await;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut wakeups = conn.wakeups();
    let mut backoff = Backoff::default();
    loop {
        tokio::select! {
            wake = wakeups.next(None) => {
                if wake == Wake::Lost {
                    eprintln!("connection to the relay lost; reconnecting");
                    conn = muster_driver::reconnect(engine, &mut backoff, 11).await?;
                    wakeups = conn.wakeups();
                }
                let report = engine.sync(&conn).await?;
                notify(engine, &report.notifications);
                for p in &report.problems {
                    eprintln!("warning: {p}");
                }
                // Urgent alerts from other groups come through here too.
                for n in report.notifications.iter().filter(|n| n.kind == "alert" && n.group != group) {
                    println!("🚨 ALERT in {} from {}: {}  #{}", n.group, n.sender, n.text, n.id.get(..8).unwrap_or(&n.id));
                }
            }
            _ = reminder.tick() => {
                remind_unacknowledged(engine)?;
            }
            line = lines.next_line() => {
                let Some(line) = line? else { break };
                let line = line.trim();
                if line == "/quit" {
                    break;
                }
                if let Some(id) = line.strip_prefix("/ack ") {
                    match engine.queue_ack(id.trim()) {
                        Ok(_) => {
                            engine.flush(&conn).await?;
                            println!("acknowledged {}", id.trim());
                        }
                        Err(e) => eprintln!("not acknowledged: {e}"),
                    }
                } else if !line.is_empty() {
                    if let Err(e) = engine.send_text(&conn, group, line).await {
                        eprintln!("not sent: {e}");
                    }
                }
            }
        }
        let fresh = engine.messages_after(group, last)?;
        for m in &fresh {
            print_message(m);
            last = last.max(m.local_seq);
        }
        if fresh
            .iter()
            .any(|m| m.kind != "system" && m.status == "received")
        {
            match engine.mark_read(&fresh) {
                Ok(()) => {
                    engine.flush(&conn).await?;
                }
                Err(e) => eprintln!("note: read receipts not queued: {e}"),
            }
        }
        let _ = std::io::stdout().flush();
    }
    conn.close().await;
    Ok(())
}

/// Repeats every alert still waiting for this user's acknowledgement.
fn remind_unacknowledged(engine: &Engine) -> Result<(), EngineError> {
    for m in engine.unacknowledged_alerts()? {
        println!(
            "reminder: 🚨 {} in {} asks for your acknowledgement: {}  (/ack {})",
            m.sender,
            m.group,
            m.text,
            m.id.get(..8).unwrap_or(&m.id)
        );
    }
    let _ = std::io::stdout().flush();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::terminal_safe;

    #[test]
    fn control_characters_are_shown_escaped() {
        assert_eq!(terminal_safe("plain text 👍"), "plain text 👍");
        assert_eq!(
            terminal_safe("a\nb\u{1b}[2Kc\u{202e}d\u{7f}"),
            "a\\nb\\u{1b}[2Kc\\u{202e}d\\u{7f}"
        );
    }
}
