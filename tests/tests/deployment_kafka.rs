//! The multi-process deployment on Kafka (issue: running at scale,
//! "Multi-process deployment test"): one process per role (`--roles`), two
//! connection processes and two delivery processes in one group, on a
//! Kafka-protocol broker on loopback, under load from several SMTP clients
//! (Python's smtplib, which tells each message's 250, and Postfix's
//! smtp-source).
//! Mid-load one connection process is killed with SIGKILL and one delivery
//! process is either killed with SIGKILL or drained with SIGTERM; both are
//! restarted and rejoin. Half the destinations have a live next hop, half a
//! next hop that is down until the load is over. Every message that got a 250
//! is delivered, duplicates are counted and bounded (and none reach the
//! recovered next hop), the deferred queues go out in receipt order, and every
//! consumer group's lag returns to zero.
//!
//! The drain runs on noida-db. The SIGKILL of a delivery process runs on
//! librdkafka's mock cluster ([`Broker::mock`]): its partitions move only
//! when the broker expires the dead member's session, which noida-db 0.2.3
//! never does.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use mailflow_tests::broker::Broker;
use mailflow_tests::clients::python;
use mailflow_tests::dns::DnsServer;
use mailflow_tests::router::{BASE_CONFIG, Router};
use mailflow_tests::sink::{Script, Sink};

/// Most messages one destination's delivery task can send again after a
/// rebalance: `MAX_IN_FLIGHT` (32) unrecorded `Delivered` appends plus the
/// message whose reply it had not read (as in `fault_suite`).
const REDELIVERIES_PER_DESTINATION: usize = 33;

const DOMAINS: [&str; 6] = ["d0.example", "d1.example", "d2.example", "d3.example", "d4.example", "d5.example"];

/// Messages smtp-source sends, all alike, to a live destination.
const BULK: usize = 200;

/// The destinations whose next hop is up throughout.
const LIVE: [&str; 3] = ["d0.example", "d1.example", "d2.example"];

fn is_live(subject: &str) -> bool {
    LIVE.iter().any(|d| subject.starts_with(d))
}

/// Waits (at most two minutes) until `sink` has received every subject in `wanted`.
async fn wait_for_subset(sink: &Sink, wanted: &HashSet<&String>) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let arrived = subjects(sink);
        if wanted.iter().all(|w| arrived.contains(w)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn config(broker: &Broker, dns: &DnsServer, mx_port: u16) -> String {
    let zone_free = format!(
        "{BASE_CONFIG}\n[dns]\nnameservers = [\"{}\"]\n[transport]\nmx_port = {mx_port}\nretry_schedule = [\"1s\"]\n\
         [[inbound_connectors]]\nname = \"onprem\"\nkind = \"on_premises\"\nsender_ip_addresses = [\"127.0.0.1\"]\n\
         [event_log]\nkind = \"kafka\"\nbrokers = \"{}\"\npartitions = 3\nreplication_factor = 1\nmessage_timeout = \"30s\"\n",
        dns.address, broker.bootstrap
    );
    zone_free.replace("[server]\n", "[server]\ndrain_timeout = \"10s\"\n")
}

/// Sends `count` messages round-robin over the domains, numbered from
/// `first`, over one session at a time (reconnecting after an error) until
/// `count` were tried or the front door stays away; prints the subjects that
/// got a 250 and those in hand when a session broke (no reply read).
fn sender_script(first: usize, count: usize) -> String {
    format!(
        r#"
domains = {DOMAINS:?}
import time
acked = []
uncertain = []
subject = None
n = {first}
end = {first} + {count}
failures = 0
while n < end and failures < 5:
    try:
        s = smtplib.SMTP(ADDR, PORT, timeout=30)
        s.ehlo("onprem.contoso.com")
        while n < end:
            d = domains[n % len(domains)]
            subject = "%s %05d" % (d, n)
            n += 1
            s.sendmail("alice@contoso.com", ["user@" + d], ("Subject: " + subject + "\r\n\r\nbody\r\n").encode())
            acked.append(subject)
            subject = None
        s.quit()
    except Exception:
        # The front door went away (killed): the message in hand got no 250,
        # though it may have been made durable just before the kill.
        if subject is not None:
            uncertain.append(subject)
            subject = None
        failures += 1
        n += 1
        time.sleep(0.2)
print(json.dumps({{"acked": acked, "uncertain": uncertain}}))
"#
    )
}

/// The subjects the sink received, in arrival order.
fn subjects(sink: &Sink) -> Vec<String> {
    sink.received()
        .iter()
        .map(|r| {
            let text = String::from_utf8_lossy(&r.content).to_string();
            text.lines().find_map(|l| l.strip_prefix("Subject: ")).unwrap_or_default().trim().to_string()
        })
        .collect()
}

/// Sum of `mailflow_consumer_lag` over the series a process reports, and how many series.
async fn lag(router: &Router) -> anyhow::Result<(u64, usize)> {
    let (_, text) = router.admin().get_text("/metrics").await?;
    let series: Vec<u64> = text
        .lines()
        .filter(|l| l.starts_with("mailflow_consumer_lag{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    Ok((series.iter().sum(), series.len()))
}

/// What happens to the first delivery process mid-load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeliveryFault {
    /// SIGTERM: it finishes or hands back what it holds and leaves the group.
    Drain,
    /// SIGKILL: the broker expires its session and the group moves its partitions.
    Kill,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_roles_under_load_survive_a_killed_front_door_and_a_drained_delivery_process() -> anyhow::Result<()> {
    under_load(Broker::start()?, DeliveryFault::Drain).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_roles_under_load_survive_a_killed_front_door_and_a_killed_delivery_process() -> anyhow::Result<()> {
    under_load(Broker::mock(3)?, DeliveryFault::Kill).await
}

async fn under_load(broker: Broker, fault: DeliveryFault) -> anyhow::Result<()> {
    // Half the destinations have a live next hop, so deliveries are in flight
    // at the faults; the other half's next hop (127.0.0.3) is down until the
    // load is over, so their queues are deferred through the faults and taken
    // over, and go out when it recovers (spec 11.4).
    let zone: String = DOMAINS
        .iter()
        .map(|d| {
            let address = if LIVE.contains(d) { "127.0.0.1" } else { "127.0.0.3" };
            format!("{d}. 300 IN MX 10 mx.{d}.\nmx.{d}. 300 IN A {address}\n")
        })
        .collect();
    let dns = DnsServer::start(&zone)?;
    let sink = Sink::start(Script::smtp()).await?;
    let recovering = std::net::SocketAddr::from(([127, 0, 0, 3], sink.address.port()));
    let config = config(&broker, &dns, sink.address.port());
    let start = |roles: &str| Router::start_with(tempfile::tempdir()?, &config, &["--roles", roles]);
    let verdict = start("verdict")?;
    let routing = start("routing")?;
    let mut delivery_a = start("delivery")?;
    let delivery_b = start("delivery")?;
    let mut front_a = start("connection")?;
    let front_b = start("connection")?;
    for process in [&verdict, &routing, &delivery_a, &delivery_b, &front_a, &front_b] {
        process.wait_ready().await?;
    }

    // Load through both front doors at once.
    let (address_a, address_b) = (front_a.smtp(), front_b.smtp());
    let load_a = std::thread::spawn(move || python(address_a, &sender_script(0, 300)));
    let load_b = std::thread::spawn(move || python(address_b, &sender_script(100_000, 300)));
    // And Postfix's load generator beside them, through the front door that
    // stays up: every one of its messages must get a 250 (its exit status),
    // and they are counted at the sink, being all alike.
    let bulk = std::thread::spawn(move || {
        std::process::Command::new("smtp-source")
            .args(["-s", "4", "-m", &BULK.to_string(), "-l", "2048", "-S", "bulk", "-M", "onprem.contoso.com"])
            .args(["-f", "alice@contoso.com", "-t", "bulk@d0.example", &address_b.to_string()])
            .output()
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Mid-load: the first front door dies at once; a delivery process drains
    // and leaves, or dies at once too.
    front_a.kill();
    match fault {
        DeliveryFault::Drain => {
            let drained = tokio::task::block_in_place(|| delivery_a.terminate(Duration::from_secs(30)))?;
            assert!(drained.success(), "drained delivery process exits 0: {drained:?}");
        }
        DeliveryFault::Kill => delivery_a.kill(),
    }
    // Both come back and rejoin; the front door's clients that lost their session had no 250 for it.
    let front_a = Router::start_with(front_a.into_dir(), &config, &["--roles", "connection"])?;
    let delivery_a = Router::start_with(delivery_a.into_dir(), &config, &["--roles", "delivery"])?;
    let late = python(front_a.smtp(), &sender_script(200_000, 60))?;
    let mut acked: Vec<String> = Vec::new();
    let mut uncertain: Vec<String> = Vec::new();
    for value in [
        load_a.join().map_err(|_| anyhow::anyhow!("load thread"))??,
        load_b.join().map_err(|_| anyhow::anyhow!("load thread"))??,
        late,
    ] {
        acked.extend(serde_json::from_value::<Vec<String>>(value["acked"].clone())?);
        uncertain.extend(serde_json::from_value::<Vec<String>>(value["uncertain"].clone())?);
    }
    assert!(acked.len() >= 200, "load before and after the faults: {} acknowledged", acked.len());

    // The down next hop recovers once the load is over and every process is back.
    let live_wanted: HashSet<&String> = acked.iter().filter(|s| is_live(s)).collect();
    wait_for_subset(&sink, &live_wanted).await;
    let recovered = Sink::start_at(recovering, Script::smtp()).await?;
    let deferred_wanted: HashSet<&String> = acked.iter().filter(|s| !is_live(s)).collect();
    wait_for_subset(&recovered, &deferred_wanted).await;

    // Every acknowledged message arrives, at the next hop of its domain.
    let bulk = bulk.join().map_err(|_| anyhow::anyhow!("smtp-source thread"))??;
    assert!(bulk.status.success(), "smtp-source: {}", String::from_utf8_lossy(&bulk.stderr));
    let (mut live, deferred) = (subjects(&sink), subjects(&recovered));
    let deadline = Instant::now() + Duration::from_secs(60);
    while live.iter().filter(|s| *s == "bulk").count() < BULK && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        live = subjects(&sink);
    }
    let bulk_arrived = live.iter().filter(|s| *s == "bulk").count();
    live.retain(|s| s != "bulk");
    assert!(live.iter().all(|s| is_live(s)) && deferred.iter().all(|s| !is_live(s)), "each at its own next hop");
    let arrived: Vec<&String> = live.iter().chain(&deferred).collect();
    let have: HashSet<&String> = arrived.iter().copied().collect();
    let wanted: HashSet<&String> = acked.iter().collect();
    let missing: Vec<_> = wanted.difference(&have).collect();
    assert!(missing.is_empty(), "acknowledged, never delivered: {missing:?}");
    // A message may be durable and go out though its 250 was never read: only
    // the one in hand when a session broke.
    let unknown: Vec<_> = have.difference(&wanted).filter(|s| !uncertain.contains(s)).collect();
    assert!(unknown.is_empty(), "delivered, neither acknowledged nor in hand at a kill: {unknown:?}");
    // Duplicates only from what was in flight at a rebalance, so only to the
    // live next hop. A partition revoked from a running process (the rebalance
    // when the drained or killed one rejoins) is not drained first, nor is a
    // killed process's, so its next owner sends again what the delivery task
    // had sent but not yet recorded: up to `MAX_IN_FLIGHT` `Delivered` appends
    // plus the message in hand per destination (`actors/src/delivery/actor.rs`),
    // at each of the two rebalances.
    let duplicates = arrived.len() - have.len() + (bulk_arrived - BULK.min(bulk_arrived));
    assert!(bulk_arrived >= BULK, "smtp-source got {BULK} 250s, the sink {bulk_arrived} of those messages");
    assert!(duplicates <= 2 * LIVE.len() * REDELIVERIES_PER_DESTINATION, "{duplicates} duplicates");
    let deferred_unique: HashSet<&String> = deferred.iter().collect();
    assert_eq!(deferred_unique.len(), deferred.len(), "the deferred queues went out once each: {deferred:?}");
    // The deferred queues, rebuilt by whichever process owned them last, went
    // out in receipt order (spec 11.4): per destination, within each client's
    // numbering. (To a live next hop messages start in the order they were
    // queued, and the pipeline's partitions may queue them a moment out of
    // receipt order, as in any MTA with parallel queues.)
    let mut last: HashMap<(String, usize), usize> = HashMap::new();
    for subject in &deferred {
        let (domain, n) = subject.split_once(' ').unwrap_or_default();
        let n: usize = n.parse()?;
        if let Some(previous) = last.insert((domain.to_string(), n / 100_000), n) {
            assert!(previous < n, "{domain}: {n} arrived after {previous}");
        }
    }
    // Consumer lag returns to zero in every process that consumes.
    let deadline = Instant::now() + Duration::from_secs(60);
    for (name, process) in
        [("verdict", &verdict), ("routing", &routing), ("delivery", &delivery_a), ("delivery", &delivery_b)]
    {
        loop {
            let (total, series) = lag(process).await?;
            if total == 0 {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "{name}: lag {total} over {series} partitions");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let (_, delivery_series) = lag(&delivery_a).await?;
    let (_, other_series) = lag(&delivery_b).await?;
    assert_eq!(delivery_series + other_series, 3, "the three delivery partitions are split between the two");
    eprintln!(
        "{fault:?}: {} acknowledged, {} arrivals, {bulk_arrived} of {BULK} from smtp-source, {duplicates} duplicates",
        acked.len(),
        arrived.len()
    );
    drop(recovered);
    drop((front_a, front_b));
    Ok(())
}
