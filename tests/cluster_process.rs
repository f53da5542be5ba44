//! Real `raftlog serve` processes on loopback: kill -9 a partition leader while producing,
//! restart it, and check that every acknowledged record is stored exactly once, in one order,
//! on every node.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use raftlog::batch::RecordBatchBuilder;
use raftlog::client::{ClientError, ConnectOptions, Connection};
use raftlog::proto::envelope::Body;
use raftlog::proto::*;
use tokio::time::{sleep, timeout};

const BOUND: Duration = Duration::from_secs(60);

fn free_address() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A cluster of `raftlog serve` processes, killed by PID when dropped.
struct ProcessCluster {
    dir: tempfile::TempDir,
    clients: Vec<SocketAddr>,
    peers: Vec<SocketAddr>,
    children: HashMap<u64, Child>,
}

impl ProcessCluster {
    fn start(nodes: u64) -> ProcessCluster {
        let mut cluster = ProcessCluster {
            dir: tempfile::tempdir().unwrap(),
            clients: (0..nodes).map(|_| free_address()).collect(),
            peers: (0..nodes).map(|_| free_address()).collect(),
            children: HashMap::new(),
        };
        for id in 1..=nodes {
            cluster.spawn(id);
        }
        cluster
    }

    fn spawn(&mut self, id: u64) {
        let peers: Vec<String> = self
            .peers
            .iter()
            .enumerate()
            .map(|(i, address)| format!("{}={address}", i + 1))
            .collect();
        let log = std::fs::File::create(self.dir.path().join(format!("node-{id}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_raftlog"))
            .arg("serve")
            .args(["--id", &id.to_string()])
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("node-{id}")))
            .args(["--listen", &self.clients[id as usize - 1].to_string()])
            .args(["--peer-listen", &self.peers[id as usize - 1].to_string()])
            .args(["--metrics-listen", &free_address().to_string()])
            .args(["--peers", &peers.join(",")])
            .env("RAFTLOG_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("raftlog serve starts");
        self.children.insert(id, child);
    }

    /// SIGKILL: no graceful shutdown, no final sync.
    fn kill(&mut self, id: u64) {
        let mut child = self.children.remove(&id).expect("node is running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn addresses(&self) -> Vec<String> {
        self.clients.iter().map(SocketAddr::to_string).collect()
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A minimal client that reconnects and follows NOT_LEADER hints among known nodes.
struct Client {
    addresses: Vec<String>,
    connections: HashMap<usize, Connection>,
}

/// How a request ended, as a Jepsen-style history records it.
enum Outcome {
    Ok(Body),
    /// Refused before anything was written: safe to retry.
    Refused,
    /// May or may not have taken effect (connection lost, timeout).
    Indeterminate,
}

impl Client {
    fn new(addresses: Vec<String>) -> Client {
        Client {
            addresses,
            connections: HashMap::new(),
        }
    }

    async fn connection(&mut self, node: usize) -> Option<Connection> {
        if let Some(connection) = self.connections.get(&node).filter(|c| !c.is_closed()) {
            return Some(connection.clone());
        }
        let options = ConnectOptions {
            connect_timeout: Duration::from_millis(500),
            ..Default::default()
        };
        let connection = Connection::connect(&self.addresses[node], &options)
            .await
            .ok()?;
        self.connections.insert(node, connection.clone());
        Some(connection)
    }

    async fn send(&mut self, node: usize, body: Body) -> Outcome {
        let Some(connection) = self.connection(node).await else {
            return Outcome::Refused;
        };
        match timeout(Duration::from_secs(5), connection.request(body)).await {
            Ok(Ok(answer)) => Outcome::Ok(answer),
            Ok(Err(ClientError::Server(error)))
                if matches!(
                    error.code(),
                    ErrorCode::NotLeader | ErrorCode::UnknownTopic | ErrorCode::ResourceExhausted
                ) && !error.message.contains("changed before the write committed") =>
            {
                Outcome::Refused
            }
            Ok(Err(_)) => {
                self.connections.remove(&node);
                Outcome::Indeterminate
            }
            Err(_) => {
                self.connections.remove(&node);
                Outcome::Indeterminate
            }
        }
    }

    /// Sends to each node in turn until one answers, retrying refusals within the bound.
    async fn send_to_any(&mut self, body: Body) -> Outcome {
        let deadline = Instant::now() + BOUND;
        loop {
            for node in 0..self.addresses.len() {
                match self.send(node, body.clone()).await {
                    Outcome::Refused => continue,
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

fn produce(value: &str) -> Body {
    let mut builder = RecordBatchBuilder::new(1 << 20);
    builder
        .push(1_700_000_000_000, None, value.as_bytes(), &[])
        .unwrap();
    Body::Produce(ProduceRequest {
        topic: "k".into(),
        partition: 0,
        acks: Acks::All as i32,
        batch: builder.finish(),
        timeout_ms: 5_000,
    })
}

/// Every record of partition 0, read from one node: (offset, value), up to its high watermark.
async fn read_all(connection: &Connection) -> (Vec<(u64, String)>, u64) {
    let mut records = Vec::new();
    let mut offset = 0;
    loop {
        let fetch = Body::Fetch(FetchRequest {
            topic: "k".into(),
            partition: 0,
            offset,
            max_bytes: 1 << 20,
            max_wait_ms: 10,
            min_bytes: 1,
        });
        let Body::FetchResponse(fetched) = connection.request(fetch).await.unwrap() else {
            panic!()
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

async fn partition_leader(client: &mut Client) -> Option<u64> {
    for node in 0..client.addresses.len() {
        if let Outcome::Ok(Body::MetadataResponse(m)) = client
            .send(node, Body::Metadata(MetadataRequest::default()))
            .await
        {
            let leader = m
                .topics
                .first()
                .and_then(|t| t.partitions.first())
                .map_or(0, |p| p.leader_id);
            if leader != 0 {
                return Some(leader);
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_loses_no_acknowledged_record_and_the_node_catches_up() {
    let mut cluster = ProcessCluster::start(3);
    let mut client = Client::new(cluster.addresses());
    let create = Body::CreateTopic(CreateTopicRequest {
        name: "k".into(),
        partitions: 1,
        replication_factor: 3,
        ..Default::default()
    });
    let created = client.send_to_any(create).await;
    assert!(
        matches!(created, Outcome::Ok(Body::CreateTopicResponse(_))),
        "topic created"
    );

    let mut acknowledged: BTreeMap<String, u64> = BTreeMap::new();
    let mut indeterminate: HashSet<String> = HashSet::new();
    let mut killed = None;
    let mut acknowledged_after_kill = 0;
    let started = Instant::now();
    for i in 0.. {
        let elapsed = started.elapsed();
        if killed.is_none() && elapsed > Duration::from_secs(1) {
            let leader = timeout(BOUND, async {
                loop {
                    if let Some(leader) = partition_leader(&mut client).await {
                        return leader;
                    }
                    sleep(Duration::from_millis(20)).await;
                }
            })
            .await
            .unwrap();
            cluster.kill(leader);
            killed = Some(leader);
        }
        if elapsed > Duration::from_secs(5) && acknowledged_after_kill >= 50 {
            break;
        }
        assert!(
            elapsed < BOUND,
            "producing stalled after the kill ({acknowledged_after_kill} acknowledged since)"
        );
        let value = format!("v{i}");
        match client.send_to_any(produce(&value)).await {
            Outcome::Ok(Body::ProduceResponse(response)) => {
                acknowledged.insert(value, response.base_offset);
                acknowledged_after_kill += u64::from(killed.is_some());
            }
            Outcome::Ok(other) => panic!("unexpected answer {other:?}"),
            Outcome::Indeterminate | Outcome::Refused => {
                indeterminate.insert(value);
            }
        }
    }
    let killed = killed.unwrap();
    cluster.spawn(killed);

    // Every node, the restarted one included, ends with the same records in the same order.
    let mut stored_by_node = Vec::new();
    for node in 0..3 {
        let stored = timeout(BOUND, async {
            loop {
                if let Some(connection) = client.connection(node).await {
                    if let Ok(Body::FetchResponse(f)) = connection
                        .request(Body::Fetch(FetchRequest {
                            topic: "k".into(),
                            max_wait_ms: 10,
                            max_bytes: 1,
                            ..Default::default()
                        }))
                        .await
                    {
                        let target = acknowledged.values().max().copied().unwrap_or(0) + 1;
                        if f.high_watermark >= target {
                            return read_all(&connection).await;
                        }
                    }
                }
                sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("node {} did not catch up", node + 1));
        stored_by_node.push(stored);
    }
    let (reference, high_watermark) = &stored_by_node[0];
    for (stored, hw) in &stored_by_node[1..] {
        let common = (*hw).min(*high_watermark) as usize;
        assert_eq!(
            &stored[..common],
            &reference[..common],
            "every node stores one order"
        );
    }
    let offsets: Vec<u64> = reference.iter().map(|(o, _)| *o).collect();
    assert_eq!(
        offsets,
        (0..reference.len() as u64).collect::<Vec<_>>(),
        "offsets are dense"
    );
    let mut seen: HashMap<&str, u64> = HashMap::new();
    for (offset, value) in reference {
        assert!(
            seen.insert(value, *offset).is_none(),
            "{value} stored twice"
        );
        assert!(
            acknowledged.contains_key(value) || indeterminate.contains(value),
            "{value} was never sent"
        );
    }
    for (value, offset) in &acknowledged {
        assert_eq!(
            seen.get(value.as_str()),
            Some(offset),
            "acknowledged {value} at {offset} is stored there"
        );
    }
    eprintln!(
        "killed node {killed}: {} acknowledged ({} after the kill), {} indeterminate, {} stored",
        acknowledged.len(),
        acknowledged_after_kill,
        indeterminate.len(),
        reference.len()
    );
}
