//! Given events, then state: the fold of DESIGN §3.

use chrono::{TimeZone as _, Utc};
use mailflow_events::content::ContentRef;
use mailflow_events::delivery::{
    Deferred, Delivered, DestinationKind, Expired, OperatorAction, Queued, QueuedRecipient, RouteReason,
};

use super::*;

fn at(minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 8, minute, 0).single().expect("valid")
}

fn destination() -> Destination {
    Destination { kind: DestinationKind::Internet, name: "example.org".into(), next_hop: None }
}

fn queued(id: &str, minute: u32) -> Envelope<DeliveryEvent> {
    let event = DeliveryEvent::Queued(Queued {
        destination: destination(),
        route: RouteReason::Mx,
        recipients: vec![
            QueuedRecipient { address: "a@example.org".into(), notify: vec![], orcpt: None },
            QueuedRecipient { address: "b@example.org".into(), notify: vec![], orcpt: None },
        ],
        mail_from: "s@contoso.com".into(),
        dsn_return: None,
        dsn_envid: None,
        body: Default::default(),
        smtputf8: false,
        require_tls: false,
        disclaimer: None,
        content: ContentRef { partition: 0, first_offset: 0, chunks: 1, size: 1, crc32: 0 },
        prepend_headers: vec![],
        remove_headers: vec![],
        subject_prefix: None,
        folder: None,
        received_at: at(minute),
        expires_at: at(minute) + chrono::Duration::hours(24),
    });
    Envelope::new(id, "test", at(minute), event)
}

fn deferred(id: &str, attempt: u32, scope: Scope, next: DateTime<Utc>) -> Envelope<DeliveryEvent> {
    let event = DeliveryEvent::Deferred(Deferred {
        destination: destination(),
        attempt,
        recipients: vec!["a@example.org".into(), "b@example.org".into()],
        scope,
        reply: None,
        error: Some("4.4.316 Connection refused".into()),
        remote_host: None,
        remote_ip: None,
        next_attempt_at: next,
        delay_notice: None,
    });
    Envelope::new(id, "test", at(0), event)
}

fn delivered(id: &str, recipients: &[&str]) -> Envelope<DeliveryEvent> {
    let event = DeliveryEvent::Delivered(Delivered {
        destination: destination(),
        attempt: 1,
        recipients: recipients.iter().map(|r| r.to_string()).collect(),
        remote_host: None,
        remote_ip: None,
        reply: SmtpReply { code: 250, enhanced: Some("2.0.0".into()), text: "OK".into() },
        tls: None,
    });
    Envelope::new(id, "test", at(0), event)
}

fn fold(events: &[Envelope<DeliveryEvent>]) -> PartitionState {
    let mut state = PartitionState::default();
    for (offset, event) in events.iter().enumerate() {
        state.apply(offset as u64, event);
    }
    state
}

fn never_busy(_: &str) -> bool {
    false
}

#[test]
fn messages_are_due_in_the_order_they_were_queued() {
    let state = fold(&[queued("m1", 0), queued("m2", 1), queued("m3", 2)]);
    let due = state.due(at(3), &never_busy, 100);
    let ids: Vec<_> = due[0].messages.iter().map(|m| m.message_id.as_str()).collect();
    assert_eq!(ids, ["m1", "m2", "m3"]);
    assert_eq!(due[0].messages[0].queued_offset, 0, "the offset of the Queued event is kept");
    assert_eq!(due[0].messages[0].recipients, ["a@example.org", "b@example.org"]);
}

#[test]
fn a_destination_in_retry_waits_with_its_whole_queue_and_new_mail_queues_behind() {
    let state = fold(&[queued("m1", 0), deferred("m1", 1, Scope::Destination, at(11)), queued("m2", 5)]);
    assert!(state.due(at(10), &never_busy, 100).is_empty(), "nothing before the next probe");
    let due = state.due(at(11), &never_busy, 100);
    assert_eq!(due[0].destination_attempt, 2);
    let ids: Vec<_> = due[0].messages.iter().map(|m| m.message_id.as_str()).collect();
    assert_eq!(ids, ["m1", "m2"], "after recovery: arrival order");
    let retry = state.destinations["internet:example.org"].retry.as_ref().expect("in retry");
    assert_eq!((retry.attempts, retry.next_attempt_at), (1, at(11)));
}

#[test]
fn a_message_level_deferral_holds_only_that_message() {
    let state = fold(&[queued("m1", 0), queued("m2", 1), deferred("m1", 1, Scope::Message, at(20))]);
    let due = state.due(at(2), &never_busy, 100);
    let ids: Vec<_> = due[0].messages.iter().map(|m| (m.message_id.as_str(), m.attempt)).collect();
    assert_eq!(ids, [("m2", 1)]);
    let later = state.due(at(20), &never_busy, 100);
    assert_eq!(
        (later[0].messages[0].message_id.as_str(), later[0].messages[0].attempt),
        ("m1", 2),
        "attempt 2 at its own time"
    );
}

#[test]
fn partial_delivery_keeps_the_rest_pending_and_full_delivery_empties_the_queue() {
    let mut state = fold(&[queued("m1", 0), delivered("m1", &["a@example.org"])]);
    let message = &state.destinations["internet:example.org"].queue[0];
    assert_eq!(message.pending, vec![Box::from("b@example.org")]);
    state.apply(2, &delivered("m1", &["B@example.org"]));
    assert!(state.destinations.is_empty(), "delivered messages leave the state");
    assert_eq!(state.next_offset, 3);
}

#[test]
fn a_second_queued_for_the_same_message_is_ignored() {
    let state = fold(&[queued("m1", 0), queued("m1", 0)]);
    assert_eq!(state.depth(), 1);
}

#[test]
fn expiry_and_operator_actions_are_folded() {
    let mut state = fold(&[queued("m1", 0), queued("m2", 1), deferred("m1", 3, Scope::Destination, at(50))]);
    let late = at(0) + chrono::Duration::hours(24);
    let expired = state.expired(late, &never_busy);
    assert_eq!(expired.len(), 1, "m1 expires first");
    assert_eq!(expired[0].attempts, 3);
    assert_eq!(expired[0].last_error.as_deref(), Some("4.4.316 Connection refused"));
    let action = |scope| OperatorAction { destination: destination(), scope, operator: "op".into(), reason: None };
    state.apply(3, &Envelope::new("", "op", at(30), DeliveryEvent::RetryRequested(action(Scope::Destination))));
    assert_eq!(state.due(at(30), &never_busy, 100).len(), 1, "retry now overrides the schedule");
    state.apply(4, &Envelope::new("", "op", at(31), DeliveryEvent::Suspended(action(Scope::Destination))));
    assert!(state.due(at(31), &never_busy, 100).is_empty(), "suspended");
    state.apply(5, &Envelope::new("", "op", at(32), DeliveryEvent::Resumed(action(Scope::Destination))));
    let expired_event = DeliveryEvent::Expired(Expired {
        destination: destination(),
        attempts: 3,
        recipients: vec!["a@example.org".into(), "b@example.org".into()],
        reply: SmtpReply { code: 550, enhanced: Some("4.4.7".into()), text: "QUEUE.Expired; message expired".into() },
        last_reply: None,
        ndr_message_id: None,
    });
    state.apply(6, &Envelope::new("m1", "test", late, expired_event));
    assert_eq!(state.depth(), 1, "only m2 is left");
}

#[test]
fn replaying_the_same_events_gives_the_same_state() {
    let events = [
        queued("m1", 0),
        deferred("m1", 1, Scope::Destination, at(2)),
        queued("m2", 1),
        delivered("m2", &["a@example.org"]),
    ];
    let a = serde_json::to_string(&fold(&events)).expect("serialises");
    let b = serde_json::to_string(&fold(&events)).expect("serialises");
    assert_eq!(a, b);
}

#[test]
fn the_queue_follows_receipt_time_even_when_routing_appended_out_of_order() {
    // Routing consumes verdicts from many partitions: its appends are only nearly in order.
    let state = fold(&[queued("m2", 2), queued("m3", 3), queued("m1", 1)]);
    let due = state.due(at(4), &never_busy, 100);
    let ids: Vec<_> = due[0].messages.iter().map(|m| m.message_id.as_str()).collect();
    assert_eq!(ids, ["m1", "m2", "m3"]);
}

#[test]
fn a_destination_suspended_before_any_mail_holds_what_arrives_until_resumed() {
    let action = |scope| OperatorAction { destination: destination(), scope, operator: "op".into(), reason: None };
    let mut state = PartitionState::default();
    state.apply(0, &Envelope::new("", "op", at(0), DeliveryEvent::Suspended(action(Scope::Destination))));
    assert_eq!(state.destinations.len(), 1, "the hold is kept with an empty queue");
    state.apply(1, &queued("m1", 1));
    assert!(state.due(at(2), &never_busy, 100).is_empty(), "held");
    state.apply(2, &Envelope::new("", "op", at(3), DeliveryEvent::Resumed(action(Scope::Destination))));
    assert_eq!(state.due(at(3), &never_busy, 100).len(), 1, "released");
}

#[test]
fn a_copy_of_queued_after_the_message_left_the_queue_does_not_queue_it_again() {
    // The verdict or routing role ran again after a crash: its copy of
    // `Queued` comes after the original was delivered, and must not send it twice.
    let state = fold(&[queued("m1", 0), delivered("m1", &["a@example.org", "b@example.org"]), queued("m1", 0)]);
    assert_eq!(state.depth(), 0, "delivered once is enough");
    // Another destination of the same message is another queue.
    let mut other = queued("m1", 0);
    if let DeliveryEvent::Queued(q) = &mut other.event {
        q.destination.name = "example.net".into();
    }
    let mut state = state;
    state.apply(3, &other);
    assert_eq!(state.depth(), 1);
    // Snapshots keep what is remembered; the oldest is forgotten past the bound.
    let restored: PartitionState = serde_json::from_slice(&serde_json::to_vec(&state).expect("json")).expect("state");
    assert_eq!(restored, state);
    let mut events = Vec::new();
    for n in 0..=COMPLETED_KEPT {
        events.push(queued(&format!("m{n}"), 0));
        events.push(delivered(&format!("m{n}"), &["a@example.org", "b@example.org"]));
    }
    events.push(queued("m0", 0));
    events.push(queued(&format!("m{COMPLETED_KEPT}"), 0));
    let state = fold(&events);
    let queued_again: Vec<&str> =
        state.destinations.values().flat_map(|d| d.queue.iter().map(|m| &*m.message_id)).collect();
    assert_eq!(queued_again, ["m0"], "only the forgotten one queues again");
}

#[test]
fn a_deferral_that_sent_a_delay_notice_is_remembered_by_the_fold_and_its_snapshot() {
    // Issue "NDRs" (NOTIFY=DELAY): one delay notice per message, also after a replay.
    let mut noticed = deferred("m1", 1, Scope::Message, at(1));
    if let DeliveryEvent::Deferred(d) = &mut noticed.event {
        d.delay_notice = Some("n1".into());
    }
    let state = fold(&[queued("m1", 0), queued("m2", 0), noticed, deferred("m2", 1, Scope::Message, at(1))]);
    let due = state.due(at(5), &never_busy, 10);
    let flags: Vec<(String, bool)> = due[0].messages.iter().map(|m| (m.message_id.clone(), m.delay_notified)).collect();
    assert_eq!(flags, vec![("m1".to_string(), true), ("m2".to_string(), false)]);
    assert_eq!(due[0].messages[0].received_at, at(0));
    // A later deferral without a notice does not forget it; the snapshot keeps it.
    let mut state = state;
    let mut plain = deferred("m1", 2, Scope::Message, at(2));
    plain.message_id = "m1".into();
    state.apply(99, &plain);
    let json = serde_json::to_string(&state).expect("serialises");
    let back: PartitionState = serde_json::from_str(&json).expect("deserialises");
    let due = back.due(at(5), &never_busy, 10);
    assert!(due[0].messages.iter().any(|m| m.message_id == "m1" && m.delay_notified), "{json}");
}

#[test]
fn a_record_is_applied_once_and_an_undecodable_one_is_stepped_over() {
    let record = |offset: u64, value: Vec<u8>| mailflow_events::log::Record {
        topic: std::sync::Arc::from(mailflow_events::topic::DELIVERY),
        position: mailflow_events::log::Position { partition: 0, offset },
        timestamp_ms: 0,
        key: Vec::new().into(),
        value: value.into(),
    };
    let mut state = PartitionState::default();
    state.apply_record(&record(0, queued("m1", 1).to_json())).unwrap();
    assert_eq!((state.next_offset, state.depth()), (1, 1));
    // Offset 0 again (a snapshot or an earlier fold covers it): skipped.
    state.apply_record(&record(0, queued("m2", 2).to_json())).unwrap();
    assert_eq!((state.next_offset, state.depth()), (1, 1));
    // Not an event: reported, and the fold moves past it.
    assert!(state.apply_record(&record(1, b"{not json".to_vec())).is_err());
    assert_eq!((state.next_offset, state.depth()), (2, 1));
    state.apply_record(&record(2, queued("m2", 2).to_json())).unwrap();
    assert_eq!((state.next_offset, state.depth()), (3, 2));
}
