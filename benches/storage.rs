//! Storage throughput: appends with a sync per batch against a raw `write` + `fdatasync`
//! baseline that writes the same bytes at the same batch size, then sequential reads.
//!
//! First the CPU-bound micro parts under criterion (frame encode and check), then the
//! fsync-bound runs timed by hand: criterion's many-iterations model does not fit a
//! measurement whose unit is a whole file of synced batches.
//!
//! Run with `cargo bench --bench storage`. Files go to `RAFTLOG_BENCH_DIR` if set, else the
//! system temp directory unless it is a tmpfs (where fdatasync costs nothing and the
//! comparison would be meaningless), else `/var/tmp`. The last line printed is the ratio the
//! acceptance criterion names.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput};
use raftlog::proto::{Entry, EntryKind};
use raftlog::storage::frame;
use raftlog::storage::{Log, LogConfig};

const MIB: usize = 1 << 20;
/// Bytes of frames written per measured run, by batch size: enough syncs to average out
/// the disk's jitter, few enough that the whole bench takes a minute or two.
const RUN_BYTES_SMALL_BATCH: usize = 24 * MIB;
const RUN_BYTES_LARGE_BATCH: usize = 96 * MIB;
/// Runs per configuration, each a storage run and a raw run back to back. The machine is
/// shared, so the ratio reported is the median of the per-pair ratios (both halves of a
/// pair see about the same load), and the throughputs are medians too.
const RUNS: usize = 5;

fn bench_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("RAFTLOG_BENCH_DIR") {
        return PathBuf::from(dir);
    }
    let temp = std::env::temp_dir();
    if !is_tmpfs(&temp) {
        return temp;
    }
    PathBuf::from("/var/tmp")
}

fn is_tmpfs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs fills the zeroed struct we pass; the path is a valid C string.
    unsafe {
        let mut stat: libc::statfs = std::mem::zeroed();
        libc::statfs(c_path.as_ptr(), &mut stat) == 0 && stat.f_type == libc::TMPFS_MAGIC
    }
}

/// One batch of `batch_bytes` of frames of `payload_bytes` each, continuing at `index`.
fn batch(payload: &Bytes, index: &mut u64, offset: &mut u64, batch_bytes: usize) -> Vec<Entry> {
    let count = (batch_bytes / frame::frame_bytes(payload.len())).max(1);
    (0..count)
        .map(|_| {
            let entry = Entry {
                term: 1,
                index: *index,
                kind: EntryKind::Data as i32,
                base_offset: *offset,
                record_count: 1,
                timestamp_ms: 0,
                payload: payload.clone(),
            };
            *index += 1;
            *offset += 1;
            entry
        })
        .collect()
}

fn storage_append(
    dir: &Path,
    payload_bytes: usize,
    batch_bytes: usize,
    run_bytes: usize,
) -> Duration {
    let _ = std::fs::remove_dir_all(dir);
    let (mut log, _) = Log::open(dir, LogConfig::default()).expect("open log");
    let payload = Bytes::from(vec![0xA5u8; payload_bytes]);
    let (mut index, mut offset) = (1, 0);
    let batches: Vec<Vec<Entry>> = (0..run_bytes / batch_bytes)
        .map(|_| batch(&payload, &mut index, &mut offset, batch_bytes))
        .collect();
    let started = Instant::now();
    for entries in &batches {
        log.append(entries).expect("append");
        log.sync().expect("sync");
    }
    let elapsed = started.elapsed();
    drop(log);
    elapsed
}

fn raw_append(dir: &Path, payload_bytes: usize, batch_bytes: usize, run_bytes: usize) -> Duration {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("create dir");
    let payload = Bytes::from(vec![0xA5u8; payload_bytes]);
    let (mut index, mut offset) = (1, 0);
    let encoded: Vec<Vec<u8>> = (0..run_bytes / batch_bytes)
        .map(|_| {
            let entries = batch(&payload, &mut index, &mut offset, batch_bytes);
            entries.iter().flat_map(frame::encode_frame).collect()
        })
        .collect();
    let mut file: File = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(dir.join("raw.log"))
        .expect("create raw file");
    let started = Instant::now();
    for bytes in &encoded {
        file.write_all(bytes).expect("write");
        file.sync_data().expect("fdatasync");
    }
    started.elapsed()
}

fn sequential_read(dir: &Path, payload_bytes: usize, run_bytes: usize) -> (Duration, usize) {
    storage_append(dir, payload_bytes, MIB, run_bytes);
    let (log, _) = Log::open(dir, LogConfig::default()).expect("reopen log");
    let started = Instant::now();
    let mut next = log.first_index();
    let mut bytes = 0;
    while next <= log.last_index() {
        let entries = log
            .entries(next, log.last_index() + 1, MIB as u64)
            .expect("read");
        next += entries.len() as u64;
        bytes += entries
            .iter()
            .map(|e| frame::frame_bytes(e.payload.len()))
            .sum::<usize>();
    }
    (started.elapsed(), bytes)
}

fn median(mut runs: Vec<Duration>) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
}

fn mib_per_s(bytes: usize, elapsed: Duration) -> f64 {
    bytes as f64 / MIB as f64 / elapsed.as_secs_f64()
}

/// Frame encode (header + CRC) and frame check (CRC) of a 1 KiB entry.
fn micro(criterion: &mut Criterion) {
    let entry = Entry {
        term: 1,
        index: 1,
        kind: EntryKind::Data as i32,
        base_offset: 0,
        record_count: 1,
        timestamp_ms: 0,
        payload: Bytes::from(vec![0x5Au8; 1024]),
    };
    let encoded = frame::encode_frame(&entry);
    let mut group = criterion.benchmark_group("frame");
    group.throughput(Throughput::Bytes(encoded.len() as u64));
    group.bench_function("encode_header 1 KiB", |b| {
        b.iter(|| frame::encode_header(std::hint::black_box(&entry)))
    });
    group.bench_function("decode+verify 1 KiB", |b| {
        b.iter(|| frame::decode(std::hint::black_box(&encoded)))
    });
    group.finish();
}

fn main() {
    let mut criterion = Criterion::default()
        .configure_from_args()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    micro(&mut criterion);
    criterion.final_summary();
    let root = bench_dir().join(format!("raftlog-storage-bench-{}", std::process::id()));
    println!(
        "storage bench in {} (tmpfs: {})",
        root.display(),
        is_tmpfs(&bench_dir())
    );
    let mut ratio = None;
    for payload_bytes in [100, 1024, 16 * 1024] {
        for batch_bytes in [64 * 1024, MIB] {
            let run_bytes = if batch_bytes == MIB {
                RUN_BYTES_LARGE_BATCH
            } else {
                RUN_BYTES_SMALL_BATCH
            };
            let (mut storage, mut raw) = (Vec::new(), Vec::new());
            for _ in 0..RUNS {
                storage.push(storage_append(
                    &root.join("log"),
                    payload_bytes,
                    batch_bytes,
                    run_bytes,
                ));
                raw.push(raw_append(
                    &root.join("raw"),
                    payload_bytes,
                    batch_bytes,
                    run_bytes,
                ));
            }
            let written = (run_bytes / batch_bytes)
                * (batch_bytes / frame::frame_bytes(payload_bytes)).max(1)
                * frame::frame_bytes(payload_bytes);
            let mut ratios: Vec<f64> = raw
                .iter()
                .zip(&storage)
                .map(|(raw, storage)| raw.as_secs_f64() / storage.as_secs_f64())
                .collect();
            ratios.sort_by(f64::total_cmp);
            let r = ratios[ratios.len() / 2];
            let (storage, raw) = (median(storage), median(raw));
            println!(
                "append {payload_bytes:>6} B entries, {:>5} KiB batches, sync per batch: storage {:>7.1} MiB/s, raw write+fdatasync {:>7.1} MiB/s, ratio {r:.2}",
                batch_bytes / 1024,
                mib_per_s(written, storage),
                mib_per_s(written, raw),
            );
            if payload_bytes == 1024 && batch_bytes == MIB {
                ratio = Some(r);
            }
        }
    }
    for payload_bytes in [100, 1024, 16 * 1024] {
        let (elapsed, bytes) =
            sequential_read(&root.join("read"), payload_bytes, RUN_BYTES_LARGE_BATCH);
        println!(
            "sequential read {payload_bytes:>6} B entries, 1 MiB budget per call: {:>8.1} MiB/s",
            mib_per_s(bytes, elapsed)
        );
    }
    let _ = std::fs::remove_dir_all(&root);
    println!(
        "storage append+sync vs raw write+fdatasync (1 KiB entries, 1 MiB batches): ratio {:.2}",
        ratio.expect("the 1 KiB / 1 MiB configuration ran")
    );
}
