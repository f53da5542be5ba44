//! How a node keeps the cluster's shape: the upkeep that runs between metadata changes.
//!
//! Every node, every other tick:
//! - reports the partition moves its replicas finished leading (the metadata then names the
//!   new replicas, and the nodes left delete their copies);
//! - registers itself when the metadata does not record its addresses yet (a first voter
//!   after its first start, any node after an address change);
//! - while it is being decommissioned, hands every leadership it holds to another voter,
//!   so that its replicas leave as followers and no client sees a leader go away mid-move.
//!
//! The node that leads the metadata group also carries out decommissions: for each draining
//! node it orders moves of that node's partitions to the active nodes carrying the fewest
//! replicas (at most [`DECOMMISSION_MOVES_MAX`] moves at once across the cluster), and once no
//! partition and no metadata voter seat names the node, records it removed. The metadata
//! group's own membership follows [`Metadata::metadata_membership_target`]: as many voters as
//! the cluster had first voters, drawn from the active nodes, every other node a learner.
//!
//! All of this is idempotent and re-derived from the applied metadata and replica status at
//! every round, so a metadata leader change, a lost answer or a restart only delays it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::Node;
use crate::config::NodeId;
use crate::metadata::{Metadata, NodeState};
use crate::proto::envelope::Body;
use crate::proto::metadata_command::Command;
use crate::proto::{self, MetadataCommand};
use crate::replica::{MovePhase, Role};

/// Most partition moves a decommission keeps under way at once across the cluster, so that
/// catch-up traffic to the receiving nodes stays a fraction of their bandwidth.
pub const DECOMMISSION_MOVES_MAX: usize = 4;

/// Least time between two registrations of this node while the metadata does not show it.
const REGISTRATION_RETRY: Duration = Duration::from_secs(2);

impl Node {
    /// One round of upkeep (see the module doc).
    pub(super) async fn upkeep(&self) {
        self.report_finished_moves().await;
        self.register_self().await;
        self.hand_off_if_draining();
        self.drive_decommissions().await;
        self.expire_group_members().await;
    }

    /// For every partition moving whose replica here leads and reports the move done (its
    /// voters are the target, nothing pending), records the move complete in the metadata;
    /// the nodes left then stop and delete their copies.
    async fn report_finished_moves(&self) {
        let finished: Vec<(String, u32, Vec<NodeId>)> = {
            let metadata = self
                .metadata_view
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let partitions = self
                .partitions
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            metadata
                .topics()
                .flat_map(|t| t.partitions.iter().map(move |p| (t, p)))
                .filter(|(_, p)| p.is_moving())
                .filter_map(|(topic, p)| {
                    let status = partitions.get(&p.group_id)?.handle.status();
                    let mut target = p.target_replicas.clone();
                    target.sort_unstable();
                    let done = status.role == Some(Role::Leader)
                        && status.move_phase == Some(MovePhase::Done)
                        && status.voters == target;
                    done.then(|| (topic.name.clone(), p.partition, p.target_replicas.clone()))
                })
                .collect()
        };
        for (topic, partition, replicas) in finished {
            let complete = proto::CompletePartitionMove {
                topic: topic.clone(),
                partition,
                replicas,
            };
            match self
                .propose_through_leader(Command::CompletePartitionMove(complete))
                .await
            {
                Ok(()) => tracing::info!(%topic, partition, "partition move complete"),
                // Tried again at the next round: the metadata leader may be changing.
                Err(refused) => {
                    tracing::debug!(%topic, partition, %refused, "recording a finished move")
                }
            }
        }
    }

    /// Proposes a metadata command through the metadata leader: here when this node leads
    /// the metadata, else sent to the leader's client port as any client would (only the
    /// commands that have a request of their own can be).
    async fn propose_through_leader(&self, command: Command) -> Result<(), String> {
        let leader = self.metadata.status().leader_id;
        if leader == self.id() {
            let command = MetadataCommand {
                command: Some(command),
            };
            return self
                .propose_metadata(command)
                .await
                .map(drop)
                .map_err(|e| e.message);
        }
        let body = match command {
            Command::CompletePartitionMove(complete) => Body::CompletePartitionMove(complete),
            Command::RegisterNode(register) => Body::RegisterNode(register),
            other => return Err(format!("{other:?} is proposed by the metadata leader only")),
        };
        let address = self
            .client_address_of(leader)
            .ok_or_else(|| format!("the metadata leader (node {leader}) is not known yet"))?;
        let options = crate::client::ConnectOptions {
            cluster_id: self.config.cluster_id.clone(),
            client_id: format!("node-{}", self.id()),
            ..Default::default()
        };
        let connection = crate::client::Connection::connect(&address, &options)
            .await
            .map_err(|e| e.to_string())?;
        match connection.request(body).await {
            Ok(Body::MovePartitionResponse(_) | Body::RegisterNodeResponse(_)) => Ok(()),
            Ok(other) => Err(format!(
                "unexpected answer {}",
                crate::wire::error::body_name(Some(&other))
            )),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Makes every registered node a peer of the transport (a node that joined, or one that
    /// registered a new address), and aims the metadata group at its membership target, so
    /// that every node receives the metadata log and the voters are active nodes.
    ///
    /// A first voter's peer address stays the one this node's `peers` names: an operator's
    /// configuration (or a test's fault-injecting proxy) decides how first voters are
    /// reached, and their registrations only tell the nodes that joined later.
    pub(super) fn reconcile_nodes(&self) {
        let (registered, removed, target) = {
            let metadata = self
                .metadata_view
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let founders = metadata.founders();
            let nodes = metadata.nodes();
            let registered: Vec<(NodeId, String)> = nodes
                .iter()
                .filter(|id| !(founders.contains(id) && self.config.peers.contains_key(id)))
                .filter_map(|&id| metadata.node(id).map(|r| (id, r.peer_address.clone())))
                .collect();
            let removed: Vec<NodeId> = nodes
                .iter()
                .copied()
                .filter(|&n| metadata.node_state(n) == NodeState::Removed)
                .collect();
            // A cluster that never changed shape keeps its first voters and no learners,
            // with no target to drive.
            let changed = nodes.len() > founders.len()
                || nodes
                    .iter()
                    .any(|&n| metadata.node_state(n) != NodeState::Active);
            let target = changed
                .then(|| metadata.metadata_membership_target(&self.metadata.status().voters));
            (registered, removed, target)
        };
        for (id, peer_address) in &registered {
            self.transport.add_peer(*id, peer_address);
        }
        // Rewritten only when an address is new or a node removed, rare enough to do in line.
        let recorded = self
            .peer_book
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .record(
                registered
                    .iter()
                    .filter(|(id, _)| !removed.contains(id))
                    .cloned(),
                &removed,
            );
        if let Err(error) = recorded {
            tracing::warn!(%error, "cannot keep the peer addresses for the next start");
        }
        if let Some((voters, learners)) = target {
            self.metadata.set_membership_target(voters, learners);
        }
    }

    /// Registers this node's addresses when the metadata does not record them (at most every
    /// [`REGISTRATION_RETRY`] while it does not).
    async fn register_self(&self) {
        let own_peer_address = self.config.peers.get(&self.id()).cloned();
        let (Some(peer_address), client_address) =
            (own_peer_address, self.client_address.to_string())
        else {
            return;
        };
        let recorded = {
            let metadata = self
                .metadata_view
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            metadata.node_state(self.id()) == NodeState::Removed
                || metadata.node(self.id()).is_some_and(|record| {
                    record.client_address == client_address
                        && record.peer_address == peer_address
                        && record.incarnation == self.incarnation
                })
        };
        if recorded || self.metadata.status().leader_id == 0 {
            return;
        }
        {
            let mut last = self
                .last_registration
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if last.is_some_and(|at| at.elapsed() < REGISTRATION_RETRY) {
                return;
            }
            *last = Some(Instant::now());
        }
        let register = proto::RegisterNodeRequest {
            node_id: self.id(),
            client_address,
            peer_address,
            incarnation: self.incarnation,
        };
        if let Err(refused) = self
            .propose_through_leader(Command::RegisterNode(register))
            .await
        {
            tracing::warn!(node = self.id(), %refused, "cannot register this node's addresses");
        }
    }

    /// While this node is draining, hands every leadership it holds (metadata included) to
    /// another voter, preferring one that stays.
    fn hand_off_if_draining(&self) {
        let active = {
            let metadata = self
                .metadata_view
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if metadata.node_state(self.id()) != NodeState::Draining {
                return;
            }
            metadata.active_nodes()
        };
        let successor = |voters: &[NodeId]| {
            let others = || voters.iter().copied().filter(|&v| v != self.id());
            others()
                .find(|v| active.contains(v))
                .or_else(|| others().next())
        };
        let status = self.metadata.status();
        if status.role == Some(Role::Leader) {
            if let Some(to) = successor(&status.voters) {
                tracing::info!(to, "draining: handing the metadata leadership over");
                self.metadata.transfer_leader(to);
            }
        }
        for local in self.local_partitions() {
            let status = local.handle.status();
            if status.role != Some(Role::Leader) {
                continue;
            }
            if let Some(to) = successor(&status.voters) {
                tracing::info!(topic = %local.topic, partition = local.partition, to, "draining: handing the leadership over");
                local.handle.transfer_leader(to);
            }
        }
    }

    /// On the metadata leader: orders the moves that empty each draining node, and records a
    /// drained node removed.
    async fn drive_decommissions(&self) {
        let status = self.metadata.status();
        if status.role != Some(Role::Leader) {
            return;
        }
        let steps = {
            let metadata = self
                .metadata_view
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            decommission_steps(&metadata, &status.voters)
        };
        for command in steps {
            let command = MetadataCommand {
                command: Some(command),
            };
            if let Err(refused) = self.propose_metadata(command).await {
                tracing::debug!(refused = %refused.message, "decommission step deferred");
                return;
            }
        }
    }
}

/// The metadata commands that bring every draining node closer to removal, given the
/// metadata group's voters now: moves of its partitions to the active nodes with the fewest
/// replicas (keeping at most [`DECOMMISSION_MOVES_MAX`] moves under way), and the removal of
/// a node no partition and no metadata voter seat names any more. Pure, so every metadata
/// leader computes the same plan from the same state.
pub fn decommission_steps(metadata: &Metadata, metadata_voters: &[NodeId]) -> Vec<Command> {
    let draining: Vec<NodeId> = metadata
        .nodes()
        .into_iter()
        .filter(|&n| metadata.node_state(n) == NodeState::Draining)
        .collect();
    if draining.is_empty() {
        return Vec::new();
    }
    let active = metadata.active_nodes();
    let mut load: BTreeMap<NodeId, usize> = active.iter().map(|&n| (n, 0)).collect();
    let mut moving = 0;
    for topic in metadata.topics() {
        for p in &topic.partitions {
            moving += usize::from(p.is_moving());
            for node in p.all_replicas() {
                if let Some(count) = load.get_mut(&node) {
                    *count += 1;
                }
            }
        }
    }
    let mut steps = Vec::new();
    for &node in &draining {
        let mut holds_any = false;
        for (topic, p) in metadata.partitions_on(node) {
            holds_any = true;
            if p.target_replicas.contains(&node) {
                // A move under way to the draining node would wait for it forever if it is
                // dead (the fault run found one), so it is re-aimed at once.
                if let Some(replicas) = re_aimed(p, node, &mut load) {
                    steps.push(Command::MovePartition(proto::MovePartitionRequest {
                        topic: topic.name.clone(),
                        partition: p.partition,
                        replicas,
                    }));
                }
                continue;
            }
            if p.is_moving() || moving >= DECOMMISSION_MOVES_MAX {
                continue;
            }
            let replacement = load
                .iter()
                .filter(|(n, _)| !p.replicas.contains(n))
                .min_by_key(|(n, count)| (**count, **n))
                .map(|(n, _)| *n);
            let Some(replacement) = replacement else {
                continue;
            };
            *load.get_mut(&replacement).expect("from load") += 1;
            moving += 1;
            let replicas = p
                .replicas
                .iter()
                .map(|&r| if r == node { replacement } else { r })
                .collect();
            steps.push(Command::MovePartition(proto::MovePartitionRequest {
                topic: topic.name.clone(),
                partition: p.partition,
                replicas,
            }));
        }
        if !holds_any && !metadata_voters.contains(&node) {
            steps.push(Command::RemoveNode(proto::RemoveNode { node_id: node }));
        }
    }
    steps
}

/// The target of `p`'s move with the draining `node` replaced, preferably by a node that
/// already holds the data (usually a move back where it was, kept in the order the partition
/// has, since the first replica is the preferred leader), else by the least-loaded active
/// node; counted in `load`. `None` when no active node is left to take its place.
fn re_aimed(
    p: &crate::metadata::PartitionAssignment,
    node: NodeId,
    load: &mut BTreeMap<NodeId, usize>,
) -> Option<Vec<NodeId>> {
    let free = |n: &NodeId| load.contains_key(n) && !p.target_replicas.contains(n);
    let stand_in = p.replicas.iter().copied().find(free).or_else(|| {
        load.iter()
            .filter(|(n, _)| free(n))
            .min_by_key(|(n, count)| (**count, **n))
            .map(|(n, _)| *n)
    })?;
    *load.get_mut(&stand_in).expect("an active node") += 1;
    let replicas: Vec<NodeId> = p
        .target_replicas
        .iter()
        .map(|&r| if r == node { stand_in } else { r })
        .collect();
    let back =
        replicas.len() == p.replicas.len() && replicas.iter().all(|r| p.replicas.contains(r));
    Some(if back { p.replicas.clone() } else { replicas })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{CreateTopicRequest, DecommissionNodeRequest, RegisterNodeRequest};

    /// Records node `id` (a node that joined, with `incarnation`) as registered.
    fn register(metadata: &mut Metadata, id: NodeId, incarnation: u64) {
        apply(
            metadata,
            Command::RegisterNode(RegisterNodeRequest {
                node_id: id,
                client_address: format!("h{id}:1"),
                peer_address: format!("h{id}:2"),
                incarnation,
            }),
        );
    }

    fn apply(metadata: &mut Metadata, command: Command) {
        let index = metadata.applied_index() + 1;
        metadata
            .apply(
                index,
                &MetadataCommand {
                    command: Some(command),
                },
            )
            .unwrap();
    }

    /// A decommission moves the draining node's partitions to the least-loaded active
    /// nodes, a few at a time, and removes the node only once nothing names it.
    #[test]
    fn a_decommission_moves_a_few_partitions_at_a_time_then_removes_the_node() {
        let mut m = Metadata::new(vec![1, 2, 3]);
        for (id, incarnation) in [(4, 9), (5, 11)] {
            register(&mut m, id, incarnation);
        }
        apply(
            &mut m,
            Command::CreateTopic(CreateTopicRequest {
                name: "t".into(),
                partitions: 10,
                replication_factor: 3,
                ..Default::default()
            }),
        );
        assert!(
            decommission_steps(&m, &[1, 2, 3]).is_empty(),
            "nothing drains"
        );
        let on_one = m.partitions_on(1).count();
        assert!(on_one > DECOMMISSION_MOVES_MAX, "{on_one}");
        apply(
            &mut m,
            Command::DecommissionNode(DecommissionNodeRequest { node_id: 1 }),
        );
        let steps = decommission_steps(&m, &[1, 2, 3]);
        assert_eq!(steps.len(), DECOMMISSION_MOVES_MAX);
        for step in &steps {
            let Command::MovePartition(request) = step else {
                panic!("a move: {step:?}")
            };
            assert!(!request.replicas.contains(&1), "{request:?}");
            assert_eq!(request.replicas.len(), 3);
        }
        // Carry every move out, a round at a time, as the partitions' leaders would.
        for _round in 0..10 {
            let steps = decommission_steps(&m, &[2, 3, 4]);
            if steps
                .iter()
                .any(|s| matches!(s, Command::RemoveNode(r) if r.node_id == 1))
            {
                assert_eq!(m.partitions_on(1).count(), 0);
                return;
            }
            for step in steps {
                let Command::MovePartition(request) = step else {
                    panic!("only moves while node 1 holds partitions");
                };
                let done = proto::CompletePartitionMove {
                    topic: request.topic.clone(),
                    partition: request.partition,
                    replicas: request.replicas.clone(),
                };
                apply(&mut m, Command::MovePartition(request));
                apply(&mut m, Command::CompletePartitionMove(done));
            }
        }
        panic!("node 1 was never removed");
    }

    /// A move under way to a node that is then decommissioned (perhaps because it died) is
    /// re-aimed at once instead of waiting for that node to catch up: back to the replicas
    /// the partition has when they can take it.
    #[test]
    fn a_move_to_a_draining_node_is_re_aimed_not_waited_for() {
        let mut m = Metadata::new(vec![1, 2, 3]);
        register(&mut m, 4, 3);
        apply(
            &mut m,
            Command::CreateTopic(CreateTopicRequest {
                name: "t".into(),
                partitions: 1,
                replication_factor: 3,
                ..Default::default()
            }),
        );
        let before = m.topic("t").unwrap().partitions[0].replicas.clone();
        let mut target: Vec<NodeId> = before.iter().copied().skip(1).collect();
        target.push(4);
        apply(
            &mut m,
            Command::MovePartition(proto::MovePartitionRequest {
                topic: "t".into(),
                partition: 0,
                replicas: target,
            }),
        );
        apply(
            &mut m,
            Command::DecommissionNode(DecommissionNodeRequest { node_id: 4 }),
        );
        let steps = decommission_steps(&m, &[1, 2, 3]);
        let [Command::MovePartition(request)] = steps.as_slice() else {
            panic!("one move: {steps:?}");
        };
        assert_eq!(request.replicas, before, "back where it was, in its order");
        apply(&mut m, Command::MovePartition(request.clone()));
        let p = &m.topic("t").unwrap().partitions[0];
        assert_eq!(p.target_replicas, before, "{p:?}");
        assert_eq!(
            p.departing,
            vec![4],
            "node 4 keeps its copy until the move completes"
        );
    }

    /// A drained node that still holds a metadata voter seat is not removed yet.
    #[test]
    fn a_metadata_voter_is_not_removed_before_it_gives_up_its_seat() {
        let mut m = Metadata::new(vec![1, 2, 3]);
        register(&mut m, 4, 3);
        apply(
            &mut m,
            Command::DecommissionNode(DecommissionNodeRequest { node_id: 2 }),
        );
        assert!(decommission_steps(&m, &[1, 2, 3]).is_empty());
        assert!(matches!(
            decommission_steps(&m, &[1, 3, 4]).as_slice(),
            [Command::RemoveNode(r)] if r.node_id == 2
        ));
    }
}
