//! Pure, sans-IO framing: split a byte stream into frames and encode envelopes into it.
//!
//! A frame on the wire:
//!
//! ```text
//!  0        1        2        3        4                              4 + N
//! +--------+--------+--------+--------+-------------- ... ------------+
//! |     length N, u32 big-endian      |  N bytes: protobuf Envelope    |
//! +--------+--------+--------+--------+-------------- ... ------------+
//! ```
//!
//! N counts only the envelope bytes, not the 4-byte header. N may be 0 (an envelope with every
//! field at its default), which decodes to an envelope without a body; callers reject that as
//! a malformed request, not as a framing error.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;

use crate::proto::Envelope;
use crate::wire::WireError;

/// Size of the length prefix that starts every frame.
pub const FRAME_HEADER_BYTES: usize = 4;

/// Default largest envelope a node accepts or sends: large enough for a 1 MiB record batch
/// with generous headroom, small enough that one bad length cannot make a node allocate
/// gigabytes.
pub const FRAME_BYTES_MAX_DEFAULT: usize = 16 * 1024 * 1024;

/// Takes one complete frame's envelope bytes off the front of `buf`.
///
/// Returns `Ok(None)` when `buf` holds only part of a frame: the caller reads more bytes and
/// calls again. The length is checked against `frame_bytes_max` before anything is reserved,
/// so a hostile length costs nothing. The returned bytes share `buf`'s allocation.
///
/// # Errors
/// [`WireError::FrameTooLarge`] when the announced length exceeds `frame_bytes_max`; the
/// stream cannot be resynchronised after that, so the connection must be closed.
pub fn decode_frame(
    buf: &mut BytesMut,
    frame_bytes_max: usize,
) -> Result<Option<Bytes>, WireError> {
    if buf.len() < FRAME_HEADER_BYTES {
        return Ok(None);
    }
    let header: [u8; FRAME_HEADER_BYTES] = buf[..FRAME_HEADER_BYTES]
        .try_into()
        .expect("length checked");
    let length = u32::from_be_bytes(header) as usize;
    if length > frame_bytes_max {
        return Err(WireError::FrameTooLarge {
            length,
            max: frame_bytes_max,
        });
    }
    let frame_bytes = FRAME_HEADER_BYTES + length;
    if buf.len() < frame_bytes {
        // Reserve only what this (already bounded) frame still needs, so the next read lands
        // in place instead of growing the buffer piecemeal.
        buf.reserve(frame_bytes - buf.len());
        return Ok(None);
    }
    buf.advance(FRAME_HEADER_BYTES);
    Ok(Some(buf.split_to(length).freeze()))
}

/// Decodes the envelope carried by one frame.
///
/// `bytes` fields of the result (record batches, entry payloads) are slices of `frame`, not
/// copies.
///
/// # Errors
/// [`WireError::Malformed`] when the bytes are not a valid `Envelope`.
pub fn decode_envelope(frame: Bytes) -> Result<Envelope, WireError> {
    Envelope::decode(frame).map_err(WireError::Malformed)
}

/// Appends `envelope` to `dst` as one frame.
///
/// # Errors
/// [`WireError::FrameTooLarge`] when the encoded envelope exceeds `frame_bytes_max`; nothing is
/// written to `dst` in that case.
pub fn encode_frame(
    envelope: &Envelope,
    dst: &mut BytesMut,
    frame_bytes_max: usize,
) -> Result<(), WireError> {
    let length = envelope.encoded_len();
    if length > frame_bytes_max {
        return Err(WireError::FrameTooLarge {
            length,
            max: frame_bytes_max,
        });
    }
    let length_u32 = u32::try_from(length).expect("frame_bytes_max fits in u32");
    dst.reserve(FRAME_HEADER_BYTES + length);
    dst.put_u32(length_u32);
    envelope.encode(dst).expect("capacity reserved above");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::envelope::Body;
    use crate::proto::{FetchRequest, ProduceRequest};

    fn produce_envelope() -> Envelope {
        Envelope {
            correlation_id: 7,
            body: Some(Body::Produce(ProduceRequest {
                topic: "orders".into(),
                partition: 2,
                acks: 1,
                batch: Bytes::from_static(b"not really a batch, but bytes all the same"),
                timeout_ms: 5_000,
            })),
        }
    }

    #[test]
    fn frame_round_trips() {
        let envelope = produce_envelope();
        let mut buf = BytesMut::new();
        encode_frame(&envelope, &mut buf, FRAME_BYTES_MAX_DEFAULT).unwrap();
        let frame = decode_frame(&mut buf, FRAME_BYTES_MAX_DEFAULT)
            .unwrap()
            .unwrap();
        assert!(buf.is_empty());
        assert_eq!(decode_envelope(frame).unwrap(), envelope);
    }

    #[test]
    fn partial_frame_needs_more_bytes_at_every_split_point() {
        let mut encoded = BytesMut::new();
        encode_frame(&produce_envelope(), &mut encoded, FRAME_BYTES_MAX_DEFAULT).unwrap();
        for split in 0..encoded.len() {
            let mut buf = BytesMut::from(&encoded[..split]);
            assert_eq!(
                decode_frame(&mut buf, FRAME_BYTES_MAX_DEFAULT).unwrap(),
                None,
                "split at {split}"
            );
            buf.extend_from_slice(&encoded[split..]);
            let frame = decode_frame(&mut buf, FRAME_BYTES_MAX_DEFAULT)
                .unwrap()
                .expect("whole frame");
            assert_eq!(decode_envelope(frame).unwrap(), produce_envelope());
        }
    }

    #[test]
    fn oversized_length_is_refused_before_allocating() {
        let mut buf = BytesMut::with_capacity(FRAME_HEADER_BYTES);
        buf.put_u32(u32::MAX);
        let capacity_before = buf.capacity();
        let err = decode_frame(&mut buf, FRAME_BYTES_MAX_DEFAULT).unwrap_err();
        assert!(
            matches!(err, WireError::FrameTooLarge { length, .. } if length == u32::MAX as usize)
        );
        assert_eq!(
            buf.capacity(),
            capacity_before,
            "no allocation for a refused frame"
        );
    }

    #[test]
    fn oversized_envelope_is_not_encoded() {
        let envelope = Envelope {
            correlation_id: 1,
            body: Some(Body::Produce(ProduceRequest {
                batch: Bytes::from(vec![0u8; 2048]),
                ..Default::default()
            })),
        };
        let mut buf = BytesMut::new();
        assert!(matches!(
            encode_frame(&envelope, &mut buf, 1024),
            Err(WireError::FrameTooLarge { .. })
        ));
        assert!(buf.is_empty());
    }

    #[test]
    fn two_frames_in_one_buffer_come_out_in_order() {
        let first = produce_envelope();
        let second = Envelope {
            correlation_id: 8,
            body: Some(Body::Fetch(FetchRequest {
                topic: "orders".into(),
                offset: 42,
                ..Default::default()
            })),
        };
        let mut buf = BytesMut::new();
        encode_frame(&first, &mut buf, FRAME_BYTES_MAX_DEFAULT).unwrap();
        encode_frame(&second, &mut buf, FRAME_BYTES_MAX_DEFAULT).unwrap();
        let got_first = decode_frame(&mut buf, FRAME_BYTES_MAX_DEFAULT)
            .unwrap()
            .unwrap();
        let got_second = decode_frame(&mut buf, FRAME_BYTES_MAX_DEFAULT)
            .unwrap()
            .unwrap();
        assert_eq!(decode_envelope(got_first).unwrap(), first);
        assert_eq!(decode_envelope(got_second).unwrap(), second);
    }

    #[test]
    fn decoded_payload_shares_the_frame_allocation() {
        let mut buf = BytesMut::new();
        encode_frame(&produce_envelope(), &mut buf, FRAME_BYTES_MAX_DEFAULT).unwrap();
        let frame = decode_frame(&mut buf, FRAME_BYTES_MAX_DEFAULT)
            .unwrap()
            .unwrap();
        let frame_range = frame.as_ptr() as usize..frame.as_ptr() as usize + frame.len();
        let Some(Body::Produce(produce)) = decode_envelope(frame).unwrap().body else {
            panic!("not a produce")
        };
        assert!(
            frame_range.contains(&(produce.batch.as_ptr() as usize)),
            "batch bytes were copied"
        );
    }
}
