//! The log's contract, case by case: append, read, truncate, delete prefix, snapshot, sync,
//! reopen (in the spirit of openraft's storage test suite).

use super::support::{all, assert_entries, config, segment_paths, Gen};
use raftlog::proto::EntryKind;
use raftlog::storage::{Log, LogConfig, StorageError, SyncPolicy, TailState};

fn open(dir: &std::path::Path, segment_size_bytes: u64) -> Log {
    Log::open(dir, config(segment_size_bytes)).unwrap().0
}

#[test]
fn empty_log_positions() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), 64 * 1024);
    assert_eq!(
        (log.first_index(), log.last_index(), log.last_term()),
        (1, 0, 0)
    );
    assert_eq!(
        (log.durable_index(), log.next_offset(), log.start_offset()),
        (0, 0, 0)
    );
    assert_eq!(log.term_at(0), Some(0));
    assert_eq!(log.term_at(1), None);
    assert!(log.entries(1, 1, 100).unwrap().is_empty());
    assert!(log.read_from_offset(0, 100).unwrap().is_empty());
}

#[test]
fn append_then_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 64 * 1024);
    let mut gen = Gen::after(&log);
    let mut written = gen.batch(1, 5, 100);
    written.extend(gen.batch(2, 5, 100));
    log.append(&written).unwrap();
    assert_eq!(
        (log.last_index(), log.last_term(), log.next_offset()),
        (10, 2, 20)
    );
    assert_entries(&all(&log), &written);
    assert_eq!(log.term_at(5), Some(1));
    assert_eq!(log.term_at(6), Some(2));
    assert_eq!(log.term_at(11), None);
    assert_eq!(log.entries(3, 6, u64::MAX).unwrap(), written[2..5].to_vec());
}

#[test]
fn entries_respects_byte_budget_but_returns_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 64 * 1024);
    let written = Gen::after(&log).batch(1, 10, 100);
    log.append(&written).unwrap();
    assert_eq!(log.entries(1, 11, 0).unwrap().len(), 1);
    assert_eq!(log.entries(1, 11, 299).unwrap().len(), 2);
    assert_eq!(log.entries(1, 11, 300).unwrap().len(), 3);
    assert_eq!(log.entries(4, 11, 300).unwrap(), written[3..6].to_vec());
}

#[test]
fn entries_span_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 4096);
    let written = Gen::after(&log).batch(1, 60, 500);
    log.append(&written).unwrap();
    assert!(log.segment_count() > 5, "{} segments", log.segment_count());
    assert_eq!(segment_paths(dir.path()).len(), log.segment_count());
    assert_entries(&all(&log), &written);
    for lo in [1, 7, 8, 9, 30, 59, 60] {
        assert_eq!(
            log.entries(lo, 61, u64::MAX).unwrap(),
            written[lo as usize - 1..].to_vec(),
            "from {lo}"
        );
    }
    drop(log);
    let log = open(dir.path(), 4096);
    assert_entries(&all(&log), &written);
}

#[test]
fn read_from_offset_starts_at_the_containing_entry() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 4096);
    let mut gen = Gen::after(&log);
    let mut written = Vec::new();
    for i in 0..40 {
        written.push(if i % 5 == 0 {
            gen.entry(1, 0, 0)
        } else {
            gen.entry(1, 300, 3)
        });
    }
    log.append(&written).unwrap();
    let data: Vec<_> = written
        .iter()
        .filter(|e| e.record_count > 0)
        .cloned()
        .collect();
    for offset in 0..log.next_offset() {
        let read = log.read_from_offset(offset, 600).unwrap();
        let first = data
            .iter()
            .position(|e| e.base_offset <= offset && offset < e.base_offset + 3)
            .unwrap();
        assert_eq!(
            read,
            data[first..(first + 2).min(data.len())].to_vec(),
            "offset {offset}"
        );
    }
    assert!(log
        .read_from_offset(log.next_offset(), 600)
        .unwrap()
        .is_empty());
    let beyond = log.read_from_offset(log.next_offset() + 1, 600);
    assert!(matches!(beyond, Err(StorageError::OffsetOutOfRange { .. })));
}

#[test]
fn truncate_suffix_then_append_a_new_term() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 64 * 1024);
    let mut gen = Gen::after(&log);
    let mut written = gen.batch(1, 10, 50);
    log.append(&written).unwrap();
    log.truncate_suffix(6, 5).unwrap();
    written.truncate(5);
    assert_eq!(
        (log.last_index(), log.durable_index(), log.next_offset()),
        (5, 5, 10)
    );
    assert_eq!(log.term_at(6), None);
    let mut gen = Gen::after(&log);
    let newer = gen.batch(2, 3, 70);
    log.append(&newer).unwrap();
    written.extend(newer);
    assert_entries(&all(&log), &written);
    drop(log);
    let (log, report) = Log::open(dir.path(), config(64 * 1024)).unwrap();
    assert_eq!(report.tail, TailState::Zeroed);
    assert_entries(&all(&log), &written);
}

#[test]
fn truncate_suffix_across_segments_and_at_a_segment_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 4096);
    let written = Gen::after(&log).batch(1, 60, 500);
    log.append(&written).unwrap();
    let segments = segment_paths(dir.path());
    // Inside an early segment: the later files go.
    log.truncate_suffix(20, 0).unwrap();
    assert_entries(&all(&log), &written[..19]);
    assert!(segment_paths(dir.path()).len() < segments.len());
    // Exactly at the first index of the (now) active segment: it stays, empty.
    let first_of_active: u64 = segment_paths(dir.path())
        .last()
        .unwrap()
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    log.truncate_suffix(first_of_active, 0).unwrap();
    assert_eq!(log.last_index(), first_of_active - 1);
    let more = Gen::after(&log).batch(3, 20, 500);
    log.append(&more).unwrap();
    let mut expected = written[..first_of_active as usize - 1].to_vec();
    expected.extend(more);
    drop(log);
    assert_entries(&all(&open(dir.path(), 4096)), &expected);
}

#[test]
#[should_panic(expected = "at or below commit index")]
fn truncate_suffix_below_commit_panics() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 64 * 1024);
    log.append(&Gen::after(&log).batch(1, 5, 10)).unwrap();
    let _ = log.truncate_suffix(3, 3);
}

#[test]
#[should_panic(expected = "append must continue the log")]
fn append_with_a_gap_panics() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 64 * 1024);
    let mut gen = Gen::after(&log);
    gen.next_index = 2;
    let _ = log.append(&gen.batch(1, 1, 10));
}

#[test]
fn bad_entries_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 4096);
    let mut gen = Gen::after(&log);
    let good = gen.entry(1, 10, 1);
    let huge = gen.entry(1, 5000, 1);
    assert!(matches!(
        log.append(&[good.clone(), huge]),
        Err(StorageError::InvalidEntry { index: 2, .. })
    ));
    let mut unknown = good.clone();
    unknown.kind = EntryKind::Unspecified as i32;
    assert!(matches!(
        log.append(&[unknown]),
        Err(StorageError::InvalidEntry { .. })
    ));
    assert_eq!(log.last_index(), 0);
}

#[test]
fn reader_bytes_survive_truncation_and_rewrite() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 64 * 1024);
    let written = Gen::after(&log).batch(1, 10, 200);
    log.append(&written).unwrap();
    let held = log.entries(1, 11, u64::MAX).unwrap();
    log.truncate_suffix(3, 0).unwrap();
    let newer = Gen::after(&log).batch(2, 8, 200);
    log.append(&newer).unwrap();
    assert_eq!(held, written, "bytes held by a reader changed under it");
    let mut expected = written[..2].to_vec();
    expected.extend(newer);
    assert_entries(&all(&log), &expected);
    drop(held);
    // Without readers the cut clears in place.
    log.truncate_suffix(5, 0).unwrap();
    drop(log);
    assert_entries(&all(&open(dir.path(), 64 * 1024)), &expected[..4]);
}

#[test]
fn reader_bytes_survive_segment_deletion() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 4096);
    let written = Gen::after(&log).batch(1, 30, 500);
    log.append(&written).unwrap();
    let held = log.entries(1, 4, u64::MAX).unwrap();
    let first = log.delete_prefix(20, 30).unwrap();
    assert!(first > 4);
    assert_eq!(held, written[..3].to_vec());
}

#[test]
fn delete_prefix_moves_the_log_start_by_whole_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 4096);
    let mut gen = Gen::after(&log);
    let mut written = gen.batch(1, 20, 500);
    written.extend(gen.batch(2, 20, 500));
    log.append(&written).unwrap();
    let before = segment_paths(dir.path()).len();
    // Nothing committed: nothing goes.
    assert_eq!(log.delete_prefix(30, 0).unwrap(), 1);
    let first = log.delete_prefix(30, 40).unwrap();
    assert!(first > 1 && first <= 30, "first {first}");
    assert!(segment_paths(dir.path()).len() < before);
    assert_eq!(log.first_index(), first);
    assert_eq!(
        log.term_at(first - 1),
        Some(written[first as usize - 2].term)
    );
    assert_eq!(log.term_at(first - 2), None);
    assert_eq!(log.start_offset(), written[first as usize - 1].base_offset);
    assert!(matches!(
        log.entries(first - 1, first, 10),
        Err(StorageError::Compacted { .. })
    ));
    assert!(matches!(
        log.read_from_offset(0, 10),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
    drop(log);
    let log = open(dir.path(), 4096);
    assert_eq!(log.first_index(), first);
    assert_eq!(
        log.term_at(first - 1),
        Some(written[first as usize - 2].term)
    );
    assert_entries(&all(&log), &written[first as usize - 1..]);
}

#[test]
fn retention_by_bytes_and_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 4096);
    let written = Gen::after(&log).batch(1, 60, 500);
    log.append(&written).unwrap();
    let size = log.size_bytes();
    // Zero limits keep everything.
    assert_eq!(log.apply_retention(1_000_000, 0, 0, 60).unwrap(), 1);
    let first = log.apply_retention(0, size / 2, 0, 60).unwrap();
    assert!(
        log.size_bytes() <= size / 2 + 4096,
        "size {}",
        log.size_bytes()
    );
    assert!(first > 1);
    // Timestamps are 1000 + index: at now = 1000 + 40 + 10 with 10 ms retention, the
    // segments whose newest entry is below 40 go, never the active one.
    let first = log.apply_retention(1_050, 0, 10, 60).unwrap();
    assert!(first <= 41 && first > 30, "first {first}");
    // Uncommitted segments are kept whatever their age.
    let fresh_dir = tempfile::tempdir().unwrap();
    let mut fresh_dir_log = open(fresh_dir.path(), 4096);
    fresh_dir_log
        .append(&Gen::after(&fresh_dir_log).batch(1, 30, 500))
        .unwrap();
    assert_eq!(fresh_dir_log.apply_retention(i64::MAX, 1, 1, 0).unwrap(), 1);
}

#[test]
fn install_snapshot_restarts_the_log_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 4096);
    log.append(&Gen::after(&log).batch(1, 30, 500)).unwrap();
    log.install_snapshot(100, 7, 5_000).unwrap();
    assert_eq!(
        (log.first_index(), log.last_index(), log.last_term()),
        (101, 100, 7)
    );
    assert_eq!(
        (log.term_at(100), log.next_offset(), log.durable_index()),
        (Some(7), 5_000, 100)
    );
    assert_eq!(segment_paths(dir.path()).len(), 1);
    let more = Gen::after(&log).batch(7, 3, 10);
    log.append(&more).unwrap();
    drop(log);
    let log = open(dir.path(), 4096);
    assert_eq!(
        (log.first_index(), log.term_at(100), log.start_offset()),
        (101, Some(7), 5_000)
    );
    assert_entries(&all(&log), &more);
    // A snapshot inside the current log discards it too.
    let mut log = log;
    log.install_snapshot(102, 7, 5_004).unwrap();
    assert_eq!((log.first_index(), log.last_index()), (103, 102));
}

#[test]
fn two_phase_sync_runs_alongside_appends() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 64 * 1024);
    let mut gen = Gen::after(&log);
    log.append(&gen.batch(1, 5, 100)).unwrap();
    assert_eq!(log.durable_index(), 0);
    let job = log.prepare_sync();
    assert_eq!(job.target_index(), 5);
    let worker = std::thread::spawn(move || job.run());
    log.append(&gen.batch(1, 5, 100)).unwrap();
    let done = worker.join().unwrap();
    assert_eq!(log.complete_sync(done).unwrap(), 5);
    assert_eq!(log.sync().unwrap(), 10);
    // A job prepared before a truncation is stale and ignored.
    log.append(&gen.batch(1, 5, 100)).unwrap();
    let stale = log.prepare_sync().run();
    log.truncate_suffix(12, 10).unwrap();
    assert_eq!(log.durable_index(), 11);
    assert_eq!(log.complete_sync(stale).unwrap(), 11);
}

#[test]
fn sync_policy_decides_when_a_sync_is_due() {
    let dir = tempfile::tempdir().unwrap();
    for (policy, due_now, due_later) in [
        (SyncPolicy::Always, true, true),
        (SyncPolicy::Interval(100), true, false),
        (SyncPolicy::Never, false, false),
    ] {
        let path = dir.path().join(format!("{policy:?}"));
        let config = LogConfig {
            sync_policy: policy,
            ..config(64 * 1024)
        };
        let mut log = Log::open(&path, config).unwrap().0;
        let mut gen = Gen::after(&log);
        assert!(log.poll_sync(0).is_none(), "nothing to sync yet");
        log.append(&gen.batch(1, 2, 10)).unwrap();
        let job = log.poll_sync(1_000);
        assert_eq!(job.is_some(), due_now, "{policy:?}");
        if let Some(job) = job {
            log.complete_sync(job.run()).unwrap();
        }
        log.append(&gen.batch(1, 2, 10)).unwrap();
        assert_eq!(log.poll_sync(1_050).is_some(), due_later, "{policy:?}");
    }
}

#[test]
fn hard_state_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 64 * 1024);
    log.set_hard_state(4, 2).unwrap();
    drop(log);
    let log = open(dir.path(), 64 * 1024);
    assert_eq!(
        (log.hard_state().current_term, log.hard_state().voted_for),
        (4, 2)
    );
}

#[test]
fn sealed_mappings_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        mapped_segments_max: 2,
        ..config(4096)
    };
    let mut log = Log::open(dir.path(), config).unwrap().0;
    let written = Gen::after(&log).batch(1, 80, 500);
    log.append(&written).unwrap();
    assert!(log.segment_count() > 8);
    for index in 1..=80 {
        assert_eq!(
            log.entries(index, index + 1, 0).unwrap()[0],
            written[index as usize - 1]
        );
        assert!(log.mapped_segment_count() <= 2);
    }
}

#[test]
fn log_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Log>();
}
