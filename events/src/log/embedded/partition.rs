//! One topic-partition of the embedded log: its segment files, its index and
//! its writer thread.
//!
//! Layout: `<topic dir>/<partition>/<base offset, 20 digits>.log`, one file per
//! segment, frames as in [`super::frame`], followed by up to
//! [`ZERO_FILL_AHEAD`] zero bytes written ahead of the data (a zero length
//! never decodes as a frame, so zeros end the scan like a torn tail does). A
//! new segment starts once the current one passes
//! [`super::Options::segment_bytes`].
//!
//! Segment index files, `<base>.index`: the byte position of each record of
//! a prefix of the segment, that prefix's length and a CRC-32
//! ([`write_index`]). A sealed segment (one a newer segment follows) gets the
//! index of all its records when the next segment starts; the segment being
//! written gets one of its durable prefix every [`ACTIVE_INDEX_BYTES`]
//! appended. Opening the partition takes a sealed segment's positions from
//! its index instead of reading and checking every frame, and scans only the
//! part of the last segment past its index (where a torn tail may be), so
//! start-up does not read the whole log. An index that is missing, damaged or
//! does not match its segment (its last frame must decode at the recorded
//! position with the expected offset and end at the recorded length, and a
//! sealed segment holds only zeros after it) is ignored: the segment is
//! scanned, and a sealed one's index written again.
//!
//! A sealed segment whose index checked out at open, or was written when it
//! was sealed, keeps no positions in memory: a read takes the two it needs
//! from the index file ([`Positions::File`]). Memory for the index is then
//! bounded by the segments being written (8 bytes a record), not by the
//! length of the log, which is kept forever.
//!
//! Invariants:
//! - only the writer thread writes; readers see a record only once its fsync
//!   returned (`durable_end`), so nothing unacknowledged or torn is ever served;
//! - the index (in memory, or in a sealed segment's index file) holds the file
//!   position of every durable record;
//! - after a failed fsync the partition is *poisoned*: it refuses appends until
//!   reopened, because the kernel may have dropped the dirty pages and a later
//!   successful fsync would not mean the earlier data is on disk. A failed
//!   write (a full disk) fails its batch only: the next batch writes over it.
//!
//! Group commit: appenders send their records to the writer thread through a
//! bounded channel ([`WRITER_QUEUE`] requests; when full, appenders wait). The
//! writer takes everything queued, writes it with one `write`, makes it durable
//! with one `fdatasync`, then acknowledges every request of the batch.

use std::fs::{self, File, OpenOptions};

use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, watch};

use super::frame;
use crate::log::{LogError, Position, Record};

/// Capacity of a partition's append queue. Appenders past it wait (backpressure).
pub const WRITER_QUEUE: usize = 4096;
/// Zeros written past the end of the data when it reaches the file's end.
const ZERO_FILL_AHEAD: u64 = 1024 * 1024;
/// Largest number of records one write + fsync covers.
const MAX_BATCH: usize = 1024;
/// The most a writer thread keeps of its batch buffer between batches: a
/// batch of large records (1,024 appends of 100 KiB content is 100 MiB) must
/// not stay allocated in each of the log's writer threads.
const RETAINED_BUF_BYTES: usize = 1 << 20;
/// First bytes of a segment index file (format version 1).
const INDEX_MAGIC: &[u8; 8] = b"MFSEGIX1";
/// Bytes appended to the segment being written between two writes of its
/// index (a quarter of the segment size when that is less).
pub const ACTIVE_INDEX_BYTES: u64 = 32 * 1024 * 1024;

/// An append waiting for the writer thread.
struct AppendRequest {
    key: Vec<u8>,
    value: Vec<u8>,
    reply: oneshot::Sender<Result<u64, LogError>>,
}

/// Where the file positions of a segment's records are.
#[derive(Debug)]
enum Positions {
    /// In memory: the segment being written, or a sealed one whose index
    /// file could not be written.
    Memory(Vec<u64>),
    /// In the index file of a sealed segment (see [`write_index`]), which
    /// checked out when it was opened: `count` positions after the header.
    File { index: File, count: u64 },
}

/// Bytes before the first position in an index file: magic, length, count.
const INDEX_HEADER: u64 = 24;

impl Positions {
    /// The `count` positions of sealed segment `base` in its index file, once
    /// that file checked out or was written; `None` when it cannot be opened.
    fn on_disk(dir: &Path, base: u64, count: usize) -> Option<Positions> {
        let index = File::open(index_path(dir, base)).ok()?;
        Some(Positions::File { index, count: count as u64 })
    }

    fn len(&self) -> u64 {
        match self {
            Positions::Memory(positions) => positions.len() as u64,
            Positions::File { count, .. } => *count,
        }
    }

    /// File position of the segment's record `i`, `None` past the last one.
    fn get(&self, i: u64) -> std::io::Result<Option<u64>> {
        match self {
            Positions::Memory(positions) => Ok(usize::try_from(i).ok().and_then(|i| positions.get(i)).copied()),
            Positions::File { count, .. } if i >= *count => Ok(None),
            Positions::File { index, .. } => {
                let mut bytes = [0; 8];
                index.read_exact_at(&mut bytes, INDEX_HEADER + i * 8)?;
                Ok(Some(u64::from_le_bytes(bytes)))
            }
        }
    }
}

/// One segment file and the positions of its durable records.
#[derive(Debug)]
struct Segment {
    base: u64,
    file: File,
    /// File position of record `base + i`.
    positions: Positions,
    /// Bytes of durable records in the file.
    len: u64,
    /// Size of the file: zeros past `len`, written ahead (see [`ZERO_FILL_AHEAD`]).
    allocated: u64,
    /// Length its index file covers (0: none).
    indexed: u64,
}

impl Segment {
    fn end(&self) -> u64 {
        self.base + self.positions.len()
    }
}

/// State shared between the writer thread and readers.
#[derive(Debug)]
pub struct Partition {
    topic: Arc<str>,
    id: u32,
    dir: PathBuf,
    segment_bytes: u64,
    segments: RwLock<Vec<Segment>>,
    /// Offset of the next record; records below it are durable.
    durable_end: AtomicU64,
    appends: mpsc::Sender<AppendRequest>,
}

impl Partition {
    /// Opens (or creates) the partition in `dir`, truncating a torn tail of the
    /// last segment, and starts its writer thread. `notify` is bumped after
    /// every durable batch so that tail-following readers wake up.
    pub fn open(
        topic: &str,
        id: u32,
        dir: PathBuf,
        segment_bytes: u64,
        notify: watch::Sender<u64>,
        read_only: bool,
    ) -> Result<Arc<Self>, LogError> {
        if !read_only {
            fs::create_dir_all(&dir).map_err(LogError::from_io)?;
        }
        let mut bases: Vec<u64> = match fs::read_dir(&dir) {
            Ok(entries) => entries
                .filter_map(|entry| entry.ok())
                .filter_map(|entry| entry.file_name().to_str()?.strip_suffix(".log")?.parse().ok())
                .collect(),
            Err(err) if read_only && err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(err) => return Err(LogError::from_io(err)),
        };
        bases.sort_unstable();
        if bases.is_empty() && !read_only {
            bases.push(0);
        }
        let mut segments = Vec::with_capacity(bases.len());
        let last = bases.len().saturating_sub(1);
        for (i, base) in bases.into_iter().enumerate() {
            let expected = segments.last().map_or(base, Segment::end);
            let segment = load_segment(&dir, base, expected, i == last, read_only)?;
            segments.push(segment);
        }
        if !read_only {
            sync_dir(&dir)?;
        }
        let end = segments.last().map_or(0, Segment::end);
        let (appends, requests) = mpsc::channel(WRITER_QUEUE);
        let partition = Arc::new(Partition {
            topic: Arc::from(topic),
            id,
            dir,
            segment_bytes,
            segments: RwLock::new(segments),
            durable_end: AtomicU64::new(end),
            appends,
        });
        if read_only {
            // No writer: appends find the channel closed.
            drop(requests);
            return Ok(partition);
        }
        // The writer holds the partition weakly: once the log is dropped, the
        // channel's sender goes with the partition and the thread ends.
        let writer = Arc::downgrade(&partition);
        std::thread::Builder::new()
            .name(format!("log-{topic}-{id}"))
            .spawn(move || run_writer(writer, requests, notify))
            .map_err(LogError::from_io)?;
        Ok(partition)
    }

    /// Offset the next record will get; every record below it is durable.
    pub fn end_offset(&self) -> u64 {
        self.durable_end.load(Ordering::Acquire)
    }

    /// Appends one record; resolves once it is durable.
    pub async fn append(&self, key: &[u8], value: &[u8]) -> Result<Position, LogError> {
        let size = frame::encoded_len(key, value);
        if size > crate::log::MAX_RECORD_SIZE + 64 * 1024 {
            return Err(LogError::RecordTooLarge { size });
        }
        let (reply, acknowledged) = oneshot::channel();
        let request = AppendRequest { key: key.to_vec(), value: value.to_vec(), reply };
        self.appends.send(request).await.map_err(|_| LogError::Closed)?;
        let offset = acknowledged.await.map_err(|_| LogError::Closed)??;
        Ok(Position { partition: self.id, offset })
    }

    /// Reads up to `max` durable records from `offset`.
    pub fn read(&self, offset: u64, max: usize) -> Result<Vec<Record>, LogError> {
        let segments = self.segments.read().map_err(|_| LogError::Closed)?;
        // Below the first segment (superseded snapshots removed): start at it.
        let mut next = offset.max(segments.first().map_or(0, |s| s.base));
        let end = self.end_offset().min(next.saturating_add(max as u64));
        let mut records = Vec::new();
        while next < end {
            let index = segments.partition_point(|s| s.base <= next).saturating_sub(1);
            let Some(segment) = segments.get(index) else { break };
            if next < segment.base || next >= segment.end() {
                break;
            }
            let last = end.min(segment.end());
            let position = |offset: u64| segment.positions.get(offset - segment.base).map_err(LogError::from_io);
            let from = position(next)?.ok_or_else(|| self.corrupt(segment.base, 0))?;
            let to = position(last)?.unwrap_or(segment.len);
            if from > to || to > segment.len {
                // Only an index file altered after it checked out can say so.
                return Err(self.corrupt(segment.base, from));
            }
            let mut buf = vec![0; (to - from) as usize];
            segment.file.read_exact_at(&mut buf, from).map_err(LogError::from_io)?;
            // Every record's key and value are slices of this one buffer.
            let shared = bytes::Bytes::from(buf);
            let base = shared.as_ptr() as usize;
            let slice_of = |part: &[u8]| {
                let start = part.as_ptr() as usize - base;
                shared.slice(start..start + part.len())
            };
            let mut at = 0;
            while next < last {
                let (frame, len) =
                    frame::decode(&shared[at..]).map_err(|_| self.corrupt(segment.base, from + at as u64))?;
                if frame.offset != next {
                    return Err(self.corrupt(segment.base, from + at as u64));
                }
                records.push(Record {
                    topic: self.topic.clone(),
                    position: Position { partition: self.id, offset: next },
                    timestamp_ms: frame.timestamp_ms,
                    key: slice_of(frame.key),
                    value: slice_of(frame.value),
                });
                at += len;
                next += 1;
            }
        }
        Ok(records)
    }

    /// Removes the segments whose records all lie below `offset`, never the
    /// one being written. Reads below the first remaining record start at it.
    pub fn delete_segments_below(&self, offset: u64) -> Result<(), LogError> {
        let removed: Vec<u64> = {
            let mut segments = self.segments.write().map_err(|_| LogError::Closed)?;
            let keep_from = segments
                .iter()
                .position(|s| s.end() > offset)
                .unwrap_or(segments.len())
                .min(segments.len().saturating_sub(1));
            segments.drain(..keep_from).map(|s| s.base).collect()
        };
        if removed.is_empty() {
            return Ok(());
        }
        for base in &removed {
            fs::remove_file(segment_path(&self.dir, *base)).map_err(LogError::from_io)?;
            match fs::remove_file(index_path(&self.dir, *base)) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(LogError::from_io(err)),
                _ => {}
            }
        }
        sync_dir(&self.dir)
    }

    fn corrupt(&self, base: u64, at: u64) -> LogError {
        LogError::Corrupt { path: segment_path(&self.dir, base).display().to_string(), at }
    }

    /// Takes every queued request (up to [`MAX_BATCH`]) after `first`, writes
    /// them with one write and one fsync, and answers each.
    fn commit_batch(
        &self,
        requests: &mut mpsc::Receiver<AppendRequest>,
        notify: &watch::Sender<u64>,
        first: AppendRequest,
        state: &mut WriterState,
    ) {
        let WriterState { poisoned, buf, batch } = state;
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match requests.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        if let Some(reason) = poisoned.as_ref() {
            for request in batch.drain(..) {
                let _ = request.reply.send(Err(LogError::Io(std::io::Error::other(reason.clone()))));
            }
            return;
        }
        match self.write_batch(buf, batch) {
            Ok(first_offset) => {
                for (i, request) in batch.drain(..).enumerate() {
                    // A dropped receiver means the appender gave up; the record is durable anyway.
                    let _ = request.reply.send(Ok(first_offset + i as u64));
                }
                notify.send_modify(|n| *n = n.wrapping_add(1));
            }
            Err(failure) => {
                let err = match failure {
                    BatchError::Write(err) => {
                        tracing::warn!(topic = %self.topic, partition = self.id, error = %err, "event log write failed");
                        err
                    }
                    BatchError::Sync(err) => {
                        tracing::error!(topic = %self.topic, partition = self.id, error = %err, "event log fsync failed; partition refuses appends until reopened");
                        *poisoned = Some(err.to_string());
                        err
                    }
                };
                for request in batch.drain(..) {
                    let copy = match err.raw_os_error() {
                        Some(code) => std::io::Error::from_raw_os_error(code),
                        None => std::io::Error::other(err.to_string()),
                    };
                    let _ = request.reply.send(Err(LogError::from_io(copy)));
                }
            }
        }
    }

    /// Writes and syncs one batch; returns the offset of its first record.
    fn write_batch(&self, buf: &mut Vec<u8>, batch: &[AppendRequest]) -> Result<u64, BatchError> {
        let first = self.end_offset();
        self.roll_if_full().map_err(BatchError::Write)?;
        let timestamp_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        buf.clear();
        let mut relative = Vec::with_capacity(batch.len());
        for (i, request) in batch.iter().enumerate() {
            relative.push(buf.len() as u64);
            frame::encode(buf, first + i as u64, timestamp_ms, &request.key, &request.value);
        }
        let lock_error = || BatchError::Write(std::io::Error::other("index lock poisoned"));
        let (start, allocated) = {
            // Only this thread writes; the read lock keeps readers going meanwhile.
            let segments = self.segments.read().map_err(|_| lock_error())?;
            let segment = segments.last().ok_or_else(lock_error)?;
            let start = segment.len;
            let end = start + buf.len() as u64;
            let mut allocated = segment.allocated.max(start);
            if end > allocated {
                // Zero-fill ahead: later batches then overwrite allocated blocks,
                // and their fdatasync flushes data only, with no journal commit
                // for a size or extent change. On a nearly full disk the fill is
                // skipped, so that the data itself may still fit.
                let target = end + ZERO_FILL_AHEAD;
                if segment.file.write_all_at(&vec![0; (target - end) as usize], end).is_ok() {
                    allocated = target;
                }
            }
            // A failed write leaves at most junk past `len`, which the next batch
            // overwrites and a reopen truncates: the partition stays usable.
            segment.file.write_all_at(buf, start).map_err(BatchError::Write)?;
            segment.file.sync_data().map_err(BatchError::Sync)?;
            (start, allocated.max(end))
        };
        let mut segments = self.segments.write().map_err(|_| lock_error())?;
        let segment = segments.last_mut().ok_or_else(lock_error)?;
        // The segment being written keeps its positions in memory (see `roll_if_full`).
        let Positions::Memory(positions) = &mut segment.positions else { return Err(lock_error()) };
        positions.extend(relative.iter().map(|r| start + r));
        segment.len = start + buf.len() as u64;
        segment.allocated = allocated;
        self.durable_end.store(first + batch.len() as u64, Ordering::Release);
        let every = ACTIVE_INDEX_BYTES.min(self.segment_bytes / 4).max(1);
        let due = (segment.len - segment.indexed >= every).then(|| (segment.base, positions.clone(), segment.len));
        drop(segments);
        if let Some((base, positions, len)) = due {
            // Of durable records only, written without holding readers up.
            if index_segment(&self.dir, base, &positions, len)
                && let Some(segment) = self.segments.write().map_err(|_| lock_error())?.last_mut()
            {
                segment.indexed = len;
            }
        }
        Ok(first)
    }

    /// Starts a new segment when the current one is full.
    fn roll_if_full(&self) -> std::io::Result<()> {
        let full = {
            let segments = self.segments.read().map_err(|_| std::io::Error::other("index lock poisoned"))?;
            segments.last().is_some_and(|s| s.len >= self.segment_bytes)
        };
        if full {
            // Its index written, the sealed segment's positions leave memory.
            let indexed = {
                let segments = self.segments.read().map_err(|_| std::io::Error::other("index lock poisoned"))?;
                match segments.last() {
                    Some(Segment { base, positions: Positions::Memory(positions), len, .. })
                        if index_segment(&self.dir, *base, positions, *len) =>
                    {
                        Positions::on_disk(&self.dir, *base, positions.len())
                    }
                    _ => None,
                }
            };
            let base = self.end_offset();
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(segment_path(&self.dir, base))?;
            sync_dir(&self.dir).map_err(|e| std::io::Error::other(e.to_string()))?;
            let mut segments = self.segments.write().map_err(|_| std::io::Error::other("index lock poisoned"))?;
            if let (Some(sealed), Some(indexed)) = (segments.last_mut(), indexed) {
                sealed.positions = indexed;
            }
            segments.push(Segment {
                base,
                file,
                positions: Positions::Memory(Vec::new()),
                len: 0,
                allocated: 0,
                indexed: 0,
            });
        }
        Ok(())
    }
}

/// How a batch failed: a failed write can be retried over; a failed fsync
/// cannot (the kernel may have dropped the dirty pages), so it poisons the partition.
enum BatchError {
    Write(std::io::Error),
    Sync(std::io::Error),
}

/// What the writer thread keeps between batches.
#[derive(Default)]
struct WriterState {
    /// Set after a failed write or fsync: the reason every later append gets.
    poisoned: Option<String>,
    buf: Vec<u8>,
    batch: Vec<AppendRequest>,
}

/// The writer thread's loop: one batch per wake-up, until the partition is gone.
fn run_writer(partition: Weak<Partition>, mut requests: mpsc::Receiver<AppendRequest>, notify: watch::Sender<u64>) {
    let mut state = WriterState::default();
    while let Some(first) = requests.blocking_recv() {
        let Some(partition) = partition.upgrade() else { break };
        partition.commit_batch(&mut requests, &notify, first, &mut state);
        if state.buf.capacity() > RETAINED_BUF_BYTES {
            state.buf = Vec::new();
        }
    }
}

fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

fn index_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.index"))
}

/// Writes the index of the first `positions.len()` records (`len` bytes) of
/// segment `base`: [`INDEX_MAGIC`], the length and record count (u64 LE),
/// each record's byte position (u64 LE), then a CRC-32 of all of that.
/// Written to a temporary file, synced, then renamed; the directory is synced
/// by the next segment's creation or at the next open, and a rename lost
/// before that only means a scan.
fn write_index(dir: &Path, base: u64, positions: &[u64], len: u64) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(INDEX_MAGIC.len() + 16 + positions.len() * 8 + 4);
    buf.extend_from_slice(INDEX_MAGIC);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&(positions.len() as u64).to_le_bytes());
    for position in positions {
        buf.extend_from_slice(&position.to_le_bytes());
    }
    let crc = crc32fast::hash(&buf);
    buf.extend_from_slice(&crc.to_le_bytes());
    let temporary = dir.join(format!("{base:020}.index.tmp"));
    let file = File::create(&temporary)?;
    file.write_all_at(&buf, 0)?;
    file.sync_data()?;
    fs::rename(&temporary, index_path(dir, base))
}

/// [`write_index`], logging a failure, which costs only start-up time (the
/// segment is scanned instead); whether it was written.
fn index_segment(dir: &Path, base: u64, positions: &[u64], len: u64) -> bool {
    match write_index(dir, base, positions, len) {
        Ok(()) => true,
        Err(err) => {
            tracing::warn!(dir = %dir.display(), base, %err, "writing a segment index failed");
            false
        }
    }
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// The positions and length of the records of segment `base` (`file`,
/// `size` bytes) that its index file lists, when there is one that checks
/// out: magic and CRC, positions that start at 0 and rise, and a last frame
/// that decodes at its position with the expected offset and ends at the
/// recorded length; in a `sealed` segment followed by nothing but zeros.
fn read_index(dir: &Path, base: u64, file: &File, size: u64, sealed: bool) -> Option<(Vec<u64>, u64)> {
    let bytes = fs::read(index_path(dir, base)).ok()?;
    let body = bytes.get(..bytes.len().checked_sub(4)?)?;
    let crc = u32::from_le_bytes(bytes.get(body.len()..)?.try_into().ok()?);
    if !body.starts_with(INDEX_MAGIC) || crc32fast::hash(body) != crc {
        return None;
    }
    let (len, count) = (u64_at(body, 8)?, u64_at(body, 16)?);
    let listed = body.get(24..)?;
    if listed.len() as u64 != count.checked_mul(8)? || len > size {
        return None;
    }
    let positions: Vec<u64> = (0..listed.len()).step_by(8).filter_map(|at| u64_at(listed, at)).collect();
    let rising = positions.windows(2).all(|pair| pair[0] < pair[1]);
    if !rising || positions.first().is_some_and(|&first| first != 0) {
        return None;
    }
    let Some(&last) = positions.last() else { return (len == 0).then_some((positions, len)) };
    let mut frame = vec![0; usize::try_from(len.checked_sub(last)?).ok()?];
    file.read_exact_at(&mut frame, last).ok()?;
    let (decoded, frame_len) = frame::decode(&frame).ok()?;
    if decoded.offset != base + count - 1 || frame_len != frame.len() {
        return None;
    }
    if !sealed {
        return Some((positions, len));
    }
    // Past the last record a sealed segment holds only zeros written ahead:
    // anything else means the index lists fewer records than the file.
    let mut after = vec![0; usize::try_from((size - len).min(64)).ok()?];
    file.read_exact_at(&mut after, len).ok()?;
    after.iter().all(|&b| b == 0).then_some((positions, len))
}

/// Opens one segment and indexes its valid frames. A torn or corrupt tail of
/// the last segment is truncated (it was never acknowledged); anywhere else it
/// is an error, since acknowledged records would be lost.
fn load_segment(
    dir: &Path,
    base: u64,
    expected_base: u64,
    is_last: bool,
    read_only: bool,
) -> Result<Segment, LogError> {
    let path = segment_path(dir, base);
    if base != expected_base {
        return Err(LogError::Corrupt { path: path.display().to_string(), at: 0 });
    }
    let file = OpenOptions::new()
        .read(true)
        .write(!read_only)
        .create(!read_only)
        .truncate(false)
        .open(&path)
        .map_err(LogError::from_io)?;
    let size = file.metadata().map_err(LogError::from_io)?.len();
    // The records the index lists; the last segment is scanned past them.
    let (mut positions, indexed) = match read_index(dir, base, &file, size, !is_last) {
        Some((positions, len)) if !is_last => {
            // Checked out: reads take the positions from the file from now on.
            let positions = Positions::on_disk(dir, base, positions.len()).unwrap_or(Positions::Memory(positions));
            return Ok(Segment { base, file, positions, len, allocated: size, indexed: len });
        }
        Some(found) => found,
        None => (Vec::new(), 0),
    };
    let mut data = vec![0; (size - indexed) as usize];
    file.read_exact_at(&mut data, indexed).map_err(LogError::from_io)?;
    let tail = frame::scan(&data, base + positions.len() as u64);
    positions.extend(tail.positions.iter().map(|p| indexed + p));
    let at = indexed as usize + tail.valid_len;
    if tail.valid_len < data.len() {
        let torn = data[tail.valid_len..].iter().any(|&b| b != 0);
        if torn && !is_last {
            return Err(LogError::Corrupt { path: path.display().to_string(), at: at as u64 });
        }
        if read_only {
            // The writer may be in the middle of this tail: serve the valid prefix, touch nothing.
            let positions = Positions::Memory(positions);
            return Ok(Segment { base, file, positions, len: at as u64, allocated: at as u64, indexed });
        }
        if torn {
            tracing::warn!(path = %path.display(), at, "truncating torn tail of the event log");
        }
        // Zeros written ahead, or a torn tail that was never acknowledged.
        file.set_len(at as u64).map_err(LogError::from_io)?;
        file.sync_all().map_err(LogError::from_io)?;
    }
    // Written before the index existed, or its index did not check out; the
    // caller syncs the directory once every segment is loaded.
    let on_disk = (!is_last && !read_only && index_segment(dir, base, &positions, at as u64))
        .then(|| {
            tracing::info!(path = %path.display(), records = positions.len(), "segment index written");
            Positions::on_disk(dir, base, positions.len())
        })
        .flatten();
    let positions = on_disk.unwrap_or(Positions::Memory(positions));
    Ok(Segment { base, file, positions, len: at as u64, allocated: at as u64, indexed })
}

/// Makes a directory's entries (new files) durable.
pub(super) fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(LogError::from_io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::embedded::{EmbeddedLog, Options};
    use crate::log::{EventLog as _, TopicKind};

    const RECORDS: u32 = 300;

    fn value(n: u32) -> Vec<u8> {
        format!("record {n} {}", "x".repeat((n % 50) as usize)).into_bytes()
    }

    /// Opens the log in `dir` with 4 KiB segments and reads every record of `t`/0.
    async fn read_all(dir: &Path) -> Result<Vec<Vec<u8>>, LogError> {
        let log = EmbeddedLog::open(dir, Options { segment_bytes: 4096 })?;
        log.create_topic("t", 1, TopicKind::Events).await?;
        Ok(log.read("t", 0, 0, 10_000).await?.into_iter().map(|r| r.value.to_vec()).collect())
    }

    /// Appends [`RECORDS`] records to `t`/0 of a log in `dir` with 4 KiB
    /// segments; returns the partition directory and its segment bases.
    async fn filled(dir: &Path) -> (PathBuf, Vec<u64>) {
        let log = EmbeddedLog::open(dir, Options { segment_bytes: 4096 }).unwrap();
        log.create_topic("t", 1, TopicKind::Events).await.unwrap();
        for n in 0..RECORDS {
            log.append_to("t", 0, b"k", &value(n)).await.unwrap();
        }
        drop(log);
        let partition = dir.join("topics").join("t").join("0");
        let mut bases: Vec<u64> = fs::read_dir(&partition)
            .unwrap()
            .filter_map(|e| e.unwrap().file_name().to_str()?.strip_suffix(".log")?.parse().ok())
            .collect();
        bases.sort_unstable();
        assert!(bases.len() >= 3, "several segments: {bases:?}");
        (partition, bases)
    }

    fn index_checks_out(partition: &Path, base: u64) -> bool {
        let file = File::open(segment_path(partition, base)).unwrap();
        let size = file.metadata().unwrap().len();
        read_index(partition, base, &file, size, true).is_some()
    }

    /// Whether every sealed segment of `partition` reads its positions from
    /// its index file and the one being written holds them in memory.
    fn sealed_positions_are_on_disk(partition: &Partition) -> bool {
        let segments = partition.segments.read().unwrap();
        let Some((last, sealed)) = segments.split_last() else { return false };
        sealed.len() >= 3
            && sealed.iter().all(|s| matches!(s.positions, Positions::File { .. }))
            && matches!(last.positions, Positions::Memory(_))
    }

    #[tokio::test]
    async fn sealed_segments_keep_their_positions_in_their_index_files_and_every_record_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t-0");
        let open = || Partition::open("t", 0, path.clone(), 4096, watch::channel(0).0, false).unwrap();
        let partition = open();
        for n in 0..RECORDS {
            partition.append(b"k", &value(n)).await.unwrap();
        }
        let check = |partition: &Partition| {
            assert!(sealed_positions_are_on_disk(partition));
            let all: Vec<Vec<u8>> = partition.read(0, 10_000).unwrap().iter().map(|r| r.value.to_vec()).collect();
            assert_eq!(all, (0..RECORDS).map(value).collect::<Vec<_>>());
            // Each record alone: its position and the next one's, from any segment.
            for n in 0..RECORDS {
                let one = partition.read(u64::from(n), 1).unwrap();
                assert_eq!((one.len(), one[0].value.to_vec()), (1, value(n)), "record {n}");
            }
            let two = partition.read(u64::from(RECORDS) - 2, 5).unwrap();
            assert_eq!(two.len(), 2, "a read stops at the durable end");
        };
        // Sealed while running, and again after a reopen that checks the indexes.
        check(&partition);
        drop(partition);
        check(&open());
    }

    #[tokio::test]
    async fn an_index_file_altered_after_it_checked_out_is_a_corrupt_read_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t-0");
        let partition = Partition::open("t", 0, path.clone(), 4096, watch::channel(0).0, false).unwrap();
        for n in 0..RECORDS {
            partition.append(b"k", &value(n)).await.unwrap();
        }
        assert!(sealed_positions_are_on_disk(&partition));
        // Record 1's position, in place: past the segment's end.
        let index = OpenOptions::new().write(true).open(index_path(&path, 0)).unwrap();
        index.write_all_at(&u64::MAX.to_le_bytes(), INDEX_HEADER + 8).unwrap();
        assert!(matches!(partition.read(1, 1), Err(LogError::Corrupt { .. })));
        assert!(matches!(partition.read(0, 1), Err(LogError::Corrupt { .. })), "record 0 ends where record 1 starts");
        assert_eq!(partition.read(2, 1).unwrap()[0].value.to_vec(), value(2), "the rest still reads");
    }

    #[tokio::test]
    async fn every_sealed_segment_gets_an_index_and_opening_takes_the_positions_from_it() {
        let dir = tempfile::tempdir().unwrap();
        let (partition, bases) = filled(dir.path()).await;
        let (sealed, last) = bases.split_at(bases.len() - 1);
        assert!(sealed.iter().all(|&base| index_checks_out(&partition, base)));
        assert!(!index_checks_out(&partition, last[0]), "the segment being written has no index of a sealed one");
        let expected: Vec<Vec<u8>> = (0..RECORDS).map(value).collect();
        assert_eq!(read_all(dir.path()).await.unwrap(), expected);

        // Damage the second record of the first segment: a scan at open would
        // refuse the log; with the index the open does not read the frame, and
        // the read that reaches it still refuses to serve it.
        let path = segment_path(&partition, sealed[0]);
        let mut bytes = fs::read(&path).unwrap();
        let (_, first_len) = frame::decode(&bytes).unwrap();
        bytes[first_len + 20] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        let log = EmbeddedLog::open(dir.path(), Options { segment_bytes: 4096 }).unwrap();
        log.create_topic("t", 1, TopicKind::Events).await.unwrap();
        assert_eq!(log.read("t", 0, 0, 1).await.unwrap()[0].value.to_vec(), value(0));
        assert!(matches!(log.read("t", 0, 1, 1).await, Err(LogError::Corrupt { .. })));
    }

    #[tokio::test]
    async fn the_last_segment_is_scanned_only_past_its_index_and_a_torn_tail_there_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (partition, bases) = filled(dir.path()).await;
        let last = *bases.last().unwrap();
        let path = segment_path(&partition, last);
        let file = File::open(&path).unwrap();
        let size = file.metadata().unwrap().len();
        let (positions, indexed) = read_index(&partition, last, &file, size, false).expect("an index of its prefix");
        let all = read_all(dir.path()).await.unwrap();
        let in_last = all.len() - (last as usize);
        assert!(positions.len() >= 2 && positions.len() < in_last, "a prefix: {} of {in_last}", positions.len());

        // A torn write past the durable records: cut at open, nothing lost.
        let mut bytes = fs::read(&path).unwrap();
        let end = bytes.len();
        bytes.extend_from_slice(&[0x55; 40]);
        fs::write(&path, &bytes).unwrap();
        assert_eq!(read_all(dir.path()).await.unwrap(), all);
        assert_eq!(fs::metadata(&path).unwrap().len(), end as u64, "the torn tail is truncated");

        // Inside the indexed prefix the frames are not read at open; a damaged
        // one is still refused when read.
        let mut bytes = fs::read(&path).unwrap();
        bytes[positions[0] as usize + 20] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        let log = EmbeddedLog::open(dir.path(), Options { segment_bytes: 4096 }).unwrap();
        log.create_topic("t", 1, TopicKind::Events).await.unwrap();
        assert!(matches!(log.read("t", 0, last, 1).await, Err(LogError::Corrupt { .. })));
        let past_index = last + positions.len() as u64;
        assert_eq!(log.read("t", 0, past_index, 1).await.unwrap()[0].value.to_vec(), all[past_index as usize]);
        assert!(indexed < size);
    }

    #[tokio::test]
    async fn a_damaged_or_short_index_is_ignored_the_segment_scanned_and_the_index_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let (partition, bases) = filled(dir.path()).await;
        let expected: Vec<Vec<u8>> = (0..RECORDS).map(value).collect();

        // One byte flipped: the CRC does not match.
        let index = index_path(&partition, bases[0]);
        let mut bytes = fs::read(&index).unwrap();
        bytes[30] ^= 0x01;
        fs::write(&index, &bytes).unwrap();
        assert!(!index_checks_out(&partition, bases[0]));
        assert_eq!(read_all(dir.path()).await.unwrap(), expected);
        assert!(index_checks_out(&partition, bases[0]), "written again at open");

        // A well-formed index that lists one record too few: the bytes past
        // its length are a frame, not zeros.
        let file = File::open(segment_path(&partition, bases[1])).unwrap();
        let size = file.metadata().unwrap().len();
        let (positions, _) = read_index(&partition, bases[1], &file, size, true).unwrap();
        let short = &positions[..positions.len() - 1];
        write_index(&partition, bases[1], short, positions[positions.len() - 1]).unwrap();
        assert!(!index_checks_out(&partition, bases[1]));
        assert_eq!(read_all(dir.path()).await.unwrap(), expected);
        assert!(index_checks_out(&partition, bases[1]));

        // No index at all (a log written before indexes existed).
        fs::remove_file(index_path(&partition, bases[0])).unwrap();
        assert_eq!(read_all(dir.path()).await.unwrap(), expected);
        assert!(index_checks_out(&partition, bases[0]));
    }
}
