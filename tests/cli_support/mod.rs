//! Running the `raftlog` binary from tests: bounded, killed if it overruns, output captured.

#![allow(dead_code)]

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Longest any one command may run.
pub const BOUND: Duration = Duration::from_secs(60);

/// What a finished command left behind.
#[derive(Debug)]
pub struct Run {
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Everything written to stdout.
    pub stdout: String,
    /// Everything written to stderr.
    pub stderr: String,
}

/// Runs `raftlog ARGS` with `stdin` and `RAFTLOG_BOOTSTRAP=bootstrap`, bounded by [`BOUND`];
/// the child is killed (by its PID, on drop) if it overruns.
pub async fn raftlog(bootstrap: &str, args: &[&str], stdin: &str) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_raftlog"))
        .args(args)
        .env("RAFTLOG_BOOTSTRAP", bootstrap)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the raftlog binary starts");
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_owned();
    // Feed stdin from its own task so a large input cannot deadlock against full pipes.
    let feeder = tokio::spawn(async move {
        let _ = input.write_all(stdin.as_bytes()).await;
    });
    let output = tokio::time::timeout(BOUND, child.wait_with_output())
        .await
        .expect("raftlog finished in time")
        .unwrap();
    let _ = feeder.await;
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Starts `raftlog ARGS` in the background with piped stdout and stderr.
pub fn spawn(bootstrap: &str, args: &[&str]) -> tokio::process::Child {
    Command::new(env!("CARGO_BIN_EXE_raftlog"))
        .args(args)
        .env("RAFTLOG_BOOTSTRAP", bootstrap)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the raftlog binary starts")
}

/// Reads `count` lines from a spawned child's stdout (bounded by [`BOUND`]), for tests that
/// wait for output to appear before they go on; what is read is no longer in the child's
/// [`terminate`] output.
pub async fn read_lines(
    stdout: &mut tokio::io::BufReader<tokio::process::ChildStdout>,
    count: usize,
) -> String {
    use tokio::io::AsyncBufReadExt;
    let mut text = String::new();
    for _ in 0..count {
        let read = tokio::time::timeout(BOUND, stdout.read_line(&mut text))
            .await
            .expect("the child printed in time")
            .unwrap();
        assert!(read > 0, "stdout closed after {text:?}");
    }
    text
}

/// Sends SIGTERM to a running child by its PID and waits (bounded) for its output.
pub async fn terminate(child: tokio::process::Child) -> Run {
    let pid = child.id().expect("still running") as libc::pid_t;
    // SAFETY: kill(2) on the PID of a child we spawned and have not reaped yet.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let output = tokio::time::timeout(BOUND, child.wait_with_output())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The value of `"field":` in one line of `consume --format json` output, as raw JSON text.
pub fn json_field<'a>(line: &'a str, field: &str) -> &'a str {
    let tag = format!("\"{field}\":");
    let start = line
        .find(&tag)
        .unwrap_or_else(|| panic!("{field} in {line}"))
        + tag.len();
    let rest = &line[start..];
    let end = if let Some(string) = rest.strip_prefix('"') {
        // Strings in these tests hold no escaped quotes.
        string.find('"').unwrap() + 2
    } else {
        rest.find([',', '}']).unwrap()
    };
    &rest[..end]
}
