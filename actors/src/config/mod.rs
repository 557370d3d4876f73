//! The router's configuration: one typed TOML tree, validated once at start-up.
//!
//! Unknown keys are errors, durations are humane (`"15m"`), and every field has
//! a documented default. `mailflow serve` with no file runs [`Config::builtin`],
//! a complete single-machine router with an example domain and mailboxes.

mod policy;
mod routing;
mod server;
mod telemetry;

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use mailflow_events::content::ContentEncoding;
use serde::Deserialize;

pub use policy::{
    AcceptedDomainConfig, DirectoryConfig, DomainType, InboundConnectorConfig, InboundConnectorKind, IpNet,
    RecipientConfig, RecipientKind,
};
pub use routing::{MailboxStoreConfig, OutboundConnectorConfig, RemoteDomainConfig, TlsSettings, TransportConfig};
pub use server::{ListenerConfig, ListenerKind, ServerConfig, TlsConfig};
pub use telemetry::{OTLP_ENDPOINT_ENV, OtlpProtocol, TelemetryConfig};

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// SMTP listeners, TLS and limits.
    pub server: ServerConfig,
    /// Where events are kept.
    pub event_log: EventLogConfig,
    /// DNS resolver settings.
    pub dns: crate::dns::DnsConfig,
    /// Domains the organisation receives mail for (default none).
    pub accepted_domains: Vec<AcceptedDomainConfig>,
    /// Mail-enabled recipients and their proxy addresses.
    pub directory: DirectoryConfig,
    /// Inbound connectors from partners and on-premises servers (default none).
    pub inbound_connectors: Vec<InboundConnectorConfig>,
    /// Organisation-wide switches.
    pub organization: OrganizationConfig,
    /// Connection filter of the verdict role.
    pub anti_spam: crate::verdict::AntiSpamConfig,
    /// Mail flow rules (default none).
    pub transport_rules: Vec<crate::verdict::rules::TransportRuleConfig>,
    /// Postmaster, expiry, retry schedule, hop count, delivery limits.
    pub transport: TransportConfig,
    /// Where mail for our own mailboxes is stored (default Maildir under `var/mail`).
    pub mailbox_store: MailboxStoreConfig,
    /// Outbound connectors to partners and on-premises servers (default none: MX).
    pub outbound_connectors: Vec<OutboundConnectorConfig>,
    /// Per-domain settings for mail to remote domains (default: NDRs and forwards allowed everywhere).
    pub remote_domains: Vec<RemoteDomainConfig>,
    /// DKIM keys of our domains; outbound mail from them is signed (default none).
    pub dkim_signing: Vec<crate::delivery::dkim::DkimSigningConfig>,
    /// The admin HTTP API (default: `127.0.0.1:8025`, no token, so read-only).
    pub admin: crate::admin::AdminConfig,
    /// OpenTelemetry traces (default: none recorded, nothing exported).
    pub telemetry: TelemetryConfig,
    /// Message trace: the index's checkpoint and retention (default: in the
    /// embedded log's directory, 90 days).
    pub trace: crate::trace::TraceConfig,
}

/// `[organization]` (EOP's `Set-OrganizationConfig`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrganizationConfig {
    /// Refuse anonymous mail that claims one of our domains in MAIL FROM but
    /// came through no connector (spec 3.9): `550 5.7.68`. Default false.
    pub reject_direct_send: bool,
}

/// `[event_log]`: which backend holds the events.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum EventLogConfig {
    /// The embedded log on local disk (the default).
    Embedded {
        /// Directory of the log (default `./var/log`).
        #[serde(default = "default_log_path")]
        path: PathBuf,
        /// Partitions per topic, fixed when a topic is created (default 12).
        #[serde(default = "default_partitions")]
        partitions: u32,
        /// Bytes after which a partition starts a new segment file (default
        /// 256 MiB, at least 1 MiB). Positions of the records of a sealed
        /// segment are read from its index file; those of the segment being
        /// written are in memory, 8 bytes a record.
        #[serde(default = "default_segment_bytes")]
        segment_bytes: u64,
        /// Form of the chunks written to `mailflow.content` (default `binary`).
        #[serde(default)]
        content_encoding: ContentEncoding,
    },
    /// Kafka (or any Kafka-protocol broker).
    Kafka {
        /// `bootstrap.servers` (e.g. `"kafka-0:9092,kafka-1:9092"`).
        brokers: String,
        /// Prefix of every topic name (default empty).
        #[serde(default)]
        topic_prefix: String,
        /// Partitions per topic, fixed when a topic is created (default 12).
        #[serde(default = "default_partitions")]
        partitions: u32,
        /// Replication factor of created topics (default 3).
        #[serde(default = "default_replication")]
        replication_factor: i32,
        /// How long an append may wait for the brokers before SMTP answers 4xx (default 10m).
        #[serde(default = "default_message_timeout", with = "humane")]
        message_timeout: Duration,
        /// Form of the chunks written to `mailflow.content` (default `binary`).
        #[serde(default)]
        content_encoding: ContentEncoding,
    },
}

impl Default for EventLogConfig {
    fn default() -> Self {
        EventLogConfig::Embedded {
            path: default_log_path(),
            partitions: default_partitions(),
            segment_bytes: default_segment_bytes(),
            content_encoding: ContentEncoding::default(),
        }
    }
}

impl EventLogConfig {
    /// `content_encoding`: `binary`, or `json` while instances of a build
    /// that reads only JSON chunks still run (a rolling upgrade).
    pub fn content_encoding(&self) -> ContentEncoding {
        match self {
            EventLogConfig::Embedded { content_encoding, .. } | EventLogConfig::Kafka { content_encoding, .. } => {
                *content_encoding
            }
        }
    }
}

fn default_log_path() -> PathBuf {
    PathBuf::from("var/log")
}
fn default_partitions() -> u32 {
    mailflow_events::log::DEFAULT_PARTITIONS
}
fn default_segment_bytes() -> u64 {
    mailflow_events::log::embedded::Options::default().segment_bytes
}
fn default_replication() -> i32 {
    3
}
fn default_message_timeout() -> Duration {
    Duration::from_secs(600)
}

/// Humane durations (`"90s"`, `"15m"`, `"24h"`) in the TOML tree.
pub mod humane {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// File asked for.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key or a wrongly typed value.
    #[error("{path}: {source}")]
    Parse {
        /// File read.
        path: PathBuf,
        /// Cause, with line and column.
        source: Box<toml::de::Error>,
    },
    /// Values that parse but cannot work together; every problem is listed.
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

impl Config {
    /// The built-in single-machine configuration: embedded log under `./var`,
    /// SMTP on 127.0.0.1:2525, the authoritative domain `example.com` with the
    /// mailboxes alice (alias `a.liddell`), bob and postmaster.
    pub fn builtin() -> Self {
        let mailbox = |address: &str, aliases: &[&str]| RecipientConfig {
            address: address.to_string(),
            proxy_addresses: aliases.iter().map(|a| a.to_string()).collect(),
            password_hash: None,
            kind: RecipientKind::Mailbox,
            external_address: None,
            forward_to: None,
        };
        Config {
            accepted_domains: vec![AcceptedDomainConfig {
                name: "example.com".to_string(),
                r#type: DomainType::Authoritative,
                match_subdomains: false,
                default: true,
                allow_anonymous_ipv6: false,
            }],
            directory: DirectoryConfig {
                recipients: vec![
                    mailbox("alice@example.com", &["a.liddell@example.com"]),
                    mailbox("bob@example.com", &[]),
                    mailbox("postmaster@example.com", &[]),
                ],
            },
            ..Config::default()
        }
    }

    /// Reads and validates a configuration file.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let config = Self::parse(&text, path)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses the text of a configuration file (`path` names it in errors),
    /// without [`Config::validate`]: types, unknown keys and durations only.
    pub fn parse(text: &str, path: &std::path::Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::Parse { path: path.to_path_buf(), source: Box::new(source) })
    }

    /// The default accepted domain (the one marked `default`, else the first;
    /// the host name when there is none), without a `*.` prefix: the domain of
    /// `postmaster@` addresses.
    pub fn default_domain(&self) -> String {
        self.accepted_domains
            .iter()
            .find(|d| d.default)
            .or(self.accepted_domains.first())
            .map_or_else(|| self.server.hostname.clone(), |d| d.name.trim_start_matches("*.").to_string())
    }

    /// Checks what types cannot; reports every problem at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        match &self.event_log {
            EventLogConfig::Embedded { partitions, .. } | EventLogConfig::Kafka { partitions, .. } => {
                if !(1..=1024).contains(partitions) {
                    problems.push(format!("event_log.partitions must be 1..=1024, not {partitions}"));
                }
            }
        }
        if let EventLogConfig::Embedded { segment_bytes, .. } = &self.event_log
            && *segment_bytes < 1024 * 1024
        {
            problems.push(format!("event_log.segment_bytes must be at least 1048576 (1 MiB), not {segment_bytes}"));
        }
        if let EventLogConfig::Kafka { brokers, replication_factor, .. } = &self.event_log {
            if brokers.trim().is_empty() {
                problems.push("event_log.brokers must name at least one broker".to_string());
            }
            if *replication_factor < 1 {
                problems.push(format!("event_log.replication_factor must be at least 1, not {replication_factor}"));
            }
        }
        self.validate_server(&mut problems);
        self.validate_domains(&mut problems);
        for connector in &self.inbound_connectors {
            let name = &connector.name;
            let by_certificate = connector.tls_sender_certificate_name.is_some();
            if connector.kind == InboundConnectorKind::OnPremises
                && connector.sender_ip_addresses.is_empty()
                && !by_certificate
            {
                problems.push(format!(
                    "inbound connector {name}: an on_premises connector needs sender_ip_addresses or tls_sender_certificate_name"
                ));
            }
            if connector.restrict_domains_to_certificate && !by_certificate {
                problems.push(format!(
                    "inbound connector {name}: restrict_domains_to_certificate needs tls_sender_certificate_name"
                ));
            }
            if by_certificate && self.server.tls.as_ref().is_none_or(|tls| tls.client_ca.is_none()) {
                problems.push(format!(
                    "inbound connector {name}: tls_sender_certificate_name needs [server.tls] client_ca"
                ));
            }
            if connector.restrict_domains_to_ip_addresses && connector.sender_ip_addresses.is_empty() {
                problems.push(format!(
                    "inbound connector {name}: restrict_domains_to_ip_addresses needs sender_ip_addresses"
                ));
            }
            if connector.kind == InboundConnectorKind::Partner && connector.sender_domains.is_empty() {
                problems
                    .push(format!("inbound connector {name}: a partner connector needs sender_domains (`*` for all)"));
            }
        }
        self.validate_routing(&mut problems);
        crate::delivery::dkim::validate(&self.dkim_signing, &mut problems);
        let mut priorities = HashSet::new();
        for rule in &self.transport_rules {
            if !priorities.insert(rule.priority) {
                problems.push(format!("transport rule {}: priority {} is used twice", rule.name, rule.priority));
            }
            if rule.actions.set_scl.is_some_and(|scl| !(-1..=9).contains(&scl)) {
                problems.push(format!("transport rule {}: set_scl must be -1..=9", rule.name));
            }
        }
        problems.extend(crate::verdict::rules::problems(&self.transport_rules));
        self.anti_spam.validate(&mut problems);
        if self.trace.retention.is_zero() {
            problems.push("trace.retention must be more than 0".to_string());
        }
        if self.trace.checkpoint_interval.is_zero() {
            problems.push("trace.checkpoint_interval must be more than 0".to_string());
        }
        self.telemetry.validate(std::env::var(OTLP_ENDPOINT_ENV).ok().as_deref(), &mut problems);
        if problems.is_empty() { Ok(()) } else { Err(ConfigError::Invalid(problems)) }
    }

    fn validate_routing(&self, problems: &mut Vec<String>) {
        let transport = &self.transport;
        if transport.retry_schedule.is_empty() || transport.retry_schedule.iter().any(Duration::is_zero) {
            problems.push("transport.retry_schedule must list at least one non-zero delay".to_string());
        }
        if transport.message_expiration.is_zero() || transport.message_expiration > Duration::from_secs(7 * 86400) {
            problems.push("transport.message_expiration must be more than 0 and at most 7d".to_string());
        }
        if !(1..=100).contains(&transport.max_connections_per_destination) {
            problems.push("transport.max_connections_per_destination must be 1..=100".to_string());
        }
        if transport.max_messages_per_connection == 0 {
            problems.push("transport.max_messages_per_connection must be at least 1".to_string());
        }
        if let Some(postmaster) = &transport.postmaster
            && !postmaster.contains('@')
        {
            problems.push(format!("transport.postmaster `{postmaster}` is not an address"));
        }
        let mut names = HashSet::new();
        for connector in &self.outbound_connectors {
            let name = &connector.name;
            if name.is_empty() || name.len() > 64 {
                problems.push(format!("outbound connector `{name}`: the name must be 1 to 64 characters"));
            }
            if !names.insert(name.to_ascii_lowercase()) {
                problems.push(format!("outbound connector {name} is listed twice"));
            }
            let on_premises = connector.kind == InboundConnectorKind::OnPremises;
            if (connector.all_accepted_domains || connector.route_all_messages_via_on_premises) && !on_premises {
                problems.push(format!(
                    "outbound connector {name}: all_accepted_domains and route_all_messages_via_on_premises need kind = \"on_premises\""
                ));
            }
            if connector.route_all_messages_via_on_premises && connector.smart_hosts.is_empty() {
                // Spec 6.5a: MX routing to on-premises when our own MX is the service loops.
                problems.push(format!("outbound connector {name}: centralized mail transport needs smart_hosts"));
            }
            if connector.tls_settings == TlsSettings::DomainValidation && connector.tls_domain.is_none() {
                problems.push(format!("outbound connector {name}: domain_validation needs tls_domain"));
            }
            for host in &connector.smart_hosts {
                if crate::routing::SmartHost::parse(host).is_none() {
                    problems.push(format!("outbound connector {name}: `{host}` is not a host, host:port or [ip]:port"));
                }
            }
            if connector.recipient_domains.is_empty()
                && !connector.all_accepted_domains
                && !connector.is_transport_rule_scoped
                && !connector.route_all_messages_via_on_premises
            {
                problems.push(format!("outbound connector {name}: it serves no recipient_domains"));
            }
        }
        for rule in &self.transport_rules {
            if let Some(target) = &rule.actions.route_message_outbound_connector
                && !self.outbound_connectors.iter().any(|c| c.name.eq_ignore_ascii_case(target))
            {
                problems.push(format!("transport rule {}: no outbound connector is named {target}", rule.name));
            }
        }
        for recipient in &self.directory.recipients {
            let external = matches!(recipient.kind, RecipientKind::MailUser | RecipientKind::Contact);
            if external != recipient.external_address.is_some() {
                problems.push(format!(
                    "directory: {} needs external_address exactly when kind is mail_user or contact",
                    recipient.address
                ));
            }
        }
    }

    fn validate_server(&self, problems: &mut Vec<String>) {
        let server = &self.server;
        if server.listeners.is_empty() {
            problems.push("server.listeners must name at least one listener".to_string());
        }
        if !(1024..=150 * 1024 * 1024).contains(&server.max_message_size) {
            problems.push(format!("server.max_message_size must be 1 KiB..=150 MiB, not {}", server.max_message_size));
        }
        if server.max_recipients == 0 || server.max_recipients > 1000 {
            problems.push(format!("server.max_recipients must be 1..=1000, not {}", server.max_recipients));
        }
        if server.max_line_length < 512 {
            problems.push(format!(
                "server.max_line_length must be at least 512 (RFC 5321), not {}",
                server.max_line_length
            ));
        }
        if server.max_connections_per_ip > server.max_connections {
            problems.push("server.max_connections_per_ip exceeds server.max_connections".to_string());
        }
        let mut names = HashSet::new();
        for listener in &server.listeners {
            if !names.insert(&listener.name) {
                problems.push(format!("server.listeners: the name {} is used twice", listener.name));
            }
            if listener.kind == ListenerKind::Submission && server.tls.is_none() {
                problems.push(format!(
                    "listener {}: submission needs [server.tls] (AUTH only after STARTTLS)",
                    listener.name
                ));
            }
        }
    }

    fn validate_domains(&self, problems: &mut Vec<String>) {
        let mut seen = HashSet::new();
        for domain in &self.accepted_domains {
            let name = domain.name.to_ascii_lowercase();
            let bare = name.strip_prefix("*.").unwrap_or(&name);
            if bare.is_empty() || bare.contains('*') || !bare.contains('.') && bare != "localhost" {
                problems.push(format!("accepted domain `{}` is not a domain or `*.domain`", domain.name));
            }
            if domain.match_subdomains && domain.r#type != DomainType::InternalRelay {
                problems
                    .push(format!("accepted domain {}: match_subdomains needs type = \"internal_relay\"", domain.name));
            }
            if !seen.insert(name.clone()) {
                problems.push(format!("accepted domain {} is listed twice", domain.name));
            }
        }
        if self.accepted_domains.iter().filter(|d| d.default).count() > 1 {
            problems.push("more than one accepted domain has default = true".to_string());
        }
        let mut addresses = HashSet::new();
        for recipient in &self.directory.recipients {
            for address in std::iter::once(&recipient.address).chain(&recipient.proxy_addresses) {
                if !address.contains('@') {
                    problems.push(format!("directory: `{address}` is not an address"));
                }
                if !addresses.insert(address.to_ascii_lowercase()) {
                    problems.push(format!("directory: `{address}` belongs to two recipients"));
                }
            }
        }
    }
}

/// Most bytes a PEM file (certificates, a private key, a CA bundle) may have:
/// 1 MiB. A larger file, or an endless one such as `/dev/zero`, is an error
/// instead of a start-up that reads forever.
pub const MAX_PEM_FILE: u64 = 1024 * 1024;

/// Reads a PEM file of at most [`MAX_PEM_FILE`] bytes.
pub fn read_pem_file(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.take(MAX_PEM_FILE + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_PEM_FILE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {MAX_PEM_FILE} bytes; not a PEM file"),
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endless_or_huge_pem_file_is_an_error_not_a_hang() {
        let error = read_pem_file(std::path::Path::new("/dev/zero")).expect_err("/dev/zero is no PEM file");
        assert!(error.to_string().contains("not a PEM file"), "{error}");
        assert!(read_pem_file(std::path::Path::new("/nonexistent/key.pem")).is_err());
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err =
            toml::from_str::<Config>("[event_log]\nkind = \"embedded\"\npaht = \"x\"\n").expect_err("typo refused");
        assert!(err.to_string().contains("paht"), "{err}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let config: Config = toml::from_str(
            "[event_log]\nkind = \"kafka\"\nbrokers = \" \"\npartitions = 0\nreplication_factor = 0\nmessage_timeout = \"10m\"\n",
        )
        .expect("parses");
        let Err(ConfigError::Invalid(problems)) = config.validate() else { panic!("must be invalid") };
        assert_eq!(problems.len(), 3, "{problems:?}");
    }

    #[test]
    fn the_builtin_config_is_valid() {
        Config::builtin().validate().expect("builtin config validates");
    }

    #[test]
    fn the_shipped_example_file_is_the_builtin_config() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../mailflow.example.toml");
        let example = Config::load(&path).expect("mailflow.example.toml is valid");
        let builtin = Config::builtin();
        assert_eq!(format!("{:?}", example.server), format!("{:?}", builtin.server));
        assert_eq!(format!("{:?}", example.accepted_domains), format!("{:?}", builtin.accepted_domains));
        assert_eq!(format!("{:?}", example.directory), format!("{:?}", builtin.directory));
        assert_eq!(format!("{:?}", example.event_log), format!("{:?}", builtin.event_log));
        assert_eq!(format!("{:?}", example.transport), format!("{:?}", builtin.transport));
        assert_eq!(format!("{:?}", example.mailbox_store), format!("{:?}", builtin.mailbox_store));
        assert_eq!(format!("{:?}", example.anti_spam), format!("{:?}", builtin.anti_spam));
        assert_eq!(format!("{:?}", example.admin), format!("{:?}", builtin.admin));
        assert_eq!(example.telemetry, builtin.telemetry);
    }

    #[test]
    fn accepted_domain_rules_of_spec_0_1_are_enforced() {
        // Spec 0.1 T: reject `a.*.b`; reject MatchSubdomains on an Authoritative domain.
        let config: Config = toml::from_str(
            "[[accepted_domains]]\nname = \"a.*.b\"\n[[accepted_domains]]\nname = \"contoso.com\"\nmatch_subdomains = true\n",
        )
        .expect("parses");
        let Err(ConfigError::Invalid(problems)) = config.validate() else { panic!("must be invalid") };
        assert!(problems.iter().any(|p| p.contains("a.*.b")), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("match_subdomains")), "{problems:?}");
    }

    #[test]
    fn invalid_rule_patterns_and_anti_spam_settings_are_reported_with_the_rest() {
        let config: Config = toml::from_str(
            "[anti_spam]\nbulk_threshold = 10\n[anti_spam.rspamd]\nurl = \"https://127.0.0.1:11333\"\n\
             [[transport_rules]]\nname = \"r\"\npriority = 0\nconditions = { subject_matches_patterns = [\"(x\"] }\n",
        )
        .expect("parses");
        let Err(ConfigError::Invalid(problems)) = config.validate() else { panic!("must be invalid") };
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("subject_matches_patterns: `(x`")), "{problems:?}");
    }

    #[test]
    fn the_default_is_the_embedded_log_under_var() {
        let config: Config = toml::from_str("").expect("empty file is the default");
        assert!(
            matches!(config.event_log, EventLogConfig::Embedded { ref path, partitions: 12, segment_bytes: 268_435_456, content_encoding: ContentEncoding::Binary } if path.ends_with("var/log"))
        );
    }

    #[test]
    fn a_segment_under_1_mib_is_refused() {
        let config: Config =
            toml::from_str("[event_log]\nkind = \"embedded\"\nsegment_bytes = 4096\n").expect("parses");
        let Err(ConfigError::Invalid(problems)) = config.validate() else { panic!("must be invalid") };
        assert_eq!(problems, ["event_log.segment_bytes must be at least 1048576 (1 MiB), not 4096"]);
    }

    #[test]
    fn content_encoding_is_binary_unless_json_is_asked_for_and_nothing_else_is_taken() {
        let encoding = |toml: &str| toml::from_str::<Config>(toml).map(|config| config.event_log.content_encoding());
        assert_eq!(
            encoding("[event_log]\nkind = \"kafka\"\nbrokers = \"k:9092\"").expect("parses"),
            ContentEncoding::Binary
        );
        assert_eq!(
            encoding("[event_log]\nkind = \"embedded\"\ncontent_encoding = \"json\"").expect("parses"),
            ContentEncoding::Json
        );
        let wrong = encoding("[event_log]\nkind = \"embedded\"\ncontent_encoding = \"base64\"")
            .expect_err("an unknown form is refused");
        assert!(wrong.to_string().contains("unknown variant `base64`"), "{wrong}");
    }
}
