//! Inbound connectors: how a client or a sender domain selects one, and what
//! a restricting partner connector admits.

use std::net::IpAddr;

use mailflow_events::received::ConnectorKind;

use crate::config::{InboundConnectorConfig, InboundConnectorKind, IpNet};

/// An enabled inbound connector.
#[derive(Debug, Clone)]
pub struct InboundConnector {
    /// Name, recorded in events.
    pub name: String,
    /// Partner or on-premises.
    pub kind: ConnectorKind,
    sender_domains: Vec<String>,
    sender_ips: Vec<IpNet>,
    restrict_to_ips: bool,
    require_tls: bool,
    certificate_name: Option<String>,
    restrict_to_certificate: bool,
}

impl From<&InboundConnectorConfig> for InboundConnector {
    fn from(config: &InboundConnectorConfig) -> Self {
        Self {
            name: config.name.clone(),
            kind: match config.kind {
                InboundConnectorKind::Partner => ConnectorKind::Partner,
                InboundConnectorKind::OnPremises => ConnectorKind::OnPremises,
            },
            sender_domains: config.sender_domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
            sender_ips: config.sender_ip_addresses.clone(),
            restrict_to_ips: config.restrict_domains_to_ip_addresses,
            require_tls: config.require_tls,
            certificate_name: config.tls_sender_certificate_name.as_ref().map(|n| n.to_ascii_lowercase()),
            restrict_to_certificate: config.restrict_domains_to_certificate,
        }
    }
}

impl InboundConnector {
    /// Whether `ip` is one of the connector's sender addresses.
    pub fn matches_ip(&self, ip: IpAddr) -> bool {
        self.sender_ips.iter().any(|net| net.contains(ip))
    }

    /// Whether the connector is scoped to `domain` (`*`, `*.parent` or exact).
    pub fn governs_sender(&self, domain: &str) -> bool {
        let domain = domain.to_ascii_lowercase();
        self.sender_domains.iter().any(|pattern| match pattern.strip_prefix("*.") {
            _ if pattern == "*" => true,
            Some(parent) => super::domains::is_subdomain(&domain, parent),
            None => *pattern == domain,
        })
    }

    /// Whether a client certificate carrying `names` identifies this connector.
    pub fn matches_certificate(&self, names: &[String]) -> bool {
        let Some(pattern) = &self.certificate_name else { return false };
        names.iter().any(|name| name_matches(pattern, &name.to_ascii_lowercase()))
    }

    /// Whether mail from a governed domain may come from this source (spec 4.3):
    /// its address, TLS and client certificate names.
    pub fn admits(&self, ip: IpAddr, tls: bool, certificate_names: &[String]) -> bool {
        (!self.restrict_to_ips || self.matches_ip(ip))
            && (!self.require_tls || tls)
            && (!self.restrict_to_certificate || self.matches_certificate(certificate_names))
    }
}

/// `*.contoso.com` matches one or more labels before `contoso.com`; anything else matches exactly.
pub fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(parent) => {
            name.len() > parent.len() + 1 && name.ends_with(parent) && name[..name.len() - parent.len()].ends_with('.')
        }
        None => pattern == name,
    }
}
