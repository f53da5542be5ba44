//! The generated protobuf types of `proto/raftlog.proto` (package `raftlog.v1`).
//!
//! `build.rs` compiles the schema with protox and prost-build at build time; this module only
//! includes the result. Read the schema itself for what every message and field means: it is
//! written as a guide to Raft. Three things trip up newcomers to prost:
//! - message-typed fields are `Option<T>` (proto3 cannot tell "absent" from "default" for them);
//! - enum fields are stored as `i32`; use the generated `kind()` / `code()` accessors, which map
//!   unknown numbers to the zero variant, or `TryFrom<i32>` to detect them;
//! - `bytes` fields are `bytes::Bytes`, so decoding from a `Bytes` buffer slices it instead of
//!   copying payloads.

#![allow(missing_docs)]
#![allow(clippy::doc_lazy_continuation)]
#![allow(clippy::large_enum_variant)]

include!(concat!(env!("OUT_DIR"), "/raftlog.v1.rs"));
