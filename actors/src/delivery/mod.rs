//! The delivery role's outbound side: what carries a queued message to its next hop.
//!
//! - [`client`]: the SMTP and LMTP client (one connection, one or more
//!   transactions) that turns a peer's replies into per-recipient outcomes or a
//!   failure of the whole hop.

pub mod client;
