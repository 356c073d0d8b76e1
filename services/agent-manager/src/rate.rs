//! A token bucket: how many informational messages (task progress) one
//! agent session may log. Progress is best effort; a session that sends
//! more than its budget has the excess dropped, so no agent can flood the
//! event log that every other agent's events go through.

#[cfg(test)]
use std::time::Duration;
use std::time::Instant;

/// Progress messages a session may log per second, sustained.
pub(crate) const PROGRESS_PER_SECOND: u32 = 50;
/// ... and at once after a quiet spell.
pub(crate) const PROGRESS_BURST: u32 = 200;

#[derive(Debug)]
pub(crate) struct TokenBucket {
    per_second: f64,
    burst: f64,
    tokens: f64,
    refilled_at: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub(crate) fn new(per_second: u32, burst: u32, now: Instant) -> Self {
        Self {
            per_second: f64::from(per_second),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            refilled_at: now,
        }
    }

    /// Takes one token if there is one at `now`.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled_at);
        self.refilled_at = now;
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.per_second).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long until a token is there again (zero if one is).
    #[cfg(test)]
    fn wait(&self) -> Duration {
        let missing = (1.0 - self.tokens).max(0.0);
        Duration::from_secs_f64(missing / self.per_second)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10, 3, start);
        assert!((0..3).all(|_| bucket.take(start)));
        assert!(!bucket.take(start), "the burst is spent");
        assert!(bucket.wait() > Duration::ZERO);
        // A tenth of a second later one more is allowed, not two.
        let later = start + Duration::from_millis(100);
        assert!(bucket.take(later));
        assert!(!bucket.take(later));
        // A long pause refills up to the burst, no further.
        let much_later = later + Duration::from_secs(3600);
        assert_eq!((0..10).filter(|_| bucket.take(much_later)).count(), 3);
    }

    #[test]
    fn time_going_backwards_takes_nothing_extra() {
        let start = Instant::now() + Duration::from_secs(10);
        let mut bucket = TokenBucket::new(10, 1, start);
        assert!(bucket.take(start));
        assert!(!bucket.take(start - Duration::from_secs(5)));
    }
}
