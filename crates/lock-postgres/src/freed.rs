//! Keys whose row this provider freed last, with nobody waiting: the next acquisition of such
//! a key most likely finds the row there and free, so it tries the short take-over `UPDATE`
//! first (see `Inner::attempt`), which costs the server about half the instructions of the
//! upsert that decides every outcome.
//!
//! Only a hint: a key taken meanwhile by another provider, or reaped, makes the `UPDATE` match
//! no row, and the attempt goes on with the upsert (one more round trip). A key is forgotten
//! when an attempt uses it, so a miss happens at most once per release. The set is bounded: a
//! workload with a new key per lock (one per workflow execution, say) fills it and it starts
//! over, costing one small allocation per release.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Keys remembered at most; past that the set is emptied and starts over.
pub(crate) const CAPACITY: usize = 4096;

/// See the [module docs](self).
#[derive(Debug, Default)]
pub(crate) struct Freed {
    keys: Mutex<HashSet<Box<str>>>,
}

impl Freed {
    fn keys(&self) -> MutexGuard<'_, HashSet<Box<str>>> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// This provider's release left `key`'s row free with no waiter named in it.
    pub(crate) fn remember(&self, key: &str) {
        let mut keys = self.keys();
        if keys.len() >= CAPACITY {
            keys.clear();
        }
        keys.insert(key.into());
    }

    /// Whether `key` was remembered; forgets it either way.
    pub(crate) fn take(&self, key: &str) -> bool {
        self.keys().remove(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_taken_once() {
        let f = Freed::default();
        assert!(!f.take("k"));
        f.remember("k");
        assert!(f.take("k"));
        assert!(!f.take("k"), "forgotten by the attempt that used it");
    }

    #[test]
    fn the_set_stays_bounded() {
        let f = Freed::default();
        for i in 0..CAPACITY * 3 + 1 {
            f.remember(&format!("k{i}"));
        }
        assert!(f.keys().len() <= CAPACITY);
        assert!(f.take(&format!("k{}", CAPACITY * 3)), "the latest key is kept");
    }
}
