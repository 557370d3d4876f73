//! [`TraceIndex`]: what message trace searches need of each message, folded
//! from `mailflow.journal` (spec 15.1, 15.4).
//!
//! Per message (keyed by the router's message id, the trace's
//! `network_message_id`) it keeps the summary columns a search filters on
//! (received time, sender, subject, `Message-ID` header, client IP), the latest
//! status of each recipient and the IP address its copy was sent to, and the
//! log positions of the message's journal records. It keeps no record bodies:
//! the detail view reads them back from the log by position (`super::detail`).
//!
//! Invariants:
//! - [`TraceIndex::apply`] is infallible, deterministic and clock-free; the
//!   clock enters only through [`Query::window`] at search time.
//! - A recipient's status is the one of the record with the latest
//!   `occurred_at` that names it; on equal times the later record in the log
//!   wins. The journal may hold a message's records out of time order (a
//!   projector catching up), so log order alone would not do. Its To IP
//!   follows the same rule among its `SEND` records.
//! - The To IP (spec 15.1 `ToIP`) is the `server_ip` of a `SEND`: the next
//!   hop outside the router that took the copy. A `DELIVER` into the mailbox
//!   store sets none, nor do attempts that did not hand the copy over
//!   (`DEFER`, `FAIL`), so inbound mail has a blank To IP.
//! - A record applied twice (the projector wrote it again after a crash) adds
//!   its position twice; statuses are unaffected, and the detail view drops
//!   the copy by `event_id`.
//!
//! Paging (spec 15.1 `EndDate` + `StartingRecipientAddress`): rows are listed
//! newest first, and rows received at the same instant by recipient, then by
//! message id, which together name one row. A page cut by the limit says where
//! the next one starts ([`NextPage`]): `until` is its last row's received time,
//! `starting_recipient` and `starting_message_id` its recipient and message,
//! and the next page lists the rows after that one in the same order. Messages
//! that arrive meanwhile, newer than `until`, do not shift the pages.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use mailflow_events::Envelope;
use mailflow_events::journal::{JournalEvent, TraceStatus};
use mailflow_events::log::Position;
use serde::{Deserialize, Serialize};

/// Rows a search returns when no `limit` is given (spec 15.1 `ResultSize`).
pub const DEFAULT_LIMIT: usize = 1000;
/// Largest `limit` a search accepts (spec 15.1).
pub const MAX_LIMIT: usize = 5000;
/// The window searched when a query gives no `since` (spec 15.1: the last
/// 48 hours when no dates are given).
pub const DEFAULT_WINDOW_HOURS: i64 = 48;
/// The longest window one query may cover (spec 15.1: 10 days per query).
pub const MAX_WINDOW_DAYS: i64 = 10;

/// One recipient's latest status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RecipientStatus {
    address: Box<str>,
    status: TraceStatus,
    /// `occurred_at` of the record that set `status`, in ms since the epoch.
    at_ms: i64,
    /// `server_ip` of the latest `SEND` of its copy.
    to_ip: Option<Box<str>>,
    /// `occurred_at` of that `SEND`, in ms since the epoch.
    to_ip_at_ms: i64,
}

impl RecipientStatus {
    fn new(address: &str, status: TraceStatus, at_ms: i64) -> Self {
        Self { address: boxed(address), status, at_ms, to_ip: None, to_ip_at_ms: i64::MIN }
    }
}

/// What the index keeps of one message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    /// `received_at` of its `Received` record, or the earliest `occurred_at` seen.
    received_at_ms: i64,
    /// Whether `received_at_ms` comes from a `Received` record.
    has_received: bool,
    sender: Box<str>,
    subject: Option<Box<str>>,
    internet_message_id: Option<Box<str>>,
    client_ip: Option<Box<str>>,
    recipients: Vec<RecipientStatus>,
    /// Positions of its journal records, in the order they were applied.
    positions: Vec<Position>,
}

/// The message trace index. Not `Clone`: one per process, behind a lock.
/// Serialised whole as the checkpoint in the data directory (`super::store`).
#[derive(Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceIndex {
    messages: HashMap<Box<str>, Entry>,
    records: u64,
}

impl std::fmt::Debug for TraceIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceIndex").field("messages", &self.messages.len()).field("records", &self.records).finish()
    }
}

/// How `subject` is matched (spec 15.1 `SubjectFilterType`); case-insensitive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SubjectMatch {
    /// The subject contains the text.
    #[default]
    Contains,
    /// The subject starts with the text.
    Starts,
    /// The subject ends with the text.
    Ends,
}

/// A search (the query string of `GET /api/v1/trace`). Every given filter
/// must hold; text compares case-insensitively except ids. An unknown
/// parameter (a misspelt filter) is refused, never ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Query {
    /// Envelope sender, exactly.
    pub sender: Option<String>,
    /// Recipient address, exactly; several separated by `,` (any of them).
    pub recipient: Option<String>,
    /// The router's message id.
    pub message_id: Option<String>,
    /// `Message-ID` header; the angle brackets may be left out.
    pub internet_message_id: Option<String>,
    /// IP address of the sending server.
    pub client_ip: Option<String>,
    /// IP address the recipient's copy was sent to (spec 15.1 `ToIP`); rows
    /// with no such address (inbound mail, not sent yet) never match.
    pub to_ip: Option<String>,
    /// Status of the row: a wire name (`filtered_as_spam`) or EOP's (`FilteredAsSpam`).
    pub status: Option<String>,
    /// Text the subject is matched against.
    pub subject: Option<String>,
    /// How `subject` is matched (default `contains`).
    pub subject_match: Option<SubjectMatch>,
    /// Messages received at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// Messages received at or before this instant.
    pub until: Option<DateTime<Utc>>,
    /// Paging (spec 15.1 `StartingRecipientAddress`), with `until`: of the
    /// rows received at `until`, only those after this recipient in the
    /// listing's order (byte order of the address, then message id).
    pub starting_recipient: Option<String>,
    /// Paging, with `starting_recipient`: the message of the previous page's
    /// last row, so that rows of messages received at the same instant for
    /// the same recipient are told apart. Without it, every row at `until`
    /// for `starting_recipient` counts as seen.
    pub starting_message_id: Option<String>,
    /// Rows at most (1–5000, default 1000).
    pub limit: Option<usize>,
}

/// Why a query was refused (permanent: the query must change).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// `status` names no trace status.
    #[error(
        "unknown status {0:?}: use delivered, pending, failed, quarantined, filtered_as_spam, expanded, getting_status or none"
    )]
    UnknownStatus(String),
    /// `limit` is outside 1–5000.
    #[error("limit must be between 1 and {MAX_LIMIT}, not {0}")]
    Limit(usize),
    /// `since` is after `until`.
    #[error("since ({0}) is after until ({1})")]
    Window(DateTime<Utc>, DateTime<Utc>),
    /// The window is longer than one query may cover.
    #[error(
        "the window from {0} to {1} covers {days:.1} days; one query covers at most {MAX_WINDOW_DAYS} days: search a shorter window (since and until)",
        days = (*.1 - *.0).num_hours() as f64 / 24.0
    )]
    TooLong(DateTime<Utc>, DateTime<Utc>),
    /// The window starts before the oldest message the trace keeps.
    #[error("since ({0}) is older than the trace keeps messages ({1} days, [trace] retention)")]
    TooOld(DateTime<Utc>, i64),
    /// A paging parameter came without the one it continues.
    #[error(
        "starting_recipient needs until, and starting_message_id needs starting_recipient: pass the next_page of the previous answer"
    )]
    Paging,
}

/// One search result: a message and one of its recipients (spec 15.4 summary row).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceRow {
    /// When the router received the message (UTC).
    pub received_at: DateTime<Utc>,
    /// The router's message id.
    pub message_id: String,
    /// Envelope sender; empty for `<>`.
    pub sender: String,
    /// The recipient of this row; empty when the record named none (a refused connection).
    pub recipient: String,
    /// `Subject` header.
    pub subject: Option<String>,
    /// The recipient's latest status.
    pub status: TraceStatus,
    /// `Message-ID` header.
    pub internet_message_id: Option<String>,
    /// IP address of the sending server.
    pub client_ip: Option<String>,
    /// IP address the recipient's copy was sent to (`server_ip` of its
    /// latest `SEND`); none for mail delivered to the mailbox store.
    #[serde(default)]
    pub to_ip: Option<String>,
}

/// The answer to a search.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchResult {
    /// Start of the window searched.
    pub since: DateTime<Utc>,
    /// End of the window searched.
    pub until: DateTime<Utc>,
    /// Rows, newest first; rows received at the same instant by recipient,
    /// then message id.
    pub rows: Vec<TraceRow>,
    /// Whether more rows match than the limit let through.
    pub truncated: bool,
    /// When `truncated`: the parameters that fetch the next page.
    #[serde(default)]
    pub next_page: Option<NextPage>,
}

/// Where the next page of a search starts (spec 15.1: pagination via
/// `StartingRecipientAddress` + `EndDate`): query again with the same filters
/// and these four parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextPage {
    /// `since`: the start of the window searched, as searched (also when it
    /// was the 48-hour default), so that every page searches one window.
    pub since: DateTime<Utc>,
    /// `until`: the received time of the page's last row.
    pub until: DateTime<Utc>,
    /// `starting_recipient`: the recipient of the page's last row.
    pub starting_recipient: String,
    /// `starting_message_id`: the message id of the page's last row.
    pub starting_message_id: String,
}

impl NextPage {
    fn after(row: &TraceRow, since: DateTime<Utc>) -> Self {
        Self {
            since,
            until: row.received_at,
            starting_recipient: row.recipient.clone(),
            starting_message_id: row.message_id.clone(),
        }
    }
}

/// Parses a status as its wire name (`filtered_as_spam`) or EOP's name (`FilteredAsSpam`).
pub fn parse_status(text: &str) -> Option<TraceStatus> {
    let folded: String = text.chars().filter(|c| *c != '_' && *c != '-').collect::<String>().to_ascii_lowercase();
    Some(match folded.as_str() {
        "delivered" => TraceStatus::Delivered,
        "failed" => TraceStatus::Failed,
        "pending" => TraceStatus::Pending,
        "filteredasspam" => TraceStatus::FilteredAsSpam,
        "quarantined" => TraceStatus::Quarantined,
        "expanded" => TraceStatus::Expanded,
        "gettingstatus" => TraceStatus::GettingStatus,
        "none" => TraceStatus::None,
        _ => return None,
    })
}

/// EOP's name of a status, as the trace shows it (`FilteredAsSpam`).
pub fn status_name(status: TraceStatus) -> &'static str {
    match status {
        TraceStatus::Delivered => "Delivered",
        TraceStatus::Failed => "Failed",
        TraceStatus::Pending => "Pending",
        TraceStatus::FilteredAsSpam => "FilteredAsSpam",
        TraceStatus::Quarantined => "Quarantined",
        TraceStatus::Expanded => "Expanded",
        TraceStatus::GettingStatus => "GettingStatus",
        TraceStatus::None => "None",
    }
}

impl Query {
    /// The window searched at `now` (spec 15.1): `since` defaults to 48 hours
    /// before `until`, and `until` to `now`. It may cover at most 10 days, and
    /// not start before the trace's `retention`.
    pub fn window(
        &self,
        now: DateTime<Utc>,
        retention: Duration,
    ) -> Result<(DateTime<Utc>, DateTime<Utc>), QueryError> {
        let until = self.until.unwrap_or(now);
        let since = self.since.unwrap_or(until - Duration::hours(DEFAULT_WINDOW_HOURS));
        if since > until {
            return Err(QueryError::Window(since, until));
        }
        if until - since > Duration::days(MAX_WINDOW_DAYS) {
            return Err(QueryError::TooLong(since, until));
        }
        if since < now - retention {
            return Err(QueryError::TooOld(since, retention.num_days()));
        }
        Ok((since, until))
    }
}

fn boxed(text: &str) -> Box<str> {
    text.into()
}

fn eq_ignore_case(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// Whether `wanted` (as typed in a query) names the IP address `ip`: as
/// addresses when both parse (`2001:DB8::1` is `2001:db8::1`), else as text.
fn same_ip(wanted: &str, ip: &str) -> bool {
    let wanted = wanted.trim();
    match (wanted.parse::<std::net::IpAddr>(), ip.parse::<std::net::IpAddr>()) {
        (Ok(a), Ok(b)) => a == b,
        _ => wanted == ip,
    }
}

/// The `Message-ID` header with its angle brackets.
fn bracketed(id: &str) -> String {
    let id = id.trim();
    if id.starts_with('<') { id.to_string() } else { format!("<{id}>") }
}

impl TraceIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Messages indexed.
    pub fn messages(&self) -> usize {
        self.messages.len()
    }

    /// Journal records applied.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Folds one journal record, read at `position` of `mailflow.journal`.
    pub fn apply(&mut self, envelope: &Envelope<JournalEvent>, position: Position) {
        self.records += 1;
        let at_ms = envelope.occurred_at.timestamp_millis();
        let record = envelope.event.record();
        let entry = match self.messages.get_mut(envelope.message_id.as_str()) {
            Some(entry) => entry,
            None => self
                .messages
                .entry(boxed(&envelope.message_id))
                .or_insert_with(|| Entry { received_at_ms: at_ms, ..Entry::default() }),
        };
        entry.positions.push(position);
        match &envelope.event {
            JournalEvent::Received(received) => {
                entry.received_at_ms = received.received_at.timestamp_millis();
                entry.has_received = true;
            }
            _ if !entry.has_received => entry.received_at_ms = entry.received_at_ms.min(at_ms),
            _ => {}
        }
        // The sending server is the client of the receipt or of a refusal at
        // the door; later hops have the router as their client.
        let at_the_door = matches!(&envelope.event, JournalEvent::Received(_))
            || matches!(&envelope.event, JournalEvent::Failed(f) if f.attempts == 0);
        if entry.sender.is_empty() && !record.sender.is_empty() {
            entry.sender = boxed(&record.sender);
        }
        if entry.subject.is_none() {
            entry.subject = record.subject.as_deref().map(boxed);
        }
        if entry.internet_message_id.is_none() {
            entry.internet_message_id = record.internet_message_id.as_deref().map(boxed);
        }
        if entry.client_ip.is_none() && at_the_door {
            entry.client_ip = record.client_ip.as_deref().map(boxed);
        }
        for address in &record.recipients {
            set_status(&mut entry.recipients, address, record.status, at_ms);
        }
        if let JournalEvent::Sent(sent) = &envelope.event
            && let Some(ip) = sent.record.server_ip.as_deref()
        {
            for address in &record.recipients {
                set_to_ip(&mut entry.recipients, address, ip, at_ms);
            }
        }
        // Members of a group and new recipients of a redirect get rows of their own.
        let related: &[String] = match &envelope.event {
            JournalEvent::Expanded(e) => &e.members,
            JournalEvent::Redirected(r) => &r.redirected_to,
            _ => &[],
        };
        for address in related {
            if !entry.recipients.iter().any(|r| eq_ignore_case(&r.address, address)) {
                entry.recipients.push(RecipientStatus::new(address, TraceStatus::Pending, i64::MIN));
            }
        }
    }

    /// Drops the messages received before `cutoff` (the trace's retention,
    /// spec 15.1: 90 days); returns how many. A record of a dropped message
    /// that comes later starts a new entry, which the next prune drops again
    /// when it is as old.
    pub fn prune(&mut self, cutoff: DateTime<Utc>) -> usize {
        let cutoff_ms = cutoff.timestamp_millis();
        let before = self.messages.len();
        self.messages.retain(|_, entry| entry.received_at_ms >= cutoff_ms);
        before - self.messages.len()
    }

    /// Positions of the journal records of message `id`, in the order applied.
    pub fn positions(&self, id: &str) -> Option<&[Position]> {
        self.messages.get(id).map(|e| e.positions.as_slice())
    }

    /// The summary rows of message `id` (every recipient, any time).
    pub fn rows_of(&self, id: &str) -> Vec<TraceRow> {
        self.messages.get_key_value(id).map(|(id, entry)| rows(id, entry, |_| true)).unwrap_or_default()
    }

    /// Searches at `now`, which sets the default window, in a trace that keeps
    /// messages for `retention` (see [`Query::window`]).
    pub fn search(&self, query: &Query, now: DateTime<Utc>, retention: Duration) -> Result<SearchResult, QueryError> {
        let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(QueryError::Limit(limit));
        }
        let status = match &query.status {
            Some(text) => Some(parse_status(text).ok_or_else(|| QueryError::UnknownStatus(text.clone()))?),
            None => None,
        };
        let (since, until) = query.window(now, retention)?;
        let after = match (&query.starting_recipient, &query.starting_message_id, query.until) {
            (None, None, _) => None,
            (Some(recipient), id, Some(_)) => Some((recipient.as_str(), id.as_deref())),
            _ => return Err(QueryError::Paging),
        };
        let (since_ms, until_ms) = (since.timestamp_millis(), until.timestamp_millis());
        let recipients: Vec<&str> =
            query.recipient.as_deref().map(|r| r.split(',').map(str::trim).collect()).unwrap_or_default();
        let internet_message_id = query.internet_message_id.as_deref().map(bracketed);
        let subject = query.subject.as_deref().map(str::to_lowercase);
        let subject_match = query.subject_match.unwrap_or_default();
        let recipient_wanted = |r: &RecipientStatus| {
            (recipients.is_empty() || recipients.iter().any(|w| eq_ignore_case(w, &r.address)))
                && status.is_none_or(|s| s == r.status)
                && query.to_ip.as_deref().is_none_or(|w| r.to_ip.as_deref().is_some_and(|ip| same_ip(w, ip)))
        };

        // A message id names one entry: no scan.
        let candidates: Box<dyn Iterator<Item = (&Box<str>, &Entry)>> = match &query.message_id {
            Some(id) => Box::new(self.messages.get_key_value(id.trim()).into_iter()),
            None => Box::new(self.messages.iter()),
        };
        let mut found: Vec<(&Box<str>, &Entry)> = candidates
            .filter(|(_, e)| (since_ms..=until_ms).contains(&e.received_at_ms))
            .filter(|(_, e)| query.sender.as_deref().is_none_or(|s| eq_ignore_case(s.trim(), &e.sender)))
            .filter(|(_, e)| internet_message_id.as_deref().is_none_or(|w| e.internet_message_id.as_deref() == Some(w)))
            .filter(|(_, e)| {
                query.client_ip.as_deref().is_none_or(|w| e.client_ip.as_deref().is_some_and(|ip| same_ip(w, ip)))
            })
            .filter(|(_, e)| {
                subject.as_deref().is_none_or(|w| {
                    let Some(s) = e.subject.as_deref() else { return false };
                    let s = s.to_lowercase();
                    match subject_match {
                        SubjectMatch::Contains => s.contains(w),
                        SubjectMatch::Starts => s.starts_with(w),
                        SubjectMatch::Ends => s.ends_with(w),
                    }
                })
            })
            .filter(|(_, e)| {
                (e.recipients.is_empty() && recipients.is_empty() && status.is_none() && query.to_ip.is_none())
                    || e.recipients.iter().any(recipient_wanted)
            })
            .collect();
        found.sort_unstable_by_key(|(_, e)| std::cmp::Reverse(e.received_at_ms));
        let mut result = SearchResult { since, until, rows: Vec::new(), truncated: false, next_page: None };
        // Rows of one instant are ordered among themselves, across messages.
        for group in found.chunk_by(|(_, a), (_, b)| a.received_at_ms == b.received_at_ms) {
            let mut listed: Vec<TraceRow> = group.iter().flat_map(|(id, e)| rows(id, e, recipient_wanted)).collect();
            listed.sort_by(|a, b| row_key(a).cmp(&row_key(b)));
            let resumes = after.filter(|_| group[0].1.received_at_ms == until_ms);
            for row in listed {
                if let Some((recipient, id)) = resumes
                    && !follows(&row, recipient, id)
                {
                    continue;
                }
                if result.rows.len() == limit {
                    result.truncated = true;
                    result.next_page = result.rows.last().map(|last| NextPage::after(last, since));
                    return Ok(result);
                }
                result.rows.push(row);
            }
        }
        Ok(result)
    }
}

/// A row's place among the rows received at the same instant.
fn row_key(row: &TraceRow) -> (&str, &str) {
    (&row.recipient, &row.message_id)
}

/// Whether `row`, received at the previous page's `until`, comes after that
/// page's last row (`recipient`, and `message_id` when given).
fn follows(row: &TraceRow, recipient: &str, message_id: Option<&str>) -> bool {
    match message_id {
        Some(id) => row_key(row) > (recipient, id),
        None => row.recipient.as_str() > recipient,
    }
}

fn set_status(recipients: &mut Vec<RecipientStatus>, address: &str, status: TraceStatus, at_ms: i64) {
    match recipients.iter_mut().find(|r| eq_ignore_case(&r.address, address)) {
        Some(r) if at_ms >= r.at_ms => {
            r.status = status;
            r.at_ms = at_ms;
        }
        Some(_) => {}
        None => recipients.push(RecipientStatus::new(address, status, at_ms)),
    }
}

fn set_to_ip(recipients: &mut [RecipientStatus], address: &str, ip: &str, at_ms: i64) {
    // `set_status` ran first for the same record: the recipient is there.
    if let Some(r) = recipients.iter_mut().find(|r| eq_ignore_case(&r.address, address))
        && at_ms >= r.to_ip_at_ms
    {
        r.to_ip = Some(boxed(ip));
        r.to_ip_at_ms = at_ms;
    }
}

/// The rows of one message whose recipient `wanted` accepts, by recipient.
fn rows(id: &str, entry: &Entry, wanted: impl Fn(&RecipientStatus) -> bool) -> Vec<TraceRow> {
    let row = |recipient: &str, status: TraceStatus, to_ip: Option<&str>| TraceRow {
        received_at: DateTime::from_timestamp_millis(entry.received_at_ms).unwrap_or_default(),
        message_id: id.to_string(),
        sender: entry.sender.to_string(),
        recipient: recipient.to_string(),
        subject: entry.subject.as_deref().map(str::to_string),
        status,
        internet_message_id: entry.internet_message_id.as_deref().map(str::to_string),
        client_ip: entry.client_ip.as_deref().map(str::to_string),
        to_ip: to_ip.map(str::to_string),
    };
    if entry.recipients.is_empty() {
        // A refused connection names no recipient; it still has a row.
        return vec![row("", TraceStatus::None, None)];
    }
    let mut rows: Vec<TraceRow> =
        entry.recipients.iter().filter(|r| wanted(r)).map(|r| row(&r.address, r.status, r.to_ip.as_deref())).collect();
    rows.sort_by(|a, b| a.recipient.cmp(&b.recipient));
    rows
}

#[cfg(test)]
#[path = "index_tests.rs"]
pub(crate) mod tests;
