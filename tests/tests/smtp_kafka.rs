//! The front door on the Kafka backend: a `250` only after the content and
//! `MessageReceived` were acknowledged by a real Kafka-protocol broker
//! (idempotent producer, `acks=all`), and the event is there to read.

use std::time::Duration;

use mailflow_events::Envelope;
use mailflow_events::log::EventLog as _;
use mailflow_events::log::kafka::{KafkaLog, KafkaOptions};
use mailflow_events::received::ReceivedEvent;
use mailflow_events::{content, topic};
use mailflow_tests::broker::Broker;
use mailflow_tests::clients::python;
use mailflow_tests::conformance::read_all;
use mailflow_tests::router::{BASE_CONFIG, Router};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_accepted_over_smtp_is_in_kafka_when_250_arrives() -> anyhow::Result<()> {
    let broker = Broker::start()?;
    let config = format!(
        "{BASE_CONFIG}\n[event_log]\nkind = \"kafka\"\nbrokers = \"{}\"\npartitions = 3\nreplication_factor = 1\nmessage_timeout = \"30s\"\n",
        broker.bootstrap
    );
    let mut router = Router::start(&config)?;
    let reply = python(
        router.smtp(),
        r#"
s = smtplib.SMTP(ADDR, PORT)
code, msg = s.sendmail("s@example.net", ["alice@contoso.com"], b"Subject: kafka\r\n\r\nvia the broker\r\n") or (250, b"")
print(json.dumps("ok"))
"#,
    )?;
    assert_eq!(reply, "ok");
    router.kill();
    let log = KafkaLog::connect(KafkaOptions {
        brokers: broker.bootstrap.clone(),
        client_id: "test-reader".into(),
        request_timeout: Duration::from_secs(20),
        ..KafkaOptions::default()
    })?;
    let partitions = log.create_topic(topic::RECEIVED, 3, mailflow_events::log::TopicKind::Events).await?;
    assert_eq!(partitions, 3, "the router created the topic with its configured partition count");
    let mut found = None;
    for partition in 0..partitions {
        for record in read_all(&log, topic::RECEIVED, partition, 0).await? {
            let envelope: Envelope<ReceivedEvent> = Envelope::from_json(&record.value)?;
            if let ReceivedEvent::MessageReceived(received) = envelope.event {
                found = Some((envelope.message_id, received));
            }
        }
    }
    let (id, received) = found.expect("MessageReceived is in Kafka");
    log.create_topic(topic::CONTENT, 3, mailflow_events::log::TopicKind::Events).await?;
    let body = content::load(&log, &id, &received.content).await?;
    assert!(String::from_utf8(body)?.ends_with("Subject: kafka\r\n\r\nvia the broker\r\n"));
    Ok(())
}
