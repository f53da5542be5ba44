//! Integration tests of the storage engine, on real files in temporary directories.
//!
//! Everything lives under the `storage` module so that `cargo test storage` selects it.

mod storage {
    mod conformance;
    mod disk_full;
    mod recovery;
    mod support;
}
