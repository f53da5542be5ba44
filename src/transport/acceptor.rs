//! The acceptor task: takes the other nodes' connections and delivers what they carry.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use super::{lock, Deliver, Shared, TransportConfig, TransportError};
use crate::config::NodeId;
use crate::proto::envelope::Body;
use crate::proto::{ConnectionRole, Envelope, ErrorCode, Handshake, HandshakeResponse, RaftBatch};
use crate::wire::error::{body_name, error_envelope};
use crate::wire::{handshake, EnvelopeCodec, WireError, PROTOCOL_VERSION};

type PeerConnection = Framed<TcpStream, EnvelopeCodec>;

/// Accepts peer connections until shutdown, at most `peer_connections_max` at once, each
/// served by its own task so that one bad connection never stalls another.
pub(super) async fn run(
    listener: TcpListener,
    shared: Arc<Shared>,
    config: Arc<TransportConfig>,
    deliver: Arc<dyn Deliver>,
) {
    let token = shared.token.clone();
    let slots = Arc::new(Semaphore::new(config.network.peer_connections_max));
    loop {
        let slot = tokio::select! {
            _ = token.cancelled() => return,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let accepted = tokio::select! {
            _ = token.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Usually out of file descriptors: pause instead of spinning on the error.
                tracing::warn!(%error, "cannot accept a peer connection");
                let pause = Duration::from_millis(config.network.reconnect_backoff_ms_min);
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(pause) => continue,
                }
            }
        };
        let (shared, config, deliver) = (shared.clone(), config.clone(), deliver.clone());
        let tasks = shared.tasks.clone();
        tasks.spawn(async move {
            let _slot = slot;
            if let Err(error) = serve(stream, &shared, &config, deliver.as_ref()).await {
                shared.refused_connections.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%error, "closed a peer connection");
            }
        });
    }
}

/// Serves one incoming connection: handshake, then every `RaftBatch` to `deliver`. Returns
/// `Ok` when the peer hangs up, the receiver is gone, or at shutdown.
async fn serve(
    stream: TcpStream,
    shared: &Arc<Shared>,
    config: &TransportConfig,
    deliver: &dyn Deliver,
) -> Result<(), TransportError> {
    stream.set_nodelay(true)?;
    let mut connection = Framed::new(stream, EnvelopeCodec::new(config.network.frame_bytes_max));
    let token = &shared.token;
    let accepted = tokio::select! {
        _ = token.cancelled() => return Ok(()),
        accepted = tokio::time::timeout(config.handshake_timeout(), accept(&mut connection, shared)) => accepted,
    };
    let (peer, client_address) = accepted.map_err(|_| TransportError::Timeout)??;
    if !client_address.is_empty() {
        let mut addresses = shared.peer_client_addresses.lock();
        let addresses = addresses
            .as_mut()
            .unwrap_or_else(|poisoned| poisoned.get_mut());
        addresses.insert(peer, client_address);
    }
    let registration = Registration::new(shared, peer);
    receive(&mut connection, peer, shared, deliver, &registration.token).await
}

/// Reads frames until the peer hangs up, the receiver is gone, or `token` (shutdown, or a
/// newer connection from the same peer) is cancelled.
async fn receive(
    connection: &mut PeerConnection,
    peer: NodeId,
    shared: &Shared,
    deliver: &dyn Deliver,
    token: &CancellationToken,
) -> Result<(), TransportError> {
    let link = shared.read_links().get(&peer).cloned();
    loop {
        let next = tokio::select! {
            _ = token.cancelled() => return Ok(()),
            next = connection.next() => next,
        };
        let Some(envelope) = next else {
            return Ok(());
        };
        let batch = raft_batch(envelope?)?;
        if let Some(link) = &link {
            link.heard();
        }
        if !forward(batch, peer, shared, deliver, token)? {
            return Ok(());
        }
    }
}

/// A peer's current incoming connection in [`Shared::incoming`]. Registering closes the
/// peer's previous connection; dropping unregisters, unless a newer one has taken the place.
struct Registration<'a> {
    shared: &'a Shared,
    peer: NodeId,
    generation: u64,
    token: CancellationToken,
}

impl<'a> Registration<'a> {
    fn new(shared: &'a Shared, peer: NodeId) -> Self {
        let generation = shared.incoming_generation.fetch_add(1, Ordering::Relaxed);
        let token = shared.token.child_token();
        let previous = lock(&shared.incoming).insert(peer, (generation, token.clone()));
        if let Some((_, older)) = previous {
            tracing::debug!(peer, "a newer connection replaces the peer's older one");
            older.cancel();
        }
        Self {
            shared,
            peer,
            generation,
            token,
        }
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut incoming = lock(&self.shared.incoming);
        if incoming.get(&self.peer).map(|(generation, _)| *generation) == Some(self.generation) {
            incoming.remove(&self.peer);
        }
    }
}

/// The acceptor's side of the handshake, with the peer-port checks on top of the wire's:
/// the opener must be a member of the cluster (known, or introducing itself with its peer
/// address) and not this node. Refusals are answered with an error before the connection
/// closes, so the other node's operator sees why.
async fn accept(
    connection: &mut PeerConnection,
    shared: &Arc<Shared>,
) -> Result<(NodeId, String), TransportError> {
    let config = &shared.config;
    let first = connection.next().await.ok_or(WireError::Closed)?;
    let checked = first
        .and_then(|envelope| {
            handshake::check_handshake(envelope, &config.cluster_id, ConnectionRole::Peer)
        })
        .map_err(TransportError::from)
        .and_then(|handshake| {
            check_member(&handshake, shared).map(|peer| (peer, handshake.client_address))
        });
    match checked {
        Ok((peer, client_address)) => {
            let response = HandshakeResponse {
                protocol_version: PROTOCOL_VERSION,
                node_id: config.node_id,
            };
            let envelope = Envelope {
                correlation_id: 0,
                body: Some(Body::HandshakeResponse(response)),
            };
            connection.send(envelope).await?;
            Ok((peer, client_address))
        }
        Err(error) => {
            let message = match &error {
                TransportError::Wire(wire) => wire.to_message(),
                other => crate::proto::Error {
                    code: ErrorCode::ClusterMismatch as i32,
                    message: other.to_string(),
                    ..Default::default()
                },
            };
            // Best effort: the connection is dropped either way.
            let _ = connection.send(error_envelope(0, message)).await;
            Err(error)
        }
    }
}

/// A known peer, or one that names the address it listens on: a node that joined while
/// this one was down is not in this node's peer table until this node catches up with the
/// metadata, which may need that very node (a leader that joined later) to reach it. The
/// handshake's cluster id is all that vouches for it, as for a known peer, until the peer
/// port authenticates nodes.
fn check_member(handshake: &Handshake, shared: &Arc<Shared>) -> Result<NodeId, TransportError> {
    let node_id = handshake.node_id;
    if node_id == shared.node_id {
        return Err(TransportError::UnknownPeer { node_id });
    }
    if !shared.is_peer(node_id) {
        if handshake.peer_address.is_empty() {
            return Err(TransportError::UnknownPeer { node_id });
        }
        tracing::info!(
            peer = node_id,
            address = %handshake.peer_address,
            "a node this one did not know introduced itself"
        );
        super::add_peer_link(shared, node_id, &handshake.peer_address);
    }
    Ok(node_id)
}

fn raft_batch(envelope: Envelope) -> Result<RaftBatch, TransportError> {
    match envelope.body {
        Some(Body::Raft(batch)) => Ok(batch),
        other => Err(WireError::UnexpectedMessage {
            expected: "RaftBatch",
            got: body_name(other.as_ref()),
        }
        .into()),
    }
}

/// Hands a batch's messages to the receiver in order, from this reader task. Returns
/// `Ok(false)` when the receiver is gone or the connection is closing.
fn forward(
    batch: RaftBatch,
    peer: NodeId,
    shared: &Shared,
    deliver: &dyn Deliver,
    token: &CancellationToken,
) -> Result<bool, TransportError> {
    for message in batch.messages {
        if message.from != peer || message.to != shared.node_id {
            return Err(TransportError::Misrouted {
                from: message.from,
                to: message.to,
                peer,
                node_id: shared.node_id,
            });
        }
        // Checked per message, not only between frames: a connection that a newer one from the
        // same peer has replaced must stop delivering at once, or the rest of its batch could
        // interleave with what the new connection carries.
        if token.is_cancelled() {
            return Ok(false);
        }
        if deliver.deliver(message).is_break() {
            return Ok(false);
        }
        shared.received_messages.fetch_add(1, Ordering::Relaxed);
    }
    Ok(true)
}
