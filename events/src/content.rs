//! Message content on `mailflow.content`.
//!
//! A message body is split into chunks of at most [`CHUNK_SIZE`] bytes, each an
//! event keyed by the message id, so all chunks of a message land in one
//! partition, in order, and any process can read any message. The events that
//! mention the message carry a [`ContentRef`] to the first chunk.
//!
//! Chunks are appended concurrently and each is acknowledged only when durable;
//! the content is complete once every chunk is acknowledged, which the
//! connection actor waits for before it appends `MessageReceived`.
//!
//! A chunk has two wire forms ([`ContentEncoding`]); readers take both.
//!
//! - **JSON**, like every other topic: the envelope with the chunk's bytes in
//!   base64 in `data`.
//! - **Binary**, written by default since base64 and JSON escaping were the
//!   largest cost left in relaying 100 KiB messages (`benches/README.md`):
//!   [`BINARY_MAGIC`], the length of a header as a big-endian `u32`, the
//!   header, then the chunk's bytes as they are. The header is the JSON form
//!   without `data`, so the published schema describes it too. A record
//!   cannot be both: JSON text never starts with a NUL byte.

use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::Utc;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::envelope::{DecodeError, Envelope};
use crate::log::{EventLog, LogError, Position};
use crate::topic;

/// Largest chunk of content in one event: 512 KiB.
pub const CHUNK_SIZE: usize = 512 * 1024;

/// First bytes of a chunk in the binary form.
pub const BINARY_MAGIC: [u8; 4] = *b"\0mfc";

/// Which form [`store`] writes chunks in (`[event_log] content_encoding`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContentEncoding {
    /// Header and raw bytes (the default).
    #[default]
    Binary,
    /// One JSON object, the chunk in base64: what builds before the binary
    /// form read, so a rolling upgrade writes it until every instance runs a
    /// build that reads both.
    Json,
}

/// Events of `mailflow.content`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type")]
pub enum ContentEvent {
    /// One chunk of a message's content was stored.
    #[serde(rename = "ContentChunkStored")]
    ChunkStored {
        /// Index of this chunk, from 0.
        index: u32,
        /// Number of chunks of the message.
        count: u32,
        /// The chunk's bytes, base64 (RFC 4648) in the JSON form. Absent from
        /// the header of the binary form, which the bytes follow, and from an
        /// empty chunk.
        #[serde(default, with = "base64_bytes", skip_serializing_if = "Vec::is_empty")]
        #[schemars(with = "String")]
        data: Vec<u8>,
    },
}

/// Where a message's content is and how to check it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ContentRef {
    /// Partition of `mailflow.content` holding every chunk.
    pub partition: u32,
    /// Offset of the first chunk.
    pub first_offset: u64,
    /// Number of chunks.
    pub chunks: u32,
    /// Size of the content in bytes.
    pub size: u64,
    /// CRC-32 (IEEE) of the whole content.
    pub crc32: u32,
}

/// Errors while storing or loading content.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    /// The log refused or failed (temporary unless the log error is permanent).
    #[error(transparent)]
    Log(#[from] LogError),
    /// A chunk could not be decoded (permanent).
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The chunks read do not make up the referenced content (permanent).
    #[error("content of {message_id} is incomplete or altered: {reason}")]
    Mismatch {
        /// Message whose content was read.
        message_id: String,
        /// What did not match.
        reason: String,
    },
}

/// Stores `body` as chunk events of message `message_id`, in `encoding`;
/// returns once every chunk is durable.
pub async fn store(
    log: &dyn EventLog,
    message_id: &str,
    producer: &str,
    body: &[u8],
    encoding: ContentEncoding,
) -> Result<ContentRef, ContentError> {
    let partition = crate::log::partition_for(message_id.as_bytes(), log.partitions(topic::CONTENT)?);
    let chunks: Vec<&[u8]> = if body.is_empty() { vec![&[][..]] } else { body.chunks(CHUNK_SIZE).collect() };
    let count = chunks.len() as u32;
    let mut first: Option<Position> = None;
    // Chunks go out one after another: appends to one partition are ordered, and
    // the next chunk may only follow the previous one's acknowledgement so that a
    // crash never leaves chunk n+1 without chunk n.
    for (index, data) in chunks.into_iter().enumerate() {
        let value = encode_chunk(message_id, producer, index as u32, count, data, encoding);
        let position = log.append_to(topic::CONTENT, partition, message_id.as_bytes(), &value).await?;
        first.get_or_insert(position);
    }
    let first = first.expect("at least one chunk is stored");
    Ok(ContentRef {
        partition,
        first_offset: first.offset,
        chunks: count,
        size: body.len() as u64,
        crc32: crc32fast::hash(body),
    })
}

/// Loads the content `reference` points at, checking size and CRC.
pub async fn load(log: &dyn EventLog, message_id: &str, reference: &ContentRef) -> Result<Vec<u8>, ContentError> {
    let mismatch = |reason: String| ContentError::Mismatch { message_id: message_id.to_string(), reason };
    let mut body = Vec::with_capacity(reference.size as usize);
    let mut next_index = 0u32;
    let mut offset = reference.first_offset;
    // Chunks of other messages of the same partition may sit between ours.
    while next_index < reference.chunks {
        // Ask for no more records than chunks still wanted: a read copies
        // and checks every record it returns, and the records after a
        // message's last chunk belong to other messages.
        let wanted = (reference.chunks - next_index).min(16) as usize;
        let records = log.read(topic::CONTENT, reference.partition, offset, wanted).await?;
        if records.is_empty() {
            return Err(mismatch(format!("chunk {next_index} of {} is missing", reference.chunks)));
        }
        for record in records {
            offset = record.position.offset + 1;
            if record.key != message_id.as_bytes() {
                continue;
            }
            let (envelope, raw) = split(&record.value)?;
            let ContentEvent::ChunkStored { index, count, data } = envelope.event;
            if index != next_index || count != reference.chunks {
                // An earlier, abandoned attempt to store the same message id.
                continue;
            }
            body.extend_from_slice(raw.unwrap_or(&data));
            next_index += 1;
            if next_index == reference.chunks {
                break;
            }
        }
    }
    if body.len() as u64 != reference.size {
        return Err(mismatch(format!("{} bytes instead of {}", body.len(), reference.size)));
    }
    if crc32fast::hash(&body) != reference.crc32 {
        return Err(mismatch("CRC-32 differs".to_string()));
    }
    Ok(body)
}

/// The record value of `chunk` in `encoding`.
pub fn encode(mut chunk: Envelope<ContentEvent>, encoding: ContentEncoding) -> Vec<u8> {
    match encoding {
        ContentEncoding::Json => chunk.to_json(),
        ContentEncoding::Binary => {
            let ContentEvent::ChunkStored { data, .. } = &mut chunk.event;
            let data = std::mem::take(data);
            binary(&chunk, &data)
        }
    }
}

/// The record value of chunk `index` of `count` of message `message_id`,
/// holding `data`.
fn encode_chunk(
    message_id: &str,
    producer: &str,
    index: u32,
    count: u32,
    data: &[u8],
    encoding: ContentEncoding,
) -> Vec<u8> {
    let chunk = |data: Vec<u8>| {
        Envelope::new(message_id, producer, Utc::now(), ContentEvent::ChunkStored { index, count, data })
    };
    match encoding {
        ContentEncoding::Json => chunk(data.to_vec()).to_json(),
        // The header's event holds no data, so the bytes are copied once.
        ContentEncoding::Binary => binary(&chunk(Vec::new()), data),
    }
}

/// The binary form of `data` under `header`, whose event holds no data.
fn binary(header: &Envelope<ContentEvent>, data: &[u8]) -> Vec<u8> {
    let header = header.to_json();
    let mut value = Vec::with_capacity(BINARY_MAGIC.len() + 4 + header.len() + data.len());
    value.extend_from_slice(&BINARY_MAGIC);
    // A header is a few hundred bytes: far below u32::MAX.
    value.extend_from_slice(&(header.len() as u32).to_be_bytes());
    value.extend_from_slice(&header);
    value.extend_from_slice(data);
    value
}

/// Decodes a record value of `mailflow.content` in either form; the chunk's
/// bytes are in `data`.
pub fn decode(value: &[u8]) -> Result<Envelope<ContentEvent>, DecodeError> {
    let (mut envelope, raw) = split(value)?;
    if let Some(raw) = raw {
        let ContentEvent::ChunkStored { data, .. } = &mut envelope.event;
        *data = raw.to_vec();
    }
    Ok(envelope)
}

/// A record value's envelope and, in the binary form, the chunk's bytes
/// (borrowed, so a load copies them once, into the body).
fn split(value: &[u8]) -> Result<(Envelope<ContentEvent>, Option<&[u8]>), DecodeError> {
    let Some(rest) = value.strip_prefix(&BINARY_MAGIC) else {
        return Ok((Envelope::from_json(value)?, None));
    };
    let malformed =
        |what: &str| DecodeError::Malformed(serde::de::Error::custom(format!("binary content chunk: {what}")));
    let (length, rest) = rest.split_first_chunk::<4>().ok_or_else(|| malformed("no header length"))?;
    let length = u32::from_be_bytes(*length) as usize;
    if length > rest.len() {
        return Err(malformed("header longer than the record"));
    }
    let (header, raw) = rest.split_at(length);
    let envelope: Envelope<ContentEvent> = Envelope::from_json(header)?;
    let ContentEvent::ChunkStored { data, .. } = &envelope.event;
    if !data.is_empty() {
        return Err(malformed("header carries data"));
    }
    Ok((envelope, Some(raw)))
}

mod base64_bytes {
    use super::BASE64;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&BASE64.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        BASE64.decode(text.as_bytes()).map_err(serde::de::Error::custom)
    }
}

// `ChunkStored` keeps its fields inline (a newtype variant would change the
// published schema), so `tagged_event!` does not fit and the impl is by hand.
impl crate::envelope::TaggedEvent for ContentEvent {
    fn decode<'de, D: serde::Deserializer<'de>>(tag: &str, fields: D) -> Result<Self, D::Error> {
        match tag {
            "ContentChunkStored" => {
                let ChunkStoredFields { index, count, data } = ChunkStoredFields::deserialize(fields)?;
                Ok(Self::ChunkStored { index, count, data })
            }
            other => Err(serde::de::Error::unknown_variant(other, &["ContentChunkStored"])),
        }
    }

    fn tag(&self) -> &'static str {
        match self {
            Self::ChunkStored { .. } => "ContentChunkStored",
        }
    }
}

/// The fields of [`ContentEvent::ChunkStored`], read as its derived impls write them.
#[derive(Deserialize)]
struct ChunkStoredFields {
    index: u32,
    count: u32,
    #[serde(default, deserialize_with = "base64_bytes::deserialize")]
    data: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn fixture(path: &str) -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join(path);
        std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    }

    fn data(envelope: &Envelope<ContentEvent>) -> &[u8] {
        let ContentEvent::ChunkStored { data, .. } = &envelope.event;
        data
    }

    #[test]
    fn the_binary_fixture_is_the_json_fixture_in_the_binary_form() {
        let json = decode(&fixture("fixtures/v1/content.ContentChunkStored.json")).expect("the JSON fixture decodes");
        let binary = decode(&fixture("binary/v1/content.ContentChunkStored.bin")).expect("the binary fixture decodes");
        assert_eq!(binary, json);
        assert!(data(&binary).starts_with(b"Received: from mail.example.com"), "the chunk's bytes are raw");
    }

    #[test]
    fn both_forms_round_trip_every_byte() {
        let bytes: Vec<u8> = (0..=255u8).cycle().take(3 * 1024 + 7).collect();
        for data in [bytes, Vec::new()] {
            let chunk = Envelope::new("m1", "test", Utc::now(), ContentEvent::ChunkStored { index: 2, count: 3, data });
            let binary = encode(chunk.clone(), ContentEncoding::Binary);
            let json = encode(chunk.clone(), ContentEncoding::Json);
            assert!(binary.starts_with(&BINARY_MAGIC) && json.starts_with(b"{"));
            assert_eq!(decode(&binary).expect("binary decodes"), chunk);
            assert_eq!(decode(&json).expect("JSON decodes"), chunk);
        }
    }

    #[test]
    fn the_binary_form_is_smaller_than_base64_and_its_header_is_the_json_form_without_data() {
        let data = vec![b'x'; 100 * 1024];
        let chunk = Envelope::new("m1", "test", Utc::now(), ContentEvent::ChunkStored { index: 0, count: 1, data });
        let binary = encode(chunk.clone(), ContentEncoding::Binary);
        let json = encode(chunk, ContentEncoding::Json);
        assert!(binary.len() < 100 * 1024 + 400, "{} bytes", binary.len());
        assert!(json.len() > 100 * 1024 * 4 / 3, "{} bytes", json.len());
        let length = u32::from_be_bytes(binary[4..8].try_into().expect("four bytes")) as usize;
        let header: serde_json::Value = serde_json::from_slice(&binary[8..8 + length]).expect("the header is JSON");
        let mut whole: serde_json::Value = serde_json::from_slice(&json).expect("JSON");
        whole.as_object_mut().expect("an object").remove("data");
        assert_eq!(header, whole);
    }

    #[test]
    fn a_malformed_binary_chunk_is_a_decode_error() {
        let chunk = Envelope::new(
            "m1",
            "test",
            Utc::now(),
            ContentEvent::ChunkStored { index: 0, count: 1, data: b"hello".to_vec() },
        );
        let good = encode(chunk.clone(), ContentEncoding::Binary);
        let length = u32::from_be_bytes(good[4..8].try_into().expect("four bytes")) as usize;
        let mut too_long = good.clone();
        too_long[4..8].copy_from_slice(&(good.len() as u32).to_be_bytes());
        let mut not_json = good.clone();
        not_json[8] = b'[';
        // A header that carries the data as well: which copy would be meant?
        let header_with_data = binary(&chunk, b"hello");
        let cases: [(&str, &[u8]); 5] = [
            ("magic only", &BINARY_MAGIC),
            ("no full length", &good[..6]),
            ("header cut short", &good[..8 + length - 1]),
            ("length past the end", &too_long),
            ("header not an object", &not_json),
        ];
        for (case, value) in cases {
            assert!(matches!(decode(value), Err(DecodeError::Malformed(_))), "{case}");
        }
        assert!(matches!(decode(&header_with_data), Err(DecodeError::Malformed(_))), "header with data");
        assert_eq!(decode(&good).expect("the untouched chunk decodes"), chunk);
    }
}
