//! The leader's half of replication: building AppendEntries and InstallSnapshot from progress,
//! handling the answers, fast back-up, and the commit rule (§5.3, §5.4.2, §7).

use crate::proto::raft_message::Body;
use crate::proto::{
    AppendEntries, AppendEntriesResponse, Entry, InstallSnapshot, InstallSnapshotResponse,
};

use super::check::DropReason;
use super::log::{entry_size_bytes, LogReader, ReadError};
use super::node::Raft;
use super::progress::ProgressState;

impl Raft {
    /// Builds AppendEntries for every follower marked since the last Ready. Done here, not
    /// when entries are proposed, so that many proposals travel in one message and lagging
    /// followers can be served from `reader` without the core doing IO of its own.
    pub(crate) fn send_wanted_appends(&mut self, reader: &dyn LogReader) {
        let wanted = std::mem::take(&mut self.append_wanted);
        let commit_changed = std::mem::take(&mut self.commit_changed);
        for peer in wanted {
            let mut sent = false;
            while self.send_append(peer, reader) {
                sent = true;
            }
            let pr = &self.progress[&peer];
            if !sent && commit_changed && !matches!(pr.state, ProgressState::Snapshot { .. }) {
                // Nothing new to send, but followers should learn the new commit index now
                // rather than at the next heartbeat.
                self.send_heartbeat(peer);
            }
        }
    }

    /// Sends one AppendEntries (or an InstallSnapshot) to `peer` if its progress allows;
    /// returns true if another one may follow (pipelining in replicate state).
    fn send_append(&mut self, peer: u64, reader: &dyn LogReader) -> bool {
        let pr = &self.progress[&peer];
        let (msgs_max, bytes_max) = (
            self.config.inflight_msgs_max,
            self.config.inflight_bytes_max,
        );
        if pr.is_paused(msgs_max, bytes_max) || pr.next_index > self.log.last_index {
            return false;
        }
        let learner = !self.membership.is_voter(peer);
        if learner && self.catch_up_budget.is_some_and(|budget| budget <= 0) {
            self.catch_up.throttled += 1;
            return false;
        }
        let next_index = pr.next_index;
        if next_index <= self.log.start.index {
            self.send_snapshot(peer);
            return false;
        }
        // A learner's message is cut to its budget (at least one entry), so the budget is
        // overdrawn by one entry at most, never by a whole message.
        let bytes_max = match self.catch_up_budget {
            Some(budget) if learner => budget
                .unsigned_abs()
                .clamp(1, self.config.message_bytes_max),
            _ => self.config.message_bytes_max,
        };
        let entries = match self.entries_for(next_index, bytes_max, reader) {
            Ok(entries) => entries,
            Err(ReadError::Compacted) => {
                self.send_snapshot(peer);
                return false;
            }
            // Retried on the next heartbeat answer.
            Err(ReadError::Unavailable) => return false,
        };
        let prev_log_index = next_index - 1;
        let prev_log_term = self
            .log
            .term_at(prev_log_index)
            .expect("prev_log_index >= log start");
        let last_index = entries
            .last()
            .expect("entries_for returns at least one entry")
            .index;
        let bytes: u64 = entries.iter().map(entry_size_bytes).sum();
        let message = AppendEntries {
            term: self.term,
            leader_id: self.config.id,
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit: self.log.commit_index,
        };
        self.send(peer, Body::AppendEntries(message));
        if learner {
            self.catch_up.bytes_sent += bytes;
            if let Some(budget) = self.catch_up_budget.as_mut() {
                *budget = budget.saturating_sub(i64::try_from(bytes).unwrap_or(i64::MAX));
            }
        }
        let pr = self.progress.get_mut(&peer).expect("peer has progress");
        pr.sent(last_index, bytes);
        pr.state == ProgressState::Replicate
    }

    /// Entries from `lo` for one message of at most `bytes_max` (at least one entry), from
    /// the cache when possible, else from `reader`.
    fn entries_for(
        &self,
        lo: u64,
        bytes_max: u64,
        reader: &dyn LogReader,
    ) -> Result<Vec<Entry>, ReadError> {
        let hi = self.log.last_index + 1;
        match self.log.cache_first_index() {
            Some(first) if first <= lo => return Ok(self.log.cached(lo, hi, bytes_max)),
            _ => {}
        }
        if lo <= self.log.start.index {
            return Err(ReadError::Compacted);
        }
        let read_hi = self.log.cache_first_index().unwrap_or(hi).min(hi);
        let entries = reader.entries(lo, read_hi, bytes_max)?;
        // A reader that returns the wrong entries would silently corrupt followers.
        assert!(
            !entries.is_empty(),
            "reader returned no entries for [{lo}, {read_hi})"
        );
        for (i, entry) in entries.iter().enumerate() {
            assert_eq!(
                entry.index,
                lo + i as u64,
                "reader returned entries out of order from {lo}"
            );
            assert!(
                entry.index < read_hi,
                "reader returned entry {} beyond {read_hi}",
                entry.index
            );
            assert_eq!(
                Some(entry.term),
                self.log.term_at(entry.index),
                "reader entry {} has a foreign term",
                entry.index
            );
        }
        Ok(entries)
    }

    /// Sends the log start position as a snapshot (§7) and waits for the answer.
    fn send_snapshot(&mut self, peer: u64) {
        let start = self.log.start;
        let message = InstallSnapshot {
            term: self.term,
            leader_id: self.config.id,
            last_included_index: start.index,
            last_included_term: start.term,
            next_offset: start.next_offset,
            data: bytes::Bytes::new(),
            config: Some(Box::new(self.membership_history().at_log_start.to_proto())),
        };
        self.send(peer, Body::InstallSnapshot(message));
        self.progress
            .get_mut(&peer)
            .expect("peer has progress")
            .become_snapshot(start.index);
    }

    /// Heartbeats to every follower (§5.2): empty AppendEntries at each one's match index.
    pub(crate) fn broadcast_heartbeat(&mut self) {
        for peer in self.peers() {
            self.send_heartbeat(peer);
        }
    }

    /// An empty AppendEntries anchored at the follower's match index, which is known to
    /// match, so a heartbeat never triggers a needless back-up and never lets the follower
    /// commit past what it has verified.
    fn send_heartbeat(&mut self, peer: u64) {
        let match_index = self.progress[&peer].match_index;
        let prev_log_index = match_index.max(self.log.start.index);
        let message = AppendEntries {
            term: self.term,
            leader_id: self.config.id,
            prev_log_index,
            prev_log_term: self
                .log
                .term_at(prev_log_index)
                .expect("prev_log_index >= log start"),
            entries: Vec::new(),
            leader_commit: self.log.commit_index,
        };
        self.send(peer, Body::AppendEntries(message));
    }

    /// Handles a follower's answer to AppendEntries (or to a heartbeat).
    pub(crate) fn handle_append_response(&mut self, from: u64, r: AppendEntriesResponse) {
        let last_index = self.log.last_index;
        if !self.progress.contains_key(&from) {
            return;
        }
        if !r.success {
            if r.conflict_index == 0 || r.conflict_term > self.term {
                self.drop_message(from, DropReason::BadConflictHint);
                return;
            }
            self.progress.get_mut(&from).expect("checked").recent_active = true;
            self.handle_append_rejection(from, &r);
            return;
        }
        // Within one term a leader's log only grows, so no answer to anything it sent can
        // name an index beyond its last one.
        if r.appended_index > last_index || r.durable_index > last_index {
            self.drop_message(from, DropReason::IndexBeyondLog);
            return;
        }
        let pr = self.progress.get_mut(&from).expect("checked");
        pr.recent_active = true;
        pr.maybe_update(r.appended_index.max(r.durable_index));
        let durable_advanced = r.durable_index > pr.durable_index;
        pr.durable_index = pr.durable_index.max(r.durable_index);
        pr.probe_sent = false;
        match pr.state {
            ProgressState::Probe => pr.become_replicate(),
            ProgressState::Snapshot { index } if pr.match_index >= index => pr.become_replicate(),
            _ => {}
        }
        let match_index = pr.match_index;
        if match_index < last_index {
            self.append_wanted.insert(from);
        }
        if durable_advanced {
            self.maybe_commit();
        }
        if self.transferee == Some(from) {
            self.maybe_send_timeout_now(from);
        }
    }

    /// Fast back-up (§5.3): jump `next_index` back past the whole conflicting term at once.
    fn handle_append_rejection(&mut self, from: u64, r: &AppendEntriesResponse) {
        let hint = match r.conflict_term {
            0 => r.conflict_index,
            term => match self.log.last_index_of_term(term) {
                // We have entries of that term: our logs may match up to our last one of it.
                Some(last) => last + 1,
                // We have none: everything of that term on the follower must go.
                None => r.conflict_index,
            },
        };
        let start_index = self.log.start.index;
        let pr = self.progress.get_mut(&from).expect("peer has progress");
        if matches!(pr.state, ProgressState::Snapshot { .. }) {
            return;
        }
        // While probing, a rejection of an index above the one probed now answers a message
        // sent before the leader backed up (reordered or duplicated): the probe in flight will
        // answer for the current position, so another probe would only be wasted. A heartbeat
        // is the exception: it is anchored at the match index or the log start, and its
        // rejection is what unsticks a probe that was lost (or that now needs a snapshot).
        // (0 is "unknown", from a sender that does not fill the field: handled as before.)
        let heartbeat_anchor = pr.match_index.max(start_index);
        if pr.state == ProgressState::Probe
            && r.rejected_index >= pr.next_index
            && r.rejected_index != heartbeat_anchor
        {
            return;
        }
        if hint <= pr.match_index {
            // The follower no longer has entries it acknowledged: it crashed and lost writes
            // that were appended but not durable (or this is a stale rejection). Forget what
            // it may have lost; lowering match or durable is always safe, only slower.
            pr.match_index = hint.saturating_sub(1);
            pr.durable_index = pr.durable_index.min(pr.match_index);
        }
        // Only ever move backwards (a stale rejection then costs a probe, never
        // correctness), but never below match.
        let low = pr.match_index + 1;
        let high = pr.next_index.saturating_sub(1).max(low);
        pr.become_probe(hint.clamp(low, high));
        self.append_wanted.insert(from);
    }

    /// Handles a follower's answer to InstallSnapshot.
    pub(crate) fn handle_snapshot_response(&mut self, from: u64, r: InstallSnapshotResponse) {
        let last_index = self.log.last_index;
        if r.last_log_index > last_index {
            self.drop_message(from, DropReason::IndexBeyondLog);
            return;
        }
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        // Only an answer while a snapshot is in flight moves progress: a duplicate or delayed
        // answer (or one from nowhere) would otherwise claim a match nobody verified now.
        let ProgressState::Snapshot { index } = pr.state else {
            return;
        };
        // The follower answers with an index it knows to match (the snapshot or its commit).
        pr.maybe_update(r.last_log_index);
        if pr.match_index >= index {
            pr.become_replicate();
        } else {
            // It installed an older snapshot (compaction raced with the one in flight): the
            // probe from its match index finds our log start and sends the newer one now.
            let next = pr.match_index + 1;
            pr.become_probe(next);
        }
        self.append_wanted.insert(from);
    }

    /// Advances the commit index to the highest index durable on a quorum of every voter
    /// set (the leader's own copy counts only once its write is durable; learners never), but
    /// only if that entry is from the current term: counting replicas of older-term entries
    /// is unsafe (§5.4.2, Figure 8).
    pub(crate) fn maybe_commit(&mut self) {
        let me = self.config.id;
        let persisted = self.log.persisted_index;
        let progress = &self.progress;
        let candidate = self.membership.committed_index(|id| {
            if id == me {
                persisted
            } else {
                progress.get(&id).map_or(0, |p| p.durable_index)
            }
        });
        if candidate <= self.log.commit_index || self.log.term_at(candidate) != Some(self.term) {
            return;
        }
        self.log.commit_index = candidate;
        self.release_uncommitted();
        self.commit_changed = true;
        self.append_wanted.extend(self.progress.keys().copied());
        self.finish_membership_change();
    }
}
