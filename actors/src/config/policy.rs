//! EOP's inbound objects: accepted domains, the directory and inbound connectors.

use std::net::IpAddr;

use serde::Deserialize;

/// `[[accepted_domains]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcceptedDomainConfig {
    /// The domain; `*.contoso.com` means the domain's subdomains too.
    pub name: String,
    /// `authoritative` (default: unknown recipients are refused at RCPT) or
    /// `internal_relay` (unknown recipients are relayed to on-premises).
    #[serde(default)]
    pub r#type: DomainType,
    /// Accept any subdomain too; only on `internal_relay` domains.
    #[serde(default)]
    pub match_subdomains: bool,
    /// The default domain (postmaster address); exactly one (default: the first).
    #[serde(default)]
    pub default: bool,
    /// Accept anonymous mail over IPv6 for this domain (default false: `550 5.2.1`).
    #[serde(default)]
    pub allow_anonymous_ipv6: bool,
}

/// Type of an accepted domain.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DomainType {
    /// Every recipient is in the directory; Directory Based Edge Blocking applies.
    #[default]
    Authoritative,
    /// Some recipients live on-premises; unknown ones are relayed there.
    InternalRelay,
}

/// `[directory]`: mail-enabled recipients.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DirectoryConfig {
    /// Recipients.
    pub recipients: Vec<RecipientConfig>,
}

/// `[[directory.recipients]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipientConfig {
    /// Primary SMTP address.
    pub address: String,
    /// Other addresses (aliases) that reach the same recipient.
    #[serde(default)]
    pub proxy_addresses: Vec<String>,
    /// PHC-format password hash for SMTP AUTH (`mailflow hash-password`); none: cannot log in.
    #[serde(default)]
    pub password_hash: Option<String>,
    /// What the recipient is, which decides where its mail goes (default `mailbox`).
    #[serde(default)]
    pub kind: RecipientKind,
    /// `mail_user` and `contact`: the outside address its mail is sent to.
    #[serde(default)]
    pub external_address: Option<String>,
    /// Mailbox forwarding (`ForwardingSmtpAddress`): a copy of every message
    /// goes to this address too. To a remote domain with
    /// `auto_forward_enabled = false` the copy is dropped silently (spec 14.3).
    #[serde(default)]
    pub forward_to: Option<String>,
}

/// Kinds of mail-enabled recipient (spec 2.4b), as routing sees them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecipientKind {
    /// A mailbox in our mailbox store.
    #[default]
    Mailbox,
    /// A mail user: signs in here, mailbox elsewhere (`external_address`).
    MailUser,
    /// A mail contact: an outside address listed in the directory (`external_address`).
    Contact,
    /// A mailbox on the organisation's on-premises server (hybrid): routed
    /// through the on-premises outbound connector.
    OnPremises,
}

/// `[[inbound_connectors]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundConnectorConfig {
    /// Name, recorded in events.
    pub name: String,
    /// `partner` or `on_premises`.
    pub kind: InboundConnectorKind,
    /// Whether the connector is used (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Sender domains the connector governs (partner); `*` is every domain, `*.x` subdomains.
    #[serde(default)]
    pub sender_domains: Vec<String>,
    /// Source addresses: single IPs or CIDR ranges. Identify an on-premises
    /// connector; restrict a partner one when `restrict_domains_to_ip_addresses`.
    #[serde(default)]
    pub sender_ip_addresses: Vec<IpNet>,
    /// Partner: refuse mail from `sender_domains` not sent from `sender_ip_addresses`.
    #[serde(default)]
    pub restrict_domains_to_ip_addresses: bool,
    /// Partner: refuse mail from `sender_domains` not sent over TLS.
    #[serde(default)]
    pub require_tls: bool,
    /// Name the client certificate must carry (`*.contoso.com` allowed):
    /// identifies an on-premises connector; restricts a partner one when
    /// `restrict_domains_to_certificate`. Needs `[server.tls] client_ca`.
    #[serde(default)]
    pub tls_sender_certificate_name: Option<String>,
    /// Partner: refuse mail from `sender_domains` whose TLS client certificate
    /// does not carry `tls_sender_certificate_name`.
    #[serde(default)]
    pub restrict_domains_to_certificate: bool,
    /// Enhanced Filtering (spec 7): skip the connecting hop and filter on the
    /// sender before it (default false).
    #[serde(default)]
    pub ef_skip_last_ip: bool,
    /// Enhanced Filtering: hops to skip (RFC 1918 hops are always skipped once
    /// Enhanced Filtering is on). Empty with `ef_skip_last_ip` false: off.
    #[serde(default)]
    pub ef_skip_ips: Vec<IpNet>,
    /// Enhanced Filtering applies only when every recipient is listed (exact
    /// addresses); empty: every recipient.
    #[serde(default)]
    pub ef_users: Vec<String>,
}

fn yes() -> bool {
    true
}

/// Kind of inbound connector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InboundConnectorKind {
    /// A partner organisation.
    Partner,
    /// The organisation's own on-premises mail servers (may relay).
    OnPremises,
}

/// An IP network in CIDR form (`203.0.113.0/24`, `2001:db8::/32`) or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    /// Network address.
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl IpNet {
    /// Whether `ip` is inside the network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(self.prefix)) };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(self.prefix)) };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for IpNet {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| format!("`{text}` is not an IP address or CIDR range"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => {
                p.trim().parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| format!("bad prefix in `{text}`"))?
            }
            None => max,
        };
        Ok(IpNet { addr, prefix })
    }
}

impl<'de> Deserialize<'de> for IpNet {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_ranges_contain_what_they_should() {
        let net: IpNet = "203.0.113.0/24".parse().expect("valid");
        assert!(net.contains("203.0.113.5".parse().expect("ip")));
        assert!(!net.contains("198.51.100.1".parse().expect("ip")));
        assert!(net.contains("::ffff:203.0.113.9".parse().expect("mapped")));
        let single: IpNet = "2001:db8::1".parse().expect("valid");
        assert!(single.contains("2001:db8::1".parse().expect("ip")));
        assert!(!single.contains("2001:db8::2".parse().expect("ip")));
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
    }
}
