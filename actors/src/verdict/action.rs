//! The policy action of a verdict (spec 9.3): what the anti-spam policy says
//! to do with spam, high-confidence spam, phish, high-confidence phish and
//! bulk, as fields of `VerdictReached`.

use mailflow_events::verdicts::{Header, PolicyAction, SpamVerdict};

use super::{AntiSpamConfig, BulkAction, HighConfidencePhishAction, SpamAction};

/// The fixed value of the `AddXHeader` header (spec 9.3).
pub const X_HEADER_TEXT: &str = "This message appears to be spam.";

/// What the action adds to the verdict.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Applied {
    /// The action.
    pub action: Option<PolicyAction>,
    /// Extra header, for `add_x_header`.
    pub header: Option<Header>,
    /// Subject prefix, for `modify_subject`.
    pub subject_prefix: Option<String>,
    /// New recipients, for `redirect`.
    pub redirect_to: Vec<String>,
}

/// Applies the configured action to `verdict`; `None` keeps the verdict's default.
pub fn apply(config: &AntiSpamConfig, verdict: SpamVerdict) -> Applied {
    let configured = match verdict {
        SpamVerdict::Spam => config.spam_action,
        SpamVerdict::HighConfidenceSpam => config.high_confidence_spam_action,
        SpamVerdict::Phish => config.phish_action,
        SpamVerdict::HighConfidencePhish => match config.high_confidence_phish_action {
            HighConfidencePhishAction::Quarantine => SpamAction::Quarantine,
            HighConfidencePhishAction::Redirect => SpamAction::Redirect,
        },
        SpamVerdict::Bulk => match config.bulk_action {
            BulkAction::NoAction => return Applied { action: Some(PolicyAction::Deliver), ..Applied::default() },
            BulkAction::Spam(action) => action,
        },
        SpamVerdict::NotSpam | SpamVerdict::Malware => return Applied::default(),
    };
    match configured {
        SpamAction::MoveToJmf => Applied { action: Some(PolicyAction::MoveToJunk), ..Applied::default() },
        SpamAction::AddXHeader => {
            // A name with spaces or colons is ignored (spec 9.3): the default is used.
            let name = &config.add_x_header_value;
            let name = if name.is_empty() || name.contains([' ', ':']) { "X-This-Is-Spam" } else { name.as_str() };
            Applied {
                action: Some(PolicyAction::AddXHeader),
                header: Some(Header { name: name.to_string(), value: X_HEADER_TEXT.to_string() }),
                ..Applied::default()
            }
        }
        SpamAction::ModifySubject => Applied {
            action: Some(PolicyAction::PrependSubject),
            subject_prefix: Some(config.modify_subject_value.clone()),
            ..Applied::default()
        },
        SpamAction::Redirect => Applied {
            action: Some(PolicyAction::Redirect),
            redirect_to: config.redirect_to_recipients.clone(),
            ..Applied::default()
        },
        SpamAction::Delete => Applied { action: Some(PolicyAction::Delete), ..Applied::default() },
        SpamAction::Quarantine => Applied { action: Some(PolicyAction::Quarantine), ..Applied::default() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_configured_action_of_spec_9_3() {
        let mut config = AntiSpamConfig::default();
        assert_eq!(apply(&config, SpamVerdict::Spam).action, Some(PolicyAction::MoveToJunk));
        assert_eq!(apply(&config, SpamVerdict::NotSpam), Applied::default());
        config.spam_action = SpamAction::AddXHeader;
        let applied = apply(&config, SpamVerdict::Spam);
        assert_eq!(applied.header, Some(Header { name: "X-This-Is-Spam".into(), value: X_HEADER_TEXT.into() }));
        config.add_x_header_value = "Bad: Name".into();
        assert_eq!(apply(&config, SpamVerdict::Spam).header.map(|h| h.name), Some("X-This-Is-Spam".into()));
        config.spam_action = SpamAction::ModifySubject;
        assert_eq!(apply(&config, SpamVerdict::Spam).subject_prefix.as_deref(), Some("[SPAM] "));
        config.high_confidence_spam_action = SpamAction::Redirect;
        config.redirect_to_recipients = vec!["spamtrap@contoso.com".into()];
        let redirected = apply(&config, SpamVerdict::HighConfidenceSpam);
        assert_eq!(
            (redirected.action, redirected.redirect_to),
            (Some(PolicyAction::Redirect), vec!["spamtrap@contoso.com".to_string()])
        );
        config.high_confidence_spam_action = SpamAction::Quarantine;
        assert_eq!(apply(&config, SpamVerdict::HighConfidenceSpam).action, Some(PolicyAction::Quarantine));
        config.high_confidence_spam_action = SpamAction::Delete;
        assert_eq!(apply(&config, SpamVerdict::HighConfidenceSpam).action, Some(PolicyAction::Delete));
    }

    #[test]
    fn phish_high_confidence_phish_and_bulk_take_their_own_actions() {
        let mut config = AntiSpamConfig::default();
        let action = |config: &AntiSpamConfig, verdict| apply(config, verdict).action;
        assert_eq!(action(&config, SpamVerdict::Phish), Some(PolicyAction::Quarantine), "spec 9.3 default");
        assert_eq!(action(&config, SpamVerdict::HighConfidencePhish), Some(PolicyAction::Quarantine));
        assert_eq!(action(&config, SpamVerdict::Bulk), Some(PolicyAction::MoveToJunk));
        config.phish_action = SpamAction::ModifySubject;
        config.bulk_action = BulkAction::NoAction;
        config.high_confidence_phish_action = HighConfidencePhishAction::Redirect;
        config.redirect_to_recipients = vec!["soc@contoso.com".into()];
        assert_eq!(action(&config, SpamVerdict::Phish), Some(PolicyAction::PrependSubject));
        assert_eq!(action(&config, SpamVerdict::Bulk), Some(PolicyAction::Deliver));
        let redirected = apply(&config, SpamVerdict::HighConfidencePhish);
        assert_eq!(
            (redirected.action, redirected.redirect_to),
            (Some(PolicyAction::Redirect), vec!["soc@contoso.com".to_string()])
        );
        config.bulk_action = BulkAction::Spam(SpamAction::AddXHeader);
        assert_eq!(
            apply(&config, SpamVerdict::Bulk).header,
            Some(Header { name: "X-This-Is-Spam".into(), value: X_HEADER_TEXT.into() })
        );
        assert_eq!(apply(&config, SpamVerdict::Malware), Applied::default());
    }
}
