//! Postfix as a real peer: its `smtp-sink` test server (Debian `postfix`,
//! installed by `scripts/install-test-deps`) on a free loopback port, dumping
//! every transaction it receives to a file.

use std::io::Read as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// A running `smtp-sink`; killed when dropped.
#[derive(Debug)]
pub struct SmtpSink {
    child: Child,
    /// Where it answers.
    pub address: SocketAddr,
    dumps: tempfile::TempDir,
}

/// One transaction as `smtp-sink` dumped it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dumped {
    /// `X-Mail-Args`: the MAIL command's arguments, e.g. `<a@b.c> BODY=8BITMIME`.
    pub mail_args: String,
    /// `X-Rcpt-Args`, one per accepted RCPT, in order.
    pub rcpt_args: Vec<String>,
    /// The message after smtp-sink's own `Received:` header, with LF line ends
    /// as smtp-sink writes them.
    pub message: String,
}

impl SmtpSink {
    /// Starts `smtp-sink` with extra options (e.g. `-r RCPT` to soft-reject
    /// every RCPT; see smtp-sink(1)) and waits until it greets.
    pub fn start(options: &[&str]) -> anyhow::Result<Self> {
        let dumps = tempfile::tempdir()?;
        // smtp-sink drops to `nobody` (when root) before it writes dumps.
        std::fs::set_permissions(dumps.path(), std::fs::Permissions::from_mode(0o777))?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut command = Command::new("smtp-sink");
        if std::fs::metadata(dumps.path())?.uid() == 0 {
            command.args(["-u", "nobody"]);
        }
        let child = command
            .arg("-d")
            .arg(dumps.path().join("%Y%m%d%H%M%S."))
            .args(options)
            .arg(format!("127.0.0.1:{port}"))
            .arg("64")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting smtp-sink (Debian postfix; scripts/install-test-deps)")?;
        let mut sink = Self { child, address: SocketAddr::from(([127, 0, 0, 1], port)), dumps };
        wait_for_greeting(&mut sink.child, sink.address, "smtp-sink")?;
        Ok(sink)
    }

    /// The transactions dumped so far (in no particular order within a second).
    pub fn dumped(&self) -> anyhow::Result<Vec<Dumped>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(self.dumps.path())? {
            let text = std::fs::read_to_string(entry?.path())?;
            out.push(parse_dump(&text)?);
        }
        Ok(out)
    }

    /// Polls until at least `count` transactions were dumped (smtp-sink may
    /// write the file after its reply), for up to 10 s.
    pub fn wait_for_dumps(&self, count: usize) -> anyhow::Result<Vec<Dumped>> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let dumped = self.dumped()?;
            if dumped.len() >= count {
                return Ok(dumped);
            }
            if Instant::now() > deadline {
                bail!("smtp-sink dumped {} transactions, expected {count}", dumped.len());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `X-...` records, then `Received:` with its continuation lines, then the message.
fn parse_dump(text: &str) -> anyhow::Result<Dumped> {
    let mut mail_args = None;
    let mut rcpt_args = Vec::new();
    let mut lines = text.split_inclusive('\n');
    for line in lines.by_ref() {
        if let Some(value) = line.strip_prefix("X-Mail-Args: ") {
            mail_args = Some(value.trim_end().to_string());
        } else if let Some(value) = line.strip_prefix("X-Rcpt-Args: ") {
            rcpt_args.push(value.trim_end().to_string());
        } else if line.starts_with("Received:") {
            break;
        }
    }
    let message = lines.skip_while(|line| line.starts_with('\t') || line.starts_with(' ')).collect();
    Ok(Dumped { mail_args: mail_args.context("dump without X-Mail-Args")?, rcpt_args, message })
}

/// Polls `address` until it sends `220`, for up to 20 s, failing early when
/// `child` exits.
pub(crate) fn wait_for_greeting(child: &mut Child, address: SocketAddr, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited with {status}");
        }
        if let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_millis(200)) {
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut greeting = [0u8; 3];
            if stream.read_exact(&mut greeting).is_ok() && &greeting == b"220" {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("{what} did not greet on {address} within 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
