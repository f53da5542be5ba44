//! The `raftlog` command line: parses arguments and dispatches to `raftlog::cli`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use raftlog::cli::node_commands::{self, DevArgs, ServeArgs};

/// raftlog: a Raft-replicated, Kafka-like append-only log service.
#[derive(Debug, Parser)]
#[command(name = "raftlog", version, about, long_about = None)]
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => node_commands::serve(args).await,
            Command::Dev(args) => node_commands::dev(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("raftlog: {message}");
            ExitCode::FAILURE
        }
    }
}
