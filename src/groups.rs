//! Consumer groups that share the work: who is in a group, which member owns each partition,
//! and how ownership moves when members come and go.
//!
//! A group's state lives in the cluster metadata (so it is replicated, and a coordinator
//! that fails over continues from it), and changes only through [`Group::join`],
//! [`Group::leave`] and [`Group::release`], applied in metadata-log order on every node. Each
//! of them ends in [`Group::rebalance`], which is pure: every node computes the same owners.
//! When members join or liveness ends is the coordinator's business (`node::coordinator`:
//! heartbeats are kept in its memory, never written to the log); this module decides what
//! ownership follows.
//!
//! Two rules carry the guarantees:
//!
//! - **One owner at a time.** `owners` maps each partition to at most one member, and a
//!   partition changes hands only after its owner released it (it finished its work and
//!   committed) or left the group (it said so, or its session expired). The rebalance only
//!   *asks* an owner to give a partition up (`revoking`); it never reassigns it directly.
//! - **Generations only grow.** Every change of members, owners or revocations is a new
//!   generation; a coordinator that fails over reads the generation from the metadata, so
//!   it continues higher, never lower.
//!
//! The target each rebalance aims for is sticky ([`sticky_target`]): partitions stay with
//! their owners as far as an even spread allows, so a joining member takes only its share
//! and a leaving member's partitions are spread over the others.

use std::collections::{BTreeMap, BTreeSet};

/// A partition of a topic, as groups name it.
pub type TopicPartition = (String, u32);

/// Shortest session a member may ask for: below it a few lost heartbeats expel it.
pub const SESSION_TIMEOUT_MS_MIN: u32 = 1_000;
/// Longest session a member may ask for: a member that died holds its partitions this long.
pub const SESSION_TIMEOUT_MS_MAX: u32 = 300_000;
/// The session of a member that asks for none. 10 s, as Kafka's classic consumers: long
/// enough that a garbage-collection pause or a slow poll does not expel a healthy member.
pub const SESSION_TIMEOUT_MS_DEFAULT: u32 = 10_000;
/// How long a member that asks for no rebalance timeout may take to release a partition:
/// 60 s, time for an application to finish the records it polled and commit.
pub const REBALANCE_TIMEOUT_MS_DEFAULT: u32 = 60_000;
/// Longest rebalance timeout: a member this slow to let go stalls its partitions as long.
pub const REBALANCE_TIMEOUT_MS_MAX: u32 = 1_800_000;

/// One member of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The client's own name for itself, for `group describe`.
    pub client_id: String,
    /// The topics it consumes, sorted and distinct.
    pub topics: Vec<String>,
    /// How long it may go without a heartbeat before it is expelled.
    pub session_timeout_ms: u32,
    /// How long it may take to release a partition it was asked for before it is expelled.
    pub rebalance_timeout_ms: u32,
}

/// A consumer group's replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Group {
    /// Bumped by every change of members, owners or revocations.
    pub generation: u64,
    /// Times the group started a hand-over (went from stable or empty to rebalancing).
    pub rebalances: u64,
    /// Members by member id.
    pub members: BTreeMap<String, Member>,
    /// The member owning each owned partition.
    pub owners: BTreeMap<TopicPartition, String>,
    /// Owned partitions whose owner is asked to finish, commit and release them, because the
    /// target gives them to another member (or to none).
    pub revoking: BTreeSet<TopicPartition>,
}

/// A group's state as `group describe` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    /// No members (only committed offsets).
    Empty,
    /// Partitions are being handed over: some owner is asked to release one, or a
    /// partition some member consumes has no owner yet.
    Rebalancing,
    /// Every partition the members consume has its target owner.
    Stable,
}

impl GroupState {
    /// The name the CLI and the wire use.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "empty",
            GroupState::Rebalancing => "rebalancing",
            GroupState::Stable => "stable",
        }
    }
}

impl Group {
    /// The partitions `member` owns, in order.
    pub fn owned_by(&self, member: &str) -> Vec<TopicPartition> {
        self.owners
            .iter()
            .filter(|(_, owner)| owner.as_str() == member)
            .map(|(partition, _)| partition.clone())
            .collect()
    }

    /// Where the group stands, given each topic's partition count.
    pub fn state(&self, partition_counts: &BTreeMap<String, u32>) -> GroupState {
        if self.members.is_empty() {
            return GroupState::Empty;
        }
        let consumers = consumers_by_topic(&self.members, partition_counts);
        let all_owned = subscribed_partitions(&consumers, partition_counts)
            .keys()
            .all(|partition| self.owners.contains_key(partition));
        if self.revoking.is_empty() && all_owned {
            GroupState::Stable
        } else {
            GroupState::Rebalancing
        }
    }

    /// Adds member `id` (or changes its subscription and session), then rebalances.
    pub fn join(&mut self, id: &str, member: Member, partition_counts: &BTreeMap<String, u32>) {
        let before = self.clone();
        self.members.insert(id.to_owned(), member);
        self.rebalance(partition_counts);
        self.bump_if_changed(&before, partition_counts);
    }

    /// Removes `ids` (they left, or their sessions expired): what they owned is free to go to
    /// the others at once, since a member that is gone can no longer commit.
    pub fn leave(&mut self, ids: &[String], partition_counts: &BTreeMap<String, u32>) {
        let before = self.clone();
        for id in ids {
            self.members.remove(id);
        }
        self.owners
            .retain(|_, owner| self.members.contains_key(owner));
        self.rebalance(partition_counts);
        self.bump_if_changed(&before, partition_counts);
    }

    /// Records that `member` released `partitions` it was asked to give up (it committed
    /// what it processed), so they can go to their target owners. Partitions it does not
    /// own, or was not asked to release, are ignored: a late or repeated release is harmless.
    pub fn release(
        &mut self,
        member: &str,
        partitions: &[TopicPartition],
        partition_counts: &BTreeMap<String, u32>,
    ) {
        let before = self.clone();
        for partition in partitions {
            let owned = self.owners.get(partition).map(String::as_str) == Some(member);
            if owned && self.revoking.remove(partition) {
                self.owners.remove(partition);
            }
        }
        self.rebalance(partition_counts);
        self.bump_if_changed(&before, partition_counts);
    }

    /// Moves ownership toward [`sticky_target`]: unowned partitions go to their target at
    /// once; an owned partition whose target is another member is marked `revoking` (its
    /// owner keeps it until it releases it); a revocation the target no longer wants is
    /// withdrawn. Partitions of deleted topics are dropped.
    pub fn rebalance(&mut self, partition_counts: &BTreeMap<String, u32>) {
        let exists = |(topic, partition): &TopicPartition| {
            partition_counts
                .get(topic)
                .is_some_and(|count| partition < count)
        };
        self.owners.retain(|partition, _| exists(partition));
        let target = sticky_target(&self.members, &self.owners, partition_counts);
        for (partition, owner) in &self.owners {
            if target.get(partition) == Some(owner) {
                self.revoking.remove(partition);
            } else {
                self.revoking.insert(partition.clone());
            }
        }
        for (partition, member) in target {
            self.owners.entry(partition).or_insert(member);
        }
        let owners = &self.owners;
        self.revoking
            .retain(|partition| owners.contains_key(partition));
    }

    /// Ends a change: a new generation if anything changed, and one more rebalance if the
    /// group starts handing partitions over.
    pub fn bump_if_changed(&mut self, before: &Group, partition_counts: &BTreeMap<String, u32>) {
        if self.members != before.members
            || self.owners != before.owners
            || self.revoking != before.revoking
        {
            self.generation = before.generation + 1;
        }
        let rebalancing = |group: &Group| group.state(partition_counts) == GroupState::Rebalancing;
        if rebalancing(self) && !rebalancing(before) {
            self.rebalances = before.rebalances + 1;
        }
    }
}

/// The members consuming each topic some member consumes (sorted), by topic.
fn consumers_by_topic<'a>(
    members: &'a BTreeMap<String, Member>,
    partition_counts: &BTreeMap<String, u32>,
) -> BTreeMap<&'a str, Vec<&'a str>> {
    let mut consumers: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (id, member) in members {
        for topic in &member.topics {
            if partition_counts.contains_key(topic) {
                consumers
                    .entry(topic.as_str())
                    .or_default()
                    .push(id.as_str());
            }
        }
    }
    consumers
}

/// Every partition some member consumes, with the members that consume its topic (sorted).
/// The member lists are shared per topic, so this is linear in partitions plus members.
fn subscribed_partitions<'a, 'b>(
    consumers: &'b BTreeMap<&'a str, Vec<&'a str>>,
    partition_counts: &BTreeMap<String, u32>,
) -> BTreeMap<TopicPartition, &'b [&'a str]> {
    let mut subscribed = BTreeMap::new();
    for (topic, members) in consumers {
        let count = partition_counts.get(*topic).copied().unwrap_or(0);
        for partition in 0..count {
            subscribed.insert(((*topic).to_owned(), partition), members.as_slice());
        }
    }
    subscribed
}

/// Moves `member` one partition up or down in `load` and in its topics' `by_load` sets.
fn shift<'a>(
    members: &'a BTreeMap<String, Member>,
    load: &mut BTreeMap<&'a str, usize>,
    by_load: &mut BTreeMap<&'a str, BTreeSet<(usize, &'a str)>>,
    member: &'a str,
    up: bool,
) {
    let before = load[member];
    let after = if up { before + 1 } else { before - 1 };
    load.insert(member, after);
    for topic in &members[member].topics {
        if let Some(set) = by_load.get_mut(topic.as_str()) {
            set.remove(&(before, member));
            set.insert((after, member));
        }
    }
}

/// Passes of the evening-out step at most: each pass is linear in the partitions, and a
/// spread that is uneven after the first only happens with members of different topics.
const EVEN_OUT_PASSES_MAX: usize = 16;

/// The owner each partition should have: every partition some member consumes goes to one
/// of its consumers, no member keeps more than its even share (the partitions divided by
/// the members, rounded up), and within that a partition stays with its current owner; then
/// partitions move, one at a time, from a member to a consumer of their topic holding two
/// fewer. Deterministic: ties go to the smaller member id, partitions are taken in order.
/// `O(P log M)` per pass for P partitions and M members, so a group of thousands of members
/// rebalances in milliseconds on every node.
pub fn sticky_target(
    members: &BTreeMap<String, Member>,
    owners: &BTreeMap<TopicPartition, String>,
    partition_counts: &BTreeMap<String, u32>,
) -> BTreeMap<TopicPartition, String> {
    let consumers = consumers_by_topic(members, partition_counts);
    let subscribed = subscribed_partitions(&consumers, partition_counts);
    if members.is_empty() || subscribed.is_empty() {
        return BTreeMap::new();
    }
    let share = subscribed.len().div_ceil(members.len());
    let mut load: BTreeMap<&str, usize> = members.keys().map(|id| (id.as_str(), 0)).collect();
    // Per topic, its consumers by (load, id); kept in step with `load`.
    let mut by_load: BTreeMap<&str, BTreeSet<(usize, &str)>> = consumers
        .iter()
        .map(|(topic, ids)| (*topic, ids.iter().map(|id| (0, *id)).collect()))
        .collect();
    let mut target: BTreeMap<&TopicPartition, &str> = BTreeMap::new();
    // Keep what each owner may keep.
    for partition in subscribed.keys() {
        let Some(owner) = owners.get(partition).map(String::as_str) else {
            continue;
        };
        let consumes = members
            .get(owner)
            .is_some_and(|m| m.topics.contains(&partition.0));
        if consumes && load[owner] < share {
            let owner = members.get_key_value(owner).expect("a member").0.as_str();
            target.insert(partition, owner);
            shift(members, &mut load, &mut by_load, owner, true);
        }
    }
    // Place the rest on the least-loaded consumer of each one's topic.
    for partition in subscribed.keys() {
        if target.contains_key(partition) {
            continue;
        }
        let (_, least) = *by_load[partition.0.as_str()]
            .first()
            .expect("a subscribed partition has a consumer");
        target.insert(partition, least);
        shift(members, &mut load, &mut by_load, least, true);
    }
    // Even out what the share left uneven: move a partition to the least-loaded consumer of
    // its topic when that one holds two fewer than its owner. Each move lowers the sum of
    // squared loads, so the passes converge; they are bounded all the same.
    for _ in 0..EVEN_OUT_PASSES_MAX {
        let mut moved = false;
        for partition in subscribed.keys() {
            let from = target[partition];
            let (to_load, to) = *by_load[partition.0.as_str()]
                .first()
                .expect("a subscribed partition has a consumer");
            if to_load + 1 < load[from] {
                target.insert(partition, to);
                shift(members, &mut load, &mut by_load, from, false);
                shift(members, &mut load, &mut by_load, to, true);
                moved = true;
            }
        }
        if !moved {
            break;
        }
    }
    target
        .into_iter()
        .map(|(partition, member)| (partition.clone(), member.to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(topics: &[&str]) -> Member {
        Member {
            client_id: "test".into(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            session_timeout_ms: SESSION_TIMEOUT_MS_DEFAULT,
            rebalance_timeout_ms: REBALANCE_TIMEOUT_MS_DEFAULT,
        }
    }

    fn counts(topics: &[(&str, u32)]) -> BTreeMap<String, u32> {
        topics.iter().map(|(t, n)| (t.to_string(), *n)).collect()
    }

    fn loads(group: &Group) -> BTreeMap<String, usize> {
        let mut loads: BTreeMap<String, usize> =
            group.members.keys().map(|m| (m.clone(), 0)).collect();
        for owner in group.owners.values() {
            *loads.get_mut(owner).unwrap() += 1;
        }
        loads
    }

    /// Releases every revocation as a member would, until the group is stable.
    fn settle(group: &mut Group, counts: &BTreeMap<String, u32>) {
        for _ in 0..10 {
            if group.state(counts) == GroupState::Stable {
                return;
            }
            let revoking: Vec<(String, TopicPartition)> = group
                .revoking
                .iter()
                .map(|p| (group.owners[p].clone(), p.clone()))
                .collect();
            for (owner, partition) in revoking {
                group.release(&owner, &[partition], counts);
            }
        }
        panic!("the group never settled: {group:?}");
    }

    #[test]
    fn the_first_member_owns_everything_at_once() {
        let counts = counts(&[("t", 6)]);
        let mut group = Group::default();
        group.join("a", member(&["t"]), &counts);
        assert_eq!(group.owned_by("a").len(), 6);
        assert_eq!(group.state(&counts), GroupState::Stable);
        assert_eq!(group.generation, 1);
    }

    /// A second and third member take their share only once the owner released it, and
    /// every hand-over moves only what it must.
    #[test]
    fn joining_members_get_partitions_only_after_the_owner_releases_them() {
        let counts = counts(&[("t", 6)]);
        let mut group = Group::default();
        group.join("a", member(&["t"]), &counts);
        group.join("b", member(&["t"]), &counts);
        assert_eq!(
            group.owned_by("a").len(),
            6,
            "a keeps all until it releases"
        );
        assert!(group.owned_by("b").is_empty());
        assert_eq!(group.revoking.len(), 3);
        assert_eq!(group.state(&counts), GroupState::Rebalancing);
        let generation = group.generation;
        let revoking: Vec<TopicPartition> = group.revoking.iter().cloned().collect();
        group.release("b", &revoking, &counts);
        assert_eq!(
            group.generation, generation,
            "b owns none of them: nothing changes"
        );
        group.release("a", &revoking, &counts);
        assert!(group.generation > generation);
        assert_eq!(group.owned_by("b"), revoking);
        assert_eq!(group.state(&counts), GroupState::Stable);

        let before = group.owners.clone();
        group.join("c", member(&["t"]), &counts);
        settle(&mut group, &counts);
        let moved = group
            .owners
            .iter()
            .filter(|(p, owner)| before[*p] != **owner)
            .count();
        assert_eq!(moved, 2, "only c's share moves: {group:?}");
        assert!(loads(&group).values().all(|&n| n == 2), "{group:?}");
    }

    #[test]
    fn a_member_that_leaves_frees_its_partitions_for_the_others_at_once() {
        let counts = counts(&[("t", 6)]);
        let mut group = Group::default();
        for id in ["a", "b", "c"] {
            group.join(id, member(&["t"]), &counts);
            settle(&mut group, &counts);
        }
        let kept_a = group.owned_by("a");
        let generation = group.generation;
        group.leave(&["b".to_string()], &counts);
        assert!(group.generation > generation);
        assert_eq!(
            group.state(&counts),
            GroupState::Stable,
            "no revocation needed"
        );
        assert_eq!(group.owners.len(), 6);
        assert!(
            kept_a.iter().all(|p| group.owners[p] == "a"),
            "a keeps its own"
        );
        assert_eq!(loads(&group), [("a".into(), 3), ("c".into(), 3)].into());
    }

    #[test]
    fn members_with_different_topics_get_only_theirs_and_an_even_spread() {
        let counts = counts(&[("x", 4), ("y", 2)]);
        let mut group = Group::default();
        group.join("a", member(&["x", "y"]), &counts);
        group.join("b", member(&["x"]), &counts);
        group.join("c", member(&["y"]), &counts);
        settle(&mut group, &counts);
        for (partition, owner) in &group.owners {
            assert!(
                group.members[owner].topics.contains(&partition.0),
                "{group:?}"
            );
        }
        let loads = loads(&group);
        assert!(
            loads.values().max().unwrap() - loads.values().min().unwrap() <= 1,
            "{loads:?}"
        );
    }

    #[test]
    fn deleted_topics_and_new_partitions_are_followed() {
        let mut group = Group::default();
        group.join("a", member(&["t", "u"]), &counts(&[("t", 2), ("u", 1)]));
        let generation = group.generation;
        group.rebalance(&counts(&[("t", 2)]));
        assert_eq!(group.owners.len(), 2, "u's partition is gone");
        // A topic created for a subscription the members already have.
        group.join("a", member(&["t", "u"]), &counts(&[("t", 2), ("u", 3)]));
        assert_eq!(group.owners.len(), 5);
        assert!(group.generation > generation);
    }

    #[test]
    fn a_rebalance_with_nothing_new_changes_nothing() {
        let counts = counts(&[("t", 5)]);
        let mut group = Group::default();
        for id in ["a", "b"] {
            group.join(id, member(&["t"]), &counts);
        }
        let once = group.clone();
        group.rebalance(&counts);
        assert_eq!(group, once);
        group.join("b", member(&["t"]), &counts);
        assert_eq!(
            group.generation, once.generation,
            "the same join again is no change"
        );
    }
}
