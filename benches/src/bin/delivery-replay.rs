//! Replay benchmark of the delivery state (issue: "rebuild the state of
//! 1,000,000 queued/deferred messages from the log: ≤ 2 s; ≤ 256 bytes per
//! queued message").
//!
//! Writes N events for one destination: `Queued`, and every 1,000th a
//! destination-level `Deferred` of the head of the queue, into one partition of a fresh embedded log
//! (many concurrent appenders, so group commit batches them), then measures
//! `replay::fold` (what `mailflow replay --state` runs) of that partition: wall time, events per second,
//! and the growth of the resident set while the state is held, per message.
//!
//! Then writes the state as a snapshot and times loading it back.
//!
//! Usage: `cargo run --release -p mailflow-benches --bin delivery-replay -- [N] [DIR]`

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use mailflow_events::Envelope;
use mailflow_events::content::ContentRef;
use mailflow_events::delivery::{
    Deferred, DeliveryEvent, Destination, DestinationKind, Queued, QueuedRecipient, RouteReason, Scope,
};
use mailflow_events::log::EventLog as _;
use mailflow_events::log::embedded::{EmbeddedLog, Options};
use mailflow_events::topic;

fn main() -> anyhow::Result<()> {
    let args = mailflow_benches::LogArgs::from_env(1_000_000)?;
    let (count, dir) = (args.count, args.dir.clone());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let log = Arc::new(EmbeddedLog::open(&dir, Options::default())?);
        log.create_topic(topic::DELIVERY, 1, mailflow_events::log::TopicKind::Events).await?;
        let destination = Destination { kind: DestinationKind::Internet, name: "example.org".into(), next_hop: None };
        let existing = log.end_offset(topic::DELIVERY, 0).await?;
        if existing < count {
            let started = Instant::now();
            let appenders = 64;
            let mut tasks = Vec::new();
            for appender in 0..appenders {
                let log = Arc::clone(&log);
                let destination = destination.clone();
                tasks.push(tokio::spawn(async move {
                    let mut n = appender;
                    while n < count {
                        let now = Utc::now();
                        // Every 1,000th event is a destination-level deferral
                        // of the queue's head, as the delivery actor writes them.
                        let deferral = n % 1000 == 999;
                        let id = if deferral { format!("{:032x}", 0) } else { format!("{n:032x}") };
                        let event = if deferral {
                            DeliveryEvent::Deferred(Deferred {
                                destination: destination.clone(),
                                attempt: 1,
                                recipients: vec![format!("user{n}@example.org")],
                                scope: Scope::Destination,
                                reply: None,
                                error: Some("4.4.316 Connection refused".into()),
                                remote_host: None,
                                remote_ip: None,
                                next_attempt_at: now,
                                delay_notice: None,
                            })
                        } else {
                            DeliveryEvent::Queued(Queued {
                                destination: destination.clone(),
                                route: RouteReason::Mx,
                                recipients: vec![QueuedRecipient {
                                    address: format!("user{n}@example.org"),
                                    notify: vec![],
                                    orcpt: None,
                                }],
                                mail_from: "sender@contoso.com".into(),
                                dsn_return: None,
                                dsn_envid: None,
                                body: Default::default(),
                                smtputf8: false,
                                require_tls: false,
                                disclaimer: None,
                                content: ContentRef { partition: 0, first_offset: n, chunks: 1, size: 1024, crc32: 0 },
                                prepend_headers: vec![],
                                remove_headers: vec![],
                                subject_prefix: None,
                                folder: None,
                                received_at: now,
                                expires_at: now + chrono::Duration::hours(24),
                            })
                        };
                        let envelope = Envelope::new(&id, "bench", now, event);
                        log.append_to(topic::DELIVERY, 0, b"internet:example.org", &envelope.to_json()).await?;
                        n += appenders;
                    }
                    anyhow::Ok(())
                }));
            }
            for task in tasks {
                task.await??;
            }
            println!("wrote {count} events in {:.1} s", started.elapsed().as_secs_f64());
        }
        let before = mailflow_benches::rss_kib();
        let started = Instant::now();
        let until = mailflow_actors::replay::Until::default();
        let state = mailflow_actors::replay::fold(log.as_ref(), 0, until, &mut |_, _| {}).await?;
        let elapsed = started.elapsed();
        let after = mailflow_benches::rss_kib();
        let queued = state.depth();
        println!(
            "replayed {} events in {:.3} s ({:.0} events/s); {queued} messages queued; RSS +{} MiB = {:.0} bytes per queued message",
            state.next_offset,
            elapsed.as_secs_f64(),
            state.next_offset as f64 / elapsed.as_secs_f64(),
            (after.saturating_sub(before)) / 1024,
            (after.saturating_sub(before) * 1024) as f64 / queued.max(1) as f64
        );
        // The same state through a snapshot: written once, then loaded as a
        // partition taken on does (the events after it would follow).
        log.create_topic(topic::SNAPSHOTS, 1, mailflow_events::log::TopicKind::Snapshots).await?;
        let started = Instant::now();
        let data = mailflow_actors::delivery::snapshot::serialise(&state);
        mailflow_actors::delivery::snapshot::write(log.as_ref(), 0, state.next_offset, &data).await?;
        let written = started.elapsed();
        let started = Instant::now();
        let loaded = mailflow_actors::delivery::snapshot::load(log.as_ref(), 0).await;
        let load = started.elapsed();
        anyhow::ensure!(loaded.as_ref() == Some(&state), "the snapshot loads back equal");
        println!(
            "snapshot of {} MiB written in {:.3} s, loaded in {:.3} s ({queued} messages)",
            data.len() / (1024 * 1024),
            written.as_secs_f64(),
            load.as_secs_f64()
        );
        std::hint::black_box(state);
        anyhow::Ok(())
    })?;
    drop(args);
    Ok(())
}
