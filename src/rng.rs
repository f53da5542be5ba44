//! A tiny seeded pseudo-random generator (SplitMix64): election timeouts, reconnection jitter,
//! the simulator's and the fault suite's fault streams.
//!
//! The Raft core must be deterministic: same seed and same inputs give the same outputs. So it
//! owns a generator instead of asking the operating system or a global random source, and the
//! rest of the crate uses the same one rather than a second copy or a random-number crate.

/// SplitMix64 (Steele, Lea, Flood 2014): one `u64` of state, good enough statistical quality
/// for spreading election timeouts, and trivially reproducible from a seed.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    /// The whole generator state; advanced by a fixed odd constant per draw.
    state: u64,
}

impl SplitMix64 {
    /// Creates a generator from `seed` (any value, including 0, is fine).
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// Returns the next pseudo-random `u64`.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Returns a value in `[low, high)`.
    ///
    /// # Panics
    /// If `low >= high`.
    pub fn range_u32(&mut self, low: u32, high: u32) -> u32 {
        assert!(low < high, "empty range [{low}, {high})");
        let span = u64::from(high - low);
        // The modulo bias is at most span / 2^64: irrelevant for timeouts of a few ticks.
        low + (self.next_u64() % span) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence() {
        let mut a = SplitMix64::new(7);
        let mut b = SplitMix64::new(7);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
    }

    #[test]
    fn range_stays_in_bounds() {
        let mut r = SplitMix64::new(1);
        for _ in 0..1000 {
            let v = r.range_u32(10, 20);
            assert!((10..20).contains(&v));
        }
    }
}
