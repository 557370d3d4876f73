//! The bytes a copy is delivered as: the headers the verdict stage added
//! (`Authentication-Results`, `X-Forefront-Antispam-Report`, SCL, rule
//! headers), then the stored content, with a rule's disclaimer applied
//! (`crate::disclaimer`), the subject prefix of a policy or rule applied and
//! the fields a rule removes (`RemoveHeader`) left out. The stored content
//! itself is never rewritten.

use mailflow_events::delivery::Queued;

/// The header section's end (the offset after the empty line), or `None` without a body.
pub(crate) fn header_end(content: &[u8]) -> Option<usize> {
    if content.starts_with(b"\r\n") {
        return Some(0);
    }
    memchr::memmem::find(content, b"\r\n\r\n").map(|at| at + 2)
}

/// A header value as it may be written: folding (CRLF then a space or tab,
/// as `Authentication-Results` uses) is kept; any other line break would
/// start a new header (injection), so it becomes a space.
fn safe_value(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = String::with_capacity(value.len());
    let mut chars = value.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        match c {
            '\r' if bytes.get(at + 1) == Some(&b'\n') && matches!(bytes.get(at + 2), Some(b' ' | b'\t')) => {
                out.push_str("\r\n");
                chars.next();
            }
            '\r' | '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// The header fields of a header section: each field's bytes, its first line
/// and the continuation lines that fold it.
pub(crate) fn fields(headers: &[u8]) -> Vec<&[u8]> {
    let mut fields = Vec::new();
    let mut start = 0;
    let mut at = 0;
    while at < headers.len() {
        let line_end = memchr::memmem::find(&headers[at..], b"\r\n").map_or(headers.len(), |n| at + n + 2);
        let continues = matches!(headers.get(line_end), Some(b' ' | b'\t'));
        if !continues {
            fields.push(&headers[start..line_end]);
            start = line_end;
        }
        at = line_end;
    }
    if start < headers.len() {
        fields.push(&headers[start..]);
    }
    fields
}

/// The field's name, if it has one.
pub(crate) fn field_name(field: &[u8]) -> Option<&[u8]> {
    let colon = memchr::memchr(b':', field)?;
    Some(field[..colon].trim_ascii_end())
}

/// Renders one copy for delivery: verdict headers first, then the stored
/// content with the rule's removed fields left out and the subject prefix applied.
pub fn render(queued: &Queued, content: &[u8]) -> Vec<u8> {
    let disclaimed = queued.disclaimer.as_ref().map(|d| crate::disclaimer::apply(content, d));
    let content = disclaimed.as_deref().unwrap_or(content);
    let mut out = Vec::with_capacity(content.len() + 512);
    for header in &queued.prepend_headers {
        out.extend_from_slice(format!("{}: {}\r\n", header.name, safe_value(&header.value)).as_bytes());
    }
    let prefix = queued.subject_prefix.as_deref().filter(|p| !p.is_empty());
    if prefix.is_none() && queued.remove_headers.is_empty() {
        out.extend_from_slice(content);
        return out;
    }
    let end = header_end(content).unwrap_or(content.len());
    let removed = |name: &[u8]| queued.remove_headers.iter().any(|r| r.as_bytes().eq_ignore_ascii_case(name));
    let mut prefixed = false;
    let mut section = Vec::with_capacity(end + 64);
    for field in fields(&content[..end]) {
        let name = field_name(field);
        if name.is_some_and(removed) {
            continue;
        }
        match prefix {
            Some(prefix) if !prefixed && name.is_some_and(|n| n.eq_ignore_ascii_case(b"subject")) => {
                let value_at = memchr::memchr(b':', field).map_or(0, |c| c + 1);
                let skip = field[value_at..].iter().take_while(|b| **b == b' ' || **b == b'\t').count();
                section.extend_from_slice(&field[..value_at]);
                section.push(b' ');
                section.extend_from_slice(prefix.as_bytes());
                section.extend_from_slice(&field[value_at + skip..]);
                prefixed = true;
            }
            _ => section.extend_from_slice(field),
        }
    }
    if let Some(prefix) = prefix.filter(|_| !prefixed) {
        out.extend_from_slice(format!("Subject: {}\r\n", prefix.trim_end()).as_bytes());
    }
    out.extend_from_slice(&section);
    out.extend_from_slice(&content[end..]);
    out
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use mailflow_events::content::ContentRef;
    use mailflow_events::delivery::{Destination, DestinationKind, RouteReason};
    use mailflow_events::verdicts::Header;

    use super::*;

    fn queued(prefix: Option<&str>) -> Queued {
        Queued {
            destination: Destination { kind: DestinationKind::MailboxStore, name: "mailbox".into(), next_hop: None },
            route: RouteReason::AcceptedDomain,
            recipients: vec![],
            mail_from: String::new(),
            dsn_return: None,
            dsn_envid: None,
            body: Default::default(),
            smtputf8: false,
            require_tls: false,
            disclaimer: None,
            content: ContentRef { partition: 0, first_offset: 0, chunks: 0, size: 0, crc32: 0 },
            prepend_headers: vec![Header {
                name: "X-MS-Exchange-Organization-SCL".into(),
                value: "5\r\nBcc: x".into(),
            }],
            remove_headers: vec![],
            subject_prefix: prefix.map(str::to_string),
            folder: None,
            received_at: Utc::now(),
            expires_at: Utc::now(),
        }
    }

    #[test]
    fn verdict_headers_come_first_and_cannot_inject_headers() {
        let out = render(&queued(None), b"Subject: hi\r\n\r\nbody\r\n");
        assert_eq!(out, b"X-MS-Exchange-Organization-SCL: 5  Bcc: x\r\nSubject: hi\r\n\r\nbody\r\n");
    }

    #[test]
    fn folded_header_values_keep_their_folding() {
        assert_eq!(safe_value("a;\r\n\tspf=pass"), "a;\r\n\tspf=pass");
        assert_eq!(safe_value("a\r\nBcc: x\nTo: y\r"), "a  Bcc: x To: y ");
    }

    #[test]
    fn the_subject_prefix_is_prepended_to_the_header_not_the_body() {
        let out = render(&queued(Some("[SPAM] ")), b"From: a@b.c\r\nSUBJECT:   Win\r\n\r\nSubject: body line\r\n");
        let text = String::from_utf8(out).expect("ascii");
        assert!(text.contains("SUBJECT: [SPAM] Win\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nSubject: body line\r\n"), "{text}");
        let out = render(&queued(Some("[SPAM] ")), b"From: a@b.c\r\n\r\nno subject\r\n");
        assert!(String::from_utf8(out).expect("ascii").contains("Subject: [SPAM]\r\nFrom: a@b.c"));
    }

    #[test]
    fn removed_fields_go_with_their_folded_lines_and_nothing_else_changes() {
        let mut copy = queued(Some("[Rule] "));
        copy.prepend_headers.clear();
        copy.remove_headers = vec!["x-campaign".into()];
        let content = b"X-Campaign: spring\r\n\tsale\r\nSubject: Hi\r\nX-Campaigner: kept\r\n\r\nX-Campaign: body\r\n";
        let out = String::from_utf8(render(&copy, content)).expect("ascii");
        assert_eq!(out, "Subject: [Rule] Hi\r\nX-Campaigner: kept\r\n\r\nX-Campaign: body\r\n");
        copy.subject_prefix = None;
        let out = String::from_utf8(render(&copy, b"X-CAMPAIGN: a\r\nTo: b@c.d\r\n\r\n")).expect("ascii");
        assert_eq!(out, "To: b@c.d\r\n\r\n");
    }
}
