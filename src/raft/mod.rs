//! The Raft consensus core: a pure, deterministic state machine per Raft group.
//!
//! It owns elections, replication decisions and the commit index; it does **not** own IO,
//! time or threads. The caller (the replica driver, or a test/simulator) feeds inputs and
//! carries out the resulting [`Ready`]:
//!
//! - inputs: [`Raft::tick`] (logical time), [`Raft::step`] (a peer's message),
//!   [`Raft::propose`], [`Raft::persisted`] (own storage durable up to (index, term)),
//!   [`Raft::transfer_leader`], [`Raft::compact`] (retention moved the log start);
//! - output: [`Raft::ready`], taking everything to do since the last call.
//!
//! # The Ready contract
//!
//! After inputs, call `ready(&reader)` and carry out the [`Ready`] in this order:
//!
//! 1. Persist `hard_state` (fsync) **before sending any message** of this Ready: a vote or
//!    a newly acknowledged term must survive a crash, or a member could vote twice in a term.
//! 2. Apply `snapshot` (move the log start, dropping entries up to it), then
//!    `truncate_from`, then append `entries`. This write may run **in parallel with step 3**:
//!    the leader's own copy counts toward commit only once reported durable, and a
//!    follower's answers carry its durable index separately from its appended index.
//! 3. Send `messages` (any order, any loss: the protocol tolerates both).
//! 4. Expose entries up to `commit_index` to consumers. They are written (or in this Ready's
//!    `entries`); on a follower they may not be durable locally yet, but they are on a quorum.
//! 5. When the append is durable, call `persisted(last.index, last.term)`. Reports are
//!    checked against the current log, so a completion that raced with a truncation (the
//!    term at that index changed) is dropped. Writes must complete in the order issued.
//!
//! There is no separate `advance`: `ready` hands everything over and forgets it.
//!
//! # Entries for lagging followers
//!
//! The core keeps a term index for the whole log and a cache of recent entries (every entry
//! not yet durable, plus durable ones up to `entry_cache_bytes_max`). Messages carrying
//! entries are built inside `ready`, which borrows a [`LogReader`]; older entries are read
//! through it synchronously. A reader that reports [`ReadError::Compacted`] makes the leader
//! send an InstallSnapshot of its log start instead; `Unavailable` is retried later.
//!
//! # Peer input
//!
//! A peer message never panics the core: malformed or impossible input (see
//! [`DropReason`]) is dropped and counted in [`Raft::diagnostics`]. `assert!`s guard the
//! core's own invariants and the caller's inputs (`compact`, the `LogReader`), not peers.
//!
//! # Restart
//!
//! [`Raft::restore`] rebuilds a member from its durable hard state and durable log
//! ([`RestoredState`] plus a reader); un-persisted entries are simply not there.
//!
//! The hard state follows the schema: `log_start_index` is the first index still in the log
//! (1 for a fresh log) and `log_start_term` the term of the entry before it. The core's
//! [`LogPosition`] ([`Raft::log_start`], [`Ready::snapshot`], [`Raft::compact`]) names the
//! last index covered instead, so `log_start_index == log_start().index + 1`.

mod check;
mod config;
mod leader;
mod log;
mod membership;
mod node;
mod progress;
mod replication;

pub use check::{message_term, Diagnostics, DropReason, Dropped, TERM_MAX};
pub use config::{Config, ConfigError, ENTRY_OVERHEAD_BYTES};
pub use log::{entry_size_bytes, LogPosition, LogReader, NoLog, ReadError, TermRun};
pub use membership::{
    LoggedMembership, Membership, MembershipChange, MembershipError, MembershipHistory, VoteResult,
};
pub use node::{
    CatchUpCounters, ProposeError, Proposed, Raft, Ready, RestoreError, RestoredState, Role,
    TransferError,
};
pub use progress::{Progress, ProgressState};
