//! Headers the verdict stamps: `Authentication-Results` (RFC 8601),
//! `X-MS-Exchange-Organization-SCL`, an `X-Forefront-Antispam-Report`
//! compatible report and `X-Microsoft-Antispam: BCL:<n>;` (spec 9.5, 9.6), so
//! that an on-premises server can act on the verdict (spec 9.8).

use mailflow_events::verdicts::{AuthResult, Authentication, CompAuthResult, Header};

use super::score::Score;

/// Header names, in one place.
pub const AUTHENTICATION_RESULTS: &str = "Authentication-Results";
/// SCL inside the organisation.
pub const ORGANIZATION_SCL: &str = "X-MS-Exchange-Organization-SCL";
/// The antispam report.
pub const ANTISPAM_REPORT: &str = "X-Forefront-Antispam-Report";
/// The header that carries the BCL.
pub const MICROSOFT_ANTISPAM: &str = "X-Microsoft-Antispam";

fn result(result: AuthResult) -> &'static str {
    match result {
        AuthResult::Pass => "pass",
        AuthResult::Fail => "fail",
        AuthResult::SoftFail => "softfail",
        AuthResult::Neutral => "neutral",
        AuthResult::None => "none",
        AuthResult::TempError => "temperror",
        AuthResult::PermError => "permerror",
    }
}

/// `Authentication-Results: <authserv-id>; spf=… smtp.mailfrom=…; dkim=… header.d=…; dmarc=…; arc=…; iprev=…; compauth=…`.
pub fn authentication_results(authserv_id: &str, auth: &Authentication) -> Header {
    let mut parts = vec![authserv_id.to_string()];
    if let Some(spf) = &auth.spf {
        parts.push(format!("spf={} smtp.mailfrom={}", result(spf.result), spf.domain));
    }
    if auth.dkim.is_empty() {
        parts.push("dkim=none".to_string());
    }
    for dkim in &auth.dkim {
        parts.push(format!("dkim={} header.d={} header.s={}", result(dkim.result), dkim.domain, dkim.selector));
    }
    if let Some(dmarc) = &auth.dmarc {
        let action = match dmarc.disposition {
            mailflow_events::verdicts::DmarcPolicy::None => "none",
            mailflow_events::verdicts::DmarcPolicy::Quarantine => "quarantine",
            mailflow_events::verdicts::DmarcPolicy::Reject => "reject",
        };
        parts.push(format!("dmarc={} action={action} header.from={}", result(dmarc.result), dmarc.header_from));
    }
    if let Some(arc) = &auth.arc {
        parts.push(format!("arc={}", result(arc.result)));
    }
    if let Some(iprev) = &auth.iprev {
        let ip = auth.spf.as_ref().map(|s| s.client_ip.as_str()).unwrap_or_default();
        parts.push(format!("iprev={} policy.iprev={ip}", result(iprev.result)));
    }
    if let Some(compauth) = &auth.compauth {
        let value = match compauth.result {
            CompAuthResult::Pass => "pass",
            CompAuthResult::Fail => "fail",
            CompAuthResult::SoftPass => "softpass",
            CompAuthResult::None => "none",
        };
        parts.push(format!("compauth={value} reason={}", compauth.reason));
    }
    Header { name: AUTHENTICATION_RESULTS.to_string(), value: parts.join(";\r\n\t") }
}

/// The antispam report, keys in EOP's observed order.
pub fn antispam_report(score: &Score, client_ip: &str, helo: &str, ptr: &str, direction: &str) -> Header {
    let value = format!(
        "CIP:{client_ip};CTRY:;LANG:;SCL:{};SRV:{};IPV:{};SFV:{};H:{helo};PTR:{ptr};CAT:{};SFS:;DIR:{direction};",
        score.scl, score.srv, score.ipv, score.sfv, score.category
    );
    Header { name: ANTISPAM_REPORT.to_string(), value }
}

/// `X-Microsoft-Antispam: BCL:<n>;` (spec 9.5; EOP's other fields are opaque
/// and not imitated).
pub fn microsoft_antispam(score: &Score) -> Header {
    Header { name: MICROSOFT_ANTISPAM.to_string(), value: format!("BCL:{};", score.bcl) }
}

/// `X-MS-Exchange-Organization-SCL: <scl>`.
pub fn organization_scl(score: &Score) -> Header {
    Header { name: ORGANIZATION_SCL.to_string(), value: score.scl.to_string() }
}

#[cfg(test)]
mod tests {
    use mailflow_events::verdicts::{PolicyAction, SpamVerdict};

    use super::*;

    #[test]
    fn bulk_is_stamped_in_the_report_and_the_bcl_header() {
        let score = Score {
            scl: 6,
            bcl: 7,
            verdict: SpamVerdict::Bulk,
            sfv: "SPM",
            ipv: "NLI",
            srv: "BULK",
            category: "BULK",
            action: PolicyAction::MoveToJunk,
        };
        assert_eq!(
            antispam_report(&score, "192.0.2.1", "mta.example", "", "INB").value,
            "CIP:192.0.2.1;CTRY:;LANG:;SCL:6;SRV:BULK;IPV:NLI;SFV:SPM;H:mta.example;PTR:;CAT:BULK;SFS:;DIR:INB;"
        );
        assert_eq!(microsoft_antispam(&score), Header { name: "X-Microsoft-Antispam".into(), value: "BCL:7;".into() });
    }
}
