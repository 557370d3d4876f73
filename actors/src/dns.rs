//! The DNS resolver every role uses (hickory), pointed at the configured
//! nameservers or the system's.

use std::net::{IpAddr, SocketAddr};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use serde::Deserialize;

/// The IP address of an address-literal domain (`[192.0.2.1]`,
/// `[IPv6:2001:db8::1]`, RFC 5321 §4.1.3); `None` for a domain name or any
/// other literal.
pub fn literal_ip(domain: &str) -> Option<IpAddr> {
    let inner = domain.strip_prefix('[')?.strip_suffix(']')?;
    match inner.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => inner[5..].parse::<std::net::Ipv6Addr>().ok().map(Into::into),
        _ => inner.parse::<std::net::Ipv4Addr>().ok().map(Into::into),
    }
}

/// `[dns]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Nameservers as `ip:port` (UDP and TCP); default: the system's
    /// (`/etc/resolv.conf` and `/etc/hosts`). When set, `/etc/hosts` is not used.
    /// Negative answers are cached for at least 60 s, also when the server sends
    /// no SOA (DMARC asks for names that rarely exist on every message).
    pub nameservers: Vec<SocketAddr>,
    /// How long one query waits for an answer (default 5s).
    #[serde(with = "crate::config::humane")]
    pub timeout: std::time::Duration,
    /// Tries per query and nameserver (default 2).
    pub attempts: usize,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self { nameservers: Vec::new(), timeout: std::time::Duration::from_secs(5), attempts: 2 }
    }
}

/// Why the resolver could not be built.
#[derive(Debug, thiserror::Error)]
#[error("DNS resolver: {0}")]
pub struct DnsSetupError(String);

/// Builds the resolver.
pub fn resolver(config: &DnsConfig) -> Result<TokioResolver, DnsSetupError> {
    let mut builder = if config.nameservers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| DnsSetupError(e.to_string()))?
    } else {
        let servers = config
            .nameservers
            .iter()
            .map(|address| {
                let mut server = NameServerConfig::udp_and_tcp(address.ip());
                for connection in &mut server.connections {
                    connection.port = address.port();
                }
                server
            })
            .collect();
        let mut builder = TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        );
        // Configured nameservers are the whole truth: `/etc/hosts` would answer
        // PTR queries for loopback addresses and mask what DNS says.
        builder.options_mut().use_hosts_file = hickory_resolver::config::ResolveHosts::Never;
        builder
    };
    // A negative answer without an SOA (some servers send none) would
    // otherwise not be cached at all, and DMARC's tree walk asks for names
    // that rarely exist on every message.
    builder.options_mut().negative_min_ttl = Some(std::time::Duration::from_secs(60));
    builder.options_mut().timeout = config.timeout;
    builder.options_mut().attempts = config.attempts.max(1);
    builder.build().map_err(|e| DnsSetupError(e.to_string()))
}

/// The PTR name of `ip`: `Some(name)`, or `None` when there is none (or DNS failed).
pub async fn ptr(resolver: &TokioResolver, ip: IpAddr) -> Option<String> {
    let lookup = resolver.reverse_lookup(ip).await.ok()?;
    lookup.answers().iter().find_map(|record| match &record.data {
        hickory_resolver::proto::rr::RData::PTR(name) => Some(name.to_string().trim_end_matches('.').to_string()),
        _ => None,
    })
}
