//! The Raft consensus core: a pure, deterministic state machine (being built; see issue 4).
