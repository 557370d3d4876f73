//! The verdict role: authentication (SPF, DKIM, DMARC, ARC, iprev, compauth),
//! the connection filter, content checks, the SCL verdict and the headers that
//! carry it.
//!
//! - [`auth`]: mail-auth checks into the events' `Authentication`;
//! - [`enhanced_filtering`]: the original sender behind a connector (spec 7);
//! - [`dnsbl`]: DNS blocklist lookups (RFC 5782);
//! - [`score`]: signals to SCL/SFV/CAT and the default action (pure);
//! - [`rules`]: mail flow rules (spec 12, pure);
//! - [`action`]: the configured anti-spam action (spec 9.3, pure);
//! - [`headers`]: `Authentication-Results`, SCL and the antispam report;
//! - [`actor`]: the consumer of `mailflow.received` that appends `VerdictReached`.
//!
//! Order per message: authentication (on the original sender under Enhanced
//! Filtering) → connection filter, sender lists, DNSBL, content → SCL → mail
//! flow rules (which see that SCL, and whose `SetSCL` overrides it, spec 9.4)
//! → the configured action.
//!
//! Not yet here (open work of the verdict issue): bulk (BCL), phish verdicts,
//! rspamd, the quarantine store.

pub mod action;
pub mod actor;
pub mod auth;
pub mod dnsbl;
pub mod enhanced_filtering;
pub mod headers;
pub mod rules;
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
    /// Senders (addresses) never marked as spam: SCL -1, `SFV:SKA` (default none).
    pub allowed_senders: Vec<String>,
    /// Sender domains never marked as spam: SCL -1, `SFV:SKA` (default none).
    pub allowed_sender_domains: Vec<String>,
    /// Senders always high-confidence spam: SCL 9, `SFV:SKB` (default none).
    pub blocked_senders: Vec<String>,
    /// Sender domains always high-confidence spam: SCL 9, `SFV:SKB` (default none).
    pub blocked_sender_domains: Vec<String>,
    /// DNS blocklist zones (e.g. `zen.spamhaus.org`): a client IP listed in
    /// any (an A record under the reversed address) is high-confidence spam (default none).
    pub dnsbl_zones: Vec<String>,
    /// Action for the spam verdict (default `move_to_jmf`).
    pub spam_action: SpamAction,
    /// Action for the high-confidence spam verdict (default `move_to_jmf`).
    pub high_confidence_spam_action: SpamAction,
    /// Header name for `add_x_header` (default `X-This-Is-Spam`); its value is
    /// `This message appears to be spam.`
    pub add_x_header_value: String,
    /// Subject prefix for `modify_subject` (default `[SPAM] `).
    pub modify_subject_value: String,
    /// Recipients for `redirect` (default none; `redirect` needs at least one).
    pub redirect_to_recipients: Vec<String>,
}

/// What happens to a message with a spam verdict (EOP's `SpamAction` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpamAction {
    /// Deliver to the Junk Email folder.
    MoveToJmf,
    /// Deliver with the `add_x_header_value` header (and to Junk).
    AddXHeader,
    /// Deliver with `modify_subject_value` before the subject (and to Junk).
    ModifySubject,
    /// Deliver to `redirect_to_recipients` instead.
    Redirect,
    /// Drop silently.
    Delete,
    /// Hold in quarantine.
    Quarantine,
}

impl Default for AntiSpamConfig {
    fn default() -> Self {
        Self {
            ip_allow_list: Vec::new(),
            ip_block_list: Vec::new(),
            honor_dmarc_policy: true,
            inline_deadline: std::time::Duration::from_secs(5),
            allowed_senders: Vec::new(),
            allowed_sender_domains: Vec::new(),
            blocked_senders: Vec::new(),
            blocked_sender_domains: Vec::new(),
            dnsbl_zones: Vec::new(),
            spam_action: SpamAction::MoveToJmf,
            high_confidence_spam_action: SpamAction::MoveToJmf,
            add_x_header_value: "X-This-Is-Spam".to_string(),
            modify_subject_value: "[SPAM] ".to_string(),
            redirect_to_recipients: Vec::new(),
        }
    }
}
