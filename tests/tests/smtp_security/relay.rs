//! Reliability notes §2.4, open relay: nmap's `smtp-open-relay` on every
//! listener of a router with several, the address forms it tries answered
//! one by one (nmap gives up on most of them at MAIL, see below), and a
//! quoted local part that must not lose its quotes.

use std::net::SocketAddr;

use mailflow_events::received::{ReceivedEvent, RejectReason};

use super::{accepted, connect_ehlo, expect, open_data, start_secured};

/// Runs nmap's `smtp-open-relay` against `server`; returns the script's verdict line.
fn nmap_open_relay(server: SocketAddr) -> anyhow::Result<String> {
    let output = std::process::Command::new("nmap")
        // `+` runs the script whatever service nmap guesses for the port
        // (our ports are not 25/465/587), without slow version detection.
        .args(["-Pn", "-n", "-p", &server.port().to_string(), "--script", "+smtp-open-relay"])
        .args(["--script-args", "smtp-open-relay.domain=example.org,smtp-open-relay.ip=127.0.0.1"])
        .arg(server.ip().to_string())
        .output()?;
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    let verdict = report.lines().find_map(|l| l.split_once("smtp-open-relay: ").map(|(_, v)| v.to_string()));
    verdict.ok_or_else(|| anyhow::anyhow!("nmap did not run the script: {report}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nmap_finds_no_open_relay_on_any_listener() -> anyhow::Result<()> {
    let edge = "[[server.listeners]]\nname = \"edge\"\naddress = \"127.0.0.1:0\"\n";
    let (router, _pki) = start_secured("", edge)?;
    for name in ["smtp", "edge"] {
        let verdict = nmap_open_relay(router.listener(name))?;
        assert_eq!(verdict, "Server doesn't seem to be an open relay, all tests failed", "{name}");
    }
    let verdict = nmap_open_relay(router.listener("submission"))?;
    assert_eq!(verdict, "Server isn't an open relay, authentication needed", "submission");

    // The same scan does see a relay where one is configured: the client's
    // address is an on-premises connector's, which relays for senders in our
    // domains (spec 4.7), and nmap's third sender is `antispam@<banner name>`.
    let onprem = "[[inbound_connectors]]\nname = \"onprem\"\nkind = \"on_premises\"\nsender_ip_addresses = [\"127.0.0.1\"]\n\n\
                  [[accepted_domains]]\nname = \"mx.contoso.test\"\n";
    let (relaying, _pki) = start_secured("", onprem)?;
    let verdict = nmap_open_relay(relaying.smtp())?;
    assert_eq!(verdict, "Server is an open relay (1/16 tests)");
    Ok(())
}

/// nmap's sixteen recipient forms (domain `example.org`, server name
/// `mx.contoso.test`, address `127.0.0.1`) and the §2.4 edge cases, with the
/// reply each must get from an anonymous client. nmap sends all but the first
/// three from `antispam@[127.0.0.1]`, an address literal MAIL accepts (RFC 5321
/// §4.1.3); they are asked here from an ordinary sender. A literal recipient
/// domain is never ours, so it is refused like any outside domain; what is
/// not a mailbox (two unquoted `@`, a literal in a source route) is a syntax error.
const RELAY_FORMS: [(&str, &str, &str); 19] = [
    ("relaytest@example.org", "550 5.4.1", "Relay Access Denied"),
    ("relaytest%example.org@[127.0.0.1]", "550 5.4.1", "Relay Access Denied"),
    ("relaytest%example.org@mx.contoso.test", "550 5.4.1", "Relay Access Denied"),
    ("\"relaytest@example.org\"", "501 5.1.3", ""),
    ("\"relaytest%example.org\"", "501 5.1.3", ""),
    ("relaytest@example.org@[127.0.0.1]", "501 5.1.3", ""),
    ("\"relaytest@example.org\"@[127.0.0.1]", "550 5.4.1", "Relay Access Denied"),
    ("relaytest@example.org@mx.contoso.test", "501 5.1.3", ""),
    ("@[127.0.0.1]:relaytest@example.org", "501 5.1.3", ""),
    // A source route is ignored (RFC 5321 §3.6.1); the relay check applies to what follows it.
    ("@mx.contoso.test:relaytest@example.org", "550 5.4.1", "Relay Access Denied"),
    ("@contoso.com:relaytest@example.org", "550 5.4.1", "Relay Access Denied"),
    ("@a.example,@b.example:relaytest@example.org", "550 5.4.1", "Relay Access Denied"),
    ("example.org!relaytest", "501 5.1.3", ""),
    ("example.org!relaytest@[127.0.0.1]", "550 5.4.1", "Relay Access Denied"),
    ("example.org!relaytest@mx.contoso.test", "550 5.4.1", "Relay Access Denied"),
    // In our authoritative domain, percent hack and quotes name no recipient of the directory.
    ("relaytest%example.org@contoso.com", "550 5.4.1", "Recipient address rejected: Access denied"),
    ("\"relaytest@example.org\"@contoso.com", "550 5.4.1", "Recipient address rejected: Access denied"),
    ("relaytest@[127.0.0.1]", "550 5.4.1", "Relay Access Denied"),
    ("relaytest@", "501 5.1.3", ""),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_relay_form_is_refused_at_rcpt_on_every_anonymous_listener() -> anyhow::Result<()> {
    let edge = "[[server.listeners]]\nname = \"edge\"\naddress = \"127.0.0.1:0\"\n";
    let (mut router, _pki) = start_secured("", edge)?;
    for name in ["smtp", "edge"] {
        // Two sessions: each refusal counts toward max_errors (20).
        for forms in RELAY_FORMS.chunks(10) {
            let (mut wire, _) = connect_ehlo(router.listener(name)).await?;
            expect(&wire.command("MAIL FROM:<antispam@example.net>").await?, "250 2.1.0", "MAIL");
            for (form, status, text) in forms {
                let reply = wire.command(&format!("RCPT TO:<{form}>")).await?;
                expect(&reply, status, &format!("{name}: {form}"));
                if !text.is_empty() {
                    assert_eq!(reply.lines[0], format!("{} {text}", &status[4..]), "{name}: {form}");
                }
            }
            expect(&wire.command("DATA").await?, "503 5.5.1", "no recipient was accepted");
        }
    }
    let events = router.received_events().await?;
    let relay_denied = events
        .iter()
        .filter(|e| matches!(&e.event, ReceivedEvent::RecipientRejected(r) if r.reason == RejectReason::RelayDenied))
        .count();
    let expected = RELAY_FORMS.iter().filter(|(_, _, text)| *text == "Relay Access Denied").count();
    assert_eq!(relay_denied, 2 * expected, "each relay refusal is recorded");
    assert!(!events.iter().any(|e| matches!(e.event, ReceivedEvent::MessageReceived(_))));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quoted_local_part_keeps_its_quotes_through_an_internal_relay_domain() -> anyhow::Result<()> {
    // `"relaytest@example.org"@fabrikam.com` is a mailbox of fabrikam.com (an
    // internal-relay domain, any local part taken). Recorded without its
    // quotes it would read `relaytest@example.org@fabrikam.com`, which the
    // router itself refuses and a next hop may route to example.org.
    let (mut router, _pki) = start_secured("", "")?;
    let (mut wire, _) = connect_ehlo(router.smtp()).await?;
    open_data(&mut wire, "s@example.net", "\"relaytest@example.org\"@fabrikam.com").await?;
    wire.send(b"Subject: quoted\r\n\r\nhi\r\n.\r\n").await?;
    expect(&wire.reply().await?, "250 2.0.0", "end of data");
    let (_, messages) = accepted(&mut router).await?;
    let recipients: Vec<&str> =
        messages.iter().flat_map(|(_, m)| m.recipients.iter().map(|r| r.address.as_str())).collect();
    assert_eq!(recipients, ["\"relaytest@example.org\"@fabrikam.com"]);
    Ok(())
}
