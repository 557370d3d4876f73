//! Postfix as a real peer (Debian `postfix`, installed by
//! `scripts/install-test-deps`), on free loopback ports:
//!
//! - [`SmtpSink`]: its `smtp-sink` test server, dumping every transaction it
//!   receives to a file;
//! - [`PrivatePostfix`]: a private Postfix instance, either a next hop whose
//!   `smtpd` offers STARTTLS with a certificate the test generates, or an
//!   organisation's on-premises server with mailboxes and a relay host.

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
        Ok(self.dumped_by_name()?.into_iter().map(|(_, dumped)| dumped).collect())
    }

    /// Like [`SmtpSink::dumped`], each with the name of its dump file.
    pub fn dumped_by_name(&self) -> anyhow::Result<Vec<(String, Dumped)>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(self.dumps.path())? {
            let entry = entry?;
            let text = std::fs::read_to_string(entry.path())?;
            out.push((entry.file_name().to_string_lossy().into_owned(), parse_dump(&text)?));
        }
        Ok(out)
    }

    /// Names of the dump files so far, one per transaction smtp-sink answered
    /// (it keeps no file of a transaction whose connection broke before the end).
    pub fn dump_names(&self) -> anyhow::Result<std::collections::BTreeSet<String>> {
        std::fs::read_dir(self.dumps.path())?
            .map(|entry| Ok(entry?.file_name().to_string_lossy().into_owned()))
            .collect()
    }

    /// Polls until at least `count` transactions were dumped (smtp-sink may
    /// write the file after its reply, and a file caught while it is being
    /// written does not parse yet), for up to 10 s.
    pub fn wait_for_dumps(&self, count: usize) -> anyhow::Result<Vec<Dumped>> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let dumped = self.dumped();
            if dumped.as_ref().is_ok_and(|d| d.len() >= count) {
                return dumped;
            }
            if Instant::now() > deadline {
                let dumped = dumped?;
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

/// A private Postfix instance in a temporary directory: nothing under
/// `/etc/postfix` is changed; the master runs in the foreground (`postfix
/// start-fg`), logs to a file in the directory, and is stopped when dropped.
/// Postfix needs root to start. Two roles:
///
/// - [`PrivatePostfix::start`]: a next hop whose `smtpd` offers STARTTLS, taking
///   mail for one relay domain from loopback and discarding it;
/// - [`PrivatePostfix::on_premises`]: an organisation's on-premises server, with
///   its own mailboxes (Maildir, Postfix's `virtual` agent) and a relay host
///   it sends everything else through.
#[derive(Debug)]
pub struct PrivatePostfix {
    child: Child,
    /// Where `smtpd` answers.
    pub address: SocketAddr,
    dir: tempfile::TempDir,
}

/// The services every private instance runs; no chroot.
const MASTER_CF: &str = "pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
tlsmgr unix - - n 1000? 1 tlsmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
smtp unix - - n - - smtp
relay unix - - n - - smtp
virtual unix - n n - - virtual
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
";

impl PrivatePostfix {
    /// Starts Postfix with the PEM certificate chain and key, accepting mail
    /// for `relay_domain`, and waits until it greets.
    pub fn start(certificate_pem: &str, key_pem: &str, relay_domain: &str) -> anyhow::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        Self::start_on(port, |path| {
            std::fs::write(path.join("cert.pem"), certificate_pem)?;
            std::fs::write(path.join("key.pem"), key_pem)?;
            std::fs::set_permissions(path.join("key.pem"), std::fs::Permissions::from_mode(0o600))?;
            let path = path.display();
            Ok(format!(
                "myhostname = tls-peer.{relay_domain}
inet_interfaces = 127.0.0.1
relay_domains = {relay_domain}
default_transport = discard
relay_transport = discard
smtpd_tls_security_level = may
smtpd_tls_cert_file = {path}/cert.pem
smtpd_tls_key_file = {path}/key.pem
smtpd_tls_loglevel = 1
"
            ))
        })
    }

    /// Starts Postfix as the on-premises server of `domain` on 127.0.0.1:`port`:
    /// `mailboxes` (addresses of `domain`) are delivered into Maildirs under
    /// [`Self::maildir`]; everything else, including the other addresses of
    /// `domain` listed in `elsewhere` (mailboxes in the service), goes through
    /// `relayhost`. Its own mail leaves from 127.0.0.2, the address the
    /// service's on-premises inbound connector knows it by.
    pub fn on_premises(
        port: u16,
        domain: &str,
        mailboxes: &[&str],
        elsewhere: &[&str],
        relayhost: SocketAddr,
    ) -> anyhow::Result<Self> {
        Self::start_on(port, |path| {
            let mail = path.join("mail");
            std::fs::create_dir(&mail)?;
            let chown = Command::new("chown").arg("nobody:nogroup").arg(&mail).status()?;
            if !chown.success() {
                bail!("chown nobody:nogroup failed");
            }
            let map = |pairs: Vec<String>| format!("inline:{{ {} }}", pairs.join(", "));
            let users = mailboxes.iter().map(|a| format!("{{ {a} = {a}/ }}"));
            let known = map(users.chain(elsewhere.iter().map(|a| format!("{{ {a} = remote }}"))).collect());
            let transports = map(elsewhere
                .iter()
                .map(|a| format!("{{ {a} = relay:[{}]:{} }}", relayhost.ip(), relayhost.port()))
                .collect());
            Ok(format!(
                "myhostname = onprem.{domain}
inet_interfaces = 127.0.0.1
smtp_bind_address = 127.0.0.2
relay_domains =
virtual_mailbox_domains = {domain}
virtual_mailbox_maps = {known}
virtual_mailbox_base = {mail}
virtual_uid_maps = static:65534
virtual_gid_maps = static:65534
transport_maps = {transports}
relayhost = [{relay_ip}]:{relay_port}
smtp_tls_security_level = none
",
                mail = mail.display(),
                relay_ip = relayhost.ip(),
                relay_port = relayhost.port(),
            ))
        })
    }

    /// The Maildir root of [`Self::on_premises`]: `<root>/<address>/new`.
    pub fn maildir(&self) -> std::path::PathBuf {
        self.dir.path().join("mail")
    }

    /// Writes the configuration (`role` returns the role's `main.cf` lines,
    /// given the instance's directory) and starts the master with `smtpd` on
    /// 127.0.0.1:`port`.
    fn start_on(port: u16, role: impl FnOnce(&std::path::Path) -> anyhow::Result<String>) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        if std::fs::metadata(root)?.uid() != 0 {
            bail!("a private Postfix instance needs root (the tests run as root in CI)");
        }
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755))?;
        for sub in ["etc", "queue", "data"] {
            std::fs::create_dir(root.join(sub))?;
        }
        let chown = Command::new("chown").arg("postfix:postfix").arg(root.join("data")).status()?;
        if !chown.success() {
            bail!("chown postfix:postfix failed (is Debian postfix installed?)");
        }
        let role = role(root)?;
        let path = root.display();
        std::fs::write(
            root.join("etc/main.cf"),
            format!(
                "# Generated by the mailflow test harness.
compatibility_level = 3.6
queue_directory = {path}/queue
data_directory = {path}/data
mail_owner = postfix
setgid_group = postdrop
maillog_file = /dev/stdout
inet_protocols = ipv4
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
relay_recipient_maps =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
{role}"
            ),
        )?;
        std::fs::write(
            root.join("etc/master.cf"),
            format!("# Generated by the mailflow test harness.\n127.0.0.1:{port} inet n - n - - smtpd\n{MASTER_CF}"),
        )?;
        let log = std::fs::File::create(root.join("postfix.log"))?;
        let child = Command::new("postfix")
            .arg("-c")
            .arg(root.join("etc"))
            .arg("start-fg")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting postfix (Debian postfix; scripts/install-test-deps)")?;
        let mut postfix = Self { child, address: SocketAddr::from(([127, 0, 0, 1], port)), dir };
        if let Err(err) = wait_for_greeting(&mut postfix.child, postfix.address, "postfix") {
            return Err(err.context(format!("postfix log:\n{}", postfix.log())));
        }
        Ok(postfix)
    }

    /// Postfix's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postfix.log")).unwrap_or_default()
    }
}

impl Drop for PrivatePostfix {
    fn drop(&mut self) {
        // `postfix stop` signals the master, which stops its children and exits.
        let _ = Command::new("postfix")
            .arg("-c")
            .arg(self.dir.path().join("etc"))
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
