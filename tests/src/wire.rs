//! A byte-exact SMTP client for attack transcripts (reliability notes §2).
//!
//! Python's smtplib and swaks normalise what they send; the attacks of the
//! security suite need bare CR and LF, NUL, several commands in one write,
//! one byte at a time, a chosen source address in 127/8, and STARTTLS done by
//! hand. [`Wire`] writes exactly the bytes it is given, reads whole (multi-line)
//! replies with a deadline, and upgrades to TLS keeping nothing it had
//! buffered in the clear, so a reply to an injected plaintext command cannot
//! be mistaken for one sent inside TLS.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// How long a read waits for the server before the test fails.
pub const REPLY_DEADLINE: Duration = Duration::from_secs(10);

/// One SMTP reply: its code and its lines (code and separator stripped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code.
    pub code: u16,
    /// The text of each line, without `NNN-` / `NNN ` and CRLF.
    pub lines: Vec<String>,
}

impl Reply {
    /// The enhanced status code (RFC 3463) of the first line, if it has one.
    pub fn enhanced(&self) -> Option<&str> {
        let first = self.lines.first()?.split(' ').next()?;
        let parts: Vec<&str> = first.split('.').collect();
        (parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())))
            .then_some(first)
    }

    /// `"550 5.6.11"`: code and enhanced status, for exact comparisons.
    pub fn status(&self) -> String {
        match self.enhanced() {
            Some(enhanced) => format!("{} {enhanced}", self.code),
            None => self.code.to_string(),
        }
    }

    /// The whole reply as one string, lines joined with ` | `.
    pub fn text(&self) -> String {
        self.lines.join(" | ")
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.text())
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Only while the handshake runs.
    Upgrading,
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Upgrading => Poll::Ready(Err(std::io::ErrorKind::NotConnected.into())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Upgrading => Poll::Ready(Err(std::io::ErrorKind::NotConnected.into())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Upgrading => Poll::Ready(Ok(())),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Upgrading => Poll::Ready(Ok(())),
        }
    }
}

/// An SMTP connection driven byte by byte.
pub struct Wire {
    stream: Stream,
    /// Bytes read but not yet returned as a reply.
    buffer: Vec<u8>,
}

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tls = matches!(self.stream, Stream::Tls(_));
        f.debug_struct("Wire").field("tls", &tls).field("buffered", &self.buffer.len()).finish()
    }
}

impl Wire {
    /// Connects to `server` and reads the banner.
    pub async fn connect(server: SocketAddr) -> anyhow::Result<(Self, Reply)> {
        let tcp = TcpStream::connect(server).await.with_context(|| format!("connecting to {server}"))?;
        let mut wire = Self { stream: Stream::Plain(tcp), buffer: Vec::new() };
        let banner = wire.reply().await?;
        Ok((wire, banner))
    }

    /// Connects to `server` from `source` (an address of 127/8, to appear as
    /// another client on loopback); the banner is left for the caller to read.
    pub async fn connect_from(source: IpAddr, server: SocketAddr) -> anyhow::Result<Self> {
        let socket = if source.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        socket.bind(SocketAddr::new(source, 0)).with_context(|| format!("binding {source}"))?;
        let tcp = socket.connect(server).await.with_context(|| format!("connecting to {server} from {source}"))?;
        Ok(Self { stream: Stream::Plain(tcp), buffer: Vec::new() })
    }

    /// Writes `bytes` exactly, in one write.
    pub async fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// Writes `line` and CRLF, and reads the reply.
    pub async fn command(&mut self, line: &str) -> anyhow::Result<Reply> {
        self.send(format!("{line}\r\n").as_bytes()).await?;
        self.reply().await
    }

    /// Reads the next whole reply.
    pub async fn reply(&mut self) -> anyhow::Result<Reply> {
        let mut lines = Vec::new();
        loop {
            let line = self.line().await?;
            let (code, rest) = line.split_at_checked(3).context("reply line shorter than a code")?;
            let code: u16 = code.parse().with_context(|| format!("not a reply: {line:?}"))?;
            let (separator, text) = rest.split_at_checked(1).unwrap_or((" ", ""));
            lines.push(text.to_string());
            match separator {
                "-" => continue,
                " " => return Ok(Reply { code, lines }),
                _ => bail!("not a reply: {line:?}"),
            }
        }
    }

    /// Reads `count` replies.
    pub async fn replies(&mut self, count: usize) -> anyhow::Result<Vec<Reply>> {
        let mut replies = Vec::with_capacity(count);
        for _ in 0..count {
            replies.push(self.reply().await?);
        }
        Ok(replies)
    }

    /// Reads until the server closes the connection and returns what came
    /// before the close (empty: nothing more was said). Fails if the server
    /// keeps the connection open past the deadline.
    pub async fn until_closed(&mut self) -> anyhow::Result<Vec<u8>> {
        let mut rest = std::mem::take(&mut self.buffer);
        let mut chunk = [0u8; 4096];
        let deadline = tokio::time::Instant::now() + REPLY_DEADLINE;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => bail!("the server kept the connection open; it sent {:?}", String::from_utf8_lossy(&rest)),
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(rest),
                Ok(Ok(n)) => rest.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Bytes received and not yet read as a reply.
    pub fn buffered(&self) -> &[u8] {
        &self.buffer
    }

    /// Runs the TLS handshake (after the server's `220` to STARTTLS),
    /// verifying the server as `name` with `connector`. Fails if the server
    /// sent anything after its `220` in the clear.
    pub async fn start_tls(&mut self, connector: &TlsConnector, name: &str) -> anyhow::Result<()> {
        if !self.buffer.is_empty() {
            bail!("plaintext after the 220 to STARTTLS: {:?}", String::from_utf8_lossy(&self.buffer));
        }
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Upgrading) else {
            bail!("TLS is already active");
        };
        let name = rustls::pki_types::ServerName::try_from(name.to_string())?;
        let tls = tokio::time::timeout(REPLY_DEADLINE, connector.connect(name, tcp))
            .await
            .context("TLS handshake timed out")??;
        self.stream = Stream::Tls(Box::new(tls));
        Ok(())
    }

    /// The next CRLF-terminated line, without CRLF.
    async fn line(&mut self) -> anyhow::Result<String> {
        let deadline = tokio::time::Instant::now() + REPLY_DEADLINE;
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buffer.drain(..end + 2).collect();
                return Ok(String::from_utf8_lossy(&line[..end]).into_owned());
            }
            let read = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await;
            match read {
                Err(_) => {
                    bail!("no reply within {REPLY_DEADLINE:?}; buffered {:?}", String::from_utf8_lossy(&self.buffer))
                }
                Ok(Ok(0)) => bail!("connection closed; buffered {:?}", String::from_utf8_lossy(&self.buffer)),
                Ok(Ok(n)) => self.buffer.extend_from_slice(&chunk[..n]),
                Ok(Err(err)) => return Err(err).context("reading a reply"),
            }
        }
    }
}

/// A CA and a server certificate for `name` signed by it: the PEM files the
/// router's `[server.tls]` takes, and a client connector trusting only that CA.
pub struct TestPki {
    /// Server certificate, PEM.
    pub certificate_pem: String,
    /// Server key, PEM.
    pub key_pem: String,
    /// TLS client that trusts the CA (ring, TLS 1.2 and 1.3).
    pub connector: TlsConnector,
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPki").finish_non_exhaustive()
    }
}

impl TestPki {
    /// Makes the CA and the server certificate.
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let ca = crate::pki::TestCa::new()?;
        let (certificate_pem, key_pem) = ca.issue(name)?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der().clone())?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self { certificate_pem, key_pem, connector: TlsConnector::from(Arc::new(config)) })
    }

    /// Writes the certificate and key into `dir`; returns the `[server.tls]` section.
    pub fn server_tls_section(&self, dir: &std::path::Path) -> anyhow::Result<String> {
        let certificate = dir.join("server.pem");
        let key = dir.join("server-key.pem");
        std::fs::write(&certificate, &self.certificate_pem)?;
        std::fs::write(&key, &self.key_pem)?;
        Ok(format!(
            "[server.tls]\ncertificate = {:?}\nkey = {:?}\n",
            certificate.display().to_string(),
            key.display().to_string()
        ))
    }
}

/// Raises this process's soft limit on open files to at least `wanted` (up to
/// the hard limit), so a test can hold many sockets; child processes started
/// afterwards (the router) inherit it. Returns the soft limit now in force.
pub fn raise_open_file_limit(wanted: u64) -> anyhow::Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed,
    // which lives on this stack frame for the whole call.
    #[allow(unsafe_code)]
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
        }
        if limit.rlim_cur < wanted {
            limit.rlim_cur = wanted.min(limit.rlim_max);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error()).context("setrlimit(RLIMIT_NOFILE)");
            }
        }
    }
    Ok(limit.rlim_cur)
}
