//! The event log: one trait, two backends.
//!
//! The log is the router's only durable state. Queues, retry histories and the
//! message trace are views folded from it. Both backends give the same
//! guarantees, checked by one conformance suite (`tests/src/conformance.rs`):
//!
//! - **per-partition total order**: records of one partition are read in the
//!   order their appends were acknowledged;
//! - **durable acknowledgement**: [`EventLog::append`] returns only once the
//!   record survives a crash of the process (embedded: `fdatasync`; Kafka:
//!   `acks=all` on an idempotent producer);
//! - **at-least-once consumption**: a group member's records are delivered
//!   again to the group unless their offsets were committed;
//! - **replay** from offset 0 or any offset, independently of any group.
//!
//! A record's partition is chosen from its key by [`partition_for`], the same
//! function in both backends, so a key (message id, destination) always lives in
//! one partition and its events stay in order.

pub mod embedded;
#[cfg(feature = "kafka")]
pub mod kafka;

use std::time::Duration;

use async_trait::async_trait;

/// Largest record either backend accepts: a content chunk of 512 KiB once
/// encoded, plus its envelope.
pub const MAX_RECORD_SIZE: usize = 1024 * 1024;

/// Default number of partitions per topic, fixed when a topic is created.
pub const DEFAULT_PARTITIONS: u32 = 12;

/// Where a record sits in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Position {
    /// Partition of the topic.
    pub partition: u32,
    /// Offset within the partition, from 0.
    pub offset: u64,
}

/// A record read from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Topic the record belongs to (shared: replay reads millions of records).
    pub topic: std::sync::Arc<str>,
    /// Partition and offset.
    pub position: Position,
    /// Milliseconds since the Unix epoch at append.
    pub timestamp_ms: i64,
    /// The partitioning key.
    pub key: bytes::Bytes,
    /// The payload (an event envelope in JSON, for the router's topics).
    /// Records read together share one buffer: no copy per record on replay.
    pub value: bytes::Bytes,
}

/// Errors of the event log. Every variant says whether the caller may retry.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The record is larger than [`MAX_RECORD_SIZE`] (permanent).
    #[error("record of {size} bytes exceeds the limit of {MAX_RECORD_SIZE} bytes")]
    RecordTooLarge {
        /// Size of the refused record.
        size: usize,
    },
    /// The topic or partition does not exist (permanent: a configuration error).
    #[error("unknown topic-partition {topic}/{partition}")]
    UnknownPartition {
        /// Topic asked for.
        topic: String,
        /// Partition asked for.
        partition: u32,
    },
    /// The device is full (temporary; SMTP answers `452 4.3.1`).
    #[error("no space left for the event log: {0}")]
    NoSpace(std::io::Error),
    /// Any other I/O failure (temporary; SMTP answers `451 4.3.0`). After a
    /// failed fsync the partition refuses further appends until reopened,
    /// since the kernel may have dropped the dirty pages.
    #[error("event log I/O failed: {0}")]
    Io(std::io::Error),
    /// A stored record failed its CRC or framing check (permanent for that file).
    #[error("corrupt record in {path} at byte {at}")]
    Corrupt {
        /// Segment file.
        path: String,
        /// Byte position of the bad frame.
        at: u64,
    },
    /// Another process has the embedded log open (permanent for this process).
    #[error("event log {path} is in use by another process")]
    Locked {
        /// The log's directory.
        path: String,
    },
    /// The log was closed or its writer stopped (temporary).
    #[error("event log is closed")]
    Closed,
    /// The Kafka backend reported an error (temporary unless the message says otherwise).
    #[error("kafka: {0}")]
    Kafka(String),
    /// The group member was fenced out by a rebalance (temporary: poll again).
    #[error("partition {topic}/{partition} is no longer assigned to this member")]
    NotAssigned {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
    },
}

impl LogError {
    /// Maps an I/O error, keeping "disk full" apart so SMTP can say `452 4.3.1`.
    pub fn from_io(err: std::io::Error) -> Self {
        if err.raw_os_error() == Some(libc::ENOSPC) || err.kind() == std::io::ErrorKind::StorageFull {
            LogError::NoSpace(err)
        } else {
            LogError::Io(err)
        }
    }

    /// Whether the operation may succeed if tried again later.
    pub fn is_temporary(&self) -> bool {
        !matches!(
            self,
            LogError::RecordTooLarge { .. }
                | LogError::UnknownPartition { .. }
                | LogError::Corrupt { .. }
                | LogError::Locked { .. }
        )
    }
}

/// What a topic holds, which decides its retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicKind {
    /// Events: kept forever (`retention.ms=-1`), never compacted.
    Events,
    /// Snapshots: compacted, the latest record per key is kept.
    Snapshots,
}

/// The operations both backends provide.
#[async_trait]
pub trait EventLog: Send + Sync + std::fmt::Debug {
    /// Creates `name` with `partitions` partitions unless it exists; returns the
    /// topic's partition count (an existing topic keeps its own).
    async fn create_topic(&self, name: &str, partitions: u32, kind: TopicKind) -> Result<u32, LogError>;

    /// Number of partitions of `topic` (fixed at creation).
    fn partitions(&self, topic: &str) -> Result<u32, LogError>;

    /// Appends one record to the partition chosen by `key` and returns its
    /// position once the record is durable.
    async fn append(&self, topic: &str, key: &[u8], value: &[u8]) -> Result<Position, LogError> {
        let partition = partition_for(key, self.partitions(topic)?);
        self.append_to(topic, partition, key, value).await
    }

    /// Appends one record to an explicit partition, acknowledged once durable.
    async fn append_to(&self, topic: &str, partition: u32, key: &[u8], value: &[u8]) -> Result<Position, LogError>;

    /// Reads up to `max` durable records of one partition from `offset` on,
    /// without waiting. An empty result means `offset` is at the end.
    async fn read(&self, topic: &str, partition: u32, offset: u64, max: usize) -> Result<Vec<Record>, LogError>;

    /// Offset the next record of the partition will get (the high watermark).
    async fn end_offset(&self, topic: &str, partition: u32) -> Result<u64, LogError>;

    /// Lets the log drop records of a snapshot topic below `offset` (superseded
    /// snapshots). Kafka compacts such topics itself, so this is a no-op there;
    /// the embedded log removes whole segments below it. Event topics are never
    /// trimmed.
    async fn trim_snapshots(&self, topic: &str, partition: u32, offset: u64) -> Result<(), LogError> {
        let _ = (topic, partition, offset);
        Ok(())
    }

    /// Joins consumer group `group` on `topics`. Members of one group share the
    /// partitions; each partition is consumed by one member at a time and starts
    /// at the group's committed offset (0 when none).
    async fn join(&self, group: &str, topics: &[&str]) -> Result<Box<dyn GroupMember>, LogError>;
}

/// One member of a consumer group.
#[async_trait]
pub trait GroupMember: Send + std::fmt::Debug {
    /// The next record of an assigned partition, following the tail; `None`
    /// when nothing arrived within `timeout`. Records of one partition come in
    /// order; after a rebalance a partition resumes at the committed offset.
    async fn poll(&mut self, timeout: Duration) -> Result<Option<Record>, LogError>;

    /// Durably commits that every record of `topic`/`partition` before
    /// `next_offset` has been handled. Call it only after the handler's own
    /// appends were acknowledged.
    async fn commit(&mut self, topic: &str, partition: u32, next_offset: u64) -> Result<(), LogError>;

    /// The partitions currently assigned to this member, sorted.
    fn assignment(&self) -> Vec<(String, u32)>;

    /// Leaves the group, handing the partitions to the other members.
    async fn leave(self: Box<Self>) -> Result<(), LogError>;
}

/// Kafka's default partitioner (murmur2 of the key, as the Java client does),
/// so that producers in any language agree on a key's partition.
pub fn partition_for(key: &[u8], partitions: u32) -> u32 {
    (murmur2(key) & 0x7fff_ffff) % partitions.max(1)
}

/// MurmurHash2 with Kafka's seed, byte-for-byte as `org.apache.kafka.common.utils.Utils.murmur2`.
fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h = SEED ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The range assignment both backends' groups use for the embedded log:
/// partitions of each topic are split into contiguous runs among the sorted members.
pub(crate) fn range_assign(partitions: u32, members: usize, index: usize) -> std::ops::Range<u32> {
    let members = members.max(1) as u32;
    let index = index as u32;
    let per = partitions / members;
    let extra = partitions % members;
    let start = index * per + index.min(extra);
    let len = per + u32::from(index < extra);
    start..start + len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka_reference_values() {
        // Values from Kafka's UtilsTest.testMurmur2.
        assert_eq!(murmur2(b"21") as i32, -973_932_308);
        assert_eq!(murmur2(b"foobar") as i32, -790_332_482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985_981_536);
        assert_eq!(murmur2(b"a-little-bit-longer-string") as i32, -1_486_304_829);
        assert_eq!(murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32, -58_897_971);
        assert_eq!(murmur2(b"abc") as i32, 479_470_107);
    }

    #[test]
    fn range_assignment_covers_every_partition_once() {
        for partitions in 1..20 {
            for members in 1..6 {
                let mut seen = vec![0; partitions as usize];
                for index in 0..members {
                    for p in range_assign(partitions, members, index) {
                        seen[p as usize] += 1;
                    }
                }
                assert!(seen.iter().all(|&n| n == 1), "{partitions} over {members}: {seen:?}");
            }
        }
    }
}
