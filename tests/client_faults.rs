//! The producer's delivery guarantees under injected failures, on real nodes over loopback
//! TCP: a proxy between the producer and the nodes cuts connections after produce requests
//! were sent (some after the write took effect, some before its outcome is known), and the
//! leader of a partition is killed mid-run. Reading the log back directly, every acknowledged
//! record is there exactly once, at its acknowledged offset, nothing is written twice, and
//! each partition holds its records in send order — with one batch in flight per partition
//! and with several.

mod real_cluster;
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use raftlog::client::*;
use real_cluster::RealCluster;
use support::client_proxy::ClientProxy;
use tokio::time::timeout;

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
