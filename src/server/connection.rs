//! One client connection: handshake, then requests read in order and answered as they
//! complete.
//!
//! Requests are pipelined: the reader does not wait for one answer before reading the next.
//! Produce requests are queued to their partition's replica by the reader itself, in the order
//! they arrived, and only their completion is awaited concurrently — so appends to one
//! partition from one connection keep their order. A malformed frame gets an error response
//! and closes the connection; it never affects other connections.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::codec::Framed;

use crate::proto::envelope::Body;
use crate::proto::{ConnectionRole, Envelope, Error as ErrorMessage, ErrorCode};
use crate::server::{handlers, Service};
use crate::shutdown::Shutdown;
use crate::wire::{error_envelope, handshake, EnvelopeCodec};

/// Serves one connection until the client leaves, sends garbage, or `shutdown` is signalled.
/// Requests already read are still answered; their tasks are spawned on `shutdown`.
pub async fn serve<S: Service>(node: Arc<S>, socket: TcpStream, shutdown: Shutdown) {
    let _ = socket.set_nodelay(true);
    let network = &node.config().network;
    let mut framed = Framed::new(socket, EnvelopeCodec::new(network.frame_bytes_max));
    let handshake_timeout = Duration::from_millis(network.handshake_timeout_ms);
    let cluster_id = node.config().cluster_id.clone();
    let accepted = tokio::time::timeout(
        handshake_timeout,
        handshake::accept(
            &mut framed,
            &cluster_id,
            ConnectionRole::Client,
            node.node_id(),
        ),
    )
    .await;
    if !matches!(accepted, Ok(Ok(_))) {
        return;
    }
    let in_flight_max = node.config().server.connection_in_flight_requests_max;
    let (sink, mut stream) = framed.split();
    let (responses, outgoing) = mpsc::channel::<Envelope>(in_flight_max + 1);
    let writer = shutdown.spawn(write_responses(sink, outgoing));
    let slots = Arc::new(Semaphore::new(in_flight_max));
    loop {
        let frame = tokio::select! {
            _ = shutdown.signalled() => break,
            frame = stream.next() => frame,
        };
        let envelope = match frame {
            None => break,
            Some(Ok(envelope)) => envelope,
            Some(Err(failure)) => {
                // The byte stream cannot be trusted past a bad frame: answer, then close.
                let error = failure.to_message();
                crate::metrics::node(node.node_id()).error(error.code);
                let _ = responses.send(error_envelope(0, error)).await;
                break;
            }
        };
        let correlation_id = envelope.correlation_id;
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            let error = in_flight_refusal(in_flight_max);
            crate::metrics::node(node.node_id()).error(error.code);
            let _ = responses.send(error_envelope(correlation_id, error)).await;
            continue;
        };
        dispatch(&node, envelope, slot, &responses, &shutdown).await;
    }
    drop(responses);
    let _ = writer.await;
}

/// Starts handling one request. Produce requests are queued to their replica before this
/// returns (keeping their order); everything else runs concurrently.
async fn dispatch<S: Service>(
    node: &Arc<S>,
    envelope: Envelope,
    slot: OwnedSemaphorePermit,
    responses: &mpsc::Sender<Envelope>,
    shutdown: &Shutdown,
) {
    let correlation_id = envelope.correlation_id;
    let received = std::time::Instant::now();
    let metrics = crate::metrics::node(node.node_id());
    let answer = move |body: Body| {
        metrics.answered(&body);
        Envelope {
            correlation_id,
            body: Some(body),
        }
    };
    match envelope.body {
        Some(Body::Produce(request)) => match handlers::submit_produce(node, request).await {
            Ok(pending) => {
                let responses = responses.clone();
                shutdown.spawn(async move {
                    let body = pending.finish().await;
                    metrics.produce_answered(received.elapsed());
                    let _ = responses.send(answer(body)).await;
                    drop(slot);
                });
            }
            Err(error) => {
                metrics.produce_answered(received.elapsed());
                let _ = responses.send(answer(Body::Error(error))).await;
            }
        },
        Some(body) => {
            let (node, responses) = (node.clone(), responses.clone());
            shutdown.spawn(async move {
                let body = handlers::handle(&*node, body).await;
                let _ = responses.send(answer(body)).await;
                drop(slot);
            });
        }
        None => {
            let error = ErrorMessage {
                code: ErrorCode::InvalidRequest as i32,
                message: "envelope without a request body".into(),
                ..Default::default()
            };
            let _ = responses.send(answer(Body::Error(error))).await;
        }
    }
}

fn in_flight_refusal(limit: usize) -> ErrorMessage {
    ErrorMessage {
        code: ErrorCode::ResourceExhausted as i32,
        message: format!(
            "too many requests in flight on this connection (limit {limit}); wait for answers"
        ),
        ..Default::default()
    }
}

/// Writes responses as they come, coalescing whatever is ready into one flush.
async fn write_responses(
    mut sink: futures::stream::SplitSink<Framed<TcpStream, EnvelopeCodec>, Envelope>,
    mut outgoing: mpsc::Receiver<Envelope>,
) {
    while let Some(envelope) = outgoing.recv().await {
        if sink.feed(envelope).await.is_err() {
            return;
        }
        while let Ok(envelope) = outgoing.try_recv() {
            if sink.feed(envelope).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
    let _ = sink.close().await;
}
