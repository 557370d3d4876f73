//! EOP's inbound policy as plain data and pure functions: accepted domains,
//! Directory Based Edge Blocking, relay control and inbound connectors.
//!
//! Built once from the configuration ([`InboundPolicy::new`]) and shared by
//! every session; a configuration reload builds a new one, so a session keeps
//! the policy it started with (spec 4.10: edits apply from the next session).

mod connector;
mod domains;

use std::collections::HashMap;
use std::net::IpAddr;

use mailflow_events::received::{ConnectorKind, InboundConnectorMatch, RejectReason};

use crate::config::{Config, DomainType};
use crate::connection::reply::Reply;
pub use connector::InboundConnector;
pub use domains::{AcceptedDomain, is_subdomain, is_within};

/// Everything the front door decides with, built from the configuration.
#[derive(Debug)]
pub struct InboundPolicy {
    domains: Vec<AcceptedDomain>,
    /// Every primary and proxy address (lowercase) → the recipient's primary address.
    directory: HashMap<String, String>,
    /// Primary address (lowercase) → PHC password hash.
    passwords: HashMap<String, String>,
    connectors: Vec<InboundConnector>,
    reject_direct_send: bool,
    /// `postmaster@<default accepted domain>`: what `RCPT TO:<postmaster>` names.
    postmaster: String,
}

/// What the session knows about its client when a recipient is checked.
#[derive(Debug, Clone)]
pub struct ClientContext<'a> {
    /// The client's address.
    pub ip: IpAddr,
    /// Whether the session runs over TLS.
    pub tls: bool,
    /// The SMTP AUTH identity, if authenticated.
    pub authenticated_as: Option<&'a str>,
    /// The on-premises connector the client was identified by, if any.
    pub connector: Option<&'a InboundConnector>,
    /// Whether the client's IPv6 address has a PTR record (`None`: not looked up / IPv4).
    pub has_ptr: Option<bool>,
    /// The MAIL FROM domain (lowercase; empty for `<>`).
    pub sender_domain: &'a str,
    /// Names of the verified TLS client certificate (SAN DNS names), if any.
    pub certificate_names: &'a [String],
}

impl ClientContext<'_> {
    /// Anonymous: neither authenticated nor identified by a connector.
    pub fn is_anonymous(&self) -> bool {
        self.authenticated_as.is_none() && self.connector.is_none()
    }

    /// The client connected over IPv6 (IPv4-mapped addresses count as IPv4).
    pub fn is_ipv6(&self) -> bool {
        matches!(self.ip, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none())
    }
}

/// The verdict on one RCPT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipientDecision {
    /// Accept; `accepted_domain` is the matched accepted domain, `None` for relay.
    Accept {
        /// Accepted domain the recipient belongs to.
        accepted_domain: Option<String>,
    },
    /// Refuse with this reply, recorded with this reason.
    Reject(Reply, RejectReason),
}

impl InboundPolicy {
    /// Builds the policy from a validated configuration.
    pub fn new(config: &Config) -> Self {
        let mut directory = HashMap::new();
        let mut passwords = HashMap::new();
        for recipient in &config.directory.recipients {
            let primary = recipient.address.to_ascii_lowercase();
            for address in std::iter::once(&recipient.address).chain(&recipient.proxy_addresses) {
                directory.insert(address.to_ascii_lowercase(), primary.clone());
            }
            if let Some(hash) = &recipient.password_hash {
                passwords.insert(primary.clone(), hash.clone());
            }
        }
        Self {
            domains: config.accepted_domains.iter().map(AcceptedDomain::from).collect(),
            directory,
            passwords,
            connectors: config.inbound_connectors.iter().filter(|c| c.enabled).map(InboundConnector::from).collect(),
            reject_direct_send: config.organization.reject_direct_send,
            postmaster: format!("postmaster@{}", config.default_domain()),
        }
    }

    /// The accepted domain `domain` belongs to: exact name first, then the most
    /// specific `*.parent` or match-subdomains parent (spec 2.4a).
    pub fn accepted_domain(&self, domain: &str) -> Option<&AcceptedDomain> {
        domains::lookup(&self.domains, domain)
    }

    /// The on-premises connector that identifies a client by its address (spec 4.2).
    pub fn on_premises_connector(&self, ip: IpAddr) -> Option<&InboundConnector> {
        self.connectors.iter().find(|c| c.kind == ConnectorKind::OnPremises && c.matches_ip(ip))
    }

    /// The on-premises connector that identifies a client by its TLS certificate (spec 4.2).
    pub fn on_premises_connector_by_certificate(&self, names: &[String]) -> Option<&InboundConnector> {
        self.connectors.iter().find(|c| c.kind == ConnectorKind::OnPremises && c.matches_certificate(names))
    }

    /// A partner connector scoped to `sender_domain`, restricting or not (spec 4.3, 4.5).
    pub fn partner_connector(&self, sender_domain: &str) -> Option<&InboundConnector> {
        self.connectors.iter().find(|c| c.kind == ConnectorKind::Partner && c.governs_sender(sender_domain))
    }

    /// Whether `name` is an accepted domain or a subdomain of one
    /// (`mail.contoso.com` for `contoso.com`; a `*.` prefix is ignored).
    pub fn within_accepted_domain(&self, name: &str) -> bool {
        let mut rest = name.trim_start_matches("*.");
        loop {
            if self.accepted_domain(rest).is_some() {
                return true;
            }
            match rest.split_once('.') {
                Some((_, parent)) if parent.contains('.') => rest = parent,
                _ => return false,
            }
        }
    }

    /// The mailbox `RCPT TO:<postmaster>` (no domain) stands for, RFC 5321
    /// §4.1.1.3: the postmaster of the default accepted domain.
    pub fn postmaster(&self) -> &str {
        &self.postmaster
    }

    /// Directory lookup over every proxy address: the recipient's primary address.
    pub fn resolve(&self, address: &str) -> Option<&str> {
        self.directory.get(&address.to_ascii_lowercase()).map(String::as_str)
    }

    /// The stored password hash of the recipient `login` names (any of its addresses).
    pub fn password_hash(&self, login: &str) -> Option<(&str, &str)> {
        let primary = self.resolve(login)?;
        self.passwords.get(primary).map(|hash| (primary, hash.as_str()))
    }

    /// Decides MAIL FROM for direct send (spec 3.9): with `reject_direct_send`,
    /// an anonymous client without a connector may not use one of our domains.
    pub fn check_sender(&self, client: &ClientContext<'_>) -> Result<(), (Reply, RejectReason)> {
        if self.reject_direct_send && client.is_anonymous() && self.accepted_domain(client.sender_domain).is_some() {
            return Err((Reply::DirectSendRejected, RejectReason::TenantAttribution));
        }
        Ok(())
    }

    /// Decides one RCPT TO (spec 2.4, 3.2, 4.3, 4.7, 4.8).
    pub fn check_recipient(&self, client: &ClientContext<'_>, address: &str) -> RecipientDecision {
        use RecipientDecision::Reject;
        let domain = address.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()).unwrap_or_default();
        if let Some(partner) = self.partner_connector(client.sender_domain)
            && client.connector.is_none()
            && client.authenticated_as.is_none()
            && !partner.admits(client.ip, client.tls, client.certificate_names)
        {
            return Reject(Reply::PartnerRestricted, RejectReason::TenantAttribution);
        }
        let Some(accepted) = self.accepted_domain(&domain) else {
            return self.check_relay(client);
        };
        if client.is_anonymous() && client.is_ipv6() {
            if !accepted.allow_anonymous_ipv6 {
                return Reject(Reply::Ipv6NotAccepted { domain: domain.clone() }, RejectReason::Ipv6NotEnabled);
            }
            if client.has_ptr != Some(true) {
                return Reject(Reply::Ipv6NoPtr { ip: client.ip.to_string() }, RejectReason::Ipv6NoPtr);
            }
        }
        match accepted.domain_type {
            DomainType::Authoritative if self.resolve(address).is_none() => {
                Reject(Reply::AccessDenied, RejectReason::UnknownRecipient)
            }
            _ => RecipientDecision::Accept { accepted_domain: Some(accepted.name.clone()) },
        }
    }

    /// A recipient outside every accepted domain: relay only for authenticated
    /// clients and for on-premises connectors sending from an accepted domain.
    fn check_relay(&self, client: &ClientContext<'_>) -> RecipientDecision {
        use RecipientDecision::{Accept, Reject};
        if client.authenticated_as.is_some() {
            return Accept { accepted_domain: None };
        }
        match client.connector {
            Some(connector) if connector.kind == ConnectorKind::OnPremises => {
                // Spec 4.7 (b): (i) the sender domain is one of ours, or (ii) the
                // connector is certificate-based and the certificate names one of
                // our domains (NDRs from `<>`, sending as other domains, forwarding).
                let sender_is_ours = self.accepted_domain(client.sender_domain).is_some();
                let certificate_is_ours = connector.matches_certificate(client.certificate_names)
                    && client.certificate_names.iter().any(|name| self.within_accepted_domain(name));
                if sender_is_ours || certificate_is_ours {
                    Accept { accepted_domain: None }
                } else {
                    Reject(Reply::TenantAttribution, RejectReason::TenantAttribution)
                }
            }
            _ => Reject(Reply::RelayDenied, RejectReason::RelayDenied),
        }
    }
}

impl InboundConnector {
    /// How the connector is recorded in events.
    pub fn to_event(&self) -> InboundConnectorMatch {
        InboundConnectorMatch { name: self.name.clone(), kind: self.kind }
    }
}

#[cfg(test)]
mod tests;
