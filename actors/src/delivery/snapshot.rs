//! Snapshots of a delivery partition's folded state in `mailflow.snapshots`
//! (DESIGN §3): on assignment the delivery actor loads the latest one and
//! folds only the events after it.
//!
//! A snapshot of delivery partition `p` lives in snapshot partition
//! `p mod n`. Its state, serialised as JSON, is cut into chunks of at most
//! [`CHUNK`] bytes (Kafka's default record limit is 1 MB), each a record keyed
//! `delivery/<p>/<i>`, followed by a manifest keyed `delivery/<p>` naming the
//! chunks' offsets and the CRC-32 of the whole. A record is a one-line JSON
//! header, a newline, and the chunk's bytes. The manifest is written last, so a
//! crash in the middle leaves chunks without a manifest, which loading skips;
//! anything that does not check out (missing chunk, other snapshot id, wrong
//! CRC, undecodable state) means no snapshot: the partition is replayed from 0.
//! Superseded snapshots are compacted away by Kafka, or trimmed by the
//! embedded log ([`EventLog::trim_snapshots`]).

use mailflow_events::log::{EventLog, LogError, Position, Record};
use mailflow_events::topic;
use serde::{Deserialize, Serialize};

use super::state::PartitionState;

/// Largest chunk of a snapshot's state in one record.
pub const CHUNK: usize = 512 * 1024;

/// Header of a snapshot record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Header {
    /// `chunk` or `manifest`.
    kind: String,
    /// The delivery partition whose state this is.
    delivery_partition: u32,
    /// Identifies one snapshot's records.
    snapshot: String,
    /// The state covers the delivery partition's events below this offset.
    next_offset: u64,
    /// Chunk number (chunks), or the number of chunks (manifest).
    index: u32,
    /// Offsets of the chunks in order (manifest only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    chunk_offsets: Vec<u64>,
    /// CRC-32 of the whole serialised state (manifest only).
    #[serde(default)]
    crc32: u32,
}

fn encode(header: &Header, payload: &[u8]) -> Vec<u8> {
    let mut value = serde_json::to_vec(header).unwrap_or_default();
    value.push(b'\n');
    value.extend_from_slice(payload);
    value
}

fn decode(record: &Record) -> Option<(Header, &[u8])> {
    let split = record.value.iter().position(|&b| b == b'\n')?;
    let header: Header = serde_json::from_slice(&record.value[..split]).ok()?;
    Some((header, &record.value[split + 1..]))
}

/// The snapshot partition of delivery partition `partition`.
fn snapshot_partition(log: &dyn EventLog, partition: u32) -> Result<u32, LogError> {
    Ok(partition % log.partitions(topic::SNAPSHOTS)?.max(1))
}

/// Serialises `state` (done by the caller's task, which owns the state).
pub fn serialise(state: &PartitionState) -> Vec<u8> {
    serde_json::to_vec(state).unwrap_or_default()
}

/// Writes the serialised state of `partition` as of `next_offset`; returns the
/// manifest's position. Then lets the log drop older snapshots of the
/// partition when no other partition's share its snapshot partition.
pub async fn write(log: &dyn EventLog, partition: u32, next_offset: u64, data: &[u8]) -> Result<Position, LogError> {
    let target = snapshot_partition(log, partition)?;
    let snapshot = uuid::Uuid::now_v7().to_string();
    let header = |kind: &str, index: u32| Header {
        kind: kind.to_string(),
        delivery_partition: partition,
        snapshot: snapshot.clone(),
        next_offset,
        index,
        chunk_offsets: Vec::new(),
        crc32: 0,
    };
    let mut offsets = Vec::new();
    for (index, chunk) in data.chunks(CHUNK).enumerate() {
        let key = format!("delivery/{partition}/{index}");
        let value = encode(&header("chunk", index as u32), chunk);
        offsets.push(log.append_to(topic::SNAPSHOTS, target, key.as_bytes(), &value).await?.offset);
    }
    let first = offsets.first().copied();
    let manifest = Header {
        index: offsets.len() as u32,
        chunk_offsets: offsets,
        crc32: crc32fast::hash(data),
        ..header("manifest", 0)
    };
    let key = format!("delivery/{partition}");
    let position = log.append_to(topic::SNAPSHOTS, target, key.as_bytes(), &encode(&manifest, &[])).await?;
    let alone = log.partitions(topic::SNAPSHOTS)? >= log.partitions(topic::DELIVERY)?;
    if alone {
        log.trim_snapshots(topic::SNAPSHOTS, target, first.unwrap_or(position.offset)).await?;
    }
    Ok(position)
}

/// Loads the latest complete snapshot of `partition`; `None` when there is
/// none or it does not check out (the caller then replays from 0).
pub async fn load(log: &dyn EventLog, partition: u32) -> Option<PartitionState> {
    let target = snapshot_partition(log, partition).ok()?;
    let end = log.end_offset(topic::SNAPSHOTS, target).await.ok()?;
    // The manifest is written last: walk back from the end to the latest one.
    let mut offset = end;
    let manifest = loop {
        if offset == 0 {
            return None;
        }
        offset -= 1;
        let records = log.read(topic::SNAPSHOTS, target, offset, 1).await.ok()?;
        let record = records.first()?;
        // Below the log's start (trimmed): nothing older to find.
        if record.position.offset != offset {
            if record.position.offset > offset {
                return None;
            }
            continue;
        }
        if let Some((header, _)) = decode(record)
            && header.kind == "manifest"
            && header.delivery_partition == partition
        {
            break header;
        }
    };
    // Sized up front: growing a buffer of hundreds of MiB by doubling copies it
    // several times over. (Capped: a damaged manifest must not reserve more.)
    let mut data = Vec::with_capacity(manifest.chunk_offsets.len().saturating_mul(CHUNK).min(1 << 30));
    for (index, chunk_offset) in manifest.chunk_offsets.iter().enumerate() {
        let records = log.read(topic::SNAPSHOTS, target, *chunk_offset, 1).await.ok()?;
        let record = records.first().filter(|r| r.position.offset == *chunk_offset)?;
        let (header, payload) = decode(record)?;
        if header.kind != "chunk" || header.snapshot != manifest.snapshot || header.index as usize != index {
            tracing::warn!(partition, snapshot = %manifest.snapshot, "snapshot chunk missing; replaying from 0");
            return None;
        }
        data.extend_from_slice(payload);
    }
    if crc32fast::hash(&data) != manifest.crc32 {
        tracing::warn!(partition, snapshot = %manifest.snapshot, "snapshot CRC mismatch; replaying from 0");
        return None;
    }
    match serde_json::from_slice::<PartitionState>(&data) {
        Ok(state) if state.next_offset == manifest.next_offset => Some(state),
        Ok(_) | Err(_) => {
            tracing::warn!(partition, snapshot = %manifest.snapshot, "snapshot undecodable; replaying from 0");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone as _;
    use mailflow_events::Envelope;
    use mailflow_events::content::ContentRef;
    use mailflow_events::delivery::{
        DeliveryEvent, Destination, DestinationKind, Queued, QueuedRecipient, RouteReason,
    };
    use mailflow_events::log::TopicKind;
    use mailflow_events::log::embedded::{EmbeddedLog, Options};

    use super::*;

    fn state_with(messages: usize) -> PartitionState {
        let destination = Destination { kind: DestinationKind::Internet, name: "example.org".into(), next_hop: None };
        let received_at = chrono::Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0).unwrap();
        let mut state = PartitionState::default();
        for n in 0..messages {
            let queued = Queued {
                destination: destination.clone(),
                route: RouteReason::Mx,
                recipients: vec![QueuedRecipient {
                    address: format!("user{n}@example.org"),
                    notify: vec![],
                    orcpt: None,
                }],
                mail_from: "alice@contoso.com".into(),
                dsn_return: None,
                dsn_envid: None,
                body: Default::default(),
                smtputf8: false,
                require_tls: false,
                disclaimer: None,
                content: ContentRef { partition: 0, first_offset: n as u64, chunks: 1, size: 100, crc32: 0 },
                prepend_headers: vec![],
                remove_headers: vec![],
                subject_prefix: None,
                folder: None,
                received_at: received_at + chrono::Duration::seconds(n as i64),
                expires_at: received_at + chrono::Duration::hours(24),
            };
            let envelope = Envelope::new(format!("m{n:05}"), "test", received_at, DeliveryEvent::Queued(queued));
            state.apply(n as u64, &envelope);
        }
        state
    }

    async fn log(dir: &std::path::Path, segment_bytes: u64) -> EmbeddedLog {
        let log = EmbeddedLog::open(dir, Options { segment_bytes }).unwrap();
        log.create_topic(topic::DELIVERY, 2, TopicKind::Events).await.unwrap();
        log.create_topic(topic::SNAPSHOTS, 2, TopicKind::Snapshots).await.unwrap();
        log
    }

    #[tokio::test]
    async fn a_snapshot_of_several_chunks_loads_back_equal() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(dir.path(), 256 * 1024 * 1024).await;
        let state = state_with(5000);
        let data = serialise(&state);
        assert!(data.len() > CHUNK, "the test needs more than one chunk: {} bytes", data.len());
        write(&log, 1, state.next_offset, &data).await.unwrap();
        assert_eq!(load(&log, 1).await, Some(state.clone()));
        assert_eq!(load(&log, 0).await, None, "another partition has no snapshot");
        // A newer snapshot supersedes it.
        let newer = state_with(10);
        write(&log, 1, newer.next_offset, &serialise(&newer)).await.unwrap();
        assert_eq!(load(&log, 1).await, Some(newer));
    }

    #[tokio::test]
    async fn a_snapshot_torn_by_a_crash_is_skipped_for_the_previous_one() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(dir.path(), 256 * 1024 * 1024).await;
        let old = state_with(3);
        write(&log, 0, old.next_offset, &serialise(&old)).await.unwrap();
        // Chunks of a newer snapshot without their manifest.
        let header = Header {
            kind: "chunk".into(),
            delivery_partition: 0,
            snapshot: "torn".into(),
            next_offset: 99,
            index: 0,
            chunk_offsets: vec![],
            crc32: 0,
        };
        log.append_to(topic::SNAPSHOTS, 0, b"delivery/0/0", &encode(&header, b"{\"destinations\":")).await.unwrap();
        assert_eq!(load(&log, 0).await, Some(old));
    }

    #[tokio::test]
    async fn a_corrupt_snapshot_means_replay_from_zero() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(dir.path(), 256 * 1024 * 1024).await;
        let state = state_with(3);
        let mut data = serialise(&state);
        let manifest = write(&log, 0, state.next_offset, &data).await.unwrap();
        // A manifest whose CRC does not match what the chunks hold.
        data[10] ^= 1;
        let header = Header {
            kind: "manifest".into(),
            delivery_partition: 0,
            snapshot: "x".into(),
            next_offset: state.next_offset,
            index: 1,
            chunk_offsets: vec![manifest.offset - 1],
            crc32: crc32fast::hash(&data),
        };
        log.append_to(topic::SNAPSHOTS, 0, b"delivery/0", &encode(&header, &[])).await.unwrap();
        assert_eq!(load(&log, 0).await, None);
    }

    #[tokio::test]
    async fn superseded_snapshots_are_trimmed_from_the_embedded_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(dir.path(), 64 * 1024).await;
        let state = state_with(500);
        let data = serialise(&state);
        for _ in 0..20 {
            write(&log, 0, state.next_offset, &data).await.unwrap();
        }
        let segments = std::fs::read_dir(dir.path().join("topics").join(topic::SNAPSHOTS).join("0"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".log"))
            .count();
        assert!(segments <= 3, "{segments} segments kept");
        assert_eq!(load(&log, 0).await, Some(state));
    }
}
