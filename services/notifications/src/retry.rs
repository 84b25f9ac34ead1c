//! When the next attempt of a delivery happens, or that there is none.
//!
//! Attempts are persisted (a delivery row counts them), so the policy answers
//! for attempt `n` directly instead of holding an iterator across restarts.
//! The delays come from backon's exponential back-off with jitter: the k-th
//! retry waits between `d_k` and `2 * d_k`, where `d_k = min_delay * 2^(k-1)`
//! capped at `max_delay`.

use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder, ExponentialBuilder};

/// Exponential back-off with jitter, bounded by attempts and by time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay before the second attempt (before jitter).
    pub min_delay: Duration,
    /// Longest delay (before jitter).
    pub max_delay: Duration,
    /// Attempts in all, at least 1.
    pub max_attempts: u32,
    /// No attempt starts later than this after the delivery was queued.
    pub give_up_after: Duration,
}

impl RetryPolicy {
    /// When attempt `attempts_made + 1` should run, after `attempts_made`
    /// attempts failed, the last one ending at `now`; `None` means give up.
    pub fn next_attempt(&self, attempts_made: u32, queued_at: SystemTime, now: SystemTime) -> Option<SystemTime> {
        if attempts_made >= self.max_attempts {
            return None;
        }
        let delay = self.delay_after(attempts_made)?;
        let at = now + delay;
        let deadline = queued_at + self.give_up_after;
        if at > deadline {
            // One last attempt at the deadline beats giving up early, as
            // long as the deadline has not passed yet.
            return (now < deadline).then_some(deadline);
        }
        Some(at)
    }

    /// The delay after the `attempts_made`-th failed attempt (1-based).
    fn delay_after(&self, attempts_made: u32) -> Option<Duration> {
        let retry = usize::try_from(attempts_made.checked_sub(1)?).ok()?;
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay.max(self.min_delay))
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
            .nth(retry)
    }

    /// The longest a delivery can take to be decided: every delay at its
    /// jittered maximum, capped by `give_up_after`. For documentation and
    /// tests; channel timeouts come on top of it.
    pub fn worst_case(&self) -> Duration {
        let mut total = Duration::ZERO;
        let mut delay = self.min_delay;
        for _ in 1..self.max_attempts {
            total += delay * 2;
            delay = (delay * 2).min(self.max_delay.max(self.min_delay));
        }
        total.min(self.give_up_after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            min_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(8),
            max_attempts: 6,
            give_up_after: Duration::from_secs(3600),
        }
    }

    #[test]
    fn delays_grow_exponentially_within_their_jitter_bounds() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let policy = policy();
        let expected_base = [1, 2, 4, 8, 8];
        // Jitter is random: check many draws against the documented bounds.
        for _ in 0..200 {
            for (i, base) in expected_base.iter().enumerate() {
                let made = u32::try_from(i + 1).unwrap();
                let at = policy.next_attempt(made, start, start).unwrap();
                let delay = at.duration_since(start).unwrap();
                let base = Duration::from_secs(*base);
                assert!(delay >= base && delay < base * 2, "retry {made}: {delay:?} not in [{base:?}, {:?})", base * 2);
            }
        }
    }

    #[test]
    fn attempts_are_bounded() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let policy = policy();
        assert!(policy.next_attempt(5, start, start).is_some());
        assert_eq!(policy.next_attempt(6, start, start), None);
        let single = RetryPolicy { max_attempts: 1, ..policy };
        assert_eq!(single.next_attempt(1, start, start), None);
    }

    #[test]
    fn the_deadline_bounds_the_last_attempt() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let policy = RetryPolicy { give_up_after: Duration::from_secs(10), ..policy() };
        // After 9 s a retry would land past the deadline: it is moved to it.
        let now = start + Duration::from_secs(9);
        assert_eq!(policy.next_attempt(4, start, now), Some(start + Duration::from_secs(10)));
        // At the deadline itself there is no further attempt.
        assert_eq!(policy.next_attempt(4, start, start + Duration::from_secs(10)), None);
    }

    #[test]
    fn the_default_crisis_policy_decides_within_a_minute() {
        let policy = crate::config::AlertRetry::default().policy();
        assert_eq!(policy.max_attempts, 5);
        assert!(policy.worst_case() <= Duration::from_secs(60), "{:?}", policy.worst_case());
    }
}
