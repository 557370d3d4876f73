//! Durable acceptance: content chunks, then `MessageReceived`, both acknowledged
//! by the log before the session may answer `250`.

use chrono::Utc;
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
    incoming: Incoming,
    inline_checks: Option<Authentication>,
    trace: Option<TraceContext>,
) -> StoreOutcome {
    let listener = crate::metrics::ListenerLabels { listener: incoming.session.listener.clone() };
    let message_id = incoming.id.clone();
    match try_store(log, producer, incoming, inline_checks, trace).await {
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
    incoming: Incoming,
    inline_checks: Option<Authentication>,
    trace: Option<TraceContext>,
) -> Result<(), content::ContentError> {
    let reference = content::store(log, &incoming.id, producer, &incoming.content).await?;
    let (internet_message_id, subject, header_from) = summary(&incoming.content);
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

/// `Message-ID`, `Subject` and `From` of the header, for the trace without loading content.
fn summary(content: &[u8]) -> (Option<String>, Option<String>, Option<String>) {
    let Some(message) = mail_parser::MessageParser::default().parse_headers(content) else {
        return (None, None, None);
    };
    let from = message.from().and_then(|from| from.first()).and_then(|addr| addr.address()).map(str::to_string);
    (message.message_id().map(|id| format!("<{id}>")), message.subject().map(|s| s.chars().take(256).collect()), from)
}
