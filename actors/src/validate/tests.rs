//! The pure parts of connector validation: the task list, the report, the
//! test message and the certificate check, without sockets.

use std::net::SocketAddr;

use chrono::TimeZone as _;
use mailflow_events::received::SmtpReply;

use rustls::RootCertStore;

use super::*;

const ROOTS: &str = "the Mozilla roots; [transport] extra_ca is not set";

fn hop() -> Hop {
    Hop { host: "mx.fabrikam.test".into(), addr: SocketAddr::from(([127, 0, 0, 1], 2525)) }
}

fn failure(stage: Stage, error: &str) -> HopFailure {
    HopFailure { stage, reply: None, error: error.into(), permanent: false }
}

fn session(tls: bool, certificate: Option<Result<Vec<String>, rustls::Error>>) -> Session {
    Session {
        greeting: SmtpReply { code: 220, enhanced: None, text: "mx.fabrikam.test ESMTP".into() },
        capabilities: Capabilities { pipelining: true, size: Some(10_485_760), ..Capabilities::default() },
        tls: tls.then(|| ("TLSv1.3".to_string(), "TLS_AES_256_GCM_SHA384".to_string())),
        certificate,
    }
}

/// (task, status) of each result, to compare task lists at a glance.
fn summary(tasks: &[TaskResult]) -> Vec<(&'static str, &'static str)> {
    tasks.iter().map(|t| (t.task.name(), t.status.name())).collect()
}

#[test]
fn a_refused_connection_fails_connect_and_skips_every_task_that_needs_it() {
    // Spec 16.2: Connection fails; EHLO, STARTTLS and the certificate cannot run.
    let opened = Err(failure(Stage::Connect, "4.4.316 Connection refused [127.0.0.1:2525: refused]"));
    let tasks = session_tasks(&hop(), &TlsPolicy::CertificateValidation, ROOTS, &opened);
    assert_eq!(
        summary(&tasks),
        [("connect", "failed"), ("ehlo", "skipped"), ("starttls", "skipped"), ("certificate", "skipped")]
    );
    assert!(tasks[0].detail.starts_with("4.4.316 Connection refused"), "{tasks:?}");
    assert_eq!(tasks[1].detail, "skipped: connect failed");
    assert!(tasks.iter().all(|t| t.addr == Some(hop().addr) && t.host.as_deref() == Some("mx.fabrikam.test")));
}

#[test]
fn a_failure_at_ehlo_or_starttls_passes_the_tasks_before_it() {
    let opened = Err(failure(Stage::Greeting, "554 5.7.1 go away"));
    let tasks = session_tasks(&hop(), &TlsPolicy::Opportunistic, ROOTS, &opened);
    assert_eq!(summary(&tasks), [("connect", "passed"), ("ehlo", "failed"), ("starttls", "skipped")]);

    let opened = Err(failure(Stage::StartTls, "4.7.10 TLS required but not available [no STARTTLS]"));
    let tasks = session_tasks(&hop(), &TlsPolicy::DomainValidation { tls_domain: "x.test".into() }, ROOTS, &opened);
    assert_eq!(
        summary(&tasks),
        [("connect", "passed"), ("ehlo", "passed"), ("starttls", "failed"), ("certificate", "skipped")]
    );
    assert!(tasks[2].detail.starts_with("4.7.10 TLS required but not available"), "{tasks:?}");
}

#[test]
fn an_open_session_reports_the_greeting_the_extensions_and_the_cipher() {
    let tasks = session_tasks(&hop(), &TlsPolicy::EncryptionOnly, ROOTS, &Ok(session(true, None)));
    // No certificate task: encryption_only checks no certificate (spec 6.4).
    assert_eq!(summary(&tasks), [("connect", "passed"), ("ehlo", "passed"), ("starttls", "passed")]);
    assert_eq!(tasks[0].detail, "connected to 127.0.0.1:2525");
    assert_eq!(tasks[1].detail, "220 mx.fabrikam.test ESMTP; EHLO accepted, over TLS: PIPELINING, SIZE 10485760");
    assert_eq!(tasks[2].detail, "TLSv1.3, TLS_AES_256_GCM_SHA384");

    let tasks = session_tasks(&hop(), &TlsPolicy::Opportunistic, ROOTS, &Ok(session(false, None)));
    assert_eq!(tasks[2].status, Status::Passed, "opportunistic TLS may send in clear text");
    assert!(tasks[2].detail.starts_with("no TLS"), "{tasks:?}");
    assert_eq!(tasks[1].detail, "220 mx.fabrikam.test ESMTP; EHLO accepted: PIPELINING, SIZE 10485760");
}

#[test]
fn the_certificate_task_says_what_was_validated_or_why_not() {
    let names = Ok(vec!["mx.fabrikam.test".to_string()]);
    let tasks = session_tasks(&hop(), &TlsPolicy::CertificateValidation, ROOTS, &Ok(session(true, Some(names))));
    assert_eq!(tasks[3].status, Status::Passed);
    assert_eq!(
        tasks[3].detail,
        "chain to a trusted root (the Mozilla roots; [transport] extra_ca is not set) and the host name \
         mx.fabrikam.test verified; the certificate is for mx.fabrikam.test"
    );
    let domain = TlsPolicy::DomainValidation { tls_domain: "*.fabrikam.test".into() };
    let tasks = session_tasks(&hop(), &domain, ROOTS, &Ok(session(true, Some(Ok(vec!["a.fabrikam.test".into()])))));
    assert!(tasks[3].detail.contains("the TLS domain *.fabrikam.test verified"), "{tasks:?}");

    let unknown = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
    let tasks = session_tasks(&hop(), &TlsPolicy::CertificateValidation, ROOTS, &Ok(session(true, Some(Err(unknown)))));
    assert_eq!(tasks[3].status, Status::Failed);
    assert!(
        tasks[3].detail.starts_with(
            "4.7.5 TLS negotiation failed: the certificate chain does not lead to a trusted root (trusted: the \
             Mozilla roots; [transport] extra_ca is not set) [mx.fabrikam.test: "
        ),
        "{tasks:?}"
    );
    let wrong_name = rustls::Error::InvalidCertificate(CertificateError::NotValidForName);
    let tasks = session_tasks(&hop(), &domain, ROOTS, &Ok(session(true, Some(Err(wrong_name)))));
    assert!(tasks[3].detail.contains("not valid for the TLS domain *.fabrikam.test"), "{tasks:?}");
    let same_name_other_key = rustls::Error::InvalidCertificate(CertificateError::BadSignature);
    let tasks = session_tasks(&hop(), &domain, ROOTS, &Ok(session(true, Some(Err(same_name_other_key)))));
    assert!(tasks[3].detail.contains("signature does not verify with the key of its issuer"), "{tasks:?}");
}

/// A private CA and a certificate it issued for `mx.fabrikam.test`: (CA, leaf).
fn private_ca() -> (rustls::pki_types::CertificateDer<'static>, rustls::pki_types::CertificateDer<'static>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("CA");
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let leaf_key = KeyPair::generate().expect("key");
    let leaf = CertificateParams::new(vec!["mx.fabrikam.test".to_string()])
        .expect("params")
        .signed_by(&leaf_key, &issuer)
        .expect("leaf");
    (ca.der().clone(), leaf.der().clone())
}

#[test]
fn a_presented_chain_is_checked_against_the_roots_and_the_name_as_in_a_handshake() {
    let (ca, leaf) = private_ca();
    let ip = std::net::IpAddr::from([127, 0, 0, 1]);
    let chain = [leaf.clone()];
    let mut trusted = RootCertStore::empty();
    trusted.add(ca).expect("CA as root");
    let trusted = Arc::new(trusted);
    let public = tls::default_roots();
    let check = |policy: &TlsPolicy, roots: &Arc<RootCertStore>, host: &str| {
        tls::check_certificate(policy, roots, host, ip, &chain)
    };
    let domain = |d: &str| TlsPolicy::DomainValidation { tls_domain: d.into() };

    assert_eq!(tls::certificate_names(&leaf), ["mx.fabrikam.test"]);
    assert!(check(&TlsPolicy::CertificateValidation, &trusted, "mx.fabrikam.test").is_ok());
    assert!(check(&domain("*.fabrikam.test"), &trusted, "127.0.0.1").is_ok());
    assert_eq!(
        check(&TlsPolicy::CertificateValidation, &public, "mx.fabrikam.test"),
        Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer))
    );
    assert!(matches!(
        check(&TlsPolicy::CertificateValidation, &trusted, "other.fabrikam.test"),
        Err(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
        ))
    ));
    assert!(check(&domain("contoso.test"), &trusted, "mx.fabrikam.test").is_err());
    assert_eq!(
        tls::check_certificate(&TlsPolicy::CertificateValidation, &trusted, "mx.fabrikam.test", ip, &[]),
        Err(rustls::Error::NoCertificatesPresented)
    );

    // A self-signed server certificate is trusted once it is itself a root (`extra_ca`).
    let key = rcgen::KeyPair::generate().expect("key");
    let own = rcgen::CertificateParams::new(vec!["mx.fabrikam.test".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("self-signed")
        .der()
        .clone();
    let policy = TlsPolicy::CertificateValidation;
    let chain = [own.clone()];
    assert_eq!(
        tls::check_certificate(&policy, &public, "mx.fabrikam.test", ip, &chain),
        Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer))
    );
    let mut itself = RootCertStore::empty();
    itself.add(own).expect("self-signed certificate as root");
    let result = tls::check_certificate(&policy, &Arc::new(itself), "mx.fabrikam.test", ip, &chain);
    assert_eq!(result, Ok(()));
}

fn report(statuses: &[(Task, Status)]) -> Report {
    Report {
        connector: "Fabrikam".into(),
        recipient: "bob@fabrikam.test".into(),
        tasks: statuses
            .iter()
            .map(|&(task, status)| {
                let addr = (task != Task::Resolve).then_some(hop().addr);
                TaskResult::new(task, Some("mx.fabrikam.test"), addr, status, format!("{} detail", task.name()))
            })
            .collect(),
    }
}

#[test]
fn the_report_is_ok_only_when_every_task_passed_and_its_json_has_one_object_per_task() {
    let passed =
        report(&[(Task::Resolve, Status::Passed), (Task::Connect, Status::Passed), (Task::Send, Status::Passed)]);
    assert!(passed.ok());
    let failed =
        report(&[(Task::Resolve, Status::Passed), (Task::Connect, Status::Failed), (Task::Send, Status::Skipped)]);
    assert!(!failed.ok());
    assert!(!report(&[]).ok(), "a validation that ran nothing did not pass");

    let json = failed.to_json();
    assert_eq!(json["connector"], "Fabrikam");
    assert_eq!(json["recipient"], "bob@fabrikam.test");
    assert_eq!(json["ok"], false);
    let tasks = json["tasks"].as_array().expect("tasks");
    assert_eq!(tasks.len(), 3);
    assert_eq!(
        tasks[0],
        serde_json::json!({"task": "resolve", "host": "mx.fabrikam.test", "ip": null, "port": null,
                           "status": "passed", "ok": true, "detail": "resolve detail"})
    );
    assert_eq!(tasks[1]["ip"], "127.0.0.1");
    assert_eq!(tasks[1]["port"], 2525);
    assert_eq!((tasks[1]["status"].as_str(), tasks[1]["ok"].as_bool()), (Some("failed"), Some(false)));
    assert_eq!(tasks[2]["status"], "skipped");
}

#[test]
fn the_table_has_one_aligned_row_per_task_and_ends_with_the_verdict() {
    let table =
        report(&[(Task::Resolve, Status::Passed), (Task::StartTls, Status::Failed), (Task::Send, Status::Skipped)])
            .to_table();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines[0], "Outbound connector Fabrikam, test message to bob@fabrikam.test");
    assert!(lines[2].starts_with("TASK      HOST              ADDRESS         RESULT   DETAIL"), "{table}");
    assert!(lines[3].starts_with("resolve   mx.fabrikam.test  -               passed   resolve detail"), "{table}");
    assert!(lines[4].starts_with("starttls  mx.fabrikam.test  127.0.0.1:2525  failed   starttls detail"), "{table}");
    assert_eq!(lines.last(), Some(&"Validation failed: 1 failed, 1 skipped, 1 passed."));
    let all = report(&[(Task::Resolve, Status::Passed), (Task::Send, Status::Passed)]).to_table();
    assert!(all.ends_with("Validation passed: 2 tasks passed.\n"), "{all}");
}

#[test]
fn the_test_message_is_rfc_5322_from_the_postmaster_with_a_marker_header() {
    // CV-04: the postmaster as sender, a distinctive subject; spec 16.4: a marker header.
    let now = Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).single().expect("date");
    let bytes =
        test_message("Fabrikam\r\nBcc: x@evil.test é", "postmaster@contoso.com", "bob@fabrikam.test", "1@mx", now);
    let text = String::from_utf8(bytes.clone()).expect("ASCII");
    assert!(text.is_ascii());
    assert!(!text.replace("\r\n", "").contains('\n'), "CRLF line ends only");
    assert!(!text.contains("\r\nBcc:"), "the connector name cannot add a header field: {text}");
    let message = mail_parser::MessageParser::default().parse(&bytes).expect("parses");
    let from = message.from().and_then(|a| a.first()).and_then(|a| a.address());
    assert_eq!(from, Some("postmaster@contoso.com"));
    assert_eq!(message.to().and_then(|a| a.first()).and_then(|a| a.address()), Some("bob@fabrikam.test"));
    assert_eq!(message.subject(), Some("Connector validation: Fabrikam??Bcc: x@evil.test ?"));
    assert_eq!(message.message_id(), Some("1@mx"));
    assert!(message.date().is_some());
    assert_eq!(message.header_raw(VALIDATION_HEADER).map(str::trim), Some("Fabrikam??Bcc: x@evil.test ?"));
    assert!(message.body_text(0).is_some_and(|body| body.contains("outbound connector Fabrikam")));
}

#[test]
fn only_plausible_addresses_are_test_recipients() {
    for good in ["bob@fabrikam.test", "b.o+b@sub.fabrikam.test"] {
        assert!(is_address(good), "{good}");
    }
    for bad in ["bob", "@fabrikam.test", "bob@", "bob@localhost", "bob@fabrikam.test.", "b ob@x.test", "<b@x.test>"] {
        assert!(!is_address(bad), "{bad}");
    }
}

#[test]
fn the_addresses_of_a_host_are_listed_together() {
    let hops = [
        Hop { host: "mx1.test".into(), addr: SocketAddr::from(([10, 0, 0, 1], 25)) },
        Hop { host: "mx1.test".into(), addr: SocketAddr::from(([10, 0, 0, 2], 25)) },
        Hop { host: "mx2.test".into(), addr: SocketAddr::from(([10, 0, 0, 3], 25)) },
    ];
    assert_eq!(describe_hops(&hops), "mx1.test 10.0.0.1, 10.0.0.2; mx2.test 10.0.0.3");
    let literal = [Hop { host: "10.0.0.9".into(), addr: SocketAddr::from(([10, 0, 0, 9], 25)) }];
    assert_eq!(describe_hops(&literal), "10.0.0.9 is an IP address: nothing to resolve");
}

#[tokio::test]
async fn an_unknown_connector_is_refused_with_the_names_that_exist() {
    let config: Config = toml::from_str(
        "[[outbound_connectors]]\nname = \"Fabrikam\"\nkind = \"partner\"\nrecipient_domains = [\"fabrikam.test\"]\n\
         [[outbound_connectors]]\nname = \"OnPrem\"\nkind = \"on_premises\"\nrecipient_domains = [\"contoso.test\"]\n",
    )
    .expect("config");
    let err = validate(&config, "Fabrikm", "bob@fabrikam.test").await.expect_err("no such connector");
    assert_eq!(
        err.to_string(),
        "there is no outbound connector named `Fabrikm`; the configured outbound connectors are: Fabrikam, OnPrem"
    );
    let err = validate(&Config::builtin(), "Fabrikam", "bob@fabrikam.test").await.expect_err("none configured");
    assert!(err.to_string().ends_with("; no outbound connectors are configured"), "{err}");
    let err = validate(&config, "fabrikam", "bob").await.expect_err("not an address");
    assert_eq!(err.to_string(), "`bob` is not an email address: --to needs local-part@domain");
}
