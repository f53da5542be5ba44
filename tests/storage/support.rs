//! Helpers shared by the storage integration tests: entry generators and file surgery.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use raftlog::proto::{Entry, EntryKind};
use raftlog::storage::{Log, LogConfig, SyncPolicy};

/// A config with small segments so that tests roll often.
pub fn config(segment_size_bytes: u64) -> LogConfig {
    LogConfig {
        segment_size_bytes,
        index_interval_bytes: 256,
        sync_policy: SyncPolicy::Always,
        mapped_segments_max: 4,
        verify_sealed_on_open: true,
    }
}

/// The payload entry `index` carries: recognisable bytes, `bytes` long.
pub fn payload(index: u64, bytes: usize) -> Bytes {
    let mut out = Vec::with_capacity(bytes);
    let seed = index.to_le_bytes();
    for at in 0..bytes {
        out.push(seed[at % 8] ^ (at as u8).wrapping_mul(31));
    }
    Bytes::from(out)
}

/// Makes entries that continue a log.
pub struct Gen {
    /// Index of the next entry.
    pub next_index: u64,
    /// Offset of the next record.
    pub next_offset: u64,
}

impl Gen {
    /// A generator continuing `log`.
    pub fn after(log: &Log) -> Gen {
        Gen {
            next_index: log.last_index() + 1,
            next_offset: log.next_offset(),
        }
    }

    /// One data entry of `records` records and `bytes` payload bytes.
    pub fn entry(&mut self, term: u64, bytes: usize, records: u32) -> Entry {
        let kind = if records == 0 {
            EntryKind::Noop
        } else {
            EntryKind::Data
        };
        let entry = Entry {
            term,
            index: self.next_index,
            kind: kind as i32,
            base_offset: self.next_offset,
            record_count: records,
            timestamp_ms: 1_000 + self.next_index as i64,
            payload: payload(self.next_index, bytes),
        };
        self.next_index += 1;
        self.next_offset += u64::from(records);
        entry
    }

    /// `count` data entries of 2 records each.
    pub fn batch(&mut self, term: u64, count: usize, bytes: usize) -> Vec<Entry> {
        (0..count).map(|_| self.entry(term, bytes, 2)).collect()
    }
}

/// Every entry of the log.
pub fn all(log: &Log) -> Vec<Entry> {
    log.entries(log.first_index(), log.last_index() + 1, u64::MAX)
        .unwrap()
}

/// Segment files of `dir`, sorted.
pub fn segment_paths(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    paths.sort();
    paths
}

/// Overwrites `bytes` at `position` of `path`.
pub fn write_at(path: &Path, position: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let file = fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(bytes, position).unwrap();
}

/// Reads `length` bytes at `position` of `path`.
pub fn read_at(path: &Path, position: u64, length: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let file = fs::File::open(path).unwrap();
    let mut out = vec![0u8; length];
    file.read_exact_at(&mut out, position).unwrap();
    out
}

/// Compares entry lists with a short message (the payloads make `assert_eq!` unreadable).
#[track_caller]
pub fn assert_entries(actual: &[Entry], expected: &[Entry]) {
    let ids = |entries: &[Entry]| {
        entries
            .iter()
            .map(|e| (e.index, e.term))
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(actual), ids(expected), "(index, term) of entries");
    for (a, e) in actual.iter().zip(expected) {
        assert!(a == e, "entry {} differs from what was written", e.index);
    }
}
