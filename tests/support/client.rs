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

/// A produce of one record with value `value` to `topic`/`partition`, acks=all.
pub fn produce_one(topic: &str, partition: u32, value: &str) -> Body {
    let mut builder = raftlog::batch::RecordBatchBuilder::new(1 << 20);
    builder
        .push(1_700_000_000_000, None, value.as_bytes(), &[])
        .unwrap();
    Body::Produce(ProduceRequest {
        topic: topic.into(),
        partition,
        acks: Acks::All as i32,
        batch: builder.finish(),
        timeout_ms: 5_000,
    })
}

/// Every record of `topic`/`partition` that `connection`'s node serves, as (offset, value)
/// up to its high watermark, with that high watermark.
pub async fn read_partition(
    connection: &Connection,
    topic: &str,
    partition: u32,
) -> (Vec<(u64, String)>, u64) {
    let mut records = Vec::new();
    let mut offset = 0;
    loop {
        let fetch = Body::Fetch(FetchRequest {
            topic: topic.into(),
            partition,
            offset,
            max_bytes: 1 << 20,
            max_wait_ms: 10,
            min_bytes: 1,
        });
        let Body::FetchResponse(fetched) = connection.request(fetch).await.unwrap() else {
            panic!("not a fetch response")
        };
        for stored in &fetched.batches {
            let batch: RecordBatch = prost::Message::decode(stored.batch.clone()).unwrap();
            for (i, record) in raftlog::batch::decode_records(&batch).enumerate() {
                let value = String::from_utf8(record.unwrap().value.to_vec()).unwrap();
                records.push((stored.base_offset + i as u64, value));
            }
            offset = stored.base_offset + u64::from(stored.record_count);
        }
        if offset >= fetched.high_watermark {
            return (records, fetched.high_watermark);
        }
    }
}

/// The text a node's metrics listener serves at `/metrics`.
pub async fn scrape_metrics(address: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!("GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    socket.read_to_string(&mut response).await.unwrap();
    response
}
