//! The follower: reads every partition of `mailflow.journal` from offset 0,
//! then tails it, applying each record to the shared [`TraceIndex`].
//!
//! Plain reads, not a consumer group: every process serving trace needs every
//! partition. When a round finds nothing new in any partition it sleeps
//! [`IDLE`] (so a message shows up in the trace within about that long after
//! its journal record is durable). Log errors are retried after [`IDLE`]; a
//! record that does not decode (e.g. of a future schema version) is skipped
//! with a warning, so one bad record cannot stop the trace.
//!
//! With a checkpoint directory (`[trace] path`) it starts from the checkpoint
//! there and reads only the records after it ([`resume`]), and writes a new
//! checkpoint every `checkpoint_interval` while records arrive (and after
//! [`CHECKPOINT_RECORDS`] records, whichever comes first). On the same beat it
//! drops messages older than the retention from the index.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mailflow_events::Envelope;
use mailflow_events::journal::JournalEvent;
use mailflow_events::log::{DEFAULT_PARTITIONS, EventLog, LogError, Record, TopicKind};
use mailflow_events::topic;

use super::{TraceHandle, TraceIndex, TraceSettings, store};

/// Pause after a round that found nothing new.
pub const IDLE: Duration = Duration::from_millis(200);
/// Records read from one partition at a time.
const BATCH: usize = 2000;
/// Records after which a checkpoint is written even before the interval.
pub const CHECKPOINT_RECORDS: usize = 500_000;

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
            crate::metrics::metrics().trace_records_read.inc_by(records.len() as u64);
            // A poisoned lock means a panic mid-apply; the index is still usable.
            let mut index = index.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            apply_all(&mut index, &records);
            crate::metrics::metrics().trace_messages.set(index.messages() as i64);
        }
    }
    Ok(applied)
}

/// Loads the checkpoint in `dir` into `index` and returns the offsets to
/// read on from; offset 0 everywhere (and `index` untouched) when there is no
/// usable checkpoint: none, damaged, of another partition count, or ahead of
/// the journal (the log was replaced or its topic re-created).
pub async fn resume(log: &dyn EventLog, index: &TraceHandle, dir: &Path, partitions: u32) -> Vec<u64> {
    let fresh = vec![0u64; partitions as usize];
    let owned = dir.to_path_buf();
    let loaded = match tokio::task::spawn_blocking(move || store::load(&owned)).await {
        Ok(loaded) => loaded,
        Err(err) => {
            tracing::warn!(%err, "loading the trace index checkpoint failed; rebuilding from the journal");
            return fresh;
        }
    };
    let (header, loaded) = match loaded {
        Ok(Some(found)) => found,
        Ok(None) => {
            tracing::info!(dir = %dir.display(), "no trace index checkpoint; building it from the journal");
            return fresh;
        }
        Err(err) => {
            tracing::warn!(%err, "trace index checkpoint not used; rebuilding from the journal");
            return fresh;
        }
    };
    if header.next.len() != partitions as usize {
        tracing::warn!(
            dir = %dir.display(),
            checkpoint = header.next.len(),
            journal = partitions,
            "trace index checkpoint is of another partition count; rebuilding from the journal"
        );
        return fresh;
    }
    for (partition, &next) in header.next.iter().enumerate() {
        match log.end_offset(topic::JOURNAL, partition as u32).await {
            Ok(end) if next <= end => {}
            Ok(end) => {
                tracing::warn!(
                    dir = %dir.display(),
                    partition,
                    checkpoint = next,
                    end,
                    "trace index checkpoint is ahead of the journal (another or re-created log); rebuilding"
                );
                return fresh;
            }
            Err(err) => {
                tracing::warn!(%err, "cannot check the trace index checkpoint against the journal; rebuilding");
                return fresh;
            }
        }
    }
    tracing::info!(
        dir = %dir.display(),
        messages = loaded.messages(),
        written_at = %header.written_at,
        "trace index loaded from its checkpoint"
    );
    crate::metrics::metrics().trace_messages.set(loaded.messages() as i64);
    *index.write().unwrap_or_else(std::sync::PoisonError::into_inner) = loaded;
    header.next
}

/// Drops messages past the retention, then writes the checkpoint when there
/// is a directory for it. A failed write is logged and retried next time.
pub async fn checkpoint(index: &TraceHandle, next: &[u64], settings: &TraceSettings) {
    let cutoff = chrono::Utc::now() - settings.retention;
    let dropped = {
        let mut index = index.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let dropped = index.prune(cutoff);
        crate::metrics::metrics().trace_messages.set(index.messages() as i64);
        dropped
    };
    if dropped > 0 {
        tracing::info!(dropped, %cutoff, "trace index dropped messages past the retention");
    }
    let Some(dir) = settings.path.clone() else { return };
    let (index, next) = (index.clone(), next.to_vec());
    let written = tokio::task::spawn_blocking(move || {
        let bytes = store::encode(&index.read().unwrap_or_else(std::sync::PoisonError::into_inner), &next);
        store::save(&dir, &bytes)
    })
    .await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!(%err, "writing the trace index checkpoint failed; retrying later"),
        Err(err) => tracing::warn!(%err, "writing the trace index checkpoint failed; retrying later"),
    }
}

/// Keeps `index` current for ever; sets `caught_up` once the journal has been
/// read to its end the first time.
pub async fn run(log: Arc<dyn EventLog>, index: TraceHandle, caught_up: Arc<AtomicBool>, settings: TraceSettings) {
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
    let mut next = match &settings.path {
        Some(dir) => resume(&*log, &index, dir, partitions).await,
        None => vec![0u64; partitions as usize],
    };
    let mut since_checkpoint = 0usize;
    let mut last_checkpoint = Instant::now();
    loop {
        match catch_up(&*log, &index, &mut next).await {
            Ok(applied) => {
                caught_up.store(true, Ordering::Release);
                since_checkpoint += applied;
                if since_checkpoint > 0
                    && (last_checkpoint.elapsed() >= settings.checkpoint_interval
                        || since_checkpoint >= CHECKPOINT_RECORDS)
                {
                    checkpoint(&index, &next, &settings).await;
                    since_checkpoint = 0;
                    last_checkpoint = Instant::now();
                }
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

#[cfg(test)]
mod tests {
    use mailflow_events::log::embedded::{EmbeddedLog, Options};

    use super::*;
    use crate::trace::index::tests::received;

    async fn journal(dir: &Path) -> EmbeddedLog {
        let log = EmbeddedLog::open(dir, Options::default()).unwrap();
        log.create_topic(topic::JOURNAL, 2, TopicKind::Events).await.unwrap();
        log
    }

    async fn append(log: &EmbeddedLog, messages: std::ops::Range<u32>) {
        for n in messages {
            let envelope = received(&format!("m{n}"), n % 60, "alice@contoso.com", &["bob@example.org"], "report");
            log.append(topic::JOURNAL, envelope.message_id.as_bytes(), &envelope.to_json()).await.unwrap();
        }
    }

    fn settings(dir: &Path) -> TraceSettings {
        // Retention far beyond the records' fixed 2026 dates, whatever the clock says.
        TraceSettings {
            path: Some(dir.join("trace")),
            retention: chrono::Duration::days(36_500),
            ..TraceSettings::default()
        }
    }

    #[tokio::test]
    async fn a_restart_resumes_from_the_checkpoint_and_ends_where_a_rebuild_ends() {
        let dir = tempfile::tempdir().unwrap();
        let log = journal(&dir.path().join("log")).await;
        append(&log, 0..10).await;
        let first = TraceHandle::default();
        let mut next = vec![0, 0];
        assert_eq!(catch_up(&log, &first, &mut next).await.unwrap(), 10);
        checkpoint(&first, &next, &settings(dir.path())).await;
        append(&log, 10..15).await;

        // A restart: the checkpoint's offsets, then only the five new records.
        let resumed = TraceHandle::default();
        let from = resume(&log, &resumed, &dir.path().join("trace"), 2).await;
        assert_eq!(from, next, "resumes where the checkpoint ends");
        assert_eq!(resumed.read().unwrap().messages(), 10, "loaded from the checkpoint");
        let mut from = from;
        assert_eq!(catch_up(&log, &resumed, &mut from).await.unwrap(), 5, "reads only what is newer");

        let rebuilt = TraceHandle::default();
        let mut all = vec![0, 0];
        assert_eq!(catch_up(&log, &rebuilt, &mut all).await.unwrap(), 15);
        assert_eq!(from, all);
        assert!(*resumed.read().unwrap() == *rebuilt.read().unwrap(), "the same index as a rebuild from offset 0");
    }

    #[tokio::test]
    async fn a_checkpoint_that_does_not_fit_the_journal_means_a_rebuild() {
        let dir = tempfile::tempdir().unwrap();
        let log = journal(&dir.path().join("log")).await;
        append(&log, 0..4).await;
        let handle = TraceHandle::default();
        let mut next = vec![0, 0];
        catch_up(&log, &handle, &mut next).await.unwrap();
        let trace = dir.path().join("trace");

        // Ahead of the journal: written for another (or a re-created) log.
        let ahead: Vec<u64> = next.iter().map(|n| n + 100).collect();
        store::save(&trace, &store::encode(&handle.read().unwrap(), &ahead)).unwrap();
        let fresh = TraceHandle::default();
        assert_eq!(resume(&log, &fresh, &trace, 2).await, vec![0, 0]);
        assert_eq!(fresh.read().unwrap().messages(), 0, "nothing loaded");

        // Of another partition count.
        store::save(&trace, &store::encode(&handle.read().unwrap(), &[4])).unwrap();
        assert_eq!(resume(&log, &fresh, &trace, 2).await, vec![0, 0]);

        // Damaged.
        std::fs::write(trace.join(store::FILE), b"{}\n{").unwrap();
        assert_eq!(resume(&log, &fresh, &trace, 2).await, vec![0, 0]);
        assert_eq!(fresh.read().unwrap().messages(), 0);
    }

    #[tokio::test]
    async fn the_checkpoint_leaves_out_messages_past_the_retention() {
        let dir = tempfile::tempdir().unwrap();
        let log = journal(&dir.path().join("log")).await;
        append(&log, 0..3).await;
        let handle = TraceHandle::default();
        let mut next = vec![0, 0];
        catch_up(&log, &handle, &mut next).await.unwrap();
        // The records are of 2026-11-23 10:00; a retention ending after them drops all.
        let since_then = chrono::Utc::now() - crate::trace::index::tests::at(0);
        let settings = TraceSettings { retention: since_then - chrono::Duration::hours(1), ..settings(dir.path()) };
        checkpoint(&handle, &next, &settings).await;
        assert_eq!(handle.read().unwrap().messages(), 0);
        let (header, loaded) = store::load(&dir.path().join("trace")).unwrap().unwrap();
        assert_eq!((header.messages, loaded.messages(), header.next), (0, 0, next));
    }
}
