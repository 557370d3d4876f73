//! The I/O-free SMTP protocol core: one [`Session`] per connection.
//!
//! The driver (the connection actor) reads bytes and hands them to
//! [`Session::feed`]; the session consumes complete commands and returns
//! [`Step`]s: replies to write, and effects the driver must carry out (store a
//! message durably, append a refusal, start TLS, check a password). While an
//! effect is outstanding the session takes no input; the driver reports the
//! outcome ([`Session::stored`], [`Session::tls_started`],
//! [`Session::password_checked`]) and gets the next steps. A whole session can
//! therefore be driven from a test with plain byte strings.
//!
//! One file per verb family: `hello` (EHLO/HELO/STARTTLS), `auth`, `mail`,
//! `rcpt`, `data` (DATA/BDAT/end of message), `misc` (RSET/NOOP/VRFY/HELP/QUIT);
//! `address` turns parsed envelope addresses into the ones recorded.

mod address;
mod auth;
mod data;
mod hello;
mod mail;
mod misc;
#[cfg(test)]
mod properties;
mod rcpt;
#[cfg(test)]
mod tests;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use mailflow_events::received::{
    Directionality, InboundConnectorMatch, ReceivedEvent, Recipient, RejectReason, SmtpEnvelope, SmtpSession,
    SmtpStage, TlsInfo,
};
use smtp_proto::Request;
use uuid::Uuid;

use super::body::DataReceiver;
use super::reply::Reply;
use crate::config::{ListenerKind, ServerConfig};
use crate::policy::{InboundConnector, InboundPolicy};

/// What a session is allowed and limited to, from the configuration.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Our name, in replies and `Received:`.
    pub hostname: String,
    /// Listener name, recorded in events.
    pub listener: String,
    /// Anonymous SMTP or submission.
    pub kind: ListenerKind,
    /// STARTTLS can be offered.
    pub tls_available: bool,
    /// Limits, see [`ServerConfig`].
    pub max_message_size: usize,
    /// See [`ServerConfig::max_recipients`].
    pub max_recipients: usize,
    /// See [`ServerConfig::max_line_length`].
    pub max_line_length: usize,
    /// See [`ServerConfig::max_errors`].
    pub max_errors: usize,
    /// See [`ServerConfig::max_received_headers`].
    pub max_received_headers: usize,
    /// See [`ServerConfig::max_header_size`].
    pub max_header_size: usize,
    /// See [`ServerConfig::max_header_fields`].
    pub max_header_fields: usize,
    /// See [`ServerConfig::vrfy`].
    pub vrfy: bool,
}

impl SessionConfig {
    /// The session settings of one listener.
    pub fn new(server: &ServerConfig, listener: &str, kind: ListenerKind) -> Self {
        Self {
            hostname: server.hostname.clone(),
            listener: listener.to_string(),
            kind,
            tls_available: server.tls.is_some(),
            max_message_size: server.max_message_size as usize,
            max_recipients: server.max_recipients,
            max_line_length: server.max_line_length,
            max_errors: server.max_errors,
            max_received_headers: server.max_received_headers,
            max_header_size: server.max_header_size,
            max_header_fields: server.max_header_fields,
            vrfy: server.vrfy,
        }
    }
}

/// The client as seen at connect time.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Client address.
    pub addr: SocketAddr,
    /// Our address the client connected to.
    pub local: Option<SocketAddr>,
    /// The client's PTR name: `Some(Some(name))` found, `Some(None)` none,
    /// `None` not looked up (only IPv6 clients are looked up at connect).
    pub ptr: Option<Option<String>>,
}

/// What the driver must do next.
#[derive(Debug)]
pub enum Step {
    /// Write this reply (and close after it if [`Reply::closes`]).
    Reply(Reply),
    /// Write `220 2.0.0 Ready to start TLS`, drop any buffered input, run the
    /// TLS handshake, then call [`Session::tls_started`].
    StartTls,
    /// Store the message durably (content, then `MessageReceived`), then call
    /// [`Session::stored`].
    Store(Box<Incoming>),
    /// Append this refusal to `mailflow.received` (no reply depends on it).
    Record(Box<ReceivedEvent>),
    /// Verify `password` for `login`, then call [`Session::password_checked`].
    CheckPassword {
        /// The login name (an address of the directory).
        login: String,
        /// The password given.
        password: String,
    },
    /// Close the connection.
    Close,
}

/// A complete message, ready to be stored.
#[derive(Debug)]
pub struct Incoming {
    /// The id given in the `250` reply.
    pub id: String,
    /// Session facts.
    pub session: SmtpSession,
    /// MAIL FROM and its parameters.
    pub envelope: SmtpEnvelope,
    /// Accepted recipients.
    pub recipients: Vec<Recipient>,
    /// The connector the mail came through.
    pub connector: Option<InboundConnectorMatch>,
    /// Inbound, or originating (authenticated or from on-premises).
    pub directionality: Directionality,
    /// Content with our `Received:` header prepended.
    pub content: Vec<u8>,
    /// Anonymous IPv6: SPF or DKIM must pass before `250` (spec 3.2b).
    pub requires_ipv6_authentication: bool,
    /// Neither authenticated nor through a connector: SMTP-time DMARC applies.
    pub anonymous: bool,
}

/// Outcome of storing a message, as the driver reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOutcome {
    /// Content and event are durable.
    Stored,
    /// The log failed: `451 4.3.0`.
    Failed,
    /// The log's disk is full: `452 4.3.1`.
    NoSpace,
    /// Anonymous IPv6 mail passed neither SPF nor DKIM: `450 4.7.26`.
    Ipv6AuthenticationFailed,
    /// DMARC failed for a domain publishing `p=reject`, honoured: `550 5.7.509`.
    DmarcRejected {
        /// The `From` domain.
        domain: String,
    },
}

#[derive(Debug)]
enum State {
    Command,
    Data(Box<DataReceiver>),
    Bdat {
        remaining: usize,
        last: bool,
    },
    AuthPlain,
    AuthLoginUser,
    AuthLoginPassword {
        login: String,
    },
    /// An effect is outstanding.
    Waiting,
    Closed,
}

/// One mail transaction (MAIL … end of data).
#[derive(Debug)]
struct Transaction {
    envelope: SmtpEnvelope,
    sender_domain: String,
    recipients: Vec<Recipient>,
    /// BDAT content so far (`None` once refused, the chunks are still read).
    chunks: Option<Vec<u8>>,
    chunk_problem: Option<Reply>,
}

/// One SMTP session.
#[derive(Debug)]
pub struct Session {
    config: Arc<SessionConfig>,
    policy: Arc<InboundPolicy>,
    peer: Peer,
    id: Uuid,
    state: State,
    helo: Option<String>,
    esmtp: bool,
    tls: Option<TlsInfo>,
    authenticated_as: Option<String>,
    connector: Option<InboundConnector>,
    transaction: Option<Transaction>,
    errors: usize,
    /// Inside an over-long command line, dropping bytes until its end.
    discarding_line: bool,
    /// Id of the message being stored.
    pending: Option<String>,
}

/// What [`Session::take_line`] found.
enum Line {
    Complete(Vec<u8>),
    TooLong,
    Incomplete,
}

impl Session {
    /// A new session for `peer`; the first step is the banner.
    pub fn new(config: Arc<SessionConfig>, policy: Arc<InboundPolicy>, peer: Peer) -> (Self, Vec<Step>) {
        let connector = policy.on_premises_connector(peer.addr.ip()).cloned();
        let session = Self {
            config,
            policy,
            peer,
            id: Uuid::now_v7(),
            state: State::Command,
            helo: None,
            esmtp: false,
            tls: None,
            authenticated_as: None,
            connector,
            transaction: None,
            errors: 0,
            discarding_line: false,
            pending: None,
        };
        let greeting = Reply::Greeting { hostname: session.config.hostname.clone() };
        (session, vec![Step::Reply(greeting)])
    }

    /// The session's id (the key of its refusal events).
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// Whether the session is receiving message content (the driver applies
    /// the data timeout instead of the command timeout).
    pub fn in_data(&self) -> bool {
        matches!(self.state, State::Data(_) | State::Bdat { .. })
    }

    /// Whether a mail transaction is open: `MAIL` accepted and the message
    /// not yet stored, refused or reset. A drain lets such a session finish.
    pub fn in_transaction(&self) -> bool {
        self.transaction.is_some() || self.pending.is_some() || self.in_data()
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Consumes what it can of `input`, leaving an incomplete command (or
    /// everything, while an effect is outstanding) in place.
    pub fn feed(&mut self, input: &mut Vec<u8>) -> Vec<Step> {
        let mut steps = Vec::new();
        loop {
            match &mut self.state {
                State::Closed | State::Waiting => break,
                State::Data(receiver) => {
                    if input.is_empty() || !receiver.ingest(input) {
                        break;
                    }
                    let State::Data(receiver) = std::mem::replace(&mut self.state, State::Command) else {
                        unreachable!("matched above")
                    };
                    steps.extend(self.end_of_data(receiver.finish()));
                }
                State::Bdat { .. } => {
                    if input.is_empty() {
                        break;
                    }
                    steps.extend(self.bdat_bytes(input));
                }
                _ => match self.take_line(input) {
                    Line::Incomplete => break,
                    Line::TooLong => steps.extend(self.error(Reply::LineTooLong)),
                    Line::Complete(line) => {
                        let more = self.line(&line, input);
                        steps.extend(more);
                    }
                },
            }
            if self.close_after(&mut steps) {
                break;
            }
        }
        steps
    }

    /// Ends the session when the last reply says the connection closes
    /// (`421 4.7.0` after too many errors, `221`, …): appends [`Step::Close`].
    /// Every path that returns replies goes through here, the effects'
    /// outcomes too, or a closing reply would leave the connection open.
    fn close_after(&mut self, steps: &mut Vec<Step>) -> bool {
        if matches!(steps.last(), Some(Step::Reply(reply)) if reply.closes()) {
            self.state = State::Closed;
            steps.push(Step::Close);
            return true;
        }
        false
    }

    /// Splits the next line off `input`, enforcing the line length limit
    /// (an over-long line is discarded up to its end and answered once).
    fn take_line(&mut self, input: &mut Vec<u8>) -> Line {
        match memchr::memchr(b'\n', input) {
            Some(end) => {
                let line: Vec<u8> = input.drain(..=end).collect();
                if std::mem::take(&mut self.discarding_line) || line.len() > self.config.max_line_length {
                    Line::TooLong
                } else {
                    Line::Complete(line)
                }
            }
            None if input.len() >= self.config.max_line_length || self.discarding_line => {
                // Memory stays bounded: the line's bytes are dropped as they come.
                input.clear();
                self.discarding_line = true;
                Line::Incomplete
            }
            None => Line::Incomplete,
        }
    }

    /// Handles one command line (or an AUTH continuation line).
    fn line(&mut self, line: &[u8], input: &mut Vec<u8>) -> Vec<Step> {
        let bare = line.len() < 2 || line[line.len() - 2] != b'\r' || line[..line.len() - 2].contains(&b'\r');
        if bare || line.contains(&0) {
            return self.error(Reply::SyntaxError("bare CR or LF, or NUL, in a command".into()));
        }
        match std::mem::replace(&mut self.state, State::Command) {
            State::AuthPlain => return self.auth_plain_response(line),
            State::AuthLoginUser => return self.auth_login_user(line),
            State::AuthLoginPassword { login } => return self.auth_login_password(login, line),
            other => self.state = other,
        }
        let request = match parse_request(line) {
            Ok(request) => request,
            Err(err) => return self.error(parse_error(err)),
        };
        // RFC 2920: only a client that was offered PIPELINING (in the EHLO
        // reply) may send a command before the reply to the one before; any
        // other did not wait (reliability notes §2.2, Postfix's
        // `smtpd_forbid_unauth_pipelining`).
        if !self.esmtp && !input.is_empty() {
            return vec![Step::Reply(Reply::SynchronizationError)];
        }
        match request {
            Request::Ehlo { host } => self.ehlo(host, input),
            Request::Helo { host } => self.helo(host, input),
            Request::StartTls => self.starttls(input),
            Request::Auth { mechanism, initial_response } => self.auth(mechanism, initial_response),
            // smtp-proto reads `<postmaster>` as the null path `<>`. As a
            // recipient it is the postmaster mailbox every server must accept
            // (RFC 5321 §4.1.1.3); as a reverse path it is not a mailbox at all.
            Request::Mail { from } if from.address.is_empty() && names_postmaster(line) => self.error(Reply::BadSender),
            Request::Mail { from } => self.mail(from),
            Request::Rcpt { mut to } if to.address.is_empty() && names_postmaster(line) => {
                to.address = self.policy.postmaster().to_string();
                self.rcpt(to)
            }
            Request::Rcpt { to } => self.rcpt(to),
            Request::Data => self.data(input),
            Request::Bdat { chunk_size, is_last } => self.bdat(chunk_size, is_last),
            Request::Rset => self.rset(),
            Request::Noop { .. } => vec![Step::Reply(Reply::Ok)],
            Request::Vrfy { value } => self.vrfy(&value),
            Request::Help { .. } => vec![Step::Reply(Reply::Help)],
            Request::Quit => vec![Step::Reply(Reply::Closing)],
            Request::Lhlo { .. }
            | Request::Expn { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. } => self.error(Reply::NotImplemented),
        }
    }

    /// A failed command: counts toward `max_errors`, closing past it.
    fn error(&mut self, reply: Reply) -> Vec<Step> {
        self.errors += 1;
        if self.errors >= self.config.max_errors {
            return vec![Step::Reply(reply), Step::Reply(Reply::TooManyErrors)];
        }
        vec![Step::Reply(reply)]
    }

    /// Session facts as recorded in events.
    fn session_event(&self) -> SmtpSession {
        SmtpSession {
            session_id: self.id,
            listener: self.config.listener.clone(),
            client_ip: self.peer.addr.ip().to_string(),
            client_port: self.peer.addr.port(),
            client_hostname: self.peer.ptr.clone().flatten(),
            server_ip: self.peer.local.map(|a| a.ip().to_string()),
            helo: self.helo.clone(),
            tls: self.tls.clone(),
            authenticated_as: self.authenticated_as.clone(),
        }
    }

    /// A refusal to record, for the message trace.
    fn record_rejection(&self, stage: SmtpStage, reply: &Reply, reason: RejectReason) -> Step {
        let transaction = self.transaction.as_ref();
        Step::Record(Box::new(ReceivedEvent::MessageRejected(mailflow_events::received::MessageRejected {
            session: self.session_event(),
            stage,
            mail_from: transaction.map(|t| t.envelope.mail_from.clone()),
            recipients: transaction
                .map(|t| t.recipients.iter().map(|r| r.address.clone()).collect())
                .unwrap_or_default(),
            reply: reply.to_event(),
            reason,
        })))
    }

    /// What the policy needs to know of this client, for a sender domain.
    fn client_context<'a>(&'a self, sender_domain: &'a str) -> crate::policy::ClientContext<'a> {
        crate::policy::ClientContext {
            ip: self.client_ip(),
            tls: self.tls.is_some(),
            authenticated_as: self.authenticated_as.as_deref(),
            connector: self.connector.as_ref(),
            has_ptr: self.peer.ptr.as_ref().map(Option::is_some),
            sender_domain,
            certificate_names: self.certificate_names(),
        }
    }

    /// Names of the verified client certificate, empty without one.
    fn certificate_names(&self) -> &[String] {
        self.tls.as_ref().map_or(&[], |tls| tls.client_certificate_names.as_slice())
    }

    fn client_ip(&self) -> IpAddr {
        self.peer.addr.ip()
    }
}

/// Parses a command line; a MAIL or RCPT path with an address literal as its
/// domain, which smtp-proto refuses, is parsed with the literal masked.
fn parse_request(line: &[u8]) -> Result<Request<String>, smtp_proto::Error> {
    let err = match Request::parse(&mut line.iter()) {
        Ok(request) => return Ok(request.into_owned()),
        Err(err @ (smtp_proto::Error::InvalidSenderAddress | smtp_proto::Error::InvalidRecipientAddress)) => err,
        Err(err) => return Err(err),
    };
    let Some((masked, literal)) = address::mask_address_literal(line) else { return Err(err) };
    Ok(match Request::parse(&mut masked.iter())?.into_owned() {
        Request::Mail { mut from } => {
            address::restore_literal(&mut from.address, &literal);
            Request::Mail { from }
        }
        Request::Rcpt { mut to } => {
            address::restore_literal(&mut to.address, &literal);
            Request::Rcpt { to }
        }
        _ => return Err(err),
    })
}

/// Whether the path of a MAIL or RCPT line is `<postmaster>` (any case).
fn names_postmaster(line: &[u8]) -> bool {
    let Some(open) = memchr::memchr(b'<', line) else { return false };
    let path = &line[open + 1..];
    memchr::memchr(b'>', path).is_some_and(|close| path[..close].eq_ignore_ascii_case(b"postmaster"))
}

/// Maps a parser error to its reply.
fn parse_error(err: smtp_proto::Error) -> Reply {
    match err {
        smtp_proto::Error::UnknownCommand => Reply::UnknownCommand,
        smtp_proto::Error::InvalidSenderAddress => Reply::BadSender,
        smtp_proto::Error::InvalidRecipientAddress => Reply::BadRecipient,
        smtp_proto::Error::SyntaxError { syntax } => Reply::SyntaxError(syntax.to_string()),
        smtp_proto::Error::InvalidParameter { param } => Reply::SyntaxError(format!("invalid parameter {param}")),
        smtp_proto::Error::UnsupportedParameter { param } => Reply::UnsupportedParameter(sanitize(&param)),
        smtp_proto::Error::NeedsMoreData { .. } | smtp_proto::Error::ResponseTooLong => {
            Reply::SyntaxError("incomplete command".into())
        }
        smtp_proto::Error::InvalidResponse { .. } => Reply::UnknownCommand,
    }
}

/// Client-provided text made safe for replies and headers: printable ASCII,
/// no parentheses or angle brackets, at most 255 bytes.
pub fn sanitize(text: &str) -> String {
    text.chars()
        .take(255)
        .map(|c| if c.is_ascii_graphic() && !matches!(c, '(' | ')' | '<' | '>' | '\\' | '"' | ';') { c } else { '?' })
        .collect()
}
