//! [`MySqlLockProvider`]: the `LockProvider` on a `sqlx::MySqlPool`.

use std::collections::HashMap;
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

use crate::errors::{map_err, with_contention_retry};
use crate::table::{like_prefix, op, Statements, TableName, DEFAULT_TABLE, GENERATION_BITS};

const NAME: &str = "mysql";

/// Settings of a [`MySqlLockProvider`].
#[derive(Debug, Clone)]
pub struct MySqlLockConfig {
    /// Lock table (default `distributed_locks`); validated as a plain identifier.
    pub table: String,
    /// Create the table on start if it is missing (default `true`).
    pub auto_migrate: bool,
    /// Period of the background reaper; `None` disables it (default 30 s).
    pub reap_interval: Option<Duration>,
    /// How long an expired row stays before the reaper deletes it (default 60 s); until then
    /// `waits` and `acquired_at` of the crashed holder can still be inspected in the table.
    pub reap_grace: Duration,
    /// Pool size when the provider builds its own pool from a URL (default 10).
    pub max_connections: u32,
    /// How long to wait for a pooled connection before answering `Unavailable` (default 5 s).
    pub acquire_timeout: Duration,
}

impl Default for MySqlLockConfig {
    fn default() -> Self {
        MySqlLockConfig {
            table: DEFAULT_TABLE.to_string(),
            auto_migrate: true,
            reap_interval: Some(Duration::from_secs(30)),
            reap_grace: Duration::from_secs(60),
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

/// How many rows the cleanup has handled so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanupStats {
    /// Expired leases taken over by an acquisition (lazy cleanup on acquire).
    pub expired_taken_over: u64,
    /// Rows deleted by the reaper (expired longer than the grace period).
    pub rows_reaped: u64,
}

#[derive(Debug)]
struct Inner {
    pool: MySqlPool,
    owns_pool: bool,
    sql: Statements,
    config: MySqlLockConfig,
    closed: AtomicBool,
    /// Key -> owner of the locks this provider acquired and has not seen released: routes
    /// re-entries straight to the upsert. A hint only; a stale entry costs one statement.
    local: Mutex<HashMap<Arc<str>, Arc<str>>>,
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

impl MySqlLockProvider {
    /// A provider on the application's pool (the original design's `db`). Closing the
    /// provider leaves the pool open.
    pub async fn from_pool(pool: MySqlPool, config: MySqlLockConfig) -> Result<Self> {
        Self::start(pool, false, config).await
    }

    /// A provider with a pool of its own, connected to `url` (`mysql://user:pass@host/db`).
    pub async fn connect(url: &str, config: MySqlLockConfig) -> Result<Self> {
        // Bad configuration fails before any connection is made.
        TableName::new(&config.table)?;
        let pool = MySqlPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.acquire_timeout)
            .connect(url)
            .await
            .map_err(map_err)?;
        Self::start(pool, true, config).await
    }

    async fn start(pool: MySqlPool, owns_pool: bool, config: MySqlLockConfig) -> Result<Self> {
        let table = TableName::new(&config.table)?;
        let inner = Arc::new(Inner {
            pool,
            owns_pool,
            sql: Statements::new(&table),
            config,
            closed: AtomicBool::new(false),
            local: Mutex::default(),
            wakers: Wakers::new(),
            expired_taken_over: AtomicU64::new(0),
            rows_reaped: AtomicU64::new(0),
            statements: AtomicU64::new(0),
        });
        inner.check_sql_mode().await?;
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
                    Ok(n) => tracing::debug!(backend = NAME, rows = n, "reaper deleted expired rows"),
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

    /// Runs one reaper pass now, deleting rows whose lease expired more than `grace` ago;
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

    /// The acquire statement relies on left-to-right assignment in `ON DUPLICATE KEY
    /// UPDATE`; MariaDB's SIMULTANEOUS_ASSIGNMENT mode would break it, so refuse to start.
    async fn check_sql_mode(&self) -> Result<()> {
        let mode: String =
            sqlx::query_scalar("SELECT @@SESSION.sql_mode").fetch_one(&self.pool).await.map_err(map_err)?;
        if mode.to_ascii_uppercase().contains("SIMULTANEOUS_ASSIGNMENT") {
            return Err(LockError::Config(
                "sql_mode SIMULTANEOUS_ASSIGNMENT is not supported by the MySQL lock provider".into(),
            ));
        }
        Ok(())
    }

    async fn migrate(&self) -> Result<()> {
        self.count();
        sqlx::query(&self.sql.create).execute(&self.pool).await.map_err(map_err)?;
        Ok(())
    }

    async fn exec(
        &self,
        q: sqlx::query::Query<'_, sqlx::MySql, sqlx::mysql::MySqlArguments>,
    ) -> Result<MySqlQueryResult> {
        self.count();
        q.execute(&self.pool).await.map_err(map_err)
    }

    /// One acquisition attempt: a single statement, plus one read after a re-entry.
    ///
    /// The first attempt of a `lock` call on a key this provider does not hold starts with a
    /// plain `INSERT` (free key: done, like the raw INSERT+DELETE pattern); only a duplicate
    /// key goes on to the `ON DUPLICATE KEY UPDATE` statement, which costs the server about
    /// 13 % more even when it inserts. Later attempts of the same call, and re-entries, go to
    /// it directly, so a contended acquisition costs one statement more in all and a
    /// re-entry still two.
    async fn attempt(&self, key: &Arc<str>, owner: &Arc<str>, ttl: Duration, first: bool) -> Result<Attempt> {
        self.check_open()?;
        if first && !self.holds(key, owner) {
            let us = micros(ttl);
            let sent = Instant::now();
            let inserted = with_contention_retry(|| {
                self.count();
                let q = sqlx::query(&self.sql.insert).bind(key.as_bytes()).bind(owner.as_bytes()).bind(us);
                async move {
                    match q.execute(&self.pool).await {
                        Ok(res) => Ok(Some(res.last_insert_id())),
                        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(None),
                        Err(e) => Err(map_err(e)),
                    }
                }
            })
            .await?;
            if let Some(id) = inserted {
                self.remember(key, owner);
                return Ok(Attempt::Acquired(Lease {
                    key: key.clone(),
                    owner: owner.clone(),
                    token: FencingToken(id << GENERATION_BITS),
                    ttl,
                    valid_until: sent + ttl,
                    depth: 1,
                }));
            }
        }
        let acquired = self.upsert(key, owner, ttl).await;
        if let Ok(Attempt::Acquired(_)) = &acquired {
            self.remember(key, owner);
        }
        acquired
    }

    /// `true` when this provider last saw `owner` take `key` and not release it: a hint that
    /// routes re-entries straight to the upsert, never a fact the lock relies on.
    fn holds(&self, key: &str, owner: &str) -> bool {
        self.local.lock().unwrap_or_else(|e| e.into_inner()).get(key).is_some_and(|o| &**o == owner)
    }

    fn remember(&self, key: &Arc<str>, owner: &Arc<str>) {
        self.local.lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone(), owner.clone());
    }

    fn forget(&self, key: &str, owner: &str) {
        let mut local = self.local.lock().unwrap_or_else(|e| e.into_inner());
        if local.get(key).is_some_and(|o| &**o == owner) {
            local.remove(key);
        }
    }

    /// The `INSERT ... ON DUPLICATE KEY UPDATE` attempt: every outcome in one statement.
    async fn upsert(&self, key: &Arc<str>, owner: &Arc<str>, ttl: Duration) -> Result<Attempt> {
        let us = micros(ttl);
        loop {
            let sent = Instant::now();
            let res = with_contention_retry(|| {
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
            })
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
                op::TOOK_RELEASED => return Ok(Attempt::Acquired(lease(token, 1, ttl))),
                op::TOOK_EXPIRED => {
                    self.expired_taken_over.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(backend = NAME, key = &**key, "expired lease taken over");
                    return Ok(Attempt::Acquired(lease(token, 1, ttl)));
                }
                op::REENTERED => {
                    self.count();
                    let row = sqlx::query(&self.sql.reentry)
                        .bind(key.as_bytes())
                        .bind(owner.as_bytes())
                        .fetch_one(&self.pool)
                        .await
                        .map_err(map_err)?;
                    let depth: u32 = row.try_get(0).map_err(map_err)?;
                    let left = remaining(row.try_get(1).map_err(map_err)?);
                    return Ok(Attempt::Acquired(lease(token, depth, left)));
                }
                op::BUSY => return Ok(Attempt::Busy { holder: None, expires_in: None }),
                op::EXHAUSTED => {
                    // Once per 65,536 take-overs of one row: replace it so the next insert
                    // draws a new, larger id.
                    self.exec(sqlx::query(&self.sql.drop_exhausted).bind(key.as_bytes())).await?;
                }
                other => {
                    return Err(LockError::backend(
                        NAME,
                        format!("unexpected acquire outcome {other} (affected rows {})", res.rows_affected()),
                    ))
                }
            }
        }
    }

    /// Releases one level: the last one deletes the row (one statement), a nested one counts
    /// down (a second statement, only when the first found depth > 1). `token` restricts it to
    /// one acquisition. Returns `Some(true)` when the lock is now free, `Some(false)` when a
    /// nested level was released, `None` when the caller held nothing.
    async fn release(
        &self,
        last: &str,
        nested: &str,
        key: &[u8],
        owner: &[u8],
        token: Option<u64>,
    ) -> Result<Option<bool>> {
        for (sql, freed) in [(last, true), (nested, false)] {
            let res = with_contention_retry(|| {
                let q = sqlx::query(sql).bind(key).bind(owner);
                self.exec(match token {
                    Some(t) => q.bind(t),
                    None => q,
                })
            })
            .await?;
            if res.rows_affected() == 1 {
                return Ok(Some(freed));
            }
        }
        Ok(None)
    }

    /// Who holds `key`, when an acquisition gave up.
    async fn holder(&self, key: &str) -> Result<Option<(String, bool)>> {
        self.count();
        let row = sqlx::query(&self.sql.holder)
            .bind(key.as_bytes())
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        row.map(|r| {
            let owner: Vec<u8> = r.try_get(0)?;
            let live: bool = r.try_get(1)?;
            Ok((String::from_utf8_lossy(&owner).into_owned(), live))
        })
        .transpose()
        .map_err(map_err)
    }

    async fn reap(&self, grace: Duration) -> Result<u64> {
        let mut total = 0;
        loop {
            let n = self.exec(sqlx::query(&self.sql.reap).bind(micros(grace))).await?.rows_affected();
            total += n;
            if n < 1000 {
                break;
            }
        }
        self.rows_reaped.fetch_add(total, Ordering::Relaxed);
        Ok(total)
    }
}

#[async_trait]
impl LockProvider for MySqlLockProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            reentrant: true,
            fencing: true,
            wakes_waiters: false,
            fifo: false,
            distributed: true,
            server_clock: true,
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
                let undone = inner
                    .release(&inner.sql.undo_last, &inner.sql.undo_nested, key, owner, Some(token))
                    .await;
                match undone {
                    Ok(Some(true)) => {
                        inner.forget(&lease.key, &lease.owner);
                        inner.wakers.wake_one(&lease.key);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(backend = NAME, key = &*lease.key, error = %e, "could not undo an abandoned acquisition")
                    }
                }
            })
        });
        let signal = inner.wakers.signal(&opts.key);
        let mut first = true;
        let result = acquire_with_backoff(opts, Some(&signal), || {
            let (inner, key, owner, ttl) = (inner.clone(), opts.key.clone(), opts.owner.clone(), opts.ttl);
            let is_first = std::mem::replace(&mut first, false);
            attempt_detached(async move { inner.attempt(&key, &owner, ttl, is_first).await }, undo.clone())
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
        let sql = &inner.sql;
        match inner
            .release(&sql.unlock_last, &sql.unlock_nested, key.as_bytes(), owner.as_bytes(), None)
            .await?
        {
            Some(true) => {
                inner.forget(key, owner);
                inner.wakers.wake_one(key);
                return Ok(());
            }
            Some(false) => return Ok(()),
            None => inner.forget(key, owner),
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
        let res = with_contention_retry(|| {
            inner.exec(
                sqlx::query(&inner.sql.refresh).bind(micros(ttl)).bind(key.as_bytes()).bind(owner.as_bytes()),
            )
        })
        .await?;
        if res.rows_affected() != 1 {
            return Err(LockError::LeaseLost { key: key.to_owned() });
        }
        inner.count();
        let row = sqlx::query(&inner.sql.refreshed)
            .bind(key.as_bytes())
            .bind(owner.as_bytes())
            .fetch_optional(&inner.pool)
            .await
            .map_err(map_err)?
            .ok_or_else(|| LockError::LeaseLost { key: key.to_owned() })?;
        let token: u64 = row.try_get(0).map_err(map_err)?;
        let depth: u32 = row.try_get(1).map_err(map_err)?;
        let left = remaining(row.try_get(2).map_err(map_err)?);
        Ok(Lease {
            key: key.into(),
            owner: owner.into(),
            token: FencingToken(token),
            ttl: left,
            valid_until: sent + left,
            depth,
        })
    }

    async fn is_locked(&self, key: &str) -> Result<Option<LockInfo>> {
        validate::key(key)?;
        self.check_open()?;
        self.inner.count();
        let row = sqlx::query(&self.inner.sql.inspect)
            .bind(key.as_bytes())
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(map_err)?;
        row.as_ref().map(row_to_info).transpose().map_err(map_err)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<LockInfo>> {
        validate::prefix(prefix)?;
        self.check_open()?;
        self.inner.count();
        let rows = sqlx::query(&self.inner.sql.list)
            .bind(like_prefix(prefix))
            .fetch_all(&self.inner.pool)
            .await
            .map_err(map_err)?;
        rows.iter().map(row_to_info).collect::<std::result::Result<_, _>>().map_err(map_err)
    }

    async fn health(&self) -> Result<Health> {
        self.check_open()?;
        let started = Instant::now();
        self.inner.count();
        let version: String =
            sqlx::query_scalar("SELECT VERSION()").fetch_one(&self.inner.pool).await.map_err(map_err)?;
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
