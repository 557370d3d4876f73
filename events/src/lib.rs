//! mailflow's shared vocabulary.
//!
//! Roles never call each other: they exchange the events defined here through
//! the topics of [`topic`], on an [`log::EventLog`]. This crate holds the event
//! envelope, one event enum per topic, the JSON Schemas generated from them, and
//! both event-log backends. It has no actor runtime in it on purpose: any
//! consumer of the journal can depend on it alone.

pub mod content;
pub mod delivery;
pub mod envelope;
pub mod journal;
pub mod log;
pub mod received;
pub mod schema;
pub mod topic;
pub mod verdicts;

pub use envelope::{Envelope, SCHEMA_VERSION, TraceContext};
