//! `mailflow validate-connector` (spec 16, CV-01..04) as a child process
//! against real peers on loopback: Postfix's smtp-sink, a private Postfix with
//! STARTTLS and a self-signed certificate, a port nobody listens on, and a DNS server
//! serving the test zone.

use std::path::Path;

use mailflow_tests::dns::DnsServer;
use mailflow_tests::postfix::{PrivatePostfix, SmtpSink};
use mailflow_tests::router::{CliRun, cli_in};
use mailflow_tests::sink::Sink;

/// Runs `mailflow validate-connector` with `config` (TOML, after a base with
/// the accepted domain `contoso.com`) written into a temporary directory.
fn validate(config: &str, args: &[&str]) -> CliRun {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.toml");
    let base = "[server]\nhostname = \"mailflow.contoso.test\"\n\n[[accepted_domains]]\nname = \"contoso.com\"\n\
                default = true\n";
    std::fs::write(&path, format!("{base}\n{config}")).expect("config");
    let path = path.to_str().expect("UTF-8 path");
    let mut all = vec!["validate-connector"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--config", path]);
    let run = cli_in(dir.path(), &all).expect("running mailflow");
    eprintln!("{}{}", run.stdout, run.stderr);
    run
}

/// `[transport]` with short limits, and `[[outbound_connectors]]` named Fabrikam for `fabrikam.test`.
fn connector(smart_hosts: &[String], extra: &str) -> String {
    format!(
        "[transport]\nconnect_timeout = \"5s\"\ncommand_timeout = \"20s\"\n\n[[outbound_connectors]]\n\
         name = \"Fabrikam\"\nkind = \"partner\"\nrecipient_domains = [\"fabrikam.test\"]\nsmart_hosts = {smart_hosts:?}\n{extra}\n"
    )
}

/// `(task, status)` of each task of a JSON report.
fn tasks(report: &serde_json::Value) -> Vec<(String, String)> {
    report["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| (t["task"].as_str().unwrap_or("").to_string(), t["status"].as_str().unwrap_or("").to_string()))
        .collect()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected.iter().map(|(t, s)| (t.to_string(), s.to_string())).collect()
}

/// The task named `name` of a JSON report (the first one).
fn task<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["tasks"].as_array().and_then(|t| t.iter().find(|t| t["task"] == name)).expect(name)
}

#[test]
fn spec_16_1_a_healthy_smart_host_passes_every_task_and_receives_the_test_message() {
    let sink = SmtpSink::start(&[]).expect("smtp-sink");
    let run = validate(&connector(&[sink.address.to_string()], ""), &["Fabrikam", "--to", "bob@fabrikam.test"]);
    assert_eq!(run.status, 0, "{run:?}");
    let rows: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(rows[0], "Outbound connector Fabrikam, test message to bob@fabrikam.test");
    let results: Vec<(&str, &str)> = rows[3..8]
        .iter()
        .map(|row| {
            let cells: Vec<&str> = row.split_whitespace().collect();
            (cells[0], cells[3])
        })
        .collect();
    assert_eq!(
        results,
        [("resolve", "passed"), ("connect", "passed"), ("ehlo", "passed"), ("starttls", "passed"), ("send", "passed")]
    );
    assert!(rows[4].contains(&format!("connected to {}", sink.address)), "{}", rows[4]);
    // smtp-sink offers no STARTTLS: opportunistic TLS goes on in clear text (spec 6.4).
    assert!(rows[6].contains("no TLS"), "{}", rows[6]);
    assert!(rows[7].contains("MAIL FROM:<postmaster@contoso.com> RCPT TO:<bob@fabrikam.test>"), "{}", rows[7]);
    assert_eq!(rows.last(), Some(&"Validation passed: 5 tasks passed."));

    // CV-04: the postmaster as P1 and P2, a distinctive subject and a marker header.
    let dumped = sink.wait_for_dumps(1).expect("the test message");
    assert_eq!(dumped.len(), 1);
    assert_eq!(dumped[0].mail_args, "<postmaster@contoso.com>");
    assert_eq!(dumped[0].rcpt_args, ["<bob@fabrikam.test>"]);
    let message = &dumped[0].message;
    assert!(message.contains("From: Connector validation <postmaster@contoso.com>\n"), "{message}");
    assert!(message.contains("To: <bob@fabrikam.test>\n"), "{message}");
    assert!(message.contains("Subject: Connector validation: Fabrikam\n"), "{message}");
    assert!(message.contains("X-Mailflow-Connector-Validation: Fabrikam\n"), "{message}");
    assert!(
        message.contains("\nThis is a test message sent to validate the outbound connector Fabrikam."),
        "{message}"
    );
}

#[test]
fn spec_16_2_a_closed_port_fails_connect_with_eop_text_skips_the_rest_and_exits_1() {
    let closed = Sink::closed_port().expect("closed port");
    let run = validate(&connector(&[closed.to_string()], ""), &["Fabrikam", "--to", "bob@fabrikam.test", "--json"]);
    assert_eq!(run.status, 1, "{run:?}");
    let report = run.json();
    assert_eq!(report["ok"], false);
    assert_eq!(report["connector"], "Fabrikam");
    assert_eq!(
        tasks(&report),
        pairs(&[
            ("resolve", "passed"),
            ("connect", "failed"),
            ("ehlo", "skipped"),
            ("starttls", "skipped"),
            ("send", "skipped")
        ])
    );
    let connect = task(&report, "connect");
    assert_eq!((connect["ip"].as_str(), connect["port"].as_u64()), (Some("127.0.0.1"), Some(u64::from(closed.port()))));
    assert_eq!(connect["ok"], false);
    let detail = connect["detail"].as_str().unwrap_or("");
    assert!(detail.starts_with(&format!("4.4.316 Connection refused [{closed}: ")), "{detail}");
    assert_eq!(task(&report, "ehlo")["detail"], "skipped: connect failed");
    assert_eq!(task(&report, "send")["host"], serde_json::Value::Null);
}

/// A self-signed certificate for `mx.fabrikam.test`, its subject named after
/// the file, written to `dir/name`: (certificate PEM, key PEM, file).
fn self_signed(dir: &Path, name: &str) -> (String, String, std::path::PathBuf) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec!["mx.fabrikam.test".to_string()]).expect("params");
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    let certificate = params.self_signed(&key).expect("self-signed certificate");
    let file = dir.join(name);
    std::fs::write(&file, certificate.pem()).expect("certificate file");
    (certificate.pem(), key.serialize_pem(), file)
}

#[test]
fn spec_16_4_certificate_validation_fails_for_a_self_signed_certificate_until_it_is_in_extra_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (certificate, key, own_file) = self_signed(dir.path(), "postfix.pem");
    let (_, _, other_file) = self_signed(dir.path(), "other.pem");
    let postfix = PrivatePostfix::start(&certificate, &key, "fabrikam.test").expect("postfix");
    let dns = DnsServer::start("mx.fabrikam.test. 300 IN A 127.0.0.1\n").expect("dns");
    let smart_host = format!("mx.fabrikam.test:{}", postfix.address.port());
    let config = |extra_ca: &Path, tls: &str, smart_host: &str| {
        format!("[dns]\nnameservers = [\"{}\"]\n\n{}", dns.address, connector(&[smart_host.to_string()], tls))
            .replace("[transport]\n", &format!("[transport]\nextra_ca = {:?}\n", extra_ca.display().to_string()))
    };
    let validating = "tls_settings = \"certificate_validation\"";
    let args = ["Fabrikam", "--to", "bob@fabrikam.test", "--json"];

    // Not trusted (extra_ca holds another certificate): STARTTLS itself
    // works, the certificate task fails, nothing is sent.
    let run = validate(&config(&other_file, validating, &smart_host), &args);
    assert_eq!(run.status, 1, "{run:?}");
    let report = run.json();
    assert_eq!(
        tasks(&report),
        pairs(&[
            ("resolve", "passed"),
            ("connect", "passed"),
            ("ehlo", "passed"),
            ("starttls", "passed"),
            ("certificate", "failed"),
            ("send", "skipped")
        ])
    );
    assert_eq!(task(&report, "resolve")["detail"], "mx.fabrikam.test 127.0.0.1");
    assert!(task(&report, "starttls")["detail"].as_str().is_some_and(|d| d.starts_with("TLSv1.")), "{report}");
    let detail = task(&report, "certificate")["detail"].as_str().unwrap_or("").to_string();
    let expected = format!(
        "4.7.5 TLS negotiation failed: the certificate chain does not lead to a trusted root (trusted: the \
         Mozilla roots and the CAs in {}) [mx.fabrikam.test: invalid peer certificate: UnknownIssuer]",
        other_file.display()
    );
    assert_eq!(detail, expected);

    // Trusted through extra_ca: chain and name verified, and the test message is accepted.
    let run = validate(&config(&own_file, validating, &smart_host), &args);
    assert_eq!(run.status, 0, "{run:?}");
    let report = run.json();
    assert_eq!(report["ok"], true);
    assert!(tasks(&report).iter().all(|(_, status)| status == "passed"), "{report}");
    let detail = task(&report, "certificate")["detail"].as_str().unwrap_or("").to_string();
    assert!(detail.contains(&format!("the CAs in {}", own_file.display())), "{detail}");
    assert!(detail.contains("the host name mx.fabrikam.test verified"), "{detail}");
    assert!(task(&report, "send")["detail"].as_str().is_some_and(|d| d.contains(": 250 2.0.0 Ok: queued as ")));

    // Domain validation names the TLS domain; here the smart host is an address.
    let domain = "tls_settings = \"domain_validation\"\ntls_domain = \"*.fabrikam.test\"";
    let run = validate(&config(&own_file, domain, &postfix.address.to_string()), &args);
    assert_eq!(run.status, 0, "{run:?}");
    let report = run.json();
    assert_eq!(task(&report, "resolve")["detail"], "127.0.0.1 is an IP address: nothing to resolve");
    let detail = task(&report, "certificate")["detail"].as_str().unwrap_or("").to_string();
    assert!(detail.contains("the TLS domain *.fabrikam.test verified"), "{detail}");

    // Postfix logs both test messages as it hands them to its discard transport.
    let sent = || postfix.log().matches("from=<postmaster@contoso.com>").count();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while sent() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(sent(), 2, "{}", postfix.log());
}

#[test]
fn cv_01_a_connector_without_smart_hosts_is_validated_against_the_recipient_domains_mx() {
    let sink = SmtpSink::start(&[]).expect("smtp-sink");
    let zone = "fabrikam.test. 300 IN MX 10 mx.fabrikam.test.\nmx.fabrikam.test. 300 IN A 127.0.0.1\n";
    let dns = DnsServer::start(zone).expect("dns");
    let config = format!("[dns]\nnameservers = [\"{}\"]\n\n{}", dns.address, connector(&[], ""))
        .replace("[transport]\n", &format!("[transport]\nmx_port = {}\n", sink.address.port()));
    let run = validate(&config, &["Fabrikam", "--to", "bob@fabrikam.test", "--json"]);
    assert_eq!(run.status, 0, "{run:?}");
    let report = run.json();
    assert_eq!(
        tasks(&report),
        pairs(&[
            ("resolve", "passed"),
            ("connect", "passed"),
            ("ehlo", "passed"),
            ("starttls", "passed"),
            ("send", "passed")
        ])
    );
    let resolve = task(&report, "resolve");
    assert_eq!(
        (resolve["host"].as_str(), resolve["detail"].as_str()),
        (Some("fabrikam.test"), Some("mx.fabrikam.test 127.0.0.1"))
    );
    assert_eq!(task(&report, "connect")["host"], "mx.fabrikam.test");
    assert_eq!(task(&report, "send")["port"].as_u64(), Some(u64::from(sink.address.port())));
    assert_eq!(sink.wait_for_dumps(1).expect("the test message")[0].rcpt_args, ["<bob@fabrikam.test>"]);
}

#[test]
fn spec_16_4_a_smart_host_without_an_address_fails_resolve_and_nothing_after_it_runs() {
    let dns = DnsServer::start("mx.fabrikam.test. 300 IN A 127.0.0.1\n").expect("dns");
    let config =
        format!("[dns]\nnameservers = [\"{}\"]\n\n{}", dns.address, connector(&["nowhere.fabrikam.test".into()], ""));
    let run = validate(&config, &["Fabrikam", "--to", "bob@fabrikam.test", "--json"]);
    assert_eq!(run.status, 1, "{run:?}");
    let report = run.json();
    assert_eq!(
        tasks(&report),
        pairs(&[
            ("resolve", "failed"),
            ("connect", "skipped"),
            ("ehlo", "skipped"),
            ("starttls", "skipped"),
            ("send", "skipped")
        ])
    );
    let detail = task(&report, "resolve")["detail"].as_str().unwrap_or("").to_string();
    assert!(detail.starts_with("4.4.0 DNS query failed: nowhere.fabrikam.test"), "{detail}");
}

#[test]
fn cv_02_a_recipient_outside_the_connector_or_a_disabled_connector_fails_send_and_nothing_is_sent() {
    let sink = SmtpSink::start(&[]).expect("smtp-sink");
    let healthy = connector(&[sink.address.to_string()], "");
    let run = validate(&healthy, &["Fabrikam", "--to", "bob@tailspin.test", "--json"]);
    assert_eq!(run.status, 1, "{run:?}");
    let report = run.json();
    let send = task(&report, "send");
    assert_eq!(send["status"], "failed");
    assert_eq!(
        send["detail"],
        "The domain of the recipient is not configured as part of connector. [tailspin.test is not among its recipient domains]"
    );
    assert_eq!(task(&report, "connect")["status"], "passed", "connectivity is still tested (spec 16.1)");

    // CN-30: a disabled connector fails validation with the same text.
    let run = validate(
        &connector(&[sink.address.to_string()], "enabled = false"),
        &["Fabrikam", "--to", "bob@fabrikam.test", "--json"],
    );
    assert_eq!(run.status, 1, "{run:?}");
    let detail = task(&run.json(), "send")["detail"].as_str().unwrap_or("").to_string();
    assert!(detail.ends_with("connector. [the connector is disabled (enabled = false)]"), "{detail}");
    assert!(sink.dumped().expect("dumps").is_empty(), "no test message was sent");
}

#[test]
fn an_unknown_connector_name_is_refused_with_the_configured_names_and_exit_status_2() {
    let config = connector(&["127.0.0.1:25".into()], "");
    let run = validate(&config, &["Fabrikm", "--to", "bob@fabrikam.test"]);
    assert_eq!(run.status, 2, "{run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");
    assert_eq!(
        run.stderr.trim_end(),
        "error: there is no outbound connector named `Fabrikm`; the configured outbound connectors are: Fabrikam"
    );

    let run = validate(&config, &["Fabrikm", "--to", "bob@fabrikam.test", "--json"]);
    assert_eq!(run.status, 2, "{run:?}");
    let report = run.json();
    assert_eq!(report["ok"], false);
    assert_eq!(report["tasks"], serde_json::json!([]));
    assert!(report["error"].as_str().is_some_and(|e| e.ends_with("are: Fabrikam")), "{report}");

    let run = validate(&config, &["Fabrikam", "--to", "bob"]);
    assert_eq!(run.status, 2, "{run:?}");
    assert!(run.stderr.contains("`bob` is not an email address"), "{run:?}");
}
