//! What-if replay (`mailflow replay --what-if PROPOSED.toml`): the verdict
//! and routing of every message received in a past window, run again under
//! another configuration, next to what the log says happened, with a report
//! per message of what would have changed (verdict, action, rules, where each
//! recipient's copy goes).
//!
//! No side effects: the log is opened read-only and nothing is appended, no
//! message is sent and no NDR is made. What is taken from the log and what is
//! evaluated again:
//!
//! - SPF, DKIM, DMARC, ARC and iprev results are the ones recorded in the
//!   message's `VerdictReached`: they describe the DNS of that day, and a
//!   configuration change does not alter them;
//! - everything the configuration decides is evaluated again under the
//!   proposed file: connection filter lists, allowed and blocked senders,
//!   GTUBE, phishing checks, bulk thresholds, mail flow rules, policy
//!   actions, accepted domains, the directory, connectors, remote domains. The
//!   DNS blocklists and the external engine the proposed file names are
//!   queried now (read-only lookups);
//! - "recorded" routing is the `Queued` and unroutable `Failed` events of the
//!   message in `mailflow.delivery`, as the routing role appended them.
//!
//! Messages the router made itself (NDRs) are not judged again: under another
//! configuration they might not exist. They are counted apart.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use mailflow_events::delivery::DeliveryEvent;
use mailflow_events::log::EventLog;
use mailflow_events::verdicts::{PolicyAction, VerdictEvent, VerdictReached};
use mailflow_events::{Envelope, topic};
use serde::Serialize;

use crate::config::Config;
use crate::routing::Routed;

/// The received-at window of the messages replayed (both ends optional, `since` inclusive).
#[derive(Debug, Clone, Copy, Default)]
pub struct Window {
    /// First instant included.
    pub since: Option<DateTime<Utc>>,
    /// First instant excluded.
    pub until: Option<DateTime<Utc>>,
}

impl Window {
    fn contains(&self, at: DateTime<Utc>) -> bool {
        self.since.is_none_or(|since| at >= since) && self.until.is_none_or(|until| at < until)
    }
}

/// One side of the comparison: what the filtering decided and where each
/// recipient's copy went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Spam confidence level.
    pub scl: i8,
    /// Verdict category (`not_spam`, `spam`, `high_confidence_phish`, …).
    pub verdict: String,
    /// Policy action (`deliver`, `move_to_junk`, `quarantine`, …).
    pub action: String,
    /// Mail flow rules that matched.
    pub rules: Vec<String>,
    /// Recipient (lower case) → where its copy goes: a destination key such as
    /// `mailbox_store:mailbox` (with `/Junk` for a folder), `quarantined`,
    /// `deleted`, or `failed 550 5.1.10` for an unroutable recipient.
    pub routes: BTreeMap<String, String>,
}

/// The two decisions for one message.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// mailflow message id.
    pub message_id: String,
    /// When the router accepted it.
    pub received_at: DateTime<Utc>,
    /// Envelope sender.
    pub mail_from: String,
    /// Subject, if any.
    pub subject: Option<String>,
    /// What happened, from the log.
    pub recorded: Decision,
    /// What the proposed configuration decides.
    pub proposed: Decision,
    /// What differs: `scl`, `verdict`, `action`, `rules`, `routes`.
    pub changed: Vec<&'static str>,
}

/// Totals of one what-if run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Messages in the window that were judged again.
    pub messages: u64,
    /// Of those, messages with any difference.
    pub changed: u64,
    /// Messages whose verdict category or SCL differs.
    pub verdict_changed: u64,
    /// Messages whose action differs.
    pub action_changed: u64,
    /// Messages where some recipient's copy would go elsewhere.
    pub routes_changed: u64,
    /// NDRs and other messages of the router's own, not judged again.
    pub system_messages: u64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} messages judged again: {} would change ({} verdict, {} action, {} routes); {} of the router's own skipped",
            self.messages,
            self.changed,
            self.verdict_changed,
            self.action_changed,
            self.routes_changed,
            self.system_messages
        )
    }
}

/// Where each recipient's copy goes, for a verdict and what routing made of it.
fn routes(verdict: &VerdictReached, routed: &Routed) -> BTreeMap<String, String> {
    let mut routes = BTreeMap::new();
    let held = match verdict.action {
        PolicyAction::Quarantine => Some("quarantined"),
        PolicyAction::Delete => Some("deleted"),
        _ => None,
    };
    if let Some(held) = held {
        for recipient in &verdict.recipients {
            routes.insert(recipient.to_ascii_lowercase(), held.to_string());
        }
        return routes;
    }
    for queued in &routed.queued {
        let mut place = queued.destination.key();
        if let Some(folder) = &queued.folder {
            place = format!("{place}/{folder}");
        }
        for recipient in &queued.recipients {
            routes.insert(recipient.address.to_ascii_lowercase(), place.clone());
        }
    }
    for unroutable in &routed.unroutable {
        let reply = &unroutable.reply;
        let place =
            format!("failed {} {}", reply.code, reply.enhanced.as_deref().unwrap_or_default()).trim().to_string();
        for recipient in &unroutable.recipients {
            routes.insert(recipient.to_ascii_lowercase(), place.clone());
        }
    }
    routes
}

fn decision(verdict: &VerdictReached, routed: &Routed) -> Decision {
    Decision {
        scl: verdict.scl,
        verdict: crate::metrics::label(&verdict.verdict),
        action: crate::metrics::label(&verdict.action),
        rules: verdict.rules_matched.iter().map(|m| m.rule.clone()).collect(),
        routes: routes(verdict, routed),
    }
}

fn differences(recorded: &Decision, proposed: &Decision) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if recorded.scl != proposed.scl {
        changed.push("scl");
    }
    if recorded.verdict != proposed.verdict {
        changed.push("verdict");
    }
    if recorded.action != proposed.action {
        changed.push("action");
    }
    if recorded.rules != proposed.rules {
        changed.push("rules");
    }
    if recorded.routes != proposed.routes {
        changed.push("routes");
    }
    changed
}

/// Every record of `topic`, all partitions, in log order per partition.
async fn each_record(
    log: &dyn EventLog,
    topic: &str,
    mut visit: impl FnMut(&mailflow_events::log::Record),
) -> anyhow::Result<()> {
    let partitions = log.partitions(topic).with_context(|| format!("no topic {topic}"))?;
    for partition in 0..partitions {
        let mut offset = 0;
        loop {
            let records = log.read(topic, partition, offset, 4096).await?;
            let Some(last) = records.last() else { break };
            offset = last.position.offset + 1;
            records.iter().for_each(&mut visit);
        }
    }
    Ok(())
}

/// Replays the messages of `window` from the log of `current` under
/// `proposed`; `report` is given each message's comparison in receipt order.
pub async fn run(
    current: &Config,
    proposed: &Config,
    window: Window,
    report: &mut dyn FnMut(&Comparison) -> anyhow::Result<()>,
) -> anyhow::Result<Summary> {
    let log = crate::event_log::open_read_only(&current.event_log, "mailflow-what-if")
        .await
        .context("opening the event log")?;
    // The first verdict of each message (a verdict role that crashed before
    // its commit may have judged a message twice).
    let mut verdicts: Vec<(String, VerdictReached)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut undecodable = 0u64;
    each_record(log.as_ref(), topic::VERDICTS, |record| match Envelope::<VerdictEvent>::from_json(&record.value) {
        Ok(envelope) => {
            if let VerdictEvent::VerdictReached(verdict) = envelope.event
                && verdict.received.as_ref().is_some_and(|r| window.contains(r.received_at))
                && seen.insert(envelope.message_id.clone())
            {
                verdicts.push((envelope.message_id, verdict));
            }
        }
        Err(_) => undecodable += 1,
    })
    .await?;
    if undecodable > 0 {
        tracing::warn!(undecodable, "records of mailflow.verdicts that do not decode were skipped");
    }
    // What routing appended for those messages: its `Queued` events and the
    // `Failed` events of recipients it could not route (attempt 0).
    let mut recorded_routes: HashMap<String, Routed> = HashMap::new();
    each_record(log.as_ref(), topic::DELIVERY, |record| {
        let Ok(envelope) = Envelope::<DeliveryEvent>::from_json(&record.value) else { return };
        if !seen.contains(&envelope.message_id) {
            return;
        }
        let entry = recorded_routes.entry(envelope.message_id.clone()).or_default();
        match envelope.event {
            DeliveryEvent::Queued(queued) => entry.queued.push(queued),
            DeliveryEvent::Failed(failed) if failed.attempt == 0 => entry.unroutable.push(crate::routing::Unroutable {
                destination: failed.destination,
                recipients: failed.recipients,
                reply: failed.reply,
            }),
            _ => {}
        }
    })
    .await?;
    verdicts.sort_by_key(|(_, v)| v.received.as_ref().map(|r| r.received_at));

    // The verdict and routing roles of the proposed configuration: content
    // read from the log (read-only), nothing appended.
    let resolver =
        crate::dns::resolver(&proposed.dns).context("building the DNS resolver of the proposed configuration")?;
    let policy = Arc::new(crate::policy::InboundPolicy::new(proposed));
    let verdict_role = crate::verdict::actor::VerdictActor::new(
        proposed,
        Arc::clone(&log),
        Arc::new(mail_auth::MessageAuthenticator(resolver)),
        Arc::clone(&policy),
        "mailflow/what-if",
        crate::drain::Drain::new().0,
    );
    let router = crate::routing::Router::new(proposed, policy);
    let mut summary = Summary::default();
    for (message_id, old) in verdicts {
        let Some(received) = old.received.as_deref() else { continue };
        if received.session.listener == crate::ndr::SYSTEM_LISTENER {
            summary.system_messages += 1;
            continue;
        }
        let judged = verdict_role.judge_with(&message_id, received, Some(&old.authentication)).await;
        let VerdictEvent::VerdictReached(new) = judged else { continue };
        let routed = router.route(&new, received);
        let recorded = decision(&old, &recorded_routes.remove(&message_id).unwrap_or_default());
        let proposed = decision(&new, &routed);
        let changed = differences(&recorded, &proposed);
        summary.messages += 1;
        if !changed.is_empty() {
            summary.changed += 1;
        }
        if changed.iter().any(|c| matches!(*c, "scl" | "verdict")) {
            summary.verdict_changed += 1;
        }
        if changed.contains(&"action") {
            summary.action_changed += 1;
        }
        if changed.contains(&"routes") {
            summary.routes_changed += 1;
        }
        report(&Comparison {
            message_id,
            received_at: received.received_at,
            mail_from: received.envelope.mail_from.clone(),
            subject: received.subject.clone(),
            recorded,
            proposed,
            changed,
        })?;
    }
    Ok(summary)
}

/// One line per changed message for a terminal: what differs, old → new.
pub fn describe(comparison: &Comparison) -> String {
    let Comparison { message_id, recorded, proposed, changed, .. } = comparison;
    let mut parts = Vec::new();
    for what in changed {
        match *what {
            "scl" => parts.push(format!("scl {} -> {}", recorded.scl, proposed.scl)),
            "verdict" => parts.push(format!("verdict {} -> {}", recorded.verdict, proposed.verdict)),
            "action" => parts.push(format!("action {} -> {}", recorded.action, proposed.action)),
            "rules" => parts.push(format!("rules {:?} -> {:?}", recorded.rules, proposed.rules)),
            _ => {
                let recipients: std::collections::BTreeSet<&String> =
                    recorded.routes.keys().chain(proposed.routes.keys()).collect();
                for recipient in recipients {
                    let (old, new) = (recorded.routes.get(recipient), proposed.routes.get(recipient));
                    if old != new {
                        let show = |place: Option<&String>| place.map_or("-".to_string(), String::clone);
                        parts.push(format!("{recipient}: {} -> {}", show(old), show(new)));
                    }
                }
            }
        }
    }
    format!("{message_id} {}", parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decided(action: &str, routes: &[(&str, &str)]) -> Decision {
        Decision {
            scl: 1,
            verdict: "not_spam".into(),
            action: action.into(),
            rules: vec![],
            routes: routes.iter().map(|(r, p)| (r.to_string(), p.to_string())).collect(),
        }
    }

    #[test]
    fn a_recipient_sent_elsewhere_is_a_route_change_and_only_that() {
        let old = decided("deliver", &[("a@x.test", "connector:onprem"), ("b@x.test", "mailbox_store:mailbox")]);
        let new = decided("deliver", &[("a@x.test", "connector:partner"), ("b@x.test", "mailbox_store:mailbox")]);
        assert_eq!(differences(&old, &new), vec!["routes"]);
        let line = describe(&Comparison {
            message_id: "m1".into(),
            received_at: Utc::now(),
            mail_from: "s@y.test".into(),
            subject: None,
            recorded: old,
            proposed: new,
            changed: vec!["routes"],
        });
        assert_eq!(line, "m1 a@x.test: connector:onprem -> connector:partner");
    }

    #[test]
    fn the_same_decision_has_no_differences() {
        let same = decided("move_to_junk", &[("a@x.test", "mailbox_store:mailbox/Junk")]);
        assert!(differences(&same, &same.clone()).is_empty());
    }

    #[test]
    fn the_window_includes_its_start_and_excludes_its_end() {
        let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let window = Window { since: Some(t("2026-11-23T10:00:00Z")), until: Some(t("2026-11-23T11:00:00Z")) };
        assert!(window.contains(t("2026-11-23T10:00:00Z")));
        assert!(!window.contains(t("2026-11-23T11:00:00Z")));
        assert!(!window.contains(t("2026-11-23T09:59:59Z")));
        assert!(Window::default().contains(t("2000-01-01T00:00:00Z")));
    }
}
