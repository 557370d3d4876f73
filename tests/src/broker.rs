//! A Kafka-protocol broker on loopback, started by the test itself.
//!
//! The broker is noida-db (PyPI `noida-db==0.2.3`), whose wheel bundles a
//! native broker binary. It is found through `MAILFLOW_KAFKA_BROKER` (path of
//! the binary) or the installed Python package. If it is missing the test
//! fails and says how to install it: Kafka tests never skip silently.
//!
//! noida-db keeps its data in memory and saves it to the data directory when
//! its Kafka service is stopped (`noida-db stop kafka`): an outage is that
//! stop and a later start on the same port and data. A SIGKILL of the broker
//! process loses everything it held, like any single broker without fsync
//! (reliability notes §1.1), so it is no outage a router could survive.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// How to get the broker, printed when it is missing.
pub const INSTALL_HINT: &str = "the Kafka-protocol broker is not installed: run `python3 -m pip install noida-db==0.2.3` \
     (README's test command does this), or set MAILFLOW_KAFKA_BROKER to the broker binary";

/// A running broker; killed when dropped.
#[derive(Debug)]
pub struct Broker {
    child: Child,
    /// `host:port` for `bootstrap.servers`.
    pub bootstrap: String,
    data: tempfile::TempDir,
}

/// Path of the broker binary.
pub fn binary() -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var("MAILFLOW_KAFKA_BROKER") {
        return Ok(PathBuf::from(path));
    }
    let output = Command::new("python3")
        .args(["-c", "import noida_db, pathlib; print(pathlib.Path(noida_db.__file__).with_name('noida-db'))"])
        .output()
        .context(INSTALL_HINT)?;
    if !output.status.success() {
        bail!("{INSTALL_HINT}");
    }
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    if !path.exists() {
        bail!("{INSTALL_HINT} ({} does not exist)", path.display());
    }
    Ok(path)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Broker {
    /// The `[event_log]` section of a router on this broker: 3 partitions,
    /// replication 1, appends waiting up to 30 s.
    pub fn event_log(&self) -> String {
        format!(
            "\n[event_log]\nkind = \"kafka\"\nbrokers = \"{}\"\npartitions = 3\nreplication_factor = 1\nmessage_timeout = \"30s\"\n",
            self.bootstrap
        )
    }

    /// Starts a broker with an empty data directory on a free loopback port
    /// and waits until it accepts connections.
    pub fn start() -> anyhow::Result<Self> {
        let binary = binary()?;
        let data = tempfile::tempdir()?;
        let port = free_port()?;
        let log = std::fs::File::create(data.path().join("broker.log"))?;
        let child = Command::new(&binary)
            .args(["start", "--only", "kafka", "--host", "127.0.0.1", "--kafka-port", &port.to_string(), "--data-dir"])
            .arg(data.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}; {INSTALL_HINT}", binary.display()))?;
        let mut broker = Broker { child, bootstrap: format!("127.0.0.1:{port}"), data };
        broker.wait_listening()?;
        Ok(broker)
    }

    /// Starts librdkafka's mock cluster (`mock-kafka`, built beside the
    /// tests) with mailflow's topics of `partitions` partitions each. Unlike
    /// noida-db it expires the session of a member killed with SIGKILL, so a
    /// group hands the dead member's partitions to the others; it keeps
    /// nothing on disk, so [`Broker::stop`] does not apply to it.
    pub fn mock(partitions: u32) -> anyhow::Result<Self> {
        let binary = crate::router::harness_binary("mock-kafka")?;
        let data = tempfile::tempdir()?;
        let log = std::fs::File::create(data.path().join("broker.log"))?;
        let mut child = Command::new(&binary)
            .arg(partitions.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!("starting {}: run the tests with `cargo test -p mailflow-tests`", binary.display())
            })?;
        let stdout = child.stdout.take().context("mock-kafka stdout")?;
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
        let Some(bootstrap) = line.trim().strip_prefix("bootstrap ") else {
            let log = std::fs::read_to_string(data.path().join("broker.log")).unwrap_or_default();
            bail!("mock-kafka did not start: {line:?} {log}");
        };
        let bootstrap = bootstrap.to_string();
        let mut broker = Broker { child, bootstrap, data };
        broker.wait_listening()?;
        Ok(broker)
    }

    /// Stops the broker's Kafka service: its port refuses connections, its
    /// data is saved to the data directory. [`Broker::resume`] brings it back.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        self.service("stop")?;
        let address: SocketAddr = self.bootstrap.parse()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
            if Instant::now() > deadline {
                bail!("broker still listens on {} 20 s after it was stopped", self.bootstrap);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Starts the Kafka service again, on the same port with the saved data.
    pub fn resume(&mut self) -> anyhow::Result<()> {
        self.service("start")?;
        self.wait_listening()
    }

    /// `noida-db stop|start kafka` against the running broker.
    fn service(&self, action: &str) -> anyhow::Result<()> {
        let output = Command::new(binary()?).args([action, "kafka", "--data-dir"]).arg(self.data.path()).output()?;
        if !output.status.success() {
            bail!("noida-db {action} kafka failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        Ok(())
    }

    fn wait_listening(&mut self) -> anyhow::Result<()> {
        let address: SocketAddr = self.bootstrap.parse()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err() {
            if let Some(status) = self.child.try_wait()? {
                let log = std::fs::read_to_string(self.data.path().join("broker.log")).unwrap_or_default();
                bail!("broker exited with {status}: {log}");
            }
            if Instant::now() > deadline {
                bail!("broker did not listen on {} within 20 s", self.bootstrap);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
