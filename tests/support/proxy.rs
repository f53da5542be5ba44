//! A fault-injecting TCP proxy mesh between the nodes of a test cluster.
//!
//! Every ordered pair of nodes (from, to) gets its own listener on loopback; node `from`'s
//! `--peers` entry for `to` points at it, and it forwards to `to`'s real peer port. Blocking a
//! link blackholes it: the proxy stops forwarding in both directions of every connection that
//! `from` opened to `to` and holds the sockets open (as a dropped cable would: the sender's
//! writes stall, nothing is reset), and connections opened while blocked are accepted but never
//! forwarded. When the link heals the held sockets are closed, so the transport reconnects with
//! a clean stream instead of resuming a half-delivered frame.
//!
//! The peer transport carries each direction on its own connection, opened by the sender
//! (see `src/transport/mod.rs`), so blocking only (A, C) drops what A sends to C while C's
//! messages still reach A: a one-way partition. Blocking both (A, C) and (C, A) cuts the link.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// Which links are blocked, and a generation counter that wakes every connection on a change.
struct LinkState {
    blocked: Mutex<HashSet<(u64, u64)>>,
    changed: watch::Sender<u64>,
}

impl LinkState {
    fn is_blocked(&self, link: (u64, u64)) -> bool {
        self.blocked.lock().unwrap().contains(&link)
    }

    /// Returns once `link` is blocked (`blocked` true) or open (`blocked` false).
    async fn wait_until(&self, link: (u64, u64), blocked: bool) {
        let mut changes = self.changed.subscribe();
        loop {
            changes.borrow_and_update();
            if self.is_blocked(link) == blocked {
                return;
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    }
}

/// The proxies of one cluster; dropping it stops every listener and connection.
pub struct ProxyMesh {
    state: Arc<LinkState>,
    addresses: HashMap<(u64, u64), SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl ProxyMesh {
    /// Binds one listener per ordered pair of the nodes whose real peer addresses are given
    /// (node `i + 1` at `peers[i]`). Must be called inside a tokio runtime.
    pub fn start(peers: &[SocketAddr]) -> ProxyMesh {
        let (changed, _) = watch::channel(0);
        let state = Arc::new(LinkState {
            blocked: Mutex::new(HashSet::new()),
            changed,
        });
        let mut mesh = ProxyMesh {
            state,
            addresses: HashMap::new(),
            tasks: Vec::new(),
        };
        let nodes = peers.len() as u64;
        for from in 1..=nodes {
            for to in (1..=nodes).filter(|&to| to != from) {
                let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                listener.set_nonblocking(true).unwrap();
                mesh.addresses
                    .insert((from, to), listener.local_addr().unwrap());
                let listener = TcpListener::from_std(listener).unwrap();
                let target = peers[to as usize - 1];
                let state = mesh.state.clone();
                mesh.tasks.push(tokio::spawn(accept_loop(
                    listener,
                    target,
                    (from, to),
                    state,
                )));
            }
        }
        mesh
    }

    /// The address node `from` must use to reach node `to`.
    pub fn address(&self, from: u64, to: u64) -> SocketAddr {
        self.addresses[&(from, to)]
    }

    /// Blackholes the connections `from` opens to `to` (one direction of the link).
    pub fn block(&self, from: u64, to: u64) {
        self.state.blocked.lock().unwrap().insert((from, to));
        self.state.changed.send_modify(|g| *g += 1);
    }

    /// Opens every link again.
    pub fn heal(&self) {
        self.state.blocked.lock().unwrap().clear();
        self.state.changed.send_modify(|g| *g += 1);
    }
}

impl Drop for ProxyMesh {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    link: (u64, u64),
    state: Arc<LinkState>,
) {
    // Connection tasks are aborted with the listener, so none outlives the mesh.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((inbound, _)) = accepted else { continue };
                connections.spawn(forward(inbound, target, link, state.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Forwards one connection while `link` is open; blackholes it while blocked.
async fn forward(
    mut inbound: TcpStream,
    target: SocketAddr,
    link: (u64, u64),
    state: Arc<LinkState>,
) {
    if state.is_blocked(link) {
        state.wait_until(link, false).await;
        return;
    }
    let Ok(Ok(mut outbound)) = timeout(Duration::from_secs(2), TcpStream::connect(target)).await
    else {
        return;
    };
    let _ = outbound.set_nodelay(true);
    let _ = inbound.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        () = state.wait_until(link, true) => {
            // Hold both sockets without reading until the link heals, then close them.
            state.wait_until(link, false).await;
        }
    }
}
