//! `body_reader`: message content, DATA and BDAT, against a model.
//!
//! Input: byte 0 picks the reader (modulo 3), byte 1 a size limit or a seed
//! for cutting the stream into reads, the rest is the stream:
//!
//! - 0, `DataReceiver` alone: the stream cut five ways (one read, byte by
//!   byte, at every LF, two pseudo-random cuttings) must give the same result,
//!   and the one a plain model gives: the message ends at the first
//!   `<CRLF>.<CRLF>` (the stream starts at a line start), the bytes after it
//!   are left for the commands, the content is dot-unstuffed, larger than the
//!   limit is `TooLarge` whatever the cutting, a bare CR or LF or a NUL is
//!   `InvalidCharacters`, and what is accepted is never over the limit.
//! - 1, DATA through a session: after EHLO, MAIL, RCPT and DATA (each read
//!   alone) the client sends the stream, then `<CRLF>.<CRLF>` and QUIT. When
//!   the stream holds no `<CRLF>.<CRLF>` of its own, nothing in it is taken for
//!   a command (no smuggled second transaction): the replies after `354` are
//!   exactly the end-of-data reply the model expects and `221`.
//! - 2, BDAT through a session: the stream is a list of chunks (`0xFF 0xFF` is
//!   a literal `0xFF`, `0xFF x` ends a chunk, LAST when `x` is odd); each goes
//!   out as `BDAT <size> [LAST]` and its bytes. Each BDAT gets exactly one
//!   reply (chunk data is never read as commands), the one a model of
//!   RFC 3030 expects, and the stored message is the chunks' concatenation.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mailflow_actors::connection::body::{self, BodyProblem, DataReceiver};
use mailflow_actors::connection::reply::Reply;
use mailflow_fuzz::{Driver, SessionOptions, find, split_reads};

/// Limits for the receiver alone: the edges (0, a few bytes), then larger.
const LIMITS: [usize; 8] = [0, 1, 2, 3, 5, 8, 64, 1024];

fuzz_target!(|data: &[u8]| {
    let [reader, parameter, stream @ ..] = data else { return };
    match reader % 3 {
        0 => receiver_alone(LIMITS[usize::from(parameter % 8)], parameter >> 3, stream),
        1 => data_in_session(*parameter, stream),
        _ => bdat_in_session(*parameter, stream),
    }
});

/// What a receiver made of a stream.
#[derive(Debug, PartialEq, Eq)]
struct Received {
    /// The content (or why not), once the terminator was read.
    result: Option<Result<Vec<u8>, BodyProblem>>,
    /// The bytes after the terminator: the next commands.
    rest: Vec<u8>,
    /// Bytes the receiver counted as consumed.
    consumed: usize,
}

fn receive(limit: usize, reads: &[&[u8]]) -> Received {
    let mut receiver = DataReceiver::new(limit);
    let mut reads = reads.iter();
    for read in reads.by_ref() {
        let mut input = read.to_vec();
        if receiver.ingest(&mut input) {
            let consumed = receiver.received();
            let mut rest = input;
            for later in reads {
                rest.extend_from_slice(later);
            }
            return Received { result: Some(receiver.finish()), rest, consumed };
        }
        assert!(input.is_empty(), "a read was not consumed and no terminator found");
    }
    Received { result: None, rest: Vec::new(), consumed: receiver.received() }
}

/// The plain model: find the terminator, then check and unstuff.
fn model(limit: usize, stream: &[u8]) -> Received {
    let mut framed = b"\r\n".to_vec();
    framed.extend_from_slice(stream);
    let Some(at) = find(&framed, b"\r\n.\r\n") else {
        return Received { result: None, rest: Vec::new(), consumed: stream.len() };
    };
    let content = &framed[2..at + 2];
    let result = if content.len() > limit {
        Err(BodyProblem::TooLarge)
    } else if content.contains(&0)
        || content.windows(2).any(|w| (w[0] == b'\r') != (w[1] == b'\n'))
        || content.first() == Some(&b'\n')
        || content.last() == Some(&b'\r')
    {
        Err(BodyProblem::InvalidCharacters)
    } else {
        let mut unstuffed = Vec::new();
        for line in content.split_inclusive(|&b| b == b'\n') {
            unstuffed.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
        }
        Ok(unstuffed)
    };
    Received { result: Some(result), rest: framed[at + 5..].to_vec(), consumed: at + 5 - 2 }
}

fn receiver_alone(limit: usize, seed: u8, stream: &[u8]) {
    let expected = model(limit, stream);
    if let Some(Ok(content)) = &expected.result {
        assert!(content.len() <= limit);
    }
    let bytes: Vec<&[u8]> = stream.chunks(1).collect();
    let cuttings: [Vec<&[u8]>; 5] = [
        vec![stream],
        bytes,
        split_reads(stream, 0, seed),
        split_reads(stream, 2, seed),
        split_reads(stream, 1, seed.wrapping_add(1)),
    ];
    for (i, reads) in cuttings.iter().enumerate() {
        let got = receive(limit, reads);
        assert_eq!(got, expected, "cutting {i} differs from the model (limit {limit})");
    }
}

/// A session with an open transaction: EHLO, MAIL and one RCPT, read by read.
fn transaction() -> Driver {
    let mut driver = Driver::new(SessionOptions::from_byte(0));
    for command in
        [&b"EHLO client.example\r\n"[..], b"MAIL FROM:<sender@example.net>\r\n", b"RCPT TO:<alice@example.com>\r\n"]
    {
        driver.receive(command);
    }
    let codes: Vec<u16> = driver.replies.iter().map(Reply::code).collect();
    assert_eq!(codes, [220, 250, 250, 250], "the transaction opens");
    driver
}

/// The reply that ends a message of `content` (raw, before our header).
fn end_of_data(content: Result<Vec<u8>, BodyProblem>) -> (u16, Option<&'static str>) {
    match content {
        Err(BodyProblem::TooLarge) => (552, Some("5.3.4")),
        Err(BodyProblem::InvalidCharacters) => (550, Some("5.6.11")),
        Ok(content) if matches!(content.first(), Some(b' ' | b'\t')) => (550, Some("5.6.0")),
        Ok(content) if body::header_stats(&content).received > 3 => (554, Some("5.4.14")),
        Ok(_) => (250, Some("2.0.0")),
    }
}

fn codes(replies: &[Reply]) -> Vec<(u16, Option<&'static str>)> {
    replies.iter().map(|reply| (reply.code(), reply.enhanced())).collect()
}

/// A stored message without our `Received:` field, and without the
/// stripped-headers marker when fields were `stripped` (a client may send
/// such a field itself).
fn client_content(stored: &[u8], stripped: bool) -> &[u8] {
    let mut end = 0;
    while let Some(at) = find(&stored[end..], b"\r\n") {
        end += at + 2;
        if stored.get(end) != Some(&b'\t') {
            break;
        }
    }
    let rest = &stored[end..];
    let marker = b"X-MS-Exchange-Transport-CrossTenantHeadersStripped: mx.fuzz.test\r\n";
    if stripped { rest.strip_prefix(&marker[..]).expect("the stripped-headers marker") } else { rest }
}

fn data_in_session(seed: u8, body: &[u8]) {
    let mut driver = transaction();
    driver.receive(b"DATA\r\n");
    assert_eq!(driver.replies.last().map(Reply::code), Some(354));
    let before = driver.replies.len();
    let mut stream = body.to_vec();
    stream.extend_from_slice(b"\r\n.\r\nQUIT\r\n");
    for read in split_reads(&stream, 2, seed) {
        driver.receive(read);
    }
    let limit = driver.max_message_size();
    let expected = model(limit, &stream);
    if expected.rest != b"QUIT\r\n" {
        // The body ended the message itself; what follows is commands, which
        // the driver has checked for well-formed replies.
        return;
    }
    let content = expected.result.expect("the appended terminator ends the message");
    let stored = content.clone().ok();
    let mut want = vec![end_of_data(content)];
    want.push((221, Some("2.0.0")));
    assert_eq!(codes(&driver.replies[before..]), want, "replies after 354");
    assert!(driver.closed, "QUIT closes");
    match (stored, &driver.stored[..]) {
        (Some(content), [one]) => {
            let (expected, removed) = body::strip_untrusted_headers(&content, "mx.fuzz.test");
            assert_eq!(client_content(&one.content, removed > 0), &expected[..], "stored content");
        }
        (Some(content), []) => assert!(
            body::header_stats(&content).received > 3 || body::starts_folded(&content),
            "a valid message was not stored"
        ),
        (None, []) => {}
        (_, stored) => panic!("{} messages stored for one DATA", stored.len()),
    }
}

/// The chunks of the BDAT input format.
fn chunks(stream: &[u8]) -> Vec<(Vec<u8>, bool)> {
    let mut chunks = Vec::new();
    let mut current = Vec::new();
    let mut i = 0;
    while i < stream.len() {
        if stream[i] != 0xFF {
            current.push(stream[i]);
            i += 1;
            continue;
        }
        match stream.get(i + 1) {
            Some(0xFF) => current.push(0xFF),
            Some(flag) => chunks.push((std::mem::take(&mut current), flag & 1 == 1)),
            None => break,
        }
        i += 2;
    }
    if !current.is_empty() {
        chunks.push((current, false));
    }
    chunks
}

/// A reply with the message id left out (it is new every time).
fn normalised(reply: &Reply) -> Reply {
    match reply {
        Reply::Queued { .. } => Reply::Queued { id: String::new() },
        other => other.clone(),
    }
}

/// RFC 3030 as the session should apply it to `chunks` in an open
/// transaction: the replies, and the content of a message to be stored.
/// The stored content is the client's with fields stripped, and how many were.
fn bdat_model(chunks: &[(Vec<u8>, bool)], limit: usize, max_errors: usize) -> (Vec<Reply>, Option<(Vec<u8>, usize)>) {
    let mut replies = Vec::new();
    let mut stored = None;
    let mut open = true;
    let mut content = Vec::new();
    let mut too_large = false;
    let mut errors = 0;
    for (data, last) in chunks {
        if !open {
            replies.push(Reply::BadSequence("need MAIL and RCPT before BDAT"));
            errors += 1;
            if errors >= max_errors {
                replies.push(Reply::TooManyErrors);
                return (replies, stored);
            }
            continue;
        }
        too_large |= content.len() + data.len() > limit;
        if !too_large {
            content.extend_from_slice(data);
        }
        if !last {
            replies.push(if too_large { Reply::MessageTooLarge } else { Reply::ChunkOk { size: content.len() } });
            continue;
        }
        open = false;
        let reply = if too_large {
            Reply::MessageTooLarge
        } else if body::check_line_endings(&content).is_err() {
            Reply::InvalidCharacters
        } else if matches!(content.first(), Some(b' ' | b'\t')) {
            Reply::FoldedFirstLine
        } else if body::header_stats(&content).received > 3 {
            Reply::HopCountExceeded
        } else {
            stored = Some(body::strip_untrusted_headers(&content, "mx.fuzz.test"));
            Reply::Queued { id: String::new() }
        };
        replies.push(reply);
    }
    replies.push(Reply::Closing);
    (replies, stored)
}

fn bdat_in_session(cuts: u8, stream: &[u8]) {
    let chunks = chunks(stream);
    let mut wire = Vec::new();
    for (data, last) in &chunks {
        let last = if *last { " LAST" } else { "" };
        wire.extend_from_slice(format!("BDAT {}{last}\r\n", data.len()).as_bytes());
        wire.extend_from_slice(data);
    }
    wire.extend_from_slice(b"QUIT\r\n");
    let mut driver = transaction();
    let before = driver.replies.len();
    for read in split_reads(&wire, cuts & 3, cuts >> 2) {
        driver.receive(read);
    }
    let max_errors = mailflow_fuzz::router_config().server.max_errors;
    let (want, stored) = bdat_model(&chunks, driver.max_message_size(), max_errors);
    let got: Vec<Reply> = driver.replies[before..].iter().map(normalised).collect();
    assert_eq!(got, want, "one reply per BDAT, as RFC 3030 says");
    assert!(driver.closed);
    match (stored, &driver.stored[..]) {
        (Some((content, removed)), [one]) => {
            assert_eq!(client_content(&one.content, removed > 0), &content[..], "stored content")
        }
        (None, []) => {}
        (want, got) => panic!("expected {:?} stored, got {}", want.map(|(c, _)| c.len()), got.len()),
    }
}
