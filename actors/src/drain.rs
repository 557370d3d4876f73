//! Graceful drain: what a process does between SIGTERM and its exit.
//!
//! [`Drain`] is one signal every role watches, plus a count of the work that
//! must end before the process may exit. On SIGTERM (or Ctrl-C) `serve` calls
//! [`Drain::start`], then [`Drain::finished`] with the deadline
//! (`[server] drain_timeout`, default 25 s, inside Kubernetes' default grace
//! period of 30 s):
//!
//! - listeners keep accepting, and answer every new connection with
//!   `421 4.3.2` (recorded as `ConnectionRefused`, reason `shutting_down`), so
//!   that a client reaching a pod that is leaving gets a reply to retry on,
//!   not a reset;
//! - a session with no open transaction gets `421 4.3.2` at once; one inside a
//!   transaction (after `MAIL`, during `DATA`) finishes it — the message is
//!   stored and acknowledged as usual — and then gets `421 4.3.2`; at the
//!   deadline every remaining session is closed with `421 4.3.2`, and its
//!   unacknowledged message is the client's to send again;
//! - the verdict, routing and journal roles finish the record in hand, commit
//!   its offset and leave their consumer groups;
//! - delivery starts no new attempt, lets each running one finish and record
//!   its outcome, snapshots its partitions and leaves the group. An attempt
//!   still running at the deadline records nothing: the partition's next owner
//!   sees it still queued and tries it again.
//!
//! Once the drain is over, `serve` returns and the spans still batched for
//! export are flushed (`crate::telemetry::Telemetry::shutdown`) before exit.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

/// The drain signal and the work it waits for. Clones share both.
#[derive(Debug, Clone)]
pub struct Drain {
    signal: Arc<watch::Sender<bool>>,
    watcher: watch::Receiver<bool>,
    /// Weak, so that the listeners' clones, which live until the process
    /// exits, do not count as work.
    work: mpsc::WeakSender<()>,
}

/// Held by one piece of work the drain waits for; dropping it says it is done.
#[derive(Debug)]
pub struct Working {
    _work: Option<mpsc::Sender<()>>,
}

/// The receiving end the process waits on.
#[derive(Debug)]
pub struct DrainWait {
    /// Keeps the channel open until [`DrainWait::finished`] begins.
    open: mpsc::Sender<()>,
    done: mpsc::Receiver<()>,
}

impl Drain {
    /// A drain that has not started, and what [`Drain::finished`] waits on.
    pub fn new() -> (Self, DrainWait) {
        let (signal, watcher) = watch::channel(false);
        let (open, done) = mpsc::channel(1);
        (Self { signal: Arc::new(signal), watcher, work: open.downgrade() }, DrainWait { open, done })
    }

    /// Begins the drain; idempotent.
    pub fn start(&self) {
        self.signal.send_replace(true);
    }

    /// Whether the drain has begun.
    pub fn is_draining(&self) -> bool {
        *self.watcher.borrow()
    }

    /// Resolves once the drain has begun (at once if it has).
    pub async fn started(&self) {
        let mut watcher = self.watcher.clone();
        // The sender lives as long as any clone of `self`, so this only ends by the flag.
        let _ = watcher.wait_for(|draining| *draining).await;
    }

    /// Registers a piece of work the process waits for before exiting (work
    /// that begins once the wait is over is not waited for).
    pub fn working(&self) -> Working {
        Working { _work: self.work.upgrade() }
    }
}

impl DrainWait {
    /// Waits until every [`Working`] is dropped or `deadline` passes; true when
    /// everything finished in time.
    pub async fn finished(self, deadline: Duration) -> bool {
        let Self { open, mut done } = self;
        drop(open);
        tokio::time::timeout(deadline, async { while done.recv().await.is_some() {} }).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn finishes_when_the_last_work_ends_and_not_before() {
        let (drain, wait) = Drain::new();
        let first = drain.working();
        let second = drain.working();
        assert!(!drain.is_draining());
        let watcher = drain.clone();
        let started = tokio::spawn(async move { watcher.started().await });
        drain.start();
        started.await.unwrap();
        assert!(drain.is_draining());
        drop(first);
        let waiting = tokio::spawn(wait.finished(Duration::from_secs(5)));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "finished while work was still held");
        drop(second);
        assert!(waiting.await.unwrap());
    }

    #[tokio::test]
    async fn gives_up_at_the_deadline() {
        let (drain, wait) = Drain::new();
        let _stuck = drain.working();
        drain.start();
        assert!(!wait.finished(Duration::from_millis(20)).await);
    }
}
