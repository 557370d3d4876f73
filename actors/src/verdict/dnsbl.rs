//! DNS blocklists: is the client IP listed in a configured zone? An address
//! is listed when `<reversed address>.<zone>` has an A record in 127.0.0.0/8
//! (RFC 5782); other answers (and failures) are not listings.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_names_follow_rfc_5782() {
        assert_eq!(query_name("192.0.2.99".parse().expect("ip"), "bl.example"), "99.2.0.192.bl.example.");
        let v6 = query_name("2001:db8:1:2:3:4:567:89ab".parse().expect("ip"), "bl.example.");
        assert_eq!(v6, "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.bl.example.");
    }
}
