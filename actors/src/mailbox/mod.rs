//! Our own mailbox store, for the `mailbox` destination kind when it is a
//! directory rather than an LMTP server.
//!
//! - [`maildir`]: durable delivery of one message into a Maildir (or one of
//!   its Maildir++ folders).

pub mod maildir;
