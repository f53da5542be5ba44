//! Where the transport hands the messages it receives.
//!
//! Each connection's reader task calls the [`Deliver`] sink itself, once per message, in the
//! order the connection carried them. There is no channel and no task between the socket and
//! the receiver: every hand-off between tasks costs a wake-up (often of another worker thread,
//! a futex wake and a context switch), and a Raft commit crosses this path twice.

use std::ops::ControlFlow;

use crate::proto::RaftMessage;

/// Takes the messages peers send to this node.
///
/// [`Deliver::deliver`] runs on a connection's reader task, so it must not block or wait:
/// while it runs, that connection reads nothing. A receiver that cannot take a message now
/// drops it (Raft retransmits whatever is lost), just as a sender drops what does not fit in
/// a peer's queue.
pub trait Deliver: Send + Sync + 'static {
    /// Takes one message from `message.from`, already checked to come from that peer and to
    /// be addressed to this node. [`ControlFlow::Break`] says the receiver is gone for good:
    /// the connection then closes, as a crashed node's would.
    fn deliver(&self, message: RaftMessage) -> ControlFlow<()>;
}

impl<F> Deliver for F
where
    F: Fn(RaftMessage) -> ControlFlow<()> + Send + Sync + 'static,
{
    fn deliver(&self, message: RaftMessage) -> ControlFlow<()> {
        self(message)
    }
}
