//! The connection handshake: the first frame on every connection, on both ports.
//!
//! ```text
//! opener                                   acceptor
//!   | -- Envelope{Handshake{version, cluster_id, role, node_id}} --> |
//!   |                                       check version, cluster, role
//!   | <-- Envelope{HandshakeResponse{version, node_id}} ------------ |   accepted
//!   | <-- Envelope{Error{code, message}}, then close --------------- |   refused
//! ```
//!
//! Checking the cluster id first is what keeps nodes of two different clusters on one network
//! from ever exchanging Raft messages: a vote from the wrong cluster would be a safety bug.

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::Framed;

use crate::proto::envelope::Body;
use crate::proto::{ConnectionRole, Envelope, Handshake, HandshakeResponse};
use crate::wire::error::{body_name, error_envelope};
use crate::wire::{EnvelopeCodec, WireError};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The handshake envelope a client or peer sends first.
pub fn handshake_envelope(
    cluster_id: &str,
    role: ConnectionRole,
    node_id: u64,
    client_id: &str,
) -> Envelope {
    let handshake = Handshake {
        protocol_version: PROTOCOL_VERSION,
        cluster_id: cluster_id.to_owned(),
        role: role as i32,
        node_id,
        client_id: client_id.to_owned(),
        client_address: String::new(),
        peer_address: String::new(),
    };
    Envelope {
        correlation_id: 0,
        body: Some(Body::Handshake(handshake)),
    }
}

/// The handshake a node sends when it dials a peer: it names itself and advertises the
/// address where clients reach it.
pub fn peer_handshake_envelope(
    cluster_id: &str,
    node_id: u64,
    client_address: &str,
    peer_address: &str,
) -> Envelope {
    let mut envelope = handshake_envelope(cluster_id, ConnectionRole::Peer, node_id, "");
    if let Some(Body::Handshake(handshake)) = envelope.body.as_mut() {
        handshake.client_address = client_address.to_owned();
        handshake.peer_address = peer_address.to_owned();
    }
    envelope
}

/// Checks the first envelope of a connection against this node's cluster and port role.
///
/// # Errors
/// [`WireError::UnexpectedMessage`] if the envelope is not a handshake, then in this order
/// [`WireError::UnsupportedVersion`], [`WireError::ClusterMismatch`], [`WireError::WrongRole`].
pub fn check_handshake(
    envelope: Envelope,
    cluster_id: &str,
    role: ConnectionRole,
) -> Result<Handshake, WireError> {
    let handshake = match envelope.body {
        Some(Body::Handshake(handshake)) => handshake,
        other => {
            return Err(WireError::UnexpectedMessage {
                expected: "Handshake",
                got: body_name(other.as_ref()),
            })
        }
    };
    if handshake.protocol_version != PROTOCOL_VERSION {
        return Err(WireError::UnsupportedVersion {
            requested: handshake.protocol_version,
            supported: PROTOCOL_VERSION,
        });
    }
    if handshake.cluster_id != cluster_id {
        return Err(WireError::ClusterMismatch {
            requested: handshake.cluster_id,
            expected: cluster_id.to_owned(),
        });
    }
    if handshake.role() != role {
        return Err(WireError::WrongRole {
            got: handshake.role(),
            expected: role,
        });
    }
    Ok(handshake)
}

/// Runs the acceptor's side: reads the first frame, checks it, and answers.
///
/// On a refused handshake the error is sent to the other side before returning it, so the
/// caller only has to drop the connection. Callers bound the wait with a timeout.
///
/// # Errors
/// Any [`check_handshake`] error, a framing error, or [`WireError::Closed`].
pub async fn accept<S>(
    framed: &mut Framed<S, EnvelopeCodec>,
    cluster_id: &str,
    role: ConnectionRole,
    node_id: u64,
) -> Result<Handshake, WireError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let first = framed.next().await.ok_or(WireError::Closed)?;
    let checked = first.and_then(|envelope| check_handshake(envelope, cluster_id, role));
    match checked {
        Ok(handshake) => {
            let response = HandshakeResponse {
                protocol_version: PROTOCOL_VERSION,
                node_id,
            };
            framed
                .send(Envelope {
                    correlation_id: 0,
                    body: Some(Body::HandshakeResponse(response)),
                })
                .await?;
            Ok(handshake)
        }
        Err(error) => {
            // Best effort: the connection is being dropped either way, and the refusal is what
            // tells the operator of the other side why.
            let _ = framed.send(error_envelope(0, error.to_message())).await;
            Err(error)
        }
    }
}

/// Runs the opener's side: sends the handshake and waits for the answer.
///
/// # Errors
/// [`WireError::Remote`] when the acceptor refused, [`WireError::Closed`] when it hung up,
/// [`WireError::UnexpectedMessage`] for any other answer, or a framing error.
pub async fn connect<S>(
    framed: &mut Framed<S, EnvelopeCodec>,
    cluster_id: &str,
    role: ConnectionRole,
    node_id: u64,
    client_id: &str,
) -> Result<HandshakeResponse, WireError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    connect_with(
        framed,
        handshake_envelope(cluster_id, role, node_id, client_id),
    )
    .await
}

/// Runs the opener's side with a handshake envelope built by the caller (see
/// [`peer_handshake_envelope`]).
///
/// # Errors
/// As [`connect`].
pub async fn connect_with<S>(
    framed: &mut Framed<S, EnvelopeCodec>,
    handshake: Envelope,
) -> Result<HandshakeResponse, WireError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    framed.send(handshake).await?;
    let answer = framed.next().await.ok_or(WireError::Closed)??;
    match answer.body {
        Some(Body::HandshakeResponse(response)) => Ok(response),
        Some(Body::Error(error)) => Err(WireError::Remote(error)),
        other => Err(WireError::UnexpectedMessage {
            expected: "HandshakeResponse",
            got: body_name(other.as_ref()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ErrorCode;

    #[test]
    fn matching_handshake_is_accepted() {
        let envelope = handshake_envelope("prod", ConnectionRole::Peer, 3, "");
        let handshake = check_handshake(envelope, "prod", ConnectionRole::Peer).unwrap();
        assert_eq!(handshake.node_id, 3);
    }

    #[test]
    fn wrong_cluster_wrong_version_and_wrong_role_are_refused_with_their_codes() {
        let wrong_cluster = handshake_envelope("staging", ConnectionRole::Client, 0, "cli");
        let err = check_handshake(wrong_cluster, "prod", ConnectionRole::Client).unwrap_err();
        assert_eq!(err.code(), ErrorCode::ClusterMismatch);

        let mut wrong_version = handshake_envelope("prod", ConnectionRole::Client, 0, "cli");
        if let Some(Body::Handshake(h)) = wrong_version.body.as_mut() {
            h.protocol_version = 99;
        }
        let err = check_handshake(wrong_version, "prod", ConnectionRole::Client).unwrap_err();
        assert_eq!(err.code(), ErrorCode::UnsupportedVersion);

        let peer_on_client_port = handshake_envelope("prod", ConnectionRole::Peer, 2, "");
        let err = check_handshake(peer_on_client_port, "prod", ConnectionRole::Client).unwrap_err();
        assert!(matches!(err, WireError::WrongRole { .. }));
    }

    #[test]
    fn a_request_before_the_handshake_is_refused() {
        let envelope = Envelope {
            correlation_id: 1,
            body: Some(Body::ListTopics(Default::default())),
        };
        let err = check_handshake(envelope, "prod", ConnectionRole::Client).unwrap_err();
        assert!(matches!(
            err,
            WireError::UnexpectedMessage {
                got: "ListTopicsRequest",
                ..
            }
        ));
    }
}
