//! A fault-injecting proxy between clients and the client ports of real nodes.
//!
//! One listener per node forwards whole frames (it decodes envelopes with the crate's own
//! codec) to that node's client port. So that a client never goes around it, the node
//! addresses it passes back — in metadata answers and in NOT_LEADER hints — are rewritten to
//! the proxies' addresses.
//!
//! Faults hit produce requests, counted across all connections:
//! - every `cut_after_answer_every`-th one is forwarded, its answer is awaited and thrown
//!   away, and the connection is closed: the write took effect but the client cannot know;
//! - every `cut_after_send_every`-th one is forwarded and the connection closed at once:
//!   the write may or may not take effect.
//!
//! Closing a connection fails every other request pipelined on it too, which is the point.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use raftlog::proto::envelope::Body;
use raftlog::proto::Envelope;
use raftlog::wire::{EnvelopeCodec, FRAME_BYTES_MAX_DEFAULT};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::codec::Framed;

/// What the proxy does to produce requests, and what it did.
#[derive(Debug, Default)]
pub struct Faults {
    /// Cut the connection after every N-th produce request's answer arrived (0: never).
    pub cut_after_answer_every: AtomicU64,
    /// Cut the connection right after forwarding every N-th produce request (0: never).
    pub cut_after_send_every: AtomicU64,
    /// Produce requests seen.
    pub produce_requests: AtomicU64,
    /// Connections cut.
    pub cuts: AtomicU64,
}

impl Faults {
    /// Stops injecting faults.
    pub fn stop(&self) {
        self.cut_after_answer_every.store(0, Ordering::Relaxed);
        self.cut_after_send_every.store(0, Ordering::Relaxed);
    }
}

/// The proxies of one cluster; dropping it stops every listener and connection.
pub struct ClientProxy {
    addresses: Vec<SocketAddr>,
    /// The fault plan, shared by every connection.
    pub faults: Arc<Faults>,
    tasks: Vec<JoinHandle<()>>,
}

impl ClientProxy {
    /// One proxy per node, node `i + 1`'s client port at `targets[i]`. Must be called inside
    /// a tokio runtime.
    pub fn start(targets: &[SocketAddr]) -> ClientProxy {
        let listeners: Vec<std::net::TcpListener> = targets
            .iter()
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let addresses: Vec<SocketAddr> =
            listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        let rewrite: Arc<HashMap<String, String>> = Arc::new(
            targets
                .iter()
                .zip(&addresses)
                .map(|(real, proxy)| (real.to_string(), proxy.to_string()))
                .collect(),
        );
        let faults = Arc::new(Faults::default());
        let tasks = listeners
            .into_iter()
            .zip(targets)
            .map(|(listener, &target)| {
                listener.set_nonblocking(true).unwrap();
                let listener = TcpListener::from_std(listener).unwrap();
                tokio::spawn(accept_loop(
                    listener,
                    target,
                    rewrite.clone(),
                    faults.clone(),
                ))
            })
            .collect();
        ClientProxy {
            addresses,
            faults,
            tasks,
        }
    }

    /// Every proxy address, comma-separated: a bootstrap list that goes through the proxy.
    pub fn bootstrap(&self) -> String {
        let addresses: Vec<String> = self.addresses.iter().map(|a| a.to_string()).collect();
        addresses.join(",")
    }
}

impl Drop for ClientProxy {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    rewrite: Arc<HashMap<String, String>>,
    faults: Arc<Faults>,
) {
    // Connection tasks are aborted with the listener, so none outlives the proxy.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((inbound, _)) = accepted else { continue };
                connections.spawn(forward(inbound, target, rewrite.clone(), faults.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// What to do with one produce request.
enum Fate {
    Pass,
    CutAfterAnswer,
    CutAfterSend,
}

fn fate(faults: &Faults) -> Fate {
    let seen = faults.produce_requests.fetch_add(1, Ordering::Relaxed) + 1;
    let every = |n: &AtomicU64| {
        let n = n.load(Ordering::Relaxed);
        n != 0 && seen % n == 0
    };
    if every(&faults.cut_after_answer_every) {
        Fate::CutAfterAnswer
    } else if every(&faults.cut_after_send_every) {
        Fate::CutAfterSend
    } else {
        Fate::Pass
    }
}

/// Forwards one client connection frame by frame until either side closes or a fault cuts
/// it; returning drops (closes) both sockets.
async fn forward(
    inbound: TcpStream,
    target: SocketAddr,
    rewrite: Arc<HashMap<String, String>>,
    faults: Arc<Faults>,
) {
    let Ok(Ok(outbound)) =
        tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(target)).await
    else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let mut client = Framed::new(inbound, EnvelopeCodec::new(FRAME_BYTES_MAX_DEFAULT));
    let mut server = Framed::new(outbound, EnvelopeCodec::new(FRAME_BYTES_MAX_DEFAULT));
    // Correlation ids whose answers are to be swallowed, cutting the connection.
    let mut doomed: HashSet<u64> = HashSet::new();
    loop {
        tokio::select! {
            request = client.next() => {
                let Some(Ok(request)) = request else { return };
                let mut cut_now = false;
                if matches!(request.body, Some(Body::Produce(_))) {
                    match fate(&faults) {
                        Fate::Pass => {}
                        Fate::CutAfterAnswer => {
                            doomed.insert(request.correlation_id);
                        }
                        Fate::CutAfterSend => cut_now = true,
                    }
                }
                if server.send(request).await.is_err() || cut_now {
                    faults.cuts.fetch_add(u64::from(cut_now), Ordering::Relaxed);
                    return;
                }
            }
            answer = server.next() => {
                let Some(Ok(mut answer)) = answer else { return };
                if doomed.contains(&answer.correlation_id) {
                    faults.cuts.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                rewrite_addresses(&mut answer, &rewrite);
                if client.send(answer).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Points every node address in an answer at that node's proxy.
fn rewrite_addresses(answer: &mut Envelope, rewrite: &HashMap<String, String>) {
    let swap = |address: &mut String| {
        if let Some(proxy) = rewrite.get(address.as_str()) {
            *address = proxy.clone();
        }
    };
    match &mut answer.body {
        Some(Body::MetadataResponse(metadata)) => {
            for node in &mut metadata.nodes {
                swap(&mut node.client_address);
            }
        }
        Some(Body::Error(error)) => swap(&mut error.leader_address),
        _ => {}
    }
}
