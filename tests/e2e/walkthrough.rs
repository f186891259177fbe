//! The README's walkthrough, run literally and in its order: every `muster` command in its
//! code blocks, with only the relay's address, fingerprint and token, the invite code and
//! the home folders put in.

use muster_e2e::{bin, Relay, TempDir};
use std::io::Write as _;
use std::process::{Command, Stdio};

/// The commands of the walkthrough's code blocks, joined across `\` line breaks, without
/// comments. The relay (`muster-relay serve`) and the build steps are the harness's.
fn walkthrough_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let start = readme
        .find("## Walkthrough")
        .expect("README has a walkthrough");
    let section = &readme[start..];
    let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
    let mut commands = Vec::new();
    let mut pending = String::new();
    for line in section[..end].lines() {
        if !line.starts_with("    ") {
            continue;
        }
        let text = line.trim();
        let text = match text.find("  #") {
            Some(i) => text[..i].trim_end(),
            None => text,
        };
        if text.starts_with("export MUSTER_PASSPHRASE=") {
            commands.push(text.to_string());
            continue;
        }
        if pending.is_empty() && !text.starts_with("muster ") {
            continue;
        }
        match text.strip_suffix('\\') {
            Some(head) => {
                pending.push_str(head.trim_end());
                pending.push(' ');
            }
            None => {
                pending.push_str(text);
                commands.push(std::mem::take(&mut pending));
            }
        }
    }
    commands
}

/// Splits a command line as a shell would for these simple commands (double quotes only).
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            ' ' if !quoted => {
                if any {
                    out.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            c => {
                word.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(word);
    }
    out
}

#[test]
fn the_readme_walkthrough_works_as_written() {
    let commands = walkthrough_commands();
    assert!(
        commands.len() >= 8 && commands.iter().any(|c| c.contains(" chat ")),
        "the walkthrough's commands were found: {commands:?}"
    );
    if let Some(why) = crate::ui::browser_missing() {
        // The walkthrough starts in the browser; the rest builds on what is done there.
        println!("SKIPPED: {why}");
        return;
    }
    let dir = TempDir::new("walkthrough");
    let relay = Relay::start(&dir);
    let token = relay.bootstrap_token.clone().expect("fresh relay token");
    let mut invite_code = String::new();
    let mut outputs = Vec::new();
    let mut uis: Vec<std::process::Child> = Vec::new();
    let mut links = Vec::new();
    let mut browser_steps_done = false;
    let mut passphrase = None;
    for command in &commands {
        if let Some(value) = command.strip_prefix("export MUSTER_PASSPHRASE=") {
            passphrase = Some(value.trim_matches('\'').to_string());
            continue;
        }
        if !uis.is_empty() && !browser_steps_done && !command.ends_with(" ui") {
            browser_steps(&links, &relay, &token);
            browser_steps_done = true;
        }
        let mut args = words(command);
        assert_eq!(args.remove(0), "muster");
        for arg in &mut args {
            if let Some(home) = arg.strip_prefix("~/") {
                *arg = dir.path().join(home).display().to_string();
            }
            *arg = match arg.as_str() {
                "127.0.0.1:4433" => relay.addr.clone(),
                "3f1c…e9" => relay.fingerprint.clone(),
                "8d0a…41" => token.clone(),
                "MUSTER2-…" => invite_code.clone(),
                _ => arg.clone(),
            };
        }
        let passphrase = passphrase
            .clone()
            .expect("the walkthrough sets MUSTER_PASSPHRASE before its first command");
        if args.last().map(String::as_str) == Some("ui") {
            let (ui, link) = start_ui(&args, &passphrase);
            uis.push(ui);
            links.push(link);
            continue;
        }
        let chat = args.iter().any(|a| a == "chat");
        let mut child = Command::new(bin("muster"))
            .args(&args)
            .env_remove("MUSTER_HOME")
            .env_remove("MUSTER_KEY_FILE")
            .env("MUSTER_PASSPHRASE", &passphrase)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run muster");
        // `chat` ends when its input does (Ctrl-D); the others read none.
        let mut stdin = child.stdin.take().expect("stdin");
        if chat {
            stdin.write_all(b"/quit\n").expect("type into chat");
        }
        drop(stdin);
        let out = child.wait_with_output().expect("muster ends");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "`{command}` failed: {}{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        if args.get(2).map(String::as_str) == Some("invite") {
            invite_code = stdout.trim().to_string();
            assert!(invite_code.starts_with("MUSTER2-"), "{invite_code}");
        }
        outputs.push((command.clone(), stdout));
    }
    assert!(
        browser_steps_done,
        "the walkthrough opens the UI: {commands:?}"
    );
    let read = outputs
        .iter()
        .find(|(c, _)| c.contains("~/carol read ops"))
        .expect("carol reads ops");
    assert!(
        read.1.contains("Briefing moved to 10:30"),
        "carol reads the briefing: {}",
        read.1
    );
    let chat = outputs
        .iter()
        .find(|(c, _)| c.contains("~/carol chat ops"))
        .expect("carol chats");
    assert!(
        chat.1.contains("Briefing moved to 10:30"),
        "carol's chat shows the briefing: {}",
        chat.1
    );
    for mut ui in uis {
        let _ = ui.kill();
        let _ = ui.wait();
    }
}

/// Starts `muster ui` as the walkthrough does; returns it and the link it printed.
fn start_ui(args: &[String], passphrase: &str) -> (std::process::Child, String) {
    use std::io::BufRead as _;
    let mut child = Command::new(bin("muster"))
        .args(args)
        .env_remove("MUSTER_HOME")
        .env_remove("MUSTER_KEY_FILE")
        .env("MUSTER_PASSPHRASE", passphrase)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start muster ui");
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("ui stdout")).lines();
    let link = loop {
        let line = lines
            .next()
            .expect("muster ui prints a link")
            .expect("read muster ui's output");
        if let Some(link) = line.strip_prefix("muster ui: open ") {
            break link.to_string();
        }
    };
    // Keep reading, so the UI never writes into a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, link)
}

/// The walkthrough's steps in the browser (creating the organisation, inviting bob, bob
/// joining, alice approving, the group and the first message), as the README says them,
/// in `tests/browser/walkthrough.py`.
fn browser_steps(links: &[String], relay: &Relay, token: &str) {
    let out = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/browser/walkthrough.py"
        ))
        .args(links)
        .args([&relay.addr, &relay.fingerprint, token])
        .output()
        .expect("run the browser steps");
    println!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success(),
        "the walkthrough's browser steps failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
