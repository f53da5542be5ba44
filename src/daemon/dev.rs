//! `raftlog dev`: a local cluster of several nodes on 127.0.0.1, in one process, on an
//! embedded default configuration.
//!
//! Node i (1-based) listens for clients on `base + 10·(i−1)`, for peers on that + 1 and for
//! metrics on that + 2, so the default bootstrap address (`127.0.0.1:9400`) reaches node 1.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use crate::config::NodeConfig;
use crate::daemon::{Daemon, DaemonError};

/// The port stride between two dev nodes.
pub const DEV_PORT_STRIDE: u16 = 10;

/// The configuration of node `id` (1-based) of a dev cluster of `nodes` nodes.
pub fn dev_config(id: u64, nodes: u64, data_dir: &Path, base_port: u16) -> NodeConfig {
    let address = |node: u64, offset: u16| {
        let port = base_port + DEV_PORT_STRIDE * (node as u16 - 1) + offset;
        SocketAddr::from((Ipv4Addr::LOCALHOST, port))
    };
    let peers: BTreeMap<u64, String> = (1..=nodes)
        .map(|n| (n, address(n, 1).to_string()))
        .collect();
    let mut config = NodeConfig::new(id, data_dir.join(format!("node-{id}")), peers);
    config.client_listen = address(id, 0);
    config.peer_listen = address(id, 1);
    config.metrics_listen = address(id, 2);
    config
}

/// Starts every node of a dev cluster and returns them running.
///
/// # Errors
/// The first node that fails to start (a port in use, a damaged data directory); the nodes
/// already started are stopped.
pub async fn start(
    nodes: u64,
    data_dir: &Path,
    base_port: u16,
) -> Result<Vec<Daemon>, DaemonError> {
    let mut running = Vec::new();
    for id in 1..=nodes {
        match Daemon::start(dev_config(id, nodes, data_dir, base_port)).await {
            Ok(node) => running.push(node),
            Err(failure) => {
                for node in running {
                    node.shutdown().await;
                }
                return Err(failure);
            }
        }
    }
    Ok(running)
}
