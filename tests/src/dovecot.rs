//! A private Dovecot (Debian `dovecot-core` + `dovecot-lmtpd`, installed by
//! `scripts/install-test-deps`) serving LMTP on a free loopback port: the
//! mailbox store as a real next hop.
//!
//! Everything lives in a temporary directory: a generated `dovecot.conf`
//! (nothing is read from `/etc/dovecot`), a passwd-file with the users, the
//! run directory, the log, and the mail under `mail/<user>/Maildir`. Dovecot
//! refuses to access mail as root, so when the tests run as root the mail is
//! written as the `dovecot` system user into a world-writable mail root;
//! otherwise everything runs as the current user.

use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// A running Dovecot; stopped when dropped.
#[derive(Debug)]
pub struct Dovecot {
    child: Child,
    /// Where LMTP answers.
    pub address: SocketAddr,
    dir: tempfile::TempDir,
}

impl Dovecot {
    /// Starts Dovecot with these users (full addresses, e.g. `anna@contoso.test`)
    /// and waits until LMTP answers with its greeting.
    pub fn start(users: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        // Dovecot's processes (other users when root) must reach the directory.
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755))?;
        let mail = root.join("mail");
        std::fs::create_dir(&mail)?;
        let running_as_root = std::fs::metadata(root)?.uid() == 0;
        if running_as_root {
            std::fs::set_permissions(&mail, std::fs::Permissions::from_mode(0o1777))?;
        }
        let passwd: String = users.iter().map(|user| format!("{user}::::::\n")).collect();
        std::fs::write(root.join("users"), passwd)?;
        for sub in ["run", "state"] {
            std::fs::create_dir(root.join(sub))?;
        }
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        std::fs::write(root.join("dovecot.conf"), config(root, port, running_as_root)?)?;

        let child = Command::new("dovecot")
            .arg("-F")
            .arg("-c")
            .arg(root.join("dovecot.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting dovecot (apt-get install dovecot-core dovecot-lmtpd; scripts/install-test-deps)")?;
        let mut dovecot = Self { child, address: SocketAddr::from(([127, 0, 0, 1], port)), dir };
        dovecot.wait_ready()?;
        Ok(dovecot)
    }

    /// Polls until the LMTP listener sends `220`.
    fn wait_ready(&mut self) -> anyhow::Result<()> {
        crate::postfix::wait_for_greeting(&mut self.child, self.address, "dovecot")
            .with_context(|| format!("dovecot's log:\n{}", self.log()))
    }

    /// The user's Maildir (it exists once something was delivered).
    pub fn maildir(&self, user: &str) -> PathBuf {
        self.dir.path().join("mail").join(user).join("Maildir")
    }

    /// The messages in the user's `new/`, oldest name first.
    pub fn new_messages(&self, user: &str) -> anyhow::Result<Vec<Vec<u8>>> {
        let new = self.maildir(user).join("new");
        if !new.exists() {
            return Ok(Vec::new());
        }
        let mut paths: Vec<PathBuf> =
            std::fs::read_dir(&new)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
        paths.sort();
        paths.iter().map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display()))).collect()
    }

    /// Dovecot's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default()
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        // SIGTERM lets the master stop its children; SIGKILL (Child::kill) would orphan them.
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
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

fn config(root: &Path, port: u16, running_as_root: bool) -> anyhow::Result<String> {
    let (user, group) = if running_as_root {
        ("dovecot".to_string(), "dovecot".to_string())
    } else {
        let id = |flag: &str| -> anyhow::Result<String> {
            let out = Command::new("id").arg(flag).output().context("running id")?;
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        };
        (id("-un")?, id("-gn")?)
    };
    let login_user = if running_as_root { "dovenull".to_string() } else { user.clone() };
    let root = root.display();
    Ok(format!(
        r#"# Generated by the mailflow test harness.
base_dir = {root}/run
state_dir = {root}/state
instance_name = mailflow-test-{port}
protocols = lmtp
listen = 127.0.0.1
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
ssl = no
default_internal_user = {user}
default_internal_group = {group}
default_login_user = {login_user}
first_valid_uid = 0
first_valid_gid = 0
mail_uid = {user}
mail_gid = {group}
mail_location = maildir:{root}/mail/%u/Maildir
lmtp_save_to_detail_mailbox = no
passdb {{
  driver = passwd-file
  args = {root}/users
}}
userdb {{
  driver = passwd-file
  args = {root}/users
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {port}
  }}
  unix_listener lmtp {{
    mode = 0600
  }}
}}
service anvil {{
  chroot =
}}
"#
    ))
}
