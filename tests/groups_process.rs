//! Consumer groups on real processes: `raftlog consume --group` members share a topic's
//! partitions, a member killed with SIGKILL has its partitions taken over within its session,
//! a member paused past its session is fenced and joins again, and a coordinator (metadata
//! leader) killed during a rebalance never leads to a partition with two owners in one
//! generation, as the members' own logs of their assignments show.

mod cli_support;
mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cli_support::{json_field, raftlog};
use raftlog::client::{ClientError, ClientOptions, Cluster, Retry, Route};
use raftlog::proto::envelope::Body;
use raftlog::proto::{
    ErrorCode, GroupHeartbeatRequest, JoinGroupRequest, OffsetCommitRequest, PartitionOffset,
};
use support::cluster::ProcessCluster;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::sleep;

const TOPIC: &str = "work";
const GROUP: &str = "g";
const PARTITIONS: u32 = 6;
/// Members' session timeout: short, so that the tests wait little for expulsions.
const SESSION_MS: u64 = 3_000;
/// Longest any one step may take.
const STEP_BOUND: Duration = Duration::from_secs(60);

/// One `raftlog consume --group` process and what it printed.
struct Member {
    child: Child,
    /// stdout lines: one JSON record each.
    records: Arc<Mutex<Vec<String>>>,
    /// stderr lines: its log of assignments among them.
    log: Arc<Mutex<Vec<String>>>,
}

impl Member {
    fn start(bootstrap: &str) -> Member {
        let session = SESSION_MS.to_string();
        let mut child = Command::new(env!("CARGO_BIN_EXE_raftlog"))
            .args([
                "consume",
                TOPIC,
                "--group",
                GROUP,
                "--follow",
                "--format",
                "json",
                "--session-timeout-ms",
                &session,
            ])
            .env("RAFTLOG_BOOTSTRAP", bootstrap)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the raftlog binary starts");
        let records = collect(child.stdout.take().unwrap());
        let log = collect(child.stderr.take().unwrap());
        Member {
            child,
            records,
            log,
        }
    }

    fn pid(&self) -> libc::pid_t {
        self.child.id().expect("still running") as libc::pid_t
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on the PID of a child this test spawned and has not reaped.
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0);
    }

    /// (partition, offset, value) of every record printed so far.
    fn printed(&self) -> Vec<(u32, u64, String)> {
        self.records
            .lock()
            .unwrap()
            .iter()
            .map(|line| {
                (
                    json_field(line, "partition").parse().unwrap(),
                    json_field(line, "offset").parse().unwrap(),
                    json_field(line, "value").trim_matches('"').to_owned(),
                )
            })
            .collect()
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// SIGTERM, then waits for it to commit, leave and exit.
    async fn stop(mut self) {
        self.signal(libc::SIGTERM);
        let status = tokio::time::timeout(STEP_BOUND, self.child.wait())
            .await
            .expect("exits after SIGTERM")
            .unwrap();
        assert!(status.success(), "{status:?}: {:?}", self.log());
    }
}

/// Collects a child's output lines as they come.
fn collect(stream: impl tokio::io::AsyncRead + Unpin + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    tokio::spawn(async move {
        let mut reader = BufReader::new(stream).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

async fn wait_for(what: &str, mut ready: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !ready().await {
        assert!(
            started.elapsed() < STEP_BOUND,
            "timed out waiting until {what}"
        );
        sleep(Duration::from_millis(100)).await;
    }
}

/// `group describe g --json`, or None while the group is not known yet.
async fn describe(bootstrap: &str) -> Option<serde_json::Value> {
    let run = raftlog(bootstrap, &["group", "describe", GROUP, "--json"], "").await;
    if run.code != 0 {
        return None;
    }
    Some(serde_json::from_str(&run.stdout).unwrap())
}

/// Member id → the partitions `group describe` says it owns.
fn owners(group: &serde_json::Value) -> BTreeMap<String, BTreeSet<u32>> {
    group["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let owned = m["partitions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p[1].as_u64().unwrap() as u32)
                .collect();
            (m["member_id"].as_str().unwrap().to_owned(), owned)
        })
        .collect()
}

/// Whether the group is stable with `members` members whose partitions are disjoint and
/// cover the topic.
fn settled_with(group: &Option<serde_json::Value>, members: usize) -> bool {
    let Some(group) = group else { return false };
    let owners = owners(group);
    let total: usize = owners.values().map(BTreeSet::len).sum();
    let union: BTreeSet<u32> = owners.values().flatten().copied().collect();
    group["state"] == "stable"
        && owners.len() == members
        && total == PARTITIONS as usize
        && union == (0..PARTITIONS).collect()
}

async fn produce(bootstrap: &str, values: impl Iterator<Item = String>) {
    let input: String = values.map(|v| v + "\n").collect();
    let run = raftlog(bootstrap, &["produce", TOPIC], &input).await;
    assert_eq!(run.code, 0, "{run:?}");
}

async fn create_topic(bootstrap: &str) {
    let partitions = PARTITIONS.to_string();
    let run = raftlog(
        bootstrap,
        &["topic", "create", TOPIC, "--partitions", &partitions],
        "",
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
}

/// Three members share six partitions; one is killed with SIGKILL and the two others take its
/// partitions over within its session. Every record is printed at least once, and a record
/// printed twice was printed by the killed member after its last commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_share_the_partitions_and_survivors_take_over_a_killed_members_share() {
    let cluster = ProcessCluster::start(3);
    let bootstrap = cluster.addresses().join(",");
    create_topic(&bootstrap).await;
    let mut members: Vec<Member> = (0..3).map(|_| Member::start(&bootstrap)).collect();
    wait_for("three members own two partitions each", async || {
        let group = describe(&bootstrap).await;
        settled_with(&group, 3)
            && owners(group.as_ref().unwrap())
                .values()
                .all(|owned| owned.len() == 2)
    })
    .await;

    produce(&bootstrap, (0..600).map(|i| format!("a{i}"))).await;
    wait_for("the first records are printed", async || {
        members.iter().map(|m| m.printed().len()).sum::<usize>() >= 600
    })
    .await;
    let mut killed = members.remove(0);
    killed.signal(libc::SIGKILL);
    let _ = killed.child.wait().await;
    let killed_at = Instant::now();
    produce(&bootstrap, (0..600).map(|i| format!("b{i}"))).await;
    wait_for("two members own all six partitions", async || {
        settled_with(&describe(&bootstrap).await, 2)
    })
    .await;
    let takeover = killed_at.elapsed();
    eprintln!("the survivors own all six partitions {takeover:?} after the SIGKILL (session {SESSION_MS} ms)");
    // Expulsion after one session, then a heartbeat interval (a third of it) to learn.
    assert!(
        takeover < Duration::from_millis(SESSION_MS * 2),
        "took {takeover:?} with a session of {SESSION_MS} ms"
    );
    wait_for("every record is printed", async || {
        let values: BTreeSet<String> = members
            .iter()
            .chain([&killed])
            .flat_map(|m| m.printed().into_iter().map(|(_, _, v)| v))
            .collect();
        values.len() == 1200
    })
    .await;

    // No survivor printed a record twice, and the records printed twice overall are, per
    // partition, a tail of what the killed member printed.
    let survivors: Vec<(u32, u64, String)> = members.iter().flat_map(Member::printed).collect();
    let distinct: BTreeSet<&(u32, u64, String)> = survivors.iter().collect();
    assert_eq!(
        distinct.len(),
        survivors.len(),
        "a survivor printed a record twice"
    );
    let again: BTreeSet<(u32, u64)> = survivors.iter().map(|(p, o, _)| (*p, *o)).collect();
    let mut by_partition: HashMap<u32, Vec<(u64, bool)>> = HashMap::new();
    for (partition, offset, _) in killed.printed() {
        let repeated = again.contains(&(partition, offset));
        by_partition
            .entry(partition)
            .or_default()
            .push((offset, repeated));
    }
    let repeats = by_partition.values().flatten().filter(|(_, r)| *r).count();
    eprintln!("records printed twice (the killed member's uncommitted tail): {repeats}");
    for (partition, mut printed) in by_partition {
        printed.sort_unstable();
        let first_repeat = printed.iter().position(|(_, repeated)| *repeated);
        if let Some(first) = first_repeat {
            assert!(
                printed[first..].iter().all(|(_, repeated)| *repeated),
                "partition {partition}: the records printed twice are not a tail: {printed:?}"
            );
        }
    }

    for member in members {
        member.stop().await;
    }
    let group = describe(&bootstrap).await.expect("the group is known");
    assert_eq!(group["state"], "empty", "{group}");
    for partition in group["partitions"].as_array().unwrap() {
        assert_eq!(partition["lag"], 0, "every record committed: {group}");
    }
}

/// A member paused (SIGSTOP) past its session is expelled; once resumed it logs the
/// partitions as lost, joins again, and the group shares them between both members again.
/// Its old member id is fenced: a commit or heartbeat with it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_paused_past_its_session_is_fenced_and_joins_again() {
    let cluster = ProcessCluster::start(3);
    let bootstrap = cluster.addresses().join(",");
    create_topic(&bootstrap).await;
    let members: Vec<Member> = (0..2).map(|_| Member::start(&bootstrap)).collect();
    // Both members must have started on their partitions (logged them), not only the
    // coordinator have assigned them.
    let started = Instant::now();
    let before = loop {
        let group = describe(&bootstrap).await;
        let applied = members
            .iter()
            .all(|m| m.log().iter().any(|line| line.contains(": assigned ")));
        if settled_with(&group, 2) && applied {
            let owners = owners(group.as_ref().unwrap());
            if owners.values().all(|owned| owned.len() == 3) {
                break owners;
            }
        }
        assert!(
            started.elapsed() < STEP_BOUND,
            "two members never owned three partitions each: group {group:?}\nfirst: {:?}\nsecond: {:?}\nnodes: {}",
            members[0].log(),
            members[1].log(),
            node_logs(&cluster)
        );
        sleep(Duration::from_millis(100)).await;
    };
    let paused = &members[0];
    paused.signal(libc::SIGSTOP);
    wait_for("the other member owns every partition", async || {
        settled_with(&describe(&bootstrap).await, 1)
    })
    .await;
    paused.signal(libc::SIGCONT);
    let resumed = Instant::now();
    loop {
        let group = describe(&bootstrap).await;
        let rejoined = settled_with(&group, 2) && {
            let now = owners(group.as_ref().unwrap());
            now.values().all(|owned| owned.len() == 3)
                && now.keys().filter(|id| !before.contains_key(*id)).count() == 1
        };
        if rejoined {
            break;
        }
        assert!(
            resumed.elapsed() < STEP_BOUND,
            "the resumed member did not join again: group {group:?}\nresumed: {:?}\nother: {:?}\nnodes: {}",
            members[0].log(),
            members[1].log(),
            node_logs(&cluster)
        );
        sleep(Duration::from_millis(100)).await;
    }
    let log = paused.log();
    assert!(
        log.iter().any(|line| line.contains(": lost ")),
        "the paused member noticed it lost its partitions: {log:?}"
    );

    // The old id, at the wire: fenced.
    let now = owners(&describe(&bootstrap).await.expect("the group is known"));
    let old_id = before
        .keys()
        .find(|id| !now.contains_key(*id))
        .expect("one member id was replaced")
        .clone();
    let client = Cluster::connect(ClientOptions {
        bootstrap: cluster.addresses(),
        ..ClientOptions::default()
    })
    .await
    .unwrap();
    let commit = Body::OffsetCommit(OffsetCommitRequest {
        group: GROUP.into(),
        topic: TOPIC.into(),
        offsets: vec![PartitionOffset {
            partition: 0,
            offset: 0,
            committed: true,
        }],
        member_id: old_id.clone(),
        generation: 1,
    });
    assert_refused(&client, commit, ErrorCode::UnknownMember).await;
    let beat = Body::GroupHeartbeat(GroupHeartbeatRequest {
        group: GROUP.into(),
        member_id: old_id,
        ..Default::default()
    });
    assert_refused(&client, beat, ErrorCode::UnknownMember).await;
    for member in members {
        member.stop().await;
    }
}

/// What the nodes logged about consumer groups (for a failure report).
fn node_logs(cluster: &ProcessCluster) -> String {
    (1..=cluster.size())
        .filter_map(|id| std::fs::read_to_string(cluster.dir().join(format!("node-{id}.log"))).ok())
        .flat_map(|text| {
            text.lines()
                .filter(|line| line.contains("group"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

async fn assert_refused(client: &Cluster, body: Body, code: ErrorCode) {
    match client
        .request(Route::MetadataLeader, body, Retry::All)
        .await
    {
        Err(ClientError::Server(message)) => assert_eq!(message.code(), code, "{message:?}"),
        other => panic!("expected {code:?}, got {other:?}"),
    }
}

/// A member that joins without heartbeating is expelled after its session, and its commit
/// for a partition it owned is refused; a member may not commit for a partition it does not
/// own; an outsider may not commit while the group has members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_are_fenced_by_membership_and_ownership() {
    let cluster = ProcessCluster::start(3);
    let bootstrap = cluster.addresses().join(",");
    create_topic(&bootstrap).await;
    let client = Cluster::connect(ClientOptions {
        bootstrap: cluster.addresses(),
        ..ClientOptions::default()
    })
    .await
    .unwrap();
    let join = |client_id: &str| {
        Body::JoinGroup(JoinGroupRequest {
            group: GROUP.into(),
            topics: vec![TOPIC.into()],
            session_timeout_ms: 1_000,
            client_id: client_id.into(),
            rebalance_timeout_ms: 0,
        })
    };
    let Body::JoinGroupResponse(first) = client
        .request(Route::MetadataLeader, join("first"), Retry::Determinate)
        .await
        .unwrap()
    else {
        panic!("not a join answer")
    };
    assert_eq!(first.owned.len(), 1, "{first:?}");
    assert_eq!(first.owned[0].partitions.len(), PARTITIONS as usize);
    let commit = |member: &str, partition: u32| {
        Body::OffsetCommit(OffsetCommitRequest {
            group: GROUP.into(),
            topic: TOPIC.into(),
            offsets: vec![PartitionOffset {
                partition,
                offset: 0,
                committed: true,
            }],
            member_id: member.into(),
            generation: first.generation,
        })
    };
    let answer = client
        .request(
            Route::MetadataLeader,
            commit(&first.member_id, 0),
            Retry::All,
        )
        .await
        .unwrap();
    assert!(
        matches!(answer, Body::OffsetCommitResponse(_)),
        "{answer:?}"
    );
    let outsider = commit("", 0);
    assert_refused(&client, outsider, ErrorCode::GroupNotEmpty).await;
    let run = raftlog(&bootstrap, &["group", "delete", GROUP], "").await;
    assert_eq!(run.code, 2, "a group with members is not deleted: {run:?}");

    // A second member: the first is asked to release half; until it does, the second owns
    // nothing and may commit for nothing.
    let Body::JoinGroupResponse(second) = client
        .request(Route::MetadataLeader, join("second"), Retry::Determinate)
        .await
        .unwrap()
    else {
        panic!("not a join answer")
    };
    assert!(second.owned.is_empty(), "{second:?}");
    assert_refused(
        &client,
        commit(&second.member_id, 0),
        ErrorCode::IllegalGeneration,
    )
    .await;

    // Neither heartbeats: both are expelled after their session, and fenced.
    sleep(Duration::from_millis(2_500)).await;
    assert_refused(
        &client,
        commit(&first.member_id, 0),
        ErrorCode::UnknownMember,
    )
    .await;
    let group = describe(&bootstrap).await.expect("the group is known");
    assert_eq!(group["state"], "empty", "{group}");
    let run = raftlog(&bootstrap, &["group", "delete", GROUP], "").await;
    assert_eq!(run.code, 0, "{run:?}");
    let run = raftlog(&bootstrap, &["group", "describe", GROUP], "").await;
    assert_eq!(run.code, 3, "a deleted group is unknown: {run:?}");
}

/// The assignment events of one member's log: (generation, event, partitions).
fn events(log: &[String]) -> Vec<(u64, String, Vec<u32>)> {
    log.iter()
        .filter_map(|line| {
            let rest = line.strip_prefix(&format!("group {GROUP} generation "))?;
            let (generation, rest) = rest.split_once(": ")?;
            let (event, partitions) = rest.split_once(' ')?;
            let partitions = partitions
                .split(',')
                .filter_map(|p| p.rsplit_once('/')?.1.parse().ok())
                .collect();
            Some((generation.parse().ok()?, event.to_owned(), partitions))
        })
        .collect()
}

/// The coordinator (the metadata leader) is killed while a fourth member joins: the group
/// settles under the next coordinator, at a higher generation, and the members' own logs
/// show no partition owned by two members in any one generation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_failover_during_a_rebalance_never_gives_a_partition_two_owners() {
    let mut cluster = ProcessCluster::start(3);
    let bootstrap = cluster.addresses().join(",");
    create_topic(&bootstrap).await;
    let mut members: Vec<Member> = (0..3).map(|_| Member::start(&bootstrap)).collect();
    let mut generation = 0;
    wait_for("three members own two partitions each", async || {
        let group = describe(&bootstrap).await;
        if !settled_with(&group, 3) {
            return false;
        }
        generation = group.as_ref().unwrap()["generation"].as_u64().unwrap();
        true
    })
    .await;
    produce(&bootstrap, (0..300).map(|i| format!("r{i}"))).await;
    let status = raftlog(&bootstrap, &["cluster", "status", "--json"], "").await;
    let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    let coordinator = status["metadata_leader"].as_u64().unwrap();
    members.push(Member::start(&bootstrap));
    sleep(Duration::from_millis(300)).await;
    cluster.kill(coordinator);
    wait_for(
        "four members share the partitions under a new coordinator",
        async || {
            let group = describe(&bootstrap).await;
            settled_with(&group, 4)
                && group.as_ref().unwrap()["generation"].as_u64().unwrap() > generation
        },
    )
    .await;
    cluster.spawn(coordinator);
    produce(&bootstrap, (0..300).map(|i| format!("s{i}"))).await;
    wait_for("every record is printed", async || {
        let values: BTreeSet<String> = members
            .iter()
            .flat_map(|m| m.printed().into_iter().map(|(_, _, v)| v))
            .collect();
        values.len() == 600
    })
    .await;

    // Each member's ownership of a partition spans [the generation it learned of it, the
    // generation it was asked back or lost]: those spans of two members never overlap.
    let mut spans: BTreeMap<u32, Vec<(u64, u64, usize)>> = BTreeMap::new();
    for (index, member) in members.iter().enumerate() {
        let mut since: BTreeMap<u32, u64> = BTreeMap::new();
        for (generation, event, partitions) in events(&member.log()) {
            for partition in partitions {
                if event == "assigned" {
                    since.insert(partition, generation);
                } else if let Some(from) = since.remove(&partition) {
                    spans
                        .entry(partition)
                        .or_default()
                        .push((from, generation, index));
                }
            }
        }
        for (partition, from) in since {
            spans
                .entry(partition)
                .or_default()
                .push((from, u64::MAX, index));
        }
    }
    eprintln!("ownership spans (from, to, member) per partition: {spans:?}");
    // A violation is judged from the members' own logs, so those logs are what explains it.
    let logs: Vec<Vec<String>> = members.iter().map(Member::log).collect();
    for (partition, mut owned) in spans {
        owned.sort_unstable();
        for pair in owned.windows(2) {
            let ((_, first_end, a), (second_start, _, b)) = (pair[0], pair[1]);
            assert!(
                a == b || first_end < second_start,
                "partition {partition} owned by members {a} and {b} in one generation: \
                 {owned:?}; member logs: {logs:#?}"
            );
        }
    }
    for member in members {
        member.stop().await;
    }
}

/// The library's group consumer: a second member takes half the partitions only after the
/// first committed and released them (the listener sees Revoked, then the other Assigned),
/// and the two together read every record exactly once, since nothing crashed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_hands_partitions_over_with_listener_callbacks_and_no_repeats() {
    use raftlog::client::{Consumer, GroupOptions, Rebalance};
    let cluster = ProcessCluster::start(3);
    let bootstrap = cluster.addresses().join(",");
    create_topic(&bootstrap).await;
    produce(&bootstrap, (0..600).map(|i| format!("x{i}"))).await;
    let client = Cluster::connect(ClientOptions {
        bootstrap: cluster.addresses(),
        ..ClientOptions::default()
    })
    .await
    .unwrap();
    let options = || GroupOptions {
        session_timeout_ms: SESSION_MS as u32,
        ..GroupOptions::default()
    };
    let seen: Arc<Mutex<Vec<(usize, Rebalance)>>> = Arc::default();
    let mut first = Consumer::subscribe(client.clone(), GROUP, &[TOPIC], options())
        .await
        .unwrap();
    let log = seen.clone();
    first.on_rebalance(move |event| log.lock().unwrap().push((1, event.clone())));
    let mut read: Vec<String> = Vec::new();
    // The first member reads half of what is there, then a second joins.
    while read.len() < 300 {
        for record in first.poll(Duration::from_millis(200)).await.unwrap() {
            read.push(String::from_utf8(record.value.to_vec()).unwrap());
        }
    }
    let mut second = Consumer::subscribe(client.clone(), GROUP, &[TOPIC], options())
        .await
        .unwrap();
    let log = seen.clone();
    second.on_rebalance(move |event| log.lock().unwrap().push((2, event.clone())));
    let started = Instant::now();
    while read.len() < 600 {
        assert!(started.elapsed() < STEP_BOUND, "read {} of 600", read.len());
        for member in [&mut first, &mut second] {
            for record in member.poll(Duration::from_millis(100)).await.unwrap() {
                read.push(String::from_utf8(record.value.to_vec()).unwrap());
            }
        }
    }
    // Each keeps polling until the hand-over is complete.
    while first.owned().len() + second.owned().len() < PARTITIONS as usize
        || first.owned().len() != second.owned().len()
    {
        assert!(
            started.elapsed() < STEP_BOUND,
            "the hand-over never completed"
        );
        for member in [&mut first, &mut second] {
            for record in member.poll(Duration::from_millis(100)).await.unwrap() {
                read.push(String::from_utf8(record.value.to_vec()).unwrap());
            }
        }
    }
    let distinct: BTreeSet<&String> = read.iter().collect();
    assert_eq!(distinct.len(), 600);
    assert_eq!(read.len(), 600, "a record was read twice");
    let events = seen.lock().unwrap().clone();
    let revoked_at = events
        .iter()
        .position(|(member, e)| *member == 1 && matches!(e, Rebalance::Revoked { .. }))
        .expect("the first member gave partitions back");
    let assigned_at = events
        .iter()
        .position(|(member, e)| {
            *member == 2
                && matches!(e, Rebalance::Assigned { partitions, .. } if !partitions.is_empty())
        })
        .expect("the second member got partitions");
    assert!(revoked_at < assigned_at, "{events:?}");
    first.close().await.unwrap();
    second.close().await.unwrap();
}
