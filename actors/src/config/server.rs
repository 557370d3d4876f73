//! `[server]`: SMTP listeners, TLS and the front door's limits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::humane;

/// SMTP server settings. Every limit has a default and a reply (see
/// `connection::reply`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Name in the banner, EHLO reply and `Received:` headers (default `mailflow.localhost`).
    pub hostname: String,
    /// Listeners (default: one anonymous listener on `127.0.0.1:2525`).
    pub listeners: Vec<ListenerConfig>,
    /// Certificate and key for STARTTLS; without them STARTTLS is not offered.
    pub tls: Option<TlsConfig>,
    /// Largest message in bytes, advertised as `SIZE` (default 36700160 = 35 MiB,
    /// at most 157286400 = 150 MiB); larger gets `552 5.3.4`.
    pub max_message_size: u64,
    /// Recipients per message (default 200); the next gets `452 4.5.3`.
    pub max_recipients: usize,
    /// Longest command line in bytes, CRLF included (default 2048); longer gets `500 5.5.2`.
    pub max_line_length: usize,
    /// Time allowed for the next command to arrive complete, from the last
    /// reply (default 5m); then `421 4.4.2`. Partial bytes do not extend it.
    #[serde(with = "humane")]
    pub command_timeout: Duration,
    /// Time a DATA/BDAT transfer may go without progress (default 3m); then
    /// `421 4.4.2`. With `min_data_rate` the allowance is a budget, as in
    /// Postfix's `smtpd_per_request_deadline`: each read spends the time it
    /// waited and earns `bytes / min_data_rate` seconds, never more than
    /// `data_timeout` in hand.
    #[serde(with = "humane")]
    pub data_timeout: Duration,
    /// Slowest DATA/BDAT transfer kept, in bytes per second (default 500,
    /// Postfix's `smtpd_min_data_rate`); a client dripping content below it
    /// loses the session with `421 4.4.2` after at most about `data_timeout`.
    /// 0: only the time between two reads is limited (by `data_timeout`).
    pub min_data_rate: u64,
    /// Bytes of the header section a message may have (default 102400,
    /// Postfix's `header_size_limit`); more gets `552 5.3.4`.
    pub max_header_size: usize,
    /// Header fields a message may have (default 1000, Haraka's
    /// `max_header_lines`); more gets `552 5.3.4`. Continuation lines belong
    /// to their field.
    pub max_header_fields: usize,
    /// Longest a whole session may last (default 30m); then `421 4.4.2`. Bounds slow-drip clients.
    #[serde(with = "humane")]
    pub session_timeout: Duration,
    /// After SIGTERM, how long sessions in a transaction and running deliveries
    /// may take to finish (default 25s, inside Kubernetes' default grace period
    /// of 30s); new connections meanwhile get `421 4.3.2`. See `drain`.
    #[serde(with = "humane")]
    pub drain_timeout: Duration,
    /// Concurrent sessions in all (default 1000); past it `421 4.7.0`.
    pub max_connections: usize,
    /// Concurrent sessions per client IP (default 50); past it `421 4.7.0`.
    pub max_connections_per_ip: usize,
    /// Failed commands per session (default 20); then `421 4.7.0` and disconnect.
    pub max_errors: usize,
    /// `Received:` headers a message may carry (default 20, the loop limit of
    /// spec 6.5 / Q-13: EOP interrupts a loop after 20 iterations; Postfix's
    /// `hopcount_limit` is 50); more is a loop, `554 5.4.14`.
    pub max_received_headers: usize,
    /// Whether VRFY answers (default false: `252 2.1.5`, never confirming an
    /// address); true: `250` for directory addresses, `550 5.1.1` otherwise.
    pub vrfy: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            hostname: "mailflow.localhost".to_string(),
            listeners: vec![ListenerConfig::default()],
            tls: None,
            max_message_size: 35 * 1024 * 1024,
            max_recipients: 200,
            max_line_length: 2048,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(180),
            min_data_rate: 500,
            max_header_size: 100 * 1024,
            max_header_fields: 1000,
            session_timeout: Duration::from_secs(1800),
            drain_timeout: Duration::from_secs(25),
            max_connections: 1000,
            max_connections_per_ip: 50,
            max_errors: 20,
            max_received_headers: 20,
            vrfy: false,
        }
    }
}

/// What a listener is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListenerKind {
    /// Port 25 style: anonymous mail from the internet, partners and on-premises servers.
    Smtp,
    /// Port 587 style: SMTP AUTH submission, AUTH offered only after STARTTLS.
    Submission,
}

/// `[[server.listeners]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Name recorded in events (default `smtp`).
    #[serde(default = "default_listener_name")]
    pub name: String,
    /// Address and port; IPv6 as `[::1]:2525` (default `127.0.0.1:2525`).
    pub address: SocketAddr,
    /// `smtp` (default) or `submission`.
    #[serde(default = "default_listener_kind")]
    pub kind: ListenerKind,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            name: default_listener_name(),
            address: SocketAddr::from(([127, 0, 0, 1], 2525)),
            kind: ListenerKind::Smtp,
        }
    }
}

fn default_listener_name() -> String {
    "smtp".to_string()
}
fn default_listener_kind() -> ListenerKind {
    ListenerKind::Smtp
}

/// `[server.tls]`: PEM files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain, PEM.
    pub certificate: PathBuf,
    /// Private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates (PEM) that sign the client certificates of on-premises
    /// servers and partners. When set, clients are asked for a certificate
    /// (optional: clients without one still get TLS); a certificate that does
    /// not chain to these fails the handshake. Default: certificates not asked.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}
