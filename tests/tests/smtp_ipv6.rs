//! Anonymous inbound mail over IPv6 (spec 3.2), on loopback, with a real DNS
//! server on loopback serving the PTR and SPF records.
//!
//! The client connects from `fd00:6d66::25`, an address that
//! `scripts/install-test-deps` puts on `lo`: the resolver answers PTR queries
//! for `::1` itself ("localhost", RFC 6761 §6.3), so only another address can
//! show what DNS says.

use mailflow_tests::clients::python;
use mailflow_tests::dns::DnsServer;
use mailflow_tests::router::Router;

/// The client's source address, on `lo`.
const CLIENT: &str = "fd00:6d66::25";
const PTR_OF_CLIENT: &str = "5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.6.d.6.0.0.d.f.ip6.arpa.";

fn client_address_is_on_lo() {
    let bound = std::net::TcpListener::bind((CLIENT, 0));
    assert!(bound.is_ok(), "{CLIENT} is not on lo: run scripts/install-test-deps (ip -6 addr add {CLIENT}/128 dev lo)");
}

fn config(dns: &DnsServer) -> String {
    format!(
        r#"
[server]
hostname = "mx.contoso.test"

[[server.listeners]]
name = "smtp"
address = "[::1]:0"

[dns]
nameservers = ["{dns}"]

[[accepted_domains]]
name = "contoso.com"
allow_anonymous_ipv6 = true

[[accepted_domains]]
name = "fabrikam.com"

[[directory.recipients]]
address = "alice@contoso.com"

[[directory.recipients]]
address = "bob@fabrikam.com"
"#,
        dns = dns.address
    )
}

/// One transaction from `sender`; returns `[rcpt reply, data reply]` as "code text".
const SEND: &str = r#"
def send(sender, rcpt):
    s = smtplib.SMTP(ADDR, PORT, source_address=("fd00:6d66::25", 0))
    s.ehlo("client.example")
    s.mail(sender)
    code, msg = s.rcpt(rcpt)
    out = ["%d %s" % (code, msg.decode())]
    if code == 250:
        code, msg = s.data(b"From: " + sender.encode() + b"\r\nSubject: v6\r\n\r\nhello\r\n")
        out.append("%d %s" % (code, msg.decode()))
    s.quit()
    return out
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_that_did_not_opt_in_refuses_ipv6_with_550_5_2_1() -> anyhow::Result<()> {
    client_address_is_on_lo();
    let dns = DnsServer::start(&format!("{PTR_OF_CLIENT} 300 IN PTR client.example.\n"))?;
    let router = Router::start(&config(&dns))?;
    let reply =
        python(router.smtp(), &format!("{SEND}\nprint(json.dumps(send('s@example.net', 'bob@fabrikam.com')))"))?;
    let rcpt = reply[0].as_str().unwrap_or_default();
    assert!(
        rcpt.starts_with("550 5.2.1 Service unavailable, [fabrikam.com] does not accept email over IPv6"),
        "{reply}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_ptr_record_ipv6_gets_450_4_7_25() -> anyhow::Result<()> {
    client_address_is_on_lo();
    let dns = DnsServer::start("example.net. 300 IN TXT \"v=spf1 ip6:fd00:6d66::25 -all\"\n")?;
    let router = Router::start(&config(&dns))?;
    let reply =
        python(router.smtp(), &format!("{SEND}\nprint(json.dumps(send('s@example.net', 'alice@contoso.com')))"))?;
    let rcpt = reply[0].as_str().unwrap_or_default();
    assert!(
        rcpt.starts_with(
            "450 4.7.25 Service unavailable, sending IPv6 address [fd00:6d66::25] must have reverse DNS record"
        ),
        "{reply}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_ptr_ipv6_mail_needs_spf_or_dkim_to_pass_before_250() -> anyhow::Result<()> {
    client_address_is_on_lo();
    let zone = format!(
        "{PTR_OF_CLIENT} 300 IN PTR client.example.\n\
         pass.example. 300 IN TXT \"v=spf1 ip6:fd00:6d66::25 -all\"\n\
         fail.example. 300 IN TXT \"v=spf1 -all\"\n"
    );
    let dns = DnsServer::start(&zone)?;
    let mut router = Router::start(&config(&dns))?;
    let reply = python(
        router.smtp(),
        &format!(
            "{SEND}\nprint(json.dumps([send('s@pass.example', 'alice@contoso.com'), send('s@fail.example', 'alice@contoso.com')]))"
        ),
    )?;
    let passed = &reply[0];
    assert!(passed[1].as_str().unwrap_or_default().starts_with("250 2.0.0 OK <"), "SPF pass is accepted: {reply}");
    let failed = &reply[1];
    assert!(failed[0].as_str().unwrap_or_default().starts_with("250 2.1.5"), "{reply}");
    assert!(
        failed[1].as_str().unwrap_or_default().starts_with("450 4.7.26 Service unavailable, message sent over IPv6 [fd00:6d66::25] must pass either SPF or DKIM validation"),
        "{reply}"
    );
    // The accepted message carries the checks; the refused one is on record.
    let events = router.received_events().await?;
    let mut accepted = 0;
    let mut refused = 0;
    for event in &events {
        match &event.event {
            mailflow_events::received::ReceivedEvent::MessageReceived(m) => {
                let checks = m.inline_checks.as_ref().expect("inline checks recorded");
                assert_eq!(checks.spf.as_ref().map(|s| s.result), Some(mailflow_events::verdicts::AuthResult::Pass));
                assert_eq!(m.session.client_hostname.as_deref(), Some("client.example"));
                accepted += 1;
            }
            mailflow_events::received::ReceivedEvent::MessageRejected(r) => {
                assert_eq!(r.reason, mailflow_events::received::RejectReason::Ipv6AuthFailed);
                refused += 1;
            }
            _ => {}
        }
    }
    assert_eq!((accepted, refused), (1, 1));
    Ok(())
}
