//! Black-box tests of the peer transport over real loopback TCP: ordering, late and restarted
//! peers, bounded queues, refused handshakes, garbage on the peer port, and shutdown.
//!
//! Each transport delivers into the test's own collector, a deliverer that passes every
//! message on to a channel the test reads. Every wait is bounded by a tokio timeout, so a
//! regression fails instead of hanging.

use std::collections::BTreeMap;
use std::future::Future;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use raftlog::config::{NetworkConfig, NodeId};
use raftlog::proto::envelope::Body;
use raftlog::proto::raft_message::Body as RaftBody;
use raftlog::proto::*;
use raftlog::transport::{Deliver, Delivery, Transport, TransportConfig, TransportError};
use raftlog::wire::{handshake, EnvelopeCodec, WireError, PROTOCOL_VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

const CLUSTER: &str = "test-cluster";
/// Generous bound for anything that should happen "soon" on loopback, even on a loaded machine.
const WAIT: Duration = Duration::from_secs(20);

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Short backoffs so that reconnection tests finish quickly.
fn network() -> NetworkConfig {
    NetworkConfig {
        reconnect_backoff_ms_min: 10,
        reconnect_backoff_ms_max: 100,
        handshake_timeout_ms: 2_000,
        ..NetworkConfig::default()
    }
}

async fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

/// A port that was free a moment ago, for a peer that is not listening yet.
async fn free_port_address() -> String {
    let listener = bind().await;
    listener.local_addr().unwrap().to_string()
}

fn peers(addresses: &[String]) -> BTreeMap<NodeId, String> {
    (1..).zip(addresses.iter().cloned()).collect()
}

fn config(node_id: NodeId, peers: &BTreeMap<NodeId, String>) -> TransportConfig {
    TransportConfig {
        client_address: format!("client-of-{node_id}:1"),
        peer_address: peers.get(&node_id).cloned().unwrap_or_default(),
        node_id,
        cluster_id: CLUSTER.to_owned(),
        peers: peers.clone(),
        network: network(),
    }
}

/// What a transport delivered, in delivery order. Ends (`recv` gives `None`) once the
/// transport has dropped its deliverer, which it does when its last task exits.
type Inbound = mpsc::UnboundedReceiver<RaftMessage>;

/// A deliverer that passes every message on to the returned channel.
fn collector() -> (Arc<dyn Deliver>, Inbound) {
    let (sender, inbound) = mpsc::unbounded_channel();
    let deliver = move |message: RaftMessage| {
        let _ = sender.send(message);
        ControlFlow::Continue(())
    };
    (Arc::new(deliver), inbound)
}

fn start(config: TransportConfig, listener: TcpListener) -> (Transport, Inbound) {
    let (deliver, inbound) = collector();
    let transport = Transport::start(config, listener, &CancellationToken::new(), deliver);
    (transport.unwrap(), inbound)
}

/// `n` transports that know each other, on fresh loopback ports.
async fn cluster(n: usize) -> Vec<(Transport, Inbound)> {
    let mut listeners = Vec::new();
    for _ in 0..n {
        listeners.push(bind().await);
    }
    let addresses: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect();
    let peers = peers(&addresses);
    (1..)
        .zip(listeners)
        .map(|(id, listener)| start(config(id, &peers), listener))
        .collect()
}

/// A message whose `term` carries a sequence number, so that order can be checked.
fn vote(group_id: u64, from: NodeId, to: NodeId, seq: u64) -> RaftMessage {
    RaftMessage {
        group_id,
        from,
        to,
        body: Some(RaftBody::RequestVote(RequestVote {
            term: seq,
            candidate_id: from,
            ..Default::default()
        })),
    }
}

/// An append carrying `payload_bytes` of entry payload.
fn append(from: NodeId, to: NodeId, seq: u64, payload_bytes: usize) -> RaftMessage {
    RaftMessage {
        group_id: 1,
        from,
        to,
        body: Some(RaftBody::AppendEntries(AppendEntries {
            term: seq,
            leader_id: from,
            entries: vec![Entry {
                index: seq,
                payload: Bytes::from(vec![7u8; payload_bytes]),
                ..Default::default()
            }],
            ..Default::default()
        })),
    }
}

fn seq(message: &RaftMessage) -> u64 {
    match &message.body {
        Some(RaftBody::RequestVote(vote)) => vote.term,
        Some(RaftBody::AppendEntries(append)) => append.term,
        other => panic!("unexpected body {other:?}"),
    }
}

async fn receive(inbound: &mut Inbound, count: usize) -> Vec<RaftMessage> {
    let mut received = Vec::with_capacity(count);
    within("messages", async {
        while received.len() < count {
            received.push(inbound.recv().await.expect("inbound open"));
        }
    })
    .await;
    received
}

/// Nothing more arrives within a short while.
async fn assert_quiet(inbound: &mut Inbound) {
    let extra = tokio::time::timeout(Duration::from_millis(200), inbound.recv()).await;
    assert!(extra.is_err(), "unexpected message {extra:?}");
}

/// Per sender, per group: sequence numbers arrive in the order they were sent.
fn assert_in_order(received: &[RaftMessage]) {
    let mut last: BTreeMap<(NodeId, u64), u64> = BTreeMap::new();
    for message in received {
        let key = (message.from, message.group_id);
        let seq = seq(message);
        if let Some(previous) = last.insert(key, seq) {
            assert!(previous < seq, "{key:?}: {seq} after {previous}");
        }
    }
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    within(what, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

async fn shutdown_all(nodes: Vec<(Transport, Inbound)>) {
    for (transport, _) in &nodes {
        within("shutdown", transport.shutdown()).await;
        assert_eq!(transport.live_tasks(), 0);
    }
}

#[tokio::test]
async fn two_transports_exchange_messages_of_several_groups_in_order() {
    let mut nodes = cluster(2).await;
    let per_direction = 2_000;
    for seq in 0..per_direction {
        let group = seq % 5;
        assert_eq!(
            nodes[0].0.send(vote(group, 1, 2, seq)).unwrap(),
            Delivery::Queued
        );
        assert_eq!(
            nodes[1].0.send(vote(group, 2, 1, seq)).unwrap(),
            Delivery::Queued
        );
    }
    for (index, (_, inbound)) in nodes.iter_mut().enumerate() {
        let received = receive(inbound, per_direction as usize).await;
        let from = if index == 0 { 2 } else { 1 };
        assert!(received
            .iter()
            .all(|m| m.from == from && m.to == index as u64 + 1));
        let seqs: Vec<u64> = received.iter().map(seq).collect();
        assert_eq!(seqs, (0..per_direction).collect::<Vec<_>>());
        assert_quiet(inbound).await;
    }
    let stats = nodes[0].0.stats(2).unwrap();
    assert_eq!(stats.sent_messages, per_direction);
    assert_eq!(stats.dropped_messages, 0);
    assert!(stats.sent_frames <= stats.sent_messages);
    assert_eq!(nodes[1].0.received_messages_total(), per_direction);
    // Each node learned where clients reach the other from its handshake.
    assert_eq!(
        nodes[0].0.peer_client_address(2).as_deref(),
        Some("client-of-2:1")
    );
    assert_eq!(
        nodes[1].0.peer_client_address(1).as_deref(),
        Some("client-of-1:1")
    );
    shutdown_all(nodes).await;
}

#[tokio::test]
async fn three_transports_exchange_with_every_peer_in_order() {
    let mut nodes = cluster(3).await;
    let per_pair = 300;
    for seq in 0..per_pair {
        for from in 1..=3u64 {
            for to in (1..=3u64).filter(|&to| to != from) {
                let message = vote(seq % 3 + 10 * to, from, to, seq);
                nodes[from as usize - 1].0.send(message).unwrap();
            }
        }
    }
    for (index, (_, inbound)) in nodes.iter_mut().enumerate() {
        let received = receive(inbound, 2 * per_pair as usize).await;
        assert!(received.iter().all(|m| m.to == index as u64 + 1));
        assert_in_order(&received);
        for from in (1..=3).filter(|&from| from != index as u64 + 1) {
            let count = received.iter().filter(|m| m.from == from).count();
            assert_eq!(count, per_pair as usize, "node {} from {from}", index + 1);
        }
        assert_quiet(inbound).await;
    }
    shutdown_all(nodes).await;
}

#[tokio::test]
async fn a_peer_that_starts_late_is_reached_once_it_listens() {
    let late_address = free_port_address().await;
    let a_listener = bind().await;
    let peers = peers(&[
        a_listener.local_addr().unwrap().to_string(),
        late_address.clone(),
    ]);
    let (a, _a_inbound) = start(config(1, &peers), a_listener);
    for seq in 0..10 {
        a.send(vote(7, 1, 2, seq)).unwrap();
    }
    wait_until("failed connection attempts", || {
        a.stats(2).unwrap().connect_failures >= 2
    })
    .await;
    assert_eq!(a.stats(2).unwrap().connects, 0);

    let (b, mut b_inbound) = start(
        config(2, &peers),
        TcpListener::bind(&late_address).await.unwrap(),
    );
    let received = receive(&mut b_inbound, 10).await;
    assert_eq!(
        received.iter().map(seq).collect::<Vec<_>>(),
        (0..10).collect::<Vec<_>>()
    );
    assert_eq!(a.stats(2).unwrap().connects, 1);
    within("shutdown", a.shutdown()).await;
    within("shutdown", b.shutdown()).await;
}

#[tokio::test]
async fn a_restarted_peer_is_reconnected() {
    let mut nodes = cluster(2).await;
    let b_address = nodes[1].0.local_addr();
    nodes[0].0.send(vote(1, 1, 2, 0)).unwrap();
    receive(&mut nodes[1].1, 1).await;

    let (old_b, _) = nodes.pop().unwrap();
    within("shutdown", old_b.shutdown()).await;
    let peers = peers(&[nodes[0].0.local_addr().to_string(), b_address.to_string()]);
    let (b, mut b_inbound) = start(
        config(2, &peers),
        TcpListener::bind(b_address).await.unwrap(),
    );

    // Messages written into the dead connection are lost, as on a real network; keep sending,
    // as Raft would, until the new connection carries one.
    let a = &nodes[0].0;
    let delivered = within("a message over the new connection", async {
        for seq in 1.. {
            a.send(vote(1, 1, 2, seq)).unwrap();
            let wait = tokio::time::timeout(Duration::from_millis(50), b_inbound.recv()).await;
            if let Ok(Some(message)) = wait {
                return message;
            }
        }
        unreachable!()
    })
    .await;
    assert!(seq(&delivered) >= 1);
    let stats = a.stats(2).unwrap();
    assert!(stats.reconnects >= 1, "{stats:?}");
    assert_eq!(a.reconnects_total(), stats.reconnects);
    within("shutdown", b.shutdown()).await;
    shutdown_all(nodes).await;
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_instead_of_growing() {
    let down_address = free_port_address().await;
    let a_listener = bind().await;
    let peers = peers(&[
        a_listener.local_addr().unwrap().to_string(),
        down_address.clone(),
    ]);
    let mut a_config = config(1, &peers);
    a_config.network.peer_queue_messages_max = 10;
    let (a, _a_inbound) = start(a_config, a_listener);

    let deliveries: Vec<Delivery> = (0..100)
        .map(|seq| a.send(vote(3, 1, 2, seq)).unwrap())
        .collect();
    assert!(deliveries[..10].iter().all(|d| *d == Delivery::Queued));
    assert!(deliveries[10..].iter().all(|d| *d == Delivery::Dropped));
    let stats = a.stats(2).unwrap();
    assert_eq!((stats.queued_messages, stats.dropped_messages), (10, 90));
    assert_eq!(a.dropped_messages_total(), 90);

    // Once the peer appears, exactly the ten queued messages arrive, oldest first.
    let (b, mut b_inbound) = start(
        config(2, &peers),
        TcpListener::bind(&down_address).await.unwrap(),
    );
    let received = receive(&mut b_inbound, 10).await;
    assert_eq!(
        received.iter().map(seq).collect::<Vec<_>>(),
        (0..10).collect::<Vec<_>>()
    );
    assert_quiet(&mut b_inbound).await;
    within("shutdown", a.shutdown()).await;
    within("shutdown", b.shutdown()).await;
}

#[tokio::test]
async fn a_queue_is_bounded_in_bytes_too() {
    let down_address = free_port_address().await;
    let a_listener = bind().await;
    let peers = peers(&[a_listener.local_addr().unwrap().to_string(), down_address]);
    let mut a_config = config(1, &peers);
    a_config.network.peer_queue_bytes_max = 100 * 1024;
    let (a, _a_inbound) = start(a_config, a_listener);
    for seq in 0..20 {
        a.send(append(1, 2, seq, 10 * 1024)).unwrap();
    }
    let stats = a.stats(2).unwrap();
    assert!(stats.queued_bytes <= 100 * 1024, "{stats:?}");
    assert_eq!(stats.queued_messages, 9, "{stats:?}");
    assert_eq!(stats.dropped_messages, 11);
    within("shutdown", a.shutdown()).await;
}

#[tokio::test]
async fn a_raw_peer_is_delivered_in_order_until_a_misrouted_message() {
    // Node 1 is a member that never runs: the test speaks as node 1 over a raw connection.
    let listener = bind().await;
    let b_address = listener.local_addr().unwrap();
    let peers = peers(&[free_port_address().await, b_address.to_string()]);
    let (b, mut b_inbound) = start(config(2, &peers), listener);
    let (mut framed, result) = raw_peer(b_address, CLUSTER, 1).await;
    result.unwrap();
    let batch = |messages: Vec<RaftMessage>| Envelope {
        correlation_id: 0,
        body: Some(Body::Raft(RaftBatch { messages })),
    };
    for first in (0..30).step_by(10) {
        let messages = (first..first + 10)
            .map(|seq| vote(seq % 4, 1, 2, seq))
            .collect();
        framed.send(batch(messages)).await.unwrap();
    }
    let received = receive(&mut b_inbound, 30).await;
    assert_eq!(
        received.iter().map(seq).collect::<Vec<_>>(),
        (0..30).collect::<Vec<_>>()
    );
    assert!(received.iter().all(|m| m.from == 1 && m.to == 2));

    // A message claiming another sender ends the connection; what came before it in the same
    // batch is delivered, what comes after it is not.
    let misrouted = vec![vote(1, 1, 2, 30), vote(1, 3, 2, 31), vote(1, 1, 2, 32)];
    framed.send(batch(misrouted)).await.unwrap();
    assert_closed(&mut framed).await;
    let received = receive(&mut b_inbound, 1).await;
    assert_eq!(seq(&received[0]), 30);
    assert_quiet(&mut b_inbound).await;
    assert_eq!(b.received_messages_total(), 31);
    wait_until("the refusal to be counted", || {
        b.refused_connections_total() == 1
    })
    .await;

    // So does one addressed to another node.
    let (mut framed, result) = raw_peer(b_address, CLUSTER, 1).await;
    result.unwrap();
    framed.send(batch(vec![vote(1, 1, 3, 33)])).await.unwrap();
    assert_closed(&mut framed).await;
    assert_quiet(&mut b_inbound).await;
    wait_until("the refusal to be counted", || {
        b.refused_connections_total() == 2
    })
    .await;
    within("shutdown", b.shutdown()).await;
}

#[tokio::test]
async fn a_receiver_that_is_gone_closes_the_connection() {
    let mut listeners = vec![bind().await, bind().await];
    let addresses: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect();
    let peers = peers(&addresses);
    // B's receiver takes three messages, then reports itself gone, as a crashed node's does.
    let taken = Arc::new(AtomicUsize::new(0));
    let deliver = {
        let taken = taken.clone();
        move |_: RaftMessage| {
            if taken.fetch_add(1, Ordering::Relaxed) < 3 {
                ControlFlow::Continue(())
            } else {
                ControlFlow::Break(())
            }
        }
    };
    let b = Transport::start(
        config(2, &peers),
        listeners.pop().unwrap(),
        &CancellationToken::new(),
        Arc::new(deliver),
    )
    .unwrap();
    let (a, _a_inbound) = start(config(1, &peers), listeners.pop().unwrap());
    within("A to see its connection closed and reconnect", async {
        for seq in 0.. {
            a.send(vote(1, 1, 2, seq)).unwrap();
            if a.stats(2).unwrap().reconnects >= 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(b.received_messages_total(), 3);
    within("shutdown", a.shutdown()).await;
    within("shutdown", b.shutdown()).await;
}

/// Opens a raw connection to a peer port and sends a handshake as `node_id` of `cluster_id`.
async fn raw_peer(
    address: std::net::SocketAddr,
    cluster_id: &str,
    node_id: NodeId,
) -> (
    Framed<TcpStream, EnvelopeCodec>,
    Result<HandshakeResponse, WireError>,
) {
    let stream = TcpStream::connect(address).await.unwrap();
    let mut framed = Framed::new(stream, EnvelopeCodec::default());
    let result = within(
        "handshake",
        handshake::connect(&mut framed, cluster_id, ConnectionRole::Peer, node_id, ""),
    )
    .await;
    (framed, result)
}

/// The other side closes the connection (end of stream or reset) within the wait bound.
async fn assert_closed(framed: &mut Framed<TcpStream, EnvelopeCodec>) {
    let next = within("the connection to close", framed.next()).await;
    assert!(!matches!(next, Some(Ok(_))), "got {next:?}");
}

#[tokio::test]
async fn a_wrong_cluster_id_is_refused() {
    let listeners = vec![bind().await, bind().await];
    let addresses: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect();
    let peers = peers(&addresses);
    let mut listeners = listeners.into_iter();
    let mut red = config(1, &peers);
    red.cluster_id = "red".into();
    let (a, _a_inbound) = start(red, listeners.next().unwrap());
    let (b, mut b_inbound) = start(config(2, &peers), listeners.next().unwrap());
    a.send(vote(1, 1, 2, 0)).unwrap();
    wait_until("refused attempts", || {
        a.stats(2).unwrap().connect_failures >= 2
    })
    .await;
    assert_eq!(a.stats(2).unwrap().connects, 0);
    wait_until("refusals", || b.refused_connections_total() >= 2).await;
    assert_quiet(&mut b_inbound).await;

    let (mut framed, result) = raw_peer(b.local_addr(), "red", 1).await;
    match result {
        Err(WireError::Remote(error)) => assert_eq!(error.code(), ErrorCode::ClusterMismatch),
        other => panic!("expected a CLUSTER_MISMATCH refusal, got {other:?}"),
    }
    assert_closed(&mut framed).await;
    within("shutdown", a.shutdown()).await;
    within("shutdown", b.shutdown()).await;
}

/// A node that joins later. One that only claims an id is refused; one that names its peer
/// address in the handshake is added as a peer (a node restarted since the join knows it no
/// other way); the others add it when told (as a node does once the metadata records it).
/// Then messages flow both ways.
#[tokio::test]
async fn a_peer_that_joined_later_is_added_when_it_introduces_itself_or_is_told_of() {
    let mut nodes = cluster(2).await;
    let (mut framed, refused) = raw_peer(nodes[0].0.local_addr(), CLUSTER, 3).await;
    assert!(matches!(refused, Err(WireError::Remote(_))), "{refused:?}");
    assert_closed(&mut framed).await;
    assert!(matches!(
        nodes[0].0.send(vote(7, 1, 3, 0)),
        Err(TransportError::UnknownPeer { node_id: 3 })
    ));

    let listener = bind().await;
    let joiner_address = listener.local_addr().unwrap().to_string();
    let mut joiner_peers: BTreeMap<NodeId, String> = (1..)
        .zip([nodes[0].0.local_addr(), nodes[1].0.local_addr()])
        .map(|(id, address)| (id, address.to_string()))
        .collect();
    joiner_peers.insert(3, joiner_address.clone());
    let (joiner, mut joiner_inbound) = start(config(3, &joiner_peers), listener);
    joiner.send(vote(7, 3, 1, 0)).unwrap();
    let introduced = receive(&mut nodes[0].1, 1).await;
    assert_eq!(introduced[0].from, 3);
    assert!(nodes[0].0.knows_peer(3));

    nodes[1].0.add_peer(3, &joiner_address);
    nodes[1].0.add_peer(3, &joiner_address);
    assert!(nodes[1].0.knows_peer(3));
    for seq in 0..10 {
        nodes[0].0.send(vote(7, 1, 3, seq)).unwrap();
        nodes[1].0.send(vote(7, 2, 3, seq)).unwrap();
        joiner.send(vote(7, 3, 2, seq)).unwrap();
    }
    let received = receive(&mut joiner_inbound, 20).await;
    for from in [1, 2] {
        let from_one: Vec<RaftMessage> = received
            .iter()
            .filter(|m| m.from == from)
            .cloned()
            .collect();
        assert_eq!(from_one.len(), 10, "from node {from}");
        assert_in_order(&from_one);
    }
    let received = receive(&mut nodes[1].1, 10).await;
    assert!(received.iter().all(|m| m.from == 3));
    joiner.shutdown().await;
    shutdown_all(nodes).await;
}

#[tokio::test]
async fn a_node_outside_the_peers_map_is_refused() {
    let nodes = cluster(2).await;
    for stranger in [99, 2] {
        // 99 is not a member; 2 is the node itself.
        let (mut framed, result) = raw_peer(nodes[1].0.local_addr(), CLUSTER, stranger).await;
        match result {
            Err(WireError::Remote(error)) => {
                assert!(
                    error.message.contains(&stranger.to_string()),
                    "{}",
                    error.message
                )
            }
            other => panic!("expected a refusal of node {stranger}, got {other:?}"),
        }
        assert_closed(&mut framed).await;
    }
    shutdown_all(nodes).await;
}

#[tokio::test]
async fn garbage_on_the_peer_port_closes_only_that_connection() {
    // Node 3 is a member that never runs: the raw connections below speak as node 3, so that
    // they do not take the place of node 1's real connection.
    let listeners = [bind().await, bind().await];
    let mut addresses: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect();
    addresses.push(free_port_address().await);
    let peers = peers(&addresses);
    let mut nodes: Vec<(Transport, Inbound)> = (1..)
        .zip(listeners)
        .map(|(id, listener)| start(config(id, &peers), listener))
        .collect();
    let b_address = nodes[1].0.local_addr();
    nodes[0].0.send(vote(1, 1, 2, 0)).unwrap();
    receive(&mut nodes[1].1, 1).await;

    // Random bytes, an oversized length, a truncated frame then end of stream.
    let garbage: [&[u8]; 3] = [
        b"\x00\x00\x00\x10this is not protobuf!!",
        &[0xff, 0xff, 0xff, 0xff, 1, 2, 3],
        &[0, 0, 0, 50, 1, 2, 3],
    ];
    for bytes in garbage {
        let mut stream = TcpStream::connect(b_address).await.unwrap();
        stream.write_all(bytes).await.unwrap();
        if bytes[3] == 50 {
            stream.shutdown().await.unwrap();
        }
        let mut buf = vec![0u8; 1024];
        within("the garbage connection to close", async {
            // An error envelope may come first; the connection must then end.
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    }

    // After a good handshake: a client request instead of a RaftBatch, then a misrouted message.
    let (mut framed, result) = raw_peer(b_address, CLUSTER, 3).await;
    result.unwrap();
    let list_topics = Envelope {
        correlation_id: 1,
        body: Some(Body::ListTopics(Default::default())),
    };
    framed.send(list_topics).await.unwrap();
    assert_closed(&mut framed).await;
    let (mut framed, result) = raw_peer(b_address, CLUSTER, 3).await;
    result.unwrap();
    let misrouted = Envelope {
        correlation_id: 0,
        body: Some(Body::Raft(RaftBatch {
            messages: vec![vote(1, 1, 2, 0)],
        })),
    };
    framed.send(misrouted).await.unwrap();
    assert_closed(&mut framed).await;

    // The real peer's connection was never disturbed.
    for seq in 1..=100 {
        nodes[0].0.send(vote(1, 1, 2, seq)).unwrap();
    }
    let received = receive(&mut nodes[1].1, 100).await;
    assert_eq!(
        received.iter().map(seq).collect::<Vec<_>>(),
        (1..=100).collect::<Vec<_>>()
    );
    assert_eq!(nodes[0].0.stats(2).unwrap().connects, 1);
    let b = &nodes[1].0;
    wait_until("five refused connections", || {
        b.refused_connections_total() >= 5
    })
    .await;
    shutdown_all(nodes).await;
}

#[tokio::test]
async fn messages_to_self_unknown_nodes_or_too_large_are_refused() {
    let listener = bind().await;
    let address = listener.local_addr().unwrap().to_string();
    let peers = peers(&[address, "127.0.0.1:1".into()]);
    let mut small = config(1, &peers);
    small.network.frame_bytes_max = 4 * 1024;
    let (a, _inbound) = start(small, listener);
    assert!(matches!(
        a.send(vote(1, 1, 1, 0)),
        Err(TransportError::SendToSelf { node_id: 1 })
    ));
    assert!(matches!(
        a.send(vote(1, 1, 9, 0)),
        Err(TransportError::UnknownPeer { node_id: 9 })
    ));
    assert!(matches!(
        a.send(append(1, 2, 0, 8 * 1024)),
        Err(TransportError::MessageTooLarge { .. })
    ));
    assert!(a.stats(1).is_none() && a.stats(9).is_none());
    within("shutdown", a.shutdown()).await;
    assert!(matches!(
        a.send(vote(1, 1, 2, 0)),
        Err(TransportError::ShutDown)
    ));
}

#[tokio::test]
async fn start_refuses_a_node_missing_from_its_peers() {
    let listener = bind().await;
    let peers = peers(&["127.0.0.1:1".into()]);
    let (deliver, _inbound) = collector();
    let result = Transport::start(
        config(5, &peers),
        listener,
        &CancellationToken::new(),
        deliver,
    );
    assert!(matches!(
        result,
        Err(TransportError::NotInPeers { node_id: 5 })
    ));
}

#[tokio::test]
async fn shutdown_stops_every_task_and_closes_the_port() {
    let mut nodes = cluster(3).await;
    nodes[0].0.send(vote(1, 1, 2, 0)).unwrap();
    receive(&mut nodes[1].1, 1).await;
    let address = nodes[0].0.local_addr();
    let token_shutdown = nodes.remove(0);
    within("shutdown", token_shutdown.0.shutdown()).await;
    assert_eq!(token_shutdown.0.live_tasks(), 0);
    let mut inbound = token_shutdown.1;
    assert!(within("inbound to end", inbound.recv()).await.is_none());
    assert!(
        TcpStream::connect(address).await.is_err(),
        "listener closed"
    );
    shutdown_all(nodes).await;
}

#[tokio::test]
async fn cancelling_the_node_token_stops_the_transport() {
    let listener = bind().await;
    let peers = peers(&[
        listener.local_addr().unwrap().to_string(),
        free_port_address().await,
    ]);
    let node_shutdown = CancellationToken::new();
    let (deliver, mut inbound) = collector();
    let transport = Transport::start(config(1, &peers), listener, &node_shutdown, deliver).unwrap();
    assert!(transport.live_tasks() >= 2);
    node_shutdown.cancel();
    assert!(within("inbound to end", inbound.recv()).await.is_none());
    within("tasks to exit", transport.shutdown()).await;
    assert_eq!(transport.live_tasks(), 0);
}

#[tokio::test]
async fn a_newer_connection_from_a_peer_replaces_the_older() {
    let mut nodes = cluster(2).await;
    nodes[0].0.send(vote(1, 1, 2, 0)).unwrap();
    receive(&mut nodes[1].1, 1).await;

    // A second connection claiming to be node 1 (as after a restart whose old connection B
    // never saw die) takes the place of A's; A notices, reconnects, and in turn replaces it.
    let (mut impostor, result) = raw_peer(nodes[1].0.local_addr(), CLUSTER, 1).await;
    result.unwrap();
    assert_closed(&mut impostor).await;
    let a = &nodes[0].0;
    wait_until("A to reconnect", || a.stats(2).unwrap().reconnects >= 1).await;
    for seq in 1..=10 {
        a.send(vote(1, 1, 2, seq)).unwrap();
    }
    let received = receive(&mut nodes[1].1, 10).await;
    assert_eq!(
        received.iter().map(seq).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    shutdown_all(nodes).await;
}

/// A peer port that completes every handshake as `node_id`, then never reads again, as a
/// peer whose process is stuck would. Runs until the returned token is cancelled.
async fn stalled_peer(listener: TcpListener, node_id: NodeId) -> CancellationToken {
    let token = CancellationToken::new();
    let stop = token.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let mut framed = Framed::new(accepted.unwrap().0, EnvelopeCodec::default());
            let first = within("a handshake", framed.next()).await.unwrap().unwrap();
            handshake::check_handshake(first, CLUSTER, ConnectionRole::Peer).unwrap();
            let response = HandshakeResponse {
                protocol_version: PROTOCOL_VERSION,
                node_id,
            };
            let envelope = Envelope {
                correlation_id: 0,
                body: Some(Body::HandshakeResponse(response)),
            };
            framed.send(envelope).await.unwrap();
            held.push(framed);
        }
    });
    token
}

#[tokio::test]
async fn a_stuck_peer_is_cut_off_after_the_write_timeout() {
    let mut listeners = vec![bind().await, bind().await];
    let addresses: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect();
    let peers = peers(&addresses);
    let mut a_config = config(1, &peers);
    a_config.network.peer_queue_bytes_max = 2 * 1024 * 1024;
    a_config.network.peer_write_timeout_ms = 300;
    let stalled = stalled_peer(listeners.pop().unwrap(), 2).await;
    let (a, _a_inbound) = start(a_config, listeners.pop().unwrap());

    // B reads nothing after the handshake, so A's writes stall once the socket buffers are
    // full; after the write timeout A gives the connection up and builds a new one.
    let mut sent = 0;
    within("A to give up the stalled connection", async {
        while a.stats(2).unwrap().reconnects == 0 {
            let _ = a.send(append(1, 2, sent, 64 * 1024)).unwrap();
            sent += 1;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    assert!(a.stats(2).unwrap().dropped_messages > 0);
    within("shutdown", a.shutdown()).await;
    stalled.cancel();
}
