//! [`Log`]: one partition's replicated log on disk.
//!
//! Owns the ordered list of segments (all sealed but the last, the active one), the hard
//! state, the durable-index bookkeeping and the bounded cache of sealed mappings. It does not
//! know Raft's rules beyond the ones it asserts (contiguous appends, never truncating
//! committed entries); the replica driver decides what to append, truncate and sync.
//!
//! # Invariants (checked by assertions on every mutation)
//! - There is always at least one segment; the last is the active one, mapped writable.
//! - `segments[0].first_index == hard_state.log_start_index`, and every segment starts at
//!   the index after the previous one's last entry (only the last one may be empty).
//! - Every sealed segment is durable: it was synced when it was sealed.
//! - `durable_index <= last_index()`.
//!
//! # Reads and the lifetime of their `Bytes`
//! Payloads returned by [`Log::entries`] and [`Log::read_from_offset`] share the segment
//! mappings instead of copying. They stay valid and unchanged for as long as they are held:
//! after the segment is deleted (retention, snapshot) the mapping keeps the unlinked file
//! alive; when suffix truncation must cut bytes a reader still holds, it writes the kept
//! prefix into a new file instead of clearing in place. Two costs follow: a held payload pins
//! its whole segment's mapping (and disk space, if deleted), so hold payloads only as long as
//! a response takes; and the guarantee covers one `Log` value, so drop every payload before
//! reopening the same directory.
//!
//! # Threads
//! `Log` is `Send + Sync`. Mutations take `&mut self`; reads take `&self` and may run on
//! several threads at once (the sealed-mapping cache is behind a mutex). Everything blocks:
//! call it from a dedicated thread or `spawn_blocking`, not from an async worker.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use memmap2::MmapRaw;

use super::error::StorageError;
use super::frame::{self, FrameHeader};
use super::hard_state::{self, HardStateFile};
use super::recovery::{self, RecoveryReport};
use super::segment::{self, Segment};
use super::sync::{SyncDone, SyncJob};
use super::{LogConfig, SyncPolicy};
use crate::proto::{Entry, EntryKind, HardState};

/// Bounded cache of sealed-segment mappings, least recently used evicted first. A reader
/// holding `Bytes` keeps its mapping alive after eviction; the bound is on what the log keeps.
#[derive(Default)]
pub(crate) struct MapCache {
    maps: HashMap<u64, (Arc<MmapRaw>, u64)>,
    tick: u64,
}

/// One partition's log. See the module doc for invariants, threading and `Bytes` lifetimes.
///
/// Dropping it without [`Log::close`] syncs nothing: the next open treats that like a crash
/// (what reached the page cache is normally still there, and recovery keeps whatever
/// checks out).
pub struct Log {
    pub(crate) dir: PathBuf,
    pub(crate) config: LogConfig,
    pub(crate) hard_state: HardState,
    /// Where `hard_state` is persisted; updated in place, so it works on a full disk.
    pub(crate) hard_state_file: HardStateFile,
    pub(crate) segments: Vec<Segment>,
    pub(crate) maps: Mutex<MapCache>,
    pub(crate) durable_index: u64,
    /// Bumped by every operation that removes entries, so older sync jobs are recognised.
    pub(crate) epoch: u64,
    /// Time of the last sync started by `poll_sync`, for `SyncPolicy::Interval`.
    pub(crate) last_sync_ms: Option<i64>,
}

impl Log {
    /// Opens (or creates) the log in `dir`, applying the recovery decision table.
    ///
    /// # Errors
    /// `Corrupt` or `SegmentSequence` when the log is damaged where it must be intact (the
    /// partition must not serve or vote), `HardStateCorrupt`, `InvalidConfig`, `StorageFull`
    /// or `Io`.
    pub fn open(
        dir: impl AsRef<Path>,
        config: LogConfig,
    ) -> Result<(Log, RecoveryReport), StorageError> {
        recovery::open(dir.as_ref(), config)
    }

    /// The partition directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configuration the log was opened with.
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// First index still in the log (the log start); `last_index() + 1` when empty.
    pub fn first_index(&self) -> u64 {
        self.hard_state.log_start_index
    }

    /// Last appended index; `first_index() - 1` when empty.
    pub fn last_index(&self) -> u64 {
        self.active().index.next_index - 1
    }

    /// Term of the last entry, or the log start term when empty.
    pub fn last_term(&self) -> u64 {
        self.segments
            .iter()
            .rev()
            .find_map(|s| s.index.last_term())
            .unwrap_or(self.hard_state.log_start_term)
    }

    /// Last index known to be on stable storage; never above `last_index()`.
    pub fn durable_index(&self) -> u64 {
        self.durable_index
    }

    /// Record offset after the last record (the offset the next record gets).
    pub fn next_offset(&self) -> u64 {
        self.active().index.next_offset
    }

    /// Offset of the first record still in the log.
    pub fn start_offset(&self) -> u64 {
        self.hard_state.log_start_offset
    }

    /// Bytes of frames in the log (headers included), what size retention compares.
    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.index.end_position).sum()
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// The persisted hard state (term, vote, log start).
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// Persists a new term and vote atomically and durably before returning. It needs no
    /// free space (see [`hard_state`]).
    ///
    /// # Errors
    /// `Io`; the in-memory state is unchanged on error.
    pub fn set_hard_state(
        &mut self,
        current_term: u64,
        voted_for: u64,
    ) -> Result<(), StorageError> {
        let next = HardState {
            current_term,
            voted_for,
            ..self.hard_state
        };
        self.store_hard_state(next)
    }

    /// Persists `next` as the hard state, then adopts it (unchanged on error).
    fn store_hard_state(&mut self, next: HardState) -> Result<(), StorageError> {
        self.hard_state_file.write(&next)?;
        self.hard_state = next;
        Ok(())
    }

    /// Term of entry `index`: the log start term for `first_index() - 1`, `None` outside
    /// `[first_index() - 1, last_index()]`.
    pub fn term_at(&self, index: u64) -> Option<u64> {
        if index + 1 == self.first_index() {
            return Some(self.hard_state.log_start_term);
        }
        if index < self.first_index() || index > self.last_index() {
            return None;
        }
        self.segments[self.segment_for_index(index)]
            .index
            .term_at(index)
    }

    pub(crate) fn active(&self) -> &Segment {
        self.segments
            .last()
            .expect("a log always has an active segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments
            .last_mut()
            .expect("a log always has an active segment")
    }

    /// Position in `segments` of the segment holding `index` (which must be in the log).
    fn segment_for_index(&self, index: u64) -> usize {
        self.segments
            .partition_point(|s| s.index.first_index <= index)
            - 1
    }

    /// Appends `entries`, which must continue the log: index `last_index() + 1` onwards,
    /// terms never decreasing, each `base_offset` the offset after the previous entry's
    /// records. Nothing is synced (except a segment that fills up and is sealed); see
    /// [`Log::poll_sync`].
    ///
    /// # Errors
    /// `InvalidEntry` (unknown kind, larger than a segment) before anything is written;
    /// `StorageFull` or `Io` when a new segment cannot be made, after the entries before the
    /// roll were appended (check `last_index()`).
    ///
    /// # Panics
    /// If the entries do not continue the log: a bug in the caller.
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        for entry in entries {
            self.check_storable(entry)?;
        }
        for entry in entries {
            assert_eq!(
                entry.index,
                self.last_index() + 1,
                "append must continue the log"
            );
            assert!(
                entry.term >= self.last_term(),
                "term {} after {}",
                entry.term,
                self.last_term()
            );
            assert_eq!(
                entry.base_offset,
                self.next_offset(),
                "entry {} base_offset",
                entry.index
            );
            let frame_bytes = frame::frame_bytes(entry.payload.len()) as u64;
            if frame_bytes > self.active().free_bytes() {
                self.roll()?;
            }
            let interval_bytes = self.config.index_interval_bytes;
            self.active_mut().write(entry, interval_bytes)?;
        }
        Ok(())
    }

    fn check_storable(&self, entry: &Entry) -> Result<(), StorageError> {
        let invalid = |reason: String| {
            Err(StorageError::InvalidEntry {
                index: entry.index,
                reason,
            })
        };
        match EntryKind::try_from(entry.kind) {
            Ok(EntryKind::Unspecified) | Err(_) => {
                return invalid(format!("unknown kind {}", entry.kind))
            }
            Ok(_) => {}
        }
        let frame_bytes = frame::frame_bytes(entry.payload.len()) as u64;
        if frame_bytes > self.config.segment_size_bytes {
            return invalid(format!(
                "frame of {frame_bytes} bytes exceeds the segment size {}",
                self.config.segment_size_bytes
            ));
        }
        Ok(())
    }

    /// Seals the active segment (sync, write its index) and starts a new one after it.
    fn roll(&mut self) -> Result<(), StorageError> {
        let active = self.active();
        assert!(
            !active.index.is_empty(),
            "an empty segment never needs to roll"
        );
        active.sync()?;
        write_index_file(active)?;
        let (next_index, next_offset) = (active.index.next_index, active.index.next_offset);
        let segment = Segment::create(
            &self.dir,
            next_index,
            next_offset,
            self.config.segment_size_bytes,
        )?;
        hard_state::sync_dir(&self.dir)?;
        self.durable_index = next_index - 1;
        self.active_mut().map = None;
        self.segments.push(segment);
        Ok(())
    }

    /// Entries `[lo, hi)`, stopping once their payloads reach `bytes_max` but always with
    /// at least one entry when `lo < hi`. Payloads share the segment mappings (see the
    /// `segment` module doc for why that is safe).
    ///
    /// # Errors
    /// `Compacted` when `lo < first_index()`; `Corrupt` when a frame fails its check; `Io`
    /// when a sealed segment cannot be mapped.
    ///
    /// # Panics
    /// If `lo > hi` or `hi > last_index() + 1`.
    pub fn entries(&self, lo: u64, hi: u64, bytes_max: u64) -> Result<Vec<Entry>, StorageError> {
        assert!(lo <= hi, "entries({lo}, {hi}): empty range reversed");
        assert!(
            hi <= self.last_index() + 1,
            "entries(.., {hi}) past last index {}",
            self.last_index()
        );
        if lo < self.first_index() {
            return Err(StorageError::Compacted {
                index: lo,
                first_index: self.first_index(),
            });
        }
        let mut out = Vec::new();
        if lo == hi {
            return Ok(out);
        }
        let mut bytes = 0u64;
        let mut at = self.segment_for_index(lo);
        while at < self.segments.len() {
            let segment = &self.segments[at];
            let start = segment.index.position_for_index(lo);
            let done = self.read_frames(
                segment,
                start,
                |header, have_any| {
                    if header.index < lo {
                        return Step::Skip;
                    }
                    if header.index >= hi
                        || (have_any && bytes + header.payload_bytes() as u64 > bytes_max)
                    {
                        return Step::Stop;
                    }
                    bytes += header.payload_bytes() as u64;
                    Step::Take
                },
                &mut out,
            )?;
            if done {
                break;
            }
            at += 1;
        }
        Ok(out)
    }

    /// Entries carrying records, starting with the one holding record `offset`, then the
    /// following ones, until their payloads reach `bytes_max` (always at least one when any
    /// record is at or after `offset`). Entries without records (no-op, config) are skipped.
    ///
    /// # Errors
    /// `OffsetOutOfRange` outside `[start_offset(), next_offset()]`; `Corrupt`; `Io`.
    pub fn read_from_offset(
        &self,
        offset: u64,
        bytes_max: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        if offset < self.start_offset() || offset > self.next_offset() {
            return Err(StorageError::OffsetOutOfRange {
                offset,
                start_offset: self.start_offset(),
                next_offset: self.next_offset(),
            });
        }
        let mut out = Vec::new();
        let mut bytes = 0u64;
        let mut at = self
            .segments
            .partition_point(|s| s.index.next_offset <= offset);
        while at < self.segments.len() {
            let segment = &self.segments[at];
            let start = segment.index.position_for_offset(offset);
            let done = self.read_frames(
                segment,
                start,
                |header, have_any| {
                    if header.next_offset() <= offset || header.record_count == 0 {
                        return Step::Skip;
                    }
                    if have_any && bytes + header.payload_bytes() as u64 > bytes_max {
                        return Step::Stop;
                    }
                    bytes += header.payload_bytes() as u64;
                    Step::Take
                },
                &mut out,
            )?;
            if done {
                break;
            }
            at += 1;
        }
        Ok(out)
    }

    /// Walks the frames of `segment` from `start` to its end, letting `decide` skip, take or
    /// stop; returns true when `decide` stopped. Skipped frames are only checked for a sane
    /// length and the index sequence; taken ones are CRC-checked before they are returned.
    fn read_frames(
        &self,
        segment: &Segment,
        start: u64,
        mut decide: impl FnMut(&FrameHeader, bool) -> Step,
        out: &mut Vec<Entry>,
    ) -> Result<bool, StorageError> {
        if start >= segment.index.end_position {
            return Ok(false);
        }
        let bytes = self.view(segment)?;
        let mut position = start;
        let mut expected_index = None;
        while position < segment.index.end_position {
            let header = segment::header_at(&bytes, position, &segment.path)?;
            if expected_index.is_some_and(|index| index != header.index) {
                return Err(StorageError::Corrupt {
                    path: segment.path.clone(),
                    position,
                    reason: format!("entry {} where {expected_index:?} belongs", header.index),
                });
            }
            expected_index = Some(header.index + 1);
            let frame_end = position as usize + header.length as usize;
            match decide(&header, !out.is_empty()) {
                Step::Skip => {}
                Step::Stop => return Ok(true),
                Step::Take => {
                    frame::verify(&bytes[position as usize..frame_end], &header)
                        .map_err(|error| segment::corrupt(&segment.path, position, error))?;
                    let payload_start = position as usize + frame::FRAME_HEADER_BYTES;
                    out.push(frame::to_entry(
                        &header,
                        bytes.slice(payload_start..frame_end),
                    ));
                }
            }
            position += u64::from(header.length);
        }
        Ok(false)
    }

    /// The written bytes of `segment` as shared `Bytes`, mapping a sealed one if needed.
    fn view(&self, segment: &Segment) -> Result<Bytes, StorageError> {
        let map = match &segment.map {
            Some(map) => map.clone(),
            None => self.sealed_map(segment)?,
        };
        Ok(segment::view(
            &map,
            &segment.readers,
            segment.index.end_position,
        ))
    }

    fn sealed_map(&self, segment: &Segment) -> Result<Arc<MmapRaw>, StorageError> {
        let mut cache = self
            .maps
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        cache.tick += 1;
        let tick = cache.tick;
        if let Some((map, used)) = cache.maps.get_mut(&segment.index.first_index) {
            *used = tick;
            return Ok(map.clone());
        }
        if cache.maps.len() >= self.config.mapped_segments_max {
            let oldest = cache
                .maps
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(&key, _)| key);
            cache
                .maps
                .remove(&oldest.expect("a full cache has an oldest entry"));
        }
        let map = segment::map_file(&segment.file, &segment.path, segment.capacity_bytes)?;
        cache
            .maps
            .insert(segment.index.first_index, (map.clone(), tick));
        Ok(map)
    }

    /// Number of sealed segments currently mapped by the log (readers may hold more).
    pub fn mapped_segment_count(&self) -> usize {
        self.maps
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .maps
            .len()
    }

    /// Unmaps every sealed segment the log keeps mapped (readers holding `Bytes` keep theirs
    /// until they drop them). Call it when a partition goes idle; the next read maps again.
    pub fn release_mappings(&self) {
        self.maps
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .maps
            .clear();
    }

    pub(crate) fn forget_map(&self, first_index: u64) {
        self.maps
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .maps
            .remove(&first_index);
    }
}

/// What a read does with one frame.
enum Step {
    Skip,
    Take,
    Stop,
}

/// Writes `segment`'s `.index` file. It is a hint with its own CRC, so it is neither
/// fsynced nor renamed into place: a torn one is detected and rebuilt.
pub(crate) fn write_index_file(segment: &Segment) -> Result<(), StorageError> {
    let path = segment::index_path(&segment.path);
    let bytes = segment.index.encode();
    fs::write(&path, &bytes).map_err(|e| StorageError::reserve(&path, bytes.len() as u64, e))
}

/// Removes a file that may already be gone.
pub(crate) fn remove_if_exists(path: &Path) -> Result<(), StorageError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StorageError::io("remove", path, e)),
    }
}

impl Log {
    /// A sync of everything appended so far, to run off this thread (see [`super::sync`]).
    pub fn prepare_sync(&mut self) -> SyncJob {
        let active = self.active();
        let files = if self.last_index() > self.durable_index {
            vec![(active.file.clone(), active.path.clone())]
        } else {
            Vec::new()
        };
        SyncJob {
            files,
            target_index: self.last_index(),
            epoch: self.epoch,
        }
    }

    /// The sync the policy asks for at `now_ms`, if any: always when something is not
    /// durable under `Always`, at most once per interval under `Interval`, never under
    /// `Never`.
    pub fn poll_sync(&mut self, now_ms: i64) -> Option<SyncJob> {
        if self.last_index() <= self.durable_index {
            return None;
        }
        let due = match self.config.sync_policy {
            SyncPolicy::Always => true,
            SyncPolicy::Interval(interval_ms) => self
                .last_sync_ms
                .is_none_or(|last| now_ms.saturating_sub(last) >= interval_ms as i64),
            SyncPolicy::Never => false,
        };
        if !due {
            return None;
        }
        self.last_sync_ms = Some(now_ms);
        Some(self.prepare_sync())
    }

    /// Applies a finished sync: advances `durable_index` to its target unless entries were
    /// removed since it was prepared (then it is ignored). Returns the durable index.
    ///
    /// # Errors
    /// The job's own error. After a failed fdatasync the kernel may have dropped the dirty
    /// pages, so retrying cannot prove anything: stop the partition and reopen the log.
    pub fn complete_sync(&mut self, done: SyncDone) -> Result<u64, StorageError> {
        done.result?;
        if done.epoch == self.epoch {
            assert!(
                done.target_index <= self.last_index(),
                "sync target past the log end"
            );
            self.durable_index = self.durable_index.max(done.target_index);
        }
        Ok(self.durable_index)
    }

    /// Syncs everything appended so far on this thread; returns the durable index.
    ///
    /// # Errors
    /// `Io` (see [`Log::complete_sync`]).
    pub fn sync(&mut self) -> Result<u64, StorageError> {
        let done = self.prepare_sync().run();
        self.complete_sync(done)
    }

    /// The term the [`VOTING_WITHHELD_FILE`](super::recovery::VOTING_WITHHELD_FILE) marker
    /// holds: recovery dropped entries this replica may have acknowledged (while its term
    /// was at most that), and it has not caught up with a leader since. A marker that cannot
    /// be read or parsed counts as a loss in the current term: the safe side.
    pub fn voting_withheld(&self) -> Option<u64> {
        let marker = self.dir.join(super::recovery::VOTING_WITHHELD_FILE);
        let current_term = self.hard_state.current_term;
        match fs::read_to_string(&marker) {
            Ok(text) => Some(text.trim().parse::<u64>().unwrap_or(current_term)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(_) => Some(current_term),
        }
    }

    /// The configurations last stored with [`Self::set_membership`], `None` if never.
    ///
    /// # Errors
    /// `Io`, or `Corrupt` when the record fails its checks.
    pub fn membership(&self) -> Result<Option<crate::proto::MembershipState>, StorageError> {
        super::membership::load(&self.dir)
    }

    /// Replaces the stored configurations, durably before it returns.
    ///
    /// # Errors
    /// `Io`, or `StorageFull`.
    pub fn set_membership(
        &mut self,
        state: &crate::proto::MembershipState,
    ) -> Result<(), StorageError> {
        super::membership::store(&self.dir, state)
    }

    /// Removes the voting-withheld marker durably: the replica has caught up with a leader.
    ///
    /// # Errors
    /// `Io` when the marker cannot be removed.
    pub fn clear_voting_withheld(&mut self) -> Result<(), StorageError> {
        let marker = self.dir.join(super::recovery::VOTING_WITHHELD_FILE);
        super::hard_state::remove_file_durably(&marker)
    }

    /// Syncs, writes the active segment's index (the clean-shutdown mark), and closes.
    ///
    /// # Errors
    /// `Io` or `StorageFull`.
    pub fn close(mut self) -> Result<(), StorageError> {
        self.sync()?;
        write_index_file(self.active())
    }
}

impl Log {
    /// Removes entries `[from_index, last_index()]` (a Raft conflict), durably before it
    /// returns: later segments are deleted, the rest of the cut segment is cleared and
    /// synced. `durable_index` becomes `from_index - 1`.
    ///
    /// On error the log is consistent and matches the disk, with the cut partly done: the
    /// segments after the one holding `from_index` may be gone (newest first, so the files
    /// left are always a contiguous log), and `durable_index` is at most `from_index - 1`.
    /// Calling it again (after freeing space) finishes the cut; appending continues
    /// whatever the log then holds.
    ///
    /// # Errors
    /// `Io`, or `StorageFull` when a segment a reader still holds must be copied.
    ///
    /// # Panics
    /// If `from_index <= commit_index` (committed entries are never removed) or
    /// `from_index < first_index()`.
    pub fn truncate_suffix(
        &mut self,
        from_index: u64,
        commit_index: u64,
    ) -> Result<(), StorageError> {
        assert!(
            from_index > commit_index,
            "truncate_suffix({from_index}) at or below commit index {commit_index}"
        );
        assert!(
            from_index >= self.first_index(),
            "truncate_suffix({from_index}) before log start {}",
            self.first_index()
        );
        if from_index > self.last_index() {
            return Ok(());
        }
        self.epoch += 1;
        // Lowered first so that it holds at every error exit below: what stays before
        // `from_index` was durable already, and nothing at or after it is claimed.
        self.durable_index = self.durable_index.min(from_index - 1);
        let mut removed = false;
        while self.active().index.first_index > from_index {
            // Files first, then the list: an error leaves the segment both listed and on
            // disk. Newest first, so a crash never leaves a gap between segments.
            self.remove_segment_files(self.active())?;
            self.segments.pop();
            removed = true;
            self.activate_last()?;
        }
        if removed {
            hard_state::sync_dir(&self.dir)?;
        }
        self.cut_active(from_index)?;
        self.active().sync()?;
        self.durable_index = from_index - 1;
        Ok(())
    }

    /// Deletes a segment's files, its `.index` (a hint) before its `.log`: the segment is
    /// gone exactly when its `.log` is.
    fn remove_segment_files(&self, segment: &Segment) -> Result<(), StorageError> {
        self.forget_map(segment.index.first_index);
        remove_if_exists(&segment::index_path(&segment.path))?;
        remove_if_exists(&segment.path)
    }

    /// Makes the last segment the active one again (mapped writable) after the ones after it
    /// were removed. Its `.index`, written when it was sealed, goes stale.
    fn activate_last(&mut self) -> Result<(), StorageError> {
        if self.active().map.is_some() {
            return Ok(());
        }
        self.forget_map(self.active().index.first_index);
        remove_if_exists(&segment::index_path(&self.active().path))?;
        let active = self.active();
        let map = segment::map_file(&active.file, &active.path, active.capacity_bytes)?;
        self.active_mut().map = Some(map);
        Ok(())
    }

    /// Cuts the last segment before `from_index`, in place or, when a reader holds its
    /// bytes, by replacing it with a copy of the prefix. Unchanged on error.
    fn cut_active(&mut self, from_index: u64) -> Result<(), StorageError> {
        self.activate_last()?;
        let active = self.active();
        let bytes = segment::view(
            active.map.as_ref().expect("mapped"),
            &active.readers,
            active.index.end_position,
        );
        let mut position = active.index.position_for_index(from_index);
        let header = loop {
            let header = segment::frame_at(&bytes, position, &active.path)?;
            if header.index == from_index {
                break header;
            }
            position += u64::from(header.length);
        };
        drop(bytes);
        let end_position = active.index.end_position;
        if self.active().has_readers() {
            self.replace_active_with_prefix(from_index, position, header.base_offset)
        } else {
            let active = self.active_mut();
            active.clear(position, end_position);
            active
                .index
                .truncate(from_index, position, header.base_offset);
            Ok(())
        }
    }

    /// Writes `[0, keep_bytes)` of the active segment into a fresh, fully reserved file and
    /// renames it over the old one, so readers of the old inode keep their bytes unchanged;
    /// the active segment then ends before `from_index` (at `keep_bytes` and `next_offset`).
    ///
    /// Everything that can fail (the reservation above all, on a full disk) happens on the
    /// temp file before the rename; from the rename on, memory follows the disk at once.
    fn replace_active_with_prefix(
        &mut self,
        from_index: u64,
        keep_bytes: u64,
        next_offset: u64,
    ) -> Result<(), StorageError> {
        let capacity_bytes = self.active().capacity_bytes;
        let path = self.active().path.clone();
        let temp = path.with_extension("log.tmp");
        remove_if_exists(&temp)?;
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(|e| StorageError::io("create segment copy", &temp, e))?;
        let old = self.active().map.clone().expect("mapped");
        let copied = segment::reserve(&file, &temp, capacity_bytes)
            .and_then(|()| {
                // SAFETY: `[0, keep_bytes)` is inside the mapping and not written while we
                // copy (we hold `&mut self`, and readers only read).
                let prefix =
                    unsafe { std::slice::from_raw_parts(old.as_ptr(), keep_bytes as usize) };
                file.write_all_at(prefix, 0)
                    .map_err(|e| StorageError::io("write segment copy", &temp, e))
            })
            .and_then(|()| {
                file.sync_data()
                    .map_err(|e| StorageError::io("fdatasync", &temp, e))
            })
            .and_then(|()| segment::map_file(&file, &temp, capacity_bytes))
            .and_then(|map| {
                fs::rename(&temp, &path)
                    .map(|()| map)
                    .map_err(|e| StorageError::io("rename segment copy", &path, e))
            });
        let map = match copied {
            Ok(map) => map,
            Err(error) => {
                // Nothing was cut; the half-made copy is only tidied here (recovery deletes
                // `*.tmp` too), so the first error is the one that matters.
                drop(file);
                let _ = fs::remove_file(&temp);
                return Err(error);
            }
        };
        let active = self.active_mut();
        active.file = Arc::new(file);
        active.map = Some(map);
        active.readers = Arc::new(());
        active.index.truncate(from_index, keep_bytes, next_offset);
        hard_state::sync_dir(&self.dir)
    }
}

impl Log {
    /// Removes every sealed segment whose entries are all before `before_index` and at or
    /// below `commit_index`, moving the log start (index, term, offset) to the first entry
    /// kept. The active segment is never removed. The new log start is persisted in the hard
    /// state before any file is deleted. Returns the new `first_index()`.
    ///
    /// # Errors
    /// `StorageFull` or `Io`.
    pub fn delete_prefix(
        &mut self,
        before_index: u64,
        commit_index: u64,
    ) -> Result<u64, StorageError> {
        let removable = self.segments[..self.segments.len() - 1]
            .iter()
            .take_while(|s| {
                s.index.next_index <= before_index && s.index.next_index <= commit_index + 1
            })
            .count();
        self.remove_front_segments(removable)
    }

    /// Retention: removes the oldest sealed, committed segments while the log is larger than
    /// `retention_bytes` or their newest entry is older than `retention_ms` before `now_ms`
    /// (0 disables either). Returns the new `first_index()`.
    ///
    /// # Errors
    /// `StorageFull` or `Io`.
    pub fn apply_retention(
        &mut self,
        now_ms: i64,
        retention_bytes: u64,
        retention_ms: u64,
        commit_index: u64,
    ) -> Result<u64, StorageError> {
        let mut size_bytes = self.size_bytes();
        let mut removable = 0;
        for segment in &self.segments[..self.segments.len() - 1] {
            let committed = segment.index.next_index <= commit_index + 1;
            let too_big = retention_bytes > 0 && size_bytes > retention_bytes;
            let too_old = retention_ms > 0
                && segment.index.timestamp_ms_max < now_ms.saturating_sub(retention_ms as i64);
            if !committed || !(too_big || too_old) {
                break;
            }
            size_bytes -= segment.index.end_position;
            removable += 1;
        }
        self.remove_front_segments(removable)
    }

    fn remove_front_segments(&mut self, count: usize) -> Result<u64, StorageError> {
        assert!(
            count < self.segments.len(),
            "the active segment is never removed by retention"
        );
        if count == 0 {
            return Ok(self.first_index());
        }
        let first_kept = &self.segments[count].index;
        let start_index = first_kept.first_index;
        let start_term = self
            .term_at(start_index - 1)
            .expect("the entry before a kept segment is in the log");
        let next = HardState {
            log_start_index: start_index,
            log_start_term: start_term,
            log_start_offset: first_kept.first_offset,
            ..self.hard_state
        };
        // The hard state is written in place, so this works on a completely full disk, where
        // retention is what frees space.
        self.store_hard_state(next)?;
        for _ in 0..count {
            // One at a time, so that after an error the segments still listed are exactly
            // the ones still on disk (recovery would delete the rest too: they are before
            // the log start now).
            self.remove_segment_files(&self.segments[0])?;
            self.segments.remove(0);
        }
        hard_state::sync_dir(&self.dir)?;
        Ok(start_index)
    }

    /// Discards the whole log and restarts it empty just after `index` (Raft InstallSnapshot:
    /// the partition's state is its log, so a snapshot is only a position). Afterwards
    /// `first_index() == index + 1`, `term_at(index) == Some(term)`, `next_offset() ==
    /// next_offset` and `durable_index() == index`.
    ///
    /// The new segment is reserved first (a full disk fails before anything is removed),
    /// then the old segments are deleted, then the hard state is replaced, then the new
    /// segment is renamed into place; recovery handles a crash between any two steps.
    ///
    /// # Errors
    /// `StorageFull` before anything changed; `Io` after which the log must be reopened.
    pub fn install_snapshot(
        &mut self,
        index: u64,
        term: u64,
        next_offset: u64,
    ) -> Result<(), StorageError> {
        let temp_dir = self.dir.join("snapshot.tmp");
        if temp_dir.exists() {
            fs::remove_dir_all(&temp_dir).map_err(|e| StorageError::io("remove", &temp_dir, e))?;
        }
        fs::create_dir(&temp_dir).map_err(|e| StorageError::io("create dir", &temp_dir, e))?;
        let created = Segment::create(
            &temp_dir,
            index + 1,
            next_offset,
            self.config.segment_size_bytes,
        );
        let mut segment = match created {
            Ok(segment) => segment,
            Err(error) => {
                // The reservation failed and nothing changed; the empty temp directory is
                // only tidied here (recovery removes it too), so its own error is not the news.
                let _ = fs::remove_dir_all(&temp_dir);
                return Err(error);
            }
        };
        self.epoch += 1;
        while let Some(old) = self.segments.pop() {
            self.remove_segment_files(&old)?;
        }
        hard_state::sync_dir(&self.dir)?;
        let next = HardState {
            log_start_index: index + 1,
            log_start_term: term,
            log_start_offset: next_offset,
            ..self.hard_state
        };
        self.store_hard_state(next)?;
        let path = self.dir.join(segment::segment_file_name(index + 1));
        fs::rename(&segment.path, &path)
            .map_err(|e| StorageError::io("rename snapshot segment", &path, e))?;
        hard_state::sync_dir(&self.dir)?;
        fs::remove_dir(&temp_dir).map_err(|e| StorageError::io("remove dir", &temp_dir, e))?;
        segment.path = path;
        self.segments.push(segment);
        self.durable_index = index;
        Ok(())
    }
}

#[cfg(test)]
impl Log {
    /// For crash tests: the active segment's path, the byte position after its last durable
    /// frame, and its end of data. Bytes in between may be lost by a crash.
    pub(crate) fn durable_tail(&self) -> (PathBuf, u64, u64) {
        let active = self.active();
        let end = active.index.end_position;
        if self.durable_index + 1 >= active.index.next_index {
            return (active.path.clone(), end, end);
        }
        assert!(
            self.durable_index + 1 >= active.index.first_index,
            "sealed segments are durable"
        );
        let bytes = self.view(active).expect("active segment is mapped");
        let target = self.durable_index + 1;
        let mut position = active.index.position_for_index(target);
        loop {
            let header = segment::frame_at(&bytes, position, &active.path).expect("valid frame");
            if header.index == target {
                return (active.path.clone(), position, end);
            }
            position += u64::from(header.length);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::EntryKind;

    fn config() -> LogConfig {
        LogConfig {
            segment_size_bytes: 4096,
            index_interval_bytes: 512,
            mapped_segments_max: 2,
            ..LogConfig::default()
        }
    }

    fn entries(log: &Log, count: u64, term: u64) -> Vec<Entry> {
        (0..count)
            .map(|i| Entry {
                term,
                index: log.last_index() + 1 + i,
                kind: EntryKind::Data as i32,
                base_offset: log.next_offset() + i,
                record_count: 1,
                timestamp_ms: 0,
                payload: Bytes::from(vec![i as u8; 900]),
            })
            .collect()
    }

    #[test]
    fn roll_seals_syncs_and_indexes_the_old_segment() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), config()).unwrap().0;
        log.append(&entries(&log, 5, 1)).unwrap();
        assert_eq!(log.segment_count(), 2);
        let sealed = &log.segments[0];
        assert!(sealed.map.is_none(), "a sealed segment is not kept mapped");
        assert!(segment::index_path(&sealed.path).exists());
        // Rolling synced the sealed segment: its entries are durable without a sync call.
        assert_eq!(log.durable_index(), sealed.index.next_index - 1);
        assert!(log.active().map.is_some());
    }

    #[test]
    fn truncating_into_a_sealed_segment_makes_it_active_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), config()).unwrap().0;
        log.append(&entries(&log, 10, 1)).unwrap();
        assert!(log.segment_count() >= 3);
        log.truncate_suffix(3, 0).unwrap();
        assert_eq!(log.segment_count(), 1);
        assert!(log.active().map.is_some());
        assert!(
            !segment::index_path(&log.active().path).exists(),
            "stale index removed"
        );
        assert_eq!(log.mapped_segment_count(), 0);
        log.append(&entries(&log, 10, 2)).unwrap();
        assert_eq!(log.term_at(2), Some(1));
        assert_eq!(log.term_at(3), Some(2));
    }

    #[test]
    fn map_cache_evicts_the_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), config()).unwrap().0;
        log.append(&entries(&log, 20, 1)).unwrap();
        let firsts: Vec<u64> = log.segments.iter().map(|s| s.index.first_index).collect();
        log.entries(firsts[0], firsts[0] + 1, 0).unwrap();
        log.entries(firsts[1], firsts[1] + 1, 0).unwrap();
        log.entries(firsts[0], firsts[0] + 1, 0).unwrap();
        log.entries(firsts[2], firsts[2] + 1, 0).unwrap();
        let cache = log.maps.lock().unwrap();
        let mut mapped: Vec<u64> = cache.maps.keys().copied().collect();
        mapped.sort();
        assert_eq!(mapped, vec![firsts[0], firsts[2]]);
        drop(cache);
        log.release_mappings();
        assert_eq!(log.mapped_segment_count(), 0);
        assert_eq!(log.entries(firsts[1], firsts[1] + 1, 0).unwrap().len(), 1);
    }

    #[test]
    fn stale_sync_job_is_ignored_after_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), config()).unwrap().0;
        log.append(&entries(&log, 2, 1)).unwrap();
        let job = log.prepare_sync();
        log.install_snapshot(50, 3, 60).unwrap();
        assert_eq!(log.complete_sync(job.run()).unwrap(), 50);
        assert_eq!(log.durable_index(), 50);
    }
}
