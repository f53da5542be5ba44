//! The adapter that lends a storage [`Log`] to the consensus core as a [`LogReader`].

use crate::proto::Entry;
use crate::raft::{LogReader, ReadError};
use crate::storage::Log;

/// Read access to a partition's log for the core, for the duration of one call.
pub struct StorageReader<'a> {
    log: &'a Log,
}

impl<'a> StorageReader<'a> {
    /// Wraps `log`.
    pub fn new(log: &'a Log) -> Self {
        StorageReader { log }
    }
}

impl LogReader for StorageReader<'_> {
    fn entries(&self, lo: u64, hi: u64, bytes_max: u64) -> Result<Vec<Entry>, ReadError> {
        if lo < self.log.first_index() {
            return Err(ReadError::Compacted);
        }
        self.log.entries(lo, hi, bytes_max).map_err(|error| {
            // The core retries later; the error itself is reported by the driver's own reads.
            tracing::warn!(lo, hi, %error, "reading entries for replication failed");
            ReadError::Unavailable
        })
    }

    fn term_at(&self, index: u64) -> Result<u64, ReadError> {
        if index + 1 < self.log.first_index() {
            return Err(ReadError::Compacted);
        }
        self.log.term_at(index).ok_or(ReadError::Unavailable)
    }
}
