//! Scripted scenarios whose full protocol traces are checked against readable golden files
//! in `tests/testdata/raft/`. Run with `RAFTLOG_REWRITE_GOLDEN=1` to rewrite them after an
//! intended change, then read the diff: it is the protocol, step by step.

mod raft_harness;

/// Wrapped in `mod raft` so that `cargo test raft` selects them.
mod raft {
    use bytes::Bytes;

    use super::raft_harness::Cluster;

    fn check_golden(name: &str, trace: &[String]) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/testdata/raft")
            .join(format!("{name}.txt"));
        let actual = trace.join("\n") + "\n";
        if std::env::var("RAFTLOG_REWRITE_GOLDEN").is_ok() {
            std::fs::write(&path, &actual).expect("golden file writable");
            return;
        }
        let expected = std::fs::read_to_string(&path)
            .unwrap_or_else(|_| panic!("missing {path:?}; run with RAFTLOG_REWRITE_GOLDEN=1"));
        if expected != actual {
            let first = expected
                .lines()
                .zip(actual.lines())
                .position(|(e, a)| e != a)
                .unwrap_or(expected.lines().count().min(actual.lines().count()));
            panic!(
                "trace differs from {path:?} at line {}:\n  expected: {:?}\n  actual:   {:?}\n(rewrite with RAFTLOG_REWRITE_GOLDEN=1)",
                first + 1,
                expected.lines().nth(first),
                actual.lines().nth(first)
            );
        }
    }

    fn note(c: &mut Cluster, line: &str) {
        c.trace
            .as_mut()
            .expect("tracing on")
            .push(format!("# {line}"));
    }

    /// Pre-vote, election, the no-op, one proposal committed on durable copies.
    #[test]
    fn golden_election_and_replication() {
        let mut c = Cluster::new(3);
        c.trace = Some(Vec::new());
        note(
            &mut c,
            "node 1 times out and asks for pre-votes (its term does not change)",
        );
        c.raft_mut(1).campaign_now();
        c.stabilize();
        note(&mut c, "node 1 proposes one record batch");
        c.raft_mut(1)
            .propose(Bytes::from_static(b"hello"), 1, 0)
            .unwrap();
        c.stabilize();
        note(
            &mut c,
            "a heartbeat carries the commit index to the followers",
        );
        c.tick_all();
        check_golden("election_and_replication", c.trace.as_ref().unwrap());
    }

    /// A follower that missed entries is probed, backs the leader up with hints, catches up.
    #[test]
    fn golden_follower_catch_up_with_fast_backup() {
        let logs: [&[u64]; 3] = [&[1, 2, 2], &[1, 2, 2], &[1, 1, 1, 1]];
        let mut c = Cluster::from_logs(&logs, 2, |cfg| {
            cfg.pre_vote = false;
            cfg.check_quorum = false;
        });
        c.trace = Some(Vec::new());
        note(&mut c, "node 1 (log 1 2 2) campaigns; node 3 (log 1 1 1 1) votes too: a higher last term beats a longer log (5.4.1)");
        c.raft_mut(1).campaign_now();
        c.stabilize();
        note(
            &mut c,
            "node 3's extra term-1 entries were replaced with the leader's",
        );
        check_golden(
            "follower_catch_up_with_fast_backup",
            c.trace.as_ref().unwrap(),
        );
    }
}
