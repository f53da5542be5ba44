//! The recovery decision table (`src/storage/recovery.rs`), one test per row, on real files
//! that the tests tear, zero, corrupt and delete.

use std::fs;
use std::path::Path;

use super::support::{all, assert_entries, config, read_at, segment_paths, write_at, Gen};
use raftlog::proto::{Entry, HardState};
use raftlog::storage::frame::FRAME_HEADER_BYTES;
use raftlog::storage::{hard_state, Log, LogConfig, StorageError, TailState};

const SEGMENT_BYTES: u64 = 4096;
/// 500-byte payloads: 548-byte frames, 7 per 4 KiB segment.
const FRAME_BYTES: u64 = 548;

/// A log of `count` entries in 4 KiB segments, dropped without close (a crash that lost
/// nothing, since every write reached the page cache).
fn crashed_log(dir: &Path, count: usize) -> Vec<Entry> {
    let mut log = Log::open(dir, config(SEGMENT_BYTES)).unwrap().0;
    let written = Gen::after(&log).batch(1, count, 500);
    log.append(&written).unwrap();
    written
}

fn reopen(dir: &Path) -> Result<(Log, raftlog::storage::RecoveryReport), StorageError> {
    Log::open(dir, config(SEGMENT_BYTES))
}

fn active_path(dir: &Path) -> std::path::PathBuf {
    segment_paths(dir).pop().unwrap()
}

#[test]
fn empty_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (log, report) = reopen(&dir.path().join("new")).unwrap();
    assert_eq!(report.tail, TailState::Created);
    assert_eq!((log.first_index(), log.last_index()), (1, 0));
    // A directory whose segments are all gone but whose hard state moved the start (a crash
    // inside install_snapshot) restarts empty at that start.
    let moved = HardState {
        current_term: 3,
        voted_for: 1,
        log_start_index: 50,
        log_start_term: 3,
        log_start_offset: 700,
    };
    hard_state::store(dir.path(), &moved).unwrap();
    let (log, report) = reopen(dir.path()).unwrap();
    assert_eq!(report.tail, TailState::Created);
    assert_eq!(
        (
            log.first_index(),
            log.last_index(),
            log.last_term(),
            log.next_offset()
        ),
        (50, 49, 3, 700)
    );
}

#[test]
fn clean_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config(SEGMENT_BYTES)).unwrap().0;
    let written = Gen::after(&log).batch(1, 20, 500);
    log.append(&written).unwrap();
    log.close().unwrap();
    let (log, report) = reopen(dir.path()).unwrap();
    assert_eq!(report.tail, TailState::Clean);
    assert!(
        report.indexes_rebuilt.is_empty() && report.files_removed.is_empty(),
        "{report:?}"
    );
    assert_entries(&all(&log), &written);
    assert_eq!(log.durable_index(), 20);
}

#[test]
fn clean_shutdown_with_an_empty_active_segment() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config(SEGMENT_BYTES)).unwrap().0;
    log.install_snapshot(40, 2, 900).unwrap();
    log.close().unwrap();
    let (log, report) = reopen(dir.path()).unwrap();
    assert_eq!(report.tail, TailState::Clean);
    assert_eq!(
        (log.first_index(), log.last_index(), log.next_offset()),
        (41, 40, 900)
    );
}

#[test]
fn zeroed_tail() {
    let dir = tempfile::tempdir().unwrap();
    let written = crashed_log(dir.path(), 20);
    // Entries 15.. are in the active segment (7 per segment); zero the last two frames as if
    // their pages never reached the disk.
    let active = active_path(dir.path());
    let last_two = 4 * FRAME_BYTES;
    write_at(&active, last_two, &vec![0u8; 2 * FRAME_BYTES as usize]);
    let (log, report) = reopen(dir.path()).unwrap();
    assert_eq!(report.tail, TailState::Zeroed);
    assert_entries(&all(&log), &written[..18]);
    assert_eq!(log.durable_index(), 18);
}

#[test]
fn torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let written = crashed_log(dir.path(), 20);
    let active = active_path(dir.path());
    // Keep only the first 100 bytes of the last frame (the sixth of the active segment).
    let last = 5 * FRAME_BYTES;
    write_at(&active, last + 100, &vec![0u8; FRAME_BYTES as usize - 100]);
    let (log, report) = reopen(dir.path()).unwrap();
    assert_eq!(
        report.tail,
        TailState::Torn {
            position: last,
            bytes_cleared: 100
        }
    );
    assert_entries(&all(&log), &written[..19]);
    // The repair is on disk: the next open finds a zeroed tail.
    drop(log);
    assert_eq!(reopen(dir.path()).unwrap().1.tail, TailState::Zeroed);
}

#[test]
fn garbage_tail() {
    let dir = tempfile::tempdir().unwrap();
    let written = crashed_log(dir.path(), 20);
    let active = active_path(dir.path());
    let end = 6 * FRAME_BYTES;
    let mut garbage: Vec<u8> = (0..1500u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 | 1)
        .collect();
    // A length no frame in this segment could have: not a torn write.
    garbage[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
    write_at(&active, end, &garbage);
    let (log, report) = reopen(dir.path()).unwrap();
    assert_eq!(
        report.tail,
        TailState::Garbage {
            position: end,
            bytes_cleared: 1500
        }
    );
    assert_entries(&all(&log), &written);
    let mut log = log;
    let more = Gen::after(&log).batch(1, 3, 100);
    log.append(&more).unwrap();
    assert_eq!(log.entries(21, 24, u64::MAX).unwrap(), more);
}

#[test]
fn crc_mismatch_mid_active_segment() {
    let dir = tempfile::tempdir().unwrap();
    let written = crashed_log(dir.path(), 20);
    let active = active_path(dir.path());
    // Flip one payload byte of the third frame of the active segment (entry 17).
    let position = 2 * FRAME_BYTES;
    let byte = read_at(&active, position + FRAME_BYTES_HEADER + 10, 1)[0];
    write_at(&active, position + FRAME_BYTES_HEADER + 10, &[byte ^ 0x01]);
    let (log, report) = reopen(dir.path()).unwrap();
    assert_eq!(
        report.tail,
        TailState::CorruptMiddle {
            position,
            entries_dropped: 4,
            bytes_cleared: 4 * FRAME_BYTES
        }
    );
    assert_entries(&all(&log), &written[..16]);
    let marker = dir
        .path()
        .join(raftlog::storage::recovery::VOTING_WITHHELD_FILE);
    assert!(marker.exists(), "the loss is recorded before the repair");
}

const FRAME_BYTES_HEADER: u64 = FRAME_HEADER_BYTES as u64;

#[test]
fn corrupt_sealed_segment() {
    let dir = tempfile::tempdir().unwrap();
    crashed_log(dir.path(), 20);
    let sealed = segment_paths(dir.path())[1].clone();
    let position = 3 * FRAME_BYTES;
    let byte = read_at(&sealed, position + 200, 1)[0];
    write_at(&sealed, position + 200, &[byte ^ 0x80]);
    match reopen(dir.path()) {
        Err(StorageError::Corrupt {
            path,
            position: at,
            reason,
        }) => {
            assert_eq!(path, sealed);
            assert_eq!(at, position);
            assert!(reason.contains("CRC"), "{reason}");
        }
        other => panic!(
            "expected Corrupt, got {:?}",
            other.map(|(_, report)| report)
        ),
    }
}

#[test]
fn corrupt_sealed_segment_found_by_read_without_verify() {
    // Without the full scan at open only the sparse points and the last interval of a
    // sealed segment are checked; damage elsewhere is found by the read that reaches it, as
    // a `Corrupt` error rather than wrong bytes. 16 KiB segments hold 29 frames; points
    // fall every 2 KiB (every fourth frame).
    let dir = tempfile::tempdir().unwrap();
    let light = LogConfig {
        verify_sealed_on_open: false,
        index_interval_bytes: 2048,
        ..config(16 * 1024)
    };
    let mut log = Log::open(dir.path(), light.clone()).unwrap().0;
    log.append(&Gen::after(&log).batch(1, 60, 500)).unwrap();
    log.close().unwrap();
    let sealed = segment_paths(dir.path())[1].clone();
    let position = FRAME_BYTES;
    let byte = read_at(&sealed, position + 200, 1)[0];
    write_at(&sealed, position + 200, &[byte ^ 0x80]);
    let log = Log::open(dir.path(), light).unwrap().0;
    assert!(log.entries(1, 31, u64::MAX).is_ok());
    match log.entries(1, 61, u64::MAX) {
        Err(StorageError::Corrupt {
            path, position: at, ..
        }) => {
            assert_eq!((path, at), (sealed, position))
        }
        other => panic!(
            "expected Corrupt, got {:?}",
            other.map(|entries| entries.len())
        ),
    }
}

#[test]
fn index_missing() {
    let dir = tempfile::tempdir().unwrap();
    let written = crashed_log(dir.path(), 20);
    let sealed = segment_paths(dir.path())[1].clone();
    let index = sealed.with_extension("index");
    fs::remove_file(&index).unwrap();
    let light = LogConfig {
        verify_sealed_on_open: false,
        ..config(SEGMENT_BYTES)
    };
    let (log, report) = Log::open(dir.path(), light).unwrap();
    assert_eq!(report.indexes_rebuilt, vec![index.clone()]);
    assert!(index.exists());
    assert_entries(&all(&log), &written);
}

#[test]
fn index_past_end() {
    let dir = tempfile::tempdir().unwrap();
    let written = crashed_log(dir.path(), 20);
    let sealed = segment_paths(dir.path())[0].clone();
    let index = sealed.with_extension("index");
    // Rewrite end_position (bytes 40..48) to point past the segment, with a valid CRC, so
    // only the agreement check can catch it.
    let mut bytes = fs::read(&index).unwrap();
    bytes[40..48].copy_from_slice(&(SEGMENT_BYTES * 2).to_le_bytes());
    let body = bytes.len() - 4;
    let crc = crc32fast::hash(&bytes[..body]);
    bytes[body..].copy_from_slice(&crc.to_le_bytes());
    fs::write(&index, &bytes).unwrap();
    let light = LogConfig {
        verify_sealed_on_open: false,
        ..config(SEGMENT_BYTES)
    };
    let (log, report) = Log::open(dir.path(), light).unwrap();
    assert_eq!(report.indexes_rebuilt, vec![index]);
    assert_entries(&all(&log), &written);
}

#[test]
fn gap_in_segments() {
    let dir = tempfile::tempdir().unwrap();
    crashed_log(dir.path(), 20);
    let middle = segment_paths(dir.path())[1].clone();
    fs::remove_file(&middle).unwrap();
    match reopen(dir.path()) {
        Err(StorageError::SegmentSequence { reason, .. }) => {
            assert!(reason.contains("gap"), "{reason}")
        }
        other => panic!(
            "expected SegmentSequence, got {:?}",
            other.map(|(_, report)| report)
        ),
    }
}

#[test]
fn overlap_in_segments() {
    let dir = tempfile::tempdir().unwrap();
    crashed_log(dir.path(), 20);
    let segments = segment_paths(dir.path());
    // Name the third segment as if it started one entry earlier.
    let third_first: u64 = segments[2]
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    fs::rename(
        &segments[2],
        dir.path().join(format!("{:020}.log", third_first - 1)),
    )
    .unwrap();
    match reopen(dir.path()) {
        Err(StorageError::SegmentSequence { reason, .. }) => {
            assert!(reason.contains("overlap"), "{reason}")
        }
        other => panic!(
            "expected SegmentSequence, got {:?}",
            other.map(|(_, report)| report)
        ),
    }
}

#[test]
fn stray_files_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let written = crashed_log(dir.path(), 10);
    let strays = [
        dir.path().join("00000000000000000001.log.tmp"),
        dir.path().join("00000000000000009999.index"),
    ];
    for stray in &strays {
        fs::write(stray, b"half made").unwrap();
    }
    fs::create_dir(dir.path().join("snapshot.tmp")).unwrap();
    let (log, report) = reopen(dir.path()).unwrap();
    for stray in &strays {
        assert!(
            report.files_removed.contains(stray) && !stray.exists(),
            "{stray:?}: {report:?}"
        );
    }
    assert!(!dir.path().join("snapshot.tmp").exists());
    assert_entries(&all(&log), &written);
}

#[test]
fn interrupted_retention() {
    let dir = tempfile::tempdir().unwrap();
    let written = crashed_log(dir.path(), 20);
    let segments = segment_paths(dir.path());
    // Retention stored the new start (the second segment) and crashed before deleting.
    let start = written[7].clone();
    let moved = HardState {
        current_term: 1,
        voted_for: 0,
        log_start_index: start.index,
        log_start_term: written[6].term,
        log_start_offset: start.base_offset,
    };
    hard_state::store(dir.path(), &moved).unwrap();
    let (log, report) = reopen(dir.path()).unwrap();
    assert_eq!(report.files_removed, vec![segments[0].clone()]);
    assert_eq!(log.first_index(), 8);
    assert_entries(&all(&log), &written[7..]);
}

#[test]
fn corrupt_hard_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config(SEGMENT_BYTES)).unwrap().0;
    log.set_hard_state(5, 1).unwrap();
    log.set_hard_state(6, 2).unwrap();
    drop(log);
    let path = dir.path().join(hard_state::HARD_STATE_FILE);
    let pristine = fs::read(&path).unwrap();
    let term_and_vote = |log: &Log| (log.hard_state().current_term, log.hard_state().voted_for);
    // Byte 20 of a slot is its CRC. One damaged slot reads like a torn update: the other
    // slot's state is used.
    for (slot, expected) in [(0, (5, 1)), (1, (6, 2))] {
        let mut bytes = pristine.clone();
        bytes[slot * hard_state::SLOT_BYTES + 20] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        assert_eq!(term_and_vote(&reopen(dir.path()).unwrap().0), expected);
    }
    // Both damaged: refused, the vote must not be forgotten silently.
    let mut bytes = pristine.clone();
    bytes[20] ^= 0xff;
    bytes[hard_state::SLOT_BYTES + 20] ^= 0xff;
    fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        reopen(dir.path()),
        Err(StorageError::HardStateCorrupt { .. })
    ));
    fs::write(&path, &pristine[..100]).unwrap();
    assert!(matches!(
        reopen(dir.path()),
        Err(StorageError::HardStateCorrupt { .. })
    ));
}

#[test]
fn hard_state_file_is_created_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(hard_state::HARD_STATE_FILE);
    let log = Log::open(dir.path(), config(SEGMENT_BYTES)).unwrap().0;
    // Created in full before anything needs it, so no later update needs free space.
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        hard_state::FILE_BYTES as u64
    );
    assert_eq!(*log.hard_state(), hard_state::default_hard_state());
    drop(log);
    let (mut log, report) = reopen(dir.path()).unwrap();
    assert!(report.files_removed.is_empty(), "{report:?}");
    log.set_hard_state(2, 3).unwrap();
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        hard_state::FILE_BYTES as u64
    );
}
