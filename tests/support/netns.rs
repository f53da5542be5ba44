//! Network partitions the way a real network makes them: every node of a test cluster runs in
//! its own network namespace, created by the test, with one veth pair to a bridge in a hub
//! namespace; the test's own client connections also come from the hub (a thread joins it with
//! [`NamespaceNet::enter_hub`]). Partitions are nftables rules that drop packets in a node's
//! `input` hook, so a cut link behaves as a pulled cable does: nothing is reset, the sender's
//! TCP stack retransmits with growing timeouts, and when the rules go the same connections carry
//! on (or time out), exactly what the nodes would meet in production.
//!
//! ```text
//!   hub namespace (the test's clients, 10.88.0.254)
//!          br0 ── n1 ─┐    ┌─ n2 ── … ── nN
//!                  veth    veth
//!   node 1: eth0 10.88.0.1   node 2: eth0 10.88.0.2   …   (each in its own namespace,
//!   nft table inet raftlog_faults, chain input              with its own loopback)
//! ```
//!
//! Nothing is created in the host's namespace: the bridge lives in the hub, each veth end in
//! its own namespace, and dropping the [`NamespaceNet`] deletes every namespace (and so every
//! device and rule). Namespaces are named `raftlog-<pid>-<n>-…`; ones left behind by a test
//! process that no longer exists are deleted when the next one is created.
//!
//! Needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN), `ip` (iproute2) and `nft` (nftables);
//! [`NamespaceNet::create`] says which is missing so the caller can fall back to the TCP proxy.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Where `ip netns add` keeps its namespace handles.
const NETNS_DIR: &str = "/run/netns";
/// Prefix of every namespace this harness creates.
const PREFIX: &str = "raftlog-";
/// The nftables table (and its one chain, `input`) that holds a node's partition rules.
const TABLE: &str = "raftlog_faults";
/// The hub's own address on the bridge: where the test's clients connect from.
const HUB_HOST: u8 = 254;

/// Namespaces made by this process, so concurrent clusters never share a name.
static CREATED: AtomicU32 = AtomicU32::new(0);

/// One network namespace, held open so threads and children can join it by descriptor.
struct Namespace {
    name: String,
    handle: File,
}

impl Namespace {
    fn add(name: String) -> Result<Namespace, String> {
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let handle = File::open(Path::new(NETNS_DIR).join(&name))
            .map_err(|e| format!("open {NETNS_DIR}/{name}: {e}"))?;
        Ok(Namespace { name, handle })
    }

    /// `program` to be run inside this namespace.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        join_in_child(&mut command, self.handle.as_raw_fd());
        command
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// Makes `command`'s child join the namespace `handle` refers to before it executes.
fn join_in_child(command: &mut Command, handle: RawFd) {
    // SAFETY: between fork and exec the closure only makes the setns(2) system call, which
    // allocates nothing and takes no lock. `handle` stays open: the caller's namespace outlives
    // the spawn.
    unsafe {
        command.pre_exec(move || {
            if libc::setns(handle, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The namespaces, bridge and veth pairs of one test cluster, and its partition rules.
pub struct NamespaceNet {
    /// Node `i + 1`'s namespace; dropped (deleted) before the hub.
    nodes: Vec<Namespace>,
    hub: Namespace,
    subnet: [u8; 3],
}

impl NamespaceNet {
    /// Creates a hub and `nodes` node namespaces joined on one bridge (node `i` at
    /// 10.88.0.`i`, the hub at 10.88.0.254), each with an empty nftables input chain.
    ///
    /// # Errors
    /// Why namespaces cannot be used here (not root, no `ip` or `nft`, refused by the kernel);
    /// whatever was created before the failure is deleted again.
    pub fn create(nodes: u64) -> Result<NamespaceNet, String> {
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root (network namespaces need CAP_SYS_ADMIN)".into());
        }
        for tool in ["ip", "nft"] {
            if !on_path(tool) {
                return Err(format!(
                    "`{tool}` not found (install iproute2 and nftables)"
                ));
            }
        }
        assert!(
            (1..u64::from(HUB_HOST)).contains(&nodes),
            "{nodes} nodes do not fit one /24"
        );
        remove_stale();
        let stem = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            CREATED.fetch_add(1, Ordering::Relaxed)
        );
        let hub = Namespace::add(format!("{stem}-hub"))?;
        let mut net = NamespaceNet {
            nodes: Vec::new(),
            hub,
            subnet: [10, 88, 0],
        };
        let hub_name = net.hub.name.clone();
        run(Command::new("ip").args(["-n", &hub_name, "link", "set", "lo", "up"]))?;
        run(Command::new("ip").args(["-n", &hub_name, "link", "add", "br0", "type", "bridge"]))?;
        run(Command::new("ip").args([
            "-n",
            &hub_name,
            "addr",
            "add",
            &net.cidr(HUB_HOST),
            "dev",
            "br0",
        ]))?;
        run(Command::new("ip").args(["-n", &hub_name, "link", "set", "br0", "up"]))?;
        for id in 1..=nodes {
            let node = Namespace::add(format!("{stem}-n{id}"))?;
            let name = node.name.clone();
            net.nodes.push(node);
            let hub_end = format!("n{id}");
            run(Command::new("ip").args([
                "link", "add", "eth0", "netns", &name, "type", "veth", "peer", "name", &hub_end,
                "netns", &hub_name,
            ]))?;
            run(Command::new("ip")
                .args(["-n", &hub_name, "link", "set", &hub_end, "master", "br0"]))?;
            run(Command::new("ip").args(["-n", &hub_name, "link", "set", &hub_end, "up"]))?;
            let host = u8::try_from(id).expect("checked above");
            run(Command::new("ip").args([
                "-n",
                &name,
                "addr",
                "add",
                &net.cidr(host),
                "dev",
                "eth0",
            ]))?;
            run(Command::new("ip").args(["-n", &name, "link", "set", "eth0", "up"]))?;
            run(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]))?;
            net.nft(
                id,
                &format!(
                    "add table inet {TABLE}\n\
                     add chain inet {TABLE} input {{ type filter hook input priority filter; policy accept; }}\n"
                ),
            )?;
        }
        Ok(net)
    }

    fn cidr(&self, host: u8) -> String {
        let [a, b, c] = self.subnet;
        format!("{a}.{b}.{c}.{host}/24")
    }

    /// Node `id`'s address on the bridge.
    pub fn node_ip(&self, id: u64) -> IpAddr {
        let [a, b, c] = self.subnet;
        IpAddr::V4(Ipv4Addr::new(
            a,
            b,
            c,
            u8::try_from(id).expect("node id fits"),
        ))
    }

    /// Node `id`'s address with `port`.
    pub fn node_address(&self, id: u64, port: u16) -> SocketAddr {
        SocketAddr::new(self.node_ip(id), port)
    }

    /// Moves the calling thread into the hub namespace; threads it spawns afterwards (a tokio
    /// runtime's workers, say) start there too, so their connections reach every node.
    ///
    /// # Errors
    /// The setns(2) error.
    pub fn enter_hub(&self) -> Result<(), String> {
        enter(&self.hub)
    }

    /// Moves the calling thread into node `id`'s namespace (for tests of the partitions
    /// themselves).
    ///
    /// # Errors
    /// The setns(2) error.
    pub fn enter_node(&self, id: u64) -> Result<(), String> {
        enter(self.node(id))
    }

    /// A command for `program` that runs inside node `id`'s namespace.
    pub fn node_command(&self, id: u64, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.node(id).command(program)
    }

    fn node(&self, id: u64) -> &Namespace {
        &self.nodes[id as usize - 1]
    }

    /// Runs an nftables script in node `id`'s namespace.
    fn nft(&self, id: u64, script: &str) -> Result<(), String> {
        use std::io::Write as _;
        let mut child = self
            .node(id)
            .command("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("nft: {e}"))?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(script.as_bytes())
            .map_err(|e| format!("nft stdin: {e}"))?;
        let output = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "nft in node {id}'s namespace refused {script:?}: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(())
    }

    /// Cuts the link between `a` and `b` both ways: each drops every packet from the other.
    ///
    /// # Errors
    /// nft's complaint.
    pub fn cut(&self, a: u64, b: u64) -> Result<(), String> {
        for (at, from) in [(a, b), (b, a)] {
            let ip = self.node_ip(from);
            self.nft(
                at,
                &format!("add rule inet {TABLE} input ip saddr {ip} drop\n"),
            )?;
        }
        Ok(())
    }

    /// One-way partition: what `from` sends to `to`'s peer port is lost, while `to`'s own
    /// connections to `from` keep working.
    ///
    /// The peer transport carries each direction on a connection opened by the sender, so
    /// dropping, at `to`, the packets `from` sends to `to`'s peer listener loses exactly the
    /// messages from `from` to `to` (dropping every packet from `from` would also swallow the
    /// acknowledgements of `to`'s connection and stall that direction too).
    ///
    /// # Errors
    /// nft's complaint.
    pub fn block(&self, from: u64, to: u64, peer_port: u16) -> Result<(), String> {
        let ip = self.node_ip(from);
        self.nft(
            to,
            &format!("add rule inet {TABLE} input ip saddr {ip} tcp dport {peer_port} drop\n"),
        )
    }

    /// Removes every partition rule.
    ///
    /// # Errors
    /// nft's complaint.
    pub fn heal(&self) -> Result<(), String> {
        for id in 1..=self.nodes.len() as u64 {
            self.nft(id, &format!("flush chain inet {TABLE} input\n"))?;
        }
        Ok(())
    }
}

/// Moves the calling thread into `namespace`.
fn enter(namespace: &Namespace) -> Result<(), String> {
    // SAFETY: setns(2) on a descriptor the namespace keeps open; it only affects this thread.
    if unsafe { libc::setns(namespace.handle.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(format!(
            "setns into {}: {}",
            namespace.name,
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Runs a setup command; its stderr becomes the error.
fn run(command: &mut Command) -> Result<(), String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{command:?}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

/// Deletes namespaces of this harness whose test process is gone (it was killed before its
/// drop ran), so they do not pile up across runs.
fn remove_stale() {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = Command::new("ip")
                .args(["netns", "del", &name])
                .stderr(Stdio::null())
                .status();
        }
    }
}
