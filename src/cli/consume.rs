//! `raftlog consume TOPIC`: print committed records, one per line.
//!
//! Without `--follow` it stops at the high watermark each partition had when it started (or
//! after `--count` records); with `--follow` it tails new commits until SIGINT or SIGTERM.
//! `--from-time MS` starts each partition at its first record stamped at or after MS.
//! With `--group` it joins the consumer group: the group's members share the topic's
//! partitions (each partition is printed by one member at a time), each starts where the
//! group's committed offset says (`--from` only for a partition without one), and commits
//! what it printed at most once a second, before it gives a partition up, and once more at
//! the end, so a restart or a hand-over neither skips nor repeats records (a member killed
//! with SIGKILL repeats what it printed since its last commit). Every change of what this
//! member owns is logged on stderr: `group G generation N: assigned|revoked|lost T/P,...`.

use std::collections::BTreeMap;
use std::io::Write;
use std::str::FromStr;
use std::time::Duration;

use tokio::time::Instant;

use super::{CliError, ClientArgs};
use crate::client::{
    ClientError, Cluster, Consumer, ConsumerOptions, ConsumerRecord, GroupConsumer, GroupOptions,
    OffsetSpec, PartitionBounds, Rebalance,
};
use crate::groups::TopicPartition;
use crate::proto::{Error as ErrorMessage, ErrorCode};

/// How long one poll waits before the loop checks whether it is done.
const POLL_WAIT: Duration = Duration::from_millis(200);

/// Least time between two group commits while consuming.
const COMMIT_INTERVAL: Duration = Duration::from_secs(1);

/// `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The value, as raw bytes
    Value,
    /// {"partition":P,"offset":O,"timestamp_ms":T,"key":K,"value":V}
    Json,
}

/// `--from`: `earliest`, `latest` or an offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct From(pub OffsetSpec);

impl FromStr for From {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "earliest" => Ok(From(OffsetSpec::Earliest)),
            "latest" => Ok(From(OffsetSpec::Latest)),
            offset => offset
                .parse::<u64>()
                .map(|offset| From(OffsetSpec::At(offset)))
                .map_err(|_| format!("{text:?} is not earliest, latest or an offset")),
        }
    }
}

/// `raftlog consume` flags.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ConsumeArgs {
    /// How to reach the cluster.
    #[command(flatten)]
    pub client: ClientArgs,

    /// Topic to read
    pub topic: String,

    /// Read only this partition (default: all)
    #[arg(long)]
    pub partition: Option<u32>,

    /// Where to start: earliest, latest or an offset [default: the group's offset, else earliest]
    #[arg(long, value_name = "earliest|latest|OFFSET")]
    pub from: Option<From>,

    /// Start at each partition's first record with a timestamp at or after this time
    /// (Unix milliseconds); the end of the log where there is none
    #[arg(long, value_name = "MS", conflicts_with_all = ["from", "group"])]
    pub from_time: Option<i64>,

    /// Stop after this many records
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,

    /// Keep tailing new records until interrupted
    #[arg(long)]
    pub follow: bool,

    /// Consumer group to join: its members share the partitions; each starts from the
    /// group's committed offset and commits as records are printed
    #[arg(long)]
    pub group: Option<String>,

    /// With --group: how long this member may go unheard before the group gives its
    /// partitions to the others (1000 to 300000; default 10000)
    #[arg(long, value_name = "MS", requires = "group")]
    pub session_timeout_ms: Option<u32>,

    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Value)]
    pub format: Format,
}

/// Runs `raftlog consume`.
///
/// # Errors
/// Unknown topic or partition, an offset outside the log, corrupt data, or an unreachable
/// cluster.
pub async fn run(args: ConsumeArgs) -> Result<(), CliError> {
    let cluster = Cluster::connect(args.client.options()).await?;
    if let Some(group) = &args.group {
        return run_in_group(&args, cluster, group).await;
    }
    let mut consumer =
        Consumer::new(cluster.clone(), &args.topic, ConsumerOptions::default()).await?;
    if let Some(partition) = args.partition {
        consumer.assign(&[partition]).await?;
    }
    if let Some(From(spec)) = args.from {
        consumer.seek_all(spec);
    }
    if let Some(timestamp_ms) = args.from_time {
        consumer.seek_to_time(timestamp_ms).await?;
    }
    // Without --follow, stop at the high watermark of each partition as it is now. An
    // explicit offset outside the log is refused here, with the bounds, rather than being
    // taken for "nothing to show".
    let mut ends = BTreeMap::new();
    let explicit = match args.from {
        Some(From(OffsetSpec::At(offset))) => Some(offset),
        _ => None,
    };
    if !args.follow || explicit.is_some() {
        for partition in consumer.assignment() {
            let bounds = consumer.bounds(partition).await?;
            if let Some(offset) = explicit {
                check_in_range(&args.topic, partition, offset, bounds)?;
            }
            if !args.follow {
                ends.insert(partition, bounds.high_watermark);
            }
        }
    }
    let mut state = Progress {
        ends,
        printed: 0,
        next: BTreeMap::new(),
    };
    consume_loop(&args, &mut consumer, &mut state).await
}

/// `consume --group`: joins the group and prints what this member owns (see the module doc).
async fn run_in_group(args: &ConsumeArgs, cluster: Cluster, group: &str) -> Result<(), CliError> {
    let reset = match args.from {
        None => OffsetSpec::Earliest,
        Some(From(OffsetSpec::At(_))) => {
            return Err(CliError::Usage(
                "--from OFFSET does not go with --group: a member starts at the group's \
                 committed offset (move it with `raftlog group reset-offsets`)"
                    .into(),
            ))
        }
        Some(From(spec)) => spec,
    };
    if args.partition.is_some() {
        return Err(CliError::Usage(
            "--partition does not go with --group: the group decides who reads which".into(),
        ));
    }
    let options = GroupOptions {
        reset,
        client_id: format!("raftlog-consume-{}", std::process::id()),
        session_timeout_ms: args.session_timeout_ms.unwrap_or(0),
        // The command releases a partition as soon as it is asked: one session is plenty.
        rebalance_timeout_ms: args
            .session_timeout_ms
            .unwrap_or(crate::groups::SESSION_TIMEOUT_MS_DEFAULT),
        ..GroupOptions::default()
    };
    let mut member = GroupConsumer::subscribe(cluster, group, &[&args.topic], options).await?;
    let outcome = group_loop(args, &mut member, group).await;
    // Commit what was printed and leave even after an error: those records were shown.
    let closed = member.close().await;
    outcome?;
    closed?;
    Ok(())
}

async fn group_loop(
    args: &ConsumeArgs,
    member: &mut GroupConsumer,
    group: &str,
) -> Result<(), CliError> {
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let limit = args.count.unwrap_or(u64::MAX);
    // Without --follow: each partition's high watermark when this member first got it.
    let mut ends: BTreeMap<TopicPartition, u64> = BTreeMap::new();
    let mut printed = 0;
    let mut last_commit = Instant::now();
    while printed < limit {
        let records = tokio::select! {
            records = member.poll(POLL_WAIT) => records?,
            () = &mut shutdown => return Ok(()),
        };
        for event in member.rebalances() {
            let (what, generation, partitions) = match &event {
                Rebalance::Assigned {
                    generation,
                    partitions,
                } => ("assigned", generation, partitions),
                Rebalance::Revoked {
                    generation,
                    partitions,
                } => ("revoked", generation, partitions),
                Rebalance::Lost {
                    generation,
                    partitions,
                } => ("lost", generation, partitions),
            };
            let names: Vec<String> = partitions.iter().map(|(t, p)| format!("{t}/{p}")).collect();
            eprintln!(
                "group {group} generation {generation}: {what} {}",
                names.join(",")
            );
            if let (false, Rebalance::Assigned { partitions, .. }) = (args.follow, &event) {
                for (topic, partition) in partitions {
                    let bounds = member.bounds(topic, *partition).await?;
                    ends.entry((topic.clone(), *partition))
                        .or_insert(bounds.high_watermark);
                }
            }
        }
        let mut out = Vec::new();
        // Where each partition must resume: the first record not printed.
        let mut rewind: BTreeMap<u32, u64> = BTreeMap::new();
        for record in records {
            let key = (args.topic.clone(), record.partition);
            let past_end = !args.follow && ends.get(&key).is_some_and(|&end| record.offset >= end);
            if past_end || printed >= limit {
                rewind.entry(record.partition).or_insert(record.offset);
                continue;
            }
            format_record(&mut out, &record, args.format);
            printed += 1;
        }
        super::write_stdout(&out)?;
        for (partition, offset) in rewind {
            member.seek(&(args.topic.clone(), partition), offset)?;
        }
        if !args.follow && !ends.is_empty() {
            let owned = member.owned();
            let done = !owned.is_empty()
                && owned.iter().all(|p| {
                    let end = ends.get(p).copied().unwrap_or(0);
                    member.position(p).is_some_and(|position| position >= end)
                });
            if done {
                return Ok(());
            }
        }
        if last_commit.elapsed() >= COMMIT_INTERVAL {
            last_commit = Instant::now();
            if let Err(error) = member.commit().await {
                eprintln!("raftlog: warning: committing group offsets failed: {error}");
            }
        }
    }
    Ok(())
}

/// OFFSET_OUT_OF_RANGE unless `offset` lies in `[log_start_offset, high_watermark]`.
fn check_in_range(
    topic: &str,
    partition: u32,
    offset: u64,
    bounds: PartitionBounds,
) -> Result<(), CliError> {
    if (bounds.log_start_offset..=bounds.high_watermark).contains(&offset) {
        return Ok(());
    }
    Err(ClientError::Server(ErrorMessage {
        code: ErrorCode::OffsetOutOfRange as i32,
        message: format!("{topic}/{partition}: offset {offset} is outside the log"),
        log_start_offset: bounds.log_start_offset,
        high_watermark: bounds.high_watermark,
        ..Default::default()
    })
    .into())
}

/// Where the command stands.
struct Progress {
    /// Per partition: the offset to stop at (without --follow).
    ends: BTreeMap<u32, u64>,
    /// Records printed so far.
    printed: u64,
    /// Per partition: the offset after the last printed record.
    next: BTreeMap<u32, u64>,
}

impl Progress {
    /// Whether every partition reached its end (never with --follow, where `ends` is empty).
    fn at_ends(&self, consumer: &Consumer) -> bool {
        !self.ends.is_empty()
            && self.ends.iter().all(|(&p, &end)| {
                let position = self.next.get(&p).copied().or(consumer.position(p));
                position.is_some_and(|position| position >= end)
            })
    }
}

async fn consume_loop(
    args: &ConsumeArgs,
    consumer: &mut Consumer,
    state: &mut Progress,
) -> Result<(), CliError> {
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let follow = args.follow;
    let limit = args.count.unwrap_or(u64::MAX);
    if limit == 0 {
        return Ok(());
    }
    loop {
        let records = tokio::select! {
            records = consumer.poll(POLL_WAIT) => records?,
            () = &mut shutdown => return Ok(()),
        };
        let mut out = Vec::new();
        for record in records {
            if !follow
                && state
                    .ends
                    .get(&record.partition)
                    .is_some_and(|&end| record.offset >= end)
            {
                continue;
            }
            format_record(&mut out, &record, args.format);
            state.next.insert(record.partition, record.offset + 1);
            state.printed += 1;
            if state.printed >= limit {
                break;
            }
        }
        super::write_stdout(&out)?;
        if state.printed >= limit || (!follow && state.at_ends(consumer)) {
            return Ok(());
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Appends one record's line to `out`.
pub fn format_record(out: &mut Vec<u8>, record: &ConsumerRecord, format: Format) {
    match format {
        Format::Value => {
            out.extend_from_slice(&record.value);
            out.push(b'\n');
        }
        Format::Json => {
            let _ = write!(
                out,
                "{{\"partition\":{},\"offset\":{},\"timestamp_ms\":{},\"key\":",
                record.partition, record.offset, record.timestamp_ms
            );
            match &record.key {
                Some(key) => json_string(out, key),
                None => out.extend_from_slice(b"null"),
            }
            out.extend_from_slice(b",\"value\":");
            json_string(out, &record.value);
            out.extend_from_slice(b"}\n");
        }
    }
}

/// Writes `bytes` as a JSON string. Bytes that are not UTF-8 become U+FFFD, since JSON strings
/// cannot carry arbitrary bytes.
pub(crate) fn json_string(out: &mut Vec<u8>, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    out.push(b'"');
    for c in text.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn record(key: Option<&str>, value: &[u8]) -> ConsumerRecord {
        ConsumerRecord {
            partition: 2,
            offset: 17,
            timestamp_ms: 1_700_000_000_123,
            key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            value: Bytes::copy_from_slice(value),
            headers: Vec::new(),
        }
    }

    fn json(record: &ConsumerRecord) -> String {
        let mut out = Vec::new();
        format_record(&mut out, record, Format::Json);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn json_has_the_exact_documented_shape() {
        assert_eq!(
            json(&record(None, b"hello")),
            "{\"partition\":2,\"offset\":17,\"timestamp_ms\":1700000000123,\"key\":null,\"value\":\"hello\"}\n"
        );
        assert_eq!(
            json(&record(Some("k1"), b"")),
            "{\"partition\":2,\"offset\":17,\"timestamp_ms\":1700000000123,\"key\":\"k1\",\"value\":\"\"}\n"
        );
    }

    #[test]
    fn json_escapes_what_json_requires() {
        let line = json(&record(Some("a\"b"), b"tab\there\\ \x01 \xe2\x82\xac \xff"));
        assert!(
            line.ends_with(
                "\"key\":\"a\\\"b\",\"value\":\"tab\\there\\\\ \\u0001 \u{20ac} \u{fffd}\"}\n"
            ),
            "{line}"
        );
    }

    #[test]
    fn value_format_prints_raw_bytes() {
        let mut out = Vec::new();
        format_record(&mut out, &record(Some("k"), b"\xffraw"), Format::Value);
        assert_eq!(out, b"\xffraw\n");
    }

    #[test]
    fn from_accepts_earliest_latest_and_offsets_only() {
        assert_eq!("earliest".parse(), Ok(From(OffsetSpec::Earliest)));
        assert_eq!("latest".parse(), Ok(From(OffsetSpec::Latest)));
        assert_eq!("42".parse(), Ok(From(OffsetSpec::At(42))));
        for bad in ["", "-1", "first", "1.5", "Earliest"] {
            assert!(bad.parse::<From>().is_err(), "{bad:?} accepted");
        }
    }
}
