//! Durable acceptance: content chunks, then `MessageReceived`, both acknowledged
//! by the log before the session may answer `250`.

use chrono::Utc;
use mailflow_events::content::ContentEncoding;
use mailflow_events::log::{EventLog, LogError};
use mailflow_events::received::{MessageReceived, ReceivedEvent};
use mailflow_events::verdicts::Authentication;
use mailflow_events::{Envelope, TraceContext};
use mailflow_events::{content, topic};

use super::session::{Incoming, StoreOutcome};

/// Stores `incoming` durably, its `MessageReceived` starting the message's
/// trace with `trace`; the outcome decides the reply.
pub async fn store(
    log: &dyn EventLog,
    producer: &str,
    encoding: ContentEncoding,
    incoming: Incoming,
    inline_checks: Option<Authentication>,
    trace: Option<TraceContext>,
) -> StoreOutcome {
    let listener = crate::metrics::ListenerLabels { listener: incoming.session.listener.clone() };
    let message_id = incoming.id.clone();
    match try_store(log, producer, encoding, incoming, inline_checks, trace).await {
        Ok(()) => {
            tracing::info!(%message_id, listener = %listener.listener, "accepted");
            crate::metrics::metrics().accepted.get_or_create(&listener).inc();
            StoreOutcome::Stored
        }
        Err(err) => {
            tracing::error!(%message_id, error = %err, "could not store an incoming message; answering 4xx");
            match err {
                content::ContentError::Log(LogError::NoSpace(_)) => StoreOutcome::NoSpace,
                _ => StoreOutcome::Failed,
            }
        }
    }
}

async fn try_store(
    log: &dyn EventLog,
    producer: &str,
    encoding: ContentEncoding,
    incoming: Incoming,
    inline_checks: Option<Authentication>,
    trace: Option<TraceContext>,
) -> Result<(), content::ContentError> {
    let reference = content::store(log, &incoming.id, producer, &incoming.content, encoding).await?;
    let Summary { internet_message_id, subject, header_from, auto_submitted } = summary(&incoming.content);
    let event = ReceivedEvent::MessageReceived(MessageReceived {
        session: incoming.session,
        envelope: incoming.envelope,
        recipients: incoming.recipients,
        connector: incoming.connector,
        directionality: incoming.directionality,
        content: reference,
        received_at: Utc::now(),
        internet_message_id,
        subject,
        header_from,
        auto_submitted,
        inline_checks,
    });
    let envelope = Envelope::new(&incoming.id, producer, Utc::now(), event).with_trace_context(trace);
    log.append(topic::RECEIVED, incoming.id.as_bytes(), &envelope.to_json()).await?;
    Ok(())
}

/// Appends a refusal (RCPT or message) so that the message trace shows it.
/// A failure is logged, not answered: the refusal's reply does not depend on it.
pub async fn record(log: &dyn EventLog, producer: &str, key: &str, event: ReceivedEvent) {
    crate::metrics::refused(&event);
    let envelope = Envelope::new(key, producer, Utc::now(), event);
    if let Err(err) = log.append(topic::RECEIVED, key.as_bytes(), &envelope.to_json()).await {
        tracing::warn!(error = %err, "could not record a refusal");
    }
}

/// What the trace and routing need of the header, without loading content.
#[derive(Debug, Default)]
struct Summary {
    /// `Message-ID`, in angle brackets.
    internet_message_id: Option<String>,
    /// `Subject`, at most 256 characters.
    subject: Option<String>,
    /// Address of the first `From`.
    header_from: Option<String>,
    /// `Auto-Submitted` keyword, lower case, unless `no` (RFC 3834).
    auto_submitted: Option<String>,
}

fn summary(content: &[u8]) -> Summary {
    let Some(message) = mail_parser::MessageParser::default().parse_headers(content) else {
        return Summary::default();
    };
    let from = message.from().and_then(|from| from.first()).and_then(|addr| addr.address()).map(str::to_string);
    let auto_submitted = message
        .header_raw("Auto-Submitted")
        .and_then(|value| value.split(';').next())
        .map(|keyword| keyword.trim().to_ascii_lowercase())
        .filter(|keyword| !keyword.is_empty() && keyword != "no");
    Summary {
        internet_message_id: message.message_id().map(|id| format!("<{id}>")),
        subject: message.subject().map(|s| s.chars().take(256).collect()),
        header_from: from,
        auto_submitted,
    }
}

#[cfg(test)]
mod tests {
    use super::summary;

    #[test]
    fn the_summary_takes_the_auto_submitted_keyword_and_ignores_no() {
        // RFC 3834 §5: `Auto-Submitted: auto-replied` marks automatic replies
        // (spec 14.2 AutoReplyEnabled); `no` means a person sent it.
        let with = |value: &str| {
            let message =
                format!("From: a@contoso.com\r\nAuto-Submitted: {value}\r\nSubject: Away\r\n\r\nback soon\r\n");
            summary(message.as_bytes()).auto_submitted
        };
        assert_eq!(with("auto-replied").as_deref(), Some("auto-replied"));
        assert_eq!(with("Auto-Replied; owner-email=\"a@contoso.com\"").as_deref(), Some("auto-replied"));
        assert_eq!(with("auto-generated").as_deref(), Some("auto-generated"));
        assert_eq!(with("no"), None);
        let plain = summary(b"From: a@contoso.com\r\nSubject: hi\r\n\r\nbody\r\n");
        assert_eq!(plain.auto_submitted, None);
        assert_eq!(plain.subject.as_deref(), Some("hi"));
        assert_eq!(plain.header_from.as_deref(), Some("a@contoso.com"));
    }
}
