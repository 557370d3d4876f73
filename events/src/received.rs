//! Events of `mailflow.received`: what happened at the SMTP front door.
//!
//! The connection actor appends [`ReceivedEvent::MessageReceived`] once the
//! content is durable and before it answers `250`, and one event per refusal
//! (connection, recipient or whole message), so that refused mail shows up in
//! the trace too. Everything downstream starts from these facts, so they carry
//! the whole SMTP session and envelope as received: the verdict actor
//! authenticates against `session.client_ip` and the envelope, the routing
//! actor routes `recipients`, the journal reports sender, size and IPs.
//!
//! The envelope's `message_id` is the id allocated at `MAIL FROM` (the one given
//! in the `250` reply); refusals before `MAIL FROM` ([`ReceivedEvent::ConnectionRefused`],
//! or a [`ReceivedEvent::MessageRejected`] at `connect`/`helo`) use the session id.
//!
//! [`SmtpReply`] lives here and is reused by the other topics.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::content::ContentRef;
use crate::verdicts::Authentication;

/// Events of `mailflow.received` (key: message id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type")]
#[expect(
    clippy::large_enum_variant,
    reason = "events are decoded, handled and dropped one at a time; boxing would burden every producer"
)]
pub enum ReceivedEvent {
    /// A message was accepted: its content is durable and `250` was (about to be) answered.
    #[serde(rename = "MessageReceived")]
    MessageReceived(MessageReceived),
    /// One recipient was refused at `RCPT TO`; the transaction went on without it.
    #[serde(rename = "RecipientRejected")]
    RecipientRejected(RecipientRejected),
    /// The whole transaction was refused (at `MAIL`, after `DATA`, ...); nothing was accepted.
    #[serde(rename = "MessageRejected")]
    MessageRejected(MessageRejected),
    /// A connection was refused before any SMTP command (e.g. too many connections).
    #[serde(rename = "ConnectionRefused")]
    ConnectionRefused(ConnectionRefused),
}

/// An SMTP reply as sent or received, e.g. `550 5.4.1 Recipient address rejected: Access denied`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SmtpReply {
    /// Basic reply code (RFC 5321), e.g. `550`.
    pub code: u16,
    /// Enhanced status code (RFC 3463) without the reply code, e.g. `5.4.1`; absent
    /// when the peer does not send one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enhanced: Option<String>,
    /// The reply text after the codes; lines of a multi-line reply joined with `\n`.
    pub text: String,
}

impl SmtpReply {
    /// A reply with an enhanced status code.
    pub fn new(code: u16, enhanced: impl Into<String>, text: impl Into<String>) -> Self {
        Self { code, enhanced: Some(enhanced.into()), text: text.into() }
    }

    /// Whether the reply is permanent (`5xx`).
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }
}

impl std::fmt::Display for SmtpReply {
    /// One line as in a transcript or a `Diagnostic-Code`: `550 5.4.1 Recipient address rejected: Access denied`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.enhanced {
            Some(enhanced) => write!(f, "{} {} {}", self.code, enhanced, self.text),
            None => write!(f, "{} {}", self.code, self.text),
        }
    }
}

/// The SMTP session a message or refusal belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SmtpSession {
    /// Unique per connection; correlates the events of one session.
    pub session_id: Uuid,
    /// Name of the listener that accepted the connection (from `[server]`), e.g. `smtp`.
    pub listener: String,
    /// Connecting client's IP address (IPv4 dotted or IPv6 text form).
    pub client_ip: String,
    /// Connecting client's TCP port.
    pub client_port: u16,
    /// Client's host name by reverse DNS (PTR, forward-confirmed), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_hostname: Option<String>,
    /// Our own IP address the client connected to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_ip: Option<String>,
    /// Argument of the client's last `EHLO`/`HELO`; absent before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helo: Option<String>,
    /// TLS parameters once `STARTTLS` (or implicit TLS) succeeded; absent in clear text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsInfo>,
    /// SMTP AUTH identity, when the client authenticated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authenticated_as: Option<String>,
}

/// The negotiated TLS parameters of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TlsInfo {
    /// Protocol version, e.g. `TLSv1.3`.
    pub protocol: String,
    /// Cipher suite (IANA name), e.g. `TLS_AES_256_GCM_SHA384`.
    pub cipher: String,
    /// Subject of the client certificate, when the client presented one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate_subject: Option<String>,
    /// DNS names of the client certificate's subjectAltName, used for connector matching.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_certificate_names: Vec<String>,
}

impl TlsInfo {
    /// A session with no client certificate (every session the router opens,
    /// and an inbound one whose client presented none).
    pub fn new(protocol: impl Into<String>, cipher: impl Into<String>) -> Self {
        Self {
            protocol: protocol.into(),
            cipher: cipher.into(),
            client_certificate_subject: None,
            client_certificate_names: Vec::new(),
        }
    }
}

/// `BODY=` parameter of `MAIL FROM` (RFC 6152, RFC 3030).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum BodyType {
    /// No `BODY=` or `BODY=7BIT`.
    #[default]
    #[serde(rename = "7bit")]
    SevenBit,
    /// `BODY=8BITMIME`.
    #[serde(rename = "8bitmime")]
    EightBitMime,
    /// `BODY=BINARYMIME` (with `CHUNKING`).
    #[serde(rename = "binarymime")]
    BinaryMime,
}

/// `RET=` parameter of `MAIL FROM` (RFC 3461): what a DSN returns of the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DsnReturn {
    /// `RET=FULL`: the whole message.
    #[serde(rename = "full")]
    Full,
    /// `RET=HDRS`: the headers only.
    #[serde(rename = "hdrs")]
    Headers,
}

/// One value of the `NOTIFY=` parameter of `RCPT TO` (RFC 3461).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DsnNotify {
    /// `NEVER`: no DSN at all.
    #[serde(rename = "never")]
    Never,
    /// `SUCCESS`: a DSN on delivery.
    #[serde(rename = "success")]
    Success,
    /// `FAILURE`: a DSN on failure.
    #[serde(rename = "failure")]
    Failure,
    /// `DELAY`: a DSN when delayed.
    #[serde(rename = "delay")]
    Delay,
}

/// The RFC 5321 envelope of a transaction (not the event envelope).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SmtpEnvelope {
    /// Reverse path of `MAIL FROM`, without angle brackets; empty for the null sender `<>`.
    pub mail_from: String,
    /// `RET=` parameter, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dsn_return: Option<DsnReturn>,
    /// `ENVID=` parameter (xtext-decoded), when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dsn_envid: Option<String>,
    /// `BODY=` parameter.
    #[serde(default)]
    pub body: BodyType,
    /// Whether `SMTPUTF8` was given (RFC 6531).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub smtputf8: bool,
    /// `SIZE=` parameter in bytes, as declared by the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declared_size: Option<u64>,
}

/// An accepted recipient with its `RCPT TO` parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Recipient {
    /// The forward path, without angle brackets, e.g. `anna@contoso.com`.
    pub address: String,
    /// `NOTIFY=` values; empty when not given (default: failure).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<DsnNotify>,
    /// `ORCPT=` parameter as given, e.g. `rfc822;anna@contoso.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orcpt: Option<String>,
    /// Name of the accepted domain the address matched; absent when relayed to a
    /// domain that is not ours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_domain: Option<String>,
}

/// Kind of a connector (EOP `ConnectorType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ConnectorKind {
    /// A partner organisation.
    #[serde(rename = "partner")]
    Partner,
    /// The organisation's own on-premises servers.
    #[serde(rename = "on_premises")]
    OnPremises,
}

/// The inbound connector a session was matched to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct InboundConnectorMatch {
    /// Connector name as configured.
    pub name: String,
    /// Connector kind.
    pub kind: ConnectorKind,
}

/// Direction of a message relative to the organisation (the trace's `directionality`,
/// the `DIR` field of `X-Forefront-Antispam-Report`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Directionality {
    /// From outside the organisation (`DIR:INB`).
    #[serde(rename = "inbound")]
    Inbound,
    /// From the organisation to recipients outside it only (`DIR:OUT`).
    #[serde(rename = "outbound")]
    Outbound,
    /// From the organisation with recipients inside it (`DIR:INT`, `MessageDirectionality: Originating`).
    #[serde(rename = "originating")]
    Originating,
}

/// Payload of [`ReceivedEvent::MessageReceived`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MessageReceived {
    /// The session the message arrived in.
    pub session: SmtpSession,
    /// The RFC 5321 envelope.
    pub envelope: SmtpEnvelope,
    /// Accepted recipients, in `RCPT TO` order; at least one.
    pub recipients: Vec<Recipient>,
    /// Inbound connector the session matched; absent for anonymous internet mail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connector: Option<InboundConnectorMatch>,
    /// Direction of the message.
    pub directionality: Directionality,
    /// Where the content (as received, before any header is added) is stored.
    pub content: ContentRef,
    /// When the end of data was received.
    pub received_at: DateTime<Utc>,
    /// `Message-ID` header, with angle brackets, when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internet_message_id: Option<String>,
    /// `Subject` header (decoded, first 256 characters), when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Address of the `From` header (RFC 5322.From), when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_from: Option<String>,
    /// The `Auto-Submitted` header's keyword (RFC 3834), lower case, when the
    /// header is present and not `no`: `auto-replied` (out-of-office and other
    /// automatic replies), `auto-generated`, `auto-notified`. Remote domains
    /// can refuse automatic replies (spec 14.2, `AutoReplyEnabled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_submitted: Option<String>,
    /// Results of the checks run inside the session before the reply to `DATA`
    /// (anonymous IPv6, DMARC reject); the verdict actor reuses them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline_checks: Option<Authentication>,
}

/// Why the front door refused something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RejectReason {
    /// Recipient not found in an authoritative domain (DBEB, `5.4.1`).
    #[serde(rename = "unknown_recipient")]
    UnknownRecipient,
    /// Relay to a domain that is not ours without a matching connector (`5.4.1`, `5.7.1`).
    #[serde(rename = "relay_denied")]
    RelayDenied,
    /// Connector attribution failed (`5.7.51`, `5.7.64`, `5.7.68` direct send).
    #[serde(rename = "tenant_attribution")]
    TenantAttribution,
    /// Anonymous IPv6 and the domain did not opt in (`5.2.1`).
    #[serde(rename = "ipv6_not_enabled")]
    Ipv6NotEnabled,
    /// Anonymous IPv6 from an address without PTR (`4.7.25`).
    #[serde(rename = "ipv6_no_ptr")]
    Ipv6NoPtr,
    /// Anonymous IPv6 that passed neither SPF nor DKIM (`4.7.26`).
    #[serde(rename = "ipv6_auth_failed")]
    Ipv6AuthFailed,
    /// More envelope recipients than allowed (`4.5.3`).
    #[serde(rename = "too_many_recipients")]
    TooManyRecipients,
    /// Too many concurrent connections from the client (`421 4.7.0`).
    #[serde(rename = "too_many_connections")]
    TooManyConnections,
    /// The process was draining for a shutdown (`421 4.3.2`).
    #[serde(rename = "shutting_down")]
    ShuttingDown,
    /// Source IP on a block list (`5.7.513`, `5.7.606`) or throttled (`451 4.7.500`).
    #[serde(rename = "blocked_ip")]
    BlockedIp,
    /// Message larger than the maximum size (`5.3.4`).
    #[serde(rename = "message_too_large")]
    MessageTooLarge,
    /// DMARC `p=reject` honoured (`5.7.509`).
    #[serde(rename = "dmarc_rejected")]
    DmarcRejected,
    /// A mail flow rule or another configured policy refused it.
    #[serde(rename = "policy")]
    Policy,
    /// Any other reason; also what an older reader sees for a reason added later.
    #[serde(rename = "other")]
    #[serde(other)]
    Other,
}

/// The SMTP stage at which a transaction was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SmtpStage {
    /// Before or at the greeting.
    #[serde(rename = "connect")]
    Connect,
    /// In reply to `EHLO`/`HELO`.
    #[serde(rename = "helo")]
    Helo,
    /// In reply to `MAIL FROM`.
    #[serde(rename = "mail")]
    Mail,
    /// In reply to `RCPT TO`.
    #[serde(rename = "rcpt")]
    Rcpt,
    /// In reply to `DATA` (before `354`).
    #[serde(rename = "data")]
    Data,
    /// In reply to the end of data (`.` or `BDAT LAST`).
    #[serde(rename = "end_of_data")]
    EndOfData,
}

/// Payload of [`ReceivedEvent::RecipientRejected`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RecipientRejected {
    /// The session.
    pub session: SmtpSession,
    /// Reverse path of the transaction; empty for `<>`.
    pub mail_from: String,
    /// The refused forward path.
    pub address: String,
    /// The reply sent.
    pub reply: SmtpReply,
    /// Why.
    pub reason: RejectReason,
}

/// Payload of [`ReceivedEvent::MessageRejected`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct MessageRejected {
    /// The session.
    pub session: SmtpSession,
    /// Where in the dialogue.
    pub stage: SmtpStage,
    /// Reverse path, once `MAIL FROM` was given; empty string for `<>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mail_from: Option<String>,
    /// Recipients accepted so far in the transaction.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<String>,
    /// The reply sent.
    pub reply: SmtpReply,
    /// Why.
    pub reason: RejectReason,
}

/// Payload of [`ReceivedEvent::ConnectionRefused`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ConnectionRefused {
    /// Name of the listener.
    pub listener: String,
    /// Connecting client's IP address.
    pub client_ip: String,
    /// Connecting client's TCP port.
    pub client_port: u16,
    /// The reply sent before closing, e.g. `421 4.7.0 Too many connections`.
    pub reply: SmtpReply,
    /// Why.
    pub reason: RejectReason,
}

crate::envelope::tagged_event!(ReceivedEvent {
    "MessageReceived" => MessageReceived(MessageReceived),
    "RecipientRejected" => RecipientRejected(RecipientRejected),
    "MessageRejected" => MessageRejected(MessageRejected),
    "ConnectionRefused" => ConnectionRefused(ConnectionRefused),
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_displays_as_one_transcript_line() {
        let reply = SmtpReply::new(550, "5.4.1", "Recipient address rejected: Access denied");
        assert_eq!(reply.to_string(), "550 5.4.1 Recipient address rejected: Access denied");
        assert!(reply.is_permanent());
        let bare = SmtpReply { code: 421, enhanced: None, text: "Service not available".to_string() };
        assert_eq!(bare.to_string(), "421 Service not available");
        assert!(!bare.is_permanent());
    }
}
