//! Cancel safety for server round trips: an acquisition whose caller went away is undone.
//!
//! When a `lock` future is dropped while its request is on the wire, the server may still
//! grant the lock, and nobody would ever release it before its TTL. [`finish_on_drop`] wraps
//! the request: its caller polls it in place (no task, no extra hop), and only if the caller
//! drops it unfinished does the rest of it run in a task of its own, handing its outcome to a
//! clean-up closure. [`attempt_detached`] is the common case: an acquisition that completes
//! for nobody is released by the backend's [`Undo`].
//!
//! A request [`counted`](FinishOnDrop::counted) in the provider's [`Inflight`] counts as work
//! under way from its start until it completes in place or, dropped, until its clean-up has
//! run; the provider's `close` waits for that before it closes its connections.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::error::Result;
use crate::lease::Lease;
use crate::raw::inflight::{Inflight, InflightGuard};
use crate::raw::wait::Attempt;

/// Releases one acquisition nobody will use. It must compare owner **and** fencing token, so
/// that it can never release a later acquisition of the same key.
pub type Undo = Arc<dyn Fn(Lease) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type Orphaned<T> = Box<dyn FnOnce(T) -> BoxFuture<()> + Send>;

/// A future polled in place by its caller; if dropped before it completes, it is finished in a
/// task of its own and its output goes to the clean-up closure. See [`finish_on_drop`].
#[must_use = "a future does nothing unless polled"]
pub struct FinishOnDrop<T: Send + 'static> {
    fut: Option<BoxFuture<T>>,
    orphaned: Option<Orphaned<T>>,
    counted: Option<InflightGuard>,
}

impl<T: Send + 'static> std::fmt::Debug for FinishOnDrop<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FinishOnDrop").field("finished", &self.fut.is_none()).finish()
    }
}

/// Wraps `fut` so that, if the caller drops it unfinished, it still runs to completion (in a
/// spawned task) and `orphaned` receives its output, e.g. to release a lock nobody will use.
/// The closure is dropped unused when the caller gets the output itself.
///
/// Without a tokio runtime at drop time, nothing can finish the request: a warning is logged
/// and a lock it may have got expires with its TTL.
pub fn finish_on_drop<F, O, OF>(fut: F, orphaned: O) -> FinishOnDrop<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
    O: FnOnce(F::Output) -> OF + Send + 'static,
    OF: Future<Output = ()> + Send + 'static,
{
    FinishOnDrop {
        fut: Some(Box::pin(fut)),
        orphaned: Some(Box::new(move |out| Box::pin(orphaned(out)))),
        counted: None,
    }
}

impl<T: Send + 'static> FinishOnDrop<T> {
    /// Counts the request in `inflight` until it completes in place or, if its caller drops
    /// it, until the clean-up closure has run.
    pub fn counted(mut self, inflight: &Inflight) -> Self {
        self.counted = Some(inflight.enter());
        self
    }
}

impl<T: Send + 'static> Future for FinishOnDrop<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let this = self.get_mut();
        let fut = this.fut.as_mut().expect("FinishOnDrop polled after completion");
        let out = std::task::ready!(fut.as_mut().poll(cx));
        this.fut = None;
        this.orphaned = None;
        this.counted = None;
        Poll::Ready(out)
    }
}

impl<T: Send + 'static> Drop for FinishOnDrop<T> {
    fn drop(&mut self) {
        let (Some(fut), Some(orphaned)) = (self.fut.take(), self.orphaned.take()) else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let counted = self.counted.take();
                rt.spawn(async move {
                    orphaned(fut.await).await;
                    drop(counted);
                });
            }
            Err(_) => tracing::warn!(
                "a lock request was abandoned outside a runtime; a lock it got expires with its TTL"
            ),
        }
    }
}

/// Runs one acquisition attempt; if the caller drops it unfinished and it then acquires,
/// `undo` releases exactly that acquisition.
pub fn attempt_detached<F>(attempt: F, undo: Undo) -> FinishOnDrop<Result<Attempt>>
where
    F: Future<Output = Result<Attempt>> + Send + 'static,
{
    finish_on_drop(attempt, move |outcome| async move {
        if let Ok(Attempt::Acquired(lease)) = outcome {
            tracing::debug!(key = &*lease.key, "undoing an acquisition whose caller went away");
            undo(lease).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::FencingToken;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;
    use tokio::time::Instant;

    fn lease(token: u64) -> Lease {
        Lease::counted_from(Instant::now(), "k", "o", FencingToken(token), Duration::from_secs(1), 1)
    }

    fn recording_undo(seen: Arc<AtomicU64>) -> Undo {
        Arc::new(move |l: Lease| {
            let seen = seen.clone();
            Box::pin(async move {
                seen.store(l.token.0, Ordering::SeqCst);
            })
        })
    }

    #[tokio::test]
    async fn a_completed_attempt_is_returned_and_not_undone() {
        let seen = Arc::new(AtomicU64::new(0));
        let out =
            attempt_detached(async { Ok(Attempt::Acquired(lease(7))) }, recording_undo(seen.clone())).await;
        assert!(matches!(out, Ok(Attempt::Acquired(l)) if l.token == FencingToken(7)));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(seen.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn an_attempt_whose_caller_left_is_undone() {
        let seen = Arc::new(AtomicU64::new(0));
        let slow = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(Attempt::Acquired(lease(9)))
        };
        let gave_up = tokio::time::timeout(
            Duration::from_millis(5),
            attempt_detached(slow, recording_undo(seen.clone())),
        )
        .await;
        assert!(gave_up.is_err());
        let until = Instant::now() + Duration::from_secs(5);
        while seen.load(Ordering::SeqCst) == 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(seen.load(Ordering::SeqCst), 9, "the orphaned lease was released");
    }

    #[tokio::test]
    async fn a_counted_request_counts_until_its_clean_up_has_run() {
        let inflight = Inflight::new();
        let seen = Arc::new(AtomicU64::new(0));
        // Completed in place: counted while it runs, not after.
        let done = attempt_detached(async { Ok(Attempt::Acquired(lease(3))) }, recording_undo(seen.clone()))
            .counted(&inflight);
        assert_eq!(inflight.count(), 1);
        assert!(done.await.is_ok());
        assert_eq!(inflight.count(), 0);
        // Dropped: counted until the undo has run, so waiting for idle sees the undo done.
        let slow = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(Attempt::Acquired(lease(9)))
        };
        let gave_up = tokio::time::timeout(
            Duration::from_millis(5),
            attempt_detached(slow, recording_undo(seen.clone())).counted(&inflight),
        )
        .await;
        assert!(gave_up.is_err());
        assert_eq!(inflight.count(), 1, "the orphaned request is still under way");
        assert!(inflight.wait_idle(Duration::from_secs(5)).await);
        assert_eq!(seen.load(Ordering::SeqCst), 9, "idle only once the undo has run");
    }

    #[tokio::test]
    async fn a_finished_future_never_calls_its_clean_up() {
        let seen = Arc::new(AtomicU64::new(0));
        let s2 = seen.clone();
        let out = finish_on_drop(async { 5u64 }, move |v| async move { s2.store(v, Ordering::SeqCst) }).await;
        assert_eq!(out, 5);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(seen.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_busy_outcome_needs_no_undo() {
        let seen = Arc::new(AtomicU64::new(0));
        let out = attempt_detached(
            async { Ok(Attempt::Busy { holder: None, expires_in: None }) },
            recording_undo(seen.clone()),
        )
        .await
        .unwrap();
        assert!(matches!(out, Attempt::Busy { .. }));
    }
}
