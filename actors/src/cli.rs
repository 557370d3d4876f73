//! The `mailflow` command line: parses arguments, loads the configuration and
//! starts what was asked for. `main.rs` calls [`run`]; so does the test
//! harness's copy of the binary.

use std::path::PathBuf;

use crate::config::Config;
use crate::{event_log, front_door};
use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// An event-sourced mail router.
#[derive(Debug, Parser)]
#[command(name = "mailflow", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the router (with no --config: the built-in single-machine default).
    Serve {
        /// Configuration file (TOML).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Roles this process runs (default: all that exist).
        #[arg(long, value_delimiter = ',', default_value = "connection,verdict")]
        roles: Vec<Role>,
    },
    /// Checks a configuration file and reports every problem at once.
    CheckConfig {
        /// Configuration file (TOML).
        config: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Prints an argon2id hash of a password read from standard input, for `password_hash`.
    HashPassword,
    /// Prints the JSON Schemas of the published events (or writes them to a directory).
    Schemas {
        /// Directory to write `<name>.json` files into.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn load(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    match path {
        Some(path) => Ok(Config::load(path)?),
        None => Ok(Config::builtin()),
    }
}

/// Runs the command named on the command line.
pub fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, roles } => {
            let config = load(config.as_ref())?;
            actix_rt::System::new().block_on(serve(config, roles))
        }
        Command::CheckConfig { config, json } => {
            let result = Config::load(&config);
            if json {
                let value = match &result {
                    Ok(_) => serde_json::json!({"ok": true, "errors": []}),
                    Err(err) => serde_json::json!({"ok": false, "errors": [err.to_string()]}),
                };
                println!("{value}");
            } else if let Err(err) = &result {
                eprintln!("{err}");
            } else {
                println!("{}: ok", config.display());
            }
            if result.is_err() {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::HashPassword => {
            let mut password = String::new();
            std::io::stdin().read_line(&mut password).context("reading the password from standard input")?;
            println!("{}", crate::connection::auth::hash_password(password.trim_end_matches(['\r', '\n'])));
            Ok(())
        }
        Command::Schemas { out } => {
            for (name, schema) in mailflow_events::schema::all() {
                let text = mailflow_events::schema::render(&schema);
                match &out {
                    Some(dir) => std::fs::write(dir.join(format!("{name}.json")), text)
                        .with_context(|| format!("writing {name}.json into {}", dir.display()))?,
                    None => print!("{text}"),
                }
            }
            Ok(())
        }
    }
}

/// A role a process can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Role {
    /// The SMTP front door.
    Connection,
    /// Authentication and filtering of accepted messages.
    Verdict,
}

async fn serve(config: Config, roles: Vec<Role>) -> anyhow::Result<()> {
    use actix::Actor as _;
    let log = event_log::open(&config.event_log, "mailflow").await.context("opening the event log")?;
    let mut front_door = None;
    if roles.contains(&Role::Connection) {
        let started = front_door::start(&config, std::sync::Arc::clone(&log), "mailflow/connection")
            .await
            .context("starting the SMTP listeners")?;
        front_door = Some(started);
    }
    if roles.contains(&Role::Verdict) {
        let resolver = crate::dns::resolver(&config.dns).context("building the DNS resolver")?;
        crate::verdict::actor::VerdictActor {
            log: std::sync::Arc::clone(&log),
            authenticator: std::sync::Arc::new(mail_auth::MessageAuthenticator(resolver)),
            anti_spam: std::sync::Arc::new(config.anti_spam.clone()),
            hostname: config.server.hostname.clone(),
            producer: "mailflow/verdict".to_string(),
        }
        .start();
    }
    // One line per listener, then `ready`: scripts and the test harness read these.
    for (name, address) in front_door.iter().flat_map(|door| door.listeners.iter()) {
        println!("listening {name} {address}");
    }
    println!("ready");
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    tracing::info!("shutting down");
    drop(front_door);
    Ok(())
}
