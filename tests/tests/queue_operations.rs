//! Queue operations and incident replay end to end (issue: queue operations,
//! `mailflow replay`; DESIGN §3): the admin API and the `mailflow queue` and
//! `mailflow replay` commands of the real binary against a running router, a
//! real DNS server and a scriptable next hop.

use std::time::{Duration, Instant};

use mailflow_events::delivery::{DeliveryEvent, Scope};
use mailflow_tests::broker::Broker;
use mailflow_tests::clients::{python, send_numbered};
use mailflow_tests::dns::DnsServer;
use mailflow_tests::router::{BASE_CONFIG, CliRun, Router, cli, relay_config};
use mailflow_tests::sink::{Script, Sink};

const ZONE: &str = "example.org. 300 IN MX 10 mx.example.org.\nmx.example.org. 300 IN A 127.0.0.1\n";
const DESTINATION: &str = "internet:example.org";

/// How long an admin API answer is waited for.
const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_router_rebuilds_exactly_the_state_it_had_and_an_operator_retry_delivers_in_order()
-> anyhow::Result<()> {
    // DESIGN §3, issue "state rebuilt by replay" test 2: the rebuilt state
    // (queues, attempts, next-attempt times, order) equals the state before
    // the kill, serialised and compared. An hour-long schedule keeps it still.
    let dns = DnsServer::start(ZONE)?;
    let port = Sink::closed_port()?;
    // Snapshots every second: the restart loads one and folds only what follows.
    let config = relay_config(&dns, port.port(), "retry_schedule = [\"1h\"]\nsnapshot_interval = \"1s\"");
    let router = Router::start(&config)?;
    send_numbered(router.smtp(), "alice@contoso.com", "bob@example.org", 20)?;
    let queue = router
        .wait_for_admin(WAIT, &format!("/api/v1/queues/{DESTINATION}"), "20 queued in retry", |q| {
            q["state"] == "retry" && q["depth"] == 20
        })
        .await?;
    assert!(queue["last_error"].as_str().is_some_and(|e| e.starts_with("4.4.316")), "{queue:#}");
    let subjects_in_queue = queue["messages"].as_array().map_or(0, Vec::len);
    assert_eq!(subjects_in_queue, 20);
    let before = router
        .wait_for_admin(WAIT, "/api/v1/state", "a snapshot of the deferred queue", |s| {
            s[0]["snapshot_at"].as_u64() == s[0]["state"]["next_offset"].as_u64()
        })
        .await?;

    // `replay --verify` folds the log to where the live state is: equal.
    let admin = router.listener("admin").to_string();
    let config_path = router.config_path().display().to_string();
    let CliRun { status: code, stdout: out, .. } =
        cli(&["replay", "--config", &config_path, "--verify", "--admin", &admin, "--json"])?;
    assert_eq!(code, 0, "{out}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out)?["same"], true, "{out}");
    // `replay --state` from the log alone shows the same queue.
    let CliRun { status: code, stdout: out, .. } = cli(&["replay", "--config", &config_path, "--state", "--json"])?;
    assert_eq!(code, 0);
    let replayed: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(replayed[0]["state"], before[0]["state"], "the log alone gives the live state");
    // As of an instant before anything was queued, the state is empty.
    let CliRun { status: code, stdout: out, .. } =
        cli(&["replay", "--config", &config_path, "--state", "--json", "--at", "2000-01-01T00:00:00Z"])?;
    assert_eq!(code, 0);
    let empty: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(empty[0]["state"]["destinations"], serde_json::json!({}));

    // kill -9 and restart on the same log.
    let dir = router.into_dir();
    let router = Router::start_in(dir, &config)?;
    router.wait_ready().await?;
    let after = router.admin().get("/api/v1/state").await?;
    assert_eq!(after[0]["state"], before[0]["state"], "the rebuilt state equals the state before the kill");
    assert_eq!(after[0]["snapshot_at"], before[0]["state"]["next_offset"], "loaded from the snapshot");

    // The next hop recovers; an hour would pass before the next probe, so the
    // operator asks for one now (an event in the log).
    let sink = Sink::start_at(port, Script::smtp()).await?;
    let admin = router.listener("admin").to_string();
    let config_path = router.config_path().display().to_string();
    let CliRun { status: code, stdout: out, .. } =
        cli(&["queue", "--config", &config_path, "--admin", &admin, "retry", DESTINATION])?;
    assert_eq!(code, 0);
    assert!(out.starts_with("RetryRequested internet:example.org appended"), "{out}");
    let received = sink.wait_for_received(20, Duration::from_secs(30)).await;
    let subjects: Vec<String> = received.iter().map(|r| r.subject()).collect();
    let expected: Vec<String> = (0..20).map(|n| format!("message {n:03}")).collect();
    assert_eq!(subjects, expected, "in receipt order, each once");
    let events = router.delivery_events().await?;
    let retry = events.iter().find_map(|e| match &e.event {
        DeliveryEvent::RetryRequested(a) => Some(a),
        _ => None,
    });
    assert!(retry.is_some_and(|a| a.scope == Scope::Destination), "the retry is in the log");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_hold_release_delete_and_bounce_queued_mail_and_every_action_is_an_event() -> anyhow::Result<()> {
    operators_act_on_queues("").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka_operators_hold_release_delete_and_bounce_queued_mail_and_every_action_is_an_event()
-> anyhow::Result<()> {
    let broker = Broker::start()?;
    operators_act_on_queues(&broker.event_log()).await
}

/// The operator actions, on the embedded log or, with `event_log` (a
/// `[event_log]` section), on another backend.
async fn operators_act_on_queues(event_log: &str) -> anyhow::Result<()> {
    let dns = DnsServer::start(ZONE)?;
    let sink = Sink::start(Script::smtp()).await?;
    let router = Router::start(&format!("{}{event_log}", relay_config(&dns, sink.address.port(), "")))?;
    router.wait_ready().await?;
    let admin = router.listener("admin").to_string();
    let config_path = router.config_path().display().to_string();
    let queue = |args: &[&str]| {
        let mut all = vec!["queue", "--config", config_path.as_str(), "--admin", admin.as_str()];
        all.extend_from_slice(args);
        cli(&all)
    };

    // Without the token nothing changes.
    let anonymous = mailflow_actors::admin::client::AdminClient { address: router.listener("admin"), token: None };
    let refused = anonymous.post(&format!("/api/v1/queues/{DESTINATION}/suspend"), &serde_json::json!({})).await;
    assert!(refused.unwrap_err().to_string().contains("401"), "actions need the token");
    let wrong = mailflow_actors::admin::client::AdminClient {
        address: router.listener("admin"),
        token: Some("guess".to_string()),
    };
    let refused = wrong.post(&format!("/api/v1/queues/{DESTINATION}/suspend"), &serde_json::json!({})).await;
    assert!(refused.unwrap_err().to_string().contains("the admin token is wrong"));

    // Hold the destination before mail for it arrives.
    let CliRun { status: code, .. } = queue(&["suspend", DESTINATION, "--reason", "maintenance at the partner"])?;
    assert_eq!(code, 0);
    send_numbered(router.smtp(), "alice@contoso.com", "bob@example.org", 3)?;
    let held =
        router.wait_for_admin(WAIT, &format!("/api/v1/queues/{DESTINATION}"), "3 held", |q| q["depth"] == 3).await?;
    assert_eq!(held["state"], "suspended");
    let ids: Vec<String> =
        held["messages"].as_array().unwrap().iter().map(|m| m["message_id"].as_str().unwrap().to_string()).collect();
    let CliRun { status: code, stdout: out, .. } = queue(&["--json"])?;
    assert_eq!(code, 0);
    let listed: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(listed[0]["key"], DESTINATION);
    assert_eq!(listed[0]["state"], "suspended");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(sink.received().is_empty(), "nothing leaves a held queue");

    // Delete the first without notice, bounce the second with an NDR.
    assert_eq!(queue(&["delete", DESTINATION, "--message", &ids[0]])?.status, 0);
    let CliRun { status: code, stdout: out, .. } = queue(&["bounce", DESTINATION, "--message", &ids[1], "--json"])?;
    assert_eq!(code, 0);
    let bounced: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(bounced["ndrs"].as_array().map(Vec::len), Some(1), "{bounced}");
    assert_eq!(queue(&["resume", DESTINATION])?.status, 0);
    let received = sink.wait_for_received(1, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].subject(), "message 002", "only the third message is delivered");
    assert_eq!(sink.received().len(), 1);

    // The bounce's NDR reaches alice's mailbox with Exchange's admin text.
    let inbox = router.dir.path().join("mail").join("alice@contoso.com").join("new");
    let deadline = Instant::now() + Duration::from_secs(30);
    let ndr = loop {
        let found = std::fs::read_dir(&inbox).into_iter().flatten().flatten().next();
        if let Some(entry) = found {
            break std::fs::read_to_string(entry.path())?;
        }
        assert!(Instant::now() < deadline, "no NDR in {}", inbox.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(ndr.contains("Status: 4.3.2") || ndr.contains("4.3.2"), "{ndr}");
    assert!(ndr.contains("QUEUE.Admin; message deleted by administrative action"), "{ndr}");
    assert!(ndr.contains("message 001"), "the NDR names the bounced message: {ndr}");
    assert_eq!(std::fs::read_dir(&inbox)?.count(), 1, "the deleted message got no NDR");

    // Every action is in the log, with who and why.
    let events = router.delivery_events().await?;
    let actions: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.event {
            DeliveryEvent::Suspended(a) => Some(format!("Suspended {:?}", a.reason.as_deref())),
            DeliveryEvent::Resumed(_) => Some("Resumed".to_string()),
            DeliveryEvent::Deleted(d) => Some(format!("Deleted {} ndr={}", e.message_id, d.with_ndr)),
            _ => None,
        })
        .collect();
    assert_eq!(
        actions,
        [
            "Suspended Some(\"maintenance at the partner\")".to_string(),
            format!("Deleted {} ndr=false", ids[0]),
            format!("Deleted {} ndr=true", ids[1]),
            "Resumed".to_string(),
        ]
    );
    // An unknown message is a clear error.
    let CliRun { status: code, .. } = queue(&["delete", DESTINATION, "--message", "no-such-id"])?;
    assert_eq!(code, 1);
    Ok(())
}

fn maildir_messages(router: &Router, mailbox: &str) -> Vec<String> {
    let new = router.dir.path().join("mail").join(mailbox).join("new");
    std::fs::read_dir(new)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantined_message_is_held_until_an_operator_releases_it_once() -> anyhow::Result<()> {
    quarantine_and_release("").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka_a_quarantined_message_is_held_until_an_operator_releases_it_once() -> anyhow::Result<()> {
    let broker = Broker::start()?;
    quarantine_and_release(&broker.event_log()).await
}

/// Spec 9.3 (quarantine action, releasable later) and 12 (a rule's
/// Quarantine), on the embedded log or on the backend of `event_log`.
async fn quarantine_and_release(event_log: &str) -> anyhow::Result<()> {
    let dns = DnsServer::start(ZONE)?;
    let rule = "[[transport_rules]]\nname = \"hold suspicious\"\npriority = 0\n\
                conditions = { subject_contains_words = [\"hold\"] }\nactions = { quarantine = true }\n\
                [[transport_rules]]\nname = \"strip campaign\"\npriority = 1\nactions = { remove_headers = [\"X-Campaign\"] }\n";
    let config = format!("{BASE_CONFIG}\n[dns]\nnameservers = [\"{}\"]\n{rule}{event_log}", dns.address);
    let router = Router::start(&config)?;
    let script = r#"
s = smtplib.SMTP(ADDR, PORT)
for subject in ["please hold this", "plain news"]:
    s.sendmail("news@example.net", ["alice@contoso.com"], ("X-Campaign: spring\r\nFrom: news@example.net\r\nSubject: %s\r\n\r\nbody\r\n" % subject).encode())
s.quit()
print(json.dumps("sent"))
"#;
    python(router.smtp(), script)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while maildir_messages(&router, "alice@contoso.com").is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The quarantine record follows its verdict in mailflow.verdicts.
    let records = router.wait_for_records(mailflow_events::topic::VERDICTS, 3).await?;
    let held: Vec<(String, mailflow_events::verdicts::MessageQuarantined)> = records
        .iter()
        .filter_map(|r| {
            let envelope =
                mailflow_events::Envelope::<mailflow_events::verdicts::VerdictEvent>::from_json(&r.value).ok()?;
            match envelope.event {
                mailflow_events::verdicts::VerdictEvent::MessageQuarantined(q) => Some((envelope.message_id, q)),
                _ => None,
            }
        })
        .collect();
    assert_eq!(held.len(), 1, "one message held");
    let (id, quarantined) = &held[0];
    assert_eq!(quarantined.recipients, ["alice@contoso.com"]);
    assert_eq!(quarantined.rule.as_deref(), Some("hold suspicious"));
    assert!(quarantined.held.is_some(), "the held verdict is kept for the release");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let inbox = maildir_messages(&router, "alice@contoso.com");
    assert_eq!(inbox.len(), 1, "only the plain message was delivered");
    assert!(inbox[0].contains("Subject: plain news"));
    // Spec 12 RemoveHeader: the rule's field is gone from the delivered copy.
    assert!(!inbox[0].contains("X-Campaign"), "{}", inbox[0]);
    assert!(inbox[0].contains("From: news@example.net"));
    // Spec 15.2: the message trace lists the held message as Quarantined.
    let trace = format!("/api/v1/trace/{id}");
    router
        .wait_for_admin(WAIT, &trace, "the quarantined row", |v| v["recipients"][0]["status"] == "quarantined")
        .await?;

    // Released by the operator: delivered to the inbox, once.
    let admin = router.listener("admin").to_string();
    let config_path = router.config_path().display().to_string();
    let release = |id: &str| {
        let args = ["--reason", "false positive", "--operator", "ops@contoso.com"];
        cli(&[&["queue", "--config", &config_path, "--admin", &admin, "release", id][..], &args].concat())
    };
    let before_release = chrono::Utc::now();
    let CliRun { status: code, stdout: out, .. } = release(id)?;
    let after_release = chrono::Utc::now();
    assert_eq!(code, 0, "{out}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while maildir_messages(&router, "alice@contoso.com").len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let inbox = maildir_messages(&router, "alice@contoso.com");
    assert_eq!(inbox.len(), 2);
    assert!(inbox.iter().any(|m| m.contains("Subject: please hold this")), "the released message is in the inbox");
    let shown = router.admin().get(&format!("/api/v1/quarantine/{id}")).await?;
    assert!(shown["released_at_offset"].is_u64(), "{shown}");
    let CliRun { status: code, .. } = release(id)?;
    assert_eq!(code, 1, "a second release is refused");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(maildir_messages(&router, "alice@contoso.com").len(), 2, "nothing delivered twice");

    // Spec 15.2/15.3: the trace shows the release, by whom and when, and the
    // row moves on from Quarantined to Delivered.
    let detail = router
        .wait_for_admin(WAIT, &trace, "the release and the delivery in the trace", |v| {
            trace_events(v).last().map(String::as_str) == Some("DELIVER") && v["recipients"][0]["status"] == "delivered"
        })
        .await?;
    assert_eq!(trace_events(&detail), ["RECEIVE", "AGENTINFO", "RELEASE", "DELIVER"], "{detail:#}");
    let events = detail["events"].as_array().expect("events");
    let release = events.iter().find(|e| e["event"] == "RELEASE").expect("a RELEASE event");
    assert_eq!(events.iter().filter(|e| e["event"] == "RELEASE").count(), 1, "released once: {detail:#}");
    assert_eq!(
        (&release["record"]["operator"], &release["record"]["reason"]),
        (&"ops@contoso.com".into(), &"false positive".into())
    );
    assert_eq!(release["recipients"], serde_json::json!(["alice@contoso.com"]));
    assert_eq!(release["status"], "pending", "{release:#}");
    assert!(release["detail"].as_str().is_some_and(|d| d.contains("ops@contoso.com")), "{release:#}");
    let at: chrono::DateTime<chrono::Utc> = release["occurred_at"].as_str().expect("occurred_at").parse()?;
    assert!(before_release <= at && at <= after_release, "released at {at}");
    let quarantined = router.admin().get(&format!("/api/v1/trace?status=quarantined&message_id={id}")).await?;
    assert_eq!(quarantined["rows"], serde_json::json!([]), "no longer quarantined: {quarantined:#}");
    Ok(())
}

/// The trace event ids of a message's detail, a repeated one once.
fn trace_events(detail: &serde_json::Value) -> Vec<String> {
    let mut events: Vec<String> = detail["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["event"].as_str().map(str::to_string))
        .collect();
    events.dedup();
    events
}

/// Records of `topic` in the log, counted with `mailflow replay --json`.
fn record_count(config_path: &str, topic: &str) -> anyhow::Result<usize> {
    let CliRun { status, stdout, stderr } = cli(&["replay", "--config", config_path, "--topic", topic, "--json"])?;
    anyhow::ensure!(status == 0, "replay --topic {topic}: {stderr}");
    Ok(stdout.lines().count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_if_judges_and_routes_a_past_window_again_under_another_configuration_without_side_effects()
-> anyhow::Result<()> {
    what_if("").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka_what_if_judges_and_routes_a_past_window_again_under_another_configuration_without_side_effects()
-> anyhow::Result<()> {
    let broker = Broker::start()?;
    what_if(&broker.event_log()).await
}

/// Issue "incident replay": what-if re-runs routing and verdict over a past
/// window under a different configuration file, with no side effects, and
/// reports per message what would have changed (destination, verdict,
/// action); on the embedded log or on the backend of `event_log`.
async fn what_if(event_log: &str) -> anyhow::Result<()> {
    let dns = DnsServer::start(ZONE)?;
    let sink = mailflow_tests::postfix::SmtpSink::start(&[])?;
    let config = format!("{}{event_log}", relay_config(&dns, sink.address.port(), ""));
    let router = Router::start(&config)?;
    let script = r#"
s = smtplib.SMTP(ADDR, PORT)
s.ehlo("onprem.contoso.com")
for rcpt, subject in [("bob@example.org", "status report"), ("bob@example.org", "invoice 42"), ("bob@contoso.com", "lunch")]:
    s.sendmail("alice@contoso.com", [rcpt], ("From: alice@contoso.com\r\nSubject: %s\r\n\r\nbody\r\n" % subject).encode())
s.quit()
print(json.dumps("sent"))
"#;
    python(router.smtp(), script)?;
    sink.wait_for_dumps(2)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while maildir_messages(&router, "bob@contoso.com").is_empty() {
        anyhow::ensure!(Instant::now() < deadline, "the mailbox copy never arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The proposed configuration: invoices held by a rule, and mail for
    // example.org through a partner's smart host instead of its MX.
    let proposed = format!(
        "{config}\n[[transport_rules]]\nname = \"hold invoices\"\npriority = 0\n\
         conditions = {{ subject_contains_words = [\"invoice\"] }}\nactions = {{ quarantine = true }}\n\n\
         [[outbound_connectors]]\nname = \"partner-relay\"\nkind = \"partner\"\nrecipient_domains = [\"example.org\"]\n\
         smart_hosts = [\"127.0.0.1:{}\"]\n",
        sink.address.port()
    );
    let proposed_path = router.dir.path().join("proposed.toml");
    std::fs::write(&proposed_path, proposed)?;
    let config_path = router.config_path().display().to_string();
    let proposed_path = proposed_path.display().to_string();
    let topics = mailflow_events::topic::EVENT_TOPICS;
    let before: Vec<usize> = topics.iter().map(|t| record_count(&config_path, t)).collect::<Result<_, _>>()?;

    let CliRun { status, stdout, stderr } =
        cli(&["replay", "--config", &config_path, "--what-if", &proposed_path, "--json", "--all"])?;
    assert_eq!(status, 0, "{stderr}");
    let lines: Vec<serde_json::Value> = stdout.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    let (summary, messages) = lines.split_last().expect("a summary line");
    let by_subject = |subject: &str| {
        messages.iter().find(|m| m["subject"] == subject).unwrap_or_else(|| panic!("{subject} not reported: {stdout}"))
    };
    // Unchanged: our own mailbox, same verdict.
    let lunch = by_subject("lunch");
    assert_eq!(lunch["changed"], serde_json::json!([]), "{lunch:#}");
    assert_eq!(lunch["recorded"]["routes"]["bob@contoso.com"], "mailbox_store:mailbox", "{lunch:#}");
    // The destination changes: MX → the partner connector.
    let report = by_subject("status report");
    assert_eq!(report["changed"], serde_json::json!(["routes"]), "{report:#}");
    assert_eq!(report["recorded"]["routes"]["bob@example.org"], DESTINATION);
    assert_eq!(report["proposed"]["routes"]["bob@example.org"], "partner:partner-relay", "{report:#}");
    // The action changes: delivered, would be quarantined by the new rule.
    let invoice = by_subject("invoice 42");
    assert_eq!(invoice["recorded"]["action"], "deliver", "{invoice:#}");
    assert_eq!(invoice["proposed"]["action"], "quarantine", "{invoice:#}");
    assert_eq!(invoice["proposed"]["rules"], serde_json::json!(["hold invoices"]));
    assert_eq!(invoice["proposed"]["routes"]["bob@example.org"], "quarantined");
    assert_eq!(invoice["recorded"]["routes"]["bob@example.org"], DESTINATION);
    let totals = &summary["summary"];
    assert_eq!(
        (&totals["messages"], &totals["changed"], &totals["action_changed"], &totals["routes_changed"]),
        (&serde_json::json!(3), &serde_json::json!(2), &serde_json::json!(1), &serde_json::json!(2)),
        "{summary}"
    );

    // Without --all only the changes are listed; a window after the last
    // message holds none.
    let CliRun { stdout, .. } = cli(&["replay", "--config", &config_path, "--what-if", &proposed_path])?;
    assert_eq!(stdout.lines().count(), 3, "two changed messages and the totals:\n{stdout}");
    assert!(stdout.contains("action deliver -> quarantine"), "{stdout}");
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let CliRun { stdout, .. } =
        cli(&["replay", "--config", &config_path, "--what-if", &proposed_path, "--since", &later, "--json"])?;
    let totals: serde_json::Value = serde_json::from_str(stdout.trim())?;
    assert_eq!(totals["summary"]["messages"], 0, "{stdout}");

    // No side effects: not one record more in any topic, nothing more sent.
    let after: Vec<usize> = topics.iter().map(|t| record_count(&config_path, t)).collect::<Result<_, _>>()?;
    assert_eq!(before, after, "records per topic {topics:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.dump_names()?.len(), 2, "the what-if sent nothing");
    Ok(())
}
