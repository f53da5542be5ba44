//! Node configuration: identity, addresses, and every limit and timeout of a node, in one place.
//!
//! This module owns the [`NodeConfig`] a node runs with, its TOML form (`raftlog serve --config
//! FILE`), its defaults, and the checks that refuse a configuration the node cannot run with
//! ([`NodeConfig::validate`]). It also parses the `--peers ID=HOST:PORT,…` flag. It does not own
//! how the settings are used: the server, transport, replica and storage layers read them.
//!
//! Every limit carries the reason for its default in its doc comment. Names put the unit and
//! the qualifier last (`fetch_wait_ms_max`), so a reader never has to guess whether a number is
//! a count, a size or a duration.
//!
//! A complete file, with every default spelled out:
//!
//! ```toml
//! node_id = 1
//! cluster_id = "raftlog"
//! data_dir = "/var/lib/raftlog"
//! client_listen = "127.0.0.1:9400"
//! peer_listen = "127.0.0.1:9401"
//! metrics_listen = "127.0.0.1:9402"
//! # join = ["127.0.0.1:9400"]   # a node joining a running cluster: members' client
//! #                             # addresses, instead of [peers]
//!
//! [peers]            # every first voter's *peer* address, this node included
//! 1 = "127.0.0.1:9401"
//! 2 = "127.0.0.1:9411"
//! 3 = "127.0.0.1:9421"
//!
//! [network]
//! frame_bytes_max = 16777216
//! handshake_timeout_ms = 5000
//! peer_connections_max = 64
//! peer_queue_messages_max = 8192
//! peer_queue_bytes_max = 67108864
//! peer_inbound_messages_max = 8192
//! reconnect_backoff_ms_min = 50
//! reconnect_backoff_ms_max = 2000
//! peer_write_timeout_ms = 10000
//!
//! [server]
//! connections_max = 512
//! connection_in_flight_requests_max = 32
//! batch_bytes_max = 1048576
//! fetch_wait_ms_max = 30000
//! produce_timeout_ms = 30000
//! shutdown_grace_ms = 10000
//!
//! [raft]
//! tick_interval_ms = 100
//! election_timeout_ticks = 10
//! heartbeat_interval_ticks = 1
//! append_in_flight_messages_max = 64
//! append_in_flight_bytes_max = 8388608
//! append_message_bytes_max = 2097152
//! uncommitted_bytes_max = 67108864
//! entry_cache_bytes_max = 16777216
//! learner_lag_entries_max = 1000
//! learner_caught_up_ms = 2000
//! recovery_bytes_per_second = 104857600   # 0: unlimited; re-read on SIGHUP
//! moves_max = 16
//!
//! [storage]
//! segment_bytes = 67108864
//! index_interval_bytes = 4096
//! fsync_policy = "always"          # or "never", or "interval:100ms"
//! retention_check_interval_ms = 30000
//! mapped_segments_max = 8
//! read_bytes_max = 4194304
//! producer_rebuild_entries_max = 100000
//! full_disk_retry_ms_min = 100
//! full_disk_retry_ms_max = 2000
//!
//! [ops]
//! ready_lag_entries_max = 1000
//! collect_interval_ms = 1000
//! http_request_timeout_ms = 5000
//! http_request_bytes_max = 8192
//! ```
//!
//! The consensus core's configuration ([`crate::raft::Config`]) and the replica's limits are
//! built from these settings ([`RaftConfig::consensus`], [`StorageConfig::log_config`]); they
//! have no defaults of their own, so the simulator, which starts from
//! [`RaftConfig::default`], runs what a node runs.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A node's id within its cluster. 0 is never a node: Raft messages use it for "nobody".
pub type NodeId = u64;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// Bytes an envelope adds around a record batch or a Raft message (correlation id, oneof tags,
/// length varints, topic name). Limits that nest inside a frame keep at least this much room.
pub const ENVELOPE_OVERHEAD_BYTES_MAX: usize = 64 * KIB;

/// Everything a node runs with. Identity (`node_id`, `data_dir`, `peers`) has no default; all
/// the rest does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id; must appear in `peers`.
    pub node_id: NodeId,
    /// The cluster's name, checked in every handshake so that nodes of two clusters never
    /// exchange Raft messages. Defaults to `"raftlog"`, which is also what the CLI's client
    /// commands send.
    #[serde(default = "default_cluster_id")]
    pub cluster_id: String,
    /// Directory holding this node's logs and hard state.
    pub data_dir: PathBuf,
    /// Where clients connect. Defaults to node 1 of `raftlog dev` (`127.0.0.1:9400`), which
    /// is the CLI's default bootstrap address.
    #[serde(default = "default_client_listen")]
    pub client_listen: SocketAddr,
    /// Where peers connect (`127.0.0.1:9401` by default, as node 1 of `raftlog dev`).
    #[serde(default = "default_peer_listen")]
    pub peer_listen: SocketAddr,
    /// Where Prometheus scrapes (`127.0.0.1:9402` by default, as node 1 of `raftlog dev`).
    #[serde(default = "default_metrics_listen")]
    pub metrics_listen: SocketAddr,
    /// Every first voter's peer address (`HOST:PORT`), this node included, by node id. A
    /// node that joins a running cluster leaves it empty and names `join` instead.
    #[serde(default, with = "peers_table")]
    pub peers: BTreeMap<NodeId, String>,
    /// Client addresses (`HOST:PORT`) of running members, for a node that joins a cluster
    /// instead of being one of its first voters (`raftlog serve --join`). Any one that
    /// answers will do; the node registers there, learns the cluster's nodes, and keeps
    /// what it learned in its data directory for its restarts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub join: Vec<String>,
    /// Connection, framing and peer-queue limits.
    #[serde(default)]
    pub network: NetworkConfig,
    /// Client-facing limits and timeouts.
    #[serde(default)]
    pub server: ServerConfig,
    /// Consensus timing and replication windows.
    #[serde(default)]
    pub raft: RaftConfig,
    /// On-disk layout and durability.
    #[serde(default)]
    pub storage: StorageConfig,
    /// The ops listener (`/metrics`, `/health`, `/ready`) and its collectors.
    #[serde(default)]
    pub ops: OpsConfig,
}

/// Limits of the two listeners' framing and of the peer transport.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// Largest frame accepted or sent on either port. 16 MiB holds a full record batch or
    /// Raft append with generous headroom, yet a hostile length prefix cannot make the node
    /// allocate more than this per connection.
    pub frame_bytes_max: usize,
    /// How long a new connection may take to complete its handshake (and an outgoing peer
    /// connection to be established). 5 s is far above any LAN round trip, and short enough
    /// that a silent socket does not hold a connection slot for long.
    pub handshake_timeout_ms: u64,
    /// Incoming peer connections open at once. Each peer needs one, plus an overlap while a
    /// restarted peer's old connection is being noticed as dead; 64 covers clusters of dozens
    /// of nodes while a flood of stray connections cannot exhaust file descriptors.
    pub peer_connections_max: usize,
    /// Messages queued for one peer before new ones are dropped. Raft retransmits whatever is
    /// dropped, so the queue only needs to absorb bursts: 8192 covers a heartbeat round of
    /// thousands of groups.
    pub peer_queue_messages_max: usize,
    /// Bytes queued for one peer before new messages are dropped: 64 MiB is several full
    /// append windows, and bounds what a dead peer can cost in memory.
    pub peer_queue_bytes_max: usize,
    /// Events waiting in one replica's queue (one Raft group): messages received from peers,
    /// and client requests. A peer message that finds it full is dropped and Raft retransmits
    /// it, so peer connections never wait on a busy replica; 8192, like
    /// `peer_queue_messages_max`, absorbs bursts. Bytes need no bound of their own here: a
    /// leader keeps only about `append_in_flight_bytes_max` of appends outstanding per
    /// follower.
    pub peer_inbound_messages_max: usize,
    /// Retired and ignored (a warning is logged when set): received messages now go straight
    /// from the connection to their replica's queue, which `peer_inbound_messages_max`
    /// bounds, with no shared inbound buffer left to bound in bytes. Still accepted so that
    /// existing configuration files keep working.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_inbound_bytes_max: Option<usize>,
    /// First delay before reconnecting to a peer. 50 ms lets a restarted peer be reached
    /// again well inside one election timeout.
    pub reconnect_backoff_ms_min: u64,
    /// Longest delay between reconnection attempts. 2 s keeps a dead peer's cost to a
    /// connection attempt every couple of seconds, and a returning peer is reached within about
    /// one election timeout.
    pub reconnect_backoff_ms_max: u64,
    /// Longest one frame may take to be written to a peer before the connection is given up
    /// and rebuilt. A peer whose machine vanished never closes its connections, and TCP would
    /// keep retrying for about 15 minutes; 10 s is ten election timeouts, so only a peer that
    /// is gone or stuck is cut off, never one that is merely busy.
    pub peer_write_timeout_ms: u64,
}

/// Limits and timeouts of the client port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Client connections open at once. 512 stays well below the common 1024 open-files
    /// limit, leaving room for segment files and peer connections.
    pub connections_max: usize,
    /// Requests one connection may have in flight (pipelining depth). 32 keeps a pipelining
    /// producer busy while bounding one connection's memory to 32 batches.
    pub connection_in_flight_requests_max: usize,
    /// Largest record batch a producer may send: 1 MiB, as Kafka's default, which amortises
    /// per-request costs while keeping one batch cheap to replicate.
    pub batch_bytes_max: usize,
    /// Longest a fetch may wait for new commits (long poll). 30 s stays below the idle
    /// timeouts of common load balancers and NATs.
    pub fetch_wait_ms_max: u64,
    /// How long a produce waits for its commit when the request gives no timeout, and the
    /// most it may ask for. 30 s, as Kafka's `request.timeout.ms`: long enough to ride out a
    /// leader election.
    pub produce_timeout_ms: u64,
    /// How long a graceful shutdown may take to finish in-flight requests, sync and hand
    /// leadership away before the node exits anyway. 10 s fits inside the 30 s grace period of
    /// Kubernetes and systemd's default stop timeout.
    pub shutdown_grace_ms: u64,
}

/// Consensus timing and replication windows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftConfig {
    /// Length of one Raft tick. 100 ms, as etcd's heartbeat interval: fine-grained enough for
    /// sub-second failover, coarse enough that ticking thousands of groups is cheap.
    pub tick_interval_ms: u64,
    /// Ticks without a leader before a follower starts a (pre-)vote; randomised in
    /// `[election_timeout_ticks, 2 × election_timeout_ticks)`. 10 ticks = 1 s, as etcd: many
    /// heartbeats fit in it, so a single lost one never triggers an election.
    pub election_timeout_ticks: u32,
    /// Ticks between a leader's heartbeats (1 tick = 100 ms).
    pub heartbeat_interval_ticks: u32,
    /// AppendEntries a leader may have unacknowledged per follower and group. 64 keeps the
    /// pipe full across a LAN round trip without flooding a slow follower.
    pub append_in_flight_messages_max: usize,
    /// Bytes a leader may have unacknowledged per follower and group. 8 MiB covers a
    /// 10 Gbit/s link with a few ms of latency.
    pub append_in_flight_bytes_max: usize,
    /// Largest single AppendEntries. 2 MiB holds at least one largest batch plus its entry
    /// headers, and stays far below `frame_bytes_max`.
    pub append_message_bytes_max: usize,
    /// Bytes a leader may hold proposed but not yet committed per group before refusing new
    /// produces (RESOURCE_EXHAUSTED). 64 MiB bounds memory when followers fall behind.
    pub uncommitted_bytes_max: usize,
    /// Bytes of recent, already durable entries each group keeps in memory to serve
    /// followers without reading storage (entries not yet durable are always kept). 16 MiB
    /// covers a follower a few hundred milliseconds behind a busy partition; one further
    /// behind is served from the log.
    pub entry_cache_bytes_max: usize,
    /// How far (in entries) a new replica may trail its leader's log and still count as
    /// caught up during a partition move. 1 000: a few heartbeats' worth of writes under
    /// load; a replica that is still copying the log is far beyond it.
    pub learner_lag_entries_max: u64,
    /// How long a new replica must stay caught up before a move makes it a voter. 2 s: a
    /// learner that only just touched the bound under steady load would make the new
    /// majority wait for it.
    pub learner_caught_up_ms: u64,
    /// Bytes per second this node's leaders may send to learners (the new replicas of
    /// moves) all together; 0 means unlimited. 100 MiB/s by default: a move of a large
    /// partition then takes a fraction of a 10 Gb/s link and of a disk's write bandwidth,
    /// and producers' commits keep the rest. Voters are never held back. `raftlog serve`
    /// re-reads it from its configuration file on SIGHUP.
    pub recovery_bytes_per_second: u64,
    /// Partition moves (ordered by operators or by decommissions) under way at once across
    /// the cluster; the metadata leader refuses a new one beyond it (`INVALID_REQUEST`).
    /// 16: each move copies a partition's log, so more at once only splits the same disks
    /// and links (and `recovery_bytes_per_second`) thinner, and every one of them finishes
    /// later. Cancelling or re-targeting a move under way is never refused.
    pub moves_max: usize,
}

/// On-disk layout and durability.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Size of a log segment, preallocated when it is created. 64 MiB: every partition
    /// replica reserves one up front, so a larger value costs disk on idle partitions, while a
    /// smaller one means more files and mappings.
    pub segment_bytes: usize,
    /// Log bytes between two sparse-index entries. 4 KiB, as Kafka: a lookup scans at most
    /// one page after the index hit.
    pub index_interval_bytes: usize,
    /// When appended entries are made durable. `always` (default) syncs every batch before it
    /// counts toward a commit, which is what makes `acks=all` survive power loss.
    pub fsync_policy: FsyncPolicy,
    /// How often retention limits are checked. 30 s: retention works on whole segments, so
    /// checking more often only burns CPU.
    pub retention_check_interval_ms: u64,
    /// Sealed segments each partition keeps mapped for reads at once (the active one is
    /// always mapped). 8: consumers reading the recent past stay mapped, while a node with
    /// thousands of partitions does not exhaust the process's mappings.
    pub mapped_segments_max: usize,
    /// Bytes read per storage call when a replica applies committed entries or rebuilds its
    /// producer table. 4 MiB bounds the memory one such read pins while amortising the
    /// per-call cost.
    pub read_bytes_max: usize,
    /// Entries read back from the end of the log to rebuild the idempotent producers' table
    /// at start-up or after a truncation. 100 000 covers every producer's recent retries
    /// without scanning a large log; a producer idle for longer is forgotten and starts a
    /// new epoch.
    pub producer_rebuild_entries_max: u64,
    /// First wait of a replica stalled on a full disk before it tries to write again. 100 ms:
    /// freed space is used quickly.
    pub full_disk_retry_ms_min: u64,
    /// Longest wait between two attempts on a disk that stays full (the wait doubles). 2 s:
    /// each attempt costs one failed write and one rebuild of the consensus core.
    pub full_disk_retry_ms_max: u64,
}

/// The ops listener on `metrics_listen` and what `/ready` means.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpsConfig {
    /// How far (in entries) a follower's commit index may trail the leader's last announced
    /// commit index and still count as caught up for `/ready`. 1 000: a few heartbeats' worth
    /// of writes under load, while a replica recovering from an outage or a snapshot is far
    /// beyond it.
    pub ready_lag_entries_max: u64,
    /// How often the collectors refresh consumer-group lag, peer links, readiness and disk
    /// space. 1 s: Prometheus scrapes every 10–15 s, so this keeps them fresh at negligible
    /// cost.
    pub collect_interval_ms: u64,
    /// Longest a client of the ops listener may take to send its request head. 5 s: probes
    /// and scrapers send theirs at once, and a stuck one must not hold a task for long.
    pub http_request_timeout_ms: u64,
    /// Largest request head the ops listener reads. 8 KiB: scrapers and probes send a few
    /// hundred bytes.
    pub http_request_bytes_max: usize,
}

/// When the log is synced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Sync every batch before it is acknowledged or counted toward a commit.
    Always,
    /// Sync at most this many milliseconds after a write; a power loss can lose that much.
    IntervalMs(u64),
    /// Leave syncing to the operating system (tests and throwaway clusters only).
    Never,
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The text is not valid TOML, has an unknown key, a missing required key or a value of the
    /// wrong type.
    #[error("invalid config: {0}")]
    Parse(#[from] toml::de::Error),
    /// The configuration could not be written as TOML.
    #[error("cannot write config as TOML: {0}")]
    Serialize(#[from] toml::ser::Error),
    /// A setting has a value the node cannot run with.
    #[error("invalid setting `{setting}`: {reason}")]
    Invalid {
        /// The setting's path in the TOML file, such as `raft.election_timeout_ticks`.
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// An entry of a peers list is not of the form `ID=HOST:PORT`.
    #[error("invalid peer {entry:?}: {reason}")]
    Peer {
        /// The offending entry.
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
}

fn invalid(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        reason: reason.into(),
    }
}

fn default_cluster_id() -> String {
    "raftlog".to_owned()
}

fn default_client_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9400))
}

fn default_peer_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9401))
}

fn default_metrics_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9402))
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            frame_bytes_max: crate::wire::FRAME_BYTES_MAX_DEFAULT,
            handshake_timeout_ms: 5_000,
            peer_connections_max: 64,
            peer_queue_messages_max: 8_192,
            peer_queue_bytes_max: 64 * MIB,
            peer_inbound_messages_max: 8_192,
            peer_inbound_bytes_max: None,
            reconnect_backoff_ms_min: 50,
            reconnect_backoff_ms_max: 2_000,
            peer_write_timeout_ms: 10_000,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            connections_max: 512,
            connection_in_flight_requests_max: 32,
            batch_bytes_max: MIB,
            fetch_wait_ms_max: 30_000,
            produce_timeout_ms: 30_000,
            shutdown_grace_ms: 10_000,
        }
    }
}

impl Default for RaftConfig {
    fn default() -> Self {
        Self {
            tick_interval_ms: 100,
            election_timeout_ticks: 10,
            heartbeat_interval_ticks: 1,
            append_in_flight_messages_max: 64,
            append_in_flight_bytes_max: 8 * MIB,
            append_message_bytes_max: 2 * MIB,
            uncommitted_bytes_max: 64 * MIB,
            entry_cache_bytes_max: 16 * MIB,
            learner_lag_entries_max: 1_000,
            learner_caught_up_ms: 2_000,
            recovery_bytes_per_second: 100 * MIB as u64,
            moves_max: 16,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 64 * MIB,
            index_interval_bytes: 4 * KIB,
            fsync_policy: FsyncPolicy::Always,
            retention_check_interval_ms: 30_000,
            mapped_segments_max: 8,
            read_bytes_max: 4 * MIB,
            producer_rebuild_entries_max: 100_000,
            full_disk_retry_ms_min: 100,
            full_disk_retry_ms_max: 2_000,
        }
    }
}

impl Default for OpsConfig {
    fn default() -> Self {
        Self {
            ready_lag_entries_max: 1_000,
            collect_interval_ms: 1_000,
            http_request_timeout_ms: 5_000,
            http_request_bytes_max: 8 * KIB,
        }
    }
}

impl NodeConfig {
    /// A configuration with the given identity and every other setting at its default.
    pub fn new(node_id: NodeId, data_dir: PathBuf, peers: BTreeMap<NodeId, String>) -> Self {
        Self {
            node_id,
            cluster_id: default_cluster_id(),
            data_dir,
            client_listen: default_client_listen(),
            peer_listen: default_peer_listen(),
            metrics_listen: default_metrics_listen(),
            peers,
            join: Vec::new(),
            network: NetworkConfig::default(),
            server: ServerConfig::default(),
            raft: RaftConfig::default(),
            storage: StorageConfig::default(),
            ops: OpsConfig::default(),
        }
    }

    /// Parses a TOML configuration. Unknown keys are refused, so a misspelt limit is an error
    /// instead of a silently ignored line. The result is not validated yet.
    ///
    /// # Errors
    /// [`ConfigError::Parse`] for invalid TOML, unknown or missing keys, wrong types, and
    /// `[peers]` keys that are not node ids.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        Ok(toml::from_str(text)?)
    }

    /// Reads, parses and validates a TOML configuration file.
    ///
    /// # Errors
    /// [`ConfigError::Read`], then any error of [`Self::from_toml_str`] and [`Self::validate`].
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = Self::from_toml_str(&text)?;
        config.validate()?;
        Ok(config)
    }

    /// The configuration as TOML text that [`Self::from_toml_str`] reads back unchanged.
    ///
    /// # Errors
    /// [`ConfigError::Serialize`] if a value has no TOML form (an integer above `i64::MAX`).
    pub fn to_toml_string(&self) -> Result<String, ConfigError> {
        Ok(toml::to_string_pretty(self)?)
    }

    /// Checks every setting and how settings relate (a batch must fit in an append, an append
    /// in a frame, …), so that a bad value is refused at start-up with its name instead of
    /// failing later under load.
    ///
    /// # Errors
    /// The first [`ConfigError::Invalid`] or [`ConfigError::Peer`] found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_identity()?;
        self.network.validate(self.peers.len())?;
        self.server.validate(&self.network)?;
        self.raft.validate(&self.network, &self.server)?;
        self.storage.validate(&self.server)?;
        self.ops.validate()
    }

    fn validate_identity(&self) -> Result<(), ConfigError> {
        if self.node_id == 0 {
            return Err(invalid("node_id", "must be at least 1; 0 means no node"));
        }
        if self.cluster_id.is_empty() {
            return Err(invalid("cluster_id", "must not be empty"));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        for (&id, address) in &self.peers {
            check_peer(id, address)?;
        }
        let mut addresses: Vec<&str> = self.peers.values().map(String::as_str).collect();
        addresses.sort_unstable();
        if let Some(pair) = addresses.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(invalid(
                "peers",
                format!("two nodes share the peer address {}", pair[0]),
            ));
        }
        if self.peer_listen == self.client_listen {
            return Err(invalid("peer_listen", "must differ from client_listen"));
        }
        if self.metrics_listen == self.client_listen || self.metrics_listen == self.peer_listen {
            return Err(invalid(
                "metrics_listen",
                "must differ from client_listen and peer_listen",
            ));
        }
        for address in &self.join {
            if address
                .rsplit_once(':')
                .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
            {
                return Err(invalid(
                    "join",
                    format!("{address:?} is not a HOST:PORT client address"),
                ));
            }
        }
        if !self.join.is_empty() {
            // The daemon fills `peers` from the cluster it joined; nothing else may.
            if self.peer_listen.ip().is_unspecified() || self.client_listen.ip().is_unspecified() {
                return Err(invalid(
                    "join",
                    "a joining node registers its listen addresses, so client_listen and \
                     peer_listen must be addresses other nodes can reach, not 0.0.0.0",
                ));
            }
            return Ok(());
        }
        if !self.peers.contains_key(&self.node_id) {
            return Err(invalid(
                "peers",
                format!(
                    "must list this node (node_id {}) with its own peer address, or `join` \
                     must name running members",
                    self.node_id
                ),
            ));
        }
        Ok(())
    }
}

impl NetworkConfig {
    fn validate(&self, peer_count: usize) -> Result<(), ConfigError> {
        if !(KIB..=u32::MAX as usize).contains(&self.frame_bytes_max) {
            return Err(invalid(
                "network.frame_bytes_max",
                format!(
                    "{} is outside [1 KiB, 4 GiB): frames carry a 4-byte length",
                    self.frame_bytes_max
                ),
            ));
        }
        positive("network.handshake_timeout_ms", self.handshake_timeout_ms)?;
        positive("network.peer_write_timeout_ms", self.peer_write_timeout_ms)?;
        if self.peer_connections_max < peer_count {
            return Err(invalid(
                "network.peer_connections_max",
                format!(
                    "{} is below the {peer_count} peers, which each need a connection",
                    self.peer_connections_max
                ),
            ));
        }
        positive(
            "network.peer_queue_messages_max",
            self.peer_queue_messages_max,
        )?;
        positive(
            "network.peer_inbound_messages_max",
            self.peer_inbound_messages_max,
        )?;
        positive(
            "network.reconnect_backoff_ms_min",
            self.reconnect_backoff_ms_min,
        )?;
        if self.reconnect_backoff_ms_max < self.reconnect_backoff_ms_min {
            return Err(invalid(
                "network.reconnect_backoff_ms_max",
                format!(
                    "{} is below reconnect_backoff_ms_min ({})",
                    self.reconnect_backoff_ms_max, self.reconnect_backoff_ms_min
                ),
            ));
        }
        Ok(())
    }
}

impl ServerConfig {
    fn validate(&self, network: &NetworkConfig) -> Result<(), ConfigError> {
        positive("server.connections_max", self.connections_max)?;
        positive(
            "server.connection_in_flight_requests_max",
            self.connection_in_flight_requests_max,
        )?;
        positive("server.batch_bytes_max", self.batch_bytes_max)?;
        if self.batch_bytes_max + ENVELOPE_OVERHEAD_BYTES_MAX > network.frame_bytes_max {
            return Err(invalid(
                "server.batch_bytes_max",
                format!(
                    "{} plus {ENVELOPE_OVERHEAD_BYTES_MAX} bytes of envelope must fit in \
                     network.frame_bytes_max ({})",
                    self.batch_bytes_max, network.frame_bytes_max
                ),
            ));
        }
        positive("server.produce_timeout_ms", self.produce_timeout_ms)?;
        positive("server.shutdown_grace_ms", self.shutdown_grace_ms)
    }
}

impl RaftConfig {
    fn validate(&self, network: &NetworkConfig, server: &ServerConfig) -> Result<(), ConfigError> {
        positive("raft.tick_interval_ms", self.tick_interval_ms)?;
        positive(
            "raft.heartbeat_interval_ticks",
            self.heartbeat_interval_ticks,
        )?;
        if self.election_timeout_ticks <= 2 * self.heartbeat_interval_ticks {
            return Err(invalid(
                "raft.election_timeout_ticks",
                format!(
                    "{} must exceed twice heartbeat_interval_ticks ({}), or one lost heartbeat \
                     starts an election",
                    self.election_timeout_ticks, self.heartbeat_interval_ticks
                ),
            ));
        }
        positive(
            "raft.append_in_flight_messages_max",
            self.append_in_flight_messages_max,
        )?;
        positive("raft.moves_max", self.moves_max)?;
        let bytes = self.append_message_bytes_max;
        if bytes < server.batch_bytes_max + ENVELOPE_OVERHEAD_BYTES_MAX {
            return Err(invalid(
                "raft.append_message_bytes_max",
                format!(
                    "{bytes} cannot carry one largest batch (server.batch_bytes_max = {}) plus \
                     {ENVELOPE_OVERHEAD_BYTES_MAX} bytes of entry headers",
                    server.batch_bytes_max
                ),
            ));
        }
        let sizes = [
            ("network.frame_bytes_max", network.frame_bytes_max),
            ("network.peer_queue_bytes_max", network.peer_queue_bytes_max),
        ];
        for (name, size) in sizes {
            if bytes + ENVELOPE_OVERHEAD_BYTES_MAX > size {
                return Err(invalid(
                    "raft.append_message_bytes_max",
                    format!("{bytes} plus envelope overhead does not fit in {name} ({size})"),
                ));
            }
        }
        if self.append_in_flight_bytes_max < bytes {
            return Err(invalid(
                "raft.append_in_flight_bytes_max",
                format!("{} is below append_message_bytes_max ({bytes}), so no append could ever be sent", self.append_in_flight_bytes_max),
            ));
        }
        if self.uncommitted_bytes_max < server.batch_bytes_max {
            return Err(invalid(
                "raft.uncommitted_bytes_max",
                format!(
                    "{} is below server.batch_bytes_max ({}), so a largest batch could never be \
                     proposed",
                    self.uncommitted_bytes_max, server.batch_bytes_max
                ),
            ));
        }
        Ok(())
    }
}

impl OpsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        positive("ops.collect_interval_ms", self.collect_interval_ms)?;
        positive("ops.http_request_timeout_ms", self.http_request_timeout_ms)?;
        // A request line and a Host header need more than this.
        if self.http_request_bytes_max < 64 {
            return Err(invalid(
                "ops.http_request_bytes_max",
                format!("{} cannot hold a request head", self.http_request_bytes_max),
            ));
        }
        Ok(())
    }
}

impl StorageConfig {
    fn validate(&self, server: &ServerConfig) -> Result<(), ConfigError> {
        if self.segment_bytes < server.batch_bytes_max + ENVELOPE_OVERHEAD_BYTES_MAX {
            return Err(invalid(
                "storage.segment_bytes",
                format!(
                    "{} cannot hold one largest batch (server.batch_bytes_max = {}) and its \
                     entry header",
                    self.segment_bytes, server.batch_bytes_max
                ),
            ));
        }
        if self.index_interval_bytes == 0 || self.index_interval_bytes >= self.segment_bytes {
            return Err(invalid(
                "storage.index_interval_bytes",
                format!(
                    "{} must be in [1, segment_bytes = {})",
                    self.index_interval_bytes, self.segment_bytes
                ),
            ));
        }
        if self.fsync_policy == FsyncPolicy::IntervalMs(0) {
            return Err(invalid(
                "storage.fsync_policy",
                "an interval of 0 ms is `always`; say so",
            ));
        }
        positive(
            "storage.retention_check_interval_ms",
            self.retention_check_interval_ms,
        )?;
        let mapped_max = crate::storage::MAPPED_SEGMENTS_MAX_LIMIT;
        if !(1..=mapped_max).contains(&self.mapped_segments_max) {
            return Err(invalid(
                "storage.mapped_segments_max",
                format!("{} is outside [1, {mapped_max}]", self.mapped_segments_max),
            ));
        }
        positive("storage.read_bytes_max", self.read_bytes_max)?;
        positive(
            "storage.producer_rebuild_entries_max",
            self.producer_rebuild_entries_max,
        )?;
        positive(
            "storage.full_disk_retry_ms_min",
            self.full_disk_retry_ms_min,
        )?;
        if self.full_disk_retry_ms_max < self.full_disk_retry_ms_min {
            return Err(invalid(
                "storage.full_disk_retry_ms_max",
                format!(
                    "{} is below full_disk_retry_ms_min ({})",
                    self.full_disk_retry_ms_max, self.full_disk_retry_ms_min
                ),
            ));
        }
        Ok(())
    }

    /// The log configuration of one partition replica.
    pub fn log_config(&self) -> crate::storage::LogConfig {
        use crate::storage::SyncPolicy;
        crate::storage::LogConfig {
            segment_size_bytes: self.segment_bytes as u64,
            index_interval_bytes: self.index_interval_bytes as u64,
            sync_policy: match self.fsync_policy {
                FsyncPolicy::Always => SyncPolicy::Always,
                FsyncPolicy::IntervalMs(ms) => SyncPolicy::Interval(ms),
                FsyncPolicy::Never => SyncPolicy::Never,
            },
            mapped_segments_max: self.mapped_segments_max,
            // Damage is found before the node serves or votes, not on a consumer's read.
            verify_sealed_on_open: true,
        }
    }
}

impl RaftConfig {
    /// The consensus core's configuration of member `node_id` of group `group_id`.
    pub fn consensus(
        &self,
        node_id: NodeId,
        group_id: u64,
        voters: Vec<NodeId>,
    ) -> crate::raft::Config {
        crate::raft::Config {
            id: node_id,
            group_id,
            voters,
            learners: Vec::new(),
            election_timeout_ticks: self.election_timeout_ticks,
            heartbeat_interval_ticks: self.heartbeat_interval_ticks,
            inflight_msgs_max: self.append_in_flight_messages_max as u32,
            inflight_bytes_max: self.append_in_flight_bytes_max as u64,
            message_bytes_max: self.append_message_bytes_max as u64,
            uncommitted_bytes_max: self.uncommitted_bytes_max as u64,
            entry_cache_bytes_max: self.entry_cache_bytes_max as u64,
            // Pre-vote and check-quorum are what keep a rejoining or partitioned member
            // from disrupting a healthy leader; a node never runs without them.
            pre_vote: true,
            check_quorum: true,
            // Distinct per member and group, so elections of many groups do not tie in step.
            seed: node_id.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ group_id,
        }
    }
}

fn positive<T: Default + PartialEq>(setting: &'static str, value: T) -> Result<(), ConfigError> {
    if value == T::default() {
        return Err(invalid(setting, "must be greater than 0"));
    }
    Ok(())
}

/// Checks that a peer address is `HOST:PORT` with a non-empty host and a non-zero port.
/// Host names are allowed (they resolve at connect time), so this is a syntax check.
fn check_peer(id: NodeId, address: &str) -> Result<(), ConfigError> {
    let entry = || format!("{id}={address}");
    if id == 0 {
        return Err(ConfigError::Peer {
            entry: entry(),
            reason: "node id must be at least 1".into(),
        });
    }
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(ConfigError::Peer {
            entry: entry(),
            reason: "address must be HOST:PORT".into(),
        });
    };
    let host_ok = !host.is_empty() && !host.chars().any(char::is_whitespace);
    if !host_ok {
        return Err(ConfigError::Peer {
            entry: entry(),
            reason: "host is empty or has spaces".into(),
        });
    }
    match port.parse::<u16>() {
        Ok(port) if port != 0 => Ok(()),
        _ => Err(ConfigError::Peer {
            entry: entry(),
            reason: format!("port {port:?} is not a number in [1, 65535]"),
        }),
    }
}

/// Parses the `--peers` flag: `ID=HOST:PORT` entries separated by commas, for example
/// `1=10.0.0.1:9401,2=10.0.0.2:9401,3=10.0.0.3:9401`.
///
/// # Errors
/// [`ConfigError::Peer`] naming the first bad entry: empty, without `=`, a non-numeric or zero
/// id, a repeated id, or an address that is not `HOST:PORT`.
pub fn parse_peers(list: &str) -> Result<BTreeMap<NodeId, String>, ConfigError> {
    let mut peers = BTreeMap::new();
    for entry in list.split(',').map(str::trim) {
        let bad = |reason: &str| ConfigError::Peer {
            entry: entry.to_owned(),
            reason: reason.to_owned(),
        };
        if entry.is_empty() {
            return Err(bad("empty entry; expected ID=HOST:PORT"));
        }
        let (id, address) = entry
            .split_once('=')
            .ok_or_else(|| bad("expected ID=HOST:PORT"))?;
        let id: NodeId = id
            .trim()
            .parse()
            .map_err(|_| bad("node id is not a number"))?;
        let address = address.trim();
        check_peer(id, address)?;
        if peers.insert(id, address.to_owned()).is_some() {
            return Err(bad("node id listed twice"));
        }
    }
    Ok(peers)
}

impl fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsyncPolicy::Always => f.write_str("always"),
            FsyncPolicy::IntervalMs(ms) => write!(f, "interval:{ms}ms"),
            FsyncPolicy::Never => f.write_str("never"),
        }
    }
}

impl FromStr for FsyncPolicy {
    type Err = String;

    /// Reads `always`, `never` or `interval:<N>ms`.
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "always" => Ok(FsyncPolicy::Always),
            "never" => Ok(FsyncPolicy::Never),
            _ => text
                .strip_prefix("interval:")
                .and_then(|rest| rest.strip_suffix("ms"))
                .and_then(|ms| ms.parse().ok())
                .map(FsyncPolicy::IntervalMs)
                .ok_or_else(|| {
                    format!("fsync policy {text:?} is not `always`, `never` or `interval:<N>ms`")
                }),
        }
    }
}

impl Serialize for FsyncPolicy {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FsyncPolicy {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// TOML table keys are strings, so `[peers]` is read as strings and its keys parsed as ids.
mod peers_table {
    use super::*;

    pub fn serialize<S: Serializer>(
        peers: &BTreeMap<NodeId, String>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_map(peers.iter().map(|(id, address)| (id.to_string(), address)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BTreeMap<NodeId, String>, D::Error> {
        let table = BTreeMap::<String, String>::deserialize(deserializer)?;
        table
            .into_iter()
            .map(|(id, address)| {
                let id = id.parse::<NodeId>().map_err(|_| {
                    serde::de::Error::custom(format!("peer id {id:?} is not a node id"))
                })?;
                Ok((id, address))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three_nodes() -> NodeConfig {
        let peers = parse_peers("1=127.0.0.1:9401,2=127.0.0.1:9411,3=127.0.0.1:9421").unwrap();
        NodeConfig::new(1, PathBuf::from("data"), peers)
    }

    fn refused_setting(config: &NodeConfig) -> &'static str {
        match config.validate() {
            Err(ConfigError::Invalid { setting, .. }) => setting,
            other => panic!("expected an invalid setting, got {other:?}"),
        }
    }

    #[test]
    fn defaults_validate() {
        three_nodes().validate().unwrap();
    }

    #[test]
    fn the_cores_are_built_from_the_settings() {
        let config = three_nodes();
        let raft = config.raft.consensus(1, 7, vec![1, 2, 3]);
        raft.validate().unwrap();
        assert_eq!(raft.group_id, 7);
        assert_eq!(
            raft.heartbeat_interval_ticks,
            config.raft.heartbeat_interval_ticks
        );
        assert_eq!(raft.message_bytes_max, 2 * MIB as u64);
        let log = config.storage.log_config();
        log.validate().unwrap();
        assert_eq!(log.mapped_segments_max, config.storage.mapped_segments_max);
        assert_eq!(log.segment_size_bytes, config.storage.segment_bytes as u64);
    }

    #[test]
    fn replica_limits_are_checked() {
        let mut config = three_nodes();
        config.storage.mapped_segments_max = 0;
        assert_eq!(refused_setting(&config), "storage.mapped_segments_max");
        let mut config = three_nodes();
        config.storage.full_disk_retry_ms_max = config.storage.full_disk_retry_ms_min - 1;
        assert_eq!(refused_setting(&config), "storage.full_disk_retry_ms_max");
        let mut config = three_nodes();
        config.storage.read_bytes_max = 0;
        assert_eq!(refused_setting(&config), "storage.read_bytes_max");
    }

    #[test]
    fn minimal_file_gets_every_default() {
        let text = "node_id = 2\ndata_dir = \"d\"\n[peers]\n1 = \"a:1\"\n2 = \"b:2\"\n";
        let config = NodeConfig::from_toml_str(text).unwrap();
        config.validate().unwrap();
        assert_eq!(config.cluster_id, "raftlog");
        assert_eq!(config.peers[&2], "b:2");
        assert_eq!(config.raft, RaftConfig::default());
        assert_eq!(config.network.frame_bytes_max, 16 * MIB);
    }

    #[test]
    fn the_example_in_the_module_doc_spells_out_every_default() {
        let source = include_str!("config.rs");
        let example: String = source
            .lines()
            .map(|line| {
                line.strip_prefix("//!")
                    .unwrap_or("")
                    .trim_start_matches(' ')
            })
            .skip_while(|line| *line != "```toml")
            .skip(1)
            .take_while(|line| *line != "```")
            .map(|line| format!("{line}\n"))
            .collect();
        let config = NodeConfig::from_toml_str(&example).unwrap();
        config.validate().unwrap();
        let mut expected = three_nodes();
        expected.data_dir = PathBuf::from("/var/lib/raftlog");
        assert_eq!(config, expected);
    }

    #[test]
    fn toml_round_trips() {
        let mut config = three_nodes();
        config.storage.fsync_policy = FsyncPolicy::IntervalMs(250);
        config.network.peer_queue_messages_max = 77;
        let text = config.to_toml_string().unwrap();
        assert_eq!(NodeConfig::from_toml_str(&text).unwrap(), config, "{text}");
    }

    #[test]
    fn the_retired_inbound_byte_bound_is_still_accepted_and_not_written_back() {
        let text = "node_id = 1\ndata_dir = \"d\"\n[peers]\n1 = \"a:1\"\n\
                    [network]\npeer_inbound_bytes_max = 1\n";
        let config = NodeConfig::from_toml_str(text).unwrap();
        // Even a bound far below one append is no longer a reason to refuse the file.
        config.validate().unwrap();
        assert_eq!(config.network.peer_inbound_bytes_max, Some(1));
        let written = NodeConfig {
            network: NetworkConfig::default(),
            ..config
        }
        .to_toml_string()
        .unwrap();
        assert!(!written.contains("peer_inbound_bytes_max"), "{written}");
    }

    /// A joining node names members instead of peers; its join list must be addresses, and
    /// it must listen where others can reach it, because it registers those addresses.
    #[test]
    fn a_joining_node_needs_no_peers_but_reachable_listeners() {
        let text = "node_id = 4\ndata_dir = \"d\"\njoin = [\"127.0.0.1:9400\"]\n\
                    client_listen = \"127.0.0.1:9430\"\npeer_listen = \"127.0.0.1:9431\"\n\
                    metrics_listen = \"127.0.0.1:9432\"\n";
        let config = NodeConfig::from_toml_str(text).unwrap();
        config.validate().unwrap();
        assert!(config.peers.is_empty());
        let again = NodeConfig::from_toml_str(&config.to_toml_string().unwrap()).unwrap();
        assert_eq!(again, config);
        for (what, broken) in [
            ("bad address", text.replace("127.0.0.1:9400", "nowhere")),
            ("no port", text.replace("127.0.0.1:9400", "host:")),
            (
                "unspecified",
                text.replace("127.0.0.1:9431", "0.0.0.0:9431"),
            ),
        ] {
            let err = NodeConfig::from_toml_str(&broken)
                .unwrap()
                .validate()
                .unwrap_err();
            assert!(err.to_string().contains("join"), "{what}: {err}");
        }
        let neither = "node_id = 4\ndata_dir = \"d\"\n";
        let err = NodeConfig::from_toml_str(neither)
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("join"), "{err}");
    }

    #[test]
    fn unknown_keys_and_missing_identity_are_parse_errors() {
        let typo = "node_id = 1\ndata_dir = \"d\"\n[peers]\n1 = \"a:1\"\n[raft]\ntick_ms = 5\n";
        let err = NodeConfig::from_toml_str(typo).unwrap_err();
        assert!(err.to_string().contains("tick_ms"), "{err}");
        let missing = "data_dir = \"d\"\n[peers]\n1 = \"a:1\"\n";
        let err = NodeConfig::from_toml_str(missing).unwrap_err();
        assert!(err.to_string().contains("node_id"), "{err}");
    }

    #[test]
    fn each_invalid_setting_is_refused_by_name() {
        type Breaker = fn(&mut NodeConfig);
        let cases: &[(&str, Breaker)] = &[
            ("node_id", |c| c.node_id = 0),
            ("cluster_id", |c| c.cluster_id.clear()),
            ("data_dir", |c| c.data_dir = PathBuf::new()),
            ("peers", |c| c.node_id = 9),
            ("network.frame_bytes_max", |c| {
                c.network.frame_bytes_max = 10
            }),
            ("network.handshake_timeout_ms", |c| {
                c.network.handshake_timeout_ms = 0
            }),
            ("network.peer_write_timeout_ms", |c| {
                c.network.peer_write_timeout_ms = 0
            }),
            ("peers", |c| {
                c.peers.insert(4, c.peers[&2].clone());
            }),
            ("peer_listen", |c| c.peer_listen = c.client_listen),
            ("metrics_listen", |c| c.metrics_listen = c.peer_listen),
            ("network.peer_connections_max", |c| {
                c.network.peer_connections_max = 1
            }),
            ("network.peer_queue_messages_max", |c| {
                c.network.peer_queue_messages_max = 0
            }),
            ("network.peer_inbound_messages_max", |c| {
                c.network.peer_inbound_messages_max = 0
            }),
            ("network.reconnect_backoff_ms_min", |c| {
                c.network.reconnect_backoff_ms_min = 0
            }),
            ("network.reconnect_backoff_ms_max", |c| {
                c.network.reconnect_backoff_ms_max = 1
            }),
            ("server.connections_max", |c| c.server.connections_max = 0),
            ("server.connection_in_flight_requests_max", |c| {
                c.server.connection_in_flight_requests_max = 0
            }),
            ("server.batch_bytes_max", |c| {
                c.server.batch_bytes_max = 16 * MIB
            }),
            ("server.produce_timeout_ms", |c| {
                c.server.produce_timeout_ms = 0
            }),
            ("server.shutdown_grace_ms", |c| {
                c.server.shutdown_grace_ms = 0
            }),
            ("raft.tick_interval_ms", |c| c.raft.tick_interval_ms = 0),
            ("raft.heartbeat_interval_ticks", |c| {
                c.raft.heartbeat_interval_ticks = 0
            }),
            ("raft.election_timeout_ticks", |c| {
                c.raft.election_timeout_ticks = 2
            }),
            ("raft.append_in_flight_messages_max", |c| {
                c.raft.append_in_flight_messages_max = 0
            }),
            ("raft.append_message_bytes_max", |c| {
                c.raft.append_message_bytes_max = MIB
            }),
            ("raft.append_message_bytes_max", |c| {
                c.network.peer_queue_bytes_max = MIB
            }),
            ("raft.append_in_flight_bytes_max", |c| {
                c.raft.append_in_flight_bytes_max = MIB
            }),
            ("raft.uncommitted_bytes_max", |c| {
                c.raft.uncommitted_bytes_max = KIB
            }),
            ("storage.segment_bytes", |c| c.storage.segment_bytes = MIB),
            ("storage.index_interval_bytes", |c| {
                c.storage.index_interval_bytes = 0
            }),
            ("storage.fsync_policy", |c| {
                c.storage.fsync_policy = FsyncPolicy::IntervalMs(0)
            }),
            ("storage.retention_check_interval_ms", |c| {
                c.storage.retention_check_interval_ms = 0
            }),
        ];
        for (expected, breaker) in cases {
            let mut config = three_nodes();
            breaker(&mut config);
            assert_eq!(refused_setting(&config), *expected);
            let message = config.validate().unwrap_err().to_string();
            assert!(message.contains(expected), "{message}");
        }
    }

    #[test]
    fn peers_flag_parses_and_refuses_bad_entries() {
        let peers = parse_peers("1=10.0.0.1:9401, 2=node-2.example:9401").unwrap();
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[&2], "node-2.example:9401");
        let bad = [
            ("", "empty"),
            ("1=a:1,", "empty"),
            ("1:a:1", "ID=HOST:PORT"),
            ("x=a:1", "not a number"),
            ("0=a:1", "at least 1"),
            ("1=a:1,1=b:2", "twice"),
            ("1=a", "HOST:PORT"),
            ("1=:9401", "host"),
            ("1=a:0", "port"),
            ("1=a:99999", "port"),
        ];
        for (list, expected) in bad {
            let err = parse_peers(list).unwrap_err();
            assert!(matches!(err, ConfigError::Peer { .. }), "{list}: {err}");
            assert!(err.to_string().contains(expected), "{list}: {err}");
        }
    }

    #[test]
    fn fsync_policy_text_forms() {
        for policy in [
            FsyncPolicy::Always,
            FsyncPolicy::Never,
            FsyncPolicy::IntervalMs(100),
        ] {
            assert_eq!(policy.to_string().parse::<FsyncPolicy>().unwrap(), policy);
        }
        assert!("sometimes".parse::<FsyncPolicy>().is_err());
        assert!("interval:10".parse::<FsyncPolicy>().is_err());
    }
}
