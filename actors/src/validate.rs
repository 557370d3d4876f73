//! Connector validation (spec 16, CV-01..04): `mailflow validate-connector`
//! tests an outbound connector as EOP's "Validate this connector" does, and
//! reports each task as passed, failed, or skipped (an earlier task it needs
//! failed). Tasks, in this order:
//!
//! | task | for each | passes when |
//! |---|---|---|
//! | `resolve` | smart host; for an MX connector, the recipient domain | it has addresses (A/AAAA; MX) |
//! | `connect` | address | TCP connects |
//! | `ehlo` | address | the `220` greeting, and EHLO (or HELO) is accepted |
//! | `starttls` | address | TLS is negotiated as `tls_settings` needs (opportunistic: clear text is a pass) |
//! | `certificate` | address, with `certificate_validation` or `domain_validation` only | the chain leads to a trusted root and the name (host, or `tls_domain`) matches |
//! | `send` | once, over the first address that passed everything | the test message gets a `2xx` at the end of data |
//!
//! Everything on the wire is the delivery client's ([`crate::delivery::client`]),
//! with the options and TLS policy delivery would use
//! ([`crate::delivery::actor::client_options`], [`connector_tls`]). To report
//! the handshake and the certificate apart, a validating policy handshakes
//! without a check, and then the connector's own check
//! ([`tls::check_certificate`]) judges the chain the peer presented: the same
//! verdict the handshake would have reached. Each stage's time limit is the
//! configured one capped at [`STAGE_LIMIT`], so a silent peer fails its task
//! instead of holding the command for minutes.
//!
//! The test message goes from the postmaster (`[transport] postmaster`, else
//! `postmaster@<default accepted domain>`) to the given address, with the
//! subject `Connector validation: <name>` and a [`VALIDATION_HEADER`] (CV-04).
//! It is sent only to a recipient the connector serves, and never by a
//! disabled connector; otherwise `send` fails with EOP's text (CV-02, CN-30).
//! Validation results are printed, not stored (CV-03 is not implemented).
//! The report and its rendering are in `validate/report.rs`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use mailflow_events::delivery::QueuedRecipient;
use mailflow_events::received::{BodyType, SmtpReply};
use rustls::CertificateError;

use crate::config::Config;
use crate::delivery::actor::connector_tls;
use crate::delivery::client::{
    Capabilities, ClientOptions, Connection, Hop, HopFailure, Outcome, RootsError, Stage, TlsPolicy, Transaction, tls,
};
use crate::delivery::mx::{self, Resolution};
use crate::dns::DnsSetupError;
use crate::routing::OutboundConnector;

mod report;

pub use report::{Report, Status, Task, TaskResult};

/// Header that marks the test message, its value the connector's name (CV-04).
pub const VALIDATION_HEADER: &str = "X-Mailflow-Connector-Validation";

/// EOP's text when the recipient is not in the connector's scope, or the
/// connector is disabled (CV-02, CN-30).
pub const NOT_PART_OF_CONNECTOR: &str = "The domain of the recipient is not configured as part of connector.";

/// Longest wait for any one stage of a validation session.
pub const STAGE_LIMIT: Duration = Duration::from_secs(60);

/// Why a validation could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    /// No outbound connector has that name (permanent: fix the command line).
    #[error("there is no outbound connector named `{name}`; {}", configured_names(.configured))]
    UnknownConnector {
        /// The name asked for.
        name: String,
        /// The names configured, in configuration order.
        configured: Vec<String>,
    },
    /// The recipient is not an address (permanent: fix the command line).
    #[error("`{0}` is not an email address: --to needs local-part@domain")]
    InvalidAddress(String),
    /// `[transport] extra_ca` cannot be used (permanent: fix the configuration).
    #[error("[transport] extra_ca: {0}")]
    Roots(#[from] RootsError),
    /// The resolver could not be built (permanent: fix `[dns]`).
    #[error(transparent)]
    Dns(#[from] DnsSetupError),
}

fn configured_names(names: &[String]) -> String {
    if names.is_empty() {
        "no outbound connectors are configured".to_string()
    } else {
        format!("the configured outbound connectors are: {}", names.join(", "))
    }
}

/// Whether `address` can be a recipient in RCPT TO: `local@domain`, without
/// spaces, angle brackets or control characters.
fn is_address(address: &str) -> bool {
    let plausible = address.chars().all(|c| !c.is_control() && !c.is_whitespace() && c != '<' && c != '>');
    matches!(address.rsplit_once('@'), Some((local, domain)) if !local.is_empty() && domain.contains('.') && plausible)
        && !address.ends_with('.')
}

/// Validates the outbound connector `name` with a test message to `recipient`.
pub async fn validate(config: &Config, name: &str, recipient: &str) -> Result<Report, ValidateError> {
    let Some(settings) = config.outbound_connectors.iter().find(|c| c.name.eq_ignore_ascii_case(name)) else {
        return Err(ValidateError::UnknownConnector {
            name: name.to_string(),
            configured: config.outbound_connectors.iter().map(|c| c.name.clone()).collect(),
        });
    };
    if !is_address(recipient) {
        return Err(ValidateError::InvalidAddress(recipient.to_string()));
    }
    let connector = OutboundConnector::from(settings);
    let mut options = crate::delivery::actor::client_options(config)?;
    options.tls = connector_tls(&connector);
    let limits = &mut options.timeouts;
    let stages = [
        &mut limits.greeting,
        &mut limits.ehlo,
        &mut limits.mail,
        &mut limits.rcpt,
        &mut limits.data_init,
        &mut limits.data_block,
        &mut limits.data_end,
    ];
    for limit in stages {
        *limit = (*limit).min(STAGE_LIMIT);
    }
    let resolver = crate::dns::resolver(&config.dns)?;
    let policy = crate::policy::InboundPolicy::new(config);
    let domain = recipient.rsplit_once('@').map_or("", |(_, d)| d);
    let scope = if !settings.enabled {
        Err("the connector is disabled (enabled = false)".to_string())
    } else if connector.serves(domain, policy.accepted_domain(domain).is_some()) {
        Ok(())
    } else {
        Err(format!("{domain} is not among its recipient domains"))
    };
    let roots = roots_description(config);

    let mut tasks = Vec::new();
    let mut ready: Option<Connection> = None;
    for (host, resolved) in resolve(&resolver, &connector, domain, config.transport.mx_port).await {
        match resolved {
            Ok(hops) => {
                tasks.push(TaskResult::new(Task::Resolve, Some(&host), None, Status::Passed, describe_hops(&hops)));
                for hop in hops {
                    let (opened, connection) = open(&hop, &options).await;
                    let hop_tasks = session_tasks(&hop, &options.tls, &roots, &opened);
                    let healthy = hop_tasks.iter().all(|t| t.status == Status::Passed);
                    tasks.extend(hop_tasks);
                    match connection {
                        Some(connection) if healthy && ready.is_none() => ready = Some(connection),
                        Some(connection) => connection.quit().await,
                        None => {}
                    }
                }
            }
            Err(detail) => {
                tasks.push(TaskResult::new(Task::Resolve, Some(&host), None, Status::Failed, detail));
                let checks = checks_for(&options.tls);
                tasks.extend(skipped(&host, None, &checks, Task::Resolve));
            }
        }
    }
    let postmaster = crate::ndr::NdrPolicy::new(config, Arc::new(policy)).postmaster;
    let send = match (scope, ready) {
        (Err(why), ready) => {
            let hop = ready.as_ref().map(|c| c.hop().clone());
            if let Some(connection) = ready {
                connection.quit().await;
            }
            let (host, addr) = (hop.as_ref().map(|h| h.host.as_str()), hop.as_ref().map(|h| h.addr));
            TaskResult::new(Task::Send, host, addr, Status::Failed, format!("{NOT_PART_OF_CONNECTOR} [{why}]"))
        }
        (Ok(()), None) => TaskResult::new(
            Task::Send,
            None,
            None,
            Status::Skipped,
            "skipped: no address passed the connection tasks".to_string(),
        ),
        (Ok(()), Some(mut connection)) => {
            let hostname = &config.server.hostname;
            let id = format!("{}@{hostname}", uuid::Uuid::now_v7().simple());
            let message = test_message(&settings.name, &postmaster, recipient, &id, Utc::now());
            let result = send_test(&mut connection, &postmaster, recipient, &id, &message).await;
            let hop = connection.hop().clone();
            connection.quit().await;
            let (status, detail) = match result {
                Ok(detail) => (Status::Passed, detail),
                Err(detail) => (Status::Failed, detail),
            };
            TaskResult::new(Task::Send, Some(&hop.host), Some(hop.addr), status, detail)
        }
    };
    tasks.push(send);
    Ok(Report { connector: settings.name.clone(), recipient: recipient.to_string(), tasks })
}

/// What a task's trust anchors are, for certificate details.
fn roots_description(config: &Config) -> String {
    match &config.transport.extra_ca {
        Some(path) => format!("the Mozilla roots and the CAs in {}", path.display()),
        None => "the Mozilla roots; [transport] extra_ca is not set".to_string(),
    }
}

/// The hosts to test, each with its addresses or why it has none: every
/// smart host, or (MX connector) the recipient domain's MX hosts.
async fn resolve(
    resolver: &hickory_resolver::TokioResolver,
    connector: &OutboundConnector,
    domain: &str,
    mx_port: u16,
) -> Vec<(String, Result<Vec<Hop>, String>)> {
    if connector.smart_hosts.is_empty() {
        let resolved = match mx::resolve(resolver, domain, mx_port).await {
            Resolution::Hops(hops) => Ok(hops),
            Resolution::Fail(reply) => Err(format!("MX of {domain}: {reply}")),
            Resolution::Defer(error) => Err(format!("MX of {domain}: {error}")),
        };
        return vec![(domain.to_string(), resolved)];
    }
    let mut out = Vec::new();
    for host in &connector.smart_hosts {
        let resolved = match mx::host_hops(resolver, &host.host, host.port).await {
            Ok(hops) if hops.is_empty() => {
                Err(format!("4.4.0 DNS query failed: {} has no A or AAAA record", host.host))
            }
            Ok(hops) => Ok(hops),
            Err(error) => Err(format!("4.4.0 DNS query failed: {error}")),
        };
        out.push((host.host.clone(), resolved));
    }
    out
}

/// `mx.contoso.com 10.0.0.1, 10.0.0.2; mx2.contoso.com 10.0.0.3`; an address as itself.
fn describe_hops(hops: &[Hop]) -> String {
    let mut groups: Vec<(&str, Vec<String>)> = Vec::new();
    for hop in hops {
        match groups.last_mut() {
            Some((host, ips)) if *host == hop.host => ips.push(hop.addr.ip().to_string()),
            _ => groups.push((&hop.host, vec![hop.addr.ip().to_string()])),
        }
    }
    let describe = |(host, ips): &(&str, Vec<String>)| {
        if host.parse::<std::net::IpAddr>().is_ok() {
            format!("{host} is an IP address: nothing to resolve")
        } else {
            format!("{host} {}", ips.join(", "))
        }
    };
    groups.iter().map(describe).collect::<Vec<_>>().join("; ")
}

/// What opening a session to one address established, as plain data.
#[derive(Debug, Clone, PartialEq)]
struct Session {
    /// The `220` greeting.
    greeting: SmtpReply,
    /// Extensions of the last EHLO.
    capabilities: Capabilities,
    /// `(protocol, cipher)` when encrypted.
    tls: Option<(String, String)>,
    /// The certificate check, when the policy has one: the names the
    /// certificate is for, or the check's error.
    certificate: Option<Result<Vec<String>, rustls::Error>>,
}

/// Opens a session to `hop` as `options` say, checking the certificate after
/// an unchecked handshake; hands back the connection when it is usable.
async fn open(hop: &Hop, options: &ClientOptions) -> (Result<Session, HopFailure>, Option<Connection>) {
    let checked = options.tls.clone();
    let mut unchecked = options.clone();
    if checks_certificate(&checked) {
        unchecked.tls = TlsPolicy::EncryptionOnly;
    }
    match Connection::open(hop, &unchecked).await {
        Ok(connection) => {
            let certificate = checks_certificate(&checked).then(|| {
                let chain = connection.peer_certificates();
                tls::check_certificate(&checked, &options.roots, &hop.host, hop.addr.ip(), &chain)
                    .map(|()| chain.first().map(tls::certificate_names).unwrap_or_default())
            });
            let session = Session {
                greeting: connection.greeting().clone(),
                capabilities: connection.capabilities().clone(),
                tls: connection.tls(),
                certificate,
            };
            (Ok(session), Some(connection))
        }
        Err(failure) => (Err(failure), None),
    }
}

fn checks_certificate(policy: &TlsPolicy) -> bool {
    matches!(policy, TlsPolicy::CertificateValidation | TlsPolicy::DomainValidation { .. })
}

/// The per-address tasks of `policy`.
fn checks_for(policy: &TlsPolicy) -> Vec<Task> {
    let mut tasks = vec![Task::Connect, Task::Ehlo, Task::StartTls];
    if checks_certificate(policy) {
        tasks.push(Task::Certificate);
    }
    tasks
}

fn skipped(host: &str, addr: Option<SocketAddr>, tasks: &[Task], failed: Task) -> Vec<TaskResult> {
    tasks
        .iter()
        .map(|&task| {
            TaskResult::new(task, Some(host), addr, Status::Skipped, format!("skipped: {} failed", failed.name()))
        })
        .collect()
}

/// The per-address tasks from what opening the session established.
fn session_tasks(hop: &Hop, policy: &TlsPolicy, roots: &str, opened: &Result<Session, HopFailure>) -> Vec<TaskResult> {
    let checks = checks_for(policy);
    let host = Some(hop.host.as_str());
    let passed = |task, detail: String| TaskResult::new(task, host, Some(hop.addr), Status::Passed, detail);
    let session = match opened {
        Ok(session) => session,
        Err(failure) => {
            let failed = match failure.stage {
                Stage::Connect => Task::Connect,
                Stage::Greeting | Stage::Ehlo => Task::Ehlo,
                _ => Task::StartTls,
            };
            let at = checks.iter().position(|&t| t == failed).unwrap_or(0);
            let mut out: Vec<TaskResult> = checks[..at]
                .iter()
                .map(|&task| match task {
                    Task::Connect => passed(task, format!("connected to {}", hop.addr)),
                    _ => passed(task, "greeting and EHLO accepted".to_string()),
                })
                .collect();
            out.push(TaskResult::new(failed, host, Some(hop.addr), Status::Failed, failure.error.clone()));
            out.extend(skipped(&hop.host, Some(hop.addr), &checks[at + 1..], failed));
            return out;
        }
    };
    let mut out = vec![
        passed(Task::Connect, format!("connected to {}", hop.addr)),
        passed(
            Task::Ehlo,
            format!(
                "{}; EHLO accepted{}: {}",
                session.greeting,
                if session.tls.is_some() { ", over TLS" } else { "" },
                extensions(&session.capabilities)
            ),
        ),
        passed(
            Task::StartTls,
            match &session.tls {
                Some((protocol, cipher)) => format!("{protocol}, {cipher}"),
                None => "no TLS: the server did not offer STARTTLS or refused it, and opportunistic TLS sends in \
                         clear text"
                    .to_string(),
            },
        ),
    ];
    match &session.certificate {
        None => {}
        Some(Ok(names)) => out.push(passed(Task::Certificate, certificate_passed(policy, hop, roots, names))),
        Some(Err(error)) => out.push(TaskResult::new(
            Task::Certificate,
            host,
            Some(hop.addr),
            Status::Failed,
            certificate_failed(policy, hop, roots, error),
        )),
    }
    out
}

/// `PIPELINING, SIZE 10485760, STARTTLS, ...`, or that there are none.
fn extensions(caps: &Capabilities) -> String {
    let size = caps.size.map(|n| if n == 0 { "SIZE".to_string() } else { format!("SIZE {n}") });
    let flags = [
        (caps.pipelining, "PIPELINING"),
        (caps.starttls, "STARTTLS"),
        (caps.eight_bit_mime, "8BITMIME"),
        (caps.smtputf8, "SMTPUTF8"),
        (caps.dsn, "DSN"),
        (caps.enhanced_status_codes, "ENHANCEDSTATUSCODES"),
        (caps.chunking, "CHUNKING"),
    ];
    let all: Vec<String> = flags.iter().filter(|(on, _)| *on).map(|(_, name)| name.to_string()).chain(size).collect();
    if all.is_empty() { "no extensions".to_string() } else { all.join(", ") }
}

/// What a passed certificate check established.
fn certificate_passed(policy: &TlsPolicy, hop: &Hop, roots: &str, names: &[String]) -> String {
    let name = match policy {
        TlsPolicy::DomainValidation { tls_domain } => format!("the TLS domain {tls_domain}"),
        _ => format!("the host name {}", hop.host),
    };
    format!("chain to a trusted root ({roots}) and {name} verified; the certificate is for {}", names.join(", "))
}

/// Why a certificate check failed, in words, then as rustls said it.
fn certificate_failed(policy: &TlsPolicy, hop: &Hop, roots: &str, error: &rustls::Error) -> String {
    let name = match policy {
        TlsPolicy::DomainValidation { tls_domain } => format!("the TLS domain {tls_domain}"),
        _ => format!("the host name {}", hop.host),
    };
    let why = match error {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            format!("the certificate chain does not lead to a trusted root (trusted: {roots})")
        }
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!("the certificate is not valid for {name}"),
        rustls::Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => {
            "the certificate has expired".to_string()
        }
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        ) => "the certificate is not valid yet".to_string(),
        rustls::Error::InvalidCertificate(CertificateError::BadSignature) => {
            format!("the certificate's signature does not verify with the key of its issuer among {roots}")
        }
        rustls::Error::NoCertificatesPresented => "the server presented no certificate".to_string(),
        _ => format!("the certificate of {} was refused", hop.host),
    };
    format!("4.7.5 TLS negotiation failed: {why} [{}: {error}]", hop.host)
}

/// Sends the test message; the detail of the `send` task either way.
async fn send_test(
    connection: &mut Connection,
    postmaster: &str,
    recipient: &str,
    id: &str,
    message: &[u8],
) -> Result<String, String> {
    let recipients = [QueuedRecipient { address: recipient.to_string(), notify: vec![], orcpt: None }];
    let smtputf8 = !postmaster.is_ascii() || !recipient.is_ascii();
    let tx = Transaction {
        mail_from: postmaster,
        recipients: &recipients,
        dsn_return: None,
        dsn_envid: None,
        // The address is in the header fields too (RFC 6532).
        body: if smtputf8 { BodyType::EightBitMime } else { BodyType::SevenBit },
        smtputf8,
    };
    let sent = format!("MAIL FROM:<{postmaster}> RCPT TO:<{recipient}> Message-ID <{id}>");
    match connection.send(&tx, message).await {
        Ok(outcomes) => match outcomes.first() {
            Some(o) if o.outcome == Outcome::Delivered => Ok(format!("{sent}: {}", o.reply)),
            Some(o) => Err(format!("{sent}: {}", o.reply)),
            None => Err(format!("{sent}: no outcome")),
        },
        Err(failure) => Err(format!("{sent}: {failure}")),
    }
}

/// Printable ASCII only: the name goes into header fields.
fn header_safe(text: &str) -> String {
    text.chars().map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' }).collect()
}

/// The test message (RFC 5322, CRLF line ends) from `postmaster` to
/// `recipient`, with `Message-ID: <id>`.
pub fn test_message(connector: &str, postmaster: &str, recipient: &str, id: &str, now: DateTime<Utc>) -> Vec<u8> {
    let name = header_safe(connector);
    let mut out = String::new();
    out.push_str(&format!("From: Connector validation <{postmaster}>\r\n"));
    out.push_str(&format!("To: <{recipient}>\r\n"));
    out.push_str(&format!("Subject: Connector validation: {name}\r\n"));
    out.push_str(&format!("Date: {}\r\n", now.to_rfc2822()));
    out.push_str(&format!("Message-ID: <{id}>\r\n"));
    out.push_str(&format!("{VALIDATION_HEADER}: {name}\r\n"));
    out.push_str("Auto-Submitted: auto-generated\r\n");
    out.push_str("MIME-Version: 1.0\r\n");
    out.push_str("Content-Type: text/plain; charset=us-ascii\r\n\r\n");
    out.push_str(&format!(
        "This is a test message sent to validate the outbound connector {name}.\r\n\
         It can be deleted.\r\n"
    ));
    out.into_bytes()
}

/// `mailflow validate-connector`: validates, prints the report (a table, or
/// one JSON document with `json`) and returns the exit status: 0 when every
/// task passed, 1 when one failed, 2 when the validation could not run.
pub fn command(config: &Config, name: &str, recipient: &str, json: bool) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => return print_error(name, recipient, &format!("starting the runtime: {err}"), json),
    };
    match runtime.block_on(validate(config, name, recipient)) {
        Ok(report) => {
            if json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_table());
            }
            if report.ok() { 0 } else { 1 }
        }
        Err(err) => print_error(name, recipient, &err.to_string(), json),
    }
}

/// Reports that the validation could not run; returns exit status 2.
pub fn print_error(name: &str, recipient: &str, error: &str, json: bool) -> i32 {
    if json {
        let value =
            serde_json::json!({"connector": name, "recipient": recipient, "ok": false, "error": error, "tasks": []});
        println!("{value}");
    } else {
        eprintln!("error: {error}");
    }
    2
}

#[cfg(test)]
mod tests;
