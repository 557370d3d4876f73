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
    /// Folded from the log by this process because another process delivers
    /// it (Kafka; see `super::cluster`): as of the last event read.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub from_log: bool,
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
            from_log: false,
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
    /// Folded from the log, as in [`QueueSummary::from_log`].
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub from_log: bool,
}

fn no_delivery() -> HttpResponse {
    error(StatusCode::NOT_FOUND, "this process runs no delivery role, so it has no queues (see --roles)")
}

fn stopped() -> HttpResponse {
    error(StatusCode::SERVICE_UNAVAILABLE, "the delivery role has stopped")
}

/// Asks the delivery role, when this process runs one, for `f` of its owned
/// partitions and their numbers. `Err`: the role has stopped.
async fn ask_live<T: Default + Send + 'static>(
    state: &AdminState,
    f: impl FnOnce(&[PartitionView<'_>]) -> T + Send + 'static,
) -> Result<(T, Vec<u32>), HttpResponse> {
    let Some(delivery) = &state.delivery else { return Ok((T::default(), Vec::new())) };
    delivery.ask(move |views| (f(views), views.iter().map(|v| v.partition).collect())).await.ok_or_else(stopped)
}

/// Before a view: brings the fold of the partitions other processes own up to
/// the log's end (see `super::cluster`). `Err`: this process has no queues to
/// show (no delivery role and no fold), or the log could not be read.
async fn catch_up(state: &AdminState) -> Result<(), HttpResponse> {
    if state.delivery.is_none() && state.cluster.is_none() {
        return Err(no_delivery());
    }
    let Some(cluster) = &state.cluster else { return Ok(()) };
    cluster.catch_up(state.log.as_ref()).await.map(|_| ()).map_err(|err| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("reading mailflow.delivery for the other processes' queues: {err}"),
        )
    })
}

/// The partitions not owned here, folded from the log (see `super::cluster`),
/// as views.
fn from_log<T>(state: &AdminState, owned: &[u32], f: impl FnOnce(&[PartitionView<'_>]) -> T) -> Option<T> {
    let cluster = state.cluster.as_ref()?;
    Some(cluster.with(owned, |others| {
        let views: Vec<PartitionView<'_>> = others
            .into_iter()
            .map(|(partition, state)| PartitionView {
                partition,
                state,
                replaying: false,
                snapshot_at: 0,
                replay_remaining: 0,
            })
            .collect();
        f(&views)
    }))
}

async fn queues(state: web::Data<AdminState>) -> HttpResponse {
    if let Err(response) = catch_up(&state).await {
        return response;
    }
    let (mut all, owned) = match ask_live(&state, summaries).await {
        Ok(live) => live,
        Err(response) => return response,
    };
    let mut others = from_log(&state, &owned, summaries).unwrap_or_default();
    others.iter_mut().for_each(|s| s.from_log = true);
    all.extend(others);
    all.sort_by(|a, b| a.key.cmp(&b.key));
    HttpResponse::Ok().json(all)
}

/// One destination's queue among `views`.
fn detail_in(views: &[PartitionView<'_>], key: &str) -> Option<QueueDetail> {
    views.iter().find_map(|v| {
        v.state.destinations.get(key).map(|d| QueueDetail {
            summary: QueueSummary::of(key, v.partition, d),
            messages: d.queue.iter().cloned().collect(),
        })
    })
}

async fn queue(state: web::Data<AdminState>, key: web::Path<String>) -> HttpResponse {
    if let Err(response) = catch_up(&state).await {
        return response;
    }
    let key = key.into_inner().to_ascii_lowercase();
    let wanted = key.clone();
    let (live, owned) = match ask_live(&state, move |views| detail_in(views, &wanted)).await {
        Ok(live) => live,
        Err(response) => return response,
    };
    let found = live.or_else(|| {
        from_log(&state, &owned, |views| detail_in(views, &key)).flatten().map(|mut detail| {
            detail.summary.from_log = true;
            detail
        })
    });
    match found {
        Some(detail) => HttpResponse::Ok().json(detail),
        None => error(StatusCode::NOT_FOUND, format!("no queue for destination {key}")),
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
        None => stopped(),
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
                    from_log: false,
                });
            }
        }
    }
    found
}

async fn message(state: web::Data<AdminState>, id: web::Path<String>) -> HttpResponse {
    if let Err(response) = catch_up(&state).await {
        return response;
    }
    let id = id.into_inner();
    let wanted = id.clone();
    let (mut found, owned) = match ask_live(&state, move |views| places(views, &wanted)).await {
        Ok(live) => live,
        Err(response) => return response,
    };
    let mut others = from_log(&state, &owned, |views| places(views, &id)).unwrap_or_default();
    others.iter_mut().for_each(|p| p.from_log = true);
    found.extend(others);
    HttpResponse::Ok().json(serde_json::json!({ "message_id": id, "queued": found }))
}
