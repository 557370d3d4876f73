//! MAIL FROM: starts a transaction.

use mailflow_events::received::{BodyType, DsnReturn, ReceivedEvent, RejectReason, SmtpEnvelope, SmtpStage};
use smtp_proto::MailFrom;

use super::address::{AddressProblem, mailbox};
use super::{Session, Step, Transaction};
use crate::config::ListenerKind;
use crate::connection::reply::Reply;

impl Session {
    pub(super) fn mail(&mut self, from: MailFrom<String>) -> Vec<Step> {
        if self.helo.is_none() {
            return self.error(Reply::BadSequence("send EHLO or HELO first"));
        }
        if self.transaction.is_some() {
            return self.error(Reply::BadSequence("nested MAIL command"));
        }
        if self.config.kind == ListenerKind::Submission && self.authenticated_as.is_none() {
            let reply = if self.tls.is_none() { Reply::TlsRequired } else { Reply::AuthRequired };
            return self.error(reply);
        }
        if from.size > self.config.max_message_size {
            let record = self.record_rejection(SmtpStage::Mail, &Reply::MessageTooLarge, RejectReason::MessageTooLarge);
            return vec![record, Step::Reply(Reply::MessageTooLarge)];
        }
        if has_control_characters(from.env_id.as_deref().unwrap_or_default()) || has_control_characters(&from.address) {
            // Injection through xtext parameters (21Nails class): never stored.
            return self.error(Reply::SyntaxError("control characters in MAIL parameters".into()));
        }
        let smtputf8 = from.flags & smtp_proto::MAIL_SMTPUTF8 != 0;
        let address = match mailbox(&from.address, smtputf8) {
            Ok(address) => address,
            Err(AddressProblem::Syntax) => return self.error(Reply::BadSender),
            Err(AddressProblem::NeedsSmtpUtf8) => return self.error(Reply::SmtpUtf8Required),
        };
        if let Some(user) = &self.authenticated_as
            && self.policy.resolve(&address) != Some(user.as_str())
        {
            return self.error(Reply::SendAsDenied);
        }
        let body = if from.flags & smtp_proto::MAIL_BODY_BINARYMIME != 0 {
            return self.error(Reply::UnsupportedParameter("BODY=BINARYMIME".into()));
        } else if from.flags & smtp_proto::MAIL_BODY_8BITMIME != 0 {
            BodyType::EightBitMime
        } else {
            BodyType::SevenBit
        };
        let dsn_return = if from.flags & smtp_proto::MAIL_RET_FULL != 0 {
            Some(DsnReturn::Full)
        } else if from.flags & smtp_proto::MAIL_RET_HDRS != 0 {
            Some(DsnReturn::Headers)
        } else {
            None
        };
        let sender_domain = address.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()).unwrap_or_default();
        let client = self.client_context(&sender_domain);
        if let Err((reply, reason)) = self.policy.check_sender(&client) {
            let record = self.record_rejection(SmtpStage::Mail, &reply, reason);
            let mut steps = self.error(reply);
            steps.insert(0, record);
            return steps;
        }
        self.transaction = Some(Transaction {
            envelope: SmtpEnvelope {
                mail_from: address,
                dsn_return,
                dsn_envid: from.env_id,
                body,
                smtputf8,
                declared_size: (from.size > 0).then_some(from.size as u64),
            },
            sender_domain,
            recipients: Vec::new(),
            chunks: None,
            chunk_problem: None,
        });
        vec![Step::Reply(Reply::SenderOk)]
    }

    /// Records a refused recipient for the message trace.
    pub(super) fn record_recipient(&self, address: &str, reply: &Reply, reason: RejectReason) -> Step {
        Step::Record(Box::new(ReceivedEvent::RecipientRejected(mailflow_events::received::RecipientRejected {
            session: self.session_event(),
            mail_from: self.transaction.as_ref().map(|t| t.envelope.mail_from.clone()).unwrap_or_default(),
            address: address.to_string(),
            reply: reply.to_event(),
            reason,
        })))
    }
}

pub(super) fn has_control_characters(text: &str) -> bool {
    text.chars().any(char::is_control)
}
