//! What this provider knows of the rows of keys it holds or freed last: the owner, the fencing
//! token, the depth, and whether its release left the row free with no waiter named in it.
//!
//! With that, the two statements of a lock and release cycle on a key this provider used
//! before are plain `UPDATE`s without `RETURNING` (see `Inner::attempt` and `Inner::release`),
//! about 25 % less of the server's work than the upsert and the full release:
//! - **take**: a key this provider freed is taken with `WHERE` the row still has the token
//!   it had when freed and is free with no waiter named. One row changed means nobody took the
//!   key since (every acquisition adds one to the generation), so the new token is that token
//!   plus one, by construction;
//! - **free**: the last level of a lock this provider took at depth 1, with no waiter of its
//!   own, is released with `WHERE` the row is at depth 1 and names no waiter. The owner and
//!   the lease's liveness are checked as in the full release;
//! - **hand**: the same release with a waiter of this provider in line hands the lock over to
//!   it, `WHERE` the row still has the token this provider's acquisition got (the waiter's
//!   token is that one plus one).
//!
//! Only hints: a key taken meanwhile, reaped, re-entered through another provider, or with a
//! waiter of another provider named in its row makes the plain statement match no row, and the
//! full statement follows (one more round trip, in that case only). A key is forgotten when a
//! take uses it and when a full release finds it held elsewhere, so a stale hint costs at most
//! one miss. The map is bounded: a workload with a new key per lock (one per workflow
//! execution, say) fills it and it starts over.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Keys remembered at most; past that the map is emptied and starts over.
pub(crate) const CAPACITY: usize = 4096;

/// One key's row, as this provider last left or saw it.
#[derive(Debug, Clone)]
struct Row {
    owner: Arc<str>,
    token: u64,
    /// 0: freed by this provider with no waiter named.
    depth: u32,
}

/// See the [module docs](self).
#[derive(Debug, Default)]
pub(crate) struct Rows {
    keys: Mutex<HashMap<Arc<str>, Row, foldhash::fast::RandomState>>,
}

impl Rows {
    fn keys(&self) -> MutexGuard<'_, HashMap<Arc<str>, Row, foldhash::fast::RandomState>> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An acquisition through this provider: `owner` holds `key` with `token` at `depth`.
    pub(crate) fn held(&self, key: &Arc<str>, owner: &Arc<str>, token: u64, depth: u32) {
        let mut keys = self.keys();
        if keys.len() >= CAPACITY && !keys.contains_key(key) {
            keys.clear();
        }
        keys.insert(key.clone(), Row { owner: owner.clone(), token, depth });
    }

    /// The token of `key`'s row if this provider freed it with no waiter named; forgets the
    /// key either way (a take uses a hint once).
    pub(crate) fn take(&self, key: &str) -> Option<u64> {
        let mut keys = self.keys();
        match keys.get(key) {
            Some(row) if row.depth == 0 => keys.remove(key).map(|row| row.token),
            _ => None,
        }
    }

    /// The token of `owner`'s lock on `key` if it holds it at depth 1 through this provider, as
    /// far as it knows.
    pub(crate) fn held_once(&self, key: &str, owner: &str) -> Option<u64> {
        self.keys().get(key).filter(|row| row.depth == 1 && *row.owner == *owner).map(|row| row.token)
    }

    /// A release through this provider left `owner` at `depth` (0: the row is free and names
    /// no waiter).
    pub(crate) fn released(&self, key: &str, owner: &str, depth: u32) {
        if let Some(row) = self.keys().get_mut(key).filter(|row| *row.owner == *owner) {
            row.depth = depth;
        }
    }

    /// An attempt found `key` held by `holder`: forgets the key unless that is the hold this
    /// provider knows of.
    pub(crate) fn busy(&self, key: &str, holder: &str) {
        let mut keys = self.keys();
        if keys.get(key).is_some_and(|row| row.depth == 0 || *row.owner != *holder) {
            keys.remove(key);
        }
    }

    /// Forgets `key`: its row is held elsewhere, or names a waiter.
    pub(crate) fn forget(&self, key: &str) {
        self.keys().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arc(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn a_freed_key_is_taken_once_with_its_token() {
        let r = Rows::default();
        assert_eq!(r.take("k"), None);
        r.held(&arc("k"), &arc("alice"), 7, 1);
        assert_eq!(r.take("k"), None, "held, not free");
        assert_eq!(r.held_once("k", "alice"), Some(7));
        assert_eq!(r.held_once("k", "bob"), None, "another owner");
        r.released("k", "alice", 0);
        assert_eq!(r.held_once("k", "alice"), None);
        assert_eq!(r.take("k"), Some(7));
        assert_eq!(r.take("k"), None, "forgotten by the take that used it");
    }

    #[test]
    fn depth_follows_reentry_and_release() {
        let r = Rows::default();
        r.held(&arc("k"), &arc("alice"), 7, 1);
        r.held(&arc("k"), &arc("alice"), 7, 2);
        assert_eq!(r.held_once("k", "alice"), None, "nested: the full release");
        r.released("k", "bob", 1);
        assert_eq!(r.held_once("k", "alice"), None, "another owner's release changes nothing");
        r.released("k", "alice", 1);
        assert_eq!(r.held_once("k", "alice"), Some(7));
        r.busy("k", "alice");
        assert_eq!(r.held_once("k", "alice"), Some(7), "busy because of the hold it knows");
        r.busy("k", "bob");
        assert_eq!(r.held_once("k", "alice"), None, "held by someone else: forgotten");
        r.held(&arc("k"), &arc("alice"), 7, 0);
        r.busy("k", "alice");
        assert_eq!(r.take("k"), None, "freed, then found held: forgotten");
        r.held(&arc("k"), &arc("alice"), 7, 1);
        r.forget("k");
        assert_eq!(r.held_once("k", "alice"), None);
        assert_eq!(r.take("k"), None);
    }

    #[test]
    fn the_map_stays_bounded() {
        let r = Rows::default();
        for i in 0..CAPACITY * 3 + 1 {
            r.held(&arc(&format!("k{i}")), &arc("o"), i as u64, 0);
        }
        assert!(r.keys().len() <= CAPACITY);
        assert_eq!(
            r.take(&format!("k{}", CAPACITY * 3)),
            Some(CAPACITY as u64 * 3),
            "the latest key is kept"
        );
    }
}
