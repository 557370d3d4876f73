//! The delivery state of one `mailflow.delivery` partition, as a fold of its
//! events (DESIGN §3, STYLE rule 2).
//!
//! [`PartitionState::apply`] is infallible, deterministic and clock-free:
//! every time it stores comes from an event (`next_attempt_at`, `expires_at`,
//! an operator's `occurred_at`). Replaying a partition from offset 0 therefore
//! rebuilds exactly the state the live actor had, which the crash tests check
//! by comparing serialised states.
//!
//! Invariants:
//! - a destination's queue holds its messages in the order received (spec
//!   11.4): by the receipt time recorded in `Queued`, then message id;
//! - a message is in a queue while it has pending recipients; `Delivered`,
//!   `Failed`, `Expired` and `Deleted` remove recipients or the message;
//! - a message is queued once per destination: a second `Queued` for the same
//!   message (routing, or the verdict before it, ran again after a crash) is
//!   ignored while the first is queued, and also once the first has left the
//!   queue, as long as it is among the last [`COMPLETED_KEPT`] to leave the
//!   partition's queues (a copy comes within the restart's re-processing window);
//! - only the offset of the `Queued` event is kept, not its payload, so a queued
//!   message costs a few hundred bytes; delivery reads the event back.

use std::collections::{BTreeMap, HashSet, VecDeque};

use chrono::{DateTime, Utc};
use mailflow_events::Envelope;
use mailflow_events::delivery::{DeliveryEvent, Destination, Scope};
use mailflow_events::envelope::DecodeError;
use mailflow_events::log::Record;
use mailflow_events::received::SmtpReply;
use serde::{Deserialize, Serialize};

/// A message waiting in a destination's queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedMessage {
    /// The message id.
    pub message_id: Box<str>,
    /// Offset of its `Queued` event in the partition.
    pub queued_offset: u64,
    /// Recipients not yet delivered, failed or expired.
    pub pending: Vec<Box<str>>,
    /// Attempts made so far.
    pub attempts: u32,
    /// When it may be tried again after a message-level deferral; `None`: now.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When it expires.
    pub expires_at: DateTime<Utc>,
    /// When it was received (orders the queue; shown by `mailflow queue`).
    pub received_at: DateTime<Utc>,
    /// The last temporary reply or error, for the expiry NDR and the queue view.
    pub last_error: Option<Box<str>>,
    /// Whether its sender was sent a delay notice (see `Deferred::delay_notice`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delay_notified: bool,
}

/// A destination that could not be reached and waits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retry {
    /// Consecutive destination-level failures.
    pub attempts: u32,
    /// When the next probe is due.
    pub next_attempt_at: DateTime<Utc>,
    /// The reply or error of the last failure.
    pub last_error: Box<str>,
}

/// One destination's queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationState {
    /// The destination, as first queued.
    pub destination: Destination,
    /// Messages in arrival order.
    pub queue: VecDeque<QueuedMessage>,
    /// Set while the destination is unreachable.
    pub retry: Option<Retry>,
    /// Suspended by an operator.
    pub suspended: bool,
}

/// The state of one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    /// Destinations by key, with at least one queued message or a retry.
    pub destinations: BTreeMap<String, DestinationState>,
    /// Offset after the last event applied.
    pub next_offset: u64,
    /// The messages that last left a queue, so that a copy of their `Queued`
    /// does not queue them again. Absent from snapshots written before it.
    #[serde(default, skip_serializing_if = "Completed::is_empty")]
    pub completed: Completed,
}

/// Messages that left a queue (delivered, failed, expired or deleted) per
/// destination, the last [`COMPLETED_KEPT`] of a partition: bounded memory
/// (about 150 bytes each), O(1) lookup. Serialised as its list, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "VecDeque<(String, Box<str>)>", into = "VecDeque<(String, Box<str>)>")]
pub struct Completed {
    order: VecDeque<(String, Box<str>)>,
    index: HashSet<(String, Box<str>)>,
}

/// How many completed messages a partition remembers. A copy of a `Queued`
/// comes from a role that re-processes what it had not committed when it
/// stopped: within the few rounds before a crash, far fewer completions.
pub const COMPLETED_KEPT: usize = 4096;

impl Completed {
    fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    fn contains(&self, key: &str, message_id: &str) -> bool {
        self.index.contains(&(key.to_string(), message_id.into()))
    }

    fn insert(&mut self, key: &str, message_id: &str) {
        let entry = (key.to_string(), Box::<str>::from(message_id));
        if self.index.insert(entry.clone()) {
            self.order.push_back(entry);
        }
        while self.order.len() > COMPLETED_KEPT {
            if let Some(oldest) = self.order.pop_front() {
                self.index.remove(&oldest);
            }
        }
    }
}

impl From<VecDeque<(String, Box<str>)>> for Completed {
    fn from(order: VecDeque<(String, Box<str>)>) -> Self {
        let index = order.iter().cloned().collect();
        Self { order, index }
    }
}

impl From<Completed> for VecDeque<(String, Box<str>)> {
    fn from(completed: Completed) -> Self {
        completed.order
    }
}

/// What to attempt for one destination now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// Destination key.
    pub key: String,
    /// The destination.
    pub destination: Destination,
    /// Messages to try, in queue order.
    pub messages: Vec<DueMessage>,
    /// The attempt number of a destination-level probe.
    pub destination_attempt: u32,
}

/// A message to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueMessage {
    /// The message id.
    pub message_id: String,
    /// Offset of its `Queued` event.
    pub queued_offset: u64,
    /// Number of this attempt, from 1.
    pub attempt: u32,
    /// Recipients still pending.
    pub recipients: Vec<String>,
    /// When it was received (the delay notice's clock).
    pub received_at: DateTime<Utc>,
    /// Whether its sender already had a delay notice.
    pub delay_notified: bool,
}

/// A message whose time is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiredMessage {
    /// Destination key.
    pub key: String,
    /// The destination.
    pub destination: Destination,
    /// The message id.
    pub message_id: String,
    /// Offset of its `Queued` event.
    pub queued_offset: u64,
    /// Recipients still pending.
    pub recipients: Vec<String>,
    /// Attempts made.
    pub attempts: u32,
    /// The last temporary error.
    pub last_error: Option<String>,
}

impl PartitionState {
    /// Applies a record of the partition as read from the log: skipped when
    /// an earlier fold (or the snapshot it started from) covers it; an
    /// undecodable one only moves `next_offset` past it, which is what every
    /// reader of the partition does, and is handed back for the caller to report.
    pub fn apply_record(&mut self, record: &Record) -> Result<(), DecodeError> {
        if record.position.offset < self.next_offset {
            return Ok(());
        }
        match Envelope::<DeliveryEvent>::from_json(&record.value) {
            Ok(envelope) => {
                self.apply(record.position.offset, &envelope);
                Ok(())
            }
            Err(err) => {
                self.next_offset = self.next_offset.max(record.position.offset + 1);
                Err(err)
            }
        }
    }

    /// Applies the event at `offset`. Events of other topics' shapes never reach here.
    pub fn apply(&mut self, offset: u64, envelope: &Envelope<DeliveryEvent>) {
        self.next_offset = self.next_offset.max(offset + 1);
        let event = &envelope.event;
        let key = event.destination().key();
        let message_id = envelope.message_id.as_str();
        if let DeliveryEvent::Queued(queued) = event {
            if self.completed.contains(&key, message_id) {
                return;
            }
            let state = self.destinations.entry(key).or_insert_with(|| DestinationState {
                destination: Destination { next_hop: None, ..queued.destination.clone() },
                queue: VecDeque::new(),
                retry: None,
                suspended: false,
            });
            // Receipt order (spec 11.4): routing handles messages from many
            // partitions, so its appends are only nearly in order; the
            // recorded receipt time decides. A second `Queued` of the same
            // message (routing ran again) carries the same receipt time, so
            // it is found where it would be inserted: O(log n), no index.
            let order = (queued.received_at, message_id);
            // Nearly always the new message goes last: compare with the tail
            // before searching (a search touches cold memory in long queues).
            let at = match state.queue.back() {
                Some(last) if (last.received_at, &*last.message_id) < order => state.queue.len(),
                _ => state.queue.partition_point(|m| (m.received_at, &*m.message_id) < order),
            };
            if state.queue.get(at).is_some_and(|m| &*m.message_id == message_id) {
                return;
            }
            state.queue.insert(
                at,
                QueuedMessage {
                    message_id: message_id.into(),
                    queued_offset: offset,
                    pending: queued.recipients.iter().map(|r| r.address.as_str().into()).collect(),
                    attempts: 0,
                    next_attempt_at: None,
                    expires_at: queued.expires_at,
                    received_at: queued.received_at,
                    last_error: None,
                    delay_notified: false,
                },
            );
            return;
        }
        // An operator may hold a destination before any mail for it arrives.
        if let DeliveryEvent::Suspended(action) = event {
            self.destinations.entry(key.clone()).or_insert_with(|| DestinationState {
                destination: Destination { next_hop: None, ..action.destination.clone() },
                queue: VecDeque::new(),
                retry: None,
                suspended: false,
            });
        }
        let Some(state) = self.destinations.get_mut(&key) else { return };
        let position = state.queue.iter().position(|m| &*m.message_id == message_id);
        let completed = &mut self.completed;
        let mut remove = |state: &mut DestinationState, recipients: &[String]| {
            if let Some(index) = position {
                let message = &mut state.queue[index];
                message.pending.retain(|p| !recipients.iter().any(|r| r.eq_ignore_ascii_case(p)));
                if message.pending.is_empty() {
                    state.queue.remove(index);
                    completed.insert(&key, message_id);
                }
            }
        };
        match event {
            DeliveryEvent::Queued(_) => {}
            DeliveryEvent::Deferred(deferred) => {
                let error = deferred
                    .reply
                    .as_ref()
                    .map(SmtpReply::to_string)
                    .or_else(|| deferred.error.clone())
                    .unwrap_or_default()
                    .into_boxed_str();
                if let Some(index) = position {
                    let message = &mut state.queue[index];
                    message.attempts = message.attempts.max(deferred.attempt);
                    message.last_error = Some(error.clone());
                    message.delay_notified |= deferred.delay_notice.is_some();
                    if deferred.scope == Scope::Message {
                        message.next_attempt_at = Some(deferred.next_attempt_at);
                    }
                }
                state.retry = match deferred.scope {
                    Scope::Destination => Some(Retry {
                        attempts: deferred.attempt,
                        next_attempt_at: deferred.next_attempt_at,
                        last_error: error,
                    }),
                    // The destination answered: it is reachable.
                    Scope::Message => None,
                };
            }
            DeliveryEvent::Delivered(delivered) => {
                if let Some(index) = position {
                    state.queue[index].attempts = state.queue[index].attempts.max(delivered.attempt);
                }
                remove(state, &delivered.recipients);
                state.retry = None;
            }
            DeliveryEvent::Failed(failed) => remove(state, &failed.recipients),
            DeliveryEvent::Expired(expired) => remove(state, &expired.recipients),
            DeliveryEvent::RetryRequested(action) => match action.scope {
                Scope::Destination => {
                    if let Some(retry) = &mut state.retry {
                        retry.next_attempt_at = envelope.occurred_at;
                    }
                    for message in &mut state.queue {
                        message.next_attempt_at = None;
                    }
                }
                Scope::Message => {
                    if let Some(index) = position {
                        state.queue[index].next_attempt_at = None;
                    }
                }
            },
            DeliveryEvent::Suspended(_) => state.suspended = true,
            DeliveryEvent::Resumed(_) => state.suspended = false,
            DeliveryEvent::Deleted(deleted) => match deleted.scope {
                Scope::Destination => {
                    for message in state.queue.drain(..) {
                        completed.insert(&key, &message.message_id);
                    }
                }
                Scope::Message => {
                    if let Some(index) = position {
                        state.queue.remove(index);
                        completed.insert(&key, message_id);
                    }
                }
            },
        }
        if state.queue.is_empty() && !state.suspended {
            self.destinations.remove(&key);
        }
    }

    /// Destinations with work due at `now`, skipping `busy` ones: a probe of a
    /// destination in retry once its time has come, else every message due,
    /// in queue order, up to `batch` messages.
    pub fn due(&self, now: DateTime<Utc>, busy: &dyn Fn(&str) -> bool, batch: usize) -> Vec<Due> {
        let mut due = Vec::new();
        for (key, state) in &self.destinations {
            if state.suspended || busy(key) {
                continue;
            }
            if state.retry.as_ref().is_some_and(|retry| retry.next_attempt_at > now) {
                continue;
            }
            let messages: Vec<DueMessage> = state
                .queue
                .iter()
                .filter(|m| m.expires_at > now && m.next_attempt_at.is_none_or(|at| at <= now))
                .take(batch)
                .map(|m| DueMessage {
                    message_id: m.message_id.to_string(),
                    queued_offset: m.queued_offset,
                    attempt: m.attempts + 1,
                    recipients: m.pending.iter().map(|p| p.to_string()).collect(),
                    received_at: m.received_at,
                    delay_notified: m.delay_notified,
                })
                .collect();
            if messages.is_empty() {
                continue;
            }
            due.push(Due {
                key: key.clone(),
                destination: state.destination.clone(),
                messages,
                destination_attempt: state.retry.as_ref().map_or(1, |r| r.attempts + 1),
            });
        }
        due
    }

    /// Messages past their expiry at `now`, not in `busy` destinations.
    pub fn expired(&self, now: DateTime<Utc>, busy: &dyn Fn(&str) -> bool) -> Vec<ExpiredMessage> {
        let mut expired = Vec::new();
        for (key, state) in &self.destinations {
            if busy(key) {
                continue;
            }
            for message in state.queue.iter().filter(|m| m.expires_at <= now) {
                expired.push(ExpiredMessage {
                    key: key.clone(),
                    destination: state.destination.clone(),
                    message_id: message.message_id.to_string(),
                    queued_offset: message.queued_offset,
                    recipients: message.pending.iter().map(|p| p.to_string()).collect(),
                    attempts: message.attempts,
                    last_error: message.last_error.as_deref().map(str::to_string),
                });
            }
        }
        expired
    }

    /// Messages queued in the partition.
    pub fn depth(&self) -> usize {
        self.destinations.values().map(|s| s.queue.len()).sum()
    }
}

#[cfg(test)]
mod tests;
