//! Policy decisions, without sockets: the DBEB table of spec 2.4, relay
//! control (3.8, 4.7, 4.8), partner restrictions (4.3) and anonymous IPv6 (3.2).

use std::net::IpAddr;

use mailflow_events::received::RejectReason;

use super::*;
use crate::config::Config;

fn policy() -> InboundPolicy {
    let config: Config = toml::from_str(
        r#"
        [[accepted_domains]]
        name = "contoso.com"
        type = "authoritative"
        default = true
        allow_anonymous_ipv6 = true

        [[accepted_domains]]
        name = "fabrikam.com"
        type = "internal_relay"
        match_subdomains = true

        [[accepted_domains]]
        name = "*.tailspin.com"

        [[directory.recipients]]
        address = "alice@contoso.com"
        proxy_addresses = ["a.liddell@contoso.com", "alice@fabrikam.com"]

        [[inbound_connectors]]
        name = "onprem"
        kind = "on_premises"
        sender_ip_addresses = ["192.0.2.0/24"]

        [[inbound_connectors]]
        name = "onprem-cert"
        kind = "on_premises"
        tls_sender_certificate_name = "*.contoso.com"

        [[inbound_connectors]]
        name = "partner-cert"
        kind = "partner"
        sender_domains = ["tailspin.example"]
        tls_sender_certificate_name = "relay.tailspin.example"
        restrict_domains_to_certificate = true
        require_tls = true

        [server.tls]
        certificate = "unused.pem"
        key = "unused.pem"
        client_ca = "unused-ca.pem"

        [[inbound_connectors]]
        name = "partner"
        kind = "partner"
        sender_domains = ["woodgrove.com"]
        sender_ip_addresses = ["203.0.113.0/24"]
        restrict_domains_to_ip_addresses = true
        "#,
    )
    .expect("test config parses");
    config.validate().expect("test config is valid");
    InboundPolicy::new(&config)
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("ip")
}

fn anonymous(ip_text: &str, sender_domain: &'static str) -> ClientContext<'static> {
    ClientContext {
        ip: ip(ip_text),
        tls: false,
        authenticated_as: None,
        connector: None,
        has_ptr: None,
        sender_domain,
        certificate_names: &[],
    }
}

fn accepted(domain: &str) -> RecipientDecision {
    RecipientDecision::Accept { accepted_domain: Some(domain.to_string()) }
}

#[test]
fn dbeb_table_authoritative_and_internal_relay_by_known_unknown_alias_primary() {
    // Spec 2.4 T: Authoritative/InternalRelay × known/unknown × alias/primary.
    let policy = policy();
    let client = anonymous("198.51.100.7", "sender.example");
    let denied = RecipientDecision::Reject(Reply::AccessDenied, RejectReason::UnknownRecipient);
    let table = [
        ("alice@contoso.com", accepted("contoso.com")), // authoritative, known, primary
        ("A.Liddell@Contoso.com", accepted("contoso.com")), // authoritative, known, alias (any case)
        ("nobody@contoso.com", denied.clone()),         // authoritative, unknown
        ("alice@fabrikam.com", accepted("fabrikam.com")), // internal relay, known (proxy of alice)
        ("onprem-only@fabrikam.com", accepted("fabrikam.com")), // internal relay, unknown: relayed on-prem
        ("x@sales.fabrikam.com", accepted("fabrikam.com")), // match_subdomains
        ("nobody@sales.tailspin.com", denied.clone()),  // *.domain is authoritative: DBEB applies
    ];
    for (address, expected) in table {
        assert_eq!(policy.check_recipient(&client, address), expected, "{address}");
    }
    let reply = Reply::AccessDenied.render();
    assert_eq!(reply, "550 5.4.1 Recipient address rejected: Access denied\r\n");
}

#[test]
fn an_anonymous_client_cannot_relay_to_a_domain_that_is_not_accepted() {
    // Spec 3.8: no open relay; 4.8 [P]: 550 5.4.1 Relay Access Denied.
    let policy = policy();
    for address in ["victim@example.net", "t%example.net@[127.0.0.1]", "user@[127.0.0.1]", "user@"] {
        let decision = policy.check_recipient(&anonymous("198.51.100.7", "contoso.com"), address);
        assert_eq!(decision, RecipientDecision::Reject(Reply::RelayDenied, RejectReason::RelayDenied), "{address}");
    }
}

#[test]
fn an_on_premises_connector_relays_only_for_accepted_sender_domains() {
    // Spec 4.7 (b)(i) and 4.8: 550 5.7.64 TenantAttribution otherwise.
    let policy = policy();
    let connector = policy.on_premises_connector(ip("192.0.2.10")).expect("identified by IP");
    let mut client = anonymous("192.0.2.10", "contoso.com");
    client.connector = Some(connector);
    assert_eq!(
        policy.check_recipient(&client, "someone@example.net"),
        RecipientDecision::Accept { accepted_domain: None }
    );
    client.sender_domain = "notours.example";
    assert_eq!(
        policy.check_recipient(&client, "someone@example.net"),
        RecipientDecision::Reject(Reply::TenantAttribution, RejectReason::TenantAttribution)
    );
    client.sender_domain = "";
    assert!(matches!(
        policy.check_recipient(&client, "someone@example.net"),
        RecipientDecision::Reject(Reply::TenantAttribution, _)
    ));
    assert!(policy.on_premises_connector(ip("192.0.3.10")).is_none());
}

#[test]
fn an_authenticated_client_may_relay() {
    let policy = policy();
    let mut client = anonymous("198.51.100.7", "contoso.com");
    client.authenticated_as = Some("alice@contoso.com");
    assert_eq!(
        policy.check_recipient(&client, "friend@example.net"),
        RecipientDecision::Accept { accepted_domain: None }
    );
}

#[test]
fn a_restricting_partner_connector_refuses_other_source_addresses() {
    // Spec 4.3 T: restrict to 203.0.113.0/24: 198.51.100.1 gets 550 5.7.51, 203.0.113.5 is accepted.
    let policy = policy();
    let outside = anonymous("198.51.100.1", "woodgrove.com");
    assert_eq!(
        policy.check_recipient(&outside, "alice@contoso.com"),
        RecipientDecision::Reject(Reply::PartnerRestricted, RejectReason::TenantAttribution)
    );
    assert!(Reply::PartnerRestricted.render().starts_with("550 5.7.51 TenantInboundAttribution;"));
    let inside = anonymous("203.0.113.5", "woodgrove.com");
    assert_eq!(policy.check_recipient(&inside, "alice@contoso.com"), accepted("contoso.com"));
    // Senders of other domains are not governed by the connector.
    assert_eq!(
        policy.check_recipient(&anonymous("198.51.100.1", "other.example"), "alice@contoso.com"),
        accepted("contoso.com")
    );
}

#[test]
fn anonymous_ipv6_follows_the_domain_opt_in_and_needs_a_ptr() {
    // Spec 3.2: not opted in → 550 5.2.1; opted in without PTR → 450 4.7.25.
    let policy = policy();
    let mut client = anonymous("2001:db8::25", "sender.example");
    assert_eq!(
        policy.check_recipient(&client, "x@fabrikam.com"),
        RecipientDecision::Reject(
            Reply::Ipv6NotAccepted { domain: "fabrikam.com".into() },
            RejectReason::Ipv6NotEnabled
        )
    );
    client.has_ptr = Some(false);
    assert_eq!(
        policy.check_recipient(&client, "alice@contoso.com"),
        RecipientDecision::Reject(Reply::Ipv6NoPtr { ip: "2001:db8::25".into() }, RejectReason::Ipv6NoPtr)
    );
    client.has_ptr = Some(true);
    assert_eq!(policy.check_recipient(&client, "alice@contoso.com"), accepted("contoso.com"));
    // IPv4-mapped addresses are IPv4.
    let mapped = anonymous("::ffff:198.51.100.7", "sender.example");
    assert_eq!(policy.check_recipient(&mapped, "x@fabrikam.com"), accepted("fabrikam.com"));
}

#[test]
fn a_certificate_identified_on_premises_connector_may_relay_for_other_sender_domains() {
    // Spec 4.7 (b)(ii): NDRs from <>, sending as other domains, forwarding.
    let policy = policy();
    let names = vec!["mail.contoso.com".to_string()];
    let connector = policy.on_premises_connector_by_certificate(&names).expect("identified by certificate");
    assert_eq!(connector.name, "onprem-cert");
    let mut client = anonymous("198.51.100.9", "");
    client.connector = Some(connector);
    client.certificate_names = &names;
    assert_eq!(
        policy.check_recipient(&client, "someone@example.net"),
        RecipientDecision::Accept { accepted_domain: None }
    );
    client.sender_domain = "fabrikam-partner.example";
    assert_eq!(
        policy.check_recipient(&client, "someone@example.net"),
        RecipientDecision::Accept { accepted_domain: None }
    );
    // A certificate for a name outside the pattern identifies nothing.
    assert!(policy.on_premises_connector_by_certificate(&["contoso.com.evil.example".to_string()]).is_none());
    assert!(policy.on_premises_connector_by_certificate(&["contoso.com".to_string()]).is_none(), "*.x needs a label");
}

#[test]
fn a_partner_restricted_to_a_certificate_refuses_mail_without_it() {
    // Spec 4.4: lock-down by certificate and RequireTls.
    let policy = policy();
    let names = vec!["relay.tailspin.example".to_string()];
    let mut client = anonymous("198.51.100.9", "tailspin.example");
    assert_eq!(
        policy.check_recipient(&client, "alice@contoso.com"),
        RecipientDecision::Reject(Reply::PartnerRestricted, RejectReason::TenantAttribution)
    );
    client.tls = true;
    client.certificate_names = &names;
    assert_eq!(policy.check_recipient(&client, "alice@contoso.com"), accepted("contoso.com"));
}

#[test]
fn direct_send_of_our_domain_from_no_connector_is_refused_when_the_organisation_says_so() {
    // Spec 3.9 T: MAIL FROM x@contoso.com from a random IP → 550 5.7.68; through a connector → accepted.
    let mut config: Config = toml::from_str(
        "[organization]\nreject_direct_send = true\n[[accepted_domains]]\nname = \"contoso.com\"\n[[inbound_connectors]]\nname = \"onprem\"\nkind = \"on_premises\"\nsender_ip_addresses = [\"192.0.2.0/24\"]\n",
    )
    .expect("parses");
    let policy = InboundPolicy::new(&config);
    let anonymous_client = anonymous("198.51.100.7", "contoso.com");
    assert_eq!(
        policy.check_sender(&anonymous_client),
        Err((Reply::DirectSendRejected, RejectReason::TenantAttribution))
    );
    assert!(
        Reply::DirectSendRejected.render().starts_with("550 5.7.68 TenantInboundAttribution; Direct Send not allowed")
    );
    let connector = policy.on_premises_connector(ip("192.0.2.1")).expect("connector");
    let mut through_connector = anonymous("192.0.2.1", "contoso.com");
    through_connector.connector = Some(connector);
    assert_eq!(policy.check_sender(&through_connector), Ok(()));
    assert_eq!(
        policy.check_sender(&anonymous("198.51.100.7", "example.net")),
        Ok(()),
        "other domains are not direct send"
    );
    config.organization.reject_direct_send = false;
    assert_eq!(InboundPolicy::new(&config).check_sender(&anonymous_client), Ok(()), "off by default");
}
