//! STARTTLS and the submission listener (spec 5.1: SMTP AUTH client
//! submission), with a certificate made by rcgen and Python's smtplib.

use mailflow_tests::clients::python;
use mailflow_tests::router::{BASE_CONFIG, Router, messages_received};

/// Writes a self-signed certificate for `mx.contoso.test` into the router's
/// future directory and returns the `[server.tls]` and listener sections.
fn tls_config(dir: &std::path::Path) -> anyhow::Result<String> {
    let certified = rcgen::generate_simple_self_signed(vec!["mx.contoso.test".to_string()])?;
    std::fs::write(dir.join("cert.pem"), certified.cert.pem())?;
    std::fs::write(dir.join("key.pem"), certified.signing_key.serialize_pem())?;
    let hash = mailflow_actors::connection::auth::hash_password("correct horse");
    Ok(format!(
        r#"{BASE_CONFIG}
[server.tls]
certificate = {cert:?}
key = {key:?}

[[server.listeners]]
name = "submission"
address = "127.0.0.1:0"
kind = "submission"

[[directory.recipients]]
address = "printer@contoso.com"
password_hash = "{hash}"
"#,
        cert = dir.join("cert.pem").display().to_string(),
        key = dir.join("key.pem").display().to_string(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_is_offered_and_recorded_in_the_received_header_and_the_event() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = tls_config(dir.path())?;
    let mut router = Router::start_in(dir, &config)?;
    let reply = python(
        router.smtp(),
        r#"
s = smtplib.SMTP(ADDR, PORT)
s.ehlo("tls.example")
offered = s.has_extn("starttls")
s.starttls(context=ssl._create_unverified_context())
s.ehlo("tls.example")
again = s.has_extn("starttls")
code, msg = s.sendmail("s@example.net", ["bob@contoso.com"], b"Subject: tls\r\n\r\nsecret\r\n") or (250, b"")
print(json.dumps({"offered": offered, "again": again, "cipher": s.sock.version()}))
"#,
    )?;
    assert_eq!(reply["offered"], true, "{reply}");
    assert_eq!(reply["again"], false, "STARTTLS is not offered inside TLS: {reply}");
    let events = router.received_events().await?;
    let (id, received) = messages_received(&events).into_iter().next().expect("message received");
    let tls = received.session.tls.clone().expect("TLS recorded");
    assert_eq!(tls.protocol, "TLSv1.3");
    assert_eq!(reply["cipher"], "TLSv1.3");
    let log = mailflow_events::log::embedded::EmbeddedLog::open(router.log_path(), Default::default())?;
    let body = mailflow_events::content::load(&log, &id, &received.content).await?;
    let body = String::from_utf8(body)?;
    assert!(body.contains("with ESMTPS\r\n\t(using TLSv1.3 with cipher TLS_AES_"), "IANA name: {body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_submits_with_auth_after_starttls_and_may_relay() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = tls_config(dir.path())?;
    let mut router = Router::start_in(dir, &config)?;
    let reply = python(
        router.listener("submission"),
        r#"
s = smtplib.SMTP(ADDR, PORT)
s.ehlo("printer")
auth_before_tls = s.has_extn("auth")
anonymous = s.mail("printer@contoso.com")
s.rset()
s.starttls(context=ssl._create_unverified_context())
s.ehlo("printer")
anonymous_tls = s.mail("printer@contoso.com")
s.rset()
try:
    s.login("printer@contoso.com", "wrong")
    bad = None
except smtplib.SMTPAuthenticationError as e:
    bad = [e.smtp_code, e.smtp_error.decode()]
s.login("printer@contoso.com", "correct horse")
refused = s.sendmail("printer@contoso.com", ["friend@example.org", "bob@contoso.com"], b"Subject: scan\r\n\r\npdf\r\n")
try:
    s.sendmail("alice@contoso.com", ["bob@contoso.com"], b"Subject: spoof\r\n\r\nx\r\n")
    send_as = None
except smtplib.SMTPSenderRefused as e:
    send_as = [e.smtp_code, e.smtp_error.decode()]
print(json.dumps({"auth_before_tls": auth_before_tls, "anonymous": [anonymous[0], anonymous[1].decode()],
    "anonymous_tls": [anonymous_tls[0], anonymous_tls[1].decode()], "bad": bad, "refused": len(refused), "send_as": send_as}))
"#,
    )?;
    assert_eq!(reply["auth_before_tls"], false, "{reply}");
    assert_eq!(reply["anonymous"][0], 530);
    assert!(reply["anonymous"][1].as_str().unwrap_or_default().starts_with("5.7.0 "), "{reply}");
    assert_eq!(reply["anonymous_tls"][0], 530);
    assert!(reply["anonymous_tls"][1].as_str().unwrap_or_default().starts_with("5.7.57 "), "{reply}");
    assert_eq!(reply["bad"][0], 535);
    assert!(reply["bad"][1].as_str().unwrap_or_default().starts_with("5.7.3 "), "{reply}");
    assert_eq!(reply["refused"], 0, "internal and external recipients accepted: {reply}");
    assert_eq!(reply["send_as"][0], 550);
    assert!(reply["send_as"][1].as_str().unwrap_or_default().starts_with("5.7.60 "), "{reply}");
    let events = router.received_events().await?;
    let (_, received) = messages_received(&events).into_iter().next().expect("message received");
    assert_eq!(received.session.authenticated_as.as_deref(), Some("printer@contoso.com"));
    assert_eq!(received.recipients.len(), 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_sent_with_starttls_in_one_write_are_never_answered_inside_tls() -> anyhow::Result<()> {
    // reliability.md §2.3 T1 (CVE-2011-0411): STARTTLS, RSET and MAIL in one write.
    let dir = tempfile::tempdir()?;
    let config = tls_config(dir.path())?;
    let router = Router::start_in(dir, &config)?;
    let reply = python(
        router.smtp(),
        r#"
c = socket.create_connection((ADDR, PORT)); c.settimeout(10)
f = c.makefile("rb")
f.readline()
c.sendall(b"EHLO injector\r\n")
while True:
    line = f.readline()
    if line[3:4] == b" ": break
c.sendall(b"STARTTLS\r\nRSET\r\nMAIL FROM:<evil@example.net>\r\n")
ready = f.readline().decode()
tls = ssl._create_unverified_context().wrap_socket(c, server_hostname="mx.contoso.test")
tls.sendall(b"EHLO injector\r\n")
first = tls.recv(4096).decode()
print(json.dumps({"ready": ready, "first": first}))
"#,
    )?;
    assert!(reply["ready"].as_str().unwrap_or_default().starts_with("220 2.0.0 "), "{reply}");
    let first = reply["first"].as_str().unwrap_or_default();
    assert!(first.starts_with("250-mx.contoso.test Hello"), "the first reply inside TLS answers EHLO: {first:?}");
    assert!(
        !first.contains("2.1.0") && !first.contains("250 2.0.0 OK"),
        "no reply to the injected commands: {first:?}"
    );
    Ok(())
}
