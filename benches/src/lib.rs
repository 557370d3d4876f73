//! Shared pieces of the benchmarks: realistic events and the replay loop.
//!
//! The delivery events are built from the golden fixtures of
//! `events/tests/fixtures/`, so the benchmark decodes what the router writes.

use std::sync::Arc;

use chrono::Utc;
use mailflow_events::Envelope;
use mailflow_events::delivery::DeliveryEvent;
use mailflow_events::log::{EventLog, LogError};

/// The arguments of the log benchmarks, `[N] [DIR]`: how many to write
/// (default `default_count`) and where the embedded log lives. With DIR the
/// log is kept for another run (and what it holds is reused); without it, a
/// temporary directory is removed when this is dropped.
#[derive(Debug)]
pub struct LogArgs {
    /// N.
    pub count: u64,
    /// The log directory.
    pub dir: std::path::PathBuf,
    _temp: tempfile::TempDir,
}

impl LogArgs {
    /// From the command line.
    pub fn from_env(default_count: u64) -> anyhow::Result<Self> {
        let args: Vec<String> = std::env::args().collect();
        let count = args.get(1).map(|n| n.parse()).transpose()?.unwrap_or(default_count);
        let temp = tempfile::tempdir()?;
        let dir = args.get(2).map_or_else(|| temp.path().join("log"), std::path::PathBuf::from);
        Ok(Self { count, dir, _temp: temp })
    }
}

/// `count` delivery envelopes as (key, JSON), cycling through every delivery
/// fixture with fresh event and message ids; keys spread over 500 destinations.
pub fn delivery_envelopes(count: usize) -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../events/tests/fixtures/v1");
    let mut templates: Vec<Envelope<DeliveryEvent>> = std::fs::read_dir(&dir)
        .expect("fixtures directory")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("delivery."))
        .map(|e| Envelope::from_json(&std::fs::read(e.path()).expect("fixture")).expect("fixture decodes"))
        .collect();
    templates.sort_by_key(|e| e.event_id);
    assert!(!templates.is_empty(), "no delivery fixtures in {}", dir.display());
    (0..count)
        .map(|i| {
            let mut envelope = templates[i % templates.len()].clone();
            envelope.event_id = uuid::Uuid::now_v7();
            envelope.message_id = format!("{:032x}", i);
            envelope.occurred_at = Utc::now();
            (format!("internet:destination-{}.example", i % 500), envelope.to_json())
        })
        .collect()
}

/// Reads every partition of `topic` from 0 and decodes every envelope, one
/// task per partition; returns the number of events decoded.
pub async fn replay_decode(log: Arc<dyn EventLog>, topic: &'static str) -> Result<usize, LogError> {
    let partitions = log.partitions(topic)?;
    let mut tasks = tokio::task::JoinSet::new();
    for partition in 0..partitions {
        let log = Arc::clone(&log);
        tasks.spawn(async move {
            let end = log.end_offset(topic, partition).await?;
            let mut offset = 0;
            let mut decoded = 0;
            while offset < end {
                let records = log.read(topic, partition, offset, 4096).await?;
                for record in &records {
                    let envelope: Envelope<DeliveryEvent> = Envelope::from_json(&record.value).map_err(|e| {
                        LogError::Corrupt { path: format!("{topic}/{partition}: {e}"), at: record.position.offset }
                    })?;
                    std::hint::black_box(envelope);
                    decoded += 1;
                }
                offset = records.last().map_or(end, |r| r.position.offset + 1);
            }
            Ok::<_, LogError>(decoded)
        });
    }
    let mut total = 0;
    while let Some(result) = tasks.join_next().await {
        total += result.map_err(|_| LogError::Closed)??;
    }
    Ok(total)
}

/// Resident set size of this process in KiB (`VmRSS` of `/proc/self/status`; 0 if unknown).
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
