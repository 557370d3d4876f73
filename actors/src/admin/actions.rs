//! Operator actions on the delivery queues (`mailflow queue retry|suspend|
//! resume|delete|bounce`, like `postqueue -f`/`postsuper`), each appended to
//! `mailflow.delivery` as an event in the destination's partition, so the
//! fold applies it and the log records who did what and why.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::Utc;
use mailflow_events::delivery::{
    DeliveryEvent, Destination, DestinationKind, OperatorAction, OperatorDeleted, Queued, Scope,
};
use mailflow_events::envelope::TaggedEvent as _;
use mailflow_events::received::SmtpReply;
use mailflow_events::{Envelope, topic};
use serde::Deserialize;

use super::{AdminState, error};
use crate::ndr::{self, FailedRecipient};

pub(super) fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/api/v1/queues/{key}/{action}", web::post().to(on_destination))
        .route("/api/v1/queues/{key}/messages/{id}/{action}", web::post().to(on_message));
}

/// Optional body of an action.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActionBody {
    /// Why, recorded in the event.
    pub reason: Option<String>,
    /// Who, recorded in the event (default `admin-api`).
    pub operator: Option<String>,
}

/// An operator action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Attempt now (`postqueue -i` / `postqueue -s`).
    Retry,
    /// Hold the destination's queue.
    Suspend,
    /// Release a suspended queue.
    Resume,
    /// Remove without notice (`postsuper -d`).
    Delete,
    /// Remove with an NDR to each sender (`Remove-Message -WithNDR`).
    Bounce,
}

impl Action {
    /// Parses an action name as in the URL.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "retry" => Self::Retry,
            "suspend" => Self::Suspend,
            "resume" => Self::Resume,
            "delete" => Self::Delete,
            "bounce" => Self::Bounce,
            _ => return None,
        })
    }
}

/// The reply bounced messages are reported with (Exchange's text).
pub fn bounce_reply() -> SmtpReply {
    SmtpReply::new(550, "4.3.2", "QUEUE.Admin; message deleted by administrative action")
}

/// The destination a queue key names: `kind:name`.
pub fn destination_of_key(key: &str) -> Option<Destination> {
    let (kind, name) = key.split_once(':')?;
    let kind = [
        DestinationKind::MailboxStore,
        DestinationKind::OnPremises,
        DestinationKind::Partner,
        DestinationKind::Internet,
        DestinationKind::SmartHost,
    ]
    .into_iter()
    .find(|k| k.as_str() == kind)?;
    (!name.is_empty()).then(|| Destination { kind, name: name.to_string(), next_hop: None })
}

/// The event an action appends.
pub fn event_for(action: Action, destination: Destination, scope: Scope, body: &ActionBody) -> DeliveryEvent {
    let operator = body.operator.clone().unwrap_or_else(|| "admin-api".to_string());
    let reason = body.reason.clone();
    let plain =
        OperatorAction { destination: destination.clone(), scope, operator: operator.clone(), reason: reason.clone() };
    match action {
        Action::Retry => DeliveryEvent::RetryRequested(plain),
        Action::Suspend => DeliveryEvent::Suspended(plain),
        Action::Resume => DeliveryEvent::Resumed(plain),
        Action::Delete | Action::Bounce => DeliveryEvent::Deleted(OperatorDeleted {
            destination,
            scope,
            operator,
            reason,
            with_ndr: action == Action::Bounce,
        }),
    }
}

pub(crate) fn parse_body(bytes: &[u8]) -> Result<ActionBody, String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(ActionBody::default());
    }
    serde_json::from_slice(bytes)
        .map_err(|err| format!("the request body must be {{\"reason\": …, \"operator\": …}}: {err}"))
}

/// A message of an owned queue: its id, partition, `Queued` offset and pending recipients.
type Owned = (String, u32, u64, Vec<String>);

async fn on_destination(
    state: web::Data<AdminState>,
    request: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> HttpResponse {
    let (key, action) = path.into_inner();
    act(&state, &request, &key.to_ascii_lowercase(), None, &action, &body).await
}

async fn on_message(
    state: web::Data<AdminState>,
    request: HttpRequest,
    path: web::Path<(String, String, String)>,
    body: web::Bytes,
) -> HttpResponse {
    let (key, id, action) = path.into_inner();
    act(&state, &request, &key.to_ascii_lowercase(), Some(id), &action, &body).await
}

async fn act(
    state: &AdminState,
    request: &HttpRequest,
    key: &str,
    message: Option<String>,
    action_name: &str,
    body: &[u8],
) -> HttpResponse {
    if let Some(refused) = state.refusal(request) {
        return refused;
    }
    let Some(action) = Action::parse(action_name) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("unknown action {action_name:?}; use retry, suspend, resume, delete or bounce"),
        );
    };
    if message.is_some() && matches!(action, Action::Suspend | Action::Resume) {
        return error(StatusCode::BAD_REQUEST, "suspend and resume apply to a whole destination, not one message");
    }
    let body = match parse_body(body) {
        Ok(body) => body,
        Err(problem) => return error(StatusCode::BAD_REQUEST, problem),
    };
    // What this process owns of the destination: its messages (for NDRs and
    // 404s), and whether its partition is this process's at all.
    let partition =
        state.log.partitions(topic::DELIVERY).map(|n| mailflow_events::log::partition_for(key.as_bytes(), n)).ok();
    let (owns_partition, owned) = match &state.delivery {
        Some(delivery) => {
            let wanted = key.to_string();
            delivery
                .ask(move |views| {
                    let owns = views.iter().any(|v| Some(v.partition) == partition);
                    let found = views.iter().find_map(|v| {
                        v.state.destinations.get(&wanted).map(|d| {
                            let messages: Vec<Owned> = d
                                .queue
                                .iter()
                                .map(|m| {
                                    let pending = m.pending.iter().map(|p| p.to_string()).collect();
                                    (m.message_id.to_string(), v.partition, m.queued_offset, pending)
                                })
                                .collect();
                            (d.destination.clone(), messages)
                        })
                    });
                    (owns, found)
                })
                .await
                .unwrap_or((false, None))
        }
        None => (false, None),
    };
    let destination = match (&owned, destination_of_key(key)) {
        (Some((destination, _)), _) => destination.clone(),
        (None, Some(destination)) => destination,
        (None, None) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("{key:?} is not a destination key (kind:name, e.g. internet:example.com)"),
            );
        }
    };
    let targets: Vec<Owned> = match (&owned, &message) {
        (Some((_, messages)), Some(id)) => {
            let found: Vec<Owned> = messages.iter().filter(|m| &m.0 == id).cloned().collect();
            if found.is_empty() {
                return error(StatusCode::NOT_FOUND, format!("message {id} is not queued for {key}"));
            }
            found
        }
        (Some((_, messages)), None) => messages.clone(),
        (None, Some(id)) if owns_partition => {
            return error(StatusCode::NOT_FOUND, format!("message {id} is not queued for {key}"));
        }
        (None, _) => Vec::new(),
    };
    if action == Action::Bounce && owned.is_none() {
        return error(
            StatusCode::CONFLICT,
            format!("{key} is not queued in this process; send bounce to the process that delivers it"),
        );
    }
    let mut ndrs = Vec::new();
    if action == Action::Bounce {
        for (id, partition, offset, pending) in &targets {
            let log = state.log.as_ref();
            let Some((queued, trace)) = crate::delivery::actor::queued_at(log, *partition, *offset).await else {
                continue;
            };
            if let Some(ndr) = bounce(state, id, &queued, trace, pending).await {
                ndrs.push(ndr);
            }
        }
    }
    let scope = if message.is_some() { Scope::Message } else { Scope::Destination };
    let event = event_for(action, destination, scope, &body);
    let type_name = event.tag();
    let envelope = Envelope::new(message.clone().unwrap_or_default(), &state.producer, Utc::now(), event);
    match state.log.append(topic::DELIVERY, key.as_bytes(), &envelope.to_json()).await {
        Ok(position) => {
            tracing::info!(destination = key, action = action_name, message = ?message, "operator action");
            HttpResponse::Ok().json(serde_json::json!({
                "event": type_name,
                "destination": key,
                "message_id": message,
                "partition": position.partition,
                "offset": position.offset,
                "ndrs": ndrs,
            }))
        }
        Err(err) => error(StatusCode::SERVICE_UNAVAILABLE, format!("the event log refused the action: {err}")),
    }
}

/// Sends the NDR of a bounced message to its sender (never to `<>`, as NOTIFY
/// asks), in the message's trace (`trace`, from its `Queued` event).
async fn bounce(
    state: &AdminState,
    message_id: &str,
    queued: &Queued,
    trace: Option<mailflow_events::TraceContext>,
    pending: &[String],
) -> Option<String> {
    let notify: Vec<FailedRecipient> = queued
        .recipients
        .iter()
        .filter(|r| pending.iter().any(|p| p.eq_ignore_ascii_case(&r.address)))
        .filter(|r| ndr::wants_failure_notice(Some(r.notify.as_slice())))
        .map(|r| FailedRecipient {
            address: r.address.clone(),
            orcpt: r.orcpt.clone(),
            reply: bounce_reply(),
            remote_mta: None,
        })
        .collect();
    let original = ndr::Original::queued(message_id, queued).in_trace(trace);
    ndr::submit_until_stored(state.log.as_ref(), &state.ndr, &state.producer, &original, &notify).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_keys_name_their_destination() {
        let destination = destination_of_key("internet:example.com").unwrap();
        assert_eq!(destination.kind, DestinationKind::Internet);
        assert_eq!(destination.key(), "internet:example.com");
        assert_eq!(destination_of_key("on_premises:hybrid").unwrap().kind, DestinationKind::OnPremises);
        assert!(destination_of_key("internet:").is_none());
        assert!(destination_of_key("mars:example.com").is_none());
        assert!(destination_of_key("example.com").is_none());
    }

    #[test]
    fn each_action_appends_its_event() {
        let destination = destination_of_key("partner:fabrikam").unwrap();
        let body = ActionBody { reason: Some("maintenance".into()), operator: Some("ops".into()) };
        match event_for(Action::Suspend, destination.clone(), Scope::Destination, &body) {
            DeliveryEvent::Suspended(a) => {
                assert_eq!((a.operator.as_str(), a.reason.as_deref()), ("ops", Some("maintenance")));
            }
            other => panic!("{other:?}"),
        }
        match event_for(Action::Bounce, destination.clone(), Scope::Message, &ActionBody::default()) {
            DeliveryEvent::Deleted(d) => assert!(d.with_ndr && d.scope == Scope::Message && d.operator == "admin-api"),
            other => panic!("{other:?}"),
        }
        match event_for(Action::Delete, destination, Scope::Destination, &ActionBody::default()) {
            DeliveryEvent::Deleted(d) => assert!(!d.with_ndr),
            other => panic!("{other:?}"),
        }
        assert_eq!(Action::parse("flush"), None);
    }

    #[test]
    fn a_bounce_is_reported_with_exchanges_admin_text() {
        let reply = bounce_reply();
        assert_eq!(reply.to_string(), "550 4.3.2 QUEUE.Admin; message deleted by administrative action");
    }

    #[test]
    fn bodies_are_optional_and_strict() {
        assert!(parse_body(b"").is_ok());
        assert_eq!(parse_body(br#"{"reason":"x"}"#).unwrap().reason.as_deref(), Some("x"));
        assert!(parse_body(br#"{"because":"x"}"#).is_err());
    }
}
