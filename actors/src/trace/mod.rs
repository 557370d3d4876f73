//! Message trace (spec 15): search messages by sender, recipient, ids, source
//! IP, status, subject and time, and list every event of one message.
//!
//! - [`index`]: the pure [`TraceIndex`], folded from `mailflow.journal`; it keeps
//!   per message only the columns searches filter on, each recipient's latest
//!   status and the positions of the message's journal records;
//! - [`detail`]: a message's events, read back from the log by those positions;
//! - [`follow`]: the task that reads every partition of `mailflow.journal` from
//!   offset 0 and then tails it, keeping the index current;
//! - [`command`]: `mailflow trace`, a client of the admin API
//!   (`GET /api/v1/trace`, `GET /api/v1/trace/{message_id}`).
//!
//! - [`store`]: the index's checkpoint in the data directory;
//! - [`throttle`]: at most `[trace] query_limit` queries per `query_window`.
//!
//! Every process that serves the admin API keeps its own index of every
//! partition, so it reads the journal with plain reads, not as a member of a
//! consumer group (which would give it only a share of the partitions). The
//! index is held in memory and checkpointed to `[trace] path` (by default
//! `trace/` in the embedded log's directory); at start the process loads the
//! checkpoint and reads only the journal after it, and rebuilds the index from
//! the journal when the checkpoint is missing or does not check out. Messages
//! older than `[trace] retention` (default 90 days, spec 15.1) leave it.

pub mod command;
pub mod detail;
pub mod follow;
pub mod index;
pub mod store;
pub mod throttle;

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

pub use index::{Query, SearchResult, TraceIndex, TraceRow};

/// The index shared by the follower (writer) and the admin API (readers).
pub type TraceHandle = std::sync::Arc<std::sync::RwLock<TraceIndex>>;

/// What the admin API needs to answer trace requests.
#[derive(Debug, Clone)]
pub struct TraceService {
    /// The index.
    pub index: TraceHandle,
    /// Set once the follower has read the journal to its end the first time;
    /// until then searches may miss messages.
    pub caught_up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// How long a message stays searchable: no query starts earlier.
    pub retention: chrono::Duration,
    /// Searches and detail views admitted in the rolling window.
    pub throttle: std::sync::Arc<std::sync::Mutex<throttle::QueryThrottle>>,
}

impl TraceService {
    /// A service over an empty index, with the limits of `settings`.
    pub fn new(settings: &TraceSettings) -> Self {
        Self {
            index: TraceHandle::default(),
            caught_up: std::sync::Arc::default(),
            retention: settings.retention,
            throttle: std::sync::Arc::new(std::sync::Mutex::new(throttle::QueryThrottle::new(
                settings.query_limit,
                settings.query_window,
            ))),
        }
    }

    /// Starts the follower on the current runtime, reading from `log`.
    pub fn start(log: std::sync::Arc<dyn mailflow_events::log::EventLog>, settings: TraceSettings) -> Self {
        let service = Self::new(&settings);
        tokio::spawn(follow::run(log, service.index.clone(), service.caught_up.clone(), settings));
        service
    }
}

/// `[trace]`: where the index is checkpointed and how long it keeps messages.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TraceConfig {
    /// Directory of the index's checkpoint (default: `trace` in the embedded
    /// log's directory; with Kafka, none: the index is rebuilt from the
    /// journal at every start unless a path, e.g. on a volume, is given).
    pub path: Option<PathBuf>,
    /// How long a message stays searchable, from its receipt (default 90 days,
    /// spec 15.1). The journal topic may keep its records for less.
    #[serde(with = "crate::config::humane")]
    pub retention: Duration,
    /// How often the checkpoint is written while records arrive (default 60 s).
    #[serde(with = "crate::config::humane")]
    pub checkpoint_interval: Duration,
    /// Searches and detail views one process answers in any `query_window`
    /// (default 100, spec 15.1); more are refused with HTTP 429 and
    /// `Retry-After`. 0 turns the limit off.
    pub query_limit: usize,
    /// The rolling window of `query_limit` (default 5 minutes).
    #[serde(with = "crate::config::humane")]
    pub query_window: Duration,
}

impl Default for TraceConfig {
    fn default() -> Self {
        Self {
            path: None,
            retention: Duration::from_secs(90 * 86_400),
            checkpoint_interval: Duration::from_secs(60),
            query_limit: 100,
            query_window: Duration::from_secs(300),
        }
    }
}

/// What the follower needs of the configuration, with the path resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceSettings {
    /// Directory of the checkpoint; `None`: memory only, rebuilt at start.
    pub path: Option<PathBuf>,
    /// Messages received longer ago than this leave the index.
    pub retention: chrono::Duration,
    /// How often the checkpoint is written while records arrive.
    pub checkpoint_interval: Duration,
    /// Queries admitted in any `query_window` (0: no limit).
    pub query_limit: usize,
    /// The rolling window of `query_limit`.
    pub query_window: Duration,
}

impl Default for TraceSettings {
    fn default() -> Self {
        Self::from_config(&TraceConfig::default(), None)
    }
}

impl TraceSettings {
    /// The settings of `config`; `data_dir` is the embedded log's directory,
    /// whose `trace` subdirectory holds the checkpoint unless a path is given.
    pub fn from_config(config: &TraceConfig, data_dir: Option<&std::path::Path>) -> Self {
        Self {
            path: config.path.clone().or_else(|| data_dir.map(|dir| dir.join("trace"))),
            retention: chrono::Duration::from_std(config.retention).unwrap_or(chrono::Duration::MAX),
            checkpoint_interval: config.checkpoint_interval,
            query_limit: config.query_limit,
            query_window: config.query_window,
        }
    }
}
