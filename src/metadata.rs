//! The cluster-metadata state machine: topics, partition placement, consumer-group offsets and
//! producer ids.
//!
//! The metadata is the state machine of Raft group 0. Its log holds [`MetadataCommand`]s; every
//! node applies the committed ones in order through [`Metadata::apply`], which is pure and
//! deterministic: the same commands give the same state on every node, including where each
//! partition's replicas are placed and which Raft group id it gets. This module owns that
//! state and its rules; it does not own the Raft group that orders the commands (the replica
//! driver does) nor the live facts about partitions (leader, high watermark), which the server
//! adds when it answers a metadata request.

use std::collections::BTreeMap;

use crate::groups::{self, Group, Member, TopicPartition};
use crate::proto::metadata_command::Command;
use crate::proto::{
    AddMember, CreateTopicRequest, ErrorCode, MetadataCommand, MovePartitionRequest,
    OffsetCommitRequest, PartitionInfo, PartitionOffset, RegisterNodeRequest, TopicInfo,
    TopicPartitions,
};

/// A node id; 0 means none.
pub type NodeId = u64;

/// The Raft group id of the cluster-metadata group itself.
pub const METADATA_GROUP_ID: u64 = 0;

/// Longest topic name, as in Kafka: the name becomes part of directory names.
pub const TOPIC_NAME_BYTES_MAX: usize = 249;

/// Most partitions one topic may have: each is a Raft group with its own files and timers.
pub const TOPIC_PARTITIONS_MAX: u32 = 1024;

/// Longest consumer-group name.
pub const GROUP_NAME_BYTES_MAX: usize = 255;

/// Longest address a node may register ("host:port").
pub const NODE_ADDRESS_BYTES_MAX: usize = 255;

/// Why a metadata command was refused. Refusals are part of the replicated result: every node
/// refuses the same command the same way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    /// A topic of this name already exists.
    #[error("topic {0:?} already exists")]
    TopicExists(String),
    /// No topic of this name exists.
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    /// The topic exists but has no such partition.
    #[error("topic {topic:?} has no partition {partition} (it has {partitions})")]
    UnknownPartition {
        /// Topic name.
        topic: String,
        /// The partition asked for.
        partition: u32,
        /// How many partitions the topic has.
        partitions: u32,
    },
    /// The command's values are out of range; the message says which and why.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A consumer-group member that is not (or no longer) in its group.
    #[error(
        "member {member:?} is not in group {group:?}: it left or its session expired; join again"
    )]
    UnknownMember {
        /// Group name.
        group: String,
        /// The member id.
        member: String,
    },
    /// A consumer-group member asked for what only a partition's owner may do.
    #[error("{0}")]
    IllegalGeneration(String),
    /// No consumer group of that name.
    #[error("unknown group {0:?}")]
    UnknownGroup(String),
    /// The operation needs a group without members.
    #[error("group {group:?} has {members} members: stop them first (or commit as one of them)")]
    GroupNotEmpty {
        /// Group name.
        group: String,
        /// How many members it has.
        members: usize,
    },
}

impl MetadataError {
    /// The code a client receives for this refusal.
    pub fn code(&self) -> ErrorCode {
        match self {
            MetadataError::TopicExists(_) => ErrorCode::TopicExists,
            MetadataError::UnknownTopic(_) => ErrorCode::UnknownTopic,
            MetadataError::UnknownPartition { .. } => ErrorCode::UnknownPartition,
            MetadataError::Invalid(_) => ErrorCode::InvalidRequest,
            MetadataError::UnknownMember { .. } => ErrorCode::UnknownMember,
            MetadataError::IllegalGeneration(_) => ErrorCode::IllegalGeneration,
            MetadataError::UnknownGroup(_) => ErrorCode::UnknownGroup,
            MetadataError::GroupNotEmpty { .. } => ErrorCode::GroupNotEmpty,
        }
    }
}

/// Where one partition lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionAssignment {
    /// Partition number within its topic.
    pub partition: u32,
    /// The partition's Raft group id, unique in the cluster and never reused.
    pub group_id: u64,
    /// Nodes holding a replica; the first is the preferred leader.
    pub replicas: Vec<NodeId>,
    /// While the partition is being moved: the replicas it moves to (the group's leader
    /// drives the move, see `replica::moves`); empty otherwise.
    pub target_replicas: Vec<NodeId>,
    /// Nodes an earlier target of the move under way named and the current one does not (a
    /// move cancelled or re-targeted). The group's configuration may still include them, as
    /// learners or as voters of a joint configuration, until the move completes; so they
    /// keep their replica, and their files, until then.
    pub departing: Vec<NodeId>,
}

impl PartitionAssignment {
    /// Every node that holds, or is to hold, a replica: the current ones, a move's new
    /// ones, and those an earlier target of the move named. A node keeps its copy until the
    /// move is recorded complete.
    pub fn all_replicas(&self) -> Vec<NodeId> {
        let mut all = self.replicas.clone();
        for node in self.target_replicas.iter().chain(&self.departing) {
            if !all.contains(node) {
                all.push(*node);
            }
        }
        all
    }

    /// Whether a move is under way.
    pub fn is_moving(&self) -> bool {
        !self.target_replicas.is_empty()
    }
}

/// A topic as the metadata records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    /// Topic name.
    pub name: String,
    /// Partitions by partition number.
    pub partitions: Vec<PartitionAssignment>,
    /// Replicas per partition.
    pub replication_factor: u32,
    /// Size-based retention per partition in bytes; 0 keeps everything.
    pub retention_bytes: u64,
    /// Age-based retention in milliseconds; 0 keeps everything.
    pub retention_ms: u64,
}

impl Topic {
    /// The topic as sent to clients, without live leader or offsets (the server adds those).
    pub fn to_info(&self) -> TopicInfo {
        let partitions = self
            .partitions
            .iter()
            .map(|p| PartitionInfo {
                partition: p.partition,
                group_id: p.group_id,
                replicas: p.replicas.clone(),
                target_replicas: p.target_replicas.clone(),
                ..Default::default()
            })
            .collect();
        TopicInfo {
            name: self.name.clone(),
            partitions,
            replication_factor: self.replication_factor,
            retention_bytes: self.retention_bytes,
            retention_ms: self.retention_ms,
        }
    }
}

/// What the cluster may do with a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// A member: replicas may be placed on it.
    Active,
    /// Being decommissioned: no new replicas, its replicas and leaderships move away.
    Draining,
    /// Decommissioned: it holds nothing, and its id is never used again.
    Removed,
}

impl NodeState {
    /// The name clients see (`NodeInfo.state`, `raftlog cluster nodes`).
    pub fn name(self) -> &'static str {
        match self {
            NodeState::Active => "active",
            NodeState::Draining => "draining",
            NodeState::Removed => "removed",
        }
    }
}

/// A node as the metadata records it once it has registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    /// Where clients reach it.
    pub client_address: String,
    /// Where peers reach it.
    pub peer_address: String,
    /// Which life of the node id registered (0 for a first voter); another is refused.
    pub incarnation: u64,
}

/// What applying a command produced, for the client that proposed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// A topic was created.
    TopicCreated(Topic),
    /// A topic was deleted; its partitions' Raft groups are to be stopped and removed.
    TopicDeleted(Topic),
    /// Offsets were stored.
    OffsetsCommitted,
    /// A consumer group's members or ownership changed (or its offsets were deleted).
    GroupChanged,
    /// A partition move was started, changed or cancelled (it runs on).
    MoveStarted,
    /// A partition move finished: the metadata now names its new replicas.
    MoveCompleted,
    /// A node was recorded (or its addresses updated).
    NodeRegistered,
    /// A node's state changed (decommissioned, recommissioned, removed).
    NodeStateChanged,
    /// A producer id was allocated.
    ProducerIdAllocated {
        /// The new id, from 1.
        producer_id: u64,
        /// Its epoch.
        producer_epoch: u32,
    },
}

/// The replicated cluster metadata: the state every node rebuilds from the metadata log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// The cluster's first voters (its `--peers`), sorted: members from the start, and the
    /// metadata group's configuration at index 0. Nodes that join later are in `registry`.
    founders: Vec<NodeId>,
    /// Every node that has registered its addresses, founders included once they have.
    /// Placement uses founders and registered nodes, never which nodes happen to be up.
    registry: BTreeMap<NodeId, NodeRecord>,
    /// Nodes that are not [`NodeState::Active`] (being decommissioned, or removed).
    node_states: BTreeMap<NodeId, NodeState>,
    /// Topics by name.
    topics: BTreeMap<String, Topic>,
    /// The next partition Raft group id to hand out; ids are never reused, so a deleted
    /// topic's stray messages can never reach a new topic's group.
    next_group_id: u64,
    /// The next producer id to hand out, from 1.
    next_producer_id: u64,
    /// Consumer-group positions: (group, topic, partition) → next offset to consume.
    group_offsets: BTreeMap<(String, String, u32), u64>,
    /// Consumer groups with members (or that had some), by name.
    groups: BTreeMap<String, Group>,
    /// Index of the last metadata log entry applied; entries are applied exactly once, in order.
    applied_index: u64,
}

impl Metadata {
    /// Empty metadata for a cluster whose first voters are `nodes`.
    ///
    /// # Panics
    /// If `nodes` is empty or contains 0 or duplicates: that is a configuration the caller
    /// should have refused.
    pub fn new(mut nodes: Vec<NodeId>) -> Self {
        nodes.sort_unstable();
        let before = nodes.len();
        nodes.dedup();
        assert!(
            !nodes.is_empty() && nodes.len() == before,
            "bad node list {nodes:?}"
        );
        assert!(!nodes.contains(&0), "node id 0 means none");
        Metadata {
            founders: nodes,
            registry: BTreeMap::new(),
            node_states: BTreeMap::new(),
            topics: BTreeMap::new(),
            next_group_id: METADATA_GROUP_ID + 1,
            next_producer_id: 1,
            group_offsets: BTreeMap::new(),
            groups: BTreeMap::new(),
            applied_index: 0,
        }
    }

    /// The cluster's nodes, sorted: the first voters and every node that joined.
    pub fn nodes(&self) -> Vec<NodeId> {
        let mut nodes: Vec<NodeId> = self
            .founders
            .iter()
            .chain(self.registry.keys())
            .copied()
            .collect();
        nodes.sort_unstable();
        nodes.dedup();
        nodes
    }

    /// The cluster's first voters, sorted: the metadata group's configuration at index 0.
    pub fn founders(&self) -> &[NodeId] {
        &self.founders
    }

    /// What the metadata records about `node`, once it has registered.
    pub fn node(&self, node: NodeId) -> Option<&NodeRecord> {
        self.registry.get(&node)
    }

    /// What the cluster may do with `node` (a node never decommissioned is active).
    pub fn node_state(&self, node: NodeId) -> NodeState {
        self.node_states
            .get(&node)
            .copied()
            .unwrap_or(NodeState::Active)
    }

    /// The nodes new replicas may be placed on, sorted.
    pub fn active_nodes(&self) -> Vec<NodeId> {
        let mut nodes = self.nodes();
        nodes.retain(|&n| self.node_state(n) == NodeState::Active);
        nodes
    }

    /// The metadata group's membership to aim for, given its voters now: as many voters as
    /// the cluster had first voters (or every active node, if fewer are left), keeping the
    /// current active voters and filling up with active nodes by id; every other node not
    /// removed is a learner, so it keeps receiving the metadata log. A draining voter loses
    /// its seat only once a replacement can take it.
    pub fn metadata_membership_target(&self, voters_now: &[NodeId]) -> (Vec<NodeId>, Vec<NodeId>) {
        let active = self.active_nodes();
        let seats = self.founders.len().min(active.len()).max(1);
        let mut voters: Vec<NodeId> = voters_now
            .iter()
            .copied()
            .filter(|n| active.contains(n))
            .collect();
        voters.sort_unstable();
        voters.truncate(seats);
        for &candidate in &active {
            if voters.len() >= seats {
                break;
            }
            if !voters.contains(&candidate) {
                voters.push(candidate);
            }
        }
        if voters.is_empty() {
            voters = voters_now.to_vec();
        }
        voters.sort_unstable();
        let learners = self
            .nodes()
            .into_iter()
            .filter(|n| !voters.contains(n) && self.node_state(*n) != NodeState::Removed)
            .collect();
        (voters, learners)
    }

    /// Index of the last applied metadata entry.
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// A topic by name.
    pub fn topic(&self, name: &str) -> Option<&Topic> {
        self.topics.get(name)
    }

    /// Every topic, by name.
    pub fn topics(&self) -> impl Iterator<Item = &Topic> {
        self.topics.values()
    }

    /// Every partition placed on `node`, with its topic.
    pub fn partitions_on(
        &self,
        node: NodeId,
    ) -> impl Iterator<Item = (&Topic, &PartitionAssignment)> {
        self.topics
            .values()
            .flat_map(|t| t.partitions.iter().map(move |p| (t, p)))
            .filter(move |(_, p)| p.all_replicas().contains(&node))
    }

    /// A consumer group's committed position in one partition, if any.
    pub fn group_offset(&self, group: &str, topic: &str, partition: u32) -> Option<u64> {
        self.group_offsets
            .get(&(group.to_owned(), topic.to_owned(), partition))
            .copied()
    }

    /// A consumer group's members and ownership, if it ever had members.
    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.get(name)
    }

    /// Every consumer group's name: those with members (now or before) or committed offsets.
    pub fn group_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.groups.keys().cloned().collect();
        names.extend(self.group_offsets.keys().map(|(group, _, _)| group.clone()));
        names.sort_unstable();
        names.dedup();
        names
    }

    /// Each topic's partition count, by name: what group assignment divides.
    pub fn partition_counts(&self) -> BTreeMap<String, u32> {
        self.topics
            .iter()
            .map(|(name, topic)| (name.clone(), topic.partitions.len() as u32))
            .collect()
    }

    /// Every committed consumer-group position, as ((group, topic, partition), offset).
    pub fn group_offsets(&self) -> impl Iterator<Item = (&(String, String, u32), &u64)> {
        self.group_offsets.iter()
    }

    /// Checks a command without applying it, so the metadata leader can refuse a bad request
    /// at once instead of spending a log entry on it. [`Metadata::apply`] checks again, because
    /// the state may change between proposal and commit.
    ///
    /// # Errors
    /// The refusal [`Metadata::apply`] would give now.
    pub fn check(&self, command: &MetadataCommand) -> Result<(), MetadataError> {
        match &command.command {
            Some(Command::CreateTopic(request)) => self.check_create(request),
            Some(Command::DeleteTopic(request)) => self.topic_named(&request.name).map(drop),
            Some(Command::CommitOffsets(request)) => self.check_commit(request),
            Some(Command::AddMember(request)) => self.check_add_member(request),
            Some(Command::ExpelMembers(request)) => self.known_group(&request.group).map(drop),
            Some(Command::ReleasePartitions(request)) => self
                .known_group(&request.group)
                .and_then(|group| group_member(group, &request.group, &request.member_id)),
            Some(Command::DeleteGroup(request)) => {
                if !self.group_names().contains(&request.group) {
                    return Err(MetadataError::UnknownGroup(request.group.clone()));
                }
                match self.groups.get(&request.group) {
                    Some(group) if !group.members.is_empty() => Err(MetadataError::GroupNotEmpty {
                        group: request.group.clone(),
                        members: group.members.len(),
                    }),
                    _ => Ok(()),
                }
            }
            Some(Command::AllocateProducerId(_)) => Ok(()),
            Some(Command::RegisterNode(request)) => self.check_registration(request),
            Some(Command::DecommissionNode(request)) => self.check_decommission(request.node_id),
            Some(Command::RecommissionNode(request)) => {
                match self.known_node_state(request.node_id)? {
                    NodeState::Removed => Err(MetadataError::Invalid(format!(
                        "node {} was removed; a removed node cannot come back (ids are never \
                         reused)",
                        request.node_id
                    ))),
                    NodeState::Active | NodeState::Draining => Ok(()),
                }
            }
            Some(Command::RemoveNode(request)) => self.check_removal(request.node_id),
            Some(Command::MovePartition(request)) => self.check_move(request),
            Some(Command::CompletePartitionMove(request)) => {
                let assignment = self.assignment(&request.topic, request.partition)?;
                if !assignment.is_moving() || assignment.target_replicas != request.replicas {
                    return Err(MetadataError::Invalid(format!(
                        "{}/{} is not moving to {:?}",
                        request.topic, request.partition, request.replicas
                    )));
                }
                Ok(())
            }
            None => Err(MetadataError::Invalid(
                "metadata command without a body".into(),
            )),
        }
    }

    /// Applies the committed command at metadata log `index`.
    ///
    /// # Errors
    /// The command's refusal; a refused command still counts as applied.
    ///
    /// # Panics
    /// If `index` is not the next index after the last applied one: applying out of order or
    /// twice would let nodes' copies diverge.
    pub fn apply(
        &mut self,
        index: u64,
        command: &MetadataCommand,
    ) -> Result<Applied, MetadataError> {
        assert!(
            index > self.applied_index,
            "metadata entry {index} applied after {}",
            self.applied_index
        );
        self.applied_index = index;
        self.check(command)?;
        match &command.command {
            Some(Command::CreateTopic(request)) => {
                Ok(Applied::TopicCreated(self.create_topic(request)))
            }
            Some(Command::DeleteTopic(request)) => {
                Ok(Applied::TopicDeleted(self.delete_topic(&request.name)))
            }
            Some(Command::CommitOffsets(request)) => {
                for offset in &request.offsets {
                    let key = (
                        request.group.clone(),
                        request.topic.clone(),
                        offset.partition,
                    );
                    self.group_offsets.insert(key, offset.offset);
                }
                Ok(Applied::OffsetsCommitted)
            }
            Some(Command::AddMember(request)) => {
                let join = request.join.as_ref().expect("checked");
                let mut topics = join.topics.clone();
                topics.sort_unstable();
                topics.dedup();
                let member = Member {
                    client_id: join.client_id.clone(),
                    topics,
                    session_timeout_ms: session_timeout(join.session_timeout_ms),
                    rebalance_timeout_ms: rebalance_timeout(join),
                };
                let counts = self.partition_counts();
                let group = self.groups.entry(request.group.clone()).or_default();
                group.join(&request.member_id, member, &counts);
                Ok(Applied::GroupChanged)
            }
            Some(Command::ExpelMembers(request)) => {
                let counts = self.partition_counts();
                let group = self.groups.get_mut(&request.group).expect("checked");
                group.leave(&request.member_ids, &counts);
                Ok(Applied::GroupChanged)
            }
            Some(Command::ReleasePartitions(request)) => {
                let counts = self.partition_counts();
                let group = self.groups.get_mut(&request.group).expect("checked");
                group.release(&request.member_id, &flatten(&request.released), &counts);
                Ok(Applied::GroupChanged)
            }
            Some(Command::DeleteGroup(request)) => {
                self.groups.remove(&request.group);
                self.group_offsets
                    .retain(|(group, _, _), _| *group != request.group);
                Ok(Applied::GroupChanged)
            }
            Some(Command::MovePartition(request)) => {
                let assignment = self.assignment_mut(&request.topic, request.partition);
                // A node the old target named may be in the group's configuration already:
                // it stays a holder until the move (now to the new target) completes.
                let keep: Vec<NodeId> = assignment
                    .target_replicas
                    .iter()
                    .chain(&assignment.departing)
                    .copied()
                    .filter(|n| !assignment.replicas.contains(n) && !request.replicas.contains(n))
                    .collect();
                assignment.departing = keep;
                // Asking for the replicas it has ends a move; the group goes back to them.
                assignment.target_replicas =
                    if request.replicas == assignment.replicas && !assignment.is_moving() {
                        Vec::new()
                    } else {
                        request.replicas.clone()
                    };
                Ok(Applied::MoveStarted)
            }
            Some(Command::CompletePartitionMove(request)) => {
                let assignment = self.assignment_mut(&request.topic, request.partition);
                assignment.replicas = std::mem::take(&mut assignment.target_replicas);
                assignment.departing.clear();
                Ok(Applied::MoveCompleted)
            }
            Some(Command::RegisterNode(request)) => {
                let record = NodeRecord {
                    client_address: request.client_address.clone(),
                    peer_address: request.peer_address.clone(),
                    incarnation: request.incarnation,
                };
                self.registry.insert(request.node_id, record);
                Ok(Applied::NodeRegistered)
            }
            Some(Command::DecommissionNode(request)) => {
                self.node_states
                    .insert(request.node_id, NodeState::Draining);
                Ok(Applied::NodeStateChanged)
            }
            Some(Command::RecommissionNode(request)) => {
                self.node_states.remove(&request.node_id);
                Ok(Applied::NodeStateChanged)
            }
            Some(Command::RemoveNode(request)) => {
                self.node_states.insert(request.node_id, NodeState::Removed);
                Ok(Applied::NodeStateChanged)
            }
            Some(Command::AllocateProducerId(_)) => {
                let producer_id = self.next_producer_id;
                self.next_producer_id += 1;
                Ok(Applied::ProducerIdAllocated {
                    producer_id,
                    producer_epoch: 0,
                })
            }
            None => unreachable!("check refuses a command without a body"),
        }
    }

    /// Marks `index` applied for a metadata entry that carries no command (a no-op or a
    /// configuration entry), keeping the applied index in step with the log.
    pub fn skip(&mut self, index: u64) {
        assert!(
            index > self.applied_index,
            "metadata entry {index} skipped after {}",
            self.applied_index
        );
        self.applied_index = index;
    }

    fn topic_named(&self, name: &str) -> Result<&Topic, MetadataError> {
        self.topics
            .get(name)
            .ok_or_else(|| MetadataError::UnknownTopic(name.to_owned()))
    }

    fn assignment(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<&PartitionAssignment, MetadataError> {
        let found = self.topic_named(topic)?;
        found
            .partitions
            .get(partition as usize)
            .ok_or_else(|| MetadataError::UnknownPartition {
                topic: topic.to_owned(),
                partition,
                partitions: found.partitions.len() as u32,
            })
    }

    /// The assignment of a partition that [`Self::check`] found.
    fn assignment_mut(&mut self, topic: &str, partition: u32) -> &mut PartitionAssignment {
        self.topics
            .get_mut(topic)
            .and_then(|t| t.partitions.get_mut(partition as usize))
            .expect("checked before")
    }

    /// A move names distinct nodes of the cluster, at least one.
    fn check_move(&self, request: &MovePartitionRequest) -> Result<(), MetadataError> {
        let current = self.assignment(&request.topic, request.partition)?;
        let mut seen = request.replicas.clone();
        seen.sort_unstable();
        seen.dedup();
        if request.replicas.is_empty() || seen.len() != request.replicas.len() {
            return Err(MetadataError::Invalid(format!(
                "replicas must be distinct node ids, at least one, got {:?}",
                request.replicas
            )));
        }
        let nodes = self.nodes();
        if let Some(unknown) = request.replicas.iter().find(|n| !nodes.contains(n)) {
            return Err(MetadataError::Invalid(format!(
                "node {unknown} is not a node of this cluster (nodes {nodes:?})"
            )));
        }
        let added = request.replicas.iter().find(|n| {
            !current.all_replicas().contains(n) && self.node_state(**n) != NodeState::Active
        });
        if let Some(&node) = added {
            return Err(MetadataError::Invalid(format!(
                "node {node} is {}: replicas move only to active nodes",
                self.node_state(node).name()
            )));
        }
        Ok(())
    }

    /// The state of a node of the cluster.
    fn known_node_state(&self, node: NodeId) -> Result<NodeState, MetadataError> {
        let nodes = self.nodes();
        if !nodes.contains(&node) {
            return Err(MetadataError::Invalid(format!(
                "node {node} is not a node of this cluster (nodes {nodes:?})"
            )));
        }
        Ok(self.node_state(node))
    }

    /// A node may be decommissioned while it is active (again, while it drains) and the
    /// nodes left can hold every partition's replicas.
    fn check_decommission(&self, node: NodeId) -> Result<(), MetadataError> {
        match self.known_node_state(node)? {
            NodeState::Removed => Err(MetadataError::Invalid(format!(
                "node {node} is already removed"
            ))),
            NodeState::Draining => Ok(()),
            NodeState::Active => {
                let left = self.active_nodes().len() - 1;
                let needed = self
                    .topics
                    .values()
                    .map(|t| t.replication_factor as usize)
                    .max()
                    .unwrap_or(1)
                    .max(1);
                if left < needed {
                    return Err(MetadataError::Invalid(format!(
                        "decommissioning node {node} would leave {left} active nodes, and a \
                         topic needs {needed} replicas: add a node first"
                    )));
                }
                Ok(())
            }
        }
    }

    /// A draining node is removed once no partition names it.
    fn check_removal(&self, node: NodeId) -> Result<(), MetadataError> {
        if self.known_node_state(node)? != NodeState::Draining {
            return Err(MetadataError::Invalid(format!(
                "node {node} is not draining"
            )));
        }
        if let Some((topic, p)) = self.partitions_on(node).next() {
            return Err(MetadataError::Invalid(format!(
                "node {node} still holds {}/{}",
                topic.name, p.partition
            )));
        }
        Ok(())
    }

    /// A registration names a node (id from 1) and both its addresses; a removed id, a
    /// first voter's id claimed by a joining node, or another incarnation of a registered id
    /// is refused.
    fn check_registration(&self, request: &RegisterNodeRequest) -> Result<(), MetadataError> {
        check_registration(request)?;
        let id = request.node_id;
        if self.node_state(id) == NodeState::Removed {
            return Err(MetadataError::Invalid(format!(
                "node {id} was removed from this cluster and node ids are never reused: start \
                 the node with a new --id"
            )));
        }
        if self.founders.contains(&id) && request.incarnation != 0 {
            return Err(MetadataError::Invalid(format!(
                "node {id} is a first voter of this cluster: it starts with --peers, and a new \
                 node joins with an id no node has had"
            )));
        }
        if let Some(record) = self.registry.get(&id) {
            if record.incarnation != request.incarnation {
                return Err(MetadataError::Invalid(format!(
                    "node id {id} belongs to a node that joined before (another data \
                     directory); node ids are never reused: join with a new --id"
                )));
            }
        }
        Ok(())
    }

    fn check_create(&self, request: &CreateTopicRequest) -> Result<(), MetadataError> {
        check_topic_name(&request.name)?;
        if self.topics.contains_key(&request.name) {
            return Err(MetadataError::TopicExists(request.name.clone()));
        }
        if request.partitions == 0 || request.partitions > TOPIC_PARTITIONS_MAX {
            return Err(MetadataError::Invalid(format!(
                "partitions must be between 1 and {TOPIC_PARTITIONS_MAX}, got {}",
                request.partitions
            )));
        }
        let nodes = self.active_nodes().len() as u32;
        if request.replication_factor == 0 || request.replication_factor > nodes {
            return Err(MetadataError::Invalid(format!(
                "replication factor must be between 1 and the number of active nodes ({nodes}), got {}",
                request.replication_factor
            )));
        }
        Ok(())
    }

    fn check_commit(&self, request: &OffsetCommitRequest) -> Result<(), MetadataError> {
        if request.group.is_empty() || request.group.len() > GROUP_NAME_BYTES_MAX {
            return Err(MetadataError::Invalid(format!(
                "group name must be 1 to {GROUP_NAME_BYTES_MAX} bytes, got {}",
                request.group.len()
            )));
        }
        let topic = self.topic_named(&request.topic)?;
        let partitions = topic.partitions.len() as u32;
        for PartitionOffset { partition, .. } in &request.offsets {
            if *partition >= partitions {
                let topic = request.topic.clone();
                return Err(MetadataError::UnknownPartition {
                    topic,
                    partition: *partition,
                    partitions,
                });
            }
        }
        let group = self.groups.get(&request.group);
        if request.member_id.is_empty() {
            return match group {
                Some(group) if !group.members.is_empty() => Err(MetadataError::GroupNotEmpty {
                    group: request.group.clone(),
                    members: group.members.len(),
                }),
                _ => Ok(()),
            };
        }
        let Some(group) = group else {
            return Err(MetadataError::UnknownMember {
                group: request.group.clone(),
                member: request.member_id.clone(),
            });
        };
        group_member(group, &request.group, &request.member_id)?;
        // Ownership, not the generation number, is the fence: a generation moves on with
        // every change anywhere in the group, while a partition changes hands only once its
        // owner released it or was expelled.
        for offset in &request.offsets {
            let key = (request.topic.clone(), offset.partition);
            if group.owners.get(&key) != Some(&request.member_id) {
                return Err(MetadataError::IllegalGeneration(format!(
                    "member {:?} does not own {}/{} in generation {} of group {:?}",
                    request.member_id,
                    request.topic,
                    offset.partition,
                    group.generation,
                    request.group
                )));
            }
        }
        Ok(())
    }

    fn known_group(&self, name: &str) -> Result<&Group, MetadataError> {
        self.groups
            .get(name)
            .ok_or_else(|| MetadataError::UnknownGroup(name.to_owned()))
    }

    fn check_add_member(&self, request: &AddMember) -> Result<(), MetadataError> {
        let Some(join) = &request.join else {
            return Err(MetadataError::Invalid("a join without its request".into()));
        };
        if join.group != request.group
            || request.group.is_empty()
            || request.group.len() > GROUP_NAME_BYTES_MAX
        {
            return Err(MetadataError::Invalid(format!(
                "group name must be 1 to {GROUP_NAME_BYTES_MAX} bytes, got {}",
                request.group.len()
            )));
        }
        if join.topics.is_empty() {
            return Err(MetadataError::Invalid(
                "a member must consume at least one topic".into(),
            ));
        }
        for topic in &join.topics {
            self.topic_named(topic)?;
        }
        let timeout = join.session_timeout_ms;
        let range = groups::SESSION_TIMEOUT_MS_MIN..=groups::SESSION_TIMEOUT_MS_MAX;
        if timeout != 0 && !range.contains(&timeout) {
            return Err(MetadataError::Invalid(format!(
                "session timeout must be between {} and {} ms, got {timeout}",
                range.start(),
                range.end()
            )));
        }
        let session = session_timeout(timeout);
        let rebalance = join.rebalance_timeout_ms;
        if rebalance != 0 && !(session..=groups::REBALANCE_TIMEOUT_MS_MAX).contains(&rebalance) {
            return Err(MetadataError::Invalid(format!(
                "rebalance timeout must be between the session timeout ({session} ms) and {} ms, \
                 got {rebalance}",
                groups::REBALANCE_TIMEOUT_MS_MAX
            )));
        }
        if request.member_id.is_empty() {
            return Err(MetadataError::Invalid("a member needs an id".into()));
        }
        let taken = self
            .groups
            .get(&request.group)
            .is_some_and(|group| group.members.contains_key(&request.member_id));
        if taken {
            return Err(MetadataError::Invalid(format!(
                "member id {:?} is taken",
                request.member_id
            )));
        }
        Ok(())
    }

    fn create_topic(&mut self, request: &CreateTopicRequest) -> Topic {
        let mut load = self.load_per_node();
        load.retain(|&node, _| self.node_state(node) == NodeState::Active);
        let partitions = (0..request.partitions)
            .map(|partition| {
                let replicas = place_replicas(&mut load, request.replication_factor as usize);
                let group_id = self.next_group_id;
                self.next_group_id += 1;
                PartitionAssignment {
                    partition,
                    group_id,
                    replicas,
                    target_replicas: Vec::new(),
                    departing: Vec::new(),
                }
            })
            .collect();
        let topic = Topic {
            name: request.name.clone(),
            partitions,
            replication_factor: request.replication_factor,
            retention_bytes: request.retention_bytes,
            retention_ms: request.retention_ms,
        };
        self.topics.insert(topic.name.clone(), topic.clone());
        self.rebalance_groups();
        topic
    }

    /// Every group follows a change of the topics (its members may consume a topic that
    /// was just created or deleted).
    fn rebalance_groups(&mut self) {
        let counts = self.partition_counts();
        for group in self.groups.values_mut() {
            let before = group.clone();
            group.rebalance(&counts);
            group.bump_if_changed(&before, &counts);
        }
    }

    fn delete_topic(&mut self, name: &str) -> Topic {
        let topic = self.topics.remove(name).expect("checked before");
        self.group_offsets
            .retain(|(_, topic_name, _), _| topic_name != name);
        self.rebalance_groups();
        topic
    }

    fn load_per_node(&self) -> BTreeMap<NodeId, NodeLoad> {
        let mut load: BTreeMap<NodeId, NodeLoad> = self
            .nodes()
            .into_iter()
            .map(|n| (n, NodeLoad::default()))
            .collect();
        for topic in self.topics.values() {
            for assignment in &topic.partitions {
                for (position, node) in assignment.replicas.iter().enumerate() {
                    let entry = load
                        .get_mut(node)
                        .expect("replicas are placed on known nodes");
                    entry.replicas += 1;
                    entry.preferred_leaders += u64::from(position == 0);
                }
            }
        }
        load
    }
}

/// How many partitions a node already carries, for even placement.
#[derive(Debug, Default, Clone, Copy)]
struct NodeLoad {
    replicas: u64,
    preferred_leaders: u64,
}

/// Picks `count` distinct nodes for a new partition and records them in `load`: the preferred
/// leader is the node leading the fewest partitions, the other replicas the nodes carrying the
/// fewest replicas; ties go to the lower node id, so every node computes the same placement.
fn place_replicas(load: &mut BTreeMap<NodeId, NodeLoad>, count: usize) -> Vec<NodeId> {
    assert!(
        count >= 1 && count <= load.len(),
        "replication factor {count} for {} nodes",
        load.len()
    );
    let leader = *load
        .iter()
        .min_by_key(|(id, l)| (l.preferred_leaders, l.replicas, **id))
        .map(|(id, _)| id)
        .expect("at least one node");
    let mut followers: Vec<NodeId> = load.keys().copied().filter(|&n| n != leader).collect();
    followers.sort_by_key(|n| (load[n].replicas, *n));
    followers.truncate(count - 1);
    let mut replicas = vec![leader];
    replicas.extend(followers);
    for (position, node) in replicas.iter().enumerate() {
        let entry = load.get_mut(node).expect("picked from load");
        entry.replicas += 1;
        entry.preferred_leaders += u64::from(position == 0);
    }
    replicas
}

/// A registration names a node (id from 1) and both its addresses.
fn check_registration(request: &RegisterNodeRequest) -> Result<(), MetadataError> {
    if request.node_id == 0 {
        return Err(MetadataError::Invalid("node id 0 means none".into()));
    }
    for (what, address) in [
        ("client", &request.client_address),
        ("peer", &request.peer_address),
    ] {
        if address.is_empty() || address.len() > NODE_ADDRESS_BYTES_MAX {
            return Err(MetadataError::Invalid(format!(
                "a node's {what} address must be 1 to {NODE_ADDRESS_BYTES_MAX} bytes, got {}",
                address.len()
            )));
        }
    }
    Ok(())
}

/// Checks a topic name: 1 to [`TOPIC_NAME_BYTES_MAX`] characters of `[a-zA-Z0-9._-]`, and not
/// `.` or `..` (names become directory names).
///
/// # Errors
/// [`MetadataError::Invalid`] naming the rule broken.
pub fn check_topic_name(name: &str) -> Result<(), MetadataError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > TOPIC_NAME_BYTES_MAX {
        return Err(MetadataError::Invalid(format!(
            "topic name must be 1 to {TOPIC_NAME_BYTES_MAX} characters, got {}",
            name.len()
        )));
    }
    if !name.chars().all(allowed) || name == "." || name == ".." {
        return Err(MetadataError::Invalid(format!(
            "topic name {name:?} may only contain letters, digits, '.', '_' and '-'"
        )));
    }
    Ok(())
}

/// The session timeout a member gets for what it asked (0: the default).
fn session_timeout(asked_ms: u32) -> u32 {
    if asked_ms == 0 {
        groups::SESSION_TIMEOUT_MS_DEFAULT
    } else {
        asked_ms
    }
}

/// The rebalance timeout a member gets for what it asked (0: the default, never below its
/// session).
fn rebalance_timeout(join: &crate::proto::JoinGroupRequest) -> u32 {
    let session = session_timeout(join.session_timeout_ms);
    match join.rebalance_timeout_ms {
        0 => groups::REBALANCE_TIMEOUT_MS_DEFAULT.max(session),
        asked => asked,
    }
}

/// Checks that `member` is in `group` (named `name`).
fn group_member(group: &Group, name: &str, member: &str) -> Result<(), MetadataError> {
    if group.members.contains_key(member) {
        Ok(())
    } else {
        Err(MetadataError::UnknownMember {
            group: name.to_owned(),
            member: member.to_owned(),
        })
    }
}

/// The partitions a wire list names, one by one.
pub fn flatten(lists: &[TopicPartitions]) -> Vec<TopicPartition> {
    lists
        .iter()
        .flat_map(|list| {
            list.partitions
                .iter()
                .map(move |&partition| (list.topic.clone(), partition))
        })
        .collect()
}

/// Partitions grouped by topic, as the wire lists them.
pub fn group_by_topic(partitions: &[TopicPartition]) -> Vec<TopicPartitions> {
    let mut by_topic: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for (topic, partition) in partitions {
        by_topic.entry(topic).or_default().push(*partition);
    }
    by_topic
        .into_iter()
        .map(|(topic, mut partitions)| {
            partitions.sort_unstable();
            TopicPartitions {
                topic: topic.to_owned(),
                partitions,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{DeleteTopicRequest, InitProducerIdRequest};

    fn create(name: &str, partitions: u32, replication_factor: u32) -> MetadataCommand {
        let request = CreateTopicRequest {
            name: name.into(),
            partitions,
            replication_factor,
            ..Default::default()
        };
        MetadataCommand {
            command: Some(Command::CreateTopic(request)),
        }
    }

    fn move_to(topic: &str, replicas: &[u64]) -> MetadataCommand {
        MetadataCommand {
            command: Some(Command::MovePartition(MovePartitionRequest {
                topic: topic.into(),
                partition: 0,
                replicas: replicas.to_vec(),
            })),
        }
    }

    fn complete(topic: &str, replicas: &[u64]) -> MetadataCommand {
        MetadataCommand {
            command: Some(Command::CompletePartitionMove(
                crate::proto::CompletePartitionMove {
                    topic: topic.into(),
                    partition: 0,
                    replicas: replicas.to_vec(),
                },
            )),
        }
    }

    fn register(node_id: u64, client: &str, peer: &str) -> MetadataCommand {
        register_as(node_id, client, peer, u64::from(node_id > 3) * 7)
    }

    fn register_as(node_id: u64, client: &str, peer: &str, incarnation: u64) -> MetadataCommand {
        MetadataCommand {
            command: Some(Command::RegisterNode(RegisterNodeRequest {
                node_id,
                client_address: client.into(),
                peer_address: peer.into(),
                incarnation,
            })),
        }
    }

    fn node_command(command: Command) -> MetadataCommand {
        MetadataCommand {
            command: Some(command),
        }
    }

    fn decommission(node_id: u64) -> MetadataCommand {
        node_command(Command::DecommissionNode(
            crate::proto::DecommissionNodeRequest { node_id },
        ))
    }

    fn recommission(node_id: u64) -> MetadataCommand {
        node_command(Command::RecommissionNode(
            crate::proto::RecommissionNodeRequest { node_id },
        ))
    }

    fn remove(node_id: u64) -> MetadataCommand {
        node_command(Command::RemoveNode(crate::proto::RemoveNode { node_id }))
    }

    /// A node id has one life: a first voter's id cannot be joined, another incarnation of
    /// a joined id is refused, and a removed id never registers again.
    #[test]
    fn node_ids_are_never_reused() {
        let mut m = Metadata::new(vec![1, 2, 3]);
        let refused = |m: &Metadata, command: &MetadataCommand| {
            m.check(command).map_err(|e| e.code()) == Err(ErrorCode::InvalidRequest)
        };
        assert!(
            refused(&m, &register_as(2, "a:1", "a:2", 5)),
            "a founder's id"
        );
        assert!(
            m.check(&register_as(2, "a:1", "a:2", 0)).is_ok(),
            "the founder itself"
        );
        m.apply(1, &register_as(4, "d:1", "d:2", 5)).unwrap();
        assert!(
            refused(&m, &register_as(4, "d:1", "d:2", 6)),
            "another life of 4"
        );
        assert!(m.check(&register_as(4, "e:1", "e:2", 5)).is_ok(), "4 moved");
        m.apply(2, &decommission(4)).unwrap();
        m.apply(3, &remove(4)).unwrap();
        assert_eq!(m.node_state(4), NodeState::Removed);
        assert!(refused(&m, &register_as(4, "d:1", "d:2", 5)), "removed");
        assert!(refused(&m, &recommission(4)), "removed for good");
        assert!(refused(&m, &decommission(4)), "already removed");
    }

    /// Decommissioning: refused when the nodes left could not hold a topic's replicas; a
    /// draining node takes no new replicas and is removed only once it holds none; a
    /// recommission makes it active again.
    #[test]
    fn a_node_drains_before_it_is_removed() {
        let mut m = Metadata::new(vec![1, 2, 3]);
        m.apply(1, &create("t", 2, 3)).unwrap();
        assert!(
            m.check(&decommission(1)).is_err(),
            "only 2 would be left for RF 3"
        );
        assert!(m.check(&decommission(9)).is_err(), "not a node");
        m.apply(2, &register(4, "d:1", "d:2")).unwrap();
        m.apply(3, &decommission(1)).unwrap();
        assert_eq!(m.node_state(1), NodeState::Draining);
        assert_eq!(m.active_nodes(), vec![2, 3, 4]);
        assert!(m.check(&decommission(1)).is_ok(), "again is harmless");
        assert!(
            m.check(&decommission(2)).is_err(),
            "RF 3 needs three active nodes"
        );
        assert!(m.check(&remove(1)).is_err(), "1 still holds t");
        assert!(m.check(&create("rf4", 1, 4)).is_err(), "three active nodes");
        m.apply(4, &create("u", 3, 3)).unwrap();
        assert_eq!(m.partitions_on(1).filter(|(t, _)| t.name == "u").count(), 0);
        assert!(
            m.check(&move_to("u", &[1, 2, 3])).is_err(),
            "no moves onto 1"
        );
        assert!(
            m.check(&move_to("t", &[1, 2, 4])).is_ok(),
            "a draining node may stay where it is"
        );
        for (index, partition) in [(5, 0), (7, 1)] {
            let replicas = [2, 3, 4];
            let mut command = move_to("t", &replicas);
            if let Some(Command::MovePartition(request)) = command.command.as_mut() {
                request.partition = partition;
            }
            m.apply(index, &command).unwrap();
            let mut done = complete("t", &replicas);
            if let Some(Command::CompletePartitionMove(request)) = done.command.as_mut() {
                request.partition = partition;
            }
            m.apply(index + 1, &done).unwrap();
        }
        assert_eq!(m.partitions_on(1).count(), 0);
        m.apply(9, &recommission(1)).unwrap();
        assert_eq!(m.node_state(1), NodeState::Active);
        assert!(
            m.check(&remove(1)).is_err(),
            "only a draining node is removed"
        );
        m.apply(10, &decommission(1)).unwrap();
        assert_eq!(m.apply(11, &remove(1)), Ok(Applied::NodeStateChanged));
        assert_eq!(m.node_state(1), NodeState::Removed);
    }

    /// The metadata group keeps as many voters as it had first voters, from the active nodes,
    /// keeping the voters it has; every other node that is not removed is a learner.
    #[test]
    fn the_metadata_group_keeps_its_size_with_active_voters() {
        let mut m = Metadata::new(vec![1, 2, 3]);
        assert_eq!(
            m.metadata_membership_target(&[1, 2, 3]),
            (vec![1, 2, 3], vec![])
        );
        m.apply(1, &register(5, "e:1", "e:2")).unwrap();
        m.apply(2, &register(4, "d:1", "d:2")).unwrap();
        assert_eq!(
            m.metadata_membership_target(&[1, 2, 3]),
            (vec![1, 2, 3], vec![4, 5])
        );
        m.apply(3, &decommission(2)).unwrap();
        assert_eq!(
            m.metadata_membership_target(&[1, 2, 3]),
            (vec![1, 3, 4], vec![2, 5]),
            "the lowest active learner takes the draining voter's seat"
        );
        assert_eq!(
            m.metadata_membership_target(&[1, 3, 5]),
            (vec![1, 3, 5], vec![2, 4]),
            "voters that are active keep their seats"
        );
        m.apply(4, &remove(2)).unwrap();
        assert_eq!(
            m.metadata_membership_target(&[1, 3, 4]),
            (vec![1, 3, 4], vec![5]),
            "a removed node leaves the group"
        );
    }

    /// A node that registers becomes a node of the cluster: new topics are placed on it and
    /// partitions can move to it; registering again updates its addresses; the first voters
    /// stay the founders. Bad registrations are refused.
    #[test]
    fn a_registered_node_joins_placement_and_keeps_its_latest_addresses() {
        let mut m = Metadata::new(vec![1, 2, 3]);
        assert!(
            m.apply(1, &move_to("t", &[4])).is_err(),
            "no topic yet, no node 4"
        );
        m.apply(2, &create("t", 1, 3)).unwrap();
        assert!(m.check(&move_to("t", &[2, 3, 4])).is_err(), "4 unknown");
        assert_eq!(
            m.apply(3, &register(4, "h:9430", "h:9431")),
            Ok(Applied::NodeRegistered)
        );
        assert_eq!(
            (m.nodes(), m.founders()),
            (vec![1, 2, 3, 4], &[1, 2, 3][..])
        );
        assert!(m.check(&move_to("t", &[2, 3, 4])).is_ok());
        assert!(m.check(&create("four", 1, 4)).is_ok(), "RF 4 now fits");
        m.apply(4, &register(4, "h2:9430", "h2:9431")).unwrap();
        let record = m.node(4).unwrap();
        assert_eq!(
            (
                record.client_address.as_str(),
                record.peer_address.as_str(),
                m.node_state(4)
            ),
            ("h2:9430", "h2:9431", NodeState::Active)
        );
        m.apply(5, &create("u", 4, 1)).unwrap();
        assert_eq!(
            m.partitions_on(4).count(),
            1,
            "placement spreads onto the new node"
        );
        for bad in [
            register(0, "a:1", "a:2"),
            register(5, "", "a:2"),
            register(5, "a:1", ""),
        ] {
            assert_eq!(
                m.check(&bad).map_err(|e| e.code()),
                Err(ErrorCode::InvalidRequest)
            );
        }
    }

    /// A cancelled move keeps the nodes its abandoned target named as holders until the move
    /// back completes.
    #[test]
    fn a_cancelled_move_keeps_the_abandoned_targets_replicas_until_it_completes() {
        // Found by the 30-minute fault run (seed 1546503): a cancel dropped the new node from
        // the holders at once, so it deleted its files while the group's configuration still
        // included it (a learner, or a voter of the joint configuration).
        let mut m = Metadata::new(vec![1, 2, 3, 4]);
        m.apply(1, &create("t", 1, 3)).unwrap();
        m.apply(2, &move_to("t", &[2, 3, 4])).unwrap();
        m.apply(3, &move_to("t", &[1, 2, 3])).unwrap();
        let p = &m.topic("t").unwrap().partitions[0];
        assert!(p.is_moving(), "the group must be brought back first");
        assert!(p.all_replicas().contains(&4), "{p:?}");
        assert_eq!(m.partitions_on(4).count(), 1, "node 4 keeps its replica");
        m.apply(5, &complete("t", &[1, 2, 3])).unwrap();
        let p = &m.topic("t").unwrap().partitions[0];
        assert_eq!(
            (p.all_replicas(), p.departing.clone()),
            (vec![1, 2, 3], vec![])
        );
        assert_eq!(m.partitions_on(4).count(), 0, "now node 4 deletes its copy");
    }

    /// A move is recorded as a target; the nodes of both sets hold a replica until it is
    /// completed with exactly that target; asking for the current replicas cancels it.
    #[test]
    fn a_partition_move_is_recorded_completed_or_cancelled() {
        let mut m = Metadata::new(vec![1, 2, 3, 4]);
        m.apply(1, &create("t", 1, 3)).unwrap();
        let old = m.topic("t").unwrap().partitions[0].replicas.clone();
        assert_eq!(old, [1, 2, 3]);
        assert_eq!(
            m.apply(2, &move_to("t", &[2, 3, 4])),
            Ok(Applied::MoveStarted)
        );
        let p = &m.topic("t").unwrap().partitions[0];
        assert_eq!(
            (p.replicas.clone(), p.all_replicas()),
            (old.clone(), vec![1, 2, 3, 4])
        );
        assert_eq!(
            m.partitions_on(4).count(),
            1,
            "the new node starts its replica"
        );
        assert!(
            m.apply(3, &complete("t", &[1, 2, 4])).is_err(),
            "not the target"
        );
        assert_eq!(
            m.apply(4, &complete("t", &[2, 3, 4])),
            Ok(Applied::MoveCompleted)
        );
        let p = &m.topic("t").unwrap().partitions[0];
        assert_eq!((p.replicas.clone(), p.is_moving()), (vec![2, 3, 4], false));
        assert_eq!(
            m.partitions_on(1).count(),
            0,
            "the node left deletes its replica"
        );
        // Cancelled: the target becomes the replicas it had, and completes as a no-op.
        m.apply(5, &move_to("t", &[1, 2, 3])).unwrap();
        m.apply(6, &move_to("t", &[2, 3, 4])).unwrap();
        assert_eq!(
            m.topic("t").unwrap().partitions[0].target_replicas,
            [2, 3, 4]
        );
        m.apply(7, &complete("t", &[2, 3, 4])).unwrap();
        for (index, bad) in [(8, &[][..]), (9, &[1, 1][..]), (10, &[1, 9][..])] {
            let refused = m.apply(index, &move_to("t", bad));
            assert!(
                matches!(refused, Err(MetadataError::Invalid(_))),
                "{bad:?}: {refused:?}"
            );
        }
        assert!(matches!(
            m.apply(11, &move_to("nope", &[1])),
            Err(MetadataError::UnknownTopic(_))
        ));
    }

    fn commit(group: &str, topic: &str, partition: u32, offset: u64) -> MetadataCommand {
        let offsets = vec![PartitionOffset {
            partition,
            offset,
            committed: true,
        }];
        let request = OffsetCommitRequest {
            group: group.into(),
            topic: topic.into(),
            offsets,
            ..Default::default()
        };
        MetadataCommand {
            command: Some(Command::CommitOffsets(request)),
        }
    }

    #[test]
    fn replicas_and_preferred_leaders_are_spread_evenly() {
        let mut metadata = Metadata::new(vec![3, 1, 2]);
        let Applied::TopicCreated(topic) = metadata.apply(1, &create("orders", 6, 3)).unwrap()
        else {
            panic!("not created")
        };
        let mut leaders = BTreeMap::new();
        for p in &topic.partitions {
            assert_eq!(p.replicas.len(), 3);
            let mut distinct = p.replicas.clone();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(
                distinct.len(),
                3,
                "replicas on distinct nodes: {:?}",
                p.replicas
            );
            *leaders.entry(p.replicas[0]).or_insert(0) += 1;
        }
        assert_eq!(leaders, BTreeMap::from([(1, 2), (2, 2), (3, 2)]));

        // A second topic keeps the balance across topics.
        let Applied::TopicCreated(second) = metadata.apply(2, &create("audit", 3, 1)).unwrap()
        else {
            panic!("not created")
        };
        let mut nodes: Vec<NodeId> = second.partitions.iter().map(|p| p.replicas[0]).collect();
        nodes.sort_unstable();
        assert_eq!(nodes, vec![1, 2, 3]);
    }

    #[test]
    fn group_ids_are_unique_and_never_reused_after_delete() {
        let mut metadata = Metadata::new(vec![1, 2, 3]);
        metadata.apply(1, &create("a", 2, 1)).unwrap();
        let delete = MetadataCommand {
            command: Some(Command::DeleteTopic(DeleteTopicRequest {
                name: "a".into(),
            })),
        };
        let Applied::TopicDeleted(deleted) = metadata.apply(2, &delete).unwrap() else {
            panic!()
        };
        let Applied::TopicCreated(again) = metadata.apply(3, &create("a", 2, 1)).unwrap() else {
            panic!()
        };
        let old: Vec<u64> = deleted.partitions.iter().map(|p| p.group_id).collect();
        let new: Vec<u64> = again.partitions.iter().map(|p| p.group_id).collect();
        assert_eq!(old, vec![1, 2]);
        assert_eq!(new, vec![3, 4]);
    }

    #[test]
    fn every_node_applying_the_same_log_reaches_the_same_state() {
        let log = [
            create("a", 3, 2),
            commit("g", "a", 1, 17),
            create("b", 1, 3),
            create("a", 1, 1),
        ];
        let replay = |nodes: Vec<NodeId>| {
            let mut metadata = Metadata::new(nodes);
            let results: Vec<_> = log
                .iter()
                .enumerate()
                .map(|(i, c)| metadata.apply(i as u64 + 1, c))
                .collect();
            (metadata, results)
        };
        let (first, first_results) = replay(vec![1, 2, 3]);
        let (second, second_results) = replay(vec![3, 2, 1]);
        assert_eq!(first, second);
        assert_eq!(first_results, second_results);
        assert_eq!(
            first_results[3],
            Err(MetadataError::TopicExists("a".into()))
        );
        assert_eq!(first.group_offset("g", "a", 1), Some(17));
    }

    #[test]
    fn bad_commands_are_refused_with_their_codes() {
        let mut metadata = Metadata::new(vec![1, 2, 3]);
        let cases = [
            (create("", 1, 1), ErrorCode::InvalidRequest),
            (create("has space", 1, 1), ErrorCode::InvalidRequest),
            (create("..", 1, 1), ErrorCode::InvalidRequest),
            (create("t", 0, 1), ErrorCode::InvalidRequest),
            (create("t", 1, 4), ErrorCode::InvalidRequest),
            (commit("g", "missing", 0, 1), ErrorCode::UnknownTopic),
            (MetadataCommand { command: None }, ErrorCode::InvalidRequest),
        ];
        for (index, (command, code)) in cases.iter().enumerate() {
            let err = metadata.apply(index as u64 + 1, command).unwrap_err();
            assert_eq!(err.code(), *code, "{command:?}: {err}");
        }
        metadata.apply(100, &create("t", 2, 1)).unwrap();
        let err = metadata.apply(101, &commit("g", "t", 2, 5)).unwrap_err();
        assert_eq!(err.code(), ErrorCode::UnknownPartition);
        assert!(err.to_string().contains("has no partition 2"), "{err}");
    }

    #[test]
    fn deleting_a_topic_forgets_its_group_offsets() {
        let mut metadata = Metadata::new(vec![1]);
        metadata.apply(1, &create("t", 1, 1)).unwrap();
        metadata.apply(2, &commit("g", "t", 0, 9)).unwrap();
        let delete = MetadataCommand {
            command: Some(Command::DeleteTopic(DeleteTopicRequest {
                name: "t".into(),
            })),
        };
        metadata.apply(3, &delete).unwrap();
        assert_eq!(metadata.group_offset("g", "t", 0), None);
    }

    #[test]
    fn producer_ids_increase_from_one() {
        let mut metadata = Metadata::new(vec![1]);
        let allocate = MetadataCommand {
            command: Some(Command::AllocateProducerId(InitProducerIdRequest {})),
        };
        let ids: Vec<_> = (1..=3)
            .map(|i| metadata.apply(i, &allocate).unwrap())
            .collect();
        assert_eq!(
            ids,
            (1..=3)
                .map(|producer_id| Applied::ProducerIdAllocated {
                    producer_id,
                    producer_epoch: 0
                })
                .collect::<Vec<_>>()
        );
    }

    #[test]
    #[should_panic(expected = "applied after")]
    fn applying_an_entry_twice_is_a_bug() {
        let mut metadata = Metadata::new(vec![1]);
        metadata.skip(5);
        let _ = metadata.apply(5, &create("t", 1, 1));
    }
}
