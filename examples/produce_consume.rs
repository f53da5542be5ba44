//! Create a topic, produce a few keyed records, and read them back: the client library
//! (`raftlog::client`) from end to end.
//!
//! Start a local cluster first, then run the example against it:
//!
//! ```sh
//! cargo run --release -- dev &
//! cargo run --release --example produce_consume            # or: ... -- HOST:PORT[,HOST:PORT]
//! ```
//!
//! The cluster is found through the first argument, else `RAFTLOG_BOOTSTRAP`, else
//! `127.0.0.1:9400` (node 1 of `raftlog dev`).

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use raftlog::client::*;
use raftlog::proto::ErrorCode;

const TOPIC: &str = "example-events";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bootstrap = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("RAFTLOG_BOOTSTRAP").ok())
        .unwrap_or_else(|| BOOTSTRAP_DEFAULT.to_owned());
    let options = ClientOptions {
        bootstrap: bootstrap.split(',').map(str::to_owned).collect(),
        ..ClientOptions::default()
    };
    let cluster = Cluster::connect(options).await?;

    // Three partitions, three replicas (or as many as there are nodes). Running the example
    // again reuses the topic.
    let admin = Admin::new(cluster.clone());
    let nodes = admin.describe_cluster().await?.nodes.len() as u32;
    match admin
        .create_topic(&NewTopic::new(TOPIC, 3, nodes.clamp(1, 3)))
        .await
    {
        Ok(_) => say(&format!("created topic {TOPIC}"))?,
        Err(ClientError::Server(e)) if e.code() == ErrorCode::TopicExists => {
            say(&format!("topic {TOPIC} exists; appending to it"))?
        }
        Err(error) => return Err(error.into()),
    }
    admin
        .wait_for_leaders(TOPIC, Duration::from_secs(10))
        .await?;

    // The default producer is idempotent and waits for acks=all: an acknowledged record is
    // committed on a majority of its replicas, and retries never write it twice. Records
    // with the same key go to the same partition, in send order.
    let producer = Producer::new(cluster.clone(), ProducerOptions::default()).await?;
    let events = [
        ("user-1", "signed up"),
        ("user-2", "signed up"),
        ("user-1", "ordered a book"),
        ("user-2", "ordered a lamp"),
        ("user-1", "paid"),
    ];
    let mut deliveries = Vec::new();
    for (key, value) in events {
        let record = ProducerRecord::new(TOPIC, value).key(key);
        deliveries.push(producer.send(record).await?);
    }
    // Send whatever is still lingering in a batch now rather than after linger_ms.
    producer.flush().await;
    let mut first_offsets: BTreeMap<u32, u64> = BTreeMap::new();
    for ((key, value), delivery) in events.iter().zip(deliveries) {
        let written = delivery.await?;
        say(&format!(
            "produced {key}: {value:<16} -> partition {} offset {}",
            written.partition, written.offset
        ))?;
        let first = first_offsets
            .entry(written.partition)
            .or_insert(written.offset);
        *first = (*first).min(written.offset);
    }
    producer.close().await;

    // Read back exactly what this run wrote: each partition it wrote to, from its first
    // offset there. A consumer sees committed records only, CRC-checked.
    let mut consumer = Consumer::new(cluster, TOPIC, ConsumerOptions::default()).await?;
    let partitions: Vec<u32> = first_offsets.keys().copied().collect();
    consumer.assign(&partitions).await?;
    for (&partition, &offset) in &first_offsets {
        consumer.seek(partition, OffsetSpec::At(offset))?;
    }
    let mut read = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while read < events.len() {
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("read back {read} of {} records in time", events.len()).into());
        }
        for record in consumer.poll(Duration::from_millis(500)).await? {
            let key = record.key.as_deref().map(String::from_utf8_lossy);
            say(&format!(
                "consumed partition {} offset {}: {}: {}",
                record.partition,
                record.offset,
                key.unwrap_or_default(),
                String::from_utf8_lossy(&record.value)
            ))?;
            read += 1;
        }
    }
    Ok(())
}

/// Prints one line; unlike `println!`, a closed stdout (`| head`) is an error, not a panic.
fn say(line: &str) -> std::io::Result<()> {
    writeln!(std::io::stdout().lock(), "{line}")
}
