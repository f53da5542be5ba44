//! A tiny deterministic in-memory network of production replica cores, driven by hand from
//! tests and by the seeded simulator.
//!
//! Each node is a [`ReplicaCore`] (the code every partition of a real node runs) over a
//! [`MemLog`], which separates *written* from *durable* entries, so a crash loses un-synced
//! writes; it can also fill up and lose durable entries. Messages go through one FIFO queue;
//! tests can cut links (one way or both), drop, reorder, or deliver messages one by one. The
//! harness never carries out a Ready itself: it calls [`ReplicaCore::handle_ready`] and then
//! judges what the core did, from the log's journal ([`LogEvent`]), the messages it sent and
//! the answers it gave, against the Raft invariants and the replica's promises.

#![allow(dead_code)]

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::rc::Rc;

use bytes::Bytes;
use raftlog::config::{RaftConfig, StorageConfig};
use raftlog::proto::raft_message::Body;
use raftlog::proto::{Entry, RaftMessage};
use raftlog::raft::{message_term, Config, LogPosition, Membership, Raft, Role};
use raftlog::replica::mem_log::data_entry;
use raftlog::replica::{
    Acks, Action, Appended, CoreConfig, FetchWaiter, Fetched, LogEvent, LogIsTheState, MemLog,
    MemSync, ReplicaCore, ReplicaError, ReplicaLimits, ReplicaLog,
};

/// A fetch's handle in the harness: its number and whether the fetcher stopped waiting.
#[derive(Clone, Debug, Default)]
pub struct FetchTicket {
    /// The fetch's number, as [`Cluster::fetch`] handed it out.
    pub number: u64,
    /// Set to make the fetch abandoned (a long poll that timed out).
    pub abandoned: Rc<Cell<bool>>,
}

impl FetchWaiter for FetchTicket {
    fn is_abandoned(&self) -> bool {
        self.abandoned.get()
    }
}

/// The replica core as the harness runs it: proposals and fetches are numbered.
pub type Core = ReplicaCore<MemLog, LogIsTheState, u64, FetchTicket>;

/// An answer a core gave.
#[derive(Debug)]
pub enum Answer {
    /// To proposal number `proposal`, made on `node`.
    Proposed {
        /// The node that answered.
        node: u64,
        /// The proposal's number.
        proposal: u64,
        /// The answer.
        result: Result<Appended<()>, ReplicaError>,
    },
    /// To fetch number `fetch`, made on `node`.
    Fetched {
        /// The node that answered.
        node: u64,
        /// The fetch's number.
        fetch: u64,
        /// The answer.
        result: Result<Fetched, ReplicaError>,
    },
}

/// A proposal made through [`Cluster::propose_with`], kept to judge its answer.
#[derive(Debug, Clone, Copy)]
pub struct ProposalRecord {
    /// How durable it had to be before its answer.
    pub acks: Acks,
    /// Its timestamp, unique per proposal: it identifies the proposal's entry in a log.
    pub timestamp_ms: i64,
}

/// What one [`Cluster::process`] saw a core do.
#[derive(Debug, Default)]
pub struct Processed {
    /// Changes to the log, in order.
    pub events: Vec<LogEvent>,
    /// Messages sent (before links were applied).
    pub messages: Vec<RaftMessage>,
    /// The new commit index, if it moved.
    pub commit_index: Option<u64>,
    /// Answers given.
    pub answers: usize,
}

impl Processed {
    /// Nothing happened.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.messages.is_empty()
            && self.commit_index.is_none()
            && self.answers == 0
    }

    /// The hard state written, if any.
    pub fn hard_state(&self) -> Option<raftlog::proto::HardState> {
        self.events.iter().find_map(|e| match e {
            LogEvent::HardState(hs) => Some(*hs),
            _ => None,
        })
    }

    /// The entries appended.
    pub fn appended(&self) -> Vec<&Entry> {
        self.events
            .iter()
            .flat_map(|e| match e {
                LogEvent::Append { entries, .. } => entries.iter().collect(),
                _ => Vec::new(),
            })
            .collect()
    }
}

/// One simulated member: a production replica core over an in-memory log.
pub struct Node {
    /// The replica core.
    pub core: Core,
    /// Config, kept for restarts.
    pub config: CoreConfig,
    /// Complete syncs as soon as the core asks for them (otherwise call `Cluster::persist`).
    pub auto_persist: bool,
    /// The sync the core handed out and that has not completed yet.
    pub sync: Option<MemSync>,
    /// Highest commit index seen after a Ready (in this incarnation).
    pub commit_index: u64,
    /// Committed entries up to here were compared with `Cluster::committed`.
    pub checked_commit_index: u64,
    /// Highest term seen in this incarnation (terms never go backwards).
    pub term_seen: u64,
    /// The term in which this node was last checked for leader completeness as leader.
    pub leader_checked_term: u64,
    /// Restarts so far.
    pub incarnation: u64,
}

impl Node {
    fn start(config: CoreConfig, mut log: MemLog) -> Self {
        log.record(true);
        let core = Core::new(config.clone(), log, LogIsTheState).expect("valid config");
        let mut node = Self {
            core,
            config,
            auto_persist: true,
            sync: None,
            commit_index: 0,
            checked_commit_index: 0,
            term_seen: 0,
            leader_checked_term: 0,
            incarnation: 0,
        };
        node.reset_trackers();
        node
    }

    fn reset_trackers(&mut self) {
        self.commit_index = self.core.raft().commit_index();
        self.checked_commit_index = self.commit_index;
        self.term_seen = self.core.raft().term();
        self.leader_checked_term = 0;
    }

    /// The consensus core.
    pub fn raft(&self) -> &Raft {
        self.core.raft()
    }

    /// The storage.
    pub fn log(&self) -> &MemLog {
        self.core.log()
    }

    /// Stops the process (un-synced writes and unanswered waiters are lost), lets `change`
    /// act on the log (a crash, a damaged disk, a replaced log), and starts a new core on it,
    /// as a node does after a restart.
    pub fn restart(&mut self, change: impl FnOnce(&mut MemLog)) {
        let placeholder =
            Core::new(self.config.clone(), MemLog::new(), LogIsTheState).expect("valid config");
        let mut log = std::mem::replace(&mut self.core, placeholder).into_log();
        change(&mut log);
        log.take_journal();
        log.record(true);
        let durable_term = log.hard_state().current_term;
        self.core = Core::new(self.config.clone(), log, LogIsTheState).expect("restart");
        assert!(
            self.core.raft().term() >= durable_term,
            "node {} restarted in an older term",
            self.core.raft().id()
        );
        self.sync = None;
        self.incarnation += 1;
        self.reset_trackers();
    }

    fn persist(&mut self) {
        while let Some(job) = self.sync.take() {
            self.core.sync_done(job);
            self.sync = self.core.poll_sync(0);
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
    /// The voters: only their copies count toward the durability checks (learners never do).
    pub voters: BTreeSet<u64>,
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
    /// Answers given by the cores, checked and kept in order (drain them to consume).
    pub answers: Vec<Answer>,
    /// Proposals made through [`Cluster::propose_with`], by number.
    pub proposals: HashMap<u64, ProposalRecord>,
    /// Proposals answered `Ok` with `Acks::All`.
    pub acked_count: u64,
    next_proposal: u64,
    next_fetch: u64,
}

/// The Raft config a node gives member `id` of `voters` in group 1 (a node's defaults, so
/// the tests and the simulator run what a node runs), with a seed of the tests' own.
pub fn config(id: u64, voters: &[u64]) -> Config {
    let mut c = RaftConfig::default().consensus(id, 1, voters.to_vec());
    c.seed = id * 7919;
    c
}

/// A replica config around `raft`: a node's replica limits, producer tracking on, no
/// retention (tests compact by hand).
pub fn core_config(raft: Config) -> CoreConfig {
    CoreConfig {
        raft,
        limits: ReplicaLimits::from_settings(&RaftConfig::default(), &StorageConfig::default()),
        track_producers: true,
        retention_bytes: 0,
        retention_ms: 0,
    }
}

/// A durable log holding entries with the given terms at indexes 1.., offsets 0.., one
/// record each, at `current_term`.
pub fn log_with_terms(terms: &[u64], current_term: u64) -> MemLog {
    let entries = terms
        .iter()
        .enumerate()
        .map(|(i, &term)| data_entry(i as u64 + 1, term, Bytes::from_static(b"x")))
        .collect();
    MemLog::with_entries(entries, current_term)
}

impl Cluster {
    /// A cluster of `n` nodes with ids 1..=n and default test config.
    pub fn new(n: u64) -> Self {
        Self::with_config(n, |_| {})
    }

    /// A cluster whose Raft configs are adjusted by `f` before start.
    pub fn with_config(n: u64, f: impl Fn(&mut Config)) -> Self {
        Self::with_core_config(n, |c| f(&mut c.raft))
    }

    /// A cluster whose replica configs are adjusted by `f` before start.
    pub fn with_core_config(n: u64, f: impl Fn(&mut CoreConfig)) -> Self {
        Self::with_members(n, 0, f)
    }

    /// A cluster of `voters` voters (ids `1..=voters`) and `learners` learners (the ids
    /// after them), whose replica configs are adjusted by `f` before start.
    pub fn with_members(voters: u64, learners: u64, f: impl Fn(&mut CoreConfig)) -> Self {
        let voter_ids: Vec<u64> = (1..=voters).collect();
        let learner_ids: Vec<u64> = (voters + 1..=voters + learners).collect();
        let mut nodes = BTreeMap::new();
        for id in 1..=voters + learners {
            let mut raft = config(id, &voter_ids);
            raft.learners = learner_ids.clone();
            let mut config = core_config(raft);
            f(&mut config);
            nodes.insert(id, Node::start(config, MemLog::new()));
        }
        Self {
            nodes,
            voters: voter_ids.into_iter().collect(),
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
            answers: Vec::new(),
            proposals: HashMap::new(),
            acked_count: 0,
            next_proposal: 1,
            next_fetch: 1,
        }
    }

    /// A cluster whose node `i + 1` restarts from a log with `logs[i]` terms, at `term`.
    pub fn from_logs(logs: &[&[u64]], term: u64, f: impl Fn(&mut Config)) -> Self {
        let mut cluster = Self::with_config(logs.len() as u64, f);
        for (i, terms) in logs.iter().enumerate() {
            cluster.replace_log(i as u64 + 1, log_with_terms(terms, term));
        }
        cluster
    }

    /// The replica core of node `id`.
    pub fn core(&self, id: u64) -> &Core {
        &self.nodes[&id].core
    }

    /// The replica core of node `id`, mutably.
    pub fn core_mut(&mut self, id: u64) -> &mut Core {
        &mut self.nodes.get_mut(&id).expect("node exists").core
    }

    /// The consensus core of node `id`.
    pub fn raft(&self, id: u64) -> &Raft {
        self.nodes[&id].raft()
    }

    /// The consensus core of node `id`, mutably (proposals made on it have no waiter).
    pub fn raft_mut(&mut self, id: u64) -> &mut Raft {
        self.core_mut(id).raft_mut()
    }

    /// The log of node `id`.
    pub fn log(&self, id: u64) -> &MemLog {
        self.nodes[&id].log()
    }

    /// Restarts node `id` on `log` instead of its own.
    pub fn replace_log(&mut self, id: u64, log: MemLog) {
        self.node_mut(id).restart(|old| *old = log);
        self.net.retain(|m| m.to != id && m.from != id);
    }

    fn node_mut(&mut self, id: u64) -> &mut Node {
        self.nodes.get_mut(&id).expect("node exists")
    }

    /// Runs node `id`'s Ready through its replica core and checks what it did. Returns
    /// whether anything happened.
    pub fn process(&mut self, id: u64) -> bool {
        !self.run_ready(id, true).is_empty()
    }

    /// Runs node `id`'s Ready, checked, and returns what it did.
    pub fn ready_of(&mut self, id: u64) -> Processed {
        self.run_ready(id, true)
    }

    /// Runs node `id`'s Ready without the safety checks (for fuzzing with forged messages,
    /// which no real peer would send).
    pub fn ready_unchecked(&mut self, id: u64) -> Processed {
        self.run_ready(id, false)
    }

    fn run_ready(&mut self, id: u64, check: bool) -> Processed {
        let node = self.nodes.get_mut(&id).expect("node exists");
        let was_stalled = node.core.storage_full().is_some();
        let previous_commit = node.commit_index;
        node.core
            .handle_ready()
            .expect("an in-memory log fails only when full, which stalls");
        let events = node.core.log_mut().take_journal();
        let mut processed = Processed {
            events,
            ..Processed::default()
        };
        let mut answers = Vec::new();
        for action in node.core.actions() {
            match action {
                Action::Send(m) => processed.messages.push(m),
                Action::Proposed(proposal, result) => answers.push(Answer::Proposed {
                    node: id,
                    proposal,
                    result,
                }),
                Action::Fetched(ticket, result) => answers.push(Answer::Fetched {
                    node: id,
                    fetch: ticket.number,
                    result,
                }),
            }
        }
        processed.answers = answers.len();
        if !was_stalled && node.core.storage_full().is_some() {
            // A stall rebuilds the consensus core from the log, as a restart does: its
            // commit index starts again from what the replica acted on.
            node.reset_trackers();
        }
        let commit = node.core.raft().commit_index();
        assert!(
            commit >= node.commit_index,
            "commit went backwards on {id}: {} -> {commit}",
            node.commit_index
        );
        if commit != node.commit_index {
            processed.commit_index = Some(commit);
            node.commit_index = commit;
        }
        if node.sync.is_none() {
            node.sync = node.core.poll_sync(0);
        }
        if node.auto_persist {
            node.persist();
        }
        if std::env::var("RAFTLOG_TRACE_NODE").is_ok_and(|v| v == id.to_string()) {
            let log = node.log();
            eprintln!(
                "{} | log first {} last {} durable {} | core last {} persisted {}",
                describe_processed(id, node.raft(), &processed),
                log.first_index(),
                log.last_index(),
                log.durable_index(),
                node.raft().last_index(),
                node.raft().persisted_index()
            );
        }
        if let Some(trace) = self.trace.as_mut() {
            if !processed.events.is_empty()
                || !processed.messages.is_empty()
                || processed.commit_index.is_some()
            {
                trace.push(describe_processed(id, node.raft(), &processed));
            }
        }
        for event in &processed.events {
            match event {
                LogEvent::Snapshot(_) => self.snapshots_count += 1,
                LogEvent::Truncate { .. } => self.truncations_count += 1,
                _ => {}
            }
        }
        if check {
            let node = &self.nodes[&id];
            check_no_committed_entry_dropped(id, previous_commit, &processed, &self.committed);
            check_log_matching(id, &processed, &mut self.entry_ids);
            check_durable_before_send(id, node.log(), &processed.messages);
        }
        for m in &processed.messages {
            if !self.cut.contains(&(m.from, m.to)) {
                self.net.push_back(m.clone());
            }
        }
        if check {
            self.check_safety();
            self.check_committed_on_quorum();
            if let Some(commit) = processed.commit_index {
                if self.nodes[&id].raft().role() == Role::Leader {
                    self.check_commit_durable(id, commit);
                }
            }
            for answer in &answers {
                self.check_answer(answer);
            }
        }
        self.acked_count += answers
            .iter()
            .filter(|a| match a {
                Answer::Proposed {
                    proposal,
                    result: Ok(_),
                    ..
                } => self
                    .proposals
                    .get(proposal)
                    .is_some_and(|p| p.acks == Acks::All),
                _ => false,
            })
            .count() as u64;
        self.answers.extend(answers);
        processed
    }

    /// Completes node `id`'s running sync, if any; returns whether there was one.
    pub fn complete_sync(&mut self, id: u64) -> bool {
        let node = self.node_mut(id);
        match node.sync.take() {
            Some(job) => {
                node.core.sync_done(job);
                node.sync = node.core.poll_sync(0);
                true
            }
            None => false,
        }
    }

    /// Makes node `id`'s outstanding writes durable and reports them.
    pub fn persist(&mut self, id: u64) {
        self.node_mut(id).persist();
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
            node.core.step(m.clone());
        }
        if self.record_delivered {
            self.delivered.push(m.clone());
        }
        Some(m)
    }

    /// Runs Readies and deliveries until nothing moves (bounded).
    pub fn stabilize(&mut self) {
        self.stabilize_dropping(|_| false);
    }

    /// Like `stabilize`, but silently drops every message for which `drop` says true.
    pub fn stabilize_dropping(&mut self, drop: impl Fn(&RaftMessage) -> bool) {
        for _ in 0..10_000 {
            let moved = self.process_all();
            if self.net.is_empty() && !moved {
                return;
            }
            while let Some(m) = self.net.front() {
                if drop(m) {
                    self.net.pop_front();
                    continue;
                }
                self.deliver_one();
            }
        }
        panic!("cluster did not stabilize");
    }

    /// Ticks every node once, then stabilizes.
    pub fn tick_all(&mut self) {
        self.tick_all_no_stabilize();
        self.stabilize();
    }

    /// Ticks every node once without delivering anything.
    pub fn tick_all_no_stabilize(&mut self) {
        for node in self.nodes.values_mut() {
            node.core.tick();
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
        self.core_mut(id).campaign();
        self.stabilize();
    }

    /// Elects `id` in a fresh (or leaderless) cluster and asserts it won.
    pub fn elect(&mut self, id: u64) {
        self.campaign(id);
        assert_eq!(self.raft(id).role(), Role::Leader, "node {id} did not win");
    }

    /// The current leader: of the nodes that believe they lead, the one in the highest term
    /// (a deposed leader may not have heard yet). Terms of other nodes do not matter: a
    /// member removed from the group campaigns on in terms nobody follows.
    pub fn leader(&self) -> Option<u64> {
        self.nodes
            .values()
            .filter(|n| n.raft().role() == Role::Leader)
            .max_by_key(|n| n.raft().term())
            .map(|n| n.raft().id())
    }

    /// Proposes `payload` (`record_count` records) on `id` through its replica core, answered per
    /// `acks`; returns the proposal's number, which its [`Answer`] carries.
    pub fn propose_with(
        &mut self,
        id: u64,
        payload: Bytes,
        record_count: u32,
        acks: Acks,
        timestamp_ms: i64,
    ) -> u64 {
        let number = self.next_proposal;
        self.next_proposal += 1;
        self.proposals
            .insert(number, ProposalRecord { acks, timestamp_ms });
        self.core_mut(id)
            .propose(payload, record_count, acks, timestamp_ms, number);
        number
    }

    /// Proposes a payload on `id` (asserting it is accepted) and stabilizes; returns the
    /// entry's index.
    pub fn propose(&mut self, id: u64, payload: &'static [u8]) -> u64 {
        let before = self.raft(id).last_index();
        let timestamp_ms = self.next_proposal as i64;
        self.propose_with(id, Bytes::from_static(payload), 1, Acks::All, timestamp_ms);
        assert_eq!(
            self.raft(id).last_index(),
            before + 1,
            "proposal on {id} refused"
        );
        self.stabilize();
        before + 1
    }

    /// Fetches from `offset` on node `id`; returns the ticket its [`Answer`] names (set its
    /// `abandoned` flag to give up a parked fetch).
    pub fn fetch(&mut self, id: u64, offset: u64, bytes_max: u64, park: bool) -> FetchTicket {
        let ticket = FetchTicket {
            number: self.next_fetch,
            abandoned: Rc::default(),
        };
        self.next_fetch += 1;
        self.core_mut(id)
            .fetch(offset, bytes_max, park, ticket.clone());
        ticket
    }

    /// Moves node `id`'s log start up to `index` (retention; never beyond its commit or
    /// durable index) and returns the new snapshot position.
    pub fn compact(&mut self, id: u64, index: u64) -> LogPosition {
        let core = self.core_mut(id);
        core.log_mut().retain_up_to(index);
        core.apply_retention(0);
        core.log().start()
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

    /// Crashes `id` (losing un-synced writes, waiters and in-flight messages to it) and
    /// restarts it from its durable state. A member whose vote is withheld stays so: the
    /// log keeps the marker.
    pub fn restart(&mut self, id: u64) {
        self.node_mut(id).restart(MemLog::crash);
        self.net.retain(|m| m.to != id && m.from != id);
    }

    /// Restarts `id` like [`Cluster::restart`], but its durable log ends after `last_index`
    /// (recovery dropped damaged entries it had acknowledged); as storage recovery does, the
    /// log then carries the voting-withheld marker.
    pub fn restart_losing(&mut self, id: u64, last_index: u64) {
        self.node_mut(id)
            .restart(|log| log.lose_durable_after(last_index));
        self.net.retain(|m| m.to != id && m.from != id);
    }

    /// Starts node `id`, not yet a member of the group: it knows the group's first voters
    /// and itself as a learner, and waits for a leader that adds it to replicate to it.
    pub fn add_node(&mut self, id: u64) {
        let voters: Vec<u64> = self.voters.iter().copied().collect();
        let mut raft = config(id, &voters);
        raft.learners = vec![id];
        let node = Node::start(core_config(raft), MemLog::new());
        assert!(self.nodes.insert(id, node).is_none(), "node {id} exists");
    }

    /// Removes every in-flight message.
    pub fn drop_all(&mut self) {
        self.net.clear();
    }

    /// Whether some member lost durable copies and has not caught up yet: until then an
    /// entry may be durable on fewer than a quorum.
    fn some_vote_withheld(&self) -> bool {
        self.nodes
            .values()
            .any(|n| n.raft().voting_withheld() || n.log().voting_withheld().is_some())
    }

    /// The voter sets of `membership` (both sides while joint) that do not hold
    /// `index@term` durably on a majority, with how many of each do.
    fn short_majorities(
        &self,
        index: u64,
        term: u64,
        membership: &Membership,
    ) -> Vec<(BTreeSet<u64>, usize)> {
        let mut sets = vec![membership.voters.clone()];
        if membership.is_joint() {
            sets.push(membership.voters_outgoing.clone());
        }
        sets.into_iter()
            .map(|set| {
                let durable = set
                    .iter()
                    .filter(|id| {
                        self.nodes
                            .get(id)
                            .is_some_and(|n| Self::durable_on(n, index, term))
                    })
                    .count();
                (set, durable)
            })
            .filter(|(set, durable)| *durable <= set.len() / 2)
            .collect()
    }

    /// Whether node `n` holds `index@term` durably (or compacted it away, which only ever
    /// happens to committed entries).
    fn durable_on(n: &Node, index: u64, term: u64) -> bool {
        let log = n.log();
        log.first_index() > index
            || (log.durable_index() >= index && log.term_at(index) == Some(term))
    }

    /// Asserts that the highest committed index of every node is durable on a majority of
    /// the group's voters: a committed entry must survive any minority of crashes. Checked
    /// while the configuration never changed; across changes, the commit itself is checked
    /// against the configuration the leader committed it in ([`Self::check_commit_durable`]),
    /// and leader completeness covers what follows.
    pub fn check_committed_on_quorum(&self) {
        if self.some_vote_withheld() {
            return;
        }
        let initial = Membership::new(self.voters.iter().copied(), []);
        for node in self.nodes.values() {
            let history = node.raft().membership_history();
            if !history.logged.is_empty() || history.at_log_start.voters != initial.voters {
                continue;
            }
            let index = node.commit_index;
            let Some(&term) = self.committed.get(&index) else {
                continue;
            };
            let short = self.short_majorities(index, term, &initial);
            assert!(
                short.is_empty(),
                "index {index} committed on {} but durable only on (voters, count) {short:?}",
                node.raft().id()
            );
        }
    }

    /// Asserts that a leader's new commit index is durable on a majority of every voter set
    /// of the configuration it is in force with (both sides while joint; never learners).
    fn check_commit_durable(&self, id: u64, index: u64) {
        if self.some_vote_withheld() {
            return;
        }
        let raft = self.nodes[&id].raft();
        let Some(term) = raft.term_at(index) else {
            return; // compacted: committed long ago
        };
        let short = self.short_majorities(index, term, raft.membership());
        assert!(
            short.is_empty(),
            "leader {id} committed {index}@{term} with {:?}, durable only on (voters, count) {short:?}",
            raft.membership()
        );
    }

    /// The replica's promises about its answers: a produce acknowledged with `Acks::All` is
    /// committed, is the proposal's own entry, and is durable on a majority; a fetch shows
    /// only committed records, below the high watermark it reports.
    fn check_answer(&self, answer: &Answer) {
        match answer {
            Answer::Proposed {
                node: id,
                proposal,
                result: Ok(appended),
            } => {
                let Some(record) = self.proposals.get(proposal) else {
                    return;
                };
                if record.acks != Acks::All {
                    return;
                }
                let node = &self.nodes[id];
                let index = appended.index;
                assert!(
                    index <= node.commit_index,
                    "node {id} acknowledged proposal {proposal} at {index} before commit {}",
                    node.commit_index
                );
                let Some(entry) = node.log().entry(index) else {
                    return; // compacted away, so committed
                };
                assert_eq!(
                    entry.timestamp_ms, record.timestamp_ms,
                    "node {id} acknowledged proposal {proposal} with another proposal's entry {index}"
                );
                assert_eq!(
                    self.committed.get(&index),
                    Some(&entry.term),
                    "node {id} acknowledged {index}@{} which is not the committed entry",
                    entry.term
                );
                if !self.some_vote_withheld() {
                    let short = self.short_majorities(index, entry.term, node.raft().membership());
                    assert!(
                        short.is_empty(),
                        "node {id} acknowledged {index}@{} durable only on (voters, count) {short:?}",
                        entry.term
                    );
                }
            }
            Answer::Fetched {
                node: id,
                fetch,
                result: Ok(fetched),
            } => {
                let node = &self.nodes[id];
                for e in &fetched.entries {
                    assert!(
                        e.base_offset < fetched.high_watermark && e.index <= node.commit_index,
                        "node {id} fetch {fetch} returned {}@{} (offset {}) past commit {} / high watermark {}",
                        e.index,
                        e.term,
                        e.base_offset,
                        node.commit_index,
                        fetched.high_watermark
                    );
                    assert_eq!(
                        self.committed.get(&e.index),
                        Some(&e.term),
                        "node {id} fetch {fetch} returned {}@{}, not the committed entry",
                        e.index,
                        e.term
                    );
                }
            }
            _ => {}
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
        let r = node.core.raft();
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
        let log = node.log();
        let from = node.checked_commit_index.max(log.first_index() - 1) + 1;
        let upto = node.commit_index.min(log.last_index());
        for index in from..=upto {
            let term = log.term_at(index).expect("committed entry present");
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
                let o = other.raft();
                if o.role() == Role::Leader {
                    check_leader_complete(o, &self.committed, &self.commit_terms, from);
                }
            }
        }
    }

    /// Terms of node `id`'s written log from its start.
    pub fn log_terms(&self, id: u64) -> Vec<u64> {
        self.log(id).written().iter().map(|e| e.term).collect()
    }

    /// Messages of a kind in the network right now.
    pub fn in_flight(&self, f: impl Fn(&Body) -> bool) -> usize {
        self.net
            .iter()
            .filter(|m| m.body.as_ref().is_some_and(&f))
            .count()
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

/// One readable line for what a replica core did with node `id`'s Ready.
fn describe_processed(id: u64, raft: &Raft, processed: &Processed) -> String {
    let mut parts = vec![format!("node {id} ({:?} t{})", raft.role(), raft.term())];
    for event in &processed.events {
        parts.push(match event {
            LogEvent::HardState(hs) => {
                format!("persist term {} vote {}", hs.current_term, hs.voted_for)
            }
            LogEvent::Snapshot(pos) => format!("install snapshot {}@{}", pos.index, pos.term),
            LogEvent::Truncate { from, .. } => format!("truncate from {from}"),
            LogEvent::Append { entries, .. } => {
                let entries: Vec<String> = entries.iter().map(describe_entry).collect();
                format!("append [{}]", entries.join(" "))
            }
        });
    }
    if let Some(c) = processed.commit_index {
        parts.push(format!("commit {c}"));
    }
    if !processed.messages.is_empty() {
        parts.push(format!("send {}", processed.messages.len()));
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

/// State-machine safety at the storage level: the core never truncates (or replaces by a
/// snapshot) an entry this node knew was committed before this Ready. (A committed entry it
/// did not know committed may go if it was never durable here, like an un-synced write in a
/// crash; whether enough durable copies remain is `check_committed_on_quorum`'s job.)
fn check_no_committed_entry_dropped(
    id: u64,
    known_commit: u64,
    processed: &Processed,
    committed: &BTreeMap<u64, u64>,
) {
    for event in &processed.events {
        match event {
            LogEvent::Truncate { from, dropped } => {
                for &(index, term) in dropped {
                    assert!(
                        !(index <= known_commit && committed.get(&index) == Some(&term)),
                        "node {id} drops committed entry {index}@{term} (truncate from {from})"
                    );
                }
            }
            LogEvent::Snapshot(pos) => {
                if let Some(&term) = committed.get(&pos.index) {
                    assert_eq!(
                        term, pos.term,
                        "node {id} installs snapshot {}@{} over committed {}@{term}",
                        pos.index, pos.term, pos.index
                    );
                }
            }
            _ => {}
        }
    }
}

/// The Ready contract, checked: no message reveals a term or a vote that is not durable
/// yet (the core writes the hard state before its messages leave).
fn check_durable_before_send(id: u64, log: &MemLog, messages: &[RaftMessage]) {
    let hs = log.hard_state();
    for m in messages {
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
    processed: &Processed,
    entry_ids: &mut HashMap<(u64, u64), (u64, Entry)>,
) {
    for event in &processed.events {
        let LogEvent::Append { prev_term, entries } = event else {
            continue;
        };
        let mut prev_term = *prev_term;
        for e in entries {
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
}
