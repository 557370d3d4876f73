//! DNS blocklists: is the client IP listed in a configured zone? An address
//! is listed when `<reversed address>.<zone>` has an A record in 127.0.0.0/8
//! (RFC 5782); other answers (and failures) are not listings.
//!
//! Domain blocklists (URI DNSBLs, RFC 5782 §3) answer for the domains of
//! links: `<domain>.<zone>`, asked for a link's host and for its last two
//! labels (what such lists index); `127.255.255.0/24` answers are the lists'
//! error codes (e.g. a refused public resolver), not listings.

use std::net::IpAddr;

use hickory_resolver::TokioResolver;

/// The query name of `ip` in `zone` (nibbles for IPv6, RFC 5782 §2.4).
pub fn query_name(ip: IpAddr, zone: &str) -> String {
    let zone = zone.trim_end_matches('.');
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.{zone}.")
        }
        IpAddr::V6(v6) => {
            let mut name = String::with_capacity(64 + zone.len());
            for byte in v6.octets().iter().rev() {
                name.push_str(&format!("{:x}.{:x}.", byte & 0xf, byte >> 4));
            }
            name.push_str(zone);
            name.push('.');
            name
        }
    }
}

/// The first zone that lists `ip`, if any.
pub async fn listed_in(resolver: &TokioResolver, ip: IpAddr, zones: &[String]) -> Option<String> {
    for zone in zones {
        if let Ok(lookup) = resolver.ipv4_lookup(query_name(ip, zone)).await {
            let listed = lookup
                .answers()
                .iter()
                .any(|record| matches!(&record.data, hickory_resolver::proto::rr::RData::A(a) if a.0.is_loopback()));
            if listed {
                return Some(zone.clone());
            }
        }
    }
    None
}

/// Whether an answer of a domain list is a listing (not an error code).
fn domain_listing(a: std::net::Ipv4Addr) -> bool {
    let [first, second, third, _] = a.octets();
    first == 127 && !(second == 255 && third == 255)
}

/// The names asked of a domain list for a link host: the host and its last
/// two labels; an IP literal as in [`query_name`].
pub fn domain_query_names(host: &str, zone: &str) -> Vec<String> {
    let zone = zone.trim_end_matches('.');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return vec![query_name(ip, zone)];
    }
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let labels: Vec<&str> = host.split('.').collect();
    let mut names = vec![format!("{host}.{zone}.")];
    if labels.len() > 2 {
        names.push(format!("{}.{zone}.", labels[labels.len() - 2..].join(".")));
    }
    names
}

/// The first link host a domain list lists, with the zone that lists it.
pub async fn domain_listed_in(
    resolver: &TokioResolver,
    hosts: &[String],
    zones: &[String],
) -> Option<(String, String)> {
    let mut asked = std::collections::HashSet::new();
    for zone in zones {
        for host in hosts {
            for name in domain_query_names(host, zone) {
                if !asked.insert(name.clone()) {
                    continue;
                }
                if let Ok(lookup) = resolver.ipv4_lookup(name).await {
                    let listed = lookup.answers().iter().any(
                        |record| matches!(&record.data, hickory_resolver::proto::rr::RData::A(a) if domain_listing(a.0)),
                    );
                    if listed {
                        return Some((host.clone(), zone.clone()));
                    }
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_names_follow_rfc_5782() {
        assert_eq!(query_name("192.0.2.99".parse().expect("ip"), "bl.example"), "99.2.0.192.bl.example.");
        let v6 = query_name("2001:db8:1:2:3:4:567:89ab".parse().expect("ip"), "bl.example.");
        assert_eq!(v6, "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.bl.example.");
    }

    #[test]
    fn link_hosts_are_asked_as_host_and_registered_domain() {
        assert_eq!(
            domain_query_names("Login.Evil.example", "dbl.test."),
            ["login.evil.example.dbl.test.", "evil.example.dbl.test."]
        );
        assert_eq!(domain_query_names("evil.example", "dbl.test"), ["evil.example.dbl.test."]);
        assert_eq!(domain_query_names("192.0.2.7", "dbl.test"), ["7.2.0.192.dbl.test."]);
    }

    #[test]
    fn error_codes_of_domain_lists_are_not_listings() {
        assert!(domain_listing("127.0.1.4".parse().expect("ip")));
        assert!(!domain_listing("127.255.255.254".parse().expect("ip")));
        assert!(!domain_listing("10.0.0.1".parse().expect("ip")));
    }
}
