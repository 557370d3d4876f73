//! Next hops of a domain by MX (RFC 5321 §5.1, RFC 7505) and of smart hosts.
//!
//! - an address literal (`[192.0.2.1]`, `[IPv6:2001:db8::1]`) is its own host;
//! - MX records in preference order, equal preferences shuffled;
//! - no MX record: the domain itself is the implicit MX (its A/AAAA);
//! - a null MX (`0 .`): the domain accepts no mail, a permanent failure
//!   `556 5.1.10 Recipient address has null MX` (RFC 7505 §3.2);
//! - the domain does not exist, or has neither MX nor address: permanent,
//!   `550 5.4.4 SMTPSEND.DNS.NonExistentDomain; nonexistent domain`;
//! - a DNS error or timeout: temporary, the destination is deferred with
//!   `451 4.4.0 DNS query failed`.
//!
//! Every host's addresses are tried in turn (IPv6 first, as the resolver orders them).

use std::net::{IpAddr, SocketAddr};

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::RData;
use mailflow_events::received::SmtpReply;
use rand::seq::SliceRandom as _;

use super::client::Hop;

/// Where a domain's mail goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Hops in the order to try them.
    Hops(Vec<Hop>),
    /// The domain takes no mail: fail its recipients with this reply.
    Fail(SmtpReply),
    /// DNS did not answer: defer the destination.
    Defer(String),
}

/// Addresses of `host` as hops on `port`; an IP literal is its own address.
pub async fn host_hops(resolver: &TokioResolver, host: &str, port: u16) -> Result<Vec<Hop>, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![Hop { host: host.to_string(), addr: SocketAddr::new(ip, port) }]);
    }
    match resolver.lookup_ip(format!("{}.", host.trim_end_matches('.'))).await {
        Ok(lookup) => {
            Ok(lookup.iter().map(|ip| Hop { host: host.to_string(), addr: SocketAddr::new(ip, port) }).collect())
        }
        Err(err) if err.is_no_records_found() || err.is_nx_domain() => Ok(Vec::new()),
        Err(err) => Err(err.to_string()),
    }
}

/// The hops of `domain` by MX.
pub async fn resolve(resolver: &TokioResolver, domain: &str, port: u16) -> Resolution {
    // An address literal is its own and only host (RFC 5321 §5.1).
    if let Some(ip) = crate::dns::literal_ip(domain) {
        return Resolution::Hops(vec![Hop { host: ip.to_string(), addr: SocketAddr::new(ip, port) }]);
    }
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let fqdn = format!("{domain}.");
    let mut exchanges: Vec<(u16, String)> = match resolver.mx_lookup(fqdn.as_str()).await {
        Ok(lookup) => lookup
            .answers()
            .iter()
            .filter_map(|record| match &record.data {
                RData::MX(mx) => Some((mx.preference, mx.exchange.to_string())),
                _ => None,
            })
            .collect(),
        Err(err) if err.is_nx_domain() => {
            return Resolution::Fail(SmtpReply::new(
                550,
                "5.4.4",
                "SMTPSEND.DNS.NonExistentDomain; nonexistent domain",
            ));
        }
        Err(err) if err.is_no_records_found() => Vec::new(),
        Err(err) => return Resolution::Defer(format!("4.4.0 DNS query failed: {err}")),
    };
    if exchanges.len() == 1 && exchanges[0].1 == "." {
        return Resolution::Fail(SmtpReply::new(556, "5.1.10", "Recipient address has null MX"));
    }
    // A null MX among others is a misconfiguration; the others still work.
    exchanges.retain(|(_, name)| name != ".");
    if exchanges.is_empty() {
        // RFC 5321 §5.1: the domain itself, when it has an address.
        return match host_hops(resolver, &domain, port).await {
            Ok(hops) if !hops.is_empty() => Resolution::Hops(hops),
            Ok(_) => {
                Resolution::Fail(SmtpReply::new(550, "5.4.4", "SMTPSEND.DNS.NonExistentDomain; nonexistent domain"))
            }
            Err(err) => Resolution::Defer(format!("4.4.0 DNS query failed: {err}")),
        };
    }
    exchanges.shuffle(&mut rand::rng());
    exchanges.sort_by_key(|(preference, _)| *preference); // stable: equal preferences stay shuffled
    let mut hops = Vec::new();
    let mut last_error = None;
    for (_, exchange) in &exchanges {
        let host = exchange.trim_end_matches('.');
        match host_hops(resolver, host, port).await {
            Ok(found) => hops.extend(found),
            Err(err) => last_error = Some(err),
        }
    }
    match (hops.is_empty(), last_error) {
        (false, _) => Resolution::Hops(hops),
        (true, Some(err)) => Resolution::Defer(format!("4.4.0 DNS query failed: {err}")),
        (true, None) => Resolution::Defer("4.4.0 DNS query failed: no MX host has an address".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::{DnsConfig, resolver};

    #[tokio::test]
    async fn an_address_literal_is_its_own_hop_without_a_dns_query() {
        // A nameserver that never answers: the literal must not need one.
        let config = DnsConfig { nameservers: vec!["127.0.0.1:9".parse().expect("addr")], ..DnsConfig::default() };
        let resolver = resolver(&config).expect("resolver");
        let hop = |addr: &str| Hop {
            host: addr.rsplit_once(':').expect("port").0.trim_matches(['[', ']']).into(),
            addr: addr.parse().expect("addr"),
        };
        assert_eq!(resolve(&resolver, "[192.0.2.25]", 2525).await, Resolution::Hops(vec![hop("192.0.2.25:2525")]));
        assert_eq!(
            resolve(&resolver, "[IPv6:2001:db8::25]", 25).await,
            Resolution::Hops(vec![hop("[2001:db8::25]:25")])
        );
    }
}
