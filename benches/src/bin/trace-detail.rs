//! Message trace benchmark (issue "Message trace": "a message's detail answers
//! in under a second with 1,000,000 messages in the log").
//!
//! Writes N messages' journal records — a `Received` and a `Delivered` each,
//! as the journal projector writes them — into `mailflow.journal` (12
//! partitions, key: message id) of a fresh embedded log, with many concurrent
//! appenders so group commit batches them. Then builds the [`TraceIndex`] from
//! the log as `mailflow serve` does at start (`trace::follow::catch_up`),
//! reporting the time and the growth of the resident set; then times the
//! detail of random messages (index lookup plus reading the records back by
//! position, `trace::detail::read`: what `GET /api/v1/trace/{id}` does) and
//! two searches.
//!
//! Usage: `cargo run --release -p mailflow-benches --bin trace-detail -- [N] [DIR]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::Utc;
use mailflow_actors::trace::{Query, TraceHandle, detail, follow, index::SubjectMatch, store};
use mailflow_events::Envelope;
use mailflow_events::journal::{Attempted, JournalEvent, Received, TraceRecord, TraceStatus};
use mailflow_events::log::embedded::{EmbeddedLog, Options};
use mailflow_events::log::{EventLog as _, TopicKind};
use mailflow_events::received::{Directionality, SmtpReply};
use mailflow_events::topic;

const PARTITIONS: u32 = 12;

/// xorshift64*: reproducible picks without a dependency.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

fn message_id(n: u64) -> String {
    format!("{n:032x}")
}

/// The two records of message `n`, as the projector writes them.
fn records(n: u64) -> [Envelope<JournalEvent>; 2] {
    let id = message_id(n);
    let received_at = Utc::now() - chrono::Duration::seconds((n % 86_400) as i64);
    let recipient = format!("user{n}@example.org");
    let record = |status: TraceStatus, detail: String| TraceRecord {
        status,
        sender: format!("sender{}@contoso.com", n % 1000),
        recipients: vec![recipient.clone()],
        subject: Some(format!("Quarterly report {n}")),
        internet_message_id: Some(format!("<{n}.bench@contoso.com>")),
        size: 4096,
        directionality: Directionality::Outbound,
        client_ip: Some("192.0.2.10".to_string()),
        client_hostname: Some("onprem.contoso.com".to_string()),
        server_ip: None,
        server_hostname: None,
        connector: Some("onprem".to_string()),
        custom_data: None,
        detail,
        record_id: Some(format!("mailflow.received/0/{n}/0")),
    };
    let mut delivered = record(TraceStatus::Delivered, "Message sent to mx.example.org".to_string());
    delivered.server_hostname = Some("mx.example.org".to_string());
    delivered.server_ip = Some("198.51.100.25".to_string());
    delivered.record_id = Some(format!("mailflow.delivery/0/{n}/0"));
    [
        Envelope::new(
            &id,
            "bench",
            received_at,
            JournalEvent::Received(Received {
                record: record(TraceStatus::Pending, "Message received by: mx.contoso.test".to_string()),
                received_at,
                original_client_ip: None,
                content: None,
            }),
        ),
        Envelope::new(
            &id,
            "bench",
            received_at + chrono::Duration::seconds(2),
            JournalEvent::Sent(Attempted {
                record: delivered,
                attempt: 1,
                reply: Some(SmtpReply::new(250, "2.0.0", "OK queued")),
                next_attempt_at: None,
            }),
        ),
    ]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() -> anyhow::Result<()> {
    let args = mailflow_benches::LogArgs::from_env(1_000_000)?;
    let (count, dir) = (args.count, args.dir.clone());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let log = Arc::new(EmbeddedLog::open(&dir, Options::default())?);
        log.create_topic(topic::JOURNAL, PARTITIONS, TopicKind::Events).await?;
        let mut existing = 0;
        for partition in 0..PARTITIONS {
            existing += log.end_offset(topic::JOURNAL, partition).await?;
        }
        if existing < 2 * count {
            let started = Instant::now();
            let appenders = 64;
            let mut tasks = Vec::new();
            for appender in 0..appenders {
                let log = Arc::clone(&log);
                tasks.push(tokio::spawn(async move {
                    let mut n = appender;
                    while n < count {
                        for record in records(n) {
                            log.append(topic::JOURNAL, record.message_id.as_bytes(), &record.to_json()).await?;
                        }
                        n += appenders;
                    }
                    anyhow::Ok(())
                }));
            }
            for task in tasks {
                task.await??;
            }
            println!("wrote {count} messages ({} records) in {:.1} s", 2 * count, started.elapsed().as_secs_f64());
        }

        let index = TraceHandle::default();
        let before = mailflow_benches::rss_kib();
        let started = Instant::now();
        let mut next = vec![0u64; PARTITIONS as usize];
        let applied = follow::catch_up(log.as_ref(), &index, &mut next).await?;
        let elapsed = started.elapsed();
        let after = mailflow_benches::rss_kib();
        let messages = index.read().map_or(0, |i| i.messages());
        println!(
            "built the index of {messages} messages from {applied} records in {:.2} s ({:.0} records/s); RSS +{} MiB = {:.0} bytes per message",
            elapsed.as_secs_f64(),
            applied as f64 / elapsed.as_secs_f64(),
            after.saturating_sub(before) / 1024,
            (after.saturating_sub(before) * 1024) as f64 / messages.max(1) as f64
        );

        // The checkpoint a restart loads instead of reading the whole journal.
        let trace_dir = dir.join("trace");
        let started = Instant::now();
        let bytes = store::encode(&*index.read().map_err(|_| anyhow::anyhow!("poisoned"))?, &next);
        store::save(&trace_dir, &bytes)?;
        let written = started.elapsed();
        let started = Instant::now();
        let (header, loaded) = store::load(&trace_dir)?.context("the checkpoint just written")?;
        let load = started.elapsed();
        anyhow::ensure!(header.next == next && loaded.messages() == messages, "the checkpoint loads back whole");
        drop(loaded);
        println!(
            "checkpoint of {} MiB written in {:.2} s, loaded in {:.2} s (instead of reading the journal: {:.2} s)",
            bytes.len() / (1024 * 1024),
            written.as_secs_f64(),
            load.as_secs_f64(),
            elapsed.as_secs_f64()
        );
        drop(bytes);

        // Detail of random messages: what GET /api/v1/trace/{id} does.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut times = Vec::new();
        for _ in 0..2000 {
            let id = message_id(next_random(&mut seed) % count);
            let started = Instant::now();
            let positions = index.read().ok().and_then(|i| i.positions(&id).map(<[_]>::to_vec)).unwrap_or_default();
            let events = detail::read(log.as_ref(), &positions).await?;
            times.push(started.elapsed());
            anyhow::ensure!(events.len() == 2, "message {id} has {} events", events.len());
        }
        times.sort();
        println!(
            "detail of {} random messages: p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
            times.len(),
            percentile(&times, 0.5).as_secs_f64() * 1e6,
            percentile(&times, 0.99).as_secs_f64() * 1e6,
            times.last().copied().unwrap_or_default().as_secs_f64() * 1e6
        );

        // Searches scan every message.
        let searches = [
            ("by sender", Query { sender: Some("sender7@contoso.com".into()), ..Query::default() }),
            (
                "by subject (contains, matches one)",
                Query {
                    subject: Some("report 123456".into()),
                    subject_match: Some(SubjectMatch::Ends),
                    ..Query::default()
                },
            ),
        ];
        for (name, query) in searches {
            let started = Instant::now();
            let result = index.read().map_err(|_| anyhow::anyhow!("poisoned"))?.search(&query, Utc::now(), chrono::Duration::days(90))?;
            println!("search {name}: {} rows in {:.1} ms", result.rows.len(), started.elapsed().as_secs_f64() * 1e3);
        }
        std::hint::black_box(index);
        anyhow::Ok(())
    })?;
    drop(args);
    Ok(())
}
