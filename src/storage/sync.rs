//! The two-phase sync: prepare on the log's thread, run anywhere, complete on the log's thread.
//!
//! Owns [`SyncJob`] and [`SyncDone`]; it does not decide when to sync (that is the
//! [`super::SyncPolicy`], applied by [`super::Log::poll_sync`]).
//!
//! ```text
//! log thread:      job = log.prepare_sync()          log.append(..) ...      log.complete_sync(done)
//!                         |                                                          ^
//! blocking thread:        '---> done = job.run()  (fdatasync, no borrow of the log) -'
//! ```
//!
//! A job holds clones of the file handles written since the last sync and the last index
//! appended when it was prepared. Appends may continue while it runs: the frames they add
//! are either covered by this sync (harmless) or by the next one. A job prepared before a
//! suffix truncation or a snapshot install is stale (its target may name entries that no
//! longer exist); `complete_sync` recognises it by its epoch and ignores its target.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use super::error::StorageError;

/// A sync to run off the log's thread; `Send`, and borrows nothing from the log.
#[derive(Debug)]
#[must_use = "a prepared sync does nothing until run and completed"]
pub struct SyncJob {
    pub(crate) files: Vec<(Arc<File>, PathBuf)>,
    pub(crate) target_index: u64,
    pub(crate) epoch: u64,
}

/// The outcome of [`SyncJob::run`], to hand back to [`super::Log::complete_sync`].
#[derive(Debug)]
#[must_use = "a finished sync must be completed on the log to advance durable_index"]
pub struct SyncDone {
    pub(crate) target_index: u64,
    pub(crate) epoch: u64,
    pub(crate) result: Result<(), StorageError>,
}

impl SyncJob {
    /// Last index this job makes durable once it succeeds.
    pub fn target_index(&self) -> u64 {
        self.target_index
    }

    /// Runs the sync: `fdatasync` on every file, blocking. Call it on a blocking thread
    /// (for example `tokio::task::spawn_blocking`), never on an async worker.
    pub fn run(self) -> SyncDone {
        let result = self.files.iter().try_for_each(|(file, path)| {
            file.sync_data()
                .map_err(|e| StorageError::io("fdatasync", path, e))
        });
        SyncDone {
            target_index: self.target_index,
            epoch: self.epoch,
            result,
        }
    }
}

impl SyncDone {
    /// Last index the job was asked to make durable.
    pub fn target_index(&self) -> u64 {
        self.target_index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_is_send_and_runs_without_the_log() {
        fn assert_send<T: Send + 'static>() {}
        assert_send::<SyncJob>();
        assert_send::<SyncDone>();
        let file = tempfile::NamedTempFile::new().unwrap();
        let job = SyncJob {
            files: vec![(Arc::new(file.reopen().unwrap()), file.path().to_path_buf())],
            target_index: 9,
            epoch: 0,
        };
        let done = std::thread::spawn(move || job.run()).join().unwrap();
        assert!(done.result.is_ok());
        assert_eq!(done.target_index(), 9);
    }
}
