//! A `tokio_util::codec` adapter over the pure functions of [`crate::wire::frame`].

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use crate::proto::Envelope;
use crate::wire::frame::{decode_envelope, decode_frame, encode_frame, FRAME_BYTES_MAX_DEFAULT};
use crate::wire::WireError;

/// Turns a byte stream into [`Envelope`]s and back, refusing frames above a size limit.
#[derive(Debug, Clone, Copy)]
pub struct EnvelopeCodec {
    frame_bytes_max: usize,
}

impl EnvelopeCodec {
    /// A codec that accepts and sends envelopes of at most `frame_bytes_max` bytes.
    ///
    /// # Panics
    /// If `frame_bytes_max` does not fit the 4-byte length prefix.
    pub fn new(frame_bytes_max: usize) -> Self {
        assert!(
            frame_bytes_max <= u32::MAX as usize,
            "frame_bytes_max {frame_bytes_max} exceeds the u32 length prefix"
        );
        Self { frame_bytes_max }
    }

    /// The largest envelope this codec accepts, in bytes.
    pub fn frame_bytes_max(&self) -> usize {
        self.frame_bytes_max
    }
}

impl Default for EnvelopeCodec {
    fn default() -> Self {
        Self::new(FRAME_BYTES_MAX_DEFAULT)
    }
}

impl Decoder for EnvelopeCodec {
    type Item = Envelope;
    type Error = WireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Envelope>, WireError> {
        match decode_frame(src, self.frame_bytes_max)? {
            Some(frame) => decode_envelope(frame).map(Some),
            None => Ok(None),
        }
    }
}

impl Encoder<Envelope> for EnvelopeCodec {
    type Error = WireError;

    fn encode(&mut self, item: Envelope, dst: &mut BytesMut) -> Result<(), WireError> {
        encode_frame(&item, dst, self.frame_bytes_max)
    }
}

impl Encoder<&Envelope> for EnvelopeCodec {
    type Error = WireError;

    fn encode(&mut self, item: &Envelope, dst: &mut BytesMut) -> Result<(), WireError> {
        encode_frame(item, dst, self.frame_bytes_max)
    }
}
