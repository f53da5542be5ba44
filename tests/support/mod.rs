//! Shared harness of the black-box cluster tests: real `raftlog serve` processes ([`cluster`])
//! on loopback or in network namespaces made by the test ([`netns`]), a fault-injecting TCP
//! proxy between them ([`proxy`]), a frame-aware proxy that cuts client connections around
//! produce requests ([`client_proxy`]), and a small reconnecting client ([`client`]).
//!
//! Each test binary that uses it declares `mod support;` and uses only part of it, hence the
//! `dead_code` allowance.
#![allow(dead_code)]

pub mod client;
pub mod client_proxy;
pub mod cluster;
pub mod netns;
pub mod proxy;
