//! Consumer groups of the embedded log: membership, partition assignment and
//! durable committed offsets.
//!
//! The embedded log serves one process, so the group coordinator is in memory:
//! a member joins with its topics, every join or leave (including a member
//! dropped without leaving, as when its task dies) starts a new *generation*,
//! and each member recomputes its assignment (range assignment over the members
//! sorted by id) at its next poll. A partition a member gains resumes at the
//! group's committed offset, so whatever its previous owner handled but did not
//! commit is delivered again (at-least-once).
//!
//! Committed offsets live in `<root>/groups/<group>.offsets`: an append-only
//! file of frames (same framing as segments, the key being `topic\0partition`,
//! the value the offset); the last frame per key wins. Each commit is synced
//! before it returns. The file is rewritten (temp file, fsync, rename, directory
//! fsync) once it holds [`REWRITE_AFTER`] frames.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use super::Inner;
use super::frame;
use super::partition::sync_dir;
use crate::log::{GroupMember, LogError, Record, range_assign};

/// Number of commit frames after which the offsets file is rewritten compactly.
const REWRITE_AFTER: u64 = 10_000;
/// Records fetched from a partition at once.
const FETCH_BATCH: usize = 256;

/// Durable committed offsets of one group.
#[derive(Debug)]
pub struct OffsetStore {
    path: PathBuf,
    file: File,
    len: u64,
    frames: u64,
    offsets: HashMap<(String, u32), u64>,
}

impl OffsetStore {
    /// Opens the group's offsets file, ignoring a torn last frame.
    pub fn open(path: PathBuf) -> Result<Self, LogError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(LogError::from_io)?;
        let data = fs::read(&path).map_err(LogError::from_io)?;
        let mut offsets = HashMap::new();
        let mut at = 0;
        let mut frames = 0;
        while let Ok((frame, len)) = frame::decode(&data[at..]) {
            if let Some(key) = parse_key(frame.key) {
                let value = frame.value.try_into().map(u64::from_le_bytes).unwrap_or(0);
                offsets.insert(key, value);
            }
            at += len;
            frames += 1;
        }
        if at < data.len() {
            file.set_len(at as u64).map_err(LogError::from_io)?;
        }
        Ok(Self { path, file, len: at as u64, frames, offsets })
    }

    /// The committed offset of a partition, 0 when none.
    pub fn get(&self, topic: &str, partition: u32) -> u64 {
        self.offsets.get(&(topic.to_string(), partition)).copied().unwrap_or(0)
    }

    /// Durably records a committed offset.
    pub fn commit(&mut self, topic: &str, partition: u32, offset: u64) -> Result<(), LogError> {
        let mut buf = Vec::new();
        frame::encode(&mut buf, self.frames, 0, &make_key(topic, partition), &offset.to_le_bytes());
        self.file.write_all_at(&buf, self.len).map_err(LogError::from_io)?;
        self.file.sync_data().map_err(LogError::from_io)?;
        self.len += buf.len() as u64;
        self.frames += 1;
        self.offsets.insert((topic.to_string(), partition), offset);
        if self.frames >= REWRITE_AFTER {
            self.rewrite()?;
        }
        Ok(())
    }

    fn rewrite(&mut self) -> Result<(), LogError> {
        let mut buf = Vec::new();
        for (i, ((topic, partition), offset)) in self.offsets.iter().enumerate() {
            frame::encode(&mut buf, i as u64, 0, &make_key(topic, *partition), &offset.to_le_bytes());
        }
        let temp = self.path.with_extension("offsets.tmp");
        fs::write(&temp, &buf).map_err(LogError::from_io)?;
        File::open(&temp).and_then(|f| f.sync_all()).map_err(LogError::from_io)?;
        fs::rename(&temp, &self.path).map_err(LogError::from_io)?;
        if let Some(dir) = self.path.parent() {
            sync_dir(dir)?;
        }
        self.file = OpenOptions::new().read(true).write(true).open(&self.path).map_err(LogError::from_io)?;
        self.len = buf.len() as u64;
        self.frames = self.offsets.len() as u64;
        Ok(())
    }
}

fn make_key(topic: &str, partition: u32) -> Vec<u8> {
    format!("{topic}\0{partition}").into_bytes()
}

fn parse_key(key: &[u8]) -> Option<(String, u32)> {
    let text = std::str::from_utf8(key).ok()?;
    let (topic, partition) = text.split_once('\0')?;
    Some((topic.to_string(), partition.parse().ok()?))
}

/// One group: its members, generation and committed offsets.
#[derive(Debug)]
pub struct Group {
    name: String,
    state: Mutex<GroupState>,
}

#[derive(Debug)]
struct GroupState {
    generation: u64,
    next_member: u64,
    /// Member id → subscribed topics.
    members: BTreeMap<u64, Vec<String>>,
    offsets: OffsetStore,
}

impl Group {
    pub fn open(dir: &Path, name: &str) -> Result<Self, LogError> {
        fs::create_dir_all(dir).map_err(LogError::from_io)?;
        let offsets = OffsetStore::open(dir.join(format!("{name}.offsets")))?;
        Ok(Self {
            name: name.to_string(),
            state: Mutex::new(GroupState { generation: 0, next_member: 0, members: BTreeMap::new(), offsets }),
        })
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, GroupState>, LogError> {
        self.state.lock().map_err(|_| LogError::Closed)
    }

    /// The partitions `member` owns in the current generation.
    fn assignment(state: &GroupState, member: u64, partitions: impl Fn(&str) -> u32) -> Vec<(String, u32)> {
        let mut assigned = Vec::new();
        let Some(topics) = state.members.get(&member) else { return assigned };
        for topic in topics {
            let subscribers: Vec<u64> =
                state.members.iter().filter(|(_, t)| t.contains(topic)).map(|(id, _)| *id).collect();
            let index = subscribers.iter().position(|id| *id == member).unwrap_or(0);
            for partition in range_assign(partitions(topic), subscribers.len(), index) {
                assigned.push((topic.clone(), partition));
            }
        }
        assigned.sort();
        assigned
    }
}

/// A member of an embedded consumer group.
#[derive(Debug)]
pub struct EmbeddedMember {
    log: Arc<Inner>,
    group: Arc<Group>,
    id: u64,
    generation: u64,
    /// Next offset to fetch per assigned partition.
    positions: BTreeMap<(String, u32), u64>,
    buffered: VecDeque<Record>,
    /// Rotates fetches over the assigned partitions.
    cursor: usize,
    wake: watch::Receiver<u64>,
    left: bool,
}

impl EmbeddedMember {
    pub(super) fn join(log: Arc<Inner>, group: Arc<Group>, topics: &[&str]) -> Result<Self, LogError> {
        for topic in topics {
            log.partition_count(topic)?;
        }
        let id = {
            let mut state = group.lock()?;
            let id = state.next_member;
            state.next_member += 1;
            state.members.insert(id, topics.iter().map(|t| t.to_string()).collect());
            state.generation += 1;
            id
        };
        log.wake.send_modify(|n| *n = n.wrapping_add(1));
        let wake = log.wake.subscribe();
        Ok(Self {
            log,
            group,
            id,
            generation: u64::MAX,
            positions: BTreeMap::new(),
            buffered: VecDeque::new(),
            cursor: 0,
            wake,
            left: false,
        })
    }

    /// Applies a new generation's assignment: keeps positions of partitions it
    /// still owns, starts gained ones at the committed offset, drops the rest
    /// together with their buffered records.
    fn rebalance_if_needed(&mut self) -> Result<(), LogError> {
        let state = self.group.lock()?;
        if state.generation == self.generation {
            return Ok(());
        }
        let log = &self.log;
        let assigned = Group::assignment(&state, self.id, |topic| log.partition_count(topic).unwrap_or(0));
        let mut positions = BTreeMap::new();
        for key in assigned {
            let position = match self.positions.get(&key) {
                Some(&position) => position,
                None => state.offsets.get(&key.0, key.1),
            };
            positions.insert(key, position);
        }
        self.buffered.retain(|r| positions.contains_key(&(r.topic.to_string(), r.position.partition)));
        self.positions = positions;
        self.generation = state.generation;
        tracing::debug!(group = %self.group.name, member = self.id, generation = self.generation, assignment = ?self.positions.keys().collect::<Vec<_>>(), "rebalanced");
        Ok(())
    }

    /// Fetches the next batch from the assigned partitions, round-robin.
    fn fetch(&mut self) -> Result<(), LogError> {
        let keys: Vec<(String, u32)> = self.positions.keys().cloned().collect();
        for step in 0..keys.len() {
            let key = &keys[(self.cursor + step) % keys.len()];
            let position = self.positions[key];
            let records = self.log.partition(&key.0, key.1)?.read(position, FETCH_BATCH)?;
            if let Some(last) = records.last() {
                self.positions.insert(key.clone(), last.position.offset + 1);
                self.buffered.extend(records);
                self.cursor = (self.cursor + step + 1) % keys.len();
                return Ok(());
            }
        }
        Ok(())
    }

    fn remove(&mut self) {
        if self.left {
            return;
        }
        self.left = true;
        if let Ok(mut state) = self.group.state.lock() {
            state.members.remove(&self.id);
            state.generation += 1;
        }
        self.log.wake.send_modify(|n| *n = n.wrapping_add(1));
    }
}

impl Drop for EmbeddedMember {
    fn drop(&mut self) {
        self.remove();
    }
}

#[async_trait]
impl GroupMember for EmbeddedMember {
    async fn poll(&mut self, timeout: Duration) -> Result<Option<Record>, LogError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Marking the wake-up as seen before looking avoids missing an append
            // that lands between the look and the wait.
            self.wake.borrow_and_update();
            self.rebalance_if_needed()?;
            if self.buffered.is_empty() {
                self.fetch()?;
            }
            if let Some(record) = self.buffered.pop_front() {
                return Ok(Some(record));
            }
            match tokio::time::timeout_at(deadline, self.wake.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Err(LogError::Closed),
                Err(_) => return Ok(None),
            }
        }
    }

    async fn commit(&mut self, topic: &str, partition: u32, next_offset: u64) -> Result<(), LogError> {
        self.rebalance_if_needed()?;
        if !self.positions.contains_key(&(topic.to_string(), partition)) {
            return Err(LogError::NotAssigned { topic: topic.to_string(), partition });
        }
        let mut state = self.group.lock()?;
        state.offsets.commit(topic, partition, next_offset)
    }

    fn assignment(&self) -> Vec<(String, u32)> {
        // Reflects the generation seen at the last poll, as a Kafka client's does.
        self.positions.keys().cloned().collect()
    }

    async fn leave(mut self: Box<Self>) -> Result<(), LogError> {
        self.remove();
        Ok(())
    }
}
