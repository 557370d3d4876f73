//! Non-delivery reports (RFC 3464 `multipart/report; report-type=delivery-status`).
//!
//! An NDR is a new message from the postmaster address (spec 13.7) to the
//! envelope sender, with a human part modelled on EOP's (spec 13.1), a
//! machine-readable part per recipient (`Status`, `Diagnostic-Code`,
//! `Remote-MTA`, spec 13.2) and the original headers (or the whole message for
//! `RET=FULL`). It re-enters the pipeline through [`submit`] as a
//! `MessageReceived` from the [`SYSTEM_LISTENER`], so it is judged, routed,
//! delivered, deferred and traced like any other message.
//!
//! Never to `<>` (an NDR's own sender is `<>`, so an NDR never causes an NDR),
//! never for a recipient whose `NOTIFY` excludes failures, and generated then
//! dropped for senders whose remote domain has NDRs disabled (spec 13.5).

use chrono::{DateTime, Utc};
use mailflow_events::content::ContentRef;
use mailflow_events::log::EventLog;
use mailflow_events::received::{
    Directionality, DsnNotify, DsnReturn, MessageReceived, ReceivedEvent, Recipient, SmtpEnvelope, SmtpReply,
    SmtpSession,
};
use mailflow_events::{Envelope, TraceContext, content, topic};
use tracing::Instrument as _;

use crate::config::{Config, RemoteDomainConfig};
use crate::telemetry::{self, Stage};

/// Listener name of messages the router generates itself (NDRs).
pub const SYSTEM_LISTENER: &str = "system";

/// One recipient reported as failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedRecipient {
    /// The address delivery was attempted to.
    pub address: String,
    /// `ORCPT` as received (`rfc822;…`), reported as `Original-Recipient`.
    pub orcpt: Option<String>,
    /// The reply reported (received from the next hop or our own).
    pub reply: SmtpReply,
    /// The next hop that gave the reply, if one did.
    pub remote_mta: Option<String>,
}

/// Who sends NDRs and whether a sender gets one.
#[derive(Debug, Clone)]
pub struct NdrPolicy {
    /// `From` of NDRs: `[transport] postmaster`, else `postmaster@<default domain>`.
    pub postmaster: String,
    /// `Reporting-MTA` and the "Generating server".
    pub reporting_mta: String,
    remote_domains: Vec<RemoteDomainConfig>,
    accepted: std::sync::Arc<crate::policy::InboundPolicy>,
    /// Form of the NDRs' content chunks.
    content_encoding: content::ContentEncoding,
}

impl NdrPolicy {
    /// From a validated configuration.
    pub fn new(config: &Config, accepted: std::sync::Arc<crate::policy::InboundPolicy>) -> Self {
        Self {
            postmaster: config
                .transport
                .postmaster
                .clone()
                .unwrap_or_else(|| format!("postmaster@{}", config.default_domain())),
            reporting_mta: config.server.hostname.clone(),
            remote_domains: config.remote_domains.clone(),
            accepted,
            content_encoding: config.event_log.content_encoding(),
        }
    }

    /// Whether an NDR to `sender` is sent: not to `<>`, and not to an outside
    /// sender whose remote domain disables NDRs (spec 13.5).
    pub fn sends_to(&self, sender: &str) -> bool {
        self.notifies(sender, DsnAction::Failed)
    }

    /// Whether a notification of `action` to `sender` is sent: never to
    /// `<>`; to an outside sender unless its remote domain disables NDRs
    /// (failures, spec 13.5) or delivery reports (delays and successes, spec 14.2).
    pub fn notifies(&self, sender: &str, action: DsnAction) -> bool {
        if sender.is_empty() {
            return false;
        }
        let domain = sender.rsplit_once('@').map_or("", |(_, d)| d);
        if self.accepted.within_accepted_domain(domain) {
            return true;
        }
        RemoteDomainConfig::most_specific(&self.remote_domains, domain).is_none_or(|remote| match action {
            DsnAction::Failed => remote.ndr_enabled,
            DsnAction::Delayed | DsnAction::Delivered | DsnAction::Relayed => remote.delivery_report_enabled,
        })
    }
}

/// Whether a recipient with these `NOTIFY=` values asked for failure notices
/// (RFC 3461: none given, or an unknown recipient, means failures).
pub fn wants_failure_notice(notify: Option<&[DsnNotify]>) -> bool {
    notify.is_none_or(|notify| notify.is_empty() || notify.contains(&DsnNotify::Failure))
}

/// Whether a recipient with these `NOTIFY=` values asked for a success
/// notice (RFC 3461 §4.1: `NOTIFY=SUCCESS`).
pub fn wants_success_notice(notify: Option<&[DsnNotify]>) -> bool {
    notify.is_some_and(|notify| notify.contains(&DsnNotify::Success))
}

/// Whether a recipient with these `NOTIFY=` values asked for delay notices:
/// `NOTIFY=DELAY`, or no `NOTIFY` at all (RFC 3461 §4.1 leaves that to the
/// MTA; the router uses `FAILURE,DELAY`, spec R-05).
pub fn wants_delay_notice(notify: Option<&[DsnNotify]>) -> bool {
    notify.is_none_or(|notify| notify.is_empty() || notify.contains(&DsnNotify::Delay))
}

/// The `Action` a delivery status notification reports (RFC 3464 §2.3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsnAction {
    /// The message could not be delivered (an NDR).
    Failed,
    /// Delivery is delayed; the router keeps trying (`NOTIFY=DELAY`).
    Delayed,
    /// Delivered to the recipient's mailbox (`NOTIFY=SUCCESS`).
    Delivered,
    /// Handed to a next hop that does not offer DSN, so no further
    /// notification will come (`NOTIFY=SUCCESS`, RFC 3461 §4.2).
    Relayed,
}

impl DsnAction {
    /// The `Action` field's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Failed => "failed",
            Self::Delayed => "delayed",
            Self::Delivered => "delivered",
            Self::Relayed => "relayed",
        }
    }

    /// Prefix of the notification's subject.
    fn subject(self) -> &'static str {
        match self {
            Self::Failed => "Undeliverable",
            Self::Delayed => "Delivery delayed",
            Self::Delivered => "Delivered",
            Self::Relayed => "Relayed",
        }
    }

    /// First line of the human part, in EOP's words.
    fn headline(self) -> &'static str {
        match self {
            Self::Failed => "Delivery has failed to these recipients or groups:",
            Self::Delayed => "Delivery is delayed to these recipients or groups:",
            Self::Delivered => "Your message has been delivered to the following recipients:",
            Self::Relayed => {
                "Delivery to these recipients or groups is complete, but no delivery notification was sent by the destination server:"
            }
        }
    }
}

/// The user-facing explanation for an enhanced status code (spec 13.1, 13.3).
fn explanation(enhanced: &str) -> &'static str {
    match enhanced {
        "4.4.7" | "5.4.300" => {
            "The server has tried to deliver this message, without success, and has stopped trying. Please try sending this message again. If the problem continues, contact your email admin."
        }
        "5.1.1" | "5.1.10" => {
            "The email address you entered couldn't be found. Please check the recipient's email address and try to resend the message. If the problem continues, contact your email admin."
        }
        "5.4.6" | "5.4.14" => {
            "A routing loop was detected: the message went back and forth between servers. Contact your email admin."
        }
        "5.4.1" | "5.4.4" | "5.1.10.nomx" => {
            "The recipient's domain couldn't be reached: there is no way to deliver mail to it. Check the address and contact your email admin."
        }
        code if code.starts_with("5.7") => {
            "Your message wasn't delivered because the recipient's email provider rejected it, or a policy of the organisation doesn't allow it."
        }
        _ => "Your message couldn't be delivered to the recipient.",
    }
}

/// The header section of `content` (up to the empty line), CRLF-terminated.
fn header_section(content: &[u8]) -> &[u8] {
    match memchr::memmem::find(content, b"\r\n\r\n") {
        Some(end) => &content[..end + 2],
        None => content,
    }
}

/// What an NDR reports.
#[derive(Debug)]
pub struct Report<'a> {
    /// The original sender (the NDR's recipient).
    pub to: &'a str,
    /// The original message's `Subject`.
    pub subject: Option<&'a str>,
    /// `ENVID` of the original transaction.
    pub envid: Option<&'a str>,
    /// When the original arrived.
    pub arrival: DateTime<Utc>,
    /// Failed recipients.
    pub recipients: &'a [FailedRecipient],
    /// The original content.
    pub original: &'a [u8],
    /// `RET=FULL`: include the whole original, else its headers.
    pub full: bool,
    /// What is reported for every recipient.
    pub action: DsnAction,
}

/// Renders the NDR message (CRLF line ends) with the given `Message-ID` local part.
pub fn render(policy: &NdrPolicy, report: &Report<'_>, id: &str, now: DateTime<Utc>) -> Vec<u8> {
    let boundary = format!("ndr-{id}");
    let host = &policy.reporting_mta;
    let subject: String = report.subject.unwrap_or("").chars().filter(|c| !c.is_control()).take(200).collect();
    let mut out = String::new();
    out.push_str(&format!("From: Mail Delivery System <{}>\r\n", policy.postmaster));
    out.push_str(&format!("To: <{}>\r\n", report.to));
    out.push_str(&format!("Subject: {}: {subject}\r\n", report.action.subject()));
    out.push_str(&format!("Date: {}\r\n", now.to_rfc2822()));
    out.push_str(&format!("Message-ID: <{id}@{host}>\r\n"));
    out.push_str("Auto-Submitted: auto-replied\r\n");
    out.push_str("MIME-Version: 1.0\r\n");
    out.push_str(&format!(
        "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\r\n"
    ));
    out.push_str("This is a delivery status notification in MIME format.\r\n\r\n");
    // Human part (spec 13.1, the "older layout" that mail clients show as text).
    out.push_str(&format!("--{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"));
    out.push_str(report.action.headline());
    out.push_str("\r\n\r\n");
    for recipient in report.recipients {
        match report.action {
            DsnAction::Failed => {
                let enhanced = recipient.reply.enhanced.as_deref().unwrap_or("5.0.0");
                out.push_str(&format!("{}\r\n{}\r\n\r\n", recipient.address, explanation(enhanced)));
            }
            DsnAction::Delayed => out.push_str(&format!(
                "{}\r\nThe server will keep trying to deliver this message; you don't need to send it again.\r\n\r\n",
                recipient.address
            )),
            DsnAction::Delivered | DsnAction::Relayed => out.push_str(&format!("{}\r\n\r\n", recipient.address)),
        }
    }
    out.push_str("Diagnostic information for administrators:\r\n\r\n");
    out.push_str(&format!("Generating server: {host}\r\n\r\n"));
    for recipient in report.recipients {
        let enhanced = recipient.reply.enhanced.as_deref().unwrap_or("5.0.0");
        let remote = recipient.remote_mta.as_deref().unwrap_or(host);
        out.push_str(&format!(
            "{}\r\n{remote}\r\n#{enhanced} smtp;{} #SMTP#\r\n\r\n",
            recipient.address, recipient.reply
        ));
    }
    // Machine-readable part (RFC 3464 §2).
    out.push_str(&format!("--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"));
    out.push_str(&format!("Reporting-MTA: dns;{host}\r\n"));
    if let Some(envid) = report.envid {
        out.push_str(&format!("Original-Envelope-Id: {envid}\r\n"));
    }
    out.push_str(&format!("Arrival-Date: {}\r\n", report.arrival.to_rfc2822()));
    for recipient in report.recipients {
        let status = recipient.reply.enhanced.as_deref().unwrap_or("5.0.0");
        out.push_str("\r\n");
        out.push_str(&format!("Final-Recipient: rfc822;{}\r\n", recipient.address));
        if let Some(orcpt) = &recipient.orcpt {
            out.push_str(&format!("Original-Recipient: {orcpt}\r\n"));
        }
        out.push_str(&format!("Action: {}\r\nStatus: {status}\r\n", report.action.as_str()));
        if let Some(remote) = &recipient.remote_mta {
            out.push_str(&format!("Remote-MTA: dns;{remote}\r\n"));
        }
        out.push_str(&format!("Diagnostic-Code: smtp;{}\r\n", recipient.reply));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if report.full {
        bytes.extend_from_slice(format!("--{boundary}\r\nContent-Type: message/rfc822\r\n\r\n").as_bytes());
        bytes.extend_from_slice(report.original);
    } else {
        bytes.extend_from_slice(format!("--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n").as_bytes());
        bytes.extend_from_slice(header_section(report.original));
    }
    if !bytes.ends_with(b"\r\n") {
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    bytes
}

/// Errors while submitting an NDR (temporary: the caller retries).
#[derive(Debug, thiserror::Error)]
pub enum NdrError {
    /// The content or the event could not be appended.
    #[error("storing the NDR: {0}")]
    Store(#[from] content::ContentError),
    /// The original content could not be read.
    #[error("loading the original message: {0}")]
    Original(content::ContentError),
}

/// The message an NDR reports on.
#[derive(Debug, Clone)]
pub struct Original<'a> {
    /// Its message id.
    pub message_id: &'a str,
    /// Its envelope sender (the NDR's recipient).
    pub mail_from: &'a str,
    /// Its `ENVID`.
    pub envid: Option<&'a str>,
    /// Its `RET=FULL`.
    pub full: bool,
    /// When it arrived.
    pub received_at: DateTime<Utc>,
    /// Its content.
    pub content: &'a ContentRef,
    /// The trace context of the stage that failed it: the NDR's own trace
    /// continues from there (see `crate::telemetry`).
    pub trace: Option<TraceContext>,
}

impl<'a> Original<'a> {
    /// From the `MessageReceived` of message `message_id`.
    pub fn received(message_id: &'a str, received: &'a MessageReceived) -> Self {
        Self {
            message_id,
            mail_from: &received.envelope.mail_from,
            envid: received.envelope.dsn_envid.as_deref(),
            full: received.envelope.dsn_return == Some(DsnReturn::Full),
            received_at: received.received_at,
            content: &received.content,
            trace: None,
        }
    }

    /// From a `Queued` copy of message `message_id`.
    pub fn queued(message_id: &'a str, queued: &'a mailflow_events::delivery::Queued) -> Self {
        Self {
            message_id,
            mail_from: &queued.mail_from,
            envid: queued.dsn_envid.as_deref(),
            full: queued.dsn_return == Some(DsnReturn::Full),
            received_at: queued.received_at,
            content: &queued.content,
            trace: None,
        }
    }

    /// The same original, reported on from the stage whose context is `trace`.
    pub fn in_trace(self, trace: Option<TraceContext>) -> Self {
        Self { trace, ..self }
    }
}

/// Builds the NDR for `recipients` of `original` and appends it as a new
/// message (its `MessageReceived` in the trace `original.trace`); returns its
/// message id, or `None` when no NDR is due (null sender, remote domain with
/// NDRs disabled). The caller leaves out recipients whose `NOTIFY` excludes
/// failures ([`wants_failure_notice`]).
pub async fn submit(
    log: &dyn EventLog,
    policy: &NdrPolicy,
    producer: &str,
    original: &Original<'_>,
    recipients: &[FailedRecipient],
    action: DsnAction,
    now: DateTime<Utc>,
) -> Result<Option<String>, NdrError> {
    let sender = original.mail_from;
    if recipients.is_empty() || !policy.notifies(sender, action) {
        return Ok(None);
    }
    let content = content::load(log, original.message_id, original.content).await.map_err(NdrError::Original)?;
    let subject =
        mail_parser::MessageParser::default().parse_headers(&content).and_then(|m| m.subject().map(str::to_string));
    let id = uuid::Uuid::now_v7().simple().to_string();
    let report = Report {
        to: sender,
        subject: subject.as_deref(),
        envid: original.envid,
        arrival: original.received_at,
        recipients,
        original: &content,
        full: original.full,
        action,
    };
    let ndr = render(policy, &report, &id, now);
    let reference = content::store(log, &id, producer, &ndr, policy.content_encoding).await?;
    let event = ReceivedEvent::MessageReceived(MessageReceived {
        session: SmtpSession {
            session_id: uuid::Uuid::now_v7(),
            listener: SYSTEM_LISTENER.to_string(),
            client_ip: "127.0.0.1".to_string(),
            client_port: 0,
            client_hostname: Some(policy.reporting_mta.clone()),
            server_ip: None,
            helo: Some(policy.reporting_mta.clone()),
            tls: None,
            authenticated_as: Some(policy.postmaster.clone()),
        },
        envelope: SmtpEnvelope {
            mail_from: String::new(),
            dsn_return: None,
            dsn_envid: None,
            body: Default::default(),
            smtputf8: false,
            declared_size: None,
        },
        recipients: vec![Recipient { address: sender.to_string(), notify: vec![], orcpt: None, accepted_domain: None }],
        connector: None,
        directionality: Directionality::Originating,
        content: reference,
        received_at: now,
        internet_message_id: Some(format!("<{id}@{}>", policy.reporting_mta)),
        subject: Some(format!("{}: {}", action.subject(), subject.as_deref().unwrap_or(""))),
        header_from: Some(policy.postmaster.clone()),
        // NDRs follow `NDREnabled`, not the automatic-reply setting.
        auto_submitted: None,
        inline_checks: None,
    });
    let envelope = Envelope::new(&id, producer, now, event).with_trace_context(original.trace.clone());
    log.append(topic::RECEIVED, id.as_bytes(), &envelope.to_json()).await.map_err(content::ContentError::from)?;
    Ok(Some(id))
}

/// [`submit`], retried every 500 ms while the log refuses it, so that the
/// failure event that follows can name the NDR; `None` when no NDR is due or
/// the original content cannot be read (then none can be built; logged).
/// Generating it is an `ndr` span, a child of `original.trace`.
pub async fn submit_until_stored(
    log: &dyn EventLog,
    policy: &NdrPolicy,
    producer: &str,
    original: &Original<'_>,
    recipients: &[FailedRecipient],
) -> Option<String> {
    notify_until_stored(log, policy, producer, original, recipients, DsnAction::Failed).await
}

/// Like [`submit_until_stored`], for any [`DsnAction`]: the NDR, or a delay
/// or success notification that recipients' `NOTIFY` asked for.
pub async fn notify_until_stored(
    log: &dyn EventLog,
    policy: &NdrPolicy,
    producer: &str,
    original: &Original<'_>,
    recipients: &[FailedRecipient],
    action: DsnAction,
) -> Option<String> {
    if recipients.is_empty() || !policy.notifies(original.mail_from, action) {
        return None;
    }
    let stage = Stage::start(telemetry::ndr_span(original.message_id), original.trace.as_ref());
    let original = original.clone().in_trace(stage.context());
    let submitted =
        submit_retrying(log, policy, producer, &original, recipients, action).instrument(stage.span().clone()).await;
    if let Some(id) = &submitted {
        stage.span().record("mailflow.ndr_message_id", id.as_str());
    }
    submitted
}

async fn submit_retrying(
    log: &dyn EventLog,
    policy: &NdrPolicy,
    producer: &str,
    original: &Original<'_>,
    recipients: &[FailedRecipient],
    action: DsnAction,
) -> Option<String> {
    loop {
        match submit(log, policy, producer, original, recipients, action, Utc::now()).await {
            Ok(id) => return id,
            Err(NdrError::Original(err)) => {
                tracing::error!(error = %err, message_id = original.message_id, "original content unreadable; no NDR");
                return None;
            }
            Err(err) => {
                tracing::warn!(error = %err, message_id = original.message_id, "NDR not stored yet; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use mailflow_events::delivery::QueuedRecipient;

    use super::*;

    fn policy(config: &str) -> NdrPolicy {
        let config: Config = toml::from_str(config).expect("parses");
        let accepted = std::sync::Arc::new(crate::policy::InboundPolicy::new(&config));
        NdrPolicy::new(&config, accepted)
    }

    const CONFIG: &str = "[server]\nhostname = \"mx.contoso.com\"\n[[accepted_domains]]\nname = \"contoso.com\"\ndefault = true\n[[remote_domains]]\nname = \"quiet.example\"\nndr_enabled = false\n";

    #[test]
    fn the_postmaster_defaults_to_the_default_accepted_domain_and_can_be_set() {
        // Spec 13.9.
        assert_eq!(policy(CONFIG).postmaster, "postmaster@contoso.com");
        let set = format!("{CONFIG}[transport]\npostmaster = \"bounces@contoso.com\"\n");
        assert_eq!(policy(&set).postmaster, "bounces@contoso.com");
    }

    #[test]
    fn no_ndr_to_the_null_sender_nor_to_a_remote_domain_that_disables_them() {
        let policy = policy(CONFIG);
        assert!(!policy.sends_to(""), "an NDR is never sent to <>");
        assert!(!policy.sends_to("a@quiet.example"), "spec 13.5");
        assert!(policy.sends_to("a@loud.example"));
        assert!(policy.sends_to("anna@contoso.com"));
    }

    #[test]
    fn notify_never_or_success_only_suppresses_the_failure_notice() {
        let recipient = |notify: Vec<DsnNotify>| QueuedRecipient { address: "x@y.z".into(), notify, orcpt: None };
        assert!(wants_failure_notice(Some(&recipient(vec![]).notify)));
        assert!(wants_failure_notice(Some(&recipient(vec![DsnNotify::Failure, DsnNotify::Delay]).notify)));
        assert!(!wants_failure_notice(Some(&recipient(vec![DsnNotify::Never]).notify)));
        assert!(!wants_failure_notice(Some(&recipient(vec![DsnNotify::Success]).notify)));
        assert!(wants_failure_notice(None));
    }

    #[test]
    fn the_report_is_a_parseable_rfc_3464_delivery_status() {
        let policy = policy(CONFIG);
        let original =
            b"From: anna@contoso.com\r\nSubject: Hello\r\nMessage-ID: <1@contoso.com>\r\n\r\nsecret body\r\n";
        let failed = [FailedRecipient {
            address: "bob@fabrikam.example".into(),
            orcpt: Some("rfc822;bob@fabrikam.example".into()),
            reply: SmtpReply { code: 550, enhanced: Some("5.1.1".into()), text: "User unknown".into() },
            remote_mta: Some("mx.fabrikam.example".into()),
        }];
        let report = Report {
            to: "anna@contoso.com",
            subject: Some("Hello"),
            envid: Some("ENV1"),
            arrival: Utc::now(),
            recipients: &failed,
            original,
            full: false,
            action: DsnAction::Failed,
        };
        let ndr = render(&policy, &report, "abc", Utc::now());
        let parsed = mail_parser::MessageParser::default().parse(&ndr).expect("the NDR parses");
        assert_eq!(parsed.subject(), Some("Undeliverable: Hello"));
        assert_eq!(parsed.from().and_then(|f| f.first()).and_then(|a| a.address()), Some("postmaster@contoso.com"));
        let text = String::from_utf8_lossy(&ndr);
        assert!(text.contains("Content-Type: multipart/report; report-type=delivery-status"), "{text}");
        for line in [
            "Reporting-MTA: dns;mx.contoso.com",
            "Original-Envelope-Id: ENV1",
            "Final-Recipient: rfc822;bob@fabrikam.example",
            "Action: failed",
            "Status: 5.1.1",
            "Remote-MTA: dns;mx.fabrikam.example",
            "Diagnostic-Code: smtp;550 5.1.1 User unknown",
            "Generating server: mx.contoso.com",
            "Subject: Hello",
        ] {
            assert!(text.contains(line), "missing `{line}` in\n{text}");
        }
        assert!(!text.contains("secret body"), "RET=HDRS (the default) carries the headers only");
        assert_eq!(parsed.parts.len(), 4, "root, human part, delivery-status, headers");
        let full = render(&policy, &Report { full: true, ..report }, "abc", Utc::now());
        assert!(String::from_utf8_lossy(&full).contains("secret body"), "RET=FULL carries the message");
    }

    #[test]
    fn success_and_delay_notices_say_what_happened_and_follow_delivery_report_enabled() {
        // RFC 3464 §2.3.3 actions; spec 14.2 DeliveryReportEnabled, 13.5 NDREnabled.
        let policy = policy(
            "[[accepted_domains]]\nname = \"contoso.com\"\ndefault = true\n\
             [[remote_domains]]\nname = \"quiet.example\"\ndelivery_report_enabled = false\n",
        );
        assert!(policy.notifies("a@quiet.example", DsnAction::Failed), "NDRs stay on");
        assert!(!policy.notifies("a@quiet.example", DsnAction::Delivered));
        assert!(!policy.notifies("a@quiet.example", DsnAction::Delayed));
        assert!(policy.notifies("a@loud.example", DsnAction::Relayed));
        assert!(!policy.notifies("", DsnAction::Delivered), "never to <>");
        let recipients = [FailedRecipient {
            address: "bob@fabrikam.example".into(),
            orcpt: None,
            reply: SmtpReply::new(250, "2.0.0", "OK queued as 12345"),
            remote_mta: Some("mx.fabrikam.example".into()),
        }];
        for (action, subject, field) in [
            (DsnAction::Delivered, "Subject: Delivered: Hello", "Action: delivered"),
            (DsnAction::Relayed, "Subject: Relayed: Hello", "Action: relayed"),
            (DsnAction::Delayed, "Subject: Delivery delayed: Hello", "Action: delayed"),
        ] {
            let report = Report {
                to: "anna@contoso.com",
                subject: Some("Hello"),
                envid: None,
                arrival: Utc::now(),
                recipients: &recipients,
                original: b"Subject: Hello\r\n\r\nbody\r\n",
                full: false,
                action,
            };
            let text = String::from_utf8(render(&policy, &report, "n1", Utc::now())).expect("ascii");
            assert!(text.contains(subject), "{text}");
            assert!(text.contains(field), "{text}");
            assert!(text.contains("Final-Recipient: rfc822;bob@fabrikam.example"), "{text}");
            assert!(text.contains(action.headline()), "{text}");
            assert!(!text.contains("Action: failed"), "{text}");
        }
        assert!(wants_success_notice(Some(&[DsnNotify::Success, DsnNotify::Failure])));
        assert!(!wants_success_notice(Some(&[DsnNotify::Failure])));
        assert!(!wants_success_notice(None), "RFC 3461: no NOTIFY means failures (and delays) only");
    }
}
