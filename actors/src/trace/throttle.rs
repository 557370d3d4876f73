//! [`QueryThrottle`]: at most `limit` trace queries in any rolling window
//! (spec 15.1: 100 queries per 5 minutes), so that searches, which may scan
//! every message, cannot take a process's CPU from the mail it carries.
//!
//! Pure: the caller passes the instant. It holds the instants of the queries
//! admitted within the window, so at most `limit` of them.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A rolling-window count of admitted queries.
#[derive(Debug, Clone)]
pub struct QueryThrottle {
    limit: usize,
    window: Duration,
    admitted: VecDeque<Instant>,
}

impl QueryThrottle {
    /// At most `limit` queries in any `window`; a `limit` of 0 admits every query.
    pub fn new(limit: usize, window: Duration) -> Self {
        Self { limit, window, admitted: VecDeque::with_capacity(limit.min(1024)) }
    }

    /// Admits a query at `now`, or says how long until the oldest query in
    /// the window leaves it. A query refused does not count.
    pub fn admit(&mut self, now: Instant) -> Result<(), Duration> {
        if self.limit == 0 {
            return Ok(());
        }
        while self.admitted.front().is_some_and(|t| now.saturating_duration_since(*t) >= self.window) {
            self.admitted.pop_front();
        }
        if let Some(oldest) = self.admitted.front()
            && self.admitted.len() >= self.limit
        {
            return Err(self.window.saturating_sub(now.saturating_duration_since(*oldest)));
        }
        self.admitted.push_back(now);
        Ok(())
    }

    /// The most queries admitted in one window (0: no limit).
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The rolling window.
    pub fn window(&self) -> Duration {
        self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_holds_in_any_rolling_window_and_refusals_do_not_count_spec_15_1() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let mut throttle = QueryThrottle::new(3, Duration::from_secs(300));
        assert_eq!(throttle.admit(at(0)), Ok(()));
        assert_eq!(throttle.admit(at(100)), Ok(()));
        assert_eq!(throttle.admit(at(200)), Ok(()));
        // The fourth within 5 minutes of the first waits until the first leaves the window.
        assert_eq!(throttle.admit(at(250)), Err(Duration::from_secs(50)));
        assert_eq!(throttle.admit(at(299)), Err(Duration::from_secs(1)));
        // At 300 s the first has left; the refusals at 250 and 299 took no place.
        assert_eq!(throttle.admit(at(300)), Ok(()));
        assert_eq!(throttle.admit(at(301)), Err(Duration::from_secs(99)));
        assert_eq!(throttle.admit(at(400)), Ok(()));
        assert_eq!(throttle.admit(at(1000)), Ok(()));
    }

    #[test]
    fn a_limit_of_zero_admits_everything() {
        let mut throttle = QueryThrottle::new(0, Duration::from_secs(300));
        let now = Instant::now();
        assert!((0..10_000).all(|_| throttle.admit(now).is_ok()));
    }
}
