//! EHLO, HELO and STARTTLS.

use mailflow_events::received::TlsInfo;

use super::{Session, State, Step};
use crate::config::ListenerKind;
use crate::connection::reply::Reply;

impl Session {
    pub(super) fn ehlo(&mut self, host: String, input: &[u8]) -> Vec<Step> {
        // RFC 2920 §3.1: EHLO ends a pipeline group; more bytes mean the client did not wait.
        if !input.is_empty() {
            return vec![Step::Reply(Reply::SynchronizationError)];
        }
        self.helo = Some(super::sanitize(&host));
        self.esmtp = true;
        self.transaction = None;
        vec![Step::Reply(Reply::Ehlo {
            hostname: self.config.hostname.clone(),
            client_ip: self.client_ip().to_string(),
            extensions: self.extensions(),
        })]
    }

    pub(super) fn helo(&mut self, host: String, input: &[u8]) -> Vec<Step> {
        if !input.is_empty() {
            return vec![Step::Reply(Reply::SynchronizationError)];
        }
        self.helo = Some(super::sanitize(&host));
        self.esmtp = false;
        self.transaction = None;
        vec![Step::Reply(Reply::Helo {
            hostname: self.config.hostname.clone(),
            client_ip: self.client_ip().to_string(),
        })]
    }

    /// The EHLO keywords: STARTTLS until TLS is up, AUTH only on submission and only after it.
    fn extensions(&self) -> Vec<String> {
        let mut extensions = vec![
            "PIPELINING".to_string(),
            format!("SIZE {}", self.config.max_message_size),
            "8BITMIME".to_string(),
            "SMTPUTF8".to_string(),
            "ENHANCEDSTATUSCODES".to_string(),
            "CHUNKING".to_string(),
            "DSN".to_string(),
        ];
        if self.config.tls_available && self.tls.is_none() {
            extensions.push("STARTTLS".to_string());
        }
        if self.config.kind == ListenerKind::Submission && self.tls.is_some() && self.authenticated_as.is_none() {
            extensions.push("AUTH PLAIN LOGIN".to_string());
        }
        extensions.push("HELP".to_string());
        extensions
    }

    pub(super) fn starttls(&mut self, input: &mut Vec<u8>) -> Vec<Step> {
        if !self.config.tls_available {
            return self.error(Reply::TlsUnavailable);
        }
        if self.tls.is_some() {
            return self.error(Reply::BadSequence("TLS already active"));
        }
        // CVE-2011-0411: whatever the client pipelined after STARTTLS was sent in
        // the clear and must not be executed inside TLS.
        input.clear();
        self.state = State::Waiting;
        vec![Step::StartTls]
    }

    /// The handshake finished (`Some`) or failed (`None`).
    pub fn tls_started(&mut self, tls: Option<TlsInfo>) -> Vec<Step> {
        match tls {
            Some(info) => {
                // RFC 3207 §4.2: forget everything learnt before TLS, EHLO again.
                if self.connector.is_none() {
                    self.connector =
                        self.policy.on_premises_connector_by_certificate(&info.client_certificate_names).cloned();
                }
                self.tls = Some(info);
                self.helo = None;
                self.esmtp = false;
                self.transaction = None;
                self.state = State::Command;
                Vec::new()
            }
            None => {
                self.state = State::Closed;
                vec![Step::Close]
            }
        }
    }
}
