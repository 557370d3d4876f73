//! The verdict actor: a member of the `mailflow-verdict` consumer group on
//! `mailflow.received`. For each `MessageReceived` it loads the content, runs
//! authentication and filtering, appends `VerdictReached` to
//! `mailflow.verdicts` (key: message id), and only then commits the offset:
//! a crash in between means the message is judged again (at-least-once;
//! consumers dedupe on the message id). Refusal events carry no message to judge.
//! Judging is a `verdict` span in the message's trace (`crate::telemetry`).

use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, AsyncContext as _, Context, WrapFuture as _};
use chrono::Utc;
use mail_auth::MessageAuthenticator;
use mail_parser::MimeHeaders as _;
use mailflow_events::log::{EventLog, GroupMember, Record};
use mailflow_events::received::{Directionality, MessageReceived, ReceivedEvent};
use mailflow_events::verdicts::{PolicyAction, VerdictEvent, VerdictReached};
use mailflow_events::{Envelope, topic};
use tracing::Instrument as _;

use super::auth::{Arrival, authenticate};
use super::headers;
use super::score::{Signals, has_gtube, score};
use super::{AntiSpamConfig, enhanced_filtering};
use crate::telemetry::{self, Stage};

/// Consumer group of the verdict role.
pub const GROUP: &str = "mailflow-verdict";

/// What the verdict actor works with.
#[derive(Clone)]
pub struct VerdictActor {
    /// The event log.
    pub log: Arc<dyn EventLog>,
    /// SPF, DKIM, DMARC, ARC, iprev.
    pub authenticator: Arc<MessageAuthenticator>,
    /// Connection filter and policy.
    pub anti_spam: Arc<AntiSpamConfig>,
    /// Inbound connectors, for Enhanced Filtering.
    pub connectors: Arc<Vec<crate::config::InboundConnectorConfig>>,
    /// Mail flow rules.
    pub rules: Arc<Vec<super::rules::TransportRuleConfig>>,
    /// Accepted domains and directory, for the rules' scopes.
    pub policy: Arc<crate::policy::InboundPolicy>,
    /// Our host name: the authserv-id of `Authentication-Results`.
    pub hostname: String,
    /// Producer name in events.
    pub producer: String,
    /// Ends the loop after the record in hand (see `crate::drain`).
    pub drain: crate::drain::Drain,
}

impl std::fmt::Debug for VerdictActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerdictActor").field("producer", &self.producer).finish_non_exhaustive()
    }
}

impl Actor for VerdictActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let worker = self.clone();
        ctx.spawn(worker.run().into_actor(self));
    }
}

impl VerdictActor {
    /// The verdict role of `config`: its anti-spam policy, inbound connectors
    /// and mail flow rules, judging with `authenticator` and `policy`.
    pub fn new(
        config: &crate::config::Config,
        log: Arc<dyn EventLog>,
        authenticator: Arc<MessageAuthenticator>,
        policy: Arc<crate::policy::InboundPolicy>,
        producer: &str,
        drain: crate::drain::Drain,
    ) -> Self {
        Self {
            log,
            authenticator,
            anti_spam: Arc::new(config.anti_spam.clone()),
            connectors: Arc::new(config.inbound_connectors.clone()),
            rules: Arc::new(config.transport_rules.clone()),
            policy,
            hostname: config.server.hostname.clone(),
            producer: producer.to_string(),
            drain,
        }
    }

    /// Consumes `mailflow.received` until the log closes.
    async fn run(self) {
        let _working = self.drain.working();
        let mut member = crate::event_log::join_until_member(self.log.as_ref(), GROUP, &[topic::RECEIVED]).await;
        while !self.drain.is_draining() {
            match member.poll(Duration::from_secs(1)).await {
                Ok(Some(record)) => self.handle(member.as_mut(), record).await,
                Ok(None) => crate::metrics::metrics().assigned(GROUP, &member.assignment()),
                Err(err) => {
                    tracing::warn!(error = %err, "verdict role: poll failed");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        crate::event_log::leave(member, "verdict").await;
    }

    async fn handle(&self, member: &mut dyn GroupMember, record: Record) {
        match Envelope::<ReceivedEvent>::from_json(&record.value) {
            Ok(envelope) => {
                if let ReceivedEvent::MessageReceived(received) = envelope.event {
                    let stage =
                        Stage::start(telemetry::verdict_span(&envelope.message_id), envelope.trace_context.as_ref());
                    let verdict = self.judge(&envelope.message_id, &received).instrument(stage.span().clone()).await;
                    if let VerdictEvent::VerdictReached(reached) = &verdict {
                        tracing::info!(
                            message_id = %envelope.message_id,
                            scl = reached.scl,
                            action = %crate::metrics::label(&reached.action),
                            "judged"
                        );
                        let span = stage.span();
                        span.record("mailflow.scl", reached.scl);
                        span.record("mailflow.verdict", crate::metrics::label(&reached.verdict).as_str());
                        span.record("mailflow.action", crate::metrics::label(&reached.action).as_str());
                        let labels = crate::metrics::VerdictLabels {
                            scl: reached.scl.to_string(),
                            verdict: crate::metrics::label(&reached.verdict),
                            action: crate::metrics::label(&reached.action),
                        };
                        crate::metrics::metrics().verdicts.get_or_create(&labels).inc();
                    }
                    let event = Envelope::new(&envelope.message_id, &self.producer, Utc::now(), verdict)
                        .with_trace_context(stage.context());
                    // Retry until the verdict is durable: committing first would lose it.
                    let key = envelope.message_id.as_bytes();
                    crate::event_log::append_until_durable(self.log.as_ref(), topic::VERDICTS, key, &event.to_json())
                        .await;
                    // The quarantine store is the log: the held copy is recorded with
                    // everything a release needs (`mailflow queue release`).
                    if let Some(held) = quarantine_record(&event.event, &received, Utc::now()) {
                        let held = Envelope::new(&envelope.message_id, &self.producer, Utc::now(), held)
                            .with_trace_context(stage.context());
                        crate::event_log::append_until_durable(
                            self.log.as_ref(),
                            topic::VERDICTS,
                            key,
                            &held.to_json(),
                        )
                        .await;
                    }
                }
            }
            Err(err) => {
                tracing::error!(error = %err, offset = record.position.offset, "undecodable event on mailflow.received; skipped")
            }
        }
        let (partition, next) = (record.position.partition, record.position.offset + 1);
        match member.commit(topic::RECEIVED, partition, next).await {
            Ok(()) => crate::metrics::metrics().consumed(GROUP, topic::RECEIVED, partition, next),
            Err(err) => tracing::warn!(error = %err, "commit failed; the event may be judged again"),
        }
    }

    /// Mail flow rules over the message, with the SCL filtering gave it.
    fn run_rules(
        &self,
        received: &MessageReceived,
        content: &[u8],
        scl: i8,
        sender_ip: std::net::IpAddr,
    ) -> super::rules::RuleOutcome {
        if self.rules.is_empty() {
            return super::rules::RuleOutcome::default();
        }
        let parsed = mail_parser::MessageParser::default().parse(content);
        let sender = received
            .header_from
            .clone()
            .filter(|from| !from.is_empty())
            .unwrap_or_else(|| received.envelope.mail_from.clone());
        // Spec 12.3: inside the organisation = over an authenticated connection
        // (AUTH or an on-premises connector) from one of our domains.
        let authenticated = received.session.authenticated_as.is_some()
            || received
                .connector
                .as_ref()
                .is_some_and(|c| c.kind == mailflow_events::received::ConnectorKind::OnPremises);
        let sender_domain = sender.rsplit_once('@').map_or("", |(_, d)| d);
        let recipients: Vec<(String, bool)> =
            received.recipients.iter().map(|r| (r.address.clone(), r.accepted_domain.is_some())).collect();
        let headers: Vec<(String, String)> = parsed
            .as_ref()
            .map(|m| {
                m.headers()
                    .iter()
                    .map(|h| {
                        let raw = &content[h.offset_start as usize..(h.offset_end as usize).min(content.len())];
                        (h.name().to_string(), String::from_utf8_lossy(raw).trim().to_string())
                    })
                    .collect()
            })
            .unwrap_or_default();
        let attachments: Vec<String> = parsed
            .as_ref()
            .map(|m| m.attachments().filter_map(|a| a.attachment_name().map(str::to_string)).collect())
            .unwrap_or_default();
        let attachment_sizes: Vec<u64> =
            parsed.as_ref().map(|m| m.attachments().map(|a| a.contents().len() as u64).collect()).unwrap_or_default();
        let body = parsed.as_ref().and_then(|m| m.body_text(0)).map(|b| b.into_owned()).unwrap_or_default();
        let input = super::rules::RuleInput {
            sender: &sender,
            sender_in_organization: authenticated && self.policy.within_accepted_domain(sender_domain),
            recipients: &recipients,
            subject: received.subject.as_deref().unwrap_or_default(),
            body: &body,
            headers: &headers,
            scl,
            size: received.content.size,
            attachments: &attachments,
            attachment_sizes: &attachment_sizes,
            sender_ip: Some(sender_ip),
        };
        super::rules::evaluate(&self.rules, &input)
    }

    /// The verdict on one accepted message.
    pub async fn judge(&self, message_id: &str, received: &MessageReceived) -> VerdictEvent {
        self.judge_with(message_id, received, None).await
    }

    /// The verdict on one accepted message, with the authentication results
    /// `recorded` earlier instead of new lookups when given (what-if replay:
    /// the DNS of the day the message came, see `crate::what_if`).
    pub async fn judge_with(
        &self,
        message_id: &str,
        received: &MessageReceived,
        recorded: Option<&mailflow_events::verdicts::Authentication>,
    ) -> VerdictEvent {
        if received.session.listener == crate::ndr::SYSTEM_LISTENER {
            return system_verdict(received);
        }
        // A broker outage is waited out: a verdict on the envelope alone would
        // skip every content check for good. Only content that cannot ever be
        // read (missing, altered) is judged without it.
        let loaded = crate::event_log::load_content_until_readable(self.log.as_ref(), message_id, &received.content);
        let content = match loaded.await {
            Ok(content) => content,
            Err(err) => {
                tracing::error!(error = %err, message_id, "content unreadable; judging the envelope alone");
                Vec::new()
            }
        };
        let connecting_ip = received.session.client_ip.parse().unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
        let recipients: Vec<String> = received.recipients.iter().map(|r| r.address.clone()).collect();
        // Enhanced Filtering: judge the sender before the connector's hops.
        let original = received
            .connector
            .as_ref()
            .and_then(|matched| self.connectors.iter().find(|c| c.name == matched.name))
            .and_then(|connector| {
                enhanced_filtering::original_sender(connector, &content, &recipients)
                    .map(|sender| (enhanced_filtering::headers(&sender, connector), sender))
            });
        let (ip, helo) = match &original {
            Some((_, sender)) => (sender.ip, sender.name.clone().unwrap_or_default()),
            None => (connecting_ip, received.session.helo.clone().unwrap_or_default()),
        };
        // The session may already have run every check before its reply
        // (anonymous mail only, so never with Enhanced Filtering).
        let mut authentication = match (recorded, &received.inline_checks) {
            (Some(recorded), _) => recorded.clone(),
            (None, Some(checks)) if checks.dmarc.is_some() && original.is_none() => checks.clone(),
            _ => {
                authenticate(
                    &self.authenticator,
                    Arrival {
                        ip,
                        helo: &helo,
                        hostname: &self.hostname,
                        mail_from: &received.envelope.mail_from,
                        trusted_arc_sealers: &self.anti_spam.arc_trusted_sealers,
                    },
                    &content,
                )
                .await
            }
        };
        let senders: Vec<String> = [Some(received.envelope.mail_from.clone()), received.header_from.clone()]
            .into_iter()
            .flatten()
            .filter(|s| !s.is_empty())
            .map(|s| s.to_ascii_lowercase())
            .collect();
        let on_list = |addresses: &[String], domains: &[String]| {
            senders.iter().any(|sender| {
                let domain = sender.rsplit_once('@').map_or("", |(_, d)| d);
                addresses.iter().any(|a| a.eq_ignore_ascii_case(sender))
                    || domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
            })
        };
        let anti_spam = &self.anti_spam;
        let dnsbl = super::dnsbl::listed_in(&self.authenticator.0, ip, &anti_spam.dnsbl_zones).await;
        let message = super::signals::Message {
            message_id,
            received,
            content: &content,
            ip,
            helo: &helo,
            authentication: &authentication,
        };
        let ours = |domain: &str| self.policy.within_accepted_domain(domain);
        let found = super::signals::gather(anti_spam, &self.authenticator.0, &ours, message).await;
        if let Some(compauth) = found.spoof_compauth.clone() {
            authentication.compauth = Some(compauth);
        }
        let score = score(&Signals {
            ip_allowed: anti_spam.ip_allow_list.iter().any(|net| net.contains(ip)),
            ip_blocked: anti_spam.ip_block_list.iter().any(|net| net.contains(ip)),
            sender_allowed: on_list(&anti_spam.allowed_senders, &anti_spam.allowed_sender_domains),
            sender_blocked: on_list(&anti_spam.blocked_senders, &anti_spam.blocked_sender_domains),
            dnsbl_listed: dnsbl.is_some(),
            gtube: has_gtube(&content),
            phish: found.phish,
            engine: found.engine(),
            bcl: found.bcl,
            bulk_threshold: anti_spam.bulk_threshold,
            mark_bulk_as_spam: anti_spam.mark_as_spam_bulk_mail,
            authentication: &authentication,
        });
        let mut outcome = self.run_rules(received, &content, score.scl, ip);
        let disclaimer = outcome.disclaimer.take().and_then(|request| disclaimer(request, &content, &mut outcome));
        let score = super::score::with_rule_scl(score, outcome.set_scl);
        let applied = super::action::apply(anti_spam, score.verdict);
        let direction = match received.directionality {
            Directionality::Inbound => "INB",
            Directionality::Outbound => "OUT",
            Directionality::Originating => "INT",
        };
        let ptr = received.session.client_hostname.clone().unwrap_or_default();
        let mut headers_added = vec![
            headers::authentication_results(&self.hostname, &authentication),
            headers::antispam_report(&score, &ip.to_string(), &helo, &ptr, direction),
            headers::organization_scl(&score),
            headers::microsoft_antispam(&score),
        ];
        headers_added.extend(applied.header);
        headers_added.extend(outcome.set_headers);
        if let Some((stamped, _)) = original {
            headers_added.extend(stamped);
        }
        VerdictEvent::VerdictReached(VerdictReached {
            recipients,
            authentication,
            original_client_ip: ip.to_string(),
            scl: score.scl,
            bcl: score.bcl,
            verdict: score.verdict,
            sfv: score.sfv.to_string(),
            ipv: Some(score.ipv.to_string()),
            category: Some(score.category.to_string()),
            rspamd: found.rspamd,
            action: if outcome.reject.is_some() {
                PolicyAction::Reject
            } else if outcome.delete {
                PolicyAction::Delete
            } else if outcome.quarantine {
                PolicyAction::Quarantine
            } else if !outcome.redirect_to.is_empty() {
                PolicyAction::Redirect
            } else {
                applied.action.unwrap_or(score.action)
            },
            headers_added,
            headers_removed: outcome.remove_headers,
            subject_prefix: match (outcome.subject_prefix, applied.subject_prefix) {
                (Some(rule), Some(policy)) => Some(format!("{policy}{rule}")),
                (rule, policy) => rule.or(policy),
            },
            redirect_to: if outcome.redirect_to.is_empty() { applied.redirect_to } else { outcome.redirect_to },
            added_recipients: outcome.added_recipients,
            route_via_connector: outcome.route_via_connector,
            require_tls: outcome.require_tls,
            disclaimer,
            reject_reply: outcome.reject,
            rules_matched: outcome.matched,
            received: Some(Box::new(received.clone())),
        })
    }
}

/// What a rule's disclaimer comes to for this content: inserted, or its
/// fallback (spec 12.4): wrapped, dropped, or the message refused (`550 5.7.1`
/// in `outcome.reject`, unless a rule already refuses it).
fn disclaimer(
    request: super::rules::DisclaimerRequest,
    content: &[u8],
    outcome: &mut super::rules::RuleOutcome,
) -> Option<mailflow_events::verdicts::Disclaimer> {
    use super::rules::DisclaimerFallback;
    let inserted = crate::disclaimer::can_insert(content, &request.text, request.location);
    if !inserted {
        match request.fallback {
            DisclaimerFallback::Wrap => {}
            DisclaimerFallback::Ignore => return None,
            DisclaimerFallback::Reject => {
                outcome.reject.get_or_insert_with(|| {
                    mailflow_events::received::SmtpReply::new(
                        550,
                        "5.7.1",
                        "Delivery not authorized, message refused: a required disclaimer could not be added",
                    )
                });
                return None;
            }
        }
    }
    let wrap = !inserted;
    Some(mailflow_events::verdicts::Disclaimer { text: request.text, location: request.location, wrap })
}

/// Messages the router generates itself (NDRs) skip filtering, as EOP's
/// intra-organisation mail does (`SFV:SKI`, SCL -1).
fn system_verdict(received: &MessageReceived) -> VerdictEvent {
    VerdictEvent::VerdictReached(VerdictReached {
        recipients: received.recipients.iter().map(|r| r.address.clone()).collect(),
        authentication: Default::default(),
        original_client_ip: received.session.client_ip.clone(),
        scl: -1,
        bcl: 0,
        verdict: mailflow_events::verdicts::SpamVerdict::NotSpam,
        sfv: "SKI".to_string(),
        ipv: None,
        category: Some("NONE".to_string()),
        rspamd: None,
        action: PolicyAction::Deliver,
        headers_added: vec![mailflow_events::verdicts::Header {
            name: "X-MS-Exchange-Organization-SCL".to_string(),
            value: "-1".to_string(),
        }],
        headers_removed: Vec::new(),
        subject_prefix: None,
        redirect_to: vec![],
        added_recipients: vec![],
        route_via_connector: None,
        require_tls: false,
        disclaimer: None,
        reject_reply: None,
        rules_matched: vec![],
        received: Some(Box::new(received.clone())),
    })
}

/// How long a quarantined message is kept (EOP's default retention, 15 days).
pub const QUARANTINE_RETENTION: chrono::Duration = chrono::Duration::days(15);

/// The quarantine record that follows a verdict quarantining the message.
fn quarantine_record(
    verdict: &VerdictEvent,
    received: &MessageReceived,
    now: chrono::DateTime<Utc>,
) -> Option<VerdictEvent> {
    let VerdictEvent::VerdictReached(verdict) = verdict else { return None };
    if verdict.action != PolicyAction::Quarantine {
        return None;
    }
    Some(VerdictEvent::MessageQuarantined(mailflow_events::verdicts::MessageQuarantined {
        recipients: verdict.recipients.clone(),
        verdict: verdict.verdict,
        rule: verdict
            .rules_matched
            .iter()
            .find(|m| m.actions.iter().any(|a| a == "Quarantine"))
            .map(|m| m.rule.clone()),
        content: received.content.clone(),
        expires_at: now + QUARANTINE_RETENTION,
        held: Some(Box::new(verdict.clone())),
    }))
}
