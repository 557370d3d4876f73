//! The quarantine (spec 9.3): a quarantined message is a `MessageQuarantined`
//! in `mailflow.verdicts` holding its verdict and content reference; releasing
//! it appends a `MessageReleased`, which the routing role delivers as if
//! filtering had let it through. Quarantined messages are listed by the
//! message trace (`status=quarantined`).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use anyhow::Context as _;
use chrono::Utc;
use mailflow_events::log::{EventLog, Record};
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

/// Where each quarantined message's latest `MessageQuarantined` sits in
/// `mailflow.verdicts`, and the offset of its release: a lookup index folded
/// from the topic by every process serving the admin API, so that showing or
/// releasing a message reads its own records instead of its whole partition.
/// It is brought up to date when asked (each lookup reads what was appended
/// since the previous one), so an idle process reads nothing; only records
/// that name a quarantine or release are decoded.
#[derive(Debug, Clone, Default)]
pub struct QuarantineIndex {
    inner: Arc<RwLock<Fold>>,
    /// One catch-up at a time: two would fold the same records twice.
    catching_up: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Debug, Default)]
struct Fold {
    /// Per partition, the offset after the last record folded.
    next: Vec<u64>,
    /// Message id → (partition, offset of its latest `MessageQuarantined`,
    /// offset of the `MessageReleased` naming that one).
    held: HashMap<Box<str>, (u32, u64, Option<u64>)>,
}

impl QuarantineIndex {
    /// Reads every partition of `mailflow.verdicts` from where the fold
    /// stands to its end once; returns how many records were read. The
    /// partition count is the one the log already knows (as [`find`] needs
    /// it too), so a lookup asks the broker for no metadata.
    pub async fn catch_up(&self, log: &dyn EventLog) -> anyhow::Result<usize> {
        let _one = self.catching_up.lock().await;
        let partitions = log.partitions(topic::VERDICTS)? as usize;
        self.inner.write().unwrap_or_else(std::sync::PoisonError::into_inner).next.resize(partitions, 0);
        let mut read = 0;
        for partition in 0..partitions {
            loop {
                let next = self.inner.read().unwrap_or_else(std::sync::PoisonError::into_inner).next[partition];
                let records = log.read(topic::VERDICTS, partition as u32, next, 4096).await?;
                let Some(last) = records.last() else { break };
                read += records.len();
                let mut fold = self.inner.write().unwrap_or_else(std::sync::PoisonError::into_inner);
                for record in records.iter().filter(|r| r.position.offset >= next) {
                    fold.apply(record);
                }
                fold.next[partition] = last.position.offset + 1;
            }
        }
        Ok(read)
    }

    /// What the index knows of message `id` in `partition`: its latest
    /// quarantine (offset, release offset), and the offset it has folded to.
    fn lookup(&self, partition: u32, id: &str) -> (Option<(u64, Option<u64>)>, u64) {
        let fold = self.inner.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = fold.held.get(id).filter(|e| e.0 == partition).map(|e| (e.1, e.2));
        (entry, fold.next.get(partition as usize).copied().unwrap_or(0))
    }
}

impl Fold {
    fn apply(&mut self, record: &Record) {
        let names = |word: &[u8]| memchr::memmem::find(&record.value, word).is_some();
        if !names(b"MessageQuarantined") && !names(b"MessageReleased") {
            return;
        }
        let Ok(id) = std::str::from_utf8(&record.key) else { return };
        match Envelope::<VerdictEvent>::from_json(&record.value).map(|e| e.event) {
            Ok(VerdictEvent::MessageQuarantined(_)) => {
                self.held.insert(id.into(), (record.position.partition, record.position.offset, None));
            }
            Ok(VerdictEvent::MessageReleased(released)) => {
                if let Some(held) = self.held.get_mut(id).filter(|h| h.1 == released.quarantined_offset) {
                    held.2 = Some(record.position.offset);
                }
            }
            _ => {}
        }
    }
}

/// Finds message `id`'s latest quarantine record in its partition of
/// `mailflow.verdicts`: through `index` for the part it has folded (reading
/// the one record it names) and by reading the rest, which is all of the
/// partition without an index (records of other messages are skipped by key,
/// undecoded).
pub async fn find(log: &dyn EventLog, index: Option<&QuarantineIndex>, id: &str) -> anyhow::Result<Option<Held>> {
    let partition = mailflow_events::log::partition_for(id.as_bytes(), log.partitions(topic::VERDICTS)?);
    let mut held: Option<Held> = None;
    let mut offset = 0;
    if let Some(index) = index {
        index.catch_up(log).await?;
        let (entry, folded) = index.lookup(partition, id);
        if let Some((quarantined_at, released_at_offset)) = entry {
            let records = log.read(topic::VERDICTS, partition, quarantined_at, 1).await?;
            let record = records.first().filter(|r| r.position.offset == quarantined_at && &r.key[..] == id.as_bytes());
            let record = record.with_context(|| format!("mailflow.verdicts/{partition}/{quarantined_at} is gone"))?;
            let envelope = Envelope::<VerdictEvent>::from_json(&record.value)?;
            let VerdictEvent::MessageQuarantined(quarantined) = envelope.event else {
                anyhow::bail!("mailflow.verdicts/{partition}/{quarantined_at} is not a MessageQuarantined");
            };
            held = Some(Held {
                partition,
                offset: quarantined_at,
                quarantined,
                released_at_offset,
                trace_context: envelope.trace_context,
            });
        }
        offset = folded;
    }
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
    match find(state.log.as_ref(), state.quarantine.as_ref(), &id).await {
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
    let held = match find(state.log.as_ref(), state.quarantine.as_ref(), &id).await {
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

#[cfg(test)]
mod tests {
    use mailflow_events::log::TopicKind;
    use mailflow_events::log::embedded::{EmbeddedLog, Options};

    use super::*;

    fn fixture(name: &str, id: &str, quarantined_offset: u64) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../events/tests/fixtures/v1").join(name);
        let mut value: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        value["message_id"] = id.into();
        if value["type"] == "MessageReleased" {
            value["quarantined_offset"] = quarantined_offset.into();
        }
        serde_json::to_vec(&value).unwrap()
    }

    async fn append(log: &EmbeddedLog, id: &str, value: &[u8]) -> u64 {
        log.append(topic::VERDICTS, id.as_bytes(), value).await.unwrap().offset
    }

    /// (offset, released offset) as `find` reports them.
    async fn found(log: &EmbeddedLog, index: Option<&QuarantineIndex>, id: &str) -> Option<(u64, Option<u64>)> {
        find(log, index, id).await.unwrap().map(|h| (h.offset, h.released_at_offset))
    }

    #[tokio::test]
    async fn the_index_finds_what_reading_the_partition_finds_also_for_records_it_has_not_folded_yet() {
        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open(dir.path(), Options::default()).unwrap();
        log.create_topic(topic::VERDICTS, 1, TopicKind::Events).await.unwrap();
        // Other messages' verdicts around m1's quarantine.
        for n in 0..50 {
            append(&log, &format!("other{n}"), &fixture("verdicts.VerdictReached.json", &format!("other{n}"), 0)).await;
        }
        let quarantined = append(&log, "m1", &fixture("verdicts.MessageQuarantined.json", "m1", 0)).await;
        append(&log, "other", &fixture("verdicts.VerdictReached.json", "other", 0)).await;
        let index = QuarantineIndex::default();
        assert_eq!(index.catch_up(&log).await.unwrap(), 52);
        assert_eq!(index.lookup(0, "m1"), (Some((quarantined, None)), 52), "folded");
        assert_eq!(found(&log, Some(&index), "m1").await, Some((quarantined, None)));
        assert_eq!(found(&log, None, "m1").await, Some((quarantined, None)));
        assert_eq!(found(&log, Some(&index), "other3").await, None, "never quarantined");

        // A release the index has not folded yet is found in the tail all the same.
        let released = append(&log, "m1", &fixture("verdicts.MessageReleased.json", "m1", quarantined)).await;
        assert_eq!(index.lookup(0, "m1").0, Some((quarantined, None)));
        assert_eq!(found(&log, Some(&index), "m1").await, Some((quarantined, Some(released))));
        // Once folded, the index knows it; a release naming another quarantine is not it.
        append(&log, "m1", &fixture("verdicts.MessageReleased.json", "m1", quarantined + 1000)).await;
        index.catch_up(&log).await.unwrap();
        assert_eq!(index.lookup(0, "m1").0, Some((quarantined, Some(released))));
        assert_eq!(found(&log, Some(&index), "m1").await, found(&log, None, "m1").await);
        // Quarantined again later: the latest quarantine counts, not yet released.
        let again = append(&log, "m1", &fixture("verdicts.MessageQuarantined.json", "m1", 0)).await;
        assert_eq!(found(&log, Some(&index), "m1").await, Some((again, None)));
        index.catch_up(&log).await.unwrap();
        assert_eq!(found(&log, Some(&index), "m1").await, Some((again, None)));
    }
}
