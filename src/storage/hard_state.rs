//! The hard state file: current term, vote and log start, updated in place.
//!
//! Owns the `hard_state` file of a partition directory and its format; it does not decide
//! when to write it (the Raft driver persists term and vote before sending anything that
//! depends on them; the log persists the log start when retention or a snapshot moves it).
//! On an open log, go through [`super::Log::set_hard_state`], which writes through the log's
//! open [`HardStateFile`]; [`store`] and [`load`] are for tools and tests.
//!
//! # Layout (little-endian)
//!
//! The file is [`FILE_BYTES`] long: two slots of [`SLOT_BYTES`], each holding one version of
//! the state or nothing.
//!
//! ```text
//!  0       4       8          16       20       24
//!  +-------+-------+----------+--------+--------+------------------------------+-------+
//!  | magic | ver   | sequence | length | crc32  | HardState (protobuf, length) | zeros |
//!  | RLHS  | u32=2 | u64      | u32    | u32    |                              |       |
//!  +-------+-------+----------+--------+--------+------------------------------+-------+
//! ```
//!
//! The CRC covers bytes 0..20 and the protobuf bytes. The state with sequence `n` lives in
//! slot `n % 2`. An update writes sequence `n + 1` into the other slot with one `pwrite` and
//! fdatasyncs it; the slot holding `n` is not touched, so a crash at any point (a torn slot
//! included) leaves it valid. [`load`] takes the valid slot with the higher sequence.
//!
//! # Why in place, not a temp file renamed over
//! On a full disk, retention must persist the moved log start before it deletes the segments
//! that free the space; a new file needs new blocks, which a full disk refuses. So the file is
//! created once, when a log is opened without one (written out in full through a temp file,
//! fsync, rename and directory fsync), and every update after that overwrites blocks it
//! already owns: no allocation, no metadata change beyond timestamps. (On a copy-on-write
//! file system such as btrfs or ZFS an overwrite allocates anyway; there a completely full
//! disk still refuses hard state updates.) Each slot is a page and a block of its own, so
//! page-cache writeback of one slot never rewrites the other's sectors.
//!
//! # Damage
//! A slot that fails its checks cannot be told from a torn write, so [`load`] falls back to
//! the other slot: damage confined to the newer slot reads as if its update never happened.
//! When neither slot is valid the file is refused (`HardStateCorrupt`): a node must not
//! forget its vote silently.
//!
//! # Version 1
//! Version 1 files (one record with a 16-byte header `RLHS`, 1, length, CRC, replaced by
//! rename) are still read; opening a log rewrites them in the slotted form.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use prost::Message;

use super::error::StorageError;
use crate::proto::HardState;

/// File name of the hard state inside a partition directory.
pub const HARD_STATE_FILE: &str = "hard_state";
/// Bytes of one slot: a page and a file system block, so slots never share either.
pub const SLOT_BYTES: usize = 4096;
/// Bytes of the whole file: two slots.
pub const FILE_BYTES: usize = 2 * SLOT_BYTES;
const MAGIC: &[u8; 4] = b"RLHS";
const VERSION: u32 = 2;
const LEGACY_VERSION: u32 = 1;
const SLOT_HEADER_BYTES: usize = 24;
const LEGACY_HEADER_BYTES: usize = 16;
/// A HardState encodes to at most 5 varint u64 fields; anything larger is damage.
const BODY_BYTES_MAX: usize = 5 * 11;

/// The state of a partition that has never written one: term 0, no vote, log start 1.
pub fn default_hard_state() -> HardState {
    HardState {
        current_term: 0,
        voted_for: 0,
        log_start_index: 1,
        log_start_term: 0,
        log_start_offset: 0,
    }
}

/// Encodes `state` with `sequence` into one slot ([`SLOT_BYTES`], zero-padded).
pub fn encode_slot(state: &HardState, sequence: u64) -> Vec<u8> {
    let body = state.encode_to_vec();
    let mut out = Vec::with_capacity(SLOT_BYTES);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&sequence.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    let crc = slot_crc(&out, &body);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&body);
    out.resize(SLOT_BYTES, 0);
    out
}

fn slot_crc(header: &[u8], body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[..20]);
    hasher.update(body);
    hasher.finalize()
}

/// Decodes one slot into its sequence and state; the error says what check failed.
pub fn decode_slot(bytes: &[u8]) -> Result<(u64, HardState), String> {
    if bytes.len() != SLOT_BYTES {
        return Err(format!("slot of {} bytes, not {SLOT_BYTES}", bytes.len()));
    }
    if &bytes[0..4] != MAGIC {
        return Err("bad magic".to_string());
    }
    let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    if word(4) != VERSION {
        return Err(format!("unknown version {}", word(4)));
    }
    let sequence = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let length = word(16) as usize;
    if length > BODY_BYTES_MAX {
        return Err(format!("length {length} above {BODY_BYTES_MAX}"));
    }
    let body = &bytes[SLOT_HEADER_BYTES..SLOT_HEADER_BYTES + length];
    if slot_crc(bytes, body) != word(20) {
        return Err("CRC mismatch".to_string());
    }
    Ok((sequence, decode_body(body)?))
}

fn decode_body(body: &[u8]) -> Result<HardState, String> {
    let state = HardState::decode(body).map_err(|e| format!("protobuf: {e}"))?;
    if state.log_start_index == 0 {
        return Err("log_start_index is 0 (indexes start at 1)".to_string());
    }
    Ok(state)
}

/// Decodes a version 1 file (see the module doc).
fn decode_legacy(bytes: &[u8]) -> Result<HardState, String> {
    if bytes.len() < LEGACY_HEADER_BYTES {
        return Err(format!(
            "{} bytes, shorter than the {LEGACY_HEADER_BYTES}-byte header",
            bytes.len()
        ));
    }
    if &bytes[0..4] != MAGIC {
        return Err("bad magic".to_string());
    }
    let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    if word(4) != LEGACY_VERSION {
        return Err(format!("unknown version {}", word(4)));
    }
    let length = word(8) as usize;
    if length > BODY_BYTES_MAX || bytes.len() != LEGACY_HEADER_BYTES + length {
        return Err(format!(
            "length {length} does not match file size {}",
            bytes.len()
        ));
    }
    let body = &bytes[LEGACY_HEADER_BYTES..];
    if crc32fast::hash(body) != word(12) {
        return Err("CRC mismatch".to_string());
    }
    decode_body(body)
}

/// What a `hard_state` file holds.
enum Stored {
    /// No file.
    Missing,
    /// A version 1 file, to be rewritten in the slotted form.
    Legacy(HardState),
    /// The slotted form: the newest valid state and its sequence.
    Slotted(u64, HardState),
}

/// Decodes a whole file of either version; the error says what check failed.
fn decode_file(bytes: &[u8]) -> Result<Stored, String> {
    if bytes.len() != FILE_BYTES {
        return decode_legacy(bytes).map(Stored::Legacy).map_err(|reason| {
            format!(
                "{} bytes, not {FILE_BYTES}, and not a version 1 file: {reason}",
                bytes.len()
            )
        });
    }
    let slot = |at: usize| {
        decode_slot(&bytes[at * SLOT_BYTES..(at + 1) * SLOT_BYTES]).and_then(|(sequence, state)| {
            if sequence % 2 == at as u64 {
                Ok((sequence, state))
            } else {
                Err(format!("sequence {sequence} does not belong in slot {at}"))
            }
        })
    };
    match (slot(0), slot(1)) {
        (Ok(a), Ok(b)) => {
            let (sequence, state) = if a.0 > b.0 { a } else { b };
            Ok(Stored::Slotted(sequence, state))
        }
        // The other slot is torn, damaged or was never written (see the module doc).
        (Ok((sequence, state)), Err(_)) | (Err(_), Ok((sequence, state))) => {
            Ok(Stored::Slotted(sequence, state))
        }
        (Err(first), Err(second)) => Err(format!("slot 0: {first}; slot 1: {second}")),
    }
}

fn read_stored(path: &Path, file: Option<&mut File>) -> Result<Stored, StorageError> {
    let mut bytes = Vec::new();
    let read = match file {
        Some(file) => file.read_to_end(&mut bytes).map(|_| ()),
        None => match File::open(path) {
            Ok(mut file) => file.read_to_end(&mut bytes).map(|_| ()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Stored::Missing),
            Err(e) => Err(e),
        },
    };
    read.map_err(|e| StorageError::io("read hard state", path, e))?;
    decode_file(&bytes).map_err(|reason| StorageError::HardStateCorrupt {
        path: path.to_path_buf(),
        reason,
    })
}

/// Loads the hard state of `dir`: the default when the file is missing, an error when it is
/// damaged (a node must not forget its vote silently).
///
/// # Errors
/// `HardStateCorrupt` when no slot is valid, `Io` when the file cannot be read.
pub fn load(dir: &Path) -> Result<HardState, StorageError> {
    match read_stored(&dir.join(HARD_STATE_FILE), None)? {
        Stored::Missing => Ok(default_hard_state()),
        Stored::Legacy(state) | Stored::Slotted(_, state) => Ok(state),
    }
}

/// Writes `state` into the hard state of `dir`, durably, like [`HardStateFile::write`]
/// (creating the file first if needed). Not for a directory that an open `Log` holds.
///
/// # Errors
/// `HardStateCorrupt` when the file is damaged, `StorageFull` when it must be created and
/// there is no room, `Io` otherwise.
pub fn store(dir: &Path, state: &HardState) -> Result<(), StorageError> {
    let (mut file, _) = HardStateFile::open(dir)?;
    file.write(state)
}

/// The hard state file of an open log, kept open so that an update is one `pwrite` and one
/// fdatasync of the slot not holding the current state (see the module doc).
pub struct HardStateFile {
    file: File,
    path: PathBuf,
    /// Sequence of the current state; the next update writes the next one.
    sequence: u64,
}

impl HardStateFile {
    /// Opens the hard state file of `dir` and returns it with the current state. A missing
    /// file is created holding the default state, a version 1 file is rewritten in the
    /// slotted form; both need room for a new file, nothing after that does.
    ///
    /// # Errors
    /// `HardStateCorrupt` when no slot is valid, `StorageFull` when the file must be created
    /// and there is no room, `Io` otherwise.
    pub fn open(dir: &Path) -> Result<(HardStateFile, HardState), StorageError> {
        let path = dir.join(HARD_STATE_FILE);
        let existing = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => Some(file),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(StorageError::io("open hard state", &path, e)),
        };
        let (file, sequence, state) = match existing {
            Some(mut file) => match read_stored(&path, Some(&mut file))? {
                Stored::Slotted(sequence, state) => (file, sequence, state),
                Stored::Legacy(state) => (create(&path, &state)?, 0, state),
                Stored::Missing => unreachable!("read from an open file"),
            },
            None => {
                let state = default_hard_state();
                (create(&path, &state)?, 0, state)
            }
        };
        Ok((
            HardStateFile {
                file,
                path,
                sequence,
            },
            state,
        ))
    }

    /// Replaces the state durably before returning, without allocating (see the module doc).
    ///
    /// # Errors
    /// `Io` (or `StorageFull` on a file system that allocates on overwrite); the current
    /// state stays the one on disk, and the next write goes to the same slot again.
    pub fn write(&mut self, state: &HardState) -> Result<(), StorageError> {
        assert!(state.log_start_index >= 1, "log_start_index starts at 1");
        let sequence = self.sequence + 1;
        let slot = encode_slot(state, sequence);
        let position = (sequence % 2) * SLOT_BYTES as u64;
        self.file
            .write_all_at(&slot, position)
            .map_err(|e| StorageError::reserve(&self.path, SLOT_BYTES as u64, e))?;
        self.file
            .sync_data()
            .map_err(|e| StorageError::io("fdatasync hard state", &self.path, e))?;
        self.sequence = sequence;
        Ok(())
    }
}

/// Creates `path` in the slotted form holding `state` at sequence 0 (slot 1 left empty),
/// replacing whatever is there atomically and durably, and opens it.
fn create(path: &Path, state: &HardState) -> Result<File, StorageError> {
    let mut bytes = encode_slot(state, 0);
    bytes.resize(FILE_BYTES, 0);
    write_file_durably(path, &bytes)?;
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| StorageError::io("open hard state", path, e))
}

/// Replaces the small file `path` with `bytes` atomically and durably (temp file, fsync,
/// rename, fsync of the directory); this is how the hard state file is created.
///
/// # Errors
/// `Io` or `StorageFull`.
pub fn write_file_durably(path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    let temp = path.with_extension("tmp");
    let mut file = File::create(&temp).map_err(|e| StorageError::io("create", &temp, e))?;
    if let Err(e) = file.write_all(bytes) {
        // On a full disk the half-written temp file holds the last free blocks; recovery
        // would delete it too, but only at the next open.
        let _ = fs::remove_file(&temp);
        return Err(StorageError::reserve(&temp, bytes.len() as u64, e));
    }
    file.sync_all()
        .map_err(|e| StorageError::io("fsync", &temp, e))?;
    drop(file);
    fs::rename(&temp, path).map_err(|e| StorageError::io("rename", path, e))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Removes a marker file (if present) and makes its removal durable.
///
/// # Errors
/// `Io`.
pub fn remove_file_durably(path: &Path) -> Result<(), StorageError> {
    super::log::remove_if_exists(path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Fsyncs a directory so that creations, renames and deletions in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io("fsync directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> HardState {
        HardState {
            current_term: 9,
            voted_for: 2,
            log_start_index: 40,
            log_start_term: 7,
            log_start_offset: 1234,
        }
    }

    fn later() -> HardState {
        HardState {
            current_term: 10,
            voted_for: 3,
            ..state()
        }
    }

    #[test]
    fn missing_is_default() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), default_hard_state());
    }

    #[test]
    fn open_creates_the_whole_file_once() {
        let dir = tempfile::tempdir().unwrap();
        let (mut file, loaded) = HardStateFile::open(dir.path()).unwrap();
        assert_eq!(loaded, default_hard_state());
        let path = dir.path().join(HARD_STATE_FILE);
        let inode = |path: &Path| {
            use std::os::unix::fs::MetadataExt;
            let meta = fs::metadata(path).unwrap();
            (meta.ino(), meta.len(), meta.blocks())
        };
        let created = inode(&path);
        assert_eq!(created.1, FILE_BYTES as u64);
        for term in 1..=5 {
            file.write(&HardState {
                current_term: term,
                ..state()
            })
            .unwrap();
            assert_eq!(inode(&path), created, "updated in place, no new blocks");
            assert_eq!(load(dir.path()).unwrap().current_term, term);
        }
        assert!(!dir.path().join("hard_state.tmp").exists());
    }

    #[test]
    fn round_trip_replaces() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path(), &default_hard_state()).unwrap();
        store(dir.path(), &state()).unwrap();
        assert_eq!(load(dir.path()).unwrap(), state());
        store(dir.path(), &later()).unwrap();
        assert_eq!(load(dir.path()).unwrap(), later());
        let (_, reopened) = HardStateFile::open(dir.path()).unwrap();
        assert_eq!(reopened, later());
    }

    /// Which slot holds the newest state after `store` of `state()` then `later()` on a new
    /// directory: creation is sequence 0 (slot 0), then 1 (slot 1), then 2 (slot 0).
    const NEWEST_SLOT: usize = 0;

    #[test]
    fn a_torn_newer_slot_falls_back_to_the_older() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path(), &state()).unwrap();
        store(dir.path(), &later()).unwrap();
        let path = dir.path().join(HARD_STATE_FILE);
        let mut bytes = fs::read(&path).unwrap();
        // A crash part-way through the write of `later()`: only its first bytes landed over
        // an older slot's.
        let newest = NEWEST_SLOT * SLOT_BYTES;
        bytes[newest + 10..newest + SLOT_BYTES].fill(0);
        fs::write(&path, &bytes).unwrap();
        assert_eq!(load(dir.path()).unwrap(), state());
        // The next update overwrites the torn slot, never the one it fell back to.
        let (mut file, loaded) = HardStateFile::open(dir.path()).unwrap();
        assert_eq!(loaded, state());
        file.write(&later()).unwrap();
        assert_eq!(load(dir.path()).unwrap(), later());
        let bytes = fs::read(&path).unwrap();
        let other = (1 - NEWEST_SLOT) * SLOT_BYTES;
        assert_eq!(
            decode_slot(&bytes[other..other + SLOT_BYTES]).unwrap().1,
            state()
        );
    }

    #[test]
    fn both_slots_damaged_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path(), &state()).unwrap();
        store(dir.path(), &later()).unwrap();
        let path = dir.path().join(HARD_STATE_FILE);
        let mut bytes = fs::read(&path).unwrap();
        bytes[SLOT_HEADER_BYTES + 1] ^= 0x10;
        bytes[SLOT_BYTES + SLOT_HEADER_BYTES + 1] ^= 0x10;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            load(dir.path()),
            Err(StorageError::HardStateCorrupt { .. })
        ));
        assert!(matches!(
            HardStateFile::open(dir.path()),
            Err(StorageError::HardStateCorrupt { .. })
        ));
        fs::write(&path, &bytes[..5]).unwrap();
        assert!(matches!(
            load(dir.path()),
            Err(StorageError::HardStateCorrupt { .. })
        ));
    }

    #[test]
    fn a_slot_in_the_wrong_place_is_not_trusted() {
        let mut bytes = encode_slot(&state(), 3);
        bytes.extend(encode_slot(&later(), 4));
        // Sequence 3 belongs in slot 1 and 4 in slot 0: both are misplaced.
        assert!(decode_file(&bytes).is_err());
    }

    #[test]
    fn version_1_is_read_and_rewritten_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let body = state().encode_to_vec();
        let mut legacy = Vec::new();
        legacy.extend_from_slice(MAGIC);
        legacy.extend_from_slice(&LEGACY_VERSION.to_le_bytes());
        legacy.extend_from_slice(&(body.len() as u32).to_le_bytes());
        legacy.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        legacy.extend_from_slice(&body);
        let path = dir.path().join(HARD_STATE_FILE);
        fs::write(&path, &legacy).unwrap();
        assert_eq!(load(dir.path()).unwrap(), state());
        let (mut file, loaded) = HardStateFile::open(dir.path()).unwrap();
        assert_eq!(loaded, state());
        assert_eq!(fs::metadata(&path).unwrap().len(), FILE_BYTES as u64);
        file.write(&later()).unwrap();
        assert_eq!(load(dir.path()).unwrap(), later());
        let last = legacy.len() - 1;
        legacy[last] ^= 0x10;
        fs::write(&path, &legacy).unwrap();
        assert!(matches!(
            load(dir.path()),
            Err(StorageError::HardStateCorrupt { .. })
        ));
    }

    #[test]
    fn stray_temp_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path(), &state()).unwrap();
        fs::write(dir.path().join("hard_state.tmp"), b"half written").unwrap();
        assert_eq!(load(dir.path()).unwrap(), state());
    }
}
