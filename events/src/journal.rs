//! Events of `mailflow.journal`: the public, versioned record of what happened
//! to each message, one record per message-trace event.
//!
//! This is the topic consumers outside the router read (archiving, audit, the
//! trace API), so it is self-contained: each record repeats the message's
//! sender, recipients, subject, size and IPs ([`TraceRecord`], the columns of
//! EOP's extended message trace report) and adds what is particular to its
//! event. A reader never has to join with the internal topics.
//!
//! Variants mirror EOP's trace event ids (`RECEIVE`, `DEFER`, `SEND`, `DELIVER`,
//! `FAIL`, `EXPAND`, `REDIRECT`, `AGENTINFO`, `DSN`), see
//! [`JournalEvent::trace_event_id`]; their wire names are past-tense like every
//! other topic's. One is mailflow's own: `RELEASE`, an operator's release of a
//! quarantined message, for which EOP's trace has no event id (spec 15.3). The
//! envelope's `message_id` is the router's message id (the trace's
//! `network_message_id`).
//!
//! The router's journal projector (`actors/src/journal/`) writes these records
//! from the internal topics. A source event is sometimes consumed twice (after
//! a crash, before its offset was committed), so each record carries a
//! deterministic [`TraceRecord::record_id`], `<source topic>/<partition>/<offset>/<index>`,
//! and its envelope's `event_id` is derived from it ([`event_id_of`]): a
//! record written again has the same `event_id`, and consumers dedupe on it.
//!
//! Refusals at the SMTP door (a recipient, a whole transaction or a
//! connection refused) are [`JournalEvent::Failed`] records with `attempts: 0`;
//! their status is `failed` for a permanent (`5xx`) reply and `none` for a
//! temporary one, which the client retries.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::content::ContentRef;
use crate::received::{Directionality, SmtpReply};
use crate::verdicts::{PolicyAction, SpamVerdict};

/// Events of `mailflow.journal` (key: message id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type")]
pub enum JournalEvent {
    /// The router accepted the message (`RECEIVE`).
    #[serde(rename = "Received")]
    Received(Received),
    /// Delivery was postponed and will be retried (`DEFER`).
    #[serde(rename = "Deferred")]
    Deferred(Attempted),
    /// The message was handed to a next hop outside the router (`SEND`).
    #[serde(rename = "Sent")]
    Sent(Attempted),
    /// The message was delivered to a mailbox of the organisation (`DELIVER`).
    #[serde(rename = "Delivered")]
    Delivered(Attempted),
    /// Delivery failed for good, or the message expired (`FAIL`).
    #[serde(rename = "Failed")]
    Failed(Failed),
    /// A group was expanded into its members (`EXPAND`).
    #[serde(rename = "Expanded")]
    Expanded(Expanded),
    /// Recipients were replaced by others (`REDIRECT`).
    #[serde(rename = "Redirected")]
    Redirected(Redirected),
    /// Filtering or a mail flow rule acted on the message (`AGENTINFO`).
    #[serde(rename = "Filtered")]
    Filtered(Filtered),
    /// A delivery status notification about the message was generated (`DSN`).
    #[serde(rename = "DsnGenerated")]
    DsnGenerated(DsnGenerated),
    /// An operator released the message from quarantine; it is delivered as
    /// if filtering had let it through (`RELEASE`, mailflow's own event id).
    #[serde(rename = "Released")]
    Released(Released),
}

impl JournalEvent {
    /// The EOP message-trace event id of this record, e.g. `RECEIVE`.
    pub fn trace_event_id(&self) -> &'static str {
        match self {
            Self::Received(_) => "RECEIVE",
            Self::Deferred(_) => "DEFER",
            Self::Sent(_) => "SEND",
            Self::Delivered(_) => "DELIVER",
            Self::Failed(_) => "FAIL",
            Self::Expanded(_) => "EXPAND",
            Self::Redirected(_) => "REDIRECT",
            Self::Filtered(_) => "AGENTINFO",
            Self::DsnGenerated(_) => "DSN",
            Self::Released(_) => "RELEASE",
        }
    }

    /// The columns every record has.
    pub fn record(&self) -> &TraceRecord {
        match self {
            Self::Received(e) => &e.record,
            Self::Deferred(e) | Self::Sent(e) | Self::Delivered(e) => &e.record,
            Self::Failed(e) => &e.record,
            Self::Expanded(e) => &e.record,
            Self::Redirected(e) => &e.record,
            Self::Filtered(e) => &e.record,
            Self::DsnGenerated(e) => &e.record,
            Self::Released(e) => &e.record,
        }
    }

    /// The columns every record has, to fill in.
    pub fn record_mut(&mut self) -> &mut TraceRecord {
        match self {
            Self::Received(e) => &mut e.record,
            Self::Deferred(e) | Self::Sent(e) | Self::Delivered(e) => &mut e.record,
            Self::Failed(e) => &mut e.record,
            Self::Expanded(e) => &mut e.record,
            Self::Redirected(e) => &mut e.record,
            Self::Filtered(e) => &mut e.record,
            Self::DsnGenerated(e) => &mut e.record,
            Self::Released(e) => &mut e.record,
        }
    }
}

/// Delivery status of the message for the record's recipients, after this event
/// (message trace `Status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TraceStatus {
    /// Delivered.
    #[serde(rename = "delivered")]
    Delivered,
    /// Attempted and failed.
    #[serde(rename = "failed")]
    Failed,
    /// Being delivered, or deferred and retrying.
    #[serde(rename = "pending")]
    Pending,
    /// Marked as spam and delivered to Junk, not quarantined.
    #[serde(rename = "filtered_as_spam")]
    FilteredAsSpam,
    /// Held in quarantine.
    #[serde(rename = "quarantined")]
    Quarantined,
    /// A group was expanded; the group itself gets no delivery.
    #[serde(rename = "expanded")]
    Expanded,
    /// Not known yet.
    #[serde(rename = "getting_status")]
    GettingStatus,
    /// No delivery status: redirected to other recipients, or dropped.
    #[serde(rename = "none")]
    None,
}

/// The columns every journal record has (extended message trace report).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TraceRecord {
    /// Status after this event.
    pub status: TraceStatus,
    /// Envelope sender (`return_path`); empty for `<>`.
    pub sender: String,
    /// Recipients this record is about.
    pub recipients: Vec<String>,
    /// `Subject` header (first 256 characters), when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// `Message-ID` header with angle brackets, when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internet_message_id: Option<String>,
    /// Size of the message in bytes (`total_bytes`).
    pub size: u64,
    /// Direction of the message.
    pub directionality: Directionality,
    /// IP address of the sending side of this event's hop (`client_ip`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<String>,
    /// Host name of the sending side (`client_hostname`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_hostname: Option<String>,
    /// IP address of the receiving side of this event's hop (`server_ip`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_ip: Option<String>,
    /// Host name of the receiving side (`server_hostname`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_hostname: Option<String>,
    /// Connector involved, inbound or outbound (`connector_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connector: Option<String>,
    /// Agent data in EOP's format, e.g. `S:SFA=SUM|SFV=SPM|SCL=9|...` (`custom_data`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_data: Option<String>,
    /// Human-readable description of the event, e.g. the reply received.
    pub detail: String,
    /// Where the record comes from, `<source topic>/<partition>/<offset>/<index>`,
    /// e.g. `mailflow.delivery/3/1234/0`: the same for every copy of a record
    /// written again after a crash. Absent in records written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_id: Option<String>,
}

/// Payload of [`JournalEvent::Received`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Received {
    /// Common columns.
    #[serde(flatten)]
    pub record: TraceRecord,
    /// When the router accepted the message (`origin_timestamp`).
    pub received_at: DateTime<Utc>,
    /// Original client IP after Enhanced Filtering, when it differs from `client_ip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_client_ip: Option<String>,
    /// Where the message content, as received, is stored on `mailflow.content`
    /// (read it with `mailflow_events::content::load`). Absent in records
    /// written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<ContentRef>,
}

/// Payload of [`JournalEvent::Deferred`], [`JournalEvent::Sent`] and [`JournalEvent::Delivered`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Attempted {
    /// Common columns.
    #[serde(flatten)]
    pub record: TraceRecord,
    /// Number of the delivery attempt, from 1.
    pub attempt: u32,
    /// The next hop's reply, when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<SmtpReply>,
    /// For `Deferred`: when the next attempt is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// Payload of [`JournalEvent::Failed`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Failed {
    /// Common columns.
    #[serde(flatten)]
    pub record: TraceRecord,
    /// The reply that failed it (a next hop's `5xx`, or ours such as `550 4.4.7 QUEUE.Expired; message expired`).
    pub reply: SmtpReply,
    /// Number of delivery attempts made; 0 when refused before any.
    pub attempts: u32,
    /// Message id of the NDR sent to the sender, when one was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ndr_message_id: Option<String>,
}

/// Payload of [`JournalEvent::Expanded`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Expanded {
    /// Common columns; `recipients` holds the group.
    #[serde(flatten)]
    pub record: TraceRecord,
    /// The members the group expanded into (`related_recipient_address`).
    pub members: Vec<String>,
}

/// Payload of [`JournalEvent::Redirected`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Redirected {
    /// Common columns; `recipients` holds the original recipients.
    #[serde(flatten)]
    pub record: TraceRecord,
    /// The new recipients (`related_recipient_address`).
    pub redirected_to: Vec<String>,
}

/// Payload of [`JournalEvent::Filtered`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Filtered {
    /// Common columns; `custom_data` carries the agent's summary.
    #[serde(flatten)]
    pub record: TraceRecord,
    /// The filtering verdict.
    pub verdict: SpamVerdict,
    /// Spam confidence level, -1 to 9.
    pub scl: i8,
    /// The action taken.
    pub action: PolicyAction,
    /// Names of the mail flow rules that matched, in priority order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules_matched: Vec<String>,
}

/// Kind of a delivery status notification (RFC 3464 action).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DsnKind {
    /// Non-delivery report (failed or expired).
    #[serde(rename = "failure")]
    Failure,
    /// Delivery delayed warning.
    #[serde(rename = "delay")]
    Delay,
    /// Delivery confirmation (`NOTIFY=SUCCESS`).
    #[serde(rename = "success")]
    Success,
}

/// Payload of [`JournalEvent::DsnGenerated`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DsnGenerated {
    /// Common columns; `recipients` are the original recipients the DSN reports on.
    #[serde(flatten)]
    pub record: TraceRecord,
    /// Kind of DSN.
    pub kind: DsnKind,
    /// Router message id of the DSN message (`reference`).
    pub dsn_message_id: String,
    /// Address the DSN is sent to (the original envelope sender).
    pub dsn_recipient: String,
}

/// Payload of [`JournalEvent::Released`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Released {
    /// Common columns; `recipients` are those the message is released to
    /// (those it was held for), with status `pending` until it is delivered.
    #[serde(flatten)]
    pub record: TraceRecord,
    /// Who released it, as the admin API was told (`operator`).
    pub operator: String,
    /// Why, as given by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The envelope `event_id` of the journal record `record_id`: a version 8 UUID
/// made of the 128-bit FNV-1a hash of `mailflow.journal:<record_id>`, so that a
/// record written twice has one id. Not a secret and not collision-proof
/// against an adversary; record ids are the router's own.
pub fn event_id_of(record_id: &str) -> Uuid {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    let hash = b"mailflow.journal:"
        .iter()
        .chain(record_id.as_bytes())
        .fold(OFFSET, |hash, byte| (hash ^ u128::from(*byte)).wrapping_mul(PRIME));
    uuid::Builder::from_custom_bytes(hash.to_be_bytes()).into_uuid()
}

crate::envelope::tagged_event!(JournalEvent {
    "Received" => Received(Received),
    "Deferred" => Deferred(Attempted),
    "Sent" => Sent(Attempted),
    "Delivered" => Delivered(Attempted),
    "Failed" => Failed(Failed),
    "Expanded" => Expanded(Expanded),
    "Redirected" => Redirected(Redirected),
    "Filtered" => Filtered(Filtered),
    "DsnGenerated" => DsnGenerated(DsnGenerated),
    "Released" => Released(Released),
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_id_always_gives_the_same_version_8_event_id_and_another_id_another() {
        let first = event_id_of("mailflow.delivery/3/1234/0");
        assert_eq!(first, event_id_of("mailflow.delivery/3/1234/0"));
        assert_ne!(first, event_id_of("mailflow.delivery/3/1234/1"));
        assert_ne!(first, event_id_of("mailflow.delivery/3/1235/0"));
        assert_eq!(first.get_version_num(), 8);
        // Pinned: consumers that stored ids must find them again after an upgrade.
        assert_eq!(event_id_of("mailflow.received/0/0/0").to_string(), PINNED);
    }

    const PINNED: &str = "4d3c8e28-df37-8662-a87b-59b41e35dd62";
}
