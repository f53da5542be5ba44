//! Record batches: how producers encode records, how the server checks them, how consumers read
//! them back.
//!
//! A batch is one prost-encoded [`RecordBatch`]; its `records` field holds the records as
//! length-delimited [`Record`] messages back to back, and `crc` covers exactly those bytes:
//!
//! ```text
//! RecordBatch (protobuf)
//! +-----+--------------+--------------------+-------------+----------------+---------------+
//! | crc | record_count | first_timestamp_ms | producer_id | producer_epoch | base_sequence |
//! +-----+--------------+--------------------+-------------+----------------+---------------+
//! | records: bytes ------------------------------------------------------------------+      |
//! +----------------------------------------------------------------------------------|------+
//!                                                                                    v
//!   +--------+----------------+--------+----------------+-----     +--------+----------------+
//!   | varint | Record 0       | varint | Record 1       | ...      | varint | Record n-1     |
//!   | len 0  | (len 0 bytes)  | len 1  | (len 1 bytes)  |          | len n-1|                |
//!   +--------+----------------+--------+----------------+-----     +--------+----------------+
//!   |<------------------ crc = CRC-32 (crc32fast) of all of this ----------------------->|
//!
//! Record (protobuf): timestamp_delta_ms (sint64, from first_timestamp_ms), optional key,
//! value, repeated RecordHeader { key: string, value: bytes }
//! ```
//!
//! This module owns that format: [`RecordBatchBuilder`] for producers, [`validate`] for the
//! server (which stores the bytes exactly as received), and [`decode_records`] for consumers.
//! It does not own offsets: the leader stamps those on the Raft entry that carries the batch.

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;

use crate::proto::{ErrorCode, Record, RecordBatch, RecordHeader};

/// Protobuf wire type of length-delimited fields (bytes, strings, messages).
const WIRE_TYPE_LEN: u8 = 2;
/// Protobuf wire type of varint fields.
const WIRE_TYPE_VARINT: u8 = 0;

/// Why a batch was refused, or a record could not be added or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The encoded batch is (or would become) larger than the configured maximum.
    #[error("record batch of {bytes} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Size of the batch, in bytes.
        bytes: usize,
        /// The configured maximum, in bytes.
        max: usize,
    },
    /// The batch holds no records; a produce must append at least one.
    #[error("record batch holds no records")]
    Empty,
    /// The bytes are not a protobuf `RecordBatch`.
    #[error("record batch is not a valid RecordBatch: {0}")]
    Malformed(prost::DecodeError),
    /// The CRC stored in the batch does not match its records: they were damaged after the
    /// producer encoded them.
    #[error("record batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch {
        /// The CRC the producer stored.
        stored: u32,
        /// The CRC of the records as received.
        computed: u32,
    },
    /// The batch claims a different number of records than it holds.
    #[error("record batch claims {claimed} records but holds {found}")]
    CountMismatch {
        /// The batch's `record_count`.
        claimed: u32,
        /// Records actually found in `records`.
        found: u64,
    },
    /// A record's length prefix points past the end of the batch.
    #[error("record {index} is truncated")]
    TruncatedRecord {
        /// Position of the record in the batch, from 0.
        index: u64,
    },
    /// A record's length prefix or bytes are not a valid `Record`.
    #[error("record {index} is malformed: {source}")]
    MalformedRecord {
        /// Position of the record in the batch, from 0.
        index: u64,
        /// What the protobuf decoder said.
        source: prost::DecodeError,
    },
    /// A record's timestamp does not fit in an `i64` once its delta is applied (or, when
    /// building, its distance from the first record's timestamp does not).
    #[error("record {index} has a timestamp out of range")]
    TimestampOutOfRange {
        /// Position of the record in the batch, from 0.
        index: u64,
    },
}

impl BatchError {
    /// The code a producer receives when the server refuses a batch for this reason: damage
    /// to the bytes is CORRUPT_BATCH (worth a retry from the source), anything else is the
    /// producer's mistake, INVALID_REQUEST.
    pub fn code(&self) -> ErrorCode {
        match self {
            BatchError::Malformed(_)
            | BatchError::CrcMismatch { .. }
            | BatchError::CountMismatch { .. }
            | BatchError::TruncatedRecord { .. }
            | BatchError::MalformedRecord { .. } => ErrorCode::CorruptBatch,
            BatchError::TooLarge { .. }
            | BatchError::Empty
            | BatchError::TimestampOutOfRange { .. } => ErrorCode::InvalidRequest,
        }
    }
}

/// One record as a consumer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedRecord {
    /// Producer timestamp, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// The key, if the producer set one (an empty key is `Some` of empty bytes).
    pub key: Option<Bytes>,
    /// The value; a slice of the batch, not a copy.
    pub value: Bytes,
    /// Application headers, in the order given.
    pub headers: Vec<RecordHeader>,
}

/// Encodes records into one batch, refusing a record that would take it over a byte limit.
///
/// The builder encodes each record as it is pushed, so [`Self::finish`] only adds the header.
#[derive(Debug)]
pub struct RecordBatchBuilder {
    records: BytesMut,
    record_count: u32,
    first_timestamp_ms: Option<i64>,
    producer_id: u64,
    producer_epoch: u32,
    base_sequence: u32,
    batch_bytes_max: usize,
}

impl RecordBatchBuilder {
    /// An empty batch whose encoding will never exceed `batch_bytes_max` bytes.
    pub fn new(batch_bytes_max: usize) -> Self {
        Self {
            records: BytesMut::new(),
            record_count: 0,
            first_timestamp_ms: None,
            producer_id: 0,
            producer_epoch: 0,
            base_sequence: 0,
            batch_bytes_max,
        }
    }

    /// Marks the batch as coming from an idempotent producer (see `RecordBatch` in the schema).
    pub fn with_producer(
        mut self,
        producer_id: u64,
        producer_epoch: u32,
        base_sequence: u32,
    ) -> Self {
        self.producer_id = producer_id;
        self.producer_epoch = producer_epoch;
        self.base_sequence = base_sequence;
        self
    }

    /// Records pushed so far.
    pub fn record_count(&self) -> u32 {
        self.record_count
    }

    /// Whether no record has been pushed yet.
    pub fn is_empty(&self) -> bool {
        self.record_count == 0
    }

    /// An upper bound on the size [`Self::finish`] would return now, in bytes (exact but for
    /// up to 4 bytes of the CRC's varint and, for an idempotent batch, up to 21 bytes of its
    /// producer fields: see [`Self::into_batch`]).
    pub fn encoded_len(&self) -> usize {
        self.encoded_len_with(self.record_count, self.records.len())
    }

    /// Appends one record. `headers` are (name, value) pairs, kept in order.
    ///
    /// # Errors
    /// [`BatchError::TooLarge`] if the record would take the batch over its limit (the
    /// builder is unchanged: finish this batch and start another), or
    /// [`BatchError::TimestampOutOfRange`] if `timestamp_ms` is too far from the first
    /// record's for a 64-bit delta.
    pub fn push(
        &mut self,
        timestamp_ms: i64,
        key: Option<&[u8]>,
        value: &[u8],
        headers: &[(&str, &[u8])],
    ) -> Result<(), BatchError> {
        let first = *self.first_timestamp_ms.get_or_insert(timestamp_ms);
        let delta = timestamp_ms.checked_sub(first).ok_or({
            BatchError::TimestampOutOfRange {
                index: u64::from(self.record_count),
            }
        })?;
        let body_len = record_body_len(delta, key, value, headers);
        let records_len = self.records.len() + varint_len(body_len as u64) + body_len;
        let bytes = self.encoded_len_with(self.record_count.saturating_add(1), records_len);
        if bytes > self.batch_bytes_max || self.record_count == u32::MAX {
            if self.record_count == 0 {
                self.first_timestamp_ms = None;
            }
            return Err(BatchError::TooLarge {
                bytes,
                max: self.batch_bytes_max,
            });
        }
        self.records.reserve(records_len - self.records.len());
        put_varint(&mut self.records, body_len as u64);
        encode_record_body(&mut self.records, delta, key, value, headers);
        self.record_count += 1;
        Ok(())
    }

    /// The encoded `RecordBatch`, with its CRC and record count filled in.
    ///
    /// An empty builder yields an empty batch, which [`validate`] refuses.
    pub fn finish(self) -> Bytes {
        Bytes::from(self.into_batch().encode_to_vec())
    }

    /// The batch as a message, with its CRC and record count filled in, not yet encoded.
    ///
    /// The CRC covers the records only, so an idempotent producer may still change the
    /// producer fields (a batch sent again after an epoch bump gets a new epoch and
    /// sequence): the size limit counts them at their largest, so the encoding stays
    /// within it whatever they become.
    pub fn into_batch(self) -> RecordBatch {
        let records = self.records.freeze();
        RecordBatch {
            crc: crc32fast::hash(&records),
            record_count: self.record_count,
            first_timestamp_ms: self.first_timestamp_ms.unwrap_or(0),
            producer_id: self.producer_id,
            producer_epoch: self.producer_epoch,
            base_sequence: self.base_sequence,
            records,
        }
    }

    /// The batch size with `record_count` records in `records_len` bytes, counting the CRC
    /// (and an idempotent batch's producer fields) at its largest varint so that the real
    /// encoding is never larger.
    fn encoded_len_with(&self, record_count: u32, records_len: usize) -> usize {
        let idempotent = self.producer_id != 0;
        let header = RecordBatch {
            crc: u32::MAX,
            record_count,
            first_timestamp_ms: self.first_timestamp_ms.unwrap_or(0),
            producer_id: if idempotent { u64::MAX } else { 0 },
            producer_epoch: if idempotent { u32::MAX } else { 0 },
            base_sequence: if idempotent { u32::MAX } else { 0 },
            records: Bytes::new(),
        };
        let records_field = if records_len == 0 {
            0
        } else {
            1 + varint_len(records_len as u64) + records_len
        };
        header.encoded_len() + records_field
    }
}

/// What the server learned from checking a batch; proof that the batch passed [`validate`].
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedBatch {
    batch: RecordBatch,
    max_timestamp_ms: i64,
}

impl ValidatedBatch {
    /// Records in the batch (at least 1).
    pub fn record_count(&self) -> u32 {
        self.batch.record_count
    }

    /// Timestamp of the first record, milliseconds since the Unix epoch.
    pub fn first_timestamp_ms(&self) -> i64 {
        self.batch.first_timestamp_ms
    }

    /// Largest record timestamp in the batch; time-based retention compares against it.
    pub fn max_timestamp_ms(&self) -> i64 {
        self.max_timestamp_ms
    }

    /// Idempotent producer id, 0 for none.
    pub fn producer_id(&self) -> u64 {
        self.batch.producer_id
    }

    /// The producer id's epoch.
    pub fn producer_epoch(&self) -> u32 {
        self.batch.producer_epoch
    }

    /// Sequence number of the first record.
    pub fn base_sequence(&self) -> u32 {
        self.batch.base_sequence
    }

    /// The CRC of the records, as stored and checked.
    pub fn crc(&self) -> u32 {
        self.batch.crc
    }

    /// The decoded header; `records` is a slice of the validated bytes.
    pub fn batch(&self) -> &RecordBatch {
        &self.batch
    }
}

/// Checks a batch as received from a producer (or read back from the log): size, protobuf
/// header, CRC over the records, and that the records parse and number exactly
/// `record_count`. Never panics, whatever the bytes.
///
/// Decoding slices `batch_bytes` instead of copying it, so validating costs one pass over the
/// records for the CRC and one for the walk.
///
/// # Errors
/// [`BatchError::TooLarge`] and [`BatchError::Empty`] (INVALID_REQUEST), or any corruption
/// variant (CORRUPT_BATCH); see [`BatchError::code`].
pub fn validate(batch_bytes: &Bytes, batch_bytes_max: usize) -> Result<ValidatedBatch, BatchError> {
    if batch_bytes.len() > batch_bytes_max {
        return Err(BatchError::TooLarge {
            bytes: batch_bytes.len(),
            max: batch_bytes_max,
        });
    }
    let batch = RecordBatch::decode(batch_bytes.clone()).map_err(BatchError::Malformed)?;
    if batch.record_count == 0 && batch.records.is_empty() {
        return Err(BatchError::Empty);
    }
    let computed = crc32fast::hash(&batch.records);
    if computed != batch.crc {
        return Err(BatchError::CrcMismatch {
            stored: batch.crc,
            computed,
        });
    }
    let mut max_timestamp_ms = batch.first_timestamp_ms;
    for record in decode_records(&batch) {
        max_timestamp_ms = max_timestamp_ms.max(record?.timestamp_ms);
    }
    Ok(ValidatedBatch {
        batch,
        max_timestamp_ms,
    })
}

/// The records of a batch, in order. Keys and values are slices of `batch.records`.
///
/// The iterator checks the count as it goes: after the last record it yields
/// [`BatchError::CountMismatch`] if the batch held fewer records than it claims, and instead of
/// an extra record if it holds more. After any error it ends. It does not check the CRC; use
/// [`validate`] on bytes from an untrusted source first.
pub fn decode_records(
    batch: &RecordBatch,
) -> impl Iterator<Item = Result<DecodedRecord, BatchError>> {
    RecordIter {
        records: batch.records.clone(),
        first_timestamp_ms: batch.first_timestamp_ms,
        claimed: batch.record_count,
        seen: 0,
        done: false,
    }
}

struct RecordIter {
    records: Bytes,
    first_timestamp_ms: i64,
    claimed: u32,
    seen: u64,
    done: bool,
}

impl Iterator for RecordIter {
    type Item = Result<DecodedRecord, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let claimed = u64::from(self.claimed);
        if self.records.is_empty() || self.seen == claimed {
            self.done = true;
            return self.check_count();
        }
        let result = self.next_record();
        self.done = result.is_err();
        Some(result)
    }
}

impl RecordIter {
    /// At the end of the records or of the claimed count: an error unless both agree.
    fn check_count(&mut self) -> Option<Result<DecodedRecord, BatchError>> {
        if self.records.is_empty() && self.seen == u64::from(self.claimed) {
            return None;
        }
        let extra = match count_records(&mut self.records, self.seen) {
            Ok(extra) => extra,
            Err(error) => return Some(Err(error)),
        };
        Some(Err(BatchError::CountMismatch {
            claimed: self.claimed,
            found: self.seen + extra,
        }))
    }

    fn next_record(&mut self) -> Result<DecodedRecord, BatchError> {
        let index = self.seen;
        let body = split_record(&mut self.records, index)?;
        let record =
            Record::decode(body).map_err(|source| BatchError::MalformedRecord { index, source })?;
        self.seen += 1;
        let timestamp_ms = self
            .first_timestamp_ms
            .checked_add(record.timestamp_delta_ms)
            .ok_or(BatchError::TimestampOutOfRange { index })?;
        Ok(DecodedRecord {
            timestamp_ms,
            key: record.key,
            value: record.value,
            headers: record.headers,
        })
    }
}

/// Takes one length-delimited record off the front of `records`.
fn split_record(records: &mut Bytes, index: u64) -> Result<Bytes, BatchError> {
    let len = prost::decode_length_delimiter(&mut *records)
        .map_err(|source| BatchError::MalformedRecord { index, source })?;
    if len > records.len() {
        return Err(BatchError::TruncatedRecord { index });
    }
    Ok(records.split_to(len))
}

/// Counts the records left in `records` by their length prefixes alone.
fn count_records(records: &mut Bytes, first_index: u64) -> Result<u64, BatchError> {
    let mut count = 0;
    while !records.is_empty() {
        split_record(records, first_index + count)?;
        count += 1;
    }
    Ok(count)
}

fn varint_len(value: u64) -> usize {
    prost::length_delimiter_len(value as usize)
}

fn put_varint(buf: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        buf.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

/// Size of a length-delimited field with a one-byte key (every tag here is below 16).
fn len_field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

fn header_body_len(name: &str, value: &[u8]) -> usize {
    let name_len = if name.is_empty() {
        0
    } else {
        len_field_len(name.len())
    };
    let value_len = if value.is_empty() {
        0
    } else {
        len_field_len(value.len())
    };
    name_len + value_len
}

/// Size of a `Record` encoding, omitting proto3 default values as prost does.
fn record_body_len(
    delta: i64,
    key: Option<&[u8]>,
    value: &[u8],
    headers: &[(&str, &[u8])],
) -> usize {
    let delta_len = if delta == 0 {
        0
    } else {
        1 + varint_len(zigzag(delta))
    };
    let key_len = key.map_or(0, |key| len_field_len(key.len()));
    let value_len = if value.is_empty() {
        0
    } else {
        len_field_len(value.len())
    };
    let headers_len: usize = headers
        .iter()
        .map(|(name, value)| len_field_len(header_body_len(name, value)))
        .sum();
    delta_len + key_len + value_len + headers_len
}

fn put_len_field(buf: &mut BytesMut, tag: u8, bytes: &[u8]) {
    buf.put_u8((tag << 3) | WIRE_TYPE_LEN);
    put_varint(buf, bytes.len() as u64);
    buf.put_slice(bytes);
}

/// Writes a `Record` by hand, from borrowed slices, so that pushing a record copies its bytes
/// once (into the batch) instead of first into owned `Bytes` for a prost struct.
fn encode_record_body(
    buf: &mut BytesMut,
    delta: i64,
    key: Option<&[u8]>,
    value: &[u8],
    headers: &[(&str, &[u8])],
) {
    if delta != 0 {
        buf.put_u8((1 << 3) | WIRE_TYPE_VARINT);
        put_varint(buf, zigzag(delta));
    }
    if let Some(key) = key {
        put_len_field(buf, 2, key);
    }
    if !value.is_empty() {
        put_len_field(buf, 3, value);
    }
    for (name, header_value) in headers {
        buf.put_u8((4 << 3) | WIRE_TYPE_LEN);
        put_varint(buf, header_body_len(name, header_value) as u64);
        if !name.is_empty() {
            put_len_field(buf, 1, name.as_bytes());
        }
        if !header_value.is_empty() {
            put_len_field(buf, 2, header_value);
        }
    }
}

/// Milliseconds since the Unix epoch: the clock of record timestamps (set by producers) and
/// of entry append times (set by leaders). A clock before 1970 reads as 0.
pub fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1 << 20;

    fn sample() -> Bytes {
        let mut builder = RecordBatchBuilder::new(MAX).with_producer(7, 2, 100);
        builder
            .push(1_000, Some(b"k1"), b"v1", &[("h", b"x"), ("", b"")])
            .unwrap();
        builder.push(990, None, b"", &[]).unwrap();
        builder.push(1_500, Some(b""), b"v3", &[]).unwrap();
        builder.finish()
    }

    #[test]
    fn round_trip_through_prost() {
        let bytes = sample();
        let validated = validate(&bytes, MAX).unwrap();
        assert_eq!(validated.record_count(), 3);
        assert_eq!(validated.first_timestamp_ms(), 1_000);
        assert_eq!(validated.max_timestamp_ms(), 1_500);
        assert_eq!(
            (
                validated.producer_id(),
                validated.producer_epoch(),
                validated.base_sequence()
            ),
            (7, 2, 100)
        );
        let records: Vec<DecodedRecord> = decode_records(validated.batch())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(records[0].timestamp_ms, 1_000);
        assert_eq!(records[0].key.as_deref(), Some(&b"k1"[..]));
        assert_eq!(records[0].value, Bytes::from_static(b"v1"));
        assert_eq!(records[0].headers.len(), 2);
        assert_eq!(records[0].headers[0].key, "h");
        assert_eq!(records[0].headers[0].value, Bytes::from_static(b"x"));
        assert_eq!(records[1].timestamp_ms, 990);
        assert_eq!(records[1].key, None);
        assert_eq!(records[2].key.as_deref(), Some(&b""[..]));
    }

    #[test]
    fn hand_encoding_matches_prost() {
        let headers: &[(&str, &[u8])] = &[("a", b"1"), ("bb", b"")];
        let mut buf = BytesMut::new();
        encode_record_body(&mut buf, -5, Some(b"key"), b"value", headers);
        let record = Record {
            timestamp_delta_ms: -5,
            key: Some(Bytes::from_static(b"key")),
            value: Bytes::from_static(b"value"),
            headers: vec![
                RecordHeader {
                    key: "a".into(),
                    value: Bytes::from_static(b"1"),
                },
                RecordHeader {
                    key: "bb".into(),
                    value: Bytes::new(),
                },
            ],
        };
        assert_eq!(&buf[..], &record.encode_to_vec()[..]);
        assert_eq!(
            record_body_len(-5, Some(b"key"), b"value", headers),
            buf.len()
        );
    }

    #[test]
    fn builder_never_exceeds_its_limit() {
        let limit = 200;
        let mut builder = RecordBatchBuilder::new(limit);
        let mut pushed = 0;
        while builder.push(pushed, Some(b"key"), &[7u8; 30], &[]).is_ok() {
            pushed += 1;
        }
        assert!(pushed > 0);
        let err = builder.push(0, None, &[7u8; 30], &[]).unwrap_err();
        assert!(matches!(err, BatchError::TooLarge { max: 200, .. }));
        let bytes = builder.finish();
        assert!(bytes.len() <= limit, "{} > {limit}", bytes.len());
        assert_eq!(
            validate(&bytes, limit).unwrap().record_count() as i64,
            pushed
        );
    }

    #[test]
    fn a_full_idempotent_batch_stays_within_its_limit_when_restamped() {
        let limit = 200;
        // Epoch and sequence 0 are not encoded at all: the smallest the fields can be.
        let mut builder = RecordBatchBuilder::new(limit).with_producer(1, 0, 0);
        while builder.push(0, None, &[7u8; 9], &[]).is_ok() {}
        let mut batch = builder.into_batch();
        batch.producer_id = u64::MAX;
        batch.producer_epoch = u32::MAX;
        batch.base_sequence = u32::MAX;
        let bytes = Bytes::from(batch.encode_to_vec());
        assert!(bytes.len() <= limit, "{} > {limit}", bytes.len());
        assert!(
            bytes.len() > limit - 16,
            "the batch was full: no room for another record"
        );
        validate(&bytes, limit).unwrap();
    }

    #[test]
    fn crc_mismatch_is_corrupt() {
        let mut batch = RecordBatch::decode(sample()).unwrap();
        batch.crc ^= 1;
        let err = validate(&Bytes::from(batch.encode_to_vec()), MAX).unwrap_err();
        assert!(matches!(err, BatchError::CrcMismatch { .. }));
        assert_eq!(err.code(), ErrorCode::CorruptBatch);
    }

    #[test]
    fn wrong_count_is_corrupt_both_ways() {
        for (claimed, found) in [(2, 3), (5, 3)] {
            let mut batch = RecordBatch::decode(sample()).unwrap();
            batch.record_count = claimed;
            let err = validate(&Bytes::from(batch.encode_to_vec()), MAX).unwrap_err();
            assert_eq!(err, BatchError::CountMismatch { claimed, found });
            assert_eq!(err.code(), ErrorCode::CorruptBatch);
        }
    }

    #[test]
    fn truncated_records_are_corrupt() {
        let mut batch = RecordBatch::decode(sample()).unwrap();
        batch.records.truncate(batch.records.len() - 1);
        batch.crc = crc32fast::hash(&batch.records);
        let err = validate(&Bytes::from(batch.encode_to_vec()), MAX).unwrap_err();
        assert_eq!(err, BatchError::TruncatedRecord { index: 2 });
    }

    #[test]
    fn truncated_batch_bytes_never_validate() {
        let bytes = sample();
        for len in 0..bytes.len() {
            assert!(validate(&bytes.slice(..len), MAX).is_err(), "prefix {len}");
        }
    }

    #[test]
    fn oversized_and_empty_batches_are_invalid_requests() {
        let err = validate(&sample(), 10).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidRequest);
        let empty = RecordBatchBuilder::new(MAX).finish();
        assert_eq!(validate(&empty, MAX).unwrap_err(), BatchError::Empty);
    }

    #[test]
    fn timestamp_overflow_is_refused_when_building_and_reading() {
        let mut builder = RecordBatchBuilder::new(MAX);
        builder.push(i64::MIN, None, b"a", &[]).unwrap();
        let err = builder.push(i64::MAX, None, b"b", &[]).unwrap_err();
        assert_eq!(err, BatchError::TimestampOutOfRange { index: 1 });
        let mut batch = RecordBatch::decode(sample()).unwrap();
        batch.first_timestamp_ms = i64::MAX;
        let mut records = decode_records(&batch);
        assert!(records.next().unwrap().is_ok(), "first record has delta 0");
        assert!(
            records.next().unwrap().is_ok(),
            "second record has delta -10"
        );
        assert!(matches!(
            records.next(),
            Some(Err(BatchError::TimestampOutOfRange { index: 2 }))
        ));
        assert!(records.next().is_none(), "iteration ends after an error");
    }
}
