//! Retry delays: exponential backoff with jitter, from a seeded generator.
//!
//! One backoff for every retry loop: peer reconnects (`transport`) and client retries
//! (`client`). Jitter keeps the nodes of a cluster from reconnecting to a restarted peer in
//! lockstep, and keeps many clients from retrying against a new leader in the same instant.
//! The generator is a seeded [`SplitMix64`], so a test replays the same delays.

use std::time::Duration;

use crate::rng::SplitMix64;

/// Delays between reconnection attempts: attempt `n` (from 0) waits a uniformly drawn time in
/// `[max(min, c/2), c]` with ceiling `c = min(max, min × 2^(n+1))`, so delays double until they
/// reach `max`, and every delay lies in `[min, max]`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min_ms: u64,
    max_ms: u64,
    attempt: u32,
    rng: SplitMix64,
}

impl Backoff {
    /// A backoff between `min` and `max` whose jitter is drawn from `seed`.
    ///
    /// # Panics
    /// If `min` is zero or above `max` (the configuration is validated before this).
    pub fn new(min: Duration, max: Duration, seed: u64) -> Self {
        let min_ms = u64::try_from(min.as_millis()).unwrap_or(u64::MAX);
        let max_ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
        assert!(min_ms > 0, "backoff minimum must be positive");
        assert!(
            min_ms <= max_ms,
            "backoff minimum {min_ms} ms above maximum {max_ms} ms"
        );
        Self {
            min_ms,
            max_ms,
            attempt: 0,
            rng: SplitMix64::new(seed),
        }
    }

    /// The delay before the next attempt; each call counts one more failed attempt.
    pub fn next_delay(&mut self) -> Duration {
        let doublings = self.attempt.saturating_add(1).min(63);
        let ceiling = self
            .min_ms
            .checked_shl(doublings)
            .filter(|ceiling| ceiling >> doublings == self.min_ms)
            .unwrap_or(u64::MAX)
            .min(self.max_ms);
        let floor = (ceiling / 2).max(self.min_ms);
        let span = ceiling - floor + 1;
        let delay = floor + self.rng.next_u64() % span;
        self.attempt = self.attempt.saturating_add(1);
        Duration::from_millis(delay)
    }

    /// Starts over from the shortest delays, after a successful connection.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_maximum_and_stay_in_range() {
        let (min, max) = (Duration::from_millis(50), Duration::from_millis(2_000));
        let mut backoff = Backoff::new(min, max, 42);
        let delays: Vec<Duration> = (0..40).map(|_| backoff.next_delay()).collect();
        assert!(delays.iter().all(|d| (min..=max).contains(d)), "{delays:?}");
        assert!(delays[0] <= Duration::from_millis(100), "{delays:?}");
        assert!(
            delays[30..].iter().all(|d| *d >= max / 2),
            "late delays reach the top: {delays:?}"
        );
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn same_seed_same_delays_other_seed_other_delays() {
        let make = |seed| {
            let mut backoff =
                Backoff::new(Duration::from_millis(10), Duration::from_secs(10), seed);
            (0..12).map(|_| backoff.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(make(7), make(7));
        assert_ne!(make(7), make(8));
    }

    #[test]
    fn equal_min_and_max_is_a_constant_delay() {
        let d = Duration::from_millis(30);
        let mut backoff = Backoff::new(d, d, 1);
        assert!((0..100).all(|_| backoff.next_delay() == d));
    }
}
