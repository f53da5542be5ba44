//! A raftlog node: the cluster-metadata group, the partition replicas placed here and the
//! peer transport, started and stopped together.
//!
//! The node owns which replicas run here and how messages reach them, the graceful stop
//! (leadership hand-off, then replicas, then transport), and what operators ask of it
//! ([`ops`]: readiness and collectors). It does not own the Raft logic (the replicas do),
//! the wire protocol (the server and transport do), the metadata's rules
//! ([`crate::metadata`] does), nor the listeners and the one shutdown signal: the daemon
//! ([`crate::daemon`]) binds the listeners, starts the node, the client server and the ops
//! listener, and stops them in order. The node knows nothing of the client server.
//!
//! ```text
//!   clients ─► server ─┬─► metadata replica (group 0) ─► Metadata (applied copy) ─► reconcile
//!                      └─► partition replicas (groups 1..) ◄────────────────────────┘ start/stop
//!   peers ◄─► transport ─► route by group id ─► replicas
//! ```
//!
//! Routing runs on the transport's connection reader tasks (the node's router is their
//! [`Deliver`] sink): a peer's message goes from the socket into its replica's queue without
//! waking another task first.
//!
//! Every node applies the metadata log to its own copy; whenever that copy changes the node
//! reconciles: it starts a replica for every partition placed on it and stops the replicas of
//! deleted topics. A newly created partition's preferred leader (its first replica) starts an
//! election at once, which spreads initial leaders as evenly as placement does.

mod coordinator;
mod membership;
pub mod ops;
mod peer_book;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{NodeConfig, NodeId};
use crate::metadata::{Applied, Metadata, MetadataError, Topic, METADATA_GROUP_ID};
use crate::proto::{self, EntryKind, ErrorCode, MetadataCommand, RaftMessage};
use crate::raft::Role;
use crate::replica::{
    Acks, MessageSink, Replica, ReplicaConfig, ReplicaError, ReplicaHandle, StateMachine,
};
use crate::shutdown::Shutdown;
use crate::transport::{Deliver, Transport, TransportConfig};

pub use crate::replica::LocalPartition;

/// What applying one metadata command produced.
pub type MetadataOutcome = Result<Applied, MetadataError>;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    /// The peer transport could not start.
    #[error("peer transport: {0}")]
    Transport(#[from] crate::transport::TransportError),
    /// A replica's log could not be opened.
    #[error("replica of group {group_id}: {source}")]
    Replica {
        /// The Raft group.
        group_id: u64,
        /// Why.
        source: ReplicaError,
    },
}

/// Sends the replicas' outgoing messages through the peer transport.
struct TransportSink(Transport);

impl MessageSink for TransportSink {
    fn send(&self, message: RaftMessage) {
        // A full queue drops the message (counted by the transport); Raft retransmits.
        let _ = self.0.send(message);
    }
}

/// Routes each message a peer sent to its group's replica, called by the transport on the
/// connection's reader task. Never blocks: [`ReplicaHandle::step`] drops a message its
/// replica's full queue cannot take.
struct Router {
    /// The node, set once it exists. Weak, because the transport's tasks hold this router
    /// and stop only at the transport's shutdown: a strong reference would keep a node that
    /// was aborted (or dropped unstopped) alive for as long as they run.
    node: OnceLock<Weak<Node>>,
    /// Set by [`Node::abort`]: a crashed node hears nothing more.
    deaf: AtomicBool,
}

impl Deliver for Router {
    fn deliver(&self, message: RaftMessage) -> ControlFlow<()> {
        if self.deaf.load(Ordering::Relaxed) {
            return ControlFlow::Break(());
        }
        // A message that arrives while the node is still being built is dropped: its sender
        // retransmits it, as it would after any loss.
        let Some(node) = self.node.get() else {
            return ControlFlow::Continue(());
        };
        match node.upgrade() {
            Some(node) => {
                node.route(message);
                ControlFlow::Continue(())
            }
            None => ControlFlow::Break(()),
        }
    }
}

/// Applies committed metadata commands to the node's shared copy and announces each change.
struct MetadataMachine {
    view: Arc<RwLock<Metadata>>,
    changed: watch::Sender<u64>,
}

impl StateMachine for MetadataMachine {
    type Output = MetadataOutcome;

    fn apply(&mut self, entry: &proto::Entry) -> MetadataOutcome {
        let mut view = self
            .view
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if entry.kind() != EntryKind::Data {
            view.skip(entry.index);
            return Err(MetadataError::Invalid("not a metadata command".into()));
        }
        let outcome = match MetadataCommand::decode(entry.payload.clone()) {
            Ok(command) => view.apply(entry.index, &command),
            Err(error) => {
                // Only this node's own proposals reach the log, each encoded by it; a command
                // that does not decode is skipped the same way on every node.
                view.skip(entry.index);
                Err(MetadataError::Invalid(format!(
                    "undecodable metadata command: {error}"
                )))
            }
        };
        drop(view);
        self.changed.send_replace(entry.index);
        outcome
    }

    fn applied_index(&self) -> u64 {
        self.view
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .applied_index()
    }
}

/// A running node. Cheap to share: the daemon's tasks hold an `Arc<Node>`.
pub struct Node {
    config: NodeConfig,
    client_address: SocketAddr,
    /// Which life of this node id (0 for a first voter); sent with every registration.
    incarnation: u64,
    /// The rate every replica's catch-up traffic to learners shares.
    recovery: Arc<crate::replica::throttle::RecoveryThrottle>,
    /// When this node last sent its registration, so a slow metadata does not get one per
    /// round.
    last_registration: std::sync::Mutex<Option<std::time::Instant>>,
    /// Peer addresses learned from the metadata, kept for the next start.
    peer_book: std::sync::Mutex<peer_book::PeerBook>,
    transport: Transport,
    metadata: ReplicaHandle<MetadataOutcome>,
    metadata_view: Arc<RwLock<Metadata>>,
    /// Changes whenever the applied metadata does; what the reconciler waits on.
    metadata_changes: watch::Receiver<u64>,
    partitions: RwLock<HashMap<u64, LocalPartition>>,
    router: Arc<Router>,
    /// The consumer-group coordinator's timing (sessions, revocations), used while this
    /// node leads the metadata.
    sessions: coordinator::Sessions,
}

impl Node {
    /// Starts a node on an already-bound peer listener: opens (and recovers) its logs,
    /// starts the peer transport and the metadata group. Clients reach it at
    /// `client_address` (advertised to peers). Partition replicas start when
    /// [`Self::reconcile_until`] runs. Must run inside a multi-threaded tokio runtime.
    ///
    /// # Errors
    /// An invalid configuration, a transport that cannot start, or a log that cannot open.
    pub fn start(
        config: NodeConfig,
        peer_listener: TcpListener,
        client_address: SocketAddr,
    ) -> Result<Arc<Node>, NodeError> {
        let founders = config.peers.keys().copied().collect();
        Node::start_member(config, peer_listener, client_address, founders, 0)
    }

    /// Like [`Self::start`], for a node of a cluster whose first voters are `founders`: a
    /// node that joined (it is not one of them, and `incarnation` is the life of its id it
    /// registered) starts as a learner of the metadata group.
    ///
    /// # Errors
    /// As [`Self::start`].
    pub fn start_member(
        config: NodeConfig,
        peer_listener: TcpListener,
        client_address: SocketAddr,
        founders: Vec<NodeId>,
        incarnation: u64,
    ) -> Result<Arc<Node>, NodeError> {
        config.validate()?;
        if config.network.peer_inbound_bytes_max.is_some() {
            tracing::warn!(
                "network.peer_inbound_bytes_max is retired and ignored: received messages go \
                 straight to their replica's queue, bounded by peer_inbound_messages_max"
            );
        }
        let mut transport_config = TransportConfig::from_node_config(&config);
        transport_config.client_address = client_address.to_string();
        let router = Arc::new(Router {
            node: OnceLock::new(),
            deaf: AtomicBool::new(false),
        });
        // The transport stops only in `Node::stop`, after every replica has handed off and
        // drained: its token is its own, cancelled by `Transport::shutdown`.
        let transport = Transport::start(
            transport_config,
            peer_listener,
            &CancellationToken::new(),
            router.clone(),
        )?;
        // Before any leader can tell this node who joined after it, it must accept their
        // connections: the addresses it learned in an earlier life.
        let peer_book = peer_book::PeerBook::load(&config.data_dir);
        for (&id, address) in peer_book.peers() {
            if id != config.node_id && !config.peers.contains_key(&id) {
                transport.add_peer(id, address);
            }
        }

        let recovery = Arc::new(crate::replica::throttle::RecoveryThrottle::new(
            config.raft.recovery_bytes_per_second,
        ));
        let metadata_view = Arc::new(RwLock::new(Metadata::new(founders.clone())));
        let (changed, metadata_changes) = watch::channel(0u64);
        let machine = MetadataMachine {
            view: metadata_view.clone(),
            changed,
        };
        let sink: Arc<dyn MessageSink> = Arc::new(TransportSink(transport.clone()));
        let mut metadata_config = replica_config(
            &config,
            METADATA_GROUP_ID,
            founders.clone(),
            config.data_dir.join("metadata"),
            0,
            0,
            &recovery,
        );
        // A node that joined receives the metadata log but does not vote until the group
        // makes it a voter; the leader's configurations replace this one once they arrive.
        if !founders.contains(&config.node_id) {
            metadata_config.raft.learners = vec![config.node_id];
        }
        let metadata = Replica::start(metadata_config, machine, sink).map_err(|source| {
            NodeError::Replica {
                group_id: METADATA_GROUP_ID,
                source,
            }
        })?;

        let node = Arc::new(Node {
            config,
            client_address,
            incarnation,
            last_registration: std::sync::Mutex::new(None),
            peer_book: std::sync::Mutex::new(peer_book),
            recovery,
            transport,
            metadata,
            metadata_view,
            metadata_changes,
            partitions: RwLock::new(HashMap::new()),
            router: router.clone(),
            sessions: coordinator::Sessions::default(),
        });
        // Messages are routed until the transport closes, after every replica has stopped: a
        // node handing off leadership must keep hearing from its peers to finish the transfer
        // and to learn the outcome of the proposals it accepted. The daemon holds the node
        // until then, so the weak reference stays valid all along.
        let _ = router.node.set(Arc::downgrade(&node));
        Ok(node)
    }

    /// Starts and stops partition replicas to match the applied metadata, now and after
    /// every change, until `shutdown` is signalled.
    /// Between changes it keeps the cluster's shape ([`membership`]): finished moves
    /// reported, this node registered, decommissions carried out.
    pub async fn reconcile_until(&self, shutdown: &Shutdown) {
        let mut changes = self.metadata_changes.clone();
        let mut moves = tokio::time::interval(Duration::from_millis(
            self.config.raft.tick_interval_ms.max(1) * 2,
        ));
        moves.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.reconcile();
            tokio::select! {
                _ = shutdown.signalled() => break,
                changed = changes.changed() => if changed.is_err() { break },
                _ = moves.tick() => self.upkeep().await,
            }
        }
    }

    /// Changes the node-wide rate of catch-up traffic to learners (0: unlimited); every
    /// replica uses it from its next tick.
    pub fn set_recovery_rate(&self, bytes_per_second: u64) {
        self.recovery.set_rate(bytes_per_second);
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.config.node_id
    }

    /// The node's configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The peer transport, for its per-peer counters.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// A consistent copy of the applied metadata.
    pub fn metadata(&self) -> Metadata {
        self.metadata_view
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The metadata group's replica.
    pub fn metadata_replica(&self) -> &ReplicaHandle<MetadataOutcome> {
        &self.metadata
    }

    /// Every partition replica running on this node.
    pub fn local_partitions(&self) -> Vec<LocalPartition> {
        self.partitions
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The address where clients reach `node`, if known: this node's own, the one `node`
    /// registered in the metadata, or what the peer advertised in its handshake.
    pub fn client_address_of(&self, node: NodeId) -> Option<String> {
        if node == self.id() {
            return Some(self.client_address.to_string());
        }
        let registered = self
            .metadata_view
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .node(node)
            .map(|record| record.client_address.clone());
        registered.or_else(|| self.transport.peer_client_address(node))
    }

    /// The `NOT_LEADER` error for a leader hint, with the leader's client address when known.
    pub fn not_leader(&self, leader_hint: Option<NodeId>, what: &str) -> proto::Error {
        let leader_id = leader_hint.unwrap_or(0);
        let leader_address = leader_hint
            .and_then(|id| self.client_address_of(id))
            .unwrap_or_default();
        let message = match leader_hint {
            Some(id) => format!("node {} does not lead {what}; node {id} does", self.id()),
            None => format!(
                "node {} does not lead {what}, and no leader is known yet",
                self.id()
            ),
        };
        proto::Error {
            code: ErrorCode::NotLeader as i32,
            message,
            leader_id,
            leader_address,
            ..Default::default()
        }
    }

    /// The replica of `topic`/`partition` on this node.
    ///
    /// # Errors
    /// `UNKNOWN_TOPIC`, `UNKNOWN_PARTITION`, or `NOT_LEADER` pointing at the preferred leader
    /// when this node holds no replica of the partition.
    pub fn local_partition(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<LocalPartition, proto::Error> {
        let metadata = self
            .metadata_view
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let known = metadata
            .topic(topic)
            .ok_or_else(|| error(&MetadataError::UnknownTopic(topic.into())))?;
        let assignment = known.partitions.get(partition as usize).ok_or_else(|| {
            error(&MetadataError::UnknownPartition {
                topic: topic.into(),
                partition,
                partitions: known.partitions.len() as u32,
            })
        })?;
        let group_id = assignment.group_id;
        let preferred = assignment.replicas.first().copied();
        drop(metadata);
        let partitions = self
            .partitions
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match partitions.get(&group_id) {
            Some(local) => Ok(local.clone()),
            None => Err(self.not_leader(preferred, &format!("{topic}/{partition}"))),
        }
    }

    /// Proposes a metadata command through this node, which must lead the metadata group, and
    /// waits until it is committed and applied.
    ///
    /// # Errors
    /// `NOT_LEADER` with the metadata leader's address, the command's refusal, or a
    /// replication error.
    pub async fn propose_metadata(
        &self,
        command: MetadataCommand,
    ) -> Result<Applied, proto::Error> {
        let status = self.metadata.status();
        if status.role != Some(Role::Leader) {
            return Err(self.not_leader(hint(status.leader_id), "the cluster metadata"));
        }
        {
            let metadata = self
                .metadata_view
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            metadata.check(&command).map_err(|e| error(&e))?;
            if let Some(proto::metadata_command::Command::MovePartition(request)) = &command.command
            {
                self.admit_move(&metadata, request)?;
            }
        }
        let payload = Bytes::from(command.encode_to_vec());
        let appended = self
            .metadata
            .propose(payload, 0, Acks::All)
            .await
            .map_err(|e| self.replica_error(&e, "the cluster metadata"))?;
        match appended.output {
            Some(outcome) => outcome.map_err(|e| error(&e)),
            None => Err(internal("metadata command committed without an outcome")),
        }
    }

    /// On the metadata leader, before a move the metadata allows is recorded: refuses one
    /// that could not finish, because the partition's replicas now or the ones it would move
    /// to have no majority this node has heard from within three election timeouts (a joint
    /// configuration needs both), and a new move beyond `raft.moves_max` under way. Cancelling
    /// (asking for the replicas the partition has) always passes: it is the way out of a move
    /// that cannot finish. Every member answers the metadata leader's heartbeats, so its
    /// silence is the best evidence this node has that a peer is down.
    fn admit_move(
        &self,
        metadata: &Metadata,
        request: &proto::MovePartitionRequest,
    ) -> Result<(), proto::Error> {
        let partition = metadata.topic(&request.topic).and_then(|topic| {
            topic
                .partitions
                .iter()
                .find(|p| p.partition == request.partition)
        });
        let Some(partition) = partition else {
            return Ok(());
        };
        if request.replicas == partition.replicas {
            return Ok(());
        }
        let raft = &self.config.raft;
        let silence_max = Duration::from_millis(
            3 * u64::from(raft.election_timeout_ticks) * raft.tick_interval_ms,
        );
        let is_live = |node: &NodeId| {
            *node == self.id()
                || self
                    .transport
                    .silence(*node)
                    .is_some_and(|silence| silence <= silence_max)
        };
        for (which, replicas) in [
            ("now", &partition.replicas),
            ("to move to", &request.replicas),
        ] {
            let live: Vec<NodeId> = replicas.iter().copied().filter(is_live).collect();
            if live.len() <= replicas.len() / 2 {
                // Refused as invalid rather than "not enough replicas", which clients retry:
                // an operator naming a dead node should hear so at once.
                return Err(proto::Error {
                    code: ErrorCode::InvalidRequest as i32,
                    message: format!(
                        "{}/{} cannot move: of its replicas {which} {replicas:?}, only {live:?} \
                         were heard from in the last {} ms, and a move needs a majority of both \
                         the replicas it has and the ones it moves to",
                        request.topic,
                        request.partition,
                        silence_max.as_millis()
                    ),
                    ..Default::default()
                });
            }
        }
        if !partition.is_moving() {
            let moving = metadata
                .topics()
                .flat_map(|topic| &topic.partitions)
                .filter(|p| p.is_moving())
                .count();
            if moving >= raft.moves_max {
                return Err(proto::Error {
                    code: ErrorCode::InvalidRequest as i32,
                    message: format!(
                        "{moving} partition moves are under way, the most raft.moves_max allows: \
                         wait for one to finish (raftlog partition moves)"
                    ),
                    ..Default::default()
                });
            }
        }
        Ok(())
    }

    /// Turns a replica error into the wire error a client receives.
    pub fn replica_error(&self, failure: &ReplicaError, what: &str) -> proto::Error {
        match failure {
            ReplicaError::NotLeader { leader_hint } => self.not_leader(*leader_hint, what),
            ReplicaError::Superseded => {
                let mut answer = self.not_leader(None, what);
                answer.message = format!("leadership of {what} changed before the write committed; it was not written, retry");
                answer
            }
            ReplicaError::OffsetOutOfRange {
                log_start_offset,
                high_watermark,
                ..
            } => proto::Error {
                code: ErrorCode::OffsetOutOfRange as i32,
                message: format!("{what}: {failure}"),
                log_start_offset: *log_start_offset,
                high_watermark: *high_watermark,
                ..Default::default()
            },
            ReplicaError::DuplicateSequence { base_offset } => proto::Error {
                code: ErrorCode::DuplicateSequence as i32,
                message: format!("{what}: {failure}"),
                duplicate_offset: *base_offset,
                ..Default::default()
            },
            other => proto::Error {
                code: other.code() as i32,
                message: format!("{what}: {other}"),
                ..Default::default()
            },
        }
    }

    /// Hands the message to the replica of its group; messages for groups not (yet) running
    /// here are dropped, and Raft retransmits them once the group has started.
    fn route(&self, message: RaftMessage) {
        if message.group_id == METADATA_GROUP_ID {
            self.metadata.step(message);
            return;
        }
        let partitions = self
            .partitions
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(local) = partitions.get(&message.group_id) {
            local.handle.step(message);
        }
    }

    /// Starts a replica for every partition placed here and stops those no longer placed.
    ///
    /// The partition map's write lock is held while one partition starts, so a request for it
    /// that arrives meanwhile waits for the replica instead of being refused, but never across
    /// several partitions or while a deleted partition's files go: every peer message is
    /// routed through a read lock on the connection reader tasks, so a long write lock would
    /// stall them all. Only this task changes the map, so what it read stays true until it
    /// writes.
    fn reconcile(&self) {
        self.reconcile_nodes();
        let wanted: Vec<(Topic, u32)> = {
            let metadata = self
                .metadata_view
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            metadata
                .partitions_on(self.id())
                .map(|(topic, p)| (topic.clone(), p.partition))
                .collect()
        };
        let running: std::collections::HashSet<u64> = self
            .partitions
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .keys()
            .copied()
            .collect();
        let mut keep = std::collections::HashSet::new();
        for (topic, partition) in wanted {
            let assignment = topic.partitions[partition as usize].clone();
            keep.insert(assignment.group_id);
            if running.contains(&assignment.group_id) {
                if let Some(local) = self
                    .partitions
                    .read()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .get(&assignment.group_id)
                {
                    let target = assignment
                        .is_moving()
                        .then(|| assignment.target_replicas.clone());
                    local.handle.set_move_target(target);
                }
                continue;
            }
            let mut partitions = self
                .partitions
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match self.start_partition(&topic, &assignment) {
                Ok(local) => {
                    partitions.insert(assignment.group_id, local);
                }
                Err(failure) => {
                    tracing::error!(topic = %topic.name, partition, %failure, "cannot start partition replica")
                }
            }
        }
        let removed: Vec<LocalPartition> = {
            let mut partitions = self
                .partitions
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let gone: Vec<u64> = partitions
                .keys()
                .copied()
                .filter(|group| !keep.contains(group))
                .collect();
            gone.iter()
                .filter_map(|group_id| partitions.remove(group_id))
                .collect()
        };
        let metadata_applied = self
            .metadata_view
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .applied_index();
        for local in removed {
            tracing::info!(
                topic = %local.topic,
                partition = local.partition,
                group = local.group_id,
                metadata_applied,
                "dropping this node's copy: the metadata no longer places it here"
            );
            let dir = self.partition_dir(&local.topic, local.partition, local.group_id);
            // Dropping the handle asks the replica to stop, but it may still be writing for a
            // moment. Renaming the directory first (atomic) means those writes can no longer
            // land under the partition's name, and removing it can no longer leave half a
            // log there for a later replica of the same group to trip over (the 30-minute
            // fault run found one: "log start is 1 but the first segment starts at 39152").
            drop(local);
            let Some(name) = dir.file_name().map(|n| n.to_string_lossy().into_owned()) else {
                continue;
            };
            let tombstone = dir.with_file_name(format!("{name}.deleting"));
            // One left by an earlier failure would make the rename fail.
            let _ = std::fs::remove_dir_all(&tombstone);
            let gone = std::fs::rename(&dir, &tombstone)
                .and_then(|()| std::fs::remove_dir_all(&tombstone));
            if let Err(failure) = gone {
                tracing::warn!(dir = %dir.display(), %failure, "cannot remove a deleted partition's files");
            }
        }
    }

    fn start_partition(
        &self,
        topic: &Topic,
        assignment: &crate::metadata::PartitionAssignment,
    ) -> Result<LocalPartition, ReplicaError> {
        let dir = self.partition_dir(&topic.name, assignment.partition, assignment.group_id);
        let mut config = replica_config(
            &self.config,
            assignment.group_id,
            assignment.replicas.clone(),
            dir,
            topic.retention_bytes,
            topic.retention_ms,
            &self.recovery,
        );
        // A replica a move adds starts as a learner; the configurations in the leader's log
        // (or its snapshot) replace this one as soon as they arrive.
        if !assignment.replicas.contains(&self.id()) {
            config.raft.learners = vec![self.id()];
        }
        let sink: Arc<dyn MessageSink> = Arc::new(TransportSink(self.transport.clone()));
        crate::metrics::name_group(
            self.id(),
            assignment.group_id,
            &topic.name,
            assignment.partition,
        );
        let handle = Replica::start(config, crate::replica::LogIsTheState, sink)?;
        if assignment.is_moving() {
            handle.set_move_target(Some(assignment.target_replicas.clone()));
        }
        let fresh = handle.status().last_index == 0;
        tracing::info!(
            topic = %topic.name,
            partition = assignment.partition,
            group = assignment.group_id,
            fresh,
            replicas = ?assignment.replicas,
            target = ?assignment.target_replicas,
            "starting this node's copy"
        );
        if fresh && assignment.replicas.first() == Some(&self.id()) {
            handle.campaign();
        }
        Ok(LocalPartition {
            topic: topic.name.clone(),
            partition: assignment.partition,
            group_id: assignment.group_id,
            replicas: assignment.replicas.clone(),
            handle,
        })
    }

    fn partition_dir(&self, topic: &str, partition: u32, group_id: u64) -> PathBuf {
        // Topic names are restricted to [a-zA-Z0-9._-], so they are safe in a path; the group
        // id keeps a re-created topic's files apart from the deleted one's.
        self.config
            .data_dir
            .join("partitions")
            .join(format!("{topic}-{partition}.g{group_id}"))
    }
}

impl Node {
    /// Stops the node gracefully: hands away the leadership of every group it leads (so
    /// clients fail over without waiting for an election timeout), lets the replicas drain,
    /// sync and stop, then closes the peer transport. Every step is bounded by
    /// `server.shutdown_grace_ms`. Call once client traffic has stopped (the daemon's
    /// signal) and no reconcile runs any more.
    pub async fn stop(&self) {
        let grace = Duration::from_millis(self.config.server.shutdown_grace_ms);
        // A transfer that has not completed within two election timeouts will not: the
        // target is down or partitioned, and the core has abandoned it.
        let raft = &self.config.raft;
        let election =
            Duration::from_millis(raft.tick_interval_ms * u64::from(raft.election_timeout_ticks));
        let _ = tokio::time::timeout(grace.min(election * 2), self.hand_off_leadership()).await;
        // Every replica stops taking proposals, lets those already accepted learn their
        // outcome, syncs and exits; its status channel closes when it is gone.
        let mut replicas = Vec::new();
        for local in self.local_partitions() {
            local.handle.stop(grace);
            replicas.push(local.handle.watch_status());
        }
        self.metadata.stop(grace);
        replicas.push(self.metadata.watch_status());
        let _ = tokio::time::timeout(
            grace,
            futures::future::join_all(
                replicas
                    .into_iter()
                    .map(|mut status| async move { while status.changed().await.is_ok() {} }),
            ),
        )
        .await;
        // Only now: until its replica has stopped, a group's messages must still be routed.
        self.partitions
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clear();
        // Once this returns no reader task is left, so nothing is routed any more.
        self.transport.shutdown().await;
    }

    /// Stops the node abruptly, as a crash would: it hears nothing more from its peers.
    /// Its replicas stop once the last reference to the node is gone.
    pub fn abort(&self) {
        self.router.deaf.store(true, Ordering::Relaxed);
    }

    /// Transfers leadership of every group led here to its most caught-up follower and waits
    /// until none is led here any more. The transfer requests go on the replicas' control
    /// queues and the hand-off messages are exempt from every queue bound
    /// ([`RaftMessage::is_hand_off`]), so no full queue turns the hand-off into an election.
    async fn hand_off_leadership(&self) {
        let mut groups: Vec<(ReplicaHandleAny, Vec<(u64, u64)>)> = Vec::new();
        let metadata_status = self.metadata.status();
        if metadata_status.role == Some(Role::Leader) {
            groups.push((
                ReplicaHandleAny::Metadata(self.metadata.clone()),
                metadata_status.follower_match,
            ));
        }
        for local in self.local_partitions() {
            let status = local.handle.status();
            if status.role == Some(Role::Leader) {
                groups.push((
                    ReplicaHandleAny::Partition(local.handle),
                    status.follower_match,
                ));
            }
        }
        // A group with no other replica has nobody to hand to; waiting for it is pointless.
        groups.retain(|(_, followers)| !followers.is_empty());
        for (handle, followers) in &groups {
            if let Some(&(to, _)) = followers
                .iter()
                .max_by_key(|(id, match_index)| (*match_index, *id))
            {
                handle.transfer_leader(to);
            }
        }
        let led_elsewhere = groups.iter().map(|(handle, _)| {
            let mut status = handle.watch_status();
            async move {
                while status.borrow_and_update().role == Some(Role::Leader) {
                    if status.changed().await.is_err() {
                        return;
                    }
                }
            }
        });
        futures::future::join_all(led_elsewhere).await;
    }
}

/// A replica handle of either kind, for shutdown.
enum ReplicaHandleAny {
    Metadata(ReplicaHandle<MetadataOutcome>),
    Partition(ReplicaHandle<()>),
}

impl ReplicaHandleAny {
    fn transfer_leader(&self, to: u64) {
        match self {
            ReplicaHandleAny::Metadata(handle) => handle.transfer_leader(to),
            ReplicaHandleAny::Partition(handle) => handle.transfer_leader(to),
        }
    }

    fn watch_status(&self) -> watch::Receiver<crate::replica::ReplicaStatus> {
        match self {
            ReplicaHandleAny::Metadata(handle) => handle.watch_status(),
            ReplicaHandleAny::Partition(handle) => handle.watch_status(),
        }
    }
}

fn hint(leader_id: u64) -> Option<NodeId> {
    (leader_id != 0).then_some(leader_id)
}

/// The wire error for a refused metadata command.
pub fn error(refusal: &MetadataError) -> proto::Error {
    proto::Error {
        code: refusal.code() as i32,
        message: refusal.to_string(),
        ..Default::default()
    }
}

fn internal(message: &str) -> proto::Error {
    proto::Error {
        code: ErrorCode::Internal as i32,
        message: message.to_owned(),
        ..Default::default()
    }
}

/// The replica configuration of one group on this node, from the node's settings.
fn replica_config(
    config: &NodeConfig,
    group_id: u64,
    voters: Vec<NodeId>,
    dir: PathBuf,
    retention_bytes: u64,
    retention_ms: u64,
    recovery: &Arc<crate::replica::throttle::RecoveryThrottle>,
) -> ReplicaConfig {
    let (settings, storage) = (&config.raft, &config.storage);
    ReplicaConfig {
        raft: settings.consensus(config.node_id, group_id, voters),
        dir,
        log: storage.log_config(),
        tick_interval: Duration::from_millis(settings.tick_interval_ms),
        events_queue_max: config.network.peer_inbound_messages_max,
        retention_bytes,
        retention_ms,
        retention_check_interval: Duration::from_millis(storage.retention_check_interval_ms),
        track_producers: group_id != METADATA_GROUP_ID,
        limits: crate::replica::ReplicaLimits::from_settings(settings, storage),
        recovery: recovery.clone(),
    }
}
