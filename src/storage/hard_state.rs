//! The hard state file: current term, vote and log start, replaced atomically.
//!
//! Owns the `hard_state` file of a partition directory and its format; it does not decide
//! when to write it (the Raft driver persists term and vote before sending anything that
//! depends on them; the log persists the log start when retention or a snapshot moves it).
//! On an open log, go through [`super::Log::set_hard_state`], which keeps the log's copy in
//! step; [`store`] and [`load`] are for tools and tests.
//!
//! # Layout (little-endian)
//!
//! ```text
//!  0       4       8        12       16
//!  +-------+-------+--------+--------+------------------------------+
//!  | magic | ver   | length | crc32  | HardState (protobuf, length) |
//!  | RLHS  | u32   | u32    | u32    |                              |
//!  +-------+-------+--------+--------+------------------------------+
//! ```
//!
//! The CRC covers the protobuf bytes. The file is written to `hard_state.tmp`, fsynced,
//! renamed over `hard_state`, and the directory is fsynced, so a crash leaves either the old
//! or the new content, never a mix; a stray `hard_state.tmp` is ignored.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use prost::Message;

use super::error::StorageError;
use crate::proto::HardState;

/// File name of the hard state inside a partition directory.
pub const HARD_STATE_FILE: &str = "hard_state";
const TEMP_FILE: &str = "hard_state.tmp";
const MAGIC: &[u8; 4] = b"RLHS";
const VERSION: u32 = 1;
const HEADER_BYTES: usize = 16;
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

/// Encodes `state` into the file format.
pub fn encode(state: &HardState) -> Vec<u8> {
    let body = state.encode_to_vec();
    let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Decodes the file format; the error says what check failed.
pub fn decode(bytes: &[u8]) -> Result<HardState, String> {
    if bytes.len() < HEADER_BYTES {
        return Err(format!(
            "{} bytes, shorter than the {HEADER_BYTES}-byte header",
            bytes.len()
        ));
    }
    if &bytes[0..4] != MAGIC {
        return Err("bad magic".to_string());
    }
    let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    if word(4) != VERSION {
        return Err(format!("unknown version {}", word(4)));
    }
    let length = word(8) as usize;
    if length > BODY_BYTES_MAX || bytes.len() != HEADER_BYTES + length {
        return Err(format!(
            "length {length} does not match file size {}",
            bytes.len()
        ));
    }
    let body = &bytes[HEADER_BYTES..];
    if crc32fast::hash(body) != word(12) {
        return Err("CRC mismatch".to_string());
    }
    let state = HardState::decode(body).map_err(|e| format!("protobuf: {e}"))?;
    if state.log_start_index == 0 {
        return Err("log_start_index is 0 (indexes start at 1)".to_string());
    }
    Ok(state)
}

/// Loads the hard state of `dir`: the default when the file is missing, an error when it is
/// damaged (a node must not forget its vote silently).
///
/// # Errors
/// `HardStateCorrupt` for a damaged file, `Io` when it cannot be read.
pub fn load(dir: &Path) -> Result<HardState, StorageError> {
    let path = dir.join(HARD_STATE_FILE);
    match fs::read(&path) {
        Ok(bytes) => {
            decode(&bytes).map_err(|reason| StorageError::HardStateCorrupt { path, reason })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(default_hard_state()),
        Err(e) => Err(StorageError::io("read hard state", &path, e)),
    }
}

/// Replaces the hard state of `dir` atomically and durably (see the module doc).
///
/// # Errors
/// `StorageFull` when the temp file cannot be written for lack of space, `Io` otherwise.
pub fn store(dir: &Path, state: &HardState) -> Result<(), StorageError> {
    assert!(state.log_start_index >= 1, "log_start_index starts at 1");
    let temp = dir.join(TEMP_FILE);
    let bytes = encode(state);
    let mut file =
        File::create(&temp).map_err(|e| StorageError::io("create hard state temp", &temp, e))?;
    file.write_all(&bytes)
        .map_err(|e| StorageError::reserve(&temp, bytes.len() as u64, e))?;
    file.sync_all()
        .map_err(|e| StorageError::io("fsync hard state temp", &temp, e))?;
    drop(file);
    let path = dir.join(HARD_STATE_FILE);
    fs::rename(&temp, &path).map_err(|e| StorageError::io("rename hard state", &path, e))?;
    sync_dir(dir)
}

/// Replaces the small file `path` with `bytes` atomically and durably (temp file, fsync,
/// rename, fsync of the directory), like the hard state.
///
/// # Errors
/// `Io` or `StorageFull`.
pub fn write_file_durably(path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    let temp = path.with_extension("tmp");
    let mut file = File::create(&temp).map_err(|e| StorageError::io("create", &temp, e))?;
    file.write_all(bytes)
        .map_err(|e| StorageError::reserve(&temp, bytes.len() as u64, e))?;
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

    #[test]
    fn missing_is_default() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), default_hard_state());
    }

    #[test]
    fn round_trip_replaces() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path(), &default_hard_state()).unwrap();
        store(dir.path(), &state()).unwrap();
        assert_eq!(load(dir.path()).unwrap(), state());
        assert!(!dir.path().join(TEMP_FILE).exists());
    }

    #[test]
    fn corrupt_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path(), &state()).unwrap();
        let path = dir.path().join(HARD_STATE_FILE);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x10;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            load(dir.path()),
            Err(StorageError::HardStateCorrupt { .. })
        ));
        fs::write(&path, &bytes[..5]).unwrap();
        assert!(matches!(
            load(dir.path()),
            Err(StorageError::HardStateCorrupt { .. })
        ));
    }

    #[test]
    fn stray_temp_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path(), &state()).unwrap();
        fs::write(dir.path().join(TEMP_FILE), b"half written").unwrap();
        assert_eq!(load(dir.path()).unwrap(), state());
    }
}
