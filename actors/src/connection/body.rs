//! Receiving message content: DATA (dot-stuffed, ended by `<CRLF>.<CRLF>`)
//! and BDAT chunks (counted bytes), with the checks that keep SMTP smuggling
//! out (reliability notes §2.1).
//!
//! Only `\r\n.\r\n` ends DATA. Every other would-be terminator (`\n.\n`,
//! `\r.\r`, `\n.\r\n`, NUL around the dot, …) is content, and content holding
//! a bare CR, a bare LF or a NUL is refused as a whole with
//! `550 5.6.11` once the real terminator arrives: the client sees exactly one
//! final reply and no part of the bytes becomes a message.

use memchr::memmem;

/// Why received content cannot be accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyProblem {
    /// Larger than the configured maximum.
    TooLarge,
    /// A bare CR, a bare LF or a NUL.
    InvalidCharacters,
}

/// Collects a DATA body until `<CRLF>.<CRLF>`.
#[derive(Debug)]
pub struct DataReceiver {
    raw: Vec<u8>,
    /// Where the terminator search resumes.
    searched: usize,
    limit: usize,
    /// Bytes seen in all, also those dropped once over the limit.
    total: usize,
    overflowed: bool,
}

impl DataReceiver {
    /// A receiver that keeps at most `limit` bytes of content.
    pub fn new(limit: usize) -> Self {
        // The message starts at a line start, as if a CRLF preceded it.
        Self { raw: b"\r\n".to_vec(), searched: 0, limit: limit.saturating_add(2), total: 0, overflowed: false }
    }

    /// Takes bytes from `input`; returns true once the terminator was read.
    /// Bytes after the terminator stay in `input` (the next commands).
    pub fn ingest(&mut self, input: &mut Vec<u8>) -> bool {
        let start = self.raw.len();
        self.raw.extend_from_slice(input);
        let from = self.searched.min(start);
        if let Some(at) = memmem::find(&self.raw[from..], b"\r\n.\r\n") {
            let end = from + at;
            let consumed = end + 5 - start;
            input.drain(..consumed);
            self.total += consumed;
            // Keep the content and its final CRLF, drop the dot line.
            self.raw.truncate(end + 2);
            return true;
        }
        self.total += input.len();
        input.clear();
        self.searched = self.raw.len().saturating_sub(4);
        // The last four bytes may be the start of the terminator (`\r\n.\r`),
        // whose CRLF ends the content: only past them is the content certainly
        // over the limit, however the rest of the stream is cut into reads.
        if self.raw.len() > self.limit.saturating_add(2) {
            // Over the limit: keep only the tail the terminator search needs.
            self.overflowed = true;
            let keep = self.raw.len() - 4;
            self.raw.drain(..keep);
            self.searched = 0;
        }
        false
    }

    /// The content, dot-unstuffed and checked, once [`Self::ingest`] returned true.
    pub fn finish(self) -> Result<Vec<u8>, BodyProblem> {
        if self.overflowed || self.raw.len() > self.limit {
            return Err(BodyProblem::TooLarge);
        }
        let raw = &self.raw[2..];
        check_line_endings(raw)?;
        Ok(unstuff(raw))
    }

    /// Bytes received so far, for the size check of the reply.
    pub fn received(&self) -> usize {
        self.total
    }
}

/// Refuses bare CR, bare LF and NUL. Jumps from line break to line break
/// (memchr) rather than looking at every byte.
pub fn check_line_endings(content: &[u8]) -> Result<(), BodyProblem> {
    if memchr::memchr(0, content).is_some() {
        return Err(BodyProblem::InvalidCharacters);
    }
    for at in memchr::memchr2_iter(b'\r', b'\n', content) {
        let paired = match content[at] {
            b'\r' => content.get(at + 1) == Some(&b'\n'),
            _ => at > 0 && content[at - 1] == b'\r',
        };
        if !paired {
            return Err(BodyProblem::InvalidCharacters);
        }
    }
    Ok(())
}

/// Removes the first dot of every line that starts with one (RFC 5321
/// §4.5.2: the sender doubled it; a lone single dot is deleted the same way).
/// Copies the spans between such dots whole.
fn unstuff(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut from = usize::from(raw.first() == Some(&b'.'));
    for newline in memmem::find_iter(raw, b"\n.") {
        out.extend_from_slice(&raw[from..=newline]);
        from = newline + 2;
    }
    out.extend_from_slice(&raw[from..]);
    out
}

/// Removes, from the header section, the fields an untrusted sender must not
/// be able to set (spec 9.6; reliability notes §2.5.3): every
/// `X-MS-Exchange-Organization-*` field, and every `Authentication-Results`
/// field claiming our own authserv-id. Continuation lines go with their field.
/// Returns the content and how many fields were removed.
pub fn strip_untrusted_headers(content: &[u8], authserv_id: &str) -> (Vec<u8>, usize) {
    let header_end = memmem::find(content, b"\r\n\r\n").map_or(content.len(), |at| at + 2);
    let (header, body) = content.split_at(header_end);
    let mut out = Vec::with_capacity(content.len());
    let mut removed = 0;
    let mut dropping = false;
    for line in header.split_inclusive(|&b| b == b'\n') {
        let continuation = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        if !continuation {
            dropping = is_untrusted_field(line, authserv_id);
            removed += usize::from(dropping);
        }
        if !dropping {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(body);
    (out, removed)
}

fn is_untrusted_field(line: &[u8], authserv_id: &str) -> bool {
    const ORGANIZATION: &[u8] = b"x-ms-exchange-organization-";
    const RESULTS: &[u8] = b"authentication-results:";
    let lower = |prefix: &[u8]| line.len() >= prefix.len() && line[..prefix.len()].eq_ignore_ascii_case(prefix);
    if lower(ORGANIZATION) {
        return true;
    }
    if lower(RESULTS) {
        let value = String::from_utf8_lossy(&line[RESULTS.len()..]);
        let id = value.trim().split([';', ' ', '\t', '\r']).next().unwrap_or_default();
        return id.eq_ignore_ascii_case(authserv_id);
    }
    false
}

/// Whether the content's first line is a continuation line (starts with a
/// space or tab): a header section cannot begin with one, and anything put in
/// front of it (our `Received:` field) would take it as its own.
pub fn starts_folded(content: &[u8]) -> bool {
    matches!(content.first(), Some(b' ' | b'\t'))
}

/// What the limits look at in a header section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeaderStats {
    /// Bytes of the header section, without the empty line ending it.
    pub size: usize,
    /// Header fields (a continuation line belongs to its field).
    pub fields: usize,
    /// `Received:` fields (the hop count).
    pub received: usize,
}

/// Measures the header section of `content` (up to the first empty line, or
/// all of it when there is none).
pub fn header_stats(content: &[u8]) -> HeaderStats {
    let mut stats = HeaderStats::default();
    for line in content.split_inclusive(|&b| b == b'\n') {
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        stats.size += line.len();
        if !starts_folded(line) {
            stats.fields += 1;
        }
        if line.len() >= 9 && line[..9].eq_ignore_ascii_case(b"received:") {
            stats.received += 1;
        }
    }
    stats
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The byte-by-byte definitions the memchr versions must agree with.
    fn check_line_endings_bytewise(content: &[u8]) -> Result<(), BodyProblem> {
        let mut previous = 0u8;
        for (i, &byte) in content.iter().enumerate() {
            match byte {
                0 => return Err(BodyProblem::InvalidCharacters),
                b'\n' if previous != b'\r' => return Err(BodyProblem::InvalidCharacters),
                b'\r' if content.get(i + 1) != Some(&b'\n') => return Err(BodyProblem::InvalidCharacters),
                _ => {}
            }
            previous = byte;
        }
        Ok(())
    }

    fn unstuff_bytewise(raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(raw.len());
        let mut line_start = true;
        for &byte in raw {
            if line_start && byte == b'.' {
                line_start = false;
                continue;
            }
            out.push(byte);
            line_start = byte == b'\n';
        }
        out
    }

    proptest! {
        // Inputs drawn mostly from the bytes that matter: CR, LF, dot, NUL.
        #[test]
        fn line_checks_and_unstuffing_agree_with_their_bytewise_definitions(
            raw in proptest::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), Just(0u8), Just(b'a')], 0..64)
        ) {
            prop_assert_eq!(check_line_endings(&raw), check_line_endings_bytewise(&raw));
            prop_assert_eq!(unstuff(&raw), unstuff_bytewise(&raw));
        }
    }

    fn receive(chunks: &[&[u8]]) -> (bool, Vec<u8>, DataReceiver) {
        let mut receiver = DataReceiver::new(1 << 20);
        let mut leftover = Vec::new();
        for chunk in chunks {
            let mut input = chunk.to_vec();
            if receiver.ingest(&mut input) {
                leftover = input;
                return (true, leftover, receiver);
            }
        }
        (false, leftover, receiver)
    }

    #[test]
    fn only_crlf_dot_crlf_ends_data_even_across_reads() {
        let (done, rest, receiver) = receive(&[b"Subject: x\r\n\r\nbody\r", b"\n.", b"\r\nQUIT\r\n"]);
        assert!(done);
        assert_eq!(rest, b"QUIT\r\n");
        assert_eq!(receiver.finish().expect("valid"), b"Subject: x\r\n\r\nbody\r\n");
    }

    #[test]
    fn an_empty_message_ends_at_the_first_dot_line() {
        let (done, rest, receiver) = receive(&[b".\r\n"]);
        assert!(done && rest.is_empty());
        assert_eq!(receiver.finish().expect("valid"), b"");
    }

    #[test]
    fn dot_stuffing_is_removed() {
        let (done, _, receiver) = receive(&[b"..leading dot\r\n...two\r\nmid.dle\r\n.single\r\n.\r\n"]);
        assert!(done);
        assert_eq!(receiver.finish().expect("valid"), b".leading dot\r\n..two\r\nmid.dle\r\nsingle\r\n");
    }

    #[test]
    fn every_smuggling_terminator_is_content_and_refused() {
        // reliability.md §2.1 vectors: none may end the message; all are refused.
        let vectors: [&[u8]; 15] = [
            b"\n.\n",
            b"\n.\r\n",
            b"\r\n.\n",
            b"\r.\r",
            b"\r.\n",
            b"\n.\r",
            b"\r.\r\n",
            b"\r\n.\r",
            b"\r\n\x00.\r\n",
            b"\r\n.\x00\r\n",
            b"\r\n.\r\r\n",
            b"\r\r\n.\r\r\n",
            b"\n\n.\r\n",
            b"\r\n\x00.\r",
            b"\r\n\x00.\n",
        ];
        for vector in vectors {
            let mut first = b"From: a@b\r\n\r\nline".to_vec();
            first.extend_from_slice(vector);
            first.extend_from_slice(b"MAIL FROM:<smuggled@x>\r\nRCPT TO:<v@local>\r\nDATA\r\nSMUGGLED");
            let (done, _, receiver) = receive(&[&first]);
            assert!(!done, "{vector:?} must not end the message");
            let (done, rest, receiver) = {
                let mut receiver = receiver;
                let mut input = b"\r\n.\r\nQUIT\r\n".to_vec();
                let done = receiver.ingest(&mut input);
                (done, input, receiver)
            };
            assert!(done, "the real terminator ends it");
            assert_eq!(rest, b"QUIT\r\n");
            assert_eq!(receiver.finish(), Err(BodyProblem::InvalidCharacters), "{vector:?}");
        }
    }

    #[test]
    fn content_over_the_limit_is_refused_but_the_terminator_is_still_found() {
        let mut receiver = DataReceiver::new(10);
        let mut input = vec![b'a'; 100];
        assert!(!receiver.ingest(&mut input));
        let mut input = b"\r\n.\r\n".to_vec();
        assert!(receiver.ingest(&mut input));
        assert_eq!(receiver.finish(), Err(BodyProblem::TooLarge));
    }

    #[test]
    fn a_message_exactly_at_the_limit_is_accepted_however_its_terminator_is_cut() {
        // Found by the body_reader fuzz target (seed `receiver-at-limit`): with
        // the terminator's `.` in the same read as the content's final CRLF,
        // 64 bytes of content under a 64-byte limit were refused as too large.
        let content = [&[b'a'; 62][..], b"\r\n"].concat();
        let stream = [&content[..], b".\r\nRSET\r\n"].concat();
        for cut in 0..=stream.len() {
            let mut receiver = DataReceiver::new(64);
            let mut first = stream[..cut].to_vec();
            let mut second = stream[cut..].to_vec();
            let done = receiver.ingest(&mut first) || receiver.ingest(&mut second);
            assert!(done, "cut at {cut}");
            assert_eq!(receiver.finish(), Ok(content.clone()), "cut at {cut}");
        }
        let mut receiver = DataReceiver::new(63);
        assert!(receiver.ingest(&mut stream.clone()));
        assert_eq!(receiver.finish(), Err(BodyProblem::TooLarge), "one byte over");
    }

    #[test]
    fn organisation_headers_and_our_authentication_results_are_stripped_with_their_continuations() {
        let content = b"X-MS-Exchange-Organization-SCL: -1\r\nSubject: hi\r\nx-ms-exchange-organization-authas: Internal\r\n\tcontinued\r\nAuthentication-Results: mx.contoso.test; dmarc=pass\r\nAuthentication-Results: other.example; spf=pass\r\n\r\nX-MS-Exchange-Organization-SCL: in the body stays\r\n";
        let (stripped, removed) = strip_untrusted_headers(content, "mx.contoso.test");
        assert_eq!(removed, 3);
        assert_eq!(
            stripped,
            b"Subject: hi\r\nAuthentication-Results: other.example; spf=pass\r\n\r\nX-MS-Exchange-Organization-SCL: in the body stays\r\n"
        );
    }

    #[test]
    fn the_header_section_is_measured_up_to_the_empty_line() {
        let content = b"Received: a\r\nreceived: b\r\nSubject: x\r\n y\r\n\r\nReceived: in body\r\n";
        assert_eq!(header_stats(content), HeaderStats { size: 42, fields: 3, received: 2 });
        assert_eq!(header_stats(b"A: 1\r\nB: 2\r\n"), HeaderStats { size: 12, fields: 2, received: 0 });
        assert_eq!(header_stats(b"\r\nbody\r\n"), HeaderStats::default());
    }
}
