//! The trace index's checkpoint in the data directory (by default
//! `<embedded log>/trace/index.json`; see `[trace] path`).
//!
//! The follower writes the whole [`TraceIndex`] with the journal offsets it
//! covers, and at start loads it and reads only the journal records after
//! them. Without a checkpoint, or with one that does not check out, the index
//! is rebuilt from offset 0: the log stays the source of truth.
//!
//! File format: a one-line JSON [`Header`], a newline, then the index as JSON.
//! The header carries the body's length and CRC-32, so a torn or damaged file
//! is noticed. A file is written to a temporary name, fsynced, renamed over
//! the old one, and the directory fsynced: a crash leaves the old checkpoint
//! or the new one, never a mix.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::TraceIndex;

/// Name of the checkpoint file in its directory.
pub const FILE: &str = "index.json";
/// Format version written; a file of another version is rebuilt.
const VERSION: u32 = 1;

/// The checkpoint's first line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Format version ([`VERSION`]).
    pub version: u32,
    /// The journal offset after the last record applied, per partition.
    pub next: Vec<u64>,
    /// Messages in the index.
    pub messages: u64,
    /// Bytes of the body after the header line.
    pub len: u64,
    /// CRC-32 of the body.
    pub crc32: u32,
    /// When it was written (RFC 3339), for operators.
    pub written_at: String,
}

/// Why a checkpoint was not used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a checkpoint this version understands, or is damaged.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The checkpoint of `index` covering the journal below `next`.
pub fn encode(index: &TraceIndex, next: &[u64]) -> Vec<u8> {
    let body = serde_json::to_vec(index).unwrap_or_default();
    let header = Header {
        version: VERSION,
        next: next.to_vec(),
        messages: index.messages() as u64,
        len: body.len() as u64,
        crc32: crc32fast::hash(&body),
        written_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    };
    let mut bytes = serde_json::to_vec(&header).unwrap_or_default();
    bytes.push(b'\n');
    bytes.extend_from_slice(&body);
    bytes
}

/// Writes `bytes` (from [`encode`]) as the checkpoint in `dir`, creating it,
/// atomically replacing the previous one.
pub fn save(dir: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let path = dir.join(FILE);
    let io = |source| StoreError::Io { path: path.clone(), source };
    std::fs::create_dir_all(dir).map_err(io)?;
    // Per process: two processes sharing the directory never write one file.
    let temp = dir.join(format!("{FILE}.{}.tmp", std::process::id()));
    let mut file = std::fs::File::create(&temp).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&temp, &path).map_err(io)?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    Ok(())
}

/// Reads the checkpoint in `dir`: `Ok(None)` when there is none.
pub fn load(dir: &Path) -> Result<Option<(Header, TraceIndex)>, StoreError> {
    let path = dir.join(FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StoreError::Io { path, source }),
    };
    let invalid = |reason: String| StoreError::Invalid { path: path.clone(), reason };
    let split = bytes.iter().position(|&b| b == b'\n').ok_or_else(|| invalid("no header line".into()))?;
    let header: Header =
        serde_json::from_slice(&bytes[..split]).map_err(|err| invalid(format!("header does not decode: {err}")))?;
    if header.version != VERSION {
        return Err(invalid(format!("version {} (this build reads {VERSION})", header.version)));
    }
    let body = &bytes[split + 1..];
    if body.len() as u64 != header.len || crc32fast::hash(body) != header.crc32 {
        return Err(invalid(format!("body of {} bytes does not match its header (torn or damaged)", body.len())));
    }
    let index: TraceIndex =
        serde_json::from_slice(body).map_err(|err| invalid(format!("index does not decode: {err}")))?;
    Ok(Some((header, index)))
}

#[cfg(test)]
mod tests {
    use mailflow_events::log::Position;

    use super::*;
    use crate::trace::index::tests::received;

    fn index(messages: u64) -> TraceIndex {
        let mut index = TraceIndex::new();
        for n in 0..messages {
            let envelope = received(&format!("m{n}"), 0, "alice@contoso.com", &["bob@example.org"], "report");
            index.apply(&envelope, Position { partition: 0, offset: n });
        }
        index
    }

    #[test]
    fn a_checkpoint_loads_back_equal_with_its_offsets() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none(), "no checkpoint yet");
        let original = index(50);
        save(dir.path(), &encode(&original, &[50, 0, 7])).unwrap();
        let (header, loaded) = load(dir.path()).unwrap().unwrap();
        assert_eq!(header.next, vec![50, 0, 7]);
        assert_eq!(header.messages, 50);
        assert!(loaded == original, "the index loads back equal");
        // A newer one replaces it, and no temporary file is left.
        save(dir.path(), &encode(&index(3), &[3, 0, 0])).unwrap();
        assert_eq!(load(dir.path()).unwrap().unwrap().1.messages(), 3);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_damaged_or_torn_checkpoint_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = encode(&index(20), &[20]);
        // One flipped byte in the body.
        let mut damaged = bytes.clone();
        let last = damaged.len() - 10;
        damaged[last] ^= 0x20;
        std::fs::write(dir.path().join(FILE), &damaged).unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("does not match its header"), "{err}");
        // Cut short.
        std::fs::write(dir.path().join(FILE), &bytes[..bytes.len() / 2]).unwrap();
        assert!(load(dir.path()).unwrap_err().to_string().contains("torn or damaged"));
        // Not a checkpoint at all.
        std::fs::write(dir.path().join(FILE), b"hello").unwrap();
        assert!(load(dir.path()).unwrap_err().to_string().contains("no header line"));
        // Another version.
        let other = String::from_utf8(bytes).unwrap().replacen("\"version\":1", "\"version\":9", 1);
        std::fs::write(dir.path().join(FILE), other).unwrap();
        assert!(load(dir.path()).unwrap_err().to_string().contains("version 9"));
    }
}
