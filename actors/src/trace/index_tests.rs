//! Unit tests of [`TraceIndex`]: given journal records, when searched, then rows.

use chrono::{DateTime, TimeZone as _, Utc};
use mailflow_events::Envelope;
use mailflow_events::journal::{
    Attempted, Failed, Filtered, JournalEvent, Received, Released, TraceRecord, TraceStatus,
};
use mailflow_events::log::Position;
use mailflow_events::received::{Directionality, SmtpReply};
use mailflow_events::verdicts::{PolicyAction, SpamVerdict};

use super::*;

pub(crate) fn at(minute: u32) -> DateTime<Utc> {
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

pub(crate) fn received(
    id: &str,
    minute: u32,
    sender: &str,
    recipients: &[&str],
    subject: &str,
) -> Envelope<JournalEvent> {
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
    // An explicit window keeps tests clock-free.
    Query { since: Some(at(0) - chrono::Duration::days(1)), ..Query::default() }
}

/// How long the trace keeps messages (spec 15.1: 90 days).
fn keep() -> chrono::Duration {
    chrono::Duration::days(90)
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
    let result = index.search(&query(), at(10), keep()).unwrap();
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
    let result = index.search(&q, at(10), keep()).unwrap();
    assert_eq!(statuses(&result), [("r1", "nobody@contoso.com", TraceStatus::Failed)]);
    assert_eq!(result.rows[0].client_ip.as_deref(), Some("192.0.2.9"));
    let q = Query { status: Some("Failed".into()), ..query() };
    assert_eq!(
        statuses(&index.search(&q, at(10), keep()).unwrap()),
        [("r1", "nobody@contoso.com", TraceStatus::Failed)]
    );
}

#[test]
fn subjects_match_by_contains_starts_and_ends_ignoring_case_spec_15_1() {
    let index = index_of(&[
        received("m1", 1, "alice@contoso.com", &["bob@example.org"], "Quarterly report Q3"),
        received("m2", 2, "alice@contoso.com", &["bob@example.org"], "Re: quarterly report"),
    ]);
    let ids = |text: &str, how: SubjectMatch| {
        let q = Query { subject: Some(text.into()), subject_match: Some(how), ..query() };
        index.search(&q, at(10), keep()).unwrap().rows.into_iter().map(|r| r.message_id).collect::<Vec<_>>()
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
    let one =
        |q: Query| index.search(&q, at(10), keep()).unwrap().rows.into_iter().map(|r| r.message_id).collect::<Vec<_>>();
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
        statuses(&index.search(&Query { to_ip: Some(ip.into()), ..query() }, at(10), keep()).unwrap())
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
    assert!(index.search(&q, at(10), keep()).unwrap().rows.is_empty());
}

#[test]
fn a_release_moves_a_quarantined_row_to_pending_until_it_is_delivered_spec_15_2() {
    let mut quarantine = columns(TraceStatus::Quarantined, "alice@contoso.com", &["bob@example.org"]);
    quarantine.detail = "Mail flow rule hold matched".into();
    let filtered = JournalEvent::Filtered(Filtered {
        record: quarantine,
        verdict: SpamVerdict::Spam,
        scl: 6,
        action: PolicyAction::Quarantine,
        rules_matched: vec!["hold".into()],
    });
    let release = JournalEvent::Released(Released {
        record: columns(TraceStatus::Pending, "alice@contoso.com", &["bob@example.org"]),
        operator: "ops@contoso.com".into(),
        reason: None,
    });
    let mut records = vec![
        received("m1", 1, "alice@contoso.com", &["bob@example.org"], "Hello"),
        Envelope::new("m1", "test", at(2), filtered),
    ];
    let status = |records: &[Envelope<JournalEvent>]| index_of(records).rows_of("m1")[0].status;
    assert_eq!(status(&records), TraceStatus::Quarantined);
    records.push(Envelope::new("m1", "test", at(30), release));
    assert_eq!(status(&records), TraceStatus::Pending);
    records.push(attempted("m1", 31, TraceStatus::Delivered, &["bob@example.org"]));
    assert_eq!(status(&records), TraceStatus::Delivered);
    let q = Query { status: Some("Quarantined".into()), ..query() };
    assert!(index_of(&records).search(&q, at(40), keep()).unwrap().rows.is_empty(), "no longer listed as quarantined");
}

#[test]
fn with_no_parameter_the_last_48_hours_are_searched_spec_15_1() {
    let index = index_of(&[
        received("old", 1, "alice@contoso.com", &["bob@example.org"], "Hello"),
        received("new", 2, "alice@contoso.com", &["bob@example.org"], "Hello"),
    ]);
    let now = at(1) + chrono::Duration::hours(48) + chrono::Duration::seconds(30);
    let result = index.search(&Query::default(), now, keep()).unwrap();
    assert_eq!(statuses(&result), [("new", "bob@example.org", TraceStatus::Pending)]);
    assert_eq!((result.since, result.until), (now - chrono::Duration::hours(48), now));
    // A window given is searched as given.
    let q = Query { since: Some(at(0)), until: Some(at(1)), ..Query::default() };
    assert_eq!(statuses(&index.search(&q, now, keep()).unwrap()), [("old", "bob@example.org", TraceStatus::Pending)]);
}

#[test]
fn a_query_without_dates_searches_the_last_48_hours_whatever_its_filters_spec_15_1() {
    let index = index_of(&[
        received("old", 1, "alice@contoso.com", &["bob@example.org"], "Hello"),
        received("new", 2, "alice@contoso.com", &["bob@example.org"], "Hello"),
    ]);
    let now = at(1) + chrono::Duration::hours(48) + chrono::Duration::seconds(30);
    let by_sender = Query { sender: Some("alice@contoso.com".into()), ..Query::default() };
    assert_eq!(
        statuses(&index.search(&by_sender, now, keep()).unwrap()),
        [("new", "bob@example.org", TraceStatus::Pending)]
    );
    // A message id names one message, and is still searched in the window.
    let by_id = Query { message_id: Some("old".into()), ..Query::default() };
    assert!(index.search(&by_id, now, keep()).unwrap().rows.is_empty());
    // `until` alone: the 48 hours before it.
    let q = Query { until: Some(at(1)), ..by_sender.clone() };
    let result = index.search(&q, now, keep()).unwrap();
    assert_eq!((result.since, result.until), (at(1) - chrono::Duration::hours(48), at(1)));
    assert_eq!(statuses(&result), [("old", "bob@example.org", TraceStatus::Pending)]);
    // `since` alone: up to now.
    let q = Query { since: Some(at(0)), ..by_sender };
    let result = index.search(&q, now, keep()).unwrap();
    assert_eq!((result.since, result.until), (at(0), now));
    assert_eq!(result.rows.len(), 2);
}

#[test]
fn one_query_covers_at_most_10_days_and_none_older_than_the_retention_spec_15_1() {
    let index = index_of(&[received("m1", 1, "alice@contoso.com", &["bob@example.org"], "Hello")]);
    let now = at(10);
    let ten_days = Query { since: Some(now - chrono::Duration::days(10)), ..Query::default() };
    assert_eq!(index.search(&ten_days, now, keep()).unwrap().rows.len(), 1);
    let longer =
        Query { since: Some(now - chrono::Duration::days(10) - chrono::Duration::seconds(1)), ..Query::default() };
    let refused = index.search(&longer, now, keep()).unwrap_err();
    assert!(matches!(refused, QueryError::TooLong(..)), "{refused:?}");
    assert!(refused.to_string().contains("at most 10 days"), "{refused}");
    // A window of 10 days that starts before what the trace keeps.
    let old = Query {
        since: Some(now - chrono::Duration::days(95)),
        until: Some(now - chrono::Duration::days(88)),
        ..Query::default()
    };
    let refused = index.search(&old, now, keep()).unwrap_err();
    assert_eq!(refused, QueryError::TooOld(now - chrono::Duration::days(95), 90));
    assert!(refused.to_string().contains("90 days"), "{refused}");
    // The same window is searchable in a trace kept longer.
    assert!(index.search(&old, now, chrono::Duration::days(100)).is_ok());
}

#[test]
fn the_limit_cuts_rows_and_says_so_and_bad_queries_are_refused() {
    let index = index_of(&[
        received("m1", 1, "alice@contoso.com", &["a@example.org", "b@example.org"], "Hello"),
        received("m2", 2, "alice@contoso.com", &["c@example.org"], "Hello"),
    ]);
    let result = index.search(&Query { limit: Some(2), ..query() }, at(10), keep()).unwrap();
    assert_eq!(
        statuses(&result),
        [("m2", "c@example.org", TraceStatus::Pending), ("m1", "a@example.org", TraceStatus::Pending)]
    );
    assert!(result.truncated);
    assert!(!index.search(&query(), at(10), keep()).unwrap().truncated);
    assert_eq!(index.search(&Query { limit: Some(0), ..query() }, at(10), keep()), Err(QueryError::Limit(0)));
    assert_eq!(index.search(&Query { limit: Some(5001), ..query() }, at(10), keep()), Err(QueryError::Limit(5001)));
    assert!(matches!(
        index.search(&Query { status: Some("lost".into()), ..query() }, at(10), keep()),
        Err(QueryError::UnknownStatus(_))
    ));
    assert!(matches!(
        index.search(&Query { since: Some(at(5)), until: Some(at(1)), ..query() }, at(10), keep()),
        Err(QueryError::Window(..))
    ));
}

/// 25 rows over 17 messages, several received at one instant, some of them
/// for the same recipient: the cases where (received time, recipient) alone
/// does not name a row.
fn paging_index() -> TraceIndex {
    let messages: [(&str, u32, &[&str]); 17] = [
        ("m17", 1, &["bob", "carol"]),
        ("m15", 2, &["alice"]),
        ("m16", 2, &["alice"]),
        ("m13", 3, &["zed"]),
        ("m14", 3, &["yan", "zed"]),
        ("m12", 4, &["alice", "bob", "carol", "dave"]),
        ("m09", 5, &["gina"]),
        ("m10", 5, &["gina"]),
        ("m11", 5, &["hank"]),
        ("m05", 6, &["alice", "erin"]),
        ("m06", 6, &["bob"]),
        ("m07", 6, &["erin"]),
        ("m08", 6, &["erin"]),
        ("m04", 7, &["dave", "frank"]),
        ("m02", 8, &["alice", "bob"]),
        ("m03", 8, &["bob"]),
        ("m01", 9, &["carol"]),
    ];
    let records: Vec<Envelope<JournalEvent>> = messages
        .iter()
        .map(|(id, minute, to)| {
            let to: Vec<String> = to.iter().map(|name| format!("{name}@example.org")).collect();
            let to: Vec<&str> = to.iter().map(String::as_str).collect();
            received(id, *minute, "alice@contoso.com", &to, "Hello")
        })
        .collect();
    index_of(&records)
}

fn ids(rows: &[TraceRow]) -> Vec<String> {
    rows.iter().map(|r| format!("{} {}", r.message_id, r.recipient.trim_end_matches("@example.org"))).collect()
}

#[test]
fn rows_are_newest_first_then_by_recipient_then_message_spec_15_1() {
    let all = paging_index().search(&query(), at(10), keep()).unwrap();
    assert_eq!(
        ids(&all.rows),
        [
            "m01 carol", // minute 9
            "m02 alice", // minute 8: two messages for bob
            "m02 bob",
            "m03 bob",
            "m04 dave", // minute 7
            "m04 frank",
            "m05 alice", // minute 6: three messages for erin
            "m06 bob",
            "m05 erin",
            "m07 erin",
            "m08 erin",
            "m09 gina", // minute 5
            "m10 gina",
            "m11 hank",
            "m12 alice", // minute 4
            "m12 bob",
            "m12 carol",
            "m12 dave",
            "m14 yan", // minute 3
            "m13 zed",
            "m14 zed",
            "m15 alice", // minute 2
            "m16 alice",
            "m17 bob", // minute 1
            "m17 carol",
        ]
    );
    assert!(!all.truncated && all.next_page.is_none());
}

#[test]
fn the_next_page_continues_after_the_last_row_with_none_repeated_or_skipped_even_on_ties_spec_15_1() {
    let index = paging_index();
    let all = index.search(&query(), at(10), keep()).unwrap().rows;
    let mut q = Query { limit: Some(10), ..query() };
    let mut pages: Vec<SearchResult> = Vec::new();
    loop {
        let page = index.search(&q, at(10), keep()).unwrap();
        assert_eq!(page.truncated, page.next_page.is_some());
        let Some(next) = page.next_page.clone() else {
            pages.push(page);
            break;
        };
        assert!(pages.len() < 5, "paging does not end");
        // The continuation is the page's last row.
        let last = page.rows.last().unwrap();
        assert_eq!(
            (next.until, next.starting_recipient.as_str(), next.starting_message_id.as_str()),
            (last.received_at, last.recipient.as_str(), last.message_id.as_str())
        );
        assert_eq!(Some(next.since), q.since, "every page searches one window");
        q = Query {
            since: Some(next.since),
            until: Some(next.until),
            starting_recipient: Some(next.starting_recipient),
            starting_message_id: Some(next.starting_message_id),
            ..q
        };
        pages.push(page);
    }
    assert_eq!(pages.iter().map(|p| p.rows.len()).collect::<Vec<_>>(), [10, 10, 5]);
    // Both cuts fall between two messages received at one instant for one recipient.
    assert_eq!((ids(&pages[0].rows)[9].as_str(), ids(&pages[1].rows)[0].as_str()), ("m07 erin", "m08 erin"));
    assert_eq!((ids(&pages[1].rows)[9].as_str(), ids(&pages[2].rows)[0].as_str()), ("m13 zed", "m14 zed"));
    let paged: Vec<TraceRow> = pages.into_iter().flat_map(|p| p.rows).collect();
    assert_eq!(ids(&paged), ids(&all), "the pages are the whole answer, in order");

    // A message received later, newer than `until`, does not shift the next page.
    let mut grown = paging_index();
    grown.apply(
        &received("m99", 30, "alice@contoso.com", &["erin@example.org"], "Hello"),
        Position { partition: 0, offset: 99 },
    );
    let second = Query {
        limit: Some(10),
        until: Some(at(6)),
        starting_recipient: Some("erin@example.org".into()),
        starting_message_id: Some("m07".into()),
        ..query()
    };
    assert_eq!(ids(&grown.search(&second, at(40), keep()).unwrap().rows)[..2], ["m08 erin", "m09 gina"]);
}

#[test]
fn eop_style_paging_by_recipient_alone_skips_that_recipients_rows_at_until_and_needs_until() {
    let index = paging_index();
    // `EndDate` + `StartingRecipientAddress` only: every erin row at minute 6 counts as seen.
    let q =
        Query { until: Some(at(6)), starting_recipient: Some("erin@example.org".into()), limit: Some(2), ..query() };
    assert_eq!(ids(&index.search(&q, at(10), keep()).unwrap().rows), ["m09 gina", "m10 gina"]);
    // Without `until` there is nothing to continue.
    let q = Query { starting_recipient: Some("erin@example.org".into()), ..query() };
    assert_eq!(index.search(&q, at(10), keep()), Err(QueryError::Paging));
    let q = Query { until: Some(at(6)), starting_message_id: Some("m07".into()), ..query() };
    assert_eq!(index.search(&q, at(10), keep()), Err(QueryError::Paging));
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

#[test]
fn prune_drops_messages_received_before_the_cutoff_only() {
    let mut index = TraceIndex::new();
    index.apply(
        &received("old", 1, "alice@contoso.com", &["bob@example.org"], "a"),
        Position { partition: 0, offset: 0 },
    );
    index.apply(
        &received("new", 30, "alice@contoso.com", &["bob@example.org"], "b"),
        Position { partition: 0, offset: 1 },
    );
    assert_eq!(index.prune(at(30)), 1);
    assert!(index.positions("old").is_none(), "received before the cutoff: gone");
    assert!(index.positions("new").is_some(), "received at the cutoff: kept");
    assert_eq!(index.prune(at(30)), 0);
}
