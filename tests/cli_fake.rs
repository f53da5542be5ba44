//! The `raftlog` binary's client commands against a fake cluster (real TCP and wire protocol,
//! in-memory logs): output formats, exit codes and error messages of the CLI contract.

mod cli_support;
mod fake_cluster;

use std::time::Duration;

use cli_support::{raftlog, spawn, terminate};
use fake_cluster::FakeCluster;

async fn cluster_with_topic(topic: &str, partitions: &str) -> FakeCluster {
    let fake = FakeCluster::start(3, 1).await;
    let run = raftlog(
        &fake.bootstrap(),
        &["topic", "create", topic, "--partitions", partitions],
        "",
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    fake
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_commands_create_list_describe_and_delete() {
    let fake = FakeCluster::start(3, 2).await;
    let bootstrap = fake.bootstrap();
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
    let run = raftlog(&bootstrap, &["topic", "create", "orders"], "").await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("TOPIC_EXISTS"), "{run:?}");
    let run = raftlog(
        &bootstrap,
        &["topic", "create", "orders", "--if-not-exists"],
        "",
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    let run = raftlog(&bootstrap, &["topic", "list"], "").await;
    assert_eq!((run.code, run.stdout.as_str()), (0, "orders\n"));
    let run = raftlog(&bootstrap, &["topic", "describe", "orders"], "").await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("PARTITION  LEADER"), "{run:?}");
    assert_eq!(
        run.stdout.lines().filter(|l| l.starts_with("2 ")).count(),
        1
    );
    let run = raftlog(&bootstrap, &["topic", "describe", "nope"], "").await;
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.stderr.contains("unknown topic \"nope\""), "{run:?}");
    let run = raftlog(&bootstrap, &["topic", "delete", "orders"], "").await;
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (0, "deleted topic orders\n")
    );
    let run = raftlog(&bootstrap, &["topic", "list"], "").await;
    assert_eq!((run.code, run.stdout.as_str()), (0, ""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_prints_offsets_in_input_order_and_consume_prints_json() {
    let fake = cluster_with_topic("events", "2").await;
    let bootstrap = fake.bootstrap();
    let input = "a:first\nb:second\na:third\nno key\n";
    let run = raftlog(
        &bootstrap,
        &[
            "produce",
            "events",
            "--key-separator",
            ":",
            "--print-offsets",
        ],
        input,
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    let lines: Vec<(u32, u64)> = run
        .stdout
        .lines()
        .map(|l| {
            let (p, o) = l.split_once(' ').unwrap();
            (p.parse().unwrap(), o.parse().unwrap())
        })
        .collect();
    assert_eq!(lines.len(), 4, "{run:?}");
    // Same key, same partition, increasing offsets.
    assert_eq!(lines[0].0, lines[2].0);
    assert!(lines[2].1 > lines[0].1);

    let partition = lines[0].0.to_string();
    let run = raftlog(
        &bootstrap,
        &[
            "consume",
            "events",
            "--partition",
            &partition,
            "--format",
            "json",
        ],
        "",
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    let first = run.stdout.lines().next().unwrap();
    let prefix = format!("{{\"partition\":{partition},\"offset\":0,\"timestamp_ms\":");
    assert!(first.starts_with(&prefix), "{first}");
    assert!(
        first.ends_with(",\"key\":\"a\",\"value\":\"first\"}"),
        "{first}"
    );

    // Every record, values only; the un-keyed one too.
    let run = raftlog(&bootstrap, &["consume", "events"], "").await;
    assert_eq!(run.code, 0, "{run:?}");
    let mut values: Vec<&str> = run.stdout.lines().collect();
    values.sort_unstable();
    assert_eq!(values, ["first", "no key", "second", "third"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_honours_from_and_count() {
    let fake = cluster_with_topic("nums", "1").await;
    let bootstrap = fake.bootstrap();
    let input: String = (0..10).map(|i| format!("{i}\n")).collect();
    let run = raftlog(&bootstrap, &["produce", "nums"], &input).await;
    assert_eq!((run.code, run.stdout.as_str()), (0, ""), "{run:?}");
    let run = raftlog(
        &bootstrap,
        &["consume", "nums", "--from", "4", "--count", "3"],
        "",
    )
    .await;
    assert_eq!((run.code, run.stdout.as_str()), (0, "4\n5\n6\n"), "{run:?}");
    let run = raftlog(&bootstrap, &["consume", "nums", "--from", "latest"], "").await;
    assert_eq!((run.code, run.stdout.as_str()), (0, ""), "{run:?}");
    let run = raftlog(&bootstrap, &["consume", "nums", "--from", "11"], "").await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("OFFSET_OUT_OF_RANGE"), "{run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_resumes_where_it_stopped() {
    let fake = cluster_with_topic("jobs", "2").await;
    let bootstrap = fake.bootstrap();
    let input: String = (0..20).map(|i| format!("job-{i}\n")).collect();
    assert_eq!(
        raftlog(&bootstrap, &["produce", "jobs"], &input).await.code,
        0
    );
    let first = raftlog(
        &bootstrap,
        &["consume", "jobs", "--group", "w", "--count", "7"],
        "",
    )
    .await;
    assert_eq!(first.code, 0, "{first:?}");
    let rest = raftlog(&bootstrap, &["consume", "jobs", "--group", "w"], "").await;
    assert_eq!(rest.code, 0, "{rest:?}");
    let mut seen: Vec<&str> = first.stdout.lines().chain(rest.stdout.lines()).collect();
    assert_eq!(seen.len(), 20, "no gap, no repeat: {first:?} {rest:?}");
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 20);
    let again = raftlog(&bootstrap, &["consume", "jobs", "--group", "w"], "").await;
    assert_eq!((again.code, again.stdout.as_str()), (0, ""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_tails_until_sigterm() {
    let fake = cluster_with_topic("tail", "1").await;
    let bootstrap = fake.bootstrap();
    let child = spawn(&bootstrap, &["consume", "tail", "--follow"]);
    assert_eq!(
        raftlog(&bootstrap, &["produce", "tail"], "one\ntwo\n")
            .await
            .code,
        0
    );
    // Give the follower time to print, then ask it to stop.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let output = terminate(child).await;
    assert_eq!(
        (output.code, output.stdout.as_str()),
        (0, "one\ntwo\n"),
        "{output:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_messages_with_exit_codes_never_panics() {
    let fake = cluster_with_topic("small", "2").await;
    let bootstrap = fake.bootstrap();
    let cases: [(&[&str], i32, &str); 5] = [
        (&["consume", "missing"], 3, "unknown topic \"missing\""),
        (
            &["produce", "small", "--partition", "5"],
            3,
            "has no partition 5",
        ),
        (
            &["consume", "small", "--partition", "2"],
            3,
            "has no partition 2",
        ),
        (
            &["consume", "small", "--from", "soon"],
            2,
            "invalid value 'soon'",
        ),
        (
            &["produce", "small", "--acks", "some"],
            2,
            "invalid value 'some'",
        ),
    ];
    for (args, code, message) in cases {
        let run = raftlog(&bootstrap, args, "x\n").await;
        assert_eq!(run.code, code, "{args:?}: {run:?}");
        assert!(run.stderr.contains(message), "{args:?}: {run:?}");
        assert!(!run.stderr.contains("panicked"), "{run:?}");
    }
    // A record larger than a batch is refused; the others still go, and the count is told.
    let big = "x".repeat(500);
    let input = format!("a\n{big}\nb\n");
    let run = raftlog(
        &bootstrap,
        &["produce", "small", "--batch-bytes-max", "200"],
        &input,
    )
    .await;
    assert_eq!(run.code, 5, "{run:?}");
    assert!(
        run.stderr.contains("2 of 3 records acknowledged"),
        "{run:?}"
    );
    // Damaged data is reported with its own exit code.
    fake.corrupt("small", 0, 0);
    let run = raftlog(&bootstrap, &["consume", "small", "--partition", "0"], "").await;
    assert_eq!(run.code, 6, "{run:?}");
    assert!(
        run.stderr.contains("corrupt batch in partition 0"),
        "{run:?}"
    );
}

#[tokio::test]
async fn an_unreachable_bootstrap_is_a_prompt_clear_error() {
    let address = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let started = std::time::Instant::now();
    let run = raftlog(
        &address,
        &["topic", "list", "--connect-timeout-ms", "500"],
        "",
    )
    .await;
    assert_eq!(run.code, 4, "{run:?}");
    assert!(run.stderr.contains(&address), "{run:?}");
    assert!(run.stderr.contains("raftlog dev"), "{run:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let run = raftlog(&address, &["produce", "t", "--bootstrap", "no-port"], "").await;
    assert_eq!(run.code, 2, "{run:?}");
}
