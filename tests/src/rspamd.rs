//! A private rspamd (Debian's `rspamd`, installed by `scripts/install-test-deps`)
//! on a free loopback port, with a generated minimal configuration: one normal
//! worker, no Redis, no Lua plugins, the GTUBE test patterns on (rspamd's
//! `XJS…` GTUBE is `reject`, `YJS…` `add header`, `ZJS…` `rewrite subject`)
//! and DNS pointed at a server the test runs, so nothing leaves loopback.
//!
//! rspamd forks its workers; it runs in its own process group, and dropping
//! the handle ends the whole group (TERM, then KILL past a deadline).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// rspamd's GTUBE variant for its `add header` action (our own GTUBE check does not know it).
pub const GTUBE_ADD_HEADER: &str = "YJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

/// A running rspamd; its process group is ended when dropped.
#[derive(Debug)]
pub struct Rspamd {
    child: Child,
    /// Where the normal worker answers, e.g. `http://127.0.0.1:40123`.
    pub url: String,
    dir: tempfile::TempDir,
}

impl Rspamd {
    /// Starts rspamd with DNS at `nameserver` and waits until `/ping` answers.
    pub fn start(nameserver: SocketAddr) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let path = |name: &str| dir.path().join(name).display().to_string();
        std::fs::create_dir(dir.path().join("db"))?;
        let config = format!(
            r#"options {{
  pidfile = "{pid}";
  dbdir = "{db}";
  tempdir = "{tmp}";
  enable_test_patterns = true;
  filters = "";
  dns {{ nameserver = ["{nameserver}"]; timeout = 1s; retransmits = 1; }}
}}
logging {{ type = "console"; level = "error"; }}
worker "normal" {{ bind_socket = "127.0.0.1:{port}"; count = 1; }}
actions {{ reject = 15; rewrite_subject = 8; add_header = 6; greylist = 4; }}
"#,
            pid = path("rspamd.pid"),
            db = path("db"),
            tmp = dir.path().display(),
        );
        std::fs::write(dir.path().join("rspamd.conf"), config)?;
        let log = std::fs::File::create(dir.path().join("rspamd.log"))?;
        // -f: stay in the foreground; -i: allow running as root (the CI user).
        let child = Command::new("rspamd")
            .args(["-f", "-i", "-c"])
            .arg(dir.path().join("rspamd.conf"))
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting rspamd (installed by scripts/install-test-deps)")?;
        let mut rspamd = Self { child, url: format!("http://127.0.0.1:{port}"), dir };
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if ping(address).is_ok_and(|reply| reply.contains("pong")) {
                return Ok(rspamd);
            }
            if let Some(status) = rspamd.child.try_wait()? {
                bail!("rspamd exited ({status}):\n{}", rspamd.log());
            }
            if Instant::now() > deadline {
                bail!("rspamd did not answer /ping within 30 s:\n{}", rspamd.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What rspamd logged (errors only).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("rspamd.log")).unwrap_or_default()
    }

    fn signal_group(&self, signal: &str) {
        let _ = Command::new("kill").args([signal, "--", &format!("-{}", self.child.id())]).status();
    }
}

/// `GET /ping` over HTTP/1.0; the whole reply.
fn ping(address: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"GET /ping HTTP/1.0\r\n\r\n")?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    Ok(reply)
}

impl Drop for Rspamd {
    fn drop(&mut self) {
        // The main process stops its workers on TERM; KILL is the fallback.
        self.signal_group("-TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.signal_group("-KILL");
        let _ = self.child.wait();
    }
}
