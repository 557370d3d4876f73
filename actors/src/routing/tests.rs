//! Table tests of routing decisions (spec 2.2, 2.7, 6.1, 6.2, 6.6, 8).

use std::sync::Arc;

use chrono::{TimeZone as _, Utc};
use mailflow_events::content::ContentRef;
use mailflow_events::delivery::{DestinationKind, RouteReason};
use mailflow_events::received::{
    ConnectorKind, Directionality, InboundConnectorMatch, MessageReceived, Recipient, SmtpEnvelope, SmtpSession,
};
use mailflow_events::verdicts::{Authentication, PolicyAction, SpamVerdict, VerdictReached};

use super::*;

const CONFIG: &str = r#"
[[accepted_domains]]
name = "contoso.com"
default = true
[[accepted_domains]]
name = "fabrikam.com"
type = "internal_relay"
match_subdomains = true

[[directory.recipients]]
address = "anna@contoso.com"
proxy_addresses = ["a.nna@contoso.com"]
[[directory.recipients]]
address = "olga@contoso.com"
kind = "on_premises"
[[directory.recipients]]
address = "mu@contoso.com"
kind = "mail_user"
external_address = "mu@tailspin.example"
[[directory.recipients]]
address = "petra@fabrikam.com"
[[directory.recipients]]
address = "fwd@contoso.com"
forward_to = "me@home.example"
[[directory.recipients]]
address = "blocked@contoso.com"
forward_to = "me@blocked.example"

[[remote_domains]]
name = "blocked.example"
auto_forward_enabled = false
auto_reply_enabled = false

[[outbound_connectors]]
name = "to-onprem"
kind = "on_premises"
all_accepted_domains = true
smart_hosts = ["onprem.fabrikam.com"]
[[outbound_connectors]]
name = "to-woodgrove"
kind = "partner"
recipient_domains = ["woodgrove.example", "*.woodgrove.example"]
smart_hosts = ["[192.0.2.7]:2525"]
tls_settings = "encryption_only"
[[outbound_connectors]]
name = "new-orleans"
kind = "partner"
is_transport_rule_scoped = true
smart_hosts = ["mx.nola.example"]
"#;

fn router(extra: &str) -> Router {
    let config: Config = toml::from_str(&format!("{CONFIG}{extra}")).expect("test config parses");
    config.validate().expect("test config validates");
    Router::new(&config, Arc::new(InboundPolicy::new(&config)))
}

fn received(recipients: &[&str], connector: Option<ConnectorKind>) -> MessageReceived {
    MessageReceived {
        session: SmtpSession {
            session_id: uuid::Uuid::nil(),
            listener: "smtp".into(),
            client_ip: "198.51.100.9".into(),
            client_port: 40000,
            client_hostname: None,
            server_ip: None,
            helo: Some("client.example".into()),
            tls: None,
            authenticated_as: None,
        },
        envelope: SmtpEnvelope {
            mail_from: "sender@example.net".into(),
            dsn_return: None,
            dsn_envid: None,
            body: Default::default(),
            smtputf8: false,
            declared_size: None,
        },
        recipients: recipients
            .iter()
            .map(|a| Recipient { address: a.to_string(), notify: vec![], orcpt: None, accepted_domain: None })
            .collect(),
        connector: connector.map(|kind| InboundConnectorMatch { name: "c".into(), kind }),
        directionality: Directionality::Inbound,
        content: ContentRef { partition: 0, first_offset: 0, chunks: 1, size: 10, crc32: 0 },
        received_at: Utc.with_ymd_and_hms(2026, 11, 23, 8, 0, 0).single().expect("valid time"),
        internet_message_id: None,
        subject: None,
        header_from: None,
        auto_submitted: None,
        inline_checks: None,
    }
}

fn verdict(recipients: &[&str], action: PolicyAction) -> VerdictReached {
    VerdictReached {
        recipients: recipients.iter().map(|r| r.to_string()).collect(),
        authentication: Authentication::default(),
        original_client_ip: "198.51.100.9".into(),
        scl: 1,
        bcl: 0,
        verdict: SpamVerdict::NotSpam,
        sfv: "NSPM".into(),
        ipv: None,
        category: None,
        rspamd: None,
        action,
        headers_added: vec![],
        headers_removed: vec![],
        subject_prefix: None,
        redirect_to: vec![],
        added_recipients: vec![],
        route_via_connector: None,
        require_tls: false,
        disclaimer: None,
        reject_reply: None,
        rules_matched: vec![],
        received: None,
    }
}

/// (destination key, reason, delivered addresses) of every queued copy.
fn summary(routed: &Routed) -> Vec<(String, RouteReason, Vec<String>)> {
    routed
        .queued
        .iter()
        .map(|q| (q.destination.key(), q.route, q.recipients.iter().map(|r| r.address.clone()).collect()))
        .collect()
}

#[test]
fn every_kind_of_recipient_gets_its_route() {
    let router = router("");
    let rcpts = [
        "a.nna@contoso.com",       // alias of a mailbox → the store, under the primary address
        "olga@contoso.com",        // on-premises mailbox → on-premises connector
        "mu@contoso.com",          // mail user → its outside address by MX
        "x@sales.fabrikam.com",    // internal relay, match subdomains, unknown → on-premises
        "petra@fabrikam.com",      // internal relay, known → the store
        "bo@woodgrove.example",    // partner connector, exact
        "bo@eu.woodgrove.example", // partner connector, wildcard
        "someone@example.org",     // the internet by MX
    ];
    let routed = router.route(&verdict(&rcpts, PolicyAction::Deliver), &received(&rcpts, None));
    assert_eq!(
        summary(&routed),
        vec![
            (
                "mailbox_store:mailbox".into(),
                RouteReason::AcceptedDomain,
                vec!["anna@contoso.com".into(), "petra@fabrikam.com".into()]
            ),
            (
                "on_premises:to-onprem".into(),
                RouteReason::OutboundConnector,
                vec!["olga@contoso.com".into(), "x@sales.fabrikam.com".into()]
            ),
            ("internet:tailspin.example".into(), RouteReason::Mx, vec!["mu@tailspin.example".into()]),
            (
                "partner:to-woodgrove".into(),
                RouteReason::OutboundConnector,
                vec!["bo@woodgrove.example".into(), "bo@eu.woodgrove.example".into()]
            ),
            ("internet:example.org".into(), RouteReason::Mx, vec!["someone@example.org".into()]),
        ]
    );
    assert!(routed.unroutable.is_empty(), "{:?}", routed.unroutable);
    let store = &routed.queued[0];
    assert_eq!(store.recipients[0].orcpt.as_deref(), Some("rfc822;a.nna@contoso.com"), "the original address is kept");
    assert_eq!(store.expires_at, store.received_at + chrono::Duration::hours(24), "spec 11.3: 24 h by default");
}

#[test]
fn an_unknown_recipient_of_an_authoritative_domain_fails_with_5_1_10() {
    // Spec 2.7: resolved after acceptance (a redirect here) → 5.1.10, not 5.4.1.
    let router = router("");
    let mut judged = verdict(&["anna@contoso.com"], PolicyAction::Redirect);
    judged.redirect_to = vec!["ghost@contoso.com".into()];
    let routed = router.route(&judged, &received(&["anna@contoso.com"], None));
    assert!(routed.queued.is_empty());
    let failed = &routed.unroutable[0];
    assert_eq!(failed.recipients, vec!["ghost@contoso.com".to_string()]);
    assert_eq!((failed.reply.code, failed.reply.enhanced.as_deref()), (550, Some("5.1.10")));
    assert!(failed.reply.text.starts_with("RESOLVER.ADR.RecipientNotFound"), "{}", failed.reply.text);
}

#[test]
fn internal_relay_without_an_on_premises_connector_fails_with_5_4_1() {
    let config: Config =
        toml::from_str("[[accepted_domains]]\nname = \"fabrikam.com\"\ntype = \"internal_relay\"\ndefault = true\n")
            .expect("parses");
    let router = Router::new(&config, Arc::new(InboundPolicy::new(&config)));
    let routed =
        router.route(&verdict(&["x@fabrikam.com"], PolicyAction::Deliver), &received(&["x@fabrikam.com"], None));
    assert_eq!(routed.unroutable[0].reply.enhanced.as_deref(), Some("5.4.1"));
}

#[test]
fn junk_goes_to_the_junk_folder_of_the_store_only() {
    let router = router("");
    let rcpts = ["anna@contoso.com", "someone@example.org"];
    let routed = router.route(&verdict(&rcpts, PolicyAction::MoveToJunk), &received(&rcpts, None));
    assert_eq!(routed.queued[0].folder.as_deref(), Some(JUNK_FOLDER));
    assert_eq!(routed.queued[1].folder, None, "only the mailbox store has folders");
}

#[test]
fn quarantined_and_deleted_mail_is_not_routed_and_rejected_mail_fails_with_the_rule_reply() {
    let router = router("");
    let rcpts = ["anna@contoso.com"];
    for action in [PolicyAction::Quarantine, PolicyAction::Delete] {
        let routed = router.route(&verdict(&rcpts, action), &received(&rcpts, None));
        assert_eq!(routed, Routed::default(), "{action:?}");
    }
    let mut rejected = verdict(&rcpts, PolicyAction::Reject);
    rejected.reject_reply =
        Some(SmtpReply { code: 550, enhanced: Some("5.7.1".into()), text: "No executables".into() });
    let routed = router.route(&rejected, &received(&rcpts, None));
    assert!(routed.queued.is_empty());
    assert_eq!(routed.unroutable[0].reply.text, "No executables");
}

#[test]
fn a_rule_routes_outside_recipients_through_a_rule_scoped_connector_but_not_mailboxes() {
    // Spec 6.2: conditional routing.
    let router = router("");
    let rcpts = ["anna@contoso.com", "someone@example.org"];
    let mut judged = verdict(&rcpts, PolicyAction::Deliver);
    judged.route_via_connector = Some("new-orleans".into());
    let routed = router.route(&judged, &received(&rcpts, None));
    let keys: Vec<_> = summary(&routed).into_iter().map(|(key, reason, _)| (key, reason)).collect();
    assert_eq!(
        keys,
        vec![
            ("mailbox_store:mailbox".to_string(), RouteReason::AcceptedDomain),
            ("partner:new-orleans".to_string(), RouteReason::TransportRule)
        ]
    );
}

#[test]
fn a_rule_requiring_tls_marks_every_copy_but_the_mailbox_stores() {
    // Spec 12.4 `RouteMessageOutboundRequireTls`: delivery then never falls
    // back to clear text (the delivery client turns opportunistic TLS into
    // required TLS for such copies).
    let router = router("");
    let rcpts = ["anna@contoso.com", "someone@example.org"];
    let mut judged = verdict(&rcpts, PolicyAction::Deliver);
    let routed = router.route(&judged, &received(&rcpts, None));
    assert!(routed.queued.iter().all(|q| !q.require_tls), "not without the rule");
    judged.require_tls = true;
    let routed = router.route(&judged, &received(&rcpts, None));
    let marks: Vec<_> = routed.queued.iter().map(|q| (q.destination.key(), q.require_tls)).collect();
    assert_eq!(marks, vec![("mailbox_store:mailbox".to_string(), false), ("internet:example.org".to_string(), true)]);
}

#[test]
fn centralized_mail_transport_sends_internet_mail_on_premises_first_but_not_mail_from_on_premises() {
    // Spec 6.6.
    let router = router(
        "[[outbound_connectors]]\nname = \"cmt\"\nkind = \"on_premises\"\nroute_all_messages_via_on_premises = true\nsmart_hosts = [\"onprem2.contoso.com\"]\n",
    );
    let rcpts = ["anna@contoso.com", "someone@example.org"];
    let from_internet = router.route(&verdict(&rcpts, PolicyAction::Deliver), &received(&rcpts, None));
    assert_eq!(summary(&from_internet)[0].0, "on_premises:cmt");
    assert_eq!(summary(&from_internet)[0].2.len(), 2, "both copies go on-premises first");
    let from_on_premises =
        router.route(&verdict(&rcpts, PolicyAction::Deliver), &received(&rcpts, Some(ConnectorKind::OnPremises)));
    let keys: Vec<_> = summary(&from_on_premises).into_iter().map(|(key, ..)| key).collect();
    assert_eq!(keys, vec!["mailbox_store:mailbox".to_string(), "internet:example.org".to_string()]);
}

#[test]
fn redirects_and_added_recipients_are_routed_and_duplicates_collapse() {
    let router = router("");
    let mut judged = verdict(&["anna@contoso.com"], PolicyAction::Redirect);
    judged.redirect_to = vec!["petra@fabrikam.com".into()];
    judged.added_recipients = vec!["audit@example.org".into(), "petra@fabrikam.com".into()];
    let routed = router.route(&judged, &received(&["anna@contoso.com"], None));
    assert_eq!(
        summary(&routed),
        vec![
            ("mailbox_store:mailbox".into(), RouteReason::Redirect, vec!["petra@fabrikam.com".into()]),
            ("internet:example.org".into(), RouteReason::Mx, vec!["audit@example.org".into()]),
        ]
    );
}

#[test]
fn verdict_headers_and_subject_prefix_travel_with_the_copy() {
    let router = router("");
    let mut judged = verdict(&["anna@contoso.com"], PolicyAction::PrependSubject);
    judged.headers_added =
        vec![mailflow_events::verdicts::Header { name: "X-MS-Exchange-Organization-SCL".into(), value: "5".into() }];
    judged.subject_prefix = Some("[SPAM] ".into());
    let routed = router.route(&judged, &received(&["anna@contoso.com"], None));
    assert_eq!(routed.queued[0].prepend_headers, judged.headers_added);
    assert_eq!(routed.queued[0].subject_prefix.as_deref(), Some("[SPAM] "));
    assert_eq!(routed.queued[0].destination.kind, DestinationKind::MailboxStore);
}

#[test]
fn mailbox_forwarding_sends_a_copy_unless_the_remote_domain_blocks_auto_forwards() {
    // Spec 14.3 T: AutoForwardEnabled=$false → the forward never leaves, and no NDR.
    let router = router("");
    let rcpts = ["fwd@contoso.com", "blocked@contoso.com"];
    let routed = router.route(&verdict(&rcpts, PolicyAction::Deliver), &received(&rcpts, None));
    assert_eq!(
        summary(&routed),
        vec![
            (
                "mailbox_store:mailbox".into(),
                RouteReason::AcceptedDomain,
                vec!["fwd@contoso.com".into(), "blocked@contoso.com".into()]
            ),
            ("internet:home.example".into(), RouteReason::Redirect, vec!["me@home.example".into()]),
        ]
    );
    assert!(routed.unroutable.is_empty(), "a blocked forward is dropped silently");
    let forward = &routed.queued[1].recipients[0];
    assert_eq!(forward.notify, vec![mailflow_events::received::DsnNotify::Never], "a failed forward bounces to nobody");
}

#[test]
fn an_automatic_reply_to_a_remote_domain_that_refuses_them_is_dropped_silently() {
    // Spec 14.2: AutoReplyEnabled=$false → an automatic reply (RFC 3834
    // `Auto-Submitted: auto-replied`) to that domain is not sent, and no NDR;
    // other recipients of the same reply, and other automatic mail, go out.
    let router = router("");
    let rcpts = ["x@blocked.example", "y@tailspin.example", "anna@contoso.com"];
    let mut reply = received(&rcpts, None);
    reply.auto_submitted = Some("auto-replied".into());
    let routed = router.route(&verdict(&rcpts, PolicyAction::Deliver), &reply);
    assert_eq!(
        summary(&routed),
        vec![
            ("internet:tailspin.example".into(), RouteReason::Mx, vec!["y@tailspin.example".into()]),
            ("mailbox_store:mailbox".into(), RouteReason::AcceptedDomain, vec!["anna@contoso.com".into()]),
        ]
    );
    assert!(routed.unroutable.is_empty(), "dropped silently, no NDR");
    for other in [None, Some("auto-generated")] {
        let mut message = received(&rcpts, None);
        message.auto_submitted = other.map(str::to_string);
        let routed = router.route(&verdict(&rcpts, PolicyAction::Deliver), &message);
        let all: usize = routed.queued.iter().map(|q| q.recipients.len()).sum();
        assert_eq!(all, 3, "{other:?} is not an automatic reply: {:?}", summary(&routed));
    }
}
