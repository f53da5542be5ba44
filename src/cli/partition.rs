//! `raftlog partition move|moves|move-cancel`: moving partitions between nodes.
//!
//! A move is recorded in the cluster metadata and carried out by the partition's leader
//! (`replica::moves`): new replicas join as learners, catch up, the voters are replaced
//! through the joint configuration, and once the metadata records the move complete the
//! nodes left delete their copy. These commands order, watch and cancel moves.

use std::time::Duration;

use super::{
    consume::json_string, table, write_stdout, CliError, ClientArgs, STALE_METADATA_GRACE,
};
use crate::client::{Admin, Cluster};
use crate::proto::{PartitionInfo, TopicInfo};

/// How often `--wait` looks at the move.
const WAIT_POLL: Duration = Duration::from_millis(200);

/// `raftlog partition ...`: flags shared by every partition command, then the command.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct PartitionArgs {
    /// How to reach the cluster.
    #[command(flatten)]
    pub client: ClientArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: PartitionCommand,
}

/// The partition commands.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum PartitionCommand {
    /// Move a partition to other replicas (node ids, the first preferred as leader)
    Move {
        /// Topic name
        topic: String,
        /// Partition number
        partition: u32,
        /// The replicas to end with, comma-separated node ids
        #[arg(long, value_delimiter = ',', required = true, value_name = "A,B,C")]
        replicas: Vec<u64>,
        /// Block until the move is done (exit 0), or failed (non-zero, with the reason)
        #[arg(long)]
        wait: bool,
    },
    /// List the partition moves under way
    Moves {
        /// Print one JSON object per move instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Cancel a partition move: the partition goes back to the replicas it had
    MoveCancel {
        /// Topic name
        topic: String,
        /// Partition number
        partition: u32,
    },
}

/// Runs a partition command.
///
/// # Errors
/// Any client error; UNKNOWN_TOPIC or UNKNOWN_PARTITION for a partition that does not exist,
/// INVALID_REQUEST for replicas that are not distinct nodes of the cluster.
pub async fn run(args: PartitionArgs) -> Result<(), CliError> {
    let cluster = Cluster::connect(args.client.options()).await?;
    let admin = Admin::new(cluster);
    match args.command {
        PartitionCommand::Move {
            topic,
            partition,
            replicas,
            wait,
        } => {
            let before = partition_info(&admin, &topic, partition).await?;
            admin.move_partition(&topic, partition, &replicas).await?;
            write_stdout(
                format!(
                    "moving {topic}/{partition} from {} to {}\n",
                    ids(&before.replicas),
                    ids(&replicas)
                )
                .as_bytes(),
            )?;
            if wait {
                wait_until_moved(&admin, &topic, partition, &replicas).await?;
                write_stdout(
                    format!("moved {topic}/{partition} to {}\n", ids(&replicas)).as_bytes(),
                )?;
            }
            Ok(())
        }
        PartitionCommand::Moves { json } => {
            let topics = admin.list_topics().await?;
            let mut moves = Vec::new();
            for topic in &topics {
                // The metadata leader's list has no live state; ask the partitions' leaders.
                let described = admin.describe_topic(&topic.name).await?;
                moves.extend(
                    described
                        .partitions
                        .iter()
                        .filter(|p| !p.target_replicas.is_empty())
                        .map(|p| (described.name.clone(), p.clone())),
                );
            }
            let text = if json {
                moves_json(&moves)
            } else {
                moves_table(&moves)
            };
            write_stdout(text.as_bytes())
        }
        PartitionCommand::MoveCancel { topic, partition } => {
            let info = partition_info(&admin, &topic, partition).await?;
            if info.target_replicas.is_empty() {
                return Err(CliError::Usage(format!(
                    "{topic}/{partition} is not moving"
                )));
            }
            admin
                .move_partition(&topic, partition, &info.replicas)
                .await?;
            write_stdout(
                format!(
                    "cancelling the move of {topic}/{partition}: back to {}\n",
                    ids(&info.replicas)
                )
                .as_bytes(),
            )
        }
    }
}

async fn partition_info(
    admin: &Admin,
    topic: &str,
    partition: u32,
) -> Result<PartitionInfo, CliError> {
    let info: TopicInfo = admin.describe_topic(topic).await?;
    let count = info.partitions.len();
    info.partitions
        .into_iter()
        .find(|p| p.partition == partition)
        .ok_or_else(|| {
            CliError::Client(crate::client::ClientError::UnknownPartition {
                topic: topic.to_owned(),
                partition,
                partitions: count as u32,
            })
        })
}

/// Waits until the metadata records the move done: the partition's replicas are `replicas`
/// and no move is under way (a cancel ends the wait with an error).
async fn wait_until_moved(
    admin: &Admin,
    topic: &str,
    partition: u32,
    replicas: &[u64],
) -> Result<(), CliError> {
    let mut wanted = replicas.to_vec();
    wanted.sort_unstable();
    // The node answering may not have applied the move yet: until it shows the move (or a
    // grace period passes), an unmoved partition means "not seen yet", not "cancelled".
    let started = std::time::Instant::now();
    let mut seen_moving = false;
    loop {
        let info = partition_info(admin, topic, partition).await?;
        let mut now = info.replicas.clone();
        now.sort_unstable();
        if info.target_replicas.is_empty() {
            if now == wanted {
                return Ok(());
            }
            if !seen_moving && started.elapsed() < STALE_METADATA_GRACE {
                tokio::time::sleep(WAIT_POLL).await;
                continue;
            }
            return Err(CliError::Usage(format!(
                "the move of {topic}/{partition} ended elsewhere: replicas {} (cancelled?)",
                ids(&info.replicas)
            )));
        }
        seen_moving = true;
        let mut target = info.target_replicas.clone();
        target.sort_unstable();
        if target != wanted {
            return Err(CliError::Usage(format!(
                "{topic}/{partition} is now moving to {} instead",
                ids(&info.target_replicas)
            )));
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
}

fn ids(list: &[u64]) -> String {
    list.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// What a move waits for, as the leader reports it.
fn waiting_for(p: &PartitionInfo) -> String {
    if p.move_waiting_for.is_empty() {
        "-".to_owned()
    } else {
        ids(&p.move_waiting_for)
    }
}

fn phase(p: &PartitionInfo) -> &str {
    if p.move_phase.is_empty() {
        "unknown"
    } else {
        &p.move_phase
    }
}

/// Bytes as people read them (binary units, one decimal).
fn human_bytes(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.1}{}", units[unit])
    }
}

/// Seconds left at the current rate, "-" when nothing is being sent (or nothing is left).
fn eta(p: &PartitionInfo) -> String {
    if p.move_bytes_remaining == 0 || p.move_rate_bytes_per_second == 0 {
        return "-".into();
    }
    let seconds = p
        .move_bytes_remaining
        .div_ceil(p.move_rate_bytes_per_second);
    if seconds >= 3600 {
        format!("{}h{:02}m", seconds / 3600, seconds % 3600 / 60)
    } else if seconds >= 60 {
        format!("{}m{:02}s", seconds / 60, seconds % 60)
    } else {
        format!("{seconds}s")
    }
}

/// The `partition moves` table. Byte counts are the leader's estimate (its log size and the
/// slowest new replica's match index); RATE is what it sends the new replicas now.
fn moves_table(moves: &[(String, PartitionInfo)]) -> String {
    let mut rows = vec![[
        "TOPIC",
        "PARTITION",
        "FROM",
        "TO",
        "PHASE",
        "BYTES_MOVED",
        "BYTES_REMAINING",
        "RATE",
        "ETA",
        "WAITING_FOR",
    ]
    .map(str::to_owned)
    .to_vec()];
    for (topic, p) in moves {
        rows.push(vec![
            topic.clone(),
            p.partition.to_string(),
            ids(&p.replicas),
            ids(&p.target_replicas),
            phase(p).to_owned(),
            human_bytes(p.move_bytes_moved),
            human_bytes(p.move_bytes_remaining),
            format!("{}/s", human_bytes(p.move_rate_bytes_per_second)),
            eta(p),
            waiting_for(p),
        ]);
    }
    table(&rows)
}

fn moves_json(moves: &[(String, PartitionInfo)]) -> String {
    let quoted = |text: &str| {
        let mut out = Vec::new();
        json_string(&mut out, text.as_bytes());
        String::from_utf8(out).expect("json_string writes UTF-8")
    };
    moves
        .iter()
        .map(|(topic, p)| {
            format!(
                "{{\"topic\":{},\"partition\":{},\"from\":{:?},\"to\":{:?},\"phase\":{},\
                 \"bytes_moved\":{},\"bytes_remaining\":{},\"rate_bytes_per_second\":{},\
                 \"waiting_for\":{:?}}}\n",
                quoted(topic),
                p.partition,
                p.replicas,
                p.target_replicas,
                quoted(phase(p)),
                p.move_bytes_moved,
                p.move_bytes_remaining,
                p.move_rate_bytes_per_second,
                p.move_waiting_for
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_reads_in_binary_units_and_eta_needs_a_rate() {
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(3 << 20), "3.0MiB");
        let mut p = PartitionInfo {
            move_bytes_remaining: 90 << 20,
            move_rate_bytes_per_second: 1 << 20,
            ..Default::default()
        };
        assert_eq!(eta(&p), "1m30s");
        p.move_rate_bytes_per_second = 0;
        assert_eq!(eta(&p), "-");
    }
}
