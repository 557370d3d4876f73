//! Read-only views of the delivery queues (`mailflow queue`, `postqueue -p`).

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{AdminState, error};
use crate::delivery::actor::PartitionView;
use crate::delivery::state::{DestinationState, PartitionState, QueuedMessage};

pub(super) fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/api/v1/queues", web::get().to(queues))
        .route("/api/v1/queues/{key}", web::get().to(queue))
        .route("/api/v1/state", web::get().to(state))
        .route("/api/v1/messages/{id}", web::get().to(message));
}

/// One destination's line in `mailflow queue`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueSummary {
    /// Destination key, e.g. `internet:example.com`.
    pub key: String,
    /// Partition of `mailflow.delivery` holding it.
    pub partition: u32,
    /// `active`, `retry` (unreachable, waiting for the next probe) or `suspended`.
    pub state: String,
    /// Messages queued.
    pub depth: usize,
    /// Receipt time of the oldest queued message.
    pub oldest_received_at: Option<DateTime<Utc>>,
    /// The last temporary error of the destination, or of its first deferred message.
    pub last_error: Option<String>,
    /// When the next attempt is due (`None`: now, when active).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Consecutive destination-level failures.
    pub attempts: u32,
}

impl QueueSummary {
    /// The summary of one destination's state.
    pub fn of(key: &str, partition: u32, state: &DestinationState) -> Self {
        let first_deferred = state.queue.iter().find(|m| m.last_error.is_some());
        Self {
            key: key.to_string(),
            partition,
            state: if state.suspended {
                "suspended"
            } else if state.retry.is_some() {
                "retry"
            } else {
                "active"
            }
            .to_string(),
            depth: state.queue.len(),
            oldest_received_at: state.queue.front().map(|m| m.received_at),
            last_error: state
                .retry
                .as_ref()
                .map(|r| r.last_error.to_string())
                .or_else(|| first_deferred.and_then(|m| m.last_error.as_deref().map(str::to_string))),
            next_attempt_at: state
                .retry
                .as_ref()
                .map(|r| r.next_attempt_at)
                .or_else(|| state.queue.iter().filter_map(|m| m.next_attempt_at).min()),
            attempts: state.retry.as_ref().map_or(0, |r| r.attempts),
        }
    }
}

/// Every destination of `views`, by key.
pub fn summaries(views: &[PartitionView<'_>]) -> Vec<QueueSummary> {
    let mut all: Vec<QueueSummary> = views
        .iter()
        .flat_map(|v| v.state.destinations.iter().map(|(key, state)| QueueSummary::of(key, v.partition, state)))
        .collect();
    all.sort_by(|a, b| a.key.cmp(&b.key));
    all
}

/// One destination with its messages in delivery order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueDetail {
    /// The summary line.
    #[serde(flatten)]
    pub summary: QueueSummary,
    /// Messages in the order they will be delivered.
    pub messages: Vec<QueuedMessage>,
}

/// One owned partition's folded state (`GET /api/v1/state`).
#[derive(Debug, Clone, Serialize)]
pub struct PartitionSnapshot {
    /// Partition number.
    pub partition: u32,
    /// Whether it is still replaying.
    pub replaying: bool,
    /// `next_offset` of the latest snapshot written or loaded (0: none).
    pub snapshot_at: u64,
    /// The fold.
    pub state: PartitionState,
}

/// Where one message waits.
#[derive(Debug, Clone, Serialize)]
pub struct MessagePlace {
    /// Destination key.
    pub destination: String,
    /// Partition.
    pub partition: u32,
    /// Its place in the queue, from 0 (the next to be delivered).
    pub position: usize,
    /// Its queue entry.
    pub message: QueuedMessage,
}

fn no_delivery() -> HttpResponse {
    error(StatusCode::NOT_FOUND, "this process runs no delivery role, so it has no queues (see --roles)")
}

async fn queues(state: web::Data<AdminState>) -> HttpResponse {
    let Some(delivery) = &state.delivery else { return no_delivery() };
    match delivery.ask(summaries).await {
        Some(all) => HttpResponse::Ok().json(all),
        None => error(StatusCode::SERVICE_UNAVAILABLE, "the delivery role has stopped"),
    }
}

async fn queue(state: web::Data<AdminState>, key: web::Path<String>) -> HttpResponse {
    let Some(delivery) = &state.delivery else { return no_delivery() };
    let key = key.into_inner().to_ascii_lowercase();
    let wanted = key.clone();
    let found = delivery
        .ask(move |views| {
            views.iter().find_map(|v| {
                v.state.destinations.get(&wanted).map(|d| QueueDetail {
                    summary: QueueSummary::of(&wanted, v.partition, d),
                    messages: d.queue.iter().cloned().collect(),
                })
            })
        })
        .await;
    match found {
        Some(Some(detail)) => HttpResponse::Ok().json(detail),
        Some(None) => error(StatusCode::NOT_FOUND, format!("no queue for destination {key} in this process")),
        None => error(StatusCode::SERVICE_UNAVAILABLE, "the delivery role has stopped"),
    }
}

async fn state(state: web::Data<AdminState>) -> HttpResponse {
    let Some(delivery) = &state.delivery else { return no_delivery() };
    let all = delivery
        .ask(|views| {
            views
                .iter()
                .map(|v| PartitionSnapshot {
                    partition: v.partition,
                    replaying: v.replaying,
                    snapshot_at: v.snapshot_at,
                    state: v.state.clone(),
                })
                .collect::<Vec<_>>()
        })
        .await;
    match all {
        Some(all) => HttpResponse::Ok().json(all),
        None => error(StatusCode::SERVICE_UNAVAILABLE, "the delivery role has stopped"),
    }
}

/// Every queue entry of message `id`, in any destination of `views`.
pub fn places(views: &[PartitionView<'_>], id: &str) -> Vec<MessagePlace> {
    let mut found = Vec::new();
    for view in views {
        for (key, destination) in &view.state.destinations {
            if let Some(position) = destination.queue.iter().position(|m| &*m.message_id == id) {
                found.push(MessagePlace {
                    destination: key.clone(),
                    partition: view.partition,
                    position,
                    message: destination.queue[position].clone(),
                });
            }
        }
    }
    found
}

async fn message(state: web::Data<AdminState>, id: web::Path<String>) -> HttpResponse {
    let Some(delivery) = &state.delivery else { return no_delivery() };
    let id = id.into_inner();
    let wanted = id.clone();
    match delivery.ask(move |views| places(views, &wanted)).await {
        Some(found) => HttpResponse::Ok().json(serde_json::json!({ "message_id": id, "queued": found })),
        None => error(StatusCode::SERVICE_UNAVAILABLE, "the delivery role has stopped"),
    }
}
