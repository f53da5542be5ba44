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

impl RaftMessage {
    /// Whether this message exists only because a leader hands its leadership away: the
    /// `TimeoutNow` that tells the transferee to campaign, and the transferee's `RequestVote`
    /// that says so (dissertation §3.10). Dropping either for a full queue would turn a
    /// planned hand-off into an election timeout, so neither is: the peer transport queues
    /// them beyond its bounds, and the receiving replica takes them on its control queue.
    /// Both are few: one `TimeoutNow` per transfer of a group, one vote request per peer.
    ///
    /// Handling one ahead of messages queued before it is safe: a leader sends `TimeoutNow`
    /// only once the transferee has acknowledged every entry, and Raft tolerates reordering.
    pub fn is_hand_off(&self) -> bool {
        match &self.body {
            Some(raft_message::Body::TimeoutNow(_)) => true,
            Some(raft_message::Body::RequestVote(vote)) => vote.leadership_transfer,
            _ => false,
        }
    }
}
