//! The envelope every event travels in.
//!
//! The envelope carries what every consumer needs whatever the event: a unique
//! id (consumers dedupe on it, since delivery is at-least-once), the message the
//! event is about, when it happened, the schema version of the payload, the
//! OpenTelemetry trace context and which process produced it. The payload is
//! flattened next to these fields and tagged by `type`, so one JSON object is
//! one event and any Kafka tool can read it.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The schema version this build writes. Readers accept every version up to it
/// (backward-transitive compatibility, see `schemas/README.md`).
pub const SCHEMA_VERSION: u32 = 1;

/// W3C trace context of the message's trace, so that one trace spans all actors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TraceContext {
    /// `traceparent` header value (W3C Trace Context).
    pub traceparent: String,
    /// `tracestate` header value, empty when none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tracestate: String,
}

/// One event with its metadata. `E` is the topic's event enum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Envelope<E> {
    /// Unique per event; consumers dedupe on it.
    pub event_id: Uuid,
    /// The message this event is about (the id given in the `250` reply).
    pub message_id: String,
    /// When the fact happened (not when it was written).
    pub occurred_at: DateTime<Utc>,
    /// Version of the payload's schema, see [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Trace context of the message's trace, when tracing is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_context: Option<TraceContext>,
    /// The producing process and role, e.g. `mailflow-0/connection`.
    pub producer: String,
    /// The event itself, tagged by `type`.
    #[serde(flatten)]
    pub event: E,
}

impl<E> Envelope<E> {
    /// Wraps `event` in a new envelope with a fresh time-ordered id.
    pub fn new(
        message_id: impl Into<String>,
        producer: impl Into<String>,
        occurred_at: DateTime<Utc>,
        event: E,
    ) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            message_id: message_id.into(),
            occurred_at,
            schema_version: SCHEMA_VERSION,
            trace_context: None,
            producer: producer.into(),
            event,
        }
    }
}

impl<E: Serialize> Envelope<E> {
    /// The wire form: one JSON object.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain data with string keys cannot fail; a failure here
        // is a programming error in a hand-written Serialize impl.
        serde_json::to_vec(self).expect("events serialise to JSON")
    }
}

impl<E: DeserializeOwned> Envelope<E> {
    /// Decodes the wire form.
    pub fn from_json(bytes: &[u8]) -> Result<Self, DecodeError> {
        let envelope: Self = serde_json::from_slice(bytes)?;
        if envelope.schema_version > SCHEMA_VERSION {
            return Err(DecodeError::FutureVersion(envelope.schema_version));
        }
        Ok(envelope)
    }
}

/// Why a record could not be decoded into an event.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON, or JSON of another shape (permanent: the record is skipped and reported).
    #[error("malformed event: {0}")]
    Malformed(#[from] serde_json::Error),
    /// Written by a newer build than this one (temporary: upgrade the reader).
    #[error("event schema version {0} is newer than this build's {SCHEMA_VERSION}")]
    FutureVersion(u32),
}
