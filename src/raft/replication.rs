//! Log replication (§5.3, §5.4, §7): AppendEntries and InstallSnapshot on both sides, flow
//! control, fast back-up, and the commit rule.

use crate::proto::raft_message::Body;
use crate::proto::{
    AppendEntries, AppendEntriesResponse, Entry, InstallSnapshot, InstallSnapshotResponse,
};

use super::check::DropReason;
use super::log::LogPosition;
use super::membership::Membership;
use super::node::{Raft, Role};

impl Raft {
    // ---------------------------------------------------------------- roles

    /// Messages a leader handles (votes are handled for every role in `step`).
    pub(crate) fn step_leader(&mut self, from: u64, body: Body) {
        match body {
            Body::AppendEntriesResponse(r) => self.handle_append_response(from, r),
            Body::InstallSnapshotResponse(r) => self.handle_snapshot_response(from, r),
            // Election safety: two leaders in one term cannot both be right; drop rather than
            // trust either side's claim (and never panic on what a peer says).
            Body::AppendEntries(_) | Body::InstallSnapshot(_) | Body::TimeoutNow(_) => {
                self.drop_message(from, DropReason::SecondLeader);
            }
            Body::RequestVote(_) | Body::RequestVoteResponse(_) => {}
        }
    }

    /// Messages a (pre-)candidate handles: a current-term leader ends the election (§5.2).
    pub(crate) fn step_candidate(&mut self, from: u64, body: Body) {
        match body {
            Body::AppendEntries(_) | Body::InstallSnapshot(_) => {
                self.become_follower(self.term, from);
                self.step_follower(from, body);
            }
            _ => {}
        }
    }

    /// Messages a follower handles.
    pub(crate) fn step_follower(&mut self, from: u64, body: Body) {
        match body {
            Body::AppendEntries(m) => {
                self.follow(from);
                self.handle_append_entries(from, m);
            }
            Body::InstallSnapshot(m) => {
                self.follow(from);
                self.handle_install_snapshot(from, m);
            }
            Body::TimeoutNow(_) if self.leader_id != 0 && self.leader_id != from => {
                self.drop_message(from, DropReason::TimeoutNowNotFromLeader);
            }
            Body::TimeoutNow(_) => {
                // The leader hands over (dissertation §3.10): campaign at once, skipping the
                // pre-vote and telling voters to ignore their leader lease.
                self.campaign(false, true);
            }
            _ => {}
        }
    }

    /// Records `from` as the current leader and resets the election timer.
    fn follow(&mut self, from: u64) {
        if self.leader_id != from {
            self.become_follower(self.term, from);
        }
        self.election_elapsed_ticks = 0;
    }

    // ---------------------------------------------------------------- follower side

    /// AppendEntries receiver rules 1–5 of Figure 2 (rule 1, stale term, is in `step`).
    fn handle_append_entries(&mut self, from: u64, m: AppendEntries) {
        let AppendEntries {
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit,
            ..
        } = m;
        // Entries at or below our commit index are already ours (leader completeness), and
        // may even be compacted: skip them and check the match at the commit index instead.
        let commit = self.log.commit_index;
        let (prev_index, prev_term, entries) = if prev_log_index < commit {
            let skip = (commit - prev_log_index) as usize;
            if entries.len() <= skip {
                let reply = self.append_response(true, commit, 0, 0);
                self.send(from, Body::AppendEntriesResponse(reply));
                return;
            }
            let term = entries[skip - 1].term;
            (commit, term, entries[skip..].to_vec())
        } else {
            (prev_log_index, prev_log_term, entries)
        };
        if self.log.term_at(prev_index) != Some(prev_term) {
            self.reject_append(from, prev_index, prev_log_index);
            return;
        }
        let last_new_index = prev_index + entries.len() as u64;
        self.append_from_leader(entries);
        self.verified_index = self.verified_index.max(last_new_index);
        // Commit never passes what this very message verified: an empty or reordered
        // AppendEntries proves nothing about entries after prev_index.
        let new_commit = leader_commit.min(last_new_index);
        if new_commit > self.log.commit_index {
            self.log.commit_index = new_commit;
        }
        self.durable_reported_index = self
            .durable_reported_index
            .max(self.durable_matching_index());
        self.maybe_lift_voting_withheld();
        let reply = self.append_response(true, last_new_index, 0, 0);
        self.send(from, Body::AppendEntriesResponse(reply));
    }

    /// Gives back the vote of a member that restarted with lost entries once its durable,
    /// committed prefix ends in an entry of a term after the loss (the field
    /// `Raft::voting_withheld_term` says why that suffices).
    pub(crate) fn maybe_lift_voting_withheld(&mut self) {
        let Some(lost_term) = self.voting_withheld_term else {
            return;
        };
        let index = self.log.commit_index.min(self.log.persisted_index);
        if self.log.term_at(index) > Some(lost_term) {
            self.voting_withheld_term = None;
        }
    }

    /// Rejects an AppendEntries whose previous entry (checked at `prev_index`) does not
    /// match, with fast back-up hints: the conflicting term and where our entries of that
    /// term begin, or our log's end. `rejected_index` is the message's own `prev_log_index`,
    /// which tells the leader which message this answers.
    fn reject_append(&mut self, from: u64, prev_index: u64, rejected_index: u64) {
        let (conflict_index, conflict_term) = match self.log.term_at(prev_index) {
            Some(term) if prev_index > self.log.start.index => {
                let first = self
                    .log
                    .run_first_index(prev_index)
                    .max(self.log.commit_index + 1);
                (first, term)
            }
            _ => (self.log.last_index + 1, 0),
        };
        let reply = AppendEntriesResponse {
            rejected_index,
            ..self.append_response(false, 0, conflict_index, conflict_term)
        };
        self.send(from, Body::AppendEntriesResponse(reply));
    }

    /// Appends the leader's entries after a successful consistency check, truncating our
    /// conflicting suffix first (Figure 2 receiver rules 3 and 4).
    fn append_from_leader(&mut self, entries: Vec<Entry>) {
        let Some(first_new) = entries
            .iter()
            .position(|e| self.log.term_at(e.index) != Some(e.term))
        else {
            return;
        };
        let index = entries[first_new].index;
        if index <= self.log.last_index {
            self.truncate_from(index);
        }
        let new = &entries[first_new..];
        self.log.append(new);
        self.note_config_entries(new);
        self.pending_entries.extend_from_slice(new);
    }

    /// Truncates the log view and folds the truncation into the pending Ready.
    fn truncate_from(&mut self, index: u64) {
        self.log.truncate_from(index);
        self.forget_config_entries_from(index);
        let pending_first = self.pending_entries.first().map(|e| e.index);
        match pending_first {
            // Only entries the storage has not seen yet are affected: drop them from the Ready.
            Some(first) if first <= index => self.pending_entries.retain(|e| e.index < index),
            _ => {
                self.pending_entries.clear();
                self.pending_truncate = Some(self.pending_truncate.map_or(index, |t| t.min(index)));
            }
        }
    }

    /// InstallSnapshot receiver (§7), where the snapshot is just a log start position.
    fn handle_install_snapshot(&mut self, from: u64, m: InstallSnapshot) {
        let position = LogPosition {
            index: m.last_included_index,
            term: m.last_included_term,
            next_offset: m.next_offset,
        };
        // check_body refused a snapshot without a valid configuration.
        let Some(membership) = m
            .config
            .as_ref()
            .and_then(|c| Membership::from_proto(c).ok())
        else {
            return;
        };
        let verified = if position.index <= self.log.commit_index {
            // Already have it (a duplicate or a snapshot overtaken by commits): our committed
            // prefix matches the leader's.
            self.log.commit_index
        } else {
            self.install_snapshot(position, membership);
            position.index
        };
        self.verified_index = self.verified_index.max(verified);
        let reply = InstallSnapshotResponse {
            term: self.term,
            last_log_index: verified,
        };
        self.send(from, Body::InstallSnapshotResponse(reply));
    }

    /// Moves our log start to `position`. The suffix after it is kept only if our entry at
    /// `position.index` matches and is durable: durable entries after it may have been
    /// counted toward a commit, so they must not be thrown away (Figure 13, step 6).
    /// The snapshot's configuration, the one in force at `position`, replaces this member's
    /// when the log is replaced; a kept suffix keeps its own configuration entries.
    fn install_snapshot(&mut self, position: LogPosition, membership: Membership) {
        let keep_suffix = self.log.term_at(position.index) == Some(position.term)
            && self.log.persisted_index >= position.index;
        if keep_suffix {
            self.log.compact(position);
            self.compact_memberships(position.index);
            self.pending_entries.retain(|e| e.index > position.index);
        } else {
            self.log.reset(position);
            self.reset_memberships(membership);
            self.pending_entries.clear();
            self.pending_truncate = Some(position.index + 1);
        }
        self.pending_snapshot = Some(position);
        self.mark_hard_state_dirty();
    }

    /// A follower tells its leader how far its matching log is now durable (after a
    /// `persisted` report), since commit counts durable copies only.
    pub(crate) fn report_durable(&mut self) {
        if self.role != Role::Follower || self.leader_id == 0 {
            return;
        }
        let durable = self.durable_matching_index();
        if durable <= self.durable_reported_index {
            return;
        }
        self.durable_reported_index = durable;
        let verified = self.verified_index.max(self.log.commit_index);
        let reply = self.append_response(true, verified, 0, 0);
        let leader = self.leader_id;
        self.send(leader, Body::AppendEntriesResponse(reply));
    }

    /// Builds an AppendEntriesResponse from this member's current state.
    pub(crate) fn append_response(
        &self,
        success: bool,
        appended_index: u64,
        conflict_index: u64,
        conflict_term: u64,
    ) -> AppendEntriesResponse {
        let durable_index = if success {
            self.durable_matching_index()
        } else {
            0
        };
        AppendEntriesResponse {
            term: self.term,
            success,
            appended_index,
            durable_index,
            conflict_index,
            conflict_term,
            last_log_index: self.log.last_index,
            rejected_index: 0,
        }
    }

    /// The last index that is both durable here and known to match the current leader's log
    /// (verified by an AppendEntries of this term, or committed, which every leader has).
    fn durable_matching_index(&self) -> u64 {
        let verified = self.verified_index.max(self.log.commit_index);
        self.log.persisted_index.min(verified)
    }
}
