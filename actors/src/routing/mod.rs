//! Routing: every recipient of a judged message becomes a destination.
//!
//! [`Router::route`] is a pure function of the configuration and one
//! `VerdictReached`: it returns the `Queued` events to append to
//! `mailflow.delivery` (one per destination, recipients grouped) and the
//! recipients that cannot be routed, with the reply their NDR reports. The
//! actor ([`actor`]) only decodes, calls it, appends, and commits.
//!
//! Order of decisions for one recipient (spec 2, 6, 8):
//! 1. a mail flow rule's `RouteMessageOutboundConnector` sends everything not
//!    for our own mailbox store through that connector (spec 6.2);
//! 2. an address of an accepted domain found in the directory goes where its
//!    kind says: a mailbox to the store (or on-premises first under centralized
//!    mail transport, spec 6.6), a mail user or contact to its outside address,
//!    an on-premises mailbox through the on-premises connector;
//! 3. an unknown address of an internal-relay domain goes on-premises (spec
//!    2.2); of an authoritative domain it fails with `5.1.10` (spec 2.7);
//! 4. anything else leaves the organisation: the most specific outbound
//!    connector (spec 6.1), else centralized mail transport, else MX.

pub mod actor;
mod connector;

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use mailflow_events::delivery::{Destination, DestinationKind, Queued, QueuedRecipient, RouteReason};
use mailflow_events::received::{ConnectorKind, DsnNotify, MessageReceived, SmtpReply};
use mailflow_events::verdicts::{PolicyAction, VerdictReached};

pub use connector::{OutboundConnector, SmartHost, select};

use crate::config::{Config, DomainType, InboundConnectorKind, RecipientKind};
use crate::policy::InboundPolicy;

/// Name of the mailbox store destination.
pub const MAILBOX_STORE: &str = "mailbox";

/// Folder junk is delivered into (spec 9.3 `MoveToJmf`).
pub const JUNK_FOLDER: &str = "Junk";

/// A directory entry as routing needs it.
#[derive(Debug, Clone)]
struct Entry {
    primary: String,
    kind: RecipientKind,
    external: Option<String>,
    forward_to: Option<String>,
}

/// Recipients that cannot be routed, with the reply their NDR reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unroutable {
    /// Where routing was headed, recorded on the `Failed` event.
    pub destination: Destination,
    /// The recipients.
    pub recipients: Vec<String>,
    /// Why, e.g. `550 5.1.10 RESOLVER.ADR.RecipientNotFound; …`.
    pub reply: SmtpReply,
}

/// What routing decided for one verdict.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Routed {
    /// One per destination (and folder), in first-recipient order.
    pub queued: Vec<Queued>,
    /// Recipients without a route.
    pub unroutable: Vec<Unroutable>,
}

/// The routing tables, built once from the configuration.
#[derive(Debug)]
pub struct Router {
    policy: std::sync::Arc<InboundPolicy>,
    directory: HashMap<String, Entry>,
    connectors: Vec<OutboundConnector>,
    remote_domains: Vec<crate::config::RemoteDomainConfig>,
    message_expiration: Duration,
}

/// Where one recipient goes.
enum Route {
    To(Destination, RouteReason),
    Fail(Destination, SmtpReply),
}

/// The destination of our own mailbox store.
fn mailbox_store() -> Destination {
    Destination { kind: DestinationKind::MailboxStore, name: MAILBOX_STORE.to_string(), next_hop: None }
}

fn domain_of(address: &str) -> &str {
    address.rsplit_once('@').map_or("", |(_, domain)| domain)
}

impl Router {
    /// Builds the tables from a validated configuration.
    pub fn new(config: &Config, policy: std::sync::Arc<InboundPolicy>) -> Self {
        let mut directory = HashMap::new();
        for recipient in &config.directory.recipients {
            let entry = Entry {
                primary: recipient.address.to_ascii_lowercase(),
                kind: recipient.kind,
                external: recipient.external_address.clone(),
                forward_to: recipient.forward_to.clone(),
            };
            for address in std::iter::once(&recipient.address).chain(&recipient.proxy_addresses) {
                directory.insert(address.to_ascii_lowercase(), entry.clone());
            }
        }
        Self {
            policy,
            directory,
            connectors: config.outbound_connectors.iter().filter(|c| c.enabled).map(OutboundConnector::from).collect(),
            remote_domains: config.remote_domains.clone(),
            message_expiration: config.transport.message_expiration,
        }
    }

    /// Whether automatic forwarding to `address` is allowed: inside the
    /// organisation always; outside, per the most specific remote domain
    /// (spec 14.1, 14.2 `AutoForwardEnabled`, default true).
    fn auto_forward_allowed(&self, address: &str) -> bool {
        self.remote_allows(address, |remote| remote.auto_forward_enabled)
    }

    /// Whether mail to `address` may go out under `setting` of its remote
    /// domain: always inside the organisation; outside, unless the most
    /// specific remote domain turns the setting off.
    fn remote_allows(&self, address: &str, setting: fn(&crate::config::RemoteDomainConfig) -> bool) -> bool {
        let domain = domain_of(address);
        if self.policy.accepted_domain(domain).is_some() {
            return true;
        }
        crate::config::RemoteDomainConfig::most_specific(&self.remote_domains, domain).is_none_or(setting)
    }

    /// Whether an automatic reply may go to `address`: always inside the
    /// organisation; outside, unless its remote domain disables them.
    fn auto_reply_allowed(&self, address: &str) -> bool {
        self.remote_allows(address, |remote| remote.auto_reply_enabled)
    }

    /// The enabled outbound connector named `name`.
    pub fn connector(&self, name: &str) -> Option<&OutboundConnector> {
        self.connectors.iter().find(|c| c.name.eq_ignore_ascii_case(name))
    }

    fn via(connector: &OutboundConnector) -> Destination {
        let kind = match connector.kind {
            InboundConnectorKind::OnPremises => DestinationKind::OnPremises,
            InboundConnectorKind::Partner => DestinationKind::Partner,
        };
        Destination { kind, name: connector.name.clone(), next_hop: None }
    }

    /// The centralized-mail-transport connector, unless the message came from
    /// on-premises itself (on-premises mail to the internet goes direct, spec 6.6).
    fn centralized(&self, received: &MessageReceived) -> Option<&OutboundConnector> {
        let from_on_premises = received.connector.as_ref().is_some_and(|c| c.kind == ConnectorKind::OnPremises);
        if from_on_premises {
            return None;
        }
        self.connectors.iter().find(|c| c.route_all_via_on_premises && c.kind == InboundConnectorKind::OnPremises)
    }

    /// The on-premises connector serving an accepted domain.
    fn on_premises(&self, domain: &str) -> Option<&OutboundConnector> {
        select(&self.connectors, domain, true, Some(InboundConnectorKind::OnPremises))
    }

    /// Route of a recipient outside the organisation.
    fn outside(&self, address: &str, received: &MessageReceived) -> Route {
        let domain = domain_of(address).to_ascii_lowercase();
        if let Some(connector) = select(&self.connectors, &domain, false, None) {
            return Route::To(Self::via(connector), RouteReason::OutboundConnector);
        }
        if let Some(connector) = self.centralized(received) {
            return Route::To(Self::via(connector), RouteReason::OutboundConnector);
        }
        Route::To(Destination { kind: DestinationKind::Internet, name: domain, next_hop: None }, RouteReason::Mx)
    }

    /// Route of one recipient and the address to deliver to.
    fn resolve(&self, address: &str, received: &MessageReceived) -> (String, Route) {
        let lower = address.to_ascii_lowercase();
        let domain = domain_of(&lower).to_string();
        let Some(accepted) = self.policy.accepted_domain(&domain) else {
            return (address.to_string(), self.outside(address, received));
        };
        match self.directory.get(&lower) {
            Some(entry) => match entry.kind {
                RecipientKind::Mailbox => {
                    let route = match self.centralized(received) {
                        Some(connector) => Route::To(Self::via(connector), RouteReason::OutboundConnector),
                        None => Route::To(mailbox_store(), RouteReason::AcceptedDomain),
                    };
                    (entry.primary.clone(), route)
                }
                RecipientKind::MailUser | RecipientKind::Contact => {
                    let target = entry.external.clone().unwrap_or_else(|| entry.primary.clone());
                    // The target is outside by definition; resolving it again could loop.
                    let route = self.outside(&target, received);
                    (target, route)
                }
                RecipientKind::OnPremises => (entry.primary.clone(), self.on_premises_route(&domain)),
            },
            None if accepted.domain_type == DomainType::InternalRelay => {
                let route = match self.on_premises(&domain) {
                    Some(connector) => Route::To(Self::via(connector), RouteReason::InternalRelay),
                    None => self.no_connector(&domain),
                };
                (address.to_string(), route)
            }
            None => (
                address.to_string(),
                Route::Fail(
                    mailbox_store(),
                    SmtpReply::new(
                        550,
                        "5.1.10",
                        format!("RESOLVER.ADR.RecipientNotFound; Recipient {address} not found by SMTP address lookup"),
                    ),
                ),
            ),
        }
    }

    fn on_premises_route(&self, domain: &str) -> Route {
        match self.on_premises(domain) {
            Some(connector) => Route::To(Self::via(connector), RouteReason::OutboundConnector),
            None => self.no_connector(domain),
        }
    }

    /// Spec 2.2: relaying on-premises needs an on-premises outbound connector.
    fn no_connector(&self, domain: &str) -> Route {
        Route::Fail(
            Destination { kind: DestinationKind::OnPremises, name: domain.to_string(), next_hop: None },
            SmtpReply::new(550, "5.4.1", "Relay Access Denied; no outbound connector to on-premises serves the domain"),
        )
    }

    /// Routes one verdict. Deleted and quarantined mail is not routed;
    /// rejected mail fails every recipient with the rule's reply.
    pub fn route(&self, verdict: &VerdictReached, received: &MessageReceived) -> Routed {
        let mut routed = Routed::default();
        let original: Vec<&mailflow_events::received::Recipient> = received
            .recipients
            .iter()
            .filter(|r| verdict.recipients.iter().any(|v| v.eq_ignore_ascii_case(&r.address)))
            .collect();
        match verdict.action {
            PolicyAction::Delete | PolicyAction::Quarantine => return routed,
            PolicyAction::Reject => {
                let reply = verdict
                    .reject_reply
                    .clone()
                    .unwrap_or_else(|| SmtpReply::new(550, "5.7.1", "Delivery not authorized, message refused"));
                routed.unroutable.push(Unroutable {
                    destination: mailbox_store(),
                    recipients: verdict.recipients.clone(),
                    reply,
                });
                return routed;
            }
            _ => {}
        }
        // (address, DSN parameters, reason override)
        let mut wanted: Vec<(String, QueuedRecipient, Option<RouteReason>)> = Vec::new();
        if verdict.redirect_to.is_empty() {
            for recipient in &original {
                let dsn = QueuedRecipient {
                    address: recipient.address.clone(),
                    notify: recipient.notify.clone(),
                    orcpt: recipient.orcpt.clone(),
                };
                wanted.push((recipient.address.clone(), dsn, None));
            }
        } else {
            for address in &verdict.redirect_to {
                let dsn = QueuedRecipient { address: address.clone(), notify: vec![], orcpt: None };
                wanted.push((address.clone(), dsn, Some(RouteReason::Redirect)));
            }
        }
        for address in &verdict.added_recipients {
            let dsn = QueuedRecipient { address: address.clone(), notify: vec![], orcpt: None };
            wanted.push((address.clone(), dsn, None));
        }
        // Mailbox forwarding: a copy to the forwarding address, unless the
        // remote domain blocks automatic forwards (dropped silently, no NDR: spec 14.3).
        let forwards: Vec<String> = wanted
            .iter()
            .filter_map(|(address, ..)| self.directory.get(&address.to_ascii_lowercase()))
            .filter(|entry| entry.kind == RecipientKind::Mailbox)
            .filter_map(|entry| entry.forward_to.clone())
            .filter(|target| self.auto_forward_allowed(target))
            .collect();
        for target in forwards {
            let dsn = QueuedRecipient { address: target.clone(), notify: vec![DsnNotify::Never], orcpt: None };
            wanted.push((target, dsn, Some(RouteReason::Redirect)));
        }
        // Automatic replies (RFC 3834 `Auto-Submitted: auto-replied`, as
        // out-of-office replies carry) to a remote domain that does not allow
        // them are dropped silently, with no NDR (spec 14.2 `AutoReplyEnabled`).
        if received.auto_submitted.as_deref() == Some("auto-replied") {
            wanted.retain(|(address, ..)| self.auto_reply_allowed(address));
        }
        let rule_connector = verdict.route_via_connector.as_deref().and_then(|name| self.connector(name));
        let junk = verdict.action == PolicyAction::MoveToJunk;
        let mut groups: Vec<(Destination, RouteReason, Option<String>, Vec<QueuedRecipient>)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (address, mut dsn, reason) in wanted {
            let (target, route) = self.resolve(&address, received);
            let route = match (route, rule_connector) {
                (Route::To(dest, _), Some(connector)) if dest.kind != DestinationKind::MailboxStore => {
                    Route::To(Self::via(connector), RouteReason::TransportRule)
                }
                (route, _) => route,
            };
            match route {
                Route::To(destination, route_reason) => {
                    if !seen.insert((destination.key(), target.to_ascii_lowercase())) {
                        continue; // one copy per address and destination
                    }
                    let folder =
                        (junk && destination.kind == DestinationKind::MailboxStore).then(|| JUNK_FOLDER.to_string());
                    if !target.eq_ignore_ascii_case(&dsn.address) && dsn.orcpt.is_none() {
                        dsn.orcpt = Some(format!("rfc822;{}", dsn.address));
                    }
                    dsn.address = target;
                    let reason = reason.unwrap_or(route_reason);
                    // One copy per destination (and folder): the delivery state keeps
                    // one entry per message and destination. The first recipient's
                    // reason names the copy.
                    match groups.iter_mut().find(|(d, _, f, _)| *d == destination && *f == folder) {
                        Some((_, _, _, recipients)) => recipients.push(dsn),
                        None => groups.push((destination, reason, folder, vec![dsn])),
                    }
                }
                Route::Fail(destination, reply) => {
                    match routed.unroutable.iter_mut().find(|u| u.destination == destination && u.reply == reply) {
                        Some(unroutable) => unroutable.recipients.push(address),
                        None => routed.unroutable.push(Unroutable { destination, recipients: vec![address], reply }),
                    }
                }
            }
        }
        let expires_at = expiry(received.received_at, self.message_expiration);
        for (destination, route, folder, recipients) in groups {
            // TLS to the store is the store's business; every other next hop
            // gets the message over TLS or not at all.
            let require_tls = verdict.require_tls && destination.kind != DestinationKind::MailboxStore;
            routed.queued.push(Queued {
                destination,
                route,
                recipients,
                mail_from: received.envelope.mail_from.clone(),
                dsn_return: received.envelope.dsn_return,
                dsn_envid: received.envelope.dsn_envid.clone(),
                body: received.envelope.body,
                smtputf8: received.envelope.smtputf8,
                require_tls,
                disclaimer: verdict.disclaimer.clone(),
                content: received.content.clone(),
                prepend_headers: verdict.headers_added.clone(),
                remove_headers: verdict.headers_removed.clone(),
                subject_prefix: verdict.subject_prefix.clone(),
                folder,
                received_at: received.received_at,
                expires_at,
            });
        }
        routed
    }
}

/// When a message received at `received_at` expires.
pub fn expiry(received_at: DateTime<Utc>, expiration: Duration) -> DateTime<Utc> {
    received_at + chrono::Duration::from_std(expiration).unwrap_or(chrono::Duration::days(1))
}

#[cfg(test)]
mod tests;
