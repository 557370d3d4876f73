//! Configuration of the routing and delivery roles: `[transport]`,
//! `[mailbox_store]`, `[[outbound_connectors]]` and `[[remote_domains]]`
//! (EOP's `TransportConfig`, `OutboundConnector` and `RemoteDomain`, spec 0.3,
//! 0.4, 6 and 14).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// `[transport]` (EOP's `Set-TransportConfig`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransportConfig {
    /// `From` of NDRs (`ExternalPostmasterAddress`, spec 13.7). Default: none,
    /// meaning `postmaster@<default accepted domain>`.
    pub postmaster: Option<String>,
    /// How long undelivered mail is retried before it expires with an NDR
    /// `4.4.7` (`MessageExpiration`, spec 11.3). Default `24h`. EOP allows
    /// 12h–24h; shorter values are accepted for tests and labs.
    #[serde(with = "super::humane")]
    pub message_expiration: Duration,
    /// Delays between attempts: the n-th retry waits the n-th entry, the last
    /// one repeats (spec 11.2). Default `1m, 5m, 10m, 15m, 30m, 45m, 60m`.
    #[serde(deserialize_with = "humane_list")]
    pub retry_schedule: Vec<Duration>,
    /// Connections a delivery process opens at once to one destination; each
    /// takes the next message in receipt order. Default 1: with one
    /// connection messages also *arrive* in receipt order (spec 11.4); more
    /// connections drain a busy destination faster, like Postfix's
    /// `default_destination_concurrency_limit` (20).
    pub max_connections_per_destination: usize,
    /// Messages sent over one connection before it is closed and reopened. Default 100.
    pub max_messages_per_connection: usize,
    /// Time allowed to connect to a next hop (`4.4.315` after it). Default `30s`.
    #[serde(with = "super::humane")]
    pub connect_timeout: Duration,
    /// Time allowed for each reply of a next hop (RFC 5321 §4.5.3.2 allows
    /// up to 10 minutes; the default `5m` is Postfix's). Default `5m`.
    #[serde(with = "super::humane")]
    pub command_timeout: Duration,
    /// Extra CA certificates (PEM) trusted when a connector validates certificates,
    /// on top of the Mozilla roots. Default none.
    pub extra_ca: Option<PathBuf>,
    /// SMTP port of MX hosts. Default 25; tests point it at a loopback sink.
    pub mx_port: u16,
    /// How often the delivery role writes a snapshot of a partition's state
    /// that changed (also after every 100,000 events). Start-up loads the
    /// latest one and replays only what follows. Default `10m`.
    #[serde(with = "super::humane")]
    pub snapshot_interval: Duration,
    /// A message still undelivered this long after it was received gets its
    /// sender one delay notice (RFC 3464 `Action: delayed`) at its next
    /// deferral, for recipients whose `NOTIFY` includes `DELAY` or who gave
    /// none (spec R-05). `0s` turns delay notices off. Default `4h`
    /// (Exchange's `DelayNotificationTimeout`).
    #[serde(with = "super::humane")]
    pub delay_notice_after: Duration,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            postmaster: None,
            message_expiration: Duration::from_secs(24 * 3600),
            retry_schedule: [1, 5, 10, 15, 30, 45, 60].into_iter().map(|m| Duration::from_secs(m * 60)).collect(),
            max_connections_per_destination: 1,
            max_messages_per_connection: 100,
            connect_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(300),
            extra_ca: None,
            mx_port: 25,
            snapshot_interval: Duration::from_secs(600),
            delay_notice_after: Duration::from_secs(4 * 3600),
        }
    }
}

fn humane_list<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<Duration>, D::Error> {
    Vec::<String>::deserialize(deserializer)?
        .iter()
        .map(|text| humantime::parse_duration(text).map_err(serde::de::Error::custom))
        .collect()
}

/// `[mailbox_store]`: where mail for the organisation's own mailboxes goes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum MailboxStoreConfig {
    /// Maildir under a directory: `<path>/<primary address>/{tmp,new,cur}`,
    /// junk in the `.Junk` folder (the default, under `./var/mail`).
    Maildir {
        /// Root directory (default `var/mail`).
        #[serde(default = "default_maildir")]
        path: PathBuf,
    },
    /// An LMTP server (RFC 2033), e.g. Dovecot; one reply per recipient.
    Lmtp {
        /// TCP address of the LMTP listener, e.g. `127.0.0.1:24`.
        address: SocketAddr,
        /// Deliver junk with the `+Junk` detail understood by Dovecot's
        /// `lmtp_save_to_detail_mailbox` (default false: junk goes to the inbox
        /// with its SCL header, and the store's own filters decide).
        #[serde(default)]
        junk_detail: bool,
    },
}

impl Default for MailboxStoreConfig {
    fn default() -> Self {
        MailboxStoreConfig::Maildir { path: default_maildir() }
    }
}

fn default_maildir() -> PathBuf {
    PathBuf::from("var/mail")
}

/// `[[outbound_connectors]]` (spec 0.3, 6).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundConnectorConfig {
    /// Name (at most 64 characters), recorded as the destination.
    pub name: String,
    /// `partner` or `on_premises`.
    pub kind: super::InboundConnectorKind,
    /// Whether the connector is used (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Recipient domains it serves: exact, `*.x` (subdomains) or `*` (all).
    #[serde(default)]
    pub recipient_domains: Vec<String>,
    /// On-premises: serves the recipients of our accepted domains (hybrid).
    #[serde(default)]
    pub all_accepted_domains: bool,
    /// Next hops (`host`, `host:port`, `ip`, `[ip]:port`), tried in order.
    /// Empty: the recipient domain's MX (`UseMXRecord`).
    #[serde(default)]
    pub smart_hosts: Vec<String>,
    /// TLS to the next hop (default opportunistic).
    #[serde(default)]
    pub tls_settings: TlsSettings,
    /// Name the certificate must match with `domain_validation` (`*.x` allowed).
    #[serde(default)]
    pub tls_domain: Option<String>,
    /// Used only when a mail flow rule routes to it (spec 6.2).
    #[serde(default)]
    pub is_transport_rule_scoped: bool,
    /// Centralized mail transport (spec 6.6): all mail from the internet goes
    /// through this on-premises connector first.
    #[serde(default)]
    pub route_all_messages_via_on_premises: bool,
}

fn yes() -> bool {
    true
}

/// `TlsSettings` of an outbound connector (spec 6.4).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsSettings {
    /// STARTTLS when offered; no certificate check (EOP's default, `$null`).
    #[default]
    Opportunistic,
    /// TLS required, no certificate check.
    EncryptionOnly,
    /// TLS required, certificate chain checked and matching the host name.
    CertificateValidation,
    /// TLS required, certificate checked against `tls_domain`.
    DomainValidation,
}

/// `[[remote_domains]]` (spec 14): settings for mail to a remote domain.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteDomainConfig {
    /// Domain (`contoso.com`, `*.contoso.com`); `*` is EOP's built-in Default.
    pub name: String,
    /// NDRs to senders of this domain are generated and silently dropped when false (spec 13.5). Default true.
    #[serde(default = "yes")]
    pub ndr_enabled: bool,
    /// Automatic forwards to this domain are dropped silently when false (spec 14.3). Default true.
    #[serde(default = "yes")]
    pub auto_forward_enabled: bool,
    /// Automatic replies to this domain are dropped silently when false. Default true.
    #[serde(default = "yes")]
    pub auto_reply_enabled: bool,
    /// Delay and success notifications (`NOTIFY=DELAY`, `NOTIFY=SUCCESS`) to
    /// senders of this domain are not sent when false (spec 14.2
    /// `DeliveryReportEnabled`). Default true.
    #[serde(default = "yes")]
    pub delivery_report_enabled: bool,
}

impl RemoteDomainConfig {
    /// The entry of `all` that applies to `domain`: the most specific one
    /// (spec 14.1); `None` when none does (EOP's Default: everything allowed).
    pub fn most_specific<'a>(all: &'a [Self], domain: &str) -> Option<&'a Self> {
        all.iter().filter_map(|r| r.specificity(domain).map(|s| (s, r))).max_by_key(|(s, _)| *s).map(|(_, r)| r)
    }

    /// How specifically this entry covers `domain`: `None` if it does not,
    /// larger is more specific (spec 14.1: most specific wins).
    fn specificity(&self, domain: &str) -> Option<usize> {
        let name = self.name.to_ascii_lowercase();
        let domain = domain.to_ascii_lowercase();
        if name == "*" {
            Some(0)
        } else if let Some(parent) = name.strip_prefix("*.") {
            crate::policy::is_within(&domain, parent).then_some(parent.len())
        } else {
            (domain == name).then_some(name.len() + 1)
        }
    }
}
