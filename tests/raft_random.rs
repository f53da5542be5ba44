//! A small seeded fuzz of whole clusters through the harness: message loss, reordering,
//! duplication, partitions, slow disks, crashes that lose un-fsynced writes, compaction,
//! transfers and proposals. The harness checks election safety and that committed entries
//! never change after every Ready; this file adds log matching and liveness after healing.
//! (The full simulator with every invariant is `tests/simulation.rs`, phase 2.)

mod raft_harness;

/// Wrapped in `mod raft` so that `cargo test raft` selects it.
mod raft {
    use bytes::Bytes;
    use raftlog::raft::{Role, SplitMix64};

    use super::raft_harness::Cluster;

    /// Log matching (§5.3): if two logs hold an entry with the same index and term, they are
    /// identical up to there. Checked on written logs, over the common live range.
    fn check_log_matching(c: &Cluster) {
        let ids: Vec<u64> = c.nodes.keys().copied().collect();
        for &a in &ids {
            for &b in &ids {
                if a >= b {
                    continue;
                }
                let (sa, sb) = (&c.nodes[&a].store, &c.nodes[&b].store);
                let lo = sa.start.index.max(sb.start.index) + 1;
                let hi = sa.last_index().min(sb.last_index());
                let mut matched = false;
                for index in (lo..=hi).rev() {
                    let (ea, eb) = (sa.entry(index).unwrap(), sb.entry(index).unwrap());
                    if matched || ea.term == eb.term {
                        matched = true;
                        assert_eq!(ea, eb, "log matching broken at {index} between {a} and {b}");
                    }
                }
            }
        }
    }

    /// One random step of faults and inputs.
    fn step(c: &mut Cluster, rng: &mut SplitMix64, n: u64) {
        let ids: Vec<u64> = (1..=n).collect();
        match rng.range_u32(0, 100) {
            0..=24 => {
                for node in c.nodes.values_mut() {
                    node.raft.tick();
                }
            }
            25..=59 => {
                if let Some(leader) = c.leader() {
                    let _ = c
                        .raft_mut(leader)
                        .propose(Bytes::from_static(b"payload"), 2, 0);
                }
            }
            60..=61 => {
                let a = ids[rng.range_u32(0, n as u32) as usize];
                let b = ids[rng.range_u32(0, n as u32) as usize];
                if a != b {
                    c.cut.insert((a, b));
                }
            }
            62..=64 => c.heal(),
            65 => {
                // Crash a random node, or the leader (the interesting case for Figure 8).
                let id = match c.leader() {
                    Some(leader) if rng.range_u32(0, 2) == 0 => leader,
                    _ => ids[rng.range_u32(0, n as u32) as usize],
                };
                c.restart(id);
            }
            66..=69 => {
                let id = ids[rng.range_u32(0, n as u32) as usize];
                let node = c.nodes.get_mut(&id).unwrap();
                node.auto_persist = !node.auto_persist;
            }
            70 => {
                if let Some(leader) = c.leader() {
                    let to = ids[rng.range_u32(0, n as u32) as usize];
                    let _ = c.raft_mut(leader).transfer_leader(to);
                }
            }
            71 => {
                let id = ids[rng.range_u32(0, n as u32) as usize];
                let node = c.nodes.get_mut(&id).unwrap();
                let target = node
                    .raft
                    .commit_index()
                    .min(node.store.durable_index)
                    .saturating_sub(2);
                if target > node.store.start.index {
                    let pos = node.store.compact(target);
                    node.raft.compact(pos.index, pos.term, pos.next_offset);
                }
            }
            72..=74 => {
                // Reorder: move a random in-flight message to the back.
                if !c.net.is_empty() {
                    let i = rng.range_u32(0, c.net.len() as u32) as usize;
                    let m = c.net.remove(i).unwrap();
                    c.net.push_back(m);
                }
            }
            75..=76 => {
                // Duplicate a random in-flight message.
                if !c.net.is_empty() {
                    let i = rng.range_u32(0, c.net.len() as u32) as usize;
                    let m = c.net[i].clone();
                    c.net.push_back(m);
                }
            }
            77..=79 => {
                // Lose a random in-flight message.
                if !c.net.is_empty() {
                    let i = rng.range_u32(0, c.net.len() as u32) as usize;
                    c.net.remove(i);
                }
            }
            80..=84 => {
                let id = ids[rng.range_u32(0, n as u32) as usize];
                c.persist(id);
            }
            _ => {
                c.process_all();
                let deliver = rng.range_u32(0, 8);
                for _ in 0..deliver {
                    c.deliver_one();
                }
            }
        }
        // Every step the network makes some progress, so latency stays well below the
        // election timeout most of the time.
        c.process_all();
        for _ in 0..rng.range_u32(0, 12) {
            c.deliver_one();
        }
        c.process_all();
        check_log_matching(c);
    }

    fn run(seed: u64, n: u64, steps: u32) {
        let mut rng = SplitMix64::new(seed);
        let mut c = Cluster::with_config(n, |cfg| {
            cfg.seed ^= seed;
            // Every third seed sends one entry per message, which opens the Figure 8 window
            // (an old-term entry arriving without the new leader's no-op).
            cfg.message_bytes_max = if seed % 3 == 0 { 60 } else { 300 };
            // Every fourth seed runs the bare protocol of the paper (no pre-vote, no lease).
            cfg.pre_vote = seed % 4 != 0;
            cfg.check_quorum = seed % 4 != 0;
            cfg.inflight_msgs_max = 3;
            cfg.inflight_bytes_max = 600;
            cfg.entry_cache_bytes_max = 400;
        });
        let verbose = std::env::var("RAFTLOG_RANDOM_TRACE").is_ok_and(|v| v == seed.to_string());
        for i in 0..steps {
            step(&mut c, &mut rng, n);
            if verbose && i % 50 == 0 {
                let nodes: Vec<String> = c
                    .nodes
                    .values()
                    .map(|nd| {
                        format!(
                            "{}:{:?}/t{}/c{}/l{}/p{}/{}",
                            nd.raft.id(),
                            nd.raft.role(),
                            nd.raft.term(),
                            nd.raft.commit_index(),
                            nd.raft.last_index(),
                            nd.raft.persisted_index(),
                            if nd.auto_persist { "A" } else { "m" }
                        )
                    })
                    .collect();
                eprintln!(
                    "step {i}: cut {:?} net {} | {}",
                    c.cut,
                    c.net.len(),
                    nodes.join(" ")
                );
            }
        }
        // Heal everything and check liveness: a leader, and a new proposal committed on all.
        c.heal();
        for node in c.nodes.values_mut() {
            node.auto_persist = true;
        }
        for id in 1..=n {
            c.persist(id);
        }
        c.ticks(60);
        let leader = c
            .leader()
            .unwrap_or_else(|| panic!("seed {seed}: no leader after healing"));
        assert_eq!(c.raft(leader).role(), Role::Leader);
        let index = loop {
            match c
                .raft_mut(leader)
                .propose(Bytes::from_static(b"final"), 1, 0)
            {
                Ok(p) => break p.index,
                Err(_) => c.ticks(1),
            }
        };
        c.stabilize();
        c.ticks(5);
        for id in 1..=n {
            assert!(
                c.raft(id).commit_index() >= index,
                "seed {seed}: node {id} did not commit {index}"
            );
        }
        check_log_matching(&c);
        if std::env::var("RAFTLOG_RANDOM_VERBOSE").is_ok() {
            let terms = c.raft(leader).term();
            let restarts = c.delivered.len();
            eprintln!("seed {seed}: final {index}, ever committed {}, term {terms}, delivered {restarts}, start {}", c.committed.len(), c.raft(leader).log_start().index);
        }
    }

    #[test]
    fn raft_random_clusters_stay_safe_and_live() {
        let seeds: u64 = std::env::var("RAFTLOG_RANDOM_SEEDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(100);
        let first: u64 = std::env::var("RAFTLOG_RANDOM_FIRST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        for seed in first..first + seeds {
            let n = if seed % 2 == 0 { 3 } else { 5 };
            let result = std::panic::catch_unwind(|| run(seed, n, 2_000));
            assert!(result.is_ok(), "failed; reproduce with seed={seed} (n={n})");
        }
    }
}
