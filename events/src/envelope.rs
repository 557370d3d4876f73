//! The envelope every event travels in.
//!
//! The envelope carries what every consumer needs whatever the event: a unique
//! id (consumers dedupe on it, since delivery is at-least-once), the message the
//! event is about, when it happened, the schema version of the payload, the
//! OpenTelemetry trace context and which process produced it. The payload is
//! flattened next to these fields and tagged by `type`, so one JSON object is
//! one event and any Kafka tool can read it.
//!
//! Encoding and the JSON Schema use serde's `flatten` and internally tagged
//! enums. Decoding does not: those buffer the whole object in serde's private
//! `Content` tree, twice, which cost 2.8 µs an event and capped replay near
//! 360k events/s a core. Instead
//! `Envelope`'s `Deserialize` reads the object once: the envelope's fields,
//! then `type`, from which the topic enum's [`TaggedEvent::decode`] picks the
//! variant and deserialises its payload straight from the rest of the object.
//! Objects in another order (a field of the event before `type`) are still
//! read: those fields are kept as slices of the input ([`RawValue`]) until
//! `type` is known. `tagged_event!` writes the `TaggedEvent` impls; a test
//! checks its wire names against serde's.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use chrono::{DateTime, FixedOffset, Utc};
use schemars::JsonSchema;
use serde::de::value::MapDeserializer;
use serde::de::{self, DeserializeSeed, IgnoredAny, IntoDeserializer, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, forward_to_deserialize_any};
use serde_json::value::RawValue;
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
///
/// `Deserialize` is written by hand (see the module documentation); the serde
/// attributes below still describe the wire form for `Serialize` and for the
/// JSON Schema, and the hand-written decoder must agree with them.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
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

    /// The same envelope in the trace `trace_context` describes (none: in no trace).
    pub fn with_trace_context(mut self, trace_context: Option<TraceContext>) -> Self {
        self.trace_context = trace_context;
        self
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

impl<E: TaggedEvent> Envelope<E> {
    /// Decodes the wire form.
    pub fn from_json(bytes: &[u8]) -> Result<Self, DecodeError> {
        // Validating the UTF-8 once here spares serde_json validating every
        // string and kept field again as it reads them.
        let text = std::str::from_utf8(bytes).map_err(<serde_json::Error as de::Error>::custom)?;
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let decoded = deserializer.deserialize_map(EnvelopeVisitor(PhantomData))?;
        deserializer.end()?;
        match decoded {
            Decoded::Current(envelope) => Ok(envelope),
            Decoded::Future(version) => Err(DecodeError::FutureVersion(version)),
        }
    }
}

/// Refuses an envelope of a newer schema version, like [`Envelope::from_json`].
/// A field of the event that comes before `type` is kept as a slice of the
/// input, so such an object decodes only from input held in memory
/// (`serde_json::from_slice`, `from_str`); in the order `Serialize` writes,
/// nothing is kept.
impl<'de, E: TaggedEvent> Deserialize<'de> for Envelope<E> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match deserializer.deserialize_map(EnvelopeVisitor(PhantomData))? {
            Decoded::Current(envelope) => Ok(envelope),
            Decoded::Future(version) => Err(de::Error::custom(DecodeError::FutureVersion(version))),
        }
    }
}

/// A topic's event enum, decoded from its wire name and its own fields.
///
/// Implemented with `tagged_event!` for enums of newtype variants.
pub trait TaggedEvent: Sized {
    /// Decodes the variant whose wire name is `tag` from `fields`, a map of the
    /// event's own fields (the object's fields but the envelope's and `type`).
    fn decode<'de, D: Deserializer<'de>>(tag: &str, fields: D) -> Result<Self, D::Error>;

    /// The variant's wire name, written as `type`.
    fn tag(&self) -> &'static str;
}

/// Implements [`TaggedEvent`] for a topic enum of newtype variants, from its
/// `"WireName" => Variant(Payload)` table. The wire names must be the variants'
/// `#[serde(rename)]`s; `macro_tables_match_the_serde_wire_names` checks them.
macro_rules! tagged_event {
    ($event:ident { $($wire:literal => $variant:ident($payload:ty)),+ $(,)? }) => {
        impl $crate::envelope::TaggedEvent for $event {
            fn decode<'de, D: ::serde::Deserializer<'de>>(
                tag: &str,
                fields: D,
            ) -> ::std::result::Result<Self, D::Error> {
                match tag {
                    $($wire => <$payload as ::serde::Deserialize<'de>>::deserialize(fields).map(Self::$variant),)+
                    other => Err(<D::Error as ::serde::de::Error>::unknown_variant(other, &[$($wire),+])),
                }
            }

            fn tag(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => $wire,)+
                }
            }
        }
    };
}
pub(crate) use tagged_event;

/// What the envelope visitor read.
enum Decoded<E> {
    Current(Envelope<E>),
    /// An envelope of this newer schema version; its event is left undecoded.
    Future(u32),
}

/// The envelope's own fields.
#[derive(Clone, Copy)]
enum Field {
    EventId,
    MessageId,
    OccurredAt,
    SchemaVersion,
    TraceContext,
    Producer,
}

/// A key of the envelope's object.
enum Key<'de> {
    Envelope(Field),
    Type,
    /// One of the event's fields, or one this build does not know.
    Event(Cow<'de, str>),
}

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = CowStr.deserialize(deserializer)?;
        Ok(match &*name {
            "event_id" => Key::Envelope(Field::EventId),
            "message_id" => Key::Envelope(Field::MessageId),
            "occurred_at" => Key::Envelope(Field::OccurredAt),
            "schema_version" => Key::Envelope(Field::SchemaVersion),
            "trace_context" => Key::Envelope(Field::TraceContext),
            "producer" => Key::Envelope(Field::Producer),
            "type" => Key::Type,
            _ => Key::Event(name),
        })
    }
}

/// Reads a string, borrowing it from the input when it holds no escapes
/// (serde's own `Cow<str>` always copies).
struct CowStr;

impl<'de> Visitor<'de> for CowStr {
    type Value = Cow<'de, str>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a string")
    }

    fn visit_borrowed_str<Er: de::Error>(self, value: &'de str) -> Result<Self::Value, Er> {
        Ok(Cow::Borrowed(value))
    }

    fn visit_str<Er: de::Error>(self, value: &str) -> Result<Self::Value, Er> {
        Ok(Cow::Owned(value.to_owned()))
    }

    fn visit_string<Er: de::Error>(self, value: String) -> Result<Self::Value, Er> {
        Ok(Cow::Owned(value))
    }
}

impl<'de> DeserializeSeed<'de> for CowStr {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

/// `#[serde(deserialize_with = "crate::envelope::rfc3339")]` for payload times:
/// the same values chrono accepts, read with the fast path of [`Rfc3339`].
pub(crate) fn rfc3339<'de, D: Deserializer<'de>>(deserializer: D) -> Result<DateTime<Utc>, D::Error> {
    Rfc3339::deserialize(deserializer).map(|time| time.0)
}

/// A time as chrono's `Deserialize` reads it, but faster for the strict
/// RFC 3339 that `Serialize` writes: chrono's impl always takes its relaxed,
/// generic parser (about 150 ns a time here, against 25 ns), kept as the fallback.
struct Rfc3339(DateTime<Utc>);

impl<'de> Deserialize<'de> for Rfc3339 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = CowStr.deserialize(deserializer)?;
        let time = DateTime::parse_from_rfc3339(&text)
            .or_else(|_| text.parse::<DateTime<FixedOffset>>())
            .map_err(de::Error::custom)?;
        Ok(Self(time.with_timezone(&Utc)))
    }
}

/// The envelope's fields read so far.
#[derive(Default)]
struct EnvelopeFields {
    event_id: Option<Uuid>,
    message_id: Option<String>,
    occurred_at: Option<Rfc3339>,
    schema_version: Option<u32>,
    trace_context: Option<Option<TraceContext>>,
    producer: Option<String>,
}

impl EnvelopeFields {
    /// Reads the value of `field` from `map`, refusing a second one as derived impls do.
    fn read<'de, A: MapAccess<'de>>(&mut self, field: Field, map: &mut A) -> Result<(), A::Error> {
        fn once<'de, A: MapAccess<'de>, T: Deserialize<'de>>(
            slot: &mut Option<T>,
            name: &'static str,
            map: &mut A,
        ) -> Result<(), A::Error> {
            if slot.is_some() {
                return Err(de::Error::duplicate_field(name));
            }
            *slot = Some(map.next_value()?);
            Ok(())
        }
        match field {
            Field::EventId => once(&mut self.event_id, "event_id", map),
            Field::MessageId => once(&mut self.message_id, "message_id", map),
            Field::OccurredAt => once(&mut self.occurred_at, "occurred_at", map),
            Field::SchemaVersion => once(&mut self.schema_version, "schema_version", map),
            Field::TraceContext => once(&mut self.trace_context, "trace_context", map),
            Field::Producer => once(&mut self.producer, "producer", map),
        }
    }

    /// Whether the event may be decoded as soon as `type` is read: the version is known and current.
    fn is_current(&self) -> bool {
        self.schema_version.is_some_and(|version| version <= SCHEMA_VERSION)
    }

    fn into_envelope<E, Er: de::Error>(self, event: E) -> Result<Envelope<E>, Er> {
        Ok(Envelope {
            event_id: self.event_id.ok_or_else(|| Er::missing_field("event_id"))?,
            message_id: self.message_id.ok_or_else(|| Er::missing_field("message_id"))?,
            occurred_at: self.occurred_at.ok_or_else(|| Er::missing_field("occurred_at"))?.0,
            schema_version: self.schema_version.ok_or_else(|| Er::missing_field("schema_version"))?,
            trace_context: self.trace_context.flatten(),
            producer: self.producer.ok_or_else(|| Er::missing_field("producer"))?,
            event,
        })
    }
}

/// Reads one envelope in one pass.
///
/// Fields that are neither the envelope's nor `type` are kept as raw JSON
/// slices until `type` is read. Then, if the schema version is known and
/// current, the event is decoded from the kept fields followed by the rest of
/// the object ([`EventFields`]); in the order `Serialize` writes (the
/// envelope's fields, `type`, the event's) nothing is kept at all. Otherwise
/// the version is checked at the end, and the event decoded from what was kept.
struct EnvelopeVisitor<E>(PhantomData<E>);

impl<'de, E: TaggedEvent> Visitor<'de> for EnvelopeVisitor<E> {
    type Value = Decoded<E>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("an event envelope (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut envelope = EnvelopeFields::default();
        let mut tag: Option<Cow<'de, str>> = None;
        let mut kept = Vec::new();
        let mut event = None;
        while let Some(key) = map.next_key::<Key<'de>>()? {
            match key {
                Key::Envelope(field) => envelope.read(field, &mut map)?,
                Key::Type if tag.is_some() => return Err(de::Error::duplicate_field("type")),
                Key::Type => {
                    let name = map.next_value_seed(CowStr)?;
                    if envelope.is_current() {
                        let fields = EventFields {
                            kept: std::mem::take(&mut kept).into_iter(),
                            kept_value: None,
                            map: &mut map,
                            envelope: &mut envelope,
                        };
                        event = Some(E::decode(&name, fields)?);
                    }
                    tag = Some(name);
                }
                // Only when the event's decoder stopped before the end of the object.
                Key::Event(_) if event.is_some() => {
                    map.next_value::<IgnoredAny>()?;
                }
                Key::Event(name) => kept.push((name, map.next_value::<&'de RawValue>()?)),
            }
        }
        let version = envelope.schema_version.ok_or_else(|| de::Error::missing_field("schema_version"))?;
        if version > SCHEMA_VERSION {
            return Ok(Decoded::Future(version));
        }
        let event = match event {
            Some(event) => event,
            None => {
                let tag = tag.ok_or_else(|| de::Error::missing_field("type"))?;
                E::decode(&tag, MapDeserializer::<_, serde_json::Error>::new(kept.into_iter()))
                    .map_err(de::Error::custom)?
            }
        };
        envelope.into_envelope(event).map(Decoded::Current)
    }
}

/// The event's fields as one map: those kept before `type`, then the rest of
/// the envelope's object, where envelope fields met on the way are read into
/// the envelope.
struct EventFields<'a, 'de, A> {
    kept: std::vec::IntoIter<(Cow<'de, str>, &'de RawValue)>,
    /// The value of the kept field whose key was read last.
    kept_value: Option<&'de RawValue>,
    map: &'a mut A,
    envelope: &'a mut EnvelopeFields,
}

impl<'de, A: MapAccess<'de>> Deserializer<'de> for EventFields<'_, 'de, A> {
    type Error = A::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, A::Error> {
        visitor.visit_map(self)
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for EventFields<'_, 'de, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, A::Error> {
        if let Some((name, value)) = self.kept.next() {
            self.kept_value = Some(value);
            return seed.deserialize(name.into_deserializer()).map(Some);
        }
        while let Some(key) = self.map.next_key::<Key<'de>>()? {
            match key {
                Key::Envelope(field) => self.envelope.read(field, self.map)?,
                Key::Type => return Err(de::Error::duplicate_field("type")),
                Key::Event(name) => return seed.deserialize(name.into_deserializer()).map(Some),
            }
        }
        Ok(None)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        match self.kept_value.take() {
            Some(value) => seed.deserialize(value).map_err(de::Error::custom),
            None => self.map.next_value_seed(seed),
        }
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

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use serde_json::Value;

    use super::*;
    use crate::content::ContentEvent;
    use crate::delivery::DeliveryEvent;
    use crate::journal::JournalEvent;
    use crate::received::ReceivedEvent;
    use crate::verdicts::VerdictEvent;

    fn fixtures() -> Vec<PathBuf> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&root)
            .expect("tests/fixtures exists")
            .flat_map(|dir| std::fs::read_dir(dir.expect("directory entry").path()).expect("version directory"))
            .map(|file| file.expect("directory entry").path())
            .collect();
        paths.sort();
        assert!(!paths.is_empty(), "no fixtures in {}", root.display());
        paths
    }

    fn fixture(name: &str) -> Value {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1").join(name);
        serde_json::from_slice(&std::fs::read(&path).expect("fixture is readable")).expect("fixture is JSON")
    }

    /// `object`'s fields as JSON text in the order `order` gives their names.
    fn reordered(object: &Value, order: &[&str]) -> String {
        let map = object.as_object().expect("an object");
        assert_eq!(order.len(), map.len(), "every field placed once");
        let fields: Vec<String> = order.iter().map(|name| format!("{}:{}", Value::from(*name), map[*name])).collect();
        format!("{{{}}}", fields.join(","))
    }

    /// The wire name `tagged_event!` gives the decoded event, and the one serde writes.
    fn tags<E: TaggedEvent + Serialize>(bytes: &[u8]) -> (String, String) {
        let envelope = Envelope::<E>::from_json(bytes).expect("fixture decodes");
        let written = serde_json::to_value(&envelope).expect("serialises");
        (envelope.event.tag().to_string(), written["type"].as_str().unwrap_or_default().to_string())
    }

    #[test]
    fn macro_tables_match_the_serde_wire_names() {
        // Every variant has a fixture (tests/schemas.rs checks that), so this
        // covers every row of every table.
        for path in fixtures() {
            let bytes = std::fs::read(&path).expect("fixture is readable");
            let name = path.file_name().and_then(|name| name.to_str()).unwrap_or_default();
            let (decoded, written) = match name.split('.').next() {
                Some("received") => tags::<ReceivedEvent>(&bytes),
                Some("content") => tags::<ContentEvent>(&bytes),
                Some("verdicts") => tags::<VerdictEvent>(&bytes),
                Some("delivery") => tags::<DeliveryEvent>(&bytes),
                Some("journal") => tags::<JournalEvent>(&bytes),
                other => panic!("{name}: unknown topic {other:?}"),
            };
            assert_eq!(decoded, written, "{name}: the macro's wire name differs from serde's");
            assert_eq!(Some(decoded.as_str()), name.split('.').nth(1), "{name}");
        }
    }

    #[test]
    fn an_event_decodes_the_same_whatever_the_order_of_its_fields() {
        let json = fixture("delivery.Deferred.json");
        let canonical = Envelope::<DeliveryEvent>::from_json(json.to_string().as_bytes()).expect("fixture decodes");
        let envelope = ["event_id", "message_id", "occurred_at", "schema_version", "trace_context", "producer"];
        let names = json.as_object().expect("an object").keys();
        let event: Vec<&str> =
            names.map(String::as_str).filter(|name| *name != "type" && !envelope.contains(name)).collect();
        // Event fields before `type`, envelope fields after it, both at once.
        let orders = [
            [&event[..3], &envelope[..], &["type"], &event[3..]].concat(),
            [&["type"], &event[..], &envelope[..]].concat(),
            [&event[..], &["type"], &envelope[..]].concat(),
        ];
        for order in orders {
            let text = reordered(&json, &order);
            let decoded = Envelope::<DeliveryEvent>::from_json(text.as_bytes());
            assert_eq!(decoded.ok().as_ref(), Some(&canonical), "{text}");
            let via_serde: Envelope<DeliveryEvent> = serde_json::from_str(&text).expect("Deserialize reads it too");
            assert_eq!(via_serde, canonical);
        }
    }

    #[test]
    fn escaped_keys_and_type_are_read_like_plain_ones() {
        let json = fixture("verdicts.MessageDeleted.json");
        let plain = json.to_string();
        let escaped = plain
            .replacen("\"type\":\"MessageDeleted\"", "\"\\u0074ype\":\"Message\\u0044eleted\"", 1)
            .replacen("\"event_id\"", "\"event\\u005fid\"", 1);
        assert_ne!(plain, escaped, "the fixture has the fields to escape");
        let decoded = Envelope::<VerdictEvent>::from_json(escaped.as_bytes()).expect("escaped form decodes");
        assert_eq!(decoded, Envelope::from_json(plain.as_bytes()).expect("fixture decodes"));
    }

    #[test]
    fn an_unknown_type_is_refused_naming_it() {
        let mut json = fixture("delivery.Queued.json");
        json["type"] = Value::from("Teleported");
        let canonical = json.to_string();
        let names: Vec<String> = json.as_object().expect("an object").keys().cloned().collect();
        let mut type_last: Vec<&str> = names.iter().map(String::as_str).filter(|name| *name != "type").collect();
        type_last.push("type");
        for text in [canonical, reordered(&json, &type_last)] {
            match Envelope::<DeliveryEvent>::from_json(text.as_bytes()) {
                Err(DecodeError::Malformed(error)) => {
                    assert!(error.to_string().contains("unknown variant `Teleported`"), "{error}")
                }
                other => panic!("decoded {other:?}"),
            }
        }
    }

    #[test]
    fn a_newer_version_is_refused_even_when_its_event_is_unknown() {
        let mut json = fixture("delivery.Queued.json");
        json["schema_version"] = Value::from(SCHEMA_VERSION + 1);
        json["type"] = Value::from("Rerouted");
        let result = Envelope::<DeliveryEvent>::from_json(json.to_string().as_bytes());
        assert!(matches!(result, Err(DecodeError::FutureVersion(version)) if version == SCHEMA_VERSION + 1));
    }

    #[test]
    fn a_trace_context_round_trips_through_the_wire_form_and_its_absence_too() {
        let json = fixture("delivery.Resumed.json");
        let plain = Envelope::<DeliveryEvent>::from_json(json.to_string().as_bytes()).expect("fixture decodes");
        let context = TraceContext {
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string(),
            tracestate: "vendor=opaque,other=1".to_string(),
        };
        let traced = plain.clone().with_trace_context(Some(context.clone()));
        let wire: Value = serde_json::from_slice(&traced.to_json()).expect("JSON");
        assert_eq!(wire["trace_context"]["traceparent"], context.traceparent.as_str());
        assert_eq!(wire["trace_context"]["tracestate"], context.tracestate.as_str());
        let decoded = Envelope::<DeliveryEvent>::from_json(&traced.to_json()).expect("decodes");
        assert_eq!(decoded.trace_context, Some(context.clone()));
        assert_eq!(decoded, traced);
        // No tracestate: the field is left out, and read back as empty.
        let bare = TraceContext { tracestate: String::new(), ..context };
        let written = plain.clone().with_trace_context(Some(bare.clone())).to_json();
        assert!(!String::from_utf8_lossy(&written).contains("tracestate"));
        assert_eq!(Envelope::<DeliveryEvent>::from_json(&written).expect("decodes").trace_context, Some(bare));
        let untraced = plain.with_trace_context(None).to_json();
        assert!(!String::from_utf8_lossy(&untraced).contains("trace_context"));
        assert_eq!(Envelope::<DeliveryEvent>::from_json(&untraced).expect("decodes").trace_context, None);
    }

    #[test]
    fn a_missing_or_repeated_type_is_malformed() {
        let json = fixture("delivery.Resumed.json");
        let mut missing = json.clone();
        missing.as_object_mut().expect("an object").remove("type");
        let repeated =
            json.to_string().replacen("\"type\":\"Resumed\"", "\"type\":\"Resumed\",\"type\":\"Resumed\"", 1);
        assert_ne!(repeated, json.to_string());
        for (case, text) in [("missing", missing.to_string()), ("repeated", repeated)] {
            let result = Envelope::<DeliveryEvent>::from_json(text.as_bytes());
            assert!(matches!(result, Err(DecodeError::Malformed(_))), "{case} type: {result:?}");
        }
    }
}
