//! DATA and BDAT, and the end of a message: content checks, the `Received:`
//! header, and handing the message to the driver to store durably.

use chrono::Utc;
use mailflow_events::received::{Directionality, RejectReason, SmtpStage};

use super::{Incoming, Session, State, Step, StoreOutcome};
use crate::connection::body::{self, BodyProblem, DataReceiver};
use crate::connection::reply::Reply;

impl Session {
    pub(super) fn data(&mut self, input: &[u8]) -> Vec<Step> {
        match &self.transaction {
            None => return self.error(Reply::BadSequence("need MAIL before DATA")),
            Some(t) if t.recipients.is_empty() => return self.error(Reply::BadSequence("need RCPT before DATA")),
            Some(t) if t.chunks.is_some() => return self.error(Reply::BadSequence("DATA after BDAT")),
            Some(_) => {}
        }
        // RFC 2920 §3.1: the client must wait for 354 before sending content.
        if !input.is_empty() {
            return vec![Step::Reply(Reply::SynchronizationError)];
        }
        self.state = State::Data(Box::new(DataReceiver::new(self.config.max_message_size)));
        vec![Step::Reply(Reply::StartData)]
    }

    pub(super) fn bdat(&mut self, size: usize, last: bool) -> Vec<Step> {
        let limit = self.config.max_message_size;
        if let Some(transaction) = &mut self.transaction
            && !transaction.recipients.is_empty()
        {
            let chunks = transaction.chunks.get_or_insert_with(Vec::new);
            if chunks.len().saturating_add(size) > limit {
                transaction.chunk_problem = Some(Reply::MessageTooLarge);
            }
        }
        // The chunk is read in any case, so that the session stays in step.
        self.state = State::Bdat { remaining: size, last };
        if size == 0 {
            return self.chunk_done(last);
        }
        Vec::new()
    }

    pub(super) fn bdat_bytes(&mut self, input: &mut Vec<u8>) -> Vec<Step> {
        let State::Bdat { remaining, last } = &mut self.state else { return Vec::new() };
        let take = (*remaining).min(input.len());
        *remaining -= take;
        let (done, last) = (*remaining == 0, *last);
        let bytes = input.drain(..take);
        if let Some(transaction) = &mut self.transaction
            && transaction.chunk_problem.is_none()
            && let Some(chunks) = &mut transaction.chunks
        {
            chunks.extend(bytes);
        } else {
            drop(bytes);
        }
        if done { self.chunk_done(last) } else { Vec::new() }
    }

    fn chunk_done(&mut self, last: bool) -> Vec<Step> {
        self.state = State::Command;
        let Some(transaction) = &mut self.transaction else {
            return self.error(Reply::BadSequence("need MAIL and RCPT before BDAT"));
        };
        if transaction.recipients.is_empty() {
            return self.error(Reply::BadSequence("need RCPT before BDAT"));
        }
        if let Some(problem) = transaction.chunk_problem.clone() {
            if last {
                let record = self.record_rejection(SmtpStage::EndOfData, &problem, RejectReason::MessageTooLarge);
                self.transaction = None;
                return vec![record, Step::Reply(problem)];
            }
            return vec![Step::Reply(problem)];
        }
        let size = transaction.chunks.as_ref().map_or(0, Vec::len);
        if !last {
            return vec![Step::Reply(Reply::ChunkOk { size })];
        }
        let content = transaction.chunks.take().unwrap_or_default();
        let checked = body::check_line_endings(&content).map(|()| content);
        self.end_of_data(checked)
    }

    /// The message is complete: checks it and asks the driver to store it.
    pub(super) fn end_of_data(&mut self, content: Result<Vec<u8>, BodyProblem>) -> Vec<Step> {
        let refuse = |session: &mut Self, reply: Reply, reason: RejectReason| {
            let record = session.record_rejection(SmtpStage::EndOfData, &reply, reason);
            session.transaction = None;
            vec![record, Step::Reply(reply)]
        };
        let content = match content {
            Ok(content) => content,
            Err(BodyProblem::TooLarge) => return refuse(self, Reply::MessageTooLarge, RejectReason::MessageTooLarge),
            Err(BodyProblem::InvalidCharacters) => return refuse(self, Reply::InvalidCharacters, RejectReason::Policy),
        };
        // Our `Received:` field goes in front: a first line starting with
        // white space would fold the client's text into it (its date, say).
        if body::starts_folded(&content) {
            return refuse(self, Reply::FoldedFirstLine, RejectReason::Policy);
        }
        let headers = body::header_stats(&content);
        if headers.size > self.config.max_header_size || headers.fields > self.config.max_header_fields {
            return refuse(self, Reply::HeaderTooLarge, RejectReason::MessageTooLarge);
        }
        if headers.received > self.config.max_received_headers {
            return refuse(self, Reply::HopCountExceeded, RejectReason::Policy);
        }
        let Some(transaction) = self.transaction.take() else {
            return self.error(Reply::BadSequence("no transaction"));
        };
        let id = uuid::Uuid::now_v7().simple().to_string();
        // Only the organisation's own servers may carry its headers across (spec 9.6).
        let trusted =
            self.connector.as_ref().is_some_and(|c| c.kind == mailflow_events::received::ConnectorKind::OnPremises);
        let content = if trusted {
            content
        } else {
            let (stripped, removed) = body::strip_untrusted_headers(&content, &self.config.hostname);
            if removed > 0 {
                let mut marked =
                    format!("X-MS-Exchange-Transport-CrossTenantHeadersStripped: {}\r\n", self.config.hostname)
                        .into_bytes();
                marked.extend_from_slice(&stripped);
                marked
            } else {
                stripped
            }
        };
        let mut stamped = self.received_header(&id, &transaction.recipients).into_bytes();
        stamped.extend_from_slice(&content);
        let client = self.client_context(&transaction.sender_domain);
        let requires_ipv6_authentication = client.is_anonymous() && client.is_ipv6();
        let client_anonymous = client.is_anonymous();
        let directionality = if self.authenticated_as.is_some() || self.connector.is_some() {
            Directionality::Originating
        } else {
            Directionality::Inbound
        };
        self.state = State::Waiting;
        self.pending = Some(id.clone());
        vec![Step::Store(Box::new(Incoming {
            id,
            session: self.session_event(),
            envelope: transaction.envelope,
            recipients: transaction.recipients,
            connector: self.matched_connector(&transaction.sender_domain),
            directionality,
            content: stamped,
            requires_ipv6_authentication,
            anonymous: client_anonymous,
        }))]
    }

    /// The driver stored the message (or could not).
    pub fn stored(&mut self, outcome: StoreOutcome) -> Vec<Step> {
        self.state = State::Command;
        let id = self.pending.take().unwrap_or_default();
        let mut steps = self.store_replies(outcome, id);
        self.close_after(&mut steps);
        steps
    }

    fn store_replies(&self, outcome: StoreOutcome, id: String) -> Vec<Step> {
        match outcome {
            StoreOutcome::Stored => vec![Step::Reply(Reply::Queued { id })],
            StoreOutcome::Failed => vec![Step::Reply(Reply::LogUnavailable)],
            StoreOutcome::NoSpace => vec![Step::Reply(Reply::InsufficientStorage)],
            StoreOutcome::DmarcRejected { domain } => {
                let reply = Reply::DmarcReject { domain };
                vec![
                    self.record_rejection(SmtpStage::EndOfData, &reply, RejectReason::DmarcRejected),
                    Step::Reply(reply),
                ]
            }
            StoreOutcome::Ipv6AuthenticationFailed => {
                let reply = Reply::Ipv6AuthFailed { ip: self.client_ip().to_string() };
                vec![
                    self.record_rejection(SmtpStage::EndOfData, &reply, RejectReason::Ipv6AuthFailed),
                    Step::Reply(reply),
                ]
            }
        }
    }

    /// The connector the message came through: the on-premises connector that
    /// identified the client, else a partner connector governing the sender
    /// domain that admitted this source (spec 4.5 order).
    fn matched_connector(&self, sender_domain: &str) -> Option<mailflow_events::received::InboundConnectorMatch> {
        if let Some(connector) = &self.connector {
            return Some(connector.to_event());
        }
        self.policy
            .partner_connector(sender_domain)
            .filter(|partner| partner.admits(self.client_ip(), self.tls.is_some(), self.certificate_names()))
            .map(|partner| partner.to_event())
    }

    /// Our trace header (RFC 5321 §4.4), with the protocol per RFC 3848 and the TLS details.
    fn received_header(&self, id: &str, recipients: &[mailflow_events::received::Recipient]) -> String {
        let helo = self.helo.as_deref().unwrap_or("unknown");
        let ptr = self.peer.ptr.clone().flatten().map(|p| super::sanitize(&p)).unwrap_or_else(|| "unknown".into());
        let protocol = match (self.esmtp, self.tls.is_some(), self.authenticated_as.is_some()) {
            (false, _, _) => "SMTP",
            (true, false, false) => "ESMTP",
            (true, true, false) => "ESMTPS",
            (true, false, true) => "ESMTPA",
            (true, true, true) => "ESMTPSA",
        };
        let mut header = format!(
            "Received: from {helo} ({ptr} [{}])\r\n\tby {} (mailflow) with {protocol}",
            self.client_ip(),
            self.config.hostname
        );
        if let Some(tls) = &self.tls {
            header.push_str(&format!("\r\n\t(using {} with cipher {})", tls.protocol, tls.cipher));
        }
        header.push_str(&format!("\r\n\tid {id}"));
        if let [only] = recipients {
            header.push_str(&format!("\r\n\tfor <{}>", super::sanitize(&only.address)));
        }
        header.push_str(&format!("; {}\r\n", Utc::now().to_rfc2822()));
        header
    }
}
