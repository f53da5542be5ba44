//! The `raftlog` command line: see `raftlog --help` and the README.
//!
//! This file only declares the commands and dispatches to them; each command family lives in
//! the library (`raftlog::cli::*` for the client commands), so adding one is a variant here and
//! a match arm below.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use raftlog::cli::{self, consume, produce, topic};

/// raftlog: a Raft-replicated, Kafka-like append-only log service.
///
/// Client commands find the cluster through --bootstrap (or RAFTLOG_BOOTSTRAP), default
/// 127.0.0.1:9400. Exit codes: 0 success, 1 failure, 2 bad flags or invalid request,
/// 3 unknown topic or partition, 4 cluster unreachable or not answering, 5 records not
/// acknowledged, 6 corrupt data.
#[derive(Debug, Parser)]
#[command(name = "raftlog", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, list, describe and delete topics
    Topic(topic::TopicArgs),
    /// Append stdin lines to a topic, one record per line
    Produce(produce::ProduceArgs),
    /// Print a topic's committed records, one per line
    Consume(consume::ConsumeArgs),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Topic(args) => cli::run(topic::run(args)),
        Command::Produce(args) => cli::run(produce::run(args)),
        Command::Consume(args) => cli::run(consume::run(args)),
    }
}
