//! Enhanced Filtering for Connectors (skip listing, spec 7): when mail reaches
//! us through a third-party filter, an appliance or an on-premises server, the
//! connecting IP is not the sender. Walking the `Received:` chain from the
//! newest hop, skipping the connecting hop (`ef_skip_last_ip`), listed hops
//! (`ef_skip_ips`) and private ones (RFC 1918), the first remaining public
//! address is the original internet sender, which filtering then judges.

use std::net::IpAddr;

use mailflow_events::verdicts::Header;

use crate::config::{InboundConnectorConfig, IpNet};

/// Header stamped when skip listing found the original sender (spec 7.4).
pub const SKIP_LISTED_SENDER: &str = "X-MS-Exchange-SkipListedInternetSender";
/// Header stamped when, in addition, the recipients matched `ef_users` (spec 7.4).
pub const EXTERNAL_ORIGINAL_SENDER: &str = "X-MS-Exchange-ExternalOriginalInternetSender";

/// One hop of the `Received:` chain: the address in brackets after `from`,
/// and the name the hop gave (HELO).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    /// Address of the sending side of the hop.
    pub ip: IpAddr,
    /// The `from` name (HELO), if any.
    pub name: Option<String>,
}

/// The original sender found by skip listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginalSender {
    /// Its address.
    pub ip: IpAddr,
    /// The name it gave.
    pub name: Option<String>,
    /// Whether every recipient matched `ef_users` (or the list is empty).
    pub users_matched: bool,
}

/// The `Received:` hops of the header section, newest first.
pub fn hops(content: &[u8]) -> Vec<Hop> {
    let header_end = memchr::memmem::find(content, b"\r\n\r\n").unwrap_or(content.len());
    let header = String::from_utf8_lossy(&content[..header_end]);
    // Unfold, then take each Received field.
    let unfolded = header.replace("\r\n\t", " ").replace("\r\n ", " ");
    unfolded
        .split("\r\n")
        .filter_map(|line| {
            let value = line.get(..9).filter(|name| name.eq_ignore_ascii_case("received:")).map(|_| &line[9..])?;
            let from = value.trim_start().strip_prefix("from ")?;
            let name = from.split_whitespace().next().map(str::to_string);
            // The first bracketed literal in the `from` clause, before `by`.
            let clause = from.split(" by ").next().unwrap_or(from);
            let open = clause.find('[')?;
            let close = clause[open..].find(']')? + open;
            let literal = clause[open + 1..close].trim_start_matches("IPv6:");
            Some(Hop { ip: literal.parse().ok()?, name })
        })
        .collect()
}

/// RFC 1918 private IPv4 (and their IPv4-mapped forms): always skipped.
fn is_private(ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        other => other,
    };
    matches!(ip, IpAddr::V4(v4) if v4.is_private())
}

/// The original internet sender of a message that came through `connector`,
/// or `None` when Enhanced Filtering is off or finds no public hop.
pub fn original_sender(
    connector: &InboundConnectorConfig,
    content: &[u8],
    recipients: &[String],
) -> Option<OriginalSender> {
    if !connector.ef_skip_last_ip && connector.ef_skip_ips.is_empty() {
        return None;
    }
    let users_matched = connector.ef_users.is_empty()
        || recipients.iter().all(|r| connector.ef_users.iter().any(|u| u.eq_ignore_ascii_case(r)));
    if !users_matched {
        // Spec 7.2: not every recipient is covered: normal filtering for all.
        return None;
    }
    let listed = |ip: IpAddr| connector.ef_skip_ips.iter().any(|net: &IpNet| net.contains(ip));
    let mut chain = hops(content).into_iter();
    if connector.ef_skip_last_ip {
        // Our own Received: header records the connecting hop.
        chain.next();
    }
    chain.find(|hop| !listed(hop.ip) && !is_private(hop.ip) && !hop.ip.is_loopback()).map(|hop| OriginalSender {
        ip: hop.ip,
        name: hop.name,
        users_matched,
    })
}

/// The headers of spec 7.4 for a found original sender.
pub fn headers(sender: &OriginalSender, connector: &InboundConnectorConfig) -> Vec<Header> {
    let value = format!("ip=[{}];domain={}", sender.ip, sender.name.as_deref().unwrap_or("unknown"));
    let mut headers = vec![Header { name: SKIP_LISTED_SENDER.to_string(), value: value.clone() }];
    if sender.users_matched && !connector.ef_users.is_empty() {
        headers.push(Header { name: EXTERNAL_ORIGINAL_SENDER.to_string(), value });
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connector(toml_text: &str) -> InboundConnectorConfig {
        toml::from_str(&format!("name = \"filter\"\nkind = \"partner\"\nsender_domains = [\"*\"]\n{toml_text}"))
            .expect("connector")
    }

    const CHAIN: &[u8] = b"Received: from appliance.contoso.com (appliance.contoso.com [203.0.113.10])\r\n\tby mx.contoso.test (mailflow) with ESMTP id 1; Mon, 23 Nov 2026 00:00:00 +0000\r\n\
Received: from relay2.internal (unknown [192.168.1.20]) by appliance.contoso.com; Mon, 23 Nov 2026 00:00:00 +0000\r\n\
Received: from relay1.internal ([10.1.2.3]) by relay2.internal; Mon, 23 Nov 2026 00:00:00 +0000\r\n\
Received: from scanner.thirdparty.example (scanner.thirdparty.example [198.51.100.77])\r\n by relay1.internal; Mon, 23 Nov 2026 00:00:00 +0000\r\n\
Received: from mail.sender.example (mail.sender.example [192.0.2.25]) by scanner.thirdparty.example; Mon, 23 Nov 2026 00:00:00 +0000\r\n\
Subject: hi\r\n\r\nReceived: from body.example ([1.2.3.4])\r\n";

    #[test]
    fn the_chain_is_read_newest_first_from_the_header_only() {
        let chain = hops(CHAIN);
        let ips: Vec<String> = chain.iter().map(|h| h.ip.to_string()).collect();
        assert_eq!(ips, ["203.0.113.10", "192.168.1.20", "10.1.2.3", "198.51.100.77", "192.0.2.25"]);
        assert_eq!(chain[0].name.as_deref(), Some("appliance.contoso.com"));
    }

    #[test]
    fn two_private_one_skip_listed_and_one_public_hop_choose_the_public_one() {
        // Spec 7.6 T.
        let ef = connector("ef_skip_last_ip = true\nef_skip_ips = [\"198.51.100.0/24\"]\n");
        let sender = original_sender(&ef, CHAIN, &["alice@contoso.com".into()]).expect("found");
        assert_eq!(sender.ip.to_string(), "192.0.2.25");
        assert_eq!(sender.name.as_deref(), Some("mail.sender.example"));
        let stamped = headers(&sender, &ef);
        assert_eq!(stamped[0].name, SKIP_LISTED_SENDER);
        assert_eq!(stamped[0].value, "ip=[192.0.2.25];domain=mail.sender.example");
        assert_eq!(stamped.len(), 1, "no ef_users, no ExternalOriginalInternetSender");
    }

    #[test]
    fn enhanced_filtering_is_off_by_default_and_limited_to_ef_users() {
        assert!(original_sender(&connector(""), CHAIN, &[]).is_none(), "off when nothing is configured");
        let ef = connector(
            "ef_skip_last_ip = true\nef_skip_ips = [\"198.51.100.77\"]\nef_users = [\"alice@contoso.com\"]\n",
        );
        let only_alice = original_sender(&ef, CHAIN, &["alice@contoso.com".into()]).expect("all listed");
        assert_eq!(headers(&only_alice, &ef).len(), 2, "ExternalOriginalInternetSender too");
        assert!(original_sender(&ef, CHAIN, &["alice@contoso.com".into(), "bob@contoso.com".into()]).is_none());
    }
}
