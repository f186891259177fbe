//! The client binary explains itself and every subcommand.

use std::process::Command;

fn muster() -> Command {
    Command::new(env!("CARGO_BIN_EXE_muster"))
}

#[test]
fn every_subcommand_has_help() {
    let out = muster().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    for cmd in [
        "org", "invite", "join", "pending", "approve", "reject", "group", "groups", "send", "sync",
        "read", "chat",
    ] {
        assert!(text.contains(cmd), "top-level help lacks {cmd}");
        let out = muster().args([cmd, "--help"]).output().unwrap();
        assert!(out.status.success(), "{cmd} --help failed");
        assert!(!out.stdout.is_empty());
    }
}

#[test]
fn commands_before_setup_say_what_to_do() {
    let home = std::env::temp_dir().join(format!("muster-cli-{}", std::process::id()));
    let out = muster()
        .arg("--home")
        .arg(&home)
        .arg("sync")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not set up yet"));
    let _ = std::fs::remove_dir_all(home);
}
