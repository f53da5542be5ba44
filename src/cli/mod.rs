//! The code behind the `raftlog` subcommands, as the command-line contract (`CLI.md` in the
//! shared docs, summarized in the README) specifies: the client commands `topic`, `cluster`,
//! `produce` and `consume`, and the node commands `serve` and `dev` ([`node_commands`]).
//!
//! `src/main.rs` owns the clap `Command` enum and only dispatches; each command family lives in
//! its own file here, with its clap arguments and its `run` function. For the client commands
//! this module owns what they share: starting the async runtime, turning errors into a message
//! on stderr and an exit code ([`exit_code`]), and writing to stdout without panicking on a
//! closed pipe.
//!
//! Exit codes: 0 success; 1 any other failure; 2 malformed flags or a request the cluster
//! refused as invalid; 3 unknown topic or partition; 4 cluster unreachable or not answering
//! in time; 5 some produced records were not acknowledged; 6 corrupt data read.

use std::future::Future;
use std::io::Write;
use std::process::ExitCode;

use crate::client::ClientError;
use crate::proto::ErrorCode;

pub mod args;
pub mod bench;
pub mod cluster;
pub mod consume;
pub mod group;
pub mod node_commands;
pub mod partition;
pub mod produce;
pub mod topic;

pub use args::ClientArgs;

/// How long a `--wait` allows the node it asks to apply a change just recorded before it
/// reads "not there" as "undone": the answering node may lag the metadata leader.
const STALE_METADATA_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Exit code: something else failed.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code: malformed flags, or a request the cluster refused as invalid (clap's own code).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the topic or partition does not exist.
pub const EXIT_NOT_FOUND: u8 = 3;
/// Exit code: the cluster could not be reached or did not answer in time.
pub const EXIT_UNAVAILABLE: u8 = 4;
/// Exit code: some produced records were not acknowledged.
pub const EXIT_INCOMPLETE: u8 = 5;
/// Exit code: a fetched batch failed its CRC or record checks.
pub const EXIT_CORRUPT: u8 = 6;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The client library failed.
    #[error("{}", describe(.0))]
    Client(#[from] ClientError),
    /// The flags make no sense together (beyond what clap checks).
    #[error("{0}")]
    Usage(String),
    /// Reading stdin or writing stdout failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// `produce` could not get every record acknowledged.
    #[error("{acknowledged} of {total} records acknowledged; first failure: {first_error}")]
    Incomplete {
        /// Records acknowledged.
        acknowledged: u64,
        /// Records read from stdin.
        total: u64,
        /// What stopped the first record that failed.
        first_error: String,
    },
}

/// The exit code for `error`.
pub fn exit_code(error: &CliError) -> u8 {
    match error {
        CliError::Usage(_) => EXIT_USAGE,
        CliError::Io(_) => EXIT_FAILURE,
        CliError::Incomplete { .. } => EXIT_INCOMPLETE,
        CliError::Client(error) => client_exit_code(error),
    }
}

fn client_exit_code(error: &ClientError) -> u8 {
    match error {
        ClientError::Connect { .. } | ClientError::Closed | ClientError::Timeout { .. } => {
            EXIT_UNAVAILABLE
        }
        ClientError::UnknownTopic(_) | ClientError::UnknownPartition { .. } => EXIT_NOT_FOUND,
        ClientError::Corrupt { .. } => EXIT_CORRUPT,
        ClientError::Invalid(_) | ClientError::Wire(_) => EXIT_FAILURE,
        ClientError::Server(message) => match message.code() {
            ErrorCode::UnknownTopic | ErrorCode::UnknownPartition | ErrorCode::UnknownGroup => {
                EXIT_NOT_FOUND
            }
            ErrorCode::InvalidRequest
            | ErrorCode::GroupNotEmpty
            | ErrorCode::UnknownMember
            | ErrorCode::IllegalGeneration => EXIT_USAGE,
            ErrorCode::CorruptBatch | ErrorCode::StorageCorrupt => EXIT_CORRUPT,
            ErrorCode::NotLeader
            | ErrorCode::Timeout
            | ErrorCode::NotEnoughReplicas
            | ErrorCode::ResourceExhausted
            | ErrorCode::ShuttingDown => EXIT_UNAVAILABLE,
            _ => EXIT_FAILURE,
        },
    }
}

/// A message for people: the server's own words with its code, and a hint where one helps.
fn describe(error: &ClientError) -> String {
    match error {
        ClientError::Server(message) => {
            let code = message
                .code()
                .as_str_name()
                .trim_start_matches("ERROR_CODE_");
            let mut text = if message.message.is_empty() {
                code.to_lowercase().replace('_', " ")
            } else {
                format!("{} ({code})", message.message)
            };
            if message.code() == ErrorCode::OffsetOutOfRange {
                text.push_str(&format!(
                    "; the log holds offsets [{}, {})",
                    message.log_start_offset, message.high_watermark
                ));
            }
            text
        }
        ClientError::Timeout { what, .. } if what.starts_with("reaching the cluster") => format!(
            "{error}\nhint: is a node running there? Start a local cluster with `raftlog dev`, \
             or point --bootstrap / RAFTLOG_BOOTSTRAP at one"
        ),
        other => other.to_string(),
    }
}

/// Runs one command on a fresh tokio runtime and turns its outcome into an exit code, with
/// the error (if any) on stderr as `raftlog: error: ...`.
pub fn run<F>(command: F) -> ExitCode
where
    F: Future<Output = Result<(), CliError>>,
{
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("raftlog: error: cannot start the async runtime: {error}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let outcome = runtime.block_on(command);
    // Background tasks (connections, fetches) must not keep the process alive.
    runtime.shutdown_background();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Io(error)) if error.kind() == std::io::ErrorKind::BrokenPipe => {
            // The reader of our output went away (`| head`): a normal way to stop.
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("raftlog: error: {error}");
            ExitCode::from(exit_code(&error))
        }
    }
}

/// Logs to stderr, filtered by `RAFTLOG_LOG` (default: warnings only).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RAFTLOG_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Writes `bytes` to stdout and flushes.
///
/// # Errors
/// The write error (`BrokenPipe` when the reader went away).
pub fn write_stdout(bytes: &[u8]) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(bytes)?;
    stdout.flush()?;
    Ok(())
}

/// Formats rows as left-aligned columns separated by two spaces (the last column unpadded).
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(String::len)
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Error as ErrorMessage;

    fn server(code: ErrorCode) -> CliError {
        CliError::Client(ClientError::Server(ErrorMessage {
            code: code as i32,
            message: "the server says so".into(),
            log_start_offset: 3,
            high_watermark: 9,
            ..Default::default()
        }))
    }

    #[test]
    fn errors_map_to_documented_exit_codes() {
        let cases = [
            (CliError::Usage("x".into()), 2),
            (CliError::Client(ClientError::UnknownTopic("t".into())), 3),
            (server(ErrorCode::UnknownTopic), 3),
            (server(ErrorCode::UnknownPartition), 3),
            (server(ErrorCode::InvalidRequest), 2),
            (server(ErrorCode::NotLeader), 4),
            (server(ErrorCode::TopicExists), 1),
            (server(ErrorCode::CorruptBatch), 6),
            (
                CliError::Client(ClientError::Connect {
                    address: "a:1".into(),
                    reason: "refused".into(),
                }),
                4,
            ),
            (
                CliError::Client(ClientError::Timeout {
                    what: "w".into(),
                    elapsed_ms: 1,
                    last: "l".into(),
                }),
                4,
            ),
            (
                CliError::Incomplete {
                    acknowledged: 1,
                    total: 2,
                    first_error: "e".into(),
                },
                5,
            ),
            (
                CliError::Client(ClientError::Corrupt {
                    partition: 0,
                    offset: 0,
                    source: crate::batch::BatchError::Empty,
                }),
                6,
            ),
        ];
        for (error, code) in cases {
            assert_eq!(exit_code(&error), code, "{error}");
        }
    }

    #[test]
    fn server_errors_read_like_sentences_with_their_code() {
        assert_eq!(
            server(ErrorCode::TopicExists).to_string(),
            "the server says so (TOPIC_EXISTS)"
        );
        assert_eq!(
            server(ErrorCode::OffsetOutOfRange).to_string(),
            "the server says so (OFFSET_OUT_OF_RANGE); the log holds offsets [3, 9)"
        );
    }

    #[test]
    fn tables_align_columns() {
        let rows = vec![
            vec!["PARTITION".to_string(), "LEADER".into(), "REPLICAS".into()],
            vec!["0".into(), "12".into(), "1,2,3".into()],
        ];
        assert_eq!(
            table(&rows),
            "PARTITION  LEADER  REPLICAS\n0          12      1,2,3\n"
        );
    }
}
