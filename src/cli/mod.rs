//! The `raftlog` command line: argument types and the code behind each subcommand. `main.rs`
//! only parses and dispatches.

pub mod node_commands;
