//! The SMTP front door: one connection actor per session.
//!
//! - [`reply`]: every reply, rendered in one place.

pub mod auth;
pub mod body;
pub mod reply;
pub mod session;
