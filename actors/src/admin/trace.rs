//! Message trace endpoints (spec 15, `mailflow trace`), answered from this
//! process's [`TraceIndex`](crate::trace::TraceIndex):
//! - `GET /api/v1/trace?sender=&recipient=&message_id=&internet_message_id=&client_ip=&to_ip=&status=&subject=&subject_match=contains|starts|ends&since=&until=&starting_recipient=&starting_message_id=&limit=`
//!   — one row per message and recipient, newest first; an answer cut by
//!   `limit` names in `next_page` the parameters of the next page;
//! - `GET /api/v1/trace/{message_id}` — the message's rows and every event, in time order.
//!
//! A search covers at most 10 days, by default the last 48 hours, and never
//! starts before `[trace] retention` (spec 15.1, [`Query::window`]). Searches
//! and detail views together are throttled to `[trace] query_limit` per
//! `query_window` (spec 15.1: 100 per 5 minutes); one more is answered
//! `429 Too Many Requests` with `Retry-After`.

use std::sync::atomic::Ordering;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};

use super::{AdminState, error};
use crate::trace::{Query, TraceService, detail};

pub(super) fn routes(config: &mut web::ServiceConfig) {
    config.route("/api/v1/trace", web::get().to(search)).route("/api/v1/trace/{id}", web::get().to(message));
}

fn no_trace() -> HttpResponse {
    error(StatusCode::NOT_FOUND, "this process keeps no message trace")
}

/// Admits one query, or answers 429 with the seconds until one is admitted.
fn throttled(service: &TraceService) -> Option<HttpResponse> {
    let (wait, limit, window) = {
        let mut throttle = service.throttle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        (throttle.admit(std::time::Instant::now()).err()?, throttle.limit(), throttle.window())
    };
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let message = format!(
        "more than {limit} trace queries in {} s ([trace] query_limit); try again in {seconds} s",
        window.as_secs()
    );
    let mut response = error(StatusCode::TOO_MANY_REQUESTS, message);
    let retry_after = actix_web::http::header::HeaderValue::from(seconds);
    response.headers_mut().insert(actix_web::http::header::RETRY_AFTER, retry_after);
    Some(response)
}

fn read_index(service: &TraceService) -> std::sync::RwLockReadGuard<'_, crate::trace::TraceIndex> {
    // A poisoned lock means the follower panicked mid-apply; what it holds is still worth showing.
    service.index.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn search(state: web::Data<AdminState>, request: HttpRequest) -> HttpResponse {
    let Some(service) = state.trace.clone() else { return no_trace() };
    if let Some(refused) = throttled(&service) {
        return refused;
    }
    let query = match web::Query::<Query>::from_query(request.query_string()) {
        Ok(query) => query.into_inner(),
        Err(err) => return error(StatusCode::BAD_REQUEST, format!("bad trace query: {err}")),
    };
    let caught_up = service.caught_up.load(Ordering::Acquire);
    // A search may scan every message: off the admin API's only worker thread.
    let answer = web::block(move || {
        let index = read_index(&service);
        index.search(&query, chrono::Utc::now(), service.retention).map(|result| (result, index.messages()))
    })
    .await;
    match answer {
        Ok(Ok((result, messages))) => {
            let mut body = serde_json::to_value(&result).unwrap_or_default();
            body["indexed_messages"] = messages.into();
            body["caught_up"] = caught_up.into();
            HttpResponse::Ok().json(body)
        }
        Ok(Err(err)) => error(StatusCode::BAD_REQUEST, err.to_string()),
        Err(err) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("the trace search failed: {err}")),
    }
}

async fn message(state: web::Data<AdminState>, id: web::Path<String>) -> HttpResponse {
    let Some(service) = &state.trace else { return no_trace() };
    if let Some(refused) = throttled(service) {
        return refused;
    }
    let id = id.into_inner();
    let (positions, rows) = {
        let index = read_index(service);
        (index.positions(&id).map(<[_]>::to_vec), index.rows_of(&id))
    };
    let Some(positions) = positions else {
        return error(StatusCode::NOT_FOUND, format!("no message {id} in the trace"));
    };
    match detail::read(&*state.log, &positions).await {
        Ok(events) => HttpResponse::Ok().json(serde_json::json!({
            "message_id": id,
            "recipients": rows,
            "events": events,
        })),
        Err(err) => error(StatusCode::SERVICE_UNAVAILABLE, format!("reading the message's journal records: {err}")),
    }
}
