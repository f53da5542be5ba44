//! [`Log`] as a [`ReplicaLog`]: the replica core's storage in a node.
//!
//! The calls that may wait for the disk (hard state, truncation, snapshot install, the
//! append, retention, a sync, the marker removal) run under `block_in_place`, so a replica
//! waiting for its disk never stalls the other tasks of its worker thread. This is the only
//! place where the replica's storage calls meet tokio; the core itself knows nothing of it.

use crate::proto::{Entry, HardState, MembershipState};
use crate::storage::{Log, StorageError, SyncDone, SyncJob};

use super::core::ReplicaLog;

/// Runs `call`, which may block on the disk, without stalling the worker's other tasks.
fn blocking<T>(call: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(call)
}

impl ReplicaLog for Log {
    type SyncJob = SyncJob;
    type SyncDone = SyncDone;

    fn first_index(&self) -> u64 {
        Log::first_index(self)
    }

    fn last_index(&self) -> u64 {
        Log::last_index(self)
    }

    fn durable_index(&self) -> u64 {
        Log::durable_index(self)
    }

    fn start_offset(&self) -> u64 {
        Log::start_offset(self)
    }

    fn hard_state(&self) -> &HardState {
        Log::hard_state(self)
    }

    fn term_at(&self, index: u64) -> Option<u64> {
        Log::term_at(self, index)
    }

    fn entries(&self, lo: u64, hi: u64, bytes_max: u64) -> Result<Vec<Entry>, StorageError> {
        Log::entries(self, lo, hi, bytes_max)
    }

    fn read_from_offset(&self, offset: u64, bytes_max: u64) -> Result<Vec<Entry>, StorageError> {
        Log::read_from_offset(self, offset, bytes_max)
    }

    fn size_bytes(&self) -> u64 {
        Log::size_bytes(self)
    }

    fn segment_count(&self) -> usize {
        Log::segment_count(self)
    }

    fn set_hard_state(&mut self, current_term: u64, voted_for: u64) -> Result<(), StorageError> {
        blocking(|| Log::set_hard_state(self, current_term, voted_for))
    }

    fn install_snapshot(
        &mut self,
        index: u64,
        term: u64,
        next_offset: u64,
    ) -> Result<(), StorageError> {
        blocking(|| Log::install_snapshot(self, index, term, next_offset))
    }

    fn truncate_suffix(&mut self, from_index: u64, commit_index: u64) -> Result<(), StorageError> {
        blocking(|| Log::truncate_suffix(self, from_index, commit_index))
    }

    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        blocking(|| Log::append(self, entries))
    }

    fn poll_sync(&mut self, now_ms: i64) -> Option<SyncJob> {
        Log::poll_sync(self, now_ms)
    }

    fn complete_sync(&mut self, done: SyncDone) -> Result<u64, StorageError> {
        Log::complete_sync(self, done)
    }

    fn sync(&mut self) -> Result<u64, StorageError> {
        blocking(|| Log::sync(self))
    }

    fn apply_retention(
        &mut self,
        now_ms: i64,
        retention_bytes: u64,
        retention_ms: u64,
        commit_index: u64,
    ) -> Result<u64, StorageError> {
        blocking(|| Log::apply_retention(self, now_ms, retention_bytes, retention_ms, commit_index))
    }

    fn membership(&self) -> Result<Option<MembershipState>, StorageError> {
        Log::membership(self)
    }

    fn set_membership(&mut self, state: &MembershipState) -> Result<(), StorageError> {
        blocking(|| Log::set_membership(self, state))
    }

    fn voting_withheld(&self) -> Option<u64> {
        Log::voting_withheld(self)
    }

    fn clear_voting_withheld(&mut self) -> Result<(), StorageError> {
        blocking(|| Log::clear_voting_withheld(self))
    }
}
