//! The `raftlog` command line: parses arguments and dispatches to `raftlog::cli`.
//!
//! This file only declares the commands and dispatches to them; each command family lives in
//! the library (`raftlog::cli::*`), so adding one is a variant here and a match arm below.

use std::future::Future;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use raftlog::cli::node_commands::{self, DevArgs, ServeArgs};
use raftlog::cli::{self, bench, cluster, consume, group, partition, produce, topic};

/// raftlog: a Raft-replicated, Kafka-like append-only log service.
///
/// Client commands find the cluster through --bootstrap (or RAFTLOG_BOOTSTRAP), default
/// 127.0.0.1:9400. Exit codes of the client commands: 0 success, 1 failure, 2 bad flags or
/// invalid request, 3 unknown topic or partition, 4 cluster unreachable or not answering,
/// 5 records not acknowledged, 6 corrupt data.
#[derive(Debug, Parser)]
#[command(name = "raftlog", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one node of a cluster.
    Serve(ServeArgs),
    /// Run a local cluster of several nodes on 127.0.0.1.
    Dev(DevArgs),
    /// Create, list, describe and delete topics
    Topic(topic::TopicArgs),
    /// Show the cluster's nodes, leaders, terms and replication lag
    Cluster(cluster::ClusterArgs),
    /// Move partitions between nodes, list and cancel moves
    Partition(partition::PartitionArgs),
    /// Append stdin lines to a topic, one record per line
    Produce(produce::ProduceArgs),
    /// Print a topic's committed records, one per line
    Consume(consume::ConsumeArgs),
    /// List, describe and delete consumer groups, reset their offsets
    Group(group::GroupArgs),
    /// Measure produce, consume or end-to-end throughput and latency
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve(args) => run_node(node_commands::serve(args)),
        Command::Dev(args) => run_node(node_commands::dev(args)),
        Command::Topic(args) => cli::run(topic::run(args)),
        Command::Cluster(args) => cli::run(cluster::run(args)),
        Command::Partition(args) => cli::run(partition::run(args)),
        Command::Produce(args) => cli::run(produce::run(args)),
        Command::Consume(args) => cli::run(consume::run(args)),
        Command::Group(args) => cli::run(group::run(args)),
        Command::Bench(args) => cli::run(bench::run(args)),
    }
}

/// Runs a node command on a full-size runtime, with logs on stderr.
fn run_node(command: impl Future<Output = Result<(), String>>) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RAFTLOG_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(failure) => {
            eprintln!("raftlog: cannot start the async runtime: {failure}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("raftlog: {message}");
            ExitCode::FAILURE
        }
    }
}
