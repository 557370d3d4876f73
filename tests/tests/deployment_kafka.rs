//! The multi-process deployment on Kafka (issue: running at scale,
//! "Multi-process deployment test"): one process per role (`--roles`), two
//! connection processes and two delivery processes in one group, on a real
//! Kafka-protocol broker, under load from several SMTP clients. Mid-load one
//! connection process is killed with SIGKILL and one delivery process is
//! drained with SIGTERM; both are restarted and rejoin. Every message that got
//! a 250 is delivered, duplicates are counted and bounded, per-destination
//! order holds, and every consumer group's lag returns to zero.
//!
//! A SIGKILL of a *delivery* process is not part of this test: the broker used
//! here (noida-db 0.2.3) never expires a dead member's session, so its
//! partitions would never be reassigned (see `mail_flow_kafka`). The embedded
//! log's take-over after kill -9 is tested in `mail_flow_delivery`.

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
/// `count` were tried or the front door stays away; prints the subjects that got a 250.
fn sender_script(first: usize, count: usize) -> String {
    format!(
        r#"
domains = {DOMAINS:?}
import time
acked = []
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
        s.quit()
    except Exception:
        # The front door went away (killed): the message in hand got no 250.
        failures += 1
        n += 1
        time.sleep(0.2)
print(json.dumps(acked))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_roles_under_load_survive_a_killed_front_door_and_a_drained_delivery_process() -> anyhow::Result<()> {
    let broker = Broker::start()?;
    let zone: String =
        DOMAINS.iter().map(|d| format!("{d}. 300 IN MX 10 mx.{d}.\nmx.{d}. 300 IN A 127.0.0.1\n")).collect();
    let dns = DnsServer::start(&zone)?;
    let sink = Sink::start(Script::smtp()).await?;
    let config = config(&broker, &dns, sink.address.port());
    let start = |roles: &str| Router::start_with(tempfile::tempdir()?, &config, &["--roles", roles]);
    let verdict = start("verdict")?;
    let routing = start("routing")?;
    let mut delivery_a = start("delivery")?;
    let delivery_b = start("delivery")?;
    let mut front_a = start("connection")?;
    let front_b = start("connection")?;

    // Load through both front doors at once.
    let (address_a, address_b) = (front_a.smtp(), front_b.smtp());
    let load_a = std::thread::spawn(move || python(address_a, &sender_script(0, 300)));
    let load_b = std::thread::spawn(move || python(address_b, &sender_script(100_000, 300)));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Mid-load: the first front door dies at once; a delivery process drains and leaves.
    front_a.kill();
    let drained = tokio::task::block_in_place(|| delivery_a.terminate(Duration::from_secs(30)))?;
    assert!(drained.success(), "drained delivery process exits 0: {drained:?}");
    // Both come back and rejoin; the front door's clients that lost their session had no 250 for it.
    let front_a = Router::start_with(front_a.into_dir(), &config, &["--roles", "connection"])?;
    let delivery_a = Router::start_with(delivery_a.into_dir(), &config, &["--roles", "delivery"])?;
    let late = python(front_a.smtp(), &sender_script(200_000, 60))?;
    let mut acked: Vec<String> = Vec::new();
    for load in [load_a, load_b] {
        let value = load.join().map_err(|_| anyhow::anyhow!("load thread"))??;
        acked.extend(serde_json::from_value::<Vec<String>>(value)?);
    }
    acked.extend(serde_json::from_value::<Vec<String>>(late)?);
    assert!(acked.len() >= 200, "load before and after the faults: {} acknowledged", acked.len());

    // Every acknowledged message arrives.
    let wanted: HashSet<&String> = acked.iter().collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    let arrived = loop {
        let arrived = subjects(&sink);
        let have: HashSet<&String> = arrived.iter().collect();
        if wanted.is_subset(&have) || Instant::now() > deadline {
            break arrived;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let have: HashSet<&String> = arrived.iter().collect();
    let missing: Vec<_> = wanted.difference(&have).collect();
    assert!(missing.is_empty(), "acknowledged, never delivered: {missing:?}");
    let unknown: Vec<_> = have.difference(&wanted).collect();
    assert!(unknown.is_empty(), "delivered, never acknowledged: {unknown:?}");
    // Duplicates only from what was in flight at a rebalance. A partition
    // revoked from a running process (the rebalance when the drained one
    // rejoins) is not drained first, so its next owner sends again what the
    // delivery task had sent but not yet recorded: up to `MAX_IN_FLIGHT`
    // `Delivered` appends plus the message in hand per destination
    // (`actors/src/delivery/actor.rs`), at each of the two rebalances.
    let duplicates = arrived.len() - have.len();
    assert!(duplicates <= 2 * DOMAINS.len() * REDELIVERIES_PER_DESTINATION, "{duplicates} duplicates");
    // Per destination, first arrivals in receipt order within each client's numbering.
    let mut last: HashMap<(String, usize), usize> = HashMap::new();
    let mut seen = HashSet::new();
    for subject in &arrived {
        if !seen.insert(subject) {
            continue;
        }
        let (domain, n) = subject.split_once(' ').unwrap_or_default();
        let n: usize = n.parse()?;
        let key = (domain.to_string(), n / 100_000);
        if let Some(previous) = last.insert(key, n) {
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
    eprintln!("{} acknowledged, {} arrivals, {duplicates} duplicates", acked.len(), arrived.len());
    drop((front_a, front_b));
    Ok(())
}
