//! Opens the configured event log and creates the router's topics.

use std::sync::Arc;

use mailflow_events::log::embedded::{EmbeddedLog, Options};
use mailflow_events::log::kafka::{KafkaLog, KafkaOptions};
use mailflow_events::log::{EventLog, LogError, TopicKind};
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
