//! The consumer: reads committed records of assigned partitions of one topic, from chosen
//! offsets, with long-poll fetches.
//!
//! [`Consumer::poll`] starts one fetch task per assigned partition the first time it runs
//! after an assignment or a seek. Each task long-polls the partition leader from its position,
//! checks every fetched batch (CRC, record count, record framing) with [`batch::validate`] and
//! [`decode_records`], drops the records before its position (a fetch returns the whole batch
//! containing the requested offset), and hands the rest to `poll` through one bounded queue, so
//! a consumer that stops polling stops fetching. Damaged data is an error
//! ([`ClientError::Corrupt`]), never skipped silently.
//!
//! The consumer's position in a partition is the offset after the last record `poll`
//! returned; that is what [`Consumer::commit`] stores for a group. Partitions are assigned
//! explicitly here; [`Consumer::subscribe`] joins a consumer group instead, whose members
//! share the partitions ([`GroupConsumer`], in `client::group`).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::admin::Admin;
use super::cluster::{unexpected, Cluster, Retry, Route};
use super::connection::ClientError;
use super::group::{GroupConsumer, GroupOptions};
use crate::batch::{self, decode_records, BatchError};
use crate::proto::envelope::Body;
use crate::proto::{ErrorCode, FetchRequest, FetchResponse, RecordHeader};
use crate::wire::FRAME_BYTES_MAX_DEFAULT;

/// Fetches past a replica's high watermark retried before OFFSET_OUT_OF_RANGE is believed
/// (see `FetchLoop::fetch_once`).
const OUT_OF_RANGE_ATTEMPTS_MAX: u32 = 6;

/// Where to start reading a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    /// The first offset still in the log (the log start).
    Earliest,
    /// The high watermark: only records committed from now on.
    Latest,
    /// This exact offset.
    At(u64),
}

/// How a consumer fetches.
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    /// How long the leader may hold a fetch at the end of the log waiting for new commits.
    pub fetch_wait_ms_max: u32,
    /// Byte budget of one fetch answer (at least one batch is returned even if larger).
    pub fetch_bytes_max: u32,
    /// Fetched answers buffered between the fetch tasks and `poll`, over all partitions.
    pub fetch_queue_max: usize,
    /// Most records one `poll` returns.
    pub poll_records_max: usize,
    /// Largest batch accepted from the server, in bytes.
    pub batch_bytes_max: usize,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        ConsumerOptions {
            fetch_wait_ms_max: 500,
            fetch_bytes_max: 1024 * 1024,
            fetch_queue_max: 16,
            poll_records_max: 10_000,
            batch_bytes_max: FRAME_BYTES_MAX_DEFAULT,
        }
    }
}

/// One record as a consumer receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    /// Partition number.
    pub partition: u32,
    /// The record's offset in its partition.
    pub offset: u64,
    /// Producer timestamp, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// The key, if the producer set one.
    pub key: Option<Bytes>,
    /// The value.
    pub value: Bytes,
    /// Application headers, in order.
    pub headers: Vec<RecordHeader>,
}

/// The committed range of a partition: records live in `[log_start_offset, high_watermark)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionBounds {
    /// The first offset still in the log.
    pub log_start_offset: u64,
    /// The offset after the last committed record.
    pub high_watermark: u64,
}

/// What a fetch task hands to `poll`.
struct FetchEvent {
    partition: u32,
    result: Result<Vec<ConsumerRecord>, ClientError>,
}

/// The running fetch tasks; dropping this stops them.
struct Fetchers {
    events: mpsc::Receiver<FetchEvent>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Fetchers {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A partition's reading position: resolved to an offset, or still a spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    Spec(OffsetSpec),
    Offset(u64),
}

/// Reads assigned partitions of one topic.
pub struct Consumer {
    cluster: Cluster,
    topic: String,
    options: ConsumerOptions,
    /// Assigned partitions and their positions.
    positions: BTreeMap<u32, Position>,
    fetchers: Option<Fetchers>,
    /// An error that followed records in the same poll; returned by the next one.
    deferred_error: Option<ClientError>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("topic", &self.topic)
            .field("positions", &self.positions)
            .finish()
    }
}

impl Consumer {
    /// A consumer of `topic` with every partition assigned, each starting at
    /// [`OffsetSpec::Earliest`].
    ///
    /// # Errors
    /// [`ClientError::UnknownTopic`] when the topic does not exist.
    pub async fn new(
        cluster: Cluster,
        topic: &str,
        options: ConsumerOptions,
    ) -> Result<Consumer, ClientError> {
        let mut consumer = Consumer {
            cluster,
            topic: topic.to_owned(),
            options,
            positions: BTreeMap::new(),
            fetchers: None,
            deferred_error: None,
        };
        consumer.assign_all().await?;
        Ok(consumer)
    }

    /// Joins consumer group `group` to share the partitions of `topics` with its other
    /// members: the group, not the caller, decides what this consumer reads (see
    /// [`GroupConsumer`]).
    ///
    /// # Errors
    /// As [`GroupConsumer::subscribe`].
    pub async fn subscribe(
        cluster: Cluster,
        group: &str,
        topics: &[&str],
        options: GroupOptions,
    ) -> Result<GroupConsumer, ClientError> {
        GroupConsumer::subscribe(cluster, group, topics, options).await
    }

    /// The topic this consumer reads.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The assigned partitions, in order.
    pub fn assignment(&self) -> Vec<u32> {
        self.positions.keys().copied().collect()
    }

    /// Assigns every partition of the topic, each from [`OffsetSpec::Earliest`].
    ///
    /// # Errors
    /// [`ClientError::UnknownTopic`] when the topic does not exist.
    pub async fn assign_all(&mut self) -> Result<(), ClientError> {
        let topic = self.cluster.topic(&self.topic).await?;
        let partitions: Vec<u32> = topic.partitions.iter().map(|p| p.partition).collect();
        self.assign(&partitions).await
    }

    /// Assigns exactly `partitions`, each from [`OffsetSpec::Earliest`].
    ///
    /// # Errors
    /// [`ClientError::UnknownPartition`] for a partition the topic lacks.
    pub async fn assign(&mut self, partitions: &[u32]) -> Result<(), ClientError> {
        let topic = self.cluster.topic(&self.topic).await?;
        let count = topic.partitions.len() as u32;
        if let Some(&partition) = partitions.iter().find(|&&p| p >= count) {
            return Err(ClientError::UnknownPartition {
                topic: self.topic.clone(),
                partition,
                partitions: count,
            });
        }
        self.fetchers = None;
        self.positions = partitions
            .iter()
            .map(|&p| (p, Position::Spec(OffsetSpec::Earliest)))
            .collect();
        Ok(())
    }

    /// Moves an assigned partition's position; takes effect at the next `poll`.
    ///
    /// # Errors
    /// [`ClientError::Invalid`] when the partition is not assigned.
    pub fn seek(&mut self, partition: u32, spec: OffsetSpec) -> Result<(), ClientError> {
        let Some(position) = self.positions.get_mut(&partition) else {
            return Err(ClientError::Invalid(format!(
                "partition {partition} is not assigned to this consumer"
            )));
        };
        *position = match spec {
            OffsetSpec::At(offset) => Position::Offset(offset),
            spec => Position::Spec(spec),
        };
        self.fetchers = None;
        Ok(())
    }

    /// Moves every assigned partition to its first record with a timestamp at or after
    /// `timestamp_ms` (the end of the log where none is); see [`offset_for_time`].
    ///
    /// # Errors
    /// As [`offset_for_time`].
    pub async fn seek_to_time(&mut self, timestamp_ms: i64) -> Result<(), ClientError> {
        for partition in self.assignment() {
            let offset = offset_for_time(
                &self.cluster,
                &self.topic,
                partition,
                timestamp_ms,
                &self.options,
            )
            .await?;
            self.seek(partition, OffsetSpec::At(offset))?;
        }
        Ok(())
    }

    /// Moves every assigned partition's position.
    pub fn seek_all(&mut self, spec: OffsetSpec) {
        let partitions = self.assignment();
        for partition in partitions {
            let _ = self.seek(partition, spec);
        }
    }

    /// Moves each assigned partition to `group`'s committed offset, where it has one.
    /// Returns how many partitions had one.
    ///
    /// # Errors
    /// The OffsetFetch error.
    pub async fn seek_to_committed(&mut self, group: &str) -> Result<usize, ClientError> {
        let admin = Admin::new(self.cluster.clone());
        let partitions = self.assignment();
        let offsets = admin.fetch_offsets(group, &self.topic, &partitions).await?;
        let mut found = 0;
        for offset in offsets.iter().filter(|o| o.committed) {
            if self
                .seek(offset.partition, OffsetSpec::At(offset.offset))
                .is_ok()
            {
                found += 1;
            }
        }
        Ok(found)
    }

    /// The offset of the next record `poll` will return for `partition`, once known (after
    /// a poll, or a seek to an exact offset).
    pub fn position(&self, partition: u32) -> Option<u64> {
        match self.positions.get(&partition)? {
            Position::Offset(offset) => Some(*offset),
            Position::Spec(_) => None,
        }
    }

    /// Asks `partition`'s leader for its log start and high watermark.
    ///
    /// # Errors
    /// A routing error, or UNKNOWN_PARTITION.
    pub async fn bounds(&self, partition: u32) -> Result<PartitionBounds, ClientError> {
        partition_bounds(&self.cluster, &self.topic, partition).await
    }

    /// Stores the positions of every partition that has one as `group`'s committed offsets.
    ///
    /// # Errors
    /// The OffsetCommit error.
    pub async fn commit(&self, group: &str) -> Result<(), ClientError> {
        let offsets: Vec<(u32, u64)> = self
            .positions
            .keys()
            .filter_map(|&p| Some((p, self.position(p)?)))
            .collect();
        if offsets.is_empty() {
            return Ok(());
        }
        Admin::new(self.cluster.clone())
            .commit_offsets(group, &self.topic, &offsets)
            .await
    }

    /// Waits up to `timeout` for records and returns those available, in offset order per
    /// partition (possibly none). Positions advance past the returned records.
    ///
    /// # Errors
    /// [`ClientError::Corrupt`] for a damaged batch, OFFSET_OUT_OF_RANGE when a position lies
    /// outside the log, or a routing error that outlasted the retries. After an error the
    /// next `poll` starts fetching again from the positions.
    pub async fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>, ClientError> {
        if let Some(error) = self.deferred_error.take() {
            return Err(error);
        }
        if self.fetchers.is_none() {
            self.start_fetchers().await?;
        }
        let deadline = Instant::now() + timeout;
        let mut records = Vec::new();
        let Some(fetchers) = self.fetchers.as_mut() else {
            return Ok(records);
        };
        let first = match tokio::time::timeout_at(deadline, fetchers.events.recv()).await {
            Ok(Some(event)) => event,
            Ok(None) | Err(_) => return Ok(records),
        };
        let mut next = Some(first);
        while let Some(event) = next.take() {
            match event.result {
                Ok(batch) => {
                    if let Some(last) = batch.last() {
                        let position = Position::Offset(last.offset + 1);
                        self.positions.insert(event.partition, position);
                    }
                    records.extend(batch);
                }
                Err(error) => {
                    self.fetchers = None;
                    if records.is_empty() {
                        return Err(error);
                    }
                    self.deferred_error = Some(error);
                    return Ok(records);
                }
            }
            if records.len() < self.options.poll_records_max {
                let fetchers = self.fetchers.as_mut().expect("fetchers are running");
                next = fetchers.events.try_recv().ok();
            }
        }
        Ok(records)
    }

    /// Resolves every position to an offset and starts one fetch task per partition.
    async fn start_fetchers(&mut self) -> Result<(), ClientError> {
        let mut starts = Vec::with_capacity(self.positions.len());
        for (&partition, &position) in &self.positions {
            let offset = match position {
                Position::Offset(offset) => offset,
                Position::Spec(OffsetSpec::At(offset)) => offset,
                Position::Spec(spec) => {
                    let bounds = self.bounds(partition).await?;
                    match spec {
                        OffsetSpec::Latest => bounds.high_watermark,
                        _ => bounds.log_start_offset,
                    }
                }
            };
            starts.push((partition, offset));
        }
        let (sender, events) = mpsc::channel(self.options.fetch_queue_max.max(1));
        let mut tasks = Vec::with_capacity(starts.len());
        for &(partition, offset) in &starts {
            self.positions.insert(partition, Position::Offset(offset));
            let fetch = FetchLoop {
                cluster: self.cluster.clone(),
                topic: self.topic.clone(),
                partition,
                next: offset,
                options: self.options.clone(),
                events: sender.clone(),
            };
            tasks.push(tokio::spawn(fetch.run()));
        }
        self.fetchers = Some(Fetchers { events, tasks });
        Ok(())
    }
}

/// Asks `partition`'s leader for its bounds: a fetch at an offset past any log, which the
/// leader answers with OFFSET_OUT_OF_RANGE carrying both.
///
/// # Errors
/// A routing error, or UNKNOWN_TOPIC / UNKNOWN_PARTITION.
pub async fn partition_bounds(
    cluster: &Cluster,
    topic: &str,
    partition: u32,
) -> Result<PartitionBounds, ClientError> {
    let body = Body::Fetch(FetchRequest {
        topic: topic.to_owned(),
        partition,
        offset: u64::MAX,
        max_bytes: 1,
        max_wait_ms: 0,
        min_bytes: 0,
    });
    let route = Route::Partition { topic, partition };
    match cluster.request(route, body, Retry::All).await {
        Err(ClientError::Server(error)) if error.code() == ErrorCode::OffsetOutOfRange => {
            Ok(PartitionBounds {
                log_start_offset: error.log_start_offset,
                high_watermark: error.high_watermark,
            })
        }
        Ok(Body::FetchResponse(response)) => Ok(PartitionBounds {
            log_start_offset: response.log_start_offset,
            high_watermark: response.high_watermark,
        }),
        Ok(other) => Err(unexpected("FetchResponse", &other)),
        Err(error) => Err(error),
    }
}

/// The offset of the first record of `partition` whose timestamp is at or after
/// `timestamp_ms`, or the high watermark when none is (Kafka's `offsetsForTimes`). There is
/// no time index yet, so this reads the partition from its log start: a cost in proportion
/// to the log, paid once per partition when a consumer starts.
///
/// # Errors
/// A routing error, UNKNOWN_TOPIC / UNKNOWN_PARTITION, or [`ClientError::Corrupt`].
pub async fn offset_for_time(
    cluster: &Cluster,
    topic: &str,
    partition: u32,
    timestamp_ms: i64,
    options: &ConsumerOptions,
) -> Result<u64, ClientError> {
    let bounds = partition_bounds(cluster, topic, partition).await?;
    let mut next = bounds.log_start_offset;
    while next < bounds.high_watermark {
        let body = Body::Fetch(FetchRequest {
            topic: topic.to_owned(),
            partition,
            offset: next,
            max_bytes: options.fetch_bytes_max,
            max_wait_ms: 0,
            min_bytes: 0,
        });
        let route = Route::Partition { topic, partition };
        let response = match cluster.request(route, body, Retry::All).await? {
            Body::FetchResponse(response) => response,
            other => return Err(unexpected("FetchResponse", &other)),
        };
        let records = decode_fetch(partition, next, &response, options.batch_bytes_max)?;
        if let Some(found) = records.iter().find(|r| r.timestamp_ms >= timestamp_ms) {
            return Ok(found.offset);
        }
        match records.last() {
            Some(last) => next = last.offset + 1,
            None => break,
        }
    }
    Ok(bounds.high_watermark)
}

/// One partition's fetch task.
struct FetchLoop {
    cluster: Cluster,
    topic: String,
    partition: u32,
    next: u64,
    options: ConsumerOptions,
    events: mpsc::Sender<FetchEvent>,
}

impl FetchLoop {
    /// Fetches until the consumer goes away or an error ends it (after reporting it).
    async fn run(mut self) {
        loop {
            let started = Instant::now();
            let result = self.fetch_once().await;
            let event = match result {
                Ok(records) if records.is_empty() => {
                    // A node that answers an empty long-poll at once would make this loop
                    // spin; pace it.
                    if started.elapsed() < Duration::from_millis(10) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    continue;
                }
                Ok(records) => {
                    self.next = records.last().map_or(self.next, |r| r.offset + 1);
                    FetchEvent {
                        partition: self.partition,
                        result: Ok(records),
                    }
                }
                Err(error) => FetchEvent {
                    partition: self.partition,
                    result: Err(error),
                },
            };
            let failed = event.result.is_err();
            if self.events.send(event).await.is_err() || failed {
                return;
            }
        }
    }

    /// One fetch; an offset just past a replica's high watermark is retried a few times
    /// after a metadata refresh, because a follower learns of commits a moment after the
    /// leader, and a position taken from the leader may be ahead of it.
    async fn fetch_once(&self) -> Result<Vec<ConsumerRecord>, ClientError> {
        let mut attempts = 0;
        loop {
            match self.fetch_at_replica().await {
                Err(ClientError::Server(error))
                    if error.code() == ErrorCode::OffsetOutOfRange
                        && self.next > error.high_watermark
                        && attempts < OUT_OF_RANGE_ATTEMPTS_MAX =>
                {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let _ = self.cluster.refresh_metadata().await;
                }
                other => return other,
            }
        }
    }

    async fn fetch_at_replica(&self) -> Result<Vec<ConsumerRecord>, ClientError> {
        let body = Body::Fetch(FetchRequest {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.next,
            max_bytes: self.options.fetch_bytes_max,
            max_wait_ms: self.options.fetch_wait_ms_max,
            min_bytes: 1,
        });
        let route = Route::Partition {
            topic: &self.topic,
            partition: self.partition,
        };
        match self.cluster.request(route, body, Retry::All).await? {
            Body::FetchResponse(response) => decode_fetch(
                self.partition,
                self.next,
                &response,
                self.options.batch_bytes_max,
            ),
            other => Err(unexpected("FetchResponse", &other)),
        }
    }
}

/// The records of a fetch answer at or after offset `from`, every batch checked first.
///
/// # Errors
/// [`ClientError::Corrupt`] for the first batch that fails a check.
pub fn decode_fetch(
    partition: u32,
    from: u64,
    response: &FetchResponse,
    batch_bytes_max: usize,
) -> Result<Vec<ConsumerRecord>, ClientError> {
    let mut records = Vec::new();
    for fetched in &response.batches {
        let corrupt = |source: BatchError| ClientError::Corrupt {
            partition,
            offset: fetched.base_offset,
            source,
        };
        let validated = batch::validate(&fetched.batch, batch_bytes_max).map_err(corrupt)?;
        if validated.record_count() != fetched.record_count {
            return Err(corrupt(BatchError::CountMismatch {
                claimed: fetched.record_count,
                found: u64::from(validated.record_count()),
            }));
        }
        let end = fetched.base_offset + u64::from(fetched.record_count);
        if end <= from {
            continue;
        }
        for (index, record) in decode_records(validated.batch()).enumerate() {
            let record = record.map_err(corrupt)?;
            let offset = fetched.base_offset + index as u64;
            if offset < from {
                continue;
            }
            records.push(ConsumerRecord {
                partition,
                offset,
                timestamp_ms: record.timestamp_ms,
                key: record.key,
                value: record.value,
                headers: record.headers,
            });
        }
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::RecordBatchBuilder;
    use crate::proto::FetchedBatch;

    fn fetched(base_offset: u64, values: &[&str]) -> FetchedBatch {
        let mut builder = RecordBatchBuilder::new(1 << 20);
        for value in values {
            builder.push(1_000, None, value.as_bytes(), &[]).unwrap();
        }
        FetchedBatch {
            base_offset,
            record_count: values.len() as u32,
            timestamp_ms: 1_000,
            batch: builder.finish(),
        }
    }

    #[test]
    fn records_before_the_position_are_skipped() {
        let response = FetchResponse {
            batches: vec![fetched(10, &["a", "b", "c"]), fetched(13, &["d"])],
            high_watermark: 14,
            log_start_offset: 0,
        };
        let records = decode_fetch(0, 12, &response, 1 << 20).unwrap();
        let got: Vec<(u64, &[u8])> = records.iter().map(|r| (r.offset, &r.value[..])).collect();
        assert_eq!(got, [(12, &b"c"[..]), (13, &b"d"[..])]);
    }

    #[test]
    fn a_damaged_batch_is_an_error_not_a_skip() {
        let mut batch = fetched(5, &["hello", "world"]);
        let mut bytes = batch.batch.to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        batch.batch = Bytes::from(bytes);
        let response = FetchResponse {
            batches: vec![batch],
            ..Default::default()
        };
        let error = decode_fetch(3, 5, &response, 1 << 20).unwrap_err();
        assert!(
            matches!(
                error,
                ClientError::Corrupt {
                    partition: 3,
                    offset: 5,
                    source: BatchError::CrcMismatch { .. }
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn a_record_count_that_disagrees_with_the_batch_is_corrupt() {
        let mut batch = fetched(0, &["x", "y"]);
        batch.record_count = 3;
        let response = FetchResponse {
            batches: vec![batch],
            ..Default::default()
        };
        let error = decode_fetch(0, 0, &response, 1 << 20).unwrap_err();
        assert_eq!(error.code(), Some(ErrorCode::CorruptBatch));
    }
}
