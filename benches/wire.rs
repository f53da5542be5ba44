//! Frame codec throughput: encoding and decoding produce envelopes of typical batch sizes.

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use raftlog::proto::envelope::Body;
use raftlog::proto::{Envelope, ProduceRequest};
use raftlog::wire::{decode_envelope, decode_frame, encode_frame, FRAME_BYTES_MAX_DEFAULT};

fn produce(batch_bytes: usize) -> Envelope {
    Envelope {
        correlation_id: 1,
        body: Some(Body::Produce(ProduceRequest {
            topic: "bench".into(),
            partition: 0,
            acks: 1,
            batch: Bytes::from(vec![7u8; batch_bytes]),
            timeout_ms: 30_000,
        })),
    }
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame");
    for batch_bytes in [1024usize, 64 * 1024, 1024 * 1024] {
        let envelope = produce(batch_bytes);
        group.throughput(Throughput::Bytes(batch_bytes as u64));
        group.bench_with_input(
            BenchmarkId::new("encode", batch_bytes),
            &envelope,
            |b, envelope| {
                let mut buf = BytesMut::with_capacity(batch_bytes + 64);
                b.iter(|| {
                    buf.clear();
                    encode_frame(envelope, &mut buf, FRAME_BYTES_MAX_DEFAULT).unwrap();
                })
            },
        );
        let mut encoded = BytesMut::new();
        encode_frame(&envelope, &mut encoded, FRAME_BYTES_MAX_DEFAULT).unwrap();
        let encoded = encoded.freeze();
        group.bench_with_input(
            BenchmarkId::new("decode", batch_bytes),
            &encoded,
            |b, encoded| {
                b.iter(|| {
                    let mut buf = BytesMut::from(&encoded[..]);
                    let frame = decode_frame(&mut buf, FRAME_BYTES_MAX_DEFAULT)
                        .unwrap()
                        .unwrap();
                    decode_envelope(frame).unwrap()
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
