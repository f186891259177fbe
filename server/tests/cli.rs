//! The relay binary explains itself and refuses a missing data directory clearly.

use std::process::Command;

fn relay() -> Command {
    Command::new(env!("CARGO_BIN_EXE_muster-relay"))
}

#[test]
fn help_lists_commands() {
    let out = relay().arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for cmd in ["serve", "bootstrap-token", "stats"] {
        assert!(text.contains(cmd), "help lacks {cmd}: {text}");
    }
}

#[test]
fn bootstrap_token_needs_existing_data() {
    let dir = std::env::temp_dir().join(format!("muster-relay-cli-{}", std::process::id()));
    let out = relay()
        .args(["bootstrap-token", "--data"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no relay data"));
}
