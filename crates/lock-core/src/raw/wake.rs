//! Per-key wake-up signals for the waiters of one process.
//!
//! A backend that learns of a release (a release through the same provider, say) calls
//! [`Wakers::wake_one`]; a waiter passes [`Wakers::signal`] for its key to
//! [`acquire_with_backoff`](crate::raw::acquire_with_backoff), which retries at once when woken.
//! Waking one waiter per release, not all of them, avoids a thundering herd; the woken waiter
//! that loses the race simply waits again, and the timer of the wait loop covers any wake-up
//! that never comes.

use std::collections::HashMap;

use foldhash::fast::RandomState;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;

/// Wake-up signals by key; an entry lives as long as some waiter holds its signal.
#[derive(Debug, Default)]
pub struct Wakers {
    map: Mutex<HashMap<Arc<str>, Weak<Notify>, RandomState>>,
}

impl Wakers {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Weak<Notify>, RandomState>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The signal of `key`, shared by every local waiter of that key. Hold it while waiting.
    pub fn signal(&self, key: &Arc<str>) -> Arc<Notify> {
        let mut map = self.map();
        if let Some(n) = map.get(key).and_then(Weak::upgrade) {
            return n;
        }
        let n = Arc::new(Notify::new());
        if map.len() >= 64 && map.len().is_power_of_two() {
            map.retain(|_, w| w.strong_count() > 0);
        }
        map.insert(key.clone(), Arc::downgrade(&n));
        n
    }

    /// Wakes one local waiter of `key`, if there is any.
    pub fn wake_one(&self, key: &str) {
        let signal = self.map().get(key).and_then(Weak::upgrade);
        if let Some(n) = signal {
            n.notify_one();
        }
    }

    /// Wakes every local waiter of every key (on close, so they see `Closed` at once).
    pub fn wake_all(&self) {
        let live: Vec<_> = self.map().values().filter_map(Weak::upgrade).collect();
        for n in live {
            n.notify_waiters();
        }
    }

    /// Keys with at least one live signal (for tests and diagnostics).
    pub fn waiting_keys(&self) -> usize {
        self.map().values().filter(|w| w.strong_count() > 0).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn wakes_one_waiter_of_the_right_key() {
        let w = Arc::new(Wakers::new());
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let sa = w.signal(&a);
        let sb = w.signal(&b);
        assert!(Arc::ptr_eq(&sa, &w.signal(&a)), "one signal per key");
        let fa = sa.notified();
        let fb = sb.notified();
        tokio::pin!(fa, fb);
        fa.as_mut().enable();
        fb.as_mut().enable();
        w.wake_one("a");
        tokio::time::timeout(Duration::from_secs(5), fa).await.expect("a woken");
        assert!(tokio::time::timeout(Duration::from_millis(50), fb).await.is_err(), "b not woken");
    }

    #[tokio::test]
    async fn entries_go_away_with_their_waiters() {
        let w = Wakers::new();
        for i in 0..200 {
            let k: Arc<str> = format!("k{i}").into();
            drop(w.signal(&k));
        }
        assert_eq!(w.waiting_keys(), 0);
        assert!(w.map().len() < 200, "dead entries are pruned");
        w.wake_one("k1"); // no waiter: nothing happens
    }
}
