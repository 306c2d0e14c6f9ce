//! What this provider's waiters last heard from the server about the keys they wait for, so
//! that most of their timer retries are answered here instead of by a statement.
//!
//! MySQL has no notifications: a release in another process reaches a waiter only through its
//! own retries, and a release through this provider wakes one local waiter. With many waiters
//! on one key, retries that all reach the server take the pool's connections from the holder's
//! release and the woken waiter, and every hand-over gets slower the more waiters there are.
//! So a retry is answered from a "held by H for T more" that some waiter of this provider
//! heard less than [`FRESH`] ago: a key costs at most about one statement per [`FRESH`] per
//! provider while it stays held, and a release elsewhere is noticed at most [`FRESH`] later
//! than before. A release through this provider forgets the key before it wakes a waiter, so
//! the woken waiter asks the server. Only a hint: nothing is granted without the server.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// How long a "held" answer stands in for the server's.
pub(crate) const FRESH: Duration = Duration::from_millis(100);

/// Keys kept at most; past that, answers older than [`FRESH`] are dropped.
const PRUNE_AT: usize = 1024;

/// See the [module docs](self).
#[derive(Debug, Default)]
pub(crate) struct Seen {
    /// Key -> when it was heard, the holder, when the holder's lease ends.
    map: Mutex<HashMap<Arc<str>, (Instant, String, Instant)>>,
}

impl Seen {
    fn map(&self) -> MutexGuard<'_, HashMap<Arc<str>, (Instant, String, Instant)>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The server said `key` is held by `holder` for `left` more.
    pub(crate) fn held(&self, key: &Arc<str>, holder: &str, left: Duration) {
        let now = Instant::now();
        let mut map = self.map();
        if map.len() >= PRUNE_AT {
            map.retain(|_, (at, _, _)| now.duration_since(*at) < FRESH);
        }
        map.insert(key.clone(), (now, holder.to_owned(), now + left));
    }

    /// Forgets `key` (this provider released it).
    pub(crate) fn forget(&self, key: &str) {
        self.map().remove(key);
    }

    /// The holder of `key` and its lease left, as heard less than [`FRESH`] ago.
    pub(crate) fn fresh(&self, key: &str) -> Option<(String, Duration)> {
        let now = Instant::now();
        let map = self.map();
        let (at, holder, until) = map.get(key)?;
        (now.duration_since(*at) < FRESH && *until > now).then(|| (holder.clone(), *until - now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_answer_stands_in_while_fresh_and_until_forgotten() {
        let s = Seen::default();
        let k: Arc<str> = "k".into();
        assert_eq!(s.fresh("k"), None);
        s.held(&k, "alice", Duration::from_secs(30));
        assert_eq!(s.fresh("k").map(|(h, _)| h).as_deref(), Some("alice"));
        tokio::time::advance(FRESH).await;
        assert_eq!(s.fresh("k"), None, "stale");
        s.held(&k, "alice", Duration::from_secs(30));
        s.forget("k");
        assert_eq!(s.fresh("k"), None, "forgotten on a local release");
        s.held(&k, "alice", Duration::from_millis(10));
        tokio::time::advance(Duration::from_millis(10)).await;
        assert_eq!(s.fresh("k"), None, "the lease ran out");
    }

    #[tokio::test(start_paused = true)]
    async fn stale_answers_are_pruned() {
        let s = Seen::default();
        for i in 0..PRUNE_AT {
            s.held(&Arc::from(format!("k{i}")), "h", Duration::from_secs(30));
        }
        tokio::time::advance(FRESH).await;
        s.held(&Arc::from("last"), "h", Duration::from_secs(30));
        assert_eq!(s.map().len(), 1);
    }
}
