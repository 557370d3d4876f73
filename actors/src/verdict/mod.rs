//! The verdict role: authentication (SPF, DKIM, DMARC, ARC, iprev, compauth),
//! the connection filter, content checks, the SCL verdict and the headers that
//! carry it.
//!
//! - [`auth`]: mail-auth checks into the events' `Authentication`;
//! - [`enhanced_filtering`]: the original sender behind a connector (spec 7);
//! - [`dnsbl`]: DNS blocklist lookups (RFC 5782), of client IPs and of link domains;
//! - [`bulk`]: the bulk complaint level (BCL) from what a router can see (pure);
//! - [`phish`]: links, deceptive links, phishing domains and intra-org spoofing (pure);
//! - [`rspamd`]: the optional external engine over HTTP;
//! - [`signals`]: gathers the BCL, phish signal and rspamd answer of a message;
//! - [`score`]: signals to SCL/BCL/SFV/CAT and the default action (pure);
//! - [`rules`]: mail flow rules (spec 12, pure);
//! - [`action`]: the configured anti-spam action (spec 9.3, pure);
//! - [`headers`]: `Authentication-Results`, SCL and the antispam report;
//! - [`actor`]: the consumer of `mailflow.received` that appends `VerdictReached`.
//!
//! Order per message: authentication (on the original sender under Enhanced
//! Filtering) → connection filter, sender lists, DNSBL, phish, content,
//! rspamd, bulk → SCL, BCL and one category (precedence in [`score`]) → mail
//! flow rules (which see that SCL, and whose `SetSCL` overrides it, spec 9.4,
//! except a phish verdict) → the configured action of the verdict.
//!
//! Not yet here: the quarantine store (a quarantine action is recorded in the
//! verdict; nothing holds the message yet), per-recipient policies (one policy
//! for the organisation), user safe and blocked senders.

pub mod action;
pub mod actor;
pub mod auth;
pub mod bulk;
pub mod dnsbl;
pub mod enhanced_filtering;
pub mod headers;
pub mod phish;
pub mod rspamd;
pub mod rules;
pub mod score;
pub mod signals;

use std::collections::BTreeMap;

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
    /// Domains whose ARC seals are believed (EOP's `ArcTrustedSealers`;
    /// default none): a passing ARC chain whose most recent seal is by one of
    /// them overrides a DMARC failure (compauth `pass`, reason 130, and no
    /// `550 5.7.509`). Anyone can seal a chain that passes, so no other does.
    pub arc_trusted_sealers: Vec<String>,
    /// Action for the spam verdict (default `move_to_jmf`).
    pub spam_action: SpamAction,
    /// Action for the high-confidence spam verdict (default `move_to_jmf`).
    pub high_confidence_spam_action: SpamAction,
    /// Action for the phish verdict (EOP's `PhishSpamAction`; default `quarantine`).
    pub phish_action: SpamAction,
    /// Action for the high-confidence phish verdict (EOP's
    /// `HighConfidencePhishAction`): `quarantine` (default) or `redirect` only;
    /// `move_to_jmf` is read as `quarantine`, as EOP does.
    pub high_confidence_phish_action: HighConfidencePhishAction,
    /// Action for the bulk verdict (EOP's `BulkSpamAction`): any spam action or
    /// `no_action` (default `move_to_jmf`).
    pub bulk_action: BulkAction,
    /// BCL at or above which mail is bulk (EOP's `BulkThreshold`), 1–9 (default 7).
    pub bulk_threshold: u8,
    /// Bulk at or above the threshold becomes the bulk verdict, SCL 6 and
    /// `bulk_action` (EOP's `MarkAsSpamBulkMail`, default true); false stamps
    /// the BCL only.
    pub mark_as_spam_bulk_mail: bool,
    /// Known bulk senders: domain → BCL 0–9, for the `From:` domain, the
    /// `MAIL FROM` domain or a DKIM signing domain, subdomains included; the
    /// highest match wins over the header model of [`bulk`] (default none).
    pub bulk_senders: BTreeMap<String, u8>,
    /// Header names that mark mail sent by a bulk mailer or ESP (e.g.
    /// `X-Mailgun-Sid`), besides the built-in `Precedence: bulk`, `List-*` and
    /// `Feedback-ID` (default none).
    pub bulk_marker_headers: Vec<String>,
    /// Link domains that are phishing: a link to one (or a subdomain) is
    /// high-confidence phish (default none).
    pub phish_url_domains: Vec<String>,
    /// Domain blocklist zones for links (URI DNSBL, e.g. `dbl.example`): a link
    /// whose domain is listed (an A record in 127.0.0.0/8 under
    /// `<domain>.<zone>`) is high-confidence phish (default none).
    pub uri_dnsbl_zones: Vec<String>,
    /// rspamd as an external engine (off when absent).
    pub rspamd: Option<rspamd::RspamdConfig>,
    /// Header name for `add_x_header` (default `X-This-Is-Spam`); its value is
    /// `This message appears to be spam.`
    pub add_x_header_value: String,
    /// Subject prefix for `modify_subject` (default `[SPAM] `).
    pub modify_subject_value: String,
    /// Recipients for `redirect` (default none; `redirect` needs at least one).
    pub redirect_to_recipients: Vec<String>,
}

/// What happens to a message with a spam, high-confidence spam or phish
/// verdict (EOP's `SpamAction` values).
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

/// `HighConfidencePhishAction`: the only two EOP allows (spec 9.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HighConfidencePhishAction {
    /// Hold in quarantine (users may only request release).
    #[serde(alias = "move_to_jmf")]
    Quarantine,
    /// Deliver to `redirect_to_recipients` instead.
    Redirect,
}

/// `BulkSpamAction`: a spam action, or `no_action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BulkAction {
    /// Deliver as it is (the BCL and `CAT:BULK` are still stamped).
    NoAction,
    /// One of the spam actions.
    #[serde(untagged)]
    Spam(SpamAction),
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
            arc_trusted_sealers: Vec::new(),
            spam_action: SpamAction::MoveToJmf,
            high_confidence_spam_action: SpamAction::MoveToJmf,
            phish_action: SpamAction::Quarantine,
            high_confidence_phish_action: HighConfidencePhishAction::Quarantine,
            bulk_action: BulkAction::Spam(SpamAction::MoveToJmf),
            bulk_threshold: 7,
            mark_as_spam_bulk_mail: true,
            bulk_senders: BTreeMap::new(),
            bulk_marker_headers: Vec::new(),
            phish_url_domains: Vec::new(),
            uri_dnsbl_zones: Vec::new(),
            rspamd: None,
            add_x_header_value: "X-This-Is-Spam".to_string(),
            modify_subject_value: "[SPAM] ".to_string(),
            redirect_to_recipients: Vec::new(),
        }
    }
}

impl AntiSpamConfig {
    /// Checks what types cannot; pushes one line per problem.
    pub fn validate(&self, problems: &mut Vec<String>) {
        if !(1..=9).contains(&self.bulk_threshold) {
            problems.push(format!("anti_spam.bulk_threshold must be 1..=9, not {}", self.bulk_threshold));
        }
        for (domain, bcl) in &self.bulk_senders {
            if *bcl > 9 {
                problems.push(format!("anti_spam.bulk_senders: {domain} has BCL {bcl}; a BCL is 0..=9"));
            }
        }
        let redirects = [
            self.spam_action == SpamAction::Redirect,
            self.high_confidence_spam_action == SpamAction::Redirect,
            self.phish_action == SpamAction::Redirect,
            self.high_confidence_phish_action == HighConfidencePhishAction::Redirect,
            self.bulk_action == BulkAction::Spam(SpamAction::Redirect),
        ];
        if redirects.contains(&true) && self.redirect_to_recipients.is_empty() {
            problems.push("anti_spam: a redirect action needs redirect_to_recipients".to_string());
        }
        if let Some(rspamd) = &self.rspamd {
            rspamd.validate(problems);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> AntiSpamConfig {
        toml::from_str(text).expect("anti_spam parses")
    }

    #[test]
    fn bulk_action_takes_every_spam_action_and_no_action() {
        assert_eq!(parse("bulk_action = \"no_action\"").bulk_action, BulkAction::NoAction);
        assert_eq!(parse("bulk_action = \"add_x_header\"").bulk_action, BulkAction::Spam(SpamAction::AddXHeader));
        assert!(toml::from_str::<AntiSpamConfig>("spam_action = \"no_action\"").is_err(), "bulk only");
    }

    #[test]
    fn high_confidence_phish_allows_quarantine_and_redirect_only() {
        let legacy = parse("high_confidence_phish_action = \"move_to_jmf\"");
        assert_eq!(legacy.high_confidence_phish_action, HighConfidencePhishAction::Quarantine);
        assert!(toml::from_str::<AntiSpamConfig>("high_confidence_phish_action = \"delete\"").is_err());
    }

    #[test]
    fn defaults_follow_spec_9_2_and_9_3() {
        let config = AntiSpamConfig::default();
        assert_eq!(
            (config.bulk_threshold, config.mark_as_spam_bulk_mail, config.bulk_action, config.phish_action),
            (7, true, BulkAction::Spam(SpamAction::MoveToJmf), SpamAction::Quarantine)
        );
        assert_eq!(config.high_confidence_phish_action, HighConfidencePhishAction::Quarantine);
    }

    #[test]
    fn out_of_range_bulk_settings_and_a_redirect_without_recipients_are_reported_together() {
        let config = parse("bulk_threshold = 0\nbulk_senders = { \"news.example\" = 12 }\nphish_action = \"redirect\"");
        let mut problems = Vec::new();
        config.validate(&mut problems);
        assert_eq!(problems.len(), 3, "{problems:?}");
    }
}
