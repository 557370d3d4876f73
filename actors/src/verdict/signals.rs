//! The content signals of one message, gathered for [`super::score`]: its
//! BCL ([`super::bulk`]), its phish signal ([`super::phish`]) and rspamd's
//! answer ([`super::rspamd`]). The I/O they need (URI DNSBL lookups, the
//! rspamd scan) happens here, so that scoring stays a pure function; the
//! message is parsed once for all of them.

use std::net::IpAddr;

use hickory_resolver::TokioResolver;
use mailflow_events::received::{ConnectorKind, Directionality, MessageReceived};
use mailflow_events::verdicts::{Authentication, CompAuth, RspamdScan};

use super::score::{EngineVerdict, PhishSignal};
use super::{AntiSpamConfig, bulk, dnsbl, phish, rspamd};

/// What was found.
#[derive(Debug, Clone, PartialEq)]
pub struct ContentSignals {
    /// Bulk complaint level.
    pub bcl: u8,
    /// The strongest phish signal.
    pub phish: PhishSignal,
    /// The compauth failure of intra-org spoofing, replacing the computed one.
    pub spoof_compauth: Option<CompAuth>,
    /// rspamd's answer (or error), when configured.
    pub rspamd: Option<RspamdScan>,
}

impl ContentSignals {
    /// What rspamd's answer means for the verdict.
    pub fn engine(&self) -> EngineVerdict {
        self.rspamd.as_ref().map_or(EngineVerdict::NoChange, rspamd::verdict_of)
    }
}

/// What gathering needs.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// Our message id (rspamd's `Queue-Id`).
    pub message_id: &'a str,
    /// The accepted message.
    pub received: &'a MessageReceived,
    /// Its content as stored.
    pub content: &'a [u8],
    /// The IP filtering judges (the original sender's under Enhanced Filtering).
    pub ip: IpAddr,
    /// The HELO name that goes with `ip`.
    pub helo: &'a str,
    /// Authentication results.
    pub authentication: &'a Authentication,
}

/// Whether the message came from inside the organisation: authenticated
/// submission, an on-premises connector, or a direction other than inbound.
pub fn internal(received: &MessageReceived) -> bool {
    received.directionality != Directionality::Inbound
        || received.session.authenticated_as.is_some()
        || received.connector.as_ref().is_some_and(|c| c.kind == ConnectorKind::OnPremises)
}

/// Gathers the signals; `ours` says whether a domain is one of our accepted domains.
pub async fn gather(
    config: &AntiSpamConfig,
    resolver: &TokioResolver,
    ours: &dyn Fn(&str) -> bool,
    message: Message<'_>,
) -> ContentSignals {
    let received = message.received;
    let parsed = mail_parser::MessageParser::default().parse(message.content);
    let header_from = received.header_from.as_deref().unwrap_or_default();
    let from_domain = header_from.rsplit_once('@').map_or("", |(_, d)| d);

    let authenticated = bulk::authenticated(message.authentication);
    let marks = parsed
        .as_ref()
        .map(|m| bulk::Marks::from_headers(m.headers_raw(), &config.bulk_marker_headers))
        .unwrap_or_default();
    let domains = bulk::sender_domains(header_from, &received.envelope.mail_from, message.authentication);
    let bcl = bulk::bcl(&marks, authenticated, bulk::reputation(&config.bulk_senders, domains));

    let spoof_compauth =
        phish::intra_org_spoof(message.authentication, from_domain, ours(from_domain), internal(received));
    let hosts = parsed.as_ref().map(phish::link_hosts).unwrap_or_default();
    let phishing_link = phish::phishing_host(&hosts, &config.phish_url_domains).is_some()
        || dnsbl::domain_listed_in(resolver, &hosts, &config.uri_dnsbl_zones).await.is_some();
    let deceptive = !authenticated && parsed.as_ref().and_then(phish::deceptive_link).is_some();
    let phish = if phishing_link {
        PhishSignal::PhishingLink
    } else if deceptive {
        PhishSignal::DeceptiveLink
    } else if spoof_compauth.is_some() {
        PhishSignal::IntraOrgSpoof
    } else {
        PhishSignal::None
    };

    let rspamd = match &config.rspamd {
        Some(rspamd_config) => {
            let ip = message.ip.to_string();
            let recipients: Vec<String> = received.recipients.iter().map(|r| r.address.clone()).collect();
            let request = rspamd::ScanRequest {
                ip: &ip,
                helo: message.helo,
                mail_from: &received.envelope.mail_from,
                recipients: &recipients,
                hostname: received.session.client_hostname.as_deref(),
                queue_id: message.message_id,
                user: received.session.authenticated_as.as_deref(),
            };
            Some(rspamd::scan(rspamd_config, &request, message.content).await)
        }
        None => None,
    };
    ContentSignals { bcl, phish, spoof_compauth, rspamd }
}
