//! This provider's waiters, by key and in arrival order, and what the server last said about
//! each key they wait for.
//!
//! A release wakes one waiter of its key (the first not yet woken): a release through this
//! provider directly, a release elsewhere through the listener. A waiter's attempts between
//! wake-ups, the fallback timer of the shared wait loop, are answered here while the listener
//! is connected and some waiter of this provider heard "held" from the server less than
//! [`FRESH`] ago: then only woken waiters (and the first attempt of each call) reach the server.
//! A wake-up that never comes (a lost notification) therefore costs at most [`FRESH`] more
//! before the timer's attempts go to the server again, never correctness: nothing is granted
//! without the server.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// How long a "held" answer stands in for the server's, for timer attempts.
pub(crate) const FRESH: Duration = Duration::from_millis(100);

/// One waiting call.
#[derive(Debug, Default)]
pub(crate) struct Waiter {
    /// Its own wake-up signal, for the wait loop.
    pub(crate) notify: Notify,
    /// Set by a wake-up, taken by the waiter's next attempt.
    woken: AtomicBool,
}

impl Waiter {
    /// Whether a wake-up arrived since the last call (and takes it).
    pub(crate) fn take_wake(&self) -> bool {
        self.woken.swap(false, Ordering::AcqRel)
    }
}

#[derive(Debug, Default)]
struct Key {
    queue: VecDeque<Arc<Waiter>>,
    /// The last time a waiter here heard the key was held, with the holder and when its lease
    /// ends.
    held: Option<(Instant, String, Instant)>,
}

/// The waiters of one provider.
#[derive(Debug, Default)]
pub(crate) struct Waiters {
    map: Mutex<HashMap<Arc<str>, Key>>,
    /// The listener is connected: releases elsewhere reach this provider.
    pub(crate) listening: AtomicBool,
}

/// A waiter's place in the queue of its key; leaving it (drop) passes on a wake-up it did not
/// use.
pub(crate) struct Registration<'w> {
    waiters: &'w Waiters,
    key: Arc<str>,
    pub(crate) waiter: Arc<Waiter>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let unused = {
            let mut map = self.waiters.map();
            if let Some(k) = map.get_mut(&self.key) {
                k.queue.retain(|w| !Arc::ptr_eq(w, &self.waiter));
                if k.queue.is_empty() {
                    map.remove(&self.key);
                }
            }
            self.waiter.take_wake()
        };
        if unused {
            self.waiters.wake_one(&self.key);
        }
    }
}

impl Waiters {
    fn map(&self) -> MutexGuard<'_, HashMap<Arc<str>, Key>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Joins the queue of `key`.
    pub(crate) fn join(&self, key: &Arc<str>) -> Registration<'_> {
        let waiter = Arc::new(Waiter::default());
        self.map().entry(key.clone()).or_default().queue.push_back(waiter.clone());
        Registration { waiters: self, key: key.clone(), waiter }
    }

    /// How many calls of this provider wait for `key`.
    pub(crate) fn count(&self, key: &str) -> usize {
        self.map().get(key).map_or(0, |k| k.queue.len())
    }

    /// Wakes the first waiter of `key` not woken yet, if any.
    pub(crate) fn wake_one(&self, key: &str) {
        let map = self.map();
        let Some(k) = map.get(key) else { return };
        if let Some(w) = k.queue.iter().find(|w| !w.woken.load(Ordering::Acquire)) {
            w.woken.store(true, Ordering::Release);
            w.notify.notify_one();
        }
    }

    /// Wakes every waiter and forgets what the server said (after the listener lost its
    /// connection, or on close).
    pub(crate) fn wake_all(&self) {
        let mut map = self.map();
        for k in map.values_mut() {
            k.held = None;
            for w in &k.queue {
                w.woken.store(true, Ordering::Release);
                w.notify.notify_one();
            }
        }
    }

    /// The server said `key` is held by `holder` for `left` more (an empty `holder`: this
    /// provider hands it to its next waiter).
    pub(crate) fn saw_held(&self, key: &str, holder: &str, left: Duration) {
        let now = Instant::now();
        if let Some(k) = self.map().get_mut(key) {
            k.held = Some((now, holder.to_owned(), now + left));
        }
    }

    /// The holder and lease left of `key` as the server said less than [`FRESH`] ago, while
    /// the listener is connected; `None` when an attempt must ask the server.
    pub(crate) fn known_held(&self, key: &str) -> Option<(String, Duration)> {
        if !self.listening.load(Ordering::Acquire) {
            return None;
        }
        let now = Instant::now();
        let map = self.map();
        let (at, holder, until) = map.get(key)?.held.as_ref()?;
        (now.duration_since(*at) < FRESH && *until > now).then(|| (holder.clone(), *until - now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wakes_waiters_in_order_and_passes_on_an_unused_wake() {
        let w = Waiters::default();
        let key: Arc<str> = "k".into();
        let a = w.join(&key);
        let b = w.join(&key);
        assert_eq!(w.count("k"), 2);
        w.wake_one("k");
        assert!(a.waiter.take_wake() && !b.waiter.take_wake(), "the first waiter first");
        w.wake_one("k");
        a.waiter.woken.store(true, Ordering::Release); // woken again, then it leaves
        drop(a);
        assert!(b.waiter.take_wake(), "the wake-up a leaving waiter did not use goes on");
        drop(b);
        assert_eq!(w.count("k"), 0);
        w.wake_one("k"); // nobody waits: nothing happens
    }

    #[tokio::test]
    async fn held_answers_stand_in_only_while_fresh_and_listening() {
        let w = Waiters::default();
        let key: Arc<str> = "k".into();
        let _a = w.join(&key);
        w.saw_held("k", "alice", Duration::from_secs(30));
        assert_eq!(w.known_held("k"), None, "not listening");
        w.listening.store(true, Ordering::Release);
        assert_eq!(w.known_held("k").map(|(h, _)| h).as_deref(), Some("alice"));
        w.wake_all();
        assert_eq!(w.known_held("k"), None, "forgotten when wake-ups may have been lost");
    }
}
