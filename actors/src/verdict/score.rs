//! From signals to a verdict: SCL, `SFV`, `IPV`, `CAT` and the policy action
//! (spec 9.1–9.3). Plain data in, plain data out.

use mailflow_events::verdicts::{AuthResult, Authentication, CompAuthResult, DmarcPolicy, PolicyAction, SpamVerdict};

/// GTUBE, the Generic Test for Unsolicited Bulk Email (spec 9.8).
pub const GTUBE: &[u8] = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

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
    /// Authentication results.
    pub authentication: &'a Authentication,
}

/// The outcome of filtering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Score {
    /// -1 (skipped) to 9.
    pub scl: i8,
    /// Verdict category.
    pub verdict: SpamVerdict,
    /// `SFV` stamp.
    pub sfv: &'static str,
    /// `IPV` stamp.
    pub ipv: &'static str,
    /// `CAT` stamp.
    pub category: &'static str,
    /// Default policy action for the verdict (spec 9.3).
    pub action: PolicyAction,
}

/// Decides the verdict. Order: block lists (IP, sender), then allow lists,
/// then DNS blocklists and content (GTUBE) as high-confidence spam, then spoofing (a DMARC failure the
/// domain asks to quarantine or reject, not rescued by ARC), else not spam.
pub fn score(signals: &Signals<'_>) -> Score {
    let ipv = if signals.ip_allowed { "CAL" } else { "NLI" };
    if signals.ip_blocked || signals.sender_blocked {
        return Score {
            scl: 9,
            verdict: SpamVerdict::HighConfidenceSpam,
            sfv: "SKB",
            ipv,
            category: "HSPM",
            action: PolicyAction::MoveToJunk,
        };
    }
    if signals.ip_allowed || signals.sender_allowed {
        return Score {
            scl: -1,
            verdict: SpamVerdict::NotSpam,
            sfv: "SKA",
            ipv,
            category: "NONE",
            action: PolicyAction::Deliver,
        };
    }
    if signals.gtube || signals.dnsbl_listed {
        return Score {
            scl: 9,
            verdict: SpamVerdict::HighConfidenceSpam,
            sfv: "SPM",
            ipv,
            category: "HSPM",
            action: PolicyAction::MoveToJunk,
        };
    }
    let spoofed = signals.authentication.dmarc.as_ref().is_some_and(|dmarc| {
        dmarc.result == AuthResult::Fail && matches!(dmarc.policy, Some(DmarcPolicy::Quarantine | DmarcPolicy::Reject))
    }) && signals.authentication.compauth.as_ref().is_some_and(|c| c.result == CompAuthResult::Fail);
    if spoofed {
        return Score {
            scl: 6,
            verdict: SpamVerdict::Spam,
            sfv: "SPM",
            ipv,
            category: "SPOOF",
            action: PolicyAction::MoveToJunk,
        };
    }
    Score { scl: 1, verdict: SpamVerdict::NotSpam, sfv: "NSPM", ipv, category: "NONE", action: PolicyAction::Deliver }
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
            authentication,
        }
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
