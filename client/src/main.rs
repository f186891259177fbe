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
mod bot;
mod cli;
mod conversation;
mod incident;
mod live;
mod os_keyring;
mod people;
mod print;
mod store_key;

use clap::Parser;
use cli::{default_home, Cli, Command};
use muster_driver::Connection;
use muster_engine::{Engine, EngineError};
pub(crate) use print::{print_json, terminal_safe};
use std::process::ExitCode;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MUSTER_LOG")
                .unwrap_or_else(|_| "error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let passphrase = store_key::take_passphrase(muster_keystore::PASSPHRASE_VARIABLE);
    let new_passphrase = store_key::take_passphrase(store_key::NEW_PASSPHRASE_VARIABLE);
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
    let result = runtime.block_on(run(
        cli,
        passphrase.as_deref().map(String::as_str),
        new_passphrase.as_deref().map(String::as_str),
    ));
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

async fn run(
    cli: Cli,
    passphrase: Option<&str>,
    new_passphrase: Option<&str>,
) -> Result<(), EngineError> {
    let home = cli.home.unwrap_or_else(default_home);
    if let Command::Store(command) = &cli.command {
        return store_command(
            &home,
            cli.key_file.as_deref(),
            passphrase,
            new_passphrase,
            command,
        );
    }
    if !sets_up_a_device(&cli.command)
        && muster_engine::store_crypt::state(&home.join("muster.db"))?
            == muster_engine::store_crypt::StoreState::Absent
    {
        // Nothing to open: say so rather than ask for a key to a store that is not there.
        return Err(EngineError::NotEnrolled);
    }
    let key = store_key::resolve(&home, cli.key_file.as_deref(), passphrase)?;
    let mut engine = Engine::open_with_key(&home, Some(&key))?;
    drop(key);
    store_key::mark_encrypted(&home)?;
    let result = run_command(&mut engine, cli.command).await;
    if let Err(EngineError::DeviceRevoked { wipe: true, .. }) = &result {
        // Proven by the signed revocation, and required by the organisation's policy.
        drop(engine);
        muster_engine::wipe_store(&home)?;
    }
    result
}

/// Whether `command` may begin on an empty home (and so make its store).
fn sets_up_a_device(command: &Command) -> bool {
    matches!(
        command,
        Command::Org(_) | Command::Join { .. } | Command::JoinDevice { .. } | Command::Ui { .. }
    )
}

fn store_command(
    home: &std::path::Path,
    key_file: Option<&std::path::Path>,
    passphrase: Option<&str>,
    new_passphrase: Option<&str>,
    command: &cli::StoreCommand,
) -> Result<(), EngineError> {
    match command {
        cli::StoreCommand::Status => {
            println!("{}", store_key::status(home)?);
            Ok(())
        }
        cli::StoreCommand::Encrypt => {
            let key = store_key::resolve(home, key_file, passphrase)?;
            drop(Engine::open_with_key(home, Some(&key))?);
            store_key::mark_encrypted(home)?;
            println!("{}", store_key::status(home)?);
            Ok(())
        }
        cli::StoreCommand::Rekey {
            new_key_file,
            to_keyring,
        } => {
            let to = match (new_key_file, to_keyring) {
                (Some(file), _) => store_key::NewProtection::KeyFile(file.clone()),
                (None, true) => store_key::NewProtection::Keyring,
                (None, false) => store_key::NewProtection::Passphrase(new_passphrase),
            };
            store_key::rekey(home, key_file, passphrase, to)?;
            println!("{}", store_key::status(home)?);
            Ok(())
        }
    }
}

async fn run_command(engine: &mut Engine, command: Command) -> Result<(), EngineError> {
    let command = match command {
        Command::Archive(command) => return archive::run(engine, command).await,
        Command::Bot(command) => return bot::run(engine, command).await,
        command => command,
    };
    let Some(command) = incident::run(engine, command).await? else {
        return Ok(());
    };
    let Some(command) = people::run(engine, command).await? else {
        return Ok(());
    };
    match conversation::run(engine, command).await? {
        None => Ok(()),
        Some(_) => unreachable!("every command is handled by the people or conversation module"),
    }
}

/// Runs a one-shot command on a connection to the relay, then tells the user what else
/// happened on the way (messages that arrived, problems met while syncing or sending).
pub(crate) async fn online<T>(
    engine: &mut Engine,
    work: impl AsyncFnOnce(&mut Engine, &Connection) -> Result<T, EngineError>,
) -> Result<T, EngineError> {
    let result = muster_driver::online(engine, work).await;
    let activity = engine.take_activity();
    print::notify(engine, &activity.notifications);
    for p in &activity.problems {
        eprintln!("warning: {p}");
    }
    result
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
