//! A fake raftlog cluster for client tests: real TCP, the real wire protocol and handshake,
//! and an in-memory log per partition instead of Raft. One node leads everything; the others
//! answer leader-only requests with NOT_LEADER and a hint, as real followers do. Tests can
//! move the leadership, make the metadata name a stale leader, and damage stored batches, to
//! see the client follow hints and report corruption.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use raftlog::batch;
use raftlog::proto::envelope::Body;
use raftlog::proto::*;
use raftlog::wire::{error_envelope, handshake, EnvelopeCodec};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::Framed;

/// The state every fake node shares.
#[derive(Default)]
pub struct State {
    /// Node id and client address, by node.
    pub nodes: Vec<(u64, String)>,
    /// The node that leads every group.
    pub leader: u64,
    /// If set, Metadata names this node as every leader (a stale view).
    pub advertised_leader: Option<u64>,
    /// Topic name → (replication factor, partitions' batches).
    pub topics: BTreeMap<String, (u32, Vec<Vec<FetchedBatch>>)>,
    /// (group, topic, partition) → committed offset.
    pub groups: HashMap<(String, String, u32), u64>,
    /// Produce requests accepted.
    pub produce_requests: u64,
    /// Encoded size and record count of every accepted batch, in arrival order.
    pub batches: Vec<(usize, u32)>,
    /// NOT_LEADER answers given.
    pub not_leader_answers: u64,
}

/// A running fake cluster.
pub struct FakeCluster {
    /// Client addresses of the nodes, node 1 first.
    pub addresses: Vec<String>,
    /// Shared state, for tests to inspect and steer.
    pub state: Arc<Mutex<State>>,
}

impl FakeCluster {
    /// Starts `nodes` fake nodes on free loopback ports; node `leader` leads.
    pub async fn start(nodes: u64, leader: u64) -> FakeCluster {
        let mut listeners = Vec::new();
        let mut addresses = Vec::new();
        for _ in 0..nodes {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            addresses.push(listener.local_addr().unwrap().to_string());
            listeners.push(listener);
        }
        let state = Arc::new(Mutex::new(State {
            nodes: (1..=nodes).zip(addresses.iter().cloned()).collect(),
            leader,
            ..State::default()
        }));
        for (index, listener) in listeners.into_iter().enumerate() {
            tokio::spawn(serve(listener, index as u64 + 1, state.clone()));
        }
        FakeCluster { addresses, state }
    }

    /// The bootstrap list naming every node.
    pub fn bootstrap(&self) -> String {
        self.addresses.join(",")
    }

    /// Flips one byte inside the records of a stored batch.
    pub fn corrupt(&self, topic: &str, partition: u32, batch_index: usize) {
        let mut state = self.state.lock().unwrap();
        let stored = &mut state.topics.get_mut(topic).unwrap().1[partition as usize][batch_index];
        let mut bytes = stored.batch.to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        stored.batch = Bytes::from(bytes);
    }
}

async fn serve(listener: TcpListener, node: u64, state: Arc<Mutex<State>>) {
    while let Ok((socket, _)) = listener.accept().await {
        tokio::spawn(connection(socket, node, state.clone()));
    }
}

/// Answers requests concurrently (a fetch may long-poll) and writes answers as they finish.
async fn connection(socket: TcpStream, node: u64, state: Arc<Mutex<State>>) {
    let mut framed = Framed::new(socket, EnvelopeCodec::default());
    if handshake::accept(&mut framed, "raftlog", ConnectionRole::Client, node)
        .await
        .is_err()
    {
        return;
    }
    let (mut sink, mut stream) = framed.split();
    let (answers, mut outgoing) = mpsc::channel::<Envelope>(64);
    tokio::spawn(async move {
        while let Some(envelope) = outgoing.recv().await {
            if sink.send(envelope).await.is_err() {
                return;
            }
        }
    });
    // Produce requests are handled in arrival order (as a server keeps per-connection order
    // for a partition); everything else may overlap.
    while let Some(Ok(request)) = stream.next().await {
        let id = request.correlation_id;
        let Some(body) = request.body else { return };
        let answers = answers.clone();
        let state = state.clone();
        if matches!(body, Body::Produce(_)) {
            let envelope = answer(id, handle(node, &state, body).await);
            let _ = answers.send(envelope).await;
        } else {
            tokio::spawn(async move {
                let envelope = answer(id, handle(node, &state, body).await);
                let _ = answers.send(envelope).await;
            });
        }
    }
}

fn answer(correlation_id: u64, result: Result<Body, Error>) -> Envelope {
    match result {
        Ok(body) => Envelope {
            correlation_id,
            body: Some(body),
        },
        Err(error) => error_envelope(correlation_id, error),
    }
}

fn error(code: ErrorCode, message: &str) -> Error {
    Error {
        code: code as i32,
        message: message.into(),
        ..Default::default()
    }
}

fn not_leader(state: &mut State) -> Error {
    state.not_leader_answers += 1;
    let leader = state.leader;
    let address = state
        .nodes
        .iter()
        .find(|(id, _)| *id == leader)
        .map(|(_, a)| a.clone())
        .unwrap_or_default();
    Error {
        code: ErrorCode::NotLeader as i32,
        message: format!("node {leader} leads"),
        leader_id: leader,
        leader_address: address,
        ..Default::default()
    }
}

async fn handle(node: u64, shared: &Mutex<State>, body: Body) -> Result<Body, Error> {
    if let Body::Fetch(fetch) = body {
        return fetch_long_poll(shared, fetch).await;
    }
    let mut state = shared.lock().unwrap();
    let leads = state.leader == node;
    match body {
        Body::Metadata(_) => Ok(Body::MetadataResponse(metadata(&state))),
        Body::ListTopics(_) => Ok(Body::ListTopicsResponse(ListTopicsResponse {
            topics: metadata(&state).topics,
        })),
        Body::CreateTopic(_) | Body::DeleteTopic(_) | Body::OffsetCommit(_) | Body::Produce(_)
            if !leads =>
        {
            Err(not_leader(&mut state))
        }
        Body::CreateTopic(create) => {
            if state.topics.contains_key(&create.name) {
                return Err(error(ErrorCode::TopicExists, "topic exists"));
            }
            if create.partitions == 0 || create.replication_factor as usize > state.nodes.len() {
                return Err(error(
                    ErrorCode::InvalidRequest,
                    "bad partitions or replication",
                ));
            }
            let partitions = vec![Vec::new(); create.partitions as usize];
            state
                .topics
                .insert(create.name.clone(), (create.replication_factor, partitions));
            let topic = metadata(&state)
                .topics
                .into_iter()
                .find(|t| t.name == create.name);
            Ok(Body::CreateTopicResponse(CreateTopicResponse { topic }))
        }
        Body::DeleteTopic(delete) => match state.topics.remove(&delete.name) {
            Some(_) => Ok(Body::DeleteTopicResponse(DeleteTopicResponse {})),
            None => Err(error(ErrorCode::UnknownTopic, "unknown topic")),
        },
        Body::Produce(produce) => {
            let validated = batch::validate(&produce.batch, 1 << 20)
                .map_err(|e| error(e.code(), &e.to_string()))?;
            state.produce_requests += 1;
            let size = (produce.batch.len(), validated.record_count());
            state.batches.push(size);
            let Some((_, partitions)) = state.topics.get_mut(&produce.topic) else {
                return Err(error(ErrorCode::UnknownTopic, "unknown topic"));
            };
            let Some(log) = partitions.get_mut(produce.partition as usize) else {
                return Err(error(ErrorCode::UnknownPartition, "unknown partition"));
            };
            let base_offset = high_watermark(log);
            log.push(FetchedBatch {
                base_offset,
                record_count: validated.record_count(),
                timestamp_ms: 1_700_000_000_000,
                batch: produce.batch,
            });
            Ok(Body::ProduceResponse(ProduceResponse {
                base_offset,
                timestamp_ms: 1_700_000_000_000,
                high_watermark: base_offset + u64::from(validated.record_count()),
            }))
        }
        Body::OffsetCommit(commit) => {
            for offset in commit.offsets {
                let key = (commit.group.clone(), commit.topic.clone(), offset.partition);
                state.groups.insert(key, offset.offset);
            }
            Ok(Body::OffsetCommitResponse(OffsetCommitResponse {}))
        }
        Body::OffsetFetch(fetch) => {
            let offsets = fetch
                .partitions
                .iter()
                .map(|&partition| {
                    let key = (fetch.group.clone(), fetch.topic.clone(), partition);
                    let stored = state.groups.get(&key).copied();
                    PartitionOffset {
                        partition,
                        offset: stored.unwrap_or(0),
                        committed: stored.is_some(),
                    }
                })
                .collect();
            Ok(Body::OffsetFetchResponse(OffsetFetchResponse { offsets }))
        }
        _ => Err(error(
            ErrorCode::InvalidRequest,
            "not supported by the fake",
        )),
    }
}

fn high_watermark(log: &[FetchedBatch]) -> u64 {
    log.last()
        .map_or(0, |b| b.base_offset + u64::from(b.record_count))
}

fn metadata(state: &State) -> MetadataResponse {
    let leader = state.advertised_leader.unwrap_or(state.leader);
    let replicas: Vec<u64> = state.nodes.iter().map(|(id, _)| *id).collect();
    MetadataResponse {
        nodes: state
            .nodes
            .iter()
            .map(|(id, address)| NodeInfo {
                node_id: *id,
                client_address: address.clone(),
                peer_address: String::new(),
            })
            .collect(),
        topics: state
            .topics
            .iter()
            .map(|(name, (factor, partitions))| TopicInfo {
                name: name.clone(),
                replication_factor: *factor,
                partitions: partitions
                    .iter()
                    .enumerate()
                    .map(|(p, log)| PartitionInfo {
                        partition: p as u32,
                        group_id: p as u64 + 1,
                        leader_id: leader,
                        replicas: replicas.clone(),
                        term: 1,
                        log_start_offset: 0,
                        high_watermark: high_watermark(log),
                    })
                    .collect(),
                ..Default::default()
            })
            .collect(),
        metadata_leader_id: leader,
    }
}

/// Any node serves fetches (every node is a replica here); waits up to max_wait at the end.
async fn fetch_long_poll(shared: &Mutex<State>, fetch: FetchRequest) -> Result<Body, Error> {
    let waited_ms_max = u64::from(fetch.max_wait_ms);
    let mut waited_ms = 0;
    loop {
        {
            let state = shared.lock().unwrap();
            let Some((_, partitions)) = state.topics.get(&fetch.topic) else {
                return Err(error(ErrorCode::UnknownTopic, "unknown topic"));
            };
            let Some(log) = partitions.get(fetch.partition as usize) else {
                return Err(error(ErrorCode::UnknownPartition, "unknown partition"));
            };
            let high_watermark = high_watermark(log);
            if fetch.offset > high_watermark {
                return Err(Error {
                    code: ErrorCode::OffsetOutOfRange as i32,
                    message: format!("offset {} is past the end", fetch.offset),
                    log_start_offset: 0,
                    high_watermark,
                    ..Default::default()
                });
            }
            let mut batches = Vec::new();
            let mut bytes = 0;
            for batch in log {
                if batch.base_offset + u64::from(batch.record_count) <= fetch.offset {
                    continue;
                }
                if !batches.is_empty() && bytes + batch.batch.len() > fetch.max_bytes as usize {
                    break;
                }
                bytes += batch.batch.len();
                batches.push(batch.clone());
            }
            if !batches.is_empty() || waited_ms >= waited_ms_max {
                return Ok(Body::FetchResponse(FetchResponse {
                    batches,
                    high_watermark,
                    log_start_offset: 0,
                }));
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited_ms += 10;
    }
}
