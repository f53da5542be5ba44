//! Joining a running cluster (`raftlog serve --join`): what a node that is not one of the
//! first voters does before it starts.
//!
//! A first voter knows the cluster from its `--peers`. A joining node knows only where some
//! members listen for clients, so before its node starts it registers there (a
//! [`RegisterNodeRequest`] routed to the metadata leader, recorded in the metadata log) and
//! learns from the answer every node's peer address and the first voters, which the metadata
//! group's configuration starts from. It then starts as a learner of the metadata group; the
//! leader's log replaces that starting configuration as soon as it arrives.
//!
//! What it learned is kept in `cluster.toml` in the data directory, with the incarnation it
//! picked, so that a restart needs no member to answer and re-registers as the same life of
//! its id. A data directory wiped of that file makes a new incarnation, which the metadata
//! refuses under the old id: node ids are never reused.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::client::{Admin, ClientError, ClientOptions, Cluster, ConnectOptions};
use crate::config::{NodeConfig, NodeId};
use crate::proto::{ErrorCode, RegisterNodeRequest};

/// Name of the file, in the data directory, that records the cluster a node joined.
pub const CLUSTER_FILE: &str = "cluster.toml";

/// How long a joining node keeps trying the members it was given.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a node could not join.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// No member answered, or the registration was refused.
    #[error("cannot join the cluster through {addresses}: {reason}")]
    Refused {
        /// The addresses tried.
        addresses: String,
        /// Why.
        reason: String,
    },
    /// `cluster.toml` could not be read or written.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The cluster as a joined node starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The first voters: the metadata group's configuration at index 0.
    pub founders: Vec<NodeId>,
    /// Every node's peer address known at the join, this node included.
    pub peers: BTreeMap<NodeId, String>,
    /// Which life of this node id this is.
    pub incarnation: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterFile {
    incarnation: u64,
    founders: Vec<NodeId>,
    /// Keys are node ids; TOML keys are strings.
    peers: BTreeMap<String, String>,
}

/// Registers this node with the cluster its `join` list names (or reads what an earlier
/// start recorded) and returns what its node starts from.
///
/// # Errors
/// [`JoinError::Refused`] when no member answered within a minute or the metadata refused
/// the registration (an id reused, a removed id); [`JoinError::File`] for an unreadable or
/// unwritable `cluster.toml`, or a data directory that holds a node's logs but no record of
/// a join.
pub async fn join(
    config: &NodeConfig,
    client_address: SocketAddr,
    peer_address: SocketAddr,
) -> Result<Joined, JoinError> {
    let path = config.data_dir.join(CLUSTER_FILE);
    if let Some(joined) = read(&path)? {
        return Ok(joined);
    }
    let metadata_dir = config.data_dir.join("metadata");
    if metadata_dir.exists() {
        return Err(JoinError::File {
            path: metadata_dir,
            reason: format!(
                "this data directory holds a node's logs but no {CLUSTER_FILE}: it belongs to a \
                 first voter (start it with --peers) or to a node whose join record was lost \
                 (start a new node with a new --id and an empty directory)"
            ),
        });
    }
    let incarnation = new_incarnation();
    let addresses = config.join.join(",");
    let refused = |reason: String| JoinError::Refused {
        addresses: addresses.clone(),
        reason,
    };
    let options = ClientOptions {
        bootstrap: config.join.clone(),
        connect: ConnectOptions {
            cluster_id: config.cluster_id.clone(),
            client_id: format!("node-{}-joining", config.node_id),
            ..Default::default()
        },
        bootstrap_timeout: JOIN_TIMEOUT,
        request_timeout: JOIN_TIMEOUT,
        ..Default::default()
    };
    let cluster = Cluster::connect(options)
        .await
        .map_err(|e| refused(e.to_string()))?;
    let request = RegisterNodeRequest {
        node_id: config.node_id,
        client_address: client_address.to_string(),
        peer_address: peer_address.to_string(),
        incarnation,
    };
    let response = Admin::new(cluster)
        .register_node(request)
        .await
        .map_err(|e| match e {
            ClientError::Server(message) if message.code() == ErrorCode::InvalidRequest => {
                refused(format!("refused: {}", message.message))
            }
            other => refused(other.to_string()),
        })?;
    let mut peers: BTreeMap<NodeId, String> = response
        .nodes
        .iter()
        .filter(|n| !n.peer_address.is_empty())
        .map(|n| (n.node_id, n.peer_address.clone()))
        .collect();
    peers.insert(config.node_id, peer_address.to_string());
    let joined = Joined {
        founders: response.founding_voters,
        peers,
        incarnation,
    };
    if joined.founders.is_empty() {
        return Err(refused("the answer names no first voters".into()));
    }
    write(&path, &joined)?;
    Ok(joined)
}

/// What an earlier start recorded, if it did.
fn read(path: &Path) -> Result<Option<Joined>, JoinError> {
    let failed = |reason: String| JoinError::File {
        path: path.to_owned(),
        reason,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(failed(e.to_string())),
    };
    let file: ClusterFile = toml::from_str(&text).map_err(|e| failed(e.to_string()))?;
    let mut peers = BTreeMap::new();
    for (id, address) in file.peers {
        let id = id
            .parse::<NodeId>()
            .map_err(|_| failed(format!("peer key {id:?} is not a node id")))?;
        peers.insert(id, address);
    }
    if file.founders.is_empty() || file.incarnation == 0 {
        return Err(failed("no first voters or no incarnation recorded".into()));
    }
    Ok(Some(Joined {
        founders: file.founders,
        peers,
        incarnation: file.incarnation,
    }))
}

/// Writes `cluster.toml` so that it is either absent or complete after a crash: a temporary
/// file, synced, renamed over, and the directory synced.
fn write(path: &Path, joined: &Joined) -> Result<(), JoinError> {
    let failed = |e: std::io::Error| JoinError::File {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let file = ClusterFile {
        incarnation: joined.incarnation,
        founders: joined.founders.clone(),
        peers: joined
            .peers
            .iter()
            .map(|(id, address)| (id.to_string(), address.clone()))
            .collect(),
    };
    let text = toml::to_string_pretty(&file).map_err(|e| JoinError::File {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(failed)?;
    let temporary = path.with_extension("toml.tmp");
    {
        use std::io::Write;
        let mut out = std::fs::File::create(&temporary).map_err(failed)?;
        out.write_all(text.as_bytes()).map_err(failed)?;
        out.sync_all().map_err(failed)?;
    }
    std::fs::rename(&temporary, path).map_err(failed)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(failed)
}

/// A random, non-zero incarnation: the process's hasher keys (seeded from the OS) mixed with
/// the time and pid, so two lives of a data directory never pick the same one.
fn new_incarnation() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    hasher.finish().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_join_record_reads_back_and_a_damaged_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CLUSTER_FILE);
        assert_eq!(read(&path).unwrap(), None);
        let joined = Joined {
            founders: vec![1, 2, 3],
            peers: [(1, "a:1".to_owned()), (4, "d:4".to_owned())].into(),
            incarnation: 77,
        };
        write(&path, &joined).unwrap();
        assert_eq!(read(&path).unwrap(), Some(joined));
        std::fs::write(&path, "incarnation = 0\nfounders = []\n[peers]\n").unwrap();
        assert!(read(&path).is_err());
        std::fs::write(&path, "not toml").unwrap();
        assert!(read(&path).is_err());
    }

    #[test]
    fn incarnations_differ_and_are_never_zero() {
        let (a, b) = (new_incarnation(), new_incarnation());
        assert_ne!(a, b);
        assert!(a != 0 && b != 0);
    }
}
