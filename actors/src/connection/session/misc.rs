//! RSET (NOOP, VRFY, HELP and QUIT need no state and are answered in `mod.rs`).

use super::{Session, Step};
use crate::connection::reply::Reply;

impl Session {
    pub(super) fn rset(&mut self) -> Vec<Step> {
        self.transaction = None;
        vec![Step::Reply(Reply::Ok)]
    }
}
