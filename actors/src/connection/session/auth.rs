//! AUTH PLAIN and LOGIN (RFC 4954), offered on the submission listener after
//! STARTTLS only; the password check itself is an effect run by the driver.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::{Session, State, Step};
use crate::config::ListenerKind;
use crate::connection::reply::Reply;

impl Session {
    pub(super) fn auth(&mut self, mechanism: u64, initial: String) -> Vec<Step> {
        if self.config.kind != ListenerKind::Submission {
            return self.error(Reply::NotImplemented);
        }
        if self.tls.is_none() {
            return self.error(Reply::TlsRequired);
        }
        if self.authenticated_as.is_some() || self.transaction.is_some() || self.helo.is_none() {
            return self.error(Reply::BadSequence("AUTH after EHLO, once, outside a transaction"));
        }
        match mechanism {
            smtp_proto::AUTH_PLAIN if initial.is_empty() => {
                self.state = State::AuthPlain;
                vec![Step::Reply(Reply::AuthChallenge(String::new()))]
            }
            smtp_proto::AUTH_PLAIN => self.plain(initial.as_bytes()),
            smtp_proto::AUTH_LOGIN if initial.is_empty() => {
                self.state = State::AuthLoginUser;
                vec![Step::Reply(Reply::AuthChallenge(BASE64.encode("Username:")))]
            }
            smtp_proto::AUTH_LOGIN => self.auth_login_user(format!("{initial}\r\n").as_bytes()),
            _ => self.error(Reply::UnsupportedParameter("AUTH mechanism".into())),
        }
    }

    pub(super) fn auth_plain_response(&mut self, line: &[u8]) -> Vec<Step> {
        self.plain(trim(line))
    }

    fn plain(&mut self, response: &[u8]) -> Vec<Step> {
        let Some(decoded) = decode(response) else {
            return self.error(Reply::SyntaxError("AUTH cancelled or not base64".into()));
        };
        // authzid \0 authcid \0 password; an authzid other than the login is not allowed.
        let mut parts = decoded.split(|&b| b == 0);
        let (Some(authzid), Some(login), Some(password), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return self.error(Reply::SyntaxError("AUTH PLAIN response is not authzid\\0login\\0password".into()));
        };
        if !authzid.is_empty() && authzid != login {
            return self.error(Reply::AuthFailed);
        }
        self.check(login, password)
    }

    pub(super) fn auth_login_user(&mut self, line: &[u8]) -> Vec<Step> {
        let Some(login) = decode(trim(line)) else {
            return self.error(Reply::SyntaxError("AUTH cancelled or not base64".into()));
        };
        let Ok(login) = String::from_utf8(login) else { return self.error(Reply::AuthFailed) };
        self.state = State::AuthLoginPassword { login };
        vec![Step::Reply(Reply::AuthChallenge(BASE64.encode("Password:")))]
    }

    pub(super) fn auth_login_password(&mut self, login: String, line: &[u8]) -> Vec<Step> {
        let Some(password) = decode(trim(line)) else {
            return self.error(Reply::SyntaxError("AUTH cancelled or not base64".into()));
        };
        self.check(login.as_bytes(), &password)
    }

    fn check(&mut self, login: &[u8], password: &[u8]) -> Vec<Step> {
        let (Ok(login), Ok(password)) = (std::str::from_utf8(login), std::str::from_utf8(password)) else {
            return self.error(Reply::AuthFailed);
        };
        self.state = State::Waiting;
        vec![Step::CheckPassword { login: login.to_string(), password: password.to_string() }]
    }

    /// The password check's outcome: the recipient's primary address, or `None`.
    pub fn password_checked(&mut self, primary: Option<String>) -> Vec<Step> {
        self.state = State::Command;
        let mut steps = match primary {
            Some(address) => {
                self.authenticated_as = Some(address);
                vec![Step::Reply(Reply::AuthOk)]
            }
            // The failure counts toward `max_errors`, which bounds password guessing.
            None => self.error(Reply::AuthFailed),
        };
        self.close_after(&mut steps);
        steps
    }
}

fn trim(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r\n").unwrap_or(line)
}

/// Base64 of a SASL response; `*` (cancel) and bad base64 give `None`.
fn decode(response: &[u8]) -> Option<Vec<u8>> {
    match response {
        b"*" => None,
        b"=" => Some(Vec::new()),
        _ => BASE64.decode(response).ok(),
    }
}
