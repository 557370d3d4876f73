//! `mailflow trace`: message trace through a running router's admin API, like
//! `mailflow queue`. Without `--message`, a search (one row per message and
//! recipient); with it, the message's events in time order.

use chrono::{DateTime, Utc};

use super::detail::TraceEvent;
use super::index::{Query, SearchResult, SubjectMatch, TraceRow, status_name};
use crate::admin::client::AdminClient;

/// Arguments of `mailflow trace` (spec 15.1's filters).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TraceArgs {
    /// Envelope sender.
    #[arg(long)]
    pub sender: Option<String>,
    /// Recipient address; several separated by commas.
    #[arg(long)]
    pub recipient: Option<String>,
    /// `Message-ID` header (angle brackets optional).
    #[arg(long = "internet-message-id")]
    pub internet_message_id: Option<String>,
    /// IP address of the sending server.
    #[arg(long = "from-ip")]
    pub client_ip: Option<String>,
    /// IP address a recipient's copy was sent to (outbound; inbound mail has none).
    #[arg(long = "to-ip")]
    pub to_ip: Option<String>,
    /// Status: delivered, pending, failed, quarantined, filtered_as_spam, expanded, none.
    #[arg(long)]
    pub status: Option<String>,
    /// Text to find in the subject (case-insensitive).
    #[arg(long)]
    pub subject: Option<String>,
    /// How --subject matches.
    #[arg(long, value_enum, default_value_t = SubjectMatch::Contains)]
    pub subject_match: SubjectMatch,
    /// Messages received at or after this instant (RFC 3339); by default 48
    /// hours before --until. One search covers at most 10 days.
    #[arg(long)]
    pub since: Option<DateTime<Utc>>,
    /// Messages received at or before this instant (RFC 3339); by default now.
    #[arg(long)]
    pub until: Option<DateTime<Utc>>,
    /// Next page (spec 15.1 `StartingRecipientAddress`): the recipient of the
    /// previous page's last row, with --until its received time.
    #[arg(long, requires = "until")]
    pub starting_recipient: Option<String>,
    /// Next page: the message id of the previous page's last row.
    #[arg(long, requires = "starting_recipient")]
    pub starting_message_id: Option<String>,
    /// Rows at most (1–5000).
    #[arg(long, default_value_t = super::index::DEFAULT_LIMIT)]
    pub limit: usize,
    /// Show every event of this message (its mailflow message id) instead of searching.
    #[arg(long)]
    pub message: Option<String>,
    /// Search by mailflow message id (a row per recipient).
    #[arg(long = "message-id", conflicts_with = "message")]
    pub message_id: Option<String>,
    /// Print the API's JSON.
    #[arg(long)]
    pub json: bool,
}

impl TraceArgs {
    /// The admin API query string of the search.
    pub fn query_string(&self) -> String {
        let query = Query {
            sender: self.sender.clone(),
            recipient: self.recipient.clone(),
            message_id: self.message_id.clone(),
            internet_message_id: self.internet_message_id.clone(),
            client_ip: self.client_ip.clone(),
            to_ip: self.to_ip.clone(),
            status: self.status.clone(),
            subject_match: self.subject.as_ref().map(|_| self.subject_match),
            subject: self.subject.clone(),
            since: self.since,
            until: self.until,
            starting_recipient: self.starting_recipient.clone(),
            starting_message_id: self.starting_message_id.clone(),
            limit: Some(self.limit),
        };
        let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(&query) else { return String::new() };
        let pairs: Vec<String> = fields
            .iter()
            .filter_map(|(name, value)| {
                let text = match value {
                    serde_json::Value::Null => return None,
                    serde_json::Value::String(text) => text.clone(),
                    other => other.to_string(),
                };
                Some(format!("{name}={}", encode(&text)))
            })
            .collect();
        pairs.join("&")
    }
}

/// Percent-encodes a query-string value.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~@".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// Runs `mailflow trace`.
pub async fn run(client: &AdminClient, args: &TraceArgs) -> anyhow::Result<()> {
    if let Some(id) = &args.message {
        let value = client.get(&format!("/api/v1/trace/{}", encode(id))).await?;
        if args.json {
            println!("{value}");
            return Ok(());
        }
        let rows: Vec<TraceRow> = serde_json::from_value(value["recipients"].clone())?;
        let events: Vec<TraceEvent> = serde_json::from_value(value["events"].clone())?;
        if let Some(first) = rows.first() {
            println!("Message {id}  received {} UTC  from {}", time(first.received_at), first.sender);
            println!("  Subject: {}", first.subject.as_deref().unwrap_or("-"));
            println!("  Message-ID: {}", first.internet_message_id.as_deref().unwrap_or("-"));
            println!("  From IP: {}", first.client_ip.as_deref().unwrap_or("-"));
        }
        for row in &rows {
            let to_ip = row.to_ip.as_deref().map(|ip| format!("  To IP: {ip}")).unwrap_or_default();
            println!("  {:<40} {:<15}{to_ip}", row.recipient, status_name(row.status));
        }
        println!("{:<20} {:<10} {:<30} {:<16} DETAIL", "DATE (UTC)", "EVENT", "REMOTE HOST", "CONNECTOR");
        for e in &events {
            let mut detail = e.detail.clone();
            if let Some(reply) = e.reply.as_deref().filter(|r| !detail.contains(r)) {
                detail = format!("{detail} [{reply}]");
            }
            if let Some(data) = &e.custom_data {
                detail = format!("{detail} {data}");
            }
            println!(
                "{:<20} {:<10} {:<30} {:<16} {detail}",
                time(e.occurred_at),
                e.event,
                e.remote_host.as_deref().unwrap_or("-"),
                e.connector.as_deref().unwrap_or("-"),
            );
        }
        return Ok(());
    }
    let value = client.get(&format!("/api/v1/trace?{}", args.query_string())).await?;
    if args.json {
        println!("{value}");
        return Ok(());
    }
    let result: SearchResult = serde_json::from_value(value.clone())?;
    println!("{:<20} {:<34} {:<30} {:<30} {:<15} SUBJECT", "DATE (UTC)", "MESSAGE", "SENDER", "RECIPIENT", "STATUS");
    for r in &result.rows {
        println!(
            "{:<20} {:<34} {:<30} {:<30} {:<15} {}",
            time(r.received_at),
            r.message_id,
            r.sender,
            r.recipient,
            status_name(r.status),
            r.subject.as_deref().unwrap_or("")
        );
    }
    eprintln!(
        "{} rows{}",
        result.rows.len(),
        if value["caught_up"] == false { "; the trace is still reading the journal" } else { "" }
    );
    if let Some(next) = &result.next_page {
        eprintln!(
            "more match; next page: the same filters with --since {} --until {} --starting-recipient '{}' --starting-message-id {}",
            next.since.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            next.until.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            next.starting_recipient,
            next.starting_message_id
        );
    }
    Ok(())
}
