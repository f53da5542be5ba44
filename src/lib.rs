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
//! | [`wire`] | framing (4-byte length + envelope), handshake checks, correlation ids, error codes |
//! | [`storage`] | segmented, mmap-backed write-ahead log with CRCs, sparse index, hard state, recovery decision table, retention, snapshot install, two-phase (off-thread) sync |
//! | [`raft`] | the consensus core: pure and deterministic, no IO, no clock, no threads |
//!
//! Read `README.md` first, then this map, then `proto/raftlog.proto`: the schema explains how
//! leader election, log replication and snapshots travel between nodes.

#![deny(missing_docs)]

pub mod proto;
pub mod raft;
pub mod storage;
pub mod wire;
