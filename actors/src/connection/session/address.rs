//! Envelope addresses as the session records them.
//!
//! smtp-proto hands over a path with its source route dropped and its quoting
//! undone: `"relay@example.org"@fabrikam.com` arrives as
//! `relay@example.org@fabrikam.com`, which every later reader (routing, the
//! next hop) would parse differently from what the client sent, the classic
//! quoted-local-part relay trick (reliability notes §2.4). [`mailbox`] puts
//! the quotes back where the local part needs them, and refuses what is not a
//! mailbox: no domain, bytes that were not UTF-8, and non-ASCII from a client
//! that did not declare SMTPUTF8 (RFC 6531; Postfix answers the same `553 5.6.7`).

/// Why an envelope address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AddressProblem {
    /// Not a mailbox: empty domain, control characters, invalid UTF-8.
    Syntax,
    /// Non-ASCII without the SMTPUTF8 parameter on MAIL.
    NeedsSmtpUtf8,
}

/// The address to record for `address` as parsed, in a transaction that did
/// (`smtputf8`) or did not declare SMTPUTF8. The null path stays empty.
pub(super) fn mailbox(address: &str, smtputf8: bool) -> Result<String, AddressProblem> {
    if address.is_empty() {
        return Ok(String::new());
    }
    // The parser replaces bytes that are not UTF-8 with U+FFFD: recording
    // that would be a different address from the one sent.
    if address.chars().any(|c| c.is_control() || c == char::REPLACEMENT_CHARACTER) {
        return Err(AddressProblem::Syntax);
    }
    if !smtputf8 && !address.is_ascii() {
        return Err(AddressProblem::NeedsSmtpUtf8);
    }
    // A domain never holds an `@`, so the last one separates the parts.
    let Some((local, domain)) = address.rsplit_once('@') else { return Err(AddressProblem::Syntax) };
    if local.is_empty() || domain.is_empty() {
        return Err(AddressProblem::Syntax);
    }
    if is_dot_string(local) {
        return Ok(address.to_string());
    }
    let mut quoted = String::with_capacity(address.len() + 4);
    quoted.push('"');
    for c in local.chars() {
        if matches!(c, '"' | '\\') {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push_str("\"@");
    quoted.push_str(domain);
    Ok(quoted)
}

/// RFC 5321 `Dot-string` (with RFC 6531's UTF-8 in atoms): atoms of atext
/// separated by single dots.
fn is_dot_string(local: &str) -> bool {
    let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii();
    local.split('.').all(|atom| !atom.is_empty() && atom.chars().all(atext))
}

/// Placeholder domain put where an address literal was, for the parser.
const LITERAL_PLACEHOLDER: &str = "address-literal.invalid";

/// smtp-proto refuses address literals (`user@[192.0.2.1]`,
/// `user@[IPv6:2001:db8::1]`, RFC 5321 §4.1.3). For a MAIL or RCPT line whose
/// path ends in one, this returns the line with the literal replaced by a
/// placeholder domain the parser takes, and the literal (brackets kept,
/// `IPv6:` tag as RFC 5321 spells it) to put back with [`restore_literal`].
/// Anything but an IPv4 or IPv6 literal stays refused.
pub(super) fn mask_address_literal(line: &[u8]) -> Option<(Vec<u8>, String)> {
    let open = memchr::memmem::find(line, b"@[")? + 1;
    let close = open + memchr::memchr(b']', &line[open..])?;
    if line.get(close + 1) != Some(&b'>') {
        return None;
    }
    let literal = match crate::dns::literal_ip(std::str::from_utf8(&line[open..=close]).ok()?)? {
        std::net::IpAddr::V6(ip) => format!("[IPv6:{ip}]"),
        std::net::IpAddr::V4(ip) => format!("[{ip}]"),
    };
    let mut masked = Vec::with_capacity(line.len() + LITERAL_PLACEHOLDER.len());
    masked.extend_from_slice(&line[..open]);
    masked.extend_from_slice(LITERAL_PLACEHOLDER.as_bytes());
    masked.extend_from_slice(&line[close + 1..]);
    Some((masked, literal))
}

/// Puts `literal` back as the domain of an address parsed from a masked line.
pub(super) fn restore_literal(address: &mut String, literal: &str) {
    if let Some(local) = address.strip_suffix(LITERAL_PLACEHOLDER).and_then(|rest| rest.strip_suffix('@')) {
        *address = format!("{local}@{literal}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_literals_are_masked_for_the_parser_and_put_back() {
        let (masked, literal) = mask_address_literal(b"RCPT TO:<bob@[192.0.2.1]> NOTIFY=NEVER\r\n").expect("v4");
        assert_eq!(masked, b"RCPT TO:<bob@address-literal.invalid> NOTIFY=NEVER\r\n");
        assert_eq!(literal, "[192.0.2.1]");
        let mut address = "bob@address-literal.invalid".to_string();
        restore_literal(&mut address, &literal);
        assert_eq!(address, "bob@[192.0.2.1]");
        let (_, literal) = mask_address_literal(b"MAIL FROM:<a@[ipv6:2001:DB8::1]>\r\n").expect("v6");
        assert_eq!(literal, "[IPv6:2001:db8::1]");
        assert_eq!(crate::dns::literal_ip(&literal), Some("2001:db8::1".parse().expect("ip")));
        assert_eq!(crate::dns::literal_ip("[192.0.2.1]"), Some("192.0.2.1".parse().expect("ip")));
        assert_eq!(crate::dns::literal_ip("example.com"), None);
        // Not an IP, not at the end of the path, or a bare IPv6 without its tag.
        assert_eq!(mask_address_literal(b"RCPT TO:<bob@[mail.example]>\r\n"), None);
        assert_eq!(mask_address_literal(b"RCPT TO:<bob@[192.0.2.1]x>\r\n"), None);
        assert_eq!(mask_address_literal(b"RCPT TO:<bob@[2001:db8::1]>\r\n"), None);
        assert_eq!(mask_address_literal(b"RCPT TO:<bob@[999.0.2.1]>\r\n"), None);
    }

    #[test]
    fn local_parts_that_need_quotes_get_them_back() {
        assert_eq!(mailbox("bob@contoso.com", false), Ok("bob@contoso.com".into()));
        assert_eq!(mailbox("first.last+tag@contoso.com", false), Ok("first.last+tag@contoso.com".into()));
        assert_eq!(mailbox("example.org!relay@fabrikam.com", false), Ok("example.org!relay@fabrikam.com".into()));
        assert_eq!(mailbox("relay@example.org@fabrikam.com", false), Ok("\"relay@example.org\"@fabrikam.com".into()));
        assert_eq!(mailbox("a b@fabrikam.com", false), Ok("\"a b\"@fabrikam.com".into()));
        assert_eq!(mailbox("b\"o\\b@fabrikam.com", false), Ok("\"b\\\"o\\\\b\"@fabrikam.com".into()));
        assert_eq!(mailbox(".lead@fabrikam.com", false), Ok("\".lead\"@fabrikam.com".into()));
        assert_eq!(mailbox("", false), Ok(String::new()));
    }

    #[test]
    fn what_is_not_a_mailbox_is_refused() {
        assert_eq!(mailbox("user@", false), Err(AddressProblem::Syntax));
        assert_eq!(mailbox("user", false), Err(AddressProblem::Syntax));
        assert_eq!(mailbox("a\u{7f}b@example.net", false), Err(AddressProblem::Syntax));
        assert_eq!(mailbox("jos\u{fffd}@example.net", true), Err(AddressProblem::Syntax));
    }

    #[test]
    fn non_ascii_needs_smtputf8() {
        assert_eq!(mailbox("josé@example.net", false), Err(AddressProblem::NeedsSmtpUtf8));
        assert_eq!(mailbox("josé@example.net", true), Ok("josé@example.net".into()));
        assert_eq!(mailbox("user@bücher.example", false), Err(AddressProblem::NeedsSmtpUtf8));
    }
}
