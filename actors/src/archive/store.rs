//! The archive directory and its on-disk format.
//!
//! ```text
//! DIR/<message id>.eml    the content as received, byte for byte (messages with a `Received` record)
//! DIR/<message id>.json   {"message_id", "status", "sender", "recipients", "subject",
//!                          "internet_message_id", "size", "received_at", "eml", "records": [...]}
//! DIR/.position           embedded log only: {"topic": "mailflow.journal", "next_offsets": {"<partition>": <offset>}}
//! ```
//!
//! `records` holds the message's journal records as published (whole JSON
//! objects, fields this build does not know included), in the order read,
//! each once: a record whose `event_id` is already there is a copy written
//! again after a crash and is dropped. The other fields summarise them.
//!
//! Every file is written to a temporary name, fsynced and renamed over the
//! old one, so a reader sees the old file or the new one, never a mix. The
//! directory is fsynced before `.position` moves on: after a crash the
//! position never runs ahead of the files, and records read again are
//! deduplicated, so running the archive again is harmless (idempotent).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::ArchiveError;

/// Name of the resume-position file (embedded log).
pub const POSITION_FILE: &str = ".position";

/// The archive directory.
#[derive(Debug)]
pub struct ArchiveDir {
    root: PathBuf,
}

/// Whether `id` may name a file: what the router's ids are made of (hex,
/// UUIDs), nothing that could leave the directory or hide a file.
pub fn is_safe_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 200
        && !id.starts_with('.')
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | '+'))
}

/// `existing` followed by the records of `new` whose `event_id` is not among
/// them yet; also the number added.
pub fn merge(mut existing: Vec<Value>, new: &[Value]) -> (Vec<Value>, usize) {
    let mut added = 0;
    for record in new {
        let id = record.get("event_id");
        if id.is_some() && existing.iter().any(|r| r.get("event_id") == id) {
            continue;
        }
        existing.push(record.clone());
        added += 1;
    }
    (existing, added)
}

/// The metadata file of `message_id` for its `records`; `eml` names the
/// content file when there is one.
pub fn metadata(message_id: &str, records: &[Value], eml: Option<&str>) -> Value {
    let received = records.iter().find(|r| r.get("type").and_then(Value::as_str) == Some("Received"));
    let first = received.or(records.first());
    let field = |name: &str| first.and_then(|r| r.get(name)).cloned().unwrap_or(Value::Null);
    json!({
        "message_id": message_id,
        // The latest record says where the message stands now.
        "status": records.last().and_then(|r| r.get("status")).cloned().unwrap_or(Value::Null),
        "sender": field("sender"),
        "recipients": field("recipients"),
        "subject": field("subject"),
        "internet_message_id": field("internet_message_id"),
        "size": field("size"),
        "received_at": received.and_then(|r| r.get("received_at")).cloned().unwrap_or(Value::Null),
        "eml": eml,
        "records": records,
    })
}

impl ArchiveDir {
    /// Opens `root`, creating it if needed.
    pub fn open(root: &Path) -> Result<Self, ArchiveError> {
        fs::create_dir_all(root).map_err(|e| ArchiveError::io(root, e))?;
        Ok(Self { root: root.to_path_buf() })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The next offset of each journal partition, from `.position` (empty when none).
    pub fn positions(&self) -> Result<BTreeMap<u32, u64>, ArchiveError> {
        let path = self.path(POSITION_FILE);
        let text = match fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(ArchiveError::io(&path, e)),
        };
        let value: Value = serde_json::from_slice(&text)
            .map_err(|e| ArchiveError::Format { path: path.clone(), reason: e.to_string() })?;
        let offsets = value
            .get("next_offsets")
            .and_then(Value::as_object)
            .ok_or_else(|| ArchiveError::Format { path: path.clone(), reason: "no next_offsets object".to_string() })?;
        let mut positions = BTreeMap::new();
        for (partition, offset) in offsets {
            let (Ok(partition), Some(offset)) = (partition.parse::<u32>(), offset.as_u64()) else {
                return Err(ArchiveError::Format { path, reason: format!("bad entry {partition}: {offset}") });
            };
            positions.insert(partition, offset);
        }
        Ok(positions)
    }

    /// Records the next offset of each partition, after [`ArchiveDir::sync`].
    pub fn save_positions(&self, positions: &BTreeMap<u32, u64>) -> Result<(), ArchiveError> {
        let offsets: serde_json::Map<String, Value> =
            positions.iter().map(|(partition, offset)| (partition.to_string(), Value::from(*offset))).collect();
        let value = json!({"topic": mailflow_events::topic::JOURNAL, "next_offsets": offsets});
        self.write(POSITION_FILE, &pretty(&value))?;
        self.sync()
    }

    /// Whether `<id>.eml` holds `size` bytes already.
    pub fn has_eml(&self, id: &str, size: u64) -> bool {
        fs::metadata(self.path(&format!("{id}.eml"))).is_ok_and(|m| m.len() == size)
    }

    /// Whether `<id>.eml` exists.
    pub fn eml_exists(&self, id: &str) -> bool {
        self.path(&format!("{id}.eml")).exists()
    }

    /// Writes `<id>.eml`.
    pub fn write_eml(&self, id: &str, content: &[u8]) -> Result<(), ArchiveError> {
        self.write(&format!("{id}.eml"), content)
    }

    /// The records of `<id>.json` (none when there is no such file).
    pub fn records(&self, id: &str) -> Result<Vec<Value>, ArchiveError> {
        let path = self.path(&format!("{id}.json"));
        let text = match fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(ArchiveError::io(&path, e)),
        };
        let value: Value = serde_json::from_slice(&text)
            .map_err(|e| ArchiveError::Format { path: path.clone(), reason: e.to_string() })?;
        match value.get("records").and_then(Value::as_array) {
            Some(records) => Ok(records.clone()),
            None => Err(ArchiveError::Format { path, reason: "no records array".to_string() }),
        }
    }

    /// Writes `<id>.json`.
    pub fn write_metadata(&self, id: &str, metadata: &Value) -> Result<(), ArchiveError> {
        self.write(&format!("{id}.json"), &pretty(metadata))
    }

    /// Writes `name` atomically: temporary file, fsync, rename.
    fn write(&self, name: &str, bytes: &[u8]) -> Result<(), ArchiveError> {
        let temp = self.path(&format!(".tmp.{name}"));
        let target = self.path(name);
        let mut file = fs::File::create(&temp).map_err(|e| ArchiveError::io(&temp, e))?;
        file.write_all(bytes).and_then(|()| file.sync_all()).map_err(|e| ArchiveError::io(&temp, e))?;
        fs::rename(&temp, &target).map_err(|e| ArchiveError::io(&target, e))
    }

    /// Makes the renames so far durable.
    pub fn sync(&self) -> Result<(), ArchiveError> {
        fs::File::open(&self.root).and_then(|dir| dir.sync_all()).map_err(|e| ArchiveError::io(&self.root, e))
    }
}

fn pretty(value: &Value) -> Vec<u8> {
    let mut text = serde_json::to_vec_pretty(value).expect("JSON values serialise");
    text.push(b'\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(event_id: &str, kind: &str, status: &str) -> Value {
        json!({"event_id": event_id, "type": kind, "status": status, "sender": "a@contoso.com", "recipients": ["b@contoso.com"]})
    }

    #[test]
    fn a_record_seen_before_is_not_added_again() {
        let first = vec![record("1", "Received", "pending")];
        let (merged, added) =
            merge(first, &[record("1", "Received", "pending"), record("2", "Delivered", "delivered")]);
        assert_eq!(added, 1);
        assert_eq!(merged.len(), 2);
        let (again, added) = merge(merged.clone(), &[record("2", "Delivered", "delivered")]);
        assert_eq!((again, added), (merged, 0));
    }

    #[test]
    fn metadata_takes_the_columns_of_receive_and_the_status_of_the_last_record() {
        let records = [record("1", "Received", "pending"), record("2", "Delivered", "delivered")];
        let value = metadata("m1", &records, Some("m1.eml"));
        assert_eq!(value["status"], "delivered");
        assert_eq!(value["sender"], "a@contoso.com");
        assert_eq!(value["eml"], "m1.eml");
        assert_eq!(value["records"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn only_plain_ids_name_files() {
        assert!(is_safe_id("01a2071b9c40700a8163a059c9d0cd6b"));
        assert!(is_safe_id("0193556a-1f0e-7b6c-9d2a-5e8f4c3b2a10"));
        for bad in ["", "../etc/passwd", ".position", "a/b", "a\0b"] {
            assert!(!is_safe_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn positions_survive_a_round_trip_and_a_missing_file_is_the_start() {
        let dir = tempfile::tempdir().expect("temp dir");
        let archive = ArchiveDir::open(dir.path()).expect("opens");
        assert!(archive.positions().expect("reads").is_empty());
        let positions = BTreeMap::from([(0, 12), (3, 4)]);
        archive.save_positions(&positions).expect("saves");
        assert_eq!(archive.positions().expect("reads"), positions);
        assert!(!dir.path().join(".tmp..position").exists(), "no temporary file is left");
    }
}
