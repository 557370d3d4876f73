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
//! Every process that serves the admin API keeps its own index of every
//! partition, so it reads the journal with plain reads, not as a member of a
//! consumer group (which would give it only a share of the partitions). The
//! index lives in memory and is rebuilt from the log at start; it is not
//! persisted.

pub mod command;
pub mod detail;
pub mod follow;
pub mod index;

pub use index::{Query, SearchResult, TraceIndex, TraceRow};

/// The index shared by the follower (writer) and the admin API (readers).
pub type TraceHandle = std::sync::Arc<std::sync::RwLock<TraceIndex>>;

/// What the admin API needs to answer trace requests.
#[derive(Debug, Clone, Default)]
pub struct TraceService {
    /// The index.
    pub index: TraceHandle,
    /// Set once the follower has read the journal to its end the first time;
    /// until then searches may miss messages.
    pub caught_up: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl TraceService {
    /// Starts the follower on the current runtime, reading from `log`.
    pub fn start(log: std::sync::Arc<dyn mailflow_events::log::EventLog>) -> Self {
        let service = Self::default();
        tokio::spawn(follow::run(log, service.index.clone(), service.caught_up.clone()));
        service
    }
}
