//! Event-log benchmarks (results with date and conditions in `benches/README.md`).
//!
//! - `embedded_append/{1,16,64}`: durable appends of 1 KiB records by that many
//!   concurrent appenders (each acknowledged only after fdatasync; group commit
//!   shares one fsync among whatever is queued). Target: ≥ 50,000/s at 64.
//! - `replay_delivery_events`: read and decode 1,000,000 `mailflow.delivery`
//!   envelopes from offset 0 across 12 partitions. Target: ≥ 1,000,000/s.
//! - `kafka_append/{1,16,64}`: the append benchmark against a Kafka-protocol
//!   broker started on loopback, for reference. Skipped with a message when the
//!   broker is not installed (`MAILFLOW_BENCH_KAFKA=0` skips it on purpose).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use mailflow_benches::{delivery_envelopes, replay_decode};
use mailflow_events::log::embedded::{EmbeddedLog, Options};
use mailflow_events::log::{EventLog, TopicKind};
use mailflow_tests::logs::TestLog;

const RECORD: usize = 1024;
const REPLAY_EVENTS: usize = 1_000_000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime")
}

/// `iters` appends spread over `appenders` tasks; returns the wall time.
async fn append_concurrently(log: Arc<dyn EventLog>, topic: &str, appenders: u64, iters: u64) -> Duration {
    let value = vec![b'x'; RECORD];
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..appenders {
        let log = Arc::clone(&log);
        let topic = topic.to_string();
        let value = value.clone();
        let count = iters / appenders + u64::from(task < iters % appenders);
        tasks.spawn(async move {
            for i in 0..count {
                let key = format!("dest-{task}-{}", i % 8);
                log.append(&topic, key.as_bytes(), &value).await.expect("append");
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    start.elapsed()
}

fn append_bench(c: &mut Criterion, name: &str, log: Arc<dyn EventLog>, rt: &tokio::runtime::Runtime) {
    let topic = "bench.append";
    rt.block_on(log.create_topic(topic, 12, TopicKind::Events)).expect("topic");
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    for appenders in [1u64, 16, 64] {
        group.bench_with_input(BenchmarkId::from_parameter(appenders), &appenders, |b, &appenders| {
            b.to_async(rt).iter_custom(|iters| append_concurrently(Arc::clone(&log), topic, appenders, iters));
        });
    }
    group.finish();
}

fn embedded_append(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let log: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(dir.path(), Options::default()).expect("open"));
    append_bench(c, "embedded_append", log, &rt);
}

fn kafka_append(c: &mut Criterion) {
    if std::env::var("MAILFLOW_BENCH_KAFKA").as_deref() == Ok("0") {
        return;
    }
    let rt = runtime();
    let test_log = match TestLog::kafka() {
        Ok(log) => log,
        Err(err) => {
            eprintln!("kafka_append not run: {err}");
            return;
        }
    };
    append_bench(c, "kafka_append", Arc::clone(&test_log.log), &rt);
}

/// Fills a fresh embedded log with `REPLAY_EVENTS` delivery events (once,
/// and only when the replay benchmark is selected).
fn replay_fixture(rt: &tokio::runtime::Runtime) -> (tempfile::TempDir, Arc<dyn EventLog>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let log: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(dir.path(), Options::default()).expect("open"));
    let topic = mailflow_events::topic::DELIVERY;
    rt.block_on(async {
        log.create_topic(topic, 12, TopicKind::Events).await.expect("topic");
        let events = Arc::new(delivery_envelopes(REPLAY_EVENTS));
        let mut tasks = tokio::task::JoinSet::new();
        for task in 0..64 {
            let log = Arc::clone(&log);
            let events = Arc::clone(&events);
            tasks.spawn(async move {
                for (key, value) in events.iter().skip(task).step_by(64) {
                    log.append(topic, key.as_bytes(), value).await.expect("append");
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    });
    (dir, log)
}

fn replay(c: &mut Criterion) {
    let rt = runtime();
    let mut fixture = None;
    let mut group = c.benchmark_group("replay_delivery_events");
    group.throughput(Throughput::Elements(REPLAY_EVENTS as u64));
    group.sample_size(10);
    group.bench_function("1M", |b| {
        let (_, log) = fixture.get_or_insert_with(|| replay_fixture(&rt));
        let log = Arc::clone(log);
        b.to_async(&rt).iter(|| async {
            let decoded = replay_decode(Arc::clone(&log), mailflow_events::topic::DELIVERY).await.expect("replay");
            assert_eq!(decoded, REPLAY_EVENTS);
        });
    });
    group.finish();
}

/// Decoding alone, one core: what the replay target leaves per event.
fn decode(c: &mut Criterion) {
    let events = delivery_envelopes(10_000);
    let mut group = c.benchmark_group("decode_delivery_event");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("10k", |b| {
        b.iter(|| {
            for (_, json) in &events {
                let envelope: mailflow_events::Envelope<mailflow_events::delivery::DeliveryEvent> =
                    mailflow_events::Envelope::from_json(json).expect("decodes");
                std::hint::black_box(envelope);
            }
        });
    });
    group.finish();
}

criterion_group!(benches, embedded_append, replay, decode, kafka_append);
criterion_main!(benches);
