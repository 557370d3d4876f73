//! Phish signals (spec 9.2, 9.5; compauth reasons of spec 10.2): what in a
//! message says it impersonates someone or leads to a phishing site.
//!
//! - **Phishing links** → high-confidence phish (`CAT:HPHSH`): a link whose
//!   host is one of `anti_spam.phish_url_domains` (or under one), or whose
//!   domain a URI DNSBL lists (see [`super::dnsbl::domain_listed_in`]).
//! - **Intra-org spoofing** → phish (`CAT:SPOOF`): the `From:` domain is one of
//!   our accepted domains, the message did not come from inside (no AUTH, no
//!   on-premises connector), and authentication says it is not ours: DMARC
//!   fails (compauth `fail`, reason `010`), or, without a DMARC record, neither
//!   SPF nor DKIM passes for that domain (reason `601`, an implicit fail).
//! - **Deceptive links** → phish (`CAT:PHSH`): in HTML, an anchor whose text
//!   shows a web address (`https://…` or `www.…`) on another domain than the
//!   one it leads to, in mail that did not authenticate. Authenticated bulk
//!   mail does the same for click tracking all the time, hence the condition.
//!   Domains are compared by their last two labels, an approximation of the
//!   registered domain without the public suffix list: it can miss a deceptive
//!   link under the same two-label suffix (`bank.co.uk` shown, `evil.co.uk`
//!   target), never flags one within one registered domain.
//!
//! Links are read from the text and HTML parts, `http:` and `https:` only; a
//! userinfo part (`https://bank.example@evil.example/`) is skipped, the host is
//! what the browser would visit. At most [`MAX_LINK_HOSTS`] distinct hosts are
//! kept per message, which bounds the DNS work of the URI DNSBL.

use std::sync::LazyLock;

use mail_parser::Message;
use mailflow_events::verdicts::{AuthResult, Authentication, CompAuth, CompAuthResult};
use regex::Regex;

/// Distinct link hosts looked at per message.
pub const MAX_LINK_HOSTS: usize = 32;

// The patterns are literals: compiling them cannot fail (a test compiles each).
static URL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?i)\bhttps?://(?:[^/\s@"'<>]*@)?(\[[0-9a-f:.]+\]|[a-z0-9](?:[a-z0-9._-]*[a-z0-9])?)"#)
        .expect("URL pattern")
});
static ANCHOR: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r#"(?is)<a\b[^>]*?\bhref\s*=\s*["']?\s*https?://(?:[^/\s@"'<>]*@)?([a-z0-9](?:[a-z0-9._-]*[a-z0-9])?)[^>]*>(.*?)</a\s*>"#,
    )
    .expect("anchor pattern")
});
static TAG: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(?s)<[^>]*>").expect("tag pattern"));
static SHOWN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)(?:https?://(?:[^/\s@]*@)?|\bwww\.)((?:[a-z0-9-]+\.)+[a-z]{2,})").expect("shown pattern")
});

fn normalise(host: &str) -> String {
    host.trim_matches(['[', ']']).trim_end_matches('.').to_ascii_lowercase()
}

/// The text of every text and HTML part.
fn texts<'a>(message: &'a Message<'a>) -> impl Iterator<Item = (&'a str, bool)> {
    message
        .parts
        .iter()
        .filter(|part| part.is_text())
        .filter_map(|part| Some((part.text_contents()?, part.is_text_html())))
}

/// The distinct hosts of the message's links, lowercase, in order of appearance.
pub fn link_hosts(message: &Message<'_>) -> Vec<String> {
    let mut hosts: Vec<String> = Vec::new();
    for (text, _) in texts(message) {
        for captures in URL.captures_iter(text) {
            let host = normalise(&captures[1]);
            if !hosts.contains(&host) {
                hosts.push(host);
                if hosts.len() == MAX_LINK_HOSTS {
                    return hosts;
                }
            }
        }
    }
    hosts
}

/// The last two labels of a host name (the approximate registered domain).
fn site(host: &str) -> String {
    let labels: Vec<&str> = host.trim_end_matches('.').rsplit('.').take(2).collect();
    labels.into_iter().rev().collect::<Vec<_>>().join(".").to_ascii_lowercase()
}

/// The first deceptive anchor of the HTML parts: (domain shown, host linked).
pub fn deceptive_link(message: &Message<'_>) -> Option<(String, String)> {
    texts(message).filter(|(_, html)| *html).find_map(|(html, _)| {
        ANCHOR.captures_iter(html).find_map(|anchor| {
            let target = normalise(&anchor[1]);
            let text = TAG.replace_all(&anchor[2], " ");
            let shown = normalise(&SHOWN.captures(&text)?[1]);
            (site(&shown) != site(&target)).then_some((shown, target))
        })
    })
}

/// Whether `host` is one of `domains` or under one.
pub fn under_any(host: &str, domains: &[String]) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    domains.iter().any(|domain| {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        !domain.is_empty() && (host == domain || host.strip_suffix(&domain).is_some_and(|rest| rest.ends_with('.')))
    })
}

/// The first link host on the configured phishing domains.
pub fn phishing_host<'a>(hosts: &'a [String], domains: &[String]) -> Option<&'a str> {
    hosts.iter().find(|host| under_any(host, domains)).map(String::as_str)
}

/// Whether `a` and `b` are the same domain or one is under the other
/// (relaxed alignment, approximated without the public suffix list).
fn aligned(a: &str, b: &str) -> bool {
    under_any(a, &[b.to_string()]) || under_any(b, &[a.to_string()])
}

/// Intra-org spoofing: the compauth failure that replaces the computed one
/// when `from_domain` is ours (`ours`), the message came from outside
/// (`!internal`) and authentication does not vouch for the domain.
pub fn intra_org_spoof(
    authentication: &Authentication,
    from_domain: &str,
    ours: bool,
    internal: bool,
) -> Option<CompAuth> {
    if !ours || internal || from_domain.is_empty() {
        return None;
    }
    let compauth_passed = authentication.compauth.as_ref().is_some_and(|c| c.result == CompAuthResult::Pass);
    let reason = match authentication.dmarc.as_ref().map(|d| d.result) {
        Some(AuthResult::Pass) => return None,
        // A trusted ARC chain rescued it (compauth 130): not a spoof.
        Some(AuthResult::Fail) if compauth_passed => return None,
        Some(AuthResult::Fail) => "010",
        Some(AuthResult::TempError | AuthResult::PermError) => return None,
        _ => {
            let spf = authentication
                .spf
                .as_ref()
                .is_some_and(|spf| spf.result == AuthResult::Pass && aligned(&spf.domain, from_domain));
            let dkim =
                authentication.dkim.iter().any(|d| d.result == AuthResult::Pass && aligned(&d.domain, from_domain));
            if spf || dkim {
                return None;
            }
            "601"
        }
    };
    Some(CompAuth { result: CompAuthResult::Fail, reason: reason.to_string() })
}

#[cfg(test)]
mod tests {
    use mailflow_events::verdicts::{DkimCheck, DmarcCheck, DmarcPolicy, SpfCheck};

    use super::*;

    fn parse(raw: &str) -> Message<'_> {
        mail_parser::MessageParser::default().parse(raw.as_bytes()).expect("message parses")
    }

    const HTML: &str = "From: a@b.example\r\nSubject: s\r\nContent-Type: multipart/alternative; boundary=x\r\n\r\n\
--x\r\nContent-Type: text/plain\r\n\r\nVisit https://Shop.Example/deals or http://user@evil.example:8080/x\r\n\
--x\r\nContent-Type: text/html\r\n\r\n<p><a class=\"btn\" href=\"https://login.evil.example/session\"><b>https://www.bank.example</b>/login</a>\
 <a href='https://track.esp.example/c/1'>Click here</a> <a href=\"http://img.bank.example/x\">www.bank.example</a></p>\r\n--x--\r\n";

    #[test]
    fn link_hosts_come_from_text_and_html_parts_without_userinfo() {
        let message = parse(HTML);
        assert_eq!(
            link_hosts(&message),
            vec![
                "shop.example",
                "evil.example",
                "login.evil.example",
                "www.bank.example",
                "track.esp.example",
                "img.bank.example"
            ]
        );
    }

    #[test]
    fn an_anchor_showing_one_domain_and_leading_to_another_is_deceptive() {
        let message = parse(HTML);
        assert_eq!(deceptive_link(&message), Some(("www.bank.example".into(), "login.evil.example".into())));
        let honest = parse(
            "Subject: s\r\nContent-Type: text/html\r\n\r\n<a href=\"https://img.bank.example/\">www.bank.example</a> \
             <a href=\"https://t.esp.example/\">Read more</a>\r\n",
        );
        assert_eq!(deceptive_link(&honest), None, "same site, or no address shown");
    }

    #[test]
    fn phishing_domains_match_hosts_and_their_subdomains_only() {
        let domains = vec!["evil.example".to_string()];
        assert!(under_any("evil.example", &domains));
        assert!(under_any("Login.EVIL.example", &domains));
        assert!(!under_any("notevil.example", &domains));
        let hosts = vec!["shop.example".to_string(), "login.evil.example".to_string()];
        assert_eq!(phishing_host(&hosts, &domains), Some("login.evil.example"));
        assert_eq!(phishing_host(&hosts[..1], &domains), None);
    }

    fn authentication(dmarc: Option<AuthResult>, spf: (AuthResult, &str), compauth: CompAuthResult) -> Authentication {
        Authentication {
            spf: Some(SpfCheck { result: spf.0, domain: spf.1.into(), client_ip: "192.0.2.1".into() }),
            dmarc: dmarc.map(|result| DmarcCheck {
                result,
                header_from: "contoso.com".into(),
                policy: Some(DmarcPolicy::Reject),
                disposition: DmarcPolicy::None,
            }),
            compauth: Some(CompAuth { result: compauth, reason: "000".into() }),
            ..Authentication::default()
        }
    }

    /// (DMARC, SPF and its domain, compauth, ours, internal, expected reason).
    type Row<'a> = (Option<AuthResult>, (AuthResult, &'a str), CompAuthResult, bool, bool, Option<&'a str>);

    #[test]
    fn each_row_of_intra_org_spoofing() {
        use AuthResult::{Fail, None as NoRecord, Pass, TempError};
        use CompAuthResult as C;
        // (dmarc, spf, compauth, ours, internal) → reason
        let table: &[Row<'_>] = &[
            (Some(Fail), (Fail, "contoso.com"), C::Fail, true, false, Some("010")),
            (Some(Fail), (Fail, "contoso.com"), C::Fail, false, false, None),
            (Some(Fail), (Fail, "contoso.com"), C::Fail, true, true, None),
            (Some(Fail), (Fail, "contoso.com"), C::Pass, true, false, None),
            (Some(Pass), (Pass, "contoso.com"), C::Pass, true, false, None),
            (Some(TempError), (TempError, "contoso.com"), C::None, true, false, None),
            (Some(NoRecord), (Fail, "contoso.com"), C::None, true, false, Some("601")),
            (Some(NoRecord), (Pass, "elsewhere.example"), C::SoftPass, true, false, Some("601")),
            (Some(NoRecord), (Pass, "bounces.contoso.com"), C::SoftPass, true, false, None),
            (None, (NoRecord, "contoso.com"), C::None, true, false, Some("601")),
        ];
        for (dmarc, spf, compauth, ours, internal, expected) in table {
            let found = intra_org_spoof(&authentication(*dmarc, *spf, *compauth), "contoso.com", *ours, *internal);
            assert_eq!(found.as_ref().map(|c| c.reason.as_str()), *expected, "{dmarc:?} {spf:?} {compauth:?}");
            assert!(found.is_none_or(|c| c.result == CompAuthResult::Fail));
        }
        let mut signed = authentication(Some(NoRecord), (Fail, "x.example"), C::None);
        signed.dkim.push(DkimCheck { result: Pass, domain: "contoso.com".into(), selector: "s".into(), reason: None });
        assert_eq!(intra_org_spoof(&signed, "contoso.com", true, false), None, "aligned DKIM vouches");
    }
}
