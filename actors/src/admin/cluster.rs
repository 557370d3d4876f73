//! The queues of the whole deployment, for the admin views of any process.
//!
//! With the Kafka log, each delivery process owns a share of the partitions of
//! `mailflow.delivery`, and a process without the delivery role owns none. So
//! that `mailflow queue` gives the same answer whichever pod the Service picks,
//! every process serving the admin API on Kafka folds every partition from the
//! log, with plain reads (not as a group member). It reads on demand: each
//! view first reads what was appended since the previous one (the first reads
//! everything), so an idle process puts no load on the broker or on the
//! process's own reads, which its roles share. The fold is
//! [`PartitionState::apply`], the one the delivery role runs, so a partition's
//! view here is the owner's state as of the last event in the log.
//!
//! The views answer from the delivery role's live state for the partitions
//! this process owns and from this fold for the others, marking those
//! `from_log`. The embedded log admits one process, which owns every
//! partition, so there it is not started.

use std::sync::{Arc, RwLock};

use mailflow_events::log::{DEFAULT_PARTITIONS, EventLog, TopicKind};
use mailflow_events::topic;

use crate::delivery::state::PartitionState;

/// Records read from one partition at a time.
const BATCH: usize = 4096;

/// Every partition's state, by partition number.
#[derive(Debug, Clone, Default)]
pub struct ClusterQueues {
    states: Arc<RwLock<Vec<PartitionState>>>,
    /// One catch-up at a time: two would apply the same records twice.
    catching_up: Arc<tokio::sync::Mutex<()>>,
}

impl ClusterQueues {
    /// Runs `f` over `(partition, state)` of every partition not in `except`.
    pub fn with<T>(&self, except: &[u32], f: impl FnOnce(Vec<(u32, &PartitionState)>) -> T) -> T {
        let states = self.states.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let others = states
            .iter()
            .enumerate()
            .map(|(partition, state)| (partition as u32, state))
            .filter(|(partition, _)| !except.contains(partition))
            .collect();
        f(others)
    }

    /// Reads every partition from where its fold stands to its end once;
    /// returns how many records were applied. The first call learns the
    /// partition count.
    pub async fn catch_up(&self, log: &dyn EventLog) -> anyhow::Result<usize> {
        let _one = self.catching_up.lock().await;
        let known = self.states.read().unwrap_or_else(std::sync::PoisonError::into_inner).len();
        if known == 0 {
            // An existing topic keeps its own count; Kafka learns it this way.
            let partitions = log.create_topic(topic::DELIVERY, DEFAULT_PARTITIONS, TopicKind::Events).await?;
            *self.states.write().unwrap_or_else(std::sync::PoisonError::into_inner) =
                vec![PartitionState::default(); partitions as usize];
        }
        let partitions = self.states.read().unwrap_or_else(std::sync::PoisonError::into_inner).len();
        let mut applied = 0;
        for partition in 0..partitions {
            loop {
                let next = self.states.read().unwrap_or_else(std::sync::PoisonError::into_inner)[partition].next_offset;
                let records = log.read(topic::DELIVERY, partition as u32, next, BATCH).await?;
                if records.is_empty() {
                    break;
                }
                applied += records.len();
                let mut states = self.states.write().unwrap_or_else(std::sync::PoisonError::into_inner);
                let state = &mut states[partition];
                for record in &records {
                    // What cannot be decoded is skipped, as the delivery role skips it.
                    let _ = state.apply_record(record);
                }
            }
        }
        Ok(applied)
    }
}
