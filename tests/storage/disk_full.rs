//! A full disk is a typed `StorageFull` at segment preallocation, never a SIGBUS, and what
//! must still work on a completely full disk (hard state updates, retention) does: tested on
//! a small tmpfs that the test mounts itself (as root; skipped with a reason otherwise).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::support::{all, assert_entries, config, segment_paths, Gen};
use raftlog::storage::{hard_state, Log, StorageError};

/// Held for the life of each `SmallFs`: a `mount`/`umount` child spawned by one test holds
/// copies of every open descriptor of the process until it execs, so a segment another test
/// just deleted would not free its space in time for that test's free-space check.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A mounted size-limited tmpfs, unmounted on drop (also when the test fails).
struct SmallFs {
    dir: tempfile::TempDir,
    _alone: std::sync::MutexGuard<'static, ()>,
}

impl SmallFs {
    fn mount(size: &str) -> Result<SmallFs, String> {
        let alone = ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
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
        Ok(SmallFs { dir, _alone: alone })
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

/// Bytes free for new data on the file system holding `dir`.
fn free_bytes(dir: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
    // SAFETY: `path` is a valid C string and `stat` a plain struct the call fills in.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut stat) }, 0);
    stat.f_bavail as u64 * stat.f_frsize as u64
}

/// Checks that not even one block can be written on the file system holding `dir`.
fn assert_completely_full(dir: &Path) {
    assert_eq!(free_bytes(dir), 0, "the file system still has room");
    let probe = dir.join("probe");
    assert!(std::fs::write(&probe, [7u8; 4096]).is_err());
    let _ = std::fs::remove_file(&probe);
}

/// First index of each segment file of `dir`, oldest first.
fn segment_starts(dir: &Path) -> Vec<u64> {
    segment_paths(dir)
        .iter()
        .map(|p| {
            let name = p.file_stem().unwrap().to_str().unwrap();
            name.parse().unwrap()
        })
        .collect()
}

#[test]
fn full_disk_does_not_stop_hard_state_writes() {
    let Some(fs) = small_fs("1m") else { return };
    let (mut log, written, _) = fill(&fs.path());
    log.set_hard_state(3, 1).unwrap();
    take_the_rest(fs.dir.path());
    assert_completely_full(fs.dir.path());
    // Updated in place: no new blocks needed.
    log.set_hard_state(4, 2).unwrap();
    assert_eq!(
        (log.hard_state().current_term, log.hard_state().voted_for),
        (4, 2)
    );
    drop(log);
    let (log, _) = Log::open(fs.path(), config(256 * 1024)).unwrap();
    assert_eq!(
        (log.hard_state().current_term, log.hard_state().voted_for),
        (4, 2)
    );
    assert_entries(&all(&log), &written);
}

#[test]
fn retention_frees_a_completely_full_disk() {
    let Some(fs) = small_fs("1m") else { return };
    let (mut log, written, error) = fill(&fs.path());
    assert!(matches!(error, StorageError::StorageFull { .. }), "{error}");
    take_the_rest(fs.dir.path());
    assert_completely_full(fs.dir.path());
    let more = Gen::after(&log).batch(1, 4, 4000);
    assert!(matches!(
        log.append(&more),
        Err(StorageError::StorageFull { .. })
    ));
    let starts = segment_starts(&fs.path());
    assert!(starts.len() >= 3, "{starts:?}");
    let active_start = *starts.last().unwrap();

    // Retention by size, everything committed: every sealed segment goes, the active stays.
    let first = log.apply_retention(0, 1, 0, log.last_index()).unwrap();
    assert_eq!(first, active_start);
    assert_eq!(log.first_index(), active_start);
    assert_eq!(log.segment_count(), 1);
    assert_eq!(segment_starts(&fs.path()), vec![active_start]);
    assert_eq!(
        hard_state::load(&fs.path()).unwrap().log_start_index,
        active_start,
        "the new log start is durable"
    );
    let sealed_bytes = (starts.len() as u64 - 1) * 256 * 1024;
    assert!(
        free_bytes(fs.dir.path()) >= sealed_bytes,
        "{} bytes free after removing {sealed_bytes} bytes of segments",
        free_bytes(fs.dir.path())
    );
    let kept = (active_start - 1) as usize;
    assert_entries(&all(&log), &written[kept..]);

    // The freed space takes new segments again (the full active segment rolls first).
    let more = Gen::after(&log).batch(1, 20, 4000);
    log.append(&more).unwrap();
    assert!(log.segment_count() >= 2);
    let mut expected = written[kept..].to_vec();
    expected.extend(more);
    assert_entries(&all(&log), &expected);
    log.close().unwrap();

    let (log, _) = Log::open(fs.path(), config(256 * 1024)).unwrap();
    assert_eq!(log.first_index(), active_start);
    assert_eq!(log.start_offset(), written[kept].base_offset);
    assert_eq!(log.term_at(active_start - 1), Some(written[kept - 1].term));
    assert_entries(&all(&log), &expected);
}

#[test]
fn truncate_suffix_that_cannot_copy_leaves_a_consistent_log_and_retries() {
    let Some(fs) = small_fs("1m") else { return };
    let (mut log, written, _) = fill(&fs.path());
    let starts = segment_starts(&fs.path());
    assert!(starts.len() >= 3, "{starts:?}");
    let (cut_segment, last_segment) = (starts[starts.len() - 2], starts[starts.len() - 1]);
    let from_index = cut_segment + 5;
    // A reader holds bytes of the segment to cut, so the cut must copy the kept prefix to a
    // new file; another holds the segment after it, so deleting that one frees nothing (its
    // mapping stays alive).
    let held = log.entries(cut_segment, last_segment, u64::MAX).unwrap();
    let held_expected = written[(cut_segment - 1) as usize..(last_segment - 1) as usize].to_vec();
    let held_last = log.entries(last_segment, last_segment + 1, 0).unwrap();
    take_the_rest(fs.dir.path());
    assert_completely_full(fs.dir.path());

    let error = log.truncate_suffix(from_index, 0).unwrap_err();
    assert!(matches!(error, StorageError::StorageFull { .. }), "{error}");
    // Part done (the later segment is gone), but consistent: the cut segment is active,
    // complete and readable, nothing is claimed durable past the cut, no copy is left over.
    assert_eq!(log.segment_count(), starts.len() - 1);
    assert_eq!(
        segment_starts(&fs.path()),
        starts[..starts.len() - 1].to_vec()
    );
    assert_eq!(log.last_index(), last_segment - 1);
    assert!(log.durable_index() < from_index);
    assert_entries(&all(&log), &written[..(last_segment - 1) as usize]);
    assert!(std::fs::read_dir(fs.path()).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".tmp")));
    assert_entries(&held, &held_expected);

    // Freeing space (the filler, and the deleted segment once its reader is done) lets the
    // same call finish; the reader of the cut segment still sees what it read.
    assert_entries(
        &held_last,
        &written[(last_segment - 1) as usize..last_segment as usize],
    );
    drop(held_last);
    std::fs::remove_file(fs.dir.path().join("filler")).unwrap();
    log.truncate_suffix(from_index, 0).unwrap();
    assert_eq!(log.last_index(), from_index - 1);
    assert_eq!(log.durable_index(), from_index - 1);
    let kept = &written[..(from_index - 1) as usize];
    assert_entries(&all(&log), kept);
    assert_entries(&held, &held_expected);

    // Appends continue at the cut, in a new term.
    let more = Gen::after(&log).batch(2, 10, 4000);
    log.append(&more).unwrap();
    let mut expected = kept.to_vec();
    expected.extend(more);
    assert_entries(&all(&log), &expected);
    drop(held);
    log.close().unwrap();
    let (log, _) = Log::open(fs.path(), config(256 * 1024)).unwrap();
    assert_entries(&all(&log), &expected);
}
