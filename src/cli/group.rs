//! `raftlog group list|describe|delete|reset-offsets`: consumer groups.
//!
//! A group's members share the partitions of the topics they consume (`raftlog consume
//! --group`); these commands show who owns what and how far behind the group is, delete a
//! group that has no members, and move its committed offsets.

use std::fmt::Write as _;

use super::consume::{json_string, From};
use super::{table, write_stdout, CliError, ClientArgs};
use crate::client::consumer::partition_bounds;
use crate::client::{Admin, Cluster, OffsetSpec};
use crate::proto::GroupInfo;

/// `raftlog group ...`: flags shared by every group command, then the command.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct GroupArgs {
    /// How to reach the cluster.
    #[command(flatten)]
    pub client: ClientArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: GroupCommand,
}

/// The group commands.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum GroupCommand {
    /// List the consumer groups: GROUP STATE GENERATION MEMBERS
    List {
        /// Print one JSON object per group instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Show a group's members, who owns each partition, committed offset, high watermark, lag
    Describe {
        /// Group name
        group: String,
        /// Print one JSON object instead of tables
        #[arg(long)]
        json: bool,
    },
    /// Delete a group's committed offsets (only when it has no members)
    Delete {
        /// Group name
        group: String,
    },
    /// Set a group's committed offsets for a topic (only when it has no members)
    ResetOffsets {
        /// Group name
        group: String,
        /// Topic whose offsets to set
        #[arg(long)]
        topic: String,
        /// Where every partition starts next: earliest, latest or an offset
        #[arg(long, value_name = "earliest|latest|OFFSET")]
        to: From,
    },
}

/// Runs a group command.
///
/// # Errors
/// Any client error; UNKNOWN_GROUP for a group that does not exist, GROUP_NOT_EMPTY for a
/// delete or reset of a group with members.
pub async fn run(args: GroupArgs) -> Result<(), CliError> {
    let cluster = Cluster::connect(args.client.options()).await?;
    let admin = Admin::new(cluster.clone());
    match args.command {
        GroupCommand::List { json } => {
            let groups = admin.list_groups().await?;
            let text = if json {
                groups.iter().map(|g| summary_json(g) + "\n").collect()
            } else {
                let mut rows = vec![vec![
                    "GROUP".to_string(),
                    "STATE".into(),
                    "GENERATION".into(),
                    "MEMBERS".into(),
                ]];
                rows.extend(groups.iter().map(|g| {
                    vec![
                        g.name.clone(),
                        g.state.clone(),
                        g.generation.to_string(),
                        g.members.len().to_string(),
                    ]
                }));
                table(&rows)
            };
            write_stdout(text.as_bytes())
        }
        GroupCommand::Describe { group, json } => {
            let info = admin.describe_group(&group).await?;
            let text = if json {
                describe_json(&info) + "\n"
            } else {
                describe_tables(&info)
            };
            write_stdout(text.as_bytes())
        }
        GroupCommand::Delete { group } => {
            admin.delete_group(&group).await?;
            write_stdout(format!("deleted group {group}\n").as_bytes())
        }
        GroupCommand::ResetOffsets { group, topic, to } => {
            let info = cluster.topic(&topic).await?;
            let mut offsets = Vec::with_capacity(info.partitions.len());
            for partition in &info.partitions {
                let offset = match to.0 {
                    OffsetSpec::At(offset) => offset,
                    spec => {
                        let bounds =
                            partition_bounds(&cluster, &topic, partition.partition).await?;
                        if spec == OffsetSpec::Latest {
                            bounds.high_watermark
                        } else {
                            bounds.log_start_offset
                        }
                    }
                };
                offsets.push((partition.partition, offset));
            }
            admin.commit_offsets(&group, &topic, &offsets).await?;
            let mut out = String::new();
            for (partition, offset) in offsets {
                let _ = writeln!(out, "{group} {topic}/{partition}: next offset {offset}");
            }
            write_stdout(out.as_bytes())
        }
    }
}

fn json_text(value: &str) -> String {
    let mut out = Vec::new();
    json_string(&mut out, value.as_bytes());
    String::from_utf8(out).expect("json_string writes UTF-8")
}

fn summary_json(group: &GroupInfo) -> String {
    format!(
        "{{\"group\":{},\"state\":{},\"generation\":{},\"members\":{}}}",
        json_text(&group.name),
        json_text(&group.state),
        group.generation,
        group.members.len()
    )
}

fn describe_json(group: &GroupInfo) -> String {
    let members: Vec<String> = group
        .members
        .iter()
        .map(|m| {
            let topics: Vec<String> = m.topics.iter().map(|t| json_text(t)).collect();
            let owned: Vec<String> = group
                .partitions
                .iter()
                .filter(|p| p.owner == m.member_id)
                .map(|p| format!("[{},{}]", json_text(&p.topic), p.partition))
                .collect();
            format!(
                "{{\"member_id\":{},\"client_id\":{},\"topics\":[{}],\"session_timeout_ms\":{},\"partitions\":[{}]}}",
                json_text(&m.member_id),
                json_text(&m.client_id),
                topics.join(","),
                m.session_timeout_ms,
                owned.join(",")
            )
        })
        .collect();
    let partitions: Vec<String> = group
        .partitions
        .iter()
        .map(|p| {
            let owner = if p.owner.is_empty() {
                "null".to_string()
            } else {
                json_text(&p.owner)
            };
            let committed = if p.committed {
                p.committed_offset.to_string()
            } else {
                "null".to_string()
            };
            format!(
                "{{\"topic\":{},\"partition\":{},\"owner\":{owner},\"revoking\":{},\"committed_offset\":{committed},\"high_watermark\":{},\"lag\":{}}}",
                json_text(&p.topic),
                p.partition,
                p.revoking,
                p.high_watermark,
                p.lag
            )
        })
        .collect();
    format!(
        "{{\"group\":{},\"state\":{},\"generation\":{},\"members\":[{}],\"partitions\":[{}]}}",
        json_text(&group.name),
        json_text(&group.state),
        group.generation,
        members.join(","),
        partitions.join(",")
    )
}

fn describe_tables(group: &GroupInfo) -> String {
    let mut out = format!(
        "group {}: {}, generation {}, {} members\n\n",
        group.name,
        group.state,
        group.generation,
        group.members.len()
    );
    if !group.members.is_empty() {
        let mut rows = vec![vec![
            "MEMBER".to_string(),
            "CLIENT".into(),
            "TOPICS".into(),
            "PARTITIONS".into(),
        ]];
        for m in &group.members {
            let owned: Vec<String> = group
                .partitions
                .iter()
                .filter(|p| p.owner == m.member_id)
                .map(|p| format!("{}/{}", p.topic, p.partition))
                .collect();
            rows.push(vec![
                m.member_id.clone(),
                m.client_id.clone(),
                m.topics.join(","),
                owned.join(","),
            ]);
        }
        out.push_str(&table(&rows));
        out.push('\n');
    }
    let mut rows = vec![vec![
        "TOPIC".to_string(),
        "PARTITION".into(),
        "OWNER".into(),
        "COMMITTED".into(),
        "HIGH_WATERMARK".into(),
        "LAG".into(),
    ]];
    for p in &group.partitions {
        let owner = match (p.owner.as_str(), p.revoking) {
            ("", _) => "-".to_string(),
            (owner, true) => format!("{owner} (revoking)"),
            (owner, false) => owner.to_string(),
        };
        rows.push(vec![
            p.topic.clone(),
            p.partition.to_string(),
            owner,
            if p.committed {
                p.committed_offset.to_string()
            } else {
                "-".into()
            },
            p.high_watermark.to_string(),
            p.lag.to_string(),
        ]);
    }
    out.push_str(&table(&rows));
    out
}
