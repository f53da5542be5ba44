//! Counting the transport's tasks, so that shutdown can wait until the last one has exited.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// Spawns tasks and tells when all of them have finished. A task counts as live from the moment
/// it is spawned until its future is dropped (completed, cancelled or panicked).
#[derive(Debug, Clone, Default)]
pub(super) struct TaskTracker {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    live: AtomicUsize,
    idle: Notify,
}

/// Decrements the live count when the task's future is dropped, whatever the reason.
struct Guard(Arc<Inner>);

impl Drop for Guard {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl TaskTracker {
    /// Spawns `future` on the current tokio runtime as a tracked task.
    pub(super) fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.inner.live.fetch_add(1, Ordering::AcqRel);
        let guard = Guard(self.inner.clone());
        tokio::spawn(async move {
            let _guard = guard;
            future.await;
        });
    }

    /// Tasks spawned and not yet finished.
    pub(super) fn live(&self) -> usize {
        self.inner.live.load(Ordering::Acquire)
    }

    /// Completes once no task is live.
    pub(super) async fn wait_idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            tokio::pin!(notified);
            // Registering before checking the count means a task that finishes in between
            // still wakes this waiter.
            notified.as_mut().enable();
            if self.live() == 0 {
                return;
            }
            notified.await;
        }
    }
}
