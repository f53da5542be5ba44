//! Property test: the log against an in-memory model, through random appends, syncs,
//! truncations, prefix deletions, snapshot installs, crashes and reopens.
//!
//! A crash drops the log without syncing and damages everything after the last durable
//! frame of the active segment (zeros, a torn frame, or garbage): after reopening, the log
//! must equal the model's durable prefix exactly. More cases: `RAFTLOG_PROPTEST_CASES=1000`.

use std::os::unix::fs::FileExt;
use std::path::Path;

use bytes::Bytes;
use proptest::prelude::*;

use super::{Log, LogConfig, SyncPolicy};
use crate::proto::{Entry, EntryKind};

#[derive(Debug, Clone)]
enum Op {
    Append {
        count: usize,
        new_term: bool,
        payload_bytes: usize,
        records: u32,
    },
    Sync,
    Commit {
        fraction: f64,
    },
    Truncate {
        back: u64,
    },
    DeletePrefix {
        fraction: f64,
    },
    Snapshot {
        ahead: u64,
    },
    Crash {
        tail: Tail,
        seed: u64,
    },
    Reopen,
    /// Read a range and keep its `Bytes` while later operations run.
    Hold {
        fraction: f64,
    },
}

#[derive(Debug, Clone, Copy)]
enum Tail {
    Zeroed,
    Torn,
    Garbage,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1usize..6, prop::bool::weighted(0.2), 0usize..700, 0u32..4)
            .prop_map(|(count, new_term, payload_bytes, records)| Op::Append { count, new_term, payload_bytes, records }),
        3 => Just(Op::Sync),
        2 => (0.0f64..1.0).prop_map(|fraction| Op::Commit { fraction }),
        2 => (0u64..12).prop_map(|back| Op::Truncate { back }),
        1 => (0.0f64..1.0).prop_map(|fraction| Op::DeletePrefix { fraction }),
        1 => (0u64..4).prop_map(|ahead| Op::Snapshot { ahead }),
        2 => (0.0f64..1.0).prop_map(|fraction| Op::Hold { fraction }),
        2 => (prop_oneof![Just(Tail::Zeroed), Just(Tail::Torn), Just(Tail::Garbage)], any::<u64>())
            .prop_map(|(tail, seed)| Op::Crash { tail, seed }),
        1 => Just(Op::Reopen),
    ]
}

/// What the log must hold.
struct Model {
    start_index: u64,
    start_term: u64,
    start_offset: u64,
    entries: Vec<Entry>,
    durable_index: u64,
    commit_index: u64,
    term: u64,
    /// Payloads a reader holds, with a private copy of what they must keep showing.
    held: Vec<(Bytes, Vec<u8>)>,
}

impl Model {
    fn last_index(&self) -> u64 {
        self.start_index + self.entries.len() as u64 - 1
    }
    fn last_term(&self) -> u64 {
        self.entries.last().map_or(self.start_term, |e| e.term)
    }
    fn next_offset(&self) -> u64 {
        self.entries.last().map_or(self.start_offset, |e| {
            e.base_offset + u64::from(e.record_count)
        })
    }
    fn keep_through(&mut self, last_index: u64) {
        self.entries
            .truncate((last_index + 1 - self.start_index) as usize);
    }
}

fn config() -> LogConfig {
    LogConfig {
        segment_size_bytes: 4096,
        index_interval_bytes: 256,
        sync_policy: SyncPolicy::Always,
        mapped_segments_max: 2,
        verify_sealed_on_open: true,
    }
}

fn assert_matches(log: &Log, model: &Model) {
    assert_eq!(log.first_index(), model.start_index, "first index");
    assert_eq!(log.last_index(), model.last_index(), "last index");
    assert_eq!(log.last_term(), model.last_term(), "last term");
    assert_eq!(log.next_offset(), model.next_offset(), "next offset");
    assert_eq!(log.start_offset(), model.start_offset, "start offset");
    assert_eq!(
        log.term_at(model.start_index - 1),
        Some(model.start_term),
        "start term"
    );
    assert!(log.durable_index() >= model.durable_index.min(log.last_index()));
    let entries = log
        .entries(log.first_index(), log.last_index() + 1, u64::MAX)
        .unwrap();
    assert_eq!(entries, model.entries, "entries");
    for entry in &model.entries {
        assert_eq!(log.term_at(entry.index), Some(entry.term));
    }
    for (held, copy) in &model.held {
        assert!(held[..] == copy[..], "bytes held by a reader changed");
    }
}

fn append(
    log: &mut Log,
    model: &mut Model,
    count: usize,
    new_term: bool,
    payload_bytes: usize,
    records: u32,
) {
    if new_term {
        model.term += 1;
    }
    let mut batch = Vec::new();
    let mut next_offset = model.next_offset();
    for i in 0..count as u64 {
        let index = model.last_index() + 1 + i;
        let kind = if records == 0 {
            EntryKind::Noop
        } else {
            EntryKind::Data
        };
        batch.push(Entry {
            term: model.term,
            index,
            kind: kind as i32,
            base_offset: next_offset,
            record_count: records,
            timestamp_ms: index as i64,
            payload: Bytes::from(vec![(index % 251) as u8; payload_bytes]),
        });
        next_offset += u64::from(records);
    }
    log.append(&batch).unwrap();
    model.entries.extend(batch);
}

/// Damages the unsynced tail as a crash may leave it: everything after the last durable
/// frame is lost, then a strict prefix of the first lost frame (torn) or random bytes
/// (garbage) may be there instead.
fn crash(log: Log, model: &mut Model, tail: Tail, seed: u64) {
    let (path, durable_position, end) = log.durable_tail();
    let last_durable = log.durable_index();
    drop(log);
    model.keep_through(last_durable);
    model.durable_index = last_durable;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let capacity = file.metadata().unwrap().len();
    let unsynced = (end - durable_position) as usize;
    let mut lost = vec![0u8; unsynced];
    file.read_exact_at(&mut lost, durable_position).unwrap();
    file.write_all_at(&vec![0u8; unsynced], durable_position)
        .unwrap();
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    match tail {
        Tail::Zeroed => {}
        Tail::Torn if unsynced > 0 => {
            let frame_bytes = u32::from_le_bytes(lost[0..4].try_into().unwrap()) as u64;
            let kept = 1 + next() % (frame_bytes - 1);
            file.write_all_at(&lost[..kept as usize], durable_position)
                .unwrap();
        }
        Tail::Torn => {}
        Tail::Garbage => {
            let room = (capacity - durable_position) as usize;
            let bytes = (1 + next() as usize % (unsynced + 64)).min(room);
            let garbage: Vec<u8> = (0..bytes).map(|_| next() as u8).collect();
            file.write_all_at(&garbage, durable_position).unwrap();
        }
    }
}

fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config()).unwrap().0;
    let mut model = Model {
        start_index: 1,
        start_term: 0,
        start_offset: 0,
        entries: Vec::new(),
        durable_index: 0,
        commit_index: 0,
        term: 1,
        held: Vec::new(),
    };
    for op in ops {
        log = match op {
            Op::Crash { tail, seed } => {
                model.held.clear();
                crash(log, &mut model, tail, seed);
                reopen(dir.path())
            }
            Op::Reopen => {
                model.held.clear();
                drop(log);
                reopen(dir.path())
            }
            op => {
                step(&mut log, &mut model, op);
                log
            }
        };
        assert_matches(&log, &model);
    }
}

/// Applies one operation that keeps the log open, to both the log and the model.
fn step(log: &mut Log, model: &mut Model, op: Op) {
    match op {
        Op::Append {
            count,
            new_term,
            payload_bytes,
            records,
        } => append(log, model, count, new_term, payload_bytes, records),
        Op::Sync => model.durable_index = log.sync().unwrap(),
        Op::Commit { fraction } => {
            let span = model.durable_index.saturating_sub(model.commit_index);
            model.commit_index += (span as f64 * fraction) as u64;
        }
        Op::Truncate { back } => {
            let from = (model.last_index() + 1)
                .saturating_sub(back)
                .max(model.commit_index + 1)
                .max(model.start_index);
            log.truncate_suffix(from, model.commit_index).unwrap();
            if from <= model.last_index() {
                model.keep_through(from - 1);
                model.durable_index = from - 1;
            }
        }
        Op::DeletePrefix { fraction } => delete_prefix(log, model, fraction),
        Op::Snapshot { ahead } => {
            let index = model.last_index() + ahead;
            let offset = model.next_offset() + ahead;
            model.term += 1;
            log.install_snapshot(index, model.term, offset).unwrap();
            model.entries.clear();
            model.start_index = index + 1;
            model.start_term = model.term;
            model.start_offset = offset;
            model.durable_index = index;
            model.commit_index = index;
        }
        Op::Hold { fraction } => {
            let lo = model.start_index + (model.entries.len() as f64 * fraction) as u64;
            let read = log.entries(lo, model.last_index() + 1, 2000).unwrap();
            model.held.extend(
                read.into_iter()
                    .map(|e| (e.payload.clone(), e.payload.to_vec())),
            );
        }
        Op::Crash { .. } | Op::Reopen => unreachable!("handled by run"),
    }
}

/// Deletes whole segments before a random point; the model follows where the log says its
/// start moved, after checking that the move was allowed.
fn delete_prefix(log: &mut Log, model: &mut Model, fraction: f64) {
    let before = model.start_index + (model.entries.len() as f64 * fraction) as u64;
    let first = log.delete_prefix(before, model.commit_index).unwrap();
    assert!(first >= model.start_index && first <= before.max(model.start_index));
    assert!(
        first <= model.commit_index + 1,
        "deleted uncommitted entries"
    );
    if first > model.start_index {
        let dropped = (first - model.start_index) as usize;
        let last_dropped = model.entries[dropped - 1].clone();
        model.entries.drain(..dropped);
        model.start_index = first;
        model.start_term = last_dropped.term;
        model.start_offset = last_dropped.base_offset + u64::from(last_dropped.record_count);
    }
}

fn reopen(dir: &Path) -> Log {
    Log::open(dir, config()).unwrap().0
}

fn cases() -> u32 {
    std::env::var("RAFTLOG_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn log_matches_model_through_crashes(ops in prop::collection::vec(op(), 1..60)) {
        run(ops);
    }
}
