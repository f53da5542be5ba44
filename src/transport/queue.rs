//! The bounded outgoing queue of one peer, and how a write's worth of messages is taken from it.

use std::collections::VecDeque;

use crate::proto::RaftMessage;

/// Messages waiting to be written to one peer, bounded in count and in bytes.
///
/// Sizes are the bytes a message takes inside a `RaftBatch` (its length-delimited encoding),
/// so the sum over a drained batch is what the frame will carry.
#[derive(Debug)]
pub(super) struct PeerQueue {
    messages: VecDeque<(RaftMessage, usize)>,
    bytes: usize,
    messages_max: usize,
    bytes_max: usize,
}

impl PeerQueue {
    /// An empty queue holding at most `messages_max` messages and `bytes_max` bytes.
    pub(super) fn new(messages_max: usize, bytes_max: usize) -> Self {
        Self {
            messages: VecDeque::new(),
            bytes: 0,
            messages_max,
            bytes_max,
        }
    }

    /// Appends `message` of `bytes` bytes, or gives it back if either bound would be exceeded.
    /// A leadership hand-off message ([`RaftMessage::is_hand_off`]) is appended even to a
    /// full queue: there are only a few, and losing one turns a hand-off into an election.
    pub(super) fn push(&mut self, message: RaftMessage, bytes: usize) -> Result<(), RaftMessage> {
        let full = self.messages.len() >= self.messages_max
            || self.bytes.saturating_add(bytes) > self.bytes_max;
        let full = full && !message.is_hand_off();
        if full {
            return Err(message);
        }
        self.bytes += bytes;
        self.messages.push_back((message, bytes));
        Ok(())
    }

    /// Takes messages from the front, in order, while their total stays within `budget_bytes`.
    /// Always takes at least one message when the queue is not empty, since every message was
    /// checked against the frame budget when it was sent.
    pub(super) fn take_batch(&mut self, budget_bytes: usize) -> Vec<RaftMessage> {
        let mut taken_bytes = 0;
        let mut batch = Vec::new();
        while let Some((_, bytes)) = self.messages.front() {
            if !batch.is_empty() && taken_bytes + bytes > budget_bytes {
                break;
            }
            let (message, bytes) = self.messages.pop_front().expect("front exists");
            taken_bytes += bytes;
            self.bytes -= bytes;
            batch.push(message);
        }
        batch
    }

    /// Messages queued.
    pub(super) fn len(&self) -> usize {
        self.messages.len()
    }

    /// Bytes queued.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(group_id: u64) -> RaftMessage {
        RaftMessage {
            group_id,
            ..Default::default()
        }
    }

    #[test]
    fn refuses_beyond_either_bound() {
        let mut queue = PeerQueue::new(3, 100);
        assert!(queue.push(message(1), 40).is_ok());
        assert!(queue.push(message(2), 40).is_ok());
        assert!(queue.push(message(3), 40).is_err(), "bytes bound");
        assert!(queue.push(message(3), 20).is_ok());
        assert!(queue.push(message(4), 0).is_err(), "message bound");
        assert_eq!((queue.len(), queue.bytes()), (3, 100));
    }

    #[test]
    fn a_full_queue_still_takes_a_leadership_hand_off() {
        use crate::proto::raft_message::Body;
        let mut queue = PeerQueue::new(1, 100);
        queue.push(message(1), 100).unwrap();
        let timeout_now = RaftMessage {
            body: Some(Body::TimeoutNow(Default::default())),
            ..message(2)
        };
        assert!(queue.push(timeout_now, 10).is_ok());
        let vote = |leadership_transfer| RaftMessage {
            body: Some(Body::RequestVote(crate::proto::RequestVote {
                leadership_transfer,
                ..Default::default()
            })),
            ..message(3)
        };
        assert!(
            queue.push(vote(false), 10).is_err(),
            "an ordinary vote is bounded"
        );
        assert!(queue.push(vote(true), 10).is_ok());
        assert_eq!((queue.len(), queue.bytes()), (3, 120));
    }

    #[test]
    fn batches_keep_order_and_respect_the_budget() {
        let mut queue = PeerQueue::new(10, 1_000);
        for group in 0..5 {
            queue.push(message(group), 30).unwrap();
        }
        let first: Vec<u64> = queue.take_batch(70).iter().map(|m| m.group_id).collect();
        assert_eq!(first, [0, 1]);
        let rest: Vec<u64> = queue.take_batch(1_000).iter().map(|m| m.group_id).collect();
        assert_eq!(rest, [2, 3, 4]);
        assert_eq!((queue.len(), queue.bytes()), (0, 0));
        assert!(queue.take_batch(1_000).is_empty());
    }

    #[test]
    fn an_oversized_front_message_still_goes_out_alone() {
        let mut queue = PeerQueue::new(10, 1_000);
        queue.push(message(1), 500).unwrap();
        queue.push(message(2), 10).unwrap();
        assert_eq!(queue.take_batch(100).len(), 1);
    }
}
