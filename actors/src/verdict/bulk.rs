//! The bulk complaint level (BCL, spec 9.2; 0 not bulk, 1–3 few complaints,
//! 4–7 mixed, 8–9 many), from what a self-hosted router can see.
//!
//! EOP's BCL comes from complaint data across Microsoft's whole service; a
//! single router has none. So the level here is a model, and says so:
//!
//! 1. **Configured reputation.** `anti_spam.bulk_senders` maps a domain to a
//!    BCL: the operator's own knowledge of a sender (from complaints they
//!    handled, an ESP's abuse record, …). It is looked up for the `From:`
//!    domain, the `MAIL FROM` domain and every DKIM signing domain, each with
//!    its parent domains; the highest match is the BCL, whatever the headers say
//!    (so an entry of 0 clears a sender the header model would rate).
//! 2. **Header model**, when no entry matches. A message is bulk when it
//!    carries a bulk mailer's marks: `Precedence: bulk|list|junk`, `List-Id`,
//!    `List-Unsubscribe`, `List-Unsubscribe-Post`, `Feedback-ID` (the feedback
//!    loop id ESPs stamp) or one of `anti_spam.bulk_marker_headers`. Without
//!    complaint data, bulk mail starts in the middle of the "mixed" band, and
//!    what makes recipients complain moves it:
//!
//! | evidence | BCL |
//! |---|---|
//! | no bulk mark | 0 |
//! | bulk marks (the base) | 4 |
//! | one-click unsubscribe (RFC 8058: `List-Unsubscribe-Post: List-Unsubscribe=One-Click` and an `https:` `List-Unsubscribe`) | −1 |
//! | no `List-Unsubscribe` at all: recipients can only complain | +2 |
//! | authenticated (compauth pass or softpass) | −1 |
//! | not authenticated | +1 |
//!
//! The result is kept in 1–9. Well-run bulk mail (one-click unsubscribe,
//! signed) is BCL 2; bulk mail nobody can unsubscribe from and nobody
//! authenticated is BCL 7, which the default threshold (7) treats as bulk.
//! Everything between stays below the default threshold: the header model
//! alone marks bulk mail as spam only at its worst, or with a lower threshold.

use std::collections::BTreeMap;

use mailflow_events::verdicts::{AuthResult, Authentication, CompAuthResult};

/// BCL of bulk mail with no evidence either way (the middle of "mixed").
const BASE: i8 = 4;

/// The bulk mailer's marks found in a message's header fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Marks {
    /// `Precedence: bulk`, `list` or `junk`.
    pub precedence: bool,
    /// `List-Id`.
    pub list_id: bool,
    /// `List-Unsubscribe`.
    pub list_unsubscribe: bool,
    /// RFC 8058 one-click: `List-Unsubscribe-Post: List-Unsubscribe=One-Click`
    /// with an `https:` URI in `List-Unsubscribe`.
    pub one_click: bool,
    /// `Feedback-ID`.
    pub feedback_id: bool,
    /// One of the configured marker headers.
    pub configured: bool,
}

impl Marks {
    /// Reads the marks from header fields (name, raw value).
    pub fn from_headers<'a>(headers: impl IntoIterator<Item = (&'a str, &'a str)>, configured: &[String]) -> Self {
        let mut marks = Marks::default();
        let mut one_click_post = false;
        let mut https_unsubscribe = false;
        for (name, value) in headers {
            let value = value.trim();
            if name.eq_ignore_ascii_case("Precedence") {
                marks.precedence |= ["bulk", "list", "junk"].iter().any(|p| value.eq_ignore_ascii_case(p));
            } else if name.eq_ignore_ascii_case("List-Id") {
                marks.list_id = true;
            } else if name.eq_ignore_ascii_case("List-Unsubscribe") {
                marks.list_unsubscribe = true;
                https_unsubscribe |= value.to_ascii_lowercase().contains("<https:");
            } else if name.eq_ignore_ascii_case("List-Unsubscribe-Post") {
                one_click_post |= value.eq_ignore_ascii_case("List-Unsubscribe=One-Click");
            } else if name.eq_ignore_ascii_case("Feedback-ID") {
                marks.feedback_id = true;
            }
            if configured.iter().any(|c| c.eq_ignore_ascii_case(name)) {
                marks.configured = true;
            }
        }
        marks.one_click = one_click_post && https_unsubscribe;
        marks
    }

    /// Whether any mark says the message is bulk.
    pub fn any(&self) -> bool {
        self.precedence
            || self.list_id
            || self.list_unsubscribe
            || self.one_click
            || self.feedback_id
            || self.configured
    }
}

/// Whether the author domain authenticated (compauth pass or softpass).
pub fn authenticated(authentication: &Authentication) -> bool {
    authentication
        .compauth
        .as_ref()
        .is_some_and(|c| matches!(c.result, CompAuthResult::Pass | CompAuthResult::SoftPass))
}

/// The header model's BCL (see the module doc).
pub fn header_bcl(marks: &Marks, authenticated: bool) -> u8 {
    if !marks.any() {
        return 0;
    }
    let mut bcl = BASE;
    if marks.one_click {
        bcl -= 1;
    }
    if !marks.list_unsubscribe {
        bcl += 2;
    }
    bcl += if authenticated { -1 } else { 1 };
    bcl.clamp(1, 9) as u8
}

/// The configured BCL of the first domain in `bulk_senders` that is one of
/// `domains` or a parent of one; the highest when several match.
pub fn reputation<'a>(bulk_senders: &BTreeMap<String, u8>, domains: impl IntoIterator<Item = &'a str>) -> Option<u8> {
    domains
        .into_iter()
        .flat_map(|domain| {
            let domain = domain.trim_end_matches('.').to_ascii_lowercase();
            let mut found = Vec::new();
            let mut rest = domain.as_str();
            loop {
                if let Some((_, bcl)) = bulk_senders.iter().find(|(d, _)| d.eq_ignore_ascii_case(rest)) {
                    found.push(*bcl);
                }
                match rest.split_once('.') {
                    Some((_, parent)) if !parent.is_empty() => rest = parent,
                    _ => break,
                }
            }
            found
        })
        .max()
}

/// The domains a configured reputation is looked up for: `From:`, `MAIL
/// FROM` and every DKIM signing domain that verified.
pub fn sender_domains<'a>(
    header_from: &'a str,
    mail_from: &'a str,
    authentication: &'a Authentication,
) -> Vec<&'a str> {
    let domain = |address: &'a str| address.rsplit_once('@').map_or("", |(_, d)| d);
    let mut domains = vec![domain(header_from), domain(mail_from)];
    domains.extend(authentication.dkim.iter().filter(|d| d.result == AuthResult::Pass).map(|d| d.domain.as_str()));
    domains.retain(|d| !d.is_empty());
    domains
}

/// The BCL: the configured reputation if any, else the header model.
pub fn bcl(marks: &Marks, authenticated: bool, reputation: Option<u8>) -> u8 {
    reputation.map_or_else(|| header_bcl(marks, authenticated), |bcl| bcl.min(9))
}

#[cfg(test)]
mod tests {
    use mailflow_events::verdicts::{CompAuth, DkimCheck};

    use super::*;

    fn marks(headers: &[(&str, &str)]) -> Marks {
        Marks::from_headers(headers.iter().copied(), &["X-Mailgun-Sid".to_string()])
    }

    /// (header fields, authenticated, expected BCL).
    type Row<'a> = (&'a [(&'a str, &'a str)], bool, u8);

    #[test]
    fn each_row_of_the_header_model() {
        let one_click = [
            ("List-Unsubscribe", "<https://news.example/u/1>, <mailto:u@news.example>"),
            ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
        ];
        let table: &[Row<'_>] = &[
            (&[("Subject", "hello")], false, 0),
            (&[("Subject", "hello")], true, 0),
            (&[("Precedence", "normal")], false, 0),
            (&one_click, true, 2),
            (&one_click, false, 4),
            (&[("List-Unsubscribe", "<mailto:u@news.example>")], true, 3),
            (&[("List-Unsubscribe", "<mailto:u@news.example>")], false, 5),
            (&[("Precedence", "bulk")], true, 5),
            (&[("Precedence", "Bulk")], false, 7),
            (&[("Feedback-ID", "1:2:3:esp")], false, 7),
            (&[("X-Mailgun-Sid", "abc")], false, 7),
            (&[("List-Id", "<dev.lists.example>"), ("List-Unsubscribe", "<mailto:x@lists.example>")], true, 3),
        ];
        for (headers, authenticated, expected) in table {
            assert_eq!(
                header_bcl(&marks(headers), *authenticated),
                *expected,
                "{headers:?} authenticated={authenticated}"
            );
        }
    }

    #[test]
    fn one_click_needs_both_the_post_header_and_an_https_uri() {
        let mailto_only = marks(&[
            ("List-Unsubscribe", "<mailto:u@news.example>"),
            ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
        ]);
        assert!(!mailto_only.one_click);
        assert_eq!(header_bcl(&mailto_only, true), 3);
    }

    #[test]
    fn configured_reputation_wins_and_covers_subdomains() {
        let senders: BTreeMap<String, u8> =
            [("esp.example".to_string(), 8), ("friendly.example".to_string(), 0)].into_iter().collect();
        assert_eq!(reputation(&senders, ["bounce.mail.esp.example"]), Some(8));
        assert_eq!(reputation(&senders, ["friendly.example", "esp.example"]), Some(8), "the highest match");
        assert_eq!(reputation(&senders, ["notesp.example"]), None, "a suffix is not a parent domain");
        let noisy = marks(&[("Precedence", "bulk")]);
        assert_eq!(bcl(&noisy, false, reputation(&senders, ["friendly.example"])), 0, "an entry of 0 clears");
        assert_eq!(bcl(&noisy, false, None), 7);
    }

    #[test]
    fn reputation_is_looked_up_for_from_mail_from_and_verified_dkim_domains() {
        let authentication = Authentication {
            dkim: vec![
                DkimCheck {
                    result: AuthResult::Pass,
                    domain: "esp.example".into(),
                    selector: "s".into(),
                    reason: None,
                },
                DkimCheck {
                    result: AuthResult::Fail,
                    domain: "forged.example".into(),
                    selector: "s".into(),
                    reason: None,
                },
            ],
            compauth: Some(CompAuth { result: CompAuthResult::SoftPass, reason: "110".into() }),
            ..Authentication::default()
        };
        assert_eq!(
            sender_domains("news@shop.example", "bounce@esp.example", &authentication),
            vec!["shop.example", "esp.example", "esp.example"]
        );
        assert!(authenticated(&authentication));
        assert!(!authenticated(&Authentication::default()));
    }
}
