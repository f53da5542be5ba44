//! `MemLog`: a [`ReplicaLog`] in memory, with the faults of a real disk on demand.
//!
//! The simulator runs the production [`ReplicaCore`](super::ReplicaCore) on it. It keeps
//! written entries apart from durable ones, so a [`crash`](MemLog::crash) loses exactly what
//! was never synced; it can be made [full](MemLog::set_full) (appends fail with
//! `STORAGE_FULL`, as when a segment cannot be reserved), and it can
//! [lose durable entries](MemLog::lose_durable_after) the way a damaged disk does, leaving the
//! voting-withheld marker that storage recovery writes. It follows [`crate::storage::Log`]'s
//! contract where the replica relies on it: hard state durable at once, truncation durable
//! at once, appends durable only after a sync, one sync epoch per truncation so that a
//! sync started before it cannot report the replaced entries.
//!
//! With [`MemLog::record`] it also keeps a journal of every change ([`LogEvent`]) for
//! checkers that judge what the replica did to its storage.

use bytes::Bytes;

use std::cell::Cell;

use crate::proto::{Entry, EntryKind, HardState, MembershipState};
use crate::raft::{entry_size_bytes, LogPosition};
use crate::storage::StorageError;

use super::core::ReplicaLog;

/// One change made to a [`MemLog`], as recorded in its journal.
#[derive(Debug, Clone, PartialEq)]
pub enum LogEvent {
    /// Term and vote written (durably).
    HardState(HardState),
    /// A snapshot position installed.
    Snapshot(LogPosition),
    /// Entries from `from` on removed; `dropped` lists each removed (index, term).
    Truncate {
        /// First index removed.
        from: u64,
        /// Every removed entry as (index, term).
        dropped: Vec<(u64, u64)>,
    },
    /// Entries appended after an entry of term `prev_term`.
    Append {
        /// Term of the entry just before the first appended one.
        prev_term: u64,
        /// The entries.
        entries: Vec<Entry>,
    },
}

/// A sync of a [`MemLog`]: everything up to `target_index` becomes durable when it completes,
/// unless a truncation came first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemSync {
    /// Last index the sync covers.
    pub target_index: u64,
    /// Term of that entry when the sync started.
    pub target_term: u64,
    /// The log's truncation epoch when the sync started.
    pub epoch: u64,
}

/// An in-memory partition log; see the module doc.
#[derive(Debug, Clone)]
pub struct MemLog {
    hard_state: HardState,
    /// The position just before the first entry (the snapshot, or 0@0).
    start: LogPosition,
    /// Entries after `start`, written (maybe not durable).
    entries: Vec<Entry>,
    durable_index: u64,
    /// Bumped by every truncation and snapshot: syncs started before are stale.
    epoch: u64,
    voting_withheld: Option<u64>,
    /// The stored configurations: durable at once, as the file is.
    membership: Option<MembershipState>,
    full: bool,
    retain_up_to: Option<u64>,
    journal: Option<Vec<LogEvent>>,
    /// Calls of [`ReplicaLog::entries`], so tests can see whether a reader hit storage.
    entry_reads: Cell<u64>,
}

impl Default for MemLog {
    fn default() -> Self {
        Self {
            hard_state: HardState {
                log_start_index: 1,
                ..HardState::default()
            },
            start: LogPosition::default(),
            entries: Vec::new(),
            durable_index: 0,
            epoch: 0,
            voting_withheld: None,
            membership: None,
            full: false,
            retain_up_to: None,
            journal: None,
            entry_reads: Cell::new(0),
        }
    }
}

impl MemLog {
    /// An empty log at term 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// A durable log holding `entries` (contiguous from index 1) at `current_term`.
    pub fn with_entries(entries: Vec<Entry>, current_term: u64) -> Self {
        let durable_index = entries.len() as u64;
        Self {
            hard_state: HardState {
                current_term,
                log_start_index: 1,
                ..HardState::default()
            },
            entries,
            durable_index,
            ..Self::default()
        }
    }

    /// Starts (or stops) keeping a journal of every change.
    pub fn record(&mut self, on: bool) {
        self.journal = on.then(Vec::new);
    }

    /// The changes since the last call (empty unless recording).
    pub fn take_journal(&mut self) -> Vec<LogEvent> {
        self.journal
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// How many times entries were read (the consensus core reads only what its cache lost).
    pub fn entry_reads(&self) -> u64 {
        self.entry_reads.get()
    }

    /// The written entries, from the log start.
    pub fn written(&self) -> &[Entry] {
        &self.entries
    }

    /// The written entry at `index`.
    pub fn entry(&self, index: u64) -> Option<&Entry> {
        let at = index.checked_sub(self.start.index + 1)?;
        self.entries.get(at as usize)
    }

    /// The snapshot position just before the first entry.
    pub fn start(&self) -> LogPosition {
        self.start
    }

    /// Makes appends fail as on a full disk (or work again).
    pub fn set_full(&mut self, full: bool) {
        self.full = full;
    }

    /// Whether appends fail as on a full disk.
    pub fn is_full(&self) -> bool {
        self.full
    }

    /// Asks the next retention pass to remove entries up to `index` (it never goes beyond
    /// the commit index or the durable index).
    pub fn retain_up_to(&mut self, index: u64) {
        self.retain_up_to = Some(index);
    }

    /// What survives a crash of the process: the durable prefix.
    pub fn crash(&mut self) {
        let keep = self.durable_index.saturating_sub(self.start.index) as usize;
        self.entries.truncate(keep);
        self.durable_index = self.last_index();
        self.epoch += 1;
    }

    /// A crash on a damaged disk: everything after `last_index` is gone, durable or not,
    /// and, as storage recovery does, the voting-withheld marker records the current term.
    pub fn lose_durable_after(&mut self, last_index: u64) {
        self.crash();
        let keep = last_index.saturating_sub(self.start.index) as usize;
        self.entries.truncate(keep);
        self.durable_index = self.durable_index.min(self.last_index());
        let earlier = self.voting_withheld.unwrap_or(0);
        self.voting_withheld = Some(earlier.max(self.hard_state.current_term));
    }

    fn journal(&mut self, event: LogEvent) {
        if let Some(journal) = self.journal.as_mut() {
            journal.push(event);
        }
    }

    fn set_start(&mut self, position: LogPosition) {
        self.start = position;
        self.hard_state.log_start_index = position.index + 1;
        self.hard_state.log_start_term = position.term;
        self.hard_state.log_start_offset = position.next_offset;
    }

    fn next_offset(&self) -> u64 {
        self.entries.last().map_or(self.start.next_offset, |e| {
            e.base_offset + u64::from(e.record_count)
        })
    }
}

impl ReplicaLog for MemLog {
    type SyncJob = MemSync;
    type SyncDone = MemSync;

    fn first_index(&self) -> u64 {
        self.start.index + 1
    }

    fn last_index(&self) -> u64 {
        self.start.index + self.entries.len() as u64
    }

    fn durable_index(&self) -> u64 {
        self.durable_index
    }

    fn start_offset(&self) -> u64 {
        self.start.next_offset
    }

    fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    fn term_at(&self, index: u64) -> Option<u64> {
        if index == self.start.index {
            return Some(self.start.term);
        }
        self.entry(index).map(|e| e.term)
    }

    fn entries(&self, lo: u64, hi: u64, bytes_max: u64) -> Result<Vec<Entry>, StorageError> {
        assert!(
            lo <= hi && hi <= self.last_index() + 1,
            "entries({lo}, {hi})"
        );
        if lo < self.first_index() {
            return Err(StorageError::Compacted {
                index: lo,
                first_index: self.first_index(),
            });
        }
        self.entry_reads.set(self.entry_reads.get() + 1);
        let mut out: Vec<Entry> = Vec::new();
        let mut bytes = 0;
        for index in lo..hi {
            let entry = self.entry(index).expect("in range");
            let size = entry_size_bytes(entry);
            if !out.is_empty() && bytes + size > bytes_max {
                break;
            }
            bytes += size;
            out.push(entry.clone());
        }
        Ok(out)
    }

    fn read_from_offset(&self, offset: u64, bytes_max: u64) -> Result<Vec<Entry>, StorageError> {
        if offset < self.start_offset() || offset > self.next_offset() {
            return Err(StorageError::OffsetOutOfRange {
                offset,
                start_offset: self.start_offset(),
                next_offset: self.next_offset(),
            });
        }
        let mut out: Vec<Entry> = Vec::new();
        let mut bytes = 0;
        let holding = self
            .entries
            .iter()
            .filter(|e| e.kind() == EntryKind::Data && e.record_count > 0)
            .skip_while(|e| e.base_offset + u64::from(e.record_count) <= offset);
        for entry in holding {
            let size = entry.payload.len() as u64;
            if !out.is_empty() && bytes + size > bytes_max {
                break;
            }
            bytes += size;
            out.push(entry.clone());
        }
        Ok(out)
    }

    fn size_bytes(&self) -> u64 {
        self.entries.iter().map(entry_size_bytes).sum()
    }

    fn segment_count(&self) -> usize {
        1
    }

    fn set_hard_state(&mut self, current_term: u64, voted_for: u64) -> Result<(), StorageError> {
        self.hard_state.current_term = current_term;
        self.hard_state.voted_for = voted_for;
        self.journal(LogEvent::HardState(self.hard_state));
        Ok(())
    }

    fn install_snapshot(
        &mut self,
        index: u64,
        term: u64,
        next_offset: u64,
    ) -> Result<(), StorageError> {
        let drop = index
            .min(self.last_index())
            .saturating_sub(self.start.index) as usize;
        if index > self.last_index() {
            self.entries.clear();
        } else {
            self.entries.drain(..drop);
        }
        let position = LogPosition {
            index,
            term,
            next_offset,
        };
        self.set_start(position);
        self.durable_index = self.durable_index.max(index);
        self.epoch += 1;
        self.journal(LogEvent::Snapshot(position));
        Ok(())
    }

    fn truncate_suffix(&mut self, from_index: u64, commit_index: u64) -> Result<(), StorageError> {
        assert!(
            from_index > commit_index,
            "truncate_suffix({from_index}) at or below commit index {commit_index}"
        );
        assert!(from_index >= self.first_index(), "truncating the snapshot");
        let keep = (from_index - self.first_index()) as usize;
        let dropped = self.entries[keep.min(self.entries.len())..]
            .iter()
            .map(|e| (e.index, e.term))
            .collect();
        self.entries.truncate(keep);
        // As on disk, the cut is durable and so is everything before it.
        self.durable_index = self.last_index();
        self.epoch += 1;
        self.journal(LogEvent::Truncate {
            from: from_index,
            dropped,
        });
        Ok(())
    }

    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        assert_eq!(first.index, self.last_index() + 1, "append gap");
        if self.full {
            return Err(StorageError::StorageFull {
                path: "memory".into(),
                bytes: entries.iter().map(entry_size_bytes).sum(),
            });
        }
        let prev_term = self.term_at(first.index - 1).expect("the entry before");
        self.entries.extend_from_slice(entries);
        self.journal(LogEvent::Append {
            prev_term,
            entries: entries.to_vec(),
        });
        Ok(())
    }

    fn poll_sync(&mut self, _now_ms: i64) -> Option<MemSync> {
        let target_index = self.last_index();
        (target_index > self.durable_index).then(|| MemSync {
            target_index,
            target_term: self.term_at(target_index).expect("last entry"),
            epoch: self.epoch,
        })
    }

    fn complete_sync(&mut self, done: MemSync) -> Result<u64, StorageError> {
        let current =
            done.epoch == self.epoch && self.term_at(done.target_index) == Some(done.target_term);
        if current {
            self.durable_index = self.durable_index.max(done.target_index);
        }
        Ok(self.durable_index)
    }

    fn sync(&mut self) -> Result<u64, StorageError> {
        self.durable_index = self.last_index();
        Ok(self.durable_index)
    }

    fn apply_retention(
        &mut self,
        _now_ms: i64,
        _retention_bytes: u64,
        _retention_ms: u64,
        commit_index: u64,
    ) -> Result<u64, StorageError> {
        let Some(wanted) = self.retain_up_to.take() else {
            return Ok(self.first_index());
        };
        let index = wanted.min(commit_index).min(self.durable_index);
        if index <= self.start.index {
            return Ok(self.first_index());
        }
        let entry = self.entry(index).expect("retained entry").clone();
        let drop = (index - self.start.index) as usize;
        self.entries.drain(..drop);
        self.set_start(LogPosition {
            index,
            term: entry.term,
            next_offset: entry.base_offset + u64::from(entry.record_count),
        });
        Ok(self.first_index())
    }

    fn membership(&self) -> Result<Option<MembershipState>, StorageError> {
        Ok(self.membership.clone())
    }

    fn set_membership(&mut self, state: &MembershipState) -> Result<(), StorageError> {
        // Replaced whole, as the file is: a full disk has no room for the new version.
        if self.full {
            return Err(StorageError::StorageFull {
                path: "membership".into(),
                bytes: 0,
            });
        }
        self.membership = Some(state.clone());
        Ok(())
    }

    fn voting_withheld(&self) -> Option<u64> {
        self.voting_withheld
    }

    fn clear_voting_withheld(&mut self) -> Result<(), StorageError> {
        self.voting_withheld = None;
        Ok(())
    }
}

/// A data entry for tests: `payload` at `index` and `term`, one record at offset `index - 1`.
pub fn data_entry(index: u64, term: u64, payload: Bytes) -> Entry {
    Entry {
        term,
        index,
        kind: EntryKind::Data as i32,
        base_offset: index - 1,
        record_count: 1,
        timestamp_ms: 0,
        payload,
    }
}
