//! A deterministic simulator of whole Raft groups (3 and 5 members) running the production
//! replica core, in the spirit of TigerBeetle's VOPR and etcd's interaction tests.
//!
//! Every member is a [`raftlog::replica::ReplicaCore`], the code each partition of a real
//! node runs, over an in-memory [`raftlog::replica::MemLog`] that loses un-synced writes in
//! a crash, can fill up and can lose durable entries. Time advances in units
//! (`UNITS_PER_TICK` per Raft tick). Every unit is one **step**: due messages are delivered,
//! due syncs complete, faults are injected, clients produce and consumers fetch, every live
//! member's Ready is carried out by its core, and then every invariant is checked (the
//! harness also checks after each single Ready):
//!
//! - election safety: at most one leader per term;
//! - log matching: an (index, term) names the same entry, with the same predecessor, on
//!   every member and forever;
//! - leader completeness: a leader holds every entry committed in earlier terms;
//! - state-machine safety: committed entries never change, and no member drops one;
//! - committed-on-quorum: every committed index is durable on a majority;
//! - durable before send: no message reveals a term or vote not yet durable;
//! - monotonic terms and commit indexes; `log start <= commit <= last index`;
//! - an acknowledged produce is committed, is its own entry, and is durable on a majority;
//! - a fetch never returns an uncommitted record, nor one at or past its high watermark;
//! - a parked fetch is answered as soon as records commit past its offset, and a fetch that
//!   does not park is answered at once;
//! - a producer's batch, however often retried (to whichever leader), is stored once in the
//!   committed log, and every acknowledgement of it names that one offset;
//! - membership: a leader's commit is durable on a majority of every voter set of its
//!   configuration (learners never count); a leader has at most one configuration entry
//!   above its commit index; the configurations in force on the members holding the last
//!   committed configuration entry have pairwise intersecting quorums; after healing, every
//!   change completes (the group leaves any joint configuration).
//!
//! Fault sources, each drawing from its own seeded stream (so changing one does not perturb
//! the others): message loss, delay (and so reordering), duplication, symmetric and one-way
//! partitions, crashes that lose un-synced writes (also between persisting and sending, with
//! part of the messages out), restarts that lose durable entries (voting withheld), slow
//! disks, full disks, leadership transfers, compaction, producers (idempotent, short-lived,
//! retrying on errors and timeouts), consumers (parking, giving up), and on about half the
//! seeds membership changes (spare members added as learners, promoted, voters removed or
//! replaced, the leader among them, learners given up, leaders crashed while joint, members
//! no configuration names wiped and replaced by fresh ones under new ids). Seeds cycle through
//! profiles, one of which aims at Figure 8 (leaders crashing right after sending an entry to
//! a minority, quick re-elections, one entry per message).
//!
//! After the chaos, every fault heals and the group must elect a leader, acknowledge a new
//! produce and commit it on every member within `LIVENESS_TICKS_MAX` ticks.
//!
//! `RAFTLOG_SIM_SEEDS=N` runs seeds `0..N` (`RAFTLOG_SIM_FIRST_SEED` moves the start);
//! `RAFTLOG_SIM_SEED=S` replays exactly one seed; `RAFTLOG_SIM_TRACE=1` prints the cluster
//! every tick. A failure prints `reproduce with RAFTLOG_SIM_SEED=<seed>`; the last line is
//! `simulation: N seeds, S steps, V violations`.

mod raft_harness;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::panic::{self, AssertUnwindSafe};

use bytes::Bytes;
use raftlog::batch::{decode_records, RecordBatchBuilder};
use raftlog::proto::raft_message::Body;
use raftlog::proto::{EntryKind, RaftMessage, RecordBatch};
use raftlog::raft::{Membership, MembershipChange, Role};
use raftlog::replica::{Acks, ReplicaError, ReplicaLog};
use raftlog::rng::SplitMix64;

use raft_harness::{Answer, Cluster, FetchTicket};

/// Simulated time units per Raft tick: message and disk latencies are mostly a fraction of a
/// tick, as on a LAN with election timeouts of a few hundred milliseconds.
const UNITS_PER_TICK: u64 = 10;
/// Ticks of faults per seed: long enough for dozens of elections and a few compactions.
const CHAOS_TICKS: u64 = 500;
/// After healing, a leader must acknowledge a new produce and commit it on every member
/// within this many ticks (20 election timeouts: pre-vote rounds, lease expiry, a full
/// disk's retry and catch-up all fit comfortably).
const LIVENESS_TICKS_MAX: u64 = 200;
/// Default seed count: about 9 s in release on a 2-core machine (`RAFTLOG_SIM_SEEDS` runs
/// more).
const SEEDS_DEFAULT: u64 = 1000;
/// A leader is young (and a Figure 8 crash candidate) for this many ticks after election.
const YOUNG_LEADER_TICKS: u64 = 3;
/// Bytes of the static buffer plain proposal payloads are cut from.
const PAYLOAD_BYTES_MAX: usize = 256;
/// Producers writing at the same time; each writes a few batches and goes away.
const PRODUCERS_COUNT: usize = 3;
/// A producer that heard nothing about an attempt for this long sends it again (a client's
/// request timeout), often to another leader.
const PRODUCE_TIMEOUT_TICKS: u64 = 25;
/// Bytes a consumer asks for per fetch, at most.
const FETCH_BYTES_MAX: u32 = 2000;

static PAYLOAD: [u8; PAYLOAD_BYTES_MAX] = [0x5a; PAYLOAD_BYTES_MAX];

/// What a seed stresses; chosen by `seed % 4`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Profile {
    /// Every fault at a moderate rate.
    Mixed,
    /// Figure 8: five members, the paper's bare protocol, one entry per message, leaders
    /// crashing right after sending to a minority, quick restarts and re-elections.
    Figure8,
    /// Symmetric and one-way partitions, message loss, transfers.
    Partitions,
    /// Slow and full disks, crashes losing un-fsynced writes and crashes between persist
    /// and send.
    Disks,
}

/// Rates of one profile, in events per thousand draws.
#[derive(Clone, Copy, Debug)]
struct Rates {
    /// Per tick: crash some member.
    crash_per_mille: u32,
    /// Per tick: of those crashes, how many hit the leader.
    crash_leader_per_mille: u32,
    /// Per Ready with messages: crash between persisting and sending (some messages out).
    crash_mid_send_per_mille: u32,
    /// Per Ready with messages of a leader elected less than `YOUNG_LEADER_TICKS` ago: crash
    /// it while sending (a new leader whose no-op or first entries reach only a minority).
    crash_young_leader_per_mille: u32,
    /// Figure 8 adversary, per AppendEntries of a leader whose log still holds uncommitted
    /// entries of earlier terms: lose it if it carries entries of the leader's own term (so
    /// the old-term entries spread without the new term's no-op, as in Figure 8 (c)).
    lose_current_term_entries_per_mille: u32,
    /// Figure 8 adversary, per Ready of a leader whose commit index advanced: crash it while
    /// sending (Figure 8 (d): the leader fails right after committing).
    crash_after_commit_per_mille: u32,
    /// Figure 8 adversary, per tick without a live leader: the follower with the most
    /// up-to-date-looking log (highest last term) campaigns at once, as if its election
    /// timer fired first: the member most likely to overwrite an old-term entry.
    campaign_highest_term_per_mille: u32,
    /// Downtime of a crashed member, in ticks: `[low, high)`.
    down_ticks: (u32, u32),
    /// Per tick: change the partitions.
    partition_per_mille: u32,
    /// Per tick: toggle one member's disk between fast and slow.
    disk_per_mille: u32,
    /// Per tick: the leader starts a transfer.
    transfer_per_mille: u32,
    /// Per tick: a member compacts its log.
    compaction_per_mille: u32,
    /// Per unit: a client proposes (a producer's batch or a plain entry) to a member that
    /// believes it leads.
    proposal_per_mille: u32,
    /// Per unit: a consumer fetches from a member (at the high watermark it may park).
    fetch_per_mille: u32,
    /// Per tick: a member's disk fills up for a while (appends fail with `STORAGE_FULL`).
    full_disk_per_mille: u32,
    /// Per message: duplicate it.
    duplicate_per_mille: u32,
    /// Message loss rates the loss stream switches between.
    loss_levels_per_mille: &'static [u32],
    /// Per tick: a member restarts with the end of its *durable* log gone (a damaged disk:
    /// storage recovery's `CorruptMiddle`) and voting withheld, while no other member is.
    lose_durable_per_mille: u32,
    /// Per tick, on seeds that change membership: a leader is asked for a change.
    membership_per_mille: u32,
    /// Per tick, on seeds that change membership: a leader whose group is joint crashes
    /// (between entering and leaving the joint configuration).
    crash_joint_leader_per_mille: u32,
}

impl Profile {
    fn of(seed: u64) -> Self {
        match seed % 4 {
            0 => Self::Mixed,
            1 => Self::Figure8,
            2 => Self::Partitions,
            _ => Self::Disks,
        }
    }

    fn rates(self) -> Rates {
        let base = Rates {
            crash_per_mille: 15,
            crash_leader_per_mille: 500,
            crash_mid_send_per_mille: 2,
            crash_young_leader_per_mille: 20,
            lose_current_term_entries_per_mille: 0,
            crash_after_commit_per_mille: 0,
            campaign_highest_term_per_mille: 0,
            down_ticks: (3, 30),
            partition_per_mille: 15,
            disk_per_mille: 20,
            transfer_per_mille: 10,
            compaction_per_mille: 30,
            proposal_per_mille: 60,
            fetch_per_mille: 40,
            full_disk_per_mille: 4,
            duplicate_per_mille: 20,
            loss_levels_per_mille: &[0, 10, 50],
            lose_durable_per_mille: 3,
            membership_per_mille: 40,
            crash_joint_leader_per_mille: 100,
        };
        match self {
            Self::Mixed => base,
            Self::Figure8 => Rates {
                crash_per_mille: 60,
                crash_leader_per_mille: 900,
                crash_mid_send_per_mille: 15,
                crash_young_leader_per_mille: 500,
                lose_current_term_entries_per_mille: 800,
                crash_after_commit_per_mille: 500,
                campaign_highest_term_per_mille: 1000,
                down_ticks: (1, 8),
                partition_per_mille: 5,
                disk_per_mille: 30,
                transfer_per_mille: 5,
                proposal_per_mille: 150,
                duplicate_per_mille: 5,
                loss_levels_per_mille: &[0, 20],
                ..base
            },
            Self::Partitions => Rates {
                crash_per_mille: 5,
                partition_per_mille: 50,
                transfer_per_mille: 25,
                duplicate_per_mille: 40,
                loss_levels_per_mille: &[0, 20, 100, 300],
                ..base
            },
            Self::Disks => Rates {
                crash_per_mille: 30,
                crash_leader_per_mille: 300,
                crash_mid_send_per_mille: 10,
                disk_per_mille: 80,
                compaction_per_mille: 60,
                lose_durable_per_mille: 10,
                full_disk_per_mille: 15,
                ..base
            },
        }
    }
}

/// One seeded stream per fault source.
struct Streams {
    net_loss: SplitMix64,
    net_delay: SplitMix64,
    net_duplicate: SplitMix64,
    partition: SplitMix64,
    crash: SplitMix64,
    disk: SplitMix64,
    transfer: SplitMix64,
    compaction: SplitMix64,
    proposal: SplitMix64,
    election: SplitMix64,
    config: SplitMix64,
    lose_durable: SplitMix64,
    fetch: SplitMix64,
    full_disk: SplitMix64,
    membership: SplitMix64,
}

impl Streams {
    fn new(seed: u64) -> Self {
        let stream = |salt: u64| {
            // Decorrelate the streams of one seed (and equal salts of nearby seeds).
            let mut mixer = SplitMix64::new(seed ^ salt.wrapping_mul(0xA24B_AED4_963E_E407));
            SplitMix64::new(mixer.next_u64())
        };
        Self {
            net_loss: stream(1),
            net_delay: stream(2),
            net_duplicate: stream(3),
            partition: stream(4),
            crash: stream(5),
            disk: stream(6),
            transfer: stream(7),
            compaction: stream(8),
            proposal: stream(9),
            config: stream(10),
            election: stream(11),
            lose_durable: stream(12),
            fetch: stream(13),
            full_disk: stream(14),
            membership: stream(15),
        }
    }
}

/// Whether every quorum of `a` shares a member with every quorum of `b`, by trying every
/// set of their voters: no quorum of `a` may leave a quorum of `b` among the others.
fn quorums_intersect(a: &Membership, b: &Membership) -> bool {
    let universe: Vec<u64> = a.all_voters().union(&b.all_voters()).copied().collect();
    assert!(universe.len() < 20, "too many voters to enumerate");
    (0u32..1 << universe.len()).all(|bits| {
        let chosen = |id: u64| {
            universe
                .iter()
                .position(|&u| u == id)
                .is_some_and(|i| bits & (1 << i) != 0)
        };
        !(a.has_quorum(chosen) && b.has_quorum(|id| !chosen(id) && universe.contains(&id)))
    })
}

/// True with probability `per_mille / 1000`.
fn chance(rng: &mut SplitMix64, per_mille: u32) -> bool {
    per_mille > 0 && rng.range_u32(0, 1000) < per_mille
}

/// A uniformly drawn element of `items` (not empty).
fn pick<T: Copy>(rng: &mut SplitMix64, items: &[T]) -> T {
    items[rng.range_u32(0, items.len() as u32) as usize]
}

/// A producer's batch: the same records on every attempt. Its first record's value is the
/// batch's `logical` id, which tells its copies apart from other batches in the log.
#[derive(Debug, Clone)]
struct Batch {
    logical: u64,
    epoch: u32,
    base_sequence: u32,
    record_count: u32,
    /// The attempt in flight, if any (a proposal number).
    attempt: Option<u64>,
    /// When to give the attempt up and send the batch again.
    retry_at: u64,
}

/// An idempotent producer: one batch in flight at a time, retried until answered.
#[derive(Debug)]
struct Producer {
    id: u64,
    epoch: u32,
    next_sequence: u32,
    batches_left: u32,
    in_flight: Option<Batch>,
    /// The highest commit index of any member when its first batch of this epoch was sent:
    /// every copy of its batches that can commit is stored after it, so retention below it
    /// cannot make a partition forget the producer while it writes (the table is rebuilt
    /// from the log).
    stored_after: Option<u64>,
}

/// A fetch the simulator waits to see answered.
#[derive(Debug)]
struct PendingFetch {
    node: u64,
    offset: u64,
    parked: bool,
    incarnation: u64,
    ticket: FetchTicket,
}

/// One simulated cluster under one seed.
struct Sim {
    seed: u64,
    profile: Profile,
    rates: Rates,
    c: Cluster,
    ids: Vec<u64>,
    streams: Streams,
    /// Current time in units.
    now: u64,
    /// Messages in flight by (delivery time, send sequence).
    net: BTreeMap<(u64, u64), RaftMessage>,
    sent_count: u64,
    /// Per member: when its running sync completes.
    sync_due: BTreeMap<u64, u64>,
    /// Members whose disk is currently slow.
    disk_slow: BTreeMap<u64, bool>,
    /// Members whose disk is full, and until when.
    full_until: BTreeMap<u64, u64>,
    /// Per member: (term, time) of the leadership it last won.
    elected_at: BTreeMap<u64, (u64, u64)>,
    /// Crashed members and when they restart.
    down_until: BTreeMap<u64, u64>,
    loss_per_mille: u32,
    /// Whether faults are injected (false once healed for the liveness check).
    faults: bool,
    producers: Vec<Producer>,
    next_producer_id: u64,
    next_logical: u64,
    /// Proposal number -> the batch (logical id) it was an attempt of.
    attempts: HashMap<u64, u64>,
    /// Logical id -> the offset its acknowledgements named.
    acked: BTreeMap<u64, u64>,
    fetches: BTreeMap<u64, PendingFetch>,
    /// Timestamps of proposals, unique per attempt (the harness identifies entries by them).
    timestamp: i64,
    /// The liveness produce after healing: its proposal number and, once acknowledged, index.
    final_proposal: Option<(u64, Option<u64>)>,
    crashes_count: u64,
    /// Restarts that lost durable entries (`Sim::lose_durable`).
    durable_losses_count: u64,
    full_disks_count: u64,
    duplicate_answers_count: u64,
    epoch_bumps_count: u64,
    refusals_count: u64,
    fetches_answered_count: u64,
    parked_answered_count: u64,
    /// Whether this seed changes membership.
    membership_changes: bool,
    /// The id the next fresh member gets.
    next_member_id: u64,
    /// Configurations last checked for intersecting quorums (skipped while unchanged).
    configs_checked: Vec<Membership>,
    membership_proposed_count: u64,
    membership_refused_count: u64,
    wipes_count: u64,
    leader_removals_count: u64,
    joint_crashes_count: u64,
    /// The voters the last move ordered, told to every member.
    move_target: Option<Vec<u64>>,
    moves_count: u64,
    steps: u64,
    trace: bool,
}

impl Sim {
    fn new(seed: u64) -> Self {
        let profile = Profile::of(seed);
        let mut streams = Streams::new(seed);
        let n = match profile {
            Profile::Figure8 => 5,
            _ if streams.config.range_u32(0, 2) == 0 => 3,
            _ => 5,
        };
        // Most seeds run the full protocol; some the paper's bare one (no pre-vote, no
        // check-quorum, so no leader lease), where Figure 8 situations are easiest to reach.
        let bare = profile == Profile::Figure8 || chance(&mut streams.config, 250);
        let one_entry_messages = profile == Profile::Figure8 || chance(&mut streams.config, 300);
        let small_cache = chance(&mut streams.config, 500);
        let config_seed = streams.config.next_u64();
        // Some groups carry a learner: it must follow every fault the voters see without
        // ever voting, campaigning or counting toward a commit.
        let learners = u64::from(chance(&mut streams.config, 300));
        // About half the seeds change membership, with two spare members to add.
        let membership_changes = chance(&mut streams.membership, 500);
        let spares = if membership_changes { 2 } else { 0 };
        // A node's defaults (timeouts, the replica's limits), but for the windows and sizes
        // the simulator shrinks so that its small entries fill them.
        let mut c = Cluster::with_members(n, learners, |config| {
            let cfg = &mut config.raft;
            cfg.seed ^= config_seed;
            cfg.pre_vote = !bare;
            cfg.check_quorum = !bare;
            cfg.message_bytes_max = if one_entry_messages { 60 } else { 1200 };
            cfg.inflight_msgs_max = 4;
            cfg.inflight_bytes_max = 2400;
            cfg.uncommitted_bytes_max = 8000;
            cfg.entry_cache_bytes_max = if small_cache { 300 } else { 1 << 20 };
        });
        c.record_delivered = false;
        for id in n + learners + 1..=n + learners + spares {
            c.add_node(id);
        }
        let ids: Vec<u64> = (1..=n + learners + spares).collect();
        let next_member_id = n + learners + spares + 1;
        for node in c.nodes.values_mut() {
            node.auto_persist = false;
        }
        Self {
            seed,
            profile,
            rates: profile.rates(),
            c,
            sync_due: BTreeMap::new(),
            disk_slow: ids.iter().map(|&id| (id, false)).collect(),
            full_until: BTreeMap::new(),
            ids,
            streams,
            now: 0,
            net: BTreeMap::new(),
            sent_count: 0,
            down_until: BTreeMap::new(),
            elected_at: BTreeMap::new(),
            loss_per_mille: 0,
            faults: true,
            producers: Vec::new(),
            next_producer_id: 1,
            next_logical: 1,
            attempts: HashMap::new(),
            acked: BTreeMap::new(),
            fetches: BTreeMap::new(),
            timestamp: 0,
            final_proposal: None,
            crashes_count: 0,
            durable_losses_count: 0,
            full_disks_count: 0,
            duplicate_answers_count: 0,
            epoch_bumps_count: 0,
            refusals_count: 0,
            fetches_answered_count: 0,
            parked_answered_count: 0,
            membership_changes,
            next_member_id,
            configs_checked: Vec::new(),
            membership_proposed_count: 0,
            membership_refused_count: 0,
            wipes_count: 0,
            leader_removals_count: 0,
            joint_crashes_count: 0,
            move_target: None,
            moves_count: 0,
            steps: 0,
            trace: std::env::var("RAFTLOG_SIM_TRACE").is_ok(),
        }
    }

    fn is_up(&self, id: u64) -> bool {
        !self.down_until.contains_key(&id)
    }

    fn up(&self) -> Vec<u64> {
        self.ids
            .iter()
            .copied()
            .filter(|&id| self.is_up(id))
            .collect()
    }

    /// Members that believe they lead (possibly stale ones), in id order.
    fn leaders(&self) -> Vec<u64> {
        self.c
            .nodes
            .values()
            .filter(|n| n.raft().role() == Role::Leader && self.is_up(n.raft().id()))
            .map(|n| n.raft().id())
            .collect()
    }

    /// One unit of simulated time; see the module doc.
    fn step(&mut self) {
        if self.now % UNITS_PER_TICK == 0 {
            if self.faults {
                self.inject_tick_faults();
            }
            self.restart_due();
            self.free_disks_due();
            for &id in &self.ids {
                if self.is_up(id) {
                    self.c.core_mut(id).tick();
                }
            }
            if self.trace {
                self.print_state();
            }
        }
        if self.faults && chance(&mut self.streams.proposal, self.rates.proposal_per_mille) {
            self.propose();
        }
        if self.faults {
            self.retry_produces();
        }
        if chance(&mut self.streams.fetch, self.rates.fetch_per_mille) {
            self.fetch();
        }
        self.deliver_due();
        self.complete_due_syncs();
        for id in self.ids.clone() {
            if self.is_up(id) {
                self.process(id);
            }
        }
        self.take_answers();
        self.c.check_safety();
        self.c.check_committed_on_quorum();
        self.check_fetches_answered();
        self.check_memberships();
        self.now += 1;
        self.steps += 1;
    }

    /// Faults decided once per tick, each from its own stream.
    fn inject_tick_faults(&mut self) {
        let rates = self.rates;
        if chance(&mut self.streams.crash, rates.crash_per_mille) {
            let leaders = self.leaders();
            let id = if !leaders.is_empty()
                && chance(&mut self.streams.crash, rates.crash_leader_per_mille)
            {
                pick(&mut self.streams.crash, &leaders)
            } else {
                pick(&mut self.streams.crash, &self.ids)
            };
            self.crash(id);
        }
        if chance(&mut self.streams.partition, rates.partition_per_mille) {
            self.change_partitions();
        }
        if chance(&mut self.streams.lose_durable, rates.lose_durable_per_mille) {
            let id = pick(&mut self.streams.lose_durable, &self.ids);
            self.lose_durable(id);
        }
        if chance(&mut self.streams.disk, rates.disk_per_mille) {
            let id = pick(&mut self.streams.disk, &self.ids);
            let slow = self.disk_slow.get_mut(&id).expect("member");
            *slow = !*slow;
        }
        if chance(&mut self.streams.full_disk, rates.full_disk_per_mille) {
            let id = pick(&mut self.streams.full_disk, &self.ids);
            let ticks = u64::from(self.streams.full_disk.range_u32(5, 40));
            if !self.full_until.contains_key(&id) {
                self.c.core_mut(id).log_mut().set_full(true);
                self.full_until
                    .insert(id, self.now + ticks * UNITS_PER_TICK);
                self.full_disks_count += 1;
            }
        }
        if chance(&mut self.streams.net_loss, 20) {
            self.loss_per_mille = pick(&mut self.streams.net_loss, rates.loss_levels_per_mille);
        }
        if chance(&mut self.streams.transfer, rates.transfer_per_mille) {
            let leaders = self.leaders();
            if !leaders.is_empty() {
                let leader = pick(&mut self.streams.transfer, &leaders);
                let to = pick(&mut self.streams.transfer, &self.ids);
                self.c.core_mut(leader).transfer_leader(to);
            }
        }
        if self.leaders().is_empty()
            && chance(
                &mut self.streams.election,
                rates.campaign_highest_term_per_mille,
            )
        {
            let up = self.up();
            let best = up.iter().map(|&id| self.c.raft(id).last_term()).max();
            let best: Vec<u64> = up
                .into_iter()
                .filter(|&id| Some(self.c.raft(id).last_term()) == best)
                .collect();
            if !best.is_empty() {
                let id = pick(&mut self.streams.election, &best);
                self.c.core_mut(id).campaign();
            }
        }
        if chance(&mut self.streams.compaction, rates.compaction_per_mille) {
            let id = pick(&mut self.streams.compaction, &self.ids);
            let keep = u64::from(self.streams.compaction.range_u32(0, 6));
            self.compact(id, keep);
        }
        if self.membership_changes {
            if chance(&mut self.streams.membership, rates.membership_per_mille) {
                self.change_membership();
            }
            let joint_leaders: Vec<u64> = self
                .leaders()
                .into_iter()
                .filter(|&id| self.c.raft(id).membership().is_joint())
                .collect();
            if !joint_leaders.is_empty()
                && chance(
                    &mut self.streams.membership,
                    rates.crash_joint_leader_per_mille,
                )
            {
                let id = pick(&mut self.streams.membership, &joint_leaders);
                self.crash(id);
                self.joint_crashes_count += 1;
            }
        }
    }

    /// Asks a leader for a random membership change, or wipes a member no configuration
    /// anywhere names and puts a fresh one (a new id, an empty disk) in its place.
    fn change_membership(&mut self) {
        if self.streams.membership.range_u32(0, 10) == 0 {
            self.wipe_unused_member();
            return;
        }
        let leaders = self.leaders();
        if leaders.is_empty() {
            return;
        }
        let rng = &mut self.streams.membership;
        let leader = pick(rng, &leaders);
        let m = self.c.raft(leader).membership().clone();
        let outsiders: Vec<u64> = self
            .ids
            .iter()
            .copied()
            .filter(|&id| !m.is_member(id))
            .collect();
        let learners: Vec<u64> = m.learners.iter().copied().collect();
        let voters: Vec<u64> = m.voters.iter().copied().collect();
        if rng.range_u32(0, 4) == 0 {
            // A partition move, as the cluster metadata orders one: every member is told the
            // target voters, and whoever leads drives the group there.
            let mut target = voters.clone();
            let candidates: Vec<u64> = learners.iter().chain(&outsiders).copied().collect();
            if !candidates.is_empty() {
                let incoming = pick(rng, &candidates);
                if rng.range_u32(0, 2) == 0 || target.len() <= 3 {
                    target.push(incoming);
                } else {
                    let out = pick(rng, &voters);
                    target.retain(|&v| v != out);
                    target.push(incoming);
                }
            }
            target.sort_unstable();
            for &id in &self.ids {
                self.c.core_mut(id).set_move_target(Some(target.clone()));
            }
            self.move_target = Some(target);
            self.moves_count += 1;
            return;
        }
        let change = match rng.range_u32(0, 5) {
            0 | 1 if !outsiders.is_empty() => {
                MembershipChange::AddLearners(vec![pick(rng, &outsiders)])
            }
            2 if !learners.is_empty() => {
                // Promote a learner, sometimes in place of a voter (the leader included).
                let learner = pick(rng, &learners);
                let mut next = voters.clone();
                if rng.range_u32(0, 2) == 0 {
                    let out = pick(rng, &voters);
                    next.retain(|&v| v != out);
                }
                next.push(learner);
                MembershipChange::ReplaceVoters(next)
            }
            // Never below three voters: with two, one damaged disk (whose member withholds
            // its vote until a leader brings it up to date) leaves no majority to elect
            // that leader, which no protocol can get out of.
            3 if voters.len() > 3 => {
                let out = pick(rng, &voters);
                MembershipChange::ReplaceVoters(
                    voters.iter().copied().filter(|&v| v != out).collect(),
                )
            }
            4 if !learners.is_empty() => {
                // A move given up: the learner is dropped before it became a voter.
                MembershipChange::RemoveLearners(vec![pick(rng, &learners)])
            }
            _ => return,
        };
        self.timestamp += 1;
        match self
            .c
            .raft_mut(leader)
            .propose_membership(&change, self.timestamp)
        {
            Ok(_) => {
                self.membership_proposed_count += 1;
                if matches!(&change, MembershipChange::ReplaceVoters(next) if !next.contains(&leader))
                {
                    self.leader_removals_count += 1;
                }
            }
            Err(_) => self.membership_refused_count += 1,
        }
    }

    /// Replaces a member that no configuration in any log names (never added, or removed
    /// and forgotten) by a fresh one under a new id: a node whose disk died comes back as a
    /// new member, never under its old id.
    fn wipe_unused_member(&mut self) {
        // Its own log goes with it: only the others' configurations matter.
        let named_by_others = |id: u64| {
            self.c.nodes.iter().any(|(&other, n)| {
                other != id && n.raft().membership_history().all_members().contains(&id)
            })
        };
        let targeted = |id: u64| self.move_target.as_ref().is_some_and(|t| t.contains(&id));
        let unused: Vec<u64> = self
            .ids
            .iter()
            .copied()
            .filter(|&id| !named_by_others(id) && !targeted(id))
            .collect();
        if unused.is_empty() {
            return;
        }
        let old = pick(&mut self.streams.membership, &unused);
        self.c.nodes.remove(&old);
        self.c.net.retain(|m| m.to != old && m.from != old);
        self.net.retain(|_, m| m.to != old && m.from != old);
        self.ids.retain(|&id| id != old);
        self.disk_slow.remove(&old);
        self.sync_due.remove(&old);
        self.down_until.remove(&old);
        self.full_until.remove(&old);
        self.fetches.retain(|_, f| f.node != old);
        let new = self.next_member_id;
        self.next_member_id += 1;
        self.c.add_node(new);
        self.c.nodes.get_mut(&new).expect("added").auto_persist = false;
        let target = self.move_target.clone();
        self.c.core_mut(new).set_move_target(target);
        self.ids.push(new);
        self.disk_slow.insert(new, false);
        self.wipes_count += 1;
    }

    /// The membership invariants of the module doc that are checked every step.
    fn check_memberships(&mut self) {
        if !self.membership_changes {
            return;
        }
        for &id in &self.ids {
            let raft = self.c.raft(id);
            if raft.role() != Role::Leader {
                continue;
            }
            // Committed as far as anyone knows: a new leader learns it only with its no-op.
            let uncommitted: Vec<u64> = raft
                .membership_history()
                .logged
                .iter()
                .filter(|logged| self.c.committed.get(&logged.index) != Some(&logged.term))
                .map(|logged| logged.index)
                .collect();
            assert!(
                uncommitted.len() <= 1,
                "leader {id} holds uncommitted configuration entries at {uncommitted:?}"
            );
        }
        // The last committed configuration entry anywhere: configurations of logs that lack
        // it can never be a leader's again (a leader holds every committed entry).
        let committed = &self.c.committed;
        let mut last_committed: Option<(u64, u64, Membership)> = None;
        for node in self.c.nodes.values() {
            let raft = node.raft();
            let history = raft.membership_history();
            let start = raft.log_start();
            let mut candidates = vec![(start.index, start.term, &history.at_log_start)];
            candidates.extend(
                history
                    .logged
                    .iter()
                    .filter(|logged| committed.get(&logged.index) == Some(&logged.term))
                    .map(|logged| (logged.index, logged.term, &logged.membership)),
            );
            for (index, term, membership) in candidates {
                if last_committed.as_ref().is_none_or(|(i, _, _)| index > *i) {
                    last_committed = Some((index, term, membership.clone()));
                }
            }
        }
        let Some((index, term, membership)) = last_committed else {
            return;
        };
        let mut in_force = vec![membership];
        for node in self.c.nodes.values() {
            let raft = node.raft();
            let holds = raft.log_start().index >= index || raft.term_at(index) == Some(term);
            if holds && !in_force.contains(raft.membership()) {
                in_force.push(raft.membership().clone());
            }
        }
        in_force.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        if in_force == self.configs_checked {
            return;
        }
        for (i, a) in in_force.iter().enumerate() {
            for b in &in_force[i + 1..] {
                assert!(
                    quorums_intersect(a, b),
                    "configurations {a:?} and {b:?} can both be in force but have disjoint quorums"
                );
            }
        }
        self.configs_checked = in_force;
    }

    /// Symmetric splits, one-way cuts, an isolated leader, or healing.
    fn change_partitions(&mut self) {
        let leaders = self.leaders();
        let rng = &mut self.streams.partition;
        match rng.range_u32(0, 10) {
            0..=2 => self.c.heal(),
            3..=5 => {
                // A symmetric split into two sides (a minority and a majority, or worse).
                self.c.heal();
                let side: Vec<u64> = self
                    .ids
                    .iter()
                    .copied()
                    .filter(|_| rng.range_u32(0, 2) == 0)
                    .collect();
                for &a in &side {
                    for &b in &self.ids {
                        if !side.contains(&b) {
                            self.c.partition(a, b);
                        }
                    }
                }
            }
            6..=8 => {
                // A one-way cut: a hears nothing from b, b still hears a.
                let a = pick(rng, &self.ids);
                let b = pick(rng, &self.ids);
                if a != b {
                    self.c.cut.insert((b, a));
                }
            }
            _ => {
                if !leaders.is_empty() {
                    let leader = pick(rng, &leaders);
                    self.c.isolate(leader);
                }
            }
        }
    }

    /// A client writes: mostly a producer's next batch, sometimes plain entries without a
    /// producer (acknowledged by commit or by the leader's append alone).
    fn propose(&mut self) {
        if chance(&mut self.streams.proposal, 700) {
            self.produce_next_batch();
            return;
        }
        let leaders = self.leaders();
        if leaders.is_empty() {
            return;
        }
        let rng = &mut self.streams.proposal;
        let leader = pick(rng, &leaders);
        for _ in 0..rng.range_u32(1, 4) {
            let len = rng.range_u32(0, PAYLOAD_BYTES_MAX as u32) as usize;
            let acks = if rng.range_u32(0, 4) == 0 {
                Acks::Leader
            } else {
                Acks::All
            };
            self.timestamp += 1;
            let payload = Bytes::from_static(&PAYLOAD[..len]);
            self.c
                .propose_with(leader, payload, 1, acks, self.timestamp);
        }
    }

    /// An idle producer sends its next batch; one that is done goes away and a new one
    /// (another producer id) takes its place.
    fn produce_next_batch(&mut self) {
        if self.producers.len() < PRODUCERS_COUNT {
            let batches_left = self.streams.proposal.range_u32(1, 12);
            self.producers.push(Producer {
                id: self.next_producer_id,
                epoch: 0,
                next_sequence: 0,
                batches_left,
                in_flight: None,
                stored_after: None,
            });
            self.next_producer_id += 1;
        }
        let slot = self
            .streams
            .proposal
            .range_u32(0, self.producers.len() as u32) as usize;
        let stored_after = self.c.nodes.values().map(|n| n.commit_index).max();
        let producer = &mut self.producers[slot];
        if producer.in_flight.is_some() {
            return;
        }
        if producer.batches_left == 0 {
            self.producers.swap_remove(slot);
            return;
        }
        producer.batches_left -= 1;
        if self.streams.proposal.range_u32(0, 10) == 0 {
            // A new instance of the producer between batches: a new epoch fences the old
            // one and starts the sequence over.
            producer.epoch += 1;
            producer.next_sequence = 0;
            producer.stored_after = None;
            self.epoch_bumps_count += 1;
        }
        let stored_after = stored_after.unwrap_or(0);
        producer.stored_after.get_or_insert(stored_after);
        let record_count = self.streams.proposal.range_u32(1, 4);
        producer.in_flight = Some(Batch {
            logical: self.next_logical,
            epoch: producer.epoch,
            base_sequence: producer.next_sequence,
            record_count,
            attempt: None,
            retry_at: 0,
        });
        self.next_logical += 1;
        self.send_batch(slot);
    }

    /// Sends producer `slot`'s batch to a member that believes it leads (or, with none, to
    /// anyone: it answers NOT_LEADER).
    fn send_batch(&mut self, slot: usize) {
        let leaders = self.leaders();
        let up = self.up();
        let targets = if leaders.is_empty() { &up } else { &leaders };
        if targets.is_empty() {
            return;
        }
        let to = pick(&mut self.streams.proposal, targets);
        let producer = &mut self.producers[slot];
        let batch = producer.in_flight.as_mut().expect("a batch to send");
        let mut builder = RecordBatchBuilder::new(1 << 20).with_producer(
            producer.id,
            batch.epoch,
            batch.base_sequence,
        );
        for record in 0..batch.record_count {
            let mut value = batch.logical.to_le_bytes().to_vec();
            value.push(record as u8);
            builder.push(0, None, &value, &[]).expect("small record");
        }
        self.timestamp += 1;
        let number = self.c.propose_with(
            to,
            builder.finish(),
            batch.record_count,
            Acks::All,
            self.timestamp,
        );
        batch.attempt = Some(number);
        batch.retry_at = self.now + PRODUCE_TIMEOUT_TICKS * UNITS_PER_TICK;
        self.attempts.insert(number, batch.logical);
    }

    /// Producers whose attempt failed or timed out send their batch again.
    fn retry_produces(&mut self) {
        for slot in 0..self.producers.len() {
            let due = self.producers[slot]
                .in_flight
                .as_ref()
                .is_some_and(|b| b.attempt.is_none() || b.retry_at <= self.now);
            if due {
                self.send_batch(slot);
            }
        }
    }

    /// Takes the cores' answers: producers learn their batches' fate, the liveness produce
    /// its index, and answered fetches are no longer waited for.
    fn take_answers(&mut self) {
        for answer in std::mem::take(&mut self.c.answers) {
            match answer {
                Answer::Proposed {
                    proposal, result, ..
                } => self.on_produced(proposal, result),
                Answer::Fetched { fetch, .. } => {
                    if let Some(pending) = self.fetches.remove(&fetch) {
                        self.fetches_answered_count += 1;
                        self.parked_answered_count += u64::from(pending.parked);
                    }
                }
            }
        }
    }

    fn on_produced(
        &mut self,
        proposal: u64,
        result: Result<raftlog::replica::Appended<()>, ReplicaError>,
    ) {
        if let Some((number, index)) = &mut self.final_proposal {
            if *number == proposal {
                match &result {
                    Ok(appended) => *index = Some(appended.index),
                    Err(_) => self.final_proposal = None,
                }
                return;
            }
        }
        let Some(&logical) = self.attempts.get(&proposal) else {
            return; // a plain proposal: the harness judged its answer
        };
        let stored_at = match &result {
            Ok(appended) => Some(appended.base_offset),
            Err(ReplicaError::DuplicateSequence { base_offset }) => {
                self.duplicate_answers_count += 1;
                Some(*base_offset)
            }
            Err(_) => None,
        };
        if let Some(offset) = stored_at {
            let first = *self.acked.entry(logical).or_insert(offset);
            assert_eq!(
                first, offset,
                "batch {logical} acknowledged at offset {first} and again at {offset}"
            );
        }
        let Some(slot) = self
            .producers
            .iter()
            .position(|p| p.in_flight.as_ref().is_some_and(|b| b.logical == logical))
        else {
            return; // an answer to an attempt of a batch already answered
        };
        let producer = &mut self.producers[slot];
        let batch = producer.in_flight.as_mut().expect("found in flight");
        if stored_at.is_some() {
            producer.next_sequence = batch.base_sequence + batch.record_count;
            producer.in_flight = None;
            return;
        }
        if batch.attempt != Some(proposal) {
            return; // a stale attempt failed; a newer one is under way
        }
        if let Err(
            ReplicaError::UnknownProducerId
            | ReplicaError::OutOfOrderSequence { .. }
            | ReplicaError::ProducerFenced { .. },
        ) = result
        {
            // A member that does not know where this producer stands (a stale leader
            // missing its committed batches). Starting over in a new epoch would be unsafe
            // while an earlier attempt's outcome is unknown: the partition cannot match a
            // batch across epochs. So, like any other refusal, retry.
            self.refusals_count += 1;
        }
        // Not the leader, superseded, disk full: try again after a short wait.
        batch.retry_at = self.now + UNITS_PER_TICK;
    }

    /// A consumer fetches from an up member: mostly at its high watermark (where a long poll
    /// parks), sometimes behind it; some long polls give up later.
    fn fetch(&mut self) {
        let up = self.up();
        if up.is_empty() {
            return;
        }
        let rng = &mut self.streams.fetch;
        let node = pick(rng, &up);
        let core = self.c.core(node);
        let (start, hw) = (core.log().start_offset(), core.high_watermark());
        let offset = if rng.range_u32(0, 2) == 0 || hw == start {
            hw
        } else {
            start + u64::from(rng.range_u32(0, (hw - start).min(1 << 20) as u32))
        };
        let park = rng.range_u32(0, 3) != 0;
        let bytes_max = u64::from(rng.range_u32(1, FETCH_BYTES_MAX));
        let ticket = self.c.fetch(node, offset, bytes_max, park);
        // Some consumers stop waiting (a long poll that timed out): their fetch may then be
        // dropped unanswered.
        let parked = park && offset >= hw;
        if parked && rng.range_u32(0, 4) == 0 {
            ticket.abandoned.set(true);
            return;
        }
        let incarnation = self.c.nodes[&node].incarnation;
        self.fetches.insert(
            ticket.number,
            PendingFetch {
                node,
                offset,
                parked,
                incarnation,
                ticket,
            },
        );
    }

    /// A fetch that does not park is answered in the step it was made; a parked one in the
    /// step its member's high watermark moves past its offset (unless the member crashed,
    /// which drops its waiters as a real process's connections go).
    fn check_fetches_answered(&mut self) {
        let c = &self.c;
        let down = &self.down_until;
        self.fetches.retain(|_, f| {
            c.nodes[&f.node].incarnation == f.incarnation
                && !down.contains_key(&f.node)
                && !f.ticket.abandoned.get()
        });
        for (number, f) in &self.fetches {
            let core = self.c.core(f.node);
            assert!(
                f.parked && core.high_watermark() <= f.offset,
                "fetch {number} at offset {} on {} ({}) unanswered with high watermark {}",
                f.offset,
                f.node,
                if f.parked { "parked" } else { "not parked" },
                core.high_watermark()
            );
        }
    }

    /// Retention on member `id`: moves its log start close to what is committed and durable,
    /// but never past the batches of a producer still writing. The producer table is rebuilt
    /// from the log, so a partition whose retention removed a producer's batches forgets it
    /// (see `replica::producers`): a retry of a removed batch could be written again, and a
    /// producer it forgot is refused until it starts a new epoch.
    fn compact(&mut self, id: u64, keep: u64) {
        if !self.is_up(id) {
            return;
        }
        let in_flight_floor = self
            .producers
            .iter()
            .filter_map(|p| p.stored_after)
            .min()
            .unwrap_or(u64::MAX);
        let node = &self.c.nodes[&id];
        let target = node
            .commit_index
            .min(node.log().durable_index())
            .min(in_flight_floor)
            .saturating_sub(keep);
        if target > node.log().start().index {
            self.c.compact(id, target);
        }
    }

    /// Crashes `id`: un-synced writes are lost, it stays down for a while.
    fn crash(&mut self, id: u64) {
        if !self.is_up(id) {
            return;
        }
        let (low, high) = self.rates.down_ticks;
        let down_ticks = u64::from(self.streams.crash.range_u32(low, high));
        self.c.restart(id);
        self.retell_move_target(id);
        self.crashes_count += 1;
        self.sync_due.remove(&id);
        self.down_until
            .insert(id, self.now + down_ticks * UNITS_PER_TICK);
    }

    /// Crashes `id` and restarts it with up to 8 of its last durable entries gone and its
    /// vote withheld, as storage recovery leaves it. Only one member at a time: two damaged
    /// disks can lose a committed entry's every copy, which no protocol survives.
    fn lose_durable(&mut self, id: u64) {
        let withheld = self.ids.iter().any(|&m| {
            self.c.raft(m).voting_withheld() || self.c.log(m).voting_withheld().is_some()
        });
        let log = self.c.log(id);
        let durable_entries = log.durable_index().saturating_sub(log.start().index);
        if !self.is_up(id) || withheld || durable_entries == 0 {
            return;
        }
        let lost = self
            .streams
            .lose_durable
            .range_u32(1, durable_entries.min(8) as u32 + 1);
        let last_index = log.durable_index() - u64::from(lost);
        let (low, high) = self.rates.down_ticks;
        let down_ticks = u64::from(self.streams.lose_durable.range_u32(low, high));
        self.c.restart_losing(id, last_index);
        self.retell_move_target(id);
        self.durable_losses_count += 1;
        self.sync_due.remove(&id);
        self.down_until
            .insert(id, self.now + down_ticks * UNITS_PER_TICK);
    }

    /// A restarted member hears of the move again, as a node reapplies the metadata.
    fn retell_move_target(&mut self, id: u64) {
        let target = self.move_target.clone();
        self.c.core_mut(id).set_move_target(target);
    }

    fn restart_due(&mut self) {
        let now = self.now;
        self.down_until.retain(|_, until| *until > now);
    }

    /// Frees the disks whose full spell is over.
    fn free_disks_due(&mut self) {
        let now = self.now;
        let freed: Vec<u64> = self
            .full_until
            .iter()
            .filter(|&(_, &until)| until <= now)
            .map(|(&id, _)| id)
            .collect();
        for id in freed {
            self.full_until.remove(&id);
            self.c.core_mut(id).log_mut().set_full(false);
        }
    }

    /// Delivers every message due by now; a message to a crashed member or over a cut link
    /// is lost.
    fn deliver_due(&mut self) {
        while let Some(entry) = self.net.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let m = entry.remove();
            if !self.is_up(m.to) || self.c.cut.contains(&(m.from, m.to)) {
                continue;
            }
            self.c.core_mut(m.to).step(m);
        }
    }

    /// Completes every sync due by now.
    fn complete_due_syncs(&mut self) {
        for id in self.ids.clone() {
            if self.sync_due.get(&id).is_some_and(|&due| due <= self.now) {
                self.sync_due.remove(&id);
                self.c.complete_sync(id);
                self.schedule_sync(id);
            }
        }
    }

    /// Gives the sync member `id`'s core handed out a completion time.
    fn schedule_sync(&mut self, id: u64) {
        if self.c.nodes[&id].sync.is_none() || self.sync_due.contains_key(&id) {
            return;
        }
        let latency = if self.disk_slow[&id] {
            self.streams.disk.range_u32(5, 80)
        } else {
            self.streams.disk.range_u32(1, 4)
        };
        self.sync_due.insert(id, self.now + u64::from(latency));
    }

    /// Carries out member `id`'s Ready (the harness checks it), schedules its sync and puts
    /// its messages on the network.
    fn process(&mut self, id: u64) {
        let commit_before = self.c.nodes[&id].commit_index;
        if !self.c.process(id) {
            return;
        }
        let committed_now = self.c.nodes[&id].commit_index > commit_before;
        self.schedule_sync(id);
        let messages: Vec<RaftMessage> = self.c.net.drain(..).collect();
        let crash_per_mille = self.crash_while_sending_per_mille(id, committed_now);
        let messages = self.lose_current_term_entries(id, messages);
        if self.faults && !messages.is_empty() && chance(&mut self.streams.crash, crash_per_mille) {
            self.send_some_and_crash(id, messages);
            return;
        }
        for m in messages {
            self.send(m);
        }
    }

    /// The chance that member `id` crashes while sending this Ready: higher for a young
    /// leader and for a leader whose commit index just moved (the Figure 8 moments).
    fn crash_while_sending_per_mille(&mut self, id: u64, committed_now: bool) -> u32 {
        let raft = self.c.raft(id);
        if raft.role() != Role::Leader {
            return self.rates.crash_mid_send_per_mille;
        }
        let (term, now) = (raft.term(), self.now);
        let elected = self.elected_at.entry(id).or_insert((term, now));
        if elected.0 != term {
            *elected = (term, now);
        }
        if now - elected.1 < YOUNG_LEADER_TICKS * UNITS_PER_TICK {
            self.rates.crash_young_leader_per_mille
        } else if committed_now {
            self.rates.crash_after_commit_per_mille
        } else {
            self.rates.crash_mid_send_per_mille
        }
    }

    /// Figure 8 (c): while leader `id` still holds uncommitted entries of earlier terms,
    /// messages carrying its own term's entries are lost, so old-term entries spread alone.
    fn lose_current_term_entries(
        &mut self,
        id: u64,
        messages: Vec<RaftMessage>,
    ) -> Vec<RaftMessage> {
        let raft = self.c.raft(id);
        let rate = self.rates.lose_current_term_entries_per_mille;
        let old_terms_uncommitted = raft.role() == Role::Leader
            && raft
                .term_at(raft.commit_index() + 1)
                .is_some_and(|t| t < raft.term());
        if !self.faults || rate == 0 || !old_terms_uncommitted {
            return messages;
        }
        let term = raft.term();
        let rng = &mut self.streams.net_loss;
        messages
            .into_iter()
            .filter(|m| {
                let carries_own_term = matches!(&m.body, Some(Body::AppendEntries(ae))
                    if ae.entries.iter().any(|e| e.term == term));
                !(carries_own_term && chance(rng, rate))
            })
            .collect()
    }

    /// Crash after persisting the hard state and writing, while sending: only some messages
    /// leave (a leader that reached a minority, a vote half announced). How many leave is
    /// uniform in `[0, all]`, so "none" and "just one" (a minority of five) are as likely as
    /// "all but one".
    fn send_some_and_crash(&mut self, id: u64, messages: Vec<RaftMessage>) {
        let rng = &mut self.streams.crash;
        let mut kept = rng.range_u32(0, messages.len() as u32 + 1);
        let mut left = messages.len() as u32;
        let mut out = Vec::new();
        for m in messages {
            if rng.range_u32(0, left) < kept {
                out.push(m);
                kept -= 1;
            }
            left -= 1;
        }
        for m in out {
            self.send(m);
        }
        self.crash(id);
    }

    /// Puts a message on the network: maybe lost, maybe duplicated, delayed.
    fn send(&mut self, m: RaftMessage) {
        if self.faults && chance(&mut self.streams.net_loss, self.loss_per_mille) {
            return;
        }
        let copies = if self.faults
            && chance(
                &mut self.streams.net_duplicate,
                self.rates.duplicate_per_mille,
            ) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let rng = &mut self.streams.net_delay;
            let delay = match rng.range_u32(0, 100) {
                0..=69 => rng.range_u32(1, 4),
                70..=94 => rng.range_u32(4, 16),
                _ if self.faults => rng.range_u32(16, 60),
                _ => rng.range_u32(4, 16),
            };
            self.sent_count += 1;
            self.net
                .insert((self.now + u64::from(delay), self.sent_count), m.clone());
        }
    }

    /// Heals every fault: links, crashed members, slow and full disks, loss.
    fn heal(&mut self) {
        self.faults = false;
        self.c.heal();
        self.down_until.clear();
        for slow in self.disk_slow.values_mut() {
            *slow = false;
        }
        for id in std::mem::take(&mut self.full_until).into_keys() {
            self.c.core_mut(id).log_mut().set_full(false);
        }
        self.loss_per_mille = 0;
    }

    /// Runs one whole tick.
    fn run_tick(&mut self) {
        for _ in 0..UNITS_PER_TICK {
            self.step();
        }
    }

    /// The whole life of one seed: chaos, healing, liveness, then the checks of the
    /// committed log as a whole. Returns the ticks it took after healing to acknowledge a
    /// new produce and commit it on every member.
    ///
    /// # Panics
    /// On any violated invariant, or if the healed cluster does not make progress within
    /// `LIVENESS_TICKS_MAX` ticks.
    fn run(&mut self) -> u64 {
        while self.now < CHAOS_TICKS * UNITS_PER_TICK {
            self.step();
        }
        self.heal();
        for tick in 1..=LIVENESS_TICKS_MAX {
            self.run_tick();
            if let Some((_, Some(index))) = self.final_proposal {
                if self.change_complete(index) {
                    self.check_batches_stored_once();
                    return tick;
                }
            }
            // Proposed again if it failed, or if the leader that took it lost leadership
            // before answering (its answer may never come).
            if self.final_proposal.is_none() || tick % 20 == 0 {
                if let Some(leader) = self.c.leader() {
                    self.timestamp += 1;
                    let payload = Bytes::from_static(b"final");
                    let number = self
                        .c
                        .propose_with(leader, payload, 1, Acks::All, self.timestamp);
                    if !matches!(self.final_proposal, Some((_, Some(_)))) {
                        self.final_proposal = Some((number, None));
                    }
                }
            }
        }
        let nodes: Vec<(Role, u64, u64, Option<String>, String)> = self
            .c
            .nodes
            .values()
            .map(|n| {
                let r = n.raft();
                let full = n.core.storage_full().map(str::to_owned);
                let m = r.membership();
                let members = format!(
                    "voters {:?} outgoing {:?} learners {:?}, last {}@{}{}",
                    m.voters,
                    m.voters_outgoing,
                    m.learners,
                    r.last_index(),
                    r.last_term(),
                    if r.voting_withheld() {
                        ", vote withheld"
                    } else {
                        ""
                    }
                );
                (r.role(), r.term(), r.commit_index(), full, members)
            })
            .collect();
        let progress: Vec<String> = self.c.leader().map_or(Vec::new(), |l| {
            self.ids
                .iter()
                .filter_map(|&id| Some(format!("{id}: {:?}", self.c.raft(l).progress(id)?)))
                .collect()
        });
        let phase = self
            .c
            .leader()
            .map(|leader| self.c.core(leader).move_phase().cloned());
        panic!(
            "liveness: no new produce acknowledged and committed everywhere {LIVENESS_TICKS_MAX} ticks after healing, or a change unfinished (proposal {:?}; move to {:?}, leader's phase {phase:?}; role, term, commit, disk full, membership: {nodes:?}; leader's progress: {progress:?})",
            self.final_proposal, self.move_target
        );
    }

    /// Whether the healed group has made progress: the final produce is committed on every
    /// member of the leader's configuration, which is simple (not joint) with its last
    /// configuration entry committed.
    fn change_complete(&self, index: u64) -> bool {
        let Some(leader) = self.c.leader() else {
            return false;
        };
        let raft = self.c.raft(leader);
        let membership = raft.membership();
        let settled = !membership.is_joint()
            && raft
                .membership_history()
                .last_index()
                .is_none_or(|last| last <= raft.commit_index());
        let moved = self.move_target.as_ref().is_none_or(|target| {
            self.c.core(leader).move_phase() == Some(&raftlog::replica::MovePhase::Done)
                && membership.voters.iter().copied().eq(target.iter().copied())
        });
        settled
            && moved
            && membership
                .members()
                .iter()
                .all(|id| self.c.nodes[id].commit_index >= index)
    }

    /// Every producer batch in the committed log is there once, and every acknowledged one
    /// is there at the offset its acknowledgements named.
    fn check_batches_stored_once(&self) {
        let mut stored: BTreeMap<u64, u64> = BTreeMap::new();
        for (&index, &term) in &self.c.committed {
            let Some((_, entry)) = self.c.entry_ids.get(&(index, term)) else {
                continue;
            };
            if entry.kind() != EntryKind::Data {
                continue;
            }
            let Ok(batch) = <RecordBatch as prost::Message>::decode(entry.payload.clone()) else {
                continue;
            };
            if batch.producer_id == 0 {
                continue;
            }
            let first = decode_records(&batch)
                .next()
                .and_then(Result::ok)
                .expect("a producer batch holds records");
            let logical = u64::from_le_bytes(first.value[..8].try_into().expect("8 bytes"));
            if let Some(earlier) = stored.insert(logical, entry.base_offset) {
                panic!(
                    "batch {logical} stored twice in the committed log: at offsets {earlier} and {}",
                    entry.base_offset
                );
            }
        }
        for (logical, offset) in &self.acked {
            assert_eq!(
                stored.get(logical),
                Some(offset),
                "batch {logical} acknowledged at offset {offset} but committed at {:?}",
                stored.get(logical)
            );
        }
    }

    fn print_state(&self) {
        let nodes: Vec<String> = self
            .c
            .nodes
            .values()
            .map(|n| {
                let r = n.raft();
                format!(
                    "{}:{}{:?}/t{}/c{}/l{}/p{}/hw{}{}{}",
                    r.id(),
                    if self.is_up(r.id()) { "" } else { "DOWN " },
                    r.role(),
                    r.term(),
                    r.commit_index(),
                    r.last_index(),
                    r.persisted_index(),
                    n.core.high_watermark(),
                    if self.disk_slow[&r.id()] { "/slow" } else { "" },
                    if n.core.storage_full().is_some() {
                        "/full"
                    } else {
                        ""
                    }
                )
            })
            .collect();
        eprintln!(
            "t{} cut {:?} loss {} net {} | {}",
            self.now / UNITS_PER_TICK,
            self.c.cut,
            self.loss_per_mille,
            self.net.len(),
            nodes.join(" ")
        );
    }
}

impl fmt::Debug for Sim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} ({:?}, {} members)",
            self.seed,
            self.profile,
            self.ids.len()
        )
    }
}

thread_local! {
    /// The last panic of this thread, with its location (filled by the panic hook).
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Replaces the default panic hook by one that records the panic for the report, so that a
/// run of many seeds prints one readable paragraph per violation.
fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        panic::set_hook(Box::new(|info| {
            LAST_PANIC.with(|p| *p.borrow_mut() = Some(info.to_string()));
        }));
    });
}

/// The outcome of a batch of seeds.
#[derive(Debug, Default)]
struct Summary {
    seeds: u64,
    steps: u64,
    violations: u64,
    first_violation_seed: Option<u64>,
    liveness_ticks_max: u64,
    leader_terms_count: u64,
    committed_count: u64,
    crashes_count: u64,
    durable_losses_count: u64,
    snapshots_count: u64,
    truncations_count: u64,
    acked_count: u64,
    batches_acked_count: u64,
    duplicate_answers_count: u64,
    epoch_bumps_count: u64,
    refusals_count: u64,
    full_disks_count: u64,
    fetches_answered_count: u64,
    parked_answered_count: u64,
    membership_seeds: u64,
    membership_proposed_count: u64,
    membership_refused_count: u64,
    wipes_count: u64,
    leader_removals_count: u64,
    joint_crashes_count: u64,
    moves_count: u64,
}

/// Runs `seeds`, each caught separately; prints every violation with its replay command.
fn run_seeds(seeds: impl Iterator<Item = u64>) -> Summary {
    quiet_panics();
    let mut summary = Summary::default();
    for seed in seeds {
        let mut sim = Sim::new(seed);
        let described = format!("{sim:?}");
        let result = panic::catch_unwind(AssertUnwindSafe(|| sim.run()));
        summary.seeds += 1;
        summary.steps += sim.steps;
        summary.leader_terms_count += sim.c.leaders.len() as u64;
        summary.committed_count += sim.c.committed.len() as u64;
        summary.crashes_count += sim.crashes_count;
        summary.durable_losses_count += sim.durable_losses_count;
        summary.snapshots_count += sim.c.snapshots_count;
        summary.truncations_count += sim.c.truncations_count;
        summary.acked_count += sim.c.acked_count;
        summary.batches_acked_count += sim.acked.len() as u64;
        summary.duplicate_answers_count += sim.duplicate_answers_count;
        summary.epoch_bumps_count += sim.epoch_bumps_count;
        summary.refusals_count += sim.refusals_count;
        summary.full_disks_count += sim.full_disks_count;
        summary.fetches_answered_count += sim.fetches_answered_count;
        summary.parked_answered_count += sim.parked_answered_count;
        summary.membership_seeds += u64::from(sim.membership_changes);
        summary.membership_proposed_count += sim.membership_proposed_count;
        summary.membership_refused_count += sim.membership_refused_count;
        summary.wipes_count += sim.wipes_count;
        summary.leader_removals_count += sim.leader_removals_count;
        summary.joint_crashes_count += sim.joint_crashes_count;
        summary.moves_count += sim.moves_count;
        match result {
            Ok(ticks) => summary.liveness_ticks_max = summary.liveness_ticks_max.max(ticks),
            Err(_) => {
                summary.violations += 1;
                summary.first_violation_seed.get_or_insert(seed);
                let why = LAST_PANIC
                    .with(|p| p.borrow_mut().take())
                    .unwrap_or_default();
                if summary.violations <= 5 {
                    report(format_args!(
                        "violation in {described} at t{} (step {}): {why}\nreproduce with RAFTLOG_SIM_SEED={seed}",
                        sim.now / UNITS_PER_TICK,
                        sim.steps
                    ));
                }
            }
        }
    }
    summary
}

/// Prints a line of the report straight to stdout: the test harness captures `println!` of
/// passing tests, and the summary line must show in every run.
fn report(line: fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {v:?}"))
    })
}

/// The simulator's main entry: `RAFTLOG_SIM_SEEDS` seeds (or one `RAFTLOG_SIM_SEED`).
#[test]
fn simulation() {
    let seeds: Vec<u64> = match env_u64("RAFTLOG_SIM_SEED") {
        Some(seed) => vec![seed],
        None => {
            let first = env_u64("RAFTLOG_SIM_FIRST_SEED").unwrap_or(0);
            let count = env_u64("RAFTLOG_SIM_SEEDS").unwrap_or(SEEDS_DEFAULT);
            (first..first + count).collect()
        }
    };
    let started = std::time::Instant::now();
    let summary = run_seeds(seeds.into_iter());
    report(format_args!(
        "{} leader terms, {} entries committed, {} crashes ({} losing durable entries), {} snapshots installed, {} suffixes truncated; slowest recovery after healing {} ticks; first violation at seed {:?}; {:.1} s",
        summary.leader_terms_count,
        summary.committed_count,
        summary.crashes_count,
        summary.durable_losses_count,
        summary.snapshots_count,
        summary.truncations_count,
        summary.liveness_ticks_max,
        summary.first_violation_seed,
        started.elapsed().as_secs_f64()
    ));
    report(format_args!(
        "replica: {} produces acknowledged after commit ({} producer batches, {} answered as duplicates of a retry, {} refusals of a producer's sequence, {} epoch bumps), {} full disks, {} fetches answered ({} after parking)",
        summary.acked_count,
        summary.batches_acked_count,
        summary.duplicate_answers_count,
        summary.refusals_count,
        summary.epoch_bumps_count,
        summary.full_disks_count,
        summary.fetches_answered_count,
        summary.parked_answered_count
    ));
    report(format_args!(
        "membership: {} seeds changing it, {} moves ordered, {} direct changes accepted ({} removing the leader), {} refused, {} leaders crashed while joint, {} members wiped and replaced by new ids",
        summary.membership_seeds,
        summary.moves_count,
        summary.membership_proposed_count,
        summary.leader_removals_count,
        summary.membership_refused_count,
        summary.joint_crashes_count,
        summary.wipes_count
    ));
    report(format_args!(
        "simulation: {} seeds, {} steps, {} violations",
        summary.seeds, summary.steps, summary.violations
    ));
    assert_eq!(summary.violations, 0, "see the violations above");
}

/// Wrapped in `mod raft` so that `cargo test raft` runs a few seeds of every profile.
mod raft {
    #[test]
    fn raft_simulation_smoke() {
        let summary = super::run_seeds(1000..1012);
        assert_eq!(summary.violations, 0, "{summary:?}");
    }
}
