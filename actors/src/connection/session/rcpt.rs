//! RCPT TO: the recipient checks of the front door (DBEB, relay, connectors,
//! anonymous IPv6) and the recipient limit.

use mailflow_events::received::{DsnNotify, Recipient, RejectReason};
use smtp_proto::RcptTo;

use super::mail::has_control_characters;
use super::{Session, Step};
use crate::connection::reply::Reply;
use crate::policy::RecipientDecision;

impl Session {
    pub(super) fn rcpt(&mut self, to: RcptTo<String>) -> Vec<Step> {
        let Some(transaction) = &self.transaction else {
            return self.error(Reply::BadSequence("need MAIL before RCPT"));
        };
        if to.address.is_empty() || has_control_characters(&to.address) {
            return self.error(Reply::BadRecipient);
        }
        if has_control_characters(to.orcpt.as_deref().unwrap_or_default()) {
            return self.error(Reply::SyntaxError("control characters in ORCPT".into()));
        }
        if transaction.recipients.len() >= self.config.max_recipients {
            let reply = Reply::TooManyRecipients;
            return vec![
                self.record_recipient(&to.address, &reply, RejectReason::TooManyRecipients),
                Step::Reply(reply),
            ];
        }
        let client = self.client_context(&transaction.sender_domain);
        match self.policy.check_recipient(&client, &to.address) {
            RecipientDecision::Accept { accepted_domain } => {
                let recipient =
                    Recipient { address: to.address, notify: notify(to.flags), orcpt: to.orcpt, accepted_domain };
                if let Some(transaction) = &mut self.transaction {
                    transaction.recipients.push(recipient);
                }
                vec![Step::Reply(Reply::RecipientOk)]
            }
            RecipientDecision::Reject(reply, reason) => {
                let record = self.record_recipient(&to.address, &reply, reason);
                // Permanent refusals count as errors: they bound directory harvesting.
                let mut steps = if reply.code() >= 500 { self.error(reply) } else { vec![Step::Reply(reply)] };
                steps.insert(0, record);
                steps
            }
        }
    }
}

fn notify(flags: u64) -> Vec<DsnNotify> {
    let mut notify = Vec::new();
    if flags & smtp_proto::RCPT_NOTIFY_NEVER != 0 {
        notify.push(DsnNotify::Never);
    }
    if flags & smtp_proto::RCPT_NOTIFY_SUCCESS != 0 {
        notify.push(DsnNotify::Success);
    }
    if flags & smtp_proto::RCPT_NOTIFY_FAILURE != 0 {
        notify.push(DsnNotify::Failure);
    }
    if flags & smtp_proto::RCPT_NOTIFY_DELAY != 0 {
        notify.push(DsnNotify::Delay);
    }
    notify
}
