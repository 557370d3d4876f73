//! Disclaimers of mail flow rules (`ApplyHtmlDisclaimerText`,
//! `ApplyHtmlDisclaimerLocation`, `ApplyHtmlDisclaimerFallbackAction`, spec
//! 12.4), as pure functions of the stored content.
//!
//! The verdict stage asks [`can_insert`] and records what delivery will do
//! (insert, or wrap when the fallback says so); delivery calls [`apply`] when
//! it renders a copy, so the stored content is never rewritten.
//!
//! - **Insert:** the text goes into every body part of the message (mail-parser's
//!   text and HTML bodies: a single-part message, or the parts of a
//!   `multipart/alternative` or `multipart/mixed`), at the end (`Append`, the
//!   default) or the start (`Prepend`). In an HTML part it goes before
//!   `</body>` or after `<body …>`; in a plain-text part its tags are
//!   dropped. Only parts sent as they are (no base64 or quoted-printable) can
//!   take it, and non-ASCII text only a part declared UTF-8.
//! - **Cannot insert** (a signed or encrypted message, an encoded body part,
//!   no body part): the rule's fallback decides — `Wrap` (default) sends a new
//!   message with the disclaimer as its body and the original attached
//!   (`message/rfc822`); `Ignore` sends the message unchanged; `Reject` refuses
//!   it with an NDR.

use mail_parser::{Encoding, MessageParser, MimeHeaders as _, PartType};
use mailflow_events::verdicts::{Disclaimer, DisclaimerLocation};

/// One place to put the text: the offset in the content, and the part's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Insertion {
    at: usize,
    html: bool,
    /// The body part ends with a line break (the text then ends with one too).
    ends_with_crlf: bool,
}

/// Where `text` goes in `content`, or `None` when it cannot be inserted.
fn insertions(content: &[u8], text: &str, location: DisclaimerLocation) -> Option<Vec<Insertion>> {
    let message = MessageParser::default().parse(content)?;
    let root = message.parts.first()?;
    let sealed = root.content_type().is_some_and(|ct| {
        let (kind, sub) = (ct.ctype(), ct.subtype().unwrap_or_default());
        (kind.eq_ignore_ascii_case("multipart")
            && (sub.eq_ignore_ascii_case("signed") || sub.eq_ignore_ascii_case("encrypted")))
            || (kind.eq_ignore_ascii_case("application") && sub.to_ascii_lowercase().ends_with("pkcs7-mime"))
    });
    if sealed {
        return None;
    }
    let mut ids: Vec<u32> = message.text_body.iter().chain(&message.html_body).copied().collect();
    ids.sort_unstable();
    ids.dedup();
    let mut found = Vec::new();
    for id in ids {
        let part = message.parts.get(id as usize)?;
        let html = match part.body {
            PartType::Html(_) => true,
            PartType::Text(_) => false,
            _ => continue,
        };
        if part.encoding != Encoding::None {
            return None;
        }
        let utf8 = part
            .content_type()
            .and_then(|ct| ct.attribute("charset"))
            .is_some_and(|charset| charset.eq_ignore_ascii_case("utf-8") || charset.eq_ignore_ascii_case("utf8"));
        if !text.is_ascii() && !utf8 {
            return None;
        }
        let (start, end) = (part.offset_body as usize, part.offset_end as usize);
        let body = content.get(start..end)?;
        let at = match (location, html) {
            (DisclaimerLocation::Append, true) => start + rfind_ascii(body, b"</body").unwrap_or(body.len()),
            (DisclaimerLocation::Prepend, true) => {
                start
                    + find_ascii(body, b"<body")
                        .and_then(|at| memchr::memchr(b'>', &body[at..]).map(|gt| at + gt + 1))
                        .unwrap_or(0)
            }
            (DisclaimerLocation::Append, false) => end,
            (DisclaimerLocation::Prepend, false) => start,
        };
        found.push(Insertion { at, html, ends_with_crlf: body.ends_with(b"\r\n") });
    }
    (!found.is_empty()).then_some(found)
}

fn find_ascii(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w.eq_ignore_ascii_case(needle))
}

fn rfind_ascii(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).rposition(|w| w.eq_ignore_ascii_case(needle))
}

/// Whether `text` can be inserted into `content` (else the fallback applies).
pub fn can_insert(content: &[u8], text: &str, location: DisclaimerLocation) -> bool {
    insertions(content, text, location).is_some()
}

/// The disclaimer's text without its HTML tags, for plain-text parts.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_tag = false;
    for c in text.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

/// `text` with every line ending a CRLF.
fn crlf(text: &str) -> String {
    text.replace("\r\n", "\n").replace('\r', "\n").replace('\n', "\r\n")
}

/// The content with the disclaimer applied (see the module documentation).
pub fn apply(content: &[u8], disclaimer: &Disclaimer) -> Vec<u8> {
    if disclaimer.wrap {
        return wrap(content, &disclaimer.text);
    }
    let Some(mut places) = insertions(content, &disclaimer.text, disclaimer.location) else {
        // Decided insertable when judged; the same content cannot change its
        // mind, but should it, the disclaimer still goes with the message.
        return wrap(content, &disclaimer.text);
    };
    places.sort_by_key(|p| p.at);
    let html_text = crlf(&disclaimer.text);
    let plain_text = crlf(&plain(&disclaimer.text));
    let mut out = Vec::with_capacity(content.len() + places.len() * (html_text.len() + 8));
    let mut from = 0;
    for place in places {
        out.extend_from_slice(&content[from..place.at]);
        let text = if place.html { &html_text } else { &plain_text };
        let piece = match (disclaimer.location, place.html) {
            (_, true) => format!("\r\n{text}\r\n"),
            (DisclaimerLocation::Append, false) if place.ends_with_crlf => format!("\r\n{text}\r\n"),
            (DisclaimerLocation::Append, false) => format!("\r\n\r\n{text}"),
            (DisclaimerLocation::Prepend, false) => format!("{text}\r\n\r\n"),
        };
        out.extend_from_slice(piece.as_bytes());
        from = place.at;
    }
    out.extend_from_slice(&content[from..]);
    out
}

/// A new message around `content`: its header fields but the MIME ones, a
/// `multipart/mixed` body with the disclaimer (HTML) and the original message
/// attached as `message/rfc822`.
fn wrap(content: &[u8], text: &str) -> Vec<u8> {
    use crate::delivery::render::{field_name, fields, header_end};
    let mime = |name: &[u8]| {
        name.eq_ignore_ascii_case(b"mime-version") || name.len() > 8 && name[..8].eq_ignore_ascii_case(b"content-")
    };
    let mut out = Vec::with_capacity(content.len() + text.len() + 512);
    for field in fields(&content[..header_end(content).unwrap_or(content.len())]) {
        if !field_name(field).is_some_and(mime) {
            out.extend_from_slice(field);
        }
    }
    let boundary = format!("mailflow-disclaimer-{}", uuid::Uuid::now_v7().simple());
    out.extend_from_slice(
        format!(
            "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n\
             --{boundary}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
             {}\r\n--{boundary}\r\nContent-Type: message/rfc822\r\nContent-Disposition: attachment\r\n\r\n",
            crlf(text)
        )
        .as_bytes(),
    );
    out.extend_from_slice(content);
    if !content.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disclaimer(location: DisclaimerLocation) -> Disclaimer {
        Disclaimer { text: "<p>Confidential: <b>Contoso</b></p>".into(), location, wrap: false }
    }

    fn applied(content: &str, location: DisclaimerLocation) -> String {
        String::from_utf8(apply(content.as_bytes(), &disclaimer(location))).expect("utf-8")
    }

    #[test]
    fn a_plain_text_message_gets_the_text_without_tags_at_its_end_or_start() {
        let message = "From: a@contoso.com\r\nSubject: hi\r\n\r\nhello\r\n";
        assert_eq!(
            applied(message, DisclaimerLocation::Append),
            "From: a@contoso.com\r\nSubject: hi\r\n\r\nhello\r\n\r\nConfidential: Contoso\r\n"
        );
        assert_eq!(
            applied(message, DisclaimerLocation::Prepend),
            "From: a@contoso.com\r\nSubject: hi\r\n\r\nConfidential: Contoso\r\n\r\nhello\r\n"
        );
    }

    #[test]
    fn both_alternatives_get_it_html_inside_its_body_element() {
        let message = "From: a@contoso.com\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"b\"\r\n\r\n\
            --b\r\nContent-Type: text/plain\r\n\r\nhello\r\n\
            --b\r\nContent-Type: text/html\r\n\r\n<html><body class=\"x\"><p>hello</p></body></html>\r\n\
            --b--\r\n";
        let out = applied(message, DisclaimerLocation::Append);
        assert!(out.contains("\r\n\r\nhello\r\n\r\nConfidential: Contoso\r\n--b\r\n"), "{out}");
        assert!(out.contains("<p>hello</p>\r\n<p>Confidential: <b>Contoso</b></p>\r\n</body></html>"), "{out}");
        let out = applied(message, DisclaimerLocation::Prepend);
        assert!(out.contains("\r\n\r\nConfidential: Contoso\r\n\r\nhello\r\n--b"), "{out}");
        assert!(out.contains("<body class=\"x\">\r\n<p>Confidential: <b>Contoso</b></p>\r\n<p>hello</p>"), "{out}");
        // Still one well-formed message with both parts.
        let parsed = MessageParser::default().parse(out.as_bytes()).expect("parses");
        assert_eq!(parsed.body_text(0).as_deref().map(str::trim), Some("Confidential: Contoso\r\n\r\nhello".trim()));
    }

    #[test]
    fn attachments_are_left_alone_and_the_body_part_of_a_mixed_message_gets_it() {
        let message = "Content-Type: multipart/mixed; boundary=\"m\"\r\n\r\n--m\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n\
            --m\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename=\"a.txt\"\r\n\r\nattached text\r\n--m--\r\n";
        let out = applied(message, DisclaimerLocation::Append);
        assert_eq!(out.matches("Confidential").count(), 1, "{out}");
        assert!(out.contains("see attached\r\n\r\nConfidential: Contoso\r\n--m"), "{out}");
    }

    #[test]
    fn signed_encoded_or_bodiless_messages_cannot_take_it() {
        let text = "Confidential";
        let signed = b"Content-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; boundary=\"s\"\r\n\r\n--s\r\nContent-Type: text/plain\r\n\r\nhi\r\n--s\r\nContent-Type: application/pkcs7-signature\r\n\r\nMIIB\r\n--s--\r\n";
        let base64 = b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n";
        let encrypted = b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data\r\n\r\nMIIB\r\n";
        let attachment_only = b"Content-Type: application/pdf\r\n\r\n%PDF\r\n";
        for content in [&signed[..], base64, encrypted, attachment_only] {
            assert!(!can_insert(content, text, DisclaimerLocation::Append), "{}", String::from_utf8_lossy(content));
        }
        assert!(can_insert(b"Subject: x\r\n\r\nplain\r\n", text, DisclaimerLocation::Append));
        // Non-ASCII text needs a part declared UTF-8.
        assert!(!can_insert(b"Subject: x\r\n\r\nplain\r\n", "Vertraulich – Contoso", DisclaimerLocation::Append));
        assert!(can_insert(
            b"Content-Type: text/plain; charset=utf-8\r\n\r\nplain\r\n",
            "Vertraulich – Contoso",
            DisclaimerLocation::Append
        ));
    }

    #[test]
    fn wrapping_keeps_the_original_whole_as_an_attachment() {
        let signed = "From: a@contoso.com\r\nSubject: signed\r\nMIME-Version: 1.0\r\nContent-Type: multipart/signed; boundary=\"s\"\r\n\r\n--s\r\n\r\nhi\r\n--s--\r\n";
        let wrapped = Disclaimer { text: "Confidential".into(), location: DisclaimerLocation::Append, wrap: true };
        let out = String::from_utf8(apply(signed.as_bytes(), &wrapped)).expect("utf-8");
        assert!(
            out.starts_with(
                "From: a@contoso.com\r\nSubject: signed\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed;"
            ),
            "{out}"
        );
        assert!(out.contains(signed), "the original, byte for byte: {out}");
        let parsed = MessageParser::default().parse(out.as_bytes()).expect("parses");
        assert_eq!(parsed.subject(), Some("signed"));
        assert_eq!(parsed.body_html(0).as_deref().map(str::trim), Some("Confidential"));
        let attached = parsed.attachment(0).and_then(|a| a.message()).expect("message/rfc822");
        assert_eq!(attached.subject(), Some("signed"));
    }
}
