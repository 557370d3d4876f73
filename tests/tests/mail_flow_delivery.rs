//! Delivery to next hops end to end (spec 6, 11, 13; DESIGN §3): an
//! on-premises server (127.0.0.1, matched by an on-premises inbound
//! connector) relays its users' mail to the internet through the router,
//! which finds the recipient domain's MX on a real DNS server and delivers to
//! a real peer (Postfix's smtp-sink) or, for faults, to the scriptable sink.

use std::time::{Duration, Instant};

use mailflow_events::delivery::{DeliveryEvent, Scope};
use mailflow_tests::clients::send_numbered;
use mailflow_tests::dns::DnsServer;
use mailflow_tests::postfix::SmtpSink;
use mailflow_tests::router::{BASE_CONFIG, Router, assert_probes_on_schedule, relay_config};
use mailflow_tests::sink::{Script, Sink};

const ZONE: &str = "example.org. 300 IN MX 10 mx.example.org.\nmx.example.org. 300 IN A 127.0.0.1\n";

/// The payload of the first `variant` event among `events`.
macro_rules! first {
    ($events:expr, $variant:ident, $what:expr) => {
        $events
            .iter()
            .find_map(|e| match &e.event {
                DeliveryEvent::$variant(payload) => Some(payload),
                _ => None,
            })
            .expect($what)
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_mail_is_delivered_to_the_recipient_domains_mx_a_real_postfix_peer() -> anyhow::Result<()> {
    let dns = DnsServer::start(ZONE)?;
    let peer = SmtpSink::start(&[])?;
    let router = Router::start(&relay_config(&dns, peer.address.port(), ""))?;
    send_numbered(router.smtp(), "alice@contoso.com", "bob@example.org", 1)?;
    let dumped = peer.wait_for_dumps(1)?;
    assert_eq!(dumped[0].mail_args.split_whitespace().next(), Some("<alice@contoso.com>"));
    assert_eq!(
        dumped[0].rcpt_args.iter().map(|r| r.split_whitespace().next().unwrap_or("")).collect::<Vec<_>>(),
        ["<bob@example.org>"]
    );
    assert!(dumped[0].message.contains("Subject: message 000"), "{}", dumped[0].message);
    let events = router
        .wait_for_delivery_events("Delivered", |events| {
            events.iter().any(|e| matches!(e.event, DeliveryEvent::Delivered(_)))
        })
        .await?;
    let delivered = first!(events, Delivered, "delivered");
    assert_eq!(delivered.destination.key(), "internet:example.org");
    assert_eq!(delivered.remote_host.as_deref(), Some("mx.example.org"));
    assert_eq!(delivered.remote_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!((delivered.reply.code, delivered.attempt), (250, 1));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_next_hop_defers_on_schedule_and_after_recovery_100_messages_arrive_in_receipt_order()
-> anyhow::Result<()> {
    // DESIGN §3 and spec 11.4 T; time comes from a schedule in seconds.
    let dns = DnsServer::start(ZONE)?;
    let port = Sink::closed_port()?;
    let router = Router::start(&relay_config(&dns, port.port(), "retry_schedule = [\"1s\", \"2s\"]"))?;
    send_numbered(router.smtp(), "alice@contoso.com", "bob@example.org", 100)?;
    // The destination is probed on the schedule while it refuses connections.
    let events = router
        .wait_for_delivery_events("three destination deferrals", |events| {
            events
                .iter()
                .filter(|e| matches!(&e.event, DeliveryEvent::Deferred(d) if d.scope == Scope::Destination))
                .count()
                >= 3
        })
        .await?;
    assert_probes_on_schedule(&events, "example.org", &[1000, 2000]);
    assert!(
        !events.iter().any(|e| matches!(e.event, DeliveryEvent::Delivered(_) | DeliveryEvent::Failed(_))),
        "nothing else happened while the destination was down"
    );
    // The next hop comes back: everything arrives, in the order received.
    let sink = Sink::start_at(port, Script::smtp()).await?;
    let received = sink.wait_for_received(100, Duration::from_secs(60)).await;
    let subjects: Vec<String> = received.iter().map(|r| r.subject()).collect();
    let expected: Vec<String> = (0..100).map(|n| format!("message {n:03}")).collect();
    assert_eq!(subjects, expected);
    let events = router
        .wait_for_delivery_events("100 deliveries", |events| {
            events.iter().filter(|e| matches!(e.event, DeliveryEvent::Delivered(_))).count() >= 100
        })
        .await?;
    assert_eq!(events.iter().filter(|e| matches!(e.event, DeliveryEvent::Delivered(_))).count(), 100, "exactly once");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_router_rebuilds_its_queue_from_the_log_and_delivers_each_message_once_in_order() -> anyhow::Result<()>
{
    let dns = DnsServer::start(ZONE)?;
    let port = Sink::closed_port()?;
    let transport = "retry_schedule = [\"1s\"]";
    let router = Router::start(&relay_config(&dns, port.port(), transport))?;
    send_numbered(router.smtp(), "alice@contoso.com", "bob@example.org", 20)?;
    let before = router
        .wait_for_delivery_events("20 queued and a deferral", |events| {
            events.iter().any(|e| matches!(e.event, DeliveryEvent::Deferred(_)))
                && events.iter().filter(|e| matches!(e.event, DeliveryEvent::Queued(_))).count() >= 20
        })
        .await?;
    assert_eq!(before.iter().filter(|e| matches!(e.event, DeliveryEvent::Queued(_))).count(), 20);
    // kill -9, then the next hop recovers while the router is down.
    let dir = router.into_dir();
    let sink = Sink::start_at(port, Script::smtp()).await?;
    let router = Router::start_in(dir, &relay_config(&dns, port.port(), transport))?;
    let received = sink.wait_for_received(20, Duration::from_secs(60)).await;
    let subjects: Vec<String> = received.iter().map(|r| r.subject()).collect();
    let expected: Vec<String> = (0..20).map(|n| format!("message {n:03}")).collect();
    assert_eq!(subjects, expected, "the rebuilt queue keeps receipt order; nothing delivered twice");
    let events = router
        .wait_for_delivery_events("20 deliveries", |events| {
            events.iter().filter(|e| matches!(e.event, DeliveryEvent::Delivered(_))).count() >= 20
        })
        .await?;
    assert_eq!(
        events.iter().filter(|e| matches!(e.event, DeliveryEvent::Queued(_))).count(),
        20,
        "routing was not repeated"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_fails_the_recipient_at_once_and_its_ndr_reaches_the_senders_mailbox() -> anyhow::Result<()> {
    let dns = DnsServer::start(ZONE)?;
    let sink =
        Sink::start(Script::smtp().rcpt("gone@example.org", "550 5.1.1 <gone@example.org>: User unknown")).await?;
    let router = Router::start(&relay_config(&dns, sink.address.port(), ""))?;
    send_numbered(router.smtp(), "alice@contoso.com", "gone@example.org", 1)?;
    let events = router
        .wait_for_delivery_events("a failure", |events| {
            events.iter().any(|e| matches!(e.event, DeliveryEvent::Failed(_)))
        })
        .await?;
    let failed = first!(events, Failed, "failed");
    assert_eq!((failed.reply.code, failed.reply.enhanced.as_deref(), failed.attempt), (550, Some("5.1.1"), 1));
    assert!(failed.ndr_message_id.is_some(), "an NDR was sent");
    assert!(!events.iter().any(|e| matches!(e.event, DeliveryEvent::Deferred(_))), "spec 11.1: no deferral for 5xx");
    let ndr = wait_for_file(&router.dir.path().join("mail/alice@contoso.com/new"))?;
    for line in [
        "Status: 5.1.1",
        "Diagnostic-Code: smtp;550 5.1.1 <gone@example.org>: User unknown",
        "Remote-MTA: dns;mx.example.org",
        "Subject: Undeliverable: message 000",
    ] {
        assert!(ndr.contains(line), "missing `{line}` in\n{ndr}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_cannot_be_delivered_in_time_expires_with_an_ndr_4_4_7() -> anyhow::Result<()> {
    let dns = DnsServer::start(ZONE)?;
    let port = Sink::closed_port()?;
    let router =
        Router::start(&relay_config(&dns, port.port(), "retry_schedule = [\"1s\"]\nmessage_expiration = \"3s\""))?;
    send_numbered(router.smtp(), "alice@contoso.com", "bob@example.org", 1)?;
    let events = router
        .wait_for_delivery_events("expiry", |events| {
            events.iter().any(|e| matches!(e.event, DeliveryEvent::Expired(_)))
        })
        .await?;
    let expired = first!(events, Expired, "expired");
    assert_eq!((expired.reply.code, expired.reply.enhanced.as_deref()), (550, Some("4.4.7")));
    assert!(expired.attempts >= 1, "{expired:?}");
    assert!(expired.last_reply.as_ref().is_some_and(|r| r.text.contains("Connection refused")), "{expired:?}");
    let ndr = wait_for_file(&router.dir.path().join("mail/alice@contoso.com/new"))?;
    assert!(ndr.contains("Diagnostic-Code: smtp;550 4.4.7 QUEUE.Expired; message expired"), "{ndr}");
    assert!(ndr.contains("The server has tried to deliver this message, without success"), "{ndr}");
    Ok(())
}

/// The first file that appears in `dir`.
fn wait_for_file(dir: &std::path::Path) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(entry) = std::fs::read_dir(dir).ok().and_then(|mut d| d.next()) {
            return Ok(std::fs::read_to_string(entry?.path())?);
        }
        if Instant::now() > deadline {
            anyhow::bail!("nothing arrived in {}", dir.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_mail_from_a_domain_with_a_key_is_dkim_signed_and_verifies_against_dns() -> anyhow::Result<()> {
    use base64::Engine as _;
    let pkcs8 = mail_auth::common::crypto::Ed25519Key::generate_pkcs8()?;
    let key = mail_auth::common::crypto::Ed25519Key::from_pkcs8_der(&pkcs8)?;
    let engine = base64::engine::general_purpose::STANDARD;
    let body = engine.encode(&pkcs8);
    let pem = format!("-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n");
    let record = format!("v=DKIM1\\; k=ed25519\\; p={}", engine.encode(key.public_key()));
    let dns = DnsServer::start(&format!("{ZONE}s1._domainkey.contoso.com. 300 IN TXT \"{record}\"\n"))?;
    let sink = Sink::start(Script::smtp()).await?;
    let key_file = tempfile::NamedTempFile::new()?;
    std::fs::write(key_file.path(), pem)?;
    let signing = format!(
        "\n[[dkim_signing]]\ndomain = \"contoso.com\"\nselector = \"s1\"\nalgorithm = \"ed25519\"\nprivate_key = {:?}\n",
        key_file.path().display().to_string()
    );
    let router = Router::start(&format!("{}{signing}", relay_config(&dns, sink.address.port(), "")))?;
    send_numbered(router.smtp(), "alice@contoso.com", "bob@example.org", 1)?;
    let received = sink.wait_for_received(1, Duration::from_secs(60)).await;
    let content = &received.first().expect("delivered").content;
    assert!(content.starts_with(b"DKIM-Signature: v=1; a=ed25519-sha256;"), "{}", String::from_utf8_lossy(content));
    // Verify as a receiver would, against the published key.
    let resolver = mailflow_actors::dns::resolver(&mailflow_actors::dns::DnsConfig {
        nameservers: vec![dns.address],
        ..Default::default()
    })?;
    let authenticator = mail_auth::MessageAuthenticator(resolver);
    let message = mail_auth::AuthenticatedMessage::parse(content).expect("parses");
    let outputs = authenticator.verify_dkim(&message).await;
    assert_eq!(outputs.len(), 1);
    assert_eq!(outputs[0].result(), &mail_auth::DkimResult::Pass, "{outputs:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_connections_to_one_destination_take_messages_in_receipt_order() -> anyhow::Result<()> {
    let dns = DnsServer::start(ZONE)?;
    let port = Sink::closed_port()?;
    let transport = "retry_schedule = [\"1s\"]\nmax_connections_per_destination = 4";
    let router = Router::start(&relay_config(&dns, port.port(), transport))?;
    send_numbered(router.smtp(), "alice@contoso.com", "bob@example.org", 40)?;
    router
        .wait_for_delivery_events("40 queued and a deferral", |events| {
            events.iter().filter(|e| matches!(e.event, DeliveryEvent::Queued(_))).count() == 40
                && events.iter().any(|e| matches!(e.event, DeliveryEvent::Deferred(_)))
        })
        .await?;
    let sink = Sink::start_at(port, Script::smtp()).await?;
    let received = sink.wait_for_received(40, Duration::from_secs(60)).await;
    let mut subjects: Vec<String> = received.iter().map(|r| r.subject()).collect();
    assert!(sink.connections() >= 2, "more than one connection was used: {}", sink.connections());
    // Each connection took the next message in receipt order.
    for connection in 0..sink.connections() {
        let mine: Vec<String> = received.iter().filter(|r| r.connection == connection).map(|r| r.subject()).collect();
        let mut sorted = mine.clone();
        sorted.sort();
        assert_eq!(mine, sorted, "connection {connection} went out of order");
    }
    subjects.sort();
    let expected: Vec<String> = (0..40).map(|n| format!("message {n:03}")).collect();
    assert_eq!(subjects, expected, "every message exactly once");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mx_hosts_are_tried_in_preference_order_and_an_unreachable_one_is_skipped() -> anyhow::Result<()> {
    // RFC 5321 §5.1: the lowest preference first; on failure, the next host.
    let zone = "example.org. 300 IN MX 20 mx2.example.org.\nexample.org. 300 IN MX 10 mx1.example.org.\n\
                mx1.example.org. 300 IN A 127.0.0.5\nmx2.example.org. 300 IN A 127.0.0.1\n";
    let dns = DnsServer::start(zone)?;
    let sink = Sink::start(Script::smtp()).await?; // 127.0.0.1 only: mx1's address refuses
    let router = Router::start(&relay_config(&dns, sink.address.port(), ""))?;
    send_numbered(router.smtp(), "alice@contoso.com", "bob@example.org", 1)?;
    let events = router
        .wait_for_delivery_events("a delivery", |events| {
            events.iter().any(|e| matches!(e.event, DeliveryEvent::Delivered(_)))
        })
        .await?;
    let delivered = first!(events, Delivered, "delivered");
    assert_eq!(delivered.remote_host.as_deref(), Some("mx2.example.org"));
    assert_eq!(delivered.attempt, 1, "the second host was tried within the same attempt");
    assert!(!events.iter().any(|e| matches!(e.event, DeliveryEvent::Deferred(_))));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_failure_defers_the_destination_instead_of_failing_the_mail() -> anyhow::Result<()> {
    // A nameserver that never answers: a temporary error, so the message waits.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let sink = Sink::start(Script::smtp()).await?;
    let config = format!(
        "{BASE_CONFIG}\n[dns]\nnameservers = [\"{}\"]\ntimeout = \"200ms\"\nattempts = 1\n[transport]\nmx_port = {}\nretry_schedule = [\"1m\"]\n\
         [[inbound_connectors]]\nname = \"onprem\"\nkind = \"on_premises\"\nsender_ip_addresses = [\"127.0.0.1\"]\n",
        silent.local_addr()?,
        sink.address.port()
    );
    let router = Router::start(&config)?;
    send_numbered(router.smtp(), "alice@contoso.com", "bob@example.org", 1)?;
    let events = router
        .wait_for_delivery_events("a deferral", |events| {
            events.iter().any(|e| matches!(e.event, DeliveryEvent::Deferred(_)))
        })
        .await?;
    let deferred = first!(events, Deferred, "deferred");
    assert_eq!(deferred.scope, Scope::Destination);
    assert!(deferred.error.as_deref().is_some_and(|e| e.starts_with("4.4.0 DNS query failed")), "{deferred:?}");
    assert!(!events.iter().any(|e| matches!(e.event, DeliveryEvent::Failed(_))), "no NDR for a DNS hiccup");
    assert!(sink.received().is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rules_disclaimer_is_inserted_or_wraps_a_signed_message_or_refuses_it() -> anyhow::Result<()> {
    // Spec 12.4 ApplyHtmlDisclaimerText / Location / FallbackAction, through
    // smtp-sink, a real next hop.
    let dns = DnsServer::start(ZONE)?;
    let peer = SmtpSink::start(&[])?;
    let rules = r#"
[[transport_rules]]
name = "disclaimer"
priority = 0
conditions = { recipient_domain_is = ["example.org"] }
actions = { apply_html_disclaimer_text = "<p>Contoso: <b>confidential</b></p>" }

[[transport_rules]]
name = "disclaimer or nothing"
priority = 1
conditions = { subject_contains_words = ["strict"] }
actions = { apply_html_disclaimer_text = "Contoso", apply_html_disclaimer_fallback_action = "reject" }
"#;
    let router = Router::start(&format!("{}{rules}", relay_config(&dns, peer.address.port(), "")))?;
    let script = r#"
signed = (b"From: alice@contoso.com\r\nSubject: SUBJECT\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; boundary=\"s\"\r\n\r\n"
    b"--s\r\nContent-Type: text/plain\r\n\r\nsigned text\r\n--s\r\nContent-Type: application/pkcs7-signature\r\n\r\nMIIB\r\n--s--\r\n")
s = smtplib.SMTP(ADDR, PORT)
s.sendmail("alice@contoso.com", ["bob@example.org"], b"From: alice@contoso.com\r\nSubject: plain\r\n\r\nhello\r\n")
s.sendmail("alice@contoso.com", ["bob@example.org"], signed.replace(b"SUBJECT", b"signed"))
s.sendmail("alice@contoso.com", ["bob@example.org"], signed.replace(b"SUBJECT", b"strict"))
s.quit()
print(json.dumps("sent"))
"#;
    mailflow_tests::clients::python(router.smtp(), script)?;
    let events = router
        .wait_for_delivery_events("two deliveries and a refusal", |events| {
            events.iter().filter(|e| matches!(e.event, DeliveryEvent::Delivered(_) | DeliveryEvent::Failed(_))).count()
                >= 3
        })
        .await?;
    let failed = first!(events, Failed, "the strict message refused");
    assert_eq!((failed.reply.code, failed.reply.enhanced.as_deref()), (550, Some("5.7.1")), "{failed:?}");
    assert!(failed.reply.text.contains("disclaimer could not be added"), "{failed:?}");
    let dumped = peer.wait_for_dumps(2)?;
    assert_eq!(dumped.len(), 2, "the refused message went nowhere");
    let copy = |subject: &str| {
        dumped.iter().find(|d| d.message.contains(&format!("Subject: {subject}\n"))).map(|d| d.message.clone())
    };
    let plain = copy("plain").expect("plain copy");
    assert!(plain.trim_end().ends_with("\n\nhello\n\nContoso: confidential"), "tags dropped in plain text: {plain:?}");
    let wrapped = copy("signed").expect("wrapped copy");
    assert!(wrapped.contains("Content-Type: multipart/mixed; boundary=\"mailflow-disclaimer-"), "{wrapped}");
    assert!(wrapped.contains("<p>Contoso: <b>confidential</b></p>"), "{wrapped}");
    assert!(wrapped.contains("Content-Type: message/rfc822"), "{wrapped}");
    assert!(wrapped.contains("Content-Type: multipart/signed;"), "the signed original, attached: {wrapped}");
    assert!(wrapped.contains("--s\nContent-Type: text/plain\n\nsigned text\n--s\n"), "unchanged: {wrapped}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_smart_host_pointing_back_at_ourselves_ends_in_an_ndr_5_4_14() -> anyhow::Result<()> {
    // Spec 6.5 T: a misconfigured connector sends the message to the router
    // itself; every pass adds a `Received:` field, and past 20 the router
    // refuses it (554 5.4.14), which fails the copy and sends the sender an NDR.
    let dns = DnsServer::start(ZONE)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let connector = format!(
        "\n[[outbound_connectors]]\nname = \"back-to-us\"\nkind = \"partner\"\nrecipient_domains = [\"example.org\"]\n\
         smart_hosts = [\"127.0.0.1:{port}\"]\n"
    );
    let config =
        relay_config(&dns, 25, "").replace("address = \"127.0.0.1:0\"", &format!("address = \"127.0.0.1:{port}\""));
    let router = Router::start(&format!("{config}{connector}"))?;
    send_numbered(router.smtp(), "alice@contoso.com", "bob@example.org", 1)?;
    let events = router
        .wait_for_delivery_events("the looping copy failed and its NDR delivered", |events| {
            events.iter().any(|e| matches!(e.event, DeliveryEvent::Failed(_)))
                && events.iter().any(|e| {
                    matches!(&e.event, DeliveryEvent::Delivered(d) if d.destination.key() == "mailbox_store:mailbox")
                })
        })
        .await?;
    let failed = first!(events, Failed, "failed");
    assert_eq!((failed.reply.code, failed.reply.enhanced.as_deref()), (554, Some("5.4.14")), "{failed:?}");
    assert_eq!(failed.remote_ip.as_deref(), Some("127.0.0.1"));
    // Twenty passes are accepted (the copy arriving with 20 `Received:`
    // fields still is, the one with 21 is not); the NDR goes to the mailbox.
    let delivered_to = |key: &str| {
        events.iter().filter(|e| matches!(&e.event, DeliveryEvent::Delivered(d) if d.destination.key() == key)).count()
    };
    assert_eq!(delivered_to("partner:back-to-us"), 20);
    assert_eq!(delivered_to("mailbox_store:mailbox"), 1, "the NDR");
    let ndr = wait_for_file(&router.dir.path().join("mail/alice@contoso.com/new"))?;
    assert!(ndr.contains("Status: 5.4.14"), "{ndr}");
    assert!(ndr.contains("Hop count exceeded - possible mail loop"), "{ndr}");
    Ok(())
}
