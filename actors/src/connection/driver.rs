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
    /// Idle limit during DATA/BDAT.
    pub data_timeout: Duration,
    /// Limit on a whole session.
    pub session_timeout: Duration,
    /// SPF and DKIM for the checks answered inside the session.
    pub authenticator: Arc<mail_auth::MessageAuthenticator>,
    /// Our hostname, for SPF.
    pub hostname: String,
    /// Inline checks: honour DMARC, deadline.
    pub anti_spam: Arc<crate::verdict::AntiSpamConfig>,
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
pub async fn run(shared: Shared, mut session: Session, first: Vec<Step>, tcp: TcpStream) {
    let mut stream = Stream::Plain(tcp);
    let deadline = tokio::time::Instant::now() + shared.session_timeout;
    let mut input = Vec::with_capacity(8192);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut steps = first;
    loop {
        match carry_out(&shared, &mut session, &mut stream, &mut input, steps).await {
            Ok(true) => {}
            Ok(false) | Err(_) => break,
        }
        let idle = if session.in_data() { shared.data_timeout } else { shared.command_timeout };
        let read_deadline = (tokio::time::Instant::now() + idle).min(deadline);
        match tokio::time::timeout_at(read_deadline, stream.read(&mut chunk)).await {
            Err(_) => {
                let _ = stream.write_all(Reply::Timeout.render().as_bytes()).await;
                break;
            }
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => input.extend_from_slice(&chunk[..n]),
        }
        steps = session.feed(&mut input);
    }
    let _ = stream.shutdown().await;
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
                    let outcome = accept_message(shared, *incoming).await;
                    next.extend(session.stored(outcome));
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

/// Runs the checks answered before the reply, then stores the message.
///
/// Anonymous mail (no AUTH, no connector) is authenticated here, in the
/// connection's process, with a deadline: anonymous IPv6 must pass SPF or DKIM
/// (spec 3.2b), and a DMARC failure for a `p=reject` domain is refused when
/// the policy is honoured. The results travel in `MessageReceived`, where the
/// verdict role takes them instead of checking again.
async fn accept_message(shared: &Shared, incoming: super::session::Incoming) -> super::session::StoreOutcome {
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
                    && checks.arc.as_ref().is_none_or(|arc| arc.result != AuthResult::Pass)
                {
                    return StoreOutcome::DmarcRejected { domain: dmarc.header_from.clone() };
                }
                inline_checks = Some(checks);
            }
            Err(_) if incoming.requires_ipv6_authentication => return StoreOutcome::Ipv6AuthenticationFailed,
            Err(_) => tracing::info!("inline checks passed their deadline; the verdict role will judge"),
        }
    }
    accept::store(shared.log.as_ref(), &shared.producer, incoming, inline_checks).await
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
