//! The Raft state machine of one group member: inputs, roles, elections and the Ready output.
//!
//! Replication (AppendEntries, InstallSnapshot, commit) lives in `replication.rs`; this file
//! holds the state, the public inputs, and leader election.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use bytes::Bytes;
use prost::Message as _;

use crate::proto::raft_message::Body;
use crate::proto::{
    Entry, EntryKind, GroupConfig, HardState, RaftMessage, RequestVote, RequestVoteResponse,
    TimeoutNow,
};

use super::check::{check_body, message_term, Diagnostics, DropReason};
use super::config::{Config, ConfigError};
use super::log::{entry_size_bytes, LogPosition, LogReader, RaftLog, ReadError, TermRun};
use super::membership::{
    LoggedMembership, Membership, MembershipChange, MembershipError, MembershipHistory, VoteResult,
};
use super::progress::{Progress, ProgressState};
use crate::rng::SplitMix64;

/// The role of a member in its current term.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Asks for pre-votes without changing its term (dissertation §9.6).
    PreCandidate,
    /// Asks for votes in a new term (§5.2).
    Candidate,
    /// Replicates its log to the others (§5.3).
    Leader,
}

/// Everything the caller must do after feeding inputs, in this order (see [`Raft::ready`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ready {
    /// Hard state (term, vote, log start) to persist **before sending any message** of this
    /// Ready: a vote or a term acknowledged to a peer must survive a crash.
    pub hard_state: Option<HardState>,
    /// Move the log start to this position, dropping entries `<= index` (a snapshot install).
    /// Applied first; if `truncate_from` is `index + 1` the whole log is replaced.
    pub snapshot: Option<LogPosition>,
    /// Drop every entry with index `>= truncate_from` (a conflicting suffix). Applied after
    /// `snapshot` and before `entries`.
    pub truncate_from: Option<u64>,
    /// Entries to append (contiguous, right after the log's last entry once the steps above
    /// are applied). When durable, report `persisted(last.index, last.term)`.
    pub entries: Vec<Entry>,
    /// Messages to send once `hard_state` is durable. They may be sent while `entries` are
    /// still being written: replies report durability separately.
    pub messages: Vec<RaftMessage>,
    /// The new commit index, if it advanced: entries up to it may be exposed to consumers.
    pub commit_index: Option<u64>,
    /// The configurations to remember, when they changed (a configuration entry appended or
    /// truncated, the log start moved). Persist with `hard_state`, **before** `entries`: a
    /// configuration entry must never be durable without its record. The list still holds
    /// the entries this Ready truncates; once the truncation is done, persist
    /// [`Raft::membership_history`] again, without them. A restart keeps only the listed
    /// entries whose (index, term) the durable log holds.
    pub membership: Option<MembershipHistory>,
}

impl Ready {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        *self == Ready::default()
    }
}

/// The result of an accepted proposal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proposed {
    /// Index of the new entry.
    pub index: u64,
    /// Term of the new entry; if the entry at `index` later has another term, it was lost.
    pub term: u64,
    /// Record offset stamped on the entry's first record.
    pub base_offset: u64,
}

/// Why a proposal was refused; nothing was appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProposeError {
    /// This member is not the leader; `leader_hint` is the leader it last heard of.
    NotLeader {
        /// The leader to retry with, if known.
        leader_hint: Option<u64>,
    },
    /// A leadership transfer to `transferee` is in progress; retry there shortly.
    Transferring {
        /// The member expected to become leader.
        transferee: u64,
    },
    /// Too many uncommitted bytes (backpressure); retry after commits.
    UncommittedBytesFull {
        /// Bytes currently proposed but uncommitted.
        uncommitted_bytes: u64,
        /// The configured limit.
        uncommitted_bytes_max: u64,
    },
    /// The entry alone exceeds the message size limit and could never be replicated.
    EntryTooLarge {
        /// The entry's accounted size.
        size_bytes: u64,
        /// The configured limit.
        message_bytes_max: u64,
    },
}

impl fmt::Display for ProposeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "proposal refused: {self:?}")
    }
}

impl std::error::Error for ProposeError {}

/// Why a leadership transfer was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferError {
    /// Only the leader can transfer leadership.
    NotLeader,
    /// The target is not a voter of this group (or is this member).
    NotAVoter,
}

impl fmt::Display for TransferError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "leadership transfer refused: {self:?}")
    }
}

impl std::error::Error for TransferError {}

/// Why a core could not be rebuilt from storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestoreError {
    /// The configuration is invalid.
    Config(ConfigError),
    /// The durable log could not be read at `index`.
    Read {
        /// The index being read.
        index: u64,
        /// What the reader said.
        error: ReadError,
    },
    /// The durable state contradicts itself: `log_start_index` is 0 (indexes start at 1), or
    /// `last_index` is before `log_start_index - 1` (the log would end before it starts).
    Inconsistent {
        /// The last durable index given.
        last_index: u64,
        /// The log start in the hard state (the first index still in the log).
        log_start_index: u64,
    },
}

impl fmt::Display for RestoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot restore raft state: {self:?}")
    }
}

impl std::error::Error for RestoreError {}

/// The persisted state a core is rebuilt from after a restart (see [`Raft::restore`]).
///
/// `hard_state` follows the schema (`proto/raftlog.proto`): `log_start_index` is the
/// **first index still in the log** (1 for a log that never compacted), `log_start_term` the
/// term of the entry just before it (0 if none) and `log_start_offset` the record offset at
/// `log_start_index`. The [`Default`] is a fresh member: term 0, no vote, an empty log
/// starting at index 1.
#[derive(Clone, Debug, PartialEq)]
pub struct RestoredState {
    /// The last durable hard state (term, vote, log start).
    pub hard_state: HardState,
    /// Index of the last durable entry (`hard_state.log_start_index - 1` if the log is empty).
    pub last_index: u64,
    /// An index the caller knows is committed (it saw the core report it), 0 when unknown.
    /// A driver that rebuilds its core without a process restart (after a failed write)
    /// passes its commit index so that retention and readers do not go backwards; it is
    /// clamped to `[log start, last_index]`.
    pub commit_index: u64,
    /// `Some(term)`: recovery dropped entries this member may have reported durable (a
    /// damaged log, not a clean crash) while its current term was `term`. Its vote could
    /// then elect a leader missing an entry committed with this member's help, so it neither
    /// grants (pre-)votes nor campaigns until its commit index points at an entry of a later
    /// term (see [`Raft::voting_withheld`]); if its term is not yet above `term`, it moves to
    /// `term + 1` (persisted with the next Ready) so that only such leaders are followed.
    /// Ignored in a single-voter group, where no other member could hold the lost entries.
    pub voting_withheld: Option<u64>,
    /// The configurations last persisted from [`Ready::membership`]; `None` for a member that
    /// never persisted one, which starts from its [`Config`]'s voters and learners.
    pub membership: Option<MembershipHistory>,
}

impl Default for RestoredState {
    fn default() -> Self {
        Self {
            hard_state: HardState {
                log_start_index: 1,
                ..HardState::default()
            },
            last_index: 0,
            commit_index: 0,
            voting_withheld: None,
            membership: None,
        }
    }
}

/// One member of one Raft group: a pure, deterministic state machine.
///
/// Inputs: [`tick`](Self::tick), [`step`](Self::step), [`propose`](Self::propose),
/// [`persisted`](Self::persisted), [`transfer_leader`](Self::transfer_leader),
/// [`compact`](Self::compact). Output: [`ready`](Self::ready).
pub struct Raft {
    /// Validated configuration.
    pub(crate) config: Config,
    /// Who votes and who only learns (the configuration in force, the last of
    /// `memberships`); every quorum is asked of it.
    pub(crate) membership: Membership,
    /// The configuration at the log start and every configuration entry after it.
    memberships: MembershipHistory,
    /// `memberships` changed since the last Ready.
    membership_dirty: bool,
    /// Configuration entries truncated since the last Ready, still listed in the next
    /// [`Ready::membership`] (see there).
    memberships_truncated: Vec<LoggedMembership>,
    /// Election timeout generator.
    rng: SplitMix64,
    /// Current term (§5.1); persisted before any message that depends on it.
    pub(crate) term: u64,
    /// Candidate voted for in `term`, 0 if none; persisted before the vote is sent.
    pub(crate) voted_for: u64,
    /// Leader of `term` as far as known, 0 if none.
    pub(crate) leader_id: u64,
    /// Current role.
    pub(crate) role: Role,
    /// The log view.
    pub(crate) log: RaftLog,
    /// Leader only: progress of every other voter.
    pub(crate) progress: BTreeMap<u64, Progress>,
    /// (Pre-)candidate only: votes received, by voter.
    votes: BTreeMap<u64, bool>,
    /// Ticks since the last election timeout reset (followers: since hearing the leader;
    /// leaders: since the last check-quorum round).
    pub(crate) election_elapsed_ticks: u32,
    /// Leader only: ticks since the last heartbeat.
    heartbeat_elapsed_ticks: u32,
    /// Current randomized timeout, in `[election_timeout, 2 * election_timeout)`.
    randomized_election_timeout_ticks: u32,
    /// Leader only: target of an ongoing leadership transfer.
    pub(crate) transferee: Option<u64>,
    /// Leader only: ticks since the transfer started.
    transfer_elapsed_ticks: u32,
    /// Leader only: (index, bytes) of own-term proposals not yet committed.
    uncommitted: VecDeque<(u64, u64)>,
    /// Sum of the bytes in `uncommitted`.
    uncommitted_bytes: u64,
    /// Follower only: highest index known to match the current leader's log.
    pub(crate) verified_index: u64,
    /// Follower only: durable index last reported to the leader.
    pub(crate) durable_reported_index: u64,
    // ---- pending output, drained by ready() ----
    /// Messages built so far.
    pub(crate) msgs: Vec<RaftMessage>,
    /// Hard state changed since the last Ready.
    hard_state_dirty: bool,
    /// Pending snapshot install.
    pub(crate) pending_snapshot: Option<LogPosition>,
    /// Pending truncation.
    pub(crate) pending_truncate: Option<u64>,
    /// Pending entries to append.
    pub(crate) pending_entries: Vec<Entry>,
    /// Commit index last reported in a Ready.
    commit_reported_index: u64,
    /// Leader only: followers that may need an AppendEntries built in `ready`.
    pub(crate) append_wanted: BTreeSet<u64>,
    /// Leader only: the commit index advanced since the last Ready.
    pub(crate) commit_changed: bool,
    /// Peer messages dropped as malformed or impossible.
    diagnostics: Diagnostics,
    /// `Some(t)` while voting is withheld after a restart that lost entries in term `t`
    /// ([`RestoredState::voting_withheld`]). Every entry this member could have acknowledged
    /// has a term `<= t`; once the commit index (verified against a leader) points at an
    /// entry of a term `> t`, whichever leader created that entry held every entry committed
    /// in earlier terms (leader completeness), below it, so this log holds them too. That
    /// entry must also be durable here: a plain crash must not lose the prefix again.
    pub(crate) voting_withheld_term: Option<u64>,
    /// Leader only: bytes of entries it may still send to learners before the driver grants
    /// more ([`Self::set_catch_up_budget`]); negative after an entry larger than the budget
    /// was sent (a debt later grants repay); `None` means no limit. Voters are never held
    /// back: quorum traffic is not throttled.
    pub(crate) catch_up_budget: Option<i64>,
    /// Bytes of entries sent to learners, and sends to learners held back for lack of budget.
    pub(crate) catch_up: CatchUpCounters,
}

/// What catch-up replication to learners has cost and waited, since the member started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CatchUpCounters {
    /// Bytes of entries sent to learners (accounted as [`super::entry_size_bytes`]).
    pub bytes_sent: u64,
    /// Times an AppendEntries to a learner was held back because the budget was spent.
    pub throttled: u64,
}

impl Raft {
    /// A new member of a fresh group with an empty log.
    ///
    /// # Errors
    /// If the configuration is invalid.
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        Self::restore(config, RestoredState::default(), &super::log::NoLog).map_err(|e| match e {
            RestoreError::Config(e) => e,
            other => unreachable!("an empty log needs no reads: {other:?}"),
        })
    }

    /// Rebuilds a member from its durable state after a restart: the hard state and the
    /// durable log, read through `reader` (terms by binary search over runs, plus the last
    /// entry for its offset). Un-persisted entries are gone, as after a real crash; the
    /// commit index restarts at `state.commit_index` (the log start when 0) and is relearned from
    /// the leader.
    ///
    /// # Errors
    /// [`RestoreError::Config`] if the configuration is invalid, [`RestoreError::Read`] if
    /// `reader` cannot return the terms or the last entry of `[log_start_index, last_index]`,
    /// [`RestoreError::Inconsistent`] if `log_start_index` is 0 or `last_index` is before
    /// `log_start_index - 1`.
    pub fn restore(
        config: Config,
        state: RestoredState,
        reader: &dyn LogReader,
    ) -> Result<Self, RestoreError> {
        config.validate().map_err(RestoreError::Config)?;
        let hs = &state.hard_state;
        let inconsistent = RestoreError::Inconsistent {
            last_index: state.last_index,
            log_start_index: hs.log_start_index,
        };
        // The schema's log start is the first index still in the log; the core keeps the
        // position just before it (the last index covered by compaction or a snapshot).
        let Some(covered_index) = hs.log_start_index.checked_sub(1) else {
            return Err(inconsistent);
        };
        let start = LogPosition {
            index: covered_index,
            term: hs.log_start_term,
            next_offset: hs.log_start_offset,
        };
        if state.last_index < start.index {
            return Err(inconsistent);
        }
        let runs = rebuild_runs(start.index, state.last_index, reader)?;
        let next_offset = if state.last_index == start.index {
            start.next_offset
        } else {
            let index = state.last_index;
            let last = reader
                .entries(index, index + 1, u64::MAX)
                .map_err(|error| RestoreError::Read { index, error })?;
            let last = last.first().ok_or(RestoreError::Read {
                index,
                error: ReadError::Unavailable,
            })?;
            last.base_offset + u64::from(last.record_count)
        };
        let mut log = RaftLog::new(start, runs, state.last_index, next_offset);
        log.set_cache_bytes_max(config.entry_cache_bytes_max);
        log.commit_index = state.commit_index.clamp(start.index, state.last_index);
        let memberships = match state.membership {
            Some(mut history) => {
                // Entries at or below the log start were compacted after they committed
                // (retention ran, the record was not rewritten yet): fold them. Above it, keep
                // only entries this durable log holds: a record is written before its entry
                // (or before a truncation takes one away), so it may name an entry that is
                // not, or no longer, there.
                let entries_log = &log;
                history.logged.retain(|logged| {
                    logged.index <= start.index
                        || (logged.index <= state.last_index
                            && entries_log.term_at(logged.index) == Some(logged.term))
                });
                // Of two entries at one index, the later leader's (higher term) replaced the
                // other.
                history.logged.reverse();
                history.logged.dedup_by_key(|logged| logged.index);
                history.logged.reverse();
                history.compact(start.index);
                history
            }
            None => MembershipHistory::new(Membership::new(
                config.voters.iter().copied(),
                config.learners.iter().copied(),
            )),
        };
        let mut raft = Self {
            rng: SplitMix64::new(config.seed),
            membership: memberships.effective().clone(),
            memberships,
            membership_dirty: false,
            memberships_truncated: Vec::new(),
            config,
            term: hs.current_term,
            voted_for: hs.voted_for,
            leader_id: 0,
            role: Role::Follower,
            log,
            progress: BTreeMap::new(),
            votes: BTreeMap::new(),
            election_elapsed_ticks: 0,
            heartbeat_elapsed_ticks: 0,
            randomized_election_timeout_ticks: 0,
            transferee: None,
            transfer_elapsed_ticks: 0,
            uncommitted: VecDeque::new(),
            uncommitted_bytes: 0,
            verified_index: 0,
            durable_reported_index: 0,
            msgs: Vec::new(),
            hard_state_dirty: false,
            pending_snapshot: None,
            pending_truncate: None,
            pending_entries: Vec::new(),
            commit_reported_index: start.index,
            append_wanted: BTreeSet::new(),
            commit_changed: false,
            diagnostics: Diagnostics::default(),
            voting_withheld_term: None,
            catch_up_budget: None,
            catch_up: CatchUpCounters::default(),
        };
        if let Some(lost_term) = state.voting_withheld {
            if raft.membership.all_voters().len() > 1 {
                raft.start_voting_withheld(lost_term);
            }
        }
        raft.commit_reported_index = raft.log.commit_index;
        raft.reset_election_timeout();
        Ok(raft)
    }

    // ---------------------------------------------------------------- accessors

    /// This member's id.
    pub fn id(&self) -> u64 {
        self.config.id
    }

    /// Current term.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// Current role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The leader of the current term, if known.
    pub fn leader_id(&self) -> Option<u64> {
        (self.leader_id != 0).then_some(self.leader_id)
    }

    /// Whether this member withholds its vote and does not campaign, because it restarted
    /// with entries lost ([`RestoredState::voting_withheld`]) and has not caught up with a
    /// leader since.
    pub fn voting_withheld(&self) -> bool {
        self.voting_withheld_term.is_some()
    }

    /// Whether this member may start an election: it is a voter of the configuration in
    /// force, or of the one before it while the newest configuration entry is not known to
    /// be committed. The second case is a leader removed by C_new that crashed before C_new
    /// committed: its log may be the only complete one, the others still count it in the
    /// joint configuration, and it must be able to lead again to finish the change (it counts
    /// only C_new's votes, never its own, so this is as safe as any candidate; §4.2.2).
    fn may_campaign(&self) -> bool {
        if self.voting_withheld() {
            return false;
        }
        if self.membership.is_voter(self.config.id) {
            return true;
        }
        self.memberships
            .last_index()
            .filter(|&index| index > self.log.commit_index)
            .is_some_and(|index| self.memberships.at(index - 1).is_voter(self.config.id))
    }

    /// The term in which this member lost entries while its vote is withheld, for a caller
    /// that rebuilds the core ([`RestoredState::voting_withheld`]).
    pub fn voting_withheld_term(&self) -> Option<u64> {
        self.voting_withheld_term
    }

    /// Withholds the vote after entries of term `lost_term` or earlier were lost, and moves
    /// past that term: leaders of `lost_term` (which may have counted a lost entry without
    /// this member's log showing it) are then refused as stale, and the leader that takes
    /// over creates entries of a later term, which lift it.
    fn start_voting_withheld(&mut self, lost_term: u64) {
        self.voting_withheld_term = Some(lost_term);
        if self.term <= lost_term {
            self.term = lost_term + 1;
            self.voted_for = 0;
            self.hard_state_dirty = true;
        }
    }

    /// The group's voters and learners as this member knows them: the configuration of
    /// the last configuration entry in its log, committed or not.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// The configuration at the log start and every configuration entry after it.
    pub fn membership_history(&self) -> &MembershipHistory {
        &self.memberships
    }

    /// The vote cast in the current term, if any.
    pub fn voted_for(&self) -> Option<u64> {
        (self.voted_for != 0).then_some(self.voted_for)
    }

    /// The commit index.
    pub fn commit_index(&self) -> u64 {
        self.log.commit_index
    }

    /// The record offset right after the last entry of this node's log (committed or not).
    pub fn next_offset(&self) -> u64 {
        self.log.next_offset
    }

    /// Index of the last entry in the log (durable or not).
    pub fn last_index(&self) -> u64 {
        self.log.last_index
    }

    /// Term of the last entry.
    pub fn last_term(&self) -> u64 {
        self.log.last_term()
    }

    /// Last index made durable in this member's own storage.
    pub fn persisted_index(&self) -> u64 {
        self.log.persisted_index
    }

    /// The snapshot position: the last index covered by compaction or a snapshot (0 if
    /// none), its term, and the next record offset. Everything up to and including
    /// `index` is gone; the first index still in the log is `index + 1`, which is what
    /// [`HardState::log_start_index`] holds.
    pub fn log_start(&self) -> LogPosition {
        self.log.start
    }

    /// Term of the entry at `index`, from the term index; `None` if compacted or absent.
    pub fn term_at(&self, index: u64) -> Option<u64> {
        self.log.term_at(index)
    }

    /// The term index (runs of equal terms) over the live log.
    pub fn term_runs(&self) -> &[TermRun] {
        self.log.runs()
    }

    /// Leader only: the replication progress of follower `id`.
    pub fn progress(&self, id: u64) -> Option<&Progress> {
        self.progress.get(&id)
    }

    /// Bytes proposed in this term and not yet committed (leader only).
    pub fn uncommitted_bytes(&self) -> u64 {
        self.uncommitted_bytes
    }

    /// The ongoing leadership transfer target, if any.
    pub fn transferee(&self) -> Option<u64> {
        self.transferee
    }

    /// Accounted bytes of the entry cache (bounded except for not-yet-durable entries).
    pub fn cache_bytes(&self) -> u64 {
        self.log.cache_bytes()
    }

    /// The current hard state, in the schema's convention: `log_start_index` is the first
    /// index still in the log (`log_start().index + 1`), `log_start_term` the term of the
    /// entry just before it, `log_start_offset` the record offset at `log_start_index`.
    pub fn hard_state(&self) -> HardState {
        HardState {
            current_term: self.term,
            voted_for: self.voted_for,
            log_start_index: self.log.start.index + 1,
            log_start_term: self.log.start.term,
            log_start_offset: self.log.start.next_offset,
        }
    }

    // ---------------------------------------------------------------- inputs

    /// Advances logical time by one tick: elections, heartbeats, check-quorum, transfers.
    pub fn tick(&mut self) {
        if self.role == Role::Leader {
            self.tick_leader();
        } else {
            self.tick_election();
        }
    }

    /// Starts an election now, as if the election timeout had expired (with a pre-vote round
    /// if configured). For operators and tests; a leader ignores it.
    pub fn campaign_now(&mut self) {
        if self.role != Role::Leader {
            self.election_elapsed_ticks = 0;
            self.campaign(self.config.pre_vote, false);
        }
    }

    /// Proposes one entry (a record batch of `record_count` records). The leader stamps term,
    /// index and base offset; `timestamp_ms` comes from the caller (the core has no clock).
    ///
    /// # Errors
    /// [`ProposeError`] if not leader, transferring, over the uncommitted-bytes cap, or the
    /// entry can never fit in a message.
    pub fn propose(
        &mut self,
        payload: Bytes,
        record_count: u32,
        timestamp_ms: i64,
    ) -> Result<Proposed, ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader_hint: self.leader_id(),
            });
        }
        if let Some(transferee) = self.transferee {
            return Err(ProposeError::Transferring { transferee });
        }
        let entry = Entry {
            term: self.term,
            index: self.log.last_index + 1,
            kind: EntryKind::Data as i32,
            base_offset: self.log.next_offset,
            record_count,
            timestamp_ms,
            payload,
        };
        let size_bytes = entry_size_bytes(&entry);
        if size_bytes > self.config.message_bytes_max {
            return Err(ProposeError::EntryTooLarge {
                size_bytes,
                message_bytes_max: self.config.message_bytes_max,
            });
        }
        // An empty pipeline always accepts one entry, so a large entry cannot wedge the group.
        if self.uncommitted_bytes > 0
            && self.uncommitted_bytes + size_bytes > self.config.uncommitted_bytes_max
        {
            return Err(ProposeError::UncommittedBytesFull {
                uncommitted_bytes: self.uncommitted_bytes,
                uncommitted_bytes_max: self.config.uncommitted_bytes_max,
            });
        }
        let proposed = Proposed {
            index: entry.index,
            term: entry.term,
            base_offset: entry.base_offset,
        };
        self.uncommitted.push_back((entry.index, size_bytes));
        self.uncommitted_bytes += size_bytes;
        self.append_as_leader(entry);
        Ok(proposed)
    }

    /// Proposes a change of the group's membership (dissertation ch. 4). The leader appends
    /// a configuration entry, which takes effect on each member as soon as it is in that
    /// member's log. A change of voters goes through the joint configuration; the leader
    /// appends the entry that leaves it by itself once the joint one is committed.
    ///
    /// # Errors
    /// [`MembershipError`]: not the leader, transferring, no entry of this term committed
    /// yet, another change not finished, or a change that is invalid from here.
    pub fn propose_membership(
        &mut self,
        change: &MembershipChange,
        timestamp_ms: i64,
    ) -> Result<Proposed, MembershipError> {
        if self.role != Role::Leader {
            return Err(MembershipError::NotLeader {
                leader_hint: self.leader_id(),
            });
        }
        if let Some(transferee) = self.transferee {
            return Err(MembershipError::Transferring { transferee });
        }
        if self.log.term_at(self.log.commit_index) != Some(self.term) {
            return Err(MembershipError::TermNotCommitted);
        }
        if let Some(index) = self.memberships.last_index() {
            if index > self.log.commit_index || self.membership.is_joint() {
                return Err(MembershipError::ChangePending { index });
            }
        }
        let next = self
            .membership
            .apply(change)
            .map_err(MembershipError::Invalid)?;
        Ok(self.append_config_as_leader(&next, timestamp_ms))
    }

    /// Appends a configuration entry on the leader; it takes effect at once.
    fn append_config_as_leader(&mut self, membership: &Membership, timestamp_ms: i64) -> Proposed {
        let entry = Entry {
            term: self.term,
            index: self.log.last_index + 1,
            kind: EntryKind::Config as i32,
            base_offset: self.log.next_offset,
            record_count: 0,
            timestamp_ms,
            payload: Bytes::from(membership.to_proto().encode_to_vec()),
        };
        let proposed = Proposed {
            index: entry.index,
            term: entry.term,
            base_offset: entry.base_offset,
        };
        self.append_as_leader(entry);
        proposed
    }

    /// Reports that storage made the log durable up to (`index`, `term`). Stale reports (the
    /// entry at `index` has another term now, or was truncated) are dropped.
    pub fn persisted(&mut self, index: u64, term: u64) {
        if !self.log.persisted(index, term) {
            return;
        }
        match self.role {
            Role::Leader => self.maybe_commit(),
            _ => {
                self.maybe_lift_voting_withheld();
                self.report_durable();
            }
        }
    }

    /// Starts a leadership transfer to `to` (dissertation §3.10): proposals are refused until
    /// it completes or is abandoned after an election timeout.
    ///
    /// # Errors
    /// [`TransferError`] if not leader or `to` is not another voter.
    pub fn transfer_leader(&mut self, to: u64) -> Result<(), TransferError> {
        if self.role != Role::Leader {
            return Err(TransferError::NotLeader);
        }
        if to == self.config.id
            || !self.membership.voters.contains(&to)
            || !self.progress.contains_key(&to)
        {
            return Err(TransferError::NotAVoter);
        }
        self.transferee = Some(to);
        self.transfer_elapsed_ticks = 0;
        self.maybe_send_timeout_now(to);
        Ok(())
    }

    /// Tells the core that retention moved the log start to (`index`, `term`, `next_offset`):
    /// entries up to `index` are gone from storage. Followers that still need them will get
    /// an InstallSnapshot.
    ///
    /// # Panics
    /// If `index` is not committed or the term does not match the entry at `index`.
    pub fn compact(&mut self, index: u64, term: u64, next_offset: u64) {
        assert!(
            index <= self.log.commit_index,
            "compacting uncommitted index {index} (commit {})",
            self.log.commit_index
        );
        assert!(
            index <= self.log.persisted_index,
            "compacting non-durable index {index}"
        );
        if index <= self.log.start.index {
            return;
        }
        self.log.compact(LogPosition {
            index,
            term,
            next_offset,
        });
        self.memberships.compact(index);
        self.membership_dirty = true;
        self.hard_state_dirty = true;
    }

    /// Takes everything to do (see [`Ready`] for the order). `reader` serves entries that
    /// lagging followers need and the core no longer caches; it is only read, synchronously.
    pub fn ready(&mut self, reader: &dyn LogReader) -> Ready {
        // Cheap (O(1)) and catches a broken log invariant at the Ready that would expose it.
        self.log.check();
        if self.role == Role::Leader {
            self.send_wanted_appends(reader);
        }
        let commit_index =
            (self.log.commit_index > self.commit_reported_index).then_some(self.log.commit_index);
        self.commit_reported_index = self.log.commit_index;
        let hard_state = std::mem::take(&mut self.hard_state_dirty).then(|| self.hard_state());
        let membership = std::mem::take(&mut self.membership_dirty).then(|| {
            let mut history = self.memberships.clone();
            history.logged.append(&mut self.memberships_truncated);
            history
                .logged
                .sort_by_key(|logged| (logged.index, logged.term));
            history
        });
        Ready {
            membership,
            hard_state,
            snapshot: self.pending_snapshot.take(),
            truncate_from: self.pending_truncate.take(),
            entries: std::mem::take(&mut self.pending_entries),
            messages: std::mem::take(&mut self.msgs),
            commit_index,
        }
    }

    // ---------------------------------------------------------------- step

    /// Feeds one message from a peer. Never panics on what the message says: messages for
    /// another group or member, from a non-member, a learner's anything but a replication
    /// answer, without a body, or claiming something no
    /// honest member could (see [`DropReason`]) are dropped and counted in
    /// [`diagnostics`](Self::diagnostics).
    pub fn step(&mut self, m: RaftMessage) {
        if let Err(reason) = self.check_envelope(&m) {
            self.drop_message(m.from, reason);
            return;
        }
        let Some(body) = m.body else { return };
        let term = message_term(&body);
        if term > self.term {
            if !self.accept_higher_term(m.from, &body) {
                return;
            }
        } else if term < self.term {
            self.step_stale(m.from, &body);
            return;
        }
        match body {
            Body::RequestVote(rv) => self.handle_request_vote(m.from, rv),
            Body::RequestVoteResponse(r) => self.handle_vote_response(m.from, r),
            _ => match self.role {
                Role::Leader => self.step_leader(m.from, body),
                Role::Candidate | Role::PreCandidate => self.step_candidate(m.from, body),
                Role::Follower => self.step_follower(m.from, body),
            },
        }
    }

    /// Limits what a leader sends to learners (members catching up before a move makes them
    /// voters) to `budget` more bytes, or lifts the limit (`None`). The driver tops the
    /// budget up from a node-wide rate, so many groups catching up at once share one
    /// bandwidth. A learner's AppendEntries is cut to the budget left (at least one entry
    /// is sent while any budget is left); an entry larger than the budget leaves it
    /// negative, a debt the next grants repay before a learner is sent anything again, so
    /// the rate holds on average whatever the entry sizes.
    pub fn set_catch_up_budget(&mut self, budget: Option<i64>) {
        self.catch_up_budget = budget;
        if budget.is_some_and(|b| b > 0) && self.role == Role::Leader {
            // Learners held back since the budget ran out may be sent to now.
            let learners: Vec<u64> = self
                .progress
                .keys()
                .copied()
                .filter(|&p| !self.membership.is_voter(p))
                .collect();
            self.append_wanted.extend(learners);
        }
    }

    /// The catch-up budget left (negative: owed), `None` when unlimited.
    pub fn catch_up_budget(&self) -> Option<i64> {
        self.catch_up_budget
    }

    /// Catch-up bytes sent and sends held back (see [`CatchUpCounters`]).
    pub fn catch_up_counters(&self) -> CatchUpCounters {
        self.catch_up
    }

    /// Peer messages this member dropped as malformed or impossible.
    pub fn diagnostics(&self) -> Diagnostics {
        self.diagnostics
    }

    /// Checks the routing fields and what the body claims about itself.
    fn check_envelope(&self, m: &RaftMessage) -> Result<(), DropReason> {
        if m.group_id != self.config.group_id {
            return Err(DropReason::WrongGroup);
        }
        if m.to != self.config.id || m.from == 0 || m.from == self.config.id {
            return Err(DropReason::WrongRecipient);
        }
        // Messages from members this member does not know as voters are processed: a member
        // that lags a configuration change must follow, and vote for, a leader or candidate
        // added by an entry it has not received yet. Nothing from them is ever counted: votes
        // count only from voters of the candidate's own configuration, replication answers
        // only from members the leader tracks.
        let body = m.body.as_ref().ok_or(DropReason::NoBody)?;
        check_body(body)
    }

    /// Drops a peer message that is malformed or impossible, keeping a count.
    pub(crate) fn drop_message(&mut self, from: u64, reason: DropReason) {
        self.diagnostics.record(from, reason);
    }

    /// Handles a message whose term is above ours; returns whether to keep processing it.
    fn accept_higher_term(&mut self, from: u64, body: &Body) -> bool {
        match body {
            Body::RequestVote(rv) => {
                // A member that heard from a live leader recently ignores campaigns: this is
                // what stops a rejoining or partially partitioned node from deposing a healthy
                // leader (dissertation §4.2.3). A transfer was asked for by the leader itself.
                if !rv.leadership_transfer && self.in_lease() {
                    return false;
                }
                // A candidate this member does not know as a voter is heard only if it could
                // win this member's vote: a voter added by an entry this member lacks has a
                // log at least as up to date, while a member removed from the group (which
                // never learns it, and campaigns on) has not, and must not depose a leader
                // by raising terms (dissertation §4.2.3; without a lease this is what
                // protects the group).
                if !self.membership.is_voter(from)
                    && !self.log.is_up_to_date(rv.last_log_index, rv.last_log_term)
                {
                    return false;
                }
                // Pre-votes never change the receiver's term.
                if !rv.pre_vote {
                    self.become_follower(rv.term, 0);
                }
                true
            }
            // A granted pre-vote carries the future term; only a real election changes terms.
            Body::RequestVoteResponse(r) if r.pre_vote && r.vote_granted => true,
            Body::AppendEntries(_) | Body::InstallSnapshot(_) | Body::TimeoutNow(_) => {
                self.become_follower(message_term(body), from);
                true
            }
            _ => {
                self.become_follower(message_term(body), 0);
                true
            }
        }
    }

    /// Handles a message from an older term: mostly ignored, but answered when the answer
    /// unsticks the sender.
    fn step_stale(&mut self, from: u64, body: &Body) {
        match body {
            // A deposed leader (or one cut off and back) learns the new term from the reply and
            // steps down; with pre-vote and check-quorum it would otherwise never see a higher
            // term, since nobody campaigns against it.
            Body::AppendEntries(_) | Body::InstallSnapshot(_) => {
                let reply = self.append_response(false, 0, 0, 0);
                self.send(from, Body::AppendEntriesResponse(reply));
            }
            // Reject a stale pre-vote explicitly so the pre-candidate learns our term.
            Body::RequestVote(rv) if rv.pre_vote => {
                let reply = RequestVoteResponse {
                    term: self.term,
                    vote_granted: false,
                    pre_vote: true,
                };
                self.send(from, Body::RequestVoteResponse(reply));
            }
            _ => {}
        }
    }

    /// Whether a leader was heard from within the election timeout, so (pre-)votes must be
    /// refused. Tied to check-quorum (as in etcd): only then does a leader that lost its
    /// quorum step down by itself, which is what makes honouring its lease safe for liveness.
    fn in_lease(&self) -> bool {
        self.config.check_quorum
            && self.leader_id != 0
            && self.election_elapsed_ticks < self.config.election_timeout_ticks
    }

    /// RequestVote (§5.2, §5.4.1), also for pre-votes (§9.6).
    fn handle_request_vote(&mut self, from: u64, rv: RequestVote) {
        let can_vote = if rv.pre_vote {
            // A pre-vote is granted for a future term to anyone with a good enough log, unless
            // we still follow a live leader (unless the leader itself asked for the transfer).
            rv.term > self.term && (rv.leadership_transfer || !self.in_lease())
        } else {
            self.voted_for == from || (self.voted_for == 0 && self.leader_id == 0)
        };
        // A member that lost entries it may have acknowledged cannot judge "up to date".
        // Whether this member votes in its own configuration does not matter (§4.1: requests
        // are processed without consulting the configuration): a learner may already be a
        // voter in the candidate's newer one, and a candidate counts only its own voters.
        let granted = can_vote
            && !self.voting_withheld()
            && self.log.is_up_to_date(rv.last_log_index, rv.last_log_term);
        if granted && !rv.pre_vote {
            self.voted_for = from;
            self.hard_state_dirty = true;
            self.election_elapsed_ticks = 0;
        }
        let term = if granted && rv.pre_vote {
            rv.term
        } else {
            self.term
        };
        let reply = RequestVoteResponse {
            term,
            vote_granted: granted,
            pre_vote: rv.pre_vote,
        };
        self.send(from, Body::RequestVoteResponse(reply));
    }

    /// Counts a (pre-)vote; wins or loses the election once a quorum decides.
    fn handle_vote_response(&mut self, from: u64, r: RequestVoteResponse) {
        let expected = match self.role {
            Role::PreCandidate => r.pre_vote,
            Role::Candidate => !r.pre_vote,
            _ => false,
        };
        if !expected {
            return;
        }
        self.votes.entry(from).or_insert(r.vote_granted);
        match self.membership.vote_result(&self.votes) {
            VoteResult::Won if self.role == Role::PreCandidate => self.campaign(false, false),
            VoteResult::Won => self.become_leader(),
            VoteResult::Lost => self.become_follower(self.term, 0),
            VoteResult::Pending => {}
        }
    }

    // ---------------------------------------------------------------- roles

    /// A follower or candidate lets its election timer run; on expiry it campaigns.
    fn tick_election(&mut self) {
        self.election_elapsed_ticks = self.election_elapsed_ticks.saturating_add(1);
        if self.election_elapsed_ticks < self.randomized_election_timeout_ticks {
            return;
        }
        // A member that may not campaign keeps counting instead of starting over: the leader
        // it last heard has been silent for an election timeout, so its lease is over and
        // this member must grant (pre-)votes to whoever can bring the group back.
        if !self.may_campaign() {
            return;
        }
        self.election_elapsed_ticks = 0;
        self.campaign(self.config.pre_vote, false);
    }

    /// A leader sends heartbeats, checks its quorum and abandons a stuck transfer.
    fn tick_leader(&mut self) {
        self.heartbeat_elapsed_ticks += 1;
        self.election_elapsed_ticks += 1;
        if self.transferee.is_some() {
            self.transfer_elapsed_ticks += 1;
            if self.transfer_elapsed_ticks >= self.config.election_timeout_ticks {
                self.transferee = None;
            }
        }
        self.tick_progress();
        if self.election_elapsed_ticks >= self.config.election_timeout_ticks {
            self.election_elapsed_ticks = 0;
            if self.config.check_quorum && !self.quorum_recently_active() {
                self.become_follower(self.term, 0);
                return;
            }
        }
        if self.heartbeat_elapsed_ticks >= self.config.heartbeat_interval_ticks {
            self.heartbeat_elapsed_ticks = 0;
            self.broadcast_heartbeat();
        }
    }

    /// Notices lost replication messages: a snapshot unanswered for an election timeout, or
    /// pipelined entries unacknowledged for half of one, make the leader probe again.
    fn tick_progress(&mut self) {
        let timeout = self.config.election_timeout_ticks;
        for (&peer, pr) in self.progress.iter_mut() {
            let stalled = match pr.state {
                ProgressState::Snapshot { .. } => {
                    pr.snapshot_elapsed_ticks += 1;
                    pr.snapshot_elapsed_ticks >= timeout
                }
                ProgressState::Replicate if !pr.inflight.is_empty() => {
                    pr.stalled_ticks += 1;
                    pr.stalled_ticks >= timeout.div_ceil(2)
                }
                _ => false,
            };
            if stalled {
                let next = pr.match_index + 1;
                pr.become_probe(next);
                self.append_wanted.insert(peer);
            }
        }
    }

    /// Check-quorum: true if a quorum (this leader included) was heard from since the last
    /// round; resets the marks for the next round.
    fn quorum_recently_active(&mut self) -> bool {
        let me = self.config.id;
        let progress = &self.progress;
        let active = self
            .membership
            .has_quorum(|id| id == me || progress.get(&id).is_some_and(|p| p.recent_active));
        for pr in self.progress.values_mut() {
            pr.recent_active = false;
        }
        active
    }

    /// Starts a (pre-)election. `transfer` marks a campaign asked for by the old leader.
    pub(crate) fn campaign(&mut self, pre_vote: bool, transfer: bool) {
        // A learner only follows; a member whose log could miss committed entries waits for
        // a leader instead.
        if !self.may_campaign() {
            self.election_elapsed_ticks = 0;
            return;
        }
        let term = if pre_vote {
            self.become_pre_candidate();
            self.term + 1
        } else {
            self.become_candidate();
            self.term
        };
        // Our own vote, then maybe we already have a quorum (single-member group).
        self.votes.insert(self.config.id, true);
        if self.membership.vote_result(&self.votes) == VoteResult::Won {
            if pre_vote {
                self.campaign(false, transfer);
            } else {
                self.become_leader();
            }
            return;
        }
        let request = RequestVote {
            term,
            candidate_id: self.config.id,
            last_log_index: self.log.last_index,
            last_log_term: self.log.last_term(),
            pre_vote,
            leadership_transfer: transfer,
        };
        for peer in self.voting_peers() {
            self.send(peer, Body::RequestVote(request));
        }
    }

    /// Becomes a follower of `leader_id` (0: unknown) in `term`.
    pub(crate) fn become_follower(&mut self, term: u64, leader_id: u64) {
        assert!(
            term >= self.term,
            "term going backwards: {} -> {term}",
            self.term
        );
        // What was verified against a leader holds for that leader in that term only: the
        // same member re-elected after a crash may have lost entries it once sent us.
        if term > self.term || self.role != Role::Follower || self.leader_id != leader_id {
            self.verified_index = 0;
            self.durable_reported_index = 0;
        }
        if term > self.term {
            self.term = term;
            self.voted_for = 0;
            self.hard_state_dirty = true;
        }
        self.role = Role::Follower;
        self.leader_id = leader_id;
        self.reset_role_state();
    }

    fn become_pre_candidate(&mut self) {
        self.role = Role::PreCandidate;
        self.leader_id = 0;
        self.reset_role_state();
    }

    fn become_candidate(&mut self) {
        self.term += 1;
        self.voted_for = self.config.id;
        self.hard_state_dirty = true;
        self.role = Role::Candidate;
        self.leader_id = 0;
        self.reset_role_state();
    }

    /// Wins the election: resets progress and appends the no-op of the new term (§8), which
    /// is what lets earlier-term entries commit (Figure 8).
    fn become_leader(&mut self) {
        assert_eq!(
            self.role,
            Role::Candidate,
            "only a candidate becomes leader"
        );
        self.role = Role::Leader;
        self.leader_id = self.config.id;
        self.reset_role_state();
        let last_index = self.log.last_index;
        for peer in self.peers() {
            self.progress.insert(peer, Progress::new(last_index));
        }
        let noop = Entry {
            term: self.term,
            index: last_index + 1,
            kind: EntryKind::Noop as i32,
            base_offset: self.log.next_offset,
            record_count: 0,
            timestamp_ms: 0,
            payload: Bytes::new(),
        };
        self.append_as_leader(noop);
    }

    /// Clears everything that belongs to one role in one term.
    fn reset_role_state(&mut self) {
        self.progress.clear();
        self.votes.clear();
        self.append_wanted.clear();
        self.transferee = None;
        self.transfer_elapsed_ticks = 0;
        self.uncommitted.clear();
        self.uncommitted_bytes = 0;
        self.election_elapsed_ticks = 0;
        self.heartbeat_elapsed_ticks = 0;
        self.reset_election_timeout();
    }

    fn reset_election_timeout(&mut self) {
        let low = self.config.election_timeout_ticks;
        self.randomized_election_timeout_ticks = self.rng.range_u32(low, 2 * low);
    }

    // ---------------------------------------------------------------- helpers

    /// Appends an entry on the leader: to the log view, to the next Ready, and to every
    /// follower's queue. The leader's own write then runs in parallel with sending.
    fn append_as_leader(&mut self, entry: Entry) {
        self.log.append(std::slice::from_ref(&entry));
        self.note_config_entries(std::slice::from_ref(&entry));
        self.pending_entries.push(entry);
        self.append_wanted.extend(self.progress.keys().copied());
    }

    /// Puts the configurations of just-appended entries in force (dissertation §4.1: a
    /// member uses the latest configuration in its log, committed or not).
    pub(crate) fn note_config_entries(&mut self, entries: &[Entry]) {
        let mut changed = false;
        for entry in entries {
            if entry.kind != EntryKind::Config as i32 {
                continue;
            }
            // check_body refused peer entries whose configuration does not decode.
            let Some(membership) = decode_config(&entry.payload) else {
                continue;
            };
            self.memberships.push(LoggedMembership {
                index: entry.index,
                term: entry.term,
                membership,
            });
            changed = true;
        }
        if changed {
            self.membership_changed();
        }
    }

    /// Forgets the configurations of entries from `index` on, which are being truncated.
    pub(crate) fn forget_config_entries_from(&mut self, index: u64) {
        let truncated = self.memberships.truncate_from(index);
        if !truncated.is_empty() {
            self.memberships_truncated.extend(truncated);
            self.membership_changed();
        }
    }

    /// Replaces every configuration with the one a snapshot carries (its log is gone).
    pub(crate) fn reset_memberships(&mut self, at_log_start: Membership) {
        let truncated = std::mem::take(&mut self.memberships.logged);
        self.memberships_truncated.extend(truncated);
        self.memberships = MembershipHistory::new(at_log_start);
        self.membership_changed();
    }

    /// The log start moved to `index` without losing the suffix.
    pub(crate) fn compact_memberships(&mut self, index: u64) {
        self.memberships.compact(index);
        self.membership_dirty = true;
    }

    /// The configuration in force changed: a leader starts or stops replicating to the
    /// members that came or went, and a transfer to a member no longer voting is dropped.
    fn membership_changed(&mut self) {
        self.membership = self.memberships.effective().clone();
        self.membership_dirty = true;
        if self.role != Role::Leader {
            return;
        }
        let members = self.peers();
        self.progress.retain(|id, _| members.contains(id));
        let last_index = self.log.last_index;
        for peer in members {
            if let std::collections::btree_map::Entry::Vacant(slot) = self.progress.entry(peer) {
                slot.insert(Progress::new(last_index));
                self.append_wanted.insert(peer);
            }
        }
        self.append_wanted
            .retain(|id| self.progress.contains_key(id));
        if self
            .transferee
            .is_some_and(|to| !self.membership.voters.contains(&to))
        {
            self.transferee = None;
        }
    }

    /// After the commit index advanced on a leader: leave a joint configuration once its
    /// entry is committed, and step down once a committed configuration no longer has this
    /// leader as a voter (dissertation §4.2.2), handing leadership to the most caught-up
    /// voter on the way.
    pub(crate) fn finish_membership_change(&mut self) {
        let Some(index) = self.memberships.last_index() else {
            return;
        };
        if index > self.log.commit_index {
            return;
        }
        if self.membership.is_joint() {
            // Timestamp 0, as for the no-op: the core has no clock, and an entry without
            // records must not move a segment's newest timestamp for retention.
            let simple = self.membership.leave_joint();
            self.append_config_as_leader(&simple, 0);
        } else if !self.membership.is_voter(self.config.id) {
            let last_index = self.log.last_index;
            let successor = self
                .progress
                .iter()
                .filter(|(id, _)| self.membership.voters.contains(id))
                .max_by_key(|(_, pr)| pr.match_index)
                .filter(|(_, pr)| pr.match_index == last_index)
                .map(|(&id, _)| id);
            if let Some(to) = successor {
                self.send(
                    to,
                    Body::TimeoutNow(TimeoutNow {
                        term: self.term,
                        leader_id: self.config.id,
                    }),
                );
            }
            self.become_follower(self.term, 0);
        }
    }

    /// Frees the uncommitted-bytes budget of entries up to the new commit index.
    pub(crate) fn release_uncommitted(&mut self) {
        while self
            .uncommitted
            .front()
            .is_some_and(|&(index, _)| index <= self.log.commit_index)
        {
            let (_, bytes) = self.uncommitted.pop_front().expect("checked non-empty");
            self.uncommitted_bytes -= bytes;
        }
    }

    /// Sends TimeoutNow to the transferee once its log is up to date (dissertation §3.10).
    pub(crate) fn maybe_send_timeout_now(&mut self, to: u64) {
        let match_index = self.progress[&to].match_index;
        if match_index == self.log.last_index {
            self.send(
                to,
                Body::TimeoutNow(TimeoutNow {
                    term: self.term,
                    leader_id: self.config.id,
                }),
            );
        } else {
            self.append_wanted.insert(to);
        }
    }

    /// Queues a message to `to`.
    pub(crate) fn send(&mut self, to: u64, body: Body) {
        self.msgs.push(RaftMessage {
            group_id: self.config.group_id,
            from: self.config.id,
            to,
            body: Some(body),
        });
    }

    /// The other members (voters and learners), in id order: whom a leader replicates to.
    pub(crate) fn peers(&self) -> Vec<u64> {
        let me = self.config.id;
        self.membership
            .members()
            .into_iter()
            .filter(|&id| id != me)
            .collect()
    }

    /// The other voters of either side, in id order: whom a candidate asks for votes.
    fn voting_peers(&self) -> Vec<u64> {
        let me = self.config.id;
        self.membership
            .all_voters()
            .into_iter()
            .filter(|&id| id != me)
            .collect()
    }

    /// Marks the hard state for the next Ready.
    pub(crate) fn mark_hard_state_dirty(&mut self) {
        self.hard_state_dirty = true;
    }
}

/// The configuration a configuration entry's payload holds, if it is a valid one.
pub(crate) fn decode_config(payload: &[u8]) -> Option<Membership> {
    let config = GroupConfig::decode(payload).ok()?;
    Membership::from_proto(&config).ok()
}

/// Rebuilds the term index of `(start, last]` with O(runs · log n) `term_at` reads: terms are
/// non-decreasing along the log, so each run's end is found by binary search.
fn rebuild_runs(
    start: u64,
    last: u64,
    reader: &dyn LogReader,
) -> Result<Vec<TermRun>, RestoreError> {
    let term_at = |index: u64| {
        reader
            .term_at(index)
            .map_err(|error| RestoreError::Read { index, error })
    };
    let mut runs = Vec::new();
    let mut first = start + 1;
    while first <= last {
        let term = term_at(first)?;
        // Invariant: term_at(lo) == term, and everything after `hi` has a larger term.
        let (mut lo, mut hi) = (first, last);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if term_at(mid)? == term {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        runs.push(TermRun {
            first_index: first,
            term,
        });
        first = lo + 1;
    }
    Ok(runs)
}
