//! The follower: reads every partition of `mailflow.journal` from offset 0,
//! then tails it, applying each record to the shared [`TraceIndex`].
//!
//! Plain reads, not a consumer group: every process serving trace needs every
//! partition. When a round finds nothing new in any partition it sleeps
//! [`IDLE`] (so a message shows up in the trace within about that long after
//! its journal record is durable). Log errors are retried after [`IDLE`]; a
//! record that does not decode (e.g. of a future schema version) is skipped
//! with a warning, so one bad record cannot stop the trace.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mailflow_events::Envelope;
use mailflow_events::journal::JournalEvent;
use mailflow_events::log::{DEFAULT_PARTITIONS, EventLog, LogError, Record, TopicKind};
use mailflow_events::topic;

use super::{TraceHandle, TraceIndex};

/// Pause after a round that found nothing new.
pub const IDLE: Duration = Duration::from_millis(200);
/// Records read from one partition at a time.
const BATCH: usize = 2000;

/// Applies `records` (of one partition, in order) to `index`.
pub fn apply_all(index: &mut TraceIndex, records: &[Record]) {
    for record in records {
        match Envelope::<JournalEvent>::from_json(&record.value) {
            Ok(envelope) => index.apply(&envelope, record.position),
            Err(err) => tracing::warn!(position = ?record.position, %err, "trace skips a journal record"),
        }
    }
}

/// Reads each partition of `mailflow.journal` from `next[p]` to its end once;
/// returns how many records were applied.
pub async fn catch_up(log: &dyn EventLog, index: &TraceHandle, next: &mut [u64]) -> Result<usize, LogError> {
    let mut applied = 0;
    for (partition, offset) in next.iter_mut().enumerate() {
        loop {
            let records = log.read(topic::JOURNAL, partition as u32, *offset, BATCH).await?;
            let Some(last) = records.last() else { break };
            *offset = last.position.offset + 1;
            applied += records.len();
            // A poisoned lock means a panic mid-apply; the index is still usable.
            apply_all(&mut index.write().unwrap_or_else(std::sync::PoisonError::into_inner), &records);
        }
    }
    Ok(applied)
}

/// Keeps `index` current for ever; sets `caught_up` once the journal has been
/// read to its end the first time.
pub async fn run(log: Arc<dyn EventLog>, index: TraceHandle, caught_up: Arc<AtomicBool>) {
    let partitions = loop {
        // An existing topic keeps its own count; Kafka learns it this way.
        match log.create_topic(topic::JOURNAL, DEFAULT_PARTITIONS, TopicKind::Events).await {
            Ok(partitions) => break partitions,
            Err(err) => {
                tracing::warn!(%err, "trace cannot open mailflow.journal yet");
                tokio::time::sleep(IDLE).await;
            }
        }
    };
    let mut next = vec![0u64; partitions as usize];
    loop {
        match catch_up(&*log, &index, &mut next).await {
            Ok(applied) => {
                caught_up.store(true, Ordering::Release);
                if applied == 0 {
                    tokio::time::sleep(IDLE).await;
                }
            }
            Err(err) => {
                tracing::warn!(%err, "trace failed to read mailflow.journal; retrying");
                tokio::time::sleep(IDLE).await;
            }
        }
    }
}
