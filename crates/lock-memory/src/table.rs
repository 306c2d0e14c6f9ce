//! The sharded lock table: entries (holder and FIFO queue per key), token issue, expiry
//! settlement and hand-over to the next waiter, the reaper's pass.
//!
//! Every function here runs under one shard's mutex and never awaits: a shard lock is never
//! held across an `.await`, and no operation takes two shard locks.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hashbrown::HashTable;
use lock_core::raw::{Gate, LockBackend};
use lock_core::{FencingToken, Lease, LockInfo, LockOptions, Result};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::MemoryLockProvider;

/// The current holder of a key.
#[derive(Debug)]
pub(crate) struct Holder {
    pub(crate) owner: Arc<str>,
    pub(crate) token: u64,
    pub(crate) depth: u32,
    pub(crate) ttl: Duration,
    pub(crate) expires_at: Instant,
    /// When this owner became the holder (depth 1); kept by re-entry and refresh.
    pub(crate) since: Instant,
}

/// A caller queued for a key. The lock is handed to it through `tx`.
#[derive(Debug)]
pub(crate) struct Waiter {
    pub(crate) id: u64,
    pub(crate) owner: Arc<str>,
    pub(crate) ttl: Duration,
    pub(crate) tx: oneshot::Sender<Result<Lease>>,
}

/// One key's state. Invariant: a key without a holder has no waiters (a release hands the
/// lock to the first waiter), so an entry with neither is removed.
#[derive(Debug)]
pub(crate) struct Entry {
    /// The key again, shared with every lease handed out for it.
    pub(crate) key: Arc<str>,
    /// The key's hash under the provider's seeded hasher, kept for the table to grow by.
    pub(crate) hash: u64,
    pub(crate) holder: Option<Holder>,
    pub(crate) waiters: VecDeque<Waiter>,
}

/// The reaper's pass shrinks a shard's table whose entries fill less than one slot in this many
/// (to twice its entries: room to grow again without rehashing at once), so that a burst of
/// keys, released or expired, does not keep its peak memory for the provider's life. Between
/// passes the table keeps its room: shrinking on every release would rehash over and over.
pub(crate) const SHRINK_BELOW: usize = 4;

/// Tables this small are left as they are.
pub(crate) const MIN_SHRINK_CAPACITY: usize = 64;

/// A key's hash, computed once per operation; it picks the shard and finds the entry in it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KeyHash(u64);

/// One shard's entries, found by the key's hash (computed once per operation, not once for
/// the shard and again for the map) and compared by key.
#[derive(Debug, Default)]
pub(crate) struct Shard {
    entries: HashTable<Entry>,
}

impl Shard {
    pub(crate) fn get_mut(&mut self, hash: KeyHash, key: &str) -> Option<&mut Entry> {
        self.entries.find_mut(hash.0, |e| *e.key == *key)
    }

    /// The entry of `key`, created empty if there is none.
    pub(crate) fn get_or_insert(&mut self, hash: KeyHash, key: &Arc<str>) -> &mut Entry {
        self.entries
            .entry(hash.0, |e| *e.key == **key, |e| e.hash)
            .or_insert_with(|| Entry {
                key: key.clone(),
                hash: hash.0,
                holder: None,
                waiters: VecDeque::new(),
            })
            .into_mut()
    }

    pub(crate) fn remove(&mut self, hash: KeyHash, key: &str) {
        if let Ok(found) = self.entries.find_entry(hash.0, |e| *e.key == *key) {
            found.remove();
        }
    }

    /// Keeps the entries `keep` accepts, then gives back the room of a table that has become
    /// mostly empty (see [`SHRINK_BELOW`]).
    pub(crate) fn retain(&mut self, keep: impl FnMut(&mut Entry) -> bool) {
        self.entries.retain(keep);
        let (len, capacity) = (self.entries.len(), self.entries.capacity());
        if capacity > MIN_SHRINK_CAPACITY && len < capacity / SHRINK_BELOW {
            self.entries.shrink_to(len * 2, |e| e.hash);
        }
    }

    /// How many entries the table has room for.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.entries.capacity()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }

    pub(crate) fn drain(&mut self) -> impl Iterator<Item = Entry> + '_ {
        self.entries.drain()
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) shards: Box<[Mutex<Shard>]>,
    /// Seeded per provider: the keys are the users', so their spread must not be predictable.
    pub(crate) hasher: foldhash::quality::RandomState,
    pub(crate) next_token: AtomicU64,
    pub(crate) next_waiter: AtomicU64,
    pub(crate) expired_cleaned: AtomicU64,
    pub(crate) gate: Gate,
    /// Published waits, for deadlock detection.
    pub(crate) waits: crate::waits::Waits,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a shard cannot leave an entry half-written (every mutation is a
    // few field assignments), so a poisoned shard is still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    /// The key's hash and its shard. The shard is picked by bits 32 and up (at most 16 of
    /// them, the most shards a config allows), which the table in the shard uses for neither
    /// its bucket (the low bits) nor its tag (the top 7), so keys of one shard still spread.
    pub(crate) fn shard(&self, key: &str) -> (KeyHash, &Mutex<Shard>) {
        let hash = KeyHash(self.hasher.hash_one(key));
        (hash, self.shard_of(hash))
    }

    /// The shard of a key already hashed.
    pub(crate) fn shard_of(&self, hash: KeyHash) -> &Mutex<Shard> {
        &self.shards[(hash.0 >> 32) as usize & (self.shards.len() - 1)]
    }

    pub(crate) fn token(&self) -> u64 {
        self.next_token.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Ends an expired lease and hands the lock to the first live waiter.
    pub(crate) fn settle(&self, entry: &mut Entry, now: Instant) {
        if entry.holder.as_ref().is_some_and(|h| h.expires_at <= now) {
            entry.holder = None;
            self.expired_cleaned.fetch_add(1, Ordering::Relaxed);
            lock_core::raw::report_expired_cleaned(MemoryLockProvider::NAME, 1);
            tracing::debug!(backend = MemoryLockProvider::NAME, key = &*entry.key, "expired lease cleaned");
            self.hand_over(entry, now);
        }
    }

    /// Grants a free lock to the first waiter still listening.
    pub(crate) fn hand_over(&self, entry: &mut Entry, now: Instant) {
        debug_assert!(entry.holder.is_none());
        while let Some(w) = entry.waiters.pop_front() {
            let token = self.token();
            let lease =
                Lease::counted_from(now, entry.key.clone(), w.owner.clone(), FencingToken(token), w.ttl, 1);
            if w.tx.send(Ok(lease)).is_ok() {
                let expires_at = now + w.ttl;
                entry.holder =
                    Some(Holder { owner: w.owner, token, depth: 1, ttl: w.ttl, expires_at, since: now });
                return;
            }
        }
    }

    /// Gives back one level of the lease `token` on `key` if it is still the current one (used
    /// when a grant reached a waiter that was cancelled before it could read it). Only that one
    /// level: the same owner may have re-entered meanwhile, and those levels are still in use.
    pub(crate) fn release_token(&self, hash: KeyHash, key: &str, shard: &mut Shard, token: u64) {
        let Some(entry) = shard.get_mut(hash, key) else { return };
        if let Some(h) = entry.holder.as_mut().filter(|h| h.token == token) {
            if h.depth > 1 {
                h.depth -= 1;
                return;
            }
            entry.holder = None;
            self.hand_over(entry, Instant::now());
        }
        if entry.holder.is_none() && entry.waiters.is_empty() {
            shard.remove(hash, key);
        }
    }

    pub(crate) fn reap(&self) -> u64 {
        let before = self.expired_cleaned.load(Ordering::Relaxed);
        let now = Instant::now();
        self.waits.reap(now);
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            shard.retain(|entry| {
                self.settle(entry, now);
                entry.holder.is_some() || !entry.waiters.is_empty()
            });
        }
        self.expired_cleaned.load(Ordering::Relaxed) - before
    }
}

pub(crate) fn info(key: &str, h: &Holder, now: Instant) -> LockInfo {
    LockInfo {
        key: key.to_owned(),
        owner: h.owner.to_string(),
        token: FencingToken(h.token),
        remaining_ttl: h.expires_at.saturating_duration_since(now),
        depth: h.depth,
        held_for: now.saturating_duration_since(h.since),
    }
}

/// Either the lock (acquired or re-entered) or the state to wait on.
pub(crate) enum TryOutcome {
    Acquired(Lease),
    Busy { holder: Arc<str>, expires_at: Instant },
}

pub(crate) fn try_acquire(inner: &Inner, entry: &mut Entry, opts: &LockOptions, now: Instant) -> TryOutcome {
    match &mut entry.holder {
        None => {
            let token = inner.token();
            let expires_at = now + opts.ttl;
            entry.holder = Some(Holder {
                owner: opts.owner.clone(),
                token,
                depth: 1,
                ttl: opts.ttl,
                expires_at,
                since: now,
            });
            let lease = Lease::counted_from(
                now,
                entry.key.clone(),
                opts.owner.clone(),
                FencingToken(token),
                opts.ttl,
                1,
            );
            TryOutcome::Acquired(lease)
        }
        Some(h) if h.owner == opts.owner => {
            // Re-entry keeps the token and extends the lease to the longer of the two.
            h.depth += 1;
            let expires_at = now + opts.ttl;
            if expires_at > h.expires_at {
                h.expires_at = expires_at;
                h.ttl = opts.ttl;
            }
            let (token, left) = (FencingToken(h.token), h.expires_at - now);
            TryOutcome::Acquired(Lease::counted_from(
                now,
                entry.key.clone(),
                h.owner.clone(),
                token,
                left,
                h.depth,
            ))
        }
        Some(h) => TryOutcome::Busy { holder: h.owner.clone(), expires_at: h.expires_at },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &Arc<str>, hash: KeyHash) -> Entry {
        Entry { key: key.clone(), hash: hash.0, holder: None, waiters: VecDeque::new() }
    }

    #[test]
    fn a_pass_over_a_mostly_empty_table_gives_its_room_back_and_keeps_every_entry() {
        let hasher = foldhash::quality::RandomState::default();
        let mut shard = Shard::default();
        let keys: Vec<Arc<str>> = (0..10_000).map(|i| Arc::from(format!("key-{i}"))).collect();
        for key in &keys {
            let hash = KeyHash(hasher.hash_one(&**key));
            *shard.get_or_insert(hash, key) = entry(key, hash);
        }
        let peak = shard.capacity();
        assert!(peak >= 10_000);
        // Nine keys in ten go (released or expired); the table is left with a tenth of its room.
        shard.retain(|e| e.key.ends_with('0'));
        assert_eq!(shard.len(), 1_000);
        assert!(shard.capacity() < peak / 2, "{} of {peak}", shard.capacity());
        assert!(shard.capacity() >= 2_000, "room to grow again: {}", shard.capacity());
        for key in &keys {
            let hash = KeyHash(hasher.hash_one(&**key));
            assert_eq!(shard.get_mut(hash, key).is_some(), key.ends_with('0'), "{key}");
        }
        // A table still a quarter full or more keeps its room.
        let room = shard.capacity();
        shard.retain(|e| !e.key.ends_with("00"));
        assert_eq!((shard.len(), shard.capacity()), (901, room));
    }

    #[test]
    fn small_tables_are_left_alone() {
        let hasher = foldhash::quality::RandomState::default();
        let mut shard = Shard::default();
        let key: Arc<str> = Arc::from("only");
        let hash = KeyHash(hasher.hash_one(&*key));
        *shard.get_or_insert(hash, &key) = entry(&key, hash);
        let room = shard.capacity();
        shard.retain(|_| false);
        assert_eq!((shard.len(), shard.capacity()), (0, room));
    }
}
