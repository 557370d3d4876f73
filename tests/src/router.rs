//! The real `mailflow` daemon as a child process, on loopback ports it picks
//! itself (`:0`), with its embedded log in a temporary directory.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use mailflow_events::Envelope;
use mailflow_events::log::EventLog as _;
use mailflow_events::log::embedded::{EmbeddedLog, Options};
use mailflow_events::received::{MessageReceived, ReceivedEvent};

/// The admin token the harness configures (`[admin] token`).
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// A running router.
#[derive(Debug)]
pub struct Router {
    child: Child,
    /// The router's own process when it runs under a wrapper command
    /// ([`Router::start_wrapped`]); `child` is then the wrapper.
    wrapped: Option<u32>,
    /// Listener name → bound address.
    pub listeners: HashMap<String, SocketAddr>,
    /// Holds `config.toml`, `log/` and anything a test puts there.
    pub dir: tempfile::TempDir,
}

/// Configuration shared by the front-door tests: one anonymous listener, the
/// accepted domains `contoso.com` (authoritative) and `fabrikam.com`
/// (internal relay), and a small directory. Tests append their own sections.
pub const BASE_CONFIG: &str = r#"
[server]
hostname = "mx.contoso.test"

[[server.listeners]]
name = "smtp"
address = "127.0.0.1:0"

[[accepted_domains]]
name = "contoso.com"
default = true

[[accepted_domains]]
name = "fabrikam.com"
type = "internal_relay"

[[directory.recipients]]
address = "alice@contoso.com"
proxy_addresses = ["a.liddell@contoso.com"]

[[directory.recipients]]
address = "bob@contoso.com"
"#;

impl Router {
    /// Starts the router with `config` (TOML; the event log is added here) and
    /// waits until every listener is bound.
    pub fn start(config: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        Self::start_in(dir, config)
    }

    /// Like [`Router::start`], in an existing directory (to restart on the same log).
    pub fn start_in(dir: tempfile::TempDir, config: &str) -> anyhow::Result<Self> {
        Self::start_with(dir, config, &[])
    }

    /// Like [`Router::start_in`], with more `serve` arguments (e.g. `--roles delivery`).
    pub fn start_with(dir: tempfile::TempDir, config: &str, args: &[&str]) -> anyhow::Result<Self> {
        Self::spawn(dir, config, args, &[], &[])
    }

    /// Like [`Router::start_with`], with these environment variables set for
    /// the router (e.g. `OTEL_BSP_SCHEDULE_DELAY`).
    pub fn start_with_env(
        dir: tempfile::TempDir,
        config: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        Self::spawn(dir, config, args, &[], env)
    }

    /// Like [`Router::start_in`], with the binary run by a wrapper command
    /// that runs its arguments as a child (e.g. `strace -f -e inject=…`):
    /// `wrapper… mailflow serve --config …`. [`Router::kill`] kills the router
    /// itself with SIGKILL, then the wrapper.
    pub fn start_wrapped(dir: tempfile::TempDir, config: &str, wrapper: &[String]) -> anyhow::Result<Self> {
        anyhow::ensure!(!wrapper.is_empty(), "a wrapper command is needed");
        Self::spawn(dir, config, &[], wrapper, &[])
    }

    fn spawn(
        dir: tempfile::TempDir,
        config: &str,
        args: &[&str],
        wrapper: &[String],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let log = dir.path().join("log");
        // The embedded log in the test's directory, unless the test brings its own.
        let full = if config.contains("[event_log]") {
            config.to_string()
        } else {
            format!("{config}\n[event_log]\nkind = \"embedded\"\npath = {:?}\n", log.display().to_string())
        };
        // Maildir in the test's directory too, unless the test brings a store.
        let full = if full.contains("[mailbox_store]") {
            full
        } else {
            let mail = dir.path().join("mail");
            format!("{full}\n[mailbox_store]\nkind = \"maildir\"\npath = {:?}\n", mail.display().to_string())
        };
        // The admin API on a port of its own with a known token, unless the test brings one.
        let full = if full.contains("[admin]") {
            full
        } else {
            format!("{full}\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = {ADMIN_TOKEN:?}\n")
        };
        // The trace's query throttle off (the tests poll the trace API every 100 ms),
        // unless the test sets one.
        let full = if full.contains("query_limit") {
            full
        } else if full.contains("[trace]\n") {
            full.replacen("[trace]\n", "[trace]\nquery_limit = 0\n", 1)
        } else {
            format!("{full}\n[trace]\nquery_limit = 0\n")
        };
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, full)?;
        let mut command = match wrapper.split_first() {
            Some((program, wrapper_args)) => {
                let mut command = Command::new(program);
                command.args(wrapper_args).arg(binary()?);
                command
            }
            None => Command::new(binary()?),
        };
        let mut child = command
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .args(args)
            // `MAILFLOW_TEST_LOG=info cargo test …` shows what the router did.
            .env("RUST_LOG", std::env::var("MAILFLOW_TEST_LOG").unwrap_or_else(|_| "warn".to_string()))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting mailflow")?;
        let stdout = child.stdout.take().context("stdout")?;
        let (lines, received) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Read to the end even after startup, so the router never writes into a closed pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut listeners = HashMap::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match received.recv_timeout(left) {
                Ok(line) if line == "ready" => break,
                Ok(line) => {
                    if let Some(["listening", name, address]) = line.split(' ').collect::<Vec<_>>().get(..3) {
                        listeners.insert(name.to_string(), address.parse()?);
                    }
                }
                Err(_) => {
                    let status = child.try_wait()?;
                    let _ = child.kill();
                    bail!("mailflow did not become ready (exit status {status:?})");
                }
            }
        }
        // The wrapper's only child is the router (it printed `ready`, so it exists).
        let wrapped = if wrapper.is_empty() {
            None
        } else {
            let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", child.id()))?;
            Some(children.split_whitespace().next().context("the wrapper has no child")?.parse()?)
        };
        Ok(Self { child, wrapped, listeners, dir })
    }

    /// Address of the listener named `name`.
    pub fn listener(&self, name: &str) -> SocketAddr {
        self.listeners[name]
    }

    /// The admin API, with the harness's token.
    pub fn admin(&self) -> mailflow_actors::admin::client::AdminClient {
        mailflow_actors::admin::client::AdminClient {
            address: self.listener("admin"),
            token: Some(ADMIN_TOKEN.to_string()),
        }
    }

    /// Polls `GET path` on the admin API (every 100 ms) until `done` holds for
    /// its answer, for at most `within`; the error names `what` and shows the
    /// last answer.
    pub async fn wait_for_admin(
        &self,
        within: Duration,
        path: &str,
        what: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> anyhow::Result<serde_json::Value> {
        let deadline = Instant::now() + within;
        loop {
            let value = self.admin().get(path).await?;
            if done(&value) {
                return Ok(value);
            }
            if Instant::now() > deadline {
                bail!("timed out waiting for {what}: {value:#}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `/readyz` says the router has finished replaying.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.admin().get("/readyz").await.is_err() {
            if Instant::now() > deadline {
                bail!("the router did not become ready within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Path of the configuration file the router runs with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    /// The router's resident set size in KiB (`VmRSS` of its `/proc/<pid>/status`).
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS in the router's /proc status")
    }

    /// Address of the `smtp` listener.
    pub fn smtp(&self) -> SocketAddr {
        self.listener("smtp")
    }

    /// Kills the router with SIGKILL and waits for it (and for its wrapper).
    pub fn kill(&mut self) {
        if let Some(pid) = self.wrapped.take() {
            // The wrapper reaps the router and then exits: once it has, the
            // router's log lock is free. It is killed if it does not within 10 s.
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The router's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM (a graceful drain) and waits up to `timeout` for the exit.
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status()?;
        anyhow::ensure!(status.success(), "kill -TERM failed");
        self.wait_for_exit(timeout)
    }

    /// Waits up to `timeout` for the router to exit (SIGKILL after that, and an error).
    pub fn wait_for_exit(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                self.kill();
                bail!("mailflow did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the router (if it still runs) and hands back its directory (to restart on the same log).
    pub fn into_dir(mut self) -> tempfile::TempDir {
        self.kill();
        let dir = tempfile::tempdir().expect("temp dir");
        std::mem::replace(&mut self.dir, dir)
    }

    /// Path of the event log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    /// Every event of `mailflow.received`, read after killing the router
    /// (the embedded log admits one process at a time).
    pub async fn received_events(&mut self) -> anyhow::Result<Vec<Envelope<ReceivedEvent>>> {
        self.kill();
        let log = EmbeddedLog::open(self.log_path(), Options::default())?;
        let topic = mailflow_events::topic::RECEIVED;
        let mut events = Vec::new();
        for partition in 0..log.partitions(topic)? {
            for record in crate::conformance::read_all(&log, topic, partition, 0).await? {
                events.push(Envelope::from_json(&record.value)?);
            }
        }
        Ok(events)
    }
}

/// The messages accepted over SMTP among `events`, as (message id, payload),
/// in log order; NDRs the router generated itself (listener `system`) are left out.
pub fn messages_received(events: &[Envelope<ReceivedEvent>]) -> Vec<(String, MessageReceived)> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            ReceivedEvent::MessageReceived(m) if m.session.listener != mailflow_actors::ndr::SYSTEM_LISTENER => {
                Some((e.message_id.clone(), m.clone()))
            }
            _ => None,
        })
        .collect()
}

/// The `mailflow-under-test` binary.
pub fn binary() -> anyhow::Result<PathBuf> {
    harness_binary("mailflow-under-test")
}

/// A binary of this package: cargo builds them next to its integration tests
/// (`target/<profile>/`, the tests being in `deps/`).
pub fn harness_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).context("test binary location")?;
    let binary = profile_dir.join(name);
    if !binary.exists() {
        bail!("{} is missing: run the tests with `cargo test -p mailflow-tests`", binary.display());
    }
    Ok(binary)
}

impl Router {
    /// Every event of `mailflow.delivery` so far, per partition in log order,
    /// read beside the running router.
    pub async fn delivery_events(&self) -> anyhow::Result<Vec<Envelope<mailflow_events::delivery::DeliveryEvent>>> {
        let records = self.wait_for_records(mailflow_events::topic::DELIVERY, 0).await?;
        records.iter().map(|r| Ok(Envelope::from_json(&r.value)?)).collect()
    }

    /// Polls the delivery events until `done` holds for them (60 s at most;
    /// the error names `what` and lists the events).
    pub async fn wait_for_delivery_events(
        &self,
        what: &str,
        done: impl Fn(&[Envelope<mailflow_events::delivery::DeliveryEvent>]) -> bool,
    ) -> anyhow::Result<Vec<Envelope<mailflow_events::delivery::DeliveryEvent>>> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let events = self.delivery_events().await?;
            if done(&events) {
                return Ok(events);
            }
            if Instant::now() > deadline {
                bail!(
                    "timed out waiting for {what}; events: {:#?}",
                    events.iter().map(|e| &e.event).collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits (polling a read-only view of the running router's log) until
    /// `topic` holds at least `count` records, and returns them all.
    pub async fn wait_for_records(
        &self,
        topic: &str,
        count: usize,
    ) -> anyhow::Result<Vec<mailflow_events::log::Record>> {
        let deadline = Instant::now() + Duration::from_secs(30);
        // Read-only beside the running router: on Kafka a client of its broker.
        let config = mailflow_actors::config::Config::load(&self.config_path())?;
        let open = || mailflow_actors::event_log::open_read_only(&config.event_log, "test-reader");
        let kafka = match &config.event_log {
            mailflow_actors::config::EventLogConfig::Kafka { .. } => Some(open().await?),
            mailflow_actors::config::EventLogConfig::Embedded { .. } => None,
        };
        loop {
            // A read-only embedded log is a snapshot of the disk: opened anew each round.
            let log = match &kafka {
                Some(log) => std::sync::Arc::clone(log),
                None => open().await?,
            };
            let log = log.as_ref();
            let mut records = Vec::new();
            for partition in 0..log.partitions(topic).unwrap_or(0) {
                records.extend(crate::conformance::read_all(log, topic, partition, 0).await?);
            }
            if records.len() >= count {
                return Ok(records);
            }
            if Instant::now() > deadline {
                bail!("{topic} holds {} records, not {count}, after 30 s", records.len());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a `mailflow` command run as a child process did.
#[derive(Debug)]
pub struct CliRun {
    /// Exit status (-1 when killed by a signal).
    pub status: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl CliRun {
    /// Standard output as one JSON document (`--json`); panics with the run otherwise.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not one JSON document ({e}): {self:?}"))
    }
}

/// Runs the binary under test as a command (`mailflow replay …`, `queue`,
/// `trace`, `archive`, `validate-connector`), logging at `warn`, as a user would.
pub fn cli(args: &[&str]) -> anyhow::Result<CliRun> {
    cli_in(&std::env::current_dir()?, args)
}

/// Like [`cli`], in directory `dir` (where the built-in defaults put `var/`).
pub fn cli_in(dir: &std::path::Path, args: &[&str]) -> anyhow::Result<CliRun> {
    let output = Command::new(binary()?)
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .output()
        .with_context(|| format!("running mailflow {args:?}"))?;
    Ok(CliRun {
        status: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// [`BASE_CONFIG`] with the router as the relay of an on-premises server at
/// 127.0.0.1 (matched by the on-premises inbound connector `onprem`), the
/// test DNS server, MX hosts on `mx_port`, and `transport` lines added to `[transport]`.
pub fn relay_config(dns: &crate::dns::DnsServer, mx_port: u16, transport: &str) -> String {
    relay_config_at(dns.address, "", mx_port, transport)
}

/// Like [`relay_config`], with the nameserver at `nameserver` (e.g. a
/// [`crate::dns::DnsRelay`]) and `dns` lines added to `[dns]` (e.g. `timeout`).
pub fn relay_config_at(nameserver: SocketAddr, dns: &str, mx_port: u16, transport: &str) -> String {
    format!(
        "{BASE_CONFIG}\n[dns]\nnameservers = [\"{nameserver}\"]\n{dns}\n\n[transport]\nmx_port = {mx_port}\n{transport}\n\n\
         [[inbound_connectors]]\nname = \"onprem\"\nkind = \"on_premises\"\nsender_ip_addresses = [\"127.0.0.1\"]\n"
    )
}

/// Checks the first three deferrals of `destination` (its name) in `events`
/// against a retry schedule in milliseconds (DESIGN §3): attempts 1, 2, 3,
/// each a refused connection (`4.4.316`), the n-th scheduling the next probe
/// `schedule_ms[n]` later (the last step repeating) within 50 ms, and no
/// probe before its time.
pub fn assert_probes_on_schedule(
    events: &[Envelope<mailflow_events::delivery::DeliveryEvent>],
    destination: &str,
    schedule_ms: &[i64],
) {
    let deferrals: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.event {
            mailflow_events::delivery::DeliveryEvent::Deferred(d) if d.destination.name == destination => {
                Some((e.occurred_at, d))
            }
            _ => None,
        })
        .collect();
    assert!(deferrals.len() >= 3, "{destination}: {} deferrals", deferrals.len());
    for (n, (at, deferred)) in deferrals.iter().take(3).enumerate() {
        assert_eq!(deferred.attempt, n as u32 + 1, "{destination}: attempts count up");
        assert!(deferred.error.as_deref().is_some_and(|e| e.starts_with("4.4.316 Connection refused")), "{deferred:?}");
        let delay = (deferred.next_attempt_at - *at).num_milliseconds();
        let expected = schedule_ms[n.min(schedule_ms.len() - 1)];
        assert!((expected - 50..=expected + 50).contains(&delay), "{destination}: attempt {} waits {delay} ms", n + 1);
    }
    for pair in deferrals.windows(2).take(2) {
        assert!(pair[1].0 >= pair[0].1.next_attempt_at, "{destination}: no probe before its time");
    }
}
