//! The writer task of one peer: connect, hand-shake, write coalesced batches, reconnect.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use super::{PeerLink, Shared, TransportConfig, TransportError};
use crate::backoff::Backoff;
use crate::proto::envelope::Body;
use crate::proto::{Envelope, RaftBatch};
use crate::wire::{handshake, EnvelopeCodec, WireError};

type PeerConnection = Framed<TcpStream, EnvelopeCodec>;

/// Keeps a connection to `link`'s peer and drains its queue into it until shutdown.
///
/// While no connection is up, messages wait in the bounded queue (and the overflow is
/// dropped); every failed attempt lengthens the delay before the next, up to the maximum.
pub(super) async fn run(shared: Arc<Shared>, link: Arc<PeerLink>, config: Arc<TransportConfig>) {
    let token = shared.token.clone();
    let network = &config.network;
    let mut backoff = Backoff::new(
        Duration::from_millis(network.reconnect_backoff_ms_min),
        Duration::from_millis(network.reconnect_backoff_ms_max),
        jitter_seed(config.node_id, link.node_id),
    );
    loop {
        let connected = tokio::select! {
            _ = token.cancelled() => return,
            connected = connect(&config, &link) => connected,
        };
        match connected {
            Ok(mut connection) => {
                backoff.reset();
                link.connects.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(peer = link.node_id, "peer connection established");
                let write_timeout = Duration::from_millis(network.peer_write_timeout_ms);
                match pump(&mut connection, &link, &shared, write_timeout).await {
                    Ok(()) => return,
                    Err(error) => {
                        tracing::info!(peer = link.node_id, %error, "peer connection lost")
                    }
                }
            }
            Err(error) => {
                link.connect_failures.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(peer = link.node_id, %error, "cannot connect to peer");
            }
        }
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// Dials the peer and runs the opener's side of the handshake, all within the handshake
/// timeout, and checks that the node answering is the one the peers map names.
async fn connect(
    config: &TransportConfig,
    link: &PeerLink,
) -> Result<PeerConnection, TransportError> {
    let attempt = async {
        let stream = TcpStream::connect(link.address()).await?;
        // Raft messages are latency-bound and already coalesced here; Nagle would only
        // delay heartbeats.
        stream.set_nodelay(true)?;
        let mut connection =
            Framed::new(stream, EnvelopeCodec::new(config.network.frame_bytes_max));
        let hello = handshake::peer_handshake_envelope(
            &config.cluster_id,
            config.node_id,
            &config.client_address,
            &config.peer_address,
        );
        let response = handshake::connect_with(&mut connection, hello).await?;
        if response.node_id != link.node_id {
            return Err(TransportError::WrongPeer {
                expected: link.node_id,
                got: response.node_id,
            });
        }
        Ok(connection)
    };
    tokio::time::timeout(config.handshake_timeout(), attempt)
        .await
        .map_err(|_| TransportError::Timeout)?
}

/// Writes everything queued for the peer, one `RaftBatch` frame per write, until shutdown
/// (`Ok`) or until the connection fails or a write takes longer than `write_timeout` (`Err`).
///
/// Messages queued while a write is in flight all go into the next frame: that is the
/// coalescing. The peer never writes on this connection after the handshake, so anything
/// readable (an error, end of stream) means the connection is finished; watching for it notices
/// a restarted peer without waiting for a write to fail.
async fn pump(
    connection: &mut PeerConnection,
    link: &PeerLink,
    shared: &Shared,
    write_timeout: Duration,
) -> Result<(), TransportError> {
    let token = &shared.token;
    loop {
        let messages = link.take_batch(shared.frame_budget_bytes);
        if messages.is_empty() {
            tokio::select! {
                _ = token.cancelled() => return Ok(()),
                _ = link.queued.notified() => continue,
                incoming = connection.next() => return Err(unexpected_read(incoming)),
            }
        }
        let count = messages.len() as u64;
        let envelope = Envelope {
            correlation_id: 0,
            body: Some(Body::Raft(RaftBatch { messages })),
        };
        let written = tokio::select! {
            _ = token.cancelled() => return Ok(()),
            written = tokio::time::timeout(write_timeout, connection.send(envelope)) => written,
        };
        let failure = match written {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(error.into()),
            Err(_elapsed) => Some(TransportError::Timeout),
        };
        if let Some(error) = failure {
            // The batch may or may not have reached the peer; count it as lost. Raft resends.
            link.dropped_messages.fetch_add(count, Ordering::Relaxed);
            return Err(error);
        }
        link.sent_messages.fetch_add(count, Ordering::Relaxed);
        link.sent_frames.fetch_add(1, Ordering::Relaxed);
    }
}

/// What it means when the peer's side of an outgoing connection becomes readable.
fn unexpected_read(incoming: Option<Result<Envelope, WireError>>) -> TransportError {
    match incoming {
        None => WireError::Closed.into(),
        Some(Err(error)) => error.into(),
        Some(Ok(envelope)) => match envelope.body {
            Some(Body::Error(error)) => WireError::Remote(error).into(),
            other => WireError::UnexpectedMessage {
                expected: "nothing after the handshake",
                got: crate::wire::error::body_name(other.as_ref()),
            }
            .into(),
        },
    }
}

/// A jitter seed that differs per (node, peer) link, so that the nodes dialling one restarted
/// peer do not retry in lockstep, yet a given link replays the same delays.
fn jitter_seed(node_id: u64, peer_id: u64) -> u64 {
    node_id.rotate_left(32) ^ peer_id ^ 0x5EED_5EED_5EED_5EED
}
