//! Real `raftlog serve` processes on loopback: `raftlog produce` keeps going when the
//! partition leader is killed with SIGKILL mid-stream, and every record it acknowledged
//! (printed with `--print-offsets`) is consumed back exactly once from the survivors.

mod cli_support;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use cli_support::{json_field, raftlog, BOUND};
use raftlog::client::{Admin, ClientOptions, Cluster};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};

const LINES: usize = 6_000;

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Starts three `raftlog serve` processes; returns them with their client addresses.
fn start_nodes(dir: &std::path::Path) -> (Vec<Child>, Vec<String>) {
    let ports: Vec<[u16; 3]> = (0..3)
        .map(|_| [free_port(), free_port(), free_port()])
        .collect();
    let peers: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}=127.0.0.1:{}", i + 1, p[1]))
        .collect();
    let peers = peers.join(",");
    let mut children = Vec::new();
    let mut clients = Vec::new();
    for (i, [client, peer, metrics]) in ports.iter().enumerate() {
        let id = (i + 1).to_string();
        let data = dir.join(format!("node-{id}"));
        let child = Command::new(env!("CARGO_BIN_EXE_raftlog"))
            .arg("serve")
            .args(["--id", &id, "--peers", &peers])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen", &format!("127.0.0.1:{client}")])
            .args(["--peer-listen", &format!("127.0.0.1:{peer}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("raftlog serve starts");
        children.push(child);
        clients.push(format!("127.0.0.1:{client}"));
    }
    (children, clients)
}

fn sigkill(child: &Child) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on the PID of a child we spawned and have not reaped yet.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_survive_a_killed_leader() {
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, clients) = start_nodes(dir.path());
    let bootstrap = clients.join(",");
    let run = raftlog(
        &bootstrap,
        &["topic", "create", "k", "--partitions", "1"],
        "",
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    let cluster = Cluster::connect(ClientOptions {
        bootstrap: clients.clone(),
        bootstrap_timeout: Duration::from_secs(10),
        ..ClientOptions::default()
    })
    .await
    .unwrap();
    let leader = Admin::new(cluster)
        .wait_for_leaders("k", Duration::from_secs(20))
        .await
        .unwrap()
        .partitions[0]
        .leader_id as usize;

    let mut producer = Command::new(env!("CARGO_BIN_EXE_raftlog"))
        .args([
            "produce",
            "k",
            "--print-offsets",
            "--request-timeout-ms",
            "20000",
        ])
        .env("RAFTLOG_BOOTSTRAP", &bootstrap)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut input = producer.stdin.take().unwrap();
    for i in 0..LINES {
        if i == LINES / 3 {
            sigkill(&nodes[leader - 1]);
        }
        input.write_all(format!("v{i}\n").as_bytes()).await.unwrap();
        if i % 100 == 0 {
            input.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    drop(input);
    let produced = tokio::time::timeout(BOUND, producer.wait_with_output())
        .await
        .expect("produce finishes")
        .unwrap();
    let acknowledged: Vec<u64> = String::from_utf8_lossy(&produced.stdout)
        .lines()
        .map(|l| l.split_once(' ').unwrap().1.parse().unwrap())
        .collect();
    let stderr = String::from_utf8_lossy(&produced.stderr);
    eprintln!(
        "{} of {LINES} acknowledged; killed node {leader}; {stderr}",
        acknowledged.len()
    );
    if acknowledged.len() == LINES {
        assert_eq!(produced.status.code(), Some(0), "{stderr}");
    } else {
        assert_eq!(produced.status.code(), Some(5), "{stderr}");
        let told = format!("{} of {LINES} records acknowledged", acknowledged.len());
        assert!(stderr.contains(&told), "{stderr}");
    }
    assert!(
        acknowledged.len() > LINES / 2,
        "producing went on after the kill: {} acknowledged; {stderr}",
        acknowledged.len()
    );

    let survivors: Vec<String> = clients
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader - 1)
        .map(|(_, a)| a.clone())
        .collect();
    let run = raftlog(
        &survivors.join(","),
        &["consume", "k", "--format", "json"],
        "",
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    let mut at_offset: BTreeMap<u64, String> = BTreeMap::new();
    for line in run.stdout.lines() {
        let value = json_field(line, "value").trim_matches('"').to_owned();
        *seen.entry(value.clone()).or_default() += 1;
        at_offset.insert(json_field(line, "offset").parse().unwrap(), value);
    }
    // One partition, printed in input order: acknowledged offsets only grow.
    assert!(acknowledged.windows(2).all(|w| w[0] < w[1]));
    // Every acknowledged offset is in the log, holding a value that appears exactly once.
    for offset in &acknowledged {
        let value = at_offset
            .get(offset)
            .unwrap_or_else(|| panic!("acknowledged offset {offset} is in the log"));
        assert_eq!(seen[value], 1, "{value} appears once");
    }
    for node in &mut nodes {
        let _ = node.start_kill();
        let _ = node.wait().await;
    }
}
