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

use lock_core::raw::KeyNews;
use tokio::time::Instant;

/// How long a "held" answer stands in for the server's.
pub(crate) const FRESH: Duration = Duration::from_millis(100);

/// Keys kept at most; past that, answers older than [`FRESH`] are dropped.
const PRUNE_AT: usize = 1024;

/// See the [module docs](self).
#[derive(Debug, Default)]
pub(crate) struct Seen {
    map: Mutex<HashMap<Arc<str>, KeyNews, foldhash::fast::RandomState>>,
}

impl Seen {
    fn map(&self) -> MutexGuard<'_, HashMap<Arc<str>, KeyNews, foldhash::fast::RandomState>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The server, asked at `asked`, said `key` is held by `holder` for `left` more. An answer
    /// to a question asked before this provider's last release of the key is dropped: the
    /// release may have come after it, and the waiter it woke must ask the server.
    pub(crate) fn held(&self, key: &Arc<str>, holder: &str, left: Duration, asked: Instant) {
        self.pruned().entry(key.clone()).or_default().held(asked, holder, left);
    }

    /// This provider released `key`: what was heard of it before no longer stands, nor does
    /// an answer to a question asked before now.
    pub(crate) fn forget(&self, key: &str) {
        let mut map = self.pruned();
        match map.get_mut(key) {
            Some(k) => k.released(),
            None => map.entry(key.into()).or_default().released(),
        }
    }

    /// The map, without the keys whose news is older than [`FRESH`] once it has grown to
    /// [`PRUNE_AT`] (an answer asked before such a release would be stale by now anyway).
    fn pruned(&self) -> MutexGuard<'_, HashMap<Arc<str>, KeyNews, foldhash::fast::RandomState>> {
        let mut map = self.map();
        if map.len() >= PRUNE_AT {
            map.retain(|_, k| k.is_recent(FRESH));
        }
        map
    }

    /// The holder of `key` and its lease left, as heard less than [`FRESH`] ago.
    pub(crate) fn fresh(&self, key: &str) -> Option<(String, Duration)> {
        self.map().get(key)?.heard()?.fresh(FRESH)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_now(s: &Seen, k: &Arc<str>, holder: &str, left: Duration) {
        s.held(k, holder, left, Instant::now());
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_stands_in_while_fresh_and_until_forgotten() {
        let s = Seen::default();
        let k: Arc<str> = "k".into();
        assert_eq!(s.fresh("k"), None);
        held_now(&s, &k, "alice", Duration::from_secs(30));
        assert_eq!(s.fresh("k").map(|(h, _)| h).as_deref(), Some("alice"));
        tokio::time::advance(FRESH).await;
        assert_eq!(s.fresh("k"), None, "stale");
        held_now(&s, &k, "alice", Duration::from_secs(30));
        s.forget("k");
        assert_eq!(s.fresh("k"), None, "forgotten on a local release");
        tokio::time::advance(Duration::from_millis(1)).await;
        held_now(&s, &k, "alice", Duration::from_millis(10));
        tokio::time::advance(Duration::from_millis(10)).await;
        assert_eq!(s.fresh("k"), None, "the lease ran out");
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_asked_before_a_local_release_is_dropped() {
        let s = Seen::default();
        let k: Arc<str> = "k".into();
        held_now(&s, &k, "alice", Duration::from_secs(30));
        let asked = Instant::now();
        tokio::time::advance(Duration::from_millis(1)).await;
        s.forget("k");
        s.held(&k, "alice", Duration::from_secs(30), asked);
        assert_eq!(s.fresh("k"), None, "the woken waiter must ask the server");
        tokio::time::advance(Duration::from_millis(1)).await;
        held_now(&s, &k, "bob", Duration::from_secs(30));
        assert_eq!(s.fresh("k").map(|(h, _)| h).as_deref(), Some("bob"), "asked after the release");
    }

    #[tokio::test(start_paused = true)]
    async fn stale_answers_are_pruned() {
        let s = Seen::default();
        for i in 0..PRUNE_AT {
            held_now(&s, &Arc::from(format!("k{i}")), "h", Duration::from_secs(30));
        }
        tokio::time::advance(FRESH).await;
        held_now(&s, &Arc::from("last"), "h", Duration::from_secs(30));
        assert_eq!(s.map().len(), 1);
    }
}
