//! The sans-IO replica core on in-memory stores: three cores joined by a loop of a few lines,
//! the way the simulator drives them. These check what the replica (not the consensus core)
//! promises: a produce is answered only once its entry is durable on a majority, a fetch
//! never shows an uncommitted record, and a parked fetch is answered when records commit.

use std::cell::Cell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

use bytes::Bytes;
use raftlog::config::{RaftConfig, StorageConfig};
use raftlog::proto::RaftMessage;
use raftlog::raft::Role;
use raftlog::replica::{
    Acks, Action, Appended, CoreConfig, FetchWaiter, Fetched, LogIsTheState, MemLog, ReplicaCore,
    ReplicaError, ReplicaLimits, ReplicaLog,
};

/// A fetch waiter that can give up.
#[derive(Clone, Default)]
struct Waiter(Rc<Cell<bool>>);

impl FetchWaiter for Waiter {
    fn is_abandoned(&self) -> bool {
        self.0.get()
    }
}

type Core = ReplicaCore<MemLog, LogIsTheState, u64, Waiter>;

struct Cluster {
    cores: BTreeMap<u64, Core>,
    net: VecDeque<RaftMessage>,
    /// Answers to proposals by proposal number.
    proposed: BTreeMap<u64, Result<Appended<()>, ReplicaError>>,
    fetched: Vec<Result<Fetched, ReplicaError>>,
    /// Whether syncs complete when the loop runs (a stuck disk when false).
    syncs_complete: BTreeMap<u64, bool>,
}

impl Cluster {
    fn new() -> Self {
        let voters = vec![1, 2, 3];
        let cores = voters
            .iter()
            .map(|&id| {
                let mut raft = RaftConfig::default().consensus(id, 1, voters.clone());
                raft.seed = id * 7919;
                let config = CoreConfig {
                    raft,
                    limits: ReplicaLimits::from_settings(
                        &RaftConfig::default(),
                        &StorageConfig::default(),
                    ),
                    track_producers: true,
                    retention_bytes: 0,
                    retention_ms: 0,
                };
                let core = Core::new(config, MemLog::new(), LogIsTheState).expect("valid");
                (id, core)
            })
            .collect();
        Self {
            cores,
            net: VecDeque::new(),
            proposed: BTreeMap::new(),
            fetched: Vec::new(),
            syncs_complete: voters.iter().map(|&id| (id, true)).collect(),
        }
    }

    /// Readies, actions, syncs and deliveries until nothing moves.
    fn settle(&mut self) {
        for _ in 0..1000 {
            let mut moved = false;
            for (&id, core) in self.cores.iter_mut() {
                core.handle_ready().expect("memory never fails");
                for action in core.actions() {
                    moved = true;
                    match action {
                        Action::Send(message) => self.net.push_back(message),
                        Action::Proposed(number, result) => {
                            self.proposed.insert(number, result);
                        }
                        Action::Fetched(_, result) => self.fetched.push(result),
                    }
                }
                if self.syncs_complete[&id] {
                    if let Some(job) = core.poll_sync(0) {
                        core.sync_done(job);
                        moved = true;
                    }
                }
            }
            while let Some(message) = self.net.pop_front() {
                moved = true;
                self.cores
                    .get_mut(&message.to)
                    .expect("member")
                    .step(message);
            }
            if !moved {
                return;
            }
        }
        panic!("cluster did not settle");
    }

    fn leader(&self) -> u64 {
        let leaders: Vec<u64> = self
            .cores
            .iter()
            .filter(|(_, core)| core.raft().role() == Role::Leader)
            .map(|(&id, _)| id)
            .collect();
        assert_eq!(leaders.len(), 1, "one leader expected");
        leaders[0]
    }
}

/// Node 1 leads, and proposal 7 (one record, offset 0) is appended everywhere but durable only
/// on the leader: both followers' disks are stuck.
fn with_a_record_durable_only_on_the_leader() -> (Cluster, u64) {
    let mut c = Cluster::new();
    c.cores.get_mut(&1).unwrap().campaign();
    c.settle();
    let leader = c.leader();
    assert_eq!(leader, 1);
    c.syncs_complete.insert(2, false);
    c.syncs_complete.insert(3, false);
    let payload = Bytes::from_static(b"record");
    c.cores
        .get_mut(&leader)
        .unwrap()
        .propose(payload, 1, Acks::All, 0, 7);
    c.settle();
    (c, leader)
}

#[test]
fn a_produce_is_answered_only_once_durable_on_a_majority() {
    // Durable only on the leader, so it must not be acknowledged.
    let (mut c, leader) = with_a_record_durable_only_on_the_leader();
    assert!(
        !c.proposed.contains_key(&7),
        "acknowledged before a majority synced"
    );
    assert_eq!(
        c.cores[&leader].high_watermark(),
        0,
        "uncommitted record visible"
    );
    // A parked fetch at the high watermark waits for the commit.
    c.cores
        .get_mut(&leader)
        .unwrap()
        .fetch(0, 1 << 20, true, Waiter::default());
    c.settle();
    assert!(
        c.fetched.is_empty(),
        "a fetch returned an uncommitted record"
    );
    assert_eq!(c.cores[&leader].parked_fetch_count(), 1);
    // One follower syncs: a majority holds it durably, it commits and both are answered.
    c.syncs_complete.insert(2, true);
    c.settle();
    let appended = c.proposed[&7].as_ref().expect("acknowledged");
    assert_eq!(appended.base_offset, 0);
    assert!(c.cores[&2].log().durable_index() >= appended.index);
    assert_eq!(c.fetched.len(), 1, "the parked fetch was answered");
    let fetched = c.fetched[0].as_ref().expect("records");
    assert_eq!(fetched.entries.len(), 1);
    assert_eq!(fetched.high_watermark, 1);
}

#[test]
fn a_full_disk_refuses_writes_and_the_leader_steps_down() {
    let mut c = Cluster::new();
    c.cores.get_mut(&1).unwrap().campaign();
    c.settle();
    c.cores.get_mut(&1).unwrap().log_mut().set_full(true);
    c.cores
        .get_mut(&1)
        .unwrap()
        .propose(Bytes::from_static(b"x"), 1, Acks::All, 0, 1);
    c.settle();
    assert!(
        matches!(c.proposed[&1], Err(ReplicaError::StorageFull(_))),
        "{:?}",
        c.proposed[&1]
    );
    let stalled = &c.cores[&1];
    assert!(stalled.storage_full().is_some());
    assert_ne!(
        stalled.raft().role(),
        Role::Leader,
        "a leader that cannot write stays"
    );
    // Further proposals are refused at once while the disk is full.
    c.cores
        .get_mut(&1)
        .unwrap()
        .propose(Bytes::from_static(b"y"), 1, Acks::All, 0, 2);
    c.settle();
    assert!(matches!(c.proposed[&2], Err(ReplicaError::StorageFull(_))));
}

#[test]
fn an_offset_the_log_holds_but_has_not_seen_committed_is_waited_for_not_refused() {
    // The record is in every log but commits nowhere: offset 1 is past the high watermark
    // and within the log, where a replica that restarted or was just elected finds a
    // consumer resuming from its committed offset.
    let (mut c, leader) = with_a_record_durable_only_on_the_leader();
    let core = c.cores.get_mut(&leader).unwrap();
    assert_eq!(core.high_watermark(), 0);
    core.fetch(1, 1 << 20, false, Waiter::default());
    core.fetch(2, 1 << 20, false, Waiter::default());
    c.settle();
    let held = c.fetched[0]
        .as_ref()
        .expect("an offset within the log is not refused");
    assert!(
        held.entries.is_empty(),
        "an uncommitted record was returned"
    );
    assert!(
        matches!(
            c.fetched[1],
            Err(ReplicaError::OffsetOutOfRange { offset: 2, .. })
        ),
        "{:?}",
        c.fetched[1]
    );
}
