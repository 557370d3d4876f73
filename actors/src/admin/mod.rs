//! The admin HTTP API (actix-web): health, readiness, the delivery queues and
//! the operator's queue actions.
//!
//! Reads are answered from the live state of this process (the delivery
//! actor's folded partitions, asked through [`DeliveryHandle`]) and, on Kafka,
//! for the partitions other processes own, from this process's fold of the
//! log ([`cluster`]), so any process shows the whole deployment; every action
//! that changes something is appended to the log as an event, so it is
//! audited and replayed like everything else (spec 11, `mailflow queue`).
//! Requests that change state need `Authorization: Bearer <token>` with the
//! configured token; with no token configured they are refused.
//!
//! Endpoints (all JSON):
//! - `GET /metrics` — Prometheus metrics (see `crate::metrics`).
//! - `GET /healthz` — the process runs; `GET /readyz` — it has finished
//!   replaying and is not draining.
//! - `GET /api/v1/queues` — destinations with state, depth, oldest message,
//!   last error, next attempt; `GET /api/v1/queues/{key}` — one destination's
//!   messages in delivery order; `GET /api/v1/state` — the folded state of every
//!   owned partition (what `mailflow replay --verify` compares with).
//! - `GET /api/v1/messages/{id}` — where a message waits.
//! - `POST /api/v1/queues/{key}/{retry|suspend|resume|delete|bounce}` and
//!   `POST /api/v1/queues/{key}/messages/{id}/{retry|delete|bounce}`.
//! - `GET /api/v1/quarantine/{id}` and `POST /api/v1/quarantine/{id}/release`.
//! - `GET /api/v1/trace?...` and `GET /api/v1/trace/{message_id}` — message
//!   trace (spec 15, see [`trace`]).

pub mod actions;
pub mod client;
pub mod cluster;
pub mod quarantine;
pub mod trace;
pub mod views;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use mailflow_events::log::EventLog;
use serde::Deserialize;

use crate::delivery::actor::DeliveryHandle;
use crate::ndr::NdrPolicy;

/// `[admin]`: the admin HTTP API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Listen address (default `127.0.0.1:8025`, loopback only); `port 0` picks one.
    pub listen: Option<SocketAddr>,
    /// Bearer token required for requests that change state (default none:
    /// such requests are refused). Prefer `token_file` outside tests.
    pub token: Option<String>,
    /// File holding the token (e.g. a mounted Kubernetes Secret); trailing
    /// white space is ignored.
    pub token_file: Option<PathBuf>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self { listen: Some(SocketAddr::from(([127, 0, 0, 1], 8025))), token: None, token_file: None }
    }
}

impl AdminConfig {
    /// The configured token, read from `token_file` when given.
    pub fn token(&self) -> anyhow::Result<Option<String>> {
        if let Some(path) = &self.token_file {
            let text = std::fs::read_to_string(path)
                .map_err(|err| anyhow::anyhow!("reading admin.token_file {}: {err}", path.display()))?;
            return Ok(Some(text.trim_end().to_string()));
        }
        Ok(self.token.clone())
    }
}

/// What the handlers share.
#[derive(Debug)]
pub struct AdminState {
    /// The event log, for operator actions.
    pub log: Arc<dyn EventLog>,
    /// The delivery role of this process, when it runs one.
    pub delivery: Option<DeliveryHandle>,
    /// Every partition's queues folded from the log (Kafka), for the views of
    /// partitions other processes own.
    pub cluster: Option<cluster::ClusterQueues>,
    /// NDRs for bounced messages.
    pub ndr: Arc<NdrPolicy>,
    /// Token for state-changing requests.
    pub token: Option<String>,
    /// Set once the process has started every role.
    pub started: AtomicBool,
    /// Producer name of operator events.
    pub producer: String,
    /// Where quarantined messages' records are (see [`quarantine::QuarantineIndex`]).
    pub quarantine: Option<quarantine::QuarantineIndex>,
    /// The message trace index, when this process keeps one.
    pub trace: Option<crate::trace::TraceService>,
    /// Once it begins, `/readyz` answers 503 so that no new client is sent here.
    pub drain: crate::drain::Drain,
}

impl AdminState {
    /// Whether the process is ready: every role started and delivery replayed.
    pub fn is_ready(&self) -> bool {
        self.started.load(Ordering::Acquire) && self.delivery.as_ref().is_none_or(DeliveryHandle::is_ready)
    }

    /// Checks the bearer token of a state-changing request: the refusal, if any.
    pub(crate) fn refusal(&self, request: &HttpRequest) -> Option<HttpResponse> {
        let Some(expected) = &self.token else {
            return Some(error(
                actix_web::http::StatusCode::FORBIDDEN,
                "this request changes state and no admin token is configured ([admin] token or token_file)",
            ));
        };
        let given = request
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(given) if constant_time_eq(given.as_bytes(), expected.as_bytes()) => None,
            Some(_) => Some(error(actix_web::http::StatusCode::UNAUTHORIZED, "the admin token is wrong")),
            None => Some(error(
                actix_web::http::StatusCode::UNAUTHORIZED,
                "this request changes state: send Authorization: Bearer <admin token>",
            )),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A JSON error body: `{"error": "..."}`.
pub(crate) fn error(status: actix_web::http::StatusCode, message: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status).json(serde_json::json!({ "error": message.into() }))
}

/// Binds the admin listener and starts serving on the current actix system;
/// returns the bound address.
pub fn start(listen: SocketAddr, state: Arc<AdminState>) -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(listen)
        .map_err(|err| anyhow::anyhow!("binding the admin listener {listen}: {err}"))?;
    let address = listener.local_addr()?;
    let data = web::Data::from(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(web::JsonConfig::default().limit(64 * 1024))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/metrics", web::get().to(metrics))
            .configure(views::routes)
            .configure(actions::routes)
            .configure(quarantine::routes)
            .configure(trace::routes)
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run();
    actix_rt::spawn(server);
    Ok(address)
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

async fn metrics(state: web::Data<AdminState>) -> HttpResponse {
    let text = crate::metrics::metrics().render(state.log.as_ref(), state.delivery.as_ref()).await;
    HttpResponse::Ok().content_type("application/openmetrics-text; version=1.0.0; charset=utf-8").body(text)
}

async fn readyz(state: web::Data<AdminState>) -> HttpResponse {
    if state.drain.is_draining() {
        HttpResponse::ServiceUnavailable().json(serde_json::json!({ "status": "draining" }))
    } else if state.is_ready() {
        HttpResponse::Ok().json(serde_json::json!({ "status": "ready" }))
    } else {
        HttpResponse::ServiceUnavailable().json(serde_json::json!({ "status": "replaying" }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn the_default_listener_is_loopback() {
        let config = AdminConfig::default();
        assert!(config.listen.is_some_and(|a| a.ip().is_loopback()));
        assert!(config.token().unwrap().is_none());
    }
}
