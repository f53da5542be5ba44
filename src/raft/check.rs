//! Validation of peer input: what a message from another member may claim.
//!
//! A peer message must never panic a server. Anything malformed or impossible under the
//! protocol (a term of 0, entries that are not contiguous, an index beyond what this leader
//! ever had, a second leader in our term) is dropped here or in the handler that can tell,
//! counted in [`Diagnostics`], and otherwise ignored. `assert!` stays for the core's own
//! invariants only: a broken invariant is a bug in this crate, a bad message is the world.
//!
//! What this module does not own: stale messages (older terms, duplicates, reorderings) are
//! normal traffic, handled by the protocol, and not counted.

use std::fmt;

use crate::proto::raft_message::Body;
use crate::proto::{AppendEntries, EntryKind, InstallSnapshot};

use super::membership::Membership;
use super::node::decode_config;

/// The highest term a peer message may carry: 2^62. Terms grow by one per election round,
/// so no group ever gets near it (at a million elections a second, it would take over
/// 100,000 years), while the margin below `u64::MAX` means campaigning from any accepted term
/// cannot overflow.
pub const TERM_MAX: u64 = 1 << 62;

/// Why a peer message was dropped as malformed or impossible.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// `group_id` is not this member's group.
    WrongGroup,
    /// `to` is not this member, or `from` is this member.
    WrongRecipient,
    /// The message has no body.
    NoBody,
    /// The term is 0 (only a fresh member's vote rejection may carry it) or above
    /// [`TERM_MAX`] (which no honest member reaches, and which could overflow the next
    /// campaign's term).
    BadTerm,
    /// AppendEntries entries are not contiguous from `prev_log_index + 1`, their terms
    /// decrease, fall below `prev_log_term` or exceed the message's term, an entry at an
    /// index above 0 has term 0, or a configuration entry carries records or a
    /// configuration no member could run with.
    MalformedEntries,
    /// A RequestVote whose last log entry is impossible: a term above the candidate's, or
    /// term 0 at an index above 0 (and the reverse).
    MalformedVoteRequest,
    /// An InstallSnapshot whose position is impossible (a term above the message's term, or
    /// term 0 at an index above 0 and the reverse), or without a valid configuration.
    MalformedSnapshot,
    /// A follower claims to have appended, made durable or installed an index beyond this
    /// leader's last index; within one term a leader's log only grows, so this cannot be an
    /// answer to anything it sent.
    IndexBeyondLog,
    /// A rejection's conflict hint is impossible: index 0, or a term above the leader's.
    BadConflictHint,
    /// A leader message (AppendEntries, InstallSnapshot, TimeoutNow) reached the leader of
    /// the same term: two leaders in one term (election safety) cannot both be right.
    SecondLeader,
    /// TimeoutNow from a member that is not the known leader of this term.
    TimeoutNowNotFromLeader,
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

/// One dropped peer message: who sent it and why it was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dropped {
    /// The `from` field of the dropped message.
    pub from: u64,
    /// Why it was dropped.
    pub reason: DropReason,
}

/// Counters of peer input the core refused, for the caller to log or export
/// (the core itself exports nothing).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Diagnostics {
    /// Peer messages dropped as malformed or impossible, since the core was built.
    pub dropped_messages_count: u64,
    /// The most recent such message.
    pub last_dropped: Option<Dropped>,
}

impl Diagnostics {
    /// Records a dropped message.
    pub(crate) fn record(&mut self, from: u64, reason: DropReason) {
        self.dropped_messages_count += 1;
        self.last_dropped = Some(Dropped { from, reason });
    }
}

/// Checks what a message body claims about itself, without looking at this member's state.
///
/// # Errors
/// The [`DropReason`] of a body no honest member could have sent.
pub(crate) fn check_body(body: &Body) -> Result<(), DropReason> {
    let term = message_term(body);
    let term_zero_allowed = matches!(body, Body::RequestVoteResponse(r) if !r.vote_granted);
    if term > TERM_MAX || (term == 0 && !term_zero_allowed) {
        return Err(DropReason::BadTerm);
    }
    match body {
        Body::AppendEntries(m) => check_entries(m),
        Body::InstallSnapshot(m) => check_snapshot(m),
        Body::RequestVote(m)
            if m.last_log_term > m.term || (m.last_log_index == 0) != (m.last_log_term == 0) =>
        {
            Err(DropReason::MalformedVoteRequest)
        }
        _ => Ok(()),
    }
}

/// Entries must continue the log right after `(prev_log_index, prev_log_term)` with
/// non-decreasing terms no higher than the leader's: otherwise appending them would break
/// the log's own invariants.
fn check_entries(m: &AppendEntries) -> Result<(), DropReason> {
    if m.prev_log_term > m.term || (m.prev_log_index == 0) != (m.prev_log_term == 0) {
        return Err(DropReason::MalformedEntries);
    }
    let mut expected_index = m.prev_log_index;
    let mut previous_term = m.prev_log_term;
    for entry in &m.entries {
        expected_index = expected_index
            .checked_add(1)
            .ok_or(DropReason::MalformedEntries)?;
        if entry.index != expected_index
            || entry.term < previous_term
            || entry.term > m.term
            || entry.term == 0
        {
            return Err(DropReason::MalformedEntries);
        }
        if entry.kind == EntryKind::Config as i32
            && (entry.record_count != 0 || decode_config(&entry.payload).is_none())
        {
            return Err(DropReason::MalformedEntries);
        }
        previous_term = entry.term;
    }
    Ok(())
}

/// A snapshot position must be one a leader of `m.term` could hold.
/// Highest snapshot index a peer may claim: no honest log gets near it, and the follower
/// computes `index + 1` (the new first index) without overflowing.
const SNAPSHOT_INDEX_MAX: u64 = 1 << 62;

fn check_snapshot(m: &InstallSnapshot) -> Result<(), DropReason> {
    if m.last_included_term > m.term
        || (m.last_included_index == 0) != (m.last_included_term == 0)
        || m.last_included_index > SNAPSHOT_INDEX_MAX
        || m.config
            .as_ref()
            .is_none_or(|config| Membership::from_proto(config).is_err())
    {
        return Err(DropReason::MalformedSnapshot);
    }
    Ok(())
}

/// The term carried by any message body.
pub fn message_term(body: &Body) -> u64 {
    match body {
        Body::RequestVote(m) => m.term,
        Body::RequestVoteResponse(m) => m.term,
        Body::AppendEntries(m) => m.term,
        Body::AppendEntriesResponse(m) => m.term,
        Body::InstallSnapshot(m) => m.term,
        Body::InstallSnapshotResponse(m) => m.term,
        Body::TimeoutNow(m) => m.term,
    }
}
