//! The verdict role end to end: messages accepted over SMTP are judged from
//! the log, with SPF, DKIM, DMARC and iprev against a real DNS server on
//! loopback (spec 9, 10). Read while the router runs, from a read-only view of
//! its log.

use std::collections::HashMap;

use mailflow_events::Envelope;
use mailflow_events::verdicts::{AuthResult, PolicyAction, SpamVerdict, VerdictEvent, VerdictReached};
use mailflow_tests::clients::python;
use mailflow_tests::dns::DnsServer;
use mailflow_tests::router::{BASE_CONFIG, Router};

const ZONE: &str = "pass.example. 300 IN TXT \"v=spf1 ip4:127.0.0.1 -all\"\n\
spoofed.example. 300 IN TXT \"v=spf1 -all\"\n\
_dmarc.spoofed.example. 300 IN TXT \"v=DMARC1; p=reject\"\n";

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
    let records = router.wait_for_records(mailflow_events::topic::VERDICTS, 3).await?;
    let mut by_subject: HashMap<String, VerdictReached> = HashMap::new();
    let received = router.wait_for_records(mailflow_events::topic::RECEIVED, 3).await?;
    let subjects: HashMap<String, String> = received
        .iter()
        .filter_map(|r| {
            let envelope: Envelope<mailflow_events::received::ReceivedEvent> = Envelope::from_json(&r.value).ok()?;
            match envelope.event {
                mailflow_events::received::ReceivedEvent::MessageReceived(m) => Some((envelope.message_id, m.subject?)),
                _ => None,
            }
        })
        .collect();
    for record in records {
        let envelope: Envelope<VerdictEvent> = Envelope::from_json(&record.value)?;
        let VerdictEvent::VerdictReached(verdict) = envelope.event else { continue };
        by_subject.insert(subjects[&envelope.message_id].clone(), verdict);
    }

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

    // A DMARC p=reject failure: spoofing, compauth fail, Junk.
    let spoofed = &by_subject["wire money"];
    let dmarc = spoofed.authentication.dmarc.as_ref().expect("DMARC evaluated");
    assert_eq!(dmarc.result, AuthResult::Fail);
    assert_eq!(dmarc.header_from, "spoofed.example");
    assert_eq!((spoofed.scl, spoofed.category.as_deref()), (6, Some("SPOOF")));
    assert_eq!(spoofed.authentication.spf.as_ref().map(|s| s.result), Some(AuthResult::Fail));
    Ok(())
}
