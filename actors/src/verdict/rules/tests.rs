//! Mail flow rules, table by table (spec 12).

use super::*;

fn rules(text: &str) -> Vec<TransportRuleConfig> {
    #[derive(Deserialize)]
    struct File {
        transport_rules: Vec<TransportRuleConfig>,
    }
    toml::from_str::<File>(text).expect("rules parse").transport_rules
}

fn input<'a>(
    recipients: &'a [(String, bool)],
    headers: &'a [(String, String)],
    attachments: &'a [String],
) -> RuleInput<'a> {
    RuleInput {
        sender: "ceo@fabrikam.example",
        sender_in_organization: false,
        recipients,
        subject: "Quarterly Report, final",
        body: "Please wire the money today.",
        headers,
        scl: 1,
        size: 20_000,
        attachments,
        attachment_sizes: &[4_000, 250_000],
        sender_ip: Some("203.0.113.9".parse().expect("ip")),
    }
}

#[test]
fn words_match_whole_words_and_phrases_only() {
    // Spec 12.2: "contoso" does not match "contososales".
    let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(contains_words("Meet contoso today", &words(&["Contoso"])));
    assert!(!contains_words("contososales team", &words(&["contoso"])));
    assert!(contains_words("wire the money, now", &words(&["wire the money"])));
    assert!(contains_words("(report)", &words(&["report"])));
}

#[test]
fn conditions_are_anded_values_ored_exceptions_veto() {
    let set = rules(
        r#"
        [[transport_rules]]
        name = "finance"
        priority = 0
        conditions = { subject_contains_words = ["invoice", "report"], from_scope = "not_in_organization" }
        exceptions = { sender_domain_is = ["trusted.example"] }
        actions = { prepend_subject = "[External] " }
        "#,
    );
    let recipients = [("alice@contoso.com".to_string(), true)];
    let outcome = evaluate(&set, &input(&recipients, &[], &[]));
    assert_eq!(outcome.subject_prefix.as_deref(), Some("[External] "));
    assert_eq!(outcome.matched, vec![RuleMatch { rule: "finance".into(), actions: vec!["PrependSubject".into()] }]);
    let mut trusted = input(&recipients, &[], &[]);
    trusted.sender = "ceo@trusted.example";
    assert!(evaluate(&set, &trusted).matched.is_empty(), "the exception vetoes");
    let mut internal = input(&recipients, &[], &[]);
    internal.sender_in_organization = true;
    assert!(evaluate(&set, &internal).matched.is_empty(), "every condition must hold");
}

#[test]
fn priority_stop_processing_disabled_and_audit() {
    let set = rules(
        r#"
        [[transport_rules]]
        name = "second"
        priority = 1
        actions = { set_headers = [{ name = "X-Second", value = "1" }] }

        [[transport_rules]]
        name = "first"
        priority = 0
        stop_processing = true
        actions = { set_scl = -1 }

        [[transport_rules]]
        name = "off"
        priority = 2
        enabled = false
        actions = { delete_message = true }
        "#,
    );
    let outcome = evaluate(&set, &input(&[], &[], &[]));
    assert_eq!(outcome.set_scl, Some(-1));
    assert_eq!(outcome.matched.len(), 1, "stop_processing ends evaluation: {:?}", outcome.matched);
    let audit = rules(
        r#"
        [[transport_rules]]
        name = "watch"
        priority = 0
        mode = "audit"
        actions = { delete_message = true }
        "#,
    );
    let outcome = evaluate(&audit, &input(&[], &[], &[]));
    assert!(!outcome.delete && outcome.matched[0].actions.is_empty(), "audit records without acting");
}

#[test]
fn each_condition_of_the_subset() {
    let recipients = [("alice@contoso.com".to_string(), true), ("partner@tailspin.example".to_string(), false)];
    let headers = [("X-Campaign".to_string(), "spring sale 2026".to_string())];
    let attachments = ["invoice.PDF".to_string(), "setup.exe".to_string()];
    let table: &[(&str, bool)] = &[
        (r#"from = ["CEO@fabrikam.example"]"#, true),
        (r#"sender_domain_is = ["fabrikam.example"]"#, true),
        (r#"sender_domain_is = ["contoso.com"]"#, false),
        (r#"sent_to = ["alice@contoso.com"]"#, true),
        (r#"sent_to_scope = "not_in_organization""#, true),
        (r#"recipient_domain_is = ["tailspin.example"]"#, true),
        (r#"subject_or_body_contains_words = ["wire the money"]"#, true),
        (
            r#"header_contains_message_header = "X-Campaign"
            header_contains_words = ["sale"]"#,
            true,
        ),
        (
            r#"header_contains_message_header = "X-Other"
            header_contains_words = ["sale"]"#,
            false,
        ),
        ("scl_over = 1", true),
        ("scl_over = 5", false),
        ("message_size_over = 10000", true),
        ("message_size_over = 1000000", false),
        (r#"attachment_extension_matches_words = ["exe"]"#, true),
        (r#"attachment_extension_matches_words = ["js"]"#, false),
    ];
    for (condition, expected) in table {
        let set = rules(&format!(
            "[[transport_rules]]\nname = \"r\"\npriority = 0\n[transport_rules.conditions]\n{condition}\n[transport_rules.actions]\nset_scl = 6\n"
        ));
        let matched = !evaluate(&set, &input(&recipients, &headers, &attachments)).matched.is_empty();
        assert_eq!(matched, *expected, "{condition}");
    }
}

#[test]
fn each_action_of_the_subset() {
    let set = rules(
        r#"
        [[transport_rules]]
        name = "all"
        priority = 0
        [transport_rules.actions]
        set_scl = 9
        set_headers = [{ name = "X-Rule", value = "hit" }]
        remove_headers = ["X-Campaign"]
        redirect_message_to = ["review@contoso.com"]
        add_to_recipients = ["archive@contoso.com"]
        reject_message_reason_text = "Blocked by policy"
        reject_message_enhanced_status_code = "5.7.950"
        route_message_outbound_connector = "to-partner"
        route_message_outbound_require_tls = true
        apply_html_disclaimer_text = "<p>Confidential</p>"
        apply_html_disclaimer_fallback_action = "reject"
        quarantine = true

        [[transport_rules]]
        name = "never reached"
        priority = 1
        actions = { set_scl = 0 }
        "#,
    );
    let outcome = evaluate(&set, &input(&[], &[], &[]));
    assert_eq!(outcome.set_scl, Some(9));
    assert_eq!(outcome.set_headers, vec![Header { name: "X-Rule".into(), value: "hit".into() }]);
    assert_eq!(outcome.remove_headers, vec!["X-Campaign".to_string()]);
    assert_eq!(outcome.redirect_to, vec!["review@contoso.com".to_string()]);
    assert_eq!(outcome.added_recipients, vec!["archive@contoso.com".to_string()]);
    assert_eq!(
        outcome.reject,
        Some(SmtpReply { code: 550, enhanced: Some("5.7.950".into()), text: "Blocked by policy".into() })
    );
    assert_eq!(outcome.route_via_connector.as_deref(), Some("to-partner"));
    assert!(outcome.require_tls);
    assert_eq!(
        outcome.disclaimer,
        Some(super::DisclaimerRequest {
            text: "<p>Confidential</p>".into(),
            location: mailflow_events::verdicts::DisclaimerLocation::Append,
            fallback: super::DisclaimerFallback::Reject,
        })
    );
    assert!(outcome.matched[0].actions.contains(&"RouteMessageOutboundRequireTls".to_string()));
    assert!(outcome.quarantine);
    assert_eq!(outcome.matched.len(), 1, "quarantine ends evaluation");
    let default_reject = rules(
        "[[transport_rules]]\nname = \"r\"\npriority = 0\nactions = { reject_message_enhanced_status_code = \"5.7.2\" }\n",
    );
    let reply = evaluate(&default_reject, &input(&[], &[], &[])).reject.expect("rejects");
    assert_eq!(
        (reply.enhanced.as_deref(), reply.text.as_str()),
        (Some("5.7.1"), "Delivery not authorized, message refused")
    );
}

#[test]
fn each_pattern_and_address_condition() {
    let recipients = [("alice@contoso.com".to_string(), true), ("partner@tailspin.example".to_string(), false)];
    let headers = [
        ("X-Campaign".to_string(), "spring\r\n sale 2026".to_string()),
        ("To".to_string(), "Alice <alice@contoso.com>, \"Bob, B\" <bob@contoso.com>".to_string()),
        ("Cc".to_string(), "carol@fabrikam.example".to_string()),
        ("X-Priority".to_string(), "1 (Highest)".to_string()),
    ];
    let attachments = ["invoice.PDF".to_string(), "setup.exe".to_string()];
    let table: &[(&str, bool)] = &[
        (r#"from_address_contains_words = ["fabrikam"]"#, true),
        (r#"from_address_contains_words = ["fab"]"#, false),
        (r#"from_address_matches_patterns = ['^ceo@.*\.example$']"#, true),
        (r#"from_address_matches_patterns = ['^cfo@']"#, false),
        (r#"recipient_address_contains_words = ["tailspin"]"#, true),
        (r#"recipient_address_contains_words = ["tail"]"#, false),
        (r#"recipient_address_matches_patterns = ['@tailspin\.example$']"#, true),
        (r#"recipient_address_matches_patterns = ['@wingtip\.example$']"#, false),
        (r#"any_of_to_header = ["BOB@contoso.com"]"#, true),
        (r#"any_of_to_header = ["carol@fabrikam.example"]"#, false),
        (r#"any_of_cc_header = ["carol@fabrikam.example"]"#, true),
        (r#"any_of_to_cc_header = ["carol@fabrikam.example"]"#, true),
        (r#"any_of_to_cc_header = ["dave@fabrikam.example"]"#, false),
        (r#"subject_matches_patterns = ['quarterly\s+report']"#, true),
        (r#"subject_matches_patterns = ['^report']"#, false),
        (r#"subject_or_body_matches_patterns = ['wire\s+the\s+money']"#, true),
        (r#"subject_or_body_matches_patterns = ['\bbitcoin\b']"#, false),
        (
            r#"header_matches_message_header = "x-campaign"
            header_matches_patterns = ['spring sale \d{4}']"#,
            true,
        ),
        (
            r#"header_matches_message_header = "X-Other"
            header_matches_patterns = ['.*']"#,
            false,
        ),
        (r#"attachment_name_matches_patterns = ['^setup\.(exe|msi)$']"#, true),
        (r#"attachment_name_matches_patterns = ['\.docm$']"#, false),
        (r#"with_importance = "high""#, true),
        (r#"with_importance = "normal""#, false),
    ];
    for (condition, expected) in table {
        let set = rules(&format!(
            "[[transport_rules]]\nname = \"r\"\npriority = 0\n[transport_rules.conditions]\n{condition}\n[transport_rules.actions]\nset_scl = 6\n"
        ));
        assert!(problems(&set).is_empty(), "{condition}: {:?}", problems(&set));
        let matched = !evaluate(&set, &input(&recipients, &headers, &attachments)).matched.is_empty();
        assert_eq!(matched, *expected, "{condition}");
        // The same condition as an exception vetoes a rule that otherwise applies to everything.
        let excepted = rules(&format!(
            "[[transport_rules]]\nname = \"r\"\npriority = 0\n[transport_rules.exceptions]\n{condition}\n[transport_rules.actions]\nset_scl = 6\n"
        ));
        let applied = !evaluate(&excepted, &input(&recipients, &headers, &attachments)).matched.is_empty();
        assert_eq!(applied, !*expected, "except {condition}");
    }
}

#[test]
fn importance_comes_from_importance_then_x_priority() {
    let of = |name: &str, value: &str| Importance::of(&[(name.to_string(), value.to_string())]);
    assert_eq!(of("Importance", "Low"), Importance::Low);
    assert_eq!(of("Importance", "high"), Importance::High);
    assert_eq!(of("X-Priority", "5 (Lowest)"), Importance::Low);
    assert_eq!(of("X-Priority", "3"), Importance::Normal);
    assert_eq!(Importance::of(&[]), Importance::Normal);
}

#[test]
fn invalid_patterns_and_half_header_conditions_are_configuration_problems() {
    let set = rules(
        r#"
        [[transport_rules]]
        name = "broken"
        priority = 0
        conditions = { subject_matches_patterns = ["(unclosed", "fine"], header_matches_patterns = ["x"] }
        exceptions = { attachment_name_matches_patterns = ["[z-a]"], header_contains_message_header = "X-A" }
        "#,
    );
    let found = problems(&set);
    assert_eq!(found.len(), 4, "{found:#?}");
    assert!(
        found[0].starts_with("transport rule broken: conditions.subject_matches_patterns: `(unclosed`"),
        "{found:#?}"
    );
    assert!(found.iter().any(|p| p.contains("exceptions.attachment_name_matches_patterns: `[z-a]`")), "{found:#?}");
    assert!(found.iter().any(|p| p.contains("conditions: header_matches_message_header and header_matches_patterns")));
    assert!(found.iter().any(|p| p.contains("exceptions: header_contains_message_header and header_contains_words")));
}

#[test]
fn sender_ip_ranges_and_attachment_size_over_hold_as_exchange_defines_them() {
    // Spec 12 conditions `SenderIpRanges` and `AttachmentSizeOver` (the test
    // message comes from 203.0.113.9 with attachments of 4,000 and 250,000 bytes).
    let (recipients, headers, attachments) = (vec![("bob@contoso.com".to_string(), true)], vec![], vec![]);
    let cases = [
        ("sender_ip_ranges = [\"203.0.113.0/24\"]", true),
        ("sender_ip_ranges = [\"198.51.100.0/24\", \"203.0.113.9/32\"]", true),
        ("sender_ip_ranges = [\"198.51.100.0/24\", \"2001:db8::/32\"]", false),
        ("attachment_size_over = 250000", true),
        ("attachment_size_over = 250001", false),
        ("sender_ip_ranges = [\"203.0.113.0/24\"], attachment_size_over = 300000", false),
    ];
    for (conditions, expected) in cases {
        let set = rules(&format!(
            "[[transport_rules]]\nname = \"r\"\npriority = 0\nconditions = {{ {conditions} }}\nactions = {{ set_scl = 6 }}\n"
        ));
        let matched = !evaluate(&set, &input(&recipients, &headers, &attachments)).matched.is_empty();
        assert_eq!(matched, expected, "{conditions}");
    }
    // As an exception, a listed range vetoes the rule.
    let excepted = rules(
        "[[transport_rules]]\nname = \"r\"\npriority = 0\nexceptions = { sender_ip_ranges = [\"203.0.113.0/24\"] }\n\
         actions = { set_scl = 6 }\n",
    );
    assert!(evaluate(&excepted, &input(&recipients, &headers, &attachments)).matched.is_empty());
    // Unknown sender IP: the condition does not hold.
    let set = rules(
        "[[transport_rules]]\nname = \"r\"\npriority = 0\nconditions = { sender_ip_ranges = [\"0.0.0.0/0\"] }\n\
         actions = { set_scl = 6 }\n",
    );
    let unknown = RuleInput { sender_ip: None, ..input(&recipients, &headers, &attachments) };
    assert!(evaluate(&set, &unknown).matched.is_empty());
}
