//! `muster bot`: a bot account's tokens and its intake service.

use crate::print::print_listing;
use clap::Subcommand;
use muster_engine::{Engine, EngineError};
use std::io::Write as _;

/// A bot account's commands (run on the bot's own device).
#[derive(Subcommand)]
pub(crate) enum BotCommand {
    /// Bearer tokens for the intake: each lets its holder post to one group.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Keep this bot online and take posts over HTTP (loopback or a private network):
    /// POST /v1/groups/GROUP/messages, /alerts and /alertmanager, and
    /// GET /v1/alerts/ID/rollcall, each with `Authorization: Bearer TOKEN`.
    Serve {
        /// Where to listen: a loopback or private address with a port (port 0: any free one).
        #[arg(long, default_value = "127.0.0.1:8686")]
        listen: std::net::SocketAddr,
        /// The longest a request waits for the relay; after it the post is answered
        /// "queued" (202) and waits in the outbox.
        #[arg(long, default_value = "10s", value_parser = crate::cli::parse_duration)]
        relay_timeout: u64,
        /// Alerts of these severities ask every member to acknowledge them (comma-separated).
        #[arg(long, default_value = "critical", value_delimiter = ',')]
        ack_severity: Vec<String>,
    },
}

#[derive(Subcommand)]
pub(crate) enum TokenCommand {
    /// Make a token for one group; it is shown once (only its digest is kept).
    Create {
        #[arg(long)]
        group: String,
        /// What it is for, as `token list` shows it (such as "alertmanager").
        #[arg(long)]
        label: Option<String>,
    },
    /// The tokens made on this device, revoked ones too.
    List(crate::cli::JsonFlag),
    /// Revoke a token at once (a running `bot serve` refuses it from its next request).
    Revoke { id: String },
}

pub(crate) async fn run(engine: &mut Engine, command: BotCommand) -> Result<(), EngineError> {
    match command {
        BotCommand::Token(TokenCommand::Create { group, label }) => {
            let (view, token) = engine.create_bot_token(&group, label.as_deref())?;
            eprintln!(
                "token {} for group {} (shown once; keep it where only the sender can read it):",
                view.id, view.group
            );
            println!("{token}");
        }
        BotCommand::Token(TokenCommand::List(flag)) => {
            let tokens = engine.bot_tokens()?;
            let none = tokens.is_empty();
            print_listing(tokens, flag.json, |t| {
                println!(
                    "{}  group {}  {}  made {}{}",
                    t.id,
                    t.group,
                    t.label.as_deref().unwrap_or("-"),
                    t.created_at,
                    t.revoked_at
                        .as_ref()
                        .map(|at| format!("  REVOKED {at}"))
                        .unwrap_or_default()
                );
            });
            if none && !flag.json {
                println!("no tokens yet: `muster bot token create --group GROUP`");
            }
        }
        BotCommand::Token(TokenCommand::Revoke { id }) => {
            engine.revoke_bot_token(&id)?;
            println!("revoked token {id}");
        }
        BotCommand::Serve {
            listen,
            relay_timeout,
            ack_severity,
        } => {
            if !muster_bot::private_address(&listen) {
                return Err(EngineError::Invalid(format!(
                    "{listen} is not a loopback or private address: the intake takes bearer tokens over plain HTTP, so it listens only on 127.0.0.1, ::1 or a private network (put a TLS proxy in front for anything else)"
                )));
            }
            let me = engine.whoami()?;
            if me.approved && !engine.is_bot()? {
                return Err(EngineError::Invalid(format!(
                    "{} is not a bot account: an admin approves one with `muster approve USER --bot`",
                    me.user
                )));
            }
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| EngineError::Invalid(format!("cannot listen on {listen}: {e}")))?;
            let bound = listener
                .local_addr()
                .map_err(|e| EngineError::Invalid(format!("cannot listen on {listen}: {e}")))?;
            println!("muster bot: listening on http://{bound}");
            let _ = std::io::stdout().flush();
            muster_bot::serve(
                engine,
                listener,
                muster_bot::Options {
                    relay_timeout: std::time::Duration::from_secs(relay_timeout),
                    ack_severities: ack_severity,
                },
                crate::live::shutdown_signal(),
            )
            .await?;
        }
    }
    Ok(())
}
