//! The composition root: one daemon is one running node with its listeners. It binds the
//! client, peer and ops listeners, starts the [`Node`], the client server
//! ([`crate::server`]) and the ops listener ([`ops`]: `/metrics`, `/health`, `/ready`), and
//! owns the one [`Shutdown`] they all select on.
//!
//! It owns the wiring and the order of shutdown. It does not own what any part does: the
//! node owns its replicas and transport, the server the client protocol, the ops module of
//! the node the readiness policy.
//!
//! ```text
//!   Daemon::start ─┬─ bind client, peer, ops listeners
//!                  ├─ Node::start (transport on the peer listener, metadata group)
//!                  └─ spawn on the Shutdown: reconciler, server::serve, ops::serve
//!
//!   Daemon::shutdown: signal ─► reconciler ends ─► Node::stop (hand off leadership,
//!                     replicas drain and stop, transport closes) ─► every tracked task
//!                     (accept loops, connections, requests, probes) has ended
//! ```
//!
//! The node is stopped before the tracked tasks are waited for: a connection's last answers
//! wait on its replicas, which answer every waiter as they stop.

pub mod dev;
pub mod join;
pub mod ops;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::{NodeConfig, NodeId};
use crate::metadata::{Applied, Metadata};
use crate::node::{Node, NodeError};
use crate::proto::{
    Error as ErrorMessage, GroupHeartbeatRequest, GroupHeartbeatResponse, JoinGroupRequest,
    JoinGroupResponse, LeaveGroupRequest, MetadataCommand,
};
use crate::replica::{LocalPartition, ReplicaError, ReplicaStatus};
use crate::server::{self, Service};
use crate::shutdown::Shutdown;

/// Why a daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A listener could not be bound (a port in use, an address not on this host).
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The node could not start: an invalid configuration, a transport or a log that
    /// cannot open.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// A node started with `--join` could not register with the cluster.
    #[error(transparent)]
    Join(#[from] join::JoinError),
}

/// A running node with its listeners and tasks; what `raftlog serve` runs, one per node.
pub struct Daemon {
    /// The node.
    pub node: Arc<Node>,
    /// Where the client listener is bound.
    pub client_address: SocketAddr,
    /// Where the peer listener is bound.
    pub peer_address: SocketAddr,
    /// Where the ops listener (`/metrics`, `/health`, `/ready`) is bound.
    pub ops_address: SocketAddr,
    shutdown: Shutdown,
    /// The reconciler, awaited before the node stops so that no replica starts meanwhile.
    reconciler: JoinHandle<()>,
}

impl Daemon {
    /// Binds the listeners and starts the node, the client server and the ops listener. Must
    /// run inside a multi-threaded tokio runtime.
    ///
    /// # Errors
    /// An invalid configuration, a listener that cannot bind, or a node that cannot start
    /// (a log that cannot open).
    pub async fn start(mut config: NodeConfig) -> Result<Daemon, DaemonError> {
        config.validate().map_err(NodeError::from)?;
        let (client_listener, client_address) = bind(config.client_listen).await?;
        let (peer_listener, peer_address) = bind(config.peer_listen).await?;
        let (ops_listener, ops_address) = bind(config.metrics_listen).await?;
        let node = if config.join.is_empty() {
            Node::start(config, peer_listener, client_address)?
        } else {
            let joined = join::join(&config, client_address, peer_address).await?;
            config.peers = joined.peers;
            Node::start_member(
                config,
                peer_listener,
                client_address,
                joined.founders,
                joined.incarnation,
            )?
        };
        let shutdown = Shutdown::new();
        let reconciler = {
            let (node, signal) = (node.clone(), shutdown.clone());
            shutdown.spawn(async move { node.reconcile_until(&signal).await })
        };
        shutdown.spawn(server::serve(
            node.clone(),
            client_listener,
            shutdown.clone(),
        ));
        shutdown.spawn(ops::serve(node.clone(), ops_listener, shutdown.clone()));
        Ok(Daemon {
            node,
            client_address,
            peer_address,
            ops_address,
            shutdown,
            reconciler,
        })
    }

    /// Stops gracefully, in the order the module doc draws: the signal stops every accept
    /// loop and connection (requests already read are still answered), the node hands off
    /// leadership and stops its replicas and transport, then this waits for every task it
    /// started, at most `server.shutdown_grace_ms` (a client that does not read its answers
    /// cannot hold the shutdown up for longer).
    pub async fn shutdown(self) {
        self.shutdown.signal();
        let _ = self.reconciler.await;
        self.node.stop().await;
        let grace = Duration::from_millis(self.node.config().server.shutdown_grace_ms);
        if tokio::time::timeout(grace, self.shutdown.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                node = self.node.id(),
                tasks = self.shutdown.live_tasks(),
                "tasks still running after the shutdown grace period"
            );
        }
    }

    /// Stops abruptly, as a crash would: no hand-off, no waiting. The node hears nothing
    /// more from its peers; every loop ends on the signal, and the replicas stop once the
    /// last task holding the node has.
    pub fn abort(self) {
        self.shutdown.signal();
        self.node.abort();
    }
}

async fn bind(address: SocketAddr) -> Result<(TcpListener, SocketAddr), DaemonError> {
    let failed = |source| DaemonError::Bind { address, source };
    let listener = TcpListener::bind(address).await.map_err(failed)?;
    let bound = listener.local_addr().map_err(failed)?;
    Ok((listener, bound))
}

/// The client server reaches the node through this narrow trait only: the node does not
/// know the server, the server does not know the node.
impl Service for Node {
    fn node_id(&self) -> NodeId {
        self.id()
    }

    fn config(&self) -> &NodeConfig {
        Node::config(self)
    }

    fn metadata(&self) -> Metadata {
        Node::metadata(self)
    }

    fn metadata_status(&self) -> ReplicaStatus {
        self.metadata_replica().status()
    }

    fn partition(&self, topic: &str, partition: u32) -> Result<LocalPartition, ErrorMessage> {
        self.local_partition(topic, partition)
    }

    fn partitions(&self) -> Vec<LocalPartition> {
        self.local_partitions()
    }

    fn client_address_of(&self, node: NodeId) -> Option<String> {
        Node::client_address_of(self, node)
    }

    fn replica_error(&self, failure: &ReplicaError, what: &str) -> ErrorMessage {
        Node::replica_error(self, failure, what)
    }

    fn propose_metadata(
        &self,
        command: MetadataCommand,
    ) -> impl Future<Output = Result<Applied, ErrorMessage>> + Send {
        Node::propose_metadata(self, command)
    }

    fn join_group(
        &self,
        request: JoinGroupRequest,
    ) -> impl Future<Output = Result<JoinGroupResponse, ErrorMessage>> + Send {
        Node::join_group(self, request)
    }

    fn group_heartbeat(
        &self,
        request: GroupHeartbeatRequest,
    ) -> impl Future<Output = Result<GroupHeartbeatResponse, ErrorMessage>> + Send {
        Node::group_heartbeat(self, request)
    }

    fn leave_group(
        &self,
        request: LeaveGroupRequest,
    ) -> impl Future<Output = Result<(), ErrorMessage>> + Send {
        Node::leave_group(self, request)
    }
}
