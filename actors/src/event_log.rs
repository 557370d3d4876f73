//! Opens the configured event log and creates the router's topics.

use std::sync::Arc;
use std::time::Duration;

use mailflow_events::content::{self, ContentError, ContentRef};
use mailflow_events::log::embedded::{EmbeddedLog, Options};
#[cfg(feature = "kafka")]
use mailflow_events::log::kafka::{KafkaLog, KafkaOptions};
use mailflow_events::log::{EventLog, GroupMember, LogError, Position, Record, TopicKind};
use mailflow_events::topic;

use crate::config::EventLogConfig;

/// Opens the log `config` names and makes sure every topic exists with its
/// retention (events kept forever, snapshots compacted).
pub async fn open(config: &EventLogConfig, client_id: &str) -> Result<Arc<dyn EventLog>, LogError> {
    let (log, partitions): (Arc<dyn EventLog>, u32) = match config {
        EventLogConfig::Embedded { path, partitions, segment_bytes, .. } => {
            let log = EmbeddedLog::open(path, Options { segment_bytes: *segment_bytes })?;
            log.open_all()?;
            (Arc::new(log), *partitions)
        }
        #[cfg(feature = "kafka")]
        EventLogConfig::Kafka { brokers, topic_prefix, partitions, replication_factor, message_timeout, .. } => {
            let options = KafkaOptions {
                brokers: brokers.clone(),
                topic_prefix: topic_prefix.clone(),
                client_id: client_id.to_string(),
                message_timeout: *message_timeout,
                replication_factor: *replication_factor,
                ..KafkaOptions::default()
            };
            (Arc::new(KafkaLog::connect(options)?), *partitions)
        }
        #[cfg(not(feature = "kafka"))]
        EventLogConfig::Kafka { .. } => {
            let _ = client_id;
            return Err(without_kafka());
        }
    };
    let log: Arc<dyn EventLog> = Arc::new(Metered(log));
    for name in topic::ALL {
        let kind = if name == topic::SNAPSHOTS { TopicKind::Snapshots } else { TopicKind::Events };
        let actual = log.create_topic(name, partitions, kind).await?;
        if actual != partitions {
            tracing::warn!(
                topic = name,
                actual,
                configured = partitions,
                "topic exists with another partition count; keeping it"
            );
        }
    }
    Ok(log)
}

/// The log with its appends timed and counted (`crate::metrics`).
#[derive(Debug)]
struct Metered(Arc<dyn EventLog>);

#[async_trait::async_trait]
impl EventLog for Metered {
    async fn create_topic(&self, name: &str, partitions: u32, kind: TopicKind) -> Result<u32, LogError> {
        self.0.create_topic(name, partitions, kind).await
    }

    fn partitions(&self, topic: &str) -> Result<u32, LogError> {
        self.0.partitions(topic)
    }

    async fn append_to(&self, topic: &str, partition: u32, key: &[u8], value: &[u8]) -> Result<Position, LogError> {
        let started = std::time::Instant::now();
        let result = self.0.append_to(topic, partition, key, value).await;
        let metrics = crate::metrics::metrics();
        let labels = crate::metrics::TopicLabels { topic: topic.to_string() };
        match &result {
            Ok(_) => metrics.append_latency.get_or_create(&labels).observe(started.elapsed().as_secs_f64()),
            Err(_) => {
                metrics.append_errors.get_or_create(&labels).inc();
            }
        }
        result
    }

    async fn read(&self, topic: &str, partition: u32, offset: u64, max: usize) -> Result<Vec<Record>, LogError> {
        self.0.read(topic, partition, offset, max).await
    }

    async fn end_offset(&self, topic: &str, partition: u32) -> Result<u64, LogError> {
        self.0.end_offset(topic, partition).await
    }

    async fn trim_snapshots(&self, topic: &str, partition: u32, offset: u64) -> Result<(), LogError> {
        self.0.trim_snapshots(topic, partition, offset).await
    }

    async fn join(&self, group: &str, topics: &[&str]) -> Result<Box<dyn GroupMember>, LogError> {
        self.0.join(group, topics).await
    }
}

/// Opens the configured log for reading only, beside a running router
/// (embedded: no lock, nothing repaired; Kafka: a client like any other).
pub async fn open_read_only(config: &EventLogConfig, client_id: &str) -> Result<Arc<dyn EventLog>, LogError> {
    Ok(match config {
        EventLogConfig::Embedded { path, .. } => Arc::new(EmbeddedLog::open_read_only(path)?),
        #[cfg(feature = "kafka")]
        EventLogConfig::Kafka { brokers, topic_prefix, .. } => {
            let log = KafkaLog::connect(KafkaOptions {
                brokers: brokers.clone(),
                topic_prefix: topic_prefix.clone(),
                client_id: client_id.to_string(),
                ..KafkaOptions::default()
            })?;
            // What the embedded log knows from its directory, Kafka from the broker.
            log.learn_partitions(&mailflow_events::topic::ALL).await;
            Arc::new(log)
        }
        #[cfg(not(feature = "kafka"))]
        EventLogConfig::Kafka { .. } => {
            let _ = client_id;
            return Err(without_kafka());
        }
    })
}

/// What a build without the `kafka` feature says when asked for Kafka.
#[cfg(not(feature = "kafka"))]
fn without_kafka() -> LogError {
    LogError::Kafka("this build of mailflow has no Kafka backend (feature `kafka`)".to_string())
}

/// Appends until the record is durable, backing off from 100 ms to 10 s
/// between tries; returns its position. For handlers whose consumed offset
/// must not be committed before their own event is in the log.
pub async fn append_until_durable(log: &dyn EventLog, topic: &str, key: &[u8], value: &[u8]) -> Position {
    let mut backoff = Duration::from_millis(100);
    loop {
        match log.append(topic, key, value).await {
            Ok(position) => return position,
            Err(err) => {
                tracing::warn!(error = %err, topic, "append failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Leaves a consumer group at the end of a drain, so that the other members
/// take the partitions over at once.
pub async fn leave(member: Box<dyn GroupMember>, role: &str) {
    match member.leave().await {
        Ok(()) => tracing::info!(role, "left the consumer group"),
        Err(err) => tracing::warn!(error = %err, role, "leaving the consumer group failed"),
    }
}

/// Loads the content of `message_id`, waiting out temporary failures of the
/// log (a broker outage, an I/O error) with the backoff of
/// [`append_until_durable`]. Only a permanent failure (content missing,
/// altered or undecodable) is returned: a handler that goes on without the
/// content would record a decision it never made on the message.
pub async fn load_content_until_readable(
    log: &dyn EventLog,
    message_id: &str,
    reference: &ContentRef,
) -> Result<Vec<u8>, ContentError> {
    until_not_temporary(|| content::load(log, message_id, reference)).await
}

async fn until_not_temporary<T, F, Fut>(mut attempt: F) -> Result<T, ContentError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ContentError>>,
{
    let mut backoff = Duration::from_millis(100);
    loop {
        match attempt().await {
            Err(ContentError::Log(err)) if err.is_temporary() => {
                tracing::warn!(error = %err, "content unreadable for now; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            outcome => return outcome,
        }
    }
}

/// Joins consumer group `group` on `topics`, retrying every second until the
/// log lets it (a broker still starting, a topic not yet created).
pub async fn join_until_member(log: &dyn EventLog, group: &str, topics: &[&str]) -> Box<dyn GroupMember> {
    loop {
        match log.join(group, topics).await {
            Ok(member) => return member,
            Err(err) => {
                tracing::warn!(error = %err, group, "cannot join the consumer group yet");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[tokio::test]
    async fn content_is_read_again_after_a_temporary_failure_and_a_permanent_one_is_returned_at_once() {
        let calls = Cell::new(0);
        let outcome = until_not_temporary(|| {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move { if n < 3 { Err(ContentError::Log(LogError::Kafka("AllBrokersDown".into()))) } else { Ok(n) } }
        })
        .await;
        assert_eq!(outcome.ok(), Some(3), "two broker failures waited out");

        for permanent in [
            ContentError::Mismatch { message_id: "m".into(), reason: "chunk 1 of 2 is missing".into() },
            ContentError::Log(LogError::Corrupt { path: "00000000000000000000.log".into(), at: 12 }),
        ] {
            let calls = Cell::new(0);
            let mut permanent = Some(permanent);
            let outcome: Result<(), _> = until_not_temporary(|| {
                calls.set(calls.get() + 1);
                let err = permanent.take().expect("called once");
                async move { Err(err) }
            })
            .await;
            assert!(outcome.is_err());
            assert_eq!(calls.get(), 1, "no retry of a permanent failure");
        }
    }
}
