//! The bounded channel from peer connections to the node.
//!
//! Bounded twice, in messages (the channel's capacity) and in bytes (a semaphore whose permits
//! travel with each message and return when the node takes it). When the node falls behind,
//! connection readers wait for room instead of reading on: TCP flow control then slows the
//! sending node, whose own bounded queue drops what does not fit. Nothing grows without bound
//! and nothing is silently lost on this side.

use std::sync::Arc;

use prost::Message;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::proto::RaftMessage;

/// Raft messages received from peers, in the order each connection delivered them.
///
/// `recv` returns `None` once the transport has shut down and every received message has been
/// taken.
#[derive(Debug)]
pub struct Inbound {
    receiver: mpsc::Receiver<(RaftMessage, OwnedSemaphorePermit)>,
}

impl Inbound {
    /// The next message; waits until one arrives.
    pub async fn recv(&mut self) -> Option<RaftMessage> {
        // Dropping the permit here is what returns the message's bytes to the budget.
        self.receiver.recv().await.map(|(message, _permit)| message)
    }

    /// The next message if one is waiting.
    pub fn try_recv(&mut self) -> Option<RaftMessage> {
        self.receiver
            .try_recv()
            .ok()
            .map(|(message, _permit)| message)
    }
}

/// The connection readers' end of [`Inbound`].
#[derive(Debug, Clone)]
pub(super) struct InboundSender {
    sender: mpsc::Sender<(RaftMessage, OwnedSemaphorePermit)>,
    bytes: Arc<Semaphore>,
    bytes_max: u32,
}

/// The node dropped its [`Inbound`].
#[derive(Debug)]
pub(super) struct InboundClosed;

/// A channel of at most `messages_max` messages and `bytes_max` bytes.
pub(super) fn channel(messages_max: usize, bytes_max: usize) -> (InboundSender, Inbound) {
    let (sender, receiver) = mpsc::channel(messages_max.max(1));
    let bytes_max = bytes_max.clamp(1, (Semaphore::MAX_PERMITS).min(u32::MAX as usize));
    let bytes_max = u32::try_from(bytes_max).expect("clamped to u32");
    let inbound_sender = InboundSender {
        sender,
        bytes: Arc::new(Semaphore::new(bytes_max as usize)),
        bytes_max,
    };
    (inbound_sender, Inbound { receiver })
}

impl InboundSender {
    /// Waits for room, then hands `message` to the node.
    pub(super) async fn send(&self, message: RaftMessage) -> Result<(), InboundClosed> {
        // A message larger than the whole budget takes all of it, so it still gets through,
        // alone.
        let bytes = u32::try_from(message.encoded_len()).unwrap_or(u32::MAX);
        let permit = self
            .bytes
            .clone()
            .acquire_many_owned(bytes.clamp(1, self.bytes_max))
            .await
            .map_err(|_| InboundClosed)?;
        self.sender
            .send((message, permit))
            .await
            .map_err(|_| InboundClosed)
    }
}
