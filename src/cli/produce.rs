//! `raftlog produce TOPIC`: one record per stdin line.
//!
//! The value is the line without its newline; `--key` gives every record the same key,
//! `--key-separator` takes the key from the part of each line before the first separator (a
//! line without it has no key). Records go to `--partition`, or by key hash, or round-robin.
//! With `--print-offsets`, `PARTITION OFFSET` is printed for each record once acknowledged,
//! in input order. The exit code is 0 only if every record was acknowledged.

use std::io::Write;

use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use super::{CliError, ClientArgs};
use crate::client::{Acks, Cluster, DeliveryFuture, Producer, ProducerOptions, ProducerRecord};

/// Acknowledgements the printer may fall behind the reader by; beyond this the reader waits,
/// so memory stays bounded whatever the input size.
const PENDING_DELIVERIES_MAX: usize = 65_536;

/// `--acks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AcksArg {
    /// Acknowledged once committed on a majority of replicas
    All,
    /// Acknowledged once the leader appended it (lost if the leader fails before replicating)
    Leader,
}

/// `raftlog produce` flags.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ProduceArgs {
    /// How to reach the cluster.
    #[command(flatten)]
    pub client: ClientArgs,

    /// Topic to append to
    pub topic: String,

    /// Send every record to this partition
    #[arg(long)]
    pub partition: Option<u32>,

    /// Key for every record
    #[arg(long, conflicts_with = "key_separator")]
    pub key: Option<String>,

    /// Split each line at the first SEP: key before, value after
    #[arg(long, value_name = "SEP", value_parser = parse_separator)]
    pub key_separator: Option<String>,

    /// When a record counts as acknowledged
    #[arg(long, value_enum, default_value_t = AcksArg::All)]
    pub acks: AcksArg,

    /// Print "PARTITION OFFSET" for each acknowledged record, in input order
    #[arg(long)]
    pub print_offsets: bool,

    /// How long a batch waits for more records, in milliseconds
    #[arg(long, default_value_t = 5, value_name = "MS")]
    pub linger_ms: u64,

    /// Largest record batch, in bytes
    #[arg(long, default_value_t = 1024 * 1024, value_name = "BYTES")]
    pub batch_bytes_max: usize,
}

fn parse_separator(text: &str) -> Result<String, String> {
    if text.is_empty() {
        Err("the key separator must not be empty".into())
    } else {
        Ok(text.to_owned())
    }
}

/// Splits a line into (key, value) per the flags.
pub fn split_line(
    line: &[u8],
    key: Option<&str>,
    separator: Option<&str>,
) -> (Option<Bytes>, Bytes) {
    if let Some(key) = key {
        return (
            Some(Bytes::copy_from_slice(key.as_bytes())),
            Bytes::copy_from_slice(line),
        );
    }
    if let Some(separator) = separator.map(str::as_bytes) {
        if let Some(at) = line.windows(separator.len()).position(|w| w == separator) {
            let key = Bytes::copy_from_slice(&line[..at]);
            let value = Bytes::copy_from_slice(&line[at + separator.len()..]);
            return (Some(key), value);
        }
    }
    (None, Bytes::copy_from_slice(line))
}

/// What the printer saw.
#[derive(Debug, Default)]
struct Tally {
    acknowledged: u64,
    failed: u64,
    first_error: Option<String>,
}

/// Runs `raftlog produce`.
///
/// # Errors
/// Unknown topic or partition before reading anything; [`CliError::Incomplete`] when some
/// record was not acknowledged.
pub async fn run(args: ProduceArgs) -> Result<(), CliError> {
    if args.batch_bytes_max == 0 {
        return Err(CliError::Usage(
            "--batch-bytes-max must be at least 1".into(),
        ));
    }
    let cluster = Cluster::connect(args.client.options()).await?;
    // Refuse a wrong topic or partition before reading stdin, with the precise error.
    let topic = cluster.topic(&args.topic).await?;
    if let Some(partition) = args.partition {
        let partitions = topic.partitions.len() as u32;
        if partition >= partitions {
            return Err(crate::client::ClientError::UnknownPartition {
                topic: args.topic.clone(),
                partition,
                partitions,
            }
            .into());
        }
    }
    let options = ProducerOptions {
        acks: match args.acks {
            AcksArg::All => Acks::All,
            AcksArg::Leader => Acks::Leader,
        },
        linger_ms: args.linger_ms,
        batch_bytes_max: args.batch_bytes_max,
        delivery_timeout_ms: args.client.request_timeout_ms.max(1),
        ..ProducerOptions::default()
    };
    let producer = Producer::new(cluster, options).await?;
    let (deliveries, pending) = mpsc::channel(PENDING_DELIVERIES_MAX);
    let printer = tokio::spawn(print_offsets(pending, args.print_offsets));
    let read = read_records(&args, &producer, deliveries).await;
    producer.close().await;
    let tally = printer
        .await
        .map_err(|error| CliError::Usage(format!("the offset printer failed: {error}")))??;
    let (total, read_error) = read?;
    let total = total.max(tally.acknowledged + tally.failed);
    if let Some(error) = read_error {
        return Err(CliError::Incomplete {
            acknowledged: tally.acknowledged,
            total,
            first_error: tally.first_error.unwrap_or(error),
        });
    }
    if tally.failed > 0 {
        return Err(CliError::Incomplete {
            acknowledged: tally.acknowledged,
            total,
            first_error: tally.first_error.unwrap_or_default(),
        });
    }
    Ok(())
}

/// Reads stdin to the end, sending a record per line. Returns the number of lines read and
/// the error that stopped sending early, if one did.
async fn read_records(
    args: &ProduceArgs,
    producer: &Producer,
    deliveries: mpsc::Sender<Result<DeliveryFuture, String>>,
) -> Result<(u64, Option<String>), CliError> {
    let mut stdin = BufReader::with_capacity(256 * 1024, tokio::io::stdin());
    let mut line = Vec::new();
    let mut total = 0u64;
    loop {
        line.clear();
        if stdin.read_until(b'\n', &mut line).await? == 0 {
            return Ok((total, None));
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        total += 1;
        let (key, value) = split_line(&line, args.key.as_deref(), args.key_separator.as_deref());
        let record = ProducerRecord {
            topic: args.topic.clone(),
            partition: args.partition,
            key,
            value,
            ..ProducerRecord::default()
        };
        let delivery = producer.send(record).await.map_err(|e| e.to_string());
        let stop = delivery.as_ref().err().cloned();
        if deliveries.send(delivery).await.is_err() {
            return Ok((total, Some("the offset printer stopped".into())));
        }
        if let Some(error) = stop {
            // A record that cannot even be queued (topic deleted, producer closed) means the
            // rest would fail the same way; stop reading.
            return Ok((total, Some(error)));
        }
    }
}

/// Awaits deliveries in input order, printing offsets if asked, and counts the outcomes.
async fn print_offsets(
    mut pending: mpsc::Receiver<Result<DeliveryFuture, String>>,
    print: bool,
) -> Result<Tally, CliError> {
    let mut tally = Tally::default();
    let mut out = std::io::BufWriter::new(std::io::stdout());
    while let Some(delivery) = pending.recv().await {
        let outcome = match delivery {
            Ok(delivery) => delivery.await.map_err(|e| e.to_string()),
            Err(error) => Err(error),
        };
        match outcome {
            Ok(written) => {
                tally.acknowledged += 1;
                if print {
                    writeln!(out, "{} {}", written.partition, written.offset)?;
                }
            }
            Err(error) => {
                tally.failed += 1;
                tally.first_error.get_or_insert(error);
            }
        }
        // Show offsets as soon as nothing more is ready, so interactive use sees them.
        if pending.is_empty() {
            out.flush()?;
        }
    }
    out.flush()?;
    Ok(tally)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_at_the_first_separator() {
        let (key, value) = split_line(b"user-1:a:b", None, Some(":"));
        assert_eq!(key.as_deref(), Some(&b"user-1"[..]));
        assert_eq!(&value[..], b"a:b");
        let (key, value) = split_line(b"no separator here", None, Some("::"));
        assert_eq!(key, None);
        assert_eq!(&value[..], b"no separator here");
        let (key, value) = split_line(b"k=>v", None, Some("=>"));
        assert_eq!((key.as_deref(), &value[..]), (Some(&b"k"[..]), &b"v"[..]));
        let (key, value) = split_line(b"", None, Some(":"));
        assert_eq!((key, &value[..]), (None, &b""[..]));
    }

    #[test]
    fn a_fixed_key_keeps_the_whole_line_as_value() {
        let (key, value) = split_line(b"a:b", Some("k"), None);
        assert_eq!((key.as_deref(), &value[..]), (Some(&b"k"[..]), &b"a:b"[..]));
    }
}
