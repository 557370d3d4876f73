//! The verdict role: authentication (SPF, DKIM, DMARC, ARC, iprev, compauth),
//! the connection filter, content checks, the SCL verdict and the headers that
//! carry it.
//!
//! - [`auth`]: mail-auth checks into the events' `Authentication`;
//! - [`score`]: signals to SCL/SFV/CAT and the default action (pure);
//! - [`headers`]: `Authentication-Results`, SCL and the antispam report;
//! - [`actor`]: the consumer of `mailflow.received` that appends `VerdictReached`.
//!
//! Not yet here (open work of the verdict issue): Enhanced Filtering skip
//! listing, DNS blocklists, sender allow/block lists, bulk (BCL), rspamd,
//! mail flow rules, and actions other than the defaults.

pub mod actor;
pub mod auth;
pub mod headers;
pub mod score;

use serde::Deserialize;

use crate::config::IpNet;

/// `[anti_spam]`: the connection filter (EOP's `HostedConnectionFilterPolicy`)
/// and the checks answered inside the SMTP session.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AntiSpamConfig {
    /// Addresses never marked as spam: SCL -1, `IPV:CAL`, `SFV:SKA` (default none).
    pub ip_allow_list: Vec<IpNet>,
    /// Addresses always high-confidence spam: SCL 9, `SFV:SKB` (default none).
    pub ip_block_list: Vec<IpNet>,
    /// Refuse anonymous mail failing DMARC for a domain that publishes
    /// `p=reject`, inside the session (`550 5.7.509`), rather than accept and
    /// bounce (EOP's `HonorDmarcPolicy`; default true).
    pub honor_dmarc_policy: bool,
    /// How long the session waits for the checks it answers inline (default 5s);
    /// past it the message is accepted and judged by the verdict role alone
    /// (anonymous IPv6, which must pass, gets `450 4.7.26` instead).
    #[serde(with = "crate::config::humane")]
    pub inline_deadline: std::time::Duration,
}

impl Default for AntiSpamConfig {
    fn default() -> Self {
        Self {
            ip_allow_list: Vec::new(),
            ip_block_list: Vec::new(),
            honor_dmarc_policy: true,
            inline_deadline: std::time::Duration::from_secs(5),
        }
    }
}
