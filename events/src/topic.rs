//! Topic names, in one place.
//!
//! Every event enum is published on exactly one topic; the constant is the
//! topic's name without the deployment's prefix (Kafka deployments may prefix
//! every topic, e.g. `prod.mailflow.received`).

/// Messages accepted or refused at the SMTP front door (key: message id).
pub const RECEIVED: &str = "mailflow.received";
/// Message content in chunks of at most [`crate::content::CHUNK_SIZE`] (key: message id).
pub const CONTENT: &str = "mailflow.content";
/// Authentication and filtering verdicts (key: message id).
pub const VERDICTS: &str = "mailflow.verdicts";
/// Routed deliveries and their outcomes (key: destination).
pub const DELIVERY: &str = "mailflow.delivery";
/// The public journal: one versioned record per message outcome (key: message id).
pub const JOURNAL: &str = "mailflow.journal";
/// Snapshots of folded delivery state, compacted (key: partition).
pub const SNAPSHOTS: &str = "mailflow.snapshots";

/// Event topics: kept forever, never compacted.
pub const EVENT_TOPICS: [&str; 5] = [RECEIVED, CONTENT, VERDICTS, DELIVERY, JOURNAL];

/// Every topic the router uses.
pub const ALL: [&str; 6] = [RECEIVED, CONTENT, VERDICTS, DELIVERY, JOURNAL, SNAPSHOTS];
