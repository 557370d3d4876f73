//! Accepted domains and how a recipient domain maps to one.

use crate::config::{AcceptedDomainConfig, DomainType};

/// An accepted domain, normalised.
#[derive(Debug, Clone)]
pub struct AcceptedDomain {
    /// Name as configured, lowercase (`contoso.com` or `*.contoso.com`).
    pub name: String,
    /// Authoritative or internal relay.
    pub domain_type: DomainType,
    /// Subdomains match too (internal relay only).
    pub match_subdomains: bool,
    /// Anonymous IPv6 senders are accepted.
    pub allow_anonymous_ipv6: bool,
}

impl From<&AcceptedDomainConfig> for AcceptedDomain {
    fn from(config: &AcceptedDomainConfig) -> Self {
        Self {
            name: config.name.to_ascii_lowercase(),
            domain_type: config.r#type,
            match_subdomains: config.match_subdomains,
            allow_anonymous_ipv6: config.allow_anonymous_ipv6,
        }
    }
}

/// Whether `domain` is a subdomain of `parent` (both lower case, no trailing dot).
pub fn is_subdomain(domain: &str, parent: &str) -> bool {
    domain.strip_suffix(parent).is_some_and(|label| label.ends_with('.'))
}

/// Whether `domain` is `parent` or one of its subdomains.
pub fn is_within(domain: &str, parent: &str) -> bool {
    domain == parent || is_subdomain(domain, parent)
}

/// Exact match wins; otherwise the longest parent that is a `*.parent` entry
/// (the parent itself included) or has match-subdomains on.
pub fn lookup<'a>(domains: &'a [AcceptedDomain], domain: &str) -> Option<&'a AcceptedDomain> {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    if domain.is_empty() || domain.starts_with('[') {
        return None;
    }
    if let Some(exact) = domains.iter().find(|d| d.name == domain) {
        return Some(exact);
    }
    let mut best: Option<(&AcceptedDomain, usize)> = None;
    for candidate in domains {
        let (parent, wildcard) = match candidate.name.strip_prefix("*.") {
            Some(parent) => (parent, true),
            None => (candidate.name.as_str(), false),
        };
        let covers = if wildcard {
            is_within(&domain, parent)
        } else {
            candidate.match_subdomains && is_subdomain(&domain, parent)
        };
        if covers && best.is_none_or(|(_, len)| parent.len() > len) {
            best = Some((candidate, parent.len()));
        }
    }
    best.map(|(domain, _)| domain)
}
