//! A leader's view of one follower: how far it matches, what is in flight, how to send next.
//!
//! - **Probe**: the leader does not know where the follower's log matches; it sends one
//!   AppendEntries and waits for the answer before sending another.
//! - **Replicate**: the follower is known to match up to `match_index`; the leader streams
//!   entries from `next_index` without waiting (pipelining), within an in-flight window
//!   bounded in messages and bytes.
//! - **Snapshot**: the follower needs entries the leader no longer has; an InstallSnapshot is
//!   in flight and nothing else is sent until it is answered (or times out).

use std::collections::VecDeque;

/// How the leader currently replicates to a follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// One AppendEntries at a time, until a success says where the logs match.
    Probe,
    /// Pipelined AppendEntries within the in-flight window.
    Replicate,
    /// An InstallSnapshot for the log start at `index` is in flight.
    Snapshot {
        /// The snapshot's last included index.
        index: u64,
    },
}

/// Replication progress of one follower, kept by the leader.
///
/// Invariants: `durable_index <= match_index < next_index`; in-flight entries are exactly
/// `(match_index, next_index)` as far as the leader knows.
#[derive(Clone, Debug)]
pub struct Progress {
    /// Highest index known to match the leader's log on this follower.
    pub match_index: u64,
    /// Highest index known durable on this follower (and matching); counts toward commit.
    pub durable_index: u64,
    /// Next index to send.
    pub next_index: u64,
    /// Replication mode.
    pub state: ProgressState,
    /// Probe state: a probe is outstanding, do not send another.
    pub probe_sent: bool,
    /// Replicate state: last index and accounted bytes of each unacknowledged message.
    pub inflight: VecDeque<(u64, u64)>,
    /// Sum of the bytes in `inflight`.
    pub inflight_bytes: u64,
    /// Heard from this follower since the last check-quorum round.
    pub recent_active: bool,
    /// Ticks spent in snapshot state; the snapshot is resent after an election timeout.
    pub snapshot_elapsed_ticks: u32,
    /// Replicate state: ticks since `match_index` last advanced while entries were in
    /// flight. Lost AppendEntries are otherwise only noticed when a later one is rejected.
    pub stalled_ticks: u32,
}

impl Progress {
    /// A fresh progress for a new leader whose last index is `last_index`.
    pub fn new(last_index: u64) -> Self {
        Self {
            match_index: 0,
            durable_index: 0,
            next_index: last_index + 1,
            state: ProgressState::Probe,
            probe_sent: false,
            inflight: VecDeque::new(),
            inflight_bytes: 0,
            recent_active: true,
            snapshot_elapsed_ticks: 0,
            stalled_ticks: 0,
        }
    }

    /// Whether the leader must not send more entries right now.
    pub fn is_paused(&self, inflight_msgs_max: u32, inflight_bytes_max: u64) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => {
                self.inflight.len() >= inflight_msgs_max as usize
                    || self.inflight_bytes >= inflight_bytes_max
            }
            ProgressState::Snapshot { .. } => true,
        }
    }

    /// Switches to probing from `next_index` (after a rejection or a finished snapshot).
    pub fn become_probe(&mut self, next_index: u64) {
        self.state = ProgressState::Probe;
        self.next_index = next_index.max(self.match_index + 1);
        self.probe_sent = false;
        self.clear_inflight();
    }

    /// Switches to pipelined replication right after `match_index`.
    pub fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.next_index = self.match_index + 1;
        self.probe_sent = false;
        self.clear_inflight();
    }

    /// Switches to snapshot state for a snapshot ending at `index`.
    pub fn become_snapshot(&mut self, index: u64) {
        self.state = ProgressState::Snapshot { index };
        self.snapshot_elapsed_ticks = 0;
        self.probe_sent = false;
        self.clear_inflight();
    }

    /// Records a sent AppendEntries whose last entry is `last_index`.
    pub fn sent(&mut self, last_index: u64, bytes: u64) {
        match self.state {
            ProgressState::Replicate => {
                self.next_index = last_index + 1;
                self.inflight.push_back((last_index, bytes));
                self.inflight_bytes += bytes;
            }
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot { .. } => {
                unreachable!("no AppendEntries with entries in snapshot state")
            }
        }
    }

    /// Records that the follower matches up to `index`; returns true if that is news.
    pub fn maybe_update(&mut self, index: u64) -> bool {
        while self
            .inflight
            .front()
            .is_some_and(|&(last, _)| last <= index)
        {
            let (_, bytes) = self.inflight.pop_front().expect("checked non-empty");
            self.inflight_bytes -= bytes;
        }
        if index <= self.match_index {
            return false;
        }
        self.match_index = index;
        self.next_index = self.next_index.max(index + 1);
        self.stalled_ticks = 0;
        true
    }

    fn clear_inflight(&mut self) {
        self.stalled_ticks = 0;
        self.inflight.clear();
        self.inflight_bytes = 0;
    }
}
