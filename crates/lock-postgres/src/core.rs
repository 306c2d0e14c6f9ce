//! The protocol on the lock table: one attempt, one release, one refresh, the holder read,
//! the reaper's pass and the migration, each one bounded statement on the pool.
//!
//! Every acquire is one `INSERT ... ON CONFLICT ... DO UPDATE ... RETURNING` whose returned
//! `last_op` tells the outcome (new row, taken over, re-entered, busy); the fencing token is
//! computed inside the statement from the key's previous token, so it grows per key by
//! construction. A key this provider used before is first taken and released with the short
//! plain `UPDATE`s of [`rows`](crate::rows).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lock_core::raw::{Attempt, Gate, Inflight};
use lock_core::{FencingToken, Lease, LockError, LockInfo, Result};
use sqlx::postgres::{PgPool, PgRow};
use sqlx::Row;
use tokio::time::Instant;

use crate::config::PgLockConfig;
use crate::error::{map_err, with_contention_retry, NAME};
use crate::rows::Rows;
use crate::table::{op, Statements, TableName};
use crate::waiters::Waiters;

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) pool: PgPool,
    pub(crate) owns_pool: bool,
    pub(crate) sql: Statements,
    pub(crate) table: TableName,
    pub(crate) config: PgLockConfig,
    /// This provider's tag in wake-up payloads: which provider's waiters a release wakes.
    pub(crate) tag: String,
    /// The shortest grace the reaper may use: no statement can still be running on a key
    /// whose row has been free that long.
    pub(crate) min_grace: Duration,
    /// How long the client waits for one statement before it gives up.
    pub(crate) client_timeout: Duration,
    pub(crate) gate: Gate,
    /// Acquire attempts under way, including those finished in the background for a caller
    /// that left (and the undo of what they were granted), and hand-overs to a waiter that may
    /// leave: `close` lets them end before it
    /// closes the pool, so that nothing is left to wait for its TTL.
    pub(crate) inflight: Inflight,
    /// Waiters of this provider, woken by its releases and by the notifications of other
    /// providers' releases.
    pub(crate) waiters: Waiters,
    /// The rows of keys this provider holds or freed last: their next release and
    /// acquisition try the short statements first.
    pub(crate) rows: Rows,
    /// Locks handed over by a release to a waiter of this provider.
    pub(crate) handovers: AtomicU64,
    pub(crate) expired_taken_over: AtomicU64,
    pub(crate) rows_reaped: AtomicU64,
    pub(crate) expired_reaped: AtomicU64,
    pub(crate) statements: AtomicU64,
    pub(crate) attempts: AtomicU64,
    pub(crate) notifications: AtomicU64,
}

/// Runs `fut`, answering a retryable `Unavailable` if it takes longer than `limit`.
pub(crate) async fn bounded<T>(limit: Duration, fut: impl Future<Output = Result<T>>) -> Result<T> {
    lock_core::raw::bounded(NAME, limit, fut).await
}

pub(crate) fn micros(d: Duration) -> i64 {
    // Round up: a lease never ends before the requested TTL.
    d.as_nanos().div_ceil(1000).min(i64::MAX as u128) as i64
}

pub(crate) fn remaining(us: i64) -> Duration {
    Duration::from_micros(us.max(0) as u64)
}

pub(crate) fn row_to_info(row: &PgRow) -> std::result::Result<LockInfo, sqlx::Error> {
    Ok(LockInfo {
        key: row.try_get::<String, _>(0)?,
        owner: row.try_get::<String, _>(1)?,
        token: FencingToken(row.try_get::<i64, _>(2)? as u64),
        depth: row.try_get::<i32, _>(3)?.max(0) as u32,
        remaining_ttl: remaining(row.try_get::<i64, _>(4)?),
        held_for: remaining(row.try_get::<i64, _>(5)?),
    })
}

/// What one release statement did.
pub(crate) enum Released {
    /// The lock is free now.
    Free,
    /// A nested level was released; the owner still holds the lock.
    Nested,
    /// The caller held nothing (or not that acquisition).
    Nothing,
}

impl Inner {
    pub(crate) fn count(&self) {
        self.statements.fetch_add(1, Ordering::Relaxed);
    }

    /// Runs `fut` within the client's timeout.
    pub(crate) async fn bounded<T>(&self, fut: impl Future<Output = Result<T>>) -> Result<T> {
        bounded(self.client_timeout, fut).await
    }

    pub(crate) async fn migrate(&self) -> Result<()> {
        for stmt in self.sql.create.iter().chain([&self.sql.create_waits]) {
            self.count();
            let run = async { sqlx::query(stmt).execute(&self.pool).await.map_err(map_err) };
            match self.bounded(run).await {
                Ok(_) => {}
                // Two providers creating the same table at once: one of them loses the race
                // on the catalog's unique index; the table is there either way.
                Err(LockError::Backend { source, .. }) if is_unique_violation(source.as_ref()) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// One acquisition attempt: the `INSERT ... ON CONFLICT DO UPDATE` decides every outcome
    /// in one statement. `more_waiters`: this provider has other waiters on the key, so the row
    /// keeps naming it as the provider to wake on release. `enlist`: a busy answer names this
    /// provider as waiting (the call will wait for a wake-up). A key whose row this provider
    /// freed last (and no other waiter of it) is first tried with the short take-over `UPDATE`.
    ///
    /// Runs detached (see `acquire`), so it is not bounded by the client's timeout here, only
    /// by the server's statement timeout and, as a last resort, a much longer one.
    pub(crate) async fn attempt(
        &self,
        key: &Arc<str>,
        owner: &Arc<str>,
        ttl: Duration,
        more_waiters: bool,
        enlist: bool,
    ) -> Result<Attempt> {
        self.gate.check()?;
        let sent = Instant::now();
        let backstop = self.client_timeout * 4;
        self.attempts.fetch_add(1, Ordering::Relaxed);
        if let Some(token) = (!more_waiters).then(|| self.rows.take(key)).flatten() {
            if let Some(taken) = bounded(backstop, self.take(key, owner, ttl, token, sent)).await? {
                return Ok(taken);
            }
        }
        let row = bounded(
            backstop,
            with_contention_retry(|| async {
                self.count();
                sqlx::query(&self.sql.acquire)
                    .bind(&**key)
                    .bind(&**owner)
                    .bind(micros(ttl))
                    .bind(&self.tag)
                    .bind(more_waiters)
                    .bind(enlist)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(map_err)
            }),
        )
        .await?;
        let decode = || -> std::result::Result<_, sqlx::Error> {
            Ok((
                row.try_get::<i64, _>(0)? as u64,
                row.try_get::<i32, _>(1)?.max(0) as u32,
                row.try_get::<i16, _>(2)?,
                row.try_get::<String, _>(3)?,
                remaining(row.try_get::<i64, _>(4)?),
            ))
        };
        let (token, depth, outcome, holder, left) = decode().map_err(map_err)?;
        let lease = |ttl: Duration| {
            Lease::counted_from(sent, key.clone(), owner.clone(), FencingToken(token), ttl, depth)
        };
        if outcome == op::BUSY {
            self.rows.busy(key, &holder);
        } else {
            // Held now, by this caller: what this provider's other waiters of the key may assume.
            self.waiters.saw_held(key, owner, left);
            self.rows.held(key, owner, token, depth);
        }
        match outcome {
            op::INSERTED | op::TOOK_RELEASED => Ok(Attempt::Acquired(lease(ttl))),
            op::TOOK_EXPIRED => {
                self.took_expired(key);
                Ok(Attempt::Acquired(lease(ttl)))
            }
            // The TTL left is at least `ttl` (the expiry moved to the later of the two).
            op::REENTERED => Ok(Attempt::Acquired(lease(left.max(ttl)))),
            op::BUSY => {
                self.waiters.saw_held(key, &holder, left);
                Ok(Attempt::Busy { holder: Some(holder), expires_in: Some(left) })
            }
            other => Err(LockError::backend(NAME, format!("unexpected acquire outcome {other}"))),
        }
    }

    /// The short take-over: the key's row, if it still has `token` (the one it had when this
    /// provider freed it), is free and names no waiting provider; `None` when the `UPDATE`
    /// matched no row (the attempt goes on with the upsert).
    async fn take(
        &self,
        key: &Arc<str>,
        owner: &Arc<str>,
        ttl: Duration,
        token: u64,
        sent: Instant,
    ) -> Result<Option<Attempt>> {
        let done = with_contention_retry(|| async {
            self.count();
            sqlx::query(&self.sql.take)
                .bind(&**key)
                .bind(&**owner)
                .bind(micros(ttl))
                .bind(token as i64)
                .execute(&self.pool)
                .await
                .map_err(map_err)
        })
        .await?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        // The row had `token` and nobody acquired it since: one more generation.
        let token = token + 1;
        self.waiters.saw_held(key, owner, ttl);
        self.rows.held(key, owner, token, 1);
        Ok(Some(Attempt::Acquired(Lease::counted_from(
            sent,
            key.clone(),
            owner.clone(),
            FencingToken(token),
            ttl,
            1,
        ))))
    }

    fn took_expired(&self, key: &str) {
        self.expired_taken_over.fetch_add(1, Ordering::Relaxed);
        lock_core::raw::report_expired_cleaned(NAME, 1);
        tracing::debug!(backend = NAME, key, "expired lease taken over");
    }

    /// Releases one level in one owner-checked statement; `token` restricts it to one
    /// acquisition (the undo of an abandoned one). A release that frees the lock wakes the
    /// next waiter: here when it waits in this provider, by NOTIFY (in the same statement)
    /// when it waits elsewhere. The last level of a lock this provider took is first tried
    /// with a short statement: handing the lock over to this provider's next waiter, or, with
    /// none, the short release `UPDATE`.
    pub(crate) async fn release(
        self: &Arc<Self>,
        key: &str,
        owner: &str,
        token: Option<u64>,
    ) -> Result<Released> {
        if let Some(held) = token.is_none().then(|| self.rows.held_once(key, owner)).flatten() {
            let done = match self.waiters.next_in_line(key, owner) {
                Some((next, more)) => self.hand(key, owner, held, next, more).await?,
                None if self.waiters.count(key) == 0 => {
                    let freed = self.free(key, owner).await?;
                    if freed {
                        self.rows.released(key, owner, 0);
                    }
                    freed
                }
                None => false,
            };
            if done {
                return Ok(Released::Free);
            }
        }
        self.release_full(key, owner, token).await
    }

    /// The release statement itself (see [`release`](Self::release)).
    async fn release_full(&self, key: &str, owner: &str, token: Option<u64>) -> Result<Released> {
        let row = self
            .bounded(with_contention_retry(|| async {
                self.count();
                let q = match token {
                    Some(t) => {
                        sqlx::query(&self.sql.undo).bind(key).bind(owner).bind(&self.tag).bind(t as i64)
                    }
                    None => sqlx::query(&self.sql.unlock).bind(key).bind(owner).bind(&self.tag),
                };
                q.fetch_optional(&self.pool).await.map_err(map_err)
            }))
            .await?;
        let Some(row) = row else {
            self.rows.forget(key);
            return Ok(Released::Nothing);
        };
        let depth: i32 = row.try_get(0).map_err(map_err)?;
        if depth > 0 {
            self.rows.released(key, owner, depth as u32);
            return Ok(Released::Nested);
        }
        self.freed(key, owner, row.try_get(1).map_err(map_err)?);
        Ok(Released::Free)
    }

    /// After a release freed `owner`'s lock on `key`, with `waiter` named in the row: the hint
    /// for the next acquisition, and the wake-up of this provider's next waiter.
    fn freed(&self, key: &str, owner: &str, waiter: String) {
        if waiter.is_empty() {
            self.rows.released(key, owner, 0);
        } else {
            self.rows.forget(key);
            // Handed to the next waiter (of this provider or, by the statement's NOTIFY, of
            // another): a call of this provider that arrives now queues behind it instead of
            // racing it to the server.
            self.waiters.saw_held(key, "", crate::waiters::FRESH);
        }
        if waiter == self.tag {
            self.waiters.wake_one(key);
        }
    }

    /// Releases `owner`'s lock on `key` (at depth 1, with `token`) with `next`, a call of this
    /// provider, waiting: hands it over to `next` in the same statement unless another
    /// provider is named as waiting, when it is the plain release (which wakes as the full
    /// one does). `false` when it matched no row (the full release follows). `more`: other
    /// calls of this provider wait behind `next`.
    ///
    /// The statement and what follows it run to their end even if the caller stops waiting
    /// (dropped, or the client's timeout): a lock handed over is always granted to its waiter,
    /// or undone by token if the waiter has left.
    async fn hand(
        self: &Arc<Self>,
        key: &str,
        owner: &str,
        token: u64,
        next: Arc<crate::waiters::Waiter>,
        more: bool,
    ) -> Result<bool> {
        let (inner, key, owner): (_, Arc<str>, Arc<str>) = (self.clone(), key.into(), owner.into());
        let handing = async move {
            let sent = Instant::now();
            let row = with_contention_retry(|| async {
                inner.count();
                sqlx::query(&inner.sql.hand)
                    .bind(&*key)
                    .bind(&*owner)
                    .bind(token as i64)
                    .bind(&*next.owner)
                    .bind(micros(next.ttl))
                    .bind(more)
                    .bind(&inner.tag)
                    .fetch_optional(&inner.pool)
                    .await
                    .map_err(map_err)
            })
            .await?;
            let Some(row) = row else { return Ok(false) };
            let handed: bool = row.try_get(0).map_err(map_err)?;
            if !handed {
                // Another provider waits too: released, and woken as the full release does.
                inner.freed(&key, &owner, row.try_get(1).map_err(map_err)?);
                return Ok(true);
            }
            // The row had the releasing acquisition's token: the waiter's is the next one.
            let token = token + 1;
            inner.handovers.fetch_add(1, Ordering::Relaxed);
            inner.rows.held(&key, &next.owner, token, 1);
            inner.waiters.saw_held(&key, &next.owner, next.ttl);
            let lease = Lease::counted_from(sent, key, next.owner.clone(), FencingToken(token), next.ttl, 1);
            if let Err(lease) = next.grant(lease) {
                // The waiter left while the statement ran: nobody will use the lock.
                let (key, owner, token) = (&*lease.key, &*lease.owner, lease.token.0);
                if let Err(e) = inner.release_full(key, owner, Some(token)).await {
                    tracing::warn!(backend = NAME, key, error = %e, "could not undo a lock handed to a waiter that left");
                }
            }
            Ok(true)
        };
        self.bounded(lock_core::raw::finish_on_drop(handing, |_| async {}).counted(&self.inflight)).await
    }

    /// The short release: whether the `UPDATE` freed `owner`'s lock on `key` (the last level,
    /// live, no waiting provider named); `false` when it matched no row.
    async fn free(&self, key: &str, owner: &str) -> Result<bool> {
        let done = self
            .bounded(with_contention_retry(|| async {
                self.count();
                sqlx::query(&self.sql.free).bind(key).bind(owner).execute(&self.pool).await.map_err(map_err)
            }))
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Who holds `key`, when an acquisition gave up or a release found nothing.
    pub(crate) async fn holder(&self, key: &str) -> Result<Option<(String, bool)>> {
        self.count();
        let row = self
            .bounded(async {
                sqlx::query(&self.sql.holder).bind(key).fetch_optional(&self.pool).await.map_err(map_err)
            })
            .await?;
        row.map(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<bool, _>(1)?))).transpose().map_err(map_err)
    }

    /// Deletes rows free for longer than `grace` (never less than `min_grace`); returns how
    /// many.
    pub(crate) async fn reap(&self, grace: Duration) -> Result<u64> {
        let grace = grace.max(self.min_grace);
        let mut total = 0;
        loop {
            self.count();
            let rows: Vec<bool> = self
                .bounded(async {
                    sqlx::query_scalar(&self.sql.reap)
                        .bind(micros(grace))
                        .fetch_all(&self.pool)
                        .await
                        .map_err(map_err)
                })
                .await?;
            let n = rows.len() as u64;
            let expired = rows.iter().filter(|e| **e).count() as u64;
            total += n;
            self.rows_reaped.fetch_add(n, Ordering::Relaxed);
            self.expired_reaped.fetch_add(expired, Ordering::Relaxed);
            lock_core::raw::report_expired_cleaned(NAME, expired);
            if n < 1000 {
                break;
            }
        }
        self.reap_waits().await?;
        Ok(total)
    }
}

fn is_unique_violation(e: &(dyn std::error::Error + 'static)) -> bool {
    match e.downcast_ref::<sqlx::Error>() {
        Some(sqlx::Error::Database(db)) => db.code().is_some_and(|c| c == "23505" || c == "42P07"),
        _ => false,
    }
}
