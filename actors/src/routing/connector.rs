//! Outbound connectors as routing sees them: which one serves a recipient
//! domain (spec 6.1, 6.2, 6.6) and where its smart hosts are (spec 6.3).

use crate::config::{InboundConnectorKind, OutboundConnectorConfig, TlsSettings};

/// A next hop named by a connector: `host`, `host:port`, `ip` or `[ip]:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmartHost {
    /// Host name or IP address (without brackets).
    pub host: String,
    /// Port; 25 when not given.
    pub port: u16,
}

impl SmartHost {
    /// Parses a smart host entry; `None` when it is not one.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (ip, after) = rest.split_once(']')?;
            ip.parse::<std::net::IpAddr>().ok()?;
            let port = match after.strip_prefix(':') {
                Some(port) => port.parse().ok()?,
                None if after.is_empty() => 25,
                None => return None,
            };
            (ip.to_string(), port)
        } else if text.parse::<std::net::IpAddr>().is_ok() {
            (text.to_string(), 25)
        } else {
            match text.rsplit_once(':') {
                Some((host, port)) => (host.to_string(), port.parse().ok()?),
                None => (text.to_string(), 25),
            }
        };
        let valid = !host.is_empty()
            && host.len() <= 253
            && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'));
        (valid && port != 0).then_some(SmartHost { host: host.to_ascii_lowercase(), port })
    }
}

/// An enabled outbound connector, normalised.
#[derive(Debug, Clone)]
pub struct OutboundConnector {
    /// Name as configured.
    pub name: String,
    /// Partner or on-premises.
    pub kind: InboundConnectorKind,
    /// Recipient domains, lower case.
    pub recipient_domains: Vec<String>,
    /// Serves our accepted domains (on-premises).
    pub all_accepted_domains: bool,
    /// Smart hosts in order; empty: MX of the recipient domain.
    pub smart_hosts: Vec<SmartHost>,
    /// TLS to the next hop.
    pub tls: TlsSettings,
    /// Certificate name for domain validation.
    pub tls_domain: Option<String>,
    /// Only a mail flow rule routes to it.
    pub rule_scoped: bool,
    /// Centralized mail transport.
    pub route_all_via_on_premises: bool,
}

impl From<&OutboundConnectorConfig> for OutboundConnector {
    fn from(config: &OutboundConnectorConfig) -> Self {
        Self {
            name: config.name.clone(),
            kind: config.kind,
            recipient_domains: config.recipient_domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
            all_accepted_domains: config.all_accepted_domains,
            smart_hosts: config.smart_hosts.iter().filter_map(|h| SmartHost::parse(h)).collect(),
            tls: config.tls_settings,
            tls_domain: config.tls_domain.clone(),
            rule_scoped: config.is_transport_rule_scoped,
            route_all_via_on_premises: config.route_all_messages_via_on_premises,
        }
    }
}

impl OutboundConnector {
    /// Whether the connector's scope covers recipients of `domain` (its
    /// recipient domains, or our accepted domains when `accepted` and it
    /// serves them), whether or not normal selection would pick it.
    pub fn serves(&self, domain: &str, accepted: bool) -> bool {
        specificity(self, &domain.trim_end_matches('.').to_ascii_lowercase(), accepted).is_some()
    }
}

/// How well a connector's scope covers a domain; larger is more specific.
/// Spec 6.1 [P]: exact > wildcard (longest parent first) > all accepted domains > `*`.
fn specificity(connector: &OutboundConnector, domain: &str, accepted: bool) -> Option<usize> {
    let mut best = None;
    for scope in &connector.recipient_domains {
        let score = if scope == domain {
            Some(usize::MAX)
        } else if scope == "*" {
            Some(0)
        } else if let Some(parent) = scope.strip_prefix("*.") {
            crate::policy::is_within(domain, parent).then_some(2 + parent.len())
        } else {
            None
        };
        best = best.max(score);
    }
    if accepted && connector.all_accepted_domains {
        best = best.max(Some(1));
    }
    best
}

/// The connector that serves `domain` in normal selection: rule-scoped
/// connectors never do (spec 6.2). `accepted`: the domain is one of ours.
/// `kind`: only connectors of this kind, when given.
pub fn select<'a>(
    connectors: &'a [OutboundConnector],
    domain: &str,
    accepted: bool,
    kind: Option<InboundConnectorKind>,
) -> Option<&'a OutboundConnector> {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    connectors
        .iter()
        .filter(|c| !c.rule_scoped && kind.is_none_or(|k| c.kind == k))
        .filter_map(|c| specificity(c, &domain, accepted).map(|s| (s, c)))
        // The first listed wins a tie: `max_by_key` keeps the last, so compare reversed positions.
        .enumerate()
        .max_by_key(|(index, (score, _))| (*score, usize::MAX - index))
        .map(|(_, (_, c))| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connector(name: &str, domains: &[&str], all_accepted: bool) -> OutboundConnector {
        OutboundConnector {
            name: name.to_string(),
            kind: InboundConnectorKind::OnPremises,
            recipient_domains: domains.iter().map(|d| d.to_string()).collect(),
            all_accepted_domains: all_accepted,
            smart_hosts: vec![],
            tls: TlsSettings::Opportunistic,
            tls_domain: None,
            rule_scoped: false,
            route_all_via_on_premises: false,
        }
    }

    #[test]
    fn the_most_specific_connector_wins_as_in_the_worked_example_of_spec_6_1() {
        // C1 = all accepted domains, C2 = contoso.com, C3 = *.contoso.com.
        let connectors = [
            connector("C1", &[], true),
            connector("C2", &["contoso.com"], false),
            connector("C3", &["*.contoso.com"], false),
        ];
        let pick = |domain: &str, accepted: bool| select(&connectors, domain, accepted, None).map(|c| c.name.as_str());
        assert_eq!(pick("fabrikam.com", true), Some("C1"));
        assert_eq!(pick("contoso.com", true), Some("C2"));
        assert_eq!(pick("sales.contoso.com", true), Some("C3"));
        // Outside the organisation, "all accepted domains" does not apply.
        assert_eq!(pick("fabrikam.com", false), None);
    }

    #[test]
    fn rule_scoped_connectors_are_skipped_in_normal_selection() {
        let mut scoped = connector("scoped", &["contoso.com"], false);
        scoped.rule_scoped = true;
        let connectors = [scoped, connector("any", &["*"], false)];
        assert_eq!(select(&connectors, "contoso.com", false, None).map(|c| c.name.as_str()), Some("any"));
    }

    #[test]
    fn a_longer_wildcard_parent_is_more_specific() {
        let connectors =
            [connector("wide", &["*.contoso.com"], false), connector("narrow", &["*.eu.contoso.com"], false)];
        assert_eq!(select(&connectors, "mail.eu.contoso.com", false, None).map(|c| c.name.as_str()), Some("narrow"));
        assert_eq!(select(&connectors, "mail.us.contoso.com", false, None).map(|c| c.name.as_str()), Some("wide"));
    }

    #[test]
    fn smart_hosts_parse_names_addresses_and_ports() {
        assert_eq!(SmartHost::parse("mail.contoso.com"), Some(SmartHost { host: "mail.contoso.com".into(), port: 25 }));
        assert_eq!(
            SmartHost::parse("mail.contoso.com:2525"),
            Some(SmartHost { host: "mail.contoso.com".into(), port: 2525 })
        );
        assert_eq!(SmartHost::parse("192.0.2.7"), Some(SmartHost { host: "192.0.2.7".into(), port: 25 }));
        assert_eq!(SmartHost::parse("[2001:db8::1]:26"), Some(SmartHost { host: "2001:db8::1".into(), port: 26 }));
        assert_eq!(SmartHost::parse("2001:db8::1"), Some(SmartHost { host: "2001:db8::1".into(), port: 25 }));
        assert_eq!(SmartHost::parse("bad host"), None);
        assert_eq!(SmartHost::parse("host:0"), None);
        assert_eq!(SmartHost::parse("[::1]x"), None);
    }
}
