//! Topic administration and consumer groups: create, list, describe and delete topics;
//! commit and fetch a group's positions; list, describe and delete groups.
//!
//! Changes (create, delete, offset commit) go to the metadata leader; reads go to any node,
//! except a group's offsets, which are read from the metadata leader so that a consumer
//! resuming right after a commit sees it. This module does not cache anything itself: the
//! [`Cluster`] does.

use std::time::Duration;

use tokio::time::Instant;

use super::cluster::{unexpected, Cluster, Retry, Route};
use super::connection::ClientError;
use super::consumer::partition_bounds;
use crate::proto::envelope::Body;
use crate::proto::{
    CreateTopicRequest, DecommissionNodeRequest, DeleteGroupRequest, DeleteTopicRequest,
    DescribeGroupRequest, DescribeGroupResponse, GroupInfo, ListGroupsRequest, ListTopicsRequest,
    MetadataResponse, MovePartitionRequest, NodeInfo, OffsetCommitRequest, OffsetFetchRequest,
    PartitionOffset, RecommissionNodeRequest, RegisterNodeRequest, RegisterNodeResponse, TopicInfo,
};

/// What a new topic looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTopic {
    /// Topic name: 1 to 249 characters of `[a-zA-Z0-9._-]`.
    pub name: String,
    /// Number of partitions, at least 1.
    pub partitions: u32,
    /// Replicas per partition, from 1 to the number of nodes.
    pub replication_factor: u32,
    /// Size-based retention per partition in bytes; 0 keeps everything.
    pub retention_bytes: u64,
    /// Age-based retention in milliseconds; 0 keeps everything.
    pub retention_ms: u64,
}

impl NewTopic {
    /// A topic with `partitions` partitions of `replication_factor` replicas, kept forever.
    pub fn new(name: impl Into<String>, partitions: u32, replication_factor: u32) -> Self {
        NewTopic {
            name: name.into(),
            partitions,
            replication_factor,
            retention_bytes: 0,
            retention_ms: 0,
        }
    }
}

/// One node as [`Admin::cluster_status`] found it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeStatus {
    /// Its id and addresses, from the cluster metadata.
    pub info: NodeInfo,
    /// Why it did not answer; `None` when it did.
    pub error: Option<String>,
}

/// The state of the whole cluster, as [`Admin::cluster_status`] assembled it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterStatus {
    /// Every node, by id.
    pub nodes: Vec<NodeStatus>,
    /// Leader of the metadata group, 0 when unknown.
    pub metadata_leader_id: u64,
    /// The metadata group's term.
    pub metadata_term: u64,
    /// Every topic by name, partitions by number, live state from each partition's leader
    /// where it answered.
    pub topics: Vec<TopicInfo>,
}

/// The admin API over a [`Cluster`].
#[derive(Debug, Clone)]
pub struct Admin {
    cluster: Cluster,
}

impl Admin {
    /// The admin API over `cluster`.
    pub fn new(cluster: Cluster) -> Self {
        Admin { cluster }
    }

    /// The cluster this admin talks to.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Creates a topic. Its partitions may still be electing leaders when this returns; see
    /// [`Self::wait_for_leaders`].
    ///
    /// # Errors
    /// The server's TOPIC_EXISTS or INVALID_REQUEST, or a routing error.
    pub async fn create_topic(&self, topic: &NewTopic) -> Result<TopicInfo, ClientError> {
        let body = Body::CreateTopic(CreateTopicRequest {
            name: topic.name.clone(),
            partitions: topic.partitions,
            replication_factor: topic.replication_factor,
            retention_bytes: topic.retention_bytes,
            retention_ms: topic.retention_ms,
        });
        // Not retried after an unknown outcome: a retry of a create that did happen would
        // answer TOPIC_EXISTS, a confusing error for a request that succeeded.
        let answer = self
            .cluster
            .request(Route::MetadataLeader, body, Retry::Determinate)
            .await?;
        let created = match answer {
            Body::CreateTopicResponse(response) => response.topic.unwrap_or_default(),
            other => return Err(unexpected("CreateTopicResponse", &other)),
        };
        // The cached metadata lacks the new topic; refresh now so that a producer on this
        // cluster handle finds it without an UNKNOWN_TOPIC round.
        let _ = self.cluster.refresh_metadata().await;
        Ok(created)
    }

    /// Waits until every partition of `topic` has a known leader, refreshing the metadata
    /// with backoff, for at most `timeout`.
    ///
    /// # Errors
    /// [`ClientError::Timeout`] when some partition still has no leader at the end;
    /// [`ClientError::UnknownTopic`] when the topic does not exist.
    pub async fn wait_for_leaders(
        &self,
        topic: &str,
        timeout: Duration,
    ) -> Result<TopicInfo, ClientError> {
        let started = Instant::now();
        let mut wait = Duration::from_millis(20);
        loop {
            let info = self.describe_topic(topic).await?;
            let leaderless = info.partitions.iter().filter(|p| p.leader_id == 0).count();
            if leaderless == 0 && !info.partitions.is_empty() {
                return Ok(info);
            }
            if started.elapsed() + wait >= timeout {
                return Err(ClientError::Timeout {
                    what: format!("waiting for the partitions of {topic:?} to elect leaders"),
                    elapsed_ms: started.elapsed().as_millis() as u64,
                    last: format!("{leaderless} partition(s) without a leader"),
                });
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_millis(500));
        }
    }

    /// Every topic of the cluster, by name, as the metadata leader sees it: it has applied
    /// every change it acknowledged, so a topic just created (or deleted) shows (or not).
    ///
    /// # Errors
    /// A routing error when no node answers.
    pub async fn list_topics(&self) -> Result<Vec<TopicInfo>, ClientError> {
        let body = Body::ListTopics(ListTopicsRequest {});
        match self
            .cluster
            .request(Route::MetadataLeader, body, Retry::All)
            .await?
        {
            Body::ListTopicsResponse(response) => {
                let mut topics = response.topics;
                topics.sort_by(|a, b| a.name.cmp(&b.name));
                Ok(topics)
            }
            other => Err(unexpected("ListTopicsResponse", &other)),
        }
    }

    /// A topic with its partitions' leaders, replicas, log starts and high watermarks, from
    /// fresh metadata (which also refreshes the cluster's cache).
    ///
    /// # Errors
    /// [`ClientError::UnknownTopic`] when no topic has this name.
    pub async fn describe_topic(&self, name: &str) -> Result<TopicInfo, ClientError> {
        let metadata = self.describe_cluster().await?;
        let mut topic = metadata
            .topics
            .iter()
            .find(|topic| topic.name == name)
            .cloned()
            .ok_or_else(|| ClientError::UnknownTopic(name.to_owned()))?;
        topic.partitions.sort_by_key(|p| p.partition);
        Ok(topic)
    }

    /// The cluster's nodes, topics and metadata leader, freshly asked of every node and
    /// merged: each node knows the live state (leader, term, high watermark) only of the
    /// partitions it holds a replica of.
    ///
    /// # Errors
    /// A routing error when no node answers.
    pub async fn describe_cluster(&self) -> Result<MetadataResponse, ClientError> {
        let metadata = self.cluster.refresh_metadata().await?;
        Ok(MetadataResponse::clone(&metadata))
    }

    /// What `raftlog cluster status` shows: every node and whether it answers, the metadata
    /// leader, and every topic's partitions with leader, term, offsets and the leader's view
    /// of its replicas' lag. Each node is asked directly and the answers are merged, so
    /// per partition the live state comes from its leader whenever the leader answers.
    ///
    /// # Errors
    /// A routing error when no node answers.
    pub async fn cluster_status(&self) -> Result<ClusterStatus, ClientError> {
        self.cluster.refresh_metadata().await?;
        let mut nodes = Vec::new();
        let mut answers = Vec::new();
        let mut last_error = None;
        for (info, answer) in self.cluster.metadata_of_each_node().await? {
            let error = match answer {
                Ok(metadata) => {
                    answers.push(metadata);
                    None
                }
                Err(error) => {
                    let text = error.to_string();
                    last_error = Some(error);
                    Some(text)
                }
            };
            nodes.push(NodeStatus { info, error });
        }
        let Some(merged) = super::cluster::merge_metadata(answers) else {
            return Err(last_error.unwrap_or(ClientError::Invalid("no node known".into())));
        };
        let mut topics = merged.topics;
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        for topic in &mut topics {
            topic.partitions.sort_by_key(|p| p.partition);
        }
        Ok(ClusterStatus {
            nodes,
            metadata_leader_id: merged.metadata_leader_id,
            metadata_term: merged.metadata_term,
            topics,
        })
    }

    /// Deletes a topic and all its records.
    ///
    /// # Errors
    /// UNKNOWN_TOPIC from the server, or a routing error.
    pub async fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        let body = Body::DeleteTopic(DeleteTopicRequest { name: name.into() });
        match self
            .cluster
            .request(Route::MetadataLeader, body, Retry::Determinate)
            .await?
        {
            Body::DeleteTopicResponse(_) => {
                let _ = self.cluster.refresh_metadata().await;
                Ok(())
            }
            other => Err(unexpected("DeleteTopicResponse", &other)),
        }
    }

    /// Orders partition `partition` of `topic` moved to `replicas` (asking for the replicas
    /// it has cancels a move under way). Returns once the move is recorded; the partition's
    /// leader carries it out, and [`Self::describe_topic`] shows how far it got
    /// (`target_replicas`, `move_phase`, and `replicas` once it is done).
    ///
    /// # Errors
    /// UNKNOWN_TOPIC, UNKNOWN_PARTITION, or INVALID_REQUEST (replicas not distinct nodes of
    /// the cluster) from the server, or a routing error.
    pub async fn move_partition(
        &self,
        topic: &str,
        partition: u32,
        replicas: &[u64],
    ) -> Result<(), ClientError> {
        let body = Body::MovePartition(MovePartitionRequest {
            topic: topic.into(),
            partition,
            replicas: replicas.to_vec(),
        });
        match self
            .cluster
            .request(Route::MetadataLeader, body, Retry::All)
            .await?
        {
            Body::MovePartitionResponse(_) => {
                let _ = self.cluster.refresh_metadata().await;
                Ok(())
            }
            other => Err(unexpected("MovePartitionResponse", &other)),
        }
    }

    /// Records a node and its addresses in the metadata (what a node started with `--join`
    /// does before it starts, and what every node does when its addresses change). Safe to
    /// repeat with the same values.
    ///
    /// # Errors
    /// INVALID_REQUEST when the id was removed, is a first voter's, or belongs to another
    /// incarnation; a routing error.
    pub async fn register_node(
        &self,
        request: RegisterNodeRequest,
    ) -> Result<RegisterNodeResponse, ClientError> {
        match self
            .cluster
            .request(
                Route::MetadataLeader,
                Body::RegisterNode(request),
                Retry::All,
            )
            .await?
        {
            Body::RegisterNodeResponse(response) => Ok(response),
            other => Err(unexpected("RegisterNodeResponse", &other)),
        }
    }

    /// Starts decommissioning `node`: the cluster moves its leaderships, replicas and
    /// metadata seat to the other active nodes, then records it removed. Returns the node as
    /// recorded once the decommission is (see [`Self::describe_cluster`] for its progress).
    ///
    /// # Errors
    /// INVALID_REQUEST (not a node, already removed, or too few nodes would be left); a
    /// routing error.
    pub async fn decommission_node(&self, node: u64) -> Result<NodeInfo, ClientError> {
        let body = Body::DecommissionNode(DecommissionNodeRequest { node_id: node });
        self.node_state_change(body).await
    }

    /// Cancels a decommission in progress: the node is active again (moves already done
    /// stay done).
    ///
    /// # Errors
    /// INVALID_REQUEST (not a node, or already removed); a routing error.
    pub async fn recommission_node(&self, node: u64) -> Result<NodeInfo, ClientError> {
        let body = Body::RecommissionNode(RecommissionNodeRequest { node_id: node });
        self.node_state_change(body).await
    }

    async fn node_state_change(&self, body: Body) -> Result<NodeInfo, ClientError> {
        match self
            .cluster
            .request(Route::MetadataLeader, body, Retry::All)
            .await?
        {
            Body::NodeStateResponse(response) => {
                let _ = self.cluster.refresh_metadata().await;
                response
                    .node
                    .ok_or_else(|| ClientError::Invalid("the answer names no node".into()))
            }
            other => Err(unexpected("NodeStateResponse", &other)),
        }
    }

    /// Stores `group`'s next offsets for partitions of `topic` (durably, through the
    /// metadata group), from outside the group: refused while the group has members (they
    /// commit through [`crate::client::GroupConsumer`]). Safe to repeat, so it is retried
    /// whatever the failure.
    ///
    /// # Errors
    /// UNKNOWN_TOPIC, UNKNOWN_PARTITION or INVALID_REQUEST from the server, or a routing error.
    pub async fn commit_offsets(
        &self,
        group: &str,
        topic: &str,
        offsets: &[(u32, u64)],
    ) -> Result<(), ClientError> {
        let body = Body::OffsetCommit(OffsetCommitRequest {
            group: group.into(),
            topic: topic.into(),
            offsets: offsets
                .iter()
                .map(|&(partition, offset)| PartitionOffset {
                    partition,
                    offset,
                    committed: true,
                })
                .collect(),
            ..Default::default()
        });
        match self
            .cluster
            .request(Route::MetadataLeader, body, Retry::All)
            .await?
        {
            Body::OffsetCommitResponse(_) => Ok(()),
            other => Err(unexpected("OffsetCommitResponse", &other)),
        }
    }

    /// `group`'s stored next offsets for `partitions` of `topic` (all when empty); entries
    /// with `committed == false` were never committed.
    ///
    /// # Errors
    /// UNKNOWN_TOPIC from the server, or a routing error.
    pub async fn fetch_offsets(
        &self,
        group: &str,
        topic: &str,
        partitions: &[u32],
    ) -> Result<Vec<PartitionOffset>, ClientError> {
        let body = Body::OffsetFetch(OffsetFetchRequest {
            group: group.into(),
            topic: topic.into(),
            partitions: partitions.to_vec(),
        });
        // The metadata leader has applied every acknowledged commit; another node might lag.
        match self
            .cluster
            .request(Route::MetadataLeader, body, Retry::All)
            .await?
        {
            Body::OffsetFetchResponse(response) => Ok(response.offsets),
            other => Err(unexpected("OffsetFetchResponse", &other)),
        }
    }

    /// Every consumer group, without its partitions.
    ///
    /// # Errors
    /// A routing error.
    pub async fn list_groups(&self) -> Result<Vec<GroupInfo>, ClientError> {
        let body = Body::ListGroups(ListGroupsRequest {});
        match self
            .cluster
            .request(Route::MetadataLeader, body, Retry::All)
            .await?
        {
            Body::ListGroupsResponse(response) => Ok(response.groups),
            other => Err(unexpected("ListGroupsResponse", &other)),
        }
    }

    /// One consumer group: members, owners, committed offsets, and each partition's high
    /// watermark and lag as its leader reports them.
    ///
    /// # Errors
    /// UNKNOWN_GROUP, or a routing error.
    pub async fn describe_group(&self, group: &str) -> Result<GroupInfo, ClientError> {
        let body = Body::DescribeGroup(DescribeGroupRequest {
            group: group.to_owned(),
        });
        let mut info = match self
            .cluster
            .request(Route::MetadataLeader, body, Retry::All)
            .await?
        {
            Body::DescribeGroupResponse(DescribeGroupResponse { group: Some(info) }) => info,
            other => return Err(unexpected("DescribeGroupResponse", &other)),
        };
        // The coordinator knows the high watermarks only of partitions it holds a replica of.
        for partition in &mut info.partitions {
            if let Ok(bounds) =
                partition_bounds(&self.cluster, &partition.topic, partition.partition).await
            {
                partition.high_watermark = bounds.high_watermark;
                let from = if partition.committed {
                    partition.committed_offset
                } else {
                    bounds.log_start_offset
                };
                partition.lag = bounds.high_watermark.saturating_sub(from);
            }
        }
        Ok(info)
    }

    /// Deletes a group's committed offsets; refused while it has members.
    ///
    /// # Errors
    /// UNKNOWN_GROUP, GROUP_NOT_EMPTY, or a routing error.
    pub async fn delete_group(&self, group: &str) -> Result<(), ClientError> {
        let body = Body::DeleteGroup(DeleteGroupRequest {
            group: group.to_owned(),
        });
        match self
            .cluster
            .request(Route::MetadataLeader, body, Retry::All)
            .await?
        {
            Body::DeleteGroupResponse(_) => Ok(()),
            other => Err(unexpected("DeleteGroupResponse", &other)),
        }
    }
}
