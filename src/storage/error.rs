//! `StorageError`: everything the storage engine reports instead of an answer.
//!
//! Owns the error type and its IO-context helper; it does not decide what the replica does
//! with an error (retry, step down, refuse to vote): that is the replica driver's job.

use std::io;
use std::path::{Path, PathBuf};

/// An error from the storage engine. Programmer errors (non-contiguous appends, truncating
/// below the commit point) are assertions, not variants.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// An operating-system call failed; `op` names what we were doing and `path` where.
    #[error("{op} {path}: {source}")]
    Io {
        /// What we were doing, for example "fdatasync" or "open segment".
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The file system has no room to reserve a new segment (or the hard state file).
    /// Nothing was written; what was appended before stays readable.
    #[error("storage full: cannot reserve {bytes} bytes for {path}")]
    StorageFull {
        /// The file that could not be reserved.
        path: PathBuf,
        /// How many bytes were asked for.
        bytes: u64,
    },
    /// Stored bytes failed a check (CRC, length, index sequence) where they must be intact:
    /// inside a sealed segment at open, or on any read. The partition must not serve or vote.
    #[error("corrupt log {path} at byte {position}: {reason}")]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Byte position of the first bad frame inside `path`.
        position: u64,
        /// What check failed.
        reason: String,
    },
    /// The segment files do not form one contiguous run of Raft indexes.
    #[error("segment sequence broken between {previous} and {next}: {reason}")]
    SegmentSequence {
        /// The earlier segment file.
        previous: PathBuf,
        /// The later segment file, whose first index does not follow `previous`.
        next: PathBuf,
        /// Gap or overlap, with the indexes involved.
        reason: String,
    },
    /// The hard state file exists but fails its CRC or cannot be decoded.
    #[error("corrupt hard state {path}: {reason}")]
    HardStateCorrupt {
        /// The hard state file.
        path: PathBuf,
        /// What check failed.
        reason: String,
    },
    /// A read asked for Raft indexes before the log start: they were compacted away, so the
    /// reader needs a snapshot (InstallSnapshot) instead.
    #[error("index {index} is before the log start {first_index}")]
    Compacted {
        /// The index asked for.
        index: u64,
        /// The first index still in the log.
        first_index: u64,
    },
    /// A read by record offset asked for an offset outside `[log_start_offset, next_offset]`.
    #[error("offset {offset} outside [{start_offset}, {next_offset}]")]
    OffsetOutOfRange {
        /// The offset asked for.
        offset: u64,
        /// The first offset still in the log.
        start_offset: u64,
        /// The offset after the last record.
        next_offset: u64,
    },
    /// An entry cannot be stored: too large for a segment, or of an unknown kind.
    #[error("entry {index} cannot be stored: {reason}")]
    InvalidEntry {
        /// The entry's Raft index.
        index: u64,
        /// Why it was refused.
        reason: String,
    },
    /// A `LogConfig` value is outside its documented range.
    #[error("invalid storage config: {0}")]
    InvalidConfig(String),
}

impl StorageError {
    /// Whether the file system ran out of room (`StorageFull`, or an IO error that is ENOSPC
    /// or EDQUOT): the operation failed before changing what the log holds, and retrying once
    /// space is freed can succeed. Every other error leaves the log's state unknown.
    pub fn is_full(&self) -> bool {
        match self {
            StorageError::StorageFull { .. } => true,
            StorageError::Io { source, .. } => {
                matches!(
                    source.raw_os_error(),
                    Some(libc::ENOSPC) | Some(libc::EDQUOT)
                )
            }
            _ => false,
        }
    }

    /// Wraps an IO error with the operation and path, turning "no space left" into
    /// [`StorageError::StorageFull`] when `bytes` were being reserved.
    pub(crate) fn io(op: &'static str, path: &Path, source: io::Error) -> StorageError {
        StorageError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    /// Like [`StorageError::io`], but ENOSPC and EDQUOT become `StorageFull`.
    pub(crate) fn reserve(path: &Path, bytes: u64, source: io::Error) -> StorageError {
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => StorageError::StorageFull {
                path: path.to_path_buf(),
                bytes,
            },
            _ => StorageError::io("fallocate", path, source),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_becomes_storage_full() {
        let error = StorageError::reserve(
            Path::new("x.log"),
            10,
            io::Error::from_raw_os_error(libc::ENOSPC),
        );
        assert!(matches!(error, StorageError::StorageFull { bytes: 10, .. }));
        assert!(error.is_full());
        let index_write = StorageError::io(
            "write index",
            Path::new("x.index"),
            io::Error::from_raw_os_error(libc::ENOSPC),
        );
        assert!(index_write.is_full());
        let error = StorageError::reserve(
            Path::new("x.log"),
            10,
            io::Error::from_raw_os_error(libc::EIO),
        );
        assert!(matches!(
            error,
            StorageError::Io {
                op: "fallocate",
                ..
            }
        ));
        assert!(!error.is_full());
    }

    #[test]
    fn io_error_names_path_and_operation() {
        let error = StorageError::io(
            "open segment",
            Path::new("/d/1.log"),
            io::Error::from_raw_os_error(libc::EACCES),
        );
        let text = error.to_string();
        assert!(
            text.contains("open segment") && text.contains("/d/1.log"),
            "{text}"
        );
    }
}
