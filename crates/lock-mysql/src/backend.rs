//! `impl LockBackend for MySqlLockProvider`: the hooks the checks layer calls, each one or two
//! statements of [`core`](crate::core).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lock_core::raw::{acquire_with_backoff, attempt_detached, Attempt, Gate, LockBackend, Undo};
use lock_core::{
    Capabilities, FencingToken, Health, Lease, LockError, LockInfo, LockOptions, Result, WaitInfo,
};
use tokio::time::Instant;

use crate::core::{bounded, micros, row_to_info, Released};
use crate::error::{map_err, with_contention_retry, NAME};
use crate::table::like_prefix;
use crate::MySqlLockProvider;

impl LockBackend for MySqlLockProvider {
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
            wakes_waiters: false,
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
                let (key, owner, token) = (lease.key.as_bytes(), lease.owner.as_bytes(), lease.token.0);
                match inner.release(key, owner, Some(token)).await {
                    Ok(Released::Free) => {
                        inner.seen.forget(&lease.key);
                        inner.freed.freed(&lease.key);
                        inner.wakers.wake_one(&lease.key)
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(backend = NAME, key = &*lease.key, error = %e, "could not undo an abandoned acquisition")
                    }
                }
            })
        });
        let signal = inner.wakers.signal(&opts.key);
        let first = AtomicBool::new(true);
        let result = acquire_with_backoff(opts, &inner.gate, Some(&signal), || {
            let (inner, key, owner, ttl) = (inner.clone(), opts.key.clone(), opts.owner.clone(), opts.ttl);
            let limit = inner.client_timeout;
            let retry = !first.swap(false, Ordering::Relaxed);
            let undo = undo.clone();
            async move {
                // A retry is answered by what a waiter of this provider heard a moment ago, if
                // it is fresh (see `seen`); otherwise it reads before it writes: the acquire
                // statement locks the key's row even when it finds the lock busy, so waiters
                // that polled with it would queue on the row with the holder's release and
                // each other, more of them the longer a hand-over takes.
                if retry {
                    if let Some((holder, left)) = inner.seen.fresh(&key).filter(|(h, _)| *h != *owner) {
                        return Ok(Attempt::Busy { holder: Some(holder), expires_in: Some(left) });
                    }
                    let asked = Instant::now();
                    if let Some((holder, left)) = inner.peek(&key).await? {
                        if *holder != *owner {
                            inner.seen.held(&key, &holder, left, asked);
                            return Ok(Attempt::Busy { holder: Some(holder), expires_in: Some(left) });
                        }
                    }
                }
                // The attempt runs detached: if the client gives up waiting for it, it still
                // runs to its end, and an acquisition nobody will use is undone by owner and
                // token.
                let counted = inner.inflight.clone();
                let attempt = attempt_detached(async move { inner.attempt(&key, &owner, ttl).await }, undo)
                    .counted(&counted);
                bounded(limit, attempt).await
            }
        })
        .await;
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
        match inner.release(key.as_bytes(), owner.as_bytes(), None).await? {
            Released::Free => {
                inner.seen.forget(key);
                inner.freed.freed(key);
                inner.wakers.wake_one(key);
                return Ok(());
            }
            Released::Nested => return Ok(()),
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
        let res = inner
            .bounded(with_contention_retry(|| {
                inner.exec(
                    sqlx::query(&inner.sql.refresh)
                        .bind(micros(ttl))
                        .bind(key.as_bytes())
                        .bind(owner.as_bytes()),
                )
            }))
            .await?;
        if res.rows_affected() != 1 {
            return Err(LockError::LeaseLost { key: key.to_owned() });
        }
        let token = res.last_insert_id();
        // The refresh is committed: the lease stands whatever the read of its depth says.
        inner.count();
        let read = inner
            .bounded(async {
                sqlx::query_scalar::<_, u32>(&inner.sql.refreshed)
                    .bind(key.as_bytes())
                    .bind(owner.as_bytes())
                    .fetch_optional(&inner.pool)
                    .await
                    .map_err(map_err)
            })
            .await;
        let depth = match read {
            Ok(Some(depth)) => depth,
            other => {
                tracing::warn!(backend = NAME, key, outcome = ?other.map(|_| ()),
                    "refreshed, but could not read the depth; reporting the least it can be");
                1
            }
        };
        Ok(Lease::counted_from(sent, key, owner, FencingToken(token), ttl, depth))
    }

    async fn holder(&self, key: &str) -> Result<Option<LockInfo>> {
        let inner = &self.inner;
        inner.count();
        let row = inner
            .bounded(async {
                sqlx::query(&inner.sql.inspect)
                    .bind(key.as_bytes())
                    .fetch_optional(&inner.pool)
                    .await
                    .map_err(map_err)
            })
            .await?;
        row.as_ref().map(row_to_info).transpose().map_err(map_err)
    }

    async fn held(&self, prefix: &str) -> Result<Vec<LockInfo>> {
        let inner = &self.inner;
        inner.count();
        let rows = inner
            .bounded(async {
                sqlx::query(&inner.sql.list)
                    .bind(like_prefix(prefix))
                    .fetch_all(&inner.pool)
                    .await
                    .map_err(map_err)
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
                sqlx::query_scalar("SELECT VERSION()").fetch_one(&self.inner.pool).await.map_err(map_err)
            })
            .await?;
        Ok(Health {
            backend: NAME,
            latency: started.elapsed(),
            detail: format!("server {version}, table `{}`", self.inner.config.table_name),
        })
    }

    async fn shutdown(&self) -> Result<()> {
        if let Some(r) = self.reaper.lock().unwrap_or_else(|e| e.into_inner()).take() {
            r.abort();
        }
        // Attempts still under way, and undoing what callers who left were granted, need
        // the pool: let them finish (boundedly) before it closes.
        self.inner.inflight.wait_idle(self.inner.client_timeout * 2).await;
        if self.inner.owns_pool {
            self.inner.pool.close().await;
        }
        Ok(())
    }
}
