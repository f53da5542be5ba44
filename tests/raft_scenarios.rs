//! Scenario tests of the Raft core, each tied to a sentence of the Raft paper (§ numbers refer
//! to "In Search of an Understandable Consensus Algorithm", extended version) or of Ongaro's
//! dissertation. They drive whole clusters through the in-memory harness in `raft_harness`.

mod raft_harness;

/// Wrapped in `mod raft` so that `cargo test raft` selects them.
mod raft {
    use bytes::Bytes;
    use raftlog::config::RaftConfig;
    use raftlog::proto::raft_message::Body;
    use raftlog::proto::{AppendEntries, Entry, EntryKind, RaftMessage, RequestVote};
    use raftlog::raft::{
        Config, DropReason, Dropped, ProgressState, ProposeError, Raft, Role, TransferError,
    };

    use raftlog::replica::{Acks, CoreReader, ReplicaError, ReplicaLog};

    use super::raft_harness::{carries_index, log_with_terms, Answer, Cluster, Processed};

    /// Paper-test config: no pre-vote, no check-quorum (so no leader lease), as in the paper.
    fn plain(c: &mut Config) {
        c.pre_vote = false;
        c.check_quorum = false;
    }

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            term,
            index,
            kind: EntryKind::Data as i32,
            base_offset: index - 1,
            record_count: 1,
            timestamp_ms: 0,
            payload: Bytes::from_static(b"x"),
        }
    }

    fn append(term: u64, prev: (u64, u64), entries: Vec<Entry>, commit: u64) -> RaftMessage {
        let ae = AppendEntries {
            term,
            leader_id: 1,
            prev_log_index: prev.0,
            prev_log_term: prev.1,
            entries,
            leader_commit: commit,
        };
        RaftMessage {
            group_id: 1,
            from: 1,
            to: 2,
            body: Some(Body::AppendEntries(ae)),
        }
    }

    /// The configuration of the three-voter groups most scenarios run.
    fn three_voters() -> raftlog::proto::GroupConfig {
        raftlog::proto::GroupConfig {
            voters: vec![1, 2, 3],
            ..Default::default()
        }
    }

    fn follower() -> Raft {
        let mut c = super::raft_harness::config(2, &[1, 2, 3]);
        plain(&mut c);
        Raft::new(c).unwrap()
    }

    // ------------------------------------------------------------------ election

    /// §5.2: a candidate wins with votes from a majority and appends a no-op (§8).
    #[test]
    fn leader_is_elected_and_commits_a_noop() {
        let mut c = Cluster::new(3);
        c.elect(1);
        assert_eq!(c.raft(1).term(), 1);
        for id in 1..=3 {
            assert_eq!(c.raft(id).commit_index(), 1, "node {id}");
            assert_eq!(c.raft(id).leader_id(), Some(1));
        }
        assert_eq!(c.log(1).written()[0].kind(), EntryKind::Noop);
    }

    /// §5.2: election timeouts are randomized, so a follower eventually campaigns by itself.
    #[test]
    fn follower_campaigns_after_randomized_election_timeout() {
        let mut c = Cluster::new(3);
        c.ticks(25);
        let leader = c.leader().expect("a leader was elected by timeouts alone");
        c.ticks(50);
        assert_eq!(c.leader(), Some(leader), "a healthy leader stays leader");
    }

    /// §5.4.1 (election restriction): a voter denies its vote to a candidate whose log is less
    /// up to date than its own.
    #[test]
    fn election_restriction_rejects_candidate_with_stale_log() {
        let mut c = Cluster::with_config(3, plain);
        c.elect(1);
        c.cut.insert((1, 3));
        c.propose(1, b"a");
        c.isolate(1);
        c.campaign(3);
        assert_ne!(
            c.raft(3).role(),
            Role::Leader,
            "2 must refuse the stale candidate"
        );
        c.campaign(2);
        assert_eq!(
            c.raft(2).role(),
            Role::Leader,
            "the up-to-date candidate wins"
        );
    }

    /// Election safety: the vote is part of the hard state in the very Ready whose messages
    /// carry it, so the caller persists it before the reply leaves (§5.2, Figure 2).
    #[test]
    fn vote_is_in_the_ready_that_sends_it() {
        let mut c = Cluster::with_config(3, plain);
        c.raft_mut(1).campaign_now();
        let ready = c.ready_of(1);
        let hs = ready
            .hard_state()
            .expect("candidate persists term and self-vote");
        assert_eq!((hs.current_term, hs.voted_for), (1, 1));
        c.drop_all();
        for m in ready.messages {
            c.raft_mut(m.to).step(m);
        }
        let ready = c.ready_of(2);
        assert!(
            matches!(&ready.messages[0].body, Some(Body::RequestVoteResponse(r)) if r.vote_granted)
        );
        assert_eq!(ready.hard_state().expect("vote persisted").voted_for, 1);
    }

    /// §5.1: a stale-term message is ignored; a higher term makes a leader step down.
    #[test]
    fn stale_term_ignored_and_higher_term_forces_step_down() {
        let mut c = Cluster::with_config(3, plain);
        c.elect(1);
        c.campaign(2);
        assert_eq!(c.raft(2).role(), Role::Leader);
        assert_eq!(c.raft(1).role(), Role::Follower, "old leader stepped down");
        let before = (c.raft(2).term(), c.raft(2).commit_index());
        let stale = RaftMessage {
            to: 2,
            ..append(1, (0, 0), vec![], 5)
        };
        c.raft_mut(2).step(stale);
        c.stabilize();
        assert_eq!((c.raft(2).term(), c.raft(2).commit_index()), before);
        assert_eq!(c.raft(2).role(), Role::Leader);
    }

    /// §5.2: with split votes candidates time out and retry; one leader eventually wins.
    #[test]
    fn dueling_candidates_resolve_to_one_leader() {
        let mut c = Cluster::with_config(3, plain);
        c.partition(1, 3);
        c.raft_mut(1).campaign_now();
        c.raft_mut(3).campaign_now();
        c.stabilize();
        let leaders = (1..=3)
            .filter(|&id| c.raft(id).role() == Role::Leader)
            .count();
        assert_eq!(leaders, 1, "2 votes only once in term 1");
        c.heal();
        c.ticks(60);
        assert!(c.leader().is_some());
        c.propose(c.leader().unwrap(), b"after duel");
        let commit = c.raft(c.leader().unwrap()).commit_index();
        c.ticks(2);
        for id in 1..=3 {
            assert_eq!(c.raft(id).commit_index(), commit, "node {id}");
        }
    }

    /// Dissertation §9.6: dueling pre-candidates do not raise terms when neither can win.
    #[test]
    fn dueling_pre_candidates_do_not_inflate_terms() {
        let mut c = Cluster::new(3);
        c.elect(1);
        let term = c.raft(1).term();
        c.isolate(1);
        c.partition(2, 3);
        c.ticks(100);
        assert_eq!(
            c.raft(2).term(),
            term,
            "pre-votes fail without a quorum, term unchanged"
        );
        assert_eq!(c.raft(3).term(), term);
        c.heal();
        c.ticks(60);
        assert!(c.leader().is_some());
    }

    /// Dissertation §6.2 (check-quorum): a leader cut off from a majority steps down.
    #[test]
    fn leader_steps_down_without_quorum() {
        let mut c = Cluster::new(3);
        c.elect(1);
        c.isolate(1);
        c.ticks(25);
        assert_ne!(c.raft(1).role(), Role::Leader);
        assert_eq!(
            c.raft(1).term(),
            1,
            "stepping down does not change the term"
        );
        assert!(matches!(
            c.raft_mut(1).propose(Bytes::new(), 0, 0),
            Err(ProposeError::NotLeader { .. })
        ));
    }

    /// Dissertation §9.6: a node rejoining after a partition cannot depose a healthy leader.
    #[test]
    fn prevote_does_not_disrupt_healthy_leader() {
        let mut c = Cluster::new(3);
        c.elect(1);
        c.isolate(3);
        c.ticks(100);
        assert_eq!(
            c.raft(3).term(),
            1,
            "pre-vote keeps the isolated node's term"
        );
        c.heal();
        c.ticks(30);
        assert_eq!(c.leader(), Some(1));
        assert_eq!(c.raft(1).term(), 1);
        assert_eq!(c.raft(3).commit_index(), c.raft(1).commit_index());
    }

    /// Pre-vote liveness: a node with a smaller term but an up-to-date log still wins, by
    /// learning the higher term from a rejection.
    #[test]
    fn prevote_node_with_smaller_term_can_still_win() {
        let mut c = Cluster::from_logs(&[&[1, 1], &[1, 1], &[1]], 1, |_| {});
        // Node 3 has a higher term (from earlier failed real elections) but a shorter log.
        c.replace_log(3, log_with_terms(&[1], 5));
        c.isolate(1);
        c.campaign(2);
        assert_eq!(
            c.raft(2).term(),
            5,
            "2 learned the higher term from 3's rejection"
        );
        c.campaign(2);
        assert_eq!(c.raft(2).role(), Role::Leader);
        assert_eq!(c.raft(2).term(), 6);
    }

    /// Asymmetric partition: A↔C cut, both reach B. C cannot depose A (B and A are in lease),
    /// and A keeps committing through B.
    #[test]
    fn asymmetric_partition_does_not_depose_leader() {
        let mut c = Cluster::new(3);
        c.elect(1);
        c.partition(1, 3);
        c.ticks(100);
        assert_eq!(c.leader(), Some(1));
        let index = c.propose(1, b"through b");
        assert!(c.raft(1).commit_index() >= index);
    }

    // ------------------------------------------------------------------ replication

    /// §5.3: entries are replicated and committed on all members, with dense offsets.
    #[test]
    fn proposals_replicate_and_commit_everywhere() {
        let mut c = Cluster::new(3);
        c.elect(1);
        let p1 = c
            .raft_mut(1)
            .propose(Bytes::from_static(b"a"), 3, 7)
            .unwrap();
        let p2 = c
            .raft_mut(1)
            .propose(Bytes::from_static(b"b"), 2, 8)
            .unwrap();
        assert_eq!((p1.index, p1.base_offset, p2.base_offset), (2, 0, 3));
        c.stabilize();
        c.ticks(1);
        for id in 1..=3 {
            assert_eq!(c.raft(id).commit_index(), 3, "node {id}");
            assert_eq!(c.log_terms(id), vec![1, 1, 1]);
        }
        let e = &c.log(3).written()[2];
        assert_eq!((e.base_offset, e.record_count, e.timestamp_ms), (3, 2, 8));
    }

    /// A single-member group commits only after its own write is durable.
    #[test]
    fn single_node_commits_only_after_own_fsync() {
        let mut c = Cluster::new(1);
        c.nodes.get_mut(&1).unwrap().auto_persist = false;
        c.elect(1);
        assert_eq!(c.raft(1).commit_index(), 0, "noop written, not durable");
        c.persist(1);
        c.stabilize();
        assert_eq!(c.raft(1).commit_index(), 1);
        c.propose(1, b"x");
        assert_eq!(c.raft(1).commit_index(), 1);
        c.persist(1);
        c.stabilize();
        assert_eq!(c.raft(1).commit_index(), 2);
        assert_eq!(c.nodes[&1].commit_index, 2, "reported in a Ready");
    }

    /// Dissertation §10.2.1: commit counts durable copies only, the leader's included; the
    /// leader's own write runs in parallel with replication.
    #[test]
    fn commit_counts_only_durable_copies() {
        let mut c = Cluster::new(3);
        c.elect(1);
        for id in [1, 3] {
            c.nodes.get_mut(&id).unwrap().auto_persist = false;
        }
        let index = c.propose(1, b"x");
        assert_eq!(
            c.raft(2).last_index(),
            index,
            "sent to followers before the leader's fsync"
        );
        assert!(
            c.raft(1).commit_index() < index,
            "only 2 durable: no quorum yet"
        );
        c.persist(3);
        c.stabilize();
        assert_eq!(
            c.raft(1).commit_index(),
            index,
            "2 and 3 durable: quorum without the leader"
        );
    }

    /// §5.4.2 / Figure 8: a leader never commits an entry of an earlier term by counting
    /// replicas, even when it is stored on a majority.
    #[test]
    fn figure_8_entry_of_old_term_not_committed_by_counting() {
        let mut c = Cluster::with_config(5, |c| {
            plain(c);
            c.message_bytes_max = raftlog::raft::ENTRY_OVERHEAD_BYTES + 1; // one entry per message
            c.inflight_bytes_max = 1 << 20;
        });
        c.elect(1); // term 1, noop at 1 committed
                    // (a) S1 replicates index 2 (term 1) to S2 only.
        for peer in [3, 4, 5] {
            c.partition(1, peer);
        }
        c.propose(1, b"a");
        assert_eq!(c.raft(1).commit_index(), 1);
        // (b) S5 wins term 2 with S3 and S4, and writes index 2 (term 2) only locally.
        c.heal();
        c.isolate(1);
        c.partition(5, 2);
        c.raft_mut(5).campaign_now();
        c.process(5);
        while c.deliver_one().is_some() {}
        c.process(3);
        c.process(4);
        c.cut.insert((5, 3));
        c.cut.insert((5, 4));
        while c.deliver_one().is_some() {}
        assert_eq!(c.raft(5).role(), Role::Leader);
        c.stabilize();
        assert_eq!((c.raft(5).last_index(), c.raft(5).last_term()), (2, 2));
        // (c) S5 is gone; S1 wins term 3 (S2, S3, S4) and copies index 2 (term 1) to S3, but
        // not yet its own term-3 no-op at index 3.
        c.heal();
        c.isolate(5);
        c.restart(1);
        c.campaign(1); // term 2: S3, S4 already voted in term 2
        c.raft_mut(1).campaign_now(); // term 3
        c.stabilize_dropping(|m| carries_index(m, 3));
        for _ in 0..3 {
            c.tick_all_no_stabilize();
            c.stabilize_dropping(|m| carries_index(m, 3));
        }
        assert_eq!((c.raft(1).role(), c.raft(1).term()), (Role::Leader, 3));
        c.stabilize_dropping(|m| carries_index(m, 3));
        assert_eq!(
            c.log(3).term_at(2),
            Some(1),
            "index 2 (term 1) now on S1, S2, S3"
        );
        assert!(
            c.raft(1).commit_index() < 2,
            "Figure 8: not committed by counting replicas"
        );
        // (d) S1 crashes; S5 can still win (its last term 2 beats term 1) and overwrite
        // index 2. The harness checks that no committed entry ever changes.
        c.heal();
        c.isolate(1);
        c.restart(5);
        c.campaign(5); // term 3: the others already voted in term 3
        c.campaign(5); // term 4
        assert_eq!(c.raft(5).role(), Role::Leader);
        c.ticks(3);
        assert_eq!(c.log(3).term_at(2), Some(2), "uncommitted entry replaced");
        assert!(c.raft(5).commit_index() >= 3);
    }

    /// Figure 8 (e): once the leader's current-term entry is on a majority, the earlier-term
    /// entry before it commits with it.
    #[test]
    fn figure_8_current_term_entry_commits_earlier_ones() {
        let mut c = Cluster::with_config(3, plain);
        c.elect(1);
        // Index 2 (term 1) reaches 2 only, and 1 never learns it did.
        c.cut.insert((1, 3));
        c.cut.insert((2, 1));
        c.raft_mut(1)
            .propose(Bytes::from_static(b"old term"), 1, 0)
            .unwrap();
        c.stabilize();
        assert_eq!(c.log(2).term_at(2), Some(1));
        assert_eq!(c.raft(1).commit_index(), 1);
        c.heal();
        c.isolate(1);
        c.campaign(2);
        assert_eq!((c.raft(2).role(), c.raft(2).term()), (Role::Leader, 2));
        assert_eq!(
            c.raft(2).commit_index(),
            3,
            "the term-2 no-op at 3 commits index 2 too"
        );
        assert_eq!(c.log(3).term_at(2), Some(1));
    }

    /// §5.3: a new leader overwrites a follower's uncommitted entries of another term.
    #[test]
    fn new_leader_overwrites_uncommitted_follower_entries() {
        let mut c = Cluster::new(3);
        c.elect(1);
        c.isolate(1);
        c.raft_mut(1)
            .propose(Bytes::from_static(b"lost"), 1, 0)
            .unwrap();
        c.raft_mut(1)
            .propose(Bytes::from_static(b"lost"), 1, 0)
            .unwrap();
        c.stabilize();
        c.ticks(30);
        let leader = c.leader().expect("2 or 3 leads");
        assert_ne!(leader, 1);
        c.propose(leader, b"kept");
        c.heal();
        c.ticks(5);
        assert_eq!(c.raft(1).role(), Role::Follower);
        assert_eq!(c.log_terms(1), c.log_terms(leader));
        assert_eq!(c.raft(1).commit_index(), c.raft(leader).commit_index());
    }

    /// §5.3 / Figure 8 (c): a follower's uncommitted entry of a *higher* term than the
    /// leader's entry at that index is still overwritten: the leader's log wins.
    #[test]
    fn leader_overwrites_uncommitted_higher_term_follower_entry() {
        let logs: [&[u64]; 3] = [&[1, 1], &[1, 1], &[1, 2]];
        let mut c = Cluster::from_logs(&logs, 2, plain);
        c.elect(1); // votes from 2; 3 refuses (its last term 2 beats 1)
        assert_eq!(c.raft(1).term(), 3);
        c.ticks(2);
        assert_eq!(c.log_terms(3), vec![1, 1, 3]);
        assert_eq!(c.raft(3).commit_index(), 3);
    }

    /// Figure 7: followers with missing, extra and divergent entries all end up with the
    /// leader's log.
    #[test]
    fn figure_7_divergent_logs_are_repaired() {
        let logs: [&[u64]; 7] = [
            &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6],       // leader for term 8
            &[1, 1, 1, 4, 4, 5, 5, 6, 6],          // (a) missing one
            &[1, 1, 1, 4],                         // (b) missing many
            &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],    // (c) one extra uncommitted
            &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7], // (d) extra entries of term 7
            &[1, 1, 1, 4, 4, 4, 4],                // (e) extra of term 4
            &[1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],    // (f) extra of terms 2 and 3
        ];
        let mut c = Cluster::from_logs(&logs, 7, plain);
        c.elect(1);
        assert_eq!(c.raft(1).term(), 8);
        c.ticks(3);
        let expected = c.log_terms(1);
        assert_eq!(expected, vec![1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 8]);
        for id in 2..=7 {
            assert_eq!(c.log_terms(id), expected, "follower {id}");
            assert_eq!(c.raft(id).commit_index(), 11);
        }
        // Fast back-up: (f) needed only a couple of rejections, not one per entry.
        let rejections = c
            .delivered
            .iter()
            .filter(|m| {
                m.from == 7 && matches!(&m.body, Some(Body::AppendEntriesResponse(r)) if !r.success)
            })
            .count();
        assert!(rejections <= 3, "follower f rejected {rejections} times");
    }

    /// §5.3 fast back-up: the leader skips a whole conflicting term per round trip.
    #[test]
    fn fast_backup_skips_conflicting_term() {
        let logs: [&[u64]; 3] = [
            &[1, 4, 4, 4, 4, 4],
            &[1, 4, 4, 4, 4, 4],
            &[1, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3],
        ];
        let mut c = Cluster::from_logs(&logs, 4, plain);
        c.elect(1);
        c.ticks(3);
        assert_eq!(c.log_terms(3), c.log_terms(1));
        let rejections: Vec<(u64, u64)> = c
            .delivered
            .iter()
            .filter_map(|m| match &m.body {
                Some(Body::AppendEntriesResponse(r)) if m.from == 3 && !r.success => {
                    Some((r.conflict_index, r.conflict_term))
                }
                _ => None,
            })
            .collect();
        assert!(rejections.len() <= 2, "rejections: {rejections:?}");
    }

    /// Figure 2 receiver rule 5: an empty AppendEntries only commits what it verified; entries
    /// after prev_log_index may belong to another leader.
    #[test]
    fn empty_append_never_commits_past_verified_prefix() {
        let mut f = follower();
        f.step(append(
            1,
            (0, 0),
            vec![entry(1, 1), entry(2, 1), entry(3, 1)],
            0,
        ));
        // A new leader (term 2) whose own entries 2..3 differ sends a heartbeat at index 1.
        f.step(append(2, (1, 1), vec![], 3));
        assert_eq!(
            f.commit_index(),
            1,
            "entries 2..3 are not verified by this message"
        );
        f.step(append(2, (1, 1), vec![entry(2, 2)], 3));
        assert_eq!(f.commit_index(), 2);
        assert_eq!(f.last_index(), 2, "conflicting suffix truncated");
    }

    /// Reordered AppendEntries: a late, shorter message must not truncate newer entries, and a
    /// message that arrives before its predecessor is rejected, not applied.
    #[test]
    fn reordered_append_entries_are_harmless() {
        let mut f = follower();
        f.step(append(1, (2, 1), vec![entry(3, 1)], 0));
        assert_eq!(f.last_index(), 0, "gap: rejected");
        f.step(append(
            1,
            (0, 0),
            vec![entry(1, 1), entry(2, 1), entry(3, 1)],
            0,
        ));
        f.step(append(1, (0, 0), vec![entry(1, 1)], 3));
        assert_eq!(f.last_index(), 3, "stale message must not truncate");
        assert_eq!(
            f.commit_index(),
            1,
            "commit capped by that message's own prefix"
        );
    }

    /// A stale write completion (its term no longer matches the entry at that index) is
    /// dropped, so a truncated write is never counted durable.
    #[test]
    fn stale_persisted_report_is_dropped() {
        let mut f = follower();
        f.step(append(
            1,
            (0, 0),
            vec![entry(1, 1), entry(2, 1), entry(3, 1)],
            1,
        ));
        let _ = f.ready(&raftlog::raft::NoLog);
        f.step(append(2, (1, 1), vec![entry(2, 2), entry(3, 2)], 1));
        let ready = f.ready(&raftlog::raft::NoLog);
        assert_eq!(ready.truncate_from, Some(2));
        f.persisted(3, 1); // the old write completes late
        assert_eq!(f.persisted_index(), 0, "stale completion dropped");
        f.persisted(3, 2);
        assert_eq!(f.persisted_index(), 3);
        let ready = f.ready(&raftlog::raft::NoLog);
        let durable = ready.messages.iter().find_map(|m| match &m.body {
            Some(Body::AppendEntriesResponse(r)) => Some(r.durable_index),
            _ => None,
        });
        assert_eq!(
            durable,
            Some(3),
            "follower reports durability once it happens"
        );
    }

    /// A crash loses un-fsynced entries; the node restarts from (hard state, durable log) and
    /// catches up; committed entries are never lost because they were durable on a quorum.
    #[test]
    fn crash_loses_unfsynced_entries_and_recovers() {
        let mut c = Cluster::new(3);
        c.elect(1);
        c.nodes.get_mut(&3).unwrap().auto_persist = false;
        c.propose(1, b"a");
        c.propose(1, b"b");
        assert_eq!(c.raft(3).last_index(), 3);
        c.restart(3);
        assert_eq!(c.raft(3).last_index(), 1, "only the durable no-op survived");
        c.nodes.get_mut(&3).unwrap().auto_persist = true;
        c.ticks(3);
        assert_eq!(c.log_terms(3), c.log_terms(1));
        assert_eq!(c.raft(3).commit_index(), 3);
    }

    /// A leader that crashes with un-fsynced entries loses them, and the rest elect a leader
    /// that never committed them.
    #[test]
    fn leader_crash_before_fsync_loses_only_uncommitted_entries() {
        let mut c = Cluster::new(3);
        c.elect(1);
        for id in 1..=3 {
            c.nodes.get_mut(&id).unwrap().auto_persist = false;
        }
        c.raft_mut(1)
            .propose(Bytes::from_static(b"x"), 1, 0)
            .unwrap();
        c.stabilize();
        assert_eq!(c.raft(1).commit_index(), 1);
        for id in 1..=3 {
            c.restart(id);
            c.nodes.get_mut(&id).unwrap().auto_persist = true;
        }
        c.ticks(40);
        let leader = c.leader().expect("new leader");
        c.propose(leader, b"y");
        for id in 1..=3 {
            assert_eq!(c.log_terms(id), c.log_terms(leader));
        }
    }

    // ------------------------------------------------------------------ flow control

    /// Progress starts in probe, moves to replicate on the first success, and pipelines up
    /// to the in-flight window, then pauses.
    #[test]
    fn flow_control_probe_replicate_and_full_window() {
        let mut c = Cluster::with_config(3, |c| {
            c.message_bytes_max = raftlog::raft::ENTRY_OVERHEAD_BYTES + 1;
            c.inflight_msgs_max = 2;
        });
        c.raft_mut(1).campaign_now();
        // Deliver the election only: progress is fresh, in probe.
        while c.raft(1).role() != Role::Leader {
            c.process_all();
            while c.deliver_one().is_some() {}
        }
        assert_eq!(c.raft(1).role(), Role::Leader);
        assert_eq!(c.raft(1).progress(2).unwrap().state, ProgressState::Probe);
        c.stabilize();
        assert_eq!(
            c.raft(1).progress(2).unwrap().state,
            ProgressState::Replicate
        );
        // Responses from 2 are cut: the leader sends at most 2 messages, then pauses.
        c.cut.insert((2, 1));
        for _ in 0..5 {
            c.raft_mut(1)
                .propose(Bytes::from_static(b"p"), 1, 0)
                .unwrap();
        }
        c.process(1);
        let to_2 = c
            .net
            .iter()
            .filter(|m| m.to == 2 && matches!(m.body, Some(Body::AppendEntries(_))))
            .count();
        assert_eq!(to_2, 2, "window of 2 messages");
        assert!(c.raft(1).progress(2).unwrap().is_paused(2, u64::MAX));
        c.heal();
        c.stabilize();
        c.ticks(2);
        assert_eq!(c.log_terms(2), c.log_terms(1));
    }

    /// A follower that lost un-fsynced entries is probed one message at a time until the
    /// leader finds where the logs match again.
    #[test]
    fn probing_follower_gets_one_message_at_a_time() {
        let mut c = Cluster::new(3);
        c.elect(1);
        c.nodes.get_mut(&3).unwrap().auto_persist = false;
        c.propose(1, b"a");
        c.propose(1, b"b");
        c.restart(3);
        c.nodes.get_mut(&3).unwrap().auto_persist = true;
        c.tick_all_no_stabilize();
        c.process_all();
        while c.deliver_one().is_some() {}
        c.process_all(); // 3 rejects the heartbeat at index 3
        while c.deliver_one().is_some() {}
        assert_eq!(c.raft(1).progress(3).unwrap().state, ProgressState::Probe);
        c.raft_mut(1)
            .propose(Bytes::from_static(b"c"), 1, 0)
            .unwrap();
        c.process(1);
        let to_3 = c
            .net
            .iter()
            .filter(|m| m.to == 3 && carries_index(m, 4))
            .count();
        assert_eq!(to_3, 1, "one probe in flight");
        c.raft_mut(1)
            .propose(Bytes::from_static(b"d"), 1, 0)
            .unwrap();
        c.process(1);
        let to_3 = c
            .net
            .iter()
            .filter(|m| {
                m.to == 3
                    && matches!(&m.body, Some(Body::AppendEntries(ae)) if !ae.entries.is_empty())
            })
            .count();
        assert_eq!(to_3, 1, "paused until the probe is answered");
        c.stabilize();
        c.ticks(2);
        assert_eq!(c.log_terms(3), c.log_terms(1));
    }

    /// Uncommitted bytes are capped: a leader without quorum refuses new proposals.
    #[test]
    fn uncommitted_bytes_cap_refuses_proposals() {
        let mut c = Cluster::with_config(3, |c| c.uncommitted_bytes_max = 500);
        c.elect(1);
        c.isolate(1);
        let mut accepted = 0;
        let err = loop {
            match c.raft_mut(1).propose(Bytes::from_static(&[0; 100]), 1, 0) {
                Ok(_) => accepted += 1,
                Err(e) => break e,
            }
        };
        assert_eq!(accepted, 3);
        assert!(matches!(
            err,
            ProposeError::UncommittedBytesFull {
                uncommitted_bytes: 444,
                ..
            }
        ));
        c.heal();
        c.ticks(2);
        assert_eq!(c.raft(1).uncommitted_bytes(), 0, "budget freed by commit");
    }

    /// Proposals to a follower are refused with a hint naming the leader.
    #[test]
    fn proposal_on_follower_refused_with_leader_hint() {
        let mut c = Cluster::new(3);
        c.elect(1);
        let err = c.raft_mut(2).propose(Bytes::new(), 0, 0).unwrap_err();
        assert_eq!(
            err,
            ProposeError::NotLeader {
                leader_hint: Some(1)
            }
        );
    }

    /// Entries a lagging follower needs but the cache has evicted are read through the
    /// caller's `LogReader`, not kept in memory.
    #[test]
    fn lagging_follower_served_through_log_reader() {
        let mut c = Cluster::with_config(3, |c| c.entry_cache_bytes_max = 200);
        c.elect(1);
        c.isolate(3);
        for _ in 0..20 {
            c.raft_mut(1)
                .propose(Bytes::from_static(&[7; 50]), 1, 0)
                .unwrap();
            c.stabilize();
        }
        assert!(
            c.raft(1).cache_bytes() <= 200,
            "cache bounded: {}",
            c.raft(1).cache_bytes()
        );
        // The leader's commit does not move while 3 catches up, so every read of its log
        // from here on is the replication reader's.
        let reads_before = c.log(1).entry_reads();
        c.heal();
        c.ticks(10);
        assert!(
            c.log(1).entry_reads() > reads_before,
            "old entries came from the reader"
        );
        assert_eq!(c.log_terms(3), c.log_terms(1));
        assert_eq!(c.raft(3).commit_index(), 21);
    }

    // ------------------------------------------------------------------ snapshots

    /// §7: a follower that needs entries before the leader's log start gets an
    /// InstallSnapshot (the start position) and then the entries after it.
    #[test]
    fn slow_follower_after_compaction_gets_snapshot() {
        let mut c = Cluster::new(3);
        c.elect(1);
        c.isolate(3);
        for _ in 0..8 {
            c.propose(1, b"r");
        }
        for id in [1, 2] {
            assert_eq!(c.compact(id, 6).index, 6);
        }
        c.heal();
        c.ticks(5);
        assert!(c
            .delivered
            .iter()
            .any(|m| m.to == 3 && matches!(m.body, Some(Body::InstallSnapshot(_)))));
        assert_eq!(c.raft(3).log_start().index, 6);
        assert_eq!(
            c.raft(3).log_start().next_offset,
            5,
            "offsets stay dense (no-op has none)"
        );
        assert_eq!(c.raft(3).last_index(), 9);
        assert_eq!(c.raft(3).commit_index(), 9);
        assert_eq!(c.log_terms(3), c.log_terms(1));
    }

    /// Compaction racing with an in-flight snapshot: the leader compacts further while the
    /// follower installs the older position; it then gets the newer one.
    #[test]
    fn compaction_racing_with_inflight_snapshot() {
        let mut c = Cluster::new(3);
        c.elect(1);
        c.isolate(3);
        for _ in 0..8 {
            c.propose(1, b"r");
        }
        assert_eq!(c.compact(1, 4).index, 4);
        c.heal();
        let snapshot_4 =
            |b: &Body| matches!(b, Body::InstallSnapshot(s) if s.last_included_index == 4);
        for _ in 0..20 {
            c.tick_all_no_stabilize();
            c.process_all();
            if c.in_flight(snapshot_4) > 0 {
                break;
            }
            while c.deliver_one().is_some() {}
        }
        assert_eq!(c.in_flight(snapshot_4), 1);
        assert_eq!(c.compact(1, 7).index, 7);
        c.ticks(25);
        assert_eq!(c.log_terms(3), c.log_terms(1));
        assert_eq!(c.raft(3).commit_index(), c.raft(1).commit_index());
    }

    // ------------------------------------------------------------------ leadership transfer

    /// Dissertation §3.10: transfer to an up-to-date follower via TimeoutNow.
    #[test]
    fn leadership_transfer_to_up_to_date_follower() {
        let mut c = Cluster::new(3);
        c.elect(1);
        c.raft_mut(1).transfer_leader(2).unwrap();
        c.stabilize();
        assert_eq!(c.leader(), Some(2));
        assert_eq!(c.raft(2).term(), 2);
        assert_eq!(
            c.raft_mut(1).transfer_leader(3),
            Err(TransferError::NotLeader)
        );
    }

    /// Transfer to a slow follower: it is caught up first, proposals are refused meanwhile.
    #[test]
    fn leadership_transfer_to_slow_follower() {
        let mut c = Cluster::new(3);
        c.elect(1);
        c.cut.insert((1, 3));
        c.propose(1, b"a");
        c.propose(1, b"b");
        assert_eq!(c.raft(3).last_index(), 1);
        c.raft_mut(1).transfer_leader(3).unwrap();
        let err = c.raft_mut(1).propose(Bytes::new(), 0, 0).unwrap_err();
        assert_eq!(err, ProposeError::Transferring { transferee: 3 });
        c.heal();
        c.ticks(8);
        assert_eq!(c.leader(), Some(3));
        assert_eq!(c.raft(3).log_start().index, 0);
        assert!(c.raft(3).last_index() >= 4);
    }

    /// A transfer that cannot complete is abandoned after an election timeout.
    #[test]
    fn leadership_transfer_abandoned_on_timeout() {
        let mut c = Cluster::new(3);
        c.elect(1);
        c.isolate(3);
        c.raft_mut(1).transfer_leader(3).unwrap();
        c.ticks(9);
        assert_eq!(c.raft(1).transferee(), Some(3));
        c.ticks(1);
        assert_eq!(c.raft(1).transferee(), None);
        assert_eq!(c.leader(), Some(1));
        c.propose(1, b"accepted again");
    }

    /// Dissertation §4.2.3: a member that heard from a leader within the election timeout
    /// ignores RequestVote, unless it is part of a leadership transfer.
    #[test]
    fn vote_refused_while_leader_heard_recently() {
        let mut c = Cluster::new(3);
        c.elect(1);
        let vote = |transfer: bool| {
            let rv = raftlog::proto::RequestVote {
                term: 5,
                candidate_id: 2,
                last_log_index: 10,
                last_log_term: 4,
                pre_vote: false,
                leadership_transfer: transfer,
            };
            RaftMessage {
                group_id: 1,
                from: 2,
                to: 3,
                body: Some(Body::RequestVote(rv)),
            }
        };
        c.raft_mut(3).step(vote(false));
        assert_eq!(c.raft(3).term(), 1, "ignored: leader 1 was heard recently");
        c.raft_mut(3).step(vote(true));
        assert_eq!((c.raft(3).term(), c.raft(3).voted_for()), (5, Some(2)));
    }

    /// §5.2: "each server will vote for at most one candidate in a given term": the vote is
    /// durable, so a restarted member does not vote again in the same term.
    #[test]
    fn restarted_member_does_not_vote_twice_in_a_term() {
        let mut c = Cluster::with_config(3, plain);
        c.partition(1, 3);
        c.raft_mut(1).campaign_now();
        // No AppendEntries: 2's log stays as empty as 3's, so only the vote can refuse 3.
        c.stabilize_dropping(|m| matches!(m.body, Some(Body::AppendEntries(_))));
        assert_eq!(c.raft(2).voted_for(), Some(1));
        assert_eq!(c.raft(2).last_index(), 0);
        c.restart(2);
        assert_eq!((c.raft(2).term(), c.raft(2).voted_for()), (1, Some(1)));
        c.isolate(1);
        // 3 is still at term 0 and campaigns for term 1: 2 must refuse.
        c.raft_mut(3).campaign_now();
        c.stabilize();
        assert_ne!(c.raft(3).role(), Role::Leader);
    }

    /// Leadership can only be transferred by the leader, to another voter.
    #[test]
    fn leadership_transfer_validates_target() {
        let mut c = Cluster::new(3);
        c.elect(1);
        assert_eq!(
            c.raft_mut(1).transfer_leader(1),
            Err(TransferError::NotAVoter)
        );
        assert_eq!(
            c.raft_mut(1).transfer_leader(9),
            Err(TransferError::NotAVoter)
        );
        assert_eq!(
            c.raft_mut(2).transfer_leader(3),
            Err(TransferError::NotLeader)
        );
    }

    /// Retention moves the log start; the term index and cache forget what is gone.
    #[test]
    fn compaction_moves_log_start() {
        let mut c = Cluster::new(1);
        c.elect(1);
        for _ in 0..5 {
            c.propose(1, b"r");
        }
        let pos = c.compact(1, 4);
        assert_eq!(c.raft(1).log_start(), pos);
        assert_eq!(c.raft(1).term_at(3), None);
        assert_eq!(c.raft(1).term_at(4), Some(1));
        assert_eq!(c.raft(1).term_runs()[0].first_index, 5);
        c.stabilize();
        assert_eq!(
            c.log(1).hard_state().log_start_index,
            5,
            "start persisted as the first index still in the log"
        );
        assert_eq!(c.raft(1).hard_state().log_start_index, 5);
        assert_eq!(c.raft(1).hard_state().log_start_term, pos.term);
        c.restart(1);
        assert_eq!(c.raft(1).log_start(), pos);
        assert_eq!(c.raft(1).last_index(), 6);
    }

    // ------------------------------------------------------------------ restart

    /// Restoring rebuilds the term index from the durable log with a handful of reads.
    #[test]
    fn restore_rebuilds_term_index_and_offsets() {
        let log = log_with_terms(&[1, 1, 2, 2, 2, 5], 5);
        let state = raftlog::raft::RestoredState {
            hard_state: *log.hard_state(),
            last_index: 6,
            ..Default::default()
        };
        let mut config = super::raft_harness::config(1, &[1]);
        config.seed = 3;
        let mut r = Raft::restore(config, state, &CoreReader(&log)).unwrap();
        let runs: Vec<(u64, u64)> = r
            .term_runs()
            .iter()
            .map(|t| (t.first_index, t.term))
            .collect();
        assert_eq!(runs, vec![(1, 1), (3, 2), (6, 5)]);
        assert_eq!((r.term(), r.commit_index(), r.persisted_index()), (5, 0, 6));
        r.campaign_now();
        let p = r.propose(Bytes::from_static(b"z"), 4, 0).unwrap();
        assert_eq!((p.index, p.term, p.base_offset), (8, 6, 6));
    }

    /// The hard state follows the schema: `log_start_index` is the first index still in the
    /// log (1 for a fresh log), `log_start_term` the term of the entry just before it.
    #[test]
    fn hard_state_log_start_is_first_index_in_log() {
        let r = follower();
        let hs = r.hard_state();
        assert_eq!((hs.log_start_index, hs.log_start_term), (1, 0), "fresh log");
        assert_eq!(r.log_start().index, 0, "nothing covered by a snapshot yet");

        // A follower installing a snapshot at 7@2 persists a log that starts at 8.
        let mut r = follower();
        let snap = raftlog::proto::InstallSnapshot {
            term: 2,
            leader_id: 1,
            last_included_index: 7,
            last_included_term: 2,
            next_offset: 70,
            data: Bytes::new(),
            config: Some(Box::new(three_voters())),
        };
        r.step(RaftMessage {
            group_id: 1,
            from: 1,
            to: 2,
            body: Some(Body::InstallSnapshot(snap)),
        });
        let ready = r.ready(&raftlog::raft::NoLog);
        let hs = ready.hard_state.expect("log start persisted");
        assert_eq!(
            (hs.log_start_index, hs.log_start_term, hs.log_start_offset),
            (8, 2, 70)
        );
        assert_eq!(ready.snapshot.map(|p| p.index), Some(7));

        // And it restarts from exactly that hard state.
        let state = raftlog::raft::RestoredState {
            hard_state: hs,
            last_index: 7,
            ..Default::default()
        };
        let mut config = super::raft_harness::config(2, &[1, 2, 3]);
        plain(&mut config);
        let r = Raft::restore(config, state, &raftlog::raft::NoLog).unwrap();
        assert_eq!(
            (r.log_start().index, r.last_index(), r.last_term()),
            (7, 7, 2)
        );
        assert_eq!(r.hard_state(), hs);
    }

    /// A hard state claiming log start 0 (indexes start at 1), or a log that ends before its
    /// start, is refused instead of being trusted.
    #[test]
    fn restore_refuses_inconsistent_log_start() {
        let config = super::raft_harness::config(1, &[1, 2, 3]);
        let mut state = raftlog::raft::RestoredState::default();
        state.hard_state.log_start_index = 0;
        assert!(matches!(
            Raft::restore(config.clone(), state, &raftlog::raft::NoLog),
            Err(raftlog::raft::RestoreError::Inconsistent { .. })
        ));
        let mut state = raftlog::raft::RestoredState::default();
        state.hard_state.log_start_index = 5;
        state.last_index = 3;
        assert!(matches!(
            Raft::restore(config, state, &raftlog::raft::NoLog),
            Err(raftlog::raft::RestoreError::Inconsistent { .. })
        ));
    }

    /// Raft on a damaged disk: a member whose recovery dropped entries it had acknowledged
    /// (storage's `TailState::CorruptMiddle`) could otherwise elect a leader that misses a
    /// committed entry. The schedule: 1 leads, `c` commits on {1, 2} while 3 is cut off; 2
    /// restarts without `c`; 1 is cut off. Had 2 voted, 3 (without `c`) would win and overwrite
    /// the committed `c`. With voting withheld, 2 neither (pre-)votes nor campaigns, so no
    /// leader without `c` is elected; once 1 is back, 2 catches up, votes again, and every
    /// later leader holds `c`.
    #[test]
    fn member_that_lost_acknowledged_entries_does_not_vote_until_caught_up() {
        let mut c = Cluster::new(3);
        c.elect(1);
        c.propose(1, b"a");
        c.isolate(3);
        let lost = c.propose(1, b"c");
        assert!(c.raft(1).commit_index() >= lost, "c committed on 1 and 2");
        let lost_term = c.log(1).term_at(lost).unwrap();

        c.restart_losing(2, lost - 1);
        assert!(c.raft(2).voting_withheld());
        c.heal();
        c.isolate(1);
        c.campaign(3);
        c.campaign(2);
        c.ticks(200);
        for id in [2, 3] {
            assert_ne!(
                c.raft(id).role(),
                Role::Leader,
                "node {id} leads without the committed entry {lost}"
            );
        }
        assert!(c.raft(2).voting_withheld(), "no leader to catch up with");
        assert_eq!(c.log(3).term_at(lost), None, "3 never got c");

        c.heal();
        c.ticks(200);
        let leader = c.leader().expect("a leader once 1 is back");
        assert!(!c.raft(2).voting_withheld(), "2 caught up with {leader}");
        for id in 1..=3 {
            assert_eq!(c.log(id).term_at(lost), Some(lost_term), "c on {id}");
        }

        // 2 votes again: without the current leader, 2 and 3 elect one of themselves.
        c.isolate(leader);
        c.ticks(200);
        let next = [2, 3]
            .into_iter()
            .filter(|&id| id != leader)
            .find(|&id| c.raft(id).role() == Role::Leader);
        let next = next.expect("the other two elect a leader with 2's vote");
        assert_eq!(c.log(next).term_at(lost), Some(lost_term));
    }

    /// A single-voter group has nobody to catch up with: withholding would only stop it.
    #[test]
    fn single_voter_never_withholds_its_vote() {
        let config = super::raft_harness::config(1, &[1]);
        let state = raftlog::raft::RestoredState {
            voting_withheld: Some(3),
            ..Default::default()
        };
        let r = Raft::restore(config, state, &raftlog::raft::NoLog).unwrap();
        assert!(!r.voting_withheld());
    }

    // ------------------------------------------------------------------ malformed peer input

    fn msg(from: u64, to: u64, body: Body) -> RaftMessage {
        RaftMessage {
            group_id: 1,
            from,
            to,
            body: Some(body),
        }
    }

    fn ok_response(term: u64, appended_index: u64, durable_index: u64) -> Body {
        Body::AppendEntriesResponse(raftlog::proto::AppendEntriesResponse {
            term,
            success: true,
            appended_index,
            durable_index,
            conflict_index: 0,
            conflict_term: 0,
            last_log_index: appended_index,
            rejected_index: 0,
        })
    }

    /// Feeds `m` to `id` and asserts it was dropped for `reason` without changing the
    /// member's term, role, commit index or log.
    fn assert_dropped(c: &mut Cluster, id: u64, m: RaftMessage, reason: DropReason) {
        let r = c.raft(id);
        let before = (r.term(), r.role(), r.commit_index(), r.last_index());
        let count = r.diagnostics().dropped_messages_count;
        let from = m.from;
        c.raft_mut(id).step(m);
        let r = c.raft(id);
        assert_eq!(
            (r.term(), r.role(), r.commit_index(), r.last_index()),
            before,
            "a dropped message changed node {id}"
        );
        let d = r.diagnostics();
        assert_eq!(
            d.dropped_messages_count,
            count + 1,
            "not counted: {reason:?}"
        );
        assert_eq!(d.last_dropped, Some(Dropped { from, reason }));
        c.stabilize();
    }

    /// A leader drops answers claiming indexes it never had, impossible conflict hints, and
    /// a second leader in its own term, instead of panicking (or trusting them).
    #[test]
    fn leader_drops_impossible_answers_without_panicking() {
        let mut c = Cluster::new(3);
        c.elect(1);
        c.propose(1, b"a");
        let (term, last) = (c.raft(1).term(), c.raft(1).last_index());
        let beyond = [
            ok_response(term, last + 5, 0),
            ok_response(term, last, last + 1),
            ok_response(term, u64::MAX, u64::MAX),
            Body::InstallSnapshotResponse(raftlog::proto::InstallSnapshotResponse {
                term,
                last_log_index: last + 1,
            }),
        ];
        for body in beyond {
            assert_dropped(&mut c, 1, msg(2, 1, body), DropReason::IndexBeyondLog);
        }
        for (conflict_index, conflict_term) in [(0, 0), (0, 1), (3, term + 1)] {
            let reject = Body::AppendEntriesResponse(raftlog::proto::AppendEntriesResponse {
                term,
                success: false,
                appended_index: 0,
                durable_index: 0,
                conflict_index,
                conflict_term,
                last_log_index: 0,
                rejected_index: 0,
            });
            assert_dropped(&mut c, 1, msg(3, 1, reject), DropReason::BadConflictHint);
        }
        let second_leader = append(term, (last, term), vec![entry(last + 1, term)], last + 1);
        let second_leader = RaftMessage {
            from: 2,
            to: 1,
            ..second_leader
        };
        assert_dropped(&mut c, 1, second_leader, DropReason::SecondLeader);
        let timeout_now = Body::TimeoutNow(raftlog::proto::TimeoutNow { term, leader_id: 3 });
        assert_dropped(&mut c, 1, msg(3, 1, timeout_now), DropReason::SecondLeader);
        // Conflict hints far out of range are only hints: clamped, never trusted past match.
        let reject = Body::AppendEntriesResponse(raftlog::proto::AppendEntriesResponse {
            term,
            success: false,
            appended_index: 0,
            durable_index: 0,
            conflict_index: u64::MAX,
            conflict_term: 0,
            last_log_index: u64::MAX,
            rejected_index: 0,
        });
        c.raft_mut(1).step(msg(2, 1, reject));
        c.stabilize();
        assert_eq!(c.raft(2).last_index(), c.raft(1).last_index());
        assert_eq!(c.propose(1, b"b"), last + 1, "the group still commits");
        assert_eq!(c.raft(3).commit_index(), last + 1);
    }

    /// A snapshot answer while no snapshot is in flight (a duplicate, or from nowhere) does
    /// not claim a match for the follower.
    #[test]
    fn snapshot_response_from_nowhere_is_ignored() {
        let mut c = Cluster::new(3);
        c.elect(1);
        c.isolate(3);
        for _ in 0..3 {
            c.propose(1, b"a");
        }
        let term = c.raft(1).term();
        let before = c.raft(1).progress(3).unwrap().match_index;
        let last = c.raft(1).last_index();
        c.raft_mut(1).step(msg(
            3,
            1,
            Body::InstallSnapshotResponse(raftlog::proto::InstallSnapshotResponse {
                term,
                last_log_index: last,
            }),
        ));
        assert_eq!(c.raft(1).progress(3).unwrap().match_index, before);
        c.heal();
        // The lost pipelined entries are noticed after half an election timeout.
        c.ticks(10);
        assert_eq!(c.raft(3).commit_index(), c.raft(1).commit_index());
    }

    /// Followers drop entries that are not contiguous, whose terms go backwards or exceed
    /// the leader's, impossible snapshots, term-0 and term-MAX messages, messages from
    /// non-voters or for other groups, and TimeoutNow from someone other than the leader.
    #[test]
    fn follower_drops_malformed_messages_without_panicking() {
        let mut c = Cluster::with_config(3, plain);
        c.elect(1);
        c.propose(1, b"a");
        let (term, last) = (c.raft(1).term(), c.raft(1).last_index());
        let to2 = |m: RaftMessage| RaftMessage { to: 2, ..m };
        let gap = append(term, (last, term), vec![entry(last + 2, term)], 0);
        assert_dropped(&mut c, 2, to2(gap), DropReason::MalformedEntries);
        let backwards = append(
            term,
            (last, term),
            vec![entry(last + 1, term), entry(last + 2, term - 1)],
            0,
        );
        assert_dropped(&mut c, 2, to2(backwards), DropReason::MalformedEntries);
        let future_term = append(term, (last, term), vec![entry(last + 1, term + 1)], 0);
        assert_dropped(&mut c, 2, to2(future_term), DropReason::MalformedEntries);
        let below_prev = append(term, (last, term), vec![entry(last + 1, term - 1)], 0);
        if term > 1 {
            assert_dropped(&mut c, 2, to2(below_prev), DropReason::MalformedEntries);
        }
        let overflow = append(term, (u64::MAX, term), vec![entry(1, term)], 0);
        assert_dropped(&mut c, 2, to2(overflow), DropReason::MalformedEntries);
        let prev_zero = append(term, (0, term), vec![entry(1, term)], 0);
        assert_dropped(&mut c, 2, to2(prev_zero), DropReason::MalformedEntries);
        for (index, snap_term) in [(5, term + 1), (5, 0), (0, 1)] {
            let snap = Body::InstallSnapshot(raftlog::proto::InstallSnapshot {
                term,
                leader_id: 1,
                last_included_index: index,
                last_included_term: snap_term,
                next_offset: 0,
                data: Bytes::new(),
                config: Some(Box::new(three_voters())),
            });
            assert_dropped(&mut c, 2, msg(1, 2, snap), DropReason::MalformedSnapshot);
        }
        // A snapshot must say which configuration is in force at its position.
        for config in [None, Some(Box::default())] {
            let snap = Body::InstallSnapshot(raftlog::proto::InstallSnapshot {
                term,
                leader_id: 1,
                last_included_index: 1,
                last_included_term: 1,
                next_offset: 0,
                data: Bytes::new(),
                config,
            });
            assert_dropped(&mut c, 2, msg(1, 2, snap), DropReason::MalformedSnapshot);
        }
        let term_zero = append(0, (0, 0), vec![], 0);
        assert_dropped(&mut c, 2, to2(term_zero), DropReason::BadTerm);
        let term_max = append(u64::MAX, (last, term), vec![], 0);
        assert_dropped(&mut c, 2, to2(term_max), DropReason::BadTerm);
        let term_huge = append(raftlog::raft::TERM_MAX + 1, (last, term), vec![], 0);
        assert_dropped(&mut c, 2, to2(term_huge), DropReason::BadTerm);
        let vote = Body::RequestVote(raftlog::proto::RequestVote {
            term: term + 1,
            candidate_id: 3,
            last_log_index: 9,
            last_log_term: term + 2,
            pre_vote: false,
            leadership_transfer: false,
        });
        assert_dropped(&mut c, 2, msg(3, 2, vote), DropReason::MalformedVoteRequest);
        // A configuration entry holds a configuration a group can run with, and no records.
        let config_entry = |payload: Vec<u8>, record_count: u32| Entry {
            kind: EntryKind::Config as i32,
            payload: Bytes::from(payload),
            record_count,
            ..entry(last + 1, term)
        };
        let encode = |config: raftlog::proto::GroupConfig| {
            use prost::Message as _;
            config.encode_to_vec()
        };
        let no_voter = raftlog::proto::GroupConfig {
            learners: vec![4],
            ..Default::default()
        };
        let voter_and_learner = raftlog::proto::GroupConfig {
            voters: vec![1, 2, 3],
            learners: vec![3],
            ..Default::default()
        };
        for bad in [
            config_entry(vec![0xff, 0xff], 0),
            config_entry(encode(no_voter), 0),
            config_entry(encode(voter_and_learner), 0),
            config_entry(encode(three_voters()), 1),
        ] {
            let message = append(term, (last, term), vec![bad], 0);
            assert_dropped(&mut c, 2, to2(message), DropReason::MalformedEntries);
        }
        let from_nobody = RaftMessage {
            from: 0,
            ..to2(append(term + 1, (last, term), vec![], 0))
        };
        assert_dropped(&mut c, 2, from_nobody, DropReason::WrongRecipient);
        let other_group = RaftMessage {
            group_id: 7,
            ..to2(append(term + 1, (last, term), vec![], 0))
        };
        assert_dropped(&mut c, 2, other_group, DropReason::WrongGroup);
        let to_other = RaftMessage {
            to: 3,
            ..append(term + 1, (last, term), vec![], 0)
        };
        assert_dropped(&mut c, 2, to_other, DropReason::WrongRecipient);
        let empty = RaftMessage {
            body: None,
            ..to2(append(term, (0, 0), vec![], 0))
        };
        assert_dropped(&mut c, 2, empty, DropReason::NoBody);
        let timeout_now = Body::TimeoutNow(raftlog::proto::TimeoutNow { term, leader_id: 3 });
        assert_dropped(
            &mut c,
            2,
            msg(3, 2, timeout_now),
            DropReason::TimeoutNowNotFromLeader,
        );
        // None of it disturbed the group.
        assert_eq!(c.leader(), Some(1));
        assert_eq!(c.propose(1, b"b"), last + 1);
        assert_eq!(c.raft(2).commit_index(), last + 1);
    }

    /// A rejection names the `prev_log_index` it rejects (`rejected_index`): while probing,
    /// a late rejection of an index above the probe in flight (a reordered or duplicated
    /// answer to an older message) does not cost another probe.
    #[test]
    fn stale_rejection_while_probing_costs_no_probe() {
        let mut c = Cluster::new(3);
        c.elect(1);
        c.isolate(3);
        for _ in 0..5 {
            c.propose(1, b"a");
        }
        let term = c.raft(1).term();
        let reject = |rejected_index: u64| {
            msg(
                3,
                1,
                Body::AppendEntriesResponse(raftlog::proto::AppendEntriesResponse {
                    term,
                    success: false,
                    appended_index: 0,
                    durable_index: 0,
                    conflict_index: 2,
                    conflict_term: 0,
                    last_log_index: 1,
                    rejected_index,
                }),
            )
        };
        // The answer to the first pipelined message: back to probing from index 2.
        c.raft_mut(1).step(reject(1));
        let pr = c.raft(1).progress(3).unwrap().clone();
        assert_eq!(
            (pr.state, pr.next_index, pr.probe_sent),
            (ProgressState::Probe, 2, false)
        );
        let to_3 = |r: &Processed| r.messages.iter().filter(|m| m.to == 3).count();
        let ready = c.ready_of(1);
        assert_eq!(to_3(&ready), 1, "one probe");
        // Late answers to the later pipelined messages: ignored, no second probe.
        for stale in [2, 4] {
            c.raft_mut(1).step(reject(stale));
            let ready = c.ready_of(1);
            assert_eq!(
                to_3(&ready),
                0,
                "stale rejection of prev {stale} probed again"
            );
            assert!(c.raft(1).progress(3).unwrap().probe_sent);
        }
        c.heal();
        c.ticks(3);
        assert_eq!(c.raft(3).commit_index(), c.raft(1).commit_index());
    }

    /// Peer input never panics, whatever it says: seeded random messages (well-formed,
    /// malformed, stale, from the future, for other groups) fed to every role. Byzantine
    /// input may of course mislead the members (Raft does not tolerate lying peers); the
    /// point is that a server survives it and its own invariants hold.
    #[test]
    fn random_peer_messages_never_panic() {
        use raftlog::proto::{
            AppendEntriesResponse, InstallSnapshot, InstallSnapshotResponse, RequestVote,
            RequestVoteResponse, TimeoutNow,
        };
        use raftlog::rng::SplitMix64;
        let mut rng = SplitMix64::new(4);
        let (mut dropped, mut moved_terms) = (0, 0);
        for round in 0..40 {
            let mut c = Cluster::new(3);
            c.elect(1);
            for _ in 0..(round % 7) {
                c.propose(1, b"a");
            }
            if round % 3 == 0 {
                c.raft_mut(3).campaign_now();
            }
            let (t, last) = (c.raft(1).term(), c.raft(1).last_index());
            for _ in 0..2_000 {
                let mut draw =
                    |choices: &[u64]| choices[rng.range_u32(0, choices.len() as u32) as usize];
                let term = draw(&[0, t.saturating_sub(1), t, t, t + 1, t + 7, u64::MAX]);
                let index = draw(&[
                    0,
                    1,
                    last.saturating_sub(1),
                    last,
                    last + 1,
                    last + 9,
                    u64::MAX,
                ]);
                let other = draw(&[0, 1, last, last + 2, u64::MAX]);
                let flag = draw(&[0, 1]) == 1;
                let small = |x: u64| x.min(1 << 20);
                let entries: Vec<Entry> = (0..draw(&[0, 1, 3]))
                    .map(|i| {
                        entry(
                            small(index).max(1) + i + draw(&[0, 0, 1]),
                            draw(&[0, 1, t, t + 1]),
                        )
                    })
                    .collect();
                let body = match draw(&[0, 1, 2, 3, 4, 5, 6]) {
                    0 => Body::RequestVote(RequestVote {
                        term,
                        candidate_id: draw(&[1, 2, 3]),
                        last_log_index: index,
                        last_log_term: draw(&[0, 1, t, t + 1]),
                        pre_vote: flag,
                        leadership_transfer: draw(&[0, 1]) == 1,
                    }),
                    1 => Body::RequestVoteResponse(RequestVoteResponse {
                        term,
                        vote_granted: flag,
                        pre_vote: draw(&[0, 1]) == 1,
                    }),
                    2 => Body::AppendEntries(AppendEntries {
                        term,
                        leader_id: draw(&[1, 2, 3]),
                        prev_log_index: index,
                        prev_log_term: draw(&[0, 1, t, t + 1]),
                        entries,
                        leader_commit: other,
                    }),
                    3 => Body::AppendEntriesResponse(AppendEntriesResponse {
                        term,
                        success: flag,
                        appended_index: index,
                        durable_index: other,
                        conflict_index: draw(&[0, 1, last, last + 1, u64::MAX]),
                        conflict_term: draw(&[0, 1, t, t + 1, u64::MAX]),
                        last_log_index: other,
                        rejected_index: index,
                    }),
                    4 => Body::InstallSnapshot(InstallSnapshot {
                        term,
                        leader_id: draw(&[1, 2, 3]),
                        last_included_index: index,
                        last_included_term: draw(&[0, 1, t, t + 1]),
                        next_offset: other,
                        data: Bytes::new(),
                        config: (draw(&[0, 1]) == 1).then(|| Box::new(three_voters())),
                    }),
                    5 => Body::InstallSnapshotResponse(InstallSnapshotResponse {
                        term,
                        last_log_index: index,
                    }),
                    _ => Body::TimeoutNow(TimeoutNow {
                        term,
                        leader_id: draw(&[1, 2, 3]),
                    }),
                };
                let m = RaftMessage {
                    group_id: draw(&[1, 1, 1, 2]),
                    from: draw(&[0, 1, 2, 3, 3, 9]),
                    to: draw(&[1, 2, 3]),
                    body: Some(body),
                };
                let to = m.to;
                c.raft_mut(to).step(m);
                if draw(&[0, 1, 2]) == 0 {
                    c.raft_mut(to).tick();
                }
                // Every Ready checks the member's own log invariants; what it sends in answer
                // to forged messages goes nowhere.
                c.ready_unchecked(to);
                c.drop_all();
            }
            dropped += c
                .nodes
                .values()
                .map(|n| n.raft().diagnostics().dropped_messages_count)
                .sum::<u64>();
            moved_terms += u64::from(c.nodes.values().any(|n| n.raft().term() > t));
        }
        assert!(
            dropped > 10_000,
            "most random messages are malformed: {dropped}"
        );
        assert!(
            moved_terms > 10,
            "some were accepted and moved terms: {moved_terms}"
        );
    }

    // ------------------------------------------------------------------ the replica's answers

    /// A leader re-elected after its log was cut below its earlier term's proposals answers
    /// its new proposals as soon as they commit, not once the commit index passes the old
    /// ones (which, on an idle partition, is never).
    #[test]
    fn re_elected_leader_answers_new_proposals_before_stale_ones() {
        let mut c = Cluster::with_config(3, plain);
        c.elect(1);
        c.isolate(1);
        let stale: Vec<u64> = (0..5)
            .map(|i| c.propose_with(1, Bytes::from_static(b"stale"), 1, Acks::All, 100 + i))
            .collect();
        c.stabilize();
        assert_eq!(
            c.raft(1).last_index(),
            6,
            "indexes 2..=6 uncommitted on 1 alone"
        );
        c.campaign(2);
        c.heal();
        c.ticks(3);
        assert_eq!(c.log_terms(1), c.log_terms(2), "1 took 2's log");
        c.isolate(2);
        c.campaign(1);
        assert_eq!(c.raft(1).role(), Role::Leader);
        let fresh = c.propose_with(1, Bytes::from_static(b"fresh"), 1, Acks::All, 200);
        c.stabilize();
        let answer = c.answers.iter().find_map(|a| match a {
            Answer::Proposed {
                proposal, result, ..
            } if *proposal == fresh => Some(result.clone()),
            _ => None,
        });
        let appended = answer
            .expect("the new proposal is answered")
            .expect("committed");
        assert_eq!(appended.index, c.raft(1).commit_index());
        let superseded = c
            .answers
            .iter()
            .filter(|a| matches!(a, Answer::Proposed { proposal, result: Err(ReplicaError::Superseded), .. } if stale.contains(proposal)))
            .count();
        assert!(
            superseded >= 2,
            "stale proposals at or below the commit index are superseded"
        );
    }

    // ------------------------------------------------------------------ learners

    /// Dissertation §4.2.1: a learner receives the log and learns the commit index, but
    /// its copy never counts: with both other voters cut off, nothing commits.
    #[test]
    fn learner_receives_the_log_but_never_counts_toward_commit() {
        let mut c = Cluster::with_members(3, 1, |_| {});
        c.elect(1);
        let index = c.propose(1, b"a");
        assert_eq!(
            c.raft(4).commit_index(),
            index,
            "the learner learns commits"
        );
        assert_eq!(c.log_terms(4), c.log_terms(1), "the learner holds the log");
        assert!(
            c.raft(1).progress(4).is_some(),
            "the leader replicates to it"
        );
        c.partition(1, 2);
        c.partition(1, 3);
        c.propose_with(1, Bytes::from_static(b"b"), 1, Acks::All, 99);
        c.stabilize();
        assert_eq!(
            c.raft(4).last_index(),
            index + 1,
            "the learner has the entry"
        );
        assert!(c.log(4).durable_index() > index, "durably");
        assert_eq!(
            c.raft(1).commit_index(),
            index,
            "a learner's copy plus the leader's is not a majority of three voters"
        );
    }

    /// Dissertation §6.2 with learners: a leader heard only by a learner has lost its
    /// quorum and steps down.
    #[test]
    fn leader_heard_only_by_a_learner_steps_down() {
        let mut c = Cluster::with_members(3, 1, |_| {});
        c.elect(1);
        c.partition(1, 2);
        c.partition(1, 3);
        c.ticks(3 * RaftConfig::default().election_timeout_ticks);
        assert_ne!(
            c.raft(1).role(),
            Role::Leader,
            "check-quorum ignores learners"
        );
    }

    /// A learner never campaigns, however long it hears nothing, so it never raises terms.
    #[test]
    fn learner_never_campaigns() {
        let mut c = Cluster::with_members(3, 1, |_| {});
        c.elect(1);
        let term = c.raft(4).term();
        c.isolate(4);
        c.ticks(10 * RaftConfig::default().election_timeout_ticks);
        assert_eq!(c.raft(4).role(), Role::Follower);
        assert_eq!(c.raft(4).term(), term, "a learner does not campaign");
        assert_eq!(c.leader(), Some(1), "nor disturbs the leader");
    }

    /// A learner is no transfer target, and its vote elects nobody: learners never elect.
    /// (Vote requests from and to members known as learners are processed: one may have
    /// been made a voter by an entry the other has not received yet.)
    #[test]
    fn learners_take_no_part_in_elections() {
        let mut c = Cluster::with_members(3, 1, |_| {});
        c.elect(1);
        assert_eq!(
            c.raft_mut(1).transfer_leader(4),
            Err(TransferError::NotAVoter)
        );
        let ask = RaftMessage {
            group_id: 1,
            from: 2,
            to: 4,
            body: Some(Body::RequestVote(RequestVote {
                term: 9,
                candidate_id: 2,
                last_log_index: 50,
                last_log_term: 8,
                pre_vote: false,
                leadership_transfer: true,
            })),
        };
        c.raft_mut(4).step(ask);
        // It answers like anyone (it may be a voter of the candidate's newer configuration),
        // but the candidate's own configuration decides whether the vote counts.
        assert_eq!(c.raft(4).voted_for(), Some(2));
        let votes = std::collections::BTreeMap::from([(2, true), (4, true)]);
        assert_eq!(
            c.raft(2).membership().vote_result(&votes),
            raftlog::raft::VoteResult::Pending,
            "a learner's vote elects nobody"
        );
    }
}

/// Membership change (dissertation ch. 4): learners, joint consensus, configurations in
/// force from their append, and the leader's rules for proposing them.
mod membership {
    use raftlog::config::RaftConfig;
    use raftlog::proto::raft_message::Body;
    use raftlog::proto::EntryKind;
    use raftlog::raft::{Membership, MembershipChange, MembershipError, Role};
    use raftlog::replica::{MovePhase, ReplicaLog};

    use super::raft_harness::Cluster;

    /// Proposes `change` on `leader` and lets the cluster settle.
    fn change(c: &mut Cluster, leader: u64, change: MembershipChange) -> u64 {
        let proposed = c
            .raft_mut(leader)
            .propose_membership(&change, 0)
            .unwrap_or_else(|e| panic!("{change:?} refused: {e}"));
        c.stabilize();
        proposed.index
    }

    fn assert_everywhere(c: &Cluster, members: &[u64], expected: &Membership) {
        for &id in members {
            assert_eq!(c.raft(id).membership(), expected, "membership on node {id}");
        }
    }

    /// The whole path of a new replica: added as a learner, it receives the log without
    /// voting; made a voter, the group passes through the joint configuration and the
    /// leader leaves it by itself. Configuration entries carry no records, so offsets stay
    /// dense and consumers never see them.
    #[test]
    fn a_learner_catches_up_then_is_promoted_through_the_joint_configuration() {
        let mut c = Cluster::new(3);
        c.elect(1);
        c.propose(1, b"before");
        c.add_node(4);
        let added = change(&mut c, 1, MembershipChange::AddLearners(vec![4]));
        assert_everywhere(&c, &[1, 2, 3, 4], &Membership::new([1, 2, 3], [4]));
        assert_eq!(c.raft(4).commit_index(), c.raft(1).commit_index());
        assert!(c.raft(1).commit_index() >= added);
        change(&mut c, 1, MembershipChange::ReplaceVoters(vec![1, 2, 3, 4]));
        assert_everywhere(&c, &[1, 2, 3, 4], &Membership::new([1, 2, 3, 4], []));
        let configs: Vec<_> = c
            .log(4)
            .written()
            .iter()
            .filter(|e| e.kind() == EntryKind::Config)
            .map(|e| (e.record_count, e.base_offset))
            .collect();
        assert_eq!(configs.len(), 3, "learner, joint and leave entries");
        assert!(configs
            .iter()
            .all(|&(count, offset)| count == 0 && offset == 1));
        c.propose(1, b"after");
        let after = c.log(1).written().last().expect("entry").base_offset;
        assert_eq!(after, 1, "offsets stay dense");
        assert_eq!(c.raft(4).commit_index(), c.raft(1).commit_index());
    }

    /// Catch-up traffic is throttled, quorum traffic is not: with its learner budget spent,
    /// a leader sends the learner nothing while the voters go on committing; once granted
    /// budget, it sends the learner the log, and counts what it sent and what waited.
    #[test]
    fn a_spent_catch_up_budget_holds_back_learners_only() {
        let mut c = Cluster::new(3);
        c.elect(1);
        c.propose(1, b"before");
        c.add_node(4);
        c.raft_mut(1).set_catch_up_budget(Some(0));
        c.raft_mut(1)
            .propose_membership(&MembershipChange::AddLearners(vec![4]), 0)
            .unwrap();
        c.stabilize();
        c.propose(1, b"while throttled");
        c.tick_all();
        c.stabilize();
        let committed = c.raft(1).commit_index();
        for voter in [2, 3] {
            assert_eq!(c.raft(voter).commit_index(), committed, "voters commit");
        }
        assert!(c.log(4).written().is_empty(), "the learner got nothing");
        let held = c.raft(1).catch_up_counters();
        assert!(held.throttled > 0 && held.bytes_sent == 0, "{held:?}");

        c.raft_mut(1).set_catch_up_budget(Some(1 << 20));
        let granted = 1 << 20;
        c.tick_all();
        c.stabilize();
        assert_eq!(c.raft(4).commit_index(), c.raft(1).commit_index());
        let sent = c.raft(1).catch_up_counters();
        assert!(sent.bytes_sent > 0, "{sent:?}");
        assert!(
            c.raft(1).catch_up_budget().unwrap() < granted,
            "what was sent came out of the budget"
        );

        // An entry larger than the budget left still goes (one entry at least), and leaves
        // a debt: nothing more reaches the learner until grants have repaid it.
        c.raft_mut(1).set_catch_up_budget(Some(1));
        c.propose(1, &[7u8; 1000]);
        c.stabilize();
        assert_eq!(c.raft(4).commit_index(), c.raft(1).commit_index());
        let debt = c.raft(1).catch_up_budget().unwrap();
        assert!(debt < -900, "{debt}");
        c.propose(1, b"after the debt");
        c.tick_all();
        c.stabilize();
        assert!(
            c.raft(4).commit_index() < c.raft(1).commit_index(),
            "held back"
        );
        c.raft_mut(1).set_catch_up_budget(Some(debt + 10_000));
        c.tick_all();
        c.stabilize();
        assert_eq!(c.raft(4).commit_index(), c.raft(1).commit_index());
    }

    /// A leader proposes a configuration only once it has committed an entry of its own
    /// term (a configuration left uncommitted by an earlier leader may still be in force
    /// somewhere), and only one at a time: until the previous one is committed, and never
    /// while joint.
    #[test]
    fn one_change_at_a_time_and_only_after_committing_in_its_term() {
        let mut c = Cluster::new(3);
        c.core_mut(1).campaign();
        c.stabilize_dropping(|m| {
            m.to == 1 && matches!(m.body, Some(Body::AppendEntriesResponse(_)))
        });
        assert_eq!(c.raft(1).role(), Role::Leader);
        assert_eq!(
            c.raft_mut(1)
                .propose_membership(&MembershipChange::AddLearners(vec![4]), 0),
            Err(MembershipError::TermNotCommitted),
            "the no-op of its term is not committed yet"
        );
        c.heal();
        c.tick_all();
        c.stabilize();
        assert!(c.raft(1).commit_index() >= 1);
        assert_eq!(
            c.raft_mut(2)
                .propose_membership(&MembershipChange::AddLearners(vec![4]), 0),
            Err(MembershipError::NotLeader {
                leader_hint: Some(1)
            })
        );
        c.add_node(4);
        c.add_node(5);
        let first = c
            .raft_mut(1)
            .propose_membership(&MembershipChange::AddLearners(vec![4]), 0)
            .unwrap();
        assert_eq!(
            c.raft_mut(1)
                .propose_membership(&MembershipChange::AddLearners(vec![5]), 0),
            Err(MembershipError::ChangePending { index: first.index })
        );
        c.stabilize();
        let joint = c
            .raft_mut(1)
            .propose_membership(&MembershipChange::ReplaceVoters(vec![1, 2, 3, 4]), 0)
            .unwrap();
        assert!(c.raft(1).membership().is_joint());
        assert_eq!(
            c.raft_mut(1)
                .propose_membership(&MembershipChange::AddLearners(vec![5]), 0),
            Err(MembershipError::ChangePending { index: joint.index })
        );
        for (invalid, why) in [
            (MembershipChange::AddLearners(vec![2]), "already a member"),
            (MembershipChange::RemoveLearners(vec![2]), "not a learner"),
            (
                MembershipChange::ReplaceVoters(vec![1, 2, 5]),
                "first be a learner",
            ),
            (
                MembershipChange::ReplaceVoters(vec![]),
                "at least one voter",
            ),
        ] {
            c.stabilize();
            let refused = c.raft_mut(1).propose_membership(&invalid, 0);
            assert!(
                matches!(refused, Err(MembershipError::Invalid(message)) if message.contains(why)),
                "{invalid:?}: {refused:?}"
            );
        }
    }

    /// §4.1: a member uses the latest configuration in its log, committed or not, and the
    /// one before it again once that entry is truncated.
    #[test]
    fn a_configuration_is_in_force_from_its_append_and_gone_with_its_truncation() {
        let mut c = Cluster::new(3);
        c.elect(1);
        c.add_node(4);
        c.isolate(1);
        c.raft_mut(1)
            .propose_membership(&MembershipChange::AddLearners(vec![4]), 0)
            .unwrap();
        c.stabilize();
        assert_eq!(
            c.raft(1).membership(),
            &Membership::new([1, 2, 3], [4]),
            "in force on the leader as soon as it is appended"
        );
        assert!(c.raft(1).commit_index() < c.raft(1).last_index());
        c.ticks(3 * RaftConfig::default().election_timeout_ticks);
        let leader = c.leader().expect("2 or 3 took over");
        assert_ne!(leader, 1);
        c.heal();
        c.stabilize();
        c.tick_all();
        c.stabilize();
        assert_eq!(c.raft(1).role(), Role::Follower);
        assert_eq!(
            c.raft(1).membership(),
            &Membership::new([1, 2, 3], []),
            "the truncated entry's configuration is gone"
        );
        assert!(c.raft(1).membership_history().logged.is_empty());
    }

    /// A follower uses a configuration it has appended before it hears that it committed.
    #[test]
    fn a_follower_uses_a_configuration_before_it_commits() {
        let mut c = Cluster::new(3);
        c.elect(1);
        c.add_node(4);
        c.raft_mut(1)
            .propose_membership(&MembershipChange::AddLearners(vec![4]), 0)
            .unwrap();
        // Deliver the leader's AppendEntries to 2 but let no answer back to the leader.
        c.stabilize_dropping(|m| m.to == 1);
        assert_eq!(c.raft(2).membership(), &Membership::new([1, 2, 3], [4]));
        assert!(c.raft(2).commit_index() < c.raft(2).last_index());
    }

    /// A leader elected while the group is joint finishes the change: once its no-op
    /// commits, so has the joint entry, and it appends the entry that leaves it.
    #[test]
    fn a_new_leader_that_finds_the_group_joint_leaves_the_joint_configuration() {
        let mut c = Cluster::with_members(3, 1, |_| {});
        c.elect(1);
        c.raft_mut(1)
            .propose_membership(&MembershipChange::ReplaceVoters(vec![1, 2, 3, 4]), 0)
            .unwrap();
        // Everyone appends the joint entry; the leader never hears back.
        c.stabilize_dropping(|m| m.to == 1);
        assert!(c.raft(2).membership().is_joint());
        c.isolate(1);
        c.ticks(3 * RaftConfig::default().election_timeout_ticks);
        let leader = c.leader().expect("a new leader");
        assert!([2, 3, 4].contains(&leader), "{leader}");
        assert_everywhere(&c, &[2, 3, 4], &Membership::new([1, 2, 3, 4], []));
        c.heal();
        c.tick_all();
        c.stabilize();
        assert_everywhere(&c, &[1, 2, 3, 4], &Membership::new([1, 2, 3, 4], []));
    }

    /// §4.2.2: a leader that is not a voter of the configuration it commits hands
    /// leadership to a caught-up voter and stops leading; it never campaigns again.
    #[test]
    fn a_leader_removed_by_the_change_hands_over_and_steps_down() {
        let mut c = Cluster::with_members(3, 1, |_| {});
        c.elect(1);
        c.propose(1, b"x");
        change(&mut c, 1, MembershipChange::ReplaceVoters(vec![2, 3, 4]));
        assert_eq!(c.raft(1).role(), Role::Follower);
        let leader = c.leader().expect("a voter took over");
        assert!([2, 3, 4].contains(&leader), "{leader}");
        let term = c.raft(leader).term();
        assert_everywhere(&c, &[2, 3, 4], &Membership::new([2, 3, 4], []));
        assert_eq!(c.raft(1).membership(), &Membership::new([2, 3, 4], []));
        c.isolate(1);
        c.ticks(5 * RaftConfig::default().election_timeout_ticks);
        assert_eq!(
            c.raft(1).role(),
            Role::Follower,
            "a removed member never campaigns"
        );
        c.heal();
        c.stabilize();
        assert_eq!(c.raft(leader).term(), term, "nor disturbs the new leader");
        c.propose(leader, b"y");
    }

    /// §4.2.3: a removed member never hears of its removal (nobody replicates to it) and
    /// campaigns on; even on the paper's bare protocol (no pre-vote, no lease) its raised
    /// terms depose nobody, since it could not win a vote of the members that removed it.
    #[test]
    fn a_removed_member_campaigning_on_deposes_nobody() {
        let mut c = Cluster::with_members(3, 1, |config| {
            config.raft.pre_vote = false;
            config.raft.check_quorum = false;
        });
        c.elect(1);
        // Node 3 misses everything from here on: it never learns it was removed.
        c.isolate(3);
        change(&mut c, 1, MembershipChange::ReplaceVoters(vec![1, 2, 4]));
        assert_eq!(c.raft(1).membership(), &Membership::new([1, 2, 4], []));
        assert!(
            c.raft(3).membership().is_voter(3),
            "3 still thinks it votes"
        );
        let term = c.raft(1).term();
        c.heal();
        for _ in 0..5 {
            c.core_mut(3).campaign();
            c.stabilize();
        }
        assert!(c.raft(3).term() > term, "3 campaigned in higher terms");
        assert_eq!(c.leader(), Some(1));
        assert_eq!(c.raft(1).term(), term, "nobody followed 3's terms");
        c.propose(1, b"still leading");
    }

    /// Joint consensus moves a group between voter sets that share no member: no single
    /// step could (the majorities of {1,2,3} and {4,5,6} do not intersect).
    #[test]
    fn a_group_moves_to_voters_it_shares_no_member_with() {
        let mut c = Cluster::with_members(3, 3, |_| {});
        c.elect(1);
        c.propose(1, b"a");
        change(&mut c, 1, MembershipChange::ReplaceVoters(vec![4, 5, 6]));
        c.tick_all();
        c.stabilize();
        let leader = c.leader().expect("leader");
        assert!([4, 5, 6].contains(&leader), "{leader}");
        assert_everywhere(&c, &[4, 5, 6], &Membership::new([4, 5, 6], []));
        c.propose(leader, b"b");
        for id in [4, 5, 6] {
            assert_eq!(c.raft(id).commit_index(), c.raft(leader).commit_index());
        }
    }

    /// Configurations outlive restarts: each member comes back with the configuration of
    /// the last configuration entry in its durable log, not the one it was started with.
    #[test]
    fn configurations_survive_restarts() {
        let mut c = Cluster::new(3);
        c.elect(1);
        c.add_node(4);
        change(&mut c, 1, MembershipChange::AddLearners(vec![4]));
        change(&mut c, 1, MembershipChange::ReplaceVoters(vec![1, 2, 3, 4]));
        for id in [4, 2, 1] {
            c.restart(id);
            assert_eq!(
                c.raft(id).membership(),
                &Membership::new([1, 2, 3, 4], []),
                "node {id} after a restart"
            );
        }
        c.tick_all();
        c.ticks(3 * RaftConfig::default().election_timeout_ticks);
        let leader = c.leader().expect("a leader after the restarts");
        c.propose(leader, b"after");
    }

    /// A configuration entry that was appended but never made durable is gone after a
    /// crash, and so is its configuration, though its record was written first.
    #[test]
    fn a_configuration_whose_entry_was_lost_in_a_crash_is_not_restored() {
        let mut c = Cluster::new(3);
        c.elect(1);
        c.add_node(4);
        c.nodes.get_mut(&1).unwrap().auto_persist = false;
        c.isolate(1);
        c.raft_mut(1)
            .propose_membership(&MembershipChange::AddLearners(vec![4]), 0)
            .unwrap();
        c.process(1);
        assert_eq!(c.raft(1).membership(), &Membership::new([1, 2, 3], [4]));
        let record = c
            .log(1)
            .membership()
            .unwrap()
            .expect("written before the entry");
        assert_eq!(record.logged.len(), 1);
        assert!(c.log(1).durable_index() < record.logged[0].index);
        c.restart(1);
        assert_eq!(c.raft(1).membership(), &Membership::new([1, 2, 3], []));
    }

    /// Tells every member the voters the group should move to, as the cluster metadata
    /// does; only the leader acts on it.
    fn move_to(c: &mut Cluster, target: &[u64]) {
        let ids: Vec<u64> = c.nodes.keys().copied().collect();
        for id in ids {
            c.core_mut(id).set_move_target(Some(target.to_vec()));
        }
    }

    /// Ticks until the leader reports the move done, collecting the phases it went through.
    fn run_move(c: &mut Cluster, ticks_max: u32) -> Vec<MovePhase> {
        let mut phases: Vec<MovePhase> = Vec::new();
        for _ in 0..ticks_max {
            c.tick_all();
            let Some(leader) = c.leader() else { continue };
            let Some(phase) = c.core(leader).move_phase().cloned() else {
                continue;
            };
            let kind = std::mem::discriminant(&phase);
            if phases.last().map(std::mem::discriminant) != Some(kind) {
                phases.push(phase.clone());
            }
            if phase == MovePhase::Done {
                return phases;
            }
        }
        panic!("the move did not finish in {ticks_max} ticks: {phases:?}");
    }

    /// A move driven by the leader: the new replica is added as a learner, must stay caught
    /// up for a while, then the voters are replaced through the joint configuration; the
    /// old leader, no longer a voter, hands over.
    #[test]
    fn a_move_adds_a_learner_waits_for_it_then_replaces_the_voters() {
        let mut c = Cluster::new(3);
        c.elect(1);
        c.propose(1, b"a");
        c.add_node(4);
        move_to(&mut c, &[2, 3, 4]);
        let phases = run_move(&mut c, 200);
        let kinds: Vec<&str> = phases
            .iter()
            .map(|p| match p {
                MovePhase::AddingLearners => "adding",
                MovePhase::CatchingUp { .. } => "catching up",
                MovePhase::Joint => "joint",
                MovePhase::RemovingLearners => "removing",
                MovePhase::Done => "done",
            })
            .collect();
        // The joint configuration may come and go within one tick of a healthy cluster.
        let expected: &[&[&str]] = &[
            &["adding", "catching up", "done"],
            &["adding", "catching up", "joint", "done"],
        ];
        assert!(expected.contains(&kinds.as_slice()), "{phases:?}");
        let joint_entries = c
            .log(2)
            .written()
            .iter()
            .filter(|e| e.kind() == EntryKind::Config)
            .count();
        assert_eq!(joint_entries, 3, "learner, joint and leave entries");
        let leader = c.leader().expect("leader");
        assert!([2, 3, 4].contains(&leader));
        assert_everywhere(&c, &[2, 3, 4], &Membership::new([2, 3, 4], []));
        c.propose(leader, b"b");
    }

    /// The metadata group's target: its voters stay, and each node that joined is added as
    /// a learner and kept (never removed as left over from a move), while a learner the
    /// target no longer names is dropped.
    #[test]
    fn kept_learners_are_added_and_stay_while_unnamed_ones_go() {
        let mut c = Cluster::new(3);
        c.elect(1);
        c.propose(1, b"a");
        c.add_node(4);
        c.add_node(5);
        let ids: Vec<u64> = c.nodes.keys().copied().collect();
        for &id in &ids {
            c.core_mut(id)
                .set_membership_target(vec![1, 2, 3], vec![4, 5]);
        }
        run_move(&mut c, 200);
        assert_everywhere(&c, &[1, 2, 3, 4, 5], &Membership::new([1, 2, 3], [4, 5]));
        c.ticks(20);
        assert_eq!(c.raft(1).membership(), &Membership::new([1, 2, 3], [4, 5]));
        for &id in &ids {
            c.core_mut(id).set_membership_target(vec![1, 2, 3], vec![4]);
        }
        run_move(&mut c, 200);
        assert_everywhere(&c, &[1, 2, 3, 4], &Membership::new([1, 2, 3], [4]));
    }

    /// A move continues under a new leader: each leader goes on from the configuration its
    /// log holds.
    #[test]
    fn a_move_survives_a_change_of_leader() {
        let mut c = Cluster::new(3);
        c.elect(1);
        c.add_node(4);
        move_to(&mut c, &[1, 2, 3, 4]);
        c.tick_all();
        assert!(c.raft(1).membership().is_member(4), "the learner is added");
        c.isolate(1);
        c.ticks(3 * RaftConfig::default().election_timeout_ticks);
        c.heal();
        let phases = run_move(&mut c, 300);
        assert_eq!(phases.last(), Some(&MovePhase::Done));
        assert_ne!(c.leader(), Some(1), "another leader finished it");
        assert_everywhere(&c, &[1, 2, 3, 4], &Membership::new([1, 2, 3, 4], []));
    }

    /// Cancelling a move before the learner was promoted is moving back: the learner is
    /// removed and the voters never changed.
    #[test]
    fn cancelling_a_move_before_promotion_removes_the_learner() {
        let mut c = Cluster::new(3);
        c.elect(1);
        c.add_node(4);
        move_to(&mut c, &[1, 2, 4]);
        c.tick_all();
        c.tick_all();
        assert_eq!(c.raft(1).membership(), &Membership::new([1, 2, 3], [4]));
        assert!(matches!(
            c.core(1).move_phase(),
            Some(MovePhase::CatchingUp { .. })
        ));
        move_to(&mut c, &[1, 2, 3]);
        let phases = run_move(&mut c, 50);
        assert_eq!(
            phases.first(),
            Some(&MovePhase::RemovingLearners),
            "{phases:?}"
        );
        // Node 4 is told nothing more once removed: its replica is deleted by its node.
        assert_everywhere(&c, &[1, 2, 3], &Membership::new([1, 2, 3], []));
    }

    /// §4.4: a member that joins after the log was compacted gets the configuration in
    /// force at the snapshot's position with it, then the entries after it.
    #[test]
    fn a_snapshot_carries_the_configuration_in_force_at_its_position() {
        let mut c = Cluster::new(3);
        c.elect(1);
        c.add_node(4);
        change(&mut c, 1, MembershipChange::AddLearners(vec![4]));
        change(&mut c, 1, MembershipChange::ReplaceVoters(vec![1, 2, 3, 4]));
        c.propose(1, b"a");
        for id in 1..=4 {
            let commit = c.raft(id).commit_index();
            c.compact(id, commit);
        }
        assert!(
            c.raft(1).membership_history().logged.is_empty(),
            "all folded"
        );
        c.add_node(5);
        change(&mut c, 1, MembershipChange::AddLearners(vec![5]));
        assert!(c.snapshots_count > 0, "node 5 started from a snapshot");
        assert_eq!(c.raft(5).membership(), &Membership::new([1, 2, 3, 4], [5]));
        assert_eq!(
            c.raft(5).membership_history().at_log_start,
            Membership::new([1, 2, 3, 4], [])
        );
    }
}
