//! The background cleanup loop that backends with expiring rows or entries share.

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::task::JoinHandle;

/// Runs `pass` every `every` (the first time one period from now) for as long as `target`
/// is alive and `pass` returns `true`. Holding only a weak reference, the loop never keeps a
/// dropped provider alive. Needs a tokio runtime.
pub fn spawn_reaper<T, F, Fut>(target: Weak<T>, every: Duration, pass: F) -> JoinHandle<()>
where
    T: Send + Sync + 'static,
    F: Fn(Arc<T>) -> Fut + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(target) = target.upgrade() else { return };
            if !pass(target).await {
                return;
            }
        }
    })
}

/// Reports `n` expired locks that the backend `provider` cleaned up (a reaper pass, or an
/// expired lease ended by the next acquisition) as `distlock_expired_cleaned_total`.
pub fn report_expired_cleaned(provider: &'static str, n: u64) {
    if n > 0 {
        metrics::counter!(crate::layer::metrics::EXPIRED_CLEANED_TOTAL, "provider" => provider).increment(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn runs_every_period_and_stops_with_its_target() {
        let target = Arc::new(AtomicU32::new(0));
        let task = spawn_reaper(Arc::downgrade(&target), Duration::from_secs(10), |t| async move {
            t.fetch_add(1, Ordering::SeqCst);
            true
        });
        tokio::time::sleep(Duration::from_secs(35)).await;
        assert_eq!(target.load(Ordering::SeqCst), 3);
        drop(target);
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert!(task.is_finished(), "the loop ends once its target is gone");
    }

    #[tokio::test(start_paused = true)]
    async fn a_pass_returning_false_ends_the_loop() {
        let target = Arc::new(());
        let task = spawn_reaper(Arc::downgrade(&target), Duration::from_secs(1), |_| async { false });
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(task.is_finished());
    }
}
