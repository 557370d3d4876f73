//! The delivery actor: a member of the `mailflow-delivery` consumer group on
//! `mailflow.delivery`.
//!
//! For every assigned partition it folds the partition's events from offset 0
//! into a [`PartitionState`] (the group never commits on this topic: the log
//! is the queue, and the fold is the state). Until the fold has reached the
//! end offset seen at assignment, the partition is *replaying* and nothing is
//! delivered: replay has no side effects. Then, every tick, destinations with
//! work due get one delivery task each, which opens up to
//! `max_connections_per_destination` connections taking messages in receipt
//! order (one, the default, keeps strict arrival order, spec 11.4). A task
//! appends each attempt's outcome to the destination's partition as it goes;
//! the destination stays busy until the fold has applied the task's last
//! event, so nothing is sent twice because the state had not caught up yet.
//!
//! A crash between a next hop's `250` and the durable `Delivered` means the
//! message is sent again after restart (at-least-once); the window is the
//! `Delivered` appends in flight, at most [`MAX_IN_FLIGHT`] per destination.
//!
//! Each attempt at a message is a `delivery.attempt` span in the message's
//! trace (`crate::telemetry`), continued from its `Queued` event; its outcome
//! events carry the span's context.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix::{Actor, AsyncContext as _, Context, WrapFuture as _};
use chrono::Utc;
use hickory_resolver::TokioResolver;
use mailflow_events::delivery::{Deferred, Delivered, DeliveryEvent, DestinationKind, Expired, Failed, Queued, Scope};
use mailflow_events::log::{EventLog, Record};
use mailflow_events::received::{DsnNotify, SmtpReply, TlsInfo};
use mailflow_events::{Envelope, TraceContext, content, topic};
use tokio::sync::mpsc;
use tracing::Instrument as _;

use super::client::{
    ClientOptions, Connection, Hop, HopFailure, Outcome, Protocol, RootsError, Timeouts, TlsPolicy, Transaction,
};
use super::mx::{self, Resolution};
use super::schedule::RetrySchedule;
use super::state::{Due, DueMessage, ExpiredMessage, PartitionState};
use crate::config::{Config, MailboxStoreConfig, TlsSettings};
use crate::ndr::{self, FailedRecipient, NdrPolicy};
use crate::routing::{OutboundConnector, Router};
use crate::telemetry::{self, Stage};

/// Consumer group of the delivery role.
pub const GROUP: &str = "mailflow-delivery";

/// Messages handed to one delivery task at most, per connection it may open
/// (`max_connections_per_destination`): a destination is busy until its task's
/// batch is done, so the batch must keep every connection fed for a while.
const BATCH_PER_CONNECTION: usize = 100;

/// How often the scheduler looks for due work when nothing arrives.
const TICK: Duration = Duration::from_millis(100);

/// How often queues are searched for expired messages: the search walks
/// every queued message, too much for every tick with deep queues, and
/// expiry needs no finer resolution (an expired message is never sent meanwhile).
const EXPIRY_CHECK: Duration = Duration::from_secs(1);

/// Everything a delivery task needs, shared.
#[derive(Debug)]
pub struct Shared {
    /// The event log.
    pub log: Arc<dyn EventLog>,
    /// DNS for MX and smart hosts.
    pub resolver: TokioResolver,
    /// Connector lookup.
    pub router: Arc<Router>,
    /// NDR sender.
    pub ndr: Arc<NdrPolicy>,
    /// Retry schedule.
    pub schedule: RetrySchedule,
    /// The mailbox store.
    pub store: MailboxStoreConfig,
    /// EHLO name, timeouts, trust anchors.
    pub client: ClientOptions,
    /// Port of MX hosts.
    pub mx_port: u16,
    /// Messages per connection.
    pub max_messages_per_connection: usize,
    /// Connections at once to one destination.
    pub max_connections_per_destination: usize,
    /// DKIM signers of our domains.
    pub dkim: super::dkim::DkimSigners,
    /// Producer name in events.
    pub producer: String,
    /// How often a changed partition's state is snapshotted.
    pub snapshot_interval: Duration,
    /// See `TransportConfig::delay_notice_after`; `None`: no delay notices.
    pub delay_notice_after: Option<chrono::Duration>,
    /// Once it begins, no new attempt starts (see `crate::drain`).
    pub drain: crate::drain::Drain,
}

impl Shared {
    /// From a validated configuration.
    pub fn new(
        config: &Config,
        log: Arc<dyn EventLog>,
        resolver: TokioResolver,
        router: Arc<Router>,
        ndr: Arc<NdrPolicy>,
        drain: crate::drain::Drain,
    ) -> anyhow::Result<Self> {
        let transport = &config.transport;
        if let MailboxStoreConfig::Maildir { path } = &config.mailbox_store {
            std::fs::create_dir_all(path)
                .map_err(|err| anyhow::anyhow!("creating the Maildir root {}: {err}", path.display()))?;
        }
        Ok(Self {
            log,
            resolver,
            router,
            ndr,
            schedule: RetrySchedule::new(transport.retry_schedule.clone()),
            store: config.mailbox_store.clone(),
            client: client_options(config)?,
            mx_port: transport.mx_port,
            max_messages_per_connection: transport.max_messages_per_connection,
            max_connections_per_destination: transport.max_connections_per_destination,
            dkim: super::dkim::DkimSigners::load(&config.dkim_signing)?,
            snapshot_interval: transport.snapshot_interval,
            delay_notice_after: (!transport.delay_notice_after.is_zero())
                .then(|| chrono::Duration::from_std(transport.delay_notice_after).ok())
                .flatten(),
            drain,
            // Which process delivered is part of the audit trail (pods come and go).
            producer: format!(
                "mailflow/delivery@{}/{}",
                std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".to_string()),
                std::process::id()
            ),
        })
    }
}

/// The client options of `[transport]`: our EHLO name, its timeouts, the
/// Mozilla roots plus `extra_ca`; SMTP with opportunistic TLS until a
/// destination says otherwise ([`connector_tls`], the mailbox store).
pub fn client_options(config: &Config) -> Result<ClientOptions, RootsError> {
    let transport = &config.transport;
    let mut roots = (*super::client::default_roots()).clone();
    if let Some(path) = &transport.extra_ca {
        super::client::add_pem_roots(&mut roots, path)?;
    }
    let timeouts = Timeouts {
        connect: transport.connect_timeout,
        greeting: transport.command_timeout,
        ehlo: transport.command_timeout,
        mail: transport.command_timeout,
        rcpt: transport.command_timeout,
        data_init: transport.command_timeout,
        data_block: transport.command_timeout,
        data_end: transport.command_timeout * 2,
    };
    Ok(ClientOptions {
        protocol: Protocol::Smtp,
        helo_name: config.server.hostname.clone(),
        tls: TlsPolicy::Opportunistic,
        roots: Arc::new(roots),
        timeouts,
    })
}

/// The TLS policy of an outbound connector's `tls_settings` (spec 6.4).
pub fn connector_tls(connector: &OutboundConnector) -> TlsPolicy {
    match connector.tls {
        TlsSettings::Opportunistic => TlsPolicy::Opportunistic,
        TlsSettings::EncryptionOnly => TlsPolicy::EncryptionOnly,
        TlsSettings::CertificateValidation => TlsPolicy::CertificateValidation,
        TlsSettings::DomainValidation => {
            TlsPolicy::DomainValidation { tls_domain: connector.tls_domain.clone().unwrap_or_default() }
        }
    }
}

/// The actor.
#[derive(Debug)]
pub struct DeliveryActor {
    /// Shared context of its tasks.
    pub shared: Arc<Shared>,
    /// Questions from the admin API, answered between ticks.
    queries: Option<mpsc::Receiver<Query>>,
    /// Set while every owned partition has finished replaying.
    ready: Arc<AtomicBool>,
}

impl DeliveryActor {
    /// The actor, and the handle through which the admin API reads its state.
    pub fn new(shared: Arc<Shared>) -> (Self, DeliveryHandle) {
        let (tx, rx) = mpsc::channel(16);
        let ready = Arc::new(AtomicBool::new(false));
        let handle = DeliveryHandle { queries: tx, ready: Arc::clone(&ready) };
        (Self { shared, queries: Some(rx), ready }, handle)
    }
}

impl Actor for DeliveryActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let shared = Arc::clone(&self.shared);
        let queries = self.queries.take().unwrap_or_else(|| mpsc::channel(1).1);
        ctx.spawn(run(shared, queries, Arc::clone(&self.ready)).into_actor(self));
    }
}

/// One owned partition as the admin API sees it.
#[derive(Debug)]
pub struct PartitionView<'a> {
    /// Partition number.
    pub partition: u32,
    /// Its folded state.
    pub state: &'a PartitionState,
    /// Whether it is still replaying (nothing is delivered meanwhile).
    pub replaying: bool,
    /// `next_offset` of the latest snapshot written or loaded (0: none).
    pub snapshot_at: u64,
    /// Events still to fold before the partition delivers again.
    pub replay_remaining: u64,
}

/// A question about the delivery state, answered inside the actor's loop.
pub type Query = Box<dyn FnOnce(&[PartitionView<'_>]) + Send>;

/// How other parts of the process read the delivery state.
#[derive(Debug, Clone)]
pub struct DeliveryHandle {
    queries: mpsc::Sender<Query>,
    ready: Arc<AtomicBool>,
}

impl DeliveryHandle {
    /// Whether every owned partition has finished replaying.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Runs `question` over the owned partitions (in partition order) inside
    /// the actor's loop and returns its answer; `None` if the actor is gone.
    pub async fn ask<T: Send + 'static>(
        &self,
        question: impl FnOnce(&[PartitionView<'_>]) -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let query: Query = Box::new(move |views| {
            let _ = tx.send(question(views));
        });
        self.queries.send(query).await.ok()?;
        rx.await.ok()
    }
}

/// A partition owned by this member.
#[derive(Debug)]
struct Owned {
    state: PartitionState,
    /// End offset when the partition was assigned: replay ends there.
    replay_until: u64,
    /// `next_offset` of the latest snapshot written or loaded.
    snapshot_at: u64,
    /// When that snapshot was taken.
    snapshot_time: tokio::time::Instant,
}

/// Events after which a partition's state is snapshotted even before `snapshot_interval`.
const SNAPSHOT_EVERY_EVENTS: u64 = 100_000;

/// Takes a partition on: the latest snapshot if there is one that checks
/// out, else the empty state; replay then folds what follows it.
async fn take_on(shared: &Shared, partition: u32) -> Result<Owned, mailflow_events::log::LogError> {
    let replay_until = shared.log.end_offset(topic::DELIVERY, partition).await?;
    let state = super::snapshot::load(shared.log.as_ref(), partition).await.unwrap_or_default();
    tracing::info!(partition, snapshot_at = state.next_offset, replay_until, "delivery partition assigned; replaying");
    Ok(Owned { snapshot_at: state.next_offset, state, replay_until, snapshot_time: tokio::time::Instant::now() })
}

/// A finished task: the destination and the last offset it appended.
#[derive(Debug)]
struct Done {
    key: String,
    last_offset: Option<u64>,
}

/// Destination key → its partition and the offset the fold must pass before
/// it is free again (`None`: its task still runs).
type Busy = HashMap<String, (u32, Option<u64>)>;

async fn run(shared: Arc<Shared>, mut queries: mpsc::Receiver<Query>, ready: Arc<AtomicBool>) {
    let _working = shared.drain.working();
    let mut member = crate::event_log::join_until_member(shared.log.as_ref(), GROUP, &[topic::DELIVERY]).await;
    let mut owned: HashMap<u32, Owned> = HashMap::new();
    let mut busy: Busy = HashMap::new();
    // Bounded: at most one message per running task is ever in flight.
    let (done_tx, mut done_rx) = mpsc::channel::<Done>(1024);
    let mut next_expiry_check = tokio::time::Instant::now();
    loop {
        // Assignment: drop what was taken away, start replaying what was given.
        let assigned: Vec<u32> =
            member.assignment().into_iter().filter(|(t, _)| t == topic::DELIVERY).map(|(_, p)| p).collect();
        owned.retain(|partition, _| assigned.contains(partition));
        for partition in &assigned {
            if !owned.contains_key(partition) {
                match take_on(&shared, *partition).await {
                    Ok(taken) => {
                        owned.insert(*partition, taken);
                    }
                    Err(err) => tracing::warn!(error = %err, partition, "end offset unknown; retrying"),
                }
            }
        }
        // Fold everything that is there, then look for work.
        match member.poll(TICK).await {
            Ok(Some(record)) => {
                apply(&shared, &mut owned, &record).await;
                while let Ok(Some(record)) = member.poll(Duration::ZERO).await {
                    apply(&shared, &mut owned, &record).await;
                }
            }
            Ok(None) => {}
            Err(err) => {
                tracing::warn!(error = %err, "delivery role: poll failed");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        while let Ok(done) = done_rx.try_recv() {
            match (done.last_offset, busy.get_mut(&done.key)) {
                (Some(offset), Some(entry)) => entry.1 = Some(offset),
                _ => {
                    busy.remove(&done.key);
                }
            }
        }
        ready.store(owned.values().all(|o| o.state.next_offset >= o.replay_until), Ordering::Release);
        while let Ok(query) = queries.try_recv() {
            let mut views: Vec<PartitionView<'_>> = owned
                .iter()
                .map(|(partition, o)| PartitionView {
                    partition: *partition,
                    state: &o.state,
                    replaying: o.state.next_offset < o.replay_until,
                    snapshot_at: o.snapshot_at,
                    replay_remaining: o.replay_until.saturating_sub(o.state.next_offset),
                })
                .collect();
            views.sort_by_key(|v| v.partition);
            query(&views);
        }
        // A destination is free once the fold has applied its task's last event.
        busy.retain(|_, (partition, until)| match (until, owned.get(partition)) {
            (None, _) => true,
            (Some(offset), Some(owned)) => owned.state.next_offset <= *offset,
            (Some(_), None) => false,
        });
        if shared.drain.is_draining() {
            // No new attempt; once the running ones have recorded their
            // outcomes and the fold has them, snapshot and hand the partitions back.
            if busy.is_empty() {
                for (partition, owned) in &owned {
                    if owned.state.next_offset >= owned.replay_until && owned.state.next_offset > owned.snapshot_at {
                        snapshot(Arc::clone(&shared.log), *partition, owned.state.clone()).await;
                    }
                }
                break;
            }
            continue;
        }
        let now = Utc::now();
        let check_expiry = tokio::time::Instant::now() >= next_expiry_check;
        if check_expiry {
            next_expiry_check = tokio::time::Instant::now() + EXPIRY_CHECK;
        }
        for (partition, owned) in &mut owned {
            if owned.state.next_offset < owned.replay_until {
                continue; // still replaying: no side effects
            }
            let changed = owned.state.next_offset - owned.snapshot_at.min(owned.state.next_offset);
            if changed >= SNAPSHOT_EVERY_EVENTS
                || changed > 0 && owned.snapshot_time.elapsed() >= shared.snapshot_interval
            {
                // Copied here, where the state is (a clone costs far less than
                // serialising); serialised on a blocking thread and written by a
                // task, so the loop does not wait for either.
                owned.snapshot_at = owned.state.next_offset;
                owned.snapshot_time = tokio::time::Instant::now();
                tokio::spawn(snapshot(Arc::clone(&shared.log), *partition, owned.state.clone()));
            }
            let owned = &*owned;
            let is_busy = |key: &str| busy.contains_key(key);
            let expired = if check_expiry { owned.state.expired(now, &is_busy) } else { Vec::new() };
            let due =
                owned.state.due(now, &is_busy, BATCH_PER_CONNECTION * shared.max_connections_per_destination.max(1));
            let mut by_key: HashMap<String, Vec<ExpiredMessage>> = HashMap::new();
            for message in expired {
                by_key.entry(message.key.clone()).or_default().push(message);
            }
            for (key, messages) in by_key {
                busy.insert(key.clone(), (*partition, None));
                let (shared, done_tx, partition) = (Arc::clone(&shared), done_tx.clone(), *partition);
                tokio::spawn(async move {
                    let last_offset = expire(&shared, partition, &messages).await;
                    let _ = done_tx.send(Done { key, last_offset }).await;
                });
            }
            for work in due {
                if busy.contains_key(&work.key) {
                    continue;
                }
                busy.insert(work.key.clone(), (*partition, None));
                let (shared, done_tx, partition) = (Arc::clone(&shared), done_tx.clone(), *partition);
                tokio::spawn(async move {
                    let key = work.key.clone();
                    let last_offset = deliver(&shared, partition, work).await;
                    let _ = done_tx.send(Done { key, last_offset }).await;
                });
            }
        }
    }
    crate::event_log::leave(member, "delivery").await;
}

/// Writes a snapshot of `state`, serialised on a blocking thread.
async fn snapshot(log: Arc<dyn EventLog>, partition: u32, state: PartitionState) {
    let next_offset = state.next_offset;
    let Ok(data) = tokio::task::spawn_blocking(move || super::snapshot::serialise(&state)).await else {
        tracing::warn!(partition, "snapshot not serialised; the next one will be");
        return;
    };
    match super::snapshot::write(log.as_ref(), partition, next_offset, &data).await {
        Ok(at) => tracing::info!(partition, next_offset, bytes = data.len(), manifest = at.offset, "snapshot written"),
        Err(err) => tracing::warn!(error = %err, partition, "snapshot not written; the next one will be"),
    }
}

/// Folds one record into its partition's state, taking the partition on
/// when this is its first record (the poll that rebalanced delivered it).
async fn apply(shared: &Shared, owned: &mut HashMap<u32, Owned>, record: &Record) {
    let number = record.position.partition;
    let partition = match owned.entry(number) {
        std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
        std::collections::hash_map::Entry::Vacant(entry) => match take_on(shared, number).await {
            Ok(taken) => entry.insert(taken),
            Err(_) => entry.insert(Owned {
                state: PartitionState::default(),
                replay_until: 0,
                snapshot_at: 0,
                snapshot_time: tokio::time::Instant::now(),
            }),
        },
    };
    // A record covered by the snapshot the state was loaded from is skipped undecoded.
    if let Err(err) = partition.state.apply_record(record) {
        tracing::error!(error = %err, offset = record.position.offset, "undecodable delivery event; skipped");
    }
}

/// Appends an outcome until it is durable, in `stage`'s trace, and records it
/// on `stage`'s span (with several outcomes, the last one's); returns its offset.
async fn record(shared: &Shared, message_id: &str, event: DeliveryEvent, stage: &Stage) -> u64 {
    use mailflow_events::envelope::TaggedEvent as _;
    let outcome = crate::metrics::OutcomeLabels { outcome: event.tag().to_string() };
    crate::metrics::metrics().delivery_outcomes.get_or_create(&outcome).inc();
    let (code, host, ip) = match &event {
        DeliveryEvent::Delivered(e) => (Some(e.reply.code), e.remote_host.as_deref(), e.remote_ip.as_deref()),
        DeliveryEvent::Deferred(e) => {
            (e.reply.as_ref().map(|r| r.code), e.remote_host.as_deref(), e.remote_ip.as_deref())
        }
        DeliveryEvent::Failed(e) => (Some(e.reply.code), e.remote_host.as_deref(), e.remote_ip.as_deref()),
        DeliveryEvent::Expired(e) => (Some(e.reply.code), None, None),
        _ => (None, None, None),
    };
    telemetry::record_outcome(stage.span(), &outcome.outcome.to_ascii_lowercase(), code, host, ip);
    let key = event.destination().key();
    let envelope = Envelope::new(message_id, &shared.producer, Utc::now(), event).with_trace_context(stage.context());
    let value = envelope.to_json();
    crate::event_log::append_until_durable(shared.log.as_ref(), topic::DELIVERY, key.as_bytes(), &value).await.offset
}

/// Receipt to now, for `mailflow_delivery_latency_seconds`.
fn observe_latency(queued: &Queued) {
    let latency = (Utc::now() - queued.received_at).num_milliseconds().max(0) as f64 / 1000.0;
    crate::metrics::metrics().delivery_latency.observe(latency);
}

/// Reads the `Queued` event at `offset`, with the trace context its envelope carries.
pub(crate) async fn queued_at(
    log: &dyn EventLog,
    partition: u32,
    offset: u64,
) -> Option<(Queued, Option<TraceContext>)> {
    let records = log.read(topic::DELIVERY, partition, offset, 1).await.ok()?;
    let record = records.into_iter().next()?;
    let envelope = Envelope::<DeliveryEvent>::from_json(&record.value).ok()?;
    match envelope.event {
        DeliveryEvent::Queued(queued) => Some((queued, envelope.trace_context)),
        _ => None,
    }
}

/// The `NOTIFY=` values `queued` carries for `address`.
pub(crate) fn notify_of<'a>(queued: &'a Queued, address: &str) -> Option<&'a [DsnNotify]> {
    queued.recipients.iter().find(|r| r.address.eq_ignore_ascii_case(address)).map(|r| r.notify.as_slice())
}

/// The report line of `address` of `queued` (with its `ORCPT`), as `reply`
/// from `hop` made it.
fn report_line(queued: &Queued, address: &str, reply: &SmtpReply, hop: Option<&Hop>) -> FailedRecipient {
    FailedRecipient {
        address: address.to_string(),
        orcpt: queued.recipients.iter().find(|r| r.address.eq_ignore_ascii_case(address)).and_then(|r| r.orcpt.clone()),
        reply: reply.clone(),
        remote_mta: hop.map(|h| h.host.clone()),
    }
}

/// What a success notice reports for a copy delivered to `destination`
/// (RFC 3461 §4.2): `delivered` into our own mailbox store; `relayed` to a
/// next hop that does not offer DSN; none for a next hop that does (it got
/// the `NOTIFY` parameter and reports itself).
fn success_action(destination: DestinationKind, peer_offers_dsn: bool) -> Option<ndr::DsnAction> {
    match destination {
        DestinationKind::MailboxStore => Some(ndr::DsnAction::Delivered),
        _ if peer_offers_dsn => None,
        _ => Some(ndr::DsnAction::Relayed),
    }
}

/// The success notices `NOTIFY=SUCCESS` asked for, of `recipients` just
/// delivered with `reply`: stored before their `Delivered` is recorded, so a
/// crash in between repeats the notice rather than losing it.
async fn notify_success(
    shared: &Shared,
    message_id: &str,
    queued: &Queued,
    recipients: &[String],
    (action, reply, hop): (Option<ndr::DsnAction>, &SmtpReply, Option<&Hop>),
    stage: &Stage,
) {
    let Some(action) = action else { return };
    let notify: Vec<FailedRecipient> = recipients
        .iter()
        .filter(|address| ndr::wants_success_notice(notify_of(queued, address)))
        .map(|address| report_line(queued, address, reply, hop))
        .collect();
    if notify.is_empty() {
        return;
    }
    let original = ndr::Original::queued(message_id, queued).in_trace(stage.context());
    let id =
        ndr::notify_until_stored(shared.log.as_ref(), &shared.ndr, &shared.producer, &original, &notify, action).await;
    if let Some(id) = id {
        tracing::info!(message_id, notice = %id, action = action.as_str(), "success notice sent");
    }
}

/// The delay notice due at this deferral of `message`, if one is: the first
/// deferral `delay_notice_after` or more after it was received, for the
/// recipients whose `NOTIFY` asks for delays (none given: failures and
/// delays, spec R-05). Returns the notice's message id, which the `Deferred`
/// records so that the replayed state knows the sender was told.
async fn delay_notice(
    shared: &Shared,
    message: &DueMessage,
    queued: Option<&Queued>,
    failure: &HopFailure,
    hop: Option<&Hop>,
    stage: &Stage,
) -> Option<String> {
    let after = shared.delay_notice_after?;
    let queued = queued?;
    if message.delay_notified || Utc::now() - message.received_at < after {
        return None;
    }
    let reply = failure.reply.clone().unwrap_or_else(|| {
        let (enhanced, text) = failure.error.split_once(' ').unwrap_or(("4.0.0", failure.error.as_str()));
        let enhanced = if enhanced.starts_with("4.") { enhanced } else { "4.0.0" };
        SmtpReply::new(451, enhanced, text)
    });
    let notify: Vec<FailedRecipient> = message
        .recipients
        .iter()
        .filter(|address| ndr::wants_delay_notice(notify_of(queued, address)))
        .map(|address| report_line(queued, address, &reply, hop))
        .collect();
    if notify.is_empty() {
        return None;
    }
    let original = ndr::Original::queued(&message.message_id, queued).in_trace(stage.context());
    let id = ndr::notify_until_stored(
        shared.log.as_ref(),
        &shared.ndr,
        &shared.producer,
        &original,
        &notify,
        ndr::DsnAction::Delayed,
    )
    .await?;
    tracing::info!(message_id = %message.message_id, notice = %id, "delay notice sent");
    Some(id)
}

/// Fails `recipients` of a message, with an NDR to its sender.
async fn fail(
    shared: &Shared,
    message_id: &str,
    queued: &Queued,
    attempt: u32,
    failures: Vec<(String, SmtpReply)>,
    hop: Option<&Hop>,
    stage: &Stage,
) -> Option<u64> {
    let mut last = None;
    let notify: Vec<FailedRecipient> = failures
        .iter()
        .filter(|(address, _)| ndr::wants_failure_notice(notify_of(queued, address)))
        .map(|(address, reply)| report_line(queued, address, reply, hop))
        .collect();
    let original = ndr::Original::queued(message_id, queued).in_trace(stage.context());
    let ndr_message_id =
        ndr::submit_until_stored(shared.log.as_ref(), &shared.ndr, &shared.producer, &original, &notify).await;
    // One event per distinct reply, each naming its recipients.
    let mut groups: Vec<(SmtpReply, Vec<String>)> = Vec::new();
    for (address, reply) in failures {
        match groups.iter_mut().find(|(r, _)| *r == reply) {
            Some((_, recipients)) => recipients.push(address),
            None => groups.push((reply, vec![address])),
        }
    }
    for (reply, recipients) in groups {
        tracing::info!(message_id, destination = %queued.destination.key(), code = reply.code, "failed");
        let event = DeliveryEvent::Failed(Failed {
            destination: queued.destination.clone(),
            attempt,
            recipients,
            reply,
            remote_host: hop.map(|h| h.host.clone()),
            remote_ip: hop.map(|h| h.addr.ip().to_string()),
            ndr_message_id: ndr_message_id.clone(),
            mail_from: None,
            size: None,
        });
        last = Some(record(shared, message_id, event, stage).await);
    }
    last
}

/// Expires messages with an NDR `4.4.7` (spec 11.3).
async fn expire(shared: &Shared, partition: u32, messages: &[ExpiredMessage]) -> Option<u64> {
    let mut last = None;
    for message in messages {
        let Some((queued, trace)) = queued_at(shared.log.as_ref(), partition, message.queued_offset).await else {
            continue;
        };
        let stage = Stage::start(telemetry::expiry_span(&message.message_id, &message.key), trace.as_ref());
        let expiry = SmtpReply::new(550, "4.4.7", "QUEUE.Expired; message expired");
        let notify: Vec<FailedRecipient> = message
            .recipients
            .iter()
            .filter(|address| ndr::wants_failure_notice(notify_of(&queued, address)))
            .map(|address| FailedRecipient {
                address: address.clone(),
                orcpt: None,
                reply: expiry.clone(),
                remote_mta: None,
            })
            .collect();
        let original = ndr::Original::queued(&message.message_id, &queued).in_trace(stage.context());
        let ndr_message_id =
            ndr::submit_until_stored(shared.log.as_ref(), &shared.ndr, &shared.producer, &original, &notify).await;
        tracing::info!(message_id = %message.message_id, destination = %message.key, "expired");
        let event = DeliveryEvent::Expired(Expired {
            destination: message.destination.clone(),
            attempts: message.attempts,
            recipients: message.recipients.clone(),
            reply: expiry,
            last_reply: message.last_error.as_deref().map(|text| SmtpReply::new(450, "4.4.7", text)),
            ndr_message_id,
        });
        last = Some(record(shared, &message.message_id, event, &stage).await);
    }
    last
}

/// The next hops of a destination, or why there are none.
async fn next_hops(shared: &Shared, work: &Due, first_recipient: &str) -> Resolution {
    let recipient_domain = first_recipient.rsplit_once('@').map_or("", |(_, d)| d);
    match work.destination.kind {
        DestinationKind::MailboxStore => match &shared.store {
            MailboxStoreConfig::Lmtp { address, .. } => {
                Resolution::Hops(vec![Hop { host: address.ip().to_string(), addr: *address }])
            }
            MailboxStoreConfig::Maildir { .. } => Resolution::Hops(vec![]),
        },
        DestinationKind::Internet => mx::resolve(&shared.resolver, &work.destination.name, shared.mx_port).await,
        DestinationKind::OnPremises | DestinationKind::Partner | DestinationKind::SmartHost => {
            let Some(connector) = shared.router.connector(&work.destination.name) else {
                return Resolution::Defer(format!(
                    "4.4.0 outbound connector {} is not configured",
                    work.destination.name
                ));
            };
            if connector.smart_hosts.is_empty() {
                return mx::resolve(&shared.resolver, recipient_domain, shared.mx_port).await;
            }
            let mut hops = Vec::new();
            let mut error = None;
            for host in &connector.smart_hosts {
                match mx::host_hops(&shared.resolver, &host.host, host.port).await {
                    Ok(found) => hops.extend(found),
                    Err(err) => error = Some(err),
                }
            }
            match (hops.is_empty(), error) {
                (false, _) => Resolution::Hops(hops),
                (true, Some(err)) => Resolution::Defer(format!("4.4.0 DNS query failed: {err}")),
                (true, None) => Resolution::Defer("4.4.0 no smart host has an address".to_string()),
            }
        }
    }
}

/// Client options for a destination: its connector's TLS, LMTP for the store.
fn options_for(shared: &Shared, work: &Due, require_tls: bool) -> ClientOptions {
    let mut options = shared.client.clone();
    if work.destination.kind == DestinationKind::MailboxStore {
        options.protocol = Protocol::Lmtp;
        options.tls = TlsPolicy::Opportunistic;
        return options;
    }
    if let Some(connector) = shared.router.connector(&work.destination.name) {
        options.tls = connector_tls(connector);
    }
    if require_tls && matches!(options.tls, TlsPolicy::Opportunistic) {
        options.tls = TlsPolicy::EncryptionOnly;
    }
    options
}

/// Defers the whole destination after a failure that is not one message's.
async fn defer_destination(
    shared: &Shared,
    work: &Due,
    (message, queued): (&DueMessage, Option<&Queued>),
    failure: &HopFailure,
    hop: Option<&Hop>,
    stage: &Stage,
) -> u64 {
    let now = Utc::now();
    let delay_notice = delay_notice(shared, message, queued, failure, hop, stage).await;
    tracing::info!(destination = %work.key, attempt = work.destination_attempt, error = %failure.error, "destination deferred");
    let event = DeliveryEvent::Deferred(Deferred {
        destination: work.destination.clone(),
        attempt: work.destination_attempt.max(message.attempt),
        recipients: message.recipients.clone(),
        scope: Scope::Destination,
        reply: failure.reply.clone(),
        error: Some(failure.error.clone()),
        remote_host: hop.map(|h| h.host.clone()),
        remote_ip: hop.map(|h| h.addr.ip().to_string()),
        next_attempt_at: shared.schedule.next_attempt(work.destination_attempt, now),
        delay_notice,
    });
    record(shared, &message.message_id, event, stage).await
}

/// Delivers the due messages of one destination, in order.
/// Most `Delivered` appends a delivery task has in flight: the next message is
/// sent while the previous one's event is being made durable. A crash loses at
/// most these (the messages are then delivered again: at-least-once).
const MAX_IN_FLIGHT: usize = 32;

/// Outcome appends in flight, and the highest offset appended so far.
#[derive(Debug, Default)]
struct InFlight {
    handles: std::collections::VecDeque<tokio::task::JoinHandle<u64>>,
    last: Option<u64>,
}

impl InFlight {
    fn note(&mut self, offset: Option<u64>) {
        self.last = self.last.max(offset);
    }

    /// The attempt's `stage` ends once the event is durable.
    async fn push(&mut self, shared: &Arc<Shared>, message_id: &str, event: DeliveryEvent, stage: &Stage) {
        if self.handles.len() >= MAX_IN_FLIGHT
            && let Some(handle) = self.handles.pop_front()
        {
            self.note(handle.await.ok());
        }
        let (shared, message_id, stage) = (Arc::clone(shared), message_id.to_string(), stage.clone());
        self.handles.push_back(tokio::spawn(async move { record(&shared, &message_id, event, &stage).await }));
    }

    async fn finish(mut self) -> Option<u64> {
        while let Some(handle) = self.handles.pop_front() {
            self.note(handle.await.ok());
        }
        self.last
    }
}

/// The due messages of one destination, handed out in order to the
/// connections delivering them; stopped at the first destination-level failure.
#[derive(Debug)]
struct Source {
    queue: std::sync::Mutex<std::collections::VecDeque<DueMessage>>,
    stopped: std::sync::atomic::AtomicBool,
    /// A drain stops handing out messages too; the rest stay queued.
    drain: crate::drain::Drain,
}

impl Source {
    fn new(messages: Vec<DueMessage>, drain: crate::drain::Drain) -> Self {
        Self {
            queue: std::sync::Mutex::new(messages.into()),
            stopped: std::sync::atomic::AtomicBool::new(false),
            drain,
        }
    }

    /// The next message, in receipt order; `None` once stopped, draining or empty.
    fn next(&self) -> Option<DueMessage> {
        if self.stopped.load(std::sync::atomic::Ordering::Acquire) || self.drain.is_draining() {
            return None;
        }
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front()
    }

    /// Stops handing out messages; true for the one caller that stopped it
    /// (and so records the destination's deferral, once).
    fn stop(&self) -> bool {
        !self.stopped.swap(true, std::sync::atomic::Ordering::AcqRel)
    }
}

/// Delivers the due messages of one destination over up to
/// `max_connections_per_destination` connections, each taking the next
/// message in receipt order (so messages *start* in order, as in Postfix; with
/// one connection they also arrive in order). Returns the highest offset appended.
async fn deliver(shared: &Arc<Shared>, partition: u32, work: Due) -> Option<u64> {
    let connections = shared.max_connections_per_destination.clamp(1, work.messages.len().max(1));
    let work = Arc::new(work);
    let source = Arc::new(Source::new(work.messages.clone(), shared.drain.clone()));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (shared, work, source) = (Arc::clone(shared), Arc::clone(&work), Arc::clone(&source));
        workers.spawn(async move {
            let mut in_flight = InFlight::default();
            let last = deliver_batch(&shared, partition, &work, &source, &mut in_flight).await;
            last.max(in_flight.finish().await)
        });
    }
    let mut last = None;
    while let Some(done) = workers.join_next().await {
        last = last.max(done.ok().flatten());
    }
    last
}

async fn deliver_batch(
    shared: &Arc<Shared>,
    partition: u32,
    work: &Due,
    source: &Source,
    in_flight: &mut InFlight,
) -> Option<u64> {
    let mut last = None;
    let first = work.messages.first()?;
    let first_recipient = first.recipients.first().cloned().unwrap_or_default();
    let maildir = match (&work.destination.kind, &shared.store) {
        (DestinationKind::MailboxStore, MailboxStoreConfig::Maildir { path }) => Some(path.clone()),
        _ => None,
    };
    let hops = if maildir.is_some() {
        Vec::new()
    } else {
        match next_hops(shared, work, &first_recipient).await {
            Resolution::Hops(hops) => hops,
            Resolution::Defer(error) => {
                if !source.stop() {
                    return None;
                }
                let queued = queued_at(shared.log.as_ref(), partition, first.queued_offset).await;
                let stage = attempt_stage(work, first, queued.as_ref().and_then(|q| q.1.as_ref()));
                let failure = local_failure(error);
                let first = (first, queued.as_ref().map(|q| &q.0));
                return Some(defer_destination(shared, work, first, &failure, None, &stage).await);
            }
            Resolution::Fail(reply) => {
                while let Some(message) = source.next() {
                    let Some((queued, trace)) = queued_at(shared.log.as_ref(), partition, message.queued_offset).await
                    else {
                        continue;
                    };
                    let stage = attempt_stage(work, &message, trace.as_ref());
                    let failures = message.recipients.iter().map(|r| (r.clone(), reply.clone())).collect();
                    let id = &message.message_id;
                    last = fail(shared, id, &queued, message.attempt, failures, None, &stage).await.max(last);
                }
                return last;
            }
        }
    };
    let mut connection: Option<Connection> = None;
    let mut sent_on_connection = 0;
    while let Some(message) = source.next() {
        let message = &message;
        let Some((queued, trace)) = queued_at(shared.log.as_ref(), partition, message.queued_offset).await else {
            // Skipping it would send the messages queued after it first
            // (spec 11.4): the destination waits, in order, for its next try.
            tracing::error!(message_id = %message.message_id, "queued event unreadable; destination deferred");
            if !source.stop() {
                break;
            }
            let stage = attempt_stage(work, message, None);
            let failure = local_failure("4.3.0 queued event unreadable".to_string());
            last = Some(defer_destination(shared, work, (message, None), &failure, None, &stage).await).max(last);
            break;
        };
        // Ends when this message's outcome is recorded (or the loop moves on).
        let stage = attempt_stage(work, message, trace.as_ref());
        let attempt = Attempt { message, queued: &queued, stage: &stage };
        let content = match content::load(shared.log.as_ref(), &message.message_id, &queued.content).await {
            Ok(content) if work.destination.kind == DestinationKind::MailboxStore => {
                super::render::render(&queued, &content)
            }
            Ok(content) => shared.dkim.sign(super::render::render(&queued, &content)),
            Err(err) => {
                tracing::error!(error = %err, message_id = %message.message_id, "content unreadable; deferred");
                let failure = local_failure(format!("4.3.0 content unreadable: {err}"));
                let message = (message, Some(&queued));
                last = Some(defer_message(shared, work, message, &failure, None, &stage).await).max(last);
                continue;
            }
        };
        if let Some(root) = &maildir {
            last = Some(deliver_maildir(shared, work, &attempt, root, content).await).max(last);
            continue;
        }
        if connection.is_none() || sent_on_connection >= shared.max_messages_per_connection {
            if let Some(old) = connection.take() {
                old.quit().await;
            }
            let options = options_for(shared, work, queued.require_tls);
            match open_any(&hops, &options).instrument(stage.span().clone()).await {
                Ok(opened) => {
                    connection = Some(opened);
                    sent_on_connection = 0;
                }
                Err((failure, hop)) if failure.permanent => {
                    // Every host refused to take mail at all: the message fails.
                    let reply = failure.reply.clone().unwrap_or_else(|| SmtpReply::new(554, "5.0.350", &failure.error));
                    let failures = message.recipients.iter().map(|r| (r.clone(), reply.clone())).collect();
                    let id = &message.message_id;
                    last = fail(shared, id, &queued, message.attempt, failures, hop.as_ref(), &stage).await.max(last);
                    continue;
                }
                Err((failure, hop)) => {
                    if !source.stop() {
                        return last;
                    }
                    let message = (message, Some(&queued));
                    let deferred = defer_destination(shared, work, message, &failure, hop.as_ref(), &stage).await;
                    return Some(deferred).max(last);
                }
            }
        }
        let Some(open) = connection.as_mut() else { break };
        let recipients: Vec<_> = queued
            .recipients
            .iter()
            .filter(|r| message.recipients.iter().any(|p| p.eq_ignore_ascii_case(&r.address)))
            .map(|r| {
                let mut r = r.clone();
                if work.destination.kind == DestinationKind::MailboxStore
                    && queued.folder.is_some()
                    && matches!(shared.store, MailboxStoreConfig::Lmtp { junk_detail: true, .. })
                    && let Some((local, domain)) = r.address.rsplit_once('@')
                {
                    r.address = format!("{local}+{}@{domain}", queued.folder.as_deref().unwrap_or_default());
                }
                r
            })
            .collect();
        let transaction = Transaction {
            mail_from: &queued.mail_from,
            recipients: &recipients,
            dsn_return: queued.dsn_return,
            dsn_envid: queued.dsn_envid.as_deref(),
            body: queued.body,
            smtputf8: queued.smtputf8,
        };
        sent_on_connection += 1;
        let hop = open.hop().clone();
        match open.send(&transaction, &content).instrument(stage.span().clone()).await {
            Ok(outcomes) => {
                let tls = open.tls().map(|(protocol, cipher)| TlsInfo::new(protocol, cipher));
                let answered = Answered { hop: &hop, offers_dsn: open.capabilities().dsn, tls };
                last = record_outcomes(shared, work, &attempt, outcomes, answered, in_flight).await.max(last);
            }
            Err(failure) => {
                if !source.stop() {
                    return last;
                }
                let message = (message, Some(&queued));
                return Some(defer_destination(shared, work, message, &failure, Some(&hop), &stage).await).max(last);
            }
        }
    }
    if let Some(open) = connection {
        open.quit().await;
    }
    last
}

/// A failure decided here, not by a next hop.
fn local_failure(error: String) -> HopFailure {
    HopFailure { stage: super::client::Stage::Connect, reply: None, error, permanent: false }
}

/// Tries the hops in order; the first that opens wins. The failure is
/// permanent only when every hop refused permanently (`5xx` greeting).
async fn open_any(hops: &[Hop], options: &ClientOptions) -> Result<Connection, (HopFailure, Option<Hop>)> {
    let mut last = (local_failure("4.4.0 no next hop".to_string()), None);
    let mut all_permanent = !hops.is_empty();
    for hop in hops {
        match Connection::open(hop, options).await {
            Ok(connection) => return Ok(connection),
            Err(failure) => {
                tracing::info!(host = %hop.host, addr = %hop.addr, error = %failure.error, "next hop failed");
                all_permanent &= failure.permanent;
                last = (failure, Some(hop.clone()));
            }
        }
    }
    last.0.permanent = all_permanent;
    Err(last)
}

async fn defer_message(
    shared: &Shared,
    work: &Due,
    (message, queued): (&DueMessage, Option<&Queued>),
    failure: &HopFailure,
    hop: Option<&Hop>,
    stage: &Stage,
) -> u64 {
    let delay_notice = delay_notice(shared, message, queued, failure, hop, stage).await;
    tracing::info!(message_id = %message.message_id, destination = %work.key, error = %failure.error, "message deferred");
    let event = DeliveryEvent::Deferred(Deferred {
        destination: work.destination.clone(),
        attempt: message.attempt,
        recipients: message.recipients.clone(),
        scope: Scope::Message,
        reply: failure.reply.clone(),
        error: Some(failure.error.clone()),
        remote_host: hop.map(|h| h.host.clone()),
        remote_ip: hop.map(|h| h.addr.ip().to_string()),
        next_attempt_at: shared.schedule.next_attempt(message.attempt, Utc::now()),
        delay_notice,
    });
    record(shared, &message.message_id, event, stage).await
}

/// One attempt at one message: its place in the queue, its `Queued` event,
/// and the stage (`delivery.attempt` span) its outcome events continue.
#[derive(Debug, Clone, Copy)]
struct Attempt<'a> {
    message: &'a DueMessage,
    queued: &'a Queued,
    stage: &'a Stage,
}

/// The `delivery.attempt` stage of `message`, a child of its `Queued` event's `trace`.
fn attempt_stage(work: &Due, message: &DueMessage, trace: Option<&TraceContext>) -> Stage {
    Stage::start(telemetry::delivery_span(&message.message_id, &work.key, message.attempt), trace)
}

/// The hop that answered an attempt, as the connection saw it.
struct Answered<'a> {
    hop: &'a Hop,
    /// The hop offers DSN (RFC 3461), so it sends success notices itself.
    offers_dsn: bool,
    /// Protocol and cipher suite, when the connection is encrypted.
    tls: Option<TlsInfo>,
}

/// Records what the next hop said for each recipient.
async fn record_outcomes(
    shared: &Arc<Shared>,
    work: &Due,
    attempt: &Attempt<'_>,
    outcomes: Vec<super::client::RecipientOutcome>,
    answered: Answered<'_>,
    in_flight: &mut InFlight,
) -> Option<u64> {
    let Attempt { message, queued, stage } = *attempt;
    let Answered { hop, offers_dsn: peer_offers_dsn, tls } = answered;
    let mut last = None;
    // LMTP with a `+Junk` detail answers for the rewritten address: map back by position.
    let original = |index: usize, address: &str| {
        message.recipients.get(index).filter(|_| address.contains('+')).cloned().unwrap_or_else(|| address.to_string())
    };
    let mut delivered: Vec<(SmtpReply, Vec<String>)> = Vec::new();
    let mut deferred: Vec<(SmtpReply, Vec<String>)> = Vec::new();
    let mut failed = Vec::new();
    for (index, outcome) in outcomes.into_iter().enumerate() {
        let address = original(index, &outcome.address);
        let bucket = match outcome.outcome {
            Outcome::Delivered => &mut delivered,
            Outcome::Deferred => &mut deferred,
            Outcome::Failed => {
                failed.push((address, outcome.reply));
                continue;
            }
        };
        match bucket.iter_mut().find(|(r, _)| *r == outcome.reply) {
            Some((_, list)) => list.push(address),
            None => bucket.push((outcome.reply, vec![address])),
        }
    }
    for (reply, recipients) in delivered {
        tracing::info!(message_id = %message.message_id, destination = %work.key, host = %hop.host, "delivered");
        observe_latency(queued);
        let action = success_action(work.destination.kind, peer_offers_dsn);
        notify_success(shared, &message.message_id, queued, &recipients, (action, &reply, Some(hop)), stage).await;
        let event = DeliveryEvent::Delivered(Delivered {
            destination: work.destination.clone(),
            attempt: message.attempt,
            recipients,
            remote_host: Some(hop.host.clone()),
            remote_ip: Some(hop.addr.ip().to_string()),
            reply,
            tls: tls.clone(),
        });
        in_flight.push(shared, &message.message_id, event, stage).await;
    }
    for (reply, recipients) in deferred {
        let failure = HopFailure {
            stage: super::client::Stage::Rcpt,
            reply: Some(reply.clone()),
            error: reply.to_string(),
            permanent: false,
        };
        let part = DueMessage { recipients: recipients.clone(), ..message.clone() };
        let delay_notice = delay_notice(shared, &part, Some(queued), &failure, Some(hop), stage).await;
        let event = DeliveryEvent::Deferred(Deferred {
            destination: work.destination.clone(),
            attempt: message.attempt,
            recipients,
            scope: Scope::Message,
            reply: Some(reply),
            error: None,
            remote_host: Some(hop.host.clone()),
            remote_ip: Some(hop.addr.ip().to_string()),
            next_attempt_at: shared.schedule.next_attempt(message.attempt, Utc::now()),
            delay_notice,
        });
        last = Some(record(shared, &message.message_id, event, stage).await);
    }
    if !failed.is_empty() {
        last = fail(shared, &message.message_id, queued, message.attempt, failed, Some(hop), stage).await.or(last);
    }
    last
}

/// Delivers one message into Maildir, one file per recipient mailbox.
async fn deliver_maildir(
    shared: &Shared,
    work: &Due,
    attempt: &Attempt<'_>,
    root: &std::path::Path,
    content: Vec<u8>,
) -> u64 {
    let Attempt { message, queued, stage } = *attempt;
    let content = Arc::new(content);
    let mut delivered = Vec::new();
    let mut undelivered = Vec::new();
    let mut error = None;
    for recipient in &message.recipients {
        let (root, mailbox, folder, content) =
            (root.to_path_buf(), recipient.to_ascii_lowercase(), queued.folder.clone(), Arc::clone(&content));
        let written = tokio::task::spawn_blocking(move || {
            crate::mailbox::maildir::deliver(&root, &mailbox, folder.as_deref(), &content)
        })
        .await;
        match written {
            Ok(Ok(_)) => delivered.push(recipient.clone()),
            Ok(Err(err)) => {
                undelivered.push(recipient.clone());
                error = Some(err.to_string());
            }
            Err(err) => {
                undelivered.push(recipient.clone());
                error = Some(err.to_string());
            }
        }
    }
    let mut last = 0;
    if !delivered.is_empty() {
        let reply = SmtpReply::new(250, "2.0.0", "Delivered to Maildir");
        let action = Some(ndr::DsnAction::Delivered);
        notify_success(shared, &message.message_id, queued, &delivered, (action, &reply, None), stage).await;
        let event = DeliveryEvent::Delivered(Delivered {
            destination: work.destination.clone(),
            attempt: message.attempt,
            recipients: delivered,
            remote_host: None,
            remote_ip: None,
            reply,
            tls: None,
        });
        tracing::info!(message_id = %message.message_id, "delivered to Maildir");
        observe_latency(queued);
        last = record(shared, &message.message_id, event, stage).await;
    }
    if let Some(error) = error {
        let failure = local_failure(format!("4.3.0 mailbox store: {error}"));
        let remaining = DueMessage { recipients: undelivered, ..message.clone() };
        last = defer_message(shared, work, (&remaining, Some(queued)), &failure, None, stage).await;
    }
    last
}
