//! [`MySqlLockProvider`]: the `LockProvider` on a `sqlx::MySqlPool`.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use lock_core::{
    acquire_with_backoff, attempt_detached, spawn_reaper, validate, Attempt, Capabilities, FencingToken,
    Health, Lease, LockError, LockInfo, LockOptions, LockProvider, Result, Undo, Wakers,
};
use sqlx::mysql::{MySqlPool, MySqlPoolOptions, MySqlQueryResult, MySqlRow};
use sqlx::Row;
use tokio::time::Instant;

use crate::config::{CleanupStats, MySqlLockConfig, REAP_GRACE_FACTOR};
use crate::errors::{map_err, with_contention_retry};
use crate::table::{like_prefix, op, statement_guard, Statements, GENERATION_BITS};

const NAME: &str = "mysql";

#[derive(Debug)]
struct Inner {
    pool: MySqlPool,
    owns_pool: bool,
    sql: Statements,
    config: MySqlLockConfig,
    /// The shortest grace the reaper may use: no statement can still be running on a key
    /// whose row has been free that long.
    min_grace: Duration,
    /// How long the client waits for one operation's statements before it gives up.
    client_timeout: Duration,
    closed: AtomicBool,
    /// Waiters of this process, woken by this process's releases (and by `close`). Releases
    /// by other processes are noticed by polling.
    wakers: Wakers,
    expired_taken_over: AtomicU64,
    rows_reaped: AtomicU64,
    statements: AtomicU64,
}

/// Distributed locks in a MySQL or MariaDB table. See the [crate docs](crate).
#[derive(Debug)]
pub struct MySqlLockProvider {
    inner: Arc<Inner>,
    reaper: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// What the server and the session of the pool are, checked once on start.
struct ServerFacts {
    mariadb: bool,
    autocommit: bool,
    lock_wait_timeout: Duration,
}

async fn server_facts(pool: &MySqlPool, timeout: Duration) -> Result<ServerFacts> {
    let probe = async {
        let row = sqlx::query(
            "SELECT VERSION(), CAST(@@SESSION.autocommit AS SIGNED), \
             CAST(@@SESSION.innodb_lock_wait_timeout AS SIGNED)",
        )
        .fetch_one(pool)
        .await
        .map_err(map_err)?;
        let version: String = row.try_get(0).map_err(map_err)?;
        let autocommit: i64 = row.try_get(1).map_err(map_err)?;
        let lock_wait: i64 = row.try_get(2).map_err(map_err)?;
        Ok(ServerFacts {
            mariadb: version.to_ascii_lowercase().contains("mariadb"),
            autocommit: autocommit != 0,
            lock_wait_timeout: Duration::from_secs(lock_wait.max(0) as u64),
        })
    };
    bounded(timeout, probe).await
}

/// Runs `fut`, answering a retryable `Unavailable` if it takes longer than `limit`.
async fn bounded<T>(limit: Duration, fut: impl Future<Output = Result<T>>) -> Result<T> {
    match tokio::time::timeout(limit, fut).await {
        Ok(out) => out,
        Err(_) => Err(LockError::unavailable(NAME, format!("no answer from the server within {limit:?}"))),
    }
}

impl MySqlLockProvider {
    /// A provider on the application's pool (the original design's `db`). Closing the
    /// provider leaves the pool open.
    ///
    /// The pool's session settings do not matter (time zone, isolation level, sql_mode),
    /// except `autocommit`: a pool whose connections run with autocommit off is refused with
    /// [`LockError::Config`], since its locks would stay invisible in an open transaction.
    pub async fn from_pool(pool: MySqlPool, config: MySqlLockConfig) -> Result<Self> {
        Self::start(pool, false, config).await
    }

    /// A provider with a pool of its own, connected to `url` (`mysql://user:pass@host/db`).
    pub async fn connect(url: &str, config: MySqlLockConfig) -> Result<Self> {
        // Bad configuration fails before any connection is made.
        config.validate()?;
        let pool = MySqlPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.acquire_timeout)
            .connect(url)
            .await
            .map_err(map_err)?;
        Self::start(pool, true, config).await
    }

    async fn start(pool: MySqlPool, owns_pool: bool, config: MySqlLockConfig) -> Result<Self> {
        let table = config.validate()?;
        let client_timeout = config.command_timeout + config.command_timeout.min(Duration::from_secs(1));
        let facts = server_facts(&pool, client_timeout).await?;
        if !facts.autocommit {
            return Err(LockError::Config(
                "the pool's connections run with autocommit off: every lock would stay in an open transaction, \
                 invisible to others; give the lock provider a pool with autocommit on"
                    .into(),
            ));
        }
        // MariaDB bounds each statement on the server; MySQL only bounds its row-lock waits.
        let (guard, longest_statement) = if facts.mariadb {
            (statement_guard(config.command_timeout), config.command_timeout)
        } else {
            (String::new(), config.command_timeout.max(facts.lock_wait_timeout))
        };
        let min_grace = longest_statement * REAP_GRACE_FACTOR;
        if config.reap_grace < min_grace {
            return Err(LockError::Config(format!(
                "reap_grace {:?} is shorter than {REAP_GRACE_FACTOR} x the longest a statement can run on this \
                 server ({longest_statement:?}, innodb_lock_wait_timeout)",
                config.reap_grace
            )));
        }
        let inner = Arc::new(Inner {
            pool,
            owns_pool,
            sql: Statements::new(&table, &guard),
            config,
            min_grace,
            client_timeout,
            closed: AtomicBool::new(false),
            wakers: Wakers::new(),
            expired_taken_over: AtomicU64::new(0),
            rows_reaped: AtomicU64::new(0),
            statements: AtomicU64::new(0),
        });
        if inner.config.auto_migrate {
            inner.migrate().await?;
        }
        let reaper = inner.config.reap_interval.map(|every| {
            spawn_reaper(Arc::downgrade(&inner), every, |inner: Arc<Inner>| async move {
                if inner.check_open().is_err() {
                    return false;
                }
                match inner.reap(inner.config.reap_grace).await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(backend = NAME, rows = n, "reaper deleted free rows"),
                    Err(e) => tracing::warn!(backend = NAME, error = %e, "reaper pass failed"),
                }
                true
            })
        });
        Ok(MySqlLockProvider { inner, reaper: Mutex::new(reaper) })
    }

    /// Creates the lock table if it does not exist (also done on start unless
    /// `auto_migrate` is off).
    pub async fn migrate(&self) -> Result<()> {
        self.inner.migrate().await
    }

    /// The lock table's name.
    pub fn table(&self) -> &str {
        &self.inner.config.table
    }

    /// The pool the provider runs on.
    pub fn pool(&self) -> &MySqlPool {
        &self.inner.pool
    }

    /// Longest an operation waits for the server before it fails with a retryable
    /// `Unavailable`: the configured `command_timeout` plus a margin (the server gives up at
    /// `command_timeout` on MariaDB, the client a little later). A lease whose refresh may
    /// take this long should be refreshed at least this much before it ends.
    pub fn command_timeout(&self) -> Duration {
        self.inner.client_timeout
    }

    /// The shortest grace period the reaper uses on this server (see
    /// [`MySqlLockConfig::reap_grace`]).
    pub fn min_reap_grace(&self) -> Duration {
        self.inner.min_grace
    }

    /// What cleanup has done so far.
    pub fn cleanup_stats(&self) -> CleanupStats {
        CleanupStats {
            expired_taken_over: self.inner.expired_taken_over.load(Ordering::Relaxed),
            rows_reaped: self.inner.rows_reaped.load(Ordering::Relaxed),
        }
    }

    /// Statements sent to the server so far (for measuring what an acquisition costs).
    pub fn statements_sent(&self) -> u64 {
        self.inner.statements.load(Ordering::Relaxed)
    }

    /// Runs one reaper pass now, deleting rows that have been free (released or expired) for
    /// longer than `grace`, but never sooner than [`min_reap_grace`](Self::min_reap_grace);
    /// returns how many it deleted.
    pub async fn reap_now(&self, grace: Duration) -> Result<u64> {
        self.check_open()?;
        self.inner.reap(grace).await
    }

    fn check_open(&self) -> Result<()> {
        self.inner.check_open()
    }
}

impl Drop for MySqlLockProvider {
    fn drop(&mut self) {
        if let Some(r) = self.reaper.lock().unwrap_or_else(|e| e.into_inner()).take() {
            r.abort();
        }
    }
}

fn micros(d: Duration) -> u64 {
    // Round up: a lease never ends before the requested TTL.
    d.as_nanos().div_ceil(1000) as u64
}

fn remaining(us: i64) -> Duration {
    Duration::from_micros(us.max(0) as u64)
}

fn row_to_info(row: &MySqlRow) -> std::result::Result<LockInfo, sqlx::Error> {
    Ok(LockInfo {
        key: String::from_utf8_lossy(&row.try_get::<Vec<u8>, _>(0)?).into_owned(),
        owner: String::from_utf8_lossy(&row.try_get::<Vec<u8>, _>(1)?).into_owned(),
        token: FencingToken(row.try_get::<u64, _>(2)?),
        depth: row.try_get::<u32, _>(3)?,
        remaining_ttl: remaining(row.try_get::<i64, _>(4)?),
    })
}

/// What one release statement did.
enum Released {
    /// The lock is free now.
    Free,
    /// A nested level was released; the owner still holds the lock.
    Nested,
    /// The caller held nothing (or not that acquisition).
    Nothing,
}

impl Inner {
    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(LockError::Closed)
        } else {
            Ok(())
        }
    }

    fn count(&self) {
        self.statements.fetch_add(1, Ordering::Relaxed);
    }

    /// Runs `fut` within the client's timeout.
    async fn bounded<T>(&self, fut: impl Future<Output = Result<T>>) -> Result<T> {
        bounded(self.client_timeout, fut).await
    }

    async fn migrate(&self) -> Result<()> {
        self.count();
        self.bounded(async { sqlx::query(&self.sql.create).execute(&self.pool).await.map_err(map_err) })
            .await?;
        Ok(())
    }

    async fn exec(
        &self,
        q: sqlx::query::Query<'_, sqlx::MySql, sqlx::mysql::MySqlArguments>,
    ) -> Result<MySqlQueryResult> {
        self.count();
        q.execute(&self.pool).await.map_err(map_err)
    }

    /// One acquisition attempt: the `INSERT ... ON DUPLICATE KEY UPDATE` decides every outcome
    /// in one statement; a re-entry adds one read for its depth.
    ///
    /// Runs detached (see `lock`), so it is not bounded by the client's timeout here, only by
    /// the server's statement timeout and, as a last resort, a much longer one.
    async fn attempt(&self, key: &Arc<str>, owner: &Arc<str>, ttl: Duration) -> Result<Attempt> {
        self.check_open()?;
        let us = micros(ttl);
        let sent = Instant::now();
        let backstop = self.client_timeout * 4;
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
        let lease = |token: u64, depth: u32, ttl: Duration| Lease {
            key: key.clone(),
            owner: owner.clone(),
            token: FencingToken(token),
            ttl,
            valid_until: sent + ttl,
            depth,
        };
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
    async fn read_reentry(&self, key: &str, owner: &str) -> Result<Option<(u32, Duration)>> {
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
    async fn release(&self, key: &[u8], owner: &[u8], token: Option<u64>) -> Result<Released> {
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

    /// Who holds `key`, when an acquisition gave up or a release found nothing.
    async fn holder(&self, key: &str) -> Result<Option<(String, bool)>> {
        self.count();
        let row = self
            .bounded(async {
                sqlx::query(&self.sql.holder)
                    .bind(key.as_bytes())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)
            })
            .await?;
        row.map(|r| {
            let owner: Vec<u8> = r.try_get(0)?;
            let live: bool = r.try_get(1)?;
            Ok((String::from_utf8_lossy(&owner).into_owned(), live))
        })
        .transpose()
        .map_err(map_err)
    }

    async fn reap(&self, grace: Duration) -> Result<u64> {
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
        Ok(total)
    }
}

#[async_trait]
impl LockProvider for MySqlLockProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    fn request_timeout(&self) -> Option<Duration> {
        Some(self.inner.client_timeout)
    }

    fn capabilities(&self) -> Capabilities {
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

    async fn lock(&self, opts: &LockOptions) -> Result<Lease> {
        opts.validate()?;
        self.check_open()?;
        let inner = &self.inner;
        // Strong reference: the undo must work even if the provider handle is already dropped.
        let undo_inner = inner.clone();
        let undo: Undo = Arc::new(move |lease: Lease| {
            let inner = undo_inner.clone();
            Box::pin(async move {
                let (key, owner, token) = (lease.key.as_bytes(), lease.owner.as_bytes(), lease.token.0);
                match inner.release(key, owner, Some(token)).await {
                    Ok(Released::Free) => inner.wakers.wake_one(&lease.key),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(backend = NAME, key = &*lease.key, error = %e, "could not undo an abandoned acquisition")
                    }
                }
            })
        });
        let signal = inner.wakers.signal(&opts.key);
        let result = acquire_with_backoff(opts, Some(&signal), || {
            let (inner, key, owner, ttl) = (inner.clone(), opts.key.clone(), opts.owner.clone(), opts.ttl);
            let limit = inner.client_timeout;
            // The attempt runs detached: if the client gives up waiting for it, it still runs
            // to its end, and an acquisition nobody will use is undone by owner and token.
            let attempt =
                attempt_detached(async move { inner.attempt(&key, &owner, ttl).await }, undo.clone());
            bounded(limit, attempt)
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

    async fn unlock(&self, key: &str, owner: &str) -> Result<()> {
        validate::key(key)?;
        validate::owner(owner)?;
        self.check_open()?;
        let inner = &self.inner;
        match inner.release(key.as_bytes(), owner.as_bytes(), None).await? {
            Released::Free => {
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

    async fn refresh_lock(&self, key: &str, owner: &str, ttl: Duration) -> Result<Lease> {
        validate::key_owner_ttl(key, owner, ttl)?;
        self.check_open()?;
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
        Ok(Lease {
            key: key.into(),
            owner: owner.into(),
            token: FencingToken(token),
            ttl,
            valid_until: sent + ttl,
            depth,
        })
    }

    async fn is_locked(&self, key: &str) -> Result<Option<LockInfo>> {
        validate::key(key)?;
        self.check_open()?;
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

    async fn list(&self, prefix: &str) -> Result<Vec<LockInfo>> {
        validate::prefix(prefix)?;
        self.check_open()?;
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

    async fn health(&self) -> Result<Health> {
        self.check_open()?;
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
            detail: format!("server {version}, table `{}`", self.inner.config.table),
        })
    }

    async fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.inner.wakers.wake_all();
        if let Some(r) = self.reaper.lock().unwrap_or_else(|e| e.into_inner()).take() {
            r.abort();
        }
        if self.inner.owns_pool {
            self.inner.pool.close().await;
        }
        Ok(())
    }
}
