//! The client library against a fake cluster (real TCP and wire protocol, in-memory logs):
//! routing that follows NOT_LEADER hints, batching, partitioning, consumer seeks and skips,
//! group offsets, corruption reports, and a bounded failure when nothing answers.

mod fake_cluster;

use std::collections::BTreeMap;
use std::time::Duration;

use fake_cluster::FakeCluster;
use raftlog::client::partitioner::partition_for_key;
use raftlog::client::*;
use tokio::time::timeout;

const BOUND: Duration = Duration::from_secs(20);

fn options(bootstrap: &str) -> ClientOptions {
    ClientOptions {
        bootstrap: vec![bootstrap.to_owned()],
        request_timeout: Duration::from_secs(10),
        ..ClientOptions::default()
    }
}

async fn consume_all(cluster: &Cluster, topic: &str, expected: usize) -> Vec<ConsumerRecord> {
    let mut consumer = Consumer::new(cluster.clone(), topic, ConsumerOptions::default())
        .await
        .unwrap();
    let mut records = Vec::new();
    while records.len() < expected {
        let batch = timeout(BOUND, consumer.poll(Duration::from_millis(200)))
            .await
            .expect("poll is bounded")
            .unwrap();
        records.extend(batch);
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_follows_not_leader_batches_and_partitions_by_key() {
    let fake = FakeCluster::start(3, 2).await;
    // Metadata claims node 1 leads: every first attempt is answered NOT_LEADER with a hint.
    fake.state.lock().unwrap().advertised_leader = Some(1);
    let cluster = Cluster::connect(options(&fake.addresses[0])).await.unwrap();
    Admin::new(cluster.clone())
        .create_topic(&NewTopic::new("orders", 3, 3))
        .await
        .unwrap();
    let producer = Producer::new(cluster.clone(), ProducerOptions::default())
        .await
        .unwrap();
    let mut deliveries = Vec::new();
    for i in 0..1000u32 {
        let key = format!("user-{}", i % 17);
        let record = ProducerRecord::new("orders", format!("value-{i}")).key(key.clone());
        deliveries.push((key, producer.send(record).await.unwrap()));
    }
    producer.flush().await;
    let mut offsets: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for (key, delivery) in deliveries {
        let written = timeout(BOUND, delivery).await.unwrap().unwrap();
        assert_eq!(written.partition, partition_for_key(key.as_bytes(), 3));
        offsets
            .entry(written.partition)
            .or_default()
            .push(written.offset);
    }
    for (partition, offsets) in &offsets {
        let dense: Vec<u64> = (0..offsets.len() as u64).collect();
        assert_eq!(
            offsets, &dense,
            "partition {partition}: offsets in send order"
        );
    }
    {
        let state = fake.state.lock().unwrap();
        assert!(state.not_leader_answers > 0, "the hint path was exercised");
        assert!(
            state.produce_requests < 100,
            "1000 records went out in {} batches",
            state.produce_requests
        );
    }
    producer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_reads_in_order_and_seeks_inside_a_batch() {
    let fake = FakeCluster::start(1, 1).await;
    let cluster = Cluster::connect(options(&fake.addresses[0])).await.unwrap();
    Admin::new(cluster.clone())
        .create_topic(&NewTopic::new("t", 1, 1))
        .await
        .unwrap();
    let producer = Producer::new(cluster.clone(), ProducerOptions::default())
        .await
        .unwrap();
    let mut last = None;
    for i in 0..50 {
        let record = ProducerRecord::new("t", format!("{i}")).header("n", format!("{i}"));
        last = Some(producer.send(record).await.unwrap());
    }
    assert_eq!(last.unwrap().await.unwrap().offset, 49);
    let records = consume_all(&cluster, "t", 50).await;
    let values: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8(r.value.to_vec()).unwrap())
        .collect();
    assert_eq!(values, (0..50).map(|i| i.to_string()).collect::<Vec<_>>());
    assert_eq!(records[7].offset, 7);
    assert_eq!(records[7].headers[0].key, "n");

    // Offset 25 is in the middle of a batch: the records before it are skipped.
    let mut consumer = Consumer::new(cluster.clone(), "t", ConsumerOptions::default())
        .await
        .unwrap();
    consumer.seek(0, OffsetSpec::At(25)).unwrap();
    let first = consumer.poll(BOUND).await.unwrap();
    assert_eq!(first[0].offset, 25);
    assert_eq!(&first[0].value[..], b"25");

    // Latest sees only what is produced afterwards.
    consumer.seek(0, OffsetSpec::Latest).unwrap();
    assert!(consumer
        .poll(Duration::from_millis(300))
        .await
        .unwrap()
        .is_empty());
    let written = producer
        .send(ProducerRecord::new("t", "new"))
        .await
        .unwrap()
        .await
        .unwrap();
    let next = timeout(BOUND, consumer.poll(BOUND)).await.unwrap().unwrap();
    assert_eq!(
        (next[0].offset, &next[0].value[..]),
        (written.offset, &b"new"[..])
    );
    assert_eq!(consumer.position(0), Some(51));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_offsets_round_trip_through_the_metadata_leader() {
    let fake = FakeCluster::start(2, 2).await;
    let cluster = Cluster::connect(options(&fake.addresses[0])).await.unwrap();
    let admin = Admin::new(cluster.clone());
    admin.create_topic(&NewTopic::new("g", 2, 1)).await.unwrap();
    admin
        .commit_offsets("readers", "g", &[(1, 42)])
        .await
        .unwrap();
    let offsets = admin.fetch_offsets("readers", "g", &[0, 1]).await.unwrap();
    assert!(!offsets[0].committed);
    assert_eq!((offsets[1].offset, offsets[1].committed), (42, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_batch_is_reported_not_skipped() {
    let fake = FakeCluster::start(1, 1).await;
    let cluster = Cluster::connect(options(&fake.addresses[0])).await.unwrap();
    Admin::new(cluster.clone())
        .create_topic(&NewTopic::new("c", 1, 1))
        .await
        .unwrap();
    let producer = Producer::new(cluster.clone(), ProducerOptions::default())
        .await
        .unwrap();
    let delivery = producer
        .send(ProducerRecord::new("c", "precious"))
        .await
        .unwrap();
    delivery.await.unwrap();
    fake.corrupt("c", 0, 0);
    let mut consumer = Consumer::new(cluster, "c", ConsumerOptions::default())
        .await
        .unwrap();
    let error = timeout(BOUND, consumer.poll(BOUND))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(
            error,
            ClientError::Corrupt {
                partition: 0,
                offset: 0,
                ..
            }
        ),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_topics_and_partitions_fail_fast() {
    let fake = FakeCluster::start(1, 1).await;
    let cluster = Cluster::connect(options(&fake.addresses[0])).await.unwrap();
    Admin::new(cluster.clone())
        .create_topic(&NewTopic::new("two", 2, 1))
        .await
        .unwrap();
    let producer = Producer::new(cluster.clone(), ProducerOptions::default())
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let error = producer
        .send(ProducerRecord::new("missing", "x"))
        .await
        .unwrap_err();
    assert!(matches!(error, ClientError::UnknownTopic(_)), "{error}");
    let error = producer
        .send(ProducerRecord::new("two", "x").partition(2))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            ClientError::UnknownPartition {
                partition: 2,
                partitions: 2,
                ..
            }
        ),
        "{error}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    let error = Consumer::new(cluster, "missing", ConsumerOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(error, ClientError::UnknownTopic(_)), "{error}");
}

#[tokio::test]
async fn an_unreachable_bootstrap_fails_within_its_timeout() {
    // Bind and drop to find a port nothing listens on.
    let address = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let started = std::time::Instant::now();
    let error = Cluster::connect(ClientOptions {
        bootstrap_timeout: Duration::from_millis(500),
        ..options(&address)
    })
    .await
    .unwrap_err();
    assert!(matches!(error, ClientError::Timeout { .. }), "{error}");
    assert!(error.to_string().contains(&address), "{error}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_respect_batch_bytes_max_and_linger() {
    let fake = FakeCluster::start(1, 1).await;
    let cluster = Cluster::connect(options(&fake.addresses[0])).await.unwrap();
    Admin::new(cluster.clone())
        .create_topic(&NewTopic::new("b", 1, 1))
        .await
        .unwrap();

    // Size: 100 records of 50 bytes with a 400-byte limit need many batches, none larger.
    let producer = Producer::new(
        cluster.clone(),
        ProducerOptions {
            batch_bytes_max: 400,
            linger_ms: 1_000,
            ..ProducerOptions::default()
        },
    )
    .await
    .unwrap();
    let mut last = None;
    for i in 0..100 {
        let value = format!("{i:050}");
        last = Some(
            producer
                .send(ProducerRecord::new("b", value))
                .await
                .unwrap(),
        );
    }
    producer.flush().await;
    assert_eq!(last.unwrap().await.unwrap().offset, 99);
    let sizes = std::mem::take(&mut fake.state.lock().unwrap().batches);
    assert!(sizes.len() >= 100 * 52 / 400, "{sizes:?}");
    assert!(sizes.iter().all(|&(bytes, _)| bytes <= 400), "{sizes:?}");
    assert_eq!(sizes.iter().map(|&(_, n)| n).sum::<u32>(), 100);

    // Linger: a few records sent together travel in one batch, after linger_ms.
    let producer = Producer::new(
        cluster.clone(),
        ProducerOptions {
            linger_ms: 200,
            ..ProducerOptions::default()
        },
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let mut deliveries = Vec::new();
    for i in 0..5 {
        deliveries.push(
            producer
                .send(ProducerRecord::new("b", format!("{i}")))
                .await
                .unwrap(),
        );
    }
    for delivery in deliveries {
        timeout(BOUND, delivery).await.unwrap().unwrap();
    }
    assert!(started.elapsed() >= Duration::from_millis(200));
    let counts: Vec<u32> = fake
        .state
        .lock()
        .unwrap()
        .batches
        .iter()
        .map(|b| b.1)
        .collect();
    assert_eq!(counts, [5], "one lingering batch");
}
