//! The SMTP front door: one connection actor per session.
//!
//! - [`reply`]: every reply, rendered in one place.

pub mod accept;
pub mod actor;
pub mod auth;
pub mod body;
pub mod driver;
pub mod limits;
pub mod reply;
pub mod session;
pub mod tls;
