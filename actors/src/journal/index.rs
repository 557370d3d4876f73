//! What the journal must know of a queued message that the outcome events of
//! `mailflow.delivery` do not repeat: the sender, the size, the folder.
//!
//! One [`QueuedIndex`] per `mailflow.delivery` partition, folded from the
//! partition's events like the delivery state (`delivery/state.rs`) and with
//! the same rules, so that an entry lives exactly as long as the message is in
//! its destination's queue:
//! - a `Queued` adds an entry per (destination, message), unless one is there
//!   (routing ran again after a crash);
//! - `Delivered`, `Failed` and `Expired` take their recipients off it, and the
//!   entry goes once none is left; an operator's `Deleted` drops it at once.
//!
//! `apply` is pure and clock-free, so replaying a partition from offset 0 up to
//! the group's committed offset rebuilds the index the journal had before a
//! restart or rebalance.

use std::collections::HashMap;

use mailflow_events::Envelope;
use mailflow_events::delivery::{DeliveryEvent, Scope};

/// A queued message as the journal reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMessage {
    /// Reverse path; empty for `<>`.
    pub mail_from: String,
    /// Size of the content in bytes.
    pub size: u64,
    /// Whether it is delivered into the Junk folder (a spam verdict's `MoveToJmf`).
    pub junk: bool,
    /// Recipients without an outcome yet.
    pending: Vec<String>,
}

/// The queued messages of one partition, by destination key and message id.
#[derive(Debug, Default)]
pub struct QueuedIndex {
    messages: HashMap<String, HashMap<String, QueuedMessage>>,
    /// Offset after the last event applied.
    pub next_offset: u64,
}

impl QueuedIndex {
    /// The message `message_id` queued for destination `key`, if it still is.
    pub fn get(&self, key: &str, message_id: &str) -> Option<&QueuedMessage> {
        self.messages.get(key)?.get(message_id)
    }

    /// Number of queued (destination, message) pairs.
    pub fn len(&self) -> usize {
        self.messages.values().map(HashMap::len).sum()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Applies the event at `offset`.
    pub fn apply(&mut self, offset: u64, envelope: &Envelope<DeliveryEvent>) {
        self.next_offset = self.next_offset.max(offset + 1);
        let key = envelope.event.destination().key();
        let message_id = envelope.message_id.as_str();
        let recipients = match &envelope.event {
            DeliveryEvent::Queued(queued) => {
                self.messages.entry(key).or_default().entry(message_id.to_string()).or_insert_with(|| QueuedMessage {
                    mail_from: queued.mail_from.clone(),
                    size: queued.content.size,
                    junk: queued.folder.is_some(),
                    pending: queued.recipients.iter().map(|r| r.address.clone()).collect(),
                });
                return;
            }
            DeliveryEvent::Delivered(e) => &e.recipients,
            DeliveryEvent::Failed(e) => &e.recipients,
            DeliveryEvent::Expired(e) => &e.recipients,
            DeliveryEvent::Deleted(deleted) => {
                match deleted.scope {
                    Scope::Destination => {
                        self.messages.remove(&key);
                    }
                    Scope::Message => self.remove(&key, message_id),
                }
                return;
            }
            DeliveryEvent::Deferred(_)
            | DeliveryEvent::RetryRequested(_)
            | DeliveryEvent::Suspended(_)
            | DeliveryEvent::Resumed(_) => return,
        };
        let Some(message) = self.messages.get_mut(&key).and_then(|queue| queue.get_mut(message_id)) else { return };
        message.pending.retain(|p| !recipients.iter().any(|r| r.eq_ignore_ascii_case(p)));
        if message.pending.is_empty() {
            self.remove(&key, message_id);
        }
    }

    fn remove(&mut self, key: &str, message_id: &str) {
        if let Some(queue) = self.messages.get_mut(key) {
            queue.remove(message_id);
            if queue.is_empty() {
                self.messages.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone as _, Utc};
    use mailflow_events::content::ContentRef;
    use mailflow_events::delivery::{
        Delivered, Destination, DestinationKind, OperatorDeleted, Queued, QueuedRecipient, RouteReason,
    };
    use mailflow_events::received::{BodyType, SmtpReply};

    use super::*;

    fn destination() -> Destination {
        Destination { kind: DestinationKind::Internet, name: "example.org".into(), next_hop: None }
    }

    fn queued(message_id: &str, recipients: &[&str]) -> Envelope<DeliveryEvent> {
        let at = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).single().expect("valid time");
        let event = DeliveryEvent::Queued(Queued {
            destination: destination(),
            route: RouteReason::Mx,
            recipients: recipients
                .iter()
                .map(|a| QueuedRecipient { address: a.to_string(), notify: vec![], orcpt: None })
                .collect(),
            mail_from: "alice@contoso.com".into(),
            dsn_return: None,
            dsn_envid: None,
            body: BodyType::SevenBit,
            smtputf8: false,
            require_tls: false,
            disclaimer: None,
            content: ContentRef { partition: 0, first_offset: 0, chunks: 1, size: 42, crc32: 0 },
            prepend_headers: vec![],
            remove_headers: vec![],
            subject_prefix: None,
            folder: None,
            received_at: at,
            expires_at: at,
        });
        Envelope::new(message_id, "test", at, event)
    }

    fn delivered(message_id: &str, recipients: &[&str]) -> Envelope<DeliveryEvent> {
        let event = DeliveryEvent::Delivered(Delivered {
            destination: destination(),
            attempt: 1,
            recipients: recipients.iter().map(|a| a.to_string()).collect(),
            remote_host: None,
            remote_ip: None,
            reply: SmtpReply::new(250, "2.0.0", "OK"),
            tls: None,
        });
        Envelope::new(message_id, "test", Utc::now(), event)
    }

    #[test]
    fn a_message_stays_known_until_its_last_recipient_has_an_outcome() {
        let mut index = QueuedIndex::default();
        index.apply(0, &queued("m1", &["a@example.org", "b@example.org"]));
        let key = destination().key();
        assert_eq!(index.get(&key, "m1").map(|m| (m.mail_from.as_str(), m.size)), Some(("alice@contoso.com", 42)));
        index.apply(1, &delivered("m1", &["A@example.org"]));
        assert!(index.get(&key, "m1").is_some(), "b is still pending");
        index.apply(2, &delivered("m1", &["b@example.org"]));
        assert!(index.get(&key, "m1").is_none());
        assert!(index.is_empty());
        assert_eq!(index.next_offset, 3);
    }

    #[test]
    fn a_second_queued_of_the_same_message_keeps_the_first_and_a_deletion_drops_the_destination() {
        let mut index = QueuedIndex::default();
        index.apply(0, &queued("m1", &["a@example.org"]));
        index.apply(1, &queued("m1", &["other@example.org"]));
        index.apply(2, &queued("m2", &["a@example.org"]));
        assert_eq!(index.len(), 2);
        index.apply(3, &delivered("m1", &["a@example.org"]));
        assert!(index.get(&destination().key(), "m1").is_none(), "the first copy's recipients decide");
        let deleted = DeliveryEvent::Deleted(OperatorDeleted {
            destination: destination(),
            scope: Scope::Destination,
            operator: "admin".into(),
            reason: None,
            with_ndr: false,
        });
        index.apply(4, &Envelope::new("", "test", Utc::now(), deleted));
        assert!(index.is_empty());
    }
}
