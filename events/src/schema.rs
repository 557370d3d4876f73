//! JSON Schemas of the events, generated from the Rust types.
//!
//! The schemas describe the wire form, one object per event: the [`Envelope`]
//! fields next to the topic enum's fields, tagged by `type`. They are checked in
//! under `schemas/` (see `schemas/README.md` for the compatibility policy) and a
//! test fails when they drift from the code; `mailflow schemas` prints them.
//!
//! [`render`] sorts object keys so the files do not depend on whether
//! `serde_json`'s `preserve_order` feature is enabled somewhere in the build.

use schemars::JsonSchema;
use serde_json::{Map, Value};

use crate::content::ContentEvent;
use crate::delivery::DeliveryEvent;
use crate::envelope::Envelope;
use crate::journal::JournalEvent;
use crate::received::ReceivedEvent;
use crate::verdicts::VerdictEvent;

/// Every published schema, as `(name, schema)`; the name is `<topic>.v<SCHEMA_VERSION>`
/// and names the file `schemas/<name>.json`.
pub fn all() -> Vec<(&'static str, Value)> {
    vec![
        envelope_schema::<ReceivedEvent>("mailflow.received.v1"),
        envelope_schema::<ContentEvent>("mailflow.content.v1"),
        envelope_schema::<VerdictEvent>("mailflow.verdicts.v1"),
        envelope_schema::<DeliveryEvent>("mailflow.delivery.v1"),
        envelope_schema::<JournalEvent>("mailflow.journal.v1"),
    ]
}

/// The schema of one event of topic enum `E` in its envelope, titled `name`.
fn envelope_schema<E: JsonSchema>(name: &'static str) -> (&'static str, Value) {
    let mut schema = schemars::schema_for!(Envelope<E>);
    // The generic envelope's own title and doc say nothing about the topic; a
    // reader of the file wants to know which topic it describes.
    let topic_doc = schemars::schema_for!(E).get("description").and_then(Value::as_str).unwrap_or_default().to_string();
    schema.insert("title".to_string(), Value::from(name));
    schema.insert(
        "description".to_string(),
        Value::from(format!(
            "{topic_doc} One event is one JSON object: the envelope's fields next to \
             the event's, the event's variant named by `type`."
        )),
    );
    (name, schema.to_value())
}

/// The stable text form of a schema: pretty JSON with sorted keys and a trailing newline.
pub fn render(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(&sorted(value)).expect("JSON values serialise");
    text.push('\n');
    text
}

/// `value` with the keys of every object in lexical order.
fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let mut out = Map::new();
            for key in keys {
                out.insert(key.clone(), sorted(&map[key]));
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SCHEMA_VERSION, topic};

    #[test]
    fn every_event_topic_has_one_schema_named_after_it_and_the_current_version() {
        let names: Vec<&str> = all().into_iter().map(|(name, _)| name).collect();
        let expected: Vec<String> =
            topic::EVENT_TOPICS.iter().map(|topic| format!("{topic}.v{SCHEMA_VERSION}")).collect();
        let mut sorted_names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
        sorted_names.sort();
        let mut sorted_expected = expected.clone();
        sorted_expected.sort();
        assert_eq!(sorted_names, sorted_expected);
    }

    #[test]
    fn render_sorts_keys_and_ends_with_a_newline() {
        let value = serde_json::json!({"b": 1, "a": {"d": [{"f": 1, "e": 2}], "c": null}});
        let text = render(&value);
        assert!(text.ends_with("}\n"));
        let a = text.find("\"a\"").expect("a is rendered");
        let b = text.find("\"b\"").expect("b is rendered");
        let e = text.find("\"e\"").expect("e is rendered");
        let f = text.find("\"f\"").expect("f is rendered");
        assert!(a < b && e < f, "keys out of order in {text}");
    }
}
