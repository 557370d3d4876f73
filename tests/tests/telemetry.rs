//! OpenTelemetry traces across processes (issue 9, observability: "OpenTelemetry
//! traces with one trace per message across every actor and process (trace
//! context carried in the event envelope), OTLP export when configured").
//!
//! Two router processes on a real Kafka-protocol broker with split roles —
//! A runs connection, verdict and routing and exports OTLP/JSON, B runs
//! delivery and exports OTLP/protobuf — both to a real OTLP/HTTP collector on
//! loopback (`mailflow_tests::otlp`); the next hop is the scriptable SMTP sink
//! reached by MX. Two messages are sent and delivered, then both processes get
//! SIGTERM. The batch delay is ten minutes, so nothing is exported before
//! that: every span the collector holds was flushed at exit. The assertions
//! are on what the collector decoded: per message one trace holding exactly
//! accept → verdict → routing → delivery attempt, parent by parent, the first
//! three from A and the last from B; the accept span names the mailflow
//! message id that the 250 gave and the sink's copy shows (`Received: … id`);
//! the two messages have two trace ids.

use std::time::Duration;

use anyhow::Context as _;
use mailflow_tests::broker::Broker;
use mailflow_tests::clients::python;
use mailflow_tests::dns::DnsServer;
use mailflow_tests::otlp::{Collector, Span};
use mailflow_tests::router::{Router, relay_config};
use mailflow_tests::sink::{Script, Sink};

const ZONE: &str = "example.org. 300 IN MX 10 mx.example.org.\nmx.example.org. 300 IN A 127.0.0.1\n";

/// OTLP `SpanKind` values.
const SERVER: i64 = 2;
const CLIENT: i64 = 3;
const CONSUMER: i64 = 5;

fn config(broker: &Broker, dns: &DnsServer, mx_port: u16, collector: &Collector, protocol: &str) -> String {
    let relay = relay_config(dns, mx_port, "").replace("[server]\n", "[server]\ndrain_timeout = \"5s\"\n");
    format!(
        "{relay}\n[event_log]\nkind = \"kafka\"\nbrokers = \"{}\"\npartitions = 3\nreplication_factor = 1\n\
         message_timeout = \"30s\"\n\n[telemetry]\notlp_endpoint = \"{}\"\nprotocol = \"{protocol}\"\n\
         service_name = \"mailflow-test\"\n",
        broker.bootstrap,
        collector.endpoint()
    )
}

/// Sends `count` messages in one session from the on-premises address;
/// returns the mailflow message id of each, from its `250 2.0.0 OK <id> queued`.
fn send(router: &Router, count: usize) -> anyhow::Result<Vec<String>> {
    let script = format!(
        r#"
s = smtplib.SMTP(ADDR, PORT, timeout=30)
s.ehlo("onprem.contoso.com")
replies = []
for n in range({count}):
    s.mail("alice@contoso.com")
    s.rcpt("user@example.org")
    code, text = s.data(("From: alice@contoso.com\r\nSubject: traced %d\r\n\r\nbody %d\r\n" % (n, n)).encode())
    replies.append([code, text.decode()])
s.quit()
print(json.dumps(replies))
"#
    );
    let replies: Vec<(u16, String)> = serde_json::from_value(python(router.smtp(), &script)?)?;
    replies
        .into_iter()
        .map(|(code, text)| {
            anyhow::ensure!(code == 250, "{code} {text}");
            let id = text.split_once('<').and_then(|(_, rest)| rest.split_once('>')).map(|(id, _)| id);
            Ok(id.with_context(|| format!("no id in `{text}`"))?.to_string())
        })
        .collect()
}

/// The one span named `name` among `spans`.
fn one<'a>(spans: &[&'a Span], name: &str) -> &'a Span {
    let found: Vec<&&Span> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one {name} span expected: {spans:#?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_is_one_trace_from_smtp_accept_to_delivery_across_two_processes() -> anyhow::Result<()> {
    let broker = Broker::start()?;
    let dns = DnsServer::start(ZONE)?;
    let sink = Sink::start(Script::smtp()).await?;
    let collector = Collector::start().await?;
    let port = sink.address.port();
    // No export before exit: what arrives is the flush at SIGTERM.
    let env = [("OTEL_BSP_SCHEDULE_DELAY", "600000")];
    let roles_a = "connection,verdict,routing";
    let config_a = config(&broker, &dns, port, &collector, "http/json");
    let mut a = Router::start_with_env(tempfile::tempdir()?, &config_a, &["--roles", roles_a], &env)?;
    let config_b = config(&broker, &dns, port, &collector, "http/protobuf");
    let mut b = Router::start_with_env(tempfile::tempdir()?, &config_b, &["--roles", "delivery"], &env)?;

    let ids = send(&a, 2)?;
    let delivered = sink.wait_for_received(2, Duration::from_secs(60)).await;
    assert_eq!(delivered.len(), 2, "both messages reach the next hop: {delivered:#?}");
    assert_eq!(collector.requests(), 0, "spans wait in the batch until exit");
    for router in [&mut a, &mut b] {
        let status = tokio::task::block_in_place(|| router.terminate(Duration::from_secs(30)))?;
        assert!(status.success(), "a drained process exits 0: {status:?}");
    }

    assert_eq!(collector.errors(), Vec::<String>::new(), "every export request was readable");
    let spans = collector.spans();
    let instance = |router: &Router| format!("/{}", router.pid());
    let of = |router: &Router| -> Vec<&Span> {
        spans.iter().filter(|s| s.resource("service.instance.id").ends_with(&instance(router))).collect()
    };
    let (from_a, from_b) = (of(&a), of(&b));
    assert_eq!(from_a.len() + from_b.len(), spans.len(), "spans of no other process: {spans:#?}");
    for (process, spans, roles, encoding) in [("A", &from_a, roles_a, "json"), ("B", &from_b, "delivery", "protobuf")] {
        assert!(!spans.is_empty(), "no span from process {process}");
        for span in spans {
            assert_eq!(span.resource("service.name"), "mailflow-test", "{span:#?}");
            assert_eq!(span.resource("mailflow.roles"), roles, "{span:#?}");
            assert_eq!(span.encoding, encoding, "process {process} exports {encoding}: {span:#?}");
        }
    }

    let mut traces = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        let accepted: Vec<&Span> =
            spans.iter().filter(|s| s.name == "smtp.accept" && s.attribute("mailflow.message_id") == id).collect();
        let accept = one(&accepted, "smtp.accept");
        let trace: Vec<&Span> = spans.iter().filter(|s| s.trace_id == accept.trace_id).collect();
        let mut names: Vec<&str> = trace.iter().map(|s| s.name.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["delivery.attempt", "routing", "smtp.accept", "verdict"], "message {id}: {trace:#?}");
        let (verdict, routing, attempt) =
            (one(&trace, "verdict"), one(&trace, "routing"), one(&trace, "delivery.attempt"));
        // The tree: accept is the root, each stage the child of the one before, across the processes.
        assert_eq!(accept.parent_span_id, "", "accept starts the trace");
        assert_eq!(verdict.parent_span_id, accept.span_id);
        assert_eq!(routing.parent_span_id, verdict.span_id);
        assert_eq!(attempt.parent_span_id, routing.span_id);
        for span in [accept, verdict, routing] {
            assert!(from_a.contains(&span), "{} runs in process A", span.name);
        }
        assert!(from_b.contains(&attempt), "the delivery attempt runs in process B");
        assert_eq!([accept.kind, verdict.kind, routing.kind, attempt.kind], [SERVER, CONSUMER, CONSUMER, CLIENT]);
        for span in &trace {
            assert_eq!(span.attribute("mailflow.message_id"), id, "{span:#?}");
        }
        assert_eq!(accept.attribute("client.address"), "127.0.0.1");
        assert_eq!(accept.attribute("mailflow.sender"), "alice@contoso.com");
        assert_eq!(accept.attribute("mailflow.recipient_count"), "1");
        assert_eq!(accept.attribute("smtp.reply_code"), "250");
        assert_eq!(routing.attribute("mailflow.destination_count"), "1");
        assert_eq!(attempt.attribute("mailflow.destination"), "internet:example.org");
        assert_eq!(attempt.attribute("server.address"), "mx.example.org");
        assert_eq!(attempt.attribute("network.peer.address"), "127.0.0.1");
        assert_eq!(attempt.attribute("smtp.reply_code"), "250");
        assert_eq!(attempt.attribute("mailflow.outcome"), "delivered");
        // The sink's copy names the same message: our Received header's `id`.
        let copy = delivered.iter().find(|r| r.subject() == format!("traced {n}")).context("the sink's copy")?;
        let text = String::from_utf8_lossy(&copy.content);
        assert!(text.contains(&format!("\tid {id}\r\n")), "the copy of {id} names it: {text}");
        traces.push(accept.trace_id.clone());
    }
    assert_ne!(traces[0], traces[1], "two messages, two traces");
    assert!(traces.iter().all(|t| t.len() == 32 && t.bytes().any(|b| b != b'0')), "{traces:?}");
    eprintln!(
        "{} spans ({} from A over OTLP/JSON, {} from B over OTLP/protobuf) in {} requests; traces {traces:?} of messages {ids:?}",
        spans.len(),
        from_a.len(),
        from_b.len(),
        collector.requests()
    );
    Ok(())
}
