//! Graceful drain (issue: running at scale, "graceful drain"; see the
//! `drain` module): SIGTERM to the real binary under load, with real clients
//! and Postfix's smtp-sink as the next hop. New connections get `421 4.3.2`,
//! sessions inside a transaction finish it, running deliveries finish and are
//! recorded, and nothing acknowledged is lost or delivered twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mailflow_tests::dns::DnsServer;
use mailflow_tests::postfix::SmtpSink;
use mailflow_tests::router::{Router, relay_config};
use mailflow_tests::wire::{Reply, Wire};

const ZONE: &str = "example.org. 300 IN MX 10 mx.example.org.\nmx.example.org. 300 IN A 127.0.0.1\n";

/// Sends message `n` to bob@example.org; the reply to the final dot, or the
/// first reply that was not the expected one.
async fn send(wire: &mut Wire, n: usize) -> anyhow::Result<Reply> {
    for (line, expected) in [("MAIL FROM:<alice@contoso.com>", 250), ("RCPT TO:<bob@example.org>", 250), ("DATA", 354)]
    {
        let reply = wire.command(line).await?;
        if reply.code != expected {
            return Ok(reply);
        }
    }
    wire.command(&format!("From: alice@contoso.com\r\nSubject: drain {n}\r\n\r\nmessage {n}\r\n.")).await
}

/// The numbers of the messages smtp-sink received, with how often each came.
fn received_numbers(sink: &SmtpSink) -> anyhow::Result<BTreeMap<usize, usize>> {
    let mut numbers = BTreeMap::new();
    for dumped in sink.dumped()? {
        let subject = dumped.message.lines().find_map(|l| l.strip_prefix("Subject: drain ")).map(str::to_string);
        let n: usize = subject.ok_or_else(|| anyhow::anyhow!("a message without its number"))?.trim().parse()?;
        *numbers.entry(n).or_default() += 1;
    }
    Ok(numbers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_nothing_acknowledged_and_delivers_nothing_twice() -> anyhow::Result<()> {
    let dns = DnsServer::start(ZONE)?;
    let sink = SmtpSink::start(&[])?;
    let config = relay_config(&dns, sink.address.port(), "retry_schedule = [\"1s\"]");
    let config = config.replace("[server]\n", "[server]\ndrain_timeout = \"20s\"\n");
    let mut router = Router::start(&config)?;
    let address = router.smtp();

    // Four clients send numbered messages, each over one session, until the
    // router ends the session; then they reconnect until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for client in 0..4usize {
        let stop = Arc::clone(&stop);
        clients.push(tokio::spawn(async move {
            let mut accepted = Vec::new();
            let mut refusals = Vec::new();
            let mut n = client * 100_000;
            while !stop.load(Ordering::Relaxed) {
                let Ok((mut session, greeting)) = Wire::connect(address).await else { break };
                if greeting.code != 220 {
                    refusals.push(greeting);
                    continue;
                }
                if session.command("EHLO onprem.contoso.com").await?.code != 250 {
                    continue;
                }
                loop {
                    n += 1;
                    let reply = send(&mut session, n).await?;
                    if reply.code == 250 {
                        accepted.push(n);
                    } else {
                        refusals.push(reply);
                        break;
                    }
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
            }
            anyhow::Ok((accepted, refusals))
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let terminated = Instant::now();
    let status = tokio::task::block_in_place(|| router.terminate(Duration::from_secs(30)))?;
    assert!(status.success(), "a drained router exits 0: {status:?}");
    assert!(terminated.elapsed() < Duration::from_secs(20), "the drain ended before its deadline");
    stop.store(true, Ordering::Relaxed);
    let mut accepted = Vec::new();
    let mut refusals = Vec::new();
    for client in clients {
        let (a, r) = client.await??;
        accepted.extend(a);
        refusals.extend(r);
    }
    assert!(accepted.len() >= 20, "load before the drain: {} accepted", accepted.len());
    // Every session the drain ended, and every connection it refused, heard
    // 421 4.3.2 (a reset would be a client-side error above).
    assert!(!refusals.is_empty(), "the drain ended the sessions");
    for refusal in &refusals {
        assert_eq!(refusal.status(), "421 4.3.2", "drain reply: {refusal:?}");
    }

    // What was queued but not yet attempted is delivered after a restart;
    // what was attempted during the drain was recorded and is not sent again.
    let delivered_before_restart = received_numbers(&sink).map_or(0, |r| r.values().sum::<usize>());
    let router = Router::start_in(router.into_dir(), &config)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let received = loop {
        // A dump caught while smtp-sink still writes it does not parse yet.
        let received = received_numbers(&sink);
        if let Ok(received) = received
            && (received.len() >= accepted.len() || Instant::now() > deadline)
        {
            break received;
        }
        anyhow::ensure!(Instant::now() < deadline + Duration::from_secs(5), "dumps never parse");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let missing: Vec<_> = accepted.iter().filter(|n| !received.contains_key(n)).collect();
    assert!(missing.is_empty(), "acknowledged but never delivered: {missing:?}");
    let twice: Vec<_> = received.iter().filter(|(_, count)| **count > 1).collect();
    assert!(twice.is_empty(), "delivered more than once across the drain: {twice:?}");
    let unknown: Vec<_> = received.keys().filter(|n| !accepted.contains(n)).collect();
    assert!(unknown.is_empty(), "delivered but never acknowledged: {unknown:?}");
    eprintln!(
        "{} acknowledged, {} delivered before the drain ended, {} refusals during it",
        accepted.len(),
        delivered_before_restart,
        refusals.len()
    );
    drop(router);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_refuses_new_sessions_finishes_open_transactions_and_ends_stalled_ones_at_its_deadline()
-> anyhow::Result<()> {
    let dns = DnsServer::start(ZONE)?;
    let sink = SmtpSink::start(&[])?;
    let config = relay_config(&dns, sink.address.port(), "");
    let config = config.replace("[server]\n", "[server]\ndrain_timeout = \"3s\"\n");
    let mut router = Router::start(&config)?;
    let address = router.smtp();

    let (mut idle, _) = Wire::connect(address).await?;
    assert_eq!(idle.command("EHLO onprem.contoso.com").await?.code, 250);
    let (mut finishing, _) = Wire::connect(address).await?;
    assert_eq!(finishing.command("EHLO onprem.contoso.com").await?.code, 250);
    assert_eq!(finishing.command("MAIL FROM:<alice@contoso.com>").await?.code, 250);
    assert_eq!(finishing.command("RCPT TO:<bob@example.org>").await?.code, 250);
    let (mut stalled, _) = Wire::connect(address).await?;
    assert_eq!(stalled.command("EHLO onprem.contoso.com").await?.code, 250);
    assert_eq!(stalled.command("MAIL FROM:<alice@contoso.com>").await?.code, 250);

    let pid = router.pid();
    let terminated = Instant::now();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status()?.success());

    // A session between transactions is ended at once.
    let reply = idle.reply().await?;
    assert_eq!(reply.status(), "421 4.3.2", "idle session: {reply:?}");
    assert!(terminated.elapsed() < Duration::from_secs(2), "ended at once, not at the deadline");
    // Readiness fails, so that no new client is sent here.
    let (status, body) = router.admin().get_text("/readyz").await?;
    assert_eq!(status, 503, "{body}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body)?["status"], "draining");
    // A new connection is refused with 421 4.3.2, not reset.
    let (_, greeting) = Wire::connect(address).await?;
    assert_eq!(greeting.status(), "421 4.3.2", "new session during the drain: {greeting:?}");
    // A session inside a transaction finishes it: the message is acknowledged, then the session ends.
    assert_eq!(finishing.command("DATA").await?.code, 354);
    let reply = finishing.command("From: alice@contoso.com\r\nSubject: drain 1\r\n\r\nfinished\r\n.").await?;
    assert_eq!(reply.code, 250, "the open transaction finished: {reply:?}");
    let reply = finishing.reply().await?;
    assert_eq!(reply.status(), "421 4.3.2", "then the session ended: {reply:?}");
    // A transaction that does not go on is ended at the deadline; its
    // message was never acknowledged, so it is the client's to send again.
    let reply = stalled.reply().await?;
    assert_eq!(reply.status(), "421 4.3.2", "stalled transaction: {reply:?}");
    assert!(terminated.elapsed() >= Duration::from_millis(2900), "not before the deadline");
    let status = tokio::task::block_in_place(|| router.wait_for_exit(Duration::from_secs(10)))?;
    assert!(status.success(), "{status:?}");

    // The acknowledged message is delivered, before the exit or after a restart.
    let router = Router::start_in(router.into_dir(), &config)?;
    let dumped = tokio::task::block_in_place(|| sink.wait_for_dumps(1))?;
    assert_eq!(dumped.len(), 1);
    assert!(dumped[0].message.contains("finished"));
    drop(router);
    Ok(())
}
