//! The sharded lock table, its FIFO wait queues and the reaper.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use lock_core::raw::{spawn_reaper, Gate, LockBackend};
use lock_core::{Capabilities, FencingToken, Health, Lease, LockError, LockInfo, LockOptions, Result};
use tokio::sync::oneshot;

use crate::config::MemoryConfig;
use tokio::time::Instant;

/// The current holder of a key.
#[derive(Debug)]
struct Holder {
    owner: Arc<str>,
    token: u64,
    depth: u32,
    ttl: Duration,
    expires_at: Instant,
}

/// A caller queued for a key. The lock is handed to it through `tx`.
#[derive(Debug)]
struct Waiter {
    id: u64,
    owner: Arc<str>,
    ttl: Duration,
    tx: oneshot::Sender<Result<Lease>>,
}

/// One key's state. Invariant: a key without a holder has no waiters (a release hands the
/// lock to the first waiter), so an entry with neither is removed.
#[derive(Debug)]
struct Entry {
    /// The key again, shared with every lease handed out for it.
    key: Arc<str>,
    holder: Option<Holder>,
    waiters: VecDeque<Waiter>,
}

type Shard = HashMap<Arc<str>, Entry>;

#[derive(Debug)]
struct Inner {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    next_token: AtomicU64,
    next_waiter: AtomicU64,
    expired_cleaned: AtomicU64,
    gate: Gate,
}

/// Builder for [`MemoryLockProvider`], over a [`MemoryConfig`].
#[derive(Debug, Clone, Default)]
pub struct MemoryLockProviderBuilder {
    config: MemoryConfig,
}

impl MemoryLockProviderBuilder {
    /// Number of independently locked shards (rounded up to a power of two; default 64).
    pub fn shards(mut self, shards: usize) -> Self {
        self.config = self.config.shards(shards);
        self
    }

    /// How often the background reaper removes expired leases (default 5 s); `None` leaves
    /// cleanup to the lazy check on every access.
    pub fn reap_interval(mut self, every: Option<Duration>) -> Self {
        self.config = self.config.reap_interval(every);
        self
    }

    /// Builds the provider. The reaper starts only when called inside a tokio runtime.
    pub fn build(self) -> MemoryLockProvider {
        let config = self.config;
        let inner = Arc::new(Inner {
            shards: (0..config.shards).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            next_token: AtomicU64::new(0),
            next_waiter: AtomicU64::new(0),
            expired_cleaned: AtomicU64::new(0),
            gate: Gate::new(),
        });
        let reaper = match (config.reap_interval, tokio::runtime::Handle::try_current()) {
            (Some(every), Ok(_)) => {
                Some(spawn_reaper(Arc::downgrade(&inner), every, |inner: Arc<Inner>| async move {
                    if inner.gate.is_closed() {
                        return false;
                    }
                    let n = inner.reap();
                    if n > 0 {
                        tracing::debug!(backend = MemoryLockProvider::NAME, cleaned = n, "reaper pass");
                    }
                    true
                }))
            }
            _ => None,
        };
        MemoryLockProvider { inner, reaper: Mutex::new(reaper) }
    }
}

/// The in-process lock provider. See the [crate docs](crate) for what it guarantees.
#[derive(Debug)]
pub struct MemoryLockProvider {
    inner: Arc<Inner>,
    reaper: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Default for MemoryLockProvider {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for MemoryLockProvider {
    fn drop(&mut self) {
        if let Some(reaper) = lock(&self.reaper).take() {
            reaper.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a shard cannot leave an entry half-written (every mutation is a
    // few field assignments), so a poisoned shard is still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl MemoryLockProvider {
    /// A provider with default settings (64 shards, reaper every 5 s).
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder to tune shards and the reaper.
    pub fn builder() -> MemoryLockProviderBuilder {
        MemoryLockProviderBuilder::default()
    }

    /// A provider with `config`, checked first ([`InvalidArgument`](LockError::InvalidArgument)
    /// names a bad setting).
    pub fn with_config(config: MemoryConfig) -> Result<Self> {
        config.validate()?;
        Ok(MemoryLockProviderBuilder { config }.build())
    }

    /// How many expired leases have been cleaned up so far (lazily or by the reaper).
    pub fn expired_cleaned(&self) -> u64 {
        self.inner.expired_cleaned.load(Ordering::Relaxed)
    }

    /// Runs one reaper pass now and returns how many expired leases it cleaned.
    pub fn reap_expired(&self) -> u64 {
        self.inner.reap()
    }
}

impl Inner {
    fn shard(&self, key: &str) -> &Mutex<Shard> {
        let h = self.hasher.hash_one(key) as usize;
        &self.shards[h & (self.shards.len() - 1)]
    }

    fn token(&self) -> u64 {
        self.next_token.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Ends an expired lease and hands the lock to the first live waiter.
    fn settle(&self, entry: &mut Entry, now: Instant) {
        if entry.holder.as_ref().is_some_and(|h| h.expires_at <= now) {
            entry.holder = None;
            self.expired_cleaned.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(backend = MemoryLockProvider::NAME, key = &*entry.key, "expired lease cleaned");
            self.hand_over(entry, now);
        }
    }

    /// Grants a free lock to the first waiter still listening.
    fn hand_over(&self, entry: &mut Entry, now: Instant) {
        debug_assert!(entry.holder.is_none());
        while let Some(w) = entry.waiters.pop_front() {
            let token = self.token();
            let lease =
                Lease::counted_from(now, entry.key.clone(), w.owner.clone(), FencingToken(token), w.ttl, 1);
            if w.tx.send(Ok(lease)).is_ok() {
                let expires_at = now + w.ttl;
                entry.holder = Some(Holder { owner: w.owner, token, depth: 1, ttl: w.ttl, expires_at });
                return;
            }
        }
    }

    /// Gives back one level of the lease `token` on `key` if it is still the current one (used
    /// when a grant reached a waiter that was cancelled before it could read it). Only that one
    /// level: the same owner may have re-entered meanwhile, and those levels are still in use.
    fn release_token(&self, key: &str, shard: &mut Shard, token: u64) {
        let Some(entry) = shard.get_mut(key) else { return };
        if let Some(h) = entry.holder.as_mut().filter(|h| h.token == token) {
            if h.depth > 1 {
                h.depth -= 1;
                return;
            }
            entry.holder = None;
            self.hand_over(entry, Instant::now());
        }
        if entry.holder.is_none() && entry.waiters.is_empty() {
            shard.remove(key);
        }
    }

    fn reap(&self) -> u64 {
        let before = self.expired_cleaned.load(Ordering::Relaxed);
        let now = Instant::now();
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            shard.retain(|_, entry| {
                self.settle(entry, now);
                entry.holder.is_some() || !entry.waiters.is_empty()
            });
        }
        self.expired_cleaned.load(Ordering::Relaxed) - before
    }
}

fn info(key: &str, h: &Holder, now: Instant) -> LockInfo {
    LockInfo {
        key: key.to_owned(),
        owner: h.owner.to_string(),
        token: FencingToken(h.token),
        remaining_ttl: h.expires_at.saturating_duration_since(now),
        depth: h.depth,
    }
}

/// Either the lock (acquired or re-entered) or the state to wait on.
enum TryOutcome {
    Acquired(Lease),
    Busy { holder: Arc<str>, expires_at: Instant },
}

fn try_acquire(inner: &Inner, entry: &mut Entry, opts: &LockOptions, now: Instant) -> TryOutcome {
    match &mut entry.holder {
        None => {
            let token = inner.token();
            let expires_at = now + opts.ttl;
            entry.holder =
                Some(Holder { owner: opts.owner.clone(), token, depth: 1, ttl: opts.ttl, expires_at });
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

/// Keeps a queued caller's place; dropping it (a cancelled `lock` future) leaves the queue
/// clean and passes on a lock that was granted but never read.
struct QueuedWait<'a> {
    inner: &'a Inner,
    key: Arc<str>,
    id: u64,
    rx: oneshot::Receiver<Result<Lease>>,
    done: bool,
}

impl Drop for QueuedWait<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut shard = lock(self.inner.shard(&self.key));
        if let Some(entry) = shard.get_mut(&self.key) {
            if let Some(pos) = entry.waiters.iter().position(|w| w.id == self.id) {
                entry.waiters.remove(pos);
                return;
            }
        }
        // No longer queued: the lock was granted (under this same shard lock) or the provider
        // closed. A grant nobody will read must not keep the key locked for a whole TTL.
        self.rx.close();
        if let Ok(Ok(lease)) = self.rx.try_recv() {
            tracing::debug!(
                backend = MemoryLockProvider::NAME,
                key = &*self.key,
                "cancelled waiter passes on its grant"
            );
            self.inner.release_token(&self.key, &mut shard, lease.token.0);
        }
    }
}

#[async_trait]
impl LockBackend for MemoryLockProvider {
    const NAME: &'static str = "memory";

    fn gate(&self) -> &Gate {
        &self.inner.gate
    }

    fn promises(&self) -> Capabilities {
        Capabilities {
            reentrant: true,
            fencing: true,
            wakes_waiters: true,
            fifo: true,
            distributed: false,
            server_clock: true,
            // Nothing survives the process.
            durable: false,
        }
    }

    async fn acquire(&self, opts: &LockOptions) -> Result<Lease> {
        let inner = &*self.inner;
        let started = Instant::now();
        // The whole wait budget of the policy (no clock read, no loop); zero (`NoWait`, no
        // retries) means one attempt.
        let deadline = started + opts.wait.budget();
        let (id, rx, mut holder, mut holder_expires) = {
            let mut shard = lock(inner.shard(&opts.key));
            // Re-check under the shard lock: `shutdown` drains queues under the same locks.
            inner.gate.check()?;
            let entry = shard.entry(opts.key.clone()).or_insert_with(|| Entry {
                key: opts.key.clone(),
                holder: None,
                waiters: VecDeque::new(),
            });
            inner.settle(entry, started);
            match try_acquire(inner, entry, opts, started) {
                TryOutcome::Acquired(lease) => return Ok(lease),
                TryOutcome::Busy { holder, expires_at } => {
                    if deadline <= started {
                        return Err(LockError::Timeout {
                            key: opts.key.to_string(),
                            holder: Some(holder.to_string()),
                            waited: Duration::ZERO,
                        });
                    }
                    let id = inner.next_waiter.fetch_add(1, Ordering::Relaxed);
                    let (tx, rx) = oneshot::channel();
                    entry.waiters.push_back(Waiter { id, owner: opts.owner.clone(), ttl: opts.ttl, tx });
                    (id, rx, holder, expires_at)
                }
            }
        };
        let mut wait = QueuedWait { inner, key: opts.key.clone(), id, rx, done: false };
        loop {
            tokio::select! {
                granted = &mut wait.rx => {
                    wait.done = true;
                    return granted.unwrap_or(Err(LockError::Closed));
                }
                _ = tokio::time::sleep_until(deadline.min(holder_expires)) => {}
            }
            // The holder's lease may have run out (nobody released it) or our time is up.
            let now = Instant::now();
            let mut shard = lock(inner.shard(&opts.key));
            if let Some(entry) = shard.get_mut(&*opts.key) {
                inner.settle(entry, now);
                if let Some(h) = &entry.holder {
                    holder = h.owner.clone();
                    holder_expires = h.expires_at;
                }
            }
            if let Ok(granted) = wait.rx.try_recv() {
                wait.done = true;
                return granted;
            }
            if now >= deadline {
                if let Some(entry) = shard.get_mut(&*opts.key) {
                    entry.waiters.retain(|w| w.id != wait.id);
                }
                wait.done = true;
                return Err(LockError::Timeout {
                    key: opts.key.to_string(),
                    holder: Some(holder.to_string()),
                    waited: now - started,
                });
            }
        }
    }

    async fn release(&self, key: &str, owner: &str) -> Result<()> {
        let inner = &*self.inner;
        let mut shard = lock(inner.shard(key));
        let Some(entry) = shard.get_mut(key) else {
            return Err(LockError::NotHeld { key: key.to_owned() });
        };
        let now = Instant::now();
        inner.settle(entry, now);
        let result = match &mut entry.holder {
            None => Err(LockError::NotHeld { key: key.to_owned() }),
            Some(h) if &*h.owner != owner => {
                Err(LockError::NotOwner { key: key.to_owned(), holder: Some(h.owner.to_string()) })
            }
            Some(h) if h.depth > 1 => {
                h.depth -= 1;
                Ok(())
            }
            Some(_) => {
                entry.holder = None;
                inner.hand_over(entry, now);
                Ok(())
            }
        };
        if entry.holder.is_none() && entry.waiters.is_empty() {
            shard.remove(key);
        }
        result
    }

    async fn extend(&self, key: &str, owner: &str, ttl: Duration) -> Result<Lease> {
        let inner = &*self.inner;
        let mut shard = lock(inner.shard(key));
        let lost = || LockError::LeaseLost { key: key.to_owned() };
        let Some(entry) = shard.get_mut(key) else { return Err(lost()) };
        let now = Instant::now();
        inner.settle(entry, now);
        match &mut entry.holder {
            Some(h) if &*h.owner == owner => {
                h.expires_at = now + ttl;
                h.ttl = ttl;
                Ok(Lease::counted_from(
                    now,
                    entry.key.clone(),
                    h.owner.clone(),
                    FencingToken(h.token),
                    ttl,
                    h.depth,
                ))
            }
            _ => Err(lost()),
        }
    }

    async fn holder(&self, key: &str) -> Result<Option<LockInfo>> {
        let inner = &*self.inner;
        let mut shard = lock(inner.shard(key));
        let Some(entry) = shard.get_mut(key) else { return Ok(None) };
        let now = Instant::now();
        inner.settle(entry, now);
        let found = entry.holder.as_ref().map(|h| info(key, h, now));
        if found.is_none() && entry.waiters.is_empty() {
            shard.remove(key);
        }
        Ok(found)
    }

    async fn held(&self, prefix: &str) -> Result<Vec<LockInfo>> {
        let now = Instant::now();
        let mut out = Vec::new();
        for shard in self.inner.shards.iter() {
            let shard = lock(shard);
            out.extend(shard.iter().filter(|(k, _)| k.starts_with(prefix)).filter_map(|(k, e)| {
                e.holder.as_ref().filter(|h| h.expires_at > now).map(|h| info(k, h, now))
            }));
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn probe(&self) -> Result<Health> {
        let held: usize = self.inner.shards.iter().map(|s| lock(s).len()).sum();
        Ok(Health {
            backend: Self::NAME,
            latency: Duration::ZERO,
            detail: format!("{held} keys in {} shards", self.inner.shards.len()),
        })
    }

    async fn shutdown(&self) -> Result<()> {
        for shard in self.inner.shards.iter() {
            let mut shard = lock(shard);
            for (_, entry) in shard.drain() {
                for w in entry.waiters {
                    let _ = w.tx.send(Err(LockError::Closed));
                }
            }
        }
        if let Some(reaper) = lock(&self.reaper).take() {
            reaper.abort();
        }
        Ok(())
    }
}
