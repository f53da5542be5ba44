//! Who takes part in a Raft group, and what counts as a majority (dissertation ch. 4).
//!
//! A [`Membership`] has voters, which elect leaders and whose durable copies commit entries,
//! and learners, which receive the log but are never asked for a vote, never campaign and
//! never count. While a change of voters is under way the membership is *joint*
//! (dissertation §4.3): it holds the voters being entered (`voters`) and the voters being
//! left (`voters_outgoing`), and every decision needs a majority of **each**. Any majority
//! of the joint configuration therefore intersects any majority of either side, which is
//! what lets a group move between two voter sets that share no majority (even no member)
//! without two leaders ever being elected in one term.
//!
//! The functions here are the only place that says what a quorum is: elections
//! ([`Membership::vote_result`]), the commit rule ([`Membership::committed_index`]) and
//! check-quorum ([`Membership::has_quorum`]) all ask it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::proto::{GroupConfig, LoggedConfig, MembershipState};

/// The voters and learners of one Raft group, possibly in a joint configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    /// The voters; while joint, the voters of the configuration being entered.
    pub voters: BTreeSet<u64>,
    /// While joint, the voters of the configuration being left; empty otherwise.
    pub voters_outgoing: BTreeSet<u64>,
    /// Members that receive the log but neither vote nor count toward any quorum.
    pub learners: BTreeSet<u64>,
}

/// Where an election stands once some votes are in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    /// Majorities of every voter set granted: the candidate wins.
    Won,
    /// A majority of some voter set refused: the candidate cannot win this round.
    Lost,
    /// Neither yet.
    Pending,
}

impl Membership {
    /// A simple (not joint) membership of `voters` and `learners`.
    pub fn new(
        voters: impl IntoIterator<Item = u64>,
        learners: impl IntoIterator<Item = u64>,
    ) -> Self {
        Self {
            voters: voters.into_iter().collect(),
            voters_outgoing: BTreeSet::new(),
            learners: learners.into_iter().collect(),
        }
    }

    /// Whether a change of voters is under way (two voter sets decide together).
    pub fn is_joint(&self) -> bool {
        !self.voters_outgoing.is_empty()
    }

    /// Whether `id` votes, on either side of a joint configuration.
    pub fn is_voter(&self, id: u64) -> bool {
        self.voters.contains(&id) || self.voters_outgoing.contains(&id)
    }

    /// Whether `id` takes part at all (voter or learner).
    pub fn is_member(&self, id: u64) -> bool {
        self.is_voter(id) || self.learners.contains(&id)
    }

    /// Every voter of either side, in id order, each once.
    pub fn all_voters(&self) -> BTreeSet<u64> {
        self.voters.union(&self.voters_outgoing).copied().collect()
    }

    /// Every member (voters of both sides and learners), in id order, each once.
    pub fn members(&self) -> BTreeSet<u64> {
        let mut members = self.all_voters();
        members.extend(self.learners.iter().copied());
        members
    }

    /// The election's outcome given the votes received so far (`true` = granted). Votes of
    /// non-voters are ignored: a learner or a stranger can neither elect nor block.
    pub fn vote_result(&self, votes: &BTreeMap<u64, bool>) -> VoteResult {
        let incoming = majority_vote(&self.voters, votes);
        if !self.is_joint() {
            return incoming;
        }
        match (incoming, majority_vote(&self.voters_outgoing, votes)) {
            (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
            (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
            _ => VoteResult::Pending,
        }
    }

    /// The highest index durable on a majority of every voter set, given each member's
    /// durable index (`durable(id)`; 0 for a member never heard from). Learners never count.
    pub fn committed_index(&self, durable: impl Fn(u64) -> u64) -> u64 {
        let incoming = majority_index(&self.voters, &durable);
        if self.is_joint() {
            incoming.min(majority_index(&self.voters_outgoing, &durable))
        } else {
            incoming
        }
    }

    /// Whether the members for which `active(id)` holds include a majority of every voter
    /// set (check-quorum: is a leader still heard by enough of its group).
    pub fn has_quorum(&self, active: impl Fn(u64) -> bool) -> bool {
        let majority = |set: &BTreeSet<u64>| {
            set.iter().filter(|&&id| active(id)).count() >= majority_of(set.len())
        };
        majority(&self.voters) && (!self.is_joint() || majority(&self.voters_outgoing))
    }
}

impl Membership {
    /// The schema form, carried by configuration entries and snapshots.
    pub fn to_proto(&self) -> GroupConfig {
        GroupConfig {
            voters: self.voters.iter().copied().collect(),
            learners: self.learners.iter().copied().collect(),
            voters_outgoing: self.voters_outgoing.iter().copied().collect(),
        }
    }

    /// Reads a configuration from its schema form, refusing one no member could run with.
    ///
    /// # Errors
    /// Why the configuration is impossible: no voter, member id 0, an id twice in a list,
    /// or a learner that is also a voter.
    pub fn from_proto(config: &GroupConfig) -> Result<Membership, &'static str> {
        let set = |ids: &[u64]| -> Result<BTreeSet<u64>, &'static str> {
            let set: BTreeSet<u64> = ids.iter().copied().collect();
            if set.len() != ids.len() {
                return Err("a member is listed twice");
            }
            if set.contains(&0) {
                return Err("0 is not a member id");
            }
            Ok(set)
        };
        let membership = Membership {
            voters: set(&config.voters)?,
            voters_outgoing: set(&config.voters_outgoing)?,
            learners: set(&config.learners)?,
        };
        if membership.voters.is_empty() {
            return Err("a configuration needs at least one voter");
        }
        if membership
            .learners
            .iter()
            .any(|&id| membership.is_voter(id))
        {
            return Err("a learner cannot also be a voter");
        }
        Ok(membership)
    }

    /// The configuration `change` leads to from this one: a new simple configuration for
    /// learner changes, the joint configuration for a change of voters.
    ///
    /// # Errors
    /// Why the change cannot be made from here (see [`MembershipChange`]).
    pub fn apply(&self, change: &MembershipChange) -> Result<Membership, &'static str> {
        if self.is_joint() {
            return Err("a change of voters is still under way");
        }
        let mut next = self.clone();
        match change {
            MembershipChange::AddLearners(ids) => {
                if ids.is_empty() {
                    return Err("no learner to add");
                }
                for &id in ids {
                    if id == 0 {
                        return Err("0 is not a member id");
                    }
                    if !next.learners.insert(id) || self.is_voter(id) {
                        return Err("a learner to add is already a member");
                    }
                }
            }
            MembershipChange::RemoveLearners(ids) => {
                if ids.is_empty() {
                    return Err("no learner to remove");
                }
                for id in ids {
                    if !next.learners.remove(id) {
                        return Err("a learner to remove is not a learner");
                    }
                }
            }
            MembershipChange::ReplaceVoters(ids) => {
                let voters: BTreeSet<u64> = ids.iter().copied().collect();
                if voters.is_empty() {
                    return Err("a configuration needs at least one voter");
                }
                if voters.len() != ids.len() {
                    return Err("a voter is listed twice");
                }
                // A new voter must already hold the log as a learner: a voter that starts
                // empty could make the new majority one that lacks committed entries'
                // copies until it catches up, and stall every commit meanwhile.
                if voters.iter().any(|id| !self.is_member(*id)) {
                    return Err("a new voter must first be a learner");
                }
                if voters == self.voters {
                    return Err("the voters would not change");
                }
                next.learners = self.learners.difference(&voters).copied().collect();
                next.voters_outgoing = self.voters.clone();
                next.voters = voters;
            }
        }
        Ok(next)
    }

    /// The simple configuration that ends a joint one: the incoming voters alone.
    pub fn leave_joint(&self) -> Membership {
        Membership {
            voters: self.voters.clone(),
            voters_outgoing: BTreeSet::new(),
            learners: self.learners.clone(),
        }
    }
}

/// A change a leader can be asked to make to its group's membership
/// ([`super::Raft::propose_membership`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipChange {
    /// New members that receive the log without voting, to catch up before they are
    /// made voters. Each must not be a member yet.
    AddLearners(Vec<u64>),
    /// Learners to drop (a cancelled move, a replica given up).
    RemoveLearners(Vec<u64>),
    /// The voters the group should have. Every one must already be a voter or a learner.
    /// The group enters the joint configuration (both voter sets decide together) and the
    /// leader leaves it by itself once that entry is committed; voters not kept are then
    /// gone, learners made voters are no longer learners.
    ReplaceVoters(Vec<u64>),
}

/// Why a leader refused a membership change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipError {
    /// Only the leader changes the membership.
    NotLeader {
        /// The leader, if known.
        leader_hint: Option<u64>,
    },
    /// A leadership transfer is under way.
    Transferring {
        /// Its target.
        transferee: u64,
    },
    /// This leader has not committed an entry of its own term yet. Until it has, an
    /// uncommitted configuration of an earlier leader may still be in some logs, and a
    /// new one on top of it could form majorities that do not intersect (Ongaro's 2015
    /// correction to single-server changes).
    TermNotCommitted,
    /// A configuration entry is not committed yet (or the group is still joint): at most
    /// one change is in flight.
    ChangePending {
        /// The index of the configuration entry that must commit first.
        index: u64,
    },
    /// The change makes no sense from the current configuration.
    Invalid(&'static str),
}

impl fmt::Display for MembershipError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotLeader { leader_hint } => write!(f, "not the leader (hint: {leader_hint:?})"),
            Self::Transferring { transferee } => {
                write!(f, "leadership is being transferred to {transferee}")
            }
            Self::TermNotCommitted => write!(f, "the leader has not committed in its term yet"),
            Self::ChangePending { index } => {
                write!(
                    f,
                    "the configuration change at index {index} is not finished"
                )
            }
            Self::Invalid(why) => write!(f, "invalid membership change: {why}"),
        }
    }
}

impl std::error::Error for MembershipError {}

/// A configuration entry in the log: where it is and the configuration it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedMembership {
    /// The entry's index.
    pub index: u64,
    /// The entry's term.
    pub term: u64,
    /// The configuration it holds.
    pub membership: Membership,
}

/// Every configuration a member must remember: the one in force at the log start and one
/// per configuration entry after it, in index order. The last one is in force (a
/// configuration takes effect when its entry is appended, committed or not, dissertation
/// §4.1); truncating its entry brings the one before it back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipHistory {
    /// The configuration in force at the log start (what a snapshot carries).
    pub at_log_start: Membership,
    /// The configuration entries after the log start, in index order.
    pub logged: Vec<LoggedMembership>,
}

impl MembershipHistory {
    /// A history with one configuration, in force from the log start.
    pub fn new(at_log_start: Membership) -> Self {
        Self {
            at_log_start,
            logged: Vec::new(),
        }
    }

    /// The configuration in force: the last one appended.
    pub fn effective(&self) -> &Membership {
        self.logged
            .last()
            .map_or(&self.at_log_start, |logged| &logged.membership)
    }

    /// The index of the last configuration entry, if any is after the log start.
    pub fn last_index(&self) -> Option<u64> {
        self.logged.last().map(|logged| logged.index)
    }

    /// The configuration in force at `index` (its entry at or before `index`).
    pub fn at(&self, index: u64) -> &Membership {
        self.logged
            .iter()
            .rev()
            .find(|logged| logged.index <= index)
            .map_or(&self.at_log_start, |logged| &logged.membership)
    }

    /// Records a configuration entry just appended.
    pub fn push(&mut self, logged: LoggedMembership) {
        debug_assert!(self.last_index().is_none_or(|last| last < logged.index));
        self.logged.push(logged);
    }

    /// Forgets the configuration entries at `index` and after (their entries were
    /// truncated); returns them.
    pub fn truncate_from(&mut self, index: u64) -> Vec<LoggedMembership> {
        let keep = self.logged.partition_point(|logged| logged.index < index);
        self.logged.split_off(keep)
    }

    /// The log start moved to `index` (compaction or a snapshot that kept the suffix): the
    /// configuration in force there becomes the one at the log start.
    pub fn compact(&mut self, index: u64) {
        let folded = self.logged.partition_point(|logged| logged.index <= index);
        if let Some(last) = self.logged.drain(..folded).next_back() {
            self.at_log_start = last.membership;
        }
    }

    /// The schema form, as a replica persists it.
    pub fn to_proto(&self) -> MembershipState {
        MembershipState {
            at_log_start: Some(self.at_log_start.to_proto()),
            logged: self
                .logged
                .iter()
                .map(|logged| LoggedConfig {
                    index: logged.index,
                    term: logged.term,
                    config: Some(logged.membership.to_proto()),
                })
                .collect(),
        }
    }

    /// Reads a persisted history.
    ///
    /// # Errors
    /// Why one of its configurations is impossible, or the list is not in index order.
    pub fn from_proto(state: &MembershipState) -> Result<Self, &'static str> {
        let config = |config: &Option<GroupConfig>| {
            Membership::from_proto(config.as_ref().ok_or("a configuration is missing")?)
        };
        let mut history = MembershipHistory::new(config(&state.at_log_start)?);
        for logged in &state.logged {
            if history
                .logged
                .last()
                .is_some_and(|last| (last.index, last.term) >= (logged.index, logged.term))
            {
                return Err("configuration entries out of order");
            }
            history.logged.push(LoggedMembership {
                index: logged.index,
                term: logged.term,
                membership: config(&logged.config)?,
            });
        }
        Ok(history)
    }

    /// Every member of any configuration remembered, in id order.
    pub fn all_members(&self) -> BTreeSet<u64> {
        let mut members = self.at_log_start.members();
        for logged in &self.logged {
            members.extend(logged.membership.members());
        }
        members
    }
}

/// The number of members that makes a majority of `n`. An empty set has no majority to
/// reach, so it asks for none (only reached for the outgoing side of a simple config,
/// which callers skip anyway).
fn majority_of(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        n / 2 + 1
    }
}

/// The outcome of a vote among `voters` alone.
fn majority_vote(voters: &BTreeSet<u64>, votes: &BTreeMap<u64, bool>) -> VoteResult {
    let (mut granted, mut refused) = (0, 0);
    for voter in voters {
        match votes.get(voter) {
            Some(true) => granted += 1,
            Some(false) => refused += 1,
            None => {}
        }
    }
    let majority = majority_of(voters.len());
    if granted >= majority {
        VoteResult::Won
    } else if refused >= majority {
        VoteResult::Lost
    } else {
        VoteResult::Pending
    }
}

/// The highest index durable on a majority of `voters`: sorted from high to low, the
/// majority-th value is held by that many voters or more.
fn majority_index(voters: &BTreeSet<u64>, durable: &impl Fn(u64) -> u64) -> u64 {
    if voters.is_empty() {
        return u64::MAX;
    }
    let mut indexes: Vec<u64> = voters.iter().map(|&id| durable(id)).collect();
    indexes.sort_unstable_by(|a, b| b.cmp(a));
    indexes[majority_of(indexes.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joint(incoming: &[u64], outgoing: &[u64]) -> Membership {
        Membership {
            voters: incoming.iter().copied().collect(),
            voters_outgoing: outgoing.iter().copied().collect(),
            learners: BTreeSet::new(),
        }
    }

    fn votes(granted: &[u64], refused: &[u64]) -> BTreeMap<u64, bool> {
        let mut votes: BTreeMap<u64, bool> = granted.iter().map(|&id| (id, true)).collect();
        votes.extend(refused.iter().map(|&id| (id, false)));
        votes
    }

    #[test]
    fn a_simple_majority_elects_and_commits() {
        let m = Membership::new([1, 2, 3], []);
        assert_eq!(m.vote_result(&votes(&[1], &[])), VoteResult::Pending);
        assert_eq!(m.vote_result(&votes(&[1, 3], &[])), VoteResult::Won);
        assert_eq!(m.vote_result(&votes(&[1], &[2, 3])), VoteResult::Lost);
        let durable = BTreeMap::from([(1, 10), (2, 7), (3, 4)]);
        assert_eq!(m.committed_index(|id| durable[&id]), 7);
        assert!(m.has_quorum(|id| id != 3));
        assert!(!m.has_quorum(|id| id == 1));
    }

    #[test]
    fn learners_neither_vote_nor_count() {
        let m = Membership::new([1, 2, 3], [4, 5]);
        assert_eq!(m.vote_result(&votes(&[1, 4, 5], &[])), VoteResult::Pending);
        let durable = BTreeMap::from([(1, 9), (2, 1), (3, 1), (4, 9), (5, 9)]);
        assert_eq!(m.committed_index(|id| durable[&id]), 1);
        assert!(!m.has_quorum(|id| [1, 4, 5].contains(&id)));
        assert!(m.is_member(4) && !m.is_voter(4));
    }

    #[test]
    fn a_joint_configuration_needs_both_majorities() {
        // Moving {1,2,3} to {4,5,6}: no member in common, so only joint consensus keeps
        // every decision overlapping both sides.
        let m = joint(&[4, 5, 6], &[1, 2, 3]);
        assert_eq!(m.vote_result(&votes(&[1, 2, 3], &[])), VoteResult::Pending);
        assert_eq!(m.vote_result(&votes(&[4, 5, 1, 2], &[])), VoteResult::Won);
        assert_eq!(m.vote_result(&votes(&[4, 5, 6], &[2, 3])), VoteResult::Lost);
        let durable = BTreeMap::from([(1, 20), (2, 20), (3, 20), (4, 5), (5, 8), (6, 2)]);
        assert_eq!(m.committed_index(|id| durable[&id]), 5);
        assert!(!m.has_quorum(|id| id <= 3));
        assert!(m.has_quorum(|id| id != 3 && id != 6));
    }

    #[test]
    fn any_two_joint_quorums_intersect_on_each_side() {
        // Exhaustive over every subset of six members: two sets that are quorums of the
        // same joint configuration share a member of each side.
        let m = joint(&[3, 4, 5], &[1, 2, 3]);
        let ids = [1u64, 2, 3, 4, 5, 6];
        let quorums: Vec<BTreeSet<u64>> = (0u32..1 << ids.len())
            .map(|bits| {
                ids.iter()
                    .enumerate()
                    .filter(|(i, _)| bits & (1 << i) != 0)
                    .map(|(_, &id)| id)
                    .collect::<BTreeSet<u64>>()
            })
            .filter(|set| m.has_quorum(|id| set.contains(&id)))
            .collect();
        for a in &quorums {
            for b in &quorums {
                assert!(a.intersection(b).any(|id| m.voters.contains(id)));
                assert!(a.intersection(b).any(|id| m.voters_outgoing.contains(id)));
            }
        }
    }
}
