//! A message's trace detail (spec 15.3, 15.4): its journal records, read back
//! from `mailflow.journal` by the positions the index kept, in time order.

use chrono::{DateTime, Utc};
use mailflow_events::Envelope;
use mailflow_events::journal::{JournalEvent, TraceStatus};
use mailflow_events::log::{EventLog, LogError, Position};
use mailflow_events::topic;
use serde::{Deserialize, Serialize};

/// One event of a message (a line of the detail view).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceEvent {
    /// EOP's event id: `RECEIVE`, `DEFER`, `SEND`, `DELIVER`, `FAIL`, `EXPAND`,
    /// `REDIRECT`, `AGENTINFO` or `DSN`; or mailflow's `RELEASE` (out of quarantine).
    pub event: String,
    /// When it happened (UTC).
    pub occurred_at: DateTime<Utc>,
    /// Status of its recipients after it.
    pub status: TraceStatus,
    /// Recipients it is about.
    pub recipients: Vec<String>,
    /// What happened, in words.
    pub detail: String,
    /// The SMTP reply involved, when there was one.
    pub reply: Option<String>,
    /// The other side of the hop: the client for a receipt or a refusal at the
    /// door, the next hop otherwise.
    pub remote_host: Option<String>,
    /// Connector involved.
    pub connector: Option<String>,
    /// Agent data, e.g. the spam verdict (`custom_data`).
    pub custom_data: Option<String>,
    /// Where the record is in `mailflow.journal`.
    pub partition: u32,
    /// Its offset.
    pub offset: u64,
    /// The whole journal record.
    pub record: serde_json::Value,
}

impl TraceEvent {
    fn of(envelope: &Envelope<JournalEvent>, position: Position) -> Self {
        let record = envelope.event.record();
        let (reply, at_the_door) = match &envelope.event {
            JournalEvent::Received(_) => (None, true),
            JournalEvent::Failed(f) => (Some(f.reply.to_string()), f.attempts == 0),
            JournalEvent::Deferred(a) | JournalEvent::Sent(a) | JournalEvent::Delivered(a) => {
                (a.reply.as_ref().map(ToString::to_string), false)
            }
            _ => (None, false),
        };
        let remote_host = if at_the_door {
            record.client_hostname.clone().or_else(|| record.client_ip.clone())
        } else {
            record.server_hostname.clone().or_else(|| record.server_ip.clone())
        };
        Self {
            event: envelope.event.trace_event_id().to_string(),
            occurred_at: envelope.occurred_at,
            status: record.status,
            recipients: record.recipients.clone(),
            detail: record.detail.clone(),
            reply,
            remote_host,
            connector: record.connector.clone(),
            custom_data: record.custom_data.clone(),
            partition: position.partition,
            offset: position.offset,
            record: serde_json::to_value(&envelope.event).unwrap_or(serde_json::Value::Null),
        }
    }
}

/// Reads the journal records at `positions` and returns them as events in
/// time order (log order among equal times), copies of one record (same
/// `event_id`, written again after a crash) once. A record that no longer
/// decodes is skipped with a warning.
pub async fn read(log: &dyn EventLog, positions: &[Position]) -> Result<Vec<TraceEvent>, LogError> {
    let mut found: Vec<(Envelope<JournalEvent>, Position)> = Vec::with_capacity(positions.len());
    let mut sorted = positions.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    for position in sorted {
        let records = log.read(topic::JOURNAL, position.partition, position.offset, 1).await?;
        let Some(record) = records.into_iter().find(|r| r.position == position) else {
            tracing::warn!(?position, "a journal record the trace index names is not in the log");
            continue;
        };
        match Envelope::<JournalEvent>::from_json(&record.value) {
            Ok(envelope) if !found.iter().any(|(e, _)| e.event_id == envelope.event_id) => {
                found.push((envelope, position));
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(?position, %err, "skipping a journal record that does not decode"),
        }
    }
    found.sort_by_key(|(e, p)| (e.occurred_at, *p));
    Ok(found.iter().map(|(e, p)| TraceEvent::of(e, *p)).collect())
}
