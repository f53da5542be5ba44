//! One segment file: a preallocated, memory-mapped run of frames.
//!
//! Owns a segment's file handle, its optional writable mapping, its in-memory
//! [`SegmentIndex`], and the byte-level operations on them: create with `fallocate`, append
//! frames with `pwritev` (see [`Segment::write`] for why not through the mapping), scan
//! (pure), read frames as `Bytes` that share the mapping, clear a tail. It does not decide which segment is active, when to roll or how to
//! repair damage: that is [`super::log`] and [`super::recovery`].
//!
//! # Why `fallocate` before `mmap`
//! Writing through a mapping into a sparse file makes the kernel allocate blocks at page-fault
//! time; on a full disk that fault becomes SIGBUS and kills the process. Reserving every block
//! up front turns the full disk into an `ENOSPC` from `fallocate`, which we return as
//! [`StorageError::StorageFull`] before anything is mapped. Files are never shrunk (a mapped
//! page past the end of a file is SIGBUS too); truncation only clears bytes.
//!
//! # `Bytes` that share the mapping
//! Reads return payloads as slices of a [`MapView`], which holds the mapping (kept alive after
//! the file is unlinked, because the kernel keeps the inode while it is mapped) and a clone of
//! the segment's `readers` token. Bytes below `end_position` are only ever rewritten by suffix
//! truncation, and truncation first checks the token: if any reader still holds a view, it
//! writes the kept prefix into a fresh file and renames it over the old one instead of
//! clearing bytes in place, so no reader ever sees bytes change under it.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use memmap2::{MmapOptions, MmapRaw};

use super::error::StorageError;
use super::frame::{self, FrameError, FrameHeader};
use super::index::SegmentIndex;
use crate::proto::Entry;

/// File name of the segment whose first Raft index is `first_index`.
pub fn segment_file_name(first_index: u64) -> String {
    format!("{first_index:020}.log")
}

/// Parses a segment file name back into its first index.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The `.index` path that goes with a segment path.
pub fn index_path(segment_path: &Path) -> PathBuf {
    segment_path.with_extension("index")
}

/// The owner of `Bytes` that slice a mapping; see the module doc for the safety argument.
pub(crate) struct MapView {
    map: Arc<MmapRaw>,
    _readers: Arc<()>,
    len: usize,
}

impl AsRef<[u8]> for MapView {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `len` is within the mapping (asserted at construction), the mapping lives as
        // long as `self`, and bytes below `len` are not written while a readers token is held
        // (appends write at or after `end_position`; truncation copies instead, see module doc).
        unsafe { std::slice::from_raw_parts(self.map.as_ptr(), self.len) }
    }
}

/// Bytes `[0, len)` of `map` as shared `Bytes`.
pub(crate) fn view(map: &Arc<MmapRaw>, readers: &Arc<()>, len: u64) -> Bytes {
    assert!(
        len as usize <= map.len(),
        "view of {len} bytes past a {}-byte mapping",
        map.len()
    );
    Bytes::from_owner(MapView {
        map: map.clone(),
        _readers: readers.clone(),
        len: len as usize,
    })
}

/// One open segment file.
pub(crate) struct Segment {
    /// Path of the `.log` file.
    pub path: PathBuf,
    /// The file, shared with sync jobs.
    pub file: Arc<File>,
    /// File length: the preallocated capacity, never shrunk.
    pub capacity_bytes: u64,
    /// What the segment holds.
    pub index: SegmentIndex,
    /// Cloned into every `MapView`; a strong count above 1 means a reader holds bytes.
    pub readers: Arc<()>,
    /// The writable mapping of the active segment; `None` for sealed segments, which the
    /// log maps lazily through its bounded cache.
    pub map: Option<Arc<MmapRaw>>,
}

/// Opens `path` for reading and writing.
pub(crate) fn open_file(path: &Path) -> Result<File, StorageError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| StorageError::io("open segment", path, e))
}

/// Reserves `[0, bytes)` of `file` with `fallocate`, extending it if shorter.
pub(crate) fn reserve(file: &File, path: &Path, bytes: u64) -> Result<(), StorageError> {
    // SAFETY: plain syscall on an owned, open descriptor.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, bytes as libc::off_t) };
    if rc != 0 {
        return Err(StorageError::reserve(
            path,
            bytes,
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Maps the whole of `file` (`len` bytes) shared and writable.
pub(crate) fn map_file(file: &File, path: &Path, len: u64) -> Result<Arc<MmapRaw>, StorageError> {
    MmapOptions::new()
        .len(len as usize)
        .map_raw(file)
        .map(Arc::new)
        .map_err(|e| StorageError::io("mmap segment", path, e))
}

impl Segment {
    /// Creates a new, empty, fully reserved and mapped segment in `dir`. The caller fsyncs
    /// the directory. On failure the file is removed again.
    pub fn create(
        dir: &Path,
        first_index: u64,
        first_offset: u64,
        capacity_bytes: u64,
    ) -> Result<Segment, StorageError> {
        let path = dir.join(segment_file_name(first_index));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| StorageError::io("create segment", &path, e))?;
        let result = reserve(&file, &path, capacity_bytes)
            .and_then(|()| map_file(&file, &path, capacity_bytes));
        match result {
            Ok(map) => Ok(Segment {
                path,
                file: Arc::new(file),
                capacity_bytes,
                index: SegmentIndex::new(first_index, first_offset),
                readers: Arc::new(()),
                map: Some(map),
            }),
            Err(error) => {
                drop(file);
                let _ = std::fs::remove_file(&path);
                Err(error)
            }
        }
    }

    /// Bytes still free for frames.
    pub fn free_bytes(&self) -> u64 {
        self.capacity_bytes - self.index.end_position
    }

    /// True when some reader holds `Bytes` of this segment.
    pub fn has_readers(&self) -> bool {
        Arc::strong_count(&self.readers) > 1
    }

    /// Writes the frame of `entry` at `end_position` with one `pwritev`.
    ///
    /// Appends go through the file, not the mapping: a store into a fresh page of the mapping
    /// faults, and ext4 zero-fills the whole (possibly large) folio behind an unwritten extent
    /// before the copy; after each fdatasync the written-back tail page is write-protected
    /// again (a TLB shootdown on every core), so the next store faults once more. Profiles of
    /// a 3-node cluster showed that zeroing and faulting as the largest cost on every node.
    /// Readers still see the bytes through the mapping: both share the page cache.
    ///
    /// # Panics
    /// If the frame does not fit: the log checks that first.
    pub fn write(&mut self, entry: &Entry, interval_bytes: u64) -> Result<(), StorageError> {
        let length = frame::frame_bytes(entry.payload.len()) as u64;
        let position = self.index.end_position;
        assert!(
            length <= self.free_bytes(),
            "frame of {length} bytes overflows {}",
            self.path.display()
        );
        let header = frame::encode_header(entry);
        write_all_vectored_at(&self.file, &[&header, &entry.payload], position)
            .map_err(|e| StorageError::io("write segment", &self.path, e))?;
        let stored = FrameHeader {
            length: length as u32,
            crc: 0,
            term: entry.term,
            index: entry.index,
            base_offset: entry.base_offset,
            timestamp_ms: entry.timestamp_ms,
            record_count: entry.record_count,
            kind: entry.kind as u32,
        };
        self.index.push(&stored, position, interval_bytes);
        Ok(())
    }

    /// Clears `[from, to)` of the mapping in place.
    ///
    /// # Panics
    /// If a reader holds bytes of this segment, or the range is outside the mapping.
    pub fn clear(&mut self, from: u64, to: u64) {
        assert!(
            !self.has_readers(),
            "clearing bytes of {} that a reader holds",
            self.path.display()
        );
        let map = self.map.as_ref().expect("only a mapped segment is cleared");
        assert!(from <= to && to <= map.len() as u64);
        // SAFETY: inside the mapping, and no reader view exists (asserted above).
        unsafe {
            std::ptr::write_bytes(map.as_mut_ptr().add(from as usize), 0, (to - from) as usize)
        };
    }

    /// Makes every write to the file durable (mapped writes included: on Linux, fdatasync
    /// writes back the file's dirty pages however they were dirtied).
    pub fn sync(&self) -> Result<(), StorageError> {
        self.file
            .sync_data()
            .map_err(|e| StorageError::io("fdatasync", &self.path, e))
    }
}

/// Writes every byte of `parts`, in order, at `position` of `file`, retrying short writes.
fn write_all_vectored_at(file: &File, parts: &[&[u8]], mut position: u64) -> std::io::Result<()> {
    let mut parts: Vec<&[u8]> = parts.iter().copied().filter(|p| !p.is_empty()).collect();
    while !parts.is_empty() {
        let iovecs: Vec<libc::iovec> = parts
            .iter()
            .map(|p| libc::iovec {
                iov_base: p.as_ptr() as *mut libc::c_void,
                iov_len: p.len(),
            })
            .collect();
        // SAFETY: every iovec points into a live slice of `parts` for the duration of the call.
        let written = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                iovecs.as_ptr(),
                iovecs.len() as libc::c_int,
                position as libc::off_t,
            )
        };
        if written < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        position += written as u64;
        let mut advance = written as usize;
        while advance > 0 {
            if advance >= parts[0].len() {
                advance -= parts[0].len();
                parts.remove(0);
            } else {
                parts[0] = &parts[0][advance..];
                advance = 0;
            }
        }
    }
    Ok(())
}

/// Where and why a scan stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ScanStop {
    /// Byte position of the first frame that was not accepted.
    pub position: u64,
    /// Why: a frame error, or `None` when the frame was valid but out of sequence.
    pub error: Option<FrameError>,
    /// Length field of the rejected frame when it is at least a header long.
    pub declared_bytes: Option<u64>,
}

/// Result of scanning a segment's bytes.
#[derive(Debug)]
pub(crate) struct Scan {
    /// Every accepted frame, summarised.
    pub index: SegmentIndex,
    /// Where the scan stopped (`index.end_position`), unless it reached the end of the bytes.
    pub stop: Option<ScanStop>,
    /// End of the last non-zero byte at or after the stop position (equal to it when the
    /// rest is all zero).
    pub nonzero_end: u64,
}

/// Scans `bytes` (a whole segment) from position 0, accepting frames while they check out
/// and continue the sequence (index `first_index`, then +1; terms never decrease; each
/// offset follows the previous entry's last record).
pub(crate) fn scan(bytes: &[u8], first_index: u64, interval_bytes: u64) -> Scan {
    let mut index = SegmentIndex::new(first_index, 0);
    let mut position = 0u64;
    let stop = loop {
        if position as usize == bytes.len() {
            break None;
        }
        let rest = &bytes[position as usize..];
        let declared = (rest.len() >= 4)
            .then(|| u64::from(u32::from_le_bytes(rest[0..4].try_into().expect("4"))));
        let declared_bytes = declared.filter(|&d| d >= frame::FRAME_HEADER_BYTES as u64);
        match frame::decode(rest) {
            Ok(header) if follows(&index, &header) => index.push(&header, position, interval_bytes),
            Ok(_) => {
                break Some(ScanStop {
                    position,
                    error: None,
                    declared_bytes,
                })
            }
            Err(error) => {
                break Some(ScanStop {
                    position,
                    error: Some(error),
                    declared_bytes,
                })
            }
        }
        position = index.end_position;
    };
    let nonzero_end = position + last_nonzero_end(&bytes[position as usize..]);
    Scan {
        index,
        stop,
        nonzero_end,
    }
}

fn follows(index: &SegmentIndex, header: &FrameHeader) -> bool {
    header.index == index.next_index
        && index.last_term().is_none_or(|term| header.term >= term)
        && (index.is_empty() || header.base_offset == index.next_offset)
}

/// Length of `bytes` without its trailing zeros.
fn last_nonzero_end(bytes: &[u8]) -> u64 {
    const CHUNK_BYTES: usize = 4096;
    let mut end = bytes.len();
    while end > 0 {
        let start = end.saturating_sub(CHUNK_BYTES);
        if let Some(at) = bytes[start..end].iter().rposition(|&b| b != 0) {
            return (start + at + 1) as u64;
        }
        end = start;
    }
    0
}

/// Decodes and checks the frame at `position` of `bytes`, as a read error on failure.
pub(crate) fn frame_at(
    bytes: &[u8],
    position: u64,
    path: &Path,
) -> Result<FrameHeader, StorageError> {
    frame::decode(&bytes[position as usize..]).map_err(|error| corrupt(path, position, error))
}

/// Decodes only the header at `position` (see [`frame::decode_header`]).
pub(crate) fn header_at(
    bytes: &[u8],
    position: u64,
    path: &Path,
) -> Result<FrameHeader, StorageError> {
    frame::decode_header(&bytes[position as usize..])
        .map_err(|error| corrupt(path, position, error))
}

/// The read error for a frame that failed `error` at `position` of `path`.
pub(crate) fn corrupt(path: &Path, position: u64, error: FrameError) -> StorageError {
    StorageError::Corrupt {
        path: path.to_path_buf(),
        position,
        reason: error.reason().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::EntryKind;

    fn entry(index: u64, term: u64, payload_bytes: usize) -> Entry {
        Entry {
            term,
            index,
            kind: EntryKind::Data as i32,
            base_offset: (index - 1) * 3,
            record_count: 3,
            timestamp_ms: 1000 + index as i64,
            payload: Bytes::from(vec![index as u8; payload_bytes]),
        }
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(segment_file_name(42), "00000000000000000042.log");
        assert_eq!(
            parse_segment_file_name("00000000000000000042.log"),
            Some(42)
        );
        assert_eq!(parse_segment_file_name("42.log"), None);
        assert_eq!(parse_segment_file_name("00000000000000000042.index"), None);
    }

    #[test]
    fn create_write_scan_and_view() {
        let dir = tempfile::tempdir().unwrap();
        let mut segment = Segment::create(dir.path(), 1, 0, 64 * 1024).unwrap();
        assert_eq!(std::fs::metadata(&segment.path).unwrap().len(), 64 * 1024);
        for i in 1..=5 {
            segment.write(&entry(i, 1 + i / 3, 100), 256).unwrap();
        }
        segment.sync().unwrap();
        let map = segment.map.clone().unwrap();
        let bytes = view(&map, &segment.readers, segment.capacity_bytes);
        assert!(segment.has_readers());
        let scan = scan(&bytes, 1, 256);
        assert_eq!(scan.index, segment.index);
        assert_eq!(scan.stop.unwrap().error, Some(FrameError::End));
        assert_eq!(scan.nonzero_end, scan.index.end_position);
        let header = frame_at(&bytes, 0, &segment.path).unwrap();
        assert_eq!(header.index, 1);
        drop(bytes);
        assert!(!segment.has_readers());
    }

    #[test]
    fn scan_stops_at_sequence_break() {
        let mut bytes = Vec::new();
        bytes.extend(frame::encode_frame(&entry(1, 2, 10)));
        bytes.extend(frame::encode_frame(&entry(2, 1, 10)));
        bytes.extend(vec![0u8; 100]);
        let scan = scan(&bytes, 1, 4096);
        assert_eq!(scan.index.next_index, 2);
        let stop = scan.stop.unwrap();
        assert_eq!(stop.error, None);
        assert_eq!(stop.declared_bytes, Some(58));
        assert_eq!(scan.nonzero_end, 116);
    }

    #[test]
    fn create_refuses_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let _segment = Segment::create(dir.path(), 7, 0, 4096).unwrap();
        assert!(matches!(
            Segment::create(dir.path(), 7, 0, 4096),
            Err(StorageError::Io {
                op: "create segment",
                ..
            })
        ));
    }
}
