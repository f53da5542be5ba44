//! Moving a group to new voters, step by step, as its leader drives it.
//!
//! A move names the voters the group should end with (`target`). The leader takes the group
//! there through the consensus core's membership changes, one at a time:
//!
//! 1. **adding learners**: target members that are not members yet are added as learners;
//! 2. **catching up**: each new learner must stay within `lag_entries_max` entries of the
//!    leader's log for `caught_up_ticks` ticks in a row (a learner promoted while far behind
//!    would make the new majority wait for it, and stall every commit meanwhile);
//! 3. **joint**: the voters are replaced by the target; the group is joint (both voter sets
//!    decide) until the leader leaves the joint configuration, which the core does by
//!    itself once the joint entry is committed;
//! 4. **removing learners**: learners the target does not name (a move given up halfway, or
//!    changed) are dropped;
//! 5. **done**: the voters are the target, no learner is left over and the last
//!    configuration entry is committed.
//!
//! The driver is pure: it reads the consensus core and returns the change to propose, if
//! any; the replica core proposes it and retries on the next tick when the core refuses
//! (another change pending, nothing committed in this term yet). A driver survives
//! leadership changes: every leader that is told the target continues from the
//! configuration its log holds. Cancelling a move is moving back to the voters the group had.

use std::collections::{BTreeMap, BTreeSet};

use crate::raft::{MembershipChange, Raft, Role};

/// Where a move stands, as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MovePhase {
    /// Target members are being added as learners.
    AddingLearners,
    /// New learners are catching up; these have not stayed caught up long enough yet.
    CatchingUp {
        /// The learners still behind (or not caught up for long enough).
        waiting_for: Vec<u64>,
    },
    /// The group is in the joint configuration, until the core leaves it.
    Joint,
    /// Learners the target does not name are being removed.
    RemovingLearners,
    /// The voters are the target and the last configuration entry is committed.
    Done,
}

/// The state a move keeps between ticks: how long each learner has been caught up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveDriver {
    target: BTreeSet<u64>,
    /// Learners the group keeps once the move is done (the metadata group's: every node
    /// that joined receives the metadata log without voting on it).
    kept_learners: BTreeSet<u64>,
    caught_up_ticks: BTreeMap<u64, u64>,
}

impl MoveDriver {
    /// A move to `target` voters.
    pub fn new(target: impl IntoIterator<Item = u64>) -> Self {
        Self::with_learners(target, [])
    }

    /// A move to `target` voters that also ends with `learners` (those the target names as
    /// voters are voters, not learners).
    pub fn with_learners(
        target: impl IntoIterator<Item = u64>,
        learners: impl IntoIterator<Item = u64>,
    ) -> Self {
        let target: BTreeSet<u64> = target.into_iter().collect();
        let kept_learners = learners
            .into_iter()
            .filter(|id| !target.contains(id))
            .collect();
        Self {
            target,
            kept_learners,
            caught_up_ticks: BTreeMap::new(),
        }
    }

    /// The voters the move ends with.
    pub fn target(&self) -> &BTreeSet<u64> {
        &self.target
    }

    /// The learners the move ends with.
    pub fn kept_learners(&self) -> &BTreeSet<u64> {
        &self.kept_learners
    }

    /// Called once per tick on the leader: the phase, and the change to propose now if any.
    /// On a member that is not the leader, the phase as far as its log tells and no change.
    pub fn tick(
        &mut self,
        raft: &Raft,
        lag_entries_max: u64,
        caught_up_ticks: u64,
    ) -> (MovePhase, Option<MembershipChange>) {
        let membership = raft.membership();
        let committed = raft
            .membership_history()
            .last_index()
            .is_none_or(|index| index <= raft.commit_index());
        if membership.is_joint() {
            return (MovePhase::Joint, None);
        }
        let leader = raft.role() == Role::Leader;
        if membership.voters == self.target {
            let stale: Vec<u64> = membership
                .learners
                .difference(&self.target)
                .filter(|id| !self.kept_learners.contains(id))
                .copied()
                .collect();
            if !stale.is_empty() {
                let change = leader.then_some(MembershipChange::RemoveLearners(stale));
                return (MovePhase::RemovingLearners, change);
            }
            let absent: Vec<u64> = self
                .kept_learners
                .iter()
                .copied()
                .filter(|&id| !membership.is_member(id))
                .collect();
            if !absent.is_empty() {
                let change = leader.then_some(MembershipChange::AddLearners(absent));
                return (MovePhase::AddingLearners, change);
            }
            let phase = if committed {
                MovePhase::Done
            } else {
                MovePhase::RemovingLearners
            };
            return (phase, None);
        }
        let missing: Vec<u64> = self
            .target
            .iter()
            .copied()
            .filter(|&id| !membership.is_member(id))
            .collect();
        if !missing.is_empty() {
            let change = leader.then_some(MembershipChange::AddLearners(missing));
            return (MovePhase::AddingLearners, change);
        }
        let last_index = raft.last_index();
        let mut waiting_for = Vec::new();
        for &learner in self.target.intersection(&membership.learners) {
            let caught_up = raft
                .progress(learner)
                .is_some_and(|p| p.match_index + lag_entries_max >= last_index);
            let ticks = self.caught_up_ticks.entry(learner).or_insert(0);
            *ticks = if caught_up && leader { *ticks + 1 } else { 0 };
            if *ticks < caught_up_ticks {
                waiting_for.push(learner);
            }
        }
        self.caught_up_ticks
            .retain(|id, _| membership.learners.contains(id));
        if !waiting_for.is_empty() || !leader {
            return (MovePhase::CatchingUp { waiting_for }, None);
        }
        let voters = self.target.iter().copied().collect();
        (
            MovePhase::CatchingUp {
                waiting_for: Vec::new(),
            },
            Some(MembershipChange::ReplaceVoters(voters)),
        )
    }
}
