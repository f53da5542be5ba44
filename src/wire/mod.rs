//! The wire protocol: how bytes on a TCP connection become [`Envelope`]s and back.
//!
//! This module owns framing (a 4-byte big-endian length, then one prost-encoded
//! [`Envelope`]), the connection handshake (protocol version, cluster id, role), and the
//! mapping from typed errors to the [`ErrorCode`]s clients see. It does not own what the
//! messages mean: the server, the client and the peer transport do.
//!
//! The codec is sans-IO: [`frame`] holds pure functions over byte buffers, and [`codec`] is a
//! thin `tokio_util::codec` adapter over them, so the same logic is tested without sockets and
//! used with them.
//!
//! [`Envelope`]: crate::proto::Envelope
//! [`ErrorCode`]: crate::proto::ErrorCode

pub mod codec;
pub mod error;
pub mod frame;
pub mod handshake;

pub use codec::EnvelopeCodec;
pub use error::{error_envelope, WireError};
pub use frame::{decode_envelope, decode_frame, encode_frame, FRAME_BYTES_MAX_DEFAULT};
pub use handshake::PROTOCOL_VERSION;
