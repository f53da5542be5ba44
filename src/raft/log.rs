//! The core's view of the log: positions, a compact term index, and a bounded entry cache.
//!
//! The core never holds the whole log. It keeps:
//! - the log start ([`LogPosition`]): everything up to and including `start.index` is gone
//!   (compacted by retention or replaced by an installed snapshot);
//! - a term index: runs of equal terms covering `(start.index, last_index]`, enough to answer
//!   `term_at` for any index without touching storage;
//! - a contiguous cache of the most recent entries, which always includes every entry not
//!   yet durable; durable entries are evicted oldest first beyond `entry_cache_bytes_max`.
//!
//! Older entries are fetched through a caller-supplied [`LogReader`] borrowed per call.

use std::collections::VecDeque;

use crate::proto::Entry;

use super::config::ENTRY_OVERHEAD_BYTES;

/// The size an entry is accounted at in every byte limit: payload plus a fixed overhead.
pub fn entry_size_bytes(entry: &Entry) -> u64 {
    entry.payload.len() as u64 + ENTRY_OVERHEAD_BYTES
}

/// A position in the log: the last entry covered by a snapshot or compaction.
///
/// The snapshot of a partition *is* this position: its log starts right after it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogPosition {
    /// Index of the last entry covered.
    pub index: u64,
    /// Term of the entry at `index`.
    pub term: u64,
    /// Record offset of the first record after `index`.
    pub next_offset: u64,
}

/// Why a [`LogReader`] could not return entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadError {
    /// The entries were deleted by retention; the follower needs a snapshot.
    Compacted,
    /// The entries cannot be read right now (IO error, not yet written); retried later.
    Unavailable,
}

/// Read access to the durable log, lent to the core for the duration of one call.
///
/// The core never does IO itself: when it must send entries older than its cache (a lagging
/// follower) it reads them through this trait, synchronously, inside [`super::Raft::ready`].
/// Implementations must be deterministic for a deterministic simulation.
pub trait LogReader {
    /// Entries with indexes in `[lo, hi)`, in order, starting exactly at `lo`, stopping early
    /// once their accounted size ([`entry_size_bytes`]) would exceed `bytes_max`, but always
    /// at least one entry when `lo < hi`.
    ///
    /// # Errors
    /// [`ReadError::Compacted`] if `lo` is before the log start, else `Unavailable`.
    fn entries(&self, lo: u64, hi: u64, bytes_max: u64) -> Result<Vec<Entry>, ReadError>;

    /// The term of the entry at `index` (used only when restoring the core from storage).
    ///
    /// # Errors
    /// [`ReadError`] if there is no readable entry at `index`.
    fn term_at(&self, index: u64) -> Result<u64, ReadError>;
}

/// A reader over an empty store: for cores that never need to read back (fresh groups,
/// single-node tests).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoLog;

impl LogReader for NoLog {
    fn entries(&self, _lo: u64, _hi: u64, _bytes_max: u64) -> Result<Vec<Entry>, ReadError> {
        Err(ReadError::Unavailable)
    }

    fn term_at(&self, _index: u64) -> Result<u64, ReadError> {
        Err(ReadError::Unavailable)
    }
}

/// A run of consecutive entries with the same term, from `first_index` up to the next run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TermRun {
    /// Index of the first entry of the run.
    pub first_index: u64,
    /// Term of every entry of the run.
    pub term: u64,
}

/// The in-memory log state of one core. Invariants (checked by `check`):
/// `start.index <= commit_index <= last_index`, `persisted_index <= last_index`,
/// runs strictly increasing in both fields and the first run starting at `start.index + 1`,
/// the cache contiguous and ending at `last_index`, every entry above `persisted_index` cached.
#[derive(Debug)]
pub(crate) struct RaftLog {
    /// The last compacted position; entries `<= start.index` are gone.
    pub start: LogPosition,
    /// Term index for `(start.index, last_index]`.
    runs: Vec<TermRun>,
    /// Index of the last entry (equals `start.index` when the log is empty).
    pub last_index: u64,
    /// Record offset right after the last entry: the next leader-stamped `base_offset`.
    pub next_offset: u64,
    /// Recent entries, contiguous, ending at `last_index`.
    cache: VecDeque<Entry>,
    /// Accounted bytes of `cache`.
    cache_bytes: u64,
    /// Eviction threshold for durable cached entries.
    cache_bytes_max: u64,
    /// The last index known durable in this member's own storage, matching this log.
    pub persisted_index: u64,
    /// The last index known committed.
    pub commit_index: u64,
}

impl RaftLog {
    /// A log restored from storage: everything up to `last_index` is durable.
    pub fn new(start: LogPosition, runs: Vec<TermRun>, last_index: u64, next_offset: u64) -> Self {
        let log = Self {
            start,
            runs,
            last_index,
            next_offset,
            cache: VecDeque::new(),
            cache_bytes: 0,
            cache_bytes_max: 0,
            persisted_index: last_index,
            commit_index: start.index,
        };
        log.check();
        log
    }

    /// Sets the cache limit (from the config).
    pub fn set_cache_bytes_max(&mut self, bytes: u64) {
        self.cache_bytes_max = bytes;
    }

    /// Asserts the invariants listed on the type.
    pub fn check(&self) {
        assert!(
            self.start.index <= self.commit_index,
            "commit {} before start {:?}",
            self.commit_index,
            self.start
        );
        assert!(
            self.commit_index <= self.last_index,
            "commit {} past last {}",
            self.commit_index,
            self.last_index
        );
        assert!(
            self.persisted_index <= self.last_index,
            "persisted {} past last {}",
            self.persisted_index,
            self.last_index
        );
        if let Some(first) = self.runs.first() {
            assert_eq!(
                first.first_index,
                self.start.index + 1,
                "first run {first:?} vs start {:?}",
                self.start
            );
        } else {
            assert_eq!(
                self.last_index, self.start.index,
                "no runs but entries after start"
            );
        }
        if let Some(front) = self.cache.front() {
            assert_eq!(
                front.index + self.cache.len() as u64 - 1,
                self.last_index,
                "cache not ending at last"
            );
        }
    }

    /// The term of the entry at `index`, or `None` if compacted or beyond the end.
    pub fn term_at(&self, index: u64) -> Option<u64> {
        if index == self.start.index {
            return Some(self.start.term);
        }
        if index < self.start.index || index > self.last_index {
            return None;
        }
        let run = self.runs.partition_point(|r| r.first_index <= index) - 1;
        Some(self.runs[run].term)
    }

    /// The term of the last entry.
    pub fn last_term(&self) -> u64 {
        self.term_at(self.last_index)
            .expect("last entry always has a term")
    }

    /// The runs of the term index (for inspection and tests).
    pub fn runs(&self) -> &[TermRun] {
        &self.runs
    }

    /// The first index of the run containing `index` (`index` must be in the log).
    pub fn run_first_index(&self, index: u64) -> u64 {
        assert!(
            index > self.start.index && index <= self.last_index,
            "index {index} outside log"
        );
        let run = self.runs.partition_point(|r| r.first_index <= index) - 1;
        self.runs[run].first_index
    }

    /// The last index holding an entry of `term`, if this log has any.
    pub fn last_index_of_term(&self, term: u64) -> Option<u64> {
        let run = self.runs.iter().position(|r| r.term == term)?;
        Some(
            self.runs
                .get(run + 1)
                .map_or(self.last_index, |next| next.first_index - 1),
        )
    }

    /// Whether a log ending at (`index`, `term`) is at least as up to date as this one (§5.4.1).
    pub fn is_up_to_date(&self, index: u64, term: u64) -> bool {
        let last_term = self.last_term();
        term > last_term || (term == last_term && index >= self.last_index)
    }

    /// Appends `entries` right after `last_index`, recording terms and offsets.
    pub fn append(&mut self, entries: &[Entry]) {
        for entry in entries {
            assert_eq!(
                entry.index,
                self.last_index + 1,
                "append gap: entry {} after {}",
                entry.index,
                self.last_index
            );
            let last_term = self.last_term();
            assert!(
                entry.term >= last_term,
                "entry {} term {} below last term {last_term}",
                entry.index,
                entry.term
            );
            if entry.term != last_term || self.runs.is_empty() {
                self.runs.push(TermRun {
                    first_index: entry.index,
                    term: entry.term,
                });
            }
            self.last_index = entry.index;
            self.next_offset = entry.base_offset + u64::from(entry.record_count);
            self.cache_bytes += entry_size_bytes(entry);
            self.cache.push_back(entry.clone());
        }
        self.evict();
    }

    /// Drops entries `>= index` (a follower's conflicting suffix); a new append follows.
    pub fn truncate_from(&mut self, index: u64) {
        assert!(
            index > self.commit_index,
            "truncating committed entry {index} (commit {})",
            self.commit_index
        );
        assert!(
            index <= self.last_index,
            "truncating past the end: {index} > {}",
            self.last_index
        );
        self.runs.retain(|r| r.first_index < index);
        self.last_index = index - 1;
        self.persisted_index = self.persisted_index.min(index - 1);
        match self.cache.front().map(|e| e.index) {
            Some(front) if front < index => {
                while self.cache.back().is_some_and(|e| e.index >= index) {
                    let e = self.cache.pop_back().expect("checked non-empty");
                    self.cache_bytes -= entry_size_bytes(&e);
                }
            }
            _ => self.clear_cache(),
        }
        // The next offset is only needed by a leader, and a truncation is always followed by
        // an append that sets it again; use the best value known until then.
        self.next_offset = self.cache.back().map_or(self.start.next_offset, |e| {
            e.base_offset + u64::from(e.record_count)
        });
    }

    /// Moves the log start to `position` (retention or snapshot), keeping later entries.
    ///
    /// The entry at `position.index` must be in the log with the same term.
    pub fn compact(&mut self, position: LogPosition) {
        assert!(
            position.index >= self.start.index,
            "compaction backwards: {position:?} < {:?}",
            self.start
        );
        assert_eq!(
            self.term_at(position.index),
            Some(position.term),
            "compaction position {position:?} not in log"
        );
        let keep = self
            .runs
            .partition_point(|r| r.first_index <= position.index);
        let covering = keep.checked_sub(1).map(|i| self.runs[i]);
        self.runs.drain(..keep);
        if let Some(run) = covering {
            if position.index < self.last_index
                && self
                    .runs
                    .first()
                    .is_none_or(|r| r.first_index > position.index + 1)
            {
                self.runs.insert(
                    0,
                    TermRun {
                        first_index: position.index + 1,
                        term: run.term,
                    },
                );
            }
        }
        self.start = position;
        self.commit_index = self.commit_index.max(position.index);
        self.persisted_index = self.persisted_index.max(position.index);
        while self
            .cache
            .front()
            .is_some_and(|e| e.index <= position.index)
        {
            let e = self.cache.pop_front().expect("checked non-empty");
            self.cache_bytes -= entry_size_bytes(&e);
        }
        if self.last_index == position.index {
            self.next_offset = position.next_offset;
        }
        self.check();
    }

    /// Replaces the whole log by an empty one starting after `position` (snapshot install).
    pub fn reset(&mut self, position: LogPosition) {
        self.start = position;
        self.runs.clear();
        self.last_index = position.index;
        self.next_offset = position.next_offset;
        self.clear_cache();
        self.persisted_index = position.index;
        self.commit_index = position.index;
    }

    /// Records that storage made entries up to (`index`, `term`) durable. Returns false (and
    /// changes nothing) for a stale report: the entry at `index` no longer has that term, or
    /// the report is not news.
    pub fn persisted(&mut self, index: u64, term: u64) -> bool {
        if index <= self.persisted_index || self.term_at(index) != Some(term) {
            return false;
        }
        self.persisted_index = index;
        self.evict();
        true
    }

    /// Cached entries from `lo` (inclusive, must be cached) up to `hi` (exclusive), at most
    /// `bytes_max` accounted bytes but at least one entry.
    pub fn cached(&self, lo: u64, hi: u64, bytes_max: u64) -> Vec<Entry> {
        let front = self
            .cache_first_index()
            .expect("cached() on an empty cache");
        assert!(
            lo >= front && lo < hi && hi <= self.last_index + 1,
            "bad range [{lo}, {hi}) for cache from {front}"
        );
        let mut out = Vec::new();
        let mut bytes = 0;
        for entry in self
            .cache
            .range((lo - front) as usize..(hi - front) as usize)
        {
            let size = entry_size_bytes(entry);
            if !out.is_empty() && bytes + size > bytes_max {
                break;
            }
            bytes += size;
            out.push(entry.clone());
        }
        out
    }

    /// The index of the oldest cached entry, if any.
    pub fn cache_first_index(&self) -> Option<u64> {
        self.cache.front().map(|e| e.index)
    }

    /// The accounted bytes of the cache.
    pub fn cache_bytes(&self) -> u64 {
        self.cache_bytes
    }

    fn clear_cache(&mut self) {
        self.cache.clear();
        self.cache_bytes = 0;
    }

    /// Evicts durable entries, oldest first, while the cache is over its limit.
    fn evict(&mut self) {
        while self.cache_bytes > self.cache_bytes_max {
            match self.cache.front() {
                Some(e) if e.index <= self.persisted_index => {
                    self.cache_bytes -= entry_size_bytes(e);
                    self.cache.pop_front();
                }
                _ => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn entry(index: u64, term: u64, payload_bytes: usize) -> Entry {
        Entry {
            term,
            index,
            kind: crate::proto::EntryKind::Data as i32,
            base_offset: (index - 1) * 2,
            record_count: 2,
            timestamp_ms: 0,
            payload: Bytes::from(vec![0; payload_bytes]),
        }
    }

    fn log_with(terms: &[u64]) -> RaftLog {
        let mut log = RaftLog::new(LogPosition::default(), Vec::new(), 0, 0);
        log.set_cache_bytes_max(u64::MAX);
        let entries: Vec<Entry> = terms
            .iter()
            .enumerate()
            .map(|(i, &t)| entry(i as u64 + 1, t, 1))
            .collect();
        log.append(&entries);
        log
    }

    #[test]
    fn term_index_keeps_one_run_per_term() {
        let log = log_with(&[1, 1, 2, 2, 2, 5]);
        assert_eq!(log.runs().len(), 3);
        assert_eq!(
            (
                log.term_at(0),
                log.term_at(2),
                log.term_at(3),
                log.term_at(6),
                log.term_at(7)
            ),
            (Some(0), Some(1), Some(2), Some(5), None)
        );
        assert_eq!(log.last_index_of_term(2), Some(5));
        assert_eq!(log.last_index_of_term(3), None);
        assert_eq!(log.run_first_index(5), 3);
        assert_eq!(log.next_offset, 12);
    }

    #[test]
    fn truncate_drops_runs_cache_and_durability() {
        let mut log = log_with(&[1, 1, 2, 2]);
        assert!(log.persisted(4, 2));
        log.truncate_from(3);
        assert_eq!(
            (log.last_index, log.persisted_index, log.runs().len()),
            (2, 2, 1)
        );
        assert_eq!(log.cached(1, 3, u64::MAX).len(), 2);
        assert_eq!(log.next_offset, 4);
    }

    #[test]
    fn stale_persisted_report_is_ignored() {
        let mut log = log_with(&[1, 1, 1]);
        log.truncate_from(2);
        log.append(&[entry(2, 3, 1), entry(3, 3, 1)]);
        assert!(!log.persisted(3, 1), "term at 3 is now 3");
        assert!(log.persisted(3, 3));
        assert!(!log.persisted(2, 3), "not news");
    }

    #[test]
    fn compact_keeps_suffix_and_splits_run() {
        let mut log = log_with(&[1, 1, 1, 2, 2]);
        log.persisted(5, 2);
        log.commit_index = 5;
        log.compact(LogPosition {
            index: 2,
            term: 1,
            next_offset: 4,
        });
        assert_eq!(
            log.runs()[0],
            TermRun {
                first_index: 3,
                term: 1
            }
        );
        assert_eq!(
            (log.term_at(1), log.term_at(2), log.term_at(3)),
            (None, Some(1), Some(1))
        );
        assert_eq!(log.cache_first_index(), Some(3));
        log.compact(LogPosition {
            index: 5,
            term: 2,
            next_offset: 10,
        });
        assert!(log.runs().is_empty());
        assert_eq!((log.last_index, log.last_term()), (5, 2));
    }

    #[test]
    fn cache_evicts_only_durable_entries() {
        let mut log = RaftLog::new(LogPosition::default(), Vec::new(), 0, 0);
        log.set_cache_bytes_max(2 * (ENTRY_OVERHEAD_BYTES + 10));
        let entries: Vec<Entry> = (1..=5).map(|i| entry(i, 1, 10)).collect();
        log.append(&entries);
        assert_eq!(
            log.cache_first_index(),
            Some(1),
            "nothing durable: everything kept"
        );
        log.persisted(4, 1);
        assert_eq!(
            log.cache_first_index(),
            Some(4),
            "durable entries evicted down to the limit"
        );
        let batch = log.cached(4, 6, ENTRY_OVERHEAD_BYTES + 10);
        assert_eq!(batch.len(), 1, "bytes limit respected");
    }
}
