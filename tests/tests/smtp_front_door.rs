//! The SMTP front door end to end: the real daemon on loopback, driven by
//! Python's smtplib and swaks. Spec references are to `spec/eop-mailflow.md`.

use mailflow_events::content;
use mailflow_events::log::embedded::{EmbeddedLog, Options};
use mailflow_events::received::{ReceivedEvent, RejectReason};
use mailflow_tests::clients::{python, swaks};
use mailflow_tests::router::{BASE_CONFIG, Router, messages_received};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_is_durable_when_250_arrives_even_if_the_router_is_killed_at_once() -> anyhow::Result<()> {
    let mut router = Router::start(BASE_CONFIG)?;
    let reply = python(
        router.smtp(),
        r#"
s = smtplib.SMTP(ADDR, PORT)
s.ehlo("client.example")
s.mail("sender@example.net")
s.rcpt("a.liddell@contoso.com")
code, msg = s.data(b"Subject: durable\r\nMessage-ID: <m1@example.net>\r\n\r\nHello Alice\r\n")
print(json.dumps({"code": code, "msg": msg.decode()}))
"#,
    )?;
    assert_eq!(reply["code"], 250, "{reply}");
    let text = reply["msg"].as_str().unwrap_or_default();
    assert!(text.starts_with("2.0.0 OK <"), "{text}");
    let id = text.trim_start_matches("2.0.0 OK <").split('>').next().unwrap_or_default().to_string();
    // SIGKILL right after the 250: nothing that was acknowledged may be missing.
    let events = router.received_events().await?;
    let received = messages_received(&events)
        .into_iter()
        .find_map(|(message_id, m)| (message_id == id).then_some(m))
        .expect("MessageReceived for the queued id");
    assert_eq!(received.envelope.mail_from, "sender@example.net");
    assert_eq!(received.recipients[0].address, "a.liddell@contoso.com");
    assert_eq!(received.subject.as_deref(), Some("durable"));
    assert_eq!(received.internet_message_id.as_deref(), Some("<m1@example.net>"));
    let log = EmbeddedLog::open(router.log_path(), Options::default())?;
    let body = content::load(&log, &id, &received.content).await?;
    let body = String::from_utf8(body)?;
    assert!(body.starts_with("Received: from client.example (unknown [127.0.0.1])\r\n\tby mx.contoso.test"), "{body}");
    assert!(body.ends_with("Subject: durable\r\nMessage-ID: <m1@example.net>\r\n\r\nHello Alice\r\n"), "{body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaks_pipelines_a_message_and_dbeb_refuses_unknown_recipients() -> anyhow::Result<()> {
    let mut router = Router::start(BASE_CONFIG)?;
    let (code, transcript) =
        swaks(router.smtp(), &["--pipeline", "--from", "s@example.net", "--to", "bob@contoso.com", "--body", "hi"])?;
    assert_eq!(code, 0, "{transcript}");
    assert!(transcript.contains("<-  250 2.0.0 OK <"), "{transcript}");
    // Spec 2.4: DBEB at RCPT, 550 5.4.1.
    let (code, transcript) = swaks(router.smtp(), &["--from", "s@example.net", "--to", "nobody@contoso.com"])?;
    assert_ne!(code, 0);
    assert!(transcript.contains("<** 550 5.4.1 Recipient address rejected: Access denied"), "{transcript}");
    // Spec 2.2: an internal-relay domain accepts unknown recipients.
    let (code, transcript) = swaks(router.smtp(), &["--from", "s@example.net", "--to", "onprem@fabrikam.com"])?;
    assert_eq!(code, 0, "{transcript}");
    // Spec 3.8: no open relay.
    let (_, transcript) = swaks(router.smtp(), &["--from", "s@contoso.com", "--to", "victim@example.org"])?;
    assert!(transcript.contains("<** 550 5.4.1 Relay Access Denied"), "{transcript}");
    let events = router.received_events().await?;
    let refusals: Vec<(String, RejectReason)> = events
        .iter()
        .filter_map(|e| match &e.event {
            ReceivedEvent::RecipientRejected(r) => Some((r.address.clone(), r.reason)),
            _ => None,
        })
        .collect();
    assert!(refusals.contains(&("nobody@contoso.com".into(), RejectReason::UnknownRecipient)), "{refusals:?}");
    assert!(refusals.contains(&("victim@example.org".into(), RejectReason::RelayDenied)), "{refusals:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_per_address_answers_421_and_frees_on_close() -> anyhow::Result<()> {
    let config = BASE_CONFIG
        .replace("hostname = \"mx.contoso.test\"", "hostname = \"mx.contoso.test\"\nmax_connections_per_ip = 2");
    let router = Router::start(&config)?;
    let reply = python(
        router.smtp(),
        r#"
def banner():
    c = socket.create_connection((ADDR, PORT)); c.settimeout(10)
    return c, c.recv(512).decode()
a, first = banner(); b, second = banner(); c, third = banner()
c.close(); a.close()
import time
for _ in range(100):
    d, again = banner(); d.close()
    if again.startswith("220"): break
    time.sleep(0.05)
print(json.dumps([first, second, third, again]))
"#,
    )?;
    assert!(reply[0].as_str().unwrap_or_default().starts_with("220 "), "{reply}");
    assert!(reply[1].as_str().unwrap_or_default().starts_with("220 "), "{reply}");
    assert!(reply[2].as_str().unwrap_or_default().starts_with("421 4.7.0 "), "{reply}");
    assert!(reply[3].as_str().unwrap_or_default().starts_with("220 "), "a closed session frees its slot: {reply}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_closed_at_the_command_timeout() -> anyhow::Result<()> {
    let config = BASE_CONFIG
        .replace("hostname = \"mx.contoso.test\"", "hostname = \"mx.contoso.test\"\ncommand_timeout = \"1s\"");
    let router = Router::start(&config)?;
    let reply = python(
        router.smtp(),
        r#"
c = socket.create_connection((ADDR, PORT)); c.settimeout(20)
banner = c.recv(512).decode()
timeout = c.recv(512).decode()
closed = c.recv(512) == b""
print(json.dumps([banner, timeout, closed]))
"#,
    )?;
    assert!(reply[1].as_str().unwrap_or_default().starts_with("421 4.4.2 "), "{reply}");
    assert_eq!(reply[2], true, "closed after the 421");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nmap_finds_no_open_relay() -> anyhow::Result<()> {
    // reliability.md §2.4: every relay form nmap tries must be refused.
    let router = Router::start(BASE_CONFIG)?;
    let output = std::process::Command::new("nmap")
        // -sV: the script runs on ports identified as SMTP, ours is not 25.
        .args(["-Pn", "-n", "-sV", "--version-light", "-p", &router.smtp().port().to_string()])
        .args(["--script", "smtp-open-relay"])
        .args(["--script-args", "smtp-open-relay.domain=example.org,smtp-open-relay.ip=127.0.0.1", "127.0.0.1"])
        .output()?;
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(report.contains("smtp-open-relay"), "nmap ran the script: {report}");
    assert!(report.contains("Server doesn't seem to be an open relay"), "{report}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggled_end_of_data_sequences_over_tcp_yield_one_refusal_and_no_message() -> anyhow::Result<()> {
    // reliability.md §2.1, over a real socket: each vector in one write, then the real end.
    let mut router = Router::start(BASE_CONFIG)?;
    let reply = python(
        router.smtp(),
        r#"
vectors = [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r.\n", b"\n.\r", b"\r.\r\n", b"\r\n.\r",
           b"\r\n\x00.\r\n", b"\r\n.\x00\r\n", b"\r\n.\r\r\n", b"\r\r\n.\r\r\n", b"\n\n.\r\n", b"\r\n\x00.\r", b"\r\n\x00.\n"]
out = []
for v in vectors:
    c = socket.create_connection((ADDR, PORT)); c.settimeout(10)
    f = c.makefile("rb")
    f.readline()
    c.sendall(b"EHLO x\r\n")
    while f.readline()[3:4] != b" ": pass
    c.sendall(b"MAIL FROM:<s@example.net>\r\nRCPT TO:<bob@contoso.com>\r\nDATA\r\n")
    f.readline(); f.readline(); f.readline()
    c.sendall(b"From: s@example.net\r\n\r\nline" + v + b"MAIL FROM:<smuggled@x>\r\nRCPT TO:<bob@contoso.com>\r\nDATA\r\nSMUGGLED\r\n.\r\n")
    first = f.readline().decode()
    c.sendall(b"QUIT\r\n")
    second = f.readline().decode()
    out.append([first, second])
    c.close()
print(json.dumps(out))
"#,
    )?;
    for pair in reply.as_array().into_iter().flatten() {
        let first = pair[0].as_str().unwrap_or_default();
        assert!(first.starts_with("550 5.6.11 "), "one refusal per vector: {pair}");
        assert!(
            pair[1].as_str().unwrap_or_default().starts_with("221 "),
            "then QUIT is answered, nothing else: {pair}"
        );
    }
    let events = router.received_events().await?;
    assert!(
        !events.iter().any(|e| matches!(e.event, ReceivedEvent::MessageReceived(_))),
        "no message was accepted, smuggled or not"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_drip_client_is_closed_at_the_session_timeout() -> anyhow::Result<()> {
    // reliability.md §2.6: a NOOP every half second keeps the idle timer happy,
    // the session deadline still ends it.
    let config = BASE_CONFIG
        .replace("hostname = \"mx.contoso.test\"", "hostname = \"mx.contoso.test\"\nsession_timeout = \"2s\"");
    let router = Router::start(&config)?;
    let reply = python(
        router.smtp(),
        r#"
import time
c = socket.create_connection((ADDR, PORT)); c.settimeout(10)
f = c.makefile("rb")
f.readline()
start = time.time()
last = ""
while time.time() - start < 8:
    try:
        c.sendall(b"NOOP\r\n")
        last = f.readline().decode()
    except OSError:
        break
    if not last.startswith("250"):
        break
    time.sleep(0.5)
print(json.dumps({"last": last, "seconds": time.time() - start}))
"#,
    )?;
    assert!(reply["last"].as_str().unwrap_or_default().starts_with("421 4.4.2 "), "{reply}");
    assert!(reply["seconds"].as_f64().unwrap_or(99.0) < 5.0, "closed near the 2 s deadline: {reply}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailflow_replay_shows_the_events_of_a_running_router() -> anyhow::Result<()> {
    let router = Router::start(BASE_CONFIG)?;
    let (code, transcript) = swaks(router.smtp(), &["--from", "s@example.net", "--to", "bob@contoso.com"])?;
    assert_eq!(code, 0, "{transcript}");
    let (_, _) = swaks(router.smtp(), &["--from", "s@example.net", "--to", "nobody@contoso.com"])?;
    let config = router.config_path().display().to_string();
    let run = mailflow_tests::router::cli(&["replay", "--json", "--config", &config])?;
    assert!(run.status == 0, "{}", run.stderr);
    let lines: Vec<serde_json::Value> = run.stdout.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    let types: Vec<&str> = lines.iter().filter_map(|l| l["event"]["type"].as_str()).collect();
    assert!(types.contains(&"MessageReceived"), "{types:?}");
    assert!(types.contains(&"RecipientRejected"), "{types:?}");
    assert!(lines.iter().all(|l| l["topic"] == "mailflow.received" && l["offset"].is_u64()));
    Ok(())
}
