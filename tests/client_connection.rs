//! The client connection against a real TCP peer on loopback that speaks the wire protocol:
//! correlation ids, pipelining limits, server errors and broken connections.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use raftlog::client::{ClientError, ConnectOptions, Connection};
use raftlog::proto::envelope::Body;
use raftlog::proto::*;
use raftlog::wire::{error_envelope, handshake, EnvelopeCodec};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_util::codec::Framed;

const BOUND: Duration = Duration::from_secs(10);

/// Accepts one client connection and completes the handshake as node 7 of cluster "test".
async fn accept(listener: &TcpListener) -> Framed<TcpStream, EnvelopeCodec> {
    let (socket, _) = listener.accept().await.unwrap();
    let mut framed = Framed::new(socket, EnvelopeCodec::default());
    handshake::accept(&mut framed, "test", ConnectionRole::Client, 7)
        .await
        .unwrap();
    framed
}

fn options(in_flight_max: usize) -> ConnectOptions {
    ConnectOptions {
        cluster_id: "test".into(),
        in_flight_max,
        ..Default::default()
    }
}

fn create(name: &str) -> Body {
    Body::CreateTopic(CreateTopicRequest {
        name: name.into(),
        partitions: 1,
        replication_factor: 1,
        ..Default::default()
    })
}

fn created_name(body: Body) -> String {
    match body {
        Body::CreateTopicResponse(CreateTopicResponse { topic: Some(topic) }) => topic.name,
        other => panic!("unexpected response {other:?}"),
    }
}

#[tokio::test]
async fn responses_in_any_order_reach_their_own_requests() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        let mut framed = accept(&listener).await;
        let mut requests = Vec::new();
        while requests.len() < 3 {
            requests.push(framed.next().await.unwrap().unwrap());
        }
        // Answer in reverse order, echoing each request's topic name.
        for request in requests.into_iter().rev() {
            let Some(Body::CreateTopic(create)) = request.body else {
                panic!("not a create")
            };
            let topic = TopicInfo {
                name: create.name,
                ..Default::default()
            };
            let body = Body::CreateTopicResponse(CreateTopicResponse { topic: Some(topic) });
            framed
                .send(Envelope {
                    correlation_id: request.correlation_id,
                    body: Some(body),
                })
                .await
                .unwrap();
        }
    });
    let connection = Connection::connect(&address, &options(16)).await.unwrap();
    assert_eq!(connection.node_id(), 7);
    let (a, b, c) = timeout(
        BOUND,
        futures::future::join3(
            connection.request(create("a")),
            connection.request(create("b")),
            connection.request(create("c")),
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        [
            created_name(a.unwrap()),
            created_name(b.unwrap()),
            created_name(c.unwrap())
        ],
        ["a", "b", "c"]
    );
    server.await.unwrap();
}

#[tokio::test]
async fn no_more_than_in_flight_max_requests_are_outstanding() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        let mut framed = accept(&listener).await;
        let mut unanswered = Vec::new();
        // Read until nothing more arrives for a while: that is what the client let through.
        while let Ok(Some(Ok(request))) = timeout(Duration::from_millis(300), framed.next()).await {
            unanswered.push(request);
        }
        let seen_before_answering = unanswered.len();
        let mut answered = 0;
        while answered < 5 {
            let request = match unanswered.pop() {
                Some(request) => request,
                None => framed.next().await.unwrap().unwrap(),
            };
            let body = Body::ListTopicsResponse(ListTopicsResponse::default());
            framed
                .send(Envelope {
                    correlation_id: request.correlation_id,
                    body: Some(body),
                })
                .await
                .unwrap();
            answered += 1;
        }
        seen_before_answering
    });
    let connection = Connection::connect(&address, &options(2)).await.unwrap();
    let requests = (0..5).map(|_| connection.request(Body::ListTopics(ListTopicsRequest {})));
    let results = timeout(BOUND, futures::future::join_all(requests))
        .await
        .unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(
        server.await.unwrap(),
        2,
        "the server saw exactly in_flight_max requests before answering"
    );
}

#[tokio::test]
async fn an_error_response_is_a_server_error_with_its_code() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut framed = accept(&listener).await;
        let request = framed.next().await.unwrap().unwrap();
        let error = Error {
            code: ErrorCode::NotLeader as i32,
            message: "ask node 2".into(),
            leader_id: 2,
            ..Default::default()
        };
        framed
            .send(error_envelope(request.correlation_id, error))
            .await
            .unwrap();
        // Keep the connection open until the client is done.
        let _ = framed.next().await;
    });
    let connection = Connection::connect(&address, &options(4)).await.unwrap();
    let err = timeout(BOUND, connection.request(create("t")))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotLeader));
    let ClientError::Server(error) = err else {
        panic!("not a server error")
    };
    assert_eq!(error.leader_id, 2);
}

#[tokio::test]
async fn waiting_requests_fail_promptly_when_the_connection_breaks() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut framed = accept(&listener).await;
        let _ = framed.next().await;
        // Drop the connection without answering.
    });
    let connection = Connection::connect(&address, &options(4)).await.unwrap();
    let err = timeout(BOUND, connection.request(create("t")))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, ClientError::Closed), "{err}");
    let later = timeout(BOUND, connection.request(create("u")))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(later, ClientError::Closed), "{later}");
    assert!(connection.is_closed());
}

#[tokio::test]
async fn connecting_to_a_closed_port_or_another_cluster_fails_with_a_clear_message() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let accept_task = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let mut framed = Framed::new(socket, EnvelopeCodec::default());
        handshake::accept(&mut framed, "test", ConnectionRole::Client, 7).await
    });
    let wrong_cluster = ConnectOptions {
        cluster_id: "other".into(),
        ..Default::default()
    };
    let err = Connection::connect(&address, &wrong_cluster)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("CLUSTER_MISMATCH"), "{err}");
    assert!(accept_task.await.unwrap().is_err());

    // The listener is gone now, so its port refuses connections.
    let err = Connection::connect(&address, &options(1))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err}");
    assert!(err.to_string().contains(&address), "{err}");
}
