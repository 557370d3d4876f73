//! Mail flow rules (transport rules, spec 12): a common subset of EOP's
//! conditions, exceptions and actions, evaluated in priority order.
//!
//! Semantics (spec 12.1): conditions are ANDed, the values of one condition
//! ORed; exceptions are ORed and veto the rule; a rule without conditions
//! applies to every message; all actions of a matching rule apply;
//! `stop_processing`, `delete` and `quarantine` end evaluation; disabled rules
//! are skipped; `audit` mode records the match without acting. Text matches
//! are case-insensitive whole words or phrases (spec 12.2); `…_patterns`
//! conditions are regular expressions ([`patterns`]), compiled once at load,
//! and a pattern that does not compile is a configuration error
//! ([`problems`]). Exceptions take every condition.

mod patterns;

use std::sync::LazyLock;

use mailflow_events::received::SmtpReply;
use mailflow_events::verdicts::{Header, RuleMatch};
use serde::Deserialize;

pub use patterns::Patterns;

/// `[[transport_rules]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransportRuleConfig {
    /// Name, recorded in `rules_matched`.
    pub name: String,
    /// 0 is evaluated first; unique.
    pub priority: u32,
    /// Disabled rules are skipped (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `enforce` (default) or `audit` (record the match, change nothing).
    #[serde(default)]
    pub mode: RuleMode,
    /// End evaluation after this rule when it matches (default false).
    #[serde(default)]
    pub stop_processing: bool,
    /// Conditions (all must hold).
    #[serde(default)]
    pub conditions: Conditions,
    /// Exceptions (any one vetoes).
    #[serde(default)]
    pub exceptions: Conditions,
    /// Actions.
    #[serde(default)]
    pub actions: Actions,
}

fn yes() -> bool {
    true
}

/// Rule mode (spec 12.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleMode {
    /// Apply the actions.
    #[default]
    Enforce,
    /// Record the match only.
    Audit,
}

/// Sender or recipient scope (spec 12.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Inside the organisation.
    InOrganization,
    /// Outside it.
    NotInOrganization,
}

/// Conditions (and, the same shape, exceptions). Absent ones do not constrain.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Conditions {
    /// `From`: sender addresses.
    pub from: Vec<String>,
    /// `FromScope`.
    pub from_scope: Option<Scope>,
    /// `SenderDomainIs`.
    pub sender_domain_is: Vec<String>,
    /// `SentTo`: any recipient is one of these.
    pub sent_to: Vec<String>,
    /// `SentToScope`: any recipient in this scope.
    pub sent_to_scope: Option<Scope>,
    /// `RecipientDomainIs`: any recipient's domain.
    pub recipient_domain_is: Vec<String>,
    /// `SubjectContainsWords`.
    pub subject_contains_words: Vec<String>,
    /// `SubjectOrBodyContainsWords`.
    pub subject_or_body_contains_words: Vec<String>,
    /// `HeaderContainsMessageHeader`: the header to look in …
    pub header_contains_message_header: Option<String>,
    /// … `HeaderContainsWords`: … for these words.
    pub header_contains_words: Vec<String>,
    /// `SCLOver`: SCL at least this.
    pub scl_over: Option<i8>,
    /// `MessageSizeOver`: at least this many bytes.
    pub message_size_over: Option<u64>,
    /// `AttachmentExtensionMatchesWords`: e.g. `exe`, `js`.
    pub attachment_extension_matches_words: Vec<String>,
    /// `FromAddressContainsWords`: words in the sender address.
    pub from_address_contains_words: Vec<String>,
    /// `FromAddressMatchesPatterns`: the sender address.
    pub from_address_matches_patterns: Patterns,
    /// `RecipientAddressContainsWords`: words in any recipient address.
    pub recipient_address_contains_words: Vec<String>,
    /// `RecipientAddressMatchesPatterns`: any recipient address.
    pub recipient_address_matches_patterns: Patterns,
    /// `AnyOfToHeader`: an address of the `To:` header is one of these.
    pub any_of_to_header: Vec<String>,
    /// `AnyOfCcHeader`: an address of the `Cc:` header is one of these.
    pub any_of_cc_header: Vec<String>,
    /// `AnyOfToCcHeader`: an address of `To:` or `Cc:` is one of these.
    pub any_of_to_cc_header: Vec<String>,
    /// `SubjectMatchesPatterns`.
    pub subject_matches_patterns: Patterns,
    /// `SubjectOrBodyMatchesPatterns`.
    pub subject_or_body_matches_patterns: Patterns,
    /// `HeaderMatchesMessageHeader`: the header to match …
    pub header_matches_message_header: Option<String>,
    /// … `HeaderMatchesPatterns`: … against these patterns (unfolded value).
    pub header_matches_patterns: Patterns,
    /// `AttachmentNameMatchesPatterns`: any attachment file name.
    pub attachment_name_matches_patterns: Patterns,
    /// `WithImportance`: the `Importance:` header (else `X-Priority:`; else normal).
    pub with_importance: Option<Importance>,
    /// `SenderIpRanges`: the sending IP (the original internet sender's
    /// under Enhanced Filtering) is in one of these networks, e.g. `192.0.2.0/24`.
    pub sender_ip_ranges: Vec<crate::config::IpNet>,
    /// `AttachmentSizeOver`: some attachment is at least this many bytes (decoded).
    pub attachment_size_over: Option<u64>,
}

/// Message importance (`WithImportance`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Importance {
    /// `Importance: low`, `X-Priority: 4` or `5`.
    Low,
    /// No header, `Importance: normal`, `X-Priority: 3`.
    Normal,
    /// `Importance: high`, `X-Priority: 1` or `2`.
    High,
}

impl Importance {
    /// The importance the header fields declare.
    pub fn of(headers: &[(String, String)]) -> Self {
        let field = |name: &str| headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim());
        match (field("Importance").map(str::to_ascii_lowercase).as_deref(), field("X-Priority")) {
            (Some("high"), _) => Importance::High,
            (Some("low"), _) => Importance::Low,
            (Some(_), _) => Importance::Normal,
            (None, Some(priority)) => match priority.chars().next() {
                Some('1' | '2') => Importance::High,
                Some('4' | '5') => Importance::Low,
                _ => Importance::Normal,
            },
            (None, None) => Importance::Normal,
        }
    }
}

/// Actions (spec 12.4).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Actions {
    /// `SetSCL` (-1..9, spec 9.4).
    pub set_scl: Option<i8>,
    /// `SetHeaderName`/`SetHeaderValue`: add or overwrite.
    pub set_headers: Vec<SetHeader>,
    /// `RemoveHeader`.
    pub remove_headers: Vec<String>,
    /// `PrependSubject`.
    pub prepend_subject: Option<String>,
    /// `RedirectMessageTo`: replaces the recipients.
    pub redirect_message_to: Vec<String>,
    /// `AddToRecipients` / `BlindCopyTo`.
    pub add_to_recipients: Vec<String>,
    /// `RejectMessageReasonText` (default text `Delivery not authorized, message refused`).
    pub reject_message_reason_text: Option<String>,
    /// `RejectMessageEnhancedStatusCode`: 5.7.1 (default) or 5.7.900–5.7.999.
    pub reject_message_enhanced_status_code: Option<String>,
    /// `DeleteMessage`.
    pub delete_message: bool,
    /// `Quarantine`.
    pub quarantine: bool,
    /// `RouteMessageOutboundConnector`.
    pub route_message_outbound_connector: Option<String>,
    /// `RouteMessageOutboundRequireTls`: deliver over TLS or not at all
    /// (deferred `4.7.10` where the next hop offers none).
    pub route_message_outbound_require_tls: bool,
    /// `ApplyHtmlDisclaimerText`: text (HTML allowed) added to the body; see
    /// `crate::disclaimer`.
    pub apply_html_disclaimer_text: Option<String>,
    /// `ApplyHtmlDisclaimerLocation`: `append` (default) or `prepend`.
    pub apply_html_disclaimer_location: mailflow_events::verdicts::DisclaimerLocation,
    /// `ApplyHtmlDisclaimerFallbackAction`, when the text cannot be inserted:
    /// `wrap` (default), `ignore` or `reject`.
    pub apply_html_disclaimer_fallback_action: DisclaimerFallback,
}

/// `ApplyHtmlDisclaimerFallbackAction` (spec 12.4).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisclaimerFallback {
    /// Send the message as an attachment of a new one that carries the text.
    #[default]
    Wrap,
    /// Send the message without the disclaimer.
    Ignore,
    /// Refuse the message with an NDR (`550 5.7.1`).
    Reject,
}

/// A disclaimer a rule asks for, before the content is looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisclaimerRequest {
    /// Text.
    pub text: String,
    /// Where.
    pub location: mailflow_events::verdicts::DisclaimerLocation,
    /// What to do when it cannot be inserted.
    pub fallback: DisclaimerFallback,
}

/// `{ name = "X-Foo", value = "bar" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetHeader {
    /// Field name.
    pub name: String,
    /// Field value.
    pub value: String,
}

/// What rules look at.
#[derive(Debug, Clone, Default)]
pub struct RuleInput<'a> {
    /// The sender (the `From:` address, else MAIL FROM; spec 12.1 default `Header`).
    pub sender: &'a str,
    /// Whether the sender is inside the organisation.
    pub sender_in_organization: bool,
    /// Recipients and whether each is inside the organisation.
    pub recipients: &'a [(String, bool)],
    /// Subject.
    pub subject: &'a str,
    /// Text of the body.
    pub body: &'a str,
    /// Header fields (name, value).
    pub headers: &'a [(String, String)],
    /// SCL before rules.
    pub scl: i8,
    /// Message size in bytes.
    pub size: u64,
    /// Attachment file names.
    pub attachments: &'a [String],
    /// Decoded size of each attachment, in bytes.
    pub attachment_sizes: &'a [u64],
    /// The sending IP (after Enhanced Filtering's skip listing), if known.
    pub sender_ip: Option<std::net::IpAddr>,
}

/// What the matching rules decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleOutcome {
    /// Every matching rule with the actions applied (none in audit mode).
    pub matched: Vec<RuleMatch>,
    /// The last `SetSCL`.
    pub set_scl: Option<i8>,
    /// Headers to add or overwrite.
    pub set_headers: Vec<Header>,
    /// Headers to remove.
    pub remove_headers: Vec<String>,
    /// Subject prefix.
    pub subject_prefix: Option<String>,
    /// New recipients.
    pub redirect_to: Vec<String>,
    /// Added recipients.
    pub added_recipients: Vec<String>,
    /// The NDR reply of a rejecting rule.
    pub reject: Option<SmtpReply>,
    /// Drop silently.
    pub delete: bool,
    /// Hold in quarantine.
    pub quarantine: bool,
    /// Outbound connector to route through.
    pub route_via_connector: Option<String>,
    /// Deliver over TLS only.
    pub require_tls: bool,
    /// The disclaimer of the last rule that asks for one.
    pub disclaimer: Option<DisclaimerRequest>,
}

/// Case-insensitive whole-word or phrase match (spec 12.2): the phrase must
/// not continue into letters or digits on either side.
pub fn contains_words(text: &str, words: &[String]) -> bool {
    let text = text.to_lowercase();
    words.iter().any(|word| {
        let word = word.to_lowercase();
        if word.is_empty() {
            return false;
        }
        text.match_indices(&word).any(|(at, _)| {
            let before = text[..at].chars().next_back();
            let after = text[at + word.len()..].chars().next();
            !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
        })
    })
}

fn domain_of(address: &str) -> &str {
    address.rsplit_once('@').map_or("", |(_, d)| d)
}

fn eq_any(value: &str, list: &[String]) -> bool {
    list.iter().any(|item| item.eq_ignore_ascii_case(value))
}

/// A header value as one line (RFC 5322 unfolding).
fn unfold(value: &str) -> String {
    value.replace("\r\n", "").replace('\n', "")
}

// A literal: compiling it cannot fail (the tests compile it).
static ADDRESS: LazyLock<regex::Regex> =
    LazyLock::new(|| regex::Regex::new(r#"[^\s<>,;:"()\[\]]+@[^\s<>,;:"()\[\]]+"#).expect("address pattern"));

/// The addresses of the header fields named one of `names`.
fn header_addresses<'a>(headers: &'a [(String, String)], names: &'a [&str]) -> impl Iterator<Item = &'a str> {
    headers
        .iter()
        .filter(|(name, _)| names.iter().any(|n| n.eq_ignore_ascii_case(name)))
        .flat_map(|(_, value)| ADDRESS.find_iter(value).map(|m| m.as_str()))
}

impl Conditions {
    /// Whether every condition that is set holds (all unset: true).
    fn all_hold(&self, input: &RuleInput<'_>) -> bool {
        self.checks(input).into_iter().flatten().all(|held| held)
    }

    /// Whether any condition that is set holds (all unset: false).
    fn any_holds(&self, input: &RuleInput<'_>) -> bool {
        self.checks(input).into_iter().flatten().any(|held| held)
    }

    /// Each condition: `None` when not set, else whether it holds.
    fn checks(&self, input: &RuleInput<'_>) -> Vec<Option<bool>> {
        let set = |list: &[String], held: &dyn Fn() -> bool| (!list.is_empty()).then(held);
        let scope_holds = |scope: Scope, inside: bool| (scope == Scope::InOrganization) == inside;
        let header_text = || {
            let name = self.header_contains_message_header.as_deref().unwrap_or_default();
            input
                .headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .any(|(_, v)| contains_words(v, &self.header_contains_words))
        };
        vec![
            set(&self.from, &|| eq_any(input.sender, &self.from)),
            self.from_scope.map(|scope| scope_holds(scope, input.sender_in_organization)),
            set(&self.sender_domain_is, &|| eq_any(domain_of(input.sender), &self.sender_domain_is)),
            set(&self.sent_to, &|| input.recipients.iter().any(|(r, _)| eq_any(r, &self.sent_to))),
            self.sent_to_scope.map(|scope| input.recipients.iter().any(|(_, inside)| scope_holds(scope, *inside))),
            set(&self.recipient_domain_is, &|| {
                input.recipients.iter().any(|(r, _)| eq_any(domain_of(r), &self.recipient_domain_is))
            }),
            set(&self.subject_contains_words, &|| contains_words(input.subject, &self.subject_contains_words)),
            set(&self.subject_or_body_contains_words, &|| {
                contains_words(input.subject, &self.subject_or_body_contains_words)
                    || contains_words(input.body, &self.subject_or_body_contains_words)
            }),
            self.header_contains_message_header.as_ref().map(|_| header_text()),
            self.scl_over.map(|scl| input.scl >= scl),
            self.message_size_over.map(|size| input.size >= size),
            set(&self.attachment_extension_matches_words, &|| {
                input.attachments.iter().any(|name| {
                    let extension = name.rsplit_once('.').map_or("", |(_, e)| e);
                    eq_any(extension, &self.attachment_extension_matches_words)
                })
            }),
            set(&self.from_address_contains_words, &|| contains_words(input.sender, &self.from_address_contains_words)),
            pattern(&self.from_address_matches_patterns, &|p| p.matches(input.sender)),
            set(&self.recipient_address_contains_words, &|| {
                input.recipients.iter().any(|(r, _)| contains_words(r, &self.recipient_address_contains_words))
            }),
            pattern(&self.recipient_address_matches_patterns, &|p| input.recipients.iter().any(|(r, _)| p.matches(r))),
            set(&self.any_of_to_header, &|| {
                header_addresses(input.headers, &["To"]).any(|a| eq_any(a, &self.any_of_to_header))
            }),
            set(&self.any_of_cc_header, &|| {
                header_addresses(input.headers, &["Cc"]).any(|a| eq_any(a, &self.any_of_cc_header))
            }),
            set(&self.any_of_to_cc_header, &|| {
                header_addresses(input.headers, &["To", "Cc"]).any(|a| eq_any(a, &self.any_of_to_cc_header))
            }),
            pattern(&self.subject_matches_patterns, &|p| p.matches(input.subject)),
            pattern(&self.subject_or_body_matches_patterns, &|p| p.matches(input.subject) || p.matches(input.body)),
            self.header_matches_message_header.as_ref().map(|name| {
                input
                    .headers
                    .iter()
                    .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                    .any(|(_, v)| self.header_matches_patterns.matches(&unfold(v)))
            }),
            pattern(&self.attachment_name_matches_patterns, &|p| input.attachments.iter().any(|a| p.matches(a))),
            self.with_importance.map(|importance| Importance::of(input.headers) == importance),
            (!self.sender_ip_ranges.is_empty())
                .then(|| input.sender_ip.is_some_and(|ip| self.sender_ip_ranges.iter().any(|net| net.contains(ip)))),
            self.attachment_size_over.map(|size| input.attachment_sizes.iter().any(|&a| a >= size)),
        ]
    }

    /// Configuration problems of these conditions, each prefixed with `what`.
    fn problems(&self, what: &str, problems: &mut Vec<String>) {
        let patterns = [
            ("from_address_matches_patterns", &self.from_address_matches_patterns),
            ("recipient_address_matches_patterns", &self.recipient_address_matches_patterns),
            ("subject_matches_patterns", &self.subject_matches_patterns),
            ("subject_or_body_matches_patterns", &self.subject_or_body_matches_patterns),
            ("header_matches_patterns", &self.header_matches_patterns),
            ("attachment_name_matches_patterns", &self.attachment_name_matches_patterns),
        ];
        for (field, patterns) in patterns {
            problems.extend(patterns.problems().iter().map(|problem| format!("{what}.{field}: {problem}")));
        }
        if self.header_matches_message_header.is_some() != self.header_matches_patterns.is_set() {
            problems.push(format!("{what}: header_matches_message_header and header_matches_patterns go together"));
        }
        if self.header_contains_message_header.is_some() == self.header_contains_words.is_empty() {
            problems.push(format!("{what}: header_contains_message_header and header_contains_words go together"));
        }
    }
}

/// `None` when no pattern was given, else whether `held` holds.
fn pattern(patterns: &Patterns, held: &dyn Fn(&Patterns) -> bool) -> Option<bool> {
    patterns.is_set().then(|| held(patterns))
}

/// Every configuration problem of `rules` that types cannot catch: patterns
/// that do not compile, header conditions without their other half. One line
/// per problem, for `check-config`.
pub fn problems(rules: &[TransportRuleConfig]) -> Vec<String> {
    let mut problems = Vec::new();
    for rule in rules {
        let name = &rule.name;
        rule.conditions.problems(&format!("transport rule {name}: conditions"), &mut problems);
        rule.exceptions.problems(&format!("transport rule {name}: exceptions"), &mut problems);
    }
    problems
}

/// Evaluates `rules` (any order; sorted by priority here) against `input`.
pub fn evaluate(rules: &[TransportRuleConfig], input: &RuleInput<'_>) -> RuleOutcome {
    let mut ordered: Vec<&TransportRuleConfig> = rules.iter().filter(|rule| rule.enabled).collect();
    ordered.sort_by_key(|rule| rule.priority);
    let mut outcome = RuleOutcome::default();
    for rule in ordered {
        if !rule.conditions.all_hold(input) || rule.exceptions.any_holds(input) {
            continue;
        }
        if rule.mode == RuleMode::Audit {
            outcome.matched.push(RuleMatch { rule: rule.name.clone(), actions: Vec::new() });
            continue;
        }
        let actions = &rule.actions;
        let mut applied = Vec::new();
        if let Some(scl) = actions.set_scl {
            outcome.set_scl = Some(scl.clamp(-1, 9));
            applied.push("SetSCL".to_string());
        }
        for header in &actions.set_headers {
            outcome.set_headers.retain(|h| !h.name.eq_ignore_ascii_case(&header.name));
            outcome.set_headers.push(Header { name: header.name.clone(), value: header.value.clone() });
            applied.push("SetHeaderName".to_string());
        }
        for name in &actions.remove_headers {
            outcome.remove_headers.push(name.clone());
            applied.push("RemoveHeader".to_string());
        }
        if let Some(prefix) = &actions.prepend_subject {
            outcome.subject_prefix = Some(format!("{prefix}{}", outcome.subject_prefix.take().unwrap_or_default()));
            applied.push("PrependSubject".to_string());
        }
        if !actions.redirect_message_to.is_empty() {
            outcome.redirect_to = actions.redirect_message_to.clone();
            applied.push("RedirectMessageTo".to_string());
        }
        if !actions.add_to_recipients.is_empty() {
            outcome.added_recipients.extend(actions.add_to_recipients.iter().cloned());
            applied.push("AddToRecipients".to_string());
        }
        if actions.reject_message_reason_text.is_some() || actions.reject_message_enhanced_status_code.is_some() {
            let enhanced = actions
                .reject_message_enhanced_status_code
                .clone()
                .filter(|code| valid_reject_code(code))
                .unwrap_or_else(|| "5.7.1".to_string());
            let text = actions
                .reject_message_reason_text
                .clone()
                .map(|text| text.chars().take(1024).collect())
                .unwrap_or_else(|| "Delivery not authorized, message refused".to_string());
            outcome.reject = Some(SmtpReply { code: 550, enhanced: Some(enhanced), text });
            applied.push("RejectMessage".to_string());
        }
        if let Some(connector) = &actions.route_message_outbound_connector {
            outcome.route_via_connector = Some(connector.clone());
            applied.push("RouteMessageOutboundConnector".to_string());
        }
        if let Some(text) = &actions.apply_html_disclaimer_text {
            outcome.disclaimer = Some(DisclaimerRequest {
                text: text.clone(),
                location: actions.apply_html_disclaimer_location,
                fallback: actions.apply_html_disclaimer_fallback_action,
            });
            applied.push("ApplyHtmlDisclaimer".to_string());
        }
        if actions.route_message_outbound_require_tls {
            outcome.require_tls = true;
            applied.push("RouteMessageOutboundRequireTls".to_string());
        }
        if actions.delete_message {
            outcome.delete = true;
            applied.push("DeleteMessage".to_string());
        }
        if actions.quarantine {
            outcome.quarantine = true;
            applied.push("Quarantine".to_string());
        }
        outcome.matched.push(RuleMatch { rule: rule.name.clone(), actions: applied });
        if rule.stop_processing || actions.delete_message || actions.quarantine {
            break;
        }
    }
    outcome
}

/// 5.7.1 or 5.7.900–5.7.999 (spec 12.4).
fn valid_reject_code(code: &str) -> bool {
    code == "5.7.1"
        || code.strip_prefix("5.7.").and_then(|n| n.parse::<u16>().ok()).is_some_and(|n| (900..=999).contains(&n))
}

#[cfg(test)]
mod tests;
