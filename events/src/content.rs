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

use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::Utc;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::envelope::{DecodeError, Envelope};
use crate::log::{EventLog, LogError, Position};
use crate::topic;

/// Largest chunk of content in one event: 512 KiB.
pub const CHUNK_SIZE: usize = 512 * 1024;

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
        /// The chunk's bytes, base64 (RFC 4648) in JSON.
        #[serde(with = "base64_bytes")]
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

/// Stores `body` as chunk events of message `message_id`; returns once every
/// chunk is durable.
pub async fn store(
    log: &dyn EventLog,
    message_id: &str,
    producer: &str,
    body: &[u8],
) -> Result<ContentRef, ContentError> {
    let partition = crate::log::partition_for(message_id.as_bytes(), log.partitions(topic::CONTENT)?);
    let chunks: Vec<&[u8]> = if body.is_empty() { vec![&[][..]] } else { body.chunks(CHUNK_SIZE).collect() };
    let count = chunks.len() as u32;
    let mut first: Option<Position> = None;
    // Chunks go out one after another: appends to one partition are ordered, and
    // the next chunk may only follow the previous one's acknowledgement so that a
    // crash never leaves chunk n+1 without chunk n.
    for (index, data) in chunks.into_iter().enumerate() {
        let event = ContentEvent::ChunkStored { index: index as u32, count, data: data.to_vec() };
        let envelope = Envelope::new(message_id, producer, Utc::now(), event);
        let position = log.append_to(topic::CONTENT, partition, message_id.as_bytes(), &envelope.to_json()).await?;
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
            let envelope: Envelope<ContentEvent> = Envelope::from_json(&record.value)?;
            let ContentEvent::ChunkStored { index, count, data } = envelope.event;
            if index != next_index || count != reference.chunks {
                // An earlier, abandoned attempt to store the same message id.
                continue;
            }
            body.extend_from_slice(&data);
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
    #[serde(deserialize_with = "base64_bytes::deserialize")]
    data: Vec<u8>,
}
