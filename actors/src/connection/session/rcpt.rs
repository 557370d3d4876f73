//! RCPT TO: the recipient checks of the front door (DBEB, relay, connectors,
//! anonymous IPv6) and the recipient limit.

use mailflow_events::received::{DsnNotify, Recipient, RejectReason};
use smtp_proto::RcptTo;

use super::address::{AddressProblem, mailbox};
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
        let address = match mailbox(&to.address, transaction.envelope.smtputf8) {
            Ok(address) => address,
            Err(AddressProblem::Syntax) => return self.error(Reply::BadRecipient),
            Err(AddressProblem::NeedsSmtpUtf8) => return self.error(Reply::SmtpUtf8Required),
        };
        if transaction.recipients.len() >= self.config.max_recipients {
            let reply = Reply::TooManyRecipients;
            return vec![self.record_recipient(&address, &reply, RejectReason::TooManyRecipients), Step::Reply(reply)];
        }
        let client = self.client_context(&transaction.sender_domain);
        match self.policy.check_recipient(&client, &address) {
            RecipientDecision::Accept { accepted_domain } => {
                let orcpt = to.orcpt.as_deref().map(original_recipient);
                let recipient = Recipient { address, notify: notify(to.flags), orcpt, accepted_domain };
                if let Some(transaction) = &mut self.transaction {
                    transaction.recipients.push(recipient);
                }
                vec![Step::Reply(Reply::RecipientOk)]
            }
            RecipientDecision::Reject(reply, reason) => {
                let record = self.record_recipient(&address, &reply, reason);
                // Permanent refusals count as errors: they bound directory harvesting.
                let mut steps = if reply.code() >= 500 { self.error(reply) } else { vec![Step::Reply(reply)] };
                steps.insert(0, record);
                steps
            }
        }
    }
}

/// `ORCPT` as events record it, `type;xtext` (RFC 3461 §4.2), the form the
/// delivery client relays and NDRs report. smtp-proto hands over the address
/// xtext-decoded (`+XX` as the char U+00XX) and without its type, `rfc822`,
/// the only one it accepts; both are put back.
fn original_recipient(decoded: &str) -> String {
    fn push(out: &mut String, byte: u8) {
        if (0x21..=0x7e).contains(&byte) && byte != b'+' && byte != b'=' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("+{byte:02X}"));
        }
    }
    let mut out = String::from("rfc822;");
    for c in decoded.chars() {
        match u8::try_from(u32::from(c)) {
            Ok(byte) => push(&mut out, byte),
            Err(_) => c.encode_utf8(&mut [0u8; 4]).bytes().for_each(|byte| push(&mut out, byte)),
        }
    }
    out
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
