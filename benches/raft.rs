//! Throughput of the Raft core alone: entries committed per second through a 3-member
//! in-memory cluster, for proposal batches of 1, 64 and 1024 entries.
//!
//! No network, no disk, no clock inside the core: each member's `Ready` is carried out in
//! memory (hard state and entries "persisted" at once, messages delivered in order), so the
//! number measures the consensus logic and the message building and handling it does per
//! entry. The leader keeps proposing while earlier batches are in flight (pipelining), up to
//! `uncommitted_bytes_max`.
//!
//! Run with `cargo bench --bench raft`; `RAFTLOG_BENCH_ENTRIES=N` changes the entries per
//! batch size (default 2,000,000; batch size 1 runs a tenth of it).

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use raftlog::config::RaftConfig;
use raftlog::proto::{Entry, RaftMessage};
use raftlog::raft::{entry_size_bytes, LogReader, Raft, ReadError, Ready, Role};

/// Payload of every proposed entry: a small record batch.
static PAYLOAD: [u8; 100] = [7; 100];

/// A member's storage: every written entry, durable at once.
#[derive(Default)]
struct MemLog {
    /// Index of the entry before `entries[0]` (the log start).
    start_index: u64,
    entries: Vec<Entry>,
}

impl MemLog {
    fn apply(&mut self, ready: &Ready) {
        if let Some(from) = ready.truncate_from {
            let keep = from.saturating_sub(self.start_index + 1) as usize;
            self.entries.truncate(keep);
        }
        self.entries.extend(ready.entries.iter().cloned());
    }
}

impl LogReader for MemLog {
    fn entries(&self, lo: u64, hi: u64, bytes_max: u64) -> Result<Vec<Entry>, ReadError> {
        if lo <= self.start_index {
            return Err(ReadError::Compacted);
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        for index in lo..hi {
            let Some(e) = self.entries.get((index - self.start_index - 1) as usize) else {
                break;
            };
            bytes += entry_size_bytes(e);
            if !out.is_empty() && bytes > bytes_max {
                break;
            }
            out.push(e.clone());
        }
        if out.is_empty() {
            return Err(ReadError::Unavailable);
        }
        Ok(out)
    }

    fn term_at(&self, index: u64) -> Result<u64, ReadError> {
        self.entries
            .get((index - self.start_index - 1) as usize)
            .map(|e| e.term)
            .ok_or(ReadError::Unavailable)
    }
}

struct Member {
    raft: Raft,
    log: MemLog,
}

/// Three members with member 1 elected.
fn cluster() -> Vec<Member> {
    let voters = vec![1, 2, 3];
    let mut members: Vec<Member> = voters
        .iter()
        .map(|&id| {
            let mut config = RaftConfig::default().consensus(id, 1, voters.clone());
            config.message_bytes_max = 1 << 20;
            config.inflight_msgs_max = 256;
            config.inflight_bytes_max = 64 << 20;
            config.uncommitted_bytes_max = 16 << 20;
            config.entry_cache_bytes_max = 64 << 20;
            Member {
                raft: Raft::new(config).expect("valid config"),
                log: MemLog::default(),
            }
        })
        .collect();
    members[0].raft.campaign_now();
    let mut net = VecDeque::new();
    while members[0].raft.role() != Role::Leader || !net.is_empty() {
        round(&mut members, &mut net);
    }
    members
}

/// Carries out every member's Ready, then delivers every message sent.
fn round(members: &mut [Member], net: &mut VecDeque<RaftMessage>) {
    for m in members.iter_mut() {
        let ready = m.raft.ready(&m.log);
        if ready.is_empty() {
            continue;
        }
        m.log.apply(&ready);
        net.extend(ready.messages);
        if let Some(last) = ready.entries.last() {
            m.raft.persisted(last.index, last.term);
        }
    }
    while let Some(msg) = net.pop_front() {
        members[(msg.to - 1) as usize].raft.step(msg);
    }
}

/// Commits `entries_count` entries proposed `batch` at a time; returns entries per second.
fn run(batch: u64, entries_count: u64) -> f64 {
    let mut members = cluster();
    let mut net = VecDeque::new();
    let base = members[0].raft.commit_index();
    let target = base + entries_count;
    let mut proposed = 0;
    let started = Instant::now();
    while members.iter().any(|m| m.raft.commit_index() < target) {
        let leader = &mut members[0].raft;
        let mut accepted = 0;
        while proposed < entries_count && accepted < batch {
            match leader.propose(Bytes::from_static(&PAYLOAD), 1, 0) {
                Ok(_) => {
                    proposed += 1;
                    accepted += 1;
                }
                // Backpressure: the uncommitted-bytes cap is full; commit first.
                Err(_) => break,
            }
        }
        round(&mut members, &mut net);
        // Trim storage so memory stays flat over millions of entries.
        for m in members.iter_mut() {
            let commit = m.raft.commit_index();
            if m.log.entries.len() > 1 << 16 && commit > m.log.start_index + (1 << 15) {
                let drop = (commit - m.log.start_index - (1 << 14)) as usize;
                m.log.entries.drain(..drop);
                m.log.start_index += drop as u64;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(
        members[0].raft.role(),
        Role::Leader,
        "leadership stayed put"
    );
    entries_count as f64 / elapsed
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing and only wants
    // the bench to build and run briefly.
    let quick = !std::env::args().any(|a| a == "--bench");
    let entries_count: u64 = std::env::var("RAFTLOG_BENCH_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 20_000 } else { 2_000_000 });
    println!("raft core, 3 members in memory, 100-byte entries");
    for batch in [1, 64, 1024] {
        let count = if batch == 1 {
            entries_count / 10
        } else {
            entries_count
        };
        let rate = run(batch, count);
        println!("batch {batch:>4}: {rate:>12.0} entries/s committed ({count} entries)");
    }
}
