//! The journal role: projects the internal topics onto `mailflow.journal`, the
//! public, versioned record of what happened to each message (spec 15, the
//! schema in `events/src/journal.rs` and `schemas/mailflow.journal.v1.json`).
//!
//! - [`project`]: the pure mapping from a source event to its journal records;
//! - [`index`]: what delivery records need to know of queued messages (sender,
//!   size), folded per `mailflow.delivery` partition;
//! - [`actor`]: the consumer-group member that appends the records and commits.
//!
//! Every accepted message gets a `Received` record with its content reference,
//! so a journal consumer (`mailflow archive`) sees every message: this is what
//! "a copy to the journal's consumers" means. A journal copy to an address is
//! a mail flow rule's `AddToRecipients`/`BlindCopyTo`, routed like any recipient.

pub mod actor;
pub mod index;
pub mod project;
