//! One shutdown for everything a daemon starts: a signal every loop selects on, and a
//! tracker of the tasks that must end before shutdown is complete (the pattern of
//! mini-redis's `shutdown.rs`, on `tokio_util`'s token and tracker).
//!
//! It owns only the signal and the count of live tasks. It does not decide the order in
//! which the parts of a node stop (the daemon does) nor how each loop winds down.
//!
//! ```text
//!   Shutdown::signal() ──► every clone's signalled() completes ──► loops break
//!   Shutdown::spawn(task) … task ends ──► Shutdown::wait() completes after the last one
//! ```

use std::future::Future;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The shutdown signal and the tasks that wait on it. Cheap to clone; every clone shares
/// the same signal and the same tracker.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    signal: CancellationToken,
    tasks: TaskTracker,
}

impl Shutdown {
    /// A signal not yet given, with no task tracked.
    pub fn new() -> Self {
        Self::default()
    }

    /// Gives the signal: every [`Self::signalled`] completes, now and later. Idempotent.
    pub fn signal(&self) {
        self.signal.cancel();
    }

    /// Whether the signal has been given.
    pub fn is_signalled(&self) -> bool {
        self.signal.is_cancelled()
    }

    /// Completes once the signal has been given; every long-running loop selects on it.
    pub async fn signalled(&self) {
        self.signal.cancelled().await;
    }

    /// Spawns `task` on the current runtime and tracks it: [`Self::wait`] does not complete
    /// while it runs. Tasks may still be spawned after the signal (a request already read
    /// gets its answer); they are waited for too.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(task)
    }

    /// Tasks spawned through this shutdown that have not ended yet.
    pub fn live_tasks(&self) -> usize {
        self.tasks.len()
    }

    /// Waits until every tracked task has ended. Call after [`Self::signal`]: until then the
    /// loops that select on it keep running.
    pub async fn wait(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_completes_only_after_the_last_tracked_task() {
        let shutdown = Shutdown::new();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let looping = shutdown.clone();
        shutdown.spawn(async move { looping.signalled().await });
        // A task that, like a connection's last answer, outlives the signal.
        shutdown.spawn(async move {
            let _ = released.await;
        });
        shutdown.signal();
        assert!(shutdown.is_signalled());
        let mut wait = std::pin::pin!(shutdown.wait());
        for _ in 0..10 {
            assert!(futures::poll!(wait.as_mut()).is_pending());
            tokio::task::yield_now().await;
        }
        assert!(shutdown.live_tasks() >= 1);
        release.send(()).unwrap();
        wait.await;
        assert_eq!(shutdown.live_tasks(), 0);
    }
}
