//! The quarantine (spec 9.3): a quarantined message is a `MessageQuarantined`
//! in `mailflow.verdicts` holding its verdict and content reference; releasing
//! it appends a `MessageReleased`, which the routing role delivers as if
//! filtering had let it through. Quarantined messages are listed by the
//! message trace (`status=quarantined`).

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::Utc;
use mailflow_events::log::EventLog;
use mailflow_events::verdicts::{MessageQuarantined, MessageReleased, VerdictEvent};
use mailflow_events::{Envelope, TraceContext, topic};
use serde::Serialize;

use super::actions::ActionBody;
use super::{AdminState, error};

pub(super) fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/api/v1/quarantine/{id}", web::get().to(show))
        .route("/api/v1/quarantine/{id}/release", web::post().to(release));
}

/// A message's quarantine record and whether it was released.
#[derive(Debug, Clone, Serialize)]
pub struct Held {
    /// Partition of `mailflow.verdicts` (keyed by message id).
    pub partition: u32,
    /// Offset of the `MessageQuarantined`.
    pub offset: u64,
    /// The record.
    pub quarantined: MessageQuarantined,
    /// Offset of the `MessageReleased`, once released.
    pub released_at_offset: Option<u64>,
    /// The record's trace context: a release continues the message's trace.
    #[serde(skip)]
    pub trace_context: Option<TraceContext>,
}

/// Finds message `id`'s latest quarantine record by reading its partition of
/// `mailflow.verdicts` (records of other messages are skipped by key, undecoded).
pub async fn find(log: &dyn EventLog, id: &str) -> anyhow::Result<Option<Held>> {
    let partition = mailflow_events::log::partition_for(id.as_bytes(), log.partitions(topic::VERDICTS)?);
    let mut held: Option<Held> = None;
    let mut offset = 0;
    loop {
        let records = log.read(topic::VERDICTS, partition, offset, 4096).await?;
        let Some(last) = records.last() else { break };
        offset = last.position.offset + 1;
        for record in records.iter().filter(|r| &r.key[..] == id.as_bytes()) {
            match Envelope::<VerdictEvent>::from_json(&record.value).map(|e| (e.event, e.trace_context)) {
                Ok((VerdictEvent::MessageQuarantined(quarantined), trace_context)) => {
                    let offset = record.position.offset;
                    held = Some(Held { partition, offset, quarantined, released_at_offset: None, trace_context });
                }
                Ok((VerdictEvent::MessageReleased(released), _)) => {
                    if let Some(held) = held.as_mut().filter(|h| h.offset == released.quarantined_offset) {
                        held.released_at_offset = Some(record.position.offset);
                    }
                }
                _ => {}
            }
        }
    }
    Ok(held)
}

async fn show(state: web::Data<AdminState>, id: web::Path<String>) -> HttpResponse {
    let id = id.into_inner();
    match find(state.log.as_ref(), &id).await {
        Ok(Some(held)) => HttpResponse::Ok().json(held),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("message {id} is not in quarantine")),
        Err(err) => error(StatusCode::SERVICE_UNAVAILABLE, format!("reading the quarantine: {err}")),
    }
}

async fn release(
    state: web::Data<AdminState>,
    request: HttpRequest,
    id: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    if let Some(refused) = state.refusal(&request) {
        return refused;
    }
    let body: ActionBody = match super::actions::parse_body(&body) {
        Ok(body) => body,
        Err(problem) => return error(StatusCode::BAD_REQUEST, problem),
    };
    let id = id.into_inner();
    let held = match find(state.log.as_ref(), &id).await {
        Ok(Some(held)) => held,
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("message {id} is not in quarantine")),
        Err(err) => return error(StatusCode::SERVICE_UNAVAILABLE, format!("reading the quarantine: {err}")),
    };
    if let Some(offset) = held.released_at_offset {
        return error(
            StatusCode::CONFLICT,
            format!("message {id} was already released (mailflow.verdicts offset {offset})"),
        );
    }
    if held.quarantined.expires_at <= Utc::now() {
        return error(StatusCode::GONE, format!("message {id} left the quarantine at {}", held.quarantined.expires_at));
    }
    let event = VerdictEvent::MessageReleased(MessageReleased {
        recipients: held.quarantined.recipients.clone(),
        quarantined_offset: held.offset,
        operator: body.operator.unwrap_or_else(|| "admin-api".to_string()),
        reason: body.reason,
    });
    let envelope = Envelope::new(&id, &state.producer, Utc::now(), event).with_trace_context(held.trace_context);
    match state.log.append(topic::VERDICTS, id.as_bytes(), &envelope.to_json()).await {
        Ok(position) => {
            tracing::info!(message_id = %id, "released from quarantine");
            HttpResponse::Ok().json(serde_json::json!({
                "event": "MessageReleased",
                "message_id": id,
                "recipients": held.quarantined.recipients,
                "partition": position.partition,
                "offset": position.offset,
            }))
        }
        Err(err) => error(StatusCode::SERVICE_UNAVAILABLE, format!("the event log refused the release: {err}")),
    }
}
