//! The peer transport: Raft messages between nodes, over one outgoing connection per peer.
//!
//! This module owns the peer port's connections: dialling every other node, the `Peer`
//! handshake (cluster id and node id), coalescing queued messages into `RaftBatch` frames,
//! bounded queues, reconnection with backoff and jitter, and accepting the other nodes'
//! connections. It does not own what the messages mean (the replicas do) nor which groups a
//! peer belongs to: one connection carries every group two nodes share.
//!
//! ```text
//!  node 1                                                         node 2
//!  send(msg to 2) ─► queue[2] ─► writer[2] ══ connection 1→2 ══► reader ─► deliver
//!  deliver ◄─ reader ◄══ connection 2→1 ══ writer[1] ◄─ queue[1] ◄─ send(msg to 1)
//! ```
//!
//! Each direction has its own connection, opened by the sender: a node's writes never wait on
//! what the other node sends, and a connection's one job is to carry messages one way in order.
//!
//! Memory is bounded everywhere. [`Transport::send`] never blocks: when a peer's queue is full
//! (in messages or bytes) the message is dropped and counted, because Raft retransmits
//! whatever is lost (heartbeats repeat, appends are resent from the follower's match index).
//! The one exception is a leadership hand-off's messages ([`RaftMessage::is_hand_off`]), which
//! are queued even beyond the bounds: Raft does not resend them, and there are only a few.
//! On the receiving side each connection's reader task hands every message straight to the
//! [`Deliver`] sink given to [`Transport::start`], which must not block: the receiver bounds
//! its own queues and drops what does not fit, for the same reason (see [`deliver`]). So a
//! connection never waits for a busy replica, and TCP never pushes back on the sender because
//! of one.
//!
//! Shutdown has one path: the [`CancellationToken`] given to [`Transport::start`] (or
//! [`Transport::shutdown`], which cancels the transport's child of it). Every task selects on
//! it; [`Transport::shutdown`] returns once the last task has exited.

mod acceptor;
pub mod deliver;
mod queue;
mod tasks;
mod writer;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::{NetworkConfig, NodeConfig, NodeId};
use crate::proto::RaftMessage;
use crate::wire::WireError;

pub use deliver::Deliver;

use queue::PeerQueue;
use tasks::TaskTracker;

/// Bytes an envelope adds around a `RaftBatch`: the body's two-byte key (field 40) and its
/// length varint (at most 5 bytes), with room to spare.
const ENVELOPE_OVERHEAD_BYTES: usize = 16;

/// What the transport needs to know; [`TransportConfig::from_node_config`] takes it from the
/// node's configuration.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// This node's id.
    pub node_id: NodeId,
    /// The cluster id sent and checked in every handshake.
    pub cluster_id: String,
    /// Every voter's peer address, this node included.
    pub peers: BTreeMap<NodeId, String>,
    /// The address where clients reach this node, advertised to peers in the handshake.
    pub client_address: String,
    /// The address where peers reach this node, advertised in the handshake so that a peer
    /// that does not know this node yet can add it.
    pub peer_address: String,
    /// Frame size, queue bounds, timeouts and backoff.
    pub network: NetworkConfig,
}

impl TransportConfig {
    /// The transport settings of a node.
    pub fn from_node_config(config: &NodeConfig) -> Self {
        Self {
            node_id: config.node_id,
            cluster_id: config.cluster_id.clone(),
            client_address: config.client_listen.to_string(),
            peer_address: config
                .peers
                .get(&config.node_id)
                .cloned()
                .unwrap_or_else(|| config.peer_listen.to_string()),
            peers: config.peers.clone(),
            network: config.network.clone(),
        }
    }

    fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.network.handshake_timeout_ms)
    }
}

/// Why a message could not be sent, or why a peer connection ended.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The message is addressed to a node that is not in the peers map.
    #[error("node {node_id} is not a peer of this cluster")]
    UnknownPeer {
        /// The unknown node id.
        node_id: NodeId,
    },
    /// The message is addressed to this node itself; the replica must handle it locally.
    #[error("message addressed to this node ({node_id}) itself")]
    SendToSelf {
        /// This node's id.
        node_id: NodeId,
    },
    /// The message is too large to fit in a frame, so it could never be delivered.
    #[error("raft message of {bytes} bytes exceeds the frame budget of {max} bytes")]
    MessageTooLarge {
        /// The message's encoded size.
        bytes: usize,
        /// The most one frame can carry.
        max: usize,
    },
    /// The transport has shut down.
    #[error("the peer transport has shut down")]
    ShutDown,
    /// This node's id is missing from the peers map it was started with.
    #[error("node {node_id} is not in its own peers map")]
    NotInPeers {
        /// This node's id.
        node_id: NodeId,
    },
    /// The node at a peer address answered with another node id than the peers map says.
    #[error("peer address of node {expected} is answered by node {got}")]
    WrongPeer {
        /// The node id the peers map names for that address.
        expected: NodeId,
        /// The node id in the handshake response.
        got: NodeId,
    },
    /// A peer sent a message that claims another sender, or names another receiver, than the
    /// connection it came on.
    #[error("message from {from} to {to} on the connection from node {peer} to node {node_id}")]
    Misrouted {
        /// The message's `from`.
        from: NodeId,
        /// The message's `to`.
        to: NodeId,
        /// The node that opened the connection.
        peer: NodeId,
        /// This node.
        node_id: NodeId,
    },
    /// Connecting, completing the handshake, or writing one frame took longer than its
    /// configured timeout.
    #[error("peer connection, handshake or write timed out")]
    Timeout,
    /// Framing, handshake or socket error on one connection.
    #[error(transparent)]
    Wire(#[from] WireError),
}

impl From<std::io::Error> for TransportError {
    fn from(error: std::io::Error) -> Self {
        TransportError::Wire(WireError::Io(error))
    }
}

/// What [`Transport::send`] did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Queued for the peer's writer.
    Queued,
    /// The peer's queue was full; the message was dropped and counted.
    Dropped,
}

/// Counters of one peer link, as seen by this node's writer to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Messages written to the peer's connection.
    pub sent_messages: u64,
    /// Frames (coalesced `RaftBatch`es) written.
    pub sent_frames: u64,
    /// Messages dropped: refused by a full queue, or lost with a broken connection.
    pub dropped_messages: u64,
    /// Connections established (handshake completed).
    pub connects: u64,
    /// Connections established after the first: how often the link had to be rebuilt.
    pub reconnects: u64,
    /// Connection attempts that failed (refused, timed out, handshake refused).
    pub connect_failures: u64,
    /// Messages waiting in the queue now.
    pub queued_messages: usize,
    /// Bytes waiting in the queue now.
    pub queued_bytes: usize,
}

/// Sends Raft messages to peers and receives theirs. Cheap to clone; every clone drives the
/// same connections.
#[derive(Debug, Clone)]
pub struct Transport {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    node_id: NodeId,
    local_addr: SocketAddr,
    /// Every peer but this node: the configured ones, and those added since
    /// ([`Transport::add_peer`]: nodes that joined). Read on every send, written only when a
    /// node joins or moves.
    links: RwLock<BTreeMap<NodeId, Arc<PeerLink>>>,
    /// What a writer task added later needs.
    config: Arc<TransportConfig>,
    /// The most message bytes one frame can carry.
    frame_budget_bytes: usize,
    received_messages: AtomicU64,
    refused_connections: AtomicU64,
    /// The live incoming connection of each peer, by a generation number, with the token that
    /// closes it. A peer has one at a time: when it connects again (it restarted, or its old
    /// connection died without this side noticing), the newer connection replaces the older.
    incoming: Mutex<BTreeMap<NodeId, (u64, CancellationToken)>>,
    /// Each peer's client address, as advertised in its latest handshake.
    peer_client_addresses: Mutex<BTreeMap<NodeId, String>>,
    incoming_generation: AtomicU64,
    token: CancellationToken,
    tasks: TaskTracker,
}

/// One peer: its queue, the writer's wake-up, its counters.
#[derive(Debug)]
struct PeerLink {
    node_id: NodeId,
    /// Where to dial; replaced when the node registers another address.
    address: Mutex<String>,
    queue: Mutex<PeerQueue>,
    /// Woken by `send`; a wake-up with no waiter is kept, so none is lost.
    queued: Notify,
    sent_messages: AtomicU64,
    sent_frames: AtomicU64,
    dropped_messages: AtomicU64,
    connects: AtomicU64,
    connect_failures: AtomicU64,
    /// When a frame last arrived from this peer, or when the link was made if none has: a
    /// peer that just joined gets the same grace as one that just spoke.
    last_heard: Mutex<Instant>,
}

impl Transport {
    /// Starts the transport on an already-bound peer listener: one writer task per other peer
    /// and one acceptor task. Must be called inside a tokio runtime.
    ///
    /// Every message received from a peer goes to `deliver`, called from that peer's
    /// connection reader task, until the transport has shut down. Cancelling `shutdown` (or
    /// calling [`Self::shutdown`]) stops every task.
    ///
    /// # Errors
    /// [`TransportError::NotInPeers`] if `config.peers` lacks this node, or an I/O error reading
    /// the listener's address.
    pub fn start(
        config: TransportConfig,
        listener: TcpListener,
        shutdown: &CancellationToken,
        deliver: Arc<dyn Deliver>,
    ) -> Result<Transport, TransportError> {
        if !config.peers.contains_key(&config.node_id) {
            return Err(TransportError::NotInPeers {
                node_id: config.node_id,
            });
        }
        let network = &config.network;
        let links = config
            .peers
            .iter()
            .filter(|(&id, _)| id != config.node_id)
            .map(|(&id, address)| {
                let queue = PeerQueue::new(
                    network.peer_queue_messages_max,
                    network.peer_queue_bytes_max,
                );
                (id, Arc::new(PeerLink::new(id, address.clone(), queue)))
            })
            .collect();
        let config = Arc::new(config);
        let shared = Arc::new(Shared {
            node_id: config.node_id,
            local_addr: listener.local_addr()?,
            links: RwLock::new(links),
            config: config.clone(),
            frame_budget_bytes: config
                .network
                .frame_bytes_max
                .saturating_sub(ENVELOPE_OVERHEAD_BYTES),
            received_messages: AtomicU64::new(0),
            refused_connections: AtomicU64::new(0),
            incoming: Mutex::new(BTreeMap::new()),
            peer_client_addresses: Mutex::new(BTreeMap::new()),
            incoming_generation: AtomicU64::new(0),
            token: shutdown.child_token(),
            tasks: TaskTracker::default(),
        });
        for link in shared.read_links().values() {
            let task = writer::run(shared.clone(), link.clone(), config.clone());
            shared.tasks.spawn(task);
        }
        let task = acceptor::run(listener, shared.clone(), config, deliver);
        shared.tasks.spawn(task);
        Ok(Transport { shared })
    }

    /// Makes `peer` reachable at `address`: a node that joined (or that registered another
    /// address) gets a link and a writer task, and its connections are accepted. Adding a
    /// peer already known at that address changes nothing.
    pub fn add_peer(&self, peer: NodeId, address: &str) {
        add_peer_link(&self.shared, peer, address);
    }

    /// Whether `peer` is a node this transport exchanges messages with.
    pub fn knows_peer(&self, peer: NodeId) -> bool {
        self.shared.read_links().contains_key(&peer)
    }

    /// The client address `peer` advertised in its latest handshake, once it has connected.
    pub fn peer_client_address(&self, peer: NodeId) -> Option<String> {
        let addresses = self.shared.peer_client_addresses.lock();
        let addresses = addresses.unwrap_or_else(|poisoned| poisoned.into_inner());
        addresses.get(&peer).cloned()
    }

    /// How long ago a frame last arrived from `peer` (since the link was made, if none has),
    /// or `None` for a node this transport does not know. Raft leaders send heartbeats and
    /// followers answer them, so a live peer sharing a group with this node is never silent
    /// for more than a few heartbeat intervals.
    pub fn silence(&self, peer: NodeId) -> Option<Duration> {
        let links = self.shared.read_links();
        let link = links.get(&peer)?;
        let heard = *lock(&link.last_heard);
        Some(heard.elapsed())
    }

    /// Queues `message` for the node named by `message.to`, without waiting.
    ///
    /// Returns [`Delivery::Dropped`] when that peer's queue is full: the message is counted
    /// and discarded, and Raft's retransmission makes up for it.
    ///
    /// # Errors
    /// [`TransportError::SendToSelf`], [`TransportError::UnknownPeer`],
    /// [`TransportError::MessageTooLarge`], or [`TransportError::ShutDown`].
    pub fn send(&self, message: RaftMessage) -> Result<Delivery, TransportError> {
        let shared = &self.shared;
        if message.to == shared.node_id {
            return Err(TransportError::SendToSelf {
                node_id: message.to,
            });
        }
        // The read guard is held through the enqueue (no await in between): the hot path
        // takes no reference count.
        let links = shared.read_links();
        let link = links.get(&message.to).ok_or(TransportError::UnknownPeer {
            node_id: message.to,
        })?;
        if shared.token.is_cancelled() {
            return Err(TransportError::ShutDown);
        }
        let bytes = batched_len(&message);
        if bytes > shared.frame_budget_bytes {
            return Err(TransportError::MessageTooLarge {
                bytes,
                max: shared.frame_budget_bytes,
            });
        }
        Ok(link.enqueue(message, bytes))
    }

    /// Stops every task and waits until the last one has exited. Queued messages are
    /// discarded; the listener is closed.
    pub async fn shutdown(&self) {
        self.shared.token.cancel();
        self.shared.tasks.wait_idle().await;
    }

    /// Tasks still running: 0 after [`Self::shutdown`] has returned.
    pub fn live_tasks(&self) -> usize {
        self.shared.tasks.live()
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.shared.node_id
    }

    /// The address the peer listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// Counters of the link to `peer`, or `None` if it is not a peer (or is this node).
    pub fn stats(&self, peer: NodeId) -> Option<PeerStats> {
        self.shared.read_links().get(&peer).map(|link| link.stats())
    }

    /// Messages written to all peers.
    pub fn sent_messages_total(&self) -> u64 {
        self.sum(|stats| stats.sent_messages)
    }

    /// Messages dropped for all peers (full queues and broken connections).
    pub fn dropped_messages_total(&self) -> u64 {
        self.sum(|stats| stats.dropped_messages)
    }

    /// Connections to peers re-established after the first.
    pub fn reconnects_total(&self) -> u64 {
        self.sum(|stats| stats.reconnects)
    }

    /// Messages received from peers and handed to the [`Deliver`] sink.
    pub fn received_messages_total(&self) -> u64 {
        self.shared.received_messages.load(Ordering::Relaxed)
    }

    /// Incoming connections that ended in an error: a refused handshake, a malformed frame or
    /// message, a socket error.
    pub fn refused_connections_total(&self) -> u64 {
        self.shared.refused_connections.load(Ordering::Relaxed)
    }

    fn sum(&self, field: impl Fn(&PeerStats) -> u64) -> u64 {
        self.shared
            .read_links()
            .values()
            .map(|link| field(&link.stats()))
            .sum()
    }
}

impl Shared {
    /// The links; the lock is held only to look one up or copy one out, never across an
    /// await, so a poisoned lock still holds a consistent map.
    fn read_links(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<NodeId, Arc<PeerLink>>> {
        self.links
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether `node` is a peer (not this node) whose connections are accepted.
    fn is_peer(&self, node: NodeId) -> bool {
        node != self.node_id && self.read_links().contains_key(&node)
    }
}

/// Locks a mutex held only in short, panic-free critical sections, so a poisoned lock still
/// guards a consistent value.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl PeerLink {
    /// Where to dial now.
    fn address(&self) -> String {
        lock(&self.address).clone()
    }

    fn new(node_id: NodeId, address: String, queue: PeerQueue) -> Self {
        Self {
            node_id,
            address: Mutex::new(address),
            queue: Mutex::new(queue),
            queued: Notify::new(),
            sent_messages: AtomicU64::new(0),
            sent_frames: AtomicU64::new(0),
            dropped_messages: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            last_heard: Mutex::new(Instant::now()),
        }
    }

    /// Records that a frame from this peer arrived just now.
    fn heard(&self) {
        *lock(&self.last_heard) = Instant::now();
    }

    fn enqueue(&self, message: RaftMessage, bytes: usize) -> Delivery {
        let pushed = self.lock_queue().push(message, bytes);
        match pushed {
            Ok(()) => {
                self.queued.notify_one();
                Delivery::Queued
            }
            Err(_dropped) => {
                self.dropped_messages.fetch_add(1, Ordering::Relaxed);
                Delivery::Dropped
            }
        }
    }

    fn take_batch(&self, budget_bytes: usize) -> Vec<RaftMessage> {
        self.lock_queue().take_batch(budget_bytes)
    }

    /// The queue lock is only held for pushes and pops, never across an await, and a panic
    /// while holding it cannot leave the queue half-updated, so a poisoned lock is still usable.
    fn lock_queue(&self) -> std::sync::MutexGuard<'_, PeerQueue> {
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn stats(&self) -> PeerStats {
        let (queued_messages, queued_bytes) = {
            let queue = self.lock_queue();
            (queue.len(), queue.bytes())
        };
        let connects = self.connects.load(Ordering::Relaxed);
        PeerStats {
            sent_messages: self.sent_messages.load(Ordering::Relaxed),
            sent_frames: self.sent_frames.load(Ordering::Relaxed),
            dropped_messages: self.dropped_messages.load(Ordering::Relaxed),
            connects,
            reconnects: connects.saturating_sub(1),
            connect_failures: self.connect_failures.load(Ordering::Relaxed),
            queued_messages,
            queued_bytes,
        }
    }
}

/// The bytes `message` takes inside a `RaftBatch`: field key, length varint, body.
fn batched_len(message: &RaftMessage) -> usize {
    let body = message.encoded_len();
    1 + prost::length_delimiter_len(body) + body
}

/// [`Transport::add_peer`], also used by the acceptor for a peer that introduces itself.
fn add_peer_link(shared: &Arc<Shared>, peer: NodeId, address: &str) {
    if peer == shared.node_id || shared.token.is_cancelled() {
        return;
    }
    if let Some(link) = shared.read_links().get(&peer) {
        let mut known = lock(&link.address);
        if *known != address {
            tracing::info!(peer, from = %known, to = %address, "peer address changed");
            address.clone_into(&mut known);
        }
        return;
    }
    let network = &shared.config.network;
    let queue = PeerQueue::new(
        network.peer_queue_messages_max,
        network.peer_queue_bytes_max,
    );
    let link = Arc::new(PeerLink::new(peer, address.to_owned(), queue));
    {
        let mut links = shared
            .links
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if links.contains_key(&peer) {
            return;
        }
        links.insert(peer, link.clone());
    }
    tracing::info!(peer, %address, "peer added");
    let task = writer::run(shared.clone(), link, shared.config.clone());
    shared.tasks.spawn(task);
}
