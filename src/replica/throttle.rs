//! A node-wide rate for catch-up traffic: what every leader replica on a node may send to
//! its learners (new replicas of a move), together, per second.
//!
//! Moves copy whole logs; left alone, a few of them at once would take the disk and network
//! that producers' commits need. The consensus core spends a byte budget on learners only
//! ([`crate::raft::Raft::set_catch_up_budget`]; voters are never held back), and each
//! replica's driver tops that budget up every tick from this one token bucket, so the node's
//! catch-up traffic stays within the rate however many groups move. The rate can change at
//! run time (`raftlog serve` re-reads it from its configuration file on SIGHUP).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How much unused allowance the bucket keeps: a tenth of a second's worth, so an idle
/// period does not turn into a burst above the rate.
const BURST: Duration = Duration::from_millis(100);

/// The token bucket shared by every replica of a node.
#[derive(Debug)]
pub struct RecoveryThrottle {
    /// Bytes per second; 0 means unlimited.
    rate: AtomicU64,
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled_at: Instant,
}

impl RecoveryThrottle {
    /// A throttle of `bytes_per_second` (0: unlimited).
    pub fn new(bytes_per_second: u64) -> Self {
        RecoveryThrottle {
            rate: AtomicU64::new(bytes_per_second),
            bucket: Mutex::new(Bucket {
                tokens: 0.0,
                refilled_at: Instant::now(),
            }),
        }
    }

    /// Bytes per second now; 0 means unlimited.
    pub fn rate(&self) -> u64 {
        self.rate.load(Ordering::Relaxed)
    }

    /// Changes the rate from now on (0: unlimited).
    pub fn set_rate(&self, bytes_per_second: u64) {
        self.rate.store(bytes_per_second, Ordering::Relaxed);
    }

    /// Takes up to `wanted` bytes of allowance, as much as has accrued; `None` when the rate
    /// is unlimited.
    pub fn take(&self, wanted: u64) -> Option<u64> {
        let rate = self.rate();
        if rate == 0 {
            return None;
        }
        let mut bucket = self
            .bucket
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        let elapsed = now.duration_since(bucket.refilled_at).as_secs_f64();
        let burst = rate as f64 * BURST.as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate as f64).min(burst.max(1.0));
        bucket.refilled_at = now;
        let granted = bucket.tokens.min(wanted as f64).floor();
        bucket.tokens -= granted;
        Some(granted as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_grants_nothing_to_count_and_a_rate_grants_what_accrued() {
        let throttle = RecoveryThrottle::new(0);
        assert_eq!(throttle.take(1 << 20), None);
        throttle.set_rate(1_000_000);
        let started = Instant::now();
        let mut granted = 0;
        while started.elapsed() < Duration::from_millis(300) {
            granted += throttle.take(64 * 1024).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        let allowed = started.elapsed().as_secs_f64() * 1_000_000.0;
        assert!(granted as f64 <= allowed + 1.0, "{granted} > {allowed}");
        assert!(granted > 0);
    }

    #[test]
    fn an_idle_period_does_not_become_a_burst() {
        let throttle = RecoveryThrottle::new(1_000_000);
        std::thread::sleep(Duration::from_millis(300));
        let granted = throttle.take(u64::MAX).unwrap();
        assert!(granted <= 100_000, "{granted}");
    }
}
