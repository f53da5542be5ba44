//! The cluster client: bootstrap, cached metadata, one connection per node, and request routing
//! with bounded retries.
//!
//! A [`Cluster`] is what producers, consumers and the admin API share. It finds the cluster
//! through a list of bootstrap addresses, keeps the last metadata it saw and one [`Connection`]
//! per node address, and sends each request where the server wants it ([`Route`]): to a
//! partition's leader, to the metadata leader, or to any node. When the answer says the target
//! was wrong (NOT_LEADER, leader unknown) or the node is unreachable, it refreshes the metadata
//! and tries again with exponential backoff, never past the request's deadline.
//!
//! It does not own batching, offsets or consumer positions: those belong to the producer and
//! the consumer built on it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::time::Instant;

use super::connection::{ClientError, ConnectOptions, Connection};
use crate::backoff::Backoff;
use crate::proto::envelope::Body;
use crate::proto::{
    ErrorCode, MetadataRequest, MetadataResponse, NodeInfo, PartitionInfo, TopicInfo,
};
use crate::wire::error::body_name;

/// The address client commands use when none is given: node 1 of `raftlog dev`.
pub const BOOTSTRAP_DEFAULT: &str = "127.0.0.1:9400";

/// How many times an UNKNOWN_TOPIC answer is retried before it is believed. A topic created a
/// moment ago may not yet be applied on the node that answered; a few short retries cover that
/// without making a real typo wait for the whole request timeout.
const UNKNOWN_TOPIC_ATTEMPTS_MAX: u32 = 4;

/// How long a metadata refresh waits for more nodes' answers after the first one arrived.
pub const MERGE_WAIT: Duration = Duration::from_millis(200);

/// How a client reaches and talks to a cluster.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Client addresses ("host:port") tried, in order, to learn the cluster's metadata.
    pub bootstrap: Vec<String>,
    /// Cluster id, client id, connect timeout and per-connection limits.
    pub connect: ConnectOptions,
    /// Longest time one routed request may take, its retries included.
    pub request_timeout: Duration,
    /// Longest wait for one node's answer to one attempt; after it the attempt counts as
    /// lost (an unknown outcome), so a node that hangs cannot hold a request until its
    /// deadline.
    pub attempt_timeout: Duration,
    /// Longest time [`Cluster::connect`] keeps trying the bootstrap addresses.
    pub bootstrap_timeout: Duration,
    /// Shortest wait between retries; the ceiling doubles after each failed attempt and each
    /// wait is drawn between half the ceiling and the ceiling (jitter).
    pub retry_backoff_min: Duration,
    /// Longest wait between retries.
    pub retry_backoff_max: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            bootstrap: vec![BOOTSTRAP_DEFAULT.to_owned()],
            connect: ConnectOptions::default(),
            request_timeout: Duration::from_secs(30),
            attempt_timeout: Duration::from_secs(15),
            bootstrap_timeout: Duration::from_secs(5),
            retry_backoff_min: Duration::from_millis(20),
            retry_backoff_max: Duration::from_millis(1000),
        }
    }
}

/// Where a request must go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// Any node answers (Metadata, ListTopics, OffsetFetch).
    Any,
    /// The leader of the metadata group (CreateTopic, DeleteTopic, OffsetCommit,
    /// InitProducerId).
    MetadataLeader,
    /// The leader of one partition (Produce, and Fetch by default).
    Partition {
        /// Topic name.
        topic: &'a str,
        /// Partition number.
        partition: u32,
    },
}

/// Which failures a request may be retried after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Only failures that prove the request had no effect (NOT_LEADER, connect errors,
    /// RESOURCE_EXHAUSTED): for requests that must not take effect twice, like a produce
    /// without idempotence.
    Determinate,
    /// Also failures whose outcome is unknown (connection lost after sending, TIMEOUT): for
    /// reads and for writes that are safe to repeat.
    All,
}

/// What to do after a failed attempt.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Give the error to the caller.
    Fail,
    /// Try again after refreshing the metadata; `Some(address)` is a leader hint to try first.
    Retry(Option<String>),
}

/// Decides whether an error is worth another attempt under `retry`.
fn verdict(error: &ClientError, retry: Retry) -> Verdict {
    match error {
        ClientError::Connect { .. } => Verdict::Retry(None),
        ClientError::Closed | ClientError::Timeout { .. } if retry == Retry::All => {
            Verdict::Retry(None)
        }
        ClientError::Server(message) => match message.code() {
            ErrorCode::NotLeader => {
                let hint =
                    (!message.leader_address.is_empty()).then(|| message.leader_address.clone());
                Verdict::Retry(hint)
            }
            ErrorCode::ResourceExhausted => Verdict::Retry(None),
            ErrorCode::Timeout | ErrorCode::NotEnoughReplicas | ErrorCode::ShuttingDown
                if retry == Retry::All =>
            {
                Verdict::Retry(None)
            }
            _ => Verdict::Fail,
        },
        _ => Verdict::Fail,
    }
}

/// Shared state behind a [`Cluster`] handle.
#[derive(Debug)]
struct Inner {
    options: ClientOptions,
    /// Last metadata seen; `None` until the first successful refresh.
    metadata: Mutex<Option<Arc<MetadataResponse>>>,
    /// Open connections by node address.
    connections: Mutex<HashMap<String, Connection>>,
    /// Lets one refresh run at a time; the others wait and reuse its result.
    refresh: tokio::sync::Mutex<()>,
    /// Counts completed refreshes, so a waiter can tell whether one happened meanwhile.
    refreshes: AtomicU64,
    /// Where the next [`Route::Any`] request starts looking, spreading them over nodes.
    any_cursor: AtomicUsize,
}

/// A handle to a raftlog cluster: cached metadata, a connection per node, routed requests.
/// Cheap to clone; clones share everything.
#[derive(Debug, Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

impl Cluster {
    /// Connects to the cluster: fetches its metadata from the first bootstrap address that
    /// answers, trying them in turn with backoff for up to `options.bootstrap_timeout`.
    ///
    /// # Errors
    /// [`ClientError::Invalid`] for an empty bootstrap list; [`ClientError::Timeout`] when no
    /// bootstrap address answered in time (its `last` names the last failure).
    pub async fn connect(options: ClientOptions) -> Result<Cluster, ClientError> {
        if options.bootstrap.is_empty() {
            return Err(ClientError::Invalid("no bootstrap address given".into()));
        }
        let cluster = Cluster {
            inner: Arc::new(Inner {
                options,
                metadata: Mutex::new(None),
                connections: Mutex::new(HashMap::new()),
                refresh: tokio::sync::Mutex::new(()),
                refreshes: AtomicU64::new(0),
                any_cursor: AtomicUsize::new(0),
            }),
        };
        let started = Instant::now();
        let deadline = started + cluster.inner.options.bootstrap_timeout;
        let mut backoff = cluster.backoff();
        loop {
            match cluster.refresh_metadata().await {
                Ok(_) => return Ok(cluster),
                Err(error) => {
                    let wait = backoff.next_delay();
                    if Instant::now() + wait >= deadline {
                        let list = cluster.inner.options.bootstrap.join(",");
                        return Err(ClientError::Timeout {
                            what: format!("reaching the cluster at {list}"),
                            elapsed_ms: started.elapsed().as_millis() as u64,
                            last: error.to_string(),
                        });
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// The options this cluster handle was made with.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// The metadata seen last (all topics), without asking the cluster.
    pub fn cached_metadata(&self) -> Option<Arc<MetadataResponse>> {
        self.inner.metadata.lock().expect("metadata lock").clone()
    }

    /// Asks every known node for its metadata, merges the answers, and caches the result.
    ///
    /// Each node describes live partition state (leader, term, high watermark) only for the
    /// partitions it holds a replica of, and reports leader 0 for the others; merging keeps,
    /// per partition, the answer with a known leader and the highest term. Answers that come
    /// more than [`MERGE_WAIT`] after the first are not waited for, so a dead node does not
    /// slow a refresh down. Concurrent callers share one refresh.
    ///
    /// # Errors
    /// The last node's error when no known node (nor bootstrap address) answered.
    pub async fn refresh_metadata(&self) -> Result<Arc<MetadataResponse>, ClientError> {
        let seen = self.inner.refreshes.load(Ordering::Acquire);
        let _guard = self.inner.refresh.lock().await;
        if self.inner.refreshes.load(Ordering::Acquire) != seen {
            if let Some(metadata) = self.cached_metadata() {
                return Ok(metadata);
            }
        }
        let mut pending: FuturesUnordered<_> = self
            .candidate_addresses()
            .into_iter()
            .map(|address| async move {
                let answer = self.metadata_from(&address).await;
                (address, answer)
            })
            .collect();
        let mut answers = Vec::new();
        let mut last_error = ClientError::Invalid("no node address known".into());
        let mut merge_deadline: Option<Instant> = None;
        loop {
            let next = match merge_deadline {
                Some(deadline) => match tokio::time::timeout_at(deadline, pending.next()).await {
                    Ok(next) => next,
                    Err(_) => break,
                },
                None => pending.next().await,
            };
            let Some((address, answer)) = next else { break };
            match answer {
                Ok(metadata) => {
                    answers.push(metadata);
                    merge_deadline.get_or_insert_with(|| Instant::now() + MERGE_WAIT);
                }
                Err(error) => {
                    tracing::debug!(%address, %error, "metadata refresh failed");
                    last_error = error;
                }
            }
        }
        let Some(metadata) = merge_metadata(answers) else {
            return Err(last_error);
        };
        let metadata = Arc::new(metadata);
        *self.inner.metadata.lock().expect("metadata lock") = Some(metadata.clone());
        self.inner.refreshes.fetch_add(1, Ordering::AcqRel);
        Ok(metadata)
    }

    /// Asks every node named in the metadata (refreshed first if none is cached) for its own
    /// metadata, all at once, and returns each node's answer or error, sorted by node id.
    /// Nothing is merged or cached: this is for reports that must say which nodes answer.
    ///
    /// # Errors
    /// The refresh's error when no metadata was cached and no node answered.
    pub async fn metadata_of_each_node(
        &self,
    ) -> Result<Vec<(NodeInfo, Result<MetadataResponse, ClientError>)>, ClientError> {
        let metadata = match self.cached_metadata() {
            Some(metadata) => metadata,
            None => self.refresh_metadata().await?,
        };
        let mut nodes = metadata.nodes.clone();
        nodes.sort_by_key(|node| node.node_id);
        let answers = nodes.into_iter().map(|node| async move {
            let answer = if node.client_address.is_empty() {
                Err(ClientError::Invalid(format!(
                    "node {} has not advertised a client address",
                    node.node_id
                )))
            } else {
                self.metadata_from(&node.client_address).await
            };
            (node, answer)
        });
        Ok(futures::future::join_all(answers).await)
    }

    /// Records a leader learned from a NOT_LEADER hint, so later requests go there directly.
    fn note_leader(&self, route: Route<'_>, leader_id: u64) {
        if leader_id == 0 {
            return;
        }
        let mut cached = self.inner.metadata.lock().expect("metadata lock");
        let Some(metadata) = cached.as_mut() else {
            return;
        };
        let metadata = Arc::make_mut(metadata);
        match route {
            Route::Any => {}
            Route::MetadataLeader => metadata.metadata_leader_id = leader_id,
            Route::Partition { topic, partition } => {
                let info = metadata
                    .topics
                    .iter_mut()
                    .filter(|t| t.name == topic)
                    .flat_map(|t| t.partitions.iter_mut())
                    .find(|p| p.partition == partition);
                if let Some(info) = info {
                    info.leader_id = leader_id;
                }
            }
        }
    }

    /// Whether the cached metadata (merged from every node that answered) lists the
    /// partition `route` names, as `wanted` wants it.
    fn partition_listed(&self, route: Route<'_>, wanted: impl Fn(&PartitionInfo) -> bool) -> bool {
        let (Some(metadata), Route::Partition { topic, partition }) =
            (self.cached_metadata(), route)
        else {
            return false;
        };
        metadata
            .topics
            .iter()
            .filter(|t| t.name == topic)
            .flat_map(|t| t.partitions.iter())
            .any(|p| p.partition == partition && wanted(p))
    }

    /// Whether the cached metadata knows the leader `route` needs.
    fn leader_known(&self, route: Route<'_>) -> bool {
        let Some(metadata) = self.cached_metadata() else {
            return false;
        };
        match route {
            Route::Any => true,
            Route::MetadataLeader => metadata.metadata_leader_id != 0,
            Route::Partition { .. } => self.partition_listed(route, |p| p.leader_id != 0),
        }
    }

    /// One Metadata request to one address, bounded by the connect timeout plus a margin.
    async fn metadata_from(&self, address: &str) -> Result<MetadataResponse, ClientError> {
        let connection = self.connection(address).await?;
        let body = Body::Metadata(MetadataRequest { topics: Vec::new() });
        let bound = self.inner.options.connect.connect_timeout * 2;
        let answer = tokio::time::timeout(bound, connection.request(body)).await;
        match answer {
            Ok(Ok(Body::MetadataResponse(metadata))) => Ok(metadata),
            Ok(Ok(other)) => Err(unexpected("MetadataResponse", &other)),
            Ok(Err(error)) => {
                self.forget_connection(address);
                Err(error)
            }
            Err(_) => {
                self.forget_connection(address);
                Err(ClientError::Connect {
                    address: address.to_owned(),
                    reason: format!("no metadata answer within {bound:?}"),
                })
            }
        }
    }

    /// Node addresses from the metadata, then the bootstrap addresses, without repeats,
    /// starting at a rotating position so that retries spread over the nodes.
    fn candidate_addresses(&self) -> Vec<String> {
        let mut addresses: Vec<String> = Vec::new();
        if let Some(metadata) = self.cached_metadata() {
            for node in &metadata.nodes {
                if !node.client_address.is_empty() && !addresses.contains(&node.client_address) {
                    addresses.push(node.client_address.clone());
                }
            }
        }
        let known = addresses.len();
        if known > 1 {
            let start = self.inner.any_cursor.fetch_add(1, Ordering::Relaxed) % known;
            addresses.rotate_left(start);
        }
        for address in &self.inner.options.bootstrap {
            if !addresses.contains(address) {
                addresses.push(address.clone());
            }
        }
        addresses
    }

    /// The open connection to `address`, or a new one.
    ///
    /// # Errors
    /// [`ClientError::Connect`] when the node cannot be reached.
    pub async fn connection(&self, address: &str) -> Result<Connection, ClientError> {
        {
            let mut connections = self.inner.connections.lock().expect("connections lock");
            match connections.get(address) {
                Some(connection) if !connection.is_closed() => return Ok(connection.clone()),
                Some(_) => {
                    connections.remove(address);
                }
                None => {}
            }
        }
        let connection = Connection::connect(address, &self.inner.options.connect).await?;
        let mut connections = self.inner.connections.lock().expect("connections lock");
        // Another task may have connected meanwhile; keep one connection per address.
        let kept = connections
            .entry(address.to_owned())
            .or_insert_with(|| connection.clone());
        if kept.is_closed() {
            *kept = connection;
        }
        Ok(kept.clone())
    }

    fn forget_connection(&self, address: &str) {
        let mut connections = self.inner.connections.lock().expect("connections lock");
        if connections.get(address).is_some_and(Connection::is_closed) {
            connections.remove(address);
        }
    }

    /// A fresh retry backoff. Its seed differs per call and per process, so clients that
    /// lost the same leader at the same moment do not retry in step.
    fn backoff(&self) -> Backoff {
        let options = &self.inner.options;
        let min = options.retry_backoff_min.max(Duration::from_millis(1));
        let seed = std::hash::BuildHasher::hash_one(
            &std::collections::hash_map::RandomState::new(),
            self.inner.refreshes.load(Ordering::Relaxed),
        );
        Backoff::new(min, options.retry_backoff_max.max(min), seed)
    }

    /// A topic's metadata from the cache, refreshed once if the topic is not in it.
    ///
    /// # Errors
    /// [`ClientError::UnknownTopic`] when fresh metadata does not know the topic either, or
    /// the refresh's error.
    pub async fn topic(&self, name: &str) -> Result<TopicInfo, ClientError> {
        if let Some(topic) = self.cached_topic(name) {
            return Ok(topic);
        }
        let metadata = self.refresh_metadata().await?;
        metadata
            .topics
            .iter()
            .find(|topic| topic.name == name)
            .cloned()
            .ok_or_else(|| ClientError::UnknownTopic(name.to_owned()))
    }

    fn cached_topic(&self, name: &str) -> Option<TopicInfo> {
        let metadata = self.cached_metadata()?;
        metadata.topics.iter().find(|t| t.name == name).cloned()
    }

    /// Sends `body` along `route`, retrying per `retry` until the options' request timeout.
    ///
    /// # Errors
    /// The server's error when it is not worth a retry (for example UNKNOWN_TOPIC);
    /// [`ClientError::Timeout`] when retries ran out of time.
    pub async fn request(
        &self,
        route: Route<'_>,
        body: Body,
        retry: Retry,
    ) -> Result<Body, ClientError> {
        let deadline = Instant::now() + self.inner.options.request_timeout;
        self.request_until(route, body, retry, deadline).await
    }

    /// Like [`Self::request`], with an explicit deadline for all attempts.
    ///
    /// # Errors
    /// As [`Self::request`].
    pub async fn request_until(
        &self,
        route: Route<'_>,
        body: Body,
        retry: Retry,
        deadline: Instant,
    ) -> Result<Body, ClientError> {
        let attempt_timeout = self.inner.options.attempt_timeout;
        self.request_bounded(route, body, retry, deadline, attempt_timeout)
            .await
    }

    /// Like [`Self::request_until`], with an explicit bound on each attempt (for requests the
    /// server itself may hold for long, like a produce waiting for its commit).
    ///
    /// # Errors
    /// As [`Self::request`].
    pub async fn request_bounded(
        &self,
        route: Route<'_>,
        body: Body,
        retry: Retry,
        deadline: Instant,
        attempt_timeout: Duration,
    ) -> Result<Body, ClientError> {
        let started = Instant::now();
        let mut backoff = self.backoff();
        let mut hint: Option<String> = None;
        let mut unknown_topic_attempts = 0;
        let mut followed_hint = false;
        if !self.leader_known(route) {
            // Right after a topic is created, or from a node without a replica, the cache may
            // not name the leader; one refresh usually does.
            let _ = self.refresh_metadata().await;
        }
        loop {
            let target = match hint.take() {
                Some(address) => Ok(address),
                None => self.address_for(route).await,
            };
            let error = match target {
                Ok(address) => {
                    let attempt_deadline = deadline.min(Instant::now() + attempt_timeout);
                    match self.attempt(&address, body.clone(), attempt_deadline).await {
                        Ok(answer) => return Ok(answer),
                        Err(error) => error,
                    }
                }
                Err(error) => error,
            };
            let mut verdict = verdict(&error, retry);
            if error.code() == Some(ErrorCode::UnknownTopic) {
                // Only counted while no node lists the partition: a node that has not
                // applied the topic yet (just restarted, or lagging) answers UNKNOWN_TOPIC
                // while the others know it, and that is waited out until the deadline, as
                // Kafka clients retry UNKNOWN_TOPIC_OR_PARTITION.
                if !self.partition_listed(route, |_| true) {
                    unknown_topic_attempts += 1;
                }
                if unknown_topic_attempts < UNKNOWN_TOPIC_ATTEMPTS_MAX {
                    verdict = Verdict::Retry(None);
                }
            }
            let Verdict::Retry(next_hint) = verdict else {
                let lost = matches!(error, ClientError::Closed)
                    || matches!(
                        error.code(),
                        Some(
                            ErrorCode::Timeout
                                | ErrorCode::ShuttingDown
                                | ErrorCode::NotEnoughReplicas
                        )
                    );
                if lost {
                    // The node may be gone: let the next request find the new leader.
                    let _ = self.refresh_metadata().await;
                }
                return Err(error);
            };
            if let Some(hinted) = error.server_error().map(|e| e.leader_id) {
                self.note_leader(route, hinted);
            }
            tracing::debug!(?route, %error, "request failed; retrying");
            let timeout = || ClientError::Timeout {
                what: format!("sending {} to {}", body_name(Some(&body)), describe(route)),
                elapsed_ms: started.elapsed().as_millis() as u64,
                last: error.to_string(),
            };
            // A fresh leader hint is worth trying at once. A hint that came from following a
            // hint is not: two nodes that name each other must not make us spin.
            if next_hint.is_some() && !followed_hint {
                if Instant::now() >= deadline {
                    return Err(timeout());
                }
                hint = next_hint;
                followed_hint = true;
                continue;
            }
            followed_hint = false;
            let wait = backoff.next_delay();
            if Instant::now() + wait >= deadline {
                return Err(timeout());
            }
            tokio::time::sleep(wait).await;
            if let Err(refresh_error) = self.refresh_metadata().await {
                tracing::debug!(%refresh_error, "metadata refresh failed");
            }
        }
    }

    /// One attempt at one address, cut off at `deadline`.
    async fn attempt(
        &self,
        address: &str,
        body: Body,
        deadline: Instant,
    ) -> Result<Body, ClientError> {
        let what = body_name(Some(&body));
        let started = Instant::now();
        let connection = self.connection(address).await?;
        match tokio::time::timeout_at(deadline, connection.request(body)).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(error)) => {
                self.forget_connection(address);
                Err(error)
            }
            Err(_) => Err(ClientError::Timeout {
                what: format!("waiting for {address} to answer {what}"),
                elapsed_ms: started.elapsed().as_millis() as u64,
                last: "no answer; the request may or may not have taken effect".into(),
            }),
        }
    }

    /// The address a request on `route` should go to now, from the cached metadata
    /// (refreshed first if it has none).
    async fn address_for(&self, route: Route<'_>) -> Result<String, ClientError> {
        let metadata = match self.cached_metadata() {
            Some(metadata) => metadata,
            None => self.refresh_metadata().await?,
        };
        let leader = match route {
            Route::Any => {
                let candidates = self.candidate_addresses();
                return candidates
                    .into_iter()
                    .next()
                    .ok_or_else(|| ClientError::Invalid("no node address known".into()));
            }
            Route::MetadataLeader => metadata.metadata_leader_id,
            Route::Partition { topic, partition } => {
                let Some(info) = metadata.topics.iter().find(|t| t.name == topic) else {
                    return Err(ClientError::UnknownTopic(topic.to_owned()));
                };
                let Some(p) = info.partitions.iter().find(|p| p.partition == partition) else {
                    return Err(ClientError::UnknownPartition {
                        topic: topic.to_owned(),
                        partition,
                        partitions: info.partitions.len() as u32,
                    });
                };
                if p.leader_id == 0 && !p.replicas.is_empty() {
                    // A node reports leader 0 for partitions it holds no replica of, and
                    // during an election. Either way a replica knows best: it serves the
                    // request or answers NOT_LEADER with the leader's address.
                    let start = self.inner.any_cursor.fetch_add(1, Ordering::Relaxed);
                    let count = p.replicas.len();
                    let replica = (0..count)
                        .map(|i| p.replicas[(start + i) % count])
                        .find_map(|id| node_address(&metadata, id));
                    if let Some(address) = replica {
                        return Ok(address);
                    }
                }
                p.leader_id
            }
        };
        node_address(&metadata, leader).ok_or_else(|| {
            // Leader 0 (an election is under way) or a node we have no address for: both
            // are worth a metadata refresh and another try.
            ClientError::Server(crate::proto::Error {
                code: ErrorCode::NotLeader as i32,
                message: format!("no known leader for {}", describe(route)),
                ..Default::default()
            })
        })
    }
}

/// Merges the metadata answers of several nodes: topics from all of them, the metadata
/// leader named with the highest metadata term, and per partition the live state of the
/// answer that knows a leader with the highest term, preferring the leader's own answer (see
/// [`Cluster::refresh_metadata`]). `None` for no answers.
pub fn merge_metadata(answers: Vec<MetadataResponse>) -> Option<MetadataResponse> {
    let mut answers = answers.into_iter();
    let mut merged = answers.next()?;
    for answer in answers {
        let rank = |m: &MetadataResponse| (m.metadata_leader_id != 0, m.metadata_term);
        if rank(&answer) > rank(&merged) {
            merged.metadata_leader_id = answer.metadata_leader_id;
            merged.metadata_term = answer.metadata_term;
        }
        for node in answer.nodes {
            if !merged.nodes.iter().any(|n| n.node_id == node.node_id) {
                merged.nodes.push(node);
            }
        }
        for topic in answer.topics {
            match merged.topics.iter_mut().find(|t| t.name == topic.name) {
                Some(known) => merge_partitions(&mut known.partitions, topic.partitions),
                None => merged.topics.push(topic),
            }
        }
    }
    Some(merged)
}

fn merge_partitions(known: &mut [PartitionInfo], other: Vec<PartitionInfo>) {
    for partition in other {
        let Some(mine) = known
            .iter_mut()
            .find(|p| p.partition == partition.partition)
        else {
            continue;
        };
        // Of equally recent answers, the leader's own is best: only it knows the replicas'
        // progress.
        let rank = |p: &PartitionInfo| (p.leader_id != 0, p.term, !p.replica_progress.is_empty());
        if rank(&partition) > rank(mine) {
            let high_watermark = mine.high_watermark.max(partition.high_watermark);
            *mine = partition;
            mine.high_watermark = high_watermark;
        } else {
            mine.high_watermark = mine.high_watermark.max(partition.high_watermark);
        }
    }
}

/// The client address of node `id`, if the metadata has one (never for id 0).
pub fn node_address(metadata: &MetadataResponse, id: u64) -> Option<String> {
    if id == 0 {
        return None;
    }
    metadata
        .nodes
        .iter()
        .find(|node| node.node_id == id && !node.client_address.is_empty())
        .map(|node| node.client_address.clone())
}

fn describe(route: Route<'_>) -> String {
    match route {
        Route::Any => "any node".into(),
        Route::MetadataLeader => "the metadata leader".into(),
        Route::Partition { topic, partition } => {
            format!("the leader of {topic}/{partition}")
        }
    }
}

/// The error for an answer of the wrong type.
pub(crate) fn unexpected(expected: &'static str, got: &Body) -> ClientError {
    ClientError::Invalid(format!(
        "unexpected answer from the server: expected {expected}, got {}",
        body_name(Some(got))
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Error as ErrorMessage;

    fn server(code: ErrorCode, leader_address: &str) -> ClientError {
        ClientError::Server(ErrorMessage {
            code: code as i32,
            leader_address: leader_address.into(),
            ..Default::default()
        })
    }

    #[test]
    fn not_leader_is_retried_toward_its_hint() {
        let error = server(ErrorCode::NotLeader, "10.0.0.2:9400");
        assert_eq!(
            verdict(&error, Retry::Determinate),
            Verdict::Retry(Some("10.0.0.2:9400".into()))
        );
        let error = server(ErrorCode::NotLeader, "");
        assert_eq!(verdict(&error, Retry::Determinate), Verdict::Retry(None));
    }

    #[test]
    fn indeterminate_failures_are_retried_only_when_allowed() {
        for error in [
            ClientError::Closed,
            server(ErrorCode::Timeout, ""),
            server(ErrorCode::ShuttingDown, ""),
        ] {
            assert_eq!(
                verdict(&error, Retry::Determinate),
                Verdict::Fail,
                "{error}"
            );
            assert_eq!(verdict(&error, Retry::All), Verdict::Retry(None), "{error}");
        }
    }

    #[test]
    fn answers_about_the_request_itself_are_final() {
        for code in [
            ErrorCode::UnknownPartition,
            ErrorCode::CorruptBatch,
            ErrorCode::InvalidRequest,
            ErrorCode::OffsetOutOfRange,
            ErrorCode::TopicExists,
        ] {
            assert_eq!(verdict(&server(code, ""), Retry::All), Verdict::Fail);
        }
    }

    #[test]
    fn merged_metadata_keeps_known_leaders_with_the_highest_term() {
        let answer = |leader_id, term, high_watermark| MetadataResponse {
            topics: vec![TopicInfo {
                name: "t".into(),
                partitions: vec![PartitionInfo {
                    partition: 0,
                    leader_id,
                    term,
                    high_watermark,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let merged =
            merge_metadata(vec![answer(0, 0, 0), answer(2, 3, 7), answer(1, 2, 9)]).unwrap();
        let partition = &merged.topics[0].partitions[0];
        assert_eq!(
            (
                partition.leader_id,
                partition.term,
                partition.high_watermark
            ),
            (2, 3, 9)
        );
        assert!(merge_metadata(Vec::new()).is_none());
    }
}
