//! The mail-flow scenarios of spec §8 end to end, with real peers on
//! loopback: a private Postfix instance, or Postfix's smtp-sink where only
//! what arrives matters, plays the on-premises server; smtp-sink the
//! internet's MX hosts, Dovecot LMTP the mailbox store, a real DNS server the
//! zones. Internet clients connect from 127.0.0.1; the on-premises server
//! from 127.0.0.2, which the on-premises inbound connector identifies. Each
//! test checks where every recipient's copy arrived and that nothing else got one.

use std::path::Path;
use std::time::{Duration, Instant};

use mailflow_events::Envelope;
use mailflow_events::delivery::DeliveryEvent;
use mailflow_tests::clients::python;
use mailflow_tests::dns::DnsServer;
use mailflow_tests::dovecot::Dovecot;
use mailflow_tests::postfix::{Dumped, PrivatePostfix, SmtpSink};
use mailflow_tests::router::Router;

const ZONE: &str = "example.org. 300 IN MX 10 mx.example.org.\nmx.example.org. 300 IN A 127.0.0.1\n\
archive.example. 300 IN MX 10 mx.archive.example.\nmx.archive.example. 300 IN A 127.0.0.1\n";

/// contoso.com (authoritative: alice in the service, olga on-premises) and
/// fabrikam.com (internal relay), the on-premises server at 127.0.0.2 both ways.
fn hybrid(dns: &DnsServer, internet: &SmtpSink, onprem_port: u16, extra: &str) -> String {
    format!(
        r#"
[server]
hostname = "mx.contoso.test"
[[server.listeners]]
name = "smtp"
address = "127.0.0.1:0"
[dns]
nameservers = ["{dns}"]
[transport]
mx_port = {mx_port}
[[accepted_domains]]
name = "contoso.com"
default = true
[[accepted_domains]]
name = "fabrikam.com"
type = "internal_relay"
[[directory.recipients]]
address = "alice@contoso.com"
[[directory.recipients]]
address = "olga@contoso.com"
kind = "on_premises"
[[inbound_connectors]]
name = "from-onprem"
kind = "on_premises"
sender_ip_addresses = ["127.0.0.2"]
[[outbound_connectors]]
name = "to-onprem"
kind = "on_premises"
all_accepted_domains = true
smart_hosts = ["127.0.0.1:{onprem_port}"]
{extra}
"#,
        dns = dns.address,
        mx_port = internet.address.port(),
    )
}

/// Sends one message from `source` (an address on lo).
fn send(router: &Router, source: &str, sender: &str, recipients: &[&str], subject: &str) -> anyhow::Result<()> {
    let script = format!(
        r#"
s = smtplib.SMTP(ADDR, PORT, source_address=({source:?}, 0))
s.ehlo("client.example")
s.sendmail({sender:?}, {recipients:?}, b"From: {sender}\r\nSubject: {subject}\r\n\r\nhello\r\n")
s.quit()
print(json.dumps("sent"))
"#
    );
    python(router.smtp(), &script)?;
    Ok(())
}

/// Messages in `<root>/<mailbox>/new`.
fn maildir_count(root: &Path, mailbox: &str) -> usize {
    std::fs::read_dir(root.join(mailbox).join("new")).map(|d| d.count()).unwrap_or(0)
}

/// Recipients of every transaction a sink dumped, sorted.
fn recipients(dumped: &[Dumped]) -> Vec<String> {
    let mut all: Vec<String> = dumped
        .iter()
        .flat_map(|d| d.rcpt_args.iter().filter_map(|r| r.split_whitespace().next()).map(str::to_string))
        .collect();
    all.sort();
    all
}

/// Waits until the router has recorded outcomes (delivered or failed) for
/// `count` recipients and returns every delivery event.
async fn wait_for_outcomes(router: &Router, count: usize) -> anyhow::Result<Vec<Envelope<DeliveryEvent>>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let events = router.delivery_events().await?;
        let done: usize = events
            .iter()
            .map(|e| match &e.event {
                DeliveryEvent::Delivered(d) => d.recipients.len(),
                DeliveryEvent::Failed(f) => f.recipients.len(),
                _ => 0,
            })
            .sum();
        if done >= count {
            return Ok(events);
        }
        anyhow::ensure!(Instant::now() < deadline, "{done} outcomes, expected {count}: {events:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_cloud_and_on_premises_mailboxes_each_get_their_copy_and_on_premises_mail_leaves_by_mx()
-> anyhow::Result<()> {
    // Spec 8.2 S1: MX to the service; connectors both ways.
    let dns = DnsServer::start(ZONE)?;
    let (internet, on_premises) = (SmtpSink::start(&[])?, SmtpSink::start(&[])?);
    let router = Router::start(&hybrid(&dns, &internet, on_premises.address.port(), ""))?;
    let mail = router.dir.path().join("mail");
    send(&router, "127.0.0.1", "news@example.net", &["alice@contoso.com", "olga@contoso.com", "x@fabrikam.com"], "in")?;
    wait_for_outcomes(&router, 3).await?;
    assert_eq!(maildir_count(&mail, "alice@contoso.com"), 1, "the cloud mailbox");
    let dumped = on_premises.wait_for_dumps(1)?;
    assert_eq!(
        recipients(&dumped),
        ["<olga@contoso.com>", "<x@fabrikam.com>"],
        "on-premises mailbox and internal relay"
    );
    // The on-premises server sends to a cloud mailbox and to the internet.
    send(&router, "127.0.0.2", "olga@contoso.com", &["alice@contoso.com", "bob@example.org"], "out")?;
    wait_for_outcomes(&router, 5).await?;
    assert_eq!(maildir_count(&mail, "alice@contoso.com"), 2);
    assert_eq!(recipients(&internet.wait_for_dumps(1)?), ["<bob@example.org>"]);
    assert_eq!(on_premises.dumped()?.len(), 1, "one transaction for both, and nothing went back on-premises");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_with_a_real_postfix_on_premises_mail_flows_both_ways_and_gtube_is_junked_or_stamped()
-> anyhow::Result<()> {
    // Spec 8.2 S1 and 8.5, with Postfix as the on-premises server: it holds
    // olga's mailbox, knows alice as a mailbox in the service, and sends all
    // its other mail through the service (relayhost), from 127.0.0.2.
    let dns = DnsServer::start(ZONE)?;
    let internet = SmtpSink::start(&[])?;
    let onprem_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut router = Router::start(&hybrid(&dns, &internet, onprem_port, ""))?;
    let postfix = PrivatePostfix::on_premises(
        onprem_port,
        "contoso.com",
        &["olga@contoso.com"],
        &["alice@contoso.com"],
        router.smtp(),
    )?;
    let mail = router.dir.path().join("mail");
    let wait_for = |root: &Path, mailbox: &str, count: usize| -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while maildir_count(root, mailbox) < count {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{mailbox}: {} of {count}\n{}",
                maildir_count(root, mailbox),
                postfix.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    };

    // From the internet: the cloud mailbox here, the on-premises one through
    // the outbound connector into Postfix's Maildir.
    send(&router, "127.0.0.1", "news@example.net", &["alice@contoso.com", "olga@contoso.com"], "in")?;
    wait_for(&postfix.maildir(), "olga@contoso.com", 1)?;
    wait_for(&mail, "alice@contoso.com", 1)?;

    // From on-premises: olga writes to alice (in the service) and to the
    // internet; Postfix relays both through the service.
    let script = r#"
s = smtplib.SMTP(ADDR, PORT)
s.ehlo("workstation.contoso.com")
s.sendmail("olga@contoso.com", ["alice@contoso.com", "bob@example.org"], b"From: olga@contoso.com\r\nSubject: out\r\n\r\nhello\r\n")
s.quit()
print(json.dumps("sent"))
"#;
    python(postfix.address, script)?;
    wait_for(&mail, "alice@contoso.com", 2)?;
    assert_eq!(recipients(&internet.wait_for_dumps(1)?), ["<bob@example.org>"]);
    assert_eq!(maildir_count(&postfix.maildir(), "olga@contoso.com"), 1, "nothing came back on-premises");

    // Spec 9.8 and the issue's hybrid test: GTUBE from the internet is
    // high-confidence spam (SCL 9, SFV:SPM). The cloud mailbox gets it in its
    // Junk folder; the on-premises copy carries the verdict in the headers an
    // on-premises Exchange server acts on, since the service does not move
    // mail inside a mailbox it does not hold.
    let gtube = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";
    send(&router, "127.0.0.1", "news@example.net", &["alice@contoso.com", "olga@contoso.com"], gtube)?;
    wait_for(&mail.join("alice@contoso.com"), ".Junk", 1)?;
    wait_for(&postfix.maildir(), "olga@contoso.com", 2)?;
    assert_eq!(maildir_count(&mail, "alice@contoso.com"), 2, "not in the inbox");
    let read_new = |dir: std::path::PathBuf| -> anyhow::Result<Vec<String>> {
        let mut copies = Vec::new();
        for entry in std::fs::read_dir(dir.join("new"))? {
            copies.push(std::fs::read_to_string(entry?.path())?);
        }
        Ok(copies)
    };
    let junk = read_new(mail.join("alice@contoso.com").join(".Junk"))?;
    assert!(junk[0].contains("SFV:SPM") && junk[0].contains(gtube), "{}", junk[0]);
    let on_premises = read_new(postfix.maildir().join("olga@contoso.com"))?;
    let spam = on_premises.iter().find(|copy| copy.contains(gtube)).expect("the GTUBE copy on-premises");
    let report = spam
        .lines()
        .find(|line| line.starts_with("X-Forefront-Antispam-Report:"))
        .unwrap_or_else(|| panic!("no report header: {spam}"));
    assert!(report.contains(";SCL:9;") && report.contains("SFV:SPM") && report.contains("DIR:INB"), "{report}");
    assert!(spam.contains("X-MS-Exchange-Organization-SCL: 9"), "{spam}");
    // The service knew Postfix by its on-premises connector; the internet
    // messages came in anonymously. (Reading the events stops the router.)
    let received = mailflow_tests::router::messages_received(&router.received_events().await?);
    let mut connectors: Vec<(Vec<String>, Option<String>)> = received
        .iter()
        .map(|(_, m)| {
            let rcpts = m.recipients.iter().map(|r| r.address.clone()).collect();
            (rcpts, m.connector.as_ref().map(|c| c.name.clone()))
        })
        .collect();
    connectors.sort();
    // Postfix sends alice's copy by its transport map and bob's by the relay
    // host: two transactions, both through the on-premises connector.
    let from = |who: &str| Some(who.to_string());
    assert_eq!(
        connectors,
        [
            (vec!["alice@contoso.com".to_string()], from("from-onprem")),
            (vec!["alice@contoso.com".to_string(), "olga@contoso.com".to_string()], None),
            (vec!["alice@contoso.com".to_string(), "olga@contoso.com".to_string()], None),
            (vec!["bob@example.org".to_string()], from("from-onprem")),
        ]
    );
    let log = postfix.log();
    assert!(log.contains("to=<olga@contoso.com>, relay=virtual"), "{log}");
    assert_eq!(log.matches(&format!("relay=127.0.0.1[127.0.0.1]:{}", router.smtp().port())).count(), 2, "{log}");

    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn centralized_mail_transport_sends_internet_mail_on_premises_first() -> anyhow::Result<()> {
    // Spec 6.6 / 8.2 S2: with CMT on, mail from the internet goes on-premises
    // first, even for cloud mailboxes; on-premises mail comes back and is delivered.
    let dns = DnsServer::start(ZONE)?;
    let (internet, on_premises) = (SmtpSink::start(&[])?, SmtpSink::start(&[])?);
    let router = Router::start(&hybrid(
        &dns,
        &internet,
        on_premises.address.port(),
        "route_all_messages_via_on_premises = true",
    ))?;
    let mail = router.dir.path().join("mail");
    send(&router, "127.0.0.1", "news@example.net", &["alice@contoso.com"], "via-onprem")?;
    assert_eq!(recipients(&on_premises.wait_for_dumps(1)?), ["<alice@contoso.com>"]);
    assert_eq!(maildir_count(&mail, "alice@contoso.com"), 0, "not straight into the cloud mailbox");
    // On-premises hands it back: now it is delivered to the mailbox.
    send(&router, "127.0.0.2", "news@example.net", &["alice@contoso.com"], "back")?;
    wait_for_outcomes(&router, 2).await?;
    assert_eq!(maildir_count(&mail, "alice@contoso.com"), 1);
    assert_eq!(on_premises.dumped()?.len(), 1, "no loop");
    assert!(internet.dumped()?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archiving_service_gets_a_copy_of_every_message_through_a_rule() -> anyhow::Result<()> {
    // Spec 8.3: a third-party archive receiving all mail (a BlindCopyTo rule).
    let dns = DnsServer::start(ZONE)?;
    let (archive, on_premises) = (SmtpSink::start(&[])?, SmtpSink::start(&[])?);
    let rule = "[[transport_rules]]\nname = \"archive all\"\npriority = 0\nactions = { add_to_recipients = [\"journal@archive.example\"] }\n";
    let router = Router::start(&hybrid(&dns, &archive, on_premises.address.port(), rule))?;
    let mail = router.dir.path().join("mail");
    send(&router, "127.0.0.1", "news@example.net", &["alice@contoso.com"], "one")?;
    send(&router, "127.0.0.1", "news@example.net", &["alice@contoso.com", "olga@contoso.com"], "two")?;
    wait_for_outcomes(&router, 5).await?;
    assert_eq!(maildir_count(&mail, "alice@contoso.com"), 2);
    assert_eq!(recipients(&on_premises.wait_for_dumps(1)?), ["<olga@contoso.com>"]);
    let archived = archive.wait_for_dumps(2)?;
    assert_eq!(recipients(&archived), ["<journal@archive.example>", "<journal@archive.example>"]);
    assert!(archived.iter().any(|d| d.message.contains("Subject: two")));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dovecot_over_lmtp_as_the_mailbox_store_answers_per_recipient() -> anyhow::Result<()> {
    let dns = DnsServer::start(ZONE)?;
    let (internet, on_premises) = (SmtpSink::start(&[])?, SmtpSink::start(&[])?);
    // Dovecot knows alice only; bob is in our directory but has no mailbox there.
    let dovecot = Dovecot::start(&["alice@contoso.com"])?;
    let store = format!(
        "[[directory.recipients]]\naddress = \"bob@contoso.com\"\n[mailbox_store]\nkind = \"lmtp\"\naddress = \"{}\"\n",
        dovecot.address
    );
    let router = Router::start(&hybrid(&dns, &internet, on_premises.address.port(), &store))?;
    send(&router, "127.0.0.1", "news@example.org", &["alice@contoso.com", "bob@contoso.com"], "lmtp")?;
    let events = wait_for_outcomes(&router, 2).await?;
    let messages = dovecot.new_messages("alice@contoso.com")?;
    assert_eq!(messages.len(), 1);
    assert!(String::from_utf8_lossy(&messages[0]).contains("X-MS-Exchange-Organization-SCL:"));
    let failed = events
        .iter()
        .find_map(|e| match &e.event {
            DeliveryEvent::Failed(f) => Some(f),
            _ => None,
        })
        .expect("bob failed");
    assert_eq!(failed.recipients, ["bob@contoso.com"]);
    assert_eq!((failed.reply.code, failed.reply.enhanced.as_deref()), (550, Some("5.1.1")), "{failed:?}");
    // The NDR goes back to the (internet) sender by MX.
    let ndr = internet.wait_for_dumps(1)?;
    assert_eq!(recipients(&ndr), ["<news@example.org>"]);
    assert!(ndr[0].mail_args.starts_with("<>"), "NDRs have a null sender: {}", ndr[0].mail_args);
    assert!(ndr[0].message.contains("Status: 5.1.1"), "{}", ndr[0].message);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_party_filter_in_front_is_skip_listed_and_its_mail_reaches_the_mailbox_judged_on_the_original_sender()
-> anyhow::Result<()> {
    // Spec 8.3 / 7: MX points at a filtering service (127.0.0.2 here), locked
    // down with a partner connector, with Enhanced Filtering on it.
    let zone = format!("{ZONE}sender.example. 300 IN TXT \"v=spf1 ip4:192.0.2.25 -all\"\n");
    let dns = DnsServer::start(&zone)?;
    let (internet, on_premises) = (SmtpSink::start(&[])?, SmtpSink::start(&[])?);
    let filter = "[[inbound_connectors]]\nname = \"filter\"\nkind = \"partner\"\nsender_domains = [\"*\"]\n\
                  sender_ip_addresses = [\"127.0.0.3\"]\nrestrict_domains_to_ip_addresses = true\nef_skip_last_ip = true\n";
    let router = Router::start(&hybrid(&dns, &internet, on_premises.address.port(), filter))?;
    let script = r#"
s = smtplib.SMTP(ADDR, PORT, source_address=("127.0.0.3", 0))
s.ehlo("filter.thirdparty.example")
s.sendmail("news@sender.example", ["alice@contoso.com"],
    b"Received: from mail.sender.example (mail.sender.example [192.0.2.25]) by filter.thirdparty.example; Mon, 23 Nov 2026 00:00:00 +0000\r\n"
    b"From: news@sender.example\r\nSubject: filtered\r\n\r\nhello\r\n")
s.quit()
print(json.dumps("sent"))
"#;
    python(router.smtp(), script)?;
    wait_for_outcomes(&router, 1).await?;
    let mail = router.dir.path().join("mail");
    let copies = std::fs::read_dir(mail.join("alice@contoso.com/new"))?.collect::<Result<Vec<_>, _>>()?;
    assert_eq!(copies.len(), 1);
    let copy = std::fs::read_to_string(copies[0].path())?;
    // Judged on the sender before the filter: SPF passes for 192.0.2.25.
    assert!(copy.contains("X-Forefront-Antispam-Report: CIP:192.0.2.25;"), "{copy}");
    assert!(copy.contains("spf=pass"), "{copy}");
    assert!(
        copy.contains("X-MS-Exchange-SkipListedInternetSender: ip=[192.0.2.25];domain=mail.sender.example"),
        "{copy}"
    );
    // The connector's IP restriction: the same sender domain from elsewhere is refused.
    let refused = r#"
s = smtplib.SMTP(ADDR, PORT, source_address=("127.0.0.4", 0))
try:
    s.sendmail("news@sender.example", ["alice@contoso.com"], b"Subject: direct\r\n\r\nx\r\n")
    print(json.dumps("accepted"))
except smtplib.SMTPException as e:
    print(json.dumps(str(e)))
"#;
    let answer = python(router.smtp(), refused)?;
    assert!(answer.as_str().is_some_and(|a| a.contains("5.7.51")), "{answer}");
    assert!(internet.dumped()?.is_empty() && on_premises.dumped()?.is_empty(), "nothing else got a copy");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_protection_filters_for_an_on_premises_server_and_relays_its_devices_mail() -> anyhow::Result<()> {
    // Spec 8.5: EOP standalone, every mailbox on-premises (internal relay), two
    // connectors; spec 5: a device on-premises relays through it.
    let dns = DnsServer::start(ZONE)?;
    let (internet, on_premises) = (SmtpSink::start(&[])?, SmtpSink::start(&[])?);
    let config = format!(
        r#"
[server]
hostname = "mx.contoso.test"
[[server.listeners]]
name = "smtp"
address = "127.0.0.1:0"
[dns]
nameservers = ["{dns}"]
[transport]
mx_port = {mx}
[[accepted_domains]]
name = "contoso.com"
type = "internal_relay"
default = true
[[inbound_connectors]]
name = "from-onprem"
kind = "on_premises"
sender_ip_addresses = ["127.0.0.2"]
[[outbound_connectors]]
name = "to-onprem"
kind = "on_premises"
all_accepted_domains = true
smart_hosts = ["127.0.0.1:{onprem}"]
"#,
        dns = dns.address,
        mx = internet.address.port(),
        onprem = on_premises.address.port()
    );
    let router = Router::start(&config)?;
    send(&router, "127.0.0.1", "news@example.net", &["anyone@contoso.com"], "inbound")?;
    send(&router, "127.0.0.2", "scanner@contoso.com", &["bob@example.org"], "scan")?;
    wait_for_outcomes(&router, 2).await?;
    let inbound = on_premises.wait_for_dumps(1)?;
    assert_eq!(recipients(&inbound), ["<anyone@contoso.com>"]);
    assert!(inbound[0].message.contains("X-Forefront-Antispam-Report:"), "filtered before on-premises");
    assert_eq!(recipients(&internet.wait_for_dumps(1)?), ["<bob@example.org>"], "the device's mail left by MX");
    let mail = router.dir.path().join("mail");
    assert!(!mail.join("anyone@contoso.com").exists(), "no mailbox here");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_users_forwarding_and_a_rule_scoped_connector_route_end_to_end() -> anyhow::Result<()> {
    // Spec 6.1/6.3 and §2: a mail user gets its copy at its external address,
    // a forwarding mailbox keeps a copy and forwards one, and a connector
    // scoped to transport rules carries only what a rule sends through it.
    let dns = DnsServer::start(ZONE)?;
    let (internet, on_premises, partner) = (SmtpSink::start(&[])?, SmtpSink::start(&[])?, SmtpSink::start(&[])?);
    let extra = format!(
        r#"
[[outbound_connectors]]
name = "legal-partner"
kind = "partner"
is_transport_rule_scoped = true
smart_hosts = ["127.0.0.1:{partner}"]
[[directory.recipients]]
address = "mu@contoso.com"
kind = "mail_user"
external_address = "mu@example.org"
[[directory.recipients]]
address = "fwd@contoso.com"
forward_to = "me@example.org"
[[transport_rules]]
name = "legal through the partner"
priority = 0
conditions = {{ subject_contains_words = ["legal"] }}
actions = {{ route_message_outbound_connector = "legal-partner" }}
"#,
        partner = partner.address.port()
    );
    let router = Router::start(&hybrid(&dns, &internet, on_premises.address.port(), &extra))?;
    let mail = router.dir.path().join("mail");
    send(&router, "127.0.0.1", "news@example.net", &["mu@contoso.com", "fwd@contoso.com"], "hello")?;
    send(&router, "127.0.0.2", "olga@contoso.com", &["bob@example.org"], "legal matters")?;
    send(&router, "127.0.0.2", "olga@contoso.com", &["carol@example.org"], "lunch")?;
    wait_for_outcomes(&router, 5).await?;
    assert_eq!(maildir_count(&mail, "fwd@contoso.com"), 1, "the forwarding mailbox keeps its copy");
    assert_eq!(maildir_count(&mail, "mu@contoso.com"), 0, "a mail user has no mailbox here");
    let deadline = Instant::now() + Duration::from_secs(30);
    while recipients(&internet.dumped()?).len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        recipients(&internet.dumped()?),
        ["<carol@example.org>", "<me@example.org>", "<mu@example.org>"],
        "mail user, forward and ordinary outbound mail leave by MX"
    );
    let through_partner = partner.wait_for_dumps(1)?;
    assert_eq!(recipients(&through_partner), ["<bob@example.org>"], "only what the rule routed");
    assert!(through_partner[0].message.contains("Subject: legal matters"));
    assert!(on_premises.dumped()?.is_empty(), "nothing went on-premises");
    Ok(())
}
