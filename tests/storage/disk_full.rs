//! A full disk is a typed `StorageFull` at segment preallocation, never a SIGBUS: tested on
//! a small tmpfs that the test mounts itself (as root; skipped with a reason otherwise).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::support::{all, assert_entries, config, Gen};
use raftlog::storage::{Log, StorageError};

/// A mounted size-limited tmpfs, unmounted on drop (also when the test fails).
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn mount(size: &str) -> Result<SmallFs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "mount refused: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(SmallFs { dir })
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("partition")
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

fn small_fs(size: &str) -> Option<SmallFs> {
    match SmallFs::mount(size) {
        Ok(fs) => Some(fs),
        Err(reason) => {
            println!("SKIPPED disk-full test: {reason}");
            None
        }
    }
}

fn fill(dir: &Path) -> (Log, Vec<raftlog::proto::Entry>, StorageError) {
    let mut log = Log::open(dir, config(256 * 1024)).unwrap().0;
    let mut gen = Gen::after(&log);
    let mut written = Vec::new();
    for _ in 0..1_000 {
        let batch = gen.batch(1, 8, 4000);
        match log.append(&batch) {
            Ok(()) => written.extend(batch),
            Err(error) => {
                let appended = (log.last_index() - written.len() as u64) as usize;
                written.extend(batch.into_iter().take(appended));
                return (log, written, error);
            }
        }
    }
    panic!("a 1 MiB file system never filled up");
}

#[test]
fn full_disk_is_storage_full_at_segment_roll() {
    let Some(fs) = small_fs("1m") else { return };
    let (mut log, written, error) = fill(&fs.path());
    assert!(matches!(error, StorageError::StorageFull { .. }), "{error}");
    // Everything appended before the failed roll is intact, readable and durable.
    assert_entries(&all(&log), &written);
    assert_eq!(log.sync().unwrap(), log.last_index());
    // Appends keep failing cleanly, and the log reopens after freeing space.
    let more = Gen::after(&log).batch(1, 100, 4000);
    assert!(matches!(
        log.append(&more),
        Err(StorageError::StorageFull { .. })
    ));
    drop(log);
    let (log, _) = Log::open(fs.path(), config(256 * 1024)).unwrap();
    assert_entries(&all(&log), &written);
}

#[test]
fn full_disk_fails_install_snapshot_before_changing_anything() {
    let Some(fs) = small_fs("1m") else { return };
    let (mut log, written, _) = fill(&fs.path());
    let error = log.install_snapshot(10_000, 5, 77).unwrap_err();
    assert!(matches!(error, StorageError::StorageFull { .. }), "{error}");
    assert_entries(&all(&log), &written);
}

/// Takes whatever space is left on the file system holding `dir`.
fn take_the_rest(dir: &Path) {
    use std::io::Write;
    let mut filler = std::fs::File::create(dir.join("filler")).unwrap();
    let chunk = vec![1u8; 4096];
    while filler.write_all(&chunk).is_ok() {}
}

#[test]
fn full_disk_fails_hard_state_writes_without_changing_them() {
    let Some(fs) = small_fs("1m") else { return };
    let (mut log, written, _) = fill(&fs.path());
    log.set_hard_state(3, 1).unwrap();
    take_the_rest(fs.dir.path());
    let error = log.set_hard_state(4, 2).unwrap_err();
    assert!(matches!(error, StorageError::StorageFull { .. }), "{error}");
    assert_eq!(
        (log.hard_state().current_term, log.hard_state().voted_for),
        (3, 1)
    );
    drop(log);
    let (log, _) = Log::open(fs.path(), config(256 * 1024)).unwrap();
    assert_eq!(
        (log.hard_state().current_term, log.hard_state().voted_for),
        (3, 1)
    );
    assert_entries(&all(&log), &written);
}
