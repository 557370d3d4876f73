//! Events of `mailflow.delivery`: routed deliveries and their outcomes.
//!
//! The routing actor appends one [`DeliveryEvent::Queued`] per (message,
//! destination); the delivery actor appends each attempt's outcome to the same
//! partition, and operators' queue actions go there too. The topic is keyed by
//! [`Destination::key`], so one destination lives in one partition and its
//! queue is `fold(apply, events)` of that partition, in log order (which is the
//! order received: FIFO redelivery falls out of it).
//!
//! Several destinations share a partition and a message may have several
//! destinations, so every event names its destination; the envelope's
//! `message_id` names the message. Each event records the times it decided
//! (`next_attempt_at`, `expires_at`), so replay never recomputes a decision.
//! Attempts count from 1.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::content::ContentRef;
use crate::received::{BodyType, DsnNotify, DsnReturn, SmtpReply};
use crate::verdicts::Header;

/// Events of `mailflow.delivery` (key: [`Destination::key`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type")]
pub enum DeliveryEvent {
    /// A message was routed to a destination and waits in its queue.
    #[serde(rename = "Queued")]
    Queued(Queued),
    /// An attempt did not succeed and will be retried at `next_attempt_at`.
    #[serde(rename = "Deferred")]
    Deferred(Deferred),
    /// The next hop accepted the message for some recipients.
    #[serde(rename = "Delivered")]
    Delivered(Delivered),
    /// The next hop refused some recipients permanently (`5xx`); an NDR follows.
    #[serde(rename = "Failed")]
    Failed(Failed),
    /// The message was not delivered before it expired; an NDR follows.
    #[serde(rename = "Expired")]
    Expired(Expired),
    /// An operator asked for an attempt now (`mailflow queue retry`).
    #[serde(rename = "RetryRequested")]
    RetryRequested(OperatorAction),
    /// An operator suspended delivery.
    #[serde(rename = "Suspended")]
    Suspended(OperatorAction),
    /// An operator resumed suspended delivery.
    #[serde(rename = "Resumed")]
    Resumed(OperatorAction),
    /// An operator removed messages from the queue.
    #[serde(rename = "Deleted")]
    Deleted(OperatorDeleted),
}

impl DeliveryEvent {
    /// The destination the event is about.
    pub fn destination(&self) -> &Destination {
        match self {
            Self::Queued(e) => &e.destination,
            Self::Deferred(e) => &e.destination,
            Self::Delivered(e) => &e.destination,
            Self::Failed(e) => &e.destination,
            Self::Expired(e) => &e.destination,
            Self::RetryRequested(e) | Self::Suspended(e) | Self::Resumed(e) => &e.destination,
            Self::Deleted(e) => &e.destination,
        }
    }
}

/// Kind of next hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum DestinationKind {
    /// Our mailbox store (Maildir or LMTP); `name` is the store's name.
    #[serde(rename = "mailbox_store")]
    MailboxStore,
    /// The organisation's on-premises servers; `name` is the outbound connector.
    #[serde(rename = "on_premises")]
    OnPremises,
    /// A partner organisation; `name` is the outbound connector.
    #[serde(rename = "partner")]
    Partner,
    /// The internet by MX; `name` is the recipient domain.
    #[serde(rename = "internet")]
    Internet,
    /// A smart host of an outbound connector; `name` is the connector.
    #[serde(rename = "smart_host")]
    SmartHost,
}

impl DestinationKind {
    /// The wire name, as used in [`Destination::key`].
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MailboxStore => "mailbox_store",
            Self::OnPremises => "on_premises",
            Self::Partner => "partner",
            Self::Internet => "internet",
            Self::SmartHost => "smart_host",
        }
    }
}

/// Where a queue delivers to. One queue per destination.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct Destination {
    /// Kind of next hop.
    pub kind: DestinationKind,
    /// Connector name, recipient domain or store name, see [`DestinationKind`].
    pub name: String,
    /// Host or IP chosen when routed (smart host, resolved MX), when fixed at routing time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_hop: Option<String>,
}

impl Destination {
    /// The partition key of the destination's events: `<kind>:<name>` with the
    /// name in lower case, e.g. `internet:example.com`. `next_hop` is not part of
    /// it: one destination is one queue whichever host answers.
    pub fn key(&self) -> String {
        format!("{}:{}", self.kind.as_str(), self.name.to_ascii_lowercase())
    }
}

/// Why the routing actor chose the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RouteReason {
    /// Recipient of an authoritative accepted domain, found in the directory.
    #[serde(rename = "accepted_domain")]
    AcceptedDomain,
    /// Recipient of an internal-relay domain not found here: relayed on-premises.
    #[serde(rename = "internal_relay")]
    InternalRelay,
    /// Recipient domain in an outbound connector's scope.
    #[serde(rename = "outbound_connector")]
    OutboundConnector,
    /// A mail flow rule chose the connector (`RouteMessageOutboundConnector`).
    #[serde(rename = "transport_rule")]
    TransportRule,
    /// No connector applies: the recipient domain's MX.
    #[serde(rename = "mx")]
    Mx,
    /// A redirect (policy or rule) replaced the recipient.
    #[serde(rename = "redirect")]
    Redirect,
    /// A DSN or NDR generated by the router.
    #[serde(rename = "dsn")]
    Dsn,
    /// Any other reason; also what an older reader sees for a reason added later.
    #[serde(rename = "other")]
    #[serde(other)]
    Other,
}

/// A recipient to deliver to, with the DSN parameters to pass on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct QueuedRecipient {
    /// The address to deliver to (after redirects and address resolution).
    pub address: String,
    /// `NOTIFY=` values to relay; empty when not given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<DsnNotify>,
    /// `ORCPT=` to relay, e.g. `rfc822;anna@contoso.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orcpt: Option<String>,
}

/// Payload of [`DeliveryEvent::Queued`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Queued {
    /// Where to deliver.
    pub destination: Destination,
    /// Why this destination.
    pub route: RouteReason,
    /// Recipients for this destination; at least one.
    pub recipients: Vec<QueuedRecipient>,
    /// Reverse path for `MAIL FROM`; empty for `<>`.
    pub mail_from: String,
    /// `RET=` to relay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dsn_return: Option<DsnReturn>,
    /// `ENVID=` to relay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dsn_envid: Option<String>,
    /// `BODY=` the next hop must support.
    #[serde(default)]
    pub body: BodyType,
    /// Whether the next hop must support `SMTPUTF8`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub smtputf8: bool,
    /// Whether delivery must use TLS (connector setting or rule `RouteMessageOutboundRequireTls`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_tls: bool,
    /// A rule's disclaimer, applied when the copy is rendered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disclaimer: Option<crate::verdicts::Disclaimer>,
    /// The content to send.
    pub content: ContentRef,
    /// Headers sent before the content (`Received:`, verdict headers), in order,
    /// so the stored content need not be rewritten.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prepend_headers: Vec<Header>,
    /// Header fields to leave out when delivering (rule `RemoveHeader`), by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_headers: Vec<String>,
    /// Text to prepend to the `Subject:` when delivering (policy or rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_prefix: Option<String>,
    /// Mailbox folder to deliver into, e.g. `Junk` for junk verdicts (mailbox store only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder: Option<String>,
    /// When the router accepted the message; orders the queue and starts expiry.
    #[serde(deserialize_with = "crate::envelope::rfc3339")]
    pub received_at: DateTime<Utc>,
    /// When the message expires if not delivered (`received_at` + `message_expiration`).
    #[serde(deserialize_with = "crate::envelope::rfc3339")]
    pub expires_at: DateTime<Utc>,
}

/// Whether a deferral holds the whole destination or one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Scope {
    /// The whole destination (unreachable, `421`, `4xx` to greeting/EHLO/MAIL):
    /// its whole queue waits until `next_attempt_at`.
    #[serde(rename = "destination")]
    Destination,
    /// This message only (`4xx` to RCPT or DATA); the queue goes on.
    #[serde(rename = "message")]
    Message,
}

/// Payload of [`DeliveryEvent::Deferred`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Deferred {
    /// The destination.
    pub destination: Destination,
    /// Number of the attempt that was deferred, from 1.
    pub attempt: u32,
    /// Recipients deferred.
    pub recipients: Vec<String>,
    /// What is held: the destination or this message.
    pub scope: Scope,
    /// The temporary reply, when the next hop answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<SmtpReply>,
    /// The connection or TLS error, when it did not, e.g. `connection refused`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Host name tried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_host: Option<String>,
    /// IP address tried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_ip: Option<String>,
    /// When the next attempt is due, decided now from the retry schedule.
    #[serde(deserialize_with = "crate::envelope::rfc3339")]
    pub next_attempt_at: DateTime<Utc>,
    /// Message id of the delay notice (`NOTIFY=DELAY`, RFC 3464 `Action:
    /// delayed`) sent to the sender at this deferral; a message gets one at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_notice: Option<String>,
}

/// Payload of [`DeliveryEvent::Delivered`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Delivered {
    /// The destination.
    pub destination: Destination,
    /// Number of the successful attempt, from 1.
    pub attempt: u32,
    /// Recipients delivered.
    pub recipients: Vec<String>,
    /// Host name delivered to; absent for a local Maildir store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_host: Option<String>,
    /// IP address delivered to; absent for a local Maildir store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_ip: Option<String>,
    /// The next hop's reply to the end of data (for Maildir, the store's own `250`).
    pub reply: SmtpReply,
    /// The TLS session the message went over (protocol and cipher suite);
    /// absent when it went in clear text or into a local Maildir store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::received::TlsInfo>,
}

/// Payload of [`DeliveryEvent::Failed`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Failed {
    /// The destination.
    pub destination: Destination,
    /// Number of the failed attempt, from 1.
    pub attempt: u32,
    /// Recipients failed.
    pub recipients: Vec<String>,
    /// The permanent reply, received or (when no hop could be found) our own.
    pub reply: SmtpReply,
    /// Host name that refused, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_host: Option<String>,
    /// IP address that refused, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_ip: Option<String>,
    /// Message id of the NDR sent to the sender; absent for `<>` or `NOTIFY=NEVER`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ndr_message_id: Option<String>,
    /// Reverse path of the message, set when no `Queued` precedes this event
    /// (recipients that routing could not route, `attempt` 0), so that the
    /// journal can name the sender; empty for `<>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mail_from: Option<String>,
    /// Size of the message in bytes, set with `mail_from`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// Payload of [`DeliveryEvent::Expired`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Expired {
    /// The destination.
    pub destination: Destination,
    /// Number of attempts made.
    pub attempts: u32,
    /// Recipients not delivered.
    pub recipients: Vec<String>,
    /// Our reply reported in the NDR: `550 4.4.7 QUEUE.Expired; message expired`.
    pub reply: SmtpReply,
    /// The last temporary reply received, for the NDR's diagnostic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reply: Option<SmtpReply>,
    /// Message id of the NDR sent to the sender; absent for `<>` or `NOTIFY=NEVER`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ndr_message_id: Option<String>,
}

/// Payload of an operator's queue action. With scope `destination` the action
/// applies to the whole queue and the envelope's `message_id` is empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OperatorAction {
    /// The destination.
    pub destination: Destination,
    /// The whole queue or one message.
    pub scope: Scope,
    /// Who did it, e.g. the admin API user.
    pub operator: String,
    /// Why, as given by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Payload of [`DeliveryEvent::Deleted`]; same scope rule as [`OperatorAction`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OperatorDeleted {
    /// The destination.
    pub destination: Destination,
    /// The whole queue or one message.
    pub scope: Scope,
    /// Who did it.
    pub operator: String,
    /// Why, as given by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Whether the senders get an NDR (like `Remove-Message -WithNDR`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub with_ndr: bool,
}

crate::envelope::tagged_event!(DeliveryEvent {
    "Queued" => Queued(Queued),
    "Deferred" => Deferred(Deferred),
    "Delivered" => Delivered(Delivered),
    "Failed" => Failed(Failed),
    "Expired" => Expired(Expired),
    "RetryRequested" => RetryRequested(OperatorAction),
    "Suspended" => Suspended(OperatorAction),
    "Resumed" => Resumed(OperatorAction),
    "Deleted" => Deleted(OperatorDeleted),
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_partition_key_is_kind_and_lower_case_name_without_the_next_hop() {
        let destination = Destination {
            kind: DestinationKind::Internet,
            name: "Example.COM".to_string(),
            next_hop: Some("mx1.example.com".to_string()),
        };
        assert_eq!(destination.key(), "internet:example.com");
        let store = Destination { kind: DestinationKind::MailboxStore, name: "maildir".to_string(), next_hop: None };
        assert_eq!(store.key(), "mailbox_store:maildir");
    }

    #[test]
    fn the_key_uses_the_wire_name_of_the_kind() {
        for kind in [
            DestinationKind::MailboxStore,
            DestinationKind::OnPremises,
            DestinationKind::Partner,
            DestinationKind::Internet,
            DestinationKind::SmartHost,
        ] {
            let wire = serde_json::to_value(kind).expect("kinds serialise");
            assert_eq!(wire.as_str(), Some(kind.as_str()));
        }
    }
}
