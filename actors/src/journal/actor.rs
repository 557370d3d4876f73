//! The journal projector: a member of the `mailflow-journal` consumer group on
//! `mailflow.received`, `mailflow.verdicts` and `mailflow.delivery`. It takes
//! what has arrived (up to [`BATCH`] records), turns it into journal records
//! ([`Projector`]), appends them to `mailflow.journal` (key: message id) until
//! they are durable, and only then commits the consumed offsets. A crash in
//! between projects the uncommitted events again; their records carry the
//! same `event_id`, so consumers dedupe them.
//!
//! Records of one journal partition are appended one after another, so the
//! records of one message keep the order they are given; within a round that
//! is the order of their facts (`occurred_at`), since the three topics are
//! polled in no causal order. Different journal partitions are appended
//! concurrently. Across rounds, a member catching up after a long stop may
//! still journal a message's delivery before its receipt: readers order a
//! message's records by `occurred_at` when it matters.
//!
//! Delivery records need each partition's [`QueuedIndex`]. It is folded from
//! every `mailflow.delivery` record this member handles. When a record does
//! not follow the last one folded (the partition was just assigned, or a
//! rebalance rewound it to the committed offset), the index is rebuilt by
//! reading the partition from offset 0 up to that record, without emitting
//! anything (the same replay as the delivery actor's).
//!
//! A quarantine release (`MessageReleased`) names the `MessageQuarantined` it
//! releases by offset; the member reads that record from the same
//! `mailflow.verdicts` partition so the `RELEASE` record carries the
//! message's columns like every other record.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, AsyncContext as _, Context, WrapFuture as _};
use mailflow_events::delivery::DeliveryEvent;
use mailflow_events::journal::JournalEvent;
use mailflow_events::log::{EventLog, GroupMember, LogError, Record, partition_for};
use mailflow_events::received::ReceivedEvent;
use mailflow_events::verdicts::{MessageQuarantined, VerdictEvent};
use mailflow_events::{Envelope, topic};

use super::index::QueuedIndex;
use super::project::{Projector, Source};
use crate::event_log::{append_until_durable, join_until_member};

/// Consumer group of the journal role.
pub const GROUP: &str = "mailflow-journal";

/// Source records handled per round at most: one round's appends are made
/// durable together (group commit), then its offsets committed.
const BATCH: usize = 512;

/// The actor.
#[derive(Clone)]
pub struct JournalActor {
    /// The event log.
    pub log: Arc<dyn EventLog>,
    /// The mapping to journal records.
    pub projector: Arc<Projector>,
    /// Ends the loop after the batch in hand (see `crate::drain`).
    pub drain: crate::drain::Drain,
}

impl std::fmt::Debug for JournalActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalActor").field("producer", &self.projector.producer).finish_non_exhaustive()
    }
}

impl JournalActor {
    /// The journal role of a process with this configuration.
    pub fn new(config: &crate::config::Config, log: Arc<dyn EventLog>, drain: crate::drain::Drain) -> Self {
        let projector =
            Projector { hostname: config.server.hostname.clone(), producer: "mailflow/journal".to_string() };
        Self { log, projector: Arc::new(projector), drain }
    }
}

impl Actor for JournalActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let worker = self.clone();
        ctx.spawn(worker.run().into_actor(self));
    }
}

impl JournalActor {
    async fn run(self) {
        let topics = [topic::RECEIVED, topic::VERDICTS, topic::DELIVERY];
        let _working = self.drain.working();
        let mut member = join_until_member(self.log.as_ref(), GROUP, &topics).await;
        let mut indexes: HashMap<u32, QueuedIndex> = HashMap::new();
        while !self.drain.is_draining() {
            let batch = match poll_batch(member.as_mut()).await {
                Ok(batch) => batch,
                Err(err) => {
                    tracing::warn!(error = %err, "journal role: poll failed");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            // Indexes of partitions taken away would only go stale.
            let assigned = member.assignment();
            indexes.retain(|partition, _| assigned.iter().any(|(t, p)| t == topic::DELIVERY && p == partition));
            if batch.is_empty() {
                crate::metrics::metrics().assigned(GROUP, &assigned);
                continue;
            }
            let mut records = Vec::new();
            let mut handled: BTreeMap<(String, u32), u64> = BTreeMap::new();
            for record in &batch {
                records.extend(self.project(&mut indexes, record).await);
                handled.insert((record.topic.to_string(), record.position.partition), record.position.offset + 1);
            }
            // Topics are polled in no causal order (a member catching up may
            // get a message's delivery before its receipt): within a round,
            // records go out in the order their facts happened.
            records.sort_by_key(|record| record.occurred_at);
            self.append(records).await;
            for ((topic, partition), next) in handled {
                match member.commit(&topic, partition, next).await {
                    Ok(()) => crate::metrics::metrics().consumed(GROUP, &topic, partition, next),
                    Err(err) => {
                        tracing::warn!(error = %err, topic, partition, "commit failed; the events will be journaled again")
                    }
                }
            }
        }
        crate::event_log::leave(member, "journal").await;
    }

    /// The journal records of one source record.
    async fn project(&self, indexes: &mut HashMap<u32, QueuedIndex>, record: &Record) -> Vec<Envelope<JournalEvent>> {
        let source =
            Source { topic: &record.topic, partition: record.position.partition, offset: record.position.offset };
        let undecodable = |err: &dyn std::fmt::Display| {
            tracing::error!(error = %err, topic = %record.topic, offset = record.position.offset, "undecodable event; not journaled");
            Vec::new()
        };
        match &*record.topic {
            topic::RECEIVED => match Envelope::<ReceivedEvent>::from_json(&record.value) {
                Ok(envelope) => self.projector.received(source, &envelope),
                Err(err) => undecodable(&err),
            },
            topic::VERDICTS => match Envelope::<VerdictEvent>::from_json(&record.value) {
                Ok(envelope) => match &envelope.event {
                    VerdictEvent::MessageReleased(released) => {
                        let (partition, offset) = (record.position.partition, released.quarantined_offset);
                        let held = self.quarantined(partition, offset, &envelope.message_id).await;
                        self.projector.released(source, &envelope, held.as_ref())
                    }
                    _ => self.projector.verdict(source, &envelope),
                },
                Err(err) => undecodable(&err),
            },
            topic::DELIVERY => {
                let partition = record.position.partition;
                let index = indexes.entry(partition).or_default();
                if index.next_offset != record.position.offset {
                    *index = self.rebuild(partition, record.position.offset).await;
                }
                match Envelope::<DeliveryEvent>::from_json(&record.value) {
                    Ok(envelope) => {
                        let key = envelope.event.destination().key();
                        let records = self.projector.delivery(source, &envelope, index.get(&key, &envelope.message_id));
                        index.apply(record.position.offset, &envelope);
                        records
                    }
                    Err(err) => {
                        index.next_offset = record.position.offset + 1;
                        undecodable(&err)
                    }
                }
            }
            other => {
                tracing::error!(topic = other, "record of a topic the journal does not follow");
                Vec::new()
            }
        }
    }

    /// The index of `partition` folded from offset 0 up to `until`, retrying
    /// reads until the log answers: records must not be journaled without it.
    async fn rebuild(&self, partition: u32, until: u64) -> QueuedIndex {
        tracing::info!(partition, until, "journal: rebuilding the queued-message index");
        let mut backoff = Duration::from_millis(100);
        loop {
            match fold(self.log.as_ref(), partition, until).await {
                Ok(index) => return index,
                Err(err) => {
                    tracing::warn!(error = %err, partition, "journal: replay failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    /// The `MessageQuarantined` of message `id` at `offset` of
    /// `mailflow.verdicts` partition `partition` (the topic is keyed by message
    /// id, so a release and its quarantine share a partition). Reads are
    /// retried until the log answers, like [`Self::rebuild`]'s; `None` when
    /// that record is not a quarantine of this message.
    async fn quarantined(&self, partition: u32, offset: u64, id: &str) -> Option<MessageQuarantined> {
        let mut backoff = Duration::from_millis(100);
        let found = loop {
            match crate::routing::actor::quarantine_at(self.log.as_ref(), partition, offset).await {
                Ok(found) => break found,
                Err(err) => {
                    tracing::warn!(error = %err, partition, offset, "journal: reading a quarantine record failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        };
        let held = found.filter(|(message_id, _)| message_id == id).map(|(_, quarantined)| quarantined);
        if held.is_none() {
            tracing::warn!(
                message_id = id,
                partition,
                offset,
                "journal: a release names no quarantine record; journaled without the message's columns"
            );
        }
        held
    }

    /// Appends `records` until durable: one task per journal partition, each
    /// appending its records in order.
    async fn append(&self, records: Vec<Envelope<JournalEvent>>) {
        if records.is_empty() {
            return;
        }
        let partitions = match self.log.partitions(topic::JOURNAL) {
            Ok(count) => count,
            Err(err) => {
                // The topic is created at start-up; without its count, append
                // one by one and let the log pick.
                tracing::warn!(error = %err, "journal partition count unknown");
                1
            }
        };
        let mut by_partition: BTreeMap<u32, Vec<(String, Vec<u8>)>> = BTreeMap::new();
        for record in records {
            let key = record.message_id.clone();
            by_partition.entry(partition_for(key.as_bytes(), partitions)).or_default().push((key, record.to_json()));
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (_, records) in by_partition {
            let log = Arc::clone(&self.log);
            tasks.spawn(async move {
                for (key, value) in records {
                    append_until_durable(log.as_ref(), topic::JOURNAL, key.as_bytes(), &value).await;
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            if let Err(err) = done {
                // A panicking append would lose records: stop rather than commit past them.
                panic!("journal append task failed: {err}");
            }
        }
    }
}

/// Waits up to a second for a record, then takes what else has arrived.
async fn poll_batch(member: &mut dyn GroupMember) -> Result<Vec<Record>, LogError> {
    let mut batch = Vec::new();
    let Some(first) = member.poll(Duration::from_secs(1)).await? else { return Ok(batch) };
    batch.push(first);
    while batch.len() < BATCH {
        match member.poll(Duration::ZERO).await {
            Ok(Some(record)) => batch.push(record),
            Ok(None) => break,
            // What was polled is handled now: dropping it would skip it
            // until the next rebalance, since the client's position moved on.
            Err(err) => {
                tracing::warn!(error = %err, "journal role: poll failed; handling what arrived");
                break;
            }
        }
    }
    Ok(batch)
}

/// Folds `mailflow.delivery` partition `partition` from offset 0 up to `until`.
pub async fn fold(log: &dyn EventLog, partition: u32, until: u64) -> Result<QueuedIndex, LogError> {
    let mut index = QueuedIndex::default();
    let mut offset = 0;
    while offset < until {
        let records = log.read(topic::DELIVERY, partition, offset, 4096).await?;
        let Some(last) = records.last() else { break };
        offset = last.position.offset + 1;
        for record in records.iter().filter(|r| r.position.offset < until) {
            if let Ok(envelope) = Envelope::<DeliveryEvent>::from_json(&record.value) {
                index.apply(record.position.offset, &envelope);
            }
        }
    }
    index.next_offset = until;
    Ok(index)
}
