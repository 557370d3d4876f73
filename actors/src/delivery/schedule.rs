//! The retry schedule (spec 11.2, DESIGN §3): a pure function from the
//! attempt number and the time of the failure to the time of the next attempt.
//! The result is recorded in the `Deferred` event, so replay never calls this.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// Delays between attempts; the last one repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule {
    delays: Vec<Duration>,
}

impl RetrySchedule {
    /// A schedule from configured delays (validated non-empty and non-zero).
    pub fn new(delays: Vec<Duration>) -> Self {
        let delays = if delays.is_empty() { vec![Duration::from_secs(3600)] } else { delays };
        Self { delays }
    }

    /// The delay after the `attempt`-th failed attempt (from 1).
    pub fn delay(&self, attempt: u32) -> Duration {
        let index = (attempt.max(1) as usize - 1).min(self.delays.len() - 1);
        self.delays[index]
    }

    /// When to try again after attempt `attempt` failed at `failed_at`.
    pub fn next_attempt(&self, attempt: u32, failed_at: DateTime<Utc>) -> DateTime<Utc> {
        failed_at + chrono::Duration::from_std(self.delay(attempt)).unwrap_or(chrono::Duration::hours(1))
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone as _;

    use super::*;

    #[test]
    fn the_default_schedule_is_eops_as_a_vector_of_times() {
        // DESIGN §3: 1m, 5m, 10m, 15m, 30m, 45m, 60m, then every 60m; a message
        // failing at every attempt from 08:00 is tried at these times.
        let schedule = RetrySchedule::new(crate::config::TransportConfig::default().retry_schedule);
        let start = Utc.with_ymd_and_hms(2026, 11, 23, 8, 0, 0).single().expect("valid");
        let mut at = start;
        let mut times = Vec::new();
        for attempt in 1..=9 {
            at = schedule.next_attempt(attempt, at);
            times.push((at - start).num_minutes());
        }
        assert_eq!(times, vec![1, 6, 16, 31, 61, 106, 166, 226, 286]);
        // Spec 11.2: the first retries at most 15 minutes apart, never more than 60.
        assert!((1..=4).all(|n| schedule.delay(n) <= Duration::from_secs(15 * 60)));
        assert!((1..=100).all(|n| schedule.delay(n) <= Duration::from_secs(3600)));
    }

    #[test]
    fn a_configured_schedule_in_seconds_repeats_its_last_step() {
        let schedule = RetrySchedule::new(vec![Duration::from_secs(1), Duration::from_secs(2)]);
        assert_eq!((1..=4).map(|n| schedule.delay(n).as_secs()).collect::<Vec<_>>(), vec![1, 2, 2, 2]);
    }
}
