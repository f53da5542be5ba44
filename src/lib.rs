//! raftlog: a Raft-replicated, Kafka-like append-only log service.
//!
//! Producers append record batches to the partitions of topics; consumers read the committed
//! part of each partition by offset. Every partition is its own Raft group, replicated on
//! several nodes; its log *is* its state, so committing an entry is the whole write path.
//!
//! # Map of the crate
//!
//! | module | owns |
//! | --- | --- |
//! | [`proto`] | the generated protobuf types of `proto/raftlog.proto`: log entries, Raft peer messages, client messages |
//! | [`client`] | the client library: cluster routing with retries, producer, consumer, group consumer, admin |
//! | [`cli`] | the code behind the `raftlog` subcommands: `topic`, `cluster`, `produce`, `consume`, `bench`, `serve`, `dev` (`main.rs` only parses and dispatches) |
//! | [`metadata`] | the replicated cluster metadata: topics, partition placement, consumer groups and their offsets, producer ids |
//! | [`groups`] | consumer groups: members, one owner per partition, the sticky rebalance that hands a partition over only once its owner released it |
//! | [`wire`] | framing (4-byte length + envelope), handshake checks, correlation ids, error codes |
//! | [`storage`] | segmented, mmap-backed write-ahead log with CRCs, sparse index, hard state, recovery decision table, retention, snapshot install, two-phase (off-thread) sync |
//! | [`daemon`] | the composition root: binds the listeners, starts the node, the client server and the ops listener (`/metrics`, `/health`, `/ready`), owns the one shutdown; `raftlog dev` |
//! | [`shutdown`] | the one shutdown signal every loop selects on, and the tracker of the tasks it waits for |
//! | [`node`] | a running node: metadata group, partition replicas placed here, routing, graceful stop (leadership hand-off, replicas, transport); readiness and collectors (`node::ops`) |
//! | [`server`] | the client listener: handshake, limits, pipelined requests, handlers; reaches the node only through its `Service` trait |
//! | [`replica`] | the replica driver: runs one Raft group on tokio, the one place where the core meets IO |
//! | [`raft`] | the consensus core: pure and deterministic, no IO, no clock, no threads; `Raft` takes ticks, messages, proposals and durability reports and returns a `Ready` (hard state, log writes, messages, commit index); see `docs/RAFT.md` |
//! | [`config`] | node configuration: identity, addresses, every limit and timeout with its reason |
//! | [`batch`] | the record batch format: builder, server-side validation, consumer-side decoding |
//! | [`metrics`] | every metric's name, type, labels and buckets in one place; per-node registries; the Prometheus exporter |
//! | [`backoff`], [`rng`] | retry delays with jitter (peer reconnects, client retries); the seeded SplitMix64 generator the core, the backoff and the tests share |
//! | [`transport`] | peer connections: one per peer, coalesced writes, bounded queues, reconnects |
//!
//! Read `README.md` first, then this map, then `proto/raftlog.proto`: the schema explains how
//! leader election, log replication and snapshots travel between nodes.

#![deny(missing_docs)]

pub mod backoff;
pub mod batch;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod groups;
pub mod metadata;
pub mod metrics;
pub mod node;
pub mod proto;
pub mod raft;
pub mod replica;
pub mod rng;
pub mod server;
pub mod shutdown;
pub mod storage;
pub mod transport;
pub mod wire;
