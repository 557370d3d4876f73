//! Message trace end to end (spec 15; issue "Message trace (EOP's contract,
//! §15)"): real SMTP clients send mail through the real router, a real DNS
//! server and the scriptable sink stand in for the internet, and the test asks
//! the admin API (`/api/v1/trace`) and the `mailflow trace` command of the real
//! binary what became of each message.

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use mailflow_tests::clients::send_each_and_refuse;
use mailflow_tests::dns::DnsServer;
use mailflow_tests::router::{Router, cli, relay_config};
use mailflow_tests::sink::{Script, Sink};
use serde_json::Value;

const ZONE: &str = "example.org. 300 IN MX 10 mx.example.org.\nmx.example.org. 300 IN A 127.0.0.1\n";

/// Sends one message to each of `recipients` and one transaction whose only
/// recipient is refused; returns recipient → message id, and `refused` → the reply.
fn send(router: &Router, recipients: &[&str], refused: &str) -> anyhow::Result<Value> {
    let messages: Vec<(String, String)> = recipients
        .iter()
        .map(|to| {
            let body = format!(
                "From: alice@contoso.com\r\nTo: {to}\r\nSubject: Quarterly report for {to}\r\nMessage-ID: <{to}.trace@contoso.com>\r\n\r\nHello.\r\n"
            );
            (to.to_string(), body)
        })
        .collect();
    send_each_and_refuse(router.smtp(), &messages, refused)
}

/// Runs `mailflow trace --json` against the router; returns the JSON it printed.
fn mailflow_trace(router: &Router, args: &[&str]) -> anyhow::Result<Value> {
    let admin = router.listener("admin").to_string();
    let mut all = vec!["trace", "--admin", admin.as_str()];
    all.extend_from_slice(args);
    let run = cli(&all)?;
    ensure!(run.status == 0, "mailflow trace {args:?} failed: {}", run.stderr);
    if args.contains(&"--json") { Ok(serde_json::from_str(&run.stdout)?) } else { Ok(Value::String(run.stdout)) }
}

/// `(recipient, status)` of each row of a search answer.
fn rows(answer: &Value) -> Vec<(String, String)> {
    answer["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| (r["recipient"].as_str().unwrap_or("?").to_string(), r["status"].as_str().unwrap_or("?").to_string()))
        .collect()
}

/// How long an admin API answer is waited for.
const WAIT: Duration = Duration::from_secs(60);

fn events(detail: &Value) -> Vec<&str> {
    let mut events: Vec<&str> =
        detail["events"].as_array().into_iter().flatten().filter_map(|e| e["event"].as_str()).collect();
    // A deferral may recur while the next hop is down.
    events.dedup();
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_finds_delivered_refused_and_deferred_then_delivered_mail_and_lists_each_messages_events_in_order()
-> anyhow::Result<()> {
    let dns = DnsServer::start(ZONE)?;
    let port = Sink::closed_port()?;
    let router = Router::start(&relay_config(&dns, port.port(), "retry_schedule = [\"1s\"]"))?;
    router.wait_ready().await?;
    let ids = send(&router, &["alice@contoso.com", "bob@example.org"], "nobody@contoso.com")?;
    let refused = ids["refused"].as_str().context("refused")?;
    assert!(refused.starts_with("550 5.4.1"), "{refused}");
    let alice = ids["alice@contoso.com"].as_str().context("alice's id")?;
    let bob = ids["bob@example.org"].as_str().context("bob's id")?;

    // 15.2: delivered to the mailbox store → Delivered.
    router
        .wait_for_admin(WAIT, &format!("/api/v1/trace?message_id={alice}"), "alice's delivery", |v| {
            rows(v) == [("alice@contoso.com".to_string(), "delivered".to_string())]
        })
        .await?;
    // 15.2, 15.7: the next hop is down, so bob's message is deferred → Pending.
    let pending = router
        .wait_for_admin(WAIT, &format!("/api/v1/trace/{bob}"), "bob's deferral", |v| events(v).contains(&"DEFER"))
        .await?;
    assert_eq!(pending["recipients"][0]["status"], "pending", "{pending:#}");
    let answer = router.admin().get("/api/v1/trace?recipient=bob@example.org&status=Pending").await?;
    assert_eq!(rows(&answer), [("bob@example.org".to_string(), "pending".to_string())]);

    // 15.1/15.2: a recipient refused at RCPT TO (550 5.4.1) is searchable by
    // recipient, failed; the CLI finds it too.
    let answer = mailflow_trace(&router, &["--recipient", "nobody@contoso.com", "--json"])?;
    assert_eq!(rows(&answer), [("nobody@contoso.com".to_string(), "failed".to_string())], "{answer:#}");
    assert_eq!(answer["rows"][0]["sender"], "alice@contoso.com");
    assert_eq!(answer["rows"][0]["client_ip"], "127.0.0.1", "the sending server's IP (FromIP)");
    let refusal_id = answer["rows"][0]["message_id"].as_str().context("the refusal's id")?;
    let refusal = router.admin().get(&format!("/api/v1/trace/{refusal_id}")).await?;
    assert_eq!(events(&refusal), ["FAIL"]);
    assert!(refusal["events"][0]["reply"].as_str().is_some_and(|r| r.starts_with("550 5.4.1")), "{refusal:#}");

    // The next hop comes back: the retry sends it → Delivered (15.7's T).
    let sink = Sink::start_at(port, Script::smtp()).await?;
    let detail = router
        .wait_for_admin(WAIT, &format!("/api/v1/trace/{bob}"), "bob's delivery", |v| {
            events(v).last() == Some(&"SEND") && v["recipients"][0]["status"] == "delivered"
        })
        .await?;
    assert_eq!(sink.received().len(), 1);
    assert_eq!(events(&detail), ["RECEIVE", "AGENTINFO", "DEFER", "SEND"], "{detail:#}");
    let times: Vec<&str> =
        detail["events"].as_array().into_iter().flatten().filter_map(|e| e["occurred_at"].as_str()).collect();
    let parsed: Vec<chrono::DateTime<chrono::Utc>> = times.iter().map(|t| t.parse()).collect::<Result<_, _>>()?;
    assert!(parsed.windows(2).all(|w| w[0] <= w[1]), "events in time order: {times:?}");
    let send = detail["events"].as_array().and_then(|e| e.last()).context("SEND")?;
    assert_eq!(send["remote_host"], "mx.example.org", "{send:#}");
    // 15.1 ToIP / 15.4 detail: bob's copy went to mx.example.org's address;
    // alice's was delivered to the mailbox store (inbound), so it has none.
    assert_eq!(detail["recipients"][0]["to_ip"], "127.0.0.1", "{detail:#}");
    let by_to_ip = mailflow_trace(&router, &["--to-ip", "127.0.0.1", "--json"])?;
    assert_eq!(rows(&by_to_ip), [("bob@example.org".to_string(), "delivered".to_string())], "{by_to_ip:#}");
    assert_eq!(by_to_ip["rows"][0]["message_id"], bob);
    assert!(rows(&mailflow_trace(&router, &["--to-ip", "192.0.2.1", "--json"])?).is_empty());
    assert_eq!(detail["events"][0]["connector"], "onprem");
    assert!(detail["events"][1]["custom_data"].as_str().is_some_and(|c| c.contains("SCL=")), "{detail:#}");

    // 15.3/15.4: alice's message, RECEIVE … DELIVER, in the CLI's detail view.
    let alice_detail = router.admin().get(&format!("/api/v1/trace/{alice}")).await?;
    assert_eq!(events(&alice_detail), ["RECEIVE", "AGENTINFO", "DELIVER"]);
    assert_eq!(alice_detail["recipients"][0]["to_ip"], Value::Null, "no To IP for inbound: {alice_detail:#}");
    let text = mailflow_trace(&router, &["--message", alice])?;
    let text = text.as_str().context("text")?;
    let (receive, deliver) =
        (text.find(" RECEIVE ").context("a RECEIVE line")?, text.find(" DELIVER ").context("a DELIVER line")?);
    assert!(receive < deliver, "{text}");
    assert!(text.contains("Subject: Quarterly report for alice@contoso.com"), "{text}");
    let bob_text = mailflow_trace(&router, &["--message", bob])?;
    assert!(bob_text.as_str().is_some_and(|t| t.contains("To IP: 127.0.0.1")), "{bob_text}");
    assert!(!text.contains("To IP"), "{text}");

    // 15.1: subject filters (case-insensitive), sender, Message-ID header, message id.
    let admin = router.admin();
    let search = |query: String| {
        let admin = admin.clone();
        async move { admin.get(&format!("/api/v1/trace?{query}")).await }
    };
    let subjects = search("subject=QUARTERLY%20report&subject_match=starts".into()).await?;
    let mut found = rows(&subjects);
    found.sort();
    assert_eq!(
        found,
        [
            ("alice@contoso.com".to_string(), "delivered".to_string()),
            ("bob@example.org".to_string(), "delivered".to_string())
        ]
    );
    assert_eq!(
        rows(&search("subject=for%20bob&subject_match=contains".into()).await?),
        [("bob@example.org".to_string(), "delivered".to_string())]
    );
    assert!(rows(&search("subject=report&subject_match=starts".into()).await?).is_empty(), "starts is not contains");
    assert_eq!(
        rows(&search("subject=example.org&subject_match=ends".into()).await?),
        [("bob@example.org".to_string(), "delivered".to_string())]
    );
    let by_sender = mailflow_trace(&router, &["--sender", "alice@contoso.com", "--json"])?;
    let mut recipients: Vec<String> = rows(&by_sender).into_iter().map(|(r, _)| r).collect();
    recipients.sort();
    assert_eq!(recipients, ["alice@contoso.com", "bob@example.org", "nobody@contoso.com"]);
    // 15.1 ResultSize + pagination (EndDate + StartingRecipientAddress): one
    // row a page, each answer naming the next; together they are the whole
    // answer, in its order, no row twice.
    let mut paged = Vec::new();
    let mut page = mailflow_trace(&router, &["--sender", "alice@contoso.com", "--limit", "1", "--json"])?;
    loop {
        paged.extend(rows(&page));
        let next = &page["next_page"];
        if next.is_null() {
            assert_eq!(page["truncated"], false, "{page:#}");
            break;
        }
        assert_eq!(page["truncated"], true, "{page:#}");
        ensure!(paged.len() <= 3, "paging does not end: {paged:?}");
        let (until, recipient, id) = (
            next["until"].as_str().context("until")?,
            next["starting_recipient"].as_str().context("starting_recipient")?,
            next["starting_message_id"].as_str().context("starting_message_id")?,
        );
        page = mailflow_trace(
            &router,
            &[
                "--sender",
                "alice@contoso.com",
                "--limit",
                "1",
                "--until",
                until,
                "--starting-recipient",
                recipient,
                "--starting-message-id",
                id,
                "--json",
            ],
        )?;
    }
    assert_eq!(paged, rows(&by_sender), "{by_sender:#}");
    let by_header = search("internet_message_id=%3Cbob@example.org.trace@contoso.com%3E".into()).await?;
    assert_eq!(by_header["rows"][0]["message_id"], bob);
    assert_eq!(by_header["rows"].as_array().map(Vec::len), Some(1));
    let by_id = mailflow_trace(&router, &["--message-id", bob, "--json"])?;
    assert_eq!(rows(&by_id), [("bob@example.org".to_string(), "delivered".to_string())]);
    // 15.1: with no parameter, the last 48 h: everything sent above.
    let all = mailflow_trace(&router, &["--json"])?;
    assert!(all["since"].is_string() && rows(&all).len() >= 3, "{all:#}");
    // A window that ended before the test started finds nothing.
    let day_before = |days: i64| (chrono::Utc::now() - chrono::Duration::days(days)).format("%Y-%m-%dT%H:%M:%SZ");
    let before = search(format!("since={}&until={}", day_before(2), day_before(1))).await?;
    assert!(rows(&before).is_empty(), "{before:#}");
    // A bad query is refused with a reason.
    let refused_query = router.admin().get("/api/v1/trace?status=lost").await;
    assert!(refused_query.is_err_and(|e| e.to_string().contains("unknown status")));
    // A misspelt filter is refused with its name, not ignored (which would
    // answer as if no filter had been given).
    let misspelt = router.admin().get("/api/v1/trace?sendr=alice@contoso.com").await;
    assert!(misspelt.is_err_and(|e| e.to_string().contains("unknown field `sendr`")));
    Ok(())
}

/// The value of an unlabelled metric in `GET /metrics`.
async fn metric(router: &Router, name: &str) -> anyhow::Result<f64> {
    let (_, text) = router.admin().get_text("/metrics").await?;
    let line = text.lines().find(|l| l.split(' ').next() == Some(name)).with_context(|| format!("{name} in {text}"))?;
    Ok(line.rsplit(' ').next().unwrap_or_default().parse()?)
}

/// Journal records a checkpoint header says it covers.
fn covered(header: &Value) -> u64 {
    header["next"].as_array().into_iter().flatten().filter_map(Value::as_u64).sum()
}

/// The trace index's checkpoint header once `done` holds for it.
async fn checkpoint_where(path: &std::path::Path, what: &str, done: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(bytes) = std::fs::read(path) {
            let header: Value = serde_json::from_slice(bytes.split(|&b| b == b'\n').next().unwrap_or_default())?;
            if done(&header) {
                return Ok(header);
            }
        }
        ensure!(Instant::now() < deadline, "no checkpoint {what} at {}", path.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Issue "Message trace": the index is kept in the data directory and rebuilt
/// from the log when missing. A router killed with SIGKILL starts again from
/// its checkpoint, reading only the journal after it; with the checkpoint
/// damaged, it rebuilds the same answers from the whole journal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_index_resumes_from_its_checkpoint_after_a_kill_and_is_rebuilt_when_it_is_damaged()
-> anyhow::Result<()> {
    let dns = DnsServer::start(ZONE)?;
    let port = Sink::closed_port()?;
    let config = format!(
        "{}\n[trace]\ncheckpoint_interval = \"1s\"\n",
        relay_config(&dns, port.port(), "retry_schedule = [\"1h\"]")
    );
    let router = Router::start(&config)?;
    router.wait_ready().await?;
    let ids = send(&router, &["alice@contoso.com", "bob@example.org"], "nobody@contoso.com")?;
    let alice = ids["alice@contoso.com"].as_str().context("alice's id")?.to_string();
    let bob = ids["bob@example.org"].as_str().context("bob's id")?.to_string();
    let alice_delivered = format!("/api/v1/trace?message_id={alice}");
    router
        .wait_for_admin(WAIT, &alice_delivered, "alice's delivery", |v| {
            rows(v).first().is_some_and(|r| r.1 == "delivered")
        })
        .await?;
    router
        .wait_for_admin(WAIT, &format!("/api/v1/trace/{bob}"), "bob's deferral", |v| events(v).contains(&"DEFER"))
        .await?;
    let before = router.admin().get("/api/v1/trace?sender=alice@contoso.com").await?;
    let read_before = metric(&router, "mailflow_trace_records_read_total").await?;
    ensure!(read_before >= 5.0, "the journal holds at least RECEIVE, AGENTINFO, DELIVER, DEFER and FAIL");

    // The checkpoint beside the embedded log names the offsets it covers.
    let file = router.log_path().join("trace").join("index.json");
    let written = checkpoint_where(&file, "covering what was read", |h| covered(h) as f64 >= read_before).await?;
    assert_eq!(written["messages"], 3, "alice, bob and the refusal: {written}");

    // kill -9 and start again on the same directory: the index comes from the
    // checkpoint; of the journal only what was written after it is read.
    let router = Router::start_in(router.into_dir(), &config)?;
    router.wait_ready().await?;
    let answer = router
        .wait_for_admin(WAIT, "/api/v1/trace?sender=alice@contoso.com", "the same rows", |v| rows(v) == rows(&before))
        .await?;
    assert_eq!(answer["rows"], before["rows"]);
    let resumed_read = metric(&router, "mailflow_trace_records_read_total").await?;
    let journal_end = covered(&written) as f64 + resumed_read;
    assert!(resumed_read < read_before, "resumed: read {resumed_read} of the journal, not all {read_before}");
    assert_eq!(metric(&router, "mailflow_trace_messages").await?, 3.0, "alice, bob and the refusal");
    let detail = router.admin().get(&format!("/api/v1/trace/{alice}")).await?;
    assert_eq!(events(&detail), ["RECEIVE", "AGENTINFO", "DELIVER"], "{detail:#}");

    // A damaged checkpoint is not used: the index is rebuilt from offset 0,
    // with the same answers.
    let mut router = router;
    router.kill();
    let mut bytes = std::fs::read(&file)?;
    let last = bytes.len() - 2;
    bytes[last] ^= 0x01;
    std::fs::write(&file, &bytes)?;
    let router = Router::start_in(router.into_dir(), &config)?;
    router.wait_ready().await?;
    router
        .wait_for_admin(WAIT, "/api/v1/trace?sender=alice@contoso.com", "the same rows", |v| rows(v) == rows(&before))
        .await?;
    let rebuilt_read = metric(&router, "mailflow_trace_records_read_total").await?;
    assert!(rebuilt_read >= journal_end, "rebuilt from offset 0: read {rebuilt_read}, journal ≥ {journal_end}");
    // And a good checkpoint replaces the damaged one.
    checkpoint_where(&file, "rewritten", |h| h["written_at"] != written["written_at"]).await?;
    let bytes = std::fs::read(&file)?;
    let split = bytes.iter().position(|&b| b == b'\n').context("header line")?;
    let header: Value = serde_json::from_slice(&bytes[..split])?;
    assert_eq!(header["len"].as_u64(), Some((bytes.len() - split - 1) as u64), "{header}");
    assert_eq!(header["messages"], 3);
    ensure!(covered(&header) as f64 >= journal_end, "{header}");
    Ok(())
}

/// Sends `GET path` to the admin listener over a plain TCP connection;
/// returns the whole response (status line, headers, body) as text.
async fn raw_get(router: &Router, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(router.listener("admin")).await?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: mailflow\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await??;
    Ok(String::from_utf8_lossy(&response).into_owned())
}

/// Spec 15.1 (MT-03): a search covers at most 10 days, the last 48 hours when
/// no date is given, and nothing older than the retention; a process answers
/// at most `[trace] query_limit` queries per `query_window` (100 per 5
/// minutes by default, 4 here) and refuses the next with 429 and Retry-After,
/// through the API and through `mailflow trace`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_covers_at_most_10_days_and_the_queries_are_throttled_spec_15_1() -> anyhow::Result<()> {
    let dns = DnsServer::start(ZONE)?;
    let port = Sink::closed_port()?;
    let config = format!(
        "{}\n[trace]\nquery_limit = 4\nquery_window = \"5m\"\n",
        relay_config(&dns, port.port(), "retry_schedule = [\"1h\"]")
    );
    let router = Router::start(&config)?;
    router.wait_ready().await?;
    let admin = router.listener("admin").to_string();

    // 1: filters but no date: the 48 hours up to now.
    let answer = router.admin().get("/api/v1/trace?sender=alice@contoso.com").await?;
    let time = |field: &str| -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
        Ok(answer[field].as_str().context("a time")?.parse()?)
    };
    assert_eq!(time("until")? - time("since")?, chrono::Duration::hours(48), "{answer}");
    assert!((chrono::Utc::now() - time("until")?).num_seconds().abs() < 60, "{answer}");

    // 2: eleven days, through `mailflow trace`: refused with the rule, exit status not 0.
    let now = chrono::Utc::now();
    let since = (now - chrono::Duration::days(11)).to_rfc3339();
    let run = cli(&["trace", "--admin", &admin, "--since", &since])?;
    assert_ne!(run.status, 0);
    assert!(run.stderr.contains("400") && run.stderr.contains("at most 10 days"), "{}", run.stderr);

    // 3: a window older than the 90 days kept.
    let old = format!(
        "/api/v1/trace?since={}&until={}",
        (now - chrono::Duration::days(100)).format("%Y-%m-%dT%H:%M:%SZ"),
        (now - chrono::Duration::days(95)).format("%Y-%m-%dT%H:%M:%SZ")
    );
    let (status, body) = router.admin().get_text(&old).await?;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("older than the trace keeps messages (90 days"), "{body}");

    // 4: a detail view counts too.
    let (status, body) = router.admin().get_text("/api/v1/trace/no-such-message").await?;
    assert_eq!(status, 404, "{body}");

    // 5: the fifth query within 5 minutes: 429, with the seconds to wait.
    let response = raw_get(&router, "/api/v1/trace").await?;
    assert!(response.starts_with("HTTP/1.1 429"), "{response}");
    let retry_after: u64 = response
        .lines()
        .find_map(|l| l.strip_prefix("retry-after: ").or_else(|| l.strip_prefix("Retry-After: ")))
        .context("a Retry-After header")?
        .trim()
        .parse()?;
    assert!((1..=300).contains(&retry_after), "{response}");
    assert!(response.contains("more than 4 trace queries in 300 s"), "{response}");
    // `mailflow trace` says so too, and the refusals took no place in the window.
    let run = cli(&["trace", "--admin", &admin])?;
    assert_ne!(run.status, 0);
    assert!(run.stderr.contains("429") && run.stderr.contains("try again in"), "{}", run.stderr);
    Ok(())
}
