//! [`Inflight`]: the work a provider still has under way for callers that may have left, so
//! that `close` can let it finish before it closes the connections.
//!
//! A cancel-safe backend finishes a request its caller dropped in the background and gives
//! back a lock the request was granted (see [`detach`](super::detach)). If `close` shut the
//! connections under that work, the lock would stay until its TTL ran out. A backend counts
//! such work with a guard ([`Inflight::enter`], or [`Inflight::spawn`] for a task of its own)
//! and waits, boundedly, for the count to reach zero ([`Inflight::wait_idle`]) before it
//! closes its clients.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

/// Counts work under way; cloning shares the count.
#[derive(Clone, Debug, Default)]
pub struct Inflight(Arc<State>);

#[derive(Debug, Default)]
struct State {
    count: AtomicUsize,
    idle: Notify,
}

/// One piece of work under way: counted until dropped.
#[derive(Debug)]
#[must_use = "the work counts as under way only while the guard lives"]
pub struct InflightGuard(Arc<State>);

impl Inflight {
    /// A new, idle count.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one piece of work until the guard is dropped.
    pub fn enter(&self) -> InflightGuard {
        self.0.count.fetch_add(1, Ordering::AcqRel);
        InflightGuard(self.0.clone())
    }

    /// Runs `work` in a task of its own on the current runtime, counted until it ends (or the
    /// runtime drops it). Without a runtime nothing runs and `false` is returned: the caller's
    /// fallback (a lease that runs out, a row the reaper deletes) applies.
    pub fn spawn<F>(&self, work: F) -> bool
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        let guard = self.enter();
        runtime.spawn(async move {
            work.await;
            drop(guard);
        });
        true
    }

    /// How many pieces of work are under way.
    pub fn count(&self) -> usize {
        self.0.count.load(Ordering::Acquire)
    }

    /// Waits until no work is under way, at most `bound`; `true` if it got there.
    pub async fn wait_idle(&self, bound: Duration) -> bool {
        tokio::time::timeout(bound, async {
            loop {
                let idle = self.0.idle.notified();
                tokio::pin!(idle);
                idle.as_mut().enable();
                if self.count() == 0 {
                    return;
                }
                idle.await;
            }
        })
        .await
        .is_ok()
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_for_the_last_guard_and_no_longer() {
        let inflight = Inflight::new();
        assert!(inflight.wait_idle(Duration::from_secs(1)).await, "idle from the start");

        let (a, b) = (inflight.enter(), inflight.enter());
        let waiter = tokio::spawn({
            let inflight = inflight.clone();
            async move { inflight.wait_idle(Duration::from_secs(10)).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(a);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiter.is_finished(), "one piece of work is still under way");
        drop(b);
        assert!(waiter.await.unwrap());
        assert_eq!(inflight.count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_at_the_bound() {
        let inflight = Inflight::new();
        let _stuck = inflight.enter();
        let started = tokio::time::Instant::now();
        assert!(!inflight.wait_idle(Duration::from_secs(3)).await);
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn spawned_work_counts_until_it_ends() {
        let inflight = Inflight::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        assert!(inflight.spawn(async move {
            let _ = rx.await;
        }));
        tokio::task::yield_now().await;
        assert_eq!(inflight.count(), 1);
        assert!(!inflight.wait_idle(Duration::from_secs(1)).await);
        tx.send(()).unwrap();
        assert!(inflight.wait_idle(Duration::from_secs(1)).await);
    }
}
