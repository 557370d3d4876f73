//! given(source event, what the index knows) / then(journal records), on the
//! golden fixtures of the internal topics.

use mailflow_events::delivery::{DeliveryEvent, DestinationKind};
use mailflow_events::journal::{DsnKind, JournalEvent, TraceStatus, event_id_of};
use mailflow_events::received::{ReceivedEvent, SmtpReply};
use mailflow_events::verdicts::{PolicyAction, SpamVerdict, VerdictEvent};
use mailflow_events::{Envelope, topic};

use super::*;
use crate::journal::index::QueuedIndex;

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!("../../../../events/tests/fixtures/v1/", $name))
    };
}

fn decode<E: mailflow_events::envelope::TaggedEvent>(json: &str) -> Envelope<E> {
    Envelope::from_json(json.as_bytes()).expect("fixture decodes")
}

fn projector() -> Projector {
    Projector { hostname: "mx1.contoso.com".into(), producer: "mailflow/journal".into() }
}

fn at(topic: &str, offset: u64) -> Source<'_> {
    Source { topic, partition: 2, offset }
}

fn types(records: &[Envelope<JournalEvent>]) -> Vec<&'static str> {
    records.iter().map(|r| r.event.trace_event_id()).collect()
}

/// The fixture's verdict with the fixture's accepted message attached, as the verdict actor writes it.
fn verdict_with_message(json: &str) -> Envelope<VerdictEvent> {
    let mut verdict: Envelope<VerdictEvent> = decode(json);
    let received: Envelope<ReceivedEvent> = decode(fixture!("received.MessageReceived.json"));
    let (VerdictEvent::VerdictReached(v), ReceivedEvent::MessageReceived(m)) = (&mut verdict.event, received.event)
    else {
        panic!("fixtures of the expected types")
    };
    v.received = Some(Box::new(m));
    verdict
}

#[test]
fn an_accepted_message_yields_one_receive_with_its_content_reference_and_a_deterministic_id() {
    let source: Envelope<ReceivedEvent> = decode(fixture!("received.MessageReceived.json"));
    let records = projector().received(at(topic::RECEIVED, 7), &source);
    assert_eq!(types(&records), ["RECEIVE"]);
    let record = &records[0];
    let JournalEvent::Received(received) = &record.event else { panic!("a Received record") };
    let ReceivedEvent::MessageReceived(message) = &source.event else { panic!("a MessageReceived fixture") };
    assert_eq!(received.content.as_ref(), Some(&message.content));
    assert_eq!(received.record.status, TraceStatus::Pending);
    assert_eq!(received.record.sender, message.envelope.mail_from);
    assert_eq!(received.record.recipients.len(), message.recipients.len());
    assert_eq!(received.record.size, message.content.size);
    assert_eq!(received.record.client_ip.as_deref(), Some(message.session.client_ip.as_str()));
    assert_eq!(received.record.server_hostname.as_deref(), Some("mx1.contoso.com"));
    assert_eq!(received.record.subject, message.subject);
    assert_eq!(received.received_at, message.received_at);
    assert_eq!(received.record.record_id.as_deref(), Some("mailflow.received/2/7/0"));
    assert_eq!(record.event_id, event_id_of("mailflow.received/2/7/0"));
    assert_eq!((&record.message_id, record.occurred_at), (&source.message_id, source.occurred_at));
    assert_eq!(record.trace_context, source.trace_context);
    // A crash replays the source: the same records, the same ids.
    assert_eq!(projector().received(at(topic::RECEIVED, 7), &source), records);
}

#[test]
fn a_recipient_refused_with_550_is_a_failed_record_with_no_attempt_and_the_reply() {
    let source: Envelope<ReceivedEvent> = decode(fixture!("received.RecipientRejected.json"));
    let records = projector().received(at(topic::RECEIVED, 3), &source);
    assert_eq!(types(&records), ["FAIL"]);
    let JournalEvent::Failed(failed) = &records[0].event else { panic!("a Failed record") };
    assert_eq!((failed.attempts, failed.record.status), (0, TraceStatus::Failed));
    assert_eq!(failed.reply, SmtpReply::new(550, "5.4.1", "Recipient address rejected: Access denied"));
    assert_eq!(failed.record.recipients, ["a.nobody@contoso.com"]);
    assert_eq!(failed.record.sender, "jane@example.com");
    assert!(failed.record.detail.contains("unknown_recipient"), "{}", failed.record.detail);
}

#[test]
fn a_temporary_refusal_has_no_status_since_the_client_tries_again() {
    let source: Envelope<ReceivedEvent> = decode(fixture!("received.ConnectionRefused.json"));
    let records = projector().received(at(topic::RECEIVED, 0), &source);
    let JournalEvent::Failed(failed) = &records[0].event else { panic!("a Failed record") };
    assert_eq!((failed.attempts, failed.record.status, failed.reply.code), (0, TraceStatus::None, 421));
    assert_eq!((failed.record.sender.as_str(), failed.record.client_ip.as_deref()), ("", Some("198.51.100.200")));
}

#[test]
fn a_verdict_yields_the_spam_agents_agentinfo_then_one_per_rule_that_fired() {
    let source = verdict_with_message(fixture!("verdicts.VerdictReached.json"));
    let records = projector().verdict(at(topic::VERDICTS, 11), &source);
    assert_eq!(types(&records), ["AGENTINFO", "AGENTINFO"]);
    let JournalEvent::Filtered(agent) = &records[0].event else { panic!("a Filtered record") };
    assert_eq!((agent.verdict, agent.scl, agent.action), (SpamVerdict::Spam, 5, PolicyAction::MoveToJunk));
    assert_eq!(agent.record.status, TraceStatus::FilteredAsSpam, "junk is filtered as spam");
    assert_eq!(agent.record.sender, "jane@example.com");
    assert_eq!(agent.rules_matched, ["Tag external mail"]);
    assert_eq!(
        agent.record.custom_data.as_deref(),
        Some("S:SFA=SUM|SFV=SPM|IPV=NLI|CAT=SPM|SCL=5|BCL=3|CIP=203.0.113.25|DIR=INB")
    );
    let JournalEvent::Filtered(rule) = &records[1].event else { panic!("a Filtered record") };
    assert_eq!(
        rule.record.custom_data.as_deref(),
        Some("S:TRA=ETR|ruleId=Tag external mail|st=2024-11-23T09:14:05.733Z|action=PrependSubject|mode=Enforce")
    );
    let ids: Vec<_> = records.iter().map(|r| r.event.record().record_id.clone().unwrap_or_default()).collect();
    assert_eq!(ids, ["mailflow.verdicts/2/11/0", "mailflow.verdicts/2/11/1"]);
    assert_ne!(records[0].event_id, records[1].event_id);
}

#[test]
fn quarantine_and_redirect_set_the_status_and_a_redirect_names_the_new_recipients() {
    let mut source = verdict_with_message(fixture!("verdicts.VerdictReached.json"));
    let VerdictEvent::VerdictReached(verdict) = &mut source.event else { panic!("a verdict") };
    verdict.rules_matched.clear();
    verdict.action = PolicyAction::Quarantine;
    let records = projector().verdict(at(topic::VERDICTS, 0), &source);
    assert_eq!(records[0].event.record().status, TraceStatus::Quarantined);

    let VerdictEvent::VerdictReached(verdict) = &mut source.event else { panic!("a verdict") };
    verdict.action = PolicyAction::Redirect;
    verdict.redirect_to = vec!["review@contoso.com".into()];
    let records = projector().verdict(at(topic::VERDICTS, 0), &source);
    assert_eq!(types(&records), ["AGENTINFO", "REDIRECT"]);
    let JournalEvent::Redirected(redirected) = &records[1].event else { panic!("a Redirected record") };
    assert_eq!(redirected.redirected_to, ["review@contoso.com"]);
    assert_eq!(redirected.record.recipients, ["anna@contoso.com", "ben@contoso.com"]);
    assert_eq!(redirected.record.status, TraceStatus::None);

    let VerdictEvent::VerdictReached(verdict) = &mut source.event else { panic!("a verdict") };
    (verdict.verdict, verdict.action, verdict.redirect_to) = (SpamVerdict::NotSpam, PolicyAction::Deliver, vec![]);
    let records = projector().verdict(at(topic::VERDICTS, 0), &source);
    assert_eq!(records[0].event.record().status, TraceStatus::Pending);
}

#[test]
fn a_release_is_a_release_record_with_the_operator_the_held_messages_columns_and_status_pending() {
    let source: Envelope<VerdictEvent> = decode(fixture!("verdicts.MessageReleased.json"));
    let quarantined: Envelope<VerdictEvent> = decode(fixture!("verdicts.MessageQuarantined.json"));
    let VerdictEvent::MessageQuarantined(mut held) = quarantined.event.clone() else { panic!("a quarantine fixture") };
    // The verdict it holds, with the message, as the verdict actor writes it.
    let VerdictEvent::VerdictReached(verdict) = verdict_with_message(fixture!("verdicts.VerdictReached.json")).event
    else {
        panic!("a verdict")
    };
    held.held = Some(Box::new(verdict));

    let records = projector().released(at(topic::VERDICTS, 420), &source, Some(&held));
    assert_eq!(types(&records), ["RELEASE"]);
    let JournalEvent::Released(released) = &records[0].event else { panic!("a Released record") };
    assert_eq!(
        (released.operator.as_str(), released.reason.as_deref()),
        ("admin", Some("false positive, confirmed with the sender"))
    );
    assert_eq!(released.record.detail, "Released from quarantine by admin: false positive, confirmed with the sender");
    // Spec 15.2: out of quarantine, on its way.
    assert_eq!(released.record.status, TraceStatus::Pending);
    assert_eq!(released.record.recipients, ["finance@contoso.com"]);
    // The columns are the held message's (spec 15.5: every record repeats them).
    assert_eq!((released.record.sender.as_str(), released.record.size), ("jane@example.com", 616));
    assert!(released.record.client_ip.is_some() && released.record.subject.is_some(), "{released:?}");
    assert_eq!((records[0].occurred_at, &records[0].message_id), (source.occurred_at, &source.message_id));
    assert_eq!(released.record.record_id.as_deref(), Some("mailflow.verdicts/2/420/0"));
    assert_eq!(projector().released(at(topic::VERDICTS, 420), &source, Some(&held)), records, "deterministic");

    // A quarantine record from before the verdict was kept: the held content's size.
    held.held = None;
    let records = projector().released(at(topic::VERDICTS, 420), &source, Some(&held));
    assert_eq!((records[0].event.record().sender.as_str(), records[0].event.record().size), ("", 8841));
    // No quarantine record at all: still who released what, and when.
    let records = projector().released(at(topic::VERDICTS, 420), &source, None);
    assert_eq!(types(&records), ["RELEASE"]);
    assert_eq!(records[0].event.record().recipients, ["finance@contoso.com"]);
    // Only a release is a release; `verdict` leaves it alone.
    assert!(projector().released(at(topic::VERDICTS, 412), &quarantined, Some(&held)).is_empty());
    assert!(projector().verdict(at(topic::VERDICTS, 420), &source).is_empty());
}

/// An index that knows the fixture's queued message, queued at offset 0.
fn index_with_queued(json: &str) -> (QueuedIndex, Envelope<DeliveryEvent>) {
    let queued: Envelope<DeliveryEvent> = decode(json);
    let mut index = QueuedIndex::default();
    index.apply(0, &queued);
    (index, queued)
}

#[test]
fn deliveries_to_the_store_are_deliver_and_elsewhere_send_with_the_sender_from_queued() {
    let (index, queued) = index_with_queued(fixture!("delivery.Queued.mailbox.json"));
    let key = queued.event.destination().key();
    let delivered: Envelope<DeliveryEvent> = decode(fixture!("delivery.Delivered.maildir.json"));
    assert_eq!(delivered.event.destination().key(), key, "fixtures of one destination");
    let mut delivered = delivered;
    delivered.message_id = queued.message_id.clone();
    let known = index.get(&key, &delivered.message_id);
    assert!(known.is_some());
    let records = projector().delivery(at(topic::DELIVERY, 1), &delivered, known);
    assert_eq!(types(&records), ["DELIVER"]);
    let record = records[0].event.record();
    assert_eq!((record.sender.as_str(), record.size, record.status), ("jane@example.com", 616, TraceStatus::Delivered));
    assert_eq!(record.record_id.as_deref(), Some("mailflow.delivery/2/1/0"));

    let sent: Envelope<DeliveryEvent> = decode(fixture!("delivery.Delivered.json"));
    assert_ne!(sent.event.destination().kind, DestinationKind::MailboxStore);
    let records = projector().delivery(at(topic::DELIVERY, 5), &sent, None);
    assert_eq!(types(&records), ["SEND"]);
}

#[test]
fn junk_delivered_to_the_junk_folder_is_filtered_as_spam() {
    let mut queued: Envelope<DeliveryEvent> = decode(fixture!("delivery.Queued.mailbox.json"));
    let DeliveryEvent::Queued(q) = &mut queued.event else { panic!("a Queued fixture") };
    q.folder = Some("Junk".into());
    let mut index = QueuedIndex::default();
    index.apply(0, &queued);
    let mut delivered: Envelope<DeliveryEvent> = decode(fixture!("delivery.Delivered.maildir.json"));
    delivered.message_id = queued.message_id.clone();
    let known = index.get(&queued.event.destination().key(), &queued.message_id);
    let records = projector().delivery(at(topic::DELIVERY, 1), &delivered, known);
    assert_eq!(records[0].event.record().status, TraceStatus::FilteredAsSpam);
}

#[test]
fn a_deferral_is_defer_with_its_next_attempt_and_pending_status() {
    let deferred: Envelope<DeliveryEvent> = decode(fixture!("delivery.Deferred.json"));
    let records = projector().delivery(at(topic::DELIVERY, 4), &deferred, None);
    assert_eq!(types(&records), ["DEFER"]);
    let JournalEvent::Deferred(attempted) = &records[0].event else { panic!("a Deferred record") };
    let DeliveryEvent::Deferred(source) = &deferred.event else { panic!("a Deferred fixture") };
    assert_eq!(attempted.record.status, TraceStatus::Pending);
    assert_eq!((attempted.attempt, attempted.next_attempt_at), (source.attempt, Some(source.next_attempt_at)));
}

#[test]
fn a_failure_with_an_ndr_is_fail_then_dsn_to_the_sender() {
    let failed: Envelope<DeliveryEvent> = decode(fixture!("delivery.Failed.json"));
    // The message as routing queued it for the failed destination.
    let mut queued: Envelope<DeliveryEvent> = decode(fixture!("delivery.Queued.mailbox.json"));
    queued.message_id = failed.message_id.clone();
    let DeliveryEvent::Queued(q) = &mut queued.event else { panic!("a Queued fixture") };
    (q.destination, q.mail_from) = (failed.event.destination().clone(), "pat@contoso.com".into());
    let mut index = QueuedIndex::default();
    index.apply(0, &queued);
    let known = index.get(&failed.event.destination().key(), &failed.message_id);
    assert!(known.is_some());
    let records = projector().delivery(at(topic::DELIVERY, 9), &failed, known);
    assert_eq!(types(&records), ["FAIL", "DSN"]);
    let JournalEvent::Failed(fail) = &records[0].event else { panic!("a Failed record") };
    assert_eq!((fail.attempts, fail.reply.code, fail.record.status), (1, 550, TraceStatus::Failed));
    assert_eq!(fail.record.server_hostname.as_deref(), Some("mx1.example.net"));
    let JournalEvent::DsnGenerated(dsn) = &records[1].event else { panic!("a DsnGenerated record") };
    assert_eq!(dsn.kind, DsnKind::Failure);
    assert_eq!(dsn.dsn_message_id, "0193556f-1d40-7a11-8c22-3d4e5f607182");
    assert_eq!(dsn.dsn_recipient, "pat@contoso.com");
    assert_eq!(dsn.record.record_id.as_deref(), Some("mailflow.delivery/2/9/1"));
}

#[test]
fn an_expiry_is_fail_with_the_attempts_made_then_dsn() {
    let expired: Envelope<DeliveryEvent> = decode(fixture!("delivery.Expired.json"));
    let records = projector().delivery(at(topic::DELIVERY, 2), &expired, None);
    assert_eq!(types(&records), ["FAIL", "DSN"]);
    let JournalEvent::Failed(fail) = &records[0].event else { panic!("a Failed record") };
    assert_eq!((fail.attempts, fail.reply.enhanced.as_deref()), (31, Some("4.4.7")));
    assert_eq!(fail.record.connector.as_deref(), Some("To Contoso on-premises"));
}

#[test]
fn a_routing_failure_without_queued_names_the_sender_it_carries() {
    let mut failed: Envelope<DeliveryEvent> = decode(fixture!("delivery.Failed.json"));
    let DeliveryEvent::Failed(f) = &mut failed.event else { panic!("a Failed fixture") };
    (f.attempt, f.mail_from, f.size) = (0, Some("pat@contoso.com".into()), Some(1234));
    let records = projector().delivery(at(topic::DELIVERY, 0), &failed, None);
    let record = records[0].event.record();
    assert_eq!((record.sender.as_str(), record.size), ("pat@contoso.com", 1234));
}

#[test]
fn queued_and_operator_actions_yield_no_record() {
    for json in
        [fixture!("delivery.Queued.json"), fixture!("delivery.Suspended.json"), fixture!("delivery.Deleted.json")]
    {
        let event: Envelope<DeliveryEvent> = decode(json);
        assert!(projector().delivery(at(topic::DELIVERY, 0), &event, None).is_empty());
    }
}
