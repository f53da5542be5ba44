//! The `raftlog` binary's client commands against three real nodes on loopback: the CLI
//! contract end to end — topic admin, produce with `--print-offsets`, consume from every
//! node's address in both formats, `--from`/`--count`, group resume, `--follow` until
//! SIGTERM, and the errors for unknown topics and partitions.

mod cli_support;
mod real_cluster;

use std::collections::BTreeMap;
use std::time::Duration;

use cli_support::{json_field, raftlog, read_lines, spawn, terminate};
use real_cluster::RealCluster;

const RECORDS: usize = 100_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_contract_holds_on_a_three_node_cluster() {
    let nodes = RealCluster::start(3).await;
    let bootstrap = nodes.address(0);

    let run = raftlog(
        &bootstrap,
        &["topic", "create", "orders", "--partitions", "3"],
        "",
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.stdout,
        "created topic orders (3 partitions, replication factor 3)\n"
    );
    let run = raftlog(&bootstrap, &["topic", "list"], "").await;
    assert_eq!((run.code, run.stdout.as_str()), (0, "orders\n"), "{run:?}");
    let run = raftlog(&bootstrap, &["topic", "describe", "orders"], "").await;
    assert_eq!(run.code, 0, "{run:?}");
    let rows: Vec<&str> = run
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("PARTITION"))
        .skip(1)
        .collect();
    assert_eq!(rows.len(), 3, "{run:?}");
    assert!(
        rows.iter().all(|row| !row.contains("none")),
        "every partition has a leader: {run:?}"
    );

    // Produce: keyed lines, offsets printed in input order.
    let input: String = (0..RECORDS)
        .map(|i| format!("k{}|value-{i}\n", i % 97))
        .collect();
    let run = raftlog(
        &bootstrap,
        &[
            "produce",
            "orders",
            "--key-separator",
            "|",
            "--print-offsets",
        ],
        &input,
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let offsets: Vec<(String, String)> = run
        .stdout
        .lines()
        .map(|line| {
            let (p, o) = line.split_once(' ').expect("PARTITION OFFSET");
            (p.to_owned(), o.to_owned())
        })
        .collect();
    assert_eq!(offsets.len(), RECORDS);
    let mut expected: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut partition_of_key: BTreeMap<usize, String> = BTreeMap::new();
    for (i, (partition, offset)) in offsets.iter().enumerate() {
        let known = partition_of_key
            .entry(i % 97)
            .or_insert_with(|| partition.clone());
        assert_eq!(known, partition, "same key, same partition");
        expected.insert(
            (partition.clone(), offset.clone()),
            format!("\"value-{i}\""),
        );
    }

    // Consume everything back through every node's address: same values at the same offsets.
    for index in 0..3 {
        let run = raftlog(
            &nodes.address(index),
            &["consume", "orders", "--format", "json"],
            "",
        )
        .await;
        assert_eq!(run.code, 0, "{}", run.stderr);
        let lines: Vec<&str> = run.stdout.lines().collect();
        assert_eq!(lines.len(), RECORDS, "node {}", index + 1);
        let mut last: BTreeMap<String, u64> = BTreeMap::new();
        for line in lines {
            let partition = json_field(line, "partition").to_owned();
            let offset = json_field(line, "offset").to_owned();
            let value = json_field(line, "value");
            assert_eq!(
                expected
                    .get(&(partition.clone(), offset.clone()))
                    .map(String::as_str),
                Some(value),
                "{line}"
            );
            assert!(json_field(line, "key").starts_with("\"k"), "{line}");
            let offset: u64 = offset.parse().unwrap();
            if let Some(previous) = last.insert(partition, offset) {
                assert_eq!(offset, previous + 1, "in order, no gaps: {line}");
            }
        }
    }

    // --from and --count on one partition, in value format.
    let (partition, _) = &offsets[0];
    let run = raftlog(
        &bootstrap,
        &[
            "consume",
            "orders",
            "--partition",
            partition,
            "--from",
            "1",
            "--count",
            "2",
        ],
        "",
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    let want: Vec<String> = ["1", "2"]
        .iter()
        .map(|o| {
            expected[&(partition.clone(), o.to_string())]
                .trim_matches('"')
                .to_owned()
        })
        .collect();
    assert_eq!(run.stdout, format!("{}\n{}\n", want[0], want[1]));
    nodes.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn groups_follow_and_errors_on_a_real_cluster() {
    let nodes = RealCluster::start(3).await;
    let bootstrap = nodes.bootstrap();
    let run = raftlog(
        &bootstrap,
        &["topic", "create", "jobs", "--partitions", "2"],
        "",
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    let input: String = (0..30).map(|i| format!("job-{i}\n")).collect();
    assert_eq!(
        raftlog(&bootstrap, &["produce", "jobs"], &input).await.code,
        0
    );

    // A group resumes where it stopped: no gap, no repeat.
    let first = raftlog(
        &bootstrap,
        &["consume", "jobs", "--group", "w", "--count", "11"],
        "",
    )
    .await;
    assert_eq!(first.code, 0, "{first:?}");
    let rest = raftlog(&bootstrap, &["consume", "jobs", "--group", "w"], "").await;
    assert_eq!(rest.code, 0, "{rest:?}");
    let mut seen: Vec<&str> = first.stdout.lines().chain(rest.stdout.lines()).collect();
    assert_eq!(seen.len(), 30, "{first:?} {rest:?}");
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 30);

    // --follow tails new commits until SIGTERM, then exits 0. The group members above may
    // have left fetches parked (until their wait ends); only the follower's may count.
    nodes
        .wait_until("no fetch is parked", |c| c.fetch_waiters("jobs") == 0)
        .await;
    let mut follower = spawn(
        &bootstrap,
        &["consume", "jobs", "--from", "latest", "--follow"],
    );
    // A parked fetch means the consumer has resolved `latest` on every partition (it does
    // so before its first fetch), so what is produced next is after its start.
    nodes
        .wait_until("the follower's first parked fetch", |c| {
            c.fetch_waiters("jobs") > 0
        })
        .await;
    let mut stdout = tokio::io::BufReader::new(follower.stdout.take().unwrap());
    assert_eq!(
        raftlog(
            &bootstrap,
            &["produce", "jobs", "--partition", "1"],
            "late-1\nlate-2\n"
        )
        .await
        .code,
        0
    );
    let tailed = read_lines(&mut stdout, 2).await;
    let followed = terminate(follower).await;
    let mut rest = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut rest)
        .await
        .unwrap();
    assert_eq!(
        (followed.code, tailed.as_str(), rest.as_str()),
        (0, "late-1\nlate-2\n", ""),
        "{followed:?}"
    );

    // Errors: a message on stderr, a documented exit code, no panic.
    let cases: [(&[&str], i32, &str); 4] = [
        (&["consume", "missing"], 3, "unknown topic \"missing\""),
        (
            &["produce", "jobs", "--partition", "9"],
            3,
            "has no partition 9",
        ),
        (&["topic", "describe", "missing"], 3, "unknown topic"),
        (&["topic", "create", "jobs"], 1, "TOPIC_EXISTS"),
    ];
    for (args, code, message) in cases {
        let run = raftlog(&bootstrap, args, "x\n").await;
        assert_eq!(run.code, code, "{args:?}: {run:?}");
        assert!(run.stderr.contains(message), "{args:?}: {run:?}");
        assert!(!run.stderr.contains("panicked"), "{run:?}");
    }
    let run = raftlog(&bootstrap, &["topic", "delete", "jobs"], "").await;
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (0, "deleted topic jobs\n"),
        "{run:?}"
    );
    nodes.shutdown().await;
}

/// `cluster status --json` parsed, bounded by the command's own bound.
async fn cluster_status(bootstrap: &str) -> serde_json::Value {
    let run = raftlog(bootstrap, &["cluster", "status", "--json"], "").await;
    assert_eq!(run.code, 0, "{run:?}");
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {run:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_status_shows_leaders_high_watermarks_and_lag() {
    let mut nodes = RealCluster::start(3).await;
    let bootstrap = nodes.bootstrap();
    let run = raftlog(
        &bootstrap,
        &["topic", "create", "s", "--partitions", "2"],
        "",
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    for (partition, count) in [("0", 30), ("1", 20)] {
        let input: String = (0..count).map(|i| format!("r{i}\n")).collect();
        let run = raftlog(
            &bootstrap,
            &["produce", "s", "--partition", partition],
            &input,
        )
        .await;
        assert_eq!(run.code, 0, "{run:?}");
    }

    // Followers catch up within a few heartbeats; wait (bounded) until the leader says so.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status = cluster_status(&bootstrap).await;
        let settled = status["partitions"].as_array().unwrap().iter().all(|p| {
            let progress = p["replica_progress"].as_array().unwrap();
            progress.len() == 3 && progress.iter().all(|r| r["lag_entries"] == 0)
        });
        if settled {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "followers never caught up: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let listed = status["nodes"].as_array().unwrap();
    assert_eq!(listed.len(), 3, "{status}");
    assert!(listed.iter().all(|n| n["reachable"] == true), "{status}");
    assert_ne!(status["metadata_leader"], 0, "{status}");
    let partitions = status["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 2, "{status}");
    for (p, produced) in partitions.iter().zip([30, 20]) {
        assert_eq!(p["topic"], "s", "{status}");
        assert_ne!(p["leader"], 0, "{status}");
        assert!(p["term"].as_u64().unwrap() > 0, "{status}");
        assert_eq!(p["high_watermark"], produced, "{status}");
        assert_eq!(p["replicas"].as_array().unwrap().len(), 3, "{status}");
    }

    // The table says the same for people.
    let run = raftlog(&bootstrap, &["cluster", "status"], "").await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.starts_with("nodes: 3 (3 reachable)\n"),
        "{run:?}"
    );
    let rows: Vec<Vec<&str>> = run
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("TOPIC"))
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "{run:?}");
    for (row, produced) in rows.iter().zip(["30", "20"]) {
        assert_eq!(row[6], produced, "{run:?}");
        assert_ne!(row[2], "none", "{run:?}");
    }

    // A stopped node is reported, not fatal; the others still describe every partition.
    let stopped = nodes.nodes.remove(2);
    let stopped_address = stopped.client_address.to_string();
    stopped.shutdown().await;
    let status = cluster_status(&bootstrap).await;
    let node3 = &status["nodes"].as_array().unwrap()[2];
    assert_eq!(
        (&node3["client_address"], &node3["reachable"]),
        (
            &serde_json::Value::from(stopped_address),
            &serde_json::Value::from(false)
        ),
        "{status}"
    );
    for (p, produced) in status["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .zip([30, 20])
    {
        assert_eq!(p["high_watermark"], produced, "{status}");
    }
    nodes.shutdown().await;

    // No cluster at all: a clear message and exit 4.
    let run = raftlog(
        &bootstrap,
        &["cluster", "status", "--connect-timeout-ms", "500"],
        "",
    )
    .await;
    assert_eq!(run.code, 4, "{run:?}");
    assert!(run.stderr.contains("reaching the cluster"), "{run:?}");
    assert!(!run.stderr.contains("panicked"), "{run:?}");
}

/// `partition move --wait` on four real nodes: the partition ends on the new replicas with
/// every record, exactly once and in order, served by the node that joined it; the node
/// that left has deleted its copy; the errors are the documented ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_moves_to_another_node_with_every_record() {
    let nodes = RealCluster::start(4).await;
    let bootstrap = nodes.bootstrap();
    let run = raftlog(
        &bootstrap,
        &["topic", "create", "moving", "--replication-factor", "3"],
        "",
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    let before: String = (0..50).map(|i| format!("before-{i}\n")).collect();
    let run = raftlog(&bootstrap, &["produce", "moving"], &before).await;
    assert_eq!(run.code, 0, "{run:?}");

    let replicas_of = |nodes: &RealCluster| -> Vec<u64> {
        let mut on: Vec<u64> = nodes
            .nodes
            .iter()
            .filter(|d| {
                d.node
                    .local_partitions()
                    .iter()
                    .any(|p| p.topic == "moving")
            })
            .map(|d| d.node.id())
            .collect();
        on.sort_unstable();
        on
    };
    let old = replicas_of(&nodes);
    assert_eq!(old.len(), 3, "{old:?}");
    let joining = (1..=4).find(|id| !old.contains(id)).unwrap();
    let leaving = old[0];
    let new: Vec<u64> = old[1..].iter().copied().chain([joining]).collect();
    let list = new.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    let run = raftlog(
        &bootstrap,
        &[
            "partition",
            "move",
            "moving",
            "0",
            "--replicas",
            &list,
            "--wait",
        ],
        "",
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.ends_with(&format!("moved moving/0 to {list}\n")),
        "{run:?}"
    );
    nodes
        .wait_until("the node left deletes its replica", |c| {
            let mut on = replicas_of(c);
            on.sort_unstable();
            let mut wanted = new.clone();
            wanted.sort_unstable();
            on == wanted
        })
        .await;
    let left = &nodes.nodes[leaving as usize - 1];
    let dir = left.node.config().data_dir.clone();
    let leftover: Vec<String> = walk(&dir)
        .into_iter()
        .filter(|path| path.contains("moving"))
        .collect();
    assert!(leftover.is_empty(), "node {leaving} kept {leftover:?}");
    let run = raftlog(&bootstrap, &["partition", "moves"], "").await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout.lines().count(), 1, "only the header: {run:?}");

    // The joined node holds every record; more are produced and read back once, in order.
    let joined = &nodes.nodes[joining as usize - 1];
    let local = joined.node.local_partitions();
    let status = local
        .iter()
        .find(|p| p.topic == "moving")
        .unwrap()
        .handle
        .status();
    assert!(status.voters.contains(&joining) && !status.voters.contains(&leaving));
    let after: String = (0..50).map(|i| format!("after-{i}\n")).collect();
    let run = raftlog(&bootstrap, &["produce", "moving"], &after).await;
    assert_eq!(run.code, 0, "{run:?}");
    let run = raftlog(
        &joined.client_address.to_string(),
        &["consume", "moving"],
        "",
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout, format!("{before}{after}"));

    // Errors: a message, a documented exit code.
    let cases: [(&[&str], i32, &str); 3] = [
        (
            &["partition", "move", "moving", "0", "--replicas", "1,9"],
            2,
            "node 9",
        ),
        (
            &["partition", "move", "missing", "0", "--replicas", "1"],
            3,
            "unknown topic",
        ),
        (
            &["partition", "move-cancel", "moving", "0"],
            2,
            "is not moving",
        ),
    ];
    for (args, code, message) in cases {
        let run = raftlog(&bootstrap, args, "").await;
        assert_eq!(run.code, code, "{args:?}: {run:?}");
        assert!(run.stderr.contains(message), "{args:?}: {run:?}");
    }
    nodes.shutdown().await;
}

/// Every path under `dir`, recursively.
fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        out.push(path.display().to_string());
        if path.is_dir() {
            out.extend(walk(&path));
        }
    }
    out
}

/// `consume --from-time MS` starts each partition at its first record with a timestamp at or
/// after MS, as the records' own timestamps (`--format json`) say, and refuses `--from`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consume_from_time_starts_at_the_first_record_at_or_after_it() {
    let nodes = RealCluster::start(3).await;
    let bootstrap = nodes.bootstrap();
    let run = raftlog(
        &bootstrap,
        &["topic", "create", "times", "--partitions", "2"],
        "",
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    // Three produce runs some milliseconds apart, so timestamps differ between them.
    for round in 0..3 {
        let input: String = (0..20).map(|i| format!("r{round}-{i}\n")).collect();
        assert_eq!(
            raftlog(&bootstrap, &["produce", "times"], &input)
                .await
                .code,
            0
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let all = raftlog(&bootstrap, &["consume", "times", "--format", "json"], "").await;
    assert_eq!(all.code, 0, "{all:?}");
    let records: Vec<(u32, u64, i64)> = all
        .stdout
        .lines()
        .map(|line| {
            (
                json_field(line, "partition").parse().unwrap(),
                json_field(line, "offset").parse().unwrap(),
                json_field(line, "timestamp_ms").parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(records.len(), 60);
    let mut stamps: Vec<i64> = records.iter().map(|r| r.2).collect();
    stamps.sort_unstable();
    let from = stamps[30];
    let expected: Vec<(u32, u64)> = {
        let mut starts: BTreeMap<u32, u64> = BTreeMap::new();
        let mut in_order = records.clone();
        in_order.sort_unstable();
        for (partition, offset, stamp) in in_order {
            if stamp >= from {
                starts.entry(partition).or_insert(offset);
            }
        }
        let mut expected: Vec<(u32, u64)> = records
            .iter()
            .filter(|(p, o, _)| starts.get(p).is_some_and(|start| o >= start))
            .map(|(p, o, _)| (*p, *o))
            .collect();
        expected.sort_unstable();
        expected
    };
    let from_text = from.to_string();
    let run = raftlog(
        &bootstrap,
        &[
            "consume",
            "times",
            "--from-time",
            &from_text,
            "--format",
            "json",
        ],
        "",
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    let mut got: Vec<(u32, u64)> = run
        .stdout
        .lines()
        .map(|line| {
            (
                json_field(line, "partition").parse().unwrap(),
                json_field(line, "offset").parse().unwrap(),
            )
        })
        .collect();
    got.sort_unstable();
    assert_eq!(got, expected);
    assert!(!got.is_empty() && got.len() < 60, "{got:?}");
    let run = raftlog(
        &bootstrap,
        &[
            "consume",
            "times",
            "--from-time",
            &from_text,
            "--from",
            "earliest",
        ],
        "",
    )
    .await;
    assert_eq!(
        run.code, 2,
        "--from-time and --from do not go together: {run:?}"
    );
}
