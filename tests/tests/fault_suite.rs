//! Proof under faults (reliability notes §1.2): the real daemon on loopback,
//! relaying the on-premises server's mail to a real DNS zone and a next hop,
//! while something breaks. The invariant everywhere: a `250` means the
//! message reaches the next hop (at least once, whole); a fault the router
//! cannot hide is a `4xx`, never a `250` and never a bounce.
//!
//! - fifty `kill -9`s under concurrent load (embedded log), reconciled;
//! - `fdatasync` failing with EIO, injected with `strace`;
//! - the Kafka broker stopped and started again;
//! - an MX lookup answered with SERVFAIL, then not at all;
//! - a next hop that hangs (before its greeting, after the data), and one
//!   that drops the connection before answering the final dot.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail, ensure};
use mailflow_events::Envelope;
use mailflow_events::delivery::{DeliveryEvent, Scope};
use mailflow_events::received::ReceivedEvent;
use mailflow_tests::broker::Broker;
use mailflow_tests::dns::{DnsFault, DnsRelay, DnsServer};
use mailflow_tests::postfix::{Dumped, SmtpSink};
use mailflow_tests::router::{Router, messages_received, relay_config, relay_config_at};
use mailflow_tests::sink::{Fault, Script, Sink, Stage};
use mailflow_tests::traffic::{self, Attempt, Clients, Outcome};
use rand::RngExt as _;

const ZONE: &str = "example.org. 300 IN MX 10 mx.example.org.\nmx.example.org. 300 IN A 127.0.0.1\n";

/// The reply when the event log cannot make a message durable (spec: `451 4.3.0`).
const LOG_FAILED: &str = "4.3.0 Temporary failure storing the message, try again later";

/// Kills of the crash test.
const KILLS: usize = 50;

/// Most messages one kill can make the router send again: the `Delivered`
/// appends a delivery task has in flight (`MAX_IN_FLIGHT`,
/// `actors/src/delivery/actor.rs`), plus the message whose reply it had not
/// read yet, for the one connection per destination configured here.
const REDELIVERIES_PER_KILL: usize = 33;

/// One client sending `count` messages from number `first`, one session.
fn one_client(first: u64, count: u64) -> Clients {
    Clients { threads: 1, first, per_client: count, per_session: count, seconds: 120 }
}

/// The deferrals among `events`, in log order.
fn deferrals(events: &[Envelope<DeliveryEvent>]) -> Vec<&mailflow_events::delivery::Deferred> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            DeliveryEvent::Deferred(d) => Some(d),
            _ => None,
        })
        .collect()
}

/// Waits until `sink` holds every message of `wanted` and the router's queues
/// are empty (nothing more will be sent), then returns every dump, checked:
/// number → names of the dump files holding it.
async fn wait_until_delivered(
    router: &Router,
    sink: &SmtpSink,
    wanted: &BTreeSet<u64>,
    timeout: Duration,
) -> anyhow::Result<BTreeMap<u64, Vec<String>>> {
    let deadline = Instant::now() + timeout;
    loop {
        // A dump caught while smtp-sink writes it does not parse or check yet: poll again.
        let copies = sink.dumped_by_name().and_then(|dumps| checked(&dumps));
        if let Ok(copies) = &copies
            && wanted.iter().all(|n| copies.contains_key(n))
        {
            let queues = router.admin().get("/api/v1/queues").await?;
            if queues.as_array().is_some_and(|q| q.iter().all(|d| d["depth"] == 0)) {
                return Ok(copies.clone());
            }
        }
        if Instant::now() > deadline {
            let copies = copies?;
            let missing: Vec<_> = wanted.iter().filter(|n| !copies.contains_key(n)).collect();
            let queues = router.admin().get("/api/v1/queues").await?;
            bail!("after {timeout:?}, not delivered: {missing:?}; queues: {queues}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every dump checked whole: number → names of the dump files holding it.
fn checked(dumps: &[(String, Dumped)]) -> anyhow::Result<BTreeMap<u64, Vec<String>>> {
    let mut copies: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for (name, dumped) in dumps {
        let number = traffic::check(dumped).with_context(|| format!("dump {name} is not a message that was sent"))?;
        copies.entry(number).or_default().push(name.clone());
    }
    Ok(copies)
}

/// Numbers of the messages `mailflow.received` holds (the router running).
async fn received_numbers(router: &Router) -> anyhow::Result<BTreeSet<u64>> {
    let records = router.wait_for_records(mailflow_events::topic::RECEIVED, 0).await?;
    let events: Vec<Envelope<ReceivedEvent>> =
        records.iter().map(|r| Envelope::from_json(&r.value)).collect::<Result<_, _>>()?;
    messages_received(&events)
        .iter()
        .map(|(id, m)| {
            let subject = m.subject.as_deref().unwrap_or_default();
            subject.strip_prefix("traffic ").and_then(|n| n.parse().ok()).with_context(|| format!("{id}: {subject}"))
        })
        .collect()
}

/// The dump files once smtp-sink has finished with the killed router's
/// connection: it may write a transaction's file just after its reply, so a
/// copy the killed run delivered can appear a moment after the kill. Lists
/// until two listings 200 ms apart agree (at most 5 s).
async fn settled_dump_names(sink: &SmtpSink) -> anyhow::Result<BTreeSet<String>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut names = sink.dump_names()?;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let again = sink.dump_names()?;
        if again == names || Instant::now() > deadline {
            return Ok(again);
        }
        names = again;
    }
}

fn numbers<'a>(attempts: impl IntoIterator<Item = &'a Attempt>) -> BTreeSet<u64> {
    attempts.into_iter().map(|a| a.number).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_kill_9s_under_load_lose_no_accepted_message_and_deliver_none_partially() -> anyhow::Result<()> {
    let started = Instant::now();
    let dns = DnsServer::start(ZONE)?;
    let sink = SmtpSink::start(&[])?;
    let config = relay_config(&dns, sink.address.port(), "retry_schedule = [\"1s\"]");
    let mut dir = tempfile::tempdir()?;
    let mut attempts: Vec<Attempt> = Vec::new();
    // The dump files that existed at each kill: a copy first seen after kill
    // k was delivered by the router's run k + 1.
    let mut dumped_at_kill: Vec<BTreeSet<String>> = Vec::new();
    let mut rng = rand::rng();
    for cycle in 0..KILLS {
        let router = Router::start_in(dir, &config).with_context(|| format!("restart after kill {cycle}"))?;
        let address = router.smtp();
        let clients =
            Clients { threads: 4, first: cycle as u64 * 100_000, per_client: 10_000, per_session: 25, seconds: 30 };
        let sender = std::thread::spawn(move || traffic::send(address, clients));
        let run = Duration::from_millis(rng.random_range(200..2000));
        tokio::time::sleep(run).await;
        dir = router.into_dir(); // SIGKILL, at a moment the router does not choose
        let sent = sender
            .join()
            .map_err(|_| anyhow!("client thread panicked"))?
            .with_context(|| format!("the clients of cycle {cycle}"))?;
        dumped_at_kill.push(settled_dump_names(&sink).await?);
        let accepted = sent.iter().filter(|a| a.accepted()).count();
        let lost = sent.iter().filter(|a| a.outcome == Outcome::Lost).count();
        eprintln!("cycle {cycle}: killed after {run:?}: {accepted} accepted, {lost} without a reply");
        attempts.extend(sent);
    }

    let router = Router::start_in(dir, &config)?;
    router.wait_ready().await?;
    let refused: Vec<&Attempt> =
        attempts.iter().filter(|a| matches!(a.outcome, Outcome::Replied(code, _) if code != 250)).collect();
    ensure!(refused.is_empty(), "kills are the only fault, yet: {refused:?}");
    let accepted = numbers(attempts.iter().filter(|a| a.accepted()));
    let in_flight = numbers(attempts.iter().filter(|a| a.outcome == Outcome::Lost));
    ensure!(accepted.len() >= 500, "too little load to mean anything: {} accepted", accepted.len());
    // Every 250 is in the log; the log holds nothing that was not sent.
    let received = received_numbers(&router).await?;
    let lost: Vec<_> = accepted.difference(&received).collect();
    ensure!(lost.is_empty(), "answered 250 but not in mailflow.received: {lost:?}");
    let invented: Vec<_> = received.difference(&accepted).filter(|n| !in_flight.contains(n)).collect();
    ensure!(invented.is_empty(), "in the log but never sent: {invented:?}");

    // Everything in the log reaches the next hop, whole, at least once.
    let copies = wait_until_delivered(&router, &sink, &received, Duration::from_secs(240)).await?;
    let strays: Vec<_> = copies.keys().filter(|n| !received.contains(n)).collect();
    ensure!(strays.is_empty(), "delivered but never accepted: {strays:?}");
    // Each extra copy is the redelivery of a run that was killed before its
    // `Delivered` was durable: charge it to that kill.
    let run_of = |name: &String| dumped_at_kill.iter().position(|d| d.contains(name)).unwrap_or(KILLS);
    let mut per_kill = vec![0usize; KILLS];
    for (number, names) in &copies {
        let mut runs: Vec<usize> = names.iter().map(run_of).collect();
        runs.sort_unstable();
        for pair in runs.windows(2) {
            ensure!(pair[0] < pair[1], "message {number} was delivered twice by one run ({}) of the router", pair[0]);
            per_kill[pair[0]] += 1;
        }
    }
    let duplicates: usize = per_kill.iter().sum();
    let worst = per_kill.iter().copied().max().unwrap_or(0);
    let accepted_without_reply = in_flight.intersection(&received).count();
    eprintln!(
        "{KILLS} kills in {:?}: {} attempts, {} accepted (250), {} without a reply of which {accepted_without_reply} \
         were accepted, {} delivered, {duplicates} duplicates (per kill: {per_kill:?}, at most {worst})",
        started.elapsed(),
        attempts.len(),
        accepted.len(),
        in_flight.len(),
        copies.len(),
    );
    ensure!(worst <= REDELIVERIES_PER_KILL, "a kill caused {worst} redeliveries: {per_kill:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_fdatasync_answers_451_4_3_0_never_250_and_no_partial_message_is_ever_delivered() -> anyhow::Result<()>
{
    let dns = DnsServer::start(ZONE)?;
    let sink = SmtpSink::start(&[])?;
    let config = relay_config(&dns, sink.address.port(), "retry_schedule = [\"1s\"]");
    let dir = tempfile::tempdir()?;
    let trace = dir.path().join("strace.log");
    // The embedded log makes appends durable with fdatasync (fsync is for
    // directories and rewritten files, at open and segment roll). strace
    // counts per thread: each partition's writer thread gets one good
    // fdatasync, then EIO for every other, so faults start mid-stream, also
    // between the content chunks and the `MessageReceived` of a message.
    let wrapper: Vec<String> = [
        "strace",
        "-f",
        "--seccomp-bpf",
        "-qq",
        "-o",
        &trace.display().to_string(),
        "-e",
        "trace=fdatasync",
        "-e",
        "inject=fdatasync:error=EIO:when=2+",
    ]
    .map(String::from)
    .to_vec();
    let router = Router::start_wrapped(dir, &config, &wrapper)
        .context("starting mailflow under strace (scripts/install-test-deps installs it)")?;
    let faulty = traffic::send(router.smtp(), one_client(0, 30))?;
    ensure!(faulty.len() == 30, "{faulty:?}");
    for attempt in &faulty {
        match &attempt.outcome {
            Outcome::Replied(250, text) if text.starts_with("2.0.0 OK <") => {}
            Outcome::Replied(451, text) if text == LOG_FAILED => {}
            other => bail!("message {}: {other:?} is neither 250 nor 451 {LOG_FAILED}", attempt.number),
        }
    }
    ensure!(faulty[0].accepted(), "the first message had every fdatasync it needed: {:?}", faulty[0]);
    let refused = numbers(faulty.iter().filter(|a| !a.accepted()));
    ensure!(!refused.is_empty(), "30 messages on 12 partitions must meet a failing fdatasync: {faulty:?}");
    let injected = std::fs::read_to_string(&trace)?;
    ensure!(
        injected.contains("fdatasync(") && injected.contains("= -1 EIO (Input/output error) (INJECTED)"),
        "strace injected nothing:\n{injected}"
    );
    let dir = router.into_dir();
    let before_restart = checked(&sink.dumped_by_name()?)?;

    // The fault ends with the process: restarted without strace, the router
    // reopens its log (every poisoned partition with it) and works normally.
    let router = Router::start_in(dir, &config)?;
    router.wait_ready().await?;
    let healthy = traffic::send(router.smtp(), one_client(1_000, 10))?;
    ensure!(healthy.iter().all(Attempt::accepted), "after the restart: {healthy:?}");
    let accepted = numbers(faulty.iter().chain(&healthy).filter(|a| a.accepted()));
    let copies = wait_until_delivered(&router, &sink, &accepted, Duration::from_secs(60)).await?;
    // A 451 whose record did reach the disk (only its fdatasync "failed") is
    // delivered after the reopen: the client will send it again, a duplicate
    // at worst, never a loss and never a partial message (every dump was checked).
    let refused_but_delivered: Vec<_> = refused.iter().filter(|n| copies.contains_key(n)).collect();
    let duplicates: usize = copies.values().map(|names| names.len() - 1).sum();
    // Copies are the at-least-once of a fault between the next hop's reply
    // and a durable `Delivered`: one per run of the router at most.
    for (number, names) in &copies {
        let first_run = before_restart.get(number).map_or(0, Vec::len);
        let second_run = names.len() - first_run;
        ensure!(first_run <= 1 && second_run <= 1, "message {number} was sent twice by one run: {names:?}");
    }
    eprintln!(
        "under EIO: {} accepted, {} answered 451 (large ones: {:?}); delivered before the restart: {}; \
         answered 451 yet delivered after it: {refused_but_delivered:?}; duplicates: {duplicates}",
        30 - refused.len(),
        refused.len(),
        refused.iter().filter(|n| *n % 20 == 7).collect::<Vec<_>>(),
        before_restart.len(),
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_kafka_broker_is_down_clients_get_451_4_3_0_and_after_it_returns_every_accepted_message_is_delivered()
-> anyhow::Result<()> {
    let mut broker = Broker::start()?;
    let dns = DnsServer::start(ZONE)?;
    let sink = SmtpSink::start(&[])?;
    // A rule on the body marks every message whose verdict saw its content:
    // a verdict must wait for the content, not judge the envelope alone.
    let config = format!(
        "{}\n[event_log]\nkind = \"kafka\"\nbrokers = \"{}\"\npartitions = 3\nreplication_factor = 1\nmessage_timeout = \"3s\"\n\
         [[transport_rules]]\nname = \"body seen\"\npriority = 0\nconditions = {{ subject_or_body_contains_words = [\"message\"] }}\n\
         actions = {{ set_headers = [{{ name = \"X-Body-Judged\", value = \"yes\" }}] }}\n",
        relay_config(&dns, sink.address.port(), "retry_schedule = [\"1s\"]"),
        broker.bootstrap
    );
    let router = Router::start(&config)?;
    router.wait_ready().await?;
    let before = traffic::send(router.smtp(), one_client(0, 5))?;
    ensure!(before.iter().all(Attempt::accepted), "before the outage: {before:?}");

    broker.stop()?;
    let outage = Instant::now();
    let during = traffic::send(router.smtp(), one_client(10_000, 2))?;
    for attempt in &during {
        ensure!(attempt.outcome == Outcome::Replied(451, LOG_FAILED.into()), "during the outage: {attempt:?}");
    }
    // librdkafka notices a message's timeout (3 s here) when its broker thread
    // wakes from its reconnect backoff (at most 10 s).
    let waited = outage.elapsed() / during.len() as u32;
    ensure!(waited < Duration::from_secs(15), "a 451 took {waited:?} on average");

    broker.resume()?;
    let outage_ended = Instant::now();
    // As a sending MTA does after a 4xx: try again until the router accepts.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut probes = Vec::new();
    while !probes.last().is_some_and(Attempt::accepted) {
        ensure!(Instant::now() < deadline, "no 250 within 60 s of the broker's return: {probes:?}");
        probes.extend(traffic::send(router.smtp(), one_client(20_000 + probes.len() as u64, 1))?);
    }
    let after = traffic::send(router.smtp(), one_client(30_000, 5))?;
    ensure!(after.iter().all(Attempt::accepted), "after the outage: {after:?}");

    let accepted = numbers(before.iter().chain(&probes).chain(&after).filter(|a| a.accepted()));
    let copies = wait_until_delivered(&router, &sink, &accepted, Duration::from_secs(90)).await?;
    let delivered_in = outage_ended.elapsed();
    for (name, dumped) in sink.dumped_by_name()? {
        let header = dumped.message.split("\n\n").next().unwrap_or_default();
        ensure!(header.contains("\nX-Body-Judged: yes\n"), "{name}: judged without its content:\n{header}");
    }
    let refused = numbers(&during);
    ensure!(
        copies.keys().all(|n| !refused.contains(n)),
        "a message refused while the broker was down was delivered: {copies:?}"
    );
    eprintln!(
        "broker outage: {:?} down, {waited:?} per 451, {} probes until the first 250 after the return; {} delivered in {:?}, {} duplicates {:?}",
        outage_ended - outage,
        probes.len(),
        copies.len(),
        delivered_in,
        copies.values().map(|names| names.len() - 1).sum::<usize>(),
        copies.iter().filter(|(_, names)| names.len() > 1).collect::<Vec<_>>()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mx_lookup_answered_with_servfail_or_not_at_all_defers_the_message_until_dns_answers_again()
-> anyhow::Result<()> {
    // mail_flow_delivery covers a nameserver that never answers; here DNS
    // fails in both ways for one message, which is delivered once it recovers.
    let dns = DnsServer::start(ZONE)?;
    let relay = DnsRelay::start(dns.address, DnsFault::ServFail).await?;
    let sink = Sink::start(Script::smtp()).await?;
    let config = relay_config_at(
        relay.address,
        "timeout = \"300ms\"\nattempts = 1",
        sink.address.port(),
        "retry_schedule = [\"1s\"]",
    );
    let router = Router::start(&config)?;
    let sent = traffic::send(router.smtp(), one_client(0, 1))?;
    ensure!(sent[0].accepted(), "{sent:?}");

    let events = router.wait_for_delivery_events("a deferral", |events| !deferrals(events).is_empty()).await?;
    let first = deferrals(&events)[0];
    ensure!(first.scope == Scope::Destination && first.attempt == 1, "{first:?}");
    let error = first.error.as_deref().unwrap_or_default();
    ensure!(error.starts_with("4.4.0 DNS query failed") && error.contains("Server Failure"), "{first:?}");

    relay.set(DnsFault::Silent);
    let events = router
        .wait_for_delivery_events("a deferral for an unanswered query", |events| {
            deferrals(events).iter().any(|d| d.error.as_deref().is_some_and(|e| e.contains("timed out")))
        })
        .await?;
    let silent = deferrals(&events).into_iter().find(|d| d.error.as_deref().is_some_and(|e| e.contains("timed out")));
    let silent = silent.context("found above")?;
    ensure!(silent.error.as_deref().is_some_and(|e| e.starts_with("4.4.0 DNS query failed")), "{silent:?}");
    ensure!(sink.connections() == 0, "no next hop was tried without its address");

    relay.set(DnsFault::Relay);
    let events = router
        .wait_for_delivery_events("the delivery", |events| {
            events.iter().any(|e| matches!(e.event, DeliveryEvent::Delivered(_)))
        })
        .await?;
    ensure!(!events.iter().any(|e| matches!(e.event, DeliveryEvent::Failed(_))), "a DNS failure never bounces");
    let attempts: Vec<u32> = deferrals(&events).iter().map(|d| d.attempt).collect();
    ensure!(attempts.iter().copied().eq(1..=attempts.len() as u32), "deferral attempts count up: {attempts:?}");
    let received = sink.wait_for_received(1, Duration::from_secs(10)).await;
    ensure!(received.len() == 1, "delivered once: {}", received.len());
    ensure!(traffic::check_content(&received[0].content)? == 0);
    ensure!(relay.queries() > attempts.len(), "every attempt asked DNS again");
    let errors: Vec<_> = deferrals(&events).iter().filter_map(|d| d.error.clone()).collect();
    eprintln!("DNS faults: {} deferrals before the delivery: {errors:?}", errors.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_next_hop_that_hangs_before_its_greeting_or_after_the_data_times_out_with_4_4_315_and_gets_the_message_later()
-> anyhow::Result<()> {
    let dns = DnsServer::start(ZONE)?;
    let hanging = Sink::start(Script::smtp().fault(Stage::Greeting, Fault::Hang)).await?;
    let address = hanging.address;
    let transport = "retry_schedule = [\"1s\"]\nconnect_timeout = \"1s\"\ncommand_timeout = \"1s\"";
    let router = Router::start(&relay_config(&dns, address.port(), transport))?;
    let sent = traffic::send(router.smtp(), one_client(0, 1))?;
    ensure!(sent[0].accepted(), "{sent:?}");

    // No greeting: the greeting's timeout ends the attempt.
    let events = router.wait_for_delivery_events("a deferral", |events| !deferrals(events).is_empty()).await?;
    let first = deferrals(&events)[0];
    ensure!(first.scope == Scope::Destination, "{first:?}");
    ensure!(first.error.as_deref().is_some_and(|e| e.starts_with("4.4.315 Connection timed out")), "{first:?}");
    ensure!(first.remote_ip.as_deref() == Some("127.0.0.1"), "{first:?}");
    let queued_at = events.first().context("Queued")?.occurred_at;
    let waited = events.iter().find(|e| matches!(e.event, DeliveryEvent::Deferred(_))).context("deferral")?.occurred_at;
    let waited = (waited - queued_at).num_milliseconds();
    ensure!((1000..5000).contains(&waited), "the attempt took {waited} ms, for a 1 s stage timeout");

    // The next hop takes the whole message and never answers the final dot.
    hanging.stop().await;
    let silent = Sink::start_at(address, Script::smtp().fault(Stage::EndOfData, Fault::Hang)).await?;
    let events = router.wait_for_delivery_events("a second deferral", |events| deferrals(events).len() >= 2).await?;
    let second = deferrals(&events)[1];
    ensure!(second.attempt == 2 && second.scope == Scope::Destination, "{second:?}");
    ensure!(second.error.as_deref().is_some_and(|e| e.starts_with("4.4.315 Connection timed out")), "{second:?}");
    let unanswered = silent.received();
    ensure!(unanswered.len() == 1 && traffic::check_content(&unanswered[0].content)? == 0, "{unanswered:?}");

    // It behaves again: the message goes out once more, whole (the copy the
    // silent hop kept is the duplicate at-least-once allows).
    silent.stop().await;
    let healthy = Sink::start_at(address, Script::smtp()).await?;
    let events = router
        .wait_for_delivery_events("the delivery", |events| {
            events.iter().any(|e| matches!(e.event, DeliveryEvent::Delivered(_)))
        })
        .await?;
    ensure!(!events.iter().any(|e| matches!(e.event, DeliveryEvent::Failed(_))), "a hang never bounces");
    let delivered = healthy.wait_for_received(1, Duration::from_secs(10)).await;
    ensure!(delivered.len() == 1 && traffic::check_content(&delivered[0].content)? == 0, "{delivered:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_next_hop_that_drops_the_connection_before_answering_the_final_dot_gets_the_message_again_at_least_once()
-> anyhow::Result<()> {
    let dns = DnsServer::start(ZONE)?;
    let dropping = Sink::start(Script::smtp().fault(Stage::EndOfData, Fault::Drop)).await?;
    let address = dropping.address;
    let router = Router::start(&relay_config(&dns, address.port(), "retry_schedule = [\"1s\"]"))?;
    let sent = traffic::send(router.smtp(), one_client(0, 3))?;
    ensure!(sent.iter().all(Attempt::accepted), "{sent:?}");

    let events = router.wait_for_delivery_events("a deferral", |events| !deferrals(events).is_empty()).await?;
    let first = deferrals(&events)[0];
    ensure!(first.scope == Scope::Destination, "{first:?}");
    let error = first.error.as_deref().unwrap_or_default();
    ensure!(
        error.starts_with("4.4.2 Connection dropped after the end of data")
            && error.contains("may have been delivered"),
        "{first:?}"
    );
    // The destination waits as a whole: only the first message was sent (on each probe).
    let kept = dropping.received();
    dropping.stop().await;
    ensure!(!kept.is_empty(), "the dropping hop had the content");
    for copy in &kept {
        ensure!(traffic::check_content(&copy.content)? == 0, "only the head of the queue is probed");
    }

    let healthy = Sink::start_at(address, Script::smtp()).await?;
    let received = healthy.wait_for_received(3, Duration::from_secs(30)).await;
    let order: Vec<u64> = received.iter().map(|r| traffic::check_content(&r.content)).collect::<Result<_, _>>()?;
    ensure!(order == [0, 1, 2], "each message once more, whole and in receipt order: {order:?}");
    let events = router
        .wait_for_delivery_events("three deliveries", |events| {
            events.iter().filter(|e| matches!(e.event, DeliveryEvent::Delivered(_))).count() >= 3
        })
        .await?;
    ensure!(!events.iter().any(|e| matches!(e.event, DeliveryEvent::Failed(_))), "a dropped connection never bounces");
    eprintln!("dropped after the data: message 0 reached the next hop {} times in all", kept.len() + 1);
    Ok(())
}
