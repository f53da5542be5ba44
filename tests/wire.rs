//! Black-box tests of the wire protocol: every envelope type through the codec, arbitrary
//! bytes through the decoder, and the handshake over real loopback TCP.

use bytes::{BufMut, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use proptest::prelude::*;
use raftlog::proto::envelope::Body;
use raftlog::proto::raft_message::Body as RaftBody;
use raftlog::proto::*;
use raftlog::wire::{self, handshake, EnvelopeCodec, WireError, FRAME_BYTES_MAX_DEFAULT};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Decoder, Encoder, Framed};

fn entry(index: u64) -> Entry {
    Entry {
        term: 3,
        index,
        kind: EntryKind::Data as i32,
        base_offset: index * 10,
        record_count: 10,
        timestamp_ms: 1_700_000_000_000,
        payload: Bytes::from(vec![index as u8; 100]),
    }
}

fn topic_info() -> TopicInfo {
    TopicInfo {
        name: "orders".into(),
        partitions: vec![PartitionInfo {
            partition: 1,
            group_id: 7,
            leader_id: 2,
            replicas: vec![1, 2, 3],
            term: 4,
            log_start_offset: 10,
            high_watermark: 99,
            replica_progress: vec![ReplicaProgress {
                node_id: 3,
                match_index: 41,
                lag_entries: 2,
            }],
            target_replicas: vec![2, 3, 4],
            move_phase: "catching_up".into(),
            move_waiting_for: vec![4],
            move_bytes_moved: 1 << 20,
            move_bytes_remaining: 3 << 20,
            move_rate_bytes_per_second: 512 << 10,
        }],
        replication_factor: 3,
        retention_bytes: 1 << 30,
        retention_ms: 86_400_000,
    }
}

fn raft_messages() -> Vec<RaftMessage> {
    let bodies = vec![
        RaftBody::RequestVote(RequestVote {
            term: 5,
            candidate_id: 2,
            last_log_index: 9,
            last_log_term: 4,
            pre_vote: true,
            leadership_transfer: true,
        }),
        RaftBody::RequestVoteResponse(RequestVoteResponse {
            term: 5,
            vote_granted: true,
            pre_vote: true,
        }),
        RaftBody::AppendEntries(AppendEntries {
            term: 5,
            leader_id: 1,
            prev_log_index: 8,
            prev_log_term: 4,
            entries: vec![entry(9), entry(10)],
            leader_commit: 8,
        }),
        RaftBody::AppendEntriesResponse(AppendEntriesResponse {
            term: 5,
            success: false,
            appended_index: 7,
            durable_index: 6,
            conflict_index: 5,
            conflict_term: 3,
            last_log_index: 12,
            rejected_index: 6,
        }),
        RaftBody::InstallSnapshot(InstallSnapshot {
            term: 5,
            leader_id: 1,
            last_included_index: 100,
            last_included_term: 4,
            next_offset: 1000,
            data: Bytes::from_static(b"meta"),
            config: Some(Box::new(GroupConfig {
                voters: vec![1, 2, 4],
                learners: vec![5],
                voters_outgoing: vec![1, 2, 3],
            })),
        }),
        RaftBody::InstallSnapshotResponse(InstallSnapshotResponse {
            term: 5,
            last_log_index: 100,
        }),
        RaftBody::TimeoutNow(TimeoutNow {
            term: 5,
            leader_id: 1,
        }),
    ];
    bodies
        .into_iter()
        .map(|body| RaftMessage {
            group_id: 7,
            from: 1,
            to: 2,
            body: Some(body),
        })
        .collect()
}

/// One envelope of every body type, each with non-default fields.
fn every_envelope() -> Vec<Envelope> {
    let batch = RecordBatch {
        crc: 0xdead_beef,
        record_count: 2,
        first_timestamp_ms: 1_700_000_000_000,
        producer_id: 11,
        producer_epoch: 1,
        base_sequence: 40,
        records: Bytes::from_static(b"records"),
    };
    let offsets = vec![PartitionOffset {
        partition: 0,
        offset: 17,
        committed: true,
    }];
    let bodies = vec![
        handshake::handshake_envelope("c", ConnectionRole::Client, 0, "tests")
            .body
            .unwrap(),
        Body::HandshakeResponse(HandshakeResponse {
            protocol_version: 1,
            node_id: 3,
        }),
        Body::Error(Error {
            code: ErrorCode::NotLeader as i32,
            message: "not the leader".into(),
            leader_id: 2,
            leader_address: "127.0.0.1:9410".into(),
            log_start_offset: 1,
            high_watermark: 2,
            duplicate_offset: 3,
        }),
        Body::Produce(ProduceRequest {
            topic: "orders".into(),
            partition: 1,
            acks: Acks::All as i32,
            batch: Bytes::from(prost::Message::encode_to_vec(&batch)),
            timeout_ms: 30_000,
        }),
        Body::ProduceResponse(ProduceResponse {
            base_offset: 5,
            timestamp_ms: 6,
            high_watermark: 7,
        }),
        Body::Fetch(FetchRequest {
            topic: "orders".into(),
            partition: 1,
            offset: 5,
            max_bytes: 1 << 20,
            max_wait_ms: 500,
            min_bytes: 1,
        }),
        Body::FetchResponse(FetchResponse {
            batches: vec![FetchedBatch {
                base_offset: 5,
                record_count: 2,
                timestamp_ms: 9,
                batch: Bytes::from_static(b"stored batch"),
            }],
            high_watermark: 7,
            log_start_offset: 0,
        }),
        Body::Metadata(MetadataRequest {
            topics: vec!["orders".into()],
        }),
        Body::MetadataResponse(MetadataResponse {
            nodes: vec![NodeInfo {
                node_id: 1,
                client_address: "127.0.0.1:9400".into(),
                peer_address: "127.0.0.1:9401".into(),
                state: "active".into(),
            }],
            topics: vec![topic_info()],
            metadata_leader_id: 1,
            metadata_term: 3,
        }),
        Body::CreateTopic(CreateTopicRequest {
            name: "orders".into(),
            partitions: 3,
            replication_factor: 3,
            retention_bytes: 1,
            retention_ms: 2,
        }),
        Body::CreateTopicResponse(CreateTopicResponse {
            topic: Some(topic_info()),
        }),
        Body::DeleteTopic(DeleteTopicRequest {
            name: "orders".into(),
        }),
        Body::DeleteTopicResponse(DeleteTopicResponse {}),
        Body::ListTopics(ListTopicsRequest {}),
        Body::ListTopicsResponse(ListTopicsResponse {
            topics: vec![topic_info()],
        }),
        Body::OffsetCommit(OffsetCommitRequest {
            group: "billing".into(),
            topic: "orders".into(),
            offsets: offsets.clone(),
            member_id: "raftlog-consume-7-1-18c2".into(),
            generation: 4,
        }),
        Body::OffsetCommitResponse(OffsetCommitResponse {}),
        Body::OffsetFetch(OffsetFetchRequest {
            group: "billing".into(),
            topic: "orders".into(),
            partitions: vec![0, 1],
        }),
        Body::OffsetFetchResponse(OffsetFetchResponse { offsets }),
        Body::InitProducerId(InitProducerIdRequest {}),
        Body::InitProducerIdResponse(InitProducerIdResponse {
            producer_id: 11,
            producer_epoch: 1,
        }),
        Body::MovePartition(MovePartitionRequest {
            topic: "orders".into(),
            partition: 1,
            replicas: vec![2, 3, 4],
        }),
        Body::MovePartitionResponse(MovePartitionResponse {}),
        Body::CompletePartitionMove(CompletePartitionMove {
            topic: "orders".into(),
            partition: 1,
            replicas: vec![2, 3, 4],
        }),
        Body::RegisterNode(RegisterNodeRequest {
            node_id: 4,
            client_address: "127.0.0.1:9430".into(),
            peer_address: "127.0.0.1:9431".into(),
            incarnation: 81_234_567,
        }),
        Body::DecommissionNode(DecommissionNodeRequest { node_id: 1 }),
        Body::RecommissionNode(RecommissionNodeRequest { node_id: 1 }),
        Body::NodeStateResponse(NodeStateResponse {
            node: Some(NodeInfo {
                node_id: 1,
                client_address: "127.0.0.1:9400".into(),
                peer_address: "127.0.0.1:9401".into(),
                state: "draining".into(),
            }),
        }),
        Body::RegisterNodeResponse(RegisterNodeResponse {
            nodes: vec![NodeInfo {
                node_id: 4,
                client_address: "127.0.0.1:9430".into(),
                peer_address: "127.0.0.1:9431".into(),
                state: "active".into(),
            }],
            founding_voters: vec![1, 2, 3],
        }),
        Body::Raft(RaftBatch {
            messages: raft_messages(),
        }),
        Body::JoinGroup(JoinGroupRequest {
            group: "billing".into(),
            topics: vec!["orders".into()],
            session_timeout_ms: 10_000,
            client_id: "billing-1".into(),
            rebalance_timeout_ms: 60_000,
        }),
        Body::JoinGroupResponse(JoinGroupResponse {
            member_id: "billing-1-2-1-18c2".into(),
            generation: 3,
            owned: vec![TopicPartitions {
                topic: "orders".into(),
                partitions: vec![0, 2],
            }],
            heartbeat_interval_ms: 3_333,
            revoking: vec![TopicPartitions {
                topic: "orders".into(),
                partitions: vec![2],
            }],
        }),
        Body::GroupHeartbeat(GroupHeartbeatRequest {
            group: "billing".into(),
            member_id: "billing-1-2-1-18c2".into(),
            generation: 3,
            released: vec![TopicPartitions {
                topic: "orders".into(),
                partitions: vec![2],
            }],
        }),
        Body::GroupHeartbeatResponse(GroupHeartbeatResponse {
            generation: 4,
            owned: vec![TopicPartitions {
                topic: "orders".into(),
                partitions: vec![0, 1],
            }],
            revoking: vec![TopicPartitions {
                topic: "orders".into(),
                partitions: vec![1],
            }],
        }),
        Body::LeaveGroup(LeaveGroupRequest {
            group: "billing".into(),
            member_id: "billing-1-2-1-18c2".into(),
        }),
        Body::LeaveGroupResponse(LeaveGroupResponse {}),
        Body::DescribeGroup(DescribeGroupRequest {
            group: "billing".into(),
        }),
        Body::DescribeGroupResponse(DescribeGroupResponse {
            group: Some(group_info()),
        }),
        Body::ListGroups(ListGroupsRequest {}),
        Body::ListGroupsResponse(ListGroupsResponse {
            groups: vec![group_info()],
        }),
        Body::DeleteGroup(DeleteGroupRequest {
            group: "billing".into(),
        }),
        Body::DeleteGroupResponse(DeleteGroupResponse {}),
    ];
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, body)| Envelope {
            correlation_id: 1000 + i as u64,
            body: Some(body),
        })
        .collect()
}

/// Position of a body variant in the oneof. The exhaustive match makes this file fail to
/// compile when the schema gains a variant, so the round-trip test cannot silently skip it.
fn variant_number(body: &Body) -> usize {
    match body {
        Body::Handshake(_) => 0,
        Body::HandshakeResponse(_) => 1,
        Body::Error(_) => 2,
        Body::Produce(_) => 3,
        Body::ProduceResponse(_) => 4,
        Body::Fetch(_) => 5,
        Body::FetchResponse(_) => 6,
        Body::Metadata(_) => 7,
        Body::MetadataResponse(_) => 8,
        Body::CreateTopic(_) => 9,
        Body::CreateTopicResponse(_) => 10,
        Body::DeleteTopic(_) => 11,
        Body::DeleteTopicResponse(_) => 12,
        Body::ListTopics(_) => 13,
        Body::ListTopicsResponse(_) => 14,
        Body::OffsetCommit(_) => 15,
        Body::OffsetCommitResponse(_) => 16,
        Body::OffsetFetch(_) => 17,
        Body::OffsetFetchResponse(_) => 18,
        Body::InitProducerId(_) => 19,
        Body::InitProducerIdResponse(_) => 20,
        Body::Raft(_) => 21,
        Body::MovePartition(_) => 22,
        Body::MovePartitionResponse(_) => 23,
        Body::CompletePartitionMove(_) => 24,
        Body::RegisterNode(_) => 25,
        Body::RegisterNodeResponse(_) => 26,
        Body::DecommissionNode(_) => 27,
        Body::RecommissionNode(_) => 28,
        Body::NodeStateResponse(_) => 29,
        Body::JoinGroup(_) => 30,
        Body::JoinGroupResponse(_) => 31,
        Body::GroupHeartbeat(_) => 32,
        Body::GroupHeartbeatResponse(_) => 33,
        Body::LeaveGroup(_) => 34,
        Body::LeaveGroupResponse(_) => 35,
        Body::DescribeGroup(_) => 36,
        Body::DescribeGroupResponse(_) => 37,
        Body::ListGroups(_) => 38,
        Body::ListGroupsResponse(_) => 39,
        Body::DeleteGroup(_) => 40,
        Body::DeleteGroupResponse(_) => 41,
    }
}

/// A group with a member, an owned partition being revoked and an unowned one.
fn group_info() -> GroupInfo {
    GroupInfo {
        name: "billing".into(),
        state: "rebalancing".into(),
        generation: 4,
        members: vec![GroupMemberInfo {
            member_id: "billing-1-2-1-18c2".into(),
            client_id: "billing-1".into(),
            topics: vec!["orders".into()],
            session_timeout_ms: 10_000,
        }],
        partitions: vec![
            GroupPartitionInfo {
                topic: "orders".into(),
                partition: 1,
                owner: "billing-1-2-1-18c2".into(),
                revoking: true,
                committed_offset: 17,
                committed: true,
                high_watermark: 20,
                lag: 3,
            },
            GroupPartitionInfo {
                topic: "orders".into(),
                partition: 2,
                high_watermark: 5,
                lag: 5,
                ..Default::default()
            },
        ],
    }
}

#[test]
fn every_envelope_type_round_trips_through_the_codec() {
    let envelopes = every_envelope();
    let mut seen: Vec<usize> = envelopes
        .iter()
        .map(|e| variant_number(e.body.as_ref().unwrap()))
        .collect();
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..42).collect::<Vec<_>>(),
        "every Envelope body variant has a sample"
    );

    let mut codec = EnvelopeCodec::default();
    let mut buf = BytesMut::new();
    for envelope in &envelopes {
        codec.encode(envelope, &mut buf).unwrap();
    }
    for expected in &envelopes {
        let decoded = codec
            .decode(&mut buf)
            .unwrap()
            .expect("a whole frame is buffered");
        assert_eq!(&decoded, expected);
    }
    assert!(buf.is_empty());
    assert_eq!(codec.decode(&mut buf).unwrap(), None);
}

#[test]
fn every_raft_message_round_trips_when_split_at_every_byte() {
    let mut codec = EnvelopeCodec::default();
    for message in raft_messages() {
        let envelope = Envelope {
            correlation_id: 0,
            body: Some(Body::Raft(RaftBatch {
                messages: vec![message],
            })),
        };
        let mut encoded = BytesMut::new();
        codec.encode(&envelope, &mut encoded).unwrap();
        for split in 0..encoded.len() {
            let mut buf = BytesMut::from(&encoded[..split]);
            assert_eq!(
                codec.decode(&mut buf).unwrap(),
                None,
                "split at byte {split}"
            );
            buf.extend_from_slice(&encoded[split..]);
            assert_eq!(codec.decode(&mut buf).unwrap().as_ref(), Some(&envelope));
        }
    }
}

#[test]
fn a_length_just_over_the_limit_is_refused_and_one_at_the_limit_waits() {
    let mut codec = EnvelopeCodec::new(1024);
    let mut at_limit = BytesMut::new();
    at_limit.put_u32(1024);
    assert_eq!(codec.decode(&mut at_limit).unwrap(), None);
    let mut over = BytesMut::new();
    over.put_u32(1025);
    let err = codec.decode(&mut over).unwrap_err();
    assert!(
        matches!(
            err,
            WireError::FrameTooLarge {
                length: 1025,
                max: 1024
            }
        ),
        "{err}"
    );
    assert_eq!(err.code(), ErrorCode::FrameTooLarge);
}

#[test]
fn garbage_inside_a_well_framed_envelope_is_a_malformed_error() {
    let mut codec = EnvelopeCodec::default();
    let mut buf = BytesMut::new();
    buf.put_u32(3);
    buf.put_slice(&[0xff, 0xff, 0xff]);
    let err = codec.decode(&mut buf).unwrap_err();
    assert_eq!(err.code(), ErrorCode::MalformedFrame, "{err}");
}

fn proptest_cases() -> u32 {
    std::env::var("RAFTLOG_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

/// Feeds `bytes` to a decoder the way a socket would, stopping at the first error, which is
/// where a server closes the connection.
fn decode_stream(bytes: &[u8], chunk: usize, frame_bytes_max: usize) {
    let mut codec = EnvelopeCodec::new(frame_bytes_max);
    let mut buf = BytesMut::new();
    for piece in bytes.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(proptest_cases()))]

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
        chunk in 1usize..64,
    ) {
        decode_stream(&bytes, chunk, 256);
    }

    #[test]
    fn arbitrary_envelope_bytes_behind_a_valid_length_never_panic(
        body in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut framed = BytesMut::new();
        framed.put_u32(body.len() as u32);
        framed.put_slice(&body);
        decode_stream(&framed, framed.len(), FRAME_BYTES_MAX_DEFAULT);
    }
}

async fn accept_one(listener: TcpListener, cluster: &'static str) -> Result<Handshake, WireError> {
    let (socket, _) = listener.accept().await.unwrap();
    let mut framed = Framed::new(socket, EnvelopeCodec::default());
    let result = handshake::accept(&mut framed, cluster, ConnectionRole::Client, 1).await;
    if result.is_ok() {
        // Serve one request so the test can see the connection is usable after the handshake.
        if let Some(Ok(request)) = framed.next().await {
            let answer = Envelope {
                correlation_id: request.correlation_id,
                body: Some(Body::ListTopicsResponse(ListTopicsResponse::default())),
            };
            framed.send(answer).await.unwrap();
        }
    }
    result
}

#[tokio::test]
async fn handshake_over_tcp_accepts_the_right_cluster_and_carries_correlation_ids() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(accept_one(listener, "prod"));

    let socket = TcpStream::connect(address).await.unwrap();
    let mut framed = Framed::new(socket, EnvelopeCodec::default());
    let response = handshake::connect(&mut framed, "prod", ConnectionRole::Client, 0, "test")
        .await
        .unwrap();
    assert_eq!(
        (response.protocol_version, response.node_id),
        (wire::PROTOCOL_VERSION, 1)
    );
    framed
        .send(Envelope {
            correlation_id: 42,
            body: Some(Body::ListTopics(ListTopicsRequest {})),
        })
        .await
        .unwrap();
    let answer = framed.next().await.unwrap().unwrap();
    assert_eq!(answer.correlation_id, 42);
    assert!(server.await.unwrap().is_ok());
}

#[tokio::test]
async fn handshake_over_tcp_refuses_another_cluster_with_a_clear_error_and_closes() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(accept_one(listener, "prod"));

    let socket = TcpStream::connect(address).await.unwrap();
    let mut framed = Framed::new(socket, EnvelopeCodec::default());
    let err = handshake::connect(&mut framed, "staging", ConnectionRole::Client, 0, "test")
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::ClusterMismatch, "{err}");
    assert!(
        err.to_string().contains("staging"),
        "the message names the cluster: {err}"
    );
    let server_side = server.await.unwrap().unwrap_err();
    assert!(matches!(server_side, WireError::ClusterMismatch { .. }));
    assert!(
        framed.next().await.is_none(),
        "the server closed the connection"
    );
}
