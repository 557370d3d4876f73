//! The pure mapping from the internal topics' events to journal records
//! (STYLE rule 1): no log, no clock, no sockets.
//!
//! | source event | journal records |
//! |---|---|
//! | `MessageReceived` | `Received` (`RECEIVE`, status `pending`, with the content reference) |
//! | `RecipientRejected`, `MessageRejected`, `ConnectionRefused` | `Failed` with `attempts: 0` (`FAIL`; status `failed` for `5xx`, `none` for `4xx`) |
//! | `VerdictReached` | `Filtered` (`AGENTINFO`, the spam agent), one `Filtered` per mail flow rule that matched, and `Redirected` (`REDIRECT`) when recipients were replaced |
//! | `Deferred` | `Deferred` (`DEFER`, status `pending`) |
//! | `Delivered` | `Delivered` (`DELIVER`) for the mailbox store, `Sent` (`SEND`) for any other next hop |
//! | `Failed`, `Expired` | `Failed` (`FAIL`), then `DsnGenerated` (`DSN`) when an NDR was sent |
//! | `MessageReleased` | `Released` (`RELEASE`, status `pending`, the operator and reason), with the columns of the message the `MessageQuarantined` it names holds |
//!
//! `Queued` and the operator actions on queues yield nothing: `Queued` only
//! feeds the [`QueuedIndex`](super::index::QueuedIndex) that tells delivery
//! records their sender and size. `MessageQuarantined` and `MessageDeleted`
//! yield nothing either: the `VerdictReached` that decided them already did.
//! A release is a fact of its own (who let the message out, and when), and
//! moves its recipients from `quarantined` to `pending` until delivery ends it.
//!
//! Every record repeats its source's `occurred_at` and trace context, and its
//! `record_id` (hence its `event_id`) is a function of the source's position,
//! so projecting a source event again yields the same records.

use mailflow_events::delivery::{DeliveryEvent, Destination, DestinationKind};
use mailflow_events::journal::{
    Attempted, DsnGenerated, DsnKind, Failed, Filtered, JournalEvent, Received, Redirected, Released, TraceRecord,
    TraceStatus, event_id_of,
};
use mailflow_events::received::{Directionality, MessageReceived, ReceivedEvent, SmtpReply, SmtpSession};
use mailflow_events::verdicts::{MessageQuarantined, PolicyAction, SpamVerdict, VerdictEvent, VerdictReached};
use mailflow_events::{Envelope, SCHEMA_VERSION};
use serde::Serialize;

use super::index::QueuedMessage;

/// Where a source event sits in the log: its records are named after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source<'a> {
    /// Topic without a deployment prefix, e.g. `mailflow.delivery`.
    pub topic: &'a str,
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: u64,
}

impl Source<'_> {
    /// Id of the `index`th record projected from this event.
    pub fn record_id(&self, index: usize) -> String {
        format!("{}/{}/{}/{index}", self.topic, self.partition, self.offset)
    }
}

/// Turns source events into journal records.
#[derive(Debug, Clone)]
pub struct Projector {
    /// Our host name (`server_hostname` of `RECEIVE`).
    pub hostname: String,
    /// Producer name in the records' envelopes.
    pub producer: String,
}

/// The wire name of a unit enum value, e.g. `unknown_recipient`.
fn wire<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

/// Columns of a record about `recipients` of a message from `sender`; the
/// optional columns are filled by the caller.
fn columns(status: TraceStatus, sender: &str, recipients: Vec<String>, size: u64, detail: String) -> TraceRecord {
    TraceRecord {
        status,
        sender: sender.to_string(),
        recipients,
        subject: None,
        internet_message_id: None,
        size,
        directionality: Directionality::Inbound,
        client_ip: None,
        client_hostname: None,
        server_ip: None,
        server_hostname: None,
        connector: None,
        custom_data: None,
        detail,
        record_id: None,
    }
}

/// Status of a refusal at the door: a `5xx` failed the mail; after a `4xx`
/// the client tries again, so nothing has failed for good.
fn refusal_status(reply: &SmtpReply) -> TraceStatus {
    if reply.is_permanent() { TraceStatus::Failed } else { TraceStatus::None }
}

/// A `FAIL` for a refusal at the SMTP door.
fn refusal(record: TraceRecord, reply: &SmtpReply) -> JournalEvent {
    JournalEvent::Failed(Failed { record, reply: reply.clone(), attempts: 0, ndr_message_id: None })
}

impl Projector {
    /// Wraps `events` in envelopes named after `source`.
    fn wrap<E>(
        &self,
        source: Source<'_>,
        envelope: &Envelope<E>,
        events: Vec<JournalEvent>,
    ) -> Vec<Envelope<JournalEvent>> {
        events
            .into_iter()
            .enumerate()
            .map(|(index, mut event)| {
                let record_id = source.record_id(index);
                let event_id = event_id_of(&record_id);
                event.record_mut().record_id = Some(record_id);
                Envelope {
                    event_id,
                    message_id: envelope.message_id.clone(),
                    occurred_at: envelope.occurred_at,
                    schema_version: SCHEMA_VERSION,
                    trace_context: envelope.trace_context.clone(),
                    producer: self.producer.clone(),
                    event,
                }
            })
            .collect()
    }

    /// Fills the session's columns.
    fn session(&self, record: &mut TraceRecord, session: &SmtpSession) {
        record.client_ip = Some(session.client_ip.clone());
        record.client_hostname = session.client_hostname.clone();
        record.server_ip = session.server_ip.clone();
        record.server_hostname = Some(self.hostname.clone());
    }

    /// Columns of a record about `recipients` of the accepted message
    /// `received` (absent from verdicts written before it was carried).
    fn message(
        &self,
        status: TraceStatus,
        recipients: Vec<String>,
        detail: String,
        received: Option<&MessageReceived>,
    ) -> TraceRecord {
        let sender = received.map_or("", |m| m.envelope.mail_from.as_str());
        let size = received.map_or(0, |m| m.content.size);
        let mut record = columns(status, sender, recipients, size, detail);
        if let Some(m) = received {
            self.session(&mut record, &m.session);
            record.subject = m.subject.clone();
            record.internet_message_id = m.internet_message_id.clone();
            record.directionality = m.directionality;
            record.connector = m.connector.as_ref().map(|c| c.name.clone());
        }
        record
    }

    /// Records of one `mailflow.received` event.
    pub fn received(&self, source: Source<'_>, envelope: &Envelope<ReceivedEvent>) -> Vec<Envelope<JournalEvent>> {
        let event = match &envelope.event {
            ReceivedEvent::MessageReceived(m) => {
                let recipients = m.recipients.iter().map(|r| r.address.clone()).collect();
                let detail = format!("Message received by: {}", self.hostname);
                let mut record =
                    columns(TraceStatus::Pending, &m.envelope.mail_from, recipients, m.content.size, detail);
                self.session(&mut record, &m.session);
                record.subject = m.subject.clone();
                record.internet_message_id = m.internet_message_id.clone();
                record.directionality = m.directionality;
                record.connector = m.connector.as_ref().map(|c| c.name.clone());
                JournalEvent::Received(Received {
                    record,
                    received_at: m.received_at,
                    original_client_ip: None,
                    content: Some(m.content.clone()),
                })
            }
            ReceivedEvent::RecipientRejected(r) => {
                let detail = format!("Recipient refused at RCPT TO ({}): {}", wire(&r.reason), r.reply);
                let mut record = columns(refusal_status(&r.reply), &r.mail_from, vec![r.address.clone()], 0, detail);
                self.session(&mut record, &r.session);
                refusal(record, &r.reply)
            }
            ReceivedEvent::MessageRejected(m) => {
                let detail = format!("Message refused at {} ({}): {}", wire(&m.stage), wire(&m.reason), m.reply);
                let sender = m.mail_from.as_deref().unwrap_or_default();
                let mut record = columns(refusal_status(&m.reply), sender, m.recipients.clone(), 0, detail);
                self.session(&mut record, &m.session);
                refusal(record, &m.reply)
            }
            ReceivedEvent::ConnectionRefused(c) => {
                let detail = format!("Connection refused ({}): {}", wire(&c.reason), c.reply);
                let mut record = columns(refusal_status(&c.reply), "", vec![], 0, detail);
                record.client_ip = Some(c.client_ip.clone());
                record.server_hostname = Some(self.hostname.clone());
                refusal(record, &c.reply)
            }
        };
        self.wrap(source, envelope, vec![event])
    }

    /// Records of one `mailflow.verdicts` event.
    pub fn verdict(&self, source: Source<'_>, envelope: &Envelope<VerdictEvent>) -> Vec<Envelope<JournalEvent>> {
        let VerdictEvent::VerdictReached(verdict) = &envelope.event else { return Vec::new() };
        let base = |status: TraceStatus, detail: String| {
            self.message(status, verdict.recipients.clone(), detail, verdict.received.as_deref())
        };
        let status = verdict_status(verdict);
        let rules: Vec<String> = verdict.rules_matched.iter().map(|m| m.rule.clone()).collect();
        let filtered = |record: TraceRecord, rules_matched: Vec<String>| {
            JournalEvent::Filtered(Filtered {
                record,
                verdict: verdict.verdict,
                scl: verdict.scl,
                action: verdict.action,
                rules_matched,
            })
        };
        let detail = format!(
            "Spam filter verdict {}, SCL {}, action {}",
            wire(&verdict.verdict),
            verdict.scl,
            wire(&verdict.action)
        );
        let mut record = base(status, detail);
        record.custom_data = Some(spam_agent_data(verdict, record.directionality));
        let mut events = vec![filtered(record, rules)];
        // Spec 12.5: one AGENTINFO per rule that fired.
        for matched in &verdict.rules_matched {
            let actions = matched.actions.join(",");
            // The rule engine records an audit-mode match with no actions.
            let mode = if matched.actions.is_empty() { "Audit" } else { "Enforce" };
            let mut record = base(status, format!("Mail flow rule {} matched", matched.rule));
            record.custom_data = Some(format!(
                "S:TRA=ETR|ruleId={}|st={}|action={actions}|mode={mode}",
                matched.rule,
                envelope.occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            ));
            events.push(filtered(record, vec![matched.rule.clone()]));
        }
        if !verdict.redirect_to.is_empty() {
            let detail = format!("Redirected to {}", verdict.redirect_to.join(", "));
            events.push(JournalEvent::Redirected(Redirected {
                record: base(TraceStatus::None, detail),
                redirected_to: verdict.redirect_to.clone(),
            }));
        }
        self.wrap(source, envelope, events)
    }

    /// Records of a `MessageReleased` of `mailflow.verdicts`. `held` is the
    /// `MessageQuarantined` it names, as the caller read it: the message's
    /// columns come from the verdict it holds. Without it (not found) the
    /// record still says who released what, and when.
    pub fn released(
        &self,
        source: Source<'_>,
        envelope: &Envelope<VerdictEvent>,
        held: Option<&MessageQuarantined>,
    ) -> Vec<Envelope<JournalEvent>> {
        let VerdictEvent::MessageReleased(released) = &envelope.event else { return Vec::new() };
        let detail = match &released.reason {
            Some(reason) => format!("Released from quarantine by {}: {reason}", released.operator),
            None => format!("Released from quarantine by {}", released.operator),
        };
        let received = held.and_then(|h| h.held.as_deref()).and_then(|verdict| verdict.received.as_deref());
        let mut record = self.message(TraceStatus::Pending, released.recipients.clone(), detail, received);
        if let (None, Some(held)) = (received, held) {
            record.size = held.content.size;
        }
        let event = JournalEvent::Released(Released {
            record,
            operator: released.operator.clone(),
            reason: released.reason.clone(),
        });
        self.wrap(source, envelope, vec![event])
    }

    /// Records of one `mailflow.delivery` event; `queued` is what the
    /// partition's index knows of the message at this destination.
    pub fn delivery(
        &self,
        source: Source<'_>,
        envelope: &Envelope<DeliveryEvent>,
        queued: Option<&QueuedMessage>,
    ) -> Vec<Envelope<JournalEvent>> {
        let (mut sender, mut size) = queued.map_or((String::new(), 0), |q| (q.mail_from.clone(), q.size));
        if let DeliveryEvent::Failed(failed) = &envelope.event
            && queued.is_none()
        {
            // Routing's failures: no `Queued` came first, the event says it.
            sender = failed.mail_from.clone().unwrap_or_default();
            size = failed.size.unwrap_or_default();
        }
        let base = |status: TraceStatus,
                    destination: &Destination,
                    recipients: &[String],
                    host: &Option<String>,
                    ip: &Option<String>,
                    detail: String| {
            let mut record = columns(status, &sender, recipients.to_vec(), size, detail);
            record.directionality = hop_direction(destination.kind);
            record.server_hostname = host.clone();
            record.server_ip = ip.clone();
            record.connector = match destination.kind {
                DestinationKind::OnPremises | DestinationKind::Partner | DestinationKind::SmartHost => {
                    Some(destination.name.clone())
                }
                DestinationKind::MailboxStore | DestinationKind::Internet => None,
            };
            record
        };
        let dsn = |recipients: &[String], destination: &Destination, ndr: &Option<String>| {
            ndr.as_ref().map(|ndr| {
                let detail = format!("Non-delivery report {ndr} sent to {}", sender_text(&sender));
                JournalEvent::DsnGenerated(DsnGenerated {
                    record: base(TraceStatus::Failed, destination, recipients, &None, &None, detail),
                    kind: DsnKind::Failure,
                    dsn_message_id: ndr.clone(),
                    dsn_recipient: sender.clone(),
                })
            })
        };
        let events = match &envelope.event {
            DeliveryEvent::Deferred(d) => {
                let detail = d.reply.as_ref().map(SmtpReply::to_string).or_else(|| d.error.clone()).unwrap_or_default();
                let detail = format!("{detail}; next attempt at {}", d.next_attempt_at.to_rfc3339());
                let record =
                    base(TraceStatus::Pending, &d.destination, &d.recipients, &d.remote_host, &d.remote_ip, detail);
                vec![JournalEvent::Deferred(Attempted {
                    record,
                    attempt: d.attempt,
                    reply: d.reply.clone(),
                    next_attempt_at: Some(d.next_attempt_at),
                })]
            }
            DeliveryEvent::Delivered(d) => {
                let junk = queued.is_some_and(|q| q.junk);
                let status = if junk { TraceStatus::FilteredAsSpam } else { TraceStatus::Delivered };
                let detail = match (d.destination.kind, junk) {
                    (DestinationKind::MailboxStore, true) => format!("Delivered to the Junk Email folder: {}", d.reply),
                    (DestinationKind::MailboxStore, false) => format!("Delivered to the mailbox: {}", d.reply),
                    _ => {
                        let host = d.remote_host.as_deref().unwrap_or(&d.destination.name);
                        match &d.tls {
                            Some(tls) => format!("Sent to {host} over {} ({}): {}", tls.protocol, tls.cipher, d.reply),
                            None => format!("Sent to {host}: {}", d.reply),
                        }
                    }
                };
                let record = base(status, &d.destination, &d.recipients, &d.remote_host, &d.remote_ip, detail);
                let attempted =
                    Attempted { record, attempt: d.attempt, reply: Some(d.reply.clone()), next_attempt_at: None };
                if d.destination.kind == DestinationKind::MailboxStore {
                    vec![JournalEvent::Delivered(attempted)]
                } else {
                    vec![JournalEvent::Sent(attempted)]
                }
            }
            DeliveryEvent::Failed(f) => {
                let detail = f.reply.to_string();
                let record =
                    base(TraceStatus::Failed, &f.destination, &f.recipients, &f.remote_host, &f.remote_ip, detail);
                let failed = JournalEvent::Failed(Failed {
                    record,
                    reply: f.reply.clone(),
                    attempts: f.attempt,
                    ndr_message_id: f.ndr_message_id.clone(),
                });
                std::iter::once(failed).chain(dsn(&f.recipients, &f.destination, &f.ndr_message_id)).collect()
            }
            DeliveryEvent::Expired(e) => {
                let detail = match &e.last_reply {
                    Some(last) => format!("{}; last error: {last}", e.reply),
                    None => e.reply.to_string(),
                };
                let record = base(TraceStatus::Failed, &e.destination, &e.recipients, &None, &None, detail);
                let failed = JournalEvent::Failed(Failed {
                    record,
                    reply: e.reply.clone(),
                    attempts: e.attempts,
                    ndr_message_id: e.ndr_message_id.clone(),
                });
                std::iter::once(failed).chain(dsn(&e.recipients, &e.destination, &e.ndr_message_id)).collect()
            }
            DeliveryEvent::Queued(_)
            | DeliveryEvent::RetryRequested(_)
            | DeliveryEvent::Suspended(_)
            | DeliveryEvent::Resumed(_)
            | DeliveryEvent::Deleted(_) => Vec::new(),
        };
        self.wrap(source, envelope, events)
    }
}

/// `<>` for the null sender in texts.
fn sender_text(sender: &str) -> &str {
    if sender.is_empty() { "<>" } else { sender }
}

/// Status of the verdict's recipients after filtering (spec 15.2).
fn verdict_status(verdict: &VerdictReached) -> TraceStatus {
    match verdict.action {
        PolicyAction::Quarantine => TraceStatus::Quarantined,
        PolicyAction::Reject => TraceStatus::Failed,
        // Dropped, or replaced by other recipients: no delivery for these.
        PolicyAction::Delete | PolicyAction::Redirect => TraceStatus::None,
        PolicyAction::Deliver | PolicyAction::MoveToJunk | PolicyAction::AddXHeader | PolicyAction::PrependSubject => {
            if verdict.verdict == SpamVerdict::NotSpam {
                TraceStatus::Pending
            } else {
                TraceStatus::FilteredAsSpam
            }
        }
    }
}

/// The spam agent's `custom_data` (spec 15.6): `S:SFA=SUM|SFV=…|SCL=…|…`.
fn spam_agent_data(verdict: &VerdictReached, direction: Directionality) -> String {
    let mut fields = vec!["SFA=SUM".to_string(), format!("SFV={}", verdict.sfv)];
    if let Some(ipv) = &verdict.ipv {
        fields.push(format!("IPV={ipv}"));
    }
    if let Some(category) = &verdict.category {
        fields.push(format!("CAT={category}"));
    }
    fields.push(format!("SCL={}", verdict.scl));
    fields.push(format!("BCL={}", verdict.bcl));
    fields.push(format!("CIP={}", verdict.original_client_ip));
    let dir = match direction {
        Directionality::Inbound => "INB",
        Directionality::Outbound => "OUT",
        Directionality::Originating => "INT",
    };
    fields.push(format!("DIR={dir}"));
    format!("S:{}", fields.join("|"))
}

/// Direction of a delivery hop: into the organisation's mailboxes or its
/// on-premises servers, or out of it. `Queued` does not record the message's
/// own directionality, so delivery records report the hop's.
fn hop_direction(kind: DestinationKind) -> Directionality {
    match kind {
        DestinationKind::MailboxStore | DestinationKind::OnPremises => Directionality::Inbound,
        DestinationKind::Partner | DestinationKind::Internet | DestinationKind::SmartHost => Directionality::Outbound,
    }
}

#[cfg(test)]
mod tests;
