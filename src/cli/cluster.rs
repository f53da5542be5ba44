//! `raftlog cluster status`: nodes, the metadata leader, and per partition its leader, term,
//! offsets and how far each follower lags behind the leader. `raftlog cluster nodes`: every
//! node with its state and how many replicas and leaderships it holds; `decommission` and
//! `recommission` change a node's state.

use std::time::Duration;

use super::{
    consume::json_string, table, write_stdout, CliError, ClientArgs, STALE_METADATA_GRACE,
};
use crate::client::{Admin, Cluster, ClusterStatus};
use crate::proto::{MetadataResponse, PartitionInfo};

/// How often `decommission --wait` looks at the node.
const WAIT_POLL: Duration = Duration::from_millis(500);

/// `raftlog cluster ...`: flags shared by every cluster command, then the command.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ClusterArgs {
    /// How to reach the cluster.
    #[command(flatten)]
    pub client: ClientArgs,
    /// What to show.
    #[command(subcommand)]
    pub command: ClusterCommand,
}

/// The cluster commands.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum ClusterCommand {
    /// Show nodes (and whether they answer), the metadata leader, and per partition its
    /// leader, term, replicas, log start, high watermark and each follower's lag
    ///
    /// Every node is asked directly; a partition's live state comes from its leader. LAG
    /// lists each follower as NODE=ENTRIES: Raft entries (one per produced batch, plus a
    /// no-op per election) the follower is behind the leader's log, as the leader last
    /// heard; 0 means fully caught up. "?" means the leader did not answer (or there is no
    /// leader right now). Exits 4 when no node can be reached.
    #[command(verbatim_doc_comment)]
    Status {
        /// Print one JSON object instead of tables
        #[arg(long)]
        json: bool,
    },
    /// List every node: id, addresses, state (active, draining, removed), and how many
    /// partition replicas and leaderships it holds
    Nodes {
        /// Print one JSON array instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Move every replica (and the metadata seat) off NODE, its leaderships first, then
    /// record it removed; its id is never used again
    ///
    /// The metadata leader orders the moves (a few at a time) to the active nodes holding
    /// the fewest replicas; `cluster nodes` and `partition moves` show the progress. Refused
    /// (exit 2) when the nodes left could not hold every partition's replicas.
    #[command(verbatim_doc_comment)]
    Decommission {
        /// The node id
        node: u64,
        /// Block until the node is removed; exit 0, or non-zero with the reason
        #[arg(long)]
        wait: bool,
    },
    /// Cancel a decommission in progress: the node is active again (the moves already
    /// finished stay)
    Recommission {
        /// The node id
        node: u64,
    },
}

/// Runs a cluster command.
///
/// # Errors
/// Any client error; unreachable clusters give [`crate::client::ClientError::Timeout`].
pub async fn run(args: ClusterArgs) -> Result<(), CliError> {
    let cluster = Cluster::connect(args.client.options()).await?;
    match args.command {
        ClusterCommand::Status { json } => {
            let status = Admin::new(cluster).cluster_status().await?;
            let text = if json {
                status_json(&status)
            } else {
                status_text(&status)
            };
            write_stdout(text.as_bytes())
        }
        ClusterCommand::Nodes { json } => {
            let metadata = Admin::new(cluster).describe_cluster().await?;
            let rows = node_rows(&metadata);
            let text = if json {
                nodes_json(&rows)
            } else {
                nodes_text(&rows)
            };
            write_stdout(text.as_bytes())
        }
        ClusterCommand::Decommission { node, wait } => {
            let admin = Admin::new(cluster);
            let info = admin.decommission_node(node).await?;
            write_stdout(format!("node {node}: {}\n", info.state).as_bytes())?;
            if wait {
                wait_until_removed(&admin, node).await?;
                write_stdout(format!("node {node}: removed\n").as_bytes())?;
            }
            Ok(())
        }
        ClusterCommand::Recommission { node } => {
            let info = Admin::new(cluster).recommission_node(node).await?;
            write_stdout(format!("node {node}: {}\n", info.state).as_bytes())
        }
    }
}

/// One line of `cluster nodes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    /// Node id.
    pub id: u64,
    /// Where clients reach it.
    pub client_address: String,
    /// Where peers reach it.
    pub peer_address: String,
    /// active, draining or removed.
    pub state: String,
    /// Partition replicas placed on it (a move's target included).
    pub replicas: usize,
    /// Partitions it leads now.
    pub leaders: usize,
}

/// Every node of `metadata` with what it holds.
pub fn node_rows(metadata: &MetadataResponse) -> Vec<NodeRow> {
    let partitions = || metadata.topics.iter().flat_map(|t| t.partitions.iter());
    metadata
        .nodes
        .iter()
        .map(|n| NodeRow {
            id: n.node_id,
            client_address: n.client_address.clone(),
            peer_address: n.peer_address.clone(),
            state: if n.state.is_empty() {
                "active".into()
            } else {
                n.state.clone()
            },
            replicas: partitions()
                .filter(|p| {
                    p.replicas.contains(&n.node_id) || p.target_replicas.contains(&n.node_id)
                })
                .count(),
            leaders: partitions().filter(|p| p.leader_id == n.node_id).count(),
        })
        .collect()
}

/// The `cluster nodes` table.
pub fn nodes_text(rows: &[NodeRow]) -> String {
    let mut table_rows = vec![vec![
        "ID".to_string(),
        "CLIENT_ADDRESS".into(),
        "PEER_ADDRESS".into(),
        "STATE".into(),
        "REPLICAS".into(),
        "LEADERS".into(),
    ]];
    for row in rows {
        table_rows.push(vec![
            row.id.to_string(),
            row.client_address.clone(),
            row.peer_address.clone(),
            row.state.clone(),
            row.replicas.to_string(),
            row.leaders.to_string(),
        ]);
    }
    table(&table_rows)
}

/// `cluster nodes --json`: one array, one object per node.
pub fn nodes_json(rows: &[NodeRow]) -> String {
    let mut out = Vec::new();
    out.push(b'[');
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(format!("{{\"id\":{},\"client_address\":", row.id).as_bytes());
        json_string(&mut out, row.client_address.as_bytes());
        out.extend_from_slice(b",\"peer_address\":");
        json_string(&mut out, row.peer_address.as_bytes());
        out.extend_from_slice(b",\"state\":");
        json_string(&mut out, row.state.as_bytes());
        out.extend_from_slice(
            format!(
                ",\"replicas\":{},\"leaders\":{}}}",
                row.replicas, row.leaders
            )
            .as_bytes(),
        );
    }
    out.extend_from_slice(b"]\n");
    String::from_utf8(out).expect("JSON text is UTF-8")
}

/// Waits until `node` is recorded removed, printing how many replicas it still holds when
/// that changes; a recommission ends the wait with an error.
async fn wait_until_removed(admin: &Admin, node: u64) -> Result<(), CliError> {
    let mut last_replicas = None;
    // The node answering may not have applied the decommission yet: "active" means
    // "recommissioned" only once it was seen draining, or after a grace period.
    let started = std::time::Instant::now();
    let mut seen_draining = false;
    loop {
        let metadata = admin.describe_cluster().await?;
        let rows = node_rows(&metadata);
        let Some(row) = rows.iter().find(|r| r.id == node) else {
            return Err(CliError::Usage(format!(
                "node {node} is not in the cluster"
            )));
        };
        match row.state.as_str() {
            "removed" => return Ok(()),
            "active" if !seen_draining && started.elapsed() < STALE_METADATA_GRACE => {
                tokio::time::sleep(WAIT_POLL).await;
                continue;
            }
            "active" => {
                return Err(CliError::Usage(format!(
                    "node {node} is active again (recommissioned?): the decommission ended"
                )))
            }
            _ => seen_draining = true,
        }
        if last_replicas != Some(row.replicas) {
            last_replicas = Some(row.replicas);
            write_stdout(
                format!("node {node}: draining, {} replicas left\n", row.replicas).as_bytes(),
            )?;
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
}

/// The `cluster status` tables: a summary line, the nodes, then every partition.
pub fn status_text(status: &ClusterStatus) -> String {
    let reachable = status.nodes.iter().filter(|n| n.error.is_none()).count();
    let mut text = format!(
        "nodes: {} ({reachable} reachable)\nmetadata leader: {} (term {})\n\n",
        status.nodes.len(),
        id_or_none(status.metadata_leader_id),
        status.metadata_term,
    );
    let mut rows = vec![vec![
        "NODE".to_string(),
        "CLIENT_ADDRESS".into(),
        "PEER_ADDRESS".into(),
        "REACHABLE".into(),
    ]];
    for node in &status.nodes {
        rows.push(vec![
            node.info.node_id.to_string(),
            node.info.client_address.clone(),
            node.info.peer_address.clone(),
            match &node.error {
                None => "yes".into(),
                Some(error) => format!("no: {error}"),
            },
        ]);
    }
    text.push_str(&table(&rows));
    if status.topics.is_empty() {
        text.push_str("\nno topics\n");
        return text;
    }
    let mut rows = vec![vec![
        "TOPIC".to_string(),
        "PARTITION".into(),
        "LEADER".into(),
        "TERM".into(),
        "REPLICAS".into(),
        "LOG_START".into(),
        "HIGH_WATERMARK".into(),
        "LAG".into(),
    ]];
    for topic in &status.topics {
        for p in &topic.partitions {
            let replicas: Vec<String> = p.replicas.iter().map(u64::to_string).collect();
            rows.push(vec![
                topic.name.clone(),
                p.partition.to_string(),
                id_or_none(p.leader_id),
                p.term.to_string(),
                replicas.join(","),
                p.log_start_offset.to_string(),
                p.high_watermark.to_string(),
                follower_lag(p),
            ]);
        }
    }
    text.push('\n');
    text.push_str(&table(&rows));
    text
}

/// `NODE=ENTRIES` for each follower, comma-separated; `-` for a partition with no followers;
/// `?` when the leader's view is not known.
fn follower_lag(p: &PartitionInfo) -> String {
    if p.replica_progress.is_empty() {
        return "?".into();
    }
    let followers: Vec<String> = p
        .replica_progress
        .iter()
        .filter(|r| r.node_id != p.leader_id)
        .map(|r| format!("{}={}", r.node_id, r.lag_entries))
        .collect();
    if followers.is_empty() {
        "-".into()
    } else {
        followers.join(",")
    }
}

fn id_or_none(id: u64) -> String {
    if id == 0 {
        "none".into()
    } else {
        id.to_string()
    }
}

/// The `cluster status --json` object: the same facts as the tables, one line. Unknown
/// leaders are 0; `replicas_progress` is empty when the leader's view is not known.
pub fn status_json(status: &ClusterStatus) -> String {
    let mut out = Vec::new();
    out.extend_from_slice(b"{\"nodes\":[");
    for (i, node) in status.nodes.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(
            format!("{{\"id\":{},\"client_address\":", node.info.node_id).as_bytes(),
        );
        json_string(&mut out, node.info.client_address.as_bytes());
        out.extend_from_slice(b",\"peer_address\":");
        json_string(&mut out, node.info.peer_address.as_bytes());
        out.extend_from_slice(
            format!(",\"reachable\":{},\"error\":", node.error.is_none()).as_bytes(),
        );
        match &node.error {
            Some(error) => json_string(&mut out, error.as_bytes()),
            None => out.extend_from_slice(b"null"),
        }
        out.push(b'}');
    }
    out.extend_from_slice(
        format!(
            "],\"metadata_leader\":{},\"metadata_term\":{},\"partitions\":[",
            status.metadata_leader_id, status.metadata_term
        )
        .as_bytes(),
    );
    let mut first = true;
    for topic in &status.topics {
        for p in &topic.partitions {
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(b"{\"topic\":");
            json_string(&mut out, topic.name.as_bytes());
            let replicas: Vec<String> = p.replicas.iter().map(u64::to_string).collect();
            let progress: Vec<String> = p
                .replica_progress
                .iter()
                .map(|r| {
                    format!(
                        "{{\"node\":{},\"match_index\":{},\"lag_entries\":{}}}",
                        r.node_id, r.match_index, r.lag_entries
                    )
                })
                .collect();
            out.extend_from_slice(
                format!(
                    ",\"partition\":{},\"leader\":{},\"term\":{},\"replicas\":[{}],\
                     \"log_start_offset\":{},\"high_watermark\":{},\"replica_progress\":[{}]}}",
                    p.partition,
                    p.leader_id,
                    p.term,
                    replicas.join(","),
                    p.log_start_offset,
                    p.high_watermark,
                    progress.join(","),
                )
                .as_bytes(),
            );
        }
    }
    out.extend_from_slice(b"]}\n");
    String::from_utf8(out).expect("JSON built from UTF-8 text")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::NodeStatus;
    use crate::proto::{NodeInfo, ReplicaProgress, TopicInfo};

    fn status() -> ClusterStatus {
        let node = |id: u64, error: Option<&str>| NodeStatus {
            info: NodeInfo {
                node_id: id,
                client_address: format!("127.0.0.1:94{id}0"),
                peer_address: format!("127.0.0.1:94{id}1"),
                state: "active".into(),
            },
            error: error.map(str::to_owned),
        };
        let progress = |node_id, lag_entries| ReplicaProgress {
            node_id,
            match_index: 10 - lag_entries,
            lag_entries,
        };
        ClusterStatus {
            nodes: vec![node(1, None), node(2, None), node(3, Some("refused"))],
            metadata_leader_id: 1,
            metadata_term: 2,
            topics: vec![TopicInfo {
                name: "orders".into(),
                partitions: vec![
                    PartitionInfo {
                        partition: 0,
                        leader_id: 2,
                        replicas: vec![2, 3, 1],
                        term: 4,
                        high_watermark: 42,
                        replica_progress: vec![progress(2, 0), progress(3, 5), progress(1, 0)],
                        ..Default::default()
                    },
                    PartitionInfo {
                        partition: 1,
                        replicas: vec![3, 1, 2],
                        ..Default::default()
                    },
                ],
                replication_factor: 3,
                ..Default::default()
            }],
        }
    }

    #[test]
    fn status_text_shows_nodes_leaders_and_follower_lag() {
        assert_eq!(
            status_text(&status()),
            "nodes: 3 (2 reachable)\nmetadata leader: 1 (term 2)\n\n\
             NODE  CLIENT_ADDRESS  PEER_ADDRESS    REACHABLE\n\
             1     127.0.0.1:9410  127.0.0.1:9411  yes\n\
             2     127.0.0.1:9420  127.0.0.1:9421  yes\n\
             3     127.0.0.1:9430  127.0.0.1:9431  no: refused\n\n\
             TOPIC   PARTITION  LEADER  TERM  REPLICAS  LOG_START  HIGH_WATERMARK  LAG\n\
             orders  0          2       4     2,3,1     0          42              3=5,1=0\n\
             orders  1          none    0     3,1,2     0          0               ?\n"
        );
    }

    #[test]
    fn status_json_is_one_object_per_line() {
        let json = status_json(&status());
        assert!(
            json.ends_with("]}\n") && json.lines().count() == 1,
            "{json}"
        );
        assert!(
            json.contains("\"reachable\":false,\"error\":\"refused\""),
            "{json}"
        );
        assert!(
            json.contains("{\"node\":3,\"match_index\":5,\"lag_entries\":5}"),
            "{json}"
        );
        assert!(json.contains("\"leader\":0,\"term\":0"), "{json}");
    }
}
