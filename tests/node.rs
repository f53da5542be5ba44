//! Three real nodes on loopback TCP in one process: topics through the metadata group,
//! produce to partition leaders, fetch from every replica, and errors for bad requests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use raftlog::batch::RecordBatchBuilder;
use raftlog::client::{ClientError, ConnectOptions, Connection};
use raftlog::config::NodeConfig;
use raftlog::node::{Node, RunningNode};
use raftlog::proto::envelope::Body;
use raftlog::proto::*;
use tokio::time::{sleep, timeout};

const BOUND: Duration = Duration::from_secs(30);

fn free_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

async fn start_cluster(dir: &std::path::Path, nodes: u64) -> Vec<RunningNode> {
    let clients: Vec<SocketAddr> = (0..nodes).map(|_| free_address()).collect();
    let peers: Vec<SocketAddr> = (0..nodes).map(|_| free_address()).collect();
    let peer_map: BTreeMap<u64, String> = (1..=nodes)
        .map(|id| (id, peers[id as usize - 1].to_string()))
        .collect();
    let mut running = Vec::new();
    for id in 1..=nodes {
        let mut config = NodeConfig::new(id, dir.join(format!("node-{id}")), peer_map.clone());
        config.client_listen = clients[id as usize - 1];
        config.peer_listen = peers[id as usize - 1];
        config.metrics_listen = free_address();
        config.raft.tick_interval_ms = 20;
        running.push(Node::start(config).await.unwrap());
    }
    running
}

async fn connect(node: &RunningNode) -> Connection {
    let options = ConnectOptions::default();
    Connection::connect(&node.client_address.to_string(), &options)
        .await
        .unwrap()
}

/// Sends `body` to each node in turn until one accepts it (following NOT_LEADER).
async fn to_leader(connections: &[Connection], body: Body) -> Body {
    timeout(BOUND, async {
        loop {
            for connection in connections {
                match connection.request(body.clone()).await {
                    Ok(answer) => return answer,
                    Err(ClientError::Server(error)) if error.code() == ErrorCode::NotLeader => {
                        continue
                    }
                    Err(ClientError::Server(error)) => return Body::Error(error),
                    Err(other) => panic!("unexpected error: {other}"),
                }
            }
            sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a leader answers within the bound")
}

fn batch(values: &[&str]) -> bytes::Bytes {
    let mut builder = RecordBatchBuilder::new(1 << 20);
    for value in values {
        builder
            .push(1_700_000_000_000, None, value.as_bytes(), &[])
            .unwrap();
    }
    builder.finish()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_create_produce_and_serve_reads_from_every_replica() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start_cluster(dir.path(), 3).await;
    let mut connections = Vec::new();
    for node in &cluster {
        connections.push(connect(node).await);
    }

    let create = Body::CreateTopic(CreateTopicRequest {
        name: "orders".into(),
        partitions: 3,
        replication_factor: 3,
        ..Default::default()
    });
    let Body::CreateTopicResponse(created) = to_leader(&connections, create.clone()).await else {
        panic!()
    };
    assert_eq!(created.topic.unwrap().partitions.len(), 3);
    let Body::Error(exists) = to_leader(&connections, create).await else {
        panic!("created twice")
    };
    assert_eq!(exists.code(), ErrorCode::TopicExists);

    for partition in 0..3u32 {
        for round in 0..5 {
            let values: Vec<String> = (0..10)
                .map(|i| format!("p{partition}-r{round}-{i}"))
                .collect();
            let refs: Vec<&str> = values.iter().map(String::as_str).collect();
            let produce = Body::Produce(ProduceRequest {
                topic: "orders".into(),
                partition,
                acks: Acks::All as i32,
                batch: batch(&refs),
                timeout_ms: 10_000,
            });
            let Body::ProduceResponse(produced) = to_leader(&connections, produce).await else {
                panic!("produce failed")
            };
            assert_eq!(produced.base_offset, round * 10);
        }
    }

    // Every node serves the same committed batches of every partition.
    for connection in &connections {
        for partition in 0..3u32 {
            let fetched = timeout(BOUND, async {
                loop {
                    let fetch = Body::Fetch(FetchRequest {
                        topic: "orders".into(),
                        partition,
                        offset: 0,
                        max_bytes: 1 << 20,
                        max_wait_ms: 100,
                        min_bytes: 1,
                    });
                    let Body::FetchResponse(fetched) = connection.request(fetch).await.unwrap()
                    else {
                        panic!()
                    };
                    if fetched.high_watermark == 50 && fetched.batches.len() == 5 {
                        return fetched;
                    }
                }
            })
            .await
            .unwrap();
            let record_batch: RecordBatch =
                prost::Message::decode(fetched.batches[4].batch.clone()).unwrap();
            let first = raftlog::batch::decode_records(&record_batch)
                .next()
                .unwrap()
                .unwrap();
            assert_eq!(
                first.value,
                bytes::Bytes::from(format!("p{partition}-r4-0"))
            );
        }
    }

    // Bad requests get clear errors.
    let unknown = connections[0]
        .request(Body::Fetch(FetchRequest {
            topic: "nope".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Some(ErrorCode::UnknownTopic));
    let out_of_range = connections[0]
        .request(Body::Fetch(FetchRequest {
            topic: "orders".into(),
            offset: 999,
            max_wait_ms: 10,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(
        out_of_range.code(),
        Some(ErrorCode::OffsetOutOfRange),
        "{out_of_range}"
    );
    let corrupt = Body::Produce(ProduceRequest {
        topic: "orders".into(),
        partition: 0,
        batch: bytes::Bytes::from_static(b"not a batch"),
        ..Default::default()
    });
    let Body::Error(corrupt) = to_leader(&connections, corrupt).await else {
        panic!("garbage accepted")
    };
    assert_eq!(
        corrupt.code(),
        ErrorCode::CorruptBatch,
        "{}",
        corrupt.message
    );

    let Body::MetadataResponse(metadata) = connections[1]
        .request(Body::Metadata(MetadataRequest::default()))
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(metadata.nodes.len(), 3);
    assert!(
        metadata.nodes.iter().all(|n| !n.client_address.is_empty()),
        "{metadata:?}"
    );
    assert!(metadata.topics[0]
        .partitions
        .iter()
        .all(|p| p.leader_id != 0));

    for node in cluster {
        node.shutdown().await;
    }
}
