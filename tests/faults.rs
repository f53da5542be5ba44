//! Jepsen-style fault injection against real clusters of `raftlog serve` processes.
//!
//! Idempotent producers write unique values to several partitions while consumers tail every
//! partition from every node, and a seeded schedule kills, pauses, partitions, starves and
//! corrupts nodes. Afterwards a checker reads the history: every acknowledged record was
//! consumed exactly once at the offset it was acknowledged with, nothing was consumed that was
//! never sent, every consumer saw the same dense order, and after every fault healed the cluster
//! accepted writes again within a bound.
//!
//! - `RAFTLOG_FAULT_SEED=N` replays a schedule (the seed is printed at the start of each run and
//!   on failure).
//! - `RAFTLOG_FAULT_MINUTES=N` turns the bounded CI run into a long run of about N minutes:
//!   two fifths on three nodes, one fifth on five, two fifths on four nodes that change shape
//!   (partition moves, decommissions, replacements; see `membership`).
//! - `RAFTLOG_FAULT_NETWORK=namespaces|proxy` insists on network namespaces for the partitions,
//!   or picks the TCP proxy; by default namespaces are used where they can be made (root, `ip`,
//!   `nft`) and the proxy elsewhere (see `support::netns` and `support::proxy`).
//!
//! The fault schedule is a pure function of the seed: kinds, targets (as "the leader of
//! partition p", "the k-th other node"), hold times and gaps are drawn from their own seeded
//! stream before the run starts. Which process is the leader at that moment depends on timing,
//! so a replay injects the same faults in the same order, not necessarily on the same PIDs.

#[path = "faults/membership.rs"]
mod membership;
mod support;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use membership::{ChangeKind, NotStarted, Reshape};
use raftlog::batch::RecordBatchBuilder;
use raftlog::proto::envelope::Body;
use raftlog::proto::*;
use raftlog::rng::SplitMix64;
use raftlog::storage::frame;
use support::client::{Client, Outcome};
use support::cluster::{ClusterOptions, PeerNetwork, ProcessCluster};
use support::netns::NamespaceNet;
use tokio::time::{sleep, timeout};

const TOPIC: &str = "jepsen";
const PARTITIONS: u32 = 3;
const PRODUCERS: usize = 4;
/// Longest a producer retries one batch before calling it indeterminate.
const BATCH_RETRY_MS_MAX: u64 = 30_000;
/// Longest the cluster may take, after a fault heals, to accept a write on every partition.
const RECOVERY_MS_MAX: u64 = 30_000;
/// Longest the consumers may take to reach the final high watermark once the load stops.
const DRAIN_MS_MAX: u64 = 60_000;
/// Size of the tmpfs that holds one node's data; the disk-full fault fills what is left. A
/// long run writes more data, so its node gets more room (tmpfs only uses what is written).
fn tmpfs_bytes() -> u64 {
    if long_run_minutes().is_some() {
        1 << 30
    } else {
        96 << 20
    }
}

/// Fast timing so that a fault and its recovery take seconds: 50 ms ticks, elections after
/// 0.5–1 s, a peer connection given up when a frame waits 2 s to be written; small batches and
/// segments so that the disk-full fault meets a segment roll soon.
const NODE_CONFIG: &str = "
[network]
reconnect_backoff_ms_max = 500
peer_write_timeout_ms = 2000

[server]
batch_bytes_max = 16384

[raft]
tick_interval_ms = 50
election_timeout_ticks = 10
heartbeat_interval_ticks = 1

[storage]
segment_bytes = 98304
";
/// [`NODE_CONFIG`]'s `segment_bytes`, for reading a node's log in a report.
const SEGMENT_BYTES: u64 = 98_304;
/// The longest election timeout of [`NODE_CONFIG`] (2 × 10 ticks of 50 ms).
const ELECTION_TIMEOUT_MS_MAX: u64 = 1_000;
/// [`NODE_CONFIG`]'s `peer_write_timeout_ms`: a partition held longer than this makes a node
/// give up its stalled connections and redial through the partition.
const PEER_WRITE_TIMEOUT_MS: u64 = 2_000;

// ---------------------------------------------------------------------------------------------
// Seeded randomness: SplitMix64, one stream per source.
// ---------------------------------------------------------------------------------------------

/// One named stream of a seed's randomness.
struct Rng(SplitMix64);

impl Rng {
    /// The stream `source` of `seed`; streams of one seed are independent.
    fn new(seed: u64, source: u64) -> Rng {
        let mut rng = Rng(SplitMix64::new(
            seed ^ source.wrapping_mul(0xA076_1D64_78BD_642F),
        ));
        rng.next();
        rng
    }

    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `[0, n)`.
    fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        self.next() % n
    }

    /// Uniform in `[low, high)`.
    fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low)
    }
}

const SOURCE_SCHEDULE: u64 = 1;
const SOURCE_CORRUPTION: u64 = 2;
const SOURCE_MEMBERSHIP: u64 = 3;
const SOURCE_PRODUCER: u64 = 100;

// ---------------------------------------------------------------------------------------------
// The fault schedule.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum FaultKind {
    /// kill -9 of a partition leader, restart after the hold.
    KillLeader,
    /// kill -9 of a follower of a partition, restart after the hold.
    KillFollower,
    /// kill -9 of any node, restart after the hold.
    KillRandom,
    /// SIGSTOP of a partition leader for longer than an election timeout, then SIGCONT.
    PauseLeader,
    /// SIGSTOP of any node for longer than an election timeout, then SIGCONT.
    PauseRandom,
    /// A random minority cut off from the majority, both directions.
    PartitionHalves,
    /// A partition leader cut off from every other node, both directions.
    IsolateLeader,
    /// A partition leader A and another node C cannot reach each other; both reach the rest.
    Bridge,
    /// A partition leader A cannot reach node C; C still reaches A; both reach the rest.
    OneWay,
    /// The tmpfs holding one node's data fills up, then space is freed.
    DiskFull,
    /// kill -9 of a node, garbage written after the last valid entry of each of its active
    /// segments (a torn append), restart.
    TornTail,
}

const ALL_KINDS: [FaultKind; 11] = [
    FaultKind::KillLeader,
    FaultKind::KillFollower,
    FaultKind::KillRandom,
    FaultKind::PauseLeader,
    FaultKind::PauseRandom,
    FaultKind::PartitionHalves,
    FaultKind::IsolateLeader,
    FaultKind::Bridge,
    FaultKind::OneWay,
    FaultKind::DiskFull,
    FaultKind::TornTail,
];

#[derive(Debug, Clone)]
struct Fault {
    kind: FaultKind,
    /// Whose leader "the leader" is.
    partition: u32,
    /// Picks the other nodes involved (the follower, the minority, node C…).
    pick: u64,
    hold_ms: u64,
    gap_ms: u64,
    /// A membership change started while this fault is held, if any.
    change: Option<ChangeKind>,
}

/// `count` faults: first every kind of `kinds` once in a seeded order (so a run of at least
/// that many covers them all), then kinds drawn at random; each carries the membership
/// change [`membership::changes_for`] gives it.
fn schedule(plan: &Plan, count: usize) -> Vec<Fault> {
    let (seed, nodes, kinds) = (plan.seed, plan.nodes, &plan.kinds);
    let mut changes = membership::changes_for(seed, &plan.changes, count).into_iter();
    let mut rng = Rng::new(seed, SOURCE_SCHEDULE + (nodes << 8));
    let mut first: Vec<FaultKind> = kinds.to_vec();
    for i in (1..first.len()).rev() {
        first.swap(i, rng.below(i as u64 + 1) as usize);
    }
    (0..count)
        .map(|i| {
            let kind = first
                .get(i)
                .copied()
                .unwrap_or_else(|| kinds[rng.below(kinds.len() as u64) as usize]);
            let hold_ms = match kind {
                FaultKind::PauseLeader | FaultKind::PauseRandom => rng.range(
                    ELECTION_TIMEOUT_MS_MAX + 500,
                    ELECTION_TIMEOUT_MS_MAX + 2_500,
                ),
                FaultKind::DiskFull => rng.range(3_000, 6_000),
                // One partition in three outlasts the peer write timeout (when the stalled
                // connections have a frame waiting), so connections are abandoned and redialed
                // into the partition, as after a long outage.
                FaultKind::PartitionHalves
                | FaultKind::IsolateLeader
                | FaultKind::Bridge
                | FaultKind::OneWay
                    if rng.below(3) == 0 =>
                {
                    rng.range(PEER_WRITE_TIMEOUT_MS + 1_000, PEER_WRITE_TIMEOUT_MS + 4_000)
                }
                _ => rng.range(1_000, 4_000),
            };
            Fault {
                kind,
                partition: rng.below(u64::from(PARTITIONS)) as u32,
                pick: rng.next(),
                hold_ms,
                gap_ms: rng.range(500, 1_500),
                change: changes.next().flatten(),
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The history.
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct History {
    started: Option<Instant>,
    /// Every operation, one line each, in the order the test saw them.
    /// The most recent [`LOG_LINES_MAX`] of them: a long run would not fit otherwise.
    log: VecDeque<String>,
    /// Every fault and heal line, kept whatever the length of the run.
    timeline: Vec<String>,
    /// value → partition, for every value ever sent.
    sent: HashMap<Value, u32>,
    /// value → (partition, offset) for every acknowledged value.
    acknowledged: HashMap<Value, (u32, u64)>,
    indeterminate: HashSet<Value>,
    /// Values of batches the server refused with an error that means "not written", with no
    /// earlier attempt that might have been.
    failed: HashSet<Value>,
    /// Batches answered OUT_OF_ORDER_SEQUENCE on a retry of the same sequence.
    out_of_order: u64,
    /// Batches resent after an indeterminate attempt, and those a resend found deduplicated.
    resent: u64,
    deduplicated: u64,
    /// (partition, consumer) → the records that consumer read, in order; consumer k reads
    /// from node k, or starts there when partitions move.
    consumed: BTreeMap<(u32, u64), Records>,
    /// Fault kind → (count, total hold ms).
    faults: BTreeMap<String, (u64, u64)>,
    /// Faults that could not be injected here, with the reason.
    skipped: Vec<String>,
    /// Server behaviour worth a look that is not a checker failure.
    findings: Vec<String>,
    recoveries_ms: Vec<u64>,
    /// How partitions were made, and why not with namespaces when the proxy stood in.
    network: String,
}

impl History {
    fn count(&mut self, retries: Retries) {
        self.resent += u64::from(retries.indeterminate);
        self.deduplicated += u64::from(retries.deduplicated);
    }

    fn note(&mut self, line: String) {
        let at = self.started.get_or_insert_with(Instant::now).elapsed();
        let fault = line.starts_with("fault ");
        let line = format!("{:>8.3} {line}", at.as_secs_f64());
        if fault {
            self.timeline.push(line.clone());
        }
        if self.log.len() == LOG_LINES_MAX {
            self.log.pop_front();
        }
        self.log.push_back(line);
    }
}

type Shared = Arc<Mutex<History>>;

/// What one consumer read: (offset, value) in order.
type Records = Vec<(u64, Value)>;

/// A written value: the writer's slot (a producer index, or [`PRODUCERS`] for the probe) in the
/// high bits and its count in the low 40, sent as decimal text. Numbers keep a long run's
/// history small.
type Value = u64;

/// Operations kept in the history's log (the checker's sets keep everything regardless).
const LOG_LINES_MAX: usize = 200_000;

fn value_id(slot: usize, count: u64) -> Value {
    ((slot as u64) << 40) | count
}

/// The value a consumed record carries; `u64::MAX` (never sent) when it is not one of ours.
fn parse_value(bytes: &[u8]) -> Value {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------------------------
// Producers.
// ---------------------------------------------------------------------------------------------

fn batch(partition: u32, producer: (u64, u32), sequence: u32, values: &[Value]) -> Body {
    let mut builder =
        RecordBatchBuilder::new(1 << 14).with_producer(producer.0, producer.1, sequence);
    for value in values {
        builder
            .push(1_700_000_000_000, None, value.to_string().as_bytes(), &[])
            .unwrap();
    }
    Body::Produce(ProduceRequest {
        topic: TOPIC.into(),
        partition,
        acks: Acks::All as i32,
        batch: builder.finish(),
        timeout_ms: 5_000,
    })
}

async fn init_producer(client: &mut Client) -> Option<(u64, u32)> {
    let deadline = Instant::now() + Duration::from_millis(BATCH_RETRY_MS_MAX);
    while Instant::now() < deadline {
        for node in 0..client.addresses.len() {
            let request = Body::InitProducerId(InitProducerIdRequest {});
            if let Outcome::Ok(Body::InitProducerIdResponse(r)) = client.send(node, request).await {
                return Some((r.producer_id, r.producer_epoch));
            }
        }
        sleep(Duration::from_millis(100)).await;
    }
    None
}

enum Delivery {
    /// Written at this base offset (acknowledged, or a retry answered DUPLICATE_SEQUENCE).
    Written(u64, Retries),
    /// Definitely not written: every attempt was refused before it could be, the last with
    /// an error saying so.
    Failed(String),
    /// Gave up, or an error after an attempt that may have been written.
    Unknown(String),
}

/// Errors a leader answers only for a batch it did not append (validated before the append,
/// or a full disk the entry never reached).
fn refused_before_writing(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::StorageFull
            | ErrorCode::OutOfOrderSequence
            | ErrorCode::UnknownProducerId
            | ErrorCode::ProducerFenced
            | ErrorCode::InvalidRequest
    )
}

/// How a batch got written.
#[derive(Debug, Default, Clone, Copy)]
struct Retries {
    /// An attempt ended indeterminate (timeout, lost connection) and the batch was resent.
    indeterminate: bool,
    /// A resend was answered DUPLICATE_SEQUENCE: the server deduplicated it.
    deduplicated: bool,
}

/// Sends one batch to the partition's leader, retrying the same bytes (same sequence) on every
/// refusal or indeterminate answer until it is acknowledged, answered DUPLICATE_SEQUENCE, or the
/// retry bound passes.
async fn deliver(client: &mut Client, leader: &mut usize, body: &Body) -> Delivery {
    let deadline = Instant::now() + Duration::from_millis(BATCH_RETRY_MS_MAX);
    let nodes = client.addresses.len();
    let mut retries = Retries::default();
    // What each node answered the attempts that failed, so a batch that never got through
    // says where it was sent and why it stuck (a liveness failure's first clue).
    let mut attempts: BTreeMap<String, u32> = BTreeMap::new();
    while Instant::now() < deadline {
        let outcome = client.send(*leader, body.clone()).await;
        let answered = match &outcome {
            Outcome::Ok(_) => None,
            Outcome::Refused(Some(e)) | Outcome::Failed(e) => Some(format!("{:?}", e.code())),
            Outcome::Refused(None) => Some("unreachable".to_owned()),
            Outcome::Indeterminate => Some("no answer or connection lost".to_owned()),
        };
        if let Some(answered) = answered {
            *attempts
                .entry(format!("node {}: {answered}", *leader + 1))
                .or_default() += 1;
        }
        match outcome {
            Outcome::Ok(Body::ProduceResponse(r)) => {
                return Delivery::Written(r.base_offset, retries)
            }
            Outcome::Ok(other) => panic!("produce answered {other:?}"),
            Outcome::Failed(e) if e.code() == ErrorCode::DuplicateSequence => {
                retries.deduplicated = true;
                return Delivery::Written(e.duplicate_offset, retries);
            }
            Outcome::Failed(e) if !retries.indeterminate && refused_before_writing(e.code()) => {
                return Delivery::Failed(format!("{:?}: {}", e.code(), e.message))
            }
            Outcome::Failed(e) => {
                return Delivery::Unknown(format!("{:?}: {}", e.code(), e.message))
            }
            Outcome::Refused(Some(e)) if e.code() == ErrorCode::NotLeader && e.leader_id != 0 => {
                let hinted = e.leader_id as usize - 1;
                if hinted == *leader {
                    sleep(Duration::from_millis(50)).await;
                }
                *leader = hinted.min(nodes - 1);
            }
            Outcome::Indeterminate => {
                retries.indeterminate = true;
                *leader = (*leader + 1) % nodes;
                sleep(Duration::from_millis(50)).await;
            }
            Outcome::Refused(_) => {
                *leader = (*leader + 1) % nodes;
                sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let attempts: Vec<String> = attempts
        .into_iter()
        .map(|(answer, times)| format!("{answer} x{times}"))
        .collect();
    Delivery::Unknown(format!(
        "not acknowledged within {BATCH_RETRY_MS_MAX} ms; attempts: {}",
        attempts.join(", ")
    ))
}

async fn producer(
    addresses: Vec<String>,
    (seed, pace_ms): (u64, u64),
    index: usize,
    history: Shared,
    stop: Arc<AtomicBool>,
) {
    let mut rng = Rng::new(seed, SOURCE_PRODUCER + index as u64);
    let mut client = Client::new(addresses);
    let mut leaders = vec![index % client.addresses.len(); PARTITIONS as usize];
    let mut next_value = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Some(id) = init_producer(&mut client).await else {
            history
                .lock()
                .unwrap()
                .note(format!("producer {index}: no producer id"));
            continue;
        };
        let mut sequences = [0u32; PARTITIONS as usize];
        while !stop.load(Ordering::Relaxed) {
            if pace_ms > 0 {
                sleep(Duration::from_millis(pace_ms)).await;
            }
            let partition = rng.below(u64::from(PARTITIONS)) as u32;
            let count = rng.range(1, 4);
            let values: Vec<Value> = (0..count)
                .map(|k| value_id(index, next_value + k))
                .collect();
            next_value += count;
            let body = batch(partition, id, sequences[partition as usize], &values);
            {
                let mut h = history.lock().unwrap();
                for value in &values {
                    h.sent.insert(*value, partition);
                }
                h.note(format!(
                    "send {partition} pid {} seq {} {values:?}",
                    id.0, sequences[partition as usize]
                ));
            }
            let leader = &mut leaders[partition as usize];
            match deliver(&mut client, leader, &body).await {
                Delivery::Written(base, retries) => {
                    sequences[partition as usize] += count as u32;
                    let mut h = history.lock().unwrap();
                    h.count(retries);
                    for (k, value) in values.iter().enumerate() {
                        h.acknowledged.insert(*value, (partition, base + k as u64));
                    }
                    h.note(format!("ack {partition} @{base} {values:?}"));
                }
                Delivery::Failed(why) => {
                    let mut h = history.lock().unwrap();
                    h.out_of_order += u64::from(why.starts_with("OutOfOrderSequence"));
                    h.failed.extend(values.iter().copied());
                    h.note(format!("failed {partition} {values:?}: {why}"));
                    // The values are never resent, so any copy of them in the log is a bug;
                    // a new producer starts with fresh sequences.
                    break;
                }
                Delivery::Unknown(why) => {
                    let mut h = history.lock().unwrap();
                    h.out_of_order += u64::from(why.starts_with("OutOfOrderSequence"));
                    h.indeterminate.extend(values.iter().copied());
                    h.note(format!("indeterminate {partition} {values:?}: {why}"));
                    // The sequence state is unknown now: start over as a new producer.
                    break;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Consumers.
// ---------------------------------------------------------------------------------------------

/// Where a consumer may stop and by when: unset while the load runs.
type DrainTarget = Arc<Mutex<Option<(u64, Instant)>>>;

/// Where a consumer reads.
struct Reader {
    /// Every node's client address.
    addresses: Vec<String>,
    /// The index of the node it reads first.
    first: usize,
    /// Whether it goes on to the next node when one fails to answer (the partition may have
    /// moved away), or stays with its first node.
    roams: bool,
}

/// Tails one partition from offset 0 until it reaches `target` (set once the load has
/// stopped) or the drain bound passes, as consumer `reader`.
async fn consumer(at: Reader, partition: u32, reader: u64, history: Shared, target: DrainTarget) {
    let nodes = at.addresses.len();
    let mut client = Client::new(at.addresses);
    client.request_timeout = Duration::from_secs(2);
    let mut node = at.first;
    let mut offset = 0u64;
    let mut records = Vec::new();
    loop {
        if let Some((end, deadline)) = *target.lock().unwrap() {
            if offset >= end || Instant::now() > deadline {
                break;
            }
        }
        let fetch = Body::Fetch(FetchRequest {
            topic: TOPIC.into(),
            partition,
            offset,
            max_bytes: 1 << 16,
            max_wait_ms: 200,
            min_bytes: 1,
        });
        let Outcome::Ok(Body::FetchResponse(fetched)) = client.send(node, fetch).await else {
            if at.roams {
                node = (node + 1) % nodes;
            }
            sleep(Duration::from_millis(100)).await;
            continue;
        };
        for stored in &fetched.batches {
            let batch: RecordBatch = prost::Message::decode(stored.batch.clone()).unwrap();
            for (i, record) in raftlog::batch::decode_records(&batch).enumerate() {
                let value = parse_value(&record.unwrap().value);
                records.push((stored.base_offset + i as u64, value));
            }
            offset = stored.base_offset + u64::from(stored.record_count);
        }
    }
    history
        .lock()
        .unwrap()
        .consumed
        .insert((partition, reader), records);
}

// ---------------------------------------------------------------------------------------------
// Faults.
// ---------------------------------------------------------------------------------------------

/// What must be undone when a fault heals.
enum Active {
    Restart(u64),
    Resume(u64),
    Heal,
    /// The full node, the filler file, and how many replicas had stopped before the fault.
    FreeDisk(u64, PathBuf, usize),
    Nothing,
}

/// The leader of `partition` as some live node reports it, or None within a short bound.
async fn leader_of(cluster: &ProcessCluster, client: &mut Client, partition: u32) -> Option<u64> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        for node in 1..=cluster.size() {
            if !cluster.is_running(node) || cluster.is_paused(node) {
                continue;
            }
            let request = Body::Metadata(MetadataRequest::default());
            if let Outcome::Ok(Body::MetadataResponse(m)) =
                client.send(node as usize - 1, request).await
            {
                let leader = m
                    .topics
                    .iter()
                    .find(|t| t.name == TOPIC)
                    .and_then(|t| t.partitions.iter().find(|p| p.partition == partition))
                    .map_or(0, |p| p.leader_id);
                if leader != 0 && cluster.is_running(leader) && !cluster.is_paused(leader) {
                    return Some(leader);
                }
            }
        }
        sleep(Duration::from_millis(50)).await;
    }
    None
}

/// The `members` other than `not`, in a seeded order.
fn others(members: &[u64], not: u64, pick: u64) -> Vec<u64> {
    let mut rest: Vec<u64> = members.iter().copied().filter(|&n| n != not).collect();
    let mut rng = Rng(SplitMix64::new(pick));
    for i in (1..rest.len()).rev() {
        rest.swap(i, rng.below(i as u64 + 1) as usize);
    }
    rest
}

/// Injects one fault on the cluster's `members`; returns how to undo it and a description for
/// the history.
async fn inject(
    run: &mut FaultRun<'_>,
    members: &[u64],
    fault: &Fault,
    number: usize,
) -> Result<(Active, String), String> {
    let FaultRun {
        cluster,
        client,
        disk,
        seed,
        ..
    } = run;
    let (cluster, seed) = (&mut **cluster, *seed);
    let random = members[(fault.pick % members.len() as u64) as usize];
    let leader = leader_of(cluster, client, fault.partition)
        .await
        .filter(|leader| members.contains(leader))
        .unwrap_or(random);
    let other = others(members, leader, fault.pick);
    Ok(match fault.kind {
        FaultKind::KillLeader | FaultKind::KillFollower | FaultKind::KillRandom => {
            let victim = match fault.kind {
                FaultKind::KillLeader => leader,
                FaultKind::KillFollower => other[0],
                _ => random,
            };
            cluster.kill(victim);
            (Active::Restart(victim), format!("kill -9 node {victim}"))
        }
        FaultKind::PauseLeader | FaultKind::PauseRandom => {
            let victim = if fault.kind == FaultKind::PauseLeader {
                leader
            } else {
                random
            };
            cluster.pause(victim);
            (Active::Resume(victim), format!("SIGSTOP node {victim}"))
        }
        FaultKind::PartitionHalves => {
            let mut all = others(members, 0, fault.pick);
            let minority: Vec<u64> = all.drain(..(members.len() - 1) / 2).collect();
            for &a in &minority {
                for &b in &all {
                    cluster.cut(a, b);
                }
            }
            (Active::Heal, format!("partition {minority:?} | {all:?}"))
        }
        FaultKind::IsolateLeader => {
            for &b in &other {
                cluster.cut(leader, b);
            }
            (Active::Heal, format!("isolate node {leader}"))
        }
        FaultKind::Bridge => {
            let c = other[0];
            cluster.cut(leader, c);
            (
                Active::Heal,
                format!("bridge: {leader} and {c} cut, both reach the rest"),
            )
        }
        FaultKind::OneWay => {
            let c = other[0];
            cluster.block(leader, c);
            (Active::Heal, format!("one-way: {leader} cannot reach {c}"))
        }
        FaultKind::DiskFull => {
            let Some((node, root)) = &**disk else {
                return Err("no tmpfs data dir (mount refused)".into());
            };
            let filler = root.join("filler");
            let stopped = stopped_replicas(cluster, *node);
            let filled = fill(&filler)?;
            (
                Active::FreeDisk(*node, filler, stopped),
                format!("disk of node {node} full ({filled} filler bytes)"),
            )
        }
        FaultKind::TornTail => {
            let victim = random;
            cluster.kill(victim);
            let mut rng = Rng::new(seed ^ number as u64, SOURCE_CORRUPTION);
            let torn = tear_tails(&cluster.data_dir(victim), &mut rng);
            (
                Active::Restart(victim),
                format!("kill -9 node {victim}, torn tails: {}", torn.join(", ")),
            )
        }
    })
}

/// Undoes a fault; returns a finding worth reporting, if any, or a liveness failure.
async fn heal(cluster: &mut ProcessCluster, active: Active) -> Result<Option<String>, String> {
    match active {
        Active::Restart(id) => cluster.spawn(id),
        Active::Resume(id) => cluster.resume(id),
        Active::Heal => cluster.heal_network(),
        Active::FreeDisk(node, filler, stopped_before) => {
            let _ = std::fs::remove_file(filler);
            // The node is not restarted: every replica on it must resume by itself once space
            // is freed, catch up with its leader (which `/ready` reports) and never stop.
            let freed = Instant::now();
            let deadline = freed + Duration::from_millis(RECOVERY_MS_MAX);
            loop {
                let stopped = stopped_replicas(cluster, node) - stopped_before;
                if stopped > 0 {
                    return Err(format!(
                        "node {node}: {stopped} replica(s) stopped on a storage error while its \
                         disk was full"
                    ));
                }
                let not_ready = match ready(cluster, node).await {
                    Ok(()) => {
                        return Ok(Some(format!(
                            "node {node} ready {} ms after its disk was freed, without a restart",
                            freed.elapsed().as_millis()
                        )))
                    }
                    Err(why) => why,
                };
                if Instant::now() > deadline {
                    return Err(format!(
                        "node {node} not ready within {RECOVERY_MS_MAX} ms of freeing its disk: \
                         {not_ready}"
                    ));
                }
                sleep(Duration::from_millis(100)).await;
            }
        }
        Active::Nothing => {}
    }
    Ok(None)
}

/// Asks node `id`'s `/ready`: Ok when it answers 200, else the reason it gave.
async fn ready(cluster: &ProcessCluster, id: u64) -> Result<(), String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let address = cluster.metrics_address(id);
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(address).await?;
        stream
            .write_all(b"GET /ready HTTP/1.0\r\nHost: raftlog\r\n\r\n")
            .await?;
        let mut answer = Vec::new();
        stream.take(64 << 10).read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&answer).into_owned())
    };
    let answer = timeout(Duration::from_secs(2), exchange)
        .await
        .map_err(|_| "no answer from /ready within 2 s".to_string())?
        .map_err(|e| format!("/ready: {e}"))?;
    let status_line = answer.lines().next().unwrap_or_default();
    if status_line.split_whitespace().nth(1) == Some("200") {
        return Ok(());
    }
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    Err(format!("{status_line}: {}", body.trim()))
}

/// How many times node `id`'s log says a replica stopped on a storage error.
fn stopped_replicas(cluster: &ProcessCluster, id: u64) -> usize {
    std::fs::read_to_string(cluster.dir().join(format!("node-{id}.log")))
        .map(|log| log.matches("replica stopped on a storage error").count())
        .unwrap_or(0)
}

/// Writes `path` until the filesystem is full (bounded by the tmpfs size); returns the bytes.
fn fill(path: &Path) -> Result<u64, String> {
    use std::io::Write as _;
    let mut file = std::fs::File::create(path).map_err(|e| e.to_string())?;
    let chunk = vec![0xA5u8; 64 << 10];
    let mut written = 0u64;
    while written <= tmpfs_bytes() {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(k) => written += k as u64,
            Err(_) => break,
        }
    }
    Ok(written)
}

/// For every directory under `data_dir` holding segments, writes garbage just after the last
/// valid frame of its newest segment: a torn header, a torn payload, or random bytes. Valid
/// frames are never touched, so no acknowledged entry is lost by the fault itself.
fn tear_tails(data_dir: &Path, rng: &mut Rng) -> Vec<String> {
    let mut torn = Vec::new();
    let mut dirs = vec![data_dir.to_path_buf()];
    let mut visited = 0;
    while let Some(dir) = dirs.pop() {
        visited += 1;
        if visited > 1_000 {
            break;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut newest: Option<PathBuf> = None;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "log")
                && newest.as_ref().is_none_or(|n| path > *n)
            {
                newest = Some(path);
            }
        }
        if let Some(segment) = newest {
            if let Some(what) = tear(&segment, rng) {
                torn.push(what);
            }
        }
    }
    torn
}

fn tear(segment: &Path, rng: &mut Rng) -> Option<String> {
    let bytes = std::fs::read(segment).ok()?;
    let mut end = 0usize;
    while end < bytes.len() {
        match frame::decode(&bytes[end..]) {
            Ok(header) => end += header.length as usize,
            Err(_) => break,
        }
    }
    let room = bytes.len() - end;
    if room < frame::FRAME_HEADER_BYTES * 2 {
        return None;
    }
    let mut garbage: Vec<u8> = (0..rng.range(1, frame::FRAME_HEADER_BYTES as u64 * 2))
        .map(|_| rng.next() as u8)
        .collect();
    let how = match rng.below(3) {
        0 => {
            // A header whose length promises more than was written: a torn append.
            let length = (frame::FRAME_HEADER_BYTES + 200) as u32;
            garbage.resize(frame::FRAME_HEADER_BYTES + 50, 0x5A);
            garbage[..4].copy_from_slice(&length.to_le_bytes());
            "torn frame"
        }
        1 => {
            garbage.truncate(garbage.len().min(frame::FRAME_HEADER_BYTES - 1));
            "torn header"
        }
        _ => "garbage",
    };
    if garbage.iter().take(4).all(|&b| b == 0) {
        garbage[0] = 0xFF;
    }
    let file = std::fs::OpenOptions::new().write(true).open(segment).ok()?;
    file.write_all_at(&garbage, end as u64).ok()?;
    let name = segment
        .strip_prefix(segment.ancestors().nth(2)?)
        .ok()?
        .display()
        .to_string();
    Some(format!(
        "{how} of {} bytes at {end} in {name}",
        garbage.len()
    ))
}

// ---------------------------------------------------------------------------------------------
// Liveness probes.
// ---------------------------------------------------------------------------------------------

/// A producer of its own that, after each heal, writes one value to every partition and
/// measures how long the cluster takes to accept them all.
struct Probe {
    client: Client,
    id: Option<(u64, u32)>,
    sequences: [u32; PARTITIONS as usize],
    leaders: Vec<usize>,
    written: u64,
}

impl Probe {
    fn new(addresses: Vec<String>) -> Probe {
        let leaders = vec![0; PARTITIONS as usize];
        Probe {
            client: Client::new(addresses),
            id: None,
            sequences: [0; PARTITIONS as usize],
            leaders,
            written: 0,
        }
    }

    /// Milliseconds until every partition acknowledged a write, or an error after the bound.
    async fn recover(&mut self, history: &Shared) -> Result<u64, String> {
        let started = Instant::now();
        let deadline = started + Duration::from_millis(RECOVERY_MS_MAX);
        for partition in 0..PARTITIONS {
            let mut last_failure = String::from("none");
            loop {
                if Instant::now() > deadline {
                    return Err(format!(
                        "partition {partition} accepted no write within {RECOVERY_MS_MAX} ms of \
                         the heal; last failure: {last_failure}"
                    ));
                }
                if self.id.is_none() {
                    self.id = init_producer(&mut self.client).await;
                    self.sequences = [0; PARTITIONS as usize];
                    if self.id.is_none() {
                        last_failure = "no producer id allocated".to_owned();
                    }
                    continue;
                }
                let id = self.id.expect("producer id");
                let value = value_id(PRODUCERS, self.written);
                self.written += 1;
                let sequence = self.sequences[partition as usize];
                let body = batch(partition, id, sequence, std::slice::from_ref(&value));
                history.lock().unwrap().sent.insert(value, partition);
                let leader = &mut self.leaders[partition as usize];
                match deliver(&mut self.client, leader, &body).await {
                    Delivery::Written(offset, retries) => {
                        self.sequences[partition as usize] += 1;
                        let mut h = history.lock().unwrap();
                        h.count(retries);
                        h.acknowledged.insert(value, (partition, offset));
                        h.note(format!("ack {partition} @{offset} [{value:?}]"));
                        break;
                    }
                    Delivery::Failed(why) => {
                        let mut h = history.lock().unwrap();
                        h.failed.insert(value);
                        h.note(format!("failed {partition} [{value:?}]: {why}"));
                        last_failure = why;
                        self.id = None;
                    }
                    Delivery::Unknown(why) => {
                        let mut h = history.lock().unwrap();
                        h.indeterminate.insert(value);
                        h.note(format!("indeterminate {partition} [{value:?}]: {why}"));
                        last_failure = why;
                        self.id = None;
                    }
                }
            }
        }
        Ok(started.elapsed().as_millis() as u64)
    }
}

// ---------------------------------------------------------------------------------------------
// The checker.
// ---------------------------------------------------------------------------------------------

#[derive(Default, Debug)]
struct Verdict {
    lost: u64,
    duplicated: u64,
    reordered: u64,
    /// Consumed values nobody sent.
    phantom: u64,
    /// Consumed values of batches the server said it did not write.
    failed_but_written: u64,
    /// Consumers that did not reach the final high watermark.
    incomplete: u64,
    problems: Vec<String>,
    /// Where the lost records were acknowledged: (partition, offset).
    lost_at: Vec<(u32, u64)>,
}

impl Verdict {
    fn ok(&self) -> bool {
        self.lost
            + self.duplicated
            + self.reordered
            + self.phantom
            + self.failed_but_written
            + self.incomplete
            == 0
    }

    fn problem(&mut self, line: String) {
        if self.problems.len() < 200 {
            self.problems.push(line);
        }
    }
}

fn check(history: &History, targets: &[u64]) -> Verdict {
    let mut verdict = Verdict::default();
    for partition in 0..PARTITIONS {
        let consumers: Vec<(&(u32, u64), &Records)> = history
            .consumed
            .iter()
            .filter(|((p, _), _)| *p == partition)
            .collect();
        let Some((_, reference)) = consumers.iter().max_by_key(|(_, r)| r.len()) else {
            continue;
        };
        for ((_, reader), records) in &consumers {
            if (records.len() as u64) < targets[partition as usize] {
                verdict.incomplete += 1;
                verdict.problem(format!(
                    "consumer {reader} of partition {partition} read {} of {} records",
                    records.len(),
                    targets[partition as usize]
                ));
            }
            for (i, (offset, value)) in records.iter().enumerate() {
                if *offset != i as u64 {
                    verdict.reordered += 1;
                    verdict.problem(format!(
                        "partition {partition} consumer {reader}: record {i} has offset {offset}"
                    ));
                    break;
                }
                if reference[i].1 != *value {
                    verdict.reordered += 1;
                    verdict.problem(format!(
                        "partition {partition} consumer {reader}: offset {offset} is {value}, another consumer read {}",
                        reference[i].1
                    ));
                    break;
                }
            }
        }
        let mut at: HashMap<Value, u64> = HashMap::new();
        for (offset, value) in reference.iter() {
            if let Some(first) = at.insert(*value, *offset) {
                verdict.duplicated += 1;
                verdict.problem(format!(
                    "partition {partition}: {value} at {first} and {offset}"
                ));
            }
            if history.sent.get(value) != Some(&partition) {
                verdict.phantom += 1;
                verdict.problem(format!(
                    "partition {partition}: {value} at {offset} was never sent there"
                ));
            }
            if history.failed.contains(value) {
                verdict.failed_but_written += 1;
                verdict.problem(format!(
                    "partition {partition}: {value} at {offset} was refused as not written"
                ));
            }
        }
        for (value, (p, offset)) in &history.acknowledged {
            if *p != partition {
                continue;
            }
            match at.get(value) {
                Some(stored) if stored == offset => {}
                Some(stored) => {
                    verdict.reordered += 1;
                    verdict.problem(format!(
                        "partition {partition}: {value} acknowledged at {offset}, stored at {stored}"
                    ));
                }
                None => {
                    verdict.lost += 1;
                    verdict.lost_at.push((partition, *offset));
                    verdict.problem(format!(
                        "partition {partition}: acknowledged {value} at {offset} is lost"
                    ));
                }
            }
        }
    }
    verdict
}

/// What each node's copies of `partition` hold around record `offset`: hard state,
/// configuration, and the entries (index, term, records) from a few before to a few after
/// the one holding it. It tells which term wrote a lost record where, and which copies
/// never had it. Each copy is read from a copy of its directory, so opening it (which may
/// repair a torn tail) changes nothing the nodes use.
fn locate(cluster: &ProcessCluster, partition: u32, offset: u64) -> Vec<String> {
    let mut lines = Vec::new();
    let scratch = tempfile::tempdir().expect("scratch directory");
    for node in 1..=cluster.addresses().len() as u64 {
        let partitions = cluster.data_dir(node).join("partitions");
        let Ok(dirs) = std::fs::read_dir(&partitions) else {
            continue;
        };
        for dir in dirs.flatten() {
            let name = dir.file_name().to_string_lossy().into_owned();
            if !name.starts_with(&format!("jepsen-{partition}.g")) {
                continue;
            }
            let copy = scratch.path().join(format!("node-{node}-{name}"));
            if let Err(error) = support::cluster::copy_tree(&dir.path(), &copy) {
                lines.push(format!("node {node} {name}: cannot copy: {error}"));
                continue;
            }
            let config = raftlog::storage::LogConfig {
                segment_size_bytes: SEGMENT_BYTES,
                ..Default::default()
            };
            let log = match raftlog::storage::Log::open(&copy, config) {
                Ok((log, _)) => log,
                Err(error) => {
                    lines.push(format!("node {node} {name}: cannot open: {error}"));
                    continue;
                }
            };
            let membership = log.membership().ok().flatten();
            lines.push(format!(
                "node {node} {name}: indexes {}..={}, offsets {}..{}, hard state {:?}, \
                 voting withheld {:?}, configurations {membership:?}",
                log.first_index(),
                log.last_index(),
                log.start_offset(),
                log.next_offset(),
                log.hard_state(),
                log.voting_withheld(),
            ));
            let Ok(holding) = log.read_from_offset(offset.min(log.next_offset()), 1) else {
                continue;
            };
            let Some(at) = holding.first().map(|e| e.index) else {
                continue;
            };
            let lo = at.saturating_sub(3).max(log.first_index());
            let hi = (at + 4).min(log.last_index() + 1);
            for entry in log.entries(lo, hi, u64::MAX).unwrap_or_default() {
                let values: Vec<Value> = prost::Message::decode(entry.payload.clone())
                    .ok()
                    .filter(|_| entry.record_count > 0)
                    .map(|batch: RecordBatch| {
                        raftlog::batch::decode_records(&batch)
                            .filter_map(Result::ok)
                            .map(|record| parse_value(&record.value))
                            .collect()
                    })
                    .unwrap_or_default();
                lines.push(format!(
                    "  index {} term {} kind {} offsets {}..{} at {} ms: {values:?}",
                    entry.index,
                    entry.term,
                    entry.kind,
                    entry.base_offset,
                    entry.base_offset + u64::from(entry.record_count),
                    entry.timestamp_ms,
                ));
            }
        }
    }
    lines
}

/// A history as a run would record it: `log` is what both consumers of partition 0 read
/// (offset = position), `acknowledged` the (value, offset) pairs the producers were told.
fn synthetic_history(log: &[Value], acknowledged: &[(Value, u64)]) -> History {
    let mut history = History::default();
    for &value in log
        .iter()
        .chain(acknowledged.iter().map(|(value, _)| value))
    {
        history.sent.insert(value, 0);
    }
    for &(value, offset) in acknowledged {
        history.acknowledged.insert(value, (0, offset));
    }
    let records: Records = log
        .iter()
        .copied()
        .enumerate()
        .map(|(i, v)| (i as u64, v))
        .collect();
    for node in [1, 2] {
        history.consumed.insert((0, node), records.clone());
    }
    history
}

/// The checker is what makes the fault runs mean anything: a clean history passes, and one
/// with exactly one lost, one duplicated and one reordered record fails with those counts.
#[test]
fn the_checker_counts_one_lost_one_duplicated_and_one_reordered_record() {
    let v: Vec<Value> = (0..6).map(|count| value_id(0, count)).collect();
    let targets = vec![6; PARTITIONS as usize];
    let every_ack: Vec<(Value, u64)> = v.iter().copied().zip(0..).collect();
    let clean = check(&synthetic_history(&v, &every_ack), &targets);
    assert!(clean.ok(), "{clean:?}");

    // v[2] acknowledged at 2 but stored at 3 (v[3], never acknowledged, took its place);
    // v[4] (an indeterminate attempt and its resend) stored twice; v[5] acknowledged at 5
    // and gone.
    let log = [v[0], v[1], v[3], v[2], v[4], v[4]];
    let acks = [(v[0], 0), (v[1], 1), (v[2], 2), (v[5], 5)];
    let broken = check(&synthetic_history(&log, &acks), &targets);
    assert_eq!(
        (broken.lost, broken.duplicated, broken.reordered),
        (1, 1, 1),
        "{broken:?}"
    );
    assert_eq!(
        (broken.phantom, broken.failed_but_written, broken.incomplete),
        (0, 0, 0)
    );
    assert!(!broken.ok());
}

// ---------------------------------------------------------------------------------------------
// The run.
// ---------------------------------------------------------------------------------------------

struct Plan {
    nodes: u64,
    seed: u64,
    kinds: Vec<FaultKind>,
    /// Faults at most.
    faults_max: usize,
    /// The fault loop stops starting new faults after this long (once every kind ran).
    budget: Duration,
    /// Pause of each producer between batches: a long run keeps its history small.
    pace_ms: u64,
    network: NetworkChoice,
    /// Membership changes carried by the faults; none keeps the shape fixed (every node a
    /// first voter and a replica of every partition).
    changes: Vec<ChangeKind>,
    /// Node ids kept for nodes that join in place of removed ones.
    spares: u64,
}

impl Plan {
    /// A run of `nodes` first voters that keeps its shape, with the base seed and pace.
    fn fixed(nodes: u64, kinds: Vec<FaultKind>, budget: Duration, faults_max: usize) -> Plan {
        Plan {
            nodes,
            seed: base_seed(),
            kinds,
            faults_max,
            budget,
            pace_ms: pace_ms(),
            network: NetworkChoice::Best,
            changes: Vec::new(),
            spares: 0,
        }
    }

    /// Whether the cluster changes shape during the run.
    fn reshapes(&self) -> bool {
        !self.changes.is_empty()
    }

    /// Every node id the run may start: the members, then the spares.
    fn ids(&self) -> u64 {
        self.nodes + self.spares
    }

    fn replication_factor(&self) -> u64 {
        if self.reshapes() {
            membership::REPLICATION_FACTOR
        } else {
            self.nodes
        }
    }

    /// Names the run's report and thread.
    fn name(&self) -> String {
        let variant = match (self.network, self.reshapes()) {
            (NetworkChoice::Proxy, _) => "-proxy",
            (_, true) => "-membership",
            _ => "",
        };
        format!("{}n{variant}", self.nodes)
    }
}

/// How a run makes its partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NetworkChoice {
    /// Network namespaces where this machine allows them (root, `ip`, `nft`), else the TCP
    /// proxy; `RAFTLOG_FAULT_NETWORK=namespaces` makes missing namespaces a failure instead,
    /// `RAFTLOG_FAULT_NETWORK=proxy` picks the proxy.
    Best,
    /// The TCP proxy even where namespaces work, so the fallback stays tested.
    Proxy,
}

/// The network of a run, and a line for the report saying what it is and why.
fn choose_network(plan: &Plan) -> (PeerNetwork, String) {
    let wanted = std::env::var("RAFTLOG_FAULT_NETWORK").unwrap_or_default();
    if plan.network == NetworkChoice::Proxy || wanted == "proxy" {
        return (PeerNetwork::Proxy, "TCP proxy (chosen)".into());
    }
    match NamespaceNet::create(plan.ids()) {
        Ok(net) => (
            PeerNetwork::Namespaces(net),
            "network namespaces (veth pairs on a bridge, nftables packet drops)".into(),
        ),
        Err(why) if wanted == "namespaces" => {
            panic!("RAFTLOG_FAULT_NETWORK=namespaces but namespaces are unavailable: {why}")
        }
        Err(why) => (
            PeerNetwork::Proxy,
            format!("TCP proxy (fallback: network namespaces unavailable: {why})"),
        ),
    }
}

/// Both tests start clusters of several processes; on two cores they run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Writes a line to the real stderr, past the test harness's capture, so that the seed and
/// the summary appear in every CI log, not only in failing tests' output.
fn show(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn base_seed() -> u64 {
    match std::env::var("RAFTLOG_FAULT_SEED") {
        Ok(seed) => seed.trim().parse().expect("RAFTLOG_FAULT_SEED is a u64"),
        Err(_) => {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                % 1_000_000_000
        }
    }
}

fn long_run_minutes() -> Option<f64> {
    let minutes = std::env::var("RAFTLOG_FAULT_MINUTES").ok()?;
    Some(
        minutes
            .trim()
            .parse()
            .expect("RAFTLOG_FAULT_MINUTES is a number"),
    )
}

fn run(plan: Plan) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (network, network_note) = choose_network(&plan);
    let changes = if plan.reshapes() {
        ", with membership changes"
    } else {
        ""
    };
    show(&format!(
        "fault run on {} nodes{changes}, seed {} (reproduce with RAFTLOG_FAULT_SEED={}), partitions: {network_note}",
        plan.nodes, plan.seed, plan.seed
    ));
    // The run gets a thread of its own: with namespaces it joins the hub first, so the
    // runtime's workers, spawned from it, inherit the hub and every client connection of the
    // run comes from there. The test thread itself stays where it was.
    let runner = std::thread::Builder::new()
        .name(format!("faults-{}", plan.name()))
        .spawn(move || {
            if let PeerNetwork::Namespaces(net) = &network {
                net.enter_hub()
                    .expect("the run's thread joins the hub namespace");
            }
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(scenario(plan, network, network_note));
        })
        .unwrap();
    if let Err(panic) = runner.join() {
        std::panic::resume_unwind(panic);
    }
}

async fn scenario(plan: Plan, network: PeerNetwork, network_note: String) {
    let started = Instant::now();
    let history: Shared = Arc::default();
    {
        let mut h = history.lock().unwrap();
        h.note(format!("seed {} nodes {}", plan.seed, plan.nodes));
        h.network = network_note;
    }
    let (mut cluster, disk) = start_cluster(&plan, &history, network).await;
    let mut client = Client::new(cluster.addresses());
    let mut probe = Probe::new(cluster.addresses());
    probe
        .recover(&history)
        .await
        .expect("the new cluster accepts writes");
    let load = Load::start(&cluster, &plan, &history);
    let mut reshape = match plan.reshapes() {
        true => {
            let protected = disk.as_ref().map(|(node, _)| *node);
            Some(Reshape::new(&cluster, history.clone(), 1..=plan.nodes, protected).await)
        }
        false => None,
    };

    let mut run = FaultRun {
        cluster: &mut cluster,
        client: &mut client,
        probe: &mut probe,
        history: &history,
        disk: &disk,
        seed: plan.seed,
        reshape: reshape.as_mut(),
    };
    let faults = schedule(&plan, plan.faults_max);
    let mut injected = 0usize;
    let mut liveness = None;
    for (number, fault) in faults.iter().enumerate() {
        // The budget never cuts the first round, which holds every kind once.
        if started.elapsed() > plan.budget && number >= plan.kinds.len() {
            break;
        }
        match run.one(number, fault).await {
            Ok(counted) => injected += usize::from(counted),
            Err(why) => {
                liveness = Some(why);
                break;
            }
        }
    }

    if let (None, Some(reshape)) = (&liveness, &mut reshape) {
        liveness = reshape.settle(&mut cluster).await.err();
    }
    if liveness.is_none() {
        liveness = exited_on_its_own(&mut cluster).err();
    }
    let node_states = match liveness {
        Some(_) => node_states(&cluster).await,
        None => String::new(),
    };
    let targets = load.finish(&mut client, plan.replication_factor()).await;
    let history = history.lock().unwrap();
    let outcome = RunResult {
        verdict: check(&history, &targets),
        targets,
        injected,
        liveness,
        elapsed: started.elapsed(),
        node_states,
    };
    conclude(&plan, cluster, &history, outcome);
}

/// What every running node's metrics say about its groups and peer links, lines that name
/// who leads, who is behind, which replica stalled and which link queues: the first thing a
/// liveness failure needs.
async fn node_states(cluster: &ProcessCluster) -> String {
    const WANTED: [&str; 12] = [
        "raftlog_is_leader",
        "raftlog_leader_known",
        "raftlog_term",
        "raftlog_commit_index",
        "raftlog_high_watermark",
        "raftlog_follower_lag_entries",
        "raftlog_group_",
        "raftlog_partition_moving",
        "raftlog_replica_failed",
        "raftlog_replica_storage_full",
        "raftlog_peer_queued_messages",
        "raftlog_peer_dropped_messages_total",
    ];
    let mut out = String::new();
    for id in (1..=cluster.addresses().len() as u64).filter(|&id| cluster.is_running(id)) {
        let address = cluster.metrics_address(id);
        // A node that does not answer must not end the report: the scrape runs apart.
        let scrape = tokio::spawn(support::client::scrape_metrics(address));
        match timeout(Duration::from_secs(3), scrape).await {
            Ok(Ok(text)) => {
                for line in text
                    .lines()
                    .filter(|line| WANTED.iter().any(|m| line.starts_with(m)))
                {
                    let _ = writeln!(out, "node {id}: {line}");
                }
            }
            _ => {
                let _ = writeln!(out, "node {id}: no metrics");
            }
        }
    }
    out
}

/// Starts the nodes (the last one on a tmpfs when the plan has the disk-full fault) and
/// creates the topic; returns the cluster and, when mounted, the full-able node and its mount.
async fn start_cluster(
    plan: &Plan,
    history: &Shared,
    network: PeerNetwork,
) -> (ProcessCluster, Option<(u64, PathBuf)>) {
    let mut cluster = ProcessCluster::prepare(ClusterOptions {
        nodes: plan.ids(),
        network,
        extra_config: NODE_CONFIG.into(),
        founders: plan.reshapes().then_some(membership::FOUNDERS),
    });
    let mut disk = None;
    if plan.kinds.contains(&FaultKind::DiskFull) {
        match cluster.use_tmpfs(plan.nodes, tmpfs_bytes()) {
            Ok(root) => disk = Some((plan.nodes, root)),
            Err(why) => {
                eprintln!("disk-full fault skipped: {why}");
                let mut h = history.lock().unwrap();
                h.skipped.push(format!("DiskFull: {why}"));
            }
        }
    }
    for id in 1..=plan.nodes {
        cluster.spawn(id);
    }
    let mut client = Client::new(cluster.addresses());
    if plan.reshapes() {
        // The nodes that join (beyond the first voters) are members before the topic is
        // placed, so its replicas spread over all of them.
        wait_for_members(&mut client, plan.nodes).await;
    }
    let create = Body::CreateTopic(CreateTopicRequest {
        name: TOPIC.into(),
        partitions: PARTITIONS,
        replication_factor: plan.replication_factor() as u32,
        ..Default::default()
    });
    let created = client.send_to_any(create).await;
    assert!(
        matches!(created, Outcome::Ok(Body::CreateTopicResponse(_))),
        "topic created: {created:?}"
    );
    (cluster, disk)
}

/// Waits (bounded) until the metadata lists `members` active nodes.
async fn wait_for_members(client: &mut Client, members: u64) {
    let deadline = Instant::now() + Duration::from_millis(RECOVERY_MS_MAX);
    loop {
        let answer = client
            .send_to_any(Body::Metadata(MetadataRequest::default()))
            .await;
        if let Outcome::Ok(Body::MetadataResponse(metadata)) = answer {
            let active = metadata.nodes.iter().filter(|n| n.state == "active");
            if active.count() as u64 == members {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{members} nodes are not all active members within {RECOVERY_MS_MAX} ms"
        );
        sleep(Duration::from_millis(200)).await;
    }
}

/// The producers and consumers running while the faults happen.
struct Load {
    stop: Arc<AtomicBool>,
    producers: Vec<tokio::task::JoinHandle<()>>,
    consumers: Vec<tokio::task::JoinHandle<()>>,
    targets: Vec<DrainTarget>,
}

impl Load {
    fn start(cluster: &ProcessCluster, plan: &Plan, history: &Shared) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let producers = (0..PRODUCERS)
            .map(|index| {
                let task = producer(
                    cluster.addresses(),
                    (plan.seed, plan.pace_ms),
                    index,
                    history.clone(),
                    stop.clone(),
                );
                tokio::spawn(task)
            })
            .collect();
        let mut targets = Vec::new();
        let mut consumers = Vec::new();
        // A fixed cluster has one consumer per node, held to its node; in a membership run
        // a replica's node changes, so as many consumers as replicas follow the partition.
        let (readers, roams) = match plan.reshapes() {
            true => (plan.replication_factor(), true),
            false => (plan.nodes, false),
        };
        for partition in 0..PARTITIONS {
            let target = Arc::new(Mutex::new(None));
            for reader in 1..=readers {
                let at = Reader {
                    addresses: cluster.addresses(),
                    first: reader as usize - 1,
                    roams,
                };
                let task = consumer(at, partition, reader, history.clone(), target.clone());
                consumers.push(tokio::spawn(task));
            }
            targets.push(target);
        }
        Load {
            stop,
            producers,
            consumers,
            targets,
        }
    }

    /// Stops the producers, lets every node catch up, lets the consumers drain up to the
    /// final high watermarks, and returns those.
    async fn finish(self, client: &mut Client, replicas: u64) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.producers {
            let _ = timeout(Duration::from_millis(BATCH_RETRY_MS_MAX * 3), task).await;
        }
        let targets = final_high_watermarks(client, replicas).await;
        let drain_deadline = Instant::now() + Duration::from_millis(DRAIN_MS_MAX);
        for (partition, target) in self.targets.iter().enumerate() {
            *target.lock().unwrap() = Some((targets[partition], drain_deadline));
        }
        for task in self.consumers {
            let _ = timeout(Duration::from_millis(DRAIN_MS_MAX + 5_000), task).await;
        }
        targets
    }
}

/// What one fault needs: the cluster, a client to find leaders, the liveness probe.
struct FaultRun<'a> {
    cluster: &'a mut ProcessCluster,
    client: &'a mut Client,
    probe: &'a mut Probe,
    history: &'a Shared,
    disk: &'a Option<(u64, PathBuf)>,
    seed: u64,
    /// The membership changes of a membership run.
    reshape: Option<&'a mut Reshape>,
}

impl FaultRun<'_> {
    /// Waits the gap, injects the fault, holds it, heals it, and measures the recovery.
    /// Returns whether the fault counted (it was not skipped), or the liveness failure.
    async fn one(&mut self, number: usize, fault: &Fault) -> Result<bool, String> {
        sleep(Duration::from_millis(fault.gap_ms)).await;
        self.advance_changes().await?;
        let members = match &self.reshape {
            Some(reshape) => reshape.members(),
            None => (1..=self.cluster.size()).collect(),
        };
        let injected_at = Instant::now();
        let injected = inject(self, &members, fault, number).await;
        let (active, what) = injected.unwrap_or_else(|why| {
            let mut h = self.history.lock().unwrap();
            h.skipped.push(format!("{:?}: {why}", fault.kind));
            (Active::Nothing, format!("skipped: {why}"))
        });
        let kind = fault.kind;
        self.history
            .lock()
            .unwrap()
            .note(format!("fault {number} {kind:?}: {what}"));
        eprintln!("fault {number} {kind:?} for {} ms: {what}", fault.hold_ms);
        let hold = sleep(Duration::from_millis(fault.hold_ms));
        // The change starts while the fault holds; one the cluster could not take then is
        // ordered again once the fault healed.
        let unstarted = match fault.change {
            Some(change) => self.start_change(number, change, fault.pick, false).await?,
            None => None,
        };
        hold.await;
        if matches!(active, Active::Heal) {
            // Shows in the timeline that the partition bit: a cut-off leader is replaced.
            let partition = fault.partition;
            let leader = leader_of(self.cluster, self.client, partition).await;
            let leader = leader.map_or("none".into(), |id| format!("node {id}"));
            self.history.lock().unwrap().note(format!(
                "fault {number} still held: partition {partition} led by {leader}"
            ));
        }
        let counted = !matches!(active, Active::Nothing);
        let healed = heal(self.cluster, active).await;
        let healed =
            healed.map_err(|why| format!("after fault {number} ({kind:?}: {what}): {why}"))?;
        if let Some(finding) = healed {
            eprintln!("finding: {finding}");
            self.history.lock().unwrap().findings.push(finding);
        }
        let held_ms = injected_at.elapsed().as_millis() as u64;
        let recovered = self.probe.recover(self.history).await;
        {
            let mut h = self.history.lock().unwrap();
            h.note(format!(
                "fault {number} healed after {held_ms} ms: {recovered:?}"
            ));
            if counted {
                let entry = h.faults.entry(format!("{kind:?}")).or_default();
                entry.0 += 1;
                entry.1 += held_ms;
            }
            let ms = recovered
                .map_err(|why| format!("after fault {number} ({kind:?}: {what}): {why}"))?;
            h.recoveries_ms.push(ms);
        }
        if let Some(change) = unstarted {
            self.start_change(number, change, fault.pick, true).await?;
        }
        self.advance_changes().await?;
        exited_on_its_own(self.cluster).map_err(|why| format!("after fault {number}: {why}"))?;
        Ok(counted)
    }

    /// Starts fault `number`'s membership change; returns it when the cluster did not answer
    /// (to be retried after the heal), or, on that retry (`healed`), fails the run.
    async fn start_change(
        &mut self,
        number: usize,
        change: ChangeKind,
        pick: u64,
        healed: bool,
    ) -> Result<Option<ChangeKind>, String> {
        let Some(reshape) = self.reshape.as_deref_mut() else {
            return Ok(None);
        };
        let line = match reshape.start(self.cluster, number, change, pick).await {
            Ok(what) => format!("fault {number} change {change:?}: {what}"),
            Err(NotStarted::Skipped(why)) => {
                let mut h = self.history.lock().unwrap();
                h.skipped.push(format!("{change:?}: {why}"));
                format!("fault {number} change {change:?} skipped: {why}")
            }
            Err(NotStarted::Unanswered(why)) if healed => {
                return Err(format!(
                    "fault {number}: change {change:?} refused after the heal: {why}"
                ))
            }
            Err(NotStarted::Unanswered(why)) => {
                let line = format!("fault {number} change {change:?} not taken yet: {why}");
                eprintln!("{line}");
                self.history.lock().unwrap().note(line);
                return Ok(Some(change));
            }
        };
        eprintln!("{line}");
        self.history.lock().unwrap().note(line);
        Ok(None)
    }

    /// Moves the membership changes under way on (every fault is healed when this runs).
    async fn advance_changes(&mut self) -> Result<(), String> {
        match self.reshape.as_deref_mut() {
            Some(reshape) => reshape.advance(self.cluster).await,
            None => Ok(()),
        }
    }
}

/// Fails when a node's process ended without the harness killing it (a crash, or a node
/// that could not start).
fn exited_on_its_own(cluster: &mut ProcessCluster) -> Result<(), String> {
    match cluster.exited().first() {
        None => Ok(()),
        Some((id, status)) => Err(format!(
            "node {id} exited on its own ({status}); see node-{id}.log"
        )),
    }
}

/// What the run ended with.
struct RunResult {
    verdict: Verdict,
    targets: Vec<u64>,
    injected: usize,
    liveness: Option<String>,
    elapsed: Duration,
    /// On a liveness failure, what the nodes' metrics said then.
    node_states: String,
}

/// Prints the summary, writes the report, and on failure keeps the directory with the full
/// history and panics with the seed.
fn conclude(plan: &Plan, mut cluster: ProcessCluster, history: &History, outcome: RunResult) {
    let verdict = &outcome.verdict;
    let recovered_ms_max = history.recoveries_ms.iter().copied().max().unwrap_or(0);
    let summary = format!(
        "faults {}, acknowledged {}, lost {}, duplicated {}, reordered {}, recovered after max {recovered_ms_max} ms",
        outcome.injected,
        history.acknowledged.len(),
        verdict.lost,
        verdict.duplicated,
        verdict.reordered,
    );
    let report = report(plan, history, &outcome, &summary);
    let report_path =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("faults-{}-report.txt", plan.name()));
    std::fs::write(&report_path, &report).unwrap();
    show(&format!("{summary}\nreport: {}", report_path.display()));
    let changes = plan.changes.iter().map(|change| format!("{change:?}"));
    let missing: Vec<String> = plan
        .kinds
        .iter()
        .map(|kind| format!("{kind:?}"))
        .chain(changes)
        .filter(|kind| !history.faults.contains_key(kind))
        .filter(|kind| !history.skipped.iter().any(|s| s.starts_with(kind.as_str())))
        .collect();
    if verdict.ok() && outcome.liveness.is_none() && missing.is_empty() {
        return;
    }
    let mut full = report;
    // Read before the cluster goes: a node's data on a test tmpfs goes with it.
    let mut located = String::new();
    for &(partition, offset) in verdict.lost_at.iter().take(2) {
        let _ = writeln!(
            located,
            "partition {partition}, offset {offset}, on every node's disk:"
        );
        for line in locate(&cluster, partition, offset) {
            let _ = writeln!(located, "{line}");
        }
    }
    let _ = write!(full, "\n## lost records on every node's disk\n{located}");
    let _ = write!(
        full,
        "\n## node metrics at the end\n{}",
        outcome.node_states
    );
    let saved = cluster.keep_dir().join("report.txt");
    full.push_str("\n## history (most recent operations)\n");
    for line in &history.log {
        full.push_str(line);
        full.push('\n');
    }
    for ((partition, reader), records) in &history.consumed {
        let _ = writeln!(
            full,
            "consumed partition {partition} consumer {reader}: {records:?}"
        );
    }
    std::fs::write(&saved, full).unwrap();
    drop(cluster);
    let problems: String = verdict
        .problems
        .iter()
        .take(20)
        .map(|p| format!("{p}\n"))
        .collect();
    panic!(
        "{summary}\n{problems}{located}{}{}\nhistory and node logs: {}\nreproduce with RAFTLOG_FAULT_SEED={}",
        outcome.liveness.as_deref().map(|l| format!("liveness: {l}\n")).unwrap_or_default(),
        if missing.is_empty() { String::new() } else { format!("fault kinds never injected: {missing:?}") },
        saved.display(),
        plan.seed,
    );
}

/// The highest high watermark any node reports for each partition, after waiting (bounded)
/// until at least `replicas` nodes answer and all that answer report the same one.
async fn final_high_watermarks(client: &mut Client, replicas: u64) -> Vec<u64> {
    let nodes = client.addresses.len();
    let mut result = vec![0; PARTITIONS as usize];
    let deadline = Instant::now() + Duration::from_millis(DRAIN_MS_MAX);
    for partition in 0..PARTITIONS {
        loop {
            let mut seen = Vec::new();
            for node in 0..nodes {
                let fetch = Body::Fetch(FetchRequest {
                    topic: TOPIC.into(),
                    partition,
                    max_bytes: 1,
                    max_wait_ms: 0,
                    ..Default::default()
                });
                if let Outcome::Ok(Body::FetchResponse(f)) = client.send(node, fetch).await {
                    seen.push(f.high_watermark);
                }
            }
            let max = seen.iter().copied().max().unwrap_or(0);
            result[partition as usize] = result[partition as usize].max(max);
            let agreed = seen.len() as u64 >= replicas && seen.iter().all(|&hw| hw == max);
            if agreed || Instant::now() > deadline {
                break;
            }
            sleep(Duration::from_millis(200)).await;
        }
    }
    result
}

fn report(plan: &Plan, history: &History, outcome: &RunResult, summary: &str) -> String {
    let verdict = &outcome.verdict;
    let targets = &outcome.targets;
    let elapsed = outcome.elapsed;
    let liveness = &outcome.liveness;
    let mut out = String::new();
    let _ = writeln!(out, "# raftlog fault-injection run");
    let _ = writeln!(out, "{summary}");
    let _ = writeln!(
        out,
        "nodes {}, seed {} (reproduce with RAFTLOG_FAULT_SEED={})",
        plan.nodes, plan.seed, plan.seed
    );
    let _ = writeln!(out, "duration {:.1} s", elapsed.as_secs_f64());
    let _ = writeln!(out, "partitions made with: {}", history.network);
    let _ = writeln!(
        out,
        "sent {}, acknowledged {}, failed {} (written anyway {}), indeterminate {}, resent after \
         an indeterminate attempt {} (deduplicated by the server {}), out-of-order answers {}, \
         phantom {}, incomplete consumers {}",
        history.sent.len(),
        history.acknowledged.len(),
        history.failed.len(),
        verdict.failed_but_written,
        history.indeterminate.len(),
        history.resent,
        history.deduplicated,
        history.out_of_order,
        verdict.phantom,
        verdict.incomplete
    );
    let _ = writeln!(out, "final high watermarks {targets:?}");
    let _ = writeln!(
        out,
        "\n## faults (kind: count, total ms injected; a membership change: count started, \
         total ms until it finished)"
    );
    for (kind, (count, ms)) in &history.faults {
        let _ = writeln!(out, "{kind}: {count}, {ms} ms");
    }
    for skipped in &history.skipped {
        let _ = writeln!(out, "skipped {skipped}");
    }
    for finding in &history.findings {
        let _ = writeln!(out, "finding: {finding}");
    }
    let mut recoveries = history.recoveries_ms.clone();
    recoveries.sort_unstable();
    if let (Some(first), Some(last)) = (recoveries.first(), recoveries.last()) {
        let median = recoveries[recoveries.len() / 2];
        let _ = writeln!(
            out,
            "\nrecovery after heal: min {first} ms, median {median} ms, max {last} ms"
        );
    }
    if let Some(liveness) = liveness {
        let _ = writeln!(out, "liveness failure: {liveness}");
    }
    for problem in &verdict.problems {
        let _ = writeln!(out, "problem: {problem}");
    }
    let _ = writeln!(out, "\n## fault timeline");
    for line in &history.timeline {
        let _ = writeln!(out, "{line}");
    }
    out
}

/// The fault loop's time budget and fault count: the CI bounds, or a share of
/// `RAFTLOG_FAULT_MINUTES` for a long run.
fn minutes_budget(share: f64, ci: Duration, ci_faults: usize) -> (Duration, usize) {
    match long_run_minutes() {
        Some(minutes) => (Duration::from_secs_f64(minutes * 60.0 * share), 100_000),
        None => (ci, ci_faults),
    }
}

/// Long runs pace the producers so that the history of half an hour stays in memory.
fn pace_ms() -> u64 {
    if long_run_minutes().is_some() {
        5
    } else {
        0
    }
}

#[test]
fn three_nodes_lose_nothing_under_every_fault_kind() {
    let (budget, faults_max) = minutes_budget(0.4, Duration::from_secs(120), 13);
    run(Plan::fixed(3, ALL_KINDS.to_vec(), budget, faults_max));
}

#[test]
fn five_nodes_lose_nothing_under_kills_pauses_and_partitions() {
    let kinds: Vec<FaultKind> = ALL_KINDS
        .iter()
        .copied()
        .filter(|k| *k != FaultKind::DiskFull)
        .collect();
    let (budget, faults_max) = minutes_budget(0.2, Duration::from_secs(90), 10);
    run(Plan::fixed(5, kinds, budget, faults_max));
}

/// Four members, replication factor 3, and a membership change carried by the faults:
/// partitions moved (a follower, the leader, a move cancelled), nodes decommissioned (any,
/// the metadata leader, one recommissioned while draining) and replaced by fresh nodes that
/// join, all while nodes are killed, paused, partitioned and their disks fill up.
#[test]
fn four_nodes_lose_nothing_while_partitions_move_and_nodes_are_replaced() {
    let (budget, faults_max) = minutes_budget(0.4, Duration::from_secs(120), 13);
    // A long run replaces a node every few faults; ids must fit the namespaces' /24.
    let spares = if long_run_minutes().is_some() { 40 } else { 4 };
    run(Plan {
        changes: membership::ALL_CHANGES.to_vec(),
        spares,
        ..Plan::fixed(membership::MEMBERS, ALL_KINDS.to_vec(), budget, faults_max)
    });
}

/// The TCP proxy that stands in where network namespaces cannot be made: a short run of the
/// partition kinds only, so the fallback is known to work wherever the main runs use
/// namespaces.
#[test]
fn three_nodes_lose_nothing_under_partitions_through_the_proxy_fallback() {
    let kinds = vec![
        FaultKind::PartitionHalves,
        FaultKind::IsolateLeader,
        FaultKind::Bridge,
        FaultKind::OneWay,
    ];
    let faults_max = kinds.len();
    run(Plan {
        network: NetworkChoice::Proxy,
        ..Plan::fixed(3, kinds, Duration::from_secs(30), faults_max)
    });
}

// ---------------------------------------------------------------------------------------------
// The partitions themselves.
// ---------------------------------------------------------------------------------------------

/// Port of the echo listeners in [`namespace_partitions_drop_exactly_what_they_claim`].
const ECHO_PORT: u16 = 9401;

/// Runs `work` on a fresh thread inside node `id`'s namespace (sockets it makes stay there).
fn in_node<T: Send + 'static>(
    net: &Arc<NamespaceNet>,
    id: u64,
    work: impl FnOnce() -> T + Send + 'static,
) -> T {
    let net = net.clone();
    std::thread::spawn(move || {
        net.enter_node(id).expect("join the node's namespace");
        work()
    })
    .join()
    .expect("thread in the node's namespace")
}

/// Connects from node `from`'s namespace to node `to`'s echo listener and checks one round
/// trip; Err says what failed.
fn echo(net: &Arc<NamespaceNet>, from: u64, to: u64) -> Result<(), String> {
    use std::io::{Read as _, Write as _};
    let target = net.node_address(to, ECHO_PORT);
    in_node(net, from, move || {
        let mut stream = std::net::TcpStream::connect_timeout(&target, Duration::from_millis(700))
            .map_err(|e| format!("connect {from} → {to}: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_millis(700)))
            .unwrap();
        stream.write_all(b"ping").map_err(|e| e.to_string())?;
        let mut answer = [0u8; 4];
        stream
            .read_exact(&mut answer)
            .map_err(|e| format!("echo {from} → {to}: {e}"))?;
        Ok(())
    })
}

/// The namespaces' cut, one-way block and heal drop exactly the traffic they claim to, at the
/// packet level: a partition that dropped nothing would make every partition fault of the
/// fault runs a no-op without failing them.
#[test]
fn namespace_partitions_drop_exactly_what_they_claim() {
    let net = match NamespaceNet::create(3) {
        Ok(net) => Arc::new(net),
        Err(why) => {
            show(&format!("skipped: network namespaces unavailable: {why}"));
            return;
        }
    };
    /// Stops the listeners however the test ends, so their namespaces are deleted.
    struct Stop(Arc<AtomicBool>);
    impl Drop for Stop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_listeners = Stop(stop.clone());
    let mut listeners = Vec::new();
    for id in 1..=3 {
        let (net, stop) = (net.clone(), stop.clone());
        let (bound, is_bound) = std::sync::mpsc::channel();
        listeners.push(std::thread::spawn(move || {
            use std::io::{Read as _, Write as _};
            net.enter_node(id).expect("join the node's namespace");
            let listener = std::net::TcpListener::bind(net.node_address(id, ECHO_PORT)).unwrap();
            listener.set_nonblocking(true).unwrap();
            bound.send(()).unwrap();
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        std::thread::spawn(move || {
                            let mut bytes = [0u8; 4];
                            while stream.read_exact(&mut bytes).is_ok() {
                                let _ = stream.write_all(&bytes);
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }));
        is_bound.recv().unwrap();
    }
    let all_pairs = |net: &Arc<NamespaceNet>| {
        for (a, b) in [(1, 2), (2, 1), (1, 3), (3, 1), (2, 3), (3, 2)] {
            echo(net, a, b).unwrap_or_else(|why| panic!("healed network: {why}"));
        }
    };
    all_pairs(&net);

    net.cut(1, 2).unwrap();
    assert!(echo(&net, 1, 2).is_err(), "1 reached 2 across a cut");
    assert!(echo(&net, 2, 1).is_err(), "2 reached 1 across a cut");
    echo(&net, 1, 3).expect("a cut between 1 and 2 leaves 1 ↔ 3");
    echo(&net, 3, 2).expect("a cut between 1 and 2 leaves 3 ↔ 2");
    net.heal().unwrap();
    all_pairs(&net);

    net.block(1, 3, ECHO_PORT).unwrap();
    assert!(
        echo(&net, 1, 3).is_err(),
        "1 reached 3's peer port through a one-way block"
    );
    echo(&net, 3, 1).expect("a one-way block from 1 to 3 leaves 3 → 1 (answers included)");
    echo(&net, 1, 2).expect("a one-way block from 1 to 3 leaves 1 → 2");
    echo(&net, 2, 3).expect("a one-way block from 1 to 3 leaves 2 → 3");
    net.heal().unwrap();
    all_pairs(&net);

    drop(_stop_listeners);
    for listener in listeners {
        listener.join().unwrap();
    }
}
