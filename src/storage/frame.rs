//! The on-disk frame of one log entry: pure encode and decode, no IO.
//!
//! Owns the byte layout and its checks; it does not know about files, segments or positions
//! beyond the slice it is given.
//!
//! # Layout (all integers little-endian)
//!
//! ```text
//!  0        4        8                16               24               32               40         44        48
//!  +--------+--------+----------------+----------------+----------------+----------------+----------+---------+-------------+
//!  | length | crc32  | term           | index          | base_offset    | timestamp_ms   | rec_count| kind    | payload ... |
//!  | u32    | u32    | u64            | u64            | u64            | i64            | u32      | u32     | length - 48 |
//!  +--------+--------+----------------+----------------+----------------+----------------+----------+---------+-------------+
//!           '------------------------------- crc32 (IEEE, crc32fast) covers bytes [8, length) -------------------------------'
//! ```
//!
//! `length` counts the whole frame, header included, so a frame is never shorter than
//! [`FRAME_HEADER_BYTES`]. A `length` of zero is not a frame but the end of the data: segments
//! are preallocated with zeros and truncation clears bytes, so the first zero length marks
//! where the written part of a segment ends. `kind` 0 (`ENTRY_KIND_UNSPECIFIED`) is never
//! written, so a frame claiming it is corrupt even if its CRC matches.

use bytes::Bytes;

use crate::proto::{Entry, EntryKind};

/// Bytes of the fixed frame header that precedes the payload.
pub const FRAME_HEADER_BYTES: usize = 48;

/// The decoded header of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Total frame bytes, header included.
    pub length: u32,
    /// CRC-32 of bytes `[8, length)`.
    pub crc: u32,
    /// Raft term of the entry.
    pub term: u64,
    /// Raft index of the entry.
    pub index: u64,
    /// Offset of the entry's first record.
    pub base_offset: u64,
    /// Log append time, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Number of records in the payload.
    pub record_count: u32,
    /// `EntryKind` as stored.
    pub kind: u32,
}

impl FrameHeader {
    /// Payload bytes of the frame.
    pub fn payload_bytes(&self) -> usize {
        self.length as usize - FRAME_HEADER_BYTES
    }

    /// The offset after the entry's last record.
    pub fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
    }
}

/// Why bytes at a position are not a valid frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The length field is zero: the end of the written data, not damage by itself.
    End,
    /// Fewer bytes remain than the header or the length field needs (a torn write, or a
    /// length that was damaged into a larger number).
    Truncated,
    /// The length field is below the header size.
    BadLength,
    /// The CRC does not match the frame's bytes.
    BadCrc,
    /// The CRC matches but the kind is not a known `EntryKind`.
    BadKind,
}

impl FrameError {
    /// A short human-readable reason, for error messages.
    pub fn reason(self) -> &'static str {
        match self {
            FrameError::End => "end of data",
            FrameError::Truncated => "frame runs past the end of the file",
            FrameError::BadLength => "length field below the header size",
            FrameError::BadCrc => "CRC mismatch",
            FrameError::BadKind => "unknown entry kind",
        }
    }
}

/// Bytes the frame of an entry with `payload_bytes` of payload takes.
pub fn frame_bytes(payload_bytes: usize) -> usize {
    FRAME_HEADER_BYTES + payload_bytes
}

/// Encodes the header of `entry` (CRC included) for writing before its payload.
///
/// # Panics
/// If the frame would not fit a `u32` length; callers check sizes against the segment first.
pub fn encode_header(entry: &Entry) -> [u8; FRAME_HEADER_BYTES] {
    let length = frame_bytes(entry.payload.len());
    assert!(
        length <= u32::MAX as usize,
        "frame of {length} bytes does not fit a u32 length"
    );
    let mut header = [0u8; FRAME_HEADER_BYTES];
    header[0..4].copy_from_slice(&(length as u32).to_le_bytes());
    header[8..16].copy_from_slice(&entry.term.to_le_bytes());
    header[16..24].copy_from_slice(&entry.index.to_le_bytes());
    header[24..32].copy_from_slice(&entry.base_offset.to_le_bytes());
    header[32..40].copy_from_slice(&entry.timestamp_ms.to_le_bytes());
    header[40..44].copy_from_slice(&entry.record_count.to_le_bytes());
    header[44..48].copy_from_slice(&(entry.kind as u32).to_le_bytes());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[8..]);
    hasher.update(&entry.payload);
    header[4..8].copy_from_slice(&hasher.finalize().to_le_bytes());
    header
}

/// Encodes a whole frame into a new vector (tests, benches and the copy path use it).
pub fn encode_frame(entry: &Entry) -> Vec<u8> {
    let mut frame = Vec::with_capacity(frame_bytes(entry.payload.len()));
    frame.extend_from_slice(&encode_header(entry));
    frame.extend_from_slice(&entry.payload);
    frame
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// Decodes and fully checks (length, CRC, kind) the frame at the start of `bytes`, which
/// holds everything from the frame's position to the end of the written area or file.
pub fn decode(bytes: &[u8]) -> Result<FrameHeader, FrameError> {
    let header = decode_header(bytes)?;
    verify(&bytes[..header.length as usize], &header)?;
    Ok(header)
}

/// Decodes the header at the start of `bytes`, checking only that its length is sane and
/// fits `bytes`; [`verify`] checks the rest. Readers use it to skip frames they do not
/// return without paying for their CRC.
pub fn decode_header(bytes: &[u8]) -> Result<FrameHeader, FrameError> {
    if bytes.len() < 4 {
        return if bytes.iter().all(|&b| b == 0) {
            Err(FrameError::End)
        } else {
            Err(FrameError::Truncated)
        };
    }
    let length = u32_at(bytes, 0);
    if length == 0 {
        return Err(FrameError::End);
    }
    if (length as usize) < FRAME_HEADER_BYTES {
        return Err(FrameError::BadLength);
    }
    if length as usize > bytes.len() {
        return Err(FrameError::Truncated);
    }
    Ok(FrameHeader {
        length,
        crc: u32_at(bytes, 4),
        term: u64_at(bytes, 8),
        index: u64_at(bytes, 16),
        base_offset: u64_at(bytes, 24),
        timestamp_ms: u64_at(bytes, 32) as i64,
        record_count: u32_at(bytes, 40),
        kind: u32_at(bytes, 44),
    })
}

/// Checks the CRC and kind of `frame` (exactly the frame's bytes) against its `header`.
pub fn verify(frame: &[u8], header: &FrameHeader) -> Result<(), FrameError> {
    debug_assert_eq!(frame.len(), header.length as usize);
    if crc32fast::hash(&frame[8..]) != header.crc {
        return Err(FrameError::BadCrc);
    }
    match i32::try_from(header.kind)
        .ok()
        .and_then(|k| EntryKind::try_from(k).ok())
    {
        Some(EntryKind::Unspecified) | None => Err(FrameError::BadKind),
        Some(_) => Ok(()),
    }
}

/// Builds the `Entry` of a checked frame; `payload` is the frame's payload bytes.
pub fn to_entry(header: &FrameHeader, payload: Bytes) -> Entry {
    debug_assert_eq!(payload.len(), header.payload_bytes());
    Entry {
        term: header.term,
        index: header.index,
        kind: header.kind as i32,
        base_offset: header.base_offset,
        record_count: header.record_count,
        timestamp_ms: header.timestamp_ms,
        payload,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(payload: &'static [u8]) -> Entry {
        Entry {
            term: 3,
            index: 7,
            kind: EntryKind::Data as i32,
            base_offset: 100,
            record_count: 2,
            timestamp_ms: -5,
            payload: Bytes::from_static(payload),
        }
    }

    #[test]
    fn round_trip() {
        let frame = encode_frame(&entry(b"hello"));
        assert_eq!(frame.len(), FRAME_HEADER_BYTES + 5);
        let header = decode(&frame).unwrap();
        let back = to_entry(
            &header,
            Bytes::copy_from_slice(&frame[FRAME_HEADER_BYTES..]),
        );
        assert_eq!(back, entry(b"hello"));
        assert_eq!(header.next_offset(), 102);
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let frame = encode_frame(&entry(b"payload"));
        for at in 0..frame.len() {
            let mut damaged = frame.clone();
            damaged[at] ^= 0x40;
            assert!(decode(&damaged).is_err(), "flip at {at} not detected");
        }
    }

    #[test]
    fn zero_length_is_end_and_short_is_truncated() {
        assert_eq!(decode(&[0u8; 64]), Err(FrameError::End));
        assert_eq!(decode(&[0u8; 2]), Err(FrameError::End));
        let frame = encode_frame(&entry(b"abc"));
        assert_eq!(
            decode(&frame[..frame.len() - 1]),
            Err(FrameError::Truncated)
        );
        let mut short = frame.clone();
        short[0..4].copy_from_slice(&10u32.to_le_bytes());
        assert_eq!(decode(&short), Err(FrameError::BadLength));
    }

    #[test]
    fn unspecified_kind_is_corrupt() {
        let mut unspecified = entry(b"");
        unspecified.kind = EntryKind::Unspecified as i32;
        assert_eq!(
            decode(&encode_frame(&unspecified)),
            Err(FrameError::BadKind)
        );
    }
}
