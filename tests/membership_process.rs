//! A cluster that changes shape under load, on real `raftlog serve` processes: three first
//! voters, a producer writing all along, node 4 joins (`serve --join`) and every partition is
//! moved to include it, node 1 is decommissioned and then killed; node 5 joins and the
//! metadata leader is decommissioned and killed. Every acknowledged record must be readable
//! from the nodes left, exactly once, at its acknowledged offset, in one dense order.

mod cli_support;
mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cli_support::{raftlog, Run};
use raftlog::client::{ConnectOptions, Connection};
use raftlog::proto::envelope::Body;
use raftlog::proto::{FetchRequest, RecordBatch};
use support::client::{produce_one, read_partition, scrape_metrics, Client, Outcome};
use support::cluster::{ClusterOptions, ProcessCluster};
use tokio::time::{sleep, timeout};

const TOPIC: &str = "shape";
const PARTITIONS: u32 = 3;

/// Longest any one step (a join, a move, a decommission) may take.
const STEP_BOUND: Duration = Duration::from_secs(120);

/// What the producer saw: acknowledged (partition, value) → offset, and values whose fate
/// is unknown (a timeout or a lost connection: they may or may not be stored).
#[derive(Default, Clone)]
struct History {
    acknowledged: BTreeMap<(u32, String), u64>,
    unknown: HashSet<String>,
}

/// Produces to every partition in turn until `stop`, recording each outcome.
async fn keep_producing(
    addresses: Vec<String>,
    history: Arc<Mutex<History>>,
    stop: Arc<AtomicBool>,
) {
    let mut client = Client::new(addresses);
    for i in 0u64.. {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let partition = (i % u64::from(PARTITIONS)) as u32;
        let value = format!("v{i}");
        let outcome = client
            .send_to_any(produce_one(TOPIC, partition, &value))
            .await;
        let mut history = history.lock().unwrap();
        match outcome {
            Outcome::Ok(Body::ProduceResponse(response)) => {
                history
                    .acknowledged
                    .insert((partition, value), response.base_offset);
            }
            Outcome::Ok(other) => panic!("unexpected answer {other:?}"),
            Outcome::Indeterminate | Outcome::Refused(_) | Outcome::Failed(_) => {
                history.unknown.insert(value);
            }
        }
    }
}

/// Every record of `partition` that `address` serves, as (offset, value), up to its high
/// watermark.
async fn read_from(address: &str, partition: u32) -> Vec<(u64, String)> {
    let connection = Connection::connect(address, &ConnectOptions::default())
        .await
        .unwrap();
    read_partition(&connection, TOPIC, partition).await.0
}

/// `cluster nodes --json` as (id → (state, replicas)).
async fn nodes(bootstrap: &str) -> HashMap<u64, (String, u64)> {
    let run = raftlog(bootstrap, &["cluster", "nodes", "--json"], "").await;
    assert_eq!(run.code, 0, "{run:?}");
    let rows: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .map(|row| {
            let state = row["state"].as_str().unwrap().to_owned();
            let replicas = row["replicas"].as_u64().unwrap();
            (row["id"].as_u64().unwrap(), (state, replicas))
        })
        .collect()
}

async fn wait_for(what: &str, mut ready: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !ready().await {
        assert!(
            started.elapsed() < STEP_BOUND,
            "timed out waiting until {what}"
        );
        sleep(Duration::from_millis(200)).await;
    }
}

/// Starts node `id` (it joins: its configuration names the first voters) and waits until
/// `cluster nodes` through `bootstrap` lists it active.
async fn join(cluster: &mut ProcessCluster, id: u64, bootstrap: &str) {
    cluster.spawn(id);
    wait_for(&format!("node {id} is a node of the cluster"), async || {
        nodes(bootstrap)
            .await
            .get(&id)
            .is_some_and(|(state, _)| state == "active")
    })
    .await;
}

/// `cluster decommission ID --wait`: it must end with the node removed.
async fn decommission(bootstrap: &str, id: u64) {
    let id = id.to_string();
    let run = timeout(
        STEP_BOUND,
        raftlog(bootstrap, &["cluster", "decommission", &id, "--wait"], ""),
    )
    .await
    .expect("decommission finished in time");
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.ends_with(&format!("node {id}: removed\n")),
        "{run:?}"
    );
}

/// The node leading the metadata group, as `cluster status --json` reports it.
async fn metadata_leader(bootstrap: &str) -> u64 {
    let run = raftlog(bootstrap, &["cluster", "status", "--json"], "").await;
    assert_eq!(run.code, 0, "{run:?}");
    let status: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    status["metadata_leader"].as_u64().unwrap()
}

/// Checks that `address` holds every acknowledged record once, at its offset, with dense
/// offsets; once the producer has stopped (`complete`), also that it holds only values
/// that were sent.
async fn assert_holds_every_acknowledged_record(address: &str, history: &History, complete: bool) {
    let sent = |value: &str| {
        history.unknown.contains(value)
            || (0..PARTITIONS).any(|p| history.acknowledged.contains_key(&(p, value.to_owned())))
    };
    for partition in 0..PARTITIONS {
        let wanted = history
            .acknowledged
            .iter()
            .filter(|((p, _), _)| *p == partition)
            .map(|(_, offset)| offset + 1)
            .max()
            .unwrap_or(0);
        let mut stored = Vec::new();
        wait_for(
            &format!("{address} serves partition {partition} to {wanted}"),
            async || {
                stored = read_from(address, partition).await;
                stored.len() as u64 >= wanted
            },
        )
        .await;
        let offsets: Vec<u64> = stored.iter().map(|(o, _)| *o).collect();
        assert_eq!(
            offsets,
            (0..stored.len() as u64).collect::<Vec<_>>(),
            "partition {partition}: offsets are dense"
        );
        let mut seen: HashMap<&str, u64> = HashMap::new();
        for (offset, value) in &stored {
            assert!(
                seen.insert(value, *offset).is_none(),
                "partition {partition}: {value} stored twice"
            );
            assert!(
                !complete || sent(value),
                "partition {partition}: {value} was never sent"
            );
        }
        for ((p, value), offset) in &history.acknowledged {
            if *p == partition {
                assert_eq!(
                    seen.get(value.as_str()),
                    Some(offset),
                    "partition {partition}: acknowledged {value} is stored at {offset} on {address}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_join_and_leave_under_load_and_no_acknowledged_record_is_lost() {
    let mut cluster = ProcessCluster::prepare(ClusterOptions {
        nodes: 5,
        founders: Some(3),
        ..ClusterOptions::default()
    });
    for id in 1..=3 {
        cluster.spawn(id);
    }
    let addresses = cluster.addresses();
    let founders = addresses[..3].join(",");
    let partitions = PARTITIONS.to_string();
    let run = raftlog(
        &founders,
        &[
            "topic",
            "create",
            TOPIC,
            "--partitions",
            &partitions,
            "--replication-factor",
            "3",
        ],
        "",
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");

    let history = Arc::new(Mutex::new(History::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let producer = tokio::spawn(keep_producing(
        addresses.clone(),
        history.clone(),
        stop.clone(),
    ));
    sleep(Duration::from_secs(1)).await;

    // Node 4 joins with only the first voters' client addresses.
    join(&mut cluster, 4, &founders).await;

    // Every partition moves to include node 4, each giving up a different first voter.
    for (partition, replicas) in [(0, "2,3,4"), (1, "1,3,4"), (2, "1,2,4")] {
        let run = raftlog(
            &founders,
            &[
                "partition",
                "move",
                TOPIC,
                &partition.to_string(),
                "--replicas",
                replicas,
                "--wait",
            ],
            "",
        )
        .await;
        assert_eq!(run.code, 0, "{run:?}");
    }

    // Node 1 is decommissioned (its two replicas and its metadata seat move), then killed.
    decommission(&founders, 1).await;
    cluster.kill(1);
    let survivors = addresses[1..].join(",");
    let listed = nodes(&survivors).await;
    assert_eq!(listed[&1], ("removed".to_owned(), 0), "{listed:?}");
    let snapshot = history.lock().unwrap().clone();
    assert_holds_every_acknowledged_record(&addresses[3], &snapshot, false).await;

    // Node 5 joins; the metadata leader is decommissioned and killed.
    join(&mut cluster, 5, &survivors).await;
    let leader = metadata_leader(&survivors).await;
    assert!((2..=4).contains(&leader), "metadata leader {leader}");
    decommission(&survivors, leader).await;
    cluster.kill(leader);
    let left: Vec<String> = (2..=5)
        .filter(|&id| id != leader)
        .map(|id| addresses[id as usize - 1].clone())
        .collect();
    let new_leader = metadata_leader(&left.join(",")).await;
    assert!(
        new_leader != leader && new_leader != 1,
        "a remaining node leads the metadata: {new_leader}"
    );

    sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    timeout(STEP_BOUND, producer).await.unwrap().unwrap();
    let history = Arc::try_unwrap(history).ok().unwrap().into_inner().unwrap();
    assert!(
        history.acknowledged.len() > 100,
        "the producer kept writing: {} acknowledged",
        history.acknowledged.len()
    );
    for address in &left {
        assert_holds_every_acknowledged_record(address, &history, true).await;
    }

    // A node restarted after the cluster changed shape (a first voter if one is left, whose
    // configuration names only first voters) must learn from its disk and its peers'
    // handshakes who joined, or no leader that joined later could reach it.
    let survivors: Vec<u64> = (2..=5).filter(|&id| id != leader).collect();
    let restarted = survivors[0];
    cluster.kill(restarted);
    let mut client = Client::new(addresses.clone());
    let mut written = Vec::new();
    for partition in 0..PARTITIONS {
        let value = format!("while-{restarted}-was-down-{partition}");
        let outcome = client
            .send_to_any(produce_one(TOPIC, partition, &value))
            .await;
        let Outcome::Ok(Body::ProduceResponse(response)) = outcome else {
            panic!("write while node {restarted} is down: {outcome:?}");
        };
        written.push((partition, response.base_offset, value));
    }
    cluster.spawn(restarted);
    let restarted_address = &addresses[restarted as usize - 1];
    wait_for(
        &format!("node {restarted} serves what was written while it was down"),
        async || {
            let mut client = Client::new(vec![restarted_address.clone()]);
            for (partition, offset, value) in &written {
                if !serves(&mut client, *partition, *offset, value).await {
                    return false;
                }
            }
            true
        },
    )
    .await;

    // Ids are never reused: a removed node and a first voter cannot join again; `serve`
    // says why and exits 1.
    let join = left.join(",");
    for (id, reason) in [(1, "was removed"), (3, "is a first voter")] {
        let dir = cluster.dir().join(format!("rejoin-{id}"));
        let addresses: Vec<String> = (0..3)
            .map(|_| support::cluster::free_address().to_string())
            .collect();
        let run = raftlog(
            &join,
            &[
                "serve",
                "--id",
                &id.to_string(),
                "--data-dir",
                dir.to_str().unwrap(),
                "--listen",
                &addresses[0],
                "--peer-listen",
                &addresses[1],
                "--metrics-listen",
                &addresses[2],
                "--join",
                &join,
            ],
            "",
        )
        .await;
        assert_eq!(run.code, 1, "{run:?}");
        assert!(run.stderr.contains(reason), "{run:?}");
    }
    eprintln!(
        "membership under load: {} acknowledged, {} unknown, metadata leader {leader} \
         decommissioned, {new_leader} leads now",
        history.acknowledged.len(),
        history.unknown.len()
    );
}

/// Whether the node behind `client` serves `value` at `offset` of `partition` (it may not
/// have caught up yet, or not have started the replica).
async fn serves(client: &mut Client, partition: u32, offset: u64, value: &str) -> bool {
    let fetch = Body::Fetch(FetchRequest {
        topic: TOPIC.into(),
        partition,
        offset,
        max_bytes: 1 << 16,
        max_wait_ms: 0,
        min_bytes: 1,
    });
    let Outcome::Ok(Body::FetchResponse(fetched)) = client.send(0, fetch).await else {
        return false;
    };
    let Some(stored) = fetched.batches.first() else {
        return false;
    };
    let batch: RecordBatch = prost::Message::decode(stored.batch.clone()).unwrap();
    let first = raftlog::batch::decode_records(&batch).next();
    stored.base_offset == offset && first.is_some_and(|r| r.unwrap().value == value.as_bytes())
}

/// The sum of `metric` over every series on a node's metrics listener.
async fn metric_sum(address: std::net::SocketAddr, metric: &str) -> f64 {
    scrape_metrics(address)
        .await
        .lines()
        .filter(|line| line.starts_with(&format!("{metric}{{")))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A move's catch-up traffic waits for the node-wide recovery rate while producers keep
/// committing; raising the rate by SIGHUP (no restart) lets the move finish, with every
/// record on the new replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_waits_for_the_recovery_rate_and_the_rate_changes_without_a_restart() {
    let slow = "[raft]\nrecovery_bytes_per_second = 65536\n";
    let mut cluster = ProcessCluster::prepare(ClusterOptions {
        nodes: 4,
        extra_config: slow.into(),
        ..ClusterOptions::default()
    });
    for id in 1..=4 {
        cluster.spawn(id);
    }
    let bootstrap = cluster.addresses().join(",");
    let run = raftlog(
        &bootstrap,
        &["topic", "create", "slow", "--replication-factor", "3"],
        "",
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    let record = "x".repeat(1000);
    let before: String = (0..1000).map(|i| format!("{i}-{record}\n")).collect();
    // Batches of about 4 KiB, so that the log is many entries, as under real traffic.
    let run = raftlog(
        &bootstrap,
        &["produce", "slow", "--batch-bytes-max", "4096"],
        &before,
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");

    let status = raftlog(&bootstrap, &["cluster", "status", "--json"], "").await;
    let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    let replicas: Vec<u64> = status["partitions"][0]["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_u64().unwrap())
        .collect();
    let joining = (1..=4).find(|id| !replicas.contains(id)).unwrap();
    let target: Vec<String> = replicas[1..]
        .iter()
        .chain([&joining])
        .map(u64::to_string)
        .collect();
    let target = target.join(",");
    let run = raftlog(
        &bootstrap,
        &["partition", "move", "slow", "0", "--replicas", &target],
        "",
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");

    // About a megabyte at 64 KiB/s: the learner is held back, the voters are not.
    wait_for("a catch-up send waited for the recovery rate", async || {
        let mut throttled = 0.0;
        for id in 1..=4 {
            throttled += metric_sum(
                cluster.metrics_address(id),
                "raftlog_recovery_throttled_total",
            )
            .await;
        }
        throttled > 0.0
    })
    .await;
    // `partition moves` shows the progress the leader estimates: the new replica lacks part
    // of a log of about a megabyte.
    let mut progress = serde_json::Value::Null;
    wait_for("the leader reports the move's progress", async || {
        let run = raftlog(&bootstrap, &["partition", "moves", "--json"], "").await;
        assert_eq!(run.code, 0, "{run:?}");
        progress = serde_json::from_str(run.stdout.lines().next().unwrap_or("null")).unwrap();
        progress["phase"] == "catching_up" && progress["bytes_remaining"].as_u64() > Some(0)
    })
    .await;
    let total =
        progress["bytes_moved"].as_u64().unwrap() + progress["bytes_remaining"].as_u64().unwrap();
    assert!(total >= 1_000_000, "{progress}");
    let during: String = (0..50).map(|i| format!("during-{i}\n")).collect();
    let run = raftlog(&bootstrap, &["produce", "slow"], &during).await;
    assert_eq!(
        run.code, 0,
        "producers commit during a throttled move: {run:?}"
    );

    cluster.set_extra_config("[raft]\nrecovery_bytes_per_second = 0\n");
    for id in 1..=4 {
        cluster.reload(id);
    }
    let run = raftlog(
        &bootstrap,
        &[
            "partition",
            "move",
            "slow",
            "0",
            "--replicas",
            &target,
            "--wait",
        ],
        "",
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    let mut sent = 0.0;
    for id in 1..=4 {
        sent += metric_sum(cluster.metrics_address(id), "raftlog_recovery_bytes_total").await;
    }
    assert!(
        sent >= 1_000_000.0,
        "the learner was sent the log: {sent} bytes"
    );
    let joined = cluster.addresses()[joining as usize - 1].clone();
    let run = raftlog(&joined, &["consume", "slow"], "").await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout, format!("{before}{during}"));
}

/// The replicas of partition `partition` of `topic`, as `cluster status --json` reports them.
async fn replicas_of(bootstrap: &str, topic: &str, partition: u64) -> Vec<u64> {
    let run = raftlog(bootstrap, &["cluster", "status", "--json"], "").await;
    assert_eq!(run.code, 0, "{run:?}");
    let status: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let entry = status["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["topic"] == topic && p["partition"] == partition)
        .unwrap_or_else(|| panic!("{topic}/{partition} in {status}"))
        .clone();
    entry["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_u64().unwrap())
        .collect()
}

/// `partition move TOPIC PARTITION --replicas …` without waiting.
async fn order_move(bootstrap: &str, topic: &str, partition: u32, replicas: &[u64]) -> Run {
    let replicas: Vec<String> = replicas.iter().map(u64::to_string).collect();
    let partition = partition.to_string();
    raftlog(
        bootstrap,
        &[
            "partition",
            "move",
            topic,
            &partition,
            "--replicas",
            &replicas.join(","),
        ],
        "",
    )
    .await
}

/// The metadata leader admits a move only when it can finish and while fewer than
/// `raft.moves_max` are under way; a cancel always passes, and a refusal changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_that_cannot_finish_or_exceed_the_cap_are_refused_and_a_cancel_is_not() {
    // A slow catch-up keeps the first move under way while the others are ordered.
    let config = "[raft]\nmoves_max = 1\nrecovery_bytes_per_second = 65536\n";
    let mut cluster = ProcessCluster::prepare(ClusterOptions {
        nodes: 4,
        extra_config: config.into(),
        ..ClusterOptions::default()
    });
    for id in 1..=4 {
        cluster.spawn(id);
    }
    let bootstrap = cluster.addresses().join(",");
    let run = raftlog(
        &bootstrap,
        &[
            "topic",
            "create",
            "gate",
            "--partitions",
            "2",
            "--replication-factor",
            "3",
        ],
        "",
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    let record = "x".repeat(1000);
    let records: String = (0..1000).map(|i| format!("{i}-{record}\n")).collect();
    let run = raftlog(
        &bootstrap,
        &["produce", "gate", "--partition", "0"],
        &records,
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");

    let first = replicas_of(&bootstrap, "gate", 0).await;
    let spare = (1..=4).find(|id| !first.contains(id)).unwrap();
    let target = [&first[1..], &[spare]].concat();
    let run = order_move(&bootstrap, "gate", 0, &target).await;
    assert_eq!(run.code, 0, "{run:?}");

    let second = replicas_of(&bootstrap, "gate", 1).await;
    let spare = (1..=4).find(|id| !second.contains(id)).unwrap();
    let run = order_move(&bootstrap, "gate", 1, &[&second[1..], &[spare]].concat()).await;
    assert_eq!(
        run.code, 2,
        "a second move is beyond moves_max = 1: {run:?}"
    );
    assert!(run.stderr.contains("raft.moves_max"), "{run:?}");
    assert_eq!(replicas_of(&bootstrap, "gate", 1).await, second);

    let run = raftlog(&bootstrap, &["partition", "move-cancel", "gate", "0"], "").await;
    assert_eq!(run.code, 0, "a cancel is never refused: {run:?}");
    wait_for("the cancelled move has ended", async || {
        let run = raftlog(&bootstrap, &["partition", "moves", "--json"], "").await;
        run.code == 0 && run.stdout.trim().is_empty()
    })
    .await;
    assert_eq!(replicas_of(&bootstrap, "gate", 0).await, first);

    // With a replica of partition 1 down (never the metadata leader, which judges), a move
    // to that node alone and one with no live majority among its targets are refused.
    let leader = metadata_leader(&bootstrap).await;
    let down = *second.iter().find(|&&id| id != leader).unwrap();
    let alive: Vec<u64> = (1..=4).filter(|&id| id != down).collect();
    cluster.kill(down);
    let alive_bootstrap: Vec<String> = alive
        .iter()
        .map(|&id| cluster.addresses()[id as usize - 1].clone())
        .collect();
    let alive_bootstrap = alive_bootstrap.join(",");
    let other = *alive.iter().find(|&&id| id != leader).unwrap();
    // Three election timeouts (3 s by default) of silence make a node count as down.
    sleep(Duration::from_secs(4)).await;
    let run = order_move(&alive_bootstrap, "gate", 1, &[down]).await;
    assert_eq!(run.code, 2, "the only target is down: {run:?}");
    assert!(run.stderr.contains("heard from"), "{run:?}");
    let run = order_move(&alive_bootstrap, "gate", 1, &[down, other]).await;
    assert_eq!(run.code, 2, "one of two targets is live: {run:?}");
    assert!(run.stderr.contains("heard from"), "{run:?}");
    // A move away from the dead node, to live ones, is what an operator needs, and it passes.
    let replacement: Vec<u64> = second
        .iter()
        .map(|&id| {
            if id == down {
                *alive.iter().find(|a| !second.contains(a)).unwrap()
            } else {
                id
            }
        })
        .collect();
    let target: Vec<String> = replacement.iter().map(u64::to_string).collect();
    let target = target.join(",");
    let args = [
        "partition",
        "move",
        "gate",
        "1",
        "--replicas",
        &target,
        "--wait",
    ];
    let run = raftlog(&alive_bootstrap, &args, "");
    let run = timeout(STEP_BOUND, run)
        .await
        .expect("the move finished in time");
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(replicas_of(&alive_bootstrap, "gate", 1).await, replacement);
}
