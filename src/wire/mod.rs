//! Wire protocol (being written).
