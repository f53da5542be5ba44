//! The membership file: every configuration a partition replica must remember across a
//! restart (a `MembershipState`, see `proto/raftlog.proto`).
//!
//! Owns the `membership` file of a partition directory and its format; it does not decide
//! what the configurations mean or when they are written (the replica persists what the
//! consensus core hands it, before the entries those configurations name).
//!
//! # Layout (little-endian)
//!
//! ```text
//!  0       4       8        12       16
//!  +-------+-------+--------+--------+-----------------------------------+
//!  | magic | ver   | length | crc32  | MembershipState (protobuf, length) |
//!  | RLMS  | u32=1 | u32    | u32    |                                   |
//!  +-------+-------+--------+--------+-----------------------------------+
//! ```
//!
//! The CRC covers bytes 0..12 and the protobuf bytes. The file is replaced whole (temp file,
//! fsync, rename, directory fsync), so a crash leaves the old or the new version, and a
//! leftover `membership.tmp` is deleted at open like every `*.tmp`. Configuration changes
//! are rare, so the new blocks a replacement needs are no concern; on a full disk the write
//! fails with `StorageFull` and the replica stalls as for any other write.
//!
//! A file that fails its checks is refused: a replica that forgot a configuration could
//! count the wrong members toward a quorum.

use std::fs;
use std::path::Path;

use prost::Message;

use super::error::StorageError;
use super::hard_state::write_file_durably;
use crate::proto::MembershipState;

/// File name of the membership record inside a partition directory.
pub const MEMBERSHIP_FILE: &str = "membership";
const MAGIC: &[u8; 4] = b"RLMS";
const VERSION: u32 = 1;
const HEADER_BYTES: usize = 16;
/// Far above any real record (a few configurations of a few members each); a length above
/// it is damage, not a configuration.
const BODY_BYTES_MAX: usize = 1 << 20;

/// Encodes `state` as the file's bytes.
pub fn encode(state: &MembershipState) -> Vec<u8> {
    let body = state.encode_to_vec();
    let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    let crc = crc(&out, &body);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&body);
    out
}

fn crc(header: &[u8], body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[..12]);
    hasher.update(body);
    hasher.finalize()
}

/// Decodes the file's bytes; the error says what check failed.
pub fn decode(bytes: &[u8]) -> Result<MembershipState, String> {
    if bytes.len() < HEADER_BYTES {
        return Err(format!("{} bytes, shorter than the header", bytes.len()));
    }
    if &bytes[0..4] != MAGIC {
        return Err("bad magic".to_owned());
    }
    let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    if word(4) != VERSION {
        return Err(format!("unknown version {}", word(4)));
    }
    let length = word(8) as usize;
    if length > BODY_BYTES_MAX || HEADER_BYTES + length != bytes.len() {
        return Err(format!(
            "length {length} does not match the file's {} bytes",
            bytes.len()
        ));
    }
    let body = &bytes[HEADER_BYTES..];
    if crc(bytes, body) != word(12) {
        return Err("CRC mismatch".to_owned());
    }
    MembershipState::decode(body).map_err(|e| format!("undecodable: {e}"))
}

/// Reads the record of partition directory `dir`: `None` when it has never been written.
///
/// # Errors
/// `Io` when the file cannot be read, `Corrupt` when it fails its checks.
pub fn load(dir: &Path) -> Result<Option<MembershipState>, StorageError> {
    let path = dir.join(MEMBERSHIP_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(StorageError::io("read membership", &path, error)),
    };
    decode(&bytes)
        .map(Some)
        .map_err(|reason| StorageError::Corrupt {
            path,
            position: 0,
            reason,
        })
}

/// Replaces the record of partition directory `dir`, durably before it returns.
///
/// # Errors
/// `Io`, or `StorageFull` when the disk has no room for the new version.
pub fn store(dir: &Path, state: &MembershipState) -> Result<(), StorageError> {
    write_file_durably(&dir.join(MEMBERSHIP_FILE), &encode(state))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{GroupConfig, LoggedConfig};

    fn state() -> MembershipState {
        MembershipState {
            at_log_start: Some(GroupConfig {
                voters: vec![1, 2, 3],
                ..Default::default()
            }),
            logged: vec![LoggedConfig {
                index: 7,
                term: 2,
                config: Some(GroupConfig {
                    voters: vec![1, 2, 3],
                    learners: vec![4],
                    ..Default::default()
                }),
            }],
        }
    }

    #[test]
    fn a_stored_record_reads_back_and_a_missing_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        store(dir.path(), &state()).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(state()));
        let mut later = state();
        later.logged.clear();
        store(dir.path(), &later).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(later));
    }

    #[test]
    fn every_damaged_byte_is_refused() {
        let bytes = encode(&state());
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x40;
            assert!(decode(&damaged).is_err(), "byte {at} flipped was accepted");
        }
        assert!(decode(&bytes[..bytes.len() - 1]).is_err(), "a cut file");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MEMBERSHIP_FILE), b"RLMS garbage").unwrap();
        assert!(matches!(
            load(dir.path()),
            Err(StorageError::Corrupt { .. })
        ));
    }
}
