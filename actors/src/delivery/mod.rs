//! Delivery: the delivery actor ([`actor`]) owns partitions of
//! `mailflow.delivery`, keeps each destination's FIFO queue as a fold of the
//! partition's events ([`state`]), and delivers by SMTP, LMTP ([`client`]) or
//! Maildir, appending every attempt's outcome to the same partition. Retries
//! follow [`schedule`]; next hops come from [`mx`] or the connector.
//!
//! - [`client`]: the SMTP and LMTP client (one connection, one or more
//!   transactions) that turns a peer's replies into per-recipient outcomes or a
//!   failure of the whole hop.

pub mod actor;
pub mod client;
pub mod dkim;
pub mod mx;
pub mod render;
pub mod schedule;
pub mod snapshot;
pub mod state;
