//! One client connection to one node: handshake, then pipelined requests matched to their
//! responses by correlation id.
//!
//! A background task owns the socket. Callers hand it requests through a queue and wait on a
//! one-shot reply; the task writes requests in the order they were queued (so appends to one
//! partition from one connection keep their order) and routes each response to its waiter by
//! correlation id, whatever order the responses arrive in. When the socket fails, every waiter
//! gets [`ClientError::Closed`] at once instead of hanging.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::codec::Framed;

use crate::proto::envelope::Body;
use crate::proto::{ConnectionRole, Envelope, Error as ErrorMessage, ErrorCode};
use crate::wire::{handshake, EnvelopeCodec, WireError, FRAME_BYTES_MAX_DEFAULT};

/// How to open a connection.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// The cluster id the node must belong to.
    pub cluster_id: String,
    /// A name for this client in the node's logs.
    pub client_id: String,
    /// Longest wait for the TCP connect plus the handshake.
    pub connect_timeout: Duration,
    /// Most requests awaiting a response at once; further requests wait for a slot, which
    /// keeps a fast producer from queueing unbounded work on a slow node.
    pub in_flight_max: usize,
    /// Largest frame sent or accepted, in bytes.
    pub frame_bytes_max: usize,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            cluster_id: "raftlog".into(),
            client_id: "raftlog-client".into(),
            connect_timeout: Duration::from_secs(5),
            in_flight_max: 1024,
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
        }
    }
}

/// What can go wrong with a request on a connection.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TCP connection or the handshake to `address` failed or timed out.
    #[error("cannot connect to {address}: {reason}")]
    Connect {
        /// The node address tried.
        address: String,
        /// Why it failed.
        reason: String,
    },
    /// The node answered with an error.
    #[error("{}: {}", .0.code().as_str_name(), .0.message)]
    Server(ErrorMessage),
    /// The connection closed before the response arrived; the request may or may not have
    /// taken effect.
    #[error("connection closed before the response arrived")]
    Closed,
    /// Encoding or decoding a frame failed.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The cluster has no topic of this name (checked against fresh metadata).
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    /// The topic exists but has no such partition.
    #[error("topic {topic:?} has no partition {partition} (it has {partitions})")]
    UnknownPartition {
        /// Topic name.
        topic: String,
        /// The partition asked for.
        partition: u32,
        /// How many partitions the topic has.
        partitions: u32,
    },
    /// A request (with its retries) did not complete before its deadline. For a produce the
    /// outcome is unknown: the records may or may not have been written.
    #[error("timed out after {elapsed_ms} ms {what}; last error: {last}")]
    Timeout {
        /// What was being attempted, for the message.
        what: String,
        /// How long the attempts took, in milliseconds.
        elapsed_ms: u64,
        /// The last error seen before giving up.
        last: String,
    },
    /// A fetched batch failed its CRC or record checks: the bytes were damaged after the
    /// producer encoded them.
    #[error("corrupt batch in partition {partition} at offset {offset}: {source}")]
    Corrupt {
        /// Partition number.
        partition: u32,
        /// Base offset of the damaged batch.
        offset: u64,
        /// What the check found.
        source: crate::batch::BatchError,
    },
    /// The caller asked for something the client refuses before sending anything (a record
    /// larger than a batch, a producer that is closed, an unexpected answer).
    #[error("{0}")]
    Invalid(String),
}

impl ClientError {
    /// The error code, for errors that have one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server(error) => Some(error.code()),
            ClientError::Wire(error) => Some(error.code()),
            ClientError::UnknownTopic(_) => Some(ErrorCode::UnknownTopic),
            ClientError::UnknownPartition { .. } => Some(ErrorCode::UnknownPartition),
            ClientError::Timeout { .. } => Some(ErrorCode::Timeout),
            ClientError::Corrupt { .. } => Some(ErrorCode::CorruptBatch),
            ClientError::Invalid(_) => Some(ErrorCode::InvalidRequest),
            ClientError::Connect { .. } | ClientError::Closed => None,
        }
    }

    /// The server's error message, when the node answered with an error.
    pub fn server_error(&self) -> Option<&ErrorMessage> {
        match self {
            ClientError::Server(error) => Some(error),
            _ => None,
        }
    }
}

/// A request on its way to the socket task.
struct Outgoing {
    body: Body,
    reply: Reply,
    slot: OwnedSemaphorePermit,
}

/// Where a request's response goes.
type Reply = oneshot::Sender<Result<Body, ClientError>>;

/// A handshaken connection to one node. Cheap to clone; clones share the socket.
#[derive(Clone)]
pub struct Connection {
    requests: mpsc::Sender<Outgoing>,
    slots: Arc<Semaphore>,
    node_id: u64,
    address: String,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("node_id", &self.node_id)
            .field("address", &self.address)
            .finish()
    }
}

impl Connection {
    /// Connects to `address` and performs the client handshake.
    ///
    /// # Errors
    /// [`ClientError::Connect`] when the node is unreachable, refuses the handshake (for
    /// example another cluster id), or does not answer within the connect timeout.
    pub async fn connect(
        address: &str,
        options: &ConnectOptions,
    ) -> Result<Connection, ClientError> {
        let connect_error = |reason: String| ClientError::Connect {
            address: address.to_owned(),
            reason,
        };
        let attempt = async {
            let socket = TcpStream::connect(address)
                .await
                .map_err(|e| connect_error(e.to_string()))?;
            socket
                .set_nodelay(true)
                .map_err(|e| connect_error(e.to_string()))?;
            let mut framed = Framed::new(socket, EnvelopeCodec::new(options.frame_bytes_max));
            let role = ConnectionRole::Client;
            let response = handshake::connect(
                &mut framed,
                &options.cluster_id,
                role,
                0,
                &options.client_id,
            )
            .await
            .map_err(|e| connect_error(e.to_string()))?;
            Ok::<_, ClientError>((framed, response.node_id))
        };
        let (framed, node_id) = tokio::time::timeout(options.connect_timeout, attempt)
            .await
            .map_err(|_| {
                connect_error(format!("no answer within {:?}", options.connect_timeout))
            })??;
        let in_flight_max = options.in_flight_max.max(1);
        let (requests, queue) = mpsc::channel(in_flight_max);
        tokio::spawn(run_socket(framed, queue));
        Ok(Connection {
            requests,
            slots: Arc::new(Semaphore::new(in_flight_max)),
            node_id,
            address: address.to_owned(),
        })
    }

    /// The id of the node at the other end, from its handshake response.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// The address this connection was opened to.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// True once the socket task has stopped; every later request fails with `Closed`.
    pub fn is_closed(&self) -> bool {
        self.requests.is_closed()
    }

    /// Sends one request and waits for its response. Requests from one task are written in
    /// call order; callers pipeline by issuing several requests before awaiting them (for
    /// example with `futures::future::join_all` or by spawning).
    ///
    /// # Errors
    /// [`ClientError::Server`] when the node answered with an error, [`ClientError::Closed`]
    /// when the connection failed first.
    pub async fn request(&self, body: Body) -> Result<Body, ClientError> {
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ClientError::Closed)?;
        let (reply, response) = oneshot::channel();
        let outgoing = Outgoing { body, reply, slot };
        self.requests
            .send(outgoing)
            .await
            .map_err(|_| ClientError::Closed)?;
        response.await.map_err(|_| ClientError::Closed)?
    }
}

/// Owns the socket: writes queued requests, routes responses, and fails every waiter when
/// either side of the socket ends. Returns when the connection is dropped or broken.
async fn run_socket(
    mut framed: Framed<TcpStream, EnvelopeCodec>,
    mut queue: mpsc::Receiver<Outgoing>,
) {
    // Each waiter keeps its in-flight slot until its response is delivered.
    let mut waiting: HashMap<u64, (Reply, OwnedSemaphorePermit)> = HashMap::new();
    let mut next_correlation_id: u64 = 1;
    loop {
        tokio::select! {
            outgoing = queue.recv() => {
                let Some(Outgoing { body, reply, slot }) = outgoing else { break };
                let correlation_id = next_correlation_id;
                next_correlation_id += 1;
                let envelope = Envelope { correlation_id, body: Some(body) };
                if let Err(error) = framed.send(envelope).await {
                    // A socket that fails mid-write may have delivered part of the frame or
                    // all of it: the outcome is unknown, exactly as for a connection that
                    // closes before the answer, and callers retry it as such.
                    let failure = match error {
                        WireError::Io(_) | WireError::Closed => ClientError::Closed,
                        other => ClientError::Wire(other),
                    };
                    let _ = reply.send(Err(failure));
                    break;
                }
                waiting.insert(correlation_id, (reply, slot));
            }
            incoming = framed.next() => {
                let Some(Ok(envelope)) = incoming else { break };
                if let Some((reply, _slot)) = waiting.remove(&envelope.correlation_id) {
                    let _ = reply.send(into_result(envelope.body));
                }
            }
        }
    }
    for (_, (reply, _slot)) in waiting.drain() {
        let _ = reply.send(Err(ClientError::Closed));
    }
}

fn into_result(body: Option<Body>) -> Result<Body, ClientError> {
    match body {
        Some(Body::Error(error)) => Err(ClientError::Server(error)),
        Some(body) => Ok(body),
        None => Err(ClientError::Wire(WireError::UnexpectedMessage {
            expected: "a response",
            got: "an envelope without a body",
        })),
    }
}
