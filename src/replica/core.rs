//! The replica core: everything one replica decides and remembers, without IO.
//!
//! The consensus core ([`crate::raft`]) says *what* to persist, send and commit. This layer
//! carries that out against a storage ([`ReplicaLog`]) and keeps what a partition serves from:
//! the proposals waiting for their commit, the fetches parked at the high watermark, the
//! idempotent producers' table, the high watermark itself, the stall after a full disk and
//! the withheld vote after lost entries. It owns no socket, task, channel or clock: time
//! comes in as ticks and as the `now_ms` arguments, and everything it wants done outside
//! (messages to send, answers to give) leaves through its outbox ([`ReplicaCore::actions`]).
//!
//! Two drivers run it: the tokio task of [`super::Replica`] in every node, and the seeded
//! simulator (`tests/simulation.rs`), which runs whole clusters of these cores over an
//! in-memory network and [`MemLog`](super::MemLog) stores that crash, fill up and lose
//! entries. So the code that answers a produce, serves a fetch or withholds a vote is the
//! code the simulator checks.
//!
//! A driver's loop is: feed inputs ([`step`](ReplicaCore::step), [`tick`](ReplicaCore::tick),
//! [`propose`](ReplicaCore::propose), [`fetch`](ReplicaCore::fetch),
//! [`sync_done`](ReplicaCore::sync_done), ...), then [`handle_ready`](ReplicaCore::handle_ready),
//! then carry out [`actions`](ReplicaCore::actions), then start the sync that
//! [`poll_sync`](ReplicaCore::poll_sync) hands out, if any, and report it back when done.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::proto::{Entry, HardState, MembershipState, RaftMessage};
use crate::raft::{self, LogReader, MembershipHistory, Raft, ReadError, RestoredState, Role};
use crate::storage::StorageError;

use crate::config::{RaftConfig, StorageConfig};

use super::moves::{MoveDriver, MovePhase};
use super::producers::{ProducerBatch, ProducerTable, StoredBatch, Verdict};
use super::{Acks, Appended, Fetched, ReplicaError, ReplicaStatus, StateMachine};

/// The storage a replica core drives: a partition's log and hard state.
///
/// [`crate::storage::Log`] implements it on files; [`super::MemLog`] in memory, for the
/// simulator. Indexes are Raft indexes, offsets record offsets. Every method that changes
/// the log either completes or returns an error that leaves the log as it was before the
/// call, except where noted.
pub trait ReplicaLog {
    /// A sync of everything appended so far, to run away from the core (it may block).
    type SyncJob;
    /// A finished [`Self::SyncJob`], handed back with [`ReplicaLog::complete_sync`].
    type SyncDone;

    /// First index still in the log (the log start); `last_index + 1` when empty.
    fn first_index(&self) -> u64;
    /// Index of the last entry (`first_index - 1` when empty).
    fn last_index(&self) -> u64;
    /// Last index known durable.
    fn durable_index(&self) -> u64;
    /// Record offset at the log start.
    fn start_offset(&self) -> u64;
    /// The durable hard state; its `log_start_index` is the first index still in the log.
    fn hard_state(&self) -> &HardState;
    /// Term of the entry at `index`, also of the entry just before the log start.
    fn term_at(&self, index: u64) -> Option<u64>;
    /// Entries in `[lo, hi)`, at most about `bytes_max` payload bytes (at least one).
    ///
    /// # Errors
    /// `lo` before the log start, or a read that fails its checks.
    fn entries(&self, lo: u64, hi: u64, bytes_max: u64) -> Result<Vec<Entry>, StorageError>;
    /// Data entries from the one holding `offset`, at most about `bytes_max` payload bytes.
    ///
    /// # Errors
    /// `offset` outside the stored offsets, or a read that fails its checks.
    fn read_from_offset(&self, offset: u64, bytes_max: u64) -> Result<Vec<Entry>, StorageError>;
    /// Bytes the log takes.
    fn size_bytes(&self) -> u64;
    /// Number of segments (0 only after a snapshot install that could not create one).
    fn segment_count(&self) -> usize;
    /// Makes term and vote durable before returning.
    ///
    /// # Errors
    /// The hard state could not be written.
    fn set_hard_state(&mut self, current_term: u64, voted_for: u64) -> Result<(), StorageError>;
    /// Replaces the log by a snapshot position: everything up to `index` is gone.
    ///
    /// # Errors
    /// As the storage reports; the log may be left without a segment (see
    /// [`ReplicaLog::segment_count`]).
    fn install_snapshot(
        &mut self,
        index: u64,
        term: u64,
        next_offset: u64,
    ) -> Result<(), StorageError>;
    /// Drops every entry from `from_index` on; `commit_index` is below it (asserted).
    ///
    /// # Errors
    /// As the storage reports; a retry finishes the cut.
    fn truncate_suffix(&mut self, from_index: u64, commit_index: u64) -> Result<(), StorageError>;
    /// Appends contiguous entries after the last one (not yet durable).
    ///
    /// # Errors
    /// A full disk ([`StorageError::is_full`]) or another storage failure.
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError>;
    /// The sync the log's policy asks for at `now_ms`, if any.
    fn poll_sync(&mut self, now_ms: i64) -> Option<Self::SyncJob>;
    /// Takes a finished sync into account; returns the durable index.
    ///
    /// # Errors
    /// The sync failed.
    fn complete_sync(&mut self, done: Self::SyncDone) -> Result<u64, StorageError>;
    /// Syncs everything now; returns the durable index.
    ///
    /// # Errors
    /// The sync failed.
    fn sync(&mut self) -> Result<u64, StorageError>;
    /// Deletes old entries, never beyond `commit_index`; returns the new first index.
    ///
    /// # Errors
    /// As the storage reports.
    fn apply_retention(
        &mut self,
        now_ms: i64,
        retention_bytes: u64,
        retention_ms: u64,
        commit_index: u64,
    ) -> Result<u64, StorageError>;
    /// The configurations last stored with [`ReplicaLog::set_membership`], `None` if never.
    ///
    /// # Errors
    /// The record cannot be read or fails its checks.
    fn membership(&self) -> Result<Option<MembershipState>, StorageError>;
    /// Stores the configurations the consensus core hands out ([`raft::Ready::membership`]),
    /// durably before it returns.
    ///
    /// # Errors
    /// A full disk or another storage failure.
    fn set_membership(&mut self, state: &MembershipState) -> Result<(), StorageError>;
    /// The term recorded by the voting-withheld marker, if this log lost entries it may
    /// have acknowledged and has not caught up with a leader since.
    fn voting_withheld(&self) -> Option<u64>;
    /// Removes the voting-withheld marker durably (the replica caught up).
    ///
    /// # Errors
    /// The marker could not be removed.
    fn clear_voting_withheld(&mut self) -> Result<(), StorageError>;
}

/// A [`ReplicaLog`] seen as the consensus core's [`LogReader`] (also for tests that drive a
/// bare [`Raft`] over a [`super::MemLog`]).
pub struct CoreReader<'a, L>(pub &'a L);

impl<L: ReplicaLog> LogReader for CoreReader<'_, L> {
    fn entries(&self, lo: u64, hi: u64, bytes_max: u64) -> Result<Vec<Entry>, ReadError> {
        if lo < self.0.first_index() {
            return Err(ReadError::Compacted);
        }
        self.0.entries(lo, hi, bytes_max).map_err(|error| {
            tracing::warn!(lo, hi, %error, "reading entries for replication failed");
            ReadError::Unavailable
        })
    }

    fn term_at(&self, index: u64) -> Result<u64, ReadError> {
        if index + 1 < self.0.first_index() {
            return Err(ReadError::Compacted);
        }
        self.0.term_at(index).ok_or(ReadError::Unavailable)
    }
}

/// Someone waiting for a fetch's answer, who may stop waiting (a long poll that timed out).
pub trait FetchWaiter {
    /// Whether nobody will read the answer any more; such parked fetches are dropped.
    fn is_abandoned(&self) -> bool;
}

/// What the core asks its driver to do, in the order it asks.
#[derive(Debug)]
pub enum Action<P, F, O> {
    /// Send this message to `message.to` (the transport may drop it; Raft retransmits).
    Send(RaftMessage),
    /// Answer a proposal.
    Proposed(P, Result<Appended<O>, ReplicaError>),
    /// Answer a fetch.
    Fetched(F, Result<Fetched, ReplicaError>),
}

/// The replica's own limits (the core's are in [`raft::Config`]), built from the node's
/// settings by [`ReplicaLimits::from_settings`], where each default has its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaLimits {
    /// First wait after a full disk before writing again, in ticks.
    pub storage_full_retry_ticks_min: u64,
    /// Longest wait between two attempts on a disk that stays full, in ticks.
    pub storage_full_retry_ticks_max: u64,
    /// Entries read back from the end of the log to rebuild the producer table.
    pub producer_rebuild_entries_max: u64,
    /// Bytes read per storage call when applying committed entries or rebuilding the
    /// producer table: bounds the memory one such read pins.
    pub read_bytes_max: u64,
    /// During a move: how far a new learner may trail the leader's log and count as caught
    /// up, in entries.
    pub learner_lag_entries_max: u64,
    /// During a move: how long, in ticks, a learner must stay caught up to become a voter.
    pub learner_caught_up_ticks: u64,
}

impl ReplicaLimits {
    /// The limits a node's settings give: the storage-full retry waits are set in
    /// milliseconds and counted here in ticks of `raft.tick_interval_ms`.
    pub fn from_settings(raft: &RaftConfig, storage: &StorageConfig) -> Self {
        let tick_ms = raft.tick_interval_ms.max(1);
        Self {
            storage_full_retry_ticks_min: storage.full_disk_retry_ms_min.div_ceil(tick_ms),
            storage_full_retry_ticks_max: storage.full_disk_retry_ms_max.div_ceil(tick_ms),
            producer_rebuild_entries_max: storage.producer_rebuild_entries_max,
            read_bytes_max: storage.read_bytes_max as u64,
            learner_lag_entries_max: raft.learner_lag_entries_max,
            learner_caught_up_ticks: raft.learner_caught_up_ms.div_ceil(tick_ms),
        }
    }
}

/// What a replica core starts from.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// The consensus core's configuration.
    pub raft: raft::Config,
    /// The replica's limits.
    pub limits: ReplicaLimits,
    /// Track idempotent producers (partitions; not the metadata group, whose entries are
    /// not record batches).
    pub track_producers: bool,
    /// Size-based retention in bytes, 0 for none.
    pub retention_bytes: u64,
    /// Age-based retention in milliseconds, 0 for none.
    pub retention_ms: u64,
}

/// A proposal waiting for its entry to commit (or to be superseded).
struct PendingProposal<P> {
    index: u64,
    term: u64,
    base_offset: u64,
    timestamp_ms: i64,
    acks: Acks,
    waiter: Option<P>,
    /// A producer's retry of the batch already at `index`: answered as a duplicate once that
    /// entry commits.
    duplicate: bool,
}

/// A fetch parked at the high watermark until new records commit.
struct ParkedFetch<F> {
    offset: u64,
    bytes_max: u64,
    waiter: F,
}

/// A replica waiting for disk space (see [`ReplicaCore::stall`]).
struct Stall {
    /// The tick count at which to try writing again.
    retry_at_tick: u64,
    /// The error that stalled it, for clients and `/ready`.
    reason: String,
}

/// One replica of one Raft group, without IO: see the module doc.
///
/// `P` and `F` are the driver's handles for whoever waits for a proposal's or a fetch's
/// answer (a oneshot sender in a node, a number in the simulator); `M` is the state
/// machine committed entries are applied to.
pub struct ReplicaCore<L: ReplicaLog, M: StateMachine, P, F> {
    raft: Raft,
    log: L,
    machine: M,
    config: CoreConfig,
    pending: VecDeque<PendingProposal<P>>,
    parked: Vec<ParkedFetch<F>>,
    outbox: Vec<Action<P, F, M::Output>>,
    sync_running: bool,
    high_watermark: u64,
    /// The commit index the last [`ReplicaCore::on_commit`] acted on, capped at the stored
    /// log: entries up to it may have been shown to readers and answered to producers, so
    /// storage must never truncate them. It lags the core's commit index on purpose: one step
    /// may both truncate a stale suffix and commit the leader's entries that replace it (the
    /// same AppendEntries carries both), and the truncation must still happen.
    committed_index: u64,
    /// Set by [`ReplicaCore::stop`]: new proposals are refused.
    stopping: bool,
    /// Idempotent producers' recent batches, as the log holds them.
    producers: ProducerTable,
    /// Set while the disk is full: the core is neither ticked nor stepped until its retry.
    stall: Option<Stall>,
    /// Wait before the next retry, in ticks; doubles per failed attempt, reset by a
    /// successful append.
    stall_backoff_ticks: u64,
    /// The log still carries the voting-withheld marker.
    voting_withheld_marked: bool,
    /// Ticks seen, the core's only clock.
    ticks: u64,
    /// An error an input ran into, acted on by the next [`ReplicaCore::handle_ready`].
    deferred_error: Option<StorageError>,
    /// Set once the replica stopped on a storage error: it no longer serves or votes.
    failed: Option<String>,
    /// The move this group is asked to make (from the cluster metadata), if any.
    move_driver: Option<MoveDriver>,
    /// Where that move stood at the last tick.
    move_phase: Option<MovePhase>,
}

impl<L: ReplicaLog, M: StateMachine, P, F: FetchWaiter> ReplicaCore<L, M, P, F> {
    /// Rebuilds a replica from its log: the consensus core from the durable hard state and
    /// entries (with voting withheld if the log says so), then the producer table.
    ///
    /// The log must be durable up to its last entry (sync it after recovery first): the
    /// core counts what it finds as its own durable copy.
    ///
    /// # Errors
    /// The configuration is invalid or the log cannot be read.
    pub fn new(config: CoreConfig, log: L, machine: M) -> Result<Self, ReplicaError> {
        let voting_withheld = log.voting_withheld();
        let restored = RestoredState {
            voting_withheld,
            ..restored_state(&log).map_err(|e| ReplicaError::from_storage(&e))?
        };
        let raft = Raft::restore(config.raft.clone(), restored, &CoreReader(&log))
            .map_err(|e| ReplicaError::Storage(format!("cannot restore the raft core: {e}")))?;
        // After a restart only the log start is known to be committed.
        let committed_index = raft.commit_index();
        let mut core = ReplicaCore {
            raft,
            high_watermark: log.start_offset(),
            log,
            machine,
            config,
            pending: VecDeque::new(),
            parked: Vec::new(),
            outbox: Vec::new(),
            sync_running: false,
            committed_index,
            stopping: false,
            producers: ProducerTable::new(),
            stall: None,
            stall_backoff_ticks: 0,
            voting_withheld_marked: voting_withheld.is_some(),
            ticks: 0,
            deferred_error: None,
            failed: None,
            move_driver: None,
            move_phase: None,
        };
        core.rebuild_producers()
            .map_err(|e| ReplicaError::from_storage(&e))?;
        Ok(core)
    }

    /// The consensus core, for status and tests.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The consensus core, mutably: for tests that script the protocol (campaigns,
    /// transfers) directly. Proposals made this way have no waiter.
    pub fn raft_mut(&mut self) -> &mut Raft {
        &mut self.raft
    }

    /// The storage.
    pub fn log(&self) -> &L {
        &self.log
    }

    /// The storage, mutably: for drivers that inject faults into it (the simulator).
    pub fn log_mut(&mut self) -> &mut L {
        &mut self.log
    }

    /// Gives the storage back, for a restart.
    pub fn into_log(self) -> L {
        self.log
    }

    /// The configuration.
    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    /// Offset after the last committed record: what fetches may read up to.
    pub fn high_watermark(&self) -> u64 {
        self.high_watermark
    }

    /// Fetches parked at the high watermark.
    pub fn parked_fetch_count(&self) -> usize {
        self.parked.len()
    }

    /// Proposals waiting for their outcome (also answered ones whose entry has not
    /// committed yet: a stopping replica waits for those).
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Whether the replica stopped on a storage error.
    pub fn failed(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Why writes are refused while the disk is full.
    pub fn storage_full(&self) -> Option<&str> {
        self.stall.as_ref().map(|stall| stall.reason.as_str())
    }

    /// The actions asked for since the last call, in order.
    pub fn actions(&mut self) -> std::vec::Drain<'_, Action<P, F, M::Output>> {
        self.outbox.drain(..)
    }

    /// One tick of time: drops abandoned parked fetches, ends a stall whose backoff is
    /// over, and ticks the consensus core.
    pub fn tick(&mut self) {
        self.ticks += 1;
        // Fetches whose waiter gave up are otherwise only dropped when a commit wakes the
        // parked list; on an idle partition they would pile up, one per long poll.
        self.parked.retain(|fetch| !fetch.waiter.is_abandoned());
        if let Some(stall) = &self.stall {
            if self.ticks < stall.retry_at_tick {
                return;
            }
            tracing::info!(
                group = self.config.raft.group_id,
                "retrying writes after a full disk"
            );
            self.stall = None;
        }
        self.raft.tick();
        self.drive_move();
    }

    /// Asks this group to move to `target` voters (`None`: no move). Every member is told;
    /// whichever leads drives the move ([`super::moves`]). Telling the same target again
    /// keeps the move's progress.
    pub fn set_move_target(&mut self, target: Option<Vec<u64>>) {
        match target {
            Some(target) => self.set_membership_target(target, Vec::new()),
            None => {
                if self.move_driver.is_some() {
                    tracing::info!(
                        group = self.config.raft.group_id,
                        "membership target cleared"
                    );
                }
                self.move_driver = None;
                self.move_phase = None;
            }
        }
    }

    /// Asks this group to end with `voters` and keep `learners` (the metadata group keeps
    /// every node that joined as a learner); driven like a move.
    pub fn set_membership_target(&mut self, voters: Vec<u64>, learners: Vec<u64>) {
        let next = MoveDriver::with_learners(voters, learners);
        let same = self.move_driver.as_ref().is_some_and(|driver| {
            driver.target() == next.target() && driver.kept_learners() == next.kept_learners()
        });
        if !same {
            tracing::info!(
                group = self.config.raft.group_id,
                voters = ?next.target(),
                learners = ?next.kept_learners(),
                "membership target"
            );
            self.move_driver = Some(next);
        }
    }

    /// Where the move stands, if one is under way.
    pub fn move_phase(&self) -> Option<&MovePhase> {
        self.move_phase.as_ref()
    }

    /// One tick of the move: the leader proposes the next change; a refusal (a change still
    /// pending, nothing committed in this term yet) is retried at the next tick.
    fn drive_move(&mut self) {
        let Some(driver) = self.move_driver.as_mut() else {
            return;
        };
        let limits = &self.config.limits;
        let (phase, change) = driver.tick(
            &self.raft,
            limits.learner_lag_entries_max,
            limits.learner_caught_up_ticks,
        );
        if let Some(change) = change {
            // Timestamp 0, as for the core's own entries: a configuration entry holds no
            // records and must not move a segment's newest timestamp.
            if let Err(refused) = self.raft.propose_membership(&change, 0) {
                tracing::debug!(group = self.config.raft.group_id, %refused, ?change, "move step deferred");
            }
        }
        self.move_phase = Some(phase);
    }

    /// A peer's message. A stalled replica drops it unanswered (to the leader it looks
    /// slow; Raft retransmits once it answers again), so the core is not driven into
    /// writes that cannot succeed.
    pub fn step(&mut self, message: RaftMessage) {
        if self.stall.is_none() {
            self.raft.step(message);
        }
    }

    /// Asks the leader to hand leadership to `to` (dissertation §3.10); ignored by a
    /// follower or a stalled replica.
    pub fn transfer_leader(&mut self, to: u64) {
        if self.stall.is_none() {
            let _ = self.raft.transfer_leader(to);
        }
    }

    /// Starts an election now (used to place initial leaders evenly).
    pub fn campaign(&mut self) {
        if self.stall.is_none() {
            self.raft.campaign_now();
        }
    }

    /// Refuses new proposals from now on; the ones accepted still learn their outcome.
    pub fn stop(&mut self) {
        self.stopping = true;
    }

    /// Proposes one entry of `record_count` records, appended at `timestamp_ms`; `waiter` is
    /// answered per `acks` (or at once when refused).
    pub fn propose(
        &mut self,
        payload: Bytes,
        record_count: u32,
        acks: Acks,
        timestamp_ms: i64,
        waiter: P,
    ) {
        if let Some(reason) = self.storage_full() {
            let refusal = ReplicaError::StorageFull(reason.to_owned());
            self.outbox.push(Action::Proposed(waiter, Err(refusal)));
            return;
        }
        // A follower's producer table is not the partition's: only the leader may judge a
        // batch's sequence, so anyone else answers NOT_LEADER first (the simulator caught
        // followers refusing retries as out of order, which a Kafka client treats as fatal).
        if self.stopping || self.raft.role() != Role::Leader {
            let leader_hint = self.raft.leader_id().filter(|&id| id != self.raft.id());
            let refusal = ReplicaError::NotLeader { leader_hint };
            self.outbox.push(Action::Proposed(waiter, Err(refusal)));
            return;
        }
        let producer = self.producer_batch(&payload, record_count);
        let Some(waiter) = self.check_producer(producer.as_ref(), acks, timestamp_ms, waiter)
        else {
            return;
        };
        match self.raft.propose(payload, record_count, timestamp_ms) {
            Ok(proposed) => {
                if let Some(batch) = &producer {
                    let stored = StoredBatch {
                        index: proposed.index,
                        base_offset: proposed.base_offset,
                    };
                    self.producers.record(batch, stored);
                }
                // Kept in index order, which `complete_proposals` relies on. A re-elected
                // leader may still wait on proposals of its earlier term at higher indexes
                // (its log was cut below them since); appending behind those would leave the
                // new ones unanswered until the commit index passed the old ones (the
                // simulator caught an idle partition's produce hanging so).
                let at = self.pending.partition_point(|p| p.index <= proposed.index);
                let pending = PendingProposal {
                    index: proposed.index,
                    term: proposed.term,
                    base_offset: proposed.base_offset,
                    timestamp_ms,
                    acks,
                    waiter: Some(waiter),
                    duplicate: false,
                };
                self.pending.insert(at, pending);
            }
            Err(error) => {
                let refusal = ReplicaError::from_propose(error);
                self.outbox.push(Action::Proposed(waiter, Err(refusal)));
            }
        }
    }

    /// Reads committed data entries from the one holding `offset`, up to about `bytes_max`
    /// payload bytes. At the high watermark the fetch is answered empty, or with `park`
    /// waits until records commit (or its waiter gives up).
    pub fn fetch(&mut self, offset: u64, bytes_max: u64, park: bool, waiter: F) {
        let log_start_offset = self.log.start_offset();
        // An offset this log holds but whose commit this replica has not learned yet (it
        // restarted, or was just elected and has not committed its no-op) is waited for like
        // the high watermark, as Kafka answers a fetch between its high watermark and log end
        // offset: refusing it would make a consumer resuming from a committed offset give up.
        let log_end_offset = self.raft.next_offset().max(self.high_watermark);
        if offset < log_start_offset || offset > log_end_offset {
            let refusal = ReplicaError::OffsetOutOfRange {
                offset,
                log_start_offset,
                high_watermark: self.high_watermark,
            };
            self.outbox.push(Action::Fetched(waiter, Err(refusal)));
        } else if offset < self.high_watermark {
            let answer = self.read_committed(offset, bytes_max);
            self.outbox.push(Action::Fetched(waiter, answer));
        } else if park {
            self.parked.push(ParkedFetch {
                offset,
                bytes_max,
                waiter,
            });
        } else {
            let empty = Fetched {
                entries: Vec::new(),
                high_watermark: self.high_watermark,
                log_start_offset,
            };
            self.outbox.push(Action::Fetched(waiter, Ok(empty)));
        }
    }

    /// A sync to start, unless one is running (the next one then covers everything
    /// appended meanwhile: group commit) or nothing is waiting to be made durable. Its
    /// completion must come back through [`ReplicaCore::sync_done`].
    pub fn poll_sync(&mut self, now_ms: i64) -> Option<L::SyncJob> {
        if self.sync_running || self.failed.is_some() {
            return None;
        }
        if self.log.last_index() <= self.log.durable_index() {
            return None;
        }
        let job = self.log.poll_sync(now_ms)?;
        self.sync_running = true;
        Some(job)
    }

    /// A sync handed out by [`ReplicaCore::poll_sync`] finished: the core may count what it
    /// made durable toward commit.
    pub fn sync_done(&mut self, done: L::SyncDone) {
        self.sync_running = false;
        match self.log.complete_sync(done) {
            Ok(durable_index) => {
                if let Some(term) = self.log.term_at(durable_index) {
                    // The core drops the report if the entry at that index changed meanwhile.
                    self.raft.persisted(durable_index, term);
                }
            }
            Err(error) => self.defer(error),
        }
    }

    /// Applies retention at `now_ms` (by the configured size and age, never beyond the
    /// commit index) and moves the consensus core's log start with it.
    pub fn apply_retention(&mut self, now_ms: i64) {
        let (bytes, ms) = (self.config.retention_bytes, self.config.retention_ms);
        let before = self.log.first_index();
        let commit_index = self.raft.commit_index();
        match self.log.apply_retention(now_ms, bytes, ms, commit_index) {
            Ok(first) if first > before => {
                let index = first - 1;
                let term = self.log.term_at(index).expect("the log start term is kept");
                self.raft.compact(index, term, self.log.start_offset());
            }
            Ok(_) => {}
            Err(error) => self.defer(error),
        }
    }

    fn defer(&mut self, error: StorageError) {
        if self.deferred_error.is_none() {
            self.deferred_error = Some(error);
        }
    }

    /// Carries out the consensus core's [`raft::Ready`] and what follows from it. The order
    /// is the Raft contract:
    ///
    /// 1. **Hard state first, durably.** A vote or a term must be on disk before any message
    ///    that reveals it leaves this node, or a crash could let this node vote twice in one
    ///    term. [`ReplicaLog::set_hard_state`] is durable when it returns.
    /// 2. **Log changes**: snapshot install, then suffix truncation, then the append. The
    ///    append is one vectored write of the batch, made durable later by the sync that
    ///    [`ReplicaCore::poll_sync`] hands out, so the leader's own disk write runs in
    ///    parallel with step 3 (dissertation §10.2.1). The consensus core counts the
    ///    leader's copy toward commit only once that sync reports back.
    /// 3. **Send** the messages. A follower's answers carry its durable index separately, so
    ///    sending before its own sync is safe.
    /// 4. **Commit**: advance the high watermark, apply to the state machine, answer the
    ///    proposals that committed (or were superseded), and wake parked fetches.
    ///
    /// A full disk stalls the replica ([`ReplicaCore::stall`]); any other storage error
    /// (also one an earlier input ran into) fails it: its waiters are answered and it
    /// neither serves nor votes any more.
    ///
    /// # Errors
    /// The storage error that failed the replica; the driver stops it.
    pub fn handle_ready(&mut self) -> Result<(), StorageError> {
        if self.failed.is_some() {
            return Ok(());
        }
        let outcome = match self.deferred_error.take() {
            Some(error) => Err(error),
            None => self.carry_out_ready(),
        };
        let outcome = match outcome {
            // A snapshot install that ran out of room after removing the old segments
            // leaves no active segment: only reopening the log repairs that.
            Err(error) if error.is_full() && self.log.segment_count() > 0 => self.stall(error),
            other => other,
        };
        outcome.inspect_err(|error| self.fail(error))
    }

    fn carry_out_ready(&mut self) -> Result<(), StorageError> {
        let ready = self.raft.ready(&CoreReader(&self.log));
        if ready.is_empty() {
            return Ok(());
        }
        self.write_log(&ready)?;
        self.maybe_restore_voting()?;
        if !ready.entries.is_empty() {
            // Writes work again: the next full disk starts over with a short backoff.
            self.stall_backoff_ticks = 0;
        }
        self.outbox
            .extend(ready.messages.into_iter().map(Action::Send));
        self.answer_leader_acks();
        if ready.commit_index.is_some() {
            self.on_commit()?;
        }
        Ok(())
    }

    fn write_log(&mut self, ready: &raft::Ready) -> Result<(), StorageError> {
        if let Some(hard_state) = &ready.hard_state {
            self.log
                .set_hard_state(hard_state.current_term, hard_state.voted_for)?;
        }
        // Before the entries: a configuration entry is never durable without its record.
        if let Some(membership) = &ready.membership {
            self.log.set_membership(&membership.to_proto())?;
        }
        if let Some(position) = ready.snapshot {
            self.log
                .install_snapshot(position.index, position.term, position.next_offset)?;
            self.high_watermark = self.high_watermark.max(position.next_offset);
        }
        if let Some(from_index) = ready.truncate_from {
            if from_index <= self.log.last_index() {
                self.log.truncate_suffix(from_index, self.committed_index)?;
            }
        }
        if !ready.entries.is_empty() {
            self.log.append(&ready.entries)?;
        }
        // The record written above still listed the entries this Ready took away.
        if ready.membership.is_some() && (ready.snapshot.is_some() || ready.truncate_from.is_some())
        {
            self.log
                .set_membership(&self.raft.membership_history().to_proto())?;
        }
        if ready.snapshot.is_some() || ready.truncate_from.is_some() {
            self.rebuild_producers()
        } else {
            self.record_producers(&ready.entries);
            Ok(())
        }
    }

    /// Removes the voting-withheld marker once the consensus core has caught up with a
    /// leader. Runs after the Ready's hard state is durable and before its messages (votes)
    /// leave.
    fn maybe_restore_voting(&mut self) -> Result<(), StorageError> {
        if self.voting_withheld_marked && !self.raft.voting_withheld() {
            self.log.clear_voting_withheld()?;
            self.voting_withheld_marked = false;
            tracing::info!(
                group = self.config.raft.group_id,
                "caught up with a leader after lost entries: voting again"
            );
        }
        Ok(())
    }

    /// Answers `acks=leader` proposals whose entries are now in the leader's log.
    fn answer_leader_acks(&mut self) {
        let last_index = self.log.last_index();
        for pending in self.pending.iter_mut() {
            if pending.acks == Acks::Leader && pending.index <= last_index {
                if let Some(waiter) = pending.waiter.take() {
                    let appended = Appended {
                        index: pending.index,
                        base_offset: pending.base_offset,
                        timestamp_ms: pending.timestamp_ms,
                        output: None,
                    };
                    self.outbox.push(Action::Proposed(waiter, Ok(appended)));
                }
            }
        }
    }

    fn on_commit(&mut self) -> Result<(), StorageError> {
        let commit_index = self.raft.commit_index().min(self.log.last_index());
        self.committed_index = self.committed_index.max(commit_index);
        if commit_index >= self.log.first_index() {
            let last = self.log.entries(commit_index, commit_index + 1, 0)?;
            if let Some(entry) = last.first() {
                self.high_watermark = entry.base_offset + u64::from(entry.record_count);
            }
        }
        let outputs = self.apply_committed(commit_index)?;
        self.complete_proposals(commit_index, outputs);
        self.serve_parked();
        Ok(())
    }

    /// Applies committed entries the state machine has not seen, returning each output by
    /// index so that the proposals waiting for them can be answered.
    fn apply_committed(
        &mut self,
        commit_index: u64,
    ) -> Result<VecDeque<(u64, M::Output)>, StorageError> {
        let mut outputs = VecDeque::new();
        let mut next = self
            .machine
            .applied_index()
            .saturating_add(1)
            .max(self.log.first_index());
        while next <= commit_index {
            let read_bytes_max = self.config.limits.read_bytes_max;
            let entries = self.log.entries(next, commit_index + 1, read_bytes_max)?;
            for entry in &entries {
                outputs.push_back((entry.index, self.machine.apply(entry)));
            }
            next = entries.last().map_or(commit_index + 1, |e| e.index + 1);
        }
        Ok(outputs)
    }

    fn complete_proposals(&mut self, commit_index: u64, mut outputs: VecDeque<(u64, M::Output)>) {
        while let Some(pending) = self.pending.front() {
            if pending.index > commit_index {
                break;
            }
            let mut pending = self.pending.pop_front().expect("front exists");
            let Some(waiter) = pending.waiter.take() else {
                continue;
            };
            // The entry at this index committed; it is ours only if its term is the one our
            // proposal got. Otherwise a new leader overwrote it before it committed.
            let ours = self.log.term_at(pending.index) == Some(pending.term);
            let output = loop {
                match outputs.front() {
                    Some((index, _)) if *index < pending.index => drop(outputs.pop_front()),
                    Some((index, _)) if *index == pending.index => {
                        break outputs.pop_front().map(|(_, o)| o)
                    }
                    _ => break None,
                }
            };
            let result = if ours && pending.duplicate {
                Err(ReplicaError::DuplicateSequence {
                    base_offset: pending.base_offset,
                })
            } else if ours {
                Ok(Appended {
                    index: pending.index,
                    base_offset: pending.base_offset,
                    timestamp_ms: pending.timestamp_ms,
                    output,
                })
            } else {
                Err(ReplicaError::Superseded)
            };
            self.outbox.push(Action::Proposed(waiter, result));
        }
    }

    fn read_committed(&self, offset: u64, bytes_max: u64) -> Result<Fetched, ReplicaError> {
        let mut entries = self
            .log
            .read_from_offset(offset, bytes_max)
            .map_err(|e| ReplicaError::from_storage(&e))?;
        // Only committed records are ever shown: drop what lies beyond the high watermark.
        entries.retain(|entry| entry.base_offset < self.high_watermark);
        Ok(Fetched {
            entries,
            high_watermark: self.high_watermark,
            log_start_offset: self.log.start_offset(),
        })
    }

    fn serve_parked(&mut self) {
        for fetch in std::mem::take(&mut self.parked) {
            if fetch.waiter.is_abandoned() {
                continue;
            }
            if fetch.offset < self.high_watermark {
                let answer = self.read_committed(fetch.offset, fetch.bytes_max);
                self.outbox.push(Action::Fetched(fetch.waiter, answer));
            } else {
                self.parked.push(fetch);
            }
        }
    }

    /// The producer fields of a batch, when this group tracks producers and the batch names one.
    fn producer_batch(&self, payload: &Bytes, record_count: u32) -> Option<ProducerBatch> {
        if !self.config.track_producers {
            return None;
        }
        let batch = <crate::proto::RecordBatch as prost::Message>::decode(payload.clone()).ok()?;
        (batch.producer_id != 0).then_some(ProducerBatch {
            producer_id: batch.producer_id,
            epoch: batch.producer_epoch,
            base_sequence: batch.base_sequence,
            record_count,
        })
    }

    /// Answers a batch the producer table refuses or already has; returns the waiter when
    /// the batch is to be appended.
    fn check_producer(
        &mut self,
        producer: Option<&ProducerBatch>,
        acks: Acks,
        timestamp_ms: i64,
        waiter: P,
    ) -> Option<P> {
        let verdict = producer.map_or(Verdict::Append, |batch| self.producers.check(batch));
        let refusal = match verdict {
            Verdict::Append => return Some(waiter),
            Verdict::OutOfOrder { expected } => ReplicaError::OutOfOrderSequence { expected },
            Verdict::Fenced { current } => ReplicaError::ProducerFenced { current },
            Verdict::UnknownProducer => ReplicaError::UnknownProducerId,
            Verdict::Duplicate(stored) => {
                let committed = stored.index <= self.raft.commit_index();
                if committed || acks == Acks::Leader {
                    ReplicaError::DuplicateSequence {
                        base_offset: stored.base_offset,
                    }
                } else {
                    // The original is still in flight: answer when it commits (or is lost).
                    let term = self.log.term_at(stored.index).unwrap_or(self.raft.term());
                    let at = self.pending.partition_point(|p| p.index <= stored.index);
                    let duplicate = PendingProposal {
                        index: stored.index,
                        term,
                        base_offset: stored.base_offset,
                        timestamp_ms,
                        acks,
                        waiter: Some(waiter),
                        duplicate: true,
                    };
                    self.pending.insert(at, duplicate);
                    return None;
                }
            }
        };
        self.outbox.push(Action::Proposed(waiter, Err(refusal)));
        None
    }

    /// Rebuilds the producer table from the tail of the log: at start and whenever entries
    /// were removed, since the table must describe exactly what the log holds.
    fn rebuild_producers(&mut self) -> Result<(), StorageError> {
        self.producers.clear();
        if !self.config.track_producers || self.log.last_index() < self.log.first_index() {
            return Ok(());
        }
        let last = self.log.last_index();
        let depth = self.config.limits.producer_rebuild_entries_max;
        let mut next = self.log.first_index().max(last.saturating_sub(depth));
        while next <= last {
            let read_bytes_max = self.config.limits.read_bytes_max;
            let entries = self.log.entries(next, last + 1, read_bytes_max)?;
            self.record_producers(&entries);
            next = entries.last().map_or(last + 1, |e| e.index + 1);
        }
        Ok(())
    }

    fn record_producers(&mut self, entries: &[Entry]) {
        for entry in entries {
            if let Some(batch) = self.producer_batch(&entry.payload, entry.record_count) {
                let stored = StoredBatch {
                    index: entry.index,
                    base_offset: entry.base_offset,
                };
                self.producers.record(&batch, stored);
            }
        }
    }

    /// Pauses writing after a full disk, without stopping: the replica keeps serving
    /// committed reads and tries again after a backoff (doubling up to
    /// [`ReplicaLimits::storage_full_retry_ticks_max`]).
    ///
    /// A failed write is treated like a crash just before it. The Ready whose write failed
    /// sent none of its messages (they leave only after the write), so nothing beyond what
    /// the log holds was revealed: no vote, no term, no entry. The consensus core, though,
    /// already believes it holds those entries and that hard state, so it is rebuilt from
    /// the log exactly as after a restart ([`Raft::restore`]), keeping the commit index this
    /// replica has already acted on. A leader thereby steps down (it restarts as a
    /// follower), and the others elect a leader that can write. Entries that reached the
    /// log are synced first, so the rebuilt core may count them as durable; proposals whose
    /// entries did not reach it were never sent anywhere and are answered `STORAGE_FULL`.
    ///
    /// # Errors
    /// A storage error while syncing or reading the log back: the replica then fails.
    fn stall(&mut self, error: StorageError) -> Result<(), StorageError> {
        let limits = &self.config.limits;
        self.stall_backoff_ticks = (self.stall_backoff_ticks * 2).clamp(
            limits.storage_full_retry_ticks_min.max(1),
            limits.storage_full_retry_ticks_max.max(1),
        );
        tracing::warn!(
            group = self.config.raft.group_id,
            %error,
            retry_ticks = self.stall_backoff_ticks,
            "disk full: refusing writes until space is freed"
        );
        self.log.sync()?;
        // A sync handed out before is superseded by this one; its report is stale.
        self.sync_running = false;
        let restored = RestoredState {
            commit_index: self.committed_index,
            voting_withheld: self.raft.voting_withheld_term(),
            ..restored_state(&self.log)?
        };
        let reader = CoreReader(&self.log);
        self.raft = Raft::restore(self.config.raft.clone(), restored, &reader).map_err(|e| {
            StorageError::Corrupt {
                path: std::path::PathBuf::new(),
                position: 0,
                reason: format!("cannot rebuild the raft core from the log: {e}"),
            }
        })?;
        let last_index = self.log.last_index();
        let refusal = ReplicaError::from_storage(&error);
        let mut kept = VecDeque::with_capacity(self.pending.len());
        for mut pending in self.pending.drain(..) {
            if pending.index <= last_index {
                kept.push_back(pending);
            } else if let Some(waiter) = pending.waiter.take() {
                self.outbox
                    .push(Action::Proposed(waiter, Err(refusal.clone())));
            }
        }
        self.pending = kept;
        // The table recorded proposals at propose time; it must describe the log again.
        self.rebuild_producers()?;
        self.stall = Some(Stall {
            retry_at_tick: self.ticks + self.stall_backoff_ticks,
            reason: error.to_string(),
        });
        Ok(())
    }

    /// Stops serving after a storage error: after a failed write or sync the log's state on
    /// disk is unknown, so the replica neither answers nor votes until it is reopened.
    fn fail(&mut self, error: &StorageError) {
        tracing::error!(group = self.config.raft.group_id, %error, "replica stopped on a storage error");
        self.failed = Some(error.to_string());
        self.answer_all(ReplicaError::from_storage(error));
    }

    /// Answers every waiter with `error`: the replica is failing or stopping.
    pub fn answer_all(&mut self, error: ReplicaError) {
        for mut pending in self.pending.drain(..) {
            if let Some(waiter) = pending.waiter.take() {
                self.outbox
                    .push(Action::Proposed(waiter, Err(error.clone())));
            }
        }
        for fetch in self.parked.drain(..) {
            self.outbox
                .push(Action::Fetched(fetch.waiter, Err(error.clone())));
        }
    }

    /// The replica's state as [`ReplicaStatus`] reports it.
    pub fn status(&self) -> ReplicaStatus {
        let membership = self.raft.membership();
        let follower_match = if self.raft.role() == Role::Leader {
            let me = self.raft.id();
            self.raft
                .membership()
                .members()
                .into_iter()
                .filter(|&id| id != me)
                .filter_map(|id| self.raft.progress(id).map(|p| (id, p.match_index)))
                .collect()
        } else {
            Vec::new()
        };
        ReplicaStatus {
            role: Some(self.raft.role()),
            term: self.raft.term(),
            leader_id: self.raft.leader_id().unwrap_or(0),
            commit_index: self.raft.commit_index(),
            last_index: self.log.last_index(),
            high_watermark: self.high_watermark,
            log_start_offset: self.log.start_offset(),
            log_size_bytes: self.log.size_bytes(),
            segment_count: self.log.segment_count() as u64,
            follower_match,
            failed: self.failed.clone(),
            storage_full: self.storage_full().map(str::to_owned),
            fetch_waiters: self.parked.len() as u64,
            voters: membership.voters.iter().copied().collect(),
            voters_outgoing: membership.voters_outgoing.iter().copied().collect(),
            learners: membership.learners.iter().copied().collect(),
            move_phase: self.move_phase.clone(),
            catch_up: self.catch_up_progress(),
        }
    }

    /// The learners' catch-up as a leader sees it; zero on a follower or without learners.
    fn catch_up_progress(&self) -> super::CatchUpProgress {
        let sent = self.raft.catch_up_counters().bytes_sent;
        let slowest = self
            .raft
            .membership()
            .learners
            .iter()
            .filter_map(|&id| self.raft.progress(id).map(|p| p.match_index))
            .min();
        let bytes_remaining = match slowest {
            Some(matched) if self.raft.role() == Role::Leader => {
                let (first, last) = (self.log.first_index(), self.log.last_index());
                let entries = (last + 1).saturating_sub(first).max(1);
                let lacking = last.saturating_sub(matched.max(first.saturating_sub(1)));
                (u128::from(self.log.size_bytes()) * u128::from(lacking) / u128::from(entries))
                    as u64
            }
            _ => 0,
        };
        super::CatchUpProgress {
            bytes_remaining,
            bytes_sent: sent,
            rate_bytes_per_second: 0,
        }
    }
}

/// The consensus core's view of a reopened log: its durable hard state (whose
/// `log_start_index` is the first index still in the log, as the schema defines it) and its
/// last index.
///
/// # Errors
/// The stored configurations cannot be read or are not ones a group could run with.
fn restored_state<L: ReplicaLog>(log: &L) -> Result<RestoredState, StorageError> {
    let membership =
        match log.membership()? {
            Some(state) => Some(MembershipHistory::from_proto(&state).map_err(|reason| {
                StorageError::Corrupt {
                    path: "membership".into(),
                    position: 0,
                    reason: reason.to_owned(),
                }
            })?),
            None => None,
        };
    Ok(RestoredState {
        hard_state: *log.hard_state(),
        last_index: log.last_index(),
        commit_index: 0,
        voting_withheld: None,
        membership,
    })
}
