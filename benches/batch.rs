//! Record batch costs on the produce path: a producer encoding 64 records of 1 KiB, and the
//! server validating the result (CRC plus a walk of every record).

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use raftlog::batch::{validate, RecordBatchBuilder};

const RECORDS: usize = 64;
const VALUE_BYTES: usize = 1024;
const BATCH_BYTES_MAX: usize = 1 << 20;

fn encode(value: &[u8]) -> Bytes {
    let mut builder = RecordBatchBuilder::new(BATCH_BYTES_MAX).with_producer(1, 0, 0);
    for i in 0..RECORDS {
        let key = (i as u64).to_be_bytes();
        builder
            .push(
                1_700_000_000_000 + i as i64,
                Some(&key),
                value,
                &[("source", b"bench")],
            )
            .expect("64 KiB fits in 1 MiB");
    }
    builder.finish()
}

fn batch(c: &mut Criterion) {
    let value = vec![0x5a; VALUE_BYTES];
    let encoded = encode(&value);
    let mut group = c.benchmark_group("batch_64x1KiB");
    group.throughput(Throughput::Bytes(encoded.len() as u64));
    group.bench_function("encode", |b| b.iter(|| encode(&value)));
    group.bench_function("validate", |b| {
        b.iter(|| validate(&encoded, BATCH_BYTES_MAX).expect("valid batch"))
    });
    group.finish();
}

criterion_group!(benches, batch);
criterion_main!(benches);
