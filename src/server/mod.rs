//! The client server: the client listener, one task per connection, and the request
//! handlers that turn wire requests into calls on the node's replicas.
//!
//! It owns connection limits, the handshake on the client port, per-connection pipelining and
//! ordering, and turning every failure into an error response. It does not own Raft,
//! storage or metadata rules: it asks the [`Node`].

mod connection;
mod handlers;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::codec::Framed;

use crate::node::Node;
use crate::proto::{Error as ErrorMessage, ErrorCode};
use crate::wire::{error_envelope, EnvelopeCodec};

/// Accepts client connections until the node shuts down. Connections beyond
/// `server.connections_max` get a `RESOURCE_EXHAUSTED` error and are closed, so a flood of
/// clients cannot exhaust the node's memory or file descriptors.
pub async fn serve(node: Arc<Node>, listener: TcpListener) {
    let connections = Arc::new(Semaphore::new(node.config().server.connections_max));
    loop {
        let accepted = tokio::select! {
            _ = node.shutdown_token().cancelled() => break,
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
                let node = node.clone();
                tokio::spawn(async move {
                    connection::serve(node, socket).await;
                    drop(permit);
                });
            }
            Err(_) => {
                let limit = node.config().server.connections_max;
                tokio::spawn(refuse(socket, limit, node.config().network.frame_bytes_max));
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
