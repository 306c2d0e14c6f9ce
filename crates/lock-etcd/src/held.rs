//! What a provider remembers of the locks it holds: [`HeldEntry`], per (key, owner).
//!
//! The memory is an optimisation and a way to tell errors apart, never the truth: `unlock`
//! uses it to release in one round trip (a transaction guarded by the entry's mod revision
//! as this provider last wrote it, falling back to a read when it changed), and to answer
//! [`LeaseLost`](lock_core::LockError::LeaseLost) rather than
//! [`NotHeld`](lock_core::LockError::NotHeld) for a lock it held whose entry is gone. Every
//! write of an entry by this provider updates it; a lock that expired without an unlock is
//! forgotten once the memory grows past [`MAX_REMEMBERED`].

use tokio::time::Instant;

use crate::leases::secs;
use crate::provider::Inner;

/// Past this many remembered locks, those whose lease has surely ended are forgotten.
const MAX_REMEMBERED: usize = 4096;

/// What this provider knows about a lock it holds: enough to release it in one round trip.
#[derive(Clone, Debug)]
pub(crate) struct HeldEntry {
    /// The entry's create revision: the lock's fencing token.
    pub(crate) token: i64,
    /// The entry's etcd key.
    pub(crate) entry: Vec<u8>,
    /// The entry's mod revision after this provider's last write to it.
    pub(crate) mod_revision: i64,
    /// The lease the entry is attached to.
    pub(crate) lease: i64,
    /// Re-entry depth.
    pub(crate) depth: u32,
    /// When the owner took the lock, as the entry says (see [`Value::start`](crate::keys::Value)).
    pub(crate) start: Option<u64>,
    /// The lease's TTL in seconds as asked for (before etcd's minimum) and as granted.
    pub(crate) want: i64,
    pub(crate) ttl: i64,
    /// When the request that last granted or renewed the lease was sent: the lease cannot
    /// end before `renewed + ttl`. `None` for a lease this provider never granted or renewed
    /// (a lock taken through another provider): it is never kept for reuse.
    pub(crate) renewed: Option<Instant>,
}

impl Inner {
    /// Records `held` as what this provider knows of `key` held by `owner`.
    pub(crate) fn remember(&self, key: &str, owner: &str, held: HeldEntry) {
        let mut all = self.held.lock().unwrap();
        if all.len() >= MAX_REMEMBERED {
            // Locks that expired without an unlock: long past their lease, forget them (an
            // unlock of one then answers NotHeld rather than LeaseLost).
            let now = Instant::now();
            all.retain(|_, h| h.renewed.is_some_and(|r| r + secs(h.ttl) > now));
        }
        all.insert((key.to_string(), owner.to_string()), held);
    }

    /// What this provider knows of `key` held by `owner`, if anything.
    pub(crate) fn recall(&self, key: &str, owner: &str) -> Option<HeldEntry> {
        self.held.lock().unwrap().get(&(key.to_string(), owner.to_string())).cloned()
    }

    /// Forgets a lock; what this provider knew about it, if it thought it held it.
    pub(crate) fn forget(&self, key: &str, owner: &str) -> Option<HeldEntry> {
        self.held.lock().unwrap().remove(&(key.to_string(), owner.to_string()))
    }
}
