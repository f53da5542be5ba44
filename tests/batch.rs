//! Black-box tests of the record batch format: what producers build, the server validates and
//! consumers decode; and that no input, however mangled, panics the server's check.

use bytes::Bytes;
use proptest::prelude::*;
use raftlog::batch::{decode_records, validate, BatchError, RecordBatchBuilder};
use raftlog::proto::ErrorCode;

const BATCH_BYTES_MAX: usize = 1 << 20;

fn proptest_cases() -> u32 {
    std::env::var("RAFTLOG_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

/// (timestamp, key, value, headers) as a producer would push them.
type Input = (i64, Option<Vec<u8>>, Vec<u8>, Vec<(String, Vec<u8>)>);

fn input() -> impl Strategy<Value = Input> {
    (
        -1_000_000i64..1_000_000,
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)),
        proptest::collection::vec(any::<u8>(), 0..64),
        proptest::collection::vec(
            ("[a-z]{0,6}", proptest::collection::vec(any::<u8>(), 0..8)),
            0..3,
        ),
    )
}

fn build(inputs: &[Input]) -> Bytes {
    let mut builder = RecordBatchBuilder::new(BATCH_BYTES_MAX).with_producer(11, 3, 40);
    for (timestamp_ms, key, value, headers) in inputs {
        let headers: Vec<(&str, &[u8])> = headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_slice()))
            .collect();
        builder
            .push(
                1_700_000_000_000 + timestamp_ms,
                key.as_deref(),
                value,
                &headers,
            )
            .unwrap();
    }
    builder.finish()
}

/// Validating must never panic; when it accepts, decoding yields exactly the claimed records.
fn check_never_panics(bytes: &Bytes) {
    if let Ok(validated) = validate(bytes, BATCH_BYTES_MAX) {
        let decoded: Result<Vec<_>, BatchError> = decode_records(validated.batch()).collect();
        assert_eq!(decoded.unwrap().len(), validated.record_count() as usize);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(proptest_cases()))]

    #[test]
    fn arbitrary_bytes_never_panic_validate(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        check_never_panics(&Bytes::from(bytes));
    }

    #[test]
    fn damaged_batches_never_panic_and_decode_consistently(
        inputs in proptest::collection::vec(input(), 1..8),
        position in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let mut bytes = build(&inputs).to_vec();
        let position = position.index(bytes.len());
        bytes[position] ^= flip;
        let bytes = Bytes::from(bytes);
        check_never_panics(&bytes);
    }

    #[test]
    fn built_batches_round_trip(inputs in proptest::collection::vec(input(), 1..16)) {
        let bytes = build(&inputs);
        let validated = validate(&bytes, BATCH_BYTES_MAX).unwrap();
        prop_assert_eq!(validated.record_count() as usize, inputs.len());
        prop_assert_eq!((validated.producer_id(), validated.producer_epoch(), validated.base_sequence()), (11, 3, 40));
        let records: Vec<_> = decode_records(validated.batch()).collect::<Result<_, _>>().unwrap();
        for (record, (timestamp_ms, key, value, headers)) in records.iter().zip(&inputs) {
            prop_assert_eq!(record.timestamp_ms, 1_700_000_000_000 + timestamp_ms);
            prop_assert_eq!(record.key.as_deref(), key.as_deref());
            prop_assert_eq!(&record.value[..], &value[..]);
            let got: Vec<(String, Vec<u8>)> =
                record.headers.iter().map(|h| (h.key.clone(), h.value.to_vec())).collect();
            prop_assert_eq!(&got, headers);
        }
        let max = inputs.iter().map(|i| 1_700_000_000_000 + i.0).max().unwrap();
        prop_assert_eq!(validated.max_timestamp_ms(), max);
    }
}

#[test]
fn a_flipped_bit_in_the_records_is_a_crc_mismatch() {
    let inputs: Vec<Input> = (0..10)
        .map(|i| (i, Some(vec![i as u8]), vec![7; 100], vec![]))
        .collect();
    let bytes = build(&inputs);
    let mut damaged = bytes.to_vec();
    let last = damaged.len() - 1;
    damaged[last] ^= 0x01; // the last byte belongs to the last record's value
    let err = validate(&Bytes::from(damaged), BATCH_BYTES_MAX).unwrap_err();
    assert!(matches!(err, BatchError::CrcMismatch { .. }), "{err}");
    assert_eq!(err.code(), ErrorCode::CorruptBatch);
}

#[test]
fn the_server_stores_exactly_the_bytes_it_validated() {
    let inputs: Vec<Input> = (0..3)
        .map(|i| (i, None, vec![i as u8; 10], vec![]))
        .collect();
    let bytes = build(&inputs);
    let validated = validate(&bytes, BATCH_BYTES_MAX).unwrap();
    // The records field is a slice of the received buffer: zero-copy validation.
    let records = &validated.batch().records;
    let start = records.as_ptr() as usize - bytes.as_ptr() as usize;
    assert_eq!(&bytes[start..start + records.len()], &records[..]);
}
