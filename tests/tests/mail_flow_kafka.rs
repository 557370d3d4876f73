//! The delivery issue's four scenarios on the Kafka backend (DESIGN §3; the
//! embedded-log versions are in `mail_flow_delivery` and `queue_operations`):
//! deferral and ordered redelivery by one process and by two delivery
//! processes sharing the partitions; a kill -9 of the router, and of one of
//! two delivery processes, after which the state rebuilt by replay equals the
//! state before; and NDRs for a 5xx and an expiry, with none for a failed NDR.
//! With a Kafka-protocol broker on loopback (noida-db, or librdkafka's mock
//! cluster where a killed member's session must expire), a real DNS server,
//! and the scriptable sink as the next hop that is down and comes back.

use anyhow::{Context as _, ensure};
use std::collections::HashMap;
use std::time::{Duration, Instant};

use mailflow_events::Envelope;
use mailflow_events::delivery::{DeliveryEvent, Scope};
use mailflow_events::log::EventLog as _;
use mailflow_events::log::kafka::{KafkaLog, KafkaOptions};
use mailflow_events::topic;
use mailflow_tests::broker::Broker;
use mailflow_tests::clients::python;
use mailflow_tests::conformance::read_all;
use mailflow_tests::dns::DnsServer;
use mailflow_tests::router::{BASE_CONFIG, Router, assert_probes_on_schedule};
use mailflow_tests::sink::{Script, Sink};

const DOMAINS: [&str; 6] = ["d0.example", "d1.example", "d2.example", "d3.example", "d4.example", "d5.example"];

fn zone() -> String {
    DOMAINS.iter().map(|d| format!("{d}. 300 IN MX 10 mx.{d}.\nmx.{d}. 300 IN A 127.0.0.1\n")).collect()
}

fn config(broker: &Broker, dns: &DnsServer, mx_port: u16) -> String {
    format!(
        "{BASE_CONFIG}\n[dns]\nnameservers = [\"{}\"]\n[transport]\nmx_port = {mx_port}\nretry_schedule = [\"1s\"]\n\
         [[inbound_connectors]]\nname = \"onprem\"\nkind = \"on_premises\"\nsender_ip_addresses = [\"127.0.0.1\"]\n\
         [event_log]\nkind = \"kafka\"\nbrokers = \"{}\"\npartitions = 3\nreplication_factor = 1\nmessage_timeout = \"30s\"\n",
        dns.address, broker.bootstrap
    )
}

/// Sends `per_domain` messages to each domain, interleaved, in one session.
fn send(router: &Router, domains: &[&str], per_domain: usize) -> anyhow::Result<()> {
    let script = format!(
        r#"
s = smtplib.SMTP(ADDR, PORT)
s.ehlo("onprem.contoso.com")
for n in range({per_domain}):
    for d in {domains:?}:
        s.sendmail("alice@contoso.com", ["user@" + d], ("Subject: %s %03d\r\n\r\nbody\r\n" % (d, n)).encode())
s.quit()
print(json.dumps("sent"))
"#
    );
    python(router.smtp(), &script)?;
    Ok(())
}

/// Every `mailflow.delivery` event in the broker, by partition order.
async fn delivery_events(log: &KafkaLog) -> anyhow::Result<Vec<Envelope<DeliveryEvent>>> {
    let mut events = Vec::new();
    for partition in 0..3 {
        for record in read_all(log, topic::DELIVERY, partition, 0).await? {
            events.push(Envelope::from_json(&record.value)?);
        }
    }
    Ok(events)
}

async fn reader(broker: &Broker) -> anyhow::Result<KafkaLog> {
    let log = KafkaLog::connect(KafkaOptions {
        brokers: broker.bootstrap.clone(),
        client_id: "test-reader".into(),
        request_timeout: Duration::from_secs(20),
        ..KafkaOptions::default()
    })?;
    log.create_topic(topic::DELIVERY, 3, mailflow_events::log::TopicKind::Events).await?;
    Ok(log)
}

async fn wait_until(
    log: &KafkaLog,
    what: &str,
    done: impl Fn(&[Envelope<DeliveryEvent>]) -> bool,
) -> anyhow::Result<Vec<Envelope<DeliveryEvent>>> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let events = delivery_events(log).await?;
        if done(&events) {
            return Ok(events);
        }
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_for_sink(sink: &Sink, count: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let subjects: Vec<String> = sink
            .received()
            .iter()
            .map(|r| {
                let text = String::from_utf8_lossy(&r.content).to_string();
                text.lines().find_map(|l| l.strip_prefix("Subject: ")).unwrap_or_default().trim().to_string()
            })
            .collect();
        if subjects.len() >= count || Instant::now() > deadline {
            return subjects;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Per domain, the numbers in the order they arrived; and duplicates.
fn per_domain(subjects: &[String]) -> (HashMap<String, Vec<u32>>, usize) {
    let mut order: HashMap<String, Vec<u32>> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    let mut duplicates = 0;
    for subject in subjects {
        if !seen.insert(subject.clone()) {
            duplicates += 1;
        }
        if let Some((domain, n)) = subject.split_once(' ') {
            order.entry(domain.to_string()).or_default().push(n.parse().unwrap_or(u32::MAX));
        }
    }
    (order, duplicates)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka_deferred_mail_arrives_in_receipt_order_after_the_next_hop_recovers() -> anyhow::Result<()> {
    let broker = Broker::start()?;
    let dns = DnsServer::start(&zone())?;
    let port = Sink::closed_port()?;
    // Issue "delivery", test 1 on Kafka (spec 11.4 T): 100 messages to a next
    // hop that refuses connections, probed on the schedule, all delivered in
    // receipt order once it is back.
    let config =
        config(&broker, &dns, port.port()).replace("retry_schedule = [\"1s\"]", "retry_schedule = [\"1s\", \"2s\"]");
    let router = Router::start(&config)?;
    let log = reader(&broker).await?;
    send(&router, &DOMAINS[..2], 50)?;
    let events = wait_until(&log, "three deferrals of both destinations", |events| {
        DOMAINS[..2].iter().all(|domain| {
            events
                .iter()
                .filter(|e| matches!(&e.event, DeliveryEvent::Deferred(d) if d.scope == Scope::Destination && d.destination.name == *domain))
                .count()
                >= 3
        })
    })
    .await?;
    for domain in &DOMAINS[..2] {
        assert_probes_on_schedule(&events, domain, &[1000, 2000]);
    }
    let sink = Sink::start_at(port, Script::smtp()).await?;
    expect_each_once_in_order(&sink, &DOMAINS[..2], 50).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_delivery_processes_split_the_queues_and_deliver_everything_in_order() -> anyhow::Result<()> {
    // `a_delivery_process_killed_with_sigkill_…` kills one of them, on the
    // mock cluster: noida-db 0.2.3 never expires a dead member's session.
    let broker = Broker::start()?;
    let dns = DnsServer::start(&zone())?;
    let port = Sink::closed_port()?;
    let config = config(&broker, &dns, port.port());
    let router = Router::start(&config)?;
    let second = Router::start_with(tempfile::tempdir()?, &config, &["--roles", "delivery"])?;
    let log = reader(&broker).await?;
    send(&router, &DOMAINS, 5)?;
    // Both processes own destinations: each records deferrals under its own name.
    wait_until(&log, "deferrals from two processes", |events| {
        let producers: std::collections::HashSet<&str> = events
            .iter()
            .filter(|e| matches!(e.event, DeliveryEvent::Deferred(_)))
            .map(|e| e.producer.as_str())
            .collect();
        producers.len() == 2
    })
    .await?;
    wait_until(&log, "30 routed copies", |events| {
        events.iter().filter(|e| matches!(e.event, DeliveryEvent::Queued(_))).count() >= 30
    })
    .await?;
    // Issue "queue operations", admin views across processes: each process
    // lists every destination, its own live and the other's folded from the
    // log, so `mailflow queue` answers the same whichever pod it reaches.
    let mut owned_by = Vec::new();
    for process in [&router, &second] {
        let queues = process
            .wait_for_admin(Duration::from_secs(60), "/api/v1/queues", "every queue at depth 5", |queues| {
                let depths: Vec<Option<u64>> =
                    queues.as_array().into_iter().flatten().map(|q| q["depth"].as_u64()).collect();
                depths.len() == DOMAINS.len() && depths.iter().all(|depth| *depth == Some(5))
            })
            .await?;
        let live: std::collections::BTreeSet<String> = queues
            .as_array()
            .into_iter()
            .flatten()
            .filter(|q| q["from_log"] != true)
            .filter_map(|q| q["key"].as_str().map(str::to_string))
            .collect();
        ensure!(!live.is_empty() && live.len() < DOMAINS.len(), "each process owns a share: {queues:#}");
        owned_by.push(live);
        // One destination the other process delivers, in delivery order, here.
        let other = queues
            .as_array()
            .into_iter()
            .flatten()
            .find(|q| q["from_log"] == true)
            .and_then(|q| q["key"].as_str())
            .context("a destination of the other process")?;
        let detail = process.admin().get(&format!("/api/v1/queues/{other}")).await?;
        assert_eq!(detail["from_log"], true, "{detail:#}");
        let received: Vec<&str> =
            detail["messages"].as_array().into_iter().flatten().filter_map(|m| m["received_at"].as_str()).collect();
        assert_eq!(received.len(), 5, "{detail:#}");
        assert!(received.windows(2).all(|w| w[0] <= w[1]), "in receipt order: {received:?}");
    }
    ensure!(owned_by[0].is_disjoint(&owned_by[1]), "no destination is live in both: {owned_by:?}");
    assert_eq!(owned_by[0].len() + owned_by[1].len(), DOMAINS.len(), "{owned_by:?}");
    let sink = Sink::start_at(port, Script::smtp()).await?;
    let subjects = wait_for_sink(&sink, 30).await;
    let (order, duplicates) = per_domain(&subjects);
    assert_eq!((subjects.len(), duplicates), (30, 0), "nothing lost, nothing twice: {subjects:?}");
    for domain in DOMAINS {
        assert_eq!(order[domain], (0..5).collect::<Vec<u32>>(), "receipt order for {domain}");
    }
    let events = wait_until(&log, "30 deliveries", |events| {
        events.iter().filter(|e| matches!(e.event, DeliveryEvent::Delivered(_))).count() >= 30
    })
    .await?;
    // Each destination was delivered by exactly one process: the owner of its partition.
    let mut owners: HashMap<String, std::collections::HashSet<&str>> = HashMap::new();
    for event in &events {
        if let DeliveryEvent::Delivered(d) = &event.event {
            owners.entry(d.destination.key()).or_default().insert(event.producer.as_str());
        }
    }
    assert!(owners.values().all(|o| o.len() == 1), "{owners:?}");
    let producers: std::collections::HashSet<&str> = owners.values().flatten().copied().collect();
    assert_eq!(producers.len(), 2, "both processes delivered their share: {owners:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka_the_queue_commands_snapshots_and_replay_verify_work_as_on_the_embedded_log() -> anyhow::Result<()> {
    // Issue "queue operations" on both backends: the admin API's view of a
    // deferred destination, a snapshot written to mailflow.snapshots, `replay
    // --verify` folding the broker's log to the live state, and an operator's
    // retry that delivers the queue in order.
    let broker = Broker::start()?;
    let dns = DnsServer::start(&zone())?;
    let port = Sink::closed_port()?;
    let config = held_still(config(&broker, &dns, port.port()));
    let router = Router::start(&config)?;
    router.wait_ready().await?;
    send(&router, &DOMAINS[..1], 5)?;
    let key = "internet:d0.example";
    let deadline = Instant::now() + Duration::from_secs(90);
    let state = loop {
        let state = router.admin().get("/api/v1/state").await?;
        let partition = state
            .as_array()
            .and_then(|all| all.iter().find(|p| p["state"]["destinations"].get(key).is_some()))
            .cloned();
        if let Some(partition) = partition
            && partition["state"]["destinations"][key]["queue"].as_array().map(Vec::len) == Some(5)
            && partition["state"]["destinations"][key]["retry"].is_object()
            && partition["snapshot_at"] == partition["state"]["next_offset"]
        {
            break partition;
        }
        anyhow::ensure!(Instant::now() < deadline, "no snapshot of 5 deferred messages: {state:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let queue = router.admin().get(&format!("/api/v1/queues/{key}")).await?;
    assert_eq!((queue["state"].as_str(), queue["depth"].as_u64()), (Some("retry"), Some(5)), "{queue:#}");
    // The snapshot is in the broker's compacted topic.
    let log = reader(&broker).await?;
    log.create_topic(topic::SNAPSHOTS, 3, mailflow_events::log::TopicKind::Snapshots).await?;
    let number = state["partition"].as_u64().unwrap_or(0) as u32;
    assert!(!read_all(&log, topic::SNAPSHOTS, number, 0).await?.is_empty(), "a snapshot record on Kafka");
    let (config_path, admin) = (router.config_path().display().to_string(), router.listener("admin").to_string());
    let report =
        mailflow_tests::router::cli(&["replay", "--verify", "--json", "--config", &config_path, "--admin", &admin])?
            .json();
    assert_eq!(report["same"], true, "{report}");
    // `replay --state` from the broker's log alone: the same partition state;
    // and `replay --topic` exports every delivery event as a JSON line.
    let replayed = mailflow_tests::router::cli(&["replay", "--state", "--json", "--config", &config_path])?.json();
    let same = replayed.as_array().into_iter().flatten().find(|p| p["partition"] == state["partition"]);
    assert_eq!(same.map(|p| &p["state"]), Some(&state["state"]), "{replayed:#}");
    let export =
        mailflow_tests::router::cli(&["replay", "--topic", topic::DELIVERY, "--json", "--config", &config_path])?;
    assert_eq!(export.status, 0, "{}", export.stderr);
    let exported = export.stdout.lines().count() as u64;
    ensure!(exported >= state["state"]["next_offset"].as_u64().unwrap_or(u64::MAX), "{exported} lines exported");
    // The next hop recovers; an operator asks for the attempt now.
    let sink = Sink::start_at(port, Script::smtp()).await?;
    router.admin().post(&format!("/api/v1/queues/{key}/retry"), &serde_json::json!({})).await?;
    let subjects = wait_for_sink(&sink, 5).await;
    let expected: Vec<String> = (0..5).map(|n| format!("d0.example {n:03}")).collect();
    assert_eq!(subjects, expected);
    Ok(())
}

/// The partitions of `mailflow.delivery` a process owns, by number, with their
/// folded state (`GET /api/v1/state`).
async fn owned_states(router: &Router) -> anyhow::Result<HashMap<u64, serde_json::Value>> {
    let all = router.admin().get("/api/v1/state").await?;
    Ok(all
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p["partition"].as_u64()?, p["state"].clone())))
        .collect())
}

/// Destinations in a state, with the length of their queue.
fn depths(state: &serde_json::Value) -> Vec<(String, usize)> {
    let destinations = state["destinations"].as_object().into_iter().flatten();
    destinations.map(|(key, d)| (key.clone(), d["queue"].as_array().map_or(0, Vec::len))).collect()
}

/// What each process owns: partition → folded state.
type Owned = HashMap<u64, serde_json::Value>;

/// Polls what each of `routers` owns until `done` holds (at most `seconds`).
async fn wait_for_states(
    routers: &[&Router],
    what: &str,
    seconds: u64,
    done: impl Fn(&[Owned]) -> bool,
) -> anyhow::Result<Vec<Owned>> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        let mut states = Vec::new();
        for router in routers {
            states.push(owned_states(router).await?);
        }
        if done(&states) {
            return Ok(states);
        }
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}: {states:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `config` with an hour-long retry schedule, which keeps a deferred state
/// still so that it can be compared whole, and a snapshot every second.
fn held_still(config: String) -> String {
    config.replace("retry_schedule = [\"1s\"]", "retry_schedule = [\"1h\"]\nsnapshot_interval = \"1s\"")
}

/// The next hop has recovered: an operator asks for an attempt now for each domain.
async fn retry_now(router: &Router, domains: &[&str]) -> anyhow::Result<()> {
    for domain in domains {
        router.admin().post(&format!("/api/v1/queues/internet:{domain}/retry"), &serde_json::json!({})).await?;
    }
    Ok(())
}

/// Waits for `per_domain` messages to each of `domains` at the sink and
/// checks that each arrived once, in receipt order.
async fn expect_each_once_in_order(sink: &Sink, domains: &[&str], per_domain_count: u32) {
    let total = domains.len() * per_domain_count as usize;
    let subjects = wait_for_sink(sink, total).await;
    let (order, duplicates) = per_domain(&subjects);
    assert_eq!((subjects.len(), duplicates), (total, 0), "nothing lost, nothing twice: {subjects:?}");
    for domain in domains {
        assert_eq!(order[*domain], (0..per_domain_count).collect::<Vec<u32>>(), "receipt order for {domain}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_process_killed_with_sigkill_hands_its_partitions_over_with_their_state_and_nothing_is_lost()
-> anyhow::Result<()> {
    // Issue "delivery", test 3 (and "running at scale": kill -9 of a delivery
    // process): two delivery processes in one consumer group; one is killed
    // with SIGKILL; the other takes over its partitions, rebuilds their state
    // by replay, and delivers in order. Then the killed one restarts, rejoins
    // and rebuilds what it gets back. The broker is librdkafka's mock cluster,
    // which expires a dead member's session as Kafka does (noida-db does not).
    // An hour-long schedule keeps every state still, so the states are
    // compared whole, serialised.
    let broker = Broker::mock(3)?;
    let dns = DnsServer::start(&zone())?;
    let port = Sink::closed_port()?;
    let config = held_still(config(&broker, &dns, port.port()));
    let first = Router::start(&config)?;
    first.wait_ready().await?;
    let mut second = Router::start_with(tempfile::tempdir()?, &config, &["--roles", "delivery"])?;
    second.wait_ready().await?;
    send(&first, &DOMAINS, 5)?;

    // Every destination in retry with its five messages, split over the two.
    let states = wait_for_states(&[&first, &second], "every destination deferred", 90, |states| {
        let destinations: Vec<&serde_json::Value> = states
            .iter()
            .flat_map(|owned| owned.values())
            .flat_map(|s| s["destinations"].as_object().into_iter().flatten().map(|(_, d)| d))
            .collect();
        destinations.len() == 6
            && destinations.iter().all(|d| d["queue"].as_array().map(Vec::len) == Some(5) && d["retry"].is_object())
    })
    .await?;
    let [mine, theirs] = <[Owned; 2]>::try_from(states).map_err(|_| anyhow::anyhow!("two processes"))?;
    assert_eq!(mine.len() + theirs.len(), 3, "the two own the three partitions between them");
    let moved: Vec<(String, usize)> = theirs.values().flat_map(depths).collect();
    assert!(!moved.is_empty(), "the second process owns destinations: {theirs:#?}");

    // kill -9 the second; the first gets its partitions with the same state.
    second.kill();
    let taken = wait_for_states(&[&first], "the take-over", 60, |now| theirs.keys().all(|p| now[0].contains_key(p)))
        .await?
        .remove(0);
    for (partition, state) in &theirs {
        assert_eq!(
            &taken[partition], state,
            "partition {partition} rebuilt by replay equals its state before the kill"
        );
    }
    for (partition, state) in &mine {
        assert_eq!(&taken[partition], state, "partition {partition} stayed as it was");
    }

    // The killed process restarts and rejoins: it gets partitions back, each
    // rebuilt to the state its last owner had.
    let second = Router::start_with(second.into_dir(), &config, &["--roles", "delivery"])?;
    let rejoined = wait_for_states(&[&first, &second], "the rejoin", 60, |states| {
        !states[1].is_empty() && states[0].len() + states[1].len() == 3
    })
    .await?;
    for (partition, state) in rejoined.iter().flatten() {
        assert_eq!(state, &taken[partition], "partition {partition} after the rejoin");
    }

    // The next hop recovers; an operator asks for an attempt now.
    let sink = Sink::start_at(port, Script::smtp()).await?;
    retry_now(&first, &DOMAINS).await?;
    expect_each_once_in_order(&sink, &DOMAINS, 5).await;
    Ok(())
}

/// The files in a mailbox's `new/` folder, read as text.
fn mailbox(router: &Router, address: &str) -> Vec<String> {
    let dir = router.dir.path().join("mail").join(address).join("new");
    let entries = std::fs::read_dir(dir).into_iter().flatten().flatten();
    entries.filter_map(|e| std::fs::read_to_string(e.path()).ok()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka_a_killed_router_rebuilds_exactly_the_state_it_had_and_delivers_each_message_once_in_order()
-> anyhow::Result<()> {
    // Issue "delivery", test 2 on Kafka: kill -9 the router in the middle of
    // a deferral and restart it; the rebuilt state (queues, attempts,
    // next-attempt times, order) equals the state before the kill, serialised
    // and compared. The restarted member gets the partitions once the broker
    // has expired the killed one's session (librdkafka's mock cluster).
    let broker = Broker::mock(3)?;
    let dns = DnsServer::start(&zone())?;
    let port = Sink::closed_port()?;
    let config = held_still(config(&broker, &dns, port.port()));
    let router = Router::start(&config)?;
    router.wait_ready().await?;
    send(&router, &DOMAINS[..3], 10)?;
    let before = wait_for_states(&[&router], "30 queued", 90, |states| {
        let all: Vec<(String, usize)> = states[0].values().flat_map(depths).collect();
        all.len() == 3 && all.iter().all(|(_, n)| *n == 10)
    })
    .await?
    .remove(0);
    let router = Router::start_in(router.into_dir(), &config)?;
    let after = wait_for_states(&[&router], "the partitions back", 60, |states| states[0].len() == 3).await?.remove(0);
    assert_eq!(after, before, "the rebuilt state equals the state before the kill");

    let sink = Sink::start_at(port, Script::smtp()).await?;
    retry_now(&router, &DOMAINS[..3]).await?;
    expect_each_once_in_order(&sink, &DOMAINS[..3], 10).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka_a_5xx_and_an_expiry_end_in_ndrs_to_the_sender_and_a_failed_ndr_gets_none() -> anyhow::Result<()> {
    // Issue "delivery", test 4 on Kafka (spec 13, 11.3): a 5xx from the next
    // hop fails the recipient at once and its NDR reaches the sender's
    // mailbox; mail that cannot go out before `message_expiration` expires
    // with an NDR `4.4.7`; a failed message from the null sender (an NDR
    // itself) gets no NDR: here the NDR to a sender on premises, whose server
    // refuses it.
    let broker = Broker::start()?;
    let zone = format!(
        "{}d1.example. 300 IN MX 10 mx.d1.example.\nmx.d1.example. 300 IN A 127.0.0.3\n",
        zone().lines().filter(|l| !l.contains("d1.example")).map(|l| format!("{l}\n")).collect::<String>()
    );
    let dns = DnsServer::start(&zone)?;
    let sink = Sink::start(
        Script::smtp()
            .rcpt("gone@d0.example", "550 5.1.1 <gone@d0.example>: User unknown")
            .rcpt("left@fabrikam.com", "550 5.1.1 <left@fabrikam.com>: User unknown"),
    )
    .await?;
    let on_premises = format!(
        "[[outbound_connectors]]\nname = \"to-onprem\"\nkind = \"on_premises\"\nrecipient_domains = [\"fabrikam.com\"]\n\
         smart_hosts = [\"127.0.0.1:{}\"]\n",
        sink.address.port()
    );
    let config = config(&broker, &dns, sink.address.port())
        .replace("retry_schedule = [\"1s\"]", "retry_schedule = [\"1s\"]\nmessage_expiration = \"4s\"")
        + &on_premises;
    let router = Router::start(&config)?;
    let script = r#"
s = smtplib.SMTP(ADDR, PORT)
s.ehlo("onprem.contoso.com")
s.sendmail("alice@contoso.com", ["gone@d0.example"], b"Subject: to gone\r\n\r\nbody\r\n")
s.sendmail("alice@contoso.com", ["user@d1.example"], b"Subject: to a host that is down\r\n\r\nbody\r\n")
s.sendmail("left@fabrikam.com", ["gone@d0.example"], b"Subject: from one who left\r\n\r\nbody\r\n")
s.quit()
print(json.dumps("sent"))
"#;
    python(router.smtp(), script)?;
    let log = reader(&broker).await?;
    let events = wait_until(&log, "three failures and an expiry", |events| {
        events.iter().filter(|e| matches!(e.event, DeliveryEvent::Failed(_))).count() >= 3
            && events.iter().any(|e| matches!(e.event, DeliveryEvent::Expired(_)))
    })
    .await?;
    let failed: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.event {
            DeliveryEvent::Failed(f) => Some(f),
            _ => None,
        })
        .collect();
    for f in &failed {
        assert_eq!((f.reply.code, f.reply.enhanced.as_deref(), f.attempt), (550, Some("5.1.1"), 1), "{f:?}");
    }
    let ndr_for = |recipient: &str| {
        let f = failed.iter().find(|f| f.recipients == [recipient]).expect(recipient);
        f.ndr_message_id.is_some()
    };
    assert_eq!(failed.len(), 3, "{failed:?}");
    // gone@d0.example failed twice (alice's and left's); left's NDR failed.
    assert!(failed.iter().filter(|f| f.recipients == ["gone@d0.example"]).all(|f| f.ndr_message_id.is_some()));
    assert!(!ndr_for("left@fabrikam.com"), "no NDR of an NDR");
    let deadline = Instant::now() + Duration::from_secs(60);
    let ndrs = loop {
        let ndrs = mailbox(&router, "alice@contoso.com");
        if ndrs.len() >= 2 || Instant::now() > deadline {
            break ndrs;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(ndrs.len(), 2, "two NDRs in alice's mailbox");
    let to_gone = ndrs.iter().find(|n| n.contains("Status: 5.1.1")).expect("the 5.1.1 NDR");
    assert!(to_gone.contains("Diagnostic-Code: smtp;550 5.1.1 <gone@d0.example>: User unknown"), "{to_gone}");
    assert!(to_gone.contains("Subject: Undeliverable: to gone"), "{to_gone}");
    let expired = ndrs.iter().find(|n| n.contains("4.4.7")).expect("the 4.4.7 NDR");
    assert!(expired.contains("Diagnostic-Code: smtp;550 4.4.7 QUEUE.Expired; message expired"), "{expired}");
    // The on-premises server was offered the NDR from the null sender, and
    // refused it; nothing came after it, and nothing was accepted anywhere.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mails: Vec<String> = sink.command_lines().into_iter().filter(|l| l.starts_with("MAIL FROM")).collect();
    assert_eq!(mails.iter().filter(|l| l.starts_with("MAIL FROM:<>")).count(), 1, "{mails:?}");
    assert!(sink.received().is_empty(), "{} messages at the next hops", sink.received().len());
    let events = delivery_events(&log).await?;
    assert_eq!(events.iter().filter(|e| matches!(e.event, DeliveryEvent::Failed(_))).count(), 3, "no further NDR");
    Ok(())
}
