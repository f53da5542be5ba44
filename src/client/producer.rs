//! The producer: records in, offsets out, with per-partition batching.
//!
//! [`Producer::send`] picks the record's partition (see [`super::partitioner`]) and queues the
//! record for that partition's worker task; it returns a [`DeliveryFuture`] that resolves to
//! the record's offset once the partition leader acknowledged its batch. Each worker fills one
//! [`RecordBatchBuilder`] at a time and sends it when it reaches `batch_bytes_max`, when
//! `linger_ms` has passed since its first record, or on [`Producer::flush`]. While a batch is
//! in flight the next one keeps filling, so a busy partition sends big batches without any
//! linger at all.
//!
//! Ordering: records of one partition are batched in `send` order, and with `max_in_flight`
//! = 1 (the default) batches reach the log in that order, retries included. With more batches
//! in flight and idempotence, order holds through failures too: the leader appends a batch
//! only if its sequence follows the last one it has, and refuses one that would leave a gap
//! with OUT_OF_ORDER_SEQUENCE (UNKNOWN_PRODUCER_ID when it has no batch of the producer yet and
//! this one does not start at sequence 0). A batch refused so (its predecessor was lost with a
//! connection and is being retried) waits until every earlier batch of its partition is
//! answered and is then sent again, so the batches land in sequence order. Without
//! idempotence, a retried batch can land after a later one, as in Kafka.
//!
//! Epochs: a batch that fails for good (past `delivery_timeout_ms`, or a non-retriable error)
//! leaves the leader's next sequence for the partition unknown — it may or may not have the
//! batch — so the later batches' sequences may lead nowhere. As in Kafka (KIP-360), the worker
//! then sends nothing new until every batch in flight is answered, bumps the partition's
//! producer epoch and restarts its sequence at 0; a leader accepts sequence 0 of a newer epoch
//! whatever it holds of the older one. A batch refused for its sequence with nothing before it
//! outstanding (the leader forgot the producer, see `replica::producers`, or an earlier batch
//! failed) was not written: it goes out again, in order, under the new epoch. Batches still in
//! flight when one fails are answered by the leader as before: written if their predecessor
//! turned out written, else refused and sent again under the new epoch.
//!
//! Retries: a batch is retried (with backoff, metadata refresh and leader hints) after
//! failures that prove it was not written — NOT_LEADER, connect errors, RESOURCE_EXHAUSTED.
//! After a failure with an unknown outcome (connection lost after sending, TIMEOUT) it is
//! retried only with `enable_idempotence`, where the batch carries a producer id, epoch and
//! sequence (from InitProducerId) that let the leader drop a copy it already has; without it,
//! the records fail with that error rather than risk being written twice.
//!
//! Limits: each partition's queue holds at most `queue_records_max` records (a full queue
//! makes `send` wait: back-pressure), and no batch is retried past `delivery_timeout`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use prost::Message;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::cluster::{unexpected, Cluster, Retry, Route};
use super::connection::ClientError;
use super::partitioner::Partitioner;
use crate::batch::{unix_now_ms, BatchError, RecordBatchBuilder};
use crate::proto::envelope::Body;
use crate::proto::{Acks, ErrorCode, InitProducerIdRequest, ProduceRequest, RecordBatch};

/// Time allowed beyond `request_timeout_ms` for a produce answer to travel back.
const ATTEMPT_MARGIN: Duration = Duration::from_secs(2);

/// Most batches in flight per partition with idempotence: a partition leader remembers the
/// last five batches of each producer (as Kafka does), and a retry further back than that
/// could no longer be recognised as a duplicate.
pub const IDEMPOTENT_IN_FLIGHT_MAX: usize = 5;

/// How a producer batches, acknowledges and retries. Names follow Kafka's where the idea is
/// the same.
#[derive(Debug, Clone)]
pub struct ProducerOptions {
    /// When the leader answers: `Acks::All` (committed on a majority) or `Acks::Leader`.
    pub acks: Acks,
    /// How long a batch waits for more records after its first one, in milliseconds.
    pub linger_ms: u64,
    /// Largest encoded batch, in bytes; must not exceed the server's `batch_bytes_max`.
    pub batch_bytes_max: usize,
    /// Batches per partition sent and not yet acknowledged. With idempotence, order holds
    /// under retries for any value up to [`IDEMPOTENT_IN_FLIGHT_MAX`]; without, only for 1.
    pub max_in_flight: usize,
    /// Longest time from a batch's first record to its acknowledgement, retries included.
    pub delivery_timeout_ms: u64,
    /// How long the leader may wait for a commit before answering TIMEOUT, in milliseconds.
    pub request_timeout_ms: u32,
    /// Records queued per partition before `send` waits (back-pressure).
    pub queue_records_max: usize,
    /// Ask for a producer id and number every batch, and retry after unknown outcomes too:
    /// the partition leader answers a retry of a batch it already has with
    /// DUPLICATE_SEQUENCE and the original offset, so retries never duplicate records. On by
    /// default, as in Kafka.
    pub enable_idempotence: bool,
}

impl Default for ProducerOptions {
    fn default() -> Self {
        ProducerOptions {
            acks: Acks::All,
            linger_ms: 5,
            batch_bytes_max: 1024 * 1024,
            max_in_flight: 1,
            delivery_timeout_ms: 120_000,
            request_timeout_ms: 10_000,
            queue_records_max: 10_000,
            enable_idempotence: true,
        }
    }
}

/// One record to send.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerRecord {
    /// Topic name.
    pub topic: String,
    /// The partition to use; `None` lets the partitioner choose.
    pub partition: Option<u32>,
    /// Optional key; records with equal keys go to the same partition.
    pub key: Option<Bytes>,
    /// The value.
    pub value: Bytes,
    /// Application headers, in order.
    pub headers: Vec<(String, Bytes)>,
    /// Producer timestamp, milliseconds since the Unix epoch; `None` means now.
    pub timestamp_ms: Option<i64>,
}

impl ProducerRecord {
    /// A record with `value` for `topic`, without key, headers or explicit partition.
    pub fn new(topic: impl Into<String>, value: impl Into<Bytes>) -> Self {
        ProducerRecord {
            topic: topic.into(),
            value: value.into(),
            ..Default::default()
        }
    }

    /// Sets the key.
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets an explicit partition.
    pub fn partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Appends a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// Where an acknowledged record was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMetadata {
    /// Partition number.
    pub partition: u32,
    /// The record's offset in the partition.
    pub offset: u64,
    /// Log append time of its batch, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
}

/// Resolves to a sent record's [`RecordMetadata`] once acknowledged, or to the error that
/// stopped it.
#[derive(Debug)]
pub struct DeliveryFuture {
    reply: oneshot::Receiver<Result<RecordMetadata, ClientError>>,
}

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.reply)
            .poll(cx)
            .map(|result| result.unwrap_or(Err(ClientError::Closed)))
    }
}

type Waiter = oneshot::Sender<Result<RecordMetadata, ClientError>>;

/// What a partition worker receives.
enum Item {
    Record(Pending),
    /// Send everything queued before this, wait for it, then answer.
    Flush(oneshot::Sender<()>),
}

/// A record waiting in a partition queue.
struct Pending {
    timestamp_ms: i64,
    key: Option<Bytes>,
    value: Bytes,
    headers: Vec<(String, Bytes)>,
    reply: Waiter,
}

/// An idempotent producer's identity, from InitProducerId.
#[derive(Debug, Clone, Copy)]
struct ProducerIdentity {
    producer_id: u64,
    producer_epoch: u32,
}

/// What every partition worker of one producer shares.
#[derive(Debug)]
struct Shared {
    cluster: Cluster,
    options: ProducerOptions,
    identity: Option<ProducerIdentity>,
}

/// Sends records to a cluster. Cheap to share behind an `Arc`; `send` takes `&self`.
#[derive(Debug)]
pub struct Producer {
    shared: Arc<Shared>,
    partitioner: Partitioner,
    queues: Mutex<HashMap<(String, u32), mpsc::Sender<Item>>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    closed: AtomicBool,
}

impl Producer {
    /// A producer on `cluster`. With `enable_idempotence` it first asks the metadata leader
    /// for a producer id.
    ///
    /// # Errors
    /// [`ClientError::Invalid`] for unusable options; InitProducerId's error.
    pub async fn new(cluster: Cluster, options: ProducerOptions) -> Result<Producer, ClientError> {
        if options.batch_bytes_max == 0 || options.queue_records_max == 0 {
            return Err(ClientError::Invalid(
                "batch_bytes_max and queue_records_max must be at least 1".into(),
            ));
        }
        if options.enable_idempotence && options.max_in_flight > IDEMPOTENT_IN_FLIGHT_MAX {
            return Err(ClientError::Invalid(format!(
                "max_in_flight {} exceeds {IDEMPOTENT_IN_FLIGHT_MAX}, the most an idempotent \
                 producer can have deduplicated",
                options.max_in_flight
            )));
        }
        let identity = if options.enable_idempotence {
            Some(init_producer_id(&cluster).await?)
        } else {
            None
        };
        Ok(Producer {
            shared: Arc::new(Shared {
                cluster,
                options,
                identity,
            }),
            partitioner: Partitioner::new(),
            queues: Mutex::new(HashMap::new()),
            workers: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
        })
    }

    /// The options this producer runs with.
    pub fn options(&self) -> &ProducerOptions {
        &self.shared.options
    }

    /// Queues `record` for its partition; waits only while that partition's queue is full.
    /// The returned future resolves once the record is acknowledged.
    ///
    /// # Errors
    /// [`ClientError::UnknownTopic`], [`ClientError::UnknownPartition`] for an explicit
    /// partition the topic lacks, [`ClientError::Invalid`] once the producer is closed.
    pub async fn send(&self, record: ProducerRecord) -> Result<DeliveryFuture, ClientError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(ClientError::Invalid("the producer is closed".into()));
        }
        let topic = self.shared.cluster.topic(&record.topic).await?;
        let partitions = topic.partitions.len() as u32;
        if partitions == 0 {
            return Err(ClientError::UnknownTopic(record.topic));
        }
        let partition = match record.partition {
            Some(partition) if partition >= partitions => {
                return Err(ClientError::UnknownPartition {
                    topic: record.topic,
                    partition,
                    partitions,
                })
            }
            Some(partition) => partition,
            None => self
                .partitioner
                .partition(record.key.as_deref(), partitions),
        };
        let queue = self.queue(&record.topic, partition);
        let (reply, delivery) = oneshot::channel();
        let pending = Pending {
            timestamp_ms: record.timestamp_ms.unwrap_or_else(unix_now_ms),
            key: record.key,
            value: record.value,
            headers: record.headers,
            reply,
        };
        queue
            .send(Item::Record(pending))
            .await
            .map_err(|_| ClientError::Invalid("the producer is closed".into()))?;
        Ok(DeliveryFuture { reply: delivery })
    }

    /// Sends everything queued so far without waiting for `linger_ms`, and waits until each
    /// of those records is acknowledged or failed.
    pub async fn flush(&self) {
        let queues: Vec<mpsc::Sender<Item>> = self
            .queues
            .lock()
            .expect("queues lock")
            .values()
            .cloned()
            .collect();
        let mut waits = Vec::with_capacity(queues.len());
        for queue in queues {
            let (done, wait) = oneshot::channel();
            if queue.send(Item::Flush(done)).await.is_ok() {
                waits.push(wait);
            }
        }
        for wait in waits {
            let _ = wait.await;
        }
    }

    /// Flushes, then stops the partition workers. Later sends fail.
    pub async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.flush().await;
        self.queues.lock().expect("queues lock").clear();
        let workers: Vec<JoinHandle<()>> = self
            .workers
            .lock()
            .expect("workers lock")
            .drain(..)
            .collect();
        for worker in workers {
            let _ = worker.await;
        }
    }

    /// The queue of `topic`/`partition`, starting its worker on first use.
    fn queue(&self, topic: &str, partition: u32) -> mpsc::Sender<Item> {
        let mut queues = self.queues.lock().expect("queues lock");
        let key = (topic.to_owned(), partition);
        if let Some(queue) = queues.get(&key) {
            return queue.clone();
        }
        let (queue, items) = mpsc::channel(self.shared.options.queue_records_max);
        let worker = PartitionWorker::new(self.shared.clone(), topic.to_owned(), partition);
        let handle = tokio::spawn(worker.run(items));
        self.workers.lock().expect("workers lock").push(handle);
        queues.insert(key, queue.clone());
        queue
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        // Dropping the queues lets each worker send what it holds and stop; nothing waits.
        if let Ok(mut queues) = self.queues.lock() {
            queues.clear();
        }
    }
}

/// Asks the metadata leader for a new producer id and epoch.
async fn init_producer_id(cluster: &Cluster) -> Result<ProducerIdentity, ClientError> {
    let body = Body::InitProducerId(InitProducerIdRequest {});
    match cluster
        .request(Route::MetadataLeader, body, Retry::Determinate)
        .await?
    {
        Body::InitProducerIdResponse(response) => Ok(ProducerIdentity {
            producer_id: response.producer_id,
            producer_epoch: response.producer_epoch,
        }),
        other => Err(unexpected("InitProducerIdResponse", &other)),
    }
}

/// The batch being filled.
struct OpenBatch {
    builder: RecordBatchBuilder,
    waiters: Vec<Waiter>,
    /// When linger ends.
    ready_at: Instant,
    /// When retries must stop.
    deadline: Instant,
    /// A record did not fit: send this batch now.
    full: bool,
}

/// A batch closed for sending. Its producer fields are stamped each time it is sent, so that
/// a batch refused without being written can go out again under a new epoch.
struct ClosedBatch {
    /// Send number, from its first send on: sequence order without the wrap-around.
    number: u64,
    batch: RecordBatch,
    waiters: Vec<Waiter>,
    /// When retries must stop.
    deadline: Instant,
}

/// How a sent batch ended.
enum Outcome {
    /// Acknowledged: its records got their offsets.
    Acknowledged,
    /// Failed for good: its records got the error, and the leader may or may not have it.
    Failed,
    /// Refused without being written because the leader's sequence for this producer does not
    /// lead to it (UNKNOWN_PRODUCER_ID or OUT_OF_ORDER_SEQUENCE with every earlier batch
    /// answered): to be sent again, in order, under the next epoch.
    Refused(ClosedBatch),
}

/// The batches of one partition that are sent and not yet answered, by send number, so that
/// a batch refused as out of order can wait for the ones before it.
type Unanswered = Arc<watch::Sender<BTreeSet<u64>>>;

/// Fills and sends the batches of one partition, in order.
struct PartitionWorker {
    shared: Arc<Shared>,
    topic: String,
    partition: u32,
    open: Option<OpenBatch>,
    /// A record that did not fit in the previous batch; it starts the next one.
    carry: Option<Pending>,
    /// Producer id and epoch of this partition's batches (idempotence only). The epoch is
    /// this partition's own: the leader keeps sequences per partition, so a bump here need
    /// not disturb the producer's other partitions.
    identity: Option<ProducerIdentity>,
    /// Sequence number of the next batch's first record (idempotence only).
    next_sequence: u32,
    /// Send number of the next new batch.
    next_number: u64,
    /// Batches sent and not yet answered.
    unanswered: Unanswered,
    /// A batch failed for good or was refused: the leader's next sequence for this producer
    /// is unknown or is not ours. Nothing more is sent until every batch in flight is
    /// answered; then the epoch is bumped and the sequence starts again at 0 (Kafka's
    /// KIP-360), which the leader accepts whatever it holds of the older epoch.
    bump_epoch: bool,
    /// Refused batches waiting for the epoch bump, by send number, to go out before any new
    /// batch.
    refused: BTreeMap<u64, ClosedBatch>,
}

impl PartitionWorker {
    fn new(shared: Arc<Shared>, topic: String, partition: u32) -> Self {
        let identity = shared.identity;
        PartitionWorker {
            shared,
            topic,
            partition,
            open: None,
            carry: None,
            identity,
            next_sequence: 0,
            next_number: 0,
            unanswered: Arc::new(watch::Sender::new(BTreeSet::new())),
            bump_epoch: false,
            refused: BTreeMap::new(),
        }
    }

    /// Whether the batch numbered `number` may be sent now: it must be within `max_in_flight`
    /// batches of the oldest unanswered one (not merely of the count in flight), so that while
    /// that one is retried the leader still remembers it among the producer's last batches
    /// however many later ones it appended meanwhile.
    fn may_send(&self, number: u64) -> bool {
        let window = self.shared.options.max_in_flight.max(1) as u64;
        let oldest = self.unanswered.borrow().first().copied().unwrap_or(number);
        number < oldest + window
    }

    /// Runs until the producer drops its queue and everything queued has been answered.
    async fn run(mut self, mut items: mpsc::Receiver<Item>) {
        let mut in_flight = FuturesUnordered::new();
        let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
        let mut items_open = true;
        loop {
            if self.open.is_none() {
                if let Some(pending) = self.carry.take() {
                    self.add(pending);
                }
            }
            let now = Instant::now();
            let urgent = !flushes.is_empty() || !items_open;
            let ready = self
                .open
                .as_ref()
                .is_some_and(|b| b.full || urgent || b.ready_at <= now);
            // Only with something to send: a failed bump (see `start_new_epoch`) must not
            // be retried in a loop while idle.
            if self.bump_epoch && in_flight.is_empty() && (ready || !self.refused.is_empty()) {
                self.start_new_epoch().await;
                continue;
            }
            if !self.bump_epoch {
                if let Some(&number) = self.refused.keys().next() {
                    if self.may_send(number) {
                        let batch = self.refused.remove(&number).expect("a refused batch");
                        in_flight.push(self.send(batch));
                        continue;
                    }
                } else if ready && self.may_send(self.next_number) {
                    let open = self.open.take().expect("a ready batch is open");
                    let closed = ClosedBatch {
                        number: self.next_number,
                        batch: open.builder.into_batch(),
                        waiters: open.waiters,
                        deadline: open.deadline,
                    };
                    self.next_number += 1;
                    in_flight.push(self.send(closed));
                    continue;
                }
            }
            let idle = self.open.is_none() && self.carry.is_none() && self.refused.is_empty();
            if idle && in_flight.is_empty() {
                for flush in flushes.drain(..) {
                    let _ = flush.send(());
                }
                if !items_open {
                    return;
                }
            }
            let can_receive = items_open
                && flushes.is_empty()
                && self.carry.is_none()
                && !self.open.as_ref().is_some_and(|b| b.full);
            let linger_until = self.open.as_ref().filter(|_| !ready).map(|b| b.ready_at);
            tokio::select! {
                biased;
                Some(outcome) = in_flight.next(), if !in_flight.is_empty() => match outcome {
                    Outcome::Acknowledged => {}
                    Outcome::Failed => self.bump_epoch |= self.identity.is_some(),
                    Outcome::Refused(batch) => {
                        self.bump_epoch = true;
                        self.refused.insert(batch.number, batch);
                    }
                },
                item = items.recv(), if can_receive => match item {
                    None => items_open = false,
                    Some(Item::Flush(done)) => flushes.push(done),
                    Some(Item::Record(pending)) => self.add(pending),
                },
                () = tokio::time::sleep_until(linger_until.unwrap_or(now)), if linger_until.is_some() => {}
                else => tokio::task::yield_now().await,
            }
        }
    }

    /// Moves this partition to the next epoch, its sequence back at 0. Called with nothing in
    /// flight, so no batch of the old epoch can still be refused or fenced because of it.
    async fn start_new_epoch(&mut self) {
        self.bump_epoch = false;
        let Some(identity) = self.identity else {
            return;
        };
        let next = match identity.producer_epoch.checked_add(1) {
            Some(producer_epoch) => Ok(ProducerIdentity {
                producer_epoch,
                ..identity
            }),
            // This partition has used every epoch of the id: a new id starts over, as Kafka
            // does.
            None => init_producer_id(&self.shared.cluster).await,
        };
        match next {
            Ok(identity) => {
                tracing::debug!(
                    topic = %self.topic,
                    partition = self.partition,
                    producer_id = identity.producer_id,
                    producer_epoch = identity.producer_epoch,
                    "producer epoch bumped: the partition's sequence restarts at 0"
                );
                self.identity = Some(identity);
                self.next_sequence = 0;
            }
            Err(error) => {
                // Without an epoch to send under, what waits to be sent fails; the next batch
                // tries again.
                self.bump_epoch = true;
                for (_, batch) in std::mem::take(&mut self.refused) {
                    answer(batch.waiters, self.partition, Err(duplicate(&error)));
                }
                if let Some(open) = self.open.take() {
                    answer(open.waiters, self.partition, Err(error));
                }
            }
        }
    }

    /// Adds a record to the open batch (opening one if needed). A record that does not fit
    /// closes the batch and waits in `carry`; one that fits in no batch fails at once.
    fn add(&mut self, pending: Pending) {
        let options = &self.shared.options;
        let batch = self.open.get_or_insert_with(|| {
            let mut builder = RecordBatchBuilder::new(options.batch_bytes_max);
            if let Some(identity) = self.identity {
                // The real epoch and sequence are stamped when the batch is sent; the builder
                // only needs to know the batch is idempotent to leave room for them.
                builder = builder.with_producer(identity.producer_id, identity.producer_epoch, 0);
            }
            let now = Instant::now();
            OpenBatch {
                builder,
                waiters: Vec::new(),
                ready_at: now + Duration::from_millis(options.linger_ms),
                deadline: now + Duration::from_millis(options.delivery_timeout_ms),
                full: false,
            }
        });
        let headers: Vec<(&str, &[u8])> = pending
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_ref()))
            .collect();
        let pushed = batch.builder.push(
            pending.timestamp_ms,
            pending.key.as_deref(),
            &pending.value,
            &headers,
        );
        match pushed {
            Ok(()) => batch.waiters.push(pending.reply),
            Err(BatchError::TooLarge { .. }) if !batch.builder.is_empty() => {
                batch.full = true;
                self.carry = Some(pending);
            }
            Err(error) => {
                let _ = pending.reply.send(Err(ClientError::Invalid(format!(
                    "record not sent: {error}"
                ))));
                if batch.builder.is_empty() {
                    self.open = None;
                }
            }
        }
    }

    /// The future that sends `closed` under the current epoch and next sequence (with
    /// retries) and answers its records, unless it comes back refused.
    fn send(&mut self, mut closed: ClosedBatch) -> impl Future<Output = Outcome> + 'static {
        if let Some(identity) = self.identity {
            closed.batch.producer_id = identity.producer_id;
            closed.batch.producer_epoch = identity.producer_epoch;
            closed.batch.base_sequence = self.next_sequence;
            self.next_sequence = self.next_sequence.wrapping_add(closed.batch.record_count);
        }
        let number = closed.number;
        self.unanswered.send_modify(|set| {
            set.insert(number);
        });
        let shared = self.shared.clone();
        let topic = self.topic.clone();
        let partition = self.partition;
        let bytes = Bytes::from(closed.batch.encode_to_vec());
        // Decoding slices the encoded bytes, so the records are held once, not twice, while
        // the batch is in flight.
        closed.batch = RecordBatch::decode(bytes.clone()).expect("a batch encoded here decodes");
        let unanswered = self.unanswered.clone();
        async move {
            let place = InLine {
                number,
                unanswered: &unanswered,
            };
            let result = produce(&shared, &topic, partition, bytes, closed.deadline, place).await;
            unanswered.send_modify(|set| {
                set.remove(&number);
            });
            match result {
                Ok(written) => {
                    answer(closed.waiters, partition, Ok(written));
                    Outcome::Acknowledged
                }
                Err(error)
                    if sequence_refused(&error)
                        && shared.identity.is_some()
                        && Instant::now() < closed.deadline =>
                {
                    tracing::debug!(
                        %topic,
                        partition,
                        %error,
                        "batch refused; it goes out again under a new epoch"
                    );
                    Outcome::Refused(closed)
                }
                Err(error) => {
                    answer(closed.waiters, partition, Err(error));
                    Outcome::Failed
                }
            }
        }
    }
}

/// Whether the leader refused a batch for its sequence alone: it wrote nothing, and the batch
/// may go out again under another epoch.
fn sequence_refused(error: &ClientError) -> bool {
    matches!(
        error.server_error().map(|e| e.code()),
        Some(ErrorCode::OutOfOrderSequence | ErrorCode::UnknownProducerId)
    )
}

/// A batch's place among its partition's unanswered batches.
struct InLine<'a> {
    number: u64,
    unanswered: &'a Unanswered,
}

impl InLine<'_> {
    /// Whether a batch sent before this one is still unanswered.
    fn behind_others(&self) -> bool {
        self.unanswered
            .borrow()
            .first()
            .is_some_and(|&first| first < self.number)
    }

    /// Waits until every batch sent before this one is answered, or until `deadline`.
    async fn wait_for_earlier(&self, deadline: Instant) {
        let mut changes = self.unanswered.subscribe();
        let number = self.number;
        let done = changes.wait_for(|set| set.first().is_none_or(|&first| first >= number));
        let _ = tokio::time::timeout_at(deadline, done).await;
    }
}

/// Sends one encoded batch to the partition leader; returns its base offset and append time.
///
/// With idempotence, an OUT_OF_ORDER_SEQUENCE or UNKNOWN_PRODUCER_ID answer while earlier
/// batches of the partition are unanswered means one of them has not reached the log yet:
/// this batch waits for them and is sent again. When none was outstanding (an earlier one was
/// answered just before this one arrived) it is sent again once; a second refusal is returned,
/// and the worker sends the batch again under a new epoch.
async fn produce(
    shared: &Shared,
    topic: &str,
    partition: u32,
    batch: Bytes,
    deadline: Instant,
    place: InLine<'_>,
) -> Result<(u64, i64), ClientError> {
    let mut resent_in_line = false;
    loop {
        let answer = produce_once(shared, topic, partition, batch.clone(), deadline).await;
        match answer {
            Err(error)
                if sequence_refused(&error)
                    && shared.identity.is_some()
                    && Instant::now() < deadline =>
            {
                if place.behind_others() {
                    place.wait_for_earlier(deadline).await;
                } else if resent_in_line {
                    return Err(error);
                } else {
                    resent_in_line = true;
                }
            }
            other => return other,
        }
    }
}

/// One routed produce request (with the cluster's retries); DUPLICATE_SEQUENCE counts as
/// success at the original offset.
async fn produce_once(
    shared: &Shared,
    topic: &str,
    partition: u32,
    batch: Bytes,
    deadline: Instant,
) -> Result<(u64, i64), ClientError> {
    let body = Body::Produce(ProduceRequest {
        topic: topic.to_owned(),
        partition,
        acks: shared.options.acks as i32,
        batch,
        timeout_ms: shared.options.request_timeout_ms,
    });
    let retry = if shared.identity.is_some() {
        Retry::All
    } else {
        Retry::Determinate
    };
    let route = Route::Partition { topic, partition };
    // The leader may hold the request up to request_timeout_ms waiting for the commit; give
    // it that plus a margin before counting the attempt as lost.
    let attempt_timeout =
        Duration::from_millis(u64::from(shared.options.request_timeout_ms)) + ATTEMPT_MARGIN;
    let answer = shared
        .cluster
        .request_bounded(route, body, retry, deadline, attempt_timeout)
        .await;
    match answer {
        Ok(Body::ProduceResponse(response)) => Ok((response.base_offset, response.timestamp_ms)),
        Ok(other) => Err(unexpected("ProduceResponse", &other)),
        // A retry of a batch the leader already has: it was written once, at this offset.
        Err(ClientError::Server(error)) if error.code() == ErrorCode::DuplicateSequence => {
            Ok((error.duplicate_offset, 0))
        }
        Err(error) => Err(error),
    }
}

/// Gives each record of a batch its offset, or the batch's error.
fn answer(waiters: Vec<Waiter>, partition: u32, result: Result<(u64, i64), ClientError>) {
    match result {
        Ok((base_offset, timestamp_ms)) => {
            for (index, waiter) in waiters.into_iter().enumerate() {
                let _ = waiter.send(Ok(RecordMetadata {
                    partition,
                    offset: base_offset + index as u64,
                    timestamp_ms,
                }));
            }
        }
        Err(error) => {
            for waiter in waiters {
                let _ = waiter.send(Err(duplicate(&error)));
            }
        }
    }
}

/// A copy of `error` for each record of a failed batch (`ClientError` holds an `io::Error`
/// deep inside, so it cannot be `Clone`).
fn duplicate(error: &ClientError) -> ClientError {
    match error {
        ClientError::Connect { address, reason } => ClientError::Connect {
            address: address.clone(),
            reason: reason.clone(),
        },
        ClientError::Server(message) => ClientError::Server(message.clone()),
        ClientError::Closed => ClientError::Closed,
        ClientError::UnknownTopic(topic) => ClientError::UnknownTopic(topic.clone()),
        ClientError::UnknownPartition {
            topic,
            partition,
            partitions,
        } => ClientError::UnknownPartition {
            topic: topic.clone(),
            partition: *partition,
            partitions: *partitions,
        },
        ClientError::Timeout {
            what,
            elapsed_ms,
            last,
        } => ClientError::Timeout {
            what: what.clone(),
            elapsed_ms: *elapsed_ms,
            last: last.clone(),
        },
        ClientError::Corrupt {
            partition,
            offset,
            source,
        } => ClientError::Corrupt {
            partition: *partition,
            offset: *offset,
            source: source.clone(),
        },
        ClientError::Wire(_) | ClientError::Invalid(_) => ClientError::Invalid(error.to_string()),
    }
}
