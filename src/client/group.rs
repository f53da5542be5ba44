//! The group consumer: a member of a consumer group, sharing the partitions of its topics
//! with the group's other members.
//!
//! [`GroupConsumer::subscribe`] joins the group. A background task heartbeats the
//! coordinator (the metadata leader) every third of the session timeout, whatever the
//! application does between polls, and keeps the latest assignment. [`GroupConsumer::poll`]
//! applies it before it fetches:
//!
//! - a partition the coordinator asks back (`revoking`) stops being fetched, its position
//!   is committed, it is reported to the listener as [`Rebalance::Revoked`], and only then is
//!   it released (in the next heartbeat, sent at once): the member that gets it next starts
//!   exactly where this one stopped;
//! - a partition newly owned starts from the group's committed offset (or from
//!   `ConsumerOptions`' reset policy when it has none) and is reported as
//!   [`Rebalance::Assigned`];
//! - when the member was expelled (its session expired: a long pause, a partition), every
//!   partition is reported as [`Rebalance::Lost`] (its commits would be refused now, so
//!   nothing is committed), and the consumer joins again as a new member.
//!
//! Records are delivered at least once: a record returned by `poll` but not committed before
//! its partition moves (a crash, an expulsion) is delivered again to the next owner.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::admin::Admin;
use super::cluster::{unexpected, Cluster, Retry, Route};
use super::connection::ClientError;
use super::consumer::{
    partition_bounds, Consumer, ConsumerOptions, ConsumerRecord, OffsetSpec, PartitionBounds,
};
use crate::groups::TopicPartition;
use crate::metadata::{flatten, group_by_topic};
use crate::proto::envelope::Body;
use crate::proto::{
    ErrorCode, GroupHeartbeatRequest, JoinGroupRequest, LeaveGroupRequest, OffsetCommitRequest,
    PartitionOffset,
};

/// How a group member behaves.
#[derive(Debug, Clone)]
pub struct GroupOptions {
    /// How long the member may go without a heartbeat before it is expelled (0: the
    /// coordinator's default, 10 s).
    pub session_timeout_ms: u32,
    /// How long the member may take to release a partition it is asked for (the time the
    /// application may spend between two polls while a rebalance waits); 0: the
    /// coordinator's default, 60 s.
    pub rebalance_timeout_ms: u32,
    /// The client's name for itself in `group describe`.
    pub client_id: String,
    /// Where a partition without a committed offset starts (Kafka's auto.offset.reset).
    pub reset: OffsetSpec,
    /// How each partition is fetched.
    pub consumer: ConsumerOptions,
}

impl Default for GroupOptions {
    fn default() -> Self {
        GroupOptions {
            session_timeout_ms: 0,
            rebalance_timeout_ms: 0,
            client_id: "raftlog-consumer".into(),
            reset: OffsetSpec::Earliest,
            consumer: ConsumerOptions::default(),
        }
    }
}

/// A change of what this member owns, as [`GroupConsumer::poll`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rebalance {
    /// The member owns these partitions from `generation` on.
    Assigned {
        /// The group's generation when they were taken.
        generation: u64,
        /// The partitions.
        partitions: Vec<TopicPartition>,
    },
    /// The member gave these back after committing their positions.
    Revoked {
        /// The generation that asked for them.
        generation: u64,
        /// The partitions.
        partitions: Vec<TopicPartition>,
    },
    /// The member was expelled and lost these without committing; it joined again.
    Lost {
        /// The last generation the member knew.
        generation: u64,
        /// The partitions.
        partitions: Vec<TopicPartition>,
    },
}

/// What [`GroupConsumer::on_rebalance`] installs.
type RebalanceListener = Box<dyn FnMut(&Rebalance) + Send>;

/// What the heartbeat task last heard.
#[derive(Debug, Clone, Default)]
struct Assignment {
    generation: u64,
    owned: BTreeSet<TopicPartition>,
    revoking: BTreeSet<TopicPartition>,
    /// The coordinator no longer knows this member.
    expelled: bool,
}

/// The member's identity, shared with its heartbeat task.
#[derive(Debug)]
struct Membership {
    member_id: String,
    /// Partitions released since the last heartbeat, for the next one.
    released: Vec<TopicPartition>,
}

/// A consumer-group member.
pub struct GroupConsumer {
    cluster: Cluster,
    group: String,
    topics: Vec<String>,
    options: GroupOptions,
    membership: Arc<Mutex<Membership>>,
    assignment: watch::Receiver<Assignment>,
    /// The heartbeat task's sender, for a rejoin to replace what it published.
    publish: Arc<watch::Sender<Assignment>>,
    /// Wakes the heartbeat task at once (a release to send).
    beat_now: Arc<Notify>,
    heartbeats: JoinHandle<()>,
    /// The generation this member acted on last.
    generation: u64,
    /// One consumer per topic, holding the partitions this member consumes now.
    consumers: BTreeMap<String, Consumer>,
    /// Partitions asked back that this member released already (while the coordinator
    /// still lists them as revoking), so each is released once.
    released: BTreeSet<TopicPartition>,
    /// Changes not yet returned by [`Self::rebalances`].
    events: Vec<Rebalance>,
    /// Called with every change, from `poll`.
    listener: Option<RebalanceListener>,
}

impl std::fmt::Debug for GroupConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupConsumer")
            .field("group", &self.group)
            .field("member_id", &self.member_id())
            .field("generation", &self.generation)
            .field("owned", &self.owned())
            .finish()
    }
}

impl GroupConsumer {
    /// Joins `group` to consume `topics` with its other members.
    ///
    /// # Errors
    /// UNKNOWN_TOPIC, INVALID_REQUEST (a bad group name or session timeout), or a routing
    /// error.
    pub async fn subscribe(
        cluster: Cluster,
        group: &str,
        topics: &[&str],
        options: GroupOptions,
    ) -> Result<GroupConsumer, ClientError> {
        let topics: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
        let mut consumers = BTreeMap::new();
        for topic in &topics {
            let mut consumer =
                Consumer::new(cluster.clone(), topic, options.consumer.clone()).await?;
            consumer.assign(&[]).await?;
            consumers.insert(topic.clone(), consumer);
        }
        let (member_id, interval, first) = join(&cluster, group, &topics, &options).await?;
        let membership = Arc::new(Mutex::new(Membership {
            member_id,
            released: Vec::new(),
        }));
        let (publish, assignment) = watch::channel(first);
        let publish = Arc::new(publish);
        let beat_now = Arc::new(Notify::new());
        let heartbeats = tokio::spawn(heartbeat_loop(
            cluster.clone(),
            group.to_owned(),
            membership.clone(),
            publish.clone(),
            beat_now.clone(),
            interval,
        ));
        Ok(GroupConsumer {
            cluster,
            group: group.to_owned(),
            topics,
            options,
            membership,
            assignment,
            publish,
            beat_now,
            heartbeats,
            generation: 0,
            consumers,
            released: BTreeSet::new(),
            events: Vec::new(),
            listener: None,
        })
    }

    /// The member id the coordinator gave this member (it changes when it joins again).
    pub fn member_id(&self) -> String {
        lock(&self.membership).member_id.clone()
    }

    /// The generation this member last acted on.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The partitions this member consumes now.
    pub fn owned(&self) -> Vec<TopicPartition> {
        self.consumers
            .iter()
            .flat_map(|(topic, consumer)| {
                consumer
                    .assignment()
                    .into_iter()
                    .map(move |p| (topic.clone(), p))
            })
            .collect()
    }

    /// The offset of the next record `poll` returns for `partition`, once known.
    pub fn position(&self, partition: &TopicPartition) -> Option<u64> {
        self.consumers.get(&partition.0)?.position(partition.1)
    }

    /// Moves an owned partition's position (what the next commit stores), for records
    /// `poll` returned that the application did not process.
    ///
    /// # Errors
    /// [`ClientError::Invalid`] for a partition this member does not consume.
    pub fn seek(&mut self, partition: &TopicPartition, offset: u64) -> Result<(), ClientError> {
        match self.consumers.get_mut(&partition.0) {
            Some(consumer) => consumer.seek(partition.1, OffsetSpec::At(offset)),
            None => Err(ClientError::Invalid(format!(
                "{}/{} is not consumed by this member",
                partition.0, partition.1
            ))),
        }
    }

    /// Asks a partition's leader for its log start and high watermark.
    ///
    /// # Errors
    /// A routing error, or UNKNOWN_PARTITION.
    pub async fn bounds(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<PartitionBounds, ClientError> {
        partition_bounds(&self.cluster, topic, partition).await
    }

    /// Calls `listener` with every change of what this member owns, from within `poll`
    /// (Kafka's rebalance listener): [`Rebalance::Revoked`] once the partitions' positions
    /// are committed and before they are released, so work the application keeps for them
    /// can be finished first; [`Rebalance::Assigned`] before their records are fetched.
    pub fn on_rebalance(&mut self, listener: impl FnMut(&Rebalance) + Send + 'static) {
        self.listener = Some(Box::new(listener));
    }

    fn record(&mut self, event: Rebalance) {
        if let Some(listener) = self.listener.as_mut() {
            listener(&event);
        }
        self.events.push(event);
    }

    /// The ownership changes since the last call, oldest first.
    pub fn rebalances(&mut self) -> Vec<Rebalance> {
        std::mem::take(&mut self.events)
    }

    /// Applies the latest assignment (see the module doc), then waits up to `timeout` for
    /// records of the partitions this member owns.
    ///
    /// # Errors
    /// A commit refused for another reason than an expulsion, a fetch error, or a routing
    /// error of a rejoin.
    pub async fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>, ClientError> {
        self.apply_assignment().await?;
        if self.owned().is_empty() {
            // Nothing to fetch: wait for an assignment instead.
            let _ = tokio::time::timeout(timeout, self.assignment.changed()).await;
            return Ok(Vec::new());
        }
        let share = timeout / self.consumers.len().max(1) as u32;
        let mut records = Vec::new();
        for consumer in self.consumers.values_mut() {
            if consumer.assignment().is_empty() {
                continue;
            }
            records.extend(consumer.poll(share).await?);
        }
        Ok(records)
    }

    /// Commits the position of every partition this member consumes.
    ///
    /// # Errors
    /// UNKNOWN_MEMBER once expelled, ILLEGAL_GENERATION for a partition no longer owned, or a
    /// routing error.
    pub async fn commit(&self) -> Result<(), ClientError> {
        let owned = self.owned();
        self.commit_partitions(&owned).await
    }

    /// Commits what it consumed and leaves the group: its partitions go to the others at
    /// once.
    ///
    /// # Errors
    /// The commit's or the leave's error.
    pub async fn close(mut self) -> Result<(), ClientError> {
        let committed = self.commit().await;
        self.heartbeats.abort();
        let member_id = self.member_id();
        let body = Body::LeaveGroup(LeaveGroupRequest {
            group: self.group.clone(),
            member_id,
        });
        let left = match self
            .cluster
            .request(Route::MetadataLeader, body, Retry::All)
            .await
        {
            Ok(Body::LeaveGroupResponse(_)) => Ok(()),
            Ok(other) => Err(unexpected("LeaveGroupResponse", &other)),
            Err(error) if is_expelled(&error) => Ok(()),
            Err(error) => Err(error),
        };
        self.consumers.clear();
        committed.and(left)
    }

    async fn commit_partitions(&self, partitions: &[TopicPartition]) -> Result<(), ClientError> {
        let member_id = self.member_id();
        for (topic, consumer) in &self.consumers {
            let offsets: Vec<PartitionOffset> = partitions
                .iter()
                .filter(|(t, _)| t == topic)
                .filter_map(|(_, p)| {
                    Some(PartitionOffset {
                        partition: *p,
                        offset: consumer.position(*p)?,
                        committed: true,
                    })
                })
                .collect();
            if offsets.is_empty() {
                continue;
            }
            let body = Body::OffsetCommit(OffsetCommitRequest {
                group: self.group.clone(),
                topic: topic.clone(),
                offsets,
                member_id: member_id.clone(),
                generation: self.generation,
            });
            match self
                .cluster
                .request(Route::MetadataLeader, body, Retry::All)
                .await?
            {
                Body::OffsetCommitResponse(_) => {}
                other => return Err(unexpected("OffsetCommitResponse", &other)),
            }
        }
        Ok(())
    }

    /// Brings what this member consumes in line with the heartbeat task's latest answer.
    async fn apply_assignment(&mut self) -> Result<(), ClientError> {
        let latest = self.assignment.borrow_and_update().clone();
        if latest.expelled {
            return self.rejoin().await;
        }
        let owned_now: BTreeSet<TopicPartition> = self.owned().into_iter().collect();
        // Gone without being asked back (its topic was deleted): nothing to commit.
        let gone: Vec<TopicPartition> = owned_now
            .iter()
            .filter(|p| !latest.owned.contains(*p))
            .cloned()
            .collect();
        if !gone.is_empty() {
            self.drop_partitions(&gone).await?;
            self.record(Rebalance::Lost {
                generation: latest.generation,
                partitions: gone,
            });
        }
        // Asked back: commit, stop, then release (the order is the guarantee).
        let revoke: Vec<TopicPartition> = owned_now
            .iter()
            .filter(|p| latest.revoking.contains(*p))
            .cloned()
            .collect();
        if !revoke.is_empty() {
            match self.commit_partitions(&revoke).await {
                Ok(()) => {}
                Err(error) if is_expelled(&error) => return self.rejoin().await,
                Err(error) => return Err(error),
            }
            self.drop_partitions(&revoke).await?;
            self.record(Rebalance::Revoked {
                generation: latest.generation,
                partitions: revoke.clone(),
            });
        }
        // Release everything asked back once: also what this member never started on (it
        // joined while another member was joining, and was asked back at once).
        self.released
            .retain(|partition| latest.revoking.contains(partition));
        let release: Vec<TopicPartition> = latest
            .revoking
            .iter()
            .filter(|partition| !self.released.contains(*partition))
            .cloned()
            .collect();
        if !release.is_empty() {
            self.released.extend(release.iter().cloned());
            lock(&self.membership).released.extend(release);
            self.beat_now.notify_one();
        }
        // Assigned: start from the committed offsets.
        let owned_now: BTreeSet<TopicPartition> = self.owned().into_iter().collect();
        let assign: Vec<TopicPartition> = latest
            .owned
            .iter()
            .filter(|p| !latest.revoking.contains(*p) && !owned_now.contains(*p))
            .cloned()
            .collect();
        if !assign.is_empty() {
            self.add_partitions(&assign).await?;
            self.record(Rebalance::Assigned {
                generation: latest.generation,
                partitions: assign,
            });
        }
        self.generation = latest.generation;
        Ok(())
    }

    async fn drop_partitions(&mut self, partitions: &[TopicPartition]) -> Result<(), ClientError> {
        for (topic, consumer) in &mut self.consumers {
            let keep: Vec<u32> = consumer
                .assignment()
                .into_iter()
                .filter(|p| !partitions.contains(&(topic.clone(), *p)))
                .collect();
            if keep.len() != consumer.assignment().len() {
                reassign(consumer, &keep).await?;
            }
        }
        Ok(())
    }

    async fn add_partitions(&mut self, partitions: &[TopicPartition]) -> Result<(), ClientError> {
        let admin = Admin::new(self.cluster.clone());
        for (topic, consumer) in &mut self.consumers {
            let new: Vec<u32> = partitions
                .iter()
                .filter(|(t, _)| t == topic)
                .map(|(_, p)| *p)
                .collect();
            if new.is_empty() {
                continue;
            }
            let mut all = consumer.assignment();
            all.extend(&new);
            reassign(consumer, &all).await?;
            let offsets = admin.fetch_offsets(&self.group, topic, &new).await?;
            for partition in &new {
                let committed = offsets
                    .iter()
                    .find(|o| o.partition == *partition && o.committed)
                    .map(|o| o.offset);
                let spec = committed.map_or(self.options.reset, OffsetSpec::At);
                consumer.seek(*partition, spec)?;
            }
        }
        Ok(())
    }

    /// After an expulsion: drops every partition uncommitted and joins as a new member.
    async fn rejoin(&mut self) -> Result<(), ClientError> {
        let lost = self.owned();
        for consumer in self.consumers.values_mut() {
            reassign(consumer, &[]).await?;
        }
        if !lost.is_empty() {
            self.record(Rebalance::Lost {
                generation: self.generation,
                partitions: lost,
            });
        }
        let topics: Vec<String> = self.topics.clone();
        let (member_id, _, first) =
            join(&self.cluster, &self.group, &topics, &self.options).await?;
        {
            let mut membership = lock(&self.membership);
            membership.member_id = member_id;
            membership.released.clear();
        }
        self.released.clear();
        // The join's answer replaces the expulsion the heartbeat task published (or the next
        // poll would join again), and the next poll applies it as any other assignment.
        self.generation = first.generation;
        self.publish.send_replace(first);
        self.beat_now.notify_one();
        Ok(())
    }
}

impl Drop for GroupConsumer {
    fn drop(&mut self) {
        self.heartbeats.abort();
    }
}

/// Keeps the consumer's positions for the partitions it keeps while changing its set.
async fn reassign(consumer: &mut Consumer, partitions: &[u32]) -> Result<(), ClientError> {
    let positions: Vec<(u32, Option<u64>)> = partitions
        .iter()
        .map(|&p| (p, consumer.position(p)))
        .collect();
    consumer.assign(partitions).await?;
    for (partition, position) in positions {
        if let Some(offset) = position {
            consumer.seek(partition, OffsetSpec::At(offset))?;
        }
    }
    Ok(())
}

/// Joins `group`; returns the member id, the heartbeat interval and the first assignment.
async fn join(
    cluster: &Cluster,
    group: &str,
    topics: &[String],
    options: &GroupOptions,
) -> Result<(String, Duration, Assignment), ClientError> {
    let body = Body::JoinGroup(JoinGroupRequest {
        group: group.to_owned(),
        topics: topics.to_vec(),
        session_timeout_ms: options.session_timeout_ms,
        rebalance_timeout_ms: options.rebalance_timeout_ms,
        client_id: options.client_id.clone(),
    });
    // Not retried after an unknown outcome: a join that took effect unseen leaves a member
    // that expires after one session, while a second join would hold partitions twice over.
    match cluster
        .request(Route::MetadataLeader, body, Retry::Determinate)
        .await?
    {
        Body::JoinGroupResponse(response) => {
            let assignment = Assignment {
                generation: response.generation,
                owned: flatten(&response.owned).into_iter().collect(),
                revoking: flatten(&response.revoking).into_iter().collect(),
                expelled: false,
            };
            let interval =
                Duration::from_millis(u64::from(response.heartbeat_interval_ms).max(100));
            Ok((response.member_id, interval, assignment))
        }
        other => Err(unexpected("JoinGroupResponse", &other)),
    }
}

/// Heartbeats every `interval` (or at once when woken), publishing each answer; an
/// expulsion is published too, and the member's next poll joins again.
async fn heartbeat_loop(
    cluster: Cluster,
    group: String,
    membership: Arc<Mutex<Membership>>,
    publish: Arc<watch::Sender<Assignment>>,
    beat_now: Arc<Notify>,
    interval: Duration,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = beat_now.notified() => {}
        }
        let (member_id, released) = {
            let mut membership = lock(&membership);
            (
                membership.member_id.clone(),
                std::mem::take(&mut membership.released),
            )
        };
        let generation = publish.borrow().generation;
        let body = Body::GroupHeartbeat(GroupHeartbeatRequest {
            group: group.clone(),
            member_id: member_id.clone(),
            generation,
            released: group_by_topic(&released),
        });
        // One interval per attempt, so a coordinator failover costs at most a beat or two.
        let deadline = tokio::time::Instant::now() + interval;
        match cluster
            .request_until(Route::MetadataLeader, body, Retry::All, deadline)
            .await
        {
            Ok(Body::GroupHeartbeatResponse(response)) => {
                if lock(&membership).member_id != member_id {
                    continue;
                }
                publish.send_replace(Assignment {
                    generation: response.generation,
                    owned: flatten(&response.owned).into_iter().collect(),
                    revoking: flatten(&response.revoking).into_iter().collect(),
                    expelled: false,
                });
            }
            Err(error) if is_expelled(&error) => {
                if lock(&membership).member_id == member_id {
                    publish.send_modify(|assignment| assignment.expelled = true);
                }
            }
            // Unanswered: the release goes with the next beat.
            Ok(_) | Err(_) => {
                let mut membership = lock(&membership);
                if membership.member_id == member_id {
                    let mut again = released;
                    again.append(&mut membership.released);
                    membership.released = again;
                }
            }
        }
    }
}

/// Whether `error` says the member is no longer in its group.
fn is_expelled(error: &ClientError) -> bool {
    matches!(error, ClientError::Server(message) if message.code() == ErrorCode::UnknownMember)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
