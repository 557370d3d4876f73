//! Inbound connectors end to end (spec 4.2, 4.3, 4.7, 4.8): the client
//! connects from loopback aliases (127.0.0.2, 127.0.0.3, …), which stand for an
//! on-premises server and a partner's relay.

use mailflow_events::received::ConnectorKind;
use mailflow_tests::clients::python;
use mailflow_tests::router::{BASE_CONFIG, Router, messages_received};

fn config() -> String {
    format!(
        r#"{BASE_CONFIG}
[[inbound_connectors]]
name = "contoso-onprem"
kind = "on_premises"
sender_ip_addresses = ["127.0.0.2/32"]

[[inbound_connectors]]
name = "woodgrove"
kind = "partner"
sender_domains = ["woodgrove.com"]
sender_ip_addresses = ["127.0.0.3"]
restrict_domains_to_ip_addresses = true
"#
    )
}

/// `send(source, sender, rcpt)` → "code text" of the RCPT reply, or of the DATA reply when RCPT passed.
const SEND: &str = r#"
def send(source, sender, rcpt):
    s = smtplib.SMTP(ADDR, PORT, source_address=(source, 0))
    s.ehlo("mx.example")
    s.mail(sender)
    code, msg = s.rcpt(rcpt)
    if code == 250:
        code, msg = s.data(b"Subject: relay\r\n\r\nbody\r\n")
    s.quit()
    return "%d %s" % (code, msg.decode())
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_on_premises_connector_relays_and_only_for_accepted_sender_domains() -> anyhow::Result<()> {
    let mut router = Router::start(&config())?;
    let script = format!(
        "{SEND}\nprint(json.dumps([send('127.0.0.2', 'app@contoso.com', 'partner@example.org'), \
         send('127.0.0.2', 'someone@notours.example', 'partner@example.org'), \
         send('127.0.0.1', 'app@contoso.com', 'partner@example.org')]))"
    );
    let reply = python(router.smtp(), &script)?;
    assert!(reply[0].as_str().unwrap_or_default().starts_with("250 2.0.0 OK <"), "on-prem relays: {reply}");
    assert!(
        reply[1].as_str().unwrap_or_default().starts_with("550 5.7.64 TenantAttribution; Relay Access Denied"),
        "spec 4.7: sender domain not ours: {reply}"
    );
    assert!(reply[2].as_str().unwrap_or_default().starts_with("550 5.4.1 Relay Access Denied"), "anonymous: {reply}");
    let events = router.received_events().await?;
    let (_, relayed) = messages_received(&events).into_iter().next().expect("the relayed message");
    let connector = relayed.connector.expect("the connector is recorded");
    assert_eq!((connector.name.as_str(), connector.kind), ("contoso-onprem", ConnectorKind::OnPremises));
    assert_eq!(relayed.recipients[0].accepted_domain, None, "relayed, not one of ours");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restricting_partner_connector_admits_only_its_addresses() -> anyhow::Result<()> {
    // Spec 4.3 T: restricted to the partner's address, 550 5.7.51 from anywhere else.
    let mut router = Router::start(&config())?;
    let script = format!(
        "{SEND}\nprint(json.dumps([send('127.0.0.1', 'ceo@woodgrove.com', 'alice@contoso.com'), \
         send('127.0.0.3', 'ceo@woodgrove.com', 'alice@contoso.com'), \
         send('127.0.0.1', 'someone@other.example', 'alice@contoso.com')]))"
    );
    let reply = python(router.smtp(), &script)?;
    assert!(reply[0].as_str().unwrap_or_default().starts_with("550 5.7.51 TenantInboundAttribution;"), "{reply}");
    assert!(reply[1].as_str().unwrap_or_default().starts_with("250 2.0.0 OK <"), "{reply}");
    assert!(
        reply[2].as_str().unwrap_or_default().starts_with("250 2.0.0 OK <"),
        "other senders are not governed: {reply}"
    );
    let events = router.received_events().await?;
    let connectors: Vec<Option<String>> =
        messages_received(&events).into_iter().map(|(_, m)| m.connector.map(|c| c.name)).collect();
    assert!(connectors.contains(&Some("woodgrove".to_string())), "the partner connector is recorded: {connectors:?}");
    assert!(connectors.contains(&None), "mail outside its scope matches no connector: {connectors:?}");
    Ok(())
}

/// A CA, a server certificate and a client certificate for `mail.contoso.com`,
/// written into `dir`; returns the configuration with TLS and a
/// certificate-identified on-premises connector.
fn certificate_config(dir: &std::path::Path) -> anyhow::Result<String> {
    let ca = mailflow_tests::pki::TestCa::new()?;
    let (server, server_key) = ca.issue("mx.contoso.test")?;
    let (client, client_key) = ca.issue("mail.contoso.com")?;
    let write = |name: &str, pem: String| std::fs::write(dir.join(name), pem);
    write("ca.pem", ca.pem())?;
    write("server.pem", server)?;
    write("server-key.pem", server_key)?;
    write("client.pem", client)?;
    write("client-key.pem", client_key)?;
    let path = |name: &str| dir.join(name).display().to_string();
    Ok(format!(
        r#"{BASE_CONFIG}
[server.tls]
certificate = {server:?}
key = {key:?}
client_ca = {ca:?}

[[inbound_connectors]]
name = "contoso-onprem-cert"
kind = "on_premises"
tls_sender_certificate_name = "*.contoso.com"
"#,
        server = path("server.pem"),
        key = path("server-key.pem"),
        ca = path("ca.pem"),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_identifies_the_on_premises_connector_for_any_sender_domain() -> anyhow::Result<()> {
    // Spec 4.2 (identified by certificate) and 4.7 (b)(ii): relaying for a sender
    // domain that is not ours is allowed when the certificate names one of ours.
    let dir = tempfile::tempdir()?;
    let config = certificate_config(dir.path())?;
    let client = dir.path().join("client.pem").display().to_string();
    let client_key = dir.path().join("client-key.pem").display().to_string();
    let mut router = Router::start_in(dir, &config)?;
    let script = format!(
        r#"
def send(certificate, sender):
    s = smtplib.SMTP(ADDR, PORT)
    s.ehlo("mail.contoso.com")
    context = ssl._create_unverified_context()
    if certificate:
        context.load_cert_chain({client:?}, {client_key:?})
    s.starttls(context=context)
    s.ehlo("mail.contoso.com")
    s.mail(sender)
    code, msg = s.rcpt("forwarded@example.org")
    if code == 250:
        code, msg = s.data(b"Subject: forwarded\r\n\r\nbody\r\n")
    s.quit()
    return "%d %s" % (code, msg.decode())
print(json.dumps([send(True, "someone@fabrikam-partner.example"), send(True, ""), send(False, "someone@fabrikam-partner.example")]))
"#
    );
    let reply = python(router.smtp(), &script)?;
    assert!(reply[0].as_str().unwrap_or_default().starts_with("250 2.0.0 OK <"), "sending as another domain: {reply}");
    assert!(reply[1].as_str().unwrap_or_default().starts_with("250 2.0.0 OK <"), "an NDR from <>: {reply}");
    assert!(
        reply[2].as_str().unwrap_or_default().starts_with("550 5.4.1 Relay Access Denied"),
        "no certificate: {reply}"
    );
    let events = router.received_events().await?;
    let received = messages_received(&events);
    assert_eq!(received.len(), 2);
    for (_, message) in received {
        assert_eq!(message.connector.map(|c| c.name), Some("contoso-onprem-cert".to_string()));
        let tls = message.session.tls.expect("over TLS");
        assert_eq!(tls.client_certificate_names, vec!["mail.contoso.com".to_string()]);
    }
    Ok(())
}
