//! Delivery: the delivery actor owns partitions of `mailflow.delivery`, keeps
//! each destination's FIFO queue as a fold of the partition's events
//! ([`state`]), and delivers by SMTP, LMTP or Maildir, appending every
//! attempt's outcome to the same partition. Retries follow [`schedule`].

pub mod schedule;
pub mod state;
pub mod actor;
pub mod mx;
pub mod render;
