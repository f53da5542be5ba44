//! Request handlers: each turns one client request into calls on the node's [`Service`] and
//! one response.

use std::time::Duration;

use crate::batch;
use crate::metadata::{Applied, Metadata, MetadataError};
use crate::proto::envelope::Body;
use crate::proto::metadata_command::Command;
use crate::proto::{
    Acks as WireAcks, CreateTopicResponse, DeleteGroupResponse, DeleteTopicResponse,
    DescribeGroupResponse, Error as ErrorMessage, ErrorCode, FetchRequest, FetchResponse,
    FetchedBatch, GroupInfo, GroupMemberInfo, GroupPartitionInfo, InitProducerIdResponse,
    LeaveGroupResponse, ListGroupsResponse, ListTopicsResponse, MetadataCommand, MetadataRequest,
    MetadataResponse, MovePartitionResponse, NodeInfo, NodeStateResponse, OffsetCommitResponse,
    OffsetFetchRequest, OffsetFetchResponse, PartitionOffset, ProduceRequest, ProduceResponse,
    RegisterNodeResponse, ReplicaProgress, TopicInfo,
};
use crate::replica::{Acks, LocalPartition, MovePhase, PendingAppend, ReplicaStatus, Role};
use crate::server::Service;

/// A produce request queued to its replica, waiting for its acknowledgement.
pub struct PendingProduce<S> {
    pending: PendingAppend<()>,
    local: LocalPartition,
    node: std::sync::Arc<S>,
    timeout: Duration,
}

impl<S: Service> PendingProduce<S> {
    /// Waits for the outcome (bounded by the produce timeout) and builds the response.
    pub async fn finish(self) -> Body {
        let what = format!("{}/{}", self.local.topic, self.local.partition);
        match tokio::time::timeout(self.timeout, self.pending.wait()).await {
            Ok(Ok(appended)) => Body::ProduceResponse(ProduceResponse {
                base_offset: appended.base_offset,
                timestamp_ms: appended.timestamp_ms,
                high_watermark: self.local.handle.status().high_watermark,
            }),
            Ok(Err(failure)) => Body::Error(self.node.replica_error(&failure, &what)),
            Err(_) => Body::Error(ErrorMessage {
                code: ErrorCode::Timeout as i32,
                message: format!(
                    "{what}: not acknowledged within {} ms; the write may or may not have taken effect",
                    self.timeout.as_millis()
                ),
                ..Default::default()
            }),
        }
    }
}

/// Validates a produce request and queues its batch to the partition's replica.
///
/// # Errors
/// Unknown topic or partition, a batch that fails validation (CRC, count, size), or a
/// replica that is not the leader.
pub async fn submit_produce<S: Service>(
    node: &std::sync::Arc<S>,
    request: ProduceRequest,
) -> Result<PendingProduce<S>, ErrorMessage> {
    let local = node.partition(&request.topic, request.partition)?;
    let server = &node.config().server;
    let validated = batch::validate(&request.batch, server.batch_bytes_max).map_err(|failure| {
        ErrorMessage {
            code: failure.code() as i32,
            message: format!("{}/{}: {failure}", request.topic, request.partition),
            ..Default::default()
        }
    })?;
    let acks = match request.acks() {
        WireAcks::Leader => Acks::Leader,
        WireAcks::All | WireAcks::Unspecified => Acks::All,
    };
    let timeout_ms = match request.timeout_ms {
        0 => server.produce_timeout_ms,
        asked => u64::from(asked).min(server.produce_timeout_ms),
    };
    let what = format!("{}/{}", request.topic, request.partition);
    let batch_bytes = request.batch.len();
    let pending = local
        .handle
        .submit(request.batch, validated.record_count(), acks)
        .await
        .map_err(|failure| node.replica_error(&failure, &what))?;
    crate::metrics::group(node.node_id(), local.group_id)
        .produced(validated.record_count(), batch_bytes);
    Ok(PendingProduce {
        pending,
        local,
        node: node.clone(),
        timeout: Duration::from_millis(timeout_ms),
    })
}

/// Handles every request except produce, returning its response or error body.
pub async fn handle<S: Service>(node: &S, body: Body) -> Body {
    let result = match body {
        Body::Fetch(request) => {
            let started = std::time::Instant::now();
            let fetched = fetch(node, request).await;
            crate::metrics::node(node.node_id()).fetch_answered(started.elapsed());
            fetched.map(Body::FetchResponse)
        }
        Body::Metadata(request) => Ok(Body::MetadataResponse(metadata(node, &request))),
        Body::ListTopics(_) => {
            let topics = node
                .metadata()
                .topics()
                .map(|topic| describe(node, topic.to_info()))
                .collect();
            Ok(Body::ListTopicsResponse(ListTopicsResponse { topics }))
        }
        Body::CreateTopic(request) => {
            let command = MetadataCommand {
                command: Some(Command::CreateTopic(request)),
            };
            match node.propose_metadata(command).await {
                Ok(Applied::TopicCreated(topic)) => {
                    Ok(Body::CreateTopicResponse(CreateTopicResponse {
                        topic: Some(topic.to_info()),
                    }))
                }
                Ok(other) => Err(unexpected(&other)),
                Err(error) => Err(error),
            }
        }
        Body::DeleteTopic(request) => {
            let command = MetadataCommand {
                command: Some(Command::DeleteTopic(request)),
            };
            node.propose_metadata(command)
                .await
                .map(|_| Body::DeleteTopicResponse(DeleteTopicResponse {}))
        }
        Body::CompletePartitionMove(request) => {
            let command = MetadataCommand {
                command: Some(Command::CompletePartitionMove(request)),
            };
            node.propose_metadata(command)
                .await
                .map(|_| Body::MovePartitionResponse(MovePartitionResponse {}))
        }
        Body::RegisterNode(request) => {
            let command = MetadataCommand {
                command: Some(Command::RegisterNode(request)),
            };
            node.propose_metadata(command).await.map(|_| {
                let metadata = node.metadata();
                Body::RegisterNodeResponse(RegisterNodeResponse {
                    nodes: node_infos(node, &metadata),
                    founding_voters: metadata.founders().to_vec(),
                })
            })
        }
        Body::DecommissionNode(request) => {
            change_node_state(node, request.node_id, Command::DecommissionNode(request)).await
        }
        Body::RecommissionNode(request) => {
            change_node_state(node, request.node_id, Command::RecommissionNode(request)).await
        }
        Body::MovePartition(request) => {
            let command = MetadataCommand {
                command: Some(Command::MovePartition(request)),
            };
            node.propose_metadata(command)
                .await
                .map(|_| Body::MovePartitionResponse(MovePartitionResponse {}))
        }
        Body::OffsetCommit(request) => {
            let command = MetadataCommand {
                command: Some(Command::CommitOffsets(request)),
            };
            node.propose_metadata(command)
                .await
                .map(|_| Body::OffsetCommitResponse(OffsetCommitResponse {}))
        }
        Body::OffsetFetch(request) => offset_fetch(node, &request).map(Body::OffsetFetchResponse),
        Body::JoinGroup(request) => node.join_group(request).await.map(Body::JoinGroupResponse),
        Body::GroupHeartbeat(request) => node
            .group_heartbeat(request)
            .await
            .map(Body::GroupHeartbeatResponse),
        Body::LeaveGroup(request) => node
            .leave_group(request)
            .await
            .map(|()| Body::LeaveGroupResponse(LeaveGroupResponse {})),
        Body::DescribeGroup(request) => describe_group(node, &request.group)
            .map(|group| Body::DescribeGroupResponse(DescribeGroupResponse { group: Some(group) })),
        Body::ListGroups(_) => {
            let metadata = node.metadata();
            let groups = metadata
                .group_names()
                .iter()
                .map(|name| group_info(node, &metadata, name, false))
                .collect();
            Ok(Body::ListGroupsResponse(ListGroupsResponse { groups }))
        }
        Body::DeleteGroup(request) => {
            let command = MetadataCommand {
                command: Some(Command::DeleteGroup(request)),
            };
            node.propose_metadata(command)
                .await
                .map(|_| Body::DeleteGroupResponse(DeleteGroupResponse {}))
        }
        Body::InitProducerId(request) => {
            let command = MetadataCommand {
                command: Some(Command::AllocateProducerId(request)),
            };
            match node.propose_metadata(command).await {
                Ok(Applied::ProducerIdAllocated {
                    producer_id,
                    producer_epoch,
                }) => Ok(Body::InitProducerIdResponse(InitProducerIdResponse {
                    producer_id,
                    producer_epoch,
                })),
                Ok(other) => Err(unexpected(&other)),
                Err(error) => Err(error),
            }
        }
        other => Err(ErrorMessage {
            code: ErrorCode::InvalidRequest as i32,
            message: format!(
                "{} is not a request",
                crate::wire::error::body_name(Some(&other))
            ),
            ..Default::default()
        }),
    };
    result.unwrap_or_else(Body::Error)
}

async fn fetch<S: Service>(node: &S, request: FetchRequest) -> Result<FetchResponse, ErrorMessage> {
    let local = node.partition(&request.topic, request.partition)?;
    let server = &node.config().server;
    let wait = Duration::from_millis(u64::from(request.max_wait_ms).min(server.fetch_wait_ms_max));
    // A zero budget still returns one batch, as Kafka does, so a consumer always progresses.
    let bytes_max = u64::from(request.max_bytes).max(1);
    let what = format!("{}/{}", request.topic, request.partition);
    let fetched = local
        .handle
        .fetch(request.offset, bytes_max, wait)
        .await
        .map_err(|failure| node.replica_error(&failure, &what))?;
    let records = fetched
        .entries
        .iter()
        .map(|e| u64::from(e.record_count))
        .sum();
    let bytes = fetched.entries.iter().map(|e| e.payload.len() as u64).sum();
    crate::metrics::group(node.node_id(), local.group_id).fetched(records, bytes);
    let batches = fetched
        .entries
        .into_iter()
        .map(|entry| FetchedBatch {
            base_offset: entry.base_offset,
            record_count: entry.record_count,
            timestamp_ms: entry.timestamp_ms,
            batch: entry.payload,
        })
        .collect();
    Ok(FetchResponse {
        batches,
        high_watermark: fetched.high_watermark,
        log_start_offset: fetched.log_start_offset,
    })
}

/// Proposes a change of `node_id`'s state and answers with the node as recorded after it.
async fn change_node_state<S: Service>(
    node: &S,
    node_id: u64,
    command: Command,
) -> Result<Body, ErrorMessage> {
    let command = MetadataCommand {
        command: Some(command),
    };
    node.propose_metadata(command).await?;
    let metadata = node.metadata();
    let info = node_infos(node, &metadata)
        .into_iter()
        .find(|info| info.node_id == node_id);
    Ok(Body::NodeStateResponse(NodeStateResponse { node: info }))
}

/// Every node of the cluster with its addresses: as registered, else (a first voter that has
/// not registered yet) as this node knows them.
fn node_infos<S: Service>(node: &S, metadata: &Metadata) -> Vec<NodeInfo> {
    metadata
        .nodes()
        .into_iter()
        .map(|id| match metadata.node(id) {
            Some(record) => NodeInfo {
                node_id: id,
                client_address: record.client_address.clone(),
                peer_address: record.peer_address.clone(),
                state: metadata.node_state(id).name().to_owned(),
            },
            None => NodeInfo {
                node_id: id,
                client_address: node.client_address_of(id).unwrap_or_default(),
                peer_address: node.config().peers.get(&id).cloned().unwrap_or_default(),
                state: metadata.node_state(id).name().to_owned(),
            },
        })
        .collect()
}

fn metadata<S: Service>(node: &S, request: &MetadataRequest) -> MetadataResponse {
    let metadata = node.metadata();
    let nodes = node_infos(node, &metadata);
    let topics = metadata
        .topics()
        .filter(|topic| request.topics.is_empty() || request.topics.contains(&topic.name))
        .map(|topic| describe(node, topic.to_info()))
        .collect();
    let metadata_status = node.metadata_status();
    MetadataResponse {
        nodes,
        topics,
        metadata_leader_id: metadata_status.leader_id,
        metadata_term: metadata_status.term,
    }
}

/// Adds what this node knows live about a topic's partitions: leader, term, offsets, and,
/// where this node leads, each replica's progress. A partition without a replica here keeps
/// leader 0 ("ask one of its replicas").
fn describe<S: Service>(node: &S, mut info: TopicInfo) -> TopicInfo {
    let local = node.partitions();
    for partition in &mut info.partitions {
        if let Some(replica) = local.iter().find(|l| l.group_id == partition.group_id) {
            let status = replica.handle.status();
            partition.leader_id = status.leader_id;
            partition.term = status.term;
            partition.log_start_offset = status.log_start_offset;
            partition.high_watermark = status.high_watermark;
            partition.replica_progress = replica_progress(node.node_id(), &status);
            if status.role == Some(Role::Leader) && !partition.target_replicas.is_empty() {
                if let Some(phase) = &status.move_phase {
                    (partition.move_phase, partition.move_waiting_for) = move_phase(phase);
                }
                let remaining = status.catch_up.bytes_remaining;
                partition.move_bytes_remaining = remaining;
                partition.move_bytes_moved = status.log_size_bytes.saturating_sub(remaining);
                partition.move_rate_bytes_per_second = status.catch_up.rate_bytes_per_second;
            }
        }
    }
    info
}

/// A move's phase as the schema names it, and the replicas it waits for.
fn move_phase(phase: &MovePhase) -> (String, Vec<u64>) {
    let (name, waiting_for) = match phase {
        MovePhase::AddingLearners => ("adding_learners", Vec::new()),
        MovePhase::CatchingUp { waiting_for } => ("catching_up", waiting_for.clone()),
        MovePhase::Joint => ("joint", Vec::new()),
        MovePhase::RemovingLearners => ("removing_learners", Vec::new()),
        MovePhase::Done => ("done", Vec::new()),
    };
    (name.to_owned(), waiting_for)
}

/// The leader's view of every replica, itself first with lag 0; empty on a non-leader, whose
/// view of the others would be stale or absent.
fn replica_progress(me: u64, status: &ReplicaStatus) -> Vec<ReplicaProgress> {
    if status.role != Some(Role::Leader) {
        return Vec::new();
    }
    let leader = ReplicaProgress {
        node_id: me,
        match_index: status.last_index,
        lag_entries: 0,
    };
    let followers = status
        .follower_match
        .iter()
        .map(|&(node_id, match_index)| ReplicaProgress {
            node_id,
            match_index,
            lag_entries: status.last_index.saturating_sub(match_index),
        });
    std::iter::once(leader).chain(followers).collect()
}

/// A group as `group describe` shows it.
///
/// # Errors
/// `UNKNOWN_GROUP` for a group with neither members nor committed offsets.
fn describe_group<S: Service>(node: &S, name: &str) -> Result<GroupInfo, ErrorMessage> {
    let metadata = node.metadata();
    if !metadata.group_names().iter().any(|known| known == name) {
        let refusal = MetadataError::UnknownGroup(name.to_owned());
        return Err(ErrorMessage {
            code: refusal.code() as i32,
            message: refusal.to_string(),
            ..Default::default()
        });
    }
    Ok(group_info(node, &metadata, name, true))
}

/// What the metadata records of group `name`; `with_partitions` adds each partition with its
/// high watermark and lag where this node holds a replica (elsewhere 0: the client asks the
/// partitions' leaders). A list leaves them out, so it reads no replica status.
fn group_info<S: Service>(
    node: &S,
    metadata: &Metadata,
    name: &str,
    with_partitions: bool,
) -> GroupInfo {
    let counts = metadata.partition_counts();
    let state = metadata.group(name);
    let members = state
        .map(|group| {
            group
                .members
                .iter()
                .map(|(member_id, member)| GroupMemberInfo {
                    member_id: member_id.clone(),
                    client_id: member.client_id.clone(),
                    topics: member.topics.clone(),
                    session_timeout_ms: member.session_timeout_ms,
                })
                .collect()
        })
        .unwrap_or_default();
    // Every partition a member consumes or the group committed an offset for.
    let mut partitions: std::collections::BTreeSet<(String, u32)> = metadata
        .group_offsets()
        .filter(|((group, _, _), _)| with_partitions && group == name)
        .map(|((_, topic, partition), _)| (topic.clone(), *partition))
        .collect();
    if let (Some(group), true) = (state, with_partitions) {
        for member in group.members.values() {
            for topic in &member.topics {
                let count = counts.get(topic).copied().unwrap_or(0);
                partitions.extend((0..count).map(|p| (topic.clone(), p)));
            }
        }
    }
    let local = node.partitions();
    let partitions = partitions
        .into_iter()
        .map(|(topic, partition)| {
            let committed = metadata.group_offset(name, &topic, partition);
            let live = metadata
                .topic(&topic)
                .and_then(|t| t.partitions.iter().find(|p| p.partition == partition))
                .and_then(|p| local.iter().find(|l| l.group_id == p.group_id))
                .map(|l| l.handle.status());
            let (high_watermark, log_start) = live
                .map(|status| (status.high_watermark, status.log_start_offset))
                .unwrap_or((0, 0));
            let key = (topic.clone(), partition);
            GroupPartitionInfo {
                owner: state
                    .and_then(|g| g.owners.get(&key).cloned())
                    .unwrap_or_default(),
                revoking: state.is_some_and(|g| g.revoking.contains(&key)),
                committed_offset: committed.unwrap_or(0),
                committed: committed.is_some(),
                lag: high_watermark.saturating_sub(committed.unwrap_or(log_start)),
                high_watermark,
                topic,
                partition,
            }
        })
        .collect();
    GroupInfo {
        name: name.to_owned(),
        state: state
            .map_or(crate::groups::GroupState::Empty, |g| g.state(&counts))
            .name()
            .to_owned(),
        generation: state.map_or(0, |g| g.generation),
        members,
        partitions,
    }
}

fn offset_fetch<S: Service>(
    node: &S,
    request: &OffsetFetchRequest,
) -> Result<OffsetFetchResponse, ErrorMessage> {
    let metadata = node.metadata();
    let topic = metadata.topic(&request.topic).ok_or_else(|| {
        let refusal = MetadataError::UnknownTopic(request.topic.clone());
        ErrorMessage {
            code: refusal.code() as i32,
            message: refusal.to_string(),
            ..Default::default()
        }
    })?;
    let partitions: Vec<u32> = if request.partitions.is_empty() {
        (0..topic.partitions.len() as u32).collect()
    } else {
        request.partitions.clone()
    };
    let offsets = partitions
        .into_iter()
        .map(|partition| {
            let stored = metadata.group_offset(&request.group, &request.topic, partition);
            PartitionOffset {
                partition,
                offset: stored.unwrap_or(0),
                committed: stored.is_some(),
            }
        })
        .collect();
    Ok(OffsetFetchResponse { offsets })
}

fn unexpected(applied: &Applied) -> ErrorMessage {
    ErrorMessage {
        code: ErrorCode::Internal as i32,
        message: format!("metadata command produced an unexpected outcome: {applied:?}"),
        ..Default::default()
    }
}
