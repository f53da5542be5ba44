//! Real `raftlog serve` processes on loopback: kill -9 a partition leader while producing,
//! restart it, and check that every acknowledged record is stored exactly once, in one order,
//! on every node.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use raftlog::proto::envelope::Body;
use raftlog::proto::*;
use support::client::{produce_one, read_partition, Client, Outcome, BOUND};
use support::cluster::ProcessCluster;
use tokio::time::{sleep, timeout};

async fn partition_leader(client: &mut Client) -> Option<u64> {
    for node in 0..client.addresses.len() {
        if let Outcome::Ok(Body::MetadataResponse(m)) = client
            .send(node, Body::Metadata(MetadataRequest::default()))
            .await
        {
            let leader = m
                .topics
                .first()
                .and_then(|t| t.partitions.first())
                .map_or(0, |p| p.leader_id);
            if leader != 0 {
                return Some(leader);
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_loses_no_acknowledged_record_and_the_node_catches_up() {
    let mut cluster = ProcessCluster::start(3);
    let mut client = Client::new(cluster.addresses());
    let create = Body::CreateTopic(CreateTopicRequest {
        name: "k".into(),
        partitions: 1,
        replication_factor: 3,
        ..Default::default()
    });
    let created = client.send_to_any(create).await;
    assert!(
        matches!(created, Outcome::Ok(Body::CreateTopicResponse(_))),
        "topic created"
    );

    let mut acknowledged: BTreeMap<String, u64> = BTreeMap::new();
    let mut indeterminate: HashSet<String> = HashSet::new();
    let mut killed = None;
    let mut acknowledged_after_kill = 0;
    let started = Instant::now();
    for i in 0.. {
        let elapsed = started.elapsed();
        if killed.is_none() && elapsed > Duration::from_secs(1) {
            let leader = timeout(BOUND, async {
                loop {
                    if let Some(leader) = partition_leader(&mut client).await {
                        return leader;
                    }
                    sleep(Duration::from_millis(20)).await;
                }
            })
            .await
            .unwrap();
            cluster.kill(leader);
            killed = Some(leader);
        }
        if elapsed > Duration::from_secs(5) && acknowledged_after_kill >= 50 {
            break;
        }
        assert!(
            elapsed < BOUND,
            "producing stalled after the kill ({acknowledged_after_kill} acknowledged since)"
        );
        let value = format!("v{i}");
        match client.send_to_any(produce_one("k", 0, &value)).await {
            Outcome::Ok(Body::ProduceResponse(response)) => {
                acknowledged.insert(value, response.base_offset);
                acknowledged_after_kill += u64::from(killed.is_some());
            }
            Outcome::Ok(other) => panic!("unexpected answer {other:?}"),
            Outcome::Indeterminate | Outcome::Refused(_) | Outcome::Failed(_) => {
                indeterminate.insert(value);
            }
        }
    }
    let killed = killed.unwrap();
    cluster.spawn(killed);

    // Every node, the restarted one included, ends with the same records in the same order.
    let mut stored_by_node = Vec::new();
    for node in 0..3 {
        let stored = timeout(BOUND, async {
            loop {
                if let Some(connection) = client.connection(node).await {
                    if let Ok(Body::FetchResponse(f)) = connection
                        .request(Body::Fetch(FetchRequest {
                            topic: "k".into(),
                            max_wait_ms: 10,
                            max_bytes: 1,
                            ..Default::default()
                        }))
                        .await
                    {
                        let target = acknowledged.values().max().copied().unwrap_or(0) + 1;
                        if f.high_watermark >= target {
                            return read_partition(&connection, "k", 0).await;
                        }
                    }
                }
                sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("node {} did not catch up", node + 1));
        stored_by_node.push(stored);
    }
    let (reference, high_watermark) = &stored_by_node[0];
    for (stored, hw) in &stored_by_node[1..] {
        let common = (*hw).min(*high_watermark) as usize;
        assert_eq!(
            &stored[..common],
            &reference[..common],
            "every node stores one order"
        );
    }
    let offsets: Vec<u64> = reference.iter().map(|(o, _)| *o).collect();
    assert_eq!(
        offsets,
        (0..reference.len() as u64).collect::<Vec<_>>(),
        "offsets are dense"
    );
    let mut seen: HashMap<&str, u64> = HashMap::new();
    for (offset, value) in reference {
        assert!(
            seen.insert(value, *offset).is_none(),
            "{value} stored twice"
        );
        assert!(
            acknowledged.contains_key(value) || indeterminate.contains(value),
            "{value} was never sent"
        );
    }
    for (value, offset) in &acknowledged {
        assert_eq!(
            seen.get(value.as_str()),
            Some(offset),
            "acknowledged {value} at {offset} is stored there"
        );
    }
    eprintln!(
        "killed node {killed}: {} acknowledged ({} after the kill), {} indeterminate, {} stored",
        acknowledged.len(),
        acknowledged_after_kill,
        indeterminate.len(),
        reference.len()
    );
}
