//! Durable acceptance under a full disk: the event log on a small tmpfs.
//! Every `250` must have its message durable; when the disk is full the reply
//! is `452 4.3.1`, never a `250` (reliability notes §1.2, case 3).

use std::process::Command;

use anyhow::{Context as _, ensure};
use mailflow_events::content;
use mailflow_events::log::embedded::{EmbeddedLog, Options};
use mailflow_tests::clients::python;
use mailflow_tests::router::{BASE_CONFIG, Router, messages_received};

/// A tmpfs mounted for the test's lifetime (needs root, as CI runs).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(path: &std::path::Path, size: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(path)?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .context("running mount")?;
        ensure!(status.success(), "mounting a tmpfs failed: this test needs root (CI and scripts/test run as root)");
        Ok(Self(path.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_452_4_3_1_and_every_250_is_durable() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let _tmpfs = Tmpfs::mount(&dir.path().join("log"), "3m")?;
    let mut router = Router::start_in(dir, BASE_CONFIG)?;
    let reply = python(
        router.smtp(),
        r#"
body = b"Subject: filler\r\n\r\n" + (b"x" * 998 + b"\r\n") * 150
replies = []
for i in range(60):
    s = smtplib.SMTP(ADDR, PORT)
    s.ehlo("filler.example")
    s.mail("s@example.net")
    s.rcpt("alice@contoso.com")
    code, msg = s.data(body)
    replies.append("%d %s" % (code, msg.decode()))
    s.quit()
    if code != 250 and len([r for r in replies if not r.startswith("250")]) >= 3:
        break
print(json.dumps(replies))
"#,
    )?;
    let replies: Vec<String> =
        reply.as_array().context("list")?.iter().filter_map(|r| r.as_str().map(str::to_string)).collect();
    let accepted: Vec<String> = replies
        .iter()
        .filter_map(|r| r.strip_prefix("250 2.0.0 OK <").and_then(|r| r.split('>').next()).map(str::to_string))
        .collect();
    let refused: Vec<&String> = replies.iter().filter(|r| !r.starts_with("250")).collect();
    ensure!(!accepted.is_empty(), "some messages fit: {replies:?}");
    ensure!(!refused.is_empty(), "the disk filled up: {replies:?}");
    for reply in &refused {
        ensure!(reply.starts_with("452 4.3.1 "), "a full disk is 452 4.3.1, got {reply}");
    }
    // Every 250 is durable: its event and its whole content are in the log.
    let events = router.received_events().await?;
    let accepted_messages = messages_received(&events);
    let log = EmbeddedLog::open(router.log_path(), Options::default())?;
    for id in &accepted {
        let received = accepted_messages
            .iter()
            .find_map(|(message_id, m)| (message_id == id).then_some(m))
            .with_context(|| format!("250 for {id} without its MessageReceived"))?;
        let body = content::load(&log, id, &received.content).await?;
        ensure!(body.len() > 150 * 1000, "content of {id} is whole");
    }
    Ok(())
}
