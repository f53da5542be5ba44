//! The client server: the client listener, one task per connection, and the request
//! handlers that turn wire requests into calls on the node's replicas.
//!
//! It owns connection limits, the handshake on the client port, per-connection pipelining and
//! ordering, and turning every failure into an error response. It does not own Raft,
//! storage or metadata rules, nor the node: it reaches the node only through the narrow
//! [`Service`] trait (which the daemon implements for the node), and partitions only through
//! [`crate::replica`] types. Every task it starts is tracked by the daemon's [`Shutdown`] and
//! ends once its signal is given.

mod connection;
mod handlers;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::codec::Framed;

use crate::config::{NodeConfig, NodeId};
use crate::metadata::{Applied, Metadata};
use crate::proto::{
    Error as ErrorMessage, ErrorCode, GroupHeartbeatRequest, GroupHeartbeatResponse,
    JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, MetadataCommand,
};
use crate::replica::{LocalPartition, ReplicaError, ReplicaStatus};
use crate::shutdown::Shutdown;
use crate::wire::{error_envelope, EnvelopeCodec};

/// What the client server needs from the node it serves. Narrow on purpose: the server
/// depends on this trait and on [`crate::replica`] types, never on the node itself, so the
/// node knows nothing of the server and the daemon wires the two together.
pub trait Service: Send + Sync + 'static {
    /// This node's id.
    fn node_id(&self) -> NodeId;

    /// The node's configuration: the server's limits, the network's, the cluster id, peers.
    fn config(&self) -> &NodeConfig;

    /// A consistent copy of the applied cluster metadata.
    fn metadata(&self) -> Metadata;

    /// The metadata group's latest status (its leader and term).
    fn metadata_status(&self) -> ReplicaStatus;

    /// The replica of `topic`/`partition` on this node.
    ///
    /// # Errors
    /// `UNKNOWN_TOPIC`, `UNKNOWN_PARTITION`, or `NOT_LEADER` pointing at the preferred leader
    /// when this node holds no replica of the partition.
    fn partition(&self, topic: &str, partition: u32) -> Result<LocalPartition, ErrorMessage>;

    /// Every partition replica running on this node.
    fn partitions(&self) -> Vec<LocalPartition>;

    /// The address where clients reach `node`, if known.
    fn client_address_of(&self, node: NodeId) -> Option<String>;

    /// The wire error a client receives for a replica's `failure` on `what`.
    fn replica_error(&self, failure: &ReplicaError, what: &str) -> ErrorMessage;

    /// Proposes a metadata command and waits until it is committed and applied.
    ///
    /// # Errors
    /// `NOT_LEADER` with the metadata leader's address, the command's refusal, or a
    /// replication error.
    fn propose_metadata(
        &self,
        command: MetadataCommand,
    ) -> impl Future<Output = Result<Applied, ErrorMessage>> + Send;

    /// A consumer-group member joins (this node must coordinate: lead the metadata).
    ///
    /// # Errors
    /// `NOT_LEADER`, or the join's refusal.
    fn join_group(
        &self,
        request: JoinGroupRequest,
    ) -> impl Future<Output = Result<JoinGroupResponse, ErrorMessage>> + Send;

    /// A consumer-group member's heartbeat, with the partitions it released.
    ///
    /// # Errors
    /// `NOT_LEADER`, `UNKNOWN_MEMBER` for a member that was expelled.
    fn group_heartbeat(
        &self,
        request: GroupHeartbeatRequest,
    ) -> impl Future<Output = Result<GroupHeartbeatResponse, ErrorMessage>> + Send;

    /// A consumer-group member leaves.
    ///
    /// # Errors
    /// `NOT_LEADER`, `UNKNOWN_MEMBER`.
    fn leave_group(
        &self,
        request: LeaveGroupRequest,
    ) -> impl Future<Output = Result<(), ErrorMessage>> + Send;
}

/// Accepts client connections until `shutdown` is signalled. Connections beyond
/// `server.connections_max` get a `RESOURCE_EXHAUSTED` error and are closed, so a flood of
/// clients cannot exhaust the node's memory or file descriptors. Every connection's task
/// (and every request task it starts) is spawned on `shutdown`, so the daemon's shutdown
/// waits for them.
pub async fn serve<S: Service>(service: Arc<S>, listener: TcpListener, shutdown: Shutdown) {
    let connections = Arc::new(Semaphore::new(service.config().server.connections_max));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.signalled() => break,
            accepted = listener.accept() => accepted,
        };
        let socket = match accepted {
            Ok((socket, _)) => socket,
            Err(failure) => {
                // Usually out of file descriptors: back off instead of spinning.
                tracing::warn!(%failure, "accepting a client connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        match connections.clone().try_acquire_owned() {
            Ok(permit) => {
                let service = service.clone();
                let metrics = crate::metrics::node(service.node_id());
                let tasks = shutdown.clone();
                shutdown.spawn(async move {
                    metrics.connection_opened();
                    connection::serve(service, socket, tasks).await;
                    metrics.connection_closed();
                    drop(permit);
                });
            }
            Err(_) => {
                let config = service.config();
                let limit = config.server.connections_max;
                shutdown.spawn(refuse(socket, limit, config.network.frame_bytes_max));
            }
        }
    }
}

async fn refuse(socket: TcpStream, limit: usize, frame_bytes_max: usize) {
    use futures::SinkExt;
    let mut framed = Framed::new(socket, EnvelopeCodec::new(frame_bytes_max));
    let error = ErrorMessage {
        code: ErrorCode::ResourceExhausted as i32,
        message: format!("too many client connections (limit {limit}); retry later"),
        ..Default::default()
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        framed.send(error_envelope(0, error)),
    )
    .await;
}
