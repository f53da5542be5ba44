//! A cluster of real `raftlog serve` processes, each with its own data directory and
//! configuration file: on loopback, on loopback with peer traffic through a [`ProxyMesh`], or
//! each in its own network namespace ([`NamespaceNet`]). Processes are only ever signalled by
//! the PIDs this harness started; dropping the cluster kills them all.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;

use super::netns::NamespaceNet;
use super::proxy::ProxyMesh;

/// Ports handed out by [`free_address`] in this process, never handed out twice.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A free loopback address for a node to bind, now or at a later restart.
///
/// The port comes from below Linux's default ephemeral range (32768–60999): a port the kernel
/// picks for `bind(0)` or for the local end of an outgoing connection could be taken by one of
/// the test's own client connections before a node (re)binds it, and the node would fail to
/// start with "address in use". Below that range only an explicit bind can take it.
pub fn free_address() -> SocketAddr {
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let mut handed_out = HANDED_OUT.lock().unwrap();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let mut candidate = (nanos ^ std::process::id().wrapping_mul(2_654_435_761)) % SPAN;
    for _ in 0..SPAN {
        candidate = (candidate + 7_919) % SPAN;
        let port = (LOW + candidate) as u16;
        if handed_out.contains(&port) {
            continue;
        }
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            handed_out.insert(port);
            return listener.local_addr().unwrap();
        }
    }
    panic!("no free port in [{LOW}, {})", LOW + SPAN);
}

/// How the nodes reach each other, and so how partitions are made.
#[derive(Default)]
pub enum PeerNetwork {
    /// Directly on loopback; no partitions.
    #[default]
    Direct,
    /// On loopback through a fault-injecting TCP proxy per link (needs a tokio runtime).
    Proxy,
    /// Each node in its own network namespace; partitions are packet drops.
    Namespaces(NamespaceNet),
}

/// Ports every node uses inside its own namespace (the address tells the nodes apart).
const NAMESPACE_PORTS: (u16, u16, u16) = (9400, 9401, 9402);

/// How to start a cluster.
#[derive(Default)]
pub struct ClusterOptions {
    /// Number of nodes.
    pub nodes: u64,
    /// How peer traffic flows.
    pub network: PeerNetwork,
    /// TOML appended to every node's configuration file (`[raft]`, `[storage]` sections…).
    pub extra_config: String,
    /// How many of the nodes are first voters (`[peers]`); the others join (`join`) when
    /// spawned. All of them when unset.
    pub founders: Option<u64>,
}

/// A size-limited tmpfs mounted by the test; unmounted when dropped.
pub struct TmpfsMount {
    path: PathBuf,
}

impl TmpfsMount {
    /// Mounts a tmpfs of `size_bytes` on `path` (created if missing).
    ///
    /// # Errors
    /// Why the mount was refused (not root, no `mount`, a container without the right).
    pub fn mount(path: &Path, size_bytes: u64) -> Result<TmpfsMount, String> {
        std::fs::create_dir_all(path).map_err(|e| e.to_string())?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_bytes}")])
            .arg("tmpfs")
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "mount -t tmpfs refused: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(TmpfsMount {
            path: path.to_path_buf(),
        })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// A cluster of `raftlog serve` processes, killed by PID when dropped.
pub struct ProcessCluster {
    dir: Option<tempfile::TempDir>,
    /// Client address of node `i + 1`.
    pub clients: Vec<SocketAddr>,
    peers: Vec<SocketAddr>,
    metrics: Vec<SocketAddr>,
    mesh: Option<ProxyMesh>,
    namespaces: Option<NamespaceNet>,
    extra_config: String,
    founders: u64,
    /// Members a joining node asks; empty for the first voters.
    join_via: Vec<u64>,
    children: HashMap<u64, Child>,
    paused: HashSet<u64>,
    data_dirs: HashMap<u64, PathBuf>,
    mounts: Vec<TmpfsMount>,
}

impl ProcessCluster {
    /// Starts every node.
    pub fn start_with(options: ClusterOptions) -> ProcessCluster {
        let mut cluster = ProcessCluster::prepare(options);
        for id in 1..=cluster.size() {
            cluster.spawn(id);
        }
        cluster
    }

    /// Starts `nodes` nodes with default settings and direct peer connections.
    pub fn start(nodes: u64) -> ProcessCluster {
        ProcessCluster::start_with(ClusterOptions {
            nodes,
            ..Default::default()
        })
    }

    /// Allocates addresses (and the proxy mesh) without starting any node, so that a test can
    /// place a node's data directory first ([`ProcessCluster::use_data_dir`]).
    pub fn prepare(options: ClusterOptions) -> ProcessCluster {
        let ids = 1..=options.nodes;
        let (clients, peers, metrics, mesh, namespaces) = match options.network {
            PeerNetwork::Namespaces(net) => {
                let (client, peer, metrics) = NAMESPACE_PORTS;
                let at = |port| ids.clone().map(|id| net.node_address(id, port)).collect();
                (at(client), at(peer), at(metrics), None, Some(net))
            }
            network => {
                let free = || ids.clone().map(|_| free_address()).collect::<Vec<_>>();
                let peers = free();
                let mesh = matches!(network, PeerNetwork::Proxy).then(|| ProxyMesh::start(&peers));
                (free(), peers, free(), mesh, None)
            }
        };
        ProcessCluster {
            dir: Some(tempfile::tempdir().unwrap()),
            clients,
            metrics,
            peers,
            mesh,
            namespaces,
            extra_config: options.extra_config,
            founders: options.founders.unwrap_or(options.nodes),
            join_via: Vec::new(),
            children: HashMap::new(),
            paused: HashSet::new(),
            data_dirs: HashMap::new(),
            mounts: Vec::new(),
        }
    }

    /// Number of nodes.
    pub fn size(&self) -> u64 {
        self.clients.len() as u64
    }

    /// The test's directory: node logs, configurations and (by default) data directories.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("directory kept").path()
    }

    /// Keeps the directory after the test (for a failure report) and returns its path.
    pub fn keep_dir(&mut self) -> PathBuf {
        let path = self.dir().to_path_buf();
        // A node's data on a tmpfs goes with the mount: copied next to the others first.
        for (id, data_dir) in &self.data_dirs {
            let copy = path.join(format!("node-{id}"));
            if !copy.exists() {
                let _ = copy_tree(data_dir, &copy);
            }
        }
        if let Some(dir) = self.dir.take() {
            let _ = dir.keep();
        }
        self.dir = None;
        path
    }

    /// Node `id`'s data directory.
    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.data_dirs
            .get(&id)
            .cloned()
            .unwrap_or_else(|| self.dir().join(format!("node-{id}")))
    }

    /// Puts node `id`'s data on a tmpfs of `size_bytes` mounted by the test; call before the
    /// node starts.
    ///
    /// # Errors
    /// Why the mount was refused.
    pub fn use_tmpfs(&mut self, id: u64, size_bytes: u64) -> Result<PathBuf, String> {
        let mount = TmpfsMount::mount(&self.dir().join(format!("tmpfs-{id}")), size_bytes)?;
        let data_dir = mount.path().join("data");
        self.data_dirs.insert(id, data_dir.clone());
        self.mounts.push(mount);
        Ok(mount_root(&data_dir))
    }

    /// How partitions are made in this cluster, for reports.
    pub fn network_name(&self) -> &'static str {
        match (&self.mesh, &self.namespaces) {
            (_, Some(_)) => "network namespaces (veth pairs on a bridge, nftables drops)",
            (Some(_), None) => "fault-injecting TCP proxy on loopback",
            (None, None) => "direct loopback (no partitions)",
        }
    }

    fn proxy_mesh(&self) -> &ProxyMesh {
        self.mesh
            .as_ref()
            .expect("a cluster that can be partitioned")
    }

    /// Cuts the link between nodes `a` and `b` in both directions.
    ///
    /// # Panics
    /// On a cluster without partitions, or when the rule cannot be installed.
    pub fn cut(&self, a: u64, b: u64) {
        if let Some(net) = &self.namespaces {
            net.cut(a, b).expect("partition rule installed");
        } else {
            let mesh = self.proxy_mesh();
            mesh.block(a, b);
            mesh.block(b, a);
        }
    }

    /// Loses what node `from` sends to node `to`; `to` still reaches `from`.
    ///
    /// # Panics
    /// On a cluster without partitions, or when the rule cannot be installed.
    pub fn block(&self, from: u64, to: u64) {
        if let Some(net) = &self.namespaces {
            let peer_port = self.peers[to as usize - 1].port();
            net.block(from, to, peer_port)
                .expect("partition rule installed");
        } else {
            let mesh = self.proxy_mesh();
            mesh.block(from, to);
        }
    }

    /// Removes every partition.
    ///
    /// # Panics
    /// On a cluster without partitions, or when a rule cannot be removed.
    pub fn heal_network(&self) {
        if let Some(net) = &self.namespaces {
            net.heal().expect("partition rules removed");
        } else {
            self.proxy_mesh().heal();
        }
    }

    /// Starts (or restarts) node `id`.
    pub fn spawn(&mut self, id: u64) {
        assert!(!self.children.contains_key(&id), "node {id} is running");
        let config = self.dir().join(format!("node-{id}.toml"));
        std::fs::write(&config, self.config_toml(id)).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir().join(format!("node-{id}.log")))
            .unwrap();
        let program = env!("CARGO_BIN_EXE_raftlog");
        let mut command = match &self.namespaces {
            Some(net) => net.node_command(id, program),
            None => Command::new(program),
        };
        let child = command
            .arg("serve")
            .arg("--config")
            .arg(&config)
            // RAFTLOG_TEST_NODE_LOG=info (or a filter) makes the node logs say more. By
            // default they say where copies start and go and what each group is told to
            // become: what a failed run needs first, a few lines per change.
            .env(
                "RAFTLOG_LOG",
                std::env::var("RAFTLOG_TEST_NODE_LOG").unwrap_or_else(|_| {
                    "warn,raftlog::node=info,raftlog::replica::core=info".into()
                }),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("raftlog serve starts");
        self.children.insert(id, child);
    }

    fn config_toml(&self, id: u64) -> String {
        let index = id as usize - 1;
        let mut toml = format!(
            "node_id = {id}\ndata_dir = {:?}\nclient_listen = \"{}\"\npeer_listen = \"{}\"\n\
             metrics_listen = \"{}\"\n",
            self.data_dir(id).display().to_string(),
            self.clients[index],
            self.peers[index],
            self.metrics[index],
        );
        if id > self.founders {
            // A node that joins names members' client listeners, nothing else: the first
            // voters unless the test said which.
            let via: Vec<u64> = if self.join_via.is_empty() {
                (1..=self.founders).collect()
            } else {
                self.join_via.clone()
            };
            let members: Vec<String> = via
                .iter()
                .map(|&member| format!("\"{}\"", self.clients[member as usize - 1]))
                .collect();
            toml.push_str(&format!("join = [{}]\n", members.join(", ")));
            toml.push_str(&self.extra_config);
            return toml;
        }
        toml.push_str(&self.extra_config);
        toml.push_str("\n[peers]\n");
        for peer in 1..=self.founders {
            let address = match &self.mesh {
                Some(mesh) if peer != id => mesh.address(id, peer),
                _ => self.peers[peer as usize - 1],
            };
            toml.push_str(&format!("{peer} = \"{address}\"\n"));
        }
        toml
    }

    /// Nodes whose process ended without the harness killing it, with how it ended; they
    /// count as not running afterwards.
    pub fn exited(&mut self) -> Vec<(u64, ExitStatus)> {
        let mut exited = Vec::new();
        for (&id, child) in &mut self.children {
            if let Ok(Some(status)) = child.try_wait() {
                exited.push((id, status));
            }
        }
        for (id, _) in &exited {
            self.children.remove(id);
            self.paused.remove(id);
        }
        exited
    }

    /// Whether node `id` has a live process (paused or not).
    pub fn is_running(&self, id: u64) -> bool {
        self.children.contains_key(&id)
    }

    /// Whether node `id` is stopped with SIGSTOP.
    pub fn is_paused(&self, id: u64) -> bool {
        self.paused.contains(&id)
    }

    /// SIGKILL by PID: no graceful shutdown, no final sync.
    pub fn kill(&mut self, id: u64) {
        let mut child = self.children.remove(&id).expect("node is running");
        child.kill().unwrap();
        child.wait().unwrap();
        self.paused.remove(&id);
    }

    /// SIGSTOP: the process freezes with its sockets open.
    pub fn pause(&mut self, id: u64) {
        self.signal(id, libc::SIGSTOP);
        self.paused.insert(id);
    }

    /// SIGCONT after [`ProcessCluster::pause`].
    pub fn resume(&mut self, id: u64) {
        self.signal(id, libc::SIGCONT);
        self.paused.remove(&id);
    }

    /// Makes nodes that join from now on ask `members` (by id) instead of the first voters,
    /// as an operator does once first voters may have been removed.
    pub fn join_via(&mut self, members: &[u64]) {
        self.join_via = members.to_vec();
    }

    /// Replaces the TOML appended to every node's configuration, for the nodes started or
    /// reloaded from now on.
    pub fn set_extra_config(&mut self, extra_config: &str) {
        extra_config.clone_into(&mut self.extra_config);
    }

    /// Rewrites node `id`'s configuration file and sends it SIGHUP (it re-reads the
    /// settings that can change at run time).
    pub fn reload(&self, id: u64) {
        let config = self.dir().join(format!("node-{id}.toml"));
        std::fs::write(&config, self.config_toml(id)).unwrap();
        self.signal(id, libc::SIGHUP);
    }

    fn signal(&self, id: u64, signal: libc::c_int) {
        let pid = self.children[&id].id() as libc::pid_t;
        // SAFETY: kill(2) on a PID this harness spawned and has not reaped yet.
        let result = unsafe { libc::kill(pid, signal) };
        assert_eq!(result, 0, "signal {signal} to node {id} (pid {pid})");
    }

    /// Node `id`'s metrics listener (`/metrics`, `/health`, `/ready`).
    pub fn metrics_address(&self, id: u64) -> SocketAddr {
        self.metrics[id as usize - 1]
    }

    /// Client addresses as strings, node 1 first.
    pub fn addresses(&self) -> Vec<String> {
        self.clients.iter().map(SocketAddr::to_string).collect()
    }
}

fn mount_root(data_dir: &Path) -> PathBuf {
    data_dir
        .parent()
        .expect("data dir inside the mount")
        .to_path_buf()
}

/// Copies the directory tree `from` to `to` (files and directories; a report's copy).
///
/// # Errors
/// The first file or directory that cannot be read or written.
pub fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for (id, child) in &mut self.children {
            if self.paused.contains(id) {
                // SAFETY: kill(2) on our own unreaped child.
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGCONT) };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
        // Unmount after every process is gone and before the directory holding the mount
        // points is removed.
        self.mounts.clear();
        self.mesh = None;
        // Only now that no process lives in them can the namespaces go.
        self.namespaces = None;
    }
}
