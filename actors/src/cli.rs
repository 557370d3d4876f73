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
    /// Log lines on standard error as text or as one JSON object per line
    /// (fields such as `message_id` as JSON fields; the filter is `RUST_LOG`).
    #[arg(long, global = true, env = "MAILFLOW_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the router (with no --config: the built-in single-machine default).
    Serve {
        /// Configuration file (TOML).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Roles this process runs (default: all that exist).
        #[arg(long, value_delimiter = ',', default_value = "connection,verdict,routing,delivery,journal")]
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
    /// Prints the events of a topic from an offset, in log order per partition
    /// (incident analysis); reads beside a running router.
    Replay {
        /// Configuration file (TOML); default: the built-in configuration.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Topic to read (default `mailflow.received`).
        #[arg(long, default_value = mailflow_events::topic::RECEIVED)]
        topic: String,
        /// Only this partition (default: all).
        #[arg(long)]
        partition: Option<u32>,
        /// First offset of each partition (default 0).
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// One JSON object per record (position, key and the event) instead of a summary line.
        #[arg(long)]
        json: bool,
        /// Print the delivery state (destinations, queues in order, attempts,
        /// last reply, next attempt) folded from `mailflow.delivery` instead of events.
        #[arg(long)]
        state: bool,
        /// With --state: the state as of this instant (RFC 3339, e.g. 2026-11-23T10:00:00Z).
        #[arg(long, requires = "state")]
        at: Option<chrono::DateTime<chrono::Utc>>,
        /// Fold the log up to where the running router's delivery state is and
        /// compare the two (exit status 1 when they differ).
        #[arg(long, conflicts_with_all = ["state", "at"])]
        verify: bool,
        /// Admin API address for --verify (default: `[admin] listen`).
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
        /// Judge and route the messages received in a past window again under
        /// this configuration file, with no side effects, and report per
        /// message what would change (verdict, action, rules, destinations).
        #[arg(long, value_name = "PROPOSED.toml", conflicts_with_all = ["state", "verify"])]
        what_if: Option<PathBuf>,
        /// With --what-if: messages received at or after this instant (RFC 3339).
        #[arg(long, requires = "what_if")]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// With --what-if: messages received before this instant (RFC 3339).
        #[arg(long, requires = "what_if")]
        until: Option<chrono::DateTime<chrono::Utc>>,
        /// With --what-if: report every message, not only those that would change.
        #[arg(long, requires = "what_if")]
        all: bool,
    },
    /// Shows the delivery queues of a running router and acts on them
    /// (through its admin API; every action is appended to the log as an event).
    Queue {
        #[command(flatten)]
        admin: AdminArgs,
        /// Print JSON instead of a table.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: Option<QueueCommand>,
    },
    /// Message trace (spec 15) of a running router: searches messages (at
    /// most 10 days per search, the last 48 h when no date is given), or
    /// lists one message's events with --message.
    Trace {
        #[command(flatten)]
        admin: AdminArgs,
        // Boxed: its many filters would make every `Command` that large.
        #[command(flatten)]
        args: Box<crate::trace::command::TraceArgs>,
    },
    /// Tests an outbound connector (spec 16): resolve, connect, EHLO, STARTTLS,
    /// certificate, and a test message to ADDRESS. Exit status 1 when a task
    /// fails, 2 when the validation cannot run (e.g. an unknown connector).
    ValidateConnector {
        /// Name of the outbound connector.
        name: String,
        /// Recipient of the test message, in a domain the connector serves.
        #[arg(long = "to", value_name = "ADDRESS")]
        to: String,
        /// Configuration file (TOML); default: the built-in configuration.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print the report as one JSON document.
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
    /// Archives every message of `mailflow.journal` as `<id>.eml` plus `<id>.json`
    /// (the reference journal consumer; resumable and idempotent).
    Archive {
        /// Directory of the archive (created if needed).
        #[arg(long)]
        out: PathBuf,
        /// Configuration file (TOML); default: the built-in configuration.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Keep reading as records arrive instead of stopping at the end.
        #[arg(long)]
        follow: bool,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// How to reach a running router's admin API.
#[derive(Debug, clap::Args)]
struct AdminArgs {
    /// Configuration file (TOML) naming `[admin] listen` and the token; default: the built-in one.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Admin API address (default: `[admin] listen` of the configuration).
    #[arg(long, global = true)]
    admin: Option<std::net::SocketAddr>,
    /// Bearer token for actions (default: `$MAILFLOW_ADMIN_TOKEN`, then the configuration's).
    #[arg(long, global = true, env = "MAILFLOW_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl AdminArgs {
    fn client(&self) -> anyhow::Result<crate::admin::client::AdminClient> {
        let config = load(self.config.as_ref())?;
        let address = self
            .admin
            .or(config.admin.listen)
            .context("no admin API address: pass --admin or set [admin] listen in the configuration")?;
        let token = match &self.token {
            Some(token) => Some(token.clone()),
            None => config.admin.token()?,
        };
        Ok(crate::admin::client::AdminClient { address, token })
    }
}

#[derive(Debug, Subcommand)]
enum QueueCommand {
    /// Destinations with state, depth, oldest message, last error and next attempt (the default).
    List,
    /// The messages of one destination, in delivery order.
    Show {
        /// Destination key, e.g. `internet:example.com`.
        destination: String,
    },
    /// Attempts a destination (or one message) now.
    Retry(ActionArgs),
    /// Holds a destination's queue until `resume`.
    Suspend(ActionArgs),
    /// Releases a suspended destination.
    Resume(ActionArgs),
    /// Removes a destination's messages (or one message) without notice.
    Delete(ActionArgs),
    /// Removes a destination's messages (or one message) with an NDR to each sender.
    Bounce(ActionArgs),
    /// Releases a quarantined message: it is delivered as if filtering had let it through.
    Release {
        /// Its mailflow message id.
        message: String,
        /// Why; recorded in the event.
        #[arg(long)]
        reason: Option<String>,
        /// Who releases it, as the event and the message trace record it (default: $USER).
        #[arg(long)]
        operator: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
struct ActionArgs {
    /// Destination key, e.g. `internet:example.com`.
    destination: String,
    /// Only this message (its mailflow message id).
    #[arg(long)]
    message: Option<String>,
    /// Why; recorded in the event.
    #[arg(long)]
    reason: Option<String>,
}

fn load(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    match path {
        Some(path) => Ok(Config::load(path)?),
        None => Ok(Config::builtin()),
    }
}

/// Runs the command named on the command line.
pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // `serve` sets its logs up itself, beside its traces.
    if !matches!(cli.command, Command::Serve { .. }) {
        init_logs(cli.log_format, None);
    }
    match cli.command {
        Command::Serve { config, roles } => serve_command(cli.log_format, config.as_ref(), roles),
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
        Command::Replay {
            config,
            topic,
            partition,
            from,
            json,
            state,
            at,
            verify,
            admin,
            what_if,
            since,
            until,
            all,
        } => {
            let config = load(config.as_ref())?;
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            if let Some(proposed) = what_if {
                let proposed = load(Some(&proposed))?;
                let window = crate::what_if::Window { since, until };
                return runtime.block_on(what_if_report(&config, &proposed, window, json, all));
            }
            if verify {
                let address = admin.or(config.admin.listen).context("no admin API address: pass --admin")?;
                let client = crate::admin::client::AdminClient { address, token: None };
                let same = runtime.block_on(crate::replay::verify(&config, &client, json))?;
                if !same {
                    std::process::exit(1);
                }
                return Ok(());
            }
            if state {
                return runtime.block_on(crate::replay::print_state(&config, at, partition, json));
            }
            runtime.block_on(replay(&config, &topic, partition, from, json))
        }
        Command::Queue { admin, json, command } => {
            let client = admin.client()?;
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(queue(&client, command.unwrap_or(QueueCommand::List), json))
        }
        Command::Trace { admin, args } => {
            let client = admin.client()?;
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(crate::trace::command::run(&client, &args))
        }
        Command::ValidateConnector { name, to, config, json } => {
            let status = match load(config.as_ref()) {
                Ok(config) => crate::validate::command(&config, &name, &to, json),
                Err(err) => crate::validate::print_error(&name, &to, &err.to_string(), json),
            };
            std::process::exit(status)
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
        Command::Archive { out, config, follow, json } => {
            let config = load(config.as_ref())?;
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let summary = runtime
                .block_on(crate::archive::run(&config.event_log, &out, follow))
                .with_context(|| format!("archiving into {}", out.display()))?;
            if json {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                println!("{summary} into {}", out.display());
            }
            Ok(())
        }
    }
}

/// `mailflow replay --what-if`: one line (or JSON object) per message that
/// would change (every message with `all`), then the totals.
async fn what_if_report(
    config: &Config,
    proposed: &Config,
    window: crate::what_if::Window,
    json: bool,
    all: bool,
) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let summary = crate::what_if::run(config, proposed, window, &mut |comparison| {
        if !all && comparison.changed.is_empty() {
            return Ok(());
        }
        if json {
            writeln!(out, "{}", serde_json::to_string(comparison)?)?;
        } else if comparison.changed.is_empty() {
            writeln!(out, "{} unchanged", comparison.message_id)?;
        } else {
            writeln!(out, "{}", crate::what_if::describe(comparison))?;
        }
        Ok(())
    })
    .await?;
    if json {
        writeln!(out, "{}", serde_json::json!({ "summary": summary }))?;
    } else {
        writeln!(out, "{summary}")?;
    }
    Ok(())
}

/// `mailflow serve`: logs and traces, the roles until SIGTERM and their drain,
/// then the spans still batched.
fn serve_command(format: LogFormat, config: Option<&PathBuf>, roles: Vec<Role>) -> anyhow::Result<()> {
    let malloc = crate::memory::limit();
    let config = load(config)?;
    let names: Vec<String> = roles
        .iter()
        .filter_map(|role| clap::ValueEnum::to_possible_value(role).map(|value| value.get_name().to_string()))
        .collect();
    let (telemetry, traces) = crate::telemetry::Telemetry::start(&config.telemetry, &names.join(","))?.unzip();
    init_logs(format, traces);
    tracing::debug!(arenas = ?malloc.arenas, mmap_threshold = ?malloc.mmap_threshold, "malloc limits set");
    if let Some(telemetry) = &telemetry {
        tracing::info!(url = telemetry.url(), "exporting traces");
    }
    let served = actix_rt::System::new().block_on(serve(config, roles));
    if let Some(telemetry) = telemetry {
        telemetry.shutdown();
    }
    served
}

/// Log lines on standard error (`RUST_LOG` filters them; spans of
/// `crate::telemetry` are never logged), and `traces` beside them when tracing is on.
fn init_logs(format: LogFormat, traces: Option<crate::telemetry::BoxedLayer>) {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::filter::FilterExt as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let env = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let not_telemetry = tracing_subscriber::filter::filter_fn(|meta| meta.target() != crate::telemetry::TARGET);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match format {
        LogFormat::Text => fmt.with_filter(not_telemetry.and(env)).boxed(),
        LogFormat::Json => {
            fmt.json().with_current_span(true).with_span_list(false).with_filter(not_telemetry.and(env)).boxed()
        }
    };
    tracing_subscriber::registry().with(std::iter::once(logs).chain(traces).collect::<Vec<_>>()).init();
}

async fn replay(config: &Config, topic: &str, partition: Option<u32>, from: u64, json: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    let log = event_log::open_read_only(&config.event_log, "mailflow-replay").await.context("opening the event log")?;
    let partitions: Vec<u32> = match partition {
        Some(p) => vec![p],
        None => (0..log.partitions(topic).with_context(|| format!("no topic {topic}"))?).collect(),
    };
    let mut out = std::io::stdout().lock();
    let mut count = 0u64;
    for partition in partitions {
        let mut offset = from;
        loop {
            let records = log.read(topic, partition, offset, 1000).await?;
            let Some(last) = records.last() else { break };
            offset = last.position.offset + 1;
            for record in &records {
                let event: serde_json::Value = serde_json::from_slice(&record.value).unwrap_or(serde_json::Value::Null);
                if json {
                    let line = serde_json::json!({
                        "topic": topic,
                        "partition": record.position.partition,
                        "offset": record.position.offset,
                        "timestamp_ms": record.timestamp_ms,
                        "key": String::from_utf8_lossy(&record.key),
                        "event": event,
                    });
                    writeln!(out, "{line}")?;
                } else {
                    let field = |name: &str| event.get(name).and_then(|v| v.as_str()).unwrap_or("-").to_string();
                    writeln!(
                        out,
                        "{topic}/{}@{} {} {} {}",
                        record.position.partition,
                        record.position.offset,
                        field("occurred_at"),
                        field("type"),
                        field("message_id")
                    )?;
                }
                count += 1;
            }
        }
    }
    eprintln!("{count} records");
    Ok(())
}

async fn queue(client: &crate::admin::client::AdminClient, command: QueueCommand, json: bool) -> anyhow::Result<()> {
    let (action, args) = match command {
        QueueCommand::List => {
            let value = client.get("/api/v1/queues").await?;
            if json {
                println!("{value}");
                return Ok(());
            }
            let queues: Vec<crate::admin::views::QueueSummary> = serde_json::from_value(value)?;
            println!(
                "{:<40} {:<9} {:>6} {:<20} {:<20} LAST ERROR",
                "DESTINATION", "STATE", "DEPTH", "OLDEST", "NEXT ATTEMPT"
            );
            let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
                t.map_or_else(|| "-".to_string(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            };
            for q in &queues {
                println!(
                    "{:<40} {:<9} {:>6} {:<20} {:<20} {}",
                    q.key,
                    q.state,
                    q.depth,
                    time(q.oldest_received_at),
                    time(q.next_attempt_at),
                    q.last_error.as_deref().unwrap_or("-")
                );
            }
            let elsewhere = queues.iter().filter(|q| q.from_log).count();
            eprintln!(
                "{} destinations, {} messages{}",
                queues.len(),
                queues.iter().map(|q| q.depth).sum::<usize>(),
                if elsewhere > 0 {
                    format!(
                        " ({elsewhere} destinations delivered by other processes, as of their last event in the log)"
                    )
                } else {
                    String::new()
                }
            );
            return Ok(());
        }
        QueueCommand::Show { destination } => {
            let value = client.get(&format!("/api/v1/queues/{}", path_segment(&destination))).await?;
            if json {
                println!("{value}");
                return Ok(());
            }
            println!("{} ({})", destination, value["state"].as_str().unwrap_or("-"));
            for (place, m) in value["messages"].as_array().into_iter().flatten().enumerate() {
                println!(
                    "{place:>5} {} received {} attempts {} pending {} {}",
                    m["message_id"].as_str().unwrap_or("-"),
                    m["received_at"].as_str().unwrap_or("-"),
                    m["attempts"],
                    m["pending"],
                    m["last_error"].as_str().unwrap_or("")
                );
            }
            return Ok(());
        }
        QueueCommand::Release { message, reason, operator } => {
            let operator = operator.or_else(|| std::env::var("USER").ok());
            let body = serde_json::json!({ "reason": reason, "operator": operator });
            let value = client.post(&format!("/api/v1/quarantine/{}/release", path_segment(&message)), &body).await?;
            if json {
                println!("{value}");
            } else {
                println!("released {message} to {}", value["recipients"]);
            }
            return Ok(());
        }
        QueueCommand::Retry(args) => ("retry", args),
        QueueCommand::Suspend(args) => ("suspend", args),
        QueueCommand::Resume(args) => ("resume", args),
        QueueCommand::Delete(args) => ("delete", args),
        QueueCommand::Bounce(args) => ("bounce", args),
    };
    let key = path_segment(&args.destination);
    let path = match &args.message {
        Some(id) => format!("/api/v1/queues/{key}/messages/{}/{action}", path_segment(id)),
        None => format!("/api/v1/queues/{key}/{action}"),
    };
    let body = serde_json::json!({ "reason": args.reason, "operator": std::env::var("USER").ok() });
    let value = client.post(&path, &body).await?;
    if json {
        println!("{value}");
    } else {
        println!(
            "{} {} appended at {}/{}@{}",
            value["event"].as_str().unwrap_or("-"),
            args.message.as_deref().unwrap_or(&args.destination),
            mailflow_events::topic::DELIVERY,
            value["partition"],
            value["offset"]
        );
    }
    Ok(())
}

/// Percent-encodes what is not safe in one URL path segment.
fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~:@".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A role a process can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Role {
    /// The SMTP front door.
    Connection,
    /// Authentication and filtering of accepted messages.
    Verdict,
    /// Destinations for every recipient.
    Routing,
    /// Delivery, deferral and NDRs.
    Delivery,
    /// The public journal (`mailflow.journal`) projected from the other topics.
    Journal,
}

/// SIGTERM (what Kubernetes and systemd send) or SIGINT (Ctrl-C).
async fn shutdown_signal() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM"),
        result = tokio::signal::ctrl_c() => result.context("waiting for Ctrl-C")?,
    }
    Ok(())
}

/// The arbiters the roles' actors run on, one each; stopped when dropped.
#[derive(Default)]
struct RoleArbiters(Vec<actix_rt::Arbiter>);

impl RoleArbiters {
    /// Starts `actor` on a new arbiter.
    fn start<A>(&mut self, actor: A)
    where
        A: actix::Actor<Context = actix::Context<A>> + Send,
    {
        let arbiter = actix_rt::Arbiter::new();
        <A as actix::Actor>::start_in_arbiter(&arbiter.handle(), move |_| actor);
        self.0.push(arbiter);
    }
}

impl Drop for RoleArbiters {
    fn drop(&mut self) {
        for arbiter in &self.0 {
            arbiter.stop();
        }
    }
}

async fn serve(config: Config, roles: Vec<Role>) -> anyhow::Result<()> {
    let log = event_log::open(&config.event_log, "mailflow").await.context("opening the event log")?;
    let (drain, drained) = crate::drain::Drain::new();
    actix_rt::spawn(crate::memory::trim_periodically());
    // One resolver, hence one DNS cache, for every role of the process.
    let resolver = crate::dns::resolver(&config.dns).context("building the DNS resolver")?;
    let authenticator = std::sync::Arc::new(mail_auth::MessageAuthenticator(resolver.clone()));
    let policy = std::sync::Arc::new(crate::policy::InboundPolicy::new(&config));
    let router = std::sync::Arc::new(crate::routing::Router::new(&config, std::sync::Arc::clone(&policy)));
    let ndr = std::sync::Arc::new(crate::ndr::NdrPolicy::new(&config, std::sync::Arc::clone(&policy)));
    let mut front_door = None;
    if roles.contains(&Role::Connection) {
        let started = front_door::start(
            &config,
            std::sync::Arc::clone(&log),
            std::sync::Arc::clone(&authenticator),
            "mailflow/connection",
            drain.clone(),
        )
        .await
        .context("starting the SMTP listeners")?;
        front_door = Some(started);
    }
    // Each role's actor runs on an arbiter (a thread) of its own, as the
    // sessions do on theirs: the roles of one process use the cores side by
    // side instead of taking turns on the main thread.
    let mut arbiters = RoleArbiters::default();
    if roles.contains(&Role::Verdict) {
        let actor = crate::verdict::actor::VerdictActor::new(
            &config,
            std::sync::Arc::clone(&log),
            authenticator,
            std::sync::Arc::clone(&policy),
            "mailflow/verdict",
            drain.clone(),
        );
        arbiters.start(actor);
    }
    if roles.contains(&Role::Routing) {
        arbiters.start(crate::routing::actor::RoutingActor {
            log: std::sync::Arc::clone(&log),
            router: std::sync::Arc::clone(&router),
            ndr: std::sync::Arc::clone(&ndr),
            producer: "mailflow/routing".to_string(),
            drain: drain.clone(),
        });
    }
    let mut delivery = None;
    if roles.contains(&Role::Delivery) {
        let shared = crate::delivery::actor::Shared::new(
            &config,
            std::sync::Arc::clone(&log),
            resolver,
            router,
            ndr.clone(),
            drain.clone(),
        )
        .context("setting up delivery")?;
        let (actor, handle) = crate::delivery::actor::DeliveryActor::new(std::sync::Arc::new(shared));
        arbiters.start(actor);
        delivery = Some(handle);
    }
    if roles.contains(&Role::Journal) {
        arbiters.start(crate::journal::actor::JournalActor::new(&config, std::sync::Arc::clone(&log), drain.clone()));
    }
    let admin_state = std::sync::Arc::new(crate::admin::AdminState {
        log: std::sync::Arc::clone(&log),
        delivery,
        // On Kafka other processes own partitions too: fold them all for the views.
        cluster: match (&config.event_log, config.admin.listen) {
            (crate::config::EventLogConfig::Kafka { .. }, Some(_)) => {
                Some(crate::admin::cluster::ClusterQueues::default())
            }
            _ => None,
        },
        ndr,
        quarantine: config.admin.listen.map(|_| crate::admin::quarantine::QuarantineIndex::default()),
        token: config.admin.token()?,
        started: std::sync::atomic::AtomicBool::new(false),
        producer: "mailflow/admin".to_string(),
        // Every process serving the admin API keeps the message trace.
        trace: config.admin.listen.map(|_| {
            let data_dir = match &config.event_log {
                crate::config::EventLogConfig::Embedded { path, .. } => Some(path.as_path()),
                crate::config::EventLogConfig::Kafka { .. } => None,
            };
            let settings = crate::trace::TraceSettings::from_config(&config.trace, data_dir);
            crate::trace::TraceService::start(std::sync::Arc::clone(&log), settings)
        }),
        drain: drain.clone(),
    });
    let admin = match config.admin.listen {
        Some(listen) => Some(crate::admin::start(listen, std::sync::Arc::clone(&admin_state))?),
        None => None,
    };
    // One line per listener, then `ready`: scripts and the test harness read these.
    for (name, address) in front_door.iter().flat_map(|door| door.listeners.iter()) {
        println!("listening {name} {address}");
    }
    if let Some(address) = admin {
        println!("listening admin {address}");
    }
    admin_state.started.store(true, std::sync::atomic::Ordering::Release);
    println!("ready");
    shutdown_signal().await?;
    // See `crate::drain`: the listeners stay open (answering 421 4.3.2) until the end.
    let deadline = config.server.drain_timeout;
    tracing::info!(deadline = ?deadline, "draining");
    drain.start();
    drop(drain);
    // A moment past the deadline, for the sessions ended at it to say so (421 4.3.2).
    let finished = drained.finished(deadline + std::time::Duration::from_secs(1)).await;
    if finished {
        tracing::info!("drained; exiting");
    } else {
        tracing::warn!("drain deadline passed; exiting with work unfinished (it is retried by whoever takes over)");
    }
    // Appends acknowledged by now are durable; what a producer still buffers
    // (Kafka) is flushed when the log is dropped.
    drop(front_door);
    drop(arbiters);
    drop(log);
    tracing::info!("stopped");
    Ok(())
}
