//! The replica: one Raft group of one node, as a sans-IO core and the tokio task that
//! drives it.
//!
//! [`ReplicaCore`] (in `core`) decides and remembers everything: it carries out the consensus
//! core's Ready against a [`ReplicaLog`], keeps the proposals waiting for commit, the fetches
//! parked at the high watermark, the idempotent producers' table, the stall after a full disk
//! and the withheld vote after lost entries, and puts what it wants done in an outbox. It is
//! what the seeded simulator runs, over [`MemLog`] stores.
//!
//! [`Replica`] (this file) is the task around it in a node. It owns only the inbox, the
//! ticker, the clock and the blocking calls; everything else talks to it through a
//! [`ReplicaHandle`]: peer messages, proposals, fetches. The task's loop is:
//!
//! 1. wait for something to happen: an event, a control request, a tick, a retention check,
//!    or a finished fsync;
//! 2. take **every** event already queued (natural batching: proposals that arrived while the
//!    previous write was in flight become one append and one fsync);
//! 3. let the core carry out its Ready ([`ReplicaCore::handle_ready`], whose doc states the
//!    order), then carry out the core's actions: send messages, answer waiters;
//! 4. start the fsync the core hands out, if any (inline when nothing else is queued, else on
//!    a blocking thread); its completion is an event of step 1.
//!
//! It does not own placement or topic names (the node does) nor sockets (the server and the
//! transport do).

pub mod core;
mod disk;
pub mod mem_log;
pub mod moves;
pub mod producers;
pub mod throttle;

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::MissedTickBehavior;

use crate::batch::unix_now_ms;
use crate::proto::{Entry, RaftMessage};
use crate::raft::{self, ProposeError};
use crate::storage::{Log, LogConfig, StorageError, SyncDone};

pub use self::core::{
    Action, CoreConfig, CoreReader, FetchWaiter, ReplicaCore, ReplicaLimits, ReplicaLog,
};
pub use crate::raft::Role;
pub use mem_log::{LogEvent, MemLog, MemSync};
pub use moves::MovePhase;

/// Where outgoing Raft messages go: the peer transport in a node.
pub trait MessageSink: Send + Sync + 'static {
    /// Queues `message` for its destination (`message.to`). Must not block; may drop (Raft
    /// retransmits whatever is lost).
    fn send(&self, message: RaftMessage);
}

/// The state a group's committed entries are applied to, in log order, exactly once.
///
/// A partition's state is its log, so partitions apply nothing; the cluster-metadata group
/// applies its commands to the metadata.
pub trait StateMachine: Send + 'static {
    /// What applying one entry produces for the client that proposed it.
    type Output: Send + 'static;
    /// Applies the committed entry at `entry.index` (data, no-op or config).
    fn apply(&mut self, entry: &Entry) -> Self::Output;
    /// Index of the last entry applied; the driver applies from the next one.
    fn applied_index(&self) -> u64;
}

/// The state machine of a partition: the log is the state, so there is nothing to apply.
#[derive(Debug, Default)]
pub struct LogIsTheState;

impl StateMachine for LogIsTheState {
    type Output = ();
    fn apply(&mut self, _entry: &Entry) {}
    fn applied_index(&self) -> u64 {
        u64::MAX
    }
}

/// How durable a proposal must be before its caller is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// After commit: durable on a majority.
    All,
    /// After the leader's own append (not yet durable anywhere).
    Leader,
}

/// Everything a replica needs to start.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// The core's configuration (member id, group id, voters, timeouts, windows).
    pub raft: raft::Config,
    /// The group's directory.
    pub dir: PathBuf,
    /// The log's configuration.
    pub log: LogConfig,
    /// Wall-clock length of one Raft tick.
    pub tick_interval: Duration,
    /// Most events queued for the task; peer messages beyond it are dropped (Raft
    /// retransmits), client calls wait for room.
    pub events_queue_max: usize,
    /// Size-based retention in bytes, 0 for none.
    pub retention_bytes: u64,
    /// Age-based retention in milliseconds, 0 for none.
    pub retention_ms: u64,
    /// How often retention is checked.
    pub retention_check_interval: Duration,
    /// Track idempotent producers' sequences (partitions; not the metadata group, whose
    /// entries are not record batches).
    pub track_producers: bool,
    /// The replica's own limits, counted in ticks of `tick_interval`.
    pub limits: ReplicaLimits,
    /// The node-wide rate its catch-up traffic to learners shares with every other replica.
    pub recovery: std::sync::Arc<throttle::RecoveryThrottle>,
}

/// Why a replica could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReplicaError {
    /// This replica does not lead the group; `leader_hint` is the leader it knows of.
    #[error("not the leader (leader: {leader_hint:?})")]
    NotLeader {
        /// The leader's node id, when known.
        leader_hint: Option<u64>,
    },
    /// Too many uncommitted bytes: the group cannot commit fast enough (or has no quorum).
    #[error(
        "too many uncommitted bytes ({uncommitted_bytes} of {uncommitted_bytes_max}); retry later"
    )]
    Backpressure {
        /// Bytes proposed but not committed.
        uncommitted_bytes: u64,
        /// The limit.
        uncommitted_bytes_max: u64,
    },
    /// The entry can never be replicated because it exceeds the message size limit.
    #[error("entry of {size_bytes} bytes exceeds the limit of {message_bytes_max} bytes")]
    TooLarge {
        /// The entry's size.
        size_bytes: u64,
        /// The limit.
        message_bytes_max: u64,
    },
    /// Leadership changed and the entry was overwritten before it committed: it was not
    /// written. Safe to retry.
    #[error("leadership changed before the entry committed; it was not written")]
    Superseded,
    /// The fetch offset is outside `[log_start_offset, high_watermark]`.
    #[error("offset {offset} is outside [{log_start_offset}, {high_watermark}]")]
    OffsetOutOfRange {
        /// The offset asked for.
        offset: u64,
        /// First offset still stored.
        log_start_offset: u64,
        /// Offset after the last committed record.
        high_watermark: u64,
    },
    /// The log failed; the replica has stopped.
    #[error("storage failed: {0}")]
    Storage(String),
    /// The disk is full; nothing was written.
    #[error("storage full: {0}")]
    StorageFull(String),
    /// The replica is shutting down or has stopped.
    #[error("replica stopped")]
    Stopped,
    /// The batch was already written (a producer's retry); nothing was appended.
    #[error("batch already written at offset {base_offset}")]
    DuplicateSequence {
        /// Offset of the original batch's first record.
        base_offset: u64,
    },
    /// The batch's sequence does not follow the producer's last batch.
    #[error("out-of-order sequence: the producer's next batch must start at sequence {expected}")]
    OutOfOrderSequence {
        /// The sequence expected next.
        expected: u32,
    },
    /// The producer's epoch is older than the current one.
    #[error("producer fenced: epoch {current} has taken over")]
    ProducerFenced {
        /// The current epoch.
        current: u32,
    },
    /// The leader holds no state for the producer, and the batch does not start at sequence 0.
    #[error(
        "unknown producer: no batch of this producer id is known here, so its first batch must \
         start at sequence 0"
    )]
    UnknownProducerId,
}

impl ReplicaError {
    /// The wire error code for this error.
    pub fn code(&self) -> crate::proto::ErrorCode {
        use crate::proto::ErrorCode;
        match self {
            ReplicaError::NotLeader { .. } => ErrorCode::NotLeader,
            ReplicaError::Backpressure { .. } => ErrorCode::ResourceExhausted,
            ReplicaError::TooLarge { .. } => ErrorCode::InvalidRequest,
            ReplicaError::Superseded => ErrorCode::NotLeader,
            ReplicaError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
            ReplicaError::Storage(_) => ErrorCode::StorageCorrupt,
            ReplicaError::StorageFull(_) => ErrorCode::StorageFull,
            ReplicaError::Stopped => ErrorCode::ShuttingDown,
            ReplicaError::DuplicateSequence { .. } => ErrorCode::DuplicateSequence,
            ReplicaError::OutOfOrderSequence { .. } => ErrorCode::OutOfOrderSequence,
            ReplicaError::ProducerFenced { .. } => ErrorCode::ProducerFenced,
            ReplicaError::UnknownProducerId => ErrorCode::UnknownProducerId,
        }
    }

    fn from_propose(error: ProposeError) -> Self {
        match error {
            ProposeError::NotLeader { leader_hint } => ReplicaError::NotLeader { leader_hint },
            ProposeError::Transferring { transferee } => ReplicaError::NotLeader {
                leader_hint: Some(transferee),
            },
            ProposeError::UncommittedBytesFull {
                uncommitted_bytes,
                uncommitted_bytes_max,
            } => ReplicaError::Backpressure {
                uncommitted_bytes,
                uncommitted_bytes_max,
            },
            ProposeError::EntryTooLarge {
                size_bytes,
                message_bytes_max,
            } => ReplicaError::TooLarge {
                size_bytes,
                message_bytes_max,
            },
        }
    }

    fn from_storage(error: &StorageError) -> Self {
        match error {
            full if full.is_full() => ReplicaError::StorageFull(full.to_string()),
            other => ReplicaError::Storage(other.to_string()),
        }
    }
}

/// An accepted and (per its acks) completed proposal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended<O> {
    /// Raft index of the entry.
    pub index: u64,
    /// Offset of its first record.
    pub base_offset: u64,
    /// Log append time, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// What the state machine made of it; `None` for `Acks::Leader` answers.
    pub output: Option<O>,
}

/// Committed entries for a fetch, with the partition's bounds at the time.
#[derive(Debug, Clone, Default)]
pub struct Fetched {
    /// Data entries in offset order, all committed.
    pub entries: Vec<Entry>,
    /// Offset after the last committed record.
    pub high_watermark: u64,
    /// First offset still stored.
    pub log_start_offset: u64,
}

/// A snapshot of a replica's state, published after every loop iteration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// The member's role.
    pub role: Option<Role>,
    /// Current term.
    pub term: u64,
    /// Known leader, 0 when unknown.
    pub leader_id: u64,
    /// Commit index.
    pub commit_index: u64,
    /// Last index in the log.
    pub last_index: u64,
    /// Offset after the last committed record.
    pub high_watermark: u64,
    /// First offset still stored.
    pub log_start_offset: u64,
    /// Bytes stored in the log's segments.
    pub log_size_bytes: u64,
    /// Number of segments.
    pub segment_count: u64,
    /// For a leader: each follower's match index, as (node id, match index).
    pub follower_match: Vec<(u64, u64)>,
    /// Set when the replica stopped on a storage error or a panic; it no longer serves or
    /// votes.
    pub failed: Option<String>,
    /// Set while the disk is full: the replica refuses writes and retries with backoff.
    pub storage_full: Option<String>,
    /// Fetches parked at the high watermark (consumers' long polls).
    pub fetch_waiters: u64,
    /// The group's voters as this member knows them (while joint: those being entered).
    pub voters: Vec<u64>,
    /// While joint: the voters being left.
    pub voters_outgoing: Vec<u64>,
    /// Members that receive the log without voting (new replicas catching up).
    pub learners: Vec<u64>,
    /// Where this group's move stands, if it has been asked to move.
    pub move_phase: Option<MovePhase>,
    /// For a leader with learners: how far their catch-up has got.
    pub catch_up: CatchUpProgress,
}

/// A leader's estimate of its learners' catch-up (what `partition moves` shows).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CatchUpProgress {
    /// Bytes of the leader's log the slowest learner still lacks, estimated from the log's
    /// size and the share of its entries past that learner's match index.
    pub bytes_remaining: u64,
    /// Bytes of entries sent to learners since the replica started.
    pub bytes_sent: u64,
    /// Bytes per second sent to learners, smoothed over the last seconds.
    pub rate_bytes_per_second: u64,
}

type ProposeReply<O> = oneshot::Sender<Result<Appended<O>, ReplicaError>>;
type FetchReply = oneshot::Sender<Result<Fetched, ReplicaError>>;

impl<T> FetchWaiter for oneshot::Sender<T> {
    fn is_abandoned(&self) -> bool {
        self.is_closed()
    }
}

/// What clients and peers queue for a replica; bounded, so a flood waits or is dropped.
enum Event<O> {
    Message(RaftMessage),
    Propose {
        payload: Bytes,
        record_count: u32,
        acks: Acks,
        reply: ProposeReply<O>,
    },
    Fetch {
        offset: u64,
        bytes_max: u64,
        /// Whether a fetch at the high watermark waits for new commits or is answered empty.
        park: bool,
        reply: FetchReply,
    },
}

/// Requests that steer the replica itself. They travel apart from [`Event`]s, on a queue
/// that is never full, so a graceful hand-off cannot be dropped by a busy replica (which
/// would turn a planned leadership transfer into an election). Few are ever sent: one per
/// start, stop or transfer.
enum Control {
    TransferLeader {
        to: u64,
    },
    Campaign,
    MoveTarget(Option<Vec<u64>>),
    MembershipTarget {
        voters: Vec<u64>,
        learners: Vec<u64>,
    },
    Stop {
        drain: Duration,
    },
    /// A peer's message that belongs to a leadership hand-off
    /// ([`RaftMessage::is_hand_off`]): never dropped for a full queue.
    HandOff(RaftMessage),
}

/// One partition replica running on a node, as the node's partition map holds it: what the
/// client server needs to reach a partition.
#[derive(Clone)]
pub struct LocalPartition {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: u32,
    /// The partition's Raft group.
    pub group_id: u64,
    /// Nodes holding a replica, preferred leader first.
    pub replicas: Vec<u64>,
    /// The running replica.
    pub handle: ReplicaHandle<()>,
}

/// The way to talk to a running replica. Cheap to clone.
pub struct ReplicaHandle<O> {
    events: mpsc::Sender<Event<O>>,
    control: mpsc::UnboundedSender<Control>,
    status: watch::Receiver<ReplicaStatus>,
}

impl<O> Clone for ReplicaHandle<O> {
    fn clone(&self) -> Self {
        ReplicaHandle {
            events: self.events.clone(),
            control: self.control.clone(),
            status: self.status.clone(),
        }
    }
}

impl<O: Send + 'static> ReplicaHandle<O> {
    /// Hands a peer's message to the replica; dropped when its queue is full (Raft
    /// retransmits) or it has stopped. A hand-off message ([`RaftMessage::is_hand_off`]) is
    /// never dropped for a full queue.
    pub fn step(&self, message: RaftMessage) {
        if message.is_hand_off() {
            let _ = self.control.send(Control::HandOff(message));
            return;
        }
        let _ = self.events.try_send(Event::Message(message));
    }

    /// Proposes one entry carrying `record_count` records and waits for `acks`.
    ///
    /// # Errors
    /// [`ReplicaError::NotLeader`] with a hint, backpressure, size, storage errors, or
    /// [`ReplicaError::Superseded`] when the entry was lost to a leader change.
    pub async fn propose(
        &self,
        payload: Bytes,
        record_count: u32,
        acks: Acks,
    ) -> Result<Appended<O>, ReplicaError> {
        self.submit(payload, record_count, acks).await?.wait().await
    }

    /// Queues a proposal and returns once it is queued, without waiting for the answer.
    /// Proposals queued one after another from one task reach the log in that order, which
    /// is how a connection keeps its appends to one partition in order while it pipelines.
    ///
    /// # Errors
    /// [`ReplicaError::Stopped`] if the replica has stopped.
    pub async fn submit(
        &self,
        payload: Bytes,
        record_count: u32,
        acks: Acks,
    ) -> Result<PendingAppend<O>, ReplicaError> {
        let (reply, answer) = oneshot::channel();
        let event = Event::Propose {
            payload,
            record_count,
            acks,
            reply,
        };
        self.events
            .send(event)
            .await
            .map_err(|_| ReplicaError::Stopped)?;
        Ok(PendingAppend { answer })
    }

    /// Reads committed data entries starting with the one holding `offset`, up to about
    /// `bytes_max` payload bytes (at least one entry when any is available). When `offset` is
    /// the high watermark, waits up to `wait` for new commits, then answers with no entries.
    ///
    /// # Errors
    /// [`ReplicaError::OffsetOutOfRange`] below `log_start_offset` or beyond the end of the log
    /// (an offset the log holds but has not seen committed yet is waited for).
    pub async fn fetch(
        &self,
        offset: u64,
        bytes_max: u64,
        wait: Duration,
    ) -> Result<Fetched, ReplicaError> {
        if wait.is_zero() {
            // The replica answers at once, with data or empty; a zero timeout instead would
            // answer empty whenever the task is busy for a moment (an inline fsync, say).
            return self.ask_fetch(offset, bytes_max, false).await?.await;
        }
        let answer = self.ask_fetch(offset, bytes_max, true).await?;
        if let Ok(answered) = tokio::time::timeout(wait, answer).await {
            return answered;
        }
        // The wait is over; dropping the answer tells the replica to forget the parked fetch.
        // If records committed meanwhile, the replica was too busy to answer (an inline
        // fsync, a burst of proposals): ask once more without parking, so a consumer never
        // gets an empty answer while data is there.
        let status = self.status();
        if status.high_watermark > offset {
            return self.ask_fetch(offset, bytes_max, false).await?.await;
        }
        Ok(Fetched {
            entries: Vec::new(),
            high_watermark: status.high_watermark,
            log_start_offset: status.log_start_offset,
        })
    }

    /// Queues a fetch; the returned future resolves with the replica's answer.
    async fn ask_fetch(
        &self,
        offset: u64,
        bytes_max: u64,
        park: bool,
    ) -> Result<impl std::future::Future<Output = Result<Fetched, ReplicaError>>, ReplicaError>
    {
        let (reply, answer) = oneshot::channel();
        self.events
            .send(Event::Fetch {
                offset,
                bytes_max,
                park,
                reply,
            })
            .await
            .map_err(|_| ReplicaError::Stopped)?;
        Ok(async move { answer.await.map_err(|_| ReplicaError::Stopped)? })
    }

    /// Asks the leader to hand leadership to `to` (dissertation §3.10). Never dropped for a
    /// full queue.
    pub fn transfer_leader(&self, to: u64) {
        let _ = self.control.send(Control::TransferLeader { to });
    }

    /// Asks the replica to stop: it refuses new proposals at once, keeps running for at most
    /// `drain` so that proposals already accepted learn their outcome (typically from the new
    /// leader's commit index after a leadership transfer), then syncs and exits. Waiters still
    /// unresolved then get [`ReplicaError::Stopped`]. Never dropped for a full queue.
    pub fn stop(&self, drain: Duration) {
        let _ = self.control.send(Control::Stop { drain });
    }

    /// Tells this member the voters its group is to move to (`None`: no move), as the
    /// cluster metadata orders; whichever member leads drives the move. Never dropped for a
    /// full queue.
    pub fn set_move_target(&self, target: Option<Vec<u64>>) {
        let _ = self.control.send(Control::MoveTarget(target));
    }

    /// Tells this member the voters and learners its group is to end with (the metadata
    /// group's: every node that joined is kept as a learner); driven like a move. Never
    /// dropped for a full queue.
    pub fn set_membership_target(&self, voters: Vec<u64>, learners: Vec<u64>) {
        let _ = self
            .control
            .send(Control::MembershipTarget { voters, learners });
    }

    /// Asks this member to start an election now (used to place initial leaders evenly).
    pub fn campaign(&self) {
        let _ = self.control.send(Control::Campaign);
    }

    /// The replica's latest published state.
    pub fn status(&self) -> ReplicaStatus {
        self.status.borrow().clone()
    }

    /// A receiver that changes whenever the replica's state does; `changed()` fails once
    /// the replica's task has ended.
    pub fn watch_status(&self) -> watch::Receiver<ReplicaStatus> {
        self.status.clone()
    }
}

/// A queued proposal; [`PendingAppend::wait`] gives its outcome.
pub struct PendingAppend<O> {
    answer: oneshot::Receiver<Result<Appended<O>, ReplicaError>>,
}

impl<O> PendingAppend<O> {
    /// Waits for the proposal's outcome (per its acks).
    ///
    /// # Errors
    /// As [`ReplicaHandle::propose`].
    pub async fn wait(self) -> Result<Appended<O>, ReplicaError> {
        self.answer.await.map_err(|_| ReplicaError::Stopped)?
    }
}

/// The core as a node runs it: on the file log, answering through oneshot channels.
type NodeCore<S> = ReplicaCore<Log, S, ProposeReply<<S as StateMachine>::Output>, FetchReply>;

/// The task that runs one group. Created by [`Replica::start`].
pub struct Replica<S: StateMachine> {
    core: NodeCore<S>,
    sink: std::sync::Arc<dyn MessageSink>,
    config: ReplicaConfig,
    sync_done: (mpsc::Sender<SyncDone>, mpsc::Receiver<SyncDone>),
    status: watch::Sender<ReplicaStatus>,
    /// Set by a stop request: the time by which the replica exits even with waiters left.
    stopping_deadline: Option<tokio::time::Instant>,
    /// This group's metric handles (see [`crate::metrics`]).
    metrics: std::sync::Arc<crate::metrics::GroupMetrics>,
    /// The rate of catch-up bytes sent, for the status.
    catch_up_rate: RateMeter,
}

/// A byte rate smoothed over windows of a second: the core counts bytes, the driver, which
/// has the clock, turns them into a rate.
#[derive(Debug)]
struct RateMeter {
    window_started: std::time::Instant,
    bytes_at_start: u64,
    rate: f64,
}

impl RateMeter {
    const WINDOW: Duration = Duration::from_secs(1);

    fn new() -> Self {
        RateMeter {
            window_started: std::time::Instant::now(),
            bytes_at_start: 0,
            rate: 0.0,
        }
    }

    /// Notes the running total `bytes` (once a tick: not on the request path).
    fn observe(&mut self, bytes: u64) {
        let elapsed = self.window_started.elapsed();
        if elapsed >= Self::WINDOW {
            let now = bytes.saturating_sub(self.bytes_at_start) as f64 / elapsed.as_secs_f64();
            // Half the weight on the last second: steady enough to read, quick to follow.
            self.rate = (self.rate + now) / 2.0;
            if self.rate < 1.0 {
                self.rate = 0.0;
            }
            self.window_started = std::time::Instant::now();
            self.bytes_at_start = bytes;
        }
    }

    /// Bytes per second, as of the last full window.
    fn rate(&self) -> u64 {
        self.rate as u64
    }
}

impl<S: StateMachine> Replica<S> {
    /// Opens the group's log (running recovery), rebuilds the core from it, and spawns the
    /// task. Must be called inside a multi-threaded tokio runtime: storage calls that fsync
    /// run under `block_in_place` so they never stall other tasks.
    ///
    /// # Errors
    /// The log could not be opened (damaged, unreadable, disk full) or the core's
    /// configuration is invalid.
    pub fn start(
        config: ReplicaConfig,
        machine: S,
        sink: std::sync::Arc<dyn MessageSink>,
    ) -> Result<ReplicaHandle<S::Output>, ReplicaError> {
        let (mut log, report) =
            tokio::task::block_in_place(|| Log::open(&config.dir, config.log.clone()))
                .map_err(|e| ReplicaError::from_storage(&e))?;
        // Entries that survived a crash of the process but were never fsynced are made
        // durable now, before the core treats them as its durable log.
        tokio::task::block_in_place(|| log.sync()).map_err(|e| ReplicaError::from_storage(&e))?;
        if let Some(lost_term) = log.voting_withheld() {
            tracing::warn!(
                dir = %config.dir.display(),
                tail = ?report.tail,
                lost_term,
                "recovery dropped entries that may have been acknowledged: not voting until caught up with a leader"
            );
        }
        let core_config = CoreConfig {
            raft: config.raft.clone(),
            limits: config.limits.clone(),
            track_producers: config.track_producers,
            retention_bytes: config.retention_bytes,
            retention_ms: config.retention_ms,
        };
        let core = ReplicaCore::new(core_config, log, machine)?;
        let (events, inbox) = mpsc::channel(config.events_queue_max.max(1));
        let (control, controls) = mpsc::unbounded_channel();
        // Publish the recovered state before anyone can ask for it.
        let (status, status_rx) = watch::channel(core.status());
        let metrics = crate::metrics::group(config.raft.id, config.raft.group_id);
        let group = config.raft.group_id;
        let replica = Replica {
            core,
            sink,
            config,
            sync_done: mpsc::channel(1),
            status,
            stopping_deadline: None,
            metrics: metrics.clone(),
            catch_up_rate: RateMeter::new(),
        };
        let status = replica.status.clone();
        tokio::spawn(async move {
            let run = std::panic::AssertUnwindSafe(replica.run(inbox, controls));
            if let Err(panic) = futures::FutureExt::catch_unwind(run).await {
                // A panic is a bug (in the driver or a state machine's apply). The replica
                // is gone with it, and with it every waiter's reply (they see it stopped);
                // it must also show as failed, as after a storage error, or the node would
                // look healthy while this group no longer serves or votes.
                let message = panic_message(panic.as_ref());
                tracing::error!(group, %message, "replica task panicked; it no longer serves or votes");
                metrics.replica_failed();
                status.send_modify(|status| {
                    status.failed = Some(format!("replica task panicked: {message}"));
                });
            }
        });
        Ok(ReplicaHandle {
            events,
            control,
            status: status_rx,
        })
    }

    async fn run(
        mut self,
        mut inbox: mpsc::Receiver<Event<S::Output>>,
        mut controls: mpsc::UnboundedReceiver<Control>,
    ) {
        let mut ticker = tokio::time::interval(self.config.tick_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut retention = tokio::time::interval(self.config.retention_check_interval);
        retention.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let retains = self.config.retention_bytes > 0 || self.config.retention_ms > 0;
        loop {
            // Biased, in this order: a control request (a campaign at start, a stop) is
            // handled before client events queued after it, as when both shared one queue;
            // ticks and fsync completions come before the inbox so that a replica under a
            // constant stream of requests still heartbeats and commits.
            tokio::select! {
                biased;
                Some(control) = controls.recv() => self.on_control(control),
                Some(done) = self.sync_done.1.recv() => self.core.sync_done(done),
                _ = ticker.tick() => {
                    self.core.tick();
                    self.top_up_catch_up_budget();
                    self.catch_up_rate
                        .observe(self.core.raft().catch_up_counters().bytes_sent);
                }
                _ = retention.tick(), if retains => self.core.apply_retention(unix_now_ms()),
                event = inbox.recv() => {
                    let Some(event) = event else { break };
                    self.on_event(event);
                    // Natural batching: everything that queued up while we were busy is
                    // handled before the next Ready, so it shares one append and one fsync.
                    while let Ok(event) = inbox.try_recv() {
                        self.on_event(event);
                    }
                }
            };
            let outcome = self.core.handle_ready();
            self.carry_out_actions();
            if outcome.is_err() {
                self.metrics.replica_failed();
                self.publish_status();
                break;
            }
            self.start_sync(inbox.is_empty());
            self.publish_status();
            let drained = self.core.pending_count() == 0;
            if self
                .stopping_deadline
                .is_some_and(|deadline| drained || tokio::time::Instant::now() >= deadline)
            {
                break;
            }
        }
        self.core.answer_all(ReplicaError::Stopped);
        self.carry_out_actions();
        if self.core.failed().is_none() {
            let _ = self.core.log_mut().sync();
        }
    }

    fn on_event(&mut self, event: Event<S::Output>) {
        match event {
            Event::Message(message) => {
                self.metrics.received(&message);
                self.core.step(message);
            }
            Event::Propose {
                payload,
                record_count,
                acks,
                reply,
            } => self
                .core
                .propose(payload, record_count, acks, unix_now_ms(), reply),
            Event::Fetch {
                offset,
                bytes_max,
                park,
                reply,
            } => self.core.fetch(offset, bytes_max, park, reply),
        }
    }

    fn on_control(&mut self, control: Control) {
        match control {
            Control::TransferLeader { to } => self.core.transfer_leader(to),
            Control::Campaign => self.core.campaign(),
            Control::MoveTarget(target) => self.core.set_move_target(target),
            Control::MembershipTarget { voters, learners } => {
                self.core.set_membership_target(voters, learners);
            }
            Control::HandOff(message) => {
                self.metrics.received(&message);
                self.core.step(message);
            }
            Control::Stop { drain } => {
                self.core.stop();
                self.stopping_deadline = Some(tokio::time::Instant::now() + drain);
            }
        }
    }

    /// Carries out the core's outbox: messages to the transport, answers to their waiters.
    fn carry_out_actions(&mut self) {
        let mut sent = Vec::new();
        for action in self.core.actions() {
            match action {
                Action::Send(message) => sent.push(message),
                Action::Proposed(reply, result) => drop(reply.send(result)),
                Action::Fetched(reply, result) => drop(reply.send(result)),
            }
        }
        if !sent.is_empty() {
            self.metrics.node().messages_sent(&sent);
            for message in sent {
                self.sink.send(message);
            }
        }
    }

    /// Starts the fsync the core hands out, if any; its completion comes back through
    /// `sync_done`.
    ///
    /// With `idle` (nothing waiting in the inbox) the fsync runs right here: a hand-off to a
    /// blocking thread and the wake-up back cost two context switches on the critical path,
    /// a large share of a lone record's latency, while nothing could run in parallel anyway.
    /// Under load the inbox is rarely empty and the fsync overlaps the next appends.
    fn start_sync(&mut self, idle: bool) {
        let Some(job) = self.core.poll_sync(unix_now_ms()) else {
            return;
        };
        let done = self.sync_done.0.clone();
        let metrics = self.metrics.node();
        let run = move || {
            let started = std::time::Instant::now();
            let synced = job.run();
            metrics.fsync_done(started.elapsed());
            synced
        };
        if idle {
            let synced = tokio::task::block_in_place(run);
            // Only one fsync runs at a time, so the one-slot channel is empty.
            let _ = done.try_send(synced);
        } else {
            tokio::task::spawn_blocking(move || {
                let _ = done.blocking_send(run());
            });
        }
    }

    /// Gives the core this tick's share of the node-wide catch-up rate: enough for one
    /// message, or one tick's worth of the rate if more, and never more than has accrued.
    fn top_up_catch_up_budget(&mut self) {
        let raft = self.core.raft_mut();
        if self.config.recovery.rate() == 0 {
            if raft.catch_up_budget().is_some() {
                raft.set_catch_up_budget(None);
            }
        } else if raft.role() == crate::raft::Role::Leader && !raft.membership().learners.is_empty()
        {
            let tick_share = (self.config.recovery.rate() as f64
                * self.config.tick_interval.as_secs_f64()) as u64;
            let cap = i64::try_from(self.config.raft.message_bytes_max.max(tick_share))
                .unwrap_or(i64::MAX);
            let have = raft.catch_up_budget().unwrap_or(0);
            if have < cap {
                let wanted = cap.saturating_sub(have).unsigned_abs();
                let granted = self.config.recovery.take(wanted).unwrap_or(0);
                let granted = i64::try_from(granted).unwrap_or(i64::MAX);
                raft.set_catch_up_budget(Some(have.saturating_add(granted)));
            }
        } else if raft.catch_up_budget().is_none() {
            raft.set_catch_up_budget(Some(0));
        }
    }

    fn publish_status(&mut self) {
        let mut status = self.core.status();
        status.catch_up.rate_bytes_per_second = self.catch_up_rate.rate();
        let catch_up = self.core.raft().catch_up_counters();
        self.metrics
            .catch_up(catch_up.bytes_sent, catch_up.throttled);
        self.metrics.fetch_waiters(self.core.parked_fetch_count());
        let outgoing_only = status
            .voters_outgoing
            .iter()
            .filter(|id| !status.voters.contains(id))
            .count();
        let moving = status
            .move_phase
            .as_ref()
            .is_some_and(|phase| *phase != MovePhase::Done);
        self.metrics.membership(
            status.voters.len() + outgoing_only,
            status.learners.len(),
            !status.voters_outgoing.is_empty(),
            moving,
        );
        self.metrics.status(
            &metrics_sample(&self.status.borrow()),
            &metrics_sample(&status),
        );
        self.status.send_if_modified(|current| {
            let changed = *current != status;
            *current = status;
            changed
        });
    }
}

/// What the metrics need of a status (they do not know the replica's types).
fn metrics_sample(status: &ReplicaStatus) -> crate::metrics::GroupSample<'_> {
    crate::metrics::GroupSample {
        leading: status.role == Some(Role::Leader),
        campaigning: status.role == Some(Role::Candidate),
        term: status.term,
        leader_id: status.leader_id,
        commit_index: status.commit_index,
        last_index: status.last_index,
        high_watermark: status.high_watermark,
        log_start_offset: status.log_start_offset,
        log_size_bytes: status.log_size_bytes,
        segment_count: status.segment_count,
        failed: status.failed.is_some(),
        storage_full: status.storage_full.is_some(),
        follower_match: &status.follower_match,
    }
}

/// The text a panic was raised with, when it was a string.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::raft_message::Body;

    #[test]
    fn a_full_inbox_does_not_drop_a_leadership_hand_off() {
        let (events, mut inbox) = mpsc::channel::<Event<()>>(1);
        let (control, mut controls) = mpsc::unbounded_channel();
        let (_status, status_rx) = watch::channel(ReplicaStatus::default());
        let handle = ReplicaHandle {
            events,
            control,
            status: status_rx,
        };
        let heartbeat = RaftMessage {
            body: Some(Body::AppendEntries(Default::default())),
            ..Default::default()
        };
        handle.step(heartbeat.clone());
        handle.step(heartbeat);
        handle.step(RaftMessage {
            body: Some(Body::TimeoutNow(Default::default())),
            ..Default::default()
        });
        assert!(matches!(inbox.try_recv(), Ok(Event::Message(_))));
        assert!(
            inbox.try_recv().is_err(),
            "the second heartbeat found the inbox full"
        );
        match controls.try_recv() {
            Ok(Control::HandOff(message)) => {
                assert!(matches!(message.body, Some(Body::TimeoutNow(_))))
            }
            _ => panic!("the hand-off did not reach the control queue"),
        }
    }
}
