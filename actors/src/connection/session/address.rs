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

#[cfg(test)]
mod tests {
    use super::*;

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
