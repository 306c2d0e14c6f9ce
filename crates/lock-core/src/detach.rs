//! Cancel safety for server round trips: an acquisition whose caller went away is undone.
//!
//! When a `lock` future is dropped while its request is on the wire, the server may still
//! grant the lock, and nobody would ever release it before its TTL. [`attempt_detached`]
//! runs the attempt in its own task, so the request always completes; if the caller is gone
//! by then and the attempt acquired, the backend's `undo` releases exactly that acquisition.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::error::{LockError, Result};
use crate::lease::Lease;
use crate::wait::Attempt;

/// Releases one acquisition nobody will use. It must compare owner **and** fencing token, so
/// that it can never release a later acquisition of the same key.
pub type Undo = Arc<dyn Fn(Lease) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Holds the receiving end; on drop, a result that arrived but was never read is undone.
struct Pending {
    rx: oneshot::Receiver<Result<Attempt>>,
    undo: Undo,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.rx.close();
        if let Ok(Ok(Attempt::Acquired(lease))) = self.rx.try_recv() {
            tracing::debug!(key = &*lease.key, "undoing an acquisition whose caller went away");
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn((self.undo)(lease));
            }
        }
    }
}

/// Runs `attempt` to completion in a task of its own and returns its outcome. If the caller
/// drops the returned future first and the attempt acquired, `undo` runs on the lease.
///
/// Needs a tokio runtime (it spawns); a panicking attempt is reported as
/// [`LockError::Backend`].
pub async fn attempt_detached<F>(attempt: F, undo: Undo) -> Result<Attempt>
where
    F: Future<Output = Result<Attempt>> + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let task_undo = undo.clone();
    tokio::spawn(async move {
        let outcome = attempt.await;
        if let Err(Ok(Attempt::Acquired(lease))) = tx.send(outcome) {
            // The caller is gone and never saw this lease.
            task_undo(lease).await;
        }
    });
    let mut pending = Pending { rx, undo };
    match (&mut pending.rx).await {
        Ok(outcome) => outcome,
        Err(_) => Err(LockError::backend("detach", "lock attempt task ended without an outcome")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::FencingToken;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;
    use tokio::time::Instant;

    fn lease(token: u64) -> Lease {
        Lease {
            key: "k".into(),
            owner: "o".into(),
            token: FencingToken(token),
            ttl: Duration::from_secs(1),
            valid_until: Instant::now() + Duration::from_secs(1),
            depth: 1,
        }
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
