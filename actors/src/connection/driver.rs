//! Drives one [`Session`] over a TCP connection: reads with timeouts, writes
//! replies, and carries out the session's effects (durable store, refusal
//! records, STARTTLS, password checks).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use mailflow_events::log::EventLog;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::Instrument as _;

use super::accept;
use super::reply::Reply;
use super::session::{Session, Step};
use crate::policy::InboundPolicy;

/// What every session of a listener shares.
#[derive(Clone)]
pub struct Shared {
    /// The event log.
    pub log: Arc<dyn EventLog>,
    /// The inbound policy.
    pub policy: Arc<InboundPolicy>,
    /// STARTTLS acceptor, when configured.
    pub tls: Option<TlsAcceptor>,
    /// Producer name in events, e.g. `mailflow/connection`.
    pub producer: String,
    /// Idle limit between commands.
    pub command_timeout: Duration,
    /// Allowance during DATA/BDAT, see [`DataDeadline`].
    pub data_timeout: Duration,
    /// Slowest DATA/BDAT transfer kept, bytes per second (0: no minimum).
    pub min_data_rate: u64,
    /// Limit on a whole session.
    pub session_timeout: Duration,
    /// SPF and DKIM for the checks answered inside the session.
    pub authenticator: Arc<mail_auth::MessageAuthenticator>,
    /// Our hostname, for SPF.
    pub hostname: String,
    /// Inline checks: honour DMARC, deadline.
    pub anti_spam: Arc<crate::verdict::AntiSpamConfig>,
    /// The process's drain signal.
    pub drain: crate::drain::Drain,
    /// How long a session inside a transaction may go on once the drain began.
    pub drain_timeout: Duration,
    /// Form of the content chunks it writes.
    pub content_encoding: mailflow_events::content::ContentEncoding,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("producer", &self.producer)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// The connection, before or after STARTTLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Only during the handshake.
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

/// Runs the session to its end. I/O errors end it quietly: the client went away.
///
/// Timeouts: during DATA/BDAT, a [`DataDeadline`] (at most `data_timeout`
/// without progress, and no slower than `min_data_rate`). Outside them, `command_timeout` is the time the client has to
/// complete its next command, counted from the last reply: bytes that do not
/// finish a command do not extend it, so a client dripping a byte at a time
/// (slowloris, reliability notes §2.6) loses its session as a silent one does.
pub async fn run(shared: Shared, mut session: Session, first: Vec<Step>, tcp: TcpStream) {
    let mut stream = Stream::Plain(tcp);
    let deadline = tokio::time::Instant::now() + shared.session_timeout;
    let mut input = Vec::with_capacity(8192);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut steps = first;
    let mut command_deadline = tokio::time::Instant::now() + shared.command_timeout;
    let mut data_deadline: Option<DataDeadline> = None;
    // Set once the drain has begun: the session ends by then at the latest.
    let mut drain_by = shared.drain.is_draining().then(|| tokio::time::Instant::now() + shared.drain_timeout);
    loop {
        if !steps.is_empty() || session.in_data() {
            command_deadline = tokio::time::Instant::now() + shared.command_timeout;
        }
        match carry_out(&shared, &mut session, &mut stream, &mut input, steps).await {
            Ok(true) => {}
            Ok(false) | Err(_) => break,
        }
        // Draining: a session between transactions ends now; one inside a
        // transaction finishes it first (see `drain`).
        if drain_by.is_some() && !session.in_transaction() {
            let _ = stream.write_all(Reply::ShuttingDown.render().as_bytes()).await;
            break;
        }
        // Commands pipelined behind an effect (the end of a message, a password
        // check) are already here: answer them now, not after the next read,
        // which may never come from a client waiting for those very replies.
        if !input.is_empty() {
            steps = session.feed(&mut input);
            if !steps.is_empty() {
                continue;
            }
        }
        if !session.in_data() {
            data_deadline = None;
        }
        let mut read_deadline = if session.in_data() {
            data_deadline
                .get_or_insert_with(|| {
                    DataDeadline::new(tokio::time::Instant::now(), shared.data_timeout, shared.min_data_rate)
                })
                .at
        } else {
            command_deadline
        };
        read_deadline = read_deadline.min(deadline);
        if let Some(by) = drain_by {
            read_deadline = read_deadline.min(by);
        }
        let read = tokio::select! {
            read = tokio::time::timeout_at(read_deadline, stream.read(&mut chunk)) => read,
            () = shared.drain.started(), if drain_by.is_none() => {
                drain_by = Some(tokio::time::Instant::now() + shared.drain_timeout);
                steps = Vec::new();
                continue;
            }
        };
        match read {
            Err(_) => {
                let reply = if drain_by.is_some_and(|by| by <= tokio::time::Instant::now()) {
                    Reply::ShuttingDown
                } else {
                    Reply::Timeout
                };
                let _ = stream.write_all(reply.render().as_bytes()).await;
                break;
            }
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                if let Some(data) = &mut data_deadline {
                    data.progress(tokio::time::Instant::now(), n);
                }
                input.extend_from_slice(&chunk[..n]);
            }
        }
        steps = session.feed(&mut input);
    }
    let _ = stream.shutdown().await;
}

/// When a DATA/BDAT transfer must have made its next progress. Without a
/// minimum rate, `limit` after the last read. With one, a budget (Postfix's
/// `smtpd_per_request_deadline` with `smtpd_min_data_rate`): it starts at
/// `limit`, each read spends the time waited for it and earns
/// `bytes / min_rate` seconds, and it never holds more than `limit`. A client
/// at or above the rate never runs out; one below it does, after
/// `limit / (1 - rate / min_rate)`.
#[derive(Debug, Clone, Copy)]
struct DataDeadline {
    at: tokio::time::Instant,
    limit: Duration,
    min_rate: u64,
}

impl DataDeadline {
    fn new(now: tokio::time::Instant, limit: Duration, min_rate: u64) -> Self {
        Self { at: now + limit, limit, min_rate }
    }

    /// `bytes` arrived at `now`.
    fn progress(&mut self, now: tokio::time::Instant, bytes: usize) {
        let cap = now + self.limit;
        self.at = match self.min_rate {
            0 => cap,
            rate => (self.at + Duration::from_secs_f64(bytes as f64 / rate as f64)).min(cap),
        };
    }
}

/// Writes replies and performs effects until the session waits for input.
/// Returns false once the session is over.
async fn carry_out(
    shared: &Shared,
    session: &mut Session,
    stream: &mut Stream,
    input: &mut Vec<u8>,
    mut steps: Vec<Step>,
) -> std::io::Result<bool> {
    let mut out = String::new();
    while !steps.is_empty() {
        let mut next = Vec::new();
        for step in steps {
            match step {
                Step::Reply(reply) => out.push_str(&reply.render()),
                Step::Close => {
                    stream.write_all(out.as_bytes()).await?;
                    return Ok(false);
                }
                Step::Record(event) => {
                    let key = session.id().to_string();
                    accept::record(shared.log.as_ref(), &shared.producer, &key, *event).await;
                }
                Step::Store(incoming) => {
                    // Replies to earlier pipelined commands go out first.
                    stream.write_all(out.as_bytes()).await?;
                    out.clear();
                    let stage = crate::telemetry::Stage::start(
                        crate::telemetry::accept_span(
                            &incoming.id,
                            &incoming.session.client_ip,
                            &incoming.session.listener,
                            &incoming.envelope.mail_from,
                            incoming.recipients.len(),
                        ),
                        None,
                    );
                    let outcome =
                        accept_message(shared, *incoming, stage.context()).instrument(stage.span().clone()).await;
                    let answered = session.stored(outcome);
                    if let Some(code) = answered.iter().find_map(|step| match step {
                        Step::Reply(reply) => Some(reply.code()),
                        _ => None,
                    }) {
                        stage.span().record("smtp.reply_code", code);
                    }
                    next.extend(answered);
                }
                Step::CheckPassword { login, password } => {
                    let policy = Arc::clone(&shared.policy);
                    let primary = tokio::task::spawn_blocking(move || super::auth::verify(&policy, &login, &password))
                        .await
                        .unwrap_or(None);
                    next.extend(session.password_checked(primary));
                }
                Step::StartTls => {
                    out.push_str(&Reply::ReadyForTls.render());
                    stream.write_all(out.as_bytes()).await?;
                    out.clear();
                    input.clear();
                    next.extend(start_tls(shared, session, stream).await);
                }
            }
        }
        steps = next;
    }
    if !out.is_empty() {
        stream.write_all(out.as_bytes()).await?;
    }
    Ok(!session.is_closed())
}

/// Runs the checks answered before the reply, then stores the message, its
/// `MessageReceived` carrying `trace` (the accept span's context).
///
/// Anonymous mail (no AUTH, no connector) is authenticated here, in the
/// connection's process, with a deadline: anonymous IPv6 must pass SPF or DKIM
/// (spec 3.2b), and a DMARC failure for a `p=reject` domain is refused when
/// the policy is honoured. The results travel in `MessageReceived`, where the
/// verdict role takes them instead of checking again.
async fn accept_message(
    shared: &Shared,
    incoming: super::session::Incoming,
    trace: Option<mailflow_events::TraceContext>,
) -> super::session::StoreOutcome {
    use super::session::StoreOutcome;
    use mailflow_events::verdicts::{AuthResult, DmarcPolicy};
    let mut inline_checks = None;
    let wanted = incoming.requires_ipv6_authentication || (incoming.anonymous && shared.anti_spam.honor_dmarc_policy);
    if wanted {
        let ip: std::net::IpAddr = incoming.session.client_ip.parse().unwrap_or(std::net::Ipv6Addr::UNSPECIFIED.into());
        let helo = incoming.session.helo.clone().unwrap_or_default();
        let arrival = crate::verdict::auth::Arrival {
            ip,
            helo: &helo,
            hostname: &shared.hostname,
            mail_from: &incoming.envelope.mail_from,
            trusted_arc_sealers: &shared.anti_spam.arc_trusted_sealers,
        };
        let checks = tokio::time::timeout(
            shared.anti_spam.inline_deadline,
            crate::verdict::auth::authenticate(&shared.authenticator, arrival, &incoming.content),
        )
        .await;
        match checks {
            Ok(checks) => {
                if incoming.requires_ipv6_authentication && !crate::verdict::auth::passes_spf_or_dkim(&checks) {
                    return StoreOutcome::Ipv6AuthenticationFailed;
                }
                if shared.anti_spam.honor_dmarc_policy
                    && let Some(dmarc) = checks.dmarc.as_ref()
                    && dmarc.result == AuthResult::Fail
                    && dmarc.policy == Some(DmarcPolicy::Reject)
                    && checks.arc.as_ref().is_none_or(|arc| !(arc.result == AuthResult::Pass && arc.trusted))
                {
                    return StoreOutcome::DmarcRejected { domain: dmarc.header_from.clone() };
                }
                inline_checks = Some(checks);
            }
            Err(_) if incoming.requires_ipv6_authentication => return StoreOutcome::Ipv6AuthenticationFailed,
            Err(_) => tracing::info!(
                message_id = %incoming.id,
                "inline checks passed their deadline; the verdict role will judge"
            ),
        }
    }
    accept::store(shared.log.as_ref(), &shared.producer, shared.content_encoding, incoming, inline_checks, trace).await
}

async fn start_tls(shared: &Shared, session: &mut Session, stream: &mut Stream) -> Vec<Step> {
    let (Some(acceptor), Stream::Plain(_)) = (&shared.tls, &*stream) else { return session.tls_started(None) };
    let Stream::Plain(tcp) = std::mem::replace(stream, Stream::Upgrading) else { return session.tls_started(None) };
    match tokio::time::timeout(shared.command_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => {
            let info = super::tls::info(tls.get_ref().1);
            *stream = Stream::Tls(Box::new(tls));
            session.tls_started(Some(info))
        }
        Ok(Err(err)) => {
            tracing::info!(error = %err, "TLS handshake failed");
            session.tls_started(None)
        }
        Err(_) => session.tls_started(None),
    }
}

#[cfg(test)]
mod tests {
    //! The driver over a real loopback socket: what only shows with the reads
    //! and timeouts in place.

    use std::time::Duration;

    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
    use tokio::net::TcpListener;

    use super::*;
    use crate::config::{Config, ListenerKind};
    use crate::connection::session::{Peer, SessionConfig};

    /// Serves one session on a loopback port with the given timeouts; the
    /// event log lives in `dir`.
    async fn serve_one(dir: &std::path::Path, command_timeout: Duration) -> std::net::SocketAddr {
        serve_one_with(dir, command_timeout, Duration::from_secs(30), 500).await
    }

    /// [`serve_one`] with a DATA allowance and minimum rate.
    async fn serve_one_with(
        dir: &std::path::Path,
        command_timeout: Duration,
        data_timeout: Duration,
        min_data_rate: u64,
    ) -> std::net::SocketAddr {
        let config = Config::builtin();
        let log_config = crate::config::EventLogConfig::Embedded {
            path: dir.to_path_buf(),
            partitions: 1,
            segment_bytes: mailflow_events::log::embedded::Options::default().segment_bytes,
            content_encoding: Default::default(),
        };
        let log = crate::event_log::open(&log_config, "test").await.expect("log");
        let resolver = crate::dns::resolver(&crate::dns::DnsConfig {
            // Nothing answers there; the tests send nothing that needs DNS.
            nameservers: vec!["127.0.0.1:9".parse().expect("address")],
            ..Default::default()
        })
        .expect("resolver");
        let anti_spam = crate::verdict::AntiSpamConfig { honor_dmarc_policy: false, ..Default::default() };
        let shared = Shared {
            log,
            policy: Arc::new(InboundPolicy::new(&config)),
            tls: None,
            producer: "test".into(),
            command_timeout,
            data_timeout,
            min_data_rate,
            session_timeout: Duration::from_secs(60),
            authenticator: Arc::new(mail_auth::MessageAuthenticator(resolver)),
            hostname: "mx.test".into(),
            anti_spam: Arc::new(anti_spam),
            drain: crate::drain::Drain::new().0,
            drain_timeout: Duration::from_secs(25),
            content_encoding: Default::default(),
        };
        let session_config = Arc::new(SessionConfig::new(&config.server, "test", ListenerKind::Smtp));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move {
            let (tcp, addr) = listener.accept().await.expect("accept");
            let peer = Peer { addr, local: tcp.local_addr().ok(), ptr: None };
            let (session, first) = Session::new(session_config, Arc::clone(&shared.policy), peer);
            run(shared, session, first, tcp).await;
        });
        address
    }

    /// Reads one reply line (these tests see no multi-line replies but EHLO's,
    /// which they skip through its last line), failing after two seconds.
    async fn reply_line(reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> String {
        loop {
            let mut line = String::new();
            tokio::time::timeout(Duration::from_secs(2), reader.read_line(&mut line))
                .await
                .expect("a reply within 2 s")
                .expect("read");
            if line.as_bytes().get(3) != Some(&b'-') {
                return line;
            }
        }
    }

    /// Connects, says EHLO and pipelines MAIL, RCPT and DATA, checking each
    /// reply up to the `354`: the session now takes content.
    async fn open_data(
        address: std::net::SocketAddr,
    ) -> (BufReader<tokio::net::tcp::OwnedReadHalf>, tokio::net::tcp::OwnedWriteHalf) {
        let (read, mut write) = TcpStream::connect(address).await.expect("connect").into_split();
        let mut reader = BufReader::new(read);
        assert!(reply_line(&mut reader).await.starts_with("220 "));
        write.write_all(b"EHLO client.example\r\n").await.expect("write");
        assert!(reply_line(&mut reader).await.starts_with("250 "));
        write.write_all(b"MAIL FROM:<s@example.net>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n").await.expect("write");
        for expected in ["250 2.1.0 ", "250 2.1.5 ", "354 "] {
            let line = reply_line(&mut reader).await;
            assert!(line.starts_with(expected), "{expected}: {line:?}");
        }
        (reader, write)
    }

    /// Writes `pieces` 100 ms apart until the server replies; returns the
    /// reply and how long the drip went on. Panics if the drip ends first.
    async fn drip_until_reply<'a>(
        reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
        write: &mut tokio::net::tcp::OwnedWriteHalf,
        pieces: impl Iterator<Item = &'a [u8]>,
    ) -> (String, Duration) {
        let started = tokio::time::Instant::now();
        let drip = async {
            for piece in pieces {
                if write.write_all(piece).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let line = tokio::select! {
            line = reply_line(reader) => line,
            () = drip => panic!("the drip ended without a reply"),
        };
        (line, started.elapsed())
    }

    #[tokio::test]
    async fn commands_pipelined_behind_the_end_of_data_are_answered_without_more_input() {
        // RFC 2920: the final dot need not end a pipeline group. Before, QUIT
        // sat in the buffer until the command timeout answered 421 4.4.2.
        let dir = tempfile::tempdir().expect("dir");
        let address = serve_one(dir.path(), Duration::from_secs(30)).await;
        let (mut reader, mut write) = open_data(address).await;
        write
            .write_all(
                b"Subject: one\r\n\r\nhi\r\n.\r\nMAIL FROM:<s@example.net>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n",
            )
            .await
            .expect("write");
        for expected in ["250 2.0.0 OK <", "250 2.1.0 ", "250 2.1.5 ", "354 "] {
            let line = reply_line(&mut reader).await;
            assert!(line.starts_with(expected), "{expected}: {line:?}");
        }
        write.write_all(b"Subject: two\r\n\r\nhi\r\n.\r\nQUIT\r\n").await.expect("write");
        assert!(reply_line(&mut reader).await.starts_with("250 2.0.0 OK <"));
        assert!(reply_line(&mut reader).await.starts_with("221 2.0.0 "));
    }

    #[tokio::test]
    async fn a_command_dripped_a_byte_at_a_time_gets_the_command_timeout() {
        // Reliability notes §2.6 (slowloris): every byte arrives well within the
        // timeout, the command as a whole does not.
        let dir = tempfile::tempdir().expect("dir");
        let address = serve_one(dir.path(), Duration::from_millis(600)).await;
        let (read, mut write) = TcpStream::connect(address).await.expect("connect").into_split();
        let mut reader = BufReader::new(read);
        assert!(reply_line(&mut reader).await.starts_with("220 "));
        let bytes = b"NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP".chunks(1).cycle().take(400);
        let (line, elapsed) = drip_until_reply(&mut reader, &mut write, bytes).await;
        assert!(line.starts_with("421 4.4.2 "), "{line:?}");
        assert!(elapsed < Duration::from_millis(1500), "closed after {elapsed:?}");
    }

    #[test]
    fn the_data_budget_is_spent_by_waiting_and_earned_by_bytes_up_to_its_limit() {
        let start = tokio::time::Instant::now();
        let secs = Duration::from_secs;
        let mut deadline = DataDeadline::new(start, secs(10), 500);
        assert_eq!(deadline.at, start + secs(10));
        // 500 bytes after 1 s: spent 1 s, earned 1 s; never more than 10 s in hand.
        deadline.progress(start + secs(1), 500);
        assert_eq!(deadline.at, start + secs(11));
        deadline.progress(start + secs(2), 50_000);
        assert_eq!(deadline.at, start + secs(12), "capped at the limit from now");
        // A byte every 4 s earns 2 ms each: the budget runs out near 12 + 10 s.
        let mut now = start + secs(2);
        while now + secs(4) < deadline.at {
            now += secs(4);
            deadline.progress(now, 1);
        }
        assert!(deadline.at < start + secs(23), "{:?}", deadline.at - start);
        // Without a minimum rate, only the gap between reads counts.
        let mut gap = DataDeadline::new(start, secs(10), 0);
        gap.progress(start + secs(9), 1);
        assert_eq!(gap.at, start + secs(19));
    }

    #[tokio::test]
    async fn content_dripped_below_the_minimum_rate_gets_the_data_timeout() {
        // Reliability notes §2.6: a DATA drip below `min_data_rate` is closed
        // although every byte comes well within `data_timeout` of the last.
        let dir = tempfile::tempdir().expect("dir");
        let address = serve_one_with(dir.path(), Duration::from_secs(30), Duration::from_millis(800), 500).await;
        let (mut reader, mut write) = open_data(address).await;
        // 10 bytes every 100 ms is 100 B/s, a fifth of the minimum.
        let bytes = std::iter::repeat_n(&b"Subject: x"[..], 200);
        let (line, elapsed) = drip_until_reply(&mut reader, &mut write, bytes).await;
        assert!(line.starts_with("421 4.4.2 "), "{line:?}");
        // 0.8 s / (1 - 100/500) = 1 s, plus scheduling.
        assert!(elapsed > Duration::from_millis(800) && elapsed < Duration::from_secs(3), "closed after {elapsed:?}");
    }
}
