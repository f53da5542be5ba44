//! Real raftlog nodes in the test process, on free loopback ports, for end-to-end client
//! tests. Every node is shut down by [`RealCluster::shutdown`]; the data lives in a temporary
//! directory removed on drop.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;

use raftlog::config::NodeConfig;
use raftlog::daemon::Daemon;

/// A running cluster of real nodes.
pub struct RealCluster {
    /// The nodes, node 1 first.
    pub nodes: Vec<Daemon>,
    /// Holds the data directories until the cluster is dropped.
    pub dir: tempfile::TempDir,
}

fn free_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

async fn try_start(
    dir: &std::path::Path,
    count: u64,
    attempt: u32,
) -> Result<Vec<Daemon>, raftlog::daemon::DaemonError> {
    let clients: Vec<SocketAddr> = (0..count).map(|_| free_address()).collect();
    let peers: Vec<SocketAddr> = (0..count).map(|_| free_address()).collect();
    let peer_map: BTreeMap<u64, String> = (1..=count)
        .map(|id| (id, peers[id as usize - 1].to_string()))
        .collect();
    let mut nodes = Vec::new();
    for id in 1..=count {
        let data = dir.join(format!("attempt-{attempt}/node-{id}"));
        let mut config = NodeConfig::new(id, data, peer_map.clone());
        config.client_listen = clients[id as usize - 1];
        config.peer_listen = peers[id as usize - 1];
        config.metrics_listen = free_address();
        config.raft.tick_interval_ms = 20;
        match Daemon::start(config).await {
            Ok(node) => nodes.push(node),
            Err(error) => {
                for node in nodes {
                    node.shutdown().await;
                }
                return Err(error);
            }
        }
    }
    Ok(nodes)
}

impl RealCluster {
    /// Starts `count` nodes with short Raft ticks, so that elections take milliseconds.
    ///
    /// Free ports are found by binding port 0 and letting go, so another socket can take one
    /// before its node binds it; a start that fails that way is retried on new ports.
    pub async fn start(count: u64) -> RealCluster {
        const ATTEMPTS_MAX: u32 = 5;
        let dir = tempfile::tempdir().unwrap();
        for attempt in 1..=ATTEMPTS_MAX {
            match try_start(dir.path(), count, attempt).await {
                Ok(nodes) => return RealCluster { nodes, dir },
                Err(error) if attempt < ATTEMPTS_MAX => {
                    eprintln!("cluster start attempt {attempt} failed ({error}); retrying");
                }
                Err(error) => panic!("cannot start a cluster: {error}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Client address of node `index` (0-based).
    pub fn address(&self, index: usize) -> String {
        self.nodes[index].client_address.to_string()
    }

    /// Every node's client address, comma-separated.
    pub fn bootstrap(&self) -> String {
        let addresses: Vec<String> = (0..self.nodes.len()).map(|i| self.address(i)).collect();
        addresses.join(",")
    }

    /// Fetches parked at the high watermark of `topic`'s partitions, over every node: a
    /// consumer that is tailing the topic has one parked on each partition's leader most of
    /// the time.
    pub fn fetch_waiters(&self, topic: &str) -> u64 {
        self.nodes
            .iter()
            .flat_map(|daemon| daemon.node.local_partitions())
            .filter(|local| local.topic == topic)
            .map(|local| local.handle.status().fetch_waiters)
            .sum()
    }

    /// Waits (bounded) until `ready` holds, polling every 10 ms.
    pub async fn wait_until(&self, what: &str, ready: impl Fn(&RealCluster) -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !ready(self) {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting: {what}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Stops every node gracefully.
    pub async fn shutdown(self) {
        for node in self.nodes {
            node.shutdown().await;
        }
    }

    /// Stops every node at once, without the graceful hand-over (for clusters whose
    /// single-replica partitions have nobody to hand leadership to).
    pub fn abort(self) {
        for node in self.nodes {
            node.abort();
        }
    }
}
