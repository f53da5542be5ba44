//! Typed wire errors, and the one place where errors become the [`ErrorCode`]s clients see.

use crate::proto::envelope::Body;
use crate::proto::{ConnectionRole, Envelope, Error as ErrorMessage, ErrorCode};

/// What can go wrong while reading, writing or setting up a connection.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// A frame announced (or an envelope would need) more bytes than the configured maximum.
    #[error("frame of {length} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// The announced or encoded length in bytes.
        length: usize,
        /// The configured maximum in bytes.
        max: usize,
    },
    /// The frame's bytes are not a valid protobuf `Envelope`.
    #[error("malformed frame: {0}")]
    Malformed(prost::DecodeError),
    /// A well-formed envelope that is not what this point of the conversation allows.
    #[error("unexpected message: expected {expected}, got {got}")]
    UnexpectedMessage {
        /// What was allowed here.
        expected: &'static str,
        /// What arrived.
        got: &'static str,
    },
    /// The handshake asked for a protocol version this node does not speak.
    #[error("unsupported protocol version {requested}; this node speaks version {supported}")]
    UnsupportedVersion {
        /// The version in the handshake.
        requested: u32,
        /// The version this node speaks.
        supported: u32,
    },
    /// The handshake named a different cluster.
    #[error(
        "cluster id mismatch: connection is for cluster {requested:?}, this node belongs to {expected:?}"
    )]
    ClusterMismatch {
        /// The cluster id in the handshake.
        requested: String,
        /// This node's cluster id.
        expected: String,
    },
    /// A client connected to the peer port or a peer to the client port.
    #[error("wrong connection role {got:?} on a port for {expected:?}")]
    WrongRole {
        /// The role in the handshake.
        got: ConnectionRole,
        /// The role this port serves.
        expected: ConnectionRole,
    },
    /// The other side answered with an error.
    #[error("{}: {}", .0.code().as_str_name(), .0.message)]
    Remote(ErrorMessage),
    /// The connection closed before the exchange completed.
    #[error("connection closed by the other side")]
    Closed,
    /// Reading or writing the socket failed.
    #[error("connection i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl WireError {
    /// The code a client receives for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            WireError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            WireError::Malformed(_) => ErrorCode::MalformedFrame,
            WireError::UnexpectedMessage { .. } | WireError::WrongRole { .. } => {
                ErrorCode::InvalidRequest
            }
            WireError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            WireError::ClusterMismatch { .. } => ErrorCode::ClusterMismatch,
            WireError::Remote(error) => error.code(),
            WireError::Closed | WireError::Io(_) => ErrorCode::Internal,
        }
    }

    /// The error message sent to the other side.
    pub fn to_message(&self) -> ErrorMessage {
        ErrorMessage {
            code: self.code() as i32,
            message: self.to_string(),
            ..Default::default()
        }
    }
}

/// An envelope answering request `correlation_id` with an error.
pub fn error_envelope(correlation_id: u64, error: ErrorMessage) -> Envelope {
    Envelope {
        correlation_id,
        body: Some(Body::Error(error)),
    }
}

/// The name of an envelope body, for error messages and logs.
pub fn body_name(body: Option<&Body>) -> &'static str {
    let Some(body) = body else {
        return "an envelope without a body";
    };
    match body {
        Body::Handshake(_) => "Handshake",
        Body::HandshakeResponse(_) => "HandshakeResponse",
        Body::Error(_) => "Error",
        Body::Produce(_) => "ProduceRequest",
        Body::ProduceResponse(_) => "ProduceResponse",
        Body::Fetch(_) => "FetchRequest",
        Body::FetchResponse(_) => "FetchResponse",
        Body::Metadata(_) => "MetadataRequest",
        Body::MetadataResponse(_) => "MetadataResponse",
        Body::CreateTopic(_) => "CreateTopicRequest",
        Body::CreateTopicResponse(_) => "CreateTopicResponse",
        Body::DeleteTopic(_) => "DeleteTopicRequest",
        Body::DeleteTopicResponse(_) => "DeleteTopicResponse",
        Body::ListTopics(_) => "ListTopicsRequest",
        Body::ListTopicsResponse(_) => "ListTopicsResponse",
        Body::OffsetCommit(_) => "OffsetCommitRequest",
        Body::OffsetCommitResponse(_) => "OffsetCommitResponse",
        Body::OffsetFetch(_) => "OffsetFetchRequest",
        Body::OffsetFetchResponse(_) => "OffsetFetchResponse",
        Body::InitProducerId(_) => "InitProducerIdRequest",
        Body::InitProducerIdResponse(_) => "InitProducerIdResponse",
        Body::MovePartition(_) => "MovePartitionRequest",
        Body::MovePartitionResponse(_) => "MovePartitionResponse",
        Body::CompletePartitionMove(_) => "CompletePartitionMove",
        Body::RegisterNode(_) => "RegisterNodeRequest",
        Body::RegisterNodeResponse(_) => "RegisterNodeResponse",
        Body::DecommissionNode(_) => "DecommissionNodeRequest",
        Body::RecommissionNode(_) => "RecommissionNodeRequest",
        Body::NodeStateResponse(_) => "NodeStateResponse",
        Body::JoinGroup(_) => "JoinGroupRequest",
        Body::JoinGroupResponse(_) => "JoinGroupResponse",
        Body::GroupHeartbeat(_) => "GroupHeartbeatRequest",
        Body::GroupHeartbeatResponse(_) => "GroupHeartbeatResponse",
        Body::LeaveGroup(_) => "LeaveGroupRequest",
        Body::LeaveGroupResponse(_) => "LeaveGroupResponse",
        Body::DescribeGroup(_) => "DescribeGroupRequest",
        Body::DescribeGroupResponse(_) => "DescribeGroupResponse",
        Body::ListGroups(_) => "ListGroupsRequest",
        Body::ListGroupsResponse(_) => "ListGroupsResponse",
        Body::DeleteGroup(_) => "DeleteGroupRequest",
        Body::DeleteGroupResponse(_) => "DeleteGroupResponse",
        Body::Raft(_) => "RaftBatch",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_a_code_and_a_readable_message() {
        let errors = [
            WireError::FrameTooLarge {
                length: 20,
                max: 10,
            },
            WireError::UnsupportedVersion {
                requested: 9,
                supported: 1,
            },
            WireError::ClusterMismatch {
                requested: "b".into(),
                expected: "a".into(),
            },
            WireError::UnexpectedMessage {
                expected: "Handshake",
                got: "FetchRequest",
            },
        ];
        let codes: Vec<ErrorCode> = errors.iter().map(WireError::code).collect();
        assert_eq!(
            codes,
            [
                ErrorCode::FrameTooLarge,
                ErrorCode::UnsupportedVersion,
                ErrorCode::ClusterMismatch,
                ErrorCode::InvalidRequest
            ]
        );
        let message = errors[2].to_message();
        assert_eq!(message.code(), ErrorCode::ClusterMismatch);
        assert!(
            message.message.contains("\"b\"") && message.message.contains("\"a\""),
            "{}",
            message.message
        );
    }
}
