//! Generates the Rust types for `proto/raftlog.proto`.
//!
//! protox is a pure-Rust protobuf compiler, so a fresh machine needs no `protoc`: the file
//! descriptors it produces are handed straight to prost-build.

use std::io::Result;

fn main() -> Result<()> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors =
        protox::compile(["raftlog.proto"], ["proto"]).map_err(std::io::Error::other)?;
    prost_build::Config::new()
        // Payloads are decoded as slices of the received frame instead of fresh Vec<u8>s,
        // which keeps record batches zero-copy from the socket to the log.
        .bytes(["."])
        // A snapshot's configuration is rare; boxed, it does not make every RaftMessage
        // (queued by the thousand per peer) three vectors larger.
        .boxed(".raftlog.v1.InstallSnapshot.config")
        .compile_fds(descriptors)
}
