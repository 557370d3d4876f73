//! Prometheus metrics of the process, served as `GET /metrics` on the admin
//! listener (OpenMetrics text, which Prometheus scrapes natively).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `mailflow_smtp_sessions_total` | counter | `listener` |
//! | `mailflow_smtp_sessions_active` | gauge | |
//! | `mailflow_smtp_messages_accepted_total` | counter | `listener` |
//! | `mailflow_smtp_refusals_total` | counter | `stage` (connection, recipient, message), `reason`, `code` (e.g. `550 5.4.1`) |
//! | `mailflow_verdicts_total` | counter | `scl`, `verdict`, `action` |
//! | `mailflow_delivery_outcomes_total` | counter | `outcome` (the delivery event: `Delivered`, `Deferred`, `Failed`, `Expired`, ...) |
//! | `mailflow_delivery_latency_seconds` | histogram | | (receipt to delivery, per delivered copy) |
//! | `mailflow_queue_depth` | gauge | `destination`, `state` |
//! | `mailflow_queue_oldest_age_seconds` | gauge | `destination` |
//! | `mailflow_event_log_append_seconds` | histogram | `topic` |
//! | `mailflow_event_log_append_errors_total` | counter | `topic` |
//! | `mailflow_consumer_lag` | gauge | `group`, `topic`, `partition` (records after the group's position) |
//! | `mailflow_delivery_replay_remaining` | gauge | `partition` (events still to fold before delivery resumes) |
//! | `mailflow_trace_records_read_total` | counter | | (journal records the message-trace index read since start: all of them on a rebuild, only those after the checkpoint on a resume) |
//! | `mailflow_trace_messages` | gauge | | (messages in the message-trace index) |
//! | `mailflow_malloc_bytes` | gauge | `state` (`in_use`: allocated, `free`: freed and kept by glibc's malloc; absent with another C library) |
//!
//! Counters and histograms are updated where things happen; the queue, lag
//! and replay gauges are computed when scraped, from the delivery state and
//! the log's end offsets, so they are never stale.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use mailflow_events::log::EventLog;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// `listener`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ListenerLabels {
    /// Listener name.
    pub listener: String,
}

/// Labels of `mailflow_smtp_refusals_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RefusalLabels {
    /// `connection`, `recipient` or `message`.
    pub stage: String,
    /// The recorded reason, e.g. `unknown_recipient`.
    pub reason: String,
    /// Reply code and enhanced status, e.g. `550 5.4.1`.
    pub code: String,
}

/// Labels of `mailflow_verdicts_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct VerdictLabels {
    /// Spam confidence level, `-1` to `9`.
    pub scl: String,
    /// Verdict category, e.g. `not_spam`, `spam`, `high_confidence_phish`.
    pub verdict: String,
    /// The action taken, e.g. `deliver`, `junk`, `quarantine`.
    pub action: String,
}

/// `outcome`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// The delivery event's type.
    pub outcome: String,
}

/// `destination` and `state`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct QueueLabels {
    /// Destination key, e.g. `internet:example.org`.
    pub destination: String,
    /// `ready`, `retry` or `suspended`.
    pub state: String,
}

/// `destination`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DestinationLabels {
    /// Destination key.
    pub destination: String,
}

/// `topic`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TopicLabels {
    /// Topic name.
    pub topic: String,
}

/// `group`, `topic`, `partition`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct LagLabels {
    /// Consumer group.
    pub group: String,
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
}

/// `state` of the allocator's bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct MallocLabels {
    /// `in_use` or `free`.
    pub state: String,
}

/// `partition`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PartitionLabels {
    /// Partition.
    pub partition: u32,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric of the process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Sessions started, per listener.
    pub sessions: Family<ListenerLabels, Counter>,
    /// Sessions running.
    pub sessions_active: Gauge,
    /// Messages acknowledged with 250, per listener.
    pub accepted: Family<ListenerLabels, Counter>,
    /// Refusals recorded by the front door.
    pub refusals: Family<RefusalLabels, Counter>,
    /// Verdicts reached.
    pub verdicts: Family<VerdictLabels, Counter>,
    /// Delivery events recorded by this process's delivery role.
    pub delivery_outcomes: Family<OutcomeLabels, Counter>,
    /// Receipt to delivery.
    pub delivery_latency: Histogram,
    /// Event-log appends, until durable.
    pub append_latency: HistogramFamily<TopicLabels>,
    /// Event-log appends that failed.
    pub append_errors: Family<TopicLabels, Counter>,
    /// Journal records the trace index read since start.
    pub trace_records_read: Counter,
    /// Messages in the trace index.
    pub trace_messages: Gauge,
    queue_depth: Family<QueueLabels, Gauge>,
    queue_oldest_age: Family<DestinationLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    consumer_lag: Family<LagLabels, Gauge>,
    replay_remaining: Family<PartitionLabels, Gauge>,
    malloc_bytes: Family<MallocLabels, Gauge>,
    /// Each group member's position: `(group, topic, partition)` → next offset to handle.
    positions: Mutex<HashMap<(String, String, u32), u64>>,
    /// One scrape at a time refreshes the computed gauges.
    scrape: tokio::sync::Mutex<()>,
}

fn append_histogram() -> Histogram {
    // 50 µs to ~1.6 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("mailflow");
        let sessions = Family::<ListenerLabels, Counter>::default();
        registry.register("smtp_sessions", "SMTP sessions started", sessions.clone());
        let sessions_active = Gauge::default();
        registry.register("smtp_sessions_active", "SMTP sessions running", sessions_active.clone());
        let accepted = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "smtp_messages_accepted",
            "Messages acknowledged with 250 (content and event durable)",
            accepted.clone(),
        );
        let refusals = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "smtp_refusals",
            "Connections, recipients and messages refused by the front door",
            refusals.clone(),
        );
        let verdicts = Family::<VerdictLabels, Counter>::default();
        registry.register("verdicts", "Verdicts reached, by SCL, verdict and action", verdicts.clone());
        let delivery_outcomes = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "delivery_outcomes",
            "Delivery events recorded (deliveries, deferrals, failures, expiries)",
            delivery_outcomes.clone(),
        );
        // 50 ms to ~1.8 h.
        let delivery_latency = Histogram::new(exponential_buckets(0.05, 2.0, 18));
        registry.register_with_unit(
            "delivery_latency",
            "Time from receipt to delivery of each delivered copy",
            Unit::Seconds,
            delivery_latency.clone(),
        );
        let append_latency: HistogramFamily<TopicLabels> = Family::new_with_constructor(append_histogram);
        registry.register_with_unit(
            "event_log_append",
            "Event-log appends, from call to durable",
            Unit::Seconds,
            append_latency.clone(),
        );
        let append_errors = Family::<TopicLabels, Counter>::default();
        registry.register("event_log_append_errors", "Event-log appends that failed", append_errors.clone());
        let trace_records_read = Counter::default();
        registry.register(
            "trace_records_read",
            "Journal records the message-trace index read since start",
            trace_records_read.clone(),
        );
        let trace_messages = Gauge::default();
        registry.register("trace_messages", "Messages in the message-trace index", trace_messages.clone());
        let queue_depth = Family::<QueueLabels, Gauge>::default();
        registry.register("queue_depth", "Messages queued per destination owned by this process", queue_depth.clone());
        let queue_oldest_age = Family::<DestinationLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register_with_unit(
            "queue_oldest_age",
            "Age of the oldest message queued per destination",
            Unit::Seconds,
            queue_oldest_age.clone(),
        );
        let consumer_lag = Family::<LagLabels, Gauge>::default();
        registry.register(
            "consumer_lag",
            "Records in the log after the consumer group's position, per owned partition",
            consumer_lag.clone(),
        );
        let replay_remaining = Family::<PartitionLabels, Gauge>::default();
        registry.register(
            "delivery_replay_remaining",
            "Delivery events still to fold before the partition resumes delivering",
            replay_remaining.clone(),
        );
        let malloc_bytes = Family::<MallocLabels, Gauge>::default();
        registry.register_with_unit(
            "malloc",
            "Bytes of the C allocator: allocated (in_use) and freed but kept (free)",
            Unit::Bytes,
            malloc_bytes.clone(),
        );
        Self {
            registry,
            sessions,
            sessions_active,
            accepted,
            refusals,
            verdicts,
            delivery_outcomes,
            delivery_latency,
            append_latency,
            append_errors,
            trace_records_read,
            trace_messages,
            queue_depth,
            queue_oldest_age,
            consumer_lag,
            replay_remaining,
            malloc_bytes,
            positions: Mutex::new(HashMap::new()),
            scrape: tokio::sync::Mutex::new(()),
        }
    }

    /// Notes that `group` has handled `topic`/`partition` up to `next_offset`.
    pub fn consumed(&self, group: &str, topic: &str, partition: u32, next_offset: u64) {
        let mut positions = self.positions.lock().unwrap_or_else(|e| e.into_inner());
        positions.insert((group.to_string(), topic.to_string(), partition), next_offset);
    }

    /// Forgets the positions of `group` outside `assignment` (after a rebalance or a leave).
    pub fn assigned(&self, group: &str, assignment: &[(String, u32)]) {
        let mut positions = self.positions.lock().unwrap_or_else(|e| e.into_inner());
        positions.retain(|(g, topic, partition), _| {
            g != group || assignment.iter().any(|(t, p)| t == topic && p == partition)
        });
    }

    /// Refreshes the computed gauges and renders everything.
    pub async fn render(
        &self,
        log: &dyn EventLog,
        delivery: Option<&crate::delivery::actor::DeliveryHandle>,
    ) -> String {
        let _one = self.scrape.lock().await;
        // Each consumer's position: the groups' committed offsets, and the
        // delivery role's fold (it commits no offsets).
        let mut positions: Vec<(LagLabels, u64)> = {
            let positions = self.positions.lock().unwrap_or_else(|e| e.into_inner());
            positions
                .iter()
                .map(|((group, topic, partition), next)| {
                    (LagLabels { group: group.clone(), topic: topic.clone(), partition: *partition }, *next)
                })
                .collect()
        };
        self.queue_depth.clear();
        self.queue_oldest_age.clear();
        self.replay_remaining.clear();
        if let Some(delivery) = delivery {
            let answer = delivery
                .ask(|views| {
                    let queues = crate::admin::views::summaries(views);
                    let partitions: Vec<(u32, u64, u64)> =
                        views.iter().map(|v| (v.partition, v.state.next_offset, v.replay_remaining)).collect();
                    (queues, partitions)
                })
                .await;
            if let Some((queues, partitions)) = answer {
                let now = chrono::Utc::now();
                for queue in queues {
                    let labels = QueueLabels { destination: queue.key.clone(), state: queue.state.clone() };
                    self.queue_depth.get_or_create(&labels).set(queue.depth as i64);
                    if let Some(oldest) = queue.oldest_received_at {
                        let age = (now - oldest).num_milliseconds().max(0) as f64 / 1000.0;
                        self.queue_oldest_age.get_or_create(&DestinationLabels { destination: queue.key }).set(age);
                    }
                }
                for (partition, next, remaining) in partitions {
                    self.replay_remaining.get_or_create(&PartitionLabels { partition }).set(remaining as i64);
                    let labels = LagLabels {
                        group: crate::delivery::actor::GROUP.to_string(),
                        topic: mailflow_events::topic::DELIVERY.to_string(),
                        partition,
                    };
                    positions.push((labels, next));
                }
            }
        }
        self.consumer_lag.clear();
        for (labels, next) in positions {
            // A broker that does not answer leaves the series out of this scrape.
            let end =
                tokio::time::timeout(Duration::from_secs(2), log.end_offset(&labels.topic, labels.partition)).await;
            if let Ok(Ok(end)) = end {
                self.consumer_lag.get_or_create(&labels).set(end.saturating_sub(next) as i64);
            }
        }
        if let Some(usage) = crate::memory::usage() {
            for (state, bytes) in [("in_use", usage.in_use), ("free", usage.free)] {
                self.malloc_bytes.get_or_create(&MallocLabels { state: state.to_string() }).set(bytes as i64);
            }
        }
        let mut text = String::new();
        if let Err(err) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::warn!(error = %err, "metrics not encoded");
        }
        text
    }
}

/// The wire name of a serde enum value (e.g. `unknown_recipient`), for a label.
pub fn label<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        Ok(other) => other.to_string(),
        Err(_) => "unknown".to_string(),
    }
}

/// Counts a refusal the front door records.
pub fn refused(event: &mailflow_events::received::ReceivedEvent) {
    use mailflow_events::received::ReceivedEvent;
    let (stage, reply, reason) = match event {
        ReceivedEvent::ConnectionRefused(r) => ("connection", &r.reply, &r.reason),
        ReceivedEvent::RecipientRejected(r) => ("recipient", &r.reply, &r.reason),
        ReceivedEvent::MessageRejected(r) => ("message", &r.reply, &r.reason),
        ReceivedEvent::MessageReceived(_) => return,
    };
    let code = match &reply.enhanced {
        Some(enhanced) => format!("{} {enhanced}", reply.code),
        None => reply.code.to_string(),
    };
    let labels = RefusalLabels { stage: stage.to_string(), reason: label(reason), code };
    metrics().refusals.get_or_create(&labels).inc();
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// Counts a session for as long as it lives.
#[derive(Debug)]
pub struct SessionGauge(());

impl SessionGauge {
    /// A session on `listener` began.
    pub fn start(listener: &str) -> Self {
        let metrics = metrics();
        metrics.sessions.get_or_create(&ListenerLabels { listener: listener.to_string() }).inc();
        metrics.sessions_active.inc();
        Self(())
    }
}

impl Drop for SessionGauge {
    fn drop(&mut self) {
        metrics().sessions_active.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_openmetrics_with_units_and_total_suffixes() {
        let metrics = Metrics::new();
        metrics.accepted.get_or_create(&ListenerLabels { listener: "smtp".into() }).inc();
        metrics
            .refusals
            .get_or_create(&RefusalLabels {
                stage: "recipient".into(),
                reason: "unknown_recipient".into(),
                code: "550 5.4.1".into(),
            })
            .inc();
        metrics.append_latency.get_or_create(&TopicLabels { topic: "mailflow.received".into() }).observe(0.002);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &metrics.registry).unwrap();
        assert!(text.contains("mailflow_smtp_messages_accepted_total{listener=\"smtp\"} 1\n"), "{text}");
        assert!(
            text.contains(
                "mailflow_smtp_refusals_total{stage=\"recipient\",reason=\"unknown_recipient\",code=\"550 5.4.1\"} 1\n"
            ),
            "{text}"
        );
        assert!(text.contains("# TYPE mailflow_event_log_append_seconds histogram\n"), "{text}");
        assert!(text.contains("mailflow_event_log_append_seconds_count{topic=\"mailflow.received\"} 1\n"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn positions_outside_the_assignment_are_forgotten() {
        let metrics = Metrics::new();
        metrics.consumed("g", "t", 0, 5);
        metrics.consumed("g", "t", 1, 7);
        metrics.consumed("other", "t", 1, 9);
        metrics.assigned("g", &[("t".to_string(), 1)]);
        let positions = metrics.positions.lock().unwrap();
        assert_eq!(positions.len(), 2);
        assert_eq!(positions.get(&("g".to_string(), "t".to_string(), 1)), Some(&7));
        assert_eq!(positions.get(&("other".to_string(), "t".to_string(), 1)), Some(&9));
    }
}
