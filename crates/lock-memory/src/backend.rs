//! `impl LockBackend for MemoryLockProvider`: the worked example of a backend. Each hook is
//! the protocol on the [table](crate::table); input checks and the closed state are the
//! checks layer's. A waiter queues in its key's entry and is handed the lock by the release
//! that frees it; `shutdown` drains the queues under the same shard locks under which
//! `acquire` re-checks the gate, so no waiter is queued after a close.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use lock_core::raw::{Gate, LockBackend};
use lock_core::{
    Capabilities, FencingToken, Health, Lease, LockError, LockInfo, LockOptions, Result, WaitInfo,
};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::table::{info, lock, try_acquire, Inner, KeyHash, TryOutcome, Waiter};
use crate::MemoryLockProvider;

/// Keeps a queued caller's place; dropping it (a cancelled `lock` future) leaves the queue
/// clean and passes on a lock that was granted but never read.
struct QueuedWait<'a> {
    inner: &'a Inner,
    key: Arc<str>,
    hash: KeyHash,
    id: u64,
    rx: oneshot::Receiver<Result<Lease>>,
    done: bool,
}

impl Drop for QueuedWait<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut shard = lock(self.inner.shard_of(self.hash));
        if let Some(entry) = shard.get_mut(self.hash, &self.key) {
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
            self.inner.release_token(self.hash, &self.key, &mut shard, lease.token.0);
        }
    }
}

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
        let (hash, shard) = inner.shard(&opts.key);
        let (id, rx, mut holder, mut holder_expires) = {
            let mut shard = lock(shard);
            // Re-check under the shard lock: `shutdown` drains queues under the same locks.
            inner.gate.check()?;
            let entry = shard.get_or_insert(hash, &opts.key);
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
        let mut wait = QueuedWait { inner, key: opts.key.clone(), hash, id, rx, done: false };
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
            let mut shard = lock(inner.shard_of(hash));
            if let Some(entry) = shard.get_mut(hash, &opts.key) {
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
                if let Some(entry) = shard.get_mut(hash, &opts.key) {
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
        let (hash, shard) = inner.shard(key);
        let mut shard = lock(shard);
        let Some(entry) = shard.get_mut(hash, key) else {
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
            shard.remove(hash, key);
        }
        result
    }

    async fn extend(&self, key: &str, owner: &str, ttl: Duration) -> Result<Lease> {
        let inner = &*self.inner;
        let (hash, shard) = inner.shard(key);
        let mut shard = lock(shard);
        let lost = || LockError::LeaseLost { key: key.to_owned() };
        let Some(entry) = shard.get_mut(hash, key) else { return Err(lost()) };
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
        let (hash, shard) = inner.shard(key);
        let mut shard = lock(shard);
        let Some(entry) = shard.get_mut(hash, key) else { return Ok(None) };
        let now = Instant::now();
        inner.settle(entry, now);
        let found = entry.holder.as_ref().map(|h| info(key, h, now));
        if found.is_none() && entry.waiters.is_empty() {
            shard.remove(hash, key);
        }
        Ok(found)
    }

    async fn held(&self, prefix: &str) -> Result<Vec<LockInfo>> {
        let now = Instant::now();
        let mut out = Vec::new();
        for shard in self.inner.shards.iter() {
            let shard = lock(shard);
            out.extend(shard.iter().filter(|e| e.key.starts_with(prefix)).filter_map(|e| {
                e.holder.as_ref().filter(|h| h.expires_at > now).map(|h| info(&e.key, h, now))
            }));
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn post_wait(&self, wait: &WaitInfo) -> Result<()> {
        self.inner.waits.post(wait);
        Ok(())
    }

    async fn drop_wait(&self, key: &str, owner: &str, id: u64) -> Result<()> {
        self.inner.waits.drop_wait(key, owner, id);
        Ok(())
    }

    async fn posted_waits(&self, prefix: &str) -> Result<Vec<WaitInfo>> {
        Ok(self.inner.waits.list(prefix))
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
            for entry in shard.drain() {
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
