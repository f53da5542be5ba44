//! The client library against real nodes over loopback TCP: topics through the metadata
//! leader, keyed and round-robin produce through partition leaders, consume back in order,
//! group offsets, and routing around nodes that hold no replica of a partition.

mod real_cluster;

use std::collections::BTreeMap;
use std::time::Duration;

use raftlog::client::partitioner::partition_for_key;
use raftlog::client::*;
use real_cluster::RealCluster;
use tokio::time::timeout;

const BOUND: Duration = Duration::from_secs(60);

fn options(bootstrap: &str) -> ClientOptions {
    ClientOptions {
        bootstrap: bootstrap.split(',').map(str::to_owned).collect(),
        request_timeout: Duration::from_secs(20),
        ..ClientOptions::default()
    }
}

/// Polls until `expected` records arrived, bounded by [`BOUND`].
async fn consume(cluster: &Cluster, topic: &str, expected: usize) -> Vec<ConsumerRecord> {
    let mut consumer = Consumer::new(cluster.clone(), topic, ConsumerOptions::default())
        .await
        .unwrap();
    timeout(BOUND, async {
        let mut records = Vec::new();
        while records.len() < expected {
            records.extend(consumer.poll(Duration::from_millis(500)).await.unwrap());
        }
        records
    })
    .await
    .expect("every record is consumed in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn produce_and_consume_through_a_three_node_cluster() {
    let nodes = RealCluster::start(3).await;
    let cluster = Cluster::connect(options(&nodes.address(0))).await.unwrap();
    let admin = Admin::new(cluster.clone());
    admin
        .create_topic(&NewTopic::new("orders", 3, 3))
        .await
        .unwrap();
    let described = admin
        .wait_for_leaders("orders", Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(described.partitions.len(), 3);
    assert_eq!(
        admin
            .list_topics()
            .await
            .unwrap()
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        ["orders"]
    );

    let producer = Producer::new(cluster.clone(), ProducerOptions::default())
        .await
        .unwrap();
    let total = 100_000u32;
    let mut deliveries = Vec::new();
    for i in 0..total {
        let mut record = ProducerRecord::new("orders", format!("value-{i}"));
        if i % 2 == 0 {
            record = record.key(format!("key-{}", i % 101));
        }
        deliveries.push((
            record.key.clone(),
            record.value.clone(),
            producer.send(record).await.unwrap(),
        ));
    }
    producer.flush().await;
    let mut sent: BTreeMap<(u32, u64), bytes::Bytes> = BTreeMap::new();
    for (key, value, delivery) in deliveries {
        let written = timeout(BOUND, delivery).await.unwrap().unwrap();
        if let Some(key) = key {
            assert_eq!(written.partition, partition_for_key(&key, 3));
        }
        assert!(sent
            .insert((written.partition, written.offset), value)
            .is_none());
    }
    producer.close().await;

    // Every node as the bootstrap: the same records at the same offsets, in order.
    for index in 0..3 {
        let reader = Cluster::connect(options(&nodes.address(index)))
            .await
            .unwrap();
        let records = consume(&reader, "orders", total as usize).await;
        assert_eq!(records.len(), total as usize);
        let mut last: BTreeMap<u32, u64> = BTreeMap::new();
        for record in &records {
            if let Some(previous) = last.insert(record.partition, record.offset) {
                assert_eq!(record.offset, previous + 1, "dense, in order");
            }
            assert_eq!(
                sent.get(&(record.partition, record.offset)),
                Some(&record.value)
            );
        }
    }
    nodes.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_replica_partitions_are_reached_from_any_bootstrap_node() {
    let nodes = RealCluster::start(3).await;
    // Partitions with one replica: two nodes of three hold no copy and report leader 0.
    let cluster = Cluster::connect(options(&nodes.address(2))).await.unwrap();
    let admin = Admin::new(cluster.clone());
    admin
        .create_topic(&NewTopic::new("solo", 3, 1))
        .await
        .unwrap();
    let producer = Producer::new(cluster.clone(), ProducerOptions::default())
        .await
        .unwrap();
    let mut deliveries = Vec::new();
    for partition in 0..3 {
        for i in 0..10 {
            let record =
                ProducerRecord::new("solo", format!("{partition}-{i}")).partition(partition);
            deliveries.push(producer.send(record).await.unwrap());
        }
    }
    for delivery in deliveries {
        timeout(BOUND, delivery).await.unwrap().unwrap();
    }
    let records = consume(&cluster, "solo", 30).await;
    assert_eq!(records.len(), 30);
    for record in records {
        let expected = format!("{}-{}", record.partition, record.offset);
        assert_eq!(record.value, expected.as_bytes());
    }
    // Graceful shutdown waits in vain to hand single-replica partitions to another node.
    nodes.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_offsets_and_seeks_on_a_real_cluster() {
    let nodes = RealCluster::start(3).await;
    let cluster = Cluster::connect(options(&nodes.bootstrap())).await.unwrap();
    let admin = Admin::new(cluster.clone());
    admin.create_topic(&NewTopic::new("g", 1, 3)).await.unwrap();
    let producer = Producer::new(cluster.clone(), ProducerOptions::default())
        .await
        .unwrap();
    let mut last = None;
    for i in 0..20 {
        last = Some(
            producer
                .send(ProducerRecord::new("g", format!("{i}")))
                .await
                .unwrap(),
        );
    }
    assert_eq!(
        timeout(BOUND, last.unwrap()).await.unwrap().unwrap().offset,
        19
    );

    let mut consumer = Consumer::new(cluster.clone(), "g", ConsumerOptions::default())
        .await
        .unwrap();
    consumer.seek(0, OffsetSpec::At(13)).unwrap();
    let records = timeout(BOUND, consumer.poll(Duration::from_secs(5)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((records[0].offset, &records[0].value[..]), (13, &b"13"[..]));
    consumer.commit("readers").await.unwrap();
    assert_eq!(
        consumer.bounds(0).await.unwrap(),
        PartitionBounds {
            log_start_offset: 0,
            high_watermark: 20
        }
    );

    let committed = admin.fetch_offsets("readers", "g", &[0]).await.unwrap();
    assert_eq!(
        (committed[0].offset, committed[0].committed),
        (consumer.position(0).unwrap(), true)
    );

    admin
        .commit_offsets("readers", "g", &[(0, 15)])
        .await
        .unwrap();
    let mut resumed = Consumer::new(cluster.clone(), "g", ConsumerOptions::default())
        .await
        .unwrap();
    assert_eq!(resumed.seek_to_committed("readers").await.unwrap(), 1);
    let records = timeout(BOUND, resumed.poll(Duration::from_secs(5)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(records.first().map(|r| r.offset), Some(15));

    let error = Consumer::new(cluster.clone(), "missing", ConsumerOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(error, ClientError::UnknownTopic(_)), "{error}");
    admin.delete_topic("g").await.unwrap();
    // Other nodes apply the deletion a moment after the metadata leader answers.
    timeout(BOUND, async {
        while !admin.list_topics().await.unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("every node forgets the topic");
    nodes.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn producing_survives_the_loss_of_the_partition_leader() {
    let mut nodes = RealCluster::start(3).await;
    let cluster = Cluster::connect(options(&nodes.bootstrap())).await.unwrap();
    let admin = Admin::new(cluster.clone());
    admin.create_topic(&NewTopic::new("k", 1, 3)).await.unwrap();
    let before = admin
        .wait_for_leaders("k", Duration::from_secs(20))
        .await
        .unwrap();
    let leader = before.partitions[0].leader_id;
    let producer = Producer::new(
        cluster.clone(),
        ProducerOptions {
            // A batch in flight to the crashed leader fails after this (unknown outcome);
            // the ones behind it go to the new leader.
            request_timeout_ms: 2_000,
            delivery_timeout_ms: 30_000,
            ..ProducerOptions::default()
        },
    )
    .await
    .unwrap();
    let total = 3_000u32;
    let mut deliveries = Vec::new();
    for i in 0..total {
        if i == total / 3 {
            // Crash the leader (no hand-over) while records are in flight.
            nodes.nodes.remove(leader as usize - 1).abort();
        }
        let record = ProducerRecord::new("k", format!("{i}"));
        deliveries.push((i, producer.send(record).await.unwrap()));
        if i % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let mut acknowledged = Vec::new();
    let mut failed = 0;
    for (i, delivery) in deliveries {
        match timeout(BOUND, delivery).await.unwrap() {
            Ok(_) => acknowledged.push(i),
            Err(error) => {
                if failed < 3 {
                    eprintln!("record {i}: {error}");
                }
                failed += 1;
            }
        }
    }
    eprintln!("{} acknowledged, {failed} failed", acknowledged.len());
    assert!(
        acknowledged.contains(&(total - 1)),
        "producing continued under a new leader ({failed} failed)"
    );

    // Every acknowledged record is in the log exactly once.
    let survivors = nodes.bootstrap();
    let reader = Cluster::connect(options(&survivors)).await.unwrap();
    let mut consumer = Consumer::new(reader, "k", ConsumerOptions::default())
        .await
        .unwrap();
    let end = consumer.bounds(0).await.unwrap().high_watermark;
    let mut counts: BTreeMap<u32, u32> = BTreeMap::new();
    timeout(BOUND, async {
        while consumer.position(0).is_none_or(|p| p < end) {
            for record in consumer.poll(Duration::from_millis(500)).await.unwrap() {
                let value: u32 = std::str::from_utf8(&record.value).unwrap().parse().unwrap();
                *counts.entry(value).or_default() += 1;
            }
        }
    })
    .await
    .expect("the log is read back in time");
    for i in &acknowledged {
        assert_eq!(counts.get(i), Some(&1), "acknowledged record {i}");
    }
    nodes.abort();
}
