//! The replica driver over real files: proposals commit only after fsync, fetches see only
//! committed records and long-poll at the high watermark, and data survives a restart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use raftlog::config::{RaftConfig, StorageConfig};
use raftlog::proto::RaftMessage;
use raftlog::raft;
use raftlog::replica::{
    Acks, LogIsTheState, MessageSink, Replica, ReplicaConfig, ReplicaError, ReplicaHandle,
};
use raftlog::storage::LogConfig;
use tokio::time::timeout;

mod support;
use support::cluster::TmpfsMount;

const BOUND: Duration = Duration::from_secs(20);

fn config(dir: &std::path::Path, id: u64, voters: Vec<u64>) -> ReplicaConfig {
    let raft = RaftConfig::default().consensus(id, 7, voters);
    ReplicaConfig {
        raft,
        dir: dir.join(format!("node-{id}")),
        log: LogConfig {
            segment_size_bytes: 1 << 20,
            ..LogConfig::default()
        },
        tick_interval: Duration::from_millis(10),
        events_queue_max: 1024,
        retention_bytes: 0,
        retention_ms: 0,
        retention_check_interval: Duration::from_secs(60),
        track_producers: true,
        limits: raftlog::replica::ReplicaLimits::from_settings(
            &RaftConfig {
                tick_interval_ms: 10,
                ..RaftConfig::default()
            },
            &StorageConfig::default(),
        ),
        recovery: std::sync::Arc::new(raftlog::replica::throttle::RecoveryThrottle::new(0)),
    }
}

/// Routes messages between in-process replicas by node id.
#[derive(Default)]
struct Router {
    replicas: Mutex<HashMap<u64, ReplicaHandle<()>>>,
}

impl MessageSink for Router {
    fn send(&self, message: RaftMessage) {
        if let Some(handle) = self.replicas.lock().unwrap().get(&message.to) {
            handle.step(message);
        }
    }
}

async fn wait_for_leader(handles: &[ReplicaHandle<()>]) -> ReplicaHandle<()> {
    timeout(BOUND, async {
        loop {
            for handle in handles {
                if handle.status().role == Some(raft::Role::Leader) {
                    return handle.clone();
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("a leader within the bound")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_group_commits_fetches_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let sink: Arc<dyn MessageSink> = Arc::new(Router::default());
    let handle =
        Replica::start(config(dir.path(), 1, vec![1]), LogIsTheState, sink.clone()).unwrap();
    let leader = wait_for_leader(std::slice::from_ref(&handle)).await;

    let mut offsets = Vec::new();
    for i in 0..10u32 {
        let payload = Bytes::from(format!("batch {i}"));
        let appended = timeout(BOUND, leader.propose(payload, 3, Acks::All))
            .await
            .unwrap()
            .unwrap();
        offsets.push(appended.base_offset);
    }
    assert_eq!(
        offsets,
        (0..10).map(|i| i * 3).collect::<Vec<u64>>(),
        "offsets are dense across batches"
    );

    let fetched = leader
        .fetch(6, 1 << 20, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(fetched.high_watermark, 30);
    assert_eq!(fetched.entries.first().map(|e| e.base_offset), Some(6));
    assert_eq!(
        fetched.entries.last().map(|e| e.payload.clone()),
        Some(Bytes::from("batch 9"))
    );

    // At the high watermark a fetch waits, then answers empty.
    let waited = leader
        .fetch(30, 1 << 20, Duration::from_millis(100))
        .await
        .unwrap();
    assert!(waited.entries.is_empty());
    let err = leader
        .fetch(31, 1 << 20, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ReplicaError::OffsetOutOfRange {
                high_watermark: 30,
                ..
            }
        ),
        "{err}"
    );

    // A parked fetch is woken by a commit.
    let parked = tokio::spawn({
        let leader = leader.clone();
        async move { leader.fetch(30, 1 << 20, Duration::from_secs(10)).await }
    });
    // Propose only once the fetch is parked: this is the wake-up path, not a fetch that
    // happens to arrive after the commit.
    wait_until(|| leader.status().fetch_waiters == 1).await;
    leader
        .propose(Bytes::from("late"), 1, Acks::All)
        .await
        .unwrap();
    let woken = timeout(BOUND, parked).await.unwrap().unwrap().unwrap();
    assert_eq!(woken.entries.len(), 1);
    assert_eq!(woken.entries[0].payload, Bytes::from("late"));

    // The task ends once its last handle is gone; its status channel closes then.
    let mut status = handle.watch_status();
    drop((handle, leader));
    timeout(BOUND, async { while status.changed().await.is_ok() {} })
        .await
        .expect("the replica's task ends after its last handle is dropped");

    let reopened = Replica::start(config(dir.path(), 1, vec![1]), LogIsTheState, sink).unwrap();
    let leader = wait_for_leader(std::slice::from_ref(&reopened)).await;
    let next = timeout(
        BOUND,
        leader.propose(Bytes::from("after restart"), 1, Acks::All),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(next.base_offset, 31, "offsets continue after a restart");
    let all = leader
        .fetch(0, 1 << 30, Duration::from_millis(100))
        .await
        .unwrap();
    let payloads: Vec<Bytes> = all.entries.iter().map(|e| e.payload.clone()).collect();
    assert_eq!(payloads.len(), 12);
    assert_eq!(payloads[10], Bytes::from("late"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_replicate_and_a_follower_refuses_with_a_leader_hint() {
    let dir = tempfile::tempdir().unwrap();
    let router = Arc::new(Router::default());
    let sink: Arc<dyn MessageSink> = router.clone();
    let handles: Vec<ReplicaHandle<()>> = (1..=3)
        .map(|id| {
            Replica::start(
                config(dir.path(), id, vec![1, 2, 3]),
                LogIsTheState,
                sink.clone(),
            )
            .unwrap()
        })
        .collect();
    for (id, handle) in (1..=3).zip(&handles) {
        router.replicas.lock().unwrap().insert(id, handle.clone());
    }
    let leader = wait_for_leader(&handles).await;
    let leader_id = handles
        .iter()
        .position(|h| h.status().role == Some(raft::Role::Leader))
        .unwrap() as u64
        + 1;

    let proposals = (0..200u32).map(|i| leader.propose(Bytes::from(format!("r{i}")), 1, Acks::All));
    let results = timeout(BOUND, futures::future::join_all(proposals))
        .await
        .unwrap();
    let offsets: Vec<u64> = results
        .into_iter()
        .map(|r| r.unwrap().base_offset)
        .collect();
    let mut sorted = offsets.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (0..200).collect::<Vec<u64>>(),
        "every proposal got its own dense offset"
    );

    let follower = handles
        .iter()
        .find(|h| h.status().role != Some(raft::Role::Leader))
        .unwrap();
    let err = follower
        .propose(Bytes::from("x"), 1, Acks::All)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ReplicaError::NotLeader { leader_hint: Some(id) } if id == leader_id),
        "{err}"
    );

    // Every replica eventually serves the same committed records.
    for handle in &handles {
        let fetched = timeout(BOUND, async {
            loop {
                let fetched = handle
                    .fetch(0, 1 << 30, Duration::from_millis(50))
                    .await
                    .unwrap();
                if fetched.high_watermark == 200 {
                    return fetched;
                }
            }
        })
        .await
        .unwrap();
        let bases: Vec<u64> = fetched.entries.iter().map(|e| e.base_offset).collect();
        let broken: Vec<_> = bases.windows(2).filter(|w| w[1] != w[0] + 1).collect();
        assert!(
            broken.is_empty(),
            "offsets not dense: {broken:?} (of {} entries)",
            bases.len()
        );
        let values: Vec<Bytes> = fetched.entries.iter().map(|e| e.payload.clone()).collect();
        assert_eq!(values.len(), 200);
        for (i, offset) in offsets.iter().enumerate() {
            assert_eq!(
                values[*offset as usize],
                Bytes::from(format!("r{i}")),
                "the record at its acknowledged offset"
            );
        }
    }
}

/// Collects what a replica sends, for tests that play the other members by hand.
#[derive(Default)]
struct Recorder {
    sent: Mutex<Vec<RaftMessage>>,
}

impl MessageSink for Recorder {
    fn send(&self, message: RaftMessage) {
        self.sent.lock().unwrap().push(message);
    }
}

fn data_entry(term: u64, index: u64, payload: &'static str) -> raftlog::proto::Entry {
    raftlog::proto::Entry {
        term,
        index,
        kind: raftlog::proto::EntryKind::Data as i32,
        base_offset: 0,
        record_count: 1,
        timestamp_ms: 1_700_000_000_000,
        payload: Bytes::from_static(payload.as_bytes()),
    }
}

fn append_entries(
    from: u64,
    term: u64,
    entries: Vec<raftlog::proto::Entry>,
    leader_commit: u64,
) -> RaftMessage {
    RaftMessage {
        group_id: 7,
        from,
        to: 2,
        body: Some(raftlog::proto::raft_message::Body::AppendEntries(
            raftlog::proto::AppendEntries {
                term,
                leader_id: from,
                prev_log_index: 0,
                prev_log_term: 0,
                entries,
                leader_commit,
            },
        )),
    }
}

/// A follower holding an uncommitted entry from an old term gets, in one AppendEntries, the
/// new leader's entry at the same index together with a commit index covering it. The
/// storage must truncate the stale entry even though the core's commit index already covers
/// the index: only what was committed *before* this step is protected. (Found by the
/// fault-injection suite: the replica asserted against the new commit index and its task
/// panicked, leaving the partition without that replica until restart.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_replaces_a_stale_entry_when_the_same_append_commits_its_replacement() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Arc::new(Recorder::default());
    let sink: Arc<dyn MessageSink> = recorder.clone();
    let mut config = config(dir.path(), 2, vec![1, 2, 3]);
    // Stay a follower for the whole test.
    config.raft.election_timeout_ticks = 10_000;
    config.track_producers = false;
    let follower = Replica::start(config, LogIsTheState, sink).unwrap();

    follower.step(append_entries(1, 1, vec![data_entry(1, 1, "stale")], 0));
    timeout(BOUND, async {
        while follower.status().last_index < 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the stale entry is stored");
    // Let the append reach the disk (and the answer go out) before the new leader speaks.
    timeout(BOUND, async {
        while recorder.sent.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the follower answers the first leader");

    follower.step(append_entries(3, 2, vec![data_entry(2, 1, "fresh")], 1));
    timeout(BOUND, async {
        loop {
            let status = follower.status();
            assert_eq!(status.failed, None, "the replica stopped");
            if status.commit_index == 1 && status.high_watermark == 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the replacement is stored and committed");
    let fetched = timeout(BOUND, follower.fetch(0, 1 << 20, Duration::ZERO))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fetched.entries.len(), 1);
    assert_eq!(fetched.entries[0].term, 2);
    assert_eq!(&fetched.entries[0].payload[..], b"fresh");
}

/// Writes `path` until the file system refuses (bounded); returns the bytes written.
fn fill(path: &std::path::Path) -> u64 {
    use std::io::Write as _;
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0x5Au8; 64 << 10];
    let mut written = 0u64;
    while written < 256 << 20 {
        match file.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(k) => written += k as u64,
        }
    }
    written
}

/// Waits until `check` holds for `handle`'s status, within the bound.
async fn wait_status(
    handle: &ReplicaHandle<()>,
    what: &str,
    check: impl Fn(&raftlog::replica::ReplicaStatus) -> bool,
) {
    let waited = timeout(BOUND, async {
        while !check(&handle.status()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "{what}: status {:?}", handle.status());
}

/// The whole disk-full story on one member of three, without restarting it: while its disk
/// is full it keeps running, refuses writes with `STORAGE_FULL` and gives up leadership;
/// nothing acknowledged is lost; once space is freed it resumes by itself, catches up, and
/// takes writes again as leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_refuses_writes_then_the_same_replica_recovers_when_space_is_freed() {
    let mount_point = tempfile::tempdir().unwrap();
    let fs = match TmpfsMount::mount(mount_point.path(), 4 << 20) {
        Ok(fs) => fs,
        Err(reason) => {
            println!("SKIPPED full-disk replica test: {reason}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let router = Arc::new(Router::default());
    let sink: Arc<dyn MessageSink> = router.clone();
    let handles: Vec<ReplicaHandle<()>> = (1..=3)
        .map(|id| {
            let root = if id == 3 { fs.path() } else { dir.path() };
            let mut config = config(root, id, vec![1, 2, 3]);
            config.log.segment_size_bytes = 256 << 10;
            Replica::start(config, LogIsTheState, sink.clone()).unwrap()
        })
        .collect();
    for (id, handle) in (1..=3).zip(&handles) {
        router.replicas.lock().unwrap().insert(id, handle.clone());
    }
    let full = &handles[2];
    wait_for_leader(&handles).await.transfer_leader(3);
    wait_status(full, "node 3 leads", |s| s.role == Some(raft::Role::Leader)).await;

    let payload = |i: usize| Bytes::from(format!("{i:08}").repeat(1024));
    let mut acknowledged: Vec<(u64, Bytes)> = Vec::new();
    for i in 0..4 {
        let appended = timeout(BOUND, full.propose(payload(i), 1, Acks::All))
            .await
            .unwrap()
            .unwrap();
        acknowledged.push((appended.base_offset, payload(i)));
    }

    // Fill the disk: the active segment still has room, the next one cannot be reserved.
    let filler = fs.path().join("filler");
    assert!(fill(&filler) > 0);
    let mut refused = None;
    for i in 4..200 {
        match timeout(BOUND, full.propose(payload(i), 1, Acks::All)).await {
            Ok(Ok(appended)) => acknowledged.push((appended.base_offset, payload(i))),
            Ok(Err(error)) => {
                refused = Some(error);
                break;
            }
            Err(_) => panic!("proposal {i} unanswered within the bound"),
        }
    }
    let refused = refused.expect("a full disk refuses a write");
    assert!(
        matches!(refused, ReplicaError::StorageFull(_)),
        "the refusal names the full disk: {refused}"
    );
    assert_eq!(refused.code(), raftlog::proto::ErrorCode::StorageFull);
    // The status is published once the loop iteration that refused the write ends.
    wait_status(full, "node 3 reports its full disk", |s| {
        s.storage_full.is_some()
    })
    .await;
    let status = full.status();
    assert!(
        status.failed.is_none(),
        "the replica keeps running: {status:?}"
    );
    assert_ne!(
        status.role,
        Some(raft::Role::Leader),
        "it gave up leadership"
    );

    // The other two elect a leader and keep taking writes.
    let leader = timeout(BOUND, async {
        loop {
            if let Some(h) = handles[..2]
                .iter()
                .find(|h| h.status().role == Some(raft::Role::Leader))
            {
                return h.clone();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("a leader among the members with room");
    for i in 200..210 {
        let appended = timeout(BOUND, leader.propose(payload(i), 1, Acks::All))
            .await
            .unwrap()
            .unwrap();
        acknowledged.push((appended.base_offset, payload(i)));
    }
    let err = full
        .propose(payload(0), 1, Acks::All)
        .await
        .expect_err("still full");
    assert!(matches!(err, ReplicaError::StorageFull(_)), "{err}");

    // Free the space: the same replica resumes by itself and catches up.
    std::fs::remove_file(&filler).unwrap();
    let high_watermark = leader.status().high_watermark;
    wait_status(full, "node 3 resumes and catches up", |s| {
        s.storage_full.is_none() && s.high_watermark >= high_watermark
    })
    .await;
    let fetched = full
        .fetch(0, 1 << 30, Duration::from_millis(100))
        .await
        .unwrap();
    for (offset, value) in &acknowledged {
        let entry = fetched.entries.iter().find(|e| e.base_offset == *offset);
        assert_eq!(
            entry.map(|e| &e.payload),
            Some(value),
            "acknowledged record at offset {offset} on the recovered replica"
        );
    }

    // And it can lead and take writes again, without a restart.
    leader.transfer_leader(3);
    wait_status(full, "node 3 leads again", |s| {
        s.role == Some(raft::Role::Leader)
    })
    .await;
    let appended = timeout(BOUND, full.propose(payload(999), 1, Acks::All))
        .await
        .unwrap()
        .expect("the recovered replica takes writes");
    assert!(appended.base_offset >= high_watermark);

    // Stop every replica before the file system is unmounted.
    for handle in &handles {
        handle.stop(Duration::from_millis(100));
    }
    router.replicas.lock().unwrap().clear();
    for handle in &handles {
        let mut status = handle.watch_status();
        let _ = timeout(BOUND, async { while status.changed().await.is_ok() {} }).await;
    }
}

fn vote_request(from: u64, term: u64, last_log_index: u64, last_log_term: u64) -> RaftMessage {
    RaftMessage {
        group_id: 7,
        from,
        to: 2,
        body: Some(raftlog::proto::raft_message::Body::RequestVote(
            raftlog::proto::RequestVote {
                term,
                candidate_id: from,
                last_log_index,
                last_log_term,
                ..Default::default()
            },
        )),
    }
}

/// The vote answers `recorder` saw, in order.
fn votes_sent(recorder: &Recorder) -> Vec<bool> {
    use raftlog::proto::raft_message::Body;
    let sent = recorder.sent.lock().unwrap();
    sent.iter()
        .filter_map(|m| match &m.body {
            Some(Body::RequestVoteResponse(r)) if !r.pre_vote => Some(r.vote_granted),
            _ => None,
        })
        .collect()
}

/// A replica whose recovery dropped entries from the middle of its active segment (which it
/// may have acknowledged) neither campaigns nor votes, across restarts, until a leader has
/// brought it up to date; then it votes again and the marker file is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_that_lost_entries_votes_only_after_catching_up() {
    use raftlog::proto::raft_message::Body;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), 2, vec![1, 2, 3]);
    config.track_producers = false;
    let entries: Vec<_> = (1..=4u64)
        .map(|index| raftlog::proto::Entry {
            base_offset: index - 1,
            ..data_entry(1, index, "acknowledged")
        })
        .collect();
    {
        let mut log = raftlog::storage::Log::open(&config.dir, config.log.clone())
            .unwrap()
            .0;
        log.append(&entries).unwrap();
        log.sync().unwrap();
    }
    // Damage entry 2's payload: recovery keeps entry 1 and drops entries 2 to 4.
    let segment = config.dir.join(format!("{:020}.log", 1));
    let frame_bytes = raftlog::storage::frame::frame_bytes("acknowledged".len()) as u64;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&segment)
        .unwrap();
    use std::os::unix::fs::FileExt as _;
    let position = frame_bytes + frame_bytes - 3;
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, position).unwrap();
    file.write_all_at(&[byte[0] ^ 0xFF], position).unwrap();
    drop(file);

    let recorder = Arc::new(Recorder::default());
    let sink: Arc<dyn MessageSink> = recorder.clone();
    let marker = config.dir.join(raftlog::storage::VOTING_WITHHELD_FILE);
    let replica = Replica::start(config.clone(), LogIsTheState, sink.clone()).unwrap();
    assert_eq!(
        replica.status().last_index,
        1,
        "entries 2 to 4 were dropped"
    );
    assert!(marker.exists(), "the loss is remembered across restarts");
    // Far more than an election timeout (10 ticks of 10 ms): it does not campaign.
    replica.campaign();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let campaigned = recorder
        .sent
        .lock()
        .unwrap()
        .iter()
        .any(|m| matches!(m.body, Some(Body::RequestVote(_))));
    assert!(!campaigned, "a replica that lost entries campaigned");
    // A candidate as up to date as its shortened log is refused.
    replica.step(vote_request(3, 2, 1, 1));
    wait_until(|| !votes_sent(&recorder).is_empty()).await;
    assert_eq!(votes_sent(&recorder), vec![false]);

    // A leader of term 3 brings it up to date and commits an entry of its own term.
    let mut from_leader = entries.clone();
    from_leader.push(raftlog::proto::Entry {
        base_offset: 4,
        ..data_entry(3, 5, "new term")
    });
    replica.step(append_entries(1, 3, from_leader, 5));
    wait_until(|| replica.status().commit_index == 5).await;
    wait_until(|| !marker.exists()).await;
    // (As a leadership transfer, so that the lease of the leader just heard does not apply.)
    let mut request = vote_request(3, 4, 5, 3);
    if let Some(Body::RequestVote(rv)) = &mut request.body {
        rv.leadership_transfer = true;
    }
    replica.step(request);
    wait_until(|| votes_sent(&recorder).len() == 2).await;
    assert_eq!(votes_sent(&recorder), vec![false, true], "it votes again");
}

/// Waits until `done` holds, within the bound.
async fn wait_until(done: impl Fn() -> bool) {
    timeout(BOUND, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("condition within the bound");
}

/// A state machine with a bug: applying the entry `boom` panics.
struct PanicsOnBoom {
    applied: u64,
}

impl raftlog::replica::StateMachine for PanicsOnBoom {
    type Output = ();
    fn apply(&mut self, entry: &raftlog::proto::Entry) {
        self.applied = entry.index;
        assert!(entry.payload.as_ref() != b"boom", "the state machine's bug");
    }
    fn applied_index(&self) -> u64 {
        self.applied
    }
}

/// A panic in a replica's task (a bug) stops that replica only, answers its waiters, and makes
/// it show as failed, so the node does not look healthy with a group that no longer serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_replica_task_shows_as_failed_and_answers_its_waiters() {
    let dir = tempfile::tempdir().unwrap();
    let sink: Arc<dyn MessageSink> = Arc::new(Router::default());
    let handle = Replica::start(
        config(dir.path(), 1, vec![1]),
        PanicsOnBoom { applied: 0 },
        sink,
    )
    .unwrap();
    let leader = wait_for_leader(std::slice::from_ref(&handle)).await;
    timeout(BOUND, leader.propose(Bytes::from("fine"), 1, Acks::All))
        .await
        .unwrap()
        .expect("an ordinary entry is applied");
    let parked = leader.fetch(1, 1 << 20, BOUND);
    let boom = leader.propose(Bytes::from("boom"), 1, Acks::All);
    let (parked, boom) = timeout(BOUND, async { tokio::join!(parked, boom) })
        .await
        .expect("waiters are answered when the task dies");
    assert!(matches!(boom, Err(ReplicaError::Stopped)), "{boom:?}");
    // The parked fetch is answered: with the record, if the commit woke it before the apply
    // panicked, or as stopped.
    assert!(
        matches!(&parked, Ok(f) if f.high_watermark == 2)
            || matches!(parked, Err(ReplicaError::Stopped)),
        "{parked:?}"
    );
    let failed = timeout(BOUND, async {
        loop {
            if let Some(reason) = handle.status().failed {
                return reason;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the replica shows as failed");
    assert!(
        failed.contains("panicked") && failed.contains("the state machine's bug"),
        "{failed}"
    );
    let after = leader.propose(Bytes::from("later"), 1, Acks::All).await;
    assert!(matches!(after, Err(ReplicaError::Stopped)), "{after:?}");
}
