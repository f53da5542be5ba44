//! Choosing a partition for a record: explicit, by key hash, or round-robin.
//!
//! Records with a key go to `(murmur2(key) & 0x7fffffff) % partitions`, with exactly the
//! murmur2 variant (seed `0x9747b28c`) and positive mask of Kafka's default partitioner, so a
//! key lands on the same partition number in raftlog as in Kafka for the same partition count,
//! and on the same partition across producer restarts and client versions. Records without a
//! key are spread round-robin. This module owns only that choice; it knows nothing of the
//! network.

use std::sync::atomic::{AtomicU32, Ordering};

/// Kafka's murmur2 seed.
const MURMUR2_SEED: u32 = 0x9747_b28c;
/// murmur2's multiplier.
const MURMUR2_M: u32 = 0x5bd1_e995;

/// Kafka's 32-bit murmur2 hash of `data` (as a `u32`; Kafka's Java `int` has the same bits).
pub fn murmur2(data: &[u8]) -> u32 {
    let mut h = MURMUR2_SEED ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(MURMUR2_M);
        k ^= k >> 24;
        k = k.wrapping_mul(MURMUR2_M);
        h = h.wrapping_mul(MURMUR2_M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(MURMUR2_M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(MURMUR2_M);
    h ^= h >> 15;
    h
}

/// The partition, in `[0, partitions)`, for a record with `key`.
///
/// # Panics
/// If `partitions` is 0: a topic always has at least one partition.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    assert!(partitions > 0, "a topic has at least one partition");
    (murmur2(key) & 0x7fff_ffff) % partitions
}

/// Picks partitions for records without an explicit partition.
#[derive(Debug, Default)]
pub struct Partitioner {
    /// Next partition for a record without a key; wraps around.
    round_robin: AtomicU32,
}

impl Partitioner {
    /// A partitioner whose round-robin starts at partition 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// The partition, in `[0, partitions)`, for a record with `key` (hashed) or without
    /// (the next one round-robin).
    ///
    /// # Panics
    /// If `partitions` is 0.
    pub fn partition(&self, key: Option<&[u8]>, partitions: u32) -> u32 {
        assert!(partitions > 0, "a topic has at least one partition");
        match key {
            Some(key) => partition_for_key(key, partitions),
            None => self.round_robin.fetch_add(1, Ordering::Relaxed) % partitions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values Kafka's own test suite expects from `Utils.murmur2` (as Java ints).
    #[test]
    fn murmur2_matches_kafka() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (data, expected) in cases {
            assert_eq!(
                murmur2(data) as i32,
                expected,
                "{}",
                String::from_utf8_lossy(data)
            );
        }
    }

    #[test]
    fn same_key_same_partition() {
        // Pinned values: changing them moves every keyed record of every user.
        assert_eq!(
            partition_for_key(b"user-1", 3),
            partition_for_key(b"user-1", 3)
        );
        assert_eq!(
            partition_for_key(b"foobar", 3),
            (-790_332_482i32 as u32 & 0x7fff_ffff) % 3
        );
        assert_eq!(partition_for_key(b"", 1), 0);
        let partitioner = Partitioner::new();
        for _ in 0..10 {
            assert_eq!(
                partitioner.partition(Some(b"order-42"), 8),
                partition_for_key(b"order-42", 8)
            );
        }
    }

    #[test]
    fn keys_spread_over_partitions() {
        let mut counts = [0u32; 4];
        for i in 0..4000 {
            counts[partition_for_key(format!("key-{i}").as_bytes(), 4) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }

    #[test]
    fn no_key_goes_round_robin() {
        let partitioner = Partitioner::new();
        let picks: Vec<u32> = (0..7).map(|_| partitioner.partition(None, 3)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0]);
    }
}
