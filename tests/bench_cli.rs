//! `raftlog bench` against three real nodes: each mode runs to completion and reports what it
//! did, in text and JSON.

mod cli_support;
mod real_cluster;

use cli_support::{json_field, raftlog};
use real_cluster::RealCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bench_produces_consumes_and_measures_end_to_end() {
    let nodes = RealCluster::start(3).await;
    let bootstrap = nodes.address(0);
    let args = [
        "bench",
        "produce",
        "--records",
        "2000",
        "--in-flight",
        "64",
        "--json",
    ];
    let run = raftlog(&bootstrap, &args, "").await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        json_field(run.stdout.trim(), "records"),
        "2000",
        "{}",
        run.stdout
    );
    assert_eq!(
        json_field(run.stdout.trim(), "errors"),
        "0",
        "{}",
        run.stdout
    );

    let run = raftlog(&bootstrap, &["bench", "consume", "--records", "2000"], "").await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.starts_with("consume: 2000 records of 1024 B"),
        "{}",
        run.stdout
    );

    let args = [
        "bench",
        "e2e",
        "--topic",
        "e2e",
        "--records",
        "500",
        "--in-flight",
        "8",
        "--json",
    ];
    let run = raftlog(&bootstrap, &args, "").await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        json_field(run.stdout.trim(), "records"),
        "500",
        "{}",
        run.stdout
    );

    let run = raftlog(&bootstrap, &["bench", "e2e", "--record-size", "4"], "").await;
    assert_eq!(
        run.code, 2,
        "a record too small for the send time is a usage error: {run:?}"
    );
    nodes.shutdown().await;
}
