//! This provider's waiters, by key and in arrival order, and what the server last said about
//! each key they wait for.
//!
//! A release wakes one waiter of its key (the first not yet woken): a release through this
//! provider directly, a release elsewhere through the listener. A release through this
//! provider can do better than wake it: **hand the lock over** in its own statement (see
//! `Inner::release`), and [`grant`](Waiter::grant) the waiter the lease, which its next
//! attempt takes without asking the server. A granted lease that its waiter does not take (the
//! call timed out or was dropped meanwhile) is undone by owner and token when the waiter
//! leaves.
//!
//! A waiter's attempts between wake-ups, the fallback timer of the shared wait loop, are
//! answered here while the listener is connected and some waiter of this provider heard "held"
//! from the server less than [`FRESH`] ago: then only woken waiters (and the first attempt of
//! each call) reach the server. A wake-up that never comes (a lost notification) therefore
//! costs at most [`FRESH`] more before the timer's attempts go to the server again, never
//! correctness: nothing is granted without the server.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use lock_core::raw::{Heard, Undo};
use lock_core::Lease;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How long a "held" answer stands in for the server's, for timer attempts.
pub(crate) const FRESH: Duration = Duration::from_millis(100);

/// One waiting call.
#[derive(Debug)]
pub(crate) struct Waiter {
    /// Its own wake-up signal, for the wait loop.
    pub(crate) notify: Notify,
    /// Set by a wake-up, taken by the waiter's next attempt.
    woken: AtomicBool,
    /// Who waits.
    pub(crate) owner: Arc<str>,
    /// The TTL it asks for.
    pub(crate) ttl: Duration,
    /// It waits for a release (not a single `try_lock` attempt): a release may hand it the lock.
    waits: bool,
    /// A lease a release handed over, until the waiter takes it or leaves.
    grant: Mutex<Grant>,
}

#[derive(Debug)]
enum Grant {
    None,
    Handed(Lease),
    /// The waiter left: a lease handed over now is nobody's.
    Gone,
}

impl Waiter {
    /// Whether a wake-up arrived since the last call (and takes it).
    pub(crate) fn take_wake(&self) -> bool {
        self.woken.swap(false, Ordering::AcqRel)
    }

    /// A lease a release of this provider handed over, if one did (taken once).
    pub(crate) fn take_grant(&self) -> Option<Lease> {
        let mut grant = self.grant.lock().unwrap_or_else(|e| e.into_inner());
        match std::mem::replace(&mut *grant, Grant::None) {
            Grant::Handed(lease) => Some(lease),
            other => {
                *grant = other;
                None
            }
        }
    }

    /// Hands `lease` (the lock, already this waiter's on the server) to the waiter and wakes
    /// it; gives it back if the waiter has left.
    pub(crate) fn grant(&self, lease: Lease) -> std::result::Result<(), Lease> {
        let mut grant = self.grant.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(*grant, Grant::Gone) {
            return Err(lease);
        }
        *grant = Grant::Handed(lease);
        drop(grant);
        self.woken.store(true, Ordering::Release);
        self.notify.notify_one();
        Ok(())
    }

    /// The waiter leaves: a lease handed over and not taken, to be undone.
    fn leave(&self) -> Option<Lease> {
        let mut grant = self.grant.lock().unwrap_or_else(|e| e.into_inner());
        match std::mem::replace(&mut *grant, Grant::Gone) {
            Grant::Handed(lease) => Some(lease),
            _ => None,
        }
    }
}

#[derive(Debug, Default)]
struct Key {
    queue: VecDeque<Arc<Waiter>>,
    /// The last time a waiter here heard the key was held, with the holder and when its lease
    /// ends.
    held: Option<Heard>,
}

/// The waiters of one provider.
#[derive(Debug, Default)]
pub(crate) struct Waiters {
    map: Mutex<HashMap<Arc<str>, Key, foldhash::fast::RandomState>>,
    /// The listener is connected: releases elsewhere reach this provider.
    pub(crate) listening: AtomicBool,
}

/// A waiter's place in the queue of its key; leaving it (drop) passes on a wake-up it did not
/// use, and undoes a lease handed over that it did not take.
pub(crate) struct Registration<'w> {
    waiters: &'w Waiters,
    key: Arc<str>,
    pub(crate) waiter: Arc<Waiter>,
    undo: Undo,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if let Some(lease) = self.waiter.leave() {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn((self.undo)(lease));
                }
                Err(_) => tracing::warn!(
                    key = &*self.key,
                    "a lock handed to a waiter that left outside a runtime expires with its TTL"
                ),
            }
        }
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
    fn map(&self) -> MutexGuard<'_, HashMap<Arc<str>, Key, foldhash::fast::RandomState>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Joins the queue of `key` for `owner`, asking `ttl`; `waits`: the call waits for
    /// releases (a release may hand it the lock). `undo` releases a lease handed over that
    /// the call did not take.
    pub(crate) fn join(
        &self,
        key: &Arc<str>,
        owner: &Arc<str>,
        ttl: Duration,
        waits: bool,
        undo: Undo,
    ) -> Registration<'_> {
        let waiter = Arc::new(Waiter {
            notify: Notify::new(),
            woken: AtomicBool::new(false),
            owner: owner.clone(),
            ttl,
            waits,
            grant: Mutex::new(Grant::None),
        });
        self.map().entry(key.clone()).or_default().queue.push_back(waiter.clone());
        Registration { waiters: self, key: key.clone(), waiter, undo }
    }

    /// The waiter a release of `key` by `owner` may hand the lock to: the first that waits,
    /// was not woken yet and holds no grant, with another owner; and whether other calls wait
    /// for the key besides it (single `try_lock` attempts do not count: they wait for nothing).
    pub(crate) fn next_in_line(&self, key: &str, owner: &str) -> Option<(Arc<Waiter>, bool)> {
        let map = self.map();
        let k = map.get(key)?;
        let next = k.queue.iter().find(|w| {
            w.waits
                && !w.woken.load(Ordering::Acquire)
                && *w.owner != *owner
                && matches!(*w.grant.lock().unwrap_or_else(|e| e.into_inner()), Grant::None)
        })?;
        Some((next.clone(), k.queue.iter().filter(|w| w.waits).count() > 1))
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
            k.held = Some(Heard::new(now, holder, left));
        }
    }

    /// The holder and lease left of `key` as the server said less than [`FRESH`] ago, while
    /// the listener is connected; `None` when an attempt must ask the server.
    pub(crate) fn known_held(&self, key: &str) -> Option<(String, Duration)> {
        if !self.listening.load(Ordering::Acquire) {
            return None;
        }
        self.map().get(key)?.held.as_ref()?.fresh(FRESH)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noop() -> Undo {
        Arc::new(|_| Box::pin(async {}))
    }

    fn join<'w>(w: &'w Waiters, key: &Arc<str>, owner: &str) -> Registration<'w> {
        w.join(key, &Arc::from(owner), Duration::from_secs(30), true, noop())
    }

    fn lease(key: &str, owner: &str, token: u64) -> Lease {
        Lease::counted_from(
            Instant::now(),
            key,
            owner,
            lock_core::FencingToken(token),
            Duration::from_secs(30),
            1,
        )
    }

    #[tokio::test]
    async fn wakes_waiters_in_order_and_passes_on_an_unused_wake() {
        let w = Waiters::default();
        let key: Arc<str> = "k".into();
        let a = join(&w, &key, "a");
        let b = join(&w, &key, "b");
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
    async fn a_lease_handed_over_is_taken_once_or_undone_when_its_waiter_left() {
        let w = Waiters::default();
        let key: Arc<str> = "k".into();
        let undone = Arc::new(Mutex::new(Vec::new()));
        let undo: Undo = {
            let undone = undone.clone();
            Arc::new(move |lease: Lease| {
                undone.lock().unwrap().push(lease.token.0);
                Box::pin(async {})
            })
        };
        let once = w.join(&key, &Arc::from("once"), Duration::from_secs(1), false, noop());
        let a = w.join(&key, &Arc::from("a"), Duration::from_secs(30), true, undo.clone());
        let b = w.join(&key, &Arc::from("b"), Duration::from_secs(30), true, undo);
        assert!(
            w.next_in_line("k", "zed").is_some_and(|(n, more)| Arc::ptr_eq(&n, &a.waiter) && more),
            "a single attempt is skipped"
        );
        assert!(
            w.next_in_line("k", "a").is_some_and(|(n, _)| Arc::ptr_eq(&n, &b.waiter)),
            "never the releasing owner"
        );

        a.waiter.grant(lease("k", "a", 7)).unwrap();
        assert!(a.waiter.take_wake(), "a grant wakes its waiter");
        assert!(
            w.next_in_line("k", "zed").is_some_and(|(n, _)| Arc::ptr_eq(&n, &b.waiter)),
            "a granted waiter is skipped"
        );
        assert_eq!(a.waiter.take_grant().map(|l| l.token.0), Some(7));
        assert_eq!(a.waiter.take_grant(), None, "taken once");
        drop(a);

        b.waiter.grant(lease("k", "b", 8)).unwrap();
        drop(b); // left without taking it
        tokio::task::yield_now().await;
        assert_eq!(*undone.lock().unwrap(), [8], "undone by its token");
        drop(once);
        assert_eq!(w.next_in_line("k", "zed").map(|_| ()), None);

        let once = w.join(&key, &Arc::from("once"), Duration::from_secs(1), false, noop());
        let c = join(&w, &key, "c");
        assert!(
            w.next_in_line("k", "zed").is_some_and(|(n, more)| Arc::ptr_eq(&n, &c.waiter) && !more),
            "a single attempt beside it is no other waiter"
        );
        drop(once);
        let waiter = c.waiter.clone();
        drop(c);
        assert!(waiter.grant(lease("k", "c", 9)).is_err(), "a waiter that left gets nothing");
    }

    #[tokio::test]
    async fn held_answers_stand_in_only_while_fresh_and_listening() {
        let w = Waiters::default();
        let key: Arc<str> = "k".into();
        let _a = join(&w, &key, "a");
        w.saw_held("k", "alice", Duration::from_secs(30));
        assert_eq!(w.known_held("k"), None, "not listening");
        w.listening.store(true, Ordering::Release);
        assert_eq!(w.known_held("k").map(|(h, _)| h).as_deref(), Some("alice"));
        w.wake_all();
        assert_eq!(w.known_held("k"), None, "forgotten when wake-ups may have been lost");
    }
}
