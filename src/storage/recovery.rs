//! Recovery at open: the decision table that turns whatever a crash left in a partition
//! directory into a consistent log, or refuses to.
//!
//! Owns [`RecoveryReport`], [`TailState`] and the open path; it builds a [`Log`] but does not
//! operate it afterwards.
//!
//! Each row's test is in `tests/storage/recovery.rs` (`cargo test storage::recovery`); a
//! damaged hard state is refused too (`corrupt_hard_state`).
//!
//! # Directory-level rows
//!
//! | # | what is found | decision | tested by |
//! | --- | --- | --- | --- |
//! | 1 | no segment (empty or new directory) | create an empty segment at the hard state's log start | `empty_directory` |
//! | 2 | `*.tmp` files, `snapshot.tmp/`, `.index` without its `.log` | delete them (half-made replacements) | `stray_files_are_removed` |
//! | 3 | segments wholly before the hard state's log start | delete them (retention was interrupted after it moved the start) | `interrupted_retention` |
//! | 4 | first segment does not start at the log start, or a gap or overlap between segments | refuse: `SegmentSequence` | `gap_in_segments`, `overlap_in_segments` |
//! | 5 | damage anywhere inside a sealed segment (all but the last) | refuse: `Corrupt` naming file and position; a sealed segment was synced before the next one was created, so no crash explains it (with `verify_sealed_on_open` off only the sparse points and the last interval are checked at open, and a read that reaches other damage gets `Corrupt`) | `corrupt_sealed_segment`, `corrupt_sealed_segment_found_by_read_without_verify` |
//! | 6 | a sealed segment's `.index` missing, damaged, or pointing past the end | rebuild it by scanning the segment | `index_missing`, `index_past_end` |
//!
//! Before any row, the hard state is read from whichever of its two slots is valid and newer
//! (a torn update falls back to the previous state, see [`hard_state`]); a missing file is
//! created with the default state and a version 1 file rewritten in the slotted form, so
//! that no later update needs free space (`hard_state_file_is_created_at_open`).
//!
//! # Rows for the active (last) segment, scanned frame by frame
//!
//! | # | what follows the last valid frame | [`TailState`] | decision | tested by |
//! | --- | --- | --- | --- | --- |
//! | 7 | zeros, and the `.index` written by `close` matches | `Clean` | nothing to repair | `clean_shutdown` |
//! | 8 | zeros, no matching `.index` (a crash; preallocated space) | `Zeroed` | nothing to repair | `zeroed_tail` |
//! | 9 | one partial frame, zeros after it | `Torn` | clear it | `torn_tail` |
//! | 10 | bytes that are no frame and run past one frame | `Garbage` | clear them | `garbage_tail` |
//! | 11 | a frame failing its CRC with valid, in-sequence frames after it | `CorruptMiddle` | write the [`VOTING_WITHHELD_FILE`] marker, keep the prefix, clear the rest, report how many entries were dropped | `crc_mismatch_mid_active_segment` |
//!
//! Row 11 keeps the prefix rather than refusing because a power loss during an unsynced
//! write can persist later pages of a batch and not earlier ones, which looks the same as
//! media damage. The report says how many entries were dropped: if they had been synced and
//! acknowledged, this replica no longer holds what it promised, and the replica driver treats
//! the report like a partly lost disk: it does not vote until it has caught up from a leader
//! (`docs/RAFT.md`, "Voting after lost durable entries"). That policy is the driver's, not
//! storage's. After any repair the active
//! segment is synced, so what recovery kept is durable.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::error::StorageError;
use super::frame::{FrameError, FRAME_HEADER_BYTES};
use super::hard_state::{self, HardStateFile, HARD_STATE_FILE};
use super::index::SegmentIndex;
use super::log::{remove_if_exists, Log, MapCache};
use super::segment::{self, Scan, Segment};
use super::LogConfig;
use crate::proto::HardState;

/// Marker file written (durably, holding the hard state's current term in decimal) before
/// row 11 clears entries that may have been acknowledged, so that a crash right after the
/// repair cannot hide the loss. Storage never removes it: the replica driver does, once this
/// replica has caught up again (`docs/RAFT.md`, "Voting after lost durable entries"). The
/// file keeps the name it had on disk from the first release, `lost_entries`: renaming it
/// would make an upgraded node forget a loss it recorded before the upgrade.
pub const VOTING_WITHHELD_FILE: &str = "lost_entries";

/// What recovery found at the end of the active segment (rows 1 and 7 to 11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TailState {
    /// Row 1: there was no segment; a new, empty one was created.
    Created,
    /// Row 7: the log was closed cleanly; nothing was repaired.
    Clean,
    /// Row 8: valid frames followed by zeros only, without the clean-close mark.
    Zeroed,
    /// Row 9: a partial frame at `position` (a torn write), `bytes_cleared` cleared.
    Torn {
        /// Byte position of the partial frame.
        position: u64,
        /// Bytes cleared from `position` on.
        bytes_cleared: u64,
    },
    /// Row 10: bytes that are no valid frame at `position`, `bytes_cleared` cleared.
    Garbage {
        /// Byte position of the first invalid byte.
        position: u64,
        /// Bytes cleared from `position` on.
        bytes_cleared: u64,
    },
    /// Row 11: a frame failing its check at `position` with valid frames after it; those
    /// `entries_dropped` entries (the bad one included) were cleared with the rest.
    CorruptMiddle {
        /// Byte position of the bad frame.
        position: u64,
        /// Entries dropped: the bad frame and the valid ones after it.
        entries_dropped: u64,
        /// Bytes cleared from `position` on.
        bytes_cleared: u64,
    },
}

/// What [`Log::open`] found and repaired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The state of the active segment's tail.
    pub tail: TailState,
    /// Number of segments after recovery.
    pub segments: usize,
    /// First index of the recovered log.
    pub first_index: u64,
    /// Last index of the recovered log (all of it durable).
    pub last_index: u64,
    /// `.index` files that were missing, damaged or wrong and were rebuilt (row 6).
    pub indexes_rebuilt: Vec<PathBuf>,
    /// Files deleted: half-made files and segments before the log start (rows 2 and 3).
    pub files_removed: Vec<PathBuf>,
}

/// Opens the log in `dir`; see the module doc for the decision table.
pub(crate) fn open(dir: &Path, config: LogConfig) -> Result<(Log, RecoveryReport), StorageError> {
    config.validate()?;
    fs::create_dir_all(dir).map_err(|e| StorageError::io("create directory", dir, e))?;
    let (hard_state_file, hard_state) = HardStateFile::open(dir)?;
    let mut report = RecoveryReport {
        tail: TailState::Created,
        segments: 0,
        first_index: 0,
        last_index: 0,
        indexes_rebuilt: Vec::new(),
        files_removed: Vec::new(),
    };
    let found = list_segments(dir, &mut report)?;
    let found = drop_before_start(dir, found, &hard_state, &mut report)?;
    let mut segments = Vec::with_capacity(found.len().max(1));
    if found.is_empty() {
        let start = (hard_state.log_start_index, hard_state.log_start_offset);
        segments.push(Segment::create(
            dir,
            start.0,
            start.1,
            config.segment_size_bytes,
        )?);
        hard_state::sync_dir(dir)?;
    }
    for (position, (first_index, path)) in found.iter().enumerate() {
        let segment = if position + 1 < found.len() {
            open_sealed(path, *first_index, &config, &mut report)?
        } else {
            let (segment, tail) =
                open_active(path, *first_index, &config, hard_state.current_term)?;
            report.tail = tail;
            segment
        };
        let segment = follow(segments.last(), &hard_state, segment)?;
        segments.push(segment);
    }
    let active = segments.last().expect("at least one segment");
    active.sync()?;
    let last_index = active.index.next_index - 1;
    report.segments = segments.len();
    report.first_index = hard_state.log_start_index;
    report.last_index = last_index;
    let log = Log {
        dir: dir.to_path_buf(),
        config,
        hard_state,
        hard_state_file,
        segments,
        maps: Mutex::new(MapCache::default()),
        durable_index: last_index,
        epoch: 0,
        last_sync_ms: None,
    };
    Ok((log, report))
}

/// Lists segment files sorted by first index, deleting half-made files (row 2).
fn list_segments(
    dir: &Path,
    report: &mut RecoveryReport,
) -> Result<Vec<(u64, PathBuf)>, StorageError> {
    let read = fs::read_dir(dir).map_err(|e| StorageError::io("list directory", dir, e))?;
    let mut segments = Vec::new();
    let mut indexes = Vec::new();
    for entry in read {
        let entry = entry.map_err(|e| StorageError::io("list directory", dir, e))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(first_index) = segment::parse_segment_file_name(&name) {
            segments.push((first_index, path));
        } else if name.ends_with(".index") {
            indexes.push(path);
        } else if name == "snapshot.tmp" {
            fs::remove_dir_all(&path).map_err(|e| StorageError::io("remove", &path, e))?;
            report.files_removed.push(path);
        } else if name.ends_with(".tmp") {
            remove_if_exists(&path)?;
            report.files_removed.push(path);
        }
    }
    for index in indexes {
        if !index.with_extension("log").exists() {
            remove_if_exists(&index)?;
            report.files_removed.push(index);
        }
    }
    segments.sort();
    Ok(segments)
}

/// Deletes segments wholly before the log start (row 3) and checks that the first one left
/// starts exactly at it (row 4).
fn drop_before_start(
    dir: &Path,
    mut found: Vec<(u64, PathBuf)>,
    hard_state: &HardState,
    report: &mut RecoveryReport,
) -> Result<Vec<(u64, PathBuf)>, StorageError> {
    let start = hard_state.log_start_index;
    let before = found
        .windows(2)
        .take_while(|pair| pair[1].0 <= start)
        .count();
    for (_, path) in found.drain(..before) {
        remove_if_exists(&segment::index_path(&path))?;
        remove_if_exists(&path)?;
        report.files_removed.push(path);
    }
    if before > 0 {
        hard_state::sync_dir(dir)?;
    }
    if let Some((first_index, path)) = found.first() {
        if *first_index != start {
            return Err(StorageError::SegmentSequence {
                previous: dir.join(HARD_STATE_FILE),
                next: path.clone(),
                reason: format!(
                    "log start is {start} but the first segment starts at {first_index}"
                ),
            });
        }
    }
    Ok(found)
}

/// Checks that `next` continues `previous` (or the log start) and fills in the offsets of
/// an empty segment (row 4).
fn follow(
    previous: Option<&Segment>,
    hard_state: &HardState,
    mut next: Segment,
) -> Result<Segment, StorageError> {
    let (next_index, next_offset, last_term, previous_path) = match previous {
        Some(p) => (
            p.index.next_index,
            p.index.next_offset,
            p.index.last_term().unwrap_or(0),
            p.path.clone(),
        ),
        None => (
            hard_state.log_start_index,
            hard_state.log_start_offset,
            hard_state.log_start_term,
            next.path.with_file_name(HARD_STATE_FILE),
        ),
    };
    let broken = |reason: String| StorageError::SegmentSequence {
        previous: previous_path.clone(),
        next: next.path.clone(),
        reason,
    };
    if next.index.first_index != next_index {
        let kind = if next.index.first_index > next_index {
            "gap"
        } else {
            "overlap"
        };
        return Err(broken(format!(
            "{kind}: expected first index {next_index}, found {}",
            next.index.first_index
        )));
    }
    if next.index.is_empty() {
        next.index.first_offset = next_offset;
        next.index.next_offset = next_offset;
        return Ok(next);
    }
    if next.index.first_offset != next_offset {
        return Err(broken(format!(
            "expected first offset {next_offset}, found {}",
            next.index.first_offset
        )));
    }
    let first_term = next.index.terms[0].1;
    if first_term < last_term {
        return Err(broken(format!(
            "first term {first_term} is below the previous term {last_term}"
        )));
    }
    Ok(next)
}

/// Opens a sealed segment: scans and checks it (or trusts a checked `.index` when
/// `verify_sealed_on_open` is off), rebuilding the `.index` when needed (rows 5 and 6).
fn open_sealed(
    path: &Path,
    first_index: u64,
    config: &LogConfig,
    report: &mut RecoveryReport,
) -> Result<Segment, StorageError> {
    let file = segment::open_file(path)?;
    let capacity_bytes = file
        .metadata()
        .map_err(|e| StorageError::io("stat segment", path, e))?
        .len();
    if capacity_bytes == 0 {
        return Err(StorageError::Corrupt {
            path: path.to_path_buf(),
            position: 0,
            reason: "empty sealed segment".into(),
        });
    }
    let map = segment::map_file(&file, path, capacity_bytes)?;
    let readers = Arc::new(());
    let bytes = segment::view(&map, &readers, capacity_bytes);
    let index_path = segment::index_path(path);
    let stored = fs::read(&index_path).ok();
    let hint = stored.as_deref().and_then(SegmentIndex::decode);
    let index = match hint
        .filter(|hint| !config.verify_sealed_on_open && index_agrees(hint, &bytes, first_index))
    {
        Some(index) => index,
        None => {
            let scan = segment::scan(&bytes, first_index, config.index_interval_bytes);
            check_sealed_scan(path, &scan)?;
            let encoded = scan.index.encode();
            if stored.as_deref() != Some(encoded.as_slice()) {
                fs::write(&index_path, &encoded)
                    .map_err(|e| StorageError::reserve(&index_path, encoded.len() as u64, e))?;
                report.indexes_rebuilt.push(index_path);
            }
            scan.index
        }
    };
    drop(bytes);
    Ok(Segment {
        path: path.to_path_buf(),
        file: Arc::new(file),
        capacity_bytes,
        index,
        readers,
        map: None,
    })
}

/// A sealed segment must hold valid frames up to its end of data and zeros after it.
fn check_sealed_scan(path: &Path, scan: &Scan) -> Result<(), StorageError> {
    let Some(stop) = scan.stop else { return Ok(()) };
    if stop.error == Some(FrameError::End) && scan.nonzero_end == stop.position {
        return Ok(());
    }
    let reason = match stop.error {
        Some(FrameError::End) => "bytes after the end of data".to_string(),
        Some(error) => error.reason().to_string(),
        None => format!(
            "entry out of sequence after index {}",
            scan.index.next_index - 1
        ),
    };
    Err(StorageError::Corrupt {
        path: path.to_path_buf(),
        position: stop.position,
        reason,
    })
}

/// Light check of an `.index` against its segment: every sparse point names the frame at
/// its position, and the frames after the last point end exactly at `end_position` with
/// the claimed last index, offset and term.
fn index_agrees(index: &SegmentIndex, bytes: &[u8], first_index: u64) -> bool {
    if index.first_index != first_index
        || index.end_position > bytes.len() as u64
        || index.is_empty()
    {
        return false;
    }
    let frame_at = |position: u64| super::frame::decode(&bytes[position as usize..]).ok();
    let points_agree = index.points.iter().all(|point| {
        frame_at(point.position)
            .is_some_and(|h| h.index == point.index && h.base_offset == point.base_offset)
    });
    if !points_agree {
        return false;
    }
    let mut position = index.points.last().map_or(0, |p| p.position);
    let mut last = None;
    while position < index.end_position {
        let Some(header) = frame_at(position) else {
            return false;
        };
        position += u64::from(header.length);
        last = Some(header);
    }
    let at_end_is_end = position == bytes.len() as u64
        || super::frame::decode(&bytes[position as usize..]) == Err(FrameError::End);
    last.is_some_and(|h| {
        position == index.end_position
            && h.index + 1 == index.next_index
            && h.next_offset() == index.next_offset
            && Some(h.term) == index.last_term()
            && at_end_is_end
    })
}

/// Opens the active segment: scans it, classifies and repairs its tail (rows 7 to 11).
fn open_active(
    path: &Path,
    first_index: u64,
    config: &LogConfig,
    current_term: u64,
) -> Result<(Segment, TailState), StorageError> {
    let file = segment::open_file(path)?;
    let length = file
        .metadata()
        .map_err(|e| StorageError::io("stat segment", path, e))?
        .len();
    // A crash while creating the segment can leave it short; reserve it fully before mapping.
    let capacity_bytes = length.max(config.segment_size_bytes);
    if length < capacity_bytes {
        segment::reserve(&file, path, capacity_bytes)?;
    }
    let map = segment::map_file(&file, path, capacity_bytes)?;
    let readers = Arc::new(());
    let index_path = segment::index_path(path);
    let close_mark = fs::read(&index_path)
        .ok()
        .and_then(|bytes| SegmentIndex::decode(&bytes));
    // The mark describes the segment at close; the first append makes it stale.
    remove_if_exists(&index_path)?;
    let bytes = segment::view(&map, &readers, capacity_bytes);
    let scan = segment::scan(&bytes, first_index, config.index_interval_bytes);
    let tail = classify_tail(&scan, &bytes, config.index_interval_bytes);
    drop(bytes);
    let mut segment = Segment {
        path: path.to_path_buf(),
        file: Arc::new(file),
        capacity_bytes,
        index: scan.index,
        readers,
        map: Some(map),
    };
    let tail = match tail {
        TailState::Zeroed if close_mark.is_some_and(|mark| marks_clean(&mark, &segment.index)) => {
            TailState::Clean
        }
        TailState::Zeroed => TailState::Zeroed,
        damaged => {
            if matches!(damaged, TailState::CorruptMiddle { .. }) {
                mark_voting_withheld(path, current_term)?;
            }
            segment.clear(segment.index.end_position, scan.nonzero_end);
            segment.sync()?;
            damaged
        }
    };
    Ok((segment, tail))
}

/// Writes [`VOTING_WITHHELD_FILE`] next to `segment_path` with the later of `current_term` and
/// the term an earlier marker holds.
fn mark_voting_withheld(segment_path: &Path, current_term: u64) -> Result<(), StorageError> {
    let dir = segment_path.parent().unwrap_or(Path::new("."));
    let marker = dir.join(VOTING_WITHHELD_FILE);
    let earlier = fs::read_to_string(&marker)
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let term = earlier.max(current_term);
    hard_state::write_file_durably(&marker, term.to_string().as_bytes())
}

/// True when the `.index` written by `close` describes exactly what the scan found. An
/// empty segment's offsets are not in its bytes (the scan cannot know them), so for an
/// empty one the first index is all there is to compare.
fn marks_clean(mark: &SegmentIndex, scanned: &SegmentIndex) -> bool {
    if scanned.is_empty() {
        return mark.is_empty() && mark.first_index == scanned.first_index;
    }
    mark == scanned
}

/// Classifies what follows the last valid frame of the active segment (rows 8 to 11).
fn classify_tail(scan: &Scan, bytes: &[u8], interval_bytes: u64) -> TailState {
    let Some(stop) = scan.stop else {
        return TailState::Zeroed;
    };
    let position = stop.position;
    let bytes_cleared = scan.nonzero_end - position;
    if bytes_cleared == 0 {
        return TailState::Zeroed;
    }
    if let (Some(FrameError::BadCrc | FrameError::BadKind), Some(declared)) =
        (stop.error, stop.declared_bytes)
    {
        let after = position + declared;
        if after < bytes.len() as u64 {
            let following = segment::scan(
                &bytes[after as usize..],
                scan.index.next_index + 1,
                interval_bytes,
            );
            let valid_after = following.index.next_index - (scan.index.next_index + 1);
            if valid_after > 0 {
                return TailState::CorruptMiddle {
                    position,
                    entries_dropped: valid_after + 1,
                    bytes_cleared,
                };
            }
        }
    }
    let frame_end = position
        + stop
            .declared_bytes
            .unwrap_or(0)
            .max(FRAME_HEADER_BYTES as u64);
    // A torn frame's length fit when it was written (never `Truncated`), and nothing
    // non-zero lies past its end; a length field that was itself torn reads smaller.
    let partial_frame = matches!(
        stop.error,
        Some(FrameError::BadCrc | FrameError::BadKind | FrameError::BadLength)
    );
    if partial_frame && scan.nonzero_end <= frame_end {
        TailState::Torn {
            position,
            bytes_cleared,
        }
    } else {
        TailState::Garbage {
            position,
            bytes_cleared,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Entry, EntryKind};
    use crate::storage::frame::encode_frame;

    fn frames(count: u64) -> Vec<u8> {
        let mut bytes = Vec::new();
        for index in 1..=count {
            bytes.extend(encode_frame(&Entry {
                term: 1,
                index,
                kind: EntryKind::Data as i32,
                base_offset: index - 1,
                record_count: 1,
                timestamp_ms: 0,
                payload: bytes::Bytes::from(vec![index as u8; 100]),
            }));
        }
        bytes
    }

    fn classify(bytes: &[u8]) -> TailState {
        let scan = segment::scan(bytes, 1, 256);
        classify_tail(&scan, bytes, 256)
    }

    const FRAME: usize = FRAME_HEADER_BYTES + 100;

    #[test]
    fn classifies_every_tail_row() {
        let mut bytes = frames(4);
        bytes.resize(2048, 0);
        assert_eq!(classify(&bytes), TailState::Zeroed);

        let mut torn = bytes.clone();
        torn[3 * FRAME + 60..4 * FRAME].fill(0);
        assert_eq!(
            classify(&torn),
            TailState::Torn {
                position: 3 * FRAME as u64,
                bytes_cleared: 60
            }
        );

        let mut garbage = bytes.clone();
        garbage[4 * FRAME..4 * FRAME + 300].fill(0xEE);
        assert!(matches!(classify(&garbage), TailState::Garbage { .. }));

        let mut middle = bytes.clone();
        middle[FRAME + 70] ^= 1;
        assert_eq!(
            classify(&middle),
            TailState::CorruptMiddle {
                position: FRAME as u64,
                entries_dropped: 3,
                bytes_cleared: 3 * FRAME as u64
            }
        );
    }

    #[test]
    fn a_full_segment_without_zeros_is_not_damage() {
        let bytes = frames(3);
        assert_eq!(classify(&bytes), TailState::Zeroed);
    }
}
