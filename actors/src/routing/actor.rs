//! The routing actor: a member of the `mailflow-routing` consumer group on
//! `mailflow.verdicts`. For each `VerdictReached` it calls [`Router::route`],
//! appends one `Queued` per destination to `mailflow.delivery` (key: the
//! destination), records unroutable recipients as `Failed` (attempt 0) with
//! their NDR, and only then commits. A crash in between routes the verdict
//! again; the delivery state drops a `Queued` for a message already in the
//! destination's queue, so the copy is not delivered twice. Routing a verdict
//! is a `routing` span in the message's trace (`crate::telemetry`).

use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, AsyncContext as _, Context, WrapFuture as _};
use chrono::Utc;
use mailflow_events::delivery::{DeliveryEvent, Failed};
use mailflow_events::log::{EventLog, GroupMember, Record};
use mailflow_events::verdicts::{MessageQuarantined, VerdictEvent};
use mailflow_events::{Envelope, TraceContext, topic};
use tracing::Instrument as _;

use super::Router;
use crate::event_log::{append_until_durable, join_until_member};
use crate::ndr::{self, FailedRecipient, NdrPolicy};
use crate::telemetry::{self, Stage};

/// Consumer group of the routing role.
pub const GROUP: &str = "mailflow-routing";

/// What the routing actor works with.
#[derive(Clone)]
pub struct RoutingActor {
    /// The event log.
    pub log: Arc<dyn EventLog>,
    /// Routing tables.
    pub router: Arc<Router>,
    /// NDR sender and policy.
    pub ndr: Arc<NdrPolicy>,
    /// Producer name in events.
    pub producer: String,
    /// Ends the loop after the record in hand (see `crate::drain`).
    pub drain: crate::drain::Drain,
}

impl std::fmt::Debug for RoutingActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoutingActor").field("producer", &self.producer).finish_non_exhaustive()
    }
}

impl Actor for RoutingActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let worker = self.clone();
        ctx.spawn(worker.run().into_actor(self));
    }
}

impl RoutingActor {
    async fn run(self) {
        let _working = self.drain.working();
        let mut member = join_until_member(self.log.as_ref(), GROUP, &[topic::VERDICTS]).await;
        while !self.drain.is_draining() {
            match member.poll(Duration::from_secs(1)).await {
                Ok(Some(record)) => self.handle(member.as_mut(), record).await,
                Ok(None) => crate::metrics::metrics().assigned(GROUP, &member.assignment()),
                Err(err) => {
                    tracing::warn!(error = %err, "routing role: poll failed");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        crate::event_log::leave(member, "routing").await;
    }

    async fn handle(&self, member: &mut dyn GroupMember, record: Record) {
        match Envelope::<VerdictEvent>::from_json(&record.value) {
            Ok(envelope) => match &envelope.event {
                VerdictEvent::VerdictReached(verdict) => match &verdict.received {
                    Some(received) => {
                        let trace = envelope.trace_context.as_ref();
                        self.route(&envelope.message_id, verdict, received, trace).await
                    }
                    None => {
                        tracing::error!(message_id = %envelope.message_id, "verdict without its message; not routable")
                    }
                },
                VerdictEvent::MessageReleased(released) => {
                    match held_verdict(self.log.as_ref(), record.position.partition, released).await {
                        Some(verdict) => {
                            tracing::info!(message_id = %envelope.message_id, operator = %released.operator, "released from quarantine");
                            if let Some(received) = &verdict.received {
                                let trace = envelope.trace_context.as_ref();
                                self.route(&envelope.message_id, &verdict, received, trace).await;
                            }
                        }
                        None => tracing::error!(
                            message_id = %envelope.message_id,
                            offset = released.quarantined_offset,
                            "released message's quarantine record not found; not routable"
                        ),
                    }
                }
                _ => {}
            },
            Err(err) => {
                tracing::error!(error = %err, offset = record.position.offset, "undecodable event on mailflow.verdicts; skipped")
            }
        }
        let (partition, next) = (record.position.partition, record.position.offset + 1);
        match member.commit(topic::VERDICTS, partition, next).await {
            Ok(()) => crate::metrics::metrics().consumed(GROUP, topic::VERDICTS, partition, next),
            Err(err) => tracing::warn!(error = %err, "commit failed; the verdict may be routed again"),
        }
    }

    /// Routes one verdict, in a `routing` span that continues `trace`.
    async fn route(
        &self,
        message_id: &str,
        verdict: &mailflow_events::verdicts::VerdictReached,
        received: &mailflow_events::received::MessageReceived,
        trace: Option<&TraceContext>,
    ) {
        let stage = Stage::start(telemetry::routing_span(message_id), trace);
        self.route_in(message_id, verdict, received, &stage).instrument(stage.span().clone()).await;
    }

    async fn route_in(
        &self,
        message_id: &str,
        verdict: &mailflow_events::verdicts::VerdictReached,
        received: &mailflow_events::received::MessageReceived,
        stage: &Stage,
    ) {
        let routed = self.router.route(verdict, received);
        stage.span().record("mailflow.destination_count", routed.queued.len());
        stage.span().record("mailflow.unroutable_count", routed.unroutable.len());
        for queued in routed.queued {
            let key = queued.destination.key();
            tracing::info!(message_id, destination = %key, recipients = queued.recipients.len(), "routed");
            let event = Envelope::new(message_id, &self.producer, Utc::now(), DeliveryEvent::Queued(queued))
                .with_trace_context(stage.context());
            append_until_durable(self.log.as_ref(), topic::DELIVERY, key.as_bytes(), &event.to_json()).await;
        }
        for unroutable in routed.unroutable {
            let failed: Vec<FailedRecipient> = unroutable
                .recipients
                .iter()
                .filter(|address| {
                    let original = received.recipients.iter().find(|r| r.address.eq_ignore_ascii_case(address));
                    ndr::wants_failure_notice(original.map(|r| r.notify.as_slice()))
                })
                .map(|address| FailedRecipient {
                    address: address.clone(),
                    orcpt: None,
                    reply: unroutable.reply.clone(),
                    remote_mta: None,
                })
                .collect();
            let original = ndr::Original::received(message_id, received).in_trace(stage.context());
            let ndr_message_id =
                ndr::submit_until_stored(self.log.as_ref(), &self.ndr, &self.producer, &original, &failed).await;
            let key = unroutable.destination.key();
            tracing::info!(message_id, destination = %key, reply = %unroutable.reply.text, "not routable");
            let event = DeliveryEvent::Failed(Failed {
                destination: unroutable.destination,
                attempt: 0,
                recipients: unroutable.recipients,
                reply: unroutable.reply,
                remote_host: None,
                remote_ip: None,
                ndr_message_id,
                // No `Queued` precedes it: the journal learns the sender here.
                mail_from: Some(received.envelope.mail_from.clone()),
                size: Some(received.content.size),
            });
            let event =
                Envelope::new(message_id, &self.producer, Utc::now(), event).with_trace_context(stage.context());
            append_until_durable(self.log.as_ref(), topic::DELIVERY, key.as_bytes(), &event.to_json()).await;
        }
    }
}

/// The verdict a released message was held with, made a delivering one for
/// the released recipients: what the quarantine record at
/// `released.quarantined_offset` holds, with action `Deliver` (spec 9.3:
/// released mail goes to the inbox).
pub async fn held_verdict(
    log: &dyn mailflow_events::log::EventLog,
    partition: u32,
    released: &mailflow_events::verdicts::MessageReleased,
) -> Option<mailflow_events::verdicts::VerdictReached> {
    let (_, quarantined) = quarantine_at(log, partition, released.quarantined_offset).await.ok()??;
    let mut verdict = *quarantined.held?;
    verdict.action = mailflow_events::verdicts::PolicyAction::Deliver;
    verdict.recipients.retain(|r| released.recipients.iter().any(|x| x.eq_ignore_ascii_case(r)));
    Some(verdict)
}

/// The `MessageQuarantined` at `offset` of `mailflow.verdicts` partition
/// `partition` (where a `MessageReleased` points), with the id of the message
/// it holds; `Ok(None)` when the record there is not a quarantine.
pub async fn quarantine_at(
    log: &dyn mailflow_events::log::EventLog,
    partition: u32,
    offset: u64,
) -> Result<Option<(String, MessageQuarantined)>, mailflow_events::log::LogError> {
    let records = log.read(topic::VERDICTS, partition, offset, 1).await?;
    let Some(record) = records.first().filter(|r| r.position.offset == offset) else { return Ok(None) };
    Ok(match Envelope::<VerdictEvent>::from_json(&record.value) {
        Ok(Envelope { message_id, event: VerdictEvent::MessageQuarantined(quarantined), .. }) => {
            Some((message_id, quarantined))
        }
        _ => None,
    })
}
