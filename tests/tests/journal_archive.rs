//! The public journal end to end (spec 15; issue "the public journal for third
//! parties"): real SMTP clients send mail through the real router, a real DNS
//! server and the scriptable sink stand in for the internet, and the test reads
//! `mailflow.journal` back — on the embedded log beside the running router, and
//! on a Kafka-protocol broker with `kcat`, a client that is not ours, checking
//! every record against the published schema with Python's `jsonschema`. The
//! reference consumer, `mailflow archive`, runs as the real binary.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use mailflow_events::Envelope;
use mailflow_events::journal::{JournalEvent, TraceStatus};
use mailflow_events::log::EventLog as _;
use mailflow_events::log::embedded::EmbeddedLog;
use mailflow_events::topic;
use mailflow_tests::broker::Broker;
use mailflow_tests::clients::send_each_and_refuse;
use mailflow_tests::dns::DnsServer;
use mailflow_tests::router::{Router, cli, relay_config};
use mailflow_tests::sink::{Script, Sink};
use serde_json::Value;

const ZONE: &str = "example.org. 300 IN MX 10 mx.example.org.\nmx.example.org. 300 IN A 127.0.0.1\n\
                    example.net. 300 IN MX 10 mx.example.net.\nmx.example.net. 300 IN A 127.0.0.1\n";

/// The exact bytes sent as each message's DATA.
fn content(to: &str) -> String {
    format!(
        "From: alice@contoso.com\r\nTo: {to}\r\nSubject: journal test for {to}\r\nMessage-ID: <{to}.journal@contoso.com>\r\n\r\nHello {to}.\r\n"
    )
}

/// Sends one message per recipient (each in its own transaction) and one
/// transaction whose only recipient is refused; returns recipient → message id.
fn send(router: &Router, recipients: &[&str], refused: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let messages: Vec<(String, String)> = recipients.iter().map(|to| (to.to_string(), content(to))).collect();
    let ids = send_each_and_refuse(router.smtp(), &messages, refused)?;
    serde_json::from_value(ids).context("message ids")
}

/// Every journal record in the running router's embedded log, grouped by message id.
async fn journal(router: &Router) -> anyhow::Result<BTreeMap<String, Vec<Envelope<JournalEvent>>>> {
    let log = EmbeddedLog::open_read_only(router.log_path())?;
    let mut by_message: BTreeMap<String, Vec<Envelope<JournalEvent>>> = BTreeMap::new();
    for partition in 0..log.partitions(topic::JOURNAL).unwrap_or(0) {
        for record in mailflow_tests::conformance::read_all(&log, topic::JOURNAL, partition, 0).await? {
            let envelope: Envelope<JournalEvent> = Envelope::from_json(&record.value)?;
            by_message.entry(envelope.message_id.clone()).or_default().push(envelope);
        }
    }
    // Facts of one message come from three topics; their order is their time.
    for records in by_message.values_mut() {
        records.sort_by_key(|r| r.occurred_at);
    }
    Ok(by_message)
}

/// Trace event ids of a message's records, repeated ones collapsed (`DEFER` may recur).
fn trace(records: &[Envelope<JournalEvent>]) -> Vec<&'static str> {
    let mut ids: Vec<&'static str> = records.iter().map(|r| r.event.trace_event_id()).collect();
    ids.dedup();
    ids
}

fn statuses(records: &[Envelope<JournalEvent>]) -> Vec<TraceStatus> {
    let mut statuses: Vec<TraceStatus> = records.iter().map(|r| r.event.record().status).collect();
    statuses.dedup();
    statuses
}

/// Polls the journal until `done` holds for it.
async fn wait_for_journal(
    router: &Router,
    what: &str,
    done: impl Fn(&BTreeMap<String, Vec<Envelope<JournalEvent>>>) -> bool,
) -> anyhow::Result<BTreeMap<String, Vec<Envelope<JournalEvent>>>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let journal = journal(router).await?;
        if done(&journal) {
            return Ok(journal);
        }
        if Instant::now() > deadline {
            let summary: BTreeMap<&String, Vec<&str>> = journal.iter().map(|(id, r)| (id, trace(r))).collect();
            bail!("timed out waiting for {what}; journal: {summary:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `mailflow archive` and returns its JSON summary.
fn archive(config: &Path, out: &Path) -> anyhow::Result<Value> {
    let (config, out) = (config.to_str().context("UTF-8 path")?, out.to_str().context("UTF-8 path")?);
    let run = cli(&["archive", "--json", "--config", config, "--out", out])?;
    ensure!(run.status == 0, "mailflow archive failed: {}", run.stderr);
    Ok(serde_json::from_str(&run.stdout)?)
}

/// `<id>.eml` is the message as the router stored it: our `Received:` trace
/// header, then the bytes the client sent, unchanged.
fn assert_archived_as_sent(out: &Path, id: &str, to: &str) -> anyhow::Result<()> {
    let eml = std::fs::read(out.join(format!("{id}.eml")))?;
    let sent = content(to);
    assert!(eml.ends_with(sent.as_bytes()), "the archived {to} message ends with what was sent");
    let trace = String::from_utf8_lossy(&eml[..eml.len() - sent.len()]).into_owned();
    assert!(trace.starts_with("Received: from onprem.contoso.com "), "{trace}");
    assert_eq!(trace.matches("\r\n").count(), trace.matches("\r\n\t").count() + 1, "one folded header: {trace}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_traces_every_message_and_the_archive_writes_each_once_however_often_it_runs() -> anyhow::Result<()>
{
    let dns = DnsServer::start(ZONE)?;
    let port = Sink::closed_port()?;
    let router = Router::start(&relay_config(&dns, port.port(), "retry_schedule = [\"1s\"]"))?;
    let ids = send(&router, &["alice@contoso.com", "bob@example.org", "gone@example.net"], "nobody@contoso.com")?;
    assert!(ids["refused"].starts_with("550 5.4.1"), "{}", ids["refused"]);
    let (alice, bob, gone) = (&ids["alice@contoso.com"], &ids["bob@example.org"], &ids["gone@example.net"]);

    // Both internet destinations are down: each message is deferred.
    let deferred = |journal: &BTreeMap<String, Vec<Envelope<JournalEvent>>>, id: &String| {
        journal.get(id).is_some_and(|records| trace(records).contains(&"DEFER"))
    };
    wait_for_journal(&router, "two deferrals", |j| deferred(j, bob) && deferred(j, gone)).await?;
    // The next hop comes back; it refuses one recipient for good.
    let sink =
        Sink::start_at(port, Script::smtp().rcpt("gone@example.net", "550 5.1.1 <gone@example.net>: User unknown"))
            .await?;
    let journal = wait_for_journal(&router, "every outcome and the NDR's delivery", |j| {
        let last = |id: &String| j.get(id).and_then(|r| r.last()).map(|r| r.event.trace_event_id());
        let ndr_delivered = j
            .values()
            .any(|r| r.first().is_some_and(|f| f.event.record().sender.is_empty()) && trace(r).contains(&"DELIVER"));
        last(alice) == Some("DELIVER") && last(bob) == Some("SEND") && last(gone) == Some("DSN") && ndr_delivered
    })
    .await?;
    assert_eq!(sink.received().len(), 1, "bob's message reached the next hop");

    // Delivered to the mailbox store.
    assert_eq!(trace(&journal[alice]), ["RECEIVE", "AGENTINFO", "DELIVER"]);
    assert_eq!(statuses(&journal[alice]), [TraceStatus::Pending, TraceStatus::Delivered]);
    let JournalEvent::Received(received) = &journal[alice][0].event else { panic!("RECEIVE first") };
    assert_eq!(received.record.sender, "alice@contoso.com");
    assert_eq!(received.record.recipients, ["alice@contoso.com"]);
    assert_eq!(received.record.subject.as_deref(), Some("journal test for alice@contoso.com"));
    assert_eq!(received.record.internet_message_id.as_deref(), Some("<alice@contoso.com.journal@contoso.com>"));
    assert_eq!(received.record.connector.as_deref(), Some("onprem"));
    let stored_size = received.content.as_ref().map(|c| c.size).context("RECEIVE names the content")?;
    // Deferred while the next hop was down, then sent.
    assert_eq!(trace(&journal[bob]), ["RECEIVE", "AGENTINFO", "DEFER", "SEND"]);
    assert_eq!(statuses(&journal[bob]), [TraceStatus::Pending, TraceStatus::Delivered]);
    let JournalEvent::Sent(sent) = &journal[bob].last().expect("records").event else { panic!("SEND last") };
    assert_eq!(
        (sent.record.server_hostname.as_deref(), sent.record.sender.as_str()),
        (Some("mx.example.org"), "alice@contoso.com")
    );
    assert!(sent.attempt >= 2, "sent after a deferral: {sent:?}");
    // Refused by the next hop: failed, and an NDR to the sender.
    assert_eq!(trace(&journal[gone]), ["RECEIVE", "AGENTINFO", "DEFER", "FAIL", "DSN"]);
    assert_eq!(statuses(&journal[gone]), [TraceStatus::Pending, TraceStatus::Failed]);
    let records = &journal[gone];
    let JournalEvent::Failed(failed) = &records[records.len() - 2].event else { panic!("FAIL before DSN") };
    assert_eq!((failed.reply.code, failed.reply.enhanced.as_deref()), (550, Some("5.1.1")));
    let JournalEvent::DsnGenerated(dsn) = &records[records.len() - 1].event else { panic!("DSN last") };
    assert_eq!(Some(&dsn.dsn_message_id), failed.ndr_message_id.as_ref());
    assert_eq!(dsn.dsn_recipient, "alice@contoso.com");
    // The NDR is a message of its own, traced like any other.
    let ndr = &journal[&dsn.dsn_message_id];
    assert_eq!(trace(ndr), ["RECEIVE", "AGENTINFO", "DELIVER"]);
    assert_eq!(ndr[0].event.record().sender, "", "from <>");
    // Refused at RCPT TO: searchable, with its reply.
    let refused: Vec<&Envelope<JournalEvent>> =
        journal.values().flatten().filter(|r| r.event.record().recipients == ["nobody@contoso.com"]).collect();
    assert_eq!(refused.len(), 1, "{refused:#?}");
    let JournalEvent::Failed(refusal) = &refused[0].event else { panic!("a FAIL record") };
    assert_eq!((refusal.attempts, refusal.record.status, refusal.reply.code), (0, TraceStatus::Failed, 550));
    assert_eq!(refusal.reply.enhanced.as_deref(), Some("5.4.1"));
    assert_eq!(refusal.record.sender, "alice@contoso.com");
    // Every record has a distinct id, derived from where it came from.
    let event_ids: std::collections::BTreeSet<_> = journal.values().flatten().map(|r| r.event_id).collect();
    assert_eq!(event_ids.len(), journal.values().map(Vec::len).sum::<usize>());

    // The reference consumer, beside the running router.
    let out = router.dir.path().join("archive");
    let config_file = router.dir.path().join("config.toml");
    let first = archive(&config_file, &out)?;
    let total: u64 = journal.values().map(|r| r.len() as u64).sum();
    assert!(first["records_read"].as_u64() >= Some(total), "{first}");
    assert_eq!(first["records_added"], first["records_read"], "{first}");
    assert_eq!(first["eml_written"], 4, "three messages and the NDR: {first}");
    for to in ["alice@contoso.com", "bob@example.org", "gone@example.net"] {
        assert_archived_as_sent(&out, &ids[to], to)?;
    }
    assert_eq!(std::fs::metadata(out.join(format!("{alice}.eml")))?.len(), stored_size);
    let metadata: Value = serde_json::from_slice(&std::fs::read(out.join(format!("{alice}.json")))?)?;
    assert_eq!(metadata["status"], "delivered");
    assert_eq!(metadata["sender"], "alice@contoso.com");
    assert_eq!(metadata["eml"], format!("{alice}.eml"));
    let types: Vec<&str> =
        metadata["records"].as_array().context("records")?.iter().filter_map(|r| r["type"].as_str()).collect();
    assert_eq!(types, ["Received", "Filtered", "Delivered"]);
    let failed_metadata: Value = serde_json::from_slice(&std::fs::read(out.join(format!("{gone}.json")))?)?;
    assert_eq!(failed_metadata["status"], "failed");
    // Resumable: a second run starts where the first stopped.
    let second = archive(&config_file, &out)?;
    assert_eq!((second["records_read"].as_u64(), second["eml_written"].as_u64()), (Some(0), Some(0)), "{second}");
    // Idempotent: from the start again, nothing is added twice.
    let mut before: Vec<_> = std::fs::read_dir(&out)?.map(|e| e.map(|e| e.file_name())).collect::<Result<_, _>>()?;
    std::fs::remove_file(out.join(".position"))?;
    let again = archive(&config_file, &out)?;
    assert_eq!(again["records_read"], first["records_read"], "{again}");
    assert_eq!((again["records_added"].as_u64(), again["eml_written"].as_u64()), (Some(0), Some(0)), "{again}");
    let mut after: Vec<_> = std::fs::read_dir(&out)?.map(|e| e.map(|e| e.file_name())).collect::<Result<_, _>>()?;
    before.sort();
    after.sort();
    assert_eq!(before, after, "no file added or left behind");
    let unchanged: Value = serde_json::from_slice(&std::fs::read(out.join(format!("{alice}.json")))?)?;
    assert_eq!(unchanged, metadata);
    Ok(())
}

/// Runs `kcat` to read the whole journal; one JSON record per line.
fn kcat(broker: &Broker) -> anyhow::Result<Vec<String>> {
    let output = Command::new("kcat")
        .args(["-b", &broker.bootstrap, "-C", "-t", topic::JOURNAL, "-o", "beginning", "-e", "-q", "-f", "%s\\n"])
        .output()
        .context("kcat is not installed: run scripts/install-test-deps (Debian package kcat)")?;
    ensure!(output.status.success(), "kcat failed: {}", String::from_utf8_lossy(&output.stderr));
    Ok(String::from_utf8(output.stdout)?.lines().filter(|l| !l.is_empty()).map(str::to_string).collect())
}

/// Validates every record against the published schema with Python's `jsonschema`.
fn validate_with_jsonschema(records: &[String]) -> anyhow::Result<()> {
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/mailflow.journal.v1.json");
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), records.join("\n"))?;
    let script = r#"
import json, sys
try:
    import jsonschema
except ImportError:
    sys.exit("Python jsonschema is not installed: run scripts/install-test-deps (pip jsonschema)")
schema = json.load(open(sys.argv[1]))
validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
jsonschema.Draft202012Validator.check_schema(schema)
count = 0
for line in open(sys.argv[2]):
    record = json.loads(line)
    errors = [e.message for e in validator.iter_errors(record)]
    if errors:
        sys.exit("record %s does not validate: %s" % (line.strip(), errors))
    count += 1
print(count)
"#;
    let output = Command::new("python3").arg("-c").arg(script).arg(&schema).arg(file.path()).output()?;
    ensure!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let count: usize = String::from_utf8_lossy(&output.stdout).trim().parse()?;
    ensure!(count == records.len(), "validated {count} of {} records", records.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka_a_foreign_client_reads_the_journal_and_every_record_validates_against_the_published_schema()
-> anyhow::Result<()> {
    let broker = Broker::start()?;
    let dns = DnsServer::start(ZONE)?;
    let sink = Sink::start(Script::smtp()).await?;
    let kafka = format!(
        "\n[event_log]\nkind = \"kafka\"\nbrokers = \"{}\"\npartitions = 3\nreplication_factor = 1\nmessage_timeout = \"30s\"\n",
        broker.bootstrap
    );
    let router =
        Router::start(&format!("{}{kafka}", relay_config(&dns, sink.address.port(), "retry_schedule = [\"1s\"]")))?;
    let ids = send(&router, &["alice@contoso.com", "bob@example.org"], "nobody@contoso.com")?;
    let (alice, bob) = (&ids["alice@contoso.com"], &ids["bob@example.org"]);
    let deadline = Instant::now() + Duration::from_secs(90);
    let records = loop {
        let lines = kcat(&broker)?;
        let parsed: Vec<Value> = lines.iter().map(|l| serde_json::from_str(l)).collect::<Result<_, _>>()?;
        let has = |id: &String, kind: &str| parsed.iter().any(|r| r["message_id"] == **id && r["type"] == kind);
        if has(alice, "Delivered")
            && has(bob, "Sent")
            && parsed.iter().any(|r| r["recipients"][0] == "nobody@contoso.com")
        {
            break lines;
        }
        ensure!(Instant::now() < deadline, "journal incomplete after 90 s: {lines:#?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    validate_with_jsonschema(&records)?;
    // Message trace (spec 15) on Kafka: the admin API's index of the journal
    // on the broker finds each row, and the detail lists the message's events.
    let expected =
        [("alice@contoso.com", "delivered"), ("bob@example.org", "delivered"), ("nobody@contoso.com", "failed")];
    router
        .wait_for_admin(
            Duration::from_secs(60),
            "/api/v1/trace?sender=alice@contoso.com",
            "trace rows on Kafka",
            |answer| {
                let mut rows: Vec<(&str, &str)> = answer["rows"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| (r["recipient"].as_str().unwrap_or("?"), r["status"].as_str().unwrap_or("?")))
                    .collect();
                rows.sort();
                rows == expected
            },
        )
        .await?;
    let detail = router.admin().get(&format!("/api/v1/trace/{bob}")).await?;
    let events: Vec<&str> =
        detail["events"].as_array().into_iter().flatten().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(events.first(), Some(&"RECEIVE"), "{detail:#}");
    assert_eq!(events.last(), Some(&"SEND"), "{detail:#}");
    // And what kcat read decodes with the published types.
    for line in &records {
        let envelope: Envelope<JournalEvent> = Envelope::from_json(line.as_bytes())?;
        ensure!(envelope.event.record().record_id.is_some(), "{line}");
    }
    // The archive, in its own consumer group.
    let out = router.dir.path().join("archive");
    let summary = archive(&router.dir.path().join("config.toml"), &out)?;
    assert!(summary["records_read"].as_u64() >= Some(records.len() as u64), "{summary}");
    for to in ["alice@contoso.com", "bob@example.org"] {
        assert_archived_as_sent(&out, &ids[to], to)?;
    }
    let again = archive(&router.dir.path().join("config.toml"), &out)?;
    assert_eq!(again["records_added"], 0, "the group resumes after what it committed: {again}");
    Ok(())
}
