//! The protocol on the lock table: one attempt, one release, one refresh, the holder read,
//! the reaper's pass and the migration, each a bounded statement (or two) on the pool.
//!
//! Every acquire is one `INSERT ... ON DUPLICATE KEY UPDATE` whose outcome (new row, taken
//! over, re-entered, busy) the affected-rows count tells; the fencing token is computed inside
//! the statement from the key's previous token, so it grows per key by construction.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lock_core::raw::{Attempt, Gate, Inflight, Wakers};
use lock_core::{FencingToken, Lease, LockError, LockInfo, Result};
use sqlx::mysql::{MySqlPool, MySqlQueryResult, MySqlRow};
use sqlx::Row;
use tokio::time::Instant;

use crate::config::MySqlLockConfig;
use crate::error::{map_err, with_contention_retry, NAME};
use crate::table::{op, Statements, GENERATION_BITS};

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) pool: MySqlPool,
    pub(crate) owns_pool: bool,
    pub(crate) sql: Statements,
    pub(crate) config: MySqlLockConfig,
    /// The shortest grace the reaper may use: no statement can still be running on a key
    /// whose row has been free that long.
    pub(crate) min_grace: Duration,
    /// How long the client waits for one operation's statements before it gives up.
    pub(crate) client_timeout: Duration,
    pub(crate) gate: Gate,
    /// Acquire attempts under way, including those finished in the background for a caller
    /// that left (and the undo of what they were granted): `close` lets them end before it
    /// closes the pool, so that nothing is left to wait for its TTL.
    pub(crate) inflight: Inflight,
    /// Waiters of this process, woken by this process's releases. Releases
    /// by other processes are noticed by polling.
    pub(crate) wakers: Wakers,
    /// What waiters of this provider last heard about the keys they wait for.
    pub(crate) seen: crate::seen::Seen,
    /// Keys whose rows this provider's releases left free: tried with the plain take first.
    pub(crate) freed: crate::freed::Freed,
    pub(crate) expired_taken_over: AtomicU64,
    pub(crate) rows_reaped: AtomicU64,
    pub(crate) statements: AtomicU64,
}

/// Runs `fut`, answering a retryable `Unavailable` if it takes longer than `limit`.
pub(crate) async fn bounded<T>(limit: Duration, fut: impl Future<Output = Result<T>>) -> Result<T> {
    lock_core::raw::bounded(NAME, limit, fut).await
}

pub(crate) fn micros(d: Duration) -> u64 {
    // Round up: a lease never ends before the requested TTL.
    d.as_nanos().div_ceil(1000) as u64
}

pub(crate) fn remaining(us: i64) -> Duration {
    Duration::from_micros(us.max(0) as u64)
}

pub(crate) fn row_to_info(row: &MySqlRow) -> std::result::Result<LockInfo, sqlx::Error> {
    Ok(LockInfo {
        key: String::from_utf8_lossy(&row.try_get::<Vec<u8>, _>(0)?).into_owned(),
        owner: String::from_utf8_lossy(&row.try_get::<Vec<u8>, _>(1)?).into_owned(),
        token: FencingToken(row.try_get::<u64, _>(2)?),
        depth: row.try_get::<u32, _>(3)?,
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
        self.count();
        self.bounded(async { sqlx::query(&self.sql.create).execute(&self.pool).await.map_err(map_err) })
            .await?;
        self.migrate_waits().await
    }

    pub(crate) async fn exec(
        &self,
        q: sqlx::query::Query<'_, sqlx::MySql, sqlx::mysql::MySqlArguments>,
    ) -> Result<MySqlQueryResult> {
        self.count();
        q.execute(&self.pool).await.map_err(map_err)
    }

    /// One acquisition attempt: the `INSERT ... ON DUPLICATE KEY UPDATE` decides every outcome
    /// in one statement; a re-entry adds one read for its depth. A key this provider freed
    /// last is tried with the plain take first (see [`freed`](crate::freed)), and goes on to
    /// the full statement only if that matched no row.
    ///
    /// Runs detached (see `lock`), so it is not bounded by the client's timeout here, only by
    /// the server's statement timeout and, as a last resort, a much longer one.
    pub(crate) async fn attempt(&self, key: &Arc<str>, owner: &Arc<str>, ttl: Duration) -> Result<Attempt> {
        self.gate.check()?;
        let us = micros(ttl);
        let sent = Instant::now();
        let backstop = self.client_timeout * 4;
        let lease = |token: u64, depth: u32, ttl: Duration| {
            Lease::counted_from(sent, key.clone(), owner.clone(), FencingToken(token), ttl, depth)
        };
        if self.freed.take(key) {
            let took = bounded(
                backstop,
                with_contention_retry(|| {
                    self.exec(
                        sqlx::query(&self.sql.take).bind(owner.as_bytes()).bind(us).bind(key.as_bytes()),
                    )
                }),
            )
            .await?;
            if took.rows_affected() == 1 {
                return Ok(Attempt::Acquired(lease(took.last_insert_id() >> 3, 1, ttl)));
            }
        }
        let res = bounded(
            backstop,
            with_contention_retry(|| {
                self.exec(
                    sqlx::query(&self.sql.acquire)
                        .bind(key.as_bytes())
                        .bind(owner.as_bytes())
                        .bind(us)
                        .bind(owner.as_bytes())
                        .bind(owner.as_bytes())
                        .bind(us)
                        .bind(us),
                )
            }),
        )
        .await?;
        if res.rows_affected() == 1 {
            // A new row: its token is its fresh id with generation 0.
            return Ok(Attempt::Acquired(lease(res.last_insert_id() << GENERATION_BITS, 1, ttl)));
        }
        let packed = res.last_insert_id();
        let (token, outcome) = (packed >> 3, packed & 0b111);
        match outcome {
            op::TOOK_RELEASED => Ok(Attempt::Acquired(lease(token, 1, ttl))),
            op::TOOK_EXPIRED => {
                self.expired_taken_over.fetch_add(1, Ordering::Relaxed);
                lock_core::raw::report_expired_cleaned(NAME, 1);
                tracing::debug!(backend = NAME, key = &**key, "expired lease taken over");
                Ok(Attempt::Acquired(lease(token, 1, ttl)))
            }
            op::REENTERED => {
                // The re-entry is committed: from here on the answer is the lease, never an
                // error. The read only adds the depth and the TTL left (at least `ttl`).
                let (depth, left) = match self.read_reentry(key, owner).await {
                    Ok(Some((depth, left))) => (depth, left.max(ttl)),
                    other => {
                        tracing::warn!(backend = NAME, key = &**key, outcome = ?other.map(|_| ()),
                            "re-entered, but could not read the depth; reporting the least it can be");
                        (2, ttl)
                    }
                };
                Ok(Attempt::Acquired(lease(token, depth, left)))
            }
            op::BUSY => Ok(Attempt::Busy { holder: None, expires_in: None }),
            other => Err(LockError::backend(
                NAME,
                format!("unexpected acquire outcome {other} (affected rows {})", res.rows_affected()),
            )),
        }
    }

    /// Depth and TTL left of `owner`'s lock on `key`, right after a re-entry.
    pub(crate) async fn read_reentry(&self, key: &str, owner: &str) -> Result<Option<(u32, Duration)>> {
        self.count();
        let row = self
            .bounded(async {
                sqlx::query(&self.sql.reentry)
                    .bind(key.as_bytes())
                    .bind(owner.as_bytes())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)
            })
            .await?;
        row.map(|r| Ok((r.try_get::<u32, _>(0)?, remaining(r.try_get::<i64, _>(1)?))))
            .transpose()
            .map_err(map_err)
    }

    /// Releases one level in one owner-checked statement; `token` restricts it to one
    /// acquisition (the undo of an abandoned one).
    pub(crate) async fn release(&self, key: &[u8], owner: &[u8], token: Option<u64>) -> Result<Released> {
        let res = self
            .bounded(with_contention_retry(|| {
                let q = match token {
                    Some(t) => sqlx::query(&self.sql.undo).bind(key).bind(owner).bind(t),
                    None => sqlx::query(&self.sql.unlock).bind(key).bind(owner),
                };
                self.exec(q)
            }))
            .await?;
        Ok(match (res.rows_affected(), res.last_insert_id()) {
            (0, _) => Released::Nothing,
            // LAST_INSERT_ID carries the depth left plus one.
            (_, left) if left > 1 => Released::Nested,
            _ => Released::Free,
        })
    }

    /// The live holder of `key` and its lease left, by a read that takes no lock; `None` when
    /// the lock is free (or expired).
    pub(crate) async fn peek(&self, key: &str) -> Result<Option<(String, Duration)>> {
        self.read_row(&self.sql.peek, key, |r| Ok((owner_of(r)?, remaining(r.try_get(1)?)))).await
    }

    /// Who holds `key`, when an acquisition gave up or a release found nothing.
    pub(crate) async fn holder(&self, key: &str) -> Result<Option<(String, bool)>> {
        self.read_row(&self.sql.holder, key, |r| Ok((owner_of(r)?, r.try_get(1)?))).await
    }

    /// The one row `sql` (with `key` as its only parameter) reads, decoded; `None` without one.
    async fn read_row<T>(
        &self,
        sql: &str,
        key: &str,
        decode: impl FnOnce(&MySqlRow) -> std::result::Result<T, sqlx::Error>,
    ) -> Result<Option<T>> {
        self.count();
        let row = self
            .bounded(async {
                sqlx::query(sql).bind(key.as_bytes()).fetch_optional(&self.pool).await.map_err(map_err)
            })
            .await?;
        row.as_ref().map(decode).transpose().map_err(map_err)
    }

    pub(crate) async fn reap(&self, grace: Duration) -> Result<u64> {
        let grace = grace.max(self.min_grace);
        let mut total = 0;
        loop {
            let n = self
                .bounded(self.exec(sqlx::query(&self.sql.reap).bind(micros(grace))))
                .await?
                .rows_affected();
            total += n;
            self.rows_reaped.fetch_add(n, Ordering::Relaxed);
            if n < 1000 {
                break;
            }
        }
        self.reap_waits().await?;
        Ok(total)
    }
}

/// The owner in a row's first column (stored as bytes).
fn owner_of(row: &MySqlRow) -> std::result::Result<String, sqlx::Error> {
    let owner: Vec<u8> = row.try_get(0)?;
    Ok(String::from_utf8_lossy(&owner).into_owned())
}
