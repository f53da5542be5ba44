//! The per-segment summary and sparse index: what a segment holds, without reading it.
//!
//! Owns the in-memory `SegmentIndex` (index and offset range, end of data, newest timestamp,
//! term runs, sparse positions) and its `.index` file format. It is only ever a hint: the
//! segment's frames are the truth, and a missing, damaged or disagreeing `.index` file is
//! rebuilt by scanning the segment. It does no IO itself beyond encode and decode.
//!
//! # `.index` file layout (little-endian)
//!
//! ```text
//!  0      4      8           16          24           32           40          48           56      60
//!  +------+------+-----------+-----------+------------+------------+-----------+------------+-------+-------+
//!  | magic| ver  |first_index|next_index |first_offset|next_offset |end_pos    |timestamp   | terms | points|
//!  | RLIX | u32  | u64       | u64       | u64        | u64        | u64       | max i64    | u32   | u32   |
//!  +------+------+-----------+-----------+------------+------------+-----------+------------+-------+-------+
//!  then `terms` x (first_index u64, term u64), then `points` x (index u64, base_offset u64,
//!  position u64), then crc32 u32 over everything before it.
//! ```

use super::frame::FrameHeader;

const MAGIC: &[u8; 4] = b"RLIX";
const VERSION: u32 = 1;
const FIXED_BYTES: usize = 64;

/// One sparse point: the frame of entry `index` (first record `base_offset`) is at `position`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SparsePoint {
    pub index: u64,
    pub base_offset: u64,
    pub position: u64,
}

/// What one segment holds. Invariants: `first_index <= next_index`; `terms` and `points`
/// are sorted by index; the first point (if any) is the first entry at position 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentIndex {
    /// Raft index of the first entry (the segment's name), also when it is empty.
    pub first_index: u64,
    /// Raft index after the last entry.
    pub next_index: u64,
    /// Offset of the first record of the first entry.
    pub first_offset: u64,
    /// Offset after the last record.
    pub next_offset: u64,
    /// Bytes of frames written: the position where the next frame goes.
    pub end_position: u64,
    /// Newest append timestamp seen (i64::MIN when empty); retention by age compares it.
    pub timestamp_ms_max: i64,
    /// (first index, term) of each run of equal terms.
    pub terms: Vec<(u64, u64)>,
    /// Sparse positions, one per `interval_bytes` of frames.
    pub points: Vec<SparsePoint>,
}

impl SegmentIndex {
    /// An empty segment starting at `first_index` / `first_offset`.
    pub fn new(first_index: u64, first_offset: u64) -> SegmentIndex {
        SegmentIndex {
            first_index,
            next_index: first_index,
            first_offset,
            next_offset: first_offset,
            end_position: 0,
            timestamp_ms_max: i64::MIN,
            terms: Vec::new(),
            points: Vec::new(),
        }
    }

    /// True when the segment holds no entry.
    pub fn is_empty(&self) -> bool {
        self.next_index == self.first_index
    }

    /// Term of the last entry, if any.
    pub fn last_term(&self) -> Option<u64> {
        self.terms.last().map(|&(_, term)| term)
    }

    /// Records the frame `header` just written at `position` (which must be `end_position`).
    pub fn push(&mut self, header: &FrameHeader, position: u64, interval_bytes: u64) {
        assert_eq!(position, self.end_position, "frames are recorded in order");
        assert_eq!(
            header.index, self.next_index,
            "frames are recorded contiguously"
        );
        if self.is_empty() {
            self.first_offset = header.base_offset;
        }
        let due = match self.points.last() {
            None => true,
            Some(last) => position - last.position >= interval_bytes,
        };
        if due {
            self.points.push(SparsePoint {
                index: header.index,
                base_offset: header.base_offset,
                position,
            });
        }
        if self.last_term() != Some(header.term) {
            self.terms.push((header.index, header.term));
        }
        self.next_index = header.index + 1;
        self.next_offset = header.next_offset();
        self.end_position = position + u64::from(header.length);
        self.timestamp_ms_max = self.timestamp_ms_max.max(header.timestamp_ms);
    }

    /// Term of entry `index`, if the segment holds it.
    pub fn term_at(&self, index: u64) -> Option<u64> {
        if index < self.first_index || index >= self.next_index {
            return None;
        }
        let run = self.terms.partition_point(|&(first, _)| first <= index);
        Some(self.terms[run - 1].1)
    }

    /// A position at or before the frame of entry `index`, to scan forward from.
    pub fn position_for_index(&self, index: u64) -> u64 {
        let point = self.points.partition_point(|p| p.index <= index);
        if point == 0 {
            0
        } else {
            self.points[point - 1].position
        }
    }

    /// A position at or before the frame holding record `offset`.
    pub fn position_for_offset(&self, offset: u64) -> u64 {
        let point = self.points.partition_point(|p| p.base_offset <= offset);
        if point == 0 {
            0
        } else {
            self.points[point - 1].position
        }
    }

    /// Cuts the summary so entry `from_index` (at `position`, first record `from_offset`)
    /// and everything after it are gone. `timestamp_ms_max` is kept: it can only make an
    /// age check keep a segment longer, never delete it early.
    pub fn truncate(&mut self, from_index: u64, position: u64, from_offset: u64) {
        assert!(from_index >= self.first_index && from_index <= self.next_index);
        self.points.retain(|p| p.index < from_index);
        self.terms.retain(|&(first, _)| first < from_index);
        self.next_index = from_index;
        self.next_offset = from_offset;
        self.end_position = position;
        if self.is_empty() {
            self.first_offset = from_offset;
            self.timestamp_ms_max = i64::MIN;
        }
    }

    /// Encodes the `.index` file.
    pub fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(FIXED_BYTES + self.terms.len() * 16 + self.points.len() * 24 + 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        for value in [
            self.first_index,
            self.next_index,
            self.first_offset,
            self.next_offset,
            self.end_position,
        ] {
            out.extend_from_slice(&value.to_le_bytes());
        }
        out.extend_from_slice(&self.timestamp_ms_max.to_le_bytes());
        out.extend_from_slice(&(self.terms.len() as u32).to_le_bytes());
        out.extend_from_slice(&(self.points.len() as u32).to_le_bytes());
        for &(first, term) in &self.terms {
            out.extend_from_slice(&first.to_le_bytes());
            out.extend_from_slice(&term.to_le_bytes());
        }
        for point in &self.points {
            for value in [point.index, point.base_offset, point.position] {
                out.extend_from_slice(&value.to_le_bytes());
            }
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes an `.index` file, checking its CRC and internal order; `None` when damaged.
    /// Whether it agrees with the segment is the caller's check.
    pub fn decode(bytes: &[u8]) -> Option<SegmentIndex> {
        if bytes.len() < FIXED_BYTES + 4 || &bytes[0..4] != MAGIC {
            return None;
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().ok()?) {
            return None;
        }
        let u64_at = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"));
        let u32_at = |at: usize| u32::from_le_bytes(body[at..at + 4].try_into().expect("4 bytes"));
        if u32_at(4) != VERSION {
            return None;
        }
        let terms_count = u32_at(56) as usize;
        let points_count = u32_at(60) as usize;
        if body.len() != FIXED_BYTES + terms_count * 16 + points_count * 24 {
            return None;
        }
        let mut index = SegmentIndex {
            first_index: u64_at(8),
            next_index: u64_at(16),
            first_offset: u64_at(24),
            next_offset: u64_at(32),
            end_position: u64_at(40),
            timestamp_ms_max: u64_at(48) as i64,
            terms: Vec::with_capacity(terms_count),
            points: Vec::with_capacity(points_count),
        };
        let mut at = FIXED_BYTES;
        for _ in 0..terms_count {
            index.terms.push((u64_at(at), u64_at(at + 8)));
            at += 16;
        }
        for _ in 0..points_count {
            index.points.push(SparsePoint {
                index: u64_at(at),
                base_offset: u64_at(at + 8),
                position: u64_at(at + 16),
            });
            at += 24;
        }
        index.is_well_formed().then_some(index)
    }

    /// Internal consistency only (ordering and ranges), not agreement with the segment.
    fn is_well_formed(&self) -> bool {
        let sorted_terms = self
            .terms
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1);
        let sorted_points = self
            .points
            .windows(2)
            .all(|w| w[0].index < w[1].index && w[0].position < w[1].position);
        let in_range = |i: u64| i >= self.first_index && i < self.next_index;
        let empty = self.is_empty();
        self.first_index <= self.next_index
            && self.first_offset <= self.next_offset
            && sorted_terms
            && sorted_points
            && self
                .terms
                .first()
                .is_none_or(|&(first, _)| first == self.first_index)
            && self.terms.iter().all(|&(first, _)| in_range(first))
            && self
                .points
                .iter()
                .all(|p| in_range(p.index) && p.position < self.end_position)
            && empty == self.terms.is_empty()
            && empty == self.points.is_empty()
            && self
                .points
                .first()
                .is_none_or(|p| p.position == 0 && p.index == self.first_index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(index: u64, term: u64, base_offset: u64, length: u32) -> FrameHeader {
        FrameHeader {
            length,
            crc: 0,
            term,
            index,
            base_offset,
            timestamp_ms: index as i64,
            record_count: 2,
            kind: 1,
        }
    }

    fn sample() -> SegmentIndex {
        let mut index = SegmentIndex::new(10, 100);
        let mut position = 0;
        for (i, term) in [(10, 1), (11, 1), (12, 2), (13, 2), (14, 3)] {
            let h = header(i, term, 100 + (i - 10) * 2, 1000);
            index.push(&h, position, 2000);
            position += 1000;
        }
        index
    }

    #[test]
    fn push_tracks_ranges_terms_and_points() {
        let index = sample();
        assert_eq!((index.first_index, index.next_index), (10, 15));
        assert_eq!((index.first_offset, index.next_offset), (100, 110));
        assert_eq!(index.end_position, 5000);
        assert_eq!(index.terms, vec![(10, 1), (12, 2), (14, 3)]);
        assert_eq!(
            index.points.iter().map(|p| p.index).collect::<Vec<_>>(),
            vec![10, 12, 14]
        );
        assert_eq!(index.term_at(11), Some(1));
        assert_eq!(index.term_at(13), Some(2));
        assert_eq!(index.term_at(15), None);
        assert_eq!(index.position_for_index(13), 2000);
        assert_eq!(index.position_for_offset(105), 2000);
        assert_eq!(index.timestamp_ms_max, 14);
    }

    #[test]
    fn truncate_drops_points_and_terms() {
        let mut index = sample();
        index.truncate(12, 2000, 104);
        assert_eq!(index.next_index, 12);
        assert_eq!(index.terms, vec![(10, 1)]);
        assert_eq!(index.points.len(), 1);
        index.truncate(10, 0, 100);
        assert!(index.is_empty());
        assert_eq!(SegmentIndex::decode(&index.encode()), Some(index));
    }

    #[test]
    fn file_round_trip_and_damage() {
        let index = sample();
        let bytes = index.encode();
        assert_eq!(SegmentIndex::decode(&bytes), Some(index));
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 1;
            assert_eq!(SegmentIndex::decode(&damaged), None, "flip at {at}");
        }
        assert_eq!(SegmentIndex::decode(&bytes[..bytes.len() - 1]), None);
    }
}
