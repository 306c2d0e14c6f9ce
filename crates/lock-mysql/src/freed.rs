//! The keys whose rows this provider's own releases left free: the next acquisition of such a
//! key tries the plain `take` statement first (see `Statements::take`), which costs the server
//! less than the `INSERT ... ON DUPLICATE KEY UPDATE` that decides every other case.
//!
//! Only a hint: the take decides nothing by itself but "the row is free", under the row lock,
//! and counts the generation up as the full statement does, so a key taken, reaped or locked
//! elsewhere since simply makes it match no row, and the full statement follows (one more
//! round trip, in that case only). A hint is used once. The set is bounded: a workload with a
//! new key per lock (one per workflow execution, say) fills it and it starts over.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Keys remembered at most; past that the set is emptied and starts over.
pub(crate) const CAPACITY: usize = 4096;

/// See the [module docs](self).
#[derive(Debug, Default)]
pub(crate) struct Freed {
    keys: Mutex<HashSet<Arc<str>, foldhash::fast::RandomState>>,
}

impl Freed {
    fn keys(&self) -> MutexGuard<'_, HashSet<Arc<str>, foldhash::fast::RandomState>> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A release through this provider left `key`'s row free.
    pub(crate) fn freed(&self, key: &str) {
        let mut keys = self.keys();
        if keys.len() >= CAPACITY && !keys.contains(key) {
            keys.clear();
        }
        keys.insert(Arc::from(key));
    }

    /// Whether this provider freed `key` last it knew; forgets it either way.
    pub(crate) fn take(&self, key: &str) -> bool {
        self.keys().remove(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hint_is_used_once() {
        let f = Freed::default();
        assert!(!f.take("k"));
        f.freed("k");
        assert!(f.take("k"));
        assert!(!f.take("k"), "a take forgets the key");
    }

    #[test]
    fn a_full_set_starts_over_and_keeps_the_newest() {
        let f = Freed::default();
        for i in 0..CAPACITY {
            f.freed(&format!("k{i}"));
        }
        f.freed("k0");
        assert_eq!(f.keys().len(), CAPACITY, "a key already known does not empty the set");
        f.freed("new");
        assert_eq!(f.keys().len(), 1);
        assert!(f.take("new") && !f.take("k1"));
    }
}
