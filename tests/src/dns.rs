//! A real DNS server on loopback serving a test zone: dnslib's zone resolver
//! (PyPI `dnslib`, installed by `scripts/install-test-deps`), UDP.

use std::io::{BufRead as _, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// A running DNS server; killed when dropped.
#[derive(Debug)]
pub struct DnsServer {
    child: Child,
    /// Where it answers (UDP).
    pub address: SocketAddr,
    _zone: tempfile::NamedTempFile,
}

impl DnsServer {
    /// Serves `zone` (master-file syntax, absolute names) on a free loopback port.
    pub fn start(zone: &str) -> anyhow::Result<Self> {
        let mut file = tempfile::NamedTempFile::new()?;
        std::io::Write::write_all(&mut file, zone.as_bytes())?;
        let port = UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut child = Command::new("python3")
            .args(["-u", "-m", "dnslib.zoneresolver", "--address", "127.0.0.1", "--port", &port.to_string()])
            .arg("--zone")
            .arg(file.path())
            .arg("--log=-request,-reply,-truncated,+error")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting dnslib's zone resolver (pip install dnslib)")?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains("Starting Zone Resolver") => break,
                Ok(_) => {}
                Err(_) => {
                    let _ = child.kill();
                    bail!("the DNS server did not start (is dnslib installed?)");
                }
            }
        }
        Ok(Self { child, address: SocketAddr::from(([127, 0, 0, 1], port)), _zone: file })
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
