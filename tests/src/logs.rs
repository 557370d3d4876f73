//! Fresh event logs of either backend for a test, with whatever keeps them alive.

use std::sync::Arc;
use std::time::Duration;

use mailflow_events::log::embedded::{EmbeddedLog, Options};
use mailflow_events::log::kafka::{KafkaLog, KafkaOptions};
use mailflow_events::log::{EventLog, TopicKind};

use crate::broker::Broker;

/// A log under test and the resources it lives on (temp dir or broker).
#[derive(Debug)]
pub struct TestLog {
    /// The log.
    pub log: Arc<dyn EventLog>,
    /// Held until the test ends.
    pub guard: Guard,
}

/// What a [`TestLog`] lives on.
#[derive(Debug)]
pub enum Guard {
    /// The embedded log's directory.
    Dir(tempfile::TempDir),
    /// The broker the Kafka log talks to.
    Broker(Broker),
}

impl TestLog {
    /// A new embedded log in a temporary directory.
    pub fn embedded() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let log = EmbeddedLog::open(dir.path(), Options::default())?;
        Ok(Self { log: Arc::new(log), guard: Guard::Dir(dir) })
    }

    /// A Kafka log on a broker started for this test.
    pub fn kafka() -> anyhow::Result<Self> {
        let broker = Broker::start()?;
        let options = KafkaOptions {
            brokers: broker.bootstrap.clone(),
            message_timeout: Duration::from_secs(30),
            ..KafkaOptions::default()
        };
        let log = KafkaLog::connect(options)?;
        Ok(Self { log: Arc::new(log), guard: Guard::Broker(broker) })
    }

    /// Creates an event topic with a unique name and `partitions` partitions.
    pub async fn topic(&self, partitions: u32) -> anyhow::Result<String> {
        let name = format!("t-{}", uuid::Uuid::new_v4().simple());
        self.log.create_topic(&name, partitions, TopicKind::Events).await?;
        Ok(name)
    }
}
