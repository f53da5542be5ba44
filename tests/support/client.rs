//! A minimal client for the cluster tests: one lazily opened connection per node, reconnected
//! when it breaks, and answers sorted the way a Jepsen-style history needs them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use raftlog::client::{ClientError, ConnectOptions, Connection};
use raftlog::proto::envelope::Body;
use raftlog::proto::Error as ErrorMessage;
use raftlog::proto::*;
use tokio::time::{sleep, timeout};

/// How long [`Client::send_to_any`] keeps trying before it gives up.
pub const BOUND: Duration = Duration::from_secs(60);

/// How a request ended, as a Jepsen-style history records it.
#[derive(Debug)]
pub enum Outcome {
    /// The answer (never `Body::Error`).
    Ok(Body),
    /// Refused before anything was written: safe to retry. Carries the error when the node
    /// answered one (none when it could not be reached).
    Refused(Option<ErrorMessage>),
    /// The node answered an error that is neither a refusal nor indeterminate.
    Failed(ErrorMessage),
    /// May or may not have taken effect (connection lost, timeout, TIMEOUT answer).
    Indeterminate,
}

/// A reconnecting client over every node of a cluster (node `i + 1` at `addresses[i]`).
pub struct Client {
    /// Client address of node `i + 1`.
    pub addresses: Vec<String>,
    connections: HashMap<usize, Connection>,
    /// Longest wait for one answer.
    pub request_timeout: Duration,
}

impl Client {
    /// A client that has not connected anywhere yet.
    pub fn new(addresses: Vec<String>) -> Client {
        Client {
            addresses,
            connections: HashMap::new(),
            request_timeout: Duration::from_secs(5),
        }
    }

    /// The open connection to node index `node`, opening one if needed.
    pub async fn connection(&mut self, node: usize) -> Option<Connection> {
        if let Some(connection) = self.connections.get(&node).filter(|c| !c.is_closed()) {
            return Some(connection.clone());
        }
        let options = ConnectOptions {
            connect_timeout: Duration::from_millis(500),
            ..Default::default()
        };
        let connect = Connection::connect(&self.addresses[node], &options);
        let connection = timeout(Duration::from_secs(1), connect).await.ok()?.ok()?;
        self.connections.insert(node, connection.clone());
        Some(connection)
    }

    /// Sends `body` to node index `node` and sorts the answer.
    pub async fn send(&mut self, node: usize, body: Body) -> Outcome {
        let Some(connection) = self.connection(node).await else {
            return Outcome::Refused(None);
        };
        match timeout(self.request_timeout, connection.request(body)).await {
            Ok(Ok(answer)) => Outcome::Ok(answer),
            Ok(Err(ClientError::Server(error))) => classify(error),
            Ok(Err(_)) | Err(_) => {
                self.connections.remove(&node);
                Outcome::Indeterminate
            }
        }
    }

    /// Sends to each node in turn until one answers, retrying refusals within [`BOUND`].
    pub async fn send_to_any(&mut self, body: Body) -> Outcome {
        let deadline = Instant::now() + BOUND;
        loop {
            for node in 0..self.addresses.len() {
                match self.send(node, body.clone()).await {
                    Outcome::Refused(_) => continue,
                    other => return other,
                }
            }
            assert!(
                Instant::now() < deadline,
                "no node accepted the request within {BOUND:?}"
            );
            sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Refusals are answers given before anything was written; a leadership change during the
/// write, a timeout or an internal error may have left the write in the log.
fn classify(error: ErrorMessage) -> Outcome {
    let refused = matches!(
        error.code(),
        ErrorCode::NotLeader
            | ErrorCode::UnknownTopic
            | ErrorCode::UnknownPartition
            | ErrorCode::ResourceExhausted
            | ErrorCode::NotEnoughReplicas
            | ErrorCode::StorageFull
            | ErrorCode::ShuttingDown
    ) && !error.message.contains("changed before the write committed");
    if refused {
        return Outcome::Refused(Some(error));
    }
    match error.code() {
        ErrorCode::Timeout
        | ErrorCode::Internal
        | ErrorCode::NotLeader
        | ErrorCode::StorageFull => Outcome::Indeterminate,
        _ => Outcome::Failed(error),
    }
}

/// How long [`to_leader`] keeps asking.
pub const TO_LEADER_BOUND: Duration = Duration::from_secs(30);

/// Sends `body` over each connection in turn until a node accepts it (following NOT_LEADER,
/// and UNKNOWN_TOPIC from a node that has not applied a just-created topic yet); a server
/// error other than those is returned as `Body::Error`.
pub async fn to_leader(connections: &[Connection], body: Body) -> Body {
    timeout(TO_LEADER_BOUND, async {
        loop {
            for connection in connections {
                match connection.request(body.clone()).await {
                    Ok(answer) => return answer,
                    // A node may not have applied a just-created topic yet: try the next.
                    Err(ClientError::Server(error))
                        if matches!(
                            error.code(),
                            ErrorCode::NotLeader | ErrorCode::UnknownTopic
                        ) =>
                    {
                        continue
                    }
                    Err(ClientError::Server(error)) => return Body::Error(error),
                    Err(ClientError::Closed) => continue,
                    Err(other) => panic!("unexpected error: {other}"),
                }
            }
            sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a leader answers within the bound")
}
