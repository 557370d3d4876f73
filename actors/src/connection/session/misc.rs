//! RSET and VRFY (NOOP, HELP and QUIT need no state and are answered in `mod.rs`).

use super::{Session, Step};
use crate::connection::reply::Reply;

impl Session {
    pub(super) fn rset(&mut self) -> Vec<Step> {
        self.transaction = None;
        vec![Step::Reply(Reply::Ok)]
    }
}

impl Session {
    /// VRFY: `252` unless enabled; enabled, it answers for directory
    /// addresses only (`250` or `550 5.1.1`), never for relay domains.
    pub(super) fn vrfy(&mut self, value: &str) -> Vec<Step> {
        if !self.config.vrfy {
            return vec![Step::Reply(Reply::CannotVerify)];
        }
        let address = value.trim().trim_start_matches('<').trim_end_matches('>');
        match self.policy.resolve(address) {
            Some(primary) => vec![Step::Reply(Reply::Verified(super::sanitize(primary)))],
            None => self.error(Reply::UnknownUser),
        }
    }
}
