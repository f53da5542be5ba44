//! Storage: segmented, mmap-backed write-ahead log per partition (being built; see issue 3).
