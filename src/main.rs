//! The `raftlog` command line: see `raftlog --help` and the README.

use clap::Parser;

/// raftlog: a Raft-replicated, Kafka-like append-only log service.
#[derive(Debug, Parser)]
#[command(name = "raftlog", version, about, long_about = None)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    eprintln!(
        "raftlog {}: no subcommand given; see `raftlog --help`",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}
