//! Storage: the segmented, mmap-backed write-ahead log of one partition, its hard state, and
//! crash recovery.
//!
//! Owns everything on disk for a partition directory; it knows nothing of Raft messages,
//! networking or the async runtime (the replica driver joins those to it). Every method is
//! blocking and synchronous; durability can run off the caller's thread through the
//! two-phase sync in [`sync`].
//!
//! # Files of a partition directory
//!
//! | file | content |
//! | --- | --- |
//! | `<first index, 20 digits>.log` | a segment: preallocated, memory-mapped frames (see [`frame`]) |
//! | `<first index, 20 digits>.index` | its summary and sparse index (see [`index`]), a hint rebuilt when missing or damaged |
//! | `hard_state` | current term, vote and log start: two fixed 4 KiB slots updated in place (see [`hard_state`]) |
//! | `membership` | the group configurations the replica must remember: the one at the log start and every configuration entry after it (see [`membership`]); absent until the first change |
//! | `*.tmp` | half-made files of an interrupted replace; deleted at open |
//!
//! # Map of the module
//!
//! | file | owns |
//! | --- | --- |
//! | [`frame`] | the byte layout of one entry and its checks (pure) |
//! | [`index`] | the per-segment summary, term runs and sparse positions (pure) |
//! | `segment` | one segment file: fallocate, map, write, scan, shared `Bytes` views |
//! | [`hard_state`] | the hard state file, updated in place without new blocks |
//! | [`membership`] | the membership file, replaced whole |
//! | [`recovery`] | the decision table applied at open |
//! | [`log`] | [`Log`]: append, reads, truncation, retention, snapshots |
//! | [`sync`] | the two-phase sync that runs off the log's thread |
//! | [`error`] | [`StorageError`] |
//!
//! # Limits
//! Every limit is a field of [`LogConfig`], checked by [`LogConfig::validate`]; the bounds
//! below say why they are what they are.

pub mod error;
pub mod frame;
pub mod hard_state;
pub mod index;
pub mod log;
pub mod membership;
pub mod recovery;
mod segment;
pub mod sync;

#[cfg(test)]
mod model_tests;

pub use error::StorageError;
pub use hard_state::{remove_file_durably, write_file_durably};
pub use log::Log;
pub use recovery::{RecoveryReport, TailState, VOTING_WITHHELD_FILE};
pub use sync::{SyncDone, SyncJob};

/// Smallest segment: one page of frames. Tests use small segments to exercise rolls.
pub const SEGMENT_SIZE_BYTES_MIN: u64 = 4096;
/// Largest segment: positions in the sparse index and frame lengths are well inside `u32`,
/// and one mapping of this size per active segment is cheap to keep.
pub const SEGMENT_SIZE_BYTES_MAX: u64 = 1 << 30;
/// Most sealed segments mapped at once: the kernel allows about 65k mappings per process
/// (`vm.max_map_count`) shared by every partition, so each log keeps only a few.
pub const MAPPED_SEGMENTS_MAX_LIMIT: usize = 1024;

/// When appended entries are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Sync every appended batch before reporting it durable (the default; one sync covers
    /// every batch appended since the previous one: group commit).
    Always,
    /// Sync at most once per this many milliseconds.
    Interval(u64),
    /// Never sync on the write path (only at segment roll, truncation and close): a crash of
    /// the machine can lose acknowledged entries.
    Never,
}

/// Configuration of one partition's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Bytes preallocated per segment; a segment rolls when the next frame does not fit.
    /// One entry's frame (48 bytes + payload) must fit in one segment.
    pub segment_size_bytes: u64,
    /// Bytes of frames between two sparse index points: smaller finds an entry with less
    /// scanning, larger keeps the index smaller.
    pub index_interval_bytes: u64,
    /// When to sync.
    pub sync_policy: SyncPolicy,
    /// Most sealed segments kept mapped for reads at once (the active one is always mapped).
    pub mapped_segments_max: usize,
    /// Scan and CRC-check every sealed segment at open (slower open, but damage is found
    /// before the node serves or votes). When false, a sealed segment's `.index` file is
    /// trusted after a light check, and damage surfaces as a read error instead.
    pub verify_sealed_on_open: bool,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            segment_size_bytes: 64 << 20,
            index_interval_bytes: 4096,
            sync_policy: SyncPolicy::Always,
            mapped_segments_max: 8,
            verify_sealed_on_open: true,
        }
    }
}

impl LogConfig {
    /// Checks every limit.
    ///
    /// # Errors
    /// `InvalidConfig` naming the first field out of range.
    pub fn validate(&self) -> Result<(), StorageError> {
        let fail = |what: String| Err(StorageError::InvalidConfig(what));
        if !(SEGMENT_SIZE_BYTES_MIN..=SEGMENT_SIZE_BYTES_MAX).contains(&self.segment_size_bytes) {
            return fail(format!(
                "segment_size_bytes {} outside [{SEGMENT_SIZE_BYTES_MIN}, {SEGMENT_SIZE_BYTES_MAX}]",
                self.segment_size_bytes
            ));
        }
        if self.index_interval_bytes == 0 || self.index_interval_bytes > self.segment_size_bytes {
            return fail(format!(
                "index_interval_bytes {} outside [1, segment_size_bytes]",
                self.index_interval_bytes
            ));
        }
        if self.mapped_segments_max == 0 || self.mapped_segments_max > MAPPED_SEGMENTS_MAX_LIMIT {
            return fail(format!(
                "mapped_segments_max {} outside [1, {MAPPED_SEGMENTS_MAX_LIMIT}]",
                self.mapped_segments_max
            ));
        }
        if self.sync_policy == SyncPolicy::Interval(0) {
            return fail("sync interval of 0 ms: use SyncPolicy::Always".to_string());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid_and_limits_are_checked() {
        LogConfig::default().validate().unwrap();
        let bad = [
            LogConfig {
                segment_size_bytes: 100,
                ..LogConfig::default()
            },
            LogConfig {
                index_interval_bytes: 0,
                ..LogConfig::default()
            },
            LogConfig {
                mapped_segments_max: 0,
                ..LogConfig::default()
            },
            LogConfig {
                sync_policy: SyncPolicy::Interval(0),
                ..LogConfig::default()
            },
        ];
        for config in bad {
            assert!(
                matches!(config.validate(), Err(StorageError::InvalidConfig(_))),
                "{config:?}"
            );
        }
    }
}
