//! Membership changes in the fault schedule: partitions moved (a follower replaced, the
//! leader replaced, a move cancelled half-way) and nodes decommissioned (any node, the
//! metadata leader, a decommission cancelled, a node killed for good and decommissioned
//! while dead). A change starts while a fault is held and is
//! carried on across the faults that follow; a node once removed is stopped for good and a
//! fresh node (a new id, an empty disk) joins in its place, as an operator replaces a node.
//!
//! The changes are checked at the fault boundaries (every fault healed): each must finish,
//! or be cancelled, within [`CHANGE_MS_MAX`]; at the end no partition may be moving, no node
//! draining, and every partition must have its replication factor on live members. What the
//! changes must not do to the data (lose, duplicate or reorder a record) the usual checker
//! sees, since consumers follow the partitions from node to node.
//!
//! Partitions bite nodes that joined only with network namespaces: through the TCP proxy
//! fallback a joined node registers its direct peer address, which no proxy sits in front of.

use std::collections::BTreeSet;

use raftlog::client::{Admin, ClientError, ClientOptions, Cluster};

use super::*;

/// Longest a change may take to finish once the fault it started under healed.
pub const CHANGE_MS_MAX: u64 = 120_000;
/// Longest one request of a change (a move order, a decommission) may take.
const REQUEST_MS_MAX: u64 = 10_000;
/// The replication factor of a membership run's topic: one node fewer than the members, so
/// every partition has somewhere to move to.
pub const REPLICATION_FACTOR: u64 = 3;
/// The first voters of a membership run; node 4 joins at the start.
pub const FOUNDERS: u64 = 3;
/// Members while no node change is under way.
pub const MEMBERS: u64 = 4;

/// A change of the cluster's shape in the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChangeKind {
    /// One follower replica of a partition replaced by a member outside its replica set.
    MoveFollower,
    /// The partition leader's replica replaced: the leader is removed by the new
    /// configuration and must hand its leadership away.
    MoveLeader,
    /// A move ordered and cancelled again (the original replicas asked for) a moment later:
    /// the partition ends on either set, never on a mix.
    CancelMove,
    /// A node decommissioned; once removed it is stopped and a fresh node joins.
    Decommission,
    /// The metadata leader decommissioned: its metadata seat moves too.
    DecommissionMetadataLeader,
    /// A decommission cancelled (recommission) at the next fault boundary, unless it finished
    /// first (then the node is replaced as after [`ChangeKind::Decommission`]).
    Recommission,
    /// A node killed (SIGKILL) for good, then decommissioned while dead, as an operator
    /// retires a machine that failed: its replicas are rebuilt from the others, and a fresh
    /// node joins in its place.
    ReplaceDead,
}

/// Every change kind, in the order a run's first round shuffles.
pub const ALL_CHANGES: [ChangeKind; 7] = [
    ChangeKind::MoveFollower,
    ChangeKind::MoveLeader,
    ChangeKind::CancelMove,
    ChangeKind::Decommission,
    ChangeKind::DecommissionMetadataLeader,
    ChangeKind::Recommission,
    ChangeKind::ReplaceDead,
];

impl ChangeKind {
    /// Whether the change takes a node out (one at a time: four members, replication 3).
    fn changes_nodes(self) -> bool {
        matches!(
            self,
            ChangeKind::Decommission
                | ChangeKind::DecommissionMetadataLeader
                | ChangeKind::Recommission
                | ChangeKind::ReplaceDead
        )
    }
}

/// The change each fault of a schedule carries: every kind once in the first faults (in a
/// seeded order), then one fault in two carries a random kind. Drawn from its own stream, so
/// a seed's faults are the same with or without changes.
pub fn changes_for(seed: u64, kinds: &[ChangeKind], faults: usize) -> Vec<Option<ChangeKind>> {
    if kinds.is_empty() {
        return vec![None; faults];
    }
    let mut rng = Rng::new(seed, SOURCE_MEMBERSHIP);
    let mut first = kinds.to_vec();
    for i in (1..first.len()).rev() {
        first.swap(i, rng.below(i as u64 + 1) as usize);
    }
    (0..faults)
        .map(|i| match first.get(i) {
            Some(kind) => Some(*kind),
            None if rng.below(2) == 0 => Some(kinds[rng.below(kinds.len() as u64) as usize]),
            None => None,
        })
        .collect()
}

/// A change under way.
#[derive(Debug)]
enum Underway {
    /// Partition `partition` ordered from `from` to `to`; with `cancelled`, back to `from`.
    Move {
        partition: u32,
        from: Vec<u64>,
        to: Vec<u64>,
        cancelled: bool,
    },
    /// Node `node` is draining; `recommission` asks for it back at the next boundary.
    Drain { node: u64, recommission: bool },
    /// Node `node` was started with `--join` and must become an active member.
    Join { node: u64 },
}

/// One change under way, with when it started and for the report.
#[derive(Debug)]
struct Change {
    number: usize,
    kind: ChangeKind,
    underway: Underway,
    started: Instant,
}

/// Why a change did not start.
pub enum NotStarted {
    /// It cannot happen in this cluster's shape (said why); nothing is wrong.
    Skipped(String),
    /// The cluster did not answer (a fault holds); try again after the heal.
    Unanswered(String),
}

/// The membership side of a run: who is a member, the changes under way, the spare ids.
pub struct Reshape {
    admin: Admin,
    history: Shared,
    /// Nodes of the cluster (active or draining), whether running or under a fault.
    members: BTreeSet<u64>,
    /// The node whose data lives on the tmpfs of the disk-full fault: never decommissioned,
    /// so that fault always has a member to fill.
    protected: Option<u64>,
    next_spare: u64,
    last_id: u64,
    underway: Vec<Change>,
    /// Node changes waiting for the one under way (one at a time).
    queued: VecDeque<(usize, ChangeKind, u64)>,
    /// A node killed for good whose decommission the cluster has not taken yet: a retry
    /// decommissions it rather than killing another.
    dead: Option<u64>,
}

impl Reshape {
    /// Reaches the cluster through every prepared address; `members` are running.
    pub async fn new(
        cluster: &ProcessCluster,
        history: Shared,
        members: impl IntoIterator<Item = u64>,
        protected: Option<u64>,
    ) -> Reshape {
        let options = ClientOptions {
            bootstrap: cluster.addresses(),
            request_timeout: Duration::from_millis(REQUEST_MS_MAX),
            bootstrap_timeout: Duration::from_secs(30),
            ..ClientOptions::default()
        };
        let admin = Admin::new(
            Cluster::connect(options)
                .await
                .expect("the cluster answers"),
        );
        let members: BTreeSet<u64> = members.into_iter().collect();
        let next_spare = members.iter().max().copied().unwrap_or(0) + 1;
        Reshape {
            admin,
            history,
            members,
            protected,
            next_spare,
            last_id: cluster.size(),
            underway: Vec::new(),
            queued: VecDeque::new(),
            dead: None,
        }
    }

    /// The nodes faults may be aimed at: members, in id order.
    pub fn members(&self) -> Vec<u64> {
        self.members.iter().copied().collect()
    }

    fn note(&self, line: String) {
        eprintln!("{line}");
        self.history.lock().unwrap().note(line);
    }

    async fn metadata(&self) -> Result<Arc<MetadataResponse>, String> {
        match timeout(
            Duration::from_millis(REQUEST_MS_MAX),
            self.admin.cluster().refresh_metadata(),
        )
        .await
        {
            Ok(Ok(metadata)) => Ok(metadata),
            Ok(Err(error)) => Err(format!("metadata: {error}")),
            Err(_) => Err(format!("metadata: no answer within {REQUEST_MS_MAX} ms")),
        }
    }

    /// Starts change `kind` (fault `number`'s), choosing its targets with `pick`.
    pub async fn start(
        &mut self,
        cluster: &mut ProcessCluster,
        number: usize,
        kind: ChangeKind,
        pick: u64,
    ) -> Result<String, NotStarted> {
        // While a node leaves or joins, every active node holds a replica of every
        // partition (four members, replication 3): a move has nowhere to go, and a second
        // node leaving would leave too few. Both wait for the node change.
        if self.node_change_underway() {
            self.queued.push_back((number, kind, pick));
            return Ok("queued behind the node change under way".into());
        }
        let metadata = self.metadata().await.map_err(NotStarted::Unanswered)?;
        let mut rng = Rng(SplitMix64::new(pick));
        let (underway, what) = if kind.changes_nodes() {
            self.start_drain(cluster, kind, &metadata, &mut rng).await?
        } else {
            self.start_move(kind, &metadata, &mut rng).await?
        };
        let mut h = self.history.lock().unwrap();
        h.faults.entry(format!("{kind:?}")).or_default().0 += 1;
        drop(h);
        self.underway.push(Change {
            number,
            kind,
            underway,
            started: Instant::now(),
        });
        Ok(what)
    }

    fn node_change_underway(&self) -> bool {
        self.underway
            .iter()
            .any(|c| matches!(c.underway, Underway::Drain { .. } | Underway::Join { .. }))
    }

    /// Active members the metadata shows, by id.
    fn active(&self, metadata: &MetadataResponse) -> Vec<u64> {
        metadata
            .nodes
            .iter()
            .filter(|node| node.state == "active" && self.members.contains(&node.node_id))
            .map(|node| node.node_id)
            .collect()
    }

    async fn start_move(
        &mut self,
        kind: ChangeKind,
        metadata: &MetadataResponse,
        rng: &mut Rng,
    ) -> Result<(Underway, String), NotStarted> {
        let active = self.active(metadata);
        let moving: HashSet<u32> = self
            .underway
            .iter()
            .filter_map(|c| match c.underway {
                Underway::Move { partition, .. } => Some(partition),
                _ => None,
            })
            .collect();
        let partitions = topic_partitions(metadata);
        let first = rng.below(u64::from(PARTITIONS)) as u32;
        let chosen = (0..PARTITIONS)
            .map(|k| (first + k) % PARTITIONS)
            .filter(|p| !moving.contains(p))
            .filter_map(|p| partitions.iter().find(|info| info.partition == p))
            .find(|info| {
                info.target_replicas.is_empty()
                    && active.iter().any(|node| !info.replicas.contains(node))
            });
        let Some(info) = chosen else {
            return Err(NotStarted::Skipped(
                "no partition idle with an active node outside its replicas".into(),
            ));
        };
        let partition = info.partition;
        let from = sorted(info.replicas.clone());
        let leaving = match kind {
            ChangeKind::MoveLeader if from.contains(&info.leader_id) => info.leader_id,
            _ => {
                let followers: Vec<u64> = from
                    .iter()
                    .copied()
                    .filter(|&n| n != info.leader_id)
                    .collect();
                followers[rng.below(followers.len() as u64) as usize]
            }
        };
        let outside: Vec<u64> = active
            .iter()
            .copied()
            .filter(|n| !from.contains(n))
            .collect();
        let arriving = outside[rng.below(outside.len() as u64) as usize];
        let to = sorted(
            from.iter()
                .copied()
                .filter(|&n| n != leaving)
                .chain([arriving])
                .collect(),
        );
        self.order_move(partition, &to).await?;
        let mut what = format!(
            "move partition {partition} {from:?} -> {to:?} (node {leaving} leaves{})",
            if leaving == info.leader_id {
                ", the leader"
            } else {
                ""
            }
        );
        let cancelled = kind == ChangeKind::CancelMove;
        if cancelled {
            let wait = rng.range(50, 500);
            sleep(Duration::from_millis(wait)).await;
            self.order_move(partition, &from).await?;
            let _ = write!(what, ", cancelled {wait} ms later");
        }
        Ok((
            Underway::Move {
                partition,
                from,
                to,
                cancelled,
            },
            what,
        ))
    }

    async fn order_move(&self, partition: u32, replicas: &[u64]) -> Result<(), NotStarted> {
        let order = self.admin.move_partition(TOPIC, partition, replicas);
        match timeout(Duration::from_millis(REQUEST_MS_MAX), order).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(refusal(
                error,
                format!("move of partition {partition} to {replicas:?}"),
            )),
            Err(_) => Err(NotStarted::Unanswered(format!(
                "move of partition {partition}: no answer within {REQUEST_MS_MAX} ms"
            ))),
        }
    }

    async fn start_drain(
        &mut self,
        cluster: &mut ProcessCluster,
        kind: ChangeKind,
        metadata: &MetadataResponse,
        rng: &mut Rng,
    ) -> Result<(Underway, String), NotStarted> {
        if let Some(dead) = self.dead {
            return self.decommission_dead(cluster, dead).await;
        }
        // A node under a kill or pause fault is not killed for good: its heal restarts it.
        let up = |n: &u64| cluster.is_running(*n) && !cluster.is_paused(*n);
        let candidates: Vec<u64> = self
            .active(metadata)
            .into_iter()
            .filter(|n| Some(*n) != self.protected)
            .filter(|n| kind != ChangeKind::ReplaceDead || up(n))
            .collect();
        if (self.active(metadata).len() as u64) <= REPLICATION_FACTOR || candidates.is_empty() {
            return Err(NotStarted::Skipped(format!(
                "active members {:?}: none can leave",
                self.active(metadata)
            )));
        }
        let leader = metadata.metadata_leader_id;
        let node = match kind {
            ChangeKind::DecommissionMetadataLeader if candidates.contains(&leader) => leader,
            _ => candidates[rng.below(candidates.len() as u64) as usize],
        };
        if kind == ChangeKind::ReplaceDead {
            if cluster.is_running(node) {
                cluster.kill(node);
            }
            // Out of the members at once: no fault may pick a node that is gone.
            self.members.remove(&node);
            self.dead = Some(node);
            return self.decommission_dead(cluster, node).await;
        }
        let order = self.admin.decommission_node(node);
        match timeout(Duration::from_millis(REQUEST_MS_MAX), order).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return Err(refusal(error, format!("decommission of node {node}"))),
            Err(_) => {
                return Err(NotStarted::Unanswered(format!(
                    "decommission of node {node}: no answer within {REQUEST_MS_MAX} ms"
                )))
            }
        }
        let role = if node == leader {
            " (the metadata leader)"
        } else {
            ""
        };
        Ok((
            Underway::Drain {
                node,
                recommission: kind == ChangeKind::Recommission,
            },
            format!("decommission node {node}{role}"),
        ))
    }

    /// Decommissions `node`, killed for good. A refusal the metadata decided starts it again
    /// (the change is skipped, the cluster keeps its shape); an unanswered order is retried.
    async fn decommission_dead(
        &mut self,
        cluster: &mut ProcessCluster,
        node: u64,
    ) -> Result<(Underway, String), NotStarted> {
        let order = self.admin.decommission_node(node);
        let refused = match timeout(Duration::from_millis(REQUEST_MS_MAX), order).await {
            Ok(Ok(_)) => {
                self.dead = None;
                return Ok((
                    Underway::Drain {
                        node,
                        recommission: false,
                    },
                    format!("node {node} killed for good, decommissioned while dead"),
                ));
            }
            Ok(Err(error)) => refusal(error, format!("decommission of dead node {node}")),
            Err(_) => NotStarted::Unanswered(format!(
                "decommission of dead node {node}: no answer within {REQUEST_MS_MAX} ms"
            )),
        };
        if matches!(refused, NotStarted::Skipped(_)) {
            self.dead = None;
            cluster.spawn(node);
            self.members.insert(node);
        }
        Err(refused)
    }

    /// Checks every change under way (call with every fault healed): finished ones are
    /// noted, a removed node is stopped and replaced, a queued node change starts.
    ///
    /// # Errors
    /// A change that outlasted [`CHANGE_MS_MAX`], or a replacement that could not start.
    pub async fn advance(&mut self, cluster: &mut ProcessCluster) -> Result<(), String> {
        if self.underway.is_empty() && self.queued.is_empty() {
            return Ok(());
        }
        let Ok(metadata) = self.metadata().await else {
            return self.check_bounds();
        };
        let mut still = Vec::new();
        for change in std::mem::take(&mut self.underway) {
            if let Some(next) = self.step(change, &metadata, cluster).await? {
                still.push(next);
            }
        }
        self.underway.extend(still);
        while !self.node_change_underway() {
            let Some((number, kind, pick)) = self.queued.pop_front() else {
                break;
            };
            match self.start(cluster, number, kind, pick).await {
                Ok(what) => self.note(format!("fault {number} change {kind:?}: {what}")),
                Err(NotStarted::Skipped(why)) => {
                    self.history
                        .lock()
                        .unwrap()
                        .skipped
                        .push(format!("{kind:?}: {why}"));
                    self.note(format!("fault {number} change {kind:?} skipped: {why}"));
                }
                // Tried again at the next boundary.
                Err(NotStarted::Unanswered(_)) => {
                    self.queued.push_front((number, kind, pick));
                    break;
                }
            }
        }
        self.check_bounds()
    }

    fn check_bounds(&self) -> Result<(), String> {
        match self
            .underway
            .iter()
            .find(|c| c.started.elapsed() > Duration::from_millis(CHANGE_MS_MAX))
        {
            Some(change) => Err(format!(
                "change of fault {} ({:?}) unfinished after {CHANGE_MS_MAX} ms: {:?}",
                change.number, change.kind, change.underway
            )),
            None => Ok(()),
        }
    }

    /// One change's next step: `None` once it finished.
    async fn step(
        &mut self,
        mut change: Change,
        metadata: &MetadataResponse,
        cluster: &mut ProcessCluster,
    ) -> Result<Option<Change>, String> {
        let (number, kind) = (change.number, change.kind);
        let finished = match &mut change.underway {
            Underway::Move {
                partition,
                from,
                to,
                cancelled,
            } => {
                let info = topic_partitions(metadata)
                    .into_iter()
                    .find(|info| info.partition == *partition);
                match info {
                    Some(info) if info.target_replicas.is_empty() => {
                        let now = sorted(info.replicas.clone());
                        let ended = if now == *to {
                            "as ordered"
                        } else if *cancelled && now == *from {
                            "back where it was"
                        } else {
                            "moved again since (a decommission)"
                        };
                        Some(format!("partition {partition} on {now:?}, {ended}"))
                    }
                    _ => None,
                }
            }
            Underway::Drain { node, recommission } => {
                let node = *node;
                match node_state(metadata, node).as_deref() {
                    Some("removed") => {
                        if cluster.is_running(node) {
                            cluster.kill(node);
                        }
                        self.members.remove(&node);
                        let Some(spare) = self.replace(cluster) else {
                            self.note(format!(
                                "fault {number} change {kind:?}: node {node} removed and \
                                 stopped; no spare id left, the cluster stays smaller"
                            ));
                            return Ok(None);
                        };
                        self.note(format!(
                            "fault {number} change {kind:?}: node {node} removed and \
                             stopped; node {spare} joins"
                        ));
                        change.underway = Underway::Join { node: spare };
                        return Ok(Some(change));
                    }
                    Some("draining") if *recommission => {
                        let back = self.admin.recommission_node(node);
                        match timeout(Duration::from_millis(REQUEST_MS_MAX), back).await {
                            Ok(Ok(info)) if info.state == "active" => {
                                Some(format!("node {node} recommissioned while draining"))
                            }
                            // Removed meanwhile: replaced at the next boundary.
                            _ => None,
                        }
                    }
                    _ => None,
                }
            }
            Underway::Join { node } => (node_state(metadata, *node).as_deref() == Some("active"))
                .then(|| format!("node {node} joined and is active")),
        };
        let Some(finished) = finished else {
            return Ok(Some(change));
        };
        let ms = change.started.elapsed().as_millis() as u64;
        self.history
            .lock()
            .unwrap()
            .faults
            .entry(format!("{kind:?}"))
            .or_default()
            .1 += ms;
        self.note(format!(
            "fault {number} change {kind:?} done after {ms} ms: {finished}"
        ));
        Ok(None)
    }

    /// Starts the next spare id with `--join` (asking the members left), if one is left.
    fn replace(&mut self, cluster: &mut ProcessCluster) -> Option<u64> {
        if self.next_spare > self.last_id {
            return None;
        }
        let spare = self.next_spare;
        self.next_spare += 1;
        cluster.join_via(&self.members());
        cluster.spawn(spare);
        self.members.insert(spare);
        Some(spare)
    }

    /// Waits (bounded) until every change finished and the cluster has its shape back, then
    /// checks that shape: no partition moving, no node draining, every partition with its
    /// replication factor on active members.
    ///
    /// # Errors
    /// What did not finish, or what is wrong with the shape.
    pub async fn settle(&mut self, cluster: &mut ProcessCluster) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_millis(CHANGE_MS_MAX);
        while !(self.underway.is_empty() && self.queued.is_empty()) {
            if Instant::now() > deadline {
                return Err(format!(
                    "changes unfinished {CHANGE_MS_MAX} ms after the last fault: {:?}, queued {:?}",
                    self.underway, self.queued
                ));
            }
            self.advance(cluster).await?;
            sleep(Duration::from_millis(300)).await;
        }
        let metadata = self.metadata().await?;
        let active = self.active(&metadata);
        for node in &metadata.nodes {
            if node.state == "draining" {
                return Err(format!("node {} still draining", node.node_id));
            }
        }
        for info in topic_partitions(&metadata) {
            let replicas = sorted(info.replicas.clone());
            let distinct: BTreeSet<u64> = replicas.iter().copied().collect();
            if !info.target_replicas.is_empty()
                || distinct.len() as u64 != REPLICATION_FACTOR
                || !replicas.iter().all(|n| active.contains(n))
            {
                return Err(format!(
                    "partition {} ends on {replicas:?} (target {:?}), active members {active:?}",
                    info.partition, info.target_replicas
                ));
            }
        }
        self.note(format!(
            "fault changes settled: members {:?}, replicas {:?}",
            self.members(),
            topic_partitions(&metadata)
                .iter()
                .map(|info| sorted(info.replicas.clone()))
                .collect::<Vec<_>>()
        ));
        Ok(())
    }
}

/// A refusal the metadata decided (the change makes no sense in the shape it sees) is a skip;
/// anything else means the cluster did not take the order.
fn refusal(error: ClientError, what: String) -> NotStarted {
    match &error {
        ClientError::Server(message) if message.code() == ErrorCode::InvalidRequest => {
            NotStarted::Skipped(format!("{what} refused: {}", message.message))
        }
        _ => NotStarted::Unanswered(format!("{what}: {error}")),
    }
}

/// The test topic's partitions as `metadata` describes them.
fn topic_partitions(metadata: &MetadataResponse) -> Vec<PartitionInfo> {
    metadata
        .topics
        .iter()
        .find(|topic| topic.name == TOPIC)
        .map(|topic| topic.partitions.clone())
        .unwrap_or_default()
}

fn node_state(metadata: &MetadataResponse, node: u64) -> Option<String> {
    metadata
        .nodes
        .iter()
        .find(|info| info.node_id == node)
        .map(|info| info.state.clone())
}

fn sorted(mut nodes: Vec<u64>) -> Vec<u64> {
    nodes.sort_unstable();
    nodes
}
