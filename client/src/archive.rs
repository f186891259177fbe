//! `muster archive ...`: the compliance archive device's commands.

use clap::{Subcommand, ValueEnum};
use muster_engine::archive::{AccessRecord, ArchivedMessage, ExportFilter, VerifyReport};
use muster_engine::{legal, rfc3339_ms as rfc3339, ArchiveRead, Engine, EngineError};
use std::io::Write;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum ArchiveCommand {
    #[command(flatten)]
    Host(HostCommand),
    #[command(flatten)]
    Officers(OfficerCommand),
}

/// What the archive device itself runs.
#[derive(Subcommand)]
pub enum HostCommand {
    /// Run the archive: stay connected, process everything archived groups send, and
    /// store it in the hash-chained archive. Stops on Ctrl-C or SIGTERM.
    Serve {
        /// Keep entries this long (e.g. 7y, 90d), then delete them, except those of users
        /// under legal hold. Remembered for later runs.
        #[arg(long, value_parser = crate::cli::parse_duration)]
        retain: Option<u64>,
        /// Also delete entries once their group's disappearing-message time has passed
        /// (counted from when the archive received them). Off by default: a group's
        /// members choose that time, the organisation's retention does not. Remembered.
        #[arg(long)]
        honour_disappearing: bool,
    },
    /// Check every entry's hash chain, every signed checkpoint, that every cleared entry
    /// was lawfully cleared, and the checkpoints published on the relay.
    Verify {
        /// Do not compare with the checkpoints published on the relay.
        #[arg(long)]
        offline: bool,
        #[arg(long)]
        json: bool,
    },
    /// Write the whole chain and its checkpoints for an admin's independent check
    /// (`muster admin archive-check FILE`); recorded in the access log.
    ExportChain {
        #[arg(long)]
        out: PathBuf,
    },
    /// Write one account's archived messages to a file (recorded in the access log).
    Export {
        #[arg(long)]
        user: String,
        /// Only this group (name or id).
        #[arg(long)]
        group: Option<String>,
        /// Sent at or after this time (RFC 3339, or a date like 2026-01-31).
        #[arg(long, value_parser = parse_time)]
        from: Option<i64>,
        /// Sent before this time (RFC 3339, or a date).
        #[arg(long, value_parser = parse_time)]
        to: Option<i64>,
        #[arg(long, value_enum)]
        format: ExportFormat,
        #[arg(long)]
        out: PathBuf,
        /// A legal officer's approval (from `muster archive approve`); as many as the
        /// organisation's threshold. Without them, a sealed archive writes a request.
        #[arg(long = "approval", value_name = "FILE")]
        approvals: Vec<PathBuf>,
    },
    /// Draw a random sample of archived messages for a reviewer (recorded in the access log).
    Sample {
        #[arg(long)]
        count: usize,
        /// The same seed draws the same sample again.
        #[arg(long)]
        seed: Option<u64>,
        /// A legal officer's approval, as for `export`.
        #[arg(long = "approval", value_name = "FILE")]
        approvals: Vec<PathBuf>,
    },
    /// Print who exported or sampled what, and every hold and release.
    AccessLog {
        #[arg(long)]
        json: bool,
    },
    /// Put a user under legal hold: their messages are kept past the retention period.
    Hold { user: String },
    /// Release a user's legal hold.
    Release { user: String },
    /// List users under legal hold.
    Holds,
    /// Delete entries past the retention period, or past their group's disappearing
    /// time, now (except those of users under legal hold).
    Prune {
        /// Defaults to the period `serve --retain` remembered.
        #[arg(long, value_parser = crate::cli::parse_duration)]
        retain: Option<u64>,
        /// Also apply groups' disappearing times (default: as `serve` remembered).
        #[arg(long)]
        honour_disappearing: bool,
    },
}

/// What legal officers and the admin who appoints them run on their own devices.
#[derive(Subcommand)]
pub enum OfficerCommand {
    /// (admin) Appoint the legal officers who alone can read the archive: makes their key,
    /// publishes it in the organisation policy, writes each officer's sealed share to
    /// DIR/officer-share-USER.json and prints the code that opens it (hand each file and
    /// its code to its officer by different ways).
    AppointOfficers {
        /// The officers' handles.
        #[arg(long, value_delimiter = ',', required = true)]
        officers: Vec<String>,
        /// How many of them must approve each export or sample.
        #[arg(long)]
        threshold: u8,
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// (legal officer) Keep your share of the officers' key on this device; the code is
    /// read from MUSTER_SHARE_CODE or asked on the terminal.
    ImportShare { file: PathBuf },
    /// (legal officer) Approve the archive's request to read, on your own device: checks
    /// who asks and for what, and writes your approval for the archive.
    Approve {
        request: PathBuf,
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    /// One JSON object per line.
    Jsonl,
    /// RFC 5322 messages in one mbox file (`From ` separated), readable by mail tools.
    Eml,
}

const RETAIN_SETTING: &str = "archive_retain_secs";
const DISAPPEARING_SETTING: &str = "archive_honour_disappearing";
/// How often `serve` applies retention and disappearing-message times.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// A time given on the command line, in milliseconds since the Unix epoch.
fn parse_time(s: &str) -> Result<i64, String> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(s, &Rfc3339) {
        return Ok((t.unix_timestamp_nanos() / 1_000_000) as i64);
    }
    let date_format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(s, &date_format)
        .map(|d| d.midnight().assume_utc().unix_timestamp() * 1000)
        .map_err(|_| {
            format!(
                "invalid time {s:?}: use RFC 3339 (2026-01-31T09:00:00Z) or a date (2026-01-31)"
            )
        })
}

/// Reads a JSON file someone handed over, naming it in the error.
fn read_json<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
    what: &str,
) -> Result<T, EngineError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| EngineError::Invalid(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| EngineError::Invalid(format!("{} is not {what}: {e}", path.display())))
}

fn write_json(path: &std::path::Path, value: &impl serde::Serialize) -> Result<(), EngineError> {
    let text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
    std::fs::write(path, text).map_err(|e| EngineError::Invalid(format!("{}: {e}", path.display())))
}

fn read_approvals(files: &[PathBuf]) -> Result<Vec<legal::Approval>, EngineError> {
    files
        .iter()
        .map(|f| read_json(f, "a legal officer's approval"))
        .collect()
}

/// Writes the request a sealed archive needs approved, and says what to do with it.
fn needs_approval(engine: &Engine, request: &legal::ApprovalRequest) -> EngineError {
    let file = PathBuf::from(format!("archive-request-{}.json", request.id));
    if let Err(e) = write_json(&file, request) {
        return e;
    }
    let readers = engine
        .legal_officers()
        .ok()
        .flatten()
        .map(|o| o.describe())
        .unwrap_or_default();
    EngineError::Invalid(format!(
        "this archive is sealed ({readers}): nothing was read. The request is in {}; each \
         approving officer runs `muster archive approve {} --out approval-NAME.json` on their \
         own device; then run this command again with --approval FILE for each approval",
        file.display(),
        file.display()
    ))
}

async fn officer_command(engine: &mut Engine, command: OfficerCommand) -> Result<(), EngineError> {
    match command {
        OfficerCommand::AppointOfficers {
            officers,
            threshold,
            out,
        } => {
            std::fs::create_dir_all(&out)?;
            let ceremony = crate::online(engine, async |engine, conn| {
                engine
                    .appoint_legal_officers(conn, threshold, &officers)
                    .await
            })
            .await?;
            println!(
                "the archive is now {} (key {})",
                ceremony.officers.describe(),
                ceremony.officers.key_id
            );
            for (file, code) in &ceremony.shares {
                let path = out.join(format!("officer-share-{}.json", file.officer));
                write_json(&path, file)?;
                println!("{}: share in {}, code {code}", file.officer, path.display());
            }
            Ok(())
        }
        OfficerCommand::ImportShare { file } => {
            let share: legal::ShareFile = read_json(&file, "a legal officer's share file")?;
            let code = match std::env::var("MUSTER_SHARE_CODE") {
                Ok(code) if !code.is_empty() => zeroize::Zeroizing::new(code),
                _ => zeroize::Zeroizing::new(rpassword::prompt_password("share code: ")?),
            };
            engine.import_officer_share(&share, &code)?;
            println!(
                "this device now holds {}'s share of the officers' key {}; {} may now be deleted",
                share.officer,
                share.key_id,
                file.display()
            );
            Ok(())
        }
        OfficerCommand::Approve { request, out } => {
            let request: legal::ApprovalRequest =
                read_json(&request, "a request from the archive")?;
            let approval = crate::online(engine, async |engine, conn| {
                engine.approve_archive_request(conn, &request).await
            })
            .await?;
            write_json(&out, &approval)?;
            println!(
                "approved {} ({}) for the archive {}: hand {} to the archive's operator",
                request.action,
                request.what,
                request.archive.body.user,
                out.display()
            );
            Ok(())
        }
    }
}

pub async fn run(engine: &mut Engine, command: ArchiveCommand) -> Result<(), EngineError> {
    let command = match command {
        ArchiveCommand::Officers(command) => return officer_command(engine, command).await,
        ArchiveCommand::Host(command) => command,
    };
    if !engine.is_archive()? {
        return Err(EngineError::Invalid(
            "this device is not the organisation's archive: enrol it with `muster join` and have an admin run `muster approve USER --archive`".into(),
        ));
    }
    match command {
        HostCommand::Serve {
            retain,
            honour_disappearing,
        } => serve(engine, retain, honour_disappearing).await,
        HostCommand::Verify { offline, json } => {
            let report = if offline {
                engine.archive_verify_offline()?
            } else {
                let conn = muster_driver::connect(engine).await.map_err(|e| {
                    EngineError::Invalid(format!(
                        "cannot reach the relay to compare the checkpoints published there ({e}); `--offline` checks the archive alone"
                    ))
                })?;
                let report = engine.archive_verify(&conn).await;
                conn.close().await;
                report?
            };
            print_report(&report, json)
        }
        HostCommand::ExportChain { out } => {
            let chain = crate::online(engine, async |engine, conn| {
                engine.archive_chain(conn).await
            })
            .await;
            let chain = chain?;
            let file = std::fs::File::create(&out)?;
            serde_json::to_writer(std::io::BufWriter::new(file), &chain)
                .map_err(std::io::Error::other)?;
            eprintln!(
                "wrote {} entries and {} checkpoints to {}",
                chain.entries.len(),
                chain.checkpoints.len(),
                out.display()
            );
            Ok(())
        }
        HostCommand::Export {
            user,
            group,
            from,
            to,
            format,
            out,
            approvals,
        } => {
            let approvals = read_approvals(&approvals)?;
            let filter = ExportFilter {
                user,
                group,
                from_ms: from,
                to_ms: to,
            };
            let messages = crate::online(engine, async |engine, conn| {
                engine.archive_export(conn, &filter, &approvals).await
            })
            .await;
            let messages = match messages? {
                ArchiveRead::Done(messages) => messages,
                ArchiveRead::NeedsApproval(request) => {
                    return Err(needs_approval(engine, &request))
                }
            };
            write_export(engine, &messages, format, &out)?;
            eprintln!(
                "exported {} message(s) of {} to {}",
                messages.len(),
                filter.user,
                out.display()
            );
            Ok(())
        }
        HostCommand::Sample {
            count,
            seed,
            approvals,
        } => {
            let approvals = read_approvals(&approvals)?;
            let sample = crate::online(engine, async |engine, conn| {
                engine.archive_sample(conn, count, seed, &approvals).await
            })
            .await;
            let (seed, sample) = match sample? {
                ArchiveRead::Done(drawn) => drawn,
                ArchiveRead::NeedsApproval(request) => {
                    return Err(needs_approval(engine, &request))
                }
            };
            for m in &sample {
                crate::print_json(m);
            }
            eprintln!("{} message(s) drawn with seed {seed}", sample.len());
            Ok(())
        }
        HostCommand::AccessLog { json } => {
            for (
                at,
                AccessRecord {
                    who,
                    action,
                    what,
                    approved_by,
                },
            ) in engine.archive_access_log()?
            {
                if json {
                    crate::print_json(
                        &serde_json::json!({"at": rfc3339(at), "who": who, "action": action, "what": what, "approved_by": approved_by}),
                    );
                } else if approved_by.is_empty() {
                    println!("{}  {who}  {action}  {what}", rfc3339(at));
                } else {
                    println!(
                        "{}  {who}  {action}  {what}  approved by {}",
                        rfc3339(at),
                        approved_by.join(", ")
                    );
                }
            }
            Ok(())
        }
        HostCommand::Hold { user } => {
            let changed = crate::online(engine, async |engine, conn| {
                engine.archive_hold(conn, &user, true).await
            })
            .await;
            let changed = changed?;
            println!(
                "{user} {}",
                if changed {
                    "is now under legal hold"
                } else {
                    "was already under legal hold"
                }
            );
            Ok(())
        }
        HostCommand::Release { user } => {
            let changed = crate::online(engine, async |engine, conn| {
                engine.archive_hold(conn, &user, false).await
            })
            .await;
            let changed = changed?;
            println!(
                "{user} {}",
                if changed {
                    "is released from legal hold"
                } else {
                    "was not under legal hold"
                }
            );
            Ok(())
        }
        HostCommand::Holds => {
            for (user, since) in engine.archive_holds()? {
                println!("{user}  since {}", rfc3339(since));
            }
            Ok(())
        }
        HostCommand::Prune {
            retain,
            honour_disappearing,
        } => {
            let retain = match retain {
                Some(r) => Some(r),
                None => stored_retention(engine)?,
            };
            let honour = honour_disappearing || honours_disappearing(engine)?;
            let cleared = engine.archive_prune(retain, honour)?;
            println!(
                "deleted {cleared} entr{} past retention",
                if cleared == 1 { "y" } else { "ies" }
            );
            Ok(())
        }
    }
}

fn stored_retention(engine: &Engine) -> Result<Option<u64>, EngineError> {
    Ok(engine.setting(RETAIN_SETTING)?.and_then(|v| v.parse().ok()))
}

fn honours_disappearing(engine: &Engine) -> Result<bool, EngineError> {
    Ok(engine.setting(DISAPPEARING_SETTING)?.as_deref() == Some("on"))
}

/// Prints what `verify` found; fails when it found anything.
pub(crate) fn print_report(report: &VerifyReport, json: bool) -> Result<(), EngineError> {
    if json {
        crate::print_json(report);
    } else {
        for p in &report.problems {
            println!("{p}");
        }
        if report.sealed + report.readable_by_host > 0 {
            println!(
                "{} message entries sealed to the legal officers, {} readable by this host",
                report.sealed, report.readable_by_host
            );
        }
        println!(
            "{} entries ({} past retention), {} signed checkpoints, {} published checkpoints compared: {}",
            report.entries,
            report.pruned,
            report.checkpoints,
            report.published,
            if report.problems.is_empty() {
                "intact"
            } else {
                "TAMPERED"
            }
        );
    }
    if report.problems.is_empty() {
        Ok(())
    } else {
        Err(EngineError::Invalid(format!(
            "archive verification failed: {} problem(s), first: {}",
            report.problems.len(),
            report.problems[0]
        )))
    }
}

async fn serve(
    engine: &mut Engine,
    retain: Option<u64>,
    honour_disappearing: bool,
) -> Result<(), EngineError> {
    if let Some(r) = retain {
        engine.set_setting(RETAIN_SETTING, Some(&r.to_string()))?;
    }
    if honour_disappearing {
        engine.set_setting(DISAPPEARING_SETTING, Some("on"))?;
    }
    let retain = stored_retention(engine)?;
    let honour_disappearing = honours_disappearing(engine)?;
    let muster_engine::Identity {
        user,
        device_id: device,
        ..
    } = engine.whoami()?;
    println!(
        "archive {user} (device {device}) serving; retention: {}",
        retain.map_or("none".to_string(), muster_engine::describe_duration)
    );
    let _ = std::io::stdout().flush();
    let shutdown = crate::live::shutdown_signal();
    tokio::pin!(shutdown);
    let mut next_prune = tokio::time::Instant::now();
    let mut backoff = muster_driver::Backoff::default();
    loop {
        // A service never gives up on its relay: it keeps trying, with the driver's backoff.
        let session = tokio::select! {
            session = muster_driver::Session::start(engine) => session,
            _ = &mut shutdown => return Ok(()),
        };
        let session = match session {
            Ok(session) => session,
            Err(EngineError::Link(e)) => {
                let delay = backoff.next_delay();
                eprintln!("relay unreachable ({e}); retrying in {delay:?}");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = &mut shutdown => return Ok(()),
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        backoff.reset();
        loop {
            match engine.sync(session.link()).await {
                Ok(report) => {
                    for p in &report.problems {
                        eprintln!("warning: {p}");
                    }
                    for g in &report.joined_groups {
                        println!("joined group {g}");
                    }
                    if report.received > 0 {
                        println!("archived {} message(s)", report.received);
                    }
                    let _ = std::io::stdout().flush();
                }
                Err(EngineError::Link(e)) => {
                    eprintln!("connection lost ({e}); reconnecting");
                    break;
                }
                Err(e) => eprintln!("warning: sync failed: {e}"),
            }
            match engine.archive_fetch_attachments(session.link()).await {
                Ok(0) => {}
                Ok(n) => println!("archived {n} attachment(s)"),
                Err(e) => eprintln!("warning: archiving attachments failed: {e}"),
            }
            for p in &engine.take_activity().problems {
                eprintln!("warning: {p}");
            }
            if tokio::time::Instant::now() >= next_prune {
                match engine.archive_prune(retain, honour_disappearing) {
                    Ok(0) => {}
                    Ok(n) => println!("deleted {n} entries past retention"),
                    Err(e) => eprintln!("warning: retention failed: {e}"),
                }
                next_prune = tokio::time::Instant::now() + PRUNE_EVERY;
            }
            tokio::select! {
                wake = session.wake(Some(std::time::Duration::from_secs(30))) => {
                    if wake == muster_driver::Wake::Lost {
                        eprintln!("connection to the relay lost; reconnecting");
                        break;
                    }
                }
                _ = &mut shutdown => {
                    session.close().await;
                    println!("archive stopped");
                    return Ok(());
                }
            }
        }
    }
}

/// Writes the export; attachments are decrypted into `<out>.files/`, each named by its
/// message id and file name, and the JSON line names the file.
fn write_export(
    engine: &Engine,
    messages: &[ArchivedMessage],
    format: ExportFormat,
    out: &std::path::Path,
) -> Result<(), EngineError> {
    let files_dir = {
        let mut name = out.as_os_str().to_owned();
        name.push(".files");
        PathBuf::from(name)
    };
    let file = std::fs::File::create(out)?;
    let mut file = std::io::BufWriter::new(file);
    let bar = indicatif::ProgressBar::new(messages.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("exporting {bar:40} {pos}/{len}")
            .expect("valid template"),
    );
    if messages.len() < 1000 {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    for (index, m) in messages.iter().enumerate() {
        let saved = match m.body["attachment"]["name"].as_str() {
            Some(name) => Some(save_attachment(engine, m, index + 1, name, &files_dir)?),
            None => None,
        };
        match format {
            ExportFormat::Jsonl => {
                let mut line = serde_json::to_value(m).expect("serialises");
                if let Some(saved) = &saved {
                    line["file"] = saved.display().to_string().into();
                }
                serde_json::to_writer(&mut file, &line).map_err(std::io::Error::other)?;
                file.write_all(b"\n")?;
            }
            ExportFormat::Eml => write_eml(&mut file, m, saved.as_deref())?,
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    file.flush()?;
    Ok(())
}

/// Decrypts one archived attachment into the export's files directory, as
/// `NNNNNN-name`: the number is its place in this export, and the name keeps only the
/// sender's letters, digits, `.`, `-` and `_`, so nothing a sender chose picks the path.
fn save_attachment(
    engine: &Engine,
    m: &ArchivedMessage,
    index: usize,
    name: &str,
    dir: &std::path::Path,
) -> Result<PathBuf, EngineError> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{index:06}-{}", safe_file_name(name)));
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
    engine.archive_open_attachment(m, &mut file)?;
    file.flush()?;
    Ok(path)
}

/// A sender's file name reduced to letters, digits, `.`, `-` and `_` (at most 100),
/// never starting with a dot.
fn safe_file_name(name: &str) -> String {
    let kept: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .take(100)
        .collect();
    match kept.trim_start_matches('.') {
        "" => "attachment".to_string(),
        rest => rest.to_string(),
    }
}

/// One archived message as an RFC 5322 message in an mbox.
fn write_eml(
    out: &mut impl Write,
    m: &ArchivedMessage,
    attachment: Option<&std::path::Path>,
) -> std::io::Result<()> {
    let kind = m.body["type"].as_str().unwrap_or("message");
    let date = time::OffsetDateTime::from_unix_timestamp_nanos(m.sent_at as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc2822)
                .ok()
        })
        .unwrap_or_default();
    let text = m.body["text"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| serde_json::to_string_pretty(&m.body).unwrap_or_default());
    let header = |s: &str| s.replace(['\r', '\n'], " ");
    writeln!(out, "From {} {}", header(&m.sender), date)?;
    write!(
        out,
        "From: {sender} <{sender}@muster>\r\nTo: {group} <{group_id}@muster>\r\nDate: {date}\r\nSubject: [{group}] {kind}\r\nMessage-ID: <{id}.{group_id}@muster>\r\nX-Muster-Device: {device}\r\nX-Muster-Relay-Seq: {seq}\r\nX-Muster-Received: {received}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n",
        sender = header(&m.sender),
        group = header(&m.group),
        group_id = m.group_id,
        id = header(&m.id),
        device = header(&m.sender_device),
        seq = m.relay_seq,
        received = rfc3339(m.received_at),
    )?;
    let text = match attachment {
        Some(path) => format!("{text}\n\nAttachment saved as {}", path.display()),
        None => text,
    };
    for line in text.lines() {
        // mboxrd: lines that look like a separator are quoted.
        if line.trim_start_matches('>').starts_with("From ") {
            out.write_all(b">")?;
        }
        write!(out, "{line}\r\n")?;
    }
    out.write_all(b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::safe_file_name;

    #[test]
    fn sender_file_names_cannot_choose_a_path() {
        assert_eq!(safe_file_name("plan.pdf"), "plan.pdf");
        assert_eq!(safe_file_name("../../etc/passwd"), "etcpasswd");
        assert_eq!(safe_file_name(".."), "attachment");
        assert_eq!(safe_file_name("a/b\\c\u{e9}\n.txt"), "abc.txt");
    }
}
