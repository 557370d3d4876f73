//! Prometheus metrics of a running router (issue: running at scale,
//! "Observability"): `GET /metrics` on the admin listener, read by the
//! reference OpenMetrics parser (Python's `prometheus_client`), after real
//! traffic: accepted mail delivered to Maildir, a refusal at RCPT (spec 3.1,
//! `550 5.4.1`) and a destination in retry (connection refused, `4.4.316`).

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use mailflow_tests::clients::{python, send_numbered};
use mailflow_tests::dns::DnsServer;
use mailflow_tests::router::{Router, relay_config};
use mailflow_tests::sink::Sink;

const ZONE: &str = "example.org. 300 IN MX 10 mx.example.org.\nmx.example.org. 300 IN A 127.0.0.1\n";

/// One sample: metric family name, sample name, labels, value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: HashMap<String, String>,
    value: f64,
}

/// Parses `text` with `prometheus_client.openmetrics.parser`, which refuses
/// anything that is not valid OpenMetrics (suffixes, units, `# EOF`, ...).
fn parse(text: &str) -> anyhow::Result<Vec<Sample>> {
    let script = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append({"name": s.name, "labels": s.labels, "value": s.value})
print(json.dumps(out))
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("python3 (prometheus-client; scripts/install-test-deps)")?;
    use std::io::Write as _;
    child.stdin.take().context("stdin")?.write_all(text.as_bytes())?;
    let output = child.wait_with_output()?;
    anyhow::ensure!(
        output.status.success(),
        "not valid OpenMetrics: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    let samples: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout)?;
    Ok(samples
        .into_iter()
        .map(|s| Sample {
            name: s["name"].as_str().unwrap_or_default().to_string(),
            labels: serde_json::from_value(s["labels"].clone()).unwrap_or_default(),
            value: s["value"].as_f64().unwrap_or(f64::NAN),
        })
        .collect())
}

/// The value of `name` with (at least) `labels`, summed over the other labels.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .collect();
    (!matching.is_empty()).then(|| matching.iter().map(|s| s.value).sum())
}

async fn scrape(router: &Router) -> anyhow::Result<(String, Vec<Sample>)> {
    let (status, text) = router.admin().get_text("/metrics").await?;
    anyhow::ensure!(status == 200, "GET /metrics: {status}");
    let samples = parse(&text)?;
    Ok((text, samples))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_sessions_refusals_verdicts_deliveries_queues_appends_and_lag() -> anyhow::Result<()> {
    let dns = DnsServer::start(ZONE)?;
    let closed = Sink::closed_port()?;
    let config = relay_config(&dns, closed.port(), "retry_schedule = [\"1h\"]");
    let router = Router::start(&config)?;
    router.wait_ready().await?;

    // Three messages for a mailbox (Maildir), two for a destination that refuses connections.
    send_numbered(router.smtp(), "alice@contoso.com", "bob@contoso.com", 3)?;
    send_numbered(router.smtp(), "alice@contoso.com", "someone@example.org", 2)?;
    // One refusal at RCPT: an unknown recipient of an authoritative domain.
    let refused = python(
        router.smtp(),
        r#"
s = smtplib.SMTP(ADDR, PORT)
s.ehlo("client.example.net")
s.mail("sender@example.net")
code, text = s.rcpt("nobody@contoso.com")
s.quit()
print(json.dumps([code, text.decode()]))
"#,
    )?;
    assert_eq!(refused[0], 550, "{refused}");
    assert!(refused[1].as_str().unwrap_or_default().starts_with("5.4.1"), "{refused}");

    // Wait until the pipeline has judged, routed and attempted everything.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (text, samples) = loop {
        let (text, samples) = scrape(&router).await?;
        let delivered = value(&samples, "mailflow_delivery_outcomes_total", &[("outcome", "Delivered")]);
        let depth = value(&samples, "mailflow_queue_depth", &[("destination", "internet:example.org")]);
        let lag = value(&samples, "mailflow_consumer_lag", &[]);
        if delivered == Some(3.0) && depth == Some(2.0) && lag == Some(0.0) {
            break (text, samples);
        }
        anyhow::ensure!(Instant::now() < deadline, "metrics never settled:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let get = |name: &str, labels: &[(&str, &str)]| value(&samples, name, labels);

    assert_eq!(get("mailflow_smtp_messages_accepted_total", &[("listener", "smtp")]), Some(5.0), "{text}");
    assert_eq!(
        get(
            "mailflow_smtp_refusals_total",
            &[("stage", "recipient"), ("reason", "unknown_recipient"), ("code", "550 5.4.1")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(get("mailflow_smtp_sessions_total", &[("listener", "smtp")]), Some(3.0), "{text}");
    assert_eq!(get("mailflow_smtp_sessions_active", &[]), Some(0.0), "{text}");
    assert_eq!(get("mailflow_verdicts_total", &[]), Some(5.0), "every accepted message judged: {text}");
    assert_eq!(get("mailflow_verdicts_total", &[("action", "deliver")]), Some(5.0), "{text}");
    // The refused destination is in retry with both messages; its oldest is a few seconds old at most.
    assert_eq!(
        get("mailflow_queue_depth", &[("destination", "internet:example.org"), ("state", "retry")]),
        Some(2.0),
        "{text}"
    );
    let age = get("mailflow_queue_oldest_age_seconds", &[("destination", "internet:example.org")]);
    assert!(age.is_some_and(|a| (0.0..60.0).contains(&a)), "oldest age {age:?}: {text}");
    assert!(
        get("mailflow_delivery_outcomes_total", &[("outcome", "Deferred")]).is_some_and(|v| v >= 1.0),
        "the refused connection is counted as a deferral: {text}"
    );
    // Three copies delivered, each with its latency.
    assert_eq!(get("mailflow_delivery_latency_seconds_count", &[]), Some(3.0), "{text}");
    // Appends are timed per topic: five messages received, each an event and its content.
    let received_appends = get("mailflow_event_log_append_seconds_count", &[("topic", "mailflow.received")]);
    assert!(received_appends.is_some_and(|n| n >= 6.0), "5 messages + 1 refusal: {received_appends:?}");
    assert_eq!(get("mailflow_event_log_append_errors_total", &[]), None, "no append failed: {text}");
    // Every consumer group has caught up; replay is over.
    for group in ["mailflow-verdict", "mailflow-routing", "mailflow-journal", "mailflow-delivery"] {
        assert_eq!(get("mailflow_consumer_lag", &[("group", group)]), Some(0.0), "{group}: {text}");
    }
    assert_eq!(get("mailflow_delivery_replay_remaining", &[]), Some(0.0), "{text}");
    Ok(())
}

#[test]
fn json_logs_carry_the_message_id_on_every_line_about_a_message() -> anyhow::Result<()> {
    use std::io::{BufRead as _, BufReader};
    let dir = tempfile::tempdir()?;
    let config = format!(
        "{}\n[event_log]\nkind = \"embedded\"\npath = {:?}\n[mailbox_store]\nkind = \"maildir\"\npath = {:?}\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n",
        mailflow_tests::router::BASE_CONFIG,
        dir.path().join("log").display().to_string(),
        dir.path().join("mail").display().to_string()
    );
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config)?;
    let mut child = Command::new(mailflow_tests::router::binary()?)
        .args(["serve", "--config"])
        .arg(&path)
        .env("MAILFLOW_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let stdout = BufReader::new(child.stdout.take().context("stdout")?);
    let stderr = child.stderr.take().context("stderr")?;
    let lines = std::thread::spawn(move || BufReader::new(stderr).lines().map_while(Result::ok).collect::<Vec<_>>());
    let mut smtp = None;
    let mut stdout_lines = stdout.lines();
    for line in stdout_lines.by_ref() {
        let line = line?;
        if let Some(address) = line.strip_prefix("listening smtp ") {
            smtp = Some(address.parse()?);
        }
        if line == "ready" {
            break;
        }
    }
    let smtp = smtp.context("no smtp listener")?;
    std::thread::spawn(move || stdout_lines.for_each(drop));
    send_numbered(smtp, "someone@example.net", "bob@contoso.com", 1)?;
    let mail = dir.path().join("mail/bob@contoso.com/new");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_dir(&mail).map_or(0, |d| d.count()) == 0 {
        anyhow::ensure!(Instant::now() < deadline, "never delivered");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let status = child.wait()?;
    assert!(status.success(), "{status:?}");
    let lines = lines.join().map_err(|_| anyhow::anyhow!("stderr reader"))?;
    let records: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
        .collect::<Result<_, _>>()?;
    let about = |message: &str| -> Vec<serde_json::Value> {
        records
            .iter()
            .filter(|r| r["fields"]["message"] == message)
            .map(|r| r["fields"]["message_id"].clone())
            .collect()
    };
    let accepted = about("accepted");
    assert_eq!(accepted.len(), 1, "{lines:#?}");
    let id = accepted[0].as_str().context("accepted without message_id")?.to_string();
    for message in ["judged", "routed", "delivered to Maildir"] {
        let ids = about(message);
        assert_eq!(ids, vec![serde_json::Value::String(id.clone())], "{message}: {lines:#?}");
    }
    for record in &records {
        assert!(record["level"].is_string() && record["timestamp"].is_string(), "{record}");
    }
    Ok(())
}
