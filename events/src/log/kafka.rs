//! The Kafka backend, for many machines: rdkafka on any Kafka-protocol broker.
//!
//! - The producer is idempotent (`enable.idempotence=true`, hence `acks=all`
//!   and ordered retries); an append returns only after the delivery report,
//!   so an acknowledged record is on every in-sync replica.
//! - Topics are created explicitly: event topics with `cleanup.policy=delete`
//!   and `retention.ms=-1` (kept forever, never compacted), the snapshot topic
//!   with `cleanup.policy=compact`. The partition count is fixed at creation.
//! - Group members commit synchronously and only what the caller says was
//!   handled (`enable.auto.commit=false`), which the router does after its own
//!   appends were acknowledged. Nothing relies on Kafka transactions.
//! - The partition of a key is chosen here with [`crate::log::partition_for`]
//!   (Kafka's murmur2), not by librdkafka, so both backends agree.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use crate::log::{EventLog, GroupMember, LogError, MAX_RECORD_SIZE, Position, Record, TopicKind};

/// Settings of the Kafka backend.
#[derive(Debug, Clone)]
pub struct KafkaOptions {
    /// `bootstrap.servers`, e.g. `127.0.0.1:9092`.
    pub brokers: String,
    /// Prefix put before every topic name (default empty).
    pub topic_prefix: String,
    /// `client.id` of this process (default `mailflow`).
    pub client_id: String,
    /// How long a record may wait for its acknowledgement, retries included
    /// (`message.timeout.ms`, default 10 minutes); past it the append fails and
    /// SMTP answers 4xx, so the sender retries.
    pub message_timeout: Duration,
    /// Consumer group session timeout (default 6 s): how soon a dead member's
    /// partitions move to the others.
    pub session_timeout: Duration,
    /// Longest a member may go between polls before the group drops it, and
    /// also how long a rebalance waits for members to rejoin
    /// (`max.poll.interval.ms`, default 30 s; Kafka's own default of 5 minutes
    /// would hold a take-over after a `kill -9` that long on some brokers).
    /// Every role polls at least once a second.
    pub max_poll_interval: Duration,
    /// Replication factor of created topics (default 1; 3 in production).
    pub replication_factor: i32,
    /// Timeout of metadata, watermark and admin requests (default 10 s).
    pub request_timeout: Duration,
}

impl Default for KafkaOptions {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".to_string(),
            topic_prefix: String::new(),
            client_id: "mailflow".to_string(),
            message_timeout: Duration::from_secs(600),
            session_timeout: Duration::from_secs(6),
            max_poll_interval: Duration::from_secs(30),
            replication_factor: 1,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// The Kafka backend.
pub struct KafkaLog {
    options: KafkaOptions,
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    /// One consumer without a group, assigned per read, for replay and reads.
    reader: Arc<Mutex<BaseConsumer>>,
    partitions: Mutex<HashMap<String, u32>>,
}

impl std::fmt::Debug for KafkaLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaLog").field("options", &self.options).finish_non_exhaustive()
    }
}

fn kafka_error(err: KafkaError) -> LogError {
    match err.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => LogError::RecordTooLarge { size: MAX_RECORD_SIZE + 1 },
        _ => LogError::Kafka(err.to_string()),
    }
}

impl KafkaLog {
    /// Connects to the brokers. Nothing is sent until the first request.
    pub fn connect(options: KafkaOptions) -> Result<Self, LogError> {
        let mut base = ClientConfig::new();
        base.set("bootstrap.servers", &options.brokers)
            .set("client.id", &options.client_id)
            .set("broker.address.family", "any");
        let producer: FutureProducer = base
            .clone()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "1")
            .set("message.max.bytes", (2 * MAX_RECORD_SIZE).to_string())
            .set("message.timeout.ms", options.message_timeout.as_millis().to_string())
            .create()
            .map_err(kafka_error)?;
        let admin: AdminClient<DefaultClientContext> = base.clone().create().map_err(kafka_error)?;
        let reader: BaseConsumer = base
            .clone()
            .set("group.id", format!("{}-reader", options.client_id))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .create()
            .map_err(kafka_error)?;
        Ok(Self {
            options,
            producer,
            admin,
            reader: Arc::new(Mutex::new(reader)),
            partitions: Mutex::new(HashMap::new()),
        })
    }

    fn full_name(&self, topic: &str) -> String {
        format!("{}{topic}", self.options.topic_prefix)
    }

    /// Learns the partition counts of those of `topics` that exist, without
    /// creating any: for tools that only read (replay, what-if, archive),
    /// which must not make a topic the router would then find with the wrong
    /// partition count.
    pub async fn learn_partitions(&self, topics: &[&str]) {
        for topic in topics {
            let _ = self.fetch_partition_count(topic).await;
        }
    }

    /// Asks the broker for a topic's partition count and caches it.
    async fn fetch_partition_count(&self, topic: &str) -> Result<u32, LogError> {
        let reader = Arc::clone(&self.reader);
        let name = self.full_name(topic);
        let timeout = self.options.request_timeout;
        let count = tokio::task::spawn_blocking(move || {
            let reader = reader.lock().map_err(|_| LogError::Closed)?;
            let metadata = reader.fetch_metadata(Some(&name), timeout).map_err(kafka_error)?;
            let count = metadata.topics().iter().find(|t| t.name() == name).map_or(0, |t| t.partitions().len());
            Ok::<_, LogError>(count as u32)
        })
        .await
        .map_err(|_| LogError::Closed)??;
        if count == 0 {
            return Err(LogError::UnknownPartition { topic: topic.to_string(), partition: 0 });
        }
        self.partitions.lock().map_err(|_| LogError::Closed)?.insert(topic.to_string(), count);
        Ok(count)
    }
}

fn to_record(topic: &str, message: &BorrowedMessage<'_>) -> Record {
    Record {
        topic: Arc::from(topic),
        position: Position { partition: message.partition() as u32, offset: message.offset() as u64 },
        timestamp_ms: message.timestamp().to_millis().unwrap_or(0),
        key: bytes::Bytes::copy_from_slice(message.key().unwrap_or_default()),
        value: bytes::Bytes::copy_from_slice(message.payload().unwrap_or_default()),
    }
}

#[async_trait]
impl EventLog for KafkaLog {
    async fn create_topic(&self, name: &str, partitions: u32, kind: TopicKind) -> Result<u32, LogError> {
        // A topic that exists is used as it is (on Kubernetes, Strimzi's
        // `KafkaTopic` resources make them), so a router without the right to
        // create topics starts, and a broker without CreateTopics serves.
        if let Ok(count) = self.fetch_partition_count(name).await {
            return Ok(count);
        }
        let full = self.full_name(name);
        let max_bytes = (2 * MAX_RECORD_SIZE).to_string();
        let topic = NewTopic::new(&full, partitions as i32, TopicReplication::Fixed(self.options.replication_factor))
            .set("max.message.bytes", &max_bytes);
        let topic = match kind {
            TopicKind::Events => {
                topic.set("cleanup.policy", "delete").set("retention.ms", "-1").set("retention.bytes", "-1")
            }
            TopicKind::Snapshots => topic.set("cleanup.policy", "compact"),
        };
        let options = AdminOptions::new().operation_timeout(Some(self.options.request_timeout));
        let results = self.admin.create_topics([&topic], &options).await.map_err(kafka_error)?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => return Err(LogError::Kafka(format!("creating {topic}: {code}"))),
            }
        }
        // Metadata may lag the creation for a moment; ask until the topic shows.
        let deadline = tokio::time::Instant::now() + self.options.request_timeout;
        loop {
            match self.fetch_partition_count(name).await {
                Ok(count) => return Ok(count),
                Err(err) if tokio::time::Instant::now() >= deadline => return Err(err),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    fn partitions(&self, topic: &str) -> Result<u32, LogError> {
        let cached = self.partitions.lock().map_err(|_| LogError::Closed)?.get(topic).copied();
        cached.ok_or_else(|| LogError::UnknownPartition { topic: topic.to_string(), partition: 0 })
    }

    async fn append_to(&self, topic: &str, partition: u32, key: &[u8], value: &[u8]) -> Result<Position, LogError> {
        if key.len() + value.len() > MAX_RECORD_SIZE + 64 * 1024 {
            return Err(LogError::RecordTooLarge { size: key.len() + value.len() });
        }
        let full = self.full_name(topic);
        let record = FutureRecord::to(&full).partition(partition as i32).key(key).payload(value);
        match self.producer.send(record, self.options.message_timeout).await {
            Ok(delivery) => Ok(Position { partition: delivery.partition as u32, offset: delivery.offset as u64 }),
            Err((err, _)) => Err(kafka_error(err)),
        }
    }

    async fn read(&self, topic: &str, partition: u32, offset: u64, max: usize) -> Result<Vec<Record>, LogError> {
        let reader = Arc::clone(&self.reader);
        let name = self.full_name(topic);
        let topic = topic.to_string();
        let timeout = self.options.request_timeout;
        tokio::task::spawn_blocking(move || {
            let reader = reader.lock().map_err(|_| LogError::Closed)?;
            let (_, high) = reader.fetch_watermarks(&name, partition as i32, timeout).map_err(kafka_error)?;
            let end = (high.max(0) as u64).min(offset.saturating_add(max as u64));
            let mut records = Vec::new();
            if offset >= end {
                return Ok(records);
            }
            let mut assignment = TopicPartitionList::new();
            assignment
                .add_partition_offset(&name, partition as i32, Offset::Offset(offset as i64))
                .map_err(kafka_error)?;
            reader.assign(&assignment).map_err(kafka_error)?;
            let deadline = std::time::Instant::now() + timeout;
            let mut next = offset;
            while next < end {
                let remaining = deadline.saturating_duration_since(std::time::Instant::now());
                if remaining.is_zero() {
                    return Err(LogError::Kafka(format!("timed out reading {name}/{partition} at {next}")));
                }
                match reader.poll(remaining.min(Duration::from_millis(200))) {
                    None => continue,
                    Some(Err(err)) => return Err(kafka_error(err)),
                    Some(Ok(message)) => {
                        // Fetches of an earlier assignment may still be queued.
                        if message.topic() != name
                            || message.partition() != partition as i32
                            || message.offset() as u64 != next
                        {
                            continue;
                        }
                        records.push(to_record(&topic, &message));
                        next += 1;
                    }
                }
            }
            reader.unassign().map_err(kafka_error)?;
            Ok(records)
        })
        .await
        .map_err(|_| LogError::Closed)?
    }

    async fn end_offset(&self, topic: &str, partition: u32) -> Result<u64, LogError> {
        let reader = Arc::clone(&self.reader);
        let name = self.full_name(topic);
        let timeout = self.options.request_timeout;
        tokio::task::spawn_blocking(move || {
            let reader = reader.lock().map_err(|_| LogError::Closed)?;
            let (_, high) = reader.fetch_watermarks(&name, partition as i32, timeout).map_err(kafka_error)?;
            Ok(high.max(0) as u64)
        })
        .await
        .map_err(|_| LogError::Closed)?
    }

    async fn join(&self, group: &str, topics: &[&str]) -> Result<Box<dyn GroupMember>, LogError> {
        for topic in topics {
            if self.partitions(topic).is_err() {
                self.fetch_partition_count(topic).await?;
            }
        }
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.options.brokers)
            .set("client.id", &self.options.client_id)
            .set("broker.address.family", "any")
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", self.options.session_timeout.as_millis().to_string())
            .set("heartbeat.interval.ms", (self.options.session_timeout.as_millis() / 12).max(100).to_string())
            .set("partition.assignment.strategy", "range")
            .set("max.poll.interval.ms", self.options.max_poll_interval.as_millis().to_string())
            .create()
            .map_err(kafka_error)?;
        let names: Vec<String> = topics.iter().map(|t| self.full_name(t)).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        consumer.subscribe(&refs).map_err(kafka_error)?;
        Ok(Box::new(KafkaMember { consumer: Arc::new(consumer), prefix: self.options.topic_prefix.clone() }))
    }
}

/// A member of a Kafka consumer group.
pub struct KafkaMember {
    consumer: Arc<StreamConsumer>,
    prefix: String,
}

impl std::fmt::Debug for KafkaMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaMember").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

#[async_trait]
impl GroupMember for KafkaMember {
    async fn poll(&mut self, timeout: Duration) -> Result<Option<Record>, LogError> {
        match tokio::time::timeout(timeout, self.consumer.recv()).await {
            Err(_) => Ok(None),
            Ok(Err(err)) => Err(kafka_error(err)),
            Ok(Ok(message)) => {
                let topic = message.topic().strip_prefix(self.prefix.as_str()).unwrap_or(message.topic()).to_string();
                Ok(Some(to_record(&topic, &message)))
            }
        }
    }

    async fn commit(&mut self, topic: &str, partition: u32, next_offset: u64) -> Result<(), LogError> {
        if !self.assignment().contains(&(topic.to_string(), partition)) {
            return Err(LogError::NotAssigned { topic: topic.to_string(), partition });
        }
        let mut offsets = TopicPartitionList::new();
        offsets
            .add_partition_offset(
                &format!("{}{topic}", self.prefix),
                partition as i32,
                Offset::Offset(next_offset as i64),
            )
            .map_err(kafka_error)?;
        let consumer = Arc::clone(&self.consumer);
        tokio::task::spawn_blocking(move || consumer.commit(&offsets, CommitMode::Sync))
            .await
            .map_err(|_| LogError::Closed)?
            .map_err(kafka_error)
    }

    fn assignment(&self) -> Vec<(String, u32)> {
        let Ok(list) = self.consumer.assignment() else { return Vec::new() };
        let mut assigned: Vec<(String, u32)> = list
            .elements()
            .iter()
            .map(|e| {
                (e.topic().strip_prefix(self.prefix.as_str()).unwrap_or(e.topic()).to_string(), e.partition() as u32)
            })
            .collect();
        assigned.sort();
        assigned
    }

    async fn leave(self: Box<Self>) -> Result<(), LogError> {
        let consumer = Arc::clone(&self.consumer);
        drop(self);
        // Closing the consumer (the last reference) leaves the group, so the
        // other members are assigned its partitions at once instead of after
        // the session timeout.
        tokio::task::spawn_blocking(move || {
            consumer.unsubscribe();
            drop(consumer);
        })
        .await
        .map_err(|_| LogError::Closed)
    }
}
