//! `mailflow archive`: the reference consumer of `mailflow.journal`. It writes
//! each message as `<message id>.eml` (the content as received, read from
//! `mailflow.content` through the `Received` record's content reference) and
//! `<message id>.json` (its journal records so far), see [`store`].
//!
//! Where it resumes depends on the log:
//! - **Kafka**: its own consumer group, `mailflow-archive`, committing each
//!   batch's offsets once its files are durable;
//! - **embedded**: only the router's process may write that log (groups
//!   commit into it), so the archive opens it read-only, beside the router,
//!   and keeps its position in `DIR/.position` instead.
//!
//! Either way a batch's files are written before its position moves on, and
//! records read again are deduplicated by `event_id`: running it again, or
//! after a crash, adds nothing twice. Without `--follow` it stops at the end
//! of the journal (Kafka: the end offsets seen at start, and three idle
//! seconds for partitions it got no record of); with it, it keeps reading.
//!
//! Limit (embedded): a read-only view may serve a record whose append is not
//! yet acknowledged; should the machine lose power before the router's fsync,
//! that offset is reused and this archive's position is past it.

pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mailflow_events::content::{self, ContentError, ContentRef};
use mailflow_events::journal::JournalEvent;
use mailflow_events::log::{EventLog, LogError, Record};
use mailflow_events::{Envelope, topic};
use serde::Serialize;
use serde_json::Value;

use crate::config::EventLogConfig;
use store::ArchiveDir;

/// Consumer group of the archive (Kafka).
pub const GROUP: &str = "mailflow-archive";

/// Records read per batch.
const BATCH: usize = 1000;

/// How long an embedded `--follow` waits before looking for new records.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(500);

/// How long Kafka partitions must stay silent before a run without `--follow` ends.
const IDLE_END: Duration = Duration::from_secs(3);

/// Why the archive stopped.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The event log failed (temporary unless the log error is permanent).
    #[error(transparent)]
    Log(#[from] LogError),
    /// The log failed while a message's content was read (temporary).
    #[error(transparent)]
    Content(#[from] ContentError),
    /// A file of the archive could not be read or written (temporary: disk, permissions).
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A file of the archive is not in the archive's format (permanent: fix or remove it).
    #[error("{path} is not an archive file: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Kafka assigned no journal partition in time (temporary).
    #[error("no partition of mailflow.journal was assigned within {0:?}")]
    NotAssigned(Duration),
}

impl ArchiveError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io { path: path.to_path_buf(), source }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Journal records read.
    pub records_read: u64,
    /// Records added to `.json` files (new ones: not copies of records archived before).
    pub records_added: u64,
    /// `.json` files written.
    pub metadata_written: u64,
    /// `.eml` files written.
    pub eml_written: u64,
    /// Records whose message id cannot name a file, or that are not JSON (skipped).
    pub skipped: u64,
    /// Messages whose content could not be read back intact (no `.eml`; logged).
    pub content_unreadable: u64,
}

impl std::fmt::Display for Summary {
    /// One line, as `mailflow archive` prints it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} records read, {} added, {} .json and {} .eml files written",
            self.records_read, self.records_added, self.metadata_written, self.eml_written
        )?;
        if self.skipped + self.content_unreadable > 0 {
            write!(f, " ({} records skipped, {} messages without content)", self.skipped, self.content_unreadable)?;
        }
        Ok(())
    }
}

/// Runs the archive into `out` until the end of the journal, or forever with `follow`.
pub async fn run(config: &EventLogConfig, out: &Path, follow: bool) -> Result<Summary, ArchiveError> {
    let dir = ArchiveDir::open(out)?;
    match config {
        EventLogConfig::Embedded { .. } => run_embedded(config, &dir, follow).await,
        EventLogConfig::Kafka { .. } => run_kafka(config, &dir, follow).await,
    }
}

async fn run_embedded(config: &EventLogConfig, dir: &ArchiveDir, follow: bool) -> Result<Summary, ArchiveError> {
    let mut summary = Summary::default();
    let mut positions = dir.positions()?;
    loop {
        // A read-only view is a snapshot of what was on disk: open a new one per pass.
        let log = crate::event_log::open_read_only(config, "mailflow-archive").await?;
        let partitions = log.partitions(topic::JOURNAL).unwrap_or(0);
        for partition in 0..partitions {
            loop {
                let from = positions.get(&partition).copied().unwrap_or(0);
                let records = log.read(topic::JOURNAL, partition, from, BATCH).await?;
                let Some(last) = records.last() else { break };
                let next = last.position.offset + 1;
                archive_batch(log.as_ref(), dir, &records, &mut summary).await?;
                positions.insert(partition, next);
                dir.save_positions(&positions)?;
                progress(&summary);
            }
        }
        if !follow {
            return Ok(summary);
        }
        tokio::time::sleep(FOLLOW_INTERVAL).await;
    }
}

async fn run_kafka(config: &EventLogConfig, dir: &ArchiveDir, follow: bool) -> Result<Summary, ArchiveError> {
    let mut summary = Summary::default();
    let log = crate::event_log::open_read_only(config, "mailflow-archive").await?;
    // Learnt from the broker when the log was opened; a missing journal is an
    // error (the archive creates no topic the router would then find).
    let partitions = log.partitions(topic::JOURNAL)?;
    let mut ends = HashMap::new();
    for partition in 0..partitions {
        ends.insert(partition, log.end_offset(topic::JOURNAL, partition).await?);
    }
    let mut member = log.join(GROUP, &[topic::JOURNAL]).await?;
    let started = Instant::now();
    let mut idle_since = Instant::now();
    // Next offset of every partition a record was read from.
    let mut reached: HashMap<u32, u64> = HashMap::new();
    loop {
        let mut batch = Vec::new();
        if let Some(first) = member.poll(Duration::from_secs(1)).await? {
            batch.push(first);
            while batch.len() < BATCH {
                match member.poll(Duration::ZERO).await {
                    Ok(Some(record)) => batch.push(record),
                    Ok(None) => break,
                    // Archive what arrived; the error shows again at the next poll.
                    Err(_) => break,
                }
            }
        }
        if batch.is_empty() {
            let assigned = member.assignment();
            if assigned.is_empty() && started.elapsed() > Duration::from_secs(60) {
                return Err(ArchiveError::NotAssigned(started.elapsed()));
            }
            let at_end = ends.iter().all(|(partition, end)| reached.get(partition).is_none_or(|next| next >= end));
            if !follow && !assigned.is_empty() && at_end && idle_since.elapsed() >= IDLE_END {
                break;
            }
            continue;
        }
        idle_since = Instant::now();
        archive_batch(log.as_ref(), dir, &batch, &mut summary).await?;
        let mut next: BTreeMap<u32, u64> = BTreeMap::new();
        for record in &batch {
            next.insert(record.position.partition, record.position.offset + 1);
        }
        for (partition, offset) in next {
            reached.insert(partition, offset);
            if let Err(err) = member.commit(topic::JOURNAL, partition, offset).await {
                tracing::warn!(error = %err, partition, "commit failed; these records will be read again (and deduplicated)");
            }
        }
        progress(&summary);
    }
    member.leave().await?;
    Ok(summary)
}

fn progress(summary: &Summary) {
    tracing::info!(
        records = summary.records_read,
        added = summary.records_added,
        eml = summary.eml_written,
        "archive progress"
    );
}

/// Archives one batch of journal records: per message, merges its records
/// into `<id>.json` and writes `<id>.eml` when a `Received` names its content
/// and the file is not there yet; then makes the renames durable.
async fn archive_batch(
    log: &dyn EventLog,
    dir: &ArchiveDir,
    records: &[Record],
    summary: &mut Summary,
) -> Result<(), ArchiveError> {
    // Message id → its records in this batch, in log order.
    let mut messages: Vec<(String, Vec<Value>)> = Vec::new();
    let mut contents: HashMap<String, ContentRef> = HashMap::new();
    for record in records {
        summary.records_read += 1;
        let id = String::from_utf8_lossy(&record.key).into_owned();
        if !store::is_safe_id(&id) {
            tracing::warn!(key = %id, offset = record.position.offset, "message id cannot name a file; skipped");
            summary.skipped += 1;
            continue;
        }
        let value: Value = match serde_json::from_slice(&record.value) {
            Ok(value) => value,
            Err(err) => {
                tracing::error!(error = %err, offset = record.position.offset, "journal record is not JSON; skipped");
                summary.skipped += 1;
                continue;
            }
        };
        // Decoded only for the content reference; records of a newer
        // version are archived as they are, without one.
        if let Ok(Envelope { event: JournalEvent::Received(received), .. }) =
            Envelope::<JournalEvent>::from_json(&record.value)
            && let Some(reference) = received.content
        {
            contents.insert(id.clone(), reference);
        }
        match messages.iter_mut().find(|(m, _)| *m == id) {
            Some((_, list)) => list.push(value),
            None => messages.push((id, vec![value])),
        }
    }
    for (id, new) in messages {
        let mut eml_written = false;
        if let Some(reference) = contents.get(&id)
            && !dir.has_eml(&id, reference.size)
        {
            match content::load(log, &id, reference).await {
                Ok(body) => {
                    dir.write_eml(&id, &body)?;
                    summary.eml_written += 1;
                    eml_written = true;
                }
                // The log may answer later: stop, and the next run retries from here.
                Err(ContentError::Log(err)) if err.is_temporary() => return Err(ContentError::Log(err).into()),
                // Missing or altered chunks will not mend: archive the records without it.
                Err(err) => {
                    tracing::error!(error = %err, message_id = %id, "content unreadable; archived without .eml");
                    summary.content_unreadable += 1;
                }
            }
        }
        let (records, added) = store::merge(dir.records(&id)?, &new);
        summary.records_added += added as u64;
        if added > 0 || eml_written {
            let eml = dir.eml_exists(&id).then(|| format!("{id}.eml"));
            dir.write_metadata(&id, &store::metadata(&id, &records, eml.as_deref()))?;
            summary.metadata_written += 1;
        }
    }
    dir.sync()
}
