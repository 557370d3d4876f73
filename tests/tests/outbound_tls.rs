//! TLS of outbound connectors end to end (spec 6.4; issue: routing, "TLS
//! settings: opportunistic, encryption only, certificate validation, domain
//! validation with TLS domain"): the router, relaying for an on-premises
//! server, routes each recipient domain to its own partner connector, each
//! with its own `tls_settings`, to a real Postfix that offers STARTTLS with a
//! certificate for `mx.example.org` from a private CA. What the connector
//! requires decides: the copy goes out encrypted (and its `Delivered` event
//! names the protocol and cipher), or the destination is deferred with
//! `4.7.5` (certificate check failed) or `4.7.10` (TLS required, not offered),
//! and nothing reaches the peer in clear text. A mail flow rule's
//! `RouteMessageOutboundRequireTls` (spec 12.4) makes an opportunistic
//! connector's copy wait for TLS the same way.

use std::time::{Duration, Instant};

use mailflow_events::delivery::DeliveryEvent;
use mailflow_tests::clients::send_numbered;
use mailflow_tests::dns::DnsServer;
use mailflow_tests::pki::TestCa;
use mailflow_tests::postfix::{PrivatePostfix, SmtpSink};
use mailflow_tests::router::{Router, relay_config};

/// How a copy must leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expected {
    Encrypted,
    Clear,
    /// Deferred with an error starting with this.
    Deferred(&'static str),
}
use Expected::{Clear, Deferred, Encrypted};

const CERTIFICATE: Expected = Deferred("4.7.5 TLS negotiation failed");
const NO_TLS: Expected = Deferred("4.7.10 TLS required but not available");

/// Recipient domain → (connector lines, how the copy must leave).
fn connectors(tls_port: u16, plain_port: u16) -> Vec<(&'static str, String, Expected)> {
    let to_tls = format!("smart_hosts = [\"mx.example.org:{tls_port}\"]");
    vec![
        ("opportunistic.test", format!("{to_tls}\ntls_settings = \"opportunistic\""), Encrypted),
        ("encryption.test", format!("{to_tls}\ntls_settings = \"encryption_only\""), Encrypted),
        ("certificate.test", format!("{to_tls}\ntls_settings = \"certificate_validation\""), Encrypted),
        (
            "domain.test",
            format!("{to_tls}\ntls_settings = \"domain_validation\"\ntls_domain = \"*.example.org\""),
            Encrypted,
        ),
        (
            "wrong-domain.test",
            format!("{to_tls}\ntls_settings = \"domain_validation\"\ntls_domain = \"*.contoso.test\""),
            CERTIFICATE,
        ),
        (
            // The certificate names mx.example.org, not the address dialled.
            "by-address.test",
            format!("smart_hosts = [\"127.0.0.1:{tls_port}\"]\ntls_settings = \"certificate_validation\""),
            CERTIFICATE,
        ),
        (
            // smtp-sink offers no STARTTLS.
            "plain.test",
            format!("smart_hosts = [\"127.0.0.1:{plain_port}\"]\ntls_settings = \"encryption_only\""),
            NO_TLS,
        ),
        // Opportunistic to smtp-sink: clear text is allowed …
        ("clear.test", format!("smart_hosts = [\"127.0.0.1:{plain_port}\"]"), Clear),
        // … unless a rule requires TLS for the message (RULE below).
        ("required.test", format!("smart_hosts = [\"127.0.0.1:{plain_port}\"]"), NO_TLS),
    ]
}

/// `RouteMessageOutboundRequireTls` for mail to required.test.
const RULE: &str = "
[[transport_rules]]
name = \"tls for required.test\"
priority = 0
conditions = { recipient_domain_is = [\"required.test\"] }
actions = { route_message_outbound_require_tls = true }
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_connectors_tls_setting_decides_between_an_encrypted_delivery_and_a_deferral() -> anyhow::Result<()> {
    let ca = TestCa::new()?;
    let (chain, key) = ca.issue("mx.example.org")?;
    let postfix = PrivatePostfix::start(&chain, &key, "example.org")?;
    let plain = SmtpSink::start(&[])?;
    let dns = DnsServer::start("mx.example.org. 300 IN A 127.0.0.1\n")?;
    let dir = tempfile::tempdir()?;
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem())?;
    let table = connectors(postfix.address.port(), plain.address.port());
    let mut config =
        relay_config(&dns, 25, &format!("extra_ca = \"{}\"\nretry_schedule = [\"1h\"]", ca_file.display()));
    for (domain, lines, _) in &table {
        config.push_str(&format!(
            "\n[[outbound_connectors]]\nname = \"{domain}\"\nkind = \"partner\"\nrecipient_domains = [\"{domain}\"]\n{lines}\n"
        ));
    }
    config.push_str(RULE);
    let router = Router::start_in(dir, &config)?;
    for (domain, _, _) in &table {
        send_numbered(router.smtp(), "alice@contoso.com", &format!("bob@{domain}"), 1)?;
    }
    let expected = table.len();
    let events = router
        .wait_for_delivery_events("an outcome per connector", |events| {
            events
                .iter()
                .filter(|e| matches!(e.event, DeliveryEvent::Delivered(_) | DeliveryEvent::Deferred(_)))
                .count()
                >= expected
        })
        .await?;
    for (domain, _, expected) in &table {
        let outcome = events
            .iter()
            .find(|e| {
                e.event.destination().name == *domain
                    && matches!(e.event, DeliveryEvent::Delivered(_) | DeliveryEvent::Deferred(_))
            })
            .unwrap_or_else(|| panic!("{domain}: no outcome"));
        match (&outcome.event, expected) {
            (DeliveryEvent::Delivered(d), Encrypted) => {
                let tls = d.tls.as_ref().unwrap_or_else(|| panic!("{domain}: delivered in clear text"));
                assert!(tls.protocol == "TLSv1.3" || tls.protocol == "TLSv1.2", "{domain}: {tls:?}");
                assert!(
                    tls.cipher.starts_with("TLS_") && !tls.cipher.starts_with("TLS13_"),
                    "{domain}: IANA name, {tls:?}"
                );
                assert_eq!(d.reply.code, 250, "{domain}");
            }
            (DeliveryEvent::Delivered(d), Clear) => assert_eq!((d.tls.as_ref(), d.reply.code), (None, 250), "{domain}"),
            (DeliveryEvent::Deferred(d), Deferred(prefix)) => {
                let error = d.error.as_deref().unwrap_or_default();
                assert!(error.starts_with(prefix), "{domain}: {error:?}");
                assert!(d.reply.is_none(), "{domain}: {d:?}");
            }
            (event, _) => panic!("{domain}: unexpected {event:?}"),
        }
    }
    // Postfix took the four encrypted copies (its discard transport logs each
    // as sent); the refused ones never reached it, and smtp-sink got only the
    // copy that may go in clear text.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut log = postfix.log();
    while log.matches("status=sent").count() < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        log = postfix.log();
    }
    assert_eq!(log.matches("status=sent").count(), 4, "{log}");
    assert!(log.contains("TLS connection established from"), "{log}");
    for (domain, _, expected) in &table {
        assert_eq!(log.contains(&format!("to=<bob@{domain}>")), *expected == Encrypted, "{domain}: {log}");
    }
    let clear: Vec<Vec<String>> = plain.dumped()?.into_iter().map(|d| d.rcpt_args).collect();
    assert_eq!(clear, [["<bob@clear.test>"]], "only the copy allowed in clear text went out in clear text");
    // Message trace (the journal's SEND detail) says how each copy went.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let records = router.wait_for_records(mailflow_events::topic::JOURNAL, 0).await?;
        let sent: Vec<serde_json::Value> = records
            .iter()
            .filter_map(|r| serde_json::from_slice::<serde_json::Value>(&r.value).ok())
            .filter(|v| v["type"] == "Sent")
            .collect();
        if sent.len() >= 5 {
            let mut details: Vec<&str> = sent.iter().map(|r| r["detail"].as_str().unwrap_or_default()).collect();
            details.sort();
            assert!(details[0].starts_with("Sent to 127.0.0.1: 250 "), "{details:?}");
            for detail in &details[1..] {
                assert!(detail.starts_with("Sent to mx.example.org over TLSv1."), "{details:?}");
            }
            break;
        }
        assert!(Instant::now() < deadline, "{} Sent journal records: {sent:?}", sent.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
