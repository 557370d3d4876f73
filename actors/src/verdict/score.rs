//! From signals to a verdict: SCL, BCL, `SFV`, `IPV`, `SRV`, `CAT` and the
//! policy action (spec 9.1–9.5). Plain data in, plain data out.
//!
//! Exactly one category is stamped. The first row that holds decides
//! (precedence after spec 9.2 and EOP's `HPHSH > PHSH > HSPM > SPOOF > SPM >
//! BULK`, with the admin's lists where EOP puts them):
//!
//! | signal | SCL | verdict | SFV | CAT |
//! |---|---|---|---|---|
//! | link to a phishing domain | 9 | high-confidence phish | SPM | HPHSH |
//! | IP or sender block list | 9 | high-confidence spam | SKB | HSPM |
//! | IP or sender allow list | -1 | not spam | SKA | NONE |
//! | deceptive link | 6 | phish | SPM | PHSH |
//! | GTUBE, DNSBL, rspamd `reject` | 9 | high-confidence spam | SPM | HSPM |
//! | intra-org spoofing | 6 | phish | SPM | SPOOF |
//! | DMARC quarantine/reject failure | 6 | spam | SPM | SPOOF |
//! | rspamd `add header`, `rewrite subject` | 5 | spam | SPM | SPM |
//! | BCL ≥ threshold, `mark_as_spam_bulk_mail` | 6 | bulk | SPM | BULK |
//! | none | 1 | not spam | NSPM | NONE |
//!
//! High-confidence phish is above the allow lists: EOP never lets an allow
//! override it (spec 9.2). The BCL is stamped whatever the verdict, and
//! `SRV:BULK` whenever it reaches the threshold.

use mailflow_events::verdicts::{AuthResult, Authentication, CompAuthResult, DmarcPolicy, PolicyAction, SpamVerdict};

/// GTUBE, the Generic Test for Unsolicited Bulk Email (spec 9.8).
pub const GTUBE: &[u8] = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

/// What an external engine (rspamd) said, in EOP's terms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EngineVerdict {
    /// Nothing to add (also: not asked, or no answer).
    #[default]
    NoChange,
    /// Spam (SCL 5).
    Spam,
    /// High-confidence spam (SCL 9).
    HighConfidenceSpam,
}

/// Phish signals, strongest first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PhishSignal {
    /// None found.
    #[default]
    None,
    /// A link to a phishing domain (configured or URI DNSBL).
    PhishingLink,
    /// A link that shows one site and leads to another, unauthenticated.
    DeceptiveLink,
    /// The `From:` domain is ours and the message is not.
    IntraOrgSpoof,
}

/// What the verdict is decided from.
#[derive(Debug, Clone, Copy)]
pub struct Signals<'a> {
    /// The client IP is on the connection filter's allow list.
    pub ip_allowed: bool,
    /// The client IP is on the connection filter's block list.
    pub ip_blocked: bool,
    /// The sender (address or domain) is on the allowed senders list.
    pub sender_allowed: bool,
    /// The sender (address or domain) is on the blocked senders list.
    pub sender_blocked: bool,
    /// The client IP is listed in a DNS blocklist.
    pub dnsbl_listed: bool,
    /// The content carries GTUBE.
    pub gtube: bool,
    /// Phish signals.
    pub phish: PhishSignal,
    /// What rspamd said.
    pub engine: EngineVerdict,
    /// Bulk complaint level, 0–9.
    pub bcl: u8,
    /// `bulk_threshold` (1–9).
    pub bulk_threshold: u8,
    /// `mark_as_spam_bulk_mail`.
    pub mark_bulk_as_spam: bool,
    /// Authentication results.
    pub authentication: &'a Authentication,
}

/// The outcome of filtering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Score {
    /// -1 (skipped) to 9.
    pub scl: i8,
    /// Bulk complaint level, 0–9.
    pub bcl: u8,
    /// Verdict category.
    pub verdict: SpamVerdict,
    /// `SFV` stamp.
    pub sfv: &'static str,
    /// `IPV` stamp.
    pub ipv: &'static str,
    /// `SRV` stamp: `BULK` or empty.
    pub srv: &'static str,
    /// `CAT` stamp.
    pub category: &'static str,
    /// Default policy action for the verdict (spec 9.3).
    pub action: PolicyAction,
}

/// Decides the verdict (the table of the module doc).
pub fn score(signals: &Signals<'_>) -> Score {
    let ipv = if signals.ip_allowed { "CAL" } else { "NLI" };
    let bulk = signals.bcl >= signals.bulk_threshold;
    let base = Score {
        scl: 1,
        bcl: signals.bcl,
        verdict: SpamVerdict::NotSpam,
        sfv: "NSPM",
        ipv,
        srv: if bulk { "BULK" } else { "" },
        category: "NONE",
        action: PolicyAction::Deliver,
    };
    let verdict = |scl, verdict, sfv, category, action| Score { scl, verdict, sfv, category, action, ..base.clone() };
    use PolicyAction::{Deliver, MoveToJunk, Quarantine};
    use SpamVerdict::{Bulk, HighConfidencePhish, HighConfidenceSpam, NotSpam, Phish, Spam};
    if signals.phish == PhishSignal::PhishingLink {
        return verdict(9, HighConfidencePhish, "SPM", "HPHSH", Quarantine);
    }
    if signals.ip_blocked || signals.sender_blocked {
        return verdict(9, HighConfidenceSpam, "SKB", "HSPM", MoveToJunk);
    }
    if signals.ip_allowed || signals.sender_allowed {
        return verdict(-1, NotSpam, "SKA", "NONE", Deliver);
    }
    if signals.phish == PhishSignal::DeceptiveLink {
        return verdict(6, Phish, "SPM", "PHSH", Quarantine);
    }
    if signals.gtube || signals.dnsbl_listed || signals.engine == EngineVerdict::HighConfidenceSpam {
        return verdict(9, HighConfidenceSpam, "SPM", "HSPM", MoveToJunk);
    }
    if signals.phish == PhishSignal::IntraOrgSpoof {
        return verdict(6, Phish, "SPM", "SPOOF", Quarantine);
    }
    let spoofed = signals.authentication.dmarc.as_ref().is_some_and(|dmarc| {
        dmarc.result == AuthResult::Fail && matches!(dmarc.policy, Some(DmarcPolicy::Quarantine | DmarcPolicy::Reject))
    }) && signals.authentication.compauth.as_ref().is_some_and(|c| c.result == CompAuthResult::Fail);
    if spoofed {
        return verdict(6, Spam, "SPM", "SPOOF", MoveToJunk);
    }
    if signals.engine == EngineVerdict::Spam {
        return verdict(5, Spam, "SPM", "SPM", MoveToJunk);
    }
    if bulk && signals.mark_bulk_as_spam {
        return verdict(6, Bulk, "SPM", "BULK", MoveToJunk);
    }
    base
}

/// A rule's `SetSCL` (spec 9.4): -1 bypasses filtering (`SFV:SKN`), 5–6 is
/// spam and 7–9 high-confidence spam (`SFV:SKS`), 0–4 leaves the verdict.
/// A phish verdict stands: a rule's spam SCL ranks below it, and a bypass
/// does not lift high-confidence phish (spec 9.4: "HC-phish is still
/// filtered"); ordinary phish can be bypassed like spam.
pub fn with_rule_scl(score: Score, set: Option<i8>) -> Score {
    use SpamVerdict::{HighConfidencePhish, Phish};
    match (set, score.verdict) {
        (_, HighConfidencePhish) | (Some(5..=9), Phish) => score,
        (Some(-1), _) => Score {
            scl: -1,
            verdict: SpamVerdict::NotSpam,
            sfv: "SKN",
            category: "NONE",
            action: PolicyAction::Deliver,
            ..score
        },
        (Some(scl @ 5..=6), _) => Score {
            scl,
            verdict: SpamVerdict::Spam,
            sfv: "SKS",
            category: "SPM",
            action: PolicyAction::MoveToJunk,
            ..score
        },
        (Some(scl @ 7..=9), _) => Score {
            scl,
            verdict: SpamVerdict::HighConfidenceSpam,
            sfv: "SKS",
            category: "HSPM",
            action: PolicyAction::MoveToJunk,
            ..score
        },
        _ => score,
    }
}

/// Whether `content` carries GTUBE anywhere.
pub fn has_gtube(content: &[u8]) -> bool {
    memchr::memmem::find(content, GTUBE).is_some()
}

#[cfg(test)]
mod tests {
    use mailflow_events::verdicts::{CompAuth, DmarcCheck};

    use super::*;

    fn signals(authentication: &Authentication) -> Signals<'_> {
        Signals {
            ip_allowed: false,
            ip_blocked: false,
            sender_allowed: false,
            sender_blocked: false,
            dnsbl_listed: false,
            gtube: false,
            phish: PhishSignal::None,
            engine: EngineVerdict::NoChange,
            bcl: 0,
            bulk_threshold: 7,
            mark_bulk_as_spam: true,
            authentication,
        }
    }

    /// (SCL, BCL, verdict, SFV, SRV, CAT).
    type Stamps = (i8, u8, SpamVerdict, &'static str, &'static str, &'static str);

    fn stamps(score: &Score) -> Stamps {
        (score.scl, score.bcl, score.verdict, score.sfv, score.srv, score.category)
    }

    #[test]
    fn each_bcl_row_against_the_default_threshold_of_spec_9_2() {
        let none = Authentication::default();
        use SpamVerdict::{Bulk, NotSpam};
        let table: &[(u8, Stamps)] = &[
            (0, (1, 0, NotSpam, "NSPM", "", "NONE")),
            (1, (1, 1, NotSpam, "NSPM", "", "NONE")),
            (3, (1, 3, NotSpam, "NSPM", "", "NONE")),
            (4, (1, 4, NotSpam, "NSPM", "", "NONE")),
            (6, (1, 6, NotSpam, "NSPM", "", "NONE")),
            (7, (6, 7, Bulk, "SPM", "BULK", "BULK")),
            (8, (6, 8, Bulk, "SPM", "BULK", "BULK")),
            (9, (6, 9, Bulk, "SPM", "BULK", "BULK")),
        ];
        for (bcl, expected) in table {
            let scored = score(&Signals { bcl: *bcl, ..signals(&none) });
            assert_eq!(stamps(&scored), *expected, "BCL {bcl}");
            let expected_action = if *bcl >= 7 { PolicyAction::MoveToJunk } else { PolicyAction::Deliver };
            assert_eq!(scored.action, expected_action, "BCL {bcl}");
        }
    }

    #[test]
    fn the_bulk_threshold_is_inclusive_and_marking_can_be_off() {
        let none = Authentication::default();
        let strict = score(&Signals { bcl: 5, bulk_threshold: 5, ..signals(&none) });
        assert_eq!(stamps(&strict), (6, 5, SpamVerdict::Bulk, "SPM", "BULK", "BULK"));
        let below = score(&Signals { bcl: 4, bulk_threshold: 5, ..signals(&none) });
        assert_eq!(stamps(&below), (1, 4, SpamVerdict::NotSpam, "NSPM", "", "NONE"));
        let stamp_only = score(&Signals { bcl: 9, mark_bulk_as_spam: false, ..signals(&none) });
        assert_eq!(stamps(&stamp_only), (1, 9, SpamVerdict::NotSpam, "NSPM", "BULK", "NONE"), "BCL only");
    }

    #[test]
    fn each_phish_and_engine_row_and_their_precedence() {
        let none = Authentication::default();
        use SpamVerdict::{HighConfidencePhish, HighConfidenceSpam, Phish, Spam};
        let bulky = Signals { bcl: 9, ..signals(&none) };
        let table: &[(Signals<'_>, Stamps)] = &[
            (
                Signals { phish: PhishSignal::PhishingLink, ..bulky },
                (9, 9, HighConfidencePhish, "SPM", "BULK", "HPHSH"),
            ),
            (
                Signals { phish: PhishSignal::PhishingLink, ip_allowed: true, sender_allowed: true, ..bulky },
                (9, 9, HighConfidencePhish, "SPM", "BULK", "HPHSH"),
            ),
            (
                Signals { phish: PhishSignal::IntraOrgSpoof, gtube: true, ..bulky },
                (9, 9, HighConfidenceSpam, "SPM", "BULK", "HSPM"),
            ),
            (
                Signals { phish: PhishSignal::IntraOrgSpoof, engine: EngineVerdict::Spam, ..bulky },
                (6, 9, Phish, "SPM", "BULK", "SPOOF"),
            ),
            (Signals { phish: PhishSignal::DeceptiveLink, gtube: true, ..bulky }, (6, 9, Phish, "SPM", "BULK", "PHSH")),
            (Signals { phish: PhishSignal::DeceptiveLink, ..bulky }, (6, 9, Phish, "SPM", "BULK", "PHSH")),
            (
                Signals { phish: PhishSignal::DeceptiveLink, sender_allowed: true, ..bulky },
                (-1, 9, SpamVerdict::NotSpam, "SKA", "BULK", "NONE"),
            ),
            (
                Signals { engine: EngineVerdict::HighConfidenceSpam, ..bulky },
                (9, 9, HighConfidenceSpam, "SPM", "BULK", "HSPM"),
            ),
            (Signals { engine: EngineVerdict::Spam, ..bulky }, (5, 9, Spam, "SPM", "BULK", "SPM")),
            (Signals { engine: EngineVerdict::Spam, ..signals(&none) }, (5, 0, Spam, "SPM", "", "SPM")),
        ];
        for (signals, expected) in table {
            assert_eq!(stamps(&score(signals)), *expected, "{signals:?}");
        }
        assert_eq!(
            score(&Signals { phish: PhishSignal::PhishingLink, ..signals(&none) }).action,
            PolicyAction::Quarantine
        );
        assert_eq!(
            score(&Signals { phish: PhishSignal::IntraOrgSpoof, ..signals(&none) }).action,
            PolicyAction::Quarantine
        );
    }

    #[test]
    fn a_rule_scl_overrides_spam_and_bulk_but_not_high_confidence_phish() {
        let none = Authentication::default();
        let bulk = score(&Signals { bcl: 8, ..signals(&none) });
        let bypassed = with_rule_scl(bulk.clone(), Some(-1));
        assert_eq!(stamps(&bypassed), (-1, 8, SpamVerdict::NotSpam, "SKN", "BULK", "NONE"), "BCL stays stamped");
        assert_eq!(stamps(&with_rule_scl(bulk.clone(), Some(6))), (6, 8, SpamVerdict::Spam, "SKS", "BULK", "SPM"));
        assert_eq!(
            stamps(&with_rule_scl(bulk.clone(), Some(8))),
            (8, 8, SpamVerdict::HighConfidenceSpam, "SKS", "BULK", "HSPM")
        );
        assert_eq!(with_rule_scl(bulk.clone(), Some(3)), bulk, "0-4 keeps filtering");
        let hc_phish = score(&Signals { phish: PhishSignal::PhishingLink, ..signals(&none) });
        assert_eq!(with_rule_scl(hc_phish.clone(), Some(-1)), hc_phish);
        let phish = score(&Signals { phish: PhishSignal::IntraOrgSpoof, ..signals(&none) });
        assert_eq!(with_rule_scl(phish.clone(), Some(9)), phish, "phish ranks above a rule's spam");
        assert_eq!(with_rule_scl(phish, Some(-1)).sfv, "SKN");
    }

    #[test]
    fn each_scl_row_of_spec_9_1() {
        let none = Authentication::default();
        let clean = score(&signals(&none));
        assert_eq!(
            (clean.scl, clean.verdict, clean.sfv, clean.action),
            (1, SpamVerdict::NotSpam, "NSPM", PolicyAction::Deliver)
        );
        let allowed = score(&Signals { ip_allowed: true, ..signals(&none) });
        assert_eq!((allowed.scl, allowed.sfv, allowed.ipv), (-1, "SKA", "CAL"));
        let blocked = score(&Signals { ip_blocked: true, ..signals(&none) });
        assert_eq!((blocked.scl, blocked.sfv, blocked.verdict), (9, "SKB", SpamVerdict::HighConfidenceSpam));
        let sender_allowed = score(&Signals { sender_allowed: true, ..signals(&none) });
        assert_eq!((sender_allowed.scl, sender_allowed.sfv, sender_allowed.ipv), (-1, "SKA", "NLI"));
        let sender_blocked = score(&Signals { sender_blocked: true, sender_allowed: true, ..signals(&none) });
        assert_eq!((sender_blocked.scl, sender_blocked.sfv), (9, "SKB"), "block wins over allow");
        let listed = score(&Signals { dnsbl_listed: true, ..signals(&none) });
        assert_eq!((listed.scl, listed.verdict), (9, SpamVerdict::HighConfidenceSpam));
        let gtube = score(&Signals { gtube: true, ..signals(&none) });
        assert_eq!((gtube.scl, gtube.sfv, gtube.category, gtube.action), (9, "SPM", "HSPM", PolicyAction::MoveToJunk));
    }

    #[test]
    fn a_dmarc_reject_failure_is_spoofing_unless_arc_rescues_it() {
        let mut authentication = Authentication {
            dmarc: Some(DmarcCheck {
                result: AuthResult::Fail,
                header_from: "contoso.com".into(),
                policy: Some(DmarcPolicy::Reject),
                disposition: DmarcPolicy::Reject,
            }),
            compauth: Some(CompAuth { result: CompAuthResult::Fail, reason: "000".into() }),
            ..Authentication::default()
        };
        let spoof = score(&signals(&authentication));
        assert_eq!((spoof.scl, spoof.category), (6, "SPOOF"));
        authentication.compauth = Some(CompAuth { result: CompAuthResult::Pass, reason: "130".into() });
        assert_eq!(score(&signals(&authentication)).verdict, SpamVerdict::NotSpam);
    }

    #[test]
    fn gtube_is_found_anywhere_in_the_content() {
        let mut content = b"Subject: test\r\n\r\nbody ".to_vec();
        content.extend_from_slice(GTUBE);
        assert!(has_gtube(&content));
        assert!(!has_gtube(b"Subject: test\r\n\r\nXJS*C4JDBQADN1"));
    }
}
