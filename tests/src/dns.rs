//! A real DNS server on loopback serving a test zone: dnslib's zone resolver
//! (PyPI `dnslib`, installed by `scripts/install-test-deps`), UDP; and a relay
//! in front of it that injects the faults a zone server never produces.

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

/// What a [`DnsRelay`] does with each query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsFault {
    /// None: the query goes to the real server and its answer comes back.
    Relay,
    /// Answer SERVFAIL (RCODE 2), as a resolver whose upstream is broken does.
    ServFail,
    /// Never answer: the client times out.
    Silent,
}

/// A UDP relay in front of a real [`DnsServer`] that injects the faults a zone
/// server cannot produce (SERVFAIL, no answer), switchable while it runs.
#[derive(Debug)]
pub struct DnsRelay {
    /// Where it answers (UDP).
    pub address: SocketAddr,
    fault: std::sync::Arc<std::sync::Mutex<DnsFault>>,
    queries: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl DnsRelay {
    /// Relays to `upstream` on a free loopback port, starting with `fault`.
    pub async fn start(upstream: SocketAddr, fault: DnsFault) -> anyhow::Result<Self> {
        let socket = std::sync::Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await?);
        let address = socket.local_addr()?;
        let fault = std::sync::Arc::new(std::sync::Mutex::new(fault));
        let queries = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (shared_fault, counter) = (std::sync::Arc::clone(&fault), std::sync::Arc::clone(&queries));
        let task = tokio::spawn(async move {
            let mut buffer = vec![0u8; 4096];
            while let Ok((len, client)) = socket.recv_from(&mut buffer).await {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let query = buffer[..len].to_vec();
                let fault = *shared_fault.lock().unwrap_or_else(|e| e.into_inner());
                match fault {
                    DnsFault::Silent => {}
                    DnsFault::ServFail => {
                        if let Some(answer) = servfail(&query) {
                            let _ = socket.send_to(&answer, client).await;
                        }
                    }
                    DnsFault::Relay => {
                        let socket = std::sync::Arc::clone(&socket);
                        tokio::spawn(async move {
                            if let Some(answer) = ask(upstream, &query).await {
                                let _ = socket.send_to(&answer, client).await;
                            }
                        });
                    }
                }
            }
        });
        Ok(Self { address, fault, queries, task })
    }

    /// From now on, `fault` for every query.
    pub fn set(&self, fault: DnsFault) {
        *self.fault.lock().unwrap_or_else(|e| e.into_inner()) = fault;
    }

    /// Queries received so far.
    pub fn queries(&self) -> usize {
        self.queries.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for DnsRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One query to `upstream` from a fresh socket; its answer within 5 s.
async fn ask(upstream: SocketAddr, query: &[u8]) -> Option<Vec<u8>> {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.ok()?;
    socket.send_to(query, upstream).await.ok()?;
    let mut buffer = vec![0u8; 4096];
    let len = tokio::time::timeout(Duration::from_secs(5), socket.recv(&mut buffer)).await.ok()?.ok()?;
    buffer.truncate(len);
    Some(buffer)
}

/// The SERVFAIL answer to `query` (RFC 1035 §4.1.1): its header with QR and
/// RA set and RCODE 2, its question section, no records (the OPT record of
/// EDNS is left out, which RFC 6891 §7 allows a server without EDNS).
fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    let header = query.get(..12)?;
    let mut end = 12;
    for _ in 0..u16::from_be_bytes([header[4], header[5]]) {
        loop {
            let len = *query.get(end)? as usize;
            end += 1;
            match len {
                0 => break,
                l if l & 0xC0 == 0xC0 => {
                    end += 1;
                    break;
                }
                l => end += l,
            }
        }
        end += 4; // QTYPE, QCLASS
    }
    let question = query.get(12..end)?;
    let mut answer = header.to_vec();
    answer[2] = 0x80 | (header[2] & 0x79); // QR; the query's opcode and RD
    answer[3] = 0x80 | 2; // RA; RCODE SERVFAIL
    answer[6..12].fill(0); // no answer, authority or additional records
    answer.extend_from_slice(question);
    Some(answer)
}

#[cfg(test)]
mod tests {
    #[test]
    fn servfail_echoes_the_question_with_rcode_2() {
        // id 0x1234, RD, one question `example.org. MX IN`, one additional (EDNS OPT).
        let mut query = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
        let question = [&[7][..], b"example", &[3], b"org", &[0, 0, 15, 0, 1]].concat();
        query.extend_from_slice(&question);
        query.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]);
        let answer = super::servfail(&query).expect("an answer");
        assert_eq!(&answer[..12], &[0x12, 0x34, 0x81, 0x82, 0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&answer[12..], &question[..]);
        assert_eq!(super::servfail(&query[..20]), None, "a truncated query gets no answer");
    }
}
