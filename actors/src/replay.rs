//! Incident replay (`mailflow replay --state`, `--at`, `--verify`): the
//! delivery state folded from the log alone, as of any past instant, with the
//! same pure [`PartitionState::apply`] the delivery actor runs, so what the
//! replay shows is what the router had.

use std::io::Write as _;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use mailflow_events::log::EventLog;
use mailflow_events::topic;
use serde::Serialize;

use crate::admin::client::AdminClient;
use crate::admin::views::{QueueSummary, summaries};
use crate::config::Config;
use crate::delivery::actor::PartitionView;
use crate::delivery::state::PartitionState;
use crate::event_log;

/// Where a fold stops.
#[derive(Debug, Clone, Copy, Default)]
pub struct Until {
    /// Stop before this offset.
    pub offset: Option<u64>,
    /// Stop at the first record appended after this instant.
    pub at: Option<DateTime<Utc>>,
}

/// Folds partition `partition` of `mailflow.delivery` from offset 0 until
/// `until`; `progress` is told the events folded so far, now and then.
pub async fn fold(
    log: &dyn EventLog,
    partition: u32,
    until: Until,
    progress: &mut dyn FnMut(u32, u64),
) -> anyhow::Result<PartitionState> {
    let mut state = PartitionState::default();
    let at_ms = until.at.map(|t| t.timestamp_millis());
    let mut offset = 0;
    let mut folded = 0u64;
    'read: loop {
        let records = log.read(topic::DELIVERY, partition, offset, 4096).await?;
        let Some(last) = records.last() else { break };
        offset = last.position.offset + 1;
        for record in &records {
            if until.offset.is_some_and(|end| record.position.offset >= end)
                || at_ms.is_some_and(|at| record.timestamp_ms > at)
            {
                break 'read;
            }
            // What cannot be decoded is skipped, as the actor skips it.
            let _ = state.apply_record(record);
            folded += 1;
        }
        progress(partition, folded);
    }
    Ok(state)
}

/// One partition's fold, as `GET /api/v1/state` shows it.
#[derive(Debug, Serialize)]
struct Folded {
    partition: u32,
    replaying: bool,
    state: PartitionState,
}

/// A progress line on standard error at most once a second.
fn progress_printer() -> impl FnMut(u32, u64) {
    let mut last = Instant::now();
    move |partition, folded| {
        if last.elapsed() >= Duration::from_secs(1) {
            eprintln!("replaying partition {partition}: {folded} events folded");
            last = Instant::now();
        }
    }
}

/// `mailflow replay --state [--at T]`: prints the delivery state folded from the log.
pub async fn print_state(
    config: &Config,
    at: Option<DateTime<Utc>>,
    only: Option<u32>,
    json: bool,
) -> anyhow::Result<()> {
    let log = event_log::open_read_only(&config.event_log, "mailflow-replay").await.context("opening the event log")?;
    let partitions: Vec<u32> = match only {
        Some(p) => vec![p],
        None => (0..log.partitions(topic::DELIVERY).unwrap_or(0)).collect(),
    };
    let mut progress = progress_printer();
    let mut folded = Vec::new();
    for partition in partitions {
        let state = fold(log.as_ref(), partition, Until { offset: None, at }, &mut progress).await?;
        folded.push(Folded { partition, replaying: false, state });
    }
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, &folded)?;
        writeln!(out)?;
        return Ok(());
    }
    let views: Vec<PartitionView<'_>> = folded
        .iter()
        .map(|f| PartitionView {
            partition: f.partition,
            state: &f.state,
            replaying: false,
            snapshot_at: 0,
            replay_remaining: 0,
        })
        .collect();
    let queues: Vec<QueueSummary> = summaries(&views);
    if let Some(at) = at {
        writeln!(out, "delivery state as of {}", at.to_rfc3339())?;
    }
    for queue in &queues {
        writeln!(
            out,
            "{} [{}] depth {} attempts {} next {} last error {}",
            queue.key,
            queue.state,
            queue.depth,
            queue.attempts,
            queue.next_attempt_at.map_or_else(|| "-".to_string(), |t| t.to_rfc3339()),
            queue.last_error.as_deref().unwrap_or("-")
        )?;
        let destination = folded.iter().find_map(|f| f.state.destinations.get(&queue.key)).into_iter();
        for (place, message) in destination.flat_map(|d| d.queue.iter()).enumerate() {
            writeln!(
                out,
                "  {place:>5} {} received {} attempts {} pending {} next {} last {}",
                message.message_id,
                message.received_at.to_rfc3339(),
                message.attempts,
                message.pending.join(","),
                message.next_attempt_at.map_or_else(|| "-".to_string(), |t| t.to_rfc3339()),
                message.last_error.as_deref().unwrap_or("-")
            )?;
        }
    }
    eprintln!("{} destinations, {} messages queued", queues.len(), queues.iter().map(|q| q.depth).sum::<usize>());
    Ok(())
}

/// `mailflow replay --verify`: folds each partition the running router owns up
/// to the offset its live state has reached and compares the two; true when
/// every partition is equal.
pub async fn verify(config: &Config, client: &AdminClient, json: bool) -> anyhow::Result<bool> {
    let live = client.get("/api/v1/state").await?;
    let live = live.as_array().context("the admin API's state is not a list of partitions")?;
    let log = event_log::open_read_only(&config.event_log, "mailflow-replay").await.context("opening the event log")?;
    let mut progress = progress_printer();
    let mut report = Vec::new();
    let mut all_same = true;
    for partition in live {
        let number = partition["partition"].as_u64().context("partition number")? as u32;
        let live_state = &partition["state"];
        let end = live_state["next_offset"].as_u64().context("next_offset")?;
        let rebuilt = fold(log.as_ref(), number, Until { offset: Some(end), at: None }, &mut progress).await?;
        let rebuilt = serde_json::to_value(&rebuilt)?;
        let same = rebuilt == *live_state;
        all_same &= same;
        report.push(serde_json::json!({ "partition": number, "next_offset": end, "same": same }));
        if !json {
            println!(
                "partition {number} up to offset {end}: {}",
                if same { "rebuilt state equals the live state" } else { "DIFFERS from the live state" }
            );
        }
    }
    if json {
        println!("{}", serde_json::json!({ "same": all_same, "partitions": report }));
    }
    Ok(all_same)
}
