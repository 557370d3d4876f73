//! Checks EOP makes inside the SMTP session, before the reply to the end of
//! data: for anonymous IPv6 mail, SPF or DKIM must pass (spec 3.2b), else
//! `450 4.7.26`. The results travel in `MessageReceived` (`inline_checks`) so
//! that the verdict role does not repeat them.

use std::net::IpAddr;

use mail_auth::spf::verify::SpfParameters;
use mail_auth::{AuthenticatedMessage, MessageAuthenticator};
use mailflow_events::verdicts::{AuthResult, Authentication, DkimCheck, SpfCheck};

use crate::verdict::auth::{dkim_result, reason, spf_result};

/// SPF of the MAIL FROM identity (the HELO name for `<>`) and every DKIM signature.
pub async fn authenticate(
    authenticator: &MessageAuthenticator,
    ip: IpAddr,
    helo: &str,
    hostname: &str,
    mail_from: &str,
    content: &[u8],
) -> Authentication {
    let spf = authenticator.verify_spf(SpfParameters::verify_mail_from(ip, helo, hostname, mail_from)).await;
    let domain = mail_from.rsplit_once('@').map_or(helo, |(_, d)| d).to_string();
    let spf = SpfCheck { result: spf_result(spf.result()), domain, client_ip: ip.to_string() };
    let dkim = match AuthenticatedMessage::parse(content) {
        Some(message) => authenticator
            .verify_dkim(&message)
            .await
            .iter()
            .map(|output| DkimCheck {
                result: dkim_result(output.result()),
                domain: output.signature().map(|s| s.d.clone()).unwrap_or_default(),
                selector: output.signature().map(|s| s.s.clone()).unwrap_or_default(),
                reason: reason(output.result()),
            })
            .collect(),
        None => Vec::new(),
    };
    Authentication { spf: Some(spf), dkim, ..Authentication::default() }
}

/// Spec 3.2b: SPF **or** DKIM passes.
pub fn passes_spf_or_dkim(authentication: &Authentication) -> bool {
    authentication.spf.as_ref().is_some_and(|spf| spf.result == AuthResult::Pass)
        || authentication.dkim.iter().any(|dkim| dkim.result == AuthResult::Pass)
}
