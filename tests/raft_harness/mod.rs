//! A tiny deterministic in-memory network of Raft cores, driven by hand from tests.
//!
//! Each node has an in-memory store that separates *written* from *durable* entries, so a
//! crash can lose un-fsynced writes. Messages go through one FIFO queue; tests can cut links
//! (one way or both), drop, reorder, or deliver messages one by one. Every Ready is carried
//! out in the documented order: hard state, then snapshot / truncate / append, then send.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use bytes::Bytes;
use raftlog::proto::raft_message::Body;
use raftlog::proto::{Entry, HardState, RaftMessage};
use raftlog::raft::{
    entry_size_bytes, message_term, Config, LogPosition, LogReader, Raft, ReadError, Ready,
    RestoredState, Role,
};

/// An in-memory log store: entries written, a durable prefix, and the durable hard state.
#[derive(Clone, Debug)]
pub struct MemStore {
    /// Durable hard state (hard state is written synchronously, as the contract requires).
    /// Its `log_start_index` follows the schema: the first index still in the log.
    pub hard_state: HardState,
    /// The snapshot position (last index compacted away, its term, the next offset).
    pub start: LogPosition,
    /// Entries after `start`, written (maybe not durable).
    pub entries: Vec<Entry>,
    /// Last durable index.
    pub durable_index: u64,
    /// Entries before this index may not be read (simulates retention gaps in tests).
    pub reads: std::cell::Cell<u64>,
}

impl Default for MemStore {
    fn default() -> Self {
        Self {
            hard_state: HardState {
                log_start_index: 1,
                ..HardState::default()
            },
            start: LogPosition::default(),
            entries: Vec::new(),
            durable_index: 0,
            reads: std::cell::Cell::new(0),
        }
    }
}

impl MemStore {
    /// The state a core restarts from: the durable hard state and the last written index
    /// (call after `crash` to keep only what was durable).
    pub fn restored_state(&self) -> RestoredState {
        assert_eq!(
            self.hard_state.log_start_index,
            self.start.index + 1,
            "store hard state disagrees with its snapshot position {:?}",
            self.start
        );
        RestoredState {
            hard_state: self.hard_state,
            last_index: self.last_index(),
            ..Default::default()
        }
    }

    /// Index of the last written entry.
    pub fn last_index(&self) -> u64 {
        self.start.index + self.entries.len() as u64
    }

    /// The written entry at `index`, if any.
    pub fn entry(&self, index: u64) -> Option<&Entry> {
        if index <= self.start.index {
            return None;
        }
        self.entries.get((index - self.start.index - 1) as usize)
    }

    /// Term at `index` in the written log.
    pub fn term(&self, index: u64) -> Option<u64> {
        if index == self.start.index {
            return Some(self.start.term);
        }
        self.entry(index).map(|e| e.term)
    }

    /// Carries out the storage part of a Ready.
    pub fn apply(&mut self, ready: &Ready) {
        if let Some(hs) = &ready.hard_state {
            self.hard_state = *hs;
        }
        if let Some(pos) = ready.snapshot {
            let last = self.last_index();
            let drop = (pos.index.min(last).saturating_sub(self.start.index)) as usize;
            self.entries.drain(..drop);
            if pos.index > last {
                self.entries.clear();
            }
            self.start = pos;
            self.durable_index = self.durable_index.max(pos.index);
        }
        if let Some(from) = ready.truncate_from {
            let keep = from.saturating_sub(self.start.index + 1) as usize;
            self.entries.truncate(keep);
            self.durable_index = self.durable_index.min(self.last_index());
        }
        if let Some(first) = ready.entries.first() {
            assert_eq!(
                first.index,
                self.last_index() + 1,
                "store append gap: start {:?} snapshot {:?} truncate {:?} n {}",
                self.start,
                ready.snapshot,
                ready.truncate_from,
                ready.entries.len()
            );
            self.entries.extend(ready.entries.iter().cloned());
        }
    }

    /// Moves the start forward (retention) up to `index`.
    pub fn compact(&mut self, index: u64) -> LogPosition {
        let e = self
            .entry(index)
            .expect("compacting an existing entry")
            .clone();
        let pos = LogPosition {
            index,
            term: e.term,
            next_offset: e.base_offset + u64::from(e.record_count),
        };
        let drop = (index - self.start.index) as usize;
        self.entries.drain(..drop);
        self.start = pos;
        self.hard_state.log_start_index = pos.index + 1;
        self.hard_state.log_start_term = pos.term;
        self.hard_state.log_start_offset = pos.next_offset;
        pos
    }

    /// What survives a crash: the durable prefix.
    pub fn crash(&mut self) {
        let keep = (self.durable_index - self.start.index) as usize;
        self.entries.truncate(keep);
    }
}

impl LogReader for MemStore {
    fn entries(&self, lo: u64, hi: u64, bytes_max: u64) -> Result<Vec<Entry>, ReadError> {
        if lo <= self.start.index {
            return Err(ReadError::Compacted);
        }
        self.reads.set(self.reads.get() + 1);
        let mut out = Vec::new();
        let mut bytes = 0;
        for index in lo..hi {
            let Some(e) = self.entry(index) else { break };
            let size = entry_size_bytes(e);
            if !out.is_empty() && bytes + size > bytes_max {
                break;
            }
            bytes += size;
            out.push(e.clone());
        }
        if out.is_empty() {
            return Err(ReadError::Unavailable);
        }
        Ok(out)
    }

    fn term_at(&self, index: u64) -> Result<u64, ReadError> {
        if index < self.start.index {
            return Err(ReadError::Compacted);
        }
        self.term(index).ok_or(ReadError::Unavailable)
    }
}

/// One simulated member: its core and its store.
pub struct Node {
    /// The consensus core.
    pub raft: Raft,
    /// Its storage.
    pub store: MemStore,
    /// Config, kept for restarts.
    pub config: Config,
    /// Report writes durable immediately (otherwise call `Cluster::persist`).
    pub auto_persist: bool,
    /// Written but not yet durable: (index, term) reports to deliver on `persist`.
    pub unpersisted: Vec<(u64, u64)>,
    /// Highest commit index seen in a Ready (in this incarnation).
    pub commit_index: u64,
    /// Committed entries up to here were compared with `Cluster::committed`.
    pub checked_commit_index: u64,
    /// Highest term seen in this incarnation (terms never go backwards).
    pub term_seen: u64,
    /// The term in which this node was last checked for leader completeness as leader.
    pub leader_checked_term: u64,
}

impl Node {
    fn new(config: Config, raft: Raft, store: MemStore) -> Self {
        let (commit_index, term_seen) = (raft.commit_index(), raft.term());
        Self {
            raft,
            store,
            config,
            auto_persist: true,
            unpersisted: Vec::new(),
            commit_index,
            checked_commit_index: commit_index,
            term_seen,
            leader_checked_term: 0,
        }
    }
}

/// A set of nodes and the messages between them.
pub struct Cluster {
    /// Nodes by id.
    pub nodes: BTreeMap<u64, Node>,
    /// Messages in flight, in send order.
    pub net: VecDeque<RaftMessage>,
    /// Directed links that drop everything: (from, to).
    pub cut: BTreeSet<(u64, u64)>,
    /// Every message ever delivered, for assertions (only while `record_delivered`).
    pub delivered: Vec<RaftMessage>,
    /// Whether to keep `delivered` (the simulator turns it off: it only grows).
    pub record_delivered: bool,
    /// Log matching: (index, term) -> (term of the entry before it, the entry) as first
    /// written anywhere. An entry is created once, by the leader of its term, so every copy
    /// ever written must agree; by induction two logs sharing an (index, term) then share
    /// the whole prefix (§5.3).
    pub entry_ids: HashMap<(u64, u64), (u64, Entry)>,
    /// Leader seen per term (election safety check).
    pub leaders: BTreeMap<u64, u64>,
    /// Committed (index -> term) as first seen anywhere (state machine safety check).
    pub committed: BTreeMap<u64, u64>,
    /// Index -> lowest leader term in which a leader was seen to have it committed.
    pub commit_terms: BTreeMap<u64, u64>,
    /// Readies that installed a snapshot.
    pub snapshots_count: u64,
    /// Readies that truncated a conflicting suffix.
    pub truncations_count: u64,
    /// When `Some`, a readable line per delivered message and per Ready (golden traces).
    pub trace: Option<Vec<String>>,
}

/// A config for tests: small timeouts, the given voters, pre-vote and check-quorum on.
pub fn config(id: u64, voters: &[u64]) -> Config {
    let mut c = Config::new(id, voters.to_vec());
    c.election_timeout_ticks = 10;
    c.heartbeat_interval_ticks = 1;
    c.seed = id * 7919;
    c
}

impl Cluster {
    /// A cluster of `n` nodes with ids 1..=n and default test config.
    pub fn new(n: u64) -> Self {
        Self::with_config(n, |_| {})
    }

    /// A cluster whose configs are adjusted by `f` before start.
    pub fn with_config(n: u64, f: impl Fn(&mut Config)) -> Self {
        let voters: Vec<u64> = (1..=n).collect();
        let mut nodes = BTreeMap::new();
        for id in 1..=n {
            let mut config = config(id, &voters);
            f(&mut config);
            let raft = Raft::new(config.clone()).expect("valid config");
            nodes.insert(id, Node::new(config, raft, MemStore::default()));
        }
        Self {
            nodes,
            net: VecDeque::new(),
            cut: BTreeSet::new(),
            delivered: Vec::new(),
            record_delivered: true,
            entry_ids: HashMap::new(),
            leaders: BTreeMap::new(),
            committed: BTreeMap::new(),
            commit_terms: BTreeMap::new(),
            snapshots_count: 0,
            truncations_count: 0,
            trace: None,
        }
    }

    /// The core of node `id`.
    pub fn raft(&self, id: u64) -> &Raft {
        &self.nodes[&id].raft
    }

    /// The core of node `id`, mutably.
    pub fn raft_mut(&mut self, id: u64) -> &mut Raft {
        &mut self.nodes.get_mut(&id).expect("node exists").raft
    }

    /// Takes node `id`'s Ready, carries out storage and queues messages. Returns whether
    /// anything happened.
    pub fn process(&mut self, id: u64) -> bool {
        let node = self.nodes.get_mut(&id).expect("node exists");
        let ready = node.raft.ready(&node.store);
        if ready.is_empty() {
            return false;
        }
        if std::env::var("RAFTLOG_TRACE_NODE").is_ok_and(|v| v == id.to_string()) {
            let range = ready
                .entries
                .first()
                .map(|f| (f.index, ready.entries.last().unwrap().index));
            eprintln!(
                "node {id} t{} {:?} ready: hs {:?} snap {:?} trunc {:?} entries {:?} commit {:?} | store start {} last {} durable {} | core last {} persisted {}",
                node.raft.term(), node.raft.role(), ready.hard_state.map(|h| h.current_term), ready.snapshot.map(|p| p.index), ready.truncate_from, range, ready.commit_index,
                node.store.start.index, node.store.last_index(), node.store.durable_index, node.raft.last_index(), node.raft.persisted_index()
            );
        }
        if let Some(trace) = self.trace.as_mut() {
            trace.push(describe_ready(id, &node.raft, &ready));
        }
        check_no_committed_entry_dropped(id, node, &ready, &self.committed);
        self.snapshots_count += u64::from(ready.snapshot.is_some());
        self.truncations_count += u64::from(ready.truncate_from.is_some());
        node.store.apply(&ready);
        check_durable_before_send(id, &node.store, &ready);
        check_log_matching(id, &node.store, &ready, &mut self.entry_ids);
        if let Some(commit) = ready.commit_index {
            assert!(
                commit > node.commit_index,
                "commit went backwards on {id}: {} -> {commit}",
                node.commit_index
            );
            node.commit_index = commit;
        }
        if let Some(last) = ready.entries.last() {
            node.unpersisted.push((last.index, last.term));
        }
        if ready.snapshot.is_some() || ready.truncate_from.is_some() {
            node.store.durable_index = node.store.durable_index.min(node.store.last_index());
        }
        if node.auto_persist {
            Self::persist_node(node);
        }
        for m in ready.messages {
            if !self.cut.contains(&(m.from, m.to)) {
                self.net.push_back(m);
            }
        }
        self.check_safety();
        self.check_committed_on_quorum();
        true
    }

    fn persist_node(node: &mut Node) {
        for (index, term) in std::mem::take(&mut node.unpersisted) {
            if node.store.term(index) == Some(term) {
                node.store.durable_index = node.store.durable_index.max(index);
            }
            node.raft.persisted(index, term);
        }
    }

    /// Completes one write of node `id`: entries up to (`index`, `term`) are durable, unless
    /// a truncation replaced them meanwhile (then the report is stale, and dropped by both
    /// the store and the core). Writes complete in the order they were issued.
    pub fn persist_one(&mut self, id: u64, index: u64, term: u64) {
        let node = self.nodes.get_mut(&id).expect("node exists");
        if node.store.term(index) == Some(term) {
            node.store.durable_index = node.store.durable_index.max(index);
        }
        node.raft.persisted(index, term);
    }

    /// Makes node `id`'s outstanding writes durable and reports them.
    pub fn persist(&mut self, id: u64) {
        Self::persist_node(self.nodes.get_mut(&id).expect("node exists"));
    }

    /// Processes every node's Ready once.
    pub fn process_all(&mut self) -> bool {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        let mut any = false;
        for id in ids {
            any |= self.process(id);
        }
        any
    }

    /// Delivers the oldest in-flight message (dropping it if its link is cut now).
    pub fn deliver_one(&mut self) -> Option<RaftMessage> {
        let m = self.net.pop_front()?;
        if self.cut.contains(&(m.from, m.to)) {
            return Some(m);
        }
        if let Some(trace) = self.trace.as_mut() {
            trace.push(format!("  {}", describe(&m)));
        }
        if let Some(node) = self.nodes.get_mut(&m.to) {
            node.raft.step(m.clone());
        }
        if self.record_delivered {
            self.delivered.push(m.clone());
        }
        Some(m)
    }

    /// Runs Readies and deliveries until nothing moves (bounded).
    pub fn stabilize(&mut self) {
        for _ in 0..10_000 {
            let moved = self.process_all();
            if self.net.is_empty() && !moved {
                return;
            }
            while self.deliver_one().is_some() {}
        }
        panic!("cluster did not stabilize");
    }

    /// Ticks every node once, then stabilizes.
    pub fn tick_all(&mut self) {
        for node in self.nodes.values_mut() {
            node.raft.tick();
        }
        self.stabilize();
    }

    /// Ticks every node once without delivering anything.
    pub fn tick_all_no_stabilize(&mut self) {
        for node in self.nodes.values_mut() {
            node.raft.tick();
        }
    }

    /// Ticks every node `n` times, stabilizing after each tick.
    pub fn ticks(&mut self, n: u32) {
        for _ in 0..n {
            self.tick_all();
        }
    }

    /// Makes `id` campaign now and stabilizes.
    pub fn campaign(&mut self, id: u64) {
        self.raft_mut(id).campaign_now();
        self.stabilize();
    }

    /// Elects `id` in a fresh (or leaderless) cluster and asserts it won.
    pub fn elect(&mut self, id: u64) {
        self.campaign(id);
        assert_eq!(self.raft(id).role(), Role::Leader, "node {id} did not win");
    }

    /// The current leader, if exactly one node believes it leads in the highest term.
    pub fn leader(&self) -> Option<u64> {
        let max_term = self.nodes.values().map(|n| n.raft.term()).max()?;
        self.nodes
            .values()
            .find(|n| n.raft.role() == Role::Leader && n.raft.term() == max_term)
            .map(|n| n.raft.id())
    }

    /// Proposes a payload on `id` and stabilizes; returns the index.
    pub fn propose(&mut self, id: u64, payload: &'static [u8]) -> u64 {
        let p = self
            .raft_mut(id)
            .propose(Bytes::from_static(payload), 1, 0)
            .expect("proposal accepted");
        self.stabilize();
        p.index
    }

    /// Cuts both directions between `a` and `b`.
    pub fn partition(&mut self, a: u64, b: u64) {
        self.cut.insert((a, b));
        self.cut.insert((b, a));
    }

    /// Isolates `id` from everyone.
    pub fn isolate(&mut self, id: u64) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for other in ids {
            if other != id {
                self.partition(id, other);
            }
        }
    }

    /// Restores all links.
    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Crashes `id` (losing un-fsynced writes and in-flight messages to it) and restarts it
    /// from its durable state. A member whose vote is withheld stays so (the replica driver
    /// keeps that in a marker file).
    pub fn restart(&mut self, id: u64) {
        let withheld = self.nodes[&id].raft.voting_withheld_term();
        self.restart_with(id, withheld);
    }

    /// Restarts `id` like [`Cluster::restart`], but its durable log ends after `last_index`
    /// (recovery dropped damaged entries it had acknowledged) and, as the replica driver then
    /// does, it restarts with voting withheld.
    pub fn restart_losing(&mut self, id: u64, last_index: u64) {
        let node = self.nodes.get_mut(&id).expect("node exists");
        node.store.crash();
        let keep = last_index.saturating_sub(node.store.start.index) as usize;
        node.store.entries.truncate(keep);
        node.store.durable_index = node.store.durable_index.min(last_index);
        let lost_term = node.store.hard_state.current_term;
        let withheld = node.raft.voting_withheld_term().unwrap_or(0).max(lost_term);
        self.restart_with(id, Some(withheld));
    }

    fn restart_with(&mut self, id: u64, voting_withheld: Option<u64>) {
        let node = self.nodes.get_mut(&id).expect("node exists");
        if std::env::var("RAFTLOG_TRACE_NODE").is_ok_and(|v| v == id.to_string()) {
            eprintln!(
                "node {id} restart: store start {} last {} durable {}",
                node.store.start.index,
                node.store.last_index(),
                node.store.durable_index
            );
        }
        node.store.crash();
        node.unpersisted.clear();
        let state = RestoredState {
            voting_withheld,
            ..node.store.restored_state()
        };
        node.raft = Raft::restore(node.config.clone(), state, &node.store).expect("valid config");
        assert!(
            node.raft.term() >= node.store.hard_state.current_term,
            "node {id} restarted in an older term"
        );
        node.commit_index = node.raft.commit_index();
        node.checked_commit_index = node.commit_index;
        node.term_seen = node.raft.term();
        node.leader_checked_term = 0;
        self.net.retain(|m| m.to != id && m.from != id);
    }

    /// Removes every in-flight message.
    pub fn drop_all(&mut self) {
        self.net.clear();
    }

    /// Asserts that the highest committed index of every node is durable on a quorum: a
    /// committed entry must survive any minority of crashes.
    /// A member restarted by `restart_losing` lost durable copies: until it has caught up
    /// (voting no longer withheld), an entry may be durable on fewer than a quorum.
    pub fn check_committed_on_quorum(&self) {
        if self.nodes.values().any(|n| n.raft.voting_withheld()) {
            return;
        }
        let quorum = self.nodes.len() / 2 + 1;
        for node in self.nodes.values() {
            let index = node.commit_index;
            let Some(&term) = self.committed.get(&index) else {
                continue;
            };
            let durable = self
                .nodes
                .values()
                .filter(|n| {
                    n.store.start.index >= index
                        || (n.store.durable_index >= index && n.store.term(index) == Some(term))
                })
                .count();
            assert!(
                durable >= quorum,
                "index {index} committed on {} but durable on {durable} nodes",
                node.raft.id()
            );
        }
    }

    /// Asserts, incrementally over everything seen so far: election safety (one leader per
    /// term), leader completeness (a leader holds every entry committed in earlier terms),
    /// state-machine safety (every node commits the same entry at an index), monotonic
    /// terms, and `log start <= commit <= last index` on every node.
    pub fn check_safety(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.check_node(id);
        }
    }

    fn check_node(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).expect("node exists");
        let r = &node.raft;
        let (start, commit, last) = (r.log_start().index, r.commit_index(), r.last_index());
        assert!(
            start <= commit && commit <= last,
            "node {id}: log start {start} <= commit {commit} <= last {last} broken"
        );
        assert!(
            r.term() >= node.term_seen,
            "node {id}: term went backwards {} -> {}",
            node.term_seen,
            r.term()
        );
        node.term_seen = r.term();
        if r.role() == Role::Leader {
            let leader = *self.leaders.entry(r.term()).or_insert(id);
            assert_eq!(
                leader,
                id,
                "two leaders in term {}: {leader} and {id}",
                r.term()
            );
            if node.leader_checked_term != r.term() {
                // A new leader: it must hold every entry committed in an earlier term (§5.4).
                node.leader_checked_term = r.term();
                check_leader_complete(r, &self.committed, &self.commit_terms, 0);
            }
            let from = self.commit_terms.keys().next_back().map_or(0, |&i| i) + 1;
            let from = from.max(start + 1);
            for index in from..=commit {
                self.commit_terms.insert(index, r.term());
            }
        }
        // State-machine safety: committed entries are the same everywhere, forever.
        let node = &self.nodes[&id];
        let from = node.checked_commit_index.max(node.store.start.index) + 1;
        let upto = node.commit_index.min(node.store.last_index());
        for index in from..=upto {
            let term = node.store.term(index).expect("committed entry present");
            let first = *self.committed.entry(index).or_insert(term);
            assert_eq!(
                first, term,
                "node {id} committed index {index} at term {term}, others at {first}"
            );
        }
        let node = self.nodes.get_mut(&id).expect("node exists");
        node.checked_commit_index = node.checked_commit_index.max(upto);
        // Entries newly committed in an earlier term must be in every later leader's log.
        if upto >= from {
            for other in self.nodes.values() {
                let o = &other.raft;
                if o.role() == Role::Leader {
                    check_leader_complete(o, &self.committed, &self.commit_terms, from);
                }
            }
        }
    }

    /// Terms of node `id`'s written log from its start.
    pub fn log_terms(&self, id: u64) -> Vec<u64> {
        self.nodes[&id]
            .store
            .entries
            .iter()
            .map(|e| e.term)
            .collect()
    }

    /// Messages of a kind in the network right now.
    pub fn in_flight(&self, f: impl Fn(&Body) -> bool) -> usize {
        self.net
            .iter()
            .filter(|m| m.body.as_ref().is_some_and(&f))
            .count()
    }
}

/// A store holding entries with the given terms at indexes 1.., offsets 0.., one record each.
pub fn store_with_terms(terms: &[u64], current_term: u64) -> MemStore {
    let entries: Vec<Entry> = terms
        .iter()
        .enumerate()
        .map(|(i, &term)| Entry {
            term,
            index: i as u64 + 1,
            kind: raftlog::proto::EntryKind::Data as i32,
            base_offset: i as u64,
            record_count: 1,
            timestamp_ms: 0,
            payload: Bytes::from_static(b"x"),
        })
        .collect();
    MemStore {
        hard_state: HardState {
            current_term,
            log_start_index: 1,
            ..HardState::default()
        },
        durable_index: entries.len() as u64,
        entries,
        ..MemStore::default()
    }
}

impl Cluster {
    /// A cluster whose node `i + 1` restarts from a log with `logs[i]` terms, at `term`.
    pub fn from_logs(logs: &[&[u64]], term: u64, f: impl Fn(&mut Config)) -> Self {
        let mut cluster = Self::with_config(logs.len() as u64, f);
        for (i, terms) in logs.iter().enumerate() {
            let id = i as u64 + 1;
            let node = cluster.nodes.get_mut(&id).expect("node exists");
            node.store = store_with_terms(terms, term);
            let state = node.store.restored_state();
            node.raft =
                Raft::restore(node.config.clone(), state, &node.store).expect("valid config");
        }
        cluster
    }

    /// Like `stabilize`, but silently drops every message for which `drop` says true.
    pub fn stabilize_dropping(&mut self, drop: impl Fn(&RaftMessage) -> bool) {
        for _ in 0..10_000 {
            let moved = self.process_all();
            if self.net.is_empty() && !moved {
                return;
            }
            while let Some(m) = self.net.pop_front() {
                if drop(&m) || self.cut.contains(&(m.from, m.to)) {
                    continue;
                }
                self.nodes
                    .get_mut(&m.to)
                    .expect("node exists")
                    .raft
                    .step(m.clone());
                if self.record_delivered {
                    self.delivered.push(m);
                }
            }
        }
        panic!("cluster did not stabilize");
    }
}

/// True for an AppendEntries carrying an entry with `index`.
pub fn carries_index(m: &RaftMessage, index: u64) -> bool {
    matches!(&m.body, Some(Body::AppendEntries(ae)) if ae.entries.iter().any(|e| e.index == index))
}

/// One readable line for a message, e.g. `1->2 AppendEntries t1 prev 0@0 [1@1 noop] commit 0`.
pub fn describe(m: &RaftMessage) -> String {
    let body = match &m.body {
        None => "(empty)".to_string(),
        Some(Body::RequestVote(v)) => format!(
            "{}RequestVote t{} last {}@{}{}",
            if v.pre_vote { "Pre" } else { "" },
            v.term,
            v.last_log_index,
            v.last_log_term,
            if v.leadership_transfer {
                " transfer"
            } else {
                ""
            }
        ),
        Some(Body::RequestVoteResponse(r)) => format!(
            "{}VoteResponse t{} {}",
            if r.pre_vote { "Pre" } else { "" },
            r.term,
            if r.vote_granted {
                "granted"
            } else {
                "rejected"
            }
        ),
        Some(Body::AppendEntries(a)) => {
            let entries: Vec<String> = a.entries.iter().map(describe_entry).collect();
            format!(
                "AppendEntries t{} prev {}@{} [{}] commit {}",
                a.term,
                a.prev_log_index,
                a.prev_log_term,
                entries.join(" "),
                a.leader_commit
            )
        }
        Some(Body::AppendEntriesResponse(r)) if r.success => {
            format!(
                "AppendResponse t{} ok appended {} durable {}",
                r.term, r.appended_index, r.durable_index
            )
        }
        Some(Body::AppendEntriesResponse(r)) => format!(
            "AppendResponse t{} reject prev {} conflict {}@{} last {}",
            r.term, r.rejected_index, r.conflict_index, r.conflict_term, r.last_log_index
        ),
        Some(Body::InstallSnapshot(i)) => format!(
            "InstallSnapshot t{} {}@{} next offset {}",
            i.term, i.last_included_index, i.last_included_term, i.next_offset
        ),
        Some(Body::InstallSnapshotResponse(r)) => {
            format!("SnapshotResponse t{} last {}", r.term, r.last_log_index)
        }
        Some(Body::TimeoutNow(t)) => format!("TimeoutNow t{}", t.term),
    };
    format!("{}->{} {body}", m.from, m.to)
}

/// `index@term`, plus the kind when it is not data.
fn describe_entry(e: &Entry) -> String {
    match e.kind() {
        raftlog::proto::EntryKind::Noop => format!("{}@{} noop", e.index, e.term),
        _ => format!("{}@{}", e.index, e.term),
    }
}

/// One readable line for what a Ready asks of node `id`.
fn describe_ready(id: u64, raft: &Raft, ready: &Ready) -> String {
    let mut parts = vec![format!("node {id} ({:?} t{})", raft.role(), raft.term())];
    if let Some(hs) = &ready.hard_state {
        parts.push(format!(
            "persist term {} vote {}",
            hs.current_term, hs.voted_for
        ));
    }
    if let Some(pos) = ready.snapshot {
        parts.push(format!("install snapshot {}@{}", pos.index, pos.term));
    }
    if let Some(t) = ready.truncate_from {
        parts.push(format!("truncate from {t}"));
    }
    if !ready.entries.is_empty() {
        let entries: Vec<String> = ready.entries.iter().map(describe_entry).collect();
        parts.push(format!("append [{}]", entries.join(" ")));
    }
    if let Some(c) = ready.commit_index {
        parts.push(format!("commit {c}"));
    }
    if !ready.messages.is_empty() {
        parts.push(format!("send {}", ready.messages.len()));
    }
    parts.join(", ")
}

/// Leader completeness (§5.4.3): every index from `from` committed by a leader of an earlier
/// term is in `leader`'s log with the committed term.
fn check_leader_complete(
    leader: &Raft,
    committed: &BTreeMap<u64, u64>,
    commit_terms: &BTreeMap<u64, u64>,
    from: u64,
) {
    let lo = from.max(leader.log_start().index + 1);
    for (&index, &commit_term) in commit_terms.range(lo..) {
        if commit_term >= leader.term() {
            continue;
        }
        let Some(&term) = committed.get(&index) else {
            continue;
        };
        assert_eq!(
            leader.term_at(index),
            Some(term),
            "leader {} of term {} lacks {index}@{term} committed in term {commit_term}",
            leader.id(),
            leader.term()
        );
    }
}

/// State-machine safety at the storage level: a Ready never truncates (or replaces by a
/// snapshot) an entry this node knows is committed. (A committed entry it does not know
/// committed may go if the core never reported it durable, like an un-fsynced write in a
/// crash; whether enough durable copies remain is `check_committed_on_quorum`'s job.)
fn check_no_committed_entry_dropped(
    id: u64,
    node: &Node,
    ready: &Ready,
    committed: &BTreeMap<u64, u64>,
) {
    let store = &node.store;
    let mut dropped_from = ready.truncate_from;
    if let Some(pos) = ready.snapshot {
        if store.term(pos.index) != Some(pos.term) {
            dropped_from = Some(dropped_from.map_or(pos.index + 1, |t| t.min(pos.index + 1)));
        }
    }
    let Some(from) = dropped_from else { return };
    let from = from.max(store.start.index + 1);
    let upto = store.last_index().min(node.commit_index);
    if from > upto {
        return;
    }
    for (&index, &term) in committed.range(from..=upto) {
        assert_ne!(
            store.term(index),
            Some(term),
            "node {id} drops committed entry {index}@{term} (truncate {:?}, snapshot {:?})",
            ready.truncate_from,
            ready.snapshot
        );
    }
}

/// The Ready contract, checked: no message reveals a term or a vote that is not durable
/// yet (the hard state was applied just before the messages leave).
fn check_durable_before_send(id: u64, store: &MemStore, ready: &Ready) {
    let hs = &store.hard_state;
    for m in &ready.messages {
        let (term, vote_for) = match &m.body {
            // A pre-vote asks for (or grants) a future term without adopting it.
            Some(Body::RequestVote(v)) if v.pre_vote => continue,
            Some(Body::RequestVoteResponse(v)) if v.pre_vote => continue,
            Some(Body::RequestVote(v)) => (v.term, Some(id)),
            Some(Body::RequestVoteResponse(v)) if v.vote_granted => (v.term, Some(m.to)),
            Some(body) => (message_term(body), None),
            None => continue,
        };
        assert!(
            hs.current_term >= term,
            "node {id} sends {} before term {term} is durable (durable {})",
            describe(m),
            hs.current_term
        );
        // A vote of an older term than the durable one is harmless: this member can never
        // act in that term again.
        if let Some(candidate) = vote_for.filter(|_| hs.current_term == term) {
            assert!(
                hs.voted_for == candidate,
                "node {id} sends {} before its vote is durable (durable term {} vote {})",
                describe(m),
                hs.current_term,
                hs.voted_for
            );
        }
    }
}

/// Log matching, incrementally: every entry written must agree with the first copy of the
/// same (index, term) ever written anywhere, in content and in the term before it.
fn check_log_matching(
    id: u64,
    store: &MemStore,
    ready: &Ready,
    entry_ids: &mut HashMap<(u64, u64), (u64, Entry)>,
) {
    let Some(first) = ready.entries.first() else {
        return;
    };
    let mut prev_term = store
        .term(first.index - 1)
        .expect("the entry before an append is in the log");
    for e in &ready.entries {
        let (first_prev, first_entry) = entry_ids
            .entry((e.index, e.term))
            .or_insert_with(|| (prev_term, e.clone()));
        assert!(
            *first_prev == prev_term && first_entry == e,
            "log matching broken on node {id} at {}@{}: prev term {prev_term} vs {first_prev}, entry {e:?} vs {first_entry:?}",
            e.index,
            e.term
        );
        prev_term = e.term;
    }
}
