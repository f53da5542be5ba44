//! The client library: connections to raftlog nodes, and (growing) the producer, consumer and
//! admin APIs that the CLI and tests use.
//!
//! This module owns everything a client process does on the client port. It knows nothing of
//! Raft or storage: it sees a cluster only through the messages of `proto/raftlog.proto`.

pub mod connection;

pub use connection::{ClientError, ConnectOptions, Connection};
