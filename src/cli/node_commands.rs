//! `raftlog serve` and `raftlog dev`: running nodes.

use std::path::PathBuf;

use clap::Args;

use crate::config::{parse_peers, NodeConfig};
use crate::daemon::{dev, Daemon};

/// Flags of `raftlog serve`. Flags override the settings of `--config`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A TOML configuration file (see deploy/raftlog.toml); flags override its settings.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This node's id, from 1.
    #[arg(long, value_name = "N")]
    pub id: Option<u64>,
    /// Where this node keeps its logs.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Client listener address.
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<std::net::SocketAddr>,
    /// Peer listener address.
    #[arg(long, value_name = "HOST:PORT")]
    pub peer_listen: Option<std::net::SocketAddr>,
    /// Metrics listener address.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Every first voter's peer address, this node included: `1=HOST:PORT,2=HOST:PORT,…`.
    #[arg(long, value_name = "ID=HOST:PORT,…", conflicts_with = "join")]
    pub peers: Option<String>,
    /// Join a running cluster instead: client addresses of any of its members. Node ids are
    /// never reused, so a new node takes an id no node has had.
    #[arg(long, value_name = "HOST:PORT,…")]
    pub join: Option<String>,
    /// Cluster id checked in every handshake.
    #[arg(long, value_name = "ID")]
    pub cluster_id: Option<String>,
}

/// Flags of `raftlog dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=9))]
    pub nodes: u64,
    /// Where the nodes keep their logs (one subdirectory per node).
    #[arg(long, value_name = "DIR", default_value = "./raftlog-dev")]
    pub data_dir: PathBuf,
    /// Client port of node 1; node i uses base + 10·(i−1) for clients, +1 peers, +2 metrics.
    #[arg(long, value_name = "PORT", default_value_t = 9400)]
    pub base_port: u16,
}

/// Builds a node's configuration from the file (if any) and the flags.
///
/// # Errors
/// A message naming the missing or invalid setting.
pub fn serve_config(args: &ServeArgs) -> Result<NodeConfig, String> {
    let mut config = match &args.config {
        Some(path) => NodeConfig::load(path).map_err(|e| e.to_string())?,
        None => {
            let missing = |flag: &str| format!("{flag} is required without --config");
            let id = args.id.ok_or_else(|| missing("--id"))?;
            let data_dir = args.data_dir.clone().ok_or_else(|| missing("--data-dir"))?;
            let peers = match (&args.peers, &args.join) {
                (Some(peers), _) => parse_peers(peers).map_err(|e| e.to_string())?,
                (None, Some(_)) => Default::default(),
                (None, None) => return Err(missing("--peers (or --join)")),
            };
            NodeConfig::new(id, data_dir, peers)
        }
    };
    if let Some(id) = args.id {
        config.node_id = id;
    }
    if let Some(dir) = &args.data_dir {
        config.data_dir = dir.clone();
    }
    if let Some(peers) = &args.peers {
        config.peers = parse_peers(peers).map_err(|e| e.to_string())?;
        config.join.clear();
    }
    if let Some(join) = &args.join {
        config.join = join
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect();
        if config.join.is_empty() {
            return Err("--join needs at least one HOST:PORT".into());
        }
        config.peers.clear();
    }
    if let Some(address) = args.listen {
        config.client_listen = address;
    }
    if let Some(address) = args.peer_listen {
        config.peer_listen = address;
    } else if args.config.is_none() {
        // Without a file, the peer listener is this node's entry in --peers.
        if let Some(own) = config.peers.get(&config.node_id) {
            config.peer_listen = own
                .parse()
                .map_err(|e| format!("--peers entry {own:?} for this node: {e}"))?;
        }
    }
    if let Some(address) = args.metrics_listen {
        config.metrics_listen = address;
    }
    if let Some(cluster_id) = &args.cluster_id {
        config.cluster_id = cluster_id.clone();
    }
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

/// Runs one node until SIGINT or SIGTERM, then shuts it down gracefully.
///
/// # Errors
/// A message saying why the node could not start.
pub async fn serve(args: ServeArgs) -> Result<(), String> {
    let config = serve_config(&args)?;
    let id = config.node_id;
    let running = Daemon::start(config)
        .await
        .map_err(|e| format!("node {id} cannot start: {e}"))?;
    tracing::info!(node = id, client = %running.client_address, peer = %running.peer_address, "node started");
    eprintln!(
        "raftlog node {id}: clients on {}, peers on {}",
        running.client_address, running.peer_address
    );
    let reload = async {
        let Ok(mut hangups) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return std::future::pending().await;
        };
        while hangups.recv().await.is_some() {
            reload_settings(&args, &running);
        }
    };
    tokio::select! {
        _ = wait_for_signal() => {}
        _ = reload => {}
    }
    eprintln!("raftlog node {id}: shutting down");
    running.shutdown().await;
    Ok(())
}

/// On SIGHUP: re-reads the configuration (file and flags) and applies the settings that
/// can change while the node runs (`raft.recovery_bytes_per_second`). A configuration that
/// no longer reads or validates is reported and ignored: the node keeps what it runs with.
fn reload_settings(args: &ServeArgs, running: &Daemon) {
    let id = running.node.id();
    match serve_config(args) {
        Ok(config) => {
            let rate = config.raft.recovery_bytes_per_second;
            running.node.set_recovery_rate(rate);
            tracing::info!(
                node = id,
                recovery_bytes_per_second = rate,
                "settings reloaded"
            );
            eprintln!("raftlog node {id}: reloaded; raft.recovery_bytes_per_second = {rate}");
        }
        Err(message) => {
            tracing::warn!(node = id, %message, "reload refused; settings unchanged");
            eprintln!("raftlog node {id}: reload refused, settings unchanged: {message}");
        }
    }
}

/// Runs a local cluster until SIGINT or SIGTERM.
///
/// # Errors
/// A message saying which node could not start.
pub async fn dev(args: DevArgs) -> Result<(), String> {
    let nodes = dev::start(args.nodes, &args.data_dir, args.base_port)
        .await
        .map_err(|e| e.to_string())?;
    print_dev_banner(&nodes, &args);
    wait_for_signal().await;
    eprintln!("raftlog dev: shutting down");
    futures::future::join_all(nodes.into_iter().map(Daemon::shutdown)).await;
    Ok(())
}

fn print_dev_banner(nodes: &[Daemon], args: &DevArgs) {
    println!(
        "raftlog dev: {} nodes, data in {}",
        nodes.len(),
        args.data_dir.display()
    );
    for node in nodes {
        let config = node.node.config();
        println!(
            "  node {}: clients {}  peers {}  metrics {}",
            config.node_id, node.client_address, node.peer_address, config.metrics_listen
        );
    }
    let bootstrap = nodes
        .first()
        .map(|n| n.client_address.to_string())
        .unwrap_or_default();
    println!("Try, in another terminal (bootstrap {bootstrap} is the default):");
    println!("  raftlog topic create demo --partitions 3 --replication-factor 3");
    println!("  seq 1 10 | raftlog produce demo --print-offsets");
    println!("  raftlog consume demo --from earliest");
    println!("Stop with Ctrl-C.");
}

/// Waits for SIGINT or SIGTERM.
async fn wait_for_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
        }
        // Without a SIGTERM handler, Ctrl-C still stops the node gracefully.
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
