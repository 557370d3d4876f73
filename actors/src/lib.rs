//! mailflow's runtime: the roles (connection, verdict, routing, delivery, journal) as
//! actors, the configuration, and what `main.rs` wires together.

pub mod admin;
pub mod archive;
pub mod cli;
pub mod config;
pub mod connection;
pub mod delivery;
pub mod disclaimer;
pub mod dns;
pub mod drain;
pub mod event_log;
pub mod front_door;
pub mod journal;
pub mod mailbox;
pub mod memory;
pub mod metrics;
pub mod ndr;
pub mod policy;
pub mod replay;
pub mod routing;
pub mod telemetry;
pub mod trace;
pub mod validate;
pub mod verdict;
pub mod what_if;
