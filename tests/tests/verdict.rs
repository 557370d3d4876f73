//! The verdict role end to end: messages accepted over SMTP are judged from
//! the log, with SPF, DKIM, DMARC and iprev against a real DNS server on
//! loopback (spec 9, 10). Read while the router runs, from a read-only view of
//! its log.

use std::collections::HashMap;

use anyhow::Context as _;

use mailflow_events::Envelope;
use mailflow_events::verdicts::{AuthResult, PolicyAction, SpamVerdict, VerdictEvent, VerdictReached};
use mailflow_tests::clients::python;
use mailflow_tests::dns::DnsServer;
use mailflow_tests::router::{BASE_CONFIG, Router, messages_received};

const ZONE: &str = "pass.example. 300 IN TXT \"v=spf1 ip4:127.0.0.1 -all\"\n\
spoofed.example. 300 IN TXT \"v=spf1 -all\"\n\
_dmarc.spoofed.example. 300 IN TXT \"v=DMARC1; p=quarantine\"\n\
rejecting.example. 300 IN TXT \"v=spf1 -all\"\n\
_dmarc.rejecting.example. 300 IN TXT \"v=DMARC1; p=reject\"\n";

/// Waits for `count` verdicts and returns them with their message ids, in log order.
async fn verdicts(router: &Router, count: usize) -> anyhow::Result<Vec<(String, VerdictReached)>> {
    let mut verdicts = Vec::new();
    for record in router.wait_for_records(mailflow_events::topic::VERDICTS, count).await? {
        let envelope: Envelope<VerdictEvent> = Envelope::from_json(&record.value)?;
        if let VerdictEvent::VerdictReached(verdict) = envelope.event {
            verdicts.push((envelope.message_id, verdict));
        }
    }
    Ok(verdicts)
}

/// Waits for `count` verdicts and keys them by the subject of their message.
async fn verdicts_by_subject(router: &Router, count: usize) -> anyhow::Result<HashMap<String, VerdictReached>> {
    let verdicts = verdicts(router, count).await?;
    let mut received = Vec::new();
    for record in router.wait_for_records(mailflow_events::topic::RECEIVED, count).await? {
        received.push(Envelope::from_json(&record.value)?);
    }
    let subjects: HashMap<String, String> =
        messages_received(&received).into_iter().filter_map(|(id, m)| Some((id, m.subject?))).collect();
    Ok(verdicts.into_iter().map(|(id, verdict)| (subjects[&id].clone(), verdict)).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_messages_get_authentication_results_and_an_scl() -> anyhow::Result<()> {
    let dns = DnsServer::start(ZONE)?;
    let config = format!("{BASE_CONFIG}\n[dns]\nnameservers = [\"{}\"]\n", dns.address);
    let router = Router::start(&config)?;
    python(
        router.smtp(),
        r#"
def send(sender, body):
    s = smtplib.SMTP(ADDR, PORT)
    s.ehlo("client.example")
    s.sendmail(sender, ["alice@contoso.com"], body)
    s.quit()
send("news@pass.example", b"From: news@pass.example\r\nSubject: clean\r\n\r\nhello\r\n")
send("news@pass.example", b"From: news@pass.example\r\nSubject: gtube\r\n\r\nXJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r\n")
send("ceo@spoofed.example", b"From: ceo@spoofed.example\r\nSubject: wire money\r\n\r\nnow\r\n")
print(json.dumps("sent"))
"#,
    )?;
    let by_subject = verdicts_by_subject(&router, 3).await?;

    let clean = &by_subject["clean"];
    assert_eq!((clean.scl, clean.verdict, clean.sfv.as_str()), (1, SpamVerdict::NotSpam, "NSPM"));
    assert_eq!(clean.authentication.spf.as_ref().map(|s| s.result), Some(AuthResult::Pass));
    let results = &clean.headers_added.iter().find(|h| h.name == "Authentication-Results").expect("A-R header").value;
    assert!(results.starts_with("mx.contoso.test;\r\n\tspf=pass smtp.mailfrom=pass.example"), "{results}");
    assert!(results.contains("dkim=none"), "{results}");

    // Spec 9.8 T: GTUBE is high-confidence spam, SFV:SPM, to Junk.
    let gtube = &by_subject["gtube"];
    assert_eq!(
        (gtube.scl, gtube.verdict, gtube.action),
        (9, SpamVerdict::HighConfidenceSpam, PolicyAction::MoveToJunk)
    );
    let report = &gtube.headers_added.iter().find(|h| h.name == "X-Forefront-Antispam-Report").expect("report").value;
    assert!(report.contains("SCL:9;") && report.contains("SFV:SPM;") && report.contains("CAT:HSPM;"), "{report}");
    assert!(
        report.starts_with("CIP:127.0.0.1;") && report.contains("H:client.example;") && report.ends_with("DIR:INB;"),
        "{report}"
    );

    // A DMARC p=quarantine failure: spoofing, compauth fail, Junk.
    let spoofed = &by_subject["wire money"];
    let dmarc = spoofed.authentication.dmarc.as_ref().expect("DMARC evaluated");
    assert_eq!(dmarc.result, AuthResult::Fail);
    assert_eq!(dmarc.header_from, "spoofed.example");
    assert_eq!((spoofed.scl, spoofed.category.as_deref()), (6, Some("SPOOF")));
    assert_eq!(spoofed.authentication.spf.as_ref().map(|s| s.result), Some(AuthResult::Fail));
    Ok(())
}

/// An Ed25519 DKIM key: (signer key, DNS TXT value).
fn dkim_key() -> anyhow::Result<(mail_auth::common::crypto::Ed25519Key, String)> {
    use base64::Engine as _;
    let pkcs8 = mail_auth::common::crypto::Ed25519Key::generate_pkcs8()?;
    let key = mail_auth::common::crypto::Ed25519Key::from_pkcs8_der(&pkcs8)?;
    let record =
        format!("v=DKIM1; k=ed25519; p={}", base64::engine::general_purpose::STANDARD.encode(key.public_key()));
    Ok((key, record))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dkim_signatures_are_verified_each_and_broken_ones_are_recorded_not_fatal() -> anyhow::Result<()> {
    use mail_auth::common::headers::HeaderWriter as _;
    use mail_auth::dkim::DkimSigner;
    let (key, record) = dkim_key()?;
    let message = b"From: news@signed.example\r\nTo: alice@contoso.com\r\nSubject: signed\r\n\r\nsigned body\r\n";
    let signature = DkimSigner::from_key(key)
        .domain("signed.example")
        .selector("s1")
        .headers(["From", "To", "Subject"])
        .sign(message)?;
    let mut signed = signature.to_header().into_bytes();
    signed.extend_from_slice(message);
    // The same signature over an altered body fails; a garbage signature header is a permerror.
    let mut tampered = signature.to_header().into_bytes();
    tampered.extend_from_slice(&message[..message.len() - 2]);
    tampered.extend_from_slice(b" (altered)\r\n");
    let garbage =
        b"DKIM-Signature: v=1; this is not a signature\r\nFrom: news@signed.example\r\nSubject: garbage\r\n\r\nx\r\n"
            .to_vec();
    let zone = format!(
        "s1._domainkey.signed.example. 300 IN TXT \"{}\"\n_dmarc.signed.example. 300 IN TXT \"v=DMARC1; p=quarantine\"\n",
        record.replace(';', "\\;")
    );
    let dns = DnsServer::start(&zone)?;
    let config = format!("{BASE_CONFIG}\n[dns]\nnameservers = [\"{}\"]\n", dns.address);
    let router = Router::start(&config)?;
    let script = format!(
        "import base64\nfor body in [{:?}, {:?}, {:?}]:\n    s = smtplib.SMTP(ADDR, PORT)\n    s.sendmail('news@signed.example', ['alice@contoso.com'], base64.b64decode(body))\n    s.quit()\nprint(json.dumps('sent'))",
        b64(&signed),
        b64(&tampered),
        b64(&garbage)
    );
    python(router.smtp(), &script)?;
    let mut results = Vec::new();
    for (_, verdict) in verdicts(&router, 3).await? {
        let dkim = verdict.authentication.dkim.first().map(|d| (d.result, d.domain.clone()));
        results.push((dkim, verdict.authentication.dmarc.as_ref().map(|d| d.result)));
    }
    assert!(
        results.contains(&(Some((AuthResult::Pass, "signed.example".to_string())), Some(AuthResult::Pass))),
        "a good signature passes DKIM and, aligned, DMARC: {results:?}"
    );
    // mail-auth reports a body-hash mismatch as `neutral` (the signature is
    // not counted), so DMARC, with nothing aligned passing, fails.
    assert!(
        results.iter().any(|(dkim, dmarc)| matches!(dkim, Some((AuthResult::Fail | AuthResult::Neutral, _)))
            && *dmarc == Some(AuthResult::Fail)),
        "an altered body does not pass: {results:?}"
    );
    // An unparseable signature header is ignored as a signature: the message
    // is still judged (DMARC fails), nothing crashes, nothing is lost.
    assert_eq!(results.len(), 3, "every message got a verdict: {results:?}");
    assert!(results.contains(&(None, Some(AuthResult::Fail))), "{results:?}");
    Ok(())
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_honoured_dmarc_reject_is_refused_inside_the_session_not_bounced() -> anyhow::Result<()> {
    // Issue: checks EOP makes before accepting are answered before the reply to
    // DATA, never a 250 followed by an NDR (backscatter).
    let dns = DnsServer::start(ZONE)?;
    let config = format!("{BASE_CONFIG}\n[dns]\nnameservers = [\"{}\"]\n", dns.address);
    let mut router = Router::start(&config)?;
    let reply = python(
        router.smtp(),
        r#"
s = smtplib.SMTP(ADDR, PORT)
s.ehlo("client.example")
s.mail("ceo@rejecting.example")
s.rcpt("alice@contoso.com")
code, msg = s.data(b"From: ceo@rejecting.example\r\nSubject: forged\r\n\r\nx\r\n")
print(json.dumps("%d %s" % (code, msg.decode())))
"#,
    )?;
    assert!(
        reply.as_str().unwrap_or_default().starts_with(
            "550 5.7.509 Access denied, sending domain [rejecting.example] does not pass DMARC verification and has a DMARC policy of reject."
        ),
        "{reply}"
    );
    let events = router.received_events().await?;
    assert!(!events.iter().any(|e| matches!(e.event, mailflow_events::received::ReceivedEvent::MessageReceived(_))));
    assert!(events.iter().any(|e| matches!(&e.event,
        mailflow_events::received::ReceivedEvent::MessageRejected(r) if r.reason == mailflow_events::received::RejectReason::DmarcRejected)));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocklists_sender_lists_and_configured_actions_shape_the_verdict() -> anyhow::Result<()> {
    let zone = format!("{ZONE}5.0.0.127.bl.test. 300 IN A 127.0.0.2\n");
    let dns = DnsServer::start(&zone)?;
    let config = format!(
        "{BASE_CONFIG}\n[dns]\nnameservers = [\"{}\"]\n\n[anti_spam]\ndnsbl_zones = [\"bl.test\"]\n\
         blocked_sender_domains = [\"blocked.example\"]\nallowed_senders = [\"friend@allowed.example\"]\n\
         high_confidence_spam_action = \"modify_subject\"\nmodify_subject_value = \"[SPAM] \"\n",
        dns.address
    );
    let router = Router::start(&config)?;
    python(
        router.smtp(),
        r#"
def send(source, sender, subject):
    s = smtplib.SMTP(ADDR, PORT, source_address=(source, 0))
    s.sendmail(sender, ["alice@contoso.com"], ("From: %s\r\nSubject: %s\r\n\r\nx\r\n" % (sender, subject)).encode())
    s.quit()
send("127.0.0.5", "news@pass.example", "listed")
send("127.0.0.1", "x@blocked.example", "blocked")
send("127.0.0.1", "friend@allowed.example", "allowed")
print(json.dumps("sent"))
"#,
    )?;
    let by_subject = verdicts_by_subject(&router, 3).await?;
    let listed = &by_subject["listed"];
    assert_eq!((listed.scl, listed.action), (9, PolicyAction::PrependSubject), "DNSBL listing, configured action");
    assert_eq!(listed.subject_prefix.as_deref(), Some("[SPAM] "));
    let blocked = &by_subject["blocked"];
    assert_eq!((blocked.scl, blocked.sfv.as_str()), (9, "SKB"));
    let allowed = &by_subject["allowed"];
    assert_eq!((allowed.scl, allowed.sfv.as_str(), allowed.action), (-1, "SKA", PolicyAction::Deliver));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enhanced_filtering_judges_the_original_sender_behind_a_connector() -> anyhow::Result<()> {
    // Spec 7: a third-party filter relays to us; SPF is checked for the sender
    // before it (192.0.2.25, which sender.example authorises), not for the filter.
    let zone = format!("{ZONE}sender.example. 300 IN TXT \"v=spf1 ip4:192.0.2.25 -all\"\n");
    let dns = DnsServer::start(&zone)?;
    let config = format!(
        "{BASE_CONFIG}\n[dns]\nnameservers = [\"{}\"]\n\n[[inbound_connectors]]\nname = \"filter\"\nkind = \"partner\"\n\
         sender_domains = [\"*\"]\nef_skip_last_ip = true\nef_skip_ips = [\"198.51.100.0/24\"]\n",
        dns.address
    );
    let router = Router::start(&config)?;
    python(
        router.smtp(),
        r#"
s = smtplib.SMTP(ADDR, PORT)
s.sendmail("news@sender.example", ["alice@contoso.com"],
    b"Received: from internal.filter ([10.9.9.9]) by filter.thirdparty.example; Mon, 23 Nov 2026 00:00:00 +0000\r\n"
    b"Received: from scanner.thirdparty.example ([198.51.100.77]) by internal.filter; Mon, 23 Nov 2026 00:00:00 +0000\r\n"
    b"Received: from mail.sender.example (mail.sender.example [192.0.2.25]) by scanner.thirdparty.example; Mon, 23 Nov 2026 00:00:00 +0000\r\n"
    b"From: news@sender.example\r\nSubject: via filter\r\n\r\nhello\r\n")
s.quit()
print(json.dumps("sent"))
"#,
    )?;
    let (_, verdict) = verdicts(&router, 1).await?.into_iter().next().context("a verdict")?;
    assert_eq!(verdict.original_client_ip, "192.0.2.25");
    assert_eq!(verdict.authentication.spf.as_ref().map(|s| s.result), Some(AuthResult::Pass), "{verdict:?}");
    let stamped =
        verdict.headers_added.iter().find(|h| h.name == "X-MS-Exchange-SkipListedInternetSender").expect("7.4 header");
    assert_eq!(stamped.value, "ip=[192.0.2.25];domain=mail.sender.example");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_flow_rules_set_the_scl_and_act_in_priority_order() -> anyhow::Result<()> {
    let dns = DnsServer::start(ZONE)?;
    let config = format!(
        r#"{BASE_CONFIG}
[dns]
nameservers = ["{}"]

[[transport_rules]]
name = "invoices from outside"
priority = 0
conditions = {{ subject_contains_words = ["invoice"], from_scope = "not_in_organization" }}
actions = {{ set_scl = 6, prepend_subject = "[External] ", set_headers = [{{ name = "X-Rule", value = "invoice" }}] }}

[[transport_rules]]
name = "no mail to bob"
priority = 1
conditions = {{ sent_to = ["bob@contoso.com"] }}
actions = {{ reject_message_reason_text = "Bob does not take mail", reject_message_enhanced_status_code = "5.7.950" }}
"#,
        dns.address
    );
    let router = Router::start(&config)?;
    python(
        router.smtp(),
        r#"
s = smtplib.SMTP(ADDR, PORT)
s.sendmail("news@pass.example", ["alice@contoso.com"], b"From: news@pass.example\r\nSubject: Your invoice\r\n\r\nx\r\n")
s.sendmail("news@pass.example", ["bob@contoso.com"], b"From: news@pass.example\r\nSubject: hello bob\r\n\r\nx\r\n")
s.quit()
print(json.dumps("sent"))
"#,
    )?;
    let verdicts: Vec<VerdictReached> = verdicts(&router, 2).await?.into_iter().map(|(_, v)| v).collect();
    let invoice = verdicts.iter().find(|v| v.recipients == ["alice@contoso.com"]).expect("alice's verdict");
    assert_eq!(
        (invoice.scl, invoice.sfv.as_str(), invoice.verdict),
        (6, "SKS", SpamVerdict::Spam),
        "spec 9.4: a rule SCL of 6"
    );
    assert_eq!(invoice.subject_prefix.as_deref(), Some("[External] "));
    assert!(invoice.headers_added.iter().any(|h| h.name == "X-Rule" && h.value == "invoice"));
    assert_eq!(invoice.rules_matched[0].rule, "invoices from outside");
    let bob = verdicts.iter().find(|v| v.recipients == ["bob@contoso.com"]).expect("bob's verdict");
    assert_eq!(bob.action, PolicyAction::Reject);
    let reply = bob.reject_reply.as_ref().expect("NDR reply");
    assert_eq!(
        (reply.code, reply.enhanced.as_deref(), reply.text.as_str()),
        (550, Some("5.7.950"), "Bob does not take mail")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_dns_server_delays_nothing_past_the_deadline_and_loses_nothing() -> anyhow::Result<()> {
    // Bad input: DNS timeouts. The session's inline checks give up at their
    // deadline and accept; the verdict records temperrors; nothing crashes.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0")?; // bound, never answers
    let config = format!(
        "{BASE_CONFIG}\n[dns]\nnameservers = [\"{}\"]\ntimeout = \"300ms\"\nattempts = 1\n\n[anti_spam]\ninline_deadline = \"1s\"\n",
        silent.local_addr()?
    );
    let router = Router::start(&config)?;
    let reply = python(
        router.smtp(),
        r#"
import time
s = smtplib.SMTP(ADDR, PORT)
s.ehlo("client.example")
s.mail("news@nowhere.example")
s.rcpt("alice@contoso.com")
start = time.time()
code, msg = s.data(b"From: news@nowhere.example\r\nSubject: dns down\r\n\r\nx\r\n")
print(json.dumps({"reply": "%d %s" % (code, msg.decode()), "seconds": time.time() - start}))
"#,
    )?;
    assert!(reply["reply"].as_str().unwrap_or_default().starts_with("250 2.0.0 OK <"), "{reply}");
    assert!(reply["seconds"].as_f64().unwrap_or(99.0) < 3.0, "the deadline bounds the wait: {reply}");
    let (_, verdict) = verdicts(&router, 1).await?.into_iter().next().context("a verdict")?;
    assert_eq!(verdict.authentication.spf.as_ref().map(|s| s.result), Some(AuthResult::TempError), "{verdict:?}");
    Ok(())
}

/// Sends each (MAIL FROM, raw message) to alice from 127.0.0.1.
fn send_all(router: &Router, messages: &[(&str, String)]) -> anyhow::Result<()> {
    let list: Vec<String> =
        messages.iter().map(|(sender, body)| format!("({sender:?}, {:?})", b64(body.as_bytes()))).collect();
    let script = format!(
        "import base64\nfor sender, body in [{}]:\n    s = smtplib.SMTP(ADDR, PORT)\n    s.ehlo('client.example')\n    s.sendmail(sender, ['alice@contoso.com'], base64.b64decode(body))\n    s.quit()\nprint(json.dumps('sent'))",
        list.join(", ")
    );
    python(router.smtp(), &script)?;
    Ok(())
}

fn header<'a>(verdict: &'a VerdictReached, name: &str) -> &'a str {
    verdict.headers_added.iter().find(|h| h.name == name).map_or("", |h| h.value.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_and_phish_verdicts_carry_their_bcl_category_and_action() -> anyhow::Result<()> {
    let zone = format!("{ZONE}bad.example.dbl.test. 300 IN A 127.0.1.4\n");
    let dns = DnsServer::start(&zone)?;
    let config = format!(
        "{BASE_CONFIG}\n[dns]\nnameservers = [\"{}\"]\n\n[anti_spam]\nbulk_senders = {{ \"esp.example\" = 8 }}\n\
         phish_url_domains = [\"phish.example\"]\nuri_dnsbl_zones = [\"dbl.test\"]\nallowed_senders = [\"friend@allowed.example\"]\n",
        dns.address
    );
    let router = Router::start(&config)?;
    let message = |from: &str, subject: &str, extra: &str, body: &str| {
        format!("From: {from}\r\nTo: alice@contoso.com\r\nSubject: {subject}\r\n{extra}\r\n{body}\r\n")
    };
    send_all(
        &router,
        &[
            // Unauthenticated bulk nobody can unsubscribe from: BCL 7, the default threshold.
            ("news@bulk.example", message("news@bulk.example", "bulk", "Precedence: bulk\r\n", "offers")),
            // Signed-off bulk with one-click unsubscribe, SPF passing: BCL 2.
            (
                "news@pass.example",
                message(
                    "news@pass.example",
                    "newsletter",
                    "List-Unsubscribe: <https://pass.example/u/1>\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n",
                    "news",
                ),
            ),
            // Configured reputation of the envelope sender's ESP.
            ("bounce@mail.esp.example", message("promo@shop.example", "reputation", "", "sale")),
            (
                "news@pass.example",
                message("news@pass.example", "phish link", "", "Log in at https://login.phish.example/x"),
            ),
            ("news@pass.example", message("news@pass.example", "listed link", "", "See http://www.bad.example/x")),
            (
                "friend@allowed.example",
                message("friend@allowed.example", "allowed phish", "", "https://phish.example/"),
            ),
            // Our own domain, from outside, nothing vouching for it.
            ("ceo@contoso.com", message("ceo@contoso.com", "intra-org spoof", "", "wire the money")),
        ],
    )?;
    let by_subject = verdicts_by_subject(&router, 7).await?;
    let stamps = |subject: &str| {
        let v = &by_subject[subject];
        (v.scl, v.bcl, v.verdict, v.sfv.clone(), v.category.clone().unwrap_or_default(), v.action)
    };
    use PolicyAction::{Deliver, MoveToJunk, Quarantine};
    use SpamVerdict::{Bulk, HighConfidencePhish, NotSpam, Phish};
    assert_eq!(stamps("bulk"), (6, 7, Bulk, "SPM".into(), "BULK".into(), MoveToJunk));
    let bulk = &by_subject["bulk"];
    assert_eq!(header(bulk, "X-Microsoft-Antispam"), "BCL:7;");
    assert!(header(bulk, "X-Forefront-Antispam-Report").contains(";SCL:6;SRV:BULK;IPV:NLI;SFV:SPM;"), "{bulk:?}");
    // pass.example publishes no DMARC record: DMARC none, SPF passing is a compauth softpass.
    let newsletter = &by_subject["newsletter"];
    assert_eq!(newsletter.authentication.dmarc.as_ref().map(|d| (d.result, d.policy)), Some((AuthResult::None, None)));
    assert_eq!(stamps("newsletter"), (1, 2, NotSpam, "NSPM".into(), "NONE".into(), Deliver));
    assert_eq!(header(&by_subject["newsletter"], "X-Microsoft-Antispam"), "BCL:2;");
    assert_eq!(stamps("reputation"), (6, 8, Bulk, "SPM".into(), "BULK".into(), MoveToJunk));
    assert_eq!(stamps("phish link"), (9, 0, HighConfidencePhish, "SPM".into(), "HPHSH".into(), Quarantine));
    assert_eq!(stamps("listed link"), (9, 0, HighConfidencePhish, "SPM".into(), "HPHSH".into(), Quarantine));
    assert_eq!(
        stamps("allowed phish"),
        (9, 0, HighConfidencePhish, "SPM".into(), "HPHSH".into(), Quarantine),
        "an allowed sender does not override high-confidence phish"
    );
    assert_eq!(stamps("intra-org spoof"), (6, 0, Phish, "SPM".into(), "SPOOF".into(), Quarantine));
    let spoof = &by_subject["intra-org spoof"];
    assert_eq!(spoof.authentication.compauth.as_ref().map(|c| c.reason.as_str()), Some("601"));
    assert!(header(spoof, "Authentication-Results").ends_with("compauth=fail reason=601"), "{spoof:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rspamd_actions_map_to_the_documented_scl() -> anyhow::Result<()> {
    let dns = DnsServer::start(ZONE)?;
    let rspamd = mailflow_tests::rspamd::Rspamd::start(dns.address)?;
    let config = format!(
        "{BASE_CONFIG}\n[dns]\nnameservers = [\"{}\"]\n\n[anti_spam.rspamd]\nurl = \"{}\"\ntimeout = \"5s\"\n",
        dns.address, rspamd.url
    );
    let router = Router::start(&config)?;
    let message =
        |subject: &str, body: &str| format!("From: news@pass.example\r\nSubject: {subject}\r\n\r\n{body}\r\n");
    send_all(
        &router,
        &[
            ("news@pass.example", message("clean", "hello, nothing to see")),
            ("news@pass.example", message("gtube", std::str::from_utf8(mailflow_actors::verdict::score::GTUBE)?)),
            ("news@pass.example", message("add header", mailflow_tests::rspamd::GTUBE_ADD_HEADER)),
        ],
    )?;
    let by_subject = verdicts_by_subject(&router, 3).await?;
    let scan = |subject: &str| by_subject[subject].rspamd.clone().with_context(|| format!("{subject}: no rspamd scan"));

    let clean = &by_subject["clean"];
    assert_eq!(scan("clean")?.action.as_deref(), Some("no action"), "{:?}\n{}", clean.rspamd, rspamd.log());
    assert_eq!((clean.scl, clean.verdict, clean.sfv.as_str()), (1, SpamVerdict::NotSpam, "NSPM"));

    let gtube = scan("gtube")?;
    assert_eq!((gtube.action.as_deref(), gtube.symbols.as_slice()), (Some("reject"), ["GTUBE".to_string()].as_slice()));
    assert_eq!(gtube.required_score, Some(15.0));
    let verdict = &by_subject["gtube"];
    assert_eq!((verdict.scl, verdict.category.as_deref()), (9, Some("HSPM")));

    // Only rspamd knows this variant: the SCL 5 comes from its `add header`.
    assert_eq!(scan("add header")?.action.as_deref(), Some("add header"));
    let spam = &by_subject["add header"];
    assert_eq!(
        (spam.scl, spam.verdict, spam.sfv.as_str(), spam.category.as_deref(), spam.action),
        (5, SpamVerdict::Spam, "SPM", Some("SPM"), PolicyAction::MoveToJunk)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_rspamd_is_recorded_and_the_message_judged_without_it() -> anyhow::Result<()> {
    let dns = DnsServer::start(ZONE)?;
    // A port just released: connections are refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let config = format!(
        "{BASE_CONFIG}\n[dns]\nnameservers = [\"{}\"]\n\n[anti_spam.rspamd]\nurl = \"http://127.0.0.1:{port}\"\n",
        dns.address
    );
    let router = Router::start(&config)?;
    send_all(
        &router,
        &[("news@pass.example", "From: news@pass.example\r\nSubject: no engine\r\n\r\nhello\r\n".to_string())],
    )?;
    let (_, verdict) = verdicts(&router, 1).await?.into_iter().next().context("a verdict")?;
    let scan = verdict.rspamd.as_ref().context("the failed scan is recorded")?;
    assert!(scan.error.as_deref().is_some_and(|e| e.starts_with("connecting:")), "{scan:?}");
    assert_eq!(scan.action, None);
    assert_eq!((verdict.scl, verdict.verdict, verdict.sfv.as_str()), (1, SpamVerdict::NotSpam, "NSPM"));
    Ok(())
}

/// An ARC intermediary (RFC 8617 §5.1): `hop` authenticates the message as it
/// arrived from `client` (IP, MAIL FROM) with mail-auth against the test DNS,
/// lets `modify` change it (a mailing list's subject tag and footer), then
/// seals it, its key at `arc._domainkey.<hop>`. Returns the sealed message and
/// the chain validation the intermediary saw.
async fn arc_forward(
    authenticator: &mail_auth::MessageAuthenticator,
    hop: &str,
    pkcs8: &[u8],
    client: (std::net::IpAddr, &str),
    message: &str,
    modify: impl FnOnce(&str) -> String,
) -> anyhow::Result<(String, mail_auth::DkimResult)> {
    use mail_auth::common::headers::HeaderWriter as _;
    use mail_auth::dmarc::verify::DmarcParameters;
    use mail_auth::spf::verify::SpfParameters;
    let (ip, mail_from) = client;
    let received = mail_auth::AuthenticatedMessage::parse(message.as_bytes()).context("parsing")?;
    let dkim = authenticator.verify_dkim(&received).await;
    let spf = authenticator.verify_spf(SpfParameters::verify_mail_from(ip, "mta.example", hop, mail_from)).await;
    let spf_domain = mail_from.rsplit_once('@').map_or("", |(_, d)| d);
    let arc = authenticator.verify_arc(&received).await;
    let dmarc = authenticator.verify_dmarc(DmarcParameters::new(&received, &dkim, spf_domain, &spf)).await;
    let results = mail_auth::AuthenticationResults::new(hop)
        .with_dkim_results(&dkim, received.from())
        .with_spf_mailfrom_result(&spf, ip, mail_from, "mta.example")
        .with_dmarc_result(&dmarc)
        .with_arc_result(&arc, ip);
    let modified = modify(message);
    let outgoing = mail_auth::AuthenticatedMessage::parse(modified.as_bytes()).context("parsing")?;
    let set = mail_auth::arc::ArcSealer::from_key(mail_auth::common::crypto::Ed25519Key::from_pkcs8_der(pkcs8)?)
        .domain(hop)
        .selector("arc")
        .headers(["From", "To", "Subject", "DKIM-Signature"])
        .seal(&outgoing, &results, &arc)?;
    Ok((format!("{}{modified}", set.to_header()), arc.result().clone()))
}

/// ARC (RFC 8617; spec §10): chains sealed by real intermediaries with
/// mail-auth's `ArcSealer`, their keys in the test DNS, are validated by the
/// router and recorded as `authentication.arc` and `arc=` in its
/// Authentication-Results; only a passing chain whose last sealer the
/// organisation trusts (`arc_trusted_sealers`, EOP's `ArcTrustedSealers`)
/// rescues a DMARC failure (compauth reason 130, and no `550 5.7.509`): any
/// domain can seal a chain that passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arc_chains_are_validated_and_only_a_passing_one_rescues_dmarc() -> anyhow::Result<()> {
    use base64::Engine as _;
    use mail_auth::DkimResult;
    use mail_auth::common::crypto::Ed25519Key;
    use mail_auth::common::headers::HeaderWriter as _;
    use mailflow_events::verdicts::{ArcCheck, CompAuthResult};
    let (author_key, author_record) = dkim_key()?;
    let arc_key = || -> anyhow::Result<(Vec<u8>, String)> {
        let pkcs8 = Ed25519Key::generate_pkcs8()?;
        let public = base64::engine::general_purpose::STANDARD.encode(Ed25519Key::from_pkcs8_der(&pkcs8)?.public_key());
        Ok((pkcs8, format!("v=DKIM1\\; k=ed25519\\; p={public}")))
    };
    let (forwarder_key, forwarder_record) = arc_key()?;
    let (list_key, list_record) = arc_key()?;
    // The author's mail leaves 192.0.2.10, the forwarder's 192.0.2.20; both
    // intermediaries send to us from 127.0.0.1. origin.example asks for
    // quarantine, so a DMARC failure is spoofing unless ARC rescues it.
    let zone = format!(
        "{ZONE}origin.example. 300 IN TXT \"v=spf1 ip4:192.0.2.10 -all\"\n\
         s1._domainkey.origin.example. 300 IN TXT \"{}\"\n\
         _dmarc.origin.example. 300 IN TXT \"v=DMARC1\\; p=quarantine\"\n\
         forwarder.example. 300 IN TXT \"v=spf1 ip4:127.0.0.1 ip4:192.0.2.20 -all\"\n\
         arc._domainkey.forwarder.example. 300 IN TXT \"{forwarder_record}\"\n\
         lists.example. 300 IN TXT \"v=spf1 ip4:127.0.0.1 -all\"\n\
         arc._domainkey.lists.example. 300 IN TXT \"{list_record}\"\n",
        author_record.replace(';', "\\;")
    );
    let dns = DnsServer::start(&zone)?;
    let authenticator =
        mail_auth::MessageAuthenticator(mailflow_actors::dns::resolver(&mailflow_actors::dns::DnsConfig {
            nameservers: vec![dns.address],
            ..Default::default()
        })?);
    let signer = mail_auth::dkim::DkimSigner::from_key(author_key)
        .domain("origin.example")
        .selector("s1")
        .headers(["From", "To", "Subject"]);
    let authored = |subject: &str| -> anyhow::Result<String> {
        let message =
            format!("From: news@origin.example\r\nTo: alice@contoso.com\r\nSubject: {subject}\r\n\r\nthe news\r\n");
        Ok(signer.sign(message.as_bytes())?.to_header() + &message)
    };
    let from_author = ("192.0.2.10".parse()?, "news@origin.example");
    let from_forwarder = ("192.0.2.20".parse()?, "bounces@forwarder.example");
    let footer = |m: &str| format!("{m}-- \r\nunsubscribe: https://lists.example/u\r\n");
    let unchanged = |m: &str| m.to_string();
    let (authenticator_ref, forwarder_key, authored) = (&authenticator, &forwarder_key, &authored);
    let forward = move |subject: &'static str| async move {
        let message = authored(subject)?;
        let (sealed, seen) =
            arc_forward(authenticator_ref, "forwarder.example", forwarder_key, from_author, &message, unchanged)
                .await?;
        assert_eq!(seen, DkimResult::None, "the first intermediary finds no chain");
        anyhow::Ok(sealed)
    };

    // i=1, delivered as sealed.
    let once = forward("sealed once").await?;
    // i=1, then a hop that does not seal appends a footer: the AMS body hash
    // no longer matches.
    let altered = footer(&forward("altered after sealing").await?);
    // i=1, then a mailing list that saw the chain pass tags the subject and
    // adds a footer (breaking the author's DKIM) and seals i=2 with cv=pass.
    let (twice, seen) =
        arc_forward(&authenticator, "lists.example", &list_key, from_forwarder, &forward("sealed twice").await?, |m| {
            footer(&m.replacen("\r\nSubject: ", "\r\nSubject: [list] ", 1))
        })
        .await?;
    assert_eq!(seen, DkimResult::Pass, "the list saw a valid i=1 chain");
    assert!(twice.starts_with("ARC-Seal: i=2; a=ed25519-sha256; s=arc; d=lists.example; cv=pass;"), "{twice}");
    // The altered message sealed again by the list, which saw the chain not
    // pass: i=2 carries cv=fail.
    let (resealed, seen) = arc_forward(
        &authenticator,
        "lists.example",
        &list_key,
        from_forwarder,
        &footer(&forward("resealed over a broken chain").await?),
        unchanged,
    )
    .await?;
    let body_hash_mismatch = DkimResult::Neutral(mail_auth::Error::Arc(mail_auth::arc::ArcError::FailedBodyHashMatch));
    assert_eq!(seen, body_hash_mismatch, "what mail-auth reports for the altered chain");
    assert!(resealed.contains("cv=fail;"), "{resealed}");

    // The forwarder breaks the author's DKIM itself and seals again: a chain
    // that passes, but by a sealer nobody trusts.
    let (untrusted, _) = arc_forward(
        &authenticator,
        "forwarder.example",
        forwarder_key,
        from_forwarder,
        &forward("sealed twice, untrusted").await?,
        |m| footer(&m.replacen("\r\nSubject: ", "\r\nSubject: [fwd] ", 1)),
    )
    .await?;
    // A forgery: mail "from" a p=reject domain, sealed by the forwarder's own
    // key over its own claim, and the same sealed by the trusted list.
    let forged = |subject: &str| {
        format!("From: ceo@rejecting.example\r\nTo: alice@contoso.com\r\nSubject: {subject}\r\n\r\npay\r\n")
    };
    let from_anyone = ("192.0.2.99".parse()?, "ceo@rejecting.example");
    let (forged_untrusted, _) =
        arc_forward(&authenticator, "forwarder.example", forwarder_key, from_anyone, &forged("forged"), unchanged)
            .await?;
    let (forged_trusted, _) =
        arc_forward(&authenticator, "lists.example", &list_key, from_anyone, &forged("vouched"), unchanged).await?;

    let config = format!(
        "{BASE_CONFIG}\n[dns]\nnameservers = [\"{}\"]\n\n[anti_spam]\narc_trusted_sealers = [\"Lists.Example\"]\n",
        dns.address
    );
    let router = Router::start(&config)?;
    send_all(
        &router,
        &[
            ("bounces@forwarder.example", once),
            ("bounces@forwarder.example", altered),
            ("list-bounces@lists.example", twice),
            ("list-bounces@lists.example", resealed),
            ("bounces@forwarder.example", untrusted),
            ("list-bounces@lists.example", forged_trusted),
        ],
    )?;
    // The untrusted forgery of a p=reject domain is refused in the session.
    let script = format!(
        "import base64\ns = smtplib.SMTP(ADDR, PORT)\ntry:\n    s.sendmail('bounces@forwarder.example', ['alice@contoso.com'], base64.b64decode({:?}))\n    print(json.dumps('accepted'))\nexcept smtplib.SMTPDataError as e:\n    print(json.dumps('%d %s' % (e.smtp_code, e.smtp_error.decode())))\n",
        b64(forged_untrusted.as_bytes())
    );
    let refused = python(router.smtp(), &script)?;
    assert!(refused.as_str().is_some_and(|r| r.starts_with("550 5.7.509 ")), "{refused}");
    let by_subject = verdicts_by_subject(&router, 6).await?;
    let arc = |subject: &str| by_subject[subject].authentication.arc.clone();
    let compauth = |subject: &str| {
        let compauth = by_subject[subject].authentication.compauth.as_ref().expect("compauth");
        (compauth.result, compauth.reason.clone())
    };

    let check = |result, instances, sealer: &str, trusted| {
        Some(ArcCheck { result, instances, sealer: Some(sealer.to_string()), trusted })
    };
    assert_eq!(arc("sealed once"), check(AuthResult::Pass, 1, "forwarder.example", false));
    assert_eq!(compauth("sealed once"), (CompAuthResult::Pass, "100".into()), "the author's DKIM still passes");
    let results = header(&by_subject["sealed once"], "Authentication-Results");
    assert!(results.contains(";\r\n\tarc=pass;\r\n\t"), "{results}");

    // RFC 8617 §5.2 step 4: when the most recent AMS does not validate, the
    // chain's status is `fail`. mail-auth 0.13 reports that AMS's body-hash
    // mismatch as `neutral` (as it does for DKIM); the router records `fail`.
    assert_eq!(arc("altered after sealing"), check(AuthResult::Fail, 1, "forwarder.example", false));
    assert_eq!(compauth("altered after sealing"), (CompAuthResult::Fail, "000".into()));
    let altered = &by_subject["altered after sealing"];
    assert_eq!((altered.scl, altered.category.as_deref()), (6, Some("SPOOF")));
    let results = header(altered, "Authentication-Results");
    assert!(results.contains(";\r\n\tarc=fail;\r\n\t"), "{results}");

    // Two sets, the last AMS over the list's version, sealed by the trusted
    // list: the chain rescues the DMARC failure the list's changes caused.
    let twice = &by_subject["[list] sealed twice"];
    assert_eq!(arc("[list] sealed twice"), check(AuthResult::Pass, 2, "lists.example", true));
    assert_eq!(twice.authentication.dmarc.as_ref().map(|d| d.result), Some(AuthResult::Fail));
    assert_eq!(compauth("[list] sealed twice"), (CompAuthResult::Pass, "130".into()));
    assert_ne!(twice.category.as_deref(), Some("SPOOF"));
    let results = header(twice, "Authentication-Results");
    assert!(results.contains(";\r\n\tarc=pass;\r\n\t") && results.contains("compauth=pass reason=130"), "{results}");

    // RFC 8617 §5.2 step 2: a latest ARC-Seal with cv=fail ends validation
    // with `fail`, whatever its AMS says.
    assert_eq!(arc("resealed over a broken chain"), check(AuthResult::Fail, 2, "lists.example", false));
    assert_eq!(compauth("resealed over a broken chain"), (CompAuthResult::Fail, "000".into()));
    let results = header(&by_subject["resealed over a broken chain"], "Authentication-Results");
    assert!(results.contains(";\r\n\tarc=fail;\r\n\t"), "{results}");

    // The same list-style change sealed by the forwarder, which is not
    // trusted: the chain passes, but DMARC's failure stands.
    let untrusted = &by_subject["[fwd] sealed twice, untrusted"];
    assert_eq!(arc("[fwd] sealed twice, untrusted"), check(AuthResult::Pass, 2, "forwarder.example", false));
    assert_eq!(compauth("[fwd] sealed twice, untrusted"), (CompAuthResult::Fail, "000".into()));
    assert_eq!((untrusted.scl, untrusted.category.as_deref()), (6, Some("SPOOF")));
    // A trusted sealer vouching for a p=reject domain is believed: accepted
    // (no 550 5.7.509 above), compauth pass 130.
    assert_eq!(arc("vouched"), check(AuthResult::Pass, 1, "lists.example", true));
    assert_eq!(compauth("vouched"), (CompAuthResult::Pass, "130".into()));
    assert!(!by_subject.contains_key("forged"), "the refused forgery was never judged");
    Ok(())
}

/// Bad input (issue: verdict, "malformed MIME"): content mail-parser cannot
/// make sense of still gets a verdict and is delivered; nothing crashes and
/// nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_mime_is_judged_and_delivered_not_dropped() -> anyhow::Result<()> {
    let dns = DnsServer::start(ZONE)?;
    let router = Router::start(&format!("{BASE_CONFIG}\n[dns]\nnameservers = [\"{}\"]\n", dns.address))?;
    let nested: String =
        (0..300).map(|i| format!("Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n")).collect();
    let messages = [
        "From: news@pass.example\r\nSubject: no boundary\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed\r\n\r\n--\r\nhello\r\n".to_string(),
        "From: news@pass.example\r\nSubject: unterminated\r\nContent-Type: multipart/alternative; boundary=\"x\"\r\n\r\n--x\r\nContent-Type: text/plain\r\n\r\nnever closed\r\n".to_string(),
        "From: news@pass.example\r\nSubject: bad base64\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!not base64 at all***\r\n".to_string(),
        format!("From: news@pass.example\r\nSubject: nested 300 deep\r\nMIME-Version: 1.0\r\n{nested}deep\r\n"),
        "From: news@pass.example\r\nSubject: bad header =?utf-8?B?####?= \r\nContent-Type: text/plain; charset=\"no-such-charset\r\n\r\nx\r\n".to_string(),
    ];
    let sent: Vec<(&str, String)> = messages.iter().map(|m| ("news@pass.example", m.clone())).collect();
    send_all(&router, &sent)?;
    let verdicts = verdicts(&router, messages.len()).await?;
    assert_eq!(verdicts.len(), messages.len());
    for (_, verdict) in &verdicts {
        assert!((0..=9).contains(&verdict.scl), "{verdict:?}");
        assert_eq!(verdict.authentication.spf.as_ref().map(|s| s.result), Some(AuthResult::Pass), "{verdict:?}");
        assert!(matches!(verdict.action, PolicyAction::Deliver | PolicyAction::MoveToJunk), "{verdict:?}");
    }
    router
        .wait_for_delivery_events("every message delivered", |events| {
            events.iter().filter(|e| matches!(e.event, mailflow_events::delivery::DeliveryEvent::Delivered(_))).count()
                >= messages.len()
        })
        .await?;
    Ok(())
}
