//! Unit tests of [`TraceIndex`]: given journal records, when searched, then rows.

use chrono::{DateTime, TimeZone as _, Utc};
use mailflow_events::Envelope;
use mailflow_events::journal::{Attempted, Failed, JournalEvent, Received, TraceRecord, TraceStatus};
use mailflow_events::log::Position;
use mailflow_events::received::{Directionality, SmtpReply};

use super::*;

fn at(minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 10, minute, 0).unwrap()
}

fn columns(status: TraceStatus, sender: &str, recipients: &[&str]) -> TraceRecord {
    TraceRecord {
        status,
        sender: sender.to_string(),
        recipients: recipients.iter().map(|r| r.to_string()).collect(),
        subject: None,
        internet_message_id: None,
        size: 100,
        directionality: Directionality::Inbound,
        client_ip: None,
        client_hostname: None,
        server_ip: None,
        server_hostname: None,
        connector: None,
        custom_data: None,
        detail: String::new(),
        record_id: None,
    }
}

fn received(id: &str, minute: u32, sender: &str, recipients: &[&str], subject: &str) -> Envelope<JournalEvent> {
    let mut record = columns(TraceStatus::Pending, sender, recipients);
    record.subject = Some(subject.to_string());
    record.internet_message_id = Some(format!("<{id}@contoso.com>"));
    record.client_ip = Some("192.0.2.7".to_string());
    let event =
        JournalEvent::Received(Received { record, received_at: at(minute), original_client_ip: None, content: None });
    Envelope::new(id, "test", at(minute), event)
}

fn attempted(id: &str, minute: u32, status: TraceStatus, recipients: &[&str]) -> Envelope<JournalEvent> {
    let mut record = columns(status, "alice@contoso.com", recipients);
    // Later hops have the router as their client: not the message's source IP.
    record.client_ip = Some("10.0.0.1".to_string());
    let event = Attempted { record, attempt: 1, reply: None, next_attempt_at: None };
    let event = match status {
        TraceStatus::Pending => JournalEvent::Deferred(event),
        _ => JournalEvent::Delivered(event),
    };
    Envelope::new(id, "test", at(minute), event)
}

/// A delivery attempt at `minute` that reached `ip` (the record's `server_ip`):
/// `SEND`, `DELIVER` (mailbox store) or `DEFER` by `status` and `to_store`.
fn hop(
    id: &str,
    minute: u32,
    status: TraceStatus,
    recipients: &[&str],
    ip: &str,
    to_store: bool,
) -> Envelope<JournalEvent> {
    let mut record = columns(status, "alice@contoso.com", recipients);
    record.server_ip = Some(ip.to_string());
    let event = Attempted { record, attempt: 1, reply: None, next_attempt_at: None };
    let event = match (status, to_store) {
        (TraceStatus::Pending, _) => JournalEvent::Deferred(event),
        (_, true) => JournalEvent::Delivered(event),
        (_, false) => JournalEvent::Sent(event),
    };
    Envelope::new(id, "test", at(minute), event)
}

fn refused(id: &str, minute: u32, recipient: &str) -> Envelope<JournalEvent> {
    let mut record = columns(TraceStatus::Failed, "alice@contoso.com", &[recipient]);
    record.client_ip = Some("192.0.2.9".to_string());
    let reply = SmtpReply::new(550, "5.4.1", "Recipient address rejected: Access denied");
    Envelope::new(
        id,
        "test",
        at(minute),
        JournalEvent::Failed(Failed { record, reply, attempts: 0, ndr_message_id: None }),
    )
}

fn index_of(records: &[Envelope<JournalEvent>]) -> TraceIndex {
    let mut index = TraceIndex::new();
    for (offset, record) in records.iter().enumerate() {
        index.apply(record, Position { partition: 0, offset: offset as u64 });
    }
    index
}

fn query() -> Query {
    // Any parameter turns the default 48 h window off; an explicit wide one keeps tests clock-free.
    Query { since: Some(at(0) - chrono::Duration::days(1)), ..Query::default() }
}

fn statuses(result: &SearchResult) -> Vec<(&str, &str, TraceStatus)> {
    result.rows.iter().map(|r| (r.message_id.as_str(), r.recipient.as_str(), r.status)).collect()
}

#[test]
fn each_recipient_gets_a_row_with_its_latest_status_spec_15_4() {
    let index = index_of(&[
        received("m1", 1, "alice@contoso.com", &["bob@example.org", "carol@example.org"], "Hello"),
        attempted("m1", 2, TraceStatus::Pending, &["bob@example.org"]),
        attempted("m1", 3, TraceStatus::Delivered, &["carol@example.org"]),
        attempted("m1", 5, TraceStatus::Delivered, &["bob@example.org"]),
    ]);
    let result = index.search(&query(), at(10)).unwrap();
    assert_eq!(
        statuses(&result),
        [("m1", "bob@example.org", TraceStatus::Delivered), ("m1", "carol@example.org", TraceStatus::Delivered)]
    );
    assert_eq!(result.rows[0].client_ip.as_deref(), Some("192.0.2.7"), "the source IP is the receipt's client");
    assert_eq!(result.rows[0].received_at, at(1));
}

#[test]
fn a_status_follows_the_records_time_not_their_order_in_the_log() {
    // A projector catching up may journal the delivery before the deferral.
    let index = index_of(&[
        received("m1", 1, "alice@contoso.com", &["bob@example.org"], "Hello"),
        attempted("m1", 5, TraceStatus::Delivered, &["bob@example.org"]),
        attempted("m1", 2, TraceStatus::Pending, &["bob@example.org"]),
    ]);
    let rows = index.rows_of("m1");
    assert_eq!(rows[0].status, TraceStatus::Delivered);
    assert_eq!(index.positions("m1").map(<[Position]>::len), Some(3));
}

#[test]
fn a_refusal_at_the_door_is_a_failed_row_searchable_by_recipient() {
    let index = index_of(&[
        received("m1", 1, "alice@contoso.com", &["bob@example.org"], "Hello"),
        refused("r1", 2, "nobody@contoso.com"),
    ]);
    let q = Query { recipient: Some("NOBODY@contoso.com".into()), ..query() };
    let result = index.search(&q, at(10)).unwrap();
    assert_eq!(statuses(&result), [("r1", "nobody@contoso.com", TraceStatus::Failed)]);
    assert_eq!(result.rows[0].client_ip.as_deref(), Some("192.0.2.9"));
    let q = Query { status: Some("Failed".into()), ..query() };
    assert_eq!(statuses(&index.search(&q, at(10)).unwrap()), [("r1", "nobody@contoso.com", TraceStatus::Failed)]);
}

#[test]
fn subjects_match_by_contains_starts_and_ends_ignoring_case_spec_15_1() {
    let index = index_of(&[
        received("m1", 1, "alice@contoso.com", &["bob@example.org"], "Quarterly report Q3"),
        received("m2", 2, "alice@contoso.com", &["bob@example.org"], "Re: quarterly report"),
    ]);
    let ids = |text: &str, how: SubjectMatch| {
        let q = Query { subject: Some(text.into()), subject_match: Some(how), ..query() };
        index.search(&q, at(10)).unwrap().rows.into_iter().map(|r| r.message_id).collect::<Vec<_>>()
    };
    // Newest first.
    assert_eq!(ids("quarterly", SubjectMatch::Contains), ["m2", "m1"]);
    assert_eq!(ids("QUARTERLY", SubjectMatch::Starts), ["m1"]);
    assert_eq!(ids("report", SubjectMatch::Ends), ["m2"]);
    assert!(ids("weekly", SubjectMatch::Contains).is_empty());
}

#[test]
fn sender_message_ids_and_ip_filter_exactly() {
    let index = index_of(&[
        received("m1", 1, "alice@contoso.com", &["bob@example.org"], "Hello"),
        received("m2", 2, "eve@contoso.com", &["bob@example.org"], "Hello"),
    ]);
    let one = |q: Query| index.search(&q, at(10)).unwrap().rows.into_iter().map(|r| r.message_id).collect::<Vec<_>>();
    assert_eq!(one(Query { sender: Some("Eve@Contoso.com".into()), ..query() }), ["m2"]);
    assert_eq!(one(Query { message_id: Some("m1".into()), ..query() }), ["m1"]);
    assert_eq!(one(Query { internet_message_id: Some("m2@contoso.com".into()), ..query() }), ["m2"]);
    assert_eq!(one(Query { internet_message_id: Some("<m1@contoso.com>".into()), ..query() }), ["m1"]);
    assert_eq!(one(Query { client_ip: Some("192.0.2.7".into()), ..query() }).len(), 2);
    assert!(one(Query { client_ip: Some("10.0.0.1".into()), ..query() }).is_empty());
}

#[test]
fn to_ip_matches_the_address_a_copy_was_sent_to_and_inbound_rows_have_none_spec_15_1() {
    let index = index_of(&[
        received("m1", 1, "alice@contoso.com", &["bob@example.org", "carol@contoso.com"], "Hello"),
        // bob's first MX answered 451, the second one took the copy.
        hop("m1", 2, TraceStatus::Pending, &["bob@example.org"], "198.51.100.7", false),
        hop("m1", 3, TraceStatus::Delivered, &["bob@example.org"], "198.51.100.9", false),
        // carol's copy went into the mailbox store, over LMTP to a server that has an IP too.
        hop("m1", 3, TraceStatus::Delivered, &["carol@contoso.com"], "10.0.0.25", true),
        received("m2", 4, "alice@contoso.com", &["dave@example.net"], "Hello"),
        // Journaled out of time order: the later SEND still wins.
        hop("m2", 6, TraceStatus::Delivered, &["dave@example.net"], "2001:db8::25", false),
        hop("m2", 5, TraceStatus::Delivered, &["dave@example.net"], "203.0.113.5", false),
        refused("r1", 7, "nobody@contoso.com"),
    ]);
    let found = |ip: &str| {
        statuses(&index.search(&Query { to_ip: Some(ip.into()), ..query() }, at(10)).unwrap())
            .into_iter()
            .map(|(id, to, _)| format!("{id} {to}"))
            .collect::<Vec<_>>()
    };
    assert_eq!(found("198.51.100.9"), ["m1 bob@example.org"]);
    assert_eq!(found(" 198.51.100.9 "), ["m1 bob@example.org"], "typed with blanks");
    assert!(found("198.51.100.7").is_empty(), "a deferral did not hand the copy over");
    assert!(found("10.0.0.25").is_empty(), "delivered to the mailbox store: no To IP");
    assert!(found("192.0.2.7").is_empty(), "the sending server is FromIP, not ToIP");
    assert!(found("203.0.113.5").is_empty(), "an earlier SEND is superseded");
    assert_eq!(found("2001:DB8:0::25"), ["m2 dave@example.net"], "IPv6 compares as an address");

    // The row shows it; inbound and refused rows are blank (spec 15.4).
    let rows = index.rows_of("m1");
    let to_ips: Vec<(&str, Option<&str>)> = rows.iter().map(|r| (r.recipient.as_str(), r.to_ip.as_deref())).collect();
    assert_eq!(to_ips, [("bob@example.org", Some("198.51.100.9")), ("carol@contoso.com", None)]);
    assert_eq!(index.rows_of("r1")[0].to_ip, None);
    // To IP combines with the other filters.
    let q = Query { to_ip: Some("198.51.100.9".into()), status: Some("pending".into()), ..query() };
    assert!(index.search(&q, at(10)).unwrap().rows.is_empty());
}

#[test]
fn with_no_parameter_the_last_48_hours_are_searched_spec_15_1() {
    let index = index_of(&[
        received("old", 1, "alice@contoso.com", &["bob@example.org"], "Hello"),
        received("new", 2, "alice@contoso.com", &["bob@example.org"], "Hello"),
    ]);
    let now = at(1) + chrono::Duration::hours(48) + chrono::Duration::seconds(30);
    let result = index.search(&Query::default(), now).unwrap();
    assert_eq!(statuses(&result), [("new", "bob@example.org", TraceStatus::Pending)]);
    assert_eq!(result.since, Some(now - chrono::Duration::hours(48)));
    // A window given is searched as given.
    let q = Query { since: Some(at(0)), until: Some(at(1)), ..Query::default() };
    assert_eq!(statuses(&index.search(&q, now).unwrap()), [("old", "bob@example.org", TraceStatus::Pending)]);
}

#[test]
fn the_limit_cuts_rows_and_says_so_and_bad_queries_are_refused() {
    let index = index_of(&[
        received("m1", 1, "alice@contoso.com", &["a@example.org", "b@example.org"], "Hello"),
        received("m2", 2, "alice@contoso.com", &["c@example.org"], "Hello"),
    ]);
    let result = index.search(&Query { limit: Some(2), ..query() }, at(10)).unwrap();
    assert_eq!(
        statuses(&result),
        [("m2", "c@example.org", TraceStatus::Pending), ("m1", "a@example.org", TraceStatus::Pending)]
    );
    assert!(result.truncated);
    assert!(!index.search(&query(), at(10)).unwrap().truncated);
    assert_eq!(index.search(&Query { limit: Some(0), ..query() }, at(10)), Err(QueryError::Limit(0)));
    assert_eq!(index.search(&Query { limit: Some(5001), ..query() }, at(10)), Err(QueryError::Limit(5001)));
    assert!(matches!(
        index.search(&Query { status: Some("lost".into()), ..query() }, at(10)),
        Err(QueryError::UnknownStatus(_))
    ));
    assert!(matches!(
        index.search(&Query { since: Some(at(5)), until: Some(at(1)), ..query() }, at(10)),
        Err(QueryError::Window(..))
    ));
}

#[test]
fn statuses_parse_by_wire_name_and_by_eop_name() {
    for status in [
        TraceStatus::Delivered,
        TraceStatus::Failed,
        TraceStatus::Pending,
        TraceStatus::FilteredAsSpam,
        TraceStatus::Quarantined,
        TraceStatus::Expanded,
        TraceStatus::GettingStatus,
        TraceStatus::None,
    ] {
        let wire = serde_json::to_value(status).unwrap();
        assert_eq!(parse_status(wire.as_str().unwrap()), Some(status));
        assert_eq!(parse_status(status_name(status)), Some(status));
    }
}
