//! The producer's delivery guarantees under injected failures, on real nodes over loopback
//! TCP: a proxy between the producer and the nodes cuts connections after produce requests
//! were sent (some after the write took effect, some before its outcome is known), and the
//! leader of a partition is killed mid-run. Reading the log back directly, every acknowledged
//! record is there exactly once, at its acknowledged offset, nothing is written twice, and
//! each partition holds its records in send order — with one batch in flight per partition
//! and with several.
//!
//! Then the producer epoch, on `raftlog serve` processes: a batch that fails for good (its
//! only replica is killed for longer than the delivery timeout) does not block the
//! producer's later batches to that partition; a leader refuses a fresh producer's batch that
//! does not start at sequence 0; and a producer the leader forgot (retention removed its
//! batches, then the node restarted) carries on under a new epoch.

mod real_cluster;
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use raftlog::batch::RecordBatchBuilder;
use raftlog::client::*;
use raftlog::proto::envelope::Body;
use raftlog::proto::{ErrorCode, InitProducerIdRequest, ProduceRequest};
use real_cluster::RealCluster;
use support::client::{scrape_metrics, to_leader};
use support::client_proxy::ClientProxy;
use support::cluster::{ClusterOptions, ProcessCluster};
use tokio::time::{sleep, timeout};

/// Longest wait for any one phase of a test.
const BOUND: Duration = Duration::from_secs(120);
const PARTITIONS: u32 = 2;
const RECORDS: u32 = 4_000;

fn options(bootstrap: &str) -> ClientOptions {
    ClientOptions {
        bootstrap: bootstrap.split(',').map(str::to_owned).collect(),
        request_timeout: Duration::from_secs(20),
        ..ClientOptions::default()
    }
}

/// A record acknowledged to the producer: its send index and where it was written.
struct Acked {
    index: u32,
    at: RecordMetadata,
}

/// Produces [`RECORDS`] records (value = send index, partitions in turn) through a faulty
/// proxy with `max_in_flight` batches per partition, kills partition 0's leader halfway,
/// and returns what was acknowledged and the survivors' bootstrap list.
async fn produce_through_faults(max_in_flight: usize) -> (Vec<Acked>, RealCluster) {
    let mut nodes = RealCluster::start(3).await;
    let targets: Vec<SocketAddr> = nodes.nodes.iter().map(|n| n.client_address).collect();
    let proxy = ClientProxy::start(&targets);
    let cluster = Cluster::connect(options(&proxy.bootstrap())).await.unwrap();
    let admin = Admin::new(cluster.clone());
    admin
        .create_topic(&NewTopic::new("t", PARTITIONS, 3))
        .await
        .unwrap();
    let leader = admin
        .wait_for_leaders("t", Duration::from_secs(20))
        .await
        .unwrap()
        .partitions[0]
        .leader_id;
    let too_many = ProducerOptions {
        max_in_flight: IDEMPOTENT_IN_FLIGHT_MAX + 1,
        ..ProducerOptions::default()
    };
    let refused = Producer::new(cluster.clone(), too_many).await;
    assert!(
        matches!(&refused, Err(ClientError::Invalid(m)) if m.contains("max_in_flight")),
        "{refused:?}"
    );
    let producer = Producer::new(
        cluster,
        ProducerOptions {
            max_in_flight,
            // Small batches and no linger: many produce requests, several in flight at once.
            batch_bytes_max: 2_048,
            linger_ms: 0,
            request_timeout_ms: 2_000,
            delivery_timeout_ms: 90_000,
            ..ProducerOptions::default()
        },
    )
    .await
    .unwrap();
    proxy
        .faults
        .cut_after_answer_every
        .store(7, Ordering::Relaxed);
    proxy
        .faults
        .cut_after_send_every
        .store(11, Ordering::Relaxed);

    let mut deliveries = Vec::new();
    for index in 0..RECORDS {
        if index == RECORDS / 2 {
            // Crash the leader (no hand-over) with batches in flight.
            let position = nodes
                .nodes
                .iter()
                .position(|n| n.node.id() == leader)
                .unwrap();
            nodes.nodes.remove(position).abort();
        }
        let record = ProducerRecord::new("t", index.to_string()).partition(index % PARTITIONS);
        deliveries.push((index, producer.send(record).await.unwrap()));
        if index % 20 == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let mut acked = Vec::new();
    let mut failures = Vec::new();
    for (index, delivery) in deliveries {
        match timeout(BOUND, delivery)
            .await
            .expect("delivery answered in time")
        {
            Ok(at) => acked.push(Acked { index, at }),
            Err(error) => failures.push(format!("record {index}: {error}")),
        }
    }
    let cuts = proxy.faults.cuts.load(Ordering::Relaxed);
    eprintln!(
        "max_in_flight {max_in_flight}: {} acknowledged, {} failed, {cuts} connections cut",
        acked.len(),
        failures.len()
    );
    assert!(cuts >= 10, "the proxy cut connections ({cuts})");
    // Every failure here is retryable and the delivery timeout is long: nothing may fail.
    assert!(
        failures.is_empty(),
        "{:?}",
        &failures[..failures.len().min(5)]
    );
    (acked, nodes)
}

/// Reads every partition of "t" back from the surviving nodes, directly: partition ->
/// (offset, send index) in log order.
async fn read_back(nodes: &RealCluster) -> BTreeMap<u32, Vec<(u64, u32)>> {
    let cluster = Cluster::connect(options(&nodes.bootstrap())).await.unwrap();
    let mut consumer = Consumer::new(cluster, "t", ConsumerOptions::default())
        .await
        .unwrap();
    let mut ends = BTreeMap::new();
    for partition in 0..PARTITIONS {
        ends.insert(
            partition,
            consumer.bounds(partition).await.unwrap().high_watermark,
        );
    }
    let mut log: BTreeMap<u32, Vec<(u64, u32)>> = BTreeMap::new();
    timeout(BOUND, async {
        while ends
            .iter()
            .any(|(&p, &end)| consumer.position(p).is_none_or(|at| at < end))
        {
            for record in consumer.poll(Duration::from_millis(500)).await.unwrap() {
                let index: u32 = std::str::from_utf8(&record.value).unwrap().parse().unwrap();
                log.entry(record.partition)
                    .or_default()
                    .push((record.offset, index));
            }
        }
    })
    .await
    .expect("the log is read back in time");
    log
}

/// The guarantees: exactly once at the acknowledged offset, no duplicates, send order.
fn check(acked: &[Acked], log: &BTreeMap<u32, Vec<(u64, u32)>>) {
    let mut where_found: BTreeMap<u32, (u32, u64)> = BTreeMap::new();
    for (&partition, records) in log {
        for &(offset, index) in records {
            assert_eq!(
                index % PARTITIONS,
                partition,
                "record {index} in its partition"
            );
            let earlier = where_found.insert(index, (partition, offset));
            assert!(
                earlier.is_none(),
                "record {index} written twice: at {earlier:?} and {partition}/{offset}"
            );
        }
        for pair in records.windows(2) {
            assert!(
                pair[0].1 < pair[1].1,
                "partition {partition} out of send order: {:?} then {:?}",
                pair[0],
                pair[1]
            );
        }
    }
    for record in acked {
        assert_eq!(
            where_found.get(&record.index),
            Some(&(record.at.partition, record.at.offset)),
            "acknowledged record {} is in the log exactly once, where acknowledged",
            record.index
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retries_never_duplicate_through_cut_connections_and_a_leader_crash() {
    let (acked, nodes) = produce_through_faults(1).await;
    let log = read_back(&nodes).await;
    check(&acked, &log);
    nodes.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn several_batches_in_flight_keep_send_order_through_failures() {
    let (acked, nodes) = produce_through_faults(5).await;
    let log = read_back(&nodes).await;
    check(&acked, &log);
    nodes.abort();
}

/// Three `raftlog serve` processes (with `extra_config` in each configuration) and a client
/// on them.
async fn serve_processes(extra_config: &str) -> (ProcessCluster, Cluster) {
    let nodes = ProcessCluster::start_with(ClusterOptions {
        nodes: 3,
        extra_config: extra_config.to_owned(),
        ..ClusterOptions::default()
    });
    let cluster = Cluster::connect(options(&nodes.addresses().join(",")))
        .await
        .expect("the processes answer");
    (nodes, cluster)
}

/// Creates `topic` with one partition and returns its leader, the partition's only replica.
async fn create_single_replica_topic(cluster: &Cluster, topic: NewTopic) -> u64 {
    let admin = Admin::new(cluster.clone());
    admin.create_topic(&topic).await.unwrap();
    admin
        .wait_for_leaders(&topic.name, Duration::from_secs(30))
        .await
        .unwrap()
        .partitions[0]
        .leader_id
}

/// Waits until partition 0 of `topic` answers again after its only replica restarted: the
/// metadata may name that node as leader before its process listens.
async fn wait_until_served(cluster: &Cluster, topic: &str) {
    let consumer = Consumer::new(cluster.clone(), topic, ConsumerOptions::default())
        .await
        .unwrap();
    timeout(BOUND, async {
        while consumer.bounds(0).await.is_err() {
            sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the restarted node serves the partition");
}

/// Sends `values` to partition 0 of `topic` and waits for every answer, in send order.
async fn send_all(
    producer: &Producer,
    topic: &str,
    values: &[String],
) -> Vec<Result<RecordMetadata, ClientError>> {
    let mut deliveries = Vec::new();
    for value in values {
        let record = ProducerRecord::new(topic, value.clone()).partition(0);
        deliveries.push(producer.send(record).await.unwrap());
    }
    let mut answers = Vec::new();
    for delivery in deliveries {
        answers.push(timeout(BOUND, delivery).await.expect("answered in time"));
    }
    answers
}

/// The offsets of records that must all have been acknowledged.
fn offsets(answers: Vec<Result<RecordMetadata, ClientError>>) -> Vec<u64> {
    answers
        .into_iter()
        .map(|answer| answer.expect("acknowledged").offset)
        .collect()
}

/// Every record of partition 0 from the log start up to the high watermark: (offset, value).
async fn read_partition(cluster: &Cluster, topic: &str) -> Vec<(u64, String)> {
    let mut consumer = Consumer::new(cluster.clone(), topic, ConsumerOptions::default())
        .await
        .unwrap();
    let end = consumer.bounds(0).await.unwrap().high_watermark;
    let mut records = Vec::new();
    timeout(BOUND, async {
        while consumer.position(0).is_none_or(|at| at < end) {
            for record in consumer.poll(Duration::from_millis(500)).await.unwrap() {
                let value = String::from_utf8(record.value.to_vec()).unwrap();
                records.push((record.offset, value));
            }
        }
    })
    .await
    .expect("the partition is read back in time");
    records
}

fn values(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}-{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_fails_for_good_does_not_block_later_batches_of_its_partition() {
    let (mut nodes, cluster) = serve_processes("").await;
    let leader = create_single_replica_topic(&cluster, NewTopic::new("solo", 1, 1)).await;
    let producer = Producer::new(
        cluster.clone(),
        ProducerOptions {
            linger_ms: 0,
            max_in_flight: IDEMPOTENT_IN_FLIGHT_MAX,
            delivery_timeout_ms: 3_000,
            request_timeout_ms: 1_000,
            ..ProducerOptions::default()
        },
    )
    .await
    .unwrap();
    let before = values("before", 5);
    assert_eq!(
        offsets(send_all(&producer, "solo", &before).await),
        [0, 1, 2, 3, 4]
    );

    // With its only replica down, the one batch of this record cannot reach the partition
    // before the delivery timeout; the node comes back only once every attempt has ended.
    nodes.kill(leader);
    let lost = send_all(&producer, "solo", &values("lost", 1)).await;
    assert!(
        lost[0].is_err(),
        "delivered with the only replica down: {lost:?}"
    );
    nodes.spawn(leader);
    wait_until_served(&cluster, "solo").await;

    // The leader still holds the producer's sequence as of "before-4"; the later records
    // carry no gap after the lost ones only because the producer started a new epoch.
    let after = values("after", 20);
    assert_eq!(
        offsets(send_all(&producer, "solo", &after).await),
        (5..25).collect::<Vec<u64>>(),
        "later records are acknowledged right after the earlier ones, in send order"
    );
    let expected: Vec<(u64, String)> = before
        .into_iter()
        .chain(after)
        .enumerate()
        .map(|(offset, value)| (offset as u64, value))
        .collect();
    assert_eq!(read_partition(&cluster, "solo").await, expected);
}

fn idempotent_batch(
    topic: &str,
    (producer_id, epoch, base_sequence): (u64, u32, u32),
    value: &str,
) -> Body {
    let mut builder =
        RecordBatchBuilder::new(1 << 20).with_producer(producer_id, epoch, base_sequence);
    builder
        .push(1_700_000_000_000, None, value.as_bytes(), &[])
        .unwrap();
    Body::Produce(ProduceRequest {
        topic: topic.into(),
        partition: 0,
        acks: Acks::All as i32,
        batch: builder.finish(),
        timeout_ms: 10_000,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_producer_id_must_start_at_sequence_zero() {
    let (nodes, cluster) = serve_processes("").await;
    create_single_replica_topic(&cluster, NewTopic::new("fresh", 1, 1)).await;
    let mut connections = Vec::new();
    for address in nodes.addresses() {
        connections.push(cluster.connection(&address).await.unwrap());
    }
    let init = Body::InitProducerId(InitProducerIdRequest {});
    let Body::InitProducerIdResponse(fresh) = to_leader(&connections, init).await else {
        panic!("no producer id")
    };
    let id = fresh.producer_id;

    // As if its first batch were still on its way: the second must not overtake it.
    let Body::Error(refused) = to_leader(
        &connections,
        idempotent_batch("fresh", (id, 0, 1), "second"),
    )
    .await
    else {
        panic!("a fresh producer's batch at sequence 1 was appended")
    };
    assert_eq!(
        refused.code(),
        ErrorCode::UnknownProducerId,
        "{}",
        refused.message
    );
    let Body::ProduceResponse(first) =
        to_leader(&connections, idempotent_batch("fresh", (id, 0, 0), "first")).await
    else {
        panic!("sequence 0 refused")
    };
    assert_eq!(first.base_offset, 0);
    let Body::ProduceResponse(second) = to_leader(
        &connections,
        idempotent_batch("fresh", (id, 0, 1), "second"),
    )
    .await
    else {
        panic!("the next sequence refused")
    };
    assert_eq!(second.base_offset, 1);
    // A known producer's new epoch must start at 0 too.
    let Body::Error(gap) =
        to_leader(&connections, idempotent_batch("fresh", (id, 1, 3), "gap")).await
    else {
        panic!("a new epoch started past 0")
    };
    assert_eq!(gap.code(), ErrorCode::OutOfOrderSequence, "{}", gap.message);
    assert_eq!(
        read_partition(&cluster, "fresh").await,
        [(0, "first".to_owned()), (1, "second".to_owned())]
    );
}

/// `raftlog_errors_total` for `code` on a node's metrics listener.
async fn errors_counted(address: SocketAddr, code: &str) -> u64 {
    let label = format!("code=\"{code}\"");
    scrape_metrics(address)
        .await
        .lines()
        .find(|line| line.starts_with("raftlog_errors_total{") && line.contains(&label))
        .and_then(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .map_or(0, |count| count as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_the_leader_forgot_carries_on_under_a_new_epoch() {
    // Small segments and a retention check every 100 ms, so that retention removes the
    // producer's only batch within a second of the filler rolling a few segments.
    let config = "[server]\nbatch_bytes_max = 16384\n\n\
                  [storage]\nsegment_bytes = 98304\nretention_check_interval_ms = 100\n";
    let (mut nodes, cluster) = serve_processes(config).await;
    let topic = NewTopic {
        retention_bytes: 1,
        ..NewTopic::new("forgetful", 1, 1)
    };
    let leader = create_single_replica_topic(&cluster, topic).await;
    let small_batches = ProducerOptions {
        linger_ms: 0,
        batch_bytes_max: 8_192,
        ..ProducerOptions::default()
    };
    let producer = Producer::new(cluster.clone(), small_batches.clone())
        .await
        .unwrap();
    assert_eq!(
        offsets(send_all(&producer, "forgetful", &values("p", 1)).await),
        [0]
    );
    let filler = Producer::new(
        cluster.clone(),
        ProducerOptions {
            enable_idempotence: false,
            ..small_batches
        },
    )
    .await
    .unwrap();
    let padding = "x".repeat(1_000);
    // About three segments' worth.
    let filled: Vec<String> = (0..300).map(|i| format!("{i:03}{padding}")).collect();
    offsets(send_all(&filler, "forgetful", &filled).await);
    let consumer = Consumer::new(cluster.clone(), "forgetful", ConsumerOptions::default())
        .await
        .unwrap();
    timeout(BOUND, async {
        while consumer.bounds(0).await.unwrap().log_start_offset == 0 {
            sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("retention removed the producer's batch");

    // A restarted node rebuilds its producer table from the log alone.
    nodes.kill(leader);
    nodes.spawn(leader);
    wait_until_served(&cluster, "forgetful").await;
    let later = values("p-later", 3);
    let acknowledged = offsets(send_all(&producer, "forgetful", &later).await);
    assert_eq!(acknowledged, [301, 302, 303]);
    let log = read_partition(&cluster, "forgetful").await;
    let tail: Vec<(u64, String)> = log
        .into_iter()
        .filter(|(offset, _)| *offset > 300)
        .collect();
    assert_eq!(
        tail,
        acknowledged.into_iter().zip(later).collect::<Vec<_>>()
    );
    let refusals = errors_counted(nodes.metrics_address(leader), "UNKNOWN_PRODUCER_ID").await;
    assert!(
        refusals > 0,
        "the restarted leader refused the forgotten producer's next batch first"
    );
}
