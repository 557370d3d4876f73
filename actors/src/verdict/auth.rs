//! Email authentication of an accepted message with mail-auth: SPF, every
//! DKIM signature, DMARC (alignment and policy), ARC, iprev, and a composite
//! result in the spirit of EOP's compauth. DNS failures become `temperror`
//! results, never errors: the message is never lost for a DNS timeout.

use std::net::IpAddr;

use mail_auth::dmarc::Policy;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{AuthenticatedMessage, DkimResult, DmarcResult, IprevResult, MessageAuthenticator, SpfResult};
use mailflow_events::verdicts::{
    ArcCheck, AuthResult, Authentication, CompAuth, CompAuthResult, DkimCheck, DmarcCheck, DmarcPolicy, IprevCheck,
    SpfCheck,
};

/// What authentication needs to know about the message's arrival.
#[derive(Debug, Clone, Copy)]
pub struct Arrival<'a> {
    /// The IP whose authority is checked (the client, or the original sender
    /// under Enhanced Filtering).
    pub ip: IpAddr,
    /// HELO/EHLO name.
    pub helo: &'a str,
    /// Our host name.
    pub hostname: &'a str,
    /// MAIL FROM (empty for `<>`).
    pub mail_from: &'a str,
    /// ARC sealers whose passing chains are trusted (`arc_trusted_sealers`).
    pub trusted_arc_sealers: &'a [String],
}

/// Runs every check on `content` (the message as stored, `Received:` first).
pub async fn authenticate(
    authenticator: &MessageAuthenticator,
    arrival: Arrival<'_>,
    content: &[u8],
) -> Authentication {
    let spf_output = authenticator
        .verify_spf(SpfParameters::verify_mail_from(arrival.ip, arrival.helo, arrival.hostname, arrival.mail_from))
        .await;
    let spf_domain = arrival.mail_from.rsplit_once('@').map_or(arrival.helo, |(_, d)| d).to_string();
    let spf = SpfCheck {
        result: spf_result(spf_output.result()),
        domain: spf_domain.clone(),
        client_ip: arrival.ip.to_string(),
    };
    let iprev_output = authenticator.verify_iprev(arrival.ip).await;
    let iprev = IprevCheck {
        result: iprev_result(&iprev_output.result),
        hostname: iprev_output
            .ptr
            .as_ref()
            .and_then(|names| names.first())
            .filter(|_| iprev_output.result == IprevResult::Pass)
            .map(|name| name.trim_end_matches('.').to_string()),
    };
    let Some(message) = AuthenticatedMessage::parse(content) else {
        // Not parseable as a message: SPF and iprev still say something.
        return Authentication { spf: Some(spf), iprev: Some(iprev), ..Authentication::default() };
    };
    let dkim_outputs = authenticator.verify_dkim(&message).await;
    let dkim = dkim_outputs
        .iter()
        .map(|output| DkimCheck {
            result: dkim_result(output.result()),
            domain: output.signature().map(|s| s.d.clone()).unwrap_or_default(),
            selector: output.signature().map(|s| s.s.clone()).unwrap_or_default(),
            reason: reason(output.result()),
        })
        .collect::<Vec<_>>();
    let arc_output = authenticator.verify_arc(&message).await;
    let arc = (!arc_output.sets().is_empty() || !matches!(arc_output.result(), DkimResult::None)).then(|| {
        // RFC 8617 §5.2: a chain whose most recent AMS does not validate
        // fails; mail-auth reports that (a body-hash mismatch, say) as
        // `neutral`, which `arc=` does not have.
        let result = match dkim_result(arc_output.result()) {
            AuthResult::Neutral => AuthResult::Fail,
            other => other,
        };
        let sealer = arc_output
            .sets()
            .iter()
            .max_by_key(|set| set.seal.header.i)
            .map(|set| set.seal.header.d.trim_end_matches('.').to_ascii_lowercase());
        let trusted = result == AuthResult::Pass
            && sealer.as_deref().is_some_and(|d| arrival.trusted_arc_sealers.iter().any(|t| t.eq_ignore_ascii_case(d)));
        ArcCheck { result, instances: arc_output.sets().len() as u32, sealer, trusted }
    });
    let dmarc_output =
        authenticator.verify_dmarc(DmarcParameters::new(&message, &dkim_outputs, &spf_domain, &spf_output)).await;
    let from = message.from();
    let header_from = (!from.is_empty()).then(|| from.rsplit_once('@').map_or(from, |(_, d)| d).to_string());
    // mail-auth leaves both results `None` when nothing aligned passed; a
    // record found for the author domain is what says DMARC applies (its
    // output without a record still says `Policy::None`).
    let has_record = dmarc_output.dmarc_record().is_some();
    let results = [dmarc_output.spf_result(), dmarc_output.dkim_result()];
    let dmarc_result = if results.iter().any(|r| matches!(r, DmarcResult::Pass)) {
        AuthResult::Pass
    } else if results.iter().any(|r| matches!(r, DmarcResult::TempError(_))) {
        AuthResult::TempError
    } else if results.iter().any(|r| matches!(r, DmarcResult::PermError(_))) {
        AuthResult::PermError
    } else if has_record {
        AuthResult::Fail
    } else {
        AuthResult::None
    };
    let policy = match dmarc_output.policy() {
        _ if !has_record => None,
        Policy::None => Some(DmarcPolicy::None),
        Policy::Quarantine => Some(DmarcPolicy::Quarantine),
        Policy::Reject => Some(DmarcPolicy::Reject),
        Policy::Unspecified => None,
    };
    let dmarc = DmarcCheck {
        result: dmarc_result,
        header_from: header_from.unwrap_or_default(),
        policy,
        disposition: if dmarc_result == AuthResult::Fail {
            policy.unwrap_or(DmarcPolicy::None)
        } else {
            DmarcPolicy::None
        },
    };
    let mut authentication =
        Authentication { spf: Some(spf), dkim, dmarc: Some(dmarc), arc, iprev: Some(iprev), compauth: None };
    authentication.compauth = Some(compauth(&authentication));
    authentication
}

/// Spec 3.2b: SPF **or** DKIM passes (what anonymous IPv6 mail needs).
pub fn passes_spf_or_dkim(authentication: &Authentication) -> bool {
    authentication.spf.as_ref().is_some_and(|spf| spf.result == AuthResult::Pass)
        || authentication.dkim.iter().any(|dkim| dkim.result == AuthResult::Pass)
}

/// Composite authentication: DMARC decides where it has a record; without one,
/// an aligned-looking pass of SPF or DKIM is a soft pass; a passing ARC chain
/// rescues a DMARC failure (reason 130), as EOP does for trusted forwarders.
pub fn compauth(authentication: &Authentication) -> CompAuth {
    let dmarc = authentication.dmarc.as_ref();
    let spf_pass = authentication.spf.as_ref().is_some_and(|s| s.result == AuthResult::Pass);
    let dkim_pass = authentication.dkim.iter().any(|d| d.result == AuthResult::Pass);
    let arc_pass = authentication.arc.as_ref().is_some_and(|a| a.result == AuthResult::Pass && a.trusted);
    let (result, reason) = match dmarc.map(|d| d.result) {
        Some(AuthResult::Pass) => (CompAuthResult::Pass, "100"),
        Some(AuthResult::Fail) if arc_pass => (CompAuthResult::Pass, "130"),
        Some(AuthResult::Fail) => (CompAuthResult::Fail, "000"),
        Some(AuthResult::TempError | AuthResult::PermError) => (CompAuthResult::None, "450"),
        _ if spf_pass || dkim_pass => (CompAuthResult::SoftPass, "110"),
        _ => (CompAuthResult::None, "001"),
    };
    CompAuth { result, reason: reason.to_string() }
}

fn spf_result(result: SpfResult) -> AuthResult {
    match result {
        SpfResult::Pass => AuthResult::Pass,
        SpfResult::Fail => AuthResult::Fail,
        SpfResult::SoftFail => AuthResult::SoftFail,
        SpfResult::Neutral => AuthResult::Neutral,
        SpfResult::TempError => AuthResult::TempError,
        SpfResult::PermError => AuthResult::PermError,
        SpfResult::None => AuthResult::None,
    }
}

fn dkim_result(result: &DkimResult) -> AuthResult {
    match result {
        DkimResult::Pass => AuthResult::Pass,
        DkimResult::Neutral(_) => AuthResult::Neutral,
        DkimResult::Fail(_) => AuthResult::Fail,
        DkimResult::PermError(_) => AuthResult::PermError,
        DkimResult::TempError(_) => AuthResult::TempError,
        DkimResult::None => AuthResult::None,
    }
}

fn iprev_result(result: &IprevResult) -> AuthResult {
    match result {
        IprevResult::Pass => AuthResult::Pass,
        IprevResult::Fail(_) => AuthResult::Fail,
        IprevResult::TempError(_) => AuthResult::TempError,
        IprevResult::PermError(_) => AuthResult::PermError,
        IprevResult::None => AuthResult::None,
    }
}

fn reason(result: &DkimResult) -> Option<String> {
    match result {
        DkimResult::Neutral(e) | DkimResult::Fail(e) | DkimResult::PermError(e) | DkimResult::TempError(e) => {
            Some(e.to_string())
        }
        DkimResult::Pass | DkimResult::None => None,
    }
}
