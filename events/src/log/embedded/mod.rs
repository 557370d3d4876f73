//! The embedded event log: the default backend, for one machine, no Kafka needed.
//!
//! On-disk layout under the log's root directory:
//!
//! ```text
//! topics/<topic>/partitions          number of partitions, fixed at creation
//! topics/<topic>/<p>/<base>.log      segment files of partition p (see `partition`)
//! groups/<group>.offsets             committed offsets of a consumer group (see `group`)
//! LOCK                               held (flock) by the one process that has the log open
//! ```
//!
//! A partition's writer thread starts when the partition is first opened;
//! partitions open lazily, on first use.

pub mod frame;
mod group;
mod partition;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use tokio::sync::watch;

use crate::log::{EventLog, GroupMember, LogError, Position, Record, TopicKind};
use group::{EmbeddedMember, Group};
use partition::{Partition, sync_dir};

/// Settings of the embedded log.
#[derive(Debug, Clone)]
pub struct Options {
    /// Size after which a partition starts a new segment file (default 256 MiB).
    pub segment_bytes: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self { segment_bytes: 256 * 1024 * 1024 }
    }
}

/// The embedded log; cheap to clone, all clones share one state.
#[derive(Debug, Clone)]
pub struct EmbeddedLog {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Topic {
    partitions: Vec<OnceLock<Arc<Partition>>>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    root: PathBuf,
    options: Options,
    topics: Mutex<HashMap<String, Arc<Topic>>>,
    groups: Mutex<HashMap<String, Arc<Group>>>,
    /// Bumped after every durable batch and every group change.
    wake: watch::Sender<u64>,
    /// Serialises opening partitions, so one partition never has two writers.
    opening: Mutex<()>,
    /// Exclusive lock on `<root>/LOCK`, held while the log is open for
    /// writing, so that two processes never write one log.
    _lock: Option<fs::File>,
    /// Opened with [`EmbeddedLog::open_read_only`].
    read_only: bool,
}

impl EmbeddedLog {
    /// Opens the log in `root`, creating it if needed. Existing topics are found
    /// on disk; their partitions open (and torn tails are truncated) on first use.
    pub fn open(root: impl AsRef<Path>, options: Options) -> Result<Self, LogError> {
        Self::open_mode(root.as_ref(), options, false)
    }

    /// Opens a snapshot of the log for reading, beside the process that writes
    /// it (incident analysis, `mailflow replay`): no lock, nothing repaired,
    /// appends refused. It shows what was on disk when each partition was first
    /// read, including records whose append may not be acknowledged yet; every
    /// record served passed its CRC.
    pub fn open_read_only(root: impl AsRef<Path>) -> Result<Self, LogError> {
        Self::open_mode(root.as_ref(), Options::default(), true)
    }

    fn open_mode(root: &Path, options: Options, read_only: bool) -> Result<Self, LogError> {
        let root = root.to_path_buf();
        let topics_dir = root.join("topics");
        let lock = if read_only {
            None
        } else {
            fs::create_dir_all(&topics_dir).map_err(LogError::from_io)?;
            fs::create_dir_all(root.join("groups")).map_err(LogError::from_io)?;
            let lock = fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(root.join("LOCK"))
                .map_err(LogError::from_io)?;
            lock.try_lock().map_err(|err| match err {
                fs::TryLockError::WouldBlock => LogError::Locked { path: root.display().to_string() },
                fs::TryLockError::Error(err) => LogError::from_io(err),
            })?;
            Some(lock)
        };
        let mut topics = HashMap::new();
        for entry in fs::read_dir(&topics_dir).map_err(LogError::from_io)? {
            let entry = entry.map_err(LogError::from_io)?;
            let Ok(name) = entry.file_name().into_string() else { continue };
            let Ok(count) = fs::read_to_string(entry.path().join("partitions")) else { continue };
            let Ok(count) = count.trim().parse::<u32>() else {
                return Err(LogError::Corrupt { path: entry.path().join("partitions").display().to_string(), at: 0 });
            };
            topics.insert(name, Arc::new(Topic { partitions: (0..count).map(|_| OnceLock::new()).collect() }));
        }
        let (wake, _) = watch::channel(0);
        Ok(Self {
            inner: Arc::new(Inner {
                root,
                options,
                topics: Mutex::new(topics),
                groups: Mutex::new(HashMap::new()),
                wake,
                opening: Mutex::new(()),
                _lock: lock,
                read_only,
            }),
        })
    }

    /// Opens every partition of every topic now (instead of on first use), so
    /// that torn tails are repaired and corruption is reported at start-up.
    pub fn open_all(&self) -> Result<(), LogError> {
        let topics: Vec<(String, u32)> = {
            let topics = self.inner.topics.lock().map_err(|_| LogError::Closed)?;
            topics.iter().map(|(name, t)| (name.clone(), t.partitions.len() as u32)).collect()
        };
        for (topic, count) in topics {
            for partition in 0..count {
                self.inner.partition(&topic, partition)?;
            }
        }
        Ok(())
    }
}

impl Inner {
    fn topic(&self, name: &str) -> Result<Arc<Topic>, LogError> {
        let topics = self.topics.lock().map_err(|_| LogError::Closed)?;
        topics.get(name).cloned().ok_or_else(|| LogError::UnknownPartition { topic: name.to_string(), partition: 0 })
    }

    pub(crate) fn partition_count(&self, topic: &str) -> Result<u32, LogError> {
        Ok(self.topic(topic)?.partitions.len() as u32)
    }

    pub(crate) fn partition(&self, topic: &str, partition: u32) -> Result<Arc<Partition>, LogError> {
        let entry = self.topic(topic)?;
        let slot = entry
            .partitions
            .get(partition as usize)
            .ok_or_else(|| LogError::UnknownPartition { topic: topic.to_string(), partition })?;
        if let Some(open) = slot.get() {
            return Ok(Arc::clone(open));
        }
        let _guard = self.opening.lock().map_err(|_| LogError::Closed)?;
        if let Some(open) = slot.get() {
            return Ok(Arc::clone(open));
        }
        let dir = self.root.join("topics").join(topic).join(partition.to_string());
        let opened =
            Partition::open(topic, partition, dir, self.options.segment_bytes, self.wake.clone(), self.read_only)?;
        let _ = slot.set(Arc::clone(&opened));
        Ok(opened)
    }

    fn group(&self, name: &str) -> Result<Arc<Group>, LogError> {
        let mut groups = self.groups.lock().map_err(|_| LogError::Closed)?;
        if let Some(group) = groups.get(name) {
            return Ok(Arc::clone(group));
        }
        let group = Arc::new(Group::open(&self.root.join("groups"), name)?);
        groups.insert(name.to_string(), Arc::clone(&group));
        Ok(group)
    }
}

#[async_trait]
impl EventLog for EmbeddedLog {
    async fn create_topic(&self, name: &str, partitions: u32, _kind: TopicKind) -> Result<u32, LogError> {
        if self.inner.read_only {
            return self.inner.partition_count(name);
        }
        if name.is_empty() || name.contains(['/', '\0']) || name.starts_with('.') {
            return Err(LogError::UnknownPartition { topic: name.to_string(), partition: 0 });
        }
        let mut topics = self.inner.topics.lock().map_err(|_| LogError::Closed)?;
        if let Some(existing) = topics.get(name) {
            return Ok(existing.partitions.len() as u32);
        }
        let dir = self.inner.root.join("topics").join(name);
        fs::create_dir_all(&dir).map_err(LogError::from_io)?;
        // Written to a temp file and renamed, so a crash leaves either no topic or a whole one.
        let temp = dir.join("partitions.tmp");
        fs::write(&temp, format!("{partitions}\n")).map_err(LogError::from_io)?;
        fs::File::open(&temp).and_then(|f| f.sync_all()).map_err(LogError::from_io)?;
        fs::rename(&temp, dir.join("partitions")).map_err(LogError::from_io)?;
        sync_dir(&dir)?;
        sync_dir(&self.inner.root.join("topics"))?;
        topics.insert(
            name.to_string(),
            Arc::new(Topic { partitions: (0..partitions).map(|_| OnceLock::new()).collect() }),
        );
        Ok(partitions)
    }

    fn partitions(&self, topic: &str) -> Result<u32, LogError> {
        self.inner.partition_count(topic)
    }

    async fn append_to(&self, topic: &str, partition: u32, key: &[u8], value: &[u8]) -> Result<Position, LogError> {
        self.inner.partition(topic, partition)?.append(key, value).await
    }

    async fn read(&self, topic: &str, partition: u32, offset: u64, max: usize) -> Result<Vec<Record>, LogError> {
        self.inner.partition(topic, partition)?.read(offset, max)
    }

    async fn end_offset(&self, topic: &str, partition: u32) -> Result<u64, LogError> {
        Ok(self.inner.partition(topic, partition)?.end_offset())
    }

    async fn trim_snapshots(&self, topic: &str, partition: u32, offset: u64) -> Result<(), LogError> {
        if topic != crate::topic::SNAPSHOTS || self.inner.read_only {
            return Ok(());
        }
        self.inner.partition(topic, partition)?.delete_segments_below(offset)
    }

    async fn join(&self, group: &str, topics: &[&str]) -> Result<Box<dyn GroupMember>, LogError> {
        if self.inner.read_only {
            // Committing offsets would write: a read-only view has no groups.
            return Err(LogError::Closed);
        }
        let group = self.inner.group(group)?;
        Ok(Box::new(EmbeddedMember::join(Arc::clone(&self.inner), group, topics)?))
    }
}
