//! Opens the configured event log and creates the router's topics.

use std::sync::Arc;
use std::time::Duration;

use mailflow_events::log::embedded::{EmbeddedLog, Options};
use mailflow_events::log::kafka::{KafkaLog, KafkaOptions};
use mailflow_events::log::{EventLog, GroupMember, LogError, Position, TopicKind};
use mailflow_events::topic;

use crate::config::EventLogConfig;

/// Opens the log `config` names and makes sure every topic exists with its
/// retention (events kept forever, snapshots compacted).
pub async fn open(config: &EventLogConfig, client_id: &str) -> Result<Arc<dyn EventLog>, LogError> {
    let (log, partitions): (Arc<dyn EventLog>, u32) = match config {
        EventLogConfig::Embedded { path, partitions } => {
            let log = EmbeddedLog::open(path, Options::default())?;
            log.open_all()?;
            (Arc::new(log), *partitions)
        }
        EventLogConfig::Kafka { brokers, topic_prefix, partitions, replication_factor, message_timeout } => {
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
    };
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

/// Opens the configured log for reading only, beside a running router
/// (embedded: no lock, nothing repaired; Kafka: a client like any other).
pub fn open_read_only(config: &EventLogConfig, client_id: &str) -> Result<Arc<dyn EventLog>, LogError> {
    Ok(match config {
        EventLogConfig::Embedded { path, .. } => Arc::new(EmbeddedLog::open_read_only(path)?),
        EventLogConfig::Kafka { brokers, topic_prefix, .. } => Arc::new(KafkaLog::connect(KafkaOptions {
            brokers: brokers.clone(),
            topic_prefix: topic_prefix.clone(),
            client_id: client_id.to_string(),
            ..KafkaOptions::default()
        })?),
    })
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
