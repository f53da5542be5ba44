//! `raftlog topic create|list|describe|delete`.

use std::time::Duration;

use super::{table, write_stdout, CliError, ClientArgs};
use crate::client::{Admin, ClientError, Cluster, NewTopic};
use crate::proto::{ErrorCode, TopicInfo};

/// Replication factor used when `--replication-factor` is not given, capped at the number of
/// nodes: three copies survive one failure with a majority left.
const REPLICATION_FACTOR_DEFAULT: u32 = 3;

/// Longest wait after a create for the new partitions to elect their leaders.
const LEADER_WAIT_MS_DEFAULT: u64 = 10_000;

/// `raftlog topic ...`: flags shared by every topic command, then the command.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct TopicArgs {
    /// How to reach the cluster.
    #[command(flatten)]
    pub client: ClientArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: TopicCommand,
}

/// The topic commands.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum TopicCommand {
    /// Create a topic and wait until its partitions have leaders
    Create {
        /// Topic name: 1 to 249 characters of [a-zA-Z0-9._-]
        name: String,
        /// Number of partitions
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        partitions: u32,
        /// Replicas per partition [default: 3, or the number of nodes if fewer]
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        replication_factor: Option<u32>,
        /// Size-based retention per partition in bytes (0 keeps everything)
        #[arg(long, default_value_t = 0, value_name = "BYTES")]
        retention_bytes: u64,
        /// Age-based retention in milliseconds (0 keeps everything)
        #[arg(long, default_value_t = 0, value_name = "MS")]
        retention_ms: u64,
        /// Succeed without changes when the topic already exists
        #[arg(long)]
        if_not_exists: bool,
        /// Longest wait for the new partitions to elect leaders, in milliseconds
        #[arg(long, default_value_t = LEADER_WAIT_MS_DEFAULT, value_name = "MS")]
        wait_ms: u64,
    },
    /// List topic names, one per line
    List {
        /// Also print partitions, replication factor and retention
        #[arg(long, short)]
        long: bool,
    },
    /// Show a topic's partitions: leader, replicas, log start, high watermark
    Describe {
        /// Topic name
        name: String,
    },
    /// Delete a topic and all its records
    Delete {
        /// Topic name
        name: String,
    },
}

/// Runs a topic command.
///
/// # Errors
/// Any client error; UNKNOWN_TOPIC for describe/delete of a missing topic.
pub async fn run(args: TopicArgs) -> Result<(), CliError> {
    let cluster = Cluster::connect(args.client.options()).await?;
    let admin = Admin::new(cluster);
    match args.command {
        TopicCommand::Create {
            name,
            partitions,
            replication_factor,
            retention_bytes,
            retention_ms,
            if_not_exists,
            wait_ms,
        } => {
            let replication_factor = match replication_factor {
                Some(factor) => factor,
                None => default_replication_factor(&admin).await?,
            };
            let topic = NewTopic {
                name,
                partitions,
                replication_factor,
                retention_bytes,
                retention_ms,
            };
            create(
                &admin,
                &topic,
                if_not_exists,
                Duration::from_millis(wait_ms),
            )
            .await
        }
        TopicCommand::List { long } => list(&admin, long).await,
        TopicCommand::Describe { name } => {
            let topic = admin.describe_topic(&name).await?;
            write_stdout(describe(&topic).as_bytes())
        }
        TopicCommand::Delete { name } => {
            // Say "unknown topic" rather than whatever a server says about a missing name.
            admin.describe_topic(&name).await?;
            admin.delete_topic(&name).await?;
            write_stdout(format!("deleted topic {name}\n").as_bytes())
        }
    }
}

async fn default_replication_factor(admin: &Admin) -> Result<u32, CliError> {
    let metadata = admin.describe_cluster().await?;
    let nodes = metadata.nodes.len() as u32;
    Ok(REPLICATION_FACTOR_DEFAULT.min(nodes.max(1)))
}

async fn create(
    admin: &Admin,
    topic: &NewTopic,
    if_not_exists: bool,
    leader_wait: Duration,
) -> Result<(), CliError> {
    match admin.create_topic(topic).await {
        Ok(created) => {
            let partitions = created.partitions.len().max(topic.partitions as usize);
            write_stdout(
                format!(
                    "created topic {} ({partitions} partitions, replication factor {})\n",
                    topic.name, topic.replication_factor
                )
                .as_bytes(),
            )?;
        }
        Err(ClientError::Server(error))
            if if_not_exists && error.code() == ErrorCode::TopicExists =>
        {
            return write_stdout(format!("topic {} already exists\n", topic.name).as_bytes());
        }
        Err(error) => return Err(error.into()),
    }
    // The topic exists now; leaders may take a moment. Not having them yet is worth a
    // warning, not a failure: producers retry until they appear.
    if let Err(error) = admin.wait_for_leaders(&topic.name, leader_wait).await {
        eprintln!("raftlog: warning: {error}");
    }
    Ok(())
}

async fn list(admin: &Admin, long: bool) -> Result<(), CliError> {
    let topics = admin.list_topics().await?;
    let text = if long {
        let mut rows = vec![vec![
            "NAME".to_string(),
            "PARTITIONS".into(),
            "REPLICATION".into(),
            "RETENTION_BYTES".into(),
            "RETENTION_MS".into(),
        ]];
        rows.extend(topics.iter().map(|t| {
            vec![
                t.name.clone(),
                t.partitions.len().to_string(),
                t.replication_factor.to_string(),
                t.retention_bytes.to_string(),
                t.retention_ms.to_string(),
            ]
        }));
        table(&rows)
    } else {
        topics.iter().map(|t| format!("{}\n", t.name)).collect()
    };
    write_stdout(text.as_bytes())
}

/// The `topic describe` text: a summary, then one row per partition.
pub fn describe(topic: &TopicInfo) -> String {
    let limit = |value: u64| {
        if value == 0 {
            "unlimited".to_string()
        } else {
            value.to_string()
        }
    };
    let mut text = format!(
        "topic: {}\npartitions: {}\nreplication factor: {}\nretention bytes: {}\nretention ms: {}\n\n",
        topic.name,
        topic.partitions.len(),
        topic.replication_factor,
        limit(topic.retention_bytes),
        limit(topic.retention_ms),
    );
    let mut rows = vec![vec![
        "PARTITION".to_string(),
        "LEADER".into(),
        "TERM".into(),
        "REPLICAS".into(),
        "LOG_START".into(),
        "HIGH_WATERMARK".into(),
    ]];
    for p in &topic.partitions {
        let leader = if p.leader_id == 0 {
            "none".to_string()
        } else {
            p.leader_id.to_string()
        };
        let replicas: Vec<String> = p.replicas.iter().map(u64::to_string).collect();
        rows.push(vec![
            p.partition.to_string(),
            leader,
            p.term.to_string(),
            replicas.join(","),
            p.log_start_offset.to_string(),
            p.high_watermark.to_string(),
        ]);
    }
    text.push_str(&table(&rows));
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::PartitionInfo;

    #[test]
    fn describe_shows_every_partition() {
        let topic = TopicInfo {
            name: "orders".into(),
            partitions: vec![
                PartitionInfo {
                    partition: 0,
                    leader_id: 2,
                    replicas: vec![2, 3, 1],
                    term: 4,
                    log_start_offset: 0,
                    high_watermark: 42,
                    ..Default::default()
                },
                PartitionInfo {
                    partition: 1,
                    replicas: vec![3, 1, 2],
                    ..Default::default()
                },
            ],
            replication_factor: 3,
            retention_bytes: 1024,
            retention_ms: 0,
        };
        assert_eq!(
            describe(&topic),
            "topic: orders\npartitions: 2\nreplication factor: 3\n\
             retention bytes: 1024\nretention ms: unlimited\n\n\
             PARTITION  LEADER  TERM  REPLICAS  LOG_START  HIGH_WATERMARK\n\
             0          2       4     2,3,1     0          42\n\
             1          none    0     3,1,2     0          0\n"
        );
    }
}
