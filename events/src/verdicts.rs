//! Events of `mailflow.verdicts`: what authentication and filtering decided.
//!
//! The verdict actor reads `MessageReceived`, authenticates the message on the
//! original client IP (after Enhanced Filtering skip listing), scores it into
//! SCL and BCL, runs the mail flow rules, and records the outcome as one
//! [`VerdictEvent::VerdictReached`] per group of recipients that share a
//! policy. Each verdict carries everything the routing actor needs to act on it
//! without re-running filtering (headers to stamp, redirects, added recipients,
//! a connector chosen by a rule), and everything the trace reports (`SFV`, `IPV`,
//! rule hits). Mail that filtering takes out of the flow is also recorded as
//! [`VerdictEvent::MessageQuarantined`] or [`VerdictEvent::MessageDeleted`].
//!
//! The authentication types are shared with `MessageReceived`, which carries the
//! results of checks already run inside the SMTP session.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::content::ContentRef;
use crate::received::{MessageReceived, SmtpReply};

/// Events of `mailflow.verdicts` (key: message id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type")]
#[expect(
    clippy::large_enum_variant,
    reason = "events are decoded, handled and dropped one at a time; boxing would burden every producer"
)]
pub enum VerdictEvent {
    /// Filtering decided what to do with the message for some of its recipients.
    #[serde(rename = "VerdictReached")]
    VerdictReached(VerdictReached),
    /// The message was put in the hosted quarantine for some of its recipients.
    #[serde(rename = "MessageQuarantined")]
    MessageQuarantined(MessageQuarantined),
    /// The message was silently dropped for some of its recipients (policy or rule `Delete`).
    #[serde(rename = "MessageDeleted")]
    MessageDeleted(MessageDeleted),
    /// An operator released a quarantined message: routing delivers it as if
    /// filtering had let it through.
    #[serde(rename = "MessageReleased")]
    MessageReleased(MessageReleased),
}

/// Result of one authentication method (RFC 8601 result keywords).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AuthResult {
    /// Authenticated.
    #[serde(rename = "pass")]
    Pass,
    /// Explicitly not authorised or not verified.
    #[serde(rename = "fail")]
    Fail,
    /// Weak failure (SPF `~all`).
    #[serde(rename = "softfail")]
    SoftFail,
    /// The domain makes no assertion (SPF `?all`).
    #[serde(rename = "neutral")]
    Neutral,
    /// Nothing to check (no record, no signature).
    #[serde(rename = "none")]
    None,
    /// A temporary error, typically DNS.
    #[serde(rename = "temperror")]
    TempError,
    /// A permanent error in the published record or signature.
    #[serde(rename = "permerror")]
    PermError,
}

/// SPF check of the `MAIL FROM` (or `HELO`) identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SpfCheck {
    /// Result.
    pub result: AuthResult,
    /// Domain checked (`smtp.mailfrom`, or the HELO name for `<>`).
    pub domain: String,
    /// IP address checked (the original client IP).
    pub client_ip: String,
}

/// Verification of one DKIM signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DkimCheck {
    /// Result.
    pub result: AuthResult,
    /// Signing domain (`d=`, `header.d`).
    pub domain: String,
    /// Selector (`s=`).
    pub selector: String,
    /// Why it failed, e.g. `body hash did not verify`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A DMARC policy (`p=`), or the disposition applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DmarcPolicy {
    /// `p=none`, or nothing applied.
    #[serde(rename = "none")]
    None,
    /// `p=quarantine`.
    #[serde(rename = "quarantine")]
    Quarantine,
    /// `p=reject`.
    #[serde(rename = "reject")]
    Reject,
}

/// DMARC evaluation of the `From` header domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DmarcCheck {
    /// Result.
    pub result: AuthResult,
    /// Domain of the `From` header (`header.from`).
    pub header_from: String,
    /// Published policy; absent when the domain has no DMARC record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<DmarcPolicy>,
    /// What was applied (after `HonorDmarcPolicy` and the anti-phish actions).
    pub disposition: DmarcPolicy,
}

/// ARC chain validation (RFC 8617).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ArcCheck {
    /// Chain validation result (`cv=`).
    pub result: AuthResult,
    /// Number of ARC sets in the chain.
    pub instances: u32,
    /// Signing domain (`d=`) of the most recent `ARC-Seal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealer: Option<String>,
    /// The chain passes and its most recent sealer is one the organisation
    /// trusts (`arc_trusted_sealers`): only then may it override a DMARC
    /// failure. A passing chain by itself proves only that it is intact.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub trusted: bool,
}

/// Reverse DNS check of the client IP (RFC 8601 `iprev`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct IprevCheck {
    /// Result.
    pub result: AuthResult,
    /// The forward-confirmed host name, on pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

/// Composite authentication result (EOP `compauth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum CompAuthResult {
    /// Authenticated.
    #[serde(rename = "pass")]
    Pass,
    /// Failed; treated as spoofed.
    #[serde(rename = "fail")]
    Fail,
    /// Passed with weak signals.
    #[serde(rename = "softpass")]
    SoftPass,
    /// Not evaluated.
    #[serde(rename = "none")]
    None,
}

/// Composite authentication: result and EOP's three-digit reason code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CompAuth {
    /// Result.
    pub result: CompAuthResult,
    /// Reason code as three digits, e.g. `000` (explicit fail), `130` (ARC pass).
    pub reason: String,
}

/// All authentication results of a message; a check not run is absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Authentication {
    /// SPF.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spf: Option<SpfCheck>,
    /// DKIM, one entry per signature, in header order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dkim: Vec<DkimCheck>,
    /// DMARC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dmarc: Option<DmarcCheck>,
    /// ARC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arc: Option<ArcCheck>,
    /// Reverse DNS of the client IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iprev: Option<IprevCheck>,
    /// Composite authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compauth: Option<CompAuth>,
}

/// The filtering verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SpamVerdict {
    /// Not spam (SCL -1, 0, 1).
    #[serde(rename = "not_spam")]
    NotSpam,
    /// Spam (SCL 5, 6).
    #[serde(rename = "spam")]
    Spam,
    /// High-confidence spam (SCL 7-9).
    #[serde(rename = "high_confidence_spam")]
    HighConfidenceSpam,
    /// Phishing.
    #[serde(rename = "phish")]
    Phish,
    /// High-confidence phishing (always quarantined or redirected).
    #[serde(rename = "high_confidence_phish")]
    HighConfidencePhish,
    /// Bulk (BCL at or above the threshold).
    #[serde(rename = "bulk")]
    Bulk,
    /// Malware found.
    #[serde(rename = "malware")]
    Malware,
}

/// What is done with the message for the verdict's recipients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PolicyAction {
    /// Deliver to the inbox.
    #[serde(rename = "deliver")]
    Deliver,
    /// Deliver to the Junk Email folder (`MoveToJmf`).
    #[serde(rename = "move_to_junk")]
    MoveToJunk,
    /// Deliver with an extra header (`AddXHeader`), see `headers_added`.
    #[serde(rename = "add_x_header")]
    AddXHeader,
    /// Deliver with a prefix on the subject (`ModifySubject`), see `subject_prefix`.
    #[serde(rename = "prepend_subject")]
    PrependSubject,
    /// Deliver to other recipients instead, see `redirect_to`.
    #[serde(rename = "redirect")]
    Redirect,
    /// Put in quarantine (a `MessageQuarantined` follows).
    #[serde(rename = "quarantine")]
    Quarantine,
    /// Drop silently (a `MessageDeleted` follows).
    #[serde(rename = "delete")]
    Delete,
    /// Refuse with an NDR to the sender, see `reject_reply`.
    #[serde(rename = "reject")]
    Reject,
}

/// A message header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Header {
    /// Field name, e.g. `X-Forefront-Antispam-Report`.
    pub name: String,
    /// Unfolded field value.
    pub value: String,
}

/// A disclaimer a mail flow rule adds to the message when it is delivered
/// (`ApplyHtmlDisclaimerText`, spec 12.4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Disclaimer {
    /// The text; HTML, whose tags are dropped in plain-text parts.
    pub text: String,
    /// At the end or the start of each body part.
    pub location: DisclaimerLocation,
    /// The text could not be inserted (signed, encrypted or encoded body) and
    /// the rule's fallback is `Wrap`: the message is sent as an attachment of
    /// a new one carrying the text.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub wrap: bool,
}

/// `ApplyHtmlDisclaimerLocation`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DisclaimerLocation {
    /// After the body (default).
    #[default]
    Append,
    /// Before the body.
    Prepend,
}

/// A mail flow rule that matched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RuleMatch {
    /// Rule name as configured.
    pub rule: String,
    /// Actions applied, by their PowerShell names, e.g. `SetSCL`, `PrependSubject`.
    pub actions: Vec<String>,
}

/// One scan by rspamd: its answer, or why there was none (the message was
/// then judged without it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RspamdScan {
    /// rspamd's action, e.g. `no action`, `add header`, `rewrite subject`, `reject`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// rspamd's score.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// The score of rspamd's `reject` action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required_score: Option<f64>,
    /// The symbols that fired, sorted, e.g. `GTUBE`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub symbols: Vec<String>,
    /// Why there is no answer: a timeout, a refused connection, an HTTP
    /// error status or an undecodable reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Payload of [`VerdictEvent::VerdictReached`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VerdictReached {
    /// The recipients this verdict applies to.
    pub recipients: Vec<String>,
    /// Authentication results.
    pub authentication: Authentication,
    /// The IP address filtering used: the connecting IP, or the first one not
    /// skipped by Enhanced Filtering.
    pub original_client_ip: String,
    /// Spam confidence level, -1 (skipped filtering) to 9.
    pub scl: i8,
    /// Bulk complaint level, 0 to 9.
    pub bcl: u8,
    /// The verdict.
    pub verdict: SpamVerdict,
    /// `SFV` value stamped, e.g. `NSPM`, `SPM`, `SKA`, `SKB`, `SKN`, `SKS`.
    pub sfv: String,
    /// `IPV` value stamped, e.g. `CAL` (IP Allow List), `NLI`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv: Option<String>,
    /// `CAT` value stamped, e.g. `NONE`, `SPM`, `HPHSH`, `BULK`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// What rspamd answered, when it is configured as an external engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rspamd: Option<RspamdScan>,
    /// The action taken.
    pub action: PolicyAction,
    /// Headers to add to the message, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers_added: Vec<Header>,
    /// Header fields of the message to remove when delivering (rule `RemoveHeader`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers_removed: Vec<String>,
    /// Text to prepend to the subject (`prepend_subject`, rule `PrependSubject`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_prefix: Option<String>,
    /// Recipients replacing `recipients` (`redirect`, rule `RedirectMessageTo`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redirect_to: Vec<String>,
    /// Recipients added by rules (`AddToRecipients`, `CopyTo`, `BlindCopyTo`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub added_recipients: Vec<String>,
    /// Outbound connector a rule routes the message through (`RouteMessageOutboundConnector`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_via_connector: Option<String>,
    /// A rule requires TLS for the message's delivery outside the mailbox
    /// store (`RouteMessageOutboundRequireTls`): never in clear text.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_tls: bool,
    /// The disclaimer a rule adds when the message is delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disclaimer: Option<Disclaimer>,
    /// The NDR reply for `reject`, e.g. `550 5.7.1 Delivery not authorized, message refused`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reject_reply: Option<SmtpReply>,
    /// Mail flow rules that matched, in priority order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules_matched: Vec<RuleMatch>,
    /// The accepted message judged (a copy of its `MessageReceived`), so that
    /// routing and the trace need no other topic. Absent in events written
    /// before routing existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received: Option<Box<MessageReceived>>,
}

/// Payload of [`VerdictEvent::MessageQuarantined`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MessageQuarantined {
    /// Recipients for whom the message is held.
    pub recipients: Vec<String>,
    /// The verdict that quarantined it.
    pub verdict: SpamVerdict,
    /// The mail flow rule whose `Quarantine` action did it, if a rule did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The held content.
    pub content: ContentRef,
    /// When the quarantined copy is deleted (retention period, default 15 days).
    pub expires_at: DateTime<Utc>,
    /// The verdict that held it, with the message, so a release can route it
    /// as if filtering had let it through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<Box<VerdictReached>>,
}

/// Payload of [`VerdictEvent::MessageDeleted`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct MessageDeleted {
    /// Recipients for whom the message was dropped.
    pub recipients: Vec<String>,
    /// The verdict that deleted it.
    pub verdict: SpamVerdict,
    /// The mail flow rule whose `DeleteMessage` action did it, if a rule did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

/// Payload of [`VerdictEvent::MessageReleased`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct MessageReleased {
    /// Recipients it is released to (those it was held for).
    pub recipients: Vec<String>,
    /// Offset of the `MessageQuarantined` released, in the same partition
    /// (the topic is keyed by message id); it holds the verdict to route.
    pub quarantined_offset: u64,
    /// Who released it.
    pub operator: String,
    /// Why, as given by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

crate::envelope::tagged_event!(VerdictEvent {
    "VerdictReached" => VerdictReached(VerdictReached),
    "MessageQuarantined" => MessageQuarantined(MessageQuarantined),
    "MessageDeleted" => MessageDeleted(MessageDeleted),
    "MessageReleased" => MessageReleased(MessageReleased),
});
