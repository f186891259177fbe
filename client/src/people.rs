//! Enrolment, devices, people, profiles and administration.

use crate::cli::*;
use crate::online;
use crate::print::*;
use muster_driver::Connection;
use muster_engine::{AccountKind, Engine, EngineError};
use muster_proto::Profile;

/// Runs `command` if it is one of this module's; hands it back otherwise.
pub(crate) async fn run(
    engine: &mut Engine,
    command: Command,
) -> Result<Option<Command>, EngineError> {
    match command {
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
            muster_driver::create_org(engine, &setup).await?;
            println!("organisation {name:?} created; you are admin {user}");
        }
        Command::Invite { user, ttl } => {
            let code = online(engine, async |engine, conn| {
                engine.create_invite(conn, &user, ttl).await
            })
            .await?;
            println!("{code}");
        }
        Command::Join {
            code,
            display_name,
            title,
            department,
        } => {
            let device = muster_driver::join(
                engine,
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
            let device = muster_driver::join_device(engine, &code).await?;
            println!(
                "device link request sent (device {device}); an admin must approve it, or, where the organisation allows it, you with `muster device approve {device}` on your other device"
            );
        }
        Command::Device(DeviceCommand::Link { ttl }) => {
            let code = online(engine, async |engine, conn| {
                engine.create_device_link(conn, ttl).await
            })
            .await;
            println!("{}", code?);
        }
        Command::Device(DeviceCommand::Approve { device_id }) => {
            let result = online(engine, async |engine, conn| {
                engine.confirm_device(conn, &device_id).await
            })
            .await;
            result?;
            println!("approved your new device {device_id}; it is enrolled once an admin device has issued its certificate");
        }
        Command::Devices(flag) => {
            let devices = online(engine, async |engine, conn| engine.devices(conn).await).await;
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
            let pending = online(engine, async |engine, conn| engine.pending(conn).await).await?;
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
            bot,
        } => {
            let kind = match (archive, bot) {
                (true, _) => AccountKind::Archive,
                (_, true) => AccountKind::Bot,
                _ => AccountKind::Person,
            };
            let id = online(engine, async |engine, conn| {
                engine.approve(conn, &user, device.as_deref(), kind).await
            })
            .await?;
            match kind {
                AccountKind::Archive => println!(
                    "approved {user} (device {id}) as the organisation's compliance archive"
                ),
                AccountKind::Bot => println!(
                    "approved {user} (device {id}) as a bot: add it to the groups it may post to"
                ),
                AccountKind::Person => println!("approved {user} (device {id})"),
            }
        }
        Command::Reject { user, device } => {
            let id = online(engine, async |engine, conn| {
                engine.reject(conn, &user, device.as_deref()).await
            })
            .await?;
            println!("rejected {user} (device {id})");
        }
        Command::Directory(flag) => {
            let entries = online(engine, async |engine, conn| engine.directory(conn).await).await;
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
            let revoked = online(engine, async |engine, conn| {
                engine.revoke(conn, &user, device.as_deref()).await
            })
            .await;
            let revoked = revoked?;
            println!(
                "revoked {user}: {} device(s): {}",
                revoked.len(),
                revoked.join(", ")
            );
        }
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
            let result = online(engine, async |engine, conn| {
                engine
                    .request_profile(
                        conn,
                        Profile {
                            display_name,
                            title,
                            department,
                        },
                    )
                    .await
            })
            .await;
            result?;
            println!("profile change sent; colleagues see it once an admin approves it");
        }
        Command::Admin(AdminCommand::Profiles(flag)) => {
            let changes = online(engine, async |engine, conn| {
                engine.profile_changes(conn).await
            })
            .await;
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
            let result = online(engine, async |engine, conn| {
                engine.approve_profile(conn, &user).await
            })
            .await;
            let p = result?;
            println!("approved the new profile of {user} ({})", p.display_name);
        }
        Command::Admin(AdminCommand::RejectProfile { user }) => {
            let result = online(engine, async |engine, conn| {
                engine.reject_profile(conn, &user).await
            })
            .await;
            result?;
            println!("rejected the profile change of {user}");
        }
        Command::Admin(AdminCommand::Apply {
            file,
            dry_run,
            invites_out,
            ttl,
            json,
        }) => admin_apply(engine, &file, dry_run, invites_out.as_deref(), ttl, json).await?,
        Command::Admin(AdminCommand::Policy {
            device_self_approval,
            certificate_lifetime,
            wipe_on_revoke,
            json,
        }) => {
            let (policy, problems) = online(engine, async |engine, conn| {
                if device_self_approval.is_some()
                    || certificate_lifetime.is_some()
                    || wipe_on_revoke.is_some()
                {
                    engine
                        .set_org_policy(
                            conn,
                            device_self_approval,
                            certificate_lifetime,
                            wipe_on_revoke,
                            None,
                        )
                        .await
                        .map(|p| (p, vec![]))
                } else {
                    engine.org_policy(conn).await
                }
            })
            .await?;
            for p in &problems {
                eprintln!("warning: {p}");
            }
            if json {
                print_json(&serde_json::json!({
                    "device_self_approval": policy.device_self_approval,
                    "version": policy.version,
                    "certificate_lifetime_secs": policy.certificate_lifetime(),
                    "wipe_on_revoke": policy.wipe_on_revoke,
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
                println!(
                    "revoked devices wipe their store: {}",
                    if policy.wipe_on_revoke { "on" } else { "off" }
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
            let report = online(engine, async |engine, conn| {
                engine.archive_check(conn, &chain).await
            })
            .await;
            crate::archive::print_report(&report?, json)?;
        }
        Command::Admin(AdminCommand::Root(RootCommand::Backup { out })) => {
            let passphrase = read_passphrase("passphrase for the backup: ", true)?;
            let backup = engine.root_backup(&passphrase)?;
            write_new_secret_file(
                &out,
                &serde_json::to_vec_pretty(&backup).expect("backup serialises"),
            )?;
            println!(
                "wrote the sealed root key of {} to {}; keep it apart from this device, with its passphrase somewhere else",
                backup.org_name,
                out.display()
            );
        }
        Command::Admin(AdminCommand::Root(RootCommand::Split {
            threshold,
            holders,
            out_dir,
        })) => {
            let mut sealed_for = Vec::with_capacity(holders.len());
            for holder in holders {
                let passphrase =
                    read_passphrase(&format!("passphrase for {holder}'s share: "), true)?;
                sealed_for.push((holder, passphrase));
            }
            let paths: Vec<std::path::PathBuf> = sealed_for
                .iter()
                .map(|(holder, _)| out_dir.join(format!("root-share-{holder}.json")))
                .collect();
            if let Some(taken) = paths.iter().find(|p| p.exists()) {
                return Err(EngineError::Invalid(format!(
                    "{} already exists; choose another --out-dir",
                    taken.display()
                )));
            }
            let shares = engine.root_split(threshold, &sealed_for)?;
            std::fs::create_dir_all(&out_dir)?;
            for ((share, (holder, _)), path) in shares.iter().zip(&sealed_for).zip(&paths) {
                write_new_secret_file(
                    path,
                    &serde_json::to_vec_pretty(share).expect("share serialises"),
                )?;
                println!("wrote {holder}'s share to {}", path.display());
            }
            println!(
                "any {threshold} of the {} shares restore the root key; hand each to its holder",
                shares.len()
            );
        }
        Command::Admin(AdminCommand::Root(RootCommand::Restore { files })) => {
            let mut backups = Vec::with_capacity(files.len());
            for file in &files {
                let text = std::fs::read(file).map_err(|e| {
                    EngineError::Invalid(format!("cannot read {}: {e}", file.display()))
                })?;
                let backup: muster_engine::RootBackup = serde_json::from_slice(&text)
                    .map_err(|_| muster_engine::RootBackupError::NotABackup)?;
                backups.push(backup);
            }
            // The organisation's name as this device pinned it, not as the file says.
            let org_name = engine.whoami()?.org;
            let installed = match backups.as_slice() {
                [whole] if whole.share.is_none() => {
                    let passphrase = read_passphrase("passphrase of the backup: ", false)?;
                    engine.root_restore(whole, &passphrase)?
                }
                _ => {
                    let mut with_passphrases = Vec::with_capacity(backups.len());
                    for backup in backups {
                        // Who a share is for is checked only once it opens: shown as a
                        // handle, or not at all.
                        let holder = match &backup.share {
                            Some(s) if muster_proto::validate_handle(&s.holder).is_ok() => {
                                format!("{}'s share (share {})", s.holder, s.index)
                            }
                            Some(s) => format!("share {}", s.index),
                            None => "the backup".to_string(),
                        };
                        let passphrase =
                            read_passphrase(&format!("passphrase for {holder}: "), false)?;
                        with_passphrases.push((backup, passphrase));
                    }
                    engine.root_restore_shares(&with_passphrases)?
                }
            };
            if installed {
                println!("this device now holds the root key of {org_name}");
            } else {
                println!("this device already holds the root key of {org_name}");
            }
        }
        Command::Admin(AdminCommand::Audit { limit, json }) => {
            let events = online(engine, async |engine, conn| engine.audit(conn, limit).await).await;
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
        Command::Relays { set } => {
            if let Some(list) = set {
                engine.set_relays(&list)?;
            }
            let (relays, fingerprint) = engine.relay()?;
            for relay in relays.split(',') {
                println!("{relay}");
            }
            println!("certificate fingerprint: {fingerprint}");
        }
        Command::Whoami(flag) => {
            let me = engine.whoami()?;
            if flag.json {
                print_json(&me);
            } else {
                println!("{} (device {}) in {}", me.user, me.device_id, me.org);
            }
        }
        other => return Ok(Some(other)),
    }
    Ok(None)
}

pub(crate) async fn admin_apply(
    engine: &mut Engine,
    file: &std::path::Path,
    dry_run: bool,
    invites_out: Option<&std::path::Path>,
    ttl: u64,
    json: bool,
) -> Result<(), EngineError> {
    use muster_engine::provision::parse_spec;
    let text = std::fs::read_to_string(file)
        .map_err(|e| EngineError::Invalid(format!("cannot read {}: {e}", file.display())))?;
    let spec =
        parse_spec(&text).map_err(|e| EngineError::Invalid(format!("{}: {e}", file.display())))?;
    online(engine, async |engine, conn| {
        apply_spec(engine, conn, file, &spec, dry_run, invites_out, ttl, json).await
    })
    .await
}

/// Plans `spec` against the organisation as the relay shows it, and applies the plan
/// unless `dry_run`.
#[allow(clippy::too_many_arguments)]
async fn apply_spec(
    engine: &mut Engine,
    conn: &Connection,
    file: &std::path::Path,
    spec: &muster_engine::provision::OrgSpec,
    dry_run: bool,
    invites_out: Option<&std::path::Path>,
    ttl: u64,
    json: bool,
) -> Result<(), EngineError> {
    use muster_engine::provision::plan;
    let state = engine.provision_state(conn).await?;
    let (actions, problems) = plan(spec, &state);
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
        let result = engine.apply_action(conn, spec, action, ttl).await;
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

/// Reads a passphrase: from the terminal without echo (twice when `confirm`), or else the
/// first line of standard input.
fn read_passphrase(prompt: &str, confirm: bool) -> Result<String, EngineError> {
    use std::io::IsTerminal as _;
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(prompt)?;
        if confirm && rpassword::prompt_password("again: ")? != first {
            return Err(EngineError::Invalid("the passphrases differ".into()));
        }
        return Ok(first);
    }
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let passphrase = line.trim_end_matches(['\n', '\r']).to_string();
    if passphrase.is_empty() {
        return Err(EngineError::Invalid(
            "no passphrase on standard input".into(),
        ));
    }
    Ok(passphrase)
}

/// Creates `path` readable by its owner only, refusing to replace an existing file.
fn write_new_secret_file(path: &std::path::Path, bytes: &[u8]) -> Result<(), EngineError> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(|e| EngineError::Invalid(format!("cannot create {}: {e}", path.display())))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}
