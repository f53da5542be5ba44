//! Three real nodes on loopback TCP in one process: topics through the metadata group,
//! produce to partition leaders, fetch from every replica, and errors for bad requests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use raftlog::batch::RecordBatchBuilder;
use raftlog::client::{ConnectOptions, Connection};
use raftlog::config::NodeConfig;
use raftlog::daemon::Daemon;
use raftlog::proto::envelope::Body;
use raftlog::proto::*;
use tokio::time::{sleep, timeout};

mod support;
use support::client::to_leader;
use support::cluster::free_address;

const BOUND: Duration = Duration::from_secs(30);

/// Configurations of an `nodes`-node cluster on free loopback ports with fast ticks.
fn cluster_configs(dir: &std::path::Path, nodes: u64) -> Vec<NodeConfig> {
    let clients: Vec<SocketAddr> = (0..nodes).map(|_| free_address()).collect();
    let peers: Vec<SocketAddr> = (0..nodes).map(|_| free_address()).collect();
    let peer_map: BTreeMap<u64, String> = (1..=nodes)
        .map(|id| (id, peers[id as usize - 1].to_string()))
        .collect();
    (1..=nodes)
        .map(|id| {
            let mut config = NodeConfig::new(id, dir.join(format!("node-{id}")), peer_map.clone());
            config.client_listen = clients[id as usize - 1];
            config.peer_listen = peers[id as usize - 1];
            config.metrics_listen = free_address();
            config.raft.tick_interval_ms = 20;
            config
        })
        .collect()
}

async fn start_all(configs: &[NodeConfig]) -> Vec<Daemon> {
    let mut running = Vec::new();
    for config in configs {
        running.push(Daemon::start(config.clone()).await.unwrap());
    }
    running
}

async fn start_cluster(dir: &std::path::Path, nodes: u64) -> Vec<Daemon> {
    start_all(&cluster_configs(dir, nodes)).await
}

/// Three nodes, a connection to each, and a one-partition topic replicated on all three.
async fn cluster_with_topic(dir: &std::path::Path, topic: &str) -> (Vec<Daemon>, Vec<Connection>) {
    let cluster = start_cluster(dir, 3).await;
    let mut connections = Vec::new();
    for node in &cluster {
        connections.push(connect(node).await);
    }
    let create = Body::CreateTopic(CreateTopicRequest {
        name: topic.into(),
        partitions: 1,
        replication_factor: 3,
        ..Default::default()
    });
    to_leader(&connections, create).await;
    (cluster, connections)
}

/// The id of the node that leads the (single) partition right now.
fn partition_leader(cluster: &[Daemon]) -> u64 {
    let leads = |node: &&Daemon| {
        let partitions = node.node.local_partitions();
        partitions
            .iter()
            .any(|p| p.handle.status().role == Some(raftlog::raft::Role::Leader))
    };
    cluster
        .iter()
        .find(leads)
        .map(|n| n.node.id())
        .expect("a partition leader")
}

async fn connect(node: &Daemon) -> Connection {
    let options = ConnectOptions::default();
    Connection::connect(&node.client_address.to_string(), &options)
        .await
        .unwrap()
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
            let answer = to_leader(&connections, produce).await;
            let Body::ProduceResponse(produced) = answer else {
                panic!("produce failed: {answer:?}")
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

fn produce(topic: &str, partition: u32, values: &[String]) -> Body {
    let refs: Vec<&str> = values.iter().map(String::as_str).collect();
    Body::Produce(ProduceRequest {
        topic: topic.into(),
        partition,
        acks: Acks::All as i32,
        batch: batch(&refs),
        timeout_ms: 10_000,
    })
}

fn fetch(topic: &str, offset: u64) -> Body {
    Body::Fetch(FetchRequest {
        topic: topic.into(),
        partition: 0,
        offset,
        max_bytes: 1 << 20,
        max_wait_ms: 50,
        min_bytes: 1,
    })
}

/// Every record value of partition 0 from `offset` to the high watermark, read from one node.
async fn read_all(connection: &Connection, topic: &str, mut offset: u64) -> Vec<(u64, String)> {
    let mut records = Vec::new();
    loop {
        let Body::FetchResponse(fetched) = connection.request(fetch(topic, offset)).await.unwrap()
        else {
            panic!()
        };
        for stored in &fetched.batches {
            let batch: RecordBatch = prost::Message::decode(stored.batch.clone()).unwrap();
            for (i, record) in raftlog::batch::decode_records(&batch).enumerate() {
                let at = stored.base_offset + i as u64;
                if at >= offset {
                    records.push((
                        at,
                        String::from_utf8(record.unwrap().value.to_vec()).unwrap(),
                    ));
                }
            }
            offset = stored.base_offset + u64::from(stored.record_count);
        }
        if offset >= fetched.high_watermark {
            return records;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_on_the_client_port_is_refused_without_disturbing_other_clients() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let cluster = start_cluster(dir.path(), 1).await;
    let address = cluster[0].client_address;
    let good = connect(&cluster[0]).await;
    let create = Body::CreateTopic(CreateTopicRequest {
        name: "t".into(),
        partitions: 1,
        replication_factor: 1,
        ..Default::default()
    });
    to_leader(std::slice::from_ref(&good), create).await;

    /// Sends raw bytes and returns what the server answered before closing.
    async fn send_raw(address: SocketAddr, bytes: &[u8]) -> Vec<u8> {
        let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
        socket.write_all(bytes).await.unwrap();
        let _ = socket.shutdown().await;
        let mut answer = Vec::new();
        timeout(BOUND, socket.read_to_end(&mut answer))
            .await
            .expect("the server closes")
            .ok();
        answer
    }
    let mut random = vec![0u8; 4096];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for byte in random.iter_mut() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        *byte = seed as u8;
    }
    let oversized = u32::MAX.to_be_bytes();
    let truncated = [0u8, 0, 1, 0, 1, 2, 3];
    let mut wrong_cluster = bytes::BytesMut::new();
    let hello = raftlog::wire::handshake::handshake_envelope(
        "other-cluster",
        ConnectionRole::Client,
        0,
        "t",
    );
    raftlog::wire::encode_frame(&hello, &mut wrong_cluster, 1 << 20).unwrap();
    for (what, bytes) in [
        ("random bytes", &random[..]),
        ("an oversized length", &oversized[..]),
        ("a truncated frame", &truncated[..]),
        ("another cluster's handshake", &wrong_cluster[..]),
    ] {
        let answer = send_raw(address, bytes).await;
        let mut buf = bytes::BytesMut::from(&answer[..]);
        if let Ok(Some(frame)) = raftlog::wire::decode_frame(&mut buf, 1 << 20) {
            let envelope = raftlog::wire::decode_envelope(frame).unwrap();
            assert!(
                matches!(envelope.body, Some(Body::Error(_))),
                "{what}: answered {envelope:?}"
            );
        }
    }
    // After a valid handshake, a malformed frame gets MALFORMED_FRAME and a close.
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    let mut hello_bytes = bytes::BytesMut::new();
    let hello =
        raftlog::wire::handshake::handshake_envelope("raftlog", ConnectionRole::Client, 0, "t");
    raftlog::wire::encode_frame(&hello, &mut hello_bytes, 1 << 20).unwrap();
    socket.write_all(&hello_bytes).await.unwrap();
    socket
        .write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    let mut answer = Vec::new();
    timeout(BOUND, socket.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let mut buf = bytes::BytesMut::from(&answer[..]);
    let _handshake = raftlog::wire::decode_frame(&mut buf, 1 << 20)
        .unwrap()
        .unwrap();
    let error = raftlog::wire::decode_envelope(
        raftlog::wire::decode_frame(&mut buf, 1 << 20)
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    let Some(Body::Error(error)) = error.body else {
        panic!("no error answer")
    };
    assert_eq!(error.code(), ErrorCode::MalformedFrame);

    // The well-behaved client was never disturbed.
    let Body::ProduceResponse(_) = good
        .request(produce("t", 0, &["still fine".to_string()]))
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(
        read_all(&good, "t", 0).await,
        vec![(0, "still fine".to_string())]
    );
    for node in cluster {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_behind_retention_gets_a_snapshot_and_serves_reads() {
    let dir = tempfile::tempdir().unwrap();
    let mut configs = cluster_configs(dir.path(), 3);
    for config in &mut configs {
        config.storage.segment_bytes = 128 * 1024;
        config.server.batch_bytes_max = 8 * 1024;
        config.raft.append_message_bytes_max = 128 * 1024;
        config.storage.retention_check_interval_ms = 50;
    }
    let mut cluster = start_all(&configs).await;
    let mut connections = Vec::new();
    for node in &cluster {
        connections.push(connect(node).await);
    }
    let create = Body::CreateTopic(CreateTopicRequest {
        name: "short".into(),
        partitions: 1,
        replication_factor: 3,
        retention_bytes: 256 * 1024,
        ..Default::default()
    });
    to_leader(&connections, create).await;
    to_leader(&connections, produce("short", 0, &["first".to_string()])).await;

    // Stop a follower of the partition.
    let leader = timeout(BOUND, async {
        loop {
            let Body::MetadataResponse(m) = connections[0]
                .request(Body::Metadata(MetadataRequest::default()))
                .await
                .unwrap()
            else {
                panic!()
            };
            let leader = m.topics[0].partitions[0].leader_id;
            if leader != 0 {
                return leader;
            }
            sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    let stopped = if leader == 3 { 2 } else { 3 };
    let stopped_node = cluster.remove(stopped as usize - 1);
    stopped_node.shutdown().await;
    connections.remove(stopped as usize - 1);

    // Write far more than retention keeps while it is away.
    let value = "x".repeat(1000);
    for round in 0..400 {
        let values: Vec<String> = (0..4).map(|i| format!("{round}-{i}-{value}")).collect();
        to_leader(&connections, produce("short", 0, &values)).await;
    }
    let Body::FetchResponse(leader_view) = to_leader(&connections, fetch("short", 1601)).await
    else {
        panic!()
    };
    assert!(
        leader_view.log_start_offset > 0,
        "retention moved the leader's log start"
    );

    // Back it comes: it needs entries the leader no longer has, so it gets a snapshot.
    let restarted = Daemon::start(configs[stopped as usize - 1].clone())
        .await
        .unwrap();
    let connection = connect(&restarted).await;
    let caught_up = timeout(BOUND, async {
        loop {
            if let Ok(Body::FetchResponse(f)) = connection.request(fetch("short", 1600)).await {
                if f.high_watermark == 1601 {
                    return f;
                }
            }
            sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the restarted follower catches up");
    assert!(
        caught_up.log_start_offset > 0,
        "the follower's log now starts after the snapshot"
    );
    let records = read_all(&connection, "short", 1600).await;
    assert_eq!(records.len(), 1);
    assert!(records[0].1.starts_with("399-3-"));
    restarted.shutdown().await;
    for node in cluster {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_shutdown_of_a_leader_hands_leadership_away_without_losing_acknowledged_records() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, connections) = cluster_with_topic(dir.path(), "g").await;
    to_leader(&connections, produce("g", 0, &["warm-up".to_string()])).await;
    let leader_id = partition_leader(&cluster);

    let producer = {
        let connections = connections.clone();
        tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for i in 0..300 {
                let value = format!("v{i}");
                if let Body::ProduceResponse(_) =
                    to_leader(&connections, produce("g", 0, std::slice::from_ref(&value))).await
                {
                    acknowledged.push(value);
                }
            }
            acknowledged
        })
    };
    sleep(Duration::from_millis(100)).await;
    let leaving = cluster.remove(leader_id as usize - 1);
    let started = std::time::Instant::now();
    leaving.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "graceful shutdown took {:?}",
        started.elapsed()
    );
    let acknowledged = timeout(BOUND, producer).await.unwrap().unwrap();
    assert_eq!(
        acknowledged.len(),
        300,
        "every produce was eventually acknowledged"
    );

    // Read from the partition's leader: it acknowledged the last records, so its high
    // watermark covers them, while a follower learns of the last commit only with the next
    // append or heartbeat.
    let new_leader = partition_leader(&cluster);
    let survivor = connect(cluster.iter().find(|n| n.node.id() == new_leader).unwrap()).await;
    let stored: Vec<String> = read_all(&survivor, "g", 0)
        .await
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    let expected: Vec<String> = std::iter::once("warm-up".to_string())
        .chain(acknowledged)
        .collect();
    assert_eq!(
        stored, expected,
        "every acknowledged record exactly once, in order"
    );
    for node in cluster {
        node.shutdown().await;
    }
}

fn idempotent_batch(producer_id: u64, epoch: u32, base_sequence: u32, values: &[&str]) -> Body {
    let mut builder =
        RecordBatchBuilder::new(1 << 20).with_producer(producer_id, epoch, base_sequence);
    for value in values {
        builder
            .push(1_700_000_000_000, None, value.as_bytes(), &[])
            .unwrap();
    }
    Body::Produce(ProduceRequest {
        topic: "idem".into(),
        partition: 0,
        acks: Acks::All as i32,
        batch: builder.finish(),
        timeout_ms: 10_000,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retried_batches_are_deduplicated_even_by_a_new_leader() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, mut connections) = cluster_with_topic(dir.path(), "idem").await;
    let Body::InitProducerIdResponse(producer) =
        to_leader(&connections, Body::InitProducerId(InitProducerIdRequest {})).await
    else {
        panic!("no producer id")
    };
    let pid = producer.producer_id;
    assert!(pid > 0);

    let first = idempotent_batch(pid, 0, 0, &["a", "b", "c"]);
    let answer = to_leader(&connections, first.clone()).await;
    let Body::ProduceResponse(written) = answer else {
        panic!("not written: {answer:?}")
    };
    assert_eq!(written.base_offset, 0);
    let Body::Error(duplicate) = to_leader(&connections, first.clone()).await else {
        panic!("retry appended")
    };
    assert_eq!(
        (duplicate.code(), duplicate.duplicate_offset),
        (ErrorCode::DuplicateSequence, 0)
    );
    let Body::Error(gap) = to_leader(&connections, idempotent_batch(pid, 0, 5, &["x"])).await
    else {
        panic!()
    };
    assert_eq!(gap.code(), ErrorCode::OutOfOrderSequence, "{}", gap.message);

    // Leadership moves; the new leader knows the batch from its own log.
    let leader_id = partition_leader(&cluster);
    let leaving = cluster.remove(leader_id as usize - 1);
    connections.remove(leader_id as usize - 1);
    leaving.shutdown().await;
    let Body::Error(duplicate) = to_leader(&connections, first).await else {
        panic!("retry appended after failover")
    };
    assert_eq!(
        (duplicate.code(), duplicate.duplicate_offset),
        (ErrorCode::DuplicateSequence, 0)
    );
    let Body::ProduceResponse(next) =
        to_leader(&connections, idempotent_batch(pid, 0, 3, &["d"])).await
    else {
        panic!()
    };
    assert_eq!(next.base_offset, 3);
    let Body::ProduceResponse(_) =
        to_leader(&connections, idempotent_batch(pid, 0, 4, &["e"])).await
    else {
        panic!("the next sequence is appended")
    };
    // A newer epoch of the same producer id fences the older one.
    let Body::ProduceResponse(_) =
        to_leader(&connections, idempotent_batch(pid, 1, 0, &["f"])).await
    else {
        panic!("a new epoch starts at sequence 0")
    };
    let Body::Error(fenced) =
        to_leader(&connections, idempotent_batch(pid, 0, 5, &["zombie"])).await
    else {
        panic!("a fenced producer appended")
    };
    assert_eq!(
        fenced.code(),
        ErrorCode::ProducerFenced,
        "{}",
        fenced.message
    );
    // The node read may be a follower that learns the last commit only with the leader's
    // next message, so read until its high watermark has caught up (or the bound passes).
    let deadline = std::time::Instant::now() + BOUND;
    let stored = loop {
        let stored: Vec<String> = read_all(&connections[0], "idem", 0)
            .await
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        if stored.len() >= 6 || std::time::Instant::now() > deadline {
            break stored;
        }
        sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        stored,
        ["a", "b", "c", "d", "e", "f"].map(String::from).to_vec()
    );
    for node in cluster {
        node.shutdown().await;
    }
}
