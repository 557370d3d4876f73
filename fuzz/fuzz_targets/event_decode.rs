//! `event_decode`: arbitrary bytes into the event decoder and the embedded
//! log's record reader.
//!
//! Input: byte 0 modulo 6 picks what the rest is. 0–4: the JSON of an event
//! envelope of `mailflow.received`, `.content`, `.verdicts`, `.delivery` or
//! `.journal`; for `.content` also a record value in either of its forms
//! (JSON or binary). 5: the bytes of a segment file, scanned as the log does
//! on open; the value of every valid record is then decoded as an event of
//! each topic.
//!
//! Checked: no panic. An envelope that decodes re-encodes to JSON that
//! decodes to the same value and re-encodes to the same bytes, and serde's
//! `Deserialize` path reads valid UTF-8 the same as `Envelope::from_json`. A
//! content record that decodes encodes in both forms to values that decode
//! to the same chunk. A
//! frame that decodes re-encodes to exactly the bytes it was read from, and a
//! scan indexes consecutive frames with consecutive offsets, never past the
//! end of the data.

#![no_main]

use std::fmt::Debug;

use libfuzzer_sys::fuzz_target;
use mailflow_events::Envelope;
use mailflow_events::content::{self, ContentEncoding, ContentEvent};
use mailflow_events::delivery::DeliveryEvent;
use mailflow_events::envelope::TaggedEvent;
use mailflow_events::journal::JournalEvent;
use mailflow_events::log::embedded::frame;
use mailflow_events::received::ReceivedEvent;
use mailflow_events::verdicts::VerdictEvent;
use serde::Serialize;

fuzz_target!(|data: &[u8]| {
    let [topic, rest @ ..] = data else { return };
    match topic % 6 {
        0 => envelope::<ReceivedEvent>(rest),
        1 => {
            envelope::<ContentEvent>(rest);
            content_record(rest);
        }
        2 => envelope::<VerdictEvent>(rest),
        3 => envelope::<DeliveryEvent>(rest),
        4 => envelope::<JournalEvent>(rest),
        _ => segment(rest),
    }
});

fn envelope<E: TaggedEvent + Serialize + PartialEq + Debug>(bytes: &[u8]) {
    let decoded = Envelope::<E>::from_json(bytes);
    if let Ok(text) = std::str::from_utf8(bytes) {
        let via_serde = serde_json::from_str::<Envelope<E>>(text);
        match (&decoded, &via_serde) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "the two decoding paths differ"),
            (Err(_), Err(_)) => {}
            (a, b) => panic!("from_json gave {a:?}, Deserialize gave {b:?}"),
        }
    }
    let Ok(envelope) = decoded else { return };
    let json = envelope.to_json();
    let again = match Envelope::<E>::from_json(&json) {
        Ok(again) => again,
        Err(err) => panic!("re-encoded envelope does not decode: {err}\n{}", String::from_utf8_lossy(&json)),
    };
    assert_eq!(again, envelope, "decode(encode(x)) != x for {}", String::from_utf8_lossy(&json));
    assert_eq!(again.to_json(), json, "the encoding is not stable");
}

fn content_record(value: &[u8]) {
    let Ok(chunk) = content::decode(value) else { return };
    for encoding in [ContentEncoding::Binary, ContentEncoding::Json] {
        let encoded = content::encode(chunk.clone(), encoding);
        match content::decode(&encoded) {
            Ok(again) => assert_eq!(again, chunk, "decode(encode(x)) != x in {encoding:?}"),
            Err(err) => panic!("a re-encoded chunk ({encoding:?}) does not decode: {err}"),
        }
    }
}

fn segment(data: &[u8]) {
    if let Ok((first, len)) = frame::decode(data) {
        let mut encoded = Vec::new();
        frame::encode(&mut encoded, first.offset, first.timestamp_ms, first.key, first.value);
        assert_eq!(&encoded[..], &data[..len], "a frame re-encodes to other bytes");
        assert_eq!(len, frame::encoded_len(first.key, first.value));
    }
    // The base the file name would give: the first frame's offset, if any.
    let base = frame::decode(data).map_or(0, |(first, _)| first.offset);
    let scan = frame::scan(data, base);
    assert!(scan.valid_len <= data.len());
    let mut at = 0usize;
    for (i, &position) in scan.positions.iter().enumerate() {
        assert_eq!(position as usize, at, "frames are consecutive");
        let (record, len) = frame::decode(&data[at..]).expect("an indexed frame decodes");
        assert_eq!(Some(record.offset), base.checked_add(i as u64), "offsets are consecutive");
        at += len;
        envelope::<ReceivedEvent>(record.value);
        envelope::<ContentEvent>(record.value);
        content_record(record.value);
        envelope::<VerdictEvent>(record.value);
        envelope::<DeliveryEvent>(record.value);
        envelope::<JournalEvent>(record.value);
    }
    assert_eq!(at, scan.valid_len, "the valid prefix ends after the last frame");
}
