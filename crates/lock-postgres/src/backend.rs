//! `impl LockBackend for PgLockProvider`: the hooks the checks layer calls, each one
//! statement of [`core`](crate::core).

use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::Ordering;

use lock_core::raw::{acquire_with_backoff, attempt_detached, Attempt, Gate, LockBackend, Undo};
use lock_core::{
    Capabilities, FencingToken, Health, Lease, LockError, LockInfo, LockOptions, Result, WaitInfo,
};
use sqlx::Row;
use tokio::time::Instant;

use crate::core::{bounded, micros, row_to_info, Released};
use crate::error::{map_err, with_contention_retry, NAME};
use crate::PgLockProvider;

impl LockBackend for PgLockProvider {
    const NAME: &'static str = NAME;

    fn gate(&self) -> &Gate {
        &self.inner.gate
    }

    fn command_timeout(&self) -> Option<Duration> {
        Some(self.inner.client_timeout)
    }

    fn promises(&self) -> Capabilities {
        Capabilities {
            reentrant: true,
            fencing: true,
            wakes_waiters: self.inner.config.listen,
            fifo: false,
            distributed: true,
            server_clock: true,
            durable: true,
        }
    }

    async fn acquire(&self, opts: &LockOptions) -> Result<Lease> {
        let inner = &self.inner;
        // Strong reference: the undo must work even if the provider handle is already dropped.
        let undo_inner = inner.clone();
        let undo: Undo = Arc::new(move |lease: Lease| {
            let inner = undo_inner.clone();
            Box::pin(async move {
                let (key, owner, token) = (&*lease.key, &*lease.owner, lease.token.0);
                if let Err(e) = inner.release(key, owner, Some(token)).await {
                    tracing::warn!(backend = NAME, key, error = %e, "could not undo an abandoned acquisition")
                }
            })
        });
        // A call that tries once always asks the server.
        let may_wait = !opts.wait.budget().is_zero();
        let me = inner.waiters.join(&opts.key, &opts.owner, opts.ttl, may_wait, undo.clone());
        let first = std::sync::atomic::AtomicBool::new(true);
        let result = acquire_with_backoff(opts, &inner.gate, Some(&me.waiter.notify), || {
            let (inner, key, owner, ttl) = (inner.clone(), opts.key.clone(), opts.owner.clone(), opts.ttl);
            // Between wake-ups (the wait loop's fallback timer) a fresh "held by someone else"
            // from the server answers here; so does it for the first attempt of a call that
            // queues behind other waiters of this provider (which keep the provider in line
            // for a wake-up). Woken attempts always ask the server.
            // A release of this provider handed the lock over: it is this call's already.
            let granted = me.waiter.take_grant();
            let woken = me.waiter.take_wake();
            let first = first.swap(false, Ordering::Relaxed);
            let known = (may_wait && !woken)
                .then(|| inner.waiters.known_held(&key))
                .flatten()
                .filter(|(holder, _)| *holder != *owner)
                .filter(|_| !first || inner.waiters.count(&key) > 1);
            // Other waiters of this provider on the key: the row keeps this provider in line.
            let more_waiters = inner.waiters.count(&key) > 1;
            let limit = inner.client_timeout;
            let undo = undo.clone();
            async move {
                if let Some(lease) = granted {
                    return Ok(Attempt::Acquired(lease));
                }
                if let Some((holder, left)) = known {
                    // An empty holder: the lock is being handed to a waiter of this provider.
                    let holder = (!holder.is_empty()).then_some(holder);
                    return Ok(Attempt::Busy { holder, expires_in: Some(left) });
                }
                // The attempt runs detached: if the client gives up waiting for it, it still
                // runs to its end, and an acquisition nobody will use is undone by owner and
                // token.
                let counted = inner.inflight.clone();
                let attempt = attempt_detached(
                    async move { inner.attempt(&key, &owner, ttl, more_waiters, may_wait).await },
                    undo,
                )
                .counted(&counted);
                bounded(limit, attempt).await
            }
        })
        .await;
        drop(me);
        match result {
            Err(LockError::Timeout { key, holder: None, waited }) => {
                // One read to name the holder in the error; the wait itself never needed it.
                let holder =
                    inner.holder(&key).await.ok().flatten().filter(|(_, live)| *live).map(|(o, _)| o);
                Err(LockError::Timeout { key, holder, waited })
            }
            other => other,
        }
    }

    async fn release(&self, key: &str, owner: &str) -> Result<()> {
        let inner = &self.inner;
        match inner.release(key, owner, None).await? {
            Released::Free | Released::Nested => return Ok(()),
            Released::Nothing => {}
        }
        match inner.holder(key).await? {
            Some((holder, true)) if holder != owner => {
                Err(LockError::NotOwner { key: key.to_owned(), holder: Some(holder) })
            }
            _ => Err(LockError::NotHeld { key: key.to_owned() }),
        }
    }

    async fn extend(&self, key: &str, owner: &str, ttl: Duration) -> Result<Lease> {
        let inner = &self.inner;
        let sent = Instant::now();
        let row = inner
            .bounded(with_contention_retry(|| async {
                inner.count();
                sqlx::query(&inner.sql.refresh)
                    .bind(micros(ttl))
                    .bind(key)
                    .bind(owner)
                    .fetch_optional(&inner.pool)
                    .await
                    .map_err(map_err)
            }))
            .await?;
        let Some(row) = row else { return Err(LockError::LeaseLost { key: key.to_owned() }) };
        let token: i64 = row.try_get(0).map_err(map_err)?;
        let depth: i32 = row.try_get(1).map_err(map_err)?;
        Ok(Lease::counted_from(sent, key, owner, FencingToken(token as u64), ttl, depth.max(1) as u32))
    }

    async fn holder(&self, key: &str) -> Result<Option<LockInfo>> {
        let inner = &self.inner;
        inner.count();
        let row = inner
            .bounded(async {
                sqlx::query(&inner.sql.inspect).bind(key).fetch_optional(&inner.pool).await.map_err(map_err)
            })
            .await?;
        row.as_ref().map(row_to_info).transpose().map_err(map_err)
    }

    async fn held(&self, prefix: &str) -> Result<Vec<LockInfo>> {
        let inner = &self.inner;
        inner.count();
        let rows = inner
            .bounded(async {
                sqlx::query(&inner.sql.list).bind(prefix).fetch_all(&inner.pool).await.map_err(map_err)
            })
            .await?;
        rows.iter().map(row_to_info).collect::<std::result::Result<_, _>>().map_err(map_err)
    }

    async fn post_wait(&self, wait: &WaitInfo) -> Result<()> {
        self.inner.post_wait(wait).await
    }

    async fn drop_wait(&self, key: &str, owner: &str, id: u64) -> Result<()> {
        self.inner.drop_wait(key, owner, id).await
    }

    async fn posted_waits(&self, prefix: &str) -> Result<Vec<WaitInfo>> {
        self.inner.waits(prefix).await
    }

    async fn probe(&self) -> Result<Health> {
        let started = Instant::now();
        self.inner.count();
        let version: String = self
            .inner
            .bounded(async {
                sqlx::query_scalar("SELECT version()").fetch_one(&self.inner.pool).await.map_err(map_err)
            })
            .await?;
        let version = version.split(" on ").next().unwrap_or(&version).to_string();
        Ok(Health {
            backend: NAME,
            latency: started.elapsed(),
            detail: format!(
                "server {version}, table \"{}\".\"{}\"",
                self.inner.table.schema(),
                self.inner.table.table()
            ),
        })
    }

    async fn shutdown(&self) -> Result<()> {
        self.stop_tasks();
        self.inner.waiters.wake_all();
        // Attempts still under way, hand-overs, and undoing what callers who left were
        // granted, need the pool: let them finish (boundedly) before it closes.
        self.inner.inflight.wait_idle(self.inner.client_timeout * 2).await;
        if let Some(pool) = &self.listener_pool {
            pool.close().await;
        }
        if self.inner.owns_pool {
            self.inner.pool.close().await;
        }
        Ok(())
    }
}
