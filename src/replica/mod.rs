//! The replica driver: runs one Raft group on tokio, joining the pure consensus core
//! ([`crate::raft`]) to its storage ([`crate::storage`]) and the network.
//!
//! This is the only place where the core meets IO. One task per group owns the core and the
//! partition's [`Log`]; everything else talks to it through a [`ReplicaHandle`]: peer messages,
//! proposals, fetches. The task's loop is:
//!
//! 1. wait for something to happen: an event, a tick, or a finished fsync;
//! 2. take **every** event already queued (natural batching: proposals that arrived while the
//!    previous write was in flight become one append and one fsync);
//! 3. carry out the core's [`Ready`] in `Replica::handle_ready`, whose doc states the order;
//! 4. start an fsync in a blocking thread if the log has entries that are not durable and no
//!    fsync is running; its completion is an event of step 1.
//!
//! A full disk does not stop the task (see `Replica::stall`): the write that failed is
//! treated like a crash just before it (the core is rebuilt from what the log holds), writes
//! are refused with `STORAGE_FULL`, and the replica tries again with backoff until space is
//! freed. Any other storage error stops the task, since the log's state is then unknown.
//!
//! It owns the group's high watermark, the produce requests waiting for commit and the fetches
//! waiting for new records. It does not own placement or topic names (the node does) nor
//! sockets (the server and the transport do).

pub mod producers;
mod reader;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::MissedTickBehavior;

use crate::proto::{Entry, RaftMessage};
use crate::raft::{self, ProposeError, Raft, Ready, RestoredState, Role};
use crate::storage::{Log, LogConfig, RecoveryReport, StorageError, SyncDone, TailState};

pub use reader::StorageReader;

use producers::{ProducerBatch, ProducerTable, StoredBatch, Verdict, PRODUCER_REBUILD_ENTRIES_MAX};

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
}

type ProposeReply<O> = oneshot::Sender<Result<Appended<O>, ReplicaError>>;
type FetchReply = oneshot::Sender<Result<Fetched, ReplicaError>>;

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
    TransferLeader {
        to: u64,
    },
    Campaign,
    Stop {
        drain: Duration,
    },
}

/// The way to talk to a running replica. Cheap to clone.
pub struct ReplicaHandle<O> {
    events: mpsc::Sender<Event<O>>,
    status: watch::Receiver<ReplicaStatus>,
}

impl<O> Clone for ReplicaHandle<O> {
    fn clone(&self) -> Self {
        ReplicaHandle {
            events: self.events.clone(),
            status: self.status.clone(),
        }
    }
}

impl<O: Send + 'static> ReplicaHandle<O> {
    /// Hands a peer's message to the replica; dropped when its queue is full (Raft
    /// retransmits) or it has stopped.
    pub fn step(&self, message: RaftMessage) {
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
    /// [`ReplicaError::OffsetOutOfRange`] outside `[log_start_offset, high_watermark]`.
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

    /// Asks the leader to hand leadership to `to` (dissertation §3.10).
    pub fn transfer_leader(&self, to: u64) {
        let _ = self.events.try_send(Event::TransferLeader { to });
    }

    /// Asks the replica to stop: it refuses new proposals at once, keeps running for at most
    /// `drain` so that proposals already accepted learn their outcome (typically from the new
    /// leader's commit index after a leadership transfer), then syncs and exits. Waiters still
    /// unresolved then get [`ReplicaError::Stopped`].
    pub fn stop(&self, drain: Duration) {
        let _ = self.events.try_send(Event::Stop { drain });
    }

    /// Asks this member to start an election now (used to place initial leaders evenly).
    pub fn campaign(&self) {
        let _ = self.events.try_send(Event::Campaign);
    }

    /// The replica's latest published state.
    pub fn status(&self) -> ReplicaStatus {
        self.status.borrow().clone()
    }

    /// A receiver that changes whenever the replica's state does.
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

/// A proposal waiting for its entry to commit (or to be superseded).
struct PendingProposal<O> {
    index: u64,
    term: u64,
    base_offset: u64,
    timestamp_ms: i64,
    acks: Acks,
    reply: Option<ProposeReply<O>>,
    /// A producer's retry of the batch already at `index`: answered as a duplicate once that
    /// entry commits.
    duplicate: bool,
}

/// First wait of a replica stalled on a full disk before it tries to write again.
const STALL_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait between two attempts: freed space is used within a couple of seconds, and a
/// disk that stays full costs one failed write (and one rebuild of the core) per attempt.
const STALL_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// A replica waiting for disk space (see [`Replica::stall`]).
struct Stall {
    /// When to try writing again.
    retry_at: tokio::time::Instant,
    /// The error that stalled it, for clients and `/ready`.
    reason: String,
}

/// A fetch parked at the high watermark until new records commit.
struct ParkedFetch {
    offset: u64,
    bytes_max: u64,
    reply: FetchReply,
}

/// The task that runs one group. Created by [`Replica::start`].
pub struct Replica<S: StateMachine> {
    raft: Raft,
    log: Log,
    machine: S,
    sink: std::sync::Arc<dyn MessageSink>,
    config: ReplicaConfig,
    pending: VecDeque<PendingProposal<S::Output>>,
    parked: Vec<ParkedFetch>,
    sync_running: bool,
    sync_done: (mpsc::Sender<SyncDone>, mpsc::Receiver<SyncDone>),
    status: watch::Sender<ReplicaStatus>,
    high_watermark: u64,
    /// The commit index the last [`Replica::on_commit`] acted on, capped at the stored log:
    /// entries up to it may have been shown to readers and answered to producers, so storage
    /// must never truncate them. It lags the core's commit index on purpose: one step may both
    /// truncate a stale suffix and commit the leader's entries that replace it (the same
    /// AppendEntries carries both), and the truncation must still happen.
    committed_index: u64,
    /// Set by a stop request: the time by which the replica exits even with waiters left.
    stopping_deadline: Option<tokio::time::Instant>,
    /// Idempotent producers' recent batches, as the log holds them.
    producers: ProducerTable,
    /// This group's metric handles (see [`crate::metrics`]).
    metrics: std::sync::Arc<crate::metrics::GroupMetrics>,
    /// Set while the disk is full: the core is neither ticked nor stepped until `retry_at`.
    stall: Option<Stall>,
    /// Wait before the next retry; doubles per failed attempt, reset by a successful append.
    stall_backoff: Duration,
    /// The [`VOTING_WITHHELD_FILE`] marker exists in the group's directory.
    voting_marker: bool,
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
        let voting_withheld = tokio::task::block_in_place(|| withhold_voting(&log, &report))
            .map_err(|e| ReplicaError::from_storage(&e))?;
        let restored = RestoredState {
            voting_withheld,
            ..restored_state(&log)
        };
        let raft = Raft::restore(config.raft.clone(), restored, &StorageReader::new(&log))
            .map_err(|e| ReplicaError::Storage(format!("invalid raft configuration: {e}")))?;
        let (events, inbox) = mpsc::channel(config.events_queue_max.max(1));
        let (status, status_rx) = watch::channel(ReplicaStatus::default());
        let high_watermark = log.start_offset();
        let metrics = crate::metrics::group(config.raft.id, config.raft.group_id);
        // After a restart only the log start is known to be committed.
        let committed_index = raft.commit_index();
        let mut replica = Replica {
            raft,
            log,
            machine,
            sink,
            config,
            pending: VecDeque::new(),
            parked: Vec::new(),
            sync_running: false,
            sync_done: mpsc::channel(1),
            status,
            high_watermark,
            committed_index,
            stopping_deadline: None,
            producers: ProducerTable::new(),
            metrics,
            stall: None,
            stall_backoff: Duration::ZERO,
            voting_marker: voting_withheld.is_some(),
        };
        replica
            .rebuild_producers()
            .map_err(|e| ReplicaError::from_storage(&e))?;
        // Publish the recovered state before anyone can ask for it.
        replica.publish_status();
        let status = replica.status.clone();
        let metrics = replica.metrics.clone();
        let group = replica.config.raft.group_id;
        tokio::spawn(async move {
            let run = std::panic::AssertUnwindSafe(replica.run(inbox));
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
            status: status_rx,
        })
    }

    async fn run(mut self, mut inbox: mpsc::Receiver<Event<S::Output>>) {
        let mut ticker = tokio::time::interval(self.config.tick_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut retention = tokio::time::interval(self.config.retention_check_interval);
        retention.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let outcome = tokio::select! {
                Some(done) = self.sync_done.1.recv() => self.on_sync_done(done),
                event = inbox.recv() => {
                    let Some(event) = event else { break };
                    self.on_event(event);
                    // Natural batching: everything that queued up while we were busy is
                    // handled before the next Ready, so it shares one append and one fsync.
                    while let Ok(event) = inbox.try_recv() {
                        self.on_event(event);
                    }
                    Ok(())
                }
                _ = ticker.tick() => { self.on_tick(); Ok(()) }
                _ = retention.tick() => self.apply_retention(),
            };
            let outcome = outcome.and_then(|()| self.handle_ready());
            let outcome = match outcome {
                // A snapshot install that ran out of room after removing the old segments
                // leaves no active segment: only reopening the log repairs that.
                Err(error) if error.is_full() && self.log.segment_count() > 0 => self.stall(error),
                other => other,
            };
            if let Err(error) = outcome {
                self.fail(error);
                break;
            }
            self.start_sync(inbox.is_empty());
            self.publish_status();
            let drained = self.pending.is_empty();
            if self
                .stopping_deadline
                .is_some_and(|deadline| drained || tokio::time::Instant::now() >= deadline)
            {
                break;
            }
        }
        self.fail_waiters(ReplicaError::Stopped);
        if self.status.borrow().failed.is_none() {
            let _ = tokio::task::block_in_place(|| self.log.sync());
        }
    }

    fn on_tick(&mut self) {
        // Fetches whose waiter gave up (its wait ended) are otherwise only dropped when a
        // commit wakes the parked list; on an idle partition they would pile up, one per
        // long poll.
        self.parked.retain(|fetch| !fetch.reply.is_closed());
        self.metrics.fetch_waiters(self.parked.len());
        if let Some(stall) = &self.stall {
            if tokio::time::Instant::now() < stall.retry_at {
                return;
            }
            tracing::info!(
                group = self.config.raft.group_id,
                "retrying writes after a full disk"
            );
            self.stall = None;
        }
        self.raft.tick();
    }

    /// Handles one event. A stalled replica (full disk) serves fetches of committed records
    /// and stop requests only: proposals are refused with `STORAGE_FULL`, and peer messages
    /// are dropped unanswered (to the leader it looks slow; Raft retransmits once it answers
    /// again), so the core is not driven into writes that cannot succeed.
    fn on_event(&mut self, event: Event<S::Output>) {
        let stalled = self.stall.as_ref().map(|stall| stall.reason.clone());
        match event {
            Event::Message(message) => {
                self.metrics.received(&message);
                if stalled.is_none() {
                    self.raft.step(message);
                }
            }
            Event::Propose { reply, .. } if stalled.is_some() => {
                let reason = stalled.unwrap_or_default();
                let _ = reply.send(Err(ReplicaError::StorageFull(reason)));
            }
            Event::Propose {
                payload,
                record_count,
                acks,
                reply,
            } => self.on_propose(payload, record_count, acks, reply),
            Event::Fetch {
                offset,
                bytes_max,
                park,
                reply,
            } => self.on_fetch(offset, bytes_max, park, reply),
            Event::TransferLeader { .. } | Event::Campaign if stalled.is_some() => {}
            Event::TransferLeader { to } => {
                let _ = self.raft.transfer_leader(to);
            }
            Event::Campaign => self.raft.campaign_now(),
            Event::Stop { drain } => {
                self.stopping_deadline = Some(tokio::time::Instant::now() + drain);
            }
        }
    }

    fn on_propose(
        &mut self,
        payload: Bytes,
        record_count: u32,
        acks: Acks,
        reply: ProposeReply<S::Output>,
    ) {
        if self.stopping_deadline.is_some() {
            let leader_hint = self.raft.leader_id().filter(|&id| id != self.raft.id());
            let _ = reply.send(Err(ReplicaError::NotLeader { leader_hint }));
            return;
        }
        let producer = self.producer_batch(&payload, record_count);
        let Some(reply) = self.check_producer(producer.as_ref(), acks, reply) else {
            return;
        };
        let timestamp_ms = now_ms();
        match self.raft.propose(payload, record_count, timestamp_ms) {
            Ok(proposed) => {
                if let Some(batch) = &producer {
                    let stored = StoredBatch {
                        index: proposed.index,
                        base_offset: proposed.base_offset,
                    };
                    self.producers.record(batch, stored);
                }
                self.pending.push_back(PendingProposal {
                    index: proposed.index,
                    term: proposed.term,
                    base_offset: proposed.base_offset,
                    timestamp_ms,
                    acks,
                    reply: Some(reply),
                    duplicate: false,
                })
            }
            Err(error) => {
                let _ = reply.send(Err(ReplicaError::from_propose(error)));
            }
        }
    }

    /// The producer fields of a batch, when this group tracks producers and the batch names one.
    fn producer_batch(&self, payload: &Bytes, record_count: u32) -> Option<ProducerBatch> {
        if !self.config.track_producers {
            return None;
        }
        let batch = <crate::proto::RecordBatch as prost::Message>::decode(payload.clone()).ok()?;
        (batch.producer_id != 0).then_some(ProducerBatch {
            producer_id: batch.producer_id,
            epoch: batch.producer_epoch,
            base_sequence: batch.base_sequence,
            record_count,
        })
    }

    /// Answers a batch the producer table refuses or already has; returns the reply when the
    /// batch is to be appended.
    fn check_producer(
        &mut self,
        producer: Option<&ProducerBatch>,
        acks: Acks,
        reply: ProposeReply<S::Output>,
    ) -> Option<ProposeReply<S::Output>> {
        let verdict = producer.map_or(Verdict::Append, |batch| self.producers.check(batch));
        let refusal = match verdict {
            Verdict::Append => return Some(reply),
            Verdict::OutOfOrder { expected } => ReplicaError::OutOfOrderSequence { expected },
            Verdict::Fenced { current } => ReplicaError::ProducerFenced { current },
            Verdict::UnknownProducer => ReplicaError::UnknownProducerId,
            Verdict::Duplicate(stored) => {
                let committed = stored.index <= self.raft.commit_index();
                if committed || acks == Acks::Leader {
                    ReplicaError::DuplicateSequence {
                        base_offset: stored.base_offset,
                    }
                } else {
                    // The original is still in flight: answer when it commits (or is lost).
                    let term = self.log.term_at(stored.index).unwrap_or(self.raft.term());
                    let at = self.pending.partition_point(|p| p.index <= stored.index);
                    self.pending.insert(
                        at,
                        PendingProposal {
                            index: stored.index,
                            term,
                            base_offset: stored.base_offset,
                            timestamp_ms: now_ms(),
                            acks,
                            reply: Some(reply),
                            duplicate: true,
                        },
                    );
                    return None;
                }
            }
        };
        let _ = reply.send(Err(refusal));
        None
    }

    /// Rebuilds the producer table from the tail of the log: at start and whenever entries
    /// were removed, since the table must describe exactly what the log holds.
    fn rebuild_producers(&mut self) -> Result<(), StorageError> {
        self.producers.clear();
        if !self.config.track_producers || self.log.last_index() < self.log.first_index() {
            return Ok(());
        }
        let last = self.log.last_index();
        let mut next = self
            .log
            .first_index()
            .max(last.saturating_sub(PRODUCER_REBUILD_ENTRIES_MAX));
        while next <= last {
            let entries = self.log.entries(next, last + 1, 4 << 20)?;
            self.record_producers(&entries);
            next = entries.last().map_or(last + 1, |e| e.index + 1);
        }
        Ok(())
    }

    fn record_producers(&mut self, entries: &[Entry]) {
        for entry in entries {
            if let Some(batch) = self.producer_batch(&entry.payload, entry.record_count) {
                let stored = StoredBatch {
                    index: entry.index,
                    base_offset: entry.base_offset,
                };
                self.producers.record(&batch, stored);
            }
        }
    }

    /// Carries out one [`Ready`] of the core. The order is the Raft contract:
    ///
    /// 1. **Hard state first, durably.** A vote or a term must be on disk before any message
    ///    that reveals it leaves this node, or a crash could let this node vote twice in one
    ///    term. `Log::set_hard_state` fsyncs before returning.
    /// 2. **Log changes**: snapshot install, then suffix truncation, then the append. The
    ///    append only copies into the memory-mapped segment; it is made durable later by the
    ///    background fsync ([`Replica::start_sync`]), so the leader's own disk write runs in
    ///    parallel with step 3 (dissertation §10.2.1). The core counts the leader's copy
    ///    toward commit only once that fsync reports back through `persisted`.
    /// 3. **Send** the messages. A follower's answers carry its durable index separately, so
    ///    sending before its own fsync is safe.
    /// 4. **Commit**: advance the high watermark, apply to the state machine, answer the
    ///    proposals that committed (or were superseded), and wake parked fetches.
    fn handle_ready(&mut self) -> Result<(), StorageError> {
        let ready: Ready = self.raft.ready(&StorageReader::new(&self.log));
        if ready.is_empty() {
            return Ok(());
        }
        self.write_log(&ready)?;
        self.maybe_restore_voting()?;
        if !ready.entries.is_empty() {
            // Writes work again: the next full disk starts over with a short backoff.
            self.stall_backoff = Duration::ZERO;
        }
        self.metrics.node().messages_sent(&ready.messages);
        for message in ready.messages {
            self.sink.send(message);
        }
        self.answer_leader_acks();
        if ready.commit_index.is_some() {
            self.on_commit()?;
        }
        Ok(())
    }

    /// Removes the voting-withheld marker once the core has caught up with a leader. Runs
    /// after the Ready's hard state is durable and before its messages (votes) leave.
    fn maybe_restore_voting(&mut self) -> Result<(), StorageError> {
        if self.voting_marker && !self.raft.voting_withheld() {
            let marker = self.log.dir().join(VOTING_WITHHELD_FILE);
            tokio::task::block_in_place(|| crate::storage::remove_file_durably(&marker))?;
            self.voting_marker = false;
            tracing::info!(
                group = self.config.raft.group_id,
                "caught up with a leader after lost entries: voting again"
            );
        }
        Ok(())
    }

    fn write_log(&mut self, ready: &Ready) -> Result<(), StorageError> {
        let commit_index = self.committed_index;
        tokio::task::block_in_place(|| {
            if let Some(hard_state) = &ready.hard_state {
                self.log
                    .set_hard_state(hard_state.current_term, hard_state.voted_for)?;
            }
            if let Some(position) = ready.snapshot {
                self.log
                    .install_snapshot(position.index, position.term, position.next_offset)?;
                self.high_watermark = self.high_watermark.max(position.next_offset);
            }
            if let Some(from_index) = ready.truncate_from {
                if from_index <= self.log.last_index() {
                    self.log.truncate_suffix(from_index, commit_index)?;
                }
            }
            if !ready.entries.is_empty() {
                self.log.append(&ready.entries)?;
            }
            Ok::<(), StorageError>(())
        })?;
        if ready.snapshot.is_some() || ready.truncate_from.is_some() {
            self.rebuild_producers()
        } else {
            self.record_producers(&ready.entries);
            Ok(())
        }
    }

    /// Answers `acks=leader` proposals whose entries are now in the leader's log.
    fn answer_leader_acks(&mut self) {
        let last_index = self.log.last_index();
        for pending in self.pending.iter_mut() {
            if pending.acks == Acks::Leader && pending.index <= last_index {
                if let Some(reply) = pending.reply.take() {
                    let _ = reply.send(Ok(Appended {
                        index: pending.index,
                        base_offset: pending.base_offset,
                        timestamp_ms: pending.timestamp_ms,
                        output: None,
                    }));
                }
            }
        }
    }

    fn on_commit(&mut self) -> Result<(), StorageError> {
        let commit_index = self.raft.commit_index().min(self.log.last_index());
        self.committed_index = self.committed_index.max(commit_index);
        if commit_index >= self.log.first_index() {
            let last = self.log.entries(commit_index, commit_index + 1, 0)?;
            if let Some(entry) = last.first() {
                self.high_watermark = entry.base_offset + u64::from(entry.record_count);
            }
        }
        let outputs = self.apply_committed(commit_index)?;
        self.complete_proposals(commit_index, outputs);
        self.serve_parked();
        Ok(())
    }

    /// Applies committed entries the state machine has not seen, returning each output by
    /// index so that the proposals waiting for them can be answered.
    fn apply_committed(
        &mut self,
        commit_index: u64,
    ) -> Result<VecDeque<(u64, S::Output)>, StorageError> {
        let mut outputs = VecDeque::new();
        let mut next = self
            .machine
            .applied_index()
            .saturating_add(1)
            .max(self.log.first_index());
        while next <= commit_index {
            let entries = self.log.entries(next, commit_index + 1, 1 << 20)?;
            for entry in &entries {
                outputs.push_back((entry.index, self.machine.apply(entry)));
            }
            next = entries.last().map_or(commit_index + 1, |e| e.index + 1);
        }
        Ok(outputs)
    }

    fn complete_proposals(&mut self, commit_index: u64, mut outputs: VecDeque<(u64, S::Output)>) {
        while let Some(pending) = self.pending.front() {
            if pending.index > commit_index {
                break;
            }
            let mut pending = self.pending.pop_front().expect("front exists");
            let Some(reply) = pending.reply.take() else {
                continue;
            };
            // The entry at this index committed; it is ours only if its term is the one our
            // proposal got. Otherwise a new leader overwrote it before it committed.
            let ours = self.log.term_at(pending.index) == Some(pending.term);
            let output = loop {
                match outputs.front() {
                    Some((index, _)) if *index < pending.index => drop(outputs.pop_front()),
                    Some((index, _)) if *index == pending.index => {
                        break outputs.pop_front().map(|(_, o)| o)
                    }
                    _ => break None,
                }
            };
            let result = if ours && pending.duplicate {
                Err(ReplicaError::DuplicateSequence {
                    base_offset: pending.base_offset,
                })
            } else if ours {
                Ok(Appended {
                    index: pending.index,
                    base_offset: pending.base_offset,
                    timestamp_ms: pending.timestamp_ms,
                    output,
                })
            } else {
                Err(ReplicaError::Superseded)
            };
            let _ = reply.send(result);
        }
    }

    fn on_fetch(&mut self, offset: u64, bytes_max: u64, park: bool, reply: FetchReply) {
        let log_start_offset = self.log.start_offset();
        if offset < log_start_offset || offset > self.high_watermark {
            let high_watermark = self.high_watermark;
            let _ = reply.send(Err(ReplicaError::OffsetOutOfRange {
                offset,
                log_start_offset,
                high_watermark,
            }));
            return;
        }
        if offset == self.high_watermark && !park {
            let _ = reply.send(Ok(Fetched {
                entries: Vec::new(),
                high_watermark: self.high_watermark,
                log_start_offset,
            }));
            return;
        }
        if offset == self.high_watermark {
            self.parked.push(ParkedFetch {
                offset,
                bytes_max,
                reply,
            });
            self.metrics.fetch_waiters(self.parked.len());
            return;
        }
        let _ = reply.send(self.read_committed(offset, bytes_max));
    }

    fn read_committed(&self, offset: u64, bytes_max: u64) -> Result<Fetched, ReplicaError> {
        let mut entries = self
            .log
            .read_from_offset(offset, bytes_max)
            .map_err(|e| ReplicaError::from_storage(&e))?;
        // Only committed records are ever shown: drop what lies beyond the high watermark.
        entries.retain(|entry| entry.base_offset < self.high_watermark);
        Ok(Fetched {
            entries,
            high_watermark: self.high_watermark,
            log_start_offset: self.log.start_offset(),
        })
    }

    fn serve_parked(&mut self) {
        let parked = std::mem::take(&mut self.parked);
        for fetch in parked {
            if fetch.reply.is_closed() {
                continue;
            }
            if fetch.offset < self.high_watermark {
                let _ = fetch
                    .reply
                    .send(self.read_committed(fetch.offset, fetch.bytes_max));
            } else {
                self.parked.push(fetch);
            }
        }
        self.metrics.fetch_waiters(self.parked.len());
    }

    /// Starts an fsync of everything appended so far, unless one is running: the next one
    /// then covers everything appended meanwhile (group commit).
    ///
    /// With `idle` (nothing waiting in the inbox) the fsync runs right here: a hand-off to a
    /// blocking thread and the wake-up back cost two context switches on the critical path,
    /// a large share of a lone record's latency, while nothing could run in parallel anyway.
    /// Under load the inbox is rarely empty and the fsync overlaps the next appends. Either
    /// way the result arrives through `sync_done`, so the loop handles both alike.
    fn start_sync(&mut self, idle: bool) {
        if self.sync_running || self.log.last_index() <= self.log.durable_index() {
            return;
        }
        let Some(job) = self.log.poll_sync(now_ms()) else {
            return;
        };
        self.sync_running = true;
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

    fn on_sync_done(&mut self, done: SyncDone) -> Result<(), StorageError> {
        self.sync_running = false;
        let durable_index = self.log.complete_sync(done)?;
        if let Some(term) = self.log.term_at(durable_index) {
            // The core drops the report if the entry at that index changed meanwhile.
            self.raft.persisted(durable_index, term);
        }
        Ok(())
    }

    fn apply_retention(&mut self) -> Result<(), StorageError> {
        let (bytes, ms) = (self.config.retention_bytes, self.config.retention_ms);
        if bytes == 0 && ms == 0 {
            return Ok(());
        }
        let before = self.log.first_index();
        let commit_index = self.raft.commit_index();
        let first = tokio::task::block_in_place(|| {
            self.log.apply_retention(now_ms(), bytes, ms, commit_index)
        })?;
        if first > before {
            let index = first - 1;
            let term = self.log.term_at(index).expect("the log start term is kept");
            self.raft.compact(index, term, self.log.start_offset());
        }
        Ok(())
    }

    fn publish_status(&mut self) {
        let follower_match = if self.raft.role() == Role::Leader {
            let me = self.raft.id();
            self.config
                .raft
                .voters
                .iter()
                .filter(|&&id| id != me)
                .filter_map(|&id| self.raft.progress(id).map(|p| (id, p.match_index)))
                .collect()
        } else {
            Vec::new()
        };
        let status = ReplicaStatus {
            role: Some(self.raft.role()),
            term: self.raft.term(),
            leader_id: self.raft.leader_id().unwrap_or(0),
            commit_index: self.raft.commit_index(),
            last_index: self.log.last_index(),
            high_watermark: self.high_watermark,
            log_start_offset: self.log.start_offset(),
            log_size_bytes: self.log.size_bytes(),
            segment_count: self.log.segment_count() as u64,
            follower_match,
            failed: None,
            storage_full: self.stall.as_ref().map(|stall| stall.reason.clone()),
        };
        self.metrics.status(&self.status.borrow(), &status);
        self.status.send_if_modified(|current| {
            let changed = *current != status;
            *current = status;
            changed
        });
    }

    /// Pauses writing after a full disk, without stopping: the task keeps serving committed
    /// reads and tries again after a backoff (doubling up to [`STALL_BACKOFF_MAX`]).
    ///
    /// A failed write is treated like a crash just before it. The Ready whose write failed
    /// sent none of its messages (they leave only after the write), so nothing beyond what
    /// the log holds was revealed: no vote, no term, no entry. The core, though, already
    /// believes it holds those entries and that hard state, so it is rebuilt from the log
    /// exactly as after a restart ([`Raft::restore`]), keeping the commit index this replica
    /// has already acted on. A leader thereby steps down (it restarts as a follower), and
    /// the others elect a leader that can write. Entries that reached the log are synced
    /// first, so the rebuilt core may count them as durable; proposals whose entries did not
    /// reach it were never sent anywhere and are answered `STORAGE_FULL`.
    ///
    /// # Errors
    /// A storage error while syncing or reading the log back: the replica then stops.
    fn stall(&mut self, error: StorageError) -> Result<(), StorageError> {
        self.stall_backoff = (self.stall_backoff * 2).clamp(STALL_BACKOFF_MIN, STALL_BACKOFF_MAX);
        tracing::warn!(
            group = self.config.raft.group_id,
            %error,
            retry_ms = self.stall_backoff.as_millis() as u64,
            "disk full: refusing writes until space is freed"
        );
        tokio::task::block_in_place(|| self.log.sync())?;
        let restored = RestoredState {
            commit_index: self.committed_index,
            voting_withheld: self.raft.voting_withheld_term(),
            ..restored_state(&self.log)
        };
        let reader = StorageReader::new(&self.log);
        self.raft = Raft::restore(self.config.raft.clone(), restored, &reader).map_err(|e| {
            StorageError::Corrupt {
                path: self.log.dir().to_path_buf(),
                position: 0,
                reason: format!("cannot rebuild the raft core from the log: {e}"),
            }
        })?;
        let last_index = self.log.last_index();
        let refusal = ReplicaError::from_storage(&error);
        let mut kept = VecDeque::with_capacity(self.pending.len());
        for mut pending in self.pending.drain(..) {
            if pending.index <= last_index {
                kept.push_back(pending);
            } else if let Some(reply) = pending.reply.take() {
                let _ = reply.send(Err(refusal.clone()));
            }
        }
        self.pending = kept;
        // The table recorded proposals at propose time; it must describe the log again.
        self.rebuild_producers()?;
        self.stall = Some(Stall {
            retry_at: tokio::time::Instant::now() + self.stall_backoff,
            reason: error.to_string(),
        });
        Ok(())
    }

    /// Stops serving after a storage error: after a failed write or fsync the log's state on
    /// disk is unknown, so the replica neither answers nor votes until it is reopened.
    fn fail(&mut self, error: StorageError) {
        tracing::error!(group = self.config.raft.group_id, %error, "replica stopped on a storage error");
        let reason = error.to_string();
        self.metrics.replica_failed();
        self.fail_waiters(ReplicaError::from_storage(&error));
        self.status
            .send_modify(|status| status.failed = Some(reason));
    }

    fn fail_waiters(&mut self, error: ReplicaError) {
        for mut pending in self.pending.drain(..) {
            if let Some(reply) = pending.reply.take() {
                let _ = reply.send(Err(error.clone()));
            }
        }
        for fetch in self.parked.drain(..) {
            let _ = fetch.reply.send(Err(error.clone()));
        }
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

/// Marker file in a group's directory: recovery dropped entries that may have been
/// acknowledged, and the replica has not caught up with a leader since. Storage writes it
/// (holding the term of the loss) before repairing the log; it outlives restarts (the
/// repaired log no longer shows the loss) and the driver removes it once voting is safe.
pub const VOTING_WITHHELD_FILE: &str = crate::storage::recovery::LOST_ENTRIES_FILE;

/// Whether the core must restart with voting withheld ([`RestoredState::voting_withheld`]):
/// recovery just dropped entries from the middle of the active segment (they may have been
/// durable and acknowledged to a leader, counting toward a commit), or an earlier such
/// recovery has not been followed by catching up. Storage has already written the marker in
/// the first case; it is rewritten here in case it names an older term.
fn withhold_voting(log: &Log, report: &RecoveryReport) -> Result<Option<u64>, StorageError> {
    let marker = log.dir().join(VOTING_WITHHELD_FILE);
    let current_term = log.hard_state().current_term;
    // An unreadable or damaged marker is taken as a loss in the current term: the safe side.
    let earlier = match std::fs::read_to_string(&marker) {
        Ok(text) => Some(text.trim().parse::<u64>().unwrap_or(current_term)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(_) => Some(current_term),
    };
    let lost = matches!(
        report.tail,
        TailState::CorruptMiddle { entries_dropped, .. } if entries_dropped > 0
    );
    if !lost {
        return Ok(earlier);
    }
    // Every entry this replica acknowledged carries a term no later than its current one.
    let lost_term = earlier.unwrap_or(0).max(current_term);
    tracing::warn!(
        dir = %log.dir().display(),
        tail = ?report.tail,
        lost_term,
        "recovery dropped entries that may have been acknowledged: not voting until caught up with a leader"
    );
    crate::storage::write_file_durably(&marker, lost_term.to_string().as_bytes())?;
    Ok(Some(lost_term))
}

/// The core's view of a reopened log: its durable hard state (whose `log_start_index` is the
/// first index still in the log, as the schema defines it) and its last index.
fn restored_state(log: &Log) -> RestoredState {
    RestoredState {
        hard_state: *log.hard_state(),
        last_index: log.last_index(),
        commit_index: 0,
        voting_withheld: None,
    }
}

/// Milliseconds since the Unix epoch: the log append time of entries.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
