//! Metrics: every metric's name, type, unit, labels, help text and bucket layout
//! ([`METRICS`]), the per-node registries the instrumentation writes to, and the exporter
//! that renders a node's registry (and the process figures) as Prometheus text.
//!
//! It owns what is measured and how it is rendered. It does not own what the numbers mean
//! to the layers that produce them: the replica driver, the server and the node call in with
//! what they already know, once per batch or per loop iteration, never per record. It does
//! not own readiness, the periodic collectors (the node's ops module does) nor the HTTP
//! listener that serves the text (the daemon's ops listener does). It imports no layer
//! above it: neither the node, the server nor the replica (`tests/module_graph.rs` checks),
//! which is why a replica reports its state as a plain [`GroupSample`]. The consensus core
//! never calls in (it stays pure; `tests/raft_purity.rs` enforces it).
//!
//! # One registry per node, not one per process
//!
//! `raftlog dev` and the cluster tests run several nodes in one process, and each node must
//! serve only its own series on its own port. So each node id gets its own
//! [`PrometheusRecorder`] (with the global label `node`) instead of the process-wide `metrics`
//! recorder; the instrumentation holds `metrics` handles ([`Counter`], [`Gauge`],
//! [`Histogram`]) registered with it once, so a hot path pays an atomic add, not a lookup. Two
//! clusters in one process (parallel tests) share the registry of equal node ids; only their
//! numbers mix, nothing breaks.
//!
//! # Labels
//!
//! `node` on every series; `topic` and `partition` per partition replica (the cluster-metadata
//! group appears as topic [`METADATA_TOPIC_LABEL`], partition 0); `peer` per follower; `code`
//! per wire error code; `group` per consumer group with committed offsets. Every label value

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use crate::config::NodeId;
use crate::proto::{self, ErrorCode, RaftMessage};

/// The kind of a metric, as Prometheus types it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (resets when the process restarts).
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// Observations counted into the buckets of its [`MetricDef::buckets`].
    Histogram,
}

impl Kind {
    /// The name Prometheus's `# TYPE` line uses.
    pub fn type_name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One exported metric: the documented contract the dashboard and the alerts rely on.
#[derive(Debug, Clone, Copy)]
pub struct MetricDef {
    /// The full name, unit last (`_seconds`, `_bytes`, `_total`).
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// Labels besides `node`, which every series carries.
    pub labels: &'static [&'static str],
    /// The `# HELP` text.
    pub help: &'static str,
    /// Bucket upper bounds of a histogram; empty otherwise.
    pub buckets: &'static [f64],
}

/// Latency buckets: 100 µs to 10 s in 1-2.5-5 steps, so both a local fsync on a fast disk and
/// a produce stuck behind an election land in a bucket that tells them apart.
pub const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Entries per AppendEntries message: 0 is a heartbeat; powers of two up to the in-flight
/// window's typical batch.
pub const ENTRIES_BUCKETS: &[f64] = &[
    0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Payload bytes per AppendEntries message: 64 B to the 2 MiB default message limit.
pub const MESSAGE_BYTES_BUCKETS: &[f64] = &[
    64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 2097152.0, 4194304.0,
];

const PARTITION: &[&str] = &["topic", "partition"];
const NONE: &[&str] = &[];

macro_rules! metric {
    ($name:literal, $kind:ident, $labels:expr, $help:literal) => {
        MetricDef {
            name: $name,
            kind: Kind::$kind,
            labels: $labels,
            help: $help,
            buckets: &[],
        }
    };
    ($name:literal, Histogram, $labels:expr, $buckets:expr, $help:literal) => {
        MetricDef {
            name: $name,
            kind: Kind::Histogram,
            labels: $labels,
            help: $help,
            buckets: $buckets,
        }
    };
}

/// Every metric a node exports. The dashboard (`grafana/`) and the alerts (`deploy/`) use
/// these names; a test checks that a node exports exactly this list.
pub const METRICS: &[MetricDef] = &[
    metric!("raftlog_produce_requests_total", Counter, PARTITION, "Produce requests accepted by this node's leader replica (queued to the log)."),
    metric!("raftlog_produce_records_total", Counter, PARTITION, "Records in produce requests accepted by this node's leader replica."),
    metric!("raftlog_produce_bytes_total", Counter, PARTITION, "Record-batch bytes in produce requests accepted by this node's leader replica."),
    metric!("raftlog_produce_latency_seconds", Histogram, NONE, LATENCY_BUCKETS_SECONDS, "Time from a produce request's arrival to its acknowledgement (or error) being queued for the client."),
    metric!("raftlog_fetch_requests_total", Counter, PARTITION, "Fetch requests answered with records or an empty long-poll result."),
    metric!("raftlog_fetch_records_total", Counter, PARTITION, "Records returned by fetches."),
    metric!("raftlog_fetch_bytes_total", Counter, PARTITION, "Record-batch bytes returned by fetches."),
    metric!("raftlog_fetch_latency_seconds", Histogram, NONE, LATENCY_BUCKETS_SECONDS, "Time to answer a fetch, including any long-poll wait for new records."),
    metric!("raftlog_fsync_latency_seconds", Histogram, NONE, LATENCY_BUCKETS_SECONDS, "Duration of one background log fsync (group commit), any group."),
    metric!("raftlog_append_entries_message_entries", Histogram, NONE, ENTRIES_BUCKETS, "Entries per AppendEntries message sent to a follower (0 = heartbeat)."),
    metric!("raftlog_append_entries_message_bytes", Histogram, NONE, MESSAGE_BYTES_BUCKETS, "Entry payload bytes per AppendEntries message sent to a follower."),
    metric!("raftlog_commit_index", Gauge, PARTITION, "Raft commit index of this replica."),
    metric!("raftlog_high_watermark", Gauge, PARTITION, "Offset after the last committed record, as this replica knows it."),
    metric!("raftlog_log_start_offset", Gauge, PARTITION, "First offset still stored by this replica (moves with retention)."),
    metric!("raftlog_follower_lag_entries", Gauge, &["topic", "partition", "peer"], "On the leader: entries the follower `peer` still lacks (leader's last index minus the follower's match index); 0 elsewhere."),
    metric!("raftlog_is_leader", Gauge, PARTITION, "1 if this replica leads the partition, else 0."),
    metric!("raftlog_leader_known", Gauge, PARTITION, "1 if this replica knows a leader (itself or another), else 0."),
    metric!("raftlog_leader_changes_total", Counter, PARTITION, "Times this replica saw the partition's leader change to a new node."),
    metric!("raftlog_elections_started_total", Counter, PARTITION, "Elections this replica started: term increases while it was a candidate (a pre-vote alone does not count)."),
    metric!("raftlog_term", Gauge, PARTITION, "Current Raft term of this replica."),
    metric!("raftlog_replica_failed", Gauge, PARTITION, "1 if this replica stopped (a storage error, or a panic: a bug) and no longer serves or votes."),
    metric!("raftlog_replica_storage_full", Gauge, PARTITION, "1 while this replica refuses writes because its disk is full (it retries by itself and resumes once space is freed)."),
    metric!("raftlog_fetch_waiters", Gauge, PARTITION, "Fetches parked at this replica's high watermark, waiting for new records (consumers' long polls)."),
    metric!("raftlog_group_voters", Gauge, PARTITION, "Voters of the partition's configuration as this replica knows it (both sides counted once while joint)."),
    metric!("raftlog_group_learners", Gauge, PARTITION, "Learners of the partition's configuration as this replica knows it: new replicas catching up before a move makes them voters."),
    metric!("raftlog_group_joint", Gauge, PARTITION, "1 while the partition's configuration is joint (a change of voters under way: old and new majorities decide together), else 0."),
    metric!("raftlog_partition_moving", Gauge, PARTITION, "1 while this replica's partition is asked to move and the move is not done, else 0."),
    metric!("raftlog_recovery_bytes_total", Counter, PARTITION, "On the leader: bytes of entries sent to learners (new replicas of a move catching up), within raft.recovery_bytes_per_second across the node."),
    metric!("raftlog_recovery_throttled_total", Counter, PARTITION, "On the leader: times an AppendEntries to a learner waited because the node's recovery rate was spent (quorum traffic never waits)."),
    metric!("raftlog_log_size_bytes", Gauge, PARTITION, "Bytes stored in this replica's log segments."),
    metric!("raftlog_log_segments", Gauge, PARTITION, "Segments in this replica's log."),
    metric!("raftlog_consumer_group_lag_records", Gauge, &["group", "topic", "partition"], "High watermark minus the group's committed offset, from this node's replica and applied metadata."),
    metric!("raftlog_consumer_group_members", Gauge, &["group"], "Members of the consumer group, from this node's applied metadata."),
    metric!("raftlog_consumer_group_generation", Gauge, &["group"], "The consumer group's generation: it grows with every change of members or partition owners."),
    metric!("raftlog_consumer_group_rebalancing", Gauge, &["group"], "1 while the consumer group hands partitions over (an owner is asked to release one, or one has no owner), else 0."),
    metric!("raftlog_consumer_group_rebalances_total", Counter, &["group"], "Times the consumer group started handing partitions over (a member joined, left or was expelled, or its topics changed)."),
    metric!("raftlog_peer_sent_messages_total", Counter, &["peer"], "Raft messages written to the connection to `peer`."),
    metric!("raftlog_peer_dropped_messages_total", Counter, &["peer"], "Raft messages for `peer` dropped (full queue or broken connection); Raft retransmits them."),
    metric!("raftlog_peer_reconnects_total", Counter, &["peer"], "Connections to `peer` re-established after the first."),
    metric!("raftlog_peer_queued_messages", Gauge, &["peer"], "Raft messages waiting in the queue to `peer`."),
    metric!("raftlog_connections_open", Gauge, NONE, "Client connections open now."),
    metric!("raftlog_errors_total", Counter, &["code"], "Error responses sent to clients, by wire error code."),
    metric!("raftlog_ready", Gauge, NONE, "1 when /ready answers 200 (metadata leader known, every local replica caught up), else 0."),
    metric!("raftlog_data_dir_free_bytes", Gauge, NONE, "Bytes available to the node on the file system of its data directory."),
    metric!("raftlog_data_dir_size_bytes", Gauge, NONE, "Total bytes of the file system of the node's data directory."),
    metric!("process_resident_memory_bytes", Gauge, NONE, "Resident memory of the process."),
    metric!("process_virtual_memory_bytes", Gauge, NONE, "Virtual memory of the process (large: segments are memory-mapped)."),
    metric!("process_cpu_seconds_total", Counter, NONE, "User and system CPU time of the process."),
    metric!("process_open_fds", Gauge, NONE, "Open file descriptors of the process."),
    metric!("process_max_fds", Gauge, NONE, "File-descriptor limit of the process (RLIMIT_NOFILE)."),
    metric!("process_threads", Gauge, NONE, "Threads of the process."),
    metric!("process_start_time_seconds", Gauge, NONE, "Start time of the process, seconds since the Unix epoch."),
];

/// The `topic` label of the cluster-metadata group's series.
pub const METADATA_TOPIC_LABEL: &str = "__metadata";

fn def(name: &str) -> &'static MetricDef {
    METRICS
        .iter()
        .find(|d| d.name == name)
        .unwrap_or_else(|| panic!("metric {name} is not in METRICS"))
}

static REGISTRY: OnceLock<RwLock<HashMap<NodeId, &'static NodeMetrics>>> = OnceLock::new();

/// The metrics of node `node_id` in this process, created on first use.
///
/// Registries live as long as the process (one per node id, a handful), which is why they
/// are handed out as `&'static`: copying one into a closure or task costs nothing.
pub fn node(node_id: NodeId) -> &'static NodeMetrics {
    let registry = REGISTRY.get_or_init(Default::default);
    if let Some(found) = registry
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .get(&node_id)
    {
        return found;
    }
    let mut map = registry
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    map.entry(node_id)
        .or_insert_with(|| Box::leak(Box::new(NodeMetrics::new(node_id))))
}

/// The metrics of one replica's group on `node_id`, labelled by the names given to
/// [`name_group`] (or the metadata group's, or `partition` = group id if never named).
pub fn group(node_id: NodeId, group_id: u64) -> Arc<GroupMetrics> {
    node(node_id).group(group_id)
}

/// Tells node `node_id`'s registry which topic and partition the Raft group `group_id` is.
/// Called before the group's replica starts, so its series carry the names from the start.
pub fn name_group(node_id: NodeId, group_id: u64, topic: &str, partition: u32) {
    let metrics = node(node_id);
    let fresh = Arc::new(GroupMetrics::new(
        metrics,
        topic.to_owned(),
        partition.to_string(),
    ));
    metrics
        .groups
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .insert(group_id, fresh);
}

/// One node's registry and the node-wide handles.
pub struct NodeMetrics {
    node_id: NodeId,
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    groups: RwLock<HashMap<u64, Arc<GroupMetrics>>>,
    produce_latency: Histogram,
    fetch_latency: Histogram,
    fsync_latency: Histogram,
    append_entries: Histogram,
    append_bytes: Histogram,
    connections_open: Gauge,
    /// Indexed by wire error code; every code is registered up front so that a rate of 0 is
    /// a series, not a missing one.
    errors: Vec<Option<Counter>>,
    /// Error counter for a code outside the enum, never expected.
    errors_unknown: Counter,
    ready: Gauge,
    /// Consumer-group lag gauges by (group, topic, partition), kept to zero stale ones.
    group_lag: Mutex<HashMap<(String, String, u32), Gauge>>,
    /// Consumer groups with figures, kept to zero the gauges of deleted ones.
    groups_seen: Mutex<std::collections::HashSet<String>>,
}

/// One consumer group's figures, from the applied metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerGroupSample {
    /// Group name.
    pub group: String,
    /// Members now.
    pub members: usize,
    /// Its generation.
    pub generation: u64,
    /// Whether it is handing partitions over.
    pub rebalancing: bool,
    /// Hand-overs started so far.
    pub rebalances: u64,
}

impl NodeMetrics {
    fn new(node_id: NodeId) -> Self {
        let mut builder = PrometheusBuilder::new().add_global_label("node", node_id.to_string());
        for metric in METRICS.iter().filter(|m| m.kind == Kind::Histogram) {
            builder = builder
                .set_buckets_for_metric(Matcher::Full(metric.name.to_owned()), metric.buckets)
                .expect("bucket layouts in METRICS are not empty");
        }
        let recorder = builder.build_recorder();
        // Process metrics are rendered from /proc at each scrape, not recorded (see `render`).
        for metric in METRICS.iter().filter(|m| !m.name.starts_with("process_")) {
            let name = KeyName::from(metric.name);
            let help = SharedString::from(metric.help);
            let unit: Option<Unit> = None;
            match metric.kind {
                Kind::Counter => recorder.describe_counter(name, unit, help),
                Kind::Gauge => recorder.describe_gauge(name, unit, help),
                Kind::Histogram => recorder.describe_histogram(name, unit, help),
            }
        }
        let handle = recorder.handle();
        let plain = |name: &'static str| key(name, Vec::new());
        // Codes are small and dense; 64 leaves room for the enum to grow.
        let errors = (0..64)
            .map(|code| {
                let known = ErrorCode::try_from(code).is_ok_and(|c| c != ErrorCode::None);
                known.then(|| {
                    let label = Label::new("code", error_code_label(code));
                    recorder.register_counter(&key("raftlog_errors_total", vec![label]), &META)
                })
            })
            .collect();
        let errors_unknown = recorder.register_counter(
            &key("raftlog_errors_total", vec![Label::new("code", "OTHER")]),
            &META,
        );
        let histogram = |name| recorder.register_histogram(&plain(name), &META);
        let gauge = |name| recorder.register_gauge(&plain(name), &META);
        NodeMetrics {
            node_id,
            produce_latency: histogram("raftlog_produce_latency_seconds"),
            fetch_latency: histogram("raftlog_fetch_latency_seconds"),
            fsync_latency: histogram("raftlog_fsync_latency_seconds"),
            append_entries: histogram("raftlog_append_entries_message_entries"),
            append_bytes: histogram("raftlog_append_entries_message_bytes"),
            connections_open: gauge("raftlog_connections_open"),
            ready: gauge("raftlog_ready"),
            errors,
            errors_unknown,
            groups: RwLock::new(HashMap::new()),
            group_lag: Mutex::new(HashMap::new()),
            groups_seen: Mutex::new(std::collections::HashSet::new()),
            handle,
            recorder,
        }
    }

    /// The exposition-format text of every series of this node, process metrics included.
    pub fn render(&self) -> String {
        let mut text = self.handle.render();
        render_process(&mut text, self.node_id);
        text
    }

    /// The handles of group `group_id`, created (unnamed) on first use.
    pub fn group(&'static self, group_id: u64) -> Arc<GroupMetrics> {
        if let Some(found) = self
            .groups
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&group_id)
        {
            return found.clone();
        }
        let (topic, partition) = if group_id == crate::metadata::METADATA_GROUP_ID {
            (METADATA_TOPIC_LABEL.to_owned(), "0".to_owned())
        } else {
            (String::new(), group_id.to_string())
        };
        self.groups
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(group_id)
            .or_insert_with(|| Arc::new(GroupMetrics::new(self, topic, partition)))
            .clone()
    }

    /// Records a produce request's latency from arrival to answer.
    pub fn produce_answered(&self, elapsed: Duration) {
        self.produce_latency.record(elapsed.as_secs_f64());
    }

    /// Records a fetch's latency, long-poll wait included.
    pub fn fetch_answered(&self, elapsed: Duration) {
        self.fetch_latency.record(elapsed.as_secs_f64());
    }

    /// Records one background fsync's duration.
    pub fn fsync_done(&self, elapsed: Duration) {
        self.fsync_latency.record(elapsed.as_secs_f64());
    }

    /// Records the AppendEntries among messages a replica hands to the transport.
    pub fn messages_sent(&self, messages: &[RaftMessage]) {
        for message in messages {
            if let Some(proto::raft_message::Body::AppendEntries(append)) = &message.body {
                let bytes: usize = append.entries.iter().map(|e| e.payload.len()).sum();
                self.append_entries.record(append.entries.len() as f64);
                self.append_bytes.record(bytes as f64);
            }
        }
    }

    /// Counts a client connection opening.
    pub fn connection_opened(&self) {
        self.connections_open.increment(1.0);
    }

    /// Counts a client connection closing.
    pub fn connection_closed(&self) {
        self.connections_open.decrement(1.0);
    }

    /// Counts the error responses among the bodies answered to clients.
    pub fn answered(&self, body: &proto::envelope::Body) {
        if let proto::envelope::Body::Error(error) = body {
            self.error(error.code);
        }
    }

    /// Counts one error response with wire code `code`.
    pub fn error(&self, code: i32) {
        match usize::try_from(code)
            .ok()
            .and_then(|c| self.errors.get(c)?.as_ref())
        {
            Some(counter) => counter.increment(1),
            None => self.errors_unknown.increment(1),
        }
    }

    /// Sets consumer-group lag, one value per (group, topic, partition); a partition whose
    /// lag is not given any more (moved or deleted) reads 0, not its last lag forever.
    pub fn set_group_lag(&self, lags: Vec<((String, String, u32), u64)>) {
        let mut gauges = self
            .group_lag
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for gauge in gauges.values() {
            gauge.set(0.0);
        }
        for ((group, topic, partition), lag) in lags {
            let gauge = gauges
                .entry((group.clone(), topic.clone(), partition))
                .or_insert_with(|| {
                    let labels = vec![
                        Label::new("group", group),
                        Label::new("topic", topic),
                        Label::new("partition", partition.to_string()),
                    ];
                    self.recorder
                        .register_gauge(&key("raftlog_consumer_group_lag_records", labels), &META)
                });
            gauge.set(lag as f64);
        }
    }

    /// Sets every consumer group's figures; groups no longer in `groups` read 0 members.
    pub fn set_consumer_groups(&self, groups: &[ConsumerGroupSample]) {
        let labels = |group: &str| vec![Label::new("group", group.to_owned())];
        let gauge = |name, group: &str| {
            self.recorder
                .register_gauge(&key(name, labels(group)), &META)
        };
        let mut seen = self
            .groups_seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for gone in seen
            .iter()
            .filter(|g| !groups.iter().any(|s| &s.group == *g))
        {
            gauge("raftlog_consumer_group_members", gone).set(0.0);
            gauge("raftlog_consumer_group_rebalancing", gone).set(0.0);
        }
        seen.clear();
        for sample in groups {
            let group = sample.group.as_str();
            gauge("raftlog_consumer_group_members", group).set(sample.members as f64);
            gauge("raftlog_consumer_group_generation", group).set(sample.generation as f64);
            gauge("raftlog_consumer_group_rebalancing", group).set(if sample.rebalancing {
                1.0
            } else {
                0.0
            });
            self.recorder
                .register_counter(
                    &key("raftlog_consumer_group_rebalances_total", labels(group)),
                    &META,
                )
                .absolute(sample.rebalances);
            seen.insert(sample.group.clone());
        }
    }

    /// Copies the transport's counters of the link to `peer` (kept by the transport itself,
    /// so its hot path does not change) into the registry.
    pub fn set_peer(
        &self,
        peer: NodeId,
        sent_messages: u64,
        dropped_messages: u64,
        reconnects: u64,
        queued_messages: usize,
    ) {
        let labels = || vec![Label::new("peer", peer.to_string())];
        let counter = |name| self.recorder.register_counter(&key(name, labels()), &META);
        counter("raftlog_peer_sent_messages_total").absolute(sent_messages);
        counter("raftlog_peer_dropped_messages_total").absolute(dropped_messages);
        counter("raftlog_peer_reconnects_total").absolute(reconnects);
        self.recorder
            .register_gauge(&key("raftlog_peer_queued_messages", labels()), &META)
            .set(queued_messages as f64);
    }

    /// Sets `raftlog_ready` to what `/ready` would answer now.
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(if ready { 1.0 } else { 0.0 });
    }

    /// Sets the free and total bytes of the data directory's file system.
    pub fn set_data_dir_space(&self, free_bytes: u64, size_bytes: u64) {
        self.gauge("raftlog_data_dir_free_bytes")
            .set(free_bytes as f64);
        self.gauge("raftlog_data_dir_size_bytes")
            .set(size_bytes as f64);
    }

    /// The exporter's periodic housekeeping (histogram upkeep); called by the collector.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    fn gauge(&self, name: &'static str) -> Gauge {
        self.recorder.register_gauge(&key(name, Vec::new()), &META)
    }
}

/// A replica's state as the metrics need it: numbers and flags only, so that this module
/// does not depend on the replica's types. The replica builds one from its status after
/// every loop iteration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupSample<'a> {
    /// The replica leads its group.
    pub leading: bool,
    /// The replica is a candidate in an election.
    pub campaigning: bool,
    /// Current term.
    pub term: u64,
    /// Known leader, 0 when unknown.
    pub leader_id: u64,
    /// Commit index.
    pub commit_index: u64,
    /// Last index in the log.
    pub last_index: u64,
    /// Offset after the last committed record.
    pub high_watermark: u64,
    /// First offset still stored.
    pub log_start_offset: u64,
    /// Bytes stored in the log's segments.
    pub log_size_bytes: u64,
    /// Number of segments.
    pub segment_count: u64,
    /// The replica stopped on a storage error or a panic.
    pub failed: bool,
    /// The replica refuses writes because its disk is full.
    pub storage_full: bool,
    /// For a leader: each follower's match index, as (node id, match index).
    pub follower_match: &'a [(u64, u64)],
}

/// The handles of one replica's group: per-partition gauges and counters, cached so that the
/// replica's loop only does atomic stores.
pub struct GroupMetrics {
    node: &'static NodeMetrics,
    labels: (String, String),
    produce_requests: Counter,
    produce_records: Counter,
    produce_bytes: Counter,
    fetch_requests: Counter,
    fetch_records: Counter,
    fetch_bytes: Counter,
    commit_index: Gauge,
    high_watermark: Gauge,
    log_start_offset: Gauge,
    is_leader: Gauge,
    leader_known: Gauge,
    leader_changes: Counter,
    elections_started: Counter,
    term: Gauge,
    failed: Gauge,
    storage_full: Gauge,
    fetch_waiters: Gauge,
    group_voters: Gauge,
    group_learners: Gauge,
    group_joint: Gauge,
    partition_moving: Gauge,
    recovery_bytes: Counter,
    recovery_throttled: Counter,
    log_size: Gauge,
    log_segments: Gauge,
    /// Follower lag gauges by peer id; registered when the replica first leads.
    follower_lag: Mutex<Vec<(u64, Gauge)>>,
    /// The last leader this replica knew, to count changes rather than re-discoveries.
    last_leader: AtomicU64,
    /// The highest commit index a leader has announced to this replica: how far a follower
    /// must get to count as caught up for `/ready`.
    leader_commit_seen: AtomicU64,
}

impl GroupMetrics {
    fn new(node: &'static NodeMetrics, topic: String, partition: String) -> Self {
        let recorder = &node.recorder;
        let labels = || {
            vec![
                Label::new("topic", topic.clone()),
                Label::new("partition", partition.clone()),
            ]
        };
        let counter = |name| recorder.register_counter(&key(name, labels()), &META);
        let gauge = |name| recorder.register_gauge(&key(name, labels()), &META);
        GroupMetrics {
            produce_requests: counter("raftlog_produce_requests_total"),
            produce_records: counter("raftlog_produce_records_total"),
            produce_bytes: counter("raftlog_produce_bytes_total"),
            fetch_requests: counter("raftlog_fetch_requests_total"),
            fetch_records: counter("raftlog_fetch_records_total"),
            fetch_bytes: counter("raftlog_fetch_bytes_total"),
            commit_index: gauge("raftlog_commit_index"),
            high_watermark: gauge("raftlog_high_watermark"),
            log_start_offset: gauge("raftlog_log_start_offset"),
            is_leader: gauge("raftlog_is_leader"),
            leader_known: gauge("raftlog_leader_known"),
            leader_changes: counter("raftlog_leader_changes_total"),
            elections_started: counter("raftlog_elections_started_total"),
            term: gauge("raftlog_term"),
            failed: gauge("raftlog_replica_failed"),
            storage_full: gauge("raftlog_replica_storage_full"),
            fetch_waiters: gauge("raftlog_fetch_waiters"),
            group_voters: gauge("raftlog_group_voters"),
            group_learners: gauge("raftlog_group_learners"),
            group_joint: gauge("raftlog_group_joint"),
            partition_moving: gauge("raftlog_partition_moving"),
            recovery_bytes: counter("raftlog_recovery_bytes_total"),
            recovery_throttled: counter("raftlog_recovery_throttled_total"),
            log_size: gauge("raftlog_log_size_bytes"),
            log_segments: gauge("raftlog_log_segments"),
            follower_lag: Mutex::new(Vec::new()),
            last_leader: AtomicU64::new(0),
            leader_commit_seen: AtomicU64::new(0),
            labels: (topic, partition),
            node,
        }
    }

    /// The node-wide handles of the node this group runs on.
    pub fn node(&self) -> &'static NodeMetrics {
        self.node
    }

    /// Marks the replica as stopped on a storage error.
    pub fn replica_failed(&self) {
        self.failed.set(1.0);
    }

    /// Sets how many fetches are parked at the high watermark.
    pub fn fetch_waiters(&self, count: usize) {
        self.fetch_waiters.set(count as f64);
    }

    /// Sets the configuration this replica knows (voters of either side, learners, whether
    /// joint) and whether its partition is in a move that is not done.
    pub fn membership(&self, voters: usize, learners: usize, joint: bool, moving: bool) {
        self.group_voters.set(voters as f64);
        self.group_learners.set(learners as f64);
        self.group_joint.set(f64::from(u8::from(joint)));
        self.partition_moving.set(f64::from(u8::from(moving)));
    }

    /// Sets the catch-up totals the replica's consensus core keeps (they only grow): bytes
    /// sent to learners, and sends that waited for the node's recovery rate.
    pub fn catch_up(&self, bytes_sent: u64, throttled: u64) {
        self.recovery_bytes.absolute(bytes_sent);
        self.recovery_throttled.absolute(throttled);
    }

    /// Counts one produce request of `records` records and `bytes` batch bytes.
    pub fn produced(&self, records: u32, bytes: usize) {
        self.produce_requests.increment(1);
        self.produce_records.increment(u64::from(records));
        self.produce_bytes.increment(bytes as u64);
    }

    /// Counts one answered fetch of `records` records and `bytes` batch bytes.
    pub fn fetched(&self, records: u64, bytes: u64) {
        self.fetch_requests.increment(1);
        self.fetch_records.increment(records);
        self.fetch_bytes.increment(bytes);
    }

    /// Notes a peer message arriving for this group: a leader's AppendEntries tells how far
    /// its commit index has got.
    pub fn received(&self, message: &RaftMessage) {
        if let Some(proto::raft_message::Body::AppendEntries(append)) = &message.body {
            self.leader_commit_seen
                .fetch_max(append.leader_commit, Ordering::Relaxed);
        }
    }

    /// Publishes a replica's new status, counting leader changes and elections against its
    /// previous one. Called once per loop iteration of the replica: atomic stores only, except
    /// the first time a replica leads (it registers its followers' lag gauges).
    pub fn status(&self, previous: &GroupSample<'_>, status: &GroupSample<'_>) {
        let leading = status.leading;
        if status.term > previous.term && (status.campaigning || status.leading) {
            self.elections_started.increment(1);
        }
        if status.leader_id != 0 {
            let before = self.last_leader.swap(status.leader_id, Ordering::Relaxed);
            if before != status.leader_id {
                self.leader_changes.increment(1);
            }
        }
        if leading {
            self.leader_commit_seen
                .fetch_max(status.commit_index, Ordering::Relaxed);
        }
        self.is_leader.set(if leading { 1.0 } else { 0.0 });
        self.leader_known
            .set(if status.leader_id != 0 { 1.0 } else { 0.0 });
        self.term.set(status.term as f64);
        self.storage_full
            .set(if status.storage_full { 1.0 } else { 0.0 });
        self.commit_index.set(status.commit_index as f64);
        self.high_watermark.set(status.high_watermark as f64);
        self.log_start_offset.set(status.log_start_offset as f64);
        self.log_size.set(status.log_size_bytes as f64);
        self.log_segments.set(status.segment_count as f64);
        self.failed.set(if status.failed { 1.0 } else { 0.0 });
        self.set_follower_lag(status);
    }

    fn set_follower_lag(&self, status: &GroupSample<'_>) {
        let mut lags = self
            .follower_lag
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (_, gauge) in lags.iter() {
            gauge.set(0.0);
        }
        for &(peer, match_index) in status.follower_match {
            let lag = status.last_index.saturating_sub(match_index) as f64;
            if let Some((_, gauge)) = lags.iter().find(|(id, _)| *id == peer) {
                gauge.set(lag);
                continue;
            }
            let (topic, partition) = &self.labels;
            let labels = vec![
                Label::new("topic", topic.clone()),
                Label::new("partition", partition.clone()),
                Label::new("peer", peer.to_string()),
            ];
            let gauge = self
                .node
                .recorder
                .register_gauge(&key("raftlog_follower_lag_entries", labels), &META);
            gauge.set(lag);
            lags.push((peer, gauge));
        }
    }

    /// The highest commit index a leader has announced to this replica (or, while it leads,
    /// its own): how far a follower must get to count as caught up.
    pub fn leader_commit_seen(&self) -> u64 {
        self.leader_commit_seen.load(Ordering::Relaxed)
    }
}

static META: metrics::Metadata<'static> =
    metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

fn key(name: &'static str, labels: Vec<Label>) -> Key {
    debug_assert!(def(name).name == name);
    Key::from_parts(name, labels)
}

/// The `code` label of a wire error code: the enum's name without its prefix
/// (`NOT_LEADER`), or the number for a code this build does not know.
pub fn error_code_label(code: i32) -> String {
    match ErrorCode::try_from(code) {
        Ok(known) => known
            .as_str_name()
            .trim_start_matches("ERROR_CODE_")
            .to_owned(),
        Err(_) => code.to_string(),
    }
}

/// Appends the process metrics, read from `/proc/self` now, in the names Prometheus's client
/// libraries use, so the usual process dashboards work. They are rendered rather than
/// recorded because `metrics` counters are integers and CPU seconds need fractions. Skipped
/// where `/proc` is missing.
fn render_process(out: &mut String, node_id: NodeId) {
    use std::fmt::Write;
    let Some(stat) = ProcStat::read() else {
        return;
    };
    let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |fds| fds.count());
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a writable rlimit.
    let max_fds = match unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } {
        0 => limit.rlim_cur as f64,
        _ => f64::INFINITY,
    };
    let values = [
        ("process_resident_memory_bytes", stat.resident_bytes as f64),
        ("process_virtual_memory_bytes", stat.virtual_bytes as f64),
        ("process_cpu_seconds_total", stat.cpu_seconds),
        ("process_open_fds", open_fds as f64),
        ("process_max_fds", max_fds),
        ("process_threads", stat.threads as f64),
        ("process_start_time_seconds", stat.start_time_seconds),
    ];
    for (name, value) in values {
        let metric = def(name);
        // The exposition format spells infinity `+Inf`; Rust's Display says `inf`.
        let value = if value.is_infinite() {
            "+Inf".to_owned()
        } else {
            value.to_string()
        };
        let _ = write!(
            out,
            "# HELP {name} {}\n# TYPE {name} {}\n{name}{{node=\"{node_id}\"}} {value}\n\n",
            metric.help,
            metric.kind.type_name()
        );
    }
}

/// The fields of `/proc/self/stat` the process metrics need.
struct ProcStat {
    cpu_seconds: f64,
    threads: u64,
    virtual_bytes: u64,
    resident_bytes: u64,
    start_time_seconds: f64,
}

impl ProcStat {
    fn read() -> Option<Self> {
        let text = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name (field 2) may hold spaces and parentheses: split after its end.
        let rest = &text[text.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // `rest` starts at field 3 (state), so field n is at index n − 3.
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|line| line.strip_prefix("btime ")?.trim().parse::<u64>().ok())?;
        Some(ProcStat {
            cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
            threads: field(20)?,
            start_time_seconds: boot_time as f64 + field(22)? as f64 / ticks,
            virtual_bytes: field(23)?,
            resident_bytes: field(24)? * page,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Family names and types from exposition text's `# TYPE` lines.
    fn exported(text: &str) -> BTreeMap<String, String> {
        text.lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|rest| {
                let mut words = rest.split_whitespace();
                Some((words.next()?.to_owned(), words.next()?.to_owned()))
            })
            .collect()
    }

    #[test]
    fn a_node_exports_exactly_the_documented_metrics() {
        // A node id no other test uses, so this registry holds only what this test records.
        let metrics = node(9_001);
        name_group(9_001, 7, "orders", 3);
        let group = metrics.group(7);
        group.produced(10, 1_000);
        group.fetched(10, 1_000);
        let previous = GroupSample::default();
        let status = GroupSample {
            leading: true,
            term: 2,
            leader_id: 9_001,
            commit_index: 5,
            last_index: 6,
            follower_match: &[(2, 4)],
            ..Default::default()
        };
        group.status(&previous, &status);
        metrics.produce_answered(Duration::from_millis(3));
        metrics.fetch_answered(Duration::from_millis(3));
        metrics.fsync_done(Duration::from_micros(300));
        metrics.messages_sent(&[RaftMessage {
            body: Some(proto::raft_message::Body::AppendEntries(Default::default())),
            ..Default::default()
        }]);
        metrics.connection_opened();
        metrics.error(ErrorCode::NotLeader as i32);
        metrics.set_group_lag(vec![(("billing".into(), "orders".into(), 3), 4)]);
        metrics.set_consumer_groups(&[ConsumerGroupSample {
            group: "billing".into(),
            members: 2,
            generation: 5,
            rebalancing: true,
            rebalances: 1,
        }]);
        metrics.set_peer(2, 1, 1, 1, 0);
        metrics.set_ready(true);
        metrics.set_data_dir_space(1, 2);

        let text = metrics.render();
        let exported = exported(&text);
        let documented: BTreeMap<String, String> = METRICS
            .iter()
            .map(|m| (m.name.to_owned(), m.kind.type_name().to_owned()))
            .collect();
        assert_eq!(
            exported, documented,
            "exported metrics differ from METRICS:\n{text}"
        );
        assert!(text.contains(r#"raftlog_follower_lag_entries{node="9001",topic="orders",partition="3",peer="2"} 2"#), "{text}");
        assert!(
            text.contains(r#"raftlog_errors_total{node="9001",code="NOT_LEADER"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"raftlog_produce_latency_seconds_bucket{node="9001",le="0.0001"}"#),
            "{text}"
        );
    }

    #[test]
    fn metric_names_follow_the_prometheus_conventions() {
        let mut seen = std::collections::HashSet::new();
        for metric in METRICS {
            assert!(seen.insert(metric.name), "{} is listed twice", metric.name);
            let name = metric.name;
            assert!(
                name.starts_with("raftlog_") || name.starts_with("process_"),
                "{name}: no namespace"
            );
            assert_eq!(
                metric.kind == Kind::Counter,
                name.ends_with("_total"),
                "{name}: counters and only counters end in _total"
            );
            assert!(
                !name.contains("_ms") && !name.contains("millis"),
                "{name}: use base units"
            );
            assert_eq!(
                metric.kind == Kind::Histogram,
                !metric.buckets.is_empty(),
                "{name}: buckets"
            );
            assert!(
                metric.buckets.windows(2).all(|w| w[0] < w[1]),
                "{name}: buckets must increase"
            );
            for label in metric.labels {
                assert!(
                    ["topic", "partition", "peer", "code", "group"].contains(label),
                    "{name}: label {label} is not one of the bounded labels"
                );
            }
        }
        assert_eq!(LATENCY_BUCKETS_SECONDS.first(), Some(&0.0001));
        assert_eq!(LATENCY_BUCKETS_SECONDS.last(), Some(&10.0));
    }

    #[test]
    fn error_codes_get_their_short_names() {
        assert_eq!(error_code_label(ErrorCode::NotLeader as i32), "NOT_LEADER");
        assert_eq!(error_code_label(9_999), "9999");
    }
}
