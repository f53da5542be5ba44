//! The client library: connections to raftlog nodes, request routing, and the producer,
//! consumer and admin APIs that the CLI and tests use.
//!
//! This module owns everything a client process does on the client port. It knows nothing of
//! Raft or storage: it sees a cluster only through the messages of `proto/raftlog.proto`.
//!
//! | module | owns |
//! | --- | --- |
//! | [`connection`] | one handshaken connection to one node, pipelined requests |
//! | [`cluster`] | bootstrap, cached metadata, a connection per node, routing with bounded retries |
//! | [`admin`] | topic create/list/describe/delete, cluster status, consumer-group offset commit/fetch |
//! | [`producer`] | records to offsets: partitioning, per-partition batching, retries |
//! | [`partitioner`] | which partition a record goes to (Kafka's murmur2 for keys) |
//! | [`consumer`] | assigned partitions, seeks, long-poll fetches, CRC-checked records |
//!
//! In short (a complete, runnable program is `examples/produce_consume.rs`:
//! `cargo run --release --example produce_consume` against `raftlog dev`):
//!
//! ```no_run
//! # async fn example() -> Result<(), raftlog::client::ClientError> {
//! use raftlog::client::*;
//! let cluster = Cluster::connect(ClientOptions::default()).await?;
//! Admin::new(cluster.clone()).create_topic(&NewTopic::new("orders", 3, 3)).await?;
//! let producer = Producer::new(cluster.clone(), ProducerOptions::default()).await?;
//! let delivery = producer.send(ProducerRecord::new("orders", "hello").key("user-1")).await?;
//! let written = delivery.await?;
//! let mut consumer = Consumer::new(cluster, "orders", ConsumerOptions::default()).await?;
//! consumer.seek(written.partition, OffsetSpec::At(written.offset))?;
//! let records = consumer.poll(std::time::Duration::from_secs(1)).await?;
//! # Ok(()) }
//! ```

pub mod admin;
pub mod cluster;
pub mod connection;
pub mod consumer;
pub mod group;
pub mod partitioner;
pub mod producer;

pub use crate::proto::Acks;
pub use admin::{Admin, ClusterStatus, NewTopic, NodeStatus};
pub use cluster::{ClientOptions, Cluster, Retry, Route, BOOTSTRAP_DEFAULT};
pub use connection::{ClientError, ConnectOptions, Connection};
pub use consumer::{Consumer, ConsumerOptions, ConsumerRecord, OffsetSpec, PartitionBounds};
pub use group::{GroupConsumer, GroupOptions, Rebalance};
pub use partitioner::Partitioner;
pub use producer::{
    DeliveryFuture, Producer, ProducerOptions, ProducerRecord, RecordMetadata,
    IDEMPOTENT_IN_FLIGHT_MAX,
};
