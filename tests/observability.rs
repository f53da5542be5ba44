//! The operator's view, checked against real components: a 3-node cluster in this process, a
//! real Prometheus (Debian's `prometheus` package) scraping it with the scrape configuration
//! of `deploy/`, a short produce and consume load with a consumer group, and then every PromQL
//! expression of the Grafana dashboard and of the alert rules evaluated through Prometheus's
//! HTTP API. Also: `promtool check` on the deploy files, every YAML and JSON file parsed,
//! `deploy/raftlog.toml` compared with the built-in defaults, and `/health`, `/ready`.
//!
//! Without `prometheus` and `promtool` the cluster test skips with a reason, unless `CI` is set:
//! then it fails (`scripts/test.sh` installs them on a fresh machine).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use raftlog::batch::RecordBatchBuilder;
use raftlog::client::{ClientError, ConnectOptions, Connection};
use raftlog::config::NodeConfig;
use raftlog::daemon::Daemon;
use raftlog::proto::envelope::Body;
use raftlog::proto::*;
use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{sleep, timeout};

mod support;
use support::client::to_leader;
use support::cluster::free_address;

/// Longest the whole cluster test may run.
const TEST_BOUND: Duration = Duration::from_secs(180);
/// Longest any one request-like step may take.
const STEP_BOUND: Duration = Duration::from_secs(30);
/// How long dashboard queries may keep returning no series before the test gives up: rates
/// need two scrapes after a series first appears.
const SERIES_BOUND: Duration = Duration::from_secs(60);
/// The window substituted for `$__rate_interval`: many 1 s scrapes.
const RATE_INTERVAL: &str = "30s";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo().join(relative))
        .unwrap_or_else(|e| panic!("cannot read {relative}: {e}"))
}

// ------------------------------------------------------------------------------------------
// Static checks of the files in deploy/ and grafana/
// ------------------------------------------------------------------------------------------

fn yaml_documents(relative: &str) -> Vec<serde_yaml::Value> {
    let text = read(relative);
    serde_yaml::Deserializer::from_str(&text)
        .map(|document| {
            serde_yaml::Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{relative} is not valid YAML: {e}"))
        })
        .collect()
}

#[test]
fn every_yaml_and_json_file_parses() {
    for file in [
        "deploy/prometheus.yml",
        "deploy/alerts.yml",
        "deploy/alerts_test.yml",
        "deploy/compose.yaml",
        "grafana/provisioning/datasources/prometheus.yaml",
        "grafana/provisioning/dashboards/raftlog.yaml",
    ] {
        assert!(!yaml_documents(file).is_empty(), "{file} is empty");
    }
    serde_json::from_str::<Value>(&read("grafana/dashboards/raftlog.json"))
        .expect("the dashboard is valid JSON");
    let compose = &yaml_documents("deploy/compose.yaml")[0];
    for service in [
        "raftlog-1",
        "raftlog-2",
        "raftlog-3",
        "prometheus",
        "grafana",
    ] {
        assert!(
            !compose["services"][service].is_null(),
            "compose.yaml lacks {service}"
        );
    }
}

#[test]
fn kubernetes_manifests_hold_the_pieces_a_cluster_needs() {
    let mut kinds = BTreeMap::new();
    for entry in std::fs::read_dir(repo().join("deploy/k8s")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        for document in yaml_documents(&format!("deploy/k8s/{name}")) {
            let kind = document["kind"].as_str().unwrap_or_default().to_owned();
            kinds.insert(kind, document);
        }
    }
    for kind in [
        "StatefulSet",
        "Service",
        "ConfigMap",
        "PodDisruptionBudget",
        "Kustomization",
    ] {
        assert!(kinds.contains_key(kind), "deploy/k8s lacks a {kind}");
    }
    assert_eq!(kinds["Service"]["spec"]["clusterIP"].as_str(), Some("None"));
    let statefulset = &kinds["StatefulSet"]["spec"];
    assert!(!statefulset["volumeClaimTemplates"].is_null());
    let container = &statefulset["template"]["spec"]["containers"][0];
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/health")
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/ready")
    );
    // The ConfigMap's configuration must be one a node accepts.
    let toml = kinds["ConfigMap"]["data"]["raftlog.toml"].as_str().unwrap();
    let config = NodeConfig::from_toml_str(toml).expect("the ConfigMap's raftlog.toml parses");
    config
        .validate()
        .expect("the ConfigMap's raftlog.toml is valid");
}

/// Every dotted key path of a TOML table, such as `raft.tick_interval_ms`.
fn key_paths(value: &toml::Value, prefix: &str, out: &mut BTreeSet<String>) {
    if let toml::Value::Table(table) = value {
        for (key, value) in table {
            let path = format!("{prefix}{key}");
            if prefix.is_empty() && key == "peers" {
                out.insert(path);
                continue;
            }
            match value {
                toml::Value::Table(_) => key_paths(value, &format!("{path}."), out),
                _ => {
                    out.insert(path);
                }
            }
        }
    }
}

/// Whether a line of a TOML file sets a key (rather than being a comment, table or blank).
fn is_setting(line: &str) -> bool {
    line.contains('=') && !line.trim_start().starts_with('#')
}

#[test]
fn the_example_configuration_names_every_setting_at_its_default() {
    let text = read("deploy/raftlog.toml");
    let example = NodeConfig::from_toml_str(&text).expect("deploy/raftlog.toml parses");
    example.validate().expect("deploy/raftlog.toml is valid");
    let defaults = NodeConfig::new(
        example.node_id,
        example.data_dir.clone(),
        example.peers.clone(),
    );
    assert_eq!(
        example, defaults,
        "deploy/raftlog.toml must show the built-in defaults; update it with the code"
    );
    let mut documented = BTreeSet::new();
    key_paths(
        &toml::Value::Table(toml::from_str(&text).unwrap()),
        "",
        &mut documented,
    );
    let mut all = BTreeSet::new();
    let serialized = defaults.to_toml_string().unwrap();
    key_paths(
        &toml::Value::Table(toml::from_str(&serialized).unwrap()),
        "",
        &mut all,
    );
    let missing: Vec<_> = all.difference(&documented).collect();
    assert!(missing.is_empty(), "deploy/raftlog.toml lacks {missing:?}");
    // Every setting line has a comment above it (or is part of a commented group).
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let setting = is_setting(line);
        let in_peers = lines[..i]
            .iter()
            .rev()
            .find(|l| l.starts_with('['))
            .is_some_and(|l| *l == "[peers]");
        if setting && !in_peers {
            let above = lines[..i].iter().rev().find(|l| !is_setting(l));
            assert!(
                above.is_some_and(|l| l.trim_start().starts_with('#')),
                "deploy/raftlog.toml: `{line}` is not documented"
            );
        }
    }
}

// ------------------------------------------------------------------------------------------
// The tools: promtool and prometheus
// ------------------------------------------------------------------------------------------

/// Whether `prometheus` and `promtool` are installed; if not, fails under CI and otherwise
/// prints why the caller skips.
fn tools_available(test: &str) -> bool {
    let works = |tool: &str| {
        Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if works("prometheus") && works("promtool") {
        return true;
    }
    let reason = "`prometheus` and `promtool` are not installed (Debian: apt-get install prometheus; scripts/test.sh does it when run as root)";
    if std::env::var_os("CI").is_some() {
        panic!("{test}: {reason}");
    }
    eprintln!("skipping {test}: {reason}");
    false
}

fn promtool(args: &[&str]) {
    let output = Command::new("promtool")
        .args(args)
        .output()
        .expect("promtool runs");
    assert!(
        output.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn promtool_accepts_the_scrape_config_and_the_rules_and_their_unit_tests() {
    if !tools_available("promtool_accepts_the_scrape_config_and_the_rules_and_their_unit_tests") {
        return;
    }
    let deploy = repo().join("deploy");
    promtool(&[
        "check",
        "config",
        deploy.join("prometheus.yml").to_str().unwrap(),
    ]);
    let path = |file: &str| deploy.join(file).to_str().unwrap().to_owned();
    promtool(&["check", "rules", &path("alerts.yml")]);
    promtool(&["test", "rules", &path("alerts_test.yml")]);
}

/// A Prometheus server killed (by its PID, through its `Child`) when dropped.
struct Prometheus {
    child: Child,
    address: SocketAddr,
    log: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus in `dir` with `deploy/prometheus.yml`, its targets replaced by
    /// `targets`, scraping and evaluating every second.
    fn start(dir: &Path, targets: &[SocketAddr]) -> Prometheus {
        let mut config = read("deploy/prometheus.yml");
        for (i, target) in targets.iter().enumerate() {
            let placeholder = format!("raftlog-{}:9402", i + 1);
            assert!(
                config.contains(&placeholder),
                "deploy/prometheus.yml lacks {placeholder}"
            );
            config = config.replace(&placeholder, &target.to_string());
        }
        for interval in ["scrape_interval: 15s", "evaluation_interval: 15s"] {
            assert!(
                config.contains(interval),
                "deploy/prometheus.yml lacks {interval}"
            );
            config = config.replace(interval, &interval.replace("15s", "1s"));
        }
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        // rule_files names alerts.yml relative to the configuration: copy it next to it.
        std::fs::copy(repo().join("deploy/alerts.yml"), dir.join("alerts.yml")).unwrap();
        let address = free_address();
        let log = dir.join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("prometheus.err")).unwrap(),
            ))
            .spawn()
            .expect("prometheus starts");
        Prometheus {
            child,
            address,
            log,
        }
    }

    fn log_tail(&self) -> String {
        let err = self.log.with_file_name("prometheus.err");
        let text = std::fs::read_to_string(err).unwrap_or_default()
            + &std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Evaluates `expr` now; `Err` carries Prometheus's complaint.
    async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let path = format!("/api/v1/query?query={}", percent_encode(expr));
        let (status, body) = http_get(self.address, &path).await?;
        let answer: Value =
            serde_json::from_str(&body).map_err(|e| format!("HTTP {status}, not JSON: {e}"))?;
        if answer["status"] != "success" {
            return Err(format!("{}: {}", answer["errorType"], answer["error"]));
        }
        Ok(answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    async fn json(&self, path: &str) -> Value {
        let (_, body) = http_get(self.address, path).await.unwrap();
        serde_json::from_str(&body).unwrap()
    }
}

// ------------------------------------------------------------------------------------------
// Plain HTTP over loopback: the test needs GETs only, so no HTTP client crate.
// ------------------------------------------------------------------------------------------

/// GETs `path` with HTTP/1.0 (so the answer is never chunked) and returns status and body.
async fn http_get(address: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let exchange = async {
        let mut socket = tokio::net::TcpStream::connect(address).await?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n");
        socket.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        socket.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = timeout(STEP_BOUND, exchange)
        .await
        .map_err(|_| format!("GET {path}: timed out"))?
        .map_err(|e| format!("GET {path}: {e}"))?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("GET {path}: no header end"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("GET {path}: bad status line"))?;
    Ok((status, body.to_owned()))
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// ------------------------------------------------------------------------------------------
// The dashboard's queries
// ------------------------------------------------------------------------------------------

/// Every panel of the dashboard, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    let mut stack: Vec<Value> = dashboard["panels"].as_array().cloned().unwrap_or_default();
    while let Some(panel) = stack.pop() {
        if let Some(nested) = panel["panels"].as_array() {
            stack.extend(nested.iter().cloned());
        }
        out.push(panel);
    }
    out
}

/// (panel title, expression with variables substituted) for every target of every panel.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for panel in panels(dashboard) {
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap_or("?").to_owned();
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for target in targets {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {title:?} has a target without expr"));
            // "All" of a multi-value variable is its allValue, `.*`.
            let expr = expr
                .replace("$__rate_interval", RATE_INTERVAL)
                .replace("$topic", ".*")
                .replace("$node", ".*");
            assert!(
                !expr.contains('$'),
                "panel {title:?}: unknown variable in {expr}"
            );
            queries.push((title.clone(), expr));
        }
    }
    queries
}

#[test]
fn the_dashboard_is_provisionable_and_parameterised() {
    let dashboard: Value = serde_json::from_str(&read("grafana/dashboards/raftlog.json")).unwrap();
    let variables: BTreeMap<String, Value> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap().to_owned(), v.clone()))
        .collect();
    assert_eq!(variables["datasource"]["type"], "datasource");
    assert_eq!(variables["datasource"]["query"], "prometheus");
    for name in ["topic", "node"] {
        assert_eq!(variables[name]["type"], "query", "{name}");
        assert_eq!(variables[name]["allValue"], ".*", "{name}");
    }
    for panel in panels(&dashboard) {
        if panel["type"] != "row" {
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "panel {} must use the datasource variable",
                panel["title"]
            );
        }
    }
    let queries = dashboard_queries(&dashboard);
    let all: String = queries.iter().map(|(_, e)| e.as_str()).collect();
    // Every documented raftlog metric is on the dashboard, except those only alerts use.
    let alert_only = [
        "raftlog_replica_failed",
        "raftlog_replica_storage_full",
        "raftlog_leader_known",
    ];
    for metric in raftlog::metrics::METRICS {
        if metric.name.starts_with("raftlog_") && !alert_only.contains(&metric.name) {
            assert!(all.contains(metric.name), "no panel shows {}", metric.name);
        }
    }
}

fn alert_expressions() -> Vec<(String, String)> {
    let rules = &yaml_documents("deploy/alerts.yml")[0];
    let mut out = Vec::new();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let name = rule["alert"].as_str().unwrap().to_owned();
            out.push((name, rule["expr"].as_str().unwrap().to_owned()));
        }
    }
    out
}

#[test]
fn alerts_cover_what_the_operators_asked_for() {
    let names: BTreeSet<String> = alert_expressions().into_iter().map(|(n, _)| n).collect();
    for wanted in [
        "RaftlogPartitionWithoutLeader",
        "RaftlogUnderReplicatedPartition",
        "RaftlogProduceLatencyHigh",
        "RaftlogFsyncLatencyHigh",
        "RaftlogDiskAlmostFull",
        "RaftlogConsumerGroupLagGrowing",
        "RaftlogFrequentLeaderChanges",
    ] {
        assert!(names.contains(wanted), "deploy/alerts.yml lacks {wanted}");
    }
}

// ------------------------------------------------------------------------------------------
// The cluster
// ------------------------------------------------------------------------------------------

fn cluster_configs(dir: &Path) -> Vec<NodeConfig> {
    let peers: Vec<SocketAddr> = (0..3).map(|_| free_address()).collect();
    let peer_map: BTreeMap<u64, String> = (1..=3u64)
        .map(|id| (id, peers[id as usize - 1].to_string()))
        .collect();
    (1..=3u64)
        .map(|id| {
            let mut config = NodeConfig::new(id, dir.join(format!("node-{id}")), peer_map.clone());
            config.client_listen = free_address();
            config.peer_listen = peers[id as usize - 1];
            config.metrics_listen = free_address();
            config.raft.tick_interval_ms = 20;
            config
        })
        .collect()
}

fn batch(partition: u32, round: u32) -> bytes::Bytes {
    let mut builder = RecordBatchBuilder::new(1 << 20);
    for i in 0..20 {
        let value = format!("p{partition}-r{round}-{i}");
        builder
            .push(1_700_000_000_000, None, value.as_bytes(), &[])
            .unwrap();
    }
    builder.finish()
}

/// Creates a topic, produces, fetches from every replica, commits a group offset and causes
/// one error response.
async fn run_load(connections: &[Connection]) {
    let create = Body::CreateTopic(CreateTopicRequest {
        name: "orders".into(),
        partitions: 3,
        replication_factor: 3,
        ..Default::default()
    });
    let answer = to_leader(connections, create).await;
    assert!(matches!(answer, Body::CreateTopicResponse(_)), "{answer:?}");
    for round in 0..5 {
        for partition in 0..3u32 {
            let produce = Body::Produce(ProduceRequest {
                topic: "orders".into(),
                partition,
                acks: Acks::All as i32,
                batch: batch(partition, round),
                timeout_ms: 10_000,
            });
            let answer = to_leader(connections, produce).await;
            assert!(matches!(answer, Body::ProduceResponse(_)), "{answer:?}");
        }
    }
    for connection in connections {
        for partition in 0..3u32 {
            let fetch = Body::Fetch(FetchRequest {
                topic: "orders".into(),
                partition,
                offset: 0,
                max_bytes: 1 << 20,
                max_wait_ms: 1_000,
                ..Default::default()
            });
            let answer = timeout(STEP_BOUND, connection.request(fetch))
                .await
                .expect("fetch answers in time")
                .expect("every replica serves fetches");
            assert!(matches!(answer, Body::FetchResponse(_)), "{answer:?}");
        }
    }
    // The group has read half of each partition: lag 50 of 100 records.
    let commit = Body::OffsetCommit(OffsetCommitRequest {
        group: "billing".into(),
        topic: "orders".into(),
        offsets: (0..3u32)
            .map(|partition| PartitionOffset {
                partition,
                offset: 50,
                committed: true,
            })
            .collect(),
        ..Default::default()
    });
    let answer = to_leader(connections, commit).await;
    assert!(
        matches!(answer, Body::OffsetCommitResponse(_)),
        "{answer:?}"
    );
    let unknown = Body::Produce(ProduceRequest {
        topic: "no-such-topic".into(),
        partition: 0,
        acks: Acks::All as i32,
        batch: batch(0, 0),
        timeout_ms: 1_000,
    });
    let answer = connections[0].request(unknown).await;
    assert!(
        matches!(&answer, Err(ClientError::Server(e)) if e.code() == ErrorCode::UnknownTopic),
        "{answer:?}"
    );
}

/// Waits until every node answers `/ready` with 200, returning the last refusal otherwise.
async fn wait_ready(metrics: &[SocketAddr]) {
    let deadline = Instant::now() + STEP_BOUND;
    loop {
        let mut refusals = Vec::new();
        for &address in metrics {
            let (status, body) = http_get(address, "/ready").await.unwrap();
            if status != 200 {
                refusals.push(format!("{address}: {status} {body}"));
            }
        }
        if refusals.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "nodes not ready: {refusals:?}");
        sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_and_readiness_answer_on_the_metrics_port() {
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster_configs(dir.path());
    // One node alone has no quorum: alive, but not ready.
    let lonely = Daemon::start(configs[0].clone()).await.unwrap();
    let address = configs[0].metrics_listen;
    let (status, body) = http_get(address, "/health").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, body) = http_get(address, "/ready").await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("cluster metadata"), "{body}");
    let (status, _) = http_get(address, "/nothing-here").await.unwrap();
    assert_eq!(status, 404);
    let mut running = vec![lonely];
    for config in &configs[1..] {
        running.push(Daemon::start(config.clone()).await.unwrap());
    }
    let metrics: Vec<SocketAddr> = configs.iter().map(|c| c.metrics_listen).collect();
    wait_ready(&metrics).await;
    let (_, text) = http_get(address, "/metrics").await.unwrap();
    assert!(text.contains("raftlog_ready{node=\"1\"}"), "{text}");
    for node in running {
        node.shutdown().await;
    }
    // The listener closes with the node, so a restart can bind it again.
    assert!(http_get(address, "/health").await.is_err());
}

/// The value of the first sample of `name` in a Prometheus text page whose labels include
/// `label` (as `key="value"`).
fn sample(text: &str, name: &str, label: &str) -> Option<f64> {
    text.lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with('{'))
        .find(|line| line.contains(label))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// Long polls show in `raftlog_fetch_waiters` while they wait, and once they end without new
/// records nothing of them stays in the replica. On an idle partition no commit ever sweeps
/// the parked list, so without the per-tick sweep every ended long poll would stay there for
/// good (a slow leak, one entry per poll).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn long_polls_that_end_on_an_idle_partition_leave_nothing_parked() {
    const POLLS: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster_configs(dir.path());
    let mut running = Vec::new();
    for config in &configs {
        running.push(Daemon::start(config.clone()).await.unwrap());
    }
    let metrics: Vec<SocketAddr> = configs.iter().map(|c| c.metrics_listen).collect();
    wait_ready(&metrics).await;
    let mut connections = Vec::new();
    for config in &configs {
        let address = config.client_listen.to_string();
        connections.push(
            Connection::connect(&address, &ConnectOptions::default())
                .await
                .unwrap(),
        );
    }
    let create = Body::CreateTopic(CreateTopicRequest {
        name: "idle".into(),
        partitions: 1,
        replication_factor: 3,
        ..Default::default()
    });
    to_leader(&connections, create).await;
    let poll = |wait_ms| {
        Body::Fetch(FetchRequest {
            topic: "idle".into(),
            partition: 0,
            offset: 0,
            max_bytes: 1 << 20,
            max_wait_ms: wait_ms,
            ..Default::default()
        })
    };
    // Node 1 serves the partition once it has applied the topic.
    let deadline = Instant::now() + STEP_BOUND;
    while connections[0].request(poll(0)).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "node 1 never served the new topic"
        );
        sleep(Duration::from_millis(50)).await;
    }
    let waiters = |text: &str| sample(text, "raftlog_fetch_waiters", "topic=\"idle\"");

    // The polls wait 5 s; the gauge must show all of them well before that, since the
    // replica publishes it each time it parks one.
    const POLL_WAIT_MS: u32 = 5_000;
    let polls =
        futures::future::join_all((0..POLLS).map(|_| connections[0].request(poll(POLL_WAIT_MS))));
    let while_waiting = async {
        let deadline = Instant::now() + Duration::from_millis(u64::from(POLL_WAIT_MS) * 4 / 5);
        loop {
            let text = http_get(metrics[0], "/metrics").await.unwrap().1;
            let seen = waiters(&text);
            if seen == Some(POLLS as f64) || Instant::now() >= deadline {
                return seen;
            }
            sleep(Duration::from_millis(20)).await;
        }
    };
    let (answers, seen) = tokio::join!(polls, while_waiting);
    assert_eq!(seen, Some(POLLS as f64), "while the polls wait");
    for answer in answers {
        match answer.unwrap() {
            Body::FetchResponse(fetched) => assert!(fetched.batches.is_empty()),
            other => panic!("{other:?}"),
        }
    }
    let deadline = Instant::now() + STEP_BOUND;
    loop {
        let (_, text) = http_get(metrics[0], "/metrics").await.unwrap();
        match waiters(&text) {
            Some(0.0) => break,
            waiting => assert!(
                Instant::now() < deadline,
                "{waiting:?} fetches still parked {STEP_BOUND:?} after their polls ended"
            ),
        }
        sleep(Duration::from_millis(50)).await;
    }
    for node in running {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_dashboard_query_and_alert_rule_works_against_a_real_prometheus() {
    let test = "every_dashboard_query_and_alert_rule_works_against_a_real_prometheus";
    if !tools_available(test) {
        return;
    }
    timeout(TEST_BOUND, verify_dashboard_and_alerts())
        .await
        .expect("the verification finishes within its bound");
}

async fn verify_dashboard_and_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster_configs(dir.path());
    let mut cluster: Vec<Daemon> = Vec::new();
    for config in &configs {
        cluster.push(Daemon::start(config.clone()).await.unwrap());
    }
    let metrics: Vec<SocketAddr> = configs.iter().map(|c| c.metrics_listen).collect();
    let prometheus_dir = dir.path().join("prometheus");
    std::fs::create_dir_all(&prometheus_dir).unwrap();
    let prometheus = Prometheus::start(&prometheus_dir, &metrics);

    let mut connections = Vec::new();
    for node in &cluster {
        let options = ConnectOptions::default();
        let connection = Connection::connect(&node.client_address.to_string(), &options)
            .await
            .unwrap();
        connections.push(connection);
    }
    run_load(&connections).await;
    wait_ready(&metrics).await;

    // What `curl http://…:9402/metrics` shows: every documented metric, once the collector
    // (every second) has seen the group's commit.
    let deadline = Instant::now() + STEP_BOUND;
    loop {
        let (_, text) = http_get(metrics[0], "/metrics").await.unwrap();
        let missing: Vec<&str> = raftlog::metrics::METRICS
            .iter()
            .map(|m| m.name)
            .filter(|name| !text.contains(&format!("# TYPE {name} ")))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 1 does not export {missing:?}"
        );
        sleep(Duration::from_millis(200)).await;
    }

    check_dashboard_queries(&prometheus).await;
    check_alert_rules(&prometheus).await;

    drop(prometheus);
    drop(connections);
    for node in cluster {
        node.shutdown().await;
    }
}

/// Evaluates every dashboard query until each returns series (failing at once on an invalid
/// one), then checks the variables' values and two numbers the load determines.
async fn check_dashboard_queries(prometheus: &Prometheus) {
    let dashboard: Value = serde_json::from_str(&read("grafana/dashboards/raftlog.json")).unwrap();
    let queries = dashboard_queries(&dashboard);
    let deadline = Instant::now() + SERIES_BOUND;
    loop {
        let mut empty = Vec::new();
        for (title, expr) in &queries {
            match prometheus.query(expr).await {
                Ok(series) if series.is_empty() => empty.push(format!("{title}: {expr}")),
                Ok(_) => {}
                Err(error) => panic!(
                    "panel {title:?}: invalid query {expr}: {error}\nprometheus:\n{}",
                    prometheus.log_tail()
                ),
            }
        }
        if empty.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dashboard queries without series after {SERIES_BOUND:?}:\n{}\nprometheus:\n{}",
            empty.join("\n"),
            prometheus.log_tail()
        );
        sleep(Duration::from_secs(1)).await;
    }
    // The variables' values come from the cluster too.
    for (label, metric) in [
        ("topic", "raftlog_high_watermark"),
        ("node", "raftlog_ready"),
    ] {
        let values = prometheus
            .json(&format!("/api/v1/label/{label}/values?match[]={metric}"))
            .await;
        let values = values["data"].as_array().cloned().unwrap_or_default();
        assert!(!values.is_empty(), "variable {label} has no values");
    }
    let topics = prometheus
        .query("max by (topic) (raftlog_high_watermark{topic=\"orders\"})")
        .await
        .unwrap();
    assert_eq!(topics.len(), 1, "{topics:?}");
    let lag = prometheus
        .query("max(raftlog_consumer_group_lag_records{group=\"billing\",topic=\"orders\"})")
        .await
        .unwrap();
    assert_eq!(lag[0]["value"][1], "50", "consumer-group lag: {lag:?}");
}

/// Evaluates every alert expression and checks that Prometheus loaded and runs every rule.
async fn check_alert_rules(prometheus: &Prometheus) {
    for (name, expr) in alert_expressions() {
        if let Err(error) = prometheus.query(&expr).await {
            panic!("alert {name}: invalid expression {expr}: {error}");
        }
    }
    // Prometheus loaded the rules from the scrape configuration and evaluates them cleanly.
    let rules = prometheus.json("/api/v1/rules").await;
    let loaded: Vec<Value> = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .collect();
    assert_eq!(loaded.len(), alert_expressions().len(), "{rules}");
    for rule in &loaded {
        assert_ne!(
            rule["health"], "err",
            "rule {} fails: {}",
            rule["name"], rule["lastError"]
        );
    }
    let up = prometheus.query("sum(up{job=\"raftlog\"})").await.unwrap();
    assert_eq!(
        up[0]["value"][1], "3",
        "all three nodes are scraped: {up:?}"
    );
}
