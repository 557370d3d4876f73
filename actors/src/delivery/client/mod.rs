//! The SMTP and LMTP client of the delivery role: one [`Connection`] to one
//! next hop, which carries one or more transactions.
//!
//! The caller (the delivery actor) picks the hop and the TLS policy, calls
//! [`Connection::open`], then [`Connection::send`] once per message, and
//! turns the results into events:
//!
//! - a [`HopFailure`] is about the hop or the session, not a recipient:
//!   temporary ones (`permanent: false`) put the destination into retry,
//!   permanent ones (`5xx` to the greeting or to EHLO and HELO) let the caller
//!   try the next MX host or fail every recipient;
//! - otherwise each recipient gets a [`RecipientOutcome`]: `Delivered`,
//!   `Deferred` (`4xx`, this message only) or `Failed` (`5xx`).
//!
//! Files: [`reply`] parses replies and EHLO keywords, [`wire`] reads and
//! writes with time limits, [`tls`] builds the rustls configuration per
//! policy, `session` opens the connection (greeting, EHLO, STARTTLS) and
//! `transaction` sends one message (MAIL, RCPT, DATA).
//!
//! # Texts of failures without a reply
//!
//! `HopFailure::error` starts with an EOP-style enhanced code and text, then
//! the detail in brackets, e.g. `4.4.316 Connection refused [127.0.0.1:25: ...]`:
//!
//! | what | text |
//! |---|---|
//! | connection refused | `4.4.316 Connection refused` |
//! | no connection, reply or write progress within the stage's timeout | `4.4.315 Connection timed out` |
//! | other connect errors (unreachable, ...) | `4.4.317 Cannot connect to remote server` |
//! | the peer closed or reset the connection | `4.4.2 Connection dropped` |
//! | ... after the end of data, before the reply | `4.4.2 Connection dropped after the end of data; the message may have been delivered` |
//! | TLS handshake or certificate check failed | `4.7.5 TLS negotiation failed` |
//! | TLS required, STARTTLS not offered or refused | `4.7.10 TLS required but not available` |
//! | the peer sent something that is not a reply | `4.5.0 Invalid reply from remote server` |
//!
//! A connection lost after the final `.` and before the reply leaves the
//! message's fate unknown: the peer may have accepted it. The failure is
//! temporary, so a retry may deliver a duplicate, which RFC 5321 §6.1 prefers
//! to a loss. With LMTP, recipients whose replies arrived before the loss keep
//! their outcome and the rest are deferred.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mailflow_events::delivery::QueuedRecipient;
use mailflow_events::received::{BodyType, DsnReturn, SmtpReply};
use rustls::RootCertStore;

pub mod reply;
mod session;
pub mod tls;
mod transaction;
pub mod wire;

pub use reply::Capabilities;
pub use tls::{RootsError, add_pem_roots, default_roots, pem_roots};

/// The protocol spoken to the hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// SMTP (RFC 5321): EHLO, falling back to HELO; one reply to the end of data.
    Smtp,
    /// LMTP (RFC 2033): LHLO; one reply per accepted recipient to the end of data.
    Lmtp,
}

/// TLS on outbound connections (spec 6.4).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TlsPolicy {
    /// STARTTLS when the peer offers it, certificate not checked; clear text
    /// otherwise. A failed handshake fails the attempt (temporary, destination
    /// level): the connection is unusable after it.
    #[default]
    Opportunistic,
    /// STARTTLS required, certificate not checked.
    EncryptionOnly,
    /// STARTTLS required; the chain is checked against the roots and the name
    /// against the host name connected to.
    CertificateValidation,
    /// STARTTLS required; the chain is checked and the certificate must be
    /// valid for `tls_domain` (`*.contoso.com` allowed) instead of the host name.
    DomainValidation {
        /// The name the certificate must match.
        tls_domain: String,
    },
}

impl TlsPolicy {
    /// Whether the connection must be encrypted.
    pub fn requires_tls(&self) -> bool {
        !matches!(self, TlsPolicy::Opportunistic)
    }
}

/// How long to wait at each stage; a peer that does not answer in time is a
/// temporary [`HopFailure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect. Default 30 s.
    pub connect: Duration,
    /// The `220` greeting (RFC 5321 §4.5.3.2.1). Default 5 min.
    pub greeting: Duration,
    /// The reply to EHLO/LHLO/HELO, to STARTTLS, and the TLS handshake. Default 5 min.
    pub ehlo: Duration,
    /// The reply to MAIL, and to RSET (§4.5.3.2.2). Default 5 min.
    pub mail: Duration,
    /// The reply to each RCPT (§4.5.3.2.3). Default 5 min.
    pub rcpt: Duration,
    /// The reply to DATA (§4.5.3.2.4). Default 2 min.
    pub data_init: Duration,
    /// Each write of the content, and of commands (§4.5.3.2.5). Default 3 min.
    pub data_block: Duration,
    /// The reply (LMTP: each reply) to the end of data (§4.5.3.2.6). Default 10 min.
    pub data_end: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        let minutes = |m: u64| Duration::from_secs(m * 60);
        Self {
            connect: Duration::from_secs(30),
            greeting: minutes(5),
            ehlo: minutes(5),
            mail: minutes(5),
            rcpt: minutes(5),
            data_init: minutes(2),
            data_block: minutes(3),
            data_end: minutes(10),
        }
    }
}

impl Timeouts {
    /// Every stage with the same limit (tests, and `connect` included).
    pub fn all(limit: Duration) -> Self {
        Self {
            connect: limit,
            greeting: limit,
            ehlo: limit,
            mail: limit,
            rcpt: limit,
            data_init: limit,
            data_block: limit,
            data_end: limit,
        }
    }
}

/// How to talk to hops: the same for every connection of a destination.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// SMTP or LMTP.
    pub protocol: Protocol,
    /// Our name in EHLO/LHLO/HELO.
    pub helo_name: String,
    /// When to use TLS and what to check.
    pub tls: TlsPolicy,
    /// Trust anchors for `CertificateValidation` and `DomainValidation`, e.g. [`default_roots`].
    pub roots: Arc<RootCertStore>,
    /// Limits per stage.
    pub timeouts: Timeouts,
}

/// One host of a destination (an MX host, a smart host, the mailbox store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    /// Host name, for SNI, `CertificateValidation` and the records (may be an IP literal).
    pub host: String,
    /// Address to connect to.
    pub addr: SocketAddr,
}

/// One message to send: the envelope as queued.
#[derive(Debug, Clone, Copy)]
pub struct Transaction<'a> {
    /// Reverse path; `""` for `<>`.
    pub mail_from: &'a str,
    /// Recipients, with their DSN parameters; at least one.
    pub recipients: &'a [QueuedRecipient],
    /// `RET=` to relay (only when the peer offers DSN).
    pub dsn_return: Option<DsnReturn>,
    /// `ENVID=` to relay, xtext-decoded (only when the peer offers DSN).
    pub dsn_envid: Option<&'a str>,
    /// What the content needs: `8BITMIME` needs the peer's `8BITMIME`.
    pub body: BodyType,
    /// Whether the message needs `SMTPUTF8`.
    pub smtputf8: bool,
}

/// What became of one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The hop accepted the message for it (`2xx` to the end of data).
    Delivered,
    /// A `4xx` for it or for this message: retry this message later.
    Deferred,
    /// A `5xx` for it, or a check of ours failed (size, 8-bit, SMTPUTF8): no retry.
    Failed,
}

/// One recipient's outcome and the reply that decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientOutcome {
    /// The recipient as in the transaction.
    pub address: String,
    /// Delivered, deferred or failed.
    pub outcome: Outcome,
    /// The peer's reply, or ours when we decided without asking.
    pub reply: SmtpReply,
}

/// Where in the session something happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// TCP connect.
    Connect,
    /// Waiting for the `220` greeting.
    Greeting,
    /// EHLO/LHLO, and HELO after a refused EHLO.
    Ehlo,
    /// STARTTLS and the TLS handshake.
    StartTls,
    /// MAIL FROM.
    Mail,
    /// RCPT TO.
    Rcpt,
    /// DATA, before `354`.
    Data,
    /// Writing the content and waiting for the reply to the final `.`.
    EndOfData,
    /// RSET after a transaction that did not complete.
    Rset,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Connect => "connect",
            Stage::Greeting => "greeting",
            Stage::Ehlo => "ehlo",
            Stage::StartTls => "starttls",
            Stage::Mail => "mail",
            Stage::Rcpt => "rcpt",
            Stage::Data => "data",
            Stage::EndOfData => "end_of_data",
            Stage::Rset => "rset",
        })
    }
}

/// A failure of the hop or the session, not of one recipient: the destination
/// goes into retry (temporary), or every recipient fails (permanent).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{stage}: {error}")]
pub struct HopFailure {
    /// Where it happened.
    pub stage: Stage,
    /// The peer's reply, when it answered (`421`, a `4xx`, a `5xx` greeting ...).
    pub reply: Option<SmtpReply>,
    /// What happened, for the records: the reply as a line, or one of the
    /// texts in the module documentation with the detail.
    pub error: String,
    /// `5xx` to the greeting or to EHLO and HELO: this host will not take mail.
    pub permanent: bool,
}

impl HopFailure {
    /// The peer answered `reply` at `stage`; permanent when it is a `5xx`.
    fn from_reply(stage: Stage, reply: SmtpReply) -> Self {
        Self { stage, error: reply.to_string(), permanent: reply.is_permanent(), reply: Some(reply) }
    }

    /// A temporary failure without a reply.
    fn temporary(stage: Stage, error: String) -> Self {
        Self { stage, reply: None, error, permanent: false }
    }

    /// A read or write at `stage` did not complete.
    fn wire(stage: Stage, err: wire::WireError) -> Self {
        let error = match err {
            wire::WireError::TimedOut(limit) => {
                format!("4.4.315 Connection timed out [no progress at {stage} within {}s]", limit.as_secs_f64())
            }
            wire::WireError::Closed if stage == Stage::EndOfData => {
                "4.4.2 Connection dropped after the end of data; the message may have been delivered \
                 [closed by the remote server]"
                    .to_string()
            }
            wire::WireError::Closed => "4.4.2 Connection dropped [closed by the remote server]".to_string(),
            wire::WireError::Io(io) if stage == Stage::EndOfData => {
                format!("4.4.2 Connection dropped after the end of data; the message may have been delivered [{io}]")
            }
            wire::WireError::Io(io) => format!("4.4.2 Connection dropped [{io}]"),
            wire::WireError::Garbage(what) => format!("4.5.0 Invalid reply from remote server [{what}]"),
        };
        Self::temporary(stage, error)
    }
}

/// An open session with a hop, ready for a transaction.
///
/// Invariant: between calls the peer is in its initial transaction state
/// (after EHLO, or after a completed transaction or RSET), or the connection
/// is marked unusable and every further `send` fails at once.
#[derive(Debug)]
pub struct Connection {
    wire: wire::Wire,
    hop: Hop,
    options_protocol: Protocol,
    timeouts: Timeouts,
    greeting: SmtpReply,
    capabilities: Capabilities,
    tls: Option<(String, String)>,
    usable: bool,
}

impl Connection {
    /// Connects, reads the greeting, says EHLO (LHLO; HELO after a `5xx` to
    /// EHLO), and with the policy's STARTTLS says EHLO again over TLS.
    pub async fn open(hop: &Hop, options: &ClientOptions) -> Result<Connection, HopFailure> {
        session::open(hop, options).await
    }

    /// Sends one message to every recipient of `tx`. `content` is the whole
    /// message with CRLF line ends; it is dot-stuffed and terminated here.
    /// Returns one outcome per recipient, in the order of `tx.recipients`.
    pub async fn send(&mut self, tx: &Transaction<'_>, content: &[u8]) -> Result<Vec<RecipientOutcome>, HopFailure> {
        if !self.usable {
            return Err(HopFailure::temporary(
                Stage::Mail,
                "4.4.2 Connection dropped [not usable after an earlier failure]".to_string(),
            ));
        }
        let result = transaction::send(self, tx, content).await;
        if result.is_err() {
            self.usable = false;
        }
        result
    }

    /// Says QUIT and closes; errors are ignored (the work is done).
    pub async fn quit(mut self) {
        if self.usable {
            let limit = self.timeouts.ehlo.min(Duration::from_secs(10));
            if self.wire.write(b"QUIT\r\n", limit).await.is_ok() {
                let _ = self.wire.read_reply(limit).await;
            }
        }
        self.wire.shutdown(Duration::from_secs(1)).await;
    }

    /// The hop connected to.
    pub fn hop(&self) -> &Hop {
        &self.hop
    }

    /// `(protocol, cipher)` when the session is encrypted, e.g. `("TLSv1.3", "TLS_AES_256_GCM_SHA384")`.
    pub fn tls(&self) -> Option<(String, String)> {
        self.tls.clone()
    }

    /// What the peer announced in its last EHLO/LHLO (nothing after HELO).
    pub fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    /// The peer's `220` greeting.
    pub fn greeting(&self) -> &SmtpReply {
        &self.greeting
    }

    /// The certificate chain the peer presented in the STARTTLS handshake,
    /// end entity first; empty in clear text. Connector validation checks it
    /// against a policy with [`tls::check_certificate`] after the handshake.
    pub fn peer_certificates(&self) -> Vec<rustls::pki_types::CertificateDer<'static>> {
        match self.wire.stream() {
            wire::Stream::Tls(tls) => {
                tls.get_ref().1.peer_certificates().map(|chain| chain.to_vec()).unwrap_or_default()
            }
            wire::Stream::Plain(_) => Vec::new(),
        }
    }

    /// Whether another transaction can be sent (false after a [`HopFailure`]
    /// or a failed RSET).
    pub fn is_usable(&self) -> bool {
        self.usable
    }

    /// The protocol spoken.
    pub fn protocol(&self) -> Protocol {
        self.options_protocol
    }
}
