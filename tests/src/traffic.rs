//! Numbered messages whose every body byte can be checked at the next hop,
//! and concurrent SMTP clients (Python's smtplib) that send them and record
//! the final reply to each.
//!
//! Message `n` goes from `alice@contoso.com` to `bob@example.org` (the relay
//! of [`crate::router::relay_config`]) with the subject `traffic NNNNNNNN`.
//! Its body is a function of `n` alone: a few to 150 lines, or 8,000 lines
//! (about 640 KB, more than one content chunk) when `n % 20 == 7`, every
//! 50th line starting with a dot (dot-stuffing), and a last line naming `n`.
//! A truncated, spliced or mixed-up body therefore never passes [`check`].

use std::fmt::Write as _;
use std::net::SocketAddr;

use anyhow::{Context as _, bail};

use crate::postfix::Dumped;

/// 64 characters; each body line is a rotation of them.
const ALPHABET: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ-_";

/// Lines of the body of message `n` (without the last line).
fn line_count(n: u64) -> u64 {
    if n % 20 == 7 { 8000 } else { 3 + (n * 7919) % 150 }
}

/// The body of message `n` with LF line ends, as a dump of `smtp-sink` holds it.
pub fn body(n: u64) -> String {
    let mut body = String::new();
    for i in 0..line_count(n) {
        let rotation = ((n * 31 + i * 17) % 64) as usize;
        let dot = if i % 50 == 3 { "." } else { "" };
        let _ = writeln!(body, "{dot}{n:08} {i:05} {}{}", &ALPHABET[rotation..], &ALPHABET[..rotation]);
    }
    let _ = writeln!(body, "end of message {n:08}");
    body
}

/// The number of a message `smtp-sink` dumped, once its whole body is
/// checked: an error says what is wrong with a message that is not exactly
/// one that was sent.
pub fn check(dumped: &Dumped) -> anyhow::Result<u64> {
    // smtp-sink ends each dump with an empty line.
    check_text(dumped.message.strip_suffix('\n').unwrap_or(&dumped.message))
}

/// Like [`check`], for content as it came over the wire (CRLF line ends,
/// dot-stuffing undone), e.g. what [`crate::sink::Sink`] received.
pub fn check_content(content: &[u8]) -> anyhow::Result<u64> {
    check_text(&String::from_utf8_lossy(content).replace("\r\n", "\n"))
}

/// Header and body with LF line ends.
fn check_text(message: &str) -> anyhow::Result<u64> {
    let (header, received) = message.split_once("\n\n").context("a message without a body")?;
    let number: u64 = header
        .lines()
        .find_map(|line| line.strip_prefix("Subject: traffic "))
        .context("no `Subject: traffic N`")?
        .trim()
        .parse()?;
    let expected = body(number);
    if received != expected {
        let line = received.lines().zip(expected.lines()).position(|(a, b)| a != b);
        bail!(
            "message {number}: body of {} bytes where {} were sent; first difference at line {line:?}",
            received.len(),
            expected.len()
        );
    }
    Ok(number)
}

/// What became of one message a client tried to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The final reply to the content: code and text (e.g. `2.0.0 OK <id> queued`).
    Replied(u16, String),
    /// The connection failed after the content was sent and before its reply:
    /// the router may or may not have accepted it.
    Lost,
    /// The connection failed before the content was sent.
    Unsent,
}

/// One message a client tried to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The message's number.
    pub number: u64,
    /// What the client saw.
    pub outcome: Outcome,
}

impl Attempt {
    /// Whether the router answered `250`: it took responsibility for the message.
    pub fn accepted(&self) -> bool {
        matches!(&self.outcome, Outcome::Replied(250, _))
    }
}

/// How the clients send.
#[derive(Debug, Clone, Copy)]
pub struct Clients {
    /// Concurrent clients, each with its own sessions, one message after the other.
    pub threads: u64,
    /// Client `t` sends messages `first + t * 10_000`, `+ 1`, …
    pub first: u64,
    /// Messages per client at most.
    pub per_client: u64,
    /// Messages per session before the client says QUIT and connects again.
    pub per_session: u64,
    /// Clients stop starting messages after this many seconds.
    pub seconds: u64,
}

/// Runs `clients` against `address` until each has sent its messages, run out
/// of time, or lost its connection (a client stops at the first connection it
/// cannot open or that fails: the router is gone). Returns every attempt.
pub fn send(address: SocketAddr, clients: Clients) -> anyhow::Result<Vec<Attempt>> {
    anyhow::ensure!(clients.per_client <= 10_000, "client numbers would overlap");
    let Clients { threads, first, per_client, per_session, seconds } = clients;
    let script = format!(
        r#"
import threading, time
ALPHABET = {ALPHABET:?}
def body_lines(n):
    for i in range(8000 if n % 20 == 7 else 3 + (n * 7919) % 150):
        r = (n * 31 + i * 17) % 64
        yield "%s%08d %05d %s%s" % ("." if i % 50 == 3 else "", n, i, ALPHABET[r:], ALPHABET[:r])
    yield "end of message %08d" % n
def message(n):
    head = ("From: alice@contoso.com\r\nTo: bob@example.org\r\nSubject: traffic %08d\r\n"
            "Message-ID: <%08d@onprem.contoso.com>\r\n\r\n") % (n, n)
    return (head + "\r\n".join(body_lines(n)) + "\r\n").encode()
attempts = []
lock = threading.Lock()
stop_at = time.time() + {seconds}
def client(t):
    numbers = iter(range({first} + t * 10000, {first} + t * 10000 + {per_client}))
    while time.time() < stop_at:
        try:
            s = smtplib.SMTP(ADDR, PORT, timeout=60)
            s.ehlo("onprem.contoso.com")
        except (OSError, smtplib.SMTPException):
            return
        for _ in range({per_session}):
            n = next(numbers, None)
            if n is None or time.time() >= stop_at:
                s.close()
                return
            stage = "unsent"
            try:
                code, _ = s.mail("alice@contoso.com")
                if code == 250:
                    code, _ = s.rcpt("bob@example.org")
                if code != 250:
                    s.rset()
                    with lock: attempts.append([n, "unsent", 0, ""])
                    continue
                content = message(n)
                stage = "lost"
                code, text = s.data(content)
                with lock: attempts.append([n, "replied", code, text.decode()])
            except (OSError, smtplib.SMTPException):
                with lock: attempts.append([n, stage, 0, ""])
                return
        try:
            s.quit()
        except (OSError, smtplib.SMTPException):
            return
workers = [threading.Thread(target=client, args=(t,)) for t in range({threads})]
for w in workers: w.start()
for w in workers: w.join()
print(json.dumps(attempts))
"#
    );
    let value = crate::clients::python(address, &script)?;
    let rows = value.as_array().context("a list of attempts")?;
    rows.iter()
        .map(|row| {
            let number = row[0].as_u64().context("number")?;
            let outcome = match row[1].as_str() {
                Some("replied") => Outcome::Replied(
                    row[2].as_u64().context("code")? as u16,
                    row[3].as_str().unwrap_or_default().to_string(),
                ),
                Some("lost") => Outcome::Lost,
                _ => Outcome::Unsent,
            };
            Ok(Attempt { number, outcome })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dump(message: &str) -> Dumped {
        Dumped { mail_args: "<alice@contoso.com>".into(), rcpt_args: Vec::new(), message: message.into() }
    }

    #[test]
    fn a_whole_message_passes_and_a_cut_or_altered_one_does_not() {
        for n in [0, 7, 41, 1_000_027] {
            let whole = format!("Received: by mx\nSubject: traffic {n:08}\n\n{}\n", body(n));
            assert_eq!(check(&dump(&whole)).ok(), Some(n));
            let cut = format!("Subject: traffic {n:08}\n\n{}\n", &body(n)[..body(n).len() / 2]);
            assert!(check(&dump(&cut)).is_err());
            let other = format!("Subject: traffic {n:08}\n\n{}\n", body(n + 1));
            assert!(check(&dump(&other)).is_err());
            let wire = format!("Subject: traffic {n:08}\r\n\r\n{}", body(n).replace('\n', "\r\n"));
            assert_eq!(check_content(wire.as_bytes()).ok(), Some(n));
        }
        assert!(body(7).len() > 512 * 1024, "message 7 needs more than one content chunk");
        assert!(body(7).lines().nth(3).is_some_and(|l| l.starts_with('.')), "dot-stuffing is exercised");
    }
}
