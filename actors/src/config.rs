//! The router's configuration: one typed TOML tree, validated once at start-up.
//!
//! Unknown keys are errors, durations are humane (`"15m"`), and every field has
//! a documented default, so `mailflow serve` with no file runs a complete
//! single-machine router ([`Config::default`]).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where events are kept.
    pub event_log: EventLogConfig,
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
    },
}

impl Default for EventLogConfig {
    fn default() -> Self {
        EventLogConfig::Embedded { path: default_log_path(), partitions: default_partitions() }
    }
}

fn default_log_path() -> PathBuf {
    PathBuf::from("var/log")
}
fn default_partitions() -> u32 {
    mailflow_events::log::DEFAULT_PARTITIONS
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
    /// Reads and validates a configuration file.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let config: Config = toml::from_str(&text)
            .map_err(|source| ConfigError::Parse { path: path.to_path_buf(), source: Box::new(source) })?;
        config.validate()?;
        Ok(config)
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
        if let EventLogConfig::Kafka { brokers, replication_factor, .. } = &self.event_log {
            if brokers.trim().is_empty() {
                problems.push("event_log.brokers must name at least one broker".to_string());
            }
            if *replication_factor < 1 {
                problems.push(format!("event_log.replication_factor must be at least 1, not {replication_factor}"));
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(ConfigError::Invalid(problems)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_default_is_the_embedded_log_under_var() {
        let config: Config = toml::from_str("").expect("empty file is the default");
        assert!(
            matches!(config.event_log, EventLogConfig::Embedded { ref path, partitions: 12 } if path.ends_with("var/log"))
        );
    }
}
