//! Mail flow into the organisation's own mailboxes (spec 8.1: all mailboxes in
//! the service), end to end through every role: SMTP → verdict → routing →
//! delivery into Maildir, and NDRs back into the sender's mailbox (spec 13).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mailflow_tests::clients::python;
use mailflow_tests::dns::DnsServer;
use mailflow_tests::router::{BASE_CONFIG, Router};

/// Files in `<root>/<mailbox>/<folder>new/`, waiting until there are `count`.
fn wait_for_mail(root: &Path, mailbox: &str, folder: &str, count: usize) -> anyhow::Result<Vec<String>> {
    let dir = root.join(mailbox).join(folder).join("new");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(&dir).map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default();
        if files.len() >= count {
            files.sort();
            return files.iter().map(|f| Ok(std::fs::read_to_string(f)?)).collect();
        }
        if Instant::now() > deadline {
            anyhow::bail!("{} holds {} messages, expected {count}", dir.display(), files.len());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn send(router: &Router, sender: &str, recipients: &[&str], subject: &str, body: &str) -> anyhow::Result<()> {
    let script = format!(
        r#"
s = smtplib.SMTP(ADDR, PORT)
s.ehlo("client.example")
s.sendmail({sender:?}, {recipients:?}, b"From: {sender}\r\nSubject: {subject}\r\nMessage-ID: <{subject}@client.example>\r\n\r\n{body}\r\n")
s.quit()
print(json.dumps("sent"))
"#
    );
    python(router.smtp(), &script)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_for_our_mailboxes_lands_in_maildir_with_its_verdict_headers_and_gtube_in_junk() -> anyhow::Result<()> {
    let dns = DnsServer::start("")?;
    let config = format!("{BASE_CONFIG}\n[dns]\nnameservers = [\"{}\"]\n", dns.address);
    let router = Router::start(&config)?;
    let mail = router.dir.path().join("mail");
    send(&router, "news@example.net", &["a.liddell@contoso.com", "bob@contoso.com"], "clean", "hello")?;
    send(
        &router,
        "news@example.net",
        &["alice@contoso.com"],
        "gtube",
        "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X",
    )?;

    // The alias reaches the mailbox of the primary address.
    let alice = wait_for_mail(&mail, "alice@contoso.com", "", 1)?;
    let bob = wait_for_mail(&mail, "bob@contoso.com", "", 1)?;
    for copy in [&alice[0], &bob[0]] {
        assert!(copy.contains("Subject: clean\r\n"), "{copy}");
        assert!(copy.starts_with("Authentication-Results: mx.contoso.test;"), "verdict headers come first: {copy}");
        assert!(copy.contains("X-MS-Exchange-Organization-SCL: 1\r\n"), "{copy}");
        assert!(copy.contains("X-Forefront-Antispam-Report: CIP:127.0.0.1;"), "{copy}");
        assert!(copy.contains("\r\nReceived: from client.example"), "the front door's Received: {copy}");
    }
    // Spec 9.3: high-confidence spam is moved to the Junk Email folder.
    let junk = wait_for_mail(&mail, "alice@contoso.com", ".Junk/", 1)?;
    assert!(junk[0].contains("Subject: gtube\r\n"), "{}", junk[0]);
    assert!(junk[0].contains("SFV:SPM;"), "{}", junk[0]);
    assert_eq!(wait_for_mail(&mail, "alice@contoso.com", "", 1)?.len(), 1, "GTUBE did not reach the inbox");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeliverable_outbound_mail_comes_back_as_an_ndr_in_the_senders_mailbox() -> anyhow::Result<()> {
    // The on-premises server (127.0.0.1 here) relays its users' mail out
    // through us; the recipients' domains take no mail.
    let zone = "nullmx.example. 300 IN MX 0 .\n";
    let dns = DnsServer::start(zone)?;
    let config = format!(
        "{BASE_CONFIG}\n[dns]\nnameservers = [\"{}\"]\n\n[[inbound_connectors]]\nname = \"onprem\"\nkind = \"on_premises\"\nsender_ip_addresses = [\"127.0.0.1\"]\n",
        dns.address
    );
    let router = Router::start(&config)?;
    let mail = router.dir.path().join("mail");
    send(&router, "alice@contoso.com", &["x@nullmx.example"], "null-mx", "hello")?;
    let ndr = wait_for_mail(&mail, "alice@contoso.com", "", 1)?;
    let ndr = &ndr[0];
    // RFC 7505: a null MX fails at once with 556 5.1.10.
    for line in [
        "From: Mail Delivery System <postmaster@contoso.com>",
        "Subject: Undeliverable: null-mx",
        "Content-Type: multipart/report; report-type=delivery-status",
        "Final-Recipient: rfc822;x@nullmx.example",
        "Action: failed",
        "Status: 5.1.10",
        "Diagnostic-Code: smtp;556 5.1.10 Recipient address has null MX",
        "Message-ID: <null-mx@client.example>",
    ] {
        assert!(ndr.contains(line), "missing `{line}` in\n{ndr}");
    }
    assert!(ndr.contains("X-MS-Exchange-Organization-SCL: -1"), "an NDR skips filtering: {ndr}");

    // A domain that does not exist: 550 5.4.4 (spec 13.3), again as an NDR.
    send(&router, "alice@contoso.com", &["y@nowhere.example"], "nxdomain", "hello")?;
    let both = wait_for_mail(&mail, "alice@contoso.com", "", 2)?;
    let second = both.iter().find(|m| m.contains("Undeliverable: nxdomain")).expect("second NDR");
    assert!(second.contains("Status: 5.4.4"), "{second}");

    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_that_loops_back_to_us_ends_in_an_ndr_for_hop_count_exceeded() -> anyhow::Result<()> {
    // Spec 6.5 T: a smart host pointing back at ourselves. Every pass adds a
    // Received: header; past the limit the front door refuses the message
    // (554 5.4.14), delivery fails it, and the sender gets the NDR.
    let dns = DnsServer::start("")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let config = BASE_CONFIG
        .replace("address = \"127.0.0.1:0\"", &format!("address = \"127.0.0.1:{port}\""))
        .replace("hostname = \"mx.contoso.test\"", "hostname = \"mx.contoso.test\"\nmax_received_headers = 10");
    let config = format!(
        "{config}\n[dns]\nnameservers = [\"{}\"]\n\n[[inbound_connectors]]\nname = \"onprem\"\nkind = \"on_premises\"\nsender_ip_addresses = [\"127.0.0.1\"]\n\n[[outbound_connectors]]\nname = \"loop\"\nkind = \"partner\"\nrecipient_domains = [\"loop.example\"]\nsmart_hosts = [\"127.0.0.1:{port}\"]\n",
        dns.address
    );
    let router = Router::start(&config)?;
    let mail = router.dir.path().join("mail");
    send(&router, "alice@contoso.com", &["x@loop.example"], "looping", "round and round")?;
    let ndr = wait_for_mail(&mail, "alice@contoso.com", "", 1)?;
    let ndr = &ndr[0];
    assert!(ndr.contains("Status: 5.4.14"), "{ndr}");
    assert!(ndr.contains("Diagnostic-Code: smtp;554 5.4.14 Hop count exceeded - possible mail loop"), "{ndr}");
    assert!(ndr.contains("Subject: Undeliverable: looping"), "{ndr}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_success_brings_a_delivered_or_relayed_notice_and_a_dsn_capable_next_hop_gets_the_parameter()
-> anyhow::Result<()> {
    // Issue "NDRs": DSN NOTIFY honoured (RFC 3461 §4.2, RFC 3464 §2.3.3).
    // NOTIFY=SUCCESS: `delivered` for a copy in our mailbox store, `relayed`
    // for one handed to a next hop without DSN; a next hop with DSN gets the
    // NOTIFY parameter and no notice comes from us; NOTIFY=FAILURE alone, none.
    use mailflow_tests::sink::{Script, Sink};
    let dns = DnsServer::start("")?;
    let plain = Sink::start(Script::smtp().extensions(&["PIPELINING", "8BITMIME", "SIZE 10485760"])).await?;
    let capable = Sink::start(Script::smtp()).await?;
    let config = format!(
        "{BASE_CONFIG}\n[dns]\nnameservers = [\"{}\"]\n\n[[inbound_connectors]]\nname = \"onprem\"\nkind = \"on_premises\"\n\
         sender_ip_addresses = [\"127.0.0.1\"]\n\n\
         [[outbound_connectors]]\nname = \"plain\"\nkind = \"partner\"\nrecipient_domains = [\"plain.example\"]\n\
         smart_hosts = [\"127.0.0.1:{}\"]\n\n\
         [[outbound_connectors]]\nname = \"capable\"\nkind = \"partner\"\nrecipient_domains = [\"capable.example\"]\n\
         smart_hosts = [\"127.0.0.1:{}\"]\n",
        dns.address,
        plain.address.port(),
        capable.address.port()
    );
    let router = Router::start(&config)?;
    let script = r#"
s = smtplib.SMTP(ADDR, PORT)
s.ehlo("onprem.contoso.com")
content = b"From: alice@contoso.com\r\nSubject: quarterly figures\r\n\r\nattached\r\n"
s.mail("alice@contoso.com", ["RET=HDRS", "ENVID=Q4-42"])
for rcpt, notify in [("bob@contoso.com", "SUCCESS"), ("x@plain.example", "SUCCESS,FAILURE"),
                     ("y@plain.example", "FAILURE"), ("z@capable.example", "SUCCESS")]:
    code, text = s.rcpt(rcpt, ["NOTIFY=" + notify])
    assert code == 250, (rcpt, code, text)
code, text = s.data(content)
assert code == 250, (code, text)
s.quit()
print(json.dumps("sent"))
"#;
    python(router.smtp(), script)?;
    let mail = router.dir.path().join("mail");
    // bob's copy, then two notices in alice's mailbox: delivered and relayed.
    wait_for_mail(&mail, "bob@contoso.com", "", 1)?;
    let notices = wait_for_mail(&mail, "alice@contoso.com", "", 2)?;
    let delivered = notices.iter().find(|n| n.contains("Subject: Delivered: quarterly figures"));
    let delivered = delivered.unwrap_or_else(|| panic!("no delivered notice: {notices:?}"));
    assert!(delivered.contains("Action: delivered"), "{delivered}");
    assert!(delivered.contains("Final-Recipient: rfc822;bob@contoso.com"), "{delivered}");
    assert!(delivered.contains("Status: 2.0.0"), "{delivered}");
    assert!(delivered.contains("Original-Envelope-Id: Q4-42"), "{delivered}");
    assert!(delivered.contains("report-type=delivery-status"), "{delivered}");
    assert!(!delivered.contains("x@plain.example"), "one notice per delivered copy: {delivered}");
    let relayed = notices.iter().find(|n| n.contains("Subject: Relayed: quarterly figures"));
    let relayed = relayed.unwrap_or_else(|| panic!("no relayed notice: {notices:?}"));
    assert!(relayed.contains("Action: relayed"), "{relayed}");
    assert!(relayed.contains("Final-Recipient: rfc822;x@plain.example"), "{relayed}");
    assert!(relayed.contains("Remote-MTA: dns;127.0.0.1"), "{relayed}");
    assert!(!relayed.contains("y@plain.example"), "NOTIFY=FAILURE asks for no success notice: {relayed}");
    // The DSN-capable next hop was handed the parameter; no third notice comes.
    let deadline = Instant::now() + Duration::from_secs(10);
    while capable.received().is_empty() {
        anyhow::ensure!(Instant::now() < deadline, "capable.example never got its copy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rcpt = capable.command_lines().into_iter().find(|l| l.starts_with("RCPT TO:<z@capable.example>"));
    assert_eq!(rcpt.as_deref(), Some("RCPT TO:<z@capable.example> NOTIFY=SUCCESS"));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let all = wait_for_mail(&mail, "alice@contoso.com", "", 2)?;
    assert_eq!(all.len(), 2, "no notice for the copy the DSN-capable hop took: {all:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_still_deferred_after_delay_notice_after_brings_its_sender_one_delay_notice_even_across_a_restart()
-> anyhow::Result<()> {
    // Issue "NDRs": DSN NOTIFY honoured. NOTIFY=DELAY, or no NOTIFY (the
    // router's default is FAILURE,DELAY, spec R-05), gets one `Action:
    // delayed` notice once the message has waited `delay_notice_after`;
    // NOTIFY=FAILURE gets none. The notice is recorded on the `Deferred`, so
    // the state rebuilt after a kill -9 knows it was sent.
    use mailflow_tests::router::relay_config;
    use mailflow_tests::sink::Sink;
    let zone: String = ["example.org", "example.net", "example.com"]
        .iter()
        .map(|d| format!("{d}. 300 IN MX 10 mx.{d}.\nmx.{d}. 300 IN A 127.0.0.1\n"))
        .collect();
    let dns = DnsServer::start(&zone)?;
    let closed = Sink::closed_port()?;
    let config = relay_config(&dns, closed.port(), "retry_schedule = [\"1s\"]\ndelay_notice_after = \"2s\"");
    let router = Router::start(&config)?;
    let script = r#"
s = smtplib.SMTP(ADDR, PORT)
s.ehlo("onprem.contoso.com")
for rcpt, options in [("bob@example.org", ["NOTIFY=DELAY,FAILURE"]), ("x@example.net", []),
                      ("y@example.com", ["NOTIFY=FAILURE"])]:
    s.mail("alice@contoso.com")
    code, text = s.rcpt(rcpt, options)
    assert code == 250, (rcpt, code, text)
    code, text = s.data(("From: alice@contoso.com\r\nSubject: for %s\r\n\r\nbody\r\n" % rcpt).encode())
    assert code == 250, (code, text)
s.quit()
print(json.dumps("sent"))
"#;
    python(router.smtp(), script)?;
    let mail = router.dir.path().join("mail");
    let notices = wait_for_mail(&mail, "alice@contoso.com", "", 2)?;
    for (rcpt, notice) in [("bob@example.org", "for bob@example.org"), ("x@example.net", "for x@example.net")] {
        let text = notices
            .iter()
            .find(|n| n.contains(&format!("Subject: Delivery delayed: {notice}")))
            .unwrap_or_else(|| panic!("no delay notice for {rcpt}: {notices:?}"));
        assert!(text.contains("Action: delayed"), "{text}");
        assert!(text.contains(&format!("Final-Recipient: rfc822;{rcpt}")), "{text}");
        assert!(text.contains("Status: 4.4.316"), "the deferral's reason: {text}");
    }
    // Retries go on every second; no second notice, and none for NOTIFY=FAILURE.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let notices = wait_for_mail(&mail, "alice@contoso.com", "", 2)?;
    assert_eq!(notices.len(), 2, "one notice per message: {notices:?}");
    // After a kill -9 the replayed state knows the notices went out.
    let router = Router::start_in(router.into_dir(), &config)?;
    router.wait_ready().await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mail = router.dir.path().join("mail");
    let notices = wait_for_mail(&mail, "alice@contoso.com", "", 2)?;
    assert_eq!(notices.len(), 2, "no notice again after the restart: {notices:?}");
    Ok(())
}

/// A rolling upgrade to binary content chunks (`[event_log]
/// content_encoding`): content one run wrote as JSON chunks is read back by
/// the next run, which writes binary chunks, and by `mailflow archive`; one
/// log holds both forms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_content_chunks_of_an_earlier_run_are_read_next_to_binary_ones() -> anyhow::Result<()> {
    use mailflow_events::content::{self, BINARY_MAGIC};
    use mailflow_events::log::EventLog as _;
    use mailflow_events::log::embedded::EmbeddedLog;

    let dns = DnsServer::start("")?;
    let dir = tempfile::tempdir()?;
    let log_path = dir.path().join("log").display().to_string();
    let config = |encoding: &str| {
        format!(
            "{BASE_CONFIG}\n[dns]\nnameservers = [\"{}\"]\n[event_log]\nkind = \"embedded\"\npath = {log_path:?}\n\
             content_encoding = \"{encoding}\"\n",
            dns.address
        )
    };
    let mut router = Router::start_in(dir, &config("json"))?;
    let mail = router.dir.path().join("mail");
    send(&router, "news@example.net", &["alice@contoso.com"], "written-as-json", "first")?;
    wait_for_mail(&mail, "alice@contoso.com", "", 1)?;
    router.terminate(Duration::from_secs(30))?;

    let router = Router::start_in(router.into_dir(), &config("binary"))?;
    send(&router, "news@example.net", &["alice@contoso.com"], "written-as-binary", "second")?;
    let copies = wait_for_mail(&mail, "alice@contoso.com", "", 2)?;
    for subject in ["written-as-json", "written-as-binary"] {
        assert!(copies.iter().any(|copy| copy.contains(&format!("Subject: {subject}\r\n"))), "{copies:?}");
    }

    // The archive, a reader that started after both, takes either form.
    let out = router.dir.path().join("archive");
    let run = mailflow_tests::router::cli(&[
        "archive",
        "--json",
        "--config",
        &router.config_path().display().to_string(),
        "--out",
        &out.display().to_string(),
    ])?;
    assert_eq!(run.status, 0, "{}", run.stderr);
    let mut archived = Vec::new();
    for entry in std::fs::read_dir(&out)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "eml") {
            archived.push(std::fs::read_to_string(path)?);
        }
    }
    for (subject, body) in [("written-as-json", "first"), ("written-as-binary", "second")] {
        assert!(
            archived
                .iter()
                .any(|eml| eml.contains(&format!("Subject: {subject}\r\n"))
                    && eml.ends_with(&format!("\r\n\r\n{body}\r\n"))),
            "{subject} archived whole: {archived:?}"
        );
    }

    // The log: one JSON chunk, then one binary chunk, each decoding.
    let log = EmbeddedLog::open_read_only(&log_path)?;
    let mut forms = Vec::new();
    for partition in 0..log.partitions(mailflow_events::topic::CONTENT)? {
        for record in log.read(mailflow_events::topic::CONTENT, partition, 0, 100).await? {
            let chunk = content::decode(&record.value)?;
            forms.push((chunk.occurred_at, record.value.starts_with(&BINARY_MAGIC)));
        }
    }
    forms.sort();
    let binary: Vec<bool> = forms.into_iter().map(|(_, binary)| binary).collect();
    assert_eq!(binary, [false, true], "the first run wrote JSON, the second binary");
    Ok(())
}
